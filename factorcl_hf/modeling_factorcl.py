"""FactorCL model: a CLIP backbone whose image and text embeddings feed a contrastive
objective (FactorCL or a baseline) that owns the projection heads and critics."""

from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from safetensors import SafetensorError
from torch import nn
from transformers import CLIPConfig, CLIPModel, PreTrainedModel
from transformers import initialization as init
from transformers.utils import ModelOutput

from .configuration_factorcl import FactorCLConfig
from .objectives import ContrastiveObjective, Representation, build_objective

logger = logging.getLogger(__name__)

MODALITIES = ("image", "text")


@dataclass
class FactorCLEmbeddings(ModelOutput):
    """Embeddings of one modality from [`FactorCLModel.get_image_features`] /
    [`FactorCLModel.get_text_features`].

    Args:
        pooler_output: the default embedding for retrieval and zero-shot use — the shared
            alignment embedding that `logits_per_image` compares (as in CLIP, where
            `pooler_output` of `get_image_features` is the projected embedding).
        shared_embeds: Z_S, the shared representation.
        unique_embeds: Z_U, the modality-unique representation (`None` for objectives that do
            not factorize).
        factorized_embeds: `[Z_S; Z_U]`, the paper's downstream (linear-probe) embedding.
        backbone_embeds: the CLIP backbone's projected embedding the heads read.
    """

    pooler_output: torch.FloatTensor | None = None
    shared_embeds: torch.FloatTensor | None = None
    unique_embeds: torch.FloatTensor | None = None
    factorized_embeds: torch.FloatTensor | None = None
    backbone_embeds: torch.FloatTensor | None = None


@dataclass
class FactorCLOutput(ModelOutput):
    """Output of [`FactorCLModel.forward`].

    Args:
        loss: the objective's loss for the encoders and heads (when `return_loss`).
        critic_loss: the CLUB critics' loss on detached features of the same step; add it to
            `loss` for a single backward (it never reaches the encoders), see `critic_loss()`.
        loss_terms: every term's value by name, detached, for logging.
        logits_per_image: `[n_images, n_texts]` scores in the shared space (scaled cosine
            similarity with the default cosine alignment critic), as in CLIP.
        logits_per_text: its transpose.
        image_embeds / text_embeds: the [`FactorCLEmbeddings`] of each modality.
        critic_inputs: detached feature pairs the CLUB critics train on.
    """

    loss: torch.FloatTensor | None = None
    critic_loss: torch.FloatTensor | None = None
    loss_terms: dict[str, torch.Tensor] | None = None
    logits_per_image: torch.FloatTensor | None = None
    logits_per_text: torch.FloatTensor | None = None
    image_embeds: FactorCLEmbeddings | None = None
    text_embeds: FactorCLEmbeddings | None = None
    critic_inputs: dict[str, Any] | None = None

    def to_tuple(self) -> tuple[Any]:
        return tuple(v.to_tuple() if isinstance(v, ModelOutput) else v for v in self.values())


class FactorCLPreTrainedModel(PreTrainedModel):
    config: FactorCLConfig
    config_class = FactorCLConfig
    # Equal to the backbone attribute's name: a plain CLIP checkpoint loads into `self.clip`.
    base_model_prefix = "clip"
    input_modalities = ("image", "text")
    supports_gradient_checkpointing = True
    _no_split_modules = ["CLIPTextEmbeddings", "CLIPEncoderLayer", "CLIPVisionEmbeddings"]

    def _init_weights(self, module):
        # The objective's layers keep PyTorch's default initialization (the CLIP backbone
        # initializes itself); `init.*` skips weights that were loaded from a checkpoint.
        if isinstance(module, nn.Linear):
            init.kaiming_uniform_(module.weight, a=math.sqrt(5))
            if module.bias is not None:
                bound = 1 / math.sqrt(module.weight.shape[1])
                init.uniform_(module.bias, -bound, bound)


