"""Test helpers: a saved tiny model, noise images and the code blocks of a Markdown file.

Tests only: nothing outside ``tests/`` imports this module (``tests/test_code_structure.py``).
The offline tokenizer, configs and processor that the product itself uses (the embedded
default's tiny CLIP) live in :mod:`factorcl_hf.offline`.

- :func:`save_tiny_model` saves a randomly initialised tiny FactorCL model with its processor;
  :func:`random_images` gives noise images to feed it.
- :func:`markdown_code_blocks` reads the code snippets of a README or model card, which tests run.
"""

from __future__ import annotations

import re
import shutil
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from .configuration_factorcl import FactorCLConfig
from .modeling_factorcl import FactorCLModel
from .offline import build_caption_tokenizer, special_token_ids, tiny_clip_config, tiny_clip_processor

__all__ = ["save_tiny_model", "random_images", "markdown_code_blocks", "fallback_folder"]


def save_tiny_model(directory, captions: Iterable[str], seed: int = 0, **config_kwargs):
    """Save a randomly initialised (``seed``) FactorCL model on a :func:`tiny_clip_config`
    backbone, and its :func:`tiny_clip_processor` whose vocabulary holds every word of
    ``captions``, to ``directory``; returns ``(model, processor)``, the model in eval mode.
    ``config_kwargs`` go to ``FactorCLConfig`` (e.g. small heads)."""
    tokenizer = build_caption_tokenizer(list(captions))
    config = FactorCLConfig(clip_config=tiny_clip_config(len(tokenizer), **special_token_ids(tokenizer)), **config_kwargs)
    torch.manual_seed(seed)
    model, processor = FactorCLModel(config).eval(), tiny_clip_processor(tokenizer, 32)
    model.save_pretrained(directory)
    processor.save_pretrained(directory)
    return model, processor


def random_images(count: int, size: int = 40, seed: int = 0) -> list:
    """``count`` RGB noise images of ``size`` x ``size`` pixels, reproducible by ``seed``."""
    rng = np.random.default_rng(seed)
    return [Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)) for _ in range(count)]


def markdown_code_blocks(text: str, section: str | None = None) -> list[tuple[str, str]]:
    """``(language, code)`` of each fenced block of the Markdown ``text``, in order (a block
    indented in a list item comes out dedented); with ``section``, only the blocks under the
    heading whose title is ``section`` (up to the next heading of the same or a higher level).
    Raises ``ValueError`` when that heading is missing."""
    blocks, fence, inside, level = [], None, section is None, None
    for line in text.splitlines():
        if fence is not None:  # in a code block: a `# comment` there is no heading
            language, indent, code = fence
            if line.strip().startswith("```"):
                if inside:
                    blocks.append((language, code))
                fence = None
            else:
                fence = (language, indent, code + line[indent:] + "\n")
            continue
        if opening := re.match(r"(\s*)```(\S*)", line):
            fence = (opening.group(2), len(opening.group(1)), "")
        elif section is not None and (heading := re.match(r"(#+) (.*?)\s*$", line)):
            if inside and len(heading.group(1)) <= level:
                break
            if heading.group(2) == section:
                inside, level = True, len(heading.group(1))
    if section is not None and level is None:
        raise ValueError(f"no heading {section!r} in the text")
    return blocks


@contextmanager
def fallback_folder(error: BaseException) -> Iterator[Path]:
    """The temporary folder a failed final save names in ``error`` ("the trained model was
    saved to '...' instead"), removed when the block ends."""
    path = Path(str(error).split("saved to '")[1].split("'")[0])
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)
