"""Watch FactorCL's CLUB min-max game during training, on the synthetic benchmark.

Each CLUB term is an upper bound that the encoders minimize while its critic, trained
alongside them, tries to keep finding the information. After every epoch this script runs
:func:`experiments.synthetic_benchmark.club_critic_check`: the InfoNCE (test split, nats) the
term's *own* critic finds in its heads' outputs, against a critic freshly fitted to the
frozen features. If the two lines part, the encoders are hiding information from the critic
that trains with them rather than removing it (docs/synthetic_benchmark.md).

Run::

    python -m experiments.club_critic_game --out runs/club_game                     # paper's critics
    python -m experiments.club_critic_game --out runs/club_game_fast --club-critic-lr 1e-3 --club-critic-steps 5

writes ``DIR/club_critic_game.json`` (per epoch: the loss terms and, per CLUB term, ``own``
and ``refit``) and ``DIR/club_critic_game.png`` (one panel per CLUB term). Defaults:
FactorCL-SUP at unique share 1, the ``--quick`` data of the benchmark (4,000 samples, batch
64) for 10 epochs. What it showed: ``docs/synthetic_benchmark.md``.
"""

from __future__ import annotations

import argparse
import json
import os

import torch

from experiments.synthetic_benchmark import BenchmarkSettings, club_critic_check, fit_method
from factorcl_hf.configuration_factorcl import ESTIMATOR_PRESETS
from factorcl_hf.research.synthetic import make_synthetic

FACTORCL_METHODS = ("factorcl_sup", "factorcl_ssl", "ourcl_sup", "ourcl_ssl")


def track_game(splits, method: str, settings: BenchmarkSettings, seed: int, refit_steps: int) -> list[dict]:
    """Train ``method`` and return one record per epoch: ``epoch``, the epoch's mean loss
    terms (``terms``) and ``club_critic_check``'s ``{term: {"trained", "refit"}}`` (``check``)."""
    checks = []

    def after_epoch(epoch, model):
        checks.append(club_critic_check(model, splits.train, splits.test, settings, refit_steps, seed=seed))

    fitted = fit_method(splits, method, settings, seed, on_epoch_end=after_epoch)
    return [
        {"epoch": epoch + 1, "terms": terms, "check": check}
        for epoch, (terms, check) in enumerate(zip(fitted.history.epochs, checks))
    ]


def plot_game(records: list[dict], path: str, title: str):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    terms = list(records[0]["check"])
    fig, axes = plt.subplots(1, len(terms), figsize=(5 * len(terms), 3.6), squeeze=False)
    epochs = [r["epoch"] for r in records]
    for ax, term in zip(axes[0], terms):
        ax.plot(epochs, [r["check"][term]["refit"] for r in records], marker="o", label="critic refitted on frozen features")
        ax.plot(epochs, [r["check"][term]["trained"] for r in records], marker="o", label="the term's own critic")
        ax.axhline(0.0, color="gray", lw=0.8)
        ax.set_title(f"CLUB term `{term}`")
        ax.set_xlabel("epoch")
        ax.set_ylabel("InfoNCE on the test split (nats)")
    axes[0][0].legend(fontsize=8)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, help="output directory")
    parser.add_argument("--method", choices=FACTORCL_METHODS, default="factorcl_sup")
    parser.add_argument("--unique-share", type=float, default=1.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--num-samples", type=int, default=4000)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--estimators", choices=tuple(ESTIMATOR_PRESETS), default="tracked")
    parser.add_argument("--alignment-critic-type", choices=("concat", "cosine"), default="cosine", help="paper: concat")
    parser.add_argument("--club-critic-lr", type=float, default=None, help="default: the estimators'")
    parser.add_argument("--club-critic-steps", type=int, default=None, help="default: the estimators'")
    parser.add_argument("--refit-steps", type=int, default=600, help="Adam steps of each refitted critic")
    parser.add_argument("--num-threads", type=int, default=1, help="torch threads (0 keeps torch's default)")
    args = parser.parse_args(argv)
    if not 0.0 <= args.unique_share <= 1.0:
        parser.error(f"--unique-share must lie in [0, 1], got {args.unique_share}")
    return args


def main(argv=None) -> list[dict]:
    args = parse_args(argv)
    if args.num_threads > 0:
        torch.set_num_threads(args.num_threads)
    settings = BenchmarkSettings(
        epochs=args.epochs,
        batch_size=args.batch_size,
        estimators=args.estimators,
        alignment_critic_type=args.alignment_critic_type,
        club_critic_lr=args.club_critic_lr,
        club_critic_steps=args.club_critic_steps,
    )
    splits = make_synthetic(num_samples=args.num_samples, unique_share=args.unique_share, seed=args.seed)
    records = track_game(splits, args.method, settings, args.seed, args.refit_steps)

    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "club_critic_game.json"), "w") as f:
        json.dump({"settings": settings.to_dict(), "method": args.method, "unique_share": args.unique_share,
                   "seed": args.seed, "epochs": records}, f, indent=2)
    title = f"{args.method}, u={args.unique_share:g}, seed {args.seed}: estimators {args.estimators}"
    plot_game(records, os.path.join(args.out, "club_critic_game.png"), title)

    terms = list(records[0]["check"])
    print("| epoch | " + " | ".join(f"{t}: own / refit" for t in terms) + " |")
    print("|---|" + "---|" * len(terms))
    for r in records:
        cells = [f"{r['check'][t]['trained']:.2f} / {r['check'][t]['refit']:.2f}" for t in terms]
        print(f"| {r['epoch']} | " + " | ".join(cells) + " |")
    return records


if __name__ == "__main__":
    main()
