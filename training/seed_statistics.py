"""Statistics over training seeds: the mean and spread of a metric, and the paired difference
between two objectives trained on the same seeds with its 95% interval.

Pairing matters: two objectives trained on the same seed share the data order, the
initialisation of the backbone and the augmentations, so their difference varies far less
from seed to seed than either metric does. The interval is Student's t over the per-seed
differences (n - 1 degrees of freedom).
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping, Sequence

__all__ = ["mean_and_std", "paired_difference", "expected_range"]


def mean_and_std(values: Sequence[float]) -> tuple[float, float]:
    """The mean and the sample standard deviation (0 for one value)."""
    if not values:
        raise ValueError("no values to summarise")
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def _t_quantile(degrees_of_freedom: int) -> float:
    from scipy.stats import t

    return float(t.ppf(0.975, degrees_of_freedom))


def paired_difference(first: Mapping[int, float], second: Mapping[int, float]) -> dict:
    """``first - second`` over the seeds both have: ``{"mean", "std", "low", "high", "seeds"}``,
    ``low``/``high`` the 95% t-interval of the mean difference (``None`` with one seed)."""
    seeds = sorted(set(first) & set(second))
    if not seeds:
        raise ValueError("the two objectives share no seed: a paired comparison needs the same seeds")
    differences = [first[s] - second[s] for s in seeds]
    mean, std = mean_and_std(differences)
    if len(seeds) < 2:
        return {"mean": mean, "std": std, "low": None, "high": None, "seeds": seeds}
    half_width = _t_quantile(len(seeds) - 1) * std / math.sqrt(len(seeds))
    return {"mean": mean, "std": std, "low": mean - half_width, "high": mean + half_width, "seeds": seeds}


def expected_range(mean: float, std: float, bounds: tuple[float, float] = (0.0, 1.0)) -> tuple[float, float]:
    """The range a new run of the recipe is expected in: the mean ± 2 standard deviations
    over the recorded seeds, within ``bounds`` (an accuracy or a recall lies in [0, 1])."""
    return max(mean - 2 * std, bounds[0]), min(mean + 2 * std, bounds[1])
