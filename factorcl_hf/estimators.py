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
from torch.autograd.function import once_differentiable
from torch.func import functional_call
from torch.utils.checkpoint import checkpoint

__all__ = [
    "ConcatCritic",
    "SeparableCritic",
    "CosineCritic",
    "build_critic",
    "infonce_lower_bound",
    "club_upper_bound",
    "class_negatives",
    "kernel_negatives",
    "NEGATIVE_SAMPLERS",
    "negative_log_weights",
    "symmetric_infonce",
    "fit_critic",
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
    skip it and the objectives run it on their inputs only with ``FACTORCL_DEBUG``, see
    ``integrity.value_checks_enabled``)."""
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


# On a CPU the pairwise hidden activations are processed a few rows at a time so that each
# block (rows x B x H values) stays in cache: one ~2 MiB block per pass is several times
# faster than streaming the whole [B, B, H] tensor through memory once per elementwise op.
# On accelerators one block per chunk is fastest (fewer kernel launches).
_CPU_BLOCK_ELEMENTS = 2**19


def _block_rows(rows: int, cols: int, hidden: int, device: torch.device, chunk_size: int | None) -> int:
    limit = rows if chunk_size is None else chunk_size
    if device.type == "cpu":
        limit = min(limit, max(1, _CPU_BLOCK_ELEMENTS // max(1, cols * hidden)))
    return max(1, min(limit, rows))


class _PairwiseReluLinear(torch.autograd.Function):
    """``out[i, j] = relu(hx[i] + hy[j]) @ weight.T + bias`` without keeping ``[B, B, H]``.

    The first hidden layer of a concat critic is the only ``B²``-sized activation that is
    cheap to rebuild (one add and one ReLU), so autograd saves just ``hx``, ``hy`` and the
    weights and backward rebuilds it block by block. Memory for backward drops from
    ``O(B² H)`` to ``O(B H)``, and both passes run in cache-sized row blocks.
    """

    @staticmethod
    def forward(ctx, hx, hy, weight, bias, block_rows):
        hx_dtype, hy_dtype, weight_dtype, bias_dtype = hx.dtype, hy.dtype, weight.dtype, bias.dtype
        dtype = torch.promote_types(hx_dtype, hy_dtype)
        hx, hy = hx.to(dtype), hy.to(dtype)
        weight, bias = weight.to(dtype), bias.to(dtype)  # autocast's choice, made explicit
        rows, cols, hidden, out_dim = hx.shape[0], hy.shape[0], hx.shape[1], weight.shape[0]
        out = hx.new_empty(rows, cols, out_dim)
        block = hx.new_empty(min(block_rows, rows), cols, hidden)
        with torch.autocast(hx.device.type, enabled=False):
            for start in range(0, rows, block_rows):
                stop = min(start + block_rows, rows)
                hidden_block = torch.add(hx[start:stop, None], hy[None], out=block[: stop - start]).relu_()
                if out_dim == 1:  # BLAS matrix-vector products are much faster than 1-column GEMMs
                    torch.addmv(bias, hidden_block.view(-1, hidden), weight[0], out=out[start:stop].view(-1))
                else:
                    torch.addmm(bias, hidden_block.view(-1, hidden), weight.T, out=out[start:stop].view(-1, out_dim))
        ctx.save_for_backward(hx, hy, weight)
        ctx.block_rows = block_rows
        ctx.input_dtypes = (hx_dtype, hy_dtype, weight_dtype, bias_dtype)
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out):
        hx, hy, weight = ctx.saved_tensors
        needed = ctx.needs_input_grad[:4]
        grad_out = grad_out.to(hx.dtype).contiguous()
        # Sums across blocks accumulate in at least float32 (bf16 sums over B rows drift).
        accumulate = torch.promote_types(hx.dtype, torch.float32)
        if weight.shape[0] == 1:
            grad_hx, grad_hy, grad_w = _scalar_readout_backward(hx, hy, weight[0], grad_out, ctx.block_rows, accumulate)
            grad_weight = grad_w.unsqueeze(0)
        else:
            grad_hx, grad_hy, grad_weight = _linear_readout_backward(
                hx, hy, weight, grad_out, ctx.block_rows, accumulate, needed
            )
        grad_bias = grad_out.sum((0, 1), dtype=accumulate)
        grads = (grad_hx, grad_hy, grad_weight, grad_bias)
        return (
            *(g.to(dtype) if wanted else None for g, wanted, dtype in zip(grads, needed, ctx.input_dtypes)),
            None,  # block_rows
        )


def _linear_readout_backward(hx, hy, weight, grad_out, block_rows, accumulate, needed):
    """Gradients of ``out[i, j] = relu(hx[i] + hy[j]) @ weight.T + b`` (several outputs: the
    first layer of a deeper head), rebuilding each block of the hidden activation."""
    need_hx, need_hy, need_weight, _ = needed
    rows, cols, hidden, out_dim = hx.shape[0], hy.shape[0], hx.shape[1], weight.shape[0]
    grad_hx = hx.new_empty(rows, hidden) if need_hx else None
    grad_hy = hy.new_zeros(cols, hidden, dtype=accumulate) if need_hy else None
    grad_weight = weight.new_zeros(weight.shape, dtype=accumulate) if need_weight else None
    block = hx.new_empty(min(block_rows, rows), cols, hidden)
    with torch.autocast(hx.device.type, enabled=False):
        for start in range(0, rows, block_rows):
            stop = min(start + block_rows, rows)
            g = grad_out[start:stop].view(-1, out_dim)
            hidden_block = torch.add(hx[start:stop, None], hy[None], out=block[: stop - start]).relu_()
            if need_weight:
                grad_weight += g.T @ hidden_block.view(-1, hidden)
            if not (need_hx or need_hy):
                continue
            grad_hidden = (g @ weight).view_as(hidden_block).mul_(hidden_block.sign_())
            if need_hx:
                torch.sum(grad_hidden, 1, out=grad_hx[start:stop])
            if need_hy:
                grad_hy += grad_hidden.sum(0)
    return grad_hx, grad_hy, grad_weight


def _scalar_readout_backward(hx, hy, w, grad_scores, block_rows, accumulate):
    """Gradients of ``S[i, j] = w · relu(hx[i] + hy[j]) + b`` for ``dL/dS = grad_scores``.

    With the mask ``M[i, j] = 1[hx[i] + hy[j] > 0]`` and ``P = M ⊙ g`` summed over either
    side, ``Gx[i] = Σ_j P[i, j]`` and ``Gy[j] = Σ_i P[i, j]``:

    * ``dL/dhx = w ⊙ Gx`` and ``dL/dhy = w ⊙ Gy``;
    * ``dL/dw = Σ_ij g_ij relu(hx[i] + hy[j]) = Σ_ij P_ij ⊙ (hx[i] + hy[j])
      = Σ_i hx[i] ⊙ Gx[i] + Σ_j hy[j] ⊙ Gy[j]``,

    so only the mask is rebuilt: four passes over each ``[rows, B, H]`` block (add, compare,
    scale, sum) instead of seven.
    """
    rows, hidden = hx.shape
    grad_sum_x = hx.new_empty(rows, hidden)
    grad_sum_y = hy.new_zeros(hy.shape[0], hidden, dtype=accumulate)
    block = hx.new_empty(min(block_rows, rows), hy.shape[0], hidden)
    with torch.autocast(hx.device.type, enabled=False):
        for start in range(0, rows, block_rows):
            stop = min(start + block_rows, rows)
            pre = torch.add(hx[start:stop, None], hy[None], out=block[: stop - start])
            masked = pre.gt_(0).mul_(grad_scores[start:stop])  # [n, B, 1] broadcasts over H
            torch.sum(masked, 1, out=grad_sum_x[start:stop])
            grad_sum_y += masked.sum(0)
        grad_sum_x = grad_sum_x.to(accumulate)
        grad_w = (hx.to(accumulate) * grad_sum_x).sum(0) + (hy.to(accumulate) * grad_sum_y).sum(0)
        w = w.to(accumulate)
        return grad_sum_x * w, grad_sum_y * w, grad_w


class ConcatCritic(nn.Module):
    """``f(x, y) = MLP([x; y])`` with ReLU hidden layers and a scalar output.

    The first layer is linear, so ``W [x; y] = W_x x + W_y y``: the all-pairs form projects
    each row once (``[B, H]`` per side) and broadcast-adds them to ``[B, B, H]`` instead of
    building ``B²`` concatenated inputs. That first hidden activation is never stored: the
    layer after it is fused with it and rebuilds it in backward, so a one-hidden-layer
    critic trains in ``O(B · H)`` saved memory. ``chunk_size`` bounds the rows evaluated at
    a time (deeper heads: under activation checkpointing), so the transient memory is
    ``O(chunk_size · B · H)`` rather than ``O(B² · H)``.
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
        """Scores of the rows ``hx`` against every ``hy``: the fused first hidden layer and
        head[0], then the rest of the head (in-place ReLUs: a Linear never needs its output)."""
        first = self.head[0]
        bias = first.bias if first.bias is not None else first.weight.new_zeros(first.out_features)
        block_rows = _block_rows(hx.shape[0], hy.shape[0], self.hidden_dim, hx.device, self.chunk_size)
        hidden = _PairwiseReluLinear.apply(hx, hy, first.weight, bias, block_rows)
        for layer in self.head[1:]:
            hidden = torch.relu_(hidden) if isinstance(layer, nn.ReLU) else layer(hidden)
        return hidden.squeeze(-1)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """All-pairs scores ``S[i, j] = f(x_i, y_j)``, shape ``[len(x), len(y)]``."""
        _check_pair(x, y, self.x_dim, self.y_dim, aligned=False)
        hx, hy = self.x_proj(x), self.y_proj(y)
        # With one hidden layer the fused layer already keeps no [B, B, H] activation and
        # honours `chunk_size` itself; deeper heads keep theirs, so chunks are checkpointed.
        if self.chunk_size is None or self.chunk_size >= x.shape[0] or len(self.head) == 1:
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
        return self.head(torch.relu_(self.x_proj(x) + self.y_proj(y))).squeeze(-1)


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


