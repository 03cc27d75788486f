"""benchmarks/peer_open_clip.py: the weights converted to open_clip embed like ours (and a wrong
weight is caught), our CLIP loss is open_clip's ClipLoss, and the script runs end to end.
open_clip is the benchmark extra (`pip install -e ".[bench]"`), not installed in CI: those
tests skip there."""

import importlib.util
import json
import math
import statistics
import sys

import pytest
import torch
import torch.nn.functional as F

from benchmarks import peer_open_clip


@pytest.fixture
def open_clip():
    # Not pytest.importorskip("open_clip"): without torchvision open_clip imports only through
    # the benchmark's stubs.
    if importlib.util.find_spec("open_clip") is None:
        pytest.skip("open_clip is not installed (the bench extra)")
    return peer_open_clip.import_open_clip()


def test_missing_open_clip_exits_with_the_install_command(monkeypatch):
    monkeypatch.setitem(sys.modules, "open_clip", None)  # what an absent package looks like to import
    with pytest.raises(SystemExit, match=r'pip install -e "\.\[bench\]"'):
        peer_open_clip.import_open_clip()


def test_check_captions_end_at_their_largest_id_at_different_positions():
    text_config = peer_open_clip.clip_config("tiny").text_config
    ids, mask = peer_open_clip.check_captions(text_config, 16)
    lengths = mask.sum(1)
    assert ids.shape == (16, text_config.max_position_embeddings) and len(set(lengths.tolist())) > 4
    # open_clip pools at the argmax of the ids, transformers' CLIP at the first end-of-text id.
    assert torch.equal(ids.argmax(1), lengths - 1)
    assert torch.equal((ids == text_config.eos_token_id).int().argmax(1), lengths - 1)


@pytest.mark.parametrize("tower", ["visual.transformer.resblocks.1.attn", "transformer.resblocks.0.attn"])
def test_converted_open_clip_embeds_like_ours_and_a_wrong_weight_is_caught(open_clip, tower):
    ours, reference, batch = peer_open_clip.build_case("tiny", 6, "cpu", objectives=["simclr"])
    differences = peer_open_clip.check_embeddings(ours["simclr"], reference, batch)
    assert set(differences) == {"image", "text"} and max(differences.values()) <= peer_open_clip.MAX_EMBEDDING_DIFF
    # One entry of one fused q/k/v projection: the v rows of the first head.
    with torch.no_grad():
        reference.get_submodule(tower).in_proj_weight[2 * 64, 3] += 0.5
    modality = "image" if tower.startswith("visual") else "text"
    with pytest.raises(RuntimeError, match=f"embed differently.*'{modality}'"):
        peer_open_clip.check_embeddings(ours["simclr"], reference, batch)


def test_open_clip_model_refuses_an_end_of_text_id_below_the_largest(open_clip):
    config = peer_open_clip.clip_config("tiny")
    config.text_config.eos_token_id = 998
    with pytest.raises(ValueError, match="eos_token_id"):
        peer_open_clip.open_clip_model(open_clip, config)


def test_our_clip_loss_is_open_clips_clip_loss(open_clip):
    ours, _, batch = peer_open_clip.build_case("tiny", 6, "cpu", objectives=["simclr"])
    simclr = ours["simclr"]
    assert peer_open_clip.check_clip_loss(simclr, open_clip.loss.ClipLoss(), batch) <= peer_open_clip.MAX_LOSS_DIFF
    simclr.objective.alignment_critic.temperature *= 2  # the check scales by the config's temperature
    with pytest.raises(RuntimeError, match="ClipLoss"):
        peer_open_clip.check_clip_loss(simclr, open_clip.loss.ClipLoss(), batch)


