"""codes.h5: opening, creating, writing, reading and checking the library's HDF5 codes file.

Layout and crash-safety rules are described in ``store.py``, the only user.

Every track's group carries a ``checksum`` attribute (``codes_checksum`` of its
datasets), written with them: HDF5 checksums its metadata (``libver`` v108) but not
the data, so without it a flipped bit in a code would be read as a code. Groups
written before checksums existed have none until a writer adopts them.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import os
from collections.abc import Callable
from pathlib import Path

import h5py
import numpy as np
from h5py import h5a, h5d, h5g, h5s

from musichash.indexer.records import (
    SCHEMA_VERSION,
    CodesCheck,
    DamagedCodesError,
    LibraryMismatchError,
    ModelMismatchError,
    Problem,
    Track,
    TrackCodes,
)

# Low bound v108: superblock v2 and v2 object headers, whose metadata is
# checksummed.  Not 'latest' (v110+): its superblock v3 carries "open for
# write" flags that make every other process refuse the file while a writer
# has it open, and every process refuse it after a writer was killed.
H5_KW = {"libver": ("v108", "latest"), "locking": False}

CHECKSUM_ATTR = "checksum"
#: a track's sketch (``features.spectra.sketch``, dedup's audio check) has its own checksum, so that
#: reading codes never has to read the larger sketch
SKETCH = "sketch"
SKETCH_CHECKSUM_ATTR = "sketch_checksum"
#: root attribute: the ``meta.library_id`` of the library these codes belong to
ID_ATTR = "library_id"
_DATASETS = ("track_code", "segment_codes", "segment_times", "chroma")
_DTYPES = {"track_code": np.uint8, "segment_codes": np.uint8, "segment_times": np.float32, "chroma": np.uint8}
# What h5py raises for damaged HDF5 metadata: a failed metadata checksum surfaces as
# KeyError on opening an object, RuntimeError on iterating a group, OSError on reading.
H5_ERRORS = (KeyError, OSError, RuntimeError, ValueError, TypeError)


class CodesMissing(LookupError):
    """A track has no group in codes.h5."""


class CodesDamaged(Exception):
    """A track's group cannot be read, is malformed, or fails its checksum; ``reason`` says which."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class CodesFileDamaged(CodesDamaged):
    """The track group's own index cannot be read: no track can be looked up reliably."""


def codes_checksum(
    track_code: np.ndarray, segment_codes: np.ndarray, segment_times: np.ndarray, chroma: np.ndarray | None
) -> str:
    """blake2b-128 (hex) of a track's datasets: each one's name, type, shape and little-endian bytes."""
    h = hashlib.blake2b(digest_size=16)
    for name, a in zip(_DATASETS, (track_code, segment_codes, segment_times, chroma)):
        if a is None:
            continue
        a = np.asarray(a)
        h.update(f"{name} {a.dtype.name} {a.shape};".encode())
        h.update(np.ascontiguousarray(a, a.dtype.newbyteorder("<")).tobytes())
    return h.hexdigest()


def write_group(
    groups: h5py.Group,
    name: str,
    track_code: np.ndarray,
    segment_codes: np.ndarray,
    segment_times: np.ndarray,
    chroma: np.ndarray | None,
    sketch: np.ndarray | None = None,
) -> None:
    """(Re)write one track's group with its checksum (and its sketch's); the caller flushes."""
    if name in groups:
        del groups[name]
    g = groups.create_group(name)
    g.create_dataset("track_code", data=track_code)
    g.create_dataset("segment_codes", data=segment_codes)
    g.create_dataset("segment_times", data=segment_times)
    if chroma is not None:
        g.create_dataset("chroma", data=chroma)
    g.attrs[CHECKSUM_ATTR] = codes_checksum(track_code, segment_codes, segment_times, chroma)
    if sketch is not None:
        g.create_dataset(SKETCH, data=sketch, compression="gzip", compression_opts=4)
        g.attrs[SKETCH_CHECKSUM_ATTR] = _sketch_checksum(sketch)


def _sketch_checksum(sketch: np.ndarray) -> str:
    h = hashlib.blake2b(digest_size=16)
    h.update(f"{sketch.dtype.name} {sketch.shape};".encode())
    h.update(np.ascontiguousarray(sketch).tobytes())
    return h.hexdigest()


def read_sketch(groups: h5py.Group, name: str) -> np.ndarray | None:
    """A track's sketch, uint8 [frames, bands], verified; None when it has none or it is damaged
    (dedup then makes it from the file again)."""
    try:
        g = groups[name]
        if SKETCH not in g:
            return None
        sketch = np.asarray(g[SKETCH][()], np.uint8)
        ok = sketch.ndim == 2 and str(g.attrs.get(SKETCH_CHECKSUM_ATTR, "")) == _sketch_checksum(sketch)
    except H5_ERRORS:
        return None
    return sketch if ok else None


def _read(g: h5py.Group, key: str) -> np.ndarray:
    # The low-level calls take half the time of g[key][()] (a rebuild reads every group), and
    # the type written (HDF5 converts on reading) a quarter less than asking the file for it.
    d = h5d.open(g.id, key.encode())
    a = np.empty(d.shape, _DTYPES[key])
    if a.size:
        d.read(h5s.ALL, h5s.ALL, a)
    return a


