"""Nothing lost, never a traceback, never a silent wrong answer: the store under damage and misuse.

Store-level tests take ``lib`` (test_store.py's fixture): metadata in SQLite and in PostgreSQL.
The CLI tests work on copies of one small library indexed once with the tiny test model.
"""

import contextlib
import json
import os
import re
import shutil
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path

import h5py
import numpy as np
import pytest
from click.testing import CliRunner

ROOT = Path(__file__).resolve().parent.parent  # the repository, where `python -c` imports musichash from
from sqlalchemy import create_engine, inspect, text
from synth import write_song
from test_store import BITS, MODEL, Lib, fill, make_track

from musichash.cli import cli
from musichash.indexer import records
from musichash.indexer.codes_file import H5_KW, codes_checksum
from musichash.indexer.store import (
    CODES_FILE,
    DB_FILE,
    ID_FILE,
    SCHEMA_VERSION,
    DamagedCodesError,
    DatabaseURLError,
    EmptyLibraryError,
    LibraryError,
    LibraryMismatchError,
    LibraryStore,
)
from musichash.library import Library
from musichash.search.cache import INDEX_DIR

CODE_MODEL = "unittest_hash"


# ------------------------------------------------------------------ helpers


@pytest.fixture
def rng():
    return np.random.default_rng(1338)


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def lib(request, tmp_path):
    """A library not yet created, its metadata in SQLite or in an empty PostgreSQL database (as in test_store)."""
    url = request.getfixturevalue("pg_url") if request.param == "postgresql" else None
    return Lib(tmp_path / "lib", url)


def flip_data(codes_h5, track_id: int, dataset: str) -> None:
    """Bit rot: invert one byte of a dataset's raw data (HDF5 checksums metadata, not data)."""
    with h5py.File(codes_h5, "r", **H5_KW) as h5:
        offset = h5[f"tracks/{track_id}/{dataset}"].id.get_offset()
    with open(codes_h5, "r+b") as f:
        f.seek(offset)
        byte = f.read(1)[0]
        f.seek(offset)
        f.write(bytes([byte ^ 0xFF]))


def garble_header(codes_h5, obj: str) -> None:
    """Damage the (checksummed) object header of ``obj`` in codes.h5."""
    with h5py.File(codes_h5, "r", **H5_KW) as h5:
        addr = h5py.h5o.get_info(h5[obj].id).addr
    garble_at(codes_h5, addr + 6)


def garble_at(path, offset: int, n: int = 4) -> None:
    data = bytearray(path.read_bytes())
    data[offset : offset + n] = bytes(b ^ 0xA5 for b in data[offset : offset + n])
    path.write_bytes(data)


def meta(url: str, key: str) -> str | None:
    engine = create_engine(url)
    with engine.connect() as conn:
        value = conn.execute(text("SELECT value FROM meta WHERE key = :k"), {"k": key}).scalar()
    engine.dispose()
    return value


def snapshot(folder) -> dict:
    """Every file under ``folder``: (size, mtime in ns)."""
    return {str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns) for p in folder.rglob("*") if p.is_file()}


def run(*args, **kw):
    return CliRunner().invoke(cli, [str(a) for a in args], **kw)


# ---------------------------------------------------- 1. a library knows its parts


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def shared_url(request, tmp_path):
    """An external database (SQLite file or PostgreSQL) that two folders could be given with."""
    if request.param == "postgresql":
        return request.getfixturevalue("pg_url")
    return f"sqlite:///{tmp_path / 'shared.db'}"


def test_one_database_with_another_folder_is_refused_before_anything_changes(tmp_path, shared_url, rng):
    a, b = Lib(tmp_path / "a", shared_url), Lib(tmp_path / "b", shared_url)
    fill(a, rng, n=3)
    where = records.shown_url(shared_url)
    message = (f"{b.folder}: the database {where} belongs to the library at {a.folder.resolve()}; "
               f"give its --library, or a new --db-url for this folder")
    with pytest.raises(LibraryMismatchError) as e:
        b.writer()
    assert str(e.value) == message
    assert not b.folder.exists()  # refused before the folder or its lock was made
    b.folder.mkdir()
    with pytest.raises(LibraryMismatchError, match=re.escape(message)):
        b.open()
    with a.open() as store:  # nothing was marked pending or deleted
        assert [t.status for t in store.tracks()] == ["ok"] * 3
        assert len(store.iter_segment_codes().codes) > 0
    with a.writer() as store:
        assert not store.repair_report.changed


