"""Retrieval metrics on a labelled set (numpy only): mAP@R, precision@k, precision within a Hamming radius.

Conventions shared by every function here:

- Queries and database are the same ``n`` items. ``D: [nq, nb]`` holds
  distances, smaller is nearer: Hamming distances of packed codes, or
  ``1 - cos`` of float embeddings.
- ``rel: bool [nq, nb]`` marks relevant pairs; :func:`relevance` makes it
  from labels: two items are relevant when they share at least one label
  (multi-label data: one shared tag is enough).
- ``valid: bool [nq, nb]`` is each query's database (``None``: everything).
  :func:`leave_one_file_out` leaves out every item of the query's own file,
  so a window never finds its own track. Items outside the database are
  never ranked and count neither in R nor in any denominator.
- Ranking is by ascending distance. Ties are broken by ``tiebreak``, an order
  of the database (``None``: index order): among equal distances, items come
  in the order they appear in it. :func:`tie_order` draws one seeded random
  permutation, and an evaluation shares it between all methods, so no method
  is favoured by where relevant items happen to sit in the index.
- ``R`` of a query is the number of relevant items in its database. Queries
  with ``R = 0`` cannot score and are left out of every metric (all metrics
  average over the same queries); the metrics report how many were skipped.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np

from musichash.bits import hamming

#: ranks of precision@k unless told otherwise
DEFAULT_K = (10, 100)
#: Hamming radius of the "precision within radius" metric
DEFAULT_RADIUS = 2
#: queries scored at once by :func:`score` (bounds the [chunk, n] matrices)
CHUNK = 512


@dataclass(frozen=True)
class MapAtR:
    """Mean AP@R over ``queries`` queries; ``skipped`` queries had R = 0."""

    value: float
    queries: int
    skipped: int


@dataclass(frozen=True)
class RadiusPrecision:
    """Mean precision inside the Hamming ball (an empty ball scores 0), and the share of queries whose ball is empty."""

    precision: float
    empty: float


@dataclass(frozen=True)
class Scores:
    """Every metric of one method. ``precision_within_radius`` and ``empty_ball`` are ``None`` for float embeddings."""

    map_at_r: float
    precision_at_k: dict[int, float]
    precision_within_radius: float | None
    empty_ball: float | None
    queries: int
    skipped: int


# ------------------------------------------------------------------ relevance and ranking


def relevance(labels_q: np.ndarray, labels_b: np.ndarray) -> np.ndarray:
    """``labels_q: bool [nq, C]``, ``labels_b: bool [nb, C]`` (multi-hot) -> ``bool [nq, nb]``: at least one shared label."""
    return (np.asarray(labels_q, np.float32) @ np.asarray(labels_b, np.float32).T) > 0


def leave_one_file_out(files_q: np.ndarray, files_b: np.ndarray) -> np.ndarray:
    """``files_q: [nq]``, ``files_b: [nb]`` source-file ids -> ``bool [nq, nb]``: database items from another file."""
    return np.asarray(files_q)[:, None] != np.asarray(files_b)[None, :]


def tie_order(n: int, seed: int = 0) -> np.ndarray:
    """The seeded random order of ``n`` database items that breaks ties (``int [n]``, a permutation)."""
    return np.random.default_rng(seed).permutation(n)


def rank(D: np.ndarray, valid: np.ndarray | None = None, tiebreak: np.ndarray | None = None) -> np.ndarray:
    """Database indices by ascending distance, ``int [nq, nb]``; items outside ``valid`` come last.

    Columns are visited in ``tiebreak`` order and sorted stably, so equal
    distances keep that order.
    """
    D = np.asarray(D, dtype=np.float64)
    nb = D.shape[1]
    order = np.arange(nb) if tiebreak is None else np.asarray(tiebreak)
    if sorted(order.tolist()) != list(range(nb)):
        raise ValueError(f"tiebreak must be a permutation of the {nb} database items")
    if valid is not None:
        D = np.where(valid, D, np.inf)
    return order[np.argsort(D[:, order], axis=1, kind="stable")]


def _ranked_hits(D, rel, valid, tiebreak) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(hits: bool [nq, nb] relevance in ranked order, n_valid: int [nq], R: int [nq])."""
    rel = np.asarray(rel, dtype=bool)
    valid = np.ones(rel.shape, dtype=bool) if valid is None else np.asarray(valid, dtype=bool)
    if np.shape(D) != rel.shape or valid.shape != rel.shape:
        raise ValueError(f"D, rel and valid must have one shape, got {np.shape(D)}, {rel.shape}, {valid.shape}")
    rel = rel & valid
    I = rank(D, valid, tiebreak)
    hits = np.take_along_axis(rel, I, axis=1)
    return hits, valid.sum(axis=1), rel.sum(axis=1)


