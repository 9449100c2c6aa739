"""End-to-end engine evaluation: index real music, query it with degraded excerpts, deduplicate a variant set.

Everything goes through the public ``Library`` API, as a user's script would:

1. the corpus's tracks (cut to their first ``--minutes-per-track`` minutes)
   are indexed, except ``--held-out`` of them, which only serve as
   out-of-library queries; indexing throughput is timed end to end;
2. seeded degraded excerpts (a query set of ``queries.py``: ``--query-set
   core`` is 10 s and 5 s under 9 degradations, ``full`` 3-30 s under 22) are
   searched one at a time with ``Library.search`` (once per ``--k``): top-1 /
   top-10 hit rate, offset error, warm query latency;
3. the match thresholds (the code score's, and the chroma's where the model
   has one) are calibrated on half of the queries (target 95 % true-negative
   rate) and reported on the other half;
4. a dedup set (re-encodes, gain, trims with fades, padding, +2 % speed, and
   for scores an alternate arrangement that must *not* merge) is indexed in
   a second library and ``Library.dedup`` is scored by pair precision /
   recall / F1, at the model's threshold and, codes alone, over a sweep.

``--write-thresholds`` then fits the code model's match and chroma thresholds
together on all the queries (``musichash.search.calibrate.fit_thresholds``),
takes the dedup threshold from the sweep (the lowest of the best F1) where a
dedup set ran, and writes them into the model's JSON: the calibration step of
recipes/code_models/train_crnnh.sh, run on music the model was not trained on.

    python -m benchmarks.corpus --out /tmp/corpus_full --packages planetblupi-music-ogg fb-music-high --midi 10
    python -m benchmarks.eval_engine --manifest /tmp/corpus_full/manifest.jsonl --work /tmp/eval --queries 20

Prints Markdown; ``--json`` writes the same figures as data (``render`` turns
that back into the Markdown, as run_all.py does).
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import soundfile as sf

from benchmarks import corpus as corpus_mod
from benchmarks.common import machine, peak_rss_mb
from benchmarks.queries import (
    SETS,
    Outcome,
    clip_id,
    cut_corpus,
    draw_queries,
    excerpt,
    pair_scores,
    pairs_of,
    query_table,
    summarize,
    threshold_data,
    threshold_table,
)

from musichash.features.audio import SAMPLE_RATE, load_audio
from musichash.library import Clip, Library
from musichash.models import DEFAULT_CODE_MODEL, get_spec
from musichash.search import calibrate, query
from musichash.search.thresholds import Thresholds, thresholds_file
from musichash.train import augment

DEDUP_SWEEP = (0.1, 0.15, 0.2, 0.25, 0.3, 0.4, 0.5)
#: the copies of each original in the dedup set, named STEM.VARIANT.EXT
DEDUP_VARIANTS = ("mp3_64k", "gain-6_trim_fade", "pad3_fadein", "speed1.02")


def run_queries(lib: Library, lib_files, held, n: int, seed: int, ks: tuple[int, ...],
                qset: str = "core") -> dict[int, list[Outcome]]:
    """Each excerpt searched with ``Library.search``, once per k (library segments per query window)."""
    outcomes: dict[int, list[Outcome]] = {k: [] for k in ks}
    for length, cond, inside, f, y, off in draw_queries(lib_files, held, n, seed, qset):
        for k in ks:
            outcomes[k].append(search_outcome(lib, length, cond, inside, f, y, off, k=k))
    return outcomes


def search_outcome(lib: Library, length: float, cond: str, inside: bool, f: Path, y: np.ndarray, off: float,
                   **search_kw) -> Outcome:
    """One excerpt of track ``f`` (at ``off`` s) searched with ``Library.search``, scored against its truth."""
    truth = str(f.absolute())
    t0 = time.perf_counter()
    # Every query figure comes from this call, the public search a user's script makes.
    (r,) = lib.search([Clip(f.name, y)], top_k=10, **search_kw)
    dt = time.perf_counter() - t0
    paths = [h.path for h in r.results]
    top1 = inside and bool(paths) and paths[0] == truth
    err = abs(r.results[0].offset_s - off) if top1 else None
    return Outcome(f.name, length, cond, inside, top1, inside and truth in paths, err,
                   r.results[0].score if r.results else 0.0, dt, clip_id(y), r.chroma, r.match)


def dedup_set(lib_files: list[Path], manifest: Path, out: Path, k: int, seed: int) -> tuple[list[Path], list[set[str]]]:
    """Originals (3 min cuts), their variants, and alternate arrangements of scores; returns files and true families."""
    rng = np.random.default_rng(seed)
    out.mkdir(parents=True, exist_ok=True)
    rows = {r["id"].replace("/", "__"): r for r in map(json.loads, manifest.read_text().splitlines())}
    picks = [lib_files[i] for i in rng.choice(len(lib_files), size=min(k, len(lib_files)), replace=False)]
    files, families = [], []
    for f in picks:
        y = load_audio(f, duration_s=180.0) if sf.info(str(f)).duration > 181 else load_audio(f)
        dur = len(y) / SAMPLE_RATE
        variants = dict(zip(DEDUP_VARIANTS, [  # name -> (degradations, file type)
            ([augment.mp3(64)], "mp3"),
            ([augment.gain(-6.0), augment.crop(2.0, dur - 7.0), augment.fade(1.0, 3.0)], "ogg"),
            ([augment.pad_silence(3.0, 1.0), augment.fade(0.5, 0.0)], "wav"),
            ([augment.speed(1.02)], "flac"),
        ], strict=True))
        stem = f.stem
        orig = out / f"{stem}.flac"
        sf.write(str(orig), y, SAMPLE_RATE)
        fam = {orig.name}
        files.append(orig)
        for name, (chain, ext) in variants.items():
            v = out / f"{stem}.{name}.{ext}"
            _write(v, augment.chain(*chain).apply(y, rng))
            fam.add(v.name)
            files.append(v)
        families.append(fam)
        r = rows.get(stem)
        if r and r.get("score"):
            arr = out / f"{stem}.arrangement.flac"
            if _rearrange(r, arr, len(y) / SAMPLE_RATE):
                files.append(arr)
                families.append({arr.name})  # related material, its own recording
    return files, families


def _write(path: Path, y: np.ndarray) -> None:
    """soundfile for wav/flac/mp3; ffmpeg for Ogg Vorbis (libsndfile 1.2's Vorbis writer crashes on long files)."""
    if path.suffix != ".ogg":
        sf.write(str(path), y, SAMPLE_RATE)
        return
    with tempfile.TemporaryDirectory() as tmp:
        wav = Path(tmp) / "x.wav"
        sf.write(str(wav), y, SAMPLE_RATE)
        subprocess.run(["ffmpeg", "-v", "error", "-y", "-i", str(wav), "-c:a", "libvorbis", "-q:a", "3", str(path)], check=True)


def _rearrange(row: dict, dest: Path, seconds: float) -> bool:
    """Render the same score on other instruments (an alternate arrangement)."""
    from music21 import corpus

    family = row["labels"]["instrument_family"]
    other = sorted(f for f in corpus_mod.INSTRUMENTS if f != family)[0]
    composer, name = row["score"].removeprefix("music21:").split("/", 1)
    with tempfile.TemporaryDirectory() as tmp:
        midi = Path(tmp) / "score.mid"
        try:
            corpus.parse(f"{composer}/{name}").write("midi", fp=str(midi))
        except Exception as e:  # noqa: BLE001 - music21 raises many types
            print(f"  cannot re-render {name}: {e}", file=sys.stderr)
            return False
        corpus_mod.trim_midi(midi, seconds, corpus_mod.INSTRUMENTS[other])
        corpus_mod.render(midi, dest, seconds)
    return True


def group_pairs(groups) -> set[frozenset]:
    """Every pair of file names within each of ``Library.dedup``'s groups."""
    return pairs_of([{Path(m.path).name for m in g.tracks} for g in groups])


def dedup_sweep(lib: Library, families: list[set[str]]) -> dict:
    """Pair precision / recall / F1 of ``Library.dedup`` with codes alone (``verify=False``) at each threshold
    of DEDUP_SWEEP, and the pairs of other recordings grouped at the highest thresholds (with that threshold).

    Codes alone: the threshold is what separates copies from other recordings in the codes; the audio check
    after it is scored at the model's threshold (``score_dedup``).
    """
    truth = pairs_of(families)
    sweep, highest = [], {}
    for thr in sorted(DEDUP_SWEEP):
        pred = group_pairs(lib.dedup(thr, verify=False))
        sweep.append({"threshold": thr, **pair_scores(pred, truth)})
        highest.update((pair, thr) for pair in pred - truth)
    false = sorted(((thr, " + ".join(sorted(pair))) for pair, thr in highest.items()), key=lambda x: (-x[0], x[1]))[:3]
    return {"sweep": sweep, "top_false": [[name, thr] for thr, name in false]}


def best_dedup_threshold(sweep: list[dict]) -> float:
    """The lowest threshold of the sweep's best pair F1."""
    best = max(r["f1"] for r in sweep)
    return min(r["threshold"] for r in sweep if r["f1"] == best)


def score_dedup(groups, families: list[set[str]]) -> dict:
    truth = pairs_of(families)
    pred = group_pairs(groups)
    return {**pair_scores(pred, truth), "true_pairs": len(truth),
            "false_pairs": sorted(" + ".join(sorted(x)) for x in pred - truth),
            "missed_pairs": sorted(" + ".join(sorted(x)) for x in truth - pred)}


def library_bytes(folder: Path) -> int:
    return sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())


