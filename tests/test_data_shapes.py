import re
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from factorcl_hf.data import shapes
from factorcl_hf.data.shapes import (
    ATTRIBUTES,
    CAPTION_ONLY_ATTRIBUTES,
    IMAGE_ONLY_ATTRIBUTES,
    SHAPES_COLUMNS,
    SHARED_ATTRIBUTES,
    build_shapes_dataset,
    generate_shapes_records,
    render_shapes_image,
    save_sample_grid,
    shapes_label_accuracy_ceilings,
    write_shapes_imagefolder,
)

IMAGE_KEYS = ("shape", "size", "position", "colour", "background")


def pixels(image):
    return np.asarray(image, dtype=np.uint8)


def lookup_accuracy(train, test, keys):
    """Accuracy on `test` of the majority label per value of `keys` learned on `train`.

    An estimate of the best accuracy any predictor that sees only `keys` can reach.
    """
    counts = defaultdict(Counter)
    for row in train:
        counts[tuple(row[k] for k in keys)][row["label"]] += 1
    fallback = Counter(row["label"] for row in train).most_common(1)[0][0]
    hits = 0
    for row in test:
        seen = counts.get(tuple(row[k] for k in keys))
        hits += (seen.most_common(1)[0][0] if seen else fallback) == row["label"]
    return hits / len(test)


@pytest.fixture(scope="module")
def records_by_share():
    return {share: generate_shapes_records(4000, seed=3, image_size=32, unique_share=share) for share in (0.0, 0.5, 1.0)}


def test_columns_and_attribute_indices():
    records = generate_shapes_records(20, seed=0, image_size=32)
    for row in records:
        assert tuple(row) == SHAPES_COLUMNS
        assert row["image"].size == (32, 32) and row["image"].mode == "RGB"
        for name, values in ATTRIBUTES.items():
            assert values[row[f"{name}_idx"]] == row[name]


def test_same_seed_same_samples_other_seed_different():
    first = generate_shapes_records(50, seed=7, image_size=32)
    again = generate_shapes_records(50, seed=7, image_size=32)
    other = generate_shapes_records(50, seed=8, image_size=32)
    for a, b in zip(first, again):
        assert np.array_equal(pixels(a["image"]), pixels(b["image"]))
        assert {k: v for k, v in a.items() if k != "image"} == {k: v for k, v in b.items() if k != "image"}
    assert [r["caption"] for r in first] != [r["caption"] for r in other]
    assert any(not np.array_equal(pixels(a["image"]), pixels(b["image"])) for a, b in zip(first, other))


def test_unique_share_changes_labels_only(records_by_share):
    low, high = records_by_share[0.0], records_by_share[1.0]
    assert [r["caption"] for r in low] == [r["caption"] for r in high]
    assert all(np.array_equal(pixels(a["image"]), pixels(b["image"])) for a, b in zip(low[:100], high[:100]))
    assert [r["label"] for r in low] != [r["label"] for r in high]


def test_caption_never_names_image_only_attributes(records_by_share):
    image_only_words = {word for values in IMAGE_ONLY_ATTRIBUTES.values() for word in values}
    # Also forms a template might use for the same attributes.
    image_only_words |= {"colour", "color", "background", "striped", "dotted", "green", "blue", "yellow"}
    for row in records_by_share[0.5]:
        words = set(re.findall(r"[a-z]+", row["caption"].lower()))
        assert not words & image_only_words, row["caption"]
        # ... while it does say every shared and caption-only attribute.
        for name in (*SHARED_ATTRIBUTES, *CAPTION_ONLY_ATTRIBUTES):
            assert row[name] in words, (name, row["caption"])


def test_pixels_depend_on_image_attributes_only(records_by_share):
    records = records_by_share[0.5]
    by_image_attributes = defaultdict(list)
    for row in records:
        # Every image is what the renderer draws from the image attributes alone.
        expected = render_shapes_image(*(row[k] for k in IMAGE_KEYS), image_size=32)
        assert np.array_equal(pixels(row["image"]), pixels(expected))
        by_image_attributes[tuple(row[k] for k in IMAGE_KEYS)].append(row)
    pairs = 0
    for group in by_image_attributes.values():
        drawers = {row["drawer"]: row for row in group}
        if len(drawers) > 1:
            a, b = list(drawers.values())[:2]
            assert np.array_equal(pixels(a["image"]), pixels(b["image"]))
            pairs += 1
    assert pairs > 50
    # The image attributes do show: different colours / shapes / positions give different pixels.
    base = dict(shape="circle", size="small", position="top", colour="red", background="plain")
    base_pixels = pixels(render_shapes_image(**base, image_size=32))
    for name in IMAGE_KEYS:
        changed = {**base, name: ATTRIBUTES[name][1]}
        assert not np.array_equal(base_pixels, pixels(render_shapes_image(**changed, image_size=32))), name


