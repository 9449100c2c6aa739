"""The torch Hamming k-NN (GPU search without faiss-gpu), checked against brute force and FAISS.

Exact searches may keep different codes among those tied at the k-th distance, so results are
compared as: the same distances, and every id returned at its true distance, each once.
"""

import faiss
import numpy as np
import pytest
import torch

from musichash import devices
from musichash.search import torch_knn
from musichash.search.faiss_index import MISSING_DISTANCE, BinaryIndex, IndexConfig, hamming_distances, hamming_knn
from musichash.search.torch_knn import TorchFlat


def codes(rng, n: int, bits: int, centers: int = 8, noise: float = 0.1) -> np.ndarray:
    """Clustered codes with many exact ties (few centres, light noise)."""
    c = rng.random((centers, bits)) < 0.5
    x = c[rng.integers(0, centers, n)] ^ (rng.random((n, bits)) < noise)
    return np.packbits(x, axis=1)


def assert_same_neighbours(xq, xb, D, I, k, ids=None):
    """D equals brute force's; each id is at its true distance, once per row; -1 only past the codes."""
    ids = np.arange(len(xb)) if ids is None else ids
    D0, _ = hamming_knn(xq, xb, k)
    np.testing.assert_array_equal(D, D0)
    row = {int(v): r for r, v in enumerate(ids)}
    dist = hamming_distances(xq, xb)
    for q in range(len(xq)):
        found = [int(i) for i in I[q] if i >= 0]
        assert len(found) == min(k, len(xb)) == len(set(found))
        assert [dist[q, row[i]] for i in found] == list(D[q, : len(found)])
    assert ((I == -1) == (D == MISSING_DISTANCE)).all()


@pytest.mark.parametrize("seed", range(6))
def test_torch_knn_finds_the_exact_neighbours(seed, monkeypatch):
    rng = np.random.default_rng(seed)
    bits = int(rng.choice([8, 16, 32, 64, 128, 256]))
    nb, nq, k = int(rng.integers(1, 900)), int(rng.integers(1, 60)), int(rng.integers(1, 40))
    xb, xq = codes(rng, nb, bits), codes(rng, nq, bits, noise=0.2)
    if seed % 2:  # small steps: many database blocks and query slices, merged
        monkeypatch.setattr(torch_knn, "_CPU_STEP_BYTES", 4 * 64 * 8)
    D, I = TorchFlat(xb, "cpu").search(xq, k)
    assert D.dtype == np.int32 and I.dtype == np.int64 and D.shape == I.shape == (nq, k)
    assert_same_neighbours(xq, xb, D, I, k)


def test_ties_come_in_position_order_and_k_past_the_codes_is_missing():
    xb = np.packbits(np.array([[1, 0, 0, 0, 0, 0, 0, 0]] * 3 + [[0] * 8], bool), axis=1)
    D, I = TorchFlat(xb, "cpu").search(xb[:1], 6)
    assert D.tolist() == [[0, 0, 0, 1, MISSING_DISTANCE, MISSING_DISTANCE]]
    assert I.tolist() == [[0, 1, 2, 3, -1, -1]]
    D, I = TorchFlat(xb[:0], "cpu").search(xb, 2)
    assert (I == -1).all() and (D == MISSING_DISTANCE).all()


def test_signs_unpack_as_numpy_does():
    x = np.random.default_rng(0).integers(0, 256, (5, 4), dtype=np.uint8)
    s = torch_knn.signs(x, torch.device("cpu"), torch.float32).numpy()
    np.testing.assert_array_equal(s > 0, np.unpackbits(x, axis=1).astype(bool))


def test_torch_backed_index_searches_as_faiss_does(tmp_path):
    rng = np.random.default_rng(7)
    xb, xq = codes(rng, 1500, 64), codes(rng, 80, 64, noise=0.2)
    ids = np.arange(len(xb), dtype=np.int64) * 3 + 11
    cpu = BinaryIndex.build(xb, ids, IndexConfig("flat", 64), device="cpu")
    tor = BinaryIndex.build(xb, ids, IndexConfig("flat", 64), device="cpu", backend="torch")
    assert cpu.backend == "faiss" and tor.backend == "torch:cpu"
    D0, _ = cpu.search(xq, 25)
    D1, I1 = tor.search(xq, 25)
    np.testing.assert_array_equal(D0, D1)
    assert_same_neighbours(xq, xb, D1, I1, 25, ids)
    more = codes(rng, 40, 64)
    tor.add(more, np.arange(40, dtype=np.int64) + 10_000)
    all_xb, all_ids = np.concatenate([xb, more]), np.concatenate([ids, np.arange(40) + 10_000])
    assert_same_neighbours(xq, all_xb, *tor.search(xq, 25), 25, all_ids)
    tor.save(tmp_path / "i.faiss")  # written as a FAISS index, read back by either
    back = BinaryIndex.load(tmp_path / "i.faiss", device="cpu", backend="torch")
    assert back.backend == "torch:cpu" and len(back) == len(all_xb)
    np.testing.assert_array_equal(back.search(xq, 25)[0], BinaryIndex.load(tmp_path / "i.faiss", "cpu").search(xq, 25)[0])


def test_a_cuda_torch_with_faiss_cpu_searches_on_torch(monkeypatch):
    """``auto`` and ``cuda`` pick the torch GPU search where FAISS has no GPU but torch has CUDA."""
    monkeypatch.delattr(faiss, "GpuIndexBinaryFlat", raising=False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert devices.index_device("auto") == ("cuda", "cuda")
    assert devices.index_device("cuda:1") == ("cuda", "cuda:1")
    assert devices.index_device("cpu") == ("cpu", None)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert devices.index_device("auto") == ("cpu", None)
    with pytest.raises(devices.DeviceError, match="no GPU support"):
        devices.index_device("cuda")


def test_faiss_gpu_is_preferred_to_torch(monkeypatch):
    monkeypatch.setattr(faiss, "GpuIndexBinaryFlat", object, raising=False)
    monkeypatch.setattr(faiss, "get_num_gpus", lambda: 1)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert devices.index_device("auto") == ("cuda", None)


def test_an_unknown_backend_is_refused():
    from musichash.search.faiss_index import SearchError

    with pytest.raises(SearchError, match="unknown search backend 'gpu'"):
        BinaryIndex.build(np.zeros((2, 8), np.uint8), backend="gpu")


@pytest.mark.gpu
def test_torch_knn_on_cuda_matches_the_cpu():
    rng = np.random.default_rng(3)
    xb, xq = codes(rng, 20_000, 64), codes(rng, 500, 64, noise=0.2)
    D, I = TorchFlat(xb, "cuda").search(xq, 100)
    assert_same_neighbours(xq, xb, D, I, 100)
    index = BinaryIndex.build(xb, device="cuda")  # FAISS's GPU or torch's, whichever is installed
    assert index.device == "cuda"
    D1, I1 = index.search(xq, 100)
    np.testing.assert_array_equal(D1, BinaryIndex.build(xb, device="cpu").search(xq, 100)[0])
    assert_same_neighbours(xq, xb, D1, I1, 100)
    wide = codes(rng, 3000, 1024)  # half precision still exact at 1024 bits
    assert_same_neighbours(wide[:50], wide, *TorchFlat(wide, "cuda").search(wide[:50], 10), 10)
