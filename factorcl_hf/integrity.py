"""Checks that saved weights are the ones that were written, that weights are finite, and
the value checks of model inputs (finite pixels, token and label ids in range).

safetensors validates its header but not the payload: overwritten bytes load silently (often
as a NaN or infinite parameter). A ``SHA256SUMS`` file beside the weights (the format of
``sha256sum``, so ``sha256sum -c SHA256SUMS`` verifies a folder by hand too) catches that,
and a finiteness check catches damage in folders written without one.

Standard library and torch only: ``modeling_factorcl.py`` imports it, and transformers copies
it into folders saved for ``trust_remote_code``.

Value checks read a tensor's values, which for a tensor on an accelerator is a device-to-host
synchronization (about ten per training step if the model ran them). They run where the values
are on the CPU anyway: the training collator (``data/image_text.py``) checks every batch before
it reaches the model, and the data loading checks every label. ``FactorCLModel.forward`` and
the objectives keep the shape and dtype checks (no synchronization) and run the value checks
only when :func:`value_checks_enabled`: ``FACTORCL_DEBUG`` set to anything but ``0``.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import torch

CHECKSUM_FILE = "SHA256SUMS"
DEBUG_VARIABLE = "FACTORCL_DEBUG"


def value_checks_enabled() -> bool:
    """Whether the model and objectives check input values (``FACTORCL_DEBUG`` set to anything
    but ``0``; read at each call, so it can be switched on in a running process)."""
    return os.environ.get(DEBUG_VARIABLE, "0") not in ("", "0")


def check_pixel_values(name: str, pixel_values: torch.Tensor) -> None:
    """Raise ``ValueError`` naming ``name`` when a float image batch holds NaN or infinity."""
    if pixel_values.is_floating_point() and not bool(torch.isfinite(pixel_values).all()):
        raise ValueError(f"`{name}` holds NaN or infinite values; the model would return NaN embeddings")


def check_token_ids(name: str, input_ids: torch.Tensor, vocab_size: int) -> None:
    """Raise ``ValueError`` naming ``name`` and the first id outside ``[0, vocab_size - 1]``."""
    if input_ids.numel() == 0:
        return
    low, high = int(input_ids.min()), int(input_ids.max())
    if low < 0 or high >= vocab_size:
        bad = low if low < 0 else high
        raise ValueError(f"`{name}` holds token id {bad}, outside this model's vocabulary [0, {vocab_size - 1}]")


def check_label_ids(name: str, labels: torch.Tensor, num_labels: int) -> None:
    """Raise ``ValueError`` naming ``name`` when a class id is outside ``[0, num_labels - 1]``."""
    if labels.numel() == 0:
        return
    low, high = int(labels.min()), int(labels.max())
    if low < 0 or high >= num_labels:
        raise ValueError(f"`{name}` must be in [0, {num_labels - 1}] (num_labels={num_labels}), "
                         f"got values in [{low}, {high}]")


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


def _listed_file(folder: Path, name: str, listing: Path, number: int) -> Path:
    """The file a ``SHA256SUMS`` line names, which must be a plain name inside ``folder``: no
    folder part, no ``..``, not absolute, and no symlink out of ``folder`` (the listing is
    data from the folder, and must not make the loader read files elsewhere)."""
    if not name or name in (".", "..") or "/" in name or "\\" in name or os.path.isabs(name) or "\0" in name:
        raise ValueError(f"{listing} line {number} names {name!r}: entries must be file names inside the folder")
    path = folder / name
    if os.path.islink(path) and not _inside_model_folder(Path(os.path.realpath(path)), folder):
        raise ValueError(f"{listing} line {number} names {name!r}, a symlink out of the folder")
    if path.exists() and not path.is_file():
        raise ValueError(f"{listing} line {number} names {name!r}, which is not a regular file (never read)")
    return path


def _inside_model_folder(target: Path, folder: Path) -> bool:
    """Whether a symlink's ``target`` belongs to ``folder``: inside it, or, for a snapshot of
    the Hugging Face cache (``REPO/snapshots/REVISION/``), inside the repository's ``blobs/``
    where the cache keeps the files its snapshots link to."""
    folder = Path(os.path.realpath(folder))
    blobs = folder.parent.parent / "blobs" if folder.parent.name == "snapshots" else None
    return target.is_relative_to(folder) or (blobs is not None and target.is_relative_to(blobs))


def verify_checksums(folder: str | os.PathLike, required: str | None = None) -> bool:
    """Check every file listed in ``folder/SHA256SUMS``; ``False`` when there is no such
    file. Raises ``ValueError`` naming the first missing or damaged file, an entry that is not
    a file name inside ``folder`` (nothing outside it is read), and a listing without any
    file matching ``required`` (e.g. ``"*.safetensors"``: an empty listing checks nothing)."""
    folder = Path(folder)
    listing = folder / CHECKSUM_FILE
    if not listing.is_file():
        return False
    entries = []
    for number, line in enumerate(listing.read_text(encoding="utf-8", errors="replace").splitlines(), start=1):
        expected, _, name = line.partition("  ")
        if not name or len(expected) != 64:
            raise ValueError(f"{listing} line {number} is not '<sha256>  <file name>': {line!r}")
        entries.append((expected, _listed_file(folder, name, listing, number)))
    if required is not None and not any(path.match(required) for _, path in entries):
        raise ValueError(f"{listing} lists no {required} file: it is empty or incomplete (delete it to load "
                         "without checksums, or restore it)")
    for expected, path in entries:
        if not path.is_file():
            raise ValueError(f"{path} is listed in {listing} but missing: the folder is incomplete")
        actual = sha256_of(path)
        if actual != expected:
            raise ValueError(
                f"{path} is damaged: its SHA-256 is {actual}, but {listing} records {expected} "
                "(the file changed after it was saved). Restore it; or, if it was re-saved on purpose (e.g. by "
                f"another tool), delete {listing} to load the folder without checksums"
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


# Bounds of a saved config's sizes: far above any real CLIP/SigLIP (ViT-bigG: width 1664 to
# 8192, 48 layers, vocabulary 49,408 to 256,000), far below what would allocate terabytes.
_SIZE_BOUNDS = {
    "hidden_size": 1 << 16, "intermediate_size": 1 << 18, "projection_dim": 1 << 16, "projection_size": 1 << 16,
    "num_hidden_layers": 1 << 10, "num_attention_heads": 1 << 10, "vocab_size": 1 << 22,
    "max_position_embeddings": 1 << 20, "image_size": 1 << 14, "patch_size": 1 << 14, "num_channels": 64,
    "head_dim": 1 << 16, "head_hidden_dim": 1 << 18, "critic_hidden_dim": 1 << 18, "critic_embed_dim": 1 << 16,
    "critic_num_hidden_layers": 64, "num_labels": 1 << 20,
}


def check_saved_config(saved: dict, where: str) -> None:
    """Name the field of a saved FactorCL ``config.json`` (a dict) that would make the model
    fail inside torch: a size that is not a positive integer or is absurdly large (a terabyte
    allocation), or an image size the patch size does not divide. (Another ``model_type`` is
    refused by ``FactorCLConfig`` itself.)"""
    sections = [("", saved)]
    backbone = saved.get("clip_config")
    if isinstance(backbone, dict):
        sections.append(("clip_config.", backbone))
        for tower in ("text_config", "vision_config"):
            if isinstance(backbone.get(tower), dict):
                sections.append((f"clip_config.{tower}.", backbone[tower]))
    for prefix, section in sections:
        for name, bound in _SIZE_BOUNDS.items():
            value = section.get(name)
            if value is None or (name == "num_labels" and prefix):
                continue
            if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= bound:
                raise ValueError(f"{where}: `{prefix}{name}` is {value!r}; it must be an integer in [1, {bound}]")
        image, patch = section.get("image_size"), section.get("patch_size")
        if isinstance(image, int) and isinstance(patch, int) and image % patch:
            raise ValueError(f"{where}: `{prefix}image_size` ({image}) is not a multiple of "
                             f"`{prefix}patch_size` ({patch})")
