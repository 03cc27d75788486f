"""Forward + backward of ``ConcatCritic`` against the naive tiled-pairs MLP, side by side.

The reference FactorCL code scores all ``B²`` pairs by tiling: it repeats ``x`` and ``y`` into
``B²`` rows, concatenates them to ``[B², x_dim + y_dim]`` and runs the whole MLP on that.
``ConcatCritic`` splits the first layer (``W [x; y] = W_x x + W_y y``), projects each row
once and broadcast-adds ``[B, 1, H] + [1, B, H]``; with one hidden layer the only ``B²``-sized
work left is a ReLU and a dot product. Both variants here hold the *same* weights (the naive
MLP is built from the critic's: first layer ``[W_x, W_y]`` with ``W_x``'s bias), and their
scores are checked to agree (relative difference ≤ 1e-5) before anything is timed.

Defaults match FactorCL-SUP on CLIP features: ``x_dim = y_dim = 515`` (a 512-d embedding
plus a 3-class one-hot label), hidden 512. One step is ``-infonce_lower_bound(S).backward()``
with the inputs requiring gradients, as when the bound trains the encoders
(``--no-input-grad`` for the critic-only case). Timing and memory methods: ``_timing.py``.

Run::

    python -m benchmarks.critic_speed              # B in {64, 128, 256}, 1 and 2 hidden layers
    python -m benchmarks.critic_speed --quick      # B in {64, 128}, fewer repetitions
    python -m benchmarks.critic_speed --json runs/critic_speed.json
"""

from __future__ import annotations

import argparse
import copy

import torch
from torch import nn

from benchmarks._timing import add_run_arguments, apply_threads, peak_memory_bytes, time_side_by_side, write_json
from factorcl_hf.estimators import ConcatCritic, infonce_lower_bound

FEATURE_DIM = 512 + 3  # CLIP embedding + one-hot label of a 3-class task
HIDDEN_DIM = 512
MAX_RELATIVE_DIFF = 1e-5


class NaiveConcatCritic(nn.Module):
    """The reference code's all-pairs critic: tile ``B²`` concatenated pairs, full MLP on each.

    Built from a :class:`ConcatCritic` so that both compute the same function with the same
    weights: the first layer is ``Linear(x_dim + y_dim, H)`` with weight ``[W_x, W_y]`` and
    the bias of ``x_proj``; the remaining layers are copies of the critic's ``head``.
    """

    def __init__(self, critic: ConcatCritic):
        super().__init__()
        first = nn.Linear(critic.x_dim + critic.y_dim, critic.hidden_dim)
        with torch.no_grad():
            first.weight.copy_(critic.first_layer_weight)
            first.bias.copy_(critic.x_proj.bias)
        self.mlp = nn.Sequential(first, nn.ReLU(), *copy.deepcopy(critic.head)).to(critic.x_proj.weight.device)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """``S[i, j] = f(x_i, y_j)`` from ``len(x) · len(y)`` materialized ``[x_i; y_j]`` rows."""
        pairs = torch.cat([x.repeat_interleave(len(y), dim=0), y.repeat(len(x), 1)], dim=1)
        return self.mlp(pairs).view(len(x), len(y))


def build_case(
    batch_size: int,
    num_hidden_layers: int,
    hidden_dim: int = HIDDEN_DIM,
    feature_dim: int = FEATURE_DIM,
    input_grad: bool = True,
    device: str = "cpu",
    seed: int = 0,
) -> tuple[ConcatCritic, torch.Tensor, torch.Tensor]:
    """A seeded critic and a batch ``(x, y)``; the same arguments give the same tensors."""
    torch.manual_seed(seed)
    critic = ConcatCritic(feature_dim, feature_dim, hidden_dim, num_hidden_layers).to(device)
    x, y = (torch.randn(batch_size, feature_dim, device=device).requires_grad_(input_grad) for _ in range(2))
    return critic, x, y


def variant_model(variant: str, critic: ConcatCritic, chunk_size: int | None = None) -> nn.Module:
    """``"naive"``, ``"ours"`` or ``"ours_chunked"`` (a copy of ``critic`` with ``chunk_size``)."""
    if variant == "naive":
        return NaiveConcatCritic(critic)
    if variant == "ours":
        return critic
    if variant == "ours_chunked":
        if chunk_size is None:
            raise ValueError("`chunk_size` is required for the 'ours_chunked' variant")
        chunked = copy.deepcopy(critic)
        chunked.chunk_size = chunk_size
        return chunked
    raise ValueError(f"`variant` must be 'naive', 'ours' or 'ours_chunked', got {variant!r}")


def training_step(model: nn.Module, x: torch.Tensor, y: torch.Tensor):
    """The measured unit: all-pairs scores, the InfoNCE loss, backward."""
    (-infonce_lower_bound(model(x, y))).backward()


def memory_workload(variant: str, chunk_size: int | None = None, **case_kwargs):
    """Factory for :func:`benchmarks._timing.peak_memory_bytes`: builds the case, returns the step."""
    critic, x, y = build_case(**case_kwargs)
    model = variant_model(variant, critic, chunk_size)
    return lambda: training_step(model, x, y)


