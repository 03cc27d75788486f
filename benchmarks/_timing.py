"""Side-by-side timing and peak-memory measurement shared by the benchmarks.

Timing (:func:`time_side_by_side`): every variant runs in the same process, interleaved
round by round (the starting variant rotates each round, so neither always runs first
after the other), several rounds, and the median per-call time is reported. Each sample
repeats the call enough times to last ``min_sample_seconds``, so short calls are not
dominated by timer resolution. On CUDA pass ``synchronize=torch.cuda.synchronize``.

Peak memory (:func:`peak_memory_bytes`): the extra memory one call needs on top of what
already exists (weights, inputs, parameter gradients).

* CUDA: ``torch.cuda.max_memory_allocated`` after ``reset_peak_memory_stats``, minus the
  memory allocated before the call; exact for tensors, measured in-process.
* CPU: Python-level tools (tracemalloc, ``torch.profiler`` summaries) do not see the
  allocations of torch's CPU allocator, so the measurement is the process's resident set.
  Each variant runs in a *fresh subprocess* so earlier variants leave no heap behind. The
  child builds the workload, runs it once (lazy initialization, gradient buffers, thread
  pools), resets the kernel's resident-set high-water mark (``/proc/self/clear_refs``,
  Linux ≥ 4.0), runs it again and reports ``VmHWM − VmRSS-before``. glibc is told to serve
  every block above 128 KiB with ``mmap`` (``MALLOC_MMAP_THRESHOLD_``), so a freed tensor
  leaves the resident set at once and the high-water mark tracks live tensors to page
  granularity. Without ``clear_refs`` (non-Linux) the child skips the warm-up call and
  falls back to the ``ru_maxrss`` delta, which then also counts one-off initialization.
"""

from __future__ import annotations

import importlib
import json
import math
import os
import statistics
import subprocess
import sys
import time
from typing import Callable

_CHILD_FLAG = "--peak-memory-child"
# The child runs `python -m benchmarks._timing` from here, so `benchmarks.*` factories import.
_REPOSITORY = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def median(values: list[float]) -> float:
    """The median of ``values``."""
    return statistics.median(values)


def _calibrate_number(fn: Callable[[], object], min_sample_seconds: float, synchronize) -> int:
    start = time.perf_counter()
    fn()
    synchronize()
    return max(1, math.ceil(min_sample_seconds / max(time.perf_counter() - start, 1e-9)))


def time_side_by_side(
    variants: dict[str, Callable[[], object]],
    repeats: int = 10,
    warmup: int = 1,
    min_sample_seconds: float = 0.05,
    synchronize: Callable[[], None] | None = None,
) -> dict[str, dict]:
    """Time each zero-argument callable in ``variants``, interleaved, ``repeats`` rounds.

    Returns ``{name: {"median_s": seconds per call, "samples_s": [...], "calls_per_sample": n}}``.
    """
    if not variants:
        raise ValueError("`variants` must name at least one callable")
    if repeats < 1:
        raise ValueError(f"`repeats` must be >= 1, got {repeats}")
    synchronize = synchronize or (lambda: None)
    names = list(variants)
    for name in names:
        for _ in range(warmup):
            variants[name]()
    synchronize()
    number = {name: _calibrate_number(variants[name], min_sample_seconds, synchronize) for name in names}
    samples: dict[str, list[float]] = {name: [] for name in names}
    for round_index in range(repeats):
        shift = round_index % len(names)
        for name in names[shift:] + names[:shift]:
            fn = variants[name]
            synchronize()
            start = time.perf_counter()
            for _ in range(number[name]):
                fn()
            synchronize()
            samples[name].append((time.perf_counter() - start) / number[name])
    return {
        name: {"median_s": median(samples[name]), "samples_s": samples[name], "calls_per_sample": number[name]}
        for name in names
    }


def add_run_arguments(parser) -> None:
    """The flags every benchmark shares: ``--threads`` and ``--json``."""
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--json", default=None, metavar="OUT", help="also write the results to this JSON file")


def apply_threads(args) -> None:
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)


def write_json(path: str | None, payload: dict) -> None:
    """Write ``payload`` to ``path`` (creating its folder); nothing when ``path`` is None."""
    if not path:
        return
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as f:
        json.dump(payload, f, indent=2)


def _load_factory(reference: str) -> Callable[..., Callable[[], object]]:
    module_name, _, function_name = reference.rpartition(":")
    if not module_name or not function_name:
        raise ValueError(f"`factory` must be 'package.module:function', got {reference!r}")
    return getattr(importlib.import_module(module_name), function_name)


def peak_memory_bytes(factory: str, kwargs: dict, device: str = "cpu") -> int:
    """Peak extra memory of one call of ``step = factory(**kwargs)`` (see the module docstring).

    ``factory`` is ``"package.module:function"`` (e.g. ``"benchmarks.objective_step:memory_workload"``,
    imported from the repository root); the function builds the workload (model,
    inputs) and returns the zero-argument ``step`` to measure. ``kwargs`` must be
    JSON-serializable, because on CPU they travel to a fresh subprocess.
    """
    if device.startswith("cuda"):
        import torch

        step = _load_factory(factory)(**kwargs)
        step()  # gradient buffers and cuBLAS workspaces belong to the baseline, not the call
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
        step()
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() - before
    if device != "cpu":
        raise ValueError(f"`device` must be 'cpu' or 'cuda[:N]', got {device!r}")
    import torch

    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="131072", OMP_NUM_THREADS=str(torch.get_num_threads()))
    payload = json.dumps({"factory": factory, "kwargs": kwargs})
    result = subprocess.run(
        [sys.executable, "-m", "benchmarks._timing", _CHILD_FLAG, payload],
        cwd=_REPOSITORY, env=env, capture_output=True, text=True, check=False,
    )
    if result.returncode != 0:
        raise RuntimeError(f"peak-memory subprocess for {factory} {kwargs} failed:\n{result.stderr}")
    return int(json.loads(result.stdout.strip().splitlines()[-1])["peak_bytes"])


def _proc_status_bytes(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024  # reported in kB
    raise RuntimeError(f"/proc/self/status has no {field}")


def _reset_peak_rss() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # "5" resets the resident-set high-water mark
        return True
    except OSError:
        return False


def _child_main(payload: str):
    spec = json.loads(payload)
    import torch

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", torch.get_num_threads())))
    step = _load_factory(spec["factory"])(**spec["kwargs"])
    if _reset_peak_rss():  # also probes whether the high-water mark can be reset at all
        step()
        _reset_peak_rss()
        before = _proc_status_bytes("VmRSS")
        step()
        print(json.dumps({"peak_bytes": _proc_status_bytes("VmHWM") - before}))
        return
    import resource  # POSIX only; the fallback path

    scale = 1 if sys.platform == "darwin" else 1024  # ru_maxrss: bytes on macOS, kB elsewhere
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    step()
    print(json.dumps({"peak_bytes": (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) * scale}))


if __name__ == "__main__":
    if len(sys.argv) != 3 or sys.argv[1] != _CHILD_FLAG:
        sys.exit(f"usage: {sys.argv[0]} {_CHILD_FLAG} JSON (internal: used by peak_memory_bytes)")
    _child_main(sys.argv[2])
