"""What the HTTP service keeps between requests: its settings, the bounded queue in front of the
model, Prometheus counters, and the background index jobs.

Nothing here knows about HTTP: ``app.py`` maps these records and exceptions to responses.
"""

from __future__ import annotations

import itertools
import os
import threading
import time
import traceback
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from musichash.errors import MusichashError
from musichash.indexer.pipeline import Progress

T = TypeVar("T")


class ServiceError(MusichashError):
    """A request the service refuses; ``status`` is its HTTP status."""

    status = 400

    def __init__(self, message: str, status: int | None = None):
        super().__init__(message)
        if status is not None:
            self.status = status


class BusyError(ServiceError):
    """The queue in front of the model is full: the client should come back after ``retry_after`` s."""

    status = 503

    def __init__(self, message: str, retry_after: int):
        super().__init__(message)
        self.retry_after = retry_after


@dataclass(frozen=True)
class ServeConfig:
    """``musichash serve``'s settings (the CLI's options, with the same defaults)."""

    library: Path
    db_url: str | None = None
    device: str = "auto"
    max_upload_mb: float = 20.0  # request body, all clips together
    max_clip_s: float = 60.0  # decoded audio per clip
    max_clips: int = 16  # clips per POST /search
    queue: int = 32  # model requests in progress (upload, decoding, waiting) beyond the one running; more get 503
    timeout_s: float = 30.0  # a model request that takes longer is answered 504
    admin_token: str | None = None  # writes (POST /index, DELETE /tracks/{id}) are off without one
    allow_roots: tuple[Path, ...] = ()  # folders POST /index may read
    cors_origins: tuple[str, ...] = ()
    #: a Ray address ('': the cluster this process joined, else a new one here): the library's segment
    #: shards are then served by Ray actors (``musichash.cluster.search``); None: in this process
    cluster: str | None = None

    @property
    def max_upload_bytes(self) -> int:
        return int(self.max_upload_mb * 1024 * 1024)


class ModelQueue:
    """One worker thread for everything that runs the model or reads the index, and a bound on
    how many requests may wait for it.

    Torch already spreads one forward pass over the cores, so running two at once only makes both
    slower; and ``Library`` caches its index without locks. Requests beyond ``bound`` are refused at
    once (``BusyError``) rather than piling up until every client times out.
    """

    def __init__(self, bound: int):
        self.bound = bound
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="musichash-model")
        self._lock = threading.Lock()
        self.depth = 0  # submitted and not finished (running included)
        self.rejected = 0
        self.mean_s = 0.5  # running mean of a request's time, for Retry-After

    def admit(self) -> None:
        """Count a request in, from before its upload is read: one over the bound is refused before it
        costs anything (parsing and decoding 64 uploads at once would starve the model)."""
        with self._lock:
            if self.depth > self.bound:
                self.rejected += 1
                wait = max(1, round(self.depth * self.mean_s))
                raise BusyError(f"the server is busy ({self.depth} requests queued); retry in {wait} s", wait)
            self.depth += 1

    def leave(self) -> None:
        with self._lock:
            self.depth -= 1

    def run(self, fn: Callable[[], T]) -> Future:
        """``fn`` on the model's thread, for a request already admitted."""

        def timed() -> T:
            t0 = time.perf_counter()
            try:
                return fn()
            finally:
                with self._lock:
                    self.mean_s = 0.9 * self.mean_s + 0.1 * (time.perf_counter() - t0)

        return self._pool.submit(timed)

    def submit(self, fn: Callable[[], T]) -> Future:
        """``admit``, ``run`` and ``leave`` when done."""
        self.admit()
        future = self.run(fn)
        future.add_done_callback(lambda _: self.leave())
        return future

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)


# Prometheus' default buckets, with the sub-second ones a search lands in made finer.
BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 0.75, 1.0, 1.5, 2.5, 5.0, 10.0, 30.0)


