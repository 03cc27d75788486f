"""Synthetic controlled benchmark: linear-probe accuracy as the label's information moves from
shared to unique (the FactorCL paper's §4.1 sweep).

For every seed, unique share ``u`` and method, the synthetic data set of
``factorcl_hf.research.synthetic`` (``u = 0``: the label depends on shared latents only; ``u = 1``:
on unique latents only) is generated, the method's MLP encoders and objective are trained on
the train split, and a logistic-regression probe on the frozen factorized embedding
``[Z_S1; Z_U1; Z_S2; Z_U2]`` (and on the backbone readout ``[e1; e2]``) is scored on the test
split. Ridge regressions from Z_S and Z_U to the known latents show what each representation
holds (the paper's Table 1 question).

Label-free methods (FactorCL-SSL, OurCL-SSL, SimCLR, Cross+Self) see the same inputs at every
``u`` for a given seed (only the labels change), so they are trained once per seed and probed
at every ``u``; each record's ``trained_at_unique_share`` says which training it used.

Run::

    python -m experiments.synthetic_sweep --out runs/synthetic --quick

writes ``DIR/synthetic_results.json`` (one object per method, unique share and seed:
``probe_acc``, ``backbone_probe_acc``, training and probing time, the last epoch's loss terms;
plus two reference lines: ``method: "raw_inputs"``, the same probe on the raw inputs
``[x1; x2]``, and ``method: "bayes_ceiling"``, the accuracy of the best possible classifier,
which no method can beat),
``DIR/synthetic_probing.json`` (one object per representation and latent block: ``r2``),
``DIR/synthetic.png`` (accuracy vs unique share, mean ± std over seeds) and prints Markdown
tables. ``--critic-check`` adds, for every FactorCL/OurCL model, the InfoNCE its own CLUB
critics still find in their heads against a critic refitted on the frozen features (is the
min-max game tracking? see ``docs/synthetic_benchmark.md``); ``--club-critic-lr`` and
``--club-critic-steps`` change that game (paper: the encoders' lr, one step).
``--quick`` runs 4,000 samples, batch 64, 5 epochs (FactorCL-SUP/-SSL, SimCLR, SupCon; seeds
0 1 2; shares 0, 0.5, 1); without it the reference settings apply (30,000 samples, batch 256,
10 epochs, all seven methods). Results and run times: ``docs/synthetic_benchmark.md``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import statistics
import warnings

import torch

from experiments.synthetic_benchmark import (
    METHODS,
    BenchmarkSettings,
    club_critic_check,
    fit_method,
    run_method,
)
from factorcl_hf.configuration_factorcl import ESTIMATOR_PRESETS, FACTORCL_TERMS, objective_spec
from factorcl_hf.evaluation.probe import linear_probe_accuracy
from factorcl_hf.objectives import CLUB_GRADIENTS, CONDITIONINGS
from factorcl_hf.research.synthetic import SyntheticConfig, bayes_accuracy, make_synthetic
from training.arguments import parse_term_weights

REFERENCE = dict(num_samples=30000, epochs=10, batch_size=256)
# `--preset`: BenchmarkSettings fields. "paper" is the paper's recipe (concat alignment critic,
# the paper's estimators and CLUB game); "default" the package's defaults.
PRESETS = {"default": {}, "paper": dict(estimators="paper", alignment_critic_type="concat")}
QUICK = dict(num_samples=4000, epochs=5, batch_size=64)
QUICK_METHODS = ("factorcl_sup", "factorcl_ssl", "simclr", "supcon")
REPRESENTATIONS = ("Z_S1", "Z_U1", "Z_S2", "Z_U2")
LATENTS = ("shared", "unique1", "unique2")
# Reference records: the linear probe on the raw inputs, no representation learning, and the
# accuracy of the best possible classifier (the generator's Bayes ceiling).
INPUT_PROBE = "raw_inputs"
BAYES = "bayes_ceiling"
REFERENCE_LINES = (INPUT_PROBE, BAYES)


def run_sweep(
    methods,
    unique_shares,
    seeds,
    num_samples: int,
    settings: BenchmarkSettings,
    show_progress: bool = True,
    critic_check_steps: int = 0,
) -> list[dict]:
    """One record per (seed, method, unique share) from :func:`run_method`, plus one
    :func:`input_probe_record` and one :func:`bayes_record` per (seed, unique share);
    label-free methods are trained once per seed and reused across shares. With
    ``critic_check_steps > 0`` every record of a method with CLUB terms gets
    ``club_critic_check`` (:func:`~experiments.synthetic_benchmark.club_critic_check`, its
    critics refitted for that many steps)."""
    progress = _progress(len(seeds) * len(methods) * len(unique_shares), show_progress, "runs")
    records = []
    for seed in seeds:
        data = {share: make_synthetic(num_samples=num_samples, unique_share=share, seed=seed) for share in unique_shares}
        records += [input_probe_record(splits, seed, settings.probe_max_iter) for splits in data.values()]
        records += [bayes_record(splits, seed) for splits in data.values()]
        for method in methods:
            fitted = None
            for share in unique_shares:
                splits = data[share]
                if fitted is None or not fitted.reusable_for(splits):
                    steps = settings.epochs * (len(splits.train) // settings.batch_size)
                    step_bar = _progress(steps, show_progress, f"{method} u={share:g} seed={seed}", leave=False)
                    fitted = fit_method(splits, method, settings, seed, _step_updater(step_bar))
                    if step_bar is not None:
                        step_bar.close()
                record = run_method(splits, method, settings, seed, fitted=fitted)
                record.update(num_samples=num_samples, settings=settings.to_dict())
                if critic_check_steps and fitted.model.objective.club_estimators:
                    record["club_critic_check"] = club_critic_check(
                        fitted.model, splits.train, splits.test, settings, critic_check_steps, seed=seed
                    )
                records.append(record)
                if progress is not None:
                    progress.update(1)
                    progress.set_postfix(method=method, u=share, acc=f"{record['probe_acc']:.3f}")
    if progress is not None:
        progress.close()
    return records


def input_probe_record(splits, seed: int, probe_max_iter: int = 200) -> dict:
    """The same linear probe on the raw inputs ``[x1; x2]``: what a linear read-out of
    everything both modalities carry achieves, the reference line of the table and plot."""
    def inputs(split):
        return torch.cat([split.x1, split.x2], dim=1)

    accuracy = linear_probe_accuracy(
        inputs(splits.train), splits.train.labels, inputs(splits.test), splits.test.labels, max_iter=probe_max_iter
    )
    return {
        "method": INPUT_PROBE,
        "unique_share": float(splits.config.unique_share),
        "seed": seed,
        "probe_acc": accuracy,
        "backbone_probe_acc": accuracy,
        "train_seconds": 0.0,
        "trained_at_unique_share": float(splits.config.unique_share),
        "probing": {},
    }


def bayes_record(splits, seed: int) -> dict:
    """The accuracy of the best possible classifier of this data set's label from ``(x1, x2)``
    (:func:`~factorcl_hf.research.synthetic.bayes_accuracy`): no method can beat it, up to the
    test split's sampling noise."""
    config = splits.config
    accuracy = bayes_accuracy(config.unique_share, config.label_noise, config.num_labels)
    return {
        "method": BAYES,
        "unique_share": float(config.unique_share),
        "seed": seed,
        "probe_acc": accuracy,
        "backbone_probe_acc": accuracy,
        "train_seconds": 0.0,
        "trained_at_unique_share": float(config.unique_share),
        "probing": {},
    }


