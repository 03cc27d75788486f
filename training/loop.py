"""The parts of a training job, in the order ``training/train.py`` calls them: the accelerator,
the data, the model and its processor, the data loader, the optimizers, one epoch, and the
evaluation and save at the end. (open_clip splits its ``main`` the same way.)

This module holds the heavy imports (torch, accelerate, transformers, the package); the
command line is parsed before it is imported, so ``--help`` stays fast.
"""

from __future__ import annotations

import json
import logging
import math
import os
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator, DataLoaderConfiguration
from accelerate.tracking import get_available_trackers
from accelerate.utils import LoggerType, ProjectConfiguration, set_seed
from tqdm.auto import tqdm
from transformers import AutoProcessor, get_scheduler

from factorcl_hf import FactorCLConfig, FactorCLModel
from factorcl_hf.augmentations import ImageAugmentation, TextAugmentation
from factorcl_hf.checkpointing import (
    TrainState,
    latest_checkpoint,
    load_checkpoint,
    recover_interrupted_swap,
    save_checkpoint,
    save_pretrained_atomically,
)
from factorcl_hf.configuration_factorcl import objective_spec
from factorcl_hf.data.image_text import (
    ImageTextCollator, IndexedDataset, drop_undecodable_images, encode_labels, load_image_text_dataset,
)
from factorcl_hf.data.shapes import DEFAULT_UNIQUE_SHARE, write_shapes_imagefolder
from factorcl_hf.evaluation.club_check import club_critic_report, critic_inputs, image_text_batches
from factorcl_hf.evaluation.image_text import evaluate_image_text
from factorcl_hf.hub import HUB_LICENSES, build_model_card, push_to_hub, validate_model_card
from factorcl_hf.progress import hide_library_progress_bars
from factorcl_hf.testing_utils import build_caption_tokenizer, special_token_ids, tiny_clip_config, tiny_clip_processor
from factorcl_hf.training_step import parameter_groups, training_step
from training.arguments import TrainingArguments
from training.splits import eval_split_of
from training.streaming import streaming_data

log = logging.getLogger("factorcl.train")


# --------------------------------------------------------------------------- accelerator
def check_objective(args: TrainingArguments) -> None:
    """Fail on an unknown ``--objective`` or ``--license`` before anything starts (the
    registries live in the package)."""
    objective_spec(args.objective)
    if args.license not in HUB_LICENSES:
        raise ValueError(f"`license` must be a Hub license id, one of {sorted(HUB_LICENSES)}; got {args.license!r}")


def check_output_paths(args: TrainingArguments) -> None:
    """Fail before any training on an output path that the run could not write at the end
    (``--output_dir`` or one of the files and folders it gets), and put back a ``model/``
    that an interrupted save of an earlier run left aside."""
    output_dir = Path(args.output_dir)
    if output_dir.exists() and not output_dir.is_dir():
        raise ValueError(f"`output_dir` {str(output_dir)!r} exists and is not a directory")
    try:
        output_dir.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise ValueError(f"`output_dir` {str(output_dir)!r} cannot be created: {error}") from error
    if not os.access(output_dir, os.W_OK | os.X_OK):
        raise ValueError(f"`output_dir` {str(output_dir)!r} is not writable")
    recover_interrupted_swap(output_dir / "model")
    folders = ["model", "checkpoints", "logs"]
    files = ["results.json", "train_log.jsonl"]
    for name, must_be_dir in [(n, True) for n in folders] + [(n, False) for n in files]:
        path = output_dir / name
        if path.exists() and path.is_dir() != must_be_dir:
            kind = "a directory" if must_be_dir else "a file"
            raise ValueError(f"`output_dir`: {str(path)!r} exists and is not {kind}; the run writes {kind} there")
    if args.train_data is None and (output_dir.parent / "data").is_file():
        raise ValueError(f"{str(output_dir.parent / 'data')!r} is a file; the embedded dataset is written there")
    resume = args.resume_from_checkpoint
    if resume and resume != "latest" and not Path(resume).is_dir():
        raise ValueError(f"`resume_from_checkpoint` {resume!r} is not a checkpoint folder (or 'latest')")


