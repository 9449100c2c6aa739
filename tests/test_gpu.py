"""Device plumbing that keeps CUDA's answers the CPU's, tested where the CPU can test it."""

import torch

from musichash.models.gpu import exact_float32


def test_exact_float32_turns_tf32_off_on_cuda_only_and_restores_it():
    before = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = True
    try:
        with exact_float32(torch.device("cuda")):
            assert (torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32) == (False, False)
        assert (torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32) == (True, True)
        with exact_float32(torch.device("cpu")):
            assert torch.backends.cudnn.allow_tf32  # the CPU has no TF32: nothing to change
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = before


def test_the_code_model_encodes_with_tf32_off(monkeypatch):
    """CodeModel.encode runs its windows inside ``exact_float32`` of its device."""
    import numpy as np

    from musichash.models import encoder

    seen = []
    real = encoder.exact_float32

    def spy(device):
        seen.append(torch.device(device).type)
        return real(device)

    monkeypatch.setattr(encoder, "exact_float32", spy)
    model = encoder.CodeModel("unittest_hash", device="cpu")
    seen.clear()
    model.encode(np.zeros((400, 96), np.float32))
    assert seen == ["cpu"]
