"""One full FactorCL objective step, ours against the reference design, side by side.

A step is what the training loop does per batch once the backbone features exist: the
projection heads, the six MI terms with their critics (forward and backward), the CLUB
critics' InfoNCE update, and both optimizers' steps.

* ``ours``: ``FactorCLObjective`` (split-first-layer critics whose ``[B, B, H]`` hidden
  activation is fused and never stored), one backward of ``loss + critic_loss`` (the CLUB
  critics' loss on the same step's detached features).
* ``naive``: the reference code's design, written here independently of the library's
  estimators: every critic scores ``B²`` tiled ``[x_i; y_j]`` rows through the full MLP,
  and the CLUB critics are trained in a *second pass* that re-runs the heads (the reference
  also re-ran the backbone there; this benchmark starts from features, so it cannot).

Both variants hold the *same* parameters (deep copies of one seeded objective) and train with
the same optimizers. Before anything is timed the loss, every term, the CLUB critics' loss and
every parameter gradient of one step are checked to agree (relative difference ≤ 1e-5).
Timing and memory methods: ``_timing.py``. Defaults: backbone features 512-d, heads 512 → 128,
critics hidden 512 with one hidden layer, concat alignment critic (the paper's), 3 labels.

Run::

    python -m benchmarks.objective_step --threads 1             # SUP and SSL, B in {64, 256}
    python -m benchmarks.objective_step --smoke                 # seconds: a tiny check of the pipeline
    python -m benchmarks.objective_step --batch-sizes 128 --objectives factorcl_sup --json out.json
"""

from __future__ import annotations

import argparse
import copy
import math
from contextlib import nullcontext

import torch
import torch.nn.functional as F
from torch import nn

from benchmarks._timing import add_run_arguments, apply_threads, peak_memory_bytes, time_side_by_side, write_json
from factorcl_hf.estimators import ConcatCritic, CosineCritic
from factorcl_hf.objectives import FactorCLObjective, build_objective

OBJECTIVES = ("factorcl_sup", "factorcl_ssl")
VARIANTS = ("naive", "ours")
FEATURE_DIM = 512
CRITIC_HIDDEN_DIM = 512
NUM_LABELS = 3
MAX_RELATIVE_DIFF = 1e-5
# The SSL conditions (heads on the augmented view) take these head roles, as in the objective.
SSL_CONDITIONED_ROLES = ("shared_cond", "unique_label", "unique_cond")


# --------------------------------------------------------------------------- the case
def build_case(
    objective: str,
    batch_size: int,
    feature_dim: int = FEATURE_DIM,
    critic_hidden_dim: int = CRITIC_HIDDEN_DIM,
    critic_num_hidden_layers: int = 1,
    head_dim: int = 128,
    head_hidden_dim: int = 512,
    critic_chunk_size: int | None = None,
    device: str = "cpu",
    seed: int = 0,
) -> tuple[FactorCLObjective, dict[str, torch.Tensor]]:
    """A seeded objective and one batch of backbone features; same arguments, same tensors."""
    if objective not in OBJECTIVES:
        raise ValueError(f"`objective` must be one of {OBJECTIVES}, got {objective!r}")
    torch.manual_seed(seed)
    model = build_objective(
        objective,
        (feature_dim, feature_dim),
        num_labels=NUM_LABELS if objective == "factorcl_sup" else None,
        head_dim=head_dim,
        head_hidden_dim=head_hidden_dim,
        critic_hidden_dim=critic_hidden_dim,
        critic_num_hidden_layers=critic_num_hidden_layers,
        alignment_critic_type="concat",
        critic_chunk_size=critic_chunk_size,
        estimators="paper",  # the maths the reference design computes
    ).to(device)
    inputs = {
        "features_1": torch.randn(batch_size, feature_dim, device=device),
        "features_2": torch.randn(batch_size, feature_dim, device=device),
    }
    if objective == "factorcl_sup":
        inputs["labels"] = torch.randint(0, NUM_LABELS, (batch_size,), device=device)
    else:
        inputs["augmented_1"] = inputs["features_1"] + 0.1 * torch.randn_like(inputs["features_1"])
        inputs["augmented_2"] = inputs["features_2"] + 0.1 * torch.randn_like(inputs["features_2"])
    return model, inputs


