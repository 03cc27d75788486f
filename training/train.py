"""Continue pre-training / fine-tune a CLIP-style backbone with a FactorCL objective.

Reads top to bottom: arguments (training/arguments.py) → accelerator → data → model and
processor → optimizers → one epoch at a time → evaluate and save (the parts: training/loop.py).

    python -m training.train --config training/configs/demo.yaml
    accelerate launch --multi_gpu --num_processes 2 -m training.train --config ...   # 2 CPU processes
    factorcl-train --clip_model openai/clip-vit-base-patch32 --train_data DIR --objective factorcl_ssl ...

Each step is one ``factorcl_hf.training_step.training_step``: the backbone runs once
(original and augmented views batched together), ``loss + critic_loss`` is backed up in one
backward (the CLUB critics' loss is computed on detached features, so it trains only them,
and the encoders' CLUB term never trains the critics), both optimizers step, then
``club_critic_steps - 1`` extra critic steps run on the same detached features.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from typing import Any

from training.arguments import TrainingArguments, load_config_file, parse_args

__all__ = ["TrainingRun", "train", "run", "main", "parse_args", "load_config_file"]


@dataclass
class TrainingRun:
    """What a training job returns: its results (also in OUTPUT_DIR/results.json), the
    trained model (unwrapped) and its processor."""

    results: dict
    model: Any
    processor: Any
    # Only the main process reports: the others hold a partial record (no evaluation).
    is_main_process: bool = True


def train(args: TrainingArguments) -> TrainingRun:
    """Run one training job."""
    # torch, accelerate, transformers and the package: imported once the arguments are
    # parsed, so that `--help` and argument errors come back without them.
    from training import loop

    loop.check_objective(args)
    loop.check_output_paths(args)
    loop.trackers(args)
    accelerator = loop.build_accelerator(args)
    data = loop.build_data(args, accelerator)
    model, processor = loop.build_model_and_processor(args, data)
    loop.prepare_backbone(args, model)
    collator, train_loader = loop.build_train_loader(args, model, processor, data)
    optimizer, critic_optimizer, scheduler, schedule = loop.build_optimizers(
        args, model, accelerator, loop.num_batches(args, accelerator, train_loader)
    )
    critic_optimizers = [critic_optimizer] if critic_optimizer else []
    model, optimizer, scheduler, *critic_optimizers = accelerator.prepare(model, optimizer, scheduler, *critic_optimizers)
    train_loader = loop.prepare_loader(args, accelerator, train_loader)
    critic_optimizer = critic_optimizers[0] if critic_optimizers else None
    unwrapped = accelerator.unwrap_model(model)
    state = loop.TrainState()
    if args.resume_from_checkpoint:
        loop.resume(args, accelerator, state, model)
    if args.report_to != "none":
        accelerator.init_trackers("factorcl", config=loop.tracker_config(args))

    rows = "a stream" if data.stream is not None else f"{len(data.train)} rows"
    loop.log.info("Training %s on %s: %d steps (%d epochs), %d process(es)", args.objective, rows,
                  schedule.max_steps, schedule.num_epochs, accelerator.num_processes)
    progress = loop.progress_bar(args, accelerator, state.step, schedule.max_steps)
    loss_log = loop.LossLog(args, accelerator, schedule.max_steps)
    trainer = loop.Trainer(model, optimizer, critic_optimizer, scheduler, train_loader, collator, state, schedule,
                           loss_log, progress, seen_rows=[])
    model.train()
    while state.step < schedule.max_steps:
        epoch = state.step // schedule.steps_per_epoch
        loop.train_one_epoch(args, accelerator, trainer, epoch)
        if args.eval_every_epoch and data.eval is not None and state.step < schedule.max_steps and accelerator.is_main_process:
            metrics = loop.evaluate(args, unwrapped, processor, data)
            loop.log.info("epoch %d: %s", epoch, metrics)
            loop.log_metrics(args, accelerator, metrics, state.step)
            model.train()
    progress.close()

    results = {"objective": args.objective, "steps": state.step, "skipped_undecodable_images": data.skipped_images()}
    results.update(loop.club_critic_check(args, accelerator, unwrapped, collator, data))
    if data.eval is not None and accelerator.is_main_process:
        results.update(loop.evaluate(args, unwrapped, processor, data))
        loop.log_metrics(args, accelerator, results, state.step)
    if args.save_seen_rows:
        loop.save_seen_rows(args, accelerator, trainer.seen_rows)
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        loop.save_run(args, accelerator, unwrapped, processor, data, results, loss_log)
    accelerator.wait_for_everyone()
    accelerator.end_training()
    return TrainingRun(results, unwrapped, processor, accelerator.is_main_process)


def run(argv: list[str] | None = None) -> dict:
    """Parse ``argv``, train, print the results (main process only); returns them."""
    training_run = train(parse_args(argv))
    if training_run.is_main_process:
        print(json.dumps(training_run.results, indent=2))
    return training_run.results


def main(argv: list[str] | None = None) -> int:
    """Console entry point (``factorcl-train``): exit status 0 on success (a returned dict
    would make ``sys.exit`` print it and exit 1)."""
    run(argv)
    return 0


if __name__ == "__main__":
    sys.exit(main())