class FactorCLModel(FactorCLPreTrainedModel):
    """A CLIP backbone with a FactorCL objective over its image and text embeddings.

    The backbone runs once per call: original and augmented views are batched together.
    """

    def __init__(self, config: FactorCLConfig):
        super().__init__(config)
        # Saved folders also serve the zero-shot pipeline through trust_remote_code (the
        # AutoModel entry is added by `register_for_auto_class` in `factorcl_hf/__init__.py`).
        config.auto_map = {
            **(getattr(config, "auto_map", None) or {}),
            "AutoModelForZeroShotImageClassification": "modeling_factorcl.FactorCLModel",
        }
        self.clip = CLIPModel._from_config(config.clip_config)
        # Logits come from the objective's alignment critic; CLIP's own logit scale is kept
        # for checkpoint compatibility but unused, so it is frozen (DDP requires every
        # trainable parameter to receive a gradient).
        self.clip.logit_scale.requires_grad_(False)
        dim = config.backbone_embed_dim
        self.objective: ContrastiveObjective = build_objective(
            config.objective,
            (dim, dim),
            num_labels=config.num_labels if config.is_supervised else None,
            head_dim=config.head_dim,
            head_hidden_dim=config.head_hidden_dim,
            critic_type=config.critic_type,
            critic_hidden_dim=config.critic_hidden_dim,
            critic_num_hidden_layers=config.critic_num_hidden_layers,
            critic_embed_dim=config.critic_embed_dim,
            alignment_critic_type=config.alignment_critic_type,
            temperature=config.logit_temperature,
            critic_chunk_size=config.critic_chunk_size,
        )
        self.post_init()

    # ------------------------------------------------------------------ loading
    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *model_args, **kwargs):
        """`PreTrainedModel.from_pretrained`, restricted to safetensors weights (never a pickle),
        with a clear error for a corrupted weights file."""
        kwargs.setdefault("use_safetensors", True)
        try:
            return super().from_pretrained(pretrained_model_name_or_path, *model_args, **kwargs)
        except SafetensorError as error:
            raise ValueError(
                f"The weights of {str(pretrained_model_name_or_path)!r} cannot be read as safetensors "
                f"({error}): the checkpoint is corrupted or incomplete"
            ) from error

    @classmethod
    def from_clip(cls, clip: str | os.PathLike | CLIPModel, **config_overrides) -> FactorCLModel:
        """Wrap an existing CLIP checkpoint (Hub id, local dir or `CLIPModel`) with fresh
        FactorCL heads and critics; `config_overrides` set `FactorCLConfig` fields."""
        if isinstance(clip, CLIPModel):
            model = cls(FactorCLConfig(clip_config=clip.config, **config_overrides))
            model.clip.load_state_dict(clip.state_dict())
            return model
        config = FactorCLConfig(clip_config=CLIPConfig.from_pretrained(clip), **config_overrides)
        return _from_clip_checkpoint(cls, clip, config)

    # --------------------------------------------------------------- validation
    def _check_pixels(self, name: str, pixel_values: torch.Tensor | None):
        if pixel_values is None:
            raise ValueError(f"`{name}` is required (image batch of shape [batch, 3, H, W])")
        size = self.config.clip_config.vision_config.image_size
        channels = self.config.clip_config.vision_config.num_channels
        if pixel_values.dim() != 4 or pixel_values.shape[1] != channels or tuple(pixel_values.shape[2:]) != (size, size):
            raise ValueError(
                f"`{name}` must have shape [batch, {channels}, {size}, {size}] for this model, "
                f"got {tuple(pixel_values.shape)}"
            )

    def _check_tokens(self, name: str, input_ids: torch.Tensor | None):
        if input_ids is None:
            raise ValueError(f"`{name}` is required (token ids of shape [batch, seq_len])")
        if input_ids.dim() != 2:
            raise ValueError(f"`{name}` must have shape [batch, seq_len], got {tuple(input_ids.shape)}")
        max_len = self.config.clip_config.text_config.max_position_embeddings
        if input_ids.shape[1] > max_len:
            raise ValueError(f"`{name}` has {input_ids.shape[1]} tokens; this model takes at most {max_len}")

    # ---------------------------------------------------------------- embedding
    def _backbone(self, modality: str, **inputs) -> torch.Tensor:
        if modality == "image":
            return self.clip.get_image_features(**inputs).pooler_output
        return self.clip.get_text_features(**inputs).pooler_output

    def _embeddings(self, modality: str, backbone: torch.Tensor) -> FactorCLEmbeddings:
        rep: Representation = self.objective.represent(backbone, MODALITIES.index(modality))
        return FactorCLEmbeddings(
            pooler_output=rep.alignment,
            shared_embeds=rep.shared,
            unique_embeds=rep.unique,
            factorized_embeds=rep.factorized,
            backbone_embeds=backbone,
        )

    def get_image_features(self, pixel_values: torch.Tensor, **kwargs) -> FactorCLEmbeddings:
        """Shared, unique and backbone embeddings of a batch of images."""
        self._check_pixels("pixel_values", pixel_values)
        return self._embeddings("image", self._backbone("image", pixel_values=pixel_values, **kwargs))

    def get_text_features(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None, **kwargs
    ) -> FactorCLEmbeddings:
        """Shared, unique and backbone embeddings of a batch of tokenized texts."""
        self._check_tokens("input_ids", input_ids)
        return self._embeddings(
            "text", self._backbone("text", input_ids=input_ids, attention_mask=attention_mask, **kwargs)
        )

    def _text_with_views(self, input_ids, attention_mask, augmented_input_ids, augmented_attention_mask):
        """Pad the original and augmented token batches to one length and stack them, so the
        text tower runs once."""
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        if augmented_attention_mask is None:
            augmented_attention_mask = torch.ones_like(augmented_input_ids)
        length = max(input_ids.shape[1], augmented_input_ids.shape[1])
        pad_id = self.config.clip_config.text_config.pad_token_id or 0

        def pad(t, value):
            return F.pad(t, (0, length - t.shape[1]), value=value)

        ids = torch.cat([pad(input_ids, pad_id), pad(augmented_input_ids, pad_id)])
        mask = torch.cat([pad(attention_mask, 0), pad(augmented_attention_mask, 0)])
        return ids, mask

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        pixel_values: torch.FloatTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        labels: torch.LongTensor | None = None,
        augmented_pixel_values: torch.FloatTensor | None = None,
        augmented_input_ids: torch.LongTensor | None = None,
        augmented_attention_mask: torch.Tensor | None = None,
        return_loss: bool | None = None,
        **kwargs,
    ) -> FactorCLOutput:
        r"""
        Args:
            input_ids, attention_mask: tokenized captions `[batch, seq_len]`.
            pixel_values: images `[batch, 3, H, W]` from the processor.
            labels: class ids `[batch]`, for supervised objectives.
            augmented_pixel_values, augmented_input_ids, augmented_attention_mask: an augmented
                view of each pair, for self-supervised FactorCL and Cross+Self.
            return_loss: compute the loss (default: when labels or augmented views are given).
        """
        self._check_pixels("pixel_values", pixel_values)
        self._check_tokens("input_ids", input_ids)
        if return_loss is None:
            return_loss = labels is not None or augmented_pixel_values is not None
        use_views = return_loss and self.config.uses_augmented_views
        if return_loss:
            if pixel_values.shape[0] != input_ids.shape[0]:
                raise ValueError(
                    f"`pixel_values` has batch size {pixel_values.shape[0]} but `input_ids` has "
                    f"{input_ids.shape[0]}: training pairs must align"
                )
            if use_views:
                self._check_pixels("augmented_pixel_values", augmented_pixel_values)
                self._check_tokens("augmented_input_ids", augmented_input_ids)
                for name, t in (("augmented_pixel_values", augmented_pixel_values), ("augmented_input_ids", augmented_input_ids)):
                    if t.shape[0] != input_ids.shape[0]:
                        raise ValueError(f"`{name}` has batch size {t.shape[0]}, expected {input_ids.shape[0]}")
            if self.config.is_supervised and labels is None:
                raise ValueError(f"`labels` are required to train objective {self.config.objective!r}")

        # One backbone call per tower, original and augmented views together.
        batch = input_ids.shape[0]
        n_images = pixel_values.shape[0]
        if use_views:
            pixels = torch.cat([pixel_values, augmented_pixel_values])
            ids, mask = self._text_with_views(input_ids, attention_mask, augmented_input_ids, augmented_attention_mask)
        else:
            pixels, ids, mask = pixel_values, input_ids, attention_mask
        image_backbone = self._backbone("image", pixel_values=pixels)
        text_backbone = self._backbone("text", input_ids=ids, attention_mask=mask)

        image_embeds = self._embeddings("image", image_backbone[:n_images])
        text_embeds = self._embeddings("text", text_backbone[:batch])
        logits_per_image = self.objective.alignment_critic(image_embeds.pooler_output, text_embeds.pooler_output)

        loss = critic_loss = loss_terms = critic_inputs = None
        if return_loss:
            out = self.objective(
                image_backbone[:n_images],
                text_backbone[:batch],
                labels=labels,
                augmented_1=image_backbone[n_images:] if use_views else None,
                augmented_2=text_backbone[batch:] if use_views else None,
                compute_critic_loss=self.training,
            )
            loss, critic_loss, loss_terms, critic_inputs = out.loss, out.critic_loss, out.loss_terms, out.critic_inputs
        return FactorCLOutput(
            loss=loss,
            critic_loss=critic_loss,
            loss_terms=loss_terms,
            logits_per_image=logits_per_image,
            logits_per_text=logits_per_image.T,
            image_embeds=image_embeds,
            text_embeds=text_embeds,
            critic_inputs=critic_inputs,
        )

    # ------------------------------------------------------ CLUB-critic training
    def critic_loss(self, outputs: FactorCLOutput) -> torch.Tensor | None:
        """The CLUB critics' loss on the detached features of `outputs` (no backbone re-run)."""
        return self.objective.critic_loss(outputs.critic_inputs) if outputs.critic_inputs else None

    def club_critic_parameters(self) -> list[nn.Parameter]:
        """Parameters of the CLUB critics: train them with their own optimizer."""
        return self.objective.club_critic_parameters()

    def main_parameters(self) -> list[nn.Parameter]:
        """Everything else: backbone, heads, InfoNCE critics."""
        club = {id(p) for p in self.club_critic_parameters()}
        return [p for p in self.parameters() if id(p) not in club and p.requires_grad]


def _from_clip_checkpoint(cls, clip: str | os.PathLike, config: FactorCLConfig) -> FactorCLModel:
    """``from_pretrained`` of a plain CLIP checkpoint. The heads and critics (``objective.*``)
    are new by design, so transformers' load report (a line per missing key) becomes one
    line; any other missing or unexpected key is still a warning."""
    report = logging.getLogger("transformers.modeling_utils")
    level = report.level
    report.setLevel(logging.ERROR)
    try:
        model, info = cls.from_pretrained(clip, config=config, output_loading_info=True)
    finally:
        report.setLevel(level)
    logger.info("FactorCL heads and critics (objective.*) initialised fresh; the CLIP backbone loaded from %s", clip)
    other = [key for key in info["missing_keys"] if not key.startswith("objective.")] + list(info["unexpected_keys"])
    if other:
        logger.warning("Loading the CLIP checkpoint %s: missing or unexpected keys %s", clip, sorted(other))
    return model

__all__ = ["FactorCLModel", "FactorCLPreTrainedModel", "FactorCLOutput", "FactorCLEmbeddings"]
