"""Every training option is honoured or refused (issue 25, §4): an option the run would not use
is refused before any data is read, naming it and what to do instead; a --config recipe's is
left out with an info line; gradient accumulation, which would shrink the negatives of the
contrastive objectives, is refused."""

import dataclasses
import logging

import pytest
from transformers import HfArgumentParser

from factorcl_hf.configuration_factorcl import OBJECTIVE_REGISTRY
from factorcl_hf.objectives import _BASELINES, build_objective
from training.arguments import TrainingArguments, given_options, parse_args, unused_options
from training.demo import DEFAULT_CONFIG

BASELINES = [name for name, spec in OBJECTIVE_REGISTRY.items() if not spec.six_bounds]


# --------------------------------------------------------------------- unused options
@pytest.mark.parametrize("flags,refused,advice", [
    # The baselines have heads and a temperature only.
    (["--objective", "simclr", "--critic_hidden_dim", "16"], ["critic_hidden_dim"], "baseline"),
    (["--objective", "supcon", "--estimators", "tracked", "--critic_type", "separable"], ["estimators", "critic_type"],
     "factorcl_ssl"),
    (["--objective", "siglip", "--alignment_critic_type", "concat", "--critic_chunk_size", "8"],
     ["alignment_critic_type", "critic_chunk_size"], "baseline"),
    (["--objective", "cross_self", "--club_critic_steps", "2", "--critic_learning_rate", "1e-3"],
     ["club_critic_steps", "critic_learning_rate"], "baseline"),
    (["--objective", "simclr", "--club_critic_check_steps", "5", "--factorization_rows", "100"],
     ["club_critic_check_steps", "factorization_rows"], "baseline"),
    # The closed_form estimators play no CLUB game; the per-term ones fit no factorization.
    (["--objective", "factorcl_ssl", "--club_head_lr_scale", "2"], ["club_head_lr_scale"], "--estimators tracked"),
    (["--objective", "factorcl_sup", "--factorization_rows", "100"], ["factorization_rows"], "closed_form"),
    # Augmentations without augmented views.
    (["--objective", "simclr", "--crop_scale_min", "0.5", "--text_augmentation", "mask"],
     ["crop_scale_min", "text_augmentation"], "without augmented views"),
    (["--objective", "factorcl_sup", "--label_column", "label", "--text_augmentation", "none"], ["text_augmentation"],
     "factorcl_ssl"),
    # Unlocked layers of a tower that is not locked.
    (["--lock_image_unlocked_layers", "1"], ["lock_image_unlocked_layers"], "add --lock_image"),
    (["--lock_image", "--lock_text_unlocked_layers", "2"], ["lock_text_unlocked_layers"], "add --lock_text"),
    # The tiny CLIP's sizes beside a checkpoint.
    (["--clip_model", "openai/clip-vit-base-patch32", "--tiny_hidden_size", "16", "--tiny_image_size", "64"],
     ["tiny_image_size", "tiny_hidden_size"], "--clip_model"),
    # The embedded dataset's shape beside --train_data.
    (["--train_data", "data.csv", "--num_train_samples", "100", "--unique_share", "0.5"],
     ["num_train_samples", "unique_share"], "without --train_data"),
    # Streaming options without --streaming.
    (["--streaming_shuffle_buffer", "10"], ["streaming_shuffle_buffer"], "--streaming"),
])
def test_an_option_the_run_would_not_use_is_refused_naming_it(flags, refused, advice):
    with pytest.raises(ValueError, match="would be ignored") as error:
        parse_args(flags)
    message = str(error.value)
    assert message.startswith(", ".join(f"`{name}`" for name in refused) + " would be ignored: "), message
    assert advice in message
    # The same values given to the dataclass directly: the same refusal.
    values = vars(HfArgumentParser(TrainingArguments).parse_args(flags))
    with pytest.raises(ValueError, match=f"`{refused[0]}`"):
        TrainingArguments(**values)


