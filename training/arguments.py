"""The options of a training job: one dataclass, each option declared once with its default
and help text, parsed with `transformers.HfArgumentParser`.

Values come from the defaults below, then a ``--config`` file (YAML or JSON, the same keys;
unknown keys are an error), then command-line flags, which win. The options named like a
``FactorCLConfig`` field (objective, heads, critics: the architecture) go to the model's
config, whose defaults are the same (a test checks it); the others say how it is trained.

An option the run would not use (a critic option for a baseline objective, an augmentation for
an objective without augmented views, ...: :func:`unused_options`) is refused, naming it and
what to do instead, rather than silently ignored; a ``--config`` recipe's is left out, with a
warning.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from transformers import HfArgumentParser

from factorcl_hf.configuration_factorcl import (
    ESTIMATOR_PRESETS,
    FACTORCL_TERMS,
    OBJECTIVE_REGISTRY,
    check_term_weights,
    estimator_preset,
    objective_spec,
)

__all__ = ["TrainingArguments", "parse_args", "load_config_file", "given_options", "unused_options"]

log = logging.getLogger("factorcl.train")


# "factorcl_ssl: tracked_no_cond_nce, ..." for --help: the presets objectives with CLUB terms use.
_DEFAULT_ESTIMATORS = ", ".join(f"{s.name} {s.default_estimators}" for s in OBJECTIVE_REGISTRY.values() if s.six_bounds)


def _option(default, help: str, **kwargs):
    return field(default=default, metadata={"help": help, **kwargs})


@dataclass
class TrainingArguments:
    """Every option of ``training/train.py`` (see ``--help``)."""

    config: str | None = _option(None, "YAML/JSON file of any of these options (e.g. training/configs/demo.yaml); "
                                 "flags given on the command line override it")
    # -- data
    train_data: str | None = _option(None, "imagefolder dir, .csv/.jsonl/.parquet file or Hub dataset id; "
                                     "default: the embedded shapes dataset")
    train_split: str = _option("train", "split to train on")
    eval_split: str = _option("test", "split to evaluate on (of --eval_data if given); 'none' to skip evaluation")
    eval_data: str | None = _option(None, "separate evaluation data (imagefolder dir, file or Hub id; as open_clip's "
                                    "--val-data); its --eval_split, or its only split")
    eval_fraction: float | None = _option(None, "hold out this share of the training split (seeded by --seed) "
                                          "for evaluation")
    image_column: str = _option("image", "image column")
    caption_column: str = _option("caption", "caption column")
    label_column: str | None = _option(None, "label column (required by supervised objectives; used by the linear probe)")
    num_labels: int | None = _option(None, "number of classes of integer labels (ids 0..N-1); default: the largest id "
                                     "in the training split + 1. --streaming needs it (or --label_names) unless the "
                                     "label column is a ClassLabel")
    label_names: list[str] | None = _option(None, "class names in id order (string labels must be among them; sets "
                                            "num_labels); default: the ClassLabel's names or the sorted strings")
    allow_outside_paths: bool = _option(False, "let a CSV/JSONL/Parquet file's image paths (absolute, `..`) and an "
                                        "imagefolder's symlinks lead outside the data's folder (refused by default)")
    num_train_samples: int = _option(2000, "size of the embedded dataset (without --train_data)")
    unique_share: float | None = _option(None, "embedded dataset (without --train_data): share of labels from unique "
                                         "attributes (default: the dataset's)")
    dataloader_num_workers: int = _option(0, "data-loader worker processes")
    streaming: bool = _option(False, "stream --train_data (a datasets IterableDataset, sharded across processes): a "
                              "Hub dataset bigger than the disk trains without a download; needs --max_train_steps")
    streaming_shuffle_buffer: int = _option(1000, "--streaming: rows in the shuffle buffer")
    streaming_sample_rows: int = _option(1000, "--streaming: rows read up front for the tokenizer, label count and "
                                         "the linear probe's training features")
    retrieval_match_columns: list[str] | None = _option(None, "also report retrieval where any item agreeing with "
                                                        "the query on these columns is a hit")
    # -- model: a CLIP checkpoint, or a tiny random CLIP (the tiny_* options, refused with --clip_model)
    clip_model: str | None = _option(None, "CLIP or SigLIP checkpoint (Hub id or dir) to start from; default: a tiny random CLIP")
    tiny_image_size: int = _option(32, "tiny CLIP: image size")
    tiny_patch_size: int = _option(8, "tiny CLIP: patch size")
    tiny_hidden_size: int = _option(64, "tiny CLIP: width of both towers")
    tiny_num_layers: int = _option(2, "tiny CLIP: layers of both towers")
    tiny_projection_dim: int = _option(64, "tiny CLIP: projection (backbone embedding) size")
    lock_image: bool = _option(False, "freeze the image tower (vision model and projection), as open_clip's --lock-image")
    lock_image_unlocked_layers: int = _option(0, "with --lock_image: leave its last N transformer layers (and the "
                                              "final norm and projection) trainable")
    lock_text: bool = _option(False, "freeze the text tower (text model and projection); with --lock_image only the "
                              "FactorCL heads and critics train")
    lock_text_unlocked_layers: int = _option(0, "with --lock_text: leave its last N transformer layers (and the final "
                                             "norm and projection) trainable")
    # -- model: objective, heads and critics (FactorCLConfig fields, same defaults); the baselines (simclr,
    # siglip, supcon, cross_self) have heads and a temperature only, and refuse the critic options
    objective: str = _option("factorcl_ssl", "a name of factorcl_hf.configuration_factorcl.OBJECTIVE_REGISTRY "
                             "(README: Training); supervised objectives need --label_column")
    head_dim: int = _option(64, "output size of every projection head")
    head_hidden_dim: int = _option(256, "hidden size of the projection heads")
    critic_type: str = _option("concat", "critic of the learned MI bounds: concat (the paper's) or separable")
    critic_hidden_dim: int = _option(256, "hidden size of the learned critics")
    critic_num_hidden_layers: int = _option(1, "hidden layers of the learned critics (paper: 1)")
    alignment_critic_type: str = _option("cosine", "critic of the shared InfoNCE term, which also scores retrieval: "
                                         "cosine (the CLIP loss), concat or separable")
    logit_temperature: float = _option(0.1, "temperature of cosine critics (logits = cos / temperature); siglip "
                                       "trains with a learned scale and bias, its temperature scales logits_per_image")
    critic_chunk_size: int | None = _option(None, "rows of the all-pairs critics evaluated at a time (bounds memory)")
    estimators: str | None = _option(None, "how the conditional and CLUB terms are estimated: "
                                     f"{', '.join(ESTIMATOR_PRESETS)} (docs/estimators.md; default: the objective's, "
                                     f"{_DEFAULT_ESTIMATORS}); sets the three options below and the "
                                     "preset's term weights")
    term_weights: str | None = _option(None, "weights of FactorCL's loss terms, NAME=WEIGHT,... (a YAML --config may "
                                       f"give a mapping); terms not named weigh 1. Terms: {', '.join(FACTORCL_TERMS)}")
    # -- the CLUB game (default: the --estimators preset's)
    club_critic_steps: int | None = _option(None, "CLUB-critic optimizer steps per batch (k; paper 1, tracked 5)")
    critic_learning_rate: float | None = _option(None, "learning rate of the CLUB critics' Adam "
                                                 "(paper: --learning_rate, tracked: 10x)")
    club_head_lr_scale: float | None = _option(None, "learning rate of the heads only the CLUB terms train, over "
                                               "--learning_rate (paper 1, tracked 10)")
    # -- augmentations (objectives with augmented views; refused by the others)
    crop_scale_min: float = _option(0.2, "smallest crop area of the image augmentation (paper: 0.2)")
    text_augmentation: Literal["delete", "mask", "none"] = _option("delete", "text augmentation of each caption")
    # -- optimization
    output_dir: str = _option("outputs/run", "where the model, results.json and checkpoints go")
    num_train_epochs: int = _option(1, "passes over the training split")
    max_train_steps: int | None = _option(None, "optimizer steps (overrides --num_train_epochs)")
    per_device_train_batch_size: int = _option(32, "training batch per process (contrastive: at least 2)")
    per_device_eval_batch_size: int = _option(128, "evaluation batch")
    learning_rate: float = _option(5e-4, "AdamW learning rate of the backbone, heads and InfoNCE critics")
    weight_decay: float = _option(0.01, "AdamW weight decay")
    lr_scheduler_type: str = _option("cosine", "transformers scheduler name")
    num_warmup_steps: int = _option(0, "learning-rate warm-up steps")
    gradient_accumulation_steps: int = _option(1, "micro-batches per optimizer step; must be 1: the objectives are "
                                               "contrastive, and a micro-batch would only contrast its own rows")
    max_grad_norm: float = _option(1.0, "clip the main parameters' gradient norm (0: off)")
    mixed_precision: Literal["no", "fp16", "bf16"] = _option("no", "mixed precision")
    gradient_checkpointing: bool = _option(False, "recompute the CLIP backbone's activations in the backward pass "
                                           "(less memory, more compute)")
    torch_compile: bool = _option(False, "compile the model with torch.compile (accelerate's inductor backend)")
    cpu: bool = _option(False, "train on the CPU even if a GPU is present")
    seed: int = _option(0, "seed of the data, the model's initialization and the augmentations")
    # -- checkpoints, logging, evaluation, Hub
    checkpointing_steps: int | None = _option(None, "save an accelerate checkpoint every N optimizer steps")
    checkpoints_total_limit: int = _option(2, "checkpoints kept")
    resume_from_checkpoint: str | None = _option(None, "checkpoint dir, or 'latest' (newest under OUTPUT_DIR/checkpoints)")
    report_to: str = _option("none", "trackers of the loss terms and evaluation metrics (accelerate's log_with): "
                             "none, all (every installed one), or names, comma-separated: tensorboard, wandb, mlflow, ...")
    logging_steps: int = _option(10, "log the mean loss terms of every N optimizer steps (train_log.jsonl, trackers)")
    factorization_rows: int = _option(20000, "closed-form estimators: training pairs (unaugmented) the factorization's "
                                      "conditional expectations are fitted on once training is done (docs/method.md)")
    club_critic_check_steps: int = _option(0, "after training, fit fresh CLUB critics for N steps on the frozen train "
                                           "features and compare them with the trained ones on the eval split "
                                           "(0: off; single-process runs)")
    eval_every_epoch: bool = _option(False, "also evaluate after every epoch but the last")
    push_to_hub: bool = _option(False, "push model, processor and card to --hub_model_id")
    hub_model_id: str | None = _option(None, "USER/NAME on the Hub")
    license: str = _option("apache-2.0", "license id in the model card (the Hub's ids); when fine-tuning a "
                           "checkpoint, its license (e.g. mit for openai/clip-*)")
    disable_tqdm: bool = _option(False, "no progress bar")
    save_seen_rows: bool = _option(False, "write the row indices each process trained on (debugging)")
    debug: bool = _option(False, "show the traceback of errors (else one line; also FACTORCL_DEBUG=1)")

    def __post_init__(self):
        # Checked here, before any data is read or model built: a zero count would otherwise
        # "train" for no steps and save an untrained model, or divide by zero much later.
        minimums = (("per_device_train_batch_size", 2), ("per_device_eval_batch_size", 1), ("logging_steps", 1),
                    ("club_critic_check_steps", 0), ("factorization_rows", 2), ("club_critic_steps", 1), ("num_train_epochs", 1),
                    ("max_train_steps", 1), ("gradient_accumulation_steps", 1), ("checkpointing_steps", 1),
                    ("num_warmup_steps", 0), ("dataloader_num_workers", 0), ("checkpoints_total_limit", 1),
                    ("seed", 0), ("num_labels", 2), ("streaming_shuffle_buffer", 1), ("streaming_sample_rows", 2),
                    ("num_train_samples", 2), ("tiny_image_size", 1), ("tiny_patch_size", 1), ("tiny_hidden_size", 1),
                    ("tiny_num_layers", 1), ("tiny_projection_dim", 1), ("lock_image_unlocked_layers", 0),
                    ("lock_text_unlocked_layers", 0))
        for name, minimum in minimums:
            value = getattr(self, name)
            if value is not None and value < minimum:
                why = " for contrastive training" if name == "per_device_train_batch_size" else ""
                raise ValueError(f"`{name}` must be >= {minimum}{why}, got {value}")
        if self.seed >= 2**32:
            raise ValueError(f"`seed` must be < 2**32 (numpy's seeds), got {self.seed}")
        for name in ("critic_learning_rate", "club_head_lr_scale", "logit_temperature"):
            if getattr(self, name) is not None and not 0 < getattr(self, name) < math.inf:
                raise ValueError(f"`{name}` must be a finite number > 0, got {getattr(self, name)}")
        for name in ("max_grad_norm", "weight_decay"):
            if not 0 <= getattr(self, name) < math.inf:
                raise ValueError(f"`{name}` must be a finite number >= 0 (0: off), got {getattr(self, name)}")
        if not 0 < self.crop_scale_min <= 1:
            raise ValueError(f"`crop_scale_min` must be in (0, 1], got {self.crop_scale_min}")
        if not str(self.output_dir).strip():
            raise ValueError("`output_dir` must name a folder, got an empty string")
        if self.label_names is not None:
            names = [str(name).strip() for name in self.label_names]
            if len(names) < 2 or len(set(names)) != len(names) or not all(names):
                raise ValueError(f"`label_names` must be at least two distinct, non-empty names, got {self.label_names}")
            if self.num_labels is not None and self.num_labels != len(names):
                raise ValueError(f"`num_labels` ({self.num_labels}) and `label_names` ({len(names)} names) disagree")
            self.label_names = names
        if self.streaming and (not self.max_train_steps or self.eval_fraction):
            raise ValueError("--streaming needs `max_train_steps` (a stream has no length) and no `eval_fraction` "
                             "(give --eval_data)")
        if self.eval_fraction is not None and not 0 < self.eval_fraction < 1:
            raise ValueError(f"`eval_fraction` must be in (0, 1), got {self.eval_fraction}")
        if not 0 < self.learning_rate < math.inf:
            raise ValueError(f"`learning_rate` must be a finite number > 0, got {self.learning_rate}")
        if self.push_to_hub and not self.hub_model_id:
            raise ValueError("`hub_model_id` (USER/NAME) is required with `push_to_hub`")
        if self.gradient_accumulation_steps > 1:
            # Every objective is contrastive (objectives.ContrastiveObjective): a row's negatives are the
            # other rows of its batch. Accumulated micro-batches would each be a smaller contrastive
            # problem, not the gradient of the batch they add up to; that needs cached features
            # (GradCache), which the training step does not implement.
            raise ValueError(
                f"`gradient_accumulation_steps` must be 1, got {self.gradient_accumulation_steps}: the objectives are "
                "contrastive, and each accumulated micro-batch would contrast its rows with its own "
                f"{self.per_device_train_batch_size} rows only, not with the "
                f"{self.per_device_train_batch_size * self.gradient_accumulation_steps} of the batch they add up to. "
                "For a bigger batch raise --per_device_train_batch_size (--gradient_checkpointing, --mixed_precision "
                "or --lock_image make it fit) or train on more processes, whose features are gathered")
        # An option this run would not use is refused rather than silently ignored (a --config
        # recipe's are left out by `parse_args` instead).
        given = given_options(self)
        for options, why in unused_options(self):
            named = [name for name in options if name in given]
            if named:
                raise ValueError(f"{', '.join(f'`{name}`' for name in named)} would be ignored: {why}")
        self.term_weights = parse_term_weights(self.term_weights, self.objective)
        if self.term_weights:
            estimator_preset(self.estimators, self.objective).weights(self.term_weights)

    @property
    def club_game(self) -> dict:
        """``critic_learning_rate``, ``club_critic_steps`` and ``club_head_lr_scale``: the ones
        given, else the ``--estimators`` preset's."""
        return estimator_preset(self.estimators, self.objective).club_game(
            self.learning_rate, self.critic_learning_rate, self.club_critic_steps, self.club_head_lr_scale
        )


