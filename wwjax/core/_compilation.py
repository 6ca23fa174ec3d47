"""Compilation bookkeeping for large or repeated analyses: count XLA compilations, keep them across processes.

An analysis compiles one program per shape bucket and one per fit group (see ``docs/scaling.md``); scanning many
checkpoints of one model reuses them all. Across processes, JAX's persistent compilation cache keeps them on disk.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import pathlib
import sys
import tempfile
from collections.abc import Iterator

import jax
from jax import monitoring

from wwjax.core._programs import use_program_store

_BACKEND_COMPILE = "/jax/core/compile/backend_compile_duration"  # fires for compiled and cache-loaded programs
_CACHE_HIT = "/jax/compilation_cache/cache_hits"
NO_CACHE_ENV = "WWJAX_NO_CACHE"  # set (to anything but "" or "0") to keep the command line off the disk cache


@dataclasses.dataclass
class CompilationCount:
    """XLA programs compiled inside :func:`count_compilations` (``count``, excluding those loaded from the persistent
    cache, which are ``cache_hits``), and the seconds spent compiling or loading them."""

    count: int = 0
    cache_hits: int = 0
    seconds: float = 0.0


@contextlib.contextmanager
def count_compilations() -> Iterator[CompilationCount]:
    """Counts the XLA compilations (cache misses) made inside the ``with`` block.

    Example:
      >>> import numpy as np, wwjax
      >>> params = {"kernel": np.random.default_rng(0).normal(size=(48, 40)).astype("float32")}
      >>> with wwjax.count_compilations() as compiled:
      ...     _ = wwjax.analyze(params)
      >>> with wwjax.count_compilations() as again:
      ...     _ = wwjax.analyze(params)  # the same shapes: every program is reused
      >>> again.count
      0
    """
    counter = CompilationCount()

    def on_duration(event: str, duration: float, **_) -> None:
        if event == _BACKEND_COMPILE:
            counter.count += 1
            counter.seconds += duration

    def on_event(event: str, **_) -> None:
        if event == _CACHE_HIT:
            counter.cache_hits += 1
            counter.count -= 1

    monitoring.register_event_duration_secs_listener(on_duration)
    monitoring.register_event_listener(on_event)
    try:
        yield counter
    finally:
        monitoring.unregister_event_duration_listener(on_duration)
        monitoring.unregister_event_listener(on_event)


def enable_compilation_cache(directory: str | os.PathLike, min_compile_seconds: float = 0.0) -> None:
    """Keeps compiled programs in ``directory`` (JAX's persistent cache), so a new process analysing the same shapes
    skips compilation. ``min_compile_seconds`` (JAX's default is 1 s) also keeps the quick ones.

    wwjax's own programs are also kept in ``directory/programs`` as exported modules (the program store,
    ``wwjax.core._programs``): a new process then skips tracing them as well, the larger part of a warm start.

    Example:
      >>> import wwjax
      >>> wwjax.enable_compilation_cache("~/.cache/wwjax-xla")  # doctest: +SKIP
    """
    jax.config.update("jax_compilation_cache_dir", os.path.expanduser(os.fspath(directory)))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", min_compile_seconds)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    use_program_store(pathlib.Path(os.path.expanduser(os.fspath(directory))) / "programs")


def default_cache_dir() -> pathlib.Path:
    """Where the ``wwjax`` command and :func:`wwjax.scan_checkpoints` keep compiled programs:
    ``$XDG_CACHE_HOME/wwjax`` (``~/.cache/wwjax`` when the variable is unset).

    Example:
      >>> import os
      >>> os.environ["XDG_CACHE_HOME"] = "/tmp/xdg"
      >>> str(default_cache_dir())
      '/tmp/xdg/wwjax'
      >>> del os.environ["XDG_CACHE_HOME"]
    """
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return pathlib.Path(base) / "wwjax"


def cache_disabled_by_env() -> bool:
    """Whether ``$WWJAX_NO_CACHE`` asks for no persistent cache."""
    return os.environ.get(NO_CACHE_ENV, "") not in ("", "0")


def use_default_cache(directory: str | os.PathLike | None = None) -> pathlib.Path | None:
    """Turns on the persistent cache in ``directory`` (default :func:`default_cache_dir`) for a process wwjax owns,
    unless ``$WWJAX_NO_CACHE`` is set or the user already chose a cache directory for JAX.

    Returns the directory in use, or None. Never raises: a directory that cannot be created or written leaves the
    cache off with one line on stderr (JAX itself recompiles past an unreadable or corrupt entry).
    """
    if cache_disabled_by_env():
        return None
    if jax.config.jax_compilation_cache_dir:  # the user's own choice wins
        path = pathlib.Path(jax.config.jax_compilation_cache_dir)
        use_program_store(path / "wwjax-programs")
        return path
    path = pathlib.Path(directory) if directory is not None else default_cache_dir()
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path, prefix=".probe-"):
            pass
    except OSError as error:
        print(f"wwjax: not caching compiled programs ({path}: {error.strerror or error})", file=sys.stderr)
        return None
    enable_compilation_cache(path)
    return path
