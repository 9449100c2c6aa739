"""The seed papers' taggers: every architecture learns generated labelled audio, training resumes exactly,
the scores are right, and Grad-CAM / occlusion point at the evidence."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from musichash.features.audio import log_mel
from musichash.models.explain import explain, tag_target
from musichash.models.taggers import ARCH_REGISTRY, arch_spec, build_tagger, load_tagger
from musichash.train.tagger import TaggerTrainConfig, train_tagger
from musichash.train.tagger_data import LabelledSet, Windows
from musichash.train.tagger_eval import average_precision, compare, predict_files, roc_auc, score
from tests.synth_labels import INSTRUMENTS, multi_label, single_label

TINY = [n for n, s in ARCH_REGISTRY.items() if s.test_only]


def _windows(clips) -> np.ndarray:
    return np.stack([log_mel(y)[:187].astype(np.float16) for y, _ in clips])


@pytest.fixture(scope="module")
def genres():
    """30 one-instrument clips: 12 train, 6 valid, 12 test (4 of each instrument in each split's order)."""
    clips = single_label(10)
    targets = np.eye(3, dtype=np.float32)[[INSTRUMENTS.index(label) for _, label in clips]]
    split = tuple("train" if i < 12 else "valid" if i < 18 else "test" for i in range(len(clips)))
    data = LabelledSet("classes", Path("."), tuple(Path(f"{i}.wav") for i in range(len(clips))), INSTRUMENTS, targets, False, split)
    return data, Windows(_windows(clips), np.arange(len(clips)), ())


@pytest.fixture(scope="module")
def tags():
    """48 clips of one to three instruments at once, tagged with those present: 32 train, 6 valid, 10 test."""
    clips = multi_label(48, seed=3)
    targets = np.array([[name in present for name in INSTRUMENTS] for _, present in clips], dtype=np.float32)
    split = tuple("train" if i < 32 else "valid" if i < 38 else "test" for i in range(len(clips)))
    data = LabelledSet("manifest", Path("."), tuple(Path(f"{i}.wav") for i in range(len(clips))), INSTRUMENTS, targets, True, split)
    return data, Windows(_windows(clips), np.arange(len(clips)), ())


def _test_scores(data, windows, checkpoint):
    model = load_tagger(checkpoint).model
    test = np.flatnonzero(np.asarray(data.split) == "test")
    probs = predict_files(model, windows.mels[test], np.arange(len(test)), len(test), data.multilabel)
    return score(data.targets[test], probs, data.names, data.multilabel)


@pytest.mark.parametrize("arch", TINY)
def test_every_architecture_learns_to_tell_instruments_apart(genres, tmp_path, arch):
    data, windows = genres
    out = tmp_path / "m.safetensors"
    train_tagger(data, windows, arch, out, TaggerTrainConfig(epochs=25, batch=12, lr=1e-2))
    assert _test_scores(data, windows, out).accuracy >= 0.8  # chance: 1/3


@pytest.mark.parametrize("mode", ["concat", "sum", "gate", "none"])
def test_multi_input_branches_exchange_features_in_every_mode_but_none(mode):
    spec = arch_spec(f"unittest_multi_input_{mode}")
    net = build_tagger(spec.arch, spec.config, 3).eval()
    z = [torch.randn(2, 6, 10) for _ in spec.config["inputs"]]
    moved = [z[0], *[zi + 1.0 for zi in z[1:]]]  # every branch but the first changes
    changed = not torch.allclose(net.exchange(z)[0], net.exchange(moved)[0])
    assert changed == (mode != "none")


def test_a_tagger_learns_overlapping_tags(tags, tmp_path):
    data, windows = tags
    out = tmp_path / "m.safetensors"
    train_tagger(data, windows, "unittest_hpss_cnn", out, TaggerTrainConfig(epochs=25, batch=16, lr=1e-2))
    s = _test_scores(data, windows, out)
    assert s.macro_roc_auc >= 0.9, s.to_dict()


def test_training_resumes_where_it_stopped_and_ends_as_an_unbroken_run(genres, tmp_path):
    data, windows = genres
    cfg = dict(batch=6, lr=1e-2)
    whole, part = tmp_path / "whole.safetensors", tmp_path / "part.safetensors"
    full = train_tagger(data, windows, "unittest_crnn_parallel", whole, TaggerTrainConfig(epochs=4, **cfg))
    first = train_tagger(data, windows, "unittest_crnn_parallel", part, TaggerTrainConfig(epochs=2, **cfg))
    rest = train_tagger(data, windows, "unittest_crnn_parallel", part, TaggerTrainConfig(epochs=4, **cfg))
    assert (first.resumed_from, rest.resumed_from, len(rest.history)) == (0, 2, 4)
    assert [h.loss for h in rest.history] == pytest.approx([h.loss for h in full.history], rel=1e-5)
    a, b = load_tagger(whole).model.state_dict(), load_tagger(part).model.state_dict()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-5, atol=1e-6)


