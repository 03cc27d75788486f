"""The benchmarks compare like with like: each naive reference computes the same losses and
gradients as the library on a tiny case (and the checks fail when the maths differ), and
every script runs end to end in its ``--smoke`` mode."""

import math
import statistics

import pytest
import torch

from benchmarks import max_batch, objective_step, synthetic_epoch, train_step

TINY = dict(feature_dim=12, critic_hidden_dim=10, head_dim=6, head_hidden_dim=8)


# ----------------------------------------------------------------------- objective_step
@pytest.mark.parametrize("objective", objective_step.OBJECTIVES)
@pytest.mark.parametrize("layers", [1, 2])
def test_objective_step_naive_reference_equals_ours(objective, layers):
    model, inputs = objective_step.build_case(objective, 6, critic_num_hidden_layers=layers, **TINY)
    differences = objective_step.check_same_step(objective_step.make_trainers(model, inputs))
    assert set(differences) >= {"loss", "club_critics_loss", "shared_nce", "unique_cond_nce", "max_grad"}
    assert all(value <= objective_step.MAX_RELATIVE_DIFF for value in differences.values())


def test_objective_step_check_fails_on_different_maths():
    model, inputs = objective_step.build_case("factorcl_sup", 6, **TINY)
    trainers = objective_step.make_trainers(model, inputs)
    with torch.no_grad():
        trainers["naive"].model.label_critics[0].y_proj.weight.add_(0.1)
    with pytest.raises(RuntimeError, match="differ"):
        objective_step.check_same_step(trainers)


def test_objective_step_reference_bounds_match_closed_forms():
    scores = torch.tensor([[1.0, 0.0], [2.0, 4.0]])
    expected = (1 + 4) / 2 - ((math.log(math.e + 1) - math.log(2)) + (math.log(math.e**2 + math.e**4) - math.log(2))) / 2
    assert objective_step.reference_infonce(scores).item() == pytest.approx(expected, rel=1e-6)
    assert objective_step.reference_club(scores).item() == pytest.approx((1 + 4) / 2 - 7 / 4)


def test_objective_step_smoke_and_memory_factory():
    rows = objective_step.main(["--smoke", "--no-memory", "--threads", "1"])
    assert [r["objective"] for r in rows] == list(objective_step.OBJECTIVES)
    assert all(r["ours_ms"] > 0 and r["naive_ms"] > 0 and r["loss_rel_diff"] <= 1e-5 for r in rows)
    # The factory the peak-memory subprocess calls builds a runnable step.
    objective_step.memory_workload("ours", objective="factorcl_ssl", batch_size=4, **TINY)()


# --------------------------------------------------------------------------- train_step
@pytest.mark.slow
def test_train_step_smoke_checks_every_variant_against_its_reference():
    rows = train_step.main(["--smoke", "--threads", "1"])
    assert {r["variant"] for r in rows} == set(train_step.VARIANTS)
    # Every variant but `tracked` (conditional negatives: no naive reference) checked against its reference.
    unchecked = {r["variant"] for r in rows if math.isnan(r["loss_rel_diff"])}
    assert unchecked == {"factorcl_ssl_tracked"}
    assert all(r["loss_rel_diff"] <= train_step.MAX_RELATIVE_DIFF for r in rows if r["variant"] not in unchecked)
    by_variant = {r["variant"]: r for r in rows}
    assert by_variant["factorcl_ssl"]["backbone_inputs"] == 2 * by_variant["simclr"]["backbone_inputs"]
    # The ratios are those of the step times, each the median of its own samples.
    for r in rows:
        assert r["step_ms"] == pytest.approx(statistics.median(r["step_samples_ms"]))
        for key, baseline in (("vs_simclr", "simclr"), ("vs_cross_self", "cross_self"),
                              ("vs_previous_default", "factorcl_ssl_tracked")):
            assert r[key] == pytest.approx(r["step_ms"] / by_variant[baseline]["step_ms"]), (r["variant"], key)


def test_train_step_check_fails_on_different_maths():
    models, batch = train_step.build_models("tiny", 4, "cpu", smoke=True)
    with torch.no_grad():
        features = train_step.backbone_features(models["factorcl_ssl"], batch)
    train_step.check_losses(models, batch, features)
    models["simclr"].objective.alignment_critic.temperature *= 2  # the reference keeps the objective's
    with pytest.raises(RuntimeError, match="simclr"):
        train_step.check_losses({"simclr": models["simclr"]}, batch, features)


