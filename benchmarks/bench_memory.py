"""Peak memory of ``wwjax.analyze`` on a vocabulary-sized embedding, with and without ``max_bucket_bytes``.

Each run is a fresh process of this interpreter (CPU backend: JAX's buffers live in the process, so the peak resident
set size is what the analysis materialised). It creates the ``--vocab × --dim`` float32 embedding (Student-t, df=3),
analyses it once to compile the programs (the compiler's memory is not data the budget governs), then again while a
thread samples the resident size every millisecond (Linux ``/proc/self/statm``), and reports the growth of its peak over the resident size before — the
memory the analysis itself needed — against the budget. Without a budget, wwjax converts and stacks the whole
matrix before its Gram; with one, it accumulates the Gram over blocks of rows that fit.

    python benchmarks/bench_memory.py                                  # 32000 x 1024, budgets 256, 64, 16 MiB
    python benchmarks/bench_memory.py --vocab 128000 --dim 4096 --budgets 1024,256   # the issue's 128k x 4096
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

CHILD = r"""
import json, sys, time
import jax, jax.numpy as jnp, numpy as np, wwjax
vocab, dim, budget = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]) or None
rng = np.random.default_rng(0)
embedding = jnp.asarray((rng.standard_t(3, size=(vocab, dim)) / np.sqrt(dim)).astype(np.float32))
del rng
jax.block_until_ready(embedding)
import os, threading
page = os.sysconf("SC_PAGE_SIZE")
def rss():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * page
peak, running = [0], [True]
def sample():  # the resident size every millisecond while the analysis runs
    while running[0]:
        peak[0] = max(peak[0], rss())
        time.sleep(0.001)
# One analysis to compile its programs (the compiler's own memory is not data the budget governs), then the measured one.
jax.block_until_ready(wwjax.analyze({"embed": {"embedding": embedding}}, max_N=vocab, max_bucket_bytes=budget))
import ctypes, gc
gc.collect()
ctypes.CDLL("libc.so.6").malloc_trim(0)  # hand the freed temporaries of the set-up back, so the baseline is honest
time.sleep(0.5)
before = rss()
sampler = threading.Thread(target=sample)
sampler.start()
start = time.perf_counter()
result = wwjax.analyze({"embed": {"embedding": embedding}}, max_N=vocab, max_bucket_bytes=budget)
alpha = float(jax.block_until_ready(result["embed"]["embedding"].alpha[0]))
seconds = time.perf_counter() - start
running[0] = False
sampler.join()
after = max(peak[0], rss())
print(json.dumps({"baseline": before, "peak": after, "seconds": seconds, "alpha": alpha}))
"""


def run(vocab: int, dim: int, budget: int) -> dict:
    done = subprocess.run([sys.executable, "-c", CHILD, str(vocab), str(dim), str(budget)],
                          capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--vocab", type=int, default=32000)
    parser.add_argument("--dim", type=int, default=1024)
    parser.add_argument("--budgets", default="256,64,16", help="max_bucket_bytes values in MiB, comma-separated")
    parser.add_argument("--json", help="write the figures here")
    args = parser.parse_args()

    mib = 2**20
    weight = args.vocab * args.dim * 4
    print(f"embedding {args.vocab} x {args.dim} float32: {weight / mib:.0f} MiB; Gram {args.dim**2 * 4 / mib:.0f} MiB")
    print(f"{'max_bucket_bytes':>17} {'peak growth':>12} {'growth/budget':>14} {'seconds':>8} {'alpha':>8}")
    rows = []
    for budget_mib in [0] + [float(b) for b in args.budgets.split(",")]:
        budget = int(budget_mib * mib)
        figures = run(args.vocab, args.dim, budget)
        growth = figures["peak"] - figures["baseline"]
        rows.append(dict(figures, budget=budget, growth=growth))
        label = f"{budget_mib:.0f} MiB" if budget else "none"
        share = f"{growth / budget:.2f}" if budget else "-"
        print(f"{label:>17} {growth / mib:>8.0f} MiB {share:>14} {figures['seconds']:>8.2f} {figures['alpha']:>8.4f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"vocab": args.vocab, "dim": args.dim, "runs": rows}, f, indent=2)



if __name__ == "__main__":
    main()
