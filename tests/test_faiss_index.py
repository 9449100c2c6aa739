"""The FAISS binary index wrapper, checked against numpy brute force."""

from dataclasses import dataclass

import faiss
import numpy as np
import pytest
import torch

from musichash.devices import DeviceError
from musichash.search.faiss_index import (
    INDEX_TYPES,
    MISSING_DISTANCE,
    BinaryIndex,
    IndexConfig,
    SearchError,
    hamming_distances,
    hamming_knn,
    recall_at_k,
)


@pytest.fixture(autouse=True)
def one_faiss_thread():
    # HNSW construction is only reproducible single-threaded, and on small
    # machines OpenMP spinning costs more than it saves at these sizes.
    before = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    yield
    faiss.omp_set_num_threads(before)


@dataclass(frozen=True)
class SyntheticCodes:
    """Clustered codes, like segments of similar tracks; queries are noisy copies of base codes."""

    xb: np.ndarray  # uint8 [nb, bits/8]
    xq: np.ndarray  # uint8 [nq, bits/8]
    bits: int

    @classmethod
    def make(cls, bits: int, nb: int = 2000, nq: int = 100, seed: int = 1338) -> "SyntheticCodes":
        rng = np.random.default_rng(seed)
        centers = rng.random((64, bits)) < 0.5
        xb = centers[rng.integers(0, 64, nb)] ^ (rng.random((nb, bits)) < 0.15)
        xq = xb[rng.integers(0, nb, nq)] ^ (rng.random((nq, bits)) < 0.05)
        return cls(np.packbits(xb, axis=1), np.packbits(xq, axis=1), bits)


@pytest.fixture(scope="module")
def ds64() -> SyntheticCodes:
    return SyntheticCodes.make(64)


@pytest.fixture(scope="module")
def gt64(ds64):
    return hamming_knn(ds64.xq, ds64.xb, 10)


def assert_valid(index, ds, D, I, ids=None):
    """Results are sorted, and each distance is the true distance to the id returned."""
    ids = np.arange(len(ds.xb)) if ids is None else ids
    row_of = {int(v): r for r, v in enumerate(ids)}
    assert D.dtype == np.int32 and I.dtype == np.int64
    assert (np.diff(D, axis=1) >= 0).all()
    assert ((I == -1) == (D == MISSING_DISTANCE)).all()
    dist = hamming_distances(ds.xq, ds.xb)
    for q, (drow, irow) in enumerate(zip(D, I)):
        for d, i in zip(drow, irow):
            if i >= 0:
                assert dist[q, row_of[int(i)]] == d


# -- brute force reference ---------------------------------------------------


def test_hamming_knn_breaks_ties_by_smaller_index():
    xb = np.array([[0b1111], [0b0001], [0b0000], [0b0001], [0b0000]], dtype=np.uint8)
    xq = np.array([[0b0000]], dtype=np.uint8)
    D, I = hamming_knn(xq, xb, 6)
    assert D.tolist() == [[0, 0, 1, 1, 4, MISSING_DISTANCE]]
    assert I.tolist() == [[2, 4, 1, 3, 0, -1]]


def test_hamming_distances_match_unpackbits(ds64):
    bits_q = np.unpackbits(ds64.xq[:7], axis=1).astype(int)
    bits_b = np.unpackbits(ds64.xb[:50], axis=1).astype(int)
    expected = (bits_q[:, None, :] != bits_b[None, :, :]).sum(-1)
    assert (hamming_distances(ds64.xq[:7], ds64.xb[:50]) == expected).all()


def test_recall_at_k():
    I_exact = np.array([[1, 2, 3], [4, 5, -1]])
    I_approx = np.array([[3, 9, 1], [5, -1, -1]])
    assert recall_at_k(I_approx, I_exact) == pytest.approx(3 / 5)
    assert recall_at_k(I_approx, I_exact, k=1) == pytest.approx(0 / 2)


# -- flat is exact ------------------------------------------------------------


@pytest.mark.parametrize("bits", [16, 64, 128])
def test_flat_equals_brute_force(bits):
    ds = SyntheticCodes.make(bits, nb=1000, nq=50)
    index = BinaryIndex.build(ds.xb, config=IndexConfig("flat", bits), device="cpu")
    D, I = index.search(ds.xq, 10)
    De, Ie = hamming_knn(ds.xq, ds.xb, 10)
    assert (D == De).all()
    # Where a distance is held by a single code, the id is determined too.
    dist = hamming_distances(ds.xq, ds.xb)
    unique = (dist[:, None, :] == De[:, :, None]).sum(-1) == 1
    assert unique.any()
    assert (I[unique] == Ie[unique]).all()


