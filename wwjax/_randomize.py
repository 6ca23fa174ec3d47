"""Randomized ESDs and correlation traps (WeightWatcher's ``randomize=True``), reproducible from a key.

Shuffling the elements of W destroys every correlation it learnt and keeps its element distribution. The ESD of the
shuffled matrix is then the ESD of a random matrix with W's elements: a Marchenko–Pastur bulk, unless a few
elements are so large that they alone make eigenvalues escape it, *correlation traps* (Martin & Mahoney).

Per row, as WeightWatcher computes it:

* ``R1``: the pooled eigenvalues of 5 independent shuffles of each matrix if its short side is below 100, else 1;
  ``R2``: one more, fresh shuffle;
* ``max_rand_eval = max R1``; ``ww_softrank = max R2 / max λ``; ``ww_maxdist = max λ − max R2``;
* ``rand_distance``: the Jensen–Shannon distance between the sorted vectors λ and R2 read as mass functions over the
  index (no histogram; see :func:`jensen_shannon_distance`);
* the Marchenko–Pastur fit of ``R1`` (``rand_*`` columns); ``num_traps`` is its spike count.

Each matrix is shuffled with a key folded from the user's key, the leaf path, the replica and the matrix index, so a
layer's numbers depend on the key and the layer only, jitted or not.
"""

from __future__ import annotations

import zlib

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float, Int

SMALL_MATRIX = 100  # WeightWatcher shuffles 5 times when the short side is below this (one shuffle otherwise)
SMALL_MATRIX_REPLICAS = 5


def as_key(key) -> jax.Array:
    """A typed ``jax.random`` key from an int seed, a typed key, or a raw ``uint32[2]`` key.

    Example:
      >>> import jax
      >>> bool((jax.random.key_data(as_key(3)) == jax.random.key_data(jax.random.key(3))).all())
      True
    """
    if isinstance(key, (int, np.integer)) and not isinstance(key, bool):
        return jax.random.key(int(key))
    if isinstance(key, jax.Array) and jnp.issubdtype(key.dtype, jax.dtypes.prng_key):
        return key
    if isinstance(key, (jax.Array, np.ndarray)) and key.dtype == jnp.uint32 and key.shape == (2,):
        return jax.random.wrap_key_data(key)
    raise TypeError(f"key must be an int seed or a jax.random key (jax.random.key(0)), got {key!r}")


def num_replicas(M: int) -> int:
    """How many shuffles of each matrix pool into ``R1`` (WeightWatcher: 5 below 100 eigenvalues per matrix)."""
    return SMALL_MATRIX_REPLICAS if M < SMALL_MATRIX else 1


def leaf_key(key: jax.Array, path: str) -> jax.Array:
    """The key of one leaf: independent of which other leaves are analysed."""
    return jax.random.fold_in(key, zlib.crc32(path.encode()) & 0x7FFFFFFF)


_FEISTEL_ROUNDS = 8


def _mix32(x: Int[Array, "..."]) -> Int[Array, "..."]:
    """A 32-bit integer hash with full avalanche (the "lowbias32" constants): the Feistel round function."""
    x = x ^ (x >> 16)
    x = x * jnp.uint32(0x7FEB352D)
    x = x ^ (x >> 15)
    x = x * jnp.uint32(0x846CA68B)
    return x ^ (x >> 16)


