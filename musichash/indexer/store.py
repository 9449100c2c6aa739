"""The library store: track metadata in SQL, hash codes in HDF5.

A library is a folder::

    library.db   SQLite (or any SQLAlchemy URL given as ``db_url``): tables
                 ``meta`` (schema_version, code_model, bits, code_digest, created,
                 generation: bumped by every commit that changes which codes are valid) and
                 ``tracks`` (one row per file, ``status`` 'ok' | 'error' | 'pending')
    codes.h5     root attrs ``code_model``, ``bits``, ``schema_version``; one group
                 ``tracks/<id>`` per 'ok' track holding
                 ``track_code: uint8 [bits/8]``, ``segment_codes: uint8 [n, bits/8]``,
                 ``segment_times: float32 [n]`` (segment start, seconds), ``chroma:
                 uint8 [m]`` (``musichash.features.chroma.pack``; optional: older tracks lack it)
    index/       FAISS cache, derived from codes.h5 (not managed here)
    .lock        held by the one writer (``fcntl.flock``), holds its PID

Crash safety.  HDF5 is the source of truth for codes and SQL says which codes
are valid: a track's codes are written and flushed before its row is committed
as 'ok', and rows are set to 'pending' (committed) before their codes are
overwritten, and removed before their codes are deleted.  So after a crash at any
point, ``repair()`` (run on every write-open) only has to delete HDF5 groups that
have no 'ok' row (orphans) and mark 'ok' rows whose group is missing or malformed
as 'pending', which the next ``musichash index`` redoes.

HDF5 files can be left unreadable by a kill mid-write.  We flush after each
track (so a killed process leaves the file as of its last flush), write the
checksummed metadata format of HDF5 1.8 (``libver=('v108', 'latest')``), so
damage is detected rather than read as garbage, and when ``codes.h5`` will not
open for writing we do not refuse the library: it is renamed to
``codes.h5.corrupt-<UTC timestamp>``, a fresh file is started, every track
becomes 'pending', and ``RepairReport.codes_set_aside`` says so, for the CLI to
warn about.  Metadata and errors survive; only the codes need recomputing.
``libver='latest'`` would be worse: its "open for write" flags survive a kill,
so every crash would look like a corrupt file, and it shuts out readers.
Flushes do not fsync: a power cut may still cost the codes file (set aside as
above), never the metadata.

Format versions.  v2 added ``meta.generation``, so that ``stamp()`` reads one row
instead of aggregating every track (7-10 ms a search at 10k tracks, and linear in the
tracks). A writer opening a v1 library upgrades it in place (nothing else changed); a
reader of a v1 library falls back to the aggregate.

Concurrency.  One writer at a time, enforced by ``.lock``; readers take no lock.
SQLite runs in WAL mode so readers never wait for the writer.  HDF5's own file
locking is off (``.lock`` does that job, and HDF5 locks fail on some network
file systems); a reader sees codes as of the writer's last flush, and only uses
codes of rows committed 'ok', which were flushed before the commit.
"""

from __future__ import annotations

import datetime as dt
import fcntl
import os
import time
from collections.abc import Iterable, Sequence
from dataclasses import replace
from pathlib import Path

import h5py
import numpy as np
from sqlalchemy import Integer, Text, cast, delete, func, inspect, select, update
from sqlalchemy.engine import Engine
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session

from musichash.indexer.codes_file import (
    group_valid,
    open_codes_for_read,
    open_codes_for_write,
)
from musichash.indexer.records import (
    MIN_SCHEMA_VERSION,
    SCHEMA_VERSION,
    STATUSES,
    LibraryError,
    LibraryLockedError,
    LibraryStats,
    ModelMismatchError,
    RepairReport,
    SchemaVersionError,
    SegmentTable,
    Track,
    TrackCodes,
    TrackRecord,
    _Base,
    _engine,
    _Meta,
    _Track,
)

__all__ = [
    "CODES_FILE",
    "DB_FILE",
    "LOCK_FILE",
    "SCHEMA_VERSION",
    "STATUSES",
    "LibraryError",
    "LibraryLockedError",
    "LibraryStats",
    "LibraryStore",
    "ModelMismatchError",
    "RepairReport",
    "SchemaVersionError",
    "SegmentTable",
    "Track",
    "TrackCodes",
    "TrackRecord",
]

DB_FILE = "library.db"
CODES_FILE = "codes.h5"
LOCK_FILE = ".lock"
# ---------------------------------------------------------------------- store


