"""The estimator presets: where they apply, what they set, and that old models keep theirs."""

import dataclasses

import pytest
import torch

from factorcl_hf import FactorCLConfig
from factorcl_hf.configuration_factorcl import ESTIMATOR_PRESETS, OBJECTIVE_REGISTRY, estimator_preset
from factorcl_hf.research.encoders import VectorFactorCL
from factorcl_hf.training_step import parameter_groups
from training.arguments import TrainingArguments


def test_default_presets_per_objective_and_a_clear_error():
    assert estimator_preset(None, "factorcl_sup").name == "tracked"
    assert estimator_preset(None, "factorcl_ssl").name == "closed_form"
    assert estimator_preset(None, "ourcl_ssl").name == "paper"
    assert all(spec.default_estimators in ESTIMATOR_PRESETS for spec in OBJECTIVE_REGISTRY.values())
    with pytest.raises(ValueError, match="estimators"):
        estimator_preset("fast")
    with pytest.raises(Exception, match="`estimators` must be one of"):  # wrapped by @strict validation
        FactorCLConfig(estimators="fast")


def test_configs_saved_before_the_presets_load_with_the_paper_estimators():
    saved = FactorCLConfig().to_dict()
    del saved["estimators"]
    assert FactorCLConfig.from_dict(saved).estimators == "paper"
    assert FactorCLConfig.from_dict(FactorCLConfig(estimators="tracked").to_dict()).estimators == "tracked"


def test_the_objective_follows_the_preset():
    tracked = VectorFactorCL((6, 6), "factorcl_sup", num_labels=2, head_dim=4, head_hidden_dim=8, critic_hidden_dim=8)
    paper = VectorFactorCL((6, 6), "factorcl_sup", num_labels=2, head_dim=4, head_hidden_dim=8, critic_hidden_dim=8,
                           estimators="paper")
    assert (tracked.objective.conditioning, tracked.objective.club_gradient) == ("negatives", "heads")
    assert (paper.objective.conditioning, paper.objective.club_gradient) == ("concat", "backbone")
    assert tracked.objective.club_shared_cond.negatives == "class" and paper.objective.club_shared_cond.negatives is None
    out = tracked.represent(torch.randn(5, 6), 0)
    unique_head = out.unique[:, :4]  # hU, normalized by the tracked preset
    torch.testing.assert_close(unique_head.norm(dim=1), torch.ones(5))


def test_parameter_groups_put_the_club_heads_at_their_own_learning_rate():
    model = VectorFactorCL((6, 6), "factorcl_ssl", head_dim=4, head_hidden_dim=8, critic_hidden_dim=8, estimators="tracked")
    groups = parameter_groups(model, 1e-3, 10.0)
    assert [g["lr"] for g in groups] == [1e-3, pytest.approx(1e-2)]
    grouped = [id(p) for g in groups for p in g["params"]]
    assert sorted(grouped) == sorted(id(p) for p in model.main_parameters())  # each once, none missing
    club_heads = {id(p) for m in model.objective.heads for r in ("shared_cond", "unique") for p in m.heads[r].parameters()}
    assert {id(p) for p in groups[1]["params"]} == club_heads
    baseline = VectorFactorCL((6, 6), "simclr", head_dim=4, head_hidden_dim=8)
    assert len(parameter_groups(baseline, 1e-3, 10.0)) == 1


def test_training_arguments_take_the_club_game_from_the_preset_unless_given():
    tracked = TrainingArguments(learning_rate=1e-3, objective="factorcl_sup").club_game
    assert tracked == {"critic_learning_rate": pytest.approx(1e-2), "club_critic_steps": 5, "club_head_lr_scale": 10.0}
    paper = TrainingArguments(learning_rate=1e-3, estimators="paper").club_game
    assert paper == {"critic_learning_rate": pytest.approx(1e-3), "club_critic_steps": 1, "club_head_lr_scale": 1.0}
    given = TrainingArguments(learning_rate=1e-3, estimators="tracked", club_critic_steps=2, critic_learning_rate=5e-4).club_game
    assert (given["club_critic_steps"], given["critic_learning_rate"]) == (2, 5e-4)
    assert set(ESTIMATOR_PRESETS) == {"paper", "tracked", "tracked_no_cond_nce", "closed_form"}
    # The closed_form layout has no CLUB game: its options are refused, naming them.
    with pytest.raises(ValueError, match=r"`club_critic_steps` would be ignored: .*closed_form.*--estimators tracked"):
        TrainingArguments(learning_rate=1e-3, club_critic_steps=2)
    # The previous FactorCL-SSL default is `tracked` with term 6 weighed 0, and the same game.
    no_cond_nce = dataclasses.asdict(ESTIMATOR_PRESETS["tracked_no_cond_nce"])
    tracked = dataclasses.asdict(ESTIMATOR_PRESETS["tracked"])
    assert {k: v for k, v in no_cond_nce.items() if v != tracked[k]} == {
        "name": "tracked_no_cond_nce", "term_weights": {"unique_cond_nce": 0.0}
    }
    assert ESTIMATOR_PRESETS["paper"].term_weights == {} == ESTIMATOR_PRESETS["tracked"].term_weights
    with pytest.raises(ValueError, match="club_head_lr_scale"):
        TrainingArguments(club_head_lr_scale=0.0)
