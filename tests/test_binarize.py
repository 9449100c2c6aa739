"""Tests for the interim linear binarisation of backbone features (pure numpy)."""

from __future__ import annotations

import numpy as np
import pytest

from musichash.errors import MusichashError
from musichash.models.binarizer import (
    BITS,
    KINDS,
    Binarizer,
    BinarizerError,
    hamming,
    unpack,
)
from musichash.train import fit_binarizer

N, D, RANK, CLUSTERS = 1000, 128, 32, 20


def clustered_features(seed: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """A low-rank Gaussian mixture: ``x: float32 [N, D]``, ``labels: int [N]``.

    Cluster centres and within-cluster spread live in a ``RANK``-dim latent
    space, mapped linearly to ``D`` dims plus a little isotropic noise and an
    offset (so centering matters).
    """
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((CLUSTERS, RANK))
    labels = rng.integers(0, CLUSTERS, N)
    z = centres[labels] + 0.8 * rng.standard_normal((N, RANK))
    mix = rng.standard_normal((RANK, D)) / np.sqrt(RANK)
    x = z @ mix + 0.1 * rng.standard_normal((N, D)) + 3.0
    return x.astype(np.float32), labels


@pytest.fixture(scope="module")
def data() -> tuple[np.ndarray, np.ndarray]:
    return clustered_features()


@pytest.fixture(scope="module")
def fitted(data) -> dict[str, Binarizer]:
    x, _ = data
    return {kind: fit_binarizer.fit(x, 32, kind, seed=0, feature="synthetic") for kind in KINDS}


def precision_at_10(codes: np.ndarray, labels: np.ndarray) -> float:
    """Brute-force precision@10 by Hamming distance, same cluster = relevant."""
    dist = hamming(codes[:, None, :], codes[None, :, :]).astype(np.float64)
    np.fill_diagonal(dist, np.inf)
    top = np.argsort(dist, axis=1, kind="stable")[:, :10]
    return float((labels[top] == labels[:, None]).mean())


# ---------------------------------------------------------------------------
# codes


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("bits", BITS)
def test_codes_are_packed_and_match_projection_signs(data, kind, bits):
    x = data[0][:200]
    b = fit_binarizer.fit(x, bits, kind, seed=0, n_iter=3)
    codes = b.encode(x)
    proj = b.project(x)
    assert codes.dtype == np.uint8 and codes.shape == (200, bits // 8)
    assert proj.dtype == np.float32 and proj.shape == (200, bits)
    np.testing.assert_array_equal(unpack(codes), (proj > 0).astype(np.uint8))


def test_packing_is_big_endian_like_faiss(fitted, data):
    b = fitted["itq"]
    x = data[0][:50]
    first_bit = b.project(x)[:, 0] > 0
    np.testing.assert_array_equal((b.encode(x)[:, 0] & 0x80) > 0, first_bit)


def test_single_vector_encodes_as_one_row(fitted, data):
    x = data[0]
    b = fitted["itq"]
    np.testing.assert_array_equal(b.encode(x[7]), b.encode(x[7:8]))


def test_hamming_matches_unpacked_bits(fitted, data):
    x = data[0]
    a, c = fitted["itq"].encode(x[:100]), fitted["itq"].encode(x[100:200])
    expected = (unpack(a) != unpack(c)).sum(axis=1)
    np.testing.assert_array_equal(hamming(a, c), expected)
    pairs = hamming(a[:, None], c[None])
    assert pairs.shape == (100, 100) and pairs.dtype == np.int32
    np.testing.assert_array_equal(np.diag(pairs), expected)
    assert (hamming(a, a) == 0).all()


# ---------------------------------------------------------------------------
# ITQ


def test_itq_uses_the_same_pca_as_pca_sign(fitted):
    np.testing.assert_allclose(fitted["itq"].components, fitted["pca_sign"].components, atol=1e-6)
    np.testing.assert_array_equal(fitted["pca_sign"].rotation, np.eye(32, dtype=np.float32))


def test_itq_loss_is_non_increasing_and_below_pca_sign(fitted, data):
    x = data[0]
    history = np.array(fitted["itq"].summary.history)
    assert len(history) == 50 + 1
    assert (np.diff(history) <= 1e-9 * history[0]).all()
    assert history[-1] < history[0]
    itq_loss = fitted["itq"].quantization_loss(x)
    pca_loss = fitted["pca_sign"].quantization_loss(x)
    assert itq_loss <= pca_loss
    np.testing.assert_allclose(itq_loss, fitted["itq"].summary.loss, rtol=1e-4)


def test_itq_rotation_stays_orthogonal(fitted):
    r = fitted["itq"].rotation.astype(np.float64)
    np.testing.assert_allclose(r.T @ r, np.eye(32), atol=1e-5)


# ---------------------------------------------------------------------------
# code quality on clustered data


@pytest.mark.parametrize("kind", ["pca_sign", "itq"])
def test_bits_are_roughly_balanced_on_fit_data(fitted, data, kind):
    # Each bit should split the fit data roughly in half: mean in [0.3, 0.7].
    means = unpack(fitted[kind].encode(data[0])).mean(axis=0)
    assert means.min() >= 0.3 and means.max() <= 0.7


def test_itq_beats_lsh_at_precision_10(fitted, data):
    x, labels = data
    p_itq = precision_at_10(fitted["itq"].encode(x), labels)
    p_lsh = precision_at_10(fitted["lsh"].encode(x), labels)
    assert p_itq >= p_lsh
    # Clusters are well separated, so every method is far above chance (1/20).
    assert p_lsh > 3 / CLUSTERS


@pytest.mark.parametrize("kind", KINDS)
def test_noisy_copy_stays_within_a_few_bits(fitted, data, kind):
    x = data[0]
    rng = np.random.default_rng(5)
    noisy = x + 0.05 * rng.standard_normal(x.shape).astype(np.float32)
    shuffled = x[rng.permutation(len(x))]
    b = fitted[kind]
    codes = b.encode(x)
    near_noisy = (hamming(codes, b.encode(noisy)) <= 3).mean()
    near_random = (hamming(codes, b.encode(shuffled)) <= 3).mean()
    assert near_noisy >= 0.9
    assert near_random <= 0.1


def test_standardize_makes_codes_invariant_to_feature_scales(data):
    x = data[0][:300]
    scales = np.random.default_rng(3).uniform(0.01, 100.0, D).astype(np.float32)
    a = fit_binarizer.fit(x, 32, "itq", seed=0, standardize=True)
    b = fit_binarizer.fit(x * scales, 32, "itq", seed=0, standardize=True)
    assert not np.allclose(b.scale, 1.0)
    agree = (unpack(a.encode(x)) == unpack(b.encode(x * scales))).mean()
    assert agree >= 0.99


# ---------------------------------------------------------------------------
# determinism and persistence


@pytest.mark.parametrize("kind", KINDS)
def test_fit_is_deterministic_for_a_seed(data, kind):
    x = data[0][:300]
    a = fit_binarizer.fit(x, 32, kind, seed=7, n_iter=10)
    b = fit_binarizer.fit(x, 32, kind, seed=7, n_iter=10)
    for name in ("mean", "scale", "components", "rotation"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name))
    if kind != "pca_sign":
        c = fit_binarizer.fit(x, 32, kind, seed=8, n_iter=10)
        assert not np.array_equal(a.encode(x), c.encode(x))


def test_fitted_arrays_are_read_only(fitted):
    with pytest.raises(ValueError):
        fitted["itq"].rotation[0, 0] = 2.0


@pytest.mark.parametrize("kind", KINDS)
def test_save_load_round_trip(tmp_path, fitted, data, kind):
    x = data[0]
    path = tmp_path / f"{kind}.safetensors"
    fitted[kind].save(path)
    loaded = Binarizer.load(path)
    np.testing.assert_array_equal(loaded.encode(x), fitted[kind].encode(x))
    assert (loaded.kind, loaded.bits, loaded.dim, loaded.feature) == (kind, 32, D, "synthetic")
    assert loaded.summary == fitted[kind].summary
    assert loaded.summary.n == N and loaded.summary.seed == 0


def test_save_stores_readable_metadata(tmp_path, fitted):
    from safetensors import safe_open

    path = tmp_path / "b.safetensors"
    fitted["itq"].save(path)
    with safe_open(str(path), framework="numpy") as f:
        meta = f.metadata()
        assert set(f.keys()) == {"mean", "scale", "components", "rotation"}
    assert meta["kind"] == "itq" and meta["bits"] == "32" and meta["dim"] == str(D)
    assert meta["feature"] == "synthetic"


def test_load_missing_file(tmp_path):
    path = tmp_path / "none.safetensors"
    with pytest.raises(BinarizerError) as e:
        Binarizer.load(path)
    assert str(e.value) == (
        f"{path}: binarizer file not found; fit one with musichash.train.fit_binarizer.fit(...) and save it there"
    )
    assert isinstance(e.value, MusichashError)


@pytest.mark.parametrize("damage", ["garbage", "truncated", "foreign"])
def test_load_corrupt_file(tmp_path, fitted, damage):
    path = tmp_path / "b.safetensors"
    if damage == "garbage":
        path.write_bytes(b"\x00\x01 this is not a safetensors file")
    elif damage == "truncated":
        fitted["itq"].save(path)
        path.write_bytes(path.read_bytes()[:-100])
    else:
        from safetensors.numpy import save_file

        save_file({"weight": np.zeros((2, 2), np.float32)}, str(path))
    with pytest.raises(BinarizerError) as e:
        Binarizer.load(path)
    assert str(e.value) == (
        f"{path}: not a valid binarizer file (corrupt or truncated);"
        " fit the binarizer again and save it"
    )


def test_encode_wrong_dimension(fitted, data):
    x = data[0]
    with pytest.raises(BinarizerError) as e:
        fitted["itq"].encode(x[:, :100])
    assert str(e.value) == (
        "features have 100 dimensions but the binarizer was fitted on 128-dimensional"
        " synthetic features; extract features with the same backbone, or fit a new binarizer"
    )


# ---------------------------------------------------------------------------
# bad fit arguments


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (
            {"kind": "pq"},
            "binarizer kind must be one of pca_sign, itq, lsh, lda_itq (got 'pq')",
        ),
        ({"bits": 24}, "bits must be one of 16, 32, 48, 64, 128 (got 24)"),
        (
            {"kind": "lda_itq"},
            "an lda_itq binarizer is fitted on clean and degraded pairs;"
            " use fit_binarizer.fit_pairs(x_clean, x_aug, bits)",
        ),
        (
            {"x": np.zeros((10, 128), np.float32)},
            "fitting a 32-bit itq binarizer needs at least 33 feature vectors (got 10);"
            " fit on more segments",
        ),
        (
            {"x": np.zeros((100, 20), np.float32)},
            "cannot make 32-bit codes from 20-dimensional features; use at most 16 bits,"
            " or a wider feature",
        ),
        (
            {"x": np.full((100, 128), np.nan, np.float32)},
            "features contain NaN or infinite values; drop those segments before fitting",
        ),
    ],
)
def test_fit_rejects_bad_arguments(data, kwargs, message):
    args = {"x": data[0], "bits": 32, "kind": "itq"} | kwargs
    with pytest.raises(BinarizerError) as e:
        fit_binarizer.fit(**args)
    assert str(e.value) == message


