"""FactorCL-SUP's label terms (4-5): each class scored once, against all B x B pairs.

With a one-hot label ``y`` the critic of ``I(Z_i; Y)`` sees only ``num_labels`` distinct
second arguments, so ``FactorCLObjective`` scores ``B x C`` (row, class) pairs and gathers
the batch's columns; ``all_pairs`` scores every ``(h_i, onehot(y_j))`` of the batch as the
paper's estimator is written. Both variants run the whole SUP objective step (forward of all
six terms, one backward of ``loss + critic_loss``) on the same objective and batch; the
scores of the two forms are checked equal before timing.

Run::

    python -m benchmarks.label_critic --threads 1            # B in {64, 256}, 2 labels
    python -m benchmarks.label_critic --num-labels 10 --batch-sizes 128
    python -m benchmarks.label_critic --smoke                # seconds: a tiny check of the pipeline
"""

from __future__ import annotations

import argparse
from contextlib import contextmanager

import torch
import torch.nn.functional as F

from benchmarks._timing import add_run_arguments, apply_threads, time_side_by_side, write_json
from factorcl_hf.objectives import FactorCLObjective, build_objective


@contextmanager
def all_pairs_label_scores():
    """Within the block, terms 4-5 score all ``B x B`` (row, label) pairs."""
    per_class = FactorCLObjective._label_scores

    def all_pairs(self, modality, features, condition, labels):
        return self.label_critics[modality](features, condition)

    FactorCLObjective._label_scores = all_pairs
    try:
        yield
    finally:
        FactorCLObjective._label_scores = per_class


def run(batch_size: int, num_labels: int, dim: int = 128, repeats: int = 9) -> dict:
    torch.manual_seed(0)
    objective = build_objective(
        "factorcl_sup", (dim, dim), num_labels=num_labels, head_dim=128, head_hidden_dim=512, critic_hidden_dim=512,
        alignment_critic_type="concat",
    )
    features = [torch.randn(batch_size, dim, requires_grad=True) for _ in range(2)]
    labels = torch.randint(0, num_labels, (batch_size,))

    head = objective.heads[0](features[0])["unique_label"]
    one_hot = F.one_hot(labels, num_labels).float()
    with torch.no_grad():
        per_class = objective._label_scores(0, head, one_hot, labels)
        with all_pairs_label_scores():
            reference = objective._label_scores(0, head, one_hot, labels)
    max_diff = (per_class - reference).abs().max().item()
    if max_diff > 1e-5:
        raise AssertionError(f"per-class label scores differ from all pairs by {max_diff}")

    def step():
        out = objective(*features, labels=labels)
        (out.loss + out.critic_loss).backward()

    def step_all_pairs():
        with all_pairs_label_scores():
            step()

    timing = time_side_by_side({"all_pairs": step_all_pairs, "per_class": step}, repeats=repeats)
    return {
        "batch_size": batch_size,
        "num_labels": num_labels,
        "all_pairs_ms": 1e3 * timing["all_pairs"]["median_s"],
        "per_class_ms": 1e3 * timing["per_class"]["median_s"],
        "speedup": timing["all_pairs"]["median_s"] / timing["per_class"]["median_s"],
        "max_score_diff": max_diff,
    }


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[64, 256])
    parser.add_argument("--num-labels", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--smoke", action="store_true", help="tiny sizes, one round")
    add_run_arguments(parser)
    args = parser.parse_args(argv)
    apply_threads(args)
    if args.smoke:
        rows = [run(8, args.num_labels, dim=8, repeats=1)]
    else:
        rows = [run(b, args.num_labels, repeats=args.repeats) for b in args.batch_sizes]
    print(f"{'B':>5} {'labels':>6} {'all pairs ms':>13} {'per class ms':>13} {'speed-up':>9} {'score Δ':>9}")
    for r in rows:
        print(f"{r['batch_size']:>5} {r['num_labels']:>6} {r['all_pairs_ms']:>13.1f} {r['per_class_ms']:>13.1f} "
              f"{r['speedup']:>8.2f}x {r['max_score_diff']:>9.1e}")
    write_json(args.json, {"rows": rows})
    return rows


if __name__ == "__main__":
    main()
