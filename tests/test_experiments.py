import json
import math
import statistics

import pytest
import torch
from torch.optim.optimizer import register_optimizer_step_post_hook

from experiments import club_critic_game, synthetic_sweep, term_ablation
from experiments import synthetic_benchmark as bench
from factorcl_hf.augmentations import FeatureAugmentation
from factorcl_hf.configuration_factorcl import LAYOUT_TERMS, estimator_preset
from factorcl_hf.objectives import OBJECTIVES
from factorcl_hf.research.synthetic import SyntheticSplit, SyntheticSplits, bayes_accuracy, make_synthetic

DATA = dict(num_samples=80, shared_dim=2, unique_dims=(2, 2), modality_dim=8)
TINY = dict(
    encoder_hidden_dim=16, embed_dim=8, encoder_layers=1, head_dim=4, head_hidden_dim=8, critic_hidden_dim=8,
    batch_size=16, epochs=2,
)


def tiny_settings(**overrides):
    return bench.BenchmarkSettings(**{**TINY, **overrides})


def tiny_splits(unique_share=0.5, seed=0, **overrides):
    return make_synthetic(unique_share=unique_share, seed=seed, **{**DATA, **overrides})


def with_test_inputs(splits, transform):
    """A copy of ``splits`` whose test inputs are ``transform(x)`` (train split copied too)."""
    def copy(split, f=lambda x: x.clone()):
        latents = {k: f(v) for k, v in split.latents.items()}
        return SyntheticSplit(x1=f(split.x1), x2=f(split.x2), labels=split.labels.clone(), latents=latents)

    return SyntheticSplits(copy(splits.train), copy(splits.test, transform), splits.config, splits.modality_maps)


def loss_on(model, split, seed=123):
    """The objective's loss on the whole split as one batch, with fixed augmentations."""
    generator = torch.Generator().manual_seed(seed)
    augment = FeatureAugmentation(noise_std=0.1, drop_p=0.15)
    inputs = {"labels": split.labels} if model.requires_labels else {}
    if model.requires_augmented:
        inputs.update(augmented_1=augment(split.x1, generator), augmented_2=augment(split.x2, generator))
    with torch.no_grad():
        return model(split.x1, split.x2, compute_critic_loss=False, **inputs).loss.item()


def test_settings_validation():
    with pytest.raises(ValueError, match="batch_size"):
        bench.BenchmarkSettings(batch_size=1)
    with pytest.raises(ValueError, match="epochs"):
        bench.BenchmarkSettings(epochs=0)
    with pytest.raises(ValueError, match="lr"):
        bench.BenchmarkSettings(lr=0.0)
    with pytest.raises(ValueError, match="temperature"):
        bench.BenchmarkSettings(temperature=-1.0)
    with pytest.raises(ValueError, match="method"):
        bench.fit_method(tiny_splits(), "clip", tiny_settings())
    with pytest.raises(ValueError, match="batch_size"):
        bench.fit_method(tiny_splits(), "simclr", tiny_settings(batch_size=128))
    settings = bench.BenchmarkSettings()
    assert settings.temperature_for("simclr") == 0.5 and settings.temperature_for("supcon") == 0.07
    assert bench.BenchmarkSettings(temperature=0.2).temperature_for("supcon") == 0.2


@pytest.mark.parametrize("method", OBJECTIVES)
def test_training_reduces_the_loss(method):
    splits = tiny_splits()
    # The concat alignment critic: a cosine one on 4-dim heads moves the loss by less than 0.2.
    settings = tiny_settings(epochs=15, batch_size=32, lr=1e-2, club_critic_lr=1e-2, alignment_critic_type="concat")
    torch.manual_seed(0)
    model = bench.build_model(method, (8, 8), 2, settings)
    before = loss_on(model, splits.train)
    history = bench.train_model(model, splits.train, settings, seed=0)
    after = loss_on(model, splits.train)
    assert len(history.epochs) == settings.epochs and history.seconds > 0
    assert after < before - 0.2, (before, after)
    assert history.final["loss"] < history.epochs[0]["loss"]


@pytest.mark.parametrize("method, estimators", [("factorcl_sup", None), ("factorcl_ssl", None), ("factorcl_ssl", "tracked"),
                                               ("cross_self", None)])
