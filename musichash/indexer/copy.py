"""A library copied into a new one, from its stored codes: another shard count, or another database.

Nothing is decoded and no model runs: every 'ok' track's row, codes, chroma and sketch are read
(checksums verified) and stored again through ``LibraryStore.put_tracks``, in batches, so the copy
is as crash-safe as indexing (a copy cut short is completed by running it again: tracks already
there are skipped). 'error' rows are copied too, so that ``index`` does not retry those files.
Tracks whose stored codes are damaged are not copied; the next ``index`` of their folder
computes them again. Track ids are the new library's own (a track's shard follows its new id).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from musichash.indexer.records import DamagedCodesError, LibraryError
from musichash.indexer.store import LibraryStore, TrackRecord

#: tracks a ``put_tracks`` call
BATCH = 64


@dataclass(frozen=True)
class CopyReport:
    copied: int = 0
    errors: int = 0  # 'error' rows copied
    skipped: int = 0  # already in the new library (a copy run again)
    damaged: tuple[str, ...] = ()  # paths whose codes failed their checksum: not copied


def copy_tracks(src: LibraryStore, dst: LibraryStore, advance: Callable[[], None] | None = None) -> CopyReport:
    """Copy ``src``'s 'ok' and 'error' tracks into ``dst`` (same code model and bits)."""
    if (src.code_model, src.bits) != (dst.code_model, dst.bits):
        raise LibraryError(f"{dst.folder}: holds {dst.code_model} codes, not {src.code_model}; copy into a new folder")
    have = {t.path for t in dst.tracks() if t.status in ("ok", "error")}
    batch, copied, errors, skipped, damaged = [], 0, 0, 0, []
    for t in src.tracks():
        if t.status == "pending":
            continue
        if t.path in have:
            skipped += 1
        elif t.status == "error":
            dst.put_error(t.path, t.content_hash, t.size, t.mtime, t.error or "")
            errors += 1
        else:
            try:
                c = src.get_codes(t.id)
            except (DamagedCodesError, LibraryError):
                damaged.append(t.path)
            else:
                record = TrackRecord(t.path, t.content_hash, t.size, t.mtime, t.duration_s, t.format, t.tags)
                batch.append((record, c.track_code, c.segment_codes, c.segment_times, c.chroma, src.get_sketch(t.id)))
                if len(batch) >= BATCH:
                    copied += len(dst.put_tracks(batch))
                    batch = []
        if advance is not None:
            advance()
    if batch:
        copied += len(dst.put_tracks(batch))
    return CopyReport(copied, errors, skipped, tuple(damaged))
