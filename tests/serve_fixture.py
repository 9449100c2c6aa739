"""A small indexed library and a TestClient over ``musichash serve``'s app, shared by the service tests."""

from __future__ import annotations

import shutil
from pathlib import Path

import soundfile as sf
from synth import SR, make_song, write_song

from musichash.library import Library

MODEL = "unittest_hash"
SONGS = 3
SONG_S = 12


def build_library(root: Path) -> tuple[Path, Path]:
    """music/song{0,1,2}.wav (12 s, seeded), copy0.wav (song0's bytes: a duplicate group) and bad.wav,
    indexed into lib/ with the tiny test model."""
    music = root / "music"
    music.mkdir()
    for i in range(SONGS):
        write_song(music / f"song{i}.wav", seed=i, seconds=SONG_S)
    shutil.copy(music / "song0.wav", music / "copy0.flac")
    sf.write(music / "copy0.flac", make_song(0, SONG_S), SR, format="FLAC")
    (music / "bad.wav").write_bytes(b"RIFF" + bytes(40))
    lib = root / "lib"
    # segments every 80 frames: the tiny model tells the songs apart on windows aligned to them (``excerpt``)
    with Library.open(lib, write=True, code_model=MODEL, segment_hop=80) as library:
        library.index([music], workers=0)
    return music, lib


def excerpt(path: Path, seed: int, start_s: float, seconds: float, fmt: str = "FLAC") -> Path:
    """``seconds`` of song ``seed`` from ``start_s``, written to ``path`` in ``fmt``. The tiny test model
    tells the songs apart only on windows aligned to the library's (starts at multiples of 1.28 s)."""
    y = make_song(seed, SONG_S)[round(start_s * SR): round((start_s + seconds) * SR)]
    sf.write(path, y, SR, format=fmt)
    return path
