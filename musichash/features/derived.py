"""Inputs derived from the model log-mel, in torch: harmonic and percussive parts, chroma, MFCC.

The genre networks of issue 25 take, besides the 96-band log-mel every model
here reads (``features.audio.MelFrontend``: ``log10(1 + 10000 mel)``), its
harmonic and percussive parts (HPSS), a chroma and MFCCs. All four are made
from that one mel window, on whatever device it is on, so training and
inference need no second decode or STFT:

- **HPSS** is librosa's ``decompose.hpss`` (Fitzgerald's median filtering with
  soft Wiener masks, power 2) applied to the mel power instead of the STFT
  power: a median along time keeps sustained partials, a median along the bands
  keeps broadband onsets.
- **chroma** folds the mel power into 12 pitch classes by each band's centre
  frequency (a Gaussian of one semitone in log frequency). Mel bands above
  ~1 kHz are wider than a semitone, so it is a coarse chroma; the pitch detail
  comes from the low bands, as in the mel itself.
- **MFCC** is the orthonormal DCT-II of the log-mel, first ``N_MFCC`` coefficients.
"""

from __future__ import annotations

import math
from functools import lru_cache

import numpy as np
import torch
import torch.nn.functional as F

from musichash.features.audio import N_MELS, SAMPLE_RATE

#: median filter lengths: 17 frames (0.27 s) along time, 17 bands along the mel axis (librosa's default 31 is
#: for 1025-bin STFTs; 17 of 96 mel bands is a comparable share of the axis)
HPSS_KERNEL = (17, 17)
HPSS_POWER = 2.0
N_CHROMA = 12
N_MFCC = 20
#: the inputs a multi-input network may name, and their number of bands
INPUT_BANDS = {"mel": N_MELS, "harmonic": N_MELS, "percussive": N_MELS, "chroma": N_CHROMA, "mfcc": N_MFCC}


def mel_power(mel: torch.Tensor) -> torch.Tensor:
    """The mel power behind a model log-mel ``float [B, T, 96]`` (inverts ``log10(1 + 10000 p)``)."""
    return (torch.pow(10.0, mel.float()) - 1.0).clamp(min=0.0) / 10000.0


def to_log(power: torch.Tensor) -> torch.Tensor:
    """Mel power back to the model's log scale."""
    return torch.log10(1.0 + 10000.0 * power)


def _median(x: torch.Tensor, k: int, dim: int) -> torch.Tensor:
    """Running median of odd length ``k`` along ``dim`` of ``x: [B, T, F]``, edges mirrored with the edge
    sample repeated (scipy.ndimage's ``reflect``, which librosa's hpss uses)."""
    x = x.transpose(dim, -1)
    lead = x.shape[:-1]
    flat = x.reshape(-1, x.shape[-1])
    pad = min(k // 2, flat.shape[-1])
    flat = torch.cat([flat[:, :pad].flip(-1), flat, flat[:, -pad:].flip(-1)], dim=-1)
    if k // 2 > pad:  # shorter than half the kernel: repeat the ends
        flat = F.pad(flat[:, None], (k // 2 - pad,) * 2, mode="replicate")[:, 0]
    med = flat.unfold(-1, k, 1).median(dim=-1).values
    return med.reshape(*lead, -1).transpose(dim, -1)


def hpss(mel: torch.Tensor, kernel: tuple[int, int] = HPSS_KERNEL, power: float = HPSS_POWER) -> tuple[torch.Tensor, torch.Tensor]:
    """Harmonic and percussive log-mels of ``mel: float [B, T, 96]``, each ``float [B, T, 96]``.

    Soft masks as librosa's ``hpss(margin=1)``: ``H^p / (H^p + P^p)``, so the two
    parts' powers add up to the input's.
    """
    p = mel_power(mel)
    h = _median(p, kernel[0], dim=1)
    q = _median(p, kernel[1], dim=2)
    # librosa's softmask: where both are ~0 the split is even
    hp, qp = h.pow(power), q.pow(power)
    tiny = torch.finfo(p.dtype).tiny
    mask_h = (hp + 0.5 * tiny) / (hp + qp + tiny)
    return to_log(p * mask_h), to_log(p * (1.0 - mask_h))


@lru_cache(maxsize=4)
def _chroma_matrix(device: str) -> torch.Tensor:
    import librosa  # noqa: PLC0415  (only for the mel band centres)

    centres = librosa.mel_frequencies(n_mels=N_MELS + 2, fmin=0.0, fmax=SAMPLE_RATE / 2)[1:-1]
    midi = 69 + 12 * np.log2(np.maximum(centres, 1e-3) / 440.0)
    pc = np.arange(N_CHROMA)
    # circular distance in semitones between each band's pitch and each pitch class
    d = np.abs(((midi[:, None] - pc[None, :]) + 6) % 12 - 6)
    w = np.exp(-0.5 * d**2)
    w[centres < 55.0] = 0.0  # below A1 a band spans several octaves' worth of semitones: no pitch class
    w /= np.maximum(w.sum(axis=0, keepdims=True), 1e-9)
    return torch.from_numpy(w.astype(np.float32)).to(device)  # [96, 12]


def chroma(mel: torch.Tensor) -> torch.Tensor:
    """``float [B, T, 12]``: mel power folded into pitch classes, each frame scaled to max 1."""
    c = mel_power(mel) @ _chroma_matrix(str(mel.device))
    return c / c.amax(dim=-1, keepdim=True).clamp(min=1e-10)


@lru_cache(maxsize=4)
def _dct_matrix(n_in: int, n_out: int, device: str) -> torch.Tensor:
    n = torch.arange(n_in, dtype=torch.float64)
    k = torch.arange(n_out, dtype=torch.float64)
    m = torch.cos(math.pi / n_in * (n[:, None] + 0.5) * k[None, :]) * math.sqrt(2.0 / n_in)
    m[:, 0] /= math.sqrt(2.0)
    return m.float().to(device)  # [n_in, n_out], orthonormal DCT-II as scipy's norm="ortho"


def mfcc(mel: torch.Tensor, n: int = N_MFCC) -> torch.Tensor:
    """``float [B, T, n]``: DCT-II (orthonormal) of the log-mel along its bands."""
    return mel.float() @ _dct_matrix(mel.shape[-1], n, str(mel.device))


def derive(mel: torch.Tensor, names: tuple[str, ...]) -> dict[str, torch.Tensor]:
    """The named inputs (keys of ``INPUT_BANDS``) of ``mel: float [B, T, 96]``, HPSS computed once."""
    unknown = [n for n in names if n not in INPUT_BANDS]
    if unknown:
        raise ValueError(f"unknown inputs {unknown}; choose from {', '.join(INPUT_BANDS)}")
    out: dict[str, torch.Tensor] = {}
    if "harmonic" in names or "percussive" in names:
        out["harmonic"], out["percussive"] = hpss(mel)
    if "chroma" in names:
        out["chroma"] = chroma(mel)
    if "mfcc" in names:
        out["mfcc"] = mfcc(mel)
    out["mel"] = mel.float()
    return {n: out[n] for n in names}
