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
import torch

from musichash.devices import faiss_device
from musichash.errors import MusichashError
from musichash.features import chroma, spectra
from musichash.features.audio import (
    SAMPLE_RATE,
    AudioError,
    iter_audio_blocks,
    iter_mel_blocks,
    log_mel,
)
from musichash.indexer.pipeline import IndexReport, Progress, index_paths
from musichash.indexer.store import (
    LibraryError,
    LibraryStats,
    LibraryStore,
    ModelMismatchError,
    Track,
)
from musichash.models import DEFAULT_CODE_MODEL, ModelError, get_spec, tag_names
from musichash.models.encoder import LIBRARY_HOP, CodeModel, Encoded, query_hop
from musichash.models.registry import weights_digest
from musichash.models.tagging import TagScore
from musichash.search import engine
from musichash.search.cache import SearchIndex, load_or_build, read_config, write_config
from musichash.search.faiss_index import IndexConfig
from musichash.search.results import (
    DuplicateGroup,
    GroupMember,
    SearchHit,
    SearchResult,
    SimilarHit,
    SimilarResult,
)
from musichash.search.vote import DEFAULT_MATCH_THRESHOLD, TrackVote, match_decision

#: shortest query clip, seconds (one 3 s window)
MIN_CLIP_S = 3.0
#: a clip's first tracks by the vote whose harmony is compared with the clip's (``Library.verify``)
HARMONY_CANDIDATES = 3
#: they are ranked by score / best score + HARMONY_WEIGHT * chroma agreement. Chosen on the fit
#: corpus's calibration third, where it raised top-1 at 3 / 5 / 10 s from 71.4 / 87.7 / 95.9 % to
#: 77.0 / 91.8 / 97.7 % (weights 0.5 to 4 and score-ratio rules compared: benchmarks/HISTORY.md)
HARMONY_WEIGHT = 2.0
#: a track "has" a tag for --tag / --exclude-tag when its probability reaches this
DEFAULT_TAG_P = 0.2
TAGS_SHOWN = 5


class QueryError(MusichashError):
    """A query (clip, seed or tag) cannot be used as given."""


