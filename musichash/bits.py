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
