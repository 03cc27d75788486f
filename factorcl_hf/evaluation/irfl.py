"""IRFL (Image Recognition of Figurative Language, Yosef et al. 2023) evaluation from local files.

IRFL's task CSVs (``assets/tasks/{idiom,metaphor,simile}_understanding_task.csv``) hold one
row per figurative phrase with, among others, the columns

* ``phrase`` — the idiom, metaphor or simile;
* ``figurative_type`` — ``idiom``, ``metaphor`` or ``simile``;
* ``answer`` — a JSON list with the one image that conveys the phrase's meaning;
* ``distractors`` — a JSON list of the other candidate images.

Image entries are URLs, local paths, or base64-encoded image data (the released CSVs contain
all three kinds). Nothing is downloaded here: a URL is looked up in ``image_root`` under
:func:`irfl_image_filename` (see ``examples/finetune_clip_irfl.md`` for a download script
that uses the same names).

The matching image is read from the ``answer`` column. (The FactorCL reference notebook read
it from ``distractors`` by mistake, so its figurative-type probe saw a non-matching image.)

Tasks:

* :func:`evaluate_irfl_multiple_choice` — IRFL's own understanding task, phrase -> K images
  (the answer among its distractors), plus the reverse, image -> K phrases;
* :func:`evaluate_irfl_type_probe` — the FactorCL paper's IRFL protocol: predict the
  figurative type from the (answer image, phrase) pair with a linear probe on frozen
  embeddings (shared, unique, shared+unique, backbone).
"""

from __future__ import annotations

import ast
import base64
import binascii
import contextlib
import csv
import hashlib
import io
import json
import logging
import os
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import numpy as np
import torch

from .embed import available_embeddings, embed_pairs, extract_embeddings
from .probe import linear_probe_accuracy
from .retrieval import expected_hits, score_matrix

__all__ = [
    "IRFL_COLUMNS",
    "FIGURATIVE_TYPES",
    "IRFLItem",
    "irfl_image_filename",
    "load_irfl_csv",
    "multiple_choice_accuracy",
    "evaluate_irfl_multiple_choice",
    "evaluate_irfl_type_probe",
]

logger = logging.getLogger(__name__)

IRFL_COLUMNS = ("phrase", "figurative_type", "answer", "distractors")
FIGURATIVE_TYPES = ("idiom", "metaphor", "simile")


@dataclass
class IRFLItem:
    """One IRFL question. Images are file paths (str) or PIL images (decoded base64 entries)."""

    phrase: str
    figurative_type: str
    answer: Any
    distractors: list[Any] = field(default_factory=list)

    @property
    def candidates(self) -> list[Any]:
        """The answer followed by the distractors (the answer is candidate 0)."""
        return [self.answer, *self.distractors]


def irfl_image_filename(url: str) -> str:
    """Local file name of an IRFL image URL: a hash of the URL plus its extension.

    URLs end in names like ``image.jpg`` that repeat across sites, so the name is derived
    from the whole URL.
    """
    suffix = Path(urlsplit(url).path).suffix.lower()
    if suffix not in (".jpg", ".jpeg", ".png", ".gif", ".webp", ".bmp"):
        suffix = ".jpg"
    return hashlib.sha1(url.encode("utf-8")).hexdigest()[:20] + suffix


@contextlib.contextmanager
def _large_csv_fields() -> Iterator[None]:
    # IRFL inlines base64 images in cells, far beyond csv's 128 KiB default field limit.
    previous = csv.field_size_limit()
    csv.field_size_limit(min(sys.maxsize, 2**31 - 1))
    try:
        yield
    finally:
        csv.field_size_limit(previous)


def _parse_entries(cell: str, where: str) -> list[str]:
    cell = cell.strip()
    if not cell:
        return []
    if not cell.startswith("["):
        return [cell]
    try:
        entries = json.loads(cell)
    except json.JSONDecodeError:
        try:  # Python-literal lists (single quotes) from pandas round trips
            entries = ast.literal_eval(cell)
        except (ValueError, SyntaxError) as error:
            raise ValueError(f"{where}: expected a JSON list of image entries") from error
    if not isinstance(entries, list) or not all(isinstance(entry, str) for entry in entries):
        raise ValueError(f"{where}: expected a list of strings (image URLs, paths or base64 data)")
    return entries


def _decode_base64_image(entry: str):
    from PIL import Image, UnidentifiedImageError

    try:
        data = base64.b64decode(entry, validate=True)
        with Image.open(io.BytesIO(data)) as image:
            return image.convert("RGB")
    except (binascii.Error, ValueError, UnidentifiedImageError, OSError):
        return None


class _MissingImage(ValueError):
    pass


def _local_file(entry: str, bases: list[Path]) -> str | None:
    for path in (Path(entry), *(base / entry for base in bases)):
        try:
            if path.is_file():
                return str(path)
        except (OSError, ValueError):  # base64 data makes no valid file name (too long)
            return None
    return None


