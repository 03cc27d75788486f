"""One training step of FactorCL-SSL against plain CLIP training on the same backbone.

A step is what ``training/train.py`` does per batch (``training_step``): the model's forward
with the loss, one backward of ``loss + critic_loss``, gradient clipping, the AdamW step, the
CLUB critics' Adam step and the preset's extra critic steps. Variants (same CLIP weights,
batch, precision and thread count):

* ``factorcl_ssl``: FactorCL-SSL with its default estimators (``closed_form``), beside
  ``factorcl_ssl_tracked`` (the default before it, ``tracked_no_cond_nce``: five CLUB-critic
  steps per batch) and ``factorcl_ssl_paper`` (the paper's estimators). Its backbone runs on
  **2B** inputs (each pair and its augmented view, in one call per tower).
* ``simclr``: the CLIP loss (cross-modal InfoNCE, cosine critic); the backbone runs on B.
* ``cross_self``: CLIP loss plus InfoNCE between each sample and its augmented view: the
  same **2B** backbone work as FactorCL-SSL with a cheap objective, so ``factorcl_ssl /
  cross_self`` is what the FactorCL objective itself costs.

The breakdown splits each step into parts measured on their own on the same batch (interleaved
with each other): ``objective`` (heads + the six terms + the CLUB critics' loss, forward and
backward, on backbone features), within it ``heads`` and ``club`` (the CLUB critics' loss
forward/backward on the step's detached features), ``optim`` (clipping and both optimizer
steps) and ``backbone`` = step − objective − optim (both towers forward and backward, plus
the model's glue). ``critics`` = objective − heads − club.

Before timing, each variant's loss is checked against an independent computation on the
same backbone features: FactorCL-SSL against the tiled reference of ``objective_step.py``
(and its CLUB critics' loss), the CLIP variants against ``F.cross_entropy`` over scaled
cosine logits (their loss is the CLIP loss minus log B).

Configs: ``vit-b32`` (OpenAI CLIP ViT-B/32 architecture, random init, 224 px, 32 tokens; the
paper's sizes: heads 512 → 128, critics hidden 512, cosine alignment critic) and
``tiny`` (the embedded demo's CLIP and heads). A ViT-B/32 step is slow on a CPU, so the
default run uses B=8 for it; B=32 is the long run below (run times: benchmarks/README.md).

Run::

    python -m benchmarks.train_step --threads 1                        # tiny B=32 and vit-b32 B=8
    python -m benchmarks.train_step --threads 1 --configs vit-b32 --batch-size 32 --repeats 2
    python -m benchmarks.train_step --smoke
    python -m benchmarks.train_step --device cuda --autocast bfloat16 --configs vit-b32 --batch-size 32
"""

from __future__ import annotations

import argparse
import math
from contextlib import nullcontext

import torch
import torch.nn.functional as F

from benchmarks._timing import add_run_arguments, apply_threads, time_side_by_side, write_json
from benchmarks.objective_step import naive_club_critic_loss, naive_terms, relative_difference
from factorcl_hf.configuration_factorcl import estimator_preset
from factorcl_hf.objectives import SSL_CONDITIONED_ROLES, ClosedFormFactorCLObjective, FactorCLObjective
from factorcl_hf.training_step import training_step

# name: (objective, estimator preset). `factorcl_ssl` is the default (closed_form);
# `factorcl_ssl_tracked` the default before it (tracked_no_cond_nce: per-term heads, CLUB critics
# trained 5 steps per batch); `factorcl_ssl_paper` the paper's estimators (the naive reference's maths).
VARIANTS = {
    "factorcl_ssl": ("factorcl_ssl", "closed_form"),
    "factorcl_ssl_tracked": ("factorcl_ssl", "tracked_no_cond_nce"),
    "factorcl_ssl_paper": ("factorcl_ssl", "paper"),
    "simclr": ("simclr", None),
    "cross_self": ("cross_self", None),
}
CONFIGS = ("tiny", "vit-b32")
DEFAULT_BATCH = {"tiny": 32, "vit-b32": 8}
TEXT_LENGTH = {"tiny": 16, "vit-b32": 32}
MAX_RELATIVE_DIFF = 1e-5
MAX_GRAD_NORM = 1.0


