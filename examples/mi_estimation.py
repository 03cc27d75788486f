"""Estimate known mutual information with InfoNCE and NCE-CLUB (the paper's Gaussian MI check).

``x, y ∈ R^d`` are standard normal with correlation ``ρ`` in every coordinate
(``y = ρ x + sqrt(1 − ρ²) ε``), so ``I(X; Y) = −d/2 · log(1 − ρ²)`` exactly. For each target MI
we solve for ``ρ`` and train, on fresh samples every step,

* an InfoNCE critic (``ConcatCritic``, maximizing ``infonce_lower_bound``): a lower bound,
  which can never exceed ``log B``;
* an NCE-CLUB estimator (``NCECLUBEstimator``; its own critic trained with ``critic_loss``),
  reporting the CLUB bound of ``forward``: an upper-bound estimate.

The two critics are initialized and optimized independently, so "NCE-CLUB ≥ InfoNCE" is an
empirical outcome here, not an identity (with one shared critic it would hold by Jensen).
NCE-CLUB overshoots more as the MI grows: InfoNCE's optimal critic is
``log p(y|x)/p(y)`` (up to a function of ``x``, which cancels in CLUB), and CLUB of that critic
is ``I + KL(p(x)p(y) ‖ p(x,y))``; the plot shows that value as a dotted line.

Run::

    python examples/mi_estimation.py --out runs/mi

writes ``runs/mi/mi_estimates.json`` (one object per target MI: ``true_mi``, ``infonce``,
``nce_club``, ``log_batch``, ``club_of_optimal_critic``; estimates averaged over the last quarter of steps) and
``runs/mi/mi_estimates.png``. Defaults: d = 20, 800 steps, batch 64, hidden 512, five
targets, one torch thread (results and run time: README, "Gaussian MI check").
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys

import torch

# Runnable as a plain script from the repository root without installing the package.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from factorcl_hf.estimators import ConcatCritic, NCECLUBEstimator, infonce_lower_bound  # noqa: E402

TARGET_MIS = (2.0, 4.0, 6.0, 8.0, 10.0)


def correlation_for_mi(true_mi: float, dim: int) -> float:
    """The per-coordinate correlation ``ρ`` with ``−dim/2 · log(1 − ρ²) = true_mi``."""
    return math.sqrt(1.0 - math.exp(-2.0 * true_mi / dim))


def club_of_optimal_critic(true_mi: float, dim: int) -> float:
    """CLUB of the critic ``log p(y|x)/p(y)``: ``I + KL(p(x)p(y) ‖ p(x,y))``, in closed form.

    Per coordinate, ``KL(N(0, I₂) ‖ N(0, [[1, ρ], [ρ, 1]])) = ρ²/(1 − ρ²) + ½ log(1 − ρ²)``.
    """
    rho_squared = correlation_for_mi(true_mi, dim) ** 2
    return true_mi + dim * (rho_squared / (1.0 - rho_squared) + 0.5 * math.log(1.0 - rho_squared))


def sample_correlated_gaussians(
    batch_size: int, dim: int, rho: float, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """A batch of ``(x, y)``, both standard normal, with ``corr(x_k, y_k) = rho`` per coordinate."""
    x = torch.randn(batch_size, dim, generator=generator)
    noise = torch.randn(batch_size, dim, generator=generator)
    return x, rho * x + math.sqrt(1.0 - rho**2) * noise


def estimate_mi(
    true_mi: float,
    dim: int = 20,
    steps: int = 800,
    batch_size: int = 64,
    hidden_dim: int = 512,
    lr: float = 5e-3,
    seed: int = 0,
    show_progress: bool = False,
) -> dict:
    """Train both estimators on correlated Gaussians with MI ``true_mi`` (in nats).

    Returns ``{"true_mi", "infonce", "nce_club", "log_batch", "rho"}``; the two estimates are
    averages over the last quarter of training steps (each step sees a fresh batch, so these
    are held-out values for the critic that scored them).
    """
    if not true_mi > 0:
        raise ValueError(f"`true_mi` must be > 0 nats, got {true_mi}")
    integer_arguments = (("dim", dim, 1), ("steps", steps, 1), ("batch_size", batch_size, 2), ("hidden_dim", hidden_dim, 1))
    for name, value, minimum in integer_arguments:
        if not isinstance(value, int) or value < minimum:
            raise ValueError(f"`{name}` must be an integer >= {minimum}, got {value!r}")
    if not lr > 0:
        raise ValueError(f"`lr` must be > 0, got {lr}")

    rho = correlation_for_mi(true_mi, dim)
    torch.manual_seed(seed)
    infonce_critic = ConcatCritic(dim, dim, hidden_dim)
    nce_club = NCECLUBEstimator(ConcatCritic(dim, dim, hidden_dim))
    optimizers = [torch.optim.Adam(m.parameters(), lr=lr) for m in (infonce_critic, nce_club.critic)]
    generator = torch.Generator().manual_seed(seed)

    averaged_from = steps - max(1, steps // 4)
    infonce_values, club_values = [], []
    progress = _progress(range(steps), show_progress, desc=f"MI {true_mi:g}")
    for step in progress:
        x, y = sample_correlated_gaussians(batch_size, dim, rho, generator)
        infonce = infonce_lower_bound(infonce_critic(x, y))
        losses = (-infonce, nce_club.critic_loss(x, y))
        # Score this batch before the update, so the reported bound is on unseen data.
        with torch.no_grad():
            club = nce_club(x, y)
        for optimizer, loss in zip(optimizers, losses):
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        if step >= averaged_from:
            infonce_values.append(infonce.item())
            club_values.append(club.item())
        if show_progress and step % 50 == 0:
            progress.set_postfix(infonce=f"{infonce.item():.2f}", nce_club=f"{club.item():.2f}")

    return {
        "true_mi": float(true_mi),
        "infonce": sum(infonce_values) / len(infonce_values),
        "nce_club": sum(club_values) / len(club_values),
        "log_batch": math.log(batch_size),
        "rho": rho,
        "club_of_optimal_critic": club_of_optimal_critic(true_mi, dim),
    }


def _progress(iterable, enabled: bool, desc: str):
    if not enabled:
        return iterable
    from tqdm.auto import tqdm

    return tqdm(iterable, desc=desc, leave=False)


def plot_estimates(results: list[dict], path: str, dim: int, title: str = ""):
    """Estimates against the truth, with ``y = x``, the ``log B`` ceiling of InfoNCE and the
    CLUB value of the optimal critic (where NCE-CLUB heads as its critic improves)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    true_mis = [r["true_mi"] for r in results]
    fig, ax = plt.subplots(figsize=(5, 4))
    ax.plot(true_mis, true_mis, "k--", lw=1, label="true MI (y = x)")
    ax.axhline(results[0]["log_batch"], color="gray", ls=":", label="log B")
    ax.plot(true_mis, [r["infonce"] for r in results], "o-", label="InfoNCE (lower bound)")
    ax.plot(true_mis, [r["nce_club"] for r in results], "s-", color="C1", label="NCE-CLUB (upper bound)")
    ax.plot(true_mis, [club_of_optimal_critic(mi, dim) for mi in true_mis], ":", color="C1", label="CLUB, optimal critic")
    ax.set_xlabel("true MI (nats)")
    ax.set_ylabel("estimate (nats)")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dim", type=int, default=20, help="dimension d of x and y")
    parser.add_argument("--steps", type=int, default=800, help="training steps per target MI")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--hidden-dim", type=int, default=512, help="critic hidden width")
    parser.add_argument("--lr", type=float, default=5e-3, help="Adam learning rate")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--true-mi", type=float, nargs="+", default=list(TARGET_MIS), help="target MIs in nats")
    parser.add_argument(
        "--threads", type=int, default=1,
        help="torch intra-op threads; 1 by default because the per-step tensors are small and extra "
        "threads on a busy machine slow torch down rather than up",
    )
    parser.add_argument("--out", default="runs/mi_estimation", help="output folder")
    return parser.parse_args(argv)


def main(argv=None) -> list[dict]:
    args = parse_args(argv)
    if args.threads < 1:
        raise ValueError(f"`--threads` must be >= 1, got {args.threads}")
    torch.set_num_threads(args.threads)
    results = [
        estimate_mi(mi, args.dim, args.steps, args.batch_size, args.hidden_dim, args.lr, args.seed, show_progress=True)
        for mi in args.true_mi
    ]
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "mi_estimates.json"), "w") as f:
        json.dump(results, f, indent=2)
    title = f"d={args.dim}, batch {args.batch_size}, hidden {args.hidden_dim}, {args.steps} steps"
    plot_estimates(results, os.path.join(args.out, "mi_estimates.png"), args.dim, title)

    print(f"{'true MI':>8} {'InfoNCE':>8} {'NCE-CLUB':>9} {'CLUB*':>7}   (log B = {results[0]['log_batch']:.2f}; "
          "CLUB* = CLUB of the optimal critic)")
    for r in results:
        print(f"{r['true_mi']:8.2f} {r['infonce']:8.2f} {r['nce_club']:9.2f} {r['club_of_optimal_critic']:7.2f}")
    print(f"wrote {args.out}/mi_estimates.json and mi_estimates.png")
    return results


if __name__ == "__main__":
    main()
