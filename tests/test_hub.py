import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from huggingface_hub import HfApi, ModelCard, constants

from factorcl_hf import FactorCLConfig, FactorCLModel
from factorcl_hf.checkpointing import save_pretrained_atomically
from factorcl_hf.hub import MODEL_CARD_TAGS, build_model_card, push_to_hub, save_model_card
from factorcl_hf.offline import build_caption_tokenizer, special_token_ids, tiny_clip_config, tiny_clip_processor

CAPTIONS = ["a small circle at the top", "a large square at the bottom", "a photo of a cross"]
RECORD = {
    "task": "retrieval",
    "data": "/data/shapes/",
    "split": "test",
    "embedding": "pooler",
    "num_samples": 400,
    "metrics": {"image_to_text_R@1": 0.25, "text_to_image_R@1": 0.375, "mean_recall": 0.5},
}


@pytest.fixture(scope="module")
def model_and_processor():
    tokenizer = build_caption_tokenizer(CAPTIONS)
    config = FactorCLConfig(
        clip_config=tiny_clip_config(len(tokenizer), **special_token_ids(tokenizer)),
        head_dim=8, head_hidden_dim=16, critic_hidden_dim=16, critic_embed_dim=8, logit_temperature=0.07,
    )
    torch.manual_seed(0)
    return FactorCLModel(config).eval(), tiny_clip_processor(tokenizer, 32)


@pytest.fixture(scope="module")
def inputs(model_and_processor):
    _, processor = model_and_processor
    images = [np.random.default_rng(i).integers(0, 255, (40, 40, 3), dtype=np.uint8) for i in range(2)]
    return processor(text=CAPTIONS, images=images, return_tensors="pt", padding=True)


def card_for(model, **kwargs):
    return build_model_card(
        model, RECORD, base_model="openai/clip-vit-base-patch32", datasets=["lampent/IRFL"],
        training_summary={"epochs": 10, "learning_rate": 1e-6, "batch_size": 16}, **kwargs,
    )


def test_card_renders_and_reloads_with_its_metadata(tmp_path, model_and_processor, inputs):
    model, _ = model_and_processor
    save_model_card(tmp_path, model, RECORD, base_model="openai/clip-vit-base-patch32", datasets="lampent/IRFL",
                    training_summary="Ten epochs on IRFL.", repo_id="me/clip-factorcl")
    card = ModelCard.load(tmp_path / "README.md")
    data = card.data
    assert data.library_name == "transformers"
    assert data.pipeline_tag == "zero-shot-image-classification"
    assert data.base_model == "openai/clip-vit-base-patch32"
    assert data.datasets == ["lampent/IRFL"]
    assert set(MODEL_CARD_TAGS) <= set(data.tags)
    assert data.model_name == "clip-factorcl"
    results = {r.metric_name: r for r in data.eval_results}
    # Each metric names the embedding and the number of items it was measured on.
    assert {k.removesuffix(" (pooler embedding, 400 items)"): r.metric_value for k, r in results.items()} == RECORD["metrics"]
    assert {(r.dataset_name, r.dataset_split, r.task_type, r.metric_type) for r in results.values()} == {
        ("shapes", "test", "image-feature-extraction", "recall")
    }
    # The body: loading with and without the package, training, limitations, the results table.
    body = card.text
    for needle in ('AutoModel.from_pretrained("me/clip-factorcl", trust_remote_code=True)', "import factorcl_hf",
                   "## Training", "Ten epochs on IRFL.", "## Limitations", "| 400 | text_to_image_R@1", "| 0.3750 |",
                   'pip install "factorcl-hf=='):
        assert needle in body
    # The sizes in the embedding table are those the model actually returns.
    with torch.no_grad():
        embeds = model.get_image_features(pixel_values=inputs["pixel_values"])
    for field, tensor in (("pooler_output", embeds.pooler_output), ("shared_embeds", embeds.shared_embeds),
                          ("unique_embeds", embeds.unique_embeds), ("factorized_embeds", embeds.factorized_embeds),
                          ("backbone_embeds", embeds.backbone_embeds)):
        assert f"| `{field}`" in body and f"| {tensor.shape[1]} |" in body.split(f"| `{field}`")[1].split("\n")[0]