def _check_scores(scores: torch.Tensor, log_weights: torch.Tensor | None = None):
    if scores.dim() != 2 or scores.shape[0] != scores.shape[1]:
        raise ValueError(f"`scores` must be a square [B, B] matrix, got shape {tuple(scores.shape)}")
    if scores.shape[0] < 2:
        raise ValueError("`scores` has batch size 1: contrastive bounds need at least 2 samples per batch")
    if log_weights is not None and log_weights.shape != scores.shape:
        raise ValueError(
            f"`log_weights` must have the shape of `scores` {tuple(scores.shape)}, got {tuple(log_weights.shape)}"
        )


def infonce_lower_bound(scores: torch.Tensor, log_weights: torch.Tensor | None = None) -> torch.Tensor:
    """InfoNCE: ``mean_i S[i,i] − mean_i(logsumexp_j S[i,j] − log B)``; never exceeds ``log B``.

    ``log_weights[i, j]`` (rows are log-probabilities over ``j``, the diagonal included) replace
    the uniform ``−log B``: row ``i``'s negatives are then drawn from ``w[i, ·]`` — for
    conditional InfoNCE, from samples that share ``i``'s condition (:func:`class_negatives`,
    :func:`kernel_negatives`). The bound is then ``≤ mean_i −log w[i, i]``.
    """
    _check_scores(scores, log_weights)
    # Same value as the formula above, written as log B − mean_i logsumexp_j(S[i,j] − S[i,i]):
    # each logsumexp includes exp(0), so the bound stays ≤ log B in floating point too,
    # without cancelling two large means.
    relative = scores - scores.diagonal().unsqueeze(1)
    if log_weights is None:
        return math.log(scores.shape[0]) - relative.logsumexp(dim=1).mean()
    return -(relative + log_weights).logsumexp(dim=1).mean()