def test_build_infers_flat_config_from_code_width(ds64):
    index = BinaryIndex.build(ds64.xb, device="cpu")
    assert (index.kind, index.bits, index.ntotal, index.device) == ("flat", 64, 2000, "cpu")


# -- approximate kinds ----------------------------------------------------------

# Measured recall@10 on SyntheticCodes.make(64) with default parameters,
# single-threaded: hnsw 0.952, ivf 0.991, multihash with nflip=3 0.937
# (the default nflip=1 only reaches 0.376: it is meant for near duplicates).
RECALL_BOUNDS = {
    "hnsw": (IndexConfig("hnsw", 64), 0.90),
    "ivf": (IndexConfig("ivf", 64), 0.95),
    "multihash": (IndexConfig("multihash", 64, nflip=3), 0.85),
}


@pytest.mark.parametrize("kind", sorted(RECALL_BOUNDS))
def test_approximate_recall(kind, ds64, gt64):
    config, bound = RECALL_BOUNDS[kind]
    index = BinaryIndex.build(ds64.xb, config=config, device="cpu")
    D, I = index.search(ds64.xq, 10)
    assert_valid(index, ds64, D, I)
    assert recall_at_k(I, gt64[1]) >= bound
    # The query's own source code is 3 bits away on average: always found.
    assert (D[:, 0] == gt64[0][:, 0]).all()


def test_ivf_recall_never_drops_as_nprobe_grows(ds64, gt64):
    index = BinaryIndex.build(ds64.xb, config=IndexConfig("ivf", 64), device="cpu")
    previous_D, previous_recall = None, 0.0
    for nprobe in (1, 2, 4, 8, 16):
        index.set_search_params(nprobe=nprobe)
        assert index.config.nprobe == nprobe
        D, I = index.search(ds64.xq, 10)
        recall = recall_at_k(I, gt64[1])
        assert recall >= previous_recall
        if previous_D is not None:
            # Probing more lists sees a superset of codes.
            assert (D <= previous_D).all()
        previous_D, previous_recall = D, recall
    index.set_search_params(nprobe=index.config.nlist)
    D, _ = index.search(ds64.xq, 10)
    assert (D == gt64[0]).all()


@pytest.mark.parametrize("nflip", [0, 1, 2])
def test_multihash_finds_every_code_within_its_guaranteed_radius(nflip, ds64, gt64):
    index = BinaryIndex.build(ds64.xb, config=IndexConfig("multihash", 64, nflip=nflip))
    assert index.config.nhash == 4 and index.config.hash_bits == 16
    D, _ = index.search(ds64.xq, 10)
    # Pigeonhole: a code this close differs in at most nflip bits in some chunk.
    radius = index.config.nhash * (nflip + 1) - 1
    close = gt64[0] <= radius
    assert close.any()
    assert (D[close] == gt64[0][close]).all()


def test_ivf_nlist_is_automatic():
    ds = SyntheticCodes.make(64, nb=10_000, nq=1)
    index = BinaryIndex.build(ds.xb, config=IndexConfig("ivf", 64), device="cpu")
    assert index.config.nlist == 128  # the power of two nearest sqrt(10000) = 100
    small = BinaryIndex.build(ds.xb[:1000], config=IndexConfig("ivf", 64), device="cpu")
    assert small.config.nlist == 25  # 32 would be nearest sqrt(1000), but every list needs 39 codes


def test_ivf_gives_its_codes_back_in_id_order(ds64, tmp_path):
    ids = np.random.default_rng(7).permutation(10**6)[: len(ds64.xb)].astype(np.int64)
    index = BinaryIndex.build(ds64.xb, ids, IndexConfig("ivf", 64, nlist=16), device="cpu")
    for idx in (index, _reloaded(index, tmp_path)):
        xb, got = idx._codes_and_ids()
        assert np.array_equal(got, ids) and np.array_equal(xb, ds64.xb)


def _reloaded(index, tmp_path):
    index.save(tmp_path / "ivf.faiss")
    return BinaryIndex.load(tmp_path / "ivf.faiss", device="cpu")


# -- ids, padding, round trips ---------------------------------------------------


@pytest.mark.parametrize("kind", INDEX_TYPES)
def test_custom_ids_are_returned(kind, ds64):
    rng = np.random.default_rng(1338)
    ids = rng.choice(10**12, size=len(ds64.xb), replace=False).astype(np.int64)
    plain = BinaryIndex.build(ds64.xb, config=IndexConfig(kind, 64), device="cpu")
    custom = BinaryIndex.build(ds64.xb, ids, IndexConfig(kind, 64), device="cpu")
    D0, I0 = plain.search(ds64.xq, 5)
    D1, I1 = custom.search(ds64.xq, 5)
    assert (D0 == D1).all()
    assert (I1 == np.where(I0 >= 0, ids[I0], -1)).all()


