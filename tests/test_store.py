"""The library store: SQL metadata and HDF5 codes kept consistent across crashes.

Tests that take ``lib`` run twice: metadata in SQLite (library.db) and in PostgreSQL.
"""

import subprocess
import sys
import textwrap
from dataclasses import dataclass, replace
from pathlib import Path

import h5py
import numpy as np
import pytest
from sqlalchemy import create_engine, make_url, text

from musichash.indexer.store import (
    CODES_FILE,
    DB_FILE,
    LOCK_FILE,
    MIN_SCHEMA_VERSION,
    SCHEMA_VERSION,
    LibraryError,
    LibraryLockedError,
    LibraryStore,
    ModelMismatchError,
    SchemaVersionError,
    TrackRecord,
)

MODEL = "crnnh_unittest"
BITS = 64
NB = BITS // 8


def make_track(rng, i, n_segments=None, duration_s=None):
    """A record and seeded random codes for a fake file number ``i``."""
    n = int(rng.integers(1, 20)) if n_segments is None else n_segments
    record = TrackRecord(
        path=f"/music/song{i}.mp3",
        content_hash=f"{i:064x}",
        size=1000 + i,
        mtime=1.7e9 + i,
        duration_s=1.5 * n if duration_s is None else duration_s,
        format="mp3",
        tags=tuple(float(p) for p in rng.random(50, dtype=np.float32)),
    )
    codes = (
        rng.integers(0, 256, NB, dtype=np.uint8),
        rng.integers(0, 256, (n, NB), dtype=np.uint8),
        (np.arange(n) * 1.5).astype(np.float32),
    )
    return record, codes


@pytest.fixture
def rng():
    return np.random.default_rng(1338)


@dataclass(frozen=True)
class Lib:
    """A library folder and where its metadata goes (``url`` None: library.db in the folder)."""

    folder: Path
    url: str | None

    @property
    def codes(self) -> Path:
        return self.folder / CODES_FILE

    @property
    def sql_url(self) -> str:
        return self.url or f"sqlite:///{self.folder / DB_FILE}"

    def open(self, **kw) -> LibraryStore:
        return LibraryStore.open(self.folder, self.url, **kw)

    def writer(self, **kw) -> LibraryStore:
        return self.open(write=True, code_model=MODEL, bits=BITS, **kw)


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def lib(request, tmp_path):
    """A library not yet created, its metadata in SQLite or in an empty PostgreSQL database."""
    url = request.getfixturevalue("pg_url") if request.param == "postgresql" else None
    return Lib(tmp_path / "lib", url)


def fill(lib, rng, n=3):
    """A library with ``n`` tracks; returns their ids, records and codes."""
    items = [make_track(rng, i) for i in range(n)]
    with lib.writer() as store:
        ids = [store.put_track(rec, *codes).id for rec, codes in items]
    return ids, items


def test_round_trip(lib, rng):
    ids, items = fill(lib, rng)
    assert {p.name for p in lib.folder.iterdir()} >= {CODES_FILE, LOCK_FILE}
    assert (lib.folder / DB_FILE).exists() == (lib.url is None)  # only metadata goes to SQL
    with lib.open() as store:
        assert not store.writable
        assert (store.code_model, store.bits) == (MODEL, BITS)
        tracks = store.tracks()
        assert [t.id for t in tracks] == ids
        for t, (rec, (tc, sc, st)) in zip(tracks, items):
            assert t.status == "ok" and t.error is None
            assert (t.path, t.content_hash, t.size, t.mtime, t.duration_s, t.format) == (
                rec.path,
                rec.content_hash,
                rec.size,
                rec.mtime,
                rec.duration_s,
                rec.format,
            )
            assert t.tags == rec.tags  # already float32 values, so exact
            assert t.n_segments == len(sc)
            assert t.added <= t.updated
            codes = store.get_codes(t.id)
            np.testing.assert_array_equal(codes.track_code, tc)
            np.testing.assert_array_equal(codes.segment_codes, sc)
            np.testing.assert_array_equal(codes.segment_times, st)
            assert codes.segment_codes.dtype == np.uint8 and codes.segment_times.dtype == np.float32
        table = store.iter_segment_codes()
    np.testing.assert_array_equal(table.codes, np.concatenate([c[1] for _, c in items]))
    np.testing.assert_array_equal(
        table.track_ids, np.concatenate([np.full(len(c[1]), i) for i, (_, c) in zip(ids, items)])
    )
    np.testing.assert_array_equal(table.times, np.concatenate([c[2] for _, c in items]))
    assert table.track_ids.dtype == np.int64 and table.times.dtype == np.float32


