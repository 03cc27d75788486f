"""Zero-shot classification: class names and prompt templates become text embeddings in the
shared space, and each image takes the class whose prompts score highest.

Prompt ensembling follows CLIP when scores are cosine similarities (the ``"pooler"``
embedding of a model with the default cosine alignment critic, or any other embedding): the
templates' embeddings are L2-normalised, averaged and renormalised into one class embedding.
A trained (concat/separable) alignment critic was never shown such averaged inputs, so for
it the critic's scores are averaged over templates instead.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F

from ..estimators import CosineCritic
from .embed import extract_embeddings
from .retrieval import expected_hits, score_matrix

__all__ = ["DEFAULT_TEMPLATES", "class_prompt_embeddings", "zero_shot_logits", "topk_accuracy", "evaluate_zero_shot"]

DEFAULT_TEMPLATES = ("a photo of a {}.",)


def _check_prompts(class_names: Sequence[str], templates: Sequence[str]) -> None:
    if isinstance(class_names, str) or len(class_names) < 2 or not all(isinstance(c, str) for c in class_names):
        raise ValueError(f"`class_names` must be a sequence of at least two strings, got {class_names!r}")
    if len(set(class_names)) != len(class_names):
        raise ValueError("`class_names` must be distinct")
    if isinstance(templates, str) or not templates or not all(isinstance(t, str) and "{}" in t for t in templates):
        raise ValueError(f"`templates` must be a non-empty sequence of strings containing '{{}}', got {templates!r}")


def class_prompt_embeddings(
    model,
    processor,
    class_names: Sequence[str],
    templates: Sequence[str] = DEFAULT_TEMPLATES,
    embedding: str = "pooler",
    **embed_kwargs,
) -> torch.Tensor:
    """``[n_classes, n_templates, dim]`` text embeddings of every ``template.format(class)``."""
    _check_prompts(class_names, templates)
    prompts = [template.format(name) for name in class_names for template in templates]
    embeds = extract_embeddings(model, processor, prompts, "text", embedding, **embed_kwargs)[embedding]
    return embeds.view(len(class_names), len(templates), -1)


def zero_shot_logits(
    image_embeds: torch.Tensor, prompt_embeds: torch.Tensor, critic: torch.nn.Module | None = None
) -> torch.Tensor:
    """``[n_images, n_classes]`` class scores.

    Args:
        image_embeds: ``[n_images, dim]``.
        prompt_embeds: ``[n_classes, n_templates, dim]`` (or ``[n_classes, dim]`` for one template).
        critic: the scorer (``model.objective.alignment_critic`` for ``"pooler"`` embeddings);
            ``None`` for cosine similarity.
    """
    if not isinstance(prompt_embeds, torch.Tensor) or prompt_embeds.dim() not in (2, 3):
        raise ValueError("`prompt_embeds` must be a [n_classes, n_templates, dim] or [n_classes, dim] tensor")
    if prompt_embeds.dim() == 2:
        prompt_embeds = prompt_embeds[:, None]
    if critic is None or isinstance(critic, CosineCritic):
        classes = F.normalize(F.normalize(prompt_embeds.float(), dim=-1).mean(dim=1), dim=-1)
        return score_matrix(image_embeds, classes, critic)
    n_classes, n_templates, dim = prompt_embeds.shape
    scores = score_matrix(image_embeds, prompt_embeds.reshape(n_classes * n_templates, dim), critic)
    return scores.view(-1, n_classes, n_templates).mean(dim=-1)


def topk_accuracy(logits: Any, labels: Any, ks: Sequence[int] = (1, 5)) -> dict[str, float]:
    """Top-K accuracy of ``[n, n_classes]`` ``logits`` against integer ``labels`` ``[n]``.

    Only cut-offs below the number of classes are reported (top-5 of 4 classes is always 1).
    Ties are broken at random, in expectation (see :func:`~factorcl_hf.evaluation.retrieval.expected_hits`).
    Returns ``{"top1": ..., "top5": ...}``.
    """
    logits = torch.as_tensor(logits)
    labels = torch.as_tensor(labels)
    if logits.dim() != 2:
        raise ValueError(f"`logits` must have shape [n, n_classes], got {tuple(logits.shape)}")
    if labels.shape != (logits.shape[0],) or labels.is_floating_point():
        raise ValueError(f"`labels` must be {logits.shape[0]} integer class ids, got shape {tuple(labels.shape)}")
    if labels.min() < 0 or labels.max() >= logits.shape[1]:
        raise ValueError(f"`labels` must be class ids in [0, {logits.shape[1] - 1}]")
    if not ks or not all(isinstance(k, int) and k >= 1 for k in ks):
        raise ValueError(f"`ks` must be positive integers, got {ks!r}")
    correct = F.one_hot(labels.long(), logits.shape[1]).bool()
    return {f"top{k}": expected_hits(logits, correct, k).mean().item() for k in ks if k < logits.shape[1]}


def evaluate_zero_shot(
    model,
    processor,
    images: Sequence[Any],
    labels: Sequence[int],
    class_names: Sequence[str],
    templates: Sequence[str] = DEFAULT_TEMPLATES,
    embedding: str = "pooler",
    ks: Sequence[int] = (1, 5),
    **embed_kwargs,
) -> dict[str, float]:
    """Zero-shot top-K accuracy of ``model`` on ``images`` with integer ``labels`` indexing
    ``class_names``. ``embed_kwargs`` go to :func:`~factorcl_hf.evaluation.embed.extract_embeddings`."""
    prompts = class_prompt_embeddings(model, processor, class_names, templates, embedding, **embed_kwargs)
    image_embeds = extract_embeddings(model, processor, images, "image", embedding, **embed_kwargs)[embedding]
    critic = model.objective.alignment_critic if embedding == "pooler" else None
    return topk_accuracy(zero_shot_logits(image_embeds, prompts, critic), labels, ks)
