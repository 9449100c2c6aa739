"""Seeded labelled "instruments" for tagger tests: three timbres a small network must learn to tell apart.

- ``organ``: sustained harmonic chords (partials 1-6), new chord every ~1 s;
- ``drums``: decaying white-noise bursts at a random tempo;
- ``bell``: inharmonic decaying partials (1, 2.76, 5.40) every ~0.4 s, high.

Pitches, tempi and levels are drawn per clip, so no single bin gives a class away.
"""

from __future__ import annotations

import numpy as np

SR = 16000
INSTRUMENTS = ("organ", "drums", "bell")


def instrument(name: str, n: int, rng: np.random.Generator) -> np.ndarray:
    t = np.arange(n) / SR
    y = np.zeros(n)
    if name == "organ":
        step = int(SR * rng.uniform(0.8, 1.2))
        for s in range(0, n, step):
            f0 = 110.0 * 2 ** (rng.integers(0, 24) / 12)
            seg = t[: min(step, n - s)]
            env = np.minimum(1, seg / 0.05) * np.minimum(1, (seg[-1] - seg + 1e-3) / 0.05)
            y[s : s + len(seg)] += env * sum(np.sin(2 * np.pi * f0 * h * seg) / h for h in range(1, 7))
    elif name == "drums":
        step = int(SR * rng.uniform(0.2, 0.35))
        for s in range(0, n, step):
            k = min(int(0.12 * SR), n - s)
            y[s : s + k] += rng.standard_normal(k) * np.exp(-np.arange(k) / (0.02 * SR)) * 2.0
    elif name == "bell":
        step = int(SR * rng.uniform(0.35, 0.5))
        for s in range(0, n, step):
            f0 = rng.uniform(600, 1400)
            seg = t[: n - s]
            y[s:] += np.exp(-seg * 6) * sum(a * np.sin(2 * np.pi * f0 * r * seg) for r, a in ((1, 1), (2.76, 0.6), (5.4, 0.4)))
    else:
        raise ValueError(name)
    return y / (np.abs(y).max() + 1e-9)


def clip(present: tuple[str, ...], seconds: float, seed: int) -> np.ndarray:
    """float32 [seconds * SR]: the named instruments mixed at random levels over faint noise."""
    rng = np.random.default_rng(seed)
    n = int(seconds * SR)
    y = 0.01 * rng.standard_normal(n)
    for name in present:
        y += rng.uniform(0.5, 1.0) * instrument(name, n, rng)
    return (0.3 * y / np.abs(y).max()).astype(np.float32)


def single_label(n_per_class: int, seconds: float = 3.2, seed: int = 0) -> list[tuple[np.ndarray, str]]:
    return [(clip((name,), seconds, seed * 10000 + 100 * i + c), name)
            for i in range(n_per_class) for c, name in enumerate(INSTRUMENTS)]


def multi_label(n: int, seconds: float = 3.2, seed: int = 0) -> list[tuple[np.ndarray, tuple[str, ...]]]:
    """Clips of one to three instruments; each instrument is in about half of them."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        present = tuple(name for name in INSTRUMENTS if rng.random() < 0.5) or (INSTRUMENTS[i % 3],)
        out.append((clip(present, seconds, seed * 10000 + 7 * i + 1), present))
    return out
