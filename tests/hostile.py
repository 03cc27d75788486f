"""Hostile files, made at test time, and a deadline for calls that could hang.

Shared by tests/test_reliability.py (one test per case of issue 27) and
tests/test_hostile_inputs.py (the corpus through every entry point).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import struct
import zlib
from pathlib import Path

import numpy as np
from PIL import Image

# The words of every caption the helpers write, so a tokenizer built from CAPTION_WORDS knows them.
CAPTION_WORDS = ["a", "red", "green", "blue", "circle", "square", "photo", "of", "the", "left", "right"]


class Hang(BaseException):
    """A call ran past its deadline. A ``BaseException``, as ``KeyboardInterrupt`` is: the
    code under test's ``except Exception`` (skip an unreadable file...) must not swallow it."""


@contextlib.contextmanager
def deadline(seconds: float, what: str = "the call"):
    """Fail (:class:`Hang`) if the block runs longer than ``seconds``: a blocking ``open`` of a
    FIFO is interrupted by the alarm's signal too."""
    def expired(signum, frame):
        raise Hang(f"{what} did not finish within {seconds} s")

    previous = signal.signal(signal.SIGALRM, expired)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def good_png(path: Path, index: int = 0, size: int = 24) -> Path:
    """A small RGB PNG whose colour depends on ``index``."""
    Image.new("RGB", (size, size), ((index * 37) % 256, (index * 91) % 256, 128)).save(path)
    return path


def truncated_png(path: Path) -> Path:
    """A valid PNG cut in the middle of its image data."""
    good_png(path, 3, size=64)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def bomb_png(path: Path, side: int = 100_000) -> Path:
    """A few hundred bytes whose header claims ``side`` x ``side`` pixels: a decompression bomb
    to any reader that trusts it (Pillow refuses it on open, above twice MAX_IMAGE_PIXELS; 10,000
    x 10,000 sits between the two limits, where Pillow only warns)."""
    header = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)  # 8-bit greyscale
    rows = zlib.compress(b"\x00" * 1024)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", header) + _chunk(b"IDAT", rows) + _chunk(b"IEND", b""))
    return path


def fifo(path: Path) -> Path:
    """A named pipe: opening it for reading blocks until a writer comes, which never does."""
    os.mkfifo(path)
    return path


def png16(path: Path, size: int = 24) -> Path:
    """A 16-bit greyscale PNG, a horizontal ramp from 0 to 65535 (mode I;16)."""
    ramp = np.linspace(0, 65535, size, dtype=np.float64).round().astype(np.uint16)
    Image.fromarray(np.tile(ramp, (size, 1))).save(path)
    return path


def exif_rotated_jpeg(path: Path) -> tuple[Path, Image.Image]:
    """A JPEG stored 32 x 16 (left half red, right half blue) with EXIF orientation 6 (shown
    rotated 90 degrees clockwise, 16 x 32); returns it and the upright image a viewer shows."""
    stored = Image.new("RGB", (32, 16), (255, 0, 0))
    stored.paste((0, 0, 255), (16, 0, 32, 16))
    exif = Image.Exif()
    exif[0x0112] = 6
    stored.save(path, exif=exif, quality=100)
    return path, stored.transpose(Image.Transpose.ROTATE_270)


def caption(index: int) -> str:
    return f"a {CAPTION_WORDS[1 + index % 3]} {CAPTION_WORDS[4 + index % 2]} photo"


def imagefolder(folder: Path, rows: int, extra: list[tuple[str, str]] = (), label_of=lambda i: i % 2,
                split: str = "train") -> Path:
    """An imagefolder split of ``rows`` good images, plus ``extra`` (file name, caption) rows
    whose files the caller makes; ``metadata.jsonl`` with caption and label."""
    target = folder / split
    target.mkdir(parents=True, exist_ok=True)
    lines = []
    for i in range(rows):
        good_png(target / f"{i}.png", i)
        lines.append({"file_name": f"{i}.png", "caption": caption(i), "label": label_of(i)})
    for j, (name, text) in enumerate(extra):
        lines.append({"file_name": name, "caption": text, "label": label_of(rows + j)})
    (target / "metadata.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    return folder


def write_csv(path: Path, rows: list[dict]) -> Path:
    """A CSV of ``rows`` (dicts with the same keys)."""
    import csv

    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return path
