"""Batched embedding extraction: images or texts through a FactorCL model and its processor.

One code path serves both modalities (:func:`extract_embeddings`); :func:`embed_images`,
:func:`embed_texts` and :func:`embed_pairs` are conveniences over it. Every evaluation in
this package reads its embeddings from here, so they all agree on preprocessing, batching,
device placement and the meaning of an embedding name:

* ``"pooler"`` — the shared *alignment* embedding that ``logits_per_image`` compares (the
  default for retrieval and zero-shot use, like CLIP's projected embedding);
* ``"shared"`` — Z_S; ``"unique"`` — Z_U (only objectives that factorize have it);
* ``"factorized"`` — ``[Z_S; Z_U]``, the paper's downstream embedding;
* ``"backbone"`` — the CLIP backbone's projected embedding the heads read.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import torch
from tqdm.auto import tqdm

from ..data.images import UndecodableImageError, open_image

__all__ = [
    "EMBEDDING_TYPES",
    "available_embeddings",
    "extract_embeddings",
    "select_embedding",
    "embed_images",
    "embed_texts",
    "embed_pairs",
    "embed_image_files",
    "load_image",
]

logger = logging.getLogger(__name__)

EMBEDDING_TYPES = ("pooler", "shared", "unique", "factorized", "backbone")
MODALITIES = ("image", "text")
# Embedding name -> field of `FactorCLEmbeddings`.
_FIELDS = {
    "pooler": "pooler_output",
    "shared": "shared_embeds",
    "unique": "unique_embeds",
    "factorized": "factorized_embeds",
    "backbone": "backbone_embeds",
}


def available_embeddings(model) -> tuple[str, ...]:
    """The embedding names ``model`` provides: all of :data:`EMBEDDING_TYPES` for objectives
    with separate shared and unique heads, all but ``"unique"`` otherwise."""
    if getattr(getattr(model, "objective", None), "factorized", False):
        return EMBEDDING_TYPES
    return tuple(name for name in EMBEDDING_TYPES if name != "unique")


def _check_embedding_names(embeddings: Sequence[str]) -> tuple[str, ...]:
    if isinstance(embeddings, str):
        embeddings = (embeddings,)
    embeddings = tuple(embeddings)
    if not embeddings:
        raise ValueError(f"`embedding` must name at least one of {EMBEDDING_TYPES}")
    for name in embeddings:
        if name not in EMBEDDING_TYPES:
            raise ValueError(f"`embedding` must be one of {EMBEDDING_TYPES}, got {name!r}")
    return embeddings


def load_image(image: Any):
    """A PIL RGB image from a PIL image, a path to an image file or a ``datasets`` image value
    (``{"bytes", "path"}``): :func:`factorcl_hf.data.images.open_image`, the package's one way
    to open an image (regular files only, EXIF orientation applied, 16-bit scaled, bombs
    refused). Raises :class:`~factorcl_hf.data.images.UndecodableImageError` (a ``ValueError``)."""
    return open_image(image)


def select_embedding(model, outputs, name: str) -> torch.Tensor:
    """The ``name`` embedding (one of :data:`EMBEDDING_TYPES`) of ``model``'s
    ``get_image_features`` / ``get_text_features`` ``outputs``; a ``ValueError`` naming the
    available ones when the model's objective has none of that kind."""
    values = getattr(outputs, _FIELDS[_check_embedding_names(name)[0]])
    if values is None:
        raise ValueError(
            f"`embedding={name!r}` is not available: objective {getattr(model.config, 'objective', '?')!r} "
            f"has no separate {name} embeddings; choose from {available_embeddings(model)}"
        )
    return values


def _model_device(model) -> torch.device:
    return next(model.parameters()).device


def _encode_batch(model, processor, batch: list, modality: str, device: torch.device):
    """Run one batch through the processor and the model's feature method for ``modality``."""
    if modality == "image":
        pixel_values = processor(images=[load_image(image) for image in batch], return_tensors="pt")["pixel_values"]
        return model.get_image_features(pixel_values=pixel_values.to(device=device, dtype=model.dtype))
    if not all(isinstance(text, str) for text in batch):
        raise ValueError("each text must be a string")
    # Truncation at the tokenizer's model_max_length keeps long captions within the model's
    # position table instead of failing the whole evaluation.
    tokens = processor(text=batch, padding=True, truncation=True, return_tensors="pt")
    return model.get_text_features(
        input_ids=tokens["input_ids"].to(device), attention_mask=tokens["attention_mask"].to(device)
    )


