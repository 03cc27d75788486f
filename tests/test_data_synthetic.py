import numpy as np
import pytest
import torch

from factorcl_hf.evaluation.probe import latent_decoding_r2, linear_probe_accuracy
from factorcl_hf.research.synthetic import LATENT_VARIANCE, SyntheticConfig, bayes_accuracy, make_synthetic

NUM_SAMPLES = 4000  # 3200 train / 800 test: a chance-level probe scores 0.5 ± 0.018


@pytest.fixture(scope="module")
def shared_only():
    return make_synthetic(num_samples=NUM_SAMPLES, unique_share=0.0, seed=3)


@pytest.fixture(scope="module")
def unique_only():
    return make_synthetic(num_samples=NUM_SAMPLES, unique_share=1.0, seed=3)


def latents(split, *names):
    return torch.cat([split.latents[name] for name in names], dim=1)


def probe_on_latents(data, *names):
    return linear_probe_accuracy(
        latents(data.train, *names), data.train.labels, latents(data.test, *names), data.test.labels
    )


def test_shapes_dtypes_and_split_sizes():
    data = make_synthetic(num_samples=500, test_fraction=0.2, shared_dim=4, unique_dims=(3, 5), modality_dim=20)
    assert (len(data.train), len(data.test)) == (400, 100)
    for split, n in ((data.train, 400), (data.test, 100)):
        assert split.x1.shape == split.x2.shape == (n, 20)
        assert split.x1.dtype == split.x2.dtype == torch.float32
        assert split.labels.shape == (n,) and split.labels.dtype == torch.long
        assert {name: tuple(t.shape) for name, t in split.latents.items()} == {
            "shared": (n, 4),
            "unique1": (n, 3),
            "unique2": (n, 5),
        }
        assert all(t.dtype == torch.float32 for t in split.latents.values())
    assert [tuple(m.shape) for m in data.modality_maps] == [(7, 20), (9, 20)]