def build_accelerator(args: TrainingArguments) -> Accelerator:
    """An accelerator for this run, logging set up and every RNG seeded. Several processes
    without a GPU (`accelerate launch --multi_gpu --num_processes 2` on a CPU machine) need
    `cpu=True` for accelerate to pick gloo."""
    output_dir = Path(args.output_dir)
    multi_process_cpu = not torch.cuda.is_available() and int(os.environ.get("WORLD_SIZE", "1")) > 1
    accelerator = Accelerator(
        cpu=args.cpu or multi_process_cpu,
        mixed_precision=args.mixed_precision,
        gradient_accumulation_steps=args.gradient_accumulation_steps,
        log_with=trackers(args),
        # None keeps what `accelerate launch --dynamo_backend` chose.
        dynamo_backend="inductor" if args.torch_compile else None,
        project_config=ProjectConfiguration(project_dir=str(output_dir), logging_dir=str(output_dir / "logs")),
        # Seeded shuffling: the data order of an epoch is the same after a resume.
        dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True),
    )
    logging.basicConfig(level=logging.INFO if accelerator.is_main_process else logging.WARNING, format="%(message)s")
    # A Hub dataset's download bars are progress worth seeing; a local folder's are not.
    hub_data = args.train_data is not None and not Path(args.train_data).exists()
    hide_library_progress_bars(keep_downloads=hub_data and not args.disable_tqdm)
    set_seed(args.seed)
    return accelerator


def trackers(args: TrainingArguments) -> list[str] | None:
    """``--report_to`` as accelerate's ``log_with``; an unknown or uninstalled tracker is an
    error here, before the run (accelerate would drop an uninstalled one silently)."""
    names = [name.strip() for name in args.report_to.split(",") if name.strip()]
    if names in ([], ["none"]):
        return None
    if names == ["all"]:
        return ["all"]
    available = {str(tracker) for tracker in get_available_trackers()}
    for name in names:
        if name not in LoggerType.list() or name == "all":
            raise ValueError(f"`report_to` names unknown tracker {name!r}; known: none, all, {sorted(LoggerType.list())}")
        if name not in available:
            raise ValueError(f"`report_to` tracker {name!r} is not installed (installed: {sorted(available)})")
    return names


def log_metrics(args: TrainingArguments, accelerator: Accelerator, metrics: dict, step: int) -> None:
    """Evaluation metrics to the trackers, beside the loss terms (under ``eval/``)."""
    if args.report_to != "none":
        accelerator.log({f"eval/{k}": v for k, v in metrics.items() if isinstance(v, float)}, step=step)


# ---------------------------------------------------------------------------------- data
@dataclass
class TrainingData:
    """The splits of a run: ``train`` (undecodable images dropped, ``dropped`` of them),
    ``eval`` (``None`` without an evaluation split), where they came from (``source``, and
    ``eval_source`` / ``eval_split`` for the card), the label column (the embedded
    dataset's, unless one was given) and the class names of string/ClassLabel labels."""

    train: Any
    eval: Any
    label_column: str | None
    source: str | Path
    dropped: int
    eval_source: str | Path | None = None
    eval_split: str | None = None
    label_names: list[str] | None = None
    # --streaming: this process's shard of the stream (``train`` is then a sample of it) and
    # the count of its undecodable images, which grows as training reads it.
    stream: Any = None
    stream_dropped: dict | None = None

    def skipped_images(self) -> int:
        return self.dropped if self.stream_dropped is None else self.stream_dropped["count"]


