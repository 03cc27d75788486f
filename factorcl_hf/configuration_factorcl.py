"""FactorCL model configuration."""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field, replace

from huggingface_hub.dataclasses import strict
from transformers import AutoConfig, PreTrainedConfig
from transformers.configuration_utils import SubConfigSpec

from .estimators import CRITIC_TYPES


@dataclass(frozen=True)
class ObjectiveSpec:
    """What an objective is and needs: the one declaration that the config, the objectives,
    the training script and the model card read.

    Args:
        name: the value of `FactorCLConfig.objective` / `--objective`.
        title: display name (model card).
        description: what it learns, one clause (model card).
        supervised: needs labels (`--label_column`).
        augmented_views: needs an augmented view of every pair (the backbone encodes 2B inputs).
        factorized: separate shared (Z_S: two heads) and unique (Z_U: three heads) representations.
        six_bounds: trained with FactorCL's six MI bounds (:data:`FACTORCL_TERMS`, which
            ``term_weights`` weighs); the baselines have losses of their own.
        default_estimators: the :data:`ESTIMATOR_PRESETS` entry used when `estimators` is not
            given (objectives without CLUB terms ignore it).
    """

    name: str
    title: str
    description: str
    supervised: bool
    augmented_views: bool
    factorized: bool
    six_bounds: bool = False
    default_estimators: str = "paper"


_SIX_BOUNDS = "separate shared and unique representations learned with six mutual-information bounds"
_ONE_REPRESENTATION = "objective on one representation, without separate shared/unique heads"
OBJECTIVE_REGISTRY: dict[str, ObjectiveSpec] = {
    spec.name: spec
    for spec in (
        ObjectiveSpec("factorcl_ssl", "FactorCL-SSL", f"{_SIX_BOUNDS}, augmented views standing in for labels",
                      supervised=False, augmented_views=True, factorized=True, six_bounds=True,
                      default_estimators="closed_form"),
        ObjectiveSpec("factorcl_sup", "FactorCL-SUP", f"{_SIX_BOUNDS} conditioned on the labels",
                      supervised=True, augmented_views=False, factorized=True, six_bounds=True,
                      default_estimators="tracked"),
        ObjectiveSpec("simclr", "SimCLR", "the cross-modal InfoNCE (CLIP) loss, which keeps shared information only",
                      supervised=False, augmented_views=False, factorized=False),
        ObjectiveSpec("siglip", "SigLIP", "SigLIP's pairwise sigmoid loss, which keeps shared information only",
                      supervised=False, augmented_views=False, factorized=False),
        ObjectiveSpec("supcon", "SupCon", "the supervised contrastive loss over both modalities' embeddings",
                      supervised=True, augmented_views=False, factorized=False),
        ObjectiveSpec("cross_self", "Cross+Self", "cross-modal InfoNCE plus InfoNCE between each sample and its augmented view",
                      supervised=False, augmented_views=True, factorized=False),
        ObjectiveSpec("ourcl_ssl", "OurCL-SSL", f"the FactorCL-SSL {_ONE_REPRESENTATION}",
                      supervised=False, augmented_views=True, factorized=False, six_bounds=True),
        ObjectiveSpec("ourcl_sup", "OurCL-SUP", f"the FactorCL-SUP {_ONE_REPRESENTATION}",
                      supervised=True, augmented_views=False, factorized=False, six_bounds=True),
    )
}
OBJECTIVES = tuple(OBJECTIVE_REGISTRY)

# The terms of FactorCL's loss (docs/method.md) by their `loss_terms` name, each with the sign it
# enters the minimised loss: InfoNCE lower bounds are maximised, CLUB upper bounds and the
# alignment penalty minimised. The first six are the paper's; `shared_alignment` (the mean squared
# distance between paired unit shared embeddings) is the `closed_form` preset's. Each layout
# computes its own subset (`LAYOUT_TERMS`).
FACTORCL_TERMS: dict[str, int] = {
    "shared_nce": -1,
    "shared_cond_club": 1,
    "unique_club": 1,
    "unique_label_nce_1": -1,
    "unique_label_nce_2": -1,
    "unique_cond_nce": -1,
    "shared_alignment": 1,
}
LAYOUTS = ("per_term", "closed_form")
LAYOUT_TERMS: dict[str, tuple[str, ...]] = {
    "per_term": tuple(FACTORCL_TERMS)[:6],
    "closed_form": ("shared_nce", "shared_alignment", "unique_label_nce_1", "unique_label_nce_2"),
}