def test_ids_on_both_sides(lib, rng):
    fill(lib, rng, n=1)
    library_id = meta(lib.sql_url, "library_id")
    assert re.fullmatch(r"[0-9a-f]{32}", library_id)
    assert (lib.folder / ID_FILE).read_text() == library_id + "\n"
    with h5py.File(lib.codes, "r") as h5:
        assert h5.attrs["library_id"] == library_id
    assert meta(lib.sql_url, "library_folder") == str(lib.folder.resolve())


def test_a_new_database_with_a_folder_of_another_library_is_refused(tmp_path, lib, rng):
    fill(lib, rng, n=1)
    other = f"sqlite:///{tmp_path / 'new.db'}"
    with pytest.raises(LibraryMismatchError) as e:
        LibraryStore.open(lib.folder, other, write=True, code_model=MODEL, bits=BITS)
    assert str(e.value) == (
        f"{lib.folder}: this folder holds the codes of another library, whose database is not {other}; "
        f"give that library's --db-url, or another --library for a new library"
    )
    engine = create_engine(other)
    assert inspect(engine).get_table_names() == []  # no library was made in it
    engine.dispose()


def test_a_moved_folder_keeps_its_database_and_records_where_it_went(tmp_path, rng):
    url = f"sqlite:///{tmp_path / 'lib.db'}"
    old, new = Lib(tmp_path / "old", url), Lib(tmp_path / "new", url)
    fill(old, rng, n=2)
    old.folder.rename(new.folder)
    with new.open() as store:
        assert len(store.tracks("ok")) == 2
    with new.writer() as store:
        assert not store.repair_report.changed
    assert meta(url, "library_folder") == str(new.folder.resolve())


def test_codes_of_another_library_are_refused(tmp_path, rng):
    x, y = Lib(tmp_path / "x", None), Lib(tmp_path / "y", None)
    fill(x, rng, n=1)
    fill(y, rng, n=1)
    shutil.copy(x.codes, y.codes)
    for open_ in (y.open, y.writer):
        with pytest.raises(LibraryMismatchError, match=rf"{re.escape(str(y.codes))}: holds the codes of another library"):
            open_()
    with h5py.File(y.codes, "r") as h5:  # nothing deleted from them
        assert len(h5["tracks"]) == 1


def _as_v2(lib) -> None:
    """Make the library look as format v2 left it: no ids, no checksums."""
    engine = create_engine(lib.sql_url)
    with engine.begin() as conn:
        conn.execute(text("DELETE FROM meta WHERE key IN ('library_id', 'library_folder')"))
        conn.execute(text("UPDATE meta SET value = '2' WHERE key = 'schema_version'"))
    engine.dispose()
    (lib.folder / ID_FILE).unlink()
    with h5py.File(lib.codes, "a", **H5_KW) as h5:
        del h5.attrs["library_id"]
        for g in h5["tracks"].values():
            del g.attrs["checksum"]


def test_a_library_from_before_ids_and_checksums_is_adopted_not_redone(lib, rng):
    ids, items = fill(lib, rng, n=3)
    _as_v2(lib)
    with lib.open() as reader:  # read as it is: nothing to compare, nothing refused
        assert [t.id for t in reader.tracks("ok")] == ids
        assert reader.codes_intact(ids[0])
    with lib.writer() as store:
        assert store.repair_report.checksums_added == 3
        assert store.repair_report.marked_pending == () and not store.repair_report.changed
    assert meta(lib.sql_url, "schema_version") == str(SCHEMA_VERSION)
    library_id = meta(lib.sql_url, "library_id")
    assert (lib.folder / ID_FILE).read_text().strip() == library_id
    with h5py.File(lib.codes, "r") as h5:
        assert h5.attrs["library_id"] == library_id
        assert all("checksum" in g.attrs for g in h5["tracks"].values())
    with lib.open() as store:
        for tid, (_, (tc, sc, st)) in zip(ids, items):
            np.testing.assert_array_equal(store.get_codes(tid).segment_codes, sc)