# ---------------------------------------------------------------------------
# lda_itq: fitted on clean / degraded pairs


def nuisance_pairs(seed: int = 3, n: int = 2000) -> tuple[np.ndarray, np.ndarray]:
    """``x, x_aug: float32 [n, 64]``: content in 48 dims of moderate spread, and
    16 dims of large spread that degradation mostly rewrites (as loudness- or
    noise-floor-like features do), so PCA ranks the nuisance first."""
    # The same rotation for every seed, to hide the split from axis-aligned tricks.
    mix = np.linalg.qr(np.random.default_rng(0).standard_normal((64, 64)))[0]
    rng = np.random.default_rng(seed)
    content = rng.standard_normal((n, 48))
    nuisance = 4.0 * rng.standard_normal((n, 16))
    x = np.hstack([content, nuisance]) @ mix + 1.0
    moved = np.hstack([0.1 * rng.standard_normal((n, 48)), 4.0 * rng.standard_normal((n, 16))])
    return x.astype(np.float32), (x + moved @ mix).astype(np.float32)


@pytest.fixture(scope="module")
def pairs() -> tuple[np.ndarray, np.ndarray]:
    return nuisance_pairs()


@pytest.mark.parametrize("bits", [16, 32])
def test_lda_itq_keeps_degraded_copies_closer_than_itq(pairs, bits):
    x, x_aug = pairs
    robust = fit_binarizer.fit_pairs(x, x_aug, bits, seed=0)
    plain = fit_binarizer.fit(x, bits, "itq", seed=0)
    test, test_aug = nuisance_pairs(seed=4, n=500)  # fresh pairs: not the fit data
    d_robust = hamming(robust.encode(test), robust.encode(test_aug)).mean()
    d_plain = hamming(plain.encode(test), plain.encode(test_aug)).mean()
    assert d_robust < 0.5 * d_plain
    # ... without collapsing: unrelated items stay about half the bits apart
    assert hamming(robust.encode(test), robust.encode(test[::-1])).mean() > 0.35 * bits


