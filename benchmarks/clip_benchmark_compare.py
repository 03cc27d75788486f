"""LAION clip_benchmark's own zero-shot classification and retrieval on a FactorCL model, beside
this package's evaluation of the same model on the same images.

1. The test split of an image-text folder (default: the embedded shapes set, written as the main
   job writes it: 2,000 pairs, seed 0, so its 400-pair test split) is written in clip_benchmark's
   WebDataset layout, twice: ``zeroshot/`` (``.png`` + ``.cls`` per sample, ``classnames.txt``,
   ``zeroshot_classification_templates.txt``) and ``retrieval/`` (``.png`` + ``.txt``,
   ``dataset_type.txt`` = ``retrieval``); the PNG bytes are the folder's own.
2. clip_benchmark reads them with its ``build_dataset("wds/...")`` and evaluates with
   ``metrics.zeroshot_classification.evaluate`` and ``metrics.zeroshot_retrieval.evaluate``
   (its CLI's code path: ``dataset.batched(B)`` in a ``DataLoader``) the model behind
   :mod:`factorcl_hf.evaluation.open_clip_interface`, ``amp=False`` (on CPU its default autocast
   runs bfloat16).
3. ``python -m factorcl_hf.evaluation`` runs ``zero_shot`` and ``retrieval`` on the same split,
   class names and templates.
4. Both rankings are re-scored under the other's tie rule: clip_benchmark's ``torch.topk``
   (among equal scores the lower index wins) against this package's expected value under random
   tie-breaking (``factorcl_hf.evaluation.retrieval``). The shapes set renders identical
   pictures for identical attributes, so exact ties are common in retrieval.

The record (``--out``, JSON) holds both sides, the side-by-side table and the commands.

    python -m benchmarks.clip_benchmark_compare --model outputs/demo/factorcl_ssl/model \\
        --out docs/results/clip_benchmark/demo_factorcl_ssl.json

Needs clip_benchmark (``pip install "factorcl-hf[clip-benchmark]"`` where torchvision works with
your torch; with this project's CPU torch wheel: ``pip install --no-deps clip-benchmark==1.6.2``
then ``pip install webdataset requests``). Its dataset builder imports torchvision, which is
stubbed for that import where it is absent (benchmarks/_torchvision_stub.py).
"""

from __future__ import annotations

import argparse
import io
import json
import platform
import shlex
import sys
import tarfile
import tempfile
from pathlib import Path

import torch

# CLIPModel first: transformers then settles that torchvision is absent, before any stub exists.
from transformers import AutoModel, AutoProcessor, CLIPModel  # noqa: F401

from benchmarks._torchvision_stub import import_with_torchvision_stubbed
from factorcl_hf.data.image_text import load_image_text_dataset
from factorcl_hf.data.shapes import write_shapes_imagefolder
from factorcl_hf.evaluation import __main__ as package_evaluation
from factorcl_hf.evaluation.embed import extract_embeddings
from factorcl_hf.evaluation.open_clip_interface import create_model_and_transforms
from factorcl_hf.evaluation.retrieval import recall_at_k, score_matrix
from factorcl_hf.progress import hide_library_progress_bars

INSTALL_HINT = ('pip install "factorcl-hf[clip-benchmark]" (with the CPU torch wheel: pip install --no-deps '
                'clip-benchmark==1.6.2 && pip install webdataset requests)')
# Prompts over the attributes a shapes caption says besides the shape (size, position).
DEFAULT_TEMPLATES = ("a small {c} at the top.", "a small {c} at the bottom.", "a large {c} at the top.",
                     "a large {c} at the bottom.")
KS = (1, 5, 10)
IMAGE_EXTENSIONS = ("png", "jpg", "jpeg", "webp")  # what clip_benchmark's reader decodes


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.clip_benchmark_compare", description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, help="saved FactorCL model directory (with its processor)")
    parser.add_argument("--out", required=True, help="the JSON record to write (e.g. docs/results/clip_benchmark/NAME.json)")
    parser.add_argument("--data", help="imagefolder with metadata.jsonl (default: the main job's shapes data, written to --work-dir)")
    parser.add_argument("--split", default="test")
    parser.add_argument("--num-samples", type=int, default=2000, help="shapes pairs when --data is not given (the main job's 2000)")
    parser.add_argument("--label-column", default="shape", help="zero-shot classes: a string column")
    parser.add_argument("--caption-column", default="caption")
    parser.add_argument("--templates", nargs="+", default=list(DEFAULT_TEMPLATES), help="prompts with '{c}' (clip_benchmark's)")
    parser.add_argument("--embedding", default="pooler", help="the embedding both sides score")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--work-dir", help="where the data and shards go (default: a temporary folder)")
    return parser