class LibraryStore:
    """A library folder opened for reading or (exclusively) for writing.

    Use ``LibraryStore.open(...)``, preferably as a context manager.  After a
    write-open, ``repair_report`` says what ``repair()`` fixed.
    """

    def __init__(
        self,
        folder: Path,
        engine: Engine,
        h5: h5py.File | None,
        lock_fd: int | None,
        code_model: str,
        bits: int,
        code_digest: str | None = None,
    ) -> None:
        self.folder = folder
        self.code_model = code_model
        self.bits = bits
        #: which weights made the codes (``registry.weights_digest``); None if not recorded
        self.code_digest = code_digest
        self.repair_report = RepairReport()
        self._engine = engine
        self._h5 = h5
        self._lock_fd = lock_fd
        #: whether ``meta`` keeps ``generation`` (format v2; a v1 library opened read-only does not)
        self._generation = True

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
    ) -> "LibraryStore":
        """Open the library in ``folder``; with ``write=True``, create it if needed.

        ``code_model`` and ``bits`` are required to create a library; when given
        for an existing one they must match what it holds (ModelMismatchError).
        ``code_digest`` (which weights make the codes) is recorded in a new
        library; ``Library.open`` checks an existing one's.
        """
        folder = Path(folder)
        db_path = folder / DB_FILE
        url = db_url or f"sqlite:///{db_path}"
        if not write and db_url is None and not db_path.exists():
            raise LibraryError(
                f"{folder}: no musichash library here; create one with "
                f"`musichash index --library {folder} PATH...`"
            )
        lock_fd = engine = h5 = None
        try:
            if write:
                folder.mkdir(parents=True, exist_ok=True)
                lock_fd = _acquire_lock(folder / LOCK_FILE)
            engine = _engine(url, write)
            meta = _read_meta(engine)
            if meta is None:
                if not write:
                    where = engine.url.render_as_string(hide_password=True) if db_url else db_path
                    raise LibraryError(
                        f"{where}: no musichash library in this database; create one "
                        f"with `musichash index --library {folder} PATH...`"
                    )
                if code_model is None or bits is None:
                    raise ValueError("code_model and bits are needed to create a library")
                meta = _create_schema(engine, code_model, bits, code_digest)
            _check_meta(meta, folder, code_model, bits)
            if write and "generation" not in meta:
                meta = _upgrade_v1(engine)
            stored_model, stored_bits = meta["code_model"], int(meta["bits"])
            set_aside = None
            if write:
                h5, set_aside = open_codes_for_write(
                    folder / CODES_FILE, stored_model, stored_bits
                )
            else:
                h5 = open_codes_for_read(folder / CODES_FILE)
        except BaseException:
            if h5 is not None:
                h5.close()
            if engine is not None:
                engine.dispose()
            if lock_fd is not None:
                _release_lock(lock_fd)
            raise
        store = cls(folder, engine, h5, lock_fd, stored_model, stored_bits, meta.get("code_digest"))
        store._generation = "generation" in meta
        if write:
            try:
                report = store.repair()
            except BaseException:
                store.close()
                raise
            store.repair_report = replace(report, codes_set_aside=set_aside)
        return store

    @property
    def writable(self) -> bool:
        return self._lock_fd is not None

    def close(self) -> None:
        if self._h5 is not None:
            self._h5.close()
            self._h5 = None
        self._engine.dispose()
        if self._lock_fd is not None:
            _release_lock(self._lock_fd)
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
    ) -> Track:
        """Add or replace the track at ``record.path`` with its codes; returns its row.

        ``track_code: uint8 [bits/8]``, ``segment_codes: uint8 [n, bits/8]``,
        ``segment_times: float [n]``, ``chroma: uint8 [m]`` (packed, optional).
        """
        return self.put_tracks([(record, track_code, segment_codes, segment_times, chroma)])[0]

    def put_tracks(
        self,
        items: Sequence[tuple[TrackRecord, np.ndarray, np.ndarray, np.ndarray, np.ndarray | None]],
    ) -> list[Track]:
        """``put_track`` for many tracks at once: two SQL transactions and one flush in all.

        items: (record, track_code, segment_codes, segment_times, chroma or None) each, as
        ``put_track`` takes them; paths must be distinct. Crash-safe the same way: every row is
        committed 'pending' before any code is written, and 'ok' only after all are flushed.
        """
        self._check_writable()
        nbytes = self.bits // 8
        checked = []
        for record, track_code, segment_codes, segment_times, chroma in items:
            segment_codes = np.asarray(segment_codes)
            n = len(segment_codes)
            _check_array("track_code", track_code, np.uint8, (nbytes,))
            _check_array("segment_codes", segment_codes, np.uint8, (n, nbytes))
            _check_array("segment_times", segment_times, None, (n,))
            if chroma is not None:
                _check_array("chroma", chroma, np.uint8, (len(chroma),))
            checked.append((record, track_code, segment_codes, np.asarray(segment_times, dtype=np.float32), chroma))
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
            _bump_generation(s)
        # 2. codes on disk.
        for track_id, (_, track_code, segment_codes, segment_times, chroma) in zip(ids, checked):
            self._write_codes(track_id, track_code, segment_codes, segment_times, chroma)
        self._h5.flush()
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
            _bump_generation(s)
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
            _bump_generation(s)
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
        """Make SQL and HDF5 agree after a crash (see module docstring)."""
        self._check_writable()
        groups = self._h5["tracks"]
        with Session(self._engine) as s:
            ok = dict(
                s.execute(select(_Track.id, _Track.n_segments).where(_Track.status == "ok")).all()
            )
        orphans, pending = [], []  # group names, track ids
        for name in list(groups):
            tid = int(name) if name.isdigit() else None
            if tid not in ok:
                orphans.append(name)
            elif not group_valid(groups[name], ok.pop(tid), self.bits // 8):
                del groups[name]
                pending.append(tid)
        pending += ok  # 'ok' rows left in ``ok`` have no group
        for name in orphans:
            del groups[name]
        self._h5.flush()
        with Session(self._engine) as s, s.begin():
            for chunk in _chunks(pending):
                s.execute(
                    update(_Track)
                    .where(_Track.id.in_(chunk))
                    .values(status="pending", n_segments=0, updated=time.time())
                )
            if pending:
                _bump_generation(s)
        return RepairReport(
            orphans_removed=tuple(sorted(int(n) for n in orphans if n.isdigit())),
            marked_pending=tuple(sorted(pending)),
        )

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
        try:
            g = self._h5["tracks"][str(int(track_id))]
            chroma = g["chroma"][()] if "chroma" in g else None
            return TrackCodes(g["track_code"][()], g["segment_codes"][()], g["segment_times"][()], chroma)
        except (KeyError, OSError):  # missing, or damaged
            raise LibraryError(
                f"track {track_id} has no readable codes in {self.folder / CODES_FILE}; "
                f"run `musichash index` to (re)compute them"
            ) from None

    def get_chroma(self, track_id: int) -> np.ndarray | None:
        """A track's packed chroma (uint8 [m]), or None when it has none (or its codes are unreadable)."""
        try:
            return self._h5["tracks"][str(int(track_id))]["chroma"][()]
        except (KeyError, OSError):
            return None

    def iter_segment_codes(self) -> SegmentTable:
        """Segment codes of all 'ok' tracks, concatenated in track id order."""
        nbytes = self.bits // 8
        codes, tids, times = [], [], []
        groups = self._h5["tracks"]
        for t in self.tracks("ok"):
            g = groups.get(str(t.id))
            if g is None:  # committed after this reader opened codes.h5, or damaged
                continue
            c = g["segment_codes"][()]
            codes.append(c)
            times.append(g["segment_times"][()])
            tids.append(np.full(len(c), t.id, dtype=np.int64))
        if not codes:
            return SegmentTable(
                np.zeros((0, nbytes), np.uint8), np.zeros(0, np.int64), np.zeros(0, np.float32)
            )
        return SegmentTable(np.concatenate(codes), np.concatenate(tids), np.concatenate(times))

    def track_codes(self) -> tuple[np.ndarray, np.ndarray]:
        """Track-level codes of all 'ok' tracks: ``ids: int64 [n]``, ``codes: uint8 [n, bits/8]``."""
        ids, codes = [], []
        groups = self._h5["tracks"]
        for t in self.tracks("ok"):
            g = groups.get(str(t.id))
            if g is not None:
                ids.append(t.id)
                codes.append(g["track_code"][()])
        nbytes = self.bits // 8
        return np.asarray(ids, np.int64), np.asarray(codes, np.uint8).reshape(-1, nbytes)

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

    def stats(self) -> LibraryStats:
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
    ) -> None:
        groups = self._h5["tracks"]
        name = str(track_id)
        if name in groups:
            del groups[name]
        g = groups.create_group(name)
        g.create_dataset("track_code", data=track_code)
        g.create_dataset("segment_codes", data=segment_codes)
        g.create_dataset("segment_times", data=segment_times)
        if chroma is not None:
            g.create_dataset("chroma", data=chroma)

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
            _bump_generation(s)
            return [row.to_track() for row in rows]

    def _delete_codes(self, track_ids: Sequence[int]) -> None:
        groups = self._h5["tracks"]
        for tid in track_ids:
            if str(tid) in groups:
                del groups[str(tid)]
        self._h5.flush()