# --------------------------------------------------------------------------- the case
def model_config(config: str, variant: str, smoke: bool = False):
    """The ``FactorCLConfig`` of ``config`` for ``variant`` (``smoke``: even smaller sizes)."""
    objective, estimators = VARIANTS[variant]
    from factorcl_hf import FactorCLConfig
    from factorcl_hf.offline import tiny_clip_config, vit_b32_clip_config

    if config == "vit-b32":
        # The paper's head and critic sizes (measured in benchmarks/RESULTS.md with these).
        return FactorCLConfig(
            clip_config=vit_b32_clip_config(), objective=objective, head_dim=128, head_hidden_dim=512,
            critic_hidden_dim=512, alignment_critic_type="cosine", logit_temperature=0.07, estimators=estimators,
        )
    if config != "tiny":
        raise ValueError(f"`config` must be one of {CONFIGS}, got {config!r}")
    # The embedded demo's recipe (training/configs/demo.yaml); smoke halves the widths.
    width = 32 if smoke else 64
    clip = tiny_clip_config(
        1000, bos_token_id=997, eos_token_id=998, pad_token_id=999,
        image_size=32, patch_size=8, hidden_size=width, projection_dim=width, num_layers=2,
    )
    hidden = 64 if smoke else 256
    return FactorCLConfig(
        clip_config=clip, objective=objective, head_dim=width, head_hidden_dim=hidden,
        critic_hidden_dim=hidden, alignment_critic_type="cosine", logit_temperature=0.1, estimators=estimators,
    )


def make_batch(config, batch_size: int, text_length: int, device: str, seed: int = 0) -> dict[str, torch.Tensor]:
    """Random pixels and token ids (each caption ends with the eos token CLIP pools at), with
    an augmented view of each: a shifted crop of the pixels, a token-deleted caption."""
    generator = torch.Generator().manual_seed(seed)
    vision, text = config.clip_config.vision_config, config.clip_config.text_config
    size = vision.image_size
    pixels = torch.randn(batch_size, vision.num_channels, size + 4, size + 4, generator=generator)
    ids = torch.randint(0, min(text.vocab_size, text.eos_token_id) - 1, (batch_size, text_length), generator=generator)
    ids[:, -1] = text.eos_token_id
    augmented_ids = torch.cat([ids[:, 1:-1], ids[:, :1], ids[:, -1:]], dim=1)  # same length: one tower call
    batch = {
        "pixel_values": pixels[:, :, :size, :size],
        "input_ids": ids,
        "attention_mask": torch.ones_like(ids),
        "augmented_pixel_values": pixels[:, :, 4:, 4:],
        "augmented_input_ids": augmented_ids,
        "augmented_attention_mask": torch.ones_like(ids),
    }
    return {k: v.contiguous().to(device) for k, v in batch.items()}


def build_models(config: str, batch_size: int, device: str, smoke: bool = False, seed: int = 0) -> tuple[dict, dict]:
    """One model per variant, all with the same CLIP weights, and the batch."""
    from factorcl_hf import FactorCLModel

    models = {}
    for variant in VARIANTS:
        torch.manual_seed(seed)
        models[variant] = FactorCLModel(model_config(config, variant, smoke)).to(device)
    clip_state = models["factorcl_ssl"].clip.state_dict()
    for model in models.values():
        model.clip.load_state_dict(clip_state)
        model.train()
    batch = make_batch(models["factorcl_ssl"].config, batch_size, TEXT_LENGTH[config], device, seed)
    return models, batch


def variant_inputs(model, batch: dict) -> dict:
    """The batch fields ``model``'s objective trains on (augmented views only when used)."""
    if model.config.uses_augmented_views:
        return batch
    return {k: v for k, v in batch.items() if not k.startswith("augmented_")}


# ------------------------------------------------------------------------- the checks
def backbone_features(model, batch: dict) -> dict[str, torch.Tensor]:
    """Backbone embeddings of the originals and the augmented views, through the public CLIP API."""
    n = batch["input_ids"].shape[0]
    image = model.clip.get_image_features(
        pixel_values=torch.cat([batch["pixel_values"], batch["augmented_pixel_values"]])
    ).pooler_output
    text = model.clip.get_text_features(
        input_ids=torch.cat([batch["input_ids"], batch["augmented_input_ids"]]),
        attention_mask=torch.cat([batch["attention_mask"], batch["augmented_attention_mask"]]),
    ).pooler_output
    return {"features_1": image[:n], "features_2": text[:n], "augmented_1": image[n:], "augmented_2": text[n:]}


