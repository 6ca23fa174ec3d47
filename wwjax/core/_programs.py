"""The program store: a later process runs an analysis' compiled programs without tracing them again.

JAX's persistent compilation cache skips XLA's compilation, but finding a program in it still means tracing the
Python function and lowering it to StableHLO, the key's source: on MiniLM that is most of a warm ``wwjax analyze``
(0.9 s of 2.5 s; 2.9 s of a randomized run's 5 s). The store keeps each program's lowered module, exported with
:mod:`jax.export`, under a key made of what the trace depends on: the function, the source of the installed wwjax,
the static arguments, the shapes and dtypes of the others, and the JAX versions, backend and configuration. A later
process with the same key reads the module back, and compiling it is a hit in JAX's persistent cache (both live
under one directory, see :func:`wwjax.enable_compilation_cache`).

The exported module *is* the traced program: the same StableHLO, compiled by the same XLA, so the numbers are the
traced path's to the bit (``tests/core/test_programs.py``). What cannot be stored (a call under a trace, sharded
arguments, a static argument without a stable ``repr``) takes the plain ``jax.jit`` path, and so does every call
while the store is off (the default for library users). A store entry that cannot be read is recompiled and
rewritten; a directory that cannot be written only costs the saving.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import functools
import hashlib
import os
import pathlib
import pickle
import sys
import tempfile
import threading
import weakref
from collections.abc import Callable, Hashable
from typing import Any

import jax
import jaxlib
import numpy as np

_MAGIC = b"wwjax-program-1\n"
_store: pathlib.Path | None = None
_lock = threading.Lock()
_programs: weakref.WeakSet = weakref.WeakSet()  # every Program, for forget_loaded


def use_program_store(directory: str | os.PathLike | None) -> None:
    """Keeps exported programs in ``directory`` (``None``: off, every call is a plain ``jax.jit`` call).

    Example:
      >>> import wwjax.core._programs as programs
      >>> programs.use_program_store(None)
      >>> programs.program_store() is None
      True
    """
    global _store
    _store = None if directory is None else pathlib.Path(os.path.expanduser(os.fspath(directory)))


def program_store() -> pathlib.Path | None:
    """The directory of the program store, or None while it is off."""
    return _store


def forget_loaded() -> None:
    """Drops every program this process read from or wrote to the store, as a new process starts: the next call
    reads the files again (the plain ``jax.jit`` caches are untouched)."""
    for prog in list(_programs):
        with _lock:
            prog._entries.clear()


@functools.cache
def _source_digest() -> str:
    """A digest of every module of the installed wwjax: a store entry never outlives the code that traced it."""
    root = pathlib.Path(__file__).resolve().parent.parent
    digest = hashlib.sha256()
    for path in sorted(root.rglob("*.py")):
        digest.update(str(path.relative_to(root)).encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()


def _environment() -> str:
    """What else a trace reads: versions, the backend and its devices, and the configuration that changes lowering
    (read at every call: a process may switch ``jax_enable_x64`` between analyses)."""
    return _environment_of(bool(jax.config.jax_enable_x64), str(jax.config.jax_default_matmul_precision),
                           str(jax.config.jax_numpy_dtype_promotion), os.environ.get("XLA_FLAGS", ""))


@functools.cache
def _environment_of(*config) -> str:
    device = jax.devices()[0]
    return repr((jax.__version__, jaxlib.__version__, jax.default_backend(), jax.local_device_count(),
                 jax.device_count(), device.device_kind, config, _source_digest()))


def _tracing(args: tuple, kwargs: dict) -> bool:
    """Whether this call is part of an outer trace (``jax.jit``, ``vmap``, ``grad`` of the caller)."""
    if any(isinstance(leaf, jax.core.Tracer) for leaf in jax.tree.leaves((args, kwargs))):
        return True
    try:  # concrete arguments inside an outer jit: only the trace context tells
        from jax._src import core
    except ImportError:  # pragma: no cover - a JAX without it: the arguments' check above is all there is
        return False
    trace = getattr(getattr(core, "trace_ctx", None), "trace", None)
    return trace is not None and not isinstance(trace, core.EvalTrace)


def _shapes(avals) -> list[jax.ShapeDtypeStruct]:
    return [jax.ShapeDtypeStruct(a.shape, a.dtype, weak_type=a.weak_type) for a in avals]


def _stable_repr(value: Any) -> str | None:
    """``repr(value)`` if it names the value the same way in every process (no object addresses), else None."""
    text = repr(value)
    return None if " at 0x" in text or "object at" in text else text


def _storable_leaf(leaf: Any) -> bool:
    if isinstance(leaf, jax.core.Tracer):
        return False
    if isinstance(leaf, jax.Array):
        return len(leaf.sharding.device_set) == 1 and leaf.is_fully_addressable
    return True


@dataclasses.dataclass
class _Entry:
    """One stored program: its compiled executable (a future while it compiles) and its output tree."""

    compiled: concurrent.futures.Future
    out_tree: Any
    out_avals: tuple

    def run(self, leaves: list) -> Any:
        return jax.tree.unflatten(self.out_tree, self.compiled.result()(*leaves))

    def out_info(self) -> Any:
        return jax.tree.unflatten(self.out_tree, _shapes(self.out_avals))


class Program:
    """``jax.jit(fun, static_argnames=...)`` that also reads and fills the program store while it is on, and
    compiles with ``cpu_options`` (XLA compiler options) when the backend is the CPU.

    Example:
      >>> import jax.numpy as jnp
      >>> double = Program(lambda x, *, k: x * k, static_argnames=("k",))
      >>> double(jnp.arange(3.0), k=2).tolist()
      [0.0, 2.0, 4.0]
    """

    def __init__(self, fun: Callable, static_argnames: tuple[str, ...] = (), cpu_options: dict | None = None):
        self.fun = fun
        self.static_argnames = tuple(static_argnames)
        self.cpu_options = dict(cpu_options or {})
        self._jitted = self._nested = None
        self._entries: dict[str, _Entry] = {}
        functools.update_wrapper(self, fun)
        _programs.add(self)

    @property
    def nested(self):
        """The plain ``jax.jit`` of ``fun``, for a call inside another trace (where XLA options cannot be set)."""
        if self._nested is None:
            self._nested = jax.jit(self.fun, static_argnames=self.static_argnames)
        return self._nested

    @property
    def jitted(self):
        """The ``jax.jit`` of ``fun``, with ``cpu_options`` when the backend is the CPU (made on first use, so that
        importing wwjax does not start a backend)."""
        if self._jitted is None:
            self._jitted = jax.jit(self.fun, static_argnames=self.static_argnames,
                                   compiler_options=self._options())
        return self._jitted

    def _options(self) -> dict | None:
        return self.cpu_options if self.cpu_options and jax.default_backend() == "cpu" else None

    def __call__(self, *args, **kwargs):
        if _tracing(args, kwargs):
            return self.nested(*args, **kwargs)
        pool = getattr(_ahead, "pool", None)
        if pool is not None:  # planning: compile on the pool, answer with the outputs' shapes
            return self.prepare(args, kwargs, pool)[1]
        entry = self._entry(args, kwargs) if _store is not None else None
        if entry is None:
            return self.jitted(*args, **kwargs)
        return entry.run(jax.tree.leaves(self._split(args, kwargs)[0]))

    def prepare(self, args: tuple, kwargs: dict,
                pool: concurrent.futures.Executor | None = None) -> tuple[Callable[[], Any], Any]:
        """Readies the program for these arguments (arrays or ``jax.ShapeDtypeStruct``) without running it:
        ``(compile, out_info)``. ``compile()`` finishes the compilation (on ``pool`` when given, started at once),
        ``out_info`` is the tree of output shapes. A later call with matching arguments runs what was compiled."""
        entry = self._entry(args, kwargs, pool=pool) if _store is not None else None
        if entry is not None:
            return entry.compiled.result, entry.out_info()
        lowered = self.jitted.lower(*args, **kwargs)
        if pool is None:
            return lowered.compile, lowered.out_info
        return pool.submit(lowered.compile).result, lowered.out_info

    def _split(self, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
        dynamic = {k: v for k, v in kwargs.items() if k not in self.static_argnames}
        static = {k: v for k, v in kwargs.items() if k in self.static_argnames}
        return (args, dynamic), static

    def _entry(self, args: tuple, kwargs: dict, pool=None) -> _Entry | None:
        tree, static = self._split(args, kwargs)
        leaves, in_tree = jax.tree.flatten(tree)
        if not all(_storable_leaf(leaf) for leaf in leaves):
            return None
        statics = [(k, _stable_repr(v)) for k, v in sorted(static.items())]
        if any(text is None for _, text in statics):
            return None
        try:
            avals = [jax.typeof(leaf) for leaf in leaves]
        except TypeError:
            return None
        described = repr((self.fun.__module__, self.fun.__qualname__, str(in_tree), statics,
                          [(a.shape, str(a.dtype), a.weak_type) for a in avals], _environment()))
        key = hashlib.sha256(described.encode()).hexdigest()
        with _lock:
            entry = self._entries.get(key)
        if entry is not None:
            return entry
        try:
            entry = self._load_or_export(key, in_tree, static, avals, pool)
        except Exception as error:  # noqa: BLE001 - the store must never fail an analysis
            _warn_once(f"wwjax: program store off for {self.fun.__qualname__} ({type(error).__name__}: {error})")
            return None
        with _lock:
            self._entries[key] = entry
        return entry

    def _load_or_export(self, key: str, in_tree, static: dict, avals: list, pool) -> _Entry:
        path = _store / f"{key}.wwp"
        shapes = _shapes(avals)
        exported, out_tree = _read(path)
        if exported is None:
            box = []

            def flat(*leaves):
                args, dynamic = jax.tree.unflatten(in_tree, leaves)
                flat_out, tree = jax.tree.flatten(self.fun(*args, **dynamic, **static))
                box.append(tree)
                return flat_out

            exported = jax.export.export(jax.jit(flat))(*shapes)
            out_tree = box[0]
            _write(path, exported, out_tree)
        lowered = jax.jit(exported.call).lower(*shapes)
        compile_ = functools.partial(lowered.compile, self._options())
        if pool is None:
            done = concurrent.futures.Future()
            done.set_result(compile_())
        else:
            done = pool.submit(compile_)
        return _Entry(done, out_tree, tuple(exported.out_avals))


_ahead = threading.local()


def compile_ahead(plan: Callable[[], Any], signature: Hashable | None = None) -> None:
    """Compiles every program that ``plan()`` calls, side by side, without running any: inside ``plan`` a
    :class:`Program` call lowers its program, hands the compilation to a thread (XLA compiles without holding the
    GIL) and returns the shapes of its outputs (``jax.ShapeDtypeStruct``), so that host code which only reads
    shapes runs on to the next program. ``plan`` is typically the orchestration itself, called on
    ``jax.ShapeDtypeStruct`` stand-ins of its arrays. The calls that follow run what was compiled: the same
    programs, so the same numbers, in a fraction of the wall time on a multi-core CPU.

    ``signature``: what the programs depend on; a signature planned before in this process is not planned again
    (its programs are all compiled). Does nothing on a single-core machine or inside a trace.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> double = Program(lambda x: 2 * x)
      >>> compile_ahead(lambda: double(jax.ShapeDtypeStruct((3,), jnp.float32)))
      >>> double(jnp.ones(3)).tolist()
      [2.0, 2.0, 2.0]
    """
    if (os.cpu_count() or 1) < 2 or getattr(_ahead, "pool", None) is not None or _tracing((), {}):
        return  # under a trace the programs are parts of the caller's program: nothing to compile ahead
    if signature is not None:
        with _lock:
            if signature in _planned:
                return
    with concurrent.futures.ThreadPoolExecutor(os.cpu_count() or 1) as pool:
        _ahead.pool = pool
        try:
            plan()
        finally:
            _ahead.pool = None
    if signature is not None:
        with _lock:
            _planned[signature] = None
            while len(_planned) > 64:
                _planned.pop(next(iter(_planned)))


_planned: dict = {}  # signatures compile_ahead has planned in this process (oldest first)


def abstract(tree: Any) -> Any:
    """``jax.ShapeDtypeStruct`` stand-ins for the arrays of ``tree`` (other leaves unchanged), for
    :func:`compile_ahead`.

    Example:
      >>> import numpy as np
      >>> abstract({"w": np.zeros((2, 3), np.float32), "n": 4})
      {'n': 4, 'w': ShapeDtypeStruct(shape=(2, 3), dtype=float32)}
    """
    def stand_in(leaf):
        if isinstance(leaf, (jax.Array, np.ndarray)):
            return jax.ShapeDtypeStruct(leaf.shape, leaf.dtype)
        return leaf

    return jax.tree.map(stand_in, tree)


def _read(path: pathlib.Path):
    """The exported program and output tree stored at ``path``, or ``(None, None)`` if absent or unreadable."""
    try:
        data = path.read_bytes()
    except OSError:
        return None, None
    body = data[len(_MAGIC) + 32:]
    if not data.startswith(_MAGIC) or hashlib.sha256(body).digest() != data[len(_MAGIC):len(_MAGIC) + 32]:
        return None, None  # torn or corrupt: export again and overwrite
    try:
        module, out_tree = pickle.loads(body)
        return jax.export.deserialize(bytearray(module)), out_tree
    except Exception:  # noqa: BLE001 - written by another version: export again
        return None, None


def _write(path: pathlib.Path, exported, out_tree) -> None:
    """Stores atomically (a reader sees the old entry or the new one, never a part); an unwritable store is skipped."""
    body = pickle.dumps((bytes(exported.serialize()), out_tree))
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path.parent, prefix=".tmp-", delete=False) as file:
            file.write(_MAGIC + hashlib.sha256(body).digest() + body)
        os.replace(file.name, path)
    except OSError as error:
        _warn_once(f"wwjax: not storing compiled programs ({path.parent}: {error.strerror or error})")


_warned: set[str] = set()


def _warn_once(message: str) -> None:
    if message not in _warned:
        _warned.add(message)
        print(message, file=sys.stderr)


# XLA's CPU options of a program whose compilation, not its run, is what a user waits for: the older elemental
# code generator compiles the MP fit in 60% of the time (2.6 → 1.5 s on MiniLM's shuffled spectra), to the same
# bits and run time. Not for the power-law/TPL fit: its transcendental functions round differently there, and the
# TPL's Nelder-Mead amplified that to 1.5% of α in float32 between an eager analysis and a jitted one (the jitted
# whole analysis compiles with the default generator). Not for the eigen-solves: their loops run 1.6-2x slower.
FAST_COMPILE = {"xla_cpu_use_fusion_emitters": False}


def program(fun: Callable | None = None, *, static_argnames: tuple[str, ...] = (), cpu_options: dict | None = None):
    """Decorator form of :class:`Program` (``@program(static_argnames=(...))`` in place of ``jax.jit``).
    ``cpu_options``: XLA compiler options used when the backend is the CPU (e.g. :data:`FAST_COMPILE`).

    Example:
      >>> import jax.numpy as jnp
      >>> @program
      ... def square(x):
      ...     return x * x
      >>> square(jnp.float32(3.0)).item()
      9.0
    """
    if fun is None:
        return functools.partial(program, static_argnames=static_argnames, cpu_options=cpu_options)
    return Program(fun, static_argnames, cpu_options)


__all__ = ["FAST_COMPILE", "Program", "abstract", "compile_ahead", "forget_loaded", "program", "program_store", "use_program_store"]
