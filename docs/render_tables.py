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
sys.path.insert(0, str(ROOT))  # training.seed_statistics: the intervals the main job prints
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


# Issue 23's linear-probe gates: (modality, embedding, attributes, kind, threshold); "at most"
# thresholds are over chance (the train split's commonest class), "at least" ones absolute.
SHARED_ATTRIBUTES = ("shape", "size", "position")
GATES = (
    ("image", "unique", SHARED_ATTRIBUTES, "at most chance +", 0.10),
    ("image", "unique", ("colour",), "at least", 0.95),
    ("image", "unique", ("background",), "at least", 0.90),
    ("text", "unique", SHARED_ATTRIBUTES, "at most chance +", 0.10),
    ("text", "unique", ("drawer",), "at least", 0.95),
    ("image", "shared", SHARED_ATTRIBUTES, "at least", 0.95),
    ("text", "shared", SHARED_ATTRIBUTES, "at least", 0.95),
    ("image", "shared", ("colour", "background"), "at most chance +", 0.10),
    ("text", "shared", ("drawer",), "at most chance +", 0.10),
)
# FactorCL-SUP keeps only the label's unique bits in Z_U, not the whole colour or drawer.
SUPERVISED_GATES = tuple(gate for gate in GATES if gate[3] != "at least" or gate[1] == "shared") + (
    ("image", "unique", ("colour_bit",), "at least", 0.95), ("text", "unique", ("drawer_bit",), "at least", 0.95))


def gates(path: str, objective: str) -> str:
    """Each factorization gate of ``objective`` on the linear probe: the mean over seeds, the
    worst seed, and whether the mean meets it."""
    entry = record(path)[objective]
    per_seed = [entry["seeds"][s]["factorization"] for s in sorted(entry["seeds"], key=int)]
    chance = entry["factorization"]["chance"]
    supervised = "colour_bit" in chance
    rows = []
    for modality, embedding, attributes, kind, threshold in (SUPERVISED_GATES if supervised else GATES):
        for attribute in attributes:
            values = [report["linear"][modality][embedding][attribute] for report in per_seed]
            mean = sum(values) / len(values)
            limit = chance[attribute] + threshold if kind.startswith("at most") else threshold
            worst = max(values) if kind.startswith("at most") else min(values)
            met = mean <= limit if kind.startswith("at most") else mean >= limit
            rows.append([f"{modality} {embedding}", attribute, f"{kind.removesuffix(' chance +')} {limit:.2f}",
                         f"{mean:.2f}", f"{worst:.2f}", "yes" if met else "**no**"])
    return _table(["embedding", "attribute", "gate", f"mean of {len(per_seed)} seeds", "worst seed", "met"], rows)


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


def paired(path_a: str, objective_a: str, path_b: str, objective_b: str, key: str) -> str:
    """One metric's paired difference between two records' runs on the same seeds (points,
    95% interval; inline)."""
    from training.seed_statistics import paired_difference

    a, b = (record(p)[o]["seeds"] for p, o in ((path_a, objective_a), (path_b, objective_b)))
    return _interval(paired_difference({int(s): r[key] for s, r in a.items()}, {int(s): r[key] for s, r in b.items()}))


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


def train_step(path: str) -> str:
    """benchmarks/train_step.py: each variant's step time over the CLIP loss's, Cross+Self's
    and the previous FactorCL-SSL default's, per model shape."""
    data = record(path)
    rows = [[f"{r['config']} B={r['batch_size']}", f"`{r['variant']}`", str(r["backbone_inputs"]), f"{r['step_ms']:.0f}",
             f"{r['vs_simclr']:.2f}×", f"{r['vs_cross_self']:.2f}×", f"{r['vs_previous_default']:.2f}×"]
            for r in data["rows"]]
    return _table(["model", "variant", "backbone inputs", f"step ms ({data['meta']['threads']} thread)", "over `simclr`",
                   "over `cross_self`", "over the previous default"], rows)


def synthetic_differences(path: str, method: str, *baselines: str) -> str:
    """``method`` minus each baseline on the sweep (points, paired over seeds, 95% interval),
    per unique share, on both readouts."""
    from training.seed_statistics import paired_difference

    rows_by = {}
    for row in record(path):
        rows_by.setdefault((row["method"], row["unique_share"]), {})[row["seed"]] = row
    shares = sorted({u for m, u in rows_by if m == method})
    rows = []
    for baseline in baselines:
        for readout, label in (("probe_acc", "[Z_S; Z_U]"), ("backbone_probe_acc", "backbone")):
            cells = []
            for u in shares:
                ours, theirs = rows_by[(method, u)], rows_by[(baseline, u)]
                cells.append(_interval(paired_difference({s: r[readout] for s, r in ours.items()},
                                                         {s: r[readout] for s, r in theirs.items()})))
            rows.append([f"`{method} - {baseline}`", label, *cells])
    return _table(["difference (points)", "readout", *(f"u={u:g}" for u in shares)], rows)


