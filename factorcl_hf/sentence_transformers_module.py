"""A saved FactorCL folder as a sentence-transformers model:
``SentenceTransformer(DIR, trust_remote_code=True).encode(images or texts)``.

``FactorCLModel.save_pretrained`` calls :func:`write_sentence_transformers_files`, which writes
``modules.json`` (one custom module: :class:`FactorCLSentenceTransformer`) and
``config_sentence_transformers.json`` beside the weights, the way remote-code
sentence-transformers models (jina-clip, ...) ship. This file travels with the model code:
``modeling_factorcl.py`` imports it relatively, so transformers copies it into every folder
saved with code, and sentence-transformers loads it from there. It therefore imports neither
``factorcl_hf`` nor ``sentence_transformers`` (transformers refuses remote code whose imports
are missing, and a plain ``AutoModel`` user need not have sentence-transformers): only torch and
transformers, which any environment loading the model has.

``encode`` returns the L2-normalised ``pooler_output`` (the alignment embedding that
``logits_per_image`` compares), so ``util.semantic_search``'s cosine ranks as the model's
cosine alignment critic does (``factorcl-search``). ``encode(..., embedding="shared")`` (or
``"unique"``, ``"factorized"``, ``"backbone"``) returns another embedding, also normalised;
``model[0].embedding = "shared"`` changes the default.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from transformers import AutoModel, AutoProcessor

logger = logging.getLogger(__name__)

MODULES_FILE = "modules.json"
CONFIG_FILE = "config_sentence_transformers.json"
# Embedding name -> field of the model's FactorCLEmbeddings (the names factorcl-embed uses).
EMBEDDING_FIELDS = {
    "pooler": "pooler_output",
    "shared": "shared_embeds",
    "unique": "unique_embeds",
    "factorized": "factorized_embeds",
    "backbone": "backbone_embeds",
}


class FactorCLSentenceTransformer(nn.Module):
    """The one module of a FactorCL sentence-transformers model: preprocesses images or texts
    with the saved processor and returns ``{"sentence_embedding": normalised embedding}``."""

    # sentence-transformers passes these `encode` keywords on to `forward`.
    forward_kwargs = {"embedding"}
    save_in_root = True

    def __init__(self, model, processor, embedding: str = "pooler"):
        super().__init__()
        self.model = model.eval()
        self.processor = processor
        self.embedding = self._checked(embedding)
        self._dimensions: dict[str, int] = {}
        if getattr(model.config, "alignment_critic_type", "cosine") != "cosine":
            logger.warning(
                "This model scores image-text pairs with a trained %r alignment critic: cosine similarity of "
                "its embeddings (sentence-transformers' similarity) does not rank as the model does.",
                model.config.alignment_critic_type,
            )

    @property
    def modalities(self) -> list[str]:
        return ["text", "image"]

    @staticmethod
    def _checked(embedding: str) -> str:
        if embedding not in EMBEDDING_FIELDS:
            raise ValueError(f"`embedding` must be one of {tuple(EMBEDDING_FIELDS)}, got {embedding!r}")
        return embedding

    @staticmethod
    def load(input_path: str) -> FactorCLSentenceTransformer:
        """The module of the saved folder ``input_path`` (model, its processor)."""
        if not os.path.isfile(os.path.join(input_path, "preprocessor_config.json")) and not os.path.isfile(
            os.path.join(input_path, "processor_config.json")
        ):
            raise ValueError(
                f"{input_path!r} has no processor: save it beside the model (processor.save_pretrained(DIR))"
            )
        # sentence-transformers only reaches this module with trust_remote_code=True; the
        # processor reads the same config.json (with its auto_map), so it is told so too.
        model = AutoModel.from_pretrained(input_path, trust_remote_code=True)
        return FactorCLSentenceTransformer(model, AutoProcessor.from_pretrained(input_path, trust_remote_code=True))

    def save(self, output_path: str, *args, **kwargs) -> None:
        self.model.save_pretrained(output_path)
        self.processor.save_pretrained(output_path)

    def preprocess(self, inputs, prompt: str | None = None, **kwargs) -> dict[str, torch.Tensor]:
        """Pixel values of a batch of images, or token ids of a batch of texts (one kind per batch)."""
        if all(isinstance(item, str) for item in inputs):
            texts = [prompt + text for text in inputs] if prompt else list(inputs)
            # Truncation, as factorcl-embed does: long texts stay within the position table.
            tokens = self.processor(text=texts, padding=True, truncation=True, return_tensors="pt")
            return {"input_ids": tokens["input_ids"], "attention_mask": tokens["attention_mask"]}
        if any(isinstance(item, str) for item in inputs):
            raise ValueError("encode one kind of input per call: all texts or all images")
        images = [image.convert("RGB") if getattr(image, "mode", "RGB") != "RGB" else image for image in inputs]
        return {"pixel_values": self.processor(images=images, return_tensors="pt")["pixel_values"]}

    # The deprecated name that sentence-transformers before 5.x calls.
    tokenize = preprocess

    def forward(self, features: dict[str, torch.Tensor], embedding: str | None = None) -> dict[str, torch.Tensor]:
        name = self._checked(embedding or self.embedding)
        if "pixel_values" in features:
            outputs = self.model.get_image_features(pixel_values=features["pixel_values"].to(self.model.dtype))
        else:
            outputs = self.model.get_text_features(
                input_ids=features["input_ids"], attention_mask=features.get("attention_mask")
            )
        values = getattr(outputs, EMBEDDING_FIELDS[name])
        if values is None:
            raise ValueError(f"`embedding={name!r}` is not available: objective {self.model.config.objective!r} "
                             "has no separate shared and unique embeddings")
        features["sentence_embedding"] = F.normalize(values.float(), dim=-1)
        return features

    def get_embedding_dimension(self) -> int:
        """Size of the default embedding (measured once on a short text: it depends on the objective)."""
        if self.embedding not in self._dimensions:
            with torch.no_grad():
                probe = self.forward(self.preprocess(["a"]), self.embedding)["sentence_embedding"]
            self._dimensions[self.embedding] = probe.shape[-1]
        return self._dimensions[self.embedding]

    get_sentence_embedding_dimension = get_embedding_dimension


def write_sentence_transformers_files(directory: str | os.PathLike) -> None:
    """Make the saved folder ``directory`` loadable with ``SentenceTransformer(directory,
    trust_remote_code=True)``: ``modules.json``, ``config_sentence_transformers.json`` and this
    file (already there when transformers saved the model code)."""
    directory = Path(directory)
    module_file = Path(__file__).name
    if not (directory / module_file).is_file():
        shutil.copyfile(__file__, directory / module_file)
    class_ref = f"{Path(module_file).stem}.{FactorCLSentenceTransformer.__name__}"
    modules = [{"idx": 0, "name": "0", "path": "", "type": class_ref, "kwargs": sorted(FactorCLSentenceTransformer.forward_kwargs)}]
    config = {"model_type": "SentenceTransformer", "similarity_fn_name": "cosine", "prompts": {}, "default_prompt_name": None}
    (directory / MODULES_FILE).write_text(json.dumps(modules, indent=2) + "\n", encoding="utf-8")
    (directory / CONFIG_FILE).write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
