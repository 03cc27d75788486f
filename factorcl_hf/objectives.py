"""Contrastive objectives over a pair of backbone features: FactorCL and its baselines.

Every objective owns its projection heads and critics and has the same interface:

* ``forward(features_1, features_2, labels=None, augmented_1=None, augmented_2=None)``
  returns an :class:`ObjectiveOutput` — the loss, each term by name, the representations;
* ``represent(features, modality)`` gives the embeddings of one modality (no loss);
* ``similarity(features_1, features_2)`` scores all pairs in the shared space;
* ``club_critic_parameters()`` / ``main_parameters()`` split the parameters for two
  optimizers, and ``critic_loss(output.critic_inputs)`` trains the CLUB critics on the
  detached features of the same step (see :func:`train_club_critics`).

Losses are sums of signed MI bounds (``-lower + upper``), so an objective's loss equals
``CLIP loss − log B`` for the CLIP/SimCLR objective; only differences matter for training.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from .conditional_mean import RandomFeatureRidge
from .configuration_factorcl import (
    FACTORCL_TERMS,
    OBJECTIVE_REGISTRY,
    OBJECTIVES,
    check_term_weights,
    estimator_preset,
    objective_spec,
)
from .distributed import gather_features
from .estimators import (
    NCECLUBEstimator,
    build_critic,
    check_features,
    condition_on,
    infonce_lower_bound,
    negative_log_weights,
    symmetric_infonce,
)
from .integrity import check_label_ids, value_checks_enabled

__all__ = [
    "OBJECTIVES",
    "ObjectiveOutput",
    "Representation",
    "ProjectionHead",
    "ModalityHeads",
    "ContrastiveObjective",
    "FactorCLObjective",
    "ClosedFormFactorCLObjective",
    "ClosedFormFit",
    "SimCLRObjective",
    "SigLIPObjective",
    "CrossSelfObjective",
    "SupConObjective",
    "build_objective",
    "train_club_critics",
]

# Head roles of FactorCL (docs/method.md): the six terms use five heads per modality.
SHARED, SHARED_COND, UNIQUE, UNIQUE_LABEL, UNIQUE_COND = (
    "shared", "shared_cond", "unique", "unique_label", "unique_cond"
)
FACTORCL_ROLES = (SHARED, SHARED_COND, UNIQUE, UNIQUE_LABEL, UNIQUE_COND)
# Roles whose outputs on the augmented view condition (SSL) a term.
SSL_CONDITIONED_ROLES = (SHARED_COND, UNIQUE_LABEL, UNIQUE_COND)
# Roles that only the CLUB terms train: the heads those terms empty.
CLUB_ROLES = (SHARED_COND, UNIQUE)
CONDITIONINGS = ("concat", "negatives")
CLUB_GRADIENTS = ("backbone", "heads")


@dataclass
class Representation:
    """Embeddings of one modality.

    ``alignment`` is the part compared across modalities by :meth:`similarity` (CLIP-style
    retrieval); ``shared`` is Z_S and ``unique`` is Z_U of the paper (``None`` for objectives
    that do not factorize).
    """

    alignment: torch.Tensor
    shared: torch.Tensor
    unique: torch.Tensor | None = None

    @property
    def factorized(self) -> torch.Tensor:
        """``[Z_S; Z_U]``: the paper's downstream embedding for this modality."""
        return self.shared if self.unique is None else torch.cat([self.shared, self.unique], dim=-1)


@dataclass
class ObjectiveOutput:
    loss: torch.Tensor
    loss_terms: dict[str, torch.Tensor]
    representations: tuple[Representation, Representation]
    # Detached (x, y[, condition]) inputs the CLUB critics train on, for `critic_loss`.
    critic_inputs: dict[str, tuple[torch.Tensor, ...]] = field(default_factory=dict)
    critic_loss: torch.Tensor | None = None


class ProjectionHead(nn.Sequential):
    """Linear → ReLU → Linear, the SimCLR projection head."""

    def __init__(self, in_dim: int, hidden_dim: int, out_dim: int):
        super().__init__(nn.Linear(in_dim, hidden_dim), nn.ReLU(), nn.Linear(hidden_dim, out_dim))


