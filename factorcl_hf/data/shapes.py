"""Embedded image + caption dataset with known shared and unique information.

Every sample is a small RGB picture of one shape on a grey background plus a one-sentence
caption. The generating attributes fall into three groups, which is what lets the dataset
show FactorCL's point (a contrastive objective between image and caption keeps only what the
two have in common):

* shared, drawn in the image AND said in the caption: ``shape`` (circle/square/triangle/cross),
  ``size`` (small/large), ``position`` (top/bottom);
* unique to the image, never named in a caption: ``colour`` of the shape
  (red/lime/cyan/purple) and ``background`` texture (plain/stripes/dots);
* unique to the caption, invisible in the image: ``drawer``, the person the caption says drew
  the picture (anna/ben/carl/dora). Pixels are a pure function of the image attributes
  (:func:`render_shapes_image`), so the image carries no trace of the drawer or of the
  caption's wording (``template_idx``).

All attributes are drawn independently and uniformly. Each is kept as a string column and as
an ``<name>_idx`` integer column.

Label rule (``num_labels`` = L, 2 or 4):

* shared rule: ``(shape_idx + size_idx + position_idx) % L``
* unique rule, L = 4: ``2 * (colour_idx % 2) + (drawer_idx % 2)`` — one bit from the image's
  colour, one from the caption's drawer; L = 2: ``colour_idx % 2`` (the image's bit only).

Each sample uses the unique rule with probability ``unique_share``, else the shared rule; the
column ``label_rule`` records which ("shared"/"unique", for analysis only: it is not visible in
either modality). At ``unique_share=1`` (L = 4) each modality alone gets half of the label:
it takes the image's colour AND the caption's drawer. At 0 the shared attributes alone
determine it.

Why a product of two bits and not, say, ``(colour + drawer) % L``: the paper's protocol probes
the concatenated embeddings ``[image; text]`` LINEARLY. A linear score is a sum of an image
part and a text part, which can read a pair of bits but can never compute an XOR or a modular
sum across modalities — such a label would be out of reach of every method, FactorCL included.

The per-sample rule choice is hidden, so the best achievable accuracies depend on what a
representation keeps; :func:`shapes_label_accuracy_ceilings` computes them exactly by
enumerating the attributes. For L = 4 and the default ``unique_share = 0.75``: shared
information only 0.4375 (a CLIP-style representation's ceiling), image or caption alone 0.5,
both modalities' unique information 0.8125. At 0.5 the shared and unique ceilings tie, so
keeping unique information would gain nothing; at 0.75 the shared rule still labels a
quarter of the samples, so shared information is not useless either.

Attributes, the label-rule coin and the caption template come from separate random streams of
one ``numpy.random.SeedSequence(seed)``; changing ``unique_share`` therefore changes only
labels (the unique-rule samples at a smaller share are a subset of those at a larger one),
never images or captions.

Augmentations: the shared attributes are invariant to horizontal flips (positions are
vertical and the four shapes are mirror-symmetric) and the colours sit 90 degrees apart in
hue, so the paper's colour jitter (hue 0.1 = 36 degrees) keeps each colour nearest its own
name. Aggressive random resized crops can cut the shape out of the picture.
"""

from __future__ import annotations

import itertools
import json
import math
import numbers
import os
import shutil
import tempfile
import textwrap
from collections import defaultdict
from collections.abc import Mapping, Sequence
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFont

SHAPES = ("circle", "square", "triangle", "cross")
SIZES = ("small", "large")
POSITIONS = ("top", "bottom")
COLOURS = ("red", "lime", "cyan", "purple")
BACKGROUNDS = ("plain", "stripes", "dots")
DRAWERS = ("anna", "ben", "carl", "dora")
CAPTION_TEMPLATES = (
    "a {size} {shape} at the {position}, drawn by {drawer}.",
    "{drawer} drew a {size} {shape} at the {position}.",
    "a picture by {drawer}: a {size} {shape} at the {position}.",
    "at the {position} there is a {size} {shape}, drawn by {drawer}.",
)

