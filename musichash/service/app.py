"""``musichash serve``: the library over HTTP (FastAPI), with the web page in ``static/``.

Every answer is built by ``Library``, as the CLI's are, and has the CLI's JSON shape
(``musichash.search.results``). The library is opened read-only; it is opened again when its
generation stamp moves (an ``index`` or ``remove`` by this server or by the CLI), so queries see
the new tracks. Writes (POST /index, DELETE /tracks/{id}) need ``--admin-token``.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import os
import tempfile
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar

import anyio
import numpy as np
from fastapi import FastAPI, File, Form, Header, Query, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import FileResponse, JSONResponse, PlainTextResponse, Response
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, Field
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from musichash import __version__
from musichash.errors import MusichashError
from musichash.features.audio import SAMPLE_RATE, AudioError, load_audio
from musichash.indexer.store import EmptyLibraryError
from musichash.library import Clip, Library, QueryError
from musichash.models.explain import METHODS
from musichash.search.results import dedup_json, search_json, similar_json
from musichash.service.runtime import (
    BusyError,
    Jobs,
    Metrics,
    ModelQueue,
    ServeConfig,
    ServiceError,
    under_roots,
)
from musichash.service.writer import run_write

T = TypeVar("T")
STATIC = Path(__file__).parent / "static"
MEDIA_TYPES = {"wav": "audio/wav", "flac": "audio/flac", "ogg": "audio/ogg", "mp3": "audio/mpeg", "m4a": "audio/mp4",
               "aac": "audio/aac", "opus": "audio/ogg", "webm": "audio/webm", "aiff": "audio/aiff"}
TAGS_SHOWN = 5


class Reader:
    """The read-only ``Library`` the queries share, opened again when its generation stamp moves.

    h5py keeps an open file's metadata, so a reader that outlives a write must reopen to see the
    new codes. All calls hold ``lock``: ``Library`` caches its index without locks of its own.
    """

    def __init__(self, config: ServeConfig):
        self.config = config
        self.lock = threading.RLock()
        self.remote = None  # the shard actors, with --cluster
        self.lib = self._open()
        self.stamp = self.lib.store.stamp()

    def _open(self) -> Library:
        lib = Library.open(self.config.library, db_url=self.config.db_url, device=self.config.device)
        if self.config.cluster is not None:
            from musichash.cluster.search import attach

            try:
                old, self.remote = self.remote, attach(lib, self.config.cluster or None)
            except BaseException:
                lib.close()
                raise
            if old is not None:
                old.close()
        return lib

    def call(self, fn: Callable[[Library], T]) -> T:
        with self.lock:
            stamp = self.lib.store.stamp()
            if stamp != self.stamp:
                old = self.lib
                self.lib = self._open()
                self.stamp = self.lib.store.stamp()
                old.close()
            return fn(self.lib)

    def close(self) -> None:
        with self.lock:
            self.lib.close()
            if self.remote is not None:
                self.remote.close()


class RecommendBody(BaseModel):
    seeds: list[int] = Field(min_length=1, description="Track ids of the library (never paths).")
    top_k: int = Field(10, ge=1, le=1000)
    tags: list[str] = []
    exclude_tags: list[str] = []
    min_p: float = Field(0.2, ge=0, le=1)


class IndexBody(BaseModel):
    paths: list[str] = Field(min_length=1, description="Server-side files or folders under an --allow-root folder.")
    prune: bool = False


def _track_json(lib: Library, t) -> dict[str, Any]:
    row = {"track_id": t.id, "path": t.path, "status": t.status, "duration_s": t.duration_s, "format": t.format,
           "tags": _top_tags(lib, t)}
    if t.error:
        row["error"] = t.error
    return row


def _top_tags(lib: Library, t) -> list[dict[str, Any]]:
    if t.tags is None:
        return []
    p = np.asarray(t.tags)
    vocab = lib.vocabulary
    return [{"tag": vocab[i], "p": round(float(p[i]), 4)} for i in np.argsort(-p, kind="stable")[:TAGS_SHOWN]]


def _has_tag(lib: Library, t, tag: str, min_p: float) -> bool:
    vocab = lib.vocabulary
    if tag not in vocab:
        raise QueryError(f"unknown tag {tag!r}; tags are those of `musichash models` (e.g. {', '.join(vocab[:3])})")
    return t.tags is not None and t.tags[vocab.index(tag)] >= min_p


def _stats_json(lib: Library) -> dict[str, Any]:
    from musichash.search.cache import choose_config

    s = lib.stats()
    return {"library": str(lib.folder), "tracks": s.n_tracks, "errors": s.n_errors, "pending": s.n_pending,
            "segments": s.n_segments, "hours": round(s.hours, 3), "code_model": s.code_model, "bits": s.bits,
            "index_type": choose_config(lib.folder, s.bits, s.n_segments).kind, "code_bytes": s.code_bytes,
            "code_bytes_per_hour": round(s.code_bytes_per_hour, 1), "segment_hop_frames": lib.store.segment_hop,
            "shards": lib.store.shards, "tagger": lib.tagger}


class _BodyLimit:
    """ASGI middleware: a request body over ``limit`` bytes is answered 413 before it is all read,
    whether or not it declares its length."""

    def __init__(self, app, limit: int, mb: float):
        self.app = app
        self.limit = limit
        self.mb = mb

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        too_big = JSONResponse({"error": f"upload larger than {self.mb:g} MB; send a shorter clip "
                                         f"(the limit is musichash serve --max-upload-mb)"}, status_code=413)
        length = dict(scope["headers"]).get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.limit:
            return await too_big(scope, receive, send)
        seen = 0
        answered = False  # the 413 went out: whatever the app sends after it is dropped

        async def counted():
            nonlocal seen, answered
            message = await receive()
            if message["type"] == "http.request" and not answered:
                seen += len(message.get("body", b""))
                if seen > self.limit:
                    answered = True
                    await too_big(scope, receive, send)
                    # the app sees the client go away, and stops reading (FastAPI would call an
                    # exception raised here a malformed body, 400)
                    return {"type": "http.disconnect"}
            return message

        async def sending(message):
            if not answered:
                await send(message)

        await self.app(scope, counted, sending)


def create_app(config: ServeConfig) -> FastAPI:
    """The service over the library in ``config.library`` (opened now: a bad folder fails here, not per request)."""
    reader = Reader(config)
    queue = ModelQueue(config.queue)
    metrics = Metrics()
    jobs = Jobs()
    dedup_cache: dict[str, Any] = {}
    # uploads decoded at once: more only share the cores the model needs, and hold more audio in memory
    decoders = anyio.CapacityLimiter(max(1, min(4, os.cpu_count() or 1)))

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        yield
        queue.close()
        reader.close()

    app = FastAPI(title="musichash", version=__version__, lifespan=lifespan,
                  description="Query by example, deduplication and recommendation over a musichash library. "
                              "JSON shapes are the CLI's `--json` ones.")
    app.state.reader, app.state.queue, app.state.metrics, app.state.jobs = reader, queue, metrics, jobs
    if config.cors_origins:
        app.add_middleware(CORSMiddleware, allow_origins=list(config.cors_origins), allow_methods=["GET", "POST"])
    app.add_middleware(_BodyLimit, limit=config.max_upload_bytes, mb=config.max_upload_mb)

    async def model(fn: Callable[[Library], T]) -> T:
        """``fn`` on the library, on the model's thread (the request was admitted by ``_observe``); 504 past the timeout."""
        future = queue.run(lambda: reader.call(fn))
        try:
            return await asyncio.wait_for(asyncio.wrap_future(future), config.timeout_s)
        except asyncio.TimeoutError:
            raise ServiceError(f"the request took longer than {config.timeout_s:g} s and was abandoned; "
                               f"try a shorter clip or fewer clips", 504) from None

    async def read(fn: Callable[[Library], T]) -> T:
        """A light read (SQL only) that does not queue behind the model."""
        return await run_in_threadpool(reader.call, fn)

    def admin(authorization: str | None) -> None:
        if config.admin_token is None:
            raise ServiceError("writes are off on this server; start it with --admin-token to allow them", 403)
        given = (authorization or "").removeprefix("Bearer ").strip()
        if not hmac.compare_digest(given.encode(), config.admin_token.encode()):
            raise ServiceError("missing or wrong admin token; send the header Authorization: Bearer TOKEN", 401)

    # ------------------------------------------------------------ errors and metrics

    @app.exception_handler(MusichashError)
    async def _library_error(request: Request, e: MusichashError):
        status = getattr(e, "status", 400)
        if isinstance(e, EmptyLibraryError):
            status = 409
        headers = {"Retry-After": str(e.retry_after)} if isinstance(e, BusyError) else None
        return JSONResponse({"error": str(e)}, status_code=status, headers=headers)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, e: StarletteHTTPException):
        return JSONResponse({"error": str(e.detail)}, status_code=e.status_code, headers=getattr(e, "headers", None))

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, e: RequestValidationError):
        first = e.errors()[0] if e.errors() else {}
        where = ".".join(str(x) for x in first.get("loc", ()) if x != "body")
        return JSONResponse({"error": f"{where}: {first.get('msg', 'invalid request')}"}, status_code=422)

    @app.exception_handler(Exception)
    async def _internal(request: Request, e: Exception):
        traceback.print_exc()  # the trace goes to the server's log, never to the client
        return JSONResponse({"error": f"internal error ({type(e).__name__}); see the server's log"}, status_code=500)

    def uses_model(request: Request) -> bool:
        path, method = request.url.path, request.method
        per_track = path.startswith("/tracks/")
        if method == "POST":
            return path in ("/search", "/recommend") or (per_track and path.endswith("/explain-match"))
        return method == "GET" and (path == "/dedup" or (per_track and path.endswith(("/similar", "/explain"))))

    @app.middleware("http")
    async def _observe(request: Request, call_next):
        t0 = time.perf_counter()
        status = 500
        admitted = False
        try:
            if uses_model(request):
                try:
                    queue.admit()
                except BusyError as e:
                    status = 503
                    return JSONResponse({"error": str(e)}, status_code=503, headers={"Retry-After": str(e.retry_after)})
                admitted = True
            response = await call_next(request)
            status = response.status_code
            return response
        finally:
            if admitted:
                queue.leave()
            route = request.scope.get("route")
            label = getattr(route, "path", None)
            if label is None:  # refused before routing: the route by its shape, never the raw path
                label = "/tracks/{track_id}/similar" if request.url.path.endswith("/similar") and uses_model(request) \
                    else request.url.path if uses_model(request) else "other"
            metrics.observe(request.method, label, status, time.perf_counter() - t0)

    # ------------------------------------------------------------------ pages

    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    @app.get("/", include_in_schema=False)
    async def page():
        return FileResponse(STATIC / "index.html", media_type="text/html")

    @app.get("/health")
    async def health():
        """Alive, and what it serves."""
        stats = await read(lambda lib: lib.stats())
        return {"status": "ok", "version": __version__, "library": str(config.library), "tracks": stats.n_tracks,
                "generation": reader.stamp, "queue_depth": queue.depth}

    @app.get("/metrics", response_class=PlainTextResponse)
    async def prometheus():
        """Requests, latency histogram and queue depth, in the Prometheus text format."""
        return PlainTextResponse(metrics.text(queue), media_type="text/plain; version=0.0.4")

    @app.get("/stats")
    async def stats():
        """The library's size, model and index (``musichash stats --json``)."""
        return await read(_stats_json)

    # ----------------------------------------------------------------- search

    @app.post("/search")
    async def search(
        files: Annotated[list[UploadFile], File(description="One clip or several: any format the CLI decodes, or raw "
                                                             "float32 little-endian mono PCM with pcm_rate.")],
        top_k: int = Form(5, ge=1, le=100),
        pcm_rate: int | None = Form(None, ge=8000, le=192000, description="The uploads are raw float32 PCM at this rate."),
    ):
        """Which tracks the clips come from, and where (``musichash search --json``): one object for one
        clip, a list for several."""
        if len(files) > config.max_clips:
            raise ServiceError(f"{len(files)} clips in one request; send at most {config.max_clips}", 413)
        clips = [await anyio.to_thread.run_sync(_decode, f, pcm_rate, config, limiter=decoders) for f in files]
        results = await model(lambda lib: list(lib.search(clips, top_k=top_k)))
        out = [search_json(replace(r, query=c.name)) | {"duration_s": round(r.duration_s, 2)} for r, c in zip(results, clips)]
        return out[0] if len(out) == 1 else out

    # ----------------------------------------------------------------- tracks

    @app.get("/tracks")
    async def tracks(
        offset: int = Query(0, ge=0), limit: int = Query(50, ge=1, le=1000),
        q: str | None = Query(None, description="Only paths containing this text (case-insensitive)."),
        tag: str | None = Query(None, description="Only tracks with this tag at min_p or above."),
        min_p: float = Query(0.2, ge=0, le=1),
        status: str | None = Query(None, pattern="^(ok|error|pending)$"),
    ):
        """The library's tracks in id order, a page at a time (``musichash tracks --json``)."""

        def page(lib: Library):
            rows = lib.tracks(status=status)
            if q:
                rows = [t for t in rows if q.lower() in t.path.lower()]
            if tag:
                rows = [t for t in rows if _has_tag(lib, t, tag, min_p)]
            return {"total": len(rows), "offset": offset, "limit": limit,
                    "tracks": [_track_json(lib, t) for t in rows[offset:offset + limit]]}

        return await read(page)

    def _get(lib: Library, track_id: int):
        t = lib.store.get(track_id)
        if t is None:
            raise ServiceError(f"no track with id {track_id} in {lib.folder}; see GET /tracks", 404)
        return t

    def _seed(lib: Library, track_id: int) -> int:
        t = _get(lib, track_id)
        if t.status != "ok":
            raise ServiceError(f"track {track_id} has no codes to compare (it is {t.status}); pick an indexed track", 409)
        return track_id

    @app.get("/tracks/{track_id}")
    async def track(track_id: int):
        """One track."""
        return await read(lambda lib: _track_json(lib, _get(lib, track_id)))

    @app.get("/tracks/{track_id}/similar")
    async def similar(track_id: int, top_k: Annotated[int, Query(ge=1, le=1000)] = 10,
                      tag: Annotated[list[str] | None, Query()] = None,
                      exclude_tag: Annotated[list[str] | None, Query()] = None,
                      min_p: Annotated[float, Query(ge=0, le=1)] = 0.2):
        """Tracks that sound like this one, minus its duplicates (``musichash similar --json``)."""

        def run(lib: Library):
            _seed(lib, track_id)
            return similar_json(lib.similar(track_id, top_k=top_k, tags=tag or (), exclude_tags=exclude_tag or (),
                                            min_p=min_p))

        return await model(run)

    @app.post("/recommend")
    async def recommend(body: RecommendBody):
        """Tracks near all the seed tracks at once (``musichash recommend --seeds ... --json``)."""

        def run(lib: Library):
            for s in body.seeds:
                _seed(lib, s)
            return similar_json(lib.recommend(body.seeds, top_k=body.top_k, tags=body.tags,
                                              exclude_tags=body.exclude_tags, min_p=body.min_p))

        return await model(run)

    @app.get("/tracks/{track_id}/explain")
    async def explain(track_id: int, tag: Annotated[str, Query(min_length=1)],
                      tagger: Annotated[str | None, Query(alias="model")] = None,
                      start: Annotated[float, Query(ge=0)] = 0.0,
                      seconds: Annotated[float, Query(ge=1, le=60)] = 30.0,
                      method: Annotated[Literal["gradcam", "occlusion", "both"], Query()] = "gradcam",
                      fmt: Annotated[Literal["json", "png"], Query(alias="format")] = "json"):
        """Which parts of the track's mel made a tagger say ``tag`` (``musichash explain --tag --json``;
        ``format=png``: the heatmap). ``model``: a shipped tagger (default: the library's ``--tagger``)."""
        from musichash.service.explain import explain_track, png_bytes

        methods = METHODS if method == "both" else (method,)

        def run(lib: Library):
            t = _get(lib, track_id)
            if t.status != "ok":
                raise ServiceError(f"track {track_id} has no audio to explain (it is {t.status}); pick an indexed track", 409)
            return t, *explain_track(lib, t, tag, tagger, start, seconds, methods)

        t, e, name = await model(run)
        if fmt == "png":
            return Response(png_bytes(e, f"{Path(t.path).name}: evidence for '{tag}' ({name})", start),
                            media_type="image/png")
        return {"track_id": t.id, "tag": tag, "model": name, "start_s": start, **e.to_dict()}

    @app.post("/tracks/{track_id}/explain-match")
    async def explain_match_(
        track_id: int,
        files: Annotated[list[UploadFile], File(description="The clip (one), as for POST /search.")],
        pcm_rate: int | None = Form(None, ge=8000, le=192000, description="The upload is raw float32 PCM at this rate."),
        seconds: float = Form(30.0, ge=1, le=60),
        method: Literal["gradcam", "occlusion", "both"] = Form("gradcam"),
        fmt: Literal["json", "png"] = Form("json", alias="format"),
    ):
        """Why the library finds the clip in this track (``musichash explain FILE --match CLIP --json``;
        ``format=png``: the heatmap): attribution over the track's mel, for the segments the match aligned."""
        from musichash.search.explain_match import explain_match
        from musichash.service.explain import png_bytes

        if len(files) != 1:
            raise ServiceError(f"{len(files)} clips: send the one clip the match is for", 422)
        clip = await anyio.to_thread.run_sync(_decode, files[0], pcm_rate, config, limiter=decoders)
        methods = METHODS if method == "both" else (method,)

        def run(lib: Library):
            t = _get(lib, track_id)
            if t.status != "ok":
                raise ServiceError(f"track {track_id} has no audio to explain (it is {t.status}); pick an indexed track", 409)
            return explain_match(lib, t.path, clip, seconds=seconds, methods=methods)

        m = await model(run)
        if fmt == "png":
            return Response(png_bytes(m.explanation, f"{Path(m.path).name}: why {clip.name} matches here", m.start_s),
                            media_type="image/png")
        return m.to_dict()

    @app.get("/tracks/{track_id}/audio")
    async def audio(track_id: int):
        """The track's file, for the page's player (range requests work). Only files that are tracks
        of the library are served, found by id: no part of the request is ever a path."""
        t = await read(lambda lib: _get(lib, track_id))
        if t.status != "ok":
            raise ServiceError(f"track {track_id} is not playable: it is {t.status}" + (f" ({t.error})" if t.error else ""), 404)
        try:
            st = os.stat(t.path)
        except OSError:
            raise ServiceError(f"track {track_id}: its file {t.path} is gone; restore it or `musichash remove` it", 410) from None
        if not os.path.isfile(t.path) or st.st_size != t.size:
            # a file swapped for another (or a link to one) since it was indexed is not the track
            raise ServiceError(f"track {track_id}: {t.path} changed since it was indexed; run musichash index on it", 409)
        return FileResponse(t.path, media_type=MEDIA_TYPES.get(t.format or "", "application/octet-stream"),
                            content_disposition_type="inline", filename=Path(t.path).name)

    @app.get("/dedup")
    async def dedup(verify: bool = True):
        """Groups of tracks that are the same recording, with spans (``musichash dedup --json``);
        kept until the library changes."""
        key = f"{reader.stamp}:{verify}"
        if key not in dedup_cache:
            groups = await model(lambda lib: dedup_json(lib.dedup(verify=verify)))
            dedup_cache.clear()
            dedup_cache[key] = groups
        return dedup_cache[key]

    # ----------------------------------------------------------------- writes

    @app.post("/index", status_code=202)
    async def index(body: IndexBody, authorization: str | None = Header(None)):
        """Index server-side paths under the --allow-root folders, as a background job (admin)."""
        admin(authorization)
        real = []
        for p in body.paths:
            r = under_roots(p, config.allow_roots) if config.allow_roots else None
            if r is None:
                raise ServiceError(f"{p}: not under an --allow-root folder of this server; only those can be indexed", 403)
            real.append(str(r))

        def run(progress) -> dict[str, Any]:
            return run_write("index", config.library, config.db_url, config.device,
                             {"paths": real, "prune": body.prune}, progress)

        job = jobs.start(real, run)
        return JSONResponse(job.json(), status_code=202, headers={"Location": f"/jobs/{job.id}"})

    @app.get("/jobs/{job_id}")
    async def job(job_id: int):
        """A background index run: state, progress, and its report when done."""
        j = jobs.get(job_id)
        if j is None:
            raise ServiceError(f"no job {job_id} on this server (jobs are kept until it stops)", 404)
        return j.json()

    @app.delete("/tracks/{track_id}")
    async def delete(track_id: int, authorization: str | None = Header(None)):
        """Drop a track from the library (admin); its file is not touched."""
        admin(authorization)
        t = await read(lambda lib: _get(lib, track_id))

        def run() -> dict[str, Any]:
            with jobs.writer:
                return run_write("remove", config.library, config.db_url, "cpu", {"track_id": t.id})

        return await run_in_threadpool(run)

    return app


