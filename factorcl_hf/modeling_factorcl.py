"""FactorCL model: a CLIP backbone whose image and text embeddings feed a contrastive
objective (FactorCL or a baseline) that owns the projection heads and critics."""

# No `from __future__ import annotations`: transformers reads `**kwargs: Unpack[TransformersKwargs]`
# at run time (e.g. which output switches `forward` takes, in its common tests).
import json
import logging
import math
import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from safetensors import SafetensorError
from torch import nn
from transformers import AutoConfig, CLIPModel, PreTrainedConfig, PreTrainedModel, SiglipModel
from transformers import initialization as init
from transformers.modeling_outputs import BaseModelOutputWithPooling
from transformers.processing_utils import Unpack
from transformers.utils import ModelOutput, TransformersKwargs, auto_docstring, can_return_tuple

from .conditional_mean import RandomFeatureRidge
from .configuration_factorcl import BACKBONE_TYPES, FactorCLConfig
from .integrity import (
    check_finite,
    check_model_path,
    check_pixel_values,
    check_saved_config,
    check_token_ids,
    value_checks_enabled,
    verify_checksums,
    write_checksums,
)
from .objectives import ContrastiveObjective, Representation, build_objective
from .sentence_transformers_module import write_sentence_transformers_files

logger = logging.getLogger(__name__)

MODALITIES = ("image", "text")
# The backbone model class of each supported `FactorCLConfig.backbone_type`.
BACKBONE_CLASSES = {"clip": CLIPModel, "siglip": SiglipModel}
# The keywords `forward` and `get_*_features` take besides their own (transformers' common ones,
# passed on to the backbone towers as `CLIPModel` does); any other is refused by name.
KWARG_NAMES = frozenset(TransformersKwargs.__annotations__)
FORWARD_INTRO = (
    "Logits of every image against every text and, with `return_loss`, the objective's loss. A call with one "
    "modality only (as the feature-extraction pipelines make) returns its [`FactorCLEmbeddings`], as "
    "`get_image_features` / `get_text_features` do."
)
# The auto classes a saved folder serves through `trust_remote_code`: `AutoModel`, and the one the
# stock `zero-shot-image-classification` pipeline loads with.
REMOTE_CODE_AUTO_CLASSES = ("AutoModel", "AutoModelForZeroShotImageClassification")


@dataclass
class FactorCLEmbeddings(ModelOutput):
    r"""Embeddings of one modality from [`FactorCLModel.get_image_features`] /
    [`FactorCLModel.get_text_features`] (argument format of transformers' `auto_docstring`).

    Args:
        pooler_output (`torch.FloatTensor` of shape `(batch_size, head_dim)`):
            The default embedding for retrieval and zero-shot use: the shared alignment embedding
            that `logits_per_image` compares (as in CLIP, where `pooler_output` of
            `get_image_features` is the projected embedding). It comes first, so `outputs[0]`
            (what the feature-extraction pipelines read) is this embedding.
        last_hidden_state (`torch.FloatTensor` of shape `(batch_size, sequence_length, hidden_size)`):
            The backbone tower's last hidden states.
        hidden_states (`tuple[torch.FloatTensor]`, *optional*, returned when `output_hidden_states=True`):
            Every layer's hidden states.
        attentions (`tuple[torch.FloatTensor]`, *optional*, returned when `output_attentions=True`):
            Every layer's attention weights (they need `attn_implementation="eager"`).
        shared_embeds (`torch.FloatTensor`):
            Z_S, the shared representation.
        unique_embeds (`torch.FloatTensor`, *optional*):
            Z_U, the modality-unique representation (`None` for objectives that do not factorize).
        factorized_embeds (`torch.FloatTensor`, *optional*):
            `[Z_S; Z_U]`, the paper's downstream (linear-probe) embedding.
        backbone_embeds (`torch.FloatTensor` of shape `(batch_size, projection_dim)`):
            The CLIP backbone's projected embedding the heads read.
    """

    pooler_output: torch.FloatTensor | None = None
    last_hidden_state: torch.FloatTensor | None = None
    hidden_states: tuple[torch.FloatTensor, ...] | None = None
    attentions: tuple[torch.FloatTensor, ...] | None = None
    shared_embeds: torch.FloatTensor | None = None
    unique_embeds: torch.FloatTensor | None = None
    factorized_embeds: torch.FloatTensor | None = None
    backbone_embeds: torch.FloatTensor | None = None


