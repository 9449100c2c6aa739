"""The library's errors, typed records and SQL schema (SQLAlchemy 2 ORM).

Split from ``store.py``, which holds the logic; everything here is re-exported there.
"""

from __future__ import annotations

import os
import re
import sqlite3
from dataclasses import dataclass, fields
from pathlib import Path
from typing import NamedTuple
from urllib.parse import quote

import numpy as np
from sqlalchemy import (
    BigInteger,
    CheckConstraint,
    Float,
    Integer,
    LargeBinary,
    String,
    Text,
    create_engine,
    event,
)
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.exc import ArgumentError, NoSuchModuleError
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from musichash.errors import MusichashError
from musichash.features.segments import (  # noqa: F401
    DEFAULT_SEGMENT_HOP,
    LEGACY_SEGMENT_HOP,
    SEGMENT_HOP_ALIGN,
)

SCHEMA_VERSION = 3
#: the oldest format a writer upgrades in place (``store._upgrade``); older ones are re-indexed
MIN_SCHEMA_VERSION = 1
STATUSES = ("ok", "error", "pending")

# --------------------------------------------------------------------- errors


class LibraryError(MusichashError):
    """The library folder or database cannot be used as asked."""


class LibraryLockedError(LibraryError):
    """Another process is writing to the library."""


class SchemaVersionError(LibraryError):
    """The library was written by an older or newer musichash."""


class ModelMismatchError(LibraryError):
    """The library holds codes of another model (or code length)."""


class SegmentHopMismatchError(ModelMismatchError):
    """The library holds segments at another hop than the one asked for."""


class LibraryMismatchError(LibraryError):
    """The database and the codes folder belong to different libraries."""


class DatabaseURLError(LibraryError):
    """``db_url`` is not a database URL (a usage error)."""


class DamagedDatabaseError(LibraryError):
    """The library database is not readable: truncated, or garbled."""


class DamagedCodesError(LibraryError):
    """codes.h5, or one track's codes in it, cannot be read or fail their checksum."""

    def __init__(self, message: str, track_id: int | None = None, reason: str | None = None) -> None:
        super().__init__(message)
        #: the track whose codes are damaged; None when the whole file is
        self.track_id = track_id
        #: what is wrong, in a few words ("checksum mismatch", "unreadable: ...")
        self.reason = reason


class EmptyLibraryError(LibraryError):
    """The library has no indexed tracks to search yet."""


# -------------------------------------------------------------------- records


@dataclass(frozen=True)
class TrackRecord:
    """What the indexer knows about a file it has encoded (input to ``put_track``)."""

    path: str
    content_hash: str  # sha256 hex of the file's bytes
    size: int  # bytes
    mtime: float  # seconds since the epoch
    duration_s: float
    format: str | None = None  # e.g. "mp3", "flac"
    tags: tuple[float, ...] | None = None  # tag probabilities, one per vocabulary entry


@dataclass(frozen=True)
class Track:
    """One row of the library: a file and what became of it."""

    id: int
    path: str
    content_hash: str
    size: int
    mtime: float
    duration_s: float | None
    format: str | None
    status: str  # one of STATUSES
    error: str | None
    tags: tuple[float, ...] | None
    n_segments: int
    added: float  # seconds since the epoch
    updated: float


@dataclass(frozen=True)
class TrackCodes:
    """The codes of one track."""

    track_code: np.ndarray  # uint8 [bits/8]
    segment_codes: np.ndarray  # uint8 [n, bits/8]
    segment_times: np.ndarray  # float32 [n], segment start in seconds
    chroma: np.ndarray | None = None  # uint8 [m], musichash.features.chroma.pack of bool [seconds, 12]


class SegmentTable(NamedTuple):
    """Every segment of every 'ok' track, in track id order, for building an index."""

    codes: np.ndarray  # uint8 [N, bits/8]
    track_ids: np.ndarray  # int64 [N]
    times: np.ndarray  # float32 [N]


