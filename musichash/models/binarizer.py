"""Interim hash codes: a fitted linear binarisation of backbone features.

The interim code models (``interim_vgg_itq*``, which CRNNH replaced as the
default) make codes from the float features of a pretrained CNN
(``x: float [n, D]``, one row per 3 s segment) through one of these linear
maps followed by a sign; ``musichash.train.fit_binarizer`` fits them:

- ``pca_sign``: center, PCA to ``bits`` dimensions, sign.
- ``itq``: the same PCA, then Iterative Quantization (Gong & Lazebnik 2011):
  a rotation ``R`` that alternates ``B = sign(V R)`` and the orthogonal
  Procrustes solution ``R = U Wᵀ`` from ``svd(Vᵀ B) = U S Wᵀ``, starting from
  a seeded random orthogonal matrix.
- ``lsh``: a seeded random Gaussian projection of the centered features; a
  baseline that ignores the data beyond its mean.
- ``lda_itq`` (fitted with ``fit_binarizer.fit_pairs`` on matched clean and
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

# Kinds that fit_binarizer.fit takes, and those fitted on pairs by fit_binarizer.fit_pairs.
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
    """A fitted linear map ``float [n, D] -> bits``; fit it with ``musichash.train.fit_binarizer`` or :meth:`load` one.

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
                " fit one with musichash.train.fit_binarizer.fit(...) and save it there"
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


def _check_kind_bits(kind: str, bits: int) -> None:
    if kind not in KINDS + PAIR_KINDS:
        raise BinarizerError(
            f"binarizer kind must be one of {', '.join(KINDS + PAIR_KINDS)} (got {kind!r})"
        )
    if bits not in BITS:
        raise BinarizerError(
            f"bits must be one of {', '.join(map(str, BITS))} (got {bits!r})"
        )


def _signs(v: np.ndarray) -> np.ndarray:
    # Matches encode(): a bit is 1 only for a strictly positive projection.
    return np.where(v > 0, 1.0, -1.0)


def _loss(vr: np.ndarray) -> float:
    return float(((_signs(vr) - vr) ** 2).sum(axis=1).mean())