def build_data(args: TrainingArguments, accelerator: Accelerator) -> TrainingData:
    """Load ``--train_data``, or write the embedded shapes dataset next to the output dir;
    then the evaluation split (:func:`eval_split_of`) and class ids for the labels."""
    label_column = args.label_column
    if args.train_data is None:
        share = DEFAULT_UNIQUE_SHARE if args.unique_share is None else args.unique_share
        data_dir = Path(args.output_dir).parent / "data" / f"shapes-{args.num_train_samples}-{share}-seed{args.seed}"
        with accelerator.main_process_first():
            if accelerator.is_main_process:
                write_shapes_imagefolder(data_dir, num_samples=args.num_train_samples, seed=args.seed, unique_share=share)
        source, label_column = data_dir, label_column or "label"
    else:
        source = args.train_data
    if objective_spec(args.objective).supervised and label_column is None:
        raise ValueError(f"`label_column` is required by the supervised objective {args.objective!r}")
    columns = (args.image_column, args.caption_column, label_column)
    with accelerator.main_process_first():
        data = load_image_text_dataset(source, *columns, streaming=args.streaming)
        eval_data = load_image_text_dataset(args.eval_data, *columns) if args.eval_data and args.eval_split != "none" else None
    if args.streaming:
        return TrainingData(label_column=label_column, source=source, dropped=0,
                            **streaming_data(args, accelerator, data, eval_data, source, label_column))
    if args.train_split not in data:
        raise ValueError(f"`train_split` {args.train_split!r} not in the data; splits: {sorted(data)}")
    train_set, eval_set, eval_source, eval_split = eval_split_of(args, data, eval_data, source)
    encoded, label_names = encode_labels({"train": train_set, "eval": eval_set}, label_column)
    train_set, dropped = drop_undecodable_images(encoded["train"], args.image_column)
    if len(train_set) < args.per_device_train_batch_size * accelerator.num_processes:
        raise ValueError(
            f"The training split has {len(train_set)} usable rows, fewer than one global batch "
            f"({args.per_device_train_batch_size} x {accelerator.num_processes} processes)"
        )
    return TrainingData(train_set, encoded["eval"], label_column, source, dropped, eval_source, eval_split, label_names)


# ------------------------------------------------------------------------------- model
def model_options(args: TrainingArguments) -> dict[str, Any]:
    """The training arguments named like a ``FactorCLConfig`` field: the architecture."""
    return {name: getattr(args, name) for name in FactorCLConfig.__annotations__ if hasattr(args, name)}


def label_options(data: TrainingData) -> dict[str, Any]:
    """``num_labels`` from the label column, and ``id2label``/``label2id`` when the labels
    have names (string or ClassLabel labels), so the saved config, card and zero-shot
    pipeline speak the class names."""
    if data.label_column is None:
        return {}
    if data.label_names:
        names = list(data.label_names) + [f"LABEL_{i}" for i in range(len(data.label_names), 2)]
        return {"id2label": dict(enumerate(names)), "label2id": {name: i for i, name in enumerate(names)}}
    return {"num_labels": max(2, int(max(data.train[data.label_column])) + 1)}


def build_model_and_processor(args: TrainingArguments, data: TrainingData):
    """A CLIP checkpoint wrapped with fresh FactorCL heads, or a tiny random CLIP with a
    tokenizer built from the training captions (offline)."""
    options = {**model_options(args), **label_options(data)}
    train_set = data.train
    if args.clip_model:
        return FactorCLModel.from_clip(args.clip_model, **options), AutoProcessor.from_pretrained(args.clip_model)
    max_length = 32
    tokenizer = build_caption_tokenizer(train_set[args.caption_column], model_max_length=max_length)
    clip_config = tiny_clip_config(
        len(tokenizer),
        **special_token_ids(tokenizer),
        image_size=args.tiny_image_size,
        patch_size=args.tiny_patch_size,
        hidden_size=args.tiny_hidden_size,
        projection_dim=args.tiny_projection_dim,
        num_layers=args.tiny_num_layers,
        max_position_embeddings=max_length,
    )
    return FactorCLModel(FactorCLConfig(clip_config=clip_config, **options)), tiny_clip_processor(tokenizer, args.tiny_image_size)


