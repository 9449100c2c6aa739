"""What bfloat16 convolutions buy and what they move: the code model in float32 (the port) against bfloat16.

A/B in alternating rounds on the same files, so the machine's drift hits both sides alike:

- indexing: ``Library.index`` of the files into a fresh library (``--workers 0``), once per precision;
- queries: warm ``Library.search`` of 10 s excerpts of the files, once per precision;
- codes: each file encoded both ways (library windows every 1.28 s): the share of segment code
  bits that differ, track code bits that differ, and the largest tag probability difference.

    python benchmarks/bench_precision.py FILE... [--rounds 3] [--queries 20] [--json out.json]
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

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_harmony import ten_second_clips  # noqa: E402
from common import machine  # noqa: E402

from musichash.features.audio import load_audio, log_mel  # noqa: E402
from musichash.models.encoder import CodeModel  # noqa: E402
from musichash.library import Library  # noqa: E402

PRECISIONS = ("float32", "bfloat16")


def time_index(files: list[Path], precision: str) -> tuple[float, float]:
    """(wall seconds, audio seconds) of indexing ``files`` into a fresh library."""
    with tempfile.TemporaryDirectory() as d:
        with Library.open(Path(d) / "lib", write=True, precision=precision) as lib:
            lib.model  # loaded before the clock starts, on both sides
            t0 = time.perf_counter()
            rep = lib.index(files, workers=0)
            return time.perf_counter() - t0, rep.audio_s


def code_changes(files: list[Path], max_s: float) -> dict:
    """Per file: bit flips between the two precisions' codes of the same windows."""
    models = {p: CodeModel(precision=p) for p in PRECISIONS}
    rows = []
    for f in files:
        mel = log_mel(load_audio(f, duration_s=max_s))
        a, b = (models[p].encode(mel) for p in PRECISIONS)
        rows.append({"file": f.name, "segments": len(a.codes),
                     "segment_bits_flipped": float(np.unpackbits(a.codes ^ b.codes, axis=1).mean()),
                     "track_bits_flipped": int(np.unpackbits(a.track_code ^ b.track_code).sum()),
                     "tag_max_diff": float(np.abs(a.tags - b.tags).max())})
    return {"files": rows,
            "segment_bits_flipped": float(np.average([r["segment_bits_flipped"] for r in rows],
                                                     weights=[r["segments"] for r in rows]))}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("files", nargs="+", type=Path)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--queries", type=int, default=20)
    ap.add_argument("--code-seconds", type=float, default=300.0, help="audio per file compared code for code")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", type=Path)
    a = ap.parse_args(argv)
    files = [f.absolute() for f in a.files]
    codes = code_changes(files, a.code_seconds)
    index = {p: [] for p in PRECISIONS}
    for r in range(a.rounds):
        for p in (PRECISIONS if r % 2 == 0 else PRECISIONS[::-1]):
            wall, audio = time_index(files, p)
            index[p].append(audio / wall)
            print(f"round {r} index {p}: {audio / wall:.1f}x", file=sys.stderr)
    clips = ten_second_clips(files, a.queries, a.seed)
    query = {p: [] for p in PRECISIONS}
    with tempfile.TemporaryDirectory() as d:
        with Library.open(Path(d) / "lib", write=True, precision="float32") as lib:
            lib.index(files, workers=0)
        libs = {p: Library.open(Path(d) / "lib", precision=p) for p in PRECISIONS}
        for lib in libs.values():
            for c in clips[:3]:  # warm: model, index, chroma filters
                list(lib.search([c]))
        for r in range(a.rounds):
            for p in (PRECISIONS if r % 2 == 0 else PRECISIONS[::-1]):
                for c in clips:
                    t0 = time.perf_counter()
                    list(libs[p].search([c]))
                    query[p].append((time.perf_counter() - t0) * 1000)
        for lib in libs.values():
            lib.close()
    out = {
        "meta": machine(), "files": len(files), "rounds": a.rounds, "queries": a.queries, "codes": codes,
        "index_x": {p: statistics.median(v) for p, v in index.items()}, "index_rounds": index,
        "query_ms_p50": {p: statistics.median(v) for p, v in query.items()},
    }
    if a.json:
        a.json.write_text(json.dumps(out, indent=1))
    ix, q = out["index_x"], out["query_ms_p50"]
    print(f"indexing {len(files)} files, median of {a.rounds} rounds: {ix['float32']:.1f}x real time in float32, "
          f"{ix['bfloat16']:.1f}x in bfloat16; warm 10 s query p50 {q['float32']:.1f} ms against {q['bfloat16']:.1f} ms; "
          f"segment code bits flipped {100 * codes['segment_bits_flipped']:.2f} %, track code bits flipped "
          f"{max(r['track_bits_flipped'] for r in codes['files'])} at most, tags within "
          f"{max(r['tag_max_diff'] for r in codes['files']):.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
