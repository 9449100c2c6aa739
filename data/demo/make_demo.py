"""Render a small demo set of labelled music through FluidSynth.

    apt-get install fluidsynth fluid-soundfont-gm
    pip install music21 pretty_midi
    python data/demo/make_demo.py --out corpus/demo

Writes one FLAC per piece and ``manifest.json`` (file, source, genre label).
Scores come from music21's bundled corpus; the rock and techno grooves are
generated here with a fixed seed. Nothing rendered is committed.
"""

from __future__ import annotations

import argparse
import json
import random
import subprocess
import tempfile
from pathlib import Path

SOUNDFONT = "/usr/share/sounds/sf2/FluidR3_GM.sf2"

# (output name, music21 corpus path, GM program per part (the last repeats), label)
SCORES = [
    ("string_quartet", "beethoven/opus18no4", (40, 40, 41, 42), "orchestral"),  # violins, viola, cello
    ("chorale_choir", "bach/bwv66.6", (52,), "choir"),  # Choir Aahs
    ("piano_sonata", "mozart/k545/movement1_exposition.mxl", (0,), "piano"),  # Acoustic Grand Piano
]


def score_to_midi(corpus_path: str, programs: tuple[int, ...], out: Path, seconds: float) -> None:
    from music21 import corpus

    corpus.parse(corpus_path).write("midi", fp=str(out))
    _trim_midi(out, seconds, programs)


def _trim_midi(path: Path, seconds: float, programs: tuple[int, ...]) -> None:
    """Keep the first ``seconds`` of a MIDI file (so FluidSynth renders only that).

    Part k (its MIDI channel, in order of first use) plays GM program ``programs[k]``
    (the last one repeats): music21 exports most scores without programs.
    """
    import mido

    src = mido.MidiFile(str(path))
    channels = sorted({m.channel for t in src.tracks for m in t if hasattr(m, "channel") and m.channel != 9})
    track = mido.MidiTrack(
        mido.Message("program_change", channel=c, program=programs[min(k, len(programs) - 1)])
        for k, c in enumerate(channels)
    )
    elapsed, pending = 0.0, 0.0
    for msg in src:  # merged tracks, delta times in seconds
        elapsed += msg.time
        if elapsed > seconds:
            break
        pending += msg.time
        if msg.is_meta or msg.type == "program_change":  # delta stays in `pending`; tempo is baked in
            continue
        ticks = int(round(mido.second2tick(pending, src.ticks_per_beat, 500000)))
        track.append(msg.copy(time=ticks))
        pending = 0.0
    # note-offs for anything still sounding
    track += [mido.Message("control_change", channel=c, control=123, value=0) for c in range(16)]
    out = mido.MidiFile(ticks_per_beat=src.ticks_per_beat)
    out.tracks.append(track)
    out.save(str(path))


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


def render(midi: Path, out: Path, seconds: float) -> None:
    """FluidSynth to a WAV, then the first ``seconds`` to FLAC."""
    import soundfile as sf

    wav = midi.with_suffix(".wav")
    subprocess.run(
        ["fluidsynth", "-ni", "-q", "-g", "0.6", "-r", "44100", "-F", str(wav), SOUNDFONT, str(midi)],
        check=True,
        capture_output=True,
    )
    audio, rate = sf.read(wav, frames=int(seconds * 44100), dtype="float32")
    sf.write(out, audio, rate)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=Path("corpus/demo"))
    ap.add_argument("--seconds", type=float, default=60.0)
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


if __name__ == "__main__":
    main()