@dataclass(frozen=True)
class LibraryStats:
    """Size of a library and what its codes cost."""

    n_tracks: int  # status 'ok'
    n_errors: int
    n_pending: int
    n_segments: int
    hours: float  # audio duration of 'ok' tracks
    code_model: str
    bits: int
    code_bytes: int  # track and segment codes, without times or HDF5 overhead
    code_bytes_per_hour: float  # 0.0 for an empty library
    #: what a look over codes.h5's metadata found wrong (``LibraryStore.check_codes``): empty when
    #: healthy, None when not looked (``stats(check=True)`` looks)
    problems: tuple[str, ...] | None = None


@dataclass(frozen=True)
class Problem:
    """Something wrong with a library (``musichash check``): ``where`` (a file or folder) and ``what``."""

    where: str
    what: str
    track_id: int | None = None  # the track it concerns, if one

    def __str__(self) -> str:
        return f"{self.where}: {self.what}"


class CodesCheck(NamedTuple):
    """What ``LibraryStore.check_codes`` found."""

    problems: tuple[Problem, ...]
    checked: int  # 'ok' tracks looked at
    unchecked: int  # of them, read but without a checksum to check (written before checksums)


@dataclass(frozen=True)
class RepairReport:
    """What ``repair()`` (and a write-open) fixed; the CLI should warn when ``changed``."""

    orphans_removed: tuple[int, ...] = ()  # HDF5 groups without an 'ok' row
    marked_pending: tuple[int, ...] = ()  # 'ok' rows whose codes were missing or malformed
    codes_set_aside: Path | None = None  # where an unreadable codes.h5 was moved
    checksums_added: int = 0  # groups written before codes had checksums, given one (adopted, not redone)

    @property
    def changed(self) -> bool:
        return bool(self.orphans_removed or self.marked_pending or self.codes_set_aside)


# --------------------------------------------------------------------- schema


class _Base(DeclarativeBase):
    pass


class _Meta(_Base):
    __tablename__ = "meta"
    key: Mapped[str] = mapped_column(String(64), primary_key=True)
    value: Mapped[str] = mapped_column(Text)


