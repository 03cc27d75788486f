"""Critics and mutual-information bounds (InfoNCE lower bound, CLUB / NCE-CLUB upper bound).

Everything here works on plain feature tensors ``[B, d]``: it knows nothing about images,
text or models. A *critic* maps two batches to the all-pairs score matrix ``S`` with
``S[i, j] = f(x_i, y_j)``; the bounds are functions of ``S`` alone.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call
from torch.utils.checkpoint import checkpoint

__all__ = [
    "ConcatCritic",
    "SeparableCritic",
    "CosineCritic",
    "build_critic",
    "infonce_lower_bound",
    "club_upper_bound",
    "NCECLUBEstimator",
    "condition_on",
    "check_features",
]


def check_features(
    name: str,
    tensor: torch.Tensor,
    dim: int | None = None,
    batch_size: int | None = None,
    check_finite: bool = True,
):
    """Raise a ValueError naming ``name`` unless ``tensor`` is a ``[batch_size, dim]`` matrix
    (and finite, when ``check_finite``: that check synchronizes with the device, so critics
    skip it and the objectives run it once on their inputs)."""
    if not isinstance(tensor, torch.Tensor):
        raise ValueError(f"`{name}` must be a torch.Tensor of shape [batch, features], got {type(tensor).__name__}")
    if tensor.dim() != 2:
        raise ValueError(f"`{name}` must have shape [batch, features], got shape {tuple(tensor.shape)}")
    if dim is not None and tensor.shape[1] != dim:
        raise ValueError(f"`{name}` must have {dim} features (shape [batch, {dim}]), got shape {tuple(tensor.shape)}")
    if batch_size is not None and tensor.shape[0] != batch_size:
        raise ValueError(
            f"`{name}` has batch size {tensor.shape[0]} but the other inputs have {batch_size}: "
            "paired inputs must have the same batch size"
        )
    if check_finite and tensor.is_floating_point() and not torch.isfinite(tensor).all():
        raise ValueError(f"`{name}` contains NaN or infinite values")


def _check_pair(x: torch.Tensor, y: torch.Tensor, x_dim: int, y_dim: int, aligned: bool):
    check_features("x", x, x_dim, check_finite=False)
    check_features("y", y, y_dim, batch_size=x.shape[0] if aligned else None, check_finite=False)


def _mlp(in_dim: int, hidden_dim: int, out_dim: int, num_hidden_layers: int) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i in range(num_hidden_layers):
        layers += [nn.Linear(in_dim if i == 0 else hidden_dim, hidden_dim), nn.ReLU()]
    layers.append(nn.Linear(hidden_dim if num_hidden_layers else in_dim, out_dim))
    return nn.Sequential(*layers)


class ConcatCritic(nn.Module):
    """``f(x, y) = MLP([x; y])`` with ReLU hidden layers and a scalar output.

    The first layer is linear, so ``W [x; y] = W_x x + W_y y``: the all-pairs form projects
    each row once (``[B, H]`` per side) and broadcast-adds them to ``[B, B, H]`` instead of
    building ``B²`` concatenated inputs. ``chunk_size`` evaluates that many rows at a time
    under activation checkpointing, so training memory is ``O(chunk_size · B · H)`` rather
    than ``O(B² · H)``.
    """

    symmetric = False

    def __init__(
        self,
        x_dim: int,
        y_dim: int,
        hidden_dim: int = 512,
        num_hidden_layers: int = 1,
        chunk_size: int | None = None,
    ):
        super().__init__()
        if num_hidden_layers < 1:
            raise ValueError(f"`num_hidden_layers` must be >= 1, got {num_hidden_layers}")
        if chunk_size is not None and chunk_size < 1:
            raise ValueError(f"`chunk_size` must be a positive integer or None, got {chunk_size}")
        self.x_dim, self.y_dim, self.hidden_dim = x_dim, y_dim, hidden_dim
        self.chunk_size = chunk_size
        # The first Linear(x_dim + y_dim, hidden) split into its x and y column blocks.
        self.x_proj = nn.Linear(x_dim, hidden_dim)
        self.y_proj = nn.Linear(y_dim, hidden_dim, bias=False)
        self.head = _mlp(hidden_dim, hidden_dim, 1, num_hidden_layers - 1)

    @property
    def first_layer_weight(self) -> torch.Tensor:
        """The weight of the equivalent unsplit first layer, ``[hidden, x_dim + y_dim]``."""
        return torch.cat([self.x_proj.weight, self.y_proj.weight], dim=1)

    def _scores(self, hx: torch.Tensor, hy: torch.Tensor) -> torch.Tensor:
        hidden = torch.relu(hx.unsqueeze(1) + hy.unsqueeze(0))  # [rows, B, H]
        return self.head(hidden).squeeze(-1)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """All-pairs scores ``S[i, j] = f(x_i, y_j)``, shape ``[len(x), len(y)]``."""
        _check_pair(x, y, self.x_dim, self.y_dim, aligned=False)
        hx, hy = self.x_proj(x), self.y_proj(y)
        if self.chunk_size is None or self.chunk_size >= x.shape[0]:
            return self._scores(hx, hy)
        use_checkpoint = torch.is_grad_enabled() and (hx.requires_grad or hy.requires_grad)
        rows = []
        for chunk in hx.split(self.chunk_size):
            if use_checkpoint:
                rows.append(checkpoint(self._scores, chunk, hy, use_reentrant=False))
            else:
                rows.append(self._scores(chunk, hy))
        return torch.cat(rows)

    def score_pairs(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Aligned scores ``f(x_i, y_i)``, shape ``[B]``."""
        _check_pair(x, y, self.x_dim, self.y_dim, aligned=True)
        return self.head(torch.relu(self.x_proj(x) + self.y_proj(y))).squeeze(-1)


