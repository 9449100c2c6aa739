"""Time-consistent voting on seeded synthetic kNN results."""

from __future__ import annotations

import numpy as np
import pytest

from musichash.search.query import decide
from musichash.search.thresholds import Thresholds
from musichash.search.vote import SegmentHits, TrackVote, hit_weight, vote

BITS = 64
HOP = 1.28
K = 10


class SyntheticKnn:
    """A library of random tracks and kNN results for one query clip.

    Random neighbours are uniform over library segments at 14..26 bits (the
    lucky tail of a large library for 64-bit codes); planted true hits sit at
    2..12 bits on the line ``t = offset + rate * q_time`` plus up to 0.1 s of
    jitter, replacing the first neighbour of ``hit_frac`` of the windows.
    """

    def __init__(self, seed: int, n_tracks: int = 200):
        self.rng = np.random.default_rng(seed)
        lengths = self.rng.uniform(120.0, 300.0, n_tracks)
        n_seg = (lengths // HOP).astype(np.int64)
        self.seg_track = np.repeat(np.arange(n_tracks, dtype=np.int64), n_seg)
        self.seg_time = np.concatenate([np.arange(n) * HOP for n in n_seg])
        self.lengths = lengths

    def query(self, nq: int, *, plant: int | None = None, offset: float = 0.0, rate: float = 1.0,
              hit_frac: float = 1.0) -> tuple[SegmentHits, np.ndarray]:
        rng = self.rng
        q_times = np.arange(nq) * HOP
        I = rng.integers(0, len(self.seg_track), size=(nq, K))
        D = rng.integers(14, 27, size=(nq, K))
        seg_track, seg_time = self.seg_track, self.seg_time
        planted = np.zeros(nq, dtype=bool)
        if plant is not None:
            planted[rng.choice(nq, size=int(np.ceil(hit_frac * nq)), replace=False)] = True
            t = offset + rate * q_times[planted] + rng.uniform(-0.1, 0.1, planted.sum())
            I[planted, 0] = len(seg_track) + np.arange(planted.sum())
            D[planted, 0] = rng.integers(2, 13, size=planted.sum())
            seg_track = np.concatenate([seg_track, np.full(planted.sum(), plant)])
            seg_time = np.concatenate([seg_time, t])
        return SegmentHits.from_knn(q_times, D.astype(np.int32), I, seg_track, seg_time, BITS), planted


def match(votes: list[TrackVote]) -> bool:
    """The search's decision at the uncalibrated default threshold, without a harmony check."""
    return decide(votes, None, Thresholds(), seconds=10.0)  # no thresholds by length: any length


def top_score(votes: list[TrackVote]) -> float:
    return votes[0].score if votes else 0.0


@pytest.mark.parametrize("rate", [1.0, 0.95, 1.05])
@pytest.mark.parametrize("seed", range(5))
def test_planted_track_wins_with_its_offset(seed, rate):
    lib = SyntheticKnn(seed)
    offset = float(lib.rng.uniform(0.0, 80.0))
    hits, _ = lib.query(nq=24, plant=7, offset=offset, rate=rate, hit_frac=0.6)
    votes = vote(hits)
    assert votes[0].track_id == 7
    assert abs(votes[0].offset_s - offset) < 0.2
    assert abs(votes[0].rate - rate) <= 0.02
    assert votes[0].votes >= int(np.ceil(0.6 * 24))
    assert 0.0 < votes[0].score <= 1.0
    lo, hi = votes[0].span
    assert offset - 0.2 <= lo <= hi <= offset + rate * 23 * HOP + 0.2


def test_results_are_ranked_and_bounded():
    lib = SyntheticKnn(11)
    hits, _ = lib.query(nq=12, plant=3, offset=30.0)
    votes = vote(hits, max_tracks=5)
    assert len(votes) == 5
    keys = [(-v.score, v.track_id) for v in votes]
    assert keys == sorted(keys)
    assert len({v.track_id for v in votes}) == 5


def brute_force_top(hits: SegmentHits, tol: float) -> float:
    """Best rate-1 score over the windows [j * tol, (j + 2) * tol), by loops."""
    w = np.clip(1.0 - 2.0 * hits.hamming / hits.bits, 0.0, 1.0) ** 2
    b = np.floor((hits.t_time - hits.q_time) / tol).astype(int)
    best = 0.0
    for tr in set(hits.track_id.tolist()):
        for j in set(b.tolist()) | set((b - 1).tolist()):
            per_q = {}
            for i in range(len(b)):
                if hits.track_id[i] == tr and b[i] in (j, j + 1) and w[i] > 0:
                    per_q[hits.q_index[i]] = max(per_q.get(hits.q_index[i], 0.0), w[i])
            best = max(best, sum(per_q.values()) / max(hits.n_query_windows, 3))
    return best


@pytest.mark.parametrize("seed", range(5))
def test_score_matches_brute_force(seed):
    lib = SyntheticKnn(100 + seed, n_tracks=5)
    hits, _ = lib.query(nq=10, plant=2, offset=12.0, hit_frac=0.5)
    assert top_score(vote(hits, max_rate_change=0.0)) == pytest.approx(brute_force_top(hits, 0.75))


@pytest.mark.parametrize("seed", range(20))
def test_score_lies_between_what_its_windows_can_give(seed):
    """Properties of the score, whatever the hits: a planted track's score is at least the share of
    windows planted times the weight of the farthest planted hit, and no track's score exceeds the
    mean over windows of each window's best weight (a window counts once, at its best hit)."""
    lib = SyntheticKnn(500 + seed)
    nq = int(lib.rng.integers(4, 25))
    frac = float(lib.rng.uniform(0.3, 1.0))
    hits, planted = lib.query(nq, plant=5, offset=float(lib.rng.uniform(0, 60)), hit_frac=frac)
    votes = vote(hits, max_rate_change=0.0, max_tracks=500)
    w = hit_weight(hits.hamming, BITS)
    best_per_window = np.zeros(nq)
    np.maximum.at(best_per_window, hits.q_index, w)
    ceiling = best_per_window.sum() / max(nq, 3)
    assert all(v.score <= ceiling + 1e-12 for v in votes)
    mine = next(v for v in votes if v.track_id == 5)
    floor = planted.sum() * hit_weight(np.array([12]), BITS)[0] / max(nq, 3)
    assert mine.score >= floor - 1e-12


def test_repeated_votes_of_one_window_count_once():
    # Window 0 hits track 5 three times at the same offset; window 1 once.
    hits = SegmentHits(
        q_index=np.array([0, 0, 0, 1]),
        q_time=np.array([0.0, 0.0, 0.0, HOP]),
        track_id=np.array([5, 5, 5, 5]),
        t_time=np.array([10.0, 10.1, 10.2, 10.0 + HOP]),
        hamming=np.array([0, 8, 0, 0]),
        bits=BITS,
        n_query_windows=4,
    )
    (v,) = vote(hits)
    assert v.votes == 2
    assert v.score == pytest.approx(2 / 4)
    assert v.offset_s == pytest.approx(10.0)
    assert v.hamming == 0


def test_window_counts_once_across_a_bin_edge():
    # Window 0's two hits fall in neighbouring bins of one voting window, with
    # window 1's hit between them in hit order.
    hits = SegmentHits(
        q_index=np.array([0, 1, 0]),
        q_time=np.array([0.0, HOP, 0.0]),
        track_id=np.array([5, 5, 5]),
        t_time=np.array([10.0, 10.0 + HOP, 10.6]),
        hamming=np.array([0, 0, 0]),
        bits=BITS,
        n_query_windows=4,
    )
    (v,) = vote(hits)
    assert (v.votes, v.score) == (2, 0.5)


def test_missing_neighbours_are_ignored():
    q_times = np.array([0.0, HOP, 2 * HOP])
    I = np.array([[0, -1], [-1, -1], [1, -1]])
    D = np.array([[4, 0], [0, 0], [4, 0]], dtype=np.int32)
    seg_track = np.array([9, 9], dtype=np.int64)
    seg_time = np.array([50.0, 50.0 + 2 * HOP])
    hits = SegmentHits.from_knn(q_times, D, I, seg_track, seg_time, BITS)
    assert len(hits.q_index) == 2
    assert hits.hamming.dtype == np.int64
    (v,) = vote(hits)
    assert (v.track_id, v.votes, v.offset_s, v.hamming) == (9, 2, 50.0, 4)
    assert v.score == pytest.approx(2 * (1 - 8 / 64) ** 2 / 3)


def test_empty_hits_give_no_votes():
    empty = SegmentHits.from_knn(np.zeros(3), np.zeros((3, 4), np.int32), np.full((3, 4), -1),
                                 np.zeros(0, np.int64), np.zeros(0), BITS)
    assert vote(empty) == []
    assert not match(vote(empty))
    none = SegmentHits.from_knn(np.zeros(0), np.zeros((0, 4), np.int32), np.zeros((0, 4), np.int64),
                                np.zeros(0, np.int64), np.zeros(0), BITS)
    assert vote(none) == []


def test_chance_level_hits_are_no_evidence():
    hits = SegmentHits(np.array([0]), np.array([0.0]), np.array([1]), np.array([5.0]), np.array([32]), BITS, 1)
    assert vote(hits) == []


def test_ties_break_by_track_id():
    hits = SegmentHits(np.array([0, 1]), np.array([0.0, 0.0]), np.array([8, 3]), np.array([5.0, 9.0]),
                       np.array([4, 4]), BITS, 2)
    assert [v.track_id for v in vote(hits)] == [3, 8]


def test_invalid_inputs_raise():
    with pytest.raises(ValueError):
        SegmentHits(np.array([3]), np.array([0.0]), np.array([1]), np.array([5.0]), np.array([1]), BITS, 2)
    with pytest.raises(ValueError):
        SegmentHits.from_knn(np.zeros(2), np.zeros((3, 4)), np.zeros((3, 4), np.int64), np.zeros(1, np.int64),
                             np.zeros(1), BITS)


def test_short_clip_needs_a_near_identical_segment():
    # A 3 s clip has one window: a lucky random neighbour must not decide.
    lucky = SegmentHits(np.array([0]), np.array([0.0]), np.array([4]), np.array([20.0]), np.array([14]), BITS, 1)
    exact = SegmentHits(np.array([0]), np.array([0.0]), np.array([4]), np.array([20.0]), np.array([1]), BITS, 1)
    assert not match(vote(lucky))
    assert match(vote(exact))


def test_asymmetric_distance_weighs_bits_by_confidence():
    from musichash.bits import asymmetric_distance, hamming

    rng = np.random.default_rng(1)
    x = rng.normal(size=(4, 64)).astype(np.float32)
    db = rng.integers(0, 256, size=(4, 9, 8), dtype=np.uint8)
    q = np.packbits(x > 0, axis=1)
    # equal magnitudes, or none at all: the Hamming distance
    np.testing.assert_allclose(asymmetric_distance(np.sign(x), db), hamming(q[:, None], db), atol=1e-4)
    np.testing.assert_allclose(asymmetric_distance(np.zeros_like(x), db), hamming(np.zeros_like(q)[:, None], db), atol=1e-4)
    # one flipped bit costs more where the query is sure of it
    v = np.full((1, 64), 0.5, dtype=np.float32)
    v[0, 0], v[0, 1] = 0.01, 0.99
    code = np.packbits(v > 0, axis=1)
    flip0, flip1 = code.copy(), code.copy()
    flip0[0, 0] ^= 0x80
    flip1[0, 0] ^= 0x40
    d = asymmetric_distance(v, np.stack([code, flip0, flip1], axis=1))[0]
    assert d[0] == 0 and 0 < d[1] < 1 < d[2]


def test_vote_weighs_hits_by_their_distance_when_given():
    """Same Hamming distances, but the distance the vote is given ranks track 2 first."""
    times = np.arange(4) * 1.5
    D = np.full((4, 2), 10)
    I = np.tile(np.array([[0, 1]]), (4, 1)) + np.arange(4)[:, None] * 2
    seg_track = np.tile(np.array([1, 2]), 4)
    seg_time = np.repeat(times, 2)
    dist = np.tile(np.array([[12.0, 3.0]]), (4, 1))
    plain = vote(SegmentHits.from_knn(times, D, I, seg_track, seg_time, 64))
    assert [v.track_id for v in plain] == [1, 2]  # a tie, broken by id
    weighed = vote(SegmentHits.from_knn(times, D, I, seg_track, seg_time, 64, distance=dist))
    assert [v.track_id for v in weighed] == [2, 1] and weighed[0].hamming == 10
    assert weighed[0].score > plain[0].score


def test_a_window_that_fits_many_tracks_counts_for_less():
    """Windows 0-2 hit tracks 1 and 2 equally well (a generic texture); windows 3-4 single out track 3.
    Each vote alone ranks 1 and 2 first (3 of 5 windows); sharing a window's weight among the tracks
    it hits within the slack ranks track 3 first, as the search does by default."""
    from musichash.search.query import DEFAULT_SHARE_SLACK, Settings, rank

    q = np.array([0, 0, 1, 1, 2, 2, 3, 4])
    hits = SegmentHits(q, q * HOP, np.array([1, 2, 1, 2, 1, 2, 3, 3]), 10.0 + q * HOP,
                       np.full(8, 4), BITS, 5)
    plain = vote(hits)
    assert [v.track_id for v in plain][:2] == [1, 2] and plain[0].score > plain[2].score
    shared = vote(hits, share_slack=DEFAULT_SHARE_SLACK)
    assert shared[0].track_id == 3
    assert shared[0].score == pytest.approx(plain[2].score)  # its windows hit it alone: nothing shared
    assert shared[1].score == pytest.approx(plain[0].score / 2)
    assert DEFAULT_SHARE_SLACK is not None and rank(hits, Settings())[0].track_id == 3
