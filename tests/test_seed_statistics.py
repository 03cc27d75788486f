"""Paired statistics over seeds, against scipy's paired t-test."""

import pytest
from scipy import stats

from training.seed_statistics import expected_range, mean_and_std, paired_difference


def test_paired_interval_is_scipys_paired_t_interval():
    first = {0: 0.71, 1: 0.74, 2: 0.69, 3: 0.73, 4: 0.72}
    second = {0: 0.70, 1: 0.71, 2: 0.70, 3: 0.70, 4: 0.69, 9: 0.5}
    result = paired_difference(first, second)
    seeds = [0, 1, 2, 3, 4]
    reference = stats.ttest_rel([first[s] for s in seeds], [second[s] for s in seeds]).confidence_interval(0.95)
    assert result["seeds"] == seeds
    assert result["low"] == pytest.approx(reference.low) and result["high"] == pytest.approx(reference.high)
    assert result["mean"] == pytest.approx(0.018)


def test_one_shared_seed_has_no_interval_and_none_is_an_error():
    assert paired_difference({0: 1.0}, {0: 0.5})["low"] is None
    with pytest.raises(ValueError, match="same seeds"):
        paired_difference({0: 1.0}, {1: 0.5})


def test_mean_std_and_expected_range():
    assert mean_and_std([1.0]) == (1.0, 0.0)
    mean, std = mean_and_std([1.0, 2.0, 3.0])
    assert (mean, std) == (2.0, 1.0)
    assert expected_range(mean, std, bounds=(-10, 10)) == (0.0, 4.0)
    # Accuracies and recalls: clipped to [0, 1] by default.
    assert expected_range(0.99, 0.01) == (0.97, 1.0) and expected_range(0.01, 0.02) == (0.0, 0.05)
    with pytest.raises(ValueError):
        mean_and_std([])
