"""A LLaMA-7B-shaped analysis end to end on one accelerator: wwjax vs the bare batched eigen-solve vs WeightWatcher.

The weights: ``--blocks`` (32) blocks of q/k/v/o kernels (4096 × 4096) and gate/up/down MLP kernels (4096 × 11008,
11008 × 4096), plus the 32000 × 4096 token embedding — 6.5 billion parameters, drawn on the device from a Student-t
(df = 3, heavy tails) scaled by 1/sqrt(fan_in), in ``--dtype`` (float32: 26 GB; bfloat16: 13 GB). ``--scale k``
divides every dimension by k (``--scale 16 --blocks 2`` runs on a laptop CPU in seconds).

It prints, in seconds:

* **wwjax cold**: the first ``wwjax.analyze(params)`` + ``block_until_ready`` in this process (every compilation
  included), with the number of XLA compilations;
* **wwjax warm**: the median of ``--repeats`` further calls;
* **bare eigen-solve**: the floor under wwjax's ``svd_method='fast'``: for each matrix shape, the matrices already
  stacked on the device, a jitted ``eigvalsh(WᵀW)`` (HIGHEST-precision einsum); the sum over shapes of the medians;
* **WeightWatcher** (with ``--ww-python``, an interpreter with ``weightwatcher`` and a CUDA ``torch``): one
  ``ww.WeightWatcher(model).analyze()`` of a torch model of the same shapes and distribution, built on the same GPU
  in a fresh process (its eigenvalues come from ``torch.linalg.svdvals`` on the GPU, its fits from NumPy on the host);

and the ratios the goals are stated in: wwjax warm / bare (goal ≤ 1.3), WeightWatcher / wwjax warm (goal ≥ 10),
wwjax cold (goal < 60 s on one H100), plus the device's peak memory where the backend reports it.

    python benchmarks/bench_llama7b.py                                    # the full 7B shape on the default device
    python benchmarks/bench_llama7b.py --ww-python /path/to/ww-env/bin/python --json llama7b.json
    python benchmarks/bench_llama7b.py --scale 16 --blocks 2 --repeats 2  # a smoke test on CPU
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time

import jax
import jax.numpy as jnp

import wwjax

DIM, MLP_DIM, VOCAB = 4096, 11008, 32000
ATTENTION = ("q_proj", "k_proj", "v_proj", "o_proj")

WW_CHILD = r"""
import json, sys, time
import torch, weightwatcher as ww
dim, mlp, vocab, blocks = map(int, sys.argv[1:5])
torch.manual_seed(0)
t = torch.distributions.StudentT(3.0)
def linear(fan_in, fan_out):
    layer = torch.nn.Linear(fan_in, fan_out, bias=False)
    with torch.no_grad():
        layer.weight.copy_(t.sample((fan_out, fan_in)) / fan_in ** 0.5)
    return layer
