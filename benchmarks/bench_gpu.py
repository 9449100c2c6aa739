"""GPU figures in one command (issue 23): model throughput, bit agreement with the CPU, indexing
end to end, exact search latency, peak GPU memory. Needs no network.

    python -m benchmarks.bench_gpu [--device auto] [--audio FILE_OR_FOLDER...] [--json OUT]
    python -m benchmarks.bench_gpu --smoke              # the same on small sizes, on the CPU too

Figures (x real time: seconds of audio per second of wall time):

- ``model``: the code model alone on ``--seconds`` of synthetic mel, warm (a first pass is not
  timed), float32 and bfloat16 convolutions on ``--device``;
- ``agreement``: those codes against the CPU's float32 codes of the same mel: share of segment
  bits that differ, whether the track code is equal, the largest tag difference;
- ``index``: ``Library.index`` of ``--audio`` on ``--device``, twice into fresh libraries (the second
  warm); the decoding alone in as many worker processes (the ceiling the cores set); and the top-1 of a 10 s clip of every file searched on the CPU against on the device
  (a library indexed on the GPU searched on the CPU);
- ``search``: exact k-NN of ``--queries`` random 64-bit codes among ``--db`` codes on the device's
  flat index (FAISS's GPU, else torch's ``search.torch_knn``), median of 3 warm runs, distances
  checked against numpy brute force on a few queries;
- ``peak_gpu_mb``: ``torch.cuda.max_memory_allocated`` over the whole run.

On the CPU (``--device cpu``) the agreement compares bfloat16 with float32 only.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks.common import machine, peak_rss_mb

SR = 16000


def synthetic_wave(seconds: float, seed: int = 0) -> np.ndarray:
    """Chords of decaying harmonics over noise: music-like enough to give the model varied windows."""
    rng = np.random.default_rng(seed)
    out, t = [], np.arange(int(1.5 * SR)) / SR
    for _ in range(int(np.ceil(seconds / 1.5))):
        root = 110 * 2 ** (rng.integers(0, 24) / 12)
        y = sum(np.sin(2 * np.pi * root * r * h * t) / h for r in (1, 1.26, 1.5) for h in (1, 2, 3))
        out.append(y * np.exp(-2 * t) + 0.05 * rng.standard_normal(len(t)))
    y = np.concatenate(out)[: int(seconds * SR)]
    return (0.3 * y / np.abs(y).max()).astype(np.float32)


def _sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def model_figures(code_model: str, device: str, seconds: float) -> dict:
    import torch

    from musichash.features.audio import log_mel
    from musichash.models.encoder import LIBRARY_HOP, CodeModel

    wave = synthetic_wave(seconds)
    log_mel(wave[:SR])  # the front end's first use imports librosa and builds the filterbank
    t0 = time.perf_counter()
    mel = log_mel(wave)
    mel_cpu_x = seconds / (time.perf_counter() - t0)
    out = {"audio_s": seconds, "mel_cpu_x": mel_cpu_x}
    dev = torch.device(device)
    if dev.type == "cuda":
        log_mel(wave, device=dev)
        _sync(dev)
        t0 = time.perf_counter()
        mel_dev = log_mel(wave, device=dev)
        out["mel_device_x"] = seconds / (time.perf_counter() - t0)
        out["mel_equal_to_cpu"] = float((mel_dev == mel).mean())
    reference = CodeModel(code_model, device="cpu", precision="float32").encode(mel, LIBRARY_HOP)
    for precision in ("float32", "bfloat16"):
        model = CodeModel(code_model, device=device, precision=precision)
        model.encode(mel, LIBRARY_HOP)  # warm: cuDNN's algorithm choice, allocator, lazy imports
        _sync(model.device)
        t0 = time.perf_counter()
        enc = model.encode(mel, LIBRARY_HOP)
        _sync(model.device)
        out[f"model_{precision}_x"] = seconds / (time.perf_counter() - t0)
        out[f"{precision}_bits_moved"] = float(np.unpackbits(enc.codes ^ reference.codes, axis=1).mean())
        out[f"{precision}_track_code_equal"] = bool(np.array_equal(enc.track_code, reference.track_code))
        out[f"{precision}_max_tag_diff"] = float(np.abs(enc.tags - reference.tags).max())
    return out


def decode_ceiling(paths: list[str], workers: int) -> dict:
    """The cores' decoding alone (``decode_wave``: decode, resample, chroma; what the workers do for a
    GPU model), in ``workers`` processes: the most indexing can reach whatever the model's speed."""
    from concurrent.futures import ProcessPoolExecutor
    from multiprocessing import get_context

    from musichash.indexer.pipeline import _init_worker, decode_wave, scan

    files, _ = scan(paths)
    if workers == 0:  # in this process: one core's ceiling
        t0 = time.perf_counter()
        audio_s = sum(len(r[0]) / SR for r in map(decode_wave, files) if not isinstance(r, str))
        wall = time.perf_counter() - t0
        return {"workers": 0, "audio_s": audio_s, "wall_s": wall, "x_real_time": audio_s / wall}
    with ProcessPoolExecutor(workers, mp_context=get_context("spawn"), initializer=_init_worker) as ex:
        list(ex.map(_noop, range(workers)))  # the workers' start and imports are not decoding
        t0 = time.perf_counter()
        audio_s = sum(len(r[0]) / SR for r in ex.map(decode_wave, map(str, files)) if not isinstance(r, str))
        wall = time.perf_counter() - t0
    return {"workers": workers, "audio_s": audio_s, "wall_s": wall, "x_real_time": audio_s / wall}


