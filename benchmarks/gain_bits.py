"""How many segment-code bits a gain of ±12 dB moves: the same audio, the same windows, louder or quieter.

    python -m benchmarks.gain_bits --models OLD.safetensors crnnh64 -- FILE...

Each file's first two minutes are encoded at the library hop as they are and with the gain applied
(scaled down to a peak of 1 where +12 dB would clip, as ``augment.gain`` does); the figure is the mean
Hamming distance between a window's two codes, and the share of windows whose code did not move.
A diagnostic of the codes' level invariance (issue 22), not a search figure: searches go through
``eval_ident``.
"""

from __future__ import annotations

import argparse
import json

import numpy as np

from musichash.features.audio import SAMPLE_RATE, load_audio, log_mel
from musichash.features.segments import DEFAULT_SEGMENT_HOP
from musichash.models.encoder import CodeModel


def codes(model: CodeModel, wave: np.ndarray) -> np.ndarray:
    return model.encode(log_mel(wave), DEFAULT_SEGMENT_HOP, track=False).codes


def moved(model: CodeModel, waves: list[np.ndarray], clean: list[np.ndarray], db: float) -> dict:
    """``clean``: the codes of ``waves`` as they are (``codes``)."""
    dist = []
    for w, a in zip(waves, clean):
        g = w * 10 ** (db / 20)
        g = g / max(1.0, float(np.abs(g).max()))
        dist.append(np.unpackbits(a ^ codes(model, g.astype(np.float32)), axis=1).sum(axis=1))
    d = np.concatenate(dist)
    return {"mean_bits_moved": round(float(d.mean()), 2), "windows_unmoved": round(float((d == 0).mean()), 3),
            "windows": len(d)}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", required=True, help="code models (registry names or checkpoints)")
    ap.add_argument("--seconds", type=float, default=120.0)
    ap.add_argument("files", nargs="+")
    a = ap.parse_args(argv)
    waves = [load_audio(f, duration_s=None)[: int(a.seconds * SAMPLE_RATE)] for f in a.files]
    out = {}
    for name in a.models:
        model = CodeModel(name)
        clean = [codes(model, w) for w in waves]  # once per model, for both gains
        out[name] = {f"{db:+d} dB": moved(model, waves, clean, db) for db in (-12, 12)}
    print(json.dumps({"files": len(waves), "models": out}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