_DEFAULTS = {f.name: f.default for f in dataclasses.fields(TrainingArguments)}
_OPTIONS = tuple(_DEFAULTS)
# The options that only some runs use, by group (see `unused_options`).
_CRITIC_OPTIONS = ("estimators", "critic_type", "critic_hidden_dim", "critic_num_hidden_layers", "alignment_critic_type",
                   "critic_chunk_size")
_CLUB_OPTIONS = ("club_critic_steps", "critic_learning_rate", "club_head_lr_scale", "club_critic_check_steps")
_AUGMENTATION_OPTIONS = ("crop_scale_min", "text_augmentation")
_TINY_OPTIONS = tuple(name for name in _OPTIONS if name.startswith("tiny_"))
_STREAMING_OPTIONS = tuple(name for name in _OPTIONS if name.startswith("streaming_"))


def given_options(args) -> set[str]:
    """The options of ``args`` whose value differs from the declared default: the ones given."""
    return {name for name, default in _DEFAULTS.items() if getattr(args, name) != default}


def unused_options(args) -> list[tuple[tuple[str, ...], str]]:
    """The groups of options that the run ``args`` describes would not use, each with why and
    what to do instead (``args``: anything with the options as attributes). A given option of
    these is refused (``TrainingArguments``); a ``--config`` recipe's is left out (:func:`parse_args`)."""
    spec, objective = objective_spec(args.objective), repr(args.objective)
    groups = []
    if not spec.six_bounds:
        # The baselines read the head sizes and the temperature only (objectives.build_objective).
        groups.append((_CRITIC_OPTIONS + _CLUB_OPTIONS + ("factorization_rows",),
                       f"objective {objective} is a baseline with a loss of its own, without learned critics, "
                       "estimators, CLUB game or factorization fit; leave them out, or train one of "
                       f"{_objectives('six_bounds')}"))
    elif (preset := estimator_preset(args.estimators, args.objective)).layout == "closed_form":
        groups.append((_CLUB_OPTIONS, f"the closed_form estimators of {objective} have no CLUB critics; "
                                      "pass `--estimators tracked` to train with them"))
    else:
        groups.append((("factorization_rows",), "only the closed_form estimators fit a factorization after training, "
                                                f"not the {preset.name!r} estimators of {objective}"))
    if not spec.augmented_views:
        groups.append((_AUGMENTATION_OPTIONS, f"objective {objective} trains without augmented views (those with "
                                              f"them: {_objectives('augmented_views')})"))
    for modality in ("image", "text"):
        if not getattr(args, f"lock_{modality}"):
            groups.append(((f"lock_{modality}_unlocked_layers",),
                           f"it leaves layers of a locked {modality} tower trainable; add --lock_{modality}"))
    if args.clip_model:
        groups.append((_TINY_OPTIONS, f"they size the tiny random CLIP built without --clip_model; "
                                      f"{args.clip_model!r} has its own sizes"))
    if args.train_data is not None:
        groups.append((("num_train_samples", "unique_share"),
                       "they shape the embedded dataset, which is written only without --train_data"))
    if not args.streaming:
        groups.append((_STREAMING_OPTIONS, "they configure --streaming, which is not given"))
    return groups


