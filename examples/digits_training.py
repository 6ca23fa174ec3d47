"""Shared by the experiments: a Flax MLP on scikit-learn's digits, trained with optax the way users write it.

``train_mlp`` trains one model for a fixed number of epochs (so a smaller batch takes more, noisier steps, as in
the batch-size experiments of Martin & Mahoney) and returns its parameters and accuracies; ``model_metrics``
analyses the parameters with wwjax and adds the test accuracy. Needs scikit-learn (the ``examples`` extra).
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import linen as nn
from scipy import stats

import wwjax
from wwjax.demo import load_digits


class MLP(nn.Module):
    """``depth`` hidden Dense layers of ``width`` units with ReLU, then a 10-way classifier."""

    depth: int = 2
    width: int = 256

    @nn.compact
    def __call__(self, x):
        x = x.reshape(x.shape[0], -1)
        for _ in range(self.depth):
            x = nn.relu(nn.Dense(self.width)(x))
        return nn.Dense(10)(x)


@dataclasses.dataclass(frozen=True)
class RunConfig:
    """One training run's hyper-parameters."""

    depth: int = 2
    width: int = 256
    batch_size: int = 32
    weight_decay: float = 0.0
    learning_rate: float = 0.05
    epochs: int = 30
    seed: int = 0


def sgd_with_weight_decay(learning_rate: float, weight_decay: float) -> optax.GradientTransformation:
    """SGD with momentum 0.9 and decoupled weight decay."""
    return optax.chain(optax.add_decayed_weights(weight_decay), optax.sgd(learning_rate, momentum=0.9))


@functools.lru_cache(maxsize=None)
def _trainer(depth: int, width: int):
    """The model, optimiser and jitted steps for one architecture. The hyper-parameters live in the optimiser
    state (``optax.inject_hyperparams``), so every run of an architecture reuses the same compiled step."""
    model = MLP(depth=depth, width=width)
    tx = optax.inject_hyperparams(sgd_with_weight_decay)(learning_rate=0.0, weight_decay=0.0)

    @jax.jit
    def train_step(params, opt_state, x, y):
        def loss_fn(p):
            logits = model.apply({"params": p}, x)
            return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

        grads = jax.grad(loss_fn)(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state

    @jax.jit
    def accuracy(params, x, y):
        return jnp.mean(jnp.argmax(model.apply({"params": params}, x), -1) == y)

    return model, tx, train_step, accuracy


def train_mlp(config: RunConfig, data=None):
    """Trains :class:`MLP` with SGD (momentum 0.9) and decoupled weight decay; returns ``(params, train_acc, test_acc)``."""
    (x_train, y_train), (x_test, y_test) = data if data is not None else load_digits(0)
    model, tx, train_step, accuracy = _trainer(config.depth, config.width)
    params = model.init(jax.random.key(config.seed), x_train[:1])["params"]
    opt_state = tx.init(params)
    opt_state.hyperparams["learning_rate"] = jnp.asarray(config.learning_rate, jnp.float32)
    opt_state.hyperparams["weight_decay"] = jnp.asarray(config.weight_decay, jnp.float32)

    rng = np.random.default_rng(config.seed)
    steps_per_epoch = len(x_train) // config.batch_size
    for _ in range(config.epochs):
        order = rng.permutation(len(x_train))
        for s in range(steps_per_epoch):
            batch = order[s * config.batch_size : (s + 1) * config.batch_size]
            params, opt_state = train_step(params, opt_state, x_train[batch], y_train[batch])
    return params, float(accuracy(params, x_train, y_train)), float(accuracy(params, x_test, y_test))


def model_metrics(params) -> dict:
    """wwjax's summary of a model (the mean over its layers of each metric), as WeightWatcher's ``get_summary``."""
    return wwjax.summary(wwjax.analyze(params))


def spearman(x, y) -> float:
    """Spearman's rank correlation, NaN when either side is constant."""
    x, y = np.asarray(x, float), np.asarray(y, float)
    if len(x) < 2 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return float("nan")
    return float(stats.spearmanr(x, y).statistic)
