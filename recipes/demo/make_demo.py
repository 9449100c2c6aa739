"""Render a small demo set of labelled music through FluidSynth.

    apt-get install ffmpeg fluidsynth fluid-soundfont-gm
    pip install music21 pretty_midi
    python -m recipes.demo.make_demo --out corpus/demo --clip corpus/clip_quartet.mp3

Writes one FLAC per piece and ``manifest.json`` (file, source, genre label), and with ``--clip``
the README's query: 10 s of the string quartet from 0:20, white noise at 20 dB SNR, MP3 at 32 kbit/s.
Scores come from music21's bundled corpus; the rock and techno grooves are
generated here with a fixed seed. Nothing rendered is committed.
"""

from __future__ import annotations

import argparse
import json
import random
import tempfile
from pathlib import Path

# MIDI trimming and FluidSynth rendering are shared with the benchmark corpus builder
from benchmarks.corpus import render, trim_midi

# (output name, music21 corpus path, GM program per part (the last repeats), label)
SCORES = [
    ("string_quartet", "beethoven/opus18no4", (40, 40, 41, 42), "orchestral"),  # violins, viola, cello
    ("chorale_choir", "bach/bwv66.6", (52,), "choir"),  # Choir Aahs
    ("piano_sonata", "mozart/k545/movement1_exposition.mxl", (0,), "piano"),  # Acoustic Grand Piano
]


def score_to_midi(corpus_path: str, programs: tuple[int, ...], out: Path, seconds: float) -> None:
    from music21 import corpus

    from music21 import bar

    # music21's MIDI writer takes many minutes on a whole quartet movement: 60 bars, which outlast a
    # minute here, without their repeat signs (a repeat cut in two cannot be expanded)
    excerpt = corpus.parse(corpus_path).measures(1, 60)
    for m in excerpt.recurse().getElementsByClass("Measure"):
        if isinstance(m.leftBarline, bar.Repeat):
            m.leftBarline = None
        if isinstance(m.rightBarline, bar.Repeat):
            m.rightBarline = None
    excerpt.write("midi", fp=str(out))
    trim_midi(out, seconds, programs)


def groove(style: str, out: Path, seconds: float, seed: int) -> None:
    """A drum kit, bass and lead over a four-chord loop: 'rock' (distorted guitar) or 'techno' (synths)."""
    import pretty_midi

    rng = random.Random(seed)
    bpm = 132 if style == "rock" else 128
    beat = 60.0 / bpm
    pm = pretty_midi.PrettyMIDI(initial_tempo=bpm)
    drums = pretty_midi.Instrument(0, is_drum=True)
    bass = pretty_midi.Instrument(33 if style == "rock" else 38)  # finger bass / synth bass
    lead = pretty_midi.Instrument(30 if style == "rock" else 81)  # distortion guitar / saw lead
    pad = pretty_midi.Instrument(29 if style == "rock" else 90)  # overdriven guitar / polysynth pad
    roots = [40, 45, 43, 38] if style == "rock" else [45, 41, 43, 40]
    n_bars = int(seconds / (4 * beat))
    for bar in range(n_bars):
        t0 = bar * 4 * beat
        root = roots[bar % 4]
        for step in range(8):
            t = t0 + step * beat / 2
            drums.notes.append(pretty_midi.Note(70 + rng.randint(0, 20), 42, t, t + 0.05))  # closed hi-hat
            if style == "techno" and step % 2 == 0:
                drums.notes.append(pretty_midi.Note(115, 36, t, t + 0.1))  # four on the floor
            bass.notes.append(pretty_midi.Note(100, root, t, t + beat / 2 * 0.9))
        if style == "rock":
            for step in (0, 5):
                t = t0 + step * beat / 2
                drums.notes.append(pretty_midi.Note(115, 36, t, t + 0.1))
        for step in (1, 3):
            drums.notes.append(pretty_midi.Note(110, 38, t0 + step * beat, t0 + step * beat + 0.1))  # snare
        for interval in (0, 7, 12):  # power chord held over the bar
            pad.notes.append(pretty_midi.Note(90, root + 12 + interval, t0, t0 + 4 * beat * 0.95))
        for step in range(8):
            if rng.random() < 0.7:
                t = t0 + step * beat / 2
                pitch = root + 24 + rng.choice([0, 3, 5, 7, 10, 12])
                lead.notes.append(pretty_midi.Note(100, pitch, t, t + beat / 2 * 0.9))
    pm.instruments += [drums, bass, pad, lead]
    pm.write(str(out))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=Path("corpus/demo"))
    ap.add_argument("--seconds", type=float, default=60.0)
    ap.add_argument("--clip", type=Path, default=None, help="also write the README's query clip here (an .mp3)")
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    manifest = []
    with tempfile.TemporaryDirectory() as tmp:
        jobs = [(name, lambda m, s=src, p=prog: score_to_midi(s, p, m, args.seconds), label, f"music21:{src}")
                for name, src, prog, label in SCORES]
        jobs += [(style, lambda m, st=style: groove(st, m, args.seconds, seed=1), style, "generated")
                 for style in ("rock", "techno")]
        for name, make_midi, label, source in jobs:
            midi = Path(tmp) / f"{name}.mid"
            make_midi(midi)
            flac = args.out / f"{name}.flac"
            render(midi, flac, args.seconds)
            manifest.append({"file": flac.name, "source": source, "label": label})
            print(f"{flac}  [{label}]")
    (args.out / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")
    if args.clip is not None:
        noisy_clip(args.out / "string_quartet.flac", args.clip, start_s=20.0, seconds=10.0, snr_db=20.0)
        print(f"{args.clip}  [query clip]")


def noisy_clip(src: Path, out: Path, start_s: float, seconds: float, snr_db: float, seed: int = 0) -> None:
    """``seconds`` of ``src`` from ``start_s``, white noise at ``snr_db``, re-encoded as MP3 at 32 kbit/s."""
    import subprocess

    import numpy as np
    import soundfile as sf

    y, sr = sf.read(str(src), dtype="float32", always_2d=True)
    y = y[int(start_s * sr) : int((start_s + seconds) * sr)].mean(axis=1)
    noise = np.random.default_rng(seed).standard_normal(len(y)).astype(np.float32)
    noise *= np.sqrt(np.mean(y**2) / np.mean(noise**2) / 10 ** (snr_db / 10))
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        wav = Path(tmp) / "clip.wav"
        sf.write(str(wav), np.clip(y + noise, -1, 1), sr)
        subprocess.run(["ffmpeg", "-loglevel", "error", "-y", "-i", str(wav), "-b:a", "32k", str(out)], check=True)


if __name__ == "__main__":
    main()
