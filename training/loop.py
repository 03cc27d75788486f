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
from accelerate.utils import LoggerType, ProjectConfiguration, broadcast_object_list, set_seed
from safetensors import SafetensorError
from tqdm.auto import tqdm
from transformers import AutoProcessor, get_scheduler

from factorcl_hf import FactorCLConfig, FactorCLModel
from factorcl_hf.augmentations import ImageAugmentation, TextAugmentation
from factorcl_hf.checkpointing import (
    PROCESSOR_DIR,
    OutputDirLock,
    TrainState,
    latest_checkpoint,
    load_checkpoint,
    recover_interrupted_swap,
    remove_leftover_staging,
    save_checkpoint,
    save_pretrained_atomically,
)
from factorcl_hf.cli import PackageRuntimeError
from factorcl_hf.configuration_factorcl import objective_spec
from factorcl_hf.data.image_text import (
    ImageTextCollator,
    IndexedDataset,
    check_label_classes,
    check_labels,
    drop_undecodable_images,
    encode_labels,
    load_image_text_dataset,
)
from factorcl_hf.data.shapes import DEFAULT_UNIQUE_SHARE, write_shapes_imagefolder
from factorcl_hf.evaluation.embed import extract_embeddings
from factorcl_hf.evaluation.image_text import evaluate_image_text
from factorcl_hf.hub import HUB_LICENSES, build_model_card, check_push_access, push_to_hub, validate_model_card
from factorcl_hf.offline import build_caption_tokenizer, special_token_ids, tiny_clip_config, tiny_clip_processor
from factorcl_hf.progress import hide_library_progress_bars
from factorcl_hf.research.club_check import club_critic_report, critic_inputs, image_text_batches
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
    (``--output_dir`` or one of the files and folders it gets). (What an interrupted earlier
    run left behind is repaired once the run holds the folder: :func:`lock_output_dir`.)"""
    output_dir = Path(args.output_dir)
    if output_dir.exists() and not output_dir.is_dir():
        raise ValueError(f"`output_dir` {str(output_dir)!r} exists and is not a directory")
    try:
        output_dir.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise ValueError(f"`output_dir` {str(output_dir)!r} cannot be created: {error}") from error
    if not os.access(output_dir, os.W_OK | os.X_OK):
        raise ValueError(f"`output_dir` {str(output_dir)!r} is not writable")
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


def check_hub_access(args: TrainingArguments) -> None:
    """``--push_to_hub``: the Hub answers and the token may write to ``--hub_model_id``,
    checked before any work (a push that fails comes after the whole run)."""
    if args.push_to_hub:
        check_push_access(args.hub_model_id)


def lock_output_dir(args: TrainingArguments, accelerator: Accelerator) -> OutputDirLock:
    """Hold ``--output_dir`` for this run (the main process takes the lock; every process
    learns whether it got it, so none waits for a peer that stopped), then repair what an
    interrupted earlier run left there: a ``model/`` set aside mid-swap, staging folders."""
    lock, refusal = OutputDirLock(args.output_dir), None
    if accelerator.is_main_process:
        try:
            lock.acquire()
        except ValueError as error:
            refusal = str(error)
    if accelerator.num_processes > 1:
        refusal = broadcast_object_list([refusal])[0]
    if refusal:
        raise ValueError(refusal)
    if accelerator.is_main_process:
        recover_interrupted_swap(Path(args.output_dir) / "model")
        for checkpoint in (Path(args.output_dir) / "checkpoints").glob(".retired-step_*"):
            recover_interrupted_swap(checkpoint.with_name(checkpoint.name[len(".retired-"):]))
        remove_leftover_staging(args.output_dir)
    accelerator.wait_for_everyone()
    return lock


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
# Fewer evaluation rows than this give no retrieval figure worth reporting (R@1 of one item is 1).
MIN_EVAL_ROWS = 2


@dataclass
class TrainingData:
    """The splits of a run: ``train`` (undecodable images dropped, ``dropped`` of them),
    ``eval`` (``None`` without an evaluation split; ``eval_dropped`` undecodable images), where
    they came from (``source``, and ``eval_source`` / ``eval_split`` for the card), the label
    column (the embedded dataset's, unless one was given), the class names of string/ClassLabel
    labels and the number of classes when it was given or is known from the data's features."""

    train: Any
    eval: Any
    label_column: str | None
    source: str | Path
    dropped: int
    eval_source: str | Path | None = None
    eval_split: str | None = None
    label_names: list[str] | None = None
    eval_dropped: int = 0
    num_labels: int | None = None
    # --streaming: this process's shard of the stream (``train`` is then a sample of it) and
    # the counts of its skipped rows (undecodable images, labels outside the label set),
    # which grow as training reads it.
    stream: Any = None
    stream_dropped: dict | None = None

    def skipped_images(self) -> int:
        return self.dropped if self.stream_dropped is None else self.stream_dropped["count"]


def build_data(args: TrainingArguments, accelerator: Accelerator) -> TrainingData:
    """Load ``--train_data``, or write the embedded shapes dataset next to the output dir;
    then the evaluation split (:func:`eval_split_of`) and class ids for the labels. Every
    check that can fail on the data runs here, before the model is built: undecodable images
    are dropped (counted) from both splits, labels validated (two classes at least), and the
    evaluation split must keep :data:`MIN_EVAL_ROWS` rows."""
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
    load = dict(allow_outside_paths=args.allow_outside_paths)
    with accelerator.main_process_first():
        data = load_image_text_dataset(source, *columns, streaming=args.streaming, **load)
        eval_data = (load_image_text_dataset(args.eval_data, *columns, **load)
                     if args.eval_data and args.eval_split != "none" else None)
    if args.streaming:
        return TrainingData(label_column=label_column, source=source, dropped=0,
                            **streaming_data(args, accelerator, data, eval_data, source, label_column))
    if args.train_split not in data:
        raise ValueError(f"`train_split` {args.train_split!r} not in the data; splits: {sorted(data)}")
    train_set, eval_set, eval_source, eval_split = eval_split_of(args, data, eval_data, source)
    encoded, label_names = encode_labels({"train": train_set, "eval": eval_set}, label_column, names=args.label_names)
    train_set, dropped = drop_undecodable_images(encoded["train"], args.image_column)
    eval_set, eval_dropped = encoded["eval"], 0
    if eval_set is not None:
        eval_set, eval_dropped = drop_undecodable_images(eval_set, args.image_column)
        if len(eval_set) < MIN_EVAL_ROWS:
            given = "--eval_fraction" if args.eval_fraction else "--eval_data" if args.eval_data else "--eval_split"
            raise ValueError(f"The evaluation split ({given}) has {len(eval_set)} usable row(s), fewer than "
                             f"{MIN_EVAL_ROWS}: its metrics would mean nothing. Give more evaluation rows, or "
                             "--eval_split none")
    if len(train_set) < args.per_device_train_batch_size * accelerator.num_processes:
        raise ValueError(
            f"The training split has {len(train_set)} usable rows, fewer than one global batch "
            f"({args.per_device_train_batch_size} x {accelerator.num_processes} processes)"
        )
    num_labels = len(label_names) if label_names else args.num_labels
    if label_column is not None:
        where = f"{source} [{args.train_split}]"
        labels = train_set[label_column]
        check_labels(labels, label_column, where, num_labels=num_labels)
        check_label_classes(labels, label_column, where)
    return TrainingData(train_set, eval_set, label_column, source, dropped, eval_source, eval_split, label_names,
                        eval_dropped, num_labels)


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
    return {"num_labels": data.num_labels or max(2, int(max(data.train[data.label_column])) + 1)}


def resume_checkpoint(args: TrainingArguments) -> Path | None:
    """The checkpoint ``--resume_from_checkpoint`` names (``latest``: the newest under
    ``OUTPUT_DIR/checkpoints``), or ``None``: known before the model is built, whose
    tokenizer comes from it."""
    if not args.resume_from_checkpoint:
        return None
    if args.resume_from_checkpoint == "latest":
        path = latest_checkpoint(args.output_dir)
        if path is None:
            log.info("No checkpoint under %s; starting from scratch", Path(args.output_dir) / "checkpoints")
        return path
    return Path(args.resume_from_checkpoint)


def build_model_and_processor(args: TrainingArguments, data: TrainingData, checkpoint: Path | None = None):
    """A CLIP checkpoint wrapped with fresh FactorCL heads, or a tiny random CLIP with a
    tokenizer built from the training captions (offline). Resuming, the tiny CLIP's tokenizer
    is the checkpoint's: rebuilt from captions that changed, its ids would move under the
    trained embeddings."""
    options = {**model_options(args), **label_options(data)}
    train_set = data.train
    if args.clip_model:
        return FactorCLModel.from_clip(args.clip_model, **options), AutoProcessor.from_pretrained(args.clip_model)
    max_length = 32
    saved = checkpoint / PROCESSOR_DIR if checkpoint is not None else None
    if saved is not None and saved.is_dir():
        processor = AutoProcessor.from_pretrained(saved)
        tokenizer = processor.tokenizer
        log.info("Resuming with the checkpoint's tokenizer (%s)", saved)
    else:
        if checkpoint is not None:
            log.warning("Checkpoint %s holds no tokenizer (an earlier version's): it is rebuilt from the captions, "
                        "whose ids match the checkpoint's only if the captions are the same", checkpoint)
        tokenizer = build_caption_tokenizer(train_set[args.caption_column], model_max_length=max_length)
        processor = tiny_clip_processor(tokenizer, args.tiny_image_size)
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
    return FactorCLModel(FactorCLConfig(clip_config=clip_config, **options)), processor


# Per backbone and modality: the tower, its final norm and its projection to the embedding
# space, as paths from the backbone. CLIP's projections sit beside the towers (CLIPModel's
# `visual_projection`, `text_projection`); SiglipModel has none: each tower ends in its own
# `head` (the vision tower's attention-pooling head, the text tower's linear layer), whose
# output is the embedding (`pooler_output`).
TOWER_PARTS = {
    "clip": {"image": ("vision_model", "vision_model.post_layernorm", "visual_projection"),
             "text": ("text_model", "text_model.final_layer_norm", "text_projection")},
    "siglip": {"image": ("vision_model", "vision_model.post_layernorm", "vision_model.head"),
               "text": ("text_model", "text_model.final_layer_norm", "text_model.head")},
}


def tower_parts(model: FactorCLModel, modality: str) -> tuple[torch.nn.Module, torch.nn.ModuleList, list[torch.nn.Module]]:
    """``(tower, layers, tail)`` of the backbone's ``modality`` tower: what ``--lock_<modality>``
    freezes (the tower and its projection), its transformer layers, and the final norm and
    projection that ``--lock_<modality>_unlocked_layers`` leaves trainable with the last layers.
    (A SigLIP vision tower built without its pooling head has no projection.)"""
    tower_path, *tail_paths = TOWER_PARTS[model.config.backbone_type][modality]
    tower = model.clip.get_submodule(tower_path)
    tail = []
    for path in tail_paths:
        try:
            tail.append(model.clip.get_submodule(path))
        except AttributeError:
            continue
    return tower, tower.encoder.layers, tail


def prepare_backbone(args: TrainingArguments, model: FactorCLModel) -> None:
    """``--gradient_checkpointing``, and ``--lock_image`` / ``--lock_text``: freeze a tower of
    the backbone (CLIP or SigLIP: :data:`TOWER_PARTS`) but its last N layers, final norm and
    projection (none of them with N = 0). Frozen parameters get no gradient and are left out
    of the optimizer (``main_parameters``), so they do not change at all."""
    if args.gradient_checkpointing:
        # transformers >= 5.x names it activation checkpointing (the old name warns FutureWarning).
        enable = getattr(model.clip, "activation_checkpointing_enable", None)
        if enable is not None:
            enable(activation_checkpointing_kwargs={"use_reentrant": False})
        else:
            model.clip.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    for modality in ("image", "text"):
        if not getattr(args, f"lock_{modality}"):
            continue
        if not args.clip_model:
            log.warning("--lock_%s without --clip_model freezes the %s tower of a randomly initialised tiny CLIP: "
                        "it will never learn. Give --clip_model to lock a pretrained tower", modality, modality)
        unlocked = getattr(args, f"lock_{modality}_unlocked_layers")
        tower, layers, tail = tower_parts(model, modality)
        if unlocked > len(layers):
            raise ValueError(f"`lock_{modality}_unlocked_layers` is {unlocked}, but the {modality} tower has "
                             f"{len(layers)} layers")
        for module in (tower, *tail):
            module.requires_grad_(False)
        if unlocked:
            for module in (*layers[len(layers) - unlocked:], *tail):
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
        # Every batch is checked against the model on the CPU (the model checks values only
        # with FACTORCL_DEBUG: each would be a device sync per step).
        vocab_size=config.clip_config.text_config.vocab_size,
        num_labels=config.num_labels if config.is_supervised else None,
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
    """Optimizer steps per epoch and in all (``--max_train_steps`` or the epochs'), and the
    rows each epoch trains on: every batch is full and the same size on every process, so an
    epoch leaves out the rows short of a last global batch (a different random set each epoch)."""

    steps_per_epoch: int
    max_steps: int
    rows_per_epoch: int | None = None
    rows_left_out_per_epoch: int | None = None

    @property
    def num_epochs(self) -> int:
        return math.ceil(self.max_steps / self.steps_per_epoch)


def batches_per_epoch(args: TrainingArguments, loader) -> int:
    """Batches per epoch of this process's (prepared) loader; a stream has no length, so one
    "epoch" is the run."""
    if isinstance(loader.dataset, torch.utils.data.IterableDataset):
        return args.max_train_steps * args.gradient_accumulation_steps
    return len(loader)


def prepare_loader(args: TrainingArguments, accelerator: Accelerator, loader):
    """accelerate's sharding of the loader; a stream is sharded already (``split_dataset_by_node``)."""
    return loader if isinstance(loader.dataset, torch.utils.data.IterableDataset) else accelerator.prepare(loader)


def build_schedule(args: TrainingArguments, accelerator: Accelerator, loader, data: TrainingData) -> Schedule:
    """The :class:`Schedule` of the prepared ``loader``: its length is what each process
    really gets (counting before the sharding would put epoch boundaries in the wrong place)."""
    batches = batches_per_epoch(args, loader)
    # accelerate steps the optimizer at the end of an epoch whose batches the accumulation
    # does not divide, so a partial accumulation still makes a step.
    steps_per_epoch = math.ceil(batches / args.gradient_accumulation_steps)
    schedule = Schedule(steps_per_epoch, args.max_train_steps or args.num_train_epochs * steps_per_epoch)
    if data.stream is None:
        schedule.rows_per_epoch = batches * args.per_device_train_batch_size * accelerator.num_processes
        schedule.rows_left_out_per_epoch = len(data.train) - schedule.rows_per_epoch
        if schedule.rows_left_out_per_epoch:
            log.info("Each epoch trains on %d of the %d rows: the %d short of a full global batch (%d x %d processes) "
                     "are left out, a different random set each epoch", schedule.rows_per_epoch, len(data.train),
                     schedule.rows_left_out_per_epoch, args.per_device_train_batch_size, accelerator.num_processes)
    return schedule


def build_optimizers(args: TrainingArguments, model: FactorCLModel, accelerator: Accelerator, schedule: Schedule):
    """AdamW for the backbone, heads and InfoNCE critics with its learning-rate schedule over
    ``schedule.max_steps`` optimizer steps, and Adam for the CLUB critics (``None`` without
    CLUB terms): ``(optimizer, critic_optimizer, scheduler)``."""
    # Fused (single-kernel) Adam where torch has it: much faster optimizer steps on CPU
    # (benchmarks/RESULTS.md, "Training loop on the embedded demo").
    fused = {"fused": True} if accelerator.device.type in ("cpu", "cuda") else {}
    game = args.club_game
    groups = parameter_groups(model, args.learning_rate, game["club_head_lr_scale"])
    optimizer = torch.optim.AdamW(groups, lr=args.learning_rate, weight_decay=args.weight_decay, **fused)
    critic_params = model.club_critic_parameters()
    critic_optimizer = torch.optim.Adam(critic_params, lr=game["critic_learning_rate"], **fused) if critic_params else None
    scheduler = get_scheduler(
        args.lr_scheduler_type, optimizer, num_warmup_steps=args.num_warmup_steps, num_training_steps=schedule.max_steps
    )
    return optimizer, critic_optimizer, scheduler


def prepare_for_training(accelerator: Accelerator, model, optimizer, critic_optimizer, scheduler):
    """``accelerator.prepare`` of the model, optimizers and scheduler; returns them in that
    order. The schedule is counted in optimizer steps, so it advances once per step whatever
    the number of processes (a prepared scheduler steps ``num_processes`` times per step
    unless told the batches are split: each process's batch is a share of the global one)."""
    critic_optimizers = [critic_optimizer] if critic_optimizer else []
    model, optimizer, scheduler, *critic_optimizers = accelerator.prepare(model, optimizer, scheduler, *critic_optimizers)
    scheduler.split_batches = True
    return model, optimizer, (critic_optimizers[0] if critic_optimizers else None), scheduler


def train_state(args: TrainingArguments, accelerator: Accelerator) -> TrainState:
    """A fresh :class:`TrainState` with this run's batch geometry."""
    return TrainState(per_device_train_batch_size=args.per_device_train_batch_size,
                      num_processes=accelerator.num_processes,
                      gradient_accumulation_steps=args.gradient_accumulation_steps)


def resume(args: TrainingArguments, accelerator: Accelerator, state: TrainState, model, checkpoint: Path | None,
           schedule: Schedule) -> None:
    """Load ``checkpoint`` (:func:`resume_checkpoint`) into the prepared objects and
    ``state``. Refused, naming what differs, when the checkpoint's batch geometry is not this
    run's (the rows already seen would be miscounted) or its step lies beyond this run."""
    if checkpoint is None:
        return
    saved = load_checkpoint(accelerator, checkpoint, model=model)
    changes = saved.geometry_changes(state)
    if changes:
        raise ValueError(f"`resume_from_checkpoint` {str(checkpoint)!r} was trained with another batch geometry "
                         f"({'; '.join(changes)}): resuming would skip the wrong rows. Resume with its settings")
    if saved.step > schedule.max_steps:
        raise ValueError(f"`resume_from_checkpoint` {str(checkpoint)!r} is at step {saved.step}, beyond this run's "
                         f"{schedule.max_steps} steps (raise --max_train_steps or --num_train_epochs)")
    state.step = saved.step
    log.info("Resumed from %s at step %d", checkpoint, state.step)


# ------------------------------------------------------------------------------- epoch
def progress_bar(args: TrainingArguments, accelerator: Accelerator, initial: int, total: int):
    """The optimizer-step progress bar (local main process only)."""
    return tqdm(total=total, initial=initial, disable=args.disable_tqdm or not accelerator.is_local_main_process, desc="train")


class LossLog:
    """Mean loss terms over windows of ``logging_steps`` optimizer steps (and the last,
    shorter one), with ``lr``, the learning rate the window's last step trained at. Terms
    are summed on the device and read back once per window: a ``.item()`` per term per step
    would stall an accelerator on every step."""

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
    loss log, the progress bar, the rows seen and the processor (saved with checkpoints)."""

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
    processor: Any = None


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
        # The rate this step trains at (the scheduler's last rate is the next step's).
        learning_rate = trainer.optimizer.param_groups[0]["lr"]
        try:
            outputs = training_step(
                trainer.model, {**batch, "return_loss": True}, trainer.optimizer, trainer.critic_optimizer,
                club_critic_steps=args.club_game["club_critic_steps"], scheduler=trainer.scheduler, max_grad_norm=args.max_grad_norm,
                accelerator=accelerator,
            )
        except ValueError as error:
            # The objective's finiteness check on the features (with FACTORCL_DEBUG; else the
            # non-finite loss below): weights already broken.
            if "contains NaN or infinite values" not in str(error):
                raise
            raise TrainingDivergedError(diverged_message(args, state.step + 1, str(error))) from error
        check_loss_is_finite(args, accelerator, outputs.loss, state.step + 1)
        if not accelerator.sync_gradients:
            continue
        state.step += 1
        trainer.progress.update(1)
        trainer.loss_log.add(state.step, outputs, learning_rate, trainer.progress)
        if args.checkpointing_steps and state.step % args.checkpointing_steps == 0:
            save_checkpoint(accelerator, Path(args.output_dir), state, args.checkpoints_total_limit, model=trainer.model,
                            processor=trainer.processor)
        if state.step >= schedule.max_steps:
            break
    if state.step == first_step:
        raise ValueError("The training data gave no full batch: fewer usable rows than --per_device_train_batch_size")


class TrainingDivergedError(PackageRuntimeError):
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
def fit_factorization(args: TrainingArguments, model: FactorCLModel, processor, data: TrainingData) -> dict:
    """Closed-form estimators (docs/method.md): fit Z_S and Z_U's conditional expectations on
    up to ``--factorization_rows`` training pairs, unaugmented, before the model is saved.
    Every process embeds the same rows (a seeded choice), so every process fits the same
    layers without exchanging features. ``{}`` for objectives without such layers."""
    if not model.has_closed_form_factorization:
        return {}
    try:
        return _fit_factorization(args, model, processor, data)
    except Exception as error:  # noqa: BLE001 - the trained heads are still worth saving
        log.error("Fitting the closed-form factorization failed; the model is saved without it (shared_embeds is "
                  "the unit shared head, unique_embeds the unique head): %s: %s", type(error).__name__, error)
        return {"factorization_fit_error": f"{type(error).__name__}: {error}"}


def _fit_factorization(args: TrainingArguments, model: FactorCLModel, processor, data: TrainingData) -> dict:
    rows = data.train
    if len(rows) > args.factorization_rows:
        chosen = torch.randperm(len(rows), generator=torch.Generator().manual_seed(args.seed))[: args.factorization_rows]
        rows = rows.select(sorted(chosen.tolist()))
    batch = args.per_device_eval_batch_size
    image_embeds = extract_embeddings(model, processor, rows[args.image_column], "image", "backbone", batch)["backbone"]
    text_embeds = extract_embeddings(model, processor, rows[args.caption_column], "text", "backbone", batch)["backbone"]
    report = model.fit_factorization(image_embeds, text_embeds)
    log.info("Fitted the closed-form factorization on %d training pairs", len(rows))
    return {"factorization_fit": {"rows": len(rows), **report}}


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


def guarded_evaluation(args: TrainingArguments, accelerator: Accelerator, model: FactorCLModel, processor,
                       data: TrainingData, step: int) -> dict:
    """:func:`evaluate` (main process), its metrics logged to the trackers; a failure is logged
    and returned as ``{"evaluation_error": ...}``, never raised: an evaluation must not cost
    the model (after an epoch: the rest of the run; at the end: the save or the push)."""
    try:
        metrics = evaluate(args, model, processor, data)
    except Exception as error:  # noqa: BLE001 - any failure: report it and go on
        log.error("The evaluation failed (the model is not affected): %s: %s", type(error).__name__, error)
        return {"evaluation_error": f"{type(error).__name__}: {error}"}
    log_metrics(args, accelerator, metrics, step)
    return metrics


def evaluate_after_training(args: TrainingArguments, accelerator: Accelerator, model: FactorCLModel, processor,
                            collator, data: TrainingData, step: int) -> dict:
    """The CLUB critic check and the evaluation, run once the model is saved; each failure is
    recorded (``club_critic_check_error``, ``evaluation_error``), never raised."""
    results = {}
    try:
        results.update(club_critic_check(args, accelerator, model, collator, data))
    except Exception as error:  # noqa: BLE001 - any failure: the model is saved, report and go on
        log.error("The CLUB critic check failed (the model is saved): %s: %s", type(error).__name__, error)
        results["club_critic_check_error"] = f"{type(error).__name__}: {error}"
    if data.eval is not None and accelerator.is_main_process:
        results.update(guarded_evaluation(args, accelerator, model, processor, data, step))
    return results


def save_model(args: TrainingArguments, model: FactorCLModel, processor, data: TrainingData, results: dict,
               loss_log: LossLog, run_facts: dict) -> Path:
    """On the main process, before any evaluation or push: the model with its processor and
    a card (``OUTPUT_DIR/model``), ``results.json`` and ``train_log.jsonl``. Returns the
    model's folder (a temporary one, named in the error, if the output dir cannot take it)."""
    output_dir = Path(args.output_dir)
    card = training_model_card(model, args, results, data, run_facts)
    validate_model_card(card)
    model_dir = save_model_or_fallback(model, processor, output_dir / "model", card)
    results["model_dir"] = str(model_dir)
    (output_dir / "results.json").write_text(json.dumps(results, indent=2))
    (output_dir / "train_log.jsonl").write_text("".join(json.dumps(r) + "\n" for r in loss_log.records))
    log.info("Saved the trained model to %s", model_dir)
    return model_dir


def finish_run(args: TrainingArguments, model: FactorCLModel, processor, data: TrainingData, results: dict,
               run_facts: dict) -> None:
    """On the main process, after the evaluation: the card with its metrics replaces the saved
    one, ``results.json`` gets them, then the push to the Hub if asked. A failed push is
    recorded (``push_error``), not raised: the model is saved."""
    output_dir, model_dir = Path(args.output_dir), Path(results["model_dir"])
    card = training_model_card(model, args, results, data, run_facts)
    try:
        validate_model_card(card)
        staged = model_dir / ".README.md.new"
        card.save(staged)
        os.replace(staged, model_dir / "README.md")
    except Exception as error:  # noqa: BLE001 - the saved card (without metrics) stays
        log.warning("Could not add the metrics to the model card in %s: %s", model_dir, error)
    (output_dir / "results.json").write_text(json.dumps(results, indent=2))
    if args.push_to_hub:
        try:
            results["pushed_to"] = push_to_hub(model, processor, args.hub_model_id, card)
            log.info("Pushed to %s", results["pushed_to"])
        except RuntimeError as error:
            results["push_error"] = str(error)
            log.error("%s", error)
        (output_dir / "results.json").write_text(json.dumps(results, indent=2))


def save_model_or_fallback(model: FactorCLModel, processor, target: Path, card) -> Path:
    """Save to ``target``; if that fails (a full disk raises ``OSError`` from one writer and
    ``SafetensorError`` from safetensors), save to a new folder in the system's temporary
    directory and raise an ``OSError`` naming both, so the trained weights are never lost."""
    try:
        return save_pretrained_atomically(model, processor, target, card=card)
    except (OSError, SafetensorError) as error:
        fallback = Path(tempfile.mkdtemp(prefix="factorcl-unsaved-model-"))
        try:
            save_pretrained_atomically(model, processor, fallback, card=card)
        except (OSError, SafetensorError) as second:
            raise OSError(f"Saving the trained model to {str(target)!r} failed ({error}), and so did saving it "
                          f"to {str(fallback)!r} ({second})") from error
        raise OSError(f"Saving the trained model to {str(target)!r} failed ({error}); the trained model was "
                      f"saved to {str(fallback)!r} instead") from error


_DATA_FILE_SUFFIXES = (".csv", ".json", ".jsonl", ".parquet", ".arrow", ".txt", ".tsv", ".zip", ".tar", ".gz")


def hub_repo_id(source) -> str | None:
    """``source`` if it names a Hub repository (``name`` or ``owner/name``, not a local path or
    file name), else ``None``: card metadata names Hub repositories only."""
    text = str(source or "")
    parts = text.split("/")
    if (not text or Path(text).exists() or text.lower().endswith(_DATA_FILE_SUFFIXES) or len(parts) > 2
            or text.startswith((".", "~")) or not all(part and part[0].isalnum() for part in parts)):
        return None
    return text


def _local_kind(source) -> str:
    """How ``datasets`` reads a local source (its builder's name), for the card."""
    path = Path(str(source))
    if path.is_dir():
        return "parquet" if any(path.glob("*.parquet")) else "imagefolder"
    return {".csv": "csv", ".jsonl": "json", ".json": "json", ".parquet": "parquet"}.get(path.suffix, "local")


def training_model_card(model, args: TrainingArguments, results: dict, data: TrainingData, run_facts: dict):
    """The model card saved with (and pushed with) the trained model: evaluation results in
    the model-index (each with its number of items), the recipe in the body (backbone, locked
    towers, rows, processes and global batch), and snippets that load ``--hub_model_id`` (or
    a placeholder path: a card never holds the machine's local paths)."""
    metrics = {k: v for k, v in results.items() if isinstance(v, float)}
    eval_id = hub_repo_id(data.eval_source)
    dataset = {"dataset": eval_id} if eval_id else {"dataset": f"local {_local_kind(data.eval_source)} data",
                                                    "dataset_type": _local_kind(data.eval_source)}
    records = []
    for task, is_task_metric in (("retrieval", lambda k: "R@" in k), ("probe", lambda k: k.endswith("_accuracy"))):
        chosen = {k: v for k, v in metrics.items() if is_task_metric(k)}
        if chosen:
            records.append({"task": task, **dataset, "split": data.eval_split, "metrics": chosen,
                            "num_samples": len(data.eval)})
    if args.clip_model:
        backbone = f"{hub_repo_id(args.clip_model) or 'a local CLIP checkpoint'} (pretrained), fine-tuned"
    else:
        backbone = (f"a tiny CLIP trained from scratch (no pretrained weights): width {args.tiny_hidden_size}, "
                    f"{args.tiny_num_layers} layer(s) per tower, {args.tiny_image_size} px images, tokenizer built "
                    "from the training captions")
    locks = [f"{m} tower" + (f" (last {getattr(args, f'lock_{m}_unlocked_layers')} layers trainable)"
                             if getattr(args, f"lock_{m}_unlocked_layers") else "")
             for m in ("image", "text") if getattr(args, f"lock_{m}")]
    summary = {
        "backbone": backbone,
        "locked": ", ".join(locks) or "nothing (every tower trained)",
        "training rows": run_facts["train_rows"],
        "evaluation rows": len(data.eval) if data.eval is not None else "none (no evaluation)",
        "steps": results["steps"],
        "processes": run_facts["num_processes"],
        "global batch": (f"{run_facts['global_batch']} ({args.per_device_train_batch_size} per process x "
                         f"{run_facts['num_processes']} process(es) x {args.gradient_accumulation_steps} accumulation)"),
        "learning_rate": args.learning_rate,
        "mixed_precision": args.mixed_precision,
        "seed": args.seed,
    }
    if run_facts.get("rows_left_out_per_epoch"):
        summary["rows left out per epoch"] = (f"{run_facts['rows_left_out_per_epoch']} (short of a full global batch; "
                                              "a different random set each epoch)")
    base_model = hub_repo_id(args.clip_model)
    datasets = [name for name in (hub_repo_id(args.train_data), hub_repo_id(args.eval_data)) if name]
    return build_model_card(
        model,
        records,
        base_model=base_model,
        datasets=list(dict.fromkeys(datasets)) or None,
        training_summary=summary,
        repo_id=args.hub_model_id or "path/to/model",
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
