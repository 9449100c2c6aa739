"""benchmarks/queries.py: the threshold table of an evaluation run (the fit itself: test_calibrate.py)."""

import numpy as np

from benchmarks import queries


def _outcomes(rng, n, in_library, shift):
    return [queries.Outcome("t", 5.0, "clean", in_library, bool(rng.random() < 0.9), True, None,
                            float(rng.normal(shift, 0.1)), 0.0,
                            chroma=None if rng.random() < 0.1 else float(np.clip(rng.normal(shift, 0.2), -1, 1)))
            for _ in range(n)]


def test_threshold_data_reports_the_joint_fit():
    rng = np.random.default_rng(1)
    outs = _outcomes(rng, 40, True, 0.5) + _outcomes(rng, 40, False, 0.3)
    d = queries.threshold_data(outs, 0.4, 0.4)
    assert d["joint_all"]["tnr"] >= queries.JOINT_TNR == 0.975
    assert set(d["joint_half"]) == {"t", "tc", "tnr", "tpr"}
    table = queries.threshold_table(d, "model default", shipping=" (for shipping)")
    assert "| both fitted together to 97.5% on all of them (for shipping): " in table
    assert "queries (for shipping)" not in table  # the thresholds fitted one at a time are not the shipped ones
    no_chroma = [queries.Outcome(o.track, o.length, o.condition, o.in_library, o.top1, o.top10, None, o.score, 0.0)
                 for o in outs]
    assert "joint_all" not in queries.threshold_data(no_chroma, 0.4)