@pytest.mark.parametrize("kind", INDEX_TYPES)
def test_k_above_ntotal_pads_with_minus_one(kind, ds64):
    config = IndexConfig(kind, 64, nlist=1) if kind == "ivf" else IndexConfig(kind, 64)
    index = BinaryIndex.build(ds64.xb[:5], np.arange(100, 105), config, device="cpu")
    D, I = index.search(ds64.xb[:3], 8)
    assert D.shape == I.shape == (3, 8)
    assert (I[:, 0] == [100, 101, 102]).all() and (D[:, 0] == 0).all()
    assert (I[:, 5:] == -1).all() and (D[:, 5:] == MISSING_DISTANCE).all()


def test_empty_index_returns_only_padding():
    index = BinaryIndex.build(np.zeros((0, 8), np.uint8), config=IndexConfig("flat", 64))
    D, I = index.search(np.zeros((2, 8), np.uint8), 3)
    assert (I == -1).all() and (D == MISSING_DISTANCE).all()


def test_add_appends_codes(ds64):
    whole = BinaryIndex.build(ds64.xb, config=IndexConfig("flat", 64), device="cpu")
    parts = BinaryIndex.build(ds64.xb[:1200], config=IndexConfig("flat", 64), device="cpu")
    parts.add(ds64.xb[1200:], np.arange(1200, 2000))
    assert parts.ntotal == 2000
    D0, I0 = whole.search(ds64.xq, 10)
    D1, I1 = parts.search(ds64.xq, 10)
    assert (D0 == D1).all() and (I0 == I1).all()


# Only the parameters of the index's own kind are stored in the FAISS file.
ROUND_TRIP_CONFIGS = [
    IndexConfig("flat", 64),
    IndexConfig("hnsw", 64, hnsw_m=12, ef_search=50, ef_construction=30),
    IndexConfig("ivf", 64, nlist=20, nprobe=4),
    IndexConfig("multihash", 64, nhash=3, hash_bits=12, nflip=2),
]


@pytest.mark.parametrize("config", ROUND_TRIP_CONFIGS, ids=lambda c: c.kind)
def test_save_load_round_trip(config, ds64, tmp_path):
    kind = config.kind
    ids = np.arange(len(ds64.xb), dtype=np.int64) * 7 + 3
    index = BinaryIndex.build(ds64.xb, ids, config, device="cpu")
    path = tmp_path / "index" / f"{kind}.faiss"
    index.save(path)
    index.save(path)  # overwriting is fine
    loaded = BinaryIndex.load(path, device="cpu")
    assert list(path.parent.iterdir()) == [path]  # no temp file left behind
    assert loaded.config == index.config
    assert (loaded.kind, loaded.bits, loaded.ntotal) == (kind, 64, 2000)
    D0, I0 = index.search(ds64.xq, 10)
    D1, I1 = loaded.search(ds64.xq, 10)
    assert (D0 == D1).all() and (I0 == I1).all()


@pytest.mark.parametrize("kind", ["flat", "hnsw"])
def test_range_search_is_exact_and_inclusive(kind, ds64):
    ids = np.arange(len(ds64.xb), dtype=np.int64) + 10
    index = BinaryIndex.build(ds64.xb, ids, IndexConfig(kind, 64), device="cpu")
    lims, D, I = index.range_search(ds64.xq, 6)
    dist = hamming_distances(ds64.xq, ds64.xb)
    assert lims.shape == (len(ds64.xq) + 1,) and lims[-1] == len(D) == len(I)
    for q in range(len(ds64.xq)):
        hits = np.flatnonzero(dist[q] <= 6)
        order = np.lexsort((hits, dist[q, hits]))
        assert I[lims[q] : lims[q + 1]].tolist() == (hits[order] + 10).tolist()
        assert D[lims[q] : lims[q + 1]].tolist() == dist[q, hits[order]].tolist()
    assert (D == 6).any()


# -- errors ------------------------------------------------------------------------


def test_wrong_code_width_raises(ds64):
    index = BinaryIndex.build(ds64.xb, config=IndexConfig("flat", 64), device="cpu")
    with pytest.raises(SearchError) as exc:
        index.search(np.zeros((1, 16), np.uint8), 5)
    assert str(exc.value) == (
        "queries are 128-bit codes (16 bytes per row) but the index holds 64-bit codes "
        "(8 bytes); use the model that built the index, or rebuild the index with: "
        "musichash reindex"
    )
    with pytest.raises(SearchError, match=r"^codes are 128-bit codes"):
        BinaryIndex.build(np.zeros((4, 16), np.uint8), config=IndexConfig("flat", 64))