def evaluate(a: argparse.Namespace) -> dict:
    """The whole evaluation; returns plain data (see render)."""
    lib_files, held = cut_corpus(a.manifest, a.work / "audio", a.minutes_per_track, a.held_out, a.seed)
    hours = sum(sf.info(str(f)).duration for f in lib_files) / 3600
    tag = Path(a.code_model).parent.name + "-" + Path(a.code_model).stem if a.code_model and "/" in a.code_model else (a.code_model or "default")
    libdir = a.work / f"lib-{tag}"
    ddir = a.work / f"dedup-lib-{tag}"
    if a.fresh:  # time the indexing: a library that exists only adds what changed
        for d in (libdir, ddir):
            shutil.rmtree(d, ignore_errors=True)
    out: dict = {"meta": machine(), "query_set": SETS[a.query_set].describe(), "queries_per_cell": a.queries,
                 "seed": a.seed, "minutes_per_track": a.minutes_per_track}
    t0 = time.perf_counter()
    with Library.open(libdir, write=True, code_model=a.code_model) as lib:
        rep = lib.index([a.work / "audio" / "library"], workers=None)
        st = lib.stats()
    t_index = time.perf_counter() - t0
    print(f"indexed {len(lib_files)} tracks, {hours:.2f} h in {t_index:.0f} s (computed {rep.audio_s / 3600:.2f} h)", file=sys.stderr)
    out["library"] = {"tracks": len(lib_files), "hours": hours, "held_out": [f.name for f in held],
                      "code_bytes_per_hour": st.code_bytes_per_hour, "bits": st.bits, "segments": st.n_segments,
                      "folder_bytes_per_hour": library_bytes(libdir) / st.hours if st.hours else None}
    out["indexing"] = {"audio_s": rep.audio_s, "wall_s": t_index,
                       "x_real_time": rep.audio_s / t_index if rep.audio_s else None}

    with Library.open(libdir) as lib:
        lib.search_index()  # loaded before the first query is timed
        runs = run_queries(lib, lib_files, held, a.queries, a.seed, tuple(a.k), a.query_set)
        t = lib.thresholds
        code_model = lib.code_model
        out["code_model"] = code_model
        out["match_threshold"], out["chroma_threshold"] = t.match, t.chroma
        out["runs"] = {str(k): {"summary": summarize(outs, t.match, t.chroma),
                                "threshold": threshold_data(outs, t.match, t.chroma)}
                       for k, outs in runs.items()}
        # warm end-to-end latency through the public call, 10 s clips
        rng = np.random.default_rng(a.seed + 1)
        lat = []
        for _ in range(a.latency_queries):
            f = lib_files[int(rng.integers(len(lib_files)))]
            y, _ = excerpt(load_audio(f, duration_s=120.0), 10.0, [], rng)
            t0 = time.perf_counter()
            list(lib.search([Clip(f.name, y)]))
            lat.append((time.perf_counter() - t0) * 1000)
    out["latency_ms"] = {"n": len(lat), "p50": float(np.median(lat)), "p99": float(np.quantile(lat, 0.99))} if lat else None
    out["outcomes"] = {str(k): [o.__dict__ for o in outs] for k, outs in runs.items()}
    print("queries done", file=sys.stderr, flush=True)

    if a.dedup_tracks:
        files, families = dedup_set(lib_files, a.manifest, a.work / "dedup", a.dedup_tracks, a.seed)
        t0 = time.perf_counter()
        with Library.open(ddir, write=True, code_model=a.code_model) as lib:
            rep = lib.index([a.work / "dedup"])
            t1 = time.perf_counter()
            groups = lib.dedup()
            t_dedup = time.perf_counter() - t1
            t2 = time.perf_counter()
            codes_alone = score_dedup(lib.dedup(verify=False), families)
            codes_alone["dedup_s"] = time.perf_counter() - t2
            out["dedup"] = {"files": len(files), "threshold": lib.thresholds.dedup, "index_s": t1 - t0,
                            "audio_s": rep.audio_s, "dedup_s": t_dedup, "codes_alone": codes_alone,
                            **score_dedup(groups, families), **dedup_sweep(lib, families)}
    if a.write_thresholds:
        fitted = fit_thresholds(runs[query.DEFAULT_K], t, a.manifest, len(lib_files), len(held), out.get("dedup"))
        path = calibrate.write_thresholds(get_spec(code_model), fitted)
        out["thresholds_written"] = {"path": path, **fitted.to_dict()}
        print(f"wrote {code_model}'s thresholds to {path}", file=sys.stderr)
    out["peak_rss_mb"] = peak_rss_mb()
    return out


