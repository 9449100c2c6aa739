"""Fitting the interim binarizers (``musichash.models.binarizer``): PCA, ITQ, LSH and LDA + ITQ.

Training-only: the fitted maps ship as safetensors files, and indexing and search
only load and apply them. The methods are described in ``musichash.models.binarizer``.
"""

from __future__ import annotations

import numpy as np

from musichash.models.binarizer import (
    _CHUNK,
    _MIN_STD,
    BITS,
    PAIR_KINDS,
    Binarizer,
    BinarizerError,
    FitSummary,
    _check_kind_bits,
    _loss,
    _signs,
)

__all__ = ["fit", "fit_pairs"]


def fit(
    x: np.ndarray,
    bits: int,
    kind: str = "itq",
    seed: int = 0,
    n_iter: int = 50,
    *,
    standardize: bool = False,
    feature: str = "",
) -> Binarizer:
    """Fit a binarizer on ``x: float [n, D]``.

    ``seed`` drives the ITQ initial rotation and the LSH projection, so a
    fit is deterministic for given data and seed.  ``n_iter`` is the
    number of ITQ iterations (ignored by the other kinds).  ``feature``
    names the backbone features (e.g. ``"musicnn-max_pool"``) so that
    mismatch errors can say which features are expected.
    """
    _check_kind_bits(kind, bits)
    if kind in PAIR_KINDS:
        raise BinarizerError(
            "an lda_itq binarizer is fitted on clean and degraded pairs;"
            " use fit_binarizer.fit_pairs(x_clean, x_aug, bits)"
        )
    x = _check_fit_input(x, bits, kind, n_iter)
    n, D = x.shape

    mean, cov = _mean_cov(x, need_cov=kind != "lsh")
    if standardize:
        std = np.sqrt(np.maximum(np.diag(cov) if cov is not None else _var(x, mean), 0.0))
        scale = np.where(std < _MIN_STD, 1.0, std)
    else:
        scale = np.ones(D)

    rng = np.random.default_rng(seed)
    if kind == "lsh":
        components = rng.standard_normal((D, bits))
    else:
        corr = cov / np.outer(scale, scale)
        components = _top_eigenvectors(corr, bits)
    rotation = np.eye(bits)

    V = _project64(x, mean, scale, components)
    if kind == "itq":
        rotation, history = _itq(V, _random_rotation(rng, bits), int(n_iter))
    else:
        history = [_loss(V)]

    return _fitted(
        kind, bits, (mean, scale, components, rotation), feature, history,
        n=int(n), seed=int(seed), n_iter=int(n_iter) if kind == "itq" else 0, standardize=bool(standardize),
    )

def fit_pairs(
    x_clean: np.ndarray,
    x_aug: np.ndarray,
    bits: int,
    seed: int = 0,
    n_iter: int = 50,
    *,
    ridge: float = 0.1,
    feature: str = "",
) -> Binarizer:
    """Fit a robust ``lda_itq`` binarizer on matched pairs.

    ``x_clean, x_aug: float [n, D]``: row ``i`` of ``x_aug`` is a degraded
    view (noise, codec, filter, pitch, tempo, window offset, ...) of the
    segment in row ``i`` of ``x_clean``; a segment may appear in several
    rows. The directions are the top generalised eigenvectors of
    ``Sb w = λ (Sw + ridge·mean(eig(Sw))·I) w`` (see the module docstring;
    ``Sw`` is not centred, so a shift that degradation causes on average
    counts against a direction too); ``ridge > 0`` keeps directions that
    the pairs barely move from dominating by chance. ITQ (``seed``,
    ``n_iter``) then rotates the projected clean segments.
    """
    _check_kind_bits("lda_itq", bits)
    x_clean = _check_fit_input(x_clean, bits, "lda_itq", n_iter)
    x_aug = np.asarray(x_aug)
    if x_aug.shape != x_clean.shape:
        raise BinarizerError(
            f"clean and degraded features must be matched row by row; got shapes"
            f" {x_clean.shape} and {x_aug.shape}"
        )
    if not np.isfinite(x_aug).all():
        raise BinarizerError(
            "degraded features contain NaN or infinite values; drop those pairs before fitting"
        )
    if not (np.isfinite(ridge) and ridge > 0):
        raise BinarizerError(f"ridge must be a positive number (got {ridge})")
    n, D = x_clean.shape

    mean, sb = _mean_cov(x_clean, need_cov=True)
    sw = _pair_scatter(x_clean, x_aug)
    sw += ridge * max(np.trace(sw) / D, _MIN_STD) * np.eye(D)
    components = _top_generalized_eigenvectors(sb, sw, bits)
    scale = np.ones(D)
    V = _project64(x_clean, mean, scale, components)
    rotation, history = _itq(V, _random_rotation(np.random.default_rng(seed), bits), int(n_iter))
    return _fitted(
        "lda_itq", bits, (mean, scale, components, rotation), feature, history,
        n=int(n), seed=int(seed), n_iter=int(n_iter), standardize=False, ridge=float(ridge),
    )

def _fitted(kind: str, bits: int, arrays: tuple, feature: str, history: list[float], **summary) -> Binarizer:
    mean, scale, components, rotation = arrays
    return Binarizer(
        kind=kind, bits=int(bits), mean=mean, scale=scale, components=components, rotation=rotation,
        feature=str(feature),
        summary=FitSummary(loss=float(history[-1]), history=tuple(float(h) for h in history), **summary),
    )


