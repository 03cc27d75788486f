"""``factorcl-embed``: embeddings of a saved model, written to disk with their ids, for
``factorcl-search`` (:mod:`factorcl_hf.apps.search`) and the retrieval app to search.

    factorcl-embed --model DIR --images photos/ --out photos.parquet
    factorcl-embed --model DIR --texts captions.txt --out captions.parquet --embedding pooler shared
    factorcl-embed --model DIR --data DATA [--split test] --out data.parquet   # images and captions

Parquet output: one row per embedded item, columns ``id`` (the image's path relative to
``--images``, the text's line number, or the dataset's ``--id-column`` / row index),
``modality`` (``image`` / ``text``), ``text`` (texts only) and one float32 list column per
``--embedding`` (names of :data:`~factorcl_hf.evaluation.embed.EMBEDDING_TYPES`); the file's
metadata records the model that wrote it (``factorcl`` key: its name, a fingerprint of its
weights and the embeddings' widths), which ``factorcl-search`` checks. With a ``.npy``
``--out``, ``STEM.MODALITY.EMBEDDING.npy`` arrays, ``STEM.MODALITY.ids.json`` and
``STEM.model.json`` (the same record). Files appear only once complete. Images that fail to
decode are skipped and counted; images are read only inside ``--images`` / the data's folder
(``--allow-outside-paths`` lifts that). ``--faiss`` also writes a FAISS inner-product index
of the normalised ``pooler`` embeddings (``pip install faiss-cpu``; checked before any work).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from transformers import AutoProcessor

from ..cli import console_main
from ..data.image_text import drop_undecodable_images, load_image_text_dataset
from ..evaluation.embed import EMBEDDING_TYPES, embed_image_files, extract_embeddings
from ..modeling_factorcl import FactorCLModel
from ..progress import hide_library_progress_bars

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif")
# The key of the model record in a Parquet index's metadata.
INDEX_METADATA_KEY = b"factorcl"


def build_embed_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="factorcl-embed", description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, help="saved FactorCL model directory (with its processor) or Hub id")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--images", help="folder of images (searched recursively)")
    source.add_argument("--texts", help="text file, one text per line")
    source.add_argument("--data", help="imagefolder dir, .csv/.jsonl/.parquet file or Hub dataset id (images and captions)")
    parser.add_argument("--out", required=True, help="output .parquet file, or .npy stem")
    parser.add_argument("--embedding", nargs="+", choices=EMBEDDING_TYPES, default=["pooler"])
    parser.add_argument("--split", default=None, help="--data: split (default: 'test' if present, else the only one)")
    parser.add_argument("--image-column", default="image")
    parser.add_argument("--caption-column", default="caption")
    parser.add_argument("--id-column", default=None, help="--data: column of ids (default: the row index)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--device", default=None, help="e.g. cuda, cpu (default: cuda if available)")
    parser.add_argument("--faiss", action="store_true", help="also write OUT.faiss (needs faiss-cpu)")
    parser.add_argument("--allow-outside-paths", action="store_true",
                        help="let symlinks in --images and the --data's image paths lead outside their folder")
    parser.add_argument("--no-progress", action="store_true", help="hide progress bars")
    parser.add_argument("--debug", action="store_true", help="show the traceback of errors")
    return parser


# --------------------------------------------------------------------------- inputs
def image_files(folder: Path, allow_outside_paths: bool = False) -> list[Path]:
    """The image files under ``folder`` (not following folder symlinks); a symlink out of it
    is refused unless ``allow_outside_paths``."""
    if not folder.is_dir():
        raise ValueError(f"`--images` {str(folder)!r} is not a folder")
    root = os.path.realpath(folder)
    paths = []
    for parent, _, files in os.walk(folder):
        for name in files:
            path = Path(parent) / name
            if path.suffix.lower() not in IMAGE_SUFFIXES:
                continue
            if not allow_outside_paths and not Path(os.path.realpath(path)).is_relative_to(root):
                raise ValueError(f"`--images`: {str(path)!r} is a symlink to {os.path.realpath(path)!r}, outside "
                                 f"{str(folder)!r}; pass --allow-outside-paths to read it")
            paths.append(path)
    if not paths:
        raise ValueError(f"`--images` {str(folder)!r} holds no images ({', '.join(IMAGE_SUFFIXES)})")
    return sorted(paths)


def _read_texts(path: Path) -> list[str]:
    if not path.is_file():
        raise ValueError(f"`--texts` {str(path)!r} is not a file")
    texts = path.read_text(encoding="utf-8").splitlines()
    if not any(text.strip() for text in texts):
        raise ValueError(f"`--texts` {str(path)!r} has no text")
    return texts


def _dataset_split(args):
    """The ``--data`` split, its image column checked for undecodable images."""
    data = load_image_text_dataset(args.data, args.image_column, args.caption_column,
                                   allow_outside_paths=args.allow_outside_paths)
    names = sorted(data)
    name = args.split or ("test" if "test" in data else names[0] if len(names) == 1 else None)
    if name not in data:
        raise ValueError(f"`--split` {name!r} not in `--data` {args.data!r}; splits: {names}")
    split = data[name]
    if args.id_column is not None and args.id_column not in split.column_names:
        raise ValueError(f"`--id-column` {args.id_column!r} not in the data; columns: {split.column_names}")
    ids = split[args.id_column] if args.id_column else range(len(split))
    split = split.add_column("_factorcl_id", [str(i) for i in ids])
    kept, skipped = drop_undecodable_images(split, args.image_column)
    return kept, skipped


# --------------------------------------------------------------------------- embedding
def embed_sources(args, model, processor) -> list[dict[str, Any]]:
    """``[{"modality", "ids", "texts" (or None), "embeddings": {name: [n, d]}}]`` of the inputs."""
    kwargs = dict(batch_size=args.batch_size, device=args.device, progress=not args.no_progress)
    parts = []
    if args.images:
        folder = Path(args.images)
        paths = image_files(folder, args.allow_outside_paths)
        embeddings, kept = embed_image_files(model, processor, paths, args.embedding, **kwargs)
        parts.append({"modality": "image", "ids": [paths[i].relative_to(folder).as_posix() for i in kept],
                      "texts": None, "embeddings": embeddings, "skipped": len(paths) - len(kept)})
    elif args.texts:
        texts = _read_texts(Path(args.texts))
        embeddings = extract_embeddings(model, processor, texts, "text", args.embedding, **kwargs)
        parts.append({"modality": "text", "ids": [str(i) for i in range(len(texts))], "texts": texts,
                      "embeddings": embeddings})
    else:
        split, skipped = _dataset_split(args)
        # Plain lists: a datasets Column is no JSON (the ids of a .npy --out).
        ids, captions = list(split["_factorcl_id"]), [str(c) for c in split[args.caption_column]]
        images = extract_embeddings(model, processor, split[args.image_column], "image", args.embedding, **kwargs)
        texts = extract_embeddings(model, processor, captions, "text", args.embedding, **kwargs)
        parts.append({"modality": "image", "ids": ids, "texts": None, "embeddings": images, "skipped": skipped})
        parts.append({"modality": "text", "ids": ids, "texts": captions, "embeddings": texts})
    return parts


def model_identity(name: str, model) -> dict[str, Any]:
    """What an index records of the model that wrote it: the name it was loaded by, a SHA-256
    of its weights (names, shapes, dtypes and bytes of every tensor) and its objective."""
    digest = hashlib.sha256()
    for key, tensor in sorted(model.state_dict().items()):
        values = tensor.detach().to("cpu").contiguous().reshape(-1)
        digest.update(f"{key}:{tuple(tensor.shape)}:{tensor.dtype}".encode())
        digest.update(values.view(torch.uint8).numpy().tobytes())
    objective = getattr(model.config, "objective", None)
    return {"model": str(name), "fingerprint": digest.hexdigest(), "objective": objective}


def _staged(path: Path) -> Path:
    """Where ``path`` is written before it is complete (renamed into place only then)."""
    return path.with_name(f".{path.name}.partial")


def write_embeddings(parts: list[dict[str, Any]], out: Path, names: list[str],
                     identity: dict | None = None) -> list[Path]:
    """Write ``parts`` as one Parquet table or as ``.npy`` arrays with JSON ids (and the model
    ``identity``); returns the files. Each file is written under a staging name and renamed
    once all are written: a failure leaves no partial output."""
    out.parent.mkdir(parents=True, exist_ok=True)
    identity = {**(identity or {}), "embeddings": {name: int(parts[0]["embeddings"][name].shape[1]) for name in names}}
    staged: dict[Path, Path] = {}

    def stage(path: Path) -> Path:
        staged[path] = _staged(path)
        return staged[path]

    try:
        if out.suffix == ".npy":
            stem = out.with_suffix("")
            for part in parts:
                for name in names:
                    with open(stage(Path(f"{stem}.{part['modality']}.{name}.npy")), "wb") as handle:
                        np.save(handle, part["embeddings"][name].numpy().astype(np.float32))
                stage(Path(f"{stem}.{part['modality']}.ids.json")).write_text(json.dumps(list(part["ids"])))
            stage(Path(f"{stem}.model.json")).write_text(json.dumps(identity))
        elif out.suffix == ".parquet":
            _write_parquet(parts, names, identity, stage(out))
        else:
            raise ValueError(f"`--out` must end in .parquet or .npy, got {str(out)!r}")
        for final, partial in staged.items():
            os.replace(partial, final)
    finally:
        for partial in staged.values():
            partial.unlink(missing_ok=True)
    return list(staged)


def _write_parquet(parts: list[dict[str, Any]], names: list[str], identity: dict, path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    columns: dict[str, list] = {"id": [], "modality": [], "text": [], **{name: [] for name in names}}
    for part in parts:
        count = len(part["ids"])
        columns["id"] += [str(i) for i in part["ids"]]
        columns["modality"] += [part["modality"]] * count
        columns["text"] += part["texts"] if part["texts"] is not None else [None] * count
        for name in names:
            columns[name] += list(part["embeddings"][name].numpy().astype(np.float32))
    table = pa.table({key: pa.array(values, type=pa.list_(pa.float32())) if key in names else pa.array(values, pa.string())
                      for key, values in columns.items()})
    table = table.replace_schema_metadata({INDEX_METADATA_KEY: json.dumps(identity)})
    pq.write_table(table, path)


def _faiss():
    try:
        import faiss
    except ImportError as error:
        raise ValueError("`--faiss` needs the faiss package: pip install faiss-cpu (or factorcl-hf[faiss])") from error
    return faiss


def write_faiss_index(parts: list[dict[str, Any]], out: Path) -> Path:
    """A FAISS inner-product index of the L2-normalised ``pooler`` embeddings (cosine search),
    rows in the order of the Parquet table."""
    faiss = _faiss()
    vectors = F.normalize(torch.cat([part["embeddings"]["pooler"] for part in parts]), dim=-1).numpy()
    index = faiss.IndexFlatIP(vectors.shape[1])
    index.add(vectors)
    path = out.with_suffix(".faiss")
    staged = _staged(path)
    try:
        faiss.write_index(index, str(staged))
        os.replace(staged, path)
    finally:
        staged.unlink(missing_ok=True)
    return path


def load_model(name: str, device: str | None):
    """The saved FactorCL model ``name`` (folder or Hub id), its processor and the device.
    ``FactorCLModel.from_pretrained``, not ``AutoModel``: any other model type is refused with
    the folder's checks (checksums, config sizes, missing tensors) instead of loading as that type."""
    hide_library_progress_bars(keep_downloads=True)
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    return FactorCLModel.from_pretrained(name).to(device).eval(), AutoProcessor.from_pretrained(name), device


