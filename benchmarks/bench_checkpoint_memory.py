"""Peak memory of ``wwjax.scan_checkpoints`` on a run whose checkpoints together far exceed the memory allowed.

A CheckpointManager run is written with ``--steps`` steps; each holds ``--layers`` dense kernels of
``--rows``×``--cols`` float32 (the params) and Adam's two moments of the same size (the optimizer state), so a
step is 3× its weights on disk. Then, each in a fresh process (so that peaks do not mix):

* ``scan``: ``wwjax.scan_checkpoints(run, init_step=0, bucket_bytes=--bucket-mb MiB)``;
* ``restore``: what a scan without wwjax's bucketing costs per step: Orbax restores the whole step (params and
  optimizer state) and the params are analysed.

Each process reports its resident set before the work (after imports and a warm-up analysis, so that XLA's own
allocations are in the baseline) and its peak (``ru_maxrss``); the table prints the peak growth next to the sizes.

    python benchmarks/bench_checkpoint_memory.py                 # 4 steps × 192 MiB on disk, 16 MiB buckets
    python benchmarks/bench_checkpoint_memory.py --steps 8 --layers 8
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import resource
import subprocess
import sys
import tempfile
import time

MIB = 1 << 20


def _rss_mib() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def _peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # kilobytes on Linux


def write_run(directory: pathlib.Path, steps: int, layers: int, rows: int, cols: int) -> None:
    import numpy as np
    import orbax.checkpoint as ocp

    rng = np.random.default_rng(0)
    with ocp.CheckpointManager(directory) as manager:
        for step in range(steps):
            params = {f"Dense_{i}": {"kernel": rng.standard_normal((rows, cols), dtype=np.float32)}
                      for i in range(layers)}
            opt_state = {"mu": params, "nu": params}  # Adam's moments: the same shapes as the params
            manager.save(step, args=ocp.args.StandardSave({"params": params, "opt_state": opt_state, "step": step}))
            manager.wait_until_finished()


def measure(mode: str, directory: str, bucket_mib: int, rows: int, cols: int) -> dict:
    import numpy as np

    import wwjax

    # Warm-up on one kernel of the run's shape: XLA's runtime and compiled programs join the baseline.
    kernel = {"w": {"kernel": np.random.default_rng(1).standard_normal((rows, cols), dtype=np.float32)}}
    wwjax.details(wwjax.analyze(kernel))
    wwjax.distances(kernel, kernel, method="euclidean")
    del kernel
    baseline = _rss_mib()
    start = time.perf_counter()
    if mode == "scan":
        scan = wwjax.scan_checkpoints(directory, init_step=0, bucket_bytes=bucket_mib * MIB, progress=False)
        ok = bool((scan.summary.status == "success").all())
    else:
        import orbax.checkpoint as ocp

        ok = True
        for step in sorted(int(p.name) for p in pathlib.Path(directory).iterdir() if p.name.isdigit()):
            with ocp.StandardCheckpointer() as checkpointer:
                state = checkpointer.restore(pathlib.Path(directory) / str(step) / "default")
            wwjax.details(wwjax.analyze({"params": state["params"]}))
            del state
    return dict(mode=mode, ok=ok, baseline_mib=baseline, peak_mib=_peak_mib(), seconds=time.perf_counter() - start)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--rows", type=int, default=4096)
    parser.add_argument("--cols", type=int, default=1024)
    parser.add_argument("--bucket-mb", type=int, default=16, help="bucket_bytes of the scan, in MiB")
    parser.add_argument("--dir", help="where to write the run (default: a temporary directory)")
    parser.add_argument("--measure", nargs=2, metavar=("MODE", "DIR"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.measure:
        print(json.dumps(measure(args.measure[0], args.measure[1], args.bucket_mb, args.rows, args.cols)))
        return

    weights_mib = args.layers * args.rows * args.cols * 4 / MIB
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        run = pathlib.Path(tmp) / "run"
        write_run(run, args.steps, args.layers, args.rows, args.cols)
        disk_mib = sum(f.stat().st_size for f in run.rglob("*") if f.is_file()) / MIB
        results = []
        for mode in ("scan", "restore"):
            out = subprocess.run([sys.executable, __file__, "--bucket-mb", str(args.bucket_mb), "--rows",
                                  str(args.rows), "--cols", str(args.cols), "--measure", mode, str(run)],
                                 capture_output=True, text=True, env=dict(os.environ), check=True)
            results.append(json.loads(out.stdout.strip().splitlines()[-1]))

    print(f"run: {args.steps} steps × ({args.layers} kernels {args.rows}×{args.cols} float32 + Adam moments)")
    print(f"  weights per step {weights_mib:.0f} MiB, a step on disk {disk_mib / args.steps:.0f} MiB, "
          f"the run on disk {disk_mib:.0f} MiB; scan bucket_bytes = {args.bucket_mb} MiB")
    print(f"{'mode':<8} {'baseline MiB':>12} {'peak MiB':>9} {'growth MiB':>10} {'growth / run':>12} {'s':>6}")
    for r in results:
        growth = r["peak_mib"] - r["baseline_mib"]
        print(f"{r['mode']:<8} {r['baseline_mib']:>12.0f} {r['peak_mib']:>9.0f} {growth:>10.0f} "
              f"{growth / disk_mib:>12.2f} {r['seconds']:>6.1f}" + ("" if r["ok"] else "  (a step failed)"))


if __name__ == "__main__":
    main()