def _objectives(flag: str) -> list[str]:
    """The objectives whose :class:`ObjectiveSpec` has ``flag`` set."""
    return [spec.name for spec in OBJECTIVE_REGISTRY.values() if getattr(spec, flag)]


def parse_term_weights(value, objective: str | None = None) -> dict[str, float] | None:
    """``--term_weights`` as a dict: ``"unique_club=0,shared_cond_club=0.5"`` on the command
    line, a mapping from a YAML/JSON ``--config``, or ``None``; names, weights and the
    ``objective`` checked (:func:`check_term_weights`)."""
    if value is None or isinstance(value, dict):
        return check_term_weights(value, objective)
    weights = {}
    for item in str(value).split(","):
        name, sep, weight = item.partition("=")
        try:
            weights[name.strip()] = float(weight)
        except ValueError:
            sep = ""
        if not sep:
            raise ValueError(f"`term_weights` must read NAME=WEIGHT,...; got {item!r} in {value!r}")
    return check_term_weights(weights, objective)


def load_config_file(path: str) -> dict:
    """The options of a YAML or JSON ``--config`` file; unknown keys are an error."""
    text = Path(path).read_text()
    if path.endswith(".json"):
        config = json.loads(text)
    else:
        import yaml

        config = yaml.safe_load(text) or {}
    unknown = sorted(set(config) - set(_OPTIONS))
    if unknown:
        raise ValueError(f"`config` file {path!r} has unknown options {unknown}; known: {sorted(_OPTIONS)}")
    return config


