"""Continue pre-training / fine-tune a CLIP-style backbone with a FactorCL objective.

Reads top to bottom: args → accelerator → data → model → optimizers → loop → evaluate → save.

    python training/train.py --config training/configs/demo.yaml
    accelerate launch --multi_gpu --num_processes 2 training/train.py --config ...   # 2 CPU processes
    factorcl-train --clip_model openai/clip-vit-base-patch32 --train_data DIR --objective factorcl_ssl ...

Each step runs the backbone once (original and augmented views batched together), backs
up ``loss + critic_loss`` in one backward (the CLUB critics' loss is computed on detached
features, so it trains only them, and the encoders' CLUB term never trains the critics),
steps both optimizers, then runs ``club_critic_steps - 1`` extra critic steps on the same
detached features. The CLUB critic is thus always evaluated on a batch it has not been
trained on yet (alternating updates, as in GAN training).
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# ----------------------------------------------------------------------------- arguments
DEFAULTS = dict(
    config=None,
    train_data=None,
    train_split="train",
    eval_split="test",
    image_column="image",
    caption_column="caption",
    label_column=None,
    num_train_samples=2000,
    unique_share=None,
    clip_model=None,
    tiny_image_size=32,
    tiny_patch_size=8,
    tiny_hidden_size=64,
    tiny_num_layers=2,
    tiny_projection_dim=64,
    objective="factorcl_ssl",
    head_dim=64,
    head_hidden_dim=256,
    critic_type="concat",
    critic_hidden_dim=256,
    critic_num_hidden_layers=1,
    alignment_critic_type="cosine",
    logit_temperature=0.07,
    club_critic_steps=1,
    critic_learning_rate=1e-3,
    critic_chunk_size=None,
    crop_scale_min=0.2,
    text_augmentation="delete",
    output_dir="outputs/run",
    num_train_epochs=1,
    max_train_steps=None,
    per_device_train_batch_size=32,
    per_device_eval_batch_size=128,
    learning_rate=5e-4,
    weight_decay=0.01,
    lr_scheduler_type="cosine",
    num_warmup_steps=0,
    gradient_accumulation_steps=1,
    max_grad_norm=1.0,
    mixed_precision="no",
    seed=0,
    checkpointing_steps=None,
    checkpoints_total_limit=2,
    resume_from_checkpoint=None,
    report_to="none",
    logging_steps=10,
    club_critic_check_steps=0,
    eval_every_epoch=False,
    retrieval_match_columns=None,
    dataloader_num_workers=0,
    push_to_hub=False,
    hub_model_id=None,
    disable_tqdm=False,
    save_seen_rows=False,
    cpu=False,
)


def parse_args(argv=None) -> argparse.Namespace:
    """CLI flags override values from ``--config`` (YAML or JSON), which override defaults."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    add = parser.add_argument
    add("--config", help="YAML/JSON file of any of these options (e.g. training/configs/demo.yaml)")
    add("--train_data", help="imagefolder dir, .csv/.jsonl/.parquet file or Hub dataset id; default: the embedded shapes dataset")
    add("--train_split", help="split to train on (default: train)")
    add("--eval_split", help="split to evaluate on; 'none' to skip (default: test)")
    add("--image_column"), add("--caption_column")
    add("--label_column", help="label column (required by supervised objectives; used by the linear probe)")
    add("--num_train_samples", type=int, help="size of the embedded dataset when --train_data is not given")
    add("--unique_share", type=float, help="embedded dataset: share of labels from unique attributes")
    add("--clip_model", help="CLIP checkpoint (Hub id or dir) to start from; default: a tiny random CLIP")
    for name in ("tiny_image_size", "tiny_patch_size", "tiny_hidden_size", "tiny_num_layers", "tiny_projection_dim"):
        add(f"--{name}", type=int)
    add("--objective", help="factorcl_ssl, factorcl_sup, simclr, supcon, cross_self, ourcl_ssl, ourcl_sup")
    for name in ("head_dim", "head_hidden_dim", "critic_hidden_dim", "critic_num_hidden_layers", "club_critic_steps", "critic_chunk_size"):
        add(f"--{name}", type=int)
    add("--critic_type"), add("--alignment_critic_type")
    add("--logit_temperature", type=float), add("--critic_learning_rate", type=float)
    add("--crop_scale_min", type=float, help="smallest crop area of the image augmentation (paper: 0.2)")
    add("--text_augmentation", choices=["delete", "mask", "none"])
    add("--output_dir")
    add("--num_train_epochs", type=int), add("--max_train_steps", type=int)
    add("--per_device_train_batch_size", type=int), add("--per_device_eval_batch_size", type=int)
    add("--learning_rate", type=float), add("--weight_decay", type=float)
    add("--lr_scheduler_type"), add("--num_warmup_steps", type=int)
    add("--gradient_accumulation_steps", type=int), add("--max_grad_norm", type=float)
    add("--mixed_precision", choices=["no", "fp16", "bf16"])
    add("--cpu", action="store_true", default=None, help="train on the CPU even if a GPU is present")
    add("--seed", type=int)
    add("--checkpointing_steps", type=int, help="save an accelerate checkpoint every N optimizer steps")
    add("--checkpoints_total_limit", type=int)
    add("--resume_from_checkpoint", help="checkpoint dir, or 'latest' (newest under OUTPUT_DIR/checkpoints)")
    add("--report_to", choices=["none", "tensorboard"])
    add("--logging_steps", type=int, help="log the mean loss terms of every N optimizer steps (train_log.jsonl, trackers)")
    add("--eval_every_epoch", action="store_true", default=None)
    add("--club_critic_check_steps", type=int,
        help="after training, fit fresh CLUB critics for N steps on the frozen train features and compare them with "
             "the trained ones on the eval split (0: off; single-process runs)")
    add("--retrieval_match_columns", nargs="+", help="also report retrieval where any item agreeing on these columns is a hit")
    add("--dataloader_num_workers", type=int)
    add("--push_to_hub", action="store_true", default=None)
    add("--hub_model_id")
    add("--disable_tqdm", action="store_true", default=None)
    add("--save_seen_rows", action="store_true", default=None, help="write the row indices each process trained on (debugging)")
    cli = parser.parse_args(argv)

    values = dict(DEFAULTS)
    if cli.config:
        values.update(load_config_file(cli.config))
    values.update({k: v for k, v in vars(cli).items() if v is not None})
    return argparse.Namespace(**values)