def clip_loss(z1: torch.Tensor, z2: torch.Tensor, temperature: float) -> torch.Tensor:
    """The CLIP loss: cross-entropy of scaled cosine logits, averaged over both directions."""
    logits = F.normalize(z1, dim=-1) @ F.normalize(z2, dim=-1).T / temperature
    targets = torch.arange(len(z1), device=z1.device)
    return 0.5 * (F.cross_entropy(logits, targets) + F.cross_entropy(logits.T, targets))


@torch.no_grad()
def reference_losses(model, variant: str, features: dict[str, torch.Tensor]) -> dict[str, torch.Tensor] | None:
    """The variant's loss (and CLUB critics' loss) computed independently of its objective
    (``None`` for the `tracked` preset, whose conditional negatives have no naive reference here)."""
    objective = model.objective
    log_b = math.log(features["features_1"].shape[0])
    tau = objective.temperature
    if variant == "factorcl_ssl_paper":
        return {"loss": naive_terms(objective, features)["loss"], "critic_loss": naive_club_critic_loss(objective, features)}
    if variant == "factorcl_ssl_tracked":
        return None
    if variant == "factorcl_ssl":  # closed_form: CLIP loss of the shared heads, alignment, views' InfoNCE
        heads = [objective.heads[m](features[f"features_{m + 1}"]) for m in range(2)]
        views = [objective.heads[m](features[f"augmented_{m + 1}"])["unique"] for m in range(2)]
        units = [F.normalize(h["shared"], dim=-1) for h in heads]
        loss = clip_loss(heads[0]["shared"], heads[1]["shared"], tau) - log_b + (units[0] - units[1]).square().sum(1).mean()
        return {"loss": loss + sum(clip_loss(heads[m]["unique"], views[m], tau) - log_b for m in range(2))}
    z = [objective.represent(features[f"features_{m}"], m - 1).alignment for m in (1, 2)]
    loss = clip_loss(z[0], z[1], tau) - log_b
    if model.config.objective == "cross_self":
        views = [objective.represent(features[f"augmented_{m}"], m - 1).alignment for m in (1, 2)]
        loss = loss + sum(clip_loss(z[m], views[m], tau) - log_b for m in range(2))
    return {"loss": loss}


def check_losses(models: dict, batch: dict, features: dict, tolerance: float = MAX_RELATIVE_DIFF) -> dict[str, float]:
    """Each variant's model loss against :func:`reference_losses` on the backbone ``features``
    of ``batch`` (every model holds the same CLIP weights); raises if they differ. Returns the
    largest relative difference per variant."""
    differences = {}
    with torch.no_grad():
        for name, model in models.items():
            out = model(**variant_inputs(model, batch), return_loss=True)
            expected = reference_losses(model, name, features)
            if expected is None:
                differences[name] = float("nan")
                continue
            got = {"loss": out.loss, "critic_loss": out.critic_loss}
            differences[name] = max(relative_difference(got[key], value) for key, value in expected.items())
            if not differences[name] <= tolerance:
                raise RuntimeError(
                    f"{name}: model loss and independent reference differ (relative {differences[name]:.3g} > {tolerance})"
                )
    return differences