def test_a_crash_between_the_database_and_the_folder_is_completed(lib, rng):
    fill(lib, rng, n=1)
    (lib.folder / ID_FILE).unlink()  # the id reached the database, not the folder
    with h5py.File(lib.codes, "a", **H5_KW) as h5:
        del h5.attrs["library_id"]
    with lib.open() as store:
        assert len(store.tracks("ok")) == 1
    with lib.writer():
        pass
    assert (lib.folder / ID_FILE).read_text().strip() == meta(lib.sql_url, "library_id")


# --------------------------------------------------------- 2. checksums on codes


def test_every_group_carries_the_checksum_of_its_codes(lib, rng):
    ids, _ = fill(lib, rng, n=2)
    with h5py.File(lib.codes, "r") as h5:
        for tid in ids:
            g = h5[f"tracks/{tid}"]
            chroma = g["chroma"][()] if "chroma" in g else None
            want = codes_checksum(g["track_code"][()], g["segment_codes"][()], g["segment_times"][()], chroma)
            assert g.attrs["checksum"] == want


def test_bit_rot_in_codes_is_never_read_as_codes(lib, rng):
    ids, _ = fill(lib, rng, n=3)
    flip_data(lib.codes, ids[1], "segment_codes")
    message = (f"{lib.codes}: the codes of track {ids[1]} are damaged (checksum mismatch); "
               f"run `musichash check --repair`")
    with lib.open() as store:
        with pytest.raises(DamagedCodesError) as e:
            store.get_codes(ids[1])
        assert str(e.value) == message and e.value.track_id == ids[1]
        with pytest.raises(DamagedCodesError, match=re.escape(message)):
            store.get_chroma(ids[1])
        assert not store.codes_intact(ids[1]) and store.codes_intact(ids[0])
        table, track_ids, _ = store.code_tables()
        assert set(table.track_ids) == set(track_ids) == {ids[0], ids[2]}
        assert store.damaged == {ids[1]}
        found = store.check_codes()
        assert [(p.track_id, p.what) for p in found.problems] == [
            (ids[1], f"track {ids[1]} (/music/song1.mp3): damaged codes (checksum mismatch)")
        ]
        assert (found.checked, found.unchecked) == (3, 0)


def test_a_damaged_write_salvages_the_file_and_loses_nothing_else(lib, rng, monkeypatch):
    ids, items = fill(lib, rng, n=3)
    from musichash.indexer import store as store_module

    real, calls = store_module.write_group, []

    def fails_once(*args):
        calls.append(args[1])
        if len(calls) == 1:
            raise KeyError("Couldn't delete link (incorrect metadata checksum after all read attempts)")
        return real(*args)

    monkeypatch.setattr(store_module, "write_group", fails_once)
    rec, codes = make_track(rng, 7)
    with lib.writer() as store:
        t = store.put_track(rec, *codes)
        aside = store.repair_report.codes_set_aside
        assert aside is not None and aside.name.startswith(f"{CODES_FILE}.corrupt-") and aside.exists()
        assert store.repair_report.marked_pending == ()
    monkeypatch.undo()
    with lib.open() as store:
        assert [x.status for x in store.tracks()] == ["ok"] * 4
        for tid, (_, (tc, sc, st)) in zip(ids, items):
            np.testing.assert_array_equal(store.get_codes(tid).segment_codes, sc)
        np.testing.assert_array_equal(store.get_codes(t.id).segment_codes, codes[1])


# ------------------------------------------------ 5. damaged codes.h5 metadata