def test_h5_layout(lib, rng):
    ids, items = fill(lib, rng, n=1)
    with h5py.File(lib.codes, "r") as h5:
        assert h5.attrs["code_model"] == MODEL and h5.attrs["bits"] == BITS
        g = h5[f"tracks/{ids[0]}"]
        n = len(items[0][1][1])
        assert g["track_code"].shape == (NB,) and g["track_code"].dtype == np.uint8
        assert g["segment_codes"].shape == (n, NB) and g["segment_codes"].dtype == np.uint8
        assert g["segment_times"].shape == (n,) and g["segment_times"].dtype == np.float32


def test_put_track_replaces_same_path(lib, rng):
    rec, codes = make_track(rng, 0, n_segments=4)
    rec2, codes2 = make_track(rng, 0, n_segments=2)
    with lib.writer() as store:
        first = store.put_track(rec, *codes)
        second = store.put_track(rec2, *codes2)
        assert second.id == first.id and second.added == first.added
        assert len(store.tracks()) == 1 and second.n_segments == 2
        np.testing.assert_array_equal(store.get_codes(first.id).segment_codes, codes2[1])


def test_track_without_segments(lib, rng):
    rec, codes = make_track(rng, 0, n_segments=0, duration_s=0.5)
    with lib.writer() as store:
        t = store.put_track(rec, *codes)
        assert t.n_segments == 0 and store.get_codes(t.id).segment_codes.shape == (0, NB)
        table = store.iter_segment_codes()
    assert (
        table.codes.shape == (0, NB) and table.track_ids.shape == (0,) and table.times.shape == (0,)
    )


def test_put_track_checks_shapes(lib, rng):
    rec, (tc, sc, st) = make_track(rng, 0)
    with lib.writer() as store:
        with pytest.raises(ValueError, match="track_code"):
            store.put_track(rec, tc[:-1], sc, st)
        with pytest.raises(ValueError, match="segment_codes"):
            store.put_track(rec, tc, sc.astype(np.int64), st)
        with pytest.raises(ValueError, match="segment_times"):
            store.put_track(rec, tc, sc, st[:-1])
        assert store.tracks() == []


def test_find_by_hash_and_path(lib, rng):
    ids, items = fill(lib, rng)
    _, codes = make_track(rng, 0)
    with lib.writer() as store:
        copy = TrackRecord("/music/Björk – Jóga (copy).mp3", items[0][0].content_hash, 1, 2.0, 3.0)
        dup = store.put_track(copy, *codes)
    with lib.open() as store:
        assert [t.id for t in store.find_by_hash(items[0][0].content_hash)] == [ids[0], dup.id]
        assert [t.id for t in store.find_by_hash(items[1][0].content_hash)] == [ids[1]]
        assert store.find_by_hash("0" * 63 + "f") == []
        assert store.find_by_path(items[2][0].path).id == ids[2]
        assert store.find_by_path("/music/nope.mp3") is None


def test_get_many_reads_a_result_lists_tracks_in_one_query(lib, rng, monkeypatch):
    ids, _ = fill(lib, rng, n=4)
    with lib.open() as store:
        selects = []
        real = store._select
        monkeypatch.setattr(store, "_select", lambda q: selects.append(q) or real(q))
        found = store.get_many([ids[3], ids[0], ids[3], 10_000])
        assert len(selects) == 1
        assert sorted(found) == [ids[0], ids[3]] and found[ids[3]] == store.get(ids[3])
        assert store.get_many([]) == {}
        monkeypatch.setattr("musichash.indexer.store._chunks", lambda ids, size=2: (ids[i : i + 2] for i in range(0, len(ids), 2)))
        selects.clear()
        assert sorted(store.get_many(ids)) == ids and len(selects) == 2