# ------------------------------------------------------------------- helpers


def _acquire_lock(lock: Path) -> int:
    fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        pid = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
        os.close(fd)
        raise LibraryLockedError(
            f"{lock}: the library is being written by another musichash process (PID {pid}); "
            f"wait for it to finish, or if no process {pid} is running, delete {lock}"
        ) from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return fd


def _release_lock(fd: int) -> None:
    # The file stays: unlinking it would let a waiting writer lock a file that a
    # third process then no longer sees.
    os.ftruncate(fd, 0)
    fcntl.flock(fd, fcntl.LOCK_UN)
    os.close(fd)


def _read_meta(engine: Engine) -> dict[str, str] | None:
    try:
        if not inspect(engine).has_table(_Meta.__tablename__):
            return None
    except OperationalError as e:  # server down, wrong credentials, unreadable file
        raise LibraryError(
            f"{engine.url.render_as_string(hide_password=True)}: cannot connect to the database "
            f"({' '.join(str(e.orig or e).split())}); check the URL and that the database server "
            f"is running"
        ) from None
    with Session(engine) as s:
        meta = {m.key: m.value for m in s.scalars(select(_Meta))}
    return meta or None


def _create_schema(engine: Engine, code_model: str, bits: int, code_digest: str | None) -> dict[str, str]:
    if bits <= 0 or bits % 8:
        raise ValueError(f"bits must be a positive multiple of 8, got {bits}")
    _Base.metadata.create_all(engine)
    meta = {
        "schema_version": str(SCHEMA_VERSION),
        "code_model": code_model,
        "bits": str(bits),
        **({"code_digest": code_digest} if code_digest else {}),
        "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "generation": "0",
    }
    with Session(engine) as s, s.begin():
        s.add_all(_Meta(key=k, value=v) for k, v in meta.items())
    return meta


