import base64
import io
import json
import math
import runpy
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from factorcl_hf.estimators import ConcatCritic
from factorcl_hf.evaluation.__main__ import run as run_cli
from factorcl_hf.evaluation.embed import available_embeddings, embed_images, embed_pairs, extract_embeddings
from factorcl_hf.evaluation.irfl import (
    IRFLItem,
    evaluate_irfl_multiple_choice,
    evaluate_irfl_type_probe,
    irfl_image_filename,
    load_irfl_csv,
    multiple_choice_accuracy,
)
from factorcl_hf.evaluation.probe import linear_probe_accuracy
from factorcl_hf.evaluation.retrieval import expected_hits, recall_at_k
from factorcl_hf.evaluation.zero_shot import topk_accuracy, zero_shot_logits
from factorcl_hf.research.information import estimate_label_information, label_entropy
from factorcl_hf.testing_utils import save_tiny_model

REPO = Path(__file__).resolve().parent.parent
SMALL_HEADS = dict(head_dim=8, head_hidden_dim=16, critic_hidden_dim=16, critic_embed_dim=8, logit_temperature=0.07)


# --------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def saved_model(tmp_path_factory, shapes_dir):
    """A tiny FactorCL-SSL model saved with its processor; returns (dir, model, processor)."""
    captions = [json.loads(line)["caption"] for line in (shapes_dir / "train" / "metadata.jsonl").read_text().splitlines()]
    directory = tmp_path_factory.mktemp("model")
    model, processor = save_tiny_model(directory, captions + ["a photo of a circle.", "a photo of a square."], **SMALL_HEADS)
    return directory, model, processor


def shapes_test_split(shapes_dir):
    rows = [json.loads(line) for line in (shapes_dir / "test" / "metadata.jsonl").read_text().splitlines()]
    return [shapes_dir / "test" / row["file_name"] for row in rows], [row["caption"] for row in rows], rows


def forward_logits(model, processor, images, texts):
    """logits_per_image from the model's own forward pass (independent of the evaluation code)."""
    inputs = processor(text=list(texts), images=[Image.open(p).convert("RGB") for p in images], return_tensors="pt",
                       padding=True, truncation=True)
    with torch.no_grad():
        return model(**inputs).logits_per_image


# --------------------------------------------------------------------------- retrieval
def loop_recall(scores, text_to_image, k):
    """Plain loops, for scores without ties: a query hits if fewer than k wrong candidates
    score above its best correct one."""
    n_images, n_texts = scores.shape
    hits_i2t = []
    for i in range(n_images):
        best = max(scores[i, j] for j in range(n_texts) if text_to_image[j] == i)
        hits_i2t.append(sum(1 for j in range(n_texts) if text_to_image[j] != i and scores[i, j] > best) < k)
    hits_t2i = []
    for j in range(n_texts):
        best = scores[text_to_image[j], j]
        hits_t2i.append(sum(1 for i in range(n_images) if i != text_to_image[j] and scores[i, j] > best) < k)
    return np.mean(hits_i2t), np.mean(hits_t2i)


def monte_carlo_recall(scores, text_to_image, k, repeats=4000, seed=0):
    """Recall@k averaged over random tie-breakings: jitter below the score gap, then top-k."""
    scores = torch.as_tensor(scores, dtype=torch.float64)
    generator = torch.Generator().manual_seed(seed)
    jittered = scores + 0.5 * torch.rand((repeats, *scores.shape), generator=generator, dtype=torch.float64)
    correct = torch.as_tensor(text_to_image)[None, :] == torch.arange(scores.shape[0])[:, None]
    i2t = correct[torch.arange(scores.shape[0])[None, :, None], jittered.topk(k, dim=2).indices].any(-1)
    t2i_top = jittered.transpose(1, 2).topk(k, dim=2).indices  # [R, n_texts, k] image indices
    t2i = (t2i_top == torch.as_tensor(text_to_image)[None, :, None]).any(-1)
    return i2t.double().mean().item(), t2i.double().mean().item()