class SeparableCritic(nn.Module):
    """``f(x, y) = g(x) · h(y)``: one matrix product for all pairs (cheaper, less expressive)."""

    symmetric = False

    def __init__(self, x_dim: int, y_dim: int, hidden_dim: int = 512, embed_dim: int = 128, num_hidden_layers: int = 1):
        super().__init__()
        self.x_dim, self.y_dim = x_dim, y_dim
        self.x_embed = _mlp(x_dim, hidden_dim, embed_dim, num_hidden_layers)
        self.y_embed = _mlp(y_dim, hidden_dim, embed_dim, num_hidden_layers)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        _check_pair(x, y, self.x_dim, self.y_dim, aligned=False)
        return self.x_embed(x) @ self.y_embed(y).T

    def score_pairs(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        _check_pair(x, y, self.x_dim, self.y_dim, aligned=True)
        return (self.x_embed(x) * self.y_embed(y)).sum(-1)


class CosineCritic(nn.Module):
    """``f(x, y) = cos(x, y) / temperature``: the CLIP/SimCLR critic (no parameters).

    InfoNCE with this critic, averaged over both directions, is exactly the CLIP loss, so a
    model trained with it exposes scaled cosine similarities as its logits.
    """

    symmetric = True

    def __init__(self, x_dim: int, y_dim: int, temperature: float = 0.1):
        super().__init__()
        if x_dim != y_dim:
            raise ValueError(f"CosineCritic needs x_dim == y_dim, got {x_dim} and {y_dim}")
        if temperature <= 0:
            raise ValueError(f"`temperature` must be > 0, got {temperature}")
        self.x_dim = self.y_dim = x_dim
        self.temperature = temperature

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        _check_pair(x, y, self.x_dim, self.y_dim, aligned=False)
        return F.normalize(x, dim=-1) @ F.normalize(y, dim=-1).T / self.temperature

    def score_pairs(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        _check_pair(x, y, self.x_dim, self.y_dim, aligned=True)
        return F.cosine_similarity(x, y, dim=-1) / self.temperature


CRITIC_TYPES = ("concat", "separable", "cosine")


def build_critic(
    critic_type: str,
    x_dim: int,
    y_dim: int,
    hidden_dim: int = 512,
    num_hidden_layers: int = 1,
    embed_dim: int = 128,
    temperature: float = 0.1,
    chunk_size: int | None = None,
) -> nn.Module:
    """Build a critic by name (one of ``CRITIC_TYPES``)."""
    if critic_type == "concat":
        return ConcatCritic(x_dim, y_dim, hidden_dim, num_hidden_layers, chunk_size=chunk_size)
    if critic_type == "separable":
        return SeparableCritic(x_dim, y_dim, hidden_dim, embed_dim, num_hidden_layers)
    if critic_type == "cosine":
        return CosineCritic(x_dim, y_dim, temperature)
    raise ValueError(f"`critic_type` must be one of {CRITIC_TYPES}, got {critic_type!r}")


def _check_scores(scores: torch.Tensor):
    if scores.dim() != 2 or scores.shape[0] != scores.shape[1]:
        raise ValueError(f"`scores` must be a square [B, B] matrix, got shape {tuple(scores.shape)}")
    if scores.shape[0] < 2:
        raise ValueError("`scores` has batch size 1: contrastive bounds need at least 2 samples per batch")


def infonce_lower_bound(scores: torch.Tensor) -> torch.Tensor:
    """InfoNCE: ``mean_i S[i,i] − mean_i(logsumexp_j S[i,j] − log B)``; never exceeds ``log B``."""
    _check_scores(scores)
    # Same value as the formula above, written as log B − mean_i logsumexp_j(S[i,j] − S[i,i]):
    # each logsumexp includes exp(0), so the bound stays ≤ log B in floating point too,
    # without cancelling two large means.
    relative = scores - scores.diagonal().unsqueeze(1)
    return math.log(scores.shape[0]) - relative.logsumexp(dim=1).mean()


def club_upper_bound(scores: torch.Tensor) -> torch.Tensor:
    """CLUB with a critic: ``mean_i S[i,i] − mean_{i,j} S[i,j]`` (positives minus all pairs)."""
    _check_scores(scores)
    return scores.diagonal().mean() - scores.mean()


def symmetric_infonce(critic: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """InfoNCE of ``critic`` on (x, y); averaged over both directions for symmetric critics."""
    scores = critic(x, y)
    if getattr(critic, "symmetric", False):
        return 0.5 * (infonce_lower_bound(scores) + infonce_lower_bound(scores.T))
    return infonce_lower_bound(scores)


def condition_on(features: torch.Tensor, condition: torch.Tensor) -> torch.Tensor:
    """``[features; condition]``: a critic of ``(condition_on(a, z), condition_on(b, z))``
    estimates ``I(A; B | Z)``."""
    if condition.shape[0] != features.shape[0]:
        raise ValueError(
            f"`condition` has batch size {condition.shape[0]} but `features` has {features.shape[0]}"
        )
    return torch.cat([features, condition.to(features.dtype)], dim=-1)


class NCECLUBEstimator(nn.Module):
    """NCE-CLUB upper bound of ``I(X; Y)`` with its own critic.

    The critic is trained separately, by maximizing InfoNCE on *detached* inputs
    (:meth:`critic_loss`, for its own optimizer). :meth:`forward` returns the CLUB bound for
    the encoders: gradients reach ``x`` and ``y`` but never the critic's parameters.
    """

    def __init__(self, critic: nn.Module):
        super().__init__()
        self.critic = critic

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        frozen = {name: p.detach() for name, p in self.critic.named_parameters()}
        frozen.update(dict(self.critic.named_buffers()))
        return club_upper_bound(functional_call(self.critic, frozen, (x, y)))

    def critic_loss(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Negative InfoNCE of the critic on detached inputs (minimize it to train the critic)."""
        return -infonce_lower_bound(self.critic(x.detach(), y.detach()))
