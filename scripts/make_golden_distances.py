"""Generate the golden fixtures for ``wwjax.distances``: WeightWatcher 0.7.7's own ``distances`` numbers.

A small PyTorch model (two Linear layers, one wide and one tall, two Conv2d layers, one with out < in, and an
Embedding) is built twice: ``model_a`` from a fixed seed and ``model_b`` = ``model_a`` plus fixed Gaussian noise,
so that every distance and similarity is far from its trivial value. WeightWatcher compares them with
``method='raw'``, ``'euclidean'`` and ``'cka'``.

What it writes, under ``tests/golden/``:

* ``distances_weights.npz``: the two state dicts in PyTorch layout, keyed ``a/<name>`` and ``b/<name>``;
* ``ww_distances.csv``: one row per (method, layer): WeightWatcher's ``longname``, ``delta_W``, ``delta_b``, ``M``,
  ``N``; floats written with ``%.17g``.

Run from the repository root with the oracle environment (see ``scripts/make_golden.py``)::

    ww-oracle/bin/python scripts/make_golden_distances.py
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import weightwatcher as ww

OUT = Path(__file__).resolve().parent.parent / "tests" / "golden"
SEED = 1234
METHODS = ("raw", "euclidean", "cka")


class Net(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = torch.nn.Embedding(50, 12)
        self.conv1 = torch.nn.Conv2d(4, 16, 3)  # out > in
        self.conv2 = torch.nn.Conv2d(16, 6, 3)  # out < in: WeightWatcher transposes each slice
        self.fc1 = torch.nn.Linear(24, 40)  # (out, in) tall
        self.fc2 = torch.nn.Linear(40, 10)  # (out, in) wide


def main() -> None:
    logging.getLogger("weightwatcher").setLevel(logging.ERROR)
    torch.manual_seed(SEED)
    model_a = Net()
    model_b = Net()
    generator = torch.Generator().manual_seed(SEED + 1)
    with torch.no_grad():
        for (name, pa), pb in zip(model_a.named_parameters(), model_b.parameters()):
            pb.copy_(pa + 0.5 * pa.std() * torch.randn(pa.shape, generator=generator))

    watcher = ww.WeightWatcher()
    frames = []
    for method in METHODS:
        _, _, df = watcher.distances(model_a, model_b, method=method)
        df = df.reset_index()
        frames.append(df[["method", "longname", "delta_W", "delta_b", "M", "N"]])
    table = pd.concat(frames, ignore_index=True)
    table.to_csv(OUT / "ww_distances.csv", index=False, float_format="%.17g")

    arrays = {f"a/{k}": v.detach().numpy() for k, v in model_a.state_dict().items()}
    arrays |= {f"b/{k}": v.detach().numpy() for k, v in model_b.state_dict().items()}
    np.savez(OUT / "distances_weights.npz", **arrays)
    print(table.to_string())


if __name__ == "__main__":
    main()