class ModalityHeads(nn.Module):
    """The projection heads of one modality, by role.

    With ``factorized=False`` a single head serves every role (the OurCL ablation: the same
    objective on one representation). Heads of ``detached_roles`` read the features without
    passing gradients back to them; those of ``normalized_roles`` output unit vectors.
    """

    def __init__(
        self,
        roles: tuple[str, ...],
        in_dim: int,
        hidden_dim: int,
        out_dim: int,
        factorized: bool = True,
        detached_roles: tuple[str, ...] = (),
        normalized_roles: tuple[str, ...] = (),
    ):
        super().__init__()
        self.roles = roles
        self.factorized = factorized
        self.detached_roles = detached_roles if factorized else ()
        self.normalized_roles = normalized_roles if factorized else ()
        names = roles if factorized else ("joint",)
        self.heads = nn.ModuleDict({name: ProjectionHead(in_dim, hidden_dim, out_dim) for name in names})

    def forward(self, features: torch.Tensor, roles: tuple[str, ...] | None = None) -> dict[str, torch.Tensor]:
        roles = roles or self.roles
        if not self.factorized:
            joint = self.heads["joint"](features)
            return {role: joint for role in roles}
        return {role: self._head(role, features) for role in roles}

    def _head(self, role: str, features: torch.Tensor) -> torch.Tensor:
        output = self.heads[role](features.detach() if role in self.detached_roles else features)
        return F.normalize(output, dim=-1) if role in self.normalized_roles else output


class ContrastiveObjective(nn.Module):
    """Base class: input validation, heads per modality, parameter groups, similarity."""

    roles: tuple[str, ...] = (SHARED,)
    requires_labels = False
    requires_augmented = False

    def __init__(
        self,
        input_dims: tuple[int, int],
        head_dim: int = 64,
        head_hidden_dim: int = 256,
        num_labels: int | None = None,
        factorized: bool = True,
        temperature: float = 0.1,
        head_options: dict | None = None,
    ):
        super().__init__()
        if len(input_dims) != 2 or any(int(d) < 1 for d in input_dims):
            raise ValueError(f"`input_dims` must be two positive feature sizes, got {input_dims}")
        if self.requires_labels and (num_labels is None or num_labels < 2):
            raise ValueError(f"`num_labels` must be >= 2 for {type(self).__name__}, got {num_labels}")
        self.input_dims = tuple(int(d) for d in input_dims)
        self.num_labels = num_labels
        self.head_dim = head_dim
        self.temperature = temperature
        self.heads = nn.ModuleList(
            ModalityHeads(self.roles, dim, head_hidden_dim, head_dim, factorized, **(head_options or {}))
            for dim in self.input_dims
        )
        # Scores pairs in the shared space (`similarity`, retrieval logits); subclasses may
        # replace it with a trained critic.
        self.alignment_critic: nn.Module = build_critic("cosine", head_dim, head_dim, temperature=temperature)

    # ----------------------------------------------------------------- inference
    def represent(self, features: torch.Tensor, modality: int) -> Representation:
        check_features(f"features_{modality + 1}", features, self.input_dims[modality], check_finite=False)
        heads = self.heads[modality](features)
        return self._representation(heads)

    def _representation(self, heads: dict[str, torch.Tensor]) -> Representation:
        return Representation(alignment=heads[SHARED], shared=heads[SHARED])

    def similarity(self, features_1: torch.Tensor, features_2: torch.Tensor) -> torch.Tensor:
        """``[N1, N2]`` scores of every modality-1 sample against every modality-2 sample."""
        return self.alignment_critic(self.represent(features_1, 0).alignment, self.represent(features_2, 1).alignment)

    # ------------------------------------------------------------ parameters
    @property
    def club_estimators(self) -> dict[str, NCECLUBEstimator]:
        """The CLUB estimators by their key in ``ObjectiveOutput.critic_inputs`` (subclasses
        with CLUB terms list theirs; parameters and the critics' loss follow from it)."""
        return {}

    def club_critic_parameters(self) -> list[nn.Parameter]:
        """Parameters trained only by :meth:`critic_loss` (their own optimizer)."""
        return [p for estimator in self.club_estimators.values() for p in estimator.parameters()]

    def main_parameters(self) -> list[nn.Parameter]:
        club = {id(p) for p in self.club_critic_parameters()}
        return [p for p in self.parameters() if id(p) not in club]

    def club_head_parameters(self) -> list[nn.Parameter]:
        """Parameters of the heads only the CLUB terms train (a subset of
        :meth:`main_parameters`, which may get their own learning rate); none for objectives
        without separate CLUB heads."""
        return []

    def critic_loss(self, critic_inputs: dict[str, tuple[torch.Tensor, torch.Tensor]]) -> torch.Tensor | None:
        """Sum of the CLUB critics' losses on detached inputs (``None`` if there are none)."""
        if not self.club_estimators:
            return None
        return sum(estimator.critic_loss(*critic_inputs[key]) for key, estimator in self.club_estimators.items())

    # ------------------------------------------------------------ validation
    def _validate(self, features, labels, augmented):
        # Shapes and dtypes always; values (finite features, labels in range: each a device
        # sync) only with FACTORCL_DEBUG, as the model's inputs (integrity.py).
        values = value_checks_enabled()
        batch = None
        for m, feats in enumerate(features):
            check_features(f"features_{m + 1}", feats, self.input_dims[m], batch_size=batch, check_finite=values)
            batch = feats.shape[0]
        if batch < 2:
            raise ValueError(
                "`features_1` has batch size 1: contrastive objectives need at least 2 samples per batch"
            )
        if self.requires_augmented:
            for m, aug in enumerate(augmented):
                if aug is None:
                    raise ValueError(
                        f"`augmented_{m + 1}` is required by {type(self).__name__} (features of an augmented view)"
                    )
                check_features(f"augmented_{m + 1}", aug, self.input_dims[m], batch_size=batch, check_finite=values)
        if self.requires_labels:
            if labels is None:
                raise ValueError(f"`labels` are required by {type(self).__name__}")
            if labels.dim() != 1 or labels.shape[0] != batch:
                raise ValueError(f"`labels` must have shape [{batch}], got {tuple(labels.shape)}")
            if labels.is_floating_point() or labels.is_complex():
                raise ValueError(f"`labels` must be an integer tensor, got {labels.dtype}")
            if values:
                check_label_ids("labels", labels, self.num_labels)

    def forward(
        self,
        features_1: torch.Tensor,
        features_2: torch.Tensor,
        labels: torch.Tensor | None = None,
        augmented_1: torch.Tensor | None = None,
        augmented_2: torch.Tensor | None = None,
        compute_critic_loss: bool = True,
    ) -> ObjectiveOutput:
        features = (features_1, features_2)
        augmented = (augmented_1, augmented_2)
        self._validate(features, labels, augmented)
        return self._loss(features, labels, augmented, compute_critic_loss)

    def _loss(self, features, labels, augmented, compute_critic_loss) -> ObjectiveOutput:
        raise NotImplementedError


