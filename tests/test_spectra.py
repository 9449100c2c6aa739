"""Dedup's check on the tracks' sketches: copies agree with their original, a re-voiced arrangement of the
same notes does not; sketches are stored at index time, so dedup never decodes a file again."""

import os

import numpy as np
import pytest
import soundfile as sf
from click.testing import CliRunner
from synth import SR, make_song

from musichash.cli import cli
from musichash.features.audio import log_mel
from musichash.features.spectra import (
    FRAME_S,
    SAME_RECORDING,
    Sketches,
    sketch,
    spectrogram_agreement,
)
from musichash.library import Library
from musichash.search import dedup

SECONDS = 30


@pytest.fixture(scope="module")
def song():
    return make_song(1, SECONDS)


def copy_of(y: np.ndarray, trim_s: float = 1.3) -> np.ndarray:
    """6 dB quieter, the first ``trim_s`` cut off, a 2 s fade-out and faint noise: a re-encoded, edited copy."""
    c = 0.5 * y[int(trim_s * SR) :]
    c[-2 * SR :] *= np.linspace(1.0, 0.0, 2 * SR)
    return (c + 0.002 * np.random.default_rng(0).standard_normal(len(c))).astype(np.float32)


def spectrogram(y: np.ndarray) -> np.ndarray:
    return sketch(log_mel(y))


def test_a_copy_agrees_along_its_alignment(song):
    a, b = spectrogram(song), spectrogram(copy_of(song))
    assert spectrogram_agreement(a, b, -1.3, 1.0) >= 0.95
    # the vote's offset may be a window off: the chunks find the true one within the slack
    assert spectrogram_agreement(a, b, -1.3 + 2.0, 1.0) >= 0.95
    assert spectrogram_agreement(b, a, 1.3, 1.0) >= 0.95


def test_a_speed_change_agrees_at_its_rate(song):
    import soxr

    faster = soxr.resample(song, SR * 1.02, SR)  # 2 % faster and higher, as a resampled copy is
    assert spectrogram_agreement(spectrogram(song), spectrogram(faster), 0.0, 1 / 1.02) >= SAME_RECORDING


def test_another_voicing_or_tune_does_not(song):
    a = spectrogram(song)
    arrangement = spectrogram(make_song(1, SECONDS, timbre=1))  # the same notes in step, other instruments
    other = spectrogram(make_song(2, SECONDS))
    assert spectrogram_agreement(a, arrangement, 0.0, 1.0) < SAME_RECORDING
    assert spectrogram_agreement(a, other, 0.0, 1.0) < SAME_RECORDING


def test_no_overlap_is_none(song):
    a = spectrogram(song)
    assert spectrogram_agreement(a, a, SECONDS + 5.0, 1.0) is None
    assert spectrogram_agreement(a[: round(4 / FRAME_S)], a, 0.0, 1.0) is None  # shorter than one chunk


def test_a_sketch_is_small_and_level_free(song):
    s = spectrogram(song)
    assert s.dtype == np.uint8 and s.shape == (int(SECONDS / FRAME_S), 32)
    assert s.max() == 255 and s.min() == 0
    quieter = spectrogram(song * 10 ** (-12 / 20))  # -12 dB: levels are relative to the loudest bin
    assert np.abs(quieter.astype(int) - s).max() <= 1 and (quieter == s).mean() > 0.99


def test_sketches_stored_first_then_made_from_the_file(tmp_path, song):
    sf.write(tmp_path / "a.wav", song, SR)
    kept = np.zeros((3, 32), np.uint8)
    sketches = Sketches(lambda tid: kept if tid == 1 else None, size=1)
    assert sketches.get(1, tmp_path / "gone.wav") is kept
    first = sketches.get(2, tmp_path / "a.wav")
    assert first.shape == spectrogram(song).shape  # the file holds 16-bit samples: a step off at most
    assert np.abs(first.astype(int) - spectrogram(song)).max() <= 1
    assert first is sketches.get(2, str(tmp_path / "a.wav"))
    assert sketches.get(3, tmp_path / "gone.wav") is None
    assert list(sketches._cache) == [str(tmp_path / "gone.wav")]  # the oldest left


