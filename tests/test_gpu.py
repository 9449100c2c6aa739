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


def test_bench_gpu_runs_on_the_cpu(tmp_path, capsys):
    """The GPU benchmark's smoke mode runs anywhere: its figures are there and its checks pass."""
    import json

    from benchmarks import bench_gpu

    out = tmp_path / "gpu.json"
    assert bench_gpu.main(["--device", "cpu", "--code-model", "unittest_crnnh", "--seconds", "8", "--db", "3000",
                           "--queries", "40", "--k", "20", "--json", str(out)]) == 0
    d = json.loads(out.read_text())
    assert d["device"] == "cpu" and d["peak_gpu_mb"] is None
    assert d["model"]["float32_bits_moved"] == 0.0 and d["model"]["float32_track_code_equal"]
    assert d["model"]["model_float32_x"] > 0 and 0 <= d["model"]["bfloat16_bits_moved"] <= 0.5
    s = d["search"]
    assert (s["backend"], s["torch_backend"], s["exact"], s["torch_exact"]) == ("faiss", "torch:cpu", True, True)
    assert "exact k=20 search of 40 queries among 3,000" in capsys.readouterr().out