class FactorCLObjective(ContrastiveObjective):
    """FactorCL: six MI bounds over five head pairs (docs/method.md).

    ``supervised=True`` conditions on the label (FactorCL-SUP); ``supervised=False`` replaces
    the label by the heads' outputs on augmented views (FactorCL-SSL), in the CLUB term *and*
    in its critic's training. ``factorized=False`` is the OurCL ablation.

    ``estimators`` names an entry of ``ESTIMATOR_PRESETS`` (default: the objective's
    ``default_estimators``); ``conditioning``,
    ``club_gradient`` and ``normalize_club_heads`` override its fields (docs/estimators.md):

    * ``conditioning="concat"``: terms 2 and 6 score ``([a; c], [b; c])`` with negatives from
      every row (the paper); ``"negatives"``: they score ``([a; c], b)`` with each row's
      negatives drawn from the rows of its class (SUP, exact) or weighted by a kernel on the
      detached augmented-view condition (SSL).
    * ``club_gradient="heads"`` stops the CLUB terms' gradients at their heads' inputs.

    ``term_weights`` weighs the six terms (:data:`FACTORCL_TERMS`) over the preset's weights
    (``tracked_no_cond_nce`` drops term 6); a term neither names weighs 1.
    """

    roles = FACTORCL_ROLES

    def __init__(
        self,
        input_dims: tuple[int, int],
        supervised: bool,
        factorized: bool = True,
        num_labels: int | None = None,
        head_dim: int = 64,
        head_hidden_dim: int = 256,
        critic_type: str = "concat",
        critic_hidden_dim: int = 256,
        critic_num_hidden_layers: int = 1,
        critic_embed_dim: int = 128,
        alignment_critic_type: str = "cosine",
        temperature: float = 0.1,
        critic_chunk_size: int | None = None,
        estimators: str | None = None,
        conditioning: str | None = None,
        club_gradient: str | None = None,
        normalize_club_heads: bool | None = None,
        term_weights: dict[str, float] | None = None,
    ):
        name = next(spec.name for spec in OBJECTIVE_REGISTRY.values()
                    if spec.six_bounds and (spec.supervised, spec.factorized) == (supervised, factorized))
        preset = estimator_preset(estimators, name)
        if preset.layout != "per_term":
            raise ValueError(f"`estimators` {preset.name!r} has the {preset.layout} layout: use ClosedFormFactorCLObjective")
        self.term_weights = preset.weights(term_weights)
        self.estimators = preset.name
        self.conditioning = preset.conditioning if conditioning is None else conditioning
        self.club_gradient = preset.club_gradient if club_gradient is None else club_gradient
        normalize = preset.normalize_club_heads if normalize_club_heads is None else normalize_club_heads
        if self.conditioning not in CONDITIONINGS:
            raise ValueError(f"`conditioning` must be one of {CONDITIONINGS}, got {self.conditioning!r}")
        if self.club_gradient not in CLUB_GRADIENTS:
            raise ValueError(f"`club_gradient` must be one of {CLUB_GRADIENTS}, got {self.club_gradient!r}")
        self.requires_labels = supervised
        self.requires_augmented = not supervised
        head_options = dict(
            detached_roles=CLUB_ROLES if self.club_gradient == "heads" else (),
            normalized_roles=CLUB_ROLES if normalize else (),
        )
        super().__init__(input_dims, head_dim, head_hidden_dim, num_labels, factorized, temperature, head_options)
        self.supervised = supervised
        self.factorized = factorized

        def critic(x_dim, y_dim, kind=critic_type):
            return build_critic(
                kind, x_dim, y_dim, critic_hidden_dim, critic_num_hidden_layers, critic_embed_dim,
                temperature, critic_chunk_size,
            )

        # What conditions a term: the one-hot label (SUP) or the augmented view's head (SSL).
        cond_dim = num_labels if supervised else head_dim
        self._negatives = None
        if self.conditioning == "negatives":
            self._negatives = "class" if supervised else "median_kernel"
        # The second argument of terms 2 and 6 carries the condition only when concatenating.
        y_cond_dim = cond_dim if self._negatives is None else 0
        # 1. I(X1; X2) — also scores retrieval (`similarity`).
        self.alignment_critic = critic(head_dim, head_dim, alignment_critic_type)
        # 2. I(X1; X2 | Y), upper bound.
        self.club_shared_cond = NCECLUBEstimator(critic(head_dim + cond_dim, head_dim + y_cond_dim), self._negatives)
        # 3. I(X1; X2), upper bound on the unique heads.
        self.club_unique = NCECLUBEstimator(critic(head_dim, head_dim))
        # 4, 5. I(Xi; Y), one critic per modality.
        self.label_critics = nn.ModuleList(critic(head_dim, cond_dim) for _ in range(2))
        # 6. I(X1; X2 | Y), lower bound.
        self.unique_cond_critic = critic(head_dim + cond_dim, head_dim + y_cond_dim)

    def _representation(self, heads):
        if not self.factorized:
            return Representation(alignment=heads[SHARED], shared=heads[SHARED])
        return Representation(
            alignment=heads[SHARED],
            shared=torch.cat([heads[SHARED], heads[SHARED_COND]], dim=-1),
            unique=torch.cat([heads[UNIQUE], heads[UNIQUE_LABEL], heads[UNIQUE_COND]], dim=-1),
        )

    def club_head_parameters(self) -> list[nn.Parameter]:
        if not self.factorized:
            return []
        return [p for modality in self.heads for role in CLUB_ROLES for p in modality.heads[role].parameters()]

    def _gathered_heads(self, features, labels, augmented):
        """Every head's output (and, for SSL, the conditioning heads' outputs on the augmented
        views) gathered across processes, plus the labels: what the six terms score."""
        heads = [self.heads[m](features[m]) for m in range(2)]
        representations = tuple(self._representation(h) for h in heads)
        local = [h[r] for h in heads for r in self.roles]
        if not self.supervised:
            conditions = [self.heads[m](augmented[m], SSL_CONDITIONED_ROLES) for m in range(2)]
            local += [c[r] for c in conditions for r in SSL_CONDITIONED_ROLES]
        gathered = iter(gather_features(local + [labels]))
        heads = [{r: next(gathered) for r in self.roles} for _ in range(2)]
        if not self.supervised:
            conditions = [{r: next(gathered) for r in SSL_CONDITIONED_ROLES} for _ in range(2)]
        labels = next(gathered)
        if self.supervised:
            one_hot = F.one_hot(labels, self.num_labels).to(heads[0][SHARED].dtype)
            conditions = [dict.fromkeys(SSL_CONDITIONED_ROLES, one_hot) for _ in range(2)]
        return heads, conditions, labels, representations

    def _conditioned(self, heads, conditions, labels, role):
        """``(x, y, condition)`` of a conditional term on the heads of ``role``: the critic's
        arguments and what its negatives are drawn by (``None``: every row)."""
        if self._negatives is None:
            return (*(condition_on(heads[m][role], conditions[m][role]) for m in range(2)), None)
        if self.supervised:
            return condition_on(heads[0][role], conditions[0][role]), heads[1][role], labels
        # SSL: both views' conditioning heads, detached, are the condition the kernel compares.
        condition = torch.cat([conditions[m][role] for m in range(2)], dim=-1).detach()
        return condition_on(heads[0][role], condition[:, : self.head_dim]), heads[1][role], condition

    def _loss(self, features, labels, augmented, compute_critic_loss):
        heads, conditions, labels, representations = self._gathered_heads(features, labels, augmented)
        shared_cond = self._conditioned(heads, conditions, labels, SHARED_COND)
        unique_cond = self._conditioned(heads, conditions, labels, UNIQUE_COND)
        unique = (heads[0][UNIQUE], heads[1][UNIQUE])
        terms = {
            "shared_nce": symmetric_infonce(self.alignment_critic, heads[0][SHARED], heads[1][SHARED]),
            "shared_cond_club": self.club_shared_cond(*shared_cond),
            "unique_club": self.club_unique(*unique),
        }
        for m in range(2):
            scores = self._label_scores(m, heads[m][UNIQUE_LABEL], conditions[m][UNIQUE_LABEL], labels)
            terms[f"unique_label_nce_{m + 1}"] = infonce_lower_bound(scores)
        unique_cond_weights = negative_log_weights(self._negatives, unique_cond[2])
        terms["unique_cond_nce"] = infonce_lower_bound(self.unique_cond_critic(*unique_cond[:2]), unique_cond_weights)

        # With every weight 1 this is the paper's sum, to the bit: x * 1.0 and 0 + x are exact.
        loss = sum(FACTORCL_TERMS[name] * self.term_weights[name] * value for name, value in terms.items())
        critic_inputs = {
            "shared_cond": tuple(t.detach() for t in shared_cond if t is not None),
            "unique": tuple(t.detach() for t in unique),
        }
        loss_terms = {name: value.detach() for name, value in terms.items()}
        critic_loss = None
        if compute_critic_loss:
            critic_loss = self.critic_loss(critic_inputs)
            loss_terms["club_critics_loss"] = critic_loss.detach()
        return ObjectiveOutput(loss, loss_terms, representations, critic_inputs, critic_loss)

    def _label_scores(self, modality, features, condition, labels):
        """``S[i, j] = f(h_i, z_j)`` of terms 4-5. A one-hot label takes only ``num_labels``
        values, so when there are fewer classes than rows each class is scored once and the
        columns are gathered: the same scores for ``B x C`` critic evaluations, not ``B x B``."""
        critic = self.label_critics[modality]
        if not self.supervised or self.num_labels >= features.shape[0]:
            return critic(features, condition)
        classes = torch.eye(self.num_labels, dtype=features.dtype, device=features.device)
        return critic(features, classes)[:, labels]

    @property
    def club_estimators(self) -> dict[str, NCECLUBEstimator]:
        """The CLUB estimators by their key in ``ObjectiveOutput.critic_inputs``."""
        return {"shared_cond": self.club_shared_cond, "unique": self.club_unique}


