"""The aspect-ratio bias of α and its removal by FARMS, measured.

Part 1: i.i.d. Gaussian and Student-t(3) matrices ``(Q·M) × M`` for ``Q = 1, 2, 4, 8, 16``, several ``M`` and seeds:
the mean α of the plain ESD and of the FARMS ESD, per Q, and the spread (max − min) of the mean α across Q. Two
estimators on each ESD: the engine's fit (WeightWatcher's KS scan over xmin, what ``wwjax.analyze`` reports) and
Hill's estimator with xmin at the median eigenvalue (the estimator of the FARMS reference code's image runs).

Part 2: a small MLP on scikit-learn's digits (layers of aspect ratios 1 to 16), at initialisation and after
training: α per layer, plain and FARMS, and the Spearman correlation of α with Q across the layers.

    python benchmarks/bench_farms.py [--sizes 64 128 256] [--seeds 3] [--figure docs/img/farms_bias.png]

Options of FARMS: ``--window-size`` (default 100), ``--windows-per-dim`` (9), square windows.
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np

from wwjax.core._layout import MatrixView
from wwjax.core._powerlaw import fit_power_law
from wwjax.core._spectra import rank_tolerance, slice_spectra
from wwjax.diagnostics._farms import farms_spectra, farms_windows

RATIOS = (1, 2, 4, 8, 16)
DENSE = MatrixView((0,), (1,))


def plain_esd(w: np.ndarray) -> np.ndarray:
    mat = jnp.asarray(w if w.shape[0] >= w.shape[1] else w.T)
    return np.asarray(slice_spectra(mat[None], method="svd").evals[0])


def ks_alpha(esd: np.ndarray, rows: int, cols: int) -> float:
    """α by the engine's fit (WeightWatcher's KS scan over xmin), as ``wwjax.analyze`` reports it."""
    return float(_fit(jnp.asarray(esd), rank_tolerance("svd", rows, cols, esd.dtype)).alpha)


def median_hill_alpha(esd: np.ndarray) -> float:
    """Hill's α with xmin at the median eigenvalue: the estimator of the FARMS reference code in its image
    classification runs (TempBalance's ``xmin_mid``, ``xmin_pos=2``), transcribed."""
    esd = np.sort(np.asarray(esd, np.float64))
    i = len(esd) // 2
    n = len(esd) - i
    return float(1.0 + n / (np.sum(np.log(esd[i:])) - n * np.log(esd[i])))


def alphas(w: np.ndarray, farms_options) -> dict:
    """{(esd, estimator): α} for the plain and the FARMS ESD of ``w``, each fitted by both estimators."""
    n, m = max(w.shape), min(w.shape)
    esd = plain_esd(w)
    plan = farms_windows(n, m, **farms_options)
    pooled = np.asarray(farms_spectra(w, DENSE, **farms_options)[0])
    return {
        ("plain", "ks"): ks_alpha(esd, n, m),
        ("plain", "median"): median_hill_alpha(esd),
        ("FARMS", "ks"): ks_alpha(pooled, plan.rows, plan.cols),
        ("FARMS", "median"): median_hill_alpha(pooled),
    }


@jax.jit
def _fit(evals, tol):
    return fit_power_law(evals, 0, evals[-1] * tol)


def random_matrix(rng: np.random.Generator, kind: str, n: int, m: int) -> np.ndarray:
    entries = rng.standard_normal((n, m)) if kind == "gaussian" else rng.standard_t(3.0, size=(n, m))
    return (entries / np.sqrt(n)).astype(np.float32)


KINDS = ("gaussian", "student_t3")
VARIANTS = (("plain", "ks"), ("FARMS", "ks"), ("plain", "median"), ("FARMS", "median"))


def random_matrices(sizes, seeds, farms_options) -> dict:
    """{(kind, M, Q): {(esd, estimator): [α per seed]}}."""
    table = {}
    for kind in KINDS:
        for m in sizes:
            for q in RATIOS:
                cell = {variant: [] for variant in VARIANTS}
                for seed in range(seeds):
                    w = random_matrix(np.random.default_rng(1000 * seed + q), kind, q * m, m)
                    for variant, alpha in alphas(w, farms_options).items():
                        cell[variant].append(alpha)
                table[kind, m, q] = cell
    return table


def print_random_table(table, sizes) -> None:
    print("\n## i.i.d. random matrices: mean α (± std over seeds); ESD plain or FARMS; fit KS scan or median Hill\n")
    print("| entries | ESD, fit | M | " + " | ".join(f"Q={q}" for q in RATIOS) + " | spread of the means |")
    print("|---|---|---|" + "---|" * (len(RATIOS) + 1))
    for variant in VARIANTS:
        for kind in KINDS:
            for m in sizes:
                means = [np.mean(table[kind, m, q][variant]) for q in RATIOS]
                cells = [f"{np.mean(table[kind, m, q][variant]):.2f} ± {np.std(table[kind, m, q][variant]):.2f}"
                         for q in RATIOS]
                print(f"| {kind} | {variant[0]}, {variant[1]} | {m} | " + " | ".join(cells)
                      + f" | {max(means) - min(means):.2f} |")


# ---------------------------------------------------------------------------------------------------------------------
# A trained network

MLP_WIDTHS = (64, 1024, 256, 256, 128, 32)  # layer Q: 16, 4, 1, 2, 4


def init_mlp(key) -> dict:
    params = {}
    for i, (fan_in, fan_out) in enumerate(zip(MLP_WIDTHS[:-1], MLP_WIDTHS[1:])):
        key, sub = jax.random.split(key)
        params[f"dense_{i}"] = {
            "kernel": jax.random.normal(sub, (fan_in, fan_out)) / np.sqrt(fan_in),
            "bias": jnp.zeros(fan_out),
        }
    key, sub = jax.random.split(key)
    params["head"] = {"kernel": jax.random.normal(sub, (MLP_WIDTHS[-1], 10)) / np.sqrt(MLP_WIDTHS[-1]),
                      "bias": jnp.zeros(10)}
    return params


def mlp_logits(params, x):
    for i in range(len(MLP_WIDTHS) - 1):
        x = jax.nn.relu(x @ params[f"dense_{i}"]["kernel"] + params[f"dense_{i}"]["bias"])
    return x @ params["head"]["kernel"] + params["head"]["bias"]


def train_mlp(steps: int, learning_rate: float, seed: int = 0):
    import optax
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = jnp.asarray(digits.data / 16.0, jnp.float32)
    y = jnp.asarray(digits.target)
    params = init_mlp(jax.random.key(seed))
    init = jax.tree.map(lambda a: a, params)
    optimizer = optax.adam(learning_rate)
    state = optimizer.init(params)

    def loss(p, xb, yb):
        return optax.softmax_cross_entropy_with_integer_labels(mlp_logits(p, xb), yb).mean()

    @jax.jit
    def step(p, s, key):
        idx = jax.random.choice(key, x.shape[0], (128,), replace=False)
        grads = jax.grad(loss)(p, x[idx], y[idx])
        updates, s = optimizer.update(grads, s, p)
        return optax.apply_updates(p, updates), s

    key = jax.random.key(seed + 1)
    for _ in range(steps):
        key, sub = jax.random.split(key)
        params, state = step(params, state, sub)
    accuracy = float(jnp.mean(jnp.argmax(mlp_logits(params, x), -1) == y))
    return init, params, accuracy


def spearman(a, b) -> float:
    ra, rb = np.argsort(np.argsort(a)), np.argsort(np.argsort(b))
    return float(np.corrcoef(ra, rb)[0, 1])


def network_table(steps: int, learning_rate: float, farms_options) -> dict:
    init, trained, accuracy = train_mlp(steps, learning_rate)
    rows = {}
    for i in range(len(MLP_WIDTHS) - 1):
        name = f"dense_{i}"
        shape = init[name]["kernel"].shape
        q = max(shape) / min(shape)
        rows[name] = {"shape": shape, "Q": q}
        for stage, params in (("init", init), ("trained", trained)):
            rows[name][stage] = alphas(np.asarray(params[name]["kernel"], np.float32), farms_options)
    print(f"\n## MLP on digits ({steps} Adam steps, lr {learning_rate}): train accuracy {accuracy:.3f}\n")
    print("| layer | shape | Q | " + " | ".join(f"{e}, {f}: init → trained" for e, f in VARIANTS) + " |")
    print("|---|---|---|" + "---|" * len(VARIANTS))
    for name, r in rows.items():
        cells = [f"{r['init'][v]:.2f} → {r['trained'][v]:.2f}" for v in VARIANTS]
        print(f"| {name} | {r['shape'][0]}×{r['shape'][1]} | {r['Q']:g} | " + " | ".join(cells) + " |")
    qs = [r["Q"] for r in rows.values()]
    print()
    for variant in VARIANTS:
        rho = {stage: spearman(qs, [r[stage][variant] for r in rows.values()]) for stage in ("init", "trained")}
        drop = np.mean([r["init"][variant] - r["trained"][variant] for r in rows.values()])
        print(f"{variant[0]:>5}, {variant[1]:>6}: Spearman(α, Q) init {rho['init']:+.2f}, trained "
              f"{rho['trained']:+.2f}; mean α drop with training {drop:+.2f}")
    return rows


def draw(table, sizes, rows, path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    for ax, kind, title in ((axes[0], "gaussian", "Gaussian entries"), (axes[1], "student_t3", "Student-t(3) entries")):
        for m, color in zip(sizes, ("C0", "C1", "C2", "C3")):
            for variant, style in ((("plain", "median"), "--o"), (("FARMS", "median"), "-s")):
                means = [np.mean(table[kind, m, q][variant]) for q in RATIOS]
                ax.plot(RATIOS, means, style, color=color, label=f"{variant[0]}, M={m}")
        ax.set_xscale("log", base=2)
        ax.set_xlabel("aspect ratio Q = N/M")
        ax.set_ylabel("mean α (Hill, xmin = median)")
        ax.set_title(title)
        ax.legend(fontsize=7)
    ax = axes[2]
    qs = [r["Q"] for r in rows.values()]
    for stage, marker in (("init", "o"), ("trained", "s")):
        ax.plot(qs, [r[stage]["plain", "median"] for r in rows.values()], marker, linestyle="none", color="C3",
                fillstyle="none", label=f"plain, {stage}")
        ax.plot(qs, [r[stage]["FARMS", "median"] for r in rows.values()], marker, linestyle="none", color="C0",
                label=f"FARMS, {stage}")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("aspect ratio Q of the layer")
    ax.set_ylabel("α (Hill, xmin = median)")
    ax.set_title("MLP on digits: layers before and after training")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    print(f"\nfigure written to {path}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[64, 128, 256])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--window-size", type=int, default=100)
    parser.add_argument("--windows-per-dim", type=int, default=9)
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument("--learning-rate", type=float, default=3e-3)
    parser.add_argument("--figure", default=None, help="write the figure here (PNG)")
    args = parser.parse_args()
    farms_options = {"window_size": args.window_size, "windows_per_dim": args.windows_per_dim}
    start = time.perf_counter()
    table = random_matrices(args.sizes, args.seeds, farms_options)
    print_random_table(table, args.sizes)
    rows = network_table(args.steps, args.learning_rate, farms_options)
    print(f"\n({time.perf_counter() - start:.0f} s)")
    if args.figure:
        draw(table, args.sizes, rows, args.figure)


if __name__ == "__main__":
    main()
