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

from factorcl_hf.apps.embed import run_embed
from factorcl_hf.apps.search import run_search
from factorcl_hf.evaluation.embed import extract_embeddings
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
    directory, model, processor = saved_model
    texts = tmp_path / "texts.txt"
    texts.write_text("a red circle\na small cross at the bottom\n")
    written = run_embed(["--model", str(directory), "--texts", str(texts), "--out", str(tmp_path / "t.npy"),
                         "--embedding", "pooler", "shared", "--no-progress"])
    assert sorted(p.name for p in written) == ["t.model.json", "t.text.ids.json", "t.text.pooler.npy", "t.text.shared.npy"]
    expected = extract_embeddings(model, processor, texts.read_text().splitlines(), "text", ("pooler", "shared"))
    sizes = {name: value.shape[1] for name, value in expected.items()}
    assert json.loads((tmp_path / "t.model.json").read_text())["embeddings"] == sizes
    for name, value in expected.items():
        np.testing.assert_allclose(np.load(tmp_path / f"t.text.{name}.npy"), value.numpy(), atol=1e-5)
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
    directory, model, processor = saved_model
    texts = tmp_path / "texts.txt"
    texts.write_text("a red circle\n")
    script = Path(sys.executable).parent / "factorcl-embed"
    command = [str(script)] if script.exists() else [sys.executable, "-m", "factorcl_hf.apps.embed"]
    done = subprocess.run([*command, "--model", str(directory), "--texts", str(texts), "--out", str(tmp_path / "t.parquet")],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert pq.read_table(tmp_path / "t.parquet").num_rows == 1


def test_embed_checks_faiss_before_any_work(saved_model, tmp_path, monkeypatch, capsys):
    """Issue 26, item 4: --faiss without faiss stops before the model loads."""
    from factorcl_hf.apps import embed as export

    directory, _, _ = saved_model
    monkeypatch.setitem(sys.modules, "faiss", None)  # `import faiss` raises ImportError

    def no_model(*args, **kwargs):
        raise AssertionError("the model was loaded before the faiss check")

    monkeypatch.setattr(export, "load_model", no_model)
    texts = tmp_path / "texts.txt"
    texts.write_text("a red circle\n")
    with pytest.raises(SystemExit) as exit_:
        run_embed(["--model", str(directory), "--texts", str(texts), "--out", str(tmp_path / "t.parquet"), "--faiss"])
    assert exit_.value.code == 2 and "`--faiss` needs the faiss package" in capsys.readouterr().err


def test_embed_a_dataset_to_npy_and_refuse_a_folder_as_out(saved_model, shapes_dir, tmp_path):
    """Issue 26, item 5: --data DIR --out x.npy writes ids as JSON lists (it crashed on a
    datasets Column and left a partial .npy); an --out that is a folder is refused first."""
    directory, _, _ = saved_model
    written = run_embed(["--model", str(directory), "--data", str(shapes_dir), "--split", "test",
                         "--out", str(tmp_path / "d.npy"), "--no-progress"])
    rows = len((shapes_dir / "test" / "metadata.jsonl").read_text().splitlines())
    for modality in ("image", "text"):
        assert json.loads((tmp_path / f"d.{modality}.ids.json").read_text()) == [str(i) for i in range(rows)]
        assert np.load(tmp_path / f"d.{modality}.pooler.npy").shape[0] == rows
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")], "staging files left behind"
    assert len(written) == 5
    (tmp_path / "folder.parquet").mkdir()
    with pytest.raises(SystemExit):
        run_embed(["--model", str(directory), "--texts", str(tmp_path / "d.text.ids.json"),
                   "--out", str(tmp_path / "folder.parquet")])


def test_search_shows_the_modality_and_refuses_another_models_index(saved_model, shapes_dir, tmp_path, capsys):
    """Issue 26, item 6: hits of a mixed image+text index say which modality they are; an
    index written by another model is refused, naming both."""
    directory, _, _ = saved_model
    index = tmp_path / "mixed.parquet"
    run_embed(["--model", str(directory), "--data", str(shapes_dir), "--split", "test", "--out", str(index),
               "--no-progress"])
    capsys.readouterr()
    hits = run_search(["--index", str(index), "--model", str(directory), "--query", "a red circle", "--top-k", "3"])
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(hits) == len(lines) == 3 and all(line.split()[2] == "image" for line in lines)
    record = json.loads(pq.read_schema(index).metadata[b"factorcl"])
    assert record["model"] == str(directory) and len(record["fingerprint"]) == 64
    other = tmp_path / "other"
    captions = [json.loads(line)["caption"] for line in (shapes_dir / "test" / "metadata.jsonl").read_text().splitlines()]
    save_tiny_model(other, captions + ["a red circle"], seed=3, head_dim=8, head_hidden_dim=16, critic_hidden_dim=16,
                    critic_embed_dim=8)
    with pytest.raises(SystemExit):
        run_search(["--index", str(index), "--model", str(other), "--query", "a red circle"])
    assert f"was written by another model ('{directory}'" in capsys.readouterr().err


def test_every_console_script_names_a_function_of_the_package():
    """pyproject's entry points follow the modules they name (factorcl-embed and factorcl-search
    live in factorcl_hf.apps); a stale one would install a script that fails on import."""
    import importlib

    import tomllib

    scripts = tomllib.loads((Path(__file__).resolve().parent.parent / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts["factorcl-embed"] == "factorcl_hf.apps.embed:main"
    assert scripts["factorcl-search"] == "factorcl_hf.apps.search:main"
    for name, target in scripts.items():
        module, function = target.split(":")
        assert callable(getattr(importlib.import_module(module), function)), name
