"""One optimization step of a model with a contrastive objective: the step shared by the CLIP
trainer (``training/train.py``, under Accelerate) and the vector-encoder experiments (a plain
loop).

Per batch the model runs once; ``loss + critic_loss`` is backpropagated in one backward (the
CLUB critics' loss only sees detached features and the loss only frozen CLUB critics, so
neither reaches the other's parameters); the main optimizer steps (after optional gradient
clipping, then the scheduler), then the CLUB critics' optimizer; finally
``club_critic_steps - 1`` extra critic steps run on the same detached features
(:func:`~factorcl_hf.objectives.train_club_critics`). The CLUB critic is thus always evaluated
on a batch it has not been trained on yet (alternating updates, as in GAN training).

Under fp16 the backward is loss-scaled (accelerate's ``GradScaler``). The CLUB critics' optimizer
steps outside the scaler, on gradients unscaled here: accelerate's clipping unscales every
prepared optimizer's gradients and each prepared optimizer's step unscales its own again after
the previous step's ``update()``, so through the scaler the critics' gradients were divided by
the scale twice, and the extra steps' (never scaled) once. Their extra steps scale their loss by
the same factor, and a step whose gradients are not finite is skipped, as the scaler would.
"""

from __future__ import annotations

import contextlib
from typing import Any

import torch

from .objectives import train_club_critics

__all__ = ["training_step", "parameter_groups"]


class _NoAccelerator:
    """What :func:`training_step` uses of an ``accelerate.Accelerator``, for a plain loop: one
    process, every batch updates, no mixed precision."""

    sync_gradients = True

    def accumulate(self, model):
        return contextlib.nullcontext()

    def autocast(self):
        return contextlib.nullcontext()

    def backward(self, loss: torch.Tensor):
        loss.backward()

    def clip_grad_norm_(self, parameters, max_norm: float):
        return torch.nn.utils.clip_grad_norm_(parameters, max_norm)

    def unwrap_model(self, model):
        return model


def parameter_groups(model: torch.nn.Module, learning_rate: float, club_head_lr_scale: float = 1.0) -> list[dict]:
    """The main optimizer's parameter groups: ``model.main_parameters()`` at ``learning_rate``,
    except the heads only the CLUB terms train (``model.objective.club_head_parameters()``),
    at ``learning_rate * club_head_lr_scale``: heads that move faster than the encoders reach
    the CLUB terms' minimum, so their critics find nothing left to track (docs/estimators.md)."""
    club_heads = model.objective.club_head_parameters()
    club_ids = {id(p) for p in club_heads}
    groups = [{"params": [p for p in model.main_parameters() if id(p) not in club_ids], "lr": learning_rate}]
    if club_heads:
        groups.append({"params": club_heads, "lr": learning_rate * club_head_lr_scale})
    return groups


def training_step(
    model: torch.nn.Module,
    inputs: dict[str, Any],
    optimizer: torch.optim.Optimizer,
    critic_optimizer: torch.optim.Optimizer | None = None,
    *,
    club_critic_steps: int = 1,
    scheduler=None,
    max_grad_norm: float | None = None,
    accelerator=None,
):
    """Train ``model`` on one batch and return its output (``loss``, ``loss_terms``, ...).

    Args:
        model: a model whose ``model(**inputs)`` returns ``loss``, ``critic_loss`` and
            ``critic_inputs`` (``FactorCLModel`` with ``return_loss=True`` in ``inputs``,
            ``VectorFactorCL``), with ``main_parameters()`` and an ``objective`` (when wrapped
            by ``accelerator``, the unwrapped model has them).
        optimizer: the main optimizer (encoders, heads, InfoNCE critics).
        critic_optimizer: the CLUB critics' optimizer (``None`` for objectives without them);
            prepared by ``accelerator`` or not, the optimizer it wraps steps, outside the loss
            scaler (see the module's docstring).
        club_critic_steps: CLUB-critic updates per batch (k in the paper): the first with the
            main step, the others on the same detached features.
        scheduler: stepped after the main optimizer, if given.
        max_grad_norm: clip the main parameters' gradient norm to this before their step.
        accelerator: an ``accelerate.Accelerator`` that prepared ``model`` and the optimizers:
            the step then runs under its gradient accumulation, backward, clipping and
            autocast, and the extra critic steps wait for the micro-batch that updates.
    """
    accelerator = accelerator or _NoAccelerator()
    unwrapped = accelerator.unwrap_model(model)
    scaler = getattr(accelerator, "scaler", None)
    # The critics' own optimizer, not accelerate's wrapper, whose step would unscale again.
    critic_step = getattr(critic_optimizer, "optimizer", critic_optimizer)
    critic_params = [] if critic_optimizer is None else [p for group in critic_step.param_groups for p in group["params"]]
    loss_scale, critic_grads = None, []
    with accelerator.accumulate(model):
        outputs = model(**inputs)
        accelerator.backward(outputs.loss if outputs.critic_loss is None else outputs.loss + outputs.critic_loss)
        if accelerator.sync_gradients:
            # The scale of this backward (the main step's update() may change it), and the critics'
            # gradients (accumulated at that scale) set aside before the clipping unscales them.
            loss_scale = scaler.get_scale() if scaler is not None else None
            critic_grads = _set_aside_gradients(critic_params)
            if max_grad_norm:
                accelerator.clip_grad_norm_(unwrapped.main_parameters(), max_grad_norm)
        optimizer.step()
        if scheduler is not None:
            scheduler.step()
        optimizer.zero_grad(set_to_none=True)
    # Under gradient accumulation the optimizers only step on the last micro-batch; so do the
    # critics, their extra steps on that micro-batch's features.
    if critic_params and accelerator.sync_gradients:
        _step_critics(critic_step, critic_params, critic_grads, loss_scale)
        if club_critic_steps > 1:
            with accelerator.autocast():
                train_club_critics(unwrapped.objective, outputs.critic_inputs, critic_step, club_critic_steps - 1,
                                   loss_scale=loss_scale)
    return outputs


def _set_aside_gradients(params: list[torch.nn.Parameter]) -> list[torch.Tensor | None]:
    """The gradients of ``params``, which are left without any."""
    grads = [param.grad for param in params]
    for param in params:
        param.grad = None
    return grads


def _step_critics(optimizer: torch.optim.Optimizer, params: list[torch.nn.Parameter], grads: list,
                  loss_scale: float | None) -> None:
    """One step of the CLUB critics on ``grads``; with a ``loss_scale`` (fp16), the gradients
    are unscaled first and the step skipped if they are not finite (an overflow)."""
    if loss_scale is not None:
        grads = [None if grad is None else grad / loss_scale for grad in grads]
        if not all(bool(torch.isfinite(grad).all()) for grad in grads if grad is not None):
            return
    for param, grad in zip(params, grads):
        param.grad = grad
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
