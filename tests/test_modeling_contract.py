"""FactorCLModel as a transformers model: weight initialisation of every load, the frozen
logit scale, the forward / get_*_features output contract, attention implementations and the
feature-extraction pipelines (issue 13)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import CLIPModel

from factorcl_hf import FactorCLConfig, FactorCLModel
from factorcl_hf.data.shapes import write_shapes_imagefolder
from factorcl_hf.testing_utils import build_caption_tokenizer, special_token_ids, tiny_clip_config, tiny_clip_processor

REPO = Path(__file__).resolve().parent.parent
CAPTIONS = ["a small circle at the top", "a large square at the bottom", "a small cross", "a large triangle"]
SMALL_HEADS = dict(head_dim=8, head_hidden_dim=16, critic_hidden_dim=16, critic_embed_dim=8, num_labels=3)


@pytest.fixture(scope="module")
def tokenizer():
    return build_caption_tokenizer(CAPTIONS)


@pytest.fixture(scope="module")
def clip_config(tokenizer):
    return tiny_clip_config(len(tokenizer), **special_token_ids(tokenizer))


@pytest.fixture(scope="module")
def batch(tokenizer):
    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 255, (40, 40, 3), dtype=np.uint8)) for _ in CAPTIONS]
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
