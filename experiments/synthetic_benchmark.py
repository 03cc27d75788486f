"""Train one method on one synthetic data set and evaluate it: the paper's controlled benchmark.

One run = :func:`build_model` → :func:`train_model` (train split only) → :func:`evaluate_model`
(frozen embeddings; probes fitted on train embeddings, scored on test embeddings).
:func:`fit_method` does the first two, :func:`run_method` all three;
``experiments/synthetic_sweep.py`` sweeps them over methods, unique shares and seeds.

Leak-freedom is structural: :func:`train_model` receives only the train split, so every batch,
augmentation and CLUB-critic update comes from training data (the official notebook drew the
CLUB critics' batches from the whole data set, test split included). The test split is only
embedded, by frozen encoders, after training.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field

import torch

from factorcl_hf.augmentations import FeatureAugmentation
from factorcl_hf.configuration_factorcl import estimator_preset
from factorcl_hf.evaluation.probe import latent_decoding_r2, linear_probe_accuracy
from factorcl_hf.objectives import OBJECTIVES
from factorcl_hf.research.club_check import club_critic_report, critic_inputs
from factorcl_hf.research.encoders import VectorFactorCL
from factorcl_hf.research.synthetic import LATENT_NAMES, SyntheticSplit, SyntheticSplits
from factorcl_hf.training_step import parameter_groups, training_step

__all__ = [
    "METHODS",
    "DEFAULT_TEMPERATURE",
    "DEFAULT_TEMPERATURES",
    "BenchmarkSettings",
    "build_model",
    "TrainingHistory",
    "train_model",
    "evaluate_model",
    "club_critic_check",
    "FittedMethod",
    "fit_method",
    "run_method",
]

METHODS = OBJECTIVES

# Temperatures of the cosine critics, as in the reference code: 0.5 (its SimCLR) everywhere a
# cosine critic scores cross-modal pairs — SimCLR, Cross+Self, and FactorCL/OurCL's shared term
# when `alignment_critic_type="cosine"` — and SupConLoss's default 0.07 for SupCon. Learned
# (concat) critics ignore it.
DEFAULT_TEMPERATURE = 0.5
DEFAULT_TEMPERATURES = {"supcon": 0.07}

# Representations probed for latents; `embed` keys and the paper's names.
PROBED_REPRESENTATIONS = {"shared_1": "Z_S1", "unique_1": "Z_U1", "shared_2": "Z_S2", "unique_2": "Z_U2"}


@dataclass
class BenchmarkSettings:
    """Model, training and probe settings of one run (defaults: the reference settings of
    the official synthetic experiment, docs/synthetic_benchmark.md — encoders 512/128, critics 512,
    lr 1e-4, batch 256, 10 epochs).

    Args:
        epochs: passes over the train split.
        batch_size: samples per step (incomplete last batches are dropped: contrastive
            bounds need at least two samples and a steady number of negatives).
        lr: Adam learning rate of encoders, heads and InfoNCE critics.
        estimators: FactorCL's estimator preset (an ``ESTIMATOR_PRESETS`` name;
            ``None``: each objective's default); it sets the three CLUB-game settings below
            when they are ``None`` (a run of several methods takes the FactorCL preset's).
        club_critic_lr: Adam learning rate of the CLUB critics (their own optimizer).
        club_critic_steps: CLUB-critic updates per batch (the first runs with the main step,
            the others on the same batch's detached features).
        club_head_lr_scale: learning rate of the heads only the CLUB terms train, over ``lr``.
        objective_options: further :class:`FactorCLObjective` options (e.g. ``conditioning``).
        encoder_hidden_dim, embed_dim, encoder_layers: the MLP encoders (``embed_dim`` is the
            backbone readout size).
        head_dim, head_hidden_dim: the objective's projection heads.
        critic_type: critic of every learned MI bound of FactorCL/OurCL.
        alignment_critic_type: critic of FactorCL's shared InfoNCE term (the paper: concat).
        critic_hidden_dim: hidden width of the learned critics.
        temperature: cosine-critic temperature; ``None`` takes the method's entry of
            :data:`DEFAULT_TEMPERATURES` (:data:`DEFAULT_TEMPERATURE` otherwise).
        noise_std, drop_p: the SSL feature augmentation (Gaussian noise, random dropping).
        probe_max_iter: logistic-regression iterations of the linear probe.
    """

    epochs: int = 10
    batch_size: int = 256
    lr: float = 1e-4
    estimators: str | None = None
    club_critic_lr: float | None = None
    club_critic_steps: int | None = None
    club_head_lr_scale: float | None = None
    encoder_hidden_dim: int = 512
    embed_dim: int = 128
    encoder_layers: int = 2
    head_dim: int = 128
    head_hidden_dim: int = 512
    critic_type: str = "concat"
    alignment_critic_type: str = "cosine"
    critic_hidden_dim: int = 512
    temperature: float | None = None
    noise_std: float = 0.1
    drop_p: float = 0.15
    probe_max_iter: int = 200
    objective_options: dict = field(default_factory=dict)

    def __post_init__(self):
        for name in ("epochs", "batch_size", "encoder_hidden_dim", "embed_dim",
                     "head_dim", "head_hidden_dim", "critic_hidden_dim", "probe_max_iter"):
            value = getattr(self, name)
            minimum = 2 if name == "batch_size" else 1
            if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
                raise ValueError(f"`{name}` must be an integer >= {minimum}, got {value!r}")
        if isinstance(self.encoder_layers, bool) or not isinstance(self.encoder_layers, int) or self.encoder_layers < 0:
            raise ValueError(f"`encoder_layers` must be an integer >= 0, got {self.encoder_layers!r}")
        if self.club_critic_steps is not None and self.club_critic_steps < 1:
            raise ValueError(f"`club_critic_steps` must be None or an integer >= 1, got {self.club_critic_steps!r}")
        for name in ("lr", "club_critic_lr", "club_head_lr_scale"):
            if getattr(self, name) is not None and not getattr(self, name) > 0:
                raise ValueError(f"`{name}` must be > 0, got {getattr(self, name)!r}")
        if self.temperature is not None and not self.temperature > 0:
            raise ValueError(f"`temperature` must be None or > 0, got {self.temperature!r}")

    def club_game(self, model: VectorFactorCL) -> dict:
        """The CLUB game's settings for ``model``: those given, else its estimator preset's."""
        preset = estimator_preset(getattr(model.objective, "estimators", "paper"))
        return preset.club_game(self.lr, self.club_critic_lr, self.club_critic_steps, self.club_head_lr_scale)

    def temperature_for(self, method: str) -> float:
        return self.temperature if self.temperature is not None else DEFAULT_TEMPERATURES.get(method, DEFAULT_TEMPERATURE)

    def to_dict(self) -> dict:
        return asdict(self)


def _check_method(method: str):
    if method not in METHODS:
        raise ValueError(f"`method` must be one of {METHODS}, got {method!r}")


def build_model(
    method: str, input_dims: tuple[int, int], num_labels: int, settings: BenchmarkSettings, **overrides
) -> VectorFactorCL:
    """MLP encoders plus the objective ``method`` (parameters drawn from torch's global RNG);
    ``overrides`` replace or add objective options (e.g. ``critic_num_hidden_layers``)."""
    _check_method(method)
    options = dict(
        hidden_dim=settings.encoder_hidden_dim,
        embed_dim=settings.embed_dim,
        num_layers=settings.encoder_layers,
        num_labels=num_labels,
        head_dim=settings.head_dim,
        head_hidden_dim=settings.head_hidden_dim,
        critic_type=settings.critic_type,
        critic_hidden_dim=settings.critic_hidden_dim,
        alignment_critic_type=settings.alignment_critic_type,
        temperature=settings.temperature_for(method),
    )
    options.update(estimators=settings.estimators, **settings.objective_options)  # baselines ignore them
    return VectorFactorCL(input_dims, method, **{**options, **overrides})


def _batches(num_samples: int, batch_size: int, generator: torch.Generator) -> Iterator[torch.Tensor]:
    """Shuffled index batches of exactly ``batch_size`` rows (the remainder is dropped)."""
    order = torch.randperm(num_samples, generator=generator)
    for start in range(0, num_samples - batch_size + 1, batch_size):
        yield order[start : start + batch_size]


@dataclass
class TrainingHistory:
    """Per-epoch means of the loss and its named terms, and the wall time of training."""

    epochs: list[dict[str, float]] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def final(self) -> dict[str, float]:
        return self.epochs[-1] if self.epochs else {}


def train_model(
    model: VectorFactorCL,
    train: SyntheticSplit,
    settings: BenchmarkSettings,
    seed: int = 0,
    on_step: Callable[[dict[str, float]], None] | None = None,
    on_epoch_end: Callable[[int, VectorFactorCL], None] | None = None,
) -> TrainingHistory:
    """Train ``model`` on the ``train`` split only.

    Per batch one :func:`~factorcl_hf.training_step.training_step` (the encoders run once, on
    ``[x; augmented x]`` for SSL objectives; one backward of ``loss + critic_loss``; both
    optimizers; ``club_critic_steps - 1`` extra CLUB-critic steps), with Adam at
    ``settings.lr`` / ``settings.club_critic_lr``. ``seed`` fixes batch order and augmentations.
    ``on_step`` receives each step's loss terms (for progress bars); ``on_epoch_end`` the
    epoch's index and the model after it (for diagnostics such as :func:`club_critic_check`;
    it must leave the model's parameters alone).
    """
    if not isinstance(train, SyntheticSplit):
        raise ValueError(f"`train` must be a SyntheticSplit, got {type(train).__name__}")
    if len(train) < settings.batch_size:
        raise ValueError(
            f"`settings.batch_size` ({settings.batch_size}) exceeds the {len(train)} training samples"
        )
    generator = torch.Generator().manual_seed(seed)
    augment = FeatureAugmentation(noise_std=settings.noise_std, drop_p=settings.drop_p) if model.requires_augmented else None
    game = settings.club_game(model)
    main_optimizer = torch.optim.Adam(parameter_groups(model, settings.lr, game["club_head_lr_scale"]), lr=settings.lr)
    club_parameters = model.club_critic_parameters()
    critic_optimizer = torch.optim.Adam(club_parameters, lr=game["critic_learning_rate"]) if club_parameters else None

    history = TrainingHistory()
    start, callback_seconds = time.perf_counter(), 0.0
    model.train()
    for _ in range(settings.epochs):
        sums: dict[str, float] = {}
        num_steps = 0
        for indices in _batches(len(train), settings.batch_size, generator):
            x1, x2 = train.x1[indices], train.x2[indices]
            inputs = {}
            if model.requires_labels:
                inputs["labels"] = train.labels[indices]
            if augment is not None:
                inputs["augmented_1"], inputs["augmented_2"] = augment(x1, generator), augment(x2, generator)
            out = training_step(
                model, {"x1": x1, "x2": x2, **inputs}, main_optimizer, critic_optimizer,
                club_critic_steps=game["club_critic_steps"],
            )

            terms = {"loss": out.loss.item(), **{name: value.item() for name, value in out.loss_terms.items()}}
            for name, value in terms.items():
                sums[name] = sums.get(name, 0.0) + value
            num_steps += 1
            if on_step is not None:
                on_step(terms)
        history.epochs.append({name: value_sum / num_steps for name, value_sum in sums.items()})
        if on_epoch_end is not None:
            callback_start = time.perf_counter()
            on_epoch_end(len(history.epochs) - 1, model)
            model.train()
            callback_seconds += time.perf_counter() - callback_start
    model.eval()
    if model.has_closed_form_factorization:
        model.fit_factorization(train.x1, train.x2)
    history.seconds = time.perf_counter() - start - callback_seconds  # training (and the closed-form fit) only
    return history


def evaluate_model(
    model: VectorFactorCL, train: SyntheticSplit, test: SyntheticSplit, probe_max_iter: int = 200
) -> dict:
    """Linear-probe accuracy and latent decoding of a trained model's frozen embeddings.

    Returns ``{"probe_acc", "backbone_probe_acc", "probing"}``: test accuracy of logistic
    regression on ``[Z_S1; Z_U1; Z_S2; Z_U2]`` and on the backbone readout ``[e1; e2]``, and
    ``probing[representation][latent]`` = test R² of a ridge regression from that
    representation (``"Z_S1"``, ``"Z_U1"``, ``"Z_S2"``, ``"Z_U2"``; the ``Z_U`` only for
    factorized objectives) to that latent block (``"shared"``, ``"unique1"``, ``"unique2"``).
    Probes are fitted on the train split's embeddings and scored on the test split's.
    """
    train_embeddings = model.embed(train.x1, train.x2)
    test_embeddings = model.embed(test.x1, test.x2)
    results = {
        f"{prefix}probe_acc": linear_probe_accuracy(
            train_embeddings[key], train.labels, test_embeddings[key], test.labels, max_iter=probe_max_iter
        )
        for prefix, key in (("", "factorized"), ("backbone_", "backbone"))
    }
    results["probing"] = {
        name: {
            latent: latent_decoding_r2(
                train_embeddings[key], train.latents[latent], test_embeddings[key], test.latents[latent]
            )
            for latent in LATENT_NAMES
        }
        for key, name in PROBED_REPRESENTATIONS.items()
        if key in train_embeddings
    }
    return results


def _split_batches(model: VectorFactorCL, split: SyntheticSplit, settings: BenchmarkSettings, seed: int):
    """Model inputs for every row of ``split`` in batches of ``settings.batch_size``, with
    labels and augmented views as in training: the ``batches`` of
    :func:`~factorcl_hf.research.club_check.critic_inputs`."""
    generator = torch.Generator().manual_seed(seed)
    augment = FeatureAugmentation(noise_std=settings.noise_std, drop_p=settings.drop_p) if model.requires_augmented else None
    for start in range(0, len(split) - 1, settings.batch_size):
        rows = slice(start, start + settings.batch_size)
        inputs = {"x1": split.x1[rows], "x2": split.x2[rows], "compute_critic_loss": False}
        if model.requires_labels:
            inputs["labels"] = split.labels[rows]
        if augment is not None:
            inputs["augmented_1"], inputs["augmented_2"] = augment(inputs["x1"], generator), augment(inputs["x2"], generator)
        yield inputs


def club_critic_check(
    model: VectorFactorCL, train: SyntheticSplit, test: SyntheticSplit, settings: BenchmarkSettings,
    refit_steps: int = 600, refit_lr: float = 1e-3, seed: int = 0,
) -> dict[str, dict[str, float]]:
    """:func:`~factorcl_hf.research.club_check.club_critic_report` of a trained model:
    for each CLUB term, the InfoNCE (nats, test split, batches of ``settings.batch_size``) of
    its own critic (``"trained"``) against a fresh critic fitted on the frozen train-split
    features (``"refit"``). Returns ``{}`` for objectives without CLUB terms. For the
    ``"shared_cond"`` term both numbers include the label (or augmented view) concatenated to
    both inputs, which no encoder can remove.
    """
    estimators = model.objective.club_estimators
    if not estimators:
        return {}
    train_inputs = critic_inputs(model, _split_batches(model, train, settings, seed))
    test_inputs = critic_inputs(model, _split_batches(model, test, settings, seed + 1))
    return club_critic_report(estimators, train_inputs, test_inputs, settings.batch_size, refit_steps, refit_lr, seed)


@dataclass
class FittedMethod:
    """A trained model, its training history, and the split it was trained on."""

    method: str
    model: VectorFactorCL
    history: TrainingHistory
    trained_on: SyntheticSplit
    seed: int
    unique_share: float

    def reusable_for(self, splits: SyntheticSplits) -> bool:
        """Whether training on ``splits`` would give this very model: it was trained on
        ``splits.train`` itself, or its objective ignores labels and the train inputs are
        identical (a sweep over ``unique_share`` changes only the labels, so label-free
        methods train once per seed)."""
        train = splits.train
        if train is self.trained_on:
            return True
        return (
            not self.model.requires_labels
            and torch.equal(train.x1, self.trained_on.x1)
            and torch.equal(train.x2, self.trained_on.x2)
        )


def fit_method(
    splits: SyntheticSplits,
    method: str,
    settings: BenchmarkSettings | None = None,
    seed: int = 0,
    on_step: Callable[[dict[str, float]], None] | None = None,
    on_epoch_end: Callable[[int, VectorFactorCL], None] | None = None,
) -> FittedMethod:
    """Build ``method`` (initialized from ``seed``) and train it on ``splits.train`` only
    (``on_step``, ``on_epoch_end``: see :func:`train_model`)."""
    _check_method(method)
    if not isinstance(splits, SyntheticSplits):
        raise ValueError(f"`splits` must be SyntheticSplits (from make_synthetic), got {type(splits).__name__}")
    settings = settings or BenchmarkSettings()
    torch.manual_seed(seed)
    train = splits.train
    model = build_model(method, (train.x1.shape[1], train.x2.shape[1]), splits.config.num_labels, settings)
    history = train_model(model, train, settings, seed=seed, on_step=on_step, on_epoch_end=on_epoch_end)
    return FittedMethod(method, model, history, train, seed, float(splits.config.unique_share))


def run_method(
    splits: SyntheticSplits, method: str, settings: BenchmarkSettings | None = None, seed: int = 0,
    on_step: Callable[[dict[str, float]], None] | None = None, fitted: FittedMethod | None = None,
) -> dict:
    """Train ``method`` on ``splits.train`` (or take ``fitted``, if it is reusable for
    ``splits``) and evaluate it on ``splits``.

    Returns a JSON-ready record: ``method``, ``unique_share``, ``seed``, ``probe_acc``,
    ``backbone_probe_acc``, ``train_seconds``, ``eval_seconds``, ``trained_at_unique_share``
    (differs from ``unique_share`` when a label-free model was reused), ``temperature`` (of
    the cosine critics), ``final_loss_terms``
    (last epoch's means) and ``probing`` (see :func:`evaluate_model`).
    """
    _check_method(method)
    settings = settings or BenchmarkSettings()
    if fitted is not None:
        if fitted.method != method or fitted.seed != seed:
            raise ValueError(
                f"`fitted` holds {fitted.method!r} trained with seed {fitted.seed}, not {method!r} with seed {seed}"
            )
        if not fitted.reusable_for(splits):
            raise ValueError("`fitted` cannot be reused: its method uses labels or it was trained on other inputs")
    else:
        fitted = fit_method(splits, method, settings, seed, on_step)
    start = time.perf_counter()
    evaluation = evaluate_model(fitted.model, splits.train, splits.test, settings.probe_max_iter)
    return {
        "method": method,
        "unique_share": float(splits.config.unique_share),
        "seed": seed,
        "probe_acc": evaluation["probe_acc"],
        "backbone_probe_acc": evaluation["backbone_probe_acc"],
        "train_seconds": fitted.history.seconds,
        "eval_seconds": time.perf_counter() - start,
        "trained_at_unique_share": fitted.unique_share,
        "temperature": settings.temperature_for(method),
        "final_loss_terms": fitted.history.final,
        "probing": evaluation["probing"],
    }
