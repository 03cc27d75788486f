"""The main job (README's first command) on a tiny budget: every stage runs, and the saved
model gives back what the job reports."""

import json

import pytest
from transformers import AutoProcessor

from factorcl_hf import FactorCLModel
from factorcl_hf.data.image_text import load_image_text_dataset
from factorcl_hf.evaluation.image_text import evaluate_image_text
from training.demo import main


@pytest.mark.slow
def test_demo_reports_what_its_saved_model_gives(tmp_path):
    results = main(["--output_dir", str(tmp_path), "--max_train_steps", "2", "--num_train_samples", "100", "--disable_tqdm"])
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved == json.loads(json.dumps(results))
    assert (tmp_path / "samples.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # The reloaded FactorCL model's embeddings equal the trained model's (the demo raises otherwise).
    assert saved["factorcl_ssl"]["reload_max_abs_diff"] == 0.0
    # Every reported figure, recomputed from the saved folders and the data alone.
    data = load_image_text_dataset(tmp_path / "data", "image", "caption", "label")
    for objective in ("factorcl_ssl", "simclr"):
        folder = tmp_path / objective / "model"
        model, processor = FactorCLModel.from_pretrained(folder), AutoProcessor.from_pretrained(folder)
        metrics = evaluate_image_text(model, processor, data["train"], data["test"], label_column="label",
                                      match_columns=["shape", "size", "position"])
        reported = {k: v for k, v in saved[objective].items() if k in metrics}
        assert set(reported) == {"factorized_accuracy", "backbone_accuracy", "mean_R@1", "mean_R@5", "match_mean_R@1"}
        assert reported == {k: metrics[k] for k in reported}, objective


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
