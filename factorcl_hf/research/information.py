"""How much label information each factor of a trained model holds.

For an embedding ``Z`` (e.g. the image's shared Z_S or unique Z_U) and the label ``Y``, a
small concat critic ``f(z, onehot(y))`` is trained on the train split by maximising InfoNCE
(with :mod:`factorcl_hf.estimators`), then, on held-out batches:

* InfoNCE, a lower bound on ``I(Z; Y)`` (never above ``log batch_size``);
* NCE-CLUB with the same critic, an (estimated) upper bound — the paper's estimator pair.

Both are in nats; ``H(Y)`` of the held-out labels bounds ``I(Z; Y)`` and is reported beside
them. On the shapes dataset a FactorCL model's unique embeddings should hold label
information that a CLIP-style (shared-only) model's embeddings cannot.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ..estimators import ConcatCritic, club_upper_bound, fit_critic, infonce_lower_bound
from ..evaluation.embed import MODALITIES, extract_embeddings

__all__ = [
    "estimate_label_information",
    "label_entropy",
    "information_report",
]


def _as_features(name: str, values: Any) -> torch.Tensor:
    values = torch.as_tensor(values).float()
    if values.dim() != 2 or values.shape[0] < 2 or values.shape[1] < 1:
        raise ValueError(f"`{name}` must have shape [n >= 2, dim], got {tuple(values.shape)}")
    if not torch.isfinite(values).all():
        raise ValueError(f"`{name}` contains NaN or infinite values")
    return values


def _as_labels(name: str, values: Any, n: int) -> torch.Tensor:
    values = torch.as_tensor(values)
    if values.shape != (n,) or values.is_floating_point() or (n and values.min() < 0):
        raise ValueError(f"`{name}` must be {n} non-negative integer class ids, got shape {tuple(values.shape)}")
    return values.long()


def label_entropy(labels: Any) -> float:
    """Empirical entropy ``H(Y)`` in nats of integer ``labels``."""
    counts = np.bincount(np.asarray(labels, dtype=np.int64))
    p = counts[counts > 0] / counts.sum()
    return float(-(p * np.log(p)).sum())


def estimate_label_information(
    train_features: Any,
    train_labels: Any,
    test_features: Any,
    test_labels: Any,
    num_labels: int | None = None,
    steps: int = 300,
    batch_size: int = 128,
    learning_rate: float = 5e-3,
    hidden_dim: int = 128,
    seed: int = 0,
) -> dict[str, float]:
    """InfoNCE and NCE-CLUB estimates of ``I(Z; Y)`` on held-out data.

    Args:
        train_features, train_labels: ``[n, dim]`` embeddings and integer labels the critic
            is trained on (features are standardised with train statistics).
        test_features, test_labels: held-out data the estimates are computed on.
        num_labels: number of classes (default: largest label + 1).
        steps: critic optimisation steps (Adam), each on a random train batch.
        batch_size: train and evaluation batch size; InfoNCE is capped at ``log batch_size``.
        learning_rate, hidden_dim: critic optimiser (Adam; 5e-3 as in the paper's MI notebook)
            and size (one hidden layer).
        seed: seeds the critic's initialisation and the batch draws (global RNG untouched).

    Returns:
        ``{"infonce": ..., "nce_club": ...}`` in nats, averaged over held-out batches.
    """
    train_x = _as_features("train_features", train_features)
    test_x = _as_features("test_features", test_features)
    if test_x.shape[1] != train_x.shape[1]:
        raise ValueError(f"`test_features` has {test_x.shape[1]} features, `train_features` {train_x.shape[1]}")
    train_y = _as_labels("train_labels", train_labels, train_x.shape[0])
    test_y = _as_labels("test_labels", test_labels, test_x.shape[0])
    if num_labels is None:
        num_labels = int(max(train_y.max(), test_y.max())) + 1
    if not isinstance(num_labels, int) or num_labels < 2 or max(train_y.max(), test_y.max()) >= num_labels:
        raise ValueError(f"`num_labels` must be an int >= 2 above every label, got {num_labels!r}")
    for name, value in (("steps", steps), ("batch_size", batch_size), ("hidden_dim", hidden_dim)):
        if not isinstance(value, int) or value < (2 if name == "batch_size" else 1):
            raise ValueError(f"`{name}` must be a positive integer{' >= 2' if name == 'batch_size' else ''}, got {value!r}")

    mean, std = train_x.mean(0), train_x.std(0).clamp_min(1e-6)
    train_x, test_x = (train_x - mean) / std, (test_x - mean) / std
    train_onehot, test_onehot = F.one_hot(train_y, num_labels).float(), F.one_hot(test_y, num_labels).float()

    generator = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        critic = ConcatCritic(train_x.shape[1], num_labels, hidden_dim=hidden_dim, num_hidden_layers=1)
    fit_critic(critic, train_x, train_onehot, steps, learning_rate, batch_size, generator)

    order = torch.randperm(test_x.shape[0], generator=generator)
    # Equal-sized held-out batches: InfoNCE's ceiling log(B) depends on B.
    eval_batch = min(batch_size, test_x.shape[0])
    batches = order[: len(order) - len(order) % eval_batch].view(-1, eval_batch)
    infonce, club = [], []
    with torch.no_grad():
        for idx in batches:
            scores = critic(test_x[idx], test_onehot[idx])
            infonce.append(infonce_lower_bound(scores).item())
            club.append(club_upper_bound(scores).item())
    return {"infonce": float(np.mean(infonce)), "nce_club": float(np.mean(club))}


def information_report(
    model,
    processor,
    train: tuple[Sequence[Any], Sequence[str], Sequence[int]],
    test: tuple[Sequence[Any], Sequence[str], Sequence[int]],
    embeddings: Sequence[str] = ("shared", "unique"),
    embed_kwargs: dict[str, Any] | None = None,
    **estimator_kwargs,
) -> dict[str, float]:
    """Label information in each modality's embeddings of a model, estimated on held-out data.

    Args:
        model, processor: the model to inspect and its processor.
        train, test: ``(images, texts, labels)`` of each split; critics train on ``train``.
        embeddings: which embeddings to inspect (default: the shared and unique factors).
        embed_kwargs: passed to :func:`~factorcl_hf.evaluation.embed.extract_embeddings`.
        estimator_kwargs: passed to :func:`estimate_label_information` (steps, batch_size, ...).

    Returns:
        ``{"<modality>_<embedding>_infonce": ..., "<modality>_<embedding>_nce_club": ...,
        "label_entropy": H(Y) of the test labels}`` in nats.
    """
    embed_kwargs = embed_kwargs or {}
    for split_name, split in (("train", train), ("test", test)):
        if len(split) != 3 or not len(split[0]) == len(split[1]) == len(split[2]):
            raise ValueError(f"`{split_name}` must be (images, texts, labels) of equal lengths")
    labels = {name: np.asarray(split[2]) for name, split in (("train", train), ("test", test))}
    num_labels = int(max(labels["train"].max(), labels["test"].max())) + 1
    report: dict[str, float] = {}
    for m, modality in enumerate(MODALITIES):
        features = {
            name: extract_embeddings(model, processor, split[m], modality, embeddings, **embed_kwargs)
            for name, split in (("train", train), ("test", test))
        }
        for embedding in embeddings:
            estimate = estimate_label_information(
                features["train"][embedding], labels["train"], features["test"][embedding], labels["test"],
                num_labels=num_labels, **estimator_kwargs,
            )
            for bound, value in estimate.items():
                report[f"{modality}_{embedding}_{bound}"] = value
    report["label_entropy"] = label_entropy(labels["test"])
    return report