def check_term_weights(term_weights, objective: str | None = None) -> dict[str, float] | None:
    """``term_weights`` as ``{term: float}`` (``None`` stays ``None``: every term weighs 1).
    Raises ``ValueError`` naming an unknown term, a weight that is not a finite number >= 0
    (a negative weight would turn a bound the wrong way), or an ``objective`` without the six
    terms."""
    if term_weights is None:
        return None
    if objective is not None and not objective_spec(objective).six_bounds:
        raise ValueError(f"`term_weights` weighs FactorCL's six terms; objective {objective!r} has none")
    if not isinstance(term_weights, dict):
        raise TypeError(f"`term_weights` must be a dict of term name -> weight, got {term_weights!r}")
    checked = {}
    for name, weight in term_weights.items():
        if name not in FACTORCL_TERMS:
            raise ValueError(f"`term_weights` names unknown term {name!r}; terms: {list(FACTORCL_TERMS)}")
        if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not 0 <= weight < math.inf:
            raise ValueError(f"`term_weights[{name!r}]` must be a finite number >= 0, got {weight!r}")
        checked[name] = float(weight)
    return checked


@dataclass(frozen=True)
class EstimatorPreset:
    """How FactorCL estimates its conditional and CLUB terms (docs/estimators.md), and which
    terms it weighs differently from the paper (docs/main_job.md).

    Args:
        name: the value of `FactorCLConfig.estimators` / `--estimators`.
        layout: `"per_term"` (the official code's layout: a pair of heads per term, Z_S and Z_U
            their concatenations, the CLUB terms estimated by NCE-CLUB critics) or
            `"closed_form"` (the paper's equations: one shared and one unique head per
            modality; the CLUB terms replaced by closed-form conditional expectations fitted
            once training is done, docs/method.md). The fields below up to `club_head_lr_scale`
            concern `"per_term"` only.
        conditioning: `"concat"` (the paper: the condition concatenated to both critic inputs,
            which bounds I((A,C); (B,C)), not I(A; B | C)) or `"negatives"` (each row's negatives
            drawn from rows with the same label, SUP, or a nearby augmented view, SSL).
        club_gradient: `"backbone"` (the CLUB terms' gradients reach the backbone, the paper) or
            `"heads"` (they stop at the CLUB heads' inputs).
        normalize_club_heads: L2-normalize the outputs of the heads the CLUB terms empty, so the
            heads cannot hide information from the critic by scale.
        club_critic_steps: CLUB-critic optimizer steps per batch (k).
        critic_lr_scale: the CLUB critics' learning rate over the main one.
        club_head_lr_scale: the CLUB heads' learning rate over the main one.
        term_weights: weights of :data:`FACTORCL_TERMS` other than 1; a model's own
            ``term_weights`` override them.
    """

    name: str
    layout: str
    conditioning: str
    club_gradient: str
    normalize_club_heads: bool
    club_critic_steps: int
    critic_lr_scale: float
    club_head_lr_scale: float
    term_weights: dict[str, float] = field(default_factory=dict)

    def weights(self, term_weights: dict[str, float] | None = None) -> dict[str, float]:
        """The weight of every term this preset's layout computes (:data:`LAYOUT_TERMS`):
        ``term_weights`` (checked), else this preset's, else 1. A term the layout does not
        compute is refused, naming the layout."""
        given = check_term_weights(term_weights) or {}
        computed = LAYOUT_TERMS[self.layout]
        foreign = sorted(set(given) - set(computed))
        if foreign:
            raise ValueError(f"`term_weights` names {foreign}, which estimator preset {self.name!r} "
                             f"({self.layout} layout) does not compute; its terms: {list(computed)}")
        return {**dict.fromkeys(computed, 1.0), **self.term_weights, **given}

    def club_game(
        self,
        learning_rate: float,
        critic_learning_rate: float | None = None,
        club_critic_steps: int | None = None,
        club_head_lr_scale: float | None = None,
    ) -> dict:
        """The CLUB game's training settings for main learning rate ``learning_rate``: the
        given values, else this preset's. Keys: ``critic_learning_rate``, ``club_critic_steps``,
        ``club_head_lr_scale``."""
        return {
            "critic_learning_rate": critic_learning_rate or learning_rate * self.critic_lr_scale,
            "club_critic_steps": club_critic_steps or self.club_critic_steps,
            "club_head_lr_scale": club_head_lr_scale or self.club_head_lr_scale,
        }


