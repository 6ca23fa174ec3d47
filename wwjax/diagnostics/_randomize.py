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

Each matrix is shuffled with a seed made of the user's key, the leaf path, the replica and the matrix index, so a
layer's numbers depend on the key and the layer only, jitted or not.
"""

from __future__ import annotations

import math
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


def path_hash(path: str) -> np.uint32:
    """A leaf path as a 32-bit word: what makes each leaf's shuffles its own."""
    return np.uint32(zlib.crc32(path.encode()))


def leaf_seed(key: jax.Array, path_word) -> Int[Array, " words"]:
    """The seed words of one leaf's shuffles: the key's data and the leaf's :func:`path_hash`.

    A layer's shuffles depend on the key and its path only, not on which other leaves are analysed. Built inside
    the permutation program (a concatenation), not by an eager ``jax.random.fold_in`` per leaf.

    Example:
      >>> import jax
      >>> leaf_seed(jax.random.key(0), path_hash("dense/kernel")).shape
      (3,)
    """
    return jnp.concatenate([_seed(key), jnp.asarray(path_word, jnp.uint32).reshape(1)])


# Six rounds: the fewest with a margin. The test that pairs of elements sharing a row or column of W land in one
# row or column of the shuffle only as often as chance fails at 3 rounds (by ~20 standard errors over 8 keys on a
# 3000 x 384 matrix) and shows a small excess at 4 (~4 standard errors over 16 keys on 30522 x 384); 5, 6 and 8
# rounds pass like NumPy's permutation. Each round costs about 1/6 of the index computation.
_FEISTEL_ROUNDS = 6


def _mix32(x: Int[Array, "..."]) -> Int[Array, "..."]:
    """A 32-bit integer hash with full avalanche (the "lowbias32" constants): the Feistel round function."""
    x = x ^ (x >> 16)
    x = x * jnp.uint32(0x7FEB352D)
    x = x ^ (x >> 15)
    x = x * jnp.uint32(0x846CA68B)
    return x ^ (x >> 16)


