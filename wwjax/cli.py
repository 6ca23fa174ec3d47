"""The ``wwjax`` command: analyse a checkpoint, scan a training run, compare two sets of weights.

::

    wwjax analyze PATH              # Orbax checkpoint (run directory or step), Flax .msgpack or .safetensors
    wwjax scan DIR --init-step 0    # every step of a CheckpointManager run: trend table and a PNG
    wwjax distances A B --method cka
    wwjax describe PATH             # how every leaf will be read, from shapes alone (no eigen-solve)

Each prints its table on the terminal and writes it with ``--csv``/``--parquet``/``--json``. A bad path or format
ends with one line on stderr and exit status 1. Compiled programs are kept in ``$XDG_CACHE_HOME/wwjax`` (default
``~/.cache/wwjax``), so the next run on the same shapes compiles nothing; ``--no-cache`` or ``WWJAX_NO_CACHE=1``
turn that off.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import pathlib
import re
import shutil
import sys
import threading
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # pandas is imported where a table is made: `wwjax --help` and a bad path stay instant
    import pandas as pd

_LAYER_COLUMNS = ["path", "layer_type", "N", "M", "alpha", "alpha_weighted", "log_spectral_norm", "stable_rank",
                  "distance_from_init", "status", "warning", "reason"]
_DISTANCE_COLUMNS = ["path", "layer_type", "N", "M", "delta_W", "delta_W_rel", "delta_b", "status", "reason"]
# The columns an option adds that the terminal table shows (--csv/--json/--parquet write every column).
_OPTION_COLUMNS = {"mp_fit": ["num_spikes", "mp_softrank"], "randomize": ["rand_distance", "num_traps"],
                   "fix_fingers": ["num_fingers"], "fit": ["Lambda"], "detX": ["detX_num"],
                   "bootstrap": ["alpha_ci_low", "alpha_ci_high"]}
_NO_CACHE_HELP = "do not keep compiled programs in $XDG_CACHE_HOME/wwjax (also: WWJAX_NO_CACHE=1)"


def _add_analyze_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("which matrices (as in wwjax.analyze)")
    group.add_argument("--layers", nargs="+", metavar="PATTERN",
                       help="layer types (dense, conv2d, …) or path patterns to analyse; '-x' excludes")
    group.add_argument("--min-evals", type=int, help="skip matrices with fewer eigenvalues (default 8)")
    group.add_argument("--max-evals", type=int, help="skip matrices with more eigenvalues (default 15000)")
    group.add_argument("--max-N", type=int, dest="max_N", help="skip matrices with a longer side (default 50000)")
    group.add_argument("--stacked", nargs="+", metavar="PATTERN", help="paths whose leading axis stacks layers")
    group.add_argument("--pool", action=argparse.BooleanOptionalAction, default=None,
                       help="pool a convolution's kernel positions into one ESD (default), or one row per position")

    group = parser.add_argument_group("the fit (as in wwjax.analyze)")
    group.add_argument("--fit", choices=["PL", "TPL", "E_TPL"],
                       help="power law (PL, default), truncated power law (TPL), or the TPL with xmin at the peak")
    group.add_argument("--fix-fingers", choices=["clip_xmax", "xmin_peak"], dest="fix_fingers",
                       help="deal with the few largest eigenvalues that distort a fit ('fingers')")
    group.add_argument("--xmax", type=int, help="leave out the k largest eigenvalues before the power-law fit")
    group.add_argument("--xmin", choices=["median", "peak", "scan"],
                       help="Hill's estimator with TempBalance/AlphaPruning's xmin rule instead of the KS scan")
    group.add_argument("--farms", action="store_true", default=None,
                       help="fit each matrix's fixed-aspect-ratio windows (FARMS): α without the aspect-ratio bias")
    group.add_argument("--svd-method", choices=["fast", "accurate", "svd", "gram"], help="eigen-solver (fast)")
    group.add_argument("--x64", action="store_true", help="compute in float64 (WeightWatcher's precision)")

    group = parser.add_argument_group("more diagnostics (as in wwjax.analyze; each adds columns)")
    group.add_argument("--mp-fit", action="store_true", default=None, dest="mp_fit",
                       help="the Marchenko-Pastur fit: num_spikes, sigma_mp, mp_softrank, …")
    group.add_argument("--randomize", action="store_true", default=None,
                       help="compare with the ESD of the shuffled weights: rand_distance, correlation traps, …")
    group.add_argument("--bootstrap", type=int, metavar="B",
                       help="error bars on α from B resamples of each ESD: alpha_std, alpha_ci_low, alpha_ci_high")
    group.add_argument("--seed", type=int, default=0, metavar="N",
                       help="the random key of --randomize and --bootstrap (default 0: the same seed gives the same "
                            "numbers)")
    group.add_argument("--lora", action="store_true", default=None,
                       help="analyse LoRA adapter pairs (lora_a/lora_b, lora_A/lora_B, …) as their product ΔW")
    group.add_argument("--detX", action="store_true", default=None, dest="detX",
                       help="the detX condition: detX_num, detX_val, num_ERG_spikes, …")
    group.add_argument("--vectors", action="store_true", default=None,
                       help="eigenvector localisation: 12 {bulk,tail}_{mean,var}_… columns")


def _add_output_options(parser: argparse.ArgumentParser, what: str) -> None:
    group = parser.add_argument_group("output files")
    group.add_argument("--csv", metavar="FILE", help=f"write {what} as CSV")
    group.add_argument("--parquet", metavar="FILE", help=f"write {what} as Parquet (needs pyarrow)")
    group.add_argument("--json", metavar="FILE", help=f"write {what} as JSON records")


def _add_checkpoint_options(parser: argparse.ArgumentParser):
    group = parser.add_argument_group("Orbax checkpoints")
    group.add_argument("--item", help="the Orbax item to read when a step has several (e.g. state)")
    group.add_argument("--subtree", help="analyse only this /-path of the checkpoint (default: params)")
    return group


def _add_one_checkpoint_arguments(parser: argparse.ArgumentParser) -> None:
    """PATH, --step and the Orbax options: what names one checkpoint (``analyze``, ``describe``)."""
    parser.add_argument("path", help="checkpoint directory, .msgpack file or .safetensors file")
    _add_checkpoint_options(parser).add_argument(
        "--step", type=int, help="the step of a CheckpointManager directory (default: latest)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="wwjax", description="WeightWatcher's spectral diagnostics of trained weights, for JAX checkpoints.",
        epilog="Run 'wwjax COMMAND --help' for a command's options.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    analyze = commands.add_parser(
        "analyze", help="per-layer metrics of one checkpoint",
        description="Per-layer metrics (alpha, norms, ranks) of an Orbax checkpoint (a CheckpointManager directory "
                    "- its latest step unless --step - or one step), a Flax .msgpack file, or a .safetensors file "
                    "or directory of shards (PyTorch layouts converted to Flax).")
    _add_one_checkpoint_arguments(analyze)
    _add_analyze_options(analyze)
    shown = analyze.add_argument_group("what is printed")
    shown.add_argument("--summary", action="store_true", dest="summary_only", help="print only the summary line")
    shown.add_argument("--all", action="store_true", dest="show_all",
                       help="list the skipped leaves too, each with its reason (default: one line counting them)")
    shown.add_argument("--quiet", action="store_true", help="no progress bar on stderr")
    shown.add_argument("--no-cache", action="store_true", help=_NO_CACHE_HELP)
    _add_output_options(analyze, "the per-layer table (and FILE's stem + '.summary' the summary)")
    analyze.add_argument("--plot", metavar="DIR",
                         help="write figures to DIR: each layer's log-log ESD with its power-law fit, and alpha by "
                              "layer (needs matplotlib)")

    scan = commands.add_parser(
        "scan", help="every step of a training run: trend table and PNG",
        description="Analyses every finalised step of a CheckpointManager directory; prints the per-step trend "
                    "table (summary metrics, distance from init, stored metrics) and draws them against step.")
    scan.add_argument("directory", help="the CheckpointManager directory")
    scan.add_argument("--steps", type=int, nargs="+", help="only these steps")
    scan.add_argument("--init-step", type=int, help="the step of the initial weights: adds distance_from_init")
    scan.add_argument("--distance-method", default="euclidean",
                      choices=["raw", "euclidean", "cosine", "cka", "ww_cka"], help="for distance_from_init")
    scan.add_argument("--png", default="wwjax-scan.png", metavar="FILE",
                      help="the trend figure (default wwjax-scan.png)")
    scan.add_argument("--no-png", dest="png", action="store_const", const=None, help="draw no figure")
    scan.add_argument("--quiet", action="store_true", help="no progress bar")
    scan.add_argument("--no-cache", action="store_true", help=_NO_CACHE_HELP)
    _add_checkpoint_options(scan)
    _add_analyze_options(scan)
    _add_output_options(scan, "every layer of every step (and FILE's stem + '.summary' the trend table)")

    dist = commands.add_parser(
        "distances", help="per-layer distance between two sets of weights",
        description="Per-layer distance or similarity between the weights in A and in B (any format 'analyze' "
                    "reads), matched by path.")
    dist.add_argument("a", help="the reference weights (e.g. the initial checkpoint)")
    dist.add_argument("b", help="the other weights")
    dist.add_argument("--method", default="raw", choices=["raw", "euclidean", "cosine", "cka", "ww_cka"],
                      help="raw (default), euclidean, cosine, cka (centred) or ww_cka (WeightWatcher's)")
    dist.add_argument("--step-a", type=int, help="the step of A, when A is a CheckpointManager directory")
    dist.add_argument("--step-b", type=int, help="the step of B, when B is a CheckpointManager directory")
    dist.add_argument("--pool", action=argparse.BooleanOptionalAction, default=True,
                      help="pool a convolution's kernel positions (default), or one row per position")
    dist.add_argument("--x64", action="store_true", help="compute in float64")
    dist.add_argument("--no-cache", action="store_true", help=_NO_CACHE_HELP)
    _add_output_options(dist, "the table")
    _add_describe_parser(commands)
    return parser


def _analyze_options(args) -> dict:
    names = ("layers", "min_evals", "max_evals", "max_N", "pool", "svd_method", "xmax", "stacked", "fit",
             "fix_fingers", "mp_fit", "randomize", "detX", "vectors", "xmin", "farms", "bootstrap", "lora")
    options = {name: getattr(args, name) for name in names if getattr(args, name, None) is not None}
    if options.get("randomize") or options.get("bootstrap"):
        options["key"] = args.seed
    return options


def _write(frame: pd.DataFrame, args, summary: pd.DataFrame | None = None) -> None:
    for kind in ("csv", "parquet", "json"):
        target = getattr(args, kind)
        if not target:
            continue
        outputs = [(pathlib.Path(target), frame)]
        if summary is not None:
            target = pathlib.Path(target)
            outputs.append((target.with_name(f"{target.stem}.summary{target.suffix}"), summary))
        for path, table in outputs:
            if kind == "csv":
                table.to_csv(path, index=False)
            elif kind == "json":
                table.to_json(path, orient="records", indent=1)
            else:
                try:
                    table.to_parquet(path, index=False)
                except ImportError:
                    raise ValueError("--parquet needs pyarrow (pip install pyarrow)") from None
            print(f"wrote {path}", file=sys.stderr)


def _show(frame: pd.DataFrame, columns: list[str]) -> str:
    """The table as text, as wide as the terminal: a long path is cut in the middle rather than wrapping rows."""
    import pandas as pd

    shown = frame[[c for c in columns if c in frame]]
    width = shutil.get_terminal_size((160, 24)).columns
    path_width = max(24, width - 11 * (len(shown.columns) - 1))
    if "path" in shown and len(shown) and shown["path"].str.len().max() > path_width:
        half = (path_width - 1) // 2
        shown = shown.assign(path=[p if len(p) <= path_width else f"{p[:half]}…{p[len(p) - half:]}"
                                   for p in shown["path"]])
    with pd.option_context("display.width", width, "display.max_columns", 40, "display.max_colwidth", 60,
                           "display.precision", 4):
        return shown.to_string(index=False, line_width=width)


def skip_kind(reason: str) -> str:
    """A skipped leaf's reason without the numbers that make each one different, so that they can be counted.

    Example:
      >>> skip_kind("3 eigenvalues < min_evals=8 (lower min_evals to analyse it)")
      'fewer eigenvalues than min_evals'
      >>> skip_kind("bias")
      'bias'
    """
    for option, kind in (("min_evals", "fewer eigenvalues than min_evals"), ("max_evals", "more than max_evals"),
                         ("max_N", "longer than max_N"), ("not selected by layers", "not selected by --layers")):
        if option in reason:
            return kind
    return re.sub(r"\s*\(.*$", "", reason) or "no reason given"


def skipped_line(table: pd.DataFrame) -> str | None:
    """``skipped 75 leaves: 38 bias, 25 normalization scale, …; --all lists them``, or None when none was."""
    skipped = table[table["status"] == "skipped"]
    if skipped.empty:
        return None
    counts = skipped["reason"].fillna("").map(skip_kind).value_counts()
    parts = ", ".join(f"{n} {kind}" for kind, n in counts.items())
    return f"skipped {len(skipped)} {'leaf' if len(skipped) == 1 else 'leaves'}: {parts}; --all lists them"


def _print_analysis(table: pd.DataFrame, summary: pd.DataFrame, args) -> None:
    means = summary.iloc[0].to_dict()
    line = "summary: " + ", ".join(f"{k}={v:.4g}" for k, v in means.items() if isinstance(v, float) and k != "step")
    if args.summary_only:
        print(line)
        return
    options = _analyze_options(args)
    columns = (["step"] if "step" in table and table.step.notna().any() else []) + list(_LAYER_COLUMNS)
    for option, extra in _OPTION_COLUMNS.items():
        if options.get(option) not in (None, False, "PL"):
            at = columns.index("status")
            columns[at:at] = [c for c in extra if c in table]
    shown = table if args.show_all else table[table["status"] != "skipped"]
    if "distance_from_init" in shown and shown["distance_from_init"].isna().all():
        columns.remove("distance_from_init")
    if (shown["reason"].fillna("") == "").all():
        columns.remove("reason")
    print(_show(shown, columns))
    note = None if args.show_all else skipped_line(table)
    print(f"\n{note}" if note else "")
    print(line)


def _summary_frame(means: dict) -> pd.DataFrame:
    import pandas as pd

    return pd.DataFrame([means])


def _import_in_background(name: str) -> None:
    """Starts importing module ``name`` on a thread (a later ``import`` waits for it to finish, if need be)."""
    threading.Thread(target=importlib.import_module, args=(name,), daemon=True).start()


def _run_analyze(args) -> None:
    import wwjax
    from wwjax.io._formats import detect_format, load_params
    from wwjax.io._progress import ProgressBar

    options = _analyze_options(args)
    kind = detect_format(args.path)
    if kind != "orbax" and (args.step is not None or args.item is not None or args.subtree is not None):
        raise ValueError(f"{args.path}: --step, --item and --subtree apply to Orbax checkpoints only")
    bar = ProgressBar(2, enabled=not args.quiet and sys.stderr.isatty(), label="wwjax analyze")
    bar.update(0, "reading")
    _import_in_background("pandas")  # the table's; meanwhile the analysis mostly waits on XLA, without the GIL
    try:
        if args.plot or kind != "orbax":  # the figures need the spectra themselves, so the params are read whole
            params = load_params(args.path, step=args.step, item=args.item, subtree=args.subtree)
            bar.update(1, "analysing")
            result = wwjax.analyze(params, **options)
            table, summary = wwjax.details(result), _summary_frame(wwjax.summary(result))
            if args.plot:
                _plot(result, pathlib.Path(args.plot))
        else:
            bar.update(1, "analysing")
            scan = wwjax.analyze_checkpoint(args.path, step=args.step, item=args.item, subtree=args.subtree,
                                            **options)
            table, summary = scan.details, scan.summary
        bar.update(2, "done")
    finally:
        bar.close()
    _print_analysis(table, summary, args)
    _write(table, args, summary)


def _plot(result, directory: pathlib.Path) -> None:
    """One log-log ESD figure per analysed matrix and alpha by layer, written to ``directory``."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise ValueError("--plot needs matplotlib (pip install 'wwjax[plot]')") from None
    import wwjax.plot
    from wwjax.core import _results

    directory.mkdir(parents=True, exist_ok=True)
    written = 0
    for node in _results.iter_nodes(result):
        if isinstance(node, _results.LayerMetrics):
            for row in range(len(node.layer_index)):
                suffix = f".{row}" if len(node.layer_index) > 1 else ""
                fig = wwjax.plot.esd(node, row=row, save=directory / f"{node.path.replace('/', '.')}{suffix}.esd.png")
                plt.close(fig)
                written += 1
    plt.close(wwjax.plot.layers(result, "alpha", save=directory / "alpha_by_layer.png"))
    print(f"wrote {written + 1} figures to {directory}", file=sys.stderr)


