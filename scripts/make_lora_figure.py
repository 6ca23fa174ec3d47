"""The figure of docs/lora.md: the spectra of a LoRA fine-tune's base W, ΔW = A·B and the merged W + ΔW.

A small MLP (64 → 256 → 256 → 10, ``nnx.LoRALinear`` hidden layers with rank-16 adapters) is trained on
scikit-learn's digits 0–4 (all weights, adapters at ΔW = 0), then only the LoRA factors are fine-tuned on digits
5–9. The two adapted layers are analysed with ``wwjax.analyze(state, lora=True, lora_merged=True)``; the ΔW
eigenvalues from the factors are overlaid on those of the dense ΔW (NumPy SVD). Needs scikit-learn and matplotlib;
about 30 s on a CPU:

    python scripts/make_lora_figure.py docs/img/lora_spectra.png
"""

from __future__ import annotations

import argparse


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("output")
    parser.add_argument("--rank", type=int, default=16)
    parser.add_argument("--steps", type=int, default=300, help="Adam steps of each phase")
    args = parser.parse_args()

    import jax

    jax.config.update("jax_enable_x64", True)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np
    import optax
    from flax import nnx
    from sklearn.datasets import load_digits

    import wwjax

    digits = load_digits()
    x_all, y_all = digits.data / 16.0, digits.target
    rank = args.rank

    class Net(nnx.Module):
        def __init__(self, rngs):
            self.first = nnx.LoRALinear(64, 256, lora_rank=rank, rngs=rngs)
            self.second = nnx.LoRALinear(256, 256, lora_rank=rank, rngs=rngs)
            self.head = nnx.Linear(256, 10, rngs=rngs)

        def __call__(self, x):
            return self.head(jax.nn.relu(self.second(jax.nn.relu(self.first(x)))))

    def train(model, wrt, x, y, lr):
        optimizer = nnx.Optimizer(model, optax.adam(lr), wrt=wrt)

        @nnx.jit
        def step(model, optimizer):
            def loss(m):
                return optax.softmax_cross_entropy_with_integer_labels(m(x), y).mean()

            grads = nnx.grad(loss, argnums=nnx.DiffState(0, wrt))(model)
            optimizer.update(model, grads)

        for _ in range(args.steps):
            step(model, optimizer)

    def accuracy(model, x, y):
        return float(np.mean(np.argmax(np.asarray(model(x)), axis=-1) == y))

    model = Net(nnx.Rngs(0))
    low, high = y_all < 5, y_all >= 5
    base_filter = nnx.All(nnx.Param, nnx.Not(nnx.LoRAParam))  # everything but the adapters (ΔW stays 0)
    train(model, base_filter, x_all[low], y_all[low], 1e-3)
    acc_before = accuracy(model, x_all[high], y_all[high])
    train(model, nnx.LoRAParam, x_all[high], y_all[high], 3e-3)  # the LoRA fine-tune: the base is frozen
    acc_after = accuracy(model, x_all[high], y_all[high])
    print(f"accuracy on digits 5-9: {acc_before:.3f} before the LoRA fine-tune, {acc_after:.3f} after")

    state = jax.tree.map(lambda v: np.asarray(v, np.float64), nnx.state(model))  # trained in float32, analysed in 64
    result = wwjax.analyze(state, lora=True, lora_merged=True)
    df = wwjax.details(result).set_index("path")

    fig, axes = plt.subplots(1, 2, figsize=(10, 5.4), dpi=100)
    worst = 0.0
    for ax, name in zip(axes, ("first", "second")):
        layer = getattr(model, name)
        a, b = (np.asarray(getattr(layer.lora, k)[...], np.float64) for k in ("lora_a", "lora_b"))
        rows = {
            "base W": (f"{name}/kernel", "tab:blue", "-"),
            "W + ΔW (lora_merged)": (f"{name}/lora/lora_merged", "tab:green", "--"),
            "ΔW = A·B from the factors": (f"{name}/lora/lora_delta", "tab:red", "-"),
        }
        for label, (path, color, style) in rows.items():
            evals = np.sort(np.asarray(result_at(result, path).esd).ravel())[::-1]
            alpha = df.loc[path, "alpha"]
            ax.loglog(np.arange(1, evals.size + 1), evals, style, color=color, marker=".", markersize=4,
                      label=f"{label}: {evals.size} eigenvalues, α = {alpha:.2f}")
        factor = np.sort(np.asarray(result_at(result, f"{name}/lora/lora_delta").esd).ravel())[::-1]
        dense = np.linalg.svd(a @ b, compute_uv=False) ** 2  # all min(in, out) of them, r nonzero
        dense_top = dense[:rank]
        worst = max(worst, float(np.max(np.abs(factor - dense_top) / dense_top)))
        print(f"{name}: dense ΔW eigenvalues beyond r: max {dense[rank:].max():.1e} (λmax {dense[0]:.3g})")
        dense_alpha = wwjax.analyze({"d": {"kernel": a @ b}}, min_evals=0)["d"]["kernel"].alpha
        print(f"{name}: α of the dense ΔW analysed as a plain matrix: {float(np.ravel(dense_alpha)[0]):.4f}")
        ax.loglog(np.arange(1, rank + 1), dense_top, "o", mfc="none", color="black", markersize=8,
                  label="ΔW dense (NumPy SVD of A·B), top r")
        n_in, n_out = layer.kernel[...].shape
        ax.set_title(f"{name} layer ({n_in}×{n_out}), LoRA rank r = {rank}")
        ax.set_xlabel("rank i (eigenvalues sorted, largest first)")
        ax.set_ylabel("eigenvalue λᵢ")
        ax.grid(True, which="major", alpha=0.3)
        ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.16), frameon=False)
    fig.suptitle(f"LoRA fine-tune on digits 5–9 of a base trained on 0–4 (accuracy on 5–9: {acc_before:.2f} → "
                 f"{acc_after:.2f}); ΔW factor route vs dense: max rel. diff {worst:.1e}", fontsize=10)
    fig.tight_layout()
    fig.savefig(args.output, dpi=100)
    print(f"max relative difference, factor route vs dense ΔW eigenvalues: {worst:.2e}")
    print(df.loc[[p for p in df.index if p.startswith(("first", "second"))], ["status", "N", "M", "alpha"]])


def result_at(result, path):
    node = result
    for key in path.split("/"):
        node = node[key]
    return node


if __name__ == "__main__":
    main()
