"""Gathering features across processes, with gradients: the one place that knows about
``torch.distributed``.

Contrastive bounds want every sample of the *global* batch as a negative. Each process
gathers the (small) head outputs of all processes and evaluates the full global loss; the
all-gather's backward sends each process the gradient for its own rows, and DDP's gradient
average then gives exactly the gradient of the global loss (tested in
``tests/test_distributed.py``). Critic scores are therefore computed redundantly on every
process, like open_clip's default ``local_loss=False``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.distributed as dist


def world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def gather_features(tensors: Sequence[torch.Tensor | None]) -> list[torch.Tensor | None]:
    """All-gather each tensor along the batch dimension (differentiably for float tensors).

    ``None`` entries pass through. With one process this is the identity. Every process must
    hold the same local batch size (Accelerate's ``even_batches`` guarantees it).
    """
    if world_size() == 1:
        return list(tensors)
    from torch.distributed import _functional_collectives as collectives

    # Newer torch renamed it (the old name warns FutureWarning); older torch has only the old one.
    all_gather_autograd = getattr(collectives, "all_gather_single_autograd", None) or collectives.all_gather_tensor_autograd

    floats = [t for t in tensors if t is not None and t.is_floating_point()]
    gathered_floats: list[torch.Tensor] = []
    if floats:
        # One collective for all float tensors: concatenate along features, gather, split.
        widths = [t.shape[1] for t in floats]
        packed = torch.cat([t.reshape(t.shape[0], -1) for t in floats], dim=1).contiguous()
        gathered = all_gather_autograd(packed, gather_dim=0, group=dist.group.WORLD)
        gathered_floats = list(gathered.split(widths, dim=1))
    out: list[torch.Tensor | None] = []
    floats_iter = iter(gathered_floats)
    for t in tensors:
        if t is None:
            out.append(None)
        elif t.is_floating_point():
            out.append(next(floats_iter))
        else:
            parts = [torch.empty_like(t) for _ in range(world_size())]
            dist.all_gather(parts, t.contiguous())
            out.append(torch.cat(parts))
    return out
