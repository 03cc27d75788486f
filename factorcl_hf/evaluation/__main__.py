"""Command line evaluation of a saved FactorCL model.

    python -m factorcl_hf.evaluation --model DIR --task retrieval --data DATA_DIR --out results.json

Tasks: ``retrieval`` (R@1/5/10 both directions), ``zero_shot`` (top-1/top-5 from class-name
prompts), ``probe`` (linear probe of the label on pair embeddings), ``information`` (InfoNCE /
NCE-CLUB estimates of the label information in the shared and unique embeddings),
``factorization`` (linear and MLP probes of every ``--attributes`` column from every
embedding of each modality: what Z_S and Z_U hold; a heatmap PNG beside ``--out``), and on
IRFL task CSVs ``irfl_mc`` (multiple choice) and ``irfl_type`` (figurative-type probe).

``--data`` is an imagefolder directory (images + ``metadata.jsonl``, read with
``datasets.load_dataset("imagefolder")``), or CSV / JSON Lines / Parquet files whose image
column holds paths relative to the file; for the IRFL tasks, IRFL task CSVs. The data is read
as training reads it (``factorcl_hf.data.image_text.load_image_text_dataset``): image paths
stay inside the data's folder (``--allow-outside-paths`` lifts that), labels and captions are
validated the same way, and images that fail to decode are skipped and counted. Results are
printed as a table and written as JSON (the record ``factorcl_hf.hub.build_model_card`` accepts).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

import torch
from transformers import AutoProcessor

from ..cli import console_main
from ..data.image_text import drop_undecodable_images, load_image_text_dataset
from ..hub import class_names
from ..integrity import check_model_path
from ..modeling_factorcl import FactorCLModel
from ..progress import hide_library_progress_bars
from ..research import information
from . import factorization, irfl, retrieval, zero_shot
from .embed import EMBEDDING_TYPES, available_embeddings, embed_pairs
from .probe import linear_probe_accuracy

TASKS = ("retrieval", "zero_shot", "irfl_mc", "irfl_type", "probe", "information", "factorization")
# Tasks that read several embeddings at once; the others score one embedding.
MULTI_EMBEDDING_TASKS = ("probe", "irfl_type", "information", "factorization")
# The columns each image+caption task reads besides the images.
TASK_COLUMNS = {"retrieval": ("caption",), "zero_shot": ("label",), "probe": ("caption", "label"),
                "information": ("caption", "label"), "factorization": ("caption",)}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m factorcl_hf.evaluation",
        description="Evaluate a saved FactorCL model: retrieval, zero-shot, linear probes, IRFL, information.",
    )
    parser.add_argument("--model", required=True, help="saved model directory (with its processor) or Hub id")
    parser.add_argument("--task", required=True, choices=TASKS)
    parser.add_argument("--data", required=True, nargs="+",
                        help="imagefolder directory, CSV/JSONL file(s), or IRFL task CSV(s) for irfl_* tasks")
    parser.add_argument("--out", help="write the results record here (JSON)")
    parser.add_argument("--split", default=None, help="evaluation split (default: 'test' if present, else the only split)")
    parser.add_argument("--train-split", default="train",
                        help="split the probe/information critics are fitted on; if absent, a seeded part of --split")
    parser.add_argument("--test-fraction", type=float, default=0.2,
                        help="held-out share when a split is made (probe, information, irfl_type)")
    parser.add_argument("--image-column", default="image")
    parser.add_argument("--caption-column", default="caption")
    parser.add_argument("--label-column", default="label")
    parser.add_argument("--embedding", nargs="+", choices=EMBEDDING_TYPES, default=None,
                        help="embedding(s) to evaluate; default 'pooler' for retrieval/zero_shot/irfl_mc, "
                             "every available non-pooler one for probe/irfl_type, 'shared unique' for information")
    parser.add_argument("--class-names", nargs="+", help="zero_shot: class names in label-id order "
                        "(default: the label column's ClassLabel names or its distinct strings, else the "
                        "model config's id2label)")
    parser.add_argument("--templates", nargs="+", help="zero_shot: prompt templates with '{}' (default: 'a photo of a {}.')")
    parser.add_argument("--image-root", help="irfl_*: folder of downloaded IRFL images (and base of relative paths)")
    parser.add_argument("--skip-missing", action="store_true", help="irfl_*: drop rows whose images are not local")
    parser.add_argument("--num-candidates", type=int, default=None, help="irfl_mc: phrases per image question")
    parser.add_argument("--critic-steps", type=int, default=300, help="information: critic training steps")
    parser.add_argument("--attributes", nargs="+", help="factorization: columns saying what generated each pair "
                        "(e.g. shape size position colour background drawer on the embedded data)")
    parser.add_argument("--probes", nargs="+", choices=factorization.PROBES, default=list(factorization.PROBES),
                        help="factorization: the probes to fit")
    parser.add_argument("--max-samples", type=int, default=None, help="use at most this many samples per split")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--device", default=None, help="e.g. cuda, cpu (default: cuda if available)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--allow-outside-paths", action="store_true",
                        help="let the data's image paths (absolute, `..`, symlinks) lead outside its folder")
    parser.add_argument("--no-progress", action="store_true", help="hide progress bars")
    parser.add_argument("--debug", action="store_true", help="show the traceback of errors")
    return parser


# ----------------------------------------------------------------------------- data
def _is_string(feature) -> bool:
    import datasets

    # CSV columns load as large_string, JSON ones as string.
    return isinstance(feature, datasets.Value) and feature.dtype in ("string", "large_string")


def _load_dataset_dict(args):
    """The ``--data`` of an image+caption task, as training reads it: each source through
    :func:`~factorcl_hf.data.image_text.load_image_text_dataset` with the columns the task
    reads (named when missing; captions and labels validated), the splits of several files
    concatenated."""
    import datasets

    needs = TASK_COLUMNS[args.task]
    columns = dict(image_column=args.image_column,
                   caption_column=args.caption_column if "caption" in needs else None,
                   label_column=args.label_column if "label" in needs else None)
    parts = [load_image_text_dataset(path, **columns, allow_outside_paths=args.allow_outside_paths)
             for path in args.data]
    names = list(dict.fromkeys(name for part in parts for name in part))
    return datasets.DatasetDict({
        name: datasets.concatenate_datasets([part[name] for part in parts if name in part]) for name in names
    })


def _select_splits(dataset_dict, args, needs_train: bool):
    """``(eval split, train split or None, eval split name, images skipped)``: the splits the
    task reads, their undecodable images dropped (and counted)."""
    names = list(dataset_dict)
    eval_name = args.split or ("test" if "test" in names else names[0] if len(names) == 1 else None)
    if eval_name not in names:
        raise ValueError(f"`--split` {eval_name!r} not in the data's splits {names}; choose one with --split")
    eval_split, skipped = drop_undecodable_images(dataset_dict[eval_name], args.image_column)
    train_split = None
    if needs_train:
        if args.train_split in names and args.train_split != eval_name:
            train_split, dropped = drop_undecodable_images(dataset_dict[args.train_split], args.image_column)
            skipped += dropped
        else:
            parts = eval_split.train_test_split(test_size=args.test_fraction, seed=args.seed)
            train_split, eval_split = parts["train"], parts["test"]
    if args.max_samples is not None:
        eval_split = eval_split.select(range(min(args.max_samples, len(eval_split))))
        if train_split is not None:
            train_split = train_split.select(range(min(args.max_samples, len(train_split))))
    return eval_split, train_split, eval_name, skipped


def _label_ids(split, column: str, class_names: list[str] | None) -> tuple[list[int], list[str] | None]:
    """Integer label ids and class names (from ClassLabel, string values, or --class-names).
    The loader has validated the labels (``check_labels``): a number here is a class id."""
    import datasets

    feature = split.features[column]
    values = split[column]
    if isinstance(feature, datasets.ClassLabel):
        return list(values), class_names or list(feature.names)
    if _is_string(feature):
        names = class_names or sorted(set(values))
        unknown = sorted(set(values) - set(names))
        if unknown:
            raise ValueError(f"labels {unknown} of column {column!r} are not in `--class-names`")
        return [names.index(value) for value in values], names
    return [int(value) for value in values], class_names


def _config_names(model, label_column: str) -> list[str]:
    """The class names the model was trained with (its config's id2label), for bare integer labels."""
    names = class_names(model)
    if names is None:
        raise ValueError(f"`--class-names` is required: column {label_column!r} holds bare integer labels "
                         "and the model's config has no id2label names")
    return names


# ----------------------------------------------------------------------------- tasks
def _run_task(args, model, processor) -> tuple[dict[str, float], dict[str, Any]]:
    """Metrics and extra record fields of the chosen task."""
    embed_kwargs = dict(batch_size=args.batch_size, device=args.device, progress=not args.no_progress)
    multi = args.task in MULTI_EMBEDDING_TASKS
    if args.embedding and not multi and len(args.embedding) != 1:
        raise ValueError(f"`--embedding`: task {args.task!r} scores one embedding, got {args.embedding}")
    embedding = (args.embedding or ["pooler"])[0]

    if args.task.startswith("irfl"):
        items = irfl.load_irfl_csv(args.data, image_root=args.image_root, skip_missing=args.skip_missing)
        if args.max_samples is not None:
            items = items[: args.max_samples]
        extra = {"num_samples": len(items)}
        if args.task == "irfl_mc":
            metrics = irfl.evaluate_irfl_multiple_choice(
                model, processor, items, embedding, args.num_candidates, args.seed, **embed_kwargs
            )
            return metrics, {**extra, "embedding": embedding}
        metrics = irfl.evaluate_irfl_type_probe(
            model, processor, items, args.embedding, args.test_fraction, args.seed, **embed_kwargs
        )
        return metrics, extra

    dataset = _load_dataset_dict(args)
    eval_split, train_split, split_name, skipped = _select_splits(dataset, args, needs_train=multi)
    extra: dict[str, Any] = {"split": split_name, "num_samples": len(eval_split), "skipped_undecodable_images": skipped}

    if args.task == "retrieval":
        metrics = retrieval.evaluate_retrieval(
            model, processor, eval_split[args.image_column], eval_split[args.caption_column], embedding, **embed_kwargs
        )
        return metrics, {**extra, "embedding": embedding}

    if args.task == "zero_shot":
        labels, class_names = _label_ids(eval_split, args.label_column, args.class_names)
        class_names = class_names or _config_names(model, args.label_column)
        metrics = zero_shot.evaluate_zero_shot(
            model, processor, eval_split[args.image_column], labels, class_names,
            args.templates or zero_shot.DEFAULT_TEMPLATES, embedding, **embed_kwargs,
        )
        return metrics, {**extra, "embedding": embedding, "class_names": class_names}

    if args.task == "factorization":
        if not args.attributes:
            raise ValueError("`--attributes` is required by the factorization task: the columns to probe")
        report = factorization.factorization_report(
            model, processor, train_split, eval_split, args.attributes, args.image_column, args.caption_column,
            args.probes, args.batch_size, args.seed,
        )
        metrics = {f"{probe}/{modality}/{embedding}/{attribute}": value
                   for probe in args.probes for modality, per in report[probe].items()
                   for embedding, cells in per.items() for attribute, value in cells.items()}
        return metrics, {**extra, "num_train_samples": len(train_split), "factorization": report}

    labels = {name: _label_ids(split, args.label_column, args.class_names)[0]
              for name, split in (("train", train_split), ("test", eval_split))}
    if args.task == "probe":
        embeddings = args.embedding or [name for name in available_embeddings(model) if name != "pooler"]
        features = {
            name: embed_pairs(model, processor, split[args.image_column], split[args.caption_column], embeddings,
                              **embed_kwargs)
            for name, split in (("train", train_split), ("test", eval_split))
        }
        metrics = {
            f"{embedding}_accuracy": linear_probe_accuracy(
                features["train"][embedding], labels["train"], features["test"][embedding], labels["test"]
            )
            for embedding in embeddings
        }
        return metrics, {**extra, "num_train_samples": len(train_split)}

    embeddings = args.embedding or [name for name in ("shared", "unique") if name in available_embeddings(model)]
    metrics = information.information_report(
        model, processor,
        train=(train_split[args.image_column], train_split[args.caption_column], labels["train"]),
        test=(eval_split[args.image_column], eval_split[args.caption_column], labels["test"]),
        embeddings=embeddings, embed_kwargs=embed_kwargs, steps=args.critic_steps, seed=args.seed,
    )
    return metrics, {**extra, "num_train_samples": len(train_split)}


# ----------------------------------------------------------------------------- output
def format_table(record: dict[str, Any]) -> str:
    """A readable two-column table of a results record."""
    header = [f"{key}: {record[key]}" for key in ("task", "model", "data", "split", "embedding") if key in record]
    rows = [(name, f"{value:.4f}" if isinstance(value, float) else str(value)) for name, value in record["metrics"].items()]
    width = max(len("metric"), *(len(name) for name, _ in rows))
    lines = [*header, "", f"{'metric':<{width}}  value", f"{'-' * width}  {'-' * 8}"]
    lines += [f"{name:<{width}}  {value}" for name, value in rows]
    return "\n".join(lines)


def run(argv: list[str] | None = None) -> dict[str, Any]:
    """Parse ``argv``, evaluate, print the table, write ``--out``; returns the results record."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.task.startswith("irfl") and args.allow_outside_paths:
        parser.error("--allow-outside-paths applies to image+caption data, not to the IRFL tasks (--image-root)")
    if args.out and Path(args.out).is_dir():
        # Checked before the model loads and the evaluation runs, not when the results are written.
        parser.error(f"--out {args.out!r} is a directory; give a file path such as {os.path.join(args.out, 'results.json')!r}")

    # --data is local (a folder or files): only a model downloaded from the Hub has bars worth keeping.
    hide_library_progress_bars(keep_downloads=not args.no_progress)
    args.device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    check_model_path(args.model)
    # FactorCLModel, not AutoModel: another model type is refused, not loaded as that type.
    model = FactorCLModel.from_pretrained(args.model).to(args.device).eval()
    processor = AutoProcessor.from_pretrained(args.model)
    try:
        metrics, extra = _run_task(args, model, processor)
    except ValueError as error:
        parser.exit(2, f"{parser.prog}: error: {error}\n")
    record = {
        "task": args.task,
        "model": str(args.model),
        "data": args.data[0] if len(args.data) == 1 else list(args.data),
        **extra,
        "metrics": metrics,
    }
    print(format_table(record))
    if args.out:
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
        print(f"\nwrote {os.fspath(out)}")
        if "factorization" in record:
            heatmap = factorization.save_factorization_heatmap(record["factorization"], out.with_suffix(".png"),
                                                               title=str(args.model))
            print(f"wrote {os.fspath(heatmap)}")
    return record


def main(argv: list[str] | None = None) -> int:
    """Console entry point (``factorcl-evaluate``): exit status 0 on success, 2 with one line
    for a bad option, model or data (``--debug`` shows the traceback)."""
    return console_main("factorcl-evaluate", run, argv)


if __name__ == "__main__":
    sys.exit(main())