# ---------------------------------------------------------------- the reference design
def tiled_critic_scores(critic: ConcatCritic, x: torch.Tensor, y: torch.Tensor, frozen: bool = False) -> torch.Tensor:
    """``S[i, j] = MLP([x_i; y_j])`` from ``len(x) · len(y)`` materialized concatenated rows.

    Uses the critic's own parameters as the unsplit MLP (first layer ``[W_x, W_y]`` with the
    bias of ``x_proj``), so gradients land on the same tensors; ``frozen`` detaches them (the
    CLUB bound trains the encoders, never its critic).
    """
    if not isinstance(critic, ConcatCritic):
        raise ValueError(f"`critic` must be a ConcatCritic, got {type(critic).__name__}")

    def param(p):
        return p.detach() if frozen else p

    pairs = torch.cat([x.repeat_interleave(len(y), dim=0), y.repeat(len(x), 1)], dim=1)
    weight = torch.cat([param(critic.x_proj.weight), param(critic.y_proj.weight)], dim=1)
    hidden = torch.relu(F.linear(pairs, weight, param(critic.x_proj.bias)))
    for layer in critic.head:
        hidden = torch.relu(hidden) if isinstance(layer, nn.ReLU) else F.linear(hidden, param(layer.weight), param(layer.bias))
    return hidden.view(len(x), len(y))


def reference_infonce(scores: torch.Tensor) -> torch.Tensor:
    """The reference formula: ``mean_i S[i,i] − mean_i (logsumexp_j S[i,j] − log B)``."""
    return scores.diagonal().mean() - (scores.logsumexp(dim=1) - math.log(scores.shape[0])).mean()


def reference_club(scores: torch.Tensor) -> torch.Tensor:
    """``mean_i S[i,i] − mean_{i,j} S[i,j]``."""
    return scores.diagonal().mean() - scores.mean()


def reference_alignment_infonce(critic: nn.Module, z1: torch.Tensor, z2: torch.Tensor) -> torch.Tensor:
    """The shared term's InfoNCE: a tiled concat critic, or the CLIP form for a cosine critic
    (scaled cosine similarities, InfoNCE averaged over both directions)."""
    if isinstance(critic, CosineCritic):
        scores = F.normalize(z1, dim=-1) @ F.normalize(z2, dim=-1).T / critic.temperature
        return 0.5 * (reference_infonce(scores) + reference_infonce(scores.T))
    return reference_infonce(tiled_critic_scores(critic, z1, z2))


def _naive_heads(model: FactorCLObjective, inputs: dict) -> tuple[list[dict], list[dict]]:
    """Head outputs per modality and what conditions each term (one-hot label or augmented view)."""
    features = (inputs["features_1"], inputs["features_2"])
    heads = [model.heads[m](features[m]) for m in range(2)]
    if model.supervised:
        one_hot = F.one_hot(inputs["labels"], model.num_labels).to(features[0].dtype)
        conditions = [dict.fromkeys(SSL_CONDITIONED_ROLES, one_hot) for _ in range(2)]
    else:
        augmented = (inputs["augmented_1"], inputs["augmented_2"])
        conditions = [model.heads[m](augmented[m], SSL_CONDITIONED_ROLES) for m in range(2)]
    return heads, conditions


def _conditioned(heads, conditions, role):
    return tuple(torch.cat([heads[m][role], conditions[m][role]], dim=1) for m in range(2))


def naive_terms(model: FactorCLObjective, inputs: dict) -> dict[str, torch.Tensor]:
    """The six FactorCL terms with tiled critics (docs/method.md), and ``loss``."""
    heads, conditions = _naive_heads(model, inputs)
    terms = {
        "shared_nce": reference_alignment_infonce(model.alignment_critic, heads[0]["shared"], heads[1]["shared"]),
        "shared_cond_club": reference_club(
            tiled_critic_scores(model.club_shared_cond.critic, *_conditioned(heads, conditions, "shared_cond"), frozen=True)
        ),
        "unique_club": reference_club(
            tiled_critic_scores(model.club_unique.critic, heads[0]["unique"], heads[1]["unique"], frozen=True)
        ),
    }
    for m in range(2):
        scores = tiled_critic_scores(model.label_critics[m], heads[m]["unique_label"], conditions[m]["unique_label"])
        terms[f"unique_label_nce_{m + 1}"] = reference_infonce(scores)
    terms["unique_cond_nce"] = reference_infonce(
        tiled_critic_scores(model.unique_cond_critic, *_conditioned(heads, conditions, "unique_cond"))
    )
    terms["loss"] = (
        -terms["shared_nce"] + terms["shared_cond_club"] + terms["unique_club"]
        - terms["unique_label_nce_1"] - terms["unique_label_nce_2"] - terms["unique_cond_nce"]
    )
    return terms


def naive_club_critic_loss(model: FactorCLObjective, inputs: dict) -> torch.Tensor:
    """The reference's separate CLUB-critic pass: heads again, tiled critics, negative InfoNCE."""
    heads, conditions = _naive_heads(model, inputs)
    shared_cond = [t.detach() for t in _conditioned(heads, conditions, "shared_cond")]
    unique = [heads[m]["unique"].detach() for m in range(2)]
    return -reference_infonce(tiled_critic_scores(model.club_shared_cond.critic, *shared_cond)) - reference_infonce(
        tiled_critic_scores(model.club_unique.critic, *unique)
    )