def _noop(_):
    import musichash.indexer.pipeline  # noqa: F401


def index_figures(paths: list[str], code_model: str, device: str, workers: int | None) -> dict:
    from musichash.features.audio import load_audio
    from musichash.indexer.pipeline import default_workers
    from musichash.library import Clip, Library

    ceiling = decode_ceiling(paths, default_workers(gpu=device.startswith("cuda")) if workers is None else workers)
    runs = []
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(2):
            t0 = time.perf_counter()
            with Library.open(Path(tmp) / f"lib{i}", write=True, code_model=code_model, device=device) as lib:
                report = lib.index(paths, workers=workers)
            wall = time.perf_counter() - t0
            runs.append({"audio_s": report.audio_s, "wall_s": wall, "x_real_time": report.audio_s / wall,
                         "failed": len(report.failed)})
        with Library.open(Path(tmp) / "lib1", code_model=code_model) as lib:
            files = [t.path for t in lib.store.tracks("ok")]
        clips = []
        for f in files:
            w = load_audio(f, offset_s=5.0, duration_s=10.0)
            if len(w) >= 3 * SR:
                clips.append(Clip(f, w))
        top = {}
        for where in ("cpu", device):
            with Library.open(Path(tmp) / "lib1", device=where) as lib:
                top[where] = [r.results[0].path if r.results else None for r in lib.search(clips)]
    same = sum(a == b for a, b in zip(top["cpu"], top[device]))
    right = sum(c.name == p for c, p in zip(clips, top[device]))
    return {"cold": runs[0], "warm": runs[1], "decode": ceiling, "clips": len(clips), "top1_same_on_cpu": same,
            "top1_right": right}


def search_figures(device: str, n_db: int, n_queries: int, k: int, seed: int = 0) -> dict:
    from musichash.search.faiss_index import BinaryIndex, IndexConfig, hamming_knn

    rng = np.random.default_rng(seed)
    xb = rng.integers(0, 256, (n_db, 8), dtype=np.uint8)
    xq = rng.integers(0, 256, (n_queries, 8), dtype=np.uint8)
    t0 = time.perf_counter()
    index = BinaryIndex.build(xb, config=IndexConfig("flat", 64), device=device)
    build_s = time.perf_counter() - t0
    D0, _ = hamming_knn(xq[:5], xb, k)

    def timed(index) -> tuple[float, bool]:
        index.search(xq[:10], k)  # warm
        times = []
        for _ in range(3):
            t0 = time.perf_counter()
            D, _ = index.search(xq, k)
            times.append(time.perf_counter() - t0)
        return 1000 * statistics.median(times), bool((D[:5] == D0).all())

    search_ms, exact = timed(index)
    out = {"db": n_db, "queries": n_queries, "k": k, "device": index.device, "backend": index.backend,
           "build_s": build_s, "search_ms": search_ms, "exact": exact}
    if index.backend == "faiss":  # the torch search too, on the same device, for comparison
        del index
        torch_index = BinaryIndex.build(xb, config=IndexConfig("flat", 64), device=device, backend="torch")
        out["torch_backend"] = torch_index.backend
        out["torch_search_ms"], out["torch_exact"] = timed(torch_index)
    return out


