"""The library's errors, typed records and SQL schema (SQLAlchemy 2 ORM).

Split from ``store.py``, which holds the logic; everything here is re-exported there.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from pathlib import Path
from typing import NamedTuple

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
from sqlalchemy.exc import NoSuchModuleError
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from musichash.errors import MusichashError

SCHEMA_VERSION = 2
#: the oldest format a writer upgrades in place (``store._upgrade_v1``); older ones are re-indexed
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


@dataclass(frozen=True)
class RepairReport:
    """What ``repair()`` (and a write-open) fixed; the CLI should warn when ``changed``."""

    orphans_removed: tuple[int, ...] = ()  # HDF5 groups without an 'ok' row
    marked_pending: tuple[int, ...] = ()  # 'ok' rows whose codes were missing or malformed
    codes_set_aside: Path | None = None  # where an unreadable codes.h5 was moved

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


def _sqlite_pragmas(dbapi_conn, _record) -> None:
    cur = dbapi_conn.cursor()
    # WAL: readers never wait for the writer and the writer never waits for readers.
    cur.execute("PRAGMA journal_mode=WAL")
    cur.close()


def _engine(url: str, write: bool) -> Engine:
    try:
        engine = create_engine(url)
    except (ImportError, NoSuchModuleError) as e:
        raise LibraryError(
            f"{make_url(url).render_as_string(hide_password=True)}: no driver for this database "
            f"({e}); for PostgreSQL use a postgresql+psycopg:// URL and "
            f"pip install 'musichash[postgres]'"
        ) from None
    # Only the writer switches the journal mode, so that readers work on read-only media.
    if write and engine.dialect.name == "sqlite":
        event.listen(engine, "connect", _sqlite_pragmas)
    return engine
