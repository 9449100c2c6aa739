"""Dedup that never joins two recordings, and how long it takes, through ``Library.dedup``.

    python -m benchmarks.bench_dedup --manifest corpus22/manifest.jsonl --work /tmp/dedup --originals 40

The set (``eval_engine.dedup_set``: originals cut to 3 min, each with an MP3 at 64 kbit/s, a quieter
trimmed and faded Ogg, a padded WAV and a 2 % faster FLAC; scores also re-rendered on other
instruments, an arrangement that is its own recording) gets the hard negatives an independent
evaluation found joined, each its own recording:

- **jingles**: 5 s excerpts of originals (a sting cut from a track is not that track);
- **shared intros**: the first 20 s of an original followed by 2.5 min of a corpus track that is
  not in the set (two songs that open alike);
- **short files of the corpus** (under 30 s, such as a game's stings), kept whole.

Reported: pair precision, recall and F1 against the true families, the pairs that join two
different recordings (must be 0), and the wall time of ``Library.dedup`` (verification reads
the sketches stored at index time). ``--no-verify`` also times the codes alone.

``--growth 1000 2000 4000`` times ``Library.dedup`` on synthetic libraries of that many tracks
(``bench_library_scale.synthetic_tracks``: seeded codes of 0.5-6 min tracks, no duplicates), to show
how its cost grows with the library (every segment looks up its nearest neighbours among all).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import soundfile as sf

from benchmarks.bench_chromaprint import families_of
from benchmarks.common import machine, peak_rss_mb
from benchmarks.eval_engine import _write, dedup_set
from benchmarks.queries import cut_corpus, pair_scores, pairs_of
from musichash.features.audio import SAMPLE_RATE, load_audio
from musichash.library import Library
from musichash.models.registry import DEFAULT_CODE_MODEL

#: the name parts of hard negatives (``hard_negatives``), each its own recording
HARD = (".jingle.", ".intro-of.", ".short.")
JINGLE_S = 5.0
INTRO_S = 20.0
SHORT_S = 30.0


def hard_negatives(originals: list[Path], corpus_files: list[Path], out: Path, seed: int) -> list[Path]:
    """Jingles, shared-intro tracks and the corpus's short files, each its own recording."""
    rng = np.random.default_rng(seed + 7)
    stems = {f.stem for f in originals}
    bodies = [f for f in corpus_files if f.stem not in stems and sf.info(str(f)).duration >= INTRO_S + 150]
    made = []
    for i, f in enumerate(originals):
        y = load_audio(f)
        if len(y) > (JINGLE_S + 30) * SAMPLE_RATE:
            start = int(rng.uniform(10, len(y) / SAMPLE_RATE - JINGLE_S - 10) * SAMPLE_RATE)
            j = out / f"{f.stem}.jingle.wav"
            sf.write(str(j), y[start : start + int(JINGLE_S * SAMPLE_RATE)], SAMPLE_RATE)
            made.append(j)
        if i < len(bodies):  # each body once: two files that share a 150 s body are one recording by
            # dedup's own rule (the alignment covers 88 % of both), which a set of 31 originals showed
            other = bodies[i]
            body = load_audio(other, offset_s=INTRO_S, duration_s=150.0)
            intro = out / f"{f.stem}.intro-of.{other.stem}.flac"
            _write(intro, np.concatenate([y[: int(INTRO_S * SAMPLE_RATE)], body]))
            made.append(intro)
    for f in corpus_files:
        if sf.info(str(f)).duration < SHORT_S:
            s = out / f"{f.stem}.short.flac"
            _write(s, load_audio(f))
            made.append(s)
    return made


def run(a: argparse.Namespace) -> dict:
    out: dict = {"meta": machine()}
    if a.originals:
        out.update(dedup_set_run(a))
    if a.growth:
        out["growth"] = growth(a.work, a.growth, a.seed)
    out["peak_rss_mb"] = peak_rss_mb()
    return out