# The paper's estimators and game, as in the official code.
_PAPER = EstimatorPreset("paper", layout="per_term", conditioning="concat", club_gradient="backbone", normalize_club_heads=False,
                         club_critic_steps=1, critic_lr_scale=1.0, club_head_lr_scale=1.0)
# A CLUB game the critic wins (measured in docs/estimators.md).
_TRACKED = EstimatorPreset("tracked", layout="per_term", conditioning="negatives", club_gradient="heads", normalize_club_heads=True,
                           club_critic_steps=5, critic_lr_scale=10.0, club_head_lr_scale=10.0)
# `tracked` without term 6, the conditional InfoNCE, which in FactorCL-SSL rewards the unique
# heads for what the modalities share beyond their augmented views (docs/main_job.md).
_TRACKED_NO_COND_NCE = replace(_TRACKED, name="tracked_no_cond_nce", term_weights={"unique_cond_nce": 0.0})
# One shared and one unique head per modality, the CLUB terms fitted in closed form after
# training (docs/method.md): no CLUB critics, so no CLUB game (the last three fields are unused).
_CLOSED_FORM = EstimatorPreset("closed_form", layout="closed_form", conditioning="concat", club_gradient="backbone",
                               normalize_club_heads=False, club_critic_steps=1, critic_lr_scale=1.0,
                               club_head_lr_scale=1.0)
ESTIMATOR_PRESETS: dict[str, EstimatorPreset] = {
    preset.name: preset for preset in (_PAPER, _TRACKED, _TRACKED_NO_COND_NCE, _CLOSED_FORM)
}


def estimator_preset(name: str | None, objective: str = "factorcl_ssl") -> EstimatorPreset:
    """The entry ``name`` of :data:`ESTIMATOR_PRESETS` (``None``: ``objective``'s
    ``default_estimators``: ``closed_form`` for FactorCL-SSL, ``tracked`` for
    FactorCL-SUP, ``paper`` for the OurCL ablations and the baselines, which have no CLUB
    terms); a ``ValueError`` naming the choices otherwise."""
    if name is None:
        name = objective_spec(objective).default_estimators
    if name not in ESTIMATOR_PRESETS:
        raise ValueError(f"`estimators` must be one of {tuple(ESTIMATOR_PRESETS)}, got {name!r}")
    return ESTIMATOR_PRESETS[name]
# Dual encoders that can serve as the backbone (`clip_config.model_type`).
BACKBONE_TYPES = ("clip", "siglip")
# Training hyperparameters that configs saved by earlier versions hold (see `from_dict`).
_TRAINING_KEYS = ("club_critic_steps", "critic_learning_rate")


def objective_spec(name: str) -> ObjectiveSpec:
    """The registry entry of objective ``name``; a ``ValueError`` naming the choices otherwise."""
    if name not in OBJECTIVE_REGISTRY:
        raise ValueError(f"`objective` must be one of {OBJECTIVES}, got {name!r}")
    return OBJECTIVE_REGISTRY[name]


def _check_positive_int(name: str, value) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"`{name}` must be an int, got {value!r} ({type(value).__name__})")
    if value < 1:
        raise ValueError(f"`{name}` must be a positive integer, got {value}")