def test_smoke_writes_every_ratio(open_clip, tmp_path):
    out = tmp_path / "peer.json"
    peer_open_clip.main(["--smoke", "--no-memory", "--threads", "1", "--json", str(out)])
    payload = json.loads(out.read_text())
    (run,) = payload["runs"]
    assert run["shape"] == "tiny" and run["threads"] == 1 and payload["meta"]["open_clip"] == open_clip.__version__
    assert run["batch_size"] == peer_open_clip.SMOKE_BATCH and payload["meta"]["repeats"] == 1
    assert max(run["embedding_max_abs_diff"].values()) <= peer_open_clip.MAX_EMBEDDING_DIFF
    # Every figure, recomputed from the raw timing samples the record keeps.
    for modality in ("image", "text"):
        row = run["inference"][modality]
        ours_s, open_clip_s = (statistics.median(row["samples_s"][side]) for side in ("ours", "open_clip"))
        assert row["ours_per_s"] == pytest.approx(peer_open_clip.SMOKE_BATCH / ours_s)
        assert row["open_clip_per_s"] == pytest.approx(peer_open_clip.SMOKE_BATCH / open_clip_s)
        assert row["throughput_ratio"] == pytest.approx(open_clip_s / ours_s)  # ours per second over open_clip's
        assert math.isnan(row["peak_vs_open_clip"])  # --no-memory: no peak measured
    assert set(run["training"]) == set(peer_open_clip.TRAIN_VARIANTS)
    step_ms = {name: statistics.median(row["samples_ms"]) for name, row in run["training"].items()}
    for name, row in run["training"].items():
        assert step_ms[name] > 0 and row["step_ms"] == pytest.approx(step_ms[name]), name
        assert row["time_vs_open_clip"] == pytest.approx(step_ms[name] / step_ms["open_clip"]), name
        assert row["time_vs_simclr"] == pytest.approx(step_ms[name] / step_ms["simclr"]), name
        assert math.isnan(row["peak_mib"]) and math.isnan(row["peak_vs_open_clip"]), name


@pytest.mark.parametrize("variant", ["open_clip", "factorcl_ssl", "ours.text"])
def test_memory_factory_builds_the_named_call(open_clip, monkeypatch, variant):
    built = []
    build_case = peer_open_clip.build_case
    monkeypatch.setattr(peer_open_clip, "build_case", lambda *a, **k: built.append(build_case(*a, **k)) or built[-1])
    step = peer_open_clip.memory_workload("tiny", variant, 4)
    ((ours, reference, batch),) = built
    if variant == "ours.text":
        # Our embeddings of the batch's captions (each ends with the largest id, open_clip's pooling place).
        with torch.no_grad():
            expected = F.normalize(reference.encode_text(batch["input_ids"]), dim=-1)
        for _ in range(2):
            embeds = F.normalize(step().backbone_embeds, dim=-1)
            assert (embeds - expected).abs().max().item() <= peer_open_clip.MAX_EMBEDDING_DIFF
        return
    # A training step of the named model alone, with a fresh AdamW at LEARNING_RATE: past its
    # weight decay, Adam's first step moves each weight by lr * g / (|g| + eps), so by lr
    # wherever the gradient is not tiny and never by more.
    trained, other = (reference, ours["simclr"]) if variant == "open_clip" else (ours[variant], reference)
    if variant == "open_clip":
        params = [p for p in trained.parameters() if p.requires_grad]
    else:
        assert trained.config.objective == variant
        params = peer_open_clip.parameter_groups(trained, peer_open_clip.LEARNING_RATE)[0]["params"]  # the lr group
    before = [p.detach().clone() for p in params]
    other_before = [p.detach().clone() for p in other.parameters()]
    step()
    lr, decay = peer_open_clip.LEARNING_RATE, peer_open_clip.WEIGHT_DECAY
    moves = torch.cat([(p.detach() - p0 * (1 - lr * decay)).abs().flatten().double() for p, p0 in zip(params, before)])
    assert moves.max().item() == pytest.approx(lr, rel=1e-2) and (moves <= 1.01 * lr).all()
    assert all(torch.equal(p, p0) for p, p0 in zip(other.parameters(), other_before))
    step()  # the call runs again (peak_memory_bytes calls it twice)
