"""Interim hash codes: a fitted linear binarisation of backbone features.

Until a trained deep hashing network exists, codes come from the float
features of a pretrained CNN (``x: float [n, D]``, one row per 3 s segment)
through one of these linear maps followed by a sign:

- ``pca_sign``: center, PCA to ``bits`` dimensions, sign.
- ``itq``: the same PCA, then Iterative Quantization (Gong & Lazebnik 2011):
  a rotation ``R`` that alternates ``B = sign(V R)`` and the orthogonal
  Procrustes solution ``R = U Wᵀ`` from ``svd(Vᵀ B) = U S Wᵀ``, starting from
  a seeded random orthogonal matrix.
- ``lsh``: a seeded random Gaussian projection of the centered features; a
  baseline that ignores the data beyond its mean.
- ``lda_itq`` (fitted with :meth:`Binarizer.fit_pairs` on matched clean and
  degraded segments, "LDAHash", Strecha et al. 2012): instead of PCA, the
  directions ``w`` that maximise the between-segment variance over the
  within-pair scatter, ``Sb w = λ (Sw + ridge·I) w`` with ``Sb = cov(clean)``
  and ``Sw = mean((clean - degraded)(clean - degraded)ᵀ)``, then the same ITQ
  rotation. Directions that noise or a codec move a lot are dropped even when
  they carry much variance, so a degraded query keeps more of its bits.

With ``standardize=True`` each feature dimension is also divided by its
standard deviation before the projection (PCA on the correlation matrix
instead of the covariance).  Use it when dimensions live on very different
scales, e.g. a 1506-d vector that concatenates several layers' statistics;
leave it off (the default) when the backbone's outputs share one scale, so
that low-variance noise dimensions are not blown up.

A bit is 1 where the projection is strictly positive.  Codes are packed with
``np.packbits(bits, axis=1)``: big-endian bit order, bit 0 of the code is the
most significant bit of byte 0, which is the layout FAISS binary indexes
(``IndexBinaryFlat`` with ``d = bits``) expect.

A fitted :class:`Binarizer` saves to a safetensors file (arrays, plus kind,
bits, dimension, feature name and a fit summary as metadata strings); nothing
is pickled.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from musichash.bits import hamming as _hamming
from musichash.errors import MusichashError

__all__ = [
    "BITS",
    "KINDS",
    "PAIR_KINDS",
    "Binarizer",
    "BinarizerError",
    "FitSummary",
    "hamming",
    "unpack",
]

# Kinds that Binarizer.fit takes, and those fitted on pairs by Binarizer.fit_pairs.
KINDS = ("pca_sign", "itq", "lsh")
PAIR_KINDS = ("lda_itq",)
BITS = (16, 32, 48, 64, 128)

_FORMAT = "musichash.binarizer"
_VERSION = "1"
_ARRAYS = ("mean", "scale", "components", "rotation")

# Rows per chunk when accumulating fit statistics, so a million 1506-d
# segments never need an n x D float64 copy.
_CHUNK = 65536
# A dimension whose standard deviation is below this is constant in the fit
# data; dividing by it would only amplify rounding noise.
_MIN_STD = 1e-8



class BinarizerError(MusichashError):
    """A problem with fitting, loading or applying a binarizer that the user can fix."""


@dataclass(frozen=True)
class FitSummary:
    """How a binarizer was fitted.

    ``loss`` is the final quantization loss on the fit data (mean
    ``||B - V R||²`` per item, see :meth:`Binarizer.quantization_loss`);
    ``history`` holds it after every ITQ iteration, starting with the random
    initial rotation (length ``n_iter + 1``), and is just ``(loss,)`` for the
    other kinds. ``ridge`` is the regularisation of an ``lda_itq`` fit (``None``
    for the other kinds), and ``n`` its number of pairs.
    """

    n: int
    seed: int
    n_iter: int
    standardize: bool
    loss: float
    history: tuple[float, ...] = ()
    ridge: float | None = None


@dataclass(frozen=True, eq=False)
class Binarizer:
    """A fitted linear map ``float [n, D] -> bits``; build it with :meth:`fit` or :meth:`load`.

    ``project(x) = ((x - mean) / scale) @ components @ rotation``:

    - ``mean, scale: float32 [D]`` (``scale`` is all ones unless standardized),
    - ``components: float32 [D, bits]`` (PCA directions, or the Gaussian
      projection for ``lsh``),
    - ``rotation: float32 [bits, bits]`` (the ITQ rotation; identity otherwise).

    The arrays are read-only.
    """

    kind: str
    bits: int
    mean: np.ndarray = field(repr=False)
    scale: np.ndarray = field(repr=False)
    components: np.ndarray = field(repr=False)
    rotation: np.ndarray = field(repr=False)
    feature: str = ""
    summary: FitSummary | None = None
    _matrix: np.ndarray = field(init=False, repr=False)

    def __post_init__(self) -> None:
        _check_kind_bits(self.kind, self.bits)
        D = self.mean.shape[0] if self.mean.ndim == 1 else -1
        expected = {
            "mean": (D,),
            "scale": (D,),
            "components": (D, self.bits),
            "rotation": (self.bits, self.bits),
        }
        for name, shape in expected.items():
            arr = np.array(getattr(self, name), dtype=np.float32)
            if arr.shape != shape or D < 1:
                raise BinarizerError(
                    f"binarizer array '{name}' has shape {tuple(arr.shape)}, expected {shape}"
                    f" for a {self.bits}-bit binarizer of {D}-dimensional features"
                )
            arr.setflags(write=False)
            object.__setattr__(self, name, arr)
        matrix = (self.components.astype(np.float64) @ self.rotation.astype(np.float64)).astype(
            np.float32
        )
        matrix.setflags(write=False)
        object.__setattr__(self, "_matrix", matrix)

    @property
    def dim(self) -> int:
        """Feature dimension ``D`` the binarizer was fitted on."""
        return int(self.mean.shape[0])

    @property
    def nbytes(self) -> int:
        """Bytes per packed code (``bits / 8``)."""
        return self.bits // 8

    # ------------------------------------------------------------------
    # fitting

    @classmethod
    def fit(
        cls,
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
                " use Binarizer.fit_pairs(x_clean, x_aug, bits)"
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

        return cls._fitted(
            kind, bits, (mean, scale, components, rotation), feature, history,
            n=int(n), seed=int(seed), n_iter=int(n_iter) if kind == "itq" else 0, standardize=bool(standardize),
        )

    @classmethod
    def fit_pairs(
        cls,
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
        return cls._fitted(
            "lda_itq", bits, (mean, scale, components, rotation), feature, history,
            n=int(n), seed=int(seed), n_iter=int(n_iter), standardize=False, ridge=float(ridge),
        )

    @classmethod
    def _fitted(cls, kind: str, bits: int, arrays: tuple, feature: str, history: list[float], **summary) -> Binarizer:
        mean, scale, components, rotation = arrays
        return cls(
            kind=kind, bits=int(bits), mean=mean, scale=scale, components=components, rotation=rotation,
            feature=str(feature),
            summary=FitSummary(loss=float(history[-1]), history=tuple(float(h) for h in history), **summary),
        )

    # ------------------------------------------------------------------
    # applying

    def _check_x(self, x: np.ndarray) -> np.ndarray:
        x = np.asarray(x)
        if x.ndim == 1:
            x = x.reshape(1, -1)
        if x.ndim != 2 or x.shape[1] != self.dim:
            got = x.shape[-1] if x.ndim else 0
            name = f" {self.feature}" if self.feature else ""
            raise BinarizerError(
                f"features have {got} dimensions but the binarizer was fitted on"
                f" {self.dim}-dimensional{name} features;"
                " extract features with the same backbone, or fit a new binarizer"
            )
        return x

    def project(self, x: np.ndarray) -> np.ndarray:
        """Pre-sign values: ``x: float [n, D]`` (or ``[D]``) → ``float32 [n, bits]``."""
        x = self._check_x(x).astype(np.float32, copy=False)
        return ((x - self.mean) / self.scale) @ self._matrix

    def encode(self, x: np.ndarray) -> np.ndarray:
        """Packed codes: ``x: float [n, D]`` (or ``[D]``) → ``uint8 [n, bits/8]``.

        Bit ``j`` is ``project(x)[:, j] > 0``, packed big-endian with
        ``np.packbits(..., axis=1)`` as FAISS binary indexes expect.
        """
        return np.packbits(self.project(x) > 0, axis=1)

    def quantization_loss(self, x: np.ndarray) -> float:
        """The ITQ objective on ``x: float [n, D]``: mean ``||B - V R||²`` per item.

        ``V R = project(x)`` and ``B = ±1`` its signs.  The value is in squared
        feature units, so compare it only between binarizers that share the
        projection ``V`` (``pca_sign`` and ``itq`` fitted on the same data).
        """
        return _loss(self.project(x).astype(np.float64))

    # ------------------------------------------------------------------
    # persistence

    def save(self, path: str | os.PathLike) -> None:
        """Write the arrays and metadata to a safetensors file at ``path``."""
        from safetensors.numpy import save_file

        metadata = {
            "format": _FORMAT,
            "version": _VERSION,
            "kind": self.kind,
            "bits": str(self.bits),
            "dim": str(self.dim),
            "feature": self.feature,
            "summary": json.dumps(None if self.summary is None else asdict(self.summary)),
        }
        tensors = {name: np.ascontiguousarray(getattr(self, name)) for name in _ARRAYS}
        save_file(tensors, str(path), metadata=metadata)

    @classmethod
    def load(cls, path: str | os.PathLike) -> Binarizer:
        """Read a binarizer written by :meth:`save`."""
        from safetensors import safe_open

        path = Path(path)
        if not path.is_file():
            raise BinarizerError(
                f"{path}: binarizer file not found;"
                " fit one with Binarizer.fit(...) and save it there"
            )
        corrupt = (
            f"{path}: not a valid binarizer file (corrupt or truncated);"
            " fit the binarizer again and save it"
        )
        try:
            with safe_open(str(path), framework="numpy") as f:
                meta = f.metadata() or {}
                tensors = {name: f.get_tensor(name) for name in f.keys()}
        except Exception as e:  # safetensors raises its own error types, and OSError
            raise BinarizerError(corrupt) from e
        if meta.get("format") != _FORMAT:
            raise BinarizerError(corrupt)
        if meta.get("version") != _VERSION:
            raise BinarizerError(
                f"{path}: binarizer file format version {meta.get('version')!r} is not"
                f" supported (this musichash reads version {_VERSION}); fit the binarizer again"
            )
        try:
            raw = json.loads(meta["summary"])
            summary = None
            if raw is not None:
                summary = FitSummary(**{**raw, "history": tuple(raw["history"])})
            binarizer = cls(
                kind=meta["kind"],
                bits=int(meta["bits"]),
                feature=meta.get("feature", ""),
                summary=summary,
                **{name: tensors[name] for name in _ARRAYS},
            )
        except (KeyError, ValueError, TypeError, BinarizerError) as e:
            raise BinarizerError(corrupt) from e
        if str(binarizer.dim) != meta.get("dim"):
            raise BinarizerError(corrupt)
        return binarizer


# ----------------------------------------------------------------------
# code helpers


def unpack(codes: np.ndarray) -> np.ndarray:
    """Unpack codes: ``uint8 [n, bits/8]`` → ``uint8 [n, bits]`` of 0/1 (big-endian)."""
    codes = np.asarray(codes)
    if codes.dtype != np.uint8:
        raise BinarizerError(f"codes must be packed uint8 [n, bits/8], got dtype {codes.dtype}")
    return np.unpackbits(np.atleast_2d(codes), axis=-1)


def hamming(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Hamming distances between packed codes, row by row, with numpy broadcasting.

    ``a, b: uint8 [..., B]`` → ``int32 [...]``; e.g. ``a [n, B]`` with
    ``b [n, B]`` gives the ``n`` paired distances, and ``a[:, None]`` with
    ``b[None]`` gives all ``[na, nb]`` pairs (for large sets use
    ``musichash.search.faiss_index.hamming_distances``, which bounds memory).
    """
    a = np.asarray(a)
    b = np.asarray(b)
    if a.dtype != np.uint8 or b.dtype != np.uint8:
        raise BinarizerError(
            f"codes must be packed uint8 [n, bits/8], got dtypes {a.dtype} and {b.dtype}"
        )
    return _hamming(a, b)


# ----------------------------------------------------------------------
# fitting internals (float64 throughout)


def _check_kind_bits(kind: str, bits: int) -> None:
    if kind not in KINDS + PAIR_KINDS:
        raise BinarizerError(
            f"binarizer kind must be one of {', '.join(KINDS + PAIR_KINDS)} (got {kind!r})"
        )
    if bits not in BITS:
        raise BinarizerError(
            f"bits must be one of {', '.join(map(str, BITS))} (got {bits!r})"
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


def _signs(v: np.ndarray) -> np.ndarray:
    # Matches encode(): a bit is 1 only for a strictly positive projection.
    return np.where(v > 0, 1.0, -1.0)


def _loss(vr: np.ndarray) -> float:
    return float(((_signs(vr) - vr) ** 2).sum(axis=1).mean())


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
