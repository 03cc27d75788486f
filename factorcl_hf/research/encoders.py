"""MLP encoders for vector modalities, paired with the contrastive objectives.

:class:`VectorFactorCL` is the vector-data counterpart of the CLIP-backed model: two
:class:`MLPEncoder` backbones produce the features ``e1 = E1(x1)``, ``e2 = E2(x2)`` and the
*same* objective classes as the CLIP model (:func:`~factorcl_hf.objectives.build_objective`)
turn them into a loss and representations. No loss is implemented here.
"""

from __future__ import annotations

import torch
from torch import nn

from ..objectives import ContrastiveObjective, ObjectiveOutput, Representation, build_objective

__all__ = ["MLPEncoder", "VectorFactorCL"]


def _check_positive_int(name: str, value, minimum: int = 1):
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"`{name}` must be an integer >= {minimum}, got {value!r}")


class MLPEncoder(nn.Sequential):
    """``in_dim → [Linear(hidden_dim) → ReLU] × num_layers → Linear(embed_dim)``.

    The default ``num_layers=2`` matches the encoder of the official synthetic experiment
    (its ``mlp(..., layers=1)`` builds two hidden layers).
    """

    def __init__(self, in_dim: int, hidden_dim: int = 512, embed_dim: int = 128, num_layers: int = 2):
        _check_positive_int("in_dim", in_dim)
        _check_positive_int("hidden_dim", hidden_dim)
        _check_positive_int("embed_dim", embed_dim)
        _check_positive_int("num_layers", num_layers, minimum=0)
        layers: list[nn.Module] = []
        width = in_dim
        for _ in range(num_layers):
            layers += [nn.Linear(width, hidden_dim), nn.ReLU()]
            width = hidden_dim
        layers.append(nn.Linear(width, embed_dim))
        super().__init__(*layers)
        self.in_dim, self.embed_dim = in_dim, embed_dim

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        if not isinstance(inputs, torch.Tensor) or inputs.dim() != 2 or inputs.shape[1] != self.in_dim:
            shape = tuple(inputs.shape) if isinstance(inputs, torch.Tensor) else type(inputs).__name__
            raise ValueError(f"`inputs` must be a tensor of shape [batch, {self.in_dim}], got {shape}")
        return super().forward(inputs)


