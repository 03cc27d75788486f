"""The studies behind docs/factorization.md and docs/main_job.md run end to end on a tiny main
job, and what they report agrees with an independent computation."""

import json

import pytest
import torch
import torch.nn.functional as F
from transformers import AutoProcessor

from experiments import factorization_ablation, retrieval_errors
from factorcl_hf import FactorCLModel
from factorcl_hf.data.image_text import load_image_text_dataset
from factorcl_hf.objectives import ClosedFormFit
from training.demo import main as demo


@pytest.fixture(scope="module")
def tiny_main_job(tmp_path_factory):
    out = tmp_path_factory.mktemp("main_job")
    results = demo(["--output_dir", str(out), "--max_train_steps", "2", "--num_train_samples", "100", "--seeds", "0", "1",
                    "--objectives", "factorcl_ssl", "simclr", "--probes", "linear", "--expected", "", "--disable_tqdm"])
    return out, results


@pytest.mark.slow
def test_retrieval_errors_are_the_top1_hits_that_differ_in_a_column(tiny_main_job, tmp_path):
    out, _ = tiny_main_job
    model_dir = out / "seed_0" / "simclr" / "model"
    record = retrieval_errors.main(["--models", str(model_dir), "--data", str(out / "data"), "--out", str(tmp_path / "r.json")])
    assert json.loads((tmp_path / "r.json").read_text()) == json.loads(json.dumps(record))
    report = record["models"]["seed_0/simclr"]
    # Independently: the model's own forward scores every image against every caption.
    test = load_image_text_dataset(out / "data", "image", "caption")["test"]
    model, processor = FactorCLModel.from_pretrained(model_dir).eval(), AutoProcessor.from_pretrained(model_dir)
    with torch.no_grad():
        logits = model(**processor(text=list(test["caption"]), images=list(test["image"]), return_tensors="pt",
                                padding="max_length", truncation=True)).logits_per_image
    columns = ("shape", "size", "position")
    for direction, scores in (("image_to_text", logits), ("text_to_image", logits.T)):
        hits = scores.argmax(1).tolist()
        wrong = [q for q, h in enumerate(hits) if any(test[c][q] != test[c][h] for c in columns)]
        assert report[direction]["errors"] == len(wrong) and report[direction]["queries"] == len(test)
        assert sum(report[direction]["by_column"].values()) >= len(wrong)


@pytest.mark.slow
def test_factorization_ablation_refits_every_variant_and_its_default_is_the_library_fit(tiny_main_job, tmp_path):
    out, results = tiny_main_job
    record = factorization_ablation.main(["--runs", str(out), "--data", str(out / "data"), "--out", str(tmp_path / "a.json")])
    assert sorted(record["seeds"]) == ["0", "1"]
    names = list(factorization_ablation.variants(ClosedFormFit()))
    assert all(list(per_variant) == names for per_variant in record["seeds"].values())
    for seed, per_variant in record["seeds"].items():
        # The label probe on the library's own [Z_S; Z_U] is what the main job reported for that seed
        # (the same probe on the same rows; float64 against float32 features: one test row at most).
        reported = results["factorcl_ssl"]["seeds"][int(seed)]["factorized_accuracy"]
        assert per_variant["default"]["label_probe"] == pytest.approx(reported, abs=1 / 20 + 1e-9)
    assert [row[0] for row in record["summary"]["rows"]] == names


def test_the_heads_variant_leaves_the_heads_as_they_are():
    """`heads` (no fit): Z_S is the unit shared head and Z_U the unique head, unchanged."""
    units = [F.normalize(torch.randn(12, 4, dtype=torch.float64), dim=-1) for _ in range(2)]
    uniques = [torch.randn(12, 4, dtype=torch.float64) for _ in range(2)]
    maps = factorization_ablation.factorize(units, uniques, *factorization_ablation.variants(ClosedFormFit())["heads"])
    for m in range(2):
        shared, unique = maps[m](units[m], uniques[m])
        assert torch.equal(shared, units[m]) and torch.equal(unique, uniques[m])