@dataclass(frozen=True)
class ClosedFormFit:
    """How :class:`ClosedFormFactorCLObjective` fits its closed-form layers (docs/method.md,
    "Closed-form factorization"; measured in docs/main_job.md). Ridges are relative to the mean
    feature variance, bandwidths relative to the median distance between inputs.

    Args:
        num_features: random Fourier features of every regression.
        shared_ridge / shared_bandwidth: the two regressions that make Z_S.
        unique_target_ridge: the regression of the unique head on the other modality's shared head.
        unique_ridge / unique_bandwidth: the regression of that prediction on Z_S (the eraser).
        unique_passes: erasers applied in turn, each to what the previous ones left.
    """

    num_features: int = 256
    shared_ridge: float = 1e-2
    shared_bandwidth: float = 2.0
    unique_target_ridge: float = 1e-3
    unique_ridge: float = 1e-2
    unique_bandwidth: float = 1.0
    unique_passes: int = 2


class ClosedFormFactorCLObjective(ContrastiveObjective):
    """FactorCL on the paper's equations: one shared head (Z_S, terms 1-2) and one unique head
    (Z_U, terms 3-6) per modality, with the CLUB terms replaced by closed-form conditional
    expectations fitted once training is done (:meth:`fit_factorization`; docs/method.md).

    Trained terms: ``shared_nce`` (1, the cross-modal InfoNCE of the shared heads, which also
    scores retrieval), ``shared_alignment`` (the mean squared distance between paired unit shared
    embeddings: what one modality's shared head says that the other's does not) and
    ``unique_label_nce_1/2`` (4-5: InfoNCE between a modality's unique head and the label, SUP,
    or between its unique heads on a sample and on its augmented view, SSL).

    Fitted (buffers, :meth:`fit_factorization`), for each modality m and the other one o:

    * Z_S_m = E[ E[s_m | s_o] | s_m ]: what the other modality predicts of this one's unit shared
      embedding ``s``, predicted back from this one (alternating conditional expectations):
      a function of this modality that can only carry what the other one shares;
    * Z_U_m = u_m - E[ E[u_m | s_o] | Z_S_m ], applied ``unique_passes`` times: the unique head
      ``u`` less every function of the shared content that the other modality explains. The
      inner regression's target comes from the other modality, so the eraser never learns to
      remove what only this modality carries.

    Before the fit, Z_S is the unit shared head and Z_U the unique head.
    """

    roles = (SHARED, UNIQUE)

    def __init__(
        self,
        input_dims: tuple[int, int],
        supervised: bool,
        num_labels: int | None = None,
        head_dim: int = 64,
        head_hidden_dim: int = 256,
        critic_type: str = "concat",
        critic_hidden_dim: int = 256,
        critic_num_hidden_layers: int = 1,
        critic_embed_dim: int = 128,
        alignment_critic_type: str = "cosine",
        temperature: float = 0.1,
        critic_chunk_size: int | None = None,
        estimators: str | None = None,
        term_weights: dict[str, float] | None = None,
        fit: ClosedFormFit = ClosedFormFit(),
    ):
        preset = estimator_preset(estimators or "closed_form")
        if preset.layout != "closed_form":
            raise ValueError(f"`estimators` {preset.name!r} has the {preset.layout} layout: use FactorCLObjective")
        self.estimators, self.term_weights, self.fit_settings = preset.name, preset.weights(term_weights), fit
        self.requires_labels, self.requires_augmented = supervised, not supervised
        super().__init__(input_dims, head_dim, head_hidden_dim, num_labels, True, temperature)
        self.supervised, self.factorized = supervised, True
        self.alignment_critic = build_critic(alignment_critic_type, head_dim, head_dim, critic_hidden_dim,
                                             critic_num_hidden_layers, critic_embed_dim, temperature, critic_chunk_size)
        if supervised:
            self.label_critics = nn.ModuleList(
                build_critic(critic_type, head_dim, num_labels, critic_hidden_dim, critic_num_hidden_layers,
                             critic_embed_dim, temperature, critic_chunk_size) for _ in range(2))
        else:
            self.view_critic = build_critic("cosine", head_dim, head_dim, temperature=temperature)

        def ridge(seed, ridge_value, bandwidth):
            return RandomFeatureRidge(head_dim, head_dim, fit.num_features, ridge_value, bandwidth, seed=seed)

        self.shared_projections = nn.ModuleList(ridge(m, fit.shared_ridge, fit.shared_bandwidth) for m in range(2))
        self.unique_erasers = nn.ModuleList(
            nn.ModuleList(ridge(10 * (m + 1) + p, fit.unique_ridge, fit.unique_bandwidth) for p in range(fit.unique_passes))
            for m in range(2)
        )

    # ----------------------------------------------------------------- inference
    @property
    def factorization_fitted(self) -> bool:
        return bool(self.shared_projections[0].fitted)

    def _representation_of(self, modality: int, heads: dict[str, torch.Tensor]) -> Representation:
        # Branch-free on the `fitted` buffer (a Python `if` on it would sync with the device on
        # every forward): an unfitted eraser predicts zeros, an unfitted projection is bypassed.
        unit = F.normalize(heads[SHARED], dim=-1)
        projection = self.shared_projections[modality]
        shared = torch.where(projection.fitted, projection(unit), unit)
        unique = heads[UNIQUE]
        for eraser in self.unique_erasers[modality]:
            unique = unique - eraser(shared)
        return Representation(alignment=heads[SHARED], shared=shared, unique=unique)

    def represent(self, features: torch.Tensor, modality: int) -> Representation:
        check_features(f"features_{modality + 1}", features, self.input_dims[modality], check_finite=False)
        return self._representation_of(modality, self.heads[modality](features))

    # ---------------------------------------------------------------- training
    def _loss(self, features, labels, augmented, compute_critic_loss):
        heads = [self.heads[m](features[m]) for m in range(2)]
        representations = tuple(self._representation_of(m, h) for m, h in enumerate(heads))
        local = [h[r] for h in heads for r in self.roles] + [labels]
        if not self.supervised:
            local += [self.heads[m](augmented[m], (UNIQUE,))[UNIQUE] for m in range(2)]
        gathered = iter(gather_features(local))
        heads = [{r: next(gathered) for r in self.roles} for _ in range(2)]
        labels = next(gathered)
        units = [F.normalize(h[SHARED], dim=-1) for h in heads]
        terms = {
            "shared_nce": symmetric_infonce(self.alignment_critic, heads[0][SHARED], heads[1][SHARED]),
            "shared_alignment": (units[0] - units[1]).square().sum(-1).mean(),
        }
        for m in range(2):
            if self.supervised:
                one_hot = F.one_hot(labels, self.num_labels).to(heads[m][UNIQUE].dtype)
                scores = self.label_critics[m](heads[m][UNIQUE], one_hot)
                terms[f"unique_label_nce_{m + 1}"] = infonce_lower_bound(scores)
            else:
                terms[f"unique_label_nce_{m + 1}"] = symmetric_infonce(self.view_critic, heads[m][UNIQUE], next(gathered))
        loss = sum(FACTORCL_TERMS[name] * self.term_weights[name] * value for name, value in terms.items())
        return ObjectiveOutput(loss, {name: value.detach() for name, value in terms.items()}, representations)

    # ------------------------------------------------------------- closed form
    @torch.no_grad()
    def fit_factorization(self, features_1: torch.Tensor, features_2: torch.Tensor) -> dict[str, float]:
        """Fit Z_S and Z_U's closed-form layers on the backbone features of paired calibration
        rows (the training split, unaugmented), in float64 on the CPU so that every process
        fits the same layers. Returns how much of each unique head the erasers removed
        (``unique_erased_fraction_1/2``: the share of its variance)."""
        for m, features in enumerate((features_1, features_2)):
            check_features(f"features_{m + 1}", features, self.input_dims[m], batch_size=len(features_1))
        if len(features_1) < 2:
            raise ValueError(f"fitting the factorization needs at least 2 paired rows, got {len(features_1)}")
        device = self.shared_projections[0].weight.device
        self.cpu()
        try:
            heads = [self.heads[m](f.detach().float().cpu()) for m, f in enumerate((features_1, features_2))]
            units = [F.normalize(h[SHARED], dim=-1).double() for h in heads]
            uniques = [h[UNIQUE].double() for h in heads]
            report = {}
            for m in range(2):
                other, fit = units[1 - m], self.fit_settings

                def from_other(targets, ridge_value, bandwidth, seed):
                    regression = RandomFeatureRidge(self.head_dim, targets.shape[1], fit.num_features, ridge_value,
                                                    bandwidth, seed=seed).double()
                    return regression.fit(other, targets)(other)

                told = from_other(units[m], fit.shared_ridge, fit.shared_bandwidth, 100 + m)
                shared = self.shared_projections[m].fit(units[m], told)(units[m])
                residual = uniques[m]
                for p, eraser in enumerate(self.unique_erasers[m]):
                    explained = from_other(residual, fit.unique_target_ridge, fit.unique_bandwidth, 200 + 10 * m + p)
                    residual = residual - eraser.fit(shared, explained)(shared)
                centred = uniques[m] - uniques[m].mean(0)
                kept = residual - residual.mean(0)
                report[f"unique_erased_fraction_{m + 1}"] = float(1 - kept.square().sum() / centred.square().sum())
        finally:
            self.to(device)
        return report