class VectorFactorCL(nn.Module):
    """Two MLP encoders and a contrastive objective (FactorCL or a baseline) over their features.

    Args:
        input_dims: the two modalities' input sizes.
        objective: a name from :data:`~factorcl_hf.objectives.OBJECTIVES` (built with
            ``objective_kwargs``) or an already built objective whose ``input_dims`` equal
            ``(embed_dim, embed_dim)``.
        hidden_dim, embed_dim, num_layers: the encoders' sizes (see :class:`MLPEncoder`).
        **objective_kwargs: passed to :func:`~factorcl_hf.objectives.build_objective`
            (``num_labels``, ``head_dim``, ``critic_type``, ``temperature``, ...).
    """

    def __init__(
        self,
        input_dims: tuple[int, int],
        objective: str | ContrastiveObjective,
        hidden_dim: int = 512,
        embed_dim: int = 128,
        num_layers: int = 2,
        **objective_kwargs,
    ):
        super().__init__()
        if not (isinstance(input_dims, (tuple, list)) and len(input_dims) == 2):
            raise ValueError(f"`input_dims` must be two input sizes (x1's, x2's), got {input_dims!r}")
        self.encoders = nn.ModuleList(MLPEncoder(dim, hidden_dim, embed_dim, num_layers) for dim in input_dims)
        if isinstance(objective, str):
            objective = build_objective(objective, (embed_dim, embed_dim), **objective_kwargs)
        elif not isinstance(objective, ContrastiveObjective):
            raise ValueError(f"`objective` must be an objective name or a ContrastiveObjective, got {type(objective).__name__}")
        elif objective_kwargs:
            raise ValueError(f"`objective_kwargs` only apply to an objective given by name, got {sorted(objective_kwargs)}")
        if tuple(objective.input_dims) != (embed_dim, embed_dim):
            raise ValueError(
                f"`objective` expects features of sizes {objective.input_dims}, but the encoders output {embed_dim}"
            )
        self.objective = objective

    @property
    def requires_labels(self) -> bool:
        return self.objective.requires_labels

    @property
    def requires_augmented(self) -> bool:
        return self.objective.requires_augmented

    def encode(self, inputs: torch.Tensor, modality: int) -> torch.Tensor:
        """Backbone features of modality ``modality`` (0 or 1)."""
        return self.encoders[modality](inputs)

    def forward(
        self, x1: torch.Tensor, x2: torch.Tensor, labels: torch.Tensor | None = None,
        augmented_1: torch.Tensor | None = None, augmented_2: torch.Tensor | None = None,
        compute_critic_loss: bool = True,
    ) -> ObjectiveOutput:
        """Encode both modalities (and their augmented views, if given) and apply the objective."""
        features, views = [], []
        for modality, (inputs, augmented) in enumerate(((x1, augmented_1), (x2, augmented_2))):
            if augmented is None:
                features.append(self.encode(inputs, modality))
                views.append(None)
                continue
            if augmented.shape != inputs.shape:
                raise ValueError(
                    f"`augmented_{modality + 1}` must have the shape of `x{modality + 1}` {tuple(inputs.shape)}, "
                    f"got {tuple(augmented.shape)}"
                )
            # One encoder call for both views.
            both = self.encode(torch.cat([inputs, augmented]), modality)
            features.append(both[: len(inputs)])
            views.append(both[len(inputs) :])
        return self.objective(
            features[0], features[1], labels=labels, augmented_1=views[0], augmented_2=views[1],
            compute_critic_loss=compute_critic_loss,
        )

    def represent(self, inputs: torch.Tensor, modality: int) -> Representation:
        """The objective's embeddings (Z_S, Z_U, alignment) of one modality's inputs."""
        return self.objective.represent(self.encode(inputs, modality), modality)

    @torch.no_grad()
    def embed(self, x1: torch.Tensor, x2: torch.Tensor, batch_size: int = 1024) -> dict[str, torch.Tensor]:
        """Frozen embeddings for downstream probes, computed in eval mode without gradients.

        Returns ``{"factorized": [Z_S1; Z_U1; Z_S2; Z_U2], "backbone": [e1; e2],
        "shared_1", "unique_1", "shared_2", "unique_2"}`` (``unique_*`` only for factorized
        objectives).
        """
        _check_positive_int("batch_size", batch_size)
        if len(x1) != len(x2):
            raise ValueError(f"`x1` and `x2` must have the same number of rows, got {len(x1)} and {len(x2)}")
        was_training = self.training
        self.eval()
        parts: dict[str, list[torch.Tensor]] = {}
        try:
            for start in range(0, len(x1), batch_size):
                for key, value in self._embed_batch(x1[start : start + batch_size], x2[start : start + batch_size]).items():
                    parts.setdefault(key, []).append(value)
        finally:
            self.train(was_training)
        return {key: torch.cat(values) for key, values in parts.items()}

    def _embed_batch(self, x1: torch.Tensor, x2: torch.Tensor) -> dict[str, torch.Tensor]:
        out: dict[str, torch.Tensor] = {}
        factorized, backbone = [], []
        for modality, inputs in enumerate((x1, x2)):
            features = self.encode(inputs, modality)
            representation = self.objective.represent(features, modality)
            backbone.append(features)
            factorized.append(representation.factorized)
            out[f"shared_{modality + 1}"] = representation.shared
            if representation.unique is not None:
                out[f"unique_{modality + 1}"] = representation.unique
        out["factorized"] = torch.cat(factorized, dim=-1)
        out["backbone"] = torch.cat(backbone, dim=-1)
        return out

    @property
    def has_closed_form_factorization(self) -> bool:
        """The objective's Z_S and Z_U come from closed-form layers fitted after training."""
        return hasattr(self.objective, "fit_factorization")

    @torch.no_grad()
    def fit_factorization(self, x1: torch.Tensor, x2: torch.Tensor, batch_size: int = 4096) -> dict[str, float]:
        """Fit the closed-form factorization on paired training inputs (unaugmented)."""
        features = [torch.cat([self.encode(x[i : i + batch_size], m) for i in range(0, len(x), batch_size)])
                    for m, x in enumerate((x1, x2))]
        return self.objective.fit_factorization(*features)

    def main_parameters(self) -> list[nn.Parameter]:
        """Encoders, heads and the critics trained with the loss (the main optimizer's)."""
        return list(self.encoders.parameters()) + self.objective.main_parameters()

    def club_critic_parameters(self) -> list[nn.Parameter]:
        """The CLUB critics' parameters (their own optimizer)."""
        return self.objective.club_critic_parameters()
