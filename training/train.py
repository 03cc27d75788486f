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
import os
import sys
from dataclasses import dataclass
from typing import Any

from factorcl_hf.cli import usage_errors
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
    """Run one training job. Everything that can be checked is checked before step 1; the
    model is saved before the evaluation and the push, whose failures are recorded in the
    results (``evaluation_error``, ``push_error``) and never cost the saved model."""
    # torch, accelerate, transformers and the package: imported once the arguments are
    # parsed, so that `--help` and argument errors come back without them.
    from training import loop

    loop.check_objective(args)
    loop.check_output_paths(args)
    loop.trackers(args)
    loop.check_hub_access(args)
    accelerator = loop.build_accelerator(args)
    lock = loop.lock_output_dir(args, accelerator)
    try:
        return _train(args, accelerator, loop)
    finally:
        lock.release()


def _train(args: TrainingArguments, accelerator, loop) -> TrainingRun:
    data = loop.build_data(args, accelerator)
    checkpoint = loop.resume_checkpoint(args)
    model, processor = loop.build_model_and_processor(args, data, checkpoint)
    loop.prepare_backbone(args, model)
    collator, train_loader = loop.build_train_loader(args, model, processor, data)
    train_loader = loop.prepare_loader(args, accelerator, train_loader)
    schedule = loop.build_schedule(args, accelerator, train_loader, data)
    optimizer, critic_optimizer, scheduler = loop.build_optimizers(args, model, accelerator, schedule)
    model, optimizer, critic_optimizer, scheduler = loop.prepare_for_training(
        accelerator, model, optimizer, critic_optimizer, scheduler
    )
    unwrapped = accelerator.unwrap_model(model)
    state = loop.train_state(args, accelerator)
    loop.resume(args, accelerator, state, model, checkpoint, schedule)
    if args.report_to != "none":
        accelerator.init_trackers("factorcl", config=loop.tracker_config(args))

    rows = "a stream" if data.stream is not None else f"{len(data.train)} rows"
    loop.log.info("Training %s on %s: %d steps (%d epochs), %d process(es)", args.objective, rows,
                  schedule.max_steps, schedule.num_epochs, accelerator.num_processes)
    progress = loop.progress_bar(args, accelerator, state.step, schedule.max_steps)
    loss_log = loop.LossLog(args, accelerator, schedule.max_steps)
    trainer = loop.Trainer(model, optimizer, critic_optimizer, scheduler, train_loader, collator, state, schedule,
                           loss_log, progress, seen_rows=[], processor=processor)
    model.train()
    while state.step < schedule.max_steps:
        epoch = state.step // schedule.steps_per_epoch
        loop.train_one_epoch(args, accelerator, trainer, epoch)
        between_epochs = args.eval_every_epoch and data.eval is not None and state.step < schedule.max_steps
        if between_epochs and accelerator.is_main_process:
            loop.log.info("epoch %d: %s", epoch, loop.guarded_evaluation(args, accelerator, unwrapped, processor, data,
                                                                         state.step))
            model.train()
    progress.close()

    run_facts = {
        "num_processes": accelerator.num_processes,
        "global_batch": args.per_device_train_batch_size * accelerator.num_processes * args.gradient_accumulation_steps,
        "train_rows": "a stream" if data.stream is not None else len(data.train),
        "rows_left_out_per_epoch": schedule.rows_left_out_per_epoch,
    }
    results = {"objective": args.objective, "steps": state.step, "skipped_undecodable_images": data.skipped_images(),
               "skipped_undecodable_eval_images": data.eval_dropped, "rows_per_epoch": schedule.rows_per_epoch,
               **run_facts}
    if data.stream_dropped is not None:
        results["skipped_rows_outside_the_label_set"] = data.stream_dropped["labels"]
        results["skipped_rows_without_caption"] = data.stream_dropped["captions"]
    if args.save_seen_rows:
        loop.save_seen_rows(args, accelerator, trainer.seen_rows)
    # Part of the model (closed-form layers), so before the save.
    results.update(loop.fit_factorization(args, unwrapped, processor, data))
    # The trained model goes to disk first: nothing after this (evaluation, push) can cost it.
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        loop.save_model(args, unwrapped, processor, data, results, loss_log, run_facts)
    accelerator.wait_for_everyone()
    results.update(loop.evaluate_after_training(args, accelerator, unwrapped, processor, collator, data, state.step))
    if accelerator.is_main_process:
        loop.finish_run(args, unwrapped, processor, data, results, run_facts)
    accelerator.wait_for_everyone()
    accelerator.end_training()
    return TrainingRun(results, unwrapped, processor, accelerator.is_main_process)


def run(argv: list[str] | None = None) -> dict:
    """Parse ``argv``, train, print the results (main process only); returns them."""
    training_run = train(parse_args(argv))
    if training_run.is_main_process:
        print(json.dumps(training_run.results, indent=2))
    return training_run.results


def final_line(results: dict) -> tuple[int, str]:
    """The exit status and the one line that ends a run: where the model is, and what failed
    after it was saved (evaluation, push)."""
    where = f"the model is saved in {results.get('model_dir')}"
    failures = [f"the {name} failed ({results[key]})" for name, key in
                (("evaluation", "evaluation_error"), ("push to the Hub", "push_error")) if key in results]
    if failures:
        return 1, f"factorcl-train: {where}, but {' and '.join(failures)}"
    pushed = f" and pushed to {results['pushed_to']}" if "pushed_to" in results else ""
    return 0, f"factorcl-train: done: {where}{pushed}"


def main(argv: list[str] | None = None) -> int:
    """Console entry point (``factorcl-train``): exit status 0 on success, 1 when the model
    was saved but its evaluation or push failed, 2 for a usage error (bad option or data),
    each ending with one line; ``--debug`` or ``FACTORCL_DEBUG=1`` shows tracebacks."""
    argv = sys.argv[1:] if argv is None else list(argv)
    with usage_errors("factorcl-train", debug="--debug" in argv) as outcome:
        status, line = final_line(run(argv))
        if os.environ.get("RANK", "0") == "0":  # one line per run, not per process
            print(line, file=sys.stderr)
        return status
    return outcome.status


if __name__ == "__main__":
    sys.exit(main())
