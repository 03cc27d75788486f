"""RandomFeatureRidge: the closed-form conditional expectation behind the closed-form
factorization, checked against independent computations (the Gaussian kernel, scikit-learn's
ridge regression on the same features)."""

import math

import numpy as np
import pytest
import torch
from sklearn.linear_model import Ridge

from factorcl_hf.conditional_mean import RandomFeatureRidge


def test_random_features_approximate_the_gaussian_kernel():
    regression = RandomFeatureRidge(3, 1, num_features=20000, seed=0)
    regression.bandwidth.fill_(1.5)
    x = torch.randn(6, 3, dtype=torch.float64)
    phi = regression.double().features(x)
    exact = torch.exp(-torch.cdist(x, x).square() / (2 * 1.5**2))
    assert torch.allclose(phi @ phi.T, exact, atol=0.03)


def test_fit_is_scikit_learns_ridge_on_the_same_features():
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(300, 4, generator=generator, dtype=torch.float64)
    y = torch.stack([x[:, 0].sin(), x[:, 1] * x[:, 2]], dim=1)
    regression = RandomFeatureRidge(4, 2, num_features=64, ridge=0.05, bandwidth_scale=1.3, seed=3).double().fit(x, y)
    features = regression.features(x).numpy()
    centred = features - features.mean(0)
    # Our penalty is `ridge` times the mean feature variance on the averaged normal equations.
    alpha = 0.05 * (centred**2).mean(0).mean() * len(x)
    reference = Ridge(alpha=alpha).fit(features, y.numpy())
    assert np.allclose(regression(x).numpy(), reference.predict(features), atol=1e-8)
    # The bandwidth is the scale times the median distance between inputs.
    distances = torch.cdist(x, x)[~torch.eye(len(x), dtype=torch.bool)]
    assert float(regression.bandwidth) == pytest.approx(1.3 * float(distances.median()))


def test_prediction_is_the_conditional_mean_not_the_noise():
    """y = f(x_0) + noise independent of x_1: the fit recovers f and ignores x_1."""
    generator = torch.Generator().manual_seed(1)
    x = torch.rand(4000, 2, generator=generator, dtype=torch.float64) * 4 - 2
    signal = torch.tanh(2 * x[:, :1])
    y = signal + 0.5 * torch.randn(4000, 1, generator=generator, dtype=torch.float64)
    # Half the median distance: the kernel must resolve the steepness of tanh(2 x).
    regression = RandomFeatureRidge(2, 1, num_features=256, ridge=1e-3, bandwidth_scale=0.5, seed=0).double().fit(x, y)
    grid = torch.linspace(-1.5, 1.5, 7, dtype=torch.float64)
    for x1 in (-1.5, 0.0, 1.5):
        inputs = torch.stack([grid, torch.full_like(grid, x1)], dim=1)
        assert torch.allclose(regression(inputs)[:, 0], torch.tanh(2 * grid), atol=0.15)


def test_unfitted_predicts_zero_and_reset_forgets_a_fit():
    regression = RandomFeatureRidge(2, 3, num_features=16, seed=5)
    x = torch.randn(10, 2)
    assert not bool(regression.fitted) and torch.equal(regression(x), torch.zeros(10, 3))
    frequencies = regression.frequencies.clone()
    regression.fit(x, torch.randn(10, 3))
    assert bool(regression.fitted) and regression(x).abs().sum() > 0
    regression.reset_parameters()
    assert not bool(regression.fitted) and torch.equal(regression.frequencies, frequencies)


@pytest.mark.parametrize("bad", [dict(ridge=0), dict(bandwidth_scale=-1.0)])
def test_settings_are_checked(bad):
    with pytest.raises(ValueError, match=next(iter(bad))):
        RandomFeatureRidge(2, 2, **bad)


def test_fit_refuses_misshapen_data():
    regression = RandomFeatureRidge(2, 1)
    with pytest.raises(ValueError, match="same N"):
        regression.fit(torch.randn(5, 2), torch.randn(4, 1))
    with pytest.raises(ValueError, match="at least 2 rows"):
        regression.fit(torch.randn(1, 2), torch.randn(1, 1))


def test_the_phases_and_frequencies_depend_only_on_the_seed():
    a, b = RandomFeatureRidge(3, 1, seed=7), RandomFeatureRidge(3, 1, seed=7)
    assert torch.equal(a.frequencies, b.frequencies) and torch.equal(a.phases, b.phases)
    assert not torch.equal(a.phases, RandomFeatureRidge(3, 1, seed=8).phases)
    assert 0 <= float(a.phases.min()) and float(a.phases.max()) < 2 * math.pi