class Metrics:
    """Request counts and a latency histogram per route, in the Prometheus text format."""

    def __init__(self):
        self._lock = threading.Lock()
        self.requests: dict[tuple[str, str, int], int] = {}
        self.hist: dict[str, list[int]] = {}
        self.sums: dict[str, float] = {}

    def observe(self, method: str, route: str, status: int, seconds: float) -> None:
        with self._lock:
            key = (method, route, status)
            self.requests[key] = self.requests.get(key, 0) + 1
            counts = self.hist.setdefault(route, [0] * (len(BUCKETS) + 1))
            counts[next((i for i, b in enumerate(BUCKETS) if seconds <= b), len(BUCKETS))] += 1
            self.sums[route] = self.sums.get(route, 0.0) + seconds

    def text(self, queue: ModelQueue) -> str:
        def esc(s: str) -> str:
            return s.replace("\\", "\\\\").replace('"', '\\"')

        out = ["# HELP musichash_requests_total HTTP requests by method, route and status.",
               "# TYPE musichash_requests_total counter"]
        with self._lock:
            for (m, r, s), n in sorted(self.requests.items()):
                out.append(f'musichash_requests_total{{method="{m}",route="{esc(r)}",status="{s}"}} {n}')
            out += ["# HELP musichash_request_seconds Time to answer a request, by route.",
                    "# TYPE musichash_request_seconds histogram"]
            for r, counts in sorted(self.hist.items()):
                total = 0
                for b, n in zip([*map(str, BUCKETS), "+Inf"], counts):
                    total += n
                    out.append(f'musichash_request_seconds_bucket{{route="{esc(r)}",le="{b}"}} {total}')
                out.append(f'musichash_request_seconds_sum{{route="{esc(r)}"}} {self.sums[r]:.6f}')
                out.append(f'musichash_request_seconds_count{{route="{esc(r)}"}} {total}')
        out += ["# HELP musichash_queue_depth Model requests running or waiting.", "# TYPE musichash_queue_depth gauge",
                f"musichash_queue_depth {queue.depth}",
                "# HELP musichash_queue_rejected_total Requests answered 503 because the queue was full.",
                "# TYPE musichash_queue_rejected_total counter", f"musichash_queue_rejected_total {queue.rejected}"]
        return "\n".join(out) + "\n"


@dataclass
class Job:
    """A background ``index`` run (POST /index), as GET /jobs/{id} shows it."""

    id: int
    paths: list[str]
    state: str = "queued"  # queued | running | done | failed
    files: int = 0
    files_done: int = 0
    audio_s: float = 0.0
    audio_done_s: float = 0.0
    error: str | None = None
    report: dict[str, Any] | None = None
    started: float = field(default_factory=time.time)
    finished: float | None = None

    def json(self) -> dict[str, Any]:
        share = self.audio_done_s / self.audio_s if self.audio_s else (1.0 if self.state == "done" else 0.0)
        return {"job_id": self.id, "state": self.state, "paths": self.paths, "files": self.files,
                "files_done": self.files_done, "progress": round(min(share, 1.0), 4), "error": self.error,
                "report": self.report, "started": self.started, "finished": self.finished}


class Jobs:
    """Index runs one at a time (a library has one writer), each in its own thread."""

    def __init__(self):
        self._ids = itertools.count(1)
        self._lock = threading.Lock()
        self.jobs: dict[int, Job] = {}
        self.writer = threading.Lock()

    def start(self, paths: list[str], run: Callable[[Progress], dict[str, Any]]) -> Job:
        job = Job(next(self._ids), paths)
        with self._lock:
            self.jobs[job.id] = job

        class JobProgress(Progress):
            def start(self, n_files: int, total_s: float) -> None:
                job.files, job.audio_s = n_files, total_s

            def advance(self, path: str, seconds: float) -> None:
                job.files_done += 1
                job.audio_done_s += seconds

        def work() -> None:
            with self.writer:
                job.state = "running"
                try:
                    job.report = run(JobProgress())
                    job.state = "done"
                except MusichashError as e:
                    job.state, job.error = "failed", str(e)
                except Exception as e:  # noqa: BLE001  (a job's thread must record why it died; the log gets the trace)
                    traceback.print_exc()
                    job.state, job.error = "failed", f"internal error ({type(e).__name__}); see the server's log"
                finally:
                    job.finished = time.time()

        threading.Thread(target=work, name=f"musichash-index-{job.id}", daemon=True).start()
        return job

    def get(self, job_id: int) -> Job | None:
        return self.jobs.get(job_id)


def under_roots(path: str, roots: tuple[Path, ...]) -> Path | None:
    """``path`` resolved (symlinks followed), when it lies in one of ``roots``; else None."""
    real = Path(os.path.realpath(path))
    for root in roots:
        r = Path(os.path.realpath(root))
        if real == r or r in real.parents:
            return real
    return None
