"""kill -9 a real `musichash index` process at several moments; the library must open and the next run complete it."""

import os
import signal
import sqlite3
import subprocess
import sys
import time

import numpy as np
from synth import write_song

from musichash.library import Library

N_SONGS = 12


def rows_written(db) -> int:
    """Tracks rows of any status, read the way a second process would (WAL lets us while it writes)."""
    if not db.exists():
        return -1
    try:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=1) as con:
            return con.execute("SELECT count(*) FROM tracks").fetchone()[0]
    except sqlite3.Error:  # schema not created yet
        return -1


def start_index(music, lib):
    cmd = [sys.executable, "-m", "musichash", "index", str(music), "--library", str(lib),
           "--code-model", "unittest_hash", "--workers", "1", "-q"]
    # own session, so the kill takes the decoding worker too, as a crash of the whole run would
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)


def codes_by_name(lib_dir):
    with Library.open(lib_dir) as lib:
        return {os.path.basename(t.path): lib.store.get_codes(t.id) for t in lib.store.tracks("ok")}


def test_kill_9_at_any_moment_then_resume(tmp_path):
    music = tmp_path / "music"
    music.mkdir()
    for i in range(N_SONGS):
        write_song(music / f"song{i:02d}.wav", seed=i, seconds=15)
    ref = tmp_path / "ref"
    with Library.open(ref, write=True, code_model="unittest_hash") as lib:
        lib.index([music], workers=0)

    lib = tmp_path / "lib"
    db = lib / "library.db"
    rng = np.random.default_rng(0)
    kills = 0
    # kill during start-up and schema creation (-1: no tracks table yet), then after 0, 3, 6, 9 rows
    for target in (-1, 0, 3, 6, 9):
        proc = start_index(music, lib)
        deadline = time.monotonic() + 120
        while rows_written(db) < target and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.01)
        time.sleep(float(rng.uniform(0, 0.3)))  # land anywhere inside the next track's write
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            kills += 1
        proc.wait()
        # whatever moment it died at, the library opens, for reading and for writing
        if db.exists():
            with Library.open(lib, write=True, code_model="unittest_hash") as opened:
                assert opened.stats().n_tracks <= N_SONGS
    assert kills >= 4, "the runs finished before they could be killed; make them longer"

    proc = start_index(music, lib)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err.decode()
    with Library.open(lib) as opened:
        stats = opened.stats()
        assert (stats.n_tracks, stats.n_pending, stats.n_errors) == (N_SONGS, 0, 0)
    got, want = codes_by_name(lib), codes_by_name(ref)
    assert got.keys() == want.keys()
    for name in want:
        assert np.array_equal(got[name].segment_codes, want[name].segment_codes), name
        assert np.array_equal(got[name].segment_times, want[name].segment_times), name
        assert np.array_equal(got[name].track_code, want[name].track_code), name
