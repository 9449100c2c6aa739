"""FAISS binary index over packed hash codes, plus a brute-force reference.

Codes are packed bits, ``codes: uint8 [n, bits/8]``; FAISS binary indexes use
``d = bits`` and compare codes by Hamming distance.  Every index built here is
wrapped in ``faiss.IndexBinaryIDMap`` so searches return the caller's int64 ids
(track or segment ids) and one file on disk holds both codes and ids.

Index kinds (``INDEX_TYPES``):

- ``flat``: exact brute force; the default, and the only kind that runs on a
  GPU when one is available: ``faiss.GpuIndexBinaryFlat`` with faiss-gpu, else
  an exact torch k-NN on the CUDA device (``search.torch_knn``).
- ``hnsw``: graph search, approximate, fast for large libraries.
- ``ivf``: inverted lists trained on the codes; ``nprobe`` trades speed for
  recall.
- ``multihash``: multi-index hashing on ``nhash`` chunks of ``hash_bits``
  bits; finds neighbours that differ from the query by at most ``nflip`` bits
  in some chunk, so it suits near-duplicate lookups rather than loose kNN.

The approximate kinds always stay on the CPU, even when ``cuda`` is asked for:
FAISS has no GPU version of them.

Search results follow FAISS: ``D: int32 [nq, k]`` Hamming distances and
``I: int64 [nq, k]`` ids, best first; missing neighbours (``k > ntotal`` or an
approximate index that found fewer) have ``I == -1`` and
``D == MISSING_DISTANCE``.
"""

from __future__ import annotations

import dataclasses
import math
import os
from dataclasses import dataclass
from pathlib import Path

import faiss
import numpy as np

from musichash.bits import hamming
from musichash.devices import index_device, torch_device
from musichash.errors import MusichashError
from musichash.search.torch_knn import TorchFlat

__all__ = [
    "INDEX_TYPES", "MISSING_DISTANCE", "BinaryIndex", "IndexConfig", "SearchError",
    "hamming_distances", "hamming_knn", "recall_at_k",
]

INDEX_TYPES = ("flat", "hnsw", "ivf", "multihash")

# FAISS pads with INT32_MAX (flat) or INT32_MIN (hnsw); one value for all kinds
# keeps "smaller is better" sorting correct.
MISSING_DISTANCE = np.iinfo(np.int32).max

# IVF k-means wants about 39 training points per list; fewer only adds noise.
_MIN_POINTS_PER_LIST = 39
_MAX_NLIST = 65536


class SearchError(MusichashError):
    """A problem with an index or a search that the user can fix."""