def prepare_backbone(args: TrainingArguments, model: FactorCLModel) -> None:
    """``--gradient_checkpointing``, and ``--lock_image`` / ``--lock_text``: freeze a CLIP
    tower but its last N layers, final norm and projection (none of them with N = 0). Frozen
    parameters get no gradient and are left out of the optimizer (``main_parameters``), so
    they do not change at all."""
    if args.gradient_checkpointing:
        # transformers >= 5.x names it activation checkpointing (the old name warns FutureWarning).
        enable = getattr(model.clip, "activation_checkpointing_enable", None)
        if enable is not None:
            enable(activation_checkpointing_kwargs={"use_reentrant": False})
        else:
            model.clip.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    towers = {"image": ("vision_model", "visual_projection", "post_layernorm"),
              "text": ("text_model", "text_projection", "final_layer_norm")}
    for modality, (tower_name, projection, final_norm) in towers.items():
        if not getattr(args, f"lock_{modality}"):
            continue
        unlocked = getattr(args, f"lock_{modality}_unlocked_layers")
        tower, layers = getattr(model.clip, tower_name), getattr(model.clip, tower_name).encoder.layers
        if unlocked > len(layers):
            raise ValueError(f"`lock_{modality}_unlocked_layers` is {unlocked}, but the {modality} tower has "
                             f"{len(layers)} layers")
        for parameter in [*tower.parameters(), *getattr(model.clip, projection).parameters()]:
            parameter.requires_grad_(False)
        if unlocked:
            for module in [*layers[len(layers) - unlocked:], getattr(tower, final_norm), getattr(model.clip, projection)]:
                module.requires_grad_(True)
    if args.lock_image or args.lock_text:
        trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
        log.info("Locked towers: %d of %d parameters train", trainable, sum(p.numel() for p in model.parameters()))


def build_train_loader(args: TrainingArguments, model: FactorCLModel, processor, data: TrainingData):
    """The collator (labels for supervised objectives, augmented views for those that need
    them) and the shuffled training loader over ``data.train``."""
    config = model.config
    uses_views = config.uses_augmented_views
    collator = ImageTextCollator(
        processor,
        image_column=args.image_column,
        caption_column=args.caption_column,
        label_column=data.label_column if config.is_supervised else None,
        # Crop straight to the model's input size: the processor's resize then does nothing.
        image_augmentation=ImageAugmentation(
            size=config.clip_config.vision_config.image_size, crop_scale=(args.crop_scale_min, 1.0)
        )
        if uses_views
        else None,
        text_augmentation=TextAugmentation(mode=args.text_augmentation)
        if uses_views and args.text_augmentation != "none"
        else None,
        seed=args.seed,
        max_length=config.clip_config.text_config.max_position_embeddings,
    )
    loader = torch.utils.data.DataLoader(
        IndexedDataset(data.train) if data.stream is None else data.stream,
        batch_size=args.per_device_train_batch_size,
        shuffle=data.stream is None,  # a stream shuffles in its own buffer
        drop_last=True,  # every contrastive batch full (and the same size on every process)
        collate_fn=collator,
        num_workers=args.dataloader_num_workers,
        # Workers are re-created every epoch on purpose (no persistent_workers): that is how
        # the collator's new `epoch`, which seeds each row's augmentation, reaches them.
        pin_memory=torch.cuda.is_available(),
    )
    return collator, loader


# -------------------------------------------------------------------------- optimizers
@dataclass
class Schedule:
    """Optimizer steps per epoch and in all (``--max_train_steps`` or the epochs')."""

    steps_per_epoch: int
    max_steps: int

    @property
    def num_epochs(self) -> int:
        return math.ceil(self.max_steps / self.steps_per_epoch)


def num_batches(args: TrainingArguments, accelerator: Accelerator, loader) -> int:
    """Batches per epoch in all processes; a stream has no length, so one "epoch" is the run."""
    if isinstance(loader.dataset, torch.utils.data.IterableDataset):
        return args.max_train_steps * args.gradient_accumulation_steps * accelerator.num_processes
    return len(loader)


def prepare_loader(args: TrainingArguments, accelerator: Accelerator, loader):
    """accelerate's sharding of the loader; a stream is sharded already (``split_dataset_by_node``)."""
    return loader if isinstance(loader.dataset, torch.utils.data.IterableDataset) else accelerator.prepare(loader)


