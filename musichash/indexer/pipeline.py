"""Indexing: scan folders, decide what needs work, decode in worker processes, encode, store.

Decisions per file (cheapest first):

- same path, size and mtime as an 'ok' or 'error' row: unchanged, skipped, once the
  'ok' row's stored codes pass their checksum (``LibraryStore.codes_intact``); damaged
  ones are computed again, as are those of a touched, moved or copied file;
- else its bytes are hashed (sha256): same bytes as the row at its path
  (a touch) or as an 'ok' track whose file is gone (a move or rename): the
  row is pointed at the file, codes kept; same bytes as an 'ok' track whose
  file is still there: an exact copy, noted, and its codes are copied;
- else decoded (worker processes: decode, resample, log-mel, the track's
  chroma, ``musichash.features.chroma``, and its sketch for dedup,
  ``musichash.features.spectra``) and encoded (main process: the
  model, batched over each track's windows).

Every track is committed on its own (``LibraryStore.put_track`` is crash
safe), so an interrupted run keeps what it finished and the next run
completes the rest. Bad files are recorded with their reason and the run goes
on.
"""

from __future__ import annotations

import collections
import contextlib
import hashlib
import os
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import Future, ProcessPoolExecutor, ThreadPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from multiprocessing import get_context
from pathlib import Path

import numpy as np

from musichash.errors import MusichashError
from musichash.features import chroma, spectra
from musichash.features.audio import (
    AudioError,
    audio_info,
    iter_audio_blocks,
    iter_mel_blocks,
)
from musichash.indexer.store import LibraryStore, Track, TrackRecord
from musichash.models.encoder import LIBRARY_HOP, CodeModel

#: file name endings scanned in folders (files named explicitly are always tried)
AUDIO_EXTENSIONS = frozenset(
    ".wav .flac .ogg .oga .opus .mp3 .m4a .aac .mp4 .wma .aif .aiff .aifc .au .caf .w64 .wv .ape .mka .webm".split()
)


class IndexingError(MusichashError):
    """The indexing run could not go on (the files done so far are kept)."""


@dataclass(frozen=True)
class FailedFile:
    path: str
    reason: str


@dataclass(frozen=True)
class IndexReport:
    """What one ``index`` run did. ``audio_s``: seconds of audio decoded and encoded."""

    added: tuple[str, ...] = ()
    updated: tuple[str, ...] = ()
    unchanged: int = 0
    moved: tuple[tuple[str, str], ...] = ()  # (old path, new path)
    copies: tuple[tuple[str, str], ...] = ()  # (path, path of the identical file already indexed)
    failed: tuple[FailedFile, ...] = ()
    pruned: tuple[str, ...] = ()
    audio_s: float = 0.0
    seconds: float = 0.0
    #: paths whose stored codes were damaged (failed their checksum) and were computed again
    damaged: tuple[str, ...] = ()


class Progress:
    """Hooks for a progress display; the default does nothing."""

    def start(self, n_files: int, total_s: float) -> None:
        """``n_files`` files, ``total_s`` seconds of audio (from the headers) are about to be encoded."""

    def advance(self, path: str, seconds: float) -> None:
        """One file is done (or failed); ``seconds`` of its audio counted."""


@dataclass(frozen=True)
class Coded:
    """One file decoded and encoded, ready to store (``store.put_tracks`` takes its arrays)."""

    fmt: str
    duration_s: float
    tags: tuple[float, ...]
    track_code: np.ndarray  # uint8 [bits/8]
    segment_codes: np.ndarray  # uint8 [n, bits/8]
    segment_times: np.ndarray  # float32 [n]
    chroma: np.ndarray  # uint8 [m], ``features.chroma.pack``
    sketch: np.ndarray | None = None  # uint8 [f, bands], ``features.spectra.sketch`` (dedup's audio check)


