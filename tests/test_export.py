"""factorcl-embed and factorcl-search on the embedded shapes dataset."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from factorcl_hf.evaluation.embed import extract_embeddings
from factorcl_hf.evaluation.export import run_embed, run_search
from factorcl_hf.evaluation.retrieval import score_matrix
from factorcl_hf.testing_utils import save_tiny_model

NAMES = ["pooler", "shared", "unique", "factorized", "backbone"]


@pytest.fixture(scope="module")
def saved_model(tmp_path_factory, shapes_dir):
    captions = [json.loads(line)["caption"] for line in (shapes_dir / "test" / "metadata.jsonl").read_text().splitlines()]
    directory = tmp_path_factory.mktemp("model")
    model, processor = save_tiny_model(directory, captions + ["a red circle"], head_dim=8, head_hidden_dim=16, critic_hidden_dim=16, critic_embed_dim=8)
    return directory, model, processor


def test_embed_a_dataset_writes_every_row_with_its_id_and_the_models_embeddings(saved_model, shapes_dir, tmp_path):
    directory, model, processor = saved_model
    out = tmp_path / "shapes.parquet"
    run_embed(["--model", str(directory), "--data", str(shapes_dir), "--split", "test", "--out", str(out),
               "--embedding", *NAMES, "--batch-size", "5", "--no-progress"])
    table = pq.read_table(out).to_pydict()
    rows = [json.loads(line) for line in (shapes_dir / "test" / "metadata.jsonl").read_text().splitlines()]
    assert list(table) == ["id", "modality", "text", *NAMES]
    assert table["modality"] == ["image"] * len(rows) + ["text"] * len(rows)
    assert table["id"] == [str(i) for i in range(len(rows))] * 2
    assert table["text"][len(rows):] == [row["caption"] for row in rows]
    expected = extract_embeddings(model, processor, [row["caption"] for row in rows], "text", NAMES)
    for name in NAMES:
        got = torch.tensor(np.asarray(table[name][len(rows):], dtype=np.float32))
        torch.testing.assert_close(got, expected[name], rtol=1e-5, atol=1e-5)


def test_embed_a_folder_skips_bad_images_and_search_finds_the_best(saved_model, shapes_dir, tmp_path, capsys):
    directory, model, processor = saved_model
    folder = tmp_path / "photos"
    shutil.copytree(shapes_dir / "test", folder, ignore=shutil.ignore_patterns("*.jsonl"))
    (folder / "broken.png").write_bytes(b"not an image")
    out = tmp_path / "photos.parquet"
    run_embed(["--model", str(directory), "--images", str(folder), "--out", str(out), "--no-progress"])
    table = pq.read_table(out).to_pydict()
    images = sorted(p.name for p in folder.glob("*.png") if p.name != "broken.png")
    assert table["id"] == images and set(table["modality"]) == {"image"}
    hits = run_search(["--index", str(out), "--model", str(directory), "--query", "a red circle", "--top-k", "3"])
    stored = torch.tensor(np.asarray(table["pooler"], dtype=np.float32))
    query = extract_embeddings(model, processor, ["a red circle"], "text")["pooler"]
    scores = score_matrix(stored, query, model.objective.alignment_critic)[:, 0]
    assert [item for item, _ in hits] == [images[i] for i in scores.topk(3).indices.tolist()]
    assert images[scores.argmax()] in capsys.readouterr().out


def test_embed_texts_to_npy_and_bad_input(saved_model, tmp_path):
    directory, _, _ = saved_model
    texts = tmp_path / "texts.txt"
    texts.write_text("a red circle\na small cross at the bottom\n")
    written = run_embed(["--model", str(directory), "--texts", str(texts), "--out", str(tmp_path / "t.npy"),
                         "--embedding", "pooler", "shared", "--no-progress"])
    assert sorted(p.name for p in written) == ["t.model.json", "t.text.ids.json", "t.text.pooler.npy", "t.text.shared.npy"]
    assert json.loads((tmp_path / "t.model.json").read_text())["embeddings"] == {"pooler": 8, "shared": 16}
    assert np.load(tmp_path / "t.text.shared.npy").shape == (2, 16)
    with pytest.raises(SystemExit):
        run_embed(["--model", str(directory), "--texts", str(tmp_path / "missing.txt"), "--out", str(tmp_path / "x.parquet")])
    with pytest.raises(SystemExit):
        run_embed(["--model", str(directory), "--texts", str(texts), "--out", str(tmp_path / "x.csv")])


def test_search_texts_by_image(saved_model, shapes_dir, tmp_path):
    directory, model, processor = saved_model
    captions = [json.loads(line)["caption"] for line in (shapes_dir / "test" / "metadata.jsonl").read_text().splitlines()]
    texts = tmp_path / "captions.txt"
    texts.write_text("\n".join(captions) + "\n")
    out = tmp_path / "captions.parquet"
    run_embed(["--model", str(directory), "--texts", str(texts), "--out", str(out), "--no-progress"])
    image = sorted((shapes_dir / "test").glob("*.png"))[0]
    hits = run_search(["--index", str(out), "--model", str(directory), "--query-image", str(image), "--top-k", "2"])
    stored = torch.tensor(np.asarray(pq.read_table(out).to_pydict()["pooler"], dtype=np.float32))
    query = extract_embeddings(model, processor, [image], "image")["pooler"]
    scores = score_matrix(query, stored, model.objective.alignment_critic)[0]
    assert [item for item, _ in hits] == [str(i) for i in scores.topk(2).indices.tolist()]


@pytest.mark.slow
def test_console_script_exits_0(saved_model, tmp_path):
    directory, _, _ = saved_model
    texts = tmp_path / "texts.txt"
    texts.write_text("a red circle\n")
    script = Path(sys.executable).parent / "factorcl-embed"
    command = [str(script)] if script.exists() else [sys.executable, "-m", "factorcl_hf.evaluation.export"]
    done = subprocess.run([*command, "--model", str(directory), "--texts", str(texts), "--out", str(tmp_path / "t.parquet")],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert pq.read_table(tmp_path / "t.parquet").num_rows == 1
