"""End-of-training evaluation on an image+caption(+label) split: image↔text retrieval with
the model's own shared-space scores, and a linear probe of the label on frozen embeddings."""

from __future__ import annotations

import torch

from .embed import extract_embeddings
from .probe import linear_probe_accuracy
from .retrieval import expected_hits, recall_at_k, score_matrix


def encode_image_text(model, processor, dataset, image_column="image", caption_column="caption",
                      embeddings=("pooler", "factorized", "backbone"), batch_size=128) -> dict[str, dict[str, torch.Tensor]]:
    """``{"image": {name: [N, d]}, "text": {...}}`` for every row of ``dataset``."""
    columns = {"image": image_column, "text": caption_column}
    return {
        modality: extract_embeddings(model, processor, dataset[column], modality, embeddings, batch_size)
        for modality, column in columns.items()
    }


def _same_content(dataset, columns) -> torch.Tensor:
    """``[N, N]``: rows that agree on every one of ``columns``."""
    keys = list(zip(*(dataset[c] for c in columns)))
    ids = {key: i for i, key in enumerate(dict.fromkeys(keys))}
    groups = torch.tensor([ids[key] for key in keys])
    return groups[:, None] == groups[None, :]


def evaluate_image_text(model, processor, train_set, eval_set, image_column="image", caption_column="caption",
                        label_column=None, batch_size=128, match_columns=None) -> dict[str, float]:
    """Retrieval on ``eval_set``, named as ``python -m factorcl_hf.evaluation`` names it:
    ``image_to_text_R@K`` and ``text_to_image_R@K`` of exact pairs for K = 1, 5, and their
    means ``mean_R@K``; with ``match_columns`` also ``match_mean_R@1``, where any item agreeing
    with the query on those columns (the content both modalities share) is a hit. With a
    label column, the linear probe task's ``{embedding}_accuracy``: the label from the
    factorized embedding ``[Z_S; Z_U]`` of image and text (``factorized_accuracy``) and from
    the backbone (``backbone_accuracy``), probes fitted on ``train_set``."""
    test = encode_image_text(model, processor, eval_set, image_column, caption_column, batch_size=batch_size)
    scores = score_matrix(test["image"]["pooler"], test["text"]["pooler"], critic=model.objective.alignment_critic)
    metrics = {key: value for key, value in recall_at_k(scores, ks=(1, 5)).items() if "R@" in key}
    for k in (1, 5):
        metrics[f"mean_R@{k}"] = (metrics[f"image_to_text_R@{k}"] + metrics[f"text_to_image_R@{k}"]) / 2
    if match_columns:
        correct = _same_content(eval_set, match_columns)
        hits = [expected_hits(s, correct, 1).mean().item() for s in (scores, scores.T)]
        metrics["match_mean_R@1"] = sum(hits) / 2
    if label_column is not None:
        train = encode_image_text(model, processor, train_set, image_column, caption_column, batch_size=batch_size)
        for name in ("factorized", "backbone"):
            features = [torch.cat([split["image"][name], split["text"][name]], dim=1) for split in (train, test)]
            metrics[f"{name}_accuracy"] = linear_probe_accuracy(
                features[0], train_set[label_column], features[1], eval_set[label_column]
            )
    return metrics