class SimCLRObjective(ContrastiveObjective):
    """Cross-modal InfoNCE with a cosine/temperature critic: the CLIP loss."""

    def _loss(self, features, labels, augmented, compute_critic_loss):
        reps = tuple(self.represent(features[m], m) for m in range(2))
        z1, z2 = gather_features([r.alignment for r in reps])
        nce = symmetric_infonce(self.alignment_critic, z1, z2)
        return ObjectiveOutput(-nce, {"cross_nce": nce.detach()}, reps)


class SigLIPObjective(ContrastiveObjective):
    """SigLIP's pairwise sigmoid loss (Zhai et al. 2023): every image-text pair is a binary
    match / non-match, scored ``cos * exp(t) + b`` with a learned scale and bias (initialised
    at ``t = log 10``, ``b = -10`` as in the paper); ``-sum log sigmoid(±logit) / batch``."""

    # Read by `FactorCLModel._init_weights` too: a load on the meta device skips `__init__`'s values.
    initial_values = {"logit_scale": math.log(10.0), "logit_bias": -10.0}

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        for name, value in self.initial_values.items():
            setattr(self, name, nn.Parameter(torch.tensor(value)))

    def _loss(self, features, labels, augmented, compute_critic_loss):
        reps = tuple(self.represent(features[m], m) for m in range(2))
        z1, z2 = (F.normalize(z, dim=-1) for z in gather_features([r.alignment for r in reps]))
        logits = z1 @ z2.T * self.logit_scale.exp() + self.logit_bias
        signs = 2 * torch.eye(len(z1), device=logits.device, dtype=logits.dtype) - 1
        loss = -F.logsigmoid(signs * logits).sum() / len(z1)
        return ObjectiveOutput(loss, {"sigmoid_loss": loss.detach()}, reps)


