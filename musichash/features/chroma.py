"""The harmony check behind ``match``: chroma of library tracks (12 bits a second) and of query clips.

Codes describe timbre and texture, so two pieces sung by the same choir in the
same style can share them; what tells them apart is harmony. Every library
track keeps its chroma, one 12-bit word a second (a pitch class is set when
it is above that second's mean over the 12), 1.5 bytes a second, 5.4 KB an
hour. A query clip's chroma is kept per STFT frame at three tunings, and
``harmony_agreement`` compares it with the top track's at the alignment the vote found
(benchmarks/HISTORY.md, "What keeps out-of-library clips out").

Both sides use librosa's chroma filters on a 4096-point STFT, hop 1024, of the
16 kHz signal (centred frames), each frame scaled to its largest pitch class.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Iterable, Iterator

import numpy as np
import torch

from musichash.features.audio import SAMPLE_RATE

N_FFT = 4096
HOP = 1024
FRAME_S = HOP / SAMPLE_RATE
#: library chroma is pooled over this many seconds per 12-bit word
POOL_S = 1.0
#: the query's tunings, in semitones: with rolls of -1, 0, 1 pitch class they cover ±4/3 semitone in thirds
TUNINGS = (-1 / 3, 0.0, 1 / 3)
ROLLS = (-1, 0, 1)
#: offsets tried around the vote's, seconds: the vote's offset is good to about a segment hop
OFFSET_SLACK_S = 0.75
OFFSET_STEP_S = 0.125
#: frames per STFT batch while streaming (a 4096 x 512 float32 batch is 8 MB)
_BATCH_FRAMES = 512


@functools.lru_cache(maxsize=1)
def _filters() -> torch.Tensor:
    """float32 [len(TUNINGS) * 12, N_FFT / 2 + 1]: librosa's chroma filters, one block of 12 per tuning."""
    import librosa

    fb = [librosa.filters.chroma(sr=SAMPLE_RATE, n_fft=N_FFT, n_chroma=12, tuning=t) for t in TUNINGS]
    return torch.from_numpy(np.concatenate(fb).astype(np.float32))


@functools.lru_cache(maxsize=1)
def _window() -> torch.Tensor:
    return torch.hann_window(N_FFT, periodic=True)


def _frames(x: np.ndarray, tunings: slice) -> np.ndarray:
    """Chroma of every full frame of ``x`` (already padded): float32 [n_tunings, F, 12], each frame's max 1."""
    spec = torch.stft(
        torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)), N_FFT, HOP,
        window=_window(), center=False, return_complex=True,
    )
    power = spec.real.square() + spec.imag.square()  # [bins, F]
    fb = _filters()[tunings.start * 12 : tunings.stop * 12]
    c = (fb @ power).reshape(-1, 12, power.shape[1]).permute(0, 2, 1)  # [n_tunings, F, 12]
    peak = c.amax(dim=2, keepdim=True)
    return (c / torch.where(peak > 1e-10, peak, torch.ones_like(peak))).numpy()