def extract_embeddings(
    model,
    processor,
    inputs: Sequence[Any],
    modality: str,
    embeddings: str | Sequence[str] = "pooler",
    batch_size: int = 32,
    device: str | torch.device | None = None,
    progress: bool = False,
) -> dict[str, torch.Tensor]:
    """Embed ``inputs`` of one modality in batches, without gradients.

    Args:
        model: a :class:`~factorcl_hf.FactorCLModel` (anything with ``get_image_features`` /
            ``get_text_features`` returning ``FactorCLEmbeddings``).
        processor: its processor (e.g. ``CLIPProcessor``): ``images=`` and ``text=`` calls.
        inputs: images (PIL images or paths) for ``modality="image"``; strings for ``"text"``.
            Any sequence with ``len`` and integer indexing (a list, a ``datasets`` column).
        modality: ``"image"`` or ``"text"``.
        embeddings: one name or several from :data:`EMBEDDING_TYPES`; the model runs once for all.
        batch_size: inputs per forward pass.
        device: where to run (default: the model's device). The model is not moved.
        progress: show a tqdm progress bar.

    Returns:
        ``{name: float32 CPU tensor [len(inputs), dim]}`` for each requested name.
    """
    if modality not in MODALITIES:
        raise ValueError(f"`modality` must be one of {MODALITIES}, got {modality!r}")
    names = _check_embedding_names(embeddings)
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"`batch_size` must be a positive integer, got {batch_size!r}")
    if len(inputs) == 0:
        raise ValueError(f"`inputs` must hold at least one {modality}")
    device = torch.device(device) if device is not None else _model_device(model)

    chunks: dict[str, list[torch.Tensor]] = {name: [] for name in names}
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), tqdm(total=len(inputs), desc=f"Embedding {modality}s", unit=modality,
                                   disable=not progress) as bar:
            for start in range(0, len(inputs), batch_size):
                batch = [inputs[i] for i in range(start, min(start + batch_size, len(inputs)))]
                outputs = _encode_batch(model, processor, batch, modality, device)
                for name in names:
                    chunks[name].append(select_embedding(model, outputs, name).float().cpu())
                bar.update(len(batch))
    finally:
        model.train(was_training)
    return {name: torch.cat(parts) for name, parts in chunks.items()}


def embed_images(model, processor, images: Sequence[Any], embedding: str = "pooler", **kwargs) -> torch.Tensor:
    """``[len(images), dim]`` embeddings of ``images`` (see :func:`extract_embeddings`)."""
    return extract_embeddings(model, processor, images, "image", embedding, **kwargs)[embedding]


def embed_texts(model, processor, texts: Sequence[str], embedding: str = "pooler", **kwargs) -> torch.Tensor:
    """``[len(texts), dim]`` embeddings of ``texts`` (see :func:`extract_embeddings`)."""
    return extract_embeddings(model, processor, texts, "text", embedding, **kwargs)[embedding]


def embed_pairs(
    model,
    processor,
    images: Sequence[Any],
    texts: Sequence[str],
    embeddings: str | Sequence[str] = "factorized",
    **kwargs,
) -> dict[str, torch.Tensor]:
    """Joint embeddings of (image, text) pairs: ``[image embedding; text embedding]`` per pair.

    With ``"factorized"`` this is the paper's downstream embedding ``[Z_S1; Z_U1; Z_S2; Z_U2]``
    that its linear probes read. Returns ``{name: [len(images), dim_image + dim_text]}``.
    """
    if len(images) != len(texts):
        raise ValueError(f"`images` has {len(images)} items but `texts` has {len(texts)}: pairs must align")
    per_modality = [
        extract_embeddings(model, processor, inputs, modality, embeddings, **kwargs)
        for modality, inputs in zip(MODALITIES, (images, texts))
    ]
    return {name: torch.cat([per_modality[0][name], per_modality[1][name]], dim=-1) for name in per_modality[0]}


def embed_image_files(
    model, processor, images: Sequence[Any], embeddings: str | Sequence[str] = "pooler", batch_size: int = 32,
    progress: bool = False, **kwargs,
) -> tuple[dict[str, torch.Tensor], list[int]]:
    """Like :func:`extract_embeddings` for images, but an image that fails to open or decode
    is skipped (and counted in a warning) instead of failing the whole run, as training does.

    Returns ``({name: [n_kept, dim]}, kept)``: ``kept`` are the indices into ``images`` of
    the rows embedded, in order. Raises ``ValueError`` when no image decodes.
    """
    kept: list[int] = []
    parts: list[dict[str, torch.Tensor]] = []
    with tqdm(total=len(images), desc="Embedding images", unit="image", disable=not progress) as bar:
        for start in range(0, len(images), batch_size):
            loaded = []
            for index in range(start, min(start + batch_size, len(images))):
                try:
                    loaded.append(load_image(images[index]))
                except UndecodableImageError:  # unreadable, truncated, missing, not a file, a bomb
                    continue
                kept.append(index)
            if loaded:
                parts.append(extract_embeddings(model, processor, loaded, "image", embeddings, batch_size, **kwargs))
            bar.update(min(batch_size, len(images) - start))
    if not parts:
        raise ValueError(f"none of the {len(images)} images could be decoded")
    if len(kept) < len(images):
        logger.warning("Skipped %d of %d images that failed to decode", len(images) - len(kept), len(images))
    return {name: torch.cat([part[name] for part in parts]) for name in parts[0]}, kept