def build_optimizers(args: TrainingArguments, model: FactorCLModel, accelerator: Accelerator, num_batches: int):
    """AdamW for the backbone, heads and InfoNCE critics with its learning-rate schedule, and
    Adam for the CLUB critics (``None`` without CLUB terms): ``(optimizer, critic_optimizer,
    scheduler, schedule)``."""
    # Fused (single-kernel) Adam where torch has it: much faster optimizer steps on CPU
    # (benchmarks/RESULTS.md, "Training loop on the embedded demo").
    fused = {"fused": True} if accelerator.device.type in ("cpu", "cuda") else {}
    game = args.club_game
    groups = parameter_groups(model, args.learning_rate, game["club_head_lr_scale"])
    optimizer = torch.optim.AdamW(groups, lr=args.learning_rate, weight_decay=args.weight_decay, **fused)
    critic_params = model.club_critic_parameters()
    critic_optimizer = torch.optim.Adam(critic_params, lr=game["critic_learning_rate"], **fused) if critic_params else None
    steps_per_epoch = math.ceil(num_batches / accelerator.num_processes / args.gradient_accumulation_steps)
    schedule = Schedule(steps_per_epoch, args.max_train_steps or args.num_train_epochs * steps_per_epoch)
    scheduler = get_scheduler(
        args.lr_scheduler_type, optimizer, num_warmup_steps=args.num_warmup_steps, num_training_steps=schedule.max_steps
    )
    return optimizer, critic_optimizer, scheduler, schedule


def resume(args: TrainingArguments, accelerator: Accelerator, state: TrainState, model) -> None:
    """Load ``--resume_from_checkpoint`` (a folder, or ``latest``) into the prepared objects
    and ``state``."""
    output_dir = Path(args.output_dir)
    path = latest_checkpoint(output_dir) if args.resume_from_checkpoint == "latest" else Path(args.resume_from_checkpoint)
    if path is None:
        log.info("No checkpoint under %s; starting from scratch", output_dir / "checkpoints")
        return
    state.step = load_checkpoint(accelerator, path, model=model).step
    log.info("Resumed from %s at step %d", path, state.step)


# ------------------------------------------------------------------------------- epoch
def progress_bar(args: TrainingArguments, accelerator: Accelerator, initial: int, total: int):
    """The optimizer-step progress bar (local main process only)."""
    return tqdm(total=total, initial=initial, disable=args.disable_tqdm or not accelerator.is_local_main_process, desc="train")


class LossLog:
    """Mean loss terms over windows of ``logging_steps`` optimizer steps (and the last,
    shorter one). Terms are summed on the device and read back once per window: a ``.item()``
    per term per step would stall an accelerator on every step."""

    def __init__(self, args: TrainingArguments, accelerator: Accelerator, max_steps: int):
        self.args, self.accelerator, self.max_steps = args, accelerator, max_steps
        self.records: list[dict] = []
        self._sums, self._steps = None, 0

    def add(self, step: int, outputs, learning_rate: float, progress) -> None:
        terms = {"loss": outputs.loss.detach(), **(outputs.loss_terms or {})}
        values = torch.stack([value.float() for value in terms.values()])
        self._sums = values if self._sums is None else self._sums + values
        self._steps += 1
        if step % self.args.logging_steps and step < self.max_steps:
            return
        record = {"step": step, "lr": learning_rate, **dict(zip(terms, (self._sums / self._steps).tolist()))}
        self._sums, self._steps = None, 0
        self.records.append(record)
        progress.set_postfix(loss=f"{record['loss']:.3f}")
        if self.args.report_to != "none":
            self.accelerator.log(record, step=step)


@dataclass
class Trainer:
    """What one epoch needs: the prepared model, optimizers, scheduler and loader, the
    collator (its ``epoch`` seeds the augmentations), the step counter, the schedule, the
    loss log, the progress bar and the rows seen."""

    model: Any
    optimizer: Any
    critic_optimizer: Any
    scheduler: Any
    train_loader: Any
    collator: ImageTextCollator
    state: Any
    schedule: Schedule
    loss_log: LossLog
    progress: Any
    seen_rows: list


