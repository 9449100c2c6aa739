"""Tagging throughput (x real time) and peak memory on a long file.

    python -m benchmarks.bench_tag [--audio FILE] [--minutes 10] [--device cpu|cuda] [--json OUT]

Without --audio it loops the demo renders (recipes/demo/make_demo.py output in
corpus/demo) or, failing that, a synthetic chord-and-noise signal, into a
FLAC of --minutes. Each model runs in a fresh process so that its peak RSS
is its own; model loading is timed apart from tagging. Prints a Markdown
table for BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import soundfile as sf

from benchmarks.common import machine, peak_rss_mb

MODELS = ["MTT_musicnn", "MTT_vgg"]


def make_long_file(path: Path, minutes: float, demo: Path) -> str:
    rate = 44100
    n = int(minutes * 60 * rate)
    sources = sorted(demo.glob("*.flac")) if demo.is_dir() else []
    with sf.SoundFile(path, "w", rate, 2, format="FLAC") as out:
        written = 0
        i = 0
        rng = np.random.default_rng(0)
        while written < n:
            if sources:
                block, sr = sf.read(sources[i % len(sources)], dtype="float32", always_2d=True)
                assert sr == rate
                block = np.repeat(block[:, :1], 2, axis=1) if block.shape[1] == 1 else block[:, :2]
            else:
                t = np.arange(30 * rate) / rate
                f0 = 110 * 2 ** (rng.integers(0, 12) / 12)
                mono = sum(0.15 * np.sin(2 * np.pi * f0 * k * t) / k for k in range(1, 6)) + 0.02 * rng.standard_normal(t.size)
                block = np.stack([mono, mono], axis=1).astype(np.float32)
            block = block[: n - written]
            out.write(block)
            written += len(block)
            i += 1
    return "demo renders looped" if sources else "synthetic chords"


def child(model: str, audio: str, device: str) -> None:
    import torch

    from musichash.models.tagging import Tagger

    t0 = time.perf_counter()
    tagger = Tagger(model, device)
    load_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    result = tagger.tag_file(audio)
    if tagger.device.type == "cuda":
        torch.cuda.synchronize()
    tag_s = time.perf_counter() - t0
    peak_mb = peak_rss_mb()
    print(json.dumps({
        "model": model, "device": str(tagger.device), "load_s": load_s, "tag_s": tag_s,
        "duration_s": result.duration_s, "x_realtime": result.duration_s / tag_s,
        "peak_rss_mb": peak_mb, "windows": result.n_windows, "threads": torch.get_num_threads(),
        "top": [s.tag for s in result.top(3)],
    }))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--audio", type=Path)
    ap.add_argument("--minutes", type=float, default=10.0)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--demo", type=Path, default=Path("corpus/demo"))
    ap.add_argument("--models", nargs="+", default=MODELS)
    ap.add_argument("--json", type=Path, help="write the figures as JSON too")
    ap.add_argument("--child", nargs=3, metavar=("MODEL", "AUDIO", "DEVICE"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(*args.child)
        return
    with tempfile.TemporaryDirectory() as tmp:
        audio = args.audio
        what = str(audio)
        if audio is None:
            audio = Path(tmp) / "long.flac"
            what = make_long_file(audio, args.minutes, args.demo) + f", {args.minutes:g} min, 44.1 kHz stereo FLAC"
        rows = []
        for model in args.models:
            out = subprocess.run(
                [sys.executable, "-m", "benchmarks.bench_tag", "--child", model, str(audio), args.device],
                check=True, capture_output=True, text=True,
            )
            rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
    d = {"meta": machine(), "input": what, "rows": rows}
    if args.json:
        args.json.write_text(json.dumps(d, indent=1))
    print(render(d))


def render(d: dict) -> str:
    lines = [f"Input: {d['input']}. Each model in a fresh process; load timed apart from tagging.\n",
             "| model | device | threads | audio | load | tagging | × real time | peak RSS |",
             "|---|---|---|---|---|---|---|---|"]
    for r in d["rows"]:
        lines.append(f"| {r['model']} | {r['device']} | {r['threads']} | {r['duration_s'] / 60:.1f} min | {r['load_s']:.2f} s "
                     f"| {r['tag_s']:.1f} s | {r['x_realtime']:.1f}× | {r['peak_rss_mb']:.0f} MB |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