def clip_benchmark(path: str) -> str:
    """benchmarks/clip_benchmark_compare.py: clip_benchmark's figures beside this package's, and
    this package's scores re-ranked with clip_benchmark's tie rule (lower index wins)."""
    rows = [[row["metric"], f"{row['clip_benchmark']:.3f}", f"{row['package']:.3f}",
             f"{row['package_scores_first_index_wins']:.3f}" if "package_scores_first_index_wins" in row else ""]
            for row in record(path)["side_by_side"]]
    return _table(["metric", "clip_benchmark", "`factorcl_hf.evaluation`", "this package's scores, lower index wins ties"], rows)


def mi_estimates(path: str) -> str:
    """examples/mi_estimation.py's estimates against the true MI (nats)."""
    rows = [[f"{r['true_mi']:g}", f"{r['infonce']:.2f}", f"{r['nce_club']:.2f}", f"{r['club_of_optimal_critic']:.2f}"]
            for r in record(path)]
    return _table(["true MI (nats)", "InfoNCE", "NCE-CLUB", "CLUB of the optimal critic"], rows)


def conditional_mi(path: str) -> str:
    """experiments/conditional_mi.py's estimates of I(A; B | C) on Gaussians (nats)."""
    rows = [[r["condition"], f"{r['true']:.2f}", *(f"{r[k]:.2f}" for k in (
        "optimal_conditional_negatives", "optimal_all_negatives", "fitted_conditional_negatives", "fitted_concat"))]
        for r in record(path)]
    return _table(["C", "I(A;B\\|C)", "optimal critic, conditional negatives", "optimal critic, negatives from all rows",
                   "fitted critic, conditional negatives", "fitted critic, concatenation (paper)"], rows)


def _synthetic_cells(path: str, method: str, readout: str = "probe_acc") -> dict[float, str]:
    """Per unique share, mean ± std (%) over seeds of one method of a sweep's results; a
    deterministic row (the same value for every seed) without the spread."""
    values: dict[float, list[float]] = {}
    for row in record(path):
        if row["method"] == method:
            values.setdefault(row["unique_share"], []).append(100 * row[readout])
    cells = {}
    for share, per_seed in values.items():
        mean = sum(per_seed) / len(per_seed)
        if len(set(per_seed)) == 1:
            cells[share] = f"{mean:.1f}"
            continue
        std = (sum((v - mean) ** 2 for v in per_seed) / (len(per_seed) - 1)) ** 0.5
        cells[share] = f"{mean:.1f} ± {std:.1f}"
    return cells


def synthetic_runs(*triples: str) -> str:
    """Linear-probe accuracy (%) per unique share, one row per (record, method, label) triple,
    from several sweeps' ``synthetic_results.json``."""
    if len(triples) % 3:
        raise ValueError("synthetic_runs takes (path, method, label) triples")
    specs = [triples[i:i + 3] for i in range(0, len(triples), 3)]
    cells = [(label, _synthetic_cells(path, method)) for path, method, label in specs]
    shares = sorted({share for _, per in cells for share in per})
    rows = [[label, *(per.get(u, "–") for u in shares)] for label, per in cells]
    return _table(["method", *(f"u={u:g}" for u in shares)], rows)


def _club_check(path: str, method: str) -> dict[tuple[str, float], tuple[float, float]]:
    """Per (term, unique share of the trained model), the mean over seeds of the own and the
    refitted CLUB critics' readings (nats)."""
    groups: dict[tuple[str, float], list[tuple[float, float]]] = {}
    for row in record(path):
        if row["method"] != method or row["unique_share"] != row["trained_at_unique_share"]:
            continue
        for term, check in row["club_critic_check"].items():
            groups.setdefault((term, row["unique_share"]), []).append((check["trained"], check["refit"]))
    return {key: (sum(v[0] for v in vs) / len(vs), sum(v[1] for v in vs) / len(vs)) for key, vs in groups.items()}


def club_check(*triples: str) -> str:
    """The CLUB check (own critic / refitted critic, nats, mean over seeds) per (label, SUP
    record, SSL record) triple: FactorCL-SUP per unique share, FactorCL-SSL once (one model per
    seed serves every unique share)."""
    if len(triples) % 3:
        raise ValueError("club_check takes (label, sup path, ssl path) triples")
    rows, sup_shares = [], None
    for i in range(0, len(triples), 3):
        label, sup_path, ssl_path = triples[i:i + 3]
        sup, ssl = _club_check(sup_path, "factorcl_sup"), _club_check(ssl_path, "factorcl_ssl")
        sup_shares = sorted({u for _, u in sup})
        for term in ("unique", "shared_cond"):
            cells = [f"{sup[(term, u)][0]:.2f} / {sup[(term, u)][1]:.2f}" for u in sup_shares]
            (ssl_cell,) = [f"{own:.2f} / {refit:.2f}" for (t, _), (own, refit) in ssl.items() if t == term]
            rows.append([f"{label}, `{term}`", *cells, ssl_cell])
    return _table(["run", *(f"SUP u={u:g}" for u in sup_shares), "SSL"], rows)