@pytest.mark.parametrize("n_images, texts_per_image", [(12, 1), (5, 3)])
def test_recall_matches_brute_force(n_images, texts_per_image):
    rng = np.random.default_rng(n_images)
    owner = np.repeat(np.arange(n_images), texts_per_image)
    rng.shuffle(owner)
    text_to_image = owner if texts_per_image > 1 else None
    if texts_per_image == 1:
        owner = np.arange(n_images)
    # Distinct scores: exact agreement with the loops.
    distinct = rng.standard_normal((n_images, len(owner)))
    metrics = recall_at_k(distinct, text_to_image, ks=(1, 2, 5))
    for k in (1, 2, 5):
        i2t, t2i = loop_recall(distinct, owner, k)
        assert metrics[f"image_to_text_R@{k}"] == pytest.approx(i2t)
        assert metrics[f"text_to_image_R@{k}"] == pytest.approx(t2i)
    # Small integer scores: many ties, broken at random in expectation.
    tied = rng.integers(0, 4, size=(n_images, len(owner))).astype(float)
    metrics = recall_at_k(tied, text_to_image, ks=(1, 2, 5))
    for k in (1, 2, 5):
        i2t, t2i = monte_carlo_recall(tied, owner, k)
        assert metrics[f"image_to_text_R@{k}"] == pytest.approx(i2t, abs=0.015)
        assert metrics[f"text_to_image_R@{k}"] == pytest.approx(t2i, abs=0.015)


def test_recall_perfect_diagonal_and_known_permutation():
    n = 12
    perfect = recall_at_k(torch.eye(n) - 0.01 * torch.rand(n, n))
    assert all(value == 1.0 for value in perfect.values())

    # Image i scores text perm[i] highest and every other text 0: a fixed point of perm is a
    # hit; otherwise one wrong text is ahead and the right one ties with n - 2 wrong ones.
    perm = torch.tensor([0, 1, 2, 4, 3, 6, 7, 5, 9, 8, 11, 10])
    fixed = (perm == torch.arange(n)).float().mean().item()
    assert fixed == 3 / 12
    metrics = recall_at_k(F.one_hot(perm, n).float(), ks=(1, 5, 12))
    for direction in ("image_to_text", "text_to_image"):
        assert metrics[f"{direction}_R@1"] == pytest.approx(fixed)
        assert metrics[f"{direction}_R@5"] == pytest.approx(fixed + (1 - fixed) * 4 / 11)
        assert metrics[f"{direction}_R@12"] == pytest.approx(1.0)
    # A constant scorer is exactly at chance.
    constant = recall_at_k(torch.zeros(n, n), ks=(1, 5))
    assert constant["image_to_text_R@1"] == pytest.approx(1 / n)
    assert constant["text_to_image_R@5"] == pytest.approx(5 / n)


def test_retrieval_inputs_are_checked():
    with pytest.raises(ValueError, match="text_to_image"):
        recall_at_k(torch.zeros(3, 4))
    with pytest.raises(ValueError, match="NaN"):
        recall_at_k(torch.tensor([[0.0, float("nan")], [1.0, 0.0]]))
    with pytest.raises(ValueError, match="ks"):
        recall_at_k(torch.eye(3), ks=(0,))
    with pytest.raises(ValueError, match="row 1"):
        expected_hits(torch.eye(2), torch.tensor([[True, False], [False, False]]), 1)


# --------------------------------------------------------------------------- zero-shot
def test_zero_shot_topk_on_hand_made_embeddings():
    n_classes, dim = 7, 7
    classes = torch.eye(n_classes, dim)
    labels = torch.tensor([0, 1, 2, 3, 4, 5, 6, 0])
    # Images 0-4 point at their class; images 5-7 point mostly at class (label + 3) % 7 and a
    # little at their own, so their own class is second: top-1 misses, top-5 hits.
    images = classes[labels].clone()
    for i in (5, 6, 7):
        images[i] = 0.3 * classes[labels[i]] + 1.0 * classes[(labels[i] + 3) % n_classes]
    prompts = torch.stack([classes, classes + 0.05 * torch.randn(n_classes, dim)], dim=1)  # two templates
    logits = zero_shot_logits(images, prompts)
    assert topk_accuracy(logits, labels) == {"top1": pytest.approx(5 / 8), "top5": pytest.approx(1.0)}
    assert "top5" not in topk_accuracy(logits[:, :4], torch.tensor([0, 1, 2, 3, 0, 1, 2, 3]))  # only 4 classes

    # CLIP prompt ensembling: normalise, average, renormalise, then cosine.
    ensembled = F.normalize(F.normalize(prompts, dim=-1).mean(1), dim=-1)
    assert torch.allclose(logits, F.normalize(images, dim=-1) @ ensembled.T, atol=1e-6)
    # A trained critic instead averages its scores over templates.
    torch.manual_seed(0)
    critic = ConcatCritic(dim, dim, hidden_dim=8)
    with torch.no_grad():
        expected = torch.stack([critic(images, prompts[:, t]) for t in range(2)]).mean(0)
    assert torch.allclose(zero_shot_logits(images, prompts, critic), expected, atol=1e-6)


