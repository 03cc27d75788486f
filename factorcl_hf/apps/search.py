"""``factorcl-search``: query what ``factorcl-embed`` (:mod:`factorcl_hf.apps.embed`) wrote, by
text or by image, with the model that wrote it.

    factorcl-search --index photos.parquet --model DIR --query "a red circle" --top-k 5

Image-text pairs are scored with the model's alignment critic (what ``logits_per_image``
computes), same-modality pairs by cosine (:func:`search_scores`, which the retrieval app
``factorcl_hf/app.py`` ranks with too). An index written by another model is refused.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

import numpy as np
import torch

from ..cli import console_main
from ..evaluation.embed import extract_embeddings, load_image
from ..evaluation.retrieval import score_matrix
from .embed import INDEX_METADATA_KEY, load_model, model_identity

logger = logging.getLogger(__name__)


def build_search_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="factorcl-search", description="Query `factorcl-embed` output by text or image.")
    parser.add_argument("--index", required=True, help="a .parquet file written by factorcl-embed (with `pooler`)")
    parser.add_argument("--model", required=True, help="the model that wrote it (scores with its alignment critic); "
                        "another model is refused")
    query = parser.add_mutually_exclusive_group(required=True)
    query.add_argument("--query", help="text query")
    query.add_argument("--query-image", help="image file query")
    parser.add_argument("--top-k", type=int, default=5)
    parser.add_argument("--device", default=None)
    parser.add_argument("--debug", action="store_true", help="show the traceback of errors")
    return parser


def _stored_rows(path: Path, modality: str):
    """``(ids, modalities, [n, d] pooler embeddings, model record)`` of the stored rows of
    ``modality``, or of the other modality when the table holds only that. Rows whose vector
    is not finite are left out (counted in a warning): they would score NaN, which sorts first."""
    import pyarrow.parquet as pq

    if not path.is_file():
        raise ValueError(f"`--index` {str(path)!r} does not exist")
    try:
        table = pq.read_table(path)
    except Exception as error:  # pyarrow raises several types for a file that is no Parquet
        raise ValueError(f"`--index` {str(path)!r} is not a Parquet file written by factorcl-embed "
                         f"({error})") from error
    record = json.loads((table.schema.metadata or {}).get(INDEX_METADATA_KEY, b"null"))
    table = table.to_pydict()
    if "pooler" not in table:
        raise ValueError(f"`--index` {str(path)!r} has no `pooler` column: run factorcl-embed with --embedding pooler")
    if not table["id"]:
        raise ValueError(f"`--index` {str(path)!r} holds no rows: nothing to search")
    chosen = [i for i, m in enumerate(table["modality"]) if m == modality] or list(range(len(table["id"])))
    vectors = torch.from_numpy(np.asarray([table["pooler"][i] for i in chosen], dtype=np.float32))
    finite = torch.isfinite(vectors).all(dim=1)
    if not bool(finite.all()):
        logger.warning("Left out %d of %d rows of %s whose vector holds NaN or infinite values",
                       int((~finite).sum()), len(chosen), path)
        chosen, vectors = [i for i, ok in zip(chosen, finite.tolist()) if ok], vectors[finite]
        if not chosen:
            raise ValueError(f"`--index` {str(path)!r}: every vector holds NaN or infinite values")
    return [table["id"][i] for i in chosen], [table["modality"][i] for i in chosen], vectors, record


def _check_same_model(record: dict | None, identity: dict, index: Path) -> None:
    """The index was written by the model searching it: the same weights (fingerprint)."""
    if record is None:
        logger.warning("%s records no model (written by an earlier factorcl-embed): it cannot be checked to be the "
                       "model's own; re-embed to check", index)
        return
    if record.get("fingerprint") != identity["fingerprint"]:
        raise ValueError(f"`--index` {str(index)!r} was written by another model ({record.get('model')!r}, weights "
                         f"{str(record.get('fingerprint'))[:12]}), not by `--model` {identity['model']!r} (weights "
                         f"{identity['fingerprint'][:12]}): its vectors mean nothing to this model. Re-embed with it")


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
    with their modality and returned as ``[(id, score)]``. Image-text pairs are scored with
    the model's alignment critic (what ``logits_per_image`` computes), same-modality pairs by
    cosine. An index written by another model is refused."""
    parser = build_search_parser()
    args = parser.parse_args(argv)
    if args.top_k < 1:
        parser.error(f"--top-k must be >= 1, got {args.top_k}")
    if args.query is not None and not args.query.strip():
        parser.error("--query is empty: give the text to search for")
    modality = "text" if args.query is not None else "image"
    try:
        ids, modalities, stored, record = _stored_rows(Path(args.index), "image" if modality == "text" else "text")
        query = args.query if modality == "text" else load_image(args.query_image)
    except ValueError as error:
        parser.exit(2, f"{parser.prog}: error: {error}\n")
    model, processor, device = load_model(args.model, args.device)
    try:
        _check_same_model(record, model_identity(args.model, model), Path(args.index))
    except ValueError as error:
        parser.exit(2, f"{parser.prog}: error: {error}\n")
    query_embeds = extract_embeddings(model, processor, [query], modality, "pooler", device=device)["pooler"]
    scores = search_scores(query_embeds, modality, stored, modalities[0], model.objective.alignment_critic)
    top = scores.topk(min(args.top_k, len(ids)))
    hits = [(ids[i], score) for i, score in zip(top.indices.tolist(), top.values.tolist())]
    for rank, (i, score) in enumerate(zip(top.indices.tolist(), top.values.tolist()), start=1):
        print(f"{rank:>3}. {score:9.4f}  {modalities[i]:<5}  {ids[i]}")
    return hits


def main(argv: list[str] | None = None) -> int:
    """Console entry point (``factorcl-search``): exit status 0 on success, 2 with one line
    for a bad option, index, model or query (``--debug`` shows the traceback)."""
    return console_main("factorcl-search", run_search, argv)


if __name__ == "__main__":
    sys.exit(main())
