"""Dedup's last check: whether two files the codes align hold the same recording, from their spectra.

Codes are made to survive noise, re-encoding and other voicings, so an
alternate arrangement of a score (the same notes, in step, on other
instruments) lines up with the original much as a re-encode does. Their
spectrograms do not: a copy's follows the original's bin for bin whatever its
gain, codec, trim or fade, while another instrument puts its energy elsewhere
(benchmarks/HISTORY.md, "Dedup checked on the audio").

What is compared is a track's **sketch**: the model's own log-mel (96 bands at
62.5 frames a second, computed anyway to make the codes) pooled to ``SKETCH_BANDS``
bands at ``1 / FRAME_S`` frames a second, as power in dB clipped ``FLOOR_DB`` below the
track's loudest bin and stored as uint8 (``FLOOR_DB / 255`` dB a step). The indexer keeps
every track's sketch (250 bytes a second, before HDF5's compression), so dedup
never decodes a file again; tracks indexed before sketches existed have theirs
made from the file when dedup needs it. The pooling was chosen on the old
evaluation corpus's dedup set (benchmarks/HISTORY.md, "Dedup on stored sketches"), the check's
details on the dedup benchmark's hard negatives (BENCHMARKS.md, issue 22).

``spectrogram_agreement`` compares two sketches along the pair's alignment: a's
frames in chunks of ``CHUNK_S``, each correlated with b's at every shift within
``SLACK_S`` of where the alignment puts it (the vote's offset can be a beat or
a window off in repetitive music), and the median over chunks of each chunk's
best correlation near the shift most chunks agree on (a copy's chunks agree;
chance likeness between two pieces peaks at scattered shifts).
"""

from __future__ import annotations

import os
from collections import OrderedDict

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from musichash.features.audio import HOP as MEL_HOP
from musichash.features.audio import N_MELS as MEL_BANDS
from musichash.features.audio import SAMPLE_RATE, AudioError, iter_audio_blocks, iter_mel_blocks

#: model mel frames pooled into one sketch frame, and model mel bands into one sketch band
POOL_FRAMES = 8
POOL_BANDS = 3
SKETCH_BANDS = MEL_BANDS // POOL_BANDS
FRAME_S = POOL_FRAMES * MEL_HOP / SAMPLE_RATE
FLOOR_DB = 20.0
CHUNK_S = 5.0
SLACK_S = 3.0
#: a chunk is compared only when at least this share of its frames is above the floor: two files
#: of a second of speech and seconds of silence line up in time whatever the words
AUDIBLE_SHARE = 0.5
#: with three chunks or more, each chunk's correlation is read within this many frames of the shift
#: most chunks agree on (0.5 s)
SHIFT_TOL = 4
#: chunks compared per pair at most, evenly spread over the overlap (bounds the cost of long files)
MAX_CHUNKS = 24
#: below this agreement two files are not one recording. On the calibration split's pairs of the
#: dedup benchmark (benchmarks/bench_dedup.py; packages of the calibration split only), copies scored
#: at least 0.576 and other recordings at most 0.28: the lowest copy less a margin of 0.025. The
#: evaluation split's pairs had been looked at before this choice (an arrangement at 0.50, a copy
#: at 0.55), so its dedup figures are not independent of it
SAME_RECORDING = 0.55


def sketch(mel: np.ndarray) -> np.ndarray:
    """uint8 [frames, SKETCH_BANDS] of a model log-mel ``float [T, 96]`` (``log10(1 + 10000 mel)``).

    0 is ``FLOOR_DB`` or more below the loudest bin, 255 the loudest bin. A gain change moves
    nothing but rounding: levels are relative to the track's own loudest bin.
    """
    n = len(mel) // POOL_FRAMES
    if n == 0:
        return np.zeros((0, SKETCH_BANDS), np.uint8)
    power = (np.power(10.0, mel[: n * POOL_FRAMES].astype(np.float64)) - 1.0) / 10000.0
    power = power.reshape(n, POOL_FRAMES, SKETCH_BANDS, POOL_BANDS).mean(axis=(1, 3))
    db = 10.0 * np.log10(power + 1e-10)
    rel = np.clip(db - db.max() + FLOOR_DB, 0.0, FLOOR_DB)
    return np.round(rel * (255.0 / FLOOR_DB)).astype(np.uint8)