def _run_scan(args) -> None:
    import wwjax

    scan = wwjax.scan_checkpoints(args.directory, steps=args.steps, item=args.item, init_step=args.init_step,
                                  distance_method=args.distance_method, subtree=args.subtree,
                                  progress=not args.quiet, cache=not args.no_cache, **_analyze_options(args))
    print(_show(scan.summary, list(scan.summary.columns)))
    _write(scan.details, args, scan.summary)
    if args.png:
        from wwjax._scan_plot import plot_scan_summary

        plot_scan_summary(scan.summary, args.png)
        print(f"wrote {args.png}", file=sys.stderr)


def _run_distances(args) -> None:
    import wwjax
    from wwjax.io._formats import load_params

    a = load_params(args.a, **({"step": args.step_a} if args.step_a is not None else {}))
    b = load_params(args.b, **({"step": args.step_b} if args.step_b is not None else {}))
    table = wwjax.distances(a, b, method=args.method, pool=args.pool)
    print(_show(table, ["path"] + [c for c in ("layer_index", "slice_id") if c in table] + _DISTANCE_COLUMNS[1:]))
    _write(table, args)


_DESCRIBE_COLUMNS = ["path", "shape", "layer_type", "view", "N", "M", "rf", "num_evals", "status", "reason",
                     "warning"]