@dataclass
class FactorCLOutput(ModelOutput):
    r"""Output of [`FactorCLModel.forward`] (argument format of transformers' `auto_docstring`).

    Args:
        loss (`torch.FloatTensor` of shape `()`, *optional*, returned when `return_loss` is `True`):
            The objective's loss for the encoders and heads.
        critic_loss (`torch.FloatTensor` of shape `()`, *optional*, returned when `return_loss` is `True`):
            The CLUB critics' loss on detached features of the same step; add it to `loss` for a
            single backward (it never reaches the encoders), see `critic_loss()`.
        loss_terms (`dict[str, torch.Tensor]`, *optional*, returned when `return_loss` is `True`):
            Every term's value by name, detached, for logging.
        logits_per_image (`torch.FloatTensor` of shape `(image_batch_size, text_batch_size)`):
            Scores in the shared space (scaled cosine similarity with the default cosine
            alignment critic), as in CLIP.
        logits_per_text (`torch.FloatTensor` of shape `(text_batch_size, image_batch_size)`):
            The transpose of `logits_per_image`.
        image_embeds (`FactorCLEmbeddings`):
            The [`FactorCLEmbeddings`] of the images.
        text_embeds (`FactorCLEmbeddings`):
            The [`FactorCLEmbeddings`] of the texts.
        critic_inputs (`dict[str, Any]`, *optional*, returned when `return_loss` is `True`):
            Detached feature pairs the CLUB critics train on.
        text_model_output (`BaseModelOutputWithPooling`):
            The text tower's output (last hidden state, projected `pooler_output`, and hidden
            states / attentions when asked for), named as in `CLIPOutput`; the same tensors as
            in `text_embeds`.
        vision_model_output (`BaseModelOutputWithPooling`):
            The vision tower's output, as `text_model_output`; the same tensors as in `image_embeds`.
    """

    loss: torch.FloatTensor | None = None
    critic_loss: torch.FloatTensor | None = None
    loss_terms: dict[str, torch.Tensor] | None = None
    logits_per_image: torch.FloatTensor | None = None
    logits_per_text: torch.FloatTensor | None = None
    image_embeds: FactorCLEmbeddings | None = None
    text_embeds: FactorCLEmbeddings | None = None
    critic_inputs: dict[str, Any] | None = None
    text_model_output: BaseModelOutputWithPooling | None = None
    vision_model_output: BaseModelOutputWithPooling | None = None

    def to_tuple(self) -> tuple[Any]:
        return tuple(v.to_tuple() if isinstance(v, ModelOutput) else v for v in self.values())


def _check_keywords(method: str, kwargs: dict) -> None:
    """Refuse a keyword that is not one of transformers' common ones (e.g. a misspelt
    `output_hidden_states`) rather than pass it on to be silently ignored."""
    unknown = sorted(set(kwargs) - KWARG_NAMES)
    if unknown:
        raise TypeError(f"FactorCLModel.{method}() got unexpected keyword argument(s) {', '.join(map(repr, unknown))}")


def _tower_output(embeds: FactorCLEmbeddings) -> BaseModelOutputWithPooling:
    return BaseModelOutputWithPooling(
        last_hidden_state=embeds.last_hidden_state,
        pooler_output=embeds.backbone_embeds,
        hidden_states=embeds.hidden_states,
        attentions=embeds.attentions,
    )


