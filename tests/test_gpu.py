"""Device plumbing that keeps CUDA's answers the CPU's, tested where the CPU can test it."""

import pytest
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

    import soundfile as sf

    audio = tmp_path / "audio"
    audio.mkdir()
    for i in range(2):
        sf.write(audio / f"s{i}.wav", bench_gpu.synthetic_wave(16.0, seed=i), 16000)
    out = tmp_path / "gpu.json"
    assert bench_gpu.main(["--device", "cpu", "--code-model", "unittest_crnnh", "--seconds", "8", "--db", "3000",
                           "--queries", "40", "--k", "20", "--audio", str(audio), "--workers", "0",
                           "--json", str(out)]) == 0
    d = json.loads(out.read_text())
    assert d["device"] == "cpu" and d["peak_gpu_mb"] is None
    assert d["model"]["float32_bits_moved"] == 0.0 and d["model"]["float32_track_code_equal"]
    assert d["model"]["model_float32_x"] > 0 and 0 <= d["model"]["bfloat16_bits_moved"] <= 0.5
    s = d["search"]
    assert (s["backend"], s["torch_backend"], s["exact"], s["torch_exact"]) == ("faiss", "torch:cpu", True, True)
    i = d["index"]
    assert i["warm"]["audio_s"] == pytest.approx(32.0, abs=0.1) and i["warm"]["failed"] == 0
    assert i["decode"]["audio_s"] == pytest.approx(32.0, abs=0.1) and i["decode"]["workers"] == 0
    assert i["clips"] == 2 and i["top1_same_on_cpu"] == 2
    assert "exact k=20 search of 40 queries among 3,000" in capsys.readouterr().out


def test_mel_made_in_the_main_process_gives_the_workers_codes(tmp_path):
    """The GPU pipeline's split (workers decode, the main process makes the mel: ``decode_wave``),
    run on the CPU: every stored array equals the one of the usual path (mel in the workers)."""
    import numpy as np
    import soundfile as sf

    from benchmarks.bench_gpu import synthetic_wave
    from musichash.indexer import pipeline
    from musichash.library import Library

    music = tmp_path / "music"
    music.mkdir()
    for i, seconds in enumerate((7.3, 12.0, 2.1)):  # the last shorter than a window
        sf.write(music / f"s{i}.wav", synthetic_wave(seconds, seed=i), 16000)
    sf.write(music / "s3.flac", synthetic_wave(5.0, seed=9)[:0], 16000)  # empty: fails the same way
    stored = []
    for mel_device in (None, "cpu"):
        with Library.open(tmp_path / f"lib{mel_device}", write=True, code_model="unittest_hash") as lib:
            report = pipeline.index_paths(lib.store, lib.model, [music], workers=0, mel_device=mel_device)
            tracks = sorted(lib.store.tracks("ok"), key=lambda t: t.path)
            stored.append(([f.reason for f in report.failed],
                           [(t.path, t.tags, t.duration_s) for t in tracks],
                           [lib.store.get_codes(t.id) for t in tracks],
                           [lib.store.get_sketch(t.id) for t in tracks]))
    (f0, t0, c0, s0), (f1, t1, c1, s1) = stored
    assert f0 == f1 and len(f0) == 1 and t0 == t1 and len(t0) == 3
    for a, b in zip(c0, c1):
        for name in ("track_code", "segment_codes", "segment_times", "chroma"):
            np.testing.assert_array_equal(getattr(a, name), getattr(b, name))
    for a, b in zip(s0, s1):
        np.testing.assert_array_equal(a, b)


def test_a_cuda_model_gets_its_mel_in_the_main_process(monkeypatch):
    """With the model on CUDA the workers run ``decode_wave`` and the mel is made on the model's device."""
    from types import SimpleNamespace

    import torch

    from musichash.indexer import pipeline

    seen = {}

    def decoded(jobs, workers, decode=None):
        seen["decode"], seen["workers"] = decode, workers
        return iter(())

    monkeypatch.setattr(pipeline, "_decoded", decoded)
    monkeypatch.setattr(pipeline, "_plan", lambda store, files: pipeline._Plan())
    model = SimpleNamespace(device=torch.device("cuda", 0))
    store = SimpleNamespace(segment_hop=48)  # all index_paths reads of it with nothing to compute
    pipeline.index_paths(store, model, [], workers=0)
    assert seen["decode"] is pipeline.decode_wave
    monkeypatch.setattr(pipeline.os, "cpu_count", lambda: 16)
    pipeline.index_paths(store, model, [])
    assert seen["workers"] == 15  # the CPU's cores all decode for the GPU
    assert pipeline.default_workers() == 4
    model.device = torch.device("cpu")
    pipeline.index_paths(store, model, [], workers=0)
    assert seen["decode"] is pipeline.decode_mel