def parse_args(argv: list[str] | None = None) -> TrainingArguments:
    """Defaults, overridden by the ``--config`` file, overridden by the flags in ``argv``.

    A config file is a recipe that may serve several runs (training/demo.py trains its recipe
    with three objectives, on data it wrote itself): the recipe's options that this run would
    not use (:func:`unused_options`) are left out, with an info line naming them (expected of a
    shared recipe, so not a warning). The same options given as flags are refused."""
    parser = HfArgumentParser(TrainingArguments, description=__doc__.split("\n\n")[0])
    config_path = argparse.ArgumentParser(add_help=False)
    config_path.add_argument("--config")
    path = config_path.parse_known_args(argv)[0].config
    recipe = load_config_file(path) if path else {}
    # Which options the command line gives: parsed once without the recipe.
    flagged = given_options(parser.parse_args(argv))
    parser.set_defaults(**recipe)
    values = vars(parser.parse_args(argv))
    from_recipe = given_options(argparse.Namespace(**{**_DEFAULTS, **recipe})) - flagged
    left_out = []
    for options, why in unused_options(argparse.Namespace(**values)):
        named = [name for name in options if name in from_recipe]
        values.update({name: _DEFAULTS[name] for name in named})
        left_out += [f"{', '.join(f'`{name}`' for name in named)} ({why})"] * bool(named)
    if left_out:
        log.info("--config %s: left out options this run does not use: %s", path, "; ".join(left_out))
    return TrainingArguments(**values)
