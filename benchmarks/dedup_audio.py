"""How well does dedup's audio check (``search.recording``) separate copies from other recordings?

    python benchmarks/dedup_audio.py WORK/eval/dedup-lib-default [--min-score 0.1] [--json OUT]

Reads a dedup library that eval_engine.py built (names as in dedup_ceiling.py).
Every pair the engine's code search aligns with a coverage of at least
``--min-score`` (below the shipped dedup threshold, so more pairs than dedup
itself checks) gets the audio agreement ``Library.dedup`` computes, at the
alignment the codes found. Prints the weakest copies and the strongest other
pairs, and the grouped pair F1 of ``Library.dedup`` with and without the check.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from dedup_ceiling import recording as family  # noqa: E402
from eval_engine import score_dedup  # noqa: E402

from musichash.library import Library  # noqa: E402
from musichash.search import engine  # noqa: E402
from musichash.features.spectra import SAME_RECORDING, Spectra, spectrogram_agreement  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("library", type=Path, help="a dedup library folder written by eval_engine.py")
    ap.add_argument("--min-score", type=float, default=0.1, help="code coverage a pair needs to be checked")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)

    lib = Library.open(args.library)
    index = lib.search_index()
    tracks = {t.id: t for t in lib.store.tracks("ok")}
    names = {i: Path(t.path).name for i, t in tracks.items()}
    pairs = []
    for i, t in tracks.items():
        c = lib.store.get_codes(i)
        pairs += engine.duplicates_of(index, c.segment_codes, c.segment_times, lib.store.bits,
                                      self_id=i, duration_s=t.duration_s, threshold=args.min_score)
    best = engine.best_pairs(pairs)
    spectra, rows = Spectra(size=len(tracks)), []
    t0 = time.perf_counter()
    for p in best.values():
        agree = spectrogram_agreement(spectra.get(tracks[p.a].path), spectra.get(tracks[p.b].path), p.offset_s, p.rate)
        rows.append({"a": names[p.a], "b": names[p.b], "same": family(names[p.a]) == family(names[p.b]),
                     "code_score": p.score, "agreement": agree})
    check_s = time.perf_counter() - t0
    same = sorted((r for r in rows if r["same"]), key=lambda r: r["agreement"])
    other = sorted((r for r in rows if not r["same"]), key=lambda r: -r["agreement"])
    groups = [sorted({Path(p).name for p in g}) for g in _families(names)]
    f1 = {v: score_dedup(lib.dedup(verify=v), [set(g) for g in groups]) for v in (False, True)}

    print(f"{args.library}: {len(tracks)} files, {len(rows)} pairs aligned by the codes at coverage >= {args.min_score} "
          f"({len(same)} copies, {len(other)} other), checked in {check_s:.1f} s (decoding included); "
          f"threshold {SAME_RECORDING}\n")
    print("| pair | same recording | code coverage | audio agreement |\n|---|---|---:|---:|")
    for r in same[:3] + other[:3]:
        print(f"| {r['a']} + {r['b']} | {'yes' if r['same'] else 'no'} | {r['code_score']:.2f} | {r['agreement']:.3f} |")
    print("\n| dedup | precision | recall | F1 | predicted pairs |\n|---|---:|---:|---:|---:|")
    for v, s in f1.items():
        print(f"| {'codes and audio' if v else 'codes alone'} | {s['precision']:.3f} | {s['recall']:.3f} | {s['f1']:.3f} | {s['predicted_pairs']} |")
    if args.json:
        args.json.write_text(json.dumps({"rows": rows, "f1": {str(k): v for k, v in f1.items()}, "check_s": check_s}, indent=1))
    return 0


def _families(names: dict[int, str]) -> list[list[str]]:
    out: dict[str, list[str]] = {}
    for n in names.values():
        out.setdefault(family(n), []).append(n)
    return list(out.values())


if __name__ == "__main__":
    sys.exit(main())
