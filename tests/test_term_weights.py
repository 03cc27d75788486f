"""`term_weights`: a weight per FactorCL term, one declaration from the training flag to the
loss, checked against the terms computed without weights."""

import pytest
import torch
from huggingface_hub.errors import StrictDataclassClassValidationError

from factorcl_hf import FactorCLConfig, FactorCLModel
from factorcl_hf.configuration_factorcl import LAYOUT_TERMS, OBJECTIVE_REGISTRY, estimator_preset
from factorcl_hf.objectives import build_objective
from factorcl_hf.offline import tiny_clip_config
from training.arguments import parse_args

B, D1, D2, L = 8, 12, 10, 3
PER_TERM = LAYOUT_TERMS["per_term"]
SMALL = dict(head_dim=6, head_hidden_dim=16, critic_hidden_dim=16, critic_embed_dim=8)
WEIGHTS = {"shared_cond_club": 0.0, "unique_club": 0.5, "unique_label_nce_2": 2.0, "unique_cond_nce": 0.25}


def make_batch(seed=0):
    g = torch.Generator().manual_seed(seed)
    f1, f2 = torch.randn(B, D1, generator=g), torch.randn(B, D2, generator=g)
    return dict(features_1=f1, features_2=f2, labels=torch.randint(0, L, (B,), generator=g),
                augmented_1=f1 + 0.1 * torch.randn(B, D1, generator=g), augmented_2=f2 + 0.1 * torch.randn(B, D2, generator=g))


def objective(name, **options):
    torch.manual_seed(0)
    return build_objective(name, (D1, D2), num_labels=L, **SMALL, **options)


@pytest.mark.parametrize("name, estimators", [("factorcl_sup", "tracked"), ("factorcl_ssl", "tracked"),
                                              ("ourcl_ssl", "paper")])
def test_the_loss_is_the_weighted_sum_of_the_unweighted_terms(name, estimators):
    batch = make_batch()
    plain = objective(name, estimators=estimators)(**batch)
    weighted = objective(name, estimators=estimators, term_weights=WEIGHTS)(**batch)
    # The same heads and critics (same seed): the terms are equal, only their sum changes.
    for term in PER_TERM:
        torch.testing.assert_close(weighted.loss_terms[term], plain.loss_terms[term])
    t = plain.loss_terms
    expected = (-t["shared_nce"] + 0.0 * t["shared_cond_club"] + 0.5 * t["unique_club"]
                - t["unique_label_nce_1"] - 2.0 * t["unique_label_nce_2"] - 0.25 * t["unique_cond_nce"])
    torch.testing.assert_close(weighted.loss.detach(), expected)
    assert not torch.allclose(weighted.loss, plain.loss)
    # Every weight 1 (named or not) is the paper's sum to the bit.
    ones = objective(name, estimators=estimators, term_weights=dict.fromkeys(PER_TERM, 1))(**batch)
    assert torch.equal(ones.loss, plain.loss)
    paper_sum = (-t["shared_nce"] + t["shared_cond_club"] + t["unique_club"]
                 - t["unique_label_nce_1"] - t["unique_label_nce_2"] - t["unique_cond_nce"])
    assert torch.equal(plain.loss.detach(), paper_sum)


@pytest.mark.parametrize("name", ["factorcl_ssl", "factorcl_sup"])
def test_the_closed_form_loss_is_the_weighted_sum_of_its_terms(name):
    """The closed_form layout's four terms, signed as in FACTORCL_TERMS (InfoNCE maximised, the
    alignment distance minimised), each times its weight."""
    batch = make_batch()
    weights = {"shared_alignment": 0.5, "unique_label_nce_2": 2.0}
    plain = objective(name, estimators="closed_form")(**batch)
    weighted = objective(name, estimators="closed_form", term_weights=weights)(**batch)
    assert set(plain.loss_terms) == set(LAYOUT_TERMS["closed_form"])
    t = plain.loss_terms
    torch.testing.assert_close(plain.loss.detach(), -t["shared_nce"] + t["shared_alignment"]
                               - t["unique_label_nce_1"] - t["unique_label_nce_2"])
    torch.testing.assert_close(weighted.loss.detach(), -t["shared_nce"] + 0.5 * t["shared_alignment"]
                               - t["unique_label_nce_1"] - 2.0 * t["unique_label_nce_2"])


