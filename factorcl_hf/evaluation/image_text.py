"""End-of-training evaluation on an image+caption(+label) split: image↔text retrieval with
the model's own shared-space scores, and a linear probe of the label on frozen embeddings."""

from __future__ import annotations

import torch

from .probe import linear_probe_accuracy


@torch.no_grad()
def encode_image_text(model, processor, dataset, image_column="image", caption_column="caption", batch_size=128):
    """Embeddings of every row: ``{"image": FactorCLEmbeddings-like dict, "text": ...}`` with
    tensors concatenated over the dataset (on CPU)."""
    from ..data.image_text import ImageTextCollator

    collator = ImageTextCollator(processor, image_column, caption_column,
                                 max_length=model.config.clip_config.text_config.max_position_embeddings)
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    parts: dict[str, dict[str, list[torch.Tensor]]] = {"image": {}, "text": {}}
    for start in range(0, len(dataset), batch_size):
        batch = collator([dataset[i] for i in range(start, min(start + batch_size, len(dataset)))])
        batch = {k: v.to(device) for k, v in batch.items() if k != "row_indices"}
        outputs = {
            "image": model.get_image_features(batch["pixel_values"]),
            "text": model.get_text_features(batch["input_ids"], batch["attention_mask"]),
        }
        for modality, embeddings in outputs.items():
            for name, value in embeddings.items():
                parts[modality].setdefault(name, []).append(value.float().cpu())
    model.train(was_training)
    return {modality: {name: torch.cat(values) for name, values in fields.items()} for modality, fields in parts.items()}


def recall_at_k(scores: torch.Tensor, ks=(1, 5, 10), groups: torch.Tensor | None = None) -> dict[str, float]:
    """Recall@k from a square ``[N, N]`` score matrix: row i's hit is column i, or with
    ``groups`` any column of the same group (e.g. captions describing the same content)."""
    if scores.dim() != 2 or scores.shape[0] != scores.shape[1]:
        raise ValueError(f"`scores` must be a square [N, N] matrix, got {tuple(scores.shape)}")
    if groups is None:
        groups = torch.arange(scores.shape[0])
    correct = groups.view(-1, 1) == groups.view(1, -1)
    best_correct = scores.masked_fill(~correct, float("-inf")).max(dim=1, keepdim=True).values
    # Rank = number of candidates scored strictly above the best right one (ties favour it).
    rank = (scores > best_correct).sum(dim=1)
    return {f"r{k}": (rank < k).float().mean().item() for k in ks}


def _group_ids(dataset, columns) -> torch.Tensor:
    keys = list(zip(*(dataset[c] for c in columns)))
    index = {key: i for i, key in enumerate(dict.fromkeys(keys))}
    return torch.tensor([index[key] for key in keys])


def evaluate_image_text(model, processor, train_set, eval_set, image_column="image", caption_column="caption",
                        label_column=None, batch_size=128, match_columns=None) -> dict[str, float]:
    """Retrieval R@1/R@5 (both directions, and their mean) on ``eval_set`` — exact pairs, and
    with ``match_columns`` also ``retrieval_match_r1``: a hit is any item that agrees with the
    query on those columns (the content two modalities share); with a label
    column, linear-probe accuracy of the label from the factorized embedding
    ``[Z_S; Z_U]`` of image and text (``probe_acc``) and from the backbone (``backbone_probe_acc``),
    probes fitted on ``train_set``."""
    test = encode_image_text(model, processor, eval_set, image_column, caption_column, batch_size)
    with torch.no_grad():
        device = next(model.parameters()).device
        scores = model.objective.alignment_critic(
            test["image"]["pooler_output"].to(device), test["text"]["pooler_output"].to(device)
        ).float().cpu()
    image_to_text, text_to_image = recall_at_k(scores, (1, 5)), recall_at_k(scores.T, (1, 5))
    metrics = {
        "retrieval_i2t_r1": image_to_text["r1"],
        "retrieval_i2t_r5": image_to_text["r5"],
        "retrieval_t2i_r1": text_to_image["r1"],
        "retrieval_t2i_r5": text_to_image["r5"],
        "retrieval_r1": (image_to_text["r1"] + text_to_image["r1"]) / 2,
        "retrieval_r5": (image_to_text["r5"] + text_to_image["r5"]) / 2,
    }
    if match_columns:
        groups = _group_ids(eval_set, match_columns)
        hits = [recall_at_k(s, (1,), groups)["r1"] for s in (scores, scores.T)]
        metrics["retrieval_match_r1"] = sum(hits) / 2
    if label_column is not None:
        train = encode_image_text(model, processor, train_set, image_column, caption_column, batch_size)
        for key, field in (("probe_acc", "factorized_embeds"), ("backbone_probe_acc", "backbone_embeds")):
            features = [torch.cat([split["image"][field], split["text"][field]], dim=1) for split in (train, test)]
            metrics[key] = linear_probe_accuracy(
                features[0], train_set[label_column], features[1], eval_set[label_column]
            )
    return metrics