def test_zero_shot_with_a_model_matches_its_forward(saved_model, shapes_dir):
    _, model, processor = saved_model
    images, _, rows = shapes_test_split(shapes_dir)
    names = ["circle", "square", "triangle", "cross"]
    labels = [names.index(row["shape"]) for row in rows]
    from factorcl_hf.evaluation.zero_shot import evaluate_zero_shot

    metrics = evaluate_zero_shot(model, processor, images, labels, names, templates=("a photo of a {}.",))
    logits = forward_logits(model, processor, images, [f"a photo of a {name}." for name in names])
    assert metrics["top1"] == pytest.approx(topk_accuracy(logits, labels, ks=(1,))["top1"])


# --------------------------------------------------------------------------- embeddings
def test_embeddings_equal_the_models_feature_methods(saved_model, shapes_dir):
    _, model, processor = saved_model
    images, captions, _ = shapes_test_split(shapes_dir)
    names = available_embeddings(model)
    assert names == ("pooler", "shared", "unique", "factorized", "backbone")
    got = extract_embeddings(model, processor, images, "image", names, batch_size=5)
    inputs = processor(images=[Image.open(p).convert("RGB") for p in images], return_tensors="pt")
    with torch.no_grad():
        expected = model.get_image_features(pixel_values=inputs["pixel_values"])
    fields = {"pooler": expected.pooler_output, "shared": expected.shared_embeds, "unique": expected.unique_embeds,
              "factorized": expected.factorized_embeds, "backbone": expected.backbone_embeds}
    for name in names:
        assert torch.allclose(got[name], fields[name], atol=1e-5), name
    # A pair's embedding: its image's, then its caption's (each from the model's feature method).
    pairs = embed_pairs(model, processor, images[:3], captions[:3], "shared")["shared"]
    tokens = processor(text=captions[:3], padding=True, truncation=True, return_tensors="pt")
    with torch.no_grad():
        text = model.get_text_features(input_ids=tokens["input_ids"], attention_mask=tokens["attention_mask"])
    dim = expected.shared_embeds.shape[1]
    assert pairs.shape == (3, 2 * dim)
    assert torch.allclose(pairs[:, :dim], expected.shared_embeds[:3], atol=1e-5)
    assert torch.allclose(pairs[:, dim:], text.shared_embeds, atol=1e-5)
    with pytest.raises(ValueError, match="embedding"):
        embed_images(model, processor, images, "nonsense")


# --------------------------------------------------------------------------- IRFL
def solid(colour, size=32):
    return Image.new("RGB", (size, size), colour)


@pytest.fixture
def irfl_files(tmp_path):
    """A small IRFL-format CSV: answers red/orange/purple, distractors blue/green/yellow.

    Entries are paths relative to the CSV or to the image folder, a URL and base64 data."""
    images = tmp_path / "images"
    images.mkdir()
    for name, colour in [("answer1.png", "red"), ("answer2.png", "orange"), ("d1.png", "blue"), ("d2.png", "green")]:
        solid(colour).save(images / name)
    url = "https://example.org/figurative/photo.jpg"
    solid("yellow").save(images / irfl_image_filename(url), format="JPEG")
    buffer = io.BytesIO()
    solid("purple").save(buffer, format="PNG")
    inline = base64.b64encode(buffer.getvalue()).decode()
    rows = [
        ("as brave as a lion", "simile", ["images/answer1.png"], ["images/d1.png", "d2.png"]),
        ("a heart of stone", "metaphor", ["images/answer2.png"], ["d2.png", url]),
        ("spill the beans", "idiom", [inline], ["images/d1.png", "d2.png"]),
    ]
    import csv

    path = tmp_path / "task.csv"
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["query", "distractors", "answer", "figurative_type", "phrase"])
        for phrase, kind, answer, distractors in rows:
            writer.writerow([phrase, json.dumps(distractors), json.dumps(answer), kind, phrase])
    return path, images