# ------------------------------------------------------------------ per-query kernels


def _ap_at_r(hits: np.ndarray, R: np.ndarray) -> np.ndarray:
    """AP@R per query (``R >= 1``): ``(1/R) Σ_{i<=R} P(i) rel(i)``, ``P(i)`` the precision of the first ``i``."""
    top = int(R.max(initial=0))
    h = hits[:, :top]
    P = np.cumsum(h, axis=1) / np.arange(1, top + 1)
    within = np.arange(top)[None, :] < R[:, None]
    return (P * h * within).sum(axis=1) / R


def _p_at_k(hits: np.ndarray, n_valid: np.ndarray, k: int) -> np.ndarray:
    """Relevant among the first ``k`` ranked, over ``min(k, n_valid)``."""
    return hits[:, :k].sum(axis=1) / np.minimum(k, n_valid)


def _in_radius(D, rel, valid, radius: int) -> tuple[np.ndarray, np.ndarray]:
    """(precision [nq], empty [nq]) inside the ball ``D <= radius``; 0 for an empty ball."""
    ball = np.asarray(D) <= radius
    if valid is not None:
        ball &= np.asarray(valid, dtype=bool)
    n_ball = ball.sum(axis=1)
    n_hit = (ball & np.asarray(rel, dtype=bool)).sum(axis=1)
    return np.where(n_ball > 0, n_hit / np.maximum(n_ball, 1), 0.0), n_ball == 0


# ------------------------------------------------------------------ metrics


def map_at_r(D: np.ndarray, rel: np.ndarray, valid: np.ndarray | None = None, tiebreak: np.ndarray | None = None) -> MapAtR:
    """Mean average precision at R (Musgrave et al. 2020, "A Metric Learning Reality Check").

    For each query, ``R`` is the number of relevant items in its database and
    ``AP@R = (1/R) Σ_{i=1..R} P(i)·rel(i)``: the precision at each of the
    first ``R`` ranks that holds a relevant item, divided by ``R`` (not by
    the number of hits), so it is 1 only when the first ``R`` are all
    relevant. Queries with ``R = 0`` are skipped and counted. The mean is
    NaN when every query is skipped.
    """
    hits, _, R = _ranked_hits(D, rel, valid, tiebreak)
    keep = R > 0
    ap = _ap_at_r(hits[keep], R[keep])
    return MapAtR(float(ap.mean()) if keep.any() else float("nan"), int(keep.sum()), int((~keep).sum()))


def precision_at_k(
    D: np.ndarray, rel: np.ndarray, ks: Iterable[int] = DEFAULT_K, valid: np.ndarray | None = None,
    tiebreak: np.ndarray | None = None,
) -> dict[int, float]:
    """Mean precision of the first ``k`` ranked items, for each ``k`` (default 10 and 100).

    The denominator is ``min(k, database size)``, so a database smaller than
    ``k`` does not cap the score. Queries with ``R = 0`` are skipped, as by
    :func:`map_at_r`.
    """
    hits, n_valid, R = _ranked_hits(D, rel, valid, tiebreak)
    keep = R > 0
    return {int(k): float(_p_at_k(hits[keep], n_valid[keep], int(k)).mean()) if keep.any() else float("nan") for k in ks}


