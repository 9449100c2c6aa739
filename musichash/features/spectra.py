"""Dedup's last check: whether two files the codes align hold the same recording, from their audio.

Codes are made to survive noise, re-encoding and other voicings, so an
alternate arrangement of a score (the same notes, in step, on other
instruments) lines up with the original much as a re-encode does. Their
spectrograms do not: a copy's follows the original's bin for bin whatever its
gain, codec, trim or fade, while another instrument puts its energy elsewhere
(benchmarks/HISTORY.md, "Dedup checked on the audio").

``spectrogram_agreement`` compares two log-mel spectrograms along the pair's alignment: a's
audio in chunks of ``CHUNK_S``, each correlated with b's at every shift within
``SLACK_S`` of where the alignment puts it (the vote's offset can be a beat or
a window off in repetitive music), and the median over chunks of each chunk's
best correlation. Levels below ``FLOOR_DB`` under a file's loudest bin are
clipped, so codec noise in quiet bins does not count.
"""

from __future__ import annotations

import os
from collections import OrderedDict

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from musichash.features.audio import SAMPLE_RATE, AudioError, load_audio

N_FFT = 2048
HOP = 512
N_MELS = 64
FRAME_S = HOP / SAMPLE_RATE
FLOOR_DB = 20.0
CHUNK_S = 5.0
SLACK_S = 3.0
#: chunks compared per pair at most, evenly spread over the overlap (bounds the cost of long files)
MAX_CHUNKS = 24
#: below this agreement two files are not one recording. Chosen on the fit corpus's dedup set
#: (benchmarks/HISTORY.md): copies there score at least 0.93, other recordings at
#: most 0.58; a third of the way up that gap, as a copy wrongly dropped still joins its group
#: through the other copies, while an arrangement wrongly kept pulls in its original's whole group
SAME_RECORDING = 0.7


def spectrogram(y: np.ndarray) -> np.ndarray:
    """float32 [frames, N_MELS]: log-mel power in dB, clipped ``FLOOR_DB`` below its loudest bin."""
    import librosa

    s = librosa.feature.melspectrogram(y=y, sr=SAMPLE_RATE, n_fft=N_FFT, hop_length=HOP, n_mels=N_MELS)
    db = 10.0 * np.log10(s.T.astype(np.float32) + 1e-10)
    return np.maximum(db, db.max() - FLOOR_DB)


def spectrogram_agreement(a: np.ndarray, b: np.ndarray, offset_s: float, rate: float) -> float | None:
    """How alike spectrograms a and b are where time t of a is ``offset_s + rate * t`` of b, in [-1, 1].

    None when no chunk of a lies wholly inside b.
    """
    ch, sl = round(CHUNK_S / FRAME_S), round(SLACK_S / FRAME_S)
    starts = [s for s in range(0, len(a) - ch + 1, ch) if _inside(s, ch, len(b), offset_s, rate)]
    if len(starts) > MAX_CHUNKS:
        starts = [starts[i] for i in np.linspace(0, len(starts) - 1, MAX_CHUNKS).round().astype(int)]
    best = []
    for s in starts:
        x = a[s : s + ch] - a[s : s + ch].mean()
        nx = float(np.sqrt((x * x).sum()))
        if nx == 0.0:
            continue  # silence in a: nothing to compare
        j = np.round((offset_s + rate * (s - sl + np.arange(ch + 2 * sl)) * FRAME_S) / FRAME_S).astype(int)
        inside = (j >= 0) & (j < len(b))
        w = sliding_window_view(b[np.clip(j, 0, len(b) - 1)], ch, axis=0)  # [shifts, N_MELS, ch]
        dot = np.einsum("wfc,cf->w", w, x)
        s1 = w.sum(axis=(1, 2))
        s2 = np.einsum("wfc,wfc->w", w, w)
        spread = np.sqrt(np.maximum(s2 - s1 * s1 / x.size, 1e-12))
        whole = sliding_window_view(inside, ch).all(axis=1)
        best.append(float((dot / (spread * nx))[whole].max()))
    return float(np.median(best)) if best else None


def _inside(start: int, ch: int, n_b: int, offset_s: float, rate: float) -> bool:
    """Whether frames start .. start + ch of a map inside b's n_b frames."""
    lo = (offset_s + rate * start * FRAME_S) / FRAME_S
    hi = (offset_s + rate * (start + ch - 1) * FRAME_S) / FRAME_S
    return lo >= 0 and hi <= n_b - 1


class Spectra:
    """Spectrograms of files by path, the last ``size`` kept; None for a file that cannot be read now."""

    def __init__(self, size: int = 16):
        self.size = size
        self._cache: OrderedDict[str, np.ndarray | None] = OrderedDict()

    def get(self, path: str | os.PathLike) -> np.ndarray | None:
        key = os.fspath(path)
        if key in self._cache:
            self._cache.move_to_end(key)
            return self._cache[key]
        try:
            spec = spectrogram(load_audio(key))
        except (AudioError, OSError):
            spec = None
        self._cache[key] = spec
        if len(self._cache) > self.size:
            self._cache.popitem(last=False)
        return spec
