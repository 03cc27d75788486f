"""The largest batch whose FactorCL objective step fits in a memory budget: ours vs naive.

The step is ``objective_step.py``'s (heads, the six terms, the CLUB critics' update, both
optimizers) on 512-d backbone features; ``ours`` uses row-chunked critics
(``critic_chunk_size``), ``naive`` the reference design's tiled critics. Each probe runs in a
fresh subprocess and reports its peak extra memory (``_timing.peak_memory_bytes``; on CPU
the resident-set high-water mark). The search doubles the batch from ``--min-batch`` until
a probe does not fit (or ``--max-batch`` is reached), then bisects until the bracket is
within ``--resolution`` of the fitting size.

So that a probe far over the budget cannot exhaust the machine, each probe's address space
is capped at its starting size plus twice the budget: an allocation past that fails, and the
probe counts as not fitting.

Run::

    python -m benchmarks.max_batch --threads 1                      # 4 GiB, FactorCL-SUP, B <= 1024
    python -m benchmarks.max_batch --budget-gib 24 --min-batch 1024 --max-batch 1024 --variants ours
    python -m benchmarks.max_batch --smoke
"""

from __future__ import annotations

import argparse

import torch

from benchmarks._timing import add_run_arguments, apply_threads, peak_memory_bytes, write_json
from benchmarks.objective_step import OBJECTIVES, VARIANTS, Trainer, build_case

OUT_OF_MEMORY_MARKERS = ("can't allocate memory", "MemoryError", "bad_alloc", "out of memory")


def _address_space_bytes() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmSize:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("/proc/self/status has no VmSize")


def probe_workload(variant: str, address_space_limit_bytes: int | None = None, **case_kwargs):
    """Factory for :func:`benchmarks._timing.peak_memory_bytes` (runs in the probe's
    subprocess): caps the address space, builds the case, returns the step."""
    if address_space_limit_bytes:
        import resource

        limit = _address_space_bytes() + address_space_limit_bytes
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    model, inputs = build_case(**case_kwargs)
    return Trainer(variant, model, inputs).step


def probe(variant: str, batch_size: int, budget_bytes: int, device: str, **case_kwargs) -> int | None:
    """Peak extra bytes of one step at ``batch_size``, or ``None`` when it ran out of memory."""
    factory = "benchmarks.max_batch:probe_workload"
    kwargs = dict(case_kwargs, variant=variant, batch_size=batch_size, device=device)
    if device == "cpu":
        kwargs["address_space_limit_bytes"] = 2 * budget_bytes
    try:
        return peak_memory_bytes(factory, kwargs, device)
    except RuntimeError as error:
        if any(marker in str(error) for marker in OUT_OF_MEMORY_MARKERS):
            if device.startswith("cuda"):
                torch.cuda.empty_cache()
            return None
        raise


def largest_batch(
    variant: str,
    budget_bytes: int,
    min_batch: int,
    max_batch: int,
    resolution: float,
    device: str,
    on_probe=None,
    **case_kwargs,
) -> tuple[int | None, list[dict]]:
    """Doubling then bisection; returns the largest fitting batch size (``None`` if even
    ``min_batch`` does not fit) and every probe as ``{"batch_size", "peak_mib", "fits"}``."""
    if not 2 <= min_batch <= max_batch:
        raise ValueError(f"need 2 <= `min_batch` <= `max_batch`, got {min_batch} and {max_batch}")
    probes: list[dict] = []

    def fits(batch_size: int) -> bool:
        peak = probe(variant, batch_size, budget_bytes, device, **case_kwargs)
        record = {
            "variant": variant,
            "batch_size": batch_size,
            "peak_mib": None if peak is None else peak / 2**20,
            "fits": peak is not None and peak <= budget_bytes,
        }
        probes.append(record)
        if on_probe:
            on_probe(record)
        return record["fits"]

    if not fits(min_batch):
        return None, probes
    low, high = min_batch, None
    while high is None and low < max_batch:
        candidate = min(2 * low, max_batch)
        if fits(candidate):
            low = candidate
        else:
            high = candidate
    while high is not None and high - low > max(1, resolution * low):
        middle = (low + high) // 2
        if fits(middle):
            low = middle
        else:
            high = middle
    return low, probes


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--objective", default="factorcl_sup", choices=OBJECTIVES)
    parser.add_argument("--budget-gib", type=float, default=4.0, help="memory budget of one step (GiB)")
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=VARIANTS)
    parser.add_argument("--min-batch", type=int, default=None, help="first probe (default 64, smoke 4)")
    parser.add_argument("--max-batch", type=int, default=None, help="largest batch tried (default 1024, smoke 4)")
    parser.add_argument("--resolution", type=float, default=0.25, help="stop bisecting within this fraction")
    parser.add_argument("--chunk-size", type=int, default=64, help="critic_chunk_size of ours")
    parser.add_argument("--smoke", action="store_true", help="tiny sizes and budget: seconds")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    add_run_arguments(parser)
    return parser.parse_args(argv)


def main(argv=None) -> dict:
    args = parse_args(argv)
    apply_threads(args)
    budget = int(args.budget_gib * 2**30)
    min_batch = args.min_batch or (4 if args.smoke else 64)
    max_batch = args.max_batch or (4 if args.smoke else 1024)
    sizes = dict(feature_dim=16, critic_hidden_dim=16, head_dim=8, head_hidden_dim=16) if args.smoke else {}
    print(f"{'variant':<8} {'B':>6} {'peak MiB':>10} fits {args.budget_gib:g} GiB")

    def show(record):
        peak = "OOM" if record["peak_mib"] is None else f"{record['peak_mib']:.1f}"
        print(f"{record['variant']:<8} {record['batch_size']:>6} {peak:>10} {'yes' if record['fits'] else 'no'}", flush=True)

    results, probes = {}, []
    for variant in args.variants:
        chunk = {"critic_chunk_size": args.chunk_size} if variant == "ours" else {}
        best, variant_probes = largest_batch(
            variant, budget, min_batch, max_batch, args.resolution, args.device, on_probe=show,
            objective=args.objective, **sizes, **chunk,
        )
        results[variant] = best
        probes += variant_probes
    print(f"\ndevice={args.device} threads={torch.get_num_threads()} objective={args.objective} "
          f"budget={args.budget_gib:g} GiB chunk_size(ours)={args.chunk_size} search={min_batch}..{max_batch}")
    for variant, best in results.items():
        capped = " (the search cap)" if best == max_batch else ""
        print(f"largest batch, {variant}: {best}{capped}")
    if results.get("ours") and results.get("naive"):
        print(f"ours / naive: {results['ours'] / results['naive']:.2f}x")
    summary = {"meta": {**vars(args), "torch": torch.__version__, "threads": torch.get_num_threads()},
               "largest_batch": results, "probes": probes}
    write_json(args.json, summary)
    return summary


if __name__ == "__main__":
    main()