SHARED_ATTRIBUTES = {"shape": SHAPES, "size": SIZES, "position": POSITIONS}
IMAGE_ONLY_ATTRIBUTES = {"colour": COLOURS, "background": BACKGROUNDS}
CAPTION_ONLY_ATTRIBUTES = {"drawer": DRAWERS}
ATTRIBUTES = {**SHARED_ATTRIBUTES, **IMAGE_ONLY_ATTRIBUTES, **CAPTION_ONLY_ATTRIBUTES}

LABEL_RULES = ("shared", "unique")
SHAPES_COLUMNS = (
    "image",
    "caption",
    "label",
    "label_rule",
    *(column for name in ATTRIBUTES for column in (name, f"{name}_idx")),
    "template_idx",
)

DEFAULT_UNIQUE_SHARE = 0.75
DEFAULT_NUM_LABELS = 4
MIN_IMAGE_SIZE = 32
# Bump when rendering, captions or the label rule change, so cached folders are rebuilt.
SHAPES_FORMAT_VERSION = 1

_COLOUR_RGB = {  # hues 0, 90, 180, 270 degrees
    "red": (230, 40, 40),
    "lime": (135, 230, 40),
    "cyan": (40, 230, 230),
    "purple": (135, 40, 230),
}
_BACKGROUND_GREY = (225, 225, 225)
_TEXTURE_GREY = (170, 170, 170)
_SIZE_RADIUS = {"small": 0.12, "large": 0.21}  # fraction of the image side
_POSITION_CENTRE_Y = {"top": 0.27, "bottom": 0.73}
# Shapes are drawn this many times larger and box-downsampled: Pillow draws polygons without
# anti-aliasing, and jagged edges at 32-64 px blur the difference between small shapes.
_SUPERSAMPLE = 4
_PARAMS_FILE = "shapes_params.json"


def _check_arguments(num_samples: int, image_size: int, unique_share: float, num_labels: int) -> None:
    if not isinstance(num_samples, numbers.Integral) or num_samples < 2:
        raise ValueError(f"num_samples must be an integer >= 2, got {num_samples!r}")
    if not isinstance(image_size, numbers.Integral) or image_size < MIN_IMAGE_SIZE:
        raise ValueError(f"image_size must be an integer >= {MIN_IMAGE_SIZE}, got {image_size!r}")
    if not 0.0 <= float(unique_share) <= 1.0:
        raise ValueError(f"unique_share must be in [0, 1], got {unique_share!r}")
    if num_labels not in (2, 4):
        raise ValueError(
            f"num_labels must be 2 or 4 (a divisor of the 4 shapes/colours/drawers, so that no "
            f"single attribute predicts the label), got {num_labels!r}"
        )


def shared_label_rule(shape_idx: int, size_idx: int, position_idx: int, num_labels: int) -> int:
    """Label from the shared attributes alone."""
    return (shape_idx + size_idx + position_idx) % num_labels


def unique_label_rule(colour_idx: int, drawer_idx: int, num_labels: int) -> int:
    """Label from the unique attributes: the colour's bit and (L = 4) the drawer's bit."""
    colour_bit, drawer_bit = colour_idx % 2, drawer_idx % 2
    return 2 * colour_bit + drawer_bit if num_labels == 4 else colour_bit


# What each kind of representation can see, for the accuracy ceilings.
_CEILING_VIEWS = {
    "shared": ("shape", "size", "position"),
    "unique": ("colour", "drawer"),
    "image": ("shape", "size", "position", "colour"),
    "caption": ("shape", "size", "position", "drawer"),
    "all": ("shape", "size", "position", "colour", "drawer"),
}


