"""Which segment hop a new library takes: calibration-split runs of ``eval_ident`` side by side.

    python -m benchmarks.eval_ident --manifest corpus22/manifest.jsonl --work /tmp/hop/h80 \
        --split calibration --no-chromaprint --segment-hop-frames 80 --json /tmp/hop/h80.json
    (the same for 48 and 32, same options)
    python -m benchmarks.hop_study /tmp/hop/h80.json /tmp/hop/h48.json /tmp/hop/h32.json [--write]

Each run's library holds the same audio with segments every ``hop`` frames; its clips (the same
clips: same seed) were searched with whatever thresholds were shipped. Thresholds are refitted
here per hop on that run's own clips (``calibrate.fit_thresholds``, by clip length, 97.5 % of the
out-of-library clips rejected), and top-1, top-1 and match, and out-of-library rejection are read
at the refitted thresholds. Those two are in-sample (fitted and read on the same clips), for every
hop alike; top-1 does not depend on thresholds. ``--write`` records each hop's fit in the code
model's JSON: the main record for ``DEFAULT_SEGMENT_HOP``, ``thresholds_by_hop`` for every hop.
Calibration runs only: the evaluation split never chooses a hop or fits a threshold.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from musichash.indexer.records import DEFAULT_SEGMENT_HOP
from musichash.models import get_spec
from musichash.search import calibrate
from musichash.search.thresholds import Thresholds

FIT_LENGTHS = (2.5, 4.0, 7.5)


def _scored(o: dict) -> calibrate.Scored:
    return calibrate.Scored(o["score"], o["chroma"], o["in_library"], o["top1"], o["length"])


def study(run: dict) -> dict:
    """One calibration run: its hop, refitted thresholds and figures by clip length."""
    if run["split"] != "calibration":
        raise SystemExit(f"hop_study reads calibration runs only; this one is of the {run['split']} split")
    hop = run["library"].get("segment_hop_frames", 80)
    outs = run["outcomes"]["musichash"]
    clips = [_scored(o) for o in outs]
    fitted = calibrate.fit_thresholds(
        clips, Thresholds(**run["thresholds"]) if run.get("thresholds") else Thresholds(),
        source=f"the package-split calibration set ({', '.join(run['units'])}: {run['library']['query_tracks']} "
               f"tracks, {sum(not c.in_library for c in clips)} out-of-library clips; library segments every "
               f"{hop} frames)",
        lengths=FIT_LENGTHS, segment_hop=hop)
    by_len = calibrate.rates_by_length(clips, fitted)
    rows = []
    for length in sorted({c.length for c in clips}):
        inside = [o for o in outs if o["length"] == length and o["in_library"]]
        lat = [o["latency_s"] for o in outs if o["length"] == length and o.get("latency_s") is not None]
        rows.append({"length": length, "top1": float(np.mean([o["top1"] for o in inside])),
                     "top1_match": by_len[length]["tpr"], "ool_rejected": by_len[length]["tnr"],
                     "latency_p50_ms": 1e3 * float(np.median(lat)) if lat else None})
    idx = run["indexing"]
    return {"hop": hop, "thresholds": fitted, "by_length": rows, "kb_per_hour": idx["code_bytes_per_hour"] / 1e3,
            "x_real_time": idx["x_real_time"], "index_wall_s": idx["wall_s"]}


def render(studies: list[dict]) -> str:
    lines = ["| hop (frames, s) | length | top-1 | top-1 and match | out-of-library rejected | search p50 |",
             "|---|---|---|---|---|---|"]
    for s in studies:
        for r in s["by_length"]:
            lines.append(f"| {s['hop']} ({s['hop'] * 0.016:.3f} s) | {r['length']:g} s | {100 * r['top1']:.1f}% "
                         f"| {100 * r['top1_match']:.1f}% | {100 * r['ool_rejected']:.1f}% "
                         f"| {r['latency_p50_ms']:.0f} ms |")
    lines += ["", "| hop | codes KB per hour | indexing (x real time) | indexing wall |", "|---|---|---|---|"]
    lines += [f"| {s['hop']} | {s['kb_per_hour']:.1f} | {s['x_real_time']:.0f}x | {s['index_wall_s']:.0f} s |"
              for s in studies]
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("runs", type=Path, nargs="+", help="eval_ident --split calibration --json outputs, one per hop")
    ap.add_argument("--write", action="store_true", help="record each hop's refitted thresholds in the code model")
    a = ap.parse_args(argv)
    runs = [json.loads(p.read_text()) for p in a.runs]
    studies = sorted((study(r) for r in runs), key=lambda s: -s["hop"])
    print(render(studies))
    if a.write:
        models = {r["code_model"] for r in runs}
        if len(models) != 1:
            raise SystemExit(f"runs of several code models: {sorted(models)}")
        spec = get_spec(models.pop())
        for s in studies:
            path = calibrate.write_thresholds(spec, s["thresholds"], main=s["hop"] == DEFAULT_SEGMENT_HOP)
            print(f"hop {s['hop']}: thresholds written to {path}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
