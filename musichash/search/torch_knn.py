"""Exact Hamming k-NN in torch: binary codes searched on a GPU when FAISS has no GPU support.

A machine with CUDA PyTorch but faiss-cpu (faiss-gpu wheels need their own
CUDA libraries, hundreds of MB) would otherwise search on its CPU. Codes are
held as ±1 vectors, and for ``b``-bit codes ``q`` and ``x``

    hamming(q, x) = (b - <q, x>) / 2

so a batch of queries against all codes is one matrix product. The products
are exact: every partial sum is an integer of magnitude at most ``b``, and
half precision holds every integer up to 2048 (``MAX_BITS``) exactly, float32
up to 2**24, whatever order the GEMM sums in. So the distances equal FAISS's
to the bit; only which of several codes tied at the k-th distance are kept can
differ (as between any two exact searches).

The database is scanned in blocks; each block's best ``k`` are merged into the
running best, so memory is bounded by ``queries x block`` scores.
"""

from __future__ import annotations

import numpy as np
import torch

#: widest code whose ±1 dot products half precision holds exactly (every integer up to 2048)
MAX_BITS = 2048
#: scores held at once per search step (queries x database block), bytes
_STEP_BYTES = 512 << 20
#: the same on the CPU, where the product is float32 and the cores' caches are small
_CPU_STEP_BYTES = 32 << 20


def _dtype(device: torch.device, bits: int) -> torch.dtype:
    if device.type == "cuda" and bits <= MAX_BITS:
        return torch.float16
    return torch.float32


def signs(codes: np.ndarray, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """uint8 [n, B] packed codes -> [n, 8 B] of ±1 (bit set: +1), on ``device``.

    Unpacked on the device: a million 64-bit codes move as 8 MB, not 128 MB of halves.
    """
    packed = torch.from_numpy(np.ascontiguousarray(codes, np.uint8)).to(device)
    shifts = torch.arange(7, -1, -1, device=device, dtype=torch.uint8)  # np.packbits is big-endian
    bits = (packed.unsqueeze(-1) >> shifts) & 1  # [n, B, 8]
    return bits.flatten(1).to(dtype).mul_(2).sub_(1)


class TorchFlat:
    """Packed codes on a torch device, searched exactly by Hamming distance (see the module docstring)."""

    def __init__(self, codes: np.ndarray, device: str | torch.device = "cuda"):
        codes = np.asarray(codes, np.uint8)
        if codes.ndim != 2:
            raise ValueError(f"codes must be uint8 [n, bits/8], got shape {codes.shape}")
        self.device = torch.device(device)
        self.bits = codes.shape[1] * 8
        self.dtype = _dtype(self.device, self.bits)
        self._xb = signs(codes, self.device, self.dtype)  # [n, bits]

    def __len__(self) -> int:
        return self._xb.shape[0]

    def add(self, codes: np.ndarray) -> None:
        """Append codes (their positions follow the ones held)."""
        self._xb = torch.cat([self._xb, signs(codes, self.device, self.dtype)])

    @torch.inference_mode()
    def search(self, xq: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """``xq: uint8 [nq, bits/8]`` -> ``D: int32 [nq, k]`` Hamming distances, ``I: int64 [nq, k]``
        positions of the codes, nearest first and ties by position; -1 (and ``D`` = int32 max)
        past the codes held."""
        nq, n = len(xq), len(self)
        D = np.full((nq, k), np.iinfo(np.int32).max, np.int32)
        I = np.full((nq, k), -1, np.int64)
        kk = min(k, n)
        if nq == 0 or kk == 0:
            return D, I
        q = signs(xq, self.device, self.dtype)
        step = _STEP_BYTES if self.device.type == "cuda" else _CPU_STEP_BYTES
        size = torch.finfo(self.dtype).bits // 8
        q_rows = max(1, min(nq, step // (size * min(n, 1 << 16))))
        for a in range(0, nq, q_rows):
            qa = q[a : a + q_rows]
            block = max(kk, step // (size * len(qa)))
            best_s = best_i = None
            for b in range(0, n, block):
                s = qa @ self._xb[b : b + block].T  # [rows, block]: bits - 2 * hamming
                top_s, top_i = s.topk(min(kk, s.shape[1]), dim=1)
                top_i = top_i + b
                if best_s is not None:
                    top_s, top_i = torch.cat([best_s, top_s], 1), torch.cat([best_i, top_i], 1)
                    top_s, pick = top_s.topk(kk, dim=1)
                    top_i = top_i.gather(1, pick)
                best_s, best_i = top_s, top_i
            dist = ((self.bits - best_s.float()) / 2).round().to(torch.int32).cpu().numpy()
            pos = best_i.cpu().numpy()
            order = _row_order(dist, pos)
            D[a : a + len(qa), :kk] = np.take_along_axis(dist, order, 1)
            I[a : a + len(qa), :kk] = np.take_along_axis(pos, order, 1)
        return D, I


def _row_order(dist: np.ndarray, pos: np.ndarray) -> np.ndarray:
    """Per row, the order by (distance, position): the result does not depend on topk's tie order."""
    key = dist.astype(np.int64) * (int(pos.max()) + 1) + pos
    return np.argsort(key, axis=1, kind="stable")