def test_a_garbled_track_index_is_salvaged_by_the_writer(lib, rng):
    ids, _ = fill(lib, rng, n=20)  # more than 8 links: the track group's index is a B-tree
    data = lib.codes.read_bytes()
    garble_at(lib.codes, data.index(b"BTLF") + 6)
    with h5py.File(lib.codes, "r", **H5_KW) as h5, pytest.raises(RuntimeError, match="Link iteration failed"):
        list(h5["tracks"])
    message = rf"^{re.escape(str(lib.codes))}: the codes file is damaged \(.*\); run `musichash check --repair`$"
    with lib.open() as store:  # a reader is told, for the file, never reads garbage as codes
        assert store.check_codes().problems[0].what.startswith("the codes file is damaged (Link iteration failed")
        with pytest.raises(DamagedCodesError, match=message) as e:
            store.get_codes(ids[0])
        assert e.value.track_id is None
        with pytest.raises(DamagedCodesError, match=message):
            store.code_tables()
        assert store.damaged == set()
    with lib.writer() as store:
        report = store.repair_report
        assert report.codes_set_aside is not None and report.codes_set_aside.exists()
        assert report.marked_pending == tuple(ids)
    with lib.open() as store:
        assert store.check_codes().problems == ()


def test_a_garbled_track_header_costs_that_track_only(lib, rng):
    ids, items = fill(lib, rng, n=4)
    garble_header(lib.codes, f"tracks/{ids[2]}")
    with lib.open() as store:
        [problem] = store.stats(check=True).problems
        assert problem == f"{lib.codes}: track {ids[2]} (/music/song2.mp3): damaged codes (unreadable or malformed)"
        with pytest.raises(DamagedCodesError, match="unreadable"):
            store.get_chroma(ids[2])
    with lib.writer() as store:
        assert store.repair_report.marked_pending == (ids[2],)
        assert [t.id for t in store.tracks("ok")] == [ids[0], ids[1], ids[3]]
        np.testing.assert_array_equal(store.get_codes(ids[3]).segment_codes, items[3][1][1])


# ------------------------------------------------------- 6. readers never write


def test_a_reader_opens_sqlite_so_it_cannot_write(lib, rng, monkeypatch):
    fill(lib, rng, n=1)
    if lib.url is not None:
        return  # PostgreSQL: read-only transactions, below
    with lib.open() as store, pytest.raises(Exception, match="attempt to write a readonly database"), \
            store._engine.begin() as conn:
        conn.execute(text("DELETE FROM tracks"))
    with contextlib.closing(sqlite3.connect(lib.folder / DB_FILE)) as conn:
        assert conn.execute("SELECT count(*) FROM tracks").fetchone()[0] == 1
    assert records.sqlite_reader_uri(lib.folder / DB_FILE).endswith("?mode=rw")
    monkeypatch.setattr(records, "folder_writable", lambda folder: False)
    assert records.sqlite_reader_uri(lib.folder / DB_FILE).endswith("?mode=ro&immutable=1")
    before = snapshot(lib.folder)
    with lib.open() as store:
        assert len(store.tracks("ok")) == 1
    assert snapshot(lib.folder) == before


@pytest.mark.postgres
def test_a_reader_of_postgresql_cannot_write(tmp_path, pg_url, rng):
    lib = Lib(tmp_path / "lib", pg_url)
    fill(lib, rng, n=1)
    with lib.open() as store, pytest.raises(Exception, match="read-only transaction"), store._engine.begin() as conn:
        conn.execute(text("DELETE FROM tracks"))


def test_a_reader_does_not_create_a_database(tmp_path):
    missing = tmp_path / "none.db"
    with pytest.raises(LibraryError, match="no musichash library in this database"):
        LibraryStore.open(tmp_path / "lib", f"sqlite:///{missing}")
    assert not missing.exists() and not (tmp_path / "lib").exists()