class FactorCLPreTrainedModel(PreTrainedModel):
    config: FactorCLConfig
    config_class = FactorCLConfig
    # Equal to the backbone attribute's name: a plain CLIP checkpoint loads into `self.clip`.
    base_model_prefix = "clip"
    input_modalities = ("image", "text")
    supports_gradient_checkpointing = True
    _no_split_modules = [
        "CLIPTextEmbeddings", "CLIPEncoderLayer", "CLIPVisionEmbeddings",
        "SiglipTextEmbeddings", "SiglipEncoderLayer", "SiglipVisionEmbeddings", "SiglipMultiheadAttentionPoolingHead",
    ]
    # The attention implementations are the backbone's (the heads and critics have no
    # attention); as in CLIPModel, the choice propagates to the backbone's sub-configs.
    _supports_sdpa = True
    _supports_flash_attn = True
    _supports_flex_attn = True
    _supports_attention_backend = True

    def _init_weights(self, module):
        # The objective's layers keep PyTorch's default initialization; the backbone's modules
        # are dispatched to the backbone's own `_init_weights` (see `initialize_weights`).
        # `init.*` skips weights that were loaded from a checkpoint.
        if isinstance(module, nn.Linear):
            init.kaiming_uniform_(module.weight, a=math.sqrt(5))
            if module.bias is not None:
                bound = 1 / math.sqrt(module.weight.shape[1])
                init.uniform_(module.bias, -bound, bound)
        elif isinstance(module, RandomFeatureRidge):
            # Buffers only (a closed-form fit, not trained): unfitted unless the checkpoint has them.
            for name, value in module.initial_buffers().items():
                init.copy_(getattr(module, name), value.to(getattr(module, name).device))
        elif isinstance(module, ContrastiveObjective):
            # Scalar parameters of an objective (SigLIP's logit scale and bias).
            for name, value in getattr(module, "initial_values", {}).items():
                init.constant_(getattr(module, name), value)
        elif isinstance(getattr(module, "clip", None), CLIPModel):
            # CLIP's `_init_weights` leaves its logit scale to `__init__`, which a load on the meta
            # device skips: without this a checkpoint lacking it gets uninitialised memory.
            init.constant_(module.clip.logit_scale, module.clip.config.logit_scale_init_value)

    @torch.no_grad()
    @init.guard_torch_init_functions()
    def initialize_weights(self):
        """Initialize every weight not loaded from a checkpoint, each sub-model with its own
        `_init_weights`.

        `PreTrainedModel.initialize_weights` treats classes defined outside transformers as
        custom code and then skips every module without parameters of its own — CLIP's attention
        and MLP blocks, whose `_init_weights` set their layers' std — leaving those layers at the
        generic std 0.02. Every `_init_weights` here uses the guarded `init.*` functions, which
        is what that check protects, so the dispatch runs without it.
        """

        def dispatch(module: nn.Module, fn) -> None:
            for child in module.children():
                dispatch(child, child._initialize_weights if isinstance(child, PreTrainedModel) else fn)
            fn(module, False)

        dispatch(self, self._initialize_weights)

def _check_local_folder(path, has_config: bool) -> None:
    """Before transformers reads a saved folder: its checksums match, and its config exists
    and names the backbone (without either, the default ViT-B/32 shape would be built and
    the weights would not fit it)."""
    verify_checksums(path, required="*.safetensors")
    if has_config:
        return
    config_file = os.path.join(path, "config.json")
    if not os.path.isfile(config_file):
        raise FileNotFoundError(f"{config_file!r} does not exist: the model folder is incomplete")
    with open(config_file, encoding="utf-8") as handle:
        try:
            saved = json.load(handle)
        except ValueError as error:
            raise ValueError(f"{config_file!r} is not valid JSON: {error}") from error
    if saved.get("model_type") == FactorCLConfig.model_type and not saved.get("clip_config"):
        raise ValueError(f"{config_file!r} has no `clip_config` (the backbone's configuration): the file is "
                         "incomplete or was edited")
    if saved.get("model_type") == FactorCLConfig.model_type:
        check_saved_config(saved, config_file)


