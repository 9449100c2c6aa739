"""The Python API: a music library folder you index, query, deduplicate and mine for recommendations.

    from musichash import Library

    with Library.open("~/music-index", write=True) as lib:
        report = lib.index(["~/Music"])
    with Library.open("~/music-index") as lib:
        for result in lib.search(["clip.mp3"]):
            print(result.match, result.results[:1])

Each method mirrors a CLI command and returns typed records
(``musichash.search.results``, ``musichash.indexer.pipeline.IndexReport``,
``musichash.indexer.store.LibraryStats``).
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np

from musichash.errors import MusichashError
from musichash.features.audio import AudioError, AudioTooShortError
from musichash.indexer import shards as sharding
from musichash.indexer import tag_source
from musichash.indexer.copy import CopyReport, copy_tracks
from musichash.indexer.pipeline import IndexReport, Progress, index_paths
from musichash.indexer.records import DEFAULT_SEGMENT_HOP, SEGMENT_HOP_ALIGN
from musichash.indexer.store import (
    CODES_FILE,
    DamagedCodesError,
    EmptyLibraryError,
    LibraryError,
    LibraryStats,
    LibraryStore,
    ModelMismatchError,
    Problem,
    Track,
)
from musichash.models import DEFAULT_CODE_MODEL, ModelError, get_spec, tag_names
from musichash.models.encoder import Clip, CodeModel, Encoded, encode_clip
from musichash.models.registry import weights_digest
from musichash.models.tagging import TagScore
from musichash.search import cache, dedup, query, similar
from musichash.search.cache import SearchIndex, load_or_build, read_config, write_config
from musichash.search.faiss_index import IndexConfig
from musichash.search.results import DuplicateGroup, SearchResult, SimilarResult
from musichash.search.similar import DEFAULT_TAG_P
from musichash.search.thresholds import Thresholds

__all__ = ["CheckReport", "Clip", "Library", "QueryError", "default_folder"]

TAGS_SHOWN = 5


class QueryError(MusichashError):
    """A query (clip, seed or tag) cannot be used as given."""


def _user(path: str | os.PathLike) -> Path:
    """A path as a user writes it, ``~`` included (the README's own examples use it)."""
    return Path(path).expanduser()


@dataclass(frozen=True)
class CheckReport:
    """What ``Library.check`` found (and, with ``repair``, did)."""

    folder: Path
    tracks: int  # 'ok' tracks whose codes were read and checked
    unchecked: int  # of them, without a checksum yet (written before checksums; the next write-open adds one)
    pending: int  # tracks waiting to be indexed again
    index: str  # the FAISS cache: 'ok', 'missing' or 'stale' (built on the next search), or 'damaged'
    problems: tuple[Problem, ...]
    repaired: tuple[str, ...] = ()  # what ``repair`` did, a line each

    @property
    def healthy(self) -> bool:
        return not self.problems


def default_folder() -> Path:
    """``$MUSICHASH_LIBRARY``, else ``$XDG_DATA_HOME/musichash`` (``~/.local/share/musichash``)."""
    env = os.environ.get("MUSICHASH_LIBRARY")
    if env:
        return Path(env).expanduser()
    data = os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share"
    return Path(data) / "musichash"


def _check_digest(folder: Path, store: LibraryStore) -> None:
    """Refuse a library whose codes other weights of its code model made (retrained under the same name).

    Libraries record the digest of their model's weights since CRNNH models got
    a segment head; one without it and a model that has one holds codes of the
    older single head. A model whose checkpoint has vanished is not checked
    here: ``stats`` and ``remove`` still work, and encoding says what is missing.
    """
    try:
        spec = get_spec(store.code_model)
        current = weights_digest(spec)
    except ModelError:
        return
    fix = "index the music again into a new library: musichash index --library NEW PATH..."
    if store.code_digest is None and spec.segment_weights is not None:
        raise ModelMismatchError(
            f"{folder}: its codes come from an earlier {store.code_model}, from before its segment codes had their own head; {fix}"
        )
    if store.code_digest is not None and store.code_digest != current:
        raise ModelMismatchError(
            f"{folder}: its codes were made by other weights of {store.code_model} (digest {store.code_digest}) "
            f"than this musichash's ({current}); {fix}"
        )


class Library:
    """A library folder (see DESIGN.md). Open it with :meth:`open`, preferably as a context manager."""

    def __init__(self, store: LibraryStore, device: str = "auto", precision: str = "auto"):
        self.store = store
        self.device = device
        self.precision = precision
        self._model: CodeModel | None = None
        self._index: SearchIndex | None = None
        self._vocabulary: tuple[str, ...] | None = None
        self._tagger: tag_source.TaggerTags | None | bool = False  # False: not looked up yet

    @classmethod
    def open(
        cls,
        folder: str | os.PathLike | None = None,
        *,
        db_url: str | None = None,
        write: bool = False,
        code_model: str | None = None,
        device: str = "auto",
        precision: str = "auto",
        shards: int | None = None,
        tagger: str | None = None,
        segment_hop: int | None = None,
    ) -> Library:
        """Open (``write=True``: create if needed, and lock) the library in ``folder``.

        ``shards``: how many codes files (and segment indexes) a new library spreads its codes
        over (``musichash.indexer.shards``); an existing library keeps its own.

        ``precision``: of the code model's convolutions (``musichash.models.registry.resolve_precision``:
        ``auto`` is bfloat16 on CPUs with native bfloat16, float32 elsewhere).

        ``code_model`` picks the model of a new library (default
        ``DEFAULT_CODE_MODEL``); for an existing one it must match, and so must
        the digest of its weights (codes of retrained weights are never mixed).

        ``tagger`` (``write=True``): a trained tagger (a shipped one's name, or a checkpoint of
        ``musichash train-tagger``) whose tags the library's tracks get instead of the code model's
        tag head's, recorded in the library (``indexer.tag_source``); only for a library without tracks.

        ``segment_hop``: frames (16 ms) between the segment windows of a new library (default
        ``DEFAULT_SEGMENT_HOP``), a multiple of 16; for an existing one it must match what it records
        (a library from before the setting records none and has 80).
        """
        folder = Path(folder).expanduser() if folder is not None else default_folder()
        if shards is not None:
            sharding.check_count(shards)
        if tagger is not None and write:
            tag_source.check(tagger)
        if segment_hop is not None and (segment_hop <= 0 or segment_hop % SEGMENT_HOP_ALIGN):
            raise LibraryError(f"a segment hop of {segment_hop} frames: give a positive multiple of "
                               f"{SEGMENT_HOP_ALIGN} (the default is {DEFAULT_SEGMENT_HOP})")
        if code_model is not None:
            spec = get_spec(code_model)
            if spec.kind != "hash":
                raise LibraryError(f"{code_model} is a {spec.kind} model; a library needs a code model (kind 'hash')")
            code_model = spec.name  # a checkpoint path is recorded absolute
        elif write and not (folder / "library.db").exists() and db_url is None:
            code_model = DEFAULT_CODE_MODEL

        def open_store(name: str | None) -> LibraryStore:
            spec = get_spec(name) if name is not None else None
            return LibraryStore.open(
                folder, db_url, write=write, code_model=name, bits=spec.bits if spec else None,
                code_digest=weights_digest(spec) if spec else None, shards=shards, segment_hop=segment_hop,
            )

        try:
            store = open_store(code_model)
        except ValueError:  # an empty external database and no model named
            store = open_store(DEFAULT_CODE_MODEL)
        try:
            _check_digest(folder, store)
            if tagger is not None:
                if not write:
                    raise LibraryError(f"{folder}: a tagger is chosen when indexing: musichash index PATH... --tagger {tagger}")
                tag_source.choose(store._engine, folder, tagger)
        except BaseException:
            store.close()
            raise
        return cls(store, device, precision)

    def close(self) -> None:
        self.store.close()

    def __enter__(self) -> Library:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @property
    def folder(self) -> Path:
        return self.store.folder

    @property
    def code_model(self) -> str:
        return self.store.code_model

    @property
    def model(self) -> CodeModel:
        if self._model is None:
            self._model = CodeModel(self.code_model, self.device, self.precision)
        return self._model

    @property
    def vocabulary(self) -> tuple[str, ...]:
        # once: a checkpoint's spec and the tag list are read from files, and every result shows tags
        if self._vocabulary is None:
            name, _ = tag_source.stored(self.store._engine)
            if name is not None:  # names only: a search need not load the tagger's weights
                self._vocabulary = tag_source.names(name)
            else:
                self._vocabulary = tag_names(get_spec(get_spec(self.code_model).backbone).vocabulary)
        return self._vocabulary

    @property
    def tagger(self) -> str | None:
        """The trained tagger whose tags the tracks carry (None: the code model's tag head)."""
        return tag_source.stored(self.store._engine)[0]

    def _tag_source(self) -> tag_source.TaggerTags | None:
        if self._tagger is False:
            from musichash.devices import torch_device

            self._tagger = tag_source.load(self.store._engine, self.folder, torch_device(self.device))
        return self._tagger

    def search_index(self, *, force: bool = False) -> SearchIndex:
        """The FAISS index of the library's codes, loaded from ``index/`` or rebuilt if stale;
        tracks whose codes the store has found damaged are left out."""
        if force or self._index is None or self._index.stamp != self.store.stamp():
            # the device as asked: a flat index goes to FAISS's GPU, or torch's (devices.index_device)
            self._index = load_or_build(self.store, self.device, force=force)
        if not self.store.damaged <= self._index.left_out:
            self._index = self._index.without(self.store.damaged)
        return self._index

    @property
    def damaged(self) -> list[int]:
        """Tracks left out of searches so far because their stored codes are damaged or missing
        (``musichash check --repair`` redoes them)."""
        left_out = self._index.left_out if self._index is not None else frozenset()
        return sorted(self.store.damaged | left_out)

    # ------------------------------------------------------------------ writes

    def index(
        self,
        paths: Sequence[str | os.PathLike],
        *,
        prune: bool = False,
        workers: int | None = None,
        progress: Progress | None = None,
        cluster: str | None = None,
    ) -> IndexReport:
        """Add or update the audio under ``paths`` (see ``musichash.indexer.pipeline``).

        ``cluster``: decode and encode on the Ray cluster at this address ('' : on this machine; see
        ``musichash.cluster.index``: the rows are written from here, the codes files by a writer actor each).
        """
        tagger = self._tag_source()
        encoder = None
        if cluster is not None:
            from musichash.cluster.index import RayEncoder

            encoder = RayEncoder(self.code_model, address=cluster or None, precision=self.precision,
                                 tagger=None if tagger is None else tagger.name, hop=self.store.segment_hop)
        return index_paths(self.store, None if encoder else self.model, [_user(p) for p in paths], prune=prune,
                           workers=workers, progress=progress, encoder=encoder, tagger=tagger)

    def remove(self, paths: Iterable[str | os.PathLike]) -> list[str]:
        """Drop tracks by file path, or every track under a folder; returns the paths removed."""
        gone: dict[int, str] = {}
        for p in paths:
            hit = self.tracks(p)
            if not hit:
                raise QueryError(f"{p}: no track of the library is at or under this path; see `musichash tracks`")
            gone.update((t.id, t.path) for t in hit)
        self.store.remove(gone)
        return sorted(gone.values())

    def copy_to(self, folder: str | os.PathLike, *, shards: int | None = None, db_url: str | None = None,
                advance: Callable[[], None] | None = None) -> CopyReport:
        """Copy this library into the library at ``folder`` (made if new, with ``shards`` codes files),
        from the stored codes: no audio decoded, no model run (``indexer.copy``). Run again to
        complete a copy cut short."""
        folder = Path(folder).expanduser()
        if folder.resolve() == Path(self.folder).resolve():
            raise LibraryError(f"{folder}: that is this library; copy it into another folder")
        with LibraryStore.open(folder, db_url, write=True, code_model=self.store.code_model, bits=self.store.bits,
                               code_digest=self.store.code_digest, shards=shards,
                               segment_hop=self.store.segment_hop) as dst:
            tagger = self.tagger
            if tagger is not None:  # the tags copied are its: the copy keeps its name (and digest)
                tag_source.choose(dst._engine, folder, tagger)
            return copy_tracks(self.store, dst, advance)

    def reindex(self, index_type: str | None = None, **params) -> SearchIndex:
        """Rebuild the FAISS files from codes.h5, optionally with another index type or parameters."""
        if index_type is not None or params:
            old = read_config(self.folder, self.store.bits) or IndexConfig("flat", bits=self.store.bits)
            config = IndexConfig(**{**asdict(old), **({"kind": index_type} if index_type else {}), **params})
            write_config(self.folder, config)
        return self.search_index(force=True)

    def check(self, *, repair: bool = False, progress: Callable[[int, int], None] | None = None) -> CheckReport:
        """Verify the whole library (``musichash check``): the database, every 'ok' track's codes against
        their checksum, tracks left pending, and the FAISS cache's files against theirs.

        ``repair`` (the library opened for writing): tracks whose codes are damaged or missing are marked
        pending, every pending track whose file is there is indexed again, and a cache that is not
        current is rebuilt; then the library is checked again. progress(done, total) follows each pass
        over the tracks.
        """
        repaired = self._repair(progress) if repair else []
        problems = self.store.check_database()
        codes = self.store.check_codes(progress=progress)
        problems += codes.problems
        pending = self.store.tracks("pending")
        for t in pending:
            if os.path.exists(t.path):
                what = "waits to be indexed again (pending); `musichash index` or `musichash check --repair` does it"
            else:
                what = "waits to be indexed again (pending), but its file is gone; restore it, or `musichash remove` it"
            problems.append(Problem(str(self.folder), f"track {t.id} ({t.path}): {what}", t.id))
        found = cache.inspect(self.store)
        if found.state == "damaged":
            problems.append(Problem(found.where, f"damaged index cache ({found.what}); the next search or "
                                                 f"`musichash check --repair` rebuilds it"))
        return CheckReport(self.folder, codes.checked, codes.unchecked, len(pending), found.state, tuple(problems),
                           tuple(repaired))

    def _repair(self, progress: Callable[[int, int], None] | None) -> list[str]:
        done = []
        r = self.store.repair_report  # what opening for writing fixed
        if r.codes_set_aside:
            done.append(f"{self.folder / CODES_FILE} was damaged: kept as {r.codes_set_aside}; a new file holds "
                        f"the codes that could be read")
        if r.orphans_removed:
            done.append(f"{len(r.orphans_removed)} stray code groups removed")
        if r.marked_pending:
            done.append(f"{len(r.marked_pending)} tracks with missing or malformed codes marked to be redone")
        if r.checksums_added:
            done.append(f"{r.checksums_added} tracks written before checksums given one")
        bad = [p.track_id for p in self.store.check_codes(progress=progress).problems if p.track_id is not None]
        if bad:
            self.store.mark_pending(bad)
            done.append(f"{len(bad)} tracks with damaged or missing codes marked to be redone")
        todo = [t.path for t in self.store.tracks("pending") if os.path.exists(t.path)]
        if todo:
            report = self.index(todo)
            redone = len(report.added) + len(report.updated) + len(report.copies)
            done.append(f"{redone} tracks indexed again" + (f", {len(report.failed)} failed" if report.failed else ""))
        if cache.inspect(self.store).state != "ok":
            idx = self.search_index(force=True)
            done.append(f"index rebuilt ({idx.segments.kind}, {idx.segments.ntotal} segments, {idx.tracks.ntotal} tracks)")
        return done

    # ------------------------------------------------------------------- reads

    def stats(self, *, check: bool = False) -> LibraryStats:
        """Counts and sizes; ``check``: also look over codes.h5 for damage (``LibraryStats.problems``)."""
        return self.store.stats(check=check)

    def tracks(self, under: str | os.PathLike | None = None, *, status: str | None = None) -> list[Track]:
        """The library's tracks in id order (at or under the path ``under``, if given; of ``status``, if given)."""
        rows = self.store.tracks(status)
        if under is None:
            return rows
        target = str(_user(under).absolute())
        return [t for t in rows if t.path == target or t.path.startswith(target.rstrip(os.sep) + os.sep)]

    @property
    def thresholds(self) -> Thresholds:
        """The code model's decision thresholds (``search.thresholds``) for this library's segment hop, resolved once."""
        return Thresholds.of(self.code_model, self.store.segment_hop)

    def encode(
        self, clip: str | os.PathLike | Clip, hop: int | None = None, *, track: bool = True, harmony: bool = False
    ) -> Encoded:
        """Codes of a file or an in-memory clip (``models.encoder.encode_clip``)."""
        return encode_clip(self.model, clip, hop, track=track, harmony=harmony)

    def search(
        self,
        clips: Iterable[str | os.PathLike | Clip],
        *,
        top_k: int = 10,
        threshold: float | None = None,
        chroma_threshold: float | None = None,
        k: int = query.DEFAULT_K,
        batch: int = 16,
    ) -> Iterator[SearchResult]:
        """One result per clip, in order; a clip that cannot be used gets ``error`` set (``search.query``).

        ``threshold`` / ``chroma_threshold`` replace the model's (-1: no harmony check); ``k``: library
        segments fetched per query window; ``batch``: clips looked up together.
        """
        t = self.thresholds
        t = replace(t, match=t.match if threshold is None else threshold,
                    chroma=t.chroma if chroma_threshold is None else chroma_threshold)
        settings = query.Settings(top_k=top_k, k=k)
        self._searchable(self.search_index())  # before any clip is decoded
        clips = iter(clips)
        while chunk := [self._query(c) for c in itertools.islice(clips, batch)]:
            yield from self._search_batch(chunk, t, settings)

    def dedup(
        self,
        threshold: float | None = None,
        *,
        verify: bool = True,
        progress: Callable[[int, int], None] | None = None,
    ) -> list[DuplicateGroup]:
        """Groups of tracks that are the same recording, largest first (``search.dedup``).

        verify: each pair the codes align is checked on the two files' audio; progress(done, total)
        follows those checks.
        """
        threshold = self.thresholds.dedup if threshold is None else threshold
        return dedup.find_groups(self.search_index(), self.store, threshold, verify=verify, progress=progress)

    def similar(
        self,
        seed: str | os.PathLike | int,
        *,
        top_k: int = 10,
        tags: Sequence[str] = (),
        exclude_tags: Sequence[str] = (),
        min_p: float = DEFAULT_TAG_P,
    ) -> SimilarResult:
        """Tracks that sound like ``seed`` (a library track's path or id, or any audio file), minus its duplicates."""
        return self.recommend([seed], top_k=top_k, tags=tags, exclude_tags=exclude_tags, min_p=min_p)

    def recommend(
        self,
        seeds: Sequence[str | os.PathLike | int],
        *,
        top_k: int = 10,
        tags: Sequence[str] = (),
        exclude_tags: Sequence[str] = (),
        min_p: float = DEFAULT_TAG_P,
    ) -> SimilarResult:
        """Tracks near all the seeds at once (mean similarity), minus the seeds and their duplicates (``search.similar``)."""
        if not seeds:
            raise QueryError("no seeds given; name at least one track or audio file")
        index = self.search_index()
        try:
            keep = similar.tag_filter(self.vocabulary, tags, exclude_tags, min_p, self._tags_of)
        except ValueError as e:
            raise QueryError(str(e)) from None
        resolved = [self._seed(s, index) for s in seeds]
        return similar.recommend(resolved, index, self.store, self.thresholds.dedup, keep, top_k, self._top_tags)

    def recommend_all(self, *, top_k: int = 10, **filters) -> Iterator[SimilarResult]:
        """``similar`` for every track of the library, in track id order."""
        for t in self.store.tracks("ok"):
            yield self.similar(t.path, top_k=top_k, **filters)

    # --------------------------------------------------------------- internals

    def _searchable(self, index: SearchIndex) -> None:
        """Raise EmptyLibraryError (or DamagedCodesError) when ``index`` has nothing to search."""
        if index.segments.ntotal:
            return
        n = self.store.stats().n_tracks
        if self.damaged:
            raise DamagedCodesError(
                f"{self.folder / CODES_FILE}: the codes of all {n} indexed tracks are damaged or missing; "
                f"run `musichash check --repair`"
            )
        if n:
            raise EmptyLibraryError(
                f"{self.folder}: the library's {n} tracks are too short to search (no 3 s windows); "
                f"index longer recordings: musichash index PATH... --library {self.folder}"
            )
        raise EmptyLibraryError(
            f"{self.folder}: the library has no indexed tracks yet; "
            f"run musichash index PATH... --library {self.folder}"
        )

    def _search_batch(self, pending: list[query.Query], t: Thresholds, settings: query.Settings) -> list[SearchResult]:
        """``query.search`` of a batch; when a track's codes turn out damaged on the way (its chroma is
        verified), the batch is searched again without it rather than answered without its harmony check."""
        while True:
            index = self.search_index()
            self._searchable(index)
            try:
                return query.search(pending, index, self.store, t, settings, self._top_tags)
            except DamagedCodesError as e:
                if e.track_id is None or e.track_id in index.left_out:
                    raise

    def top_tags(self, t: Track) -> tuple[TagScore, ...]:
        """A track's most likely tags, of the library's tagger (``tagger``) or its code model's tag head."""
        return self._top_tags(t)

    def _top_tags(self, t: Track) -> tuple[TagScore, ...]:
        if t.tags is None:
            return ()
        p = np.asarray(t.tags)
        order = np.argsort(-p, kind="stable")[:TAGS_SHOWN]
        vocab = self.vocabulary
        return tuple(TagScore(vocab[i], float(p[i])) for i in order)

    def _tags_of(self, tid: int):
        t = self.store.get(tid)
        return None if t is None else t.tags

    def _query(self, clip: str | os.PathLike | Clip) -> query.Query:
        name = clip.name if isinstance(clip, Clip) else str(clip)
        clip = clip if isinstance(clip, Clip) else _user(clip)
        try:  # the vote needs segment codes only, and the harmony check the clip's chroma
            enc = encode_clip(self.model, clip, track=False, harmony=True, max_s=query.MAX_CLIP_S)
            return query.Query(name, enc)
        except AudioTooShortError as e:
            return query.Query(name, error=query.too_short(getattr(e, "duration_s", 0.0)))
        except AudioError as e:
            return query.Query(name, error=e.reason)

    def _seed(self, seed, index: SearchIndex) -> similar.Seed:
        """A seed's codes: a library track's stored ones, or an audio file's encoded now."""
        track = None
        if isinstance(seed, int) or (isinstance(seed, str) and seed.isdigit() and not Path(seed).exists()):
            track = self.store.get(int(seed))
            if track is None:
                raise QueryError(f"no track with id {seed} in {self.folder}")
        else:
            seed = _user(seed)
            track = self.store.find_by_path(str(seed.absolute()))
        if track is not None and track.status == "ok":
            code = index.track_code(track.id)
            if code is not None:
                c = self.store.get_codes(track.id)
                return similar.Seed(str(seed), track.path, code, c.segment_codes, c.segment_times, track.id,
                                    track.duration_s)
        try:
            enc = self.encode(seed, hop=self.store.segment_hop)
        except AudioError as e:
            raise QueryError(f"{seed}: {e.reason}") from None
        return similar.Seed(str(seed), str(seed), enc.track_code, enc.codes, enc.times, None, enc.duration_s)