def fit_thresholds(outs: list[Outcome], base: Thresholds, manifest: Path, tracks: int, held_out: int,
                   dedup: dict | None) -> Thresholds:
    """The match and chroma thresholds fitted together on all the queries' outcomes (``calibrate.JOINT_TNR``
    of the out-of-library clips rejected), and the dedup threshold of the sweep's best F1 where a dedup set ran."""
    source = f"{manifest.name} of {manifest.parent.name} ({tracks} tracks indexed, {held_out} held out)"
    fitted = calibrate.fit_thresholds(outs, base, source=source)
    return replace(fitted, dedup=best_dedup_threshold(dedup["sweep"])) if dedup else fitted


def render_intro(d: dict) -> str:
    lib = d["library"]
    return (f"musichash: code model `{d['code_model']}`; library of {lib['tracks']} tracks (first "
            f"{d['minutes_per_track']:g} min of each), {lib['hours']:.2f} h; held out (out-of-library clips): "
            f"{', '.join(lib['held_out'])}.")


def render_indexing(d: dict) -> str:
    lib, idx = d["library"], d["indexing"]
    lines = []
    if idx["x_real_time"]:
        lines.append(f"musichash indexing (`Library.index`, decode to codes and tags): {idx['audio_s'] / 3600:.2f} h "
                     f"in {idx['wall_s']:.0f} s = **{idx['x_real_time']:.0f}x** real time end to end.")
    lines.append(f"Codes: {lib['code_bytes_per_hour'] / 1e3:.1f} KB per hour of audio ({lib['bits']}-bit, "
                 f"{lib['segments']:,} segments); the library folder right after indexing (codes with times, SQLite; "
                 f"the FAISS cache under index/ comes with the first search) {lib['folder_bytes_per_hour'] / 1e3:.0f} KB per hour.")
    return " ".join(lines)