class FactorCLModel(FactorCLPreTrainedModel):
    """A CLIP backbone with a FactorCL objective over its image and text embeddings.

    The backbone runs once per call: original and augmented views are batched together.
    """

    def __init__(self, config: FactorCLConfig):
        super().__init__(config)
        # Named `clip` for either family: equal to `base_model_prefix`, so a plain CLIP or SigLIP
        # checkpoint loads into it.
        self.clip = BACKBONE_CLASSES[config.backbone_type]._from_config(config.clip_config)
        self._freeze_unused_backbone_parameters()
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
            estimators=config.estimators,
            term_weights=config.term_weights,
        )
        self.post_init()

    # ------------------------------------------------------------------ loading
    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *model_args, **kwargs):
        """`PreTrainedModel.from_pretrained`, restricted to safetensors weights (never a pickle),
        with a clear error for a corrupted weights file, and for weights that lack tensors of
        the model (transformers would initialise them at random): a CLIP checkpoint gets its
        fresh heads through `from_clip`."""
        kwargs.setdefault("use_safetensors", True)
        fresh_objective = kwargs.pop("_fresh_objective", False)
        wants_info = kwargs.get("output_loading_info", False)
        if pretrained_model_name_or_path is not None:
            kwargs["output_loading_info"] = True
        if pretrained_model_name_or_path is not None:  # None: built from `config` and `state_dict`
            check_model_path(pretrained_model_name_or_path)
            if os.path.isdir(pretrained_model_name_or_path):
                _check_local_folder(pretrained_model_name_or_path, has_config="config" in kwargs)
        try:
            loaded = super().from_pretrained(pretrained_model_name_or_path, *model_args, **kwargs)
        except SafetensorError as error:
            raise ValueError(
                f"The weights of {str(pretrained_model_name_or_path)!r} cannot be read as safetensors "
                f"({error}): the checkpoint is corrupted or incomplete"
            ) from error
        except RuntimeError as error:
            if "ignore_mismatched_sizes" not in str(error) or kwargs.get("ignore_mismatched_sizes"):
                raise
            raise ValueError(cls._mismatch_message(pretrained_model_name_or_path, model_args, kwargs)) from error
        model, info = loaded if isinstance(loaded, tuple) else (loaded, None)
        if info is not None:
            # A plain CLIP checkpoint (base_model_prefix) has no heads to load: they are new.
            fresh_objective = fresh_objective or _saved_model_type(pretrained_model_name_or_path, kwargs) != "factorcl"
            _check_no_missing_weights(pretrained_model_name_or_path, info, fresh_objective)
        # Loading replaces the parameters (trainable again): freeze as `__init__` does.
        check_finite(model, where=repr(str(pretrained_model_name_or_path)))
        model._freeze_unused_backbone_parameters()
        return (model, info) if wants_info else model

    @classmethod
    def _mismatch_message(cls, path, model_args, kwargs) -> str:
        """Name the first weight whose saved shape differs from the config's (loading again
        with mismatches allowed, only to read transformers' report of them)."""
        _, info = super().from_pretrained(path, *model_args, **{**kwargs, "ignore_mismatched_sizes": True,
                                                                "output_loading_info": True})
        mismatched = sorted(info.get("mismatched_keys") or [], key=str)
        first = " ".join(map(str, mismatched[0])) if mismatched else "?"
        return (f"The weights of {str(path)!r} do not fit the config: {len(mismatched)} tensor(s) have another shape, "
                f"first {first} (name, saved shape, expected shape). Was the config (e.g. `head_dim`) changed "
                "after saving?")

    def save_pretrained(self, save_directory, *args, **kwargs):
        """`PreTrainedModel.save_pretrained`, refusing non-finite weights, plus a `SHA256SUMS`
        of the weights files that `from_pretrained` verifies and the files that make the folder
        a sentence-transformers model (sentence_transformers_module.py). A model whose code
        travels with it (`is_remote_code()`: registered in `factorcl_hf/__init__.py`, or loaded
        with `trust_remote_code`) maps every class of :data:`REMOTE_CODE_AUTO_CLASSES` to it in
        the saved `auto_map`, so the folder also serves the zero-shot pipeline."""
        check_finite(self)
        if self.is_remote_code():
            # transformers maps only the one class `register_for_auto_class` named, at save time
            # (`custom_object_save`); the others are added here, at the same moment.
            target = f"{type(self).__module__.rsplit('.', 1)[-1]}.{type(self).__name__}"
            self.config.auto_map = {**(getattr(self.config, "auto_map", None) or {}),
                                    **dict.fromkeys(REMOTE_CODE_AUTO_CLASSES, target)}
        super().save_pretrained(save_directory, *args, **kwargs)
        if kwargs.get("is_main_process", True):
            write_checksums(save_directory, "*.safetensors")
            write_sentence_transformers_files(save_directory)

    def _freeze_unused_backbone_parameters(self) -> None:
        """Logits come from the objective's alignment critic; the backbone's own logit scale
        (and bias) are kept for checkpoint compatibility but unused, so they are frozen: DDP
        requires every trainable parameter to receive a gradient."""
        for name in ("logit_scale", "logit_bias"):
            if isinstance(getattr(self.clip, name, None), nn.Parameter):
                getattr(self.clip, name).requires_grad_(False)

    @classmethod
    def from_clip(cls, clip: str | os.PathLike | PreTrainedModel, **config_overrides) -> "FactorCLModel":
        """Wrap an existing CLIP or SigLIP checkpoint (Hub id, local dir, or a `CLIPModel` /
        `SiglipModel`) with fresh FactorCL heads and critics; `config_overrides` set
        `FactorCLConfig` fields."""
        if isinstance(clip, nn.Module):
            if not isinstance(clip, tuple(BACKBONE_CLASSES.values())):
                raise ValueError(
                    f"`clip` must be one of {[c.__name__ for c in BACKBONE_CLASSES.values()]} (or a folder / Hub "
                    f"id of one), got a {type(clip).__name__}"
                )
            model = cls(FactorCLConfig(clip_config=clip.config, **config_overrides))
            model.clip.load_state_dict(clip.state_dict())
            return model
        if not isinstance(clip, (str, os.PathLike)):
            raise ValueError(f"`clip` must be a model, a folder or a Hub id, got {type(clip).__name__}")
        backbone_config = AutoConfig.from_pretrained(clip)
        if backbone_config.model_type not in BACKBONE_TYPES:
            raise ValueError(
                f"{str(clip)!r} holds a {backbone_config.model_type!r} model; `from_clip` wraps the dual encoders "
                f"{BACKBONE_TYPES} (e.g. openai/clip-vit-base-patch32, google/siglip-base-patch16-224)"
            )
        config = FactorCLConfig(clip_config=backbone_config, **config_overrides)
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
        if pixel_values.shape[0] == 0:
            raise ValueError(f"`{name}` is an empty batch (shape {tuple(pixel_values.shape)})")
        if value_checks_enabled():  # a device sync: the collator checks training batches (integrity.py)
            check_pixel_values(name, pixel_values)

    def _check_tokens(self, name: str, input_ids: torch.Tensor | None):
        if input_ids is None:
            raise ValueError(f"`{name}` is required (token ids of shape [batch, seq_len])")
        if input_ids.dim() != 2:
            raise ValueError(f"`{name}` must have shape [batch, seq_len], got {tuple(input_ids.shape)}")
        if input_ids.is_floating_point() or input_ids.is_complex() or input_ids.dtype == torch.bool:
            raise ValueError(f"`{name}` must hold integer token ids, got {input_ids.dtype}")
        max_len = self.config.clip_config.text_config.max_position_embeddings
        if input_ids.shape[1] > max_len:
            raise ValueError(f"`{name}` has {input_ids.shape[1]} tokens; this model takes at most {max_len}")
        if input_ids.numel() == 0:
            raise ValueError(f"`{name}` is empty (shape {tuple(input_ids.shape)}): need at least one token per text")
        if value_checks_enabled():  # a device sync: the collator checks training batches (integrity.py)
            check_token_ids(name, input_ids, self.config.clip_config.text_config.vocab_size)

    def _warn_unused_labels(self, labels):
        # A warning (once per model), not an error: batches of labelled datasets carry labels
        # whatever the objective.
        if labels is not None and not self.config.is_supervised and not getattr(self, "_warned_unused_labels", False):
            self._warned_unused_labels = True
            logger.warning("`labels` are ignored: objective %r is self-supervised (labels are not checked against "
                           "`num_labels` either); use a supervised objective to train on them", self.config.objective)

    # ---------------------------------------------------------------- embedding
    def _backbone(self, modality: str, **inputs):
        """The backbone tower's output; `pooler_output` is its projected embedding. The output
        switches left unset default to this model's config, as in transformers."""
        for name in ("output_attentions", "output_hidden_states"):
            if inputs.get(name) is None:
                inputs[name] = getattr(self.config, name)
        features = self.clip.get_image_features if modality == "image" else self.clip.get_text_features
        return features(**inputs, return_dict=True)

    def _embeddings(self, modality: str, backbone, rows: int | None = None) -> FactorCLEmbeddings:
        """The objective's embeddings over the backbone's output (its first `rows` rows: the
        original views of a batch that also holds augmented ones)."""

        def head(t):
            # Layers left out of a selective `output_hidden_states=[...]` are None.
            return t[:rows] if rows is not None and t is not None else t

        embeds = head(backbone.pooler_output)
        rep: Representation = self.objective.represent(embeds, MODALITIES.index(modality))
        layers = {
            name: tuple(head(t) for t in getattr(backbone, name))
            for name in ("hidden_states", "attentions")
            if getattr(backbone, name, None) is not None
        }
        return FactorCLEmbeddings(
            pooler_output=rep.alignment,
            last_hidden_state=head(backbone.last_hidden_state),
            shared_embeds=rep.shared,
            unique_embeds=rep.unique,
            factorized_embeds=rep.factorized,
            backbone_embeds=embeds,
            **layers,
        )

    @can_return_tuple
    @auto_docstring
    def get_image_features(self, pixel_values: torch.Tensor, **kwargs: Unpack[TransformersKwargs]) -> FactorCLEmbeddings:
        r"""
        Returns:
            [`FactorCLEmbeddings`]: shared, unique and backbone embeddings of a batch of images (a tuple in
            field order with `return_dict=False`).
        """
        _check_keywords("get_image_features", kwargs)
        self._check_pixels("pixel_values", pixel_values)
        return self._embeddings("image", self._backbone("image", pixel_values=pixel_values, **kwargs))

    @can_return_tuple
    @auto_docstring
    def get_text_features(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        **kwargs: Unpack[TransformersKwargs],
    ) -> FactorCLEmbeddings:
        r"""
        Returns:
            [`FactorCLEmbeddings`]: shared, unique and backbone embeddings of a batch of tokenized texts (a
            tuple in field order with `return_dict=False`).
        """
        _check_keywords("get_text_features", kwargs)
        self._check_tokens("input_ids", input_ids)
        return self._embeddings("text", self._backbone("text", input_ids=input_ids, attention_mask=attention_mask,
                                                       **kwargs))

    def _with_views(self, views: bool, pixel_values, input_ids, attention_mask, augmented_pixel_values,
                    augmented_input_ids, augmented_attention_mask):
        """The inputs of the towers: with `views`, the original and augmented views stacked, so
        each tower runs once (images, and token batches padded to one length)."""
        if not views:
            return pixel_values, input_ids, attention_mask
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
        return torch.cat([pixel_values, augmented_pixel_values]), ids, mask

    def _check_pair_inputs(self, input_ids, pixel_values, labels, augmented_pixel_values, augmented_input_ids,
                           return_loss, kwargs) -> tuple[bool, bool]:
        """The checks of an image-text call to `forward` (keywords, shapes and dtypes; values
        only with `FACTORCL_DEBUG`, see integrity.py). Returns whether the loss is computed (by
        default: when labels or augmented views are given) and whether the augmented views run."""
        _check_keywords("forward", kwargs)
        self._check_pixels("pixel_values", pixel_values)
        self._check_tokens("input_ids", input_ids)
        self._warn_unused_labels(labels)
        if return_loss is None:
            return_loss = labels is not None or augmented_pixel_values is not None
        if not return_loss:
            return False, False
        if pixel_values.shape[0] != input_ids.shape[0]:
            raise ValueError(
                f"`pixel_values` has batch size {pixel_values.shape[0]} but `input_ids` has "
                f"{input_ids.shape[0]}: training pairs must align"
            )
        if self.config.uses_augmented_views:
            self._check_pixels("augmented_pixel_values", augmented_pixel_values)
            self._check_tokens("augmented_input_ids", augmented_input_ids)
            for name, t in (("augmented_pixel_values", augmented_pixel_values), ("augmented_input_ids", augmented_input_ids)):
                if t.shape[0] != input_ids.shape[0]:
                    raise ValueError(f"`{name}` has batch size {t.shape[0]}, expected {input_ids.shape[0]}")
        if self.config.is_supervised and labels is None:
            raise ValueError(f"`labels` are required to train objective {self.config.objective!r}")
        return True, self.config.uses_augmented_views

    def _loss(self, image_backbone, text_backbone, n_pairs: int, labels, views: bool) -> dict[str, Any]:
        """The objective's loss fields of `FactorCLOutput` over the backbone embeddings (the
        first `n_pairs` rows of each tower; the augmented views after them when `views`)."""
        images, texts = image_backbone.pooler_output, text_backbone.pooler_output
        out = self.objective(
            images[:n_pairs], texts[:n_pairs], labels=labels,
            augmented_1=images[n_pairs:] if views else None, augmented_2=texts[n_pairs:] if views else None,
            compute_critic_loss=self.training,
        )
        return dict(loss=out.loss, critic_loss=out.critic_loss, loss_terms=out.loss_terms,
                    critic_inputs=out.critic_inputs)

    @can_return_tuple
    @auto_docstring(custom_intro=FORWARD_INTRO)
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
        **kwargs: Unpack[TransformersKwargs],
    ) -> FactorCLOutput | FactorCLEmbeddings:
        r"""
        labels (`torch.LongTensor` of shape `(batch_size,)`, *optional*):
            Class ids, for the supervised objectives.
        augmented_pixel_values (`torch.FloatTensor` of shape `(batch_size, num_channels, height, width)`, *optional*):
            An augmented view of each image, for self-supervised FactorCL and Cross+Self.
        augmented_input_ids (`torch.LongTensor` of shape `(batch_size, sequence_length)`, *optional*):
            An augmented view of each text, for self-supervised FactorCL and Cross+Self.
        augmented_attention_mask (`torch.Tensor` of shape `(batch_size, sequence_length)`, *optional*):
            The attention mask of `augmented_input_ids`.
        return_loss (`bool`, *optional*):
            Compute the loss (default: when `labels` or augmented views are given).
        """
        if (input_ids is None) != (pixel_values is None):
            return self._one_modality(input_ids, pixel_values, attention_mask, labels, return_loss, kwargs)
        return_loss, views = self._check_pair_inputs(input_ids, pixel_values, labels, augmented_pixel_values,
                                                     augmented_input_ids, return_loss, kwargs)
        pixels, ids, mask = self._with_views(views, pixel_values, input_ids, attention_mask, augmented_pixel_values,
                                             augmented_input_ids, augmented_attention_mask)
        image = self._backbone("image", pixel_values=pixels, **kwargs)  # one call per tower, with the views
        text = self._backbone("text", input_ids=ids, attention_mask=mask, **kwargs)
        image_embeds = self._embeddings("image", image, pixel_values.shape[0])
        text_embeds = self._embeddings("text", text, input_ids.shape[0])
        logits = self.objective.alignment_critic(image_embeds.pooler_output, text_embeds.pooler_output)
        loss = self._loss(image, text, input_ids.shape[0], labels, views) if return_loss else {}
        return FactorCLOutput(**loss, logits_per_image=logits, logits_per_text=logits.T, image_embeds=image_embeds,
                              text_embeds=text_embeds, text_model_output=_tower_output(text_embeds),
                              vision_model_output=_tower_output(image_embeds))

    def _one_modality(self, input_ids, pixel_values, attention_mask, labels, return_loss, kwargs):
        """The embeddings of the one modality given (a call without the other)."""
        _check_keywords("forward", kwargs)
        if return_loss or labels is not None:
            missing = "pixel_values" if pixel_values is None else "input_ids"
            raise ValueError(f"`{missing}` is required to compute the loss (image-text pairs)")
        if pixel_values is not None:
            return self.get_image_features(pixel_values, **kwargs, return_dict=True)
        return self.get_text_features(input_ids, attention_mask, **kwargs, return_dict=True)

    # ------------------------------------------------------ CLUB-critic training
    def critic_loss(self, outputs: FactorCLOutput) -> torch.Tensor | None:
        """The CLUB critics' loss on the detached features of `outputs` (no backbone re-run)."""
        return self.objective.critic_loss(outputs.critic_inputs) if outputs.critic_inputs else None

    @property
    def has_closed_form_factorization(self) -> bool:
        """The objective's Z_S and Z_U come from closed-form layers (`estimators="closed_form"`),
        which :meth:`fit_factorization` fits once training is done."""
        return hasattr(self.objective, "fit_factorization")

    def fit_factorization(self, image_embeds: torch.Tensor, text_embeds: torch.Tensor) -> dict[str, float]:
        """Fit the closed-form factorization (docs/method.md) on the backbone embeddings
        (`backbone_embeds` of `get_image_features` / `get_text_features`) of paired training
        rows, unaugmented; `factorcl-train` does it after the last step. Until then `shared_embeds`
        is the unit shared head and `unique_embeds` the unique head."""
        if not self.has_closed_form_factorization:
            raise ValueError(f"estimators {getattr(self.objective, 'estimators', None)!r} of objective "
                             f"{self.config.objective!r} have no closed-form factorization to fit")
        return self.objective.fit_factorization(image_embeds, text_embeds)

    def club_critic_parameters(self) -> list[nn.Parameter]:
        """Parameters of the CLUB critics: train them with their own optimizer."""
        return self.objective.club_critic_parameters()

    def main_parameters(self) -> list[nn.Parameter]:
        """Everything else: backbone, heads, InfoNCE critics."""
        club = {id(p) for p in self.club_critic_parameters()}
        return [p for p in self.parameters() if id(p) not in club and p.requires_grad]


