"""Weights on disk and runs over time: Orbax checkpoints (locating steps, restoring leaves, scans), file formats
(safetensors, PyTorch, NumPy), ``describe`` of a checkpoint from its metadata, and distances over a run.

Only :func:`load_safetensors` is imported at once; the rest needs pandas (and orbax) and loads when first used, so
that ``import wwjax`` stays quick.
"""

from wwjax.io._safetensors import load_safetensors as load_safetensors

_LAZY = {
    "CheckpointScan": "wwjax.io._checkpoints",
    "analyze_checkpoint": "wwjax.io._checkpoints",
    "scan_checkpoints": "wwjax.io._checkpoints",
    "describe": "wwjax.io._describe",
    "distances": "wwjax.io._distances",
    "load_params": "wwjax.io._formats",
}


def __getattr__(name: str):
    if name not in _LAZY:
        raise AttributeError(f"module 'wwjax.io' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(_LAZY[name]), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__():
    return sorted(set(globals()) | set(_LAZY))


__all__ = ("CheckpointScan", "analyze_checkpoint", "describe", "distances", "load_params", "load_safetensors",
           "scan_checkpoints")