def shapes_label_accuracy_ceilings(
    unique_share: float = DEFAULT_UNIQUE_SHARE, num_labels: int = DEFAULT_NUM_LABELS
) -> dict[str, float]:
    """Bayes-optimal label accuracy from each kind of information, by exact enumeration of
    the (uniform, independent) attributes and the hidden rule choice.

    Keys: ``chance``; ``shared`` (shape, size, position); ``unique`` (colour and drawer);
    ``image`` (what the image shows); ``caption`` (what the caption says); ``all``.
    """
    _check_arguments(2, MIN_IMAGE_SIZE, unique_share, num_labels)

    p = float(unique_share)
    names = ("shape", "size", "position", "colour", "drawer")
    sizes = (len(SHAPES), len(SIZES), len(POSITIONS), len(COLOURS), len(DRAWERS))
    combos = list(itertools.product(*(range(n) for n in sizes)))
    ceilings = {"chance": 1.0 / num_labels}
    for view, keys in _CEILING_VIEWS.items():
        mass: dict[tuple, dict[int, float]] = defaultdict(lambda: defaultdict(float))
        for combo in combos:
            attrs = dict(zip(names, combo))
            seen = tuple(attrs[k] for k in keys)
            mass[seen][shared_label_rule(attrs["shape"], attrs["size"], attrs["position"], num_labels)] += (1 - p) / len(combos)
            mass[seen][unique_label_rule(attrs["colour"], attrs["drawer"], num_labels)] += p / len(combos)
        ceilings[view] = sum(max(labels.values()) for labels in mass.values())
    return ceilings


@lru_cache(maxsize=512)
def _render_cached(
    shape: str, size: str, position: str, colour: str, background: str, image_size: int
) -> Image.Image:
    side = image_size * _SUPERSAMPLE
    canvas = Image.new("RGB", (side, side), _BACKGROUND_GREY)
    draw = ImageDraw.Draw(canvas)
    period = side / 8
    if background == "stripes":
        width = max(1, round(period / 4))
        for k in range(-8, 17):  # diagonal lines that cover the whole square
            x0 = k * period
            draw.line([(x0, 0), (x0 + side, side)], fill=_TEXTURE_GREY, width=width)
    elif background == "dots":
        dot = period / 8
        for row in range(8):
            for col in range(8):
                cx, cy = (col + 0.5) * period, (row + 0.5) * period
                draw.ellipse([cx - dot, cy - dot, cx + dot, cy + dot], fill=_TEXTURE_GREY)

    cx, cy = side / 2, side * _POSITION_CENTRE_Y[position]
    r = side * _SIZE_RADIUS[size]
    fill = _COLOUR_RGB[colour]
    if shape == "circle":
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=fill)
    elif shape == "square":
        half = r * 0.85  # same visual area as the circle, roughly
        draw.rectangle([cx - half, cy - half, cx + half, cy + half], fill=fill)
    elif shape == "triangle":
        # Equilateral, pointing up, centred on its centroid.
        draw.polygon(
            [(cx, cy - r), (cx - r * math.sqrt(3) / 2, cy + r / 2), (cx + r * math.sqrt(3) / 2, cy + r / 2)],
            fill=fill,
        )
    elif shape == "cross":
        arm = r * 0.35
        draw.rectangle([cx - r, cy - arm, cx + r, cy + arm], fill=fill)
        draw.rectangle([cx - arm, cy - r, cx + arm, cy + r], fill=fill)
    return canvas.resize((image_size, image_size), Image.Resampling.BOX)


def render_shapes_image(
    shape: str, size: str, position: str, colour: str, background: str, image_size: int = 64
) -> Image.Image:
    """Draw one picture. Pixels depend on these image attributes only."""
    for name, value in (("shape", shape), ("size", size), ("position", position), ("colour", colour),
                        ("background", background)):
        if value not in ATTRIBUTES[name]:
            raise ValueError(f"{name} must be one of {ATTRIBUTES[name]}, got {value!r}")
    if not isinstance(image_size, numbers.Integral) or image_size < MIN_IMAGE_SIZE:
        raise ValueError(f"image_size must be an integer >= {MIN_IMAGE_SIZE}, got {image_size!r}")
    # A copy, so a caller drawing on its image cannot corrupt the cache.
    return _render_cached(shape, size, position, colour, background, int(image_size)).copy()