class _Track(_Base):
    __tablename__ = "tracks"
    __table_args__ = (CheckConstraint("status IN ('ok', 'error', 'pending')", name="status_valid"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    path: Mapped[str] = mapped_column(String(4096), unique=True)
    content_hash: Mapped[str] = mapped_column(String(64), index=True)
    size: Mapped[int] = mapped_column(BigInteger)
    mtime: Mapped[float] = mapped_column(Float)
    duration_s: Mapped[float | None] = mapped_column(Float)
    format: Mapped[str | None] = mapped_column(String(16))
    status: Mapped[str] = mapped_column(String(8), index=True)
    error: Mapped[str | None] = mapped_column(Text)
    # float32 little-endian bytes: 200 bytes for 50 tags, portable across databases.
    tags: Mapped[bytes | None] = mapped_column(LargeBinary)
    n_segments: Mapped[int] = mapped_column(Integer, default=0)
    added: Mapped[float] = mapped_column(Float)
    updated: Mapped[float] = mapped_column(Float)

    def to_track(self) -> Track:
        tags = None
        if self.tags is not None:
            tags = tuple(float(p) for p in np.frombuffer(self.tags, dtype="<f4"))
        names = (f.name for f in fields(Track) if f.name != "tags")
        return Track(tags=tags, **{name: getattr(self, name) for name in names})


def folder_writable(folder: Path) -> bool:
    """Whether this process may create files in ``folder`` (read-only media, permissions).

    The one place that decides: readers open SQLite ``immutable`` and build the FAISS cache
    in memory where it is False. (Under root it is True even for a ``chmod a-w`` folder,
    since root may write there.)
    """
    return os.access(folder, os.W_OK)


#: what ``db_url`` looks like, for messages
URL_FORMS = "postgresql+psycopg://user@host/dbname or sqlite:///path/to/library.db"


def shown_url(url: str) -> str:
    """``url`` for a message: its password hidden, even when it does not parse."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except (ArgumentError, ValueError):
        return re.sub(r"(//[^/:@]*:)[^/@]*@", r"\1***@", url)


def _sqlite_pragmas(dbapi_conn, _record) -> None:
    cur = dbapi_conn.cursor()
    # WAL: readers never wait for the writer and the writer never waits for readers.
    cur.execute("PRAGMA journal_mode=WAL")
    cur.close()


def _query_only(dbapi_conn, _record) -> None:
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA query_only=ON")
    cur.close()


def sqlite_reader_uri(path: Path) -> str:
    """The URI a reader opens a SQLite library database with: never created, never changed.

    ``mode=rw`` plus ``PRAGMA query_only`` where the folder is writable: a reader of a WAL
    database needs its ``-shm`` file to see the writer's commits, and a read-write
    connection (only) removes that file again when it closes, leaving the folder as it
    was (``mode=ro`` would leave ``-wal`` and ``-shm`` behind). ``mode=ro&immutable=1``
    where the folder is not writable: no ``-shm`` can be made there, and no writer can work.
    """
    path = path.absolute()
    mode = "rw" if folder_writable(path.parent) else "ro&immutable=1"
    return f"file:{quote(str(path))}?mode={mode}"


def _damage_handler(where: str):
    """A ``handle_error`` listener: SQLite's "malformed" and "not a database" become one DamagedDatabaseError."""

    def handle(context) -> None:
        orig = context.original_exception
        name = getattr(orig, "sqlite_errorname", "")
        text = " ".join(str(orig).split())
        if name.startswith(("SQLITE_CORRUPT", "SQLITE_NOTADB")) or (
            not name and ("malformed" in text or "not a database" in text)
        ):
            raise DamagedDatabaseError(
                f"{where}: the library database is damaged ({text}); restore it from a backup, "
                f"or index the music again into a new library"
            ) from None

    return handle


def sqlite_path(url: str) -> Path | None:
    """The database file of a SQLite URL; None for other databases (and unparsable URLs)."""
    try:
        parsed = make_url(url)
    except (ArgumentError, ValueError):
        return None
    if parsed.get_backend_name() != "sqlite" or parsed.database in (None, "", ":memory:"):
        return None
    return None if parsed.database.startswith("file:") else Path(parsed.database)


def _engine(url: str, write: bool) -> Engine:
    """An engine for the library database; a reader's never writes (SQLite: ``sqlite_reader_uri``;
    PostgreSQL: read-only transactions)."""
    try:
        parsed = make_url(url)
    except (ArgumentError, ValueError):  # ValueError: a port that is not a number
        raise DatabaseURLError(f"{shown_url(url)}: not a database URL; give one like {URL_FORMS}") from None
    sqlite_file = parsed.get_backend_name() == "sqlite" and parsed.database not in (None, "", ":memory:")
    try:
        if sqlite_file and not write and not parsed.database.startswith("file:"):
            uri = sqlite_reader_uri(Path(parsed.database))
            engine = create_engine(parsed, creator=lambda: sqlite3.connect(uri, uri=True, check_same_thread=False))
            event.listen(engine, "connect", _query_only)
        else:
            engine = create_engine(parsed)
    except (ImportError, NoSuchModuleError) as e:
        raise LibraryError(
            f"{parsed.render_as_string(hide_password=True)}: no driver for this database "
            f"({e}); for PostgreSQL use a postgresql+psycopg:// URL and "
            f"pip install 'musichash[postgres]'"
        ) from None
    except ArgumentError as e:
        raise DatabaseURLError(f"{shown_url(url)}: not a usable database URL ({e}); give one like {URL_FORMS}") from None
    where = parsed.database if sqlite_file else parsed.render_as_string(hide_password=True)
    event.listen(engine, "handle_error", _damage_handler(where))
    # Only the writer switches the journal mode, so that readers work on read-only media.
    if write and engine.dialect.name == "sqlite":
        event.listen(engine, "connect", _sqlite_pragmas)
    if not write and engine.dialect.name == "postgresql":
        engine = engine.execution_options(postgresql_readonly=True)
    return engine
