"""Coverage of the bootstrap intervals on α (``wwjax.diagnostics._bootstrap``).

Two kinds of spectra:

* ``pareto``: ``n`` i.i.d. Pareto eigenvalues with density exponent α (``x = U^{-1/(α-1)}``), the true α known;
  for each (α, n), ``--trials`` independent spectra, each fitted (KS scan) and bootstrapped ``--resamples`` times;
  the coverage is the share of trials whose interval contains the true α, for both resampling schemes
  (``esd``: refit with the KS scan; ``tail``: Hill at the fitted xmin) and both intervals (``basic_log``,
  ``percentile``).
* ``student``: ESDs of ``N × M`` matrices with Student-t entries (``ν`` degrees of freedom), where no α is known.
  Reported: the spread of the fitted α across independent matrices (seeds) next to the mean bootstrap
  ``alpha_std`` of one matrix, and how often one matrix's interval contains the ensemble's mean α and the
  heavy-tailed random-matrix value ``1 + ν/2``.

Run from the repository root:

    python benchmarks/bench_bootstrap_coverage.py               # the full table (an hour on 2 CPU cores)
    python benchmarks/bench_bootstrap_coverage.py --quick       # a smaller table (under a minute)
    python benchmarks/bench_bootstrap_coverage.py --figure docs/img/bootstrap_coverage.png
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np

from wwjax.core._powerlaw import fit_power_law
from wwjax.diagnostics._bootstrap import resampled_alphas, row_seeds, summarize

INTERVALS = ("basic_log", "percentile")


def pareto_spectra(rng: np.random.Generator, alpha: float, n: int, trials: int) -> np.ndarray:
    """``(trials, n)`` ascending Pareto samples with density ``∝ x^{-α}`` on ``[1, ∞)``."""
    return np.sort((1.0 - rng.random((trials, n))) ** (-1.0 / (alpha - 1.0)), axis=1)


def student_spectra(rng: np.random.Generator, nu: float, N: int, M: int, trials: int) -> np.ndarray:  # noqa: N803
    """``(trials, M)`` ascending ESDs of ``WᵀW/N`` with Student-t(ν) entries."""
    out = []
    for _ in range(trials):
        W = rng.standard_t(nu, size=(N, M)) / np.sqrt(N)
        out.append(np.linalg.eigvalsh(W.T @ W))
    return np.sort(np.stack(out), axis=1)


def bootstrap(esd: np.ndarray, B: int, resample: str, key: int, path: str):
    """Fit every row, bootstrap it; returns the fitted α and, per interval, its columns (numpy)."""
    evals = jnp.asarray(esd)
    rows, n = evals.shape
    fit = jax.vmap(fit_power_law)(evals)
    boot = resampled_alphas(evals, jnp.full(rows, n), jnp.zeros(rows, evals.dtype),
                            jnp.asarray(row_seeds(key, path, rows)), fit.xmin, fit.num_pl_spikes,
                            num_resamples=B, resample=resample, num_clipped=0, ks_elements=1 << 23)
    cols = {name: jax.tree.map(np.asarray, summarize(fit.alpha, boot, interval=name)) for name in INTERVALS}
    return np.asarray(fit.alpha), cols


def pareto_table(alphas, sizes, trials: int, B: int, seed: int) -> list[dict]:
    rng = np.random.default_rng(seed)
    rows = []
    for n in sizes:
        for alpha in alphas:
            esd = pareto_spectra(rng, alpha, n, trials)
            for resample in ("esd", "tail"):
                start = time.perf_counter()
                fitted, cols = bootstrap(esd, B, resample, seed, f"pareto/{alpha}/{n}")
                seconds = time.perf_counter() - start
                row = dict(n=n, alpha=alpha, resample=resample, trials=trials, bias=float(np.mean(fitted) - alpha),
                           sd_fit=float(np.std(fitted)), mean_std=float(np.nanmean(cols["basic_log"].alpha_std)),
                           seconds=seconds)
                for name, c in cols.items():
                    row[name] = float(np.mean((c.alpha_ci_low <= alpha) & (alpha <= c.alpha_ci_high)))
                rows.append(row)
                print(f"n={n:5d} α={alpha:3.1f} {resample:4s}  coverage basic_log {row['basic_log']:.3f} "
                      f"percentile {row['percentile']:.3f}   mean α̂-α {row['bias']:+.3f}  sd(α̂) "
                      f"{row['sd_fit']:.3f}  mean alpha_std {row['mean_std']:.3f}  ({seconds:.1f} s)", flush=True)
    return rows


def student_table(nus, shapes, trials: int, B: int, seed: int) -> list[dict]:
    rng = np.random.default_rng(seed + 1)
    rows = []
    for N, M in shapes:
        for nu in nus:
            esd = student_spectra(rng, nu, N, M, trials)
            fitted, cols = bootstrap(esd, B, "esd", seed, f"student/{nu}/{N}x{M}")
            c = cols["basic_log"]
            ensemble = float(np.nanmean(fitted))
            theory = 1.0 + nu / 2.0
            row = dict(N=N, M=M, nu=nu, mean_alpha=ensemble, sd_fit=float(np.nanstd(fitted)),
                       mean_std=float(np.nanmean(c.alpha_std)),
                       cover_mean=float(np.mean((c.alpha_ci_low <= ensemble) & (ensemble <= c.alpha_ci_high))),
                       cover_theory=float(np.mean((c.alpha_ci_low <= theory) & (theory <= c.alpha_ci_high))))
            rows.append(row)
            print(f"{N}x{M} ν={nu}: mean α̂ {ensemble:.3f} (1+ν/2 = {theory:.2f})  sd(α̂) across matrices "
                  f"{row['sd_fit']:.3f}  mean alpha_std {row['mean_std']:.3f}  covers the mean "
                  f"{row['cover_mean']:.3f}, 1+ν/2 {row['cover_theory']:.3f}", flush=True)
    return rows


def figure(rows: list[dict], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sizes = sorted({r["n"] for r in rows})
    fig, axes = plt.subplots(1, len(sizes), figsize=(4.2 * len(sizes), 3.6), sharey=True, squeeze=False)
    styles = {("esd", "basic_log"): ("tab:blue", "o-"), ("esd", "percentile"): ("tab:blue", "s--"),
              ("tail", "basic_log"): ("tab:orange", "o-"), ("tail", "percentile"): ("tab:orange", "s--")}
    trials = rows[0]["trials"]
    band = 1.96 * np.sqrt(0.95 * 0.05 / trials)  # where the coverage of a right interval lands 95% of the time
    for ax, n in zip(axes[0], sizes):
        ax.axhspan(0.95 - band, min(1.0, 0.95 + band), color="0.9", label=f"95% ± binomial noise ({trials} trials)")
        for (resample, interval), (color, style) in styles.items():
            mine = [r for r in rows if r["n"] == n and r["resample"] == resample]
            ax.plot([r["alpha"] for r in mine], [r[interval] for r in mine], style, color=color,
                    label=f"{resample}, {interval}")
        ax.axhline(0.95, color="k", lw=1, ls=":")
        ax.set(title=f"Pareto spectra, n = {n} eigenvalues", xlabel="true α", ylim=(0.75, 1.0))
    axes[0][0].set_ylabel("coverage of the 95% interval")
    axes[0][-1].legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    print(f"wrote {path}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="fewer trials and sizes")
    parser.add_argument("--trials", type=int, default=None)
    parser.add_argument("--resamples", type=int, default=None)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--sizes", type=int, nargs="+", default=None, help="ESD lengths n of the Pareto table")
    parser.add_argument("--alphas", type=float, nargs="+", default=(2.0, 3.0, 4.0, 6.0))
    parser.add_argument("--no-student", action="store_true")
    parser.add_argument("--student-trials", type=int, default=100, help="matrices per Student-t case")
    parser.add_argument("--figure", default=None, help="write the coverage figure (PNG) here")
    args = parser.parse_args()
    jax.config.update("jax_enable_x64", True)
    trials = args.trials or (100 if args.quick else 200)
    B = args.resamples or 100
    sizes = args.sizes or ((100, 300) if args.quick else (100, 300, 1000))
    rows = pareto_table(args.alphas, sizes, trials, B, args.seed)
    if args.figure:
        figure(rows, args.figure)
    if not args.no_student:
        shapes = ((300, 100),) if args.quick else ((300, 100), (1000, 250))
        student_table((2.0, 3.0), shapes, args.student_trials, B, args.seed)


if __name__ == "__main__":
    main()
