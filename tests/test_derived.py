"""The inputs derived from the log-mel in torch agree with librosa's and scipy's definitions."""

from __future__ import annotations

import librosa
import numpy as np
import scipy.fft
import torch

from musichash.features.audio import log_mel
from musichash.features.derived import chroma, derive, hpss, mel_power, mfcc
from tests.synth_labels import clip


def _mel(present, seed=0):
    return torch.from_numpy(log_mel(clip(present, 3.0, seed)))[None]


def test_hpss_is_librosas_median_filtering_on_the_mel_power():
    mel = _mel(("organ", "drums"))
    h, p = hpss(mel)
    power = mel_power(mel)[0].numpy().T.astype(np.float64)
    want_h, want_p = librosa.decompose.hpss(power, kernel_size=17)
    np.testing.assert_allclose(mel_power(h)[0].numpy().T, want_h, rtol=1e-3, atol=1e-6 * power.max())
    np.testing.assert_allclose(mel_power(p)[0].numpy().T, want_p, rtol=1e-3, atol=1e-6 * power.max())


def test_hpss_puts_sustained_tones_in_the_harmonic_part_and_noise_bursts_in_the_percussive():
    def share(present):
        h, p = hpss(_mel(present))
        return float(mel_power(h).sum() / (mel_power(h).sum() + mel_power(p).sum()))

    assert share(("organ",)) > 0.7 > 0.3 > share(("drums",))


def test_mfcc_is_the_orthonormal_dct_of_the_log_mel():
    mel = _mel(("bell",))
    want = scipy.fft.dct(mel[0].numpy().astype(np.float64), type=2, norm="ortho", axis=-1)[:, :20]
    np.testing.assert_allclose(mfcc(mel)[0].numpy(), want, atol=1e-4)


def test_chroma_finds_the_pitch_class_of_a_low_tone():
    t = np.arange(3 * 16000) / 16000
    a = 0.3 * np.sin(2 * np.pi * 220.0 * t)  # A3: pitch class 9 (C = 0)
    c = chroma(torch.from_numpy(log_mel(a.astype(np.float32)))[None])
    assert int(c[0, 10:-10].mean(0).argmax()) == 9


def test_derive_returns_the_named_inputs_in_order():
    out = derive(_mel(("organ",)), ("mfcc", "mel", "percussive"))
    assert list(out) == ["mfcc", "mel", "percussive"]
    assert [v.shape[-1] for v in out.values()] == [20, 96, 96]
