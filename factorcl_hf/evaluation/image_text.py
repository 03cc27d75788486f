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
    """Retrieval on ``eval_set``: R@1/R@5 of exact pairs in both directions and their mean
    (``retrieval_r1``, ``retrieval_r5``); with ``match_columns`` also ``retrieval_match_r1``,
    where any item agreeing with the query on those columns (the content both modalities
    share) is a hit. With a label column: linear-probe accuracy of the label from the
    factorized embedding ``[Z_S; Z_U]`` of image and text (``probe_acc``) and from the
    backbone (``backbone_probe_acc``), probes fitted on ``train_set``."""
    test = encode_image_text(model, processor, eval_set, image_column, caption_column, batch_size=batch_size)
    scores = score_matrix(test["image"]["pooler"], test["text"]["pooler"], critic=model.objective.alignment_critic)
    recall = recall_at_k(scores, ks=(1, 5))
    metrics = {f"retrieval_{key.replace('image_to_text', 'i2t').replace('text_to_image', 't2i').replace('R@', 'r')}": value
               for key, value in recall.items() if "R@" in key}
    for k in (1, 5):
        metrics[f"retrieval_r{k}"] = (metrics[f"retrieval_i2t_r{k}"] + metrics[f"retrieval_t2i_r{k}"]) / 2
    if match_columns:
        correct = _same_content(eval_set, match_columns)
        hits = [expected_hits(s, correct, 1).mean().item() for s in (scores, scores.T)]
        metrics["retrieval_match_r1"] = sum(hits) / 2
    if label_column is not None:
        train = encode_image_text(model, processor, train_set, image_column, caption_column, batch_size=batch_size)
        for key, name in (("probe_acc", "factorized"), ("backbone_probe_acc", "backbone")):
            features = [torch.cat([split["image"][name], split["text"][name]], dim=1) for split in (train, test)]
            metrics[key] = linear_probe_accuracy(features[0], train_set[label_column], features[1], eval_set[label_column])
    return metrics