def test_resuming_another_architecture_is_refused(genres, tmp_path):
    from musichash.train.tagger import TaggerTrainError

    data, windows = genres
    out = tmp_path / "m.safetensors"
    train_tagger(data, windows, "unittest_fcn3", out, TaggerTrainConfig(epochs=1, batch=12))
    with pytest.raises(TaggerTrainError, match="holds unittest_fcn3 trained on"):
        train_tagger(data, windows, "unittest_fcn4", out, TaggerTrainConfig(epochs=2, batch=12))


def test_roc_and_pr_auc_agree_with_their_definitions():
    rng = np.random.default_rng(0)
    y = rng.random(60) < 0.3
    s = np.round(rng.random(60) + 0.5 * y, 1)  # ties on purpose
    pos, neg = s[y], s[~y]
    pairs = (pos[:, None] > neg[None, :]).mean() + 0.5 * (pos[:, None] == neg[None, :]).mean()
    assert roc_auc(y, s) == pytest.approx(pairs)
    order = np.lexsort((y, -s))
    hits = y[order]
    assert average_precision(y, s) == pytest.approx(np.mean([hits[: k + 1].mean() for k in np.flatnonzero(hits)]))
    assert np.isnan(roc_auc(np.ones(5), np.arange(5.0)))


def test_genre_scores_count_a_confusion_matrix():
    y = np.eye(3)[[0, 0, 1, 2]]
    p = np.eye(3)[[0, 1, 1, 2]]
    s = score(y, p, ("a", "b", "c"), False)
    assert s.accuracy == 0.75
    assert s.confusion == ((1, 1, 0), (0, 1, 0), (0, 0, 1))


def test_the_paired_bootstrap_finds_the_better_model_and_no_difference_between_equals():
    rng = np.random.default_rng(1)
    y = (rng.random((200, 4)) < 0.4).astype(np.float32)
    good = y + rng.normal(0, 0.5, y.shape)
    poor = y + rng.normal(0, 2.0, y.shape)
    c = compare(y, good, poor, tuple("abcd"), True, resamples=200)
    assert c.diff > 0 and c.ci_low > 0 and c.p < 0.01
    same = compare(y, good, good, tuple("abcd"), True, resamples=50)
    assert same.diff == 0 and same.p == 1.0


def test_grad_cam_and_occlusion_light_up_the_half_where_the_tagged_instrument_plays(tags, tmp_path):
    data, windows = tags
    out = tmp_path / "m.safetensors"
    train_tagger(data, windows, "unittest_fcn4", out, TaggerTrainConfig(epochs=30, batch=16, lr=1e-2))
    ckpt = load_tagger(out)
    rng = np.random.default_rng(5)
    n = 3 * 16000
    from tests.synth_labels import instrument

    for bell_half in (0, 1):
        y = 0.6 * instrument("drums", n, rng) + 0.01 * rng.standard_normal(n)
        bell = instrument("bell", n // 2, rng)
        y[bell_half * (n // 2) : bell_half * (n // 2) + n // 2] += bell
        mel = log_mel((0.3 * y / np.abs(y).max()).astype(np.float32))
        e = explain(ckpt.model, mel, tag_target(INSTRUMENTS.index("bell"), True), "bell")
        half = len(mel) // 2
        for method, m in e.maps.items():
            share = m[half:].sum() / m.sum() if bell_half else m[:half].sum() / m.sum()
            assert share >= 0.7, (method, bell_half, share)
