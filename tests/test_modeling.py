import math

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import AutoModel, AutoProcessor, CLIPModel

from factorcl_hf import FactorCLConfig, FactorCLModel
from factorcl_hf.objectives import OBJECTIVES
from factorcl_hf.offline import tiny_clip_processor
from factorcl_hf.testing_utils import random_images

CAPTIONS = ["a small circle at the top", "a large square at the bottom", "a small cross", "a large triangle drawn by anna"]
SMALL_HEADS = dict(head_dim=8, head_hidden_dim=16, critic_hidden_dim=16, critic_embed_dim=8, num_labels=3,
                   logit_temperature=0.07)


@pytest.fixture(scope="module")
def batch(tokenizer):
    processor = tiny_clip_processor(tokenizer, 32)
    images = random_images(len(CAPTIONS))
    inputs = processor(text=CAPTIONS, images=images, return_tensors="pt", padding=True)
    augmented = processor(text=[c.rsplit(" ", 1)[0] for c in CAPTIONS], images=[im.transpose(0) for im in images],
                          return_tensors="pt", padding=True)
    return dict(
        **inputs,
        labels=torch.tensor([0, 1, 2, 0]),
        augmented_pixel_values=augmented["pixel_values"],
        augmented_input_ids=augmented["input_ids"],
        augmented_attention_mask=augmented["attention_mask"],
    )


def make_model(clip_config, objective="factorcl_ssl", **overrides):
    torch.manual_seed(0)
    return FactorCLModel(FactorCLConfig(clip_config=clip_config, objective=objective, **{**SMALL_HEADS, **overrides}))


@pytest.mark.parametrize("objective", ["factorcl_ssl", "factorcl_sup", "simclr"])
def test_save_and_reload_give_identical_outputs(tmp_path, clip_config, batch, objective):
    model = make_model(clip_config, objective).eval()
    model.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").exists()
    assert not list(tmp_path.glob("*.bin"))
    for loaded in (FactorCLModel.from_pretrained(tmp_path), AutoModel.from_pretrained(tmp_path)):
        assert isinstance(loaded, FactorCLModel)
        loaded.eval()
        with torch.no_grad():
            a, b = model(**batch, return_loss=True), loaded(**batch, return_loss=True)
        assert (a.logits_per_image - b.logits_per_image).abs().max().item() == 0
        assert (a.image_embeds.factorized_embeds - b.image_embeds.factorized_embeds).abs().max().item() == 0
        assert a.loss.item() == b.loss.item()


def test_configs_saved_with_training_hyperparameters_still_load(tmp_path, clip_config, batch):
    """Configs saved before `club_critic_steps` / `critic_learning_rate` became training
    arguments hold them; they load without error, and the loaded config drops them."""
    import json

    model = make_model(clip_config).eval()
    model.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "config.json").read_text())
    assert "club_critic_steps" not in saved and "critic_learning_rate" not in saved
    (tmp_path / "config.json").write_text(json.dumps({**saved, "club_critic_steps": 3, "critic_learning_rate": 0.01}))
    loaded = FactorCLModel.from_pretrained(tmp_path).eval()
    assert not hasattr(loaded.config, "club_critic_steps") and not hasattr(loaded.config, "critic_learning_rate")
    with torch.no_grad():
        assert torch.equal(model(**batch).logits_per_image, loaded(**batch).logits_per_image)


def test_plain_clip_checkpoint_loads_into_the_backbone(tmp_path, clip_config, batch):
    torch.manual_seed(1)
    clip = CLIPModel(clip_config).eval()
    clip.save_pretrained(tmp_path)
    config = FactorCLConfig(clip_config=clip_config, **SMALL_HEADS)
    model, info = FactorCLModel.from_pretrained(tmp_path, config=config, output_loading_info=True)
    assert info["missing_keys"] and all(k.startswith("objective.") for k in info["missing_keys"])
    assert not info["unexpected_keys"] and not info["mismatched_keys"]
    for wrapped in (model, FactorCLModel.from_clip(tmp_path, **SMALL_HEADS), FactorCLModel.from_clip(clip, **SMALL_HEADS)):
        wrapped.eval()
        with torch.no_grad():
            ours = wrapped.get_image_features(batch["pixel_values"]).backbone_embeds
            theirs = clip.get_image_features(pixel_values=batch["pixel_values"]).pooler_output
            ours_text = wrapped.get_text_features(batch["input_ids"], batch["attention_mask"]).backbone_embeds
            theirs_text = clip.get_text_features(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).pooler_output
        torch.testing.assert_close(ours, theirs, rtol=0, atol=0)
        torch.testing.assert_close(ours_text, theirs_text, rtol=0, atol=0)


