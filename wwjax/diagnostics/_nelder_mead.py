"""``scipy.optimize.fmin`` (Nelder–Mead) replayed step by step in JAX: the same simplex, tests, tie rules and limit of
400 calls, as one ``lax.while_loop`` that vmaps over many objectives at once."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jaxtyping import Array, Bool, Float

_NONZDELT, _ZDELT = 0.05, 0.00025  # the initial simplex: each coordinate in turn × 1.05 (0 → 0.00025)
_XATOL = _FATOL = 1e-4


def _sorted(sim, fsim):
    # numpy's argsort of 3 values is an insertion sort here: stable (ties keep their order), NaN last.
    order = jnp.argsort(fsim, stable=True)
    return sim[order], fsim[order]


def nelder_mead(objective, x0: Float[Array, " d"], active: Bool[Array, ""] | bool = True) -> Float[Array, " d"]:
    """``scipy.optimize.fmin(objective, x0)`` with its defaults, step for step, as a ``lax.while_loop``.

    The same initial simplex, reflection/expansion/contraction/shrink tests and tie rules, the same convergence
    test (``xatol = fatol = 1e-4``) and the same budget of ``200·d`` iterations and ``200·d`` objective calls,
    including what happens when the budget runs out in the middle of a step (SciPy abandons the step; in a shrink
    the point being moved has already moved). ``active=False`` returns ``x0`` without iterating (so that padding
    rows of a vmapped call do not keep the loop running).

    Example:
      >>> import jax.numpy as jnp
      >>> x = nelder_mead(lambda p: (p[0] - 1.0) ** 2 + (p[1] + 2.0) ** 2, jnp.array([0.5, 0.5]))
      >>> [round(float(v), 3) for v in x]
      [1.0, -2.0]
    """
    d = x0.shape[0]
    max_calls = max_iterations = 200 * d
    sim = jnp.stack([x0] + [x0.at[k].set(jnp.where(x0[k] != 0, (1 + _NONZDELT) * x0[k], _ZDELT)) for k in range(d)])
    fsim = jax.vmap(objective)(sim)
    sim, fsim = _sorted(sim, fsim)

    def running(state):
        sim, fsim, iterations, calls = state
        converged = (jnp.max(jnp.abs(sim[1:] - sim[0])) <= _XATOL) & (jnp.max(jnp.abs(fsim[0] - fsim[1:])) <= _FATOL)
        return active & (calls < max_calls) & (iterations < max_iterations) & ~converged

    def step(state):
        sim, fsim, iterations, calls = state
        xbar = functools.reduce(jnp.add, [sim[k] for k in range(d)]) / d
        worst = sim[-1]
        xr = 2.0 * xbar - 1.0 * worst  # (1 + ρ)·x̄ − ρ·worst, ρ = 1
        fxr = objective(xr)
        calls = calls + 1
        expand = fxr < fsim[0]
        accept_reflection = ~expand & (fxr < fsim[-2])
        outside = ~expand & ~accept_reflection & (fxr < fsim[-1])
        xe = 3.0 * xbar - 2.0 * worst  # (1 + ρχ)·x̄ − ρχ·worst, χ = 2
        xc = 1.5 * xbar - 0.5 * worst  # (1 + ψρ)·x̄ − ψρ·worst, ψ = 0.5
        xcc = 0.5 * xbar + 0.5 * worst  # (1 − ψ)·x̄ + ψ·worst
        x2 = jnp.where(expand, xe, jnp.where(outside, xc, xcc))
        # shrink towards the best point (σ = 0.5): evaluated together with x2, one batched call instead of three
        shrunk = sim[0] + 0.5 * (sim[1:] - sim[0])
        f_later = jax.vmap(objective)(jnp.concatenate([x2[None], shrunk]))
        f2, fshrunk = f_later[0], f_later[1:]
        second = ~accept_reflection  # a second call is made
        abandoned = second & (calls >= max_calls)
        calls = calls + second
        accepted = jnp.where(
            expand | accept_reflection, True, jnp.where(outside, f2 <= fxr, f2 < fsim[-1])
        )
        take_e = expand & (f2 < fxr)
        new_x = jnp.where(take_e | (~expand & ~accept_reflection), x2, xr)
        new_f = jnp.where(take_e | (~expand & ~accept_reflection), f2, fxr)
        moved = sim.at[-1].set(new_x)
        fmoved = fsim.at[-1].set(new_f)
        # in a shrink, point j is evaluated while calls remain, and the point whose call would exceed the budget
        # has moved without being evaluated (SciPy assigns it before the call raises)
        j = jnp.arange(1, d + 1)
        evaluated = calls + (j - 1) < max_calls
        moved_s = calls + (j - 1) <= max_calls
        shrink_sim = sim.at[1:].set(jnp.where(moved_s[:, None], shrunk, sim[1:]))
        shrink_f = fsim.at[1:].set(jnp.where(evaluated, fshrunk, fsim[1:]))
        shrink = ~abandoned & ~accepted
        sim = jnp.where(abandoned, sim, jnp.where(shrink, shrink_sim, moved))
        fsim = jnp.where(abandoned, fsim, jnp.where(shrink, shrink_f, fmoved))
        calls = calls + jnp.where(shrink, jnp.sum(evaluated), 0)
        iterations = iterations + ~(abandoned | (shrink & ~evaluated[-1]))
        sim, fsim = _sorted(sim, fsim)
        return sim, fsim, iterations, calls

    state = (sim, fsim, jnp.array(1), jnp.array(d + 1))
    sim, *_ = jax.lax.while_loop(running, step, state)
    return sim[0]