def train_one_epoch(args: TrainingArguments, accelerator: Accelerator, trainer: Trainer, epoch: int) -> None:
    """Train from ``trainer.state.step`` to the end of ``epoch`` (or the last step); a resumed
    epoch skips the batches it already trained on."""
    state, schedule = trainer.state, trainer.schedule
    trainer.collator.epoch = epoch
    loader = trainer.train_loader
    # A streamed loader is not accelerate's: its dataset reshuffles, and its batches move here.
    (loader.set_epoch if hasattr(loader, "set_epoch") else loader.dataset.set_epoch)(epoch)
    skip = (state.step - epoch * schedule.steps_per_epoch) * args.gradient_accumulation_steps
    loader = accelerator.skip_first_batches(loader, skip) if skip else loader
    first_step = state.step
    for batch in loader:
        trainer.seen_rows.extend(batch.pop("row_indices").tolist())
        batch = {key: value.to(accelerator.device) for key, value in batch.items()}
        try:
            outputs = training_step(
                trainer.model, {**batch, "return_loss": True}, trainer.optimizer, trainer.critic_optimizer,
                club_critic_steps=args.club_game["club_critic_steps"], scheduler=trainer.scheduler, max_grad_norm=args.max_grad_norm,
                accelerator=accelerator,
            )
        except ValueError as error:
            # The objective's own finiteness check on the features: weights already broken.
            if "contains NaN or infinite values" not in str(error):
                raise
            raise TrainingDivergedError(diverged_message(args, state.step + 1, str(error))) from error
        check_loss_is_finite(args, accelerator, outputs.loss, state.step + 1)
        if not accelerator.sync_gradients:
            continue
        state.step += 1
        trainer.progress.update(1)
        trainer.loss_log.add(state.step, outputs, trainer.scheduler.get_last_lr()[0], trainer.progress)
        if args.checkpointing_steps and state.step % args.checkpointing_steps == 0:
            save_checkpoint(accelerator, Path(args.output_dir), state, args.checkpoints_total_limit, model=trainer.model)
        if state.step >= schedule.max_steps:
            break
    if state.step == first_step:
        raise ValueError("The training data gave no full batch: fewer usable rows than --per_device_train_batch_size")


class TrainingDivergedError(RuntimeError):
    """The loss (or the features) became NaN or infinite: training stopped and nothing of the
    diverged weights was saved."""


def diverged_message(args: TrainingArguments, step: int, cause: str) -> str:
    last = latest_checkpoint(args.output_dir)
    resume = f"the last good checkpoint is {str(last)!r}" if last else "there is no checkpoint to resume from"
    return (f"Training diverged at optimizer step {step}: {cause}. Stopped without saving the model; {resume}. "
            "Try a lower --learning_rate or --max_grad_norm")


def check_loss_is_finite(args: TrainingArguments, accelerator: Accelerator, loss, step: int) -> None:
    """Raise :class:`TrainingDivergedError` when the loss of any process is not finite (every
    process sees the same verdict, so none waits for a peer that stopped)."""
    loss = loss.detach().float().reshape(1)
    if accelerator.num_processes > 1:
        loss = accelerator.gather(loss)
    if not bool(torch.isfinite(loss).all()):
        raise TrainingDivergedError(diverged_message(args, step, f"the loss is {loss.tolist()}"))


# --------------------------------------------------------------------- evaluate and save
def evaluate(args: TrainingArguments, model: FactorCLModel, processor, data: TrainingData) -> dict[str, float]:
    """Retrieval on the eval split and, with a label column, the linear probes."""
    return evaluate_image_text(
        model, processor, data.train, data.eval, args.image_column, args.caption_column, data.label_column,
        args.per_device_eval_batch_size, args.retrieval_match_columns,
    )


def club_critic_check(args: TrainingArguments, accelerator: Accelerator, model: FactorCLModel, collator, data) -> dict:
    """``--club_critic_check_steps``: is the CLUB min-max game still tracking?
    (docs/synthetic_benchmark.md). ``{}`` when off or not applicable."""
    estimators = model.objective.club_estimators
    batch = args.per_device_train_batch_size
    if not (args.club_critic_check_steps and estimators and data.eval is not None):
        return {}
    if accelerator.num_processes > 1:
        # The model's forward gathers features across processes: one process alone would hang.
        log.warning("--club_critic_check_steps runs in single-process training only; skipped")
        return {}
    if len(data.eval) < batch:
        log.warning("--club_critic_check_steps: the eval split has fewer rows than one batch; skipped")
        return {}
    inputs = [critic_inputs(model, image_text_batches(model, collator, split, batch)) for split in (data.train, data.eval)]
    return {"club_critic_check": club_critic_report(estimators, *inputs, batch, args.club_critic_check_steps, seed=args.seed)}


