"""Runs one analysis in its own process, for the mesh and multi-host tests (the device count is fixed at start-up).

    python tests/core/scale_worker.py single OUT.csv WEIGHTS.npz
    python tests/core/scale_worker.py mesh OUT.csv WEIGHTS.npz DEVICES
    python tests/core/scale_worker.py multihost OUT.csv WEIGHTS.npz PROCESS_ID NUM_PROCESSES PORT DEVICES_PER_PROCESS [f32|f64] [RUN_DIR]
    python tests/core/scale_worker.py battery OUT.json DEVICES CASES_JSON

``mesh`` analyses on a mesh of DEVICES simulated CPU devices, twice: eagerly with ``mesh=`` and under ``jax.jit`` with
the params already sharded over the mesh; it writes the first table and checks the second against it, and writes the
compiled eigen-solve's per-device batch size to OUT.csv.hlo. ``multihost`` joins a ``jax.distributed`` run on
localhost: each process builds its shards of every weight from the file (reading only the rows its devices hold), and
every process writes the table it gets; with RUN_DIR (an Orbax run) it also scans it with ``scan_checkpoints`` over
the mesh (each process restoring only its shards) and writes the details to OUT.csv.scan.csv. ``battery`` runs each
case of CASES_JSON (``{"dtype": "f32"|"f64", "layers": n, "options": {...}}``) on a mesh of DEVICES simulated
devices, eagerly and jitted on params sharded over the mesh, and writes each table's worst relative deviation from
the single-device table (and the seconds taken) to OUT.json.
"""

from __future__ import annotations

import functools
import json
import os
import re
import sys
import time

import numpy as np


def _load(path):
    with np.load(path) as data:
        return {key: data[key] for key in data.files}


def _nest(flat):
    tree = {}
    for key, value in flat.items():
        node = tree
        *parents, leaf = key.split("/")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    return tree


def _sharded(flat, mesh):
    """Global arrays sharded on their first axis over every device of ``mesh`` (replicated when it does not divide);
    each process reads only the rows of its own devices."""
    import jax
    from jax.sharding import NamedSharding
    from jax.sharding import PartitionSpec as P

    out = {}
    for key, value in flat.items():
        divisible = value.ndim >= 2 and value.shape[0] % mesh.size == 0
        spec = P(tuple(mesh.axis_names)) if divisible else P()
        sharding = NamedSharding(mesh, spec)
        out[key] = jax.make_array_from_callback(value.shape, sharding, lambda index, v=value: np.asarray(v[index]))
    return _nest(out)


def battery_params(num_layers: int, seed: int = 0) -> tuple[dict, dict]:
    """A model of ``num_layers`` leaves cycling through dense (Student-t), conv, embedding, stacked (scan) and
    attention kernels (several share a shape, so buckets are batches), and the analyze options it needs."""
    rng = np.random.default_rng(seed)

    def heavy(shape):
        return (rng.standard_t(3, size=shape) / np.sqrt(shape[-2])).astype(np.float32)

    makers = [
        lambda i: (f"Dense_{i}/kernel", heavy((96, 48))),
        lambda i: (f"Conv_{i}/kernel", heavy((3, 3, 8, 16))),
        lambda i: (f"Embed_{i}/embedding", heavy((160, 32))),
        lambda i: (f"Scan_{i}/kernel", heavy((3, 64, 32))),
        lambda i: (f"Attention_{i}/query/kernel", heavy((64, 4, 8))),
    ]
    flat = dict(makers[i % len(makers)](i) for i in range(num_layers))
    return flat, {"stacked": "Scan_*"}


def _deviation(got, want) -> float:
    """The largest relative difference between two tables' numeric columns (NaN where both are NaN counts as 0)."""
    import pandas as pd

    assert list(got.path) == list(want.path) and list(got.status) == list(want.status), "rows differ"
    numeric = [c for c in want.columns if pd.api.types.is_numeric_dtype(want[c])]
    a, b = got[numeric].to_numpy(float), want[numeric].to_numpy(float)
    assert (np.isnan(a) == np.isnan(b)).all(), "NaN pattern differs"
    a, b = np.nan_to_num(a), np.nan_to_num(b)
    return float(np.max(np.abs(a - b) / np.maximum(np.abs(b), 1e-30), initial=0.0))