def shipped_thresholds(d: dict) -> str:
    """The model's match thresholds as run: ``0.272, chroma 0.663`` (no chroma for models without one)."""
    tc = d.get("chroma_threshold")
    return f"{d['match_threshold']:.3f}" + (f", chroma {tc:.3f}" if tc is not None else "")


def render_threshold(d: dict, k: str | None = None) -> str:
    run = d["runs"][k or next(iter(d["runs"]))]
    oks = [f"{b['length']:g} s {100 * b['ool_tnr']:.0f} %" for b in run["summary"]["by_length"] if b["ool_n"]]
    return (threshold_table(run["threshold"], "model default", shipping=" (for shipping)")
            + f"\n\nOut-of-library clips rejected at the model's thresholds ({shipped_thresholds(d)}), by length: "
            + ", ".join(oks) + ".")


def render_latency(d: dict) -> str:
    lat = d["latency_ms"]
    if lat is None:
        return "- musichash, warm 10 s query: not timed (--latency-queries 0)."
    return (f"- musichash, warm 10 s query through `Library.search` (mel, model, kNN, vote, SQL), {lat['n']} clips "
            f"against {d['library']['tracks']} tracks: p50 {lat['p50']:.0f} ms, p99 {lat['p99']:.0f} ms.")


def render_written(d: dict) -> str:
    """The thresholds ``--write-thresholds`` wrote, if it ran."""
    w = d.get("thresholds_written")
    if not w:
        return ""
    chroma = f", chroma {w['chroma']:.3f}" if w.get("chroma") is not None else ""
    return (f"Thresholds written to `{w['path']}`: match {w['match']:.3f}{chroma} (fitted together to "
            f"{w['target_tnr']:.1%} of the out-of-library clips rejected, on all {d['runs'][str(query.DEFAULT_K)]['threshold']['n_neg']} "
            f"of them), dedup {w['dedup']:g}; source: {w['source']}.")


