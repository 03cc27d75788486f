"""A SigLIP backbone (issue 13, item 7): `from_clip` on a tiny offline SigLIP, the `siglip`
sigmoid-loss baseline, training, saving, `trust_remote_code` and the zero-shot pipeline."""

import json
import os
import subprocess
import sys

import pytest
import torch
from transformers import SiglipModel

from factorcl_hf import FactorCLConfig, FactorCLModel
from factorcl_hf.data.shapes import write_shapes_imagefolder
from factorcl_hf.objectives import SigLIPObjective, build_objective
from factorcl_hf.offline import build_caption_tokenizer, special_token_ids, tiny_clip_processor, tiny_siglip_config
from training.train import main

CAPTIONS = ["a small circle at the top", "a large square at the bottom", "a small cross", "a large triangle"]
HEADS = dict(head_dim=8, head_hidden_dim=16, critic_hidden_dim=16, critic_embed_dim=8)
MAX_LENGTH = 32


@pytest.fixture(scope="module")
def siglip_dir(tmp_path_factory):
    """A tiny random SigLIP saved with a processor, its vocabulary the shapes captions'."""
    root = tmp_path_factory.mktemp("siglip")
    data = write_shapes_imagefolder(root / "data", num_samples=40, seed=1)
    captions = [json.loads(row)["caption"] for row in (data / "train" / "metadata.jsonl").read_text().splitlines()]
    tokenizer = build_caption_tokenizer(captions + CAPTIONS, model_max_length=MAX_LENGTH)
    torch.manual_seed(0)
    model = SiglipModel(tiny_siglip_config(len(tokenizer), **special_token_ids(tokenizer), max_position_embeddings=MAX_LENGTH))
    model.save_pretrained(root / "model")
    tiny_clip_processor(tokenizer, 32).save_pretrained(root / "model")
    return root / "model", data


def test_from_clip_wraps_a_siglip_folder_or_model(siglip_dir):
    folder, _ = siglip_dir
    siglip = SiglipModel.from_pretrained(folder).eval()
    pixels, ids = torch.randn(3, 3, 32, 32), torch.randint(0, 100, (3, MAX_LENGTH))
    for model in (FactorCLModel.from_clip(folder, **HEADS), FactorCLModel.from_clip(siglip, **HEADS)):
        model.eval()
        assert model.config.backbone_type == "siglip" and isinstance(model.clip, SiglipModel)
        assert not model.clip.logit_scale.requires_grad and not model.clip.logit_bias.requires_grad
        with torch.no_grad():
            torch.testing.assert_close(model.get_image_features(pixels).backbone_embeds,
                                       siglip.get_image_features(pixel_values=pixels).pooler_output, rtol=0, atol=0)
            torch.testing.assert_close(model.get_text_features(ids).backbone_embeds,
                                       siglip.get_text_features(input_ids=ids).pooler_output, rtol=0, atol=0)


def test_other_backbones_are_refused_naming_the_supported_ones(tmp_path):
    from transformers import BertConfig, BertModel

    BertModel(BertConfig(vocab_size=10, hidden_size=8, num_hidden_layers=1, num_attention_heads=1,
                         intermediate_size=8)).save_pretrained(tmp_path)
    with pytest.raises(ValueError, match=r"'bert' model; `from_clip` wraps the dual encoders \('clip', 'siglip'\)"):
        FactorCLModel.from_clip(tmp_path)
    with pytest.raises(ValueError, match=r"one of \['CLIPModel', 'SiglipModel'\].*got a Linear"):
        FactorCLModel.from_clip(torch.nn.Linear(2, 2))
    with pytest.raises(Exception, match=r"supported backbones \('clip', 'siglip'\), got model type 'bert'"):
        FactorCLConfig(clip_config={"model_type": "bert"})


def test_a_load_without_weights_initialises_siglip_as_siglip_does(siglip_dir):
    folder, _ = siglip_dir
    config = FactorCLConfig(clip_config=SiglipModel.from_pretrained(folder).config, objective="siglip", **HEADS)
    model = FactorCLModel.from_pretrained(None, config=config, state_dict={})
    assert all(torch.isfinite(p).all() for p in model.parameters())
    # SigLIP's `_init_weights` zeroes its logit scale and bias; the objective's start as in the paper.
    assert model.clip.logit_scale.item() == 0 and model.clip.logit_bias.item() == 0
    assert model.objective.logit_bias.item() == -10 and model.objective.logit_scale.exp().item() == pytest.approx(10)
    q = model.clip.text_model.encoder.layers[0].self_attn.q_proj.weight
    assert q.std().item() == pytest.approx((2 / sum(q.shape)) ** 0.5, rel=0.25)  # xavier_uniform