def dedup_set_run(a: argparse.Namespace) -> dict:
    if a.reuse:  # the set and library a previous run left in --work: dedup again with this code
        names = sorted(p.name for p in (a.work / "set").iterdir())
        extra = [a.work / "set" / n for n in names if any(t in n for t in HARD)]
        files = [a.work / "set" / n for n in names if a.work / "set" / n not in extra]
        families = families_of([f.name for f in files])
        originals = [f for f in files if f.name.count(".") == 1]
    else:
        lib_files, _ = cut_corpus(a.manifest, a.work / "audio", 10.0, 0, a.seed)
        long_enough = [f for f in lib_files if sf.info(str(f)).duration >= 60]
        files, families = dedup_set(long_enough, a.manifest, a.work / "set", a.originals, a.seed)
        originals = [f for f in files if f.name.count(".") == 1]
        extra = hard_negatives(originals, lib_files, a.work / "set", a.seed)
    families += [{f.name} for f in extra]
    hours = sum(sf.info(str(f)).duration for f in [*files, *extra]) / 3600
    out = {"files": len(files) + len(extra), "hours": hours, "originals": len(originals),
           "hard_negatives": {"jingles": sum(".jingle." in f.name for f in extra),
                              "shared_intros": sum(".intro-of." in f.name for f in extra),
                              "short_files": sum(".short." in f.name for f in extra)}}
    t0 = time.perf_counter()
    with Library.open(a.work / "lib", write=True, code_model=a.code_model) as lib:
        rep = lib.index([a.work / "set"])
    out["index_s"], out["audio_s"] = time.perf_counter() - t0, rep.audio_s
    truth = pairs_of(families)
    with Library.open(a.work / "lib") as lib:
        lib.search_index()  # the FAISS index is built once, before the timing
        for verify in (True, False) if a.no_verify else (True,):
            t1 = time.perf_counter()
            groups = lib.dedup(verify=verify)
            dt = time.perf_counter() - t1
            pred = pairs_of([{Path(m.path).name for m in g.tracks} for g in groups])
            fam_of = {n: i for i, fam in enumerate(families) for n in fam}
            wrong = sorted(" + ".join(sorted(p)) for p in pred if len({fam_of[n] for n in p}) > 1)
            out["verified" if verify else "codes_alone"] = {
                "dedup_s": dt, "groups": len(groups), **pair_scores(pred, truth),
                "pairs_between_recordings": len(wrong), "wrong_pairs": wrong[:20],
                "missed_pairs": sorted(" + ".join(sorted(p)) for p in truth - pred)[:20]}
    return out


def growth(work: Path, sizes: list[int], seed: int) -> list[dict]:
    from benchmarks.bench_library_scale import synthetic_tracks

    rows = []
    for n in sizes:
        folder = work / f"growth-{n}"
        shutil.rmtree(folder, ignore_errors=True)
        with Library.open(folder, write=True, code_model=DEFAULT_CODE_MODEL) as lib:
            for items in synthetic_tracks(n, 0, np.random.default_rng(seed), len(lib.vocabulary)):
                lib.store.put_tracks(items)
        with Library.open(folder) as lib:
            lib.search_index()
            t0 = time.perf_counter()
            groups = lib.dedup()
            rows.append({"tracks": n, "segments": lib.stats().n_segments, "dedup_s": time.perf_counter() - t0,
                         "groups": len(groups)})
        print(f"growth: {rows[-1]}", file=sys.stderr, flush=True)
        shutil.rmtree(folder, ignore_errors=True)
    return rows


def render(d: dict) -> str:
    if "hard_negatives" not in d:
        return render_growth(d, [])
    neg = d["hard_negatives"]
    lines = [(f"Dedup set: {d['files']} files, {d['hours']:.2f} h: {d['originals']} originals with 4 copies each "
             f"(and arrangements of the scores), plus {neg['jingles']} jingles cut from originals, {neg['shared_intros']} "
             f"tracks that open with another's 20 s intro and {neg['short_files']} short files of the corpus. Indexed in "
             f"{d['index_s']:.0f} s."), "",
             "| run | pair precision | recall | F1 | pairs between different recordings | `Library.dedup` wall time |",
             "|---|---|---|---|---|---|"]
    for key, name in (("verified", "verified on the stored sketches"), ("codes_alone", "codes alone (`verify=False`)")):
        if key in d:
            r = d[key]
            lines.append(f"| {name} | {r['precision']:.3f} | {r['recall']:.3f} | {r['f1']:.3f} "
                         f"| {r['pairs_between_recordings']} | {r['dedup_s']:.1f} s |")
    return render_growth(d, lines)


def render_growth(d: dict, lines: list[str]) -> str:
    if d.get("growth"):
        g = d["growth"]
        lines += ["", "| synthetic library | segments | `Library.dedup` |", "|---|---|---|"]
        lines += [f"| {r['tracks']:,} tracks | {r['segments']:,} | {r['dedup_s']:.1f} s |" for r in g]
        if len(g) > 1:
            k = np.polyfit(np.log([r["segments"] for r in g]), np.log([r["dedup_s"] for r in g]), 1)[0]
            lines.append(f"\nTime grows as segments^{k:.2f} over these sizes.")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--manifest", type=Path, required=True)
    ap.add_argument("--work", type=Path, required=True)
    ap.add_argument("--originals", type=int, default=40)
    ap.add_argument("--code-model", default=DEFAULT_CODE_MODEL)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--no-verify", action="store_true", help="also time dedup on the codes alone")
    ap.add_argument("--reuse", action="store_true",
                    help="dedup the set and library already in --work again (no rebuilding, no indexing)")
    ap.add_argument("--growth", type=int, nargs="*", default=[], help="synthetic library sizes to time dedup on")
    ap.add_argument("--json", type=Path)
    a = ap.parse_args(argv)
    d = run(a)
    if a.json:
        a.json.write_text(json.dumps(d, indent=1))
    print(render(d))
    return 0


if __name__ == "__main__":
    sys.exit(main())
