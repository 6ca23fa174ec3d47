"""Runs one analysis in its own process, for the mesh and multi-host tests (the device count is fixed at start-up).

    python tests/scale_worker.py single OUT.csv WEIGHTS.npz
    python tests/scale_worker.py mesh OUT.csv WEIGHTS.npz DEVICES
    python tests/scale_worker.py multihost OUT.csv WEIGHTS.npz PROCESS_ID NUM_PROCESSES PORT DEVICES_PER_PROCESS

``mesh`` analyses on a mesh of DEVICES simulated CPU devices, twice: eagerly with ``mesh=`` and under ``jax.jit`` with
the params already sharded over the mesh; it writes the first table and checks the second against it, and writes the
compiled eigen-solve's per-device batch size to OUT.csv.hlo. ``multihost`` joins a ``jax.distributed`` run on
localhost: each process builds its shards of every weight from the file (reading only the rows its devices hold), and
every process writes the table it gets.
"""

from __future__ import annotations

import functools
import os
import re
import sys

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


def main(argv):
    mode, out_csv, weights = argv[:3]
    if mode == "mesh":
        os.environ["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={argv[3]}"
    import jax

    jax.config.update("jax_enable_x64", True)
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
    jax.distributed.shutdown()


if __name__ == "__main__":
    main(sys.argv[1:])