def test_card_names_the_estimators_and_the_terms_weighed_other_than_one(model_and_processor):
    model, _ = model_and_processor
    clip = model.config.clip_config.to_dict()

    def training_line(**options):
        text = build_model_card(FactorCLConfig(clip_config=clip, head_dim=8, **options)).text
        return next((line for line in text.splitlines() if line.startswith("- Estimators:")), None)

    assert training_line() == "- Estimators: `closed_form` (factorcl-hf's `ESTIMATOR_PRESETS`)."
    assert training_line(term_weights={"shared_alignment": 0.5}) == (
        "- Estimators: `closed_form` (factorcl-hf's `ESTIMATOR_PRESETS`); terms weighed other than 1: "
        "`shared_alignment=0.5`."
    )
    assert training_line(estimators="tracked_no_cond_nce") == ("- Estimators: `tracked_no_cond_nce` (factorcl-hf's "
                                                               "`ESTIMATOR_PRESETS`); terms weighed other than 1: `unique_cond_nce=0`.")
    assert training_line(estimators="tracked_no_cond_nce", term_weights={"unique_cond_nce": 1.0, "unique_club": 0.5}) == (
        "- Estimators: `tracked_no_cond_nce` (factorcl-hf's `ESTIMATOR_PRESETS`); terms weighed other than 1: "
        "`unique_club=0.5`."
    )
    assert training_line(estimators="paper") == "- Estimators: `paper` (factorcl-hf's `ESTIMATOR_PRESETS`)."
    assert training_line(objective="simclr") is None


def test_card_of_a_non_factorized_objective_and_bad_input(model_and_processor):
    model, _ = model_and_processor
    config = FactorCLConfig(clip_config=model.config.clip_config.to_dict(), objective="simclr", head_dim=8)
    card = build_model_card(config)
    assert "not available: `simclr` does not factorize" in card.text
    assert not card.data.eval_results
    with pytest.raises(ValueError, match="eval_results"):
        build_model_card(config, {"image_to_text_R@1": 0.5})
    with pytest.raises(ValueError, match="model_or_config"):
        build_model_card(model.config.clip_config)


def test_card_validation_names_what_the_hub_would_reject(tmp_path, model_and_processor):
    from factorcl_hf.hub import validate_model_card

    model, _ = model_and_processor
    validate_model_card(card_for(model, license="mit"))
    with pytest.raises(ValueError, match="`license` must be a Hub license id"):
        validate_model_card(card_for(model))
    with pytest.raises(ValueError, match="`base_model` must name Hub repositories"):
        validate_model_card(build_model_card(model, base_model=str(tmp_path), license="mit"))
    with pytest.raises(ValueError, match="task type 'made-up'"):
        validate_model_card(build_model_card(model, {**RECORD, "task": "made-up"}, license="mit"))


FRESH_SCRIPT = r"""
import json, sys
import torch
# Simulate an environment without factorcl-hf: where the package is installed (an editable
# install puts it on every interpreter's path), make importing it fail.
sys.modules["factorcl_hf"] = None
try:
    import factorcl_hf
except ImportError:
    pass
else:
    sys.exit("factorcl_hf must not be importable here")
from PIL import Image
from transformers import AutoModel, pipeline

folder, inputs_path, out_path = sys.argv[1:4]
inputs = torch.load(inputs_path)
model = AutoModel.from_pretrained(folder, trust_remote_code=True).eval()
assert sys.modules["factorcl_hf"] is None, "the remote code must not import the package"
with torch.no_grad():
    image = model.get_image_features(pixel_values=inputs["pixel_values"])
    text = model.get_text_features(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"])
classifier = pipeline("zero-shot-image-classification", model=folder, trust_remote_code=True)
scores = classifier(Image.new("RGB", (40, 40), "red"), candidate_labels=["circle", "square"], hypothesis_template="a {}")
torch.save({"image": image.factorized_embeds, "text": text.factorized_embeds, "pooler": image.pooler_output,
            "pipeline": {r["label"]: r["score"] for r in scores}}, out_path)
"""


