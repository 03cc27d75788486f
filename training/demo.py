"""The main job, offline on the embedded shapes dataset (README: `make demo`).

1. Generates the embedded image+caption dataset and a PNG grid of samples.
2. Trains FactorCL-SSL and the CLIP-loss baseline (`simclr`) with the same tiny backbone,
   recipe (training/configs/demo.yaml), budget and seed.
3. Evaluates both: retrieval R@1 and a linear probe of a label that needs modality-unique
   attributes (the colour only the image shows, the drawer only the caption names).
4. Saves FactorCL, reloads it with `FactorCLModel.from_pretrained` and checks the reloaded
   embeddings equal the trained ones.
5. Prints a comparison table and writes OUTPUT_DIR/results.json.

The headline retrieval figure is shared-content R@1 (a hit is any caption with the same shape,
size and position); exact-pair R@1 sits near its ceiling because the set holds duplicates.
``--seeds 0 1 2`` repeats the training and evaluation per seed (data fixed by the recipe) and
reports each seed, the mean and the standard deviation; one seed (the recipe's) by default.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

DEFAULT_CONFIG = Path(__file__).resolve().parent / "configs" / "demo.yaml"


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default=str(DEFAULT_CONFIG))
    parser.add_argument("--output_dir", default="outputs/demo")
    parser.add_argument("--objectives", nargs="+", default=["factorcl_ssl", "simclr"])
    parser.add_argument("--max_train_steps", type=int, help="override the recipe's budget (tests use a few steps)")
    parser.add_argument("--num_train_samples", type=int)
    parser.add_argument("--seeds", type=int, nargs="+", help="training seeds (default: the recipe's one seed)")
    parser.add_argument("--disable_tqdm", action="store_true")
    return parser.parse_args(argv)


# Reported per objective, headline first.
METRICS = ("factorized_accuracy", "match_mean_R@1", "mean_R@1", "mean_R@5", "backbone_accuracy")
COLUMNS = ("probe acc", "shared-content R@1", "exact-pair R@1", "R@5", "backbone probe")


def summarize(per_seed: dict[int, dict]) -> dict:
    """Mean and standard deviation of every metric over seeds."""
    summary = {}
    for key in METRICS:
        values = [r[key] for r in per_seed.values() if key in r]
        if values:
            summary[key] = statistics.fmean(values)
            summary[f"{key}_std"] = statistics.stdev(values) if len(values) > 1 else 0.0
    return summary


def print_table(results: dict, objectives: list[str], several_seeds: bool):
    print("\n| objective | " + " | ".join(COLUMNS) + " |")
    print("|---|" + "---|" * len(COLUMNS))
    for name in objectives:
        r = results[name]
        cells = [f"{r[k]:.3f} ± {r[k + '_std']:.3f}" if several_seeds else f"{r[k]:.3f}" for k in METRICS if k in r]
        print(f"| {name} | " + " | ".join(cells) + " |")


def main(argv=None) -> dict:
    args = parse_args(argv)
    # The libraries load once the arguments are parsed, so that `--help` answers at once.
    import datasets

    from factorcl_hf import FactorCLModel
    from factorcl_hf.data.shapes import save_sample_grid, shapes_label_accuracy_ceilings, write_shapes_imagefolder
    from factorcl_hf.evaluation.image_text import encode_image_text
    from factorcl_hf.progress import hide_library_progress_bars
    from training.arguments import load_config_file
    from training.arguments import parse_args as parse_train_args
    from training.train import train

    hide_library_progress_bars()  # the local data's "Downloading data" bars are not the demo's progress
    out = Path(args.output_dir)
    recipe = load_config_file(args.config)
    num_samples = args.num_train_samples or recipe.get("num_train_samples", 2000)
    data_dir = write_shapes_imagefolder(
        out / "data", num_samples=num_samples, seed=recipe.get("seed", 0), unique_share=recipe["unique_share"]
    )
    test_rows = datasets.load_dataset("imagefolder", data_dir=str(data_dir))["test"]
    save_sample_grid(test_rows, out / "samples.png", n=16)

    seeds = args.seeds or [recipe.get("seed", 0)]
    runs, per_seed = {}, {name: {} for name in args.objectives}
    for seed in seeds:
        for objective in args.objectives:
            run_dir = out / objective if len(seeds) == 1 else out / f"seed_{seed}" / objective
            flags = ["--config", args.config, "--train_data", str(data_dir), "--objective", objective,
                     "--output_dir", str(run_dir), "--seed", str(seed)]
            if args.max_train_steps:
                flags += ["--max_train_steps", str(args.max_train_steps)]
            if args.disable_tqdm:
                flags.append("--disable_tqdm")
            run = train(parse_train_args(flags))
            runs.setdefault(objective, run)  # the first seed's run is the one reloaded below
            keys = (*METRICS, "club_critic_check")
            per_seed[objective][seed] = {k: run.results[k] for k in keys if k in run.results}

    # The saved model must reproduce the trained one exactly.
    checked = args.objectives[0]
    trained = runs[checked]
    reloaded = FactorCLModel.from_pretrained(trained.results["model_dir"])
    sample = test_rows.select(range(min(64, len(test_rows))))
    before = encode_image_text(trained.model, trained.processor, sample)
    after = encode_image_text(reloaded, trained.processor, sample)
    reload_diff = max((before[m][k] - after[m][k]).abs().max().item() for m in before for k in before[m])
    if reload_diff != 0:
        raise RuntimeError(f"Reloaded {checked} embeddings differ from the trained ones (max abs diff {reload_diff})")

    if len(seeds) == 1:
        results = {name: per_seed[name][seeds[0]] for name in args.objectives}
    else:
        results = {name: {**summarize(per_seed[name]), "seeds": per_seed[name]} for name in args.objectives}
    results[checked]["reload_max_abs_diff"] = reload_diff
    results["label_accuracy_ceilings"] = shapes_label_accuracy_ceilings(recipe["unique_share"])
    (out / "results.json").write_text(json.dumps(results, indent=2))

    print_table(results, args.objectives, len(seeds) > 1)
    ceilings = results["label_accuracy_ceilings"]
    print(f"\nLabel accuracy ceilings: shared info only {ceilings['shared']:.3f}, "
          f"unique info {ceilings['unique']:.3f}, chance {ceilings['chance']:.3f}")
    for name in args.objectives:
        for seed, record in per_seed[name].items():
            for term, values in record.get("club_critic_check", {}).items():
                print(f"{name} (seed {seed}) CLUB term {term}: own critic {values['trained']:.2f} nats, "
                      f"critic refitted on the frozen features {values['refit']:.2f} nats (test split)")
    print(f"Reloaded {checked} from {trained.results['model_dir']}: max abs embedding diff {reload_diff}")
    print(f"Wrote {out / 'results.json'} and {out / 'samples.png'}")
    return results


if __name__ == "__main__":
    main()
