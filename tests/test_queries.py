"""benchmarks/queries.py: how the match thresholds are fitted (brute force as ground truth)."""

import itertools

import numpy as np
import pytest
from scripts import load_script


@pytest.fixture(scope="module")
def queries():
    import sys

    yield load_script("benchmarks/queries.py", "benchmarks_queries")
    sys.modules.pop("benchmarks_queries")


def _outcomes(queries, rng, n, in_library, shift):
    return [queries.Outcome("t", 5.0, "clean", in_library, bool(rng.random() < 0.9), True, None,
                            float(rng.normal(shift, 0.1)), 0.0,
                            chroma=None if rng.random() < 0.1 else float(np.clip(rng.normal(shift, 0.2), -1, 1)))
            for _ in range(n)]


def test_joint_fit_keeps_the_most_matches_at_the_target(queries):
    rng = np.random.default_rng(0)
    for trial in range(5):
        pos = _outcomes(queries, rng, 60, True, 0.5)
        neg = _outcomes(queries, rng, 40, False, 0.3)
        hit = np.array([o.top1 for o in pos])
        t, tc = queries.fit_joint(pos, hit, neg, 0.95)

        def kept(t, tc):
            return sum(h and queries.matched(o, t, tc) for o, h in zip(pos, hit))

        def tnr(t, tc):
            return np.mean([not queries.matched(o, t, tc) for o in neg])

        assert tnr(t, tc) >= 0.95
        # every pair of thresholds from the data's own values: none keeps more at 95 %
        ts = [o.score for o in pos + neg] + [-9.0]
        tcs = [o.chroma for o in pos + neg if o.chroma is not None] + [-1.0]
        best = max(kept(a, b) for a, b in itertools.product(ts, tcs) if tnr(a, b) >= 0.95)
        assert kept(t, tc) == best
        # and at least as many as the two thresholds each fitted at 95 % alone
        alone_t = queries.calibrate_threshold([0.0], [o.score for o in neg], 0.95)
        alone_c = queries.calibrate_threshold([0.0], [o.chroma for o in neg if o.chroma is not None], 0.95)
        assert kept(t, tc) >= kept(alone_t, alone_c)


def test_threshold_data_reports_the_joint_fit(queries):
    rng = np.random.default_rng(1)
    outs = _outcomes(queries, rng, 40, True, 0.5) + _outcomes(queries, rng, 40, False, 0.3)
    d = queries.threshold_data(outs, 0.4, 0.4)
    assert d["joint_all"]["tnr"] >= queries.JOINT_TNR == 0.975
    assert set(d["joint_half"]) == {"t", "tc", "tnr", "tpr"}
    table = queries.threshold_table(d, "model default", shipping=" (for shipping)")
    assert "| both fitted together to 97.5% on all of them (for shipping): " in table
    assert "queries (for shipping)" not in table  # the thresholds fitted one at a time are not the shipped ones
    no_chroma = [queries.Outcome(o.track, o.length, o.condition, o.in_library, o.top1, o.top10, None, o.score, 0.0)
                 for o in outs]
    assert "joint_all" not in queries.threshold_data(no_chroma, 0.4)
