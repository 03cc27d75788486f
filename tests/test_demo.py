"""The main job (README's first command) on a tiny budget: every stage runs, and the saved
model gives back what the job reports."""

import json

import pytest
import torch
from transformers import AutoProcessor

from factorcl_hf import FactorCLModel
from factorcl_hf.data.image_text import load_image_text_dataset
from factorcl_hf.evaluation.image_text import evaluate_image_text
from training.demo import METRICS, main


def naive_recall(scores: torch.Tensor, correct: torch.Tensor, k: int) -> float:
    """Mean over query rows of the chance that a correct candidate ranks in the top ``k`` when
    ties are broken uniformly at random, counted candidate by candidate: with one correct
    candidate, its place is uniform over the ``tied`` places after the ``ahead`` better ones;
    at ``k = 1`` the first place goes to any candidate at the row's maximum alike."""
    hits = []
    for row, right in zip(scores.tolist(), correct.tolist()):
        if k == 1:
            at_max = [j for j, score in enumerate(row) if score == max(row)]
            hits.append(sum(right[j] for j in at_max) / len(at_max))
            continue
        (target,) = [row[j] for j in range(len(row)) if right[j]]
        ahead = sum(score > target for score in row)
        tied = sum(score == target for score in row)
        hits.append(min(max(k - ahead, 0), tied) / tied)
    return sum(hits) / len(hits)


@pytest.mark.slow
def test_demo_reports_what_its_saved_model_gives(tmp_path):
    results = main(["--output_dir", str(tmp_path), "--max_train_steps", "2", "--num_train_samples", "100", "--disable_tqdm"])
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved == json.loads(json.dumps(results))
    assert (tmp_path / "samples.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # The reloaded FactorCL model's embeddings equal the trained model's (the demo raises otherwise).
    assert saved["factorcl_ssl"]["reload_max_abs_diff"] == 0.0
    data = load_image_text_dataset(tmp_path / "data", "image", "caption", "label")
    test = data["test"]
    content = list(zip(test["shape"], test["size"], test["position"]))
    same_content = torch.tensor([[a == b for b in content] for a in content])  # what match_mean_R@1 counts a hit
    for objective in ("factorcl_ssl", "simclr"):
        folder = tmp_path / objective / "model"
        model, processor = FactorCLModel.from_pretrained(folder), AutoProcessor.from_pretrained(folder)
        reported = saved[objective]
        # One seed: the reported figure is that seed's record.
        assert {k: reported["seeds"]["0"][k] for k in METRICS} == {k: reported[k] for k in METRICS}
        # The retrieval figures, recomputed without the evaluation code: the saved model's own
        # forward scores every test image against every test caption (logits_per_image), and
        # the recalls are counted query by query.
        inputs = processor(images=list(test["image"]), text=list(test["caption"]), padding=True, truncation=True,
                           return_tensors="pt")
        with torch.no_grad():
            scores = model(**inputs).logits_per_image
        pairs = torch.eye(len(test), dtype=torch.bool)
        for k in (1, 5):
            expected = (naive_recall(scores, pairs, k) + naive_recall(scores.T, pairs, k)) / 2
            assert reported[f"mean_R@{k}"] == pytest.approx(expected, abs=1e-6), (objective, k)
        expected = (naive_recall(scores, same_content, 1) + naive_recall(scores.T, same_content.T, 1)) / 2
        assert reported["match_mean_R@1"] == pytest.approx(expected, abs=1e-6), objective
        # The probe accuracies: the saved folder and the data give them back.
        metrics = evaluate_image_text(model, processor, data["train"], test, label_column="label")
        assert {k: reported[k] for k in ("factorized_accuracy", "backbone_accuracy")} == {
            k: metrics[k] for k in ("factorized_accuracy", "backbone_accuracy")}, objective


@pytest.mark.slow
def test_demo_with_several_seeds_reports_each_seed_and_their_mean(tmp_path, capsys):
    results = main(["--output_dir", str(tmp_path), "--max_train_steps", "2", "--num_train_samples", "100",
                    "--disable_tqdm", "--objectives", "simclr", "--seeds", "0", "1"])
    per_seed = results["simclr"]["seeds"]
    assert sorted(per_seed) == [0, 1]
    for key in ("factorized_accuracy", "match_mean_R@1", "mean_R@1"):
        values = [per_seed[s][key] for s in (0, 1)]
        assert results["simclr"][key] == pytest.approx(sum(values) / 2)
        assert results["simclr"][f"{key}_std"] == pytest.approx(abs(values[0] - values[1]) / 2**0.5)
    assert (tmp_path / "seed_1" / "simclr" / "model" / "config.json").exists()
    assert "shared-content R@1" in capsys.readouterr().out