class Block(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.q_proj, self.k_proj, self.v_proj, self.o_proj = (linear(dim, dim) for _ in range(4))
        self.gate_proj, self.up_proj, self.down_proj = linear(dim, mlp), linear(dim, mlp), linear(mlp, dim)
model = torch.nn.Sequential(torch.nn.Embedding(vocab, dim), *[Block() for _ in range(blocks)]).to("cuda")
with torch.no_grad():
    model[0].weight.copy_(t.sample((vocab, dim)).to("cuda"))
torch.cuda.synchronize()
start = time.perf_counter()
details = ww.WeightWatcher(model=model).analyze()
print(json.dumps({"seconds": time.perf_counter() - start, "layers": int(len(details))}))
"""


def llama_params(blocks: int, scale: int, dtype, seed: int = 0) -> dict:
    """The synthetic weights in Flax layout (``(in, out)`` kernels), drawn on the default device."""
    dim, mlp, vocab = DIM // scale, MLP_DIM // scale, VOCAB // scale
    keys = iter(jax.random.split(jax.random.key(seed), 8 * blocks + 1))
    draw = jax.jit(lambda key, shape, fan_in: (jax.random.t(key, 3.0, shape) / fan_in**0.5).astype(dtype),
                   static_argnums=(1, 2))
    params = {"embed_tokens": {"embedding": draw(next(keys), (vocab, dim), 1)}}
    for b in range(blocks):
        block = {name: {"kernel": draw(next(keys), (dim, dim), dim)} for name in ATTENTION}
        block["gate_proj"] = {"kernel": draw(next(keys), (dim, mlp), dim)}
        block["up_proj"] = {"kernel": draw(next(keys), (dim, mlp), dim)}
        block["down_proj"] = {"kernel": draw(next(keys), (mlp, dim), mlp)}
        params[f"layers_{b}"] = block
    return jax.block_until_ready(params)


def bare_eigensolve(params: dict, repeats: int) -> float:
    """Sum over shapes of the median time of a jitted ``eigvalsh(WᵀW)`` on matrices stacked beforehand."""
    by_shape: dict[tuple, list] = {}
    for leaf in jax.tree.leaves(params):
        w = leaf.T if leaf.shape[0] < leaf.shape[1] else leaf
        by_shape.setdefault(w.shape, []).append(w)
    solve = jax.jit(lambda s: jnp.linalg.eigvalsh(
        jnp.einsum("bnm,bnk->bmk", s, s, precision=jax.lax.Precision.HIGHEST)))
    total = 0.0
    for mats in by_shape.values():
        stack = jax.block_until_ready(jnp.stack(mats).astype(jnp.float32))
        jax.block_until_ready(solve(stack))
        total += median_seconds(lambda: solve(stack), repeats)
        del stack
    return total


def median_seconds(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn())
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def peak_bytes() -> int | None:
    stats = jax.devices()[0].memory_stats() or {}
    return stats.get("peak_bytes_in_use")


def weightwatcher_seconds(python: str, blocks: int, scale: int) -> dict:
    args = [str(d // scale) for d in (DIM, MLP_DIM, VOCAB)] + [str(blocks)]
    done = subprocess.run([python, "-c", WW_CHILD, *args], capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--blocks", type=int, default=32)
    parser.add_argument("--scale", type=int, default=1, help="divide every dimension by this")
    parser.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--max-bucket-bytes", type=float, default=8e9, help="wwjax's max_bucket_bytes (0: no limit)")
    parser.add_argument("--ww-python", help="interpreter with weightwatcher and CUDA torch")
    parser.add_argument("--json", help="write the figures here")
    args = parser.parse_args()

    device = jax.devices()[0]
    print(f"jax {jax.__version__}, backend {jax.default_backend()}, device {device.device_kind}", flush=True)
    params = llama_params(args.blocks, args.scale, jnp.dtype(args.dtype))
    count = sum(x.size for x in jax.tree.leaves(params))
    print(f"{count / 1e6:.0f}M parameters in {len(jax.tree.leaves(params))} matrices ({args.dtype})", flush=True)

    budget = int(args.max_bucket_bytes) or None
    analyze = lambda: wwjax.analyze(params, max_bucket_bytes=budget)  # noqa: E731
    with wwjax.count_compilations() as compiled:
        start = time.perf_counter()
        result = jax.block_until_ready(analyze())
        cold = time.perf_counter() - start
    warm = median_seconds(analyze, args.repeats)
    table = wwjax.details(result)
    figures = {
        "wwjax_cold_s": cold,
        "wwjax_warm_s": warm,
        "compilations": compiled.count,
        "compile_s": compiled.seconds,
        "analysed": int((table.status == "success").sum()),
        "mean_alpha": float(table.alpha.mean()),
        "peak_device_bytes_wwjax": peak_bytes(),
    }
    figures["bare_eigensolve_s"] = bare_eigensolve(params, args.repeats)
    if args.ww_python:
        del params, result
        figures["weightwatcher"] = weightwatcher_seconds(args.ww_python, args.blocks, args.scale)

    bare, ww = figures["bare_eigensolve_s"], figures.get("weightwatcher", {}).get("seconds")
    print(f"wwjax cold            {cold:8.2f} s  ({compiled.count} compilations, {compiled.seconds:.1f} s compiling)")
    print(f"wwjax warm            {warm:8.2f} s")
    print(f"bare eigen-solve warm {bare:8.2f} s")
    print(f"WeightWatcher         {ww:8.2f} s" if ww else "WeightWatcher              n/a (pass --ww-python)")
    print(f"wwjax warm / bare     {warm / bare:8.2f}   (goal <= 1.3)")
    if ww:
        print(f"WW / wwjax warm       {ww / warm:8.2f}   (goal >= 10)")
    if figures["peak_device_bytes_wwjax"]:
        print(f"peak device memory    {figures['peak_device_bytes_wwjax'] / 2**30:8.2f} GiB")
    print(f"layers analysed {figures['analysed']}, mean alpha {figures['mean_alpha']:.3f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(dict(figures, args=vars(args), jax=jax.__version__, device=device.device_kind), f, indent=2)


if __name__ == "__main__":
    sys.exit(main())
