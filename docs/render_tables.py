"""Render the figure tables of README.md and docs/*.md from the records in docs/results/.

A rendered table sits between two markers that name its renderer and arguments::

    <!-- table: main_job main_job.json -->
    | ... generated Markdown ... |
    <!-- /table -->

and a figure inside prose between ``<!-- value: NAME ARGS -->`` and ``<!-- /value -->``.
Nothing between the markers is written by hand: ``python docs/render_tables.py`` rewrites
every block from the records; ``python docs/render_tables.py --check`` lists the blocks whose
text differs from what the records give and exits 1 (tests/test_docs_tables.py runs it, so
the text and the records cannot drift apart). Records paths are relative to docs/results/.
"""

from __future__ import annotations

import argparse
import json
import re
import shlex
import sys
from functools import lru_cache
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RECORDS = ROOT / "docs" / "results"
DOCUMENTS = (ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")))
BLOCK = re.compile(r"(<!-- (table|value): (.+?) -->)(.*?)(<!-- /\2 -->)", re.DOTALL)

METRICS = {
    "factorized_accuracy": "probe acc",
    "match_mean_R@1": "shared-content R@1",
    "mean_R@1": "exact-pair R@1",
    "mean_R@5": "R@5",
    "backbone_accuracy": "backbone probe",
}


@lru_cache(maxsize=None)
def record(path: str) -> dict:
    return json.loads((RECORDS / path).read_text())


def _mean_std(entry: dict, key: str, scale: float = 1.0, digits: int = 3) -> str:
    if f"{key}_std" in entry and len(entry.get("seeds", {})) > 1:
        return f"{scale * entry[key]:.{digits}f} ± {scale * entry[key + '_std']:.{digits}f}"
    return f"{scale * entry[key]:.{digits}f}"


def _interval(difference: dict) -> str:
    """A paired difference in points with its 95% interval."""
    if difference["low"] is None:
        return f"{100 * difference['mean']:+.1f}"
    return f"{100 * difference['mean']:+.1f} [{100 * difference['low']:+.1f}, {100 * difference['high']:+.1f}]"


def _table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in rows])


# ------------------------------------------------------------------------------ renderers
def main_job(path: str, *objectives: str) -> str:
    """Mean ± std over seeds of the main job's metrics, one row per objective."""
    data = record(path)
    objectives = objectives or tuple(k for k in data if isinstance(data[k], dict) and "seeds" in data[k])
    rows = [[f"`{name}`", *(_mean_std(data[name], key) for key in METRICS if key in data[name])] for name in objectives]
    return _table(["objective", *(label for key, label in METRICS.items() if key in data[objectives[0]])], rows)


def comparisons(path: str) -> str:
    """Each paired comparison of a main-job record, in points with the 95% interval."""
    data = record(path)
    rows = []
    for pair, metrics in data["comparisons"].items():
        seeds = next(iter(metrics.values()))["seeds"]
        rows.append([f"`{pair}`", *(_interval(metrics[key]) for key in METRICS if key in metrics), str(len(seeds))])
    first = next(iter(data["comparisons"].values()))
    return _table(["difference (points)", *(label for key, label in METRICS.items() if key in first), "seeds"], rows)


def factorization(path: str, objective: str, probe: str = "linear") -> str:
    """Held-out accuracy of each attribute from each embedding (mean ± std over seeds)."""
    report = record(path)[objective]["factorization"]
    attributes = list(report["chance"])
    spread = report.get(f"{probe}_std")
    rows = [["chance", *(f"{report['chance'][a]:.2f}" for a in attributes)]]
    for modality, per in report[probe].items():
        for embedding, cells in per.items():
            values = [f"{cells[a]:.2f}" + (f" ± {spread[modality][embedding][a]:.2f}" if spread else "") for a in attributes]
            rows.append([f"{modality} {embedding}", *values])
    return _table(["embedding", *attributes], rows)


def seeds(path: str, objective: str, key: str) -> str:
    """One metric of one objective, seed by seed (inline)."""
    per_seed = record(path)[objective]["seeds"]
    return ", ".join(f"{per_seed[s][key]:.3f}" for s in sorted(per_seed, key=int))


def metric(path: str, objective: str, key: str, digits: str = "3") -> str:
    """One metric of one objective, mean ± std (inline)."""
    return _mean_std(record(path)[objective], key, digits=int(digits))


def difference(path: str, pair: str, key: str) -> str:
    """One paired difference, in points with its interval (inline)."""
    return _interval(record(path)["comparisons"][pair][key])


def recipes(path: str) -> str:
    """The CLIP loss's seed-to-seed spread under each candidate recipe."""
    data = record(path)
    rows = []
    for name, entry in data["recipes"].items():
        per_seed = entry["seeds"]
        values = {key: [per_seed[s][key] for s in per_seed] for key in ("match_mean_R@1", "factorized_accuracy")}
        cells = []
        for key in ("match_mean_R@1", "factorized_accuracy"):
            mean = sum(values[key]) / len(values[key])
            std = (sum((v - mean) ** 2 for v in values[key]) / (len(values[key]) - 1)) ** 0.5
            cells.append(f"{mean:.3f} ± {std:.3f}")
        rows.append([entry["flags"], *cells, " / ".join(f"{v:.3f}" for v in values["match_mean_R@1"])])
    return _table(["recipe (flags over the old recipe)", "shared-content R@1", "probe acc", "R@1 per seed"], rows)


