"""The main job (README's first command) on a tiny budget: every stage runs and the
results file has the documented shape."""

import json

from training.demo import main


def test_demo_main_job_writes_results_and_reloads_exactly(tmp_path):
    results = main(["--output_dir", str(tmp_path), "--max_train_steps", "2", "--num_train_samples", "60", "--disable_tqdm"])
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved == json.loads(json.dumps(results))
    for objective in ("factorcl_ssl", "simclr"):
        assert {"probe_acc", "retrieval_r1"} <= saved[objective].keys()
        assert 0.0 <= saved[objective]["probe_acc"] <= 1.0
    assert saved["factorcl_ssl"]["reload_max_abs_diff"] == 0.0
    assert (tmp_path / "samples.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (tmp_path / "factorcl_ssl" / "model" / "model.safetensors").exists()
