import numpy as np
import pytest
import torch

from factorcl_hf.evaluation.probe import latent_decoding_r2, linear_probe_accuracy


def gaussian_features(seed, num_samples=1000, dim=8):
    return np.random.default_rng(seed).standard_normal((num_samples, dim))


def separable_split(seed, num_samples=600, dim=5, margin=0.5):
    """Labels by the sign of a fixed direction, with a gap of ``2·margin`` around the boundary."""
    rng = np.random.default_rng(seed)
    direction = np.ones(dim) / np.sqrt(dim)
    features = rng.standard_normal((num_samples, dim))
    projection = features @ direction
    labels = (projection > 0).astype(np.int64)
    features += np.outer(np.where(labels == 1, margin, -margin), direction)
    return features, labels


def test_separable_data_is_probed_perfectly():
    train_x, train_y = separable_split(0)
    test_x, test_y = separable_split(1)
    assert linear_probe_accuracy(train_x, train_y, test_x, test_y) == 1.0


def test_an_unconverged_probe_is_not_a_warning_per_fit(caplog):
    """Two LBFGS iterations never converge: scikit-learn's ConvergenceWarning (printed
    several times per probe in `make demo`) becomes one debug log line."""
    import warnings

    train_x, train_y = separable_split(0, margin=0.0)
    with warnings.catch_warnings(), caplog.at_level("DEBUG", logger="factorcl_hf.evaluation.probe"):
        warnings.simplefilter("error")
        accuracy = linear_probe_accuracy(train_x, train_y, train_x, train_y, max_iter=2)
    assert 0.5 < accuracy <= 1 and "before converging" in caplog.text


def test_torch_and_numpy_inputs_give_the_same_accuracy():
    train_x, train_y = separable_split(0, margin=0.0)
    test_x, test_y = separable_split(1, margin=0.0)
    from_numpy = linear_probe_accuracy(train_x, train_y, test_x, test_y)
    from_torch = linear_probe_accuracy(
        torch.from_numpy(train_x).float(), torch.from_numpy(train_y), torch.from_numpy(test_x).float(), torch.from_numpy(test_y)
    )
    assert from_numpy == pytest.approx(from_torch, abs=2 / len(test_y))
    # bfloat16 embeddings (mixed-precision models) are accepted too.
    assert linear_probe_accuracy(
        torch.from_numpy(train_x).bfloat16(), torch.from_numpy(train_y), torch.from_numpy(test_x).bfloat16(), torch.from_numpy(test_y)
    ) > 0.95


def test_multiclass_clusters_are_separated():
    rng = np.random.default_rng(0)
    centers = 6.0 * np.eye(3, 4)

    def draw(n):
        labels = rng.integers(0, 3, n)
        return centers[labels] + rng.standard_normal((n, 4)), labels

    (train_x, train_y), (test_x, test_y) = draw(600), draw(300)
    assert linear_probe_accuracy(train_x, train_y, test_x, test_y) > 0.98


def test_random_labels_give_chance_accuracy():
    rng = np.random.default_rng(0)
    train_x, test_x = gaussian_features(1, 1000), gaussian_features(2, 2000)
    accuracy = linear_probe_accuracy(train_x, rng.integers(0, 2, 1000), test_x, rng.integers(0, 2, 2000))
    assert abs(accuracy - 0.5) < 0.05  # 4.5 standard errors at n=2000


def test_test_labels_are_only_used_for_scoring():
    # If the probe never fits on the test split, flipping binary test labels flips its accuracy.
    train_x, train_y = separable_split(0, margin=0.0)
    train_y = np.where(np.random.default_rng(3).random(len(train_y)) < 0.15, 1 - train_y, train_y)
    test_x, test_y = separable_split(1, margin=0.0)
    accuracy = linear_probe_accuracy(train_x, train_y, test_x, test_y)
    assert 0.5 < accuracy < 1.0
    assert linear_probe_accuracy(train_x, train_y, test_x, 1 - test_y) == pytest.approx(1 - accuracy)


def test_standardization_handles_badly_scaled_embeddings():
    train_x, train_y = separable_split(0)
    test_x, test_y = separable_split(1)
    scales = np.array([1e-4, 1e4, 1.0, 1e3, 1e-3])
    assert linear_probe_accuracy(train_x * scales, train_y, test_x * scales, test_y) == 1.0


