"""Is the gain of dropping term 6 the term, or the untrained hUc head left in Z_U?
Probe [Z_S1; Z_U1; Z_S2; Z_U2] with and without the UNIQUE_COND heads, FactorCL-SSL quick settings
(`tracked` = all six terms; the default preset `tracked_no_cond_nce` = without term 6), probes
run to convergence (max_iter 1000, not the sweep's 200).

    python -m experiments.term6_synthetic_heads OUT.json   # from the repository root

Its output is docs/results/term6/synthetic_heads.json.
"""

import json
import sys
import warnings

import torch

from experiments.synthetic_benchmark import BenchmarkSettings, fit_method
from experiments.synthetic_sweep import QUICK
from factorcl_hf.evaluation.probe import linear_probe_accuracy
from factorcl_hf.research.synthetic import make_synthetic

ROLES = ("shared", "shared_cond", "unique", "unique_label", "unique_cond")

@torch.no_grad()
def heads_of(model, split):
    model.eval()
    out = {}
    for m, x in enumerate((split.x1, split.x2)):
        h = model.objective.heads[m](model.encode(x, m))
        for r in ROLES:
            out[f"{r}{m+1}"] = h[r]
    return out

def cat(h, roles):
    return torch.cat([h[f"{r}{m}"] for m in (1, 2) for r in roles], 1)

def main(argv: list[str]) -> None:
    warnings.filterwarnings("ignore")
    torch.set_num_threads(1)
    records = []
    for seed in (0, 1, 2):
        data = {u: make_synthetic(num_samples=QUICK["num_samples"], unique_share=u, seed=seed) for u in (0.5, 1.0)}
        for variant, est in (("all terms (tracked)", "tracked"), ("no term 6 (default)", None)):
            settings = BenchmarkSettings(epochs=QUICK["epochs"], batch_size=QUICK["batch_size"], estimators=est)
            fitted = fit_method(data[1.0], "factorcl_ssl", settings, seed)
            for u, splits in data.items():
                tr, te = heads_of(fitted.model, splits.train), heads_of(fitted.model, splits.test)
                rec = dict(seed=seed, variant=variant, u=u)
                for name, roles in (("Z (all 5 heads)", ROLES), ("Z without hUc", ROLES[:4]), ("hUc only", ROLES[4:]),
                                    ("hS+hUl (trained by NCE)", ("shared", "unique_label"))):
                    rec[name] = linear_probe_accuracy(cat(tr, roles), splits.train.labels, cat(te, roles), splits.test.labels)
                records.append(rec)
                print(json.dumps(rec), flush=True)
    json.dump(records, open(argv[0], "w"), indent=1)


if __name__ == "__main__":
    main(sys.argv[1:])