def test_training_never_reads_the_test_split(method, estimators):
    """NaN test inputs (and latents) change nothing in training: not one parameter, not one
    logged loss. Any test row in a batch, an augmentation or a CLUB-critic update would turn
    them into NaN (or make the objective's input check raise)."""
    clean = tiny_splits()
    poisoned = with_test_inputs(clean, lambda x: torch.full_like(x, math.nan))
    settings = tiny_settings(club_critic_steps=2, estimators=estimators)
    fits = [bench.fit_method(splits, method, settings, seed=1) for splits in (clean, poisoned)]
    states = [fit.model.state_dict() for fit in fits]
    # The per-term layout's CLUB critics train too; the closed-form layout fits its erasers on train rows.
    per_term = method != "cross_self" and estimator_preset(estimators, method).layout == "per_term"
    assert bool(fits[1].model.club_critic_parameters()) == per_term
    for name, value in states[0].items():
        assert torch.isfinite(states[1][name]).all(), name
        assert torch.equal(value, states[1][name]), name
    assert [e["loss"] for e in fits[0].history.epochs] == [e["loss"] for e in fits[1].history.epochs]


def test_test_split_is_embedded_only_after_the_last_training_step(monkeypatch):
    """Marked test rows (offset by 1000) reach the encoders only once every optimizer step
    (main and CLUB critics) is done, and they do reach them (the probes are scored on them)."""
    splits = with_test_inputs(tiny_splits(), lambda x: x + 1000.0)
    events = []

    def record_inputs(module, args):
        events.append(("test rows" if (args[0].abs() > 100).any() else "train rows", torch.is_grad_enabled()))

    build_model = bench.build_model

    def instrumented_build_model(*args, **kwargs):
        model = build_model(*args, **kwargs)
        for encoder in model.encoders:
            encoder.register_forward_pre_hook(record_inputs)
        return model

    monkeypatch.setattr(bench, "build_model", instrumented_build_model)
    handle = register_optimizer_step_post_hook(lambda *_: events.append(("step", None)))
    try:
        record = bench.run_method(splits, "factorcl_ssl", tiny_settings(club_critic_steps=2, estimators="tracked"), seed=0)
    finally:
        handle.remove()

    kinds = [kind for kind, _ in events]
    last_step = max(i for i, kind in enumerate(kinds) if kind == "step")
    first_test = kinds.index("test rows")
    assert last_step < first_test
    assert all(not grad for kind, grad in events if kind == "test rows")
    # 4 batches x 2 epochs; each: a main step, the critic step beside it, one extra critic step.
    assert kinds.count("step") == 2 * (64 // 16) * 3
    assert 0.0 <= record["probe_acc"] <= 1.0


def test_label_free_methods_train_once_per_seed():
    settings = tiny_settings()
    by_share = {share: tiny_splits(unique_share=share) for share in (0.0, 1.0)}
    assert not torch.equal(by_share[0.0].train.labels, by_share[1.0].train.labels)
    ssl = [bench.fit_method(by_share[share], "factorcl_ssl", settings, seed=0) for share in (0.0, 1.0)]
    for name, value in ssl[0].model.state_dict().items():
        assert torch.equal(value, ssl[1].model.state_dict()[name]), name
    assert ssl[0].reusable_for(by_share[1.0])
    sup = bench.fit_method(by_share[0.0], "factorcl_sup", settings, seed=0)
    assert sup.reusable_for(by_share[0.0]) and not sup.reusable_for(by_share[1.0])
    assert not ssl[0].reusable_for(tiny_splits(unique_share=1.0, seed=1))

    reused = bench.run_method(by_share[1.0], "factorcl_ssl", settings, seed=0, fitted=ssl[0])
    assert reused["trained_at_unique_share"] == 0.0 and reused["unique_share"] == 1.0
    with pytest.raises(ValueError, match="cannot be reused"):
        bench.run_method(by_share[1.0], "factorcl_sup", settings, seed=0, fitted=sup)
    with pytest.raises(ValueError, match="seed"):
        bench.run_method(by_share[1.0], "factorcl_ssl", settings, seed=3, fitted=ssl[0])


def test_probing_respects_what_each_modality_can_see():
    """x1 carries nothing about unique2 (and x2 nothing about unique1), whatever the training:
    a correctly wired probe cannot decode them from that modality's representations, while the
    latents a modality does see decode well above chance."""
    splits = tiny_splits(num_samples=400)
    record = bench.run_method(splits, "factorcl_sup", tiny_settings(epochs=1), seed=0)
    probing = record["probing"]
    assert set(probing) == {"Z_S1", "Z_U1", "Z_S2", "Z_U2"}
    for name, by_latent in probing.items():
        unseen = "unique2" if name.endswith("1") else "unique1"
        seen = "unique1" if name.endswith("1") else "unique2"
        assert by_latent[unseen] < 0.1, (name, by_latent)
        assert by_latent[seen] > 0.3 and by_latent["shared"] > 0.3, (name, by_latent)
    baseline = bench.run_method(splits, "simclr", tiny_settings(epochs=1), seed=0)["probing"]
    assert set(baseline) == {"Z_S1", "Z_S2"}


def test_club_critic_check_finds_what_an_untrained_critic_misses():
    """At initialization the unique heads are random maps of features that hold the shared
    latents, so a critic fitted on them finds mutual information; the untrained own critic
    scores ~0. Blanking the heads (constant outputs) leaves nothing for either critic. The
    check leaves the model's weights and mode untouched."""
    splits = tiny_splits(num_samples=600, unique_share=0.0)
    settings = tiny_settings(
        batch_size=32, critic_hidden_dim=64, head_dim=16, head_hidden_dim=32, embed_dim=16, encoder_hidden_dim=32
    )
    torch.manual_seed(0)
    model = bench.build_model("factorcl_sup", (8, 8), 2, settings)
    model.train()
    before = {k: v.clone() for k, v in model.state_dict().items()}

    # The heads' outputs are small at initialization (std ~0.03): a large lr fits them quickly.
    report = bench.club_critic_check(model, splits.train, splits.test, settings, refit_steps=300, refit_lr=1e-2)
    assert set(report) == {"shared_cond", "unique"}
    assert abs(report["unique"]["trained"]) < 0.1
    assert report["unique"]["refit"] > report["unique"]["trained"] + 0.3, report
    assert model.training
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())

    for heads in model.objective.heads:
        last = heads.heads["unique"][-1]
        torch.nn.init.zeros_(last.weight)
        torch.nn.init.zeros_(last.bias)
    blank = bench.club_critic_check(model, splits.train, splits.test, settings, refit_steps=50)["unique"]
    # Identical inputs in every row: every pair gets the same score, InfoNCE is exactly 0.
    assert blank == {"trained": pytest.approx(0.0, abs=1e-6), "refit": pytest.approx(0.0, abs=1e-6)}