def _check_out(out: Path) -> None:
    """``--out`` can take the files, checked before any work: not a folder, in a folder that
    exists or can be made, writable."""
    if out.suffix not in (".parquet", ".npy"):
        raise ValueError(f"`--out` must end in .parquet or .npy, got {str(out)!r}")
    if out.is_dir():
        raise ValueError(f"`--out` {str(out)!r} is a folder; give a file such as {str(out / 'embeddings.parquet')!r}")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise ValueError(f"`--out` {str(out)!r}: its folder cannot be created ({error})") from error
    if not os.access(out.parent, os.W_OK | os.X_OK):
        raise ValueError(f"`--out` {str(out)!r}: its folder is not writable")


def run_embed(argv: list[str] | None = None) -> list[Path]:
    """``factorcl-embed``: parse, check, embed, write; returns the files written. Everything
    checkable (options, ``--out``, faiss) is checked before the model loads."""
    parser = build_embed_parser()
    args = parser.parse_args(argv)
    if args.batch_size < 1:
        parser.error(f"--batch-size must be >= 1, got {args.batch_size}")
    if args.faiss and "pooler" not in args.embedding:
        parser.error("--faiss indexes the pooler embedding: include it in --embedding")
    out = Path(args.out)
    try:
        _check_out(out)
        if args.faiss:
            _faiss()
    except ValueError as error:
        parser.exit(2, f"{parser.prog}: error: {error}\n")
    model, processor, args.device = load_model(args.model, args.device)
    try:
        parts = embed_sources(args, model, processor)
        written = write_embeddings(parts, out, args.embedding, model_identity(args.model, model))
        if args.faiss:
            written.append(write_faiss_index(parts, out))
    except ValueError as error:
        parser.exit(2, f"{parser.prog}: error: {error}\n")
    rows = sum(len(part["ids"]) for part in parts)
    skipped = sum(part.get("skipped", 0) for part in parts)
    skipped_note = f"; skipped {skipped} image(s) that failed to decode" if skipped else ""
    print(f"wrote {rows} embeddings ({', '.join(args.embedding)}) to {', '.join(map(str, written))}{skipped_note}")
    return written


def main(argv: list[str] | None = None) -> int:
    """Console entry point (``factorcl-embed``): exit status 0 on success, 2 with one line for
    a bad option, model or input (``--debug`` shows the traceback)."""
    return console_main("factorcl-embed", run_embed, argv)


if __name__ == "__main__":
    sys.exit(main())