def colour_of(image):
    image = Image.open(image) if isinstance(image, (str, Path)) else image
    return image.convert("RGB").getpixel((5, 5))


def test_irfl_loader_uses_the_answer_column(irfl_files):
    path, images = irfl_files
    items = load_irfl_csv(path, image_root=images)
    assert [item.phrase for item in items] == ["as brave as a lion", "a heart of stone", "spill the beans"]
    assert [item.figurative_type for item in items] == ["simile", "metaphor", "idiom"]
    # The matching image is the answer's colour, never a distractor's.
    assert [colour_of(item.answer) for item in items] == [(255, 0, 0), (255, 165, 0), (128, 0, 128)]
    assert [colour_of(d) for d in items[0].distractors] == [(0, 0, 255), (0, 128, 0)]
    yellow = colour_of(items[1].distractors[1])
    assert yellow[0] > 240 and yellow[1] > 240 and yellow[2] < 20  # URL resolved to the downloaded file
    assert colour_of(items[0].candidates[0]) == colour_of(items[0].answer)


def test_irfl_loader_errors_and_skipping(irfl_files):
    path, images = irfl_files
    # Without image_root, "d2.png" (in the image folder) is not found next to the CSV ...
    with pytest.raises(ValueError, match=r"line 2, column 'distractors': 'd2.png' is neither an image file"):
        load_irfl_csv(path)
    # ... and a URL has nowhere to be looked up.
    url_only = path.with_name("url_only.csv")
    url_only.write_text('phrase,figurative_type,answer,distractors\nx,idiom,"[""https://a.b/c.jpg""]",[]\n')
    with pytest.raises(ValueError, match="line 2, column 'answer'.*URL; pass `image_root`"):
        load_irfl_csv(url_only)
    (images / "d1.png").unlink()
    with pytest.raises(ValueError, match=r"task.csv line 2, column 'distractors'"):
        load_irfl_csv(path, image_root=images)
    kept = load_irfl_csv(path, image_root=images, skip_missing=True)
    assert [item.phrase for item in kept] == ["a heart of stone"]
    bad = path.with_name("bad.csv")
    bad.write_text("phrase,answer\nx,[]\n")
    with pytest.raises(ValueError, match="lacks IRFL columns"):
        load_irfl_csv(bad)


def test_multiple_choice_accuracy_by_hand():
    scores = torch.tensor([[3.0, 1.0, 2.0], [0.0, 5.0, 1.0], [2.0, 2.0, 1.0], [4.0, 1.0, float("-inf")]])
    # Row 0 right, row 1 wrong, row 2 a two-way tie (half right), row 3 right (-inf pads a missing candidate).
    assert multiple_choice_accuracy(scores) == pytest.approx(2.5 / 4)
    assert multiple_choice_accuracy(scores, correct_index=[1, 1, 2, 0]) == pytest.approx(2 / 4)
    with pytest.raises(ValueError, match="correct_index"):
        multiple_choice_accuracy(scores, correct_index=[3, 0, 0, 0])


def test_irfl_multiple_choice_and_type_probe_with_a_model(saved_model, shapes_dir):
    _, model, processor = saved_model
    images, captions, rows = shapes_test_split(shapes_dir)
    n = 8
    items = [IRFLItem(captions[i], ("idiom", "simile")[i % 2], images[i], [images[(i + 1) % n], images[(i + 5) % n]])
             for i in range(n)]
    metrics = evaluate_irfl_multiple_choice(model, processor, items, num_phrase_candidates=3)
    expected = np.mean([
        forward_logits(model, processor, item.candidates, [item.phrase])[:, 0].argmax().item() == 0 for item in items
    ])
    assert metrics["phrase_to_image_accuracy"] == pytest.approx(expected)
    assert metrics["num_image_candidates"] == 3 and 0 <= metrics["image_to_phrase_accuracy"] <= 1

    probe = evaluate_irfl_type_probe(model, processor, items, embeddings=["shared"], test_fraction=0.5, seed=0)
    from sklearn.model_selection import train_test_split

    labels = np.array([i % 2 for i in range(n)])  # idiom=0, simile=1 (sorted type names)
    train_idx, test_idx = train_test_split(np.arange(n), test_size=0.5, random_state=0, stratify=labels)
    features = torch.cat([extract_embeddings(model, processor, images[:n], "image", "shared")["shared"],
                          extract_embeddings(model, processor, captions[:n], "text", "shared")["shared"]], dim=1)
    assert probe["shared_accuracy"] == pytest.approx(
        linear_probe_accuracy(features[train_idx], labels[train_idx], features[test_idx], labels[test_idx])
    )
    assert probe["chance_accuracy"] == pytest.approx(0.5)


