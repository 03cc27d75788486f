"""A FactorCL model behind open_clip's model interface, for tools written against open_clip
(LAION's clip_benchmark, clip-retrieval-style scripts)::

    model, preprocess, tokenizer = create_model_and_transforms("outputs/demo/factorcl_ssl/model")
    image_features = model.encode_image(torch.stack([preprocess(image) for image in images]))
    text_features = model.encode_text(tokenizer(["a red circle", "a blue square"]))

as ``open_clip.create_model_and_transforms`` + ``open_clip.get_tokenizer`` give (clip_benchmark's
model loaders return exactly this triple). ``preprocess`` is the saved processor's image
transform (PIL image -> ``[3, H, W]`` tensor); ``tokenizer`` its tokenizer with padding and
truncation, returning the ids with their attention mask (``.to(device)`` works as on a tensor).
``encode_*`` return the chosen embedding (default ``"pooler"``: the alignment embedding that
``logits_per_image`` compares), unnormalised as open_clip's are unless ``normalize=True``.

open_clip's callers rank by cosine similarity. That is how this model ranks too when its
alignment critic is the default cosine one (``logits_per_image`` = cosine / temperature); with
a trained ``concat`` / ``separable`` critic the package's own evaluation uses the critic, and
cosine rankings can differ (a warning says so).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from transformers import AutoModel, AutoProcessor

from .embed import available_embeddings, load_image, select_embedding

__all__ = ["OpenCLIPInterface", "create_model_and_transforms"]

logger = logging.getLogger(__name__)


class OpenCLIPInterface(nn.Module):
    """``encode_image`` / ``encode_text`` (and ``forward(image, text)``) over a FactorCL model."""

    def __init__(self, model, embedding: str = "pooler"):
        super().__init__()
        self.model = model
        self.embedding = embedding
        if embedding not in available_embeddings(model):
            raise ValueError(f"`embedding` must be one of {available_embeddings(model)} for objective "
                             f"{model.config.objective!r}, got {embedding!r}")
        if getattr(model.config, "alignment_critic_type", "cosine") != "cosine":
            logger.warning("The model scores pairs with a trained %r alignment critic: cosine rankings of its "
                           "embeddings (what open_clip-style tools compute) differ from its own.",
                           model.config.alignment_critic_type)

    def encode_image(self, image: torch.Tensor, normalize: bool = False) -> torch.Tensor:
        outputs = self.model.get_image_features(pixel_values=image.to(self.model.device, self.model.dtype))
        return self._finish(outputs, normalize)

    def encode_text(self, text, normalize: bool = False) -> torch.Tensor:
        """``text``: what ``tokenizer`` returned, or a bare ``[n, length]`` id tensor (no padding mask:
        CLIP pools at the end-of-text token, which causal attention keeps from seeing later padding)."""
        ids, mask = (text["input_ids"], text.get("attention_mask")) if isinstance(text, Mapping) else (text, None)
        outputs = self.model.get_text_features(
            input_ids=ids.to(self.model.device), attention_mask=None if mask is None else mask.to(self.model.device)
        )
        return self._finish(outputs, normalize)

    def _finish(self, outputs, normalize: bool) -> torch.Tensor:
        features = select_embedding(self.model, outputs, self.embedding)
        return F.normalize(features, dim=-1) if normalize else features

    def forward(self, image: torch.Tensor | None = None, text=None):
        """open_clip's ``(image_features, text_features, logit_scale)``, features normalised; the
        scale is ``1 / logit_temperature`` (cosine critics' ``logits = cos / temperature``)."""
        image_features = self.encode_image(image, normalize=True) if image is not None else None
        text_features = self.encode_text(text, normalize=True) if text is not None else None
        scale = 1.0 / getattr(self.model.config, "logit_temperature", 1.0)
        return image_features, text_features, torch.tensor(scale)


def create_model_and_transforms(model_path: str, embedding: str = "pooler", device: str | torch.device = "cpu"):
    """``(model, preprocess, tokenizer)`` of a saved FactorCL model (folder or Hub id), in eval
    mode on ``device``: open_clip's ``create_model_and_transforms`` (its eval transform) plus
    ``get_tokenizer``, as clip_benchmark's model loaders return them."""
    model = AutoModel.from_pretrained(model_path).to(device).eval()
    processor = AutoProcessor.from_pretrained(model_path)

    def preprocess(image) -> torch.Tensor:
        return processor(images=[load_image(image)], return_tensors="pt")["pixel_values"][0]

    def tokenizer(texts: str | Sequence[str]):
        texts = [texts] if isinstance(texts, str) else list(texts)
        return processor(text=texts, padding=True, truncation=True, return_tensors="pt")

    return OpenCLIPInterface(model, embedding), preprocess, tokenizer
