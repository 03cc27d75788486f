"""``factorcl-embed`` and ``factorcl-search``: embeddings of a saved model, written to disk
with their ids, and a search over them. A retrieval app needs nothing else.

    factorcl-embed --model DIR --images photos/ --out photos.parquet
    factorcl-embed --model DIR --texts captions.txt --out captions.parquet --embedding pooler shared
    factorcl-embed --model DIR --data DATA [--split test] --out data.parquet   # images and captions
    factorcl-search --index photos.parquet --model DIR --query "a red circle" --top-k 5

Parquet output: one row per embedded item, columns ``id`` (the image's path relative to
``--images``, the text's line number, or the dataset's ``--id-column`` / row index),
``modality`` (``image`` / ``text``), ``text`` (texts only) and one float32 list column per
``--embedding`` (names of :data:`~factorcl_hf.evaluation.embed.EMBEDDING_TYPES`). With a
``.npy`` ``--out``, ``STEM.MODALITY.EMBEDDING.npy`` arrays and ``STEM.MODALITY.ids.json``.
Images that fail to decode are skipped and counted. ``--faiss`` also writes a FAISS
inner-product index of the normalised ``pooler`` embeddings (``pip install faiss-cpu``).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from transformers import AutoModel, AutoProcessor

from ..data.image_text import drop_undecodable_images, load_image_text_dataset
from ..progress import hide_library_progress_bars
from .embed import EMBEDDING_TYPES, embed_image_files, extract_embeddings, load_image
from .retrieval import score_matrix

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif")


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
    parser.add_argument("--no-progress", action="store_true", help="hide progress bars")
    return parser


# --------------------------------------------------------------------------- inputs
def _image_files(folder: Path) -> list[Path]:
    if not folder.is_dir():
        raise ValueError(f"`--images` {str(folder)!r} is not a folder")
    paths = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    if not paths:
        raise ValueError(f"`--images` {str(folder)!r} holds no images ({', '.join(IMAGE_SUFFIXES)})")
    return paths


def _read_texts(path: Path) -> list[str]:
    if not path.is_file():
        raise ValueError(f"`--texts` {str(path)!r} is not a file")
    texts = path.read_text(encoding="utf-8").splitlines()
    if not any(text.strip() for text in texts):
        raise ValueError(f"`--texts` {str(path)!r} has no text")
    return texts


def _dataset_split(args):
    """The ``--data`` split, its image column checked for undecodable images."""
    data = load_image_text_dataset(args.data, args.image_column, args.caption_column)
    names = sorted(data)
    name = args.split or ("test" if "test" in data else names[0] if len(names) == 1 else None)
    if name not in data:
        raise ValueError(f"`--split` {name!r} not in `--data` {args.data!r}; splits: {names}")
    split = data[name]
    if args.id_column is not None and args.id_column not in split.column_names:
        raise ValueError(f"`--id-column` {args.id_column!r} not in the data; columns: {split.column_names}")
    ids = split[args.id_column] if args.id_column else list(range(len(split)))
    split = split.add_column("_factorcl_id", [str(i) for i in ids])
    kept, _ = drop_undecodable_images(split, args.image_column)
    return kept


# --------------------------------------------------------------------------- embedding
def embed_sources(args, model, processor) -> list[dict[str, Any]]:
    """``[{"modality", "ids", "texts" (or None), "embeddings": {name: [n, d]}}]`` of the inputs."""
    kwargs = dict(batch_size=args.batch_size, device=args.device, progress=not args.no_progress)
    parts = []
    if args.images:
        folder = Path(args.images)
        paths = _image_files(folder)
        embeddings, kept = embed_image_files(model, processor, paths, args.embedding, **kwargs)
        parts.append({"modality": "image", "ids": [paths[i].relative_to(folder).as_posix() for i in kept],
                      "texts": None, "embeddings": embeddings})
    elif args.texts:
        texts = _read_texts(Path(args.texts))
        embeddings = extract_embeddings(model, processor, texts, "text", args.embedding, **kwargs)
        parts.append({"modality": "text", "ids": [str(i) for i in range(len(texts))], "texts": texts,
                      "embeddings": embeddings})
    else:
        split = _dataset_split(args)
        ids, captions = split["_factorcl_id"], [str(c) for c in split[args.caption_column]]
        images = extract_embeddings(model, processor, split[args.image_column], "image", args.embedding, **kwargs)
        texts = extract_embeddings(model, processor, captions, "text", args.embedding, **kwargs)
        parts.append({"modality": "image", "ids": ids, "texts": None, "embeddings": images})
        parts.append({"modality": "text", "ids": ids, "texts": captions, "embeddings": texts})
    return parts


def write_embeddings(parts: list[dict[str, Any]], out: Path, names: list[str]) -> list[Path]:
    """Write ``parts`` as one Parquet table or as ``.npy`` arrays with JSON ids; returns the files."""
    out.parent.mkdir(parents=True, exist_ok=True)
    if out.suffix == ".npy":
        written = []
        for part in parts:
            stem = out.with_suffix("")
            for name in names:
                path = Path(f"{stem}.{part['modality']}.{name}.npy")
                np.save(path, part["embeddings"][name].numpy().astype(np.float32))
                written.append(path)
            ids_path = Path(f"{stem}.{part['modality']}.ids.json")
            ids_path.write_text(json.dumps(part["ids"]))
            written.append(ids_path)
        return written
    if out.suffix != ".parquet":
        raise ValueError(f"`--out` must end in .parquet or .npy, got {str(out)!r}")
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
    pq.write_table(table, out)
    return [out]


def write_faiss_index(parts: list[dict[str, Any]], out: Path) -> Path:
    """A FAISS inner-product index of the L2-normalised ``pooler`` embeddings (cosine search),
    rows in the order of the Parquet table."""
    try:
        import faiss
    except ImportError as error:
        raise ValueError("`--faiss` needs the faiss package: pip install faiss-cpu (or factorcl-hf[faiss])") from error

    vectors = F.normalize(torch.cat([part["embeddings"]["pooler"] for part in parts]), dim=-1).numpy()
    index = faiss.IndexFlatIP(vectors.shape[1])
    index.add(vectors)
    path = out.with_suffix(".faiss")
    faiss.write_index(index, str(path))
    return path


def _load_model(name: str, device: str | None):
    hide_library_progress_bars(keep_downloads=True)
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    return AutoModel.from_pretrained(name).to(device).eval(), AutoProcessor.from_pretrained(name), device


def run_embed(argv: list[str] | None = None) -> list[Path]:
    """``factorcl-embed``: parse, embed, write; returns the files written."""
    parser = build_embed_parser()
    args = parser.parse_args(argv)
    if args.batch_size < 1:
        parser.error(f"--batch-size must be >= 1, got {args.batch_size}")
    if args.faiss and "pooler" not in args.embedding:
        parser.error("--faiss indexes the pooler embedding: include it in --embedding")
    out = Path(args.out)
    if out.suffix not in (".parquet", ".npy"):
        parser.error(f"--out must end in .parquet or .npy, got {args.out!r}")
    model, processor, args.device = _load_model(args.model, args.device)
    try:
        parts = embed_sources(args, model, processor)
        written = write_embeddings(parts, out, args.embedding)
        if args.faiss:
            written.append(write_faiss_index(parts, out))
    except ValueError as error:
        parser.exit(2, f"{parser.prog}: error: {error}\n")
    rows = sum(len(part["ids"]) for part in parts)
    print(f"wrote {rows} embeddings ({', '.join(args.embedding)}) to {', '.join(map(str, written))}")
    return written


def main(argv: list[str] | None = None) -> int:
    """Console entry point (``factorcl-embed``): exit status 0 on success."""
    run_embed(argv)
    return 0


# --------------------------------------------------------------------------- search
def build_search_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="factorcl-search", description="Query `factorcl-embed` output by text or image.")
    parser.add_argument("--index", required=True, help="a .parquet file written by factorcl-embed (with `pooler`)")
    parser.add_argument("--model", required=True, help="the model that wrote it (scores with its alignment critic)")
    query = parser.add_mutually_exclusive_group(required=True)
    query.add_argument("--query", help="text query")
    query.add_argument("--query-image", help="image file query")
    parser.add_argument("--top-k", type=int, default=5)
    parser.add_argument("--device", default=None)
    return parser


def _stored_rows(path: Path, modality: str):
    """``(ids, their modality, [n, d] pooler embeddings)`` of the stored rows of ``modality``,
    or of the other modality when the table holds only that."""
    import pyarrow.parquet as pq

    if not path.is_file():
        raise ValueError(f"`--index` {str(path)!r} does not exist")
    table = pq.read_table(path).to_pydict()
    if "pooler" not in table:
        raise ValueError(f"`--index` {str(path)!r} has no `pooler` column: run factorcl-embed with --embedding pooler")
    chosen = [i for i, m in enumerate(table["modality"]) if m == modality] or list(range(len(table["id"])))
    vectors = torch.from_numpy(np.asarray([table["pooler"][i] for i in chosen], dtype=np.float32))
    return [table["id"][i] for i in chosen], [table["modality"][i] for i in chosen][0], vectors


def search_scores(query_embeds: torch.Tensor, query_modality: str, stored: torch.Tensor, stored_modality: str,
                  critic: torch.nn.Module | None = None) -> torch.Tensor:
    """``[n_stored]`` scores of one query (``[1, d]``): image-text pairs by ``critic`` (the
    model's alignment critic, for ``pooler`` embeddings), same-modality pairs and ``critic=None``
    by cosine. factorcl-search and the retrieval app (factorcl_hf/app.py) rank with it."""
    if stored_modality == query_modality or critic is None:
        return score_matrix(stored, query_embeds)[:, 0]
    if query_modality == "text":
        return score_matrix(stored, query_embeds, critic)[:, 0]
    return score_matrix(query_embeds, stored, critic)[0]


def run_search(argv: list[str] | None = None) -> list[tuple[str, float]]:
    """``factorcl-search``: the ``--top-k`` stored items for the query, best first, printed
    and returned as ``[(id, score)]``. Image-text pairs are scored with the model's alignment
    critic (what ``logits_per_image`` computes), same-modality pairs by cosine."""
    parser = build_search_parser()
    args = parser.parse_args(argv)
    if args.top_k < 1:
        parser.error(f"--top-k must be >= 1, got {args.top_k}")
    modality = "text" if args.query is not None else "image"
    try:
        ids, stored_modality, stored = _stored_rows(Path(args.index), "image" if modality == "text" else "text")
        query = args.query if modality == "text" else load_image(args.query_image)
    except ValueError as error:
        parser.exit(2, f"{parser.prog}: error: {error}\n")
    model, processor, device = _load_model(args.model, args.device)
    query_embeds = extract_embeddings(model, processor, [query], modality, "pooler", device=device)["pooler"]
    scores = search_scores(query_embeds, modality, stored, stored_modality, model.objective.alignment_critic)
    top = scores.topk(min(args.top_k, len(ids)))
    hits = [(ids[i], score) for i, score in zip(top.indices.tolist(), top.values.tolist())]
    for rank, (item, score) in enumerate(hits, start=1):
        print(f"{rank:>3}. {score:9.4f}  {item}")
    return hits


def search_main(argv: list[str] | None = None) -> int:
    """Console entry point (``factorcl-search``): exit status 0 on success."""
    run_search(argv)
    return 0