def club_upper_bound(scores: torch.Tensor, log_weights: torch.Tensor | None = None) -> torch.Tensor:
    """CLUB with a critic: ``mean_i S[i,i] − mean_{i,j} S[i,j]`` (positives minus all pairs).

    With ``log_weights`` (as in :func:`infonce_lower_bound`) the pairs of row ``i`` are
    weighted by ``w[i, ·]``: ``mean_i (S[i,i] − Σ_j w[i,j] S[i,j])``, the conditional CLUB.
    """
    _check_scores(scores, log_weights)
    if log_weights is None:
        return scores.diagonal().mean() - scores.mean()
    return (scores.diagonal() - (log_weights.exp() * scores).sum(dim=1)).mean()


def class_negatives(labels: torch.Tensor) -> torch.Tensor:
    """Log-weights that draw row ``i``'s negatives uniformly from the rows of its class.

    For a discrete condition this is exact: the negatives of a row are samples of
    ``p(b | y_i)``, so InfoNCE / CLUB with these weights bound ``I(A; B | Y)`` with no
    concatenation of ``y`` to the critic's inputs."""
    if labels.dim() != 1:
        raise ValueError(f"`labels` must have shape [batch], got {tuple(labels.shape)}")
    same = labels[:, None] == labels[None, :]
    counts = same.sum(dim=1, keepdim=True)
    return torch.where(same, -counts.float().log(), torch.tensor(float("-inf"), device=labels.device))