def _resolve_image(entry: str, csv_dir: Path, image_root: Path | None, where: str):
    """A path (str) or PIL image for one entry; raises `_MissingImage` when it is not local."""
    entry = entry.strip()
    if urlsplit(entry).scheme in ("http", "https"):
        if image_root is None:
            raise _MissingImage(f"{where}: {entry!r} is a URL; pass `image_root`, the folder of downloaded images")
        path = image_root / irfl_image_filename(entry)
        if not path.is_file():
            raise _MissingImage(f"{where}: image of {entry!r} not found at {str(path)!r}")
        return str(path)
    bases = [csv_dir] if image_root is None else [image_root, csv_dir]
    local = _local_file(entry, bases)
    if local is not None:
        return local
    image = _decode_base64_image(entry)
    if image is None:
        raise _MissingImage(
            f"{where}: {entry[:60]!r} is neither an image file (looked in {[str(b) for b in bases]}) nor base64 image data"
        )
    return image


def load_irfl_csv(
    paths: str | os.PathLike | Sequence[str | os.PathLike],
    image_root: str | os.PathLike | None = None,
    skip_missing: bool = False,
) -> list[IRFLItem]:
    """Read IRFL task CSVs into :class:`IRFLItem` s, images resolved to local files.

    Args:
        paths: one CSV or several (e.g. the idiom, metaphor and simile task files).
        image_root: folder of downloaded images (URL entries); relative paths are looked up
            there first, then next to their CSV.
        skip_missing: drop rows whose images are not available locally (logged) instead of
            raising. IRFL links rot; the reference notebook silently skipped failing rows.

    Returns:
        The items of all files, in file and row order.
    """
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    if not paths:
        raise ValueError("`paths` must name at least one IRFL CSV file")
    root = Path(image_root) if image_root is not None else None
    if root is not None and not root.is_dir():
        raise ValueError(f"`image_root` {str(root)!r} is not a directory")

    items: list[IRFLItem] = []
    skipped = 0
    for csv_path in map(Path, paths):
        if not csv_path.is_file():
            raise ValueError(f"IRFL CSV {str(csv_path)!r} does not exist")
        with _large_csv_fields(), open(csv_path, newline="", encoding="utf-8") as handle:
            reader = csv.DictReader(handle)
            missing = [column for column in IRFL_COLUMNS if column not in (reader.fieldnames or ())]
            if missing:
                raise ValueError(f"{str(csv_path)!r} lacks IRFL columns {missing}; expected at least {IRFL_COLUMNS}")
            for row in reader:
                # The row's last physical line (quoted cells may span several lines).
                where = f"{csv_path.name} line {reader.line_num}"
                try:
                    answers = _parse_entries(row["answer"], f"{where}, column 'answer'")
                    if len(answers) != 1:
                        raise ValueError(f"{where}, column 'answer': expected exactly one image, got {len(answers)}")
                    answer = _resolve_image(answers[0], csv_path.parent, root, f"{where}, column 'answer'")
                    distractors = [
                        _resolve_image(entry, csv_path.parent, root, f"{where}, column 'distractors'")
                        for entry in _parse_entries(row["distractors"], f"{where}, column 'distractors'")
                    ]
                except _MissingImage as error:
                    if not skip_missing:
                        raise ValueError(str(error)) from None
                    logger.debug("skipping %s", error)
                    skipped += 1
                    continue
                items.append(IRFLItem(row["phrase"].strip(), row["figurative_type"].strip().lower(), answer, distractors))
    if skipped:
        logger.warning("skipped %d IRFL rows whose images are not available locally", skipped)
    if not items:
        raise ValueError(f"no usable IRFL rows in {[str(p) for p in paths]}")
    return items


def multiple_choice_accuracy(scores: Any, correct_index: Sequence[int] | None = None) -> float:
    """Fraction of questions answered right: the correct candidate scores highest (a tie
    with ``t`` wrong candidates counts ``1 / (t + 1)``, the chance of a random pick among them).

    Args:
        scores: ``[n_questions, n_candidates]`` scores (a ragged set can be padded with ``-inf``).
        correct_index: the correct candidate of each question (default: candidate 0).
    """
    scores = torch.as_tensor(scores, dtype=torch.float32)
    if scores.dim() != 2 or scores.shape[1] < 2:
        raise ValueError(f"`scores` must have shape [n_questions, n_candidates >= 2], got {tuple(scores.shape)}")
    index = torch.zeros(scores.shape[0], dtype=torch.long) if correct_index is None else torch.as_tensor(correct_index)
    if index.shape != (scores.shape[0],) or index.min() < 0 or index.max() >= scores.shape[1]:
        raise ValueError(f"`correct_index` must hold one candidate index in [0, {scores.shape[1] - 1}] per question")
    correct = torch.nn.functional.one_hot(index.long(), scores.shape[1]).bool()
    if not torch.isfinite(scores[correct]).all():
        raise ValueError("the correct candidates' scores must be finite")
    # -inf marks padding of ragged candidate lists: it loses to every finite score.
    padded = torch.where(torch.isneginf(scores), torch.finfo(torch.float32).min, scores)
    return expected_hits(padded, correct, 1).mean().item()


