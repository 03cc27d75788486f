"""Does each CLUB critic still see what its heads hold? A check of FactorCL's min-max game.

The encoders minimize CLUB upper bounds scored by critics trained alongside them; if the
encoders move faster than the critics, they can hide information from *those* critics while
still holding it. The check (docs/synthetic_benchmark.md) compares, on held-out data, each
CLUB term's own critic with a fresh critic fitted to the frozen features.

One name throughout: the **critic inputs** of a batch are the detached ``(x, y)`` pairs — or
``(x, y, condition)`` triples for conditional estimators — each CLUB critic scores (``ObjectiveOutput.critic_inputs``, keyed like
``objective.club_estimators``); :func:`critic_inputs` concatenates them over every batch of a
split, and :func:`club_critic_report` takes those of a train and a test split.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Iterator
from typing import Any

import torch

from ..data.image_text import IndexedDataset
from ..estimators import fit_critic, infonce_lower_bound, negative_log_weights

__all__ = ["critic_inputs", "image_text_batches", "club_critic_report"]

CriticInputs = dict[str, tuple[torch.Tensor, ...]]


@torch.no_grad()
def critic_inputs(model: torch.nn.Module, batches: Iterable[dict[str, Any]]) -> CriticInputs:
    """The critic inputs of a split: run ``model(**inputs)`` for every ``inputs`` of
    ``batches`` in eval mode, without gradients, and concatenate (on the CPU, in float32) the
    pairs each CLUB critic scores (``outputs.critic_inputs``). ``batches`` is consumed lazily,
    after the switch to eval mode; the model's mode is restored."""
    parts: dict[str, list[list[torch.Tensor]]] = {}
    was_training = model.training
    model.eval()
    try:
        for inputs in batches:
            for key, tensors in (model(**inputs).critic_inputs or {}).items():
                columns = parts.setdefault(key, [[] for _ in tensors])
                for column, tensor in zip(columns, tensors):
                    column.append(tensor.cpu() if not tensor.is_floating_point() else tensor.float().cpu())
    finally:
        model.train(was_training)
    return {key: tuple(torch.cat(column) for column in columns) for key, columns in parts.items()}


def image_text_batches(model, collator, dataset, batch_size: int) -> Iterator[dict[str, Any]]:
    """Model inputs for every full batch of ``dataset`` in order, formed as in training
    (``collator`` adds labels and augmented views) and moved to ``model``'s device: the
    ``batches`` of :func:`critic_inputs` for a :class:`~factorcl_hf.FactorCLModel`."""
    if batch_size < 2 or len(dataset) < batch_size:
        raise ValueError(f"`batch_size` must be in [2, {len(dataset)}] (the dataset's rows), got {batch_size}")
    rows = IndexedDataset(dataset)
    device = next(model.parameters()).device

    def batches():
        for start in range(0, len(rows) - batch_size + 1, batch_size):
            batch = collator([rows[i] for i in range(start, start + batch_size)])
            batch.pop("row_indices")
            yield {**{k: v.to(device) for k, v in batch.items()}, "return_loss": True}

    return batches()


def _mean_infonce(estimator, critic: torch.nn.Module, inputs: tuple[torch.Tensor, ...], batch_size: int) -> float:
    """InfoNCE of ``critic`` with ``estimator``'s negatives, averaged over consecutive full
    batches of ``batch_size`` rows of ``inputs`` (``(x, y[, condition])``)."""
    values = []
    with torch.no_grad():
        for start in range(0, len(inputs[0]) - batch_size + 1, batch_size):
            x, y, *condition = (t[start : start + batch_size] for t in inputs)
            log_weights = negative_log_weights(estimator.negatives, condition[0] if condition else None)
            values.append(infonce_lower_bound(critic(x, y), log_weights))
    return float(torch.stack(values).mean())


def _fresh_critic(critic: torch.nn.Module, seed: int) -> torch.nn.Module:
    """A copy of ``critic`` with every layer re-initialized from ``seed`` (global RNG untouched)."""
    fresh = copy.deepcopy(critic)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for module in fresh.modules():
            if module is not fresh and hasattr(module, "reset_parameters"):
                module.reset_parameters()
    return fresh


def club_critic_report(
    estimators: dict[str, torch.nn.Module],
    train_critic_inputs: CriticInputs,
    test_critic_inputs: CriticInputs,
    batch_size: int,
    refit_steps: int = 600,
    refit_lr: float = 1e-3,
    seed: int = 0,
) -> dict[str, dict[str, float]]:
    """For each ``NCECLUBEstimator`` in ``estimators`` (keyed like the critic inputs), the
    InfoNCE, in nats on ``test_critic_inputs`` (consecutive batches of ``batch_size``), of

    * ``"trained"``: the estimator's own critic, as training left it, and
    * ``"refit"``: a freshly initialized critic of the same architecture fitted for
      ``refit_steps`` Adam steps (lr ``refit_lr``) on the frozen ``train_critic_inputs``.

    ``"refit"`` far above ``"trained"`` means the information the CLUB term should remove is
    still there and the training critic no longer finds it. Neither the estimators nor the
    global RNG are modified.
    """
    if batch_size < 2:
        raise ValueError(f"`batch_size` must be >= 2 (InfoNCE needs negatives), got {batch_size}")
    report = {}
    generator = torch.Generator().manual_seed(seed)
    for key, estimator in estimators.items():
        for name, inputs in (("train_critic_inputs", train_critic_inputs), ("test_critic_inputs", test_critic_inputs)):
            if key not in inputs:
                raise ValueError(f"`{name}` has no entry {key!r}; it holds {sorted(inputs)}")
            if len(inputs[key][0]) < batch_size:
                raise ValueError(f"`{name}[{key!r}]` has {len(inputs[key][0])} pairs, fewer than `batch_size` ({batch_size})")
        fresh = _fresh_critic(estimator.critic, seed)
        x, y, *condition = train_critic_inputs[key]
        fit_critic(fresh, x, y, refit_steps, refit_lr, batch_size, generator,
                   condition=condition[0] if condition else None, negatives=estimator.negatives)
        report[key] = {
            "trained": _mean_infonce(estimator, estimator.critic, test_critic_inputs[key], batch_size),
            "refit": _mean_infonce(estimator, fresh, test_critic_inputs[key], batch_size),
        }
    return report