def kernel_negatives(condition: torch.Tensor, bandwidth: float | str = "silverman") -> torch.Tensor:
    """Log-weights ``w[i, j] ∝ exp(−‖c_i − c_j‖² / 2h²)``: row ``i``'s negatives come from rows
    whose condition is close to ``c_i``, approximating ``p(b | c_i)`` (kernel-weighted
    conditional contrastive learning, Tsai et al., ICLR 2022).

    ``bandwidth`` ``h`` is a number or a rule computed on the batch:

    * ``"silverman"``: ``σ (4 / ((d + 2) B))^{1/(d+4)}``, ``σ`` the mean per-dimension standard
      deviation. Close to the truth for a condition of a few dimensions (tests: Gaussians);
      in high dimension every other row is far beyond ``h`` and the weights collapse onto
      the diagonal (measured: ``w[i, i] = 1.00`` for a 256-dim condition), which makes the
      conditional bounds vacuous (0).
    * ``"median"``: ``h² = median_{i≠j} ‖c_i − c_j‖² / 2``, the scale of the typical distance, so
      every row keeps several negatives whatever ``d``: a smoothed conditional estimate.
    """
    check_features("condition", condition, check_finite=False)
    condition = condition.detach().float()
    batch, dim = condition.shape
    squared = torch.cdist(condition, condition).square()
    if bandwidth == "silverman":
        spread = condition.std(dim=0).mean().clamp_min(1e-6)
        bandwidth = float(spread) * (4.0 / ((dim + 2) * batch)) ** (1.0 / (dim + 4))
    elif bandwidth == "median":
        off_diagonal = squared[~torch.eye(batch, dtype=torch.bool, device=squared.device)]
        bandwidth = math.sqrt(max(float(off_diagonal.median()), 1e-12) / 2)
    elif isinstance(bandwidth, str) or not bandwidth > 0:
        raise ValueError(f"`bandwidth` must be 'silverman', 'median' or a number > 0, got {bandwidth!r}")
    return (-squared / (2 * bandwidth**2)).log_softmax(dim=1)


def median_kernel_negatives(condition: torch.Tensor) -> torch.Tensor:
    """:func:`kernel_negatives` with the median-distance bandwidth (high-dimensional conditions)."""
    return kernel_negatives(condition, bandwidth="median")


# How a conditional term draws each row's negatives from its condition (None: from every row).
NEGATIVE_SAMPLERS = {"class": class_negatives, "kernel": kernel_negatives, "median_kernel": median_kernel_negatives}


def negative_log_weights(negatives: str | None, condition: torch.Tensor | None) -> torch.Tensor | None:
    """The log-weights of sampler ``negatives`` (a key of ``NEGATIVE_SAMPLERS`` or ``None`` for
    uniform negatives) for a batch whose rows have ``condition``."""
    if negatives is None:
        return None
    if negatives not in NEGATIVE_SAMPLERS:
        raise ValueError(f"`negatives` must be None or one of {tuple(NEGATIVE_SAMPLERS)}, got {negatives!r}")
    if condition is None:
        raise ValueError(f"`condition` is required to draw {negatives!r} negatives")
    return NEGATIVE_SAMPLERS[negatives](condition)


