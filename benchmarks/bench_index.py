"""Indexing throughput: where the time goes, and `Library.index` end to end with and without decoding workers.

    python -m benchmarks.bench_index FILE_OR_FOLDER... [--workers 0 1] [--code-model crnnh64] [--json OUT]

Stages are timed on the first file: decode + resample to 16 kHz, log-mel,
and the code model (VGG windows every 1.28 s, codes). Then each ``--workers``
setting indexes all the inputs into a fresh library in a fresh process
(peak RSS is that process's). Figures: seconds of audio per second of wall
time (x real time).
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

from benchmarks.common import machine, peak_rss_mb

from musichash.models import DEFAULT_CODE_MODEL


def stages(path: Path, code_model: str) -> dict:
    import torch

    from musichash.features.audio import SAMPLE_RATE, iter_audio_blocks, iter_mel_blocks
    from musichash.models.encoder import LIBRARY_HOP, CodeModel

    # the front end's first use imports librosa and builds the filterbank (about a second): once per process
    np.concatenate(list(iter_mel_blocks(iter([np.zeros(SAMPLE_RATE, np.float32)]))))
    t0 = time.perf_counter()
    blocks = list(iter_audio_blocks(path))
    t1 = time.perf_counter()
    mel = np.concatenate(list(iter_mel_blocks(iter(blocks))))
    t2 = time.perf_counter()
    model = CodeModel(code_model)
    t3 = time.perf_counter()
    model.encode(torch.from_numpy(mel), LIBRARY_HOP)
    t4 = time.perf_counter()
    seconds = sum(len(b) for b in blocks) / SAMPLE_RATE
    return {
        "file": str(path), "audio_s": seconds, "threads": torch.get_num_threads(),
        "decode_x": seconds / (t1 - t0), "mel_x": seconds / (t2 - t1), "model_x": seconds / (t4 - t3),
    }


def end_to_end(paths: list[str], workers: int, code_model: str) -> dict:
    from musichash.library import Library

    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        with Library.open(Path(tmp) / "lib", write=True, code_model=code_model) as lib:
            report = lib.index(paths, workers=workers)
        wall = time.perf_counter() - t0
    return {
        "workers": workers, "audio_s": report.audio_s, "wall_s": wall, "x_real_time": report.audio_s / wall,
        "failed": len(report.failed), "peak_rss_mb": peak_rss_mb(),
    }


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("paths", nargs="+")
    ap.add_argument("--workers", type=int, nargs="+", default=[0, 1])
    ap.add_argument("--code-model", default=DEFAULT_CODE_MODEL, help="default: the engine's (%(default)s)")
    ap.add_argument("--json", type=Path, help="write the figures as JSON too")
    ap.add_argument("--child", choices=["stages", "index"], help=argparse.SUPPRESS)
    ap.add_argument("--child-workers", type=int, default=0, help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.child == "stages":
        print(json.dumps(stages(Path(a.paths[0]), a.code_model)))
        return 0
    if a.child == "index":
        print(json.dumps(end_to_end(a.paths, a.child_workers, a.code_model)))
        return 0

    def child(paths, *extra) -> dict:
        out = subprocess.run([sys.executable, "-m", "benchmarks.bench_index", *paths, "--code-model", a.code_model, *extra],
                             check=True, capture_output=True, text=True).stdout
        return json.loads(out.strip().splitlines()[-1])

    from musichash.indexer.pipeline import scan

    files, _ = scan(a.paths)
    d = {"meta": machine(), "code_model": a.code_model, "files": len(files),
         "stages": child([str(files[0])], "--child", "stages"),
         "index": [child(a.paths, "--child", "index", "--child-workers", str(w)) for w in a.workers]}
    if a.json:
        a.json.write_text(json.dumps(d, indent=1))
    print(render(d))
    return 0


def render(d: dict) -> str:
    s = d["stages"]
    lines = [f"Code model `{d['code_model']}`. Stages on {Path(s['file']).name} ({s['audio_s'] / 60:.1f} min, "
             f"torch {s['threads']} threads): "
             f"decode + resample {s['decode_x']:.0f}x, mel {s['mel_x']:.0f}x, code model {s['model_x']:.0f}x real time.\n",
             f"`Library.index` of {d['files']} file{'s' if d['files'] > 1 else ''}, each setting in a fresh process:\n",
             "| decoding workers | audio | wall | x real time | peak RSS |", "|---|---|---|---|---|"]
    for r in d["index"]:
        lines.append(f"| {r['workers']} | {r['audio_s'] / 3600:.2f} h | {r['wall_s']:.0f} s | {r['x_real_time']:.0f}x "
                     f"| {r['peak_rss_mb']:.0f} MB |")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