def _decode(upload: UploadFile, pcm_rate: int | None, config: ServeConfig) -> Clip:
    """An upload as a 16 kHz clip, checked by decoding it (never by its name or declared type)."""
    name = Path(upload.filename or "upload").name
    if pcm_rate is not None:
        raw = upload.file.read()
        if len(raw) % 4:
            raise ServiceError(f"{name}: raw PCM must be float32 samples (a multiple of 4 bytes), got {len(raw)} bytes")
        wave = np.frombuffer(raw, "<f4").astype(np.float32)
        if not np.isfinite(wave).all():
            raise ServiceError(f"{name}: raw PCM holds NaN or infinite samples")
        if pcm_rate != SAMPLE_RATE:
            import soxr

            wave = soxr.resample(wave, pcm_rate, SAMPLE_RATE).astype(np.float32)
    else:
        fd, tmp = tempfile.mkstemp(prefix="musichash-upload-")
        try:
            with os.fdopen(fd, "wb") as f:
                while chunk := upload.file.read(1 << 20):
                    f.write(chunk)
            # a little past the limit, so that a clip over it is told apart from one just at it
            wave = load_audio(tmp, duration_s=config.max_clip_s + 1.0)
        except AudioError as e:
            raise ServiceError(f"{name}: {e.reason}") from None
        finally:
            os.unlink(tmp)
    if len(wave) > config.max_clip_s * SAMPLE_RATE + 1:
        raise ServiceError(f"{name}: longer than {config.max_clip_s:g} s; send a shorter clip "
                           f"(the limit is musichash serve --max-clip-s)", 413)
    return Clip(name, wave)