def issue11_targets(conditional: str, sup: str, ssl: str, ssl_silverman: str, baselines: str, ssl_no_term6: str) -> str:
    """Issue 11's acceptance targets that the records hold, each with its measurement: the
    Gaussian estimates, the probe accuracies of FactorCL (``tracked``) against SimCLR and
    SupCon, and the CLUB check of the ``tracked`` runs."""
    def acc(path: str, method: str, share: float) -> float:
        per_seed = [100 * r["probe_acc"] for r in record(path) if r["method"] == method and r["unique_share"] == share]
        return round(sum(per_seed) / len(per_seed), 1)

    def met(ok: bool) -> str:
        return "met" if ok else "not met"

    gaussians = record(conditional)
    fitted = max(abs(r["fitted_conditional_negatives"] - r["true"]) for r in gaussians)
    optimal = max(abs(r["optimal_conditional_negatives"] - r["true"]) for r in gaussians)
    rows = [["conditional estimators within 0.2 nats of the Gaussian closed form, I ∈ {0.5, 1, 2}, d ≤ 8",
             f"max error {fitted:.2f} (fitted), {optimal:.2f} (optimal critic)", met(max(fitted, optimal) <= 0.2)]]
    simclr0, ssl0 = acc(baselines, "simclr", 0.0), acc(ssl, "factorcl_ssl", 0.0)
    rows.append(["FactorCL-SSL ≥ SimCLR − 1 at u = 0", f"{ssl0:.1f} vs {simclr0:.1f}", met(ssl0 >= simclr0 - 1)])
    simclr1, ssl1 = acc(baselines, "simclr", 1.0), acc(ssl, "factorcl_ssl", 1.0)
    silverman1, no_term6_1 = acc(ssl_silverman, "factorcl_ssl", 1.0), acc(ssl_no_term6, "factorcl_ssl", 1.0)
    rows.append(["FactorCL-SSL ≥ SimCLR + 15 at u = 1",
                 f"{ssl1:.1f} vs {simclr1:.1f}: {ssl1 - simclr1:+.1f} (Silverman's bandwidth, conditional terms "
                 f"vacuous: {silverman1 - simclr1:+.1f}); without term 6 (`tracked_no_cond_nce`): {no_term6_1:.1f}, "
                 f"{no_term6_1 - simclr1:+.1f}",
                 f"{met(ssl1 >= simclr1 + 15)} with `tracked`; {met(no_term6_1 >= simclr1 + 15)} without term 6"])
    supcon1, sup1 = acc(baselines, "supcon", 1.0), acc(sup, "factorcl_sup", 1.0)
    rows.append(["FactorCL-SUP ≥ SupCon + 2 at u = 1", f"{sup1:.1f} vs {supcon1:.1f}: {sup1 - supcon1:+.1f}",
                 met(sup1 >= supcon1 + 2)])
    pairs = [(acc(sup, "factorcl_sup", u), acc(baselines, "supcon", u)) for u in (0.0, 0.5)]
    rows.append(["FactorCL-SUP ≥ SupCon − 1 at u = 0, 0.5", ", ".join(f"{a:.1f} vs {b:.1f}" for a, b in pairs),
                 met(all(a >= b - 1 for a, b in pairs))])
    checks = [(f"SUP `{term}`, u = {u:g}", own, refit)
              for (term, u), (own, refit) in _club_check(sup, "factorcl_sup").items()]
    checks += [(f"SSL `{term}`", own, refit) for (term, _), (own, refit) in _club_check(ssl, "factorcl_ssl").items()]
    where, own, refit = max(checks, key=lambda c: abs(c[2] - c[1]))
    rows.append(["every CLUB critic within 0.3 nats of its refit", f"largest gap {abs(refit - own):.2f} ({where})",
                 met(abs(refit - own) <= 0.3)])
    unique = max(refit for where, _, refit in checks if "`unique`" in where)
    rows.append(["refit ≤ 0.3 nats in `unique`", f"≤ {unique:.2f}", met(unique <= 0.3)])
    return _table(["target", "measured", ""], rows)


def term_table(path: str, key: str) -> str:
    """A table stored as header + rows by the script that measured it (key within the record)."""
    table = record(path)[key]
    return _table(table["header"], table["rows"])


RENDERERS = {function.__name__: function for function in (
    main_job, comparisons, factorization, gates, seeds, paired, metric, difference, recipes, open_clip_speed, synthetic,
    synthetic_probing, synthetic_differences, clip_benchmark, mi_estimates, train_step, conditional_mi, synthetic_runs, club_check, issue11_targets,
    term_table,
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
        try:
            content = RENDERERS[name](*arguments)
        except FileNotFoundError as error:  # reported like a drift, so that the other blocks still render
            changed.append(f"{where}: {kind} {spec}: missing record {Path(error.filename).relative_to(RECORDS)}")
            return match.group(0)
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