def _step_updater(bar):
    """An ``on_step`` callback advancing ``bar`` and showing the loss (``None`` without a bar)."""
    if bar is None:
        return None

    def on_step(terms: dict[str, float]):
        bar.update(1)
        bar.set_postfix(loss=f"{terms['loss']:.3f}")

    return on_step


def _progress(total: int, enabled: bool, desc: str, leave: bool = True):
    if not enabled:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, leave=leave)


def probing_rows(records: list[dict]) -> list[dict]:
    """Flatten each record's ``probing`` into ``{method, unique_share, seed, representation,
    latent, r2}`` rows."""
    return [
        {
            "method": r["method"],
            "unique_share": r["unique_share"],
            "seed": r["seed"],
            "representation": representation,
            "latent": latent,
            "r2": r2,
        }
        for r in records
        for representation, by_latent in r["probing"].items()
        for latent, r2 in by_latent.items()
    ]


def mean_std(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for a single value)."""
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def _grouped(rows: list[dict], keys: tuple[str, ...], value: str) -> dict[tuple, list[float]]:
    groups: dict[tuple, list[float]] = {}
    for row in rows:
        groups.setdefault(tuple(row[k] for k in keys), []).append(row[value])
    return groups


def _methods_in(records: list[dict]) -> list[str]:
    """Methods in order of appearance, the reference lines (raw inputs, Bayes ceiling) last."""
    methods = list(dict.fromkeys(r["method"] for r in records))
    return [m for m in methods if m not in REFERENCE_LINES] + [m for m in REFERENCE_LINES if m in methods]


def accuracy_table(records: list[dict], key: str = "probe_acc") -> str:
    """Markdown table: methods × unique shares, ``mean ± std`` over seeds of ``key`` in %."""
    groups = _grouped(records, ("method", "unique_share"), key)
    methods = _methods_in(records)
    shares = sorted({r["unique_share"] for r in records})
    lines = [
        "| method | " + " | ".join(f"u={share:g}" for share in shares) + " |",
        "|---|" + "---|" * len(shares),
    ]
    for method in methods:
        cells = []
        for share in shares:
            values = groups.get((method, share))
            if values:
                mean, std = mean_std([100 * v for v in values])
                cells.append(f"{mean:.1f} ± {std:.1f}")
            else:
                cells.append("–")
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def probing_table(rows: list[dict]) -> str:
    """Markdown table of the mean test R² (over seeds) of each latent block from each representation."""
    groups = _grouped(rows, ("method", "unique_share", "representation", "latent"), "r2")
    keys = list(dict.fromkeys(k[:3] for k in groups))
    lines = ["| method | u | representation | " + " | ".join(LATENTS) + " |", "|---|---|---|" + "---|" * len(LATENTS)]
    for method, share, representation in keys:
        cells = [f"{statistics.fmean(groups[(method, share, representation, latent)]):.2f}" for latent in LATENTS]
        lines.append(f"| {method} | {share:g} | {representation} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def critic_check_table(records: list[dict]) -> str:
    """Markdown table of the CLUB critic check, mean over seeds: the InfoNCE (nats, test split)
    of each CLUB term's own critic against a critic refitted on the frozen features."""
    rows = [
        {"method": r["method"], "unique_share": r["unique_share"], "term": term, **values}
        for r in records
        for term, values in r.get("club_critic_check", {}).items()
    ]
    keys = ("method", "unique_share", "term")
    trained, refit = _grouped(rows, keys, "trained"), _grouped(rows, keys, "refit")
    lines = ["| method | u | CLUB term | own critic | refitted critic |", "|---|---|---|---|---|"]
    for method, share, term in trained:
        lines.append(
            f"| {method} | {share:g} | {term} | {statistics.fmean(trained[(method, share, term)]):.2f} | "
            f"{statistics.fmean(refit[(method, share, term)]):.2f} |"
        )
    return "\n".join(lines)