def render(d: dict) -> str:
    """Markdown of evaluate()'s data."""
    q = d["query_set"]
    lines = [render_intro(d), render_indexing(d) + "\n",
             f"Query set `{q['name']}`, {d['queries_per_cell']} queries per length x condition, seed {d['seed']}.\n"]
    for k in d["runs"]:
        if len(d["runs"]) > 1:
            lines.append(f"### k = {k} library segments per query window\n")
        lines += [query_table({"musichash": d["runs"][k]["summary"]}) + "\n", render_threshold(d, k) + "\n"]
    lines.append(render_latency(d) + "\n")
    if "dedup" in d:
        lines.append(render_dedup(d["dedup"]))
    if d.get("thresholds_written"):
        lines.append(render_written(d) + "\n")
    return "\n".join(lines)


def render_dedup(dd: dict) -> str:
    lines = [f"Dedup ({dd['files']} files, threshold {dd['threshold']}): precision {dd['precision']:.3f}, recall "
             f"{dd['recall']:.3f}, F1 **{dd['f1']:.3f}** ({dd['true_pairs']} true pairs, {dd['predicted_pairs']} "
             f"predicted); indexing the set took {dd['index_s']:.0f} s, `dedup` {dd['dedup_s']:.1f} s (each pair the codes "
             "align checked on the two files' audio)."]
    if "codes_alone" in dd:
        ca = dd["codes_alone"]
        lines[0] += (f" With `--no-verify` (codes alone): precision {ca['precision']:.3f}, recall {ca['recall']:.3f}, "
                     f"F1 {ca['f1']:.3f} ({ca['predicted_pairs']} predicted), {ca['dedup_s']:.1f} s.")
    lines[0] += ("\n\n`Library.dedup` with codes alone (`verify=False`) at each threshold: the pairs within its groups "
                 "(no audio check):\n")
    lines += ["| threshold | precision | recall | F1 | predicted pairs |", "|---|---|---|---|---|"]
    for r in dd["sweep"]:
        lines.append(f"| {r['threshold']:.2f} | {r['precision']:.3f} | {r['recall']:.3f} | {r['f1']:.3f} "
                     f"| {r['predicted_pairs']} |")
    lines.append("\nPairs of other recordings that codes alone group, with the highest threshold that still does: "
                 + ("; ".join(f"{n} ({v:.2f})" for n, v in dd["top_false"]) or "none") + ".\n")
    lines += [f"- {k.split('_')[0]}: {x}" for k in ("false_pairs", "missed_pairs") for x in dd[k][:10]]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--manifest", type=Path, required=True)
    ap.add_argument("--work", type=Path, required=True, help="scratch folder (cut audio, libraries)")
    ap.add_argument("--code-model", default=None)
    ap.add_argument("--minutes-per-track", type=float, default=5.0)
    ap.add_argument("--held-out", type=int, default=4)
    ap.add_argument("--query-set", choices=sorted(SETS), default="core", help="lengths and degradations (queries.py)")
    ap.add_argument("--queries", type=int, default=20, help="per length x condition")
    ap.add_argument("--dedup-tracks", type=int, default=8, help="originals in the dedup set (0: no dedup)")
    ap.add_argument("--latency-queries", type=int, default=30, help="warm 10 s clips timed through Library.search")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--fresh", action="store_true", help="delete this code model's libraries in --work first")
    ap.add_argument("--k", type=int, nargs="+", default=[query.DEFAULT_K],
                    help="library segments per query window, Library.search's k (several: a sweep)")
    ap.add_argument("--write-thresholds", action="store_true",
                    help="fit the code model's match and chroma thresholds together on all the queries (and dedup's "
                         "on the sweep) and write them into its JSON (a calibration set's run)")
    ap.add_argument("--json", type=Path, default=None)
    a = ap.parse_args(argv)
    if a.write_thresholds:
        if query.DEFAULT_K not in a.k:
            ap.error(f"--write-thresholds fits on the queries at the search's default k; add it: --k {query.DEFAULT_K}")
        model = a.code_model or DEFAULT_CODE_MODEL
        if thresholds_file(get_spec(model)) is None:
            ap.error(f"--write-thresholds: {model} has no model JSON to write thresholds into (CRNNH models and "
                     "trained checkpoints have one)")
    d = evaluate(a)
    if a.json:
        a.json.write_text(json.dumps(d, indent=1))
    print(f"## code model {d['code_model']}\n\n" + render(d))
    return 0


if __name__ == "__main__":
    sys.exit(main())
