"""Atomic training checkpoints: Accelerate state plus the trainer's own position, keeping the last K.

A checkpoint is the directory `<output_dir>/checkpoints/step-<N>` holding what `Accelerator.save_state` writes
(model, optimizer, scheduler, the random states of every process) and `trainer_state.json` (step, data position,
counters). It is written under a hidden temporary name and renamed into place with `os.replace` only once complete,
so a run killed during a save leaves the previous checkpoints as they were and never a half-written one that
resuming would pick up.

Files can still be damaged afterwards (a full disk, a copy cut short). `trainer_state.json` therefore lists every file
of the checkpoint with its size, and [`checkpoint_problem`] checks them (present, of that size, with an intact
safetensors header or zip directory) without loading anything. `--resume_from latest` takes the newest checkpoint
without problems and says which newer ones it skipped and why; a checkpoint named explicitly must be intact.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import zipfile
from pathlib import Path
from typing import Any, Optional, Union

logger = logging.getLogger(__name__)

CHECKPOINTS_DIR = "checkpoints"
TRAINER_STATE_NAME = "trainer_state.json"
FILES_KEY = "files"
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


def _step_directories(output_dir: Union[str, Path]) -> list[Path]:
    """Every `step-<N>` directory under `output_dir`, complete or not, newest first."""
    root = Path(output_dir) / CHECKPOINTS_DIR
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), path) for path in root.iterdir() if (m := _NAME.match(path.name)) and path.is_dir()]
    return [path for _, path in sorted(found, reverse=True)]


def _file_problem(path: Path) -> Optional[str]:
    """Why a checkpoint file cannot be read (a truncated safetensors header or zip directory), or None."""
    try:
        if path.suffix == ".safetensors":
            from safetensors import safe_open

            with safe_open(str(path), "pt"):
                pass
        elif path.suffix in (".bin", ".pkl"):
            # torch.save writes zip archives; a cut-off file has lost the directory at its end.
            with zipfile.ZipFile(path):
                pass
    except Exception as error:  # safetensors raises its own error type
        return f"{path} is damaged ({type(error).__name__}: {error})"
    return None


def checkpoint_problem(path: Union[str, Path]) -> Optional[str]:
    """What makes the checkpoint at `path` unusable, naming the file and why, or None when it is intact.

    Checks `trainer_state.json` (readable, with the trainer's position), the files it lists (present and of their
    recorded size) and every model, optimizer, scheduler and random-state file (intact safetensors header or zip
    directory). Nothing is unpickled or loaded into memory.
    """
    path = Path(path)
    state_file = path / TRAINER_STATE_NAME
    if not path.is_dir():
        return f"{path} is not a directory"
    if not state_file.is_file():
        return f"{state_file} is missing"
    try:
        state = json.loads(state_file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        return f"{state_file} is damaged ({error})"
    if not isinstance(state, dict) or "step" not in state:
        return f"{state_file} lacks the step"
    files = state.get(FILES_KEY)
    if files is None:
        # Written before file lists were recorded: the files Accelerate always writes must be there.
        files = {name: None for name in ("optimizer.bin", "random_states_0.pkl")}
        if not (path / "model.safetensors").exists() and not (path / "pytorch_model.bin").exists():
            return f"{path / 'model.safetensors'} is missing"
    for name, size in sorted(files.items()):
        file = path / name
        if not file.is_file():
            return f"{file} is missing"
        if size is not None and file.stat().st_size != size:
            return f"{file} has {file.stat().st_size} bytes, {size} were written (truncated or overwritten)"
    for file in sorted(path.iterdir()):
        problem = _file_problem(file)
        if problem:
            return problem
    return None


def resume_candidates(resume_from: str, output_dir: Union[str, Path]) -> list[Path]:
    """The intact checkpoints `--resume_from` may resume from, the preferred first.

    For `latest`, every intact checkpoint under `output_dir`, newest first (a warning names each newer one skipped and
    why, so a caller whose load fails can fall back to the next); for a directory, that checkpoint alone.

    Raises:
        FileNotFoundError: naming what was looked for and what exists, when nothing is left to resume from.
        ValueError: when the named checkpoint is damaged, naming the file and the problem.
    """
    if resume_from == "latest":
        intact, skipped = [], []
        for path in _step_directories(output_dir):
            problem = checkpoint_problem(path)
            if problem is None:
                intact.append(path)
            elif not intact:
                skipped.append(f"{path.name} ({problem})")
                logger.warning(f"--resume_from latest: skipping checkpoint {path}: {problem}.")
        if not intact:
            where = Path(output_dir) / CHECKPOINTS_DIR
            found = f" (skipped: {'; '.join(skipped)})" if skipped else ""
            raise FileNotFoundError(
                f"--resume_from latest: no complete checkpoint under {where}{found}; train without --resume_from "
                "first, or name a checkpoint directory."
            )
        return intact
    path = Path(resume_from)
    if not (path / TRAINER_STATE_NAME).is_file() and not path.is_dir():
        others = [str(p) for p in list_checkpoints(path.parent.parent if path.parent.name == CHECKPOINTS_DIR
                                                    else output_dir)]
        raise FileNotFoundError(
            f"--resume_from {resume_from}: not a complete checkpoint (no {TRAINER_STATE_NAME}). "
            f"Complete checkpoints: {others or 'none'}; or pass `latest`."
        )
    problem = checkpoint_problem(path)
    if problem is not None:
        raise ValueError(f"--resume_from {resume_from}: {problem}. Name another checkpoint, or pass `latest` to "
                         "take the newest intact one.")
    return [path]


def resolve_resume_path(resume_from: str, output_dir: Union[str, Path]) -> Path:
    """Turns `--resume_from` (a checkpoint directory, or `latest`) into the intact checkpoint to resume from.

    Raises:
        FileNotFoundError: naming what was looked for and what exists.
        ValueError: when the named checkpoint is damaged, naming the file.
    """
    return resume_candidates(resume_from, output_dir)[0]


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
        files = {file.name: file.stat().st_size for file in sorted(temporary.iterdir()) if file.is_file()}
        _write_json(temporary / TRAINER_STATE_NAME, {**trainer_state, "step": step, FILES_KEY: files})
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
    """Restores the Accelerate state saved in `path` and returns its `trainer_state.json` (without the file list).

    Raises:
        RuntimeError: naming the checkpoint when Accelerate cannot load it (e.g. a model of another shape).
    """
    path = Path(path)
    random_state = path / f"random_states_{accelerator.process_index}.pkl"
    if not random_state.is_file():
        # Accelerate would skip it below the default log level; the resumed run then draws other random numbers.
        logger.warning(f"{random_state} is missing (the checkpoint was saved by fewer processes): process "
                       f"{accelerator.process_index} starts from fresh random states, so the resumed run does not "
                       "reproduce an uninterrupted one exactly.")
    try:
        accelerator.load_state(str(path))
    except Exception as error:
        raise RuntimeError(f"Could not load checkpoint {path}: {type(error).__name__}: {error}") from error
    with open(path / TRAINER_STATE_NAME, encoding="utf-8") as f:
        state = json.load(f)
    state.pop(FILES_KEY, None)
    return state


__all__ = [
    "TRAINER_STATE_NAME",
    "checkpoint_path",
    "checkpoint_problem",
    "latest_checkpoint",
    "list_checkpoints",
    "load_checkpoint",
    "prune_checkpoints",
    "resolve_resume_path",
    "resume_candidates",
    "save_checkpoint",
]
