"""Time-consistent voting: from per-window nearest neighbours to ranked tracks.

A query clip is cut into the same 3 s windows as the library. Each query
window brings back its k nearest library segments by Hamming distance. When
the clip really comes from a library track, many of those hits agree on one
thing: the offset ``t - (rate * q_time)`` of the clip inside the track. Random
neighbours scatter over every track and every offset. So for each track we
look for the offset (and, for tempo-changed copies, the playback rate) that
the most query windows support, weighting each window by how close its hit
is, and rank tracks by that support.

Everything here is plain numpy and fully vectorised over hits, so the cost is
a few sorts of ``2 * n_rates * m`` rows, whatever the number of tracks.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

# The score divides by at least this many windows. One random neighbour can
# be the whole support of a 1- or 2-window clip (3-4 s); without a floor such
# a clip would match on a lucky distance alone. Short true clips still match
# when their segments are near-identical.
MIN_SCORE_WINDOWS = 3

# Tempo changes of a few percent are common (DJ edits, radio speed-up); the
# offset then drifts linearly with the query time, so we also vote over rates.
DEFAULT_MAX_RATE_CHANGE = 0.05

# More rate hypotheses cost time and give random hits more chances to line
# up; beyond this we widen the rate step instead (very long queries).
_MAX_RATES = 41


@dataclass(frozen=True)
class SegmentHits:
    """Flat list of query-window -> library-segment neighbours.

    q_index: int64 [m]    which query window the hit belongs to (< n_query_windows)
    q_time: float64 [m]   start of that query window in the clip, seconds
    track_id: int64 [m]   library track of the neighbour segment
    t_time: float64 [m]   start of the neighbour segment in its track, seconds
    hamming: int64 [m]    Hamming distance between the two codes
    bits: int             code length, to turn distances into similarities
    n_query_windows: int  nq, the denominator of the score (windows without
                          any hit still count against the clip), at least
                          MIN_SCORE_WINDOWS
    distance: float [m]   what the vote weighs hits by, in bits, when not the
                          Hamming distance (``bits.asymmetric_distance`` of a
                          query's unquantised codes); None: ``hamming``
    """

    q_index: np.ndarray
    q_time: np.ndarray
    track_id: np.ndarray
    t_time: np.ndarray
    hamming: np.ndarray
    bits: int
    n_query_windows: int
    distance: np.ndarray | None = None

    def __post_init__(self) -> None:
        m = len(self.q_index)
        for name in ("q_time", "track_id", "t_time", "hamming", "distance"):
            if getattr(self, name) is not None and len(getattr(self, name)) != m:
                raise ValueError(f"SegmentHits.{name} has {len(getattr(self, name))} rows, q_index has {m}")
        if self.bits <= 0:
            raise ValueError(f"bits must be positive, got {self.bits}")
        if m and (self.q_index.min() < 0 or self.q_index.max() >= self.n_query_windows):
            raise ValueError(f"q_index must lie in [0, {self.n_query_windows})")

    @classmethod
    def from_knn(
        cls,
        q_times: np.ndarray,
        D: np.ndarray,
        I: np.ndarray,
        seg_track: np.ndarray,
        seg_time: np.ndarray,
        bits: int,
        distance: np.ndarray | None = None,
    ) -> SegmentHits:
        """Flatten a kNN result over library segments.

        q_times: float [nq]      start of each query window in the clip
        D: int [nq, k]           Hamming distances (FAISS gives int32)
        I: int64 [nq, k]         library segment ids, -1 where the index had
                                 fewer than k neighbours
        seg_track: int64 [N]     track id of each library segment
        seg_time: float [N]      start time of each library segment in its track
        distance: float [nq, k]  the vote's distances, if not D (``SegmentHits.distance``)
        """
        q_times = np.asarray(q_times, dtype=np.float64)
        D = np.asarray(D)
        I = np.asarray(I, dtype=np.int64)
        nq = len(q_times)
        if D.shape != I.shape or I.ndim != 2 or I.shape[0] != nq:
            raise ValueError(f"D {D.shape} and I {I.shape} must both be [nq={nq}, k]")
        rows, cols = np.nonzero(I >= 0)
        seg = I[rows, cols]
        # pick the hits first, then convert: the tables hold every library segment
        return cls(
            q_index=rows.astype(np.int64),
            q_time=q_times[rows],
            track_id=np.asarray(seg_track)[seg].astype(np.int64),
            t_time=np.asarray(seg_time)[seg].astype(np.float64),
            # FAISS returns int32 distances; cast explicitly so sums never overflow.
            hamming=D[rows, cols].astype(np.int64),
            bits=int(bits),
            n_query_windows=nq,
            distance=None if distance is None else np.asarray(distance, dtype=np.float64)[rows, cols],
        )

    @property
    def weighed(self) -> np.ndarray:
        """The distances the vote weighs hits by: ``distance``, else ``hamming``. float [m]"""
        return np.asarray(self.hamming if self.distance is None else self.distance, dtype=np.float64)

    def select(self, keep: np.ndarray) -> SegmentHits:
        """The hits where ``keep`` (bool [m]) is true."""
        return SegmentHits(
            self.q_index[keep], self.q_time[keep], self.track_id[keep], self.t_time[keep], self.hamming[keep],
            self.bits, self.n_query_windows, None if self.distance is None else self.distance[keep],
        )


@dataclass(frozen=True)
class TrackVote:
    """One candidate track for a query clip.

    offset_s: where the clip starts in the track, seconds
    score:    weighted fraction of query windows that support this offset, in [0, 1]
    votes:    number of query windows that support it
    hamming:  median Hamming distance of the supporting windows' best hits
              (lower median, so it is a distance that was actually observed)
    span:     (first, last) start time of the supporting library segments
    rate:     track seconds per clip second (1.05: the clip is the track sped
              up by 5 %, so it covers 5 % more track time than its length)
    """

    track_id: int
    offset_s: float
    score: float
    votes: int
    hamming: int
    span: tuple[float, float]
    rate: float = 1.0


def hit_weight(hamming: np.ndarray, bits: int) -> np.ndarray:
    """Similarity weight of each hit, in [0, 1].

    hamming: int [m] -> float [m]

    Unrelated codes sit at bits/2 on average, so the weight is 0 there and
    grows quadratically to 1 at distance 0: a near-duplicate segment counts
    much more than a neighbour that is merely the luckiest of a large
    library (those cluster around 0.2-0.3 * bits).
    """
    x = 1.0 - 2.0 * np.asarray(hamming, dtype=np.float64) / bits
    return np.clip(x, 0.0, 1.0) ** 2


def _rate_grid(q_time: np.ndarray, tol: float, max_rate_change: float) -> np.ndarray:
    """Candidate rates [n_rates], symmetric around 1, 1.0 included.

    A rate error of delta moves the last window's offset by delta * span; a
    step of tol / span keeps that within tol/2 of the nearest grid rate.
    """
    span = float(q_time.max() - q_time.min()) if len(q_time) else 0.0
    if max_rate_change <= 0 or span * max_rate_change <= tol / 2:
        return np.ones(1)
    n_side = min(math.ceil(max_rate_change * span / tol), _MAX_RATES // 2)
    return 1.0 + np.linspace(-max_rate_change, max_rate_change, 2 * n_side + 1)


def _weighted_median(x: np.ndarray, w: np.ndarray) -> float:
    """Lower weighted median. x, w: float [n], w > 0."""
    order = np.argsort(x, kind="stable")
    cw = np.cumsum(w[order])
    return float(x[order][np.searchsorted(cw, cw[-1] / 2.0)])


def _refine_rate(qt: np.ndarray, tt: np.ndarray, w: np.ndarray, rate: float, max_rate_change: float) -> float:
    """Weighted least-squares slope of tt over qt, within the allowed rates.

    qt, tt, w: float [n], the supporting hits of one track.

    The grid rate is only good to about tol / span, which leaves the offset
    at q_time = 0 off by up to tol / 2; the fitted slope removes that. The
    hits are already confined to one 2 * tol window, so plain least squares
    is robust enough here.
    """
    if max_rate_change <= 0 or len(qt) < 2:
        return rate
    qm = np.average(qt, weights=w)
    var = np.average((qt - qm) ** 2, weights=w)
    if var <= 0:
        return rate
    slope = np.average((qt - qm) * (tt - np.average(tt, weights=w)), weights=w) / var
    return float(np.clip(slope, 1.0 - max_rate_change, 1.0 + max_rate_change))


def vote(
    hits: SegmentHits,
    *,
    offset_tolerance_s: float = 0.75,
    max_tracks: int = 10,
    max_rate_change: float = DEFAULT_MAX_RATE_CHANGE,
    share_slack: int | None = None,
) -> list[TrackVote]:
    """Rank library tracks by time-consistent support from the query windows.

    ``share_slack``: when set, a query window's weight is shared among the
    distinct tracks it hits within ``share_slack`` bits of its best hit, so a
    window that fits many tracks equally well (a generic texture) counts for
    little, and one that singles out a track counts fully.

    For every candidate rate r, each hit's offset ``t_time - r * q_time`` is
    dropped into two overlapping windows of width 2 * tolerance (sliding by
    one tolerance), so any cluster tighter than the tolerance falls wholly in
    one of them. Within a (track, rate, window) a query window counts once,
    with its best hit's weight; the score is that sum over n_query_windows
    (or MIN_SCORE_WINDOWS, if larger). Each track keeps its best (rate,
    window); the rate is then refit on the supporting hits and the offset is
    the weighted median of their ``t_time - rate * q_time``.

    Hits with a negative track id, or at chance distance (weight 0), are no
    evidence and are ignored. Returns at most max_tracks votes, best first,
    ties broken by track id.
    """
    if offset_tolerance_s <= 0:
        raise ValueError(f"offset_tolerance_s must be positive, got {offset_tolerance_s}")
    w = hit_weight(hits.weighed, hits.bits)
    if share_slack is not None and len(w):
        w = w / _close_tracks(hits, share_slack)
    keep = (np.asarray(hits.track_id) >= 0) & (w > 0)
    if not keep.any() or max_tracks <= 0:
        return []
    qi = np.asarray(hits.q_index, dtype=np.int64)[keep]
    qt = np.asarray(hits.q_time, dtype=np.float64)[keep]
    tr = np.asarray(hits.track_id, dtype=np.int64)[keep]
    tt = np.asarray(hits.t_time, dtype=np.float64)[keep]
    dd = np.asarray(hits.hamming, dtype=np.int64)[keep]
    w = w[keep]
    m = len(qi)

    # Order hits by track, query window and best weight first (ties to the
    # earlier hit, so results are stable). A stable sort by group below then
    # keeps that order inside each group, so the first row of each query
    # window's run is its single vote.
    order = np.lexsort((np.arange(m), -w, qi, tr))
    qi, qt, tr, tt, dd, w = qi[order], qt[order], tr[order], tt[order], dd[order], w[order]

    rates = _rate_grid(qt, offset_tolerance_s, max_rate_change)
    n_rates = len(rates)
    off = tt[None, :] - rates[:, None] * qt[None, :]  # [n_rates, m]
    b = np.floor(off / offset_tolerance_s).astype(np.int64)
    b -= b.min() - 1  # window b - 1 must stay >= 0

    # Rows: every (rate, hit) twice, once for each window holding its bin,
    # in hit order within each rate, so a group's rows stay in hit order.
    # One int64 key per (track, rate, window): at most m tracks, 41 rates and
    # (track length / tol) windows, far below 2**63 for any real library.
    r_idx = np.repeat(np.arange(n_rates), 2 * m)
    h_idx = np.tile(np.repeat(np.arange(m), 2), n_rates)
    win = np.stack([b, b - 1], axis=-1).ravel()
    tr_dense = np.unique(tr, return_inverse=True)[1]
    key = (tr_dense[h_idx] * n_rates + r_idx) * (int(b.max()) + 1) + win
    order = np.argsort(key, kind="stable")
    key, r_idx, h_idx, win = key[order], r_idx[order], h_idx[order], win[order]
    g_q = qi[h_idx]
    new_group = np.ones(len(order), dtype=bool)
    new_group[1:] = key[1:] != key[:-1]
    first_of_q = new_group.copy()
    first_of_q[1:] |= g_q[1:] != g_q[:-1]
    r_idx, h_idx, win, new_group = r_idx[first_of_q], h_idx[first_of_q], win[first_of_q], new_group[first_of_q]

    group = np.cumsum(new_group) - 1  # [rows] -> group id
    starts = np.flatnonzero(new_group)
    g_score = np.bincount(group, weights=w[h_idx]) / max(hits.n_query_windows, MIN_SCORE_WINDOWS)
    g_track = tr[h_idx[starts]]
    g_rate = r_idx[starts]
    g_dev = np.abs(rates[g_rate] - 1.0)

    # Best group per track: highest score, then the rate nearest 1, then the
    # earliest window, so equal evidence always resolves the same way.
    best = np.lexsort((win[starts], g_dev, -g_score, g_track))
    first_of_track = np.ones(len(best), dtype=bool)
    first_of_track[1:] = g_track[best[1:]] != g_track[best[:-1]]
    cand = best[first_of_track]
    cand = cand[np.lexsort((g_track[cand], -g_score[cand]))][:max_tracks]

    ends = np.append(starts[1:], len(group))
    out = []
    for g in cand:
        rows = h_idx[starts[g] : ends[g]]
        rate = _refine_rate(qt[rows], tt[rows], w[rows], float(rates[g_rate[g]]), max_rate_change)
        d_sorted = np.sort(dd[rows])
        out.append(
            TrackVote(
                track_id=int(g_track[g]),
                offset_s=_weighted_median(tt[rows] - rate * qt[rows], w[rows]),
                score=float(min(g_score[g], 1.0)),
                votes=len(rows),
                hamming=int(d_sorted[(len(d_sorted) - 1) // 2]),
                span=(float(tt[rows].min()), float(tt[rows].max())),
                rate=rate,
            )
        )
    return out


def _close_tracks(hits: SegmentHits, slack: int) -> np.ndarray:
    """For each hit, how many distinct tracks its query window hits within ``slack`` bits of its best. -> float [m]"""
    qi = np.asarray(hits.q_index, dtype=np.int64)
    d = hits.weighed
    tr = np.asarray(hits.track_id, dtype=np.int64)
    best = np.full(hits.n_query_windows, np.inf)
    np.minimum.at(best, qi, d)
    close = d <= best[qi] + slack
    pairs = np.unique(np.stack([qi[close], tr[close]], axis=1), axis=0)
    counts = np.bincount(pairs[:, 0], minlength=hits.n_query_windows) if len(pairs) else np.zeros(hits.n_query_windows)
    return np.maximum(counts[qi], 1).astype(np.float64)