def random_permutation(key: jax.Array, n: int) -> Int[Array, " n"]:
    """A pseudo-random permutation of ``0 … n-1``: a keyed Feistel network on ``2^b >= n`` values, cycle-walked
    into ``[0, n)``.

    Every position is computed independently by elementwise integer operations (no sort): ``jax.random.permutation``
    sorts random keys several times, which on CPU takes ~15 s for a 4M-element matrix and can stall XLA's CPU
    runtime. A Feistel network is a bijection whatever its round function; cycle-walking (applying it again to the
    values that land at or beyond ``n``) keeps it one on ``[0, n)``, and takes a handful of steps since ``2^b < 4n``.

    Example:
      >>> import jax
      >>> sorted(random_permutation(jax.random.key(0), 10).tolist()) == list(range(10))
      True
    """
    bits = max(2, (n - 1).bit_length())
    bits += bits % 2  # two equal halves
    half = bits // 2
    mask = jnp.uint32((1 << half) - 1)
    round_keys = jax.random.bits(key, (_FEISTEL_ROUNDS,), jnp.uint32)

    def feistel(x):
        left, right = x >> half, x & mask
        for k in range(_FEISTEL_ROUNDS):  # a fixed, small number of rounds: unrolled on purpose
            left, right = right, left ^ (_mix32(right ^ round_keys[k]) & mask)
        return (left << half) | right

    def walk(x):
        return jnp.where(x >= n, feistel(x), x)

    start = feistel(jnp.arange(n, dtype=jnp.uint32))
    return jax.lax.while_loop(lambda x: jnp.any(x >= n), walk, start).astype(jnp.int32)


def shuffled(key: jax.Array, mats: Float[Array, "batch n m"], replicas: int) -> Float[Array, "replicas batch n m"]:
    """``replicas`` independent element shuffles of every matrix of ``mats`` (see :func:`random_permutation`).

    Example:
      >>> import jax, jax.numpy as jnp
      >>> w = jnp.arange(6.0).reshape(1, 3, 2)
      >>> s = shuffled(jax.random.key(0), w, 2)
      >>> s.shape, sorted(s[1, 0].ravel().tolist()) == w.ravel().tolist()
      ((2, 1, 3, 2), True)
    """
    batch, n, m = mats.shape
    keys = jax.random.split(key, (replicas, batch))
    flat = mats.reshape(batch, n * m)
    permutations = jax.vmap(jax.vmap(lambda k: random_permutation(k, n * m)))(keys)
    return jax.vmap(lambda p: jnp.take_along_axis(flat, p, axis=1))(permutations).reshape(replicas, batch, n, m)


def jensen_shannon_distance(p: Float[Array, " n"], q: Float[Array, " n"]) -> Float[Array, ""]:
    """WeightWatcher's ``rand_distance``: the Jensen–Shannon distance of two equally long vectors as mass functions.

    ``P = p/Σp``, ``R = q/Σq``, ``M = m/Σm`` with ``m = (p + q)/2`` (the raw vectors averaged, as WeightWatcher
    does), and ``√((KL(P‖M) + KL(R‖M))/2)`` with natural logs and ``0·ln 0 = 0``. Entries are compared by position,
    so pass both sorted. Leading zeros (padding) change nothing.

    Example:
      >>> import jax.numpy as jnp
      >>> float(jensen_shannon_distance(jnp.array([1.0, 2.0]), jnp.array([1.0, 2.0])))
      0.0
      >>> round(float(jensen_shannon_distance(jnp.array([1.0, 0.0]), jnp.array([0.0, 1.0]))), 6)  # √ln 2
      0.832555
    """
    P, R = p / jnp.sum(p), q / jnp.sum(q)
    m = (p + q) / 2.0
    Mix = m / jnp.sum(m)

    def kl(a, b):
        return jnp.sum(jnp.where(a > 0, a * jnp.log(jnp.where(a > 0, a, 1.0) / jnp.where(a > 0, b, 1.0)), 0.0))

    return jnp.sqrt((kl(P, Mix) + kl(R, Mix)) / 2.0)


def trap_threshold(bulk_max: Float[Array, ""], N: int, M: int) -> Float[Array, ""]:
    """The squared (scaled) element size above which one element alone makes an eigenvalue escape the bulk.

    A shuffled ``N × M`` matrix with element variance σ² has its bulk edge at ``σ²(√N + √M)²``; one element ``w``
    is a rank-one spike of strength ``|w|``, which leaves the bulk once ``w² > σ²·√(NM)`` (the BBP transition).
    σ² is read off the fitted bulk edge: ``threshold = bulk_max·√(NM)/(√N + √M)²``.
    """
    return bulk_max * np.sqrt(N * M) / (np.sqrt(N) + np.sqrt(M)) ** 2