def _check_fit_input(x: np.ndarray, bits: int, kind: str, n_iter: int) -> np.ndarray:
    if int(n_iter) < 0:
        raise BinarizerError(f"n_iter must be 0 or more (got {n_iter})")
    x = np.asarray(x)
    if x.ndim != 2 or not np.issubdtype(x.dtype, np.number):
        raise BinarizerError(
            f"fit needs a 2-d float array of features [n, D], got shape {x.shape}"
            f" and dtype {x.dtype}"
        )
    n, D = x.shape
    if bits > D:
        fits = [b for b in BITS if b <= D]
        fix = f"use at most {fits[-1]} bits, or a wider feature" if fits else (
            f"codes need features of at least {BITS[0]} dimensions"
        )
        raise BinarizerError(f"cannot make {bits}-bit codes from {D}-dimensional features; {fix}")
    min_n = 2 if kind == "lsh" else bits + 1
    if n < min_n:
        raise BinarizerError(
            f"fitting a {bits}-bit {kind} binarizer needs at least {min_n} feature vectors"
            f" (got {n}); fit on more segments"
        )
    if not np.isfinite(x).all():
        raise BinarizerError(
            "features contain NaN or infinite values; drop those segments before fitting"
        )
    return x


def _mean_cov(x: np.ndarray, need_cov: bool) -> tuple[np.ndarray, np.ndarray | None]:
    """Mean ``[D]`` and (optionally) covariance ``[D, D]`` of ``x``, in chunks."""
    n, D = x.shape
    mean = np.zeros(D)
    for i in range(0, n, _CHUNK):
        mean += x[i : i + _CHUNK].sum(axis=0, dtype=np.float64)
    mean /= n
    if not need_cov:
        return mean, None
    cov = np.zeros((D, D))
    for i in range(0, n, _CHUNK):
        xc = x[i : i + _CHUNK].astype(np.float64) - mean
        cov += xc.T @ xc
    return mean, cov / n


def _pair_scatter(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Uncentred scatter of the differences, ``mean((a - b)ᵀ(a - b))`` ``[D, D]``, in chunks."""
    sw = np.zeros((a.shape[1], a.shape[1]))
    for i in range(0, a.shape[0], _CHUNK):
        d = a[i : i + _CHUNK].astype(np.float64) - b[i : i + _CHUNK]
        sw += d.T @ d
    return sw / a.shape[0]


def _var(x: np.ndarray, mean: np.ndarray) -> np.ndarray:
    var = np.zeros_like(mean)
    for i in range(0, x.shape[0], _CHUNK):
        var += ((x[i : i + _CHUNK].astype(np.float64) - mean) ** 2).sum(axis=0)
    return var / x.shape[0]


def _top_eigenvectors(c: np.ndarray, k: int) -> np.ndarray:
    """The ``k`` leading eigenvectors of symmetric ``c`` as columns ``[D, k]``.

    Eigenvectors are defined up to sign; fixing the sign (largest entry
    positive) makes a fit reproducible across LAPACK builds.
    """
    _, vecs = np.linalg.eigh(c)
    top = vecs[:, ::-1][:, :k]
    idx = np.abs(top).argmax(axis=0)
    signs = np.sign(top[idx, np.arange(k)])
    return top * np.where(signs == 0, 1.0, signs)


def _top_generalized_eigenvectors(a: np.ndarray, b: np.ndarray, k: int) -> np.ndarray:
    """The ``k`` leading solutions of ``a w = λ b w`` (``b`` positive definite) as ``[D, k]``.

    Through the Cholesky factor ``b = L Lᵀ``: the eigenvectors ``u`` of
    ``L⁻¹ a L⁻ᵀ`` give ``w = L⁻ᵀ u``, normalised so that ``wᵀ b w = 1``.
    """
    try:
        lo = np.linalg.cholesky(b)
    except np.linalg.LinAlgError as e:
        raise BinarizerError(
            "the within-pair scatter is not positive definite; use a larger ridge"
        ) from e
    li = np.linalg.inv(lo)
    u = _top_eigenvectors(li @ a @ li.T, k)
    return li.T @ u


def _project64(x: np.ndarray, mean: np.ndarray, scale: np.ndarray, w: np.ndarray) -> np.ndarray:
    out = np.empty((x.shape[0], w.shape[1]))
    for i in range(0, x.shape[0], _CHUNK):
        out[i : i + _CHUNK] = ((x[i : i + _CHUNK].astype(np.float64) - mean) / scale) @ w
    return out


def _random_rotation(rng: np.random.Generator, k: int) -> np.ndarray:
    """A Haar-distributed random orthogonal ``[k, k]`` matrix."""
    q, r = np.linalg.qr(rng.standard_normal((k, k)))
    return q * np.where(np.diag(r) < 0, -1.0, 1.0)


def _itq(v: np.ndarray, r: np.ndarray, n_iter: int) -> tuple[np.ndarray, list[float]]:
    """Iterative Quantization: rotation ``[k, k]`` and the loss after each step.

    Each step can only lower ``||B - V R||²``: ``B = sign(V R)`` is optimal
    for fixed ``R``, and the Procrustes ``R`` is optimal for fixed ``B``.
    """
    vr = v @ r
    history = [_loss(vr)]
    for _ in range(n_iter):
        u, _, wt = np.linalg.svd(v.T @ _signs(vr))
        r = u @ wt
        vr = v @ r
        history.append(_loss(vr))
    return r, history