# ----------------------------------------------------------------------- the two steps
class Trainer:
    """One variant's objective, its two optimizers and its step.

    ``ours`` backs up ``loss + critic_loss`` once; ``naive`` backs up the loss, then runs the
    CLUB-critic pass. Both end with the main and the CLUB-critic optimizer steps.
    """

    def __init__(self, variant: str, model: FactorCLObjective, inputs: dict, autocast_dtype: torch.dtype | None = None):
        if variant not in VARIANTS:
            raise ValueError(f"`variant` must be one of {VARIANTS}, got {variant!r}")
        self.variant, self.model, self.inputs = variant, model, inputs
        self.main_optimizer = torch.optim.Adam(model.main_parameters(), lr=1e-4)
        self.critic_optimizer = torch.optim.Adam(model.club_critic_parameters(), lr=1e-4)
        device_type = inputs["features_1"].device.type
        self._autocast = (
            (lambda: torch.autocast(device_type, dtype=autocast_dtype)) if autocast_dtype else nullcontext
        )

    def backward(self) -> dict[str, torch.Tensor]:
        """Forward and backward of one step, no optimizer step; returns the detached losses."""
        if self.variant == "ours":
            with self._autocast():
                out = self.model(**self.inputs)
            (out.loss + out.critic_loss).backward()
            return {"loss": out.loss.detach(), "club_critics_loss": out.critic_loss.detach(), **out.loss_terms}
        with self._autocast():
            terms = naive_terms(self.model, self.inputs)
        terms["loss"].backward()
        with self._autocast():
            critic_loss = naive_club_critic_loss(self.model, self.inputs)
        critic_loss.backward()
        return {"club_critics_loss": critic_loss.detach(), **{k: v.detach() for k, v in terms.items()}}

    def step(self):
        """The measured unit: :meth:`backward` and both optimizer steps."""
        self.backward()
        for optimizer in (self.main_optimizer, self.critic_optimizer):
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)


def make_trainers(model: FactorCLObjective, inputs: dict, autocast_dtype=None) -> dict[str, Trainer]:
    """One :class:`Trainer` per variant, each on its own deep copy of ``model``."""
    return {variant: Trainer(variant, copy.deepcopy(model), inputs, autocast_dtype) for variant in VARIANTS}


def relative_difference(a: torch.Tensor, b: torch.Tensor) -> float:
    """``max|a − b| / max(max|b|, 1)``: relative for values above 1, absolute below (MI terms
    of an untrained model are near 0, where a relative difference only measures rounding)."""
    a, b = a.detach().double(), b.detach().double()
    return ((a - b).abs().max() / b.abs().max().clamp_min(1.0)).item()


def check_same_step(trainers: dict[str, Trainer], tolerance: float = MAX_RELATIVE_DIFF) -> dict[str, float]:
    """Run one forward/backward of each variant and compare every loss term and every
    parameter gradient; raises if any differs by more than ``tolerance``. Returns the
    differences (``loss``, each term, ``max_grad``)."""
    losses = {name: trainer.backward() for name, trainer in trainers.items()}
    differences = {key: relative_difference(losses["ours"][key], losses["naive"][key]) for key in losses["naive"]}
    named = {name: dict(trainer.model.named_parameters()) for name, trainer in trainers.items()}
    grad_differences = {}
    for key, param in named["naive"].items():
        ours = named["ours"][key]
        if (param.grad is None) != (ours.grad is None):
            raise RuntimeError(f"parameter {key}: gradient present in only one variant")
        if param.grad is not None:
            grad_differences[key] = relative_difference(ours.grad, param.grad)
    differences["max_grad"] = max(grad_differences.values())
    for trainer in trainers.values():
        trainer.model.zero_grad(set_to_none=True)
    worst = max(differences, key=differences.get)
    if not differences[worst] <= tolerance:
        detail = max(grad_differences, key=grad_differences.get) if worst == "max_grad" else worst
        raise RuntimeError(
            f"ours and naive differ in {detail} (relative {differences[worst]:.3g} > {tolerance}): not the same objective"
        )
    return differences


def memory_workload(variant: str, autocast: str | None = None, **case_kwargs):
    """Factory for :func:`benchmarks._timing.peak_memory_bytes`: builds the case, returns the step."""
    model, inputs = build_case(**case_kwargs)
    return Trainer(variant, model, inputs, getattr(torch, autocast) if autocast else None).step


