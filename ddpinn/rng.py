"""Counter-based random numbers: the same value for the same key, on any process.

ddpinn draws initial weights and random collocation points from ``(seed, stream, id, counter)``
keys rather than from a sequential generator, so that a subdomain's weights and a cell's points do
not depend on how many processes there are or which one holds them. The mixer is SplitMix64
(Steele, Lea, Flood 2014), vectorised in NumPy.
"""

from __future__ import annotations

import hashlib

import numpy as np

__all__ = ["mix", "stream_key", "uniform", "normal"]

_MASK = np.uint64(0xFFFFFFFFFFFFFFFF)


def mix(z: np.ndarray) -> np.ndarray:
    """SplitMix64's finaliser: a bijective scramble of uint64 values (vectorised)."""
    z = (z + np.uint64(0x9E3779B97F4A7C15)) & _MASK
    z = ((z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)) & _MASK
    z = ((z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)) & _MASK
    return z ^ (z >> np.uint64(31))


def stream_key(seed: int, *names: object) -> int:
    """A 64-bit key for a named stream, e.g. ``stream_key(seed, "init", level, layer)``."""
    text = "/".join(str(n) for n in (seed, *names)).encode()
    return int.from_bytes(hashlib.blake2b(text, digest_size=8).digest(), "little")


def uniform(key: int, ids: np.ndarray, n: int) -> np.ndarray:
    """Uniform [0, 1) float64 values: [len(ids), n]; row i depends only on (key, ids[i])."""
    with np.errstate(over="ignore"):
        ids = np.asarray(ids, dtype=np.uint64).reshape(-1, 1)
        base = mix(np.uint64(key) ^ mix(ids))
        z = mix(base + np.arange(n, dtype=np.uint64)[None, :] * np.uint64(0xD1B54A32D192ED03))
    return (z >> np.uint64(11)).astype(np.float64) * (1.0 / (1 << 53))


def normal(key: int, ids: np.ndarray, n: int) -> np.ndarray:
    """Standard normal float64 values: [len(ids), n] (Box–Muller on :func:`uniform`)."""
    u = uniform(key, ids, 2 * n)
    u1, u2 = 1.0 - u[:, :n], u[:, n:]
    return np.sqrt(-2.0 * np.log(u1)) * np.cos(2 * np.pi * u2)