def test_per_epoch_critic_checks_do_not_change_training():
    """The check runs mid-training through ``on_epoch_end``; the trained weights must be
    exactly those of a run without it (no parameter, mode or global-RNG side effects)."""
    splits = tiny_splits(num_samples=200)
    settings = tiny_settings(epochs=3, batch_size=32, estimators="tracked")
    seen = []

    def check(epoch, model):
        seen.append((epoch, bench.club_critic_check(model, splits.train, splits.test, settings, refit_steps=5)))
        torch.rand(1)  # a callback may even draw from the global RNG: training must not care

    plain = bench.fit_method(splits, "factorcl_ssl", settings, seed=1)
    checked = bench.fit_method(splits, "factorcl_ssl", settings, seed=1, on_epoch_end=check)
    assert [epoch for epoch, _ in seen] == [0, 1, 2]
    assert all(set(report) == {"shared_cond", "unique"} for _, report in seen)
    for (name, a), b in zip(plain.model.state_dict().items(), checked.model.state_dict().values()):
        assert torch.equal(a, b), name
    assert plain.history.epochs == checked.history.epochs


@pytest.mark.slow
def test_club_critic_game_writes_json_and_plot(tmp_path, capsys):
    records = club_critic_game.main([
        "--out", str(tmp_path), "--num-samples", "120", "--epochs", "2", "--batch-size", "16", "--refit-steps", "3",
    ])
    saved = json.loads((tmp_path / "club_critic_game.json").read_text())
    assert [r["epoch"] for r in saved["epochs"]] == [1, 2] == [r["epoch"] for r in records]
    assert set(saved["epochs"][0]["check"]) == {"shared_cond", "unique"}
    assert "unique_club" in saved["epochs"][0]["terms"]
    assert (tmp_path / "club_critic_game.png").stat().st_size > 1000
    assert "| epoch | shared_cond: own / refit | unique: own / refit |" in capsys.readouterr().out