# ------------------------------------------------------------------ steps and parts
class StepRunner:
    """A model with the training loop's optimizers; :meth:`step` is one step of train.py, the
    other methods are its parts for the breakdown."""

    def __init__(self, model, batch: dict, features: dict, autocast_dtype: torch.dtype | None = None):
        self.model = model
        self.inputs = variant_inputs(model, batch)
        self.main_params = model.main_parameters()
        self.optimizer = torch.optim.AdamW(self.main_params, lr=1e-5)
        critic_params = model.club_critic_parameters()
        self.critic_optimizer = torch.optim.Adam(critic_params, lr=1e-5) if critic_params else None
        estimators = getattr(model.objective, "estimators", None)
        self.club_critic_steps = estimator_preset(estimators).club_critic_steps if estimators else 1
        device_type = batch["input_ids"].device.type
        self._autocast = (lambda: torch.autocast(device_type, dtype=autocast_dtype)) if autocast_dtype else nullcontext
        self.features = {k: v.detach().clone().requires_grad_() for k, v in features.items() if k in self._objective_keys()}

    def _objective_keys(self):
        keys = ["features_1", "features_2"]
        return keys + (["augmented_1", "augmented_2"] if self.model.config.uses_augmented_views else [])

    def _optimizers_step(self):
        torch.nn.utils.clip_grad_norm_(self.main_params, MAX_GRAD_NORM)
        for optimizer in (self.optimizer, self.critic_optimizer):
            if optimizer is not None:
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)

    def step(self):
        """One step of train.py: forward with the loss, one backward of loss + critic_loss,
        clipping, both optimizers, and the preset's extra CLUB-critic steps."""
        with self._autocast():
            training_step(self.model, {**self.inputs, "return_loss": True}, self.optimizer, self.critic_optimizer,
                          club_critic_steps=self.club_critic_steps, max_grad_norm=MAX_GRAD_NORM)

    def objective(self):
        """The objective alone on fixed backbone features: heads, terms, CLUB critics' loss."""
        with self._autocast():
            out = self.model.objective(**self.features)
        (out.loss if out.critic_loss is None else out.loss + out.critic_loss).backward()
        self._zero()

    def heads(self):
        """Every projection head the objective runs, forward and backward."""
        objective = self.model.objective
        # FactorCL-SSL runs only its conditioning heads on the augmented view (closed form: the unique head).
        view_roles = SSL_CONDITIONED_ROLES if isinstance(objective, FactorCLObjective) else None
        if isinstance(objective, ClosedFormFactorCLObjective):
            view_roles = ("unique",)
        with self._autocast():
            outputs = [objective.heads[m](self.features[f"features_{m + 1}"]) for m in range(2)]
            if objective.requires_augmented:
                outputs += [objective.heads[m](self.features[f"augmented_{m + 1}"], view_roles) for m in range(2)]
        torch.autograd.backward([t.float().sum() for heads in outputs for t in set(heads.values())])
        self._zero()

    def club(self):
        """The CLUB critics' loss on the step's detached features, forward and backward."""
        if not hasattr(self, "_critic_inputs"):
            with torch.no_grad(), self._autocast():
                self._critic_inputs = self.model.objective(**self.features).critic_inputs
        if not self._critic_inputs:
            return
        with self._autocast():
            loss = self.model.objective.critic_loss(self._critic_inputs)
        loss.backward()
        self._zero()

    def optim(self):
        """Clipping and both optimizer steps (on gradients of the same shapes as a step's)."""
        for p in self.main_params + (self.model.club_critic_parameters() if self.critic_optimizer else []):
            p.grad = torch.ones_like(p)
        self._optimizers_step()

    def _zero(self):
        self.model.zero_grad(set_to_none=True)
        for t in self.features.values():
            t.grad = None


