"""FactorCLModel as a transformers model: weight initialisation of every load, the frozen
logit scale, the forward / get_*_features output contract, attention implementations and the
feature-extraction pipelines (issue 13)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from transformers import CLIPModel

from factorcl_hf import FactorCLConfig, FactorCLModel
from factorcl_hf.data.shapes import write_shapes_imagefolder
from factorcl_hf.offline import build_caption_tokenizer, special_token_ids, tiny_clip_config, tiny_clip_processor
from factorcl_hf.testing_utils import random_images

REPO = Path(__file__).resolve().parent.parent
CAPTIONS = ["a small circle at the top", "a large square at the bottom", "a small cross", "a large triangle"]
SMALL_HEADS = dict(head_dim=8, head_hidden_dim=16, critic_hidden_dim=16, critic_embed_dim=8, num_labels=3)


@pytest.fixture(scope="module")
def batch(tokenizer):
    images = random_images(len(CAPTIONS))
    return dict(tiny_clip_processor(tokenizer, 32)(text=CAPTIONS, images=images, return_tensors="pt", padding=True))


def make_model(clip_config, **overrides):
    torch.manual_seed(0)
    return FactorCLModel(FactorCLConfig(clip_config=clip_config, **{**SMALL_HEADS, **overrides}))


# ------------------------------------------------------------------ item 4: _init_weights
def test_a_load_without_weights_initialises_the_backbone_as_clip_does(clip_config):
    config = FactorCLConfig(clip_config=clip_config, **SMALL_HEADS)
    loaded = FactorCLModel.from_pretrained(None, config=config, state_dict={})
    torch.manual_seed(0)
    reference = CLIPModel(clip_config)
    ours = loaded.clip.state_dict()
    for name, expected in reference.state_dict().items():
        got = ours[name]
        assert torch.isfinite(got).all(), name
        if name == "logit_scale":
            assert got.item() == pytest.approx(clip_config.logit_scale_init_value), name
        elif got.numel() > 64 and got.dim() >= 2:
            # Random draws differ; their distribution must not: CLIP's own std per tensor.
            assert got.std().item() == pytest.approx(expected.std().item(), rel=0.25), name
        elif name.endswith(("layer_norm1.weight", "layer_norm2.bias", "position_ids")):
            assert torch.equal(got, expected), name


def test_loaded_weights_are_not_reinitialised(tmp_path, clip_config):
    model = make_model(clip_config)
    with torch.no_grad():
        model.clip.logit_scale.fill_(1.25)
    model.save_pretrained(tmp_path)
    loaded = FactorCLModel.from_pretrained(tmp_path)
    assert loaded.clip.logit_scale.item() == 1.25
    for (name, a), b in zip(model.state_dict().items(), loaded.state_dict().values()):
        assert torch.equal(a, b), name


# -------------------------------------------------------------- item 5: frozen logit scale
def test_logit_scale_stays_frozen_through_every_load(tmp_path, clip_config):
    model = make_model(clip_config)
    assert not model.clip.logit_scale.requires_grad
    model.save_pretrained(tmp_path / "factorcl")
    CLIPModel(clip_config).save_pretrained(tmp_path / "clip")
    for loaded in (
        FactorCLModel.from_pretrained(tmp_path / "factorcl"),
        FactorCLModel.from_clip(tmp_path / "clip", **SMALL_HEADS),
        FactorCLModel.from_clip(CLIPModel(clip_config), **SMALL_HEADS),
    ):
        assert not loaded.clip.logit_scale.requires_grad
        assert all(p.requires_grad for n, p in loaded.named_parameters() if n != "clip.logit_scale")


@pytest.mark.slow
def test_two_process_training_from_a_clip_folder(tmp_path, tokenizer, clip_config):
    """DDP fails on a trainable parameter without a gradient: the frozen scale must survive
    `from_clip`, which `training/train.py` loads a checkpoint through."""
    data = write_shapes_imagefolder(tmp_path / "data", num_samples=40, seed=1)
    rows = (data / "train" / "metadata.jsonl").read_text().splitlines()
    vocab_tokenizer = build_caption_tokenizer([json.loads(row)["caption"] for row in rows])
    clip = tmp_path / "clip"
    CLIPModel(tiny_clip_config(len(vocab_tokenizer), **special_token_ids(vocab_tokenizer))).save_pretrained(clip)
    tiny_clip_processor(vocab_tokenizer, 32).save_pretrained(clip)
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
               "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "-m", "training.train",
               "--clip_model", str(clip), "--train_data", str(data), "--output_dir", str(tmp_path / "out"),
               "--objective", "factorcl_ssl", "--max_train_steps", "2", "--per_device_train_batch_size", "4",
               "--head_dim", "8", "--head_hidden_dim", "16", "--critic_hidden_dim", "16", "--eval_split", "none",
               "--disable_tqdm"]
    done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert (tmp_path / "out" / "model" / "model.safetensors").exists()


# -------------------------------------------------------- item 1: attention implementations
def test_sdpa_and_eager_load_and_agree(tmp_path, clip_config, batch):
    make_model(clip_config).save_pretrained(tmp_path)
    logits = {}
    for implementation in ("sdpa", "eager"):
        model = FactorCLModel.from_pretrained(tmp_path, attn_implementation=implementation).eval()
        assert model.config._attn_implementation == implementation
        assert model.clip.text_model.config._attn_implementation == implementation
        assert model.clip.vision_model.config._attn_implementation == implementation
        with torch.no_grad():
            logits[implementation] = model(**batch).logits_per_image
    assert (logits["sdpa"] - logits["eager"]).abs().max().item() < 1e-5
    model.set_attn_implementation("sdpa")
    assert model.clip.vision_model.config._attn_implementation == "sdpa"


# ------------------------------------------------------------- items 2, 3: output contract
def test_return_dict_false_gives_the_tuple_of_the_output(clip_config, batch):
    model = make_model(clip_config).eval()
    with torch.no_grad():
        full = model(**batch)
        as_tuple = model(**batch, return_dict=False)
        model.config.return_dict = False
        by_config = model(**batch)
    for got in (as_tuple, by_config):
        assert isinstance(got, tuple)
        assert torch.equal(got[0], full.logits_per_image)
        assert torch.equal(got[2][0], full.image_embeds.pooler_output)


@pytest.mark.parametrize("method", ["forward", "get_image_features", "get_text_features"])
def test_unknown_keywords_are_refused_by_name(clip_config, batch, method):
    model = make_model(clip_config)
    inputs = {"forward": batch, "get_image_features": {"pixel_values": batch["pixel_values"]},
              "get_text_features": {"input_ids": batch["input_ids"]}}[method]
    with pytest.raises(TypeError, match=f"{method}\\(\\) got unexpected keyword argument\\(s\\) 'output_hiden_states'"):
        getattr(model, method)(**inputs, output_hiden_states=True)


def test_hidden_states_and_attentions_reach_the_caller(clip_config, batch):
    model = make_model(clip_config, objective="factorcl_ssl").eval()
    model.set_attn_implementation("eager")
    augmented = dict(augmented_pixel_values=batch["pixel_values"].flip(-1), augmented_input_ids=batch["input_ids"])
    with torch.no_grad():
        out = model(**batch, **augmented, return_loss=True, output_hidden_states=True, output_attentions=True)
        plain = model(**batch)
    layers = clip_config.text_config.num_hidden_layers
    n = batch["input_ids"].shape[0]
    for embeds in (out.image_embeds, out.text_embeds):
        assert len(embeds.hidden_states) == layers + 1 and len(embeds.attentions) == layers
        # Only the original views, though the augmented ones ran in the same backbone call.
        assert all(h.shape[0] == n for h in embeds.hidden_states + embeds.attentions)
    assert plain.image_embeds.hidden_states is None and plain.text_embeds.attentions is None
    assert out.text_embeds.hidden_states[-1].shape == plain.text_embeds.last_hidden_state.shape


@pytest.mark.parametrize("return_dict", [True, False])
def test_get_features_follow_the_v5_contract(clip_config, batch, return_dict):
    model = make_model(clip_config).eval()
    with torch.no_grad():
        image = model.get_image_features(batch["pixel_values"], return_dict=return_dict)
        text = model.get_text_features(batch["input_ids"], batch["attention_mask"], return_dict=return_dict)
        clip_image = model.clip.get_image_features(pixel_values=batch["pixel_values"])
        clip_text = model.clip.get_text_features(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
    if not return_dict:
        assert isinstance(image, tuple) and isinstance(text, tuple)
        assert image[0].shape == (len(CAPTIONS), SMALL_HEADS["head_dim"])
        assert torch.equal(image[1], clip_image.last_hidden_state)
        return
    assert torch.equal(image.last_hidden_state, clip_image.last_hidden_state)
    assert torch.equal(text.last_hidden_state, clip_text.last_hidden_state)
    assert torch.equal(image.backbone_embeds, clip_image.pooler_output)
    assert torch.equal(image.factorized_embeds, torch.cat([image.shared_embeds, image.unique_embeds], dim=-1))


# --------------------------------------------------------- item 6: feature-extraction pipelines
def test_feature_extraction_pipelines_give_the_pooler_output(tmp_path, tokenizer, clip_config):
    from transformers import pipeline

    model = make_model(clip_config).eval()
    processor = tiny_clip_processor(tokenizer, 32)
    images = random_images(2, size=36, seed=1)
    texts = pipeline("feature-extraction", model=model, tokenizer=processor.tokenizer, return_tensors=True)(CAPTIONS[:2])
    pictures = pipeline("image-feature-extraction", model=model, image_processor=processor.image_processor,
                        return_tensors=True)(images)
    with torch.no_grad():
        for text, caption in zip(texts, CAPTIONS):
            tokens = processor.tokenizer([caption], return_tensors="pt")
            torch.testing.assert_close(text, model.get_text_features(**tokens).pooler_output)
        for picture, image in zip(pictures, images):
            pixels = processor.image_processor([image], return_tensors="pt")["pixel_values"]
            torch.testing.assert_close(picture, model.get_image_features(pixels).pooler_output)