def test_options_the_run_uses_are_accepted():
    """The counterparts of the refusals: each option where it is used."""
    accepted = [
        ["--objective", "factorcl_sup", "--label_column", "label", "--critic_hidden_dim", "16", "--estimators", "paper",
         "--club_critic_steps", "2"],
        ["--objective", "simclr", "--logit_temperature", "0.07", "--head_dim", "8"],
        ["--objective", "cross_self", "--crop_scale_min", "0.5", "--text_augmentation", "mask"],
        ["--objective", "factorcl_ssl", "--factorization_rows", "100", "--critic_hidden_dim", "16"],
        ["--lock_image", "--lock_image_unlocked_layers", "1", "--lock_text", "--lock_text_unlocked_layers", "1"],
        ["--clip_model", "openai/clip-vit-base-patch32"],
        ["--train_data", "data.csv"],
        ["--num_train_samples", "100", "--unique_share", "0.5"],
        ["--train_data", "data.csv", "--streaming", "--max_train_steps", "2", "--streaming_sample_rows", "8"],
    ]
    for flags in accepted:
        parse_args(flags)
    # An option given at its default value is not "given": nothing to refuse.
    assert parse_args(["--objective", "simclr", "--critic_hidden_dim", "256"]).critic_hidden_dim == 256


def test_given_options_are_those_that_differ_from_the_declared_default():
    args = TrainingArguments(objective="simclr", head_dim=8, learning_rate=TrainingArguments.learning_rate)
    assert given_options(args) == {"objective", "head_dim"}
    names = {f.name for f in dataclasses.fields(TrainingArguments)}
    for options, why in unused_options(TrainingArguments(clip_model="x", train_data="y", objective="simclr")):
        assert set(options) <= names and why, options


def test_the_baselines_refused_critic_options_are_the_ones_build_objective_ignores():
    """What the rule calls a baseline is what `build_objective` builds without critics, and
    it builds the same objective whatever the critic options: refusing them loses nothing."""
    assert set(BASELINES) == set(_BASELINES)
    critic_options = dict(critic_type="separable", critic_hidden_dim=7, critic_num_hidden_layers=3,
                          alignment_critic_type="concat", critic_chunk_size=2, estimators="tracked")
    kwargs = dict(num_labels=3, head_dim=4, head_hidden_dim=8)
    for name in BASELINES:
        plain, with_critics = (build_objective(name, (6, 6), **kwargs, **extra) for extra in ({}, critic_options))
        shapes = [{k: v.shape for k, v in objective.state_dict().items()} for objective in (plain, with_critics)]
        assert shapes[0] == shapes[1], name
        assert type(plain.alignment_critic) is type(with_critics.alignment_critic), name
        assert not plain.club_critic_parameters()


def test_a_config_recipe_leaves_out_what_the_run_does_not_use_and_flags_are_still_refused(caplog):
    """training/configs/demo.yaml serves three objectives on data written by training/demo.py:
    a simclr run on --train_data leaves out its augmentations and the embedded dataset's
    shape, with an info line naming them; FactorCL-SSL keeps its augmentations."""
    with caplog.at_level(logging.INFO, logger="factorcl.train"):
        simclr = parse_args(["--config", str(DEFAULT_CONFIG), "--train_data", "data", "--objective", "simclr"])
    defaults = TrainingArguments()
    assert (simclr.crop_scale_min, simclr.unique_share) == (defaults.crop_scale_min, defaults.unique_share)
    assert simclr.head_dim == 64 and simclr.per_device_train_batch_size == 64 and simclr.learning_rate == 1e-3
    assert "`crop_scale_min`" in caplog.text and "`unique_share`" in caplog.text and "demo.yaml" in caplog.text
    ssl = parse_args(["--config", str(DEFAULT_CONFIG), "--train_data", "data", "--objective", "factorcl_ssl"])
    assert ssl.crop_scale_min == 0.9 and ssl.unique_share is None
    # Without --train_data the recipe's dataset shape is used.
    assert parse_args(["--config", str(DEFAULT_CONFIG)]).unique_share == 0.75
    # A flag is a request: refused, even beside a recipe.
    with pytest.raises(ValueError, match="`crop_scale_min` would be ignored: objective 'simclr'"):
        parse_args(["--config", str(DEFAULT_CONFIG), "--objective", "simclr", "--crop_scale_min", "0.5"])


# --------------------------------------------------------------- gradient accumulation
@pytest.mark.parametrize("objective", list(OBJECTIVE_REGISTRY))
def test_gradient_accumulation_is_refused_for_the_contrastive_objectives(objective):
    flags = ["--objective", objective, "--gradient_accumulation_steps", "4", "--per_device_train_batch_size", "16"]
    with pytest.raises(ValueError, match=r"`gradient_accumulation_steps` must be 1, got 4: the objectives are "
                                         r"contrastive.* its own 16 rows only, not with the 64 .*"
                                         r"--per_device_train_batch_size.*more processes"):
        parse_args(flags + (["--label_column", "label"] if OBJECTIVE_REGISTRY[objective].supervised else []))
    assert parse_args(["--objective", objective, "--gradient_accumulation_steps", "1"]).gradient_accumulation_steps == 1
