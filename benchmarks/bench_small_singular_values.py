"""What re-solving the Gram route's doubtful matrices by the SVD costs (float64, ``svd_method='fast'``).

In float64 the default solver computes every matrix's eigenvalues from its Gram matrix and then re-solves, by the
SVD and one at a time, the matrices whose smallest Gram eigenvalue lies near the Gram's rounding floor
(``wwjax.core._spectra.doubtful``). This script measures, per bucket of ``bench_analyze.py``'s transformer shapes (and a
conv bucket), on the bucket's solve program (``wwjax.core._spectra.slice_spectra``):

* **compile**: seconds to lower and compile the program with the re-solve and without it;
* **ordinary, warm**: the median run time with and without it when no matrix is doubtful (Student-t weights);
* **doubtful, warm**: the run time when a fraction of the matrices is rank-deficient (a duplicated column), against
  the plain Gram route (wrong ranks) and the SVD of the whole bucket (``svd_method='accurate'``).

Run from the repository root::

    python benchmarks/bench_small_singular_values.py            # 12 attention, 6 MLP, 54 conv matrices: slow
    python benchmarks/bench_small_singular_values.py --quick    # 2 attention matrices and one conv kernel
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import jax

jax.config.update("jax_enable_x64", True)

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_analyze import MLP_WIDTH, WIDTH, student_t  # noqa: E402

from wwjax.core import _spectra  # noqa: E402


def stack(rng, count: int, n: int, m: int, doubtful: int = 0) -> jax.Array:
    """``count`` Student-t ``(n, m)`` matrices; the first ``doubtful`` have a duplicated column (rank m - 1)."""
    mats = np.stack([student_t(rng, (n, m), n) for _ in range(count)]).astype(np.float64)
    mats[:doubtful, :, -1] = mats[:doubtful, :, 0]
    return jnp.asarray(mats)


def compile_seconds(x: jax.Array, method: str, refine: bool) -> tuple[float, object]:
    original = _spectra.refines_small_values
    _spectra.refines_small_values = original if refine else (lambda m, d: False)
    try:
        jax.clear_caches()
        start = time.perf_counter()
        compiled = jax.jit(_spectra.slice_spectra.__wrapped__, static_argnames=("method",)).lower(
            x, method=method).compile()
        return time.perf_counter() - start, compiled
    finally:
        _spectra.refines_small_values = original


def measure(name: str, x: jax.Array, repeats: int, doubtful: int) -> dict:
    """Compiles the three programs, then times them interleaved (a load spike hits all three alike)."""
    row = {"bucket": name, "shape": "x".join(map(str, x.shape)), "doubtful": doubtful}
    programs = {}
    for label, method, refine in (("refined", "gram", True), ("plain", "gram", False), ("svd", "svd", False)):
        row[f"compile_{label}"], programs[label] = compile_seconds(x, method, refine)
        row[f"rank_{label}"] = int(jnp.sum(programs[label](x).rank))  # also the warm-up call
    times: dict[str, list[float]] = {label: [] for label in programs}
    for _ in range(repeats):
        for label, compiled in programs.items():
            start = time.perf_counter()
            jax.block_until_ready(compiled(x))
            times[label].append(time.perf_counter() - start)
    row.update({f"warm_{label}": statistics.median(t) for label, t in times.items()})
    return row


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="2 attention matrices and one conv, no MLP bucket")
    parser.add_argument("--repeats", type=int, default=7, help="timed runs per warm figure, median taken")
    args = parser.parse_args(argv)
    rng = np.random.default_rng(0)
    buckets = [("attention", 2, WIDTH, WIDTH), ("conv 3x3 64->128", 9, 128, 64)]
    if not args.quick:
        buckets = [("attention", 12, WIDTH, WIDTH), ("mlp", 6, MLP_WIDTH, WIDTH), ("conv 3x3 64->128", 54, 128, 64)]
    print(f"jax {jax.__version__} | backend {jax.default_backend()} | float64 | median of {args.repeats} warm runs")
    print(" | ".join(["bucket", "shape", "doubtful", "compile refined / plain / svd (s)",
                      "warm refined / plain / svd (s)", "refined/plain", "rank refined / plain / svd"]), flush=True)
    for name, k, n, m in buckets:
        for doubtful in (0, max(1, k // 4)):
            r = measure(name, stack(rng, k, n, m, doubtful), args.repeats, doubtful)
            print(" | ".join([
                r["bucket"], r["shape"], str(r["doubtful"]),
                " / ".join(f"{r[f'compile_{key}']:.2f}" for key in ("refined", "plain", "svd")),
                " / ".join(f"{r[f'warm_{key}']:.3f}" for key in ("refined", "plain", "svd")),
                f"{r['warm_refined'] / r['warm_plain']:.2f}x",
                " / ".join(str(r[f"rank_{key}"]) for key in ("refined", "plain", "svd")),
            ]), flush=True)


if __name__ == "__main__":
    main()
