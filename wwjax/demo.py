"""The built-in example: train a small Flax CNN on scikit-learn's digits for a few seconds, then analyse it.

Run it with ``python -m wwjax.demo`` (needs the ``examples`` extra for scikit-learn). It prints the per-layer table
and the summary, as WeightWatcher users know them, and the test accuracy the metrics are meant to track.
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pandas as pd
from flax import linen as nn

import wwjax


class DigitsCNN(nn.Module):
    """A small CNN for 8×8 digits: two 3×3 convolutions, a hidden dense layer and a classifier."""

    @nn.compact
    def __call__(self, x):
        x = nn.relu(nn.Conv(32, (3, 3))(x))
        x = nn.relu(nn.Conv(64, (3, 3))(x))
        x = nn.max_pool(x, (2, 2), strides=(2, 2)).reshape(x.shape[0], -1)
        x = nn.relu(nn.Dense(128)(x))
        return nn.Dense(10)(x)


def load_digits(seed: int = 0):
    """scikit-learn's digits (1,797 8×8 images, shipped with the package), split 75/25."""
    from sklearn.datasets import load_digits as sklearn_digits

    data = sklearn_digits()
    images = (data.images / 16.0).astype(np.float32)[..., None]
    order = np.random.default_rng(seed).permutation(len(images))
    cut = int(0.75 * len(images))
    train, test = order[:cut], order[cut:]
    return (images[train], data.target[train]), (images[test], data.target[test])


def train(steps: int = 300, batch_size: int = 64, seed: int = 0, learning_rate: float = 1e-3):
    """Trains :class:`DigitsCNN` with Adam; returns the params and the test accuracy."""
    (x_train, y_train), (x_test, y_test) = load_digits(seed)
    model = DigitsCNN()
    params = model.init(jax.random.key(seed), x_train[:1])["params"]
    tx = optax.adam(learning_rate)
    opt_state = tx.init(params)

    @jax.jit
    def step(params, opt_state, x, y):
        def loss_fn(p):
            logits = model.apply({"params": p}, x)
            return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

        grads = jax.grad(loss_fn)(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state

    rng = np.random.default_rng(seed)
    for _ in range(steps):
        batch = rng.integers(0, len(x_train), batch_size)
        params, opt_state = step(params, opt_state, x_train[batch], y_train[batch])
    logits = model.apply({"params": params}, x_test)
    accuracy = float(jnp.mean(jnp.argmax(logits, -1) == y_test))
    return params, accuracy


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=300, help="training steps (default 300)")
    args = parser.parse_args(argv)

    start = time.perf_counter()
    params, accuracy = train(args.steps)
    trained = time.perf_counter()
    result = wwjax.analyze(params)
    table = wwjax.details(result)
    analysed = time.perf_counter()

    columns = ["path", "layer_type", "N", "M", "rf", "num_evals", "alpha", "alpha_weighted", "log_spectral_norm",
               "stable_rank", "status", "warning", "reason"]
    with pd.option_context("display.width", 200, "display.max_columns", 20, "display.precision", 3):
        print(table[columns].to_string(index=False))
    print("\nsummary:", {k: round(v, 4) for k, v in wwjax.summary(result).items()})
    print(f"\ntest accuracy {accuracy:.3f}; trained in {trained - start:.1f} s, analysed in {analysed - trained:.1f} s")


if __name__ == "__main__":
    main()