def test_rendered_images_are_a_copy_not_the_cache():
    image = render_shapes_image("cross", "large", "bottom", "cyan", "dots", image_size=32)
    image.paste((0, 0, 0), (0, 0, 32, 32))
    again = render_shapes_image("cross", "large", "bottom", "cyan", "dots", image_size=32)
    assert pixels(again).max() > 0


SHARED_KEYS = tuple(SHARED_ATTRIBUTES)
UNIQUE_KEYS = ("colour", "drawer")
IMAGE_VIEW = (*SHARED_KEYS, *IMAGE_ONLY_ATTRIBUTES)
CAPTION_VIEW = (*SHARED_KEYS, *CAPTION_ONLY_ATTRIBUTES, "template_idx")


@pytest.mark.parametrize("share", [0.0, 0.5, 1.0])
def test_label_dependence_follows_unique_share(records_by_share, share):
    records = records_by_share[share]
    train, test = records[:3000], records[3000:]
    ceilings = shapes_label_accuracy_ceilings(share, num_labels=4)
    measured = {
        "shared": lookup_accuracy(train, test, SHARED_KEYS),
        "unique": lookup_accuracy(train, test, UNIQUE_KEYS),
        "image": lookup_accuracy(train, test, IMAGE_VIEW),
        "caption": lookup_accuracy(train, test, CAPTION_VIEW),
    }
    # 1000 test samples: binomial standard error <= 0.016. The ceilings come from exact
    # enumeration; the measurements from lookup tables fitted on generated samples.
    tolerance = 0.05
    for view in ("shared", "unique"):
        assert measured[view] == pytest.approx(ceilings[view], abs=tolerance), view
    # Finer views (more lookup cells than samples support) can only fall short of Bayes.
    for view in ("image", "caption"):
        assert measured[view] <= ceilings[view] + tolerance, view
    # Where a modality alone misses part of the label, it really does (it would not if the
    # colour leaked into the caption or the drawer into the image).
    for view in ("image", "caption"):
        if ceilings["all"] - ceilings[view] >= 0.2:
            assert measured[view] < ceilings["all"] - 0.1, view
    rule_counts = Counter(row["label_rule"] for row in records)
    assert rule_counts["unique"] / len(records) == pytest.approx(share, abs=0.03)


def test_label_is_a_function_of_shared_or_unique_attributes_at_the_extremes(records_by_share):
    for share, keys in ((0.0, SHARED_KEYS), (1.0, UNIQUE_KEYS)):
        labels_seen = defaultdict(set)
        for row in records_by_share[share]:
            labels_seen[tuple(row[k] for k in keys)].add(row["label"])
        assert all(len(labels) == 1 for labels in labels_seen.values()), share
        assert {label for labels in labels_seen.values() for label in labels} == {0, 1, 2, 3}


def test_ceilings_match_a_hand_count():
    # p = 0.75, L = 4: shared rule on 1/4 of samples, right by chance on 1/4 of the rest.
    ceilings = shapes_label_accuracy_ceilings(0.75, 4)
    assert ceilings["shared"] == pytest.approx(0.25 + 0.75 / 4)
    assert ceilings["unique"] == pytest.approx(0.75 + 0.25 / 4)
    assert ceilings["all"] == pytest.approx(ceilings["unique"])
    # Image alone: the shared label and the colour bit agree on half the samples
    # (0.25 + 0.75 / 2), else the best guess is a colour-bit label (0.75 / 2).
    assert ceilings["image"] == pytest.approx(0.5 * (0.25 + 0.375) + 0.5 * 0.375)


def test_two_labels():
    records = generate_shapes_records(200, seed=1, image_size=32, unique_share=1.0, num_labels=2)
    assert {row["label"] for row in records} == {0, 1}
    assert all(row["label"] == row["colour_idx"] % 2 for row in records)


def test_build_shapes_dataset_splits_and_features():
    dataset = build_shapes_dataset(num_samples=30, test_fraction=0.2, seed=2, image_size=32)
    records = generate_shapes_records(30, seed=2, image_size=32)
    assert dataset["train"].num_rows == 24 and dataset["test"].num_rows == 6
    assert tuple(dataset["train"].column_names) == SHAPES_COLUMNS
    assert dataset["train"].features["label"].num_classes == 4
    first_test = dataset["test"][0]
    assert first_test["caption"] == records[24]["caption"]
    assert np.array_equal(pixels(first_test["image"].convert("RGB")), pixels(records[24]["image"]))


