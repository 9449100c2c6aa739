"""codes.h5: opening, creating and checking the library's HDF5 codes file.

Layout and crash-safety rules are described in ``store.py``, the only user.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import h5py

from musichash.indexer.records import SCHEMA_VERSION, LibraryError, ModelMismatchError

# Low bound v108: superblock v2 and v2 object headers, whose metadata is
# checksummed.  Not 'latest' (v110+): its superblock v3 carries "open for
# write" flags that make every other process refuse the file while a writer
# has it open, and every process refuse it after a writer was killed.
H5_KW = {"libver": ("v108", "latest"), "locking": False}



def group_valid(g: h5py.Group, n_segments: int, nbytes: int) -> bool:
    try:
        return (
            g["track_code"].shape == (nbytes,)
            and g["segment_codes"].shape == (n_segments, nbytes)
            and g["segment_times"].shape == (n_segments,)
        )
    except (KeyError, OSError):  # missing, or its metadata fails the checksum
        return False


def new_codes_file(path: Path, code_model: str, bits: int) -> h5py.File:
    h5 = h5py.File(path, "w", **H5_KW)
    h5.attrs["code_model"] = code_model
    h5.attrs["bits"] = bits
    h5.attrs["schema_version"] = SCHEMA_VERSION
    h5.create_group("tracks")
    h5.flush()
    return h5


def open_codes_for_write(path: Path, code_model: str, bits: int) -> tuple[h5py.File, Path | None]:
    """Open (or start) codes.h5; an unreadable one is set aside. Returns (file, set-aside path)."""
    if not path.exists():
        return new_codes_file(path, code_model, bits), None
    try:
        h5 = h5py.File(path, "a", **H5_KW)
    except OSError:
        h5 = None
    if h5 is not None:
        if "tracks" in h5 and "code_model" in h5.attrs:
            stored = (str(h5.attrs["code_model"]), int(h5.attrs["bits"]))
            if stored != (code_model, bits):
                h5.close()
                raise ModelMismatchError(
                    f"{path}: holds codes of model {stored[0]} ({stored[1]} bits) but the library "
                    f"database says {code_model} ({bits} bits); was codes.h5 copied from another "
                    f"library? Move it away and run `musichash index` to recompute the codes"
                )
            return h5, None
        h5.close()
    stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%S%fZ")
    aside = path.with_name(f"{path.name}.corrupt-{stamp}")
    path.rename(aside)
    return new_codes_file(path, code_model, bits), aside


def open_codes_for_read(path: Path) -> h5py.File:
    try:
        h5 = h5py.File(path, "r", **H5_KW)
    except (OSError, FileNotFoundError) as e:
        raise LibraryError(
            f"{path}: cannot read the codes ({e}); run `musichash index` to repair the library"
        ) from None
    if "tracks" not in h5:
        h5.close()
        raise LibraryError(
            f"{path}: no codes in this file; run `musichash index` to repair the library"
        )
    return h5