@dataclass(frozen=True)
class IndexConfig:
    """How to build a binary index.

    ``nlist=None`` picks the power of two nearest ``sqrt(n)`` at build time
    (at most ``n / 39`` so every list gets enough training codes); more lists
    cost build time quadratically for little speed (benchmarks/HISTORY.md, search at
    scale).  ``nprobe`` 64 keeps the right track first as often as exact
    search on 100k tracks, at 17 ms per 10 s query.  ``nhash=None`` cuts
    the code into 16-bit chunks; ``hash_bits=None`` uses ``bits // nhash``.
    """

    kind: str = "flat"
    bits: int = 64
    # hnsw
    hnsw_m: int = 16
    ef_search: int = 64
    ef_construction: int = 40
    # ivf
    nlist: int | None = None
    nprobe: int = 64
    # multihash
    nhash: int | None = None
    hash_bits: int | None = None
    nflip: int = 1

    def __post_init__(self) -> None:
        if self.kind not in INDEX_TYPES:
            raise SearchError(
                f"unknown index type {self.kind!r}; choose one of: {', '.join(INDEX_TYPES)}"
            )
        if not isinstance(self.bits, (int, np.integer)) or self.bits <= 0 or self.bits % 8:
            raise SearchError(
                f"code width of {self.bits} bits is not supported; FAISS binary indexes "
                "need a positive multiple of 8 bits (the models emit 16, 32, 48, 64 or 128)"
            )
        for name in ("hnsw_m", "ef_search", "ef_construction", "nprobe"):
            if getattr(self, name) < 1:
                raise SearchError(f"{name} must be at least 1 (got {getattr(self, name)})")
        if self.nlist is not None and self.nlist < 1:
            raise SearchError(f"nlist must be at least 1 (got {self.nlist})")
        if self.nflip < 0:
            raise SearchError(f"nflip must be 0 or more (got {self.nflip})")
        nhash = self.nhash if self.nhash is not None else max(1, self.bits // 16)
        hash_bits = self.hash_bits if self.hash_bits is not None else min(64, self.bits // nhash)
        if nhash < 1 or hash_bits < 1 or hash_bits > 64 or nhash * hash_bits > self.bits:
            raise SearchError(
                f"multihash with nhash={nhash} and hash_bits={hash_bits} does not fit "
                f"{self.bits}-bit codes; need 1 <= hash_bits <= 64 and nhash * hash_bits <= bits"
            )
        object.__setattr__(self, "nhash", nhash)
        object.__setattr__(self, "hash_bits", hash_bits)

    @property
    def nbytes(self) -> int:
        return self.bits // 8


def _check_codes(x: np.ndarray, bits: int, what: str) -> np.ndarray:
    """Validate packed codes and return them as C-contiguous ``uint8 [n, bits/8]``."""
    x = np.asarray(x)
    nbytes = bits // 8
    if x.dtype != np.uint8:
        hint = (
            "; pack bits with np.packbits(codes, axis=1)"
            if x.dtype == np.bool_ or (x.ndim == 2 and x.shape[-1] == bits)
            else ""
        )
        raise SearchError(f"{what} must be packed uint8 [n, {nbytes}], got dtype {x.dtype}{hint}")
    if x.ndim == 1:
        x = x.reshape(1, -1)
    if x.ndim != 2 or x.shape[1] != nbytes:
        width = x.shape[-1] if x.ndim else 0
        raise SearchError(
            f"{what} are {width * 8}-bit codes ({width} bytes per row) but the index holds "
            f"{bits}-bit codes ({nbytes} bytes); use the model that built the index, "
            "or rebuild the index with: musichash reindex"
        )
    return np.ascontiguousarray(x)


def _check_k(k: int) -> int:
    if int(k) < 1:
        raise SearchError(f"k must be at least 1 (got {k})")
    return int(k)


# ---------------------------------------------------------------------------
# brute-force reference


def hamming_distances(xq: np.ndarray, xb: np.ndarray) -> np.ndarray:
    """All Hamming distances.

    ``xq: uint8 [nq, B]``, ``xb: uint8 [nb, B]`` → ``int32 [nq, nb]``.
    """
    xq = np.asarray(xq, dtype=np.uint8)
    xb = np.asarray(xb, dtype=np.uint8)
    nq, nbytes = xq.shape
    nb = xb.shape[0]
    out = np.empty((nq, nb), dtype=np.int32)
    # Bound the uint8 [chunk, nb, B] xor temporary to ~32 MB.
    chunk = max(1, (32 << 20) // max(1, nb * nbytes))
    for i0 in range(0, nq, chunk):
        out[i0 : i0 + chunk] = hamming(xq[i0 : i0 + chunk, None, :], xb[None, :, :])
    return out


def hamming_knn(xq: np.ndarray, xb: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Exact k nearest neighbours by Hamming distance, ties broken by smaller index.

    ``xq: uint8 [nq, B]``, ``xb: uint8 [nb, B]`` → ``D: int32 [nq, k]``,
    ``I: int64 [nq, k]`` (row numbers in ``xb``; -1 / ``MISSING_DISTANCE``
    past ``nb``).
    """
    k = _check_k(k)
    dist = hamming_distances(xq, xb)
    nq, nb = dist.shape
    D = np.full((nq, k), MISSING_DISTANCE, dtype=np.int32)
    I = np.full((nq, k), -1, dtype=np.int64)
    kk = min(k, nb)
    if kk:
        order = np.argsort(dist, axis=1, kind="stable")[:, :kk]
        I[:, :kk] = order
        D[:, :kk] = np.take_along_axis(dist, order, axis=1)
    return D, I


def recall_at_k(I_approx: np.ndarray, I_exact: np.ndarray, k: int | None = None) -> float:
    """Fraction of the exact top-k ids that the approximate search also returned.

    ``I_*: int64 [nq, >=k]``; ``k`` defaults to the width of ``I_exact``.
    Missing entries (-1) in ``I_exact`` are not counted.  With tied distances
    the exact top-k is one of several valid answers, so recall can read below
    1 for an index that is in fact exact.
    """
    I_approx = np.asarray(I_approx)
    I_exact = np.asarray(I_exact)
    if k is None:
        k = I_exact.shape[1]
    found = 0
    total = 0
    for a, e in zip(I_approx[:, :k], I_exact[:, :k]):
        e = e[e >= 0]
        total += e.size
        found += np.isin(e, a[a >= 0]).sum()
    return float(found / total) if total else 1.0


# ---------------------------------------------------------------------------
# the index


def _auto_nlist(n: int) -> int:
    nlist = 2 ** int(round(math.log2(max(math.sqrt(n), 1.0))))
    return max(1, min(nlist, n // _MIN_POINTS_PER_LIST, _MAX_NLIST))


def _kind_of(sub: faiss.IndexBinary) -> str:
    if isinstance(sub, faiss.IndexBinaryFlat):
        return "flat"
    if isinstance(sub, faiss.IndexBinaryHNSW):
        return "hnsw"
    if isinstance(sub, faiss.IndexBinaryIVF):
        return "ivf"
    if isinstance(sub, faiss.IndexBinaryMultiHash):
        return "multihash"
    raise SearchError(
        f"index holds an unsupported FAISS type {type(sub).__name__}; "
        "rebuild it with: musichash reindex"
    )


def _config_of(sub: faiss.IndexBinary) -> IndexConfig:
    """Recover the build parameters that FAISS stores in the index itself."""
    kind = _kind_of(sub)
    bits = int(sub.d)
    if kind == "hnsw":
        cum = faiss.vector_to_array(sub.hnsw.cum_nneighbor_per_level)
        # Level 0 has 2*M links, every level above it has M.
        m = int(cum[2] - cum[1]) if cum.size > 2 else IndexConfig.hnsw_m
        return IndexConfig(
            kind,
            bits,
            hnsw_m=m,
            ef_search=int(sub.hnsw.efSearch),
            ef_construction=int(sub.hnsw.efConstruction),
        )
    if kind == "ivf":
        return IndexConfig(kind, bits, nlist=int(sub.nlist), nprobe=int(sub.nprobe))
    if kind == "multihash":
        return IndexConfig(
            kind, bits, nhash=int(sub.nhash), hash_bits=int(sub.b), nflip=int(sub.nflip)
        )
    return IndexConfig(kind, bits)


class BinaryIndex:
    """A FAISS binary index over packed codes with caller-chosen int64 ids.

    Make one with ``BinaryIndex.build`` or ``BinaryIndex.load``.
    """

    def __init__(self, index: faiss.IndexBinaryIDMap, config: IndexConfig, device: str):
        self._index = index
        # The IDMap holds a raw pointer to its sub-index; keep the Python
        # object (and GPU resources) alive as long as the wrapper.
        self._sub = index.index
        self._gpu_res = None
        self._config = config
        self._device = device
        #: the codes again on a torch device, searched there (``search.torch_knn``), and their ids
        self._torch: TorchFlat | None = None
        self._torch_ids = np.zeros(0, np.int64)

    # -- construction -------------------------------------------------------

    @classmethod
    def build(
        cls,
        codes: np.ndarray,
        ids: np.ndarray | None = None,
        config: IndexConfig | None = None,
        device: str = "auto",
        *,
        backend: str | None = None,
    ) -> BinaryIndex:
        """Index ``codes: uint8 [n, bits/8]`` under ``ids: int64 [n]`` (default ``0..n-1``).

        ``config`` defaults to a flat index of the codes' width.  ``device``
        is ``"auto"``, ``"cpu"`` or ``"cuda"``; only ``flat`` moves to a GPU: FAISS's when
        faiss-gpu is installed, else torch's (``devices.index_device``). ``backend="torch"``
        searches a flat index with ``search.torch_knn`` on the device's torch device even where
        FAISS could (the CPU included: the tests and benchmarks compare the two).
        """
        codes = np.asarray(codes)
        if config is None:
            width = codes.shape[-1] if codes.ndim == 2 else 0
            config = IndexConfig("flat", bits=width * 8 if width else 64)
        codes = _check_codes(codes, config.bits, "codes")
        n = codes.shape[0]
        ids = cls._check_ids(ids, n)
        if backend not in (None, "torch"):
            raise SearchError(f"unknown search backend {backend!r}; leave it unset, or 'torch'")
        asked = device
        device, torch_dev = index_device(device)
        if backend == "torch" and torch_dev is None:
            torch_dev = "cpu" if device == "cpu" else str(torch_device(asked))
        if config.kind != "flat":
            device, torch_dev = "cpu", None

        if config.kind == "ivf":
            if n == 0:
                raise SearchError("cannot train an ivf index on 0 codes; use kind 'flat'")
            nlist = config.nlist if config.nlist is not None else _auto_nlist(n)
            if nlist > n:
                raise SearchError(
                    f"ivf with nlist={nlist} needs at least {nlist} codes to train, got {n}; "
                    "lower nlist or leave it unset to choose one automatically"
                )
            config = dataclasses.replace(config, nlist=nlist)

        gpu_res = None
        if device == "cuda" and torch_dev is None:
            gpu_res = faiss.StandardGpuResources()
            sub = faiss.GpuIndexBinaryFlat(gpu_res, config.bits)
        else:
            sub = cls._new_cpu_index(config)
        if config.kind == "ivf":
            sub.train(codes)
        index = faiss.IndexBinaryIDMap(sub)
        if n:
            index.add_with_ids(codes, ids)
        built = cls(index, config, device)
        built._sub = sub
        built._gpu_res = gpu_res
        if torch_dev is not None:
            built._torch, built._torch_ids = TorchFlat(codes, torch_dev), ids.copy()
        return built

    @staticmethod
    def _new_cpu_index(config: IndexConfig) -> faiss.IndexBinary:
        d = config.bits
        if config.kind == "flat":
            return faiss.IndexBinaryFlat(d)
        if config.kind == "hnsw":
            sub = faiss.IndexBinaryHNSW(d, config.hnsw_m)
            sub.hnsw.efConstruction = config.ef_construction
            sub.hnsw.efSearch = config.ef_search
            return sub
        if config.kind == "ivf":
            quantizer = faiss.IndexBinaryFlat(d)
            sub = faiss.IndexBinaryIVF(quantizer, d, config.nlist)
            # The IVF owns the quantizer from now on; Python must not free it.
            sub.own_fields = True
            quantizer.this.disown()
            sub.nprobe = config.nprobe
            return sub
        sub = faiss.IndexBinaryMultiHash(d, config.nhash, config.hash_bits)
        sub.nflip = config.nflip
        return sub

    @staticmethod
    def _check_ids(ids: np.ndarray | None, n: int) -> np.ndarray:
        if ids is None:
            return np.arange(n, dtype=np.int64)
        ids = np.asarray(ids)
        if ids.ndim != 1 or ids.shape[0] != n:
            raise SearchError(f"ids must be int64 [{n}] (one per code), got shape {ids.shape}")
        if not np.issubdtype(ids.dtype, np.integer):
            raise SearchError(f"ids must be integers, got dtype {ids.dtype}")
        ids = np.ascontiguousarray(ids, dtype=np.int64)
        if n and ids.min() < 0:
            raise SearchError("ids must be 0 or more; -1 marks a missing result")
        return ids

    def add(self, codes: np.ndarray, ids: np.ndarray) -> None:
        """Append ``codes: uint8 [n, bits/8]`` under ``ids: int64 [n]``."""
        codes = _check_codes(codes, self.bits, "codes")
        ids = self._check_ids(ids, codes.shape[0])
        if codes.shape[0]:
            self._index.add_with_ids(codes, ids)
            if self._torch is not None:
                self._torch.add(codes)
                self._torch_ids = np.concatenate([self._torch_ids, ids])

    # -- properties -----------------------------------------------------------

    @property
    def ntotal(self) -> int:
        return int(self._index.ntotal)

    @property
    def bits(self) -> int:
        return self._config.bits

    @property
    def kind(self) -> str:
        return self._config.kind

    @property
    def device(self) -> str:
        return self._device

    @property
    def config(self) -> IndexConfig:
        return self._config

    @property
    def backend(self) -> str:
        """What searches: ``faiss`` (on ``device``), or ``torch:<its torch device>``."""
        return "faiss" if self._torch is None else f"torch:{self._torch.device}"

    @property
    def _faiss_gpu(self) -> bool:
        return self._device == "cuda" and self._torch is None

    def __len__(self) -> int:
        return self.ntotal

    def __repr__(self) -> str:
        return (
            f"BinaryIndex(kind={self.kind!r}, bits={self.bits}, ntotal={self.ntotal}, "
            f"device={self.device!r})"
        )

    # -- search ---------------------------------------------------------------

    def set_search_params(
        self,
        *,
        nprobe: int | None = None,
        ef_search: int | None = None,
        nflip: int | None = None,
    ) -> None:
        """Change the speed/recall knobs of an approximate index in place.

        Each knob only applies to its kind (``nprobe``: ivf, ``ef_search``:
        hnsw, ``nflip``: multihash); the others are ignored.
        """
        changes = {}
        if nprobe is not None and self.kind == "ivf":
            changes["nprobe"] = min(int(nprobe), self._config.nlist)
        if ef_search is not None and self.kind == "hnsw":
            changes["ef_search"] = int(ef_search)
        if nflip is not None and self.kind == "multihash":
            changes["nflip"] = int(nflip)
        if not changes:
            return
        config = dataclasses.replace(self._config, **changes)
        sub = faiss.downcast_IndexBinary(self._index.index)
        if self.kind == "ivf":
            sub.nprobe = config.nprobe
        elif self.kind == "hnsw":
            sub.hnsw.efSearch = config.ef_search
        else:
            sub.nflip = config.nflip
        self._config = config

    def search(self, xq: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """k nearest codes.

        ``xq: uint8 [nq, bits/8]`` → ``D: int32 [nq, k]``, ``I: int64 [nq, k]``.

        ``D`` holds Hamming distances, ``I`` the ids given at build time;
        slots past the neighbours found are ``I == -1``,
        ``D == MISSING_DISTANCE``.
        """
        xq = _check_codes(xq, self.bits, "queries")
        k = _check_k(k)
        nq = xq.shape[0]
        if self._faiss_gpu and k > 2048:
            raise SearchError(
                f"the GPU index returns at most k=2048 neighbours (got {k}); use --device cpu"
            )
        if nq == 0 or self.ntotal == 0:
            return (
                np.full((nq, k), MISSING_DISTANCE, dtype=np.int32),
                np.full((nq, k), -1, dtype=np.int64),
            )
        if self._torch is not None:
            D, pos = self._torch.search(xq, k)
            return D, np.where(pos >= 0, self._torch_ids[np.maximum(pos, 0)], -1)
        D, I = self._index.search(xq, k)
        D = D.astype(np.int32)
        I = I.astype(np.int64)
        D[I < 0] = MISSING_DISTANCE
        return D, I

    def range_search(
        self, xq: np.ndarray, radius: int
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """All codes within Hamming distance ``radius`` (inclusive) of each query.

        Returns FAISS-style ``lims: int64 [nq+1]``, ``D: int32 [total]``,
        ``I: int64 [total]``: the hits of query ``i`` are
        ``D[lims[i]:lims[i+1]]``, sorted by distance, then id.  Exact for
        ``flat`` and ``hnsw`` (brute force on the stored codes); ``ivf`` and
        ``multihash`` only see what their probing reaches, as in ``search``.
        """
        xq = _check_codes(xq, self.bits, "queries")
        radius = int(radius)
        nq = xq.shape[0]
        if radius < 0 or nq == 0 or self.ntotal == 0:
            return np.zeros(nq + 1, dtype=np.int64), np.zeros(0, np.int32), np.zeros(0, np.int64)
        if not self._faiss_gpu and self.kind != "hnsw":
            # FAISS keeps distances strictly below its radius.
            lims, D, I = self._index.range_search(xq, radius + 1)
            lims = lims.astype(np.int64)
            D = D.astype(np.int32)
            I = I.astype(np.int64)
        else:
            xb, ids = self._codes_and_ids()
            dist = hamming_distances(xq, xb)
            qi, bi = np.nonzero(dist <= radius)
            lims = np.zeros(nq + 1, dtype=np.int64)
            np.cumsum(np.bincount(qi, minlength=nq), out=lims[1:])
            D = dist[qi, bi].astype(np.int32)
            I = ids[bi]
        # Sort each query's hits by (distance, id) so results are reproducible.
        qrow = np.repeat(np.arange(nq), np.diff(lims))
        order = np.lexsort((I, D, qrow))
        return lims, D[order], I[order]

    def _codes_and_ids(self) -> tuple[np.ndarray, np.ndarray]:
        """Stored ``codes: uint8 [ntotal, bits/8]`` and ``ids: int64 [ntotal]`` (flat/hnsw/ivf)."""
        ids = faiss.vector_to_array(self._index.id_map).astype(np.int64)
        if self.kind == "ivf" and not self._faiss_gpu:  # each list's codes, back in the order they were added
            sub, xb = faiss.downcast_IndexBinary(self._index.index), np.empty((len(ids), self.bits // 8), np.uint8)
            for lst in range(sub.nlist):
                if n := sub.invlists.list_size(lst):
                    rows = faiss.rev_swig_ptr(sub.invlists.get_ids(lst), n)
                    xb[rows] = faiss.rev_swig_ptr(sub.invlists.get_codes(lst), n * xb.shape[1]).reshape(n, -1)
            return xb, ids
        flat = self._cpu_flat()
        xb = faiss.vector_to_array(flat.xb).reshape(-1, self.bits // 8)
        return xb, ids

    def _cpu_flat(self) -> faiss.IndexBinaryFlat:
        sub = faiss.downcast_IndexBinary(self._index.index)
        if self._faiss_gpu:
            flat = faiss.IndexBinaryFlat(self.bits)
            self._sub.copyTo(flat)
            return flat
        if self.kind == "hnsw":
            return faiss.downcast_IndexBinary(sub.storage)
        if self.kind == "flat":
            return sub
        raise SearchError(f"cannot read the codes back from a {self.kind} index; use kind 'flat'")

    # -- persistence ----------------------------------------------------------

    def save(self, path: str | os.PathLike) -> None:
        """Write the index to ``path`` atomically (a crash leaves the old file or none)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        index = self._index
        if self._faiss_gpu:
            xb, ids = self._codes_and_ids()
            index = faiss.IndexBinaryIDMap(faiss.IndexBinaryFlat(self.bits))
            if len(ids):
                index.add_with_ids(xb, ids)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        try:
            faiss.write_index_binary(index, str(tmp))
            with open(tmp, "rb+") as f:
                os.fsync(f.fileno())
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)

    @classmethod
    def load(cls, path: str | os.PathLike, device: str = "auto", *, backend: str | None = None) -> BinaryIndex:
        """Read an index written by ``save``; a flat index moves to the GPU if ``device`` allows."""
        path = Path(path)
        if not path.is_file():
            raise SearchError(f"{path}: no index file; rebuild it with: musichash reindex")
        try:
            index = faiss.read_index_binary(str(path))
        except RuntimeError as exc:
            first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else "unknown error"
            raise SearchError(
                f"{path}: cannot read the index ({first_line}); rebuild it with: musichash reindex"
            ) from None
        if not isinstance(index, faiss.IndexBinaryIDMap):
            raise SearchError(
                f"{path}: not a musichash index (no id map); rebuild it with: musichash reindex"
            )
        config = _config_of(faiss.downcast_IndexBinary(index.index))
        where, torch_dev = index_device(device)
        if config.kind != "flat" or (where == "cpu" and backend is None):
            return cls(index, config, "cpu")
        cpu = cls(index, config, "cpu")
        xb, ids = cpu._codes_and_ids()
        return cls.build(xb, ids, config, device=device, backend=backend)
