"""Image+caption(+label) data for training and evaluation: loading from the Hub or local
files, validation, and the collator that turns rows into model inputs.

The collator draws each sample's augmentation from a generator seeded by
``(seed, epoch, row index)``, so augmented views do not depend on the number of processes,
the batch a row lands in, or whether a run was interrupted and resumed.
"""

from __future__ import annotations

import json
import logging
import os
import unicodedata
from collections.abc import Sized
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..integrity import check_label_ids, check_pixel_values, check_token_ids
from .images import UndecodableImageError, open_image

logger = logging.getLogger(__name__)

_LOCAL_FORMATS = {".csv": "csv", ".json": "json", ".jsonl": "json", ".parquet": "parquet"}
# A local file's rows name their split in this column (as in open_clip's and many datasets'
# CSVs); without it, every row is in "train".
SPLIT_COLUMN = "split"


def load_image_text_dataset(
    source: str | os.PathLike,
    image_column: str = "image",
    caption_column: str | None = "caption",
    label_column: str | None = None,
    split: str | None = None,
    streaming: bool = False,
    allow_outside_paths: bool = False,
):
    """Load a dataset with image and caption columns (and optionally a label column).

    ``source`` is a local imagefolder directory (with ``metadata.jsonl``), a local
    ``.csv``/``.jsonl``/``.json``/``.parquet`` file whose image column holds paths (and
    whose optional ``split`` column names each row's split), or a Hub dataset id. Returns a
    ``DatasetDict`` (or the ``split``) whose image column is decoded to PIL images.

    A local file's image paths are relative to the file's folder, and (as an imagefolder's
    symlinks) must stay inside it: an absolute path, a ``..`` or a symlink leading out is an
    error naming the row, unless ``allow_outside_paths``. Raises ``ValueError`` naming any
    missing column, and the row of any empty caption or bad label (:func:`check_values`).
    ``caption_column=None``: no caption is needed (e.g. zero-shot classification).
    """
    import datasets

    path = Path(source)
    local = path.exists() or path.suffix in _LOCAL_FORMATS
    if path.is_dir() and any(path.glob("*.parquet")):
        # Parquet shards (e.g. `Dataset.to_parquet` output, images embedded): one split.
        shards = sorted(str(shard) for shard in path.glob("*.parquet"))
        loaded = datasets.load_dataset("parquet", data_files={"train": shards}, streaming=streaming)
    elif path.is_dir():
        _check_imagefolder(path, allow_outside_paths)
        loaded = datasets.load_dataset("imagefolder", data_dir=str(path), streaming=streaming)
    elif path.suffix in _LOCAL_FORMATS:
        if streaming:
            raise ValueError(f"streaming reads Parquet shards in a folder, an imagefolder or a Hub dataset; the local "
                             f"file {str(path)!r} loads whole (drop --streaming)")
        if not path.is_file():
            raise ValueError(f"data file {str(path)!r} does not exist or is not a file")
        if path.stat().st_size == 0:
            raise ValueError(f"data file {str(path)!r} is empty: need at least 2 rows for contrastive training")
        builder = _LOCAL_FORMATS[path.suffix]
        # pandas reads the text "NA", "null", "nan"... as missing: a caption is text. Only an
        # empty cell is missing.
        options = {"keep_default_na": False, "na_values": [""]} if builder == "csv" else {}
        try:
            loaded = datasets.load_dataset(builder, data_files=str(path), **options)
        except Exception as error:  # noqa: BLE001 - pandas/pyarrow/datasets each raise their own
            cause = error.__cause__ or error
            raise ValueError(
                f"data file {str(path)!r} cannot be read as {builder}: it is empty or malformed "
                f"({type(cause).__name__}: {cause})"
            ) from error
        loaded = _resolve_image_paths(loaded["train"], image_column, path, allow_outside_paths)
        loaded = split_by_column(loaded, str(path))
    else:
        loaded = datasets.load_dataset(str(source), streaming=streaming)
    if split is not None:
        if split not in loaded:
            raise ValueError(f"`split` {split!r} not found in {str(source)!r}; available: {sorted(loaded)}")
        loaded = loaded[split]
    for name, part in loaded.items() if isinstance(loaded, dict) else [(split, loaded)]:
        where = f"{source} [{name}]"
        check_columns(part, image_column, caption_column, label_column, where=where)
        check_image_column(part, image_column, where=where)
        if local and not allow_outside_paths and isinstance(part, datasets.Dataset):
            # Also a Parquet file's image structs, whose paths _resolve_image_paths leaves alone.
            _check_rows_inside(part, image_column, path if path.is_dir() else path.parent, where)
        check_values(part, caption_column, label_column, where=where)
    return loaded


