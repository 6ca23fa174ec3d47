"""Train one small CNN on scikit-learn's digits four ways and compare what their weights look like.

    pip install scikit-learn          # the 8x8 digits ship with it: nothing is downloaded
    python examples/train_digits_spectral.py [--epochs 8] [--penalty-rate 3.0]

The four ways, same architecture, same initial weights, same batches:

* ``plain``: Conv-ReLU-Conv-ReLU-pool-Dense-ReLU-Dense, Adam;
* ``penalty``: the same with Yoshida & Miyato's spectral norm penalty, decoupled (``wwjax.add_spectral_penalty``
  between Adam's scaling and the learning rate, like AdamW's weight decay; one power iteration per step);
* ``msn``: every hidden layer a Mean Spectral Normalization layer (``wwjax.nn.linen.MSNConv`` / ``MSNDense``);
* ``batchnorm``: a ``nn.BatchNorm`` after every hidden layer.

For each: test accuracy, and ``wwjax``'s mean α and mean log10 spectral norm (λmax of WᵀW) of the hidden layers'
*effective* weights, the linear map the trained network applies: the kernel as is for ``plain``/``penalty``,
``W/σ·diag(γ)`` for MSN, ``W·diag(γ/√(var+ε))`` for BatchNorm (normalisation layers make the raw kernel's scale
meaningless). α is tracked during training inside the jitted step by ``wwjax.monitor_spectra``.
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import linen as nn

import wwjax
import wwjax.nn

VARIANTS = ("plain", "penalty", "msn", "batchnorm")
HIDDEN = ("conv_0", "conv_1", "dense_0")


class DigitsCNN(nn.Module):
    """Two 3x3 convolutions and a hidden dense layer; ``norm`` picks the variant's hidden layers."""

    norm: str = "plain"

    @nn.compact
    def __call__(self, x, train: bool):
        def hidden(name, features, conv: bool):
            def layer(x):
                if self.norm == "msn":
                    if conv:
                        return wwjax.nn.linen.MSNConv(features, (3, 3), momentum=0.9, name=name)(x, not train)
                    return wwjax.nn.linen.MSNDense(features, momentum=0.9, name=name)(x, not train)
                use_bias = self.norm != "batchnorm"  # BatchNorm's own bias replaces it
                y = nn.Conv(features, (3, 3), use_bias=use_bias, name=name)(x) if conv else nn.Dense(
                    features, use_bias=use_bias, name=name)(x)
                if self.norm == "batchnorm":
                    y = nn.BatchNorm(use_running_average=not train, momentum=0.9, name=f"{name}_bn")(y)
                return y

            return layer

        x = nn.relu(hidden("conv_0", 16, True)(x))
        x = nn.relu(hidden("conv_1", 32, True)(x))
        x = nn.avg_pool(x, (2, 2), (2, 2)).reshape(x.shape[0], -1)
        x = nn.relu(hidden("dense_0", 64, False)(x))
        return nn.Dense(10, name="head")(x)


def load_digits(seed: int = 0):
    """The 1797 scikit-learn digits as (N, 8, 8, 1) float32 in [0, 1], split 80/20."""
    from sklearn.datasets import load_digits as sk_load_digits

    data = sk_load_digits()
    x = (data.images / 16.0).astype(np.float32)[..., None]
    y = data.target.astype(np.int32)
    order = np.random.default_rng(seed).permutation(len(y))
    cut = int(0.8 * len(y))
    return (x[order[:cut]], y[order[:cut]]), (x[order[cut:]], y[order[cut:]])


def optimizer(variant: str, learning_rate: float, penalty_rate: float, monitor_every: int):
    monitor = wwjax.monitor_spectra(every=monitor_every, layers=[f"*{name}*" for name in HIDDEN])
    if variant == "penalty":
        return optax.chain(
            optax.scale_by_adam(),
            wwjax.add_spectral_penalty(penalty_rate, layers=[f"*{name}*" for name in HIDDEN]),
            optax.scale_by_learning_rate(learning_rate),
            monitor,
        )
    return optax.chain(optax.adam(learning_rate), monitor)