def test_lock_image_freezes_the_siglip_vision_tower_and_its_pooling_head(siglip_dir):
    """SiglipModel has no projection of its own (CLIP's `visual_projection`): each tower ends in
    its `head`, the vision tower's attention-pooling head, the text tower's linear layer. A
    lock freezes the whole tower; unlocked layers free the last layers, final norm and head."""
    from training.arguments import parse_args
    from training.loop import prepare_backbone

    folder, _ = siglip_dir
    model = FactorCLModel.from_clip(folder, **HEADS)
    prepare_backbone(parse_args(["--clip_model", str(folder), "--lock_image", "--lock_text",
                                 "--lock_text_unlocked_layers", "1"]), model)
    vision, text = model.clip.vision_model, model.clip.text_model

    def trainable(module):
        return {p.requires_grad for p in module.parameters()}

    assert trainable(vision) == {False} and trainable(vision.head) == {False}
    assert trainable(text.embeddings) == trainable(text.encoder.layers[0]) == {False}
    assert trainable(text.encoder.layers[-1]) == trainable(text.final_layer_norm) == trainable(text.head) == {True}
    assert trainable(model.objective) == {True}
    assert not {id(p) for p in vision.parameters()} & {id(p) for p in model.main_parameters()}


def test_a_siglip_run_with_a_locked_image_tower_trains_the_text_tower_only(siglip_dir, tmp_path):
    from safetensors.torch import load_file

    folder, data = siglip_dir
    main(["--clip_model", str(folder), "--train_data", str(data), "--output_dir", str(tmp_path), "--objective", "siglip",
          "--max_train_steps", "2", "--per_device_train_batch_size", "4", "--eval_split", "none", "--disable_tqdm",
          "--head_dim", "8", "--head_hidden_dim", "16", "--lock_image", "--learning_rate", "1e-3"])
    trained = load_file(tmp_path / "model" / "model.safetensors")
    start = {f"clip.{k}": v for k, v in SiglipModel.from_pretrained(folder).state_dict().items()}
    vision = [k for k in trained if k.startswith("clip.vision_model.")]
    assert any(k.startswith("clip.vision_model.head.") for k in vision)
    assert all(torch.equal(trained[k], start[k]) for k in vision), "the locked image tower changed"
    assert any(not torch.equal(trained[k], start[k]) for k in trained if k.startswith("clip.text_model."))


def test_sigmoid_loss_matches_its_definition():
    torch.manual_seed(0)
    objective = build_objective("siglip", (6, 6), head_dim=4, head_hidden_dim=8)
    assert isinstance(objective, SigLIPObjective)
    x1, x2 = torch.randn(5, 6), torch.randn(5, 6)
    out = objective(x1, x2)
    z1 = torch.nn.functional.normalize(objective.represent(x1, 0).alignment, dim=-1)
    z2 = torch.nn.functional.normalize(objective.represent(x2, 1).alignment, dim=-1)
    logits = z1 @ z2.T * 10 - 10
    expected = -sum(torch.nn.functional.logsigmoid(logits[i, j] if i == j else -logits[i, j])
                    for i in range(5) for j in range(5)) / 5
    torch.testing.assert_close(out.loss, expected)
    out.loss.backward()
    assert objective.logit_scale.grad is not None and objective.logit_bias.grad is not None


FRESH_SCRIPT = r"""
import sys
sys.modules["factorcl_hf"] = None  # the package must not be importable: remote code only
from PIL import Image
from transformers import AutoModel, pipeline
folder = sys.argv[1]
model = AutoModel.from_pretrained(folder, trust_remote_code=True)
assert type(model.clip).__name__ == "SiglipModel", type(model.clip)
classifier = pipeline("zero-shot-image-classification", model=folder, trust_remote_code=True)
scores = classifier(Image.new("RGB", (40, 40), "red"), candidate_labels=["circle", "square"], hypothesis_template="a {}")
assert abs(sum(r["score"] for r in scores) - 1) < 1e-5, scores
print("ok", model.config.objective)
"""


@pytest.mark.slow
@pytest.mark.parametrize("objective", ["factorcl_ssl", "siglip"])
def test_siglip_trains_saves_and_reloads_without_the_package(siglip_dir, tmp_path, objective):
    folder, data = siglip_dir
    main(["--clip_model", str(folder), "--train_data", str(data), "--output_dir", str(tmp_path), "--objective",
          objective, "--max_train_steps", "3", "--per_device_train_batch_size", "4", "--eval_split", "none",
          "--disable_tqdm", "--head_dim", "8", "--head_hidden_dim", "16"])
    saved = tmp_path / "model"
    loaded = FactorCLModel.from_pretrained(saved)
    assert loaded.config.backbone_type == "siglip" and loaded.config.objective == objective
    assert not torch.equal(loaded.clip.vision_model.embeddings.patch_embedding.weight,
                           SiglipModel.from_pretrained(folder).vision_model.embeddings.patch_embedding.weight)
    env = {**os.environ, "HF_HOME": str(tmp_path / "hf_home"), "HF_HUB_OFFLINE": "1"}
    done = subprocess.run([sys.executable, "-I", "-c", FRESH_SCRIPT, str(saved)], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.split() == ["ok", objective]