def test_lda_itq_tends_to_itq_as_the_ridge_grows(data):
    """When the ridge swamps the within-pair scatter, the generalised problem
    is plain PCA, so the projection spans the same subspace as ITQ's."""
    x = data[0]
    x_aug = x + 0.01 * np.random.default_rng(0).standard_normal(x.shape).astype(np.float32)
    robust = fit_binarizer.fit_pairs(x, x_aug, 16, seed=0, ridge=1e4)
    plain = fit_binarizer.fit(x, 16, "itq", seed=0)
    q1 = np.linalg.qr(robust.components)[0]
    q2 = np.linalg.qr(plain.components)[0]
    cosines = np.linalg.svd(q1.T @ q2, compute_uv=False)
    assert cosines.min() > 0.99


def test_lda_itq_saves_and_loads_with_its_ridge(tmp_path, pairs):
    x, x_aug = pairs
    b = fit_binarizer.fit_pairs(x, x_aug, 32, seed=5, n_iter=10, ridge=0.2, feature="pool5")
    b.save(tmp_path / "lda.safetensors")
    loaded = Binarizer.load(tmp_path / "lda.safetensors")
    np.testing.assert_array_equal(loaded.encode(x_aug), b.encode(x_aug))
    assert (loaded.kind, loaded.bits, loaded.feature) == ("lda_itq", 32, "pool5")
    assert loaded.summary == b.summary
    assert (b.summary.n, b.summary.seed, b.summary.ridge, len(b.summary.history)) == (2000, 5, 0.2, 11)