def import_clip_benchmark():
    """clip_benchmark's metric modules and ``build_dataset``; exits with the install command."""
    try:
        import webdataset  # noqa: F401
        from clip_benchmark.metrics import zeroshot_classification, zeroshot_retrieval

        builder = import_with_torchvision_stubbed("clip_benchmark.datasets.builder")
    except ModuleNotFoundError as error:
        raise SystemExit(f"clip_benchmark_compare needs {error.name!r}: {INSTALL_HINT}") from error
    return zeroshot_classification, zeroshot_retrieval, builder.build_dataset


# ------------------------------------------------------------------------------ data
def _image_bytes(value) -> tuple[bytes, str]:
    """The stored bytes of an undecoded ``datasets.Image`` value and their extension."""
    path = value.get("path") or ""
    suffix = Path(path).suffix.lower().lstrip(".")
    data = value.get("bytes") or Path(path).read_bytes()
    if suffix not in IMAGE_EXTENSIONS:
        from PIL import Image

        buffer = io.BytesIO()
        Image.open(io.BytesIO(data)).convert("RGB").save(buffer, format="PNG")
        data, suffix = buffer.getvalue(), "png"
    return data, suffix


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def write_wds(rows, out_dir: Path, split: str, members, metadata: dict[str, str]) -> Path:
    """One shard ``out_dir/split/0.tar`` with ``members(row) -> {extension: bytes}`` per sample,
    ``nshards.txt``, and the ``metadata`` text files beside it (clip_benchmark's layout)."""
    (out_dir / split).mkdir(parents=True, exist_ok=True)
    with tarfile.open(out_dir / split / "0.tar", "w") as tar:
        for index, row in enumerate(rows):
            for extension, data in members(row).items():
                _add(tar, f"{index:08d}.{extension}", data)
    (out_dir / split / "nshards.txt").write_text("1\n")
    for name, text in metadata.items():
        (out_dir / name).write_text(text)
    return out_dir


def write_clip_benchmark_datasets(split, out_dir: Path, class_names, templates, args) -> dict[str, Path]:
    """``{"zeroshot": dir, "retrieval": dir}``: the split in clip_benchmark's WebDataset layout."""
    import datasets

    rows = split.cast_column("image", datasets.Image(decode=False))

    def labelled(row):
        data, extension = _image_bytes(row["image"])
        return {extension: data, "cls": str(class_names.index(row[args.label_column])).encode()}

    def captioned(row):
        data, extension = _image_bytes(row["image"])
        return {extension: data, "txt": row[args.caption_column].replace("\n", " ").encode()}

    zeroshot = write_wds(rows, out_dir / "zeroshot", args.split, labelled, {
        "classnames.txt": "\n".join(class_names) + "\n", "zeroshot_classification_templates.txt": "\n".join(templates) + "\n"})
    retrieval = write_wds(rows, out_dir / "retrieval", args.split, captioned, {"dataset_type.txt": "retrieval\n"})
    return {"zeroshot": zeroshot, "retrieval": retrieval}


def evaluation_split(args, work_dir: Path):
    """``(imagefolder dir, the split)``: ``--data``, or the main job's shapes data written to ``work_dir``."""
    data_dir = Path(args.data) if args.data else write_shapes_imagefolder(
        work_dir / "shapes", num_samples=args.num_samples, seed=0, unique_share=0.75)
    split = load_image_text_dataset(data_dir, caption_column=args.caption_column, label_column=args.label_column,
                                    split=args.split)
    return data_dir, split


