"""Atomic training checkpoints: Accelerate state plus the trainer's own position, keeping the last K.

A checkpoint is the directory `<output_dir>/checkpoints/step-<N>` holding what `Accelerator.save_state` writes
(model, optimizer, scheduler, the random states of every process) and `trainer_state.json` (step, data position,
counters). It is written under a hidden temporary name and renamed into place with `os.replace` only once complete,
so a run killed during a save leaves the previous checkpoints as they were and never a half-written one that
resuming would pick up.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
from pathlib import Path
from typing import Any, Optional, Union

logger = logging.getLogger(__name__)

CHECKPOINTS_DIR = "checkpoints"
TRAINER_STATE_NAME = "trainer_state.json"
_NAME = re.compile(r"^step-(\d+)$")


def checkpoint_path(output_dir: Union[str, Path], step: int) -> Path:
    """Where the checkpoint taken after `step` optimizer steps lives."""
    return Path(output_dir) / CHECKPOINTS_DIR / f"step-{step:08d}"


def list_checkpoints(output_dir: Union[str, Path]) -> list[Path]:
    """Complete checkpoints under `output_dir`, oldest first (temporary and partial directories are ignored)."""
    root = Path(output_dir) / CHECKPOINTS_DIR
    if not root.is_dir():
        return []
    found = []
    for path in root.iterdir():
        match = _NAME.match(path.name)
        if match and (path / TRAINER_STATE_NAME).is_file():
            found.append((int(match.group(1)), path))
    return [path for _, path in sorted(found)]


def latest_checkpoint(output_dir: Union[str, Path]) -> Optional[Path]:
    """The newest complete checkpoint under `output_dir`, or None."""
    checkpoints = list_checkpoints(output_dir)
    return checkpoints[-1] if checkpoints else None


def resolve_resume_path(resume_from: str, output_dir: Union[str, Path]) -> Path:
    """Turns `--resume_from` (a checkpoint directory, or `latest`) into a checkpoint directory.

    Raises:
        FileNotFoundError: naming what was looked for and what exists.
    """
    if resume_from == "latest":
        path = latest_checkpoint(output_dir)
        if path is None:
            raise FileNotFoundError(
                f"--resume_from latest: no complete checkpoint under {Path(output_dir) / CHECKPOINTS_DIR}; "
                "train without --resume_from first, or name a checkpoint directory."
            )
        return path
    path = Path(resume_from)
    if not (path / TRAINER_STATE_NAME).is_file():
        others = [str(p) for p in list_checkpoints(path.parent.parent if path.parent.name == CHECKPOINTS_DIR
                                                    else output_dir)]
        raise FileNotFoundError(
            f"--resume_from {resume_from}: not a complete checkpoint (no {TRAINER_STATE_NAME}). "
            f"Complete checkpoints: {others or 'none'}; or pass `latest`."
        )
    return path


def _fsync_dir(path: Path) -> None:
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


def _write_json(path: Path, data: dict) -> None:
    with open(path, "w", encoding="utf-8") as f:
        json.dump(data, f, indent=2, sort_keys=True)
        f.flush()
        os.fsync(f.fileno())


def save_checkpoint(
    accelerator,
    output_dir: Union[str, Path],
    step: int,
    trainer_state: dict[str, Any],
    keep_last: int,
) -> Path:
    """Writes a checkpoint atomically and deletes all but the newest `keep_last`. Call it on every process.

    Args:
        accelerator: the run's `Accelerator`; its prepared model, optimizer and scheduler are saved.
        output_dir: the run's output directory.
        step: optimizer steps done.
        trainer_state: plain JSON data of the trainer (position, counters), written as `trainer_state.json`.
        keep_last: checkpoints to keep (at least 1).

    Returns:
        The checkpoint directory.
    """
    final = checkpoint_path(output_dir, step)
    temporary = final.parent / f".tmp-{final.name}"
    if accelerator.is_main_process:
        # Leftovers of a save that was killed are incomplete by construction.
        for stale in final.parent.glob(".tmp-*") if final.parent.is_dir() else []:
            shutil.rmtree(stale, ignore_errors=True)
        temporary.mkdir(parents=True, exist_ok=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(temporary))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        _write_json(temporary / TRAINER_STATE_NAME, {**trainer_state, "step": step})
        _fsync_dir(temporary)
        if final.exists():
            previous = final.parent / f".old-{final.name}"
            shutil.rmtree(previous, ignore_errors=True)
            os.replace(final, previous)
            os.replace(temporary, final)
            shutil.rmtree(previous, ignore_errors=True)
        else:
            os.replace(temporary, final)
        _fsync_dir(final.parent)
        prune_checkpoints(output_dir, keep_last)
        logger.info(f"Saved checkpoint {final}")
    accelerator.wait_for_everyone()
    return final


def prune_checkpoints(output_dir: Union[str, Path], keep_last: int) -> list[Path]:
    """Deletes all but the newest `keep_last` complete checkpoints; returns the deleted paths."""
    if keep_last < 1:
        raise ValueError(f"checkpoint.keep_last={keep_last} would delete the checkpoint just written; use >= 1.")
    doomed = list_checkpoints(output_dir)[:-keep_last]
    for path in doomed:
        shutil.rmtree(path)
    return doomed


def load_checkpoint(accelerator, path: Union[str, Path]) -> dict[str, Any]:
    """Restores the Accelerate state saved in `path` and returns its `trainer_state.json`."""
    path = Path(path)
    accelerator.load_state(str(path))
    with open(path / TRAINER_STATE_NAME, encoding="utf-8") as f:
        return json.load(f)


__all__ = [
    "TRAINER_STATE_NAME",
    "checkpoint_path",
    "latest_checkpoint",
    "list_checkpoints",
    "load_checkpoint",
    "prune_checkpoints",
    "resolve_resume_path",
    "save_checkpoint",
]