def effective_weights(variant: str, variables) -> dict:
    """The hidden layers' kernels as the trained network applies them (see the module docstring)."""
    params, stats = variables["params"], variables.get("batch_stats", {})
    weights = {}
    for name in HIDDEN:
        kernel = params[name]["kernel"]
        if variant == "msn":
            kernel = kernel / stats[name]["sigma"] * params[name]["scale"]
        elif variant == "batchnorm":
            bn, bn_stats = params[f"{name}_bn"], stats[f"{name}_bn"]
            kernel = kernel * bn["scale"] / jnp.sqrt(bn_stats["var"] + 1e-5)
        weights[name] = {"kernel": kernel}
    return weights


def train(variant: str, epochs: int, *, batch_size: int = 64, learning_rate: float = 3e-3,
          penalty_rate: float = 3.0, seed: int = 0, data=None, monitor_every: int = 22) -> dict:
    """Trains one variant; returns its test accuracy, mean α, mean log spectral norm and the α trace."""
    (x_train, y_train), (x_test, y_test) = data if data is not None else load_digits(seed)
    model = DigitsCNN(norm=variant)
    variables = model.init(jax.random.key(seed), jnp.asarray(x_train[:batch_size]), train=False)
    params, stats = variables["params"], variables.get("batch_stats", {})
    tx = optimizer(variant, learning_rate, penalty_rate, monitor_every)
    opt_state = tx.init(params)

    @jax.jit
    def step(params, stats, opt_state, xb, yb):
        def loss_fn(p):
            logits, updates = model.apply({"params": p, "batch_stats": stats}, xb, train=True,
                                          mutable=["batch_stats"])
            loss = optax.softmax_cross_entropy_with_integer_labels(logits, yb).mean()
            return loss, updates.get("batch_stats", {})

        (loss, stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), stats, opt_state, loss

    rng = np.random.default_rng(seed)
    steps_per_epoch = len(y_train) // batch_size
    alpha_trace = []
    start = time.perf_counter()
    for _ in range(epochs):
        order = rng.permutation(len(y_train))
        for i in range(steps_per_epoch):
            batch = order[i * batch_size : (i + 1) * batch_size]
            params, stats, opt_state, loss = step(params, stats, opt_state, x_train[batch], y_train[batch])
        alpha_trace.append(float(optax.tree.get(opt_state, "metrics").mean_alpha))
    seconds = time.perf_counter() - start

    variables = {"params": params, "batch_stats": stats}
    logits = model.apply(variables, jnp.asarray(x_test), train=False)
    accuracy = float(jnp.mean(jnp.argmax(logits, -1) == y_test))
    summary = wwjax.summary(wwjax.analyze(effective_weights(variant, variables)))
    return {
        "variant": variant,
        "test_accuracy": accuracy,
        "mean_alpha": summary["alpha"],
        "mean_log_spectral_norm": summary["log_spectral_norm"],
        "alpha_trace": alpha_trace,
        "train_seconds": seconds,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--penalty-rate", type=float, default=3.0)
    args = parser.parse_args()
    data = load_digits()
    print(f"{'variant':<10} {'test acc':>8} {'mean α':>7} {'mean log10 λmax':>15} {'train s':>8}  α by epoch")
    for variant in VARIANTS:
        r = train(variant, args.epochs, penalty_rate=args.penalty_rate, data=data)
        trace = " ".join(f"{a:.2f}" for a in r["alpha_trace"][:: max(1, len(r["alpha_trace"]) // 6)])
        print(f"{variant:<10} {r['test_accuracy']:>8.3f} {r['mean_alpha']:>7.2f} "
              f"{r['mean_log_spectral_norm']:>15.3f} {r['train_seconds']:>8.1f}  {trace}")


if __name__ == "__main__":
    main()
