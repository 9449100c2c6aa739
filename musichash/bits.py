"""Packed binary codes: the one popcount kernel that indexing and search share (numpy only)."""

from __future__ import annotations

import numpy as np

#: set bits of every byte value
POPCOUNT = np.array([bin(i).count("1") for i in range(256)], dtype=np.uint8)


def hamming(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Hamming distances between packed codes with numpy broadcasting.

    ``a, b: uint8 [..., B]`` -> ``int32 [...]``: ``a [n, B]`` with ``b [n, B]``
    gives the n paired distances, ``a[:, None]`` with ``b[None]`` all pairs.
    """
    return POPCOUNT[np.bitwise_xor(a, b)].sum(axis=-1, dtype=np.int32)


#: a query bit's weight in ``asymmetric_distance`` is its value's magnitude to this power. Chosen
#: on the fit corpus's calibration third (music the heads never heard): 0.5 found more clips at
#: 3 and 5 s than 1 or 2 and matched the most at 95 % rejection (benchmarks/HISTORY.md)
CONFIDENCE_POWER = 0.5


def asymmetric_distance(relaxed: np.ndarray, codes: np.ndarray, power: float = CONFIDENCE_POWER) -> np.ndarray:
    """Distance from unquantised query codes to packed codes, in bits, each bit weighed by its confidence.

    ``relaxed: float [nq, bits]`` (the values whose signs are the query's codes, bit set where > 0),
    ``codes: uint8 [nq, k, bits/8]`` -> ``float32 [nq, k]``: ``bits * sum(c * differs) / sum(c)``
    with ``c = |relaxed| ** power``. A query bit near zero is a coin toss that noise may have
    flipped, so a disagreement there costs little; with equal magnitudes this is the Hamming distance.
    """
    relaxed = np.asarray(relaxed, dtype=np.float32)
    bits = relaxed.shape[-1]
    c = np.abs(relaxed) ** np.float32(power)
    total = c.sum(axis=-1, keepdims=True)
    c = np.where(total > 0, c, np.float32(1.0))  # all zero: every bit counts alike
    total = c.sum(axis=-1, keepdims=True)
    differs = np.unpackbits(codes, axis=-1, count=bits) != (relaxed > 0)[:, None, :]  # [nq, k, bits]
    return (bits * np.einsum("qb,qkb->qk", c, differs.astype(np.float32)) / total).astype(np.float32)