def test_building_a_model_leaves_auto_map_alone_and_saving_maps_both_auto_classes(tmp_path):
    """The model's constructor does not edit its config; a save maps AutoModel (transformers,
    from `register_for_auto_class`) and the zero-shot auto class (the model's save_pretrained)
    to the saved code, once each, and so does a second save of the reloaded model."""
    tokenizer = build_caption_tokenizer(CAPTIONS)
    config = FactorCLConfig(clip_config=tiny_clip_config(len(tokenizer), **special_token_ids(tokenizer)),
                            head_dim=8, head_hidden_dim=16, critic_hidden_dim=16, critic_embed_dim=8)
    model = FactorCLModel(config)
    assert getattr(config, "auto_map", None) is None and getattr(model.config, "auto_map", None) is None
    expected = {"AutoConfig": "configuration_factorcl.FactorCLConfig", "AutoModel": "modeling_factorcl.FactorCLModel",
                "AutoModelForZeroShotImageClassification": "modeling_factorcl.FactorCLModel"}
    model.save_pretrained(tmp_path / "first")
    assert json.loads((tmp_path / "first" / "config.json").read_text())["auto_map"] == expected
    FactorCLModel.from_pretrained(tmp_path / "first").save_pretrained(tmp_path / "second")
    assert json.loads((tmp_path / "second" / "config.json").read_text())["auto_map"] == expected