def _outside(path: str, root: Path) -> bool:
    """Whether ``path`` (symlinks resolved) lies outside ``root``, or is a URL."""
    if "://" in path or path.startswith("::"):
        return True
    return not Path(os.path.realpath(path)).is_relative_to(os.path.realpath(root))


_OUTSIDE_HINT = "pass --allow_outside_paths (allow_outside_paths=True) to read files outside the data folder"


def _check_imagefolder(folder: Path, allow_outside_paths: bool) -> None:
    """Before ``datasets`` reads an imagefolder: every ``metadata.jsonl`` line is a JSON
    object (named by file and line otherwise), and no symlink leads out of ``folder``."""
    for metadata in sorted(folder.rglob("metadata.jsonl")):
        for number, line in enumerate(metadata.read_text(encoding="utf-8", errors="replace").splitlines(), start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except ValueError as error:
                raise ValueError(f"{metadata} line {number} is not a JSON object ({error}): {line[:80]!r}") from error
            if not isinstance(row, dict):
                raise ValueError(f"{metadata} line {number} is not a JSON object: {line[:80]!r}")
    if allow_outside_paths:
        return
    for parent, folders, files in os.walk(folder):
        for name in folders + files:
            entry = os.path.join(parent, name)
            if os.path.islink(entry) and _outside(entry, folder):
                raise ValueError(f"{entry!r} is a symlink to {os.path.realpath(entry)!r}, outside the data folder "
                                 f"{str(folder)!r}; {_OUTSIDE_HINT}")


def _resolve_image_paths(table, image_column: str, data_file: Path, allow_outside_paths: bool):
    """A local file's image column as images: each path relative to the file's folder, and
    (unless ``allow_outside_paths``) inside it. Raises ``ValueError`` naming the row of an
    empty cell, an outside path or a column that holds no paths."""
    import datasets

    if image_column not in table.column_names:
        return table  # check_columns names it
    feature = table.features[image_column]
    if isinstance(feature, datasets.Image):
        return table
    if not _is_string_feature(feature):
        raise ValueError(f"{data_file}: column {image_column!r} (`image_column`) holds {_feature_name(feature)}, "
                         "not image paths")
    base = data_file.parent
    paths = []
    for row, value in enumerate(table[image_column]):
        if value is None or not str(value).strip():
            raise ValueError(f"{data_file}: row {row} of column {image_column!r} (`image_column`) is empty "
                             f"({value!r}): every row needs an image path")
        resolved = os.path.join(base, value)
        if not allow_outside_paths and _outside(resolved, base):
            raise ValueError(f"{data_file}: row {row} of column {image_column!r} (`image_column`) is {value!r}, "
                             f"outside the data file's folder {str(base)!r}; {_OUTSIDE_HINT}")
        paths.append(resolved)
    order = table.column_names
    table = table.remove_columns(image_column).add_column(image_column, paths).select_columns(order)
    return table.cast_column(image_column, datasets.Image())


def _check_rows_inside(dataset, image_column: str, root: Path, where: str) -> None:
    """Every image path of ``dataset`` (not its embedded bytes) lies inside ``root``."""
    import datasets

    raw = dataset.cast_column(image_column, datasets.Image(decode=False))
    for row, value in enumerate(raw[image_column]):
        path = (value or {}).get("path")
        if path and not (value or {}).get("bytes") and _outside(path, root):
            raise ValueError(f"{where}: row {row}'s image {path!r} is outside the data folder {str(root)!r}; "
                             f"{_OUTSIDE_HINT}")


def _feature_name(feature) -> str:
    return getattr(feature, "dtype", None) or type(feature).__name__


def check_image_column(dataset, image_column: str, where: str = "dataset") -> None:
    """The image column holds images (or paths), not numbers: named otherwise."""
    import datasets

    features = getattr(dataset, "features", None)
    if not features or image_column not in features:
        return
    feature = features[image_column]
    if not isinstance(feature, datasets.Image) and not _is_string_feature(feature):
        raise ValueError(f"{where}: column {image_column!r} (`image_column`) holds {_feature_name(feature)}, "
                         "not images or image paths")


def split_by_column(table, where: str = "data"):
    """A ``DatasetDict`` of ``table``'s rows per value of its :data:`SPLIT_COLUMN` (the column
    dropped), or ``{"train": table}`` when it has none."""
    import datasets

    if SPLIT_COLUMN not in table.column_names:
        return datasets.DatasetDict({"train": table})
    names = table.unique(SPLIT_COLUMN)
    if None in names or "" in names:
        raise ValueError(f"{where}: column {SPLIT_COLUMN!r} names each row's split; some rows have none")
    return datasets.DatasetDict({
        str(name): table.filter(lambda value, name=name: value == name, input_columns=SPLIT_COLUMN)
        .remove_columns(SPLIT_COLUMN)
        for name in names
    })


def check_columns(dataset, image_column: str, caption_column: str | None, label_column: str | None,
                  where: str = "dataset"):
    """Raise ``ValueError`` naming each required column that ``dataset`` lacks, and reject an
    empty dataset."""
    required = {"image_column": image_column, "caption_column": caption_column, "label_column": label_column}
    required = {argument: column for argument, column in required.items() if column is not None}
    for argument, column in required.items():
        # A stream of undeclared features names its columns only once read.
        if dataset.column_names is not None and column not in dataset.column_names:
            raise ValueError(
                f"{where} has no column {column!r} (`{argument}`); its columns are {dataset.column_names}"
            )
    if isinstance(dataset, Sized) and len(dataset) == 0:  # a stream's length is unknown
        raise ValueError(f"{where} is empty: need at least 2 rows for contrastive training")


def check_values(dataset, caption_column: str | None, label_column: str | None, where: str = "dataset"):
    """Raise ``ValueError`` naming the column, row and value of the first caption that is not
    text (empty, only invisible characters, a number) and of the first label that is not a
    class id (:func:`label_problem`). String labels are class names, encoded later
    (:func:`encode_labels`). A streamed dataset is not read here: its rows are checked as they
    arrive."""
    import datasets

    if not isinstance(dataset, datasets.Dataset):
        return
    if caption_column is not None:
        for row, caption in enumerate(dataset[caption_column]):
            problem = caption_problem(caption)
            if problem:
                raise ValueError(f"{where}: row {row} of column {caption_column!r} (`caption_column`) is {problem} "
                                 f"({caption!r}); every row needs a text caption")
    if label_column is not None:
        check_labels(dataset[label_column], label_column, where)


def caption_problem(caption) -> str | None:
    """Why ``caption`` is no caption (``None`` when it is one): missing, not a string, or
    nothing visible (whitespace and zero-width/format characters only)."""
    if caption is None:
        return "empty"
    if not isinstance(caption, str):
        return f"a {type(caption).__name__}, not text"
    if all(char.isspace() or unicodedata.category(char) in ("Cf", "Cc", "Zs", "Zl", "Zp") for char in caption):
        return "empty (whitespace or invisible characters only)"
    return None


# Integer class ids above this many per row (and above LABEL_ID_FLOOR) are not dense ids: a
# label of 10^9 would otherwise make a billion-entry label table.
LABEL_IDS_PER_ROW = 10
LABEL_ID_FLOOR = 10_000


def check_labels(labels, label_column: str, where: str = "labels", num_labels: int | None = None) -> None:
    """The one label validation (training, evaluation, streaming): raise ``ValueError``
    naming the column, row and value of the first label that is not a class id, and of an
    integer id too large for the rows (or for ``num_labels``, when given)."""
    labels = list(labels)
    bound = num_labels if num_labels is not None else max(LABEL_ID_FLOOR, LABEL_IDS_PER_ROW * len(labels))
    for row, label in enumerate(labels):
        problem = label_problem(label)
        if problem is None and not isinstance(label, str) and label >= bound:
            problem = (f"not below num_labels={num_labels}" if num_labels is not None else
                       f"a class id above {bound - 1} (at most {LABEL_IDS_PER_ROW} ids per row): sparse ids "
                       "would make a label table that large. Number the classes 0..K-1, or use class-name strings")
        if problem:
            raise ValueError(
                f"{where}: row {row} of column {label_column!r} (`label_column`) is {label!r}, {problem}. Labels must "
                "be integer class ids >= 0 (or strings encoded with `Dataset.class_encode_column`)"
            )


def check_label_classes(labels, label_column: str, where: str = "labels") -> None:
    """At least two classes: a linear probe (and supervised contrast) needs them."""
    found = set(labels)
    if len(found) < 2:
        raise ValueError(f"{where}: column {label_column!r} (`label_column`) holds a single class "
                         f"({sorted(found, key=str)[:1]}); the linear probe and supervised objectives need two at "
                         "least")


def label_problem(label) -> str | None:
    if label is None or (isinstance(label, float) and label != label):
        return "a missing label"
    if isinstance(label, str):
        return None if label.strip() else "an empty class name"
    if isinstance(label, bool) or not isinstance(label, (int, float)):
        return f"a {type(label).__name__}, not an integer"
    if isinstance(label, float) and label in (float("inf"), float("-inf")):
        return "infinite"
    if label != int(label):
        return "not an integer (it would be floored)"
    if label < 0:
        return "negative"
    return None


def _is_string_feature(feature) -> bool:
    import datasets

    # CSV columns load as large_string, JSON ones as string.
    return isinstance(feature, datasets.Value) and feature.dtype in ("string", "large_string")


def encode_labels(splits: dict[str, Any], label_column: str | None,
                  names: list[str] | None = None) -> tuple[dict[str, Any], list[str] | None]:
    """Labels as class ids in every split, and the class names (``None`` for bare integers).

    A ``datasets.ClassLabel`` column keeps its names; string labels become a ``ClassLabel``
    of ``names`` (``--label_names``) or else of their sorted distinct values over all splits,
    so a class has the same id in each. ``None`` entries of ``splits`` pass through. Raises
    ``ValueError`` naming the column and split for a missing label, or a label string that
    the class names lack.
    """
    import datasets

    parts = {name: part for name, part in splits.items() if part is not None}
    if label_column is None or not parts:
        return splits, names
    features = {name: part.features[label_column] for name, part in parts.items()}
    class_labels = [f for f in features.values() if isinstance(f, datasets.ClassLabel)]
    strings = [name for name, f in features.items() if _is_string_feature(f)]
    if not class_labels and not strings:
        return splits, names
    values = {name: set(parts[name].unique(label_column)) for name in strings}
    for name, found in values.items():
        if None in found:
            raise ValueError(f"column {label_column!r} (`label_column`) of split {name!r} has empty labels")
    if names is None:
        names = list(class_labels[0].names) if class_labels else sorted(set().union(*values.values()))
    for name, found in values.items():
        unknown = sorted(found - set(names))
        if unknown:
            raise ValueError(f"labels {unknown} in column {label_column!r} of split {name!r} are not among the "
                             f"class names {names}")
    feature = datasets.ClassLabel(names=names)
    encoded = {name: part.cast_column(label_column, feature) if name in strings else part
               for name, part in splits.items()}
    return encoded, names


def image_decodes(value) -> bool:
    """Whether an image value (``{"bytes", "path"}``, a path or a PIL image) opens as an
    image (:func:`~factorcl_hf.data.images.open_image`)."""
    try:
        open_image(value)
        return True
    except UndecodableImageError:
        return False


def drop_undecodable_images(dataset, image_column: str = "image"):
    """Drop rows whose image fails to decode; returns ``(dataset, number_dropped)``. The
    image column is left undecoded (``{"bytes", "path"}``): its users open it with
    :func:`~factorcl_hf.data.images.open_image`, as the check did.

    Decision: skip with a warning count rather than fail a long run on one bad file; the
    count is logged and reported in the training results.
    """
    import datasets

    raw = dataset.cast_column(image_column, datasets.Image(decode=False))
    keep = raw.filter(lambda value: image_decodes(value), input_columns=image_column)
    dropped = len(dataset) - len(keep)
    if dropped:
        logger.warning("Skipped %d of %d rows whose %r failed to decode", dropped, len(dataset), image_column)
    return keep, dropped


def check_batch_values(batch: dict[str, torch.Tensor], vocab_size: int | None = None,
                       num_labels: int | None = None) -> None:
    """Raise ``ValueError`` naming the input of a model batch whose values the model would
    turn into NaN or an indexing error: non-finite ``pixel_values`` (and augmented views),
    token ids outside ``[0, vocab_size - 1]``, class ids outside ``[0, num_labels - 1]``.

    The collator runs it on every batch it makes, on the CPU: the model itself checks values
    only with ``FACTORCL_DEBUG`` (each check would be a device sync per step, integrity.py)."""
    for name, value in batch.items():
        if name.endswith("pixel_values"):
            check_pixel_values(name, value)
        elif name.endswith("input_ids") and vocab_size is not None:
            check_token_ids(name, value, vocab_size)
    if num_labels is not None and "labels" in batch:
        check_label_ids("labels", batch["labels"], num_labels)


class IndexedDataset(torch.utils.data.Dataset):
    """A ``datasets.Dataset`` whose rows carry their index (for per-row augmentation seeds)."""

    def __init__(self, dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return {**self.dataset[int(index)], "_index": int(index)}


@dataclass
class ImageTextCollator:
    """Rows → model inputs: processor outputs, labels, and (for objectives that use them)
    augmented views of both modalities.

    Args:
        processor: a ``CLIPProcessor``.
        image_column / caption_column / label_column: column names.
        image_augmentation / text_augmentation: callables ``(item, generator=...)`` from
            :mod:`factorcl_hf.augmentations`; ``None`` means no augmented views.
        seed: base seed of the per-row augmentation generators; set ``epoch`` each epoch.
        max_length: the tokenizer's truncation length (the model's text positions).
        vocab_size / num_labels: the model's; every batch is checked against them
            (:func:`check_batch_values`; pixel values are always checked), so a tokenizer or
            label set that does not fit the model is refused before the model sees a batch.
    """

    processor: Any
    image_column: str = "image"
    caption_column: str = "caption"
    label_column: str | None = None
    image_augmentation: Any = None
    text_augmentation: Any = None
    seed: int = 0
    epoch: int = 0
    max_length: int | None = None
    vocab_size: int | None = None
    num_labels: int | None = None
    _text_kwargs: dict = field(init=False, repr=False)

    def __post_init__(self):
        self._text_kwargs = dict(padding=True, truncation=True, return_tensors="pt")
        if self.max_length is not None:
            self._text_kwargs["max_length"] = self.max_length

    def _row_generator(self, index: int) -> torch.Generator:
        # A distinct, reproducible stream per (seed, epoch, row).
        return torch.Generator().manual_seed((self.seed * 1_000_003 + self.epoch) * 10_000_019 + index)

    def _encode(self, images, captions) -> dict[str, torch.Tensor]:
        pixels = self.processor.image_processor(images=images, return_tensors="pt")["pixel_values"]
        text = self.processor.tokenizer(captions, **self._text_kwargs)
        return {"pixel_values": pixels, "input_ids": text["input_ids"], "attention_mask": text["attention_mask"]}

    def __call__(self, rows: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        images = [open_image(row[self.image_column]) for row in rows]
        captions = [str(row[self.caption_column]) for row in rows]
        batch = self._encode(images, captions)
        # Which rows this batch holds (the training loop pops it before the model call).
        batch["row_indices"] = torch.tensor([row.get("_index", -1) for row in rows], dtype=torch.long)
        if self.label_column is not None:
            batch["labels"] = torch.tensor([int(row[self.label_column]) for row in rows], dtype=torch.long)
        if self.image_augmentation is not None or self.text_augmentation is not None:
            generators = [self._row_generator(row.get("_index", i)) for i, row in enumerate(rows)]
            aug_images = [
                self.image_augmentation(im, generator=g) if self.image_augmentation else im
                for im, g in zip(images, generators)
            ]
            aug_captions = [
                self.text_augmentation(c, generator=g) if self.text_augmentation else c
                for c, g in zip(captions, generators)
            ]
            views = self._encode(aug_images, aug_captions)
            batch.update({f"augmented_{key}": value for key, value in views.items()})
        check_batch_values(batch, self.vocab_size, self.num_labels)
        return batch