def _check_meta(
    meta: dict[str, str], folder: Path, code_model: str | None, bits: int | None
) -> None:
    version = int(meta.get("schema_version", 0))
    if version < MIN_SCHEMA_VERSION:
        raise SchemaVersionError(
            f"{folder}: library format v{version} is older than this musichash's v{SCHEMA_VERSION} "
            f"and cannot be converted in place; move the folder away and index the music again: "
            f"musichash index --library {folder} PATH..."
        )
    if version > SCHEMA_VERSION:
        raise SchemaVersionError(
            f"{folder}: library format v{version} is newer than this musichash's v{SCHEMA_VERSION}; "
            f"upgrade musichash: pip install -U musichash"
        )
    stored = (meta["code_model"], int(meta["bits"]))
    if (code_model is not None and code_model != stored[0]) or (
        bits is not None and bits != stored[1]
    ):
        wanted = f"{code_model or stored[0]} ({bits or stored[1]} bits)"
        raise ModelMismatchError(
            f"{folder}: library holds codes of model {stored[0]} ({stored[1]} bits), not {wanted}; "
            f"leave out --code-model to keep using {stored[0]}, or give another --library for {code_model or stored[0]}"
        )


def _upgrade_v1(engine: Engine) -> dict[str, str]:
    """Format v1 -> v2 in place: add ``meta.generation``. Returns the new meta."""
    with Session(engine) as s, s.begin():
        s.add(_Meta(key="generation", value="0"))
        s.execute(update(_Meta).where(_Meta.key == "schema_version").values(value=str(SCHEMA_VERSION)))
    return _read_meta(engine)


def _bump_generation(s: Session) -> None:
    """In a write transaction: the set of valid codes changes (``stamp``)."""
    s.execute(update(_Meta).where(_Meta.key == "generation").values(value=cast(cast(_Meta.value, Integer) + 1, Text)))


def _chunks(ids: Sequence[int], size: int = 500) -> Iterable[Sequence[int]]:
    """Slices of ``ids`` small enough for one ``IN (...)``, whatever the database's limit."""
    return (ids[i : i + size] for i in range(0, len(ids), size))


def _check_array(name: str, a: np.ndarray, dtype: type | None, shape: tuple[int, ...]) -> None:
    a = np.asarray(a)
    if (dtype is not None and a.dtype != dtype) or a.shape != shape:
        want = f"{np.dtype(dtype).name if dtype else 'float'} {list(shape)}"
        raise ValueError(f"{name} must be {want}, got {a.dtype} {list(a.shape)}")