# ----------------------------------------------------------------------------- running
def benchmark_case(
    objective: str, batch_size: int, repeats: int, device: str, autocast: str | None, memory: bool = True, **case_kwargs
) -> dict:
    """Check, time and (``memory``) measure both variants at one ``(objective, batch_size)``; one row."""
    case = dict(objective=objective, batch_size=batch_size, device=device, **case_kwargs)
    model, inputs = build_case(**case)
    autocast_dtype = getattr(torch, autocast) if autocast else None
    trainers = make_trainers(model, inputs, autocast_dtype)
    tolerance = MAX_RELATIVE_DIFF if autocast is None else 5e-2  # bf16: both round, differently
    differences = check_same_step(trainers, tolerance)
    synchronize = torch.cuda.synchronize if device.startswith("cuda") else None
    timings = time_side_by_side(
        {name: trainer.step for name, trainer in trainers.items()},
        repeats=repeats, warmup=0, min_sample_seconds=0.2, synchronize=synchronize,  # calibration warms up
    )
    del trainers, model, inputs
    factory = "benchmarks.objective_step:memory_workload"
    peaks = {
        name: peak_memory_bytes(factory, dict(case, variant=name, autocast=autocast), device) if memory else math.nan
        for name in VARIANTS
    }
    return {
        "objective": objective,
        "batch_size": batch_size,
        "naive_ms": timings["naive"]["median_s"] * 1e3,
        "ours_ms": timings["ours"]["median_s"] * 1e3,
        "speedup": timings["naive"]["median_s"] / timings["ours"]["median_s"],
        "naive_peak_mib": peaks["naive"] / 2**20,
        "ours_peak_mib": peaks["ours"] / 2**20,
        "memory_ratio": peaks["ours"] / peaks["naive"] if peaks["naive"] else math.nan,
        "loss_rel_diff": differences["loss"],
        "max_term_rel_diff": max(v for k, v in differences.items() if k != "max_grad"),
        "max_grad_rel_diff": differences["max_grad"],
        "samples_ms": {name: [t * 1e3 for t in timings[name]["samples_s"]] for name in VARIANTS},
    }


def print_table(rows: list[dict]):
    header = (
        f"{'objective':<13} {'B':>5} {'naive ms':>10} {'ours ms':>9} {'speedup':>8} "
        f"{'naive MiB':>10} {'ours MiB':>9} {'ours/naive':>10} {'loss Δrel':>10} {'grad Δrel':>10}"
    )
    print(header)
    print("-" * len(header))
    for r in rows:
        print(
            f"{r['objective']:<13} {r['batch_size']:>5} {r['naive_ms']:>10.1f} {r['ours_ms']:>9.1f} {r['speedup']:>7.2f}x "
            f"{r['naive_peak_mib']:>10.1f} {r['ours_peak_mib']:>9.1f} {r['memory_ratio']:>10.3f} "
            f"{r['loss_rel_diff']:>10.1e} {r['max_grad_rel_diff']:>10.1e}"
        )


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--objectives", nargs="+", default=list(OBJECTIVES), choices=OBJECTIVES)
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=None, help="default 64 256 (smoke: 8)")
    parser.add_argument("--repeats", type=int, default=None, help="timing rounds (default 3, smoke 1)")
    parser.add_argument("--critic-layers", type=int, default=1, help="hidden layers of every critic (2: reference code)")
    parser.add_argument("--smoke", action="store_true", help="tiny sizes, one round: checks the pipeline in seconds")
    parser.add_argument("--no-memory", action="store_true", help="skip the peak-memory subprocesses")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--autocast", choices=["bfloat16", "float16"], default=None, help="mixed precision (GPU)")
    add_run_arguments(parser)
    return parser.parse_args(argv)


def main(argv=None) -> list[dict]:
    args = parse_args(argv)
    apply_threads(args)
    batch_sizes = args.batch_sizes or ([8] if args.smoke else [64, 256])
    repeats = args.repeats or (1 if args.smoke else 3)
    sizes = (
        dict(feature_dim=16, critic_hidden_dim=16, head_dim=8, head_hidden_dim=16)
        if args.smoke
        else {}
    )
    rows = []
    for objective in args.objectives:
        for batch_size in batch_sizes:
            row = benchmark_case(
                objective, batch_size, repeats, args.device, args.autocast, memory=not args.no_memory,
                critic_num_hidden_layers=args.critic_layers, **sizes,
            )
            rows.append(row)
            print_table([row])
            print()
    print(
        f"device={args.device} threads={torch.get_num_threads()} torch={torch.__version__} autocast={args.autocast} "
        f"features={sizes.get('feature_dim', FEATURE_DIM)} critic_hidden={sizes.get('critic_hidden_dim', CRITIC_HIDDEN_DIM)} "
        f"critic_layers={args.critic_layers}"
    )
    print_table(rows)
    meta = {"device": args.device, "threads": torch.get_num_threads(), "torch": torch.__version__,
            "autocast": args.autocast, "critic_layers": args.critic_layers, **sizes,
            "timing": "median of interleaved rounds, same process", "memory": "see benchmarks/_timing.py"}
    write_json(args.json, {"meta": meta, "rows": rows})
    return rows


if __name__ == "__main__":
    main()
