"""What keeps the code models' CUDA arithmetic the CPU's: float32 means float32 there too.

On Ampere and later GPUs cuDNN runs float32 convolutions (and LSTMs) in TF32
by default: inputs rounded to a 10-bit mantissa, errors of ~5e-4 relative.
The released models' codes survived that (an H200 gave crnnh64's segment
codes bit for bit, issue 23), but a small model's codes do not: the
unittest model's codes moved enough on CUDA that the vote aligned an
in-library clip elsewhere and its harmony agreement fell from > 0.8 to
0.34 (tests/test_chroma.py). Codes made on one device are searched on
another, so float32 inference turns TF32 off, for its own duration only.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch


@contextlib.contextmanager
def exact_float32(device: torch.device) -> Iterator[None]:
    """Within: float32 convolutions, LSTMs and matrix products on CUDA in full float32 (no TF32)."""
    if torch.device(device).type != "cuda":
        yield
        return
    conv, matmul = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = conv, matmul


#: frames per conv pass on a GPU (~9 min): a whole typical track in one pass. On an H200 a 12 min
#: encode was launch-bound (GPU busy 27.6 ms of 228 ms, issue 23) in passes of the CPU's
#: ``backbones.CHUNK_FRAMES`` (2048 frames); maps of 128 VGG channels take ~1.6 GB at this size
GPU_CHUNK_FRAMES = 32768


def chunk_windows(device: torch.device, hop: int, window: int = 187) -> int | None:
    """Windows per backbone pass: None (the backbone's default, sized for the CPU's caches) off CUDA,
    as many as ``GPU_CHUNK_FRAMES`` hold on it. Codes do not depend on it (``iter_windows``)."""
    if torch.device(device).type != "cuda":
        return None
    return max(1, (GPU_CHUNK_FRAMES - window) // hop + 1)