def test_the_previous_ssl_default_drops_the_conditional_infonce_and_a_models_weights_override_it():
    batch = make_batch()
    ones = dict.fromkeys(PER_TERM, 1.0)
    default, tracked = objective("factorcl_ssl", estimators="tracked_no_cond_nce"), objective("factorcl_ssl", estimators="tracked")
    assert (default.estimators, default.term_weights) == ("tracked_no_cond_nce", {**ones, "unique_cond_nce": 0.0})
    assert (tracked.term_weights, objective("factorcl_sup").term_weights) == (ones, ones)
    out, out_tracked = default(**batch), tracked(**batch)
    # The same heads, critics and estimators: the terms are equal, term 6 left out of the sum.
    for term in PER_TERM:
        assert torch.equal(out.loss_terms[term], out_tracked.loss_terms[term])
    torch.testing.assert_close(out.loss.detach(), (out_tracked.loss + out_tracked.loss_terms["unique_cond_nce"]).detach())
    restored = objective("factorcl_ssl", estimators="tracked_no_cond_nce", term_weights={"unique_cond_nce": 1})(**batch)
    assert torch.equal(restored.loss, out_tracked.loss)


def test_a_term_weighted_zero_trains_nothing():
    """With the tracked estimators only the CLUB term trains the `unique` heads: weight 0 leaves
    them without gradient, weight 1 does not."""
    batch = make_batch()
    for weight, moves in ((0.0, False), (1.0, True)):
        obj = objective("factorcl_sup", estimators="tracked", term_weights={"unique_club": weight})
        obj(**batch).loss.backward()
        grads = [p.grad for m in range(2) for p in obj.heads[m].heads["unique"].parameters()]
        assert any(g is not None and g.abs().sum() > 0 for g in grads) == moves


def test_config_model_and_training_flag_carry_the_weights(tmp_path):
    args = parse_args(["--estimators", "tracked_no_cond_nce", "--term_weights", "unique_club=0, shared_cond_club=0.5"])
    assert args.term_weights == {"unique_club": 0.0, "shared_cond_club": 0.5}
    config = FactorCLConfig(clip_config=tiny_clip_config(64, bos_token_id=0, eos_token_id=1, pad_token_id=1, hidden_size=16, num_layers=1,
                                                             projection_dim=8),
                            estimators=args.estimators, term_weights=args.term_weights, **SMALL)
    model = FactorCLModel(config)
    # The model's weights over the preset's (tracked_no_cond_nce: no term 6).
    preset_weights = estimator_preset(args.estimators, config.objective).term_weights
    assert preset_weights == {"unique_cond_nce": 0.0}
    assert model.objective.term_weights == {**dict.fromkeys(LAYOUT_TERMS["per_term"], 1.0), **preset_weights, **args.term_weights}
    model.save_pretrained(tmp_path)
    reloaded = FactorCLModel.from_pretrained(tmp_path)
    assert reloaded.config.term_weights == args.term_weights
    assert reloaded.objective.term_weights == model.objective.term_weights
    assert FactorCLConfig().term_weights is None and parse_args([]).term_weights is None


@pytest.mark.parametrize("weights, match", [
    ({"unique": 1.0}, "unknown term 'unique'"),
    ({"unique_club": -1}, r"term_weights\['unique_club'\].*>= 0"),
    ({"unique_club": float("nan")}, r"term_weights\['unique_club'\]"),
    ({"unique_club": True}, r"term_weights\['unique_club'\]"),
])
def test_bad_weights_are_named(weights, match):
    with pytest.raises(ValueError, match=match):
        build_objective("factorcl_ssl", (D1, D2), term_weights=weights)
    with pytest.raises(StrictDataclassClassValidationError, match=match):
        FactorCLConfig(term_weights=weights)


@pytest.mark.parametrize("name", [n for n, spec in OBJECTIVE_REGISTRY.items() if not spec.six_bounds])
def test_objectives_without_the_six_terms_refuse_weights(name):
    with pytest.raises(ValueError, match=f"objective '{name}' has none"):
        build_objective(name, (D1, D2), num_labels=L, term_weights={"unique_club": 0.0})
    with pytest.raises(ValueError, match="has none"):
        parse_args(["--objective", name, "--term_weights", "unique_club=0"])


@pytest.mark.parametrize("flag", ["unique_club", "unique_club=x", "unique_club=1,,", "=1"])
def test_malformed_flags_are_named(flag):
    with pytest.raises(ValueError, match="term_weights"):
        parse_args(["--term_weights", flag])


def test_a_weight_the_layout_does_not_compute_is_refused_before_training():
    """The default FactorCL-SSL estimators (closed_form) have no CLUB terms: weighing one is an
    error at argument parsing, naming the term and the layout's terms."""
    assert parse_args(["--term_weights", "shared_alignment=0.5"]).term_weights == {"shared_alignment": 0.5}
    with pytest.raises(ValueError, match=r"\['unique_club'\].*closed_form.*shared_alignment"):
        parse_args(["--term_weights", "unique_club=0"])
