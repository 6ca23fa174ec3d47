"""The ``wwjax`` command: analyse a checkpoint, scan a training run, compare two sets of weights.

::

    wwjax analyze PATH              # Orbax checkpoint (run directory or step), Flax .msgpack or .safetensors
    wwjax scan DIR --init-step 0    # every step of a CheckpointManager run: trend table and a PNG
    wwjax distances A B --method cka
    wwjax describe PATH             # how every leaf will be read, from shapes alone (no eigen-solve)

Each prints its table on the terminal and writes it with ``--csv``/``--parquet``/``--json``. A bad path or format
ends with one line on stderr and exit status 1.
"""

from __future__ import annotations

import argparse
import pathlib
import sys

import pandas as pd

_LAYER_COLUMNS = ["path", "layer_type", "N", "M", "alpha", "alpha_weighted", "log_spectral_norm", "stable_rank",
                  "distance_from_init", "status", "warning", "reason"]
_DISTANCE_COLUMNS = ["path", "layer_type", "N", "M", "delta_W", "delta_W_rel", "delta_b", "status", "reason"]


def _add_analyze_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("analysis options (as in wwjax.analyze)")
    group.add_argument("--layers", nargs="+", metavar="PATTERN",
                       help="layer types (dense, conv2d, …) or path patterns to analyse; '-x' excludes")
    group.add_argument("--min-evals", type=int, help="skip matrices with fewer eigenvalues (default 8)")
    group.add_argument("--max-evals", type=int, help="skip matrices with more eigenvalues (default 15000)")
    group.add_argument("--max-N", type=int, dest="max_N", help="skip matrices with a longer side (default 50000)")
    group.add_argument("--no-pool", dest="pool", action="store_false", default=None,
                       help="one row per conv kernel position instead of pooling them")
    group.add_argument("--svd-method", choices=["fast", "accurate", "svd", "gram"], help="eigen-solver (fast)")
    group.add_argument("--xmax", type=int, help="leave out the k largest eigenvalues before the power-law fit")
    group.add_argument("--stacked", nargs="+", metavar="PATTERN", help="paths whose leading axis stacks layers")
    group.add_argument("--x64", action="store_true", help="compute in float64 (WeightWatcher's precision)")


def _add_output_options(parser: argparse.ArgumentParser, what: str) -> None:
    group = parser.add_argument_group("output files")
    group.add_argument("--csv", metavar="FILE", help=f"write {what} as CSV")
    group.add_argument("--parquet", metavar="FILE", help=f"write {what} as Parquet (needs pyarrow)")
    group.add_argument("--json", metavar="FILE", help=f"write {what} as JSON records")


def _add_checkpoint_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--item", help="the Orbax item to read when a step has several (e.g. state)")
    parser.add_argument("--subtree", help="analyse only this /-path of the checkpoint (default: params)")


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
    analyze.add_argument("path", help="checkpoint directory, .msgpack file or .safetensors file")
    analyze.add_argument("--step", type=int, help="the step of a CheckpointManager directory (default: latest)")
    _add_checkpoint_options(analyze)
    _add_analyze_options(analyze)
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
    dist.add_argument("--no-pool", dest="pool", action="store_false", default=True,
                      help="one row per conv kernel position")
    dist.add_argument("--x64", action="store_true", help="compute in float64")
    _add_output_options(dist, "the table")
    _add_describe_parser(commands)
    return parser


def _analyze_options(args) -> dict:
    names = ("layers", "min_evals", "max_evals", "max_N", "pool", "svd_method", "xmax", "stacked")
    return {name: getattr(args, name) for name in names if getattr(args, name, None) is not None}


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
    shown = frame[[c for c in columns if c in frame]]
    with pd.option_context("display.width", 250, "display.max_columns", 30, "display.max_colwidth", 60,
                           "display.precision", 4):
        return shown.to_string(index=False)


def _run_analyze(args) -> None:
    import wwjax
    from wwjax._formats import detect_format, load_params

    options = _analyze_options(args)
    if args.plot:  # the figures need the spectra themselves, so the params are read whole
        params = load_params(args.path, step=args.step, item=args.item, subtree=args.subtree)
        result = wwjax.analyze(params, **options)
        table, summary = wwjax.details(result), pd.DataFrame([wwjax.summary(result)])
        _plot(result, pathlib.Path(args.plot))
    elif detect_format(args.path) == "orbax":
        scan = wwjax.analyze_checkpoint(args.path, step=args.step, item=args.item, subtree=args.subtree, **options)
        table, summary = scan.details, scan.summary
    else:
        if args.step is not None or args.item is not None or args.subtree is not None:
            raise ValueError(f"{args.path}: --step, --item and --subtree apply to Orbax checkpoints only")
        result = wwjax.analyze(load_params(args.path), **options)
        table = wwjax.details(result)
        summary = pd.DataFrame([wwjax.summary(result)])
    print(_show(table, (["step"] if "step" in table and table.step.notna().any() else []) + _LAYER_COLUMNS))
    means = summary.iloc[0].to_dict()
    print("\nsummary: " + ", ".join(f"{k}={v:.4g}" for k, v in means.items()
                                     if isinstance(v, float) and k != "step"))
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
    from wwjax import _results

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
                                  progress=not args.quiet, **_analyze_options(args))
    print(_show(scan.summary, list(scan.summary.columns)))
    _write(scan.details, args, scan.summary)
    if args.png:
        from wwjax._scan_plot import plot_scan_summary

        plot_scan_summary(scan.summary, args.png)
        print(f"wrote {args.png}", file=sys.stderr)


def _run_distances(args) -> None:
    import wwjax
    from wwjax._formats import load_params

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
    describe.add_argument("path", help="checkpoint directory, .msgpack file or .safetensors file")
    describe.add_argument("--step", type=int, help="the step of a CheckpointManager directory (default: latest)")
    _add_checkpoint_options(describe)
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
    run = {"analyze": _run_analyze, "scan": _run_scan, "distances": _run_distances,
           "describe": _run_describe}[args.command]
    try:
        run(args)
    except (FileNotFoundError, NotADirectoryError, ValueError, TypeError, ImportError, OSError) as error:
        message = str(error).splitlines()[0] if str(error) else type(error).__name__
        print(f"wwjax {args.command}: error: {message}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