def test_put_error(lib, rng):
    ids, items = fill(lib, rng, n=2)
    with lib.writer() as store:
        bad = store.put_error("/music/bad.mp3", "ab" * 32, 10, 1.0, "cannot decode")
        # a file that was fine and now fails loses its codes
        failed = store.put_error(items[0][0].path, "cd" * 32, 11, 2.0, "truncated")
        assert failed.id == ids[0]
    with lib.open() as store:
        errors = store.tracks("error")
        assert [(t.path, t.error) for t in errors] == [
            (items[0][0].path, "truncated"),
            ("/music/bad.mp3", "cannot decode"),
        ]
        assert bad.status == "error" and bad.n_segments == 0 and bad.tags is None
        assert [t.id for t in store.tracks("ok")] == [ids[1]]
        with pytest.raises(LibraryError, match="no readable codes"):
            store.get_codes(ids[0])
        assert set(store.iter_segment_codes().track_ids) == {ids[1]}
        with pytest.raises(ValueError):
            store.tracks("done")


def test_remove_deletes_both_sides(lib, rng):
    ids, _ = fill(lib, rng)
    with lib.writer() as store:
        assert store.remove([ids[0], 999]) == 1
        # more ids than one IN (...) takes
        assert store.remove(list(range(1000, 2200)) + [ids[2]]) == 1
        assert store.remove([]) == 0
    with lib.open() as store:
        assert [t.id for t in store.tracks()] == [ids[1]]
    with h5py.File(lib.codes, "r") as h5:
        assert list(h5["tracks"]) == [str(ids[1])]


def test_readers_cannot_write(lib, rng):
    fill(lib, rng, n=1)
    rec, codes = make_track(rng, 5)
    with lib.open() as store:
        with pytest.raises(LibraryError, match="read-only"):
            store.put_track(rec, *codes)


def test_missing_library(lib):
    with pytest.raises(LibraryError, match="no musichash library"):
        lib.open()
    assert not lib.folder.exists()
    with pytest.raises(ValueError, match="code_model and bits"):
        lib.open(write=True)


def test_db_url(tmp_path, rng):
    url = f"sqlite:///{tmp_path / 'elsewhere.db'}"
    rec, codes = make_track(rng, 0)
    with LibraryStore.open(tmp_path / "lib", url, write=True, code_model=MODEL, bits=BITS) as store:
        store.put_track(rec, *codes)
    assert not (tmp_path / "lib" / DB_FILE).exists()
    with LibraryStore.open(tmp_path / "lib", url) as store:
        assert [t.path for t in store.tracks()] == [rec.path]
    with pytest.raises(LibraryError, match="no musichash library"):
        LibraryStore.open(tmp_path / "lib", f"sqlite:///{tmp_path / 'empty.db'}")


@pytest.mark.postgres
def test_db_url_password_not_shown(tmp_path, pg_url):
    url = make_url(pg_url).set(password="hunter2").render_as_string(hide_password=False)
    with pytest.raises(LibraryError, match="no musichash library") as e:
        LibraryStore.open(tmp_path / "lib", url)
    assert "hunter2" not in str(e.value) and "***" in str(e.value)


def test_db_url_errors_name_the_fix(tmp_path, monkeypatch):
    with pytest.raises(LibraryError, match=r"no driver.*pip install 'musichash\[postgres\]'"):
        LibraryStore.open(tmp_path / "lib", "nosuchdb://me:hunter2@host/db")
    pytest.importorskip("psycopg", reason="psycopg not installed (pip install 'psycopg[binary]')")
    down = f"postgresql+psycopg://me:hunter2@/db?host={tmp_path / 'no-server'}"
    with pytest.raises(LibraryError, match="cannot connect.*server is running") as e:
        LibraryStore.open(tmp_path / "lib", down)
    assert "hunter2" not in str(e.value)
    monkeypatch.setitem(sys.modules, "psycopg", None)  # as if not installed
    with pytest.raises(LibraryError, match=r"no driver.*psycopg.*\[postgres\]"):
        LibraryStore.open(tmp_path / "lib", down, write=True, code_model=MODEL, bits=BITS)


def test_second_writer_refused(lib, rng):
    with lib.writer():
        # flock locks belong to an open file description, so this conflicts in-process too
        with pytest.raises(LibraryLockedError, match=r"PID \d+.*wait") as e:
            lib.writer()
        assert str(lib.folder / LOCK_FILE) in str(e.value)
    with lib.writer():  # released on close
        pass


