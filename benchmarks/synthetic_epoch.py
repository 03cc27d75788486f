"""One training epoch of FactorCL-SUP against SimCLR on the synthetic benchmark, same encoders.

The reference settings (the official synthetic experiment, docs/synthetic_benchmark.md):
10,000 samples split 80/20 (8,000 train rows, 62 steps of batch 128 per epoch), MLP encoders
hidden 512 / embedding 128, heads 512 → 128, critics hidden 512, concat alignment critic. An epoch is
:func:`experiments.synthetic_benchmark.train_model` with ``epochs=1``: per step the encoders,
the objective, one backward of ``loss + critic_loss`` and both optimizers, exactly as the
synthetic benchmark trains.

Variants, timed side by side (interleaved rounds, median):

* ``simclr``: cross-modal InfoNCE with a cosine critic (the CLIP loss) on the same encoders;
* ``factorcl_sup``: the default one-hidden-layer critics (the paper's);
* ``factorcl_sup_2layer``: two hidden layers (the reference code's critics). Their second
  ``[B², 512] × [512, 512]`` layer costs seconds per step on a CPU, so by default this variant
  is timed over its first ``--two-layer-steps`` steps and its epoch time is extrapolated
  (``time / steps × 62``; the table marks it). ``--two-layer-steps 0`` times full epochs.

Before timing, each variant's loss on the first batch is checked against an independent
computation on the same encoder features (``objective_step.py``'s tiled reference for
FactorCL, ``F.cross_entropy`` over scaled cosine logits for SimCLR).

Run::

    python -m benchmarks.synthetic_epoch --threads 1
    python -m benchmarks.synthetic_epoch --smoke
"""

from __future__ import annotations

import argparse
import itertools
import math

import torch

from benchmarks._timing import add_run_arguments, apply_threads, time_side_by_side, write_json
from benchmarks.objective_step import naive_club_critic_loss, naive_terms, relative_difference
from benchmarks.train_step import clip_loss
from experiments.synthetic_benchmark import BenchmarkSettings, build_model, train_model
from factorcl_hf.research.encoders import VectorFactorCL
from factorcl_hf.research.synthetic import SyntheticSplit, make_synthetic

VARIANTS = {  # name: (objective, critic hidden layers)
    "simclr": ("simclr", 1),
    "factorcl_sup": ("factorcl_sup", 1),
    "factorcl_sup_2layer": ("factorcl_sup", 2),
}
MAX_RELATIVE_DIFF = 1e-5


def reference_settings(smoke: bool = False) -> BenchmarkSettings:
    """The official synthetic settings (docs/synthetic_benchmark.md) with batch 128 and one epoch (``smoke``: tiny widths),
    with the paper's estimators and concat alignment critic: the maths of the naive reference."""
    paper = dict(estimators="paper", alignment_critic_type="concat")
    if smoke:
        return BenchmarkSettings(
            epochs=1, batch_size=16, encoder_hidden_dim=16, embed_dim=8, head_dim=8, head_hidden_dim=16,
            critic_hidden_dim=16, **paper,
        )
    return BenchmarkSettings(epochs=1, batch_size=128, **paper)


def build_variant(name: str, input_dims: tuple[int, int], num_labels: int, settings: BenchmarkSettings, seed: int = 0):
    """The synthetic benchmark's model for ``name``, with the variant's critic depth."""
    objective, layers = VARIANTS[name]
    torch.manual_seed(seed)
    return build_model(objective, input_dims, num_labels, settings, critic_num_hidden_layers=layers)


def first_steps(split: SyntheticSplit, steps: int, batch_size: int) -> SyntheticSplit:
    """The first ``steps`` batches' worth of rows (a partial epoch)."""
    rows = slice(0, min(len(split), steps * batch_size))
    return SyntheticSplit(split.x1[rows], split.x2[rows], split.labels[rows], {k: v[rows] for k, v in split.latents.items()})


