"""What each embedding holds: a probe of every generating attribute from every embedding.

A factorized model promises a shared embedding Z_S holding what both modalities say and a
modality-unique embedding Z_U holding what only its own modality carries. Its own critics
cannot vouch for that (a critic that lost the min-max game reads nothing), so this report
asks the representation itself: for each attribute column of a dataset (for the embedded
shapes data: shape, size, position shared; colour, background image-only; drawer
caption-only), a classifier is fitted on the train split's embeddings and scored on the
held-out split, for each modality and each embedding (backbone, shared, unique).

Two probes: the linear one (logistic regression on standardised features, the paper's
protocol, :func:`~factorcl_hf.evaluation.probe.linear_probe_accuracy`) and a small MLP (one
hidden layer), which shows what an embedding holds nonlinearly. ``chance`` is the accuracy of
always answering the train split's most common class.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .probe import _check_labels, _check_matrix, linear_probe_accuracy

__all__ = [
    "PROBES",
    "FACTORIZATION_EMBEDDINGS",
    "mlp_probe_accuracy",
    "mlp_probe_accuracies",
    "probe_attributes",
    "factorization_report",
    "save_factorization_heatmap",
]

PROBES = ("linear", "mlp")
FACTORIZATION_EMBEDDINGS = ("backbone", "shared", "unique")


def mlp_probe_accuracies(
    train_features: Any, train_labels: Sequence[Any], test_features: Any, test_labels: Sequence[Any],
    hidden_dim: int = 64, steps: int = 200, learning_rate: float = 1e-2, weight_decay: float = 1e-4, seed: int = 0,
) -> list[float]:
    """Test accuracy of one one-hidden-layer ReLU classifier per label set, each fitted
    full-batch with Adam on standardised train features (statistics of the train split only).

    The classifiers are independent (own weights, own loss; Adam's update is per parameter) but
    trained side by side as one batched computation: several label sets of one embedding cost
    about as much as one."""
    train_x = _check_matrix("train_features", train_features)
    test_x = _check_matrix("test_features", test_features, num_columns=train_x.shape[1])
    ids, classes = [], []
    for k, (train_y, test_y) in enumerate(zip(train_labels, test_labels)):
        train_y = _check_labels(f"train_labels[{k}]", train_y, train_x.shape[0])
        test_y = _check_labels(f"test_labels[{k}]", test_y, test_x.shape[0])
        names, train_ids = np.unique(train_y, return_inverse=True)
        if names.size < 2:
            raise ValueError("`train_labels` must contain at least two classes to fit a probe")
        ids.append((train_ids, test_y))
        classes.append(names)
    num_probes, width = len(classes), max(names.size for names in classes)
    mean, std = train_x.mean(0), train_x.std(0) + 1e-8
    x = torch.as_tensor((train_x - mean) / std, dtype=torch.float32)
    y = torch.as_tensor(np.stack([train_ids for train_ids, _ in ids]))
    # Logits of classes a label set does not have never win and carry no loss.
    absent = torch.arange(width)[None, :] >= torch.tensor([names.size for names in classes])[:, None]
    generator = torch.Generator().manual_seed(seed)

    def uniform(*shape, fan_in):
        bound = 1 / math.sqrt(fan_in)
        return ((torch.rand(*shape, generator=generator) * 2 - 1) * bound).requires_grad_()

    dim = x.shape[1]
    w1, b1 = uniform(num_probes, dim, hidden_dim, fan_in=dim), uniform(num_probes, 1, hidden_dim, fan_in=dim)
    w2, b2 = uniform(num_probes, hidden_dim, width, fan_in=hidden_dim), uniform(num_probes, 1, width, fan_in=hidden_dim)

    def logits(inputs):
        hidden = torch.relu(torch.matmul(inputs, w1) + b1)
        return (torch.bmm(hidden, w2) + b2).masked_fill(absent[:, None, :], float("-inf"))

    optimizer = torch.optim.Adam([w1, b1, w2, b2], lr=learning_rate, weight_decay=weight_decay)
    with torch.enable_grad():
        for _ in range(steps):
            loss = torch.nn.functional.cross_entropy(logits(x).transpose(1, 2), y, reduction="none").mean(1).sum()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    with torch.no_grad():
        predicted = logits(torch.as_tensor((test_x - mean) / std, dtype=torch.float32)).argmax(2).numpy()
    return [float((names[predicted[k]] == test_y).mean()) for k, (names, (_, test_y)) in enumerate(zip(classes, ids))]


def mlp_probe_accuracy(train_features: Any, train_labels: Any, test_features: Any, test_labels: Any, **options) -> float:
    """:func:`mlp_probe_accuracies` of one label set."""
    return mlp_probe_accuracies(train_features, [train_labels], test_features, [test_labels], **options)[0]


def _check_probes(probes: Sequence[str]) -> tuple[str, ...]:
    probes = (probes,) if isinstance(probes, str) else tuple(probes)
    unknown = [p for p in probes if p not in PROBES]
    if not probes or unknown:
        raise ValueError(f"`probes` must name some of {PROBES}, got {list(probes)}")
    return probes


def _class_ids(column: str, train_values: Sequence, test_values: Sequence) -> tuple[np.ndarray, np.ndarray]:
    """Integer ids of an attribute column's values (strings or integers), one mapping for
    both splits; a test value the train split never shows is an error naming it."""
    if len(train_values) == 0 or len(test_values) == 0:
        raise ValueError(f"attribute column {column!r} is empty in a split")
    names = sorted(set(train_values), key=str)
    ids = {name: i for i, name in enumerate(names)}
    unseen = sorted({v for v in test_values if v not in ids}, key=str)
    if unseen:
        raise ValueError(f"attribute column {column!r}: the held-out split has values {unseen[:5]} that the "
                         "train split never shows, so no probe can predict them")
    if len(names) < 2:
        raise ValueError(f"attribute column {column!r} has one value ({names[0]!r}) in the train split: nothing to probe")
    return np.array([ids[v] for v in train_values]), np.array([ids[v] for v in test_values])


def probe_attributes(
    train_embeddings: Mapping[str, Mapping[str, Any]],
    train_attributes: Mapping[str, Sequence],
    test_embeddings: Mapping[str, Mapping[str, Any]],
    test_attributes: Mapping[str, Sequence],
    probes: Sequence[str] = PROBES,
    seed: int = 0,
) -> dict:
    """Probe every attribute from every embedding.

    Args:
        train_embeddings / test_embeddings: ``{modality: {embedding: [N, d]}}``.
        train_attributes / test_attributes: ``{attribute: N values}`` (strings or integers).
        probes: some of :data:`PROBES`.

    Returns:
        ``{"chance": {attribute: acc}, "num_train": n, "num_test": n,
        probe: {modality: {embedding: {attribute: acc}}}}``.
    """
    probes = _check_probes(probes)
    ids = {name: _class_ids(name, train_attributes[name], test_attributes[name]) for name in train_attributes}
    report: dict[str, Any] = {"chance": {}}
    for name, (train_y, test_y) in ids.items():
        report["chance"][name] = float((test_y == np.bincount(train_y).argmax()).mean())
    first = next(iter(train_embeddings.values()))
    report["num_train"] = len(next(iter(first.values())))
    report["num_test"] = len(next(iter(next(iter(test_embeddings.values())).values())))
    for probe in probes:
        report[probe] = {
            modality: {embedding: _probe_all(probe, features, test_embeddings[modality][embedding], ids, seed)
                       for embedding, features in per_modality.items()}
            for modality, per_modality in train_embeddings.items()
        }
    return report


def _probe_all(probe: str, train_features, test_features, ids: dict, seed: int) -> dict[str, float]:
    """Every attribute's held-out accuracy from one embedding."""
    if probe == "linear":
        return {name: linear_probe_accuracy(train_features, train_y, test_features, test_y)
                for name, (train_y, test_y) in ids.items()}
    accuracies = mlp_probe_accuracies(train_features, [y for y, _ in ids.values()], test_features,
                                      [y for _, y in ids.values()], seed=seed)
    return dict(zip(ids, accuracies))


def factorization_report(
    model, processor, train_set, eval_set, attributes: Sequence[str], image_column: str = "image",
    caption_column: str = "caption", probes: Sequence[str] = PROBES, batch_size: int = 128, seed: int = 0,
) -> dict:
    """:func:`probe_attributes` over a model's image and text embeddings (backbone, shared and,
    for factorized objectives, unique) of two splits of an image+caption dataset whose
    ``attributes`` columns say what generated each pair."""
    from .embed import available_embeddings, extract_embeddings

    missing = [c for c in attributes if c not in eval_set.column_names or c not in train_set.column_names]
    if not attributes or missing:
        raise ValueError(f"`attributes` must name columns of both splits; missing: {missing or 'none given'} "
                         f"(columns: {eval_set.column_names})")
    names = tuple(e for e in FACTORIZATION_EMBEDDINGS if e in available_embeddings(model))

    def embed(split):
        return {
            modality: extract_embeddings(model, processor, split[column], modality, names, batch_size)
            for modality, column in (("image", image_column), ("text", caption_column))
        }

    return probe_attributes(
        embed(train_set), {c: train_set[c] for c in attributes}, embed(eval_set), {c: eval_set[c] for c in attributes},
        probes, seed,
    )


def save_factorization_heatmap(report: Mapping, path: str | Path, title: str | None = None) -> Path:
    """A PNG with one heatmap per probe: rows modality/embedding, columns attributes, cells
    the held-out accuracy (chance in the column header)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    probes = [p for p in PROBES if p in report]
    attributes = list(report["chance"])
    fig, axes = plt.subplots(1, len(probes), figsize=(1.1 * len(attributes) * len(probes) + 2, 3.6), squeeze=False)
    for ax, probe in zip(axes[0], probes):
        rows = [(m, e) for m, per in report[probe].items() for e in per]
        values = np.array([[report[probe][m][e][a] for a in attributes] for m, e in rows])
        ax.imshow(values, vmin=0, vmax=1, cmap="viridis", aspect="auto")
        for (i, j), value in np.ndenumerate(values):
            ax.text(j, i, f"{value:.2f}", ha="center", va="center", color="white" if value < 0.6 else "black", fontsize=8)
        ax.set_xticks(range(len(attributes)), [f"{a}\n(chance {report['chance'][a]:.2f})" for a in attributes], fontsize=7)
        ax.set_yticks(range(len(rows)), [f"{m} {e}" for m, e in rows], fontsize=8)
        ax.set_title(f"{probe} probe")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
