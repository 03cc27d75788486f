"""Main job: the probe on [Z_S; Z_U] of image and text, with and without the hUc heads (the last
head_dim columns of each modality's Z_U), for the models that
`python -m experiments.term_ablation --out DIR --seeds 0 1 2 --variants "all terms" "without unique_cond_nce"` saved.

    python -m experiments.term6_main_job_heads DIR OUT.json   # from the repository root

Its output is docs/results/term6/main_job_heads.json.
"""

import json
import sys
import warnings

import torch
from accelerate import Accelerator
from transformers import AutoProcessor

from factorcl_hf import FactorCLModel
from factorcl_hf.evaluation.image_text import encode_image_text
from factorcl_hf.evaluation.probe import linear_probe_accuracy
from training.arguments import parse_args
from training.loop import build_data


def main(argv: list[str]) -> None:
    warnings.filterwarnings("ignore")
    torch.set_num_threads(1)
    root = argv[0]
    args = parse_args(["--config", "training/configs/demo.yaml", "--train_data", f"{root}/data", "--output_dir", "/tmp/x"])
    data = build_data(args, Accelerator(cpu=True))
    records = []
    for variant in ("all_terms", "without_unique_cond_nce"):
        for seed in (0, 1, 2):
            d = f"{root}/{variant}/seed_{seed}/model"
            model = FactorCLModel.from_pretrained(d).eval()
            processor = AutoProcessor.from_pretrained(d)
            enc = {name: encode_image_text(model, processor, split, embeddings=("factorized",)) for name, split in (("train", data.train), ("eval", data.eval))}
            h = model.config.head_dim
            rec = dict(variant=variant, seed=seed)
            for name, keep in (("Z", None), ("Z without hUc", -h), ("hUc only", "last")):
                feats = []
                for split in ("train", "eval"):
                    parts = []
                    for m in ("image", "text"):
                        z = enc[split][m]["factorized"]
                        parts.append(z if keep is None else z[:, :keep] if keep != "last" else z[:, -h:])
                    feats.append(torch.cat(parts, 1))
                rec[name] = linear_probe_accuracy(feats[0], data.train[data.label_column], feats[1], data.eval[data.label_column])
            print(json.dumps(rec), flush=True)
            records.append(rec)
    json.dump(records, open(argv[1], "w"), indent=1)


if __name__ == "__main__":
    main(sys.argv[1:])