@pytest.mark.slow
def test_saved_folder_loads_with_trust_remote_code_where_the_package_is_absent(tmp_path, model_and_processor, inputs):
    model, processor = model_and_processor
    folder = save_pretrained_atomically(model, processor, tmp_path / "model", card=card_for(model))
    assert {"README.md", "config.json", "model.safetensors", "modeling_factorcl.py", "processor_config.json"} <= {
        p.name for p in folder.iterdir()
    }
    torch.save(dict(inputs), tmp_path / "inputs.pt")
    # -I: isolated mode (no PYTHONPATH, no cwd or script dir on sys.path); cwd has no package.
    env = {**os.environ, "HF_HOME": str(tmp_path / "hf_home"), "HF_HUB_OFFLINE": "1"}
    completed = subprocess.run(
        [sys.executable, "-I", "-c", FRESH_SCRIPT, str(folder), str(tmp_path / "inputs.pt"), str(tmp_path / "out.pt")],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    fresh = torch.load(tmp_path / "out.pt")
    with torch.no_grad():
        image = model.get_image_features(pixel_values=inputs["pixel_values"])
        text = model.get_text_features(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"])
        red = processor(images=[np.full((40, 40, 3), (255, 0, 0), dtype=np.uint8)], text=["a circle", "a square"],
                        return_tensors="pt", padding=True)
        probs = model(**red).logits_per_image.softmax(-1)[0]
    assert torch.equal(fresh["image"], image.factorized_embeds)
    assert torch.equal(fresh["text"], text.factorized_embeds)
    assert fresh["pipeline"] == pytest.approx({"circle": probs[0].item(), "square": probs[1].item()}, abs=1e-5)


def test_push_fails_clearly_when_the_hub_cannot_be_reached(monkeypatch, model_and_processor):
    model, processor = model_and_processor
    card = card_for(model)
    # An unused loopback port: the connection is refused at once, nothing leaves the machine.
    # huggingface_hub reads HF_ENDPOINT at import, so the constant is patched too.
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")
    monkeypatch.setattr(constants, "ENDPOINT", "http://127.0.0.1:9")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    with pytest.raises(RuntimeError, match=r"'me/factorcl-tiny'.*Hub at http://127.0.0.1:9 could not be reached"):
        push_to_hub(model, processor, "me/factorcl-tiny", card, token="hf_dummy")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(RuntimeError, match=r"'me/factorcl-tiny'.*could not be reached.*offline mode"):
        push_to_hub(model, processor, "me/factorcl-tiny", card, token="hf_dummy")
    with pytest.raises(ValueError, match="repo_id"):
        push_to_hub(model, processor, "a/b/c", card)


def test_push_uploads_model_processor_and_card(monkeypatch, model_and_processor):
    model, processor = model_and_processor
    calls = []

    def create_repo(self, repo_id, **kwargs):
        calls.append(("create_repo", repo_id, kwargs))

    def upload_folder(self, *, repo_id, folder_path, **kwargs):
        folder = Path(folder_path)
        calls.append(("upload_folder", repo_id, sorted(p.name for p in folder.iterdir())))
        calls.append(("card", ModelCard.load(folder / "README.md").data.base_model,
                      json.loads((folder / "config.json").read_text())["auto_map"]))
        return "https://hub.example/me/factorcl-tiny/commit/abc"

    monkeypatch.setattr(HfApi, "create_repo", create_repo)
    monkeypatch.setattr(HfApi, "upload_folder", upload_folder)
    url = push_to_hub(model, processor, "me/factorcl-tiny", card_for(model), token="hf_dummy", private=True)
    assert url == "https://hub.example/me/factorcl-tiny/commit/abc"
    (_, repo, create_kwargs), (_, upload_repo, files), (_, base_model, auto_map) = calls
    assert repo == upload_repo == "me/factorcl-tiny"
    assert create_kwargs["private"] is True and create_kwargs["exist_ok"] is True
    assert {"README.md", "config.json", "model.safetensors", "configuration_factorcl.py", "modeling_factorcl.py",
            "tokenizer.json", "processor_config.json"} <= set(files)
    assert base_model == "openai/clip-vit-base-patch32"
    assert auto_map["AutoModel"] == auto_map["AutoModelForZeroShotImageClassification"] == "modeling_factorcl.FactorCLModel"


@pytest.mark.slow
def test_wheel_ships_the_card_template(tmp_path):
    """A wheel install has no top-level model_cards/: the template travels inside the package."""
    repo = Path(__file__).resolve().parents[1]
    build = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", str(tmp_path / "dist"), str(repo)],
        capture_output=True, text=True, timeout=300,
    )
    assert build.returncode == 0, build.stderr
    (wheel,) = (tmp_path / "dist").glob("*.whl")
    import zipfile

    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)
    code = "import factorcl_hf.hub as hub; print(hub.MODEL_CARD_TEMPLATE); assert hub.MODEL_CARD_TEMPLATE.is_file()"
    env = {**os.environ, "PYTHONPATH": str(site)}
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, env=env, timeout=120)
    assert run.returncode == 0, run.stderr
    assert Path(run.stdout.strip()).is_relative_to(site)
    assert Path(run.stdout.strip()).read_text() == (repo / "model_cards" / "factorcl_model_card.md").read_text()


def test_push_access_is_checked_before_any_work(monkeypatch):
    """What ``--push_to_hub`` checks before training: offline mode, the connection, the token
    and the namespace, each named."""
    from factorcl_hf.hub import check_push_access

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(ValueError, match="offline mode is enabled"):
        check_push_access("me/x", token="hf_dummy")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")
    monkeypatch.setattr(constants, "ENDPOINT", "http://127.0.0.1:9")
    with pytest.raises(ValueError, match=r"the Hub at http://127.0.0.1:9 cannot be reached"):
        check_push_access("me/x", token="hf_dummy")
    monkeypatch.setattr(HfApi, "whoami", lambda self: {"name": "me", "orgs": [{"name": "lab"}]})
    assert check_push_access("me/x") == check_push_access("lab/x") == "me"
    with pytest.raises(ValueError, match=r"user 'me' cannot write to namespace 'someone' \(theirs: \['lab', 'me'\]\)"):
        check_push_access("someone/x")
    with pytest.raises(ValueError, match="like 'user/name'"):
        check_push_access("x")