def run_battery(devices: int, cases: list[dict]) -> list[dict]:
    import jax
    import wwjax

    mesh = jax.make_mesh((devices,), ("batch",))
    # Params sharded over Explicit axes cannot be reshaped into matrices under jit (JAX asks for an out_sharding):
    # the jitted runs shard them over the same devices with Auto axes.
    auto = jax.make_mesh((devices,), ("batch",), axis_types=(jax.sharding.AxisType.Auto,))
    out = []
    for case in cases:
        jax.config.update("jax_enable_x64", case["dtype"] == "f64")
        flat, options = battery_params(case["layers"])
        options.update(case.get("options", {}))
        start = time.perf_counter()
        single = wwjax.details(wwjax.analyze(_nest(flat), **options))
        eager = wwjax.details(wwjax.analyze(_nest(flat), mesh=mesh, **options))
        analyze = jax.jit(functools.partial(wwjax.analyze, mesh=mesh, **options))
        jitted = wwjax.details(analyze(_sharded(flat, auto)))
        out.append(dict(case, devices=devices, eager=_deviation(eager, single), jit=_deviation(jitted, single),
                        rows=len(single), seconds=time.perf_counter() - start))
        print(json.dumps(out[-1]), flush=True)
    return out


def main(argv):
    mode, out_csv, weights = argv[:3]
    if mode == "battery":
        os.environ["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={int(weights)}"
        with open(out_csv, "w") as f:
            json.dump(run_battery(int(weights), json.loads(argv[3])), f)
        return
    if mode == "mesh":
        os.environ["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={argv[3]}"
    import jax

    jax.config.update("jax_enable_x64", mode != "multihost" or len(argv) < 8 or argv[7] == "f64")
    if mode == "multihost":
        process_id, num_processes, port, per_process = map(int, argv[3:7])
        jax.config.update("jax_num_cpu_devices", per_process)
        jax.distributed.initialize(
            coordinator_address=f"localhost:{port}", num_processes=num_processes, process_id=process_id
        )
    import wwjax

    flat = _load(weights)
    if mode == "single":
        wwjax.details(wwjax.analyze(_nest(flat))).to_csv(out_csv, index=False)
        return
    mesh = jax.make_mesh((len(jax.devices()),), ("batch",))
    if mode == "mesh":
        eager = wwjax.details(wwjax.analyze(_nest(flat), mesh=mesh))
        eager.to_csv(out_csv, index=False)
        params = _sharded(flat, mesh)
        analyze = jax.jit(functools.partial(wwjax.analyze, mesh=mesh))
        jitted = wwjax.details(analyze(params))
        numeric = eager.select_dtypes("number").columns
        # Same numbers up to rounding: XLA may fuse a whole jitted analysis differently from its eager programs.
        assert np.allclose(jitted[numeric].fillna(-1).to_numpy(float), eager[numeric].fillna(-1).to_numpy(float),
                           rtol=1e-12, atol=0), "jitted on sharded params differs"
        hlo = analyze.lower(params).compile().as_text()
        # The batched symmetric eigen-solve's operand shapes: the leading (batch) axis is per device.
        batches = sorted({m.group(1) for m in re.finditer(r"f64\[(\d+),\d+,\d+\][^\n]*custom_call_target=\"[^\"]*sy(?:evd|trd)", hlo)})
        with open(out_csv + ".hlo", "w") as f:
            f.write(",".join(batches))
        return
    params = _sharded(flat, mesh)
    result = wwjax.analyze(params, mesh=mesh)
    wwjax.details(result).to_csv(out_csv, index=False)
    if len(argv) > 8:  # an Orbax run: scan it over the mesh, each process restoring its own shards
        scan = wwjax.scan_checkpoints(argv[8], mesh=mesh, progress=False)
        scan.details.to_csv(out_csv + ".scan.csv", index=False)
    jax.distributed.shutdown()


if __name__ == "__main__":
    main(sys.argv[1:])