def test_second_writer_refused_across_processes(lib, rng):
    fill(lib, rng, n=1)
    holder = textwrap.dedent(f"""
        import sys
        from musichash.indexer.store import LibraryStore
        store = LibraryStore.open({str(lib.folder)!r}, {lib.url!r}, write=True)
        print("locked", flush=True)
        sys.stdin.read()
        store.close()
    """)
    proc = subprocess.Popen(
        [sys.executable, "-c", holder], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        assert proc.stdout.readline().strip() == "locked"
        with pytest.raises(LibraryLockedError, match=f"PID {proc.pid}"):
            lib.writer()
        # readers take no lock
        with lib.open() as store:
            assert len(store.tracks("ok")) == 1
            assert len(store.iter_segment_codes().codes) > 0
    finally:
        proc.communicate("", timeout=30)
    assert proc.returncode == 0


def test_readers_open_while_writer_writes(lib, rng):
    ids, items = fill(lib, rng, n=1)
    with lib.writer() as w:
        with lib.open() as r:
            assert [t.id for t in r.tracks()] == ids
            rec, codes = make_track(rng, 7)
            new = w.put_track(rec, *codes)
            # the reader sees the commit, and the codes flushed before it
            assert r.find_by_path(rec.path).status == "ok"
            np.testing.assert_array_equal(r.get_codes(new.id).segment_codes, codes[1])


def test_model_mismatch(lib, rng):
    fill(lib, rng, n=1)
    with pytest.raises(ModelMismatchError, match=f"{MODEL} \\(64 bits\\).*other_model.*another --library"):
        lib.open(write=True, code_model="other_model", bits=BITS)
    with pytest.raises(ModelMismatchError, match="128 bits"):
        lib.open(write=True, code_model=MODEL, bits=128)
    with pytest.raises(ModelMismatchError):
        lib.open(code_model="other_model")
    # the failed opens released the lock
    with lib.open(write=True) as store:
        assert (store.code_model, store.bits) == (MODEL, BITS)


@pytest.mark.parametrize(
    "version, fix",
    [(SCHEMA_VERSION + 1, "upgrade musichash"), (MIN_SCHEMA_VERSION - 1, "move the folder away and index the music again")],
)
def test_schema_version_mismatch(lib, rng, version, fix):
    fill(lib, rng, n=1)
    engine = create_engine(lib.sql_url)
    with engine.begin() as conn:
        conn.execute(
            text("UPDATE meta SET value = :v WHERE key = 'schema_version'"), {"v": str(version)}
        )
    engine.dispose()
    with pytest.raises(SchemaVersionError, match=fix):
        lib.open()
    with pytest.raises(SchemaVersionError, match=fix):
        lib.writer()
    with pytest.raises(SchemaVersionError):  # lock was released by the failed open
        lib.writer()


def _as_v1(lib) -> None:
    """Make the library look as format v1 left it: no ``meta.generation``."""
    engine = create_engine(lib.sql_url)
    with engine.begin() as conn:
        conn.execute(text("DELETE FROM meta WHERE key = 'generation'"))
        conn.execute(text("UPDATE meta SET value = '1' WHERE key = 'schema_version'"))
    engine.dispose()


def _meta(lib, key: str) -> str | None:
    engine = create_engine(lib.sql_url)
    with engine.connect() as conn:
        value = conn.execute(text("SELECT value FROM meta WHERE key = :k"), {"k": key}).scalar()
    engine.dispose()
    return value


def test_v1_library_is_read_and_upgraded_in_place(lib, rng):
    ids, items = fill(lib, rng, n=3)
    _as_v1(lib)
    with lib.open() as reader:  # read-only: no upgrade, the stamp aggregates the tracks
        before = reader.stamp()
        assert [t.id for t in reader.tracks("ok")] == ids
        engine = create_engine(lib.sql_url)
        with engine.begin() as conn:  # what a v1 writer's remove would leave
            conn.execute(text("DELETE FROM tracks WHERE id = :i"), {"i": ids[2]})
        engine.dispose()
        assert reader.stamp() != before
    assert _meta(lib, "schema_version") == "1"
    with lib.writer() as w:  # the writer upgrades it
        assert w.repair_report.orphans_removed == (ids[2],)
        rec, codes = make_track(rng, 9)
        w.put_track(rec, *codes)
    assert _meta(lib, "schema_version") == str(SCHEMA_VERSION) and _meta(lib, "generation") is not None
    with lib.open() as store:
        assert len(store.tracks("ok")) == 3
        np.testing.assert_array_equal(store.get_codes(ids[0]).segment_codes, items[0][1][1])


def test_stamp_changes_exactly_when_the_valid_codes_do(lib, rng):
    ids, items = fill(lib, rng, n=3)
    with lib.writer() as store:
        seen = [store.stamp()]

        def changed() -> bool:
            seen.append(store.stamp())
            return seen[-1] != seen[-2]

        rec, codes = items[0]
        moved = store.update_file(ids[0], "/music/moved.mp3", rec.size, rec.mtime)
        assert not changed()  # a move keeps the codes
        store.put_track(replace(rec, path=moved.path, content_hash="f" * 64), *codes)
        assert changed()
        store.put_error(items[1][0].path, "e" * 64, 1, 0.0, "cannot decode")
        assert changed()
        store.remove([ids[2]])
        assert changed()
        assert len(set(seen)) == len(seen) - 1  # never back to an earlier value
    with h5py.File(lib.codes, "a") as h5:
        del h5[f"tracks/{ids[0]}"]  # a crash lost the codes of an 'ok' row
    with lib.writer() as store:  # repair marks it pending
        assert store.repair_report.marked_pending == (ids[0],)
        assert store.stamp() != seen[-1]


def test_put_tracks_commits_many_at_once(lib, rng):
    items = [make_track(rng, i) for i in range(5)]
    with lib.writer() as store:
        tracks = store.put_tracks([(rec, *codes, None) for rec, codes in items])
        assert [t.path for t in tracks] == [rec.path for rec, _ in items]
        assert all(t.status == "ok" and t.n_segments == len(c[1]) for t, (_, c) in zip(tracks, items))
        assert store.put_tracks([]) == []
        with pytest.raises(ValueError, match="the same path twice"):
            store.put_tracks([(items[0][0], *items[0][1], None)] * 2)
        bad = (items[1][0], items[1][1][0][:-1], *items[1][1][1:], None)
        with pytest.raises(ValueError, match="track_code must be uint8"):
            store.put_tracks([(items[0][0], *items[0][1], None), bad])
    with lib.open() as store:
        for t, (_, codes) in zip(tracks, items):
            got = store.get_codes(t.id)
            np.testing.assert_array_equal(got.segment_codes, codes[1])
            np.testing.assert_array_equal(got.track_code, codes[0])


def test_repair_removes_orphan_group(lib, rng):
    ids, _ = fill(lib, rng, n=2)
    with h5py.File(lib.codes, "a") as h5:
        h5.copy(h5[f"tracks/{ids[0]}"], "tracks/77")
    with lib.writer() as store:
        assert store.repair_report.orphans_removed == (77,)
        assert store.repair_report.marked_pending == ()
        assert [t.status for t in store.tracks()] == ["ok", "ok"]
        assert store.repair().changed is False
    with h5py.File(lib.codes, "r") as h5:
        assert sorted(h5["tracks"]) == sorted(str(i) for i in ids)


def test_missing_codes_become_pending(lib, rng):
    ids, _ = fill(lib, rng, n=3)
    with h5py.File(lib.codes, "a") as h5:
        del h5[f"tracks/{ids[1]}"]
        del h5[f"tracks/{ids[2]}/segment_times"]  # malformed counts as missing
    with lib.writer() as store:
        assert store.repair_report.marked_pending == (ids[1], ids[2])
        assert store.repair_report.orphans_removed == ()
        assert [t.id for t in store.tracks("pending")] == [ids[1], ids[2]]
        assert [t.id for t in store.tracks("ok")] == [ids[0]]
        assert set(store.iter_segment_codes().track_ids) == {ids[0]}
    with h5py.File(lib.codes, "r") as h5:
        assert list(h5["tracks"]) == [str(ids[0])]


def test_crash_between_codes_and_commit(lib, rng, monkeypatch):
    ids, _ = fill(lib, rng, n=1)
    rec, codes = make_track(rng, 9)

    def crash(self, n_segments):
        raise KeyboardInterrupt("killed after the HDF5 flush")

    store = lib.writer()
    monkeypatch.setattr(LibraryStore, "_mark_ok", crash)
    with pytest.raises(KeyboardInterrupt):
        store.put_track(rec, *codes)
    monkeypatch.undo()
    store.close()
    with lib.open() as r:  # readers see only the committed track
        assert [t.id for t in r.tracks("ok")] == ids
        assert set(r.iter_segment_codes().track_ids) == set(ids)
    with lib.writer() as store:
        new_id = store.find_by_path(rec.path).id
        assert store.repair_report.orphans_removed == (new_id,)
        assert store.find_by_path(rec.path).status == "pending"
        assert store.put_track(rec, *codes).status == "ok"  # the next index completes it
    with lib.open() as r:
        assert len(r.tracks("ok")) == 2


def test_killed_process_leaves_usable_library(lib, rng):
    ids, items = fill(lib, rng, n=1)
    rec, (tc, sc, st) = make_track(rng, 0)  # rewrite an existing track, then die
    script = textwrap.dedent(f"""
        import os
        import numpy as np
        from musichash.indexer.store import LibraryStore, TrackRecord
        LibraryStore._mark_ok = lambda *a: os._exit(3)
        store = LibraryStore.open({str(lib.folder)!r}, {lib.url!r}, write=True)
        store.put_track(TrackRecord(*{tuple(rec.__dict__.values())!r}),
                        np.array({tc.tolist()}, np.uint8), np.array({sc.tolist()}, np.uint8),
                        np.array({st.tolist()}, np.float32))
    """)
    assert subprocess.run([sys.executable, "-c", script]).returncode == 3
    with lib.writer() as store:  # the lock died with the process
        assert store.repair_report.codes_set_aside is None
        assert store.repair_report.orphans_removed == (ids[0],)
        # the old metadata is not passed off as matching the new codes
        assert store.tracks("pending")[0].id == ids[0]


def test_corrupt_codes_set_aside(lib, rng):
    ids, _ = fill(lib, rng, n=2)
    data = lib.codes.read_bytes()
    lib.codes.write_bytes(b"\0" * 64 + data[64 : len(data) // 2])
    with pytest.raises(LibraryError, match="musichash check --repair"):
        lib.open()
    with lib.writer() as store:
        aside = store.repair_report.codes_set_aside
        assert aside is not None and aside.name.startswith(f"{CODES_FILE}.corrupt-")
        assert aside.exists()
        assert store.repair_report.marked_pending == tuple(ids)
        assert [t.status for t in store.tracks()] == ["pending", "pending"]
    with lib.open() as store:
        assert len(store.iter_segment_codes().codes) == 0


def test_stats(lib, rng):
    items = [
        make_track(rng, 0, n_segments=10, duration_s=900.0),
        make_track(rng, 1, n_segments=30, duration_s=2700.0),
    ]
    with lib.writer() as store:
        for rec, codes in items:
            store.put_track(rec, *codes)
        store.put_error("/music/bad.mp3", "ab" * 32, 10, 1.0, "cannot decode")
        s = store.stats()
    assert (s.n_tracks, s.n_errors, s.n_pending, s.n_segments) == (2, 1, 0, 40)
    assert s.hours == 1.0
    assert (s.code_model, s.bits) == (MODEL, BITS)
    assert s.code_bytes == (40 + 2) * 8
    assert s.code_bytes_per_hour == 336.0


def test_stats_empty(lib):
    with lib.writer() as store:
        s = store.stats()
    assert (s.n_tracks, s.n_segments, s.hours, s.code_bytes, s.code_bytes_per_hour) == (
        0,
        0,
        0.0,
        0,
        0.0,
    )


def test_sketches_round_trip_with_their_own_checksum(lib, rng):
    rec, codes = make_track(rng, 0)
    rec2, codes2 = make_track(rng, 1)
    sketch = rng.integers(0, 256, (40, 32), dtype=np.uint8)
    with lib.writer() as store:
        with_sketch = store.put_track(rec, *codes, None, sketch)
        without = store.put_track(rec2, *codes2)
        with pytest.raises(ValueError, match=r"sketch must be uint8 \[40, 32\], got int64 \[40, 32\]"):
            store.put_track(rec2, *codes2, None, sketch.astype(np.int64))
    with lib.open() as store:
        np.testing.assert_array_equal(store.get_sketch(with_sketch.id), sketch)
        assert store.get_sketch(without.id) is None
    with h5py.File(lib.codes, "r+") as h5:  # a changed sketch fails its own checksum, not the codes'
        h5[f"tracks/{with_sketch.id}/sketch"][0, 0] ^= 1
    with lib.open() as store:
        assert store.get_sketch(with_sketch.id) is None
        np.testing.assert_array_equal(store.get_codes(with_sketch.id).segment_codes, codes[1])
        assert store.check_codes(deep=True).problems == ()