def test_heads_are_freshly_initialized_not_zero(tmp_path, clip_config, capfd, caplog):
    CLIPModel(clip_config).save_pretrained(tmp_path)
    capfd.readouterr()
    with caplog.at_level("INFO", logger="factorcl_hf"):
        model = FactorCLModel.from_clip(tmp_path, **SMALL_HEADS)
    # New heads and critics are said in one line, not transformers' report of every key.
    assert "LOAD REPORT" not in capfd.readouterr().err + caplog.text
    assert caplog.text.count("objective.*") == 1 and "missing or unexpected" not in caplog.text
    # PyTorch's nn.Linear initialization (kaiming_uniform_ with a = sqrt 5): every weight and bias
    # of a layer with n inputs uniform on [-1/sqrt(n), 1/sqrt(n)]; scaled by sqrt(n), all of them
    # together are uniform on [-1, 1], of standard deviation 1/sqrt(3) (not transformers' N(0, 0.02²)).
    layers = [m for n, m in model.named_modules() if n.startswith("objective.") and isinstance(m, torch.nn.Linear)]
    scaled = torch.cat([p.detach().flatten() * math.sqrt(m.in_features)
                        for m in layers for p in (m.weight, m.bias) if p is not None])
    assert layers and scaled.abs().max() <= 1 + 1e-6
    assert scaled.std().item() == pytest.approx(1 / math.sqrt(3), rel=0.05)  # ~2,600 values: 5% is ~6 standard errors
    assert all(m.weight.std() > 0 for m in layers)  # not one value repeated


@pytest.mark.parametrize("objective", OBJECTIVES)
def test_every_objective_trains(clip_config, batch, objective):
    model = make_model(clip_config, objective).train()
    main = torch.optim.Adam(model.main_parameters(), lr=3e-3)
    critics = model.club_critic_parameters()
    critic_opt = torch.optim.Adam(critics, lr=3e-3) if critics else None
    losses = []
    for _ in range(12):
        out = model(**batch, return_loss=True)
        total = out.loss if out.critic_loss is None else out.loss + out.critic_loss
        main.zero_grad()
        if critic_opt:
            critic_opt.zero_grad()
        total.backward()
        main.step()
        if critic_opt:
            critic_opt.step()
        # The CLUB terms rise while their critics learn to see what the heads hold; the
        # bounds the encoders maximize must improve.
        club = sum(v for k, v in out.loss_terms.items() if k.endswith("_club"))
        losses.append((out.loss - club).item())
    assert all(np.isfinite(losses)) and losses[-1] < losses[0]


def test_backbone_runs_once_per_forward_with_augmented_views(clip_config, batch):
    model = make_model(clip_config, "factorcl_ssl")
    calls = {"vision": 0, "text": 0}
    model.clip.vision_model.register_forward_hook(lambda *a: calls.__setitem__("vision", calls["vision"] + 1))
    model.clip.text_model.register_forward_hook(lambda *a: calls.__setitem__("text", calls["text"] + 1))
    model(**batch, return_loss=True)
    assert calls == {"vision": 1, "text": 1}


def test_augmented_views_give_the_same_embeddings_as_separate_calls(clip_config, batch):
    """Batching original and augmented views (padded text) must not change either."""
    model = make_model(clip_config, "factorcl_ssl").eval()
    with torch.no_grad():
        joint = model(**batch, return_loss=True)
        alone = model.get_text_features(batch["input_ids"], batch["attention_mask"])
    torch.testing.assert_close(joint.text_embeds.backbone_embeds, alone.backbone_embeds, rtol=1e-5, atol=1e-6)