# ------------------------------------------------------- the CLI on a real library


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """Three songs indexed once (codes and index cache); tests change copies (``copy``). Segments every
    80 frames: the segment counts the messages below name were read at that hop."""
    root = tmp_path_factory.mktemp("integrity")
    music = root / "music"
    music.mkdir()
    for i in range(3):
        write_song(music / f"song{i}.wav", seed=i, seconds=8)
    lib = root / "lib"
    with Library.open(lib, write=True, code_model=CODE_MODEL, segment_hop=80) as opened:
        opened.index([music], workers=0)
        opened.search_index()
    return music, lib


@pytest.fixture
def copy(built, tmp_path):
    music, lib = built
    shutil.copytree(lib, tmp_path / "lib")
    return music, tmp_path / "lib"


def track_of(lib, name: str) -> int:
    with Library.open(lib) as opened:
        return next(t.id for t in opened.store.tracks() if t.path.endswith(name))


def test_cli_refuses_a_second_folder_for_one_database(tmp_path, built, monkeypatch):
    music, _ = built
    url = f"sqlite:///{tmp_path / 'shared.db'}"
    a, b = tmp_path / "a", tmp_path / "b"
    assert run("index", music / "song0.wav", "--library", a, "--db-url", url, "--code-model", CODE_MODEL,
               "--workers", "0", "-q").exit_code == 0
    expect = (f"Error: {b}: the database {url} belongs to the library at {a.resolve()}; "
              f"give its --library, or a new --db-url for this folder\n")
    result = run("index", music, "--library", b, "--db-url", url, "--workers", "0")
    assert (result.exit_code, result.stderr) == (1, expect)
    monkeypatch.setenv("MUSICHASH_LIBRARY", str(b))  # the default folder
    result = run("search", music / "song0.wav", "--db-url", url)
    assert (result.exit_code, result.stderr) == (1, expect)
    assert json_of(run("stats", "--library", a, "--db-url", url, "--json"))["tracks"] == 1


def json_of(result) -> dict:
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def test_reading_changes_no_file(copy):
    music, lib = copy
    before = snapshot(lib)
    for args in (["search", music / "song1.wav"], ["stats"], ["check"], ["dedup"], ["similar", music / "song0.wav"]):
        assert run(*args, "--library", lib).exit_code == 0, args
    assert snapshot(lib) == before  # SQLite's -wal and -shm come and go with the connection


def _as_if_not_root() -> list[str] | None:
    """A command prefix under which even root obeys file permissions (no CAP_DAC_OVERRIDE); None where unavailable."""
    if os.geteuid() != 0:
        return []
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        return None
    prefix = [setpriv, "--bounding-set=-dac_override,-dac_read_search,-fowner", "--"]
    return prefix if subprocess.run([*prefix, "true"], check=False).returncode == 0 else None


def _chmod_tree(folder, write: bool) -> None:
    for p in [folder, *folder.rglob("*")]:
        mode = p.stat().st_mode
        p.chmod(mode | 0o200 if write else mode & ~0o222)