# --------------------------------------------------------------------------- information
def test_label_information_separates_informative_from_noise():
    rng = np.random.default_rng(0)
    n, num_labels = 500, 4
    labels = rng.integers(0, num_labels, n)
    informative = np.eye(num_labels)[labels] + 0.1 * rng.standard_normal((n, num_labels))
    noise = rng.standard_normal((n, num_labels))
    kwargs = dict(num_labels=num_labels, steps=80, batch_size=64, hidden_dim=32)
    split = 300
    rich = estimate_label_information(informative[:split], labels[:split], informative[split:], labels[split:], **kwargs)
    poor = estimate_label_information(noise[:split], labels[:split], noise[split:], labels[split:], **kwargs)
    entropy = label_entropy(labels[split:])
    assert entropy == pytest.approx(math.log(4), abs=0.02)
    # The label is a function of the informative features: I(Z; Y) = H(Y) ~ log 4. (With
    # repeated labels in a batch InfoNCE can only approach log 4 as the critic sharpens.)
    assert rich["infonce"] > 0.8 * entropy
    assert rich["infonce"] <= math.log(64) + 1e-6
    assert abs(poor["infonce"]) < 0.15 and abs(poor["nce_club"]) < 0.3
    assert rich["nce_club"] > poor["nce_club"] + 0.5


# --------------------------------------------------------------------------- CLI
def test_cli_retrieval_writes_json_matching_the_forward_pass(saved_model, shapes_dir, tmp_path, capsys):
    directory, model, processor = saved_model
    out = tmp_path / "results.json"
    record = run_cli(["--model", str(directory), "--task", "retrieval", "--data", str(shapes_dir),
                      "--out", str(out), "--no-progress", "--device", "cpu"])
    assert json.loads(out.read_text()) == json.loads(json.dumps(record))
    assert record["split"] == "test" and record["num_samples"] == 12
    images, captions, _ = shapes_test_split(shapes_dir)
    expected = recall_at_k(forward_logits(model, processor, images, captions))
    assert record["metrics"] == pytest.approx(expected)
    assert "image_to_text_R@1" in capsys.readouterr().out


def test_cli_probe_and_information_tasks(saved_model, shapes_dir, tmp_path):
    directory, _, _ = saved_model
    common = ["--model", str(directory), "--data", str(shapes_dir), "--no-progress", "--device", "cpu"]
    probe = run_cli(common + ["--task", "probe", "--embedding", "shared", "unique"])
    assert set(probe["metrics"]) == {"shared_accuracy", "unique_accuracy"}
    info = run_cli(common + ["--task", "information", "--critic-steps", "3"])
    assert set(info["metrics"]) == {f"{m}_{e}_{b}" for m in ("image", "text") for e in ("shared", "unique")
                                    for b in ("infonce", "nce_club")} | {"label_entropy"}
    with pytest.raises(SystemExit):
        run_cli(common + ["--task", "retrieval", "--caption-column", "missing"])