def _saved_model_type(path, kwargs: dict) -> str | None:
    """The ``model_type`` of the config saved at ``path`` (a folder or Hub id)."""
    options = {k: kwargs[k] for k in ("cache_dir", "revision", "token", "local_files_only", "subfolder") if k in kwargs}
    try:
        return PreTrainedConfig.get_config_dict(path, **options)[0].get("model_type")
    except (OSError, ValueError):
        return None


def _check_no_missing_weights(path, info: dict, fresh_objective: bool) -> None:
    """Refuse weights that lack tensors of the model, naming them: transformers would fill
    them at random and the model would load "fine" with meaningless embeddings. Only
    `from_clip` (``fresh_objective``) expects the ``objective.*`` tensors to be missing."""
    missing = sorted(key for key in info.get("missing_keys") or []
                     if not (fresh_objective and key.startswith("objective.")))
    if missing:
        shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
        raise ValueError(f"The weights of {str(path)!r} lack {len(missing)} tensor(s) of the model: {shown}. The "
                         "checkpoint is incomplete; to start a FactorCL model from a CLIP checkpoint use "
                         "FactorCLModel.from_clip")


def _from_clip_checkpoint(cls, clip: str | os.PathLike, config: FactorCLConfig) -> FactorCLModel:
    """``from_pretrained`` of a plain CLIP checkpoint. The heads and critics (``objective.*``)
    are new by design, so transformers' load report (a line per missing key) becomes one
    line; any other missing or unexpected key is still a warning."""
    report = logging.getLogger("transformers.modeling_utils")
    level = report.level
    report.setLevel(logging.ERROR)
    try:
        model, info = cls.from_pretrained(clip, config=config, output_loading_info=True, _fresh_objective=True)
    finally:
        report.setLevel(level)
    logger.info("FactorCL heads and critics (objective.*) initialised fresh; the CLIP backbone loaded from %s", clip)
    other = [key for key in info["missing_keys"] if not key.startswith("objective.")] + list(info["unexpected_keys"])
    if other:
        logger.warning("Loading the CLIP checkpoint %s: missing or unexpected keys %s", clip, sorted(other))
    return model

__all__ = ["FactorCLModel", "FactorCLPreTrainedModel", "FactorCLOutput", "FactorCLEmbeddings"]
