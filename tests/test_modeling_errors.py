"""Bad configs, bad saved folders and bad inputs are named, not left to a traceback from deep
inside torch or transformers (issue 14)."""

import json
import logging
import os
import shutil

import pytest
import torch
from huggingface_hub.errors import StrictDataclassClassValidationError

from factorcl_hf import FactorCLConfig, FactorCLModel
from factorcl_hf.data.image_text import ImageTextCollator
from factorcl_hf.evaluation.__main__ import run as evaluate_cli
from factorcl_hf.offline import build_caption_tokenizer, special_token_ids, tiny_clip_config, tiny_clip_processor
from factorcl_hf.testing_utils import random_images

SMALL = dict(head_dim=4, head_hidden_dim=8, critic_hidden_dim=8, critic_embed_dim=4)


@pytest.fixture(scope="module")
def clip_config():
    tokenizer = build_caption_tokenizer(["a red square", "a blue circle"])
    return tiny_clip_config(len(tokenizer), **special_token_ids(tokenizer), hidden_size=16, num_layers=1,
                            projection_dim=8)


@pytest.fixture(scope="module")
def saved(clip_config, tmp_path_factory):
    folder = tmp_path_factory.mktemp("saved") / "model"
    FactorCLModel(FactorCLConfig(clip_config=clip_config, **SMALL)).save_pretrained(folder)
    return folder


def copy_of(saved, tmp_path):
    return shutil.copytree(saved, tmp_path / "model")


# ------------------------------------------------------------------------------ configs
def test_a_negative_clip_projection_dim_is_named(clip_config):
    bad = clip_config.to_dict()
    bad["projection_dim"] = -3
    with pytest.raises(StrictDataclassClassValidationError, match=r"`clip_config\.projection_dim` must be a positive"):
        FactorCLConfig(clip_config=bad, **SMALL)


def test_a_string_head_dim_is_named(clip_config):
    with pytest.raises(StrictDataclassClassValidationError, match=r"`head_dim` must be an int, got '64' \(str\)"):
        FactorCLConfig(clip_config=clip_config, head_dim="64")


def test_weights_that_do_not_fit_head_dim_name_a_tensor(saved):
    with pytest.raises(ValueError, match=r"do not fit the config: \d+ tensor\(s\) have another shape, first objective\.\S+"):
        FactorCLModel.from_pretrained(saved, head_dim=2)


def test_a_config_without_clip_config_is_refused(saved, tmp_path):
    folder = copy_of(saved, tmp_path)
    config = json.loads((folder / "config.json").read_text())
    del config["clip_config"]
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match=f"'{folder / 'config.json'}' has no `clip_config`"):
        FactorCLModel.from_pretrained(folder)
    with pytest.raises(ValueError, match="has no `clip_config`"):
        FactorCLConfig.from_dict(config)


def test_a_deleted_config_json_is_named(saved, tmp_path):
    folder = copy_of(saved, tmp_path)
    (folder / "config.json").unlink()
    with pytest.raises(FileNotFoundError, match=f"'{folder / 'config.json'}' does not exist"):
        FactorCLModel.from_pretrained(folder)


def test_a_missing_model_directory_is_named(tmp_path):
    missing = tmp_path / "runs" / "model"
    with pytest.raises(FileNotFoundError, match=f"model directory '{missing}' does not exist"):
        FactorCLModel.from_pretrained(missing)
    with pytest.raises(FileNotFoundError, match=f"model directory '{missing}' does not exist"):
        evaluate_cli(["--model", str(missing), "--task", "retrieval", "--data", str(tmp_path)])


def test_a_missing_model_directory_points_at_the_copy_an_interrupted_save_left(saved, tmp_path):
    shutil.copytree(saved, tmp_path / ".retired-model")
    with pytest.raises(FileNotFoundError, match="interrupted save left the previous model at '.*/.retired-model'"):
        FactorCLModel.from_pretrained(tmp_path / "model")


