"""The factorization report: which attribute each embedding holds, by linear and MLP probes."""

import numpy as np
import pytest

from factorcl_hf.evaluation.factorization import (
    factorization_report,
    mlp_probe_accuracy,
    probe_attributes,
    save_factorization_heatmap,
)
from factorcl_hf.testing_utils import save_tiny_model


def _attribute_data(n, seed):
    rng = np.random.default_rng(seed)
    a, b = rng.integers(0, 2, n), rng.integers(0, 2, n)
    noise = rng.normal(size=(n, 3))
    # "holds_a" carries `a` linearly; "holds_xor" carries a XOR b only through a product.
    holds_a = np.column_stack([a + 0.1 * noise[:, 0], noise[:, 1:]])
    signs = np.column_stack([2 * a - 1, 2 * b - 1]).astype(float)
    holds_xor = signs + 0.05 * noise[:, :2]
    names = np.array(["no", "yes"])
    return {"holds_a": holds_a, "holds_xor": holds_xor}, {"a": names[a].tolist(), "xor": (a ^ b).tolist()}


def test_probes_read_what_an_embedding_holds_and_only_that():
    train_embed, train_attrs = _attribute_data(600, 0)
    test_embed, test_attrs = _attribute_data(300, 1)
    report = probe_attributes({"image": train_embed}, train_attrs, {"image": test_embed}, test_attrs)
    linear, mlp = report["linear"]["image"], report["mlp"]["image"]
    assert linear["holds_a"]["a"] > 0.95 and mlp["holds_a"]["a"] > 0.95
    # Nothing of `a` XOR `b` in `holds_a`; in `holds_xor` only nonlinearly (no linear read-out of an XOR).
    assert abs(linear["holds_a"]["xor"] - 0.5) < 0.1 and abs(mlp["holds_a"]["xor"] - 0.5) < 0.1
    assert abs(linear["holds_xor"]["xor"] - 0.5) < 0.1 < mlp["holds_xor"]["xor"] - 0.4
    assert report["chance"]["a"] == pytest.approx(max(np.mean(np.array(test_attrs["a"]) == v) for v in ("no", "yes")),
                                                  abs=0.05)
    assert (report["num_train"], report["num_test"]) == (600, 300)


def test_mlp_probe_is_reproducible_and_checks_its_inputs():
    x, y = np.random.default_rng(0).normal(size=(50, 3)), np.arange(50) % 2
    assert mlp_probe_accuracy(x, y, x, y, seed=3) == mlp_probe_accuracy(x, y, x, y, seed=3)
    with pytest.raises(ValueError, match="two classes"):
        mlp_probe_accuracy(x, np.zeros(50, dtype=int), x, y)


def test_an_attribute_value_the_train_split_lacks_is_named():
    embed = {"image": {"e": np.random.default_rng(0).normal(size=(6, 2))}}
    with pytest.raises(ValueError, match="'colour'.*'blue'"):
        probe_attributes(embed, {"colour": ["red", "green"] * 3}, embed, {"colour": ["red", "blue"] * 3})
    with pytest.raises(ValueError, match="probes"):
        probe_attributes(embed, {"colour": ["red", "green"] * 3}, embed, {"colour": ["red", "green"] * 3}, probes=["svm"])


CAPTIONS = ["a small circle at the top, drawn by anna."]


def test_report_of_a_model_on_the_shapes_data_and_its_heatmap(tmp_path, shapes_dir):
    import datasets

    data = datasets.load_dataset("imagefolder", data_dir=str(shapes_dir))
    captions = list(data["train"]["caption"]) + list(data["test"]["caption"])
    model, processor = save_tiny_model(tmp_path / "model", captions)
    report = factorization_report(model, processor, data["train"], data["test"], ["shape", "size"], probes=["linear"])
    assert set(report["linear"]) == {"image", "text"}
    assert set(report["linear"]["image"]) == {"backbone", "shared", "unique"}
    assert "mlp" not in report and set(report["chance"]) == {"shape", "size"}
    path = save_factorization_heatmap(report, tmp_path / "map.png", title="tiny")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(ValueError, match="missing"):
        factorization_report(model, processor, data["train"], data["test"], ["flavour"])


def test_the_evaluation_cli_writes_the_report_and_its_heatmap(tmp_path, shapes_dir):
    import datasets

    from factorcl_hf.evaluation.__main__ import run

    data = datasets.load_dataset("imagefolder", data_dir=str(shapes_dir))
    save_tiny_model(tmp_path / "model", list(data["train"]["caption"]) + list(data["test"]["caption"]))
    out = tmp_path / "report.json"
    record = run(["--model", str(tmp_path / "model"), "--task", "factorization", "--data", str(shapes_dir),
                  "--attributes", "shape", "colour", "--probes", "linear", "--out", str(out), "--no-progress"])
    assert record["factorization"]["linear"]["image"]["unique"]["colour"] == record["metrics"]["linear/image/unique/colour"]
    assert set(record["factorization"]["chance"]) == {"shape", "colour"}
    assert out.with_suffix(".png").read_bytes()[:4] == b"\x89PNG"
    with pytest.raises(SystemExit):
        run(["--model", str(tmp_path / "model"), "--task", "factorization", "--data", str(shapes_dir), "--no-progress"])