# ------------------------------------------------------------------------------ evaluations
def _finite(metrics: dict) -> dict:
    """JSON has no NaN: clip_benchmark reports acc5 as NaN below five classes."""
    return {name: (None if isinstance(value, float) and value != value else value) for name, value in metrics.items()}


def numpy_safe_accuracy(output, target, topk=(1,)):
    """clip_benchmark 1.6.2's ``zeroshot_classification.accuracy``, the same maths (``torch.topk``
    ranks), with ``.item()`` where it calls ``float()`` on a one-element array: numpy 2.4 refuses
    that (TypeError: only 0-dimensional arrays can be converted to Python scalars)."""
    pred = output.topk(max(topk), 1, True, True)[1].t()
    correct = pred.eq(target.view(1, -1).expand_as(pred))
    return [correct[:k].reshape(-1).float().sum().item() / len(target) for k in topk]


def run_clip_benchmark(args, shards: dict[str, Path], ks) -> dict[str, dict]:
    """clip_benchmark's zero-shot classification and retrieval, as its CLI runs them on ``wds/``
    data (its ``accuracy`` helper replaced by :func:`numpy_safe_accuracy`)."""
    zeroshot_classification, zeroshot_retrieval, build_dataset = import_clip_benchmark()
    model, preprocess, tokenizer = create_model_and_transforms(args.model, args.embedding)

    def read(path: Path, task: str):
        dataset = build_dataset(f"wds/{path.name}", root=str(path), transform=preprocess, split=args.split, task=task)
        return dataset, torch.utils.data.DataLoader(dataset.batched(args.batch_size), batch_size=None, shuffle=False)

    dataset, loader = read(shards["zeroshot"], "zeroshot_classification")
    original, zeroshot_classification.accuracy = zeroshot_classification.accuracy, numpy_safe_accuracy
    try:
        classification = zeroshot_classification.evaluate(model, loader, tokenizer, dataset.classes, dataset.templates,
                                                          device="cpu", amp=False)
    finally:
        zeroshot_classification.accuracy = original
    _, loader = read(shards["retrieval"], "zeroshot_retrieval")
    retrieval = zeroshot_retrieval.evaluate(model, loader, tokenizer, device="cpu", amp=False, recall_k_list=list(ks))
    return {"zeroshot_classification": _finite(classification), "zeroshot_retrieval": retrieval}


def package_arguments(args, data_dir: Path, class_names, templates) -> dict[str, list[str]]:
    """The ``python -m factorcl_hf.evaluation`` arguments of each task, on the same split and prompts."""
    common = ["--model", str(args.model), "--data", str(data_dir), "--split", args.split, "--embedding", args.embedding,
              "--caption-column", args.caption_column, "--batch-size", str(args.batch_size), "--no-progress"]
    return {
        "zero_shot": common + ["--task", "zero_shot", "--label-column", args.label_column, "--class-names", *class_names,
                               "--templates", *[template.replace("{c}", "{}") for template in templates]],
        "retrieval": common + ["--task", "retrieval"],
    }


def tie_rules(args, split, ks) -> dict[str, dict[str, float]]:
    """This package's retrieval scores under both tie rules: its own (expected value under random
    tie-breaking) and clip_benchmark's (``torch.topk``: the lower index wins), plus the share of
    queries whose correct candidate ties a wrong one."""
    from clip_benchmark.metrics.zeroshot_retrieval import recall_at_k as first_index_recall

    model, processor = AutoModel.from_pretrained(args.model).eval(), AutoProcessor.from_pretrained(args.model)
    kwargs = dict(embeddings=args.embedding, batch_size=args.batch_size)
    images = extract_embeddings(model, processor, split["image"], "image", **kwargs)[args.embedding]
    texts = extract_embeddings(model, processor, split[args.caption_column], "text", **kwargs)[args.embedding]
    critic = model.objective.alignment_critic if args.embedding == "pooler" else None
    scores = score_matrix(images, texts, critic)  # [images, texts], what the package ranks with
    positives = torch.eye(len(split), dtype=torch.bool)
    first_index = {}
    for k in ks:
        first_index[f"image_to_text_R@{k}"] = (first_index_recall(scores, positives, k) > 0).float().mean().item()
        first_index[f"text_to_image_R@{k}"] = (first_index_recall(scores.T, positives, k) > 0).float().mean().item()
    correct = scores.diagonal()
    tied = {"image_queries": ((scores == correct[:, None]) & ~positives).any(1).float().mean().item(),
            "text_queries": ((scores == correct[None, :]) & ~positives).any(0).float().mean().item()}
    return {"random_ties": recall_at_k(scores, ks=ks), "first_index_wins": first_index, "tied_share": tied}


