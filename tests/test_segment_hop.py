"""The library's segment hop: recorded per library, used by indexing, search offsets and thresholds."""

import json
import shutil
import sqlite3

import numpy as np
import pytest
import soundfile as sf
from click.testing import CliRunner
from synth import SR, make_song, write_song

from musichash.cli import cli
from musichash.indexer.records import DEFAULT_SEGMENT_HOP, LEGACY_SEGMENT_HOP
from musichash.indexer.store import LibraryError, SegmentHopMismatchError
from musichash.library import Clip, Library
from musichash.models import get_spec
from musichash.models.encoder import FRAME_S
from musichash.models.registry import weights_file
from musichash.search import calibrate
from musichash.search.thresholds import Thresholds

MODEL = "unittest_hash"


@pytest.fixture
def music(tmp_path):
    d = tmp_path / "music"
    d.mkdir()
    for i in range(3):
        write_song(d / f"song{i}.wav", seed=i, seconds=12)
    return d


def gaps(lib: Library) -> set[float]:
    """The spacings (s) between the segments of every track, but the last (a window ending with the track)."""
    return {round(float(g), 4) for t in lib.store.tracks("ok")
            for g in np.diff(lib.store.get_codes(t.id).segment_times)[:-1]}


def test_a_new_library_records_its_hop_and_indexes_at_it(music, tmp_path):
    with Library.open(tmp_path / "dense", write=True, code_model=MODEL, segment_hop=32) as lib:
        lib.index([music], workers=0)
        assert lib.store.segment_hop == 32
    with Library.open(tmp_path / "dense") as lib:  # read back from the library, not asked again
        assert lib.store.segment_hop == 32
        assert gaps(lib) == {round(32 * FRAME_S, 4)}
        lib.copy_to(tmp_path / "resharded", shards=2)  # a copy keeps the hop its codes were made at
    with Library.open(tmp_path / "resharded") as lib:
        assert lib.store.segment_hop == 32 and lib.store.shards == 2 and gaps(lib) == {round(32 * FRAME_S, 4)}
    with Library.open(tmp_path / "default", write=True, code_model=MODEL) as lib:
        lib.index([music / "song0.wav"], workers=0)
        assert lib.store.segment_hop == DEFAULT_SEGMENT_HOP
        assert gaps(lib) == {round(DEFAULT_SEGMENT_HOP * FRAME_S, 4)}


def test_a_library_from_before_the_setting_keeps_80(music, tmp_path):
    """No ``segment_hop_frames`` in meta: the library was indexed at 80 and stays at 80 for new files."""
    folder = tmp_path / "old"
    with Library.open(folder, write=True, code_model=MODEL, segment_hop=32) as lib:
        lib.index([music / "song0.wav"], workers=0)
    with sqlite3.connect(folder / "library.db") as db:  # as a library made before the key existed
        db.execute("DELETE FROM meta WHERE key = 'segment_hop_frames'")
    with Library.open(folder, write=True) as lib:
        assert lib.store.segment_hop == LEGACY_SEGMENT_HOP == 80
        lib.index([music / "song1.wav"], workers=0)
        song1 = next(t for t in lib.store.tracks("ok") if t.path.endswith("song1.wav"))
        assert np.allclose(np.diff(lib.store.get_codes(song1.id).segment_times)[:-1], 80 * FRAME_S)


def test_offsets_are_right_at_a_dense_hop(music, tmp_path):
    """Clips that start on the hop-32 grid (not on the 80 one) are placed within 0.15 s at hop 32.
    Measured with the tiny model: a library indexed at 80 instead misplaces them by 0.3-0.5 s or
    misses, so a pipeline that ignored the setting fails here. Four seeds end to end: no tune repeats."""
    song = np.concatenate([make_song(s, seconds=4) for s in (1, 5, 9, 13)])
    sf.write(music / "long.wav", song, SR)
    with Library.open(tmp_path / "lib", write=True, code_model=MODEL, segment_hop=32) as lib:
        lib.index([music], workers=0)
    starts = [k * 32 * FRAME_S for k in (3, 7, 11)]  # 1.536, 3.584, 5.632 s
    with Library.open(tmp_path / "lib") as lib:
        found = list(lib.search([Clip(f"at {s:.3f}", song[round(s * SR): round((s + 5) * SR)]) for s in starts]))
    for start, r in zip(starts, found):
        top = r.results[0]
        assert top.path.endswith("long.wav") and top.offset_s == pytest.approx(start, abs=0.15), r.query