@dataclass(frozen=True)
class Clip:
    """Audio already in memory: ``wave: float32 [n]`` at 16 kHz, named for the results."""

    name: str
    wave: np.ndarray


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
    ) -> Library:
        """Open (``write=True``: create if needed, and lock) the library in ``folder``.

        ``precision``: of the code model's convolutions (``musichash.models.registry.resolve_precision``:
        ``auto`` is bfloat16 on CPUs with native bfloat16, float32 elsewhere).

        ``code_model`` picks the model of a new library (default
        ``DEFAULT_CODE_MODEL``); for an existing one it must match, and so must
        the digest of its weights (codes of retrained weights are never mixed).
        """
        folder = Path(folder).expanduser() if folder is not None else default_folder()
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
                code_digest=weights_digest(spec) if spec else None,
            )

        try:
            store = open_store(code_model)
        except ValueError:  # an empty external database and no model named
            store = open_store(DEFAULT_CODE_MODEL)
        try:
            _check_digest(folder, store)
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
            self._vocabulary = tag_names(get_spec(get_spec(self.code_model).backbone).vocabulary)
        return self._vocabulary

    def search_index(self, *, force: bool = False) -> SearchIndex:
        """The FAISS index of the library's codes, loaded from ``index/`` or rebuilt if stale."""
        if force or self._index is None or self._index.stamp != self.store.stamp():
            self._index = load_or_build(self.store, faiss_device(self.device), force=force)
        return self._index

    # ------------------------------------------------------------------ writes

    def index(
        self,
        paths: Sequence[str | os.PathLike],
        *,
        prune: bool = False,
        workers: int | None = None,
        progress: Progress | None = None,
    ) -> IndexReport:
        """Add or update the audio under ``paths`` (see ``musichash.indexer.pipeline``)."""
        return index_paths(self.store, self.model, paths, prune=prune, workers=workers, progress=progress)

    def remove(self, paths: Iterable[str | os.PathLike]) -> list[str]:
        """Drop tracks by file path, or every track under a folder; returns the paths removed."""
        tracks = self.store.tracks()
        gone: dict[int, str] = {}
        for p in paths:
            target = str(Path(p).absolute())
            hit = [t for t in tracks if t.path == target or t.path.startswith(target.rstrip(os.sep) + os.sep)]
            if not hit:
                raise QueryError(f"{p}: no track of the library is at or under this path; see `musichash stats`")
            gone.update((t.id, t.path) for t in hit)
        self.store.remove(gone)
        return sorted(gone.values())

    def reindex(self, index_type: str | None = None, **params) -> SearchIndex:
        """Rebuild the FAISS files from codes.h5, optionally with another index type or parameters."""
        if index_type is not None or params:
            old = read_config(self.folder, self.store.bits) or IndexConfig("flat", bits=self.store.bits)
            config = IndexConfig(**{**asdict(old), **({"kind": index_type} if index_type else {}), **params})
            write_config(self.folder, config)
        return self.search_index(force=True)

    # ------------------------------------------------------------------- reads

    def stats(self) -> LibraryStats:
        return self.store.stats()

    def encode(
        self, clip: str | os.PathLike | Clip, hop: int | None = None, *, track: bool = True, harmony: bool = False
    ) -> Encoded:
        """Codes of a file or an in-memory clip, windows every ``hop`` frames.

        ``hop=None``: a query's (``encoder.query_hop`` of the clip's length); ``track=False``: no
        track code; ``harmony=True``: with the clip's chroma (``Encoded.chroma``).
        """
        if isinstance(clip, Clip):
            hop = query_hop(len(clip.wave) / SAMPLE_RATE) if hop is None else hop
            enc = self.model.encode(log_mel(clip.wave), hop, track=track)
            return replace(enc, chroma=chroma.clip_chroma([clip.wave])) if harmony else enc
        waves = iter_audio_blocks(clip)
        if hop is None:
            # blocks are a minute long but for the last: the first tells whether the clip is long
            head = next(waves, None)
            hop = query_hop(0.0 if head is None else len(head) / SAMPLE_RATE)
            waves = itertools.chain([] if head is None else [head], waves)
        cc = chroma.ClipChroma()
        waves = cc.tap(waves) if harmony else waves
        enc = self.model.encode((torch.from_numpy(c) for c in iter_mel_blocks(waves)), hop, track=track)
        return replace(enc, chroma=cc.frames()) if harmony else enc

    def verify(self, enc: Encoded, votes: list[TrackVote]) -> tuple[list[TrackVote], float | None]:
        """The vote's ranking with its first ``HARMONY_CANDIDATES`` tracks re-ranked by harmony too,
        and the chroma agreement of the track now first (None: not compared).

        Where one of those compared has no chroma (indexed before tracks kept it) the order is the
        vote's. A track is compared only if it could overtake the best so far (its agreement can be
        at most 1), so the first often settles it in one comparison.
        """
        head = votes[:HARMONY_CANDIDATES]
        if not head or enc.chroma is None or head[0].score <= 0:
            return votes, None
        first = self.harmony(enc, head[0])
        if first is None:
            return votes, None
        best, best_key, best_agree = 0, 1.0 + HARMONY_WEIGHT * first, first
        for i, v in enumerate(head[1:], 1):
            ratio = v.score / head[0].score
            # agreement is at most 1: a track that could not beat the best even so is not compared
            if ratio + HARMONY_WEIGHT <= best_key:
                continue
            a = self.harmony(enc, v)
            if a is None:
                return votes, first
            key = ratio + HARMONY_WEIGHT * a
            if key > best_key:  # the first of equals: the vote's order
                best, best_key, best_agree = i, key, a
        return [head[best], *(v for i, v in enumerate(votes) if i != best)], best_agree

    def harmony(self, enc: Encoded, vote: TrackVote) -> float | None:
        """``chroma.harmony_agreement`` of an encoded clip (``harmony=True``) with a voted track at the vote's
        alignment; None when the track has no chroma (indexed before musichash kept it)."""
        packed = self.store.get_chroma(vote.track_id)
        if packed is None or enc.chroma is None:
            return None
        return chroma.harmony_agreement(enc.chroma, chroma.unpack(packed), vote.offset_s, vote.rate)

    def search(
        self,
        clips: Iterable[str | os.PathLike | Clip],
        *,
        top_k: int = 10,
        threshold: float | None = None,
        chroma_threshold: float | None = None,
        k: int = engine.DEFAULT_K,
    ) -> Iterator[SearchResult]:
        """One result per clip, in order; a clip that cannot be used gets ``error`` set.

        Tracks are ranked by the vote, the first few by harmony too (``verify``). A clip
        matches when its first track's score passes ``threshold`` and, where the model has
        a ``chroma_threshold`` (or one is given; -1 turns the check off), the clip's harmony
        agrees with that track's at the voted alignment (``harmony``).
        ``k``: library segments fetched per query window before the vote.
        """
        threshold = self.match_threshold if threshold is None else threshold
        chroma_threshold = self.chroma_threshold if chroma_threshold is None else chroma_threshold
        index = self.search_index()
        for clip in clips:
            name = clip.name if isinstance(clip, Clip) else str(clip)
            try:
                enc = self.encode(clip, track=False, harmony=True)  # the vote needs segment codes only
            except AudioError as e:
                yield SearchResult(name, False, (), 0.0, error=e.reason)
                continue
            if enc.duration_s < MIN_CLIP_S - 0.05:
                yield SearchResult(
                    name, False, (), enc.duration_s,
                    error=f"clip is {enc.duration_s:.1f} s long; queries need at least {MIN_CLIP_S:g} s",
                )
                continue
            votes, _ = engine.query_codes(  # at least the candidates verify re-ranks, whatever top_k
                index, enc.codes, enc.times, self.store.bits, top_k=max(top_k, HARMONY_CANDIDATES), k=k,
                relaxed=enc.relaxed,
            )
            votes, agree = self.verify(enc, votes)
            votes = votes[:top_k]
            hits = []
            tracks = self.store.get_many(v.track_id for v in votes)
            for v in votes:
                t = tracks.get(v.track_id)
                if t is None:  # removed since the index was built
                    continue
                hits.append(SearchHit(v.track_id, t.path, v.score, v.hamming, v.offset_s, v.rate, v.votes, self._top_tags(t)))
            if not hits or hits[0].track_id != votes[0].track_id:
                agree = None
            match = bool(hits) and match_decision(votes, threshold)
            if agree is not None and chroma_threshold is not None and chroma_threshold > -1:
                match = match and agree > chroma_threshold
            yield SearchResult(name, match, tuple(hits), enc.duration_s, chroma=agree)

    @property
    def match_threshold(self) -> float:
        return float(get_spec(self.code_model).config.get("match_threshold", DEFAULT_MATCH_THRESHOLD))

    @property
    def chroma_threshold(self) -> float | None:
        """The model's calibrated harmony threshold; None (no check) for models without one."""
        t = get_spec(self.code_model).config.get("chroma_threshold")
        return None if t is None else float(t)

    @property
    def dedup_threshold(self) -> float:
        return float(get_spec(self.code_model).config.get("dedup_threshold", engine.DEFAULT_DEDUP_THRESHOLD))

    def dedup(
        self,
        threshold: float | None = None,
        *,
        verify: bool = True,
        progress: Callable[[int, int], None] | None = None,
    ) -> list[DuplicateGroup]:
        """Groups of tracks that are the same recording, largest first.

        verify: each pair the codes align is checked on the two files' audio
        (``search.recording``) and dropped when their spectrograms disagree, as an
        alternate arrangement of one score does; a pair with a file that cannot be
        read now is kept on the codes' word. progress(done, total) follows the checks.
        """
        threshold = self.dedup_threshold if threshold is None else threshold
        index = self.search_index()
        tracks = {t.id: t for t in self.store.tracks("ok")}
        pairs = []
        for tid, t in tracks.items():
            codes = self.store.get_codes(tid)
            pairs += engine.duplicates_of(
                index, codes.segment_codes, codes.segment_times, self.store.bits,
                self_id=tid, duration_s=t.duration_s, threshold=threshold,
            )
        pairs = [p for p in pairs if p.a in tracks and p.b in tracks and tracks[p.a].content_hash != tracks[p.b].content_hash]
        if verify:
            pairs = self._same_recording(pairs, tracks, progress)
        # Same bytes: the same recording whatever the codes say.
        by_hash: dict[str, list[int]] = {}
        for t in tracks.values():
            by_hash.setdefault(t.content_hash, []).append(t.id)
        for ids in by_hash.values():
            for other in ids[1:]:
                full = (0.0, float(tracks[ids[0]].duration_s or 0.0))
                pairs.append(engine.DuplicatePair(ids[0], other, 1.0, full, full))
        groups = []
        for ids, score, spans in engine.group_pairs(pairs):
            members = tuple(GroupMember(i, tracks[i].path, spans[i]) for i in ids)
            groups.append(DuplicateGroup(members, score))
        return groups

    @staticmethod
    def _same_recording(pairs, tracks, progress) -> list[engine.DuplicatePair]:
        """The pairs whose audio agrees along their alignment (or cannot be read): each pair's best alignment only."""
        best = engine.best_pairs(pairs)
        cache = spectra.Spectra()
        kept = []
        for done, p in enumerate(sorted(best.values(), key=lambda p: (p.a, p.b)), 1):
            a, b = cache.get(tracks[p.a].path), cache.get(tracks[p.b].path)
            agree = None if a is None or b is None else spectra.spectrogram_agreement(a, b, p.offset_s, p.rate)
            if agree is None or agree >= spectra.SAME_RECORDING:
                kept.append(p)
            if progress:
                progress(done, len(best))
        return kept

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
        """Tracks near all the seeds at once (mean similarity), minus the seeds and their duplicates."""
        if not seeds:
            raise QueryError("no seeds given; name at least one track or audio file")
        index = self.search_index()
        keep = self._tag_filter(tags, exclude_tags, min_p)
        seed_codes, exclude, excluded_paths = [], set(), []
        for seed in seeds:
            code, seg_codes, seg_times, tid, dur = self._seed(seed, index)
            seed_codes.append(code)
            if tid is not None:
                exclude.add(tid)
                digest = self.store.get(tid).content_hash
                for t in self.store.find_by_hash(digest):
                    if t.id not in exclude and t.status == "ok":
                        exclude.add(t.id)
                        excluded_paths.append(t.path)
            for p in engine.duplicates_of(
                index, seg_codes, seg_times, self.store.bits, self_id=tid, duration_s=dur, threshold=self.dedup_threshold
            ):
                if p.b not in exclude:
                    exclude.add(p.b)
                    t = self.store.get(p.b)
                    excluded_paths.append(t.path if t else str(p.b))
        found = engine.similar_tracks(index, np.stack(seed_codes), self.store.bits, top_k=top_k, exclude=exclude, keep=keep)
        hits = []
        tracks = self.store.get_many(tid for tid, _, _ in found)
        for tid, score, d in found:
            t = tracks.get(tid)
            if t is not None:
                hits.append(SimilarHit(tid, t.path, score, d, self._top_tags(t)))
        name = ", ".join(str(s) for s in seeds)
        return SimilarResult(name, tuple(hits), tuple(excluded_paths))

    def recommend_all(self, *, top_k: int = 10, **filters) -> Iterator[SimilarResult]:
        """``similar`` for every track of the library, in track id order."""
        for t in self.store.tracks("ok"):
            yield self.similar(t.path, top_k=top_k, **filters)

    # --------------------------------------------------------------- internals

    def _top_tags(self, t: Track) -> tuple[TagScore, ...]:
        if t.tags is None:
            return ()
        p = np.asarray(t.tags)
        order = np.argsort(-p, kind="stable")[:TAGS_SHOWN]
        vocab = self.vocabulary
        return tuple(TagScore(vocab[i], float(p[i])) for i in order)

    def _tag_filter(self, tags: Sequence[str], exclude_tags: Sequence[str], min_p: float):
        vocab = {name: i for i, name in enumerate(self.vocabulary)}
        for tag in (*tags, *exclude_tags):
            if tag not in vocab:
                raise QueryError(f"unknown tag {tag!r}; the tags are: {', '.join(self.vocabulary)}")
        need = [vocab[t] for t in tags]
        avoid = [vocab[t] for t in exclude_tags]
        if not need and not avoid:
            return lambda _tid: True

        def keep(tid: int) -> bool:
            t = self.store.get(tid)
            if t is None or t.tags is None:
                return False
            p = t.tags
            return all(p[i] >= min_p for i in need) and not any(p[i] >= min_p for i in avoid)

        return keep

    def _seed(self, seed, index: SearchIndex):
        """(track code, segment codes, segment times, track id or None, duration) of a seed."""
        track = None
        if isinstance(seed, int) or (isinstance(seed, str) and seed.isdigit() and not Path(seed).exists()):
            track = self.store.get(int(seed))
            if track is None:
                raise QueryError(f"no track with id {seed} in {self.folder}")
        else:
            track = self.store.find_by_path(str(Path(seed).absolute()))
        if track is not None and track.status == "ok":
            code = index.track_code(track.id)
            if code is not None:
                c = self.store.get_codes(track.id)
                return code, c.segment_codes, c.segment_times, track.id, track.duration_s
        try:
            enc = self.encode(seed, hop=LIBRARY_HOP)
        except AudioError as e:
            raise QueryError(f"{seed}: {e.reason}") from None
        return enc.track_code, enc.codes, enc.times, None, enc.duration_s