def test_imagefolder_round_trip_and_reuse(tmp_path):
    import datasets

    out_dir = write_shapes_imagefolder(tmp_path / "shapes", num_samples=25, test_fraction=0.2, seed=4, image_size=32)
    assert sorted(p.name for p in out_dir.iterdir()) == ["shapes_params.json", "test", "train"]
    loaded = datasets.load_dataset("imagefolder", data_dir=str(out_dir), cache_dir=str(tmp_path / "cache"))
    assert set(loaded) == {"train", "test"}
    assert loaded["train"].num_rows == 20 and loaded["test"].num_rows == 5
    assert set(loaded["train"].column_names) == set(SHAPES_COLUMNS)
    records = generate_shapes_records(25, seed=4, image_size=32)
    # imagefolder does not promise file order; match rows by their caption + attributes.
    expected = {(r["caption"], r["colour"], r["background"], r["label"]): r for r in records[20:]}
    for row in loaded["test"]:
        match = expected[(row["caption"], row["colour"], row["background"], row["label"])]
        assert np.array_equal(pixels(row["image"].convert("RGB")), pixels(match["image"]))

    # Same parameters: reused untouched. Other parameters: replaced, no staging folders left.
    marker = out_dir / "train" / "000000.png"
    mtime = marker.stat().st_mtime_ns
    assert write_shapes_imagefolder(out_dir, num_samples=25, test_fraction=0.2, seed=4, image_size=32) == out_dir
    assert marker.stat().st_mtime_ns == mtime
    write_shapes_imagefolder(out_dir, num_samples=10, test_fraction=0.2, seed=4, image_size=32)
    assert len(list((out_dir / "train").glob("*.png"))) == 8
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cache", "shapes"]


def test_incomplete_folder_is_rebuilt(tmp_path):
    out_dir = tmp_path / "shapes"
    (out_dir / "train").mkdir(parents=True)  # e.g. left by a crash, no params file
    write_shapes_imagefolder(out_dir, num_samples=10, seed=0, image_size=32)
    assert len(list((out_dir / "test").glob("*.png"))) == 2


def test_sample_grid_is_a_png(tmp_path):
    records = generate_shapes_records(10, seed=0, image_size=32)
    path = save_sample_grid(records, tmp_path / "grid" / "samples.png", n=6, cell_size=64)
    with Image.open(path) as grid:
        assert grid.format == "PNG"
        # 6 cells -> 3 columns x 2 rows of 64 px images plus text under each.
        assert grid.size[0] == 3 * 64 and grid.size[1] > 2 * 64
        # The first cell shows the first sample, upscaled.
        cell = grid.convert("RGB").crop((4, 4, 60, 60))
        expected = records[0]["image"].resize((56, 56), Image.Resampling.NEAREST)
        assert np.array_equal(pixels(cell), pixels(expected))


@pytest.mark.parametrize(
    "kwargs, argument",
    [
        ({"num_samples": 1}, "num_samples"),
        ({"num_samples": 10, "unique_share": 1.5}, "unique_share"),
        ({"num_samples": 10, "unique_share": -0.1}, "unique_share"),
        ({"num_samples": 10, "num_labels": 1}, "num_labels"),
        ({"num_samples": 10, "num_labels": 3}, "num_labels"),
        ({"num_samples": 10, "image_size": 8}, "image_size"),
    ],
)
def test_bad_arguments_raise(kwargs, argument):
    with pytest.raises(ValueError, match=argument):
        generate_shapes_records(**kwargs)


def test_bad_split_and_render_arguments_raise(tmp_path):
    with pytest.raises(ValueError, match="test_fraction"):
        build_shapes_dataset(num_samples=10, test_fraction=0.0)
    with pytest.raises(ValueError, match="test_fraction"):
        write_shapes_imagefolder(tmp_path / "x", num_samples=3, test_fraction=0.9)
    with pytest.raises(ValueError, match="colour"):
        render_shapes_image("circle", "small", "top", "orange", "plain")
    with pytest.raises(ValueError, match="n must"):
        save_sample_grid(generate_shapes_records(2, image_size=32), tmp_path / "g.png", n=0)


@pytest.mark.slow
def test_package_import_is_light():
    import subprocess
    import sys

    code = "import sys, factorcl_hf.data as d; d.SHAPES; print('datasets' in sys.modules)"
    repo_root = Path(shapes.__file__).resolve().parents[2]
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=repo_root)
    assert result.stdout.strip() == "False"