#: How the files to compute are decoded and encoded: called with the jobs (``job[0]`` is the path),
#: yields batches of (job number, ``Coded`` or the reason the file cannot be used), in any order;
#: each batch is committed in one ``put_tracks``. ``local_encoder`` here, ``musichash.cluster`` on Ray.
#: An encoder with a ``writing(store)`` context manager writes the codes files itself while it runs
#: (it yields ``put_tracks``' ``write``: ``LibraryStore.codes_written_elsewhere``).
Encoder = Callable[[list], Iterable[list[tuple[int, "Coded | str"]]]]


@dataclass
class _Plan:
    # path, hash, stat, seconds from the header, whether the path already has a row
    compute: list[tuple[Path, str, os.stat_result, float, bool]] = field(default_factory=list)
    unchanged: int = 0
    moved: list[tuple[str, str]] = field(default_factory=list)
    copies: list[tuple[str, str]] = field(default_factory=list)
    copy_later: list[tuple[Path, str, os.stat_result, Path]] = field(default_factory=list)  # of a file computed now
    failed: list[FailedFile] = field(default_factory=list)
    damaged: set[str] = field(default_factory=set)  # paths computed again because their codes were damaged


def scan(paths: Iterable[str | os.PathLike]) -> tuple[list[Path], list[FailedFile]]:
    """Audio files under ``paths`` (recursive, sorted, hidden entries skipped), and what was skipped:
    paths that do not exist, folders that cannot be read, and links to folders (not followed, so a
    link loop or a second way into the same music never doubles it)."""
    files: dict[Path, None] = {}
    missing = []

    def unreadable(e: OSError) -> None:
        missing.append(FailedFile(str(e.filename), f"cannot read this folder ({e.strerror}); its files were skipped"))

    for p in map(Path, paths):
        if p.is_dir():
            for root, dirs, names in os.walk(p, onerror=unreadable):
                for d in sorted(dirs):
                    if not d.startswith(".") and os.path.islink(os.path.join(root, d)):
                        missing.append(FailedFile(os.path.join(root, d), "a link to a folder, not followed; "
                                                  f"give its target ({os.path.realpath(os.path.join(root, d))}) itself"))
                dirs[:] = sorted(d for d in dirs if not d.startswith("."))
                for n in sorted(names):
                    if not n.startswith(".") and Path(n).suffix.lower() in AUDIO_EXTENSIONS:
                        files[Path(root, n).absolute()] = None
        elif p.exists():
            files[p.absolute()] = None
        else:
            missing.append(FailedFile(str(p), "no such file or folder; check the path"))
    return list(files), missing