def test_logits_follow_clip_semantics(clip_config, batch):
    model = make_model(clip_config, "simclr").eval()
    with torch.no_grad():
        out = model(pixel_values=batch["pixel_values"][:3], input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
        image = model.get_image_features(batch["pixel_values"][:3]).pooler_output
        text = model.get_text_features(batch["input_ids"], batch["attention_mask"]).pooler_output
    assert out.logits_per_image.shape == (3, 4) and out.logits_per_text.shape == (4, 3)
    cosine = torch.nn.functional.normalize(image, dim=-1) @ torch.nn.functional.normalize(text, dim=-1).T
    torch.testing.assert_close(out.logits_per_image, cosine / model.config.logit_temperature)
    torch.testing.assert_close(out.logits_per_text, out.logits_per_image.T)
    assert out.loss is None


def test_critic_loss_trains_only_club_critics(clip_config, batch):
    model = make_model(clip_config, "factorcl_sup").train()
    out = model(**batch, return_loss=True)
    torch.testing.assert_close(model.critic_loss(out), out.critic_loss)
    out.critic_loss.backward()
    club = {id(p) for p in model.club_critic_parameters()}
    assert club and all(p.grad is not None for p in model.club_critic_parameters())
    assert all(p.grad is None for p in model.parameters() if id(p) not in club)


@pytest.mark.parametrize(
    "objective,change,match",
    [
        ("simclr", dict(pixel_values=None), "`pixel_values` is required"),
        ("simclr", dict(input_ids=None), "`input_ids` is required"),
        ("factorcl_sup", dict(labels=None), "`labels` are required"),
        ("factorcl_ssl", dict(augmented_pixel_values=None), "`augmented_pixel_values` is required"),
        ("factorcl_ssl", dict(augmented_input_ids=None), "`augmented_input_ids` is required"),
        ("simclr", dict(pixel_values=torch.zeros(4, 3, 64, 64)), r"`pixel_values` must have shape \[batch, 3, 32, 32\]"),
        ("simclr", dict(pixel_values=torch.zeros(3, 3, 32, 32)), "`pixel_values` has batch size 3"),
        ("factorcl_sup", dict(labels=torch.tensor([0, 1, 2, 3])), "`labels` must be in"),
    ],
)
def test_bad_inputs(clip_config, batch, objective, change, match, monkeypatch):
    # The labels' range is a value check: in the model only with FACTORCL_DEBUG (training data
    # is checked by the data loading and the collator, tests/test_modeling_errors.py).
    monkeypatch.setenv("FACTORCL_DEBUG", "1")
    model = make_model(clip_config, objective)
    with pytest.raises(ValueError, match=match):
        model(**{**batch, **change}, return_loss=True)


def test_foreign_and_corrupted_checkpoints(tmp_path, clip_config):
    CLIPModel(clip_config).save_pretrained(tmp_path / "clip")
    with pytest.raises(ValueError, match="'clip' model, not a 'factorcl'.*from_clip"):
        FactorCLModel.from_pretrained(tmp_path / "clip")
    make_model(clip_config).save_pretrained(tmp_path / "fcl")
    (tmp_path / "fcl" / "model.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(ValueError, match="corrupted"):
        FactorCLModel.from_pretrained(tmp_path / "fcl")


def test_config_owns_a_copy_of_the_clip_config(clip_config):
    config = FactorCLConfig(clip_config=clip_config)
    assert config.clip_config is not clip_config
    assert config.clip_config.to_dict() == clip_config.to_dict()


def test_config_validation_names_the_field(clip_config):
    with pytest.raises(Exception, match="`objective` must be one of"):
        FactorCLConfig(clip_config=clip_config, objective="clip")
    with pytest.raises(Exception, match="`num_labels` must be >= 2"):
        FactorCLConfig(clip_config=clip_config, objective="factorcl_sup", num_labels=1)
    with pytest.raises(Exception, match="`critic_type`"):
        FactorCLConfig(clip_config=clip_config, critic_type="cosine")


def test_processor_round_trip(tmp_path, tokenizer):
    processor = tiny_clip_processor(tokenizer, 32)
    processor.save_pretrained(tmp_path)
    loaded = AutoProcessor.from_pretrained(tmp_path)
    image = Image.fromarray(np.full((40, 40, 3), 120, dtype=np.uint8))
    a = processor(text=CAPTIONS[:2], images=[image], return_tensors="pt", padding=True)
    b = loaded(text=CAPTIONS[:2], images=[image], return_tensors="pt", padding=True)
    for key in a:
        torch.testing.assert_close(a[key], b[key])