class CrossSelfObjective(ContrastiveObjective):
    """Cross-modal InfoNCE plus, in each modality, InfoNCE between a sample and its
    augmented view (SimCLR within the modality)."""

    requires_augmented = True

    def _loss(self, features, labels, augmented, compute_critic_loss):
        reps = tuple(self.represent(features[m], m) for m in range(2))
        views = [self.represent(augmented[m], m).alignment for m in range(2)]
        z1, z2, v1, v2 = gather_features([reps[0].alignment, reps[1].alignment, *views])
        terms = {
            "cross_nce": symmetric_infonce(self.alignment_critic, z1, z2),
            "self_nce_1": symmetric_infonce(self.alignment_critic, z1, v1),
            "self_nce_2": symmetric_infonce(self.alignment_critic, z2, v2),
        }
        loss = -(terms["cross_nce"] + terms["self_nce_1"] + terms["self_nce_2"])
        return ObjectiveOutput(loss, {k: v.detach() for k, v in terms.items()}, reps)


class SupConObjective(ContrastiveObjective):
    """Supervised contrastive loss (Khosla et al. 2020) over both modalities' embeddings:
    every sample with the same label, in either modality, is a positive."""

    requires_labels = True

    def _loss(self, features, labels, augmented, compute_critic_loss):
        reps = tuple(self.represent(features[m], m) for m in range(2))
        z1, z2, labels = gather_features([reps[0].alignment, reps[1].alignment, labels])
        loss = supervised_contrastive_loss(torch.cat([z1, z2]), labels.repeat(2), self.temperature)
        return ObjectiveOutput(loss, {"supcon": loss.detach()}, reps)


