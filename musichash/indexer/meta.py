"""The library's folder and database upkeep: the writer's lock; reading, creating, checking and
upgrading ``meta`` (format versions are described in ``store.py``, the only user); checking the database."""

from __future__ import annotations

import datetime as dt
import fcntl
import os
from pathlib import Path

from sqlalchemy import Integer, Text, cast, func, inspect, select, update
from sqlalchemy.engine import Engine
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session

from musichash.indexer import identity, records
from musichash.indexer import shards as sharding
from musichash.indexer.records import (
    LEGACY_SEGMENT_HOP,
    MIN_SCHEMA_VERSION,
    SCHEMA_VERSION,
    DamagedDatabaseError,
    LibraryError,
    LibraryLockedError,
    ModelMismatchError,
    Problem,
    SchemaVersionError,
    _Base,
    _Meta,
    _Track,
)


def make_folder(folder: Path) -> None:
    """Create the library folder if needed; refuse one this process cannot write to."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise LibraryError(
            f"{folder}: cannot create the library folder ({e.strerror or e}); give a --library you can write to"
        ) from None
    if not records.folder_writable(folder):
        raise LibraryError(
            f"{folder}: the library folder is not writable; musichash index needs to write there: "
            f"fix its permissions, or give another --library"
        )


def acquire_lock(lock: Path) -> int:
    try:
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as e:
        raise LibraryError(
            f"{lock.parent}: the library folder is not writable ({e.strerror or e}); musichash index needs to "
            f"write there: fix its permissions, or give another --library"
        ) from None
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


def release_lock(fd: int) -> None:
    # The file stays: unlinking it would let a waiting writer lock a file that a
    # third process then no longer sees.
    os.ftruncate(fd, 0)
    fcntl.flock(fd, fcntl.LOCK_UN)
    os.close(fd)


def read_meta(engine: Engine) -> dict[str, str] | None:
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


def create_schema(
    engine: Engine, code_model: str, bits: int, code_digest: str | None, folder: Path, shards: int = 1,
    segment_hop: int | None = None,
) -> dict[str, str]:
    if bits <= 0 or bits % 8:
        raise ValueError(f"bits must be a positive multiple of 8, got {bits}")
    _Base.metadata.create_all(engine)
    meta = {
        "schema_version": str(SCHEMA_VERSION),
        "code_model": code_model,
        "bits": str(bits),
        **({"code_digest": code_digest} if code_digest else {}),
        # a library without the key was made before the setting, at LEGACY_SEGMENT_HOP
        **({SEGMENT_HOP_KEY: str(segment_hop)} if segment_hop is not None else {}),
        "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "generation": "0",
        "library_id": identity.new_id(),
        "library_folder": identity.folder_path(folder),
        **({sharding.META_KEY: str(shards)} if shards > 1 else {}),  # absent: one shard, codes.h5
    }
    with Session(engine) as s, s.begin():
        s.add_all(_Meta(key=k, value=v) for k, v in meta.items())
    return meta


#: ``meta`` key of the frames between a library's segments (``LibraryStore.segment_hop``)
SEGMENT_HOP_KEY = "segment_hop_frames"


def segment_hop_of(meta: dict[str, str], folder: Path) -> int:
    """Frames between the library's segments: recorded at creation, else the hop every library
    had before the setting existed."""
    raw = meta.get(SEGMENT_HOP_KEY)
    if raw is None:
        return LEGACY_SEGMENT_HOP
    try:
        hop = int(raw)
    except ValueError:
        hop = 0
    if hop <= 0:
        raise LibraryError(f"{folder}: the library records a segment hop of {raw!r} frames, not a positive "
                           f"number; index the music again into a new library")
    return hop


def check_meta(
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


def upgrade(engine: Engine, meta: dict[str, str], folder: Path) -> dict[str, str]:
    """Bring an older format up to date in place, and record where the library's folder is now.

    v1 -> v2: ``meta.generation``; v2 -> v3: ``meta.library_id`` and ``library_folder`` (codes.h5's
    checksums are added by ``repair``, group by group). Returns the new meta (unchanged: no write).
    """
    added = {
        k: v
        for k, v in (("generation", "0"), ("library_id", identity.new_id()), ("library_folder", identity.folder_path(folder)))
        if k not in meta
    }
    moved = "library_folder" in meta and meta["library_folder"] != identity.folder_path(folder)
    old = int(meta["schema_version"]) < SCHEMA_VERSION
    if not (added or moved or old):
        return meta
    with Session(engine) as s, s.begin():
        s.add_all(_Meta(key=k, value=v) for k, v in added.items())
        if moved:
            s.execute(update(_Meta).where(_Meta.key == "library_folder").values(value=identity.folder_path(folder)))
        if old:
            s.execute(update(_Meta).where(_Meta.key == "schema_version").values(value=str(SCHEMA_VERSION)))
    return read_meta(engine)


def bump_generation(s: Session) -> None:
    """In a write transaction: the set of valid codes changes (``stamp``)."""
    s.execute(update(_Meta).where(_Meta.key == "generation").values(value=cast(cast(_Meta.value, Integer) + 1, Text)))


def check_database(engine: Engine) -> list[Problem]:
    """What SQLite's ``quick_check`` (and reading the tracks) finds wrong with the database; others: nothing."""
    if engine.dialect.name != "sqlite":
        return []
    where = str(engine.url.database)
    try:
        with engine.connect() as conn:
            found = [str(r[0]) for r in conn.exec_driver_sql("PRAGMA quick_check").all()]
            conn.execute(select(func.count()).select_from(_Track)).scalar_one()
    except DamagedDatabaseError as e:
        return [Problem(where, str(e).removeprefix(f"{where}: "))]
    if found == ["ok"]:
        return []
    return [Problem(where, f"the library database is damaged ({'; '.join(found[:3])}); restore it from a "
                           f"backup, or index the music again into a new library")]
