"""Image+caption(+label) data for training and evaluation: loading from the Hub or local
files, validation, and the collator that turns rows into model inputs.

The collator draws each sample's augmentation from a generator seeded by
``(seed, epoch, row index)``, so augmented views do not depend on the number of processes,
the batch a row lands in, or whether a run was interrupted and resumed.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sized
from dataclasses import dataclass, field
from io import BytesIO
from pathlib import Path
from typing import Any

import torch
from PIL import Image

logger = logging.getLogger(__name__)

_LOCAL_FORMATS = {".csv": "csv", ".json": "json", ".jsonl": "json", ".parquet": "parquet"}
# A local file's rows name their split in this column (as in open_clip's and many datasets'
# CSVs); without it, every row is in "train".
SPLIT_COLUMN = "split"


def load_image_text_dataset(
    source: str | os.PathLike,
    image_column: str = "image",
    caption_column: str = "caption",
    label_column: str | None = None,
    split: str | None = None,
    streaming: bool = False,
):
    """Load a dataset with image and caption columns (and optionally a label column).

    ``source`` is a local imagefolder directory (with ``metadata.jsonl``), a local
    ``.csv``/``.jsonl``/``.json``/``.parquet`` file whose image column holds paths (and
    whose optional ``split`` column names each row's split), or a Hub dataset id. Returns a ``DatasetDict`` (or the ``split``) whose image column is decoded
    to PIL images. Raises ``ValueError`` naming any missing column.
    """
    import datasets

    path = Path(source)
    if path.is_dir() and any(path.glob("*.parquet")):
        # Parquet shards (e.g. `Dataset.to_parquet` output, images embedded): one split.
        shards = sorted(str(shard) for shard in path.glob("*.parquet"))
        loaded = datasets.load_dataset("parquet", data_files={"train": shards}, streaming=streaming)
    elif path.is_dir():
        loaded = datasets.load_dataset("imagefolder", data_dir=str(path), streaming=streaming)
    elif path.suffix in _LOCAL_FORMATS:
        if streaming:
            raise ValueError(f"streaming reads Parquet shards in a folder, an imagefolder or a Hub dataset; the local "
                             f"file {str(path)!r} loads whole (drop --streaming)")
        if not path.exists():
            raise ValueError(f"data file {str(path)!r} does not exist")
        if path.stat().st_size == 0:
            raise ValueError(f"data file {str(path)!r} is empty: need at least 2 rows for contrastive training")
        try:
            loaded = datasets.load_dataset(_LOCAL_FORMATS[path.suffix], data_files=str(path))
        except Exception as error:  # noqa: BLE001 - pandas/pyarrow/datasets each raise their own
            cause = error.__cause__ or error
            raise ValueError(
                f"data file {str(path)!r} cannot be read as {_LOCAL_FORMATS[path.suffix]}: it is empty or malformed "
                f"({type(cause).__name__}: {cause})"
            ) from error
        # Relative image paths are relative to the file, not to the working directory.
        loaded = loaded.map(
            lambda row: {image_column: str(path.parent / row[image_column]) if row.get(image_column) else None}
        ).cast_column(image_column, datasets.Image())
        loaded = split_by_column(loaded["train"], str(path))
    else:
        loaded = datasets.load_dataset(str(source), streaming=streaming)
    if split is not None:
        if split not in loaded:
            raise ValueError(f"`split` {split!r} not found in {str(source)!r}; available: {sorted(loaded)}")
        loaded = loaded[split]
    for name, part in loaded.items() if isinstance(loaded, dict) else [(split, loaded)]:
        check_columns(part, image_column, caption_column, label_column, where=f"{source} [{name}]")
        check_values(part, caption_column, label_column, where=f"{source} [{name}]")
    return loaded


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


def check_columns(dataset, image_column: str, caption_column: str, label_column: str | None, where: str = "dataset"):
    """Raise ``ValueError`` naming each required column that ``dataset`` lacks, and reject an
    empty dataset."""
    required = {"image_column": image_column, "caption_column": caption_column}
    if label_column is not None:
        required["label_column"] = label_column
    for argument, column in required.items():
        # A stream of undeclared features names its columns only once read.
        if dataset.column_names is not None and column not in dataset.column_names:
            raise ValueError(
                f"{where} has no column {column!r} (`{argument}`); its columns are {dataset.column_names}"
            )
    if isinstance(dataset, Sized) and len(dataset) == 0:  # a stream's length is unknown
        raise ValueError(f"{where} is empty: need at least 2 rows for contrastive training")


def check_values(dataset, caption_column: str, label_column: str | None, where: str = "dataset"):
    """Raise ``ValueError`` naming the column, row and value of the first empty caption, and
    of the first label that is not a class id (a missing or NaN label, a fraction such as 0.7
    that would otherwise be floored, a negative number, a string not encoded as a
    ``ClassLabel``). String labels are class names, encoded later (:func:`encode_labels`).
    A streamed dataset is not read here: its rows are checked as they arrive."""
    import datasets

    if not isinstance(dataset, datasets.Dataset):
        return
    for row, caption in enumerate(dataset[caption_column]):
        if caption is None or not str(caption).strip():
            raise ValueError(f"{where}: row {row} of column {caption_column!r} (`caption_column`) is empty ({caption!r})")
    if label_column is None:
        return
    for row, label in enumerate(dataset[label_column]):
        problem = _label_problem(label)
        if problem:
            raise ValueError(
                f"{where}: row {row} of column {label_column!r} (`label_column`) is {label!r}, {problem}. Labels must "
                "be integer class ids >= 0 (or strings encoded with `Dataset.class_encode_column`)"
            )


def _label_problem(label) -> str | None:
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


def encode_labels(splits: dict[str, Any], label_column: str | None) -> tuple[dict[str, Any], list[str] | None]:
    """Labels as class ids in every split, and the class names (``None`` for bare integers).

    A ``datasets.ClassLabel`` column keeps its names; string labels become a ``ClassLabel``
    of their sorted distinct values over all splits, so a class has the same id in each.
    ``None`` entries of ``splits`` pass through. Raises ``ValueError`` naming the column and
    split for a missing label, or a label string that the ClassLabel names lack.
    """
    import datasets

    parts = {name: part for name, part in splits.items() if part is not None}
    if label_column is None or not parts:
        return splits, None
    features = {name: part.features[label_column] for name, part in parts.items()}
    class_labels = [f for f in features.values() if isinstance(f, datasets.ClassLabel)]
    strings = [name for name, f in features.items() if _is_string_feature(f)]
    if not class_labels and not strings:
        return splits, None
    values = {name: set(parts[name].unique(label_column)) for name in strings}
    for name, found in values.items():
        if None in found:
            raise ValueError(f"column {label_column!r} (`label_column`) of split {name!r} has empty labels")
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
    """Whether an undecoded ``datasets.Image`` value (``{"bytes", "path"}``) opens as an image."""
    if value is None:
        return False
    try:
        source = BytesIO(value["bytes"]) if value.get("bytes") else value["path"]
        with Image.open(source) as image:
            image.load()
        return True
    except Exception:  # noqa: BLE001 - any decoding failure means "skip this row"
        return False


def drop_undecodable_images(dataset, image_column: str = "image"):
    """Drop rows whose image fails to decode; returns ``(dataset, number_dropped)``.

    Decision: skip with a warning count rather than fail a long run on one bad file; the
    count is logged and reported in the training results.
    """
    import datasets

    raw = dataset.cast_column(image_column, datasets.Image(decode=False))
    keep = raw.filter(lambda row: image_decodes(row[image_column]))
    dropped = len(dataset) - len(keep)
    if dropped:
        logger.warning("Skipped %d of %d rows whose %r failed to decode", dropped, len(dataset), image_column)
    return keep.cast_column(image_column, datasets.Image()), dropped


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
        images = [row[self.image_column].convert("RGB") for row in rows]
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
        return batch