def sketch_of_file(path: str | os.PathLike) -> np.ndarray:
    """The sketch of an audio file (decoded and put through the model's mel front end)."""
    return sketch(np.concatenate(list(iter_mel_blocks(iter_audio_blocks(path)))))


def spectrogram_agreement(a: np.ndarray, b: np.ndarray, offset_s: float, rate: float) -> float | None:
    """How alike sketches a and b (``[frames, bands]``) are where time t of a is ``offset_s + rate * t`` of b, in [-1, 1].

    None when no chunk of a lies wholly inside b; 0 when every chunk that does is mostly silence
    (less than ``AUDIBLE_SHARE`` of its frames above the floor): nothing there can confirm a pair.
    """
    a, b = np.asarray(a, np.float32), np.asarray(b, np.float32)
    ch, sl = round(CHUNK_S / FRAME_S), round(SLACK_S / FRAME_S)
    starts = [s for s in range(0, len(a) - ch + 1, ch) if _inside(s, ch, len(b), offset_s, rate)]
    if len(starts) > MAX_CHUNKS:
        starts = [starts[i] for i in np.linspace(0, len(starts) - 1, MAX_CHUNKS).round().astype(int)]
    if not starts:
        return None
    curves = []  # per chunk: its correlation at every shift (-inf where b does not hold it whole)
    for s in starts:
        if np.count_nonzero(a[s : s + ch].max(axis=1)) < AUDIBLE_SHARE * ch:
            continue  # mostly silence: its few sounds line up with any other file's
        # each band's own mean taken out: what must agree is how each band moves in time, not the
        # spectral shape an instrument gives every piece it plays
        x = a[s : s + ch] - a[s : s + ch].mean(axis=0)
        nx = float(np.sqrt((x * x).sum()))
        if nx == 0.0:
            continue  # no band moves in a: nothing to compare
        j = np.round((offset_s + rate * (s - sl + np.arange(ch + 2 * sl)) * FRAME_S) / FRAME_S).astype(int)
        inside = (j >= 0) & (j < len(b))
        w = sliding_window_view(b[np.clip(j, 0, len(b) - 1)], ch, axis=0)  # [shifts, bands, ch]
        dot = np.einsum("wfc,cf->w", w, x)
        s1 = w.sum(axis=2)  # [shifts, bands]
        s2 = np.einsum("wfc,wfc->w", w, w)
        spread = np.sqrt(np.maximum(s2 - (s1 * s1).sum(axis=1) / ch, 1e-12))
        whole = sliding_window_view(inside, ch).all(axis=1)
        curves.append(np.where(whole, dot / (spread * nx), -np.inf))
    if not curves:
        return 0.0
    c = np.stack(curves)  # [chunks, shifts]
    if len(c) < 3:
        return float(np.median(c.max(axis=1)))
    # a copy's chunks agree on one shift; chance likeness peaks anywhere in the slack
    shift = int(np.median(c.argmax(axis=1)))
    near = c[:, max(0, shift - SHIFT_TOL) : shift + SHIFT_TOL + 1]
    return float(np.median(near.max(axis=1)))


def _inside(start: int, ch: int, n_b: int, offset_s: float, rate: float) -> bool:
    """Whether frames start .. start + ch of a map inside b's n_b frames."""
    lo = (offset_s + rate * start * FRAME_S) / FRAME_S
    hi = (offset_s + rate * (start + ch - 1) * FRAME_S) / FRAME_S
    return lo >= 0 and hi <= n_b - 1


class Sketches:
    """Sketches by track: the stored one when there is one, else made from the file (the last ``size``
    kept); None for a track with neither. ``stored(track_id)`` reads the store (None when absent)."""

    def __init__(self, stored, size: int = 16):
        self.stored = stored
        self.size = size
        self._cache: OrderedDict[str, np.ndarray | None] = OrderedDict()

    def get(self, track_id: int, path: str | os.PathLike) -> np.ndarray | None:
        kept = self.stored(track_id)
        if kept is not None:
            return kept
        key = os.fspath(path)
        if key in self._cache:
            self._cache.move_to_end(key)
            return self._cache[key]
        try:
            made = sketch_of_file(key)
        except (AudioError, OSError):
            made = None
        self._cache[key] = made
        if len(self._cache) > self.size:
            self._cache.popitem(last=False)
        return made
