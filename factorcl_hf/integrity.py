"""Checks that saved weights are the ones that were written, and that weights are finite.

safetensors validates its header but not the payload: overwritten bytes load silently (often
as a NaN or infinite parameter). A ``SHA256SUMS`` file beside the weights (the format of
``sha256sum``, so ``sha256sum -c SHA256SUMS`` verifies a folder by hand too) catches that,
and a finiteness check catches damage in folders written without one.

Standard library and torch only: ``modeling_factorcl.py`` imports it, and transformers copies
it into folders saved for ``trust_remote_code``.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import torch

CHECKSUM_FILE = "SHA256SUMS"


def sha256_of(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def write_checksums(folder: str | os.PathLike, pattern: str = "*") -> Path:
    """Write ``folder/SHA256SUMS`` for the files of ``folder`` matching ``pattern``."""
    folder = Path(folder)
    names = sorted(p.name for p in folder.glob(pattern) if p.is_file() and p.name != CHECKSUM_FILE)
    target = folder / CHECKSUM_FILE
    target.write_text("".join(f"{sha256_of(folder / name)}  {name}\n" for name in names))
    return target


def verify_checksums(folder: str | os.PathLike) -> bool:
    """Check every file listed in ``folder/SHA256SUMS``; ``False`` when there is no such
    file. Raises ``ValueError`` naming the first missing or damaged file."""
    folder = Path(folder)
    listing = folder / CHECKSUM_FILE
    if not listing.is_file():
        return False
    for number, line in enumerate(listing.read_text().splitlines(), start=1):
        expected, _, name = line.partition("  ")
        if not name or len(expected) != 64:
            raise ValueError(f"{listing} line {number} is not '<sha256>  <file name>': {line!r}")
        path = folder / name
        if not path.is_file():
            raise ValueError(f"{path} is listed in {listing} but missing: the folder is incomplete")
        actual = sha256_of(path)
        if actual != expected:
            raise ValueError(
                f"{path} is damaged: its SHA-256 is {actual}, but {listing} records {expected} "
                "(the file changed after it was saved; restore it or delete the folder)"
            )
    return True


def check_model_path(path: str | os.PathLike) -> None:
    """Raise ``FileNotFoundError`` naming ``path`` when it can only be meant as a local folder
    (it starts with ``/``, ``.`` or ``~``, or has more than one ``/``: never a Hub id) but is
    not one, instead of the Hub's "Repo id must be in the form ..." error."""
    text = os.fspath(path)
    if os.path.isdir(text):
        return
    looks_local = text.startswith(("/", ".", "~")) or text.count("/") > 1 or os.sep != "/" and os.sep in text
    if looks_local or os.path.exists(text):
        retired = Path(text).with_name(f".retired-{Path(text).name}")
        hint = f"; an interrupted save left the previous model at {str(retired)!r}" if retired.is_dir() else ""
        kind = "is not a directory" if os.path.exists(text) else "does not exist"
        raise FileNotFoundError(f"model directory {text!r} {kind}{hint}")


def check_finite(module, where: str = "the model") -> None:
    """Raise ``ValueError`` naming the first parameter or buffer of ``module`` that holds a NaN
    or an infinite value."""
    for kind, tensors in (("parameter", module.named_parameters()), ("buffer", module.named_buffers())):
        for name, tensor in tensors:
            # Meta tensors (weights offloaded by a device map) hold no values to check.
            if tensor.is_floating_point() and not tensor.is_meta and not bool(torch.isfinite(tensor).all()):
                bad = int((~torch.isfinite(tensor)).sum())
                raise ValueError(
                    f"{kind} {name!r} of {where} has {bad} NaN or infinite value(s) of {tensor.numel()}: "
                    "the weights are damaged (or training diverged)"
                )