def file_hash(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def index_paths(
    store: LibraryStore,
    model: CodeModel | None,
    paths: Sequence[str | os.PathLike],
    *,
    prune: bool = False,
    workers: int | None = None,
    progress: Progress | None = None,
    encoder: Encoder | None = None,
    mel_device: str | None = None,
    tagger: Callable[[np.ndarray], np.ndarray] | None = None,
) -> IndexReport:
    """Add or update the audio files under ``paths``; see the module docstring.

    ``encoder``: how the files are decoded and encoded (default ``local_encoder(model, workers, mel_device)``).
    ``mel_device``: where the log-mel is computed. None: in the decoding workers on their CPU, but
    on the model's device when that is a GPU (``decode_wave``: the workers hand over 16 kHz audio,
    the main process makes mel and sketch there; CUDA's mel equals the CPU's in all but ~3e-4 of
    its values, features/audio.py). A device name: always in the main process, on that device.

    ``tagger``: the tracks' tags from ``tagger(mel)`` instead of the code model's tag head
    (``indexer.tag_source``).
    """
    t0 = time.perf_counter()
    progress = progress or Progress()
    files, failed = scan(paths)
    plan = _plan(store, files)
    plan.failed[:0] = failed
    progress.start(len(plan.compute), sum(c[3] for c in plan.compute))
    added, updated, audio_s = [], [], 0.0
    if encoder is None:
        if mel_device is None and model.device.type == "cuda":
            mel_device = str(model.device)
        if workers is None and model.device.type == "cuda":
            workers = default_workers(gpu=True)
        encoder = local_encoder(model, workers, mel_device, tagger, store.segment_hop)
    done: set[int] = set()  # a batch an encoder delivers twice (a retried task) is stored once
    # an encoder may bring writers of its own for the codes files, one a shard (``cluster.index``)
    writing = getattr(encoder, "writing", None) if plan.compute else None
    with writing(store) if writing is not None else contextlib.nullcontext() as write:
        for batch in encoder(plan.compute):
            batch = [(i, r) for i, r in dict(batch).items() if i not in done]
            done.update(i for i, _ in batch)
            for i, result in batch:
                if isinstance(result, str):
                    path, digest, st, header_s, _ = plan.compute[i]
                    store.put_error(str(path), digest, st.st_size, st.st_mtime, result)
                    plan.failed.append(FailedFile(str(path), result))
                    progress.advance(str(path), header_s)
            coded = [(plan.compute[i], r) for i, r in batch if not isinstance(r, str)]
            store.put_tracks([
                (TrackRecord(str(path), digest, st.st_size, st.st_mtime, c.duration_s, c.fmt, c.tags),
                 c.track_code, c.segment_codes, c.segment_times, c.chroma, c.sketch)
                for (path, digest, st, _, _), c in coded
            ], write=write)
            for (path, _, _, header_s, existed), c in coded:
                (updated if existed else added).append(str(path))
                audio_s += c.duration_s
                progress.advance(str(path), header_s)
    for path, digest, st, original in plan.copy_later:
        source = store.find_by_path(str(original))
        if source is not None and source.status == "ok":
            _copy_track(store, source, path, digest, st)
            plan.copies.append((str(path), str(original)))
        else:  # the original failed: so does its copy, for the same reason
            reason = source.error if source is not None and source.error else "could not be indexed"
            store.put_error(str(path), digest, st.st_size, st.st_mtime, reason)
            plan.failed.append(FailedFile(str(path), reason))
    pruned = _prune(store) if prune else []
    return IndexReport(
        added=tuple(added),
        updated=tuple(updated),
        unchanged=plan.unchanged,
        moved=tuple(plan.moved),
        copies=tuple(plan.copies),
        failed=tuple(plan.failed),
        pruned=tuple(pruned),
        audio_s=audio_s,
        seconds=time.perf_counter() - t0,
        damaged=tuple(p for p in [*updated, *(c[0] for c in plan.copies)] if p in plan.damaged),
    )


def _hash_threads() -> int:
    """Threads hashing files (hashlib lets go of the GIL): on 16 cores sha256 alone took 1.3 s of a
    21 s indexing run before any decoding could start (issue 23)."""
    return max(1, min(8, os.cpu_count() or 1))


def _hash_or_error(path: Path) -> str | OSError:
    try:
        return file_hash(path)
    except OSError as e:
        return e


def _plan(store: LibraryStore, files: list[Path]) -> _Plan:
    plan = _Plan()
    planned: dict[str, Path] = {}  # hash -> first file with these bytes in this run
    scanned = {str(f) for f in files}
    to_hash: list[tuple[Path, os.stat_result, Track | None, bool]] = []
    for path in files:
        try:
            st = path.stat()
        except OSError as e:
            plan.failed.append(FailedFile(str(path), f"cannot read it ({e.strerror}); check its permissions"))
            continue
        row = store.find_by_path(str(path))
        damaged = False
        if row is not None and row.status == "ok" and not store.codes_intact(row.id):
            damaged = True  # whatever the file did since, its codes are computed again
            plan.damaged.add(str(path))
        elif row is not None and row.status != "pending" and (row.size, row.mtime) == (st.st_size, st.st_mtime):
            if row.status == "error":  # still the same bad file: list it again, don't retry
                plan.failed.append(FailedFile(str(path), row.error or "could not be indexed"))
            else:
                plan.unchanged += 1
            continue
        to_hash.append((path, st, row, damaged))
    with ThreadPoolExecutor(_hash_threads()) as ex:
        digests = list(ex.map(_hash_or_error, [t[0] for t in to_hash]))
    for (path, st, row, damaged), digest in zip(to_hash, digests):
        if isinstance(digest, OSError):
            plan.failed.append(FailedFile(str(path), f"cannot read it ({digest.strerror}); check its permissions"))
            continue
        if row is not None and row.status == "ok" and row.content_hash == digest and not damaged:
            store.update_file(row.id, str(path), st.st_size, st.st_mtime)  # touched, same bytes
            plan.unchanged += 1
            continue
        same = [t for t in store.find_by_hash(digest)
                if t.status == "ok" and t.path != str(path) and store.codes_intact(t.id)]
        gone = [t for t in same if t.path not in scanned and not os.path.exists(t.path)]
        if gone and row is None:
            store.update_file(gone[0].id, str(path), st.st_size, st.st_mtime)
            plan.moved.append((gone[0].path, str(path)))
            continue
        if same:
            _copy_track(store, same[0], path, digest, st)
            plan.copies.append((str(path), same[0].path))
            continue
        if digest in planned:
            plan.copy_later.append((path, digest, st, planned[digest]))
            continue
        planned[digest] = path
        try:
            header_s = audio_info(path).duration_s
        except AudioError:
            header_s = 0.0  # the worker reports the reason
        plan.compute.append((path, digest, st, header_s, row is not None))
    return plan


def _copy_track(store: LibraryStore, source: Track, path: Path, digest: str, st: os.stat_result) -> None:
    codes = store.get_codes(source.id)
    record = TrackRecord(str(path), digest, st.st_size, st.st_mtime, source.duration_s, source.format, source.tags)
    store.put_track(record, codes.track_code, codes.segment_codes, codes.segment_times, codes.chroma,
                    store.get_sketch(source.id))


def _prune(store: LibraryStore) -> list[str]:
    gone = [t for t in store.tracks() if not os.path.exists(t.path)]
    store.remove(t.id for t in gone)
    return [t.path for t in gone]


# ------------------------------------------------------------------ decoding


Decoded = tuple[np.ndarray, str, np.ndarray, np.ndarray]


def decode_mel(path: str | os.PathLike) -> Decoded | str:
    """Worker job: ``(log-mel float32 [T, 96], format, packed chroma uint8 [m], sketch uint8 [f, bands])``,
    or the reason the file cannot be used."""
    try:
        fmt = audio_info(path).format
        harmony = chroma.TrackChroma()
        mel = np.concatenate(list(iter_mel_blocks(harmony.tap(iter_audio_blocks(path)))))
        return mel, fmt, chroma.pack(harmony.bits()), spectra.sketch(mel)
    except AudioError as e:
        return e.reason
    except Exception as e:  # a decoder crash must cost one file, not the run
        return f"cannot decode it ({type(e).__name__}: {e}); convert it to flac or wav"


def decode_wave(path: str | os.PathLike) -> Decoded | str:
    """Worker job when the mel is made elsewhere (on a GPU): as ``decode_mel``, but the 16 kHz audio
    float32 [n] in place of the mel, and no sketch (it is the mel's)."""
    try:
        fmt = audio_info(path).format
        harmony = chroma.TrackChroma()
        wave = np.concatenate([np.zeros(0, np.float32), *harmony.tap(iter_audio_blocks(path))])
        return wave, fmt, chroma.pack(harmony.bits()), None
    except AudioError as e:
        return e.reason
    except Exception as e:  # a decoder crash must cost one file, not the run
        return f"cannot decode it ({type(e).__name__}: {e}); convert it to flac or wav"


def encode_decoded(model: CodeModel, decoded: Decoded | str, mel_device: str | None = None,
                   tagger: Callable[[np.ndarray], np.ndarray] | None = None, hop: int = LIBRARY_HOP) -> Coded | str:
    """``decode_mel``'s answer (``decode_wave``'s when ``mel_device`` is set: the mel and sketch are
    then made here, on that device) encoded by ``model`` with segments every ``hop`` frames (the
    library's), tagged by ``tagger`` when the library has one (``indexer.tag_source``) else by the
    model's tag head; the reason passed on when it is one."""
    if isinstance(decoded, str):
        return decoded
    mel, fmt, harmony, sketch = decoded
    if mel_device is not None:  # ``mel`` is the 16 kHz audio (``decode_wave``)
        mel = np.concatenate(list(iter_mel_blocks([mel], device=mel_device)))
        sketch = spectra.sketch(mel)
    enc = model.encode(mel, hop)
    tags = enc.tags if tagger is None else tagger(np.asarray(mel))
    return Coded(fmt, enc.duration_s, tuple(float(p) for p in tags), enc.track_code, enc.codes, enc.times,
                 harmony, sketch)


def local_encoder(model: CodeModel, workers: int | None, mel_device: str | None = None,
                  tagger: Callable[[np.ndarray], np.ndarray] | None = None, hop: int = LIBRARY_HOP) -> Encoder:
    """This machine: decoding in ``workers`` processes (``_decoded``), the model here; one file a batch,
    so every track is committed as soon as it is encoded. ``mel_device``, ``tagger``: as ``index_paths``';
    ``hop``: the library's segment hop."""
    job = decode_mel if mel_device is None else decode_wave

    def run(jobs: list) -> Iterable[list[tuple[int, Coded | str]]]:
        for i, decoded in enumerate(_decoded(jobs, workers, job)):
            yield [(i, encode_decoded(model, decoded, mel_device, tagger, hop))]

    return run


def _init_worker() -> None:
    import torch

    torch.set_num_threads(1)  # the main process's model gets the cores


def default_workers(gpu: bool = False) -> int:
    """Decoding processes: none on 2 cores or fewer, else one per 4 cores (at most 4); with the model
    on a GPU (``gpu``), all cores but one: decoding, resampling and chroma are then the CPU's
    whole share of the work (on an H200 the model alone ran at 6,780x real time, issue 23; how
    far the cores' decoding caps indexing there is not yet measured).

    Decoding, resampling and the mel took about a sixth of the CPU time the
    float32 VGG backbone did (benchmarks/HISTORY.md), so one worker fed a CPU model
    on up to ~16 cores; with bfloat16 convolutions they take about two thirds of the
    model's time on 2 cores, so on larger machines more workers may pay (not measured:
    no such machine here). On 2 cores a worker only competes with the model's
    threads: measured 30x real time with one worker against 51x without
    (float32), and no better with bfloat16 convolutions (121-146x with one,
    123-143x without, three alternating rounds of ``bench_index.py``).
    """
    cpus = os.cpu_count() or 1
    if gpu:
        return max(1, cpus - 1)
    return 0 if cpus <= 2 else max(1, min(4, cpus // 4))


def _decoded(jobs: list, workers: int | None, decode=None) -> Iterable[Decoded | str]:
    """Decode jobs in order (``decode``: ``decode_mel`` or ``decode_wave``), at most ``workers + 1``
    ahead of the consumer (bounded memory)."""
    decode = decode_mel if decode is None else decode
    workers = default_workers() if workers is None else workers
    if workers <= 0 or len(jobs) <= 1:
        for job in jobs:
            yield decode(job[0])
        return
    pending: collections.deque[Future] = collections.deque()
    import torch

    threads = torch.get_num_threads()
    # the workers have their cores; the model's threads should not compete for them
    torch.set_num_threads(max(1, min(threads, (os.cpu_count() or 1) - workers)))
    # spawn: the parent has torch's thread pools running, which fork does not copy safely
    try:
        with ProcessPoolExecutor(workers, mp_context=get_context("spawn"), initializer=_init_worker) as ex:
            try:
                for job in jobs:
                    pending.append(ex.submit(decode, str(job[0])))
                    if len(pending) > workers:
                        yield pending.popleft().result()
                while pending:
                    yield pending.popleft().result()
            finally:
                for f in pending:
                    f.cancel()
    except BrokenProcessPool:
        raise IndexingError(
            "a decoding worker process died (out of memory, or killed); what was indexed so far is kept: "
            "run the same command again, with --workers 0 to decode in the main process"
        ) from None
    finally:
        torch.set_num_threads(threads)