def test_unpacked_codes_raise_with_packing_hint():
    with pytest.raises(SearchError) as exc:
        BinaryIndex.build(np.zeros((4, 64), bool), config=IndexConfig("flat", 64))
    assert str(exc.value) == (
        "codes must be packed uint8 [n, 8], got dtype bool; "
        "pack bits with np.packbits(codes, axis=1)"
    )


def test_unknown_kind_raises():
    with pytest.raises(SearchError) as exc:
        IndexConfig("lsh", 64)
    assert str(exc.value) == "unknown index type 'lsh'; choose one of: flat, hnsw, ivf, multihash"


def test_bits_not_a_multiple_of_8_raises():
    with pytest.raises(SearchError) as exc:
        IndexConfig("flat", 60)
    assert str(exc.value) == (
        "code width of 60 bits is not supported; FAISS binary indexes need a positive "
        "multiple of 8 bits (the models emit 16, 32, 48, 64 or 128)"
    )


def test_cuda_without_gpu_support_raises(ds64, monkeypatch):
    monkeypatch.delattr(faiss, "GpuIndexBinaryFlat", raising=False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # else torch searches on the GPU
    with pytest.raises(DeviceError) as exc:
        BinaryIndex.build(ds64.xb, device="cuda")
    assert str(exc.value) == (
        "device 'cuda' asked for, but the installed FAISS has no GPU support (faiss-cpu); "
        "install faiss-gpu, or use --device cpu"
    )
    assert BinaryIndex.build(ds64.xb, device="auto").device == "cpu"


def test_cuda_without_visible_gpu_raises(ds64, monkeypatch):
    monkeypatch.setattr(faiss, "GpuIndexBinaryFlat", object, raising=False)
    monkeypatch.setattr(faiss, "get_num_gpus", lambda: 0)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(DeviceError) as exc:
        BinaryIndex.build(ds64.xb, device="cuda")
    assert str(exc.value) == (
        "device 'cuda' asked for, but FAISS sees no GPU; check the CUDA driver and "
        "CUDA_VISIBLE_DEVICES, or use --device cpu"
    )
    assert BinaryIndex.build(ds64.xb, device="auto").device == "cpu"


def test_ivf_with_too_few_codes_raises():
    codes = np.zeros((10, 8), np.uint8)
    with pytest.raises(SearchError) as exc:
        BinaryIndex.build(codes, config=IndexConfig("ivf", 64, nlist=32))
    assert str(exc.value) == (
        "ivf with nlist=32 needs at least 32 codes to train, got 10; "
        "lower nlist or leave it unset to choose one automatically"
    )


def test_load_missing_file_raises(tmp_path):
    path = tmp_path / "nope.faiss"
    with pytest.raises(SearchError) as exc:
        BinaryIndex.load(path)
    assert str(exc.value) == f"{path}: no index file; rebuild it with: musichash reindex"


def test_load_corrupt_file_raises(tmp_path):
    path = tmp_path / "bad.faiss"
    path.write_bytes(b"not an index")
    with pytest.raises(SearchError, match=r"cannot read the index .*musichash reindex$"):
        BinaryIndex.load(path)


# -- GPU -----------------------------------------------------------------------------


@pytest.mark.gpu
def test_gpu_flat_matches_cpu_flat(ds64, tmp_path):
    if not hasattr(faiss, "GpuIndexBinaryFlat") or faiss.get_num_gpus() < 1:
        pytest.skip("the installed FAISS has no GPU support")
    ids = np.arange(len(ds64.xb), dtype=np.int64) + 5
    cpu = BinaryIndex.build(ds64.xb, ids, IndexConfig("flat", 64), device="cpu")
    gpu = BinaryIndex.build(ds64.xb, ids, IndexConfig("flat", 64), device="cuda")
    assert gpu.device == "cuda"
    D0, I0 = cpu.search(ds64.xq, 10)
    D1, I1 = gpu.search(ds64.xq, 10)
    assert (D0 == D1).all()
    dist = hamming_distances(ds64.xq, ds64.xb)
    assert (np.take_along_axis(dist, I1 - 5, axis=1) == D1).all()
    gpu.save(tmp_path / "gpu.faiss")
    back = BinaryIndex.load(tmp_path / "gpu.faiss", device="cpu")
    assert (back.search(ds64.xq, 10)[0] == D0).all()