def test_lda_itq_is_deterministic_and_balanced(pairs):
    x, x_aug = pairs
    a = fit_binarizer.fit_pairs(x, x_aug, 32, seed=1)
    b = fit_binarizer.fit_pairs(x, x_aug, 32, seed=1)
    np.testing.assert_array_equal(a.encode(x), b.encode(x))
    assert np.abs(unpack(a.encode(x)).mean(axis=0) - 0.5).max() < 0.1


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (
            {"x_aug": np.zeros((10, 64), np.float32)},
            "clean and degraded features must be matched row by row;"
            " got shapes (2000, 64) and (10, 64)",
        ),
        ({"ridge": 0.0}, "ridge must be a positive number (got 0.0)"),
        (
            {"x_aug": np.full((2000, 64), np.inf, np.float32)},
            "degraded features contain NaN or infinite values; drop those pairs before fitting",
        ),
        ({"bits": 128}, "cannot make 128-bit codes from 64-dimensional features; use at most 64 bits,"
                        " or a wider feature"),
    ],
)
def test_fit_pairs_rejects_bad_arguments(pairs, kwargs, message):
    args = {"x_clean": pairs[0], "x_aug": pairs[1], "bits": 32} | kwargs
    with pytest.raises(BinarizerError) as e:
        fit_binarizer.fit_pairs(**args)
    assert str(e.value) == message