def test_club_critic_check_is_empty_without_club_terms():
    splits = tiny_splits()
    model = bench.build_model("simclr", (8, 8), 2, tiny_settings())
    assert bench.club_critic_check(model, splits.train, splits.test, tiny_settings()) == {}


@pytest.mark.slow
def test_cli_micro_run_writes_results(tmp_path, capsys):
    argv = [
        "--out", str(tmp_path), "--quick", "--num-samples", "60", "--epochs", "1", "--batch-size", "12",
        "--methods", "factorcl_ssl", "supcon", "--seeds", "0", "1", "--unique-shares", "0", "1", "--no-progress",
        "--num-threads", "1", "--critic-check", "--critic-check-steps", "20", "--estimators", "tracked",
    ]
    synthetic_sweep.main(argv)
    results = json.loads((tmp_path / "synthetic_results.json").read_text())
    methods = ("factorcl_ssl", "supcon", synthetic_sweep.INPUT_PROBE, synthetic_sweep.BAYES)
    assert len(results) == 4 * 2 * 2
    assert {(r["method"], r["unique_share"], r["seed"]) for r in results} == {
        (m, u, s) for m in methods for u in (0.0, 1.0) for s in (0, 1)
    }
    trained = [r for r in results if r["method"] not in synthetic_sweep.REFERENCE_LINES]
    for r in trained:
        assert {"method", "unique_share", "seed", "probe_acc", "backbone_probe_acc", "train_seconds"} <= set(r)
        assert 0.0 <= r["probe_acc"] <= 1.0 and 0.0 <= r["backbone_probe_acc"] <= 1.0
        # Label-free FactorCL-SSL trains once per seed; SupCon at every share.
        assert r["trained_at_unique_share"] == (0.0 if r["method"] == "factorcl_ssl" else r["unique_share"])
        assert r["settings"]["batch_size"] == 12 and r["num_samples"] == 60
        # The CLUB critic check runs for methods with CLUB terms only.
        assert set(r.get("club_critic_check", {})) == ({"shared_cond", "unique"} if r["method"] == "factorcl_ssl" else set())
    for r in results:
        if r["method"] == synthetic_sweep.BAYES:
            assert r["probe_acc"] == bayes_accuracy(r["unique_share"])

    probing = json.loads((tmp_path / "synthetic_probing.json").read_text())
    assert {row["representation"] for row in probing if row["method"] == "factorcl_ssl"} == {"Z_S1", "Z_U1", "Z_S2", "Z_U2"}
    assert {row["representation"] for row in probing if row["method"] == "supcon"} == {"Z_S1", "Z_S2"}
    assert len(probing) == 2 * 2 * (4 + 2) * 3
    assert (tmp_path / "synthetic.png").stat().st_size > 1000

    # The reference row is the same probe on the raw inputs.
    from factorcl_hf.evaluation.probe import linear_probe_accuracy

    splits = make_synthetic(num_samples=60, unique_share=1.0, seed=1)
    raw = next(r for r in results if r["method"] == synthetic_sweep.INPUT_PROBE and r["unique_share"] == 1.0 and r["seed"] == 1)
    inputs = [torch.cat([split.x1, split.x2], 1) for split in (splits.train, splits.test)]
    assert raw["probe_acc"] == linear_probe_accuracy(inputs[0], splits.train.labels, inputs[1], splits.test.labels)

    printed = capsys.readouterr().out
    values = [100 * r["probe_acc"] for r in results if r["method"] == "supcon" and r["unique_share"] == 1.0]
    assert f"{statistics.fmean(values):.1f} ± {statistics.stdev(values):.1f}" in printed
    assert "| method | u=0 | u=1 |" in printed
    assert "| factorcl_ssl | 1 | unique |" in printed