def generate_shapes_records(
    num_samples: int,
    seed: int = 0,
    image_size: int = 64,
    unique_share: float = DEFAULT_UNIQUE_SHARE,
    num_labels: int = DEFAULT_NUM_LABELS,
) -> list[dict[str, Any]]:
    """Generate samples as dicts with the columns of :data:`SHAPES_COLUMNS`.

    ``image`` is a PIL RGB image of ``image_size`` pixels square. Deterministic in all
    arguments; see the module docstring for the attributes and the label rule.
    """
    _check_arguments(num_samples, image_size, unique_share, num_labels)
    attribute_stream, rule_stream, template_stream = (
        np.random.default_rng(child) for child in np.random.SeedSequence(seed).spawn(3)
    )
    indices = {
        name: attribute_stream.integers(len(values), size=num_samples) for name, values in ATTRIBUTES.items()
    }
    uses_unique_rule = rule_stream.random(num_samples) < unique_share
    template_indices = template_stream.integers(len(CAPTION_TEMPLATES), size=num_samples)

    records = []
    for i in range(num_samples):
        record: dict[str, Any] = {}
        for name, values in ATTRIBUTES.items():
            record[name] = values[int(indices[name][i])]
            record[f"{name}_idx"] = int(indices[name][i])
        record["image"] = render_shapes_image(
            record["shape"], record["size"], record["position"], record["colour"], record["background"], image_size
        )
        record["template_idx"] = int(template_indices[i])
        record["caption"] = CAPTION_TEMPLATES[record["template_idx"]].format(
            **{name: record[name] for name in (*SHARED_ATTRIBUTES, *CAPTION_ONLY_ATTRIBUTES)}
        )
        if uses_unique_rule[i]:
            record["label_rule"] = "unique"
            record["label"] = unique_label_rule(record["colour_idx"], record["drawer_idx"], num_labels)
        else:
            record["label_rule"] = "shared"
            record["label"] = shared_label_rule(
                record["shape_idx"], record["size_idx"], record["position_idx"], num_labels
            )
        records.append({column: record[column] for column in SHAPES_COLUMNS})
    return records


def _num_test_samples(num_samples: int, test_fraction: float) -> int:
    num_test = round(num_samples * test_fraction)
    if not 0.0 < test_fraction < 1.0 or not 1 <= num_test <= num_samples - 1:
        raise ValueError(
            f"test_fraction must be in (0, 1) and leave at least one sample in each split of "
            f"{num_samples}, got {test_fraction!r}"
        )
    return num_test


def _split_records(records: list[dict[str, Any]], test_fraction: float) -> dict[str, list[dict[str, Any]]]:
    # Samples are i.i.d., so a contiguous split is as random as a shuffled one.
    num_train = len(records) - _num_test_samples(len(records), test_fraction)
    return {"train": records[:num_train], "test": records[num_train:]}


def shapes_features(num_labels: int = DEFAULT_NUM_LABELS):
    """The ``datasets.Features`` of the shapes dataset (pass to ``load_dataset(..., features=)``)."""
    import datasets

    columns: dict[str, Any] = {
        "image": datasets.Image(),
        "caption": datasets.Value("string"),
        "label": datasets.ClassLabel(names=[f"label_{k}" for k in range(num_labels)]),
        "label_rule": datasets.ClassLabel(names=list(LABEL_RULES)),
    }
    for name in ATTRIBUTES:
        columns[name] = datasets.Value("string")
        columns[f"{name}_idx"] = datasets.Value("int64")
    columns["template_idx"] = datasets.Value("int64")
    return datasets.Features({column: columns[column] for column in SHAPES_COLUMNS})


def build_shapes_dataset(
    num_samples: int = 2000, test_fraction: float = 0.2, seed: int = 0, image_size: int = 64,
    unique_share: float = DEFAULT_UNIQUE_SHARE, num_labels: int = DEFAULT_NUM_LABELS,
):
    """In-memory ``datasets.DatasetDict`` with ``train`` and ``test`` splits.

    Columns are :data:`SHAPES_COLUMNS` with the features of :func:`shapes_features`
    (``label`` and ``label_rule`` are ``ClassLabel``).
    """
    import datasets

    _check_arguments(num_samples, image_size, unique_share, num_labels)
    _num_test_samples(num_samples, test_fraction)
    records = generate_shapes_records(num_samples, seed, image_size, unique_share, num_labels)
    features = shapes_features(num_labels)
    return datasets.DatasetDict(
        {
            split: datasets.Dataset.from_list(split_records, features=features)
            for split, split_records in _split_records(records, test_fraction).items()
        }
    )