def read_group(groups: h5py.Group, name: str, nbytes: int) -> tuple[TrackCodes, str | None]:
    """A track's codes and stored checksum (None: written before checksums), verified.

    Raises CodesMissing when there is no such group, CodesDamaged when it is unreadable,
    malformed (``nbytes`` bytes a code) or fails its checksum, CodesFileDamaged when the
    lookup itself fails (the track group's index is damaged).
    """
    try:
        present = name in groups
    except H5_ERRORS as e:
        raise CodesFileDamaged(_first_line(e)) from None
    if not present:
        raise CodesMissing(name)
    try:
        g = groups[name]
        checksum = g.attrs.get(CHECKSUM_ATTR)
        arrays = [_read(g, k) if k != "chroma" or k in g else None for k in _DATASETS]
    except H5_ERRORS as e:
        raise CodesDamaged(f"unreadable: {_first_line(e)}") from None
    codes = TrackCodes(*arrays)
    n = len(codes.segment_codes)
    if (
        codes.track_code.shape != (nbytes,)
        or codes.segment_codes.shape != (n, nbytes)
        or codes.segment_times.shape != (n,)
    ):
        raise CodesDamaged("malformed: its datasets' shapes do not fit together")
    if checksum is not None:
        checksum = str(checksum)
        if codes_checksum(*arrays) != checksum:
            raise CodesDamaged("checksum mismatch")
    return codes, checksum


def group_valid(groups: h5py.Group, name: str, n_segments: int, nbytes: int) -> bool:
    """Whether group ``name`` has the datasets and shapes an 'ok' row of ``n_segments`` segments needs.

    Metadata only: opening each object verifies its header's checksum. Low-level calls: a
    write-open runs this over every group, and they take less than half the time of h5py's objects.
    """
    try:
        gid = h5g.open(groups.id, name.encode())
        shapes = [h5d.open(gid, k).shape for k in (b"track_code", b"segment_codes", b"segment_times")]
        if gid.links.exists(b"chroma"):
            h5d.open(gid, b"chroma")
    except H5_ERRORS:  # missing, or its metadata fails the checksum
        return False
    return shapes == [(nbytes,), (n_segments, nbytes), (n_segments,)]


def has_checksum(groups: h5py.Group, name: str) -> bool:
    try:
        return h5a.exists(h5g.open(groups.id, name.encode()), CHECKSUM_ATTR.encode())
    except H5_ERRORS:
        return False


def adopt_checksum(groups: h5py.Group, name: str, nbytes: int) -> bool:
    """Give a group written before checksums one, from its data as it is; False if it cannot be read."""
    try:
        codes, _ = read_group(groups, name, nbytes)
        groups[name].attrs[CHECKSUM_ATTR] = codes_checksum(
            codes.track_code, codes.segment_codes, codes.segment_times, codes.chroma
        )
    except (CodesMissing, CodesDamaged, *H5_ERRORS):
        return False
    return True


def new_codes_file(path: Path, code_model: str, bits: int, library_id: str | None) -> h5py.File:
    h5 = h5py.File(path, "w", **H5_KW)
    h5.attrs["code_model"] = code_model
    h5.attrs["bits"] = bits
    h5.attrs["schema_version"] = SCHEMA_VERSION
    if library_id is not None:
        h5.attrs[ID_ATTR] = library_id
    h5.create_group("tracks")
    h5.flush()
    return h5


def _aside_name(path: Path) -> Path:
    stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%S%fZ")
    return path.with_name(f"{path.name}.corrupt-{stamp}")


def set_aside(path: Path) -> Path:
    """Rename an unusable codes.h5 to ``codes.h5.corrupt-<UTC timestamp>``; returns the new path."""
    aside = _aside_name(path)
    path.rename(aside)
    return aside


def open_codes_for_write(
    path: Path, code_model: str, bits: int, library_id: str | None
) -> tuple[h5py.File, Path | None, bool]:
    """Open (or start) codes.h5. Returns (file, set-aside path, damaged).

    A file that does not open is set aside and a new one started. One that opens but whose
    root attributes or track index cannot be read (HDF5's "Link iteration failed") is
    returned with ``damaged`` True, for the store to salvage what it can. A file of another
    model or another library is refused; one without ``library_id`` is given it.
    """
    if not path.exists():
        return new_codes_file(path, code_model, bits, library_id), None, False
    try:
        h5 = h5py.File(path, "a", **H5_KW)
    except OSError:
        aside = set_aside(path)
        return new_codes_file(path, code_model, bits, library_id), aside, False
    try:
        stored = (str(h5.attrs["code_model"]), int(h5.attrs["bits"]))
        stored_id = h5.attrs.get(ID_ATTR)
        list(h5["tracks"])
    except H5_ERRORS:
        return h5, None, True
    try:
        if stored != (code_model, bits):
            raise ModelMismatchError(
                f"{path}: holds codes of model {stored[0]} ({stored[1]} bits) but the library "
                f"database says {code_model} ({bits} bits); was codes.h5 copied from another "
                f"library? Move it away and run `musichash index` to recompute the codes"
            )
        if stored_id is not None and library_id is not None and str(stored_id) != library_id:
            raise LibraryMismatchError(_other_library(path, stored_id, library_id))
        if stored_id is None and library_id is not None:
            h5.attrs[ID_ATTR] = library_id
            h5.flush()
    except H5_ERRORS:
        return h5, None, True
    except BaseException:
        h5.close()
        raise
    return h5, None, False