def supervised_contrastive_loss(embeddings: torch.Tensor, labels: torch.Tensor, temperature: float) -> torch.Tensor:
    """SupCon's L_out: mean over anchors of −mean_{p ∈ P(i)} log softmax_{a ≠ i}(z_i·z_a/τ)[p]."""
    z = F.normalize(embeddings, dim=-1)
    logits = z @ z.T / temperature
    self_mask = torch.eye(len(z), dtype=torch.bool, device=z.device)
    logits = logits.masked_fill(self_mask, float("-inf"))
    log_prob = logits - logits.logsumexp(dim=1, keepdim=True)
    positives = (labels[:, None] == labels[None, :]) & ~self_mask
    counts = positives.sum(1)
    has_positive = counts > 0
    per_anchor = -log_prob.masked_fill(~positives, 0.0).sum(1)[has_positive] / counts[has_positive]
    return per_anchor.mean()


# The baselines by registry name; every other objective of the registry is FactorCLObjective
# (FactorCL, or OurCL when the registry says it does not factorize).
_BASELINES = {"simclr": SimCLRObjective, "cross_self": CrossSelfObjective, "supcon": SupConObjective,
              "siglip": SigLIPObjective}
# Options every objective takes; the critic options only concern FactorCL / OurCL.
_COMMON_OPTIONS = ("num_labels", "head_dim", "head_hidden_dim", "temperature")
# Options of the per-term layout's CLUB game, which the closed-form layout does not have.
_PER_TERM_OPTIONS = ("conditioning", "club_gradient", "normalize_club_heads")