# ----------------------------------------------------------------------------- running
def benchmark_config(config: str, batch_size: int, repeats: int, device: str, autocast: str | None, smoke: bool = False) -> list[dict]:
    """Check, then time the steps side by side and the parts side by side; one row per variant."""
    models, batch = build_models(config, batch_size, device, smoke)
    autocast_dtype = getattr(torch, autocast) if autocast else None
    with torch.no_grad():
        features = backbone_features(models["factorcl_ssl"], batch)
    differences = check_losses(models, batch, features, MAX_RELATIVE_DIFF if autocast is None else 5e-2)
    runners = {name: StepRunner(model, batch, features, autocast_dtype) for name, model in models.items()}
    synchronize = torch.cuda.synchronize if device.startswith("cuda") else None
    # A ViT-B/32 step lasts many seconds: one untimed call (the calibration) is enough warm-up.
    steps = time_side_by_side(
        {name: runner.step for name, runner in runners.items()}, repeats=repeats, warmup=0,
        min_sample_seconds=0.2, synchronize=synchronize,
    )
    part_names = ("objective", "heads", "club", "optim")
    parts = time_side_by_side(
        {f"{name}.{part}": getattr(runner, part) for name, runner in runners.items() for part in part_names},
        repeats=max(repeats, 3), min_sample_seconds=0.1, synchronize=synchronize,
    )
    rows = []
    for name in VARIANTS:
        step_ms = steps[name]["median_s"] * 1e3
        part_ms = {part: parts[f"{name}.{part}"]["median_s"] * 1e3 for part in part_names}
        if runners[name].critic_optimizer is None:
            part_ms["club"] = 0.0
        rows.append({
            "config": config,
            "batch_size": batch_size,
            "variant": name,
            "backbone_inputs": 2 * batch_size if models[name].config.uses_augmented_views else batch_size,
            "step_ms": step_ms,
            "vs_simclr": steps[name]["median_s"] / steps["simclr"]["median_s"],
            "vs_cross_self": steps[name]["median_s"] / steps["cross_self"]["median_s"],
            "vs_previous_default": steps[name]["median_s"] / steps["factorcl_ssl_tracked"]["median_s"],
            "backbone_ms": step_ms - part_ms["objective"] - part_ms["optim"],
            "heads_ms": part_ms["heads"],
            "critics_ms": part_ms["objective"] - part_ms["heads"] - part_ms["club"],
            "club_ms": part_ms["club"],
            "optim_ms": part_ms["optim"],
            "objective_ms": part_ms["objective"],
            "loss_rel_diff": differences[name],
            "step_samples_ms": [t * 1e3 for t in steps[name]["samples_s"]],
        })
    return rows


def print_table(rows: list[dict]):
    header = (
        f"{'config':<8} {'B':>4} {'variant':<20} {'bb in':>5} {'step ms':>9} {'/simclr':>8} {'/cross':>7} {'/tracked':>9} "
        f"{'backbone':>9} {'heads':>7} {'critics':>8} {'club':>7} {'optim':>7} {'loss Δ':>8}"
    )
    print(header)
    print("-" * len(header))
    for r in rows:
        print(
            f"{r['config']:<8} {r['batch_size']:>4} {r['variant']:<20} {r['backbone_inputs']:>5} {r['step_ms']:>9.1f} "
            f"{r['vs_simclr']:>7.2f}x {r['vs_cross_self']:>6.2f}x {r['vs_previous_default']:>8.2f}x "
            f"{r['backbone_ms']:>9.1f} {r['heads_ms']:>7.1f} "
            f"{r['critics_ms']:>8.1f} {r['club_ms']:>7.1f} {r['optim_ms']:>7.1f} {r['loss_rel_diff']:>8.1e}"
        )


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=CONFIGS)
    parser.add_argument("--batch-size", type=int, default=None, help="default: tiny 32, vit-b32 8 (smoke: 4)")
    parser.add_argument("--repeats", type=int, default=None, help="timing rounds of the steps (default 3, smoke 1)")
    parser.add_argument("--smoke", action="store_true", help="tiny config only, smaller, one round: seconds")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--autocast", choices=["bfloat16", "float16"], default=None, help="mixed precision")
    add_run_arguments(parser)
    return parser.parse_args(argv)


def main(argv=None) -> list[dict]:
    args = parse_args(argv)
    apply_threads(args)
    configs = ["tiny"] if args.smoke else args.configs
    repeats = args.repeats or (1 if args.smoke else 3)
    rows = []
    for config in configs:
        batch_size = args.batch_size or (4 if args.smoke else DEFAULT_BATCH[config])
        config_rows = benchmark_config(config, batch_size, repeats, args.device, args.autocast, smoke=args.smoke)
        print_table(config_rows)
        print()
        rows += config_rows
    print(f"device={args.device} threads={torch.get_num_threads()} torch={torch.__version__} autocast={args.autocast}")
    print("backbone = step - objective - optim; critics = objective - heads - club (see the module docstring)")
    print_table(rows)
    meta = {"device": args.device, "threads": torch.get_num_threads(), "torch": torch.__version__,
            "autocast": args.autocast, "text_length": TEXT_LENGTH,
            "timing": "median of interleaved rounds, same process"}
    write_json(args.json, {"meta": meta, "rows": rows})
    return rows


if __name__ == "__main__":
    main()
