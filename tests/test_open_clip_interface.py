"""factorcl_hf.evaluation.open_clip_interface (open_clip's model interface over a FactorCL model)
and benchmarks/clip_benchmark_compare.py (LAION clip_benchmark's own evaluation functions on it,
beside `python -m factorcl_hf.evaluation`)."""

import json
import sys

import pytest
import torch
import torch.nn.functional as F

from factorcl_hf.evaluation.embed import embed_images, embed_texts
from factorcl_hf.evaluation.open_clip_interface import create_model_and_transforms
from factorcl_hf.testing_utils import save_tiny_model


def test_encode_image_and_text_are_the_packages_embeddings(photo_index):
    from PIL import Image

    paths = sorted(photo_index.images.iterdir())
    for embedding in ("pooler", "shared", "unique"):
        model, preprocess, tokenizer = create_model_and_transforms(str(photo_index.model_dir), embedding)
        with torch.no_grad():
            images = model.encode_image(torch.stack([preprocess(Image.open(path)) for path in paths]))
            texts = model.encode_text(tokenizer(photo_index.captions))
            image_features, text_features, scale = model(torch.stack([preprocess(str(paths[0]))]), tokenizer("a circle"))
        want_images = embed_images(photo_index.model, photo_index.processor, paths, embedding)
        want_texts = embed_texts(photo_index.model, photo_index.processor, photo_index.captions, embedding)
        torch.testing.assert_close(images, want_images, rtol=0, atol=1e-5)
        torch.testing.assert_close(texts, want_texts, rtol=0, atol=1e-5)
        torch.testing.assert_close(image_features[0], F.normalize(want_images[0], dim=-1), rtol=0, atol=1e-5)
        assert text_features.shape == (1, want_texts.shape[1])
    assert scale.item() == pytest.approx(1 / photo_index.model.config.logit_temperature)
    # open_clip's tokenizers return a bare id tensor; padding after the end-of-text id changes nothing.
    tokens = tokenizer(photo_index.captions)
    with torch.no_grad():
        torch.testing.assert_close(model.encode_text(tokens["input_ids"]), texts, rtol=0, atol=1e-5)


def test_an_embedding_the_objective_lacks_is_refused_before_any_work(tmp_path):
    save_tiny_model(tmp_path, ["a red circle"], objective="simclr", head_dim=8, head_hidden_dim=16)
    with pytest.raises(ValueError, match=r"`embedding` must be one of .* for objective 'simclr', got 'unique'"):
        create_model_and_transforms(str(tmp_path), "unique")


@pytest.fixture(scope="module")
def shapes_model(tmp_path_factory, shapes_dir):
    captions = [json.loads(line)["caption"] for split in ("train", "test")
                for line in (shapes_dir / split / "metadata.jsonl").read_text().splitlines()]
    directory = tmp_path_factory.mktemp("shapes_model")
    save_tiny_model(directory, captions + ["a small circle square triangle cross at the top bottom"],
                    head_dim=8, head_hidden_dim=16, critic_hidden_dim=16, critic_embed_dim=8)
    return directory


def test_clip_benchmark_runs_on_the_model_and_agrees_with_the_package(shapes_model, shapes_dir, tmp_path):
    pytest.importorskip("clip_benchmark", reason="the clip-benchmark extra")
    from benchmarks import clip_benchmark_compare

    out = tmp_path / "record.json"
    record = clip_benchmark_compare.run(["--model", str(shapes_model), "--data", str(shapes_dir), "--out", str(out),
                                         "--work-dir", str(tmp_path / "work"), "--batch-size", "5"])
    assert json.loads(out.read_text()) == record
    assert record["num_samples"] == 12 and record["class_names"] == sorted(record["class_names"])
    # clip_benchmark read the shards: every test image was classified and retrieved.
    theirs = record["clip_benchmark"]
    assert set(theirs["zeroshot_classification"]) == {"acc1", "acc5", "mean_per_class_recall"}
    assert theirs["zeroshot_classification"]["acc5"] is None  # fewer than five classes: clip_benchmark's NaN
    rows = {row["metric"]: row for row in record["side_by_side"]}
    assert rows["zero-shot top-1"]["clip_benchmark"] == pytest.approx(rows["zero-shot top-1"]["package"], abs=1e-6)
    for name, row in rows.items():
        if name.startswith(("image_to_text", "text_to_image")):
            # The same ranking under each side's tie rule gives each side's figure.
            assert row["clip_benchmark"] == pytest.approx(row["package_scores_first_index_wins"], abs=1e-6), name
            assert row["package"] == pytest.approx(row["package_scores_random_ties"], abs=1e-6), name
    assert "--task zero_shot" in record["package_commands"]["zero_shot"]


def test_missing_clip_benchmark_exits_with_the_install_command(monkeypatch):
    from benchmarks import clip_benchmark_compare

    monkeypatch.setitem(sys.modules, "clip_benchmark", None)
    monkeypatch.setitem(sys.modules, "clip_benchmark.metrics", None)
    with pytest.raises(SystemExit, match=r"factorcl-hf\[clip-benchmark\]"):
        clip_benchmark_compare.import_clip_benchmark()


def test_a_trained_alignment_critic_is_announced(tmp_path, caplog):
    save_tiny_model(tmp_path, ["a red circle"], alignment_critic_type="concat", head_dim=8, head_hidden_dim=16,
                    critic_hidden_dim=16, critic_embed_dim=8)
    with caplog.at_level("WARNING"):
        create_model_and_transforms(str(tmp_path))
    assert "trained 'concat' alignment critic" in caplog.text