def test_cli_term_weights_reach_the_objective_and_need_the_six_terms(tmp_path, monkeypatch, capsys):
    fitted_weights = []

    def fit_and_record(*args, **kwargs):
        fitted = original_fit(*args, **kwargs)
        fitted_weights.append(fitted.model.objective.term_weights)
        return fitted

    original_fit = synthetic_sweep.fit_method
    monkeypatch.setattr(synthetic_sweep, "fit_method", fit_and_record)
    argv = [
        "--out", str(tmp_path), "--num-samples", "40", "--epochs", "1", "--batch-size", "10", "--seeds", "0",
        "--unique-shares", "1", "--no-progress", "--methods", "factorcl_sup",
        "--term-weights", "unique_cond_nce=0,unique_club=0.5",
    ]
    results = synthetic_sweep.main(argv)
    assert fitted_weights == [{**dict.fromkeys(LAYOUT_TERMS["per_term"], 1.0), "unique_cond_nce": 0.0, "unique_club": 0.5}]
    trained = next(r for r in results if r["method"] == "factorcl_sup")
    assert trained["settings"]["objective_options"]["term_weights"] == {"unique_cond_nce": 0.0, "unique_club": 0.5}

    for methods in (["--methods", "factorcl_ssl", "simclr"], []):
        with pytest.raises(SystemExit):
            synthetic_sweep.parse_args(["--out", str(tmp_path), "--term-weights", "unique_club=0", *methods])
        assert "--term-weights weighs FactorCL's six terms" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        synthetic_sweep.parse_args(
            ["--out", str(tmp_path), "--methods", "factorcl_ssl", "--term-weights", "no_such_term=1"]
        )
    assert "no_such_term" in capsys.readouterr().err


@pytest.mark.slow
def test_term_ablation_trains_each_variant_with_its_weights_and_resumes(tmp_path, monkeypatch, capsys):
    argv = ["--out", str(tmp_path), "--variants", "all terms", "without unique_club", "--max_train_steps", "2",
            "--num_train_samples", "80"]
    rows = term_ablation.main(argv)
    assert [r["variant"] for r in rows] == ["all terms", "without unique_club"]
    saved = json.loads((tmp_path / "term_ablation.json").read_text())
    assert [r["term_weights"] for r in saved["records"]] == [{}, {"unique_club": 0.0}]
    # Every weight is given, so the variants do not depend on the default preset's weights.
    for variant, weights in (("all_terms", {}), ("without_unique_club", {"unique_club": 0.0})):
        config = json.loads((tmp_path / variant / "seed_0" / "model" / "config.json").read_text())
        assert config["term_weights"] == {**dict.fromkeys(LAYOUT_TERMS["per_term"], 1.0), **weights}
        assert config["estimators"] == "tracked"
    assert (tmp_path / "term_ablation.png").stat().st_size > 1000
    assert "| without unique_club |" in capsys.readouterr().out
    # A second run reads the finished runs instead of training them again.
    monkeypatch.setattr(term_ablation, "train", lambda args: pytest.fail("trained a finished run again"))
    assert term_ablation.main(argv) == rows


def test_sweep_critic_check_is_validated_before_training(tmp_path, monkeypatch, capsys):
    """Issue 26, item 8: a test split smaller than one batch stops the sweep at once, naming
    the options, not after training."""
    def no_training(*args, **kwargs):
        raise AssertionError("the sweep trained")

    monkeypatch.setattr(synthetic_sweep, "run_sweep", no_training)
    with pytest.raises(SystemExit):
        synthetic_sweep.main(["--out", str(tmp_path), "--num-samples", "1000", "--critic-check"])
    error = capsys.readouterr().err
    assert "1000 samples leave 200 for testing: give --num-samples >= 1280 or a smaller --batch-size" in error
    assert not list(tmp_path.iterdir())
    with pytest.raises(SystemExit):
        synthetic_sweep.parse_args(["--help"])
    assert "Run it from the repository root" in " ".join(capsys.readouterr().out.split())
