"""A segment index split into shards, searched as one.

A library of N shards (``indexer.shards``) keeps one FAISS index a shard. ``ShardedIndex`` fans a
query's codes out to every shard, takes each shard's k nearest, and merges them by (distance, id):
every one of the k nearest over all codes is among the k nearest of its own shard, so the merge
returns the same neighbours as one index over all the codes (up to the order of equal distances,
which the merge fixes by id). It answers ``search`` as ``BinaryIndex`` does, so the query, dedup
and recommend code above it does not know whether an index is sharded.

In one process the shards are searched at once, one thread a shard (FAISS releases the GIL), each
FAISS call on one core: on this 2-core machine under load, one OpenMP search over 2M codes took
326 ms at p50 and the 4 shards in 2 threads 61 ms (benchmarks/bench_cluster.py, docs/scale.md), as
OpenMP's barriers suffer most when other processes hold the cores. A cluster runs one shard per
actor with the same merge (``merge_knn``).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import faiss
import numpy as np

from musichash.indexer import shards as sharding
from musichash.search.faiss_index import MISSING_DISTANCE, BinaryIndex, IndexConfig

#: IVF needs codes to train on: a shard with fewer gets a flat index (exact, and small anyway)
MIN_IVF_SHARD = 10_000


def shard_config(config: IndexConfig, n_codes: int) -> IndexConfig:
    """What a shard of ``n_codes`` codes is built as under ``config``: flat when too few to train IVF."""
    return config if config.kind == "flat" or n_codes >= MIN_IVF_SHARD else IndexConfig("flat", bits=config.bits)


def combined_kind(kinds: Sequence[str]) -> str:
    """The kind a sharded index reports for its shards' kinds: IVF if any shard is, else the first's."""
    return "ivf" if "ivf" in kinds else kinds[0]


def merge_knn(parts: Sequence[tuple[np.ndarray, np.ndarray]], k: int) -> tuple[np.ndarray, np.ndarray]:
    """The k nearest of several shards' answers for the same queries.

    parts: (D: int32 [nq, k_i], I: int64 [nq, k_i]) per shard, ids disjoint -> D, I: [nq, k], by
    distance then id; missing slots (I == -1, D == MISSING_DISTANCE) sort last.
    """
    D = np.concatenate([p[0] for p in parts], axis=1)
    I = np.concatenate([p[1] for p in parts], axis=1)
    # missing slots last whatever their id: their distance is the largest there is
    order = np.lexsort((np.where(I < 0, np.iinfo(np.int64).max, I), D), axis=-1)[:, :k]
    D, I = np.take_along_axis(D, order, axis=1), np.take_along_axis(I, order, axis=1)
    if D.shape[1] < k:  # fewer slots than asked over all shards
        pad = k - D.shape[1]
        D = np.pad(D, ((0, 0), (0, pad)), constant_values=MISSING_DISTANCE)
        I = np.pad(I, ((0, 0), (0, pad)), constant_values=-1)
    return D, I


class ShardedIndex:
    """N ``BinaryIndex`` over disjoint sets of ids, answering ``search`` as one index would."""

    def __init__(self, shards: Sequence[BinaryIndex]) -> None:
        if not shards:
            raise ValueError("a sharded index needs at least one shard")
        self.shards = list(shards)

    @classmethod
    def build(
        cls, codes: np.ndarray, ids: np.ndarray, shard_rows: Sequence[np.ndarray], config: IndexConfig,
        device: str = "auto",
    ) -> ShardedIndex:
        """One index a shard: shard j holds ``codes[shard_rows[j]]`` under ``ids[shard_rows[j]]``."""
        return cls([BinaryIndex.build(codes[rows], ids[rows], shard_config(config, len(rows)), device)
                    for rows in shard_rows])

    @property
    def ntotal(self) -> int:
        return sum(s.ntotal for s in self.shards)

    def __len__(self) -> int:
        return self.ntotal

    @property
    def bits(self) -> int:
        return self.shards[0].bits

    @property
    def kind(self) -> str:
        """The kind the shards were built as (a shard too small for IVF is flat)."""
        return combined_kind([s.kind for s in self.shards])

    @property
    def config(self) -> IndexConfig:
        return next((s.config for s in self.shards if s.kind == self.kind), self.shards[0].config)

    @property
    def device(self) -> str:
        return self.shards[0].device

    def __repr__(self) -> str:
        return f"ShardedIndex(shards={len(self.shards)}, kind={self.kind!r}, bits={self.bits}, ntotal={self.ntotal})"

    def set_search_params(self, **params) -> None:
        for s in self.shards:
            s.set_search_params(**params)

    def search(self, xq: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """``BinaryIndex.search`` over all shards: each shard's k nearest, merged (``merge_knn``)."""
        return merge_knn(list(_pool().map(lambda s: _search_one(s, xq, k), self.shards)), k)

    def save(self, paths: Sequence[Path]) -> None:
        for s, p in zip(self.shards, paths, strict=True):
            s.save(p)

    @classmethod
    def load(cls, paths: Sequence[Path], device: str = "auto") -> ShardedIndex:
        return cls([BinaryIndex.load(p, device) for p in paths])


_POOL: ThreadPoolExecutor | None = None


def _pool() -> ThreadPoolExecutor:
    global _POOL
    if _POOL is None:
        _POOL = ThreadPoolExecutor(max(1, os.cpu_count() or 1), thread_name_prefix="musichash-shard")
    return _POOL


def _search_one(index: BinaryIndex, xq: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    faiss.omp_set_num_threads(1)  # this pool thread's own setting: the shards, not OpenMP, share the cores
    return index.search(xq, k)


def build_segments(
    codes: np.ndarray, track_ids: np.ndarray, config: IndexConfig, device: str, n_shards: int
) -> BinaryIndex | ShardedIndex:
    """The segment index of a segment table (row i: ``codes[i]`` of track ``track_ids[i]``), ids = rows:
    one ``BinaryIndex`` for one shard, else a ``ShardedIndex`` with each track's rows in its shard."""
    rows = np.arange(len(codes), dtype=np.int64)
    if n_shards == 1:
        return BinaryIndex.build(codes, rows, config, device)
    return ShardedIndex.build(codes, rows, sharding.rows_by_shard(track_ids, n_shards), config, device)


def shard_count(index: BinaryIndex | ShardedIndex) -> int:
    return len(index.shards) if isinstance(index, ShardedIndex) else 1
