"""Crash-safe checkpoints: everything is written to a temporary sibling folder and renamed
into place, so an interrupted save never leaves a half-written checkpoint or model behind
(and never destroys the previous one)."""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

CHECKPOINT_PATTERN = re.compile(r"^step_(\d+)$")


@dataclass
class TrainState:
    """Progress counters saved with every accelerate checkpoint."""

    step: int = 0

    def state_dict(self) -> dict:
        return {"step": self.step}

    def load_state_dict(self, state: dict):
        self.step = int(state["step"])


def checkpoints_dir(output_dir: str | os.PathLike) -> Path:
    return Path(output_dir) / "checkpoints"


def list_checkpoints(output_dir: str | os.PathLike) -> list[Path]:
    """Complete checkpoints under ``OUTPUT_DIR/checkpoints``, oldest first."""
    root = checkpoints_dir(output_dir)
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir() if p.is_dir() and (m := CHECKPOINT_PATTERN.match(p.name))]
    return [p for _, p in sorted(found)]


def latest_checkpoint(output_dir: str | os.PathLike) -> Path | None:
    found = list_checkpoints(output_dir)
    return found[-1] if found else None


def save_checkpoint(accelerator, output_dir: str | os.PathLike, step: int, total_limit: int | None = None) -> Path:
    """``accelerator.save_state`` into ``checkpoints/step_{step}``, atomically; keeps the
    newest ``total_limit`` checkpoints. Call it on every process."""
    root = checkpoints_dir(output_dir)
    final = root / f"step_{step}"
    staging = root / f".staging-step_{step}"
    if accelerator.is_main_process:
        root.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(staging, ignore_errors=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(staging))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        _replace(staging, final)
        if total_limit:
            for old in list_checkpoints(output_dir)[:-total_limit]:
                shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()
    return final


def save_pretrained_atomically(model, processor, final_dir: str | os.PathLike, card=None) -> Path:
    """``save_pretrained`` of model (+ processor, + model card as README.md) into
    ``final_dir`` via a staging folder."""
    final_dir = Path(final_dir)
    final_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{final_dir.name}-", dir=final_dir.parent))
    try:
        model.save_pretrained(staging)
        if processor is not None:
            processor.save_pretrained(staging)
        if card is not None:
            card.save(staging / "README.md")
        _replace(staging, final_dir)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return final_dir


def _replace(source: Path, target: Path):
    """Move ``source`` to ``target``; an existing ``target`` is removed only once ``source``
    is in place."""
    if target.exists():
        retired = target.with_name(f".retired-{target.name}")
        shutil.rmtree(retired, ignore_errors=True)
        os.replace(target, retired)
        os.replace(source, target)
        shutil.rmtree(retired, ignore_errors=True)
    else:
        os.replace(source, target)