def test_library_search_on_the_torch_index_finds_what_faiss_finds(tmp_path, monkeypatch):
    """``Library`` hands its device to the index, so where torch has the GPU (faked here: torch's
    search on the CPU) a library is searched by ``torch_knn``, with FAISS's answers."""
    from synth import write_song

    from musichash.features.audio import load_audio
    from musichash.library import Clip, Library
    from musichash.search import faiss_index

    music = tmp_path / "music"
    music.mkdir()
    for i in range(4):
        write_song(music / f"song{i}.wav", seed=i, seconds=12)
    with Library.open(tmp_path / "lib", write=True, code_model="unittest_crnnh") as lib:
        lib.index([music], workers=0)
    clips = [Clip(f"song{i}", load_audio(music / f"song{i}.wav", offset_s=2.0, duration_s=6.0)) for i in range(4)]
    answers = []
    for fake_gpu in (False, True):
        if fake_gpu:
            monkeypatch.setattr(faiss_index, "index_device", lambda device: ("cuda", "cpu"))
        with Library.open(tmp_path / "lib") as lib:
            index = lib.search_index(force=True)
            assert index.segments.backend == ("torch:cpu" if fake_gpu else "faiss")
            answers.append([(r.match, [(h.path, h.score, h.offset_s) for h in r.results[:1]])
                            for r in lib.search(clips, threshold=0.0)])
    assert answers[0] == answers[1]
    assert all(hits for _, hits in answers[1]) and answers[1][0][1][0][0].endswith("song0.wav")


def test_files_are_hashed_in_threads_and_an_unreadable_one_is_reported(tmp_path, monkeypatch):
    """The plan hashes the files to look at concurrently; one that cannot be read costs only itself."""
    import threading

    import soundfile as sf

    from benchmarks.bench_gpu import synthetic_wave
    from musichash.indexer import pipeline
    from musichash.library import Library

    music = tmp_path / "music"
    music.mkdir()
    for i in range(4):
        sf.write(music / f"s{i}.wav", synthetic_wave(4.0, seed=i), 16000)
    threads, real = set(), pipeline.file_hash

    def hashed(path):
        threads.add(threading.get_ident())
        if path.name == "s2.wav":
            raise PermissionError(13, "Permission denied", str(path))
        return real(path)

    monkeypatch.setattr(pipeline, "file_hash", hashed)
    monkeypatch.setattr(pipeline, "_hash_threads", lambda: 3)
    with Library.open(tmp_path / "lib", write=True, code_model="unittest_hash") as lib:
        report = lib.index([music], workers=0)
    assert threading.get_ident() not in threads
    assert [(f.path.split("/")[-1], f.reason) for f in report.failed] == [
        ("s2.wav", "cannot read it (Permission denied); check its permissions")]
    assert sorted(p.split("/")[-1] for p in report.added) == ["s0.wav", "s1.wav", "s3.wav"]


def test_gpu_passes_hold_a_whole_track_and_give_the_same_codes():
    """On CUDA the backbone runs ~9 min of frames a pass; the codes are those of the CPU's passes."""
    import numpy as np

    from benchmarks.bench_gpu import synthetic_wave
    from musichash.features.audio import log_mel
    from musichash.models import gpu
    from musichash.models.encoder import LIBRARY_HOP, CodeModel

    assert gpu.chunk_windows(torch.device("cpu"), LIBRARY_HOP) is None
    assert gpu.chunk_windows(torch.device("cuda"), LIBRARY_HOP) == (gpu.GPU_CHUNK_FRAMES - 187) // LIBRARY_HOP + 1
    model = CodeModel("unittest_crnnh", device="cpu")
    mel = torch.from_numpy(log_mel(synthetic_wave(80.0)))  # 5000 frames: 3 CPU passes
    whole = gpu.chunk_windows(torch.device("cuda"), LIBRARY_HOP)
    with torch.inference_mode():
        one = [model.segment_head(wb.features) for wb in
               model.backbone.iter_windows(mel, LIBRARY_HOP, chunk_windows=whole, features=model.features)]
    enc = model.encode(mel, LIBRARY_HOP)
    assert len(one) == 1
    np.testing.assert_array_equal(np.packbits(one[0] > 0, axis=1), enc.codes)
    np.testing.assert_array_equal(one[0], enc.relaxed)
