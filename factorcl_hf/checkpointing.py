"""Crash-safe checkpoints: everything is written to a temporary sibling folder, flushed to
disk and renamed into place, so an interrupted save never leaves a half-written checkpoint or
model behind (and never destroys the previous one: an interrupted swap is undone on the next
start, see :func:`recover_interrupted_swap`).

A checkpoint holds accelerate's state (model as safetensors; optimizer, scheduler and RNG
states as torch files that accelerate loads with ``weights_only=True``), the training
progress as JSON (``train_state.json``; never a pickle, which could run code when loaded) and
``SHA256SUMS`` of its files, checked before anything is loaded.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import socket
import tempfile
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path

from .integrity import check_finite, verify_checksums, write_checksums

CHECKPOINT_PATTERN = re.compile(r"^step_(\d+)$")
TRAIN_STATE_FILE = "train_state.json"
RETIRED_PREFIX = ".retired-"
STAGING_PREFIX = ".staging-"
# Where a checkpoint keeps the processor (with the tokenizer) the run trained with.
PROCESSOR_DIR = "processor"
LOCK_FILE = ".factorcl-train.lock"
logger = logging.getLogger(__name__)


@dataclass
class TrainState:
    """Progress counters saved with every checkpoint, as JSON: the optimizer step and the
    batch geometry that turns it into rows (a resume with another geometry would skip the
    wrong rows). ``None``: not recorded (checkpoints of earlier versions)."""

    step: int = 0
    per_device_train_batch_size: int | None = None
    num_processes: int | None = None
    gradient_accumulation_steps: int | None = None

    def save(self, folder: str | os.PathLike) -> None:
        (Path(folder) / TRAIN_STATE_FILE).write_text(json.dumps(asdict(self)))

    def geometry_changes(self, other: TrainState) -> list[str]:
        """``"name: saved -> now"`` for each recorded batch-geometry field that differs."""
        saved, now = asdict(self), asdict(other)
        return [f"{name}: {saved[name]} -> {now[name]}" for name in saved
                if name != "step" and saved[name] is not None and saved[name] != now[name]]

    @classmethod
    def load(cls, folder: str | os.PathLike) -> TrainState:
        path = Path(folder) / TRAIN_STATE_FILE
        try:
            state = json.loads(path.read_text())
            step = state["step"]
        except FileNotFoundError as error:
            raise ValueError(
                f"checkpoint {str(folder)!r} has no {TRAIN_STATE_FILE}: it is incomplete, or was written by an "
                "earlier version (whose custom_checkpoint_0.pkl is never loaded: a pickle can run code)"
            ) from error
        except (ValueError, KeyError, TypeError) as error:
            raise ValueError(f"{path} is not a JSON object with an integer 'step': {error}") from error
        if not isinstance(step, int) or isinstance(step, bool) or step < 0:
            raise ValueError(f"{path}: 'step' must be a non-negative integer, got {step!r}")
        geometry = {}
        for f in fields(cls):
            value = state.get(f.name) if f.name != "step" else None
            if value is not None:
                if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                    raise ValueError(f"{path}: {f.name!r} must be a positive integer, got {value!r}")
                geometry[f.name] = value
        return cls(step=step, **geometry)


def checkpoints_dir(output_dir: str | os.PathLike) -> Path:
    return Path(output_dir) / "checkpoints"


def list_checkpoints(output_dir: str | os.PathLike) -> list[Path]:
    """Complete checkpoints under ``OUTPUT_DIR/checkpoints``, oldest first (a checkpoint whose
    replacement was interrupted is put back first)."""
    root = checkpoints_dir(output_dir)
    if not root.is_dir():
        return []
    for retired in root.glob(f"{RETIRED_PREFIX}step_*"):
        recover_interrupted_swap(root / retired.name[len(RETIRED_PREFIX):])
    found = [(int(m.group(1)), p) for p in root.iterdir() if p.is_dir() and (m := CHECKPOINT_PATTERN.match(p.name))]
    return [p for _, p in sorted(found)]


def latest_checkpoint(output_dir: str | os.PathLike) -> Path | None:
    found = list_checkpoints(output_dir)
    return found[-1] if found else None


def save_checkpoint(accelerator, output_dir: str | os.PathLike, state: TrainState, total_limit: int | None = None,
                    model=None, processor=None) -> Path:
    """``accelerator.save_state`` plus ``state`` (JSON) and checksums into
    ``checkpoints/step_{state.step}``, atomically; keeps the newest ``total_limit``
    checkpoints. Call it on every process. With ``model``, weights holding a NaN or an
    infinite value are refused (``ValueError`` naming the tensor) before anything is written.
    With ``processor``, it is saved in the checkpoint's ``processor/``: a resumed run reads
    its tokenizer from there, so token ids mean what they meant when the weights learned them."""
    if model is not None:
        check_finite(accelerator.unwrap_model(model), where=f"the model at step {state.step}")
    root = checkpoints_dir(output_dir)
    final = root / f"step_{state.step}"
    staging = root / f"{STAGING_PREFIX}step_{state.step}"
    if accelerator.is_main_process:
        root.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(staging, ignore_errors=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(staging))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        state.save(staging)
        if processor is not None:
            processor.save_pretrained(staging / PROCESSOR_DIR)
        write_checksums(staging)
        _honour_umask(staging)
        _replace(staging, final)
        if total_limit:
            for old in list_checkpoints(output_dir)[:-total_limit]:
                shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()
    return final


def load_checkpoint(accelerator, path: str | os.PathLike, model=None) -> TrainState:
    """Load a checkpoint written by :func:`save_checkpoint` into the prepared objects and
    return its :class:`TrainState`. Every error names the checkpoint; nothing in it is
    unpickled beyond what ``torch.load(weights_only=True)`` allows."""
    path = Path(path)
    if not path.is_dir():
        raise ValueError(f"`resume_from_checkpoint` {str(path)!r} is not a checkpoint folder")
    pickles = sorted(p.name for p in path.glob("custom_checkpoint_*.pkl"))
    if pickles:
        raise ValueError(
            f"checkpoint {str(path)!r} holds {pickles}: pickled objects are never loaded (they can run code). "
            f"Checkpoints of this version keep the training progress in {TRAIN_STATE_FILE}"
        )
    verify_checksums(path)
    state = TrainState.load(path)
    try:
        accelerator.load_state(str(path))
    except Exception as error:  # noqa: BLE001 - torch/safetensors/accelerate raise many types
        raise ValueError(f"checkpoint {str(path)!r} cannot be loaded ({type(error).__name__}: {error})") from error
    if model is not None:
        check_finite(accelerator.unwrap_model(model), where=f"checkpoint {str(path)!r}")
    return state


def save_pretrained_atomically(model, processor, final_dir: str | os.PathLike, card=None) -> Path:
    """``save_pretrained`` of model (+ processor, + model card as README.md) into
    ``final_dir`` via a staging folder."""
    final_dir = Path(final_dir)
    final_dir.parent.mkdir(parents=True, exist_ok=True)
    recover_interrupted_swap(final_dir)
    staging = Path(tempfile.mkdtemp(prefix=f".{final_dir.name}-", dir=final_dir.parent))
    try:
        model.save_pretrained(staging)
        if processor is not None:
            processor.save_pretrained(staging)
        if card is not None:
            card.save(staging / "README.md")
        _honour_umask(staging)
        _replace(staging, final_dir)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return final_dir


def retired_path(target: str | os.PathLike) -> Path:
    """Where :func:`_replace` parks the previous ``target`` while the new one moves in."""
    target = Path(target)
    return target.with_name(f"{RETIRED_PREFIX}{target.name}")


def recover_interrupted_swap(target: str | os.PathLike) -> bool:
    """Finish or undo a replacement of ``target`` that was interrupted (killed, power loss):
    if only the retired copy exists it is put back; if both exist the retired one is
    removed. Returns whether the previous ``target`` was put back."""
    target = Path(target)
    retired = retired_path(target)
    if not retired.exists():
        return False
    if target.exists():
        shutil.rmtree(retired, ignore_errors=True)
        return False
    try:
        os.replace(retired, target)
    except FileNotFoundError:  # another process of the same run put it back first
        return False
    _fsync_dir(target.parent)
    logger.warning("Restored %s, which an interrupted save had left at %s", target, retired)
    return True


def _fsync_dir(path: Path) -> None:
    # A rename is durable only once its directory is flushed; some file systems refuse to
    # open or flush a directory, and then there is nothing more to do.
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _fsync_tree(root: Path) -> None:
    """Flush every file and folder under ``root``, so that the rename that publishes it
    never exposes files whose data is still only in the page cache."""
    for folder, _, files in os.walk(root):
        for name in files:
            with open(os.path.join(folder, name), "rb") as handle:
                os.fsync(handle.fileno())
        _fsync_dir(Path(folder))


def _replace(source: Path, target: Path):
    """Move ``source`` to ``target``; an existing ``target`` is removed only once ``source``
    is in place. Killed between the two renames, only the retired copy exists:
    :func:`recover_interrupted_swap` puts it back on the next start."""
    _fsync_tree(source)
    recover_interrupted_swap(target)
    if target.exists():
        retired = retired_path(target)
        os.replace(target, retired)
        _fsync_dir(target.parent)
        os.replace(source, target)
        _fsync_dir(target.parent)
        shutil.rmtree(retired, ignore_errors=True)
    else:
        os.replace(source, target)
        _fsync_dir(target.parent)


def _honour_umask(root: Path) -> None:
    """Give ``root`` and everything under it the modes a plain ``mkdir``/``open`` would have
    (``mkdtemp`` makes its folder 0700, and some writers their files 0600), so a saved model
    is as readable as the user's umask says."""
    mask = os.umask(0)
    os.umask(mask)
    for folder, _, files in os.walk(root):
        os.chmod(folder, 0o777 & ~mask)
        for name in files:
            os.chmod(os.path.join(folder, name), 0o666 & ~mask)


