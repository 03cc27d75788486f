"""Controlled two-modality data with known shared and unique information (FactorCL paper §4.1).

Three independent Gaussian latent blocks, each ``N(0, 0.5·I)``:

* ``shared``  (``shared_dim``)      — seen by both modalities,
* ``unique1`` (``unique_dims[0]``)  — seen only by ``x1``,
* ``unique2`` (``unique_dims[1]``)  — seen only by ``x2``.

Each modality is its latents through its own fixed random linear map (drawn once per seed)::

    x1 = [shared; unique1] @ A1        x2 = [shared; unique2] @ A2        A_i: [k_i, modality_dim]

Because ``modality_dim >= k_i`` the maps are injective (almost surely), so ``x1`` determines
``shared`` and ``unique1`` linearly and carries nothing about ``unique2``.

The label rule. Fixed random unit directions (per seed) read one standard-normal scalar out
of each block: ``z_s = a·shared / sqrt(0.5)``, ``z_1 = b1·unique1 / sqrt(0.5)``,
``z_2 = b2·unique2 / sqrt(0.5)``. With ``psi(t) = tanh(t) / std(tanh(Z))`` (a saturating
nonlinearity rescaled to unit variance)::

    g = psi(z_s)                                  shared evidence, variance 1
    h = (psi(z_1) + psi(z_2)) / sqrt(2)           unique evidence, variance 1, needs BOTH modalities
    score = sqrt(1 - u)·g + sqrt(u)·h + label_noise·eps       eps ~ N(0, 1)

where ``u = unique_share`` is therefore exactly the fraction of the noiseless score's variance
that comes from unique latents: ``u = 0`` labels from shared latents only, ``u = 1`` from
unique latents only (and then either modality alone sees only half of the evidence). The
label is the bin of ``score`` among ``num_labels`` equal-probability bins (binary: its sign),
so classes are balanced for every ``u``. The saturation makes the decision boundary
nonlinear in the latents whenever shared and unique evidence are mixed.

Samples are i.i.d., so the split is simply the first ``1 - test_fraction`` of the draw for
training and the rest for testing: disjoint, made once, and nothing about it is needed to
train.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

__all__ = [
    "SyntheticConfig",
    "SyntheticSplit",
    "SyntheticSplits",
    "make_synthetic",
    "bayes_accuracy",
    "LATENT_VARIANCE",
]

# Paper §4.1: every latent coordinate is N(0, 0.5).
LATENT_VARIANCE = 0.5

LATENT_NAMES = ("shared", "unique1", "unique2")

# The bin edges of the score depend only on (unique_share, label_noise, num_labels), not on the
# seed, so they come from one fixed reference draw rather than from the generated samples
# (labels must not depend on which other samples happen to be in the data set).
_REFERENCE_SEED = 20231110
_REFERENCE_SIZE = 1 << 17


def _unit_variance_tanh_scale() -> float:
    """std(tanh(Z)) for Z ~ N(0, 1), by Gauss–Hermite quadrature (exact to float precision)."""
    nodes, weights = np.polynomial.hermite_e.hermegauss(100)
    return float(math.sqrt(np.sum(weights * np.tanh(nodes) ** 2) / np.sum(weights)))


_TANH_STD = _unit_variance_tanh_scale()


def _psi(t: np.ndarray) -> np.ndarray:
    return np.tanh(t) / _TANH_STD


def _label_score(z_shared, z_unique1, z_unique2, noise, unique_share: float, label_noise: float) -> np.ndarray:
    shared_evidence = _psi(z_shared)
    unique_evidence = (_psi(z_unique1) + _psi(z_unique2)) / math.sqrt(2.0)
    return (
        math.sqrt(1.0 - unique_share) * shared_evidence
        + math.sqrt(unique_share) * unique_evidence
        + label_noise * noise
    )


def _score_bin_edges(unique_share: float, label_noise: float, num_labels: int) -> np.ndarray:
    """Inner quantiles of the score distribution that split it into ``num_labels`` equal bins."""
    rng = np.random.default_rng(_REFERENCE_SEED)
    z = rng.standard_normal((4, _REFERENCE_SIZE))
    score = _label_score(*z, unique_share=unique_share, label_noise=label_noise)
    # The score is symmetric about 0; mirroring the reference makes the edges exactly symmetric
    # (the binary edge is exactly 0).
    score = np.concatenate([score, -score])
    return np.quantile(score, np.arange(1, num_labels) / num_labels)


@functools.lru_cache(maxsize=64)  # a sweep asks for the same (share, noise, labels) once per seed
def bayes_accuracy(
    unique_share: float, label_noise: float = 0.1, num_labels: int = 2, num_draws: int = 1 << 22
) -> float:
    """Accuracy of the best possible classifier of the label from ``(x1, x2)``: the ceiling
    any method's probe can reach on this generator (a reference line for the benchmark).

    Both modalities together determine every latent (the maps are injective), so the best
    classifier knows the noiseless score ``h`` and predicts the bin ``k`` most likely to hold
    ``h + label_noise·eps``; its accuracy is ``E_h[max_k P(k | h)]``, with
    ``P(k | h) = Phi((e_{k+1} - h) / label_noise) - Phi((e_k - h) / label_noise)``.

    The expectation over ``h`` is a Monte Carlo mean over ``num_draws`` draws of the three
    standard-normal read-outs from a fixed seed (deterministic; standard error below 1e-4 at
    the default, since ``max_k P(k | h)`` varies far less than a 0/1 outcome). Quadrature is
    no good here: the integrand changes sharply within ``label_noise`` of every bin edge.
    Depends only on these arguments, not on the data set's seed or size.
    """
    if not 0.0 <= unique_share <= 1.0:
        raise ValueError(f"`unique_share` must be in [0, 1], got {unique_share!r}")
    if not (math.isfinite(label_noise) and label_noise >= 0):
        raise ValueError(f"`label_noise` must be a finite number >= 0, got {label_noise!r}")
    if isinstance(num_labels, bool) or not isinstance(num_labels, int) or num_labels < 2:
        raise ValueError(f"`num_labels` must be an integer >= 2, got {num_labels!r}")
    if label_noise == 0:
        return 1.0  # the label is a deterministic function of the latents
    from scipy.special import ndtr

    edges = np.concatenate([[-np.inf], _score_bin_edges(unique_share, label_noise, num_labels), [np.inf]])
    rng = np.random.default_rng(_REFERENCE_SEED + 1)
    total, chunk = 0.0, 1 << 18
    for start in range(0, num_draws, chunk):
        z = rng.standard_normal((3, min(chunk, num_draws - start)))
        score = _label_score(*z, noise=0.0, unique_share=unique_share, label_noise=0.0)
        cumulative = ndtr((edges[:, None] - score[None, :]) / label_noise)
        total += np.diff(cumulative, axis=0).max(axis=0).sum()
    return float(total / num_draws)


@dataclass(frozen=True)
class SyntheticConfig:
    """Everything that determines a synthetic data set; equal configs give identical data.

    Args:
        num_samples: total samples, train and test together (official: 30,000).
        unique_share: fraction in [0, 1] of the label score's variance that comes from the
            unique latents (0: shared only, 1: unique only, needing both modalities).
        seed: fixes the modality maps, the label directions, the latents and the noise.
        test_fraction: fraction of samples held out as the test split (official: 0.2).
        shared_dim: dimension of the shared latent block.
        unique_dims: dimensions of the blocks seen only by ``x1`` and only by ``x2``.
        modality_dim: dimension of each observed modality (must be at least the latent
            dimension feeding it, so the map is injective).
        num_labels: number of balanced classes.
        label_noise: standard deviation of the Gaussian noise added to the unit-variance label
            score before binning (0 makes the label a deterministic function of the latents).
    """

    num_samples: int = 10000
    unique_share: float = 0.5
    seed: int = 0
    test_fraction: float = 0.2
    shared_dim: int = 10
    unique_dims: tuple[int, int] = (6, 6)
    modality_dim: int = 100
    num_labels: int = 2
    label_noise: float = 0.1

    def __post_init__(self):
        # YAML and JSON give lists; keep the frozen config hashable and comparable.
        if isinstance(self.unique_dims, list):
            object.__setattr__(self, "unique_dims", tuple(self.unique_dims))
        self._validate()

    def _validate(self):
        def is_int(value):
            return isinstance(value, (int, np.integer)) and not isinstance(value, bool)

        def is_number(value):
            return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool)

        if not is_int(self.num_samples) or self.num_samples < 2:
            raise ValueError(f"`num_samples` must be an integer >= 2, got {self.num_samples!r}")
        if not is_number(self.unique_share) or not 0.0 <= self.unique_share <= 1.0:
            raise ValueError(f"`unique_share` must be a number in [0, 1], got {self.unique_share!r}")
        if not is_int(self.seed) or self.seed < 0:
            raise ValueError(f"`seed` must be a non-negative integer, got {self.seed!r}")
        if not is_number(self.test_fraction) or not 0.0 < self.test_fraction < 1.0:
            raise ValueError(f"`test_fraction` must be a number in (0, 1), got {self.test_fraction!r}")
        num_test = self.num_test_samples
        if num_test == 0 or num_test == self.num_samples:
            raise ValueError(
                f"`test_fraction`={self.test_fraction} with `num_samples`={self.num_samples} leaves "
                f"{num_test} test samples: both splits must be non-empty"
            )
        if not is_int(self.shared_dim) or self.shared_dim < 1:
            raise ValueError(f"`shared_dim` must be a positive integer, got {self.shared_dim!r}")
        if (
            not isinstance(self.unique_dims, tuple)
            or len(self.unique_dims) != 2
            or not all(is_int(d) and d >= 1 for d in self.unique_dims)
        ):
            raise ValueError(f"`unique_dims` must be two positive integers (x1's, x2's), got {self.unique_dims!r}")
        widest_latent = self.shared_dim + max(self.unique_dims)
        if not is_int(self.modality_dim) or self.modality_dim < widest_latent:
            raise ValueError(
                f"`modality_dim` must be an integer >= shared_dim + max(unique_dims) = {widest_latent} "
                f"so the linear map from latents to each modality is injective, got {self.modality_dim!r}"
            )
        if not is_int(self.num_labels) or self.num_labels < 2:
            raise ValueError(f"`num_labels` must be an integer >= 2, got {self.num_labels!r}")
        if not is_number(self.label_noise) or not math.isfinite(self.label_noise) or self.label_noise < 0:
            raise ValueError(f"`label_noise` must be a finite number >= 0, got {self.label_noise!r}")

    @property
    def num_test_samples(self) -> int:
        return int(round(self.num_samples * self.test_fraction))

    def to_dict(self) -> dict[str, Any]:
        """Plain-Python form (for logs, YAML, model cards); ``make_synthetic(**d)`` rebuilds the data."""
        values = dataclasses.asdict(self)
        values["unique_dims"] = list(self.unique_dims)
        return values


@dataclass(eq=False)
class SyntheticSplit(Dataset):
    """One split. Indexing gives ``{"x1", "x2", "labels"}`` so it serves directly as a Dataset;
    the latents are kept for analysis (which latents does an embedding hold?), not for training."""

    x1: torch.Tensor  # [n, modality_dim] float32
    x2: torch.Tensor  # [n, modality_dim] float32
    labels: torch.Tensor  # [n] int64
    latents: dict[str, torch.Tensor]  # "shared", "unique1", "unique2": [n, dim] float32

    def __len__(self) -> int:
        return self.labels.shape[0]

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return {"x1": self.x1[index], "x2": self.x2[index], "labels": self.labels[index]}


@dataclass(eq=False)
class SyntheticSplits:
    """The train and test splits of one synthetic data set, the config that made them, and the
    fixed modality maps (``modality_maps[i]`` maps ``[shared; unique_{i+1}]`` to ``x_{i+1}``)."""

    train: SyntheticSplit
    test: SyntheticSplit
    config: SyntheticConfig
    modality_maps: tuple[torch.Tensor, torch.Tensor] = field(repr=False)

    def loader(
        self,
        split: str,
        batch_size: int = 256,
        shuffle: bool | None = None,
        seed: int = 0,
        drop_last: bool = False,
    ) -> DataLoader:
        """A DataLoader over ``split`` ("train" or "test") yielding dict batches.

        ``shuffle`` defaults to True for "train" and False for "test"; ``seed`` fixes the order.
        """
        if split not in ("train", "test"):
            raise ValueError(f'`split` must be "train" or "test", got {split!r}')
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"`batch_size` must be a positive integer, got {batch_size!r}")
        if shuffle is None:
            shuffle = split == "train"
        generator = torch.Generator().manual_seed(seed)
        return DataLoader(
            getattr(self, split), batch_size=batch_size, shuffle=shuffle, drop_last=drop_last, generator=generator
        )


def _random_unit_vector(rng: np.random.Generator, dim: int) -> np.ndarray:
    vector = rng.standard_normal(dim)
    return vector / np.linalg.norm(vector)


def make_synthetic(
    num_samples: int = 10000,
    unique_share: float = 0.5,
    seed: int = 0,
    test_fraction: float = 0.2,
    shared_dim: int = 10,
    unique_dims: tuple[int, int] = (6, 6),
    modality_dim: int = 100,
    num_labels: int = 2,
    label_noise: float = 0.1,
) -> SyntheticSplits:
    """Generate the synthetic two-modality data set described in this module's docstring.

    Deterministic per argument set. The modality maps and label directions depend only on
    ``seed`` and the dimensions, so data sets that differ only in ``unique_share`` (a sweep)
    share the same observation model, latents and noise. See :class:`SyntheticConfig` for the
    arguments.
    """
    config = SyntheticConfig(
        num_samples=num_samples, unique_share=unique_share, seed=seed, test_fraction=test_fraction,
        shared_dim=shared_dim, unique_dims=unique_dims, modality_dim=modality_dim, num_labels=num_labels,
        label_noise=label_noise,
    )
    # Independent streams: changing num_samples does not change the maps or label rule.
    map_rng, direction_rng, latent_rng, noise_rng = (
        np.random.default_rng(child) for child in np.random.SeedSequence(config.seed).spawn(4)
    )
    block_dims = (config.shared_dim, *config.unique_dims)

    # Entries N(0, 1/k) keep each observed coordinate at the latents' variance.
    modality_maps = tuple(
        map_rng.standard_normal((latent_dim, config.modality_dim)) / math.sqrt(latent_dim)
        for latent_dim in (config.shared_dim + unique_dim for unique_dim in config.unique_dims)
    )
    directions = [_random_unit_vector(direction_rng, dim) for dim in block_dims]

    latent_std = math.sqrt(LATENT_VARIANCE)
    all_latents = latent_std * latent_rng.standard_normal((config.num_samples, sum(block_dims)))
    shared, unique1, unique2 = np.split(all_latents, np.cumsum(block_dims)[:-1], axis=1)
    blocks = (shared, unique1, unique2)

    modalities = [
        np.concatenate([shared, unique], axis=1) @ modality_map
        for unique, modality_map in zip((unique1, unique2), modality_maps)
    ]

    standard_scalars = [block @ direction / latent_std for block, direction in zip(blocks, directions)]
    noise = noise_rng.standard_normal(config.num_samples)
    score = _label_score(*standard_scalars, noise, unique_share=config.unique_share, label_noise=config.label_noise)
    labels = np.searchsorted(
        _score_bin_edges(config.unique_share, config.label_noise, config.num_labels), score, side="right"
    )

    num_train = config.num_samples - config.num_test_samples

    def take(rows: slice) -> SyntheticSplit:
        def as_tensor(array, dtype=torch.float32):
            return torch.from_numpy(np.ascontiguousarray(array[rows])).to(dtype)

        return SyntheticSplit(
            x1=as_tensor(modalities[0]),
            x2=as_tensor(modalities[1]),
            labels=as_tensor(labels, torch.long),
            latents={name: as_tensor(block) for name, block in zip(LATENT_NAMES, blocks)},
        )

    return SyntheticSplits(
        train=take(slice(0, num_train)),
        test=take(slice(num_train, None)),
        config=config,
        modality_maps=tuple(torch.from_numpy(m).float() for m in modality_maps),
    )