def score_differences(models: dict[str, nn.Module], x: torch.Tensor, y: torch.Tensor) -> dict[str, tuple[float, float]]:
    """Per model: max absolute and max relative (to the largest naive score) difference from
    ``models["naive"]``."""
    with torch.no_grad():
        reference = models["naive"](x, y)
        scale = reference.abs().max().item()
        differences = {name: (model(x, y) - reference).abs().max().item() for name, model in models.items()}
    return {name: (difference, difference / scale) for name, difference in differences.items()}


def benchmark_case(
    batch_size: int,
    num_hidden_layers: int,
    chunk_size: int | None,
    repeats: int,
    input_grad: bool,
    device: str,
) -> list[dict]:
    """Time and measure every variant at one ``(num_hidden_layers, batch_size)``; one row each."""
    case = dict(batch_size=batch_size, num_hidden_layers=num_hidden_layers, input_grad=input_grad, device=device)
    critic, x, y = build_case(**case)
    names = ["naive", "ours"] + (["ours_chunked"] if chunk_size else [])
    models = {name: variant_model(name, critic, chunk_size) for name in names}
    differences = score_differences(models, x, y)
    for name, (max_abs, max_rel) in differences.items():
        if not max_rel <= MAX_RELATIVE_DIFF:
            raise RuntimeError(
                f"{name} and naive scores differ (max abs {max_abs:.3g}, relative {max_rel:.3g} > "
                f"{MAX_RELATIVE_DIFF}) at B={batch_size}, layers={num_hidden_layers}: not the same function"
            )
    synchronize = torch.cuda.synchronize if device.startswith("cuda") else None
    timings = time_side_by_side(
        {name: (lambda m=model, x=x, y=y: training_step(m, x, y)) for name, model in models.items()},
        repeats=repeats, min_sample_seconds=0.2, synchronize=synchronize,
    )
    del models, critic, x, y
    memory_factory = "benchmarks.critic_speed:memory_workload"
    peaks = {name: peak_memory_bytes(memory_factory, dict(case, variant=name, chunk_size=chunk_size), device) for name in names}
    return [
        {
            "num_hidden_layers": num_hidden_layers,
            "batch_size": batch_size,
            "variant": name,
            "chunk_size": chunk_size if name == "ours_chunked" else None,
            "time_ms": timings[name]["median_s"] * 1e3,
            "time_samples_ms": [t * 1e3 for t in timings[name]["samples_s"]],
            "speedup_vs_naive": timings["naive"]["median_s"] / timings[name]["median_s"],
            "peak_mib": peaks[name] / 2**20,
            "memory_saving_vs_naive": peaks["naive"] / max(peaks[name], 1),
            "max_abs_diff": differences[name][0],
            "max_rel_diff": differences[name][1],
        }
        for name in names
    ]


def print_table(rows: list[dict]):
    header = (
        f"{'layers':>6} {'B':>5} {'variant':<16} {'ms':>9} {'naive/this':>10} "
        f"{'peak MiB':>9} {'naive/this':>10} {'max|Δ|':>9} {'rel Δ':>9}"
    )
    print(header)
    print("-" * len(header))
    for r in rows:
        name = r["variant"] + (f"({r['chunk_size']})" if r["chunk_size"] else "")
        print(
            f"{r['num_hidden_layers']:>6} {r['batch_size']:>5} {name:<16} {r['time_ms']:>9.2f} "
            f"{r['speedup_vs_naive']:>9.2f}x {r['peak_mib']:>9.1f} {r['memory_saving_vs_naive']:>9.2f}x "
            f"{r['max_abs_diff']:>9.2e} {r['max_rel_diff']:>9.2e}"
        )


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="B in {64, 128} and 3 repetitions")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=None, help="default 64 128 256 (quick: 64 128)")
    parser.add_argument("--layers", type=int, nargs="+", default=[1, 2], help="hidden-layer counts")
    parser.add_argument("--repeats", type=int, default=None, help="timing rounds (default 7, quick 3)")
    parser.add_argument("--chunk-size", type=int, default=32, help="chunk_size of the extra run at the largest B (0: skip)")
    parser.add_argument("--no-input-grad", action="store_true", help="inputs do not require gradients")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    add_run_arguments(parser)
    return parser.parse_args(argv)


def main(argv=None) -> list[dict]:
    args = parse_args(argv)
    apply_threads(args)
    batch_sizes = args.batch_sizes or ([64, 128] if args.quick else [64, 128, 256])
    repeats = args.repeats or (3 if args.quick else 7)
    rows = []
    for layers in args.layers:
        for batch_size in batch_sizes:
            chunk_size = args.chunk_size if batch_size == max(batch_sizes) and 0 < args.chunk_size < batch_size else None
            rows += benchmark_case(batch_size, layers, chunk_size, repeats, not args.no_input_grad, args.device)
            print_table([r for r in rows if r["num_hidden_layers"] == layers and r["batch_size"] == batch_size])
            print()
    print(f"device={args.device} threads={torch.get_num_threads()} torch={torch.__version__} "
          f"x_dim=y_dim={FEATURE_DIM} hidden={HIDDEN_DIM} input_grad={not args.no_input_grad}")
    print_table(rows)
    meta = {"device": args.device, "threads": torch.get_num_threads(), "torch": torch.__version__,
            "feature_dim": FEATURE_DIM, "hidden_dim": HIDDEN_DIM, "input_grad": not args.no_input_grad,
            "timing": "median of interleaved rounds, same process", "memory": "see benchmarks/_timing.py"}
    write_json(args.json, {"meta": meta, "rows": rows})
    return rows


if __name__ == "__main__":
    main()
