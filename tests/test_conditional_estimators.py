"""Conditional InfoNCE / CLUB by conditional negatives, against loop references and against
jointly Gaussian (A, B | C), whose conditional MI has a closed form."""

import math

import pytest
import torch

from experiments.conditional_mi import DIM, gaussian_triples, optimal_scores
from factorcl_hf.estimators import (
    ConcatCritic,
    NCECLUBEstimator,
    class_negatives,
    club_upper_bound,
    fit_critic,
    infonce_lower_bound,
    kernel_negatives,
    negative_log_weights,
)


def loop_infonce(s, w):
    n = len(s)
    return sum(s[i][i] - math.log(sum(w[i][j] * math.exp(s[i][j]) for j in range(n))) for i in range(n)) / n


def loop_club(s, w):
    n = len(s)
    return sum(s[i][i] - sum(w[i][j] * s[i][j] for j in range(n)) for i in range(n)) / n


def test_class_negatives_draw_uniformly_within_the_class():
    labels = torch.tensor([0, 1, 0, 2, 0, 1])
    w = class_negatives(labels).exp()
    for i in range(6):
        for j in range(6):
            expected = float(labels[i] == labels[j]) / int((labels == labels[i]).sum())
            assert w[i, j].item() == pytest.approx(expected)


def test_kernel_negatives_are_a_gaussian_kernel_normalized_per_row():
    condition = torch.randn(7, 3, generator=torch.Generator().manual_seed(0))
    w = kernel_negatives(condition, bandwidth=0.8).exp()
    k = torch.tensor([[math.exp(-float(((condition[i] - condition[j]) ** 2).sum()) / (2 * 0.8**2)) for j in range(7)]
                      for i in range(7)])
    torch.testing.assert_close(w, k / k.sum(1, keepdim=True))
    with pytest.raises(ValueError, match="bandwidth"):
        kernel_negatives(condition, bandwidth=0.0)


def test_median_bandwidth_keeps_negatives_where_silverman_collapses_onto_the_diagonal():
    condition = torch.randn(64, 256, generator=torch.Generator().manual_seed(0))
    assert kernel_negatives(condition).exp().diagonal().min() > 0.99  # Silverman, 256 dims
    median = kernel_negatives(condition, bandwidth="median").exp()
    assert median.diagonal().max() < 0.2  # several negatives per row


@pytest.mark.parametrize("sampler", ["class", "kernel", "median_kernel"])
def test_weighted_bounds_match_loops_and_uniform_weights_change_nothing(sampler):
    g = torch.Generator().manual_seed(1)
    s = torch.randn(9, 9, generator=g)
    condition = torch.randint(0, 3, (9,), generator=g) if sampler == "class" else torch.randn(9, 2, generator=g)
    log_w = negative_log_weights(sampler, condition)
    w = log_w.exp().tolist()
    assert infonce_lower_bound(s, log_w).item() == pytest.approx(loop_infonce(s.tolist(), w), abs=1e-5)
    assert club_upper_bound(s, log_w).item() == pytest.approx(loop_club(s.tolist(), w), abs=1e-5)
    uniform = torch.full((9, 9), -math.log(9))
    torch.testing.assert_close(infonce_lower_bound(s, uniform), infonce_lower_bound(s))
    torch.testing.assert_close(club_upper_bound(s, uniform), club_upper_bound(s))
    with pytest.raises(ValueError, match="log_weights"):
        infonce_lower_bound(s, log_w[:3])
    with pytest.raises(ValueError, match="negatives"):
        negative_log_weights("nearest", condition)


# ---- jointly Gaussian (A, B) given C (experiments/conditional_mi.py) ----------------------
@pytest.mark.parametrize("mi", [0.5, 1.0, 2.0])
@pytest.mark.parametrize("discrete", [True, False], ids=["class", "kernel"])
def test_conditional_infonce_with_the_optimal_critic_recovers_the_closed_form(mi, discrete):
    a, b, c, rho = gaussian_triples(1024, mi, discrete, torch.Generator().manual_seed(0))
    scores = optimal_scores(a, b, c, rho)
    log_w = class_negatives(c.long()) if discrete else kernel_negatives(c[:, None])
    estimate = infonce_lower_bound(scores, log_w).item()
    assert estimate == pytest.approx(mi, abs=0.2)
    # Negatives from every row measure something else: they differ from the anchor in C too.
    assert abs(infonce_lower_bound(scores).item() - mi) > 0.5


@pytest.mark.slow
@pytest.mark.parametrize("mi", [0.5, 1.0, 2.0])
@pytest.mark.parametrize("discrete", [True, False], ids=["class", "kernel"])
def test_fitted_critic_with_conditional_negatives_estimates_the_conditional_mi(mi, discrete):
    """A concat critic on ([a; c], b), trained by conditional InfoNCE and evaluated on held-out
    data, is within 0.2 nats of I(A; B | C); the same critic with negatives from every row
    reads I(A; B), far above it."""
    torch.manual_seed(0)
    generator = torch.Generator().manual_seed(1)
    sampler = "class" if discrete else "kernel"
    a, b, c, _ = gaussian_triples(8192, mi, discrete, generator)
    x = torch.cat([a, c[:, None]], 1)
    condition = c.long() if discrete else c[:, None]
    estimator = NCECLUBEstimator(ConcatCritic(DIM + 1, DIM, hidden_dim=64), negatives=sampler)
    fit_critic(estimator.critic, x, b, steps=400, learning_rate=3e-3, batch_size=256, generator=generator,
               condition=condition, negatives=sampler)
    a, b, c, _ = gaussian_triples(2048, mi, discrete, generator)
    x, condition = torch.cat([a, c[:, None]], 1), (c.long() if discrete else c[:, None])
    with torch.no_grad():
        estimate = torch.stack([estimator.infonce(x[r], b[r], condition[r]) for r in torch.arange(2048).split(512)])
    assert estimate.mean().item() == pytest.approx(mi, abs=0.2)
