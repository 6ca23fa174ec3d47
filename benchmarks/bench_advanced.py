"""Cost of the advanced options of ``wwjax.analyze`` relative to the default analysis (warm, median of repeats).

Runs on synthetic Flax-layout weights (Student-t entries, seeded): four dense kernels and two 3x3 convs. Prints,
per option set, the median warm time in seconds and its ratio to the default analysis. Run from the repository
root::

    python benchmarks/bench_advanced.py [--repeats 5] [--x64]
"""

from __future__ import annotations

import argparse
import statistics
import time

import jax
import numpy as np

OPTIONS = {
    "default": {},
    "fix_fingers='clip_xmax'": dict(fix_fingers="clip_xmax"),
    "fix_fingers='xmin_peak'": dict(fix_fingers="xmin_peak"),
    "fit='TPL'": dict(fit="TPL"),
    "fit='E_TPL'": dict(fit="E_TPL"),
    "detX=True": dict(detX=True),
    "inverse=True": dict(inverse=True),
    "vectors=True": dict(vectors=True),
    "conv2d_fft=True, fft_size=8": dict(conv2d_fft=True, fft_size=8),
}


def make_params(seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    t = lambda *shape: (rng.standard_t(3, size=shape) / np.sqrt(np.prod(shape[:-1]))).astype(np.float32)  # noqa: E731
    return {
        "dense_0": {"kernel": t(512, 512)}, "dense_1": {"kernel": t(512, 1024)},
        "dense_2": {"kernel": t(1024, 512)}, "dense_3": {"kernel": t(768, 256)},
        "conv_0": {"kernel": t(3, 3, 32, 64)}, "conv_1": {"kernel": t(3, 3, 64, 64)},
    }


def timed(params, options, repeats: int) -> float:
    import wwjax

    def run():
        jax.block_until_ready(jax.tree.leaves(wwjax.analyze(params, **options)))

    run()  # compile
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--x64", action="store_true", help="float64 (the parity setting)")
    args = parser.parse_args()
    jax.config.update("jax_enable_x64", args.x64)
    params = make_params()
    base = None
    print(f"{'options':34s} {'median s':>10s} {'x default':>10s}")
    for name, options in OPTIONS.items():
        t = timed(params, dict(options, max_evals=20000), args.repeats)
        base = t if base is None else base
        print(f"{name:34s} {t:10.3f} {t / base:10.2f}")


if __name__ == "__main__":
    main()