def test_evaluation_out_that_is_a_directory_fails_before_the_evaluation(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        # The model does not exist either: the --out check must come first.
        evaluate_cli(["--model", str(tmp_path / "none"), "--task", "retrieval", "--data", str(tmp_path),
                      "--out", str(tmp_path)])
    assert exit_info.value.code == 2
    assert f"--out '{tmp_path}' is a directory" in capsys.readouterr().err


# ------------------------------------------------------------------------------- inputs
# The model checks input values (each a device sync per step) only with FACTORCL_DEBUG; the
# training collator checks every batch on the CPU (integrity.py).
@pytest.fixture(scope="module")
def model(clip_config):
    return FactorCLModel(FactorCLConfig(clip_config=clip_config, **SMALL)).eval()


@pytest.fixture
def value_checks(monkeypatch):
    monkeypatch.setenv("FACTORCL_DEBUG", "1")


def test_token_ids_outside_the_vocabulary_are_named(model, value_checks):
    vocab = model.config.clip_config.text_config.vocab_size
    with pytest.raises(ValueError, match=f"`input_ids` holds token id {vocab + 5}, outside .* \\[0, {vocab - 1}\\]"):
        model.get_text_features(torch.tensor([[1, vocab + 5]]))
    with pytest.raises(ValueError, match="`input_ids` holds token id -1"):
        model(input_ids=torch.tensor([[1, -1]]), pixel_values=torch.zeros(1, 3, 32, 32))


def test_empty_batches_are_named(model):
    with pytest.raises(ValueError, match=r"`input_ids` is empty \(shape \(0, 5\)\)"):
        model.get_text_features(torch.zeros(0, 5, dtype=torch.long))
    with pytest.raises(ValueError, match=r"`input_ids` is empty \(shape \(2, 0\)\)"):
        model.get_text_features(torch.zeros(2, 0, dtype=torch.long))
    with pytest.raises(ValueError, match=r"`pixel_values` is an empty batch"):
        model.get_image_features(torch.zeros(0, 3, 32, 32))


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_non_finite_pixels_are_refused_at_inference(model, value, value_checks):
    pixels = torch.zeros(2, 3, 32, 32)
    pixels[1, 0, 0, 0] = value
    with pytest.raises(ValueError, match="`pixel_values` holds NaN or infinite values"):
        model.get_image_features(pixels)
    with pytest.raises(ValueError, match="`pixel_values` holds NaN or infinite values"):
        model(input_ids=torch.tensor([[1, 2], [1, 2]]), pixel_values=pixels)


def test_forward_reads_no_input_values_without_the_debug_switch(model, monkeypatch):
    """No value check (a device sync each) in a plain call: the values pass to the backbone,
    and a NaN pixel gives NaN embeddings. Shapes and dtypes are still checked."""
    monkeypatch.delenv("FACTORCL_DEBUG", raising=False)
    pixels = torch.zeros(2, 3, 32, 32)
    pixels[1, 0, 0, 0] = float("nan")
    with torch.no_grad():
        out = model(input_ids=torch.tensor([[1, 2], [1, 2]]), pixel_values=pixels)
    assert torch.isnan(out.image_embeds.pooler_output[1]).all() and torch.isfinite(out.image_embeds.pooler_output[0]).all()
    with pytest.raises(ValueError, match=r"`input_ids` must hold integer token ids, got torch.float32"):
        model.get_text_features(torch.tensor([[1.0, 2.0]]))
    with pytest.raises(ValueError, match=r"`pixel_values` must have shape \[batch, 3, 32, 32\]"):
        model.get_image_features(torch.zeros(2, 3, 16, 16))


@pytest.fixture(scope="module")
def rows():
    return [{"image": image, "caption": caption, "label": label}
            for image, caption, label in zip(random_images(2, size=32), ["a red square", "a blue circle"], [0, 1])]


def test_the_collator_refuses_token_ids_outside_the_model_vocabulary(clip_config, rows):
    """A tokenizer larger than the model's vocabulary (another checkpoint's) is refused at the
    first batch, before the model sees it."""
    processor = tiny_clip_processor(build_caption_tokenizer(["a red square", "a blue circle"]), 32)
    ImageTextCollator(processor, vocab_size=clip_config.text_config.vocab_size)(rows)  # its own vocabulary fits
    vocab = 3
    with pytest.raises(ValueError, match=f"`input_ids` holds token id \\d+, outside this model's vocabulary \\[0, {vocab - 1}\\]"):
        ImageTextCollator(processor, vocab_size=vocab)(rows)


@pytest.mark.filterwarnings("ignore:divide by zero")
def test_the_collator_refuses_labels_outside_num_labels_and_non_finite_pixels(rows):
    processor = tiny_clip_processor(build_caption_tokenizer(["a red square", "a blue circle"]), 32)
    labelled = ImageTextCollator(processor, label_column="label", num_labels=2)
    assert labelled(rows)["labels"].tolist() == [0, 1]
    with pytest.raises(ValueError, match=r"`labels` must be in \[0, 0\] \(num_labels=1\), got values in \[0, 1\]"):
        ImageTextCollator(processor, label_column="label", num_labels=1)(rows)
    processor.image_processor.image_std = [0.0, 0.0, 0.0]  # (x - mean) / 0: NaN and infinite pixels
    with pytest.raises(ValueError, match="`pixel_values` holds NaN or infinite values"):
        ImageTextCollator(processor)(rows)


def test_labels_given_to_a_self_supervised_model_are_warned_about(clip_config, caplog):
    model = FactorCLModel(FactorCLConfig(clip_config=clip_config, objective="simclr", **SMALL)).eval()
    inputs = dict(input_ids=torch.tensor([[1, 2], [1, 3]]), pixel_values=torch.zeros(2, 3, 32, 32),
                  labels=torch.tensor([0, 99]))
    with caplog.at_level(logging.WARNING, logger="factorcl_hf.modeling_factorcl"):
        model(**inputs)
        model(**inputs)
    warnings = [r.getMessage() for r in caplog.records if "`labels` are ignored" in r.getMessage()]
    assert len(warnings) == 1 and "'simclr' is self-supervised" in warnings[0]


def test_fresh_models_save_without_warnings_or_errors(model, tmp_path):
    """The checks above do not reject a healthy model: it saves and reloads."""
    model.save_pretrained(tmp_path / "ok")
    # integrity.py travels with the code saved for trust_remote_code (a relative import).
    assert {"SHA256SUMS", "config.json", "model.safetensors", "integrity.py"} <= set(os.listdir(tmp_path / "ok"))
    reloaded = FactorCLModel.from_pretrained(tmp_path / "ok")
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), reloaded.state_dict().values()))
