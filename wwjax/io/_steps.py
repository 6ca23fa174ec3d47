"""Orbax checkpoints on disk: a run's step directories, the PyTree item of a step, and the metrics a step stored.

Layouts read: ``CheckpointManager`` step directories (the ``default`` item or named items), ``StandardCheckpointer``
/ ``PyTreeCheckpointer`` output and Orbax's v1 layout (``ocp.v1.save`` / ``ocp.v1.training.Checkpointer``), which
keeps the same PyTree format in a checkpointable subdirectory.
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
import re

# Item names tried, in order, when a step holds several PyTree items and none is named.
_PREFERRED_ITEMS = ("default", "state", "train_state", "params", "model", "pytree")
_TMP_STEP = re.compile(r"^(?:.*?_)?(\d+)\.orbax-checkpoint-tmp")
_STEP = re.compile(r"^(?:.+_)?(\d+)$")


@dataclasses.dataclass(frozen=True)
class _Step:
    step: int | None
    path: pathlib.Path
    finalized: bool = True


def list_steps(directory) -> list[_Step]:
    """The steps of a ``CheckpointManager`` directory, finalised or not, in step order (no array is read).

    A step directory is named by its step (``100``, or ``<prefix>_100``); a save that has not finished is a
    ``100.orbax-checkpoint-tmp-<timestamp>`` directory, listed with ``finalized=False`` unless the step also exists
    finalised.
    """
    directory = pathlib.Path(directory).absolute()  # Orbax reads relative paths wrongly
    found: dict[int, _Step] = {}
    for entry in sorted(directory.iterdir()):
        if not entry.is_dir():
            continue
        if match := _TMP_STEP.match(entry.name):
            step = int(match.group(1))
            found.setdefault(step, _Step(step, entry, finalized=False))
        elif (match := _STEP.match(entry.name)) and _looks_like_step(entry):
            step = int(match.group(1))
            found[step] = _Step(step, entry)
    return [found[s] for s in sorted(found)]


def _looks_like_step(path: pathlib.Path) -> bool:
    """Orbax wrote it: step metadata, a PyTree, or an item directory holding one (not e.g. a ``logs_2`` folder)."""
    markers = ("_CHECKPOINT_METADATA", "_METADATA", "commit_success.txt")
    return any((path / m).exists() for m in markers) or any(
        (p / "_METADATA").exists() for p in path.iterdir() if p.is_dir())


def _is_pytree_dir(path: pathlib.Path) -> bool:
    return (path / "_METADATA").is_file()


def _resolve_item(step_dir: pathlib.Path, item: str | None) -> pathlib.Path:
    """The PyTree item directory of a step directory (or ``step_dir`` itself when it is one)."""
    if _is_pytree_dir(step_dir) and item is None:
        return step_dir
    items = sorted(p.name for p in step_dir.iterdir() if p.is_dir() and _is_pytree_dir(p))
    if item is not None:
        if item not in items:
            raise ValueError(f"{step_dir}: no PyTree item {item!r} (items: {', '.join(items) or 'none'})")
        return step_dir / item
    if len(items) == 1:
        return step_dir / items[0]
    for name in _PREFERRED_ITEMS:
        if name in items:
            return step_dir / name
    if not items:
        raise ValueError(f"{step_dir} holds no Orbax PyTree checkpoint (no _METADATA in it or in its subdirectories)")
    raise ValueError(f"{step_dir} holds several PyTree items ({', '.join(items)}); pass item= to pick one")


def _locate(path, step: int | None, item: str | None) -> tuple[int | None, pathlib.Path]:
    """Resolves a run directory (+ step), a step directory or an item directory to ``(step, item directory)``."""
    path = pathlib.Path(path).absolute()  # Orbax reads relative paths wrongly
    if not path.exists():
        raise FileNotFoundError(f"no such checkpoint: {path}")
    if not path.is_dir():
        raise ValueError(f"{path} is a file, not an Orbax checkpoint directory")
    own_step = int(m.group(1)) if (m := _STEP.match(path.name)) else None
    if _is_pytree_dir(path) or any(_is_pytree_dir(p) for p in path.iterdir() if p.is_dir()):
        if step is not None and step != own_step:
            raise ValueError(f"{path} is a single checkpoint (step {own_step}); step={step} asks for another")
        return own_step, _resolve_item(path, item)
    steps = [s for s in list_steps(path) if s.finalized]
    if not steps:
        raise ValueError(f"{path} is neither an Orbax checkpoint nor a directory of finalised checkpoint steps")
    if step is None:
        chosen = steps[-1]
    else:
        chosen = next((s for s in steps if s.step == step), None)
        if chosen is None:
            raise ValueError(f"{path} has no finalised step {step} (steps: {[s.step for s in steps]})")
    return chosen.step, _resolve_item(chosen.path, item)


def _step_metrics(step_dir: pathlib.Path) -> dict:
    """Scalar metrics a step stored: a JSON ``metrics`` item, or the manager's ``metrics`` in its metadata."""
    found = {}
    try:
        meta = json.loads((step_dir / "_CHECKPOINT_METADATA").read_text())
        found.update(meta.get("metrics") or {})
    except (OSError, ValueError):
        pass
    item = step_dir / "metrics" / "metrics"
    if item.is_file():
        try:
            found.update(json.loads(item.read_text()))
        except ValueError:
            pass
    return {f"metrics/{k}": v for k, v in found.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
