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