def symmetric_infonce(critic: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """InfoNCE of ``critic`` on (x, y); averaged over both directions for symmetric critics."""
    scores = critic(x, y)
    if getattr(critic, "symmetric", False):
        return 0.5 * (infonce_lower_bound(scores) + infonce_lower_bound(scores.T))
    return infonce_lower_bound(scores)


def fit_critic(
    critic: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    steps: int,
    learning_rate: float,
    batch_size: int,
    generator: torch.Generator | None = None,
    condition: torch.Tensor | None = None,
    negatives: str | None = None,
) -> nn.Module:
    """Train ``critic`` alone to maximize InfoNCE on ``steps`` random batches of the pairs
    ``(x[i], y[i])`` (Adam; rows are drawn without replacement within a batch, so no pair is
    its own negative). Returns ``critic``, in place: the estimate ``fit then evaluate on
    held-out pairs`` used by the evaluation reports and the CLUB critic check. With
    ``negatives`` each batch's negatives are drawn by that sampler from ``condition[rows]``
    (conditional InfoNCE)."""
    if len(x) != len(y) or (condition is not None and len(condition) != len(x)):
        raise ValueError(f"`x`, `y` and `condition` must pair up row by row, got {len(x)}, {len(y)} and "
                         f"{None if condition is None else len(condition)} rows")
    batch_size = min(batch_size, len(x))
    if batch_size < 2:
        raise ValueError(f"InfoNCE needs batches of at least 2 pairs, got {len(x)} pairs")
    optimizer = torch.optim.Adam(critic.parameters(), lr=learning_rate)
    for _ in range(steps):
        rows = torch.randperm(len(x), generator=generator, device=x.device)[:batch_size]
        log_weights = negative_log_weights(negatives, None if condition is None else condition[rows])
        loss = -infonce_lower_bound(critic(x[rows], y[rows]), log_weights)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return critic


def condition_on(features: torch.Tensor, condition: torch.Tensor) -> torch.Tensor:
    """``[features; condition]``: a critic of ``(condition_on(a, z), condition_on(b, z))``
    estimates ``I(A; B | Z)``."""
    if condition.shape[0] != features.shape[0]:
        raise ValueError(
            f"`condition` has batch size {condition.shape[0]} but `features` has {features.shape[0]}"
        )
    return torch.cat([features, condition.to(features.dtype)], dim=-1)


class NCECLUBEstimator(nn.Module):
    """NCE-CLUB upper bound of ``I(X; Y)`` — or of ``I(X; Y | C)`` with ``negatives`` — with its
    own critic.

    The critic is trained separately, by maximizing InfoNCE on *detached* inputs
    (:meth:`critic_loss`, for its own optimizer). :meth:`forward` returns the CLUB bound for
    the encoders: gradients reach ``x`` and ``y`` but never the critic's parameters. With
    ``negatives`` (a key of ``NEGATIVE_SAMPLERS``) both the bound and the critic's InfoNCE draw
    each row's negatives from rows with the same or a nearby ``condition``.
    """

    def __init__(self, critic: nn.Module, negatives: str | None = None):
        super().__init__()
        if negatives is not None and negatives not in NEGATIVE_SAMPLERS:
            raise ValueError(f"`negatives` must be None or one of {tuple(NEGATIVE_SAMPLERS)}, got {negatives!r}")
        self.critic = critic
        self.negatives = negatives

    def forward(self, x: torch.Tensor, y: torch.Tensor, condition: torch.Tensor | None = None) -> torch.Tensor:
        frozen = {name: p.detach() for name, p in self.critic.named_parameters()}
        frozen.update(dict(self.critic.named_buffers()))
        scores = functional_call(self.critic, frozen, (x, y))
        return club_upper_bound(scores, negative_log_weights(self.negatives, condition))

    def infonce(self, x: torch.Tensor, y: torch.Tensor, condition: torch.Tensor | None = None) -> torch.Tensor:
        """The critic's InfoNCE on ``(x, y)`` with this estimator's negatives (no detaching)."""
        return infonce_lower_bound(self.critic(x, y), negative_log_weights(self.negatives, condition))

    def critic_loss(self, x: torch.Tensor, y: torch.Tensor, condition: torch.Tensor | None = None) -> torch.Tensor:
        """Negative InfoNCE of the critic on detached inputs (minimize it to train the critic)."""
        return -self.infonce(x.detach(), y.detach(), condition)