@strict
class FactorCLConfig(PreTrainedConfig):
    r"""
    Configuration of a [`FactorCLModel`]: a CLIP backbone plus the heads and critics of a
    contrastive objective over its image and text embeddings. Architecture only: how the model
    is trained (learning rates, the CLUB critics' steps per batch, ...) is a training argument
    (`training/arguments.py`).

    Args:
        clip_config (`dict`, `CLIPConfig` or `SiglipConfig`, *optional*):
            The backbone's configuration (default: CLIP ViT-B/32's shape); its `model_type`
            records the backbone family (`backbone_type`).
        objective (`str`, defaults to `"factorcl_ssl"`):
            One of `factorcl_ssl`, `factorcl_sup` (the six-term FactorCL objectives), `simclr`
            (the CLIP loss), `supcon`, `cross_self`, `ourcl_ssl`, `ourcl_sup` (FactorCL without
            separate shared/unique heads).
        head_dim (`int`, defaults to 64):
            Output size of every projection head (Z_S is `2 * head_dim`, Z_U `3 * head_dim`).
        head_hidden_dim (`int`, defaults to 256):
            Hidden size of the projection heads.
        critic_type (`str`, defaults to `"concat"`):
            Critic of the MI estimators: `concat` (the paper's MLP on `[x; y]`) or `separable`.
        critic_hidden_dim (`int`, defaults to 256), critic_num_hidden_layers (`int`, defaults to 1),
        critic_embed_dim (`int`, defaults to 128):
            Critic sizes (one hidden layer as in the paper, which uses 512 units; 2 layers
            reproduce the reference code; `critic_embed_dim` is used by separable critics).
        alignment_critic_type (`str`, defaults to `"cosine"`):
            Critic of the shared InfoNCE term I(X1;X2), which also scores retrieval. `cosine`
            makes that term the CLIP loss and `logits_per_image` CLIP's scaled cosine
            similarity; `concat` is the paper's estimator.
        logit_temperature (`float`, defaults to 0.1):
            Temperature of cosine critics (logits are `cos / logit_temperature`).
        critic_chunk_size (`int`, *optional*):
            Rows of the all-pairs critic evaluated at a time (bounds memory for big batches).
        estimators (`str`, *optional*):
            How the conditional and CLUB terms are estimated: `tracked` (conditioning by
            conditional negatives, CLUB terms whose critics keep up with their heads; the default
            of FactorCL-SUP), `tracked_no_cond_nce` (the same without term 6, the conditional
            InfoNCE; the default of FactorCL-SSL) or `paper` (the paper's concatenation and CLUB
            game, for reproducing published numbers; the default of the OurCL ablations); see
            `ESTIMATOR_PRESETS`, docs/estimators.md and docs/main_job.md. Configs saved before
            this option load as `paper`.
        term_weights (`dict`, *optional*):
            A weight per term of the six-bound objectives (`FACTORCL_TERMS`, e.g.
            `{"unique_club": 0.5}`), over the `estimators` preset's (terms neither names weigh
            1, as in the paper). For ablations (docs/main_job.md).
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
    # The backbone is any supported dual encoder, resolved by its `model_type` (default CLIP).
    sub_configs_defaults = {"clip_config": SubConfigSpec(AutoConfig, model_type="clip")}

    clip_config: dict | PreTrainedConfig | None = None
    objective: str = "factorcl_ssl"
    head_dim: int = 64
    head_hidden_dim: int = 256
    critic_type: str = "concat"
    critic_hidden_dim: int = 256
    critic_num_hidden_layers: int = 1
    critic_embed_dim: int = 128
    alignment_critic_type: str = "cosine"
    logit_temperature: float = 0.1
    critic_chunk_size: int | None = None
    estimators: str | None = None
    term_weights: dict | None = None

    def __post_init__(self, **kwargs):
        # Own a copy of a given CLIPConfig: model construction sets attributes on it (e.g. the
        # attention implementation), which must not leak into the caller's live CLIP model.
        if isinstance(self.clip_config, PreTrainedConfig):
            self.clip_config = copy.deepcopy(self.clip_config)
        super().__post_init__(**kwargs)

    def validate_architecture(self):
        """Part of `@strict` validation: every value checked with a message naming it."""
        spec = objective_spec(self.objective)
        if self.estimators is not None:
            estimator_preset(self.estimators)
        self.term_weights = check_term_weights(self.term_weights, self.objective)
        if self.backbone_type not in BACKBONE_TYPES:
            raise ValueError(
                f"`clip_config` must configure one of the supported backbones {BACKBONE_TYPES}, "
                f"got model type {self.backbone_type!r}"
            )
        if self.critic_type not in ("concat", "separable"):
            raise ValueError(f"`critic_type` must be 'concat' or 'separable', got {self.critic_type!r}")
        if self.alignment_critic_type not in CRITIC_TYPES:
            raise ValueError(
                f"`alignment_critic_type` must be one of {CRITIC_TYPES}, got {self.alignment_critic_type!r}"
            )
        for name in ("head_dim", "head_hidden_dim", "critic_hidden_dim", "critic_num_hidden_layers", "critic_embed_dim"):
            _check_positive_int(name, getattr(self, name))
        self._validate_clip_config()
        if not self.logit_temperature > 0:
            raise ValueError(f"`logit_temperature` must be > 0, got {self.logit_temperature}")
        if self.critic_chunk_size is not None and self.critic_chunk_size < 1:
            raise ValueError(f"`critic_chunk_size` must be a positive integer or None, got {self.critic_chunk_size}")
        if spec.supervised and (self.num_labels is None or self.num_labels < 2):
            raise ValueError(f"`num_labels` must be >= 2 for objective {self.objective!r}, got {self.num_labels}")

    def _validate_clip_config(self):
        """The backbone sizes the heads are built from: a negative or zero size would only
        surface as a tensor-creation error deep inside torch."""
        clip = self.clip_config
        if clip is None:
            return
        as_dict = clip if isinstance(clip, dict) else clip.to_dict()
        if "projection_dim" in as_dict:
            _check_positive_int("clip_config.projection_dim", as_dict["projection_dim"])
        for tower in ("text_config", "vision_config"):
            for key in ("hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size"):
                if key in (as_dict.get(tower) or {}):
                    _check_positive_int(f"clip_config.{tower}.{key}", as_dict[tower][key])

    @classmethod
    def from_dict(cls, config_dict: dict, **kwargs):
        model_type = config_dict.get("model_type")
        if model_type not in (None, cls.model_type):
            raise ValueError(
                f"This checkpoint is a {model_type!r} model, not a {cls.model_type!r} one. To start from a "
                "CLIP checkpoint use `FactorCLModel.from_clip(path_or_id)`."
            )
        if model_type is not None and not config_dict.get("clip_config") and "clip_config" not in kwargs:
            # A saved config always has one; without it the default (ViT-B/32) backbone would be
            # built and the saved weights would not fit it.
            raise ValueError("This FactorCL config has no `clip_config` (the backbone's configuration): the config "
                             "file is incomplete or was edited; restore it from the saved model")
        # Configs saved before the training hyperparameters left the model config carry them;
        # they are training arguments now (training/arguments.py) and are dropped on load.
        config_dict = {k: v for k, v in config_dict.items() if k not in _TRAINING_KEYS}
        # Models saved before the estimator presets were trained with the paper's estimators.
        if "model_type" in config_dict:
            config_dict.setdefault("estimators", "paper")
        return super().from_dict(config_dict, **kwargs)

    @property
    def text_config(self):
        """The backbone's text tower config (as on `CLIPConfig`: code written for CLIP reads it)."""
        return self.clip_config.text_config

    @property
    def vision_config(self):
        """The backbone's vision tower config (as on `CLIPConfig`)."""
        return self.clip_config.vision_config

    @property
    def backbone_type(self) -> str:
        """The backbone family (`"clip"` or `"siglip"`), recorded as `clip_config.model_type`."""
        return self.clip_config.model_type

    @property
    def backbone_embed_dim(self) -> int:
        """Size of the backbone embeddings the heads read: CLIP's projection size; SigLIP's
        vision width (its text head projects to the same size)."""
        if self.backbone_type == "siglip":
            return self.clip_config.vision_config.hidden_size
        return self.clip_config.projection_dim

    @property
    def is_supervised(self) -> bool:
        """The objective needs labels (:data:`OBJECTIVE_REGISTRY`)."""
        return objective_spec(self.objective).supervised

    @property
    def uses_augmented_views(self) -> bool:
        """The objective needs an augmented view of every pair (:data:`OBJECTIVE_REGISTRY`)."""
        return objective_spec(self.objective).augmented_views


__all__ = [
    "BACKBONE_TYPES",
    "FactorCLConfig",
    "ObjectiveSpec",
    "OBJECTIVE_REGISTRY",
    "OBJECTIVES",
    "objective_spec",
    "FACTORCL_TERMS",
    "LAYOUTS",
    "LAYOUT_TERMS",
    "check_term_weights",
    "EstimatorPreset",
    "ESTIMATOR_PRESETS",
    "estimator_preset",
]
