"""The library store: track metadata in SQL, hash codes in HDF5.

A library is a folder::

    library.db   SQLite (or any SQLAlchemy URL given as ``db_url``): tables
                 ``meta`` (schema_version, code_model, bits, code_digest, created,
                 generation: bumped by every commit that changes which codes are valid,
                 library_id and library_folder: see below) and
                 ``tracks`` (one row per file, ``status`` 'ok' | 'error' | 'pending')
    codes.h5     root attrs ``code_model``, ``bits``, ``schema_version``, ``library_id``; one
                 group ``tracks/<id>`` per 'ok' track holding
                 ``track_code: uint8 [bits/8]``, ``segment_codes: uint8 [n, bits/8]``,
                 ``segment_times: float32 [n]`` (segment start, seconds), ``chroma:
                 uint8 [m]`` (``musichash.features.chroma.pack``; optional: older tracks lack it),
                 and the attribute ``checksum`` (``codes_file.codes_checksum`` of those)
    library.id   the library's id (``identity``)
    index/       FAISS cache, derived from codes.h5 (not managed here)
    .lock        held by the one writer (``fcntl.flock``), holds its PID

A library knows its parts.  ``meta.library_id`` and the folder's ``library.id`` (and
codes.h5's ``library_id``) must agree, or the open is refused before anything is
read, repaired or written (``identity.check_pairing``): one ``--db-url`` used with a
second folder would otherwise see every track's codes missing.

Crash safety.  HDF5 is the source of truth for codes and SQL says which codes
are valid: a track's codes are written and flushed before its row is committed
as 'ok', and rows are set to 'pending' (committed) before their codes are
overwritten, and removed before their codes are deleted.  So after a crash at any
point, ``repair()`` (run on every write-open) only has to delete HDF5 groups that
have no 'ok' row (orphans) and mark 'ok' rows whose group is missing or malformed
as 'pending', which the next ``musichash index`` redoes.

Damage.  HDF5 checksums its metadata (below) but not the data, so each group's
``checksum`` covers its codes: every read (``get_codes``, ``get_chroma``,
``code_tables``) verifies it, and a track that fails is never used: it is noted in
``damaged`` (searches leave it out), ``index`` redoes it when it meets it as
unchanged (``codes_intact``), and ``verify`` (``musichash check``) lists them all.
Groups written before checksums get one, from their data as it is, on the next
write-open (``repair``). A damaged SQLite database surfaces as one
DamagedDatabaseError, whatever query met it.

HDF5 files can be left unreadable by a kill mid-write.  We flush after each
track (so a killed process leaves the file as of its last flush), write the
checksummed metadata format of HDF5 1.8 (``libver=('v108', 'latest')``), so
damage is detected rather than read as garbage, and when ``codes.h5`` will not
open for writing we do not refuse the library: it is renamed to
``codes.h5.corrupt-<UTC timestamp>``, a fresh file is started, every track
becomes 'pending', and ``RepairReport.codes_set_aside`` says so, for the CLI to
warn about.  Metadata and errors survive; only the codes need recomputing.
When it opens but its metadata is damaged (its root attributes or track index
cannot be read, or HDF5 cannot delete or write a group) it is salvaged
(``_salvage``): every 'ok' track whose codes read and pass their checksum is
copied to a new file, which replaces it; the old one is kept under the same
``corrupt-`` name, and only the tracks not copied become 'pending'.
``libver='latest'`` would be worse: its "open for write" flags survive a kill,
so every crash would look like a corrupt file, and it shuts out readers.
Flushes do not fsync: a power cut may still cost the codes file (set aside as
above), never the metadata.

Format versions.  v2 added ``meta.generation``, so that ``stamp()`` reads one row
instead of aggregating every track (7-10 ms a search at 10k tracks, and linear in the
tracks). v3 added the library id and the groups' checksums. A writer opening an older
library upgrades it in place (``_upgrade``; nothing is recomputed); a reader of a v1
library falls back to the aggregate, and one of a v2 library checks neither id nor checksums.

Concurrency.  One writer at a time, enforced by ``.lock``; readers take no lock and
never write: SQLite is opened so that it cannot create or change the database
(``records.sqlite_reader_uri``), PostgreSQL in read-only transactions, codes.h5
read-only. SQLite runs in WAL mode so readers never wait for the writer.  HDF5's own file
locking is off (``.lock`` does that job, and HDF5 locks fail on some network
file systems); a reader sees codes as of the writer's last flush, and only uses
codes of rows committed 'ok', which were flushed before the commit.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path

import h5py
import numpy as np
from sqlalchemy import delete, func, select, update
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session

from musichash.indexer import identity, records
from musichash.indexer import shards as sharding
from musichash.indexer.codes_file import (
    H5_ERRORS,
    H5_KW,
    CodesDamaged,
    CodesFileDamaged,
    CodesMissing,
    adopt_checksum,
    check_file,
    copy_groups,
    group_valid,
    has_checksum,
    keep_aside,
    new_codes_file,
    open_codes_for_read,
    open_codes_for_write,
    read_group,
    read_sketch,
    write_group,
)
from musichash.indexer.meta import (
    acquire_lock,
    bump_generation,
    check_database,
    check_meta,
    create_schema,
    make_folder,
    read_meta,
    release_lock,
    segment_hop_of,
    upgrade,
)
from musichash.indexer.records import (
    DEFAULT_SEGMENT_HOP,
    MIN_SCHEMA_VERSION,
    SCHEMA_VERSION,
    STATUSES,
    CodesCheck,
    DamagedCodesError,
    DamagedDatabaseError,
    DatabaseURLError,
    EmptyLibraryError,
    LibraryError,
    LibraryLockedError,
    LibraryMismatchError,
    LibraryStats,
    ModelMismatchError,
    Problem,
    RepairReport,
    SchemaVersionError,
    SegmentHopMismatchError,
    SegmentTable,
    Track,
    TrackCodes,
    TrackRecord,
    _engine,
    _Meta,
    _Track,
    shown_url,
)

__all__ = [
    "CODES_FILE",
    "DB_FILE",
    "ID_FILE",
    "LOCK_FILE",
    "MIN_SCHEMA_VERSION",
    "SCHEMA_VERSION",
    "STATUSES",
    "DamagedCodesError",
    "DamagedDatabaseError",
    "DatabaseURLError",
    "EmptyLibraryError",
    "LibraryError",
    "LibraryLockedError",
    "LibraryMismatchError",
    "LibraryStats",
    "LibraryStore",
    "ModelMismatchError",
    "Problem",
    "RepairReport",
    "SchemaVersionError",
    "SegmentHopMismatchError",
    "SegmentTable",
    "Track",
    "TrackCodes",
    "TrackRecord",
]

DB_FILE = "library.db"
CODES_FILE = sharding.CODES_FILE
LOCK_FILE = ".lock"
ID_FILE = identity.ID_FILE
# ---------------------------------------------------------------------- store

#: writes the codes of tracks, a list a shard (shard -> [(track_id, track_code, segment_codes, segment_times,
#: chroma, sketch)]), and flushes them, before it returns (``LibraryStore.codes_written_elsewhere``)
ShardWrite = Callable[[dict[int, list[tuple]]], None]


class LibraryStore:
    """A library folder opened for reading or (exclusively) for writing.

    Use ``LibraryStore.open(...)``, preferably as a context manager.  After a
    write-open, ``repair_report`` says what ``repair()`` fixed.
    """

    def __init__(
        self,
        folder: Path,
        engine: Engine,
        files: list[h5py.File],
        lock_fd: int | None,
        code_model: str,
        bits: int,
        code_digest: str | None = None,
        segment_hop: int = DEFAULT_SEGMENT_HOP,
    ) -> None:
        self.folder = folder
        self.code_model = code_model
        self.bits = bits
        #: which weights made the codes (``registry.weights_digest``); None if not recorded
        self.code_digest = code_digest
        #: frames between the library's segment windows (``meta.segment_hop_frames``; 80 when absent)
        self.segment_hop = segment_hop
        self.repair_report = RepairReport()
        self._engine = engine
        #: the codes files, shard by shard (``indexer.shards``): [codes.h5] for one shard
        self._files = list(files)
        self.shards = len(self._files)
        self._paths = sharding.paths(folder, self.shards)
        self._lock_fd = lock_fd
        #: whether ``meta`` keeps ``generation`` (format v2; a v1 library opened read-only does not)
        self._generation = True
        #: ``meta.library_id`` (None: a library from before ids, opened read-only)
        self.library_id: str | None = None
        #: tracks whose stored codes this store found damaged or missing on reading them
        #: (``get_codes``, ``get_chroma``, ``code_tables``): left out of searches
        self.damaged: set[int] = set()
        #: inside ``codes_written_elsewhere``: tracks whose codes are to go when the files come back
        self._detached: list[int] | None = None

    # ------------------------------------------------------------ open/close

    @classmethod
    def open(
        cls,
        folder: str | os.PathLike,
        db_url: str | None = None,
        *,
        write: bool = False,
        code_model: str | None = None,
        bits: int | None = None,
        code_digest: str | None = None,
        shards: int | None = None,
        segment_hop: int | None = None,
    ) -> "LibraryStore":
        """Open the library in ``folder``; with ``write=True``, create it if needed.

        ``code_model`` and ``bits`` are required to create a library; when given
        for an existing one they must match what it holds (ModelMismatchError).
        ``code_digest`` (which weights make the codes) is recorded in a new
        library; ``Library.open`` checks an existing one's. ``segment_hop`` (frames between
        segments) is recorded in a new library (None: ``DEFAULT_SEGMENT_HOP``); given for an existing
        one it must match (SegmentHopMismatchError). A database and a folder
        of two libraries are refused (LibraryMismatchError) before anything is written.
        ``shards``: how many codes files a new library spreads its codes over (``indexer.shards``;
        default 1, ``codes.h5``); an existing library keeps its own count, and another is refused.
        """
        folder = Path(folder)
        db_path = folder / DB_FILE
        codes = folder / CODES_FILE
        url = db_url or f"sqlite:///{db_path}"
        where = shown_url(db_url) if db_url else str(db_path)
        if not write and db_url is None and not db_path.exists():
            raise LibraryError(
                f"{folder}: no musichash library here; create one with "
                f"`musichash index --library {folder} PATH...`"
            )
        if not write and db_url is not None and (p := records.sqlite_path(db_url)) is not None and not p.exists():
            raise LibraryError(  # a reader does not create it
                f"{where}: no musichash library in this database; create one "
                f"with `musichash index --library {folder} PATH...`"
            )
        lock_fd = engine = None
        files: list[h5py.File] = []
        try:
            if write and db_url is None:
                make_folder(folder)  # library.db goes in it
            engine = _engine(url, write)
            meta = read_meta(engine)
            if meta is not None:  # refused before the folder or its lock is made
                check_meta(meta, folder, code_model, bits)
                identity.check_pairing(meta, folder, codes, where)
            if write:
                make_folder(folder)
                lock_fd = acquire_lock(folder / LOCK_FILE)
                meta = read_meta(engine)  # as the lock found it
                if meta is None:
                    identity.check_new(folder, codes, where)
                    if code_model is None or bits is None:
                        raise ValueError("code_model and bits are needed to create a library")
                    meta = create_schema(engine, code_model, bits, code_digest, folder,
                                         sharding.check_count(shards or 1),
                                         DEFAULT_SEGMENT_HOP if segment_hop is None else segment_hop)
            elif meta is None:
                raise LibraryError(
                    f"{where}: no musichash library in this database; create one "
                    f"with `musichash index --library {folder} PATH...`"
                )
            check_meta(meta, folder, code_model, bits)
            folder_id = identity.check_pairing(meta, folder, codes, where)
            if write:
                meta = upgrade(engine, meta, folder)
                if folder_id != meta["library_id"]:
                    identity.write_folder_id(folder, meta["library_id"])
            stored_model, stored_bits = meta["code_model"], int(meta["bits"])
            stored_hop = segment_hop_of(meta, folder)
            if segment_hop is not None and segment_hop != stored_hop:
                raise SegmentHopMismatchError(
                    f"{folder}: library holds segments every {stored_hop} frames, not {segment_hop}; leave out "
                    f"--segment-hop-frames to keep {stored_hop}, or give another --library for {segment_hop}")
            n_shards = sharding.count(meta)
            if shards is not None and shards != n_shards:
                raise LibraryError(f"{folder}: this library holds its codes in {n_shards} shards, not {shards}; "
                                   f"leave out --shards, or index into a new library")
            set_aside_path, damaged = None, []
            for j, path in enumerate(sharding.paths(folder, n_shards)):
                if write:
                    path.parent.mkdir(exist_ok=True)
                    h5, aside, bad = open_codes_for_write(path, stored_model, stored_bits, meta["library_id"])
                    set_aside_path = set_aside_path or aside
                    if bad:
                        damaged.append(j)
                else:
                    h5 = open_codes_for_read(path, meta.get("library_id"))
                files.append(h5)
        except BaseException:
            for h5 in files:
                h5.close()
            if engine is not None:
                engine.dispose()
            if lock_fd is not None:
                release_lock(lock_fd)
            raise
        store = cls(folder, engine, files, lock_fd, stored_model, stored_bits, meta.get("code_digest"), stored_hop)
        store._generation = "generation" in meta
        store.library_id = meta.get("library_id")
        if write:
            try:
                lost: tuple[int, ...] = ()
                for j in damaged:
                    aside, lost_j = store._salvage(j)
                    set_aside_path, lost = set_aside_path or aside, (*lost, *lost_j)
                report = store.repair()
            except BaseException:
                store.close()
                raise
            store.repair_report = replace(report, codes_set_aside=report.codes_set_aside or set_aside_path,
                                          marked_pending=tuple(sorted({*report.marked_pending, *lost})))
        return store

    @property
    def writable(self) -> bool:
        return self._lock_fd is not None

    @contextmanager
    def codes_written_elsewhere(self) -> Iterator[list[Path]]:
        """Hand the codes files (their paths, a shard each) to writers of their own for a while, one
        process a file (``cluster.index.ShardWriters``), so that shards are written in parallel and
        not through this process. This store's handles are flushed and closed meanwhile, so each
        file still has one writer; ``put_tracks`` then takes those writers' ``write``, and the
        codes of tracks ``put_error`` marks are deleted on the way back. The files are opened
        again on exit, and one a writer damaged is salvaged as on ``open``."""
        self._check_writable()
        if self._detached is not None:
            raise RuntimeError("codes_written_elsewhere: already")
        for h5 in self._files:
            h5.flush()
            h5.close()
        self._files, self._detached = [], []
        try:
            yield list(self._paths)
        finally:
            damaged = []
            for j, path in enumerate(self._paths):
                h5, _, bad = open_codes_for_write(path, self.code_model, self.bits, self.library_id)
                self._files.append(h5)
                if bad:
                    damaged.append(j)
            deletes, self._detached = self._detached, None
            for j in damaged:
                self._note_salvage(*self._salvage(j))
            if deletes:
                self._delete_codes(deletes)

    def codes_path(self, track_id: int | None = None) -> Path:
        """The codes file holding ``track_id`` (None: the first, ``codes.h5`` in a one-shard library)."""
        return self._paths[0 if track_id is None else sharding.shard_of(track_id, self.shards)]

    def close(self) -> None:
        for h5 in self._files:
            h5.close()
        self._files = []
        self._engine.dispose()
        if self._lock_fd is not None:
            release_lock(self._lock_fd)
            self._lock_fd = None

    def __enter__(self) -> "LibraryStore":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ---------------------------------------------------------------- writes

    def put_track(
        self,
        record: TrackRecord,
        track_code: np.ndarray,
        segment_codes: np.ndarray,
        segment_times: np.ndarray,
        chroma: np.ndarray | None = None,
        sketch: np.ndarray | None = None,
    ) -> Track:
        """Add or replace the track at ``record.path`` with its codes; returns its row.

        ``track_code: uint8 [bits/8]``, ``segment_codes: uint8 [n, bits/8]``,
        ``segment_times: float [n]``, ``chroma: uint8 [m]`` (packed, optional),
        ``sketch: uint8 [frames, bands]`` (``features.spectra.sketch``, optional).
        """
        return self.put_tracks([(record, track_code, segment_codes, segment_times, chroma, sketch)])[0]

    def put_tracks(
        self,
        items: Sequence[tuple[TrackRecord, np.ndarray, np.ndarray, np.ndarray, np.ndarray | None]],
        write: ShardWrite | None = None,
    ) -> list[Track]:
        """``put_track`` for many tracks at once: two SQL transactions and one flush in all.

        items: (record, track_code, segment_codes, segment_times, chroma or None[, sketch or None]) each, as
        ``put_track`` takes them; paths must be distinct. Crash-safe the same way: every row is
        committed 'pending' before any code is written, and 'ok' only after all are flushed.
        ``write``: inside ``codes_written_elsewhere``, what writes and flushes the codes (a shard each).
        """
        self._check_writable()
        nbytes = self.bits // 8
        checked = []
        for record, track_code, segment_codes, segment_times, chroma, *rest in items:
            sketch = rest[0] if rest else None
            segment_codes = np.asarray(segment_codes)
            n = len(segment_codes)
            _check_array("track_code", track_code, np.uint8, (nbytes,))
            _check_array("segment_codes", segment_codes, np.uint8, (n, nbytes))
            _check_array("segment_times", segment_times, None, (n,))
            if chroma is not None:
                _check_array("chroma", chroma, np.uint8, (len(chroma),))
            if sketch is not None:
                _check_array("sketch", sketch, np.uint8, (len(sketch), np.shape(sketch)[-1]))
            checked.append((record, track_code, segment_codes, np.asarray(segment_times, dtype=np.float32), chroma,
                            sketch))
        if len({str(c[0].path) for c in checked}) != len(checked):
            raise ValueError("put_tracks: the same path twice")
        if not checked:
            return []

        # 1. commit the rows as 'pending', so a crash while their codes are rewritten
        #    leaves rows the next index redoes rather than stale metadata marked 'ok'.
        ids = []
        with Session(self._engine) as s, s.begin():
            for record, *_ in checked:
                tags = None if record.tags is None else np.asarray(record.tags, dtype="<f4").tobytes()
                row = self._upsert(s, record.path)
                row.content_hash, row.size, row.mtime = record.content_hash, record.size, record.mtime
                row.duration_s, row.format, row.tags = record.duration_s, record.format, tags
                row.status, row.error, row.n_segments = "pending", None, 0
                s.flush()
                ids.append(row.id)
            bump_generation(s)
        # 2. codes on disk.
        def write_here() -> None:
            for track_id, (_, *codes) in zip(ids, checked):
                self._write_codes(track_id, *codes)
            self._flush(ids)

        if write is not None:
            by_shard: dict[int, list[tuple]] = {}
            for track_id, (_, *codes) in zip(ids, checked):
                by_shard.setdefault(sharding.shard_of(track_id, self.shards), []).append((track_id, *codes))
            write(by_shard)
        elif self._detached is not None:
            raise RuntimeError("put_tracks: the codes files are written elsewhere now; pass their write")
        else:
            self._h5_write(write_here)
        # 3. only now are they valid.
        return self._mark_ok({tid: len(c[2]) for tid, c in zip(ids, checked)})

    def put_error(
        self, path: str, content_hash: str, size: int, mtime: float, reason: str
    ) -> Track:
        """Record that ``path`` could not be indexed (and drop any codes it had)."""
        self._check_writable()
        with Session(self._engine) as s, s.begin():
            row = self._upsert(s, path)
            row.content_hash, row.size, row.mtime = content_hash, size, mtime
            row.duration_s, row.format, row.tags = None, None, None
            row.status, row.error, row.n_segments = "error", reason, 0
            s.flush()
            track = row.to_track()
            bump_generation(s)
        if self._detached is not None:  # its old codes, if any, go when the files come back
            self._detached.append(track.id)
        else:
            self._delete_codes([track.id])
        return track

    def remove(self, track_ids: Iterable[int]) -> int:
        """Delete tracks and their codes; returns how many rows were removed."""
        self._check_writable()
        ids = [int(i) for i in track_ids]
        if not ids:
            return 0
        # Rows first: a crash before the codes go leaves orphans, which repair() deletes.
        with Session(self._engine) as s, s.begin():
            n = sum(
                s.execute(delete(_Track).where(_Track.id.in_(c))).rowcount for c in _chunks(ids)
            )
            bump_generation(s)
        self._delete_codes(ids)
        return n

    def update_file(self, track_id: int, path: str, size: int, mtime: float) -> Track:
        """Point a track at a moved or touched file whose bytes are unchanged; codes stay."""
        self._check_writable()
        with Session(self._engine) as s, s.begin():
            row = s.get(_Track, int(track_id))
            if row is None:
                raise LibraryError(f"track {track_id} is not in {self.folder}")
            row.path, row.size, row.mtime = str(path), size, mtime
            s.flush()
            return row.to_track()

    def repair(self) -> RepairReport:
        """Make SQL and HDF5 agree after a crash (see module docstring); give checksum-less groups one.

        A damaged group that cannot even be deleted has the file salvaged (``_salvage``).
        """
        self._check_writable()
        nbytes = self.bits // 8
        with Session(self._engine) as s:
            ok = dict(
                s.execute(select(_Track.id, _Track.n_segments).where(_Track.status == "ok")).all()
            )
        orphans: list[list[str]] = [[] for _ in self._files]  # group names by shard
        pending, adopted = [], 0  # track ids, checksums added
        for j, h5 in enumerate(self._files):
            groups = h5["tracks"]
            for name in list(groups):
                tid = int(name) if name.isdigit() else None
                if tid not in ok or sharding.shard_of(tid, self.shards) != j:
                    orphans[j].append(name)  # no 'ok' row, or in a shard that is not its own
                    continue
                if not group_valid(groups, name, ok.pop(tid), nbytes):
                    orphans[j].append(name)
                    pending.append(tid)
                elif not has_checksum(groups, name):
                    if adopt_checksum(groups, name, nbytes):
                        adopted += 1
                    else:
                        orphans[j].append(name)
                        pending.append(tid)
        pending += ok  # 'ok' rows left in ``ok`` have no group
        # Rows first, as everywhere: a crash in between leaves groups without an 'ok' row.
        self._set_pending(pending)
        aside = None
        for j, h5 in enumerate(self._files):
            try:
                for name in orphans[j]:
                    del h5["tracks"][name]
                h5.flush()
            except H5_ERRORS:  # a damaged group that cannot even be deleted: copy the others to a new file
                aside_j, lost = self._salvage(j)
                aside = aside or aside_j
                pending += lost
        pending_set = set(pending)
        return RepairReport(
            orphans_removed=tuple(sorted(int(n) for names in orphans for n in names
                                         if n.isdigit() and int(n) not in pending_set)),
            marked_pending=tuple(sorted(pending_set)),
            codes_set_aside=aside,
            checksums_added=adopted,
        )

    def mark_pending(self, track_ids: Iterable[int]) -> None:
        """Set these tracks 'pending' and drop their codes, for the next ``index`` to redo (``check --repair``)."""
        self._check_writable()
        ids = sorted({int(t) for t in track_ids})
        self._set_pending(ids)
        self._delete_codes(ids)

    # ----------------------------------------------------------------- reads

    def find_by_hash(self, content_hash: str) -> list[Track]:
        """Every track whose file has these bytes (several when files are copies)."""
        return self._select(select(_Track).where(_Track.content_hash == content_hash))

    def find_by_path(self, path: str | os.PathLike) -> Track | None:
        found = self._select(select(_Track).where(_Track.path == str(path)))
        return found[0] if found else None

    def get(self, track_id: int) -> Track | None:
        found = self._select(select(_Track).where(_Track.id == int(track_id)))
        return found[0] if found else None

    def get_many(self, track_ids: Iterable[int]) -> dict[int, Track]:
        """The tracks of these ids that exist, by id: one query for a result list's tracks."""
        found: dict[int, Track] = {}
        for part in _chunks(sorted({int(t) for t in track_ids})):
            found.update((t.id, t) for t in self._select(select(_Track).where(_Track.id.in_(part))))
        return found

    def tracks(self, status: str | None = None) -> list[Track]:
        """All tracks in id order, or those with ``status`` ('ok' | 'error' | 'pending')."""
        q = select(_Track)
        if status is not None:
            if status not in STATUSES:
                raise ValueError(f"status must be one of {STATUSES}, got {status!r}")
            q = q.where(_Track.status == status)
        return self._select(q)

    def get_codes(self, track_id: int) -> TrackCodes:
        """A track's codes, verified against their checksum.

        Raises LibraryError when it has none, DamagedCodesError when they are damaged
        (and notes the track in ``damaged``).
        """
        try:
            return self._read(track_id)
        except CodesMissing:
            raise LibraryError(
                f"track {track_id} has no readable codes in {self.codes_path(track_id)}; "
                f"run `musichash index` to (re)compute them"
            ) from None

    def get_chroma(self, track_id: int) -> np.ndarray | None:
        """A track's packed chroma (uint8 [m]), or None when it was indexed before tracks kept one.

        Its codes are verified first: damaged or missing ones raise DamagedCodesError (and the
        track is noted in ``damaged``) rather than let a search skip its harmony check.
        """
        try:
            return self._read(track_id).chroma
        except CodesMissing:
            self.damaged.add(int(track_id))
            raise DamagedCodesError(
                f"{self.codes_path(track_id)}: track {track_id} has no codes; run `musichash check --repair`",
                int(track_id),
            ) from None

    def get_sketch(self, track_id: int) -> np.ndarray | None:
        """A track's sketch (uint8 [frames, bands], dedup's audio check), or None when it was indexed
        before tracks kept one, or it fails its checksum (dedup then makes it from the file)."""
        try:
            return read_sketch(self._h5_of(int(track_id))["tracks"], str(int(track_id)))
        except H5_ERRORS:
            return None

    def codes_intact(self, track_id: int) -> bool:
        """Whether a track's stored codes are there and pass their checksum (what ``index`` trusts as unchanged)."""
        try:
            self._read(track_id)
        except (CodesMissing, DamagedCodesError):
            return False
        return True

    def code_tables(self) -> tuple[SegmentTable, np.ndarray, np.ndarray]:
        """Every 'ok' track's verified codes, in track id order: the segment table, and the track
        codes as ``ids: int64 [n]``, ``codes: uint8 [n, bits/8]``. Damaged ones are left out and
        noted in ``damaged``; missing ones (committed after this reader opened codes.h5) left out.
        A damaged track index raises DamagedCodesError for the file."""
        nbytes = self.bits // 8
        codes, tids, times, ids, track_codes = [], [], [], [], []
        for t in self.tracks("ok"):
            try:
                c = self._read(t.id)
            except CodesMissing:
                continue
            except DamagedCodesError as e:
                if e.track_id is None:  # no track can be trusted to be found
                    raise
                continue
            codes.append(c.segment_codes)
            times.append(c.segment_times)
            tids.append(np.full(len(c.segment_codes), t.id, dtype=np.int64))
            ids.append(t.id)
            track_codes.append(c.track_code)
        ids = np.asarray(ids, np.int64)
        track_codes = np.asarray(track_codes, np.uint8).reshape(-1, nbytes)
        if not codes:
            empty = SegmentTable(np.zeros((0, nbytes), np.uint8), np.zeros(0, np.int64), np.zeros(0, np.float32))
            return empty, ids, track_codes
        return SegmentTable(np.concatenate(codes), np.concatenate(tids), np.concatenate(times)), ids, track_codes

    def iter_segment_codes(self) -> SegmentTable:
        """Segment codes of all 'ok' tracks, concatenated in track id order (``code_tables``)."""
        return self.code_tables()[0]

    def track_codes(self) -> tuple[np.ndarray, np.ndarray]:
        """Track-level codes of all 'ok' tracks: ``ids: int64 [n]``, ``codes: uint8 [n, bits/8]`` (``code_tables``)."""
        return self.code_tables()[1:]

    def check_database(self) -> list[Problem]:
        """What SQLite's ``quick_check`` finds wrong with the database (others are not checked here)."""
        return check_database(self._engine)

    def check_codes(self, *, deep: bool = True, progress: Callable[[int, int], None] | None = None) -> CodesCheck:
        """What is wrong with codes.h5: its root attributes and track index, and each 'ok' track's group:
        ``deep``, its codes read and checked against their checksum (``musichash check``; the tracks
        that fail are noted in ``damaged``); else its datasets' shapes only (``stats``).
        progress(done, total) after each track."""
        ok = self.tracks("ok")
        mine = [[t for t in ok if sharding.shard_of(t.id, self.shards) == j] for j in range(self.shards)]
        done_before = [sum(map(len, mine[:j])) for j in range(self.shards)]
        checks = [
            check_file(h5, path, mine[j], self.code_model, self.bits, deep=deep,
                       progress=progress and (lambda done, _, j=j: progress(done_before[j] + done, len(ok))))
            for j, (h5, path) in enumerate(zip(self._files, self._paths))
        ]
        found = CodesCheck(tuple(p for c in checks for p in c.problems), sum(c.checked for c in checks),
                           sum(c.unchecked for c in checks))
        if deep:
            self.damaged |= {p.track_id for p in found.problems if p.track_id is not None}
        return found

    def stamp(self) -> str:
        """A token that changes whenever the set of valid codes changes (for derived caches).

        One row read (``meta.generation``); a v1 library opened read-only aggregates its tracks.
        """
        if self._generation:
            with self._engine.connect() as conn:
                gen = conn.execute(select(_Meta.value).where(_Meta.key == "generation")).scalar_one()
            return f"{self.code_model}:{self.bits}:g{gen}"
        with Session(self._engine) as s:
            n, ids, segs, last = s.execute(
                select(
                    func.count(),
                    func.coalesce(func.sum(_Track.id), 0),
                    func.coalesce(func.sum(_Track.n_segments), 0),
                    func.coalesce(func.max(_Track.updated), 0.0),
                ).where(_Track.status == "ok")
            ).one()
        return f"{self.code_model}:{self.bits}:{n}:{ids}:{segs}:{float(last):.6f}"

    def stats(self, *, check: bool = False) -> LibraryStats:
        """Counts and sizes; ``check``: also look over codes.h5's metadata (``check_codes(deep=False)``, O(tracks))."""
        with Session(self._engine) as s:
            counts = dict(
                s.execute(select(_Track.status, func.count()).group_by(_Track.status)).all()
            )
            n_seg, seconds = s.execute(
                select(
                    func.coalesce(func.sum(_Track.n_segments), 0),
                    func.coalesce(func.sum(_Track.duration_s), 0.0),
                ).where(_Track.status == "ok")
            ).one()
        n_ok = counts.get("ok", 0)
        hours = float(seconds) / 3600.0
        code_bytes = (int(n_seg) + n_ok) * (self.bits // 8)
        return LibraryStats(
            n_tracks=n_ok,
            n_errors=counts.get("error", 0),
            n_pending=counts.get("pending", 0),
            n_segments=int(n_seg),
            hours=hours,
            code_model=self.code_model,
            bits=self.bits,
            code_bytes=code_bytes,
            code_bytes_per_hour=code_bytes / hours if hours > 0 else 0.0,
            problems=tuple(str(p) for p in self.check_codes(deep=False).problems) if check else None,
        )

    # -------------------------------------------------------------- internals

    def _check_writable(self) -> None:
        if not self.writable:
            raise LibraryError(f"{self.folder}: library is open read-only; open it with write=True")

    def _select(self, q) -> list[Track]:
        with Session(self._engine) as s:
            return [row.to_track() for row in s.scalars(q.order_by(_Track.id))]

    @staticmethod
    def _upsert(s: Session, path: str) -> _Track:
        now = time.time()
        row = s.scalars(select(_Track).where(_Track.path == str(path))).one_or_none()
        if row is None:
            row = _Track(path=str(path), added=now)
            s.add(row)
        row.updated = now
        return row

    def _write_codes(
        self,
        track_id: int,
        track_code: np.ndarray,
        segment_codes: np.ndarray,
        segment_times: np.ndarray,
        chroma: np.ndarray | None,
        sketch: np.ndarray | None,
    ) -> None:
        write_group(self._h5_of(track_id)["tracks"], str(track_id), track_code, segment_codes, segment_times, chroma,
                    sketch)

    def _h5_of(self, track_id: int) -> h5py.File:
        return self._files[sharding.shard_of(track_id, self.shards)]

    def _flush(self, track_ids: Iterable[int]) -> None:
        """Flush the codes files that hold ``track_ids`` (the others were not written)."""
        for j in sorted({sharding.shard_of(t, self.shards) for t in track_ids}):
            self._files[j].flush()

    def _read(self, track_id: int) -> TrackCodes:
        """A track's verified codes; CodesMissing, or DamagedCodesError: of this track (noted in
        ``damaged``), or of the whole file (``track_id`` None: its track index cannot be read)."""
        path = self.codes_path(track_id)
        try:
            codes, _ = read_group(self._h5_of(track_id)["tracks"], str(int(track_id)), self.bits // 8)
        except CodesFileDamaged as e:
            raise self._file_damaged(e.reason, path) from None
        except CodesDamaged as e:
            self.damaged.add(int(track_id))
            raise DamagedCodesError(
                f"{path}: the codes of track {track_id} are damaged ({e.reason}); run `musichash check --repair`",
                int(track_id), e.reason,
            ) from None
        except H5_ERRORS as e:  # the track group itself
            raise self._file_damaged(" ".join(str(e).split()), path) from None
        return codes

    def _file_damaged(self, reason: str, path: Path) -> DamagedCodesError:
        return DamagedCodesError(
            f"{path}: the codes file is damaged ({reason}); run `musichash check --repair`",
            None, reason,
        )

    def _set_pending(self, track_ids: Sequence[int]) -> None:
        """Commit these rows as 'pending' (no segments), in one transaction."""
        if not track_ids:
            return
        with Session(self._engine) as s, s.begin():
            for chunk in _chunks(list(track_ids)):
                s.execute(
                    update(_Track)
                    .where(_Track.id.in_(chunk))
                    .values(status="pending", n_segments=0, updated=time.time())
                )
            bump_generation(s)

    def _mark_ok(self, n_segments: dict[int, int]) -> list[Track]:
        """Mark these rows (id -> segment count) 'ok' in one transaction; their rows, in that order."""
        now = time.time()
        with Session(self._engine) as s, s.begin():
            rows = []
            for track_id, n in n_segments.items():
                row = s.get(_Track, track_id)
                row.status, row.n_segments, row.updated = "ok", n, now
                rows.append(row)
            s.flush()
            bump_generation(s)
            return [row.to_track() for row in rows]

    def _delete_codes(self, track_ids: Sequence[int]) -> None:
        def delete() -> None:
            for tid in track_ids:
                groups = self._h5_of(tid)["tracks"]
                if str(tid) in groups:
                    del groups[str(tid)]
            self._flush(track_ids)

        self._h5_write(delete)

    def _h5_write(self, op: Callable[[], None]) -> None:
        """Run ``op``, a change to the codes files; when a file's metadata turns out damaged (HDF5 cannot
        update it), salvage the files (``_salvage``, noted in ``repair_report``) and run ``op`` again."""
        try:
            op()
        except H5_ERRORS:
            salvaged = [self._salvage(j) for j in range(self.shards)]
            self._note_salvage(salvaged[0][0], tuple(t for _, lost_j in salvaged for t in lost_j))
            op()

    def _note_salvage(self, aside: Path | None, lost: Sequence[int]) -> None:
        """Add what a ``_salvage`` did to ``repair_report``: the file set aside, the tracks now pending."""
        r = self.repair_report
        self.repair_report = replace(r, codes_set_aside=aside or r.codes_set_aside,
                                     marked_pending=tuple(sorted({*r.marked_pending, *lost})))

    def _salvage(self, shard: int = 0) -> tuple[Path, tuple[int, ...]]:
        """Replace a codes.h5 that opens but is damaged by a copy of every 'ok' track whose codes read
        and pass their checksum; the old file stays as ``codes.h5.corrupt-<UTC timestamp>`` and the
        tracks not copied become 'pending'. Returns (the old file's new name, the tracks not copied).
        ``shard``: which codes file (``indexer.shards``); each holds only its own tracks."""
        path = self._paths[shard]
        tmp = path.with_name(f".{path.name}.{os.getpid()}.salvage")
        new = new_codes_file(tmp, self.code_model, self.bits, self.library_id)
        ids = [t.id for t in self.tracks("ok") if sharding.shard_of(t.id, self.shards) == shard]
        try:
            lost = copy_groups(self._files[shard], new, ids, self.bits // 8)
            new.close()
        except BaseException:
            new.close()
            tmp.unlink(missing_ok=True)
            raise
        self._set_pending(lost)  # rows first: the new file has no codes for them
        self._files[shard].close()
        aside = keep_aside(path)  # a crash from here on leaves the old file as codes.h5, or the new one
        os.replace(tmp, path)
        self._files[shard] = h5py.File(path, "a", **H5_KW)
        return aside, tuple(lost)


# ------------------------------------------------------------------- helpers


def _chunks(ids: Sequence[int], size: int = 500) -> Iterable[Sequence[int]]:
    """Slices of ``ids`` small enough for one ``IN (...)``, whatever the database's limit."""
    return (ids[i : i + size] for i in range(0, len(ids), size))


def _check_array(name: str, a: np.ndarray, dtype: type | None, shape: tuple[int, ...]) -> None:
    a = np.asarray(a)
    if (dtype is not None and a.dtype != dtype) or a.shape != shape:
        want = f"{np.dtype(dtype).name if dtype else 'float'} {list(shape)}"
        raise ValueError(f"{name} must be {want}, got {a.dtype} {list(a.shape)}")
