"""Where a library's codes live: ``codes.h5``, or N shard files ``codes/NNN.h5``.

A library made with one shard (the default, and every library from before shards) keeps its
codes in ``codes.h5``. One made with ``shards=N`` (N > 1; ``meta.shards``) keeps them in
``codes/000.h5`` ... ``codes/<N-1>.h5``, the track of id ``t`` in shard ``t % N``. Each shard is
an ordinary codes file (``codes_file``): same layout, same checksums, same crash-safety rules,
so a Ray worker can own one and write it while others write theirs, and the search index keeps
one FAISS index a shard (``search.shards``).

Routing by id rather than by a column means no schema change and no lookup: a track's shard is
known from its row alone, and the same track always lands in the same shard on a re-index.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np

CODES_FILE = "codes.h5"
SHARDS_DIR = "codes"
#: ``meta`` key holding the shard count (absent: 1)
META_KEY = "shards"
MAX_SHARDS = 1000  # three digits in the file names


def count(meta: Mapping[str, str] | None) -> int:
    """The shard count a library's ``meta`` records (1 when it records none)."""
    return int((meta or {}).get(META_KEY, 1))


def check_count(n: int) -> int:
    n = int(n)
    if not 1 <= n <= MAX_SHARDS:
        raise ValueError(f"shards must be between 1 and {MAX_SHARDS}, got {n}")
    return n


def paths(folder: Path, n: int) -> list[Path]:
    """The codes files of a library of ``n`` shards, shard by shard."""
    if n == 1:
        return [folder / CODES_FILE]
    return [folder / SHARDS_DIR / f"{j:03d}.h5" for j in range(n)]


def shard_of(track_id: int, n: int) -> int:
    return int(track_id) % n


def rows_by_shard(track_ids: np.ndarray, n: int) -> list[np.ndarray]:
    """For rows holding ``track_ids`` (int64 [m]), the row numbers of each shard, in row order."""
    which = np.asarray(track_ids, np.int64) % n
    return [np.flatnonzero(which == j) for j in range(n)]
