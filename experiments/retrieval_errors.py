"""Which shared attribute does a model's top-1 retrieval get wrong? (docs/main_job.md: why the
CLIP loss landed on a shared-content R@1 of 0.800 under the old recipe.)

For every query of the held-out split, the top-1 item of the other modality (the model's own
alignment scores, what ``factorcl-search`` ranks with) is compared with the query on each of
``--columns``; a mismatch is counted per column and value pair. Run from the repository root::

    python -m experiments.retrieval_errors --models DIR/seed_0/simclr/model ... --data DIR/data --out FILE
"""

from __future__ import annotations

import argparse
import collections
import json
from pathlib import Path


def retrieval_errors(model, processor, split, columns) -> dict:
    """``{direction: {"errors": n, "queries": n, "by_column": {column: n}, "most_common": [...]}}``."""
    from factorcl_hf.evaluation.embed import extract_embeddings
    from factorcl_hf.evaluation.retrieval import score_matrix

    image = extract_embeddings(model, processor, split["image"], "image", "pooler")["pooler"]
    text = extract_embeddings(model, processor, split["caption"], "text", "pooler")["pooler"]
    scores = score_matrix(image, text, critic=model.objective.alignment_critic)
    values = {c: list(split[c]) for c in columns}
    report = {}
    for direction, matrix in (("image_to_text", scores), ("text_to_image", scores.T)):
        wrong, by_column = collections.Counter(), collections.Counter()
        for query, hit in enumerate(matrix.argmax(1).tolist()):
            for c in columns:
                if values[c][query] != values[c][hit]:
                    wrong[f"{c}: {values[c][query]} -> {values[c][hit]}"] += 1
                    by_column[c] += 1
        misses = sum(any(values[c][q] != values[c][h] for c in columns) for q, h in enumerate(matrix.argmax(1).tolist()))
        report[direction] = {"errors": misses, "queries": len(matrix), "by_column": dict(by_column),
                             "most_common": wrong.most_common(4)}
    return report


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", required=True)
    parser.add_argument("--data", required=True, help="the shapes imagefolder (its test split is queried)")
    parser.add_argument("--columns", nargs="+", default=["shape", "size", "position"])
    parser.add_argument("--out")
    args = parser.parse_args(argv)
    import datasets
    from transformers import AutoProcessor

    from factorcl_hf import FactorCLModel

    split = datasets.load_dataset("imagefolder", data_dir=args.data)["test"]
    record = {}
    for path in args.models:
        model, processor = FactorCLModel.from_pretrained(path).eval(), AutoProcessor.from_pretrained(path)
        name = "/".join(Path(path).parts[-3:-1])  # seed_S/objective: not the machine's path
        record[name] = retrieval_errors(model, processor, split, args.columns)
        print(name, json.dumps(record[name]))
    rows = [[name, direction, f"{r['errors']} / {r['queries']}",
             ", ".join(f"{c} {r['by_column'].get(c, 0)}" for c in args.columns)]
            for name, per in record.items() for direction, r in per.items()]
    record = {"models": record, "summary": {"header": ["model", "direction", "wrong top-1 hits", "wrong in"], "rows": rows}}
    if args.out:
        Path(args.out).write_text(json.dumps(record, indent=2))
    return record


if __name__ == "__main__":
    main()