def test_r2_is_one_for_a_linear_target_and_zero_for_independent_noise():
    train_x, test_x = gaussian_features(0), gaussian_features(1)
    weights = np.random.default_rng(2).standard_normal((8, 3))
    assert latent_decoding_r2(train_x, train_x @ weights, test_x, test_x @ weights) > 0.999
    noise_train, noise_test = gaussian_features(3, dim=3), gaussian_features(4, dim=3)
    assert abs(latent_decoding_r2(train_x, noise_train, test_x, noise_test)) < 0.03


def test_r2_averages_target_columns_uniformly():
    train_x, test_x = gaussian_features(0), gaussian_features(1)
    direction = np.random.default_rng(2).standard_normal(8)
    noise_train, noise_test = gaussian_features(3, dim=1)[:, 0], gaussian_features(4, dim=1)[:, 0]
    # Column 0 decodable, column 1 pure noise: the average is about (1 + 0) / 2.
    train_t = np.stack([train_x @ direction, noise_train], axis=1)
    test_t = np.stack([test_x @ direction, noise_test], axis=1)
    assert latent_decoding_r2(train_x, train_t, test_x, test_t) == pytest.approx(0.5, abs=0.03)
    # A 1-D target is one column.
    assert latent_decoding_r2(torch.from_numpy(train_x), torch.from_numpy(train_t[:, 0]), test_x, test_t[:, 0]) > 0.999


def test_r2_matches_the_definition_for_a_partially_explained_target():
    # target = x·w + independent noise of equal variance: R² = var(x·w) / (var(x·w) + var(noise)) = 0.5.
    train_x, test_x = gaussian_features(0, 4000, 4), gaussian_features(1, 4000, 4)
    weights = np.full(4, 0.5)  # var(x·w) = 1
    train_t = train_x @ weights + gaussian_features(2, 4000, 1)[:, 0]
    test_t = test_x @ weights + gaussian_features(3, 4000, 1)[:, 0]
    assert latent_decoding_r2(train_x, train_t, test_x, test_t) == pytest.approx(0.5, abs=0.04)


FEATURES = np.zeros((4, 3))
LABELS = np.array([0, 1, 0, 1])


@pytest.mark.parametrize(
    "overrides, argument",
    [
        ({"train_features": np.zeros(4)}, "train_features"),
        ({"train_features": np.array([[0.0, np.nan, 0.0]] * 4)}, "train_features"),
        ({"test_features": np.array([[np.inf, 0.0, 0.0]] * 4)}, "test_features"),
        ({"test_features": np.zeros((4, 2))}, "test_features"),
        ({"train_labels": np.array([0, 1, 0])}, "train_labels"),
        ({"train_labels": np.array([0.0, 1.0, 0.0, 1.0])}, "train_labels"),
        ({"train_labels": np.zeros(4, dtype=np.int64)}, "train_labels"),
        ({"test_labels": LABELS[:, None]}, "test_labels"),
        ({"max_iter": 0}, "max_iter"),
    ],
)
def test_probe_rejects_bad_input_naming_the_argument(overrides, argument):
    arguments = dict(train_features=FEATURES, train_labels=LABELS, test_features=FEATURES, test_labels=LABELS)
    arguments.update(overrides)
    with pytest.raises(ValueError, match=f"`{argument}`"):
        linear_probe_accuracy(**arguments)


@pytest.mark.parametrize(
    "overrides, argument",
    [
        ({"train_features": torch.full((4, 3), float("nan"))}, "train_features"),
        ({"train_targets": np.zeros(3)}, "train_targets"),
        ({"train_targets": np.zeros((4, 2, 1))}, "train_targets"),
        ({"test_targets": np.zeros((4, 2))}, "test_targets"),
        ({"test_targets": np.array([0.0, np.nan, 0.0, 0.0])}, "test_targets"),
        ({"test_features": np.zeros((1, 3)), "test_targets": np.zeros(1)}, "test_features"),
        ({"alpha": -1.0}, "alpha"),
    ],
)
def test_r2_rejects_bad_input_naming_the_argument(overrides, argument):
    targets = np.arange(4.0)
    arguments = dict(train_features=FEATURES, train_targets=targets, test_features=FEATURES, test_targets=targets)
    arguments.update(overrides)
    with pytest.raises(ValueError, match=f"`{argument}`"):
        latent_decoding_r2(**arguments)