def precision_within_radius(
    D: np.ndarray, rel: np.ndarray, radius: int = DEFAULT_RADIUS, valid: np.ndarray | None = None,
) -> RadiusPrecision:
    """Precision over the database items at Hamming distance ``<= radius`` (default 2), mean over queries.

    A query with nobody inside the radius scores precision 0 (the usual
    deep-hashing convention, as in the DPSH and HashNet papers), and
    ``empty`` is the share of such queries. Ranking plays no part, so ties
    do not matter. Queries with ``R = 0`` are skipped, as by :func:`map_at_r`.
    """
    rel = np.asarray(rel, dtype=bool)
    if valid is not None:
        rel = rel & np.asarray(valid, dtype=bool)
    keep = rel.any(axis=1)
    p, empty = _in_radius(np.asarray(D)[keep], rel[keep], None if valid is None else np.asarray(valid)[keep], radius)
    if not keep.any():
        return RadiusPrecision(float("nan"), float("nan"))
    return RadiusPrecision(float(p.mean()), float(empty.mean()))


# ------------------------------------------------------------------ one method on a labelled set


def cosine_distances(xq: np.ndarray, xb: np.ndarray) -> np.ndarray:
    """``1 - cos`` between rows, ``float64 [nq, nb]`` (a zero row is at distance 1 from everything)."""
    def unit(x):
        x = np.asarray(x, dtype=np.float64)
        return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)

    return 1.0 - unit(xq) @ unit(xb).T


def _distances(emb: np.ndarray, q: slice) -> np.ndarray:
    if emb.dtype == np.uint8:
        return hamming(emb[q, None, :], emb[None, :, :])
    return cosine_distances(emb[q], emb)


def relevant_counts(labels: np.ndarray, files: np.ndarray, chunk: int = CHUNK) -> np.ndarray:
    """R of every item as a query against the others (leave-one-file-out), ``int [n]``."""
    n = len(labels)
    return np.concatenate([
        (relevance(labels[lo : lo + chunk], labels) & leave_one_file_out(files[lo : lo + chunk], files)).sum(axis=1)
        for lo in range(0, n, chunk)
    ]) if n else np.zeros(0, dtype=np.int64)


def score(
    emb: np.ndarray,
    labels: np.ndarray,
    files: np.ndarray,
    *,
    ks: Sequence[int] = DEFAULT_K,
    radius: int = DEFAULT_RADIUS,
    tiebreak: np.ndarray | None = None,
    chunk: int = CHUNK,
) -> Scores:
    """Every metric of one method, each item a query against all items of the other files.

    ``emb``: packed codes ``uint8 [n, bits/8]`` (Hamming ranking, radius
    metric) or a float embedding ``[n, D]`` (cosine ranking; centre it first
    if it should be centred). ``labels: bool [n, C]``; ``files: [n]`` the
    source file of each item. Queries go ``chunk`` at a time, so memory is
    ``O(chunk · n)``.
    """
    emb = np.asarray(emb)
    labels = np.asarray(labels, dtype=bool)
    files = np.asarray(files)
    binary = emb.dtype == np.uint8
    n = len(emb)
    ap, pk, pr, empty = 0.0, dict.fromkeys(ks, 0.0), 0.0, 0.0
    queries = 0
    for lo in range(0, n, chunk):
        q = slice(lo, lo + chunk)
        D = _distances(emb, q)
        valid = leave_one_file_out(files[q], files)
        rel = relevance(labels[q], labels) & valid
        keep = rel.any(axis=1)
        if not keep.any():
            continue
        D, rel, valid = D[keep], rel[keep], valid[keep]
        hits, n_valid, R = _ranked_hits(D, rel, valid, tiebreak)
        queries += int(keep.sum())
        ap += float(_ap_at_r(hits, R).sum())
        for k in ks:
            pk[k] += float(_p_at_k(hits, n_valid, int(k)).sum())
        if binary:
            p, e = _in_radius(D, rel, valid, radius)
            pr += float(p.sum())
            empty += float(e.sum())
    if not queries:
        nan = float("nan")
        return Scores(nan, dict.fromkeys(ks, nan), nan if binary else None, nan if binary else None, 0, n)
    return Scores(
        map_at_r=ap / queries,
        precision_at_k={int(k): v / queries for k, v in pk.items()},
        precision_within_radius=pr / queries if binary else None,
        empty_ball=empty / queries if binary else None,
        queries=queries,
        skipped=n - queries,
    )
