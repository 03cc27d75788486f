"""FactorCL model configuration."""

from __future__ import annotations

import copy

from huggingface_hub.dataclasses import strict
from transformers import CLIPConfig, PreTrainedConfig

# Kept in sync with objectives.OBJECTIVES / estimators.CRITIC_TYPES (a test checks it); not
# imported from there so that this file stays self-contained for trust_remote_code copies.
OBJECTIVE_NAMES = ("factorcl_ssl", "factorcl_sup", "simclr", "supcon", "cross_self", "ourcl_ssl", "ourcl_sup")
SUPERVISED_OBJECTIVES = ("factorcl_sup", "supcon", "ourcl_sup")
CRITIC_TYPE_NAMES = ("concat", "separable", "cosine")


@strict
class FactorCLConfig(PreTrainedConfig):
    r"""
    Configuration of a [`FactorCLModel`]: a CLIP backbone plus the heads and critics of a
    contrastive objective over its image and text embeddings.

    Args:
        clip_config (`dict` or `CLIPConfig`, *optional*):
            The backbone's configuration (default: CLIP ViT-B/32's shape).
        objective (`str`, defaults to `"factorcl_ssl"`):
            One of `factorcl_ssl`, `factorcl_sup` (the six-term FactorCL objectives), `simclr`
            (the CLIP loss), `supcon`, `cross_self`, `ourcl_ssl`, `ourcl_sup` (FactorCL without
            separate shared/unique heads).
        head_dim (`int`, defaults to 128):
            Output size of every projection head (Z_S is `2 * head_dim`, Z_U `3 * head_dim`).
        head_hidden_dim (`int`, defaults to 512):
            Hidden size of the projection heads.
        critic_type (`str`, defaults to `"concat"`):
            Critic of the MI estimators: `concat` (the paper's MLP on `[x; y]`) or `separable`.
        critic_hidden_dim (`int`, defaults to 512), critic_num_hidden_layers (`int`, defaults to 1),
        critic_embed_dim (`int`, defaults to 128):
            Critic sizes (one hidden layer as in the paper; 2 reproduces the reference code;
            `critic_embed_dim` is used by separable critics).
        alignment_critic_type (`str`, defaults to `"cosine"`):
            Critic of the shared InfoNCE term I(X1;X2), which also scores retrieval. `cosine`
            makes that term the CLIP loss and `logits_per_image` CLIP's scaled cosine
            similarity; `concat` is the paper's estimator.
        logit_temperature (`float`, defaults to 0.07):
            Temperature of cosine critics (logits are `cos / logit_temperature`).
        club_critic_steps (`int`, defaults to 1):
            Optimizer steps of the CLUB critics per training batch (k in the paper).
        critic_learning_rate (`float`, defaults to 1e-3):
            Learning rate of the CLUB critics' own optimizer.
        critic_chunk_size (`int`, *optional*):
            Rows of the all-pairs critic evaluated at a time (bounds memory for big batches).
        num_labels (`int`, defaults to 2):
            Number of classes of the label, for supervised objectives.

    Example:

    ```python
    >>> from factorcl_hf import FactorCLConfig, FactorCLModel
    >>> config = FactorCLConfig(objective="factorcl_sup", num_labels=3)
    >>> model = FactorCLModel(config)
    ```
    """

    model_type = "factorcl"
    sub_configs_defaults = {"clip_config": CLIPConfig}

    clip_config: dict | CLIPConfig | None = None
    objective: str = "factorcl_ssl"
    head_dim: int = 128
    head_hidden_dim: int = 512
    critic_type: str = "concat"
    critic_hidden_dim: int = 512
    critic_num_hidden_layers: int = 1
    critic_embed_dim: int = 128
    alignment_critic_type: str = "cosine"
    logit_temperature: float = 0.07
    club_critic_steps: int = 1
    critic_learning_rate: float = 1e-3
    critic_chunk_size: int | None = None

    def __post_init__(self, **kwargs):
        # Own a copy of a given CLIPConfig: model construction sets attributes on it (e.g. the
        # attention implementation), which must not leak into the caller's live CLIP model.
        if isinstance(self.clip_config, CLIPConfig):
            self.clip_config = copy.deepcopy(self.clip_config)
        super().__post_init__(**kwargs)

    def validate_architecture(self):
        """Part of `@strict` validation: every value checked with a message naming it."""
        if self.objective not in OBJECTIVE_NAMES:
            raise ValueError(f"`objective` must be one of {OBJECTIVE_NAMES}, got {self.objective!r}")
        if self.critic_type not in ("concat", "separable"):
            raise ValueError(f"`critic_type` must be 'concat' or 'separable', got {self.critic_type!r}")
        if self.alignment_critic_type not in CRITIC_TYPE_NAMES:
            raise ValueError(
                f"`alignment_critic_type` must be one of {CRITIC_TYPE_NAMES}, got {self.alignment_critic_type!r}"
            )
        for name in ("head_dim", "head_hidden_dim", "critic_hidden_dim", "critic_num_hidden_layers", "critic_embed_dim"):
            if getattr(self, name) < 1:
                raise ValueError(f"`{name}` must be a positive integer, got {getattr(self, name)}")
        if self.club_critic_steps < 1:
            raise ValueError(f"`club_critic_steps` must be >= 1 (k in the paper), got {self.club_critic_steps}")
        if not self.logit_temperature > 0:
            raise ValueError(f"`logit_temperature` must be > 0, got {self.logit_temperature}")
        if not self.critic_learning_rate > 0:
            raise ValueError(f"`critic_learning_rate` must be > 0, got {self.critic_learning_rate}")
        if self.critic_chunk_size is not None and self.critic_chunk_size < 1:
            raise ValueError(f"`critic_chunk_size` must be a positive integer or None, got {self.critic_chunk_size}")
        if self.objective in SUPERVISED_OBJECTIVES and (self.num_labels is None or self.num_labels < 2):
            raise ValueError(f"`num_labels` must be >= 2 for objective {self.objective!r}, got {self.num_labels}")

    @classmethod
    def from_dict(cls, config_dict: dict, **kwargs):
        model_type = config_dict.get("model_type")
        if model_type not in (None, cls.model_type):
            raise ValueError(
                f"This checkpoint is a {model_type!r} model, not a {cls.model_type!r} one. To start from a "
                "CLIP checkpoint use `FactorCLModel.from_clip(path_or_id)`."
            )
        return super().from_dict(config_dict, **kwargs)

    @property
    def backbone_embed_dim(self) -> int:
        """Size of the backbone embeddings the heads read (CLIP's projection size)."""
        return self.clip_config.projection_dim

    @property
    def is_supervised(self) -> bool:
        return self.objective in SUPERVISED_OBJECTIVES

    @property
    def uses_augmented_views(self) -> bool:
        return self.objective in ("factorcl_ssl", "ourcl_ssl", "cross_self")


__all__ = ["FactorCLConfig"]
