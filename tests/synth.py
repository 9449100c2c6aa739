"""Seeded synthetic "songs" for engine tests: distinct melodies, timbres and tempi, no files shipped."""

from __future__ import annotations

import numpy as np
import soundfile as sf

SR = 16000


def make_song(seed: int, seconds: float = 20.0, sr: int = SR, timbre: int | None = None) -> np.ndarray:
    """float32 [seconds * sr]: a melody of enveloped harmonic notes over a drone, seeded.

    Each seed has its own scale degrees, note length, harmonic weights and
    drone, so two seeds differ in pitch content, rhythm and timbre. ``timbre``
    re-voices the same notes: other harmonic weights and note decay, seeded by it
    (an alternate arrangement of the seed's tune).
    """
    rng = np.random.default_rng(seed)
    n = int(seconds * sr)
    y = np.zeros(n)
    note = int(sr * rng.uniform(0.15, 0.45))
    weights = rng.uniform(0.1, 1.0, 6) / np.arange(1, 7)
    base = 110.0 * 2 ** (rng.integers(0, 12) / 12)
    t = np.arange(note) / sr
    decay = rng.uniform(2, 8)
    if timbre is not None:
        voice = np.random.default_rng([seed, timbre])
        weights, decay = voice.uniform(0.1, 1.0, 6) * voice.permutation(6) / 6, voice.uniform(0.5, 12)
    env = np.minimum(1.0, t / 0.01) * np.exp(-t * decay)
    for start in range(0, n - note, note):
        f = base * 2 ** (rng.integers(0, 24) / 12)
        tone = sum(w * np.sin(2 * np.pi * f * (h + 1) * t) for h, w in enumerate(weights))
        y[start : start + note] += tone * env
    drone_f = base / 2
    y += 0.2 * np.sin(2 * np.pi * drone_f * np.arange(n) / sr) * (1 + 0.5 * np.sin(2 * np.pi * 0.25 * np.arange(n) / sr))
    y += 0.01 * rng.standard_normal(n)
    return (0.3 * y / np.abs(y).max()).astype(np.float32)


def write_song(path, seed: int, seconds: float = 20.0, sr: int = SR) -> np.ndarray:
    y = make_song(seed, seconds, sr)
    sf.write(path, y, sr)
    return y
