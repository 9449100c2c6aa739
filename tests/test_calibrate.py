"""Fitting a code model's thresholds (musichash.search.calibrate) and reading them back (search.thresholds)."""

import itertools
import json
import shutil

import numpy as np
import pytest

from musichash.models.registry import get_spec, weights_file
from musichash.search import calibrate
from musichash.search.calibrate import JOINT_TNR, Scored, calibrate_threshold, fit_joint, matched
from musichash.search.thresholds import DEFAULT_MATCH_THRESHOLD, Thresholds


def _clips(rng, n, in_library, shift):
    return [Scored(float(rng.normal(shift, 0.1)),
                   None if rng.random() < 0.1 else float(np.clip(rng.normal(shift, 0.2), -1, 1)),
                   in_library, bool(rng.random() < 0.9))
            for _ in range(n)]


def test_calibrate_threshold_is_the_negative_quantile():
    neg = [0.05, 0.30, 0.10, 0.20, 0.01, 0.02, 0.03, 0.04, 0.15, 0.25]
    assert calibrate_threshold(neg, target_tnr=0.95) == 0.30  # 10 of 10 at or below
    assert calibrate_threshold(neg, target_tnr=0.8) == 0.20  # the 8th smallest
    t = calibrate_threshold(neg, target_tnr=0.7)
    assert t == 0.15 and np.mean(np.array(neg) <= t) >= 0.7
    with pytest.raises(ValueError):
        calibrate_threshold([], 0.95)


def test_joint_fit_keeps_the_most_matches_at_the_target():
    rng = np.random.default_rng(0)
    for _ in range(5):
        pos, neg = _clips(rng, 60, True, 0.5), _clips(rng, 40, False, 0.3)
        t, tc = fit_joint(pos + neg, 0.95)

        def kept(t, tc):
            return sum(c.top1 and matched(c, t, tc) for c in pos)

        def tnr(t, tc):
            return np.mean([not matched(c, t, tc) for c in neg])

        assert tnr(t, tc) >= 0.95
        # every pair of thresholds from the data's own values: none keeps more at 95 % (brute force)
        ts = [c.score for c in pos + neg] + [-9.0]
        tcs = [c.chroma for c in pos + neg if c.chroma is not None] + [-1.0]
        assert kept(t, tc) == max(kept(a, b) for a, b in itertools.product(ts, tcs) if tnr(a, b) >= 0.95)
        # and at least as many as the two thresholds each fitted at 95 % alone
        alone = (calibrate_threshold([c.score for c in neg], 0.95),
                 calibrate_threshold([c.chroma for c in neg if c.chroma is not None], 0.95))
        assert kept(t, tc) >= kept(*alone)
    with pytest.raises(ValueError, match="at least one out-of-library clip"):
        fit_joint(pos, 0.95)


def test_thresholds_come_from_the_model_json_and_say_so():
    shipped = Thresholds.of("crnnh64")
    assert shipped.source and "package-split calibration set" in shipped.source and shipped.target_tnr == JOINT_TNR
    assert shipped.harmony_check and shipped.describe().startswith("thresholds calibrated on the package-split")
    assert [r[0] for r in shipped.by_length] == [2.5, 4.0, 7.5]
    assert "(by clip length: up to 2.5, 4, 7.5 s, and longer)" in shipped.describe()
    other = Thresholds.of("crnnh32")  # no calibration set chose its thresholds
    assert other.source is None and other.match == DEFAULT_MATCH_THRESHOLD and not other.harmony_check
    assert other.describe() == "thresholds: defaults, not calibrated"
    assert Thresholds.of("unittest_crnnh").dedup == 0.5  # a registry config overrides


def test_fitted_thresholds_are_written_into_a_checkpoint_and_read_back(tmp_path):
    """A trained checkpoint (its .safetensors and .json) takes the fit; a library opened on it uses it."""
    shipped = weights_file(get_spec("crnnh16").segment_weights)
    weights = tmp_path / "mine.safetensors"
    shutil.copy(shipped, weights)
    shutil.copy(shipped.with_suffix(".json"), weights.with_suffix(".json"))
    assert "thresholds" not in json.loads(weights.with_suffix(".json").read_text())
    spec = get_spec(str(weights))
    assert Thresholds.of(spec.name).source is None
    rng = np.random.default_rng(3)
    clips = _clips(rng, 50, True, 0.5) + _clips(rng, 50, False, 0.2)
    fitted = calibrate.fit_thresholds(clips, Thresholds.of(spec.name), "my calibration set")
    path = calibrate.write_thresholds(spec, fitted)
    assert path == str(weights.with_suffix(".json"))
    back = Thresholds.of(spec.name)
    assert back == fitted and back.source == "my calibration set" and back.target_tnr == JOINT_TNR
    assert calibrate.rates(clips, back.match, back.chroma)["tnr"] >= JOINT_TNR
    with pytest.raises(ValueError, match="no model JSON"):
        calibrate.write_thresholds(get_spec("interim_vgg_itq64"), fitted)


def test_thresholds_by_clip_length_are_fitted_per_length_and_read_back(tmp_path):
    """Short clips' scores spread wider, out of library too: each length gets its own thresholds,
    each rejecting the target share of its own out-of-library clips; they survive the model JSON."""
    shipped = weights_file(get_spec("crnnh16").segment_weights)
    weights = tmp_path / "mine.safetensors"
    shutil.copy(shipped, weights)
    shutil.copy(shipped.with_suffix(".json"), weights.with_suffix(".json"))
    spec = get_spec(str(weights))
    rng = np.random.default_rng(4)
    clips = []
    for length, shift in ((3.0, 0.45), (10.0, 0.0)):  # 3 s negatives score as high as 10 s positives
        part = _clips(rng, 80, True, 0.6 + shift / 2) + _clips(rng, 80, False, 0.1 + shift)
        clips += [Scored(c.score, c.chroma, c.in_library, c.top1, length) for c in part]
    one = calibrate.fit_thresholds(clips, Thresholds(), "one for all")
    fitted = calibrate.fit_thresholds(clips, Thresholds(), "by length", lengths=[4.0])
    assert fitted.by_length[0][0] == 4.0 and fitted.for_length(3.0).match != fitted.for_length(10.0).match
    by_len = calibrate.rates_by_length(clips, fitted)
    assert all(r["tnr"] >= JOINT_TNR for r in by_len.values())
    # one pair of thresholds for all lengths must reject the 3 s negatives: it matches fewer 10 s clips
    assert by_len[10.0]["tpr"] > calibrate.rates([c for c in clips if c.length == 10.0], one.match, one.chroma)["tpr"]
    calibrate.write_thresholds(spec, fitted)
    assert Thresholds.of(spec.name) == fitted
    assert "(by clip length: up to 4 s, and longer)" in Thresholds.of(spec.name).describe()


def test_a_search_decides_by_its_clips_length():
    from musichash.search.query import decide
    from musichash.search.vote import TrackVote

    t = Thresholds(match=0.2, chroma=None, by_length=((4.0, 0.5, None),))
    vote = [TrackVote(track_id=1, score=0.3, votes=3, hamming=4.0, offset_s=0.0, rate=1.0, span=(0.0, 1.0))]
    assert decide(vote, None, t, 10.0) and not decide(vote, None, t, 3.0)