def _feistel_domain(n: int) -> tuple[int, int]:
    """``(a, b)`` with ``a·b >= n`` and ``a <= b`` close to √n: the two halves of the Feistel network.

    ``a·b == n`` when n has a divisor within a factor 8 of √n (every product of two matrix sides the size of a
    layer's does), so the network is a bijection of ``[0, n)`` itself; otherwise ``a = ⌈√n⌉`` and values at or past
    n (fewer than ``a`` of them) are cycle-walked back.
    """
    root = math.isqrt(n)
    a = root
    while a > 1 and n % a:
        a -= 1
    if n >= 4 and 8 * a >= root and a > 1:
        return a, n // a
    a = root + (root * root < n)
    return a, -(-n // a)


def _round_keys(seed: Int[Array, " words"], stream) -> Int[Array, " rounds"]:
    """The Feistel round keys of one permutation: the key's words hashed with a stream number.

    Plain integer hashing, not ``jax.random`` (threefry), whose unrolled rounds take seconds to compile on CPU for
    every shape of shuffle program.
    """
    state = _mix32(jnp.uint32(stream) * jnp.uint32(0x9E3779B9) + jnp.uint32(0x632BE5AB))
    for word in seed:
        state = _mix32(state ^ word)
    return jnp.stack([_mix32(state + jnp.uint32(k) * jnp.uint32(0x9E3779B9)) for k in range(_FEISTEL_ROUNDS)])


def _seed(key: jax.Array) -> Int[Array, " words"]:
    return jax.random.key_data(key).reshape(-1).astype(jnp.uint32)


def _permutation(round_keys: Int[Array, " rounds"], n: int) -> Int[Array, " n"]:
    a, b = _feistel_domain(n)

    def add_mod(x, h, size):
        # (x + h mod size) mod size for x < size < 2^24, without a division: h's top 24 bits scaled to [0, size).
        step = jnp.minimum((h >> 8).astype(jnp.float32) * (size / 2.0**24), size - 1).astype(jnp.uint32)
        x = x + step
        return jnp.where(x >= size, x - size, x)

    def feistel(hi, lo):
        for k in range(_FEISTEL_ROUNDS):  # a fixed, small number of rounds: unrolled on purpose
            if k % 2 == 0:
                hi = add_mod(hi, _mix32(lo ^ round_keys[k]), a)
            else:
                lo = add_mod(lo, _mix32(hi ^ round_keys[k]), b)
        return hi * jnp.uint32(b) + lo

    # The halves of 0 … a·b-1 as a grid: no division.
    hi = jax.lax.broadcasted_iota(jnp.uint32, (a, b), 0)
    lo = jax.lax.broadcasted_iota(jnp.uint32, (a, b), 1)
    out = feistel(hi, lo).reshape(-1)
    if a * b == n:
        return out.astype(jnp.int32)

    def walk(x):
        return jnp.where(x >= n, feistel(x // jnp.uint32(b), x % jnp.uint32(b)), x)

    # Cycle-walking: a value past n goes through the network again until it lands in range, which keeps the map
    # a bijection of [0, n) (fewer than a of the n values ever need it).
    out = jax.lax.while_loop(lambda x: jnp.any(x >= n), walk, out[:n])
    return out.astype(jnp.int32)


def random_permutation(key: jax.Array, n: int) -> Int[Array, " n"]:
    """A pseudo-random permutation of ``0 … n-1``: a keyed Feistel network on ``Z_a × Z_b`` (``a·b ≈ n``).

    An index is the pair ``(i // b, i % b)``; each round adds a keyed hash of one half to the other, modulo its
    size, which is a bijection whatever the hash. Every position is computed on its own by elementwise integer
    operations: no sort (``jax.random.permutation`` sorts random keys several times, ~15 s for a 4M-element matrix
    on CPU, and could stall XLA's CPU runtime) and, as ``a·b == n`` for the products of matrix sides, no
    cycle-walking: one pass over the indices (about 0.07 s for a 30522 × 384 embedding on 2 CPU cores).

    Example:
      >>> import jax
      >>> sorted(random_permutation(jax.random.key(0), 10).tolist()) == list(range(10))
      True
    """
    return _permutation(_round_keys(_seed(key), 0), n)


def permutations(seed: Int[Array, " words"], size: int, count: int) -> Int[Array, "count size"]:
    """``count`` independent permutations of ``0 … size-1`` (see :func:`random_permutation`): number ``s`` is keyed
    by the ``seed`` words (a leaf's :func:`leaf_seed`) and the stream number ``s``.

    Example:
      >>> import jax
      >>> p = permutations(leaf_seed(jax.random.key(0), path_hash("w")), 5, 2)
      >>> p.shape, sorted(p[1].tolist())
      ((2, 5), [0, 1, 2, 3, 4])
    """
    return jax.vmap(lambda stream: _permutation(_round_keys(seed, stream), size))(
        jnp.arange(count, dtype=jnp.uint32))


def permuted(mats: Float[Array, "batch n m"], perms: Int[Array, "count nm"]) -> Float[Array, "replicas batch n m"]:
    """Each matrix's elements reordered by its permutations: permutation ``r·batch + j`` shuffles matrix ``j``.

    Kept apart from :func:`permutations` so that, run as two programs, XLA cannot fuse the index arithmetic into
    the gather's scalar loop: the indices are computed vectorised first (the shuffle of a 30522 × 384 embedding
    takes ~15% less time that way on CPU).
    """
    batch, n, m = mats.shape
    replicas = perms.shape[0] // batch
    flat = mats.reshape(batch, n * m)
    take = jax.vmap(lambda w, p: jnp.take(w, p, mode="clip"))
    return jax.vmap(lambda row: take(flat, row))(perms.reshape(replicas, batch, n * m)).reshape(replicas, batch, n, m)


def shuffled(seed: Int[Array, " words"], mats: Float[Array, "batch n m"],
             replicas: int) -> Float[Array, "replicas batch n m"]:
    """``replicas`` independent element shuffles of every matrix of ``mats``: :func:`permuted` by
    :func:`permutations` (shuffle ``r`` of matrix ``j`` is stream ``r·batch + j``).

    Example:
      >>> import jax, jax.numpy as jnp
      >>> w = jnp.arange(6.0).reshape(1, 3, 2)
      >>> s = shuffled(leaf_seed(jax.random.key(0), path_hash("w")), w, 2)
      >>> s.shape, sorted(s[1, 0].ravel().tolist()) == w.ravel().tolist()
      ((2, 1, 3, 2), True)
    """
    batch, n, m = mats.shape
    return permuted(mats, permutations(seed, n * m, replicas * batch))


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