def remove_leftover_staging(output_dir: str | os.PathLike) -> list[Path]:
    """Delete the staging folders an interrupted save left under ``output_dir`` (a full disk
    or a kill mid-checkpoint). Only call it while holding the :class:`OutputDirLock`: another
    run's staging folder is then impossible. Returns what was removed."""
    output_dir = Path(output_dir)
    found = [*checkpoints_dir(output_dir).glob(f"{STAGING_PREFIX}*"), *output_dir.glob(".model-*")]
    for path in found:
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
            logger.warning("Removed %s, left by an interrupted save", path)
    return found


class OutputDirLockedError(ValueError):
    """Another training run holds the output folder."""


class OutputDirLock:
    """An exclusive lock on a training output folder: a file holding the owner's pid, host and
    start time, locked with ``flock``. The kernel drops the lock when its process dies, so a
    crashed run never blocks the next (its stale file is taken over); a live holder is named
    in the refusal."""

    def __init__(self, output_dir: str | os.PathLike):
        self.path = Path(output_dir) / LOCK_FILE
        self._handle = None

    def holder(self) -> str:
        """Who holds the lock, as its file says."""
        try:
            info = json.loads(self.path.read_text())
            return f"pid {info['pid']} on host {info['host']!r}, since {info['started']}"
        except (OSError, ValueError, KeyError, TypeError):
            return "an unknown process"

    def acquire(self) -> OutputDirLock:
        try:
            import fcntl
        except ImportError:  # no flock (Windows): nothing to lock with
            logger.warning("No file locking on this platform: nothing stops a second run on %s", self.path.parent)
            return self
        handle = open(self.path, "a+")  # noqa: SIM115 - held open for the whole run
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as error:
            handle.close()
            raise OutputDirLockedError(
                f"`output_dir` {str(self.path.parent)!r} is in use by another training run ({self.holder()}; lock "
                f"file {str(self.path)!r}). Wait for it to finish or choose another --output_dir"
            ) from error
        handle.seek(0)
        handle.truncate()
        started = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        handle.write(json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "started": started}))
        handle.flush()
        self._handle = handle
        return self

    def release(self) -> None:
        if self._handle is not None:
            handle, self._handle = self._handle, None
            # Emptied, not deleted: deleting would let a third run lock a new file while a
            # second one waits on this one's inode.
            handle.seek(0)
            handle.truncate()
            handle.close()