@pytest.fixture
def family(tmp_path, song, monkeypatch):
    """A library of a song, its copy and its arrangement, whose codes (faked) align every pair at offset 0."""
    music = tmp_path / "music"
    music.mkdir()
    sf.write(music / "song.wav", song, SR)
    sf.write(music / "copy.flac", copy_of(song), SR)
    sf.write(music / "arrangement.wav", make_song(1, SECONDS, timbre=1), SR)
    lib = tmp_path / "lib"
    with Library.open(lib, write=True, code_model="unittest_hash") as library:
        library.index([music], workers=0)
        ids = [t.id for t in library.store.tracks("ok")]

    def every_other_track(index, codes, times, bits, *, self_id=None, duration_s=None, threshold=0.0):
        span = (0.0, 28.0)
        return [dedup.DuplicatePair(self_id, b, 0.5, span, span) for b in ids if b != self_id]

    monkeypatch.setattr(dedup, "duplicates_of", every_other_track)
    return music, lib


def names(groups):
    return [sorted(os.path.basename(m.path) for m in g.tracks) for g in groups]


def test_dedup_drops_pairs_whose_audio_disagrees(family):
    music, lib = family
    with Library.open(lib) as library:
        assert names(library.dedup(verify=False)) == [["arrangement.wav", "copy.flac", "song.wav"]]
        seen = []
        assert names(library.dedup(progress=lambda done, total: seen.append((done, total)))) == [["copy.flac", "song.wav"]]
        assert seen == [(1, 3), (2, 3), (3, 3)]
        os.remove(music / "arrangement.wav")  # gone since indexing: its stored sketch still speaks
        assert names(library.dedup()) == [["copy.flac", "song.wav"]]


def test_dedup_reads_no_audio(family, monkeypatch):
    music, lib = family
    for f in music.iterdir():
        f.unlink()
    with Library.open(lib) as library:
        assert names(library.dedup()) == [["copy.flac", "song.wav"]]


def test_tracks_indexed_before_sketches_are_checked_on_their_files(family, monkeypatch):
    music, lib = family
    with Library.open(lib) as library:
        monkeypatch.setattr(library.store, "get_sketch", lambda tid: None)
        assert names(library.dedup()) == [["copy.flac", "song.wav"]]
        os.remove(music / "arrangement.wav")  # no sketch, no file: its pairs stand on the codes' word
        assert names(library.dedup()) == [["arrangement.wav", "copy.flac", "song.wav"]]


def test_dedup_cli_verify_flag(family):
    _, lib = family
    run = CliRunner().invoke
    out = run(cli, ["dedup", "--library", str(lib), "--csv"])
    assert out.exit_code == 0, out.output
    assert sorted(os.path.basename(r.split(",")[2]) for r in out.stdout.splitlines()[1:]) == ["copy.flac", "song.wav"]
    out = run(cli, ["dedup", "--library", str(lib), "--no-verify"])
    assert out.exit_code == 0 and out.stdout.startswith("group 1 (3 files, score 0.50)\n")


def test_files_of_mostly_silence_do_not_confirm_each_other():
    """Two game announcements: a second of a different sound each, then silence. In time they line up,
    and every chunk but the sound is silence in both: nothing there says they are one recording."""
    quiet = np.zeros(10 * SR, np.float32)
    a, b = quiet.copy(), quiet.copy()
    a[SR : 2 * SR] = make_song(5, 1.0)
    b[SR : 2 * SR] = make_song(6, 1.0)
    assert spectrogram_agreement(spectrogram(a), spectrogram(b), 0.0, 1.0) == 0.0
    song = make_song(5, 10.0)  # the same check passes a copy of sound that fills its chunks
    assert spectrogram_agreement(spectrogram(song), spectrogram(0.5 * song), 0.0, 1.0) >= SAME_RECORDING