def save_run(args: TrainingArguments, accelerator: Accelerator, model: FactorCLModel, processor, data: TrainingData,
             results: dict, loss_log: LossLog) -> None:
    """On the main process: the model with its processor and card (``OUTPUT_DIR/model``),
    ``results.json``, ``train_log.jsonl``, and the push to the Hub if asked."""
    output_dir = Path(args.output_dir)
    card = training_model_card(model, args, results, data)
    validate_model_card(card)
    results["model_dir"] = str(save_model_or_fallback(model, processor, output_dir / "model", card))
    (output_dir / "results.json").write_text(json.dumps(results, indent=2))
    (output_dir / "train_log.jsonl").write_text("".join(json.dumps(r) + "\n" for r in loss_log.records))
    if args.push_to_hub:
        log.info("Pushed to %s", push_to_hub(model, processor, args.hub_model_id, card))


def save_model_or_fallback(model: FactorCLModel, processor, target: Path, card) -> Path:
    """Save to ``target``; if that fails, save to a new folder in the system's temporary
    directory and raise an error naming both, so the trained weights are never lost."""
    try:
        return save_pretrained_atomically(model, processor, target, card=card)
    except OSError as error:
        fallback = Path(tempfile.mkdtemp(prefix="factorcl-unsaved-model-"))
        try:
            save_pretrained_atomically(model, processor, fallback, card=card)
        except OSError as second:
            raise OSError(f"Saving the trained model to {str(target)!r} failed ({error}), and so did saving it "
                          f"to {str(fallback)!r} ({second})") from error
        raise OSError(f"Saving the trained model to {str(target)!r} failed ({error}); the trained model was "
                      f"saved to {str(fallback)!r} instead") from error


def _hub_ids(*sources) -> list[str]:
    """The sources that are Hub ids (card metadata names Hub repositories, not local paths)."""
    return [str(source) for source in sources if source and not Path(str(source)).exists()]


def training_model_card(model, args: TrainingArguments, results: dict, data: TrainingData):
    """The model card saved with (and pushed with) the trained model: evaluation results in
    the model-index, the recipe in the body, and snippets that load ``--hub_model_id`` or,
    without one, the folder the model is saved in."""
    metrics = {k: v for k, v in results.items() if isinstance(v, float)}
    records = []
    for task, is_task_metric in (("retrieval", lambda k: "R@" in k), ("probe", lambda k: k.endswith("_accuracy"))):
        chosen = {k: v for k, v in metrics.items() if is_task_metric(k)}
        if chosen:
            records.append({"task": task, "data": str(data.eval_source), "split": data.eval_split, "metrics": chosen})
    summary = {
        "steps": results["steps"],
        "learning_rate": args.learning_rate,
        "per_device_train_batch_size": args.per_device_train_batch_size,
        "mixed_precision": args.mixed_precision,
        "seed": args.seed,
    }
    base_model = _hub_ids(args.clip_model)
    return build_model_card(
        model,
        records,
        base_model=base_model[0] if base_model else None,
        datasets=_hub_ids(args.train_data, args.eval_data) or None,
        training_summary=summary,
        repo_id=args.hub_model_id or str((Path(args.output_dir) / "model").resolve()),
        model_name=args.hub_model_id.split("/")[-1] if args.hub_model_id else None,
        license=args.license,
    )


def save_seen_rows(args: TrainingArguments, accelerator: Accelerator, seen_rows: list[int]) -> None:
    """``--save_seen_rows``: the row indices this process trained on (debugging)."""
    output_dir = Path(args.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    (output_dir / f"seen_rows.rank{accelerator.process_index}.json").write_text(json.dumps(seen_rows))


def tracker_config(args: TrainingArguments) -> dict:
    """The scalar options, for the trackers' run config."""
    return {k: v for k, v in asdict(args).items() if isinstance(v, (int, float, str, bool))}