def test_modalities_are_their_latents_through_the_fixed_maps():
    data = make_synthetic(num_samples=300, seed=5)
    for split in (data.train, data.test):
        x1 = latents(split, "shared", "unique1") @ data.modality_maps[0]
        x2 = latents(split, "shared", "unique2") @ data.modality_maps[1]
        torch.testing.assert_close(split.x1, x1, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(split.x2, x2, atol=1e-5, rtol=1e-5)


def test_latents_are_independent_gaussians_with_the_paper_variance(shared_only):
    all_latents = latents(shared_only.train, "shared", "unique1", "unique2").double()
    assert all_latents.mean(0).abs().max() < 0.06  # 4 standard errors at n=3200, var 0.5
    covariance = torch.cov(all_latents.T)
    assert torch.allclose(covariance.diagonal(), torch.full((22,), LATENT_VARIANCE, dtype=torch.double), atol=0.06)
    off_diagonal = covariance - torch.diag(covariance.diagonal())
    assert off_diagonal.abs().max() < 0.06


def test_same_seed_same_data_other_seed_other_maps():
    first, second = make_synthetic(num_samples=200, seed=1), make_synthetic(num_samples=200, seed=1)
    for name in ("train", "test"):
        a, b = getattr(first, name), getattr(second, name)
        assert torch.equal(a.x1, b.x1) and torch.equal(a.x2, b.x2) and torch.equal(a.labels, b.labels)
    other = make_synthetic(num_samples=200, seed=2)
    assert not torch.allclose(first.modality_maps[0], other.modality_maps[0])
    assert not torch.allclose(first.train.latents["shared"], other.train.latents["shared"])


def test_unique_share_sweep_keeps_observations_and_changes_only_labels(shared_only, unique_only):
    assert torch.equal(shared_only.train.x1, unique_only.train.x1)
    assert torch.equal(shared_only.test.x2, unique_only.test.x2)
    assert not torch.equal(shared_only.train.labels, unique_only.train.labels)


def test_config_round_trips_through_a_plain_dict():
    data = make_synthetic(num_samples=300, unique_share=0.3, seed=7, num_labels=3)
    config_dict = data.config.to_dict()
    assert config_dict["unique_dims"] == [6, 6]
    rebuilt = make_synthetic(**config_dict)
    assert rebuilt.config == data.config
    assert torch.equal(rebuilt.train.x1, data.train.x1) and torch.equal(rebuilt.test.labels, data.test.labels)


def test_train_and_test_are_disjoint():
    data = make_synthetic(num_samples=600)
    train, test = latents(data.train, "shared", "unique1", "unique2"), latents(data.test, "shared", "unique1", "unique2")
    # Continuous latents: any shared sample would show up as a zero distance.
    assert torch.cdist(test, train).min() > 1e-3
    assert len(data.train) + len(data.test) == 600


@pytest.mark.parametrize("num_labels", [2, 4])
def test_classes_are_balanced(num_labels):
    data = make_synthetic(num_samples=4000, unique_share=0.5, num_labels=num_labels)
    counts = torch.bincount(torch.cat([data.train.labels, data.test.labels]), minlength=num_labels).double()
    assert counts.numel() == num_labels
    expected = 4000 / num_labels
    assert (counts - expected).abs().max() < 5 * (expected * (1 - 1 / num_labels)) ** 0.5


def test_shared_only_label_comes_from_shared_latents(shared_only):
    assert probe_on_latents(shared_only, "shared") > 0.9
    assert probe_on_latents(shared_only, "unique1", "unique2") < 0.58


def test_unique_only_label_needs_both_unique_blocks(unique_only):
    both = probe_on_latents(unique_only, "unique1", "unique2")
    assert both > 0.9
    assert probe_on_latents(unique_only, "shared") < 0.58
    # Each modality alone sees only half the unique evidence.
    assert probe_on_latents(unique_only, "unique1") < both - 0.1
    assert probe_on_latents(unique_only, "unique2") < both - 0.1


def test_mixed_label_needs_shared_and_unique_latents():
    mixed = make_synthetic(num_samples=NUM_SAMPLES, unique_share=0.5, seed=3)
    everything = probe_on_latents(mixed, "shared", "unique1", "unique2")
    assert everything > probe_on_latents(mixed, "shared") + 0.05
    assert everything > probe_on_latents(mixed, "unique1", "unique2") + 0.05


def test_each_modality_holds_its_own_latents_and_nothing_of_the_other(shared_only):
    train, test = shared_only.train, shared_only.test

    def r2(modality, latent):
        return latent_decoding_r2(
            getattr(train, modality), train.latents[latent], getattr(test, modality), test.latents[latent]
        )

    assert r2("x1", "shared") > 0.99 and r2("x1", "unique1") > 0.99
    assert r2("x2", "shared") > 0.99 and r2("x2", "unique2") > 0.99
    assert abs(r2("x1", "unique2")) < 0.05
    assert abs(r2("x2", "unique1")) < 0.05


def test_loader_batches_and_epoch_coverage():
    data = make_synthetic(num_samples=250, test_fraction=0.2)
    batches = list(data.loader("train", batch_size=64, seed=0))
    assert set(batches[0]) == {"x1", "x2", "labels"}
    assert batches[0]["x1"].shape == (64, 100) and batches[0]["labels"].dtype == torch.long
    seen = torch.cat([b["x1"] for b in batches])
    assert seen.shape == data.train.x1.shape
    # A shuffled epoch is a permutation of the train split: same rows, other order.
    assert torch.equal(seen[seen[:, 0].argsort()], data.train.x1[data.train.x1[:, 0].argsort()])
    assert not torch.equal(seen, data.train.x1)
    again = torch.cat([b["x1"] for b in data.loader("train", batch_size=64, seed=0)])
    assert torch.equal(seen, again)
    test_rows = torch.cat([b["x2"] for b in data.loader("test", batch_size=16)])
    assert torch.equal(test_rows, data.test.x2)  # evaluation order is the stored order
    assert sum(len(b["labels"]) for b in data.loader("train", batch_size=64, drop_last=True)) == 192


@pytest.mark.parametrize(
    "kwargs, argument",
    [
        ({"unique_share": 1.5}, "unique_share"),
        ({"unique_share": -0.1}, "unique_share"),
        ({"num_samples": 1}, "num_samples"),
        ({"test_fraction": 1.0}, "test_fraction"),
        ({"num_samples": 4, "test_fraction": 0.05}, "test_fraction"),
        ({"seed": -1}, "seed"),
        ({"shared_dim": 0}, "shared_dim"),
        ({"unique_dims": (6,)}, "unique_dims"),
        ({"unique_dims": (6, 0)}, "unique_dims"),
        ({"modality_dim": 15}, "modality_dim"),
        ({"num_labels": 1}, "num_labels"),
        ({"label_noise": -0.1}, "label_noise"),
        ({"label_noise": float("nan")}, "label_noise"),
    ],
)
def test_bad_arguments_raise_naming_the_argument(kwargs, argument):
    with pytest.raises(ValueError, match=f"`{argument}`"):
        make_synthetic(**kwargs)


def test_bad_loader_arguments():
    data = make_synthetic(num_samples=50)
    with pytest.raises(ValueError, match="`split`"):
        data.loader("validation")
    with pytest.raises(ValueError, match="`batch_size`"):
        data.loader("train", batch_size=0)


def test_config_accepts_list_unique_dims_from_yaml():
    assert SyntheticConfig(unique_dims=[3, 4]).unique_dims == (3, 4)
    assert np.isclose(SyntheticConfig().to_dict()["unique_share"], 0.5)


# ------------------------------------------------------------------ the Bayes ceiling
def _binary_bayes_by_quadrature(unique_share, label_noise):
    """E[Phi(|h| / s)] by adaptive quadrature: for two symmetric classes the best rule is
    sign(h), right with probability Phi(|h| / s). Independent of the Monte Carlo estimator."""
    from scipy import integrate, stats

    tanh_std = np.sqrt(integrate.quad(lambda t: np.tanh(t) ** 2 * stats.norm.pdf(t), -12, 12)[0])

    def psi(t):
        return np.tanh(t) / tanh_std

    def right(h):
        return stats.norm.cdf(abs(h) / label_noise)

    if unique_share == 0.0:
        # The integrand changes within ~label_noise of h = 0, i.e. of z = 0: tell quad so.
        return integrate.quad(lambda z: right(psi(z)) * stats.norm.pdf(z), -10, 10, points=[0.0], limit=200)[0]
    assert unique_share == 1.0

    def inner(z2):
        return integrate.quad(
            lambda z1: right((psi(z1) + psi(z2)) / np.sqrt(2.0)) * stats.norm.pdf(z1),
            -9, 9, points=[-z2], limit=200,
        )[0]

    # Averaging over z1 smooths the kink away, so the outer integral suits Gauss-Hermite.
    nodes, weights = np.polynomial.hermite_e.hermegauss(40)
    return float(sum(w * inner(z2) for z2, w in zip(nodes, weights)) / weights.sum())


@pytest.mark.parametrize("unique_share", [0.0, 1.0])
def test_bayes_accuracy_matches_quadrature(unique_share):
    expected = _binary_bayes_by_quadrature(unique_share, label_noise=0.1)
    assert bayes_accuracy(unique_share, label_noise=0.1, num_draws=1 << 21) == pytest.approx(expected, abs=3e-4)


def test_bayes_accuracy_limits_and_monotonicity():
    assert bayes_accuracy(0.5, label_noise=0.0) == 1.0
    # Overwhelming noise: no classifier beats the largest (here: every) class's share.
    assert bayes_accuracy(0.5, label_noise=1e3, num_labels=4, num_draws=1 << 16) == pytest.approx(0.25, abs=2e-3)
    noisier = [bayes_accuracy(1.0, label_noise=s, num_draws=1 << 18) for s in (0.05, 0.1, 0.3, 1.0)]
    assert noisier == sorted(noisier, reverse=True)


def test_bayes_accuracy_bounds_what_the_latents_give(unique_only):
    """A probe on all latents (what both modalities carry) cannot beat the ceiling by more
    than its test-set noise (800 test samples: std ~0.007)."""
    probe = probe_on_latents(unique_only, "shared", "unique1", "unique2")
    assert probe <= bayes_accuracy(1.0) + 0.02


@pytest.mark.parametrize(
    "kwargs, argument",
    [({"unique_share": 1.5}, "unique_share"), ({"label_noise": -1.0}, "label_noise"), ({"num_labels": 1}, "num_labels")],
)
def test_bayes_accuracy_rejects_bad_arguments(kwargs, argument):
    with pytest.raises(ValueError, match=argument):
        bayes_accuracy(**{"unique_share": 0.5, **kwargs})