def build_objective(name: str, input_dims: tuple[int, int], **options) -> ContrastiveObjective:
    """Build an objective by name (one of ``OBJECTIVES``, declared in
    :data:`~factorcl_hf.configuration_factorcl.OBJECTIVE_REGISTRY`). ``options`` are the keyword
    arguments of :class:`FactorCLObjective`; baselines use the common ones (head sizes,
    ``num_labels``, ``temperature``) and ignore the critic options."""
    spec = objective_spec(name)
    if name in _BASELINES:
        check_term_weights(options.get("term_weights"), name)
        return _BASELINES[name](input_dims, **{k: v for k, v in options.items() if k in _COMMON_OPTIONS})
    preset = estimator_preset(options.get("estimators"), name)
    if preset.layout == "closed_form":
        if not spec.factorized:
            raise ValueError(f"`estimators` {preset.name!r} separates shared and unique heads; objective {name!r} "
                             "has one representation (use `paper` or `tracked`)")
        closed_form_options = {k: v for k, v in options.items() if k not in _PER_TERM_OPTIONS}
        return ClosedFormFactorCLObjective(input_dims, supervised=spec.supervised,
                                           **{**closed_form_options, "estimators": preset.name})
    return FactorCLObjective(input_dims, supervised=spec.supervised, factorized=spec.factorized, **options)


def train_club_critics(
    objective: ContrastiveObjective,
    critic_inputs: dict[str, tuple[torch.Tensor, torch.Tensor]],
    optimizer: torch.optim.Optimizer,
    steps: int,
    loss_scale: float | None = None,
) -> list[float]:
    """Run ``steps`` optimizer steps of the CLUB critics on the detached features of one
    batch (no backbone re-run); returns the critic losses.

    Gradients come from ``torch.autograd.grad`` rather than ``backward()``: it leaves the
    autograd hooks of a DDP-wrapped model untouched (they expect one backward per forward).
    No gradient sync is needed: the critics' inputs are gathered from every process, so
    every process computes the same update.

    ``loss_scale`` (fp16 loss scaling): each loss is multiplied by it before the gradients are
    taken, so that small ones survive half precision, and the gradients divided by it before
    the step; a step whose gradients are not finite is then skipped, as a ``GradScaler`` skips
    one. ``optimizer`` must step on the gradients as given (not accelerate's wrapper of a
    scaled optimizer, which would unscale them again).
    """
    params = objective.club_critic_parameters()
    losses = []
    for _ in range(steps):
        loss = objective.critic_loss(critic_inputs)
        if loss is None:
            break
        losses.append(loss.item())
        if loss_scale is None:
            grads = torch.autograd.grad(loss, params)
        else:
            grads = [grad / loss_scale for grad in torch.autograd.grad(loss * loss_scale, params)]
            if not all(bool(torch.isfinite(grad).all()) for grad in grads):
                continue
        for param, grad in zip(params, grads):
            param.grad = grad
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return losses
