"""Writes to the library from the service (POST /index, DELETE /tracks/{id}), each in a child process.

HDF5 keeps one table of open files per process: while the server's read-only ``Library`` holds
codes.h5, opening it for writing in the same process fails, and the store would take the file for
damaged. A child process is a second client, exactly like ``musichash index`` run beside the
server, and the model it loads is freed when it ends.
"""

from __future__ import annotations

import multiprocessing
import traceback
from collections.abc import Callable
from typing import Any

from musichash.errors import MusichashError
from musichash.indexer.pipeline import Progress


def _child(op: str, folder: str, db_url: str | None, device: str, args: dict[str, Any], conn) -> None:
    from musichash.library import Library

    class Piped(Progress):
        def start(self, n_files: int, total_s: float) -> None:
            conn.send(("start", n_files, total_s))

        def advance(self, path: str, seconds: float) -> None:
            conn.send(("advance", path, seconds))

    try:
        with Library.open(folder, db_url=db_url, write=True, device=device) as lib:
            if op == "index":
                rep = lib.index(args["paths"], prune=args["prune"], workers=0, progress=Piped())
                out = {"added": len(rep.added), "updated": len(rep.updated), "unchanged": rep.unchanged,
                       "moved": [list(m) for m in rep.moved], "copies": [list(c) for c in rep.copies],
                       "pruned": list(rep.pruned), "failed": [{"path": f.path, "reason": f.reason} for f in rep.failed],
                       "audio_s": round(rep.audio_s, 2), "seconds": round(rep.seconds, 2)}
            else:
                track = lib.store.get(args["track_id"])
                lib.store.remove([args["track_id"]])
                out = {"removed": [track.path] if track else []}
        conn.send(("done", out))
    except MusichashError as e:
        conn.send(("failed", str(e)))
    except Exception as e:  # noqa: BLE001  (the parent reports it in one line; the trace goes to the log)
        traceback.print_exc()
        conn.send(("failed", f"internal error ({type(e).__name__}); see the server's log"))
    finally:
        conn.close()


def run_write(op: str, folder, db_url: str | None, device: str, args: dict[str, Any],
              progress: Progress | None = None) -> dict[str, Any]:
    """``op`` ('index' or 'remove') in a child process; its result, or MusichashError with its reason."""
    ctx = multiprocessing.get_context("spawn")  # a fork would inherit the open HDF5 file
    parent, child = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=_child, args=(op, str(folder), db_url, device, args, child), daemon=True)
    proc.start()
    child.close()
    handlers: dict[str, Callable] = {"start": (progress or Progress()).start, "advance": (progress or Progress()).advance}
    try:
        while True:
            try:
                kind, *rest = parent.recv()
            except EOFError:
                proc.join()
                raise MusichashError(f"the {op} process ended without an answer (exit status {proc.exitcode})") from None
            if kind == "done":
                return rest[0]
            if kind == "failed":
                raise MusichashError(rest[0])
            handlers[kind](*rest)
    finally:
        parent.close()
        proc.join(timeout=30)