@torch.no_grad()
def check_first_batch(model: VectorFactorCL, split: SyntheticSplit, batch_size: int) -> float:
    """The model's loss on the first batch against an independent computation; raises if
    they differ. Returns the relative difference."""
    x1, x2, labels = split.x1[:batch_size], split.x2[:batch_size], split.labels[:batch_size]
    out = model(x1, x2, labels=labels if model.requires_labels else None)
    features = {"features_1": model.encode(x1, 0), "features_2": model.encode(x2, 1), "labels": labels}
    objective = model.objective
    if model.requires_labels:
        expected = {"loss": naive_terms(objective, features)["loss"], "critic_loss": naive_club_critic_loss(objective, features)}
    else:
        z = [objective.represent(features[f"features_{m + 1}"], m).alignment for m in range(2)]
        expected = {"loss": clip_loss(z[0], z[1], objective.temperature) - math.log(batch_size)}
    got = {"loss": out.loss, "critic_loss": out.critic_loss}
    difference = max(relative_difference(got[key], value) for key, value in expected.items())
    if not difference <= MAX_RELATIVE_DIFF:
        raise RuntimeError(f"{objective}: loss differs from the independent reference (relative {difference:.3g})")
    return difference


def run(settings: BenchmarkSettings, repeats: int, two_layer_steps: int, num_samples: int, variants: list[str]) -> list[dict]:
    """Check, then time one epoch per variant, interleaved; one row per variant."""
    splits = make_synthetic(num_samples=num_samples, test_fraction=0.2, seed=0)
    train = splits.train
    input_dims, num_labels = (train.x1.shape[1], train.x2.shape[1]), splits.config.num_labels
    steps_per_epoch = len(train) // settings.batch_size
    models = {name: build_variant(name, input_dims, num_labels, settings) for name in variants}
    differences = {name: check_first_batch(model, train, settings.batch_size) for name, model in models.items()}
    data = {name: train for name in variants}
    if two_layer_steps and "factorcl_sup_2layer" in variants:
        data["factorcl_sup_2layer"] = first_steps(train, two_layer_steps, settings.batch_size)
    seeds = itertools.count()
    epochs = {name: (lambda m=models[name], d=data[name]: train_model(m, d, settings, seed=next(seeds))) for name in variants}
    timings = time_side_by_side(epochs, repeats=repeats, warmup=0, min_sample_seconds=0.0)
    rows = []
    for name in variants:
        measured_steps = len(data[name]) // settings.batch_size
        epoch_s = timings[name]["median_s"] * steps_per_epoch / measured_steps
        rows.append({
            "variant": name,
            "critic_layers": VARIANTS[name][1],
            "epoch_s": epoch_s,
            "step_ms": epoch_s / steps_per_epoch * 1e3,
            "measured_steps": measured_steps,
            "extrapolated": measured_steps != steps_per_epoch,
            "loss_rel_diff": differences[name],
            "samples_s": timings[name]["samples_s"],
        })
    simclr = next((r["epoch_s"] for r in rows if r["variant"] == "simclr"), None)
    for row in rows:
        row["vs_simclr"] = row["epoch_s"] / simclr if simclr else math.nan
    return rows


def print_table(rows: list[dict]):
    header = f"{'variant':<22} {'epoch s':>9} {'step ms':>9} {'x SimCLR':>9} {'steps timed':>12} {'loss Δ':>8}"
    print(header)
    print("-" * len(header))
    for r in rows:
        steps = f"{r['measured_steps']}{' (extrap.)' if r['extrapolated'] else ''}"
        print(
            f"{r['variant']:<22} {r['epoch_s']:>9.2f} {r['step_ms']:>9.1f} {r['vs_simclr']:>8.1f}x "
            f"{steps:>12} {r['loss_rel_diff']:>8.1e}"
        )


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--repeats", type=int, default=None, help="timed epochs per variant (default 3, smoke 1)")
    parser.add_argument("--two-layer-steps", type=int, default=8, help="steps timed for the 2-layer variant (0: full epochs)")
    parser.add_argument("--smoke", action="store_true", help="small data and widths: seconds")
    add_run_arguments(parser)
    return parser.parse_args(argv)


def main(argv=None) -> list[dict]:
    args = parse_args(argv)
    apply_threads(args)
    settings = reference_settings(args.smoke)
    rows = run(
        settings,
        repeats=args.repeats or (1 if args.smoke else 3),
        two_layer_steps=args.two_layer_steps,
        num_samples=200 if args.smoke else 10000,
        variants=args.variants,
    )
    print(f"threads={torch.get_num_threads()} torch={torch.__version__} batch={settings.batch_size} "
          f"encoders={settings.encoder_hidden_dim}/{settings.embed_dim} critic_hidden={settings.critic_hidden_dim}")
    print_table(rows)
    meta = {"threads": torch.get_num_threads(), "torch": torch.__version__, "settings": settings.to_dict()}
    write_json(args.json, {"meta": meta, "rows": rows})
    return rows


if __name__ == "__main__":
    main()
