"""Which FactorCL terms buy the main job's probe accuracy, and what they cost in retrieval.

Trains the main job's recipe (``training/configs/demo.yaml``: tiny CLIP from scratch on the
embedded shapes data, FactorCL-SSL) once per variant and seed, each variant a
``--term_weights`` setting, plus the CLIP-loss baseline, and reports for each the linear
probe of the label that needs unique information (``factorized_accuracy``) against
shared-content retrieval (``match_mean_R@1``), the two headline figures of ``make demo``.

Variants: every term dropped in turn, both CLUB terms dropped, and a weight of 0.5 or 2 on
the two CLUB terms or on the three unique lower bounds (the label terms and the conditional
InfoNCE).

    python -m experiments.term_ablation --out runs/term_ablation [--seeds 0 1] [--variants ...]

writes ``DIR/term_ablation.json`` (a record per variant and seed), ``DIR/term_ablation.png``
(probe against shared-content R@1, one point per variant, the mean over seeds) and prints a
Markdown table. A run whose ``results.json`` exists is read, not trained again, so an
interrupted study resumes where it stopped. Results: ``docs/main_job.md``.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

from factorcl_hf.configuration_factorcl import LAYOUT_TERMS
from factorcl_hf.data.shapes import write_shapes_imagefolder
from factorcl_hf.progress import hide_library_progress_bars
from training.arguments import load_config_file
from training.arguments import parse_args as parse_train_args
from training.demo import DEFAULT_CONFIG
from training.train import train

# The paper's six terms, as the per-term layout computes them (the study predates `closed_form`).
SIX_TERMS = LAYOUT_TERMS["per_term"]
CLUB_TERMS = ("shared_cond_club", "unique_club")
UNIQUE_LOWER_BOUNDS = ("unique_label_nce_1", "unique_label_nce_2", "unique_cond_nce")
BASELINE = "simclr (CLIP loss)"
# Variant name -> term weights (terms not named weigh 1); the baseline trains `simclr`.
VARIANTS: dict[str, dict[str, float]] = {
    "all terms": {},
    **{f"without {term}": {term: 0.0} for term in SIX_TERMS},
    "without both CLUB terms": dict.fromkeys(CLUB_TERMS, 0.0),
    "CLUB terms x0.5": dict.fromkeys(CLUB_TERMS, 0.5),
    "CLUB terms x2": dict.fromkeys(CLUB_TERMS, 2.0),
    "unique lower bounds x0.5": dict.fromkeys(UNIQUE_LOWER_BOUNDS, 0.5),
    "unique lower bounds x2": dict.fromkeys(UNIQUE_LOWER_BOUNDS, 2.0),
    BASELINE: {},
}
METRICS = ("factorized_accuracy", "match_mean_R@1", "mean_R@1")


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, help="output directory")
    parser.add_argument("--config", default=str(DEFAULT_CONFIG), help="the training recipe")
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=VARIANTS, metavar="VARIANT",
                        help=f"default: all of {list(VARIANTS)}")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--max_train_steps", type=int, help="override the recipe's budget (tests use a few steps)")
    parser.add_argument("--num_train_samples", type=int, help="override the recipe's data size")
    return parser.parse_args(argv)


def slug(variant: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in variant).strip("_")


def run_variant(args, data_dir: Path, variant: str, seed: int) -> dict:
    """One training run's metrics; read from its ``results.json`` when it already ran."""
    run_dir = Path(args.out) / slug(variant) / f"seed_{seed}"
    if (run_dir / "results.json").is_file():
        results = json.loads((run_dir / "results.json").read_text())
    else:
        flags = ["--config", args.config, "--train_data", str(data_dir), "--output_dir", str(run_dir),
                 "--seed", str(seed), "--disable_tqdm", "--club_critic_check_steps", "0"]
        flags += ["--objective", "simclr"] if variant == BASELINE else ["--objective", "factorcl_ssl", "--estimators", "tracked"]
        if variant != BASELINE:  # every weight, so that no preset's weights apply
            weights = {**dict.fromkeys(SIX_TERMS, 1.0), **VARIANTS[variant]}
            flags += ["--term_weights", ",".join(f"{k}={v:g}" for k, v in weights.items())]
        if args.max_train_steps:
            flags += ["--max_train_steps", str(args.max_train_steps)]
        results = train(parse_train_args(flags)).results
    return {"variant": variant, "seed": seed, "term_weights": VARIANTS[variant], **{k: results[k] for k in METRICS}}


def summarize(records: list[dict], variants: list[str]) -> list[dict]:
    """Mean and standard deviation over seeds of each metric, per variant."""
    rows = []
    for variant in variants:
        mine = [r for r in records if r["variant"] == variant]
        row = {"variant": variant, "seeds": len(mine)}
        for key in METRICS:
            values = [r[key] for r in mine]
            row[key], row[f"{key}_std"] = statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0
        rows.append(row)
    return rows


def print_table(rows: list[dict]):
    print("\n| variant | probe acc | shared-content R@1 | exact-pair R@1 |")
    print("|---|---|---|---|")
    for row in rows:
        cells = [f"{row[k]:.3f}" + (f" ± {row[k + '_std']:.3f}" if row["seeds"] > 1 else "") for k in METRICS]
        print(f"| {row['variant']} | " + " | ".join(cells) + " |")


def plot(rows: list[dict], path: Path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 5.5))
    for row in rows:
        colour = "tab:gray" if row["variant"] == BASELINE else "tab:red" if row["variant"] == "all terms" else "tab:blue"
        ax.errorbar(row["match_mean_R@1"], row["factorized_accuracy"], xerr=row["match_mean_R@1_std"],
                    yerr=row["factorized_accuracy_std"], fmt="o", color=colour, capsize=2)
        ax.annotate(row["variant"], (row["match_mean_R@1"], row["factorized_accuracy"]), fontsize=7,
                    xytext=(4, 3), textcoords="offset points")
    ax.set_xlabel("shared-content R@1 (retrieval)")
    ax.set_ylabel("linear probe of the label that needs unique information")
    ax.set_title(f"FactorCL-SSL term ablations on the main job ({rows[0]['seeds']} seed(s) each)")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=130)
    plt.close(fig)


def main(argv=None) -> list[dict]:
    args = parse_args(argv)
    hide_library_progress_bars()
    out = Path(args.out)
    recipe = load_config_file(args.config)
    data_dir = write_shapes_imagefolder(out / "data", num_samples=args.num_train_samples or recipe.get("num_train_samples", 2000),
                                        seed=recipe.get("seed", 0), unique_share=recipe["unique_share"])
    records = []
    for seed in args.seeds:  # every variant at one seed before the next seed: a stopped study is balanced
        for variant in args.variants:
            records.append(run_variant(args, data_dir, variant, seed))
            print(f"{variant} (seed {seed}): probe {records[-1]['factorized_accuracy']:.3f}, "
                  f"shared-content R@1 {records[-1]['match_mean_R@1']:.3f}", flush=True)
    rows = summarize(records, args.variants)
    (out / "term_ablation.json").write_text(json.dumps({"records": records, "summary": rows}, indent=2))
    print_table(rows)
    plot(rows, out / "term_ablation.png")
    print(f"Wrote {out / 'term_ablation.json'} and {out / 'term_ablation.png'}")
    return rows


if __name__ == "__main__":
    main()
