"""The options of :func:`wwjax.analyze`, checked once on the host, with WeightWatcher's names and 0.7.7 defaults."""

from __future__ import annotations

import dataclasses
import difflib
from collections.abc import Callable, Mapping, Sequence

from jax.sharding import Mesh

from wwjax.core._layout import LAYER_TYPES, MatrixView
from wwjax.core._contributions import contributions, option_defaults
from wwjax.core._spectra import SVD_METHODS


@dataclasses.dataclass(frozen=True)
class AnalyzeOptions:
    """Validated options of one analysis (see :func:`wwjax.analyze` for their meaning): the core's as fields, the
    contributions' in ``contributed``, all read as ``opts.<name>``."""

    min_evals: int = 8
    max_evals: int = 15000
    max_N: int = 50000  # noqa: N815 (WeightWatcher's name)
    pool: bool = True
    conv2d_norm: bool = True
    xmax: int | None = None
    layers: tuple[str, ...] = ()
    svd_method: str = "fast"
    tolerance: float = 1e-6
    views: Mapping[str, MatrixView] | Callable | None = None
    stacked: tuple[str, ...] = ()
    # Scale (not in WeightWatcher): bytes one bucket may materialise, and the device mesh to spread buckets over.
    max_bucket_bytes: int | None = None
    mesh: Mesh | None = None
    # The options of the registered contributions (wwjax.core._contributions), as (name, value) pairs: read as
    # opts.<name>; a name absent here reads its registered default.
    contributed: tuple[tuple[str, object], ...] = ()

    def __getattr__(self, name: str):
        if name.startswith("__") or name == "contributed":
            raise AttributeError(name)
        for key, value in self.contributed:
            if key == name:
                return value
        defaults = option_defaults()
        if name in defaults:
            return defaults[name]
        raise AttributeError(f"{type(self).__name__!r} has no option {name!r}")

    @property
    def num_clipped(self) -> int:
        return abs(self.xmax) if self.xmax else 0


def core_option_names() -> tuple[str, ...]:
    """The options every analysis has (the contributions' come after them)."""
    return tuple(f.name for f in dataclasses.fields(AnalyzeOptions) if f.name != "contributed")


def _as_patterns(value, name: str) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, Sequence) or not all(isinstance(v, str) for v in value):
        raise TypeError(
            f"{name} takes a path pattern or a list of them (e.g. {name}=['Dense_0', '*/attention/*'"
            + (", 'conv2d', '-embedding'" if name == "layers" else "")
            + f"]), got {value!r}"
        )
    return tuple(value)


def _check_int(name: str, value, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {type(value).__name__} {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return value


def make_options(**kwargs) -> AnalyzeOptions:
    """Builds :class:`AnalyzeOptions`, raising a TypeError/ValueError that says what to change.

    Example:
      >>> make_options(min_evals=10).min_evals
      10
      >>> make_options(min_eval=10)
      Traceback (most recent call last):
      ...
      TypeError: unknown option 'min_eval' (did you mean 'min_evals'?); ...
    """
    core = core_option_names()
    known = list(core) + list(option_defaults())
    for key in kwargs:
        if key not in known:
            close = difflib.get_close_matches(key, known, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise TypeError(f"unknown option {key!r}{hint}; analyze() takes {', '.join(known)}")
    contributed = {**option_defaults(), **{k: v for k, v in kwargs.items() if k not in core}}
    opts = AnalyzeOptions(**{k: v for k, v in kwargs.items() if k in core}, contributed=tuple(contributed.items()))
    _check_int("min_evals", opts.min_evals, 0)
    _check_int("max_evals", opts.max_evals, 1)
    _check_int("max_N", opts.max_N, 1)
    if opts.min_evals > opts.max_evals:
        raise ValueError(f"min_evals ({opts.min_evals}) must not exceed max_evals ({opts.max_evals})")
    for flag in ("pool", "conv2d_norm"):
        if not isinstance(getattr(opts, flag), bool):
            raise TypeError(f"{flag} must be True or False, got {getattr(opts, flag)!r}")
    if opts.xmax is not None and (isinstance(opts.xmax, bool) or not isinstance(opts.xmax, int) or opts.xmax == 0):
        raise ValueError(
            f"xmax must be None or a nonzero int k (leave out the k largest eigenvalues before the fit), "
            f"got {opts.xmax!r}"
        )
    if opts.svd_method not in SVD_METHODS:
        raise ValueError(f"svd_method must be one of {SVD_METHODS}, got {opts.svd_method!r}")
    if not isinstance(opts.tolerance, (int, float)) or opts.tolerance <= 0:
        raise ValueError(f"tolerance must be a positive number, got {opts.tolerance!r}")
    views = opts.views
    if views is not None and not callable(views):
        if not isinstance(views, Mapping) or not all(
            isinstance(k, str) and isinstance(v, MatrixView) for k, v in views.items()
        ):
            raise TypeError("views must map path patterns to wwjax.MatrixView, or be a callable (path, shape) -> view")
    if opts.max_bucket_bytes is not None:
        _check_int("max_bucket_bytes", opts.max_bucket_bytes, 1)
    if opts.mesh is not None and not isinstance(opts.mesh, Mesh):
        raise TypeError(f"mesh must be a jax.sharding.Mesh (e.g. jax.make_mesh((8,), ('batch',))), got {opts.mesh!r}")
    layers = _as_patterns(opts.layers, "layers")
    for contribution in contributions():  # each registered option's own checks
        if contribution.check is not None:
            contribution.check(opts)
    return dataclasses.replace(opts, layers=layers, stacked=_as_patterns(opts.stacked, "stacked"))


def layer_selected(path: str, layer_type: str, layers: tuple[str, ...]) -> bool:
    """WeightWatcher-style ``layers=`` filter: keep what any positive entry selects, then drop ``-`` entries.

    An entry is a layer type (``dense``, ``conv2d``, …) or a path pattern (see :func:`wwjax.path_matches`).

    Example:
      >>> layer_selected("params/Conv_0/kernel", "conv2d", ("conv2d",))
      True
      >>> layer_selected("params/Embed_0/embedding", "embedding", ("-embedding",))
      False
    """
    from wwjax.core._layout import path_matches

    def hit(entry: str) -> bool:
        return entry == layer_type if entry in LAYER_TYPES else path_matches(path, entry)

    include = [e for e in layers if not e.startswith("-")]
    exclude = [e[1:] for e in layers if e.startswith("-")]
    if include and not any(hit(e) for e in include):
        return False
    return not any(hit(e) for e in exclude)
