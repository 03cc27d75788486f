"""Text-to-image search with a saved FactorCL model: index a folder of images, query by text.

Every image under ``--images`` is embedded once; each ``--query`` is scored against all of
them in the shared space (images that fail to decode are skipped and counted) (the model's alignment critic on the ``pooler`` embedding, exactly
what ``logits_per_image`` computes) and the top-k images are printed with their scores. When
the folder has a ``metadata.jsonl`` (an imagefolder), each hit's caption is shown beside it.

Run on the embedded shapes dataset with the demo model (``make demo`` saves it)::

    python examples/zero_shot_retrieval.py --model outputs/demo/factorcl_ssl/model \\
        --query "a large circle at the top" --query "a small cross at the bottom"

Without ``--images`` the shapes test split is written to ``--shapes-dir`` and indexed.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

# Runnable as a plain script from the repository root without installing the package.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif")


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, help="saved FactorCL model directory (with its processor)")
    parser.add_argument("--images", help="folder of images to index (searched recursively)")
    parser.add_argument("--shapes-dir", default="outputs/shapes_search",
                        help="where the embedded shapes dataset is written when --images is not given")
    parser.add_argument("--query", action="append", required=True, help="text query (repeat for several)")
    parser.add_argument("--top-k", type=int, default=5)
    parser.add_argument("--embedding", default="pooler", choices=("pooler", "shared", "backbone"),
                        help="space to search in (pooler: the model's own image-text scores; others: cosine)")
    parser.add_argument("--batch-size", type=int, default=64)
    return parser.parse_args(argv)


def find_images(folder: Path) -> list[Path]:
    """Image files under ``folder``, sorted so the index order is reproducible."""
    paths = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    if not paths:
        raise SystemExit(f"no images ({', '.join(IMAGE_SUFFIXES)}) under {folder}")
    return paths


def read_captions(folder: Path) -> dict[Path, str]:
    """Captions from every ``metadata.jsonl`` under ``folder`` (imagefolder layout), by image path."""
    captions = {}
    for metadata in folder.rglob("metadata.jsonl"):
        for line in metadata.read_text(encoding="utf-8").splitlines():
            row = json.loads(line)
            if "file_name" in row and "caption" in row:
                captions[(metadata.parent / row["file_name"]).resolve()] = row["caption"]
    return captions


def search(model, processor, image_embeds, queries: list[str], top_k: int, embedding: str):
    """``[(query, [(image index, score), ...])]``, best first."""
    from factorcl_hf.evaluation.embed import embed_texts
    from factorcl_hf.evaluation.retrieval import score_matrix

    text_embeds = embed_texts(model, processor, queries, embedding)
    critic = model.objective.alignment_critic if embedding == "pooler" else None
    scores = score_matrix(image_embeds, text_embeds, critic)  # [n_images, n_queries]
    k = min(top_k, scores.shape[0])
    results = []
    for q, query in enumerate(queries):
        top = scores[:, q].topk(k)
        results.append((query, list(zip(top.indices.tolist(), top.values.tolist()))))
    return results


def main(argv=None):
    args = parse_args(argv)
    if args.top_k < 1:
        raise SystemExit("--top-k must be >= 1")

    import torch
    from transformers import AutoModel, AutoProcessor

    import factorcl_hf  # noqa: F401  (registers the "factorcl" model type)
    from factorcl_hf.evaluation.embed import embed_image_files

    if args.images:
        folder = Path(args.images)
    else:
        from factorcl_hf.data.shapes import write_shapes_imagefolder

        folder = write_shapes_imagefolder(args.shapes_dir, num_samples=500) / "test"
    paths = find_images(folder)
    captions = read_captions(folder)

    device = "cuda" if torch.cuda.is_available() else "cpu"
    model = AutoModel.from_pretrained(args.model).to(device).eval()
    processor = AutoProcessor.from_pretrained(args.model)
    embeds, kept = embed_image_files(model, processor, paths, args.embedding, batch_size=args.batch_size, progress=True)
    image_embeds = embeds[args.embedding]
    skipped = len(paths) - len(kept)
    paths = [paths[i] for i in kept]
    print(f"indexed {len(paths)} images from {folder}" + (f" (skipped {skipped} that failed to decode)" if skipped else ""))

    results = search(model, processor, image_embeds, args.query, args.top_k, args.embedding)
    for query, hits in results:
        print(f"\nquery: {query!r}")
        for rank, (index, score) in enumerate(hits, start=1):
            path = paths[index]
            caption = captions.get(path.resolve())
            note = f"   ({caption})" if caption else ""
            print(f"  {rank:>2}. {score:9.4f}  {path.relative_to(folder)}{note}")
    return [(query, [(str(paths[i]), score) for i, score in hits]) for query, hits in results]


if __name__ == "__main__":
    main()
