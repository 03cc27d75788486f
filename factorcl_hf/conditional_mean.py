"""Closed-form conditional expectations: kernel ridge regression on random Fourier features.

FactorCL's factorized preset (docs/method.md, "Closed-form factorization") defines its two
representations through conditional expectations fitted in closed form once training is
done, instead of through adversarial critics that the heads learn to evade:

* Z_S of a modality is what the other modality predicts of this one's shared head, predicted
  back from this modality: a function of this modality that can only carry what both share;
* Z_U of a modality is the unique head minus the part of it that the other modality predicts,
  as a function of Z_S: no function of the shared content is left in its conditional mean, so
  no linear read-out recovers the shared content from it.

:class:`RandomFeatureRidge` approximates ``E[y | x]`` by a ridge regression on random Fourier
features ``phi(x) = sqrt(2/D) cos(x W / bandwidth + b)`` with ``W ~ N(0, I)``, whose inner
products approximate the Gaussian kernel ``exp(-|x - x'|^2 / (2 bandwidth^2))`` (Rahimi &
Recht, 2007). The bandwidth is ``bandwidth_scale`` times the median distance between inputs.
Its state is buffers only: it is saved with the model and never trained by gradients.
"""

from __future__ import annotations

import math

import torch
from torch import nn

__all__ = ["RandomFeatureRidge"]

# Inputs used to set the median-distance bandwidth (the median of a few hundred points is
# stable; all pairs of a large calibration set would cost O(N^2)).
_BANDWIDTH_SAMPLE = 1024


class RandomFeatureRidge(nn.Module):
    """``E[y | x]`` by ridge regression on ``num_features`` random Fourier features of ``x``.

    :meth:`fit` solves the regression in float64 and sets ``fitted``; unfitted, the module
    predicts zeros (its weight and target mean are zero).

    Args:
        in_dim / out_dim: sizes of ``x`` and ``y``.
        num_features: random features ``D``.
        ridge: the penalty, relative to the mean variance of a feature (scale-free).
        bandwidth_scale: the kernel's bandwidth over the median distance between inputs.
        seed: seeds the random frequencies and phases (the same module is rebuilt the same).
    """

    def __init__(self, in_dim: int, out_dim: int, num_features: int = 512, ridge: float = 1e-2,
                 bandwidth_scale: float = 1.0, seed: int = 0):
        super().__init__()
        for name, value in (("ridge", ridge), ("bandwidth_scale", bandwidth_scale)):
            if not value > 0:
                raise ValueError(f"`{name}` must be > 0, got {value}")
        self.ridge, self.bandwidth_scale, self.seed = float(ridge), float(bandwidth_scale), seed
        self.register_buffer("frequencies", torch.empty(in_dim, num_features))
        self.register_buffer("phases", torch.empty(num_features))
        self.register_buffer("bandwidth", torch.ones(()))
        self.register_buffer("feature_mean", torch.zeros(num_features))
        self.register_buffer("target_mean", torch.zeros(out_dim))
        self.register_buffer("weight", torch.zeros(num_features, out_dim))
        self.register_buffer("fitted", torch.zeros((), dtype=torch.bool))
        self.reset_parameters()

    def initial_buffers(self) -> dict[str, torch.Tensor]:
        """Every buffer's unfitted value: frequencies and phases drawn from ``seed``, no fit
        (also what ``FactorCLModel._init_weights`` gives a module the checkpoint lacks)."""
        generator = torch.Generator().manual_seed(self.seed)
        in_dim, num_features = self.frequencies.shape
        return {
            "frequencies": torch.randn(in_dim, num_features, generator=generator),
            "phases": torch.rand(num_features, generator=generator) * 2 * math.pi,
            "bandwidth": torch.ones(()),
            "feature_mean": torch.zeros(num_features),
            "target_mean": torch.zeros(self.target_mean.shape[0]),
            "weight": torch.zeros(self.weight.shape),
            "fitted": torch.zeros((), dtype=torch.bool),
        }

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """Draw the frequencies and phases from ``seed`` and forget any fit."""
        for name, value in self.initial_buffers().items():
            getattr(self, name).copy_(value)

    def features(self, inputs: torch.Tensor) -> torch.Tensor:
        """``[N, D]`` random Fourier features of ``inputs`` ``[N, in_dim]``."""
        scale = math.sqrt(2.0 / self.phases.shape[0])
        frequencies = self.frequencies.to(inputs.dtype) / self.bandwidth.to(inputs.dtype)
        return torch.cos(inputs @ frequencies + self.phases.to(inputs.dtype)) * scale

    @torch.no_grad()
    def fit(self, inputs: torch.Tensor, targets: torch.Tensor) -> RandomFeatureRidge:
        """Solve the ridge regression of ``targets`` ``[N, out_dim]`` on the features of
        ``inputs`` ``[N, in_dim]`` (float64, on the inputs' device)."""
        if inputs.dim() != 2 or targets.dim() != 2 or len(inputs) != len(targets):
            raise ValueError(f"`inputs` and `targets` must be [N, d] with the same N, got shapes "
                             f"{tuple(inputs.shape)} and {tuple(targets.shape)}")
        if len(inputs) < 2:
            raise ValueError(f"fitting a conditional expectation needs at least 2 rows, got {len(inputs)}")
        inputs, targets = inputs.double(), targets.double()
        generator = torch.Generator().manual_seed(self.seed)
        sample = inputs[torch.randperm(len(inputs), generator=generator)[:_BANDWIDTH_SAMPLE].to(inputs.device)]
        distances = torch.cdist(sample, sample)
        off_diagonal = distances[~torch.eye(len(sample), dtype=torch.bool, device=sample.device)]
        self.bandwidth.fill_(self.bandwidth_scale * float(off_diagonal.median().clamp_min(1e-6)))
        features = self.features(inputs)
        feature_mean, target_mean = features.mean(0), targets.mean(0)
        centred = features - feature_mean
        gram = centred.T @ centred / len(inputs)
        penalty = self.ridge * gram.diagonal().mean().clamp_min(1e-12)
        eye = torch.eye(len(gram), dtype=gram.dtype, device=gram.device)
        weight = torch.linalg.solve(gram + penalty * eye, centred.T @ (targets - target_mean) / len(inputs))
        self.feature_mean.copy_(feature_mean)
        self.target_mean.copy_(target_mean)
        self.weight.copy_(weight)
        self.fitted.fill_(True)
        return self

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        """The fitted ``E[y | x]`` at ``inputs`` (in their dtype)."""
        centred = self.features(inputs) - self.feature_mean.to(inputs.dtype)
        return centred @ self.weight.to(inputs.dtype) + self.target_mean.to(inputs.dtype)
