"""Why the closed-form factorization is built the way it is: its alternatives, refitted on the
same trained FactorCL-SSL models and probed the same way (docs/factorization.md).

For each saved model (the main job's seeds: ``python -m training.demo --seeds ...`` writes
``DIR/seed_S/factorcl_ssl/model``) the trained heads stay as they are; only the closed-form
layers change:

* ``heads``: no fit (Z_S the unit shared head, Z_U the unique head): what training alone gives;
* ``direct``: Z_S = E[s_o | s_m], Z_U = u - E[u | Z_S] (one regression each, the eraser
  fitted on this modality's own unique head);
* ``ace, own eraser``: Z_S as the default, Z_U = u - E[u | Z_S] twice;
* ``default, one pass``: the default with one eraser pass;
* ``default, 1024 features`` / ``default, ridges 1e-3``: the default with more capacity in its
  regressions (four times the random features; ten times less ridge);
* ``default``: ``ClosedFormFit()``, what ``fit_factorization`` does (checked equal to it).

Each variant is scored by the gates of issue 23 (linear probes of every attribute from Z_S and
Z_U of each modality, on the held-out split) and by the label probe on [Z_S; Z_U] of both
modalities. Run from the repository root::

    python -m experiments.factorization_ablation --runs outputs/demo5 --data outputs/demo5/data \\
        --out docs/results/factorization_ablation.json
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

import torch
import torch.nn.functional as F

ATTRIBUTES = ("shape", "size", "position", "colour", "background", "drawer")
SHARED = ("shape", "size", "position")
OWN = {"image": ("colour", "background"), "text": ("drawer",)}
# Issue 23's gates: held-out linear-probe accuracy (chance = the commonest train class's rate).
EXCLUDED_MARGIN = 0.10
KEPT_SHARED, KEPT_OWN = 0.95, {"colour": 0.95, "background": 0.90, "drawer": 0.95}


def variants(fit):
    """name -> (shared mode, eraser target, eraser passes, the fit's settings)."""
    return {
        "heads": ("none", None, 0, fit),
        "direct": ("direct", "own", 1, fit),
        "ace, own eraser": ("ace", "own", fit.unique_passes, fit),
        "default, one pass": ("ace", "other", 1, fit),
        "default, 1024 features": ("ace", "other", fit.unique_passes, dataclasses.replace(fit, num_features=1024)),
        "default, ridges 1e-3": ("ace", "other", fit.unique_passes,
                                 dataclasses.replace(fit, shared_ridge=1e-3, unique_ridge=1e-3)),
        "default": ("ace", "other", fit.unique_passes, fit),
    }


def factorize(units, uniques, shared_mode: str, eraser_target: str | None, passes: int, fit):
    """``[(fit_z_s, fit_z_u)]`` per modality: functions of (unit shared head, unique head)."""
    from factorcl_hf.conditional_mean import RandomFeatureRidge

    def regression(x, y, ridge, bandwidth, seed):
        return RandomFeatureRidge(x.shape[1], y.shape[1], fit.num_features, ridge, bandwidth, seed=seed).double().fit(x, y)

    maps = []
    for m in range(2):
        other = units[1 - m]
        if shared_mode == "none":
            shared = None
        elif shared_mode == "direct":
            shared = regression(units[m], other, fit.shared_ridge, fit.shared_bandwidth, 300 + m)
        else:
            told = regression(other, units[m], fit.shared_ridge, fit.shared_bandwidth, 100 + m)(other)
            shared = regression(units[m], told, fit.shared_ridge, fit.shared_bandwidth, m)
        z = units[m] if shared is None else shared(units[m])
        erasers, residual = [], uniques[m]
        for p in range(passes):
            target = residual
            if eraser_target == "other":
                target = regression(other, residual, fit.unique_target_ridge, fit.unique_bandwidth, 200 + 10 * m + p)(other)
            eraser = regression(z, target, fit.unique_ridge, fit.unique_bandwidth, 10 * (m + 1) + p)
            residual = residual - eraser(z)
            erasers.append(eraser)

        def apply(unit, unique, shared=shared, erasers=erasers):
            z = unit if shared is None else shared(unit)
            for eraser in erasers:
                unique = unique - eraser(z)
            return z, unique

        maps.append(apply)
    return maps


def heads_of(model, processor, split):
    from factorcl_hf.evaluation.embed import extract_embeddings

    units, uniques = [], []
    for m, (modality, column) in enumerate((("image", "image"), ("text", "caption"))):
        backbone = extract_embeddings(model, processor, split[column], modality, "backbone", 256)["backbone"]
        with torch.no_grad():
            heads = model.objective.heads[m](backbone)
        units.append(F.normalize(heads["shared"], dim=-1).double())
        uniques.append(heads["unique"].double())
    return units, uniques


def score(train, test, splits) -> dict:
    """The gates' probes and the label probe of one variant's embeddings."""
    from factorcl_hf.evaluation.factorization import probe_attributes
    from factorcl_hf.evaluation.probe import linear_probe_accuracy

    embed = [{mod: {"shared": z[m][0].float(), "unique": z[m][1].float()} for m, mod in enumerate(("image", "text"))}
             for z in (train, test)]
    attributes = [{a: splits[s][a] for a in ATTRIBUTES} for s in ("train", "test")]
    report = probe_attributes(embed[0], attributes[0], embed[1], attributes[1], probes=("linear",))
    chance, linear = report["chance"], report["linear"]
    failures = []
    for modality in ("image", "text"):
        for a in SHARED:
            if linear[modality]["unique"][a] > chance[a] + EXCLUDED_MARGIN:
                failures.append(f"{modality} Z_U holds {a}")
            if linear[modality]["shared"][a] < KEPT_SHARED:
                failures.append(f"{modality} Z_S lacks {a}")
        for a in OWN[modality]:
            if linear[modality]["unique"][a] < KEPT_OWN[a]:
                failures.append(f"{modality} Z_U lacks {a}")
            if linear[modality]["shared"][a] > chance[a] + EXCLUDED_MARGIN:
                failures.append(f"{modality} Z_S holds {a}")
    features = [torch.cat([e[mod][part] for mod in ("image", "text") for part in ("shared", "unique")], 1) for e in embed]
    label = linear_probe_accuracy(features[0], splits["train"]["label"], features[1], splits["test"]["label"])
    return {"failed_gates": failures, "label_probe": label, "linear": linear, "chance": chance}


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", required=True, help="a training.demo output dir with seed_S/factorcl_ssl/model")
    parser.add_argument("--data", required=True, help="the shapes imagefolder those models were trained on")
    parser.add_argument("--out", required=True)
    args = parser.parse_args(argv)
    import datasets
    from transformers import AutoProcessor

    from factorcl_hf import FactorCLModel

    splits = datasets.load_dataset("imagefolder", data_dir=args.data)
    record = {"command": "python -m experiments.factorization_ablation " + " ".join(argv or []), "seeds": {}}
    for model_dir in sorted(Path(args.runs).glob("seed_*/factorcl_ssl/model")):
        seed = model_dir.parent.parent.name.removeprefix("seed_")
        model, processor = FactorCLModel.from_pretrained(model_dir).eval(), AutoProcessor.from_pretrained(model_dir)
        fit = model.objective.fit_settings
        train, test = heads_of(model, processor, splits["train"]), heads_of(model, processor, splits["test"])
        record["seeds"][seed] = {}
        for name, spec in variants(fit).items():
            maps = factorize(*train, *spec)
            z = [[maps[m](side[0][m], side[1][m]) for m in range(2)] for side in (train, test)]
            if name == "default":  # the library's own fit, same rows: the same embeddings
                saved = model.objective.represent(
                    model.get_image_features(**processor(images=[splits["test"][0]["image"]], return_tensors="pt")).backbone_embeds, 0)
                assert torch.allclose(saved.shared.double(), z[1][0][0][:1], atol=1e-4)
            record["seeds"][seed][name] = score(*z, splits)
            print(seed, name, record["seeds"][seed][name]["failed_gates"], round(record["seeds"][seed][name]["label_probe"], 3))
    record["summary"] = summarize(record["seeds"])
    Path(args.out).write_text(json.dumps(record, indent=2))
    return record


def summarize(per_seed: dict) -> dict:
    """Per variant: gates failed summed over seeds, and the mean label probe, as a table."""
    names = list(next(iter(per_seed.values())))
    rows = []
    for name in names:
        failures = [len(per_seed[s][name]["failed_gates"]) for s in per_seed]
        labels = [per_seed[s][name]["label_probe"] for s in per_seed]
        rows.append([name, " / ".join(map(str, failures)), f"{sum(labels) / len(labels):.3f}"])
    return {"header": ["closed-form layers", "gates failed per seed", "label probe, mean"], "rows": rows}


if __name__ == "__main__":
    main()