def test_an_existing_library_refuses_another_hop_and_a_bad_hop_is_refused(music, tmp_path):
    folder = tmp_path / "lib"
    with Library.open(folder, write=True, code_model=MODEL, segment_hop=48) as lib:
        lib.index([music / "song0.wav"], workers=0)
    with pytest.raises(SegmentHopMismatchError, match="library holds segments every 48 frames, not 32"):
        Library.open(folder, write=True, segment_hop=32)
    with Library.open(folder, write=True, segment_hop=48) as lib:  # the same hop: fine
        assert lib.store.segment_hop == 48
    with pytest.raises(LibraryError, match="a segment hop of 40 frames: give a positive multiple of 16"):
        Library.open(tmp_path / "other", write=True, code_model=MODEL, segment_hop=40)
    assert not (tmp_path / "other").exists()


def test_cli_index_segment_hop_frames(music, tmp_path):
    lib = tmp_path / "lib"
    runner = CliRunner()
    ok = runner.invoke(cli, ["index", str(music), "--library", str(lib), "--code-model", MODEL, "--workers", "0",
                             "--segment-hop-frames", "32", "-q"])
    assert ok.exit_code == 0, ok.output
    with Library.open(lib) as opened:
        assert opened.store.segment_hop == 32
    again = runner.invoke(cli, ["index", str(music), "--library", str(lib), "--workers", "0", "--segment-hop-frames", "48"])
    assert again.exit_code == 1
    assert again.stderr == (f"Error: {lib}: library holds segments every 32 frames, not 48; leave out "
                            f"--segment-hop-frames to keep 32, or give another --library for 48\n")
    bad = runner.invoke(cli, ["index", str(music), "--library", str(tmp_path / "b"), "--segment-hop-frames", "40"])
    assert bad.exit_code == 1
    assert bad.stderr == (f"Error: a segment hop of 40 frames: give a positive multiple of 16 "
                          f"(the default is {DEFAULT_SEGMENT_HOP})\n")


def test_thresholds_are_kept_per_hop(music, tmp_path):
    """A denser library scores higher in and out of library: each hop reads its own fitted thresholds."""
    shipped = weights_file(get_spec("crnnh16").segment_weights)
    weights = tmp_path / "mine.safetensors"
    shutil.copy(shipped, weights)
    shutil.copy(shipped.with_suffix(".json"), weights.with_suffix(".json"))
    spec = get_spec(str(weights))
    main = Thresholds(match=0.3, source="main fit", segment_hop=DEFAULT_SEGMENT_HOP)
    other_hop = 80 if DEFAULT_SEGMENT_HOP != 80 else 32
    other = Thresholds(match=0.2, source="other fit", segment_hop=other_hop)
    calibrate.write_thresholds(spec, main)
    calibrate.write_thresholds(spec, other, main=False)
    stored = json.loads(weights.with_suffix(".json").read_text())
    assert stored["thresholds"]["match"] == 0.3 and stored["thresholds_by_hop"][str(other_hop)]["match"] == 0.2
    assert Thresholds.of(spec.name, other_hop) == other
    assert Thresholds.of(spec.name, DEFAULT_SEGMENT_HOP) == main
    assert Thresholds.of(spec.name, 64) == main  # no fit of its own: the main record
    assert Thresholds.of(spec.name) == main
    with Library.open(tmp_path / "lib", write=True, code_model=str(weights), segment_hop=other_hop) as lib:
        assert lib.thresholds == other
    with pytest.raises(ValueError, match="need their segment_hop"):
        calibrate.write_thresholds(spec, Thresholds(match=0.1), main=False)


def test_an_outside_seed_is_encoded_at_the_librarys_hop(music, tmp_path):
    """``similar`` with a seed file from outside the library: its segments are spaced as the library's."""
    with Library.open(tmp_path / "lib", write=True, code_model=MODEL, segment_hop=32) as lib:
        lib.index([music / "song0.wav"], workers=0)
    outside = tmp_path / "seed.wav"
    sf.write(outside, make_song(7, seconds=12), SR)
    with Library.open(tmp_path / "lib") as lib:
        seed = lib._seed(outside, lib.search_index())
    assert seed.track_id is None and np.allclose(np.diff(seed.segment_times[:-1]), 32 * FRAME_S)