# ---------------------------------------------------------------------------- max_batch
def test_max_batch_search_finds_the_largest_fitting_batch(monkeypatch):
    """Doubling then bisection against a known memory law (peak = B² bytes)."""
    budget = 300**2

    def fake_probe(variant, batch_size, budget_bytes, device, **case):
        return None if batch_size > 500 else batch_size**2  # past 500 the probe runs out of memory

    monkeypatch.setattr(max_batch, "probe", fake_probe)
    best, probes = max_batch.largest_batch("ours", budget, 16, 4096, 0.01, "cpu")
    assert best <= 300 and best >= 300 * (1 - 0.02)
    assert [p["batch_size"] for p in probes[:6]] == [16, 32, 64, 128, 256, 512]
    assert probes[5]["peak_mib"] is None and not probes[5]["fits"]
    best, _ = max_batch.largest_batch("ours", budget, 16, 128, 0.01, "cpu")
    assert best == 128  # the cap
    best, _ = max_batch.largest_batch("ours", 10, 16, 128, 0.01, "cpu")
    assert best is None


def test_max_batch_probe_counts_only_allocation_failures_as_not_fitting(monkeypatch):
    def failing(message):
        def peak_memory_bytes(factory, kwargs, device):
            assert kwargs["address_space_limit_bytes"] == 2 * 2**20  # the cap the probe sets
            raise RuntimeError(f"peak-memory subprocess failed:\n{message}")
        return peak_memory_bytes

    monkeypatch.setattr(max_batch, "peak_memory_bytes", failing("DefaultCPUAllocator: can't allocate memory"))
    assert max_batch.probe("ours", 64, 2**20, "cpu", objective="factorcl_sup") is None
    monkeypatch.setattr(max_batch, "peak_memory_bytes", failing("ValueError: `features_1` ..."))
    with pytest.raises(RuntimeError, match="features_1"):
        max_batch.probe("ours", 64, 2**20, "cpu", objective="factorcl_sup")


@pytest.mark.slow
def test_max_batch_smoke():
    """One real probe subprocess (most of its time is importing the package)."""
    summary = max_batch.main(["--smoke", "--variants", "ours", "--threads", "1"])
    assert summary["largest_batch"]["ours"] == 4
    assert summary["probes"][0]["peak_mib"] is not None


# ----------------------------------------------------------------------- synthetic_epoch
def test_synthetic_epoch_smoke_checks_losses():
    rows = synthetic_epoch.main(["--smoke", "--threads", "1"])
    assert {r["variant"] for r in rows} == set(synthetic_epoch.VARIANTS)
    assert all(r["loss_rel_diff"] <= synthetic_epoch.MAX_RELATIVE_DIFF for r in rows)
    assert next(r for r in rows if r["variant"] == "factorcl_sup_2layer")["extrapolated"]


def test_synthetic_epoch_check_fails_on_different_maths(monkeypatch):
    settings = synthetic_epoch.reference_settings(smoke=True)
    splits = synthetic_epoch.make_synthetic(num_samples=100, seed=0)
    model = synthetic_epoch.build_variant("factorcl_sup", (100, 100), splits.config.num_labels, settings)
    assert synthetic_epoch.check_first_batch(model, splits.train, 8) <= synthetic_epoch.MAX_RELATIVE_DIFF
    reference = synthetic_epoch.naive_terms

    def off_by_a_little(objective, features):
        terms = reference(objective, features)
        return {**terms, "loss": terms["loss"] * (1 + 1e-3)}

    monkeypatch.setattr(synthetic_epoch, "naive_terms", off_by_a_little)
    with pytest.raises(RuntimeError, match="differs"):
        synthetic_epoch.check_first_batch(model, splits.train, 8)


def test_label_critic_smoke_and_restores_the_objective():
    from benchmarks import label_critic
    from factorcl_hf.objectives import FactorCLObjective

    per_class = FactorCLObjective._label_scores
    (row,) = label_critic.main(["--smoke", "--num-labels", "3"])
    assert row["max_score_diff"] <= 1e-5 and row["speedup"] > 0
    assert FactorCLObjective._label_scores is per_class