def write_shapes_imagefolder(
    out_dir: str | os.PathLike, num_samples: int = 2000, test_fraction: float = 0.2, seed: int = 0,
    image_size: int = 64, unique_share: float = DEFAULT_UNIQUE_SHARE, num_labels: int = DEFAULT_NUM_LABELS,
) -> Path:
    """Write the dataset as an imagefolder (``train/`` and ``test/``, PNGs + ``metadata.jsonl``).

    ``datasets.load_dataset("imagefolder", data_dir=out_dir)`` reads it back (add
    ``features=shapes_features(num_labels)`` for ``ClassLabel`` columns). The folder is built
    in a temporary sibling and renamed into place, and the parameters are stored in
    ``shapes_params.json``; a complete folder with the same parameters is reused as is, one
    with other parameters is replaced.
    """
    _check_arguments(num_samples, image_size, unique_share, num_labels)
    _num_test_samples(num_samples, test_fraction)
    out_dir = Path(out_dir)
    params = {
        "format_version": SHAPES_FORMAT_VERSION,
        "num_samples": int(num_samples),
        "test_fraction": float(test_fraction),
        "seed": int(seed),
        "image_size": int(image_size),
        "unique_share": float(unique_share),
        "num_labels": int(num_labels),
    }
    if _read_params(out_dir) == params:
        return out_dir
    records = generate_shapes_records(num_samples, seed, image_size, unique_share, num_labels)
    splits = _split_records(records, test_fraction)

    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.tmp-", dir=out_dir.parent))
    try:
        for split, split_records in splits.items():
            split_dir = staging / split
            split_dir.mkdir()
            with open(split_dir / "metadata.jsonl", "w", encoding="utf-8") as metadata:
                for i, record in enumerate(split_records):
                    file_name = f"{i:06d}.png"
                    record["image"].save(split_dir / file_name)
                    row = {"file_name": file_name, **{k: v for k, v in record.items() if k != "image"}}
                    metadata.write(json.dumps(row) + "\n")
        # Written last: its presence marks the folder complete.
        (staging / _PARAMS_FILE).write_text(json.dumps(params, indent=2) + "\n", encoding="utf-8")
        if out_dir.exists():
            # Move the stale folder aside first: rename cannot replace a non-empty directory.
            stale = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.stale-", dir=out_dir.parent))
            os.replace(out_dir, stale / out_dir.name)
            shutil.rmtree(stale)
        os.replace(staging, out_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return out_dir


def _read_params(out_dir: Path) -> dict[str, Any] | None:
    try:
        return json.loads((out_dir / _PARAMS_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def save_sample_grid(
    records_or_dataset: Sequence[Mapping[str, Any]],
    path: str | os.PathLike,
    n: int = 16,
    cell_size: int = 160,
) -> Path:
    """Save a PNG grid of the first ``n`` samples with caption and label written under each.

    Accepts a list of records or a ``datasets.Dataset`` (any sequence of rows with ``image``,
    ``caption`` and ``label``).
    """
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n!r}")
    if len(records_or_dataset) == 0:
        raise ValueError("records_or_dataset must hold at least one sample")
    rows = [records_or_dataset[i] for i in range(min(n, len(records_or_dataset)))]
    font = _grid_font()
    line_height = 13
    text_lines = [
        textwrap.wrap(row["caption"], width=cell_size // 7) + [f"label {row['label']} ({row.get('label_rule', '?')})"]
        for row in rows
    ]
    text_height = line_height * max(len(lines) for lines in text_lines) + 6
    columns = math.ceil(math.sqrt(len(rows)))
    grid_rows = math.ceil(len(rows) / columns)
    grid = Image.new("RGB", (columns * cell_size, grid_rows * (cell_size + text_height)), "white")
    draw = ImageDraw.Draw(grid)
    for k, (row, lines) in enumerate(zip(rows, text_lines)):
        x, y = (k % columns) * cell_size, (k // columns) * (cell_size + text_height)
        image = row["image"].convert("RGB").resize((cell_size - 8, cell_size - 8), Image.Resampling.NEAREST)
        grid.paste(image, (x + 4, y + 4))
        for j, line in enumerate(lines):
            draw.text((x + 4, y + cell_size + j * line_height), line, fill="black", font=font)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    grid.save(path, format="PNG")
    return path


def _grid_font() -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size=11)
    except (TypeError, OSError):  # Pillow without FreeType: fixed bitmap font
        return ImageFont.load_default()