def run(a) -> dict:
    import torch

    from musichash.devices import torch_device

    device = str(torch_device(a.device))
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    d = {"meta": machine(), "device": device, "torch": torch.__version__, "code_model": a.code_model,
         "model": model_figures(a.code_model, device, a.seconds),
         "search": search_figures(device, a.db, a.queries, a.k)}
    if a.audio:
        d["index"] = index_figures(a.audio, a.code_model, device, a.workers)
    d["peak_gpu_mb"] = torch.cuda.max_memory_allocated() / 2**20 if device.startswith("cuda") else None
    d["peak_rss_mb"] = peak_rss_mb()
    return d


def render(d: dict) -> str:
    m, s = d["model"], d["search"]
    lines = [f"Device {d['device']} (torch {d['torch']}), code model `{d['code_model']}`, {d['meta']['cores']} cores, "
             f"GPUs: {', '.join(d['meta']['gpus']) or 'none'}; commit {d['meta']['commit']}, {d['meta']['date']}.",
             f"- model alone, {m['audio_s'] / 60:.1f} min of mel, warm: float32 {m['model_float32_x']:.0f}x, "
             f"bfloat16 {m['model_bfloat16_x']:.0f}x real time; mel on the CPU {m['mel_cpu_x']:.0f}x"
             + (f", on the device {m['mel_device_x']:.0f}x ({100 * m['mel_equal_to_cpu']:.2f} % equal to the CPU's)"
                if "mel_device_x" in m else ""),
             f"- codes against the CPU's float32: float32 moves {100 * m['float32_bits_moved']:.3f} % of the segment bits "
             f"(track code {'equal' if m['float32_track_code_equal'] else 'DIFFERENT'}, tags within "
             f"{m['float32_max_tag_diff']:.1e}), bfloat16 {100 * m['bfloat16_bits_moved']:.3f} %",
             f"- exact k={s['k']} search of {s['queries']:,} queries among {s['db']:,} 64-bit codes "
             f"({s['backend']} on {s['device']}): {s['search_ms']:.1f} ms (build {s['build_s']:.1f} s), "
             f"distances {'exact' if s['exact'] else 'WRONG'}"
             + (f"; {s['torch_backend']}: {s['torch_search_ms']:.1f} ms, {'exact' if s['torch_exact'] else 'WRONG'}"
                if "torch_search_ms" in s else "")]
    if "index" in d:
        i = d["index"]
        lines.append(f"- Library.index of {i['warm']['audio_s'] / 3600:.2f} h: {i['cold']['x_real_time']:.0f}x real time "
                     f"with the model's load, {i['warm']['x_real_time']:.0f}x warm; top-1 of {i['clips']} 10 s clips: "
                     f"{i['top1_right']} right, {i['top1_same_on_cpu']} the same searched on the CPU; "
                     f"decoding alone in {i['decode']['workers'] or 'this'} process{'es' if i['decode']['workers'] else ''} "
                     f"{i['decode']['x_real_time']:.0f}x real time "
                     f"(the ceiling of the cores)")
    if d["peak_gpu_mb"] is not None:
        lines.append(f"- peak GPU memory {d['peak_gpu_mb']:.0f} MB")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--code-model", default="crnnh64")
    ap.add_argument("--seconds", type=float, default=720.0, help="mel for the model figures (default 12 min)")
    ap.add_argument("--db", type=int, default=10_000_000, help="codes searched (default 10M)")
    ap.add_argument("--queries", type=int, default=10_000)
    ap.add_argument("--k", type=int, default=100)
    ap.add_argument("--audio", nargs="*", default=[], help="files or folders to index end to end")
    ap.add_argument("--workers", type=int, default=None, help="decoding workers (default: the engine's)")
    ap.add_argument("--smoke", action="store_true", help="small sizes: 30 s of mel, 20k codes, 200 queries")
    ap.add_argument("--json", type=Path, help="write the figures as JSON too")
    a = ap.parse_args(argv)
    if a.smoke:
        a.seconds, a.db, a.queries = min(a.seconds, 30.0), min(a.db, 20_000), min(a.queries, 200)
    d = run(a)
    if a.json:
        a.json.write_text(json.dumps(d, indent=1))
    print(render(d))
    return 0


if __name__ == "__main__":
    sys.exit(main())