def keep_aside(path: Path) -> Path:
    """A second name for codes.h5, ``codes.h5.corrupt-<UTC timestamp>``, before a salvaged copy replaces it."""
    aside = _aside_name(path)
    os.link(path, aside)
    return aside


def open_codes_for_read(path: Path, library_id: str | None) -> h5py.File:
    """codes.h5 for reading; refused when damaged at its root, or of another library than ``library_id``."""
    try:
        h5 = h5py.File(path, "r", **H5_KW)
    except (OSError, FileNotFoundError) as e:
        raise DamagedCodesError(
            f"{path}: cannot read the codes ({_first_line(e)}); run `musichash check --repair` "
            f"to set the file aside and redo the codes"
        ) from None
    try:
        usable = "tracks" in h5
        if usable:  # opening them checks their headers
            h5["tracks"]
            for k in ("code_model", "bits"):
                h5.attrs[k]
    except H5_ERRORS as e:
        h5.close()
        raise DamagedCodesError(
            f"{path}: the codes file is damaged ({_first_line(e)}); run `musichash check --repair` "
            f"to set it aside and redo the codes"
        ) from None
    if not usable:
        h5.close()
        raise DamagedCodesError(
            f"{path}: no codes in this file; run `musichash check --repair` to set it aside and redo the codes"
        )
    stored_id = stored_library_id(h5)
    if stored_id is not None and library_id is not None and stored_id != library_id:
        h5.close()
        raise LibraryMismatchError(_other_library(path, stored_id, library_id))
    return h5


def stored_library_id(h5: h5py.File) -> str | None:
    """The root ``library_id`` attribute, or None (written before libraries had ids, or unreadable)."""
    try:
        value = h5.attrs.get(ID_ATTR)
    except H5_ERRORS:
        return None
    return None if value is None else str(value)


def check_file(
    h5: h5py.File,
    path: Path,
    tracks: list[Track],
    code_model: str,
    bits: int,
    *,
    deep: bool,
    progress: Callable[[int, int], None] | None = None,
) -> CodesCheck:
    """``LibraryStore.check_codes``: the root attributes and track index, and each of ``tracks`` ('ok' rows)."""
    try:
        attrs = (str(h5.attrs["code_model"]), int(h5.attrs["bits"]))
        names = set(h5["tracks"])
    except H5_ERRORS as e:
        return CodesCheck((Problem(str(path), f"the codes file is damaged ({' '.join(str(e).split())})"),), 0, 0)
    problems = []
    if attrs != (code_model, bits):
        problems.append(Problem(str(path), f"holds codes of {attrs[0]} ({attrs[1]} bits), the database says "
                                           f"{code_model} ({bits} bits)"))
    groups, nbytes, unchecked = h5["tracks"], bits // 8, 0
    for done, t in enumerate(tracks, 1):
        what = None
        if str(t.id) not in names:
            what = "no codes"
        elif deep:
            try:
                unchecked += read_group(groups, str(t.id), nbytes)[1] is None
            except CodesDamaged as e:
                what = f"damaged codes ({e.reason})"
            except CodesMissing:
                what = "no codes"
        elif not group_valid(groups, str(t.id), t.n_segments, nbytes):
            what = "damaged codes (unreadable or malformed)"
        if what is not None:
            problems.append(Problem(str(path), f"track {t.id} ({t.path}): {what}", t.id))
        if progress:
            progress(done, len(tracks))
    return CodesCheck(tuple(problems), len(tracks), unchecked)


def copy_groups(old: h5py.File, new: h5py.File, track_ids: list[int], nbytes: int) -> list[int]:
    """Copy the groups of ``track_ids`` whose codes read and pass their checksum from ``old`` to ``new``
    (salvaging a damaged file); returns the ids not copied."""
    lost = []
    try:
        groups = old["tracks"]
    except H5_ERRORS:
        return list(track_ids)
    for tid in track_ids:
        try:
            c, _ = read_group(groups, str(tid), nbytes)
        except (CodesMissing, CodesDamaged):
            lost.append(tid)
            continue
        write_group(new["tracks"], str(tid), c.track_code, c.segment_codes, c.segment_times, c.chroma,
                    read_sketch(groups, str(tid)))
    return lost


def _other_library(path: Path, stored_id: str, library_id: str) -> str:
    return (f"{path}: holds the codes of another library (id {stored_id}, the database's is {library_id}); "
            f"was codes.h5 copied from another library? Move it away and run `musichash index` to recompute the codes")


def _first_line(e: BaseException) -> str:
    text = str(e).strip().strip("'\"")
    return text.splitlines()[0] if text else type(e).__name__