def open_clip_speed(*paths: str) -> str:
    """Step time and peak memory of every objective over open_clip's, per record and thread count."""
    rows = []
    for path in paths:
        for run in record(path)["runs"]:
            training = run["training"]
            names = [n for n in training if n != "open_clip"]
            step = ", ".join(f"`{n}` {training[n]['time_vs_open_clip']:.2f}×" for n in names)
            memory = ", ".join(f"`{n}` {training[n]['peak_vs_open_clip']:.2f}×" for n in names)
            inference = run["inference"]
            rows.append([f"{run['shape']} B={run['batch_size']}, {run['threads']} thread(s)", step, memory,
                         f"{inference['image']['throughput_ratio']:.2f}× / {inference['text']['throughput_ratio']:.2f}×"])
    return _table(["model, batch, threads", "training step time over open_clip's", "peak memory over open_clip's",
                   "images/s / texts/s over open_clip's"], rows)


def _grouped_mean_std(rows: list[dict], keys: tuple[str, ...], value: str, scale: float = 1.0) -> dict:
    groups: dict[tuple, list[float]] = {}
    for row in rows:
        groups.setdefault(tuple(row[k] for k in keys), []).append(scale * row[value])
    out = {}
    for key, values in groups.items():
        mean = sum(values) / len(values)
        std = (sum((v - mean) ** 2 for v in values) / (len(values) - 1)) ** 0.5 if len(values) > 1 else 0.0
        out[key] = (mean, std)
    return out


def synthetic(path: str, readout: str = "probe_acc") -> str:
    """Probe accuracy (%) per method and unique share, mean ± std over seeds, from the sweep's
    own ``synthetic_results.json`` (``readout``: ``probe_acc`` on [Z_S1; Z_U1; Z_S2; Z_U2] or
    ``backbone_probe_acc`` on [e1; e2])."""
    rows = record(path)
    stats = _grouped_mean_std(rows, ("method", "unique_share"), readout, 100)
    methods = list(dict.fromkeys(r["method"] for r in rows))
    shares = sorted({r["unique_share"] for r in rows})
    table = [[f"`{m}`", *(f"{stats[(m, u)][0]:.1f} ± {stats[(m, u)][1]:.1f}" if (m, u) in stats else "–" for u in shares)]
             for m in methods]
    return _table(["method", *(f"u={u:g}" for u in shares)], table)


def synthetic_probing(path: str, *methods: str) -> str:
    """Ridge R² of each latent block from each representation, mean over seeds and unique
    shares, from the sweep's own ``synthetic_probing.json``."""
    rows = [r for r in record(path) if not methods or r["method"] in methods]
    stats = _grouped_mean_std(rows, ("method", "representation", "latent"), "r2")
    latents = list(dict.fromkeys(r["latent"] for r in rows))
    keys = list(dict.fromkeys((r["method"], r["representation"]) for r in rows))
    table = [[f"`{m}`", rep, *(f"{stats[(m, rep, lat)][0]:.2f}" for lat in latents)] for m, rep in keys]
    return _table(["method", "representation", *(f"R² {lat}" for lat in latents)], table)


def term_table(path: str, key: str) -> str:
    """A table stored as header + rows by the script that measured it (key within the record)."""
    table = record(path)[key]
    return _table(table["header"], table["rows"])


RENDERERS = {function.__name__: function for function in (
    main_job, comparisons, factorization, seeds, metric, difference, recipes, open_clip_speed, synthetic,
    synthetic_probing, term_table,
)}


# ---------------------------------------------------------------------------------- driver
def render(text: str, where: str = "") -> tuple[str, list[str]]:
    """``text`` with every block re-rendered, and the blocks whose content changed."""
    changed = []

    def replace(match):
        opening, kind, spec, body, closing = match.groups()
        name, *arguments = shlex.split(spec)
        if name not in RENDERERS:
            raise ValueError(f"{where}: unknown renderer {name!r} in {opening}")
        content = RENDERERS[name](*arguments)
        new_body = f"\n{content}\n" if kind == "table" else content
        if body != new_body:
            changed.append(f"{where}: {kind} {spec}")
        return f"{opening}{new_body}{closing}"

    return BLOCK.sub(replace, text), changed


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="only report blocks that differ from the records")
    args = parser.parse_args(argv)
    drifted = []
    for document in DOCUMENTS:
        text = document.read_text()
        rendered, changed = render(text, str(document.relative_to(ROOT)))
        drifted += changed
        if changed and not args.check:
            document.write_text(rendered)
    for line in drifted:
        print(("differs from its record: " if args.check else "rendered: ") + line)
    return 1 if args.check and drifted else 0


if __name__ == "__main__":
    sys.exit(main())