def plot_accuracy(records: list[dict], path: str):
    """Probe accuracy vs unique share, one line per method, error bars = std over seeds."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = _grouped(records, ("method", "unique_share"), "probe_acc")
    fig, ax = plt.subplots(figsize=(6, 4))
    for method in _methods_in(records):
        shares = sorted(share for m, share in groups if m == method)
        stats = [mean_std([100 * v for v in groups[(method, share)]]) for share in shares]
        style = {
            INPUT_PROBE: dict(color="gray", ls="--", marker=""),
            BAYES: dict(color="black", ls=":", marker=""),
        }.get(method, dict(marker="o"))
        ax.errorbar(
            shares, [m for m, _ in stats], yerr=[s for _, s in stats], capsize=3, label=method, **style
        )
    ax.set_xlabel("unique share of the label (0: shared only, 1: unique only)")
    ax.set_ylabel("linear-probe test accuracy (%)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


@contextlib.contextmanager
def _thread_limit(num_threads: int):
    """Cap torch's and the BLAS libraries' threads (the probes' scikit-learn fits) for the run.

    On a small shared machine oversubscribed BLAS threads made each probe ~10x slower."""
    if num_threads <= 0:
        yield
        return
    from threadpoolctl import threadpool_limits

    previous = torch.get_num_threads()
    torch.set_num_threads(num_threads)
    try:
        with threadpool_limits(num_threads):
            yield
    finally:
        torch.set_num_threads(previous)


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        epilog="Run it from the repository root (python -m experiments.synthetic_sweep ...): experiments/ is a study "
        "beside the package, not installed with it.",
    )
    parser.add_argument("--out", required=True, help="output directory")
    parser.add_argument("--quick", action="store_true", help=f"small CPU run: {QUICK}, methods {QUICK_METHODS}")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--methods", nargs="+", choices=METHODS, default=None, help="default: all (quick: four)")
    parser.add_argument("--unique-shares", type=float, nargs="+", default=[0.0, 0.5, 1.0])
    parser.add_argument("--num-samples", type=int, default=None, help="train + test samples (overrides the preset)")
    parser.add_argument("--epochs", type=int, default=None, help="overrides the preset")
    parser.add_argument("--batch-size", type=int, default=None, help="overrides the preset")
    parser.add_argument(
        "--preset", choices=tuple(PRESETS), default="default",
        help="default: the package's defaults; paper: the paper's estimators and concat alignment critic",
    )
    parser.add_argument(
        "--alignment-critic-type", choices=("concat", "separable", "cosine"), default=None,
        help="critic of FactorCL/OurCL's shared InfoNCE term (default: the preset's; paper: concat)",
    )
    parser.add_argument("--estimators", choices=tuple(ESTIMATOR_PRESETS), default=None,
                        help="FactorCL's estimator preset (default: the --preset's)")
    parser.add_argument("--conditioning", choices=CONDITIONINGS, default=None, help="overrides the estimators'")
    parser.add_argument("--club-gradient", choices=CLUB_GRADIENTS, default=None, help="overrides the estimators'")
    parser.add_argument("--club-critic-lr", type=float, default=None, help="overrides the estimators'")
    parser.add_argument("--club-critic-steps", type=int, default=None, help="overrides the estimators'")
    parser.add_argument("--club-head-lr-scale", type=float, default=None, help="overrides the estimators'")
    parser.add_argument(
        "--term-weights", type=parse_term_weights, default=None, metavar="NAME=WEIGHT,...",
        help=f"weights of FactorCL's six terms ({', '.join(FACTORCL_TERMS)}; default 1 each); "
        "only for --methods with the six terms",
    )
    parser.add_argument(
        "--critic-check", action="store_true",
        help="after training, compare each CLUB critic with one refitted on the frozen features",
    )
    parser.add_argument("--critic-check-steps", type=int, default=600, help="Adam steps of the refitted critics")
    parser.add_argument(
        "--num-threads", type=int, default=1,
        help="torch and BLAS threads (1 is fastest on a shared 2-core machine; 0 keeps the defaults)",
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    args = parser.parse_args(argv)
    if args.term_weights is not None and not all(objective_spec(m).six_bounds for m in args.methods or METHODS):
        six = [name for name in METHODS if objective_spec(name).six_bounds]
        parser.error(f"--term-weights weighs FactorCL's six terms: give --methods among {six}")
    if any(not 0.0 <= share <= 1.0 for share in args.unique_shares):
        parser.error(f"--unique-shares must lie in [0, 1], got {args.unique_shares}")
    preset = QUICK if args.quick else REFERENCE
    num_samples, batch_size = args.num_samples or preset["num_samples"], args.batch_size or preset["batch_size"]
    test_samples = round(num_samples * SyntheticConfig.test_fraction)
    if args.critic_check and test_samples < batch_size:
        # Checked here, not after hours of training: the check scores the test split in batches.
        parser.error(f"--critic-check scores the test split in batches of {batch_size} (--batch-size), but "
                     f"{num_samples} samples leave {test_samples} for testing: give --num-samples >= "
                     f"{math.ceil(batch_size / SyntheticConfig.test_fraction)} or a smaller --batch-size")
    return args


def main(argv=None) -> list[dict]:
    args = parse_args(argv)
    preset = QUICK if args.quick else REFERENCE
    methods = args.methods or (QUICK_METHODS if args.quick else METHODS)
    num_samples = args.num_samples or preset["num_samples"]
    given = {name: getattr(args, name) for name in ("alignment_critic_type", "estimators", "club_critic_lr",
                                                     "club_critic_steps", "club_head_lr_scale")}
    objective_options = {name: getattr(args, name) for name in ("conditioning", "club_gradient", "term_weights")}
    settings = BenchmarkSettings(
        epochs=args.epochs or preset["epochs"],
        batch_size=args.batch_size or preset["batch_size"],
        objective_options={k: v for k, v in objective_options.items() if v is not None},
        **{**PRESETS[args.preset], **{k: v for k, v in given.items() if v is not None}},
    )
    # The official probe protocol (max_iter=200) often stops before lbfgs converges, and
    # ridge warns on the near-collinear columns of wide embeddings; neither changes a score.
    from scipy.linalg import LinAlgWarning
    from sklearn.exceptions import ConvergenceWarning

    warnings.filterwarnings("ignore", category=ConvergenceWarning)
    warnings.filterwarnings("ignore", category=LinAlgWarning)

    with _thread_limit(args.num_threads):
        records = run_sweep(
            methods, args.unique_shares, args.seeds, num_samples, settings, not args.no_progress,
            args.critic_check_steps if args.critic_check else 0,
        )
    rows = probing_rows(records)
    os.makedirs(args.out, exist_ok=True)
    results = [{k: v for k, v in r.items() if k != "probing"} for r in records]
    with open(os.path.join(args.out, "synthetic_results.json"), "w") as f:
        json.dump(results, f, indent=2)
    with open(os.path.join(args.out, "synthetic_probing.json"), "w") as f:
        json.dump(rows, f, indent=2)
    plot_accuracy(records, os.path.join(args.out, "synthetic.png"))

    seeds = ", ".join(map(str, args.seeds))
    print(f"\nLinear-probe test accuracy (%) on [Z_S1; Z_U1; Z_S2; Z_U2], mean ± std over seeds {seeds}\n")
    print(accuracy_table(records))
    print("\nLinear-probe test accuracy (%) on the backbone readout [e1; e2]\n")
    print(accuracy_table(records, "backbone_probe_acc"))
    print("\nTest R² of each latent block from each representation (ridge), mean over seeds\n")
    print(probing_table(rows))
    if args.critic_check:
        print("\nCLUB critic check: InfoNCE (nats, test split) of each CLUB term's own critic vs a refitted one\n")
        print(critic_check_table(records))
    total = sum(r["train_seconds"] for r in records if r["trained_at_unique_share"] == r["unique_share"])
    print(f"\nTraining time: {total:.0f} s; results in {args.out}")
    return results


if __name__ == "__main__":
    main()