def test_a_read_only_folder_is_read_and_left_as_it_was(copy):
    prefix = _as_if_not_root()
    if prefix is None:
        pytest.skip("running as root without setpriv: a chmod does not stop root writing")
    music, lib = copy
    shutil.rmtree(lib / INDEX_DIR)  # so that the reader builds its index, in memory
    commands = [["search", str(music / "song1.wav")], ["stats"], ["check"], ["index", str(music), "--workers", "0"]]
    script = textwrap.dedent(f"""
        import json
        from click.testing import CliRunner
        from musichash.cli import cli
        for args in {commands!r}:
            r = CliRunner().invoke(cli, [*args, "--library", {str(lib)!r}])
            print(json.dumps([r.exit_code, r.stdout, r.stderr]))
    """)
    _chmod_tree(lib, write=False)
    try:
        before = snapshot(lib)
        proc = subprocess.run([*prefix, sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True,
                              check=False)
        after = snapshot(lib)
    finally:
        _chmod_tree(lib, write=True)
    assert proc.returncode == 0, proc.stderr
    search, stats, check, index = (json.loads(line) for line in proc.stdout.splitlines())
    assert search[0] == 0 and search[1].startswith(f"{music / 'song1.wav'}  (8.0 s): match\n"), search
    assert stats[0] == 0 and stats[2] == "", stats
    assert check == [0, (f"{lib}: healthy: database ok, codes of 3 tracks verified, index not built yet "
                         f"(the first search builds it)\n"), ""]
    assert index == [1, "", (f"Error: {lib}: the library folder is not writable; musichash index needs to write "
                             f"there: fix its permissions, or give another --library\n")]
    assert after == before


def test_index_where_the_lock_cannot_be_made_is_one_line(copy, monkeypatch):
    music, lib = copy
    real = os.open

    def refuse_lock(path, *args, **kw):
        if str(path).endswith(".lock"):
            raise PermissionError(13, "Permission denied", str(path))
        return real(path, *args, **kw)

    monkeypatch.setattr(os, "open", refuse_lock)
    result = run("index", music, "--library", lib, "--workers", "0")
    assert (result.exit_code, result.stderr) == (1, (
        f"Error: {lib}: the library folder is not writable (Permission denied); musichash index needs to write "
        f"there: fix its permissions, or give another --library\n"))


def test_check_healthy(copy):
    _, lib = copy
    result = run("check", "--library", lib)
    assert (result.exit_code, result.stderr) == (0, "")
    assert result.stdout == f"{lib}: healthy: database ok, codes of 3 tracks verified, index ok\n"
    assert json_of(run("check", "--library", lib, "--json")) == {
        "library": str(lib), "healthy": True, "tracks": 3, "without_checksum": 0, "pending": 0, "index": "ok",
        "problems": [], "repaired": []}


def test_damaged_codes_found_by_check_redone_by_index(copy):
    music, lib = copy
    tid = track_of(lib, "song1.wav")
    with Library.open(lib) as opened:
        before = opened.store.get_codes(tid)
    flip_data(lib / CODES_FILE, tid, "segment_codes")
    result = run("check", "--library", lib)
    assert result.exit_code == 1
    assert result.stdout == f"{lib / CODES_FILE}: track {tid} ({music / 'song1.wav'}): damaged codes (checksum mismatch)\n"
    assert result.stderr == f"Error: {lib}: 1 problems; `musichash check --repair` fixes what it can\n"
    result = run("index", music, "--library", lib, "--workers", "0")
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines()[1:] == ["  1 tracks with damaged codes redone"]
    assert result.stdout.startswith(f"{lib}: 0 added, 1 updated, 2 unchanged,")
    with Library.open(lib) as opened:
        after = opened.store.get_codes(tid)
    np.testing.assert_array_equal(after.segment_codes, before.segment_codes)
    assert json_of(run("index", music, "--library", lib, "--json", "--workers", "0"))["damaged_redone"] == []


def test_check_repair_redoes_damaged_tracks_and_rebuilds_the_cache(copy):
    _, lib = copy
    tid = track_of(lib, "song2.wav")
    flip_data(lib / CODES_FILE, tid, "chroma")
    garble_at(lib / INDEX_DIR / "segments.npz", 80)
    result = run("check", "--library", lib, "--repair")
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines() == [
        "repaired: 1 tracks with damaged or missing codes marked to be redone",
        "repaired: 1 tracks indexed again",
        "repaired: index rebuilt (flat, 15 segments, 3 tracks)",
        f"{lib}: healthy: database ok, codes of 3 tracks verified, index ok",
    ]
    assert run("check", "--library", lib).exit_code == 0


def test_check_repair_cannot_redo_a_track_whose_file_is_gone(copy, tmp_path):
    music, lib = copy
    moved = tmp_path / "music"
    shutil.copytree(music, moved)
    tid = track_of(lib, "song0.wav")
    flip_data(lib / CODES_FILE, tid, "segment_times")
    with Library.open(lib, write=True) as opened:  # the track points at a file that will vanish
        t = opened.store.get(tid)
        opened.store.update_file(tid, str(moved / "song0.wav"), t.size, t.mtime)
    (moved / "song0.wav").unlink()
    result = run("check", "--library", lib, "--repair", "--json")
    assert result.exit_code == 1
    obj = json.loads(result.stdout)
    assert obj["repaired"] == ["1 tracks with damaged or missing codes marked to be redone", "index rebuilt (flat, 10 segments, 2 tracks)"]
    assert obj["problems"] == [{"where": str(lib), "track_id": tid, "what": (
        f"track {tid} ({moved / 'song0.wav'}): waits to be indexed again (pending), but its file is gone; "
        f"restore it, or `musichash remove` it")}]
    assert result.stderr == f"Error: {lib}: 1 problems; see above\n"


def test_search_leaves_out_a_damaged_track_rather_than_skip_its_harmony_check(copy):
    music, lib = copy
    tid = track_of(lib, "song1.wav")
    with Library.open(lib) as opened:
        [before] = opened.search([music / "song1.wav"])
    assert before.results[0].track_id == tid and before.chroma is not None
    flip_data(lib / CODES_FILE, tid, "chroma")  # the cached index still holds its segments
    with Library.open(lib) as opened:
        [after] = opened.search([music / "song1.wav"])
        assert opened.damaged == [tid]
    assert tid not in [h.track_id for h in after.results]
    assert after.chroma is not None  # the track now first had its harmony checked
    result = run("search", music / "song1.wav", "--library", lib)
    assert result.exit_code == 0
    assert result.stderr == (f"Warning: {lib / CODES_FILE}: 1 tracks left out, their stored codes are damaged or "
                             f"missing; run `musichash check --repair`\n")


def test_stats_does_not_call_garbled_metadata_healthy(copy):
    music, lib = copy
    tid = track_of(lib, "song0.wav")
    assert json_of(run("stats", "--library", lib, "--json"))["health"] == "codes.h5 metadata ok"
    garble_header(lib / CODES_FILE, f"tracks/{tid}/segment_codes")
    result = run("stats", "--library", lib, "--json")
    obj = json_of(result)
    problem = f"{lib / CODES_FILE}: track {tid} ({music / 'song0.wav'}): damaged codes (unreadable or malformed)"
    assert obj["health"] == "1 problems: run `musichash check`" and obj["problems"] == [problem]
    assert result.stderr == f"Warning: {problem}; run `musichash check --repair`\n"


# ------------------------------------------------------- 4. the index cache


@pytest.mark.parametrize("name", ["segment_codes.npy", "segments.npz", "segments.faiss", "tracks.faiss"])
def test_a_damaged_cache_file_is_rebuilt_not_used(copy, name, monkeypatch):
    music, lib = copy
    with Library.open(lib) as opened:
        [want] = opened.search([music / "song2.wav"])
        assert not opened.search_index().rebuilt
    path = lib / INDEX_DIR / name
    garble_at(path, path.stat().st_size - 3, 2)  # the last bytes: codes, not a header
    result = run("check", "--library", lib, "--json")
    assert result.exit_code == 1
    [problem] = json.loads(result.stdout)["problems"]
    assert problem["where"] == str(path) and problem["what"].startswith("damaged index cache (")
    garbled = path.read_bytes()
    monkeypatch.setattr(records, "folder_writable", lambda folder: False)
    with Library.open(lib) as opened:  # a reader that cannot write rebuilds in memory
        assert opened.search_index().rebuilt
        [got] = opened.search([music / "song2.wav"])
    assert path.read_bytes() == garbled
    assert [(h.track_id, h.score) for h in got.results] == [(h.track_id, h.score) for h in want.results]
    monkeypatch.undo()
    with Library.open(lib) as opened:  # one that can, saves it again
        assert opened.search_index().rebuilt
    assert json_of(run("check", "--library", lib, "--json"))["index"] == "ok"


def test_a_cache_without_checksums_is_rebuilt(copy):
    _, lib = copy
    table = lib / INDEX_DIR / "segments.npz"
    with np.load(table) as z:
        np.savez(table, **{k: z[k] for k in ("track_ids", "times", "stamp")})  # as an older musichash wrote it
    with Library.open(lib) as opened:
        assert opened.search_index().rebuilt


# ------------------------------------------------ 5. damaged files, one line each


def test_a_damaged_database_is_one_line_naming_the_fix(copy):
    music, lib = copy
    db = lib / DB_FILE
    good = db.read_bytes()
    db.write_bytes(b"\0" * 100 + good[100:])
    for args in (["search", music / "song0.wav"], ["stats"], ["index", music, "--workers", "0"], ["check"]):
        result = run(*args, "--library", lib)
        assert (result.exit_code, result.stderr) == (1, (
            f"Error: {db}: the library database is damaged (file is not a database); restore it from a backup, "
            f"or index the music again into a new library\n")), args
    db.write_bytes(good[: len(good) // 3])
    result = run("stats", "--library", lib)
    assert result.exit_code == 1
    assert result.stderr == (f"Error: {db}: the library database is damaged (database disk image is malformed); "
                             f"restore it from a backup, or index the music again into a new library\n")


def test_garbled_codes_h5_readers_point_to_check_and_index_sets_it_aside(copy):
    music, lib = copy
    garble_header(lib / CODES_FILE, "tracks")
    result = run("search", music / "song0.wav", "--library", lib)
    assert result.exit_code == 1
    assert re.fullmatch(rf"Error: {re.escape(str(lib / CODES_FILE))}: the codes file is damaged \(.*\); "
                        r"run `musichash check --repair` to set it aside and redo the codes\n", result.stderr)
    result = run("index", music, "--library", lib, "--workers", "0")
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith(f"{lib}: 0 added, 3 updated, 0 unchanged")
    assert re.fullmatch(rf"Warning: {re.escape(str(lib))}: repaired after an interrupted run or damage \(3 tracks to "
                        rf"redo, 0 stray code groups removed, the damaged codes file kept as "
                        rf"{re.escape(str(lib / CODES_FILE))}\.corrupt-\d{{8}}T\d+Z\); `musichash index` completes it\n",
                        result.stderr)
    assert run("check", "--library", lib).exit_code == 0


@pytest.mark.parametrize("url, shown", [
    ("garbage", "garbage"),
    ("postgresql+psycopg://me:hunter2@host:port/db", "postgresql+psycopg://me:***@host:port/db"),
])
def test_a_bad_db_url_is_a_usage_error_naming_the_form(copy, url, shown):
    _, lib = copy
    result = run("stats", "--library", lib, "--db-url", url)
    assert (result.exit_code, result.stderr) == (2, (
        f"Error: --db-url {shown}: not a database URL; give one like postgresql+psycopg://user@host/dbname "
        f"or sqlite:///path/to/library.db\n"))
    with pytest.raises(DatabaseURLError):
        Library.open(lib, db_url=url)


# ------------------------------------------------------- 7. an empty library


@pytest.mark.parametrize("code_model", [CODE_MODEL, "unittest_crnnh"])  # crnnh: re-ranked lookups, IndexError
def test_searching_an_empty_library_says_to_index(tmp_path, built, code_model):
    music, _ = built
    lib = tmp_path / "lib"
    Library.open(lib, write=True, code_model=code_model).close()
    result = run("search", music / "song0.wav", "--library", lib)
    assert (result.exit_code, result.stderr) == (1, (
        f"Error: {lib}: the library has no indexed tracks yet; run musichash index PATH... --library {lib}\n"))
    with Library.open(lib) as opened, pytest.raises(EmptyLibraryError, match="no indexed tracks yet"):
        list(opened.search([music / "song0.wav"]))


def test_a_library_killed_before_its_first_track_says_to_index(tmp_path, built, rng):
    music, _ = built
    lib = tmp_path / "lib"
    with Library.open(lib, write=True, code_model=CODE_MODEL) as opened:  # a row committed 'pending', no codes yet
        opened.store.mark_pending([opened.store.put_error(str(music / "song0.wav"), "0" * 64, 1, 1.0, "x").id])
    result = run("search", music / "song0.wav", "--library", lib)
    assert result.exit_code == 1 and "the library has no indexed tracks yet" in result.stderr