class _Stream:
    """Chroma frames of a signal arriving as blocks of any sizes, equal to those of the whole signal."""

    def __init__(self, tunings: slice):
        self.tunings = tunings
        self.n_frames = 0
        self._buf = np.zeros(N_FFT // 2, np.float32)  # the centre padding at the start

    def feed(self, x: np.ndarray, last: bool = False) -> Iterator[tuple[int, np.ndarray]]:
        """(index of the first frame, frames [n_tunings, f, 12]) of the frames that ``x`` completes."""
        parts = [self._buf, np.asarray(x, np.float32)]
        if last:
            parts.append(np.zeros(N_FFT // 2, np.float32))
        buf = np.concatenate(parts)
        while len(buf) >= N_FFT:
            f = min(_BATCH_FRAMES, (len(buf) - N_FFT) // HOP + 1)
            yield self.n_frames, _frames(buf[: (f - 1) * HOP + N_FFT], self.tunings)
            self.n_frames += f
            buf = buf[f * HOP :]
        self._buf = buf

    def tap(self, blocks: Iterable[np.ndarray], take) -> Iterator[np.ndarray]:
        """Passes 16 kHz blocks through unchanged, handing ``take(first, frames)`` each batch of chroma frames."""
        for x in blocks:
            for first, c in self.feed(x):
                take(first, c)
            yield x
        for first, c in self.feed(np.zeros(0, np.float32), last=True):
            take(first, c)


class TrackChroma:
    """A library track's chroma, gathered while its audio streams past (see :meth:`tap`)."""

    def __init__(self):
        self._stream = _Stream(slice(1, 2))  # tuning 0
        self._sums = np.zeros((0, 12), np.float64)
        self._counts = np.zeros(0, np.int64)

    def tap(self, blocks: Iterable[np.ndarray]) -> Iterator[np.ndarray]:
        """Passes 16 kHz blocks through unchanged, taking their chroma on the way."""
        return self._stream.tap(blocks, self._add)

    def _add(self, first: int, c: np.ndarray) -> None:
        """Pools frames ``first ...`` (``c``: [1, f, 12]) into their seconds."""
        j = np.floor((first + np.arange(c.shape[1])) * FRAME_S / POOL_S).astype(np.int64)
        if j[-1] >= len(self._counts):
            grow = j[-1] + 1 - len(self._counts)
            self._sums = np.concatenate([self._sums, np.zeros((grow, 12))])
            self._counts = np.concatenate([self._counts, np.zeros(grow, np.int64)])
        np.add.at(self._sums, j, c[0])
        np.add.at(self._counts, j, 1)

    def bits(self) -> np.ndarray:
        """bool [seconds, 12]: each pitch class above or below its second's mean."""
        m = self._sums / np.maximum(self._counts, 1)[:, None]
        return m > m.mean(axis=1, keepdims=True)


def track_bits(wave: np.ndarray) -> np.ndarray:
    """``TrackChroma`` of a whole signal: bool [seconds, 12]."""
    tc = TrackChroma()
    for _ in tc.tap([wave]):
        pass
    return tc.bits()


class ClipChroma:
    """A query's chroma at every tuning, gathered while its audio streams past (see :meth:`tap`)."""

    def __init__(self):
        self._stream = _Stream(slice(0, len(TUNINGS)))
        self._out: list[np.ndarray] = []

    def tap(self, blocks: Iterable[np.ndarray]) -> Iterator[np.ndarray]:
        """Passes 16 kHz blocks through unchanged, taking their chroma on the way."""
        return self._stream.tap(blocks, lambda _first, c: self._out.append(c))

    def frames(self) -> np.ndarray:
        """float32 [len(TUNINGS), frames, 12]."""
        return np.concatenate(self._out, axis=1) if self._out else np.zeros((len(TUNINGS), 0, 12), np.float32)


def clip_chroma(blocks: Iterable[np.ndarray]) -> np.ndarray:
    """``ClipChroma`` of 16 kHz blocks of any sizes: float32 [len(TUNINGS), frames, 12]."""
    cc = ClipChroma()
    for _ in cc.tap(blocks):
        pass
    return cc.frames()


def pack(bits: np.ndarray) -> np.ndarray:
    """bool [n, 12] -> uint8 [ceil(1.5 n)] (as stored in codes.h5)."""
    return np.packbits(np.asarray(bits, bool).reshape(-1))


def unpack(packed: np.ndarray) -> np.ndarray:
    """uint8 [m] -> bool [n, 12]: ``m`` bytes hold ``floor(8 m / 12)`` words (pack pads at most 4 bits)."""
    n = len(packed) * 8 // 12
    return np.unpackbits(np.asarray(packed, np.uint8))[: n * 12].reshape(n, 12).astype(bool)


def harmony_agreement(clip: np.ndarray, track: np.ndarray, offset_s: float, rate: float = 1.0) -> float | None:
    """How well a clip's harmony follows a track's where the vote aligned them, in [-1, 1].

    clip: ``clip_chroma`` float [n_tunings, F, 12]; track: bool [seconds, 12];
    track time = offset_s + rate * clip time. For every offset within
    ±``OFFSET_SLACK_S`` of the vote's, the clip's frames are pooled over the
    track's whole seconds they cover, and each second's chroma (centred, unit
    length) is correlated with the track's word (±1 per pitch class); the
    result is the best mean over those seconds across offsets, tunings and
    rolls of one pitch class. None when no whole track second lies under the clip.
    """
    n_t, n_f, _ = clip.shape
    n_sec = len(track)
    if n_f == 0 or n_sec == 0:
        return None
    signs = np.where(track, 1.0, -1.0) / math.sqrt(12)
    rolled = np.stack([np.roll(signs, r, axis=1) for r in ROLLS])  # [rolls, seconds, 12]
    t_clip = np.arange(n_f) * FRAME_S
    span = rate * n_f * FRAME_S
    best = None
    steps = round(OFFSET_SLACK_S / OFFSET_STEP_S)
    for o in offset_s + OFFSET_STEP_S * np.arange(-steps, steps + 1):
        j0 = max(math.ceil(o / POOL_S), 0)
        j1 = min(math.floor((o + span) / POOL_S) - 1, n_sec - 1)
        if j1 < j0:
            continue
        j = np.floor((o + rate * t_clip) / POOL_S).astype(np.int64) - j0
        inside = (j >= 0) & (j <= j1 - j0)
        onehot = np.zeros((j1 - j0 + 1, n_f), np.float32)
        onehot[j[inside], np.flatnonzero(inside)] = 1.0
        m = onehot @ clip  # [tunings, seconds, 12]
        m -= m.mean(axis=2, keepdims=True)
        m /= np.linalg.norm(m, axis=2, keepdims=True) + 1e-9
        r = rolled[:, j0 : j1 + 1].reshape(len(ROLLS), -1)
        score = (m.reshape(n_t, -1) @ r.T).max() / (j1 - j0 + 1)
        best = score if best is None else max(best, score)
    return None if best is None else float(best)