def _score_rows(critic, queries: torch.Tensor, candidates: torch.Tensor, query_is_image: bool) -> torch.Tensor:
    """Score query i against its own candidates ``candidates[i]`` ([n, K, d]) -> [n, K]."""
    rows = []
    for query, options in zip(queries, candidates):
        if query_is_image:
            rows.append(score_matrix(query[None], options, critic)[0])
        else:
            rows.append(score_matrix(options, query[None], critic)[:, 0])
    return torch.stack(rows)


def evaluate_irfl_multiple_choice(
    model,
    processor,
    items: Sequence[IRFLItem],
    embedding: str = "pooler",
    num_phrase_candidates: int | None = None,
    seed: int = 0,
    **embed_kwargs,
) -> dict[str, float]:
    """IRFL multiple choice in both directions.

    * phrase -> images: each phrase against its answer and distractor images (IRFL's task);
    * image -> phrases: each answer image against its phrase and ``num_phrase_candidates - 1``
      phrases of other items, drawn with ``seed`` (default: as many candidates as the
      phrase -> image questions have).

    Scores are the model's alignment critic for ``"pooler"`` embeddings, cosine otherwise,
    with images always the critic's first argument. Returns accuracies and the candidate counts.
    """
    if len(items) < 2:
        raise ValueError("`items` must hold at least two IRFL questions")
    num_images = {len(item.candidates) for item in items}
    if len(num_images) != 1 or min(num_images) < 2:
        raise ValueError(f"every item needs the same number (>= 2) of candidate images, got {sorted(num_images)}")
    k_images = num_images.pop()
    k_phrases = num_phrase_candidates if num_phrase_candidates is not None else k_images
    phrases = [item.phrase for item in items]
    if not isinstance(k_phrases, int) or not 2 <= k_phrases <= len(set(phrases)):
        raise ValueError(f"`num_phrase_candidates` must be an int in [2, {len(set(phrases))}] (distinct phrases), got {k_phrases!r}")

    critic = model.objective.alignment_critic if embedding == "pooler" else None
    image_embeds = extract_embeddings(
        model, processor, [image for item in items for image in item.candidates], "image", embedding, **embed_kwargs
    )[embedding].view(len(items), k_images, -1)
    phrase_embeds = extract_embeddings(model, processor, phrases, "text", embedding, **embed_kwargs)[embedding]

    rng = np.random.default_rng(seed)
    phrase_choices = []
    for i, phrase in enumerate(phrases):
        others = [j for j, other in enumerate(phrases) if other != phrase]
        phrase_choices.append([i, *rng.choice(others, size=k_phrases - 1, replace=False).tolist()])
    phrase_choices = torch.tensor(phrase_choices)

    phrase_to_image = _score_rows(critic, phrase_embeds, image_embeds, query_is_image=False)
    image_to_phrase = _score_rows(critic, image_embeds[:, 0], phrase_embeds[phrase_choices], query_is_image=True)
    return {
        "phrase_to_image_accuracy": multiple_choice_accuracy(phrase_to_image),
        "image_to_phrase_accuracy": multiple_choice_accuracy(image_to_phrase),
        "num_image_candidates": k_images,
        "num_phrase_candidates": k_phrases,
    }


def evaluate_irfl_type_probe(
    model,
    processor,
    items: Sequence[IRFLItem],
    embeddings: Sequence[str] | None = None,
    test_fraction: float = 0.2,
    seed: int = 0,
    **embed_kwargs,
) -> dict[str, float]:
    """Figurative-type classification by linear probe (the FactorCL paper's IRFL protocol).

    Each (answer image, phrase) pair is embedded as ``[image embedding; text embedding]``; a
    logistic regression is fitted on a stratified ``1 - test_fraction`` split and scored on
    the rest. Returns ``{"<embedding>_accuracy": ...}`` for each embedding (default: every
    one the model has except ``pooler``) and ``"chance_accuracy"`` (majority class of the test split).
    """
    from sklearn.model_selection import train_test_split

    if embeddings is None:
        embeddings = [name for name in available_embeddings(model) if name != "pooler"]
    types = sorted({item.figurative_type for item in items})
    if len(types) < 2:
        raise ValueError(f"`items` must cover at least two figurative types, got {types}")
    labels = np.array([types.index(item.figurative_type) for item in items])
    try:
        train_idx, test_idx = train_test_split(
            np.arange(len(items)), test_size=test_fraction, random_state=seed, stratify=labels
        )
    except ValueError as error:
        raise ValueError(
            f"cannot split {len(items)} items stratified by type with `test_fraction={test_fraction}`: {error}"
        ) from error

    features = embed_pairs(
        model, processor, [item.answer for item in items], [item.phrase for item in items], embeddings, **embed_kwargs
    )
    metrics = {
        f"{name}_accuracy": linear_probe_accuracy(
            values[train_idx], labels[train_idx], values[test_idx], labels[test_idx]
        )
        for name, values in features.items()
    }
    metrics["chance_accuracy"] = float(np.bincount(labels[test_idx]).max() / len(test_idx))
    return metrics
