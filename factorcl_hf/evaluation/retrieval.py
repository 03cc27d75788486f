"""Image <-> text retrieval: Recall@K in both directions.

:func:`recall_at_k` works on any ``[n_images, n_texts]`` score matrix; :func:`score_matrix`
builds one from embeddings (the model's alignment critic for the default ``"pooler"``
embedding, so retrieval ranks exactly as ``logits_per_image`` does; cosine similarity for
every other embedding); :func:`evaluate_retrieval` runs the whole protocol for a model.

Ties are broken at random, in expectation: a query's hit at K is the probability that a
uniformly random order of equally scored candidates puts a correct one in the top K. Ties
are common with duplicate images or captions (the shapes dataset renders identical pictures
for identical attributes); counting them as hits would reward a constant scorer with
Recall@1 = 1, counting them as misses would give duplicates 0 however good the model. Under
this rule a constant scorer gets exactly the chance rate ``K / n``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F

from .embed import extract_embeddings

__all__ = ["DEFAULT_KS", "expected_hits", "score_matrix", "recall_at_k", "evaluate_retrieval"]

DEFAULT_KS = (1, 5, 10)
# Pairs a critic scores per chunk: ~0.5 GB of float32 hidden activations at hidden size 512.
_PAIRS_PER_CHUNK = 2**18


def _as_score_matrix(name: str, scores: Any) -> torch.Tensor:
    scores = torch.as_tensor(scores)
    if scores.dim() != 2 or 0 in scores.shape:
        raise ValueError(f"`{name}` must be a non-empty 2-D matrix, got shape {tuple(scores.shape)}")
    if not scores.is_floating_point():
        scores = scores.float()
    if not torch.isfinite(scores).all():
        raise ValueError(f"`{name}` contains NaN or infinite values")
    return scores


def _check_ks(ks: Sequence[int]) -> tuple[int, ...]:
    ks = tuple(ks)
    if not ks or not all(isinstance(k, int) and not isinstance(k, bool) and k >= 1 for k in ks):
        raise ValueError(f"`ks` must be a non-empty sequence of positive integers, got {ks!r}")
    return ks


def _log_comb(n: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    return torch.lgamma(n + 1) - torch.lgamma(k + 1) - torch.lgamma(n - k + 1)


def expected_hits(scores: Any, correct: Any, k: int) -> torch.Tensor:
    """Probability, per query, that a correct candidate ranks in the top ``k`` when ties are
    broken uniformly at random.

    Args:
        scores: ``[n_queries, n_candidates]`` scores (higher is better).
        correct: boolean ``[n_queries, n_candidates]``; each row needs at least one ``True``.
        k: the cut-off.

    Returns:
        ``[n_queries]`` float tensor in [0, 1]. With ``a`` wrong candidates strictly above the
        best correct score, ``w`` wrong and ``c`` correct candidates tied at it, and
        ``m = k - a`` free places, it is ``1 - C(w, m) / C(w + c, m)``: one minus the chance
        that the first ``m`` of the tied group are all wrong (``m / (w + 1)`` for one correct).
    """
    scores = _as_score_matrix("scores", scores)
    correct = torch.as_tensor(correct, dtype=torch.bool)
    if correct.shape != scores.shape:
        raise ValueError(f"`correct` must have the shape of `scores` {tuple(scores.shape)}, got {tuple(correct.shape)}")
    if not correct.any(dim=1).all():
        missing = int((~correct.any(dim=1)).nonzero()[0])
        raise ValueError(f"`correct` row {missing} has no correct candidate: every query needs one")
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ValueError(f"`k` must be a positive integer, got {k!r}")
    best = scores.masked_fill(~correct, float("-inf")).max(dim=1, keepdim=True).values
    ahead = ((scores > best) & ~correct).sum(dim=1).double()
    tied_wrong = ((scores == best) & ~correct).sum(dim=1).double()
    tied_correct = ((scores == best) & correct).sum(dim=1).double()
    free = (k - ahead).clamp(min=0)
    places = torch.minimum(free, tied_wrong)
    all_wrong = torch.exp(_log_comb(tied_wrong, places) - _log_comb(tied_wrong + tied_correct, places))
    # More free places than tied wrong candidates: a correct one always gets in.
    all_wrong = all_wrong.masked_fill(free > tied_wrong, 0.0)
    return (1 - all_wrong).clamp(0, 1).float()


def score_matrix(
    image_embeds: torch.Tensor,
    text_embeds: torch.Tensor,
    critic: torch.nn.Module | None = None,
    chunk_size: int | None = None,
) -> torch.Tensor:
    """``[n_images, n_texts]`` scores: ``critic(image_embeds, text_embeds)`` or, without a
    critic, cosine similarity. A critic scores ``chunk_size`` image rows at a time (a concat
    critic builds a ``[rows, n_texts, hidden]`` tensor; default: rows for about 2^18 pairs),
    without gradients; the result is on CPU."""
    for name, embeds in (("image_embeds", image_embeds), ("text_embeds", text_embeds)):
        if not isinstance(embeds, torch.Tensor) or embeds.dim() != 2 or embeds.shape[0] == 0:
            raise ValueError(f"`{name}` must be a non-empty [n, dim] tensor, got {getattr(embeds, 'shape', type(embeds))}")
    if critic is None and image_embeds.shape[1] != text_embeds.shape[1]:
        raise ValueError(
            f"cosine scores need equal sizes: `image_embeds` has {image_embeds.shape[1]} features, "
            f"`text_embeds` {text_embeds.shape[1]}"
        )
    if chunk_size is None:
        chunk_size = max(1, _PAIRS_PER_CHUNK // text_embeds.shape[0])
    if not isinstance(chunk_size, int) or chunk_size < 1:
        raise ValueError(f"`chunk_size` must be a positive integer or None, got {chunk_size!r}")
    if critic is None:
        return F.normalize(image_embeds.float(), dim=-1) @ F.normalize(text_embeds.float(), dim=-1).T
    device = next(critic.parameters(), torch.empty(0)).device
    text_embeds = text_embeds.to(device)
    with torch.no_grad():
        rows = [critic(chunk.to(device), text_embeds).float().cpu() for chunk in image_embeds.split(chunk_size)]
    return torch.cat(rows)


def recall_at_k(scores: Any, text_to_image: Sequence[int] | None = None, ks: Sequence[int] = DEFAULT_KS) -> dict[str, float]:
    """Recall@K of image->text and text->image retrieval from a score matrix.

    Args:
        scores: ``[n_images, n_texts]`` (e.g. ``logits_per_image``).
        text_to_image: index of the image each text describes (several texts may share an
            image, as in COCO). Default: text ``i`` belongs to image ``i`` (square ``scores``).
        ks: cut-offs. A K at least the number of candidates gives 1.0.

    Returns:
        ``{"image_to_text_R@K": ..., "text_to_image_R@K": ..., "mean_recall": ...}``, fractions
        in [0, 1]. An image query hits when any of its texts ranks within the top K.
    """
    scores = _as_score_matrix("scores", scores)
    ks = _check_ks(ks)
    n_images, n_texts = scores.shape
    if text_to_image is None:
        if n_images != n_texts:
            raise ValueError(
                f"`scores` is {n_images}x{n_texts}: pass `text_to_image` (the image index of each text) "
                "unless image i pairs with text i"
            )
        owner = torch.arange(n_texts)
    else:
        owner = torch.as_tensor(text_to_image, dtype=torch.long)
        if owner.shape != (n_texts,):
            raise ValueError(f"`text_to_image` must hold one image index per text ({n_texts}), got shape {tuple(owner.shape)}")
        if owner.min() < 0 or owner.max() >= n_images:
            raise ValueError(f"`text_to_image` values must be image indices in [0, {n_images - 1}]")
    correct = owner[None, :] == torch.arange(n_images)[:, None]  # [n_images, n_texts]
    if not correct.any(dim=1).all():
        raise ValueError("every image needs at least one text in `text_to_image` for image->text retrieval")

    directions = {"image_to_text": (scores, correct), "text_to_image": (scores.T, correct.T)}
    metrics = {
        f"{direction}_R@{k}": expected_hits(s, c, k).mean().item() for direction, (s, c) in directions.items() for k in ks
    }
    metrics["mean_recall"] = sum(metrics.values()) / len(metrics)
    return metrics


def evaluate_retrieval(
    model,
    processor,
    images: Sequence[Any],
    texts: Sequence[str],
    embedding: str = "pooler",
    text_to_image: Sequence[int] | None = None,
    ks: Sequence[int] = DEFAULT_KS,
    **embed_kwargs,
) -> dict[str, float]:
    """Embed ``images`` and ``texts`` with ``model`` and compute :func:`recall_at_k`.

    ``"pooler"`` embeddings are scored by ``model.objective.alignment_critic`` (what the model
    was trained to rank with); other embeddings by cosine similarity. ``embed_kwargs`` go to
    :func:`~factorcl_hf.evaluation.embed.extract_embeddings` (batch_size, device, progress).
    """
    image_embeds = extract_embeddings(model, processor, images, "image", embedding, **embed_kwargs)[embedding]
    text_embeds = extract_embeddings(model, processor, texts, "text", embedding, **embed_kwargs)[embedding]
    critic = model.objective.alignment_critic if embedding == "pooler" else None
    return recall_at_k(score_matrix(image_embeds, text_embeds, critic), text_to_image, ks)