def load_config_file(path: str) -> dict:
    text = Path(path).read_text()
    if path.endswith(".json"):
        config = json.loads(text)
    else:
        import yaml

        config = yaml.safe_load(text) or {}
    unknown = sorted(set(config) - set(DEFAULTS))
    if unknown:
        raise ValueError(f"`config` file {path!r} has unknown options {unknown}; known: {sorted(DEFAULTS)}")
    return config


# ------------------------------------------------------------------------------ training
@dataclass
class TrainingRun:
    """What a training job returns: its results (also in OUTPUT_DIR/results.json), the
    trained model (unwrapped) and its processor."""

    results: dict
    model: Any
    processor: Any


def train(args: argparse.Namespace) -> TrainingRun:
    """Run one training job."""
    import torch
    from accelerate import Accelerator, DataLoaderConfiguration
    from accelerate.utils import ProjectConfiguration, set_seed
    from tqdm.auto import tqdm
    from transformers import get_scheduler

    from factorcl_hf.augmentations import ImageAugmentation, TextAugmentation
    from factorcl_hf.checkpointing import TrainState, latest_checkpoint, save_checkpoint, save_pretrained_atomically
    from factorcl_hf.configuration_factorcl import objective_spec
    from factorcl_hf.data.image_text import (
        ImageTextCollator,
        IndexedDataset,
        drop_undecodable_images,
        load_image_text_dataset,
    )
    from factorcl_hf.evaluation.club_check import club_critic_report, critic_inputs, image_text_batches
    from factorcl_hf.evaluation.image_text import evaluate_image_text
    from factorcl_hf.training_step import training_step

    supervised = objective_spec(args.objective).supervised
    if args.per_device_train_batch_size < 2:
        raise ValueError(
            f"`per_device_train_batch_size` must be >= 2 for contrastive training, got {args.per_device_train_batch_size}"
        )
    if args.logging_steps < 1:
        raise ValueError(f"`logging_steps` must be >= 1, got {args.logging_steps}")
    if args.club_critic_check_steps < 0:
        raise ValueError(f"`club_critic_check_steps` must be >= 0, got {args.club_critic_check_steps}")
    output_dir = Path(args.output_dir)

    # -- accelerator. Several processes without a GPU (`accelerate launch --multi_gpu
    # --num_processes 2` on a CPU machine) need `cpu=True` for accelerate to pick gloo.
    multi_process_cpu = not torch.cuda.is_available() and int(os.environ.get("WORLD_SIZE", "1")) > 1
    accelerator = Accelerator(
        cpu=args.cpu or multi_process_cpu,
        mixed_precision=args.mixed_precision,
        gradient_accumulation_steps=args.gradient_accumulation_steps,
        log_with=None if args.report_to == "none" else args.report_to,
        project_config=ProjectConfiguration(project_dir=str(output_dir), logging_dir=str(output_dir / "logs")),
        # Seeded shuffling: the data order of an epoch is the same after a resume.
        dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True),
    )
    logging.basicConfig(level=logging.INFO if accelerator.is_main_process else logging.WARNING, format="%(message)s")
    log = logging.getLogger("factorcl.train")
    set_seed(args.seed)

    # -- data
    label_column = args.label_column
    if args.train_data is None:
        from factorcl_hf.data.shapes import DEFAULT_UNIQUE_SHARE, write_shapes_imagefolder

        share = DEFAULT_UNIQUE_SHARE if args.unique_share is None else args.unique_share
        data_dir = output_dir.parent / "data" / f"shapes-{args.num_train_samples}-{share}-seed{args.seed}"
        with accelerator.main_process_first():
            if accelerator.is_main_process:
                write_shapes_imagefolder(data_dir, num_samples=args.num_train_samples, seed=args.seed, unique_share=share)
        train_source, label_column = data_dir, label_column or "label"
    else:
        train_source = args.train_data
    if supervised and label_column is None:
        raise ValueError(f"`label_column` is required by the supervised objective {args.objective!r}")
    with accelerator.main_process_first():
        data = load_image_text_dataset(train_source, args.image_column, args.caption_column, label_column)
    if args.train_split not in data:
        raise ValueError(f"`train_split` {args.train_split!r} not in the data; splits: {sorted(data)}")
    train_set, dropped = drop_undecodable_images(data[args.train_split], args.image_column)
    eval_set = data[args.eval_split] if args.eval_split in data else None
    if len(train_set) < args.per_device_train_batch_size * accelerator.num_processes:
        raise ValueError(
            f"The training split has {len(train_set)} usable rows, fewer than one global batch "
            f"({args.per_device_train_batch_size} x {accelerator.num_processes} processes)"
        )

    # -- model and processor
    model, processor = build_model_and_processor(args, train_set, label_column)
    config = model.config
    uses_views = config.uses_augmented_views
    collator = ImageTextCollator(
        processor,
        image_column=args.image_column,
        caption_column=args.caption_column,
        label_column=label_column if supervised else None,
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
    train_loader = torch.utils.data.DataLoader(
        IndexedDataset(train_set),
        batch_size=args.per_device_train_batch_size,
        shuffle=True,
        drop_last=True,  # every contrastive batch full (and the same size on every process)
        collate_fn=collator,
        num_workers=args.dataloader_num_workers,
        # Workers are re-created every epoch on purpose (no persistent_workers): that is how
        # the collator's new `epoch`, which seeds each row's augmentation, reaches them.
        pin_memory=torch.cuda.is_available(),
    )

    # -- optimizers: the CLUB critics have their own
    # Fused (single-kernel) Adam where torch has it: 5x faster optimizer steps on CPU.
    fused = {"fused": True} if accelerator.device.type in ("cpu", "cuda") else {}
    optimizer = torch.optim.AdamW(model.main_parameters(), lr=args.learning_rate, weight_decay=args.weight_decay, **fused)
    critic_params = model.club_critic_parameters()
    critic_optimizer = torch.optim.Adam(critic_params, lr=config.critic_learning_rate, **fused) if critic_params else None
    steps_per_epoch = math.ceil(len(train_loader) / accelerator.num_processes / args.gradient_accumulation_steps)
    max_steps = args.max_train_steps or args.num_train_epochs * steps_per_epoch
    num_epochs = math.ceil(max_steps / steps_per_epoch)
    scheduler = get_scheduler(
        args.lr_scheduler_type, optimizer, num_warmup_steps=args.num_warmup_steps, num_training_steps=max_steps
    )
    prepared = accelerator.prepare(model, optimizer, train_loader, scheduler, *([critic_optimizer] if critic_optimizer else []))
    model, optimizer, train_loader, scheduler = prepared[:4]
    critic_optimizer = prepared[4] if critic_optimizer else None
    unwrapped = accelerator.unwrap_model(model)
    state = TrainState()
    accelerator.register_for_checkpointing(state)

    # -- resume
    if args.resume_from_checkpoint:
        path = latest_checkpoint(output_dir) if args.resume_from_checkpoint == "latest" else Path(args.resume_from_checkpoint)
        if path is None:
            log.info("No checkpoint under %s; starting from scratch", output_dir / "checkpoints")
        else:
            accelerator.load_state(str(path))
            log.info("Resumed from %s at step %d", path, state.step)

    if args.report_to != "none":
        accelerator.init_trackers("factorcl", config={k: v for k, v in vars(args).items() if isinstance(v, (int, float, str, bool))})

    # -- loop
    log.info("Training %s on %d rows: %d steps (%d epochs), %d process(es)", args.objective, len(train_set), max_steps, num_epochs, accelerator.num_processes)
    progress = tqdm(total=max_steps, initial=state.step, disable=args.disable_tqdm or not accelerator.is_local_main_process, desc="train")
    history, seen_rows = [], []
    # Loss terms are summed on the device and read back once per logging window: a `.item()`
    # per term per step would stall an accelerator on every step.
    window_sums, window_steps = None, 0
    model.train()
    while state.step < max_steps:
        epoch = state.step // steps_per_epoch
        collator.epoch = epoch
        train_loader.set_epoch(epoch)
        skip = (state.step - epoch * steps_per_epoch) * args.gradient_accumulation_steps
        loader = accelerator.skip_first_batches(train_loader, skip) if skip else train_loader
        for batch in loader:
            seen_rows.extend(batch.pop("row_indices").tolist())
            outputs = training_step(
                model, {**batch, "return_loss": True}, optimizer, critic_optimizer,
                club_critic_steps=config.club_critic_steps, scheduler=scheduler, max_grad_norm=args.max_grad_norm,
                accelerator=accelerator,
            )
            if not accelerator.sync_gradients:
                continue
            state.step += 1
            progress.update(1)
            terms = {"loss": outputs.loss.detach(), **(outputs.loss_terms or {})}
            step_values = torch.stack([value.float() for value in terms.values()])
            window_sums = step_values if window_sums is None else window_sums + step_values
            window_steps += 1
            if state.step % args.logging_steps == 0 or state.step >= max_steps:
                means = (window_sums / window_steps).tolist()
                record = {"step": state.step, "lr": scheduler.get_last_lr()[0], **dict(zip(terms, means))}
                window_sums, window_steps = None, 0
                history.append(record)
                progress.set_postfix(loss=f"{record['loss']:.3f}")
                if args.report_to != "none":
                    accelerator.log(record, step=state.step)
            if args.checkpointing_steps and state.step % args.checkpointing_steps == 0:
                save_checkpoint(accelerator, output_dir, state.step, args.checkpoints_total_limit)
            if state.step >= max_steps:
                break
        if args.eval_every_epoch and eval_set is not None and state.step < max_steps and accelerator.is_main_process:
            metrics = evaluate_image_text(unwrapped, processor, train_set, eval_set, args.image_column, args.caption_column, label_column, args.per_device_eval_batch_size, args.retrieval_match_columns)
            log.info("epoch %d: %s", epoch, metrics)
            model.train()
    progress.close()

    # -- evaluate and save
    results = {"objective": args.objective, "steps": state.step, "skipped_undecodable_images": dropped}
    estimators = unwrapped.objective.club_estimators
    batch = args.per_device_train_batch_size
    if args.club_critic_check_steps and estimators and eval_set is not None:
        # Is the CLUB min-max game still tracking? (docs/synthetic_benchmark.md)
        if accelerator.num_processes > 1:
            # The model's forward gathers features across processes: one process alone would hang.
            log.warning("--club_critic_check_steps runs in single-process training only; skipped")
        elif len(eval_set) < batch:
            log.warning("--club_critic_check_steps: the eval split has fewer rows than one batch; skipped")
        else:
            inputs = [critic_inputs(unwrapped, image_text_batches(unwrapped, collator, split, batch)) for split in (train_set, eval_set)]
            results["club_critic_check"] = club_critic_report(estimators, *inputs, batch, args.club_critic_check_steps, seed=args.seed)
    if eval_set is not None and accelerator.is_main_process:
        results.update(evaluate_image_text(unwrapped, processor, train_set, eval_set, args.image_column, args.caption_column, label_column, args.per_device_eval_batch_size, args.retrieval_match_columns))
    if args.save_seen_rows:
        output_dir.mkdir(parents=True, exist_ok=True)
        (output_dir / f"seen_rows.rank{accelerator.process_index}.json").write_text(json.dumps(seen_rows))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        card = training_model_card(unwrapped, args, results, train_source)
        final_dir = save_pretrained_atomically(unwrapped, processor, output_dir / "model", card=card)
        results["model_dir"] = str(final_dir)
        (output_dir / "results.json").write_text(json.dumps(results, indent=2))
        (output_dir / "train_log.jsonl").write_text("".join(json.dumps(r) + "\n" for r in history))
        if args.push_to_hub:
            from factorcl_hf.hub import push_to_hub

            if not args.hub_model_id:
                raise ValueError("`hub_model_id` is required with --push_to_hub")
            url = push_to_hub(unwrapped, processor, args.hub_model_id, card)
            log.info("Pushed to %s", url)
    accelerator.wait_for_everyone()
    accelerator.end_training()
    return TrainingRun(results, unwrapped, processor)


def build_model_and_processor(args, train_set, label_column):
    """A CLIP checkpoint wrapped with fresh FactorCL heads, or a tiny random CLIP with a
    tokenizer built from the training captions (offline)."""
    from factorcl_hf import FactorCLConfig, FactorCLModel

    overrides = dict(
        objective=args.objective,
        head_dim=args.head_dim,
        head_hidden_dim=args.head_hidden_dim,
        critic_type=args.critic_type,
        critic_hidden_dim=args.critic_hidden_dim,
        critic_num_hidden_layers=args.critic_num_hidden_layers,
        alignment_critic_type=args.alignment_critic_type,
        logit_temperature=args.logit_temperature,
        club_critic_steps=args.club_critic_steps,
        critic_learning_rate=args.critic_learning_rate,
        critic_chunk_size=args.critic_chunk_size,
    )
    if label_column is not None:
        overrides["num_labels"] = max(2, int(max(train_set[label_column])) + 1)
    if args.clip_model:
        from transformers import AutoProcessor

        return FactorCLModel.from_clip(args.clip_model, **overrides), AutoProcessor.from_pretrained(args.clip_model)
    from factorcl_hf.testing_utils import build_caption_tokenizer, special_token_ids, tiny_clip_config, tiny_clip_processor

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
    return FactorCLModel(FactorCLConfig(clip_config=clip_config, **overrides)), tiny_clip_processor(tokenizer, args.tiny_image_size)


def training_model_card(model, args, results, train_source):
    """The model card saved with (and pushed with) the trained model: evaluation results in
    the model-index, the recipe in the body."""
    from factorcl_hf.hub import build_model_card

    metrics = {k: v for k, v in results.items() if isinstance(v, float)}
    records = []
    for task, keys in (("retrieval", "retrieval_"), ("probe", "probe_acc")):
        chosen = {k: v for k, v in metrics.items() if k.startswith(keys) or k.endswith(keys)}
        if chosen:
            records.append({"task": task, "data": str(train_source), "split": args.eval_split, "metrics": chosen})
    summary = {
        "objective": args.objective,
        "steps": results["steps"],
        "learning_rate": args.learning_rate,
        "per_device_train_batch_size": args.per_device_train_batch_size,
        "mixed_precision": args.mixed_precision,
        "seed": args.seed,
    }
    return build_model_card(
        model,
        records,
        base_model=args.clip_model,
        datasets=[str(args.train_data)] if args.train_data and not Path(str(args.train_data)).exists() else None,
        training_summary=summary,
        repo_id=args.hub_model_id,
    )


def main(argv=None) -> dict:
    run = train(parse_args(argv))
    print(json.dumps(run.results, indent=2))
    return run.results


if __name__ == "__main__":
    main()