def _add_describe_parser(commands) -> None:
    describe = commands.add_parser(
        "describe", help="how every leaf will be read, before anything is solved",
        description="The analysis plan of a checkpoint, from shapes alone (of an Orbax checkpoint only the metadata "
                    "is read): each leaf's layer type, matrix view, N, M, rf, num_evals, and why a leaf is skipped "
                    "or which guess its reading rests on (the 'warning' column, with the --views/--stacked fix).")
    _add_one_checkpoint_arguments(describe)
    _add_analyze_options(describe)
    _add_output_options(describe, "the plan")


def _run_describe(args) -> None:
    import wwjax

    table = wwjax.describe(args.path, step=args.step, item=args.item, subtree=args.subtree, **_analyze_options(args))
    print(_show(table, _DESCRIBE_COLUMNS))
    guesses = int((table.warning != "").sum())
    print(f"\n{int((table.status == 'planned').sum())} leaves to analyse, {int((table.status == 'skipped').sum())} "
          f"skipped, {guesses} read on a guess (see 'warning')")
    _write(table, args)


def main(argv=None) -> int:
    """Runs the ``wwjax`` command; returns the exit status (0, 1 on an error, 2 on bad arguments)."""
    args = build_parser().parse_args(argv)
    if getattr(args, "x64", False):
        import jax

        jax.config.update("jax_enable_x64", True)
    if not getattr(args, "no_cache", True):  # a process of our own: keep its programs for the next run (never fails; see docs)
        from wwjax.core._compilation import use_default_cache

        use_default_cache()
    run = {"analyze": _run_analyze, "scan": _run_scan, "distances": _run_distances,
           "describe": _run_describe}[args.command]
    try:
        run(args)
    except (FileNotFoundError, NotADirectoryError, ValueError, TypeError, ImportError, OSError, MemoryError) as error:
        message = str(error).splitlines()[0] if str(error) else type(error).__name__
        print(f"wwjax {args.command}: error: {message}", file=sys.stderr)
        return 1
    return 0


def run() -> None:
    """The ``wwjax`` command: :func:`main`, then a quick exit.

    Tearing the interpreter down after an analysis (JAX's runtime and thread pools, every module) takes 0.3-0.4 s
    on a 2-core CPU, as long as a warm analysis of a small model. Nothing is left to finalise by then (every file
    the command writes is closed; the caches are written when a program is compiled), so the command flushes its
    streams and logging and ends the process with ``os._exit``.
    """
    code = main()
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (BrokenPipeError, OSError):  # a reader that closed the pipe (`| head`) wanted no more
            pass
    os._exit(code)


if __name__ == "__main__":
    run()
