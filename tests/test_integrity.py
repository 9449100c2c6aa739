"""Nothing lost, never a traceback, never a silent wrong answer: the store under damage and misuse.

Store-level tests take ``lib``: metadata in SQLite and in PostgreSQL.
"""

import contextlib
import re
import shutil
import sqlite3

import h5py
import numpy as np
import pytest
from sqlalchemy import create_engine, inspect, text
from test_store import BITS, MODEL, Lib, fill, make_track

from musichash.indexer import records
from musichash.indexer.codes_file import H5_KW, codes_checksum
from musichash.indexer.store import (
    CODES_FILE,
    DB_FILE,
    ID_FILE,
    SCHEMA_VERSION,
    DamagedCodesError,
    LibraryError,
    LibraryMismatchError,
    LibraryStore,
)

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
    with lib.open() as store:  # a reader sees every track's codes as damaged, never as codes
        assert store.check_codes().problems[0].what.startswith("the codes file is damaged (Link iteration failed")
        with pytest.raises(DamagedCodesError, match=r"run `musichash check --repair`"):
            store.get_codes(ids[0])
        assert len(store.code_tables()[1]) == 0
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
