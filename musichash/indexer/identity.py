"""Which library a database and a codes folder belong to.

A library has an id (a UUID, hex) kept on both sides: ``meta.library_id`` (with
``meta.library_folder``, the folder it was last written from, for messages) in the
database, and in the folder a file ``library.id`` and the root attribute
``library_id`` of codes.h5. Opening checks them before anything is read or repaired,
so that one ``--db-url`` given with another ``--library`` folder is refused instead
of every track being marked 'pending' for codes that folder does not hold.

Written database first, folder second: a crash in between leaves a database whose
recorded folder is this one and a folder without an id, which the next writer
completes. Libraries from before ids (format v2 and older) have neither; a writer
gives them one.
"""

from __future__ import annotations

import os
import re
import uuid
from pathlib import Path

import h5py

from musichash.indexer.codes_file import H5_KW, stored_library_id
from musichash.indexer.records import LibraryMismatchError

ID_FILE = "library.id"
_ID = re.compile(r"[0-9a-f]{32}")


def new_id() -> str:
    return uuid.uuid4().hex


def folder_path(folder: Path) -> str:
    """How ``meta.library_folder`` records a folder: absolute, symbolic links resolved."""
    return str(Path(folder).resolve())


def read_folder_id(folder: Path, codes: Path) -> str | None:
    """The folder's library id: ``library.id``, else codes.h5's ``library_id``; None if neither says."""
    try:
        text = (folder / ID_FILE).read_text().strip()
        if _ID.fullmatch(text):
            return text
    except (OSError, UnicodeDecodeError):
        pass
    if not codes.is_file():
        return None
    try:
        with h5py.File(codes, "r", **H5_KW) as h5:
            return stored_library_id(h5)
    except OSError:  # unreadable: the writer sets it aside, a reader says so when it opens it
        return None


def write_folder_id(folder: Path, library_id: str) -> None:
    """``library.id``, written atomically (a crash leaves the old file or none)."""
    path = folder / ID_FILE
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_text(library_id + "\n")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def check_pairing(meta: dict[str, str], folder: Path, codes: Path, where: str) -> str | None:
    """Refuse a database and a folder of two different libraries (LibraryMismatchError).

    ``where``: the database, as messages show it. Returns the folder's id (None: it has none yet).
    """
    db_id, mine = meta.get("library_id"), read_folder_id(folder, codes)
    if db_id is not None:
        home = meta.get("library_folder")
        if mine == db_id or (mine is None and home is not None and home == folder_path(folder)):
            return mine
        raise LibraryMismatchError(
            f"{folder}: the database {where} belongs to the library at {home or 'another folder'}; "
            f"give its --library, or a new --db-url for this folder"
        )
    if mine is not None:
        raise LibraryMismatchError(
            f"{folder}: this folder holds the codes of another library (id {mine}), not of the database "
            f"{where}; give that library's --db-url, or another --library for this database"
        )
    return None


def check_new(folder: Path, codes: Path, where: str) -> None:
    """Before creating a library in the database ``where``: refuse a folder that holds another library's codes."""
    if (folder / ID_FILE).exists() or codes.exists():
        raise LibraryMismatchError(
            f"{folder}: this folder holds the codes of another library, whose database is not {where}; "
            f"give that library's --db-url, or another --library for a new library"
        )