def test_cli_reads_csv_with_relative_image_paths(saved_model, shapes_dir, tmp_path):
    directory, _, _ = saved_model
    _, _, rows = shapes_test_split(shapes_dir)
    table = tmp_path / "pairs.csv"
    lines = ["image,caption"] + [f"{shapes_dir.name}/test/{row['file_name']},\"{row['caption']}\"" for row in rows]
    table.write_text("\n".join(lines) + "\n")
    # Paths are relative to the CSV's folder (and stay inside it: a symlink out would be refused).
    shutil.copytree(shapes_dir, tmp_path / shapes_dir.name)
    common = ["--model", str(directory), "--task", "retrieval", "--no-progress", "--device", "cpu"]
    from_csv = run_cli(common + ["--data", str(table)])
    from_folder = run_cli(common + ["--data", str(shapes_dir)])
    assert from_csv["metrics"] == from_folder["metrics"]
    # A `split` column names each row's split: --split test reads only those rows.
    decoys = [f"{shapes_dir.name}/train/{path.name},\"a decoy\",train" for path in sorted((shapes_dir / "train").glob("*.png"))]
    table.write_text("\n".join(["image,caption,split", *(f"{line},test" for line in lines[1:]), *decoys]) + "\n")
    with_split = run_cli(common + ["--data", str(table), "--split", "test"])
    assert with_split["num_samples"] == len(rows) and with_split["metrics"] == from_folder["metrics"]


def test_zero_shot_cli_takes_class_names_from_the_configs_id2label(saved_model, shapes_dir, tmp_path):
    """Bare integer labels and no --class-names: the names the model was trained with."""
    from factorcl_hf.data.shapes import SHAPES

    directory, model, processor = saved_model
    named = tmp_path / "named"
    model.config.id2label = dict(enumerate(SHAPES))
    try:
        model.save_pretrained(named)
    finally:
        model.config.id2label = {0: "LABEL_0", 1: "LABEL_1"}
    processor.save_pretrained(named)
    common = ["--task", "zero_shot", "--data", str(shapes_dir), "--label-column", "shape_idx", "--no-progress",
              "--templates", "a photo of a {}."]
    record = run_cli(["--model", str(named), *common])
    assert record["class_names"] == list(SHAPES) and 0 <= record["metrics"]["top1"] <= 1
    with pytest.raises(SystemExit):
        run_cli(["--model", str(directory), *common])


# --------------------------------------------------------------------------- pipeline and example
def test_stock_zero_shot_pipeline_matches_softmax_of_logits(saved_model, shapes_dir):
    from transformers import pipeline

    directory, model, processor = saved_model
    images, _, _ = shapes_test_split(shapes_dir)
    labels = ["circle", "square", "cross"]
    classifier = pipeline("zero-shot-image-classification", model=str(directory))
    result = classifier(Image.open(images[0]), candidate_labels=labels, hypothesis_template="a {}")
    probs = forward_logits(model, processor, images[:1], [f"a {label}" for label in labels]).softmax(-1)[0]
    assert {r["label"]: r["score"] for r in result} == pytest.approx(dict(zip(labels, probs.tolist())), abs=1e-5)


def test_zero_shot_retrieval_example(saved_model, shapes_dir, capsys):
    directory, model, processor = saved_model
    example = runpy.run_path(str(REPO / "examples" / "zero_shot_retrieval.py"))
    query = "a large circle at the top"
    results = example["main"](["--model", str(directory), "--images", str(shapes_dir / "test"),
                               "--query", query, "--top-k", "3"])
    images, _, _ = shapes_test_split(shapes_dir)
    paths = sorted(images)
    scores = forward_logits(model, processor, paths, [query])[:, 0]
    expected = [str(paths[i]) for i in scores.topk(3).indices.tolist()]
    assert [path for path, _ in results[0][1]] == expected
    assert query in capsys.readouterr().out


def test_zero_shot_retrieval_example_skips_undecodable_images(saved_model, shapes_dir, tmp_path, capsys):
    import shutil

    directory, model, processor = saved_model
    images, _, _ = shapes_test_split(shapes_dir)
    for path in images[:4]:
        shutil.copy(path, tmp_path / path.name)
    (tmp_path / "broken.png").write_bytes(b"not a png at all")
    example = runpy.run_path(str(REPO / "examples" / "zero_shot_retrieval.py"))
    results = example["main"](["--model", str(directory), "--images", str(tmp_path), "--query", "a circle",
                               "--top-k", "10", "--batch-size", "2"])
    assert sorted(Path(path).name for path, _ in results[0][1]) == sorted(path.name for path in images[:4])
    out = capsys.readouterr().out
    assert "indexed 4 images" in out and "skipped 1 that failed to decode" in out
    # The docstring's command names the folder `make demo` really saves the model in.
    doc = example["__doc__"]
    assert "--model outputs/demo/factorcl_ssl/model" in doc