# ------------------------------------------------------------------------------ the record
# (clip_benchmark's name, this package's name) of each figure both report.
RETRIEVAL_NAMES = {"image_retrieval_recall@{k}": "text_to_image_R@{k}", "text_retrieval_recall@{k}": "image_to_text_R@{k}"}


def side_by_side(theirs: dict, ours: dict, ties: dict, ks) -> list[dict]:
    rows = [{"metric": "zero-shot top-1", "clip_benchmark": theirs["zeroshot_classification"]["acc1"],
             "package": ours["zero_shot"]["top1"]}]
    for k in ks:
        for their_name, our_name in RETRIEVAL_NAMES.items():
            our_name = our_name.format(k=k)
            rows.append({"metric": our_name, "clip_benchmark": theirs["zeroshot_retrieval"][their_name.format(k=k)],
                         "package": ours["retrieval"][our_name],
                         "package_scores_first_index_wins": ties["first_index_wins"][our_name],
                         "package_scores_random_ties": ties["random_ties"][our_name]})
    return rows


def versions() -> dict[str, str]:
    from importlib.metadata import version

    return {"python": platform.python_version(), "torch": torch.__version__,
            **{name: version(name) for name in ("transformers", "clip-benchmark", "webdataset")}}


def run(argv: list[str] | None = None) -> dict:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not Path(args.model).is_dir():
        parser.error(f"--model {args.model!r} is not a saved model folder")
    if args.data and not Path(args.data).is_dir():
        parser.error(f"--data {args.data!r} is not an imagefolder directory")
    if not all("{c}" in template for template in args.templates):
        parser.error(f"--templates must each hold '{{c}}' (clip_benchmark's placeholder), got {args.templates}")
    import_clip_benchmark()  # the install command before any work
    hide_library_progress_bars()  # datasets' bars for a local folder are not this run's progress
    with tempfile.TemporaryDirectory(prefix="clip_benchmark_") as scratch:
        work_dir = Path(args.work_dir or scratch)
        data_dir, split = evaluation_split(args, work_dir)
        class_names = sorted(set(split[args.label_column]))
        ks = tuple(k for k in KS if k <= len(split))
        shards = write_clip_benchmark_datasets(split, work_dir / "wds", class_names, args.templates, args)
        theirs = run_clip_benchmark(args, shards, ks)
        commands = package_arguments(args, data_dir, class_names, args.templates)
        ours = {task: package_evaluation.run(arguments)["metrics"] for task, arguments in commands.items()}
        ties = tie_rules(args, split, ks)
    record = {
        "model": str(args.model), "data": str(args.data or f"shapes, {args.num_samples} pairs, seed 0"),
        "split": args.split, "num_samples": len(split), "class_names": class_names, "templates": args.templates,
        "command": "python -m benchmarks.clip_benchmark_compare " + shlex.join(argv if argv is not None else sys.argv[1:]),
        "package_commands": {task: "python -m factorcl_hf.evaluation " + shlex.join(arguments)
                             for task, arguments in commands.items()},
        "clip_benchmark": theirs, "package": ours, "tie_rules": ties,
        "side_by_side": side_by_side(theirs, ours, ties, ks), "versions": versions(),
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    print(format_table(record["side_by_side"]))
    print(f"\nwrote {out}")
    return record


def format_table(rows: list[dict]) -> str:
    columns = ["metric", "clip_benchmark", "package", "package_scores_first_index_wins"]
    cell = lambda value: f"{value:.4f}" if isinstance(value, float) else ("" if value is None else str(value))  # noqa: E731
    lines = [" | ".join(columns), " | ".join("---" for _ in columns)]
    lines += [" | ".join(cell(row.get(column)) for column in columns) for row in rows]
    return "\n".join(lines)


if __name__ == "__main__":
    run()
