"""Regenerate BENCHMARKS.md: every benchmark in one run, stamped with date, machine and commit.

    python -m benchmarks.run_all --quick                     # a subset sized for 15 minutes on a quiet 2-core machine
    python -m benchmarks.run_all --full --out BENCHMARKS.md  # everything
    python -m benchmarks.run_all --smoke                     # the pipeline end to end in a few minutes

Each piece runs as its own process (so its peak memory is its own) and writes
JSON: eval_engine.py (musichash: indexing, a query set of degraded and
out-of-library excerpts, warm latency, dedup), bench_chromaprint.py (the same
queries and dedup files), bench_index.py (indexing stages and decoding
workers), bench_tag.py (tagging throughput), bench_similarity.py (`musichash
evaluate` on the corpus manifest: mAP@R, P@10, P@100 and P@r<=2 of float,
LSH, ITQ, interim and CRNNH codes (crnnh16/32/64, or --code-model's), with 4 windows per file in --smoke,
16 otherwise), bench_tagging_auc.py (per-tag ROC-AUC and PR-AUC of both
taggers where the manifest's labels map to a tag) and bench_scale.py (search
latency, recall, build cost, memory and scan rate against a numpy copy on
synthetic libraries up to 1M tracks; --quick stops at 100k) and
bench_library_scale.py (warm queries through Library.search on the engine
step's library grown with synthetic tracks: to 100k with --full, 10k with
--quick). Steps:

    engine, libscale, chromaprint, interim (--full only), index, tag, similarity, tagging, scale   (--steps picks some)

The Markdown is assembled from that data by the scripts' own ``render``
functions, and plots.py draws the figures, so every number in the file comes
from this run.

The evaluation corpus (benchmarks/corpus.py: Planet Blupi, Frozen Bubble
and ten MIDI renders) is built in --corpus when its manifest is missing.
Scratch files go to --work (default benchmarks/out/run, git-ignored); a failed
run leaves --out alone and writes what it has to OUT.failed.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import os
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from benchmarks import (
    bench_chromaprint,
    bench_index,
    bench_library_scale,
    bench_scale,
    bench_similarity,
    bench_tag,
    bench_tagging_auc,
    eval_engine,
)
from benchmarks.common import machine
from benchmarks.queries import cut_corpus, query_table

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent


@dataclass(frozen=True)
class Profile:
    query_set: str
    queries: int  # per length x condition
    minutes_per_track: float
    held_out: int
    dedup_tracks: int
    latency_queries: int
    index_files: int | None  # bench_index's input: the first n library cuts (None: all)
    index_workers: tuple[int, ...]
    tag_minutes: float
    scale: tuple[str, ...]  # bench_scale.py's arguments
    libscale: tuple[str, ...] = ()  # bench_library_scale.py's arguments besides its library and work folders
    similarity_windows: int = 16  # musichash evaluate --windows
    interim: bool = False  # the interim step: the engine's queries again with the interim codes


#: the interim step's code model: what CRNNH replaced as the default
INTERIM_MODEL = "interim_vgg_itq64"


PROFILES = {
    "smoke": Profile("quick", 1, 1.0, 2, 1, 5, 1, (0,), 0.5,
                     ("--sizes", "1000", "--queries", "2", "--budget-s", "1", "--min-queries", "4",
                      "--kinds", "flat", "ivf", "--nprobe", "16", "--core-reps", "50"), similarity_windows=4,
                     libscale=("--sizes", "200", "--per-condition", "2", "--rounds", "1")),
    "quick": Profile("quick", 10, 5.0, 4, 4, 30, 3, (0,), 3.0,
                     # --multihash-max also drops the 2-thread flat runs past 10k tracks (~20 s at 100k)
                     ("--sizes", "1000", "10000", "100000", "--queries", "4", "--budget-s", "2", "--min-queries", "8",
                      "--kinds", "flat", "ivf", "hnsw", "--nprobe", "16", "64", "--multihash-max", "2e6",
                      "--core-reps", "100"),
                     libscale=("--sizes", "1000", "10000", "--per-condition", "10", "--rounds", "2")),
    "full": Profile("full", 20, 5.0, 4, 8, 30, None, (0, 1), 10.0,
                    ("--sizes", "1000", "10000", "100000", "1000000"), interim=True,
                    libscale=("--sizes", "1000", "10000", "100000")),
}
STEPS = ("engine", "libscale", "chromaprint", "interim", "index", "tag", "similarity", "tagging", "scale")
#: the similarity step's code models unless --code-model names others: CRNNH at each bit count evaluated
SIMILARITY_MODELS = ("crnnh16", "crnnh32", "crnnh64")
VERSIONS = ("torch", "faiss-cpu", "numpy", "librosa", "pedalboard", "av")


def step_args(name: str, p: Profile, a: argparse.Namespace, manifest: Path) -> list[str]:
    """The command line of one step: its module in benchmarks/, then its arguments (run_step adds --json)."""
    work = a.work / "eval"
    common = ["--manifest", str(manifest), "--work", str(work), "--minutes-per-track", str(p.minutes_per_track),
              "--held-out", str(p.held_out), "--query-set", p.query_set, "--queries", str(p.queries),
              "--seed", str(a.seed), "--fresh"]
    if name == "engine":
        return ["eval_engine", *common, "--dedup-tracks", str(p.dedup_tracks),
                "--latency-queries", str(p.latency_queries)]
    if name == "libscale":  # the engine step's library, grown with synthetic tracks in a copy
        return ["bench_library_scale", "--library", str(work / "lib-default"), "--audio", str(work / "audio" / "library"),
                "--work", str(a.work / "libscale"), "--seed", str(a.seed), *p.libscale]
    if name == "interim":  # the same queries, no dedup set, no latency
        return ["eval_engine", *common, "--code-model", INTERIM_MODEL, "--dedup-tracks", "0", "--latency-queries", "0"]
    if name == "chromaprint":
        return ["bench_chromaprint", *common, "--cache", str(a.work / "fpcalc-cache"),
                *(["--skip-dedup"] if not p.dedup_tracks else [])]
    if name == "index":
        files = sorted((work / "audio" / "library").glob("*.flac"))
        return ["bench_index", *map(str, files[: p.index_files]), "--workers", *map(str, p.index_workers)]
    if name == "tag":
        return ["bench_tag", "--minutes", str(p.tag_minutes), "--demo", str(ROOT / "corpus" / "demo")]
    if name == "similarity":
        return ["bench_similarity", str(manifest), "--windows", str(p.similarity_windows), "--seed", str(a.seed),
                *(x for m in a.code_models or SIMILARITY_MODELS for x in ("--code-model", m))]
    if name == "tagging":  # the cuts of the engine step, all of them
        return ["bench_tagging_auc", "--manifest", str(manifest), "--work", str(work), "--minutes-per-track",
                str(p.minutes_per_track), "--held-out", str(p.held_out), "--seed", str(a.seed)]
    return ["bench_scale", *p.scale]


def run_step(name: str, argv: list[str], results: Path, logs: Path) -> dict:
    out = results / f"{name}.json"
    out.unlink(missing_ok=True)
    print(f"[{time.strftime('%H:%M:%S')}] {name}: {' '.join(argv)}", file=sys.stderr, flush=True)
    t0 = time.perf_counter()
    with open(logs / f"{name}.md", "w") as so, open(logs / f"{name}.err", "w") as se:
        rc = subprocess.run([sys.executable, "-m", f"benchmarks.{argv[0]}", *argv[1:], "--json", str(out)],
                            stdout=so, stderr=se, cwd=ROOT).returncode
    wall = time.perf_counter() - t0
    tail = (logs / f"{name}.err").read_text().strip().splitlines()[-5:] if rc else []
    print(f"[{time.strftime('%H:%M:%S')}] {name}: {'ok' if rc == 0 else f'FAILED ({rc})'} in {wall:.0f} s",
          file=sys.stderr, flush=True)
    return {"name": name, "argv": argv, "rc": rc, "wall_s": wall, "error": tail}


def ensure_corpus(corpus: Path) -> Path:
    manifest = corpus / "manifest.jsonl"
    if not manifest.exists():
        print(f"building the evaluation corpus in {corpus}", file=sys.stderr, flush=True)
        subprocess.run([sys.executable, "-m", "benchmarks.corpus", "--out", str(corpus), "--packages",
                        "planetblupi-music-ogg", "fb-music-high", "--midi", "10"], check=True, cwd=ROOT)
    return manifest


def versions() -> dict:
    out = {}
    for name in VERSIONS:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = None
    return out


# ---------------------------------------------------------------------------
# Markdown


def _load(results: Path, name: str) -> dict | None:
    f = results / f"{name}.json"
    return json.loads(f.read_text()) if f.exists() else None


def stamp(run: dict) -> str:
    m = run["meta"]
    gpu = "; ".join(m["gpus"]) if m["gpus"] else "no GPU"
    v = ", ".join(f"{k} {x}" for k, x in run["versions"].items() if x)
    return (f"Generated by `{run['command']}` on {m['date']} ({run['wall_s'] / 60:.1f} min), commit "
            f"`{m['commit']}`, on {m['cpu']} ({m['cores']} cores), {m['ram_gib']:.0f} GiB RAM, {gpu}; "
            f"Python {m['python']}, {v}. Load average at the start {' / '.join(map(str, m['load']))} "
            f"(1/5/15 min), at the end {' / '.join(map(str, run['load_end']))}: other work on the machine slows "
            "every timing below. Every number in this file comes from this run; nothing here is a timed unit test. "
            "Whether a rerun reproduces it: `benchmarks/compare_runs.py` on the two runs' results "
            "([benchmarks/RERUN.md](benchmarks/RERUN.md)).")


def steps_table(run: dict, data: dict) -> str:
    rows = ["| step | script | wall | peak RSS | status |", "|---|---|---:|---:|---|"]
    for s in run["steps"]:
        d = data.get(s["name"]) or {}
        rss = d.get("peak_rss_mb")
        if s["name"] == "index" and d:
            rss = max(r["peak_rss_mb"] for r in d["index"])
        elif s["name"] == "tag" and d:
            rss = max(r["peak_rss_mb"] for r in d["rows"])
        elif s["name"] == "scale" and d:
            rss = max(r["peak_rss_mb"] for r in d["results"])
        status = "ok" if s["rc"] == 0 else f"failed ({s['rc']}): {' / '.join(s['error'])}"
        rows.append(f"| {s['name']} | `{s['argv'][0]}` | {s['wall_s']:.0f} s | "
                    f"{'–' if rss is None else f'{rss:,.0f} MB'} | {status} |")
    return "\n".join(rows)


def _met(ok: bool | None) -> str:
    return "not measured" if ok is None else ("yes" if ok else "no")


def targets(data: dict) -> str:
    """The engine issue's targets against this run's figures."""
    e, cp, sc = data.get("engine"), data.get("chromaprint"), data.get("scale")
    rows = ["| target | measured | Chromaprint, same queries | met |", "|---|---|---|---|"]
    if e:
        run = next(iter(e["runs"].values()))
        by = {b["length"]: b for b in run["summary"]["by_length"]}
        cby = {b["length"]: b for b in cp["summary"]["by_length"]} if cp else {}
        tops = [by[x]["top1"] for x in (10.0, 5.0) if x in by]
        rows.append("| top-1 >= 95 % on 10 s and 5 s excerpts across the degradations | "
                    + ", ".join(f"{100 * by[x]['top1']:.1f} % ({x:g} s)" for x in (10.0, 5.0) if x in by) + " | "
                    + ", ".join(f"{100 * cby[x]['top1']:.1f} %" for x in (10.0, 5.0) if x in cby) + " | "
                    + _met(min(tops) >= 0.95 if tops else None) + " |")
        t = run["threshold"]["fixed_all"]
        ct = cp["threshold"]["fixed_all"] if cp else None
        rows.append(f"| out-of-library excerpts `match: false` >= 90 % | {100 * t['tnr']:.0f} % at the shipped "
                    f"threshold ({run['threshold']['n_neg']} clips) | "
                    + (f"{100 * ct['tnr']:.0f} % at BER {bench_chromaprint.DEFAULT_BER}" if ct else "–")
                    + f" | {_met(t['tnr'] >= 0.9)} |")
        if "dedup" in e:
            cf = None
            if cp and cp.get("dedup"):
                cf = next(r["f1"] for r in cp["dedup"]["sweep"] if r["threshold"] == bench_chromaprint.DEFAULT_BER)
            rows.append(f"| dedup pair F1 >= 0.98 | {e['dedup']['f1']:.3f} ({e['dedup']['files']} files) | "
                        f"{'–' if cf is None else f'{cf:.3f} at BER {bench_chromaprint.DEFAULT_BER}'} | "
                        f"{_met(e['dedup']['f1'] >= 0.98)} |")
        x = e["indexing"]["x_real_time"]
        fp = (cp or {}).get("fingerprinting")
        rows.append(f"| indexing >= 100x real time | {x:.0f}x end to end | "
                    f"{'%.0fx (fpcalc)' % fp['x_real_time'] if fp else '–'} | {_met(x >= 100)} |")
    if e or sc or data.get("libscale"):
        rows.append(warm_query_row(e, sc, data.get("libscale")))
    if sc:
        big = [r for r in sc["results"] if r["n_tracks"] >= 1_000_000]
        core = big[0]["core"]["single_p50_ms"] if big else None
        ivf = big[0]["core"].get("ivf") if big else None
        ivf_text = (f"; {ivf['p50_ms']:.2f} ms with the IVF track index a library of this size builds (nprobe "
                    f"{ivf['nprobe']} of {ivf['nlist']} lists), recall@10 {ivf['recall']:.3f}{_spread(ivf['rounds_ms'])}"
                    if ivf else "")
        rows.append("| search core < 1 ms per query at 1M tracks | "
                    + (f"{core:.2f} ms p50 flat (one track code against 1M){_spread(big[0]['core'].get('single_rounds_ms'))}{ivf_text}"
                       if big else "not run (largest size "
                       f"{max(r['n_tracks'] for r in sc['results']):,} tracks)")
                    + f" | – | {_met((ivf['p50_ms'] if ivf else core) < 1.0 if big else None)} |")
    if e:
        kb = e["library"]["code_bytes_per_hour"] / 1e3
        rows.append(f"| <= 30 KB of codes per hour | {kb:.1f} KB/h | – | {_met(kb <= 30)} |")
    return "\n".join(rows)


def _spread(rounds: list[float] | None) -> str:
    """``; median of 3 timing rounds, 1.10-2.30 ms`` for a bench_scale latency with rounds, else nothing."""
    if not rounds or len(rounds) < 2:
        return ""
    return f"; median of {len(rounds)} timing rounds, {min(rounds):.2f}–{max(rounds):.2f} ms"


def warm_query_row(e: dict | None, sc: dict | None, ls: dict | None = None) -> str:
    """Measured through ``Library.search`` at 100k tracks (the libscale step) where it ran; else the
    small real library end to end plus search + vote at 100k synthetic tracks, an estimate."""
    big = [r for r in (ls or {}).get("results", []) if r["n_tracks"] >= 100_000]
    if big:
        r = big[0]
        return (f"| warm 10 s query < 50 ms at 100k tracks | {r['p50_ms']:.1f} ms p50 through `Library.search` at "
                f"{r['n_tracks']:,} tracks ({ls['real_tracks']} real, the rest synthetic; "
                f"{bench_library_scale.index_label(r['index'])}), "
                f"{r['encode_p50_ms']:.1f} ms of it encoding the clip{_spread(r['rounds_ms'])} | – | "
                f"{_met(r['p50_ms'] < 50)} |")
    front = e["latency_ms"]["p50"] if e else None
    best = None
    for r in (sc or {}).get("results", []):
        if r["n_tracks"] == 100_000:
            flat = next(o for o in r["runs"] if o["variant"] == "flat")
            # threads as named: the library's FAISS runs on all cores (its OpenMP default)
            ok = [o for o in r["runs"] if o["windows"] == flat["windows"]
                  and all((o["acc"][c] or 0) >= (flat["acc"][c] or 0) for c in ("flip5", "flip15", "flip25"))]
            best = min(ok, key=lambda o: o["p50_ms"]) if ok else None
    parts = []
    if front is not None:
        parts.append(f"{front:.0f} ms p50 end to end at {e['library']['tracks']} tracks")
    if best:
        parts.append(f"{best['p50_ms']:.1f} ms search + vote at 100k synthetic tracks ({best['variant']}, "
                     f"the fastest as accurate as flat){_spread(best.get('p50_rounds_ms'))}")
    met = None
    if front is not None and best:
        met = front + best["p50_ms"] < 50
    return (f"| warm 10 s query < 50 ms at 100k tracks | {'; '.join(parts) or '–'} | – | "
            f"{_met(met)}{' (sum, an estimate)' if met is not None else ''} |")


def render(run: dict, data: dict, figures: dict[str, Path], out: Path) -> str:
    e, cp = data.get("engine"), data.get("chromaprint")
    rel = {k: os.path.relpath(v, out.parent) for k, v in figures.items()}
    ls = data.get("libscale")
    growth = ["### Query latency as the library grows\n", bench_library_scale.render(ls) + "\n"] if ls else []
    md = ["# Benchmarks\n", stamp(run) + "\n", "```sh\n" + run["command"] + "\n```\n", steps_table(run, data) + "\n",
          "## Against the issue's targets\n", "The engine:\n", targets(data) + "\n",
          "CRNNH (the similarity step and, with `--full`, the interim step):\n", crnnh_targets(data) + "\n"]
    if e:
        qs = e["query_set"]
        conds = "; ".join(f"`{c}` " + (", ".join(f"{d['name']}({', '.join(f'{k}={v}' for k, v in d['params'].items())})"
                                                   for d in ds) or "none") for c, ds in qs["conditions"].items())
        md += ["## Query by example: musichash and Chromaprint on the same queries\n",
               eval_engine.render_intro(e) + "\n",
               f"Query set `{qs['name']}`: excerpts of {', '.join(f'{x:g}' for x in qs['lengths'])} s at a random offset "
               f"of a library track, {e['queries_per_cell']} per length x degradation (seed {e['seed']}); "
               f"out-of-library clips of the held-out tracks under {', '.join(qs['out_conditions'])}. "
               f"Degradations (`musichash.train.augment`): {conds}.\n"]
        if cp:
            md += [bench_chromaprint.render_intro(cp) + "\n", same_queries(e, cp) + "\n"]
        if "hit_rate" in rel:
            md.append(f"![top-1 hit rate against excerpt length]({rel['hit_rate']})\n")
        run0 = next(iter(e["runs"].values()))
        systems = {"musichash": run0["summary"], **({"Chromaprint": cp["summary"]} if cp else {})}
        md += [query_table(systems) + "\n", "### Out-of-library clips\n", "musichash (match: score > threshold):\n",
               eval_engine.render_threshold(e) + "\n"]
        if cp:
            md += ["Chromaprint (match: lowest BER < threshold):\n",
                   bench_chromaprint.render_threshold(cp["threshold"], cp["threshold_extra"]) + "\n"]
        md += ["### Query latency\n", eval_engine.render_latency(e)]
        if cp:
            md.append(bench_chromaprint.render_latency(cp))
        md.append("")
        md += growth
        if "dedup" in e:
            md += ["## Deduplication\n", eval_engine.render_dedup(e["dedup"])]
            if cp and cp.get("dedup"):
                md += ["Chromaprint, by pair BER (the same files):\n", bench_chromaprint.render_dedup(cp["dedup"]) + "\n"]
    else:
        md += growth
    if e and data.get("interim"):
        md += ["## Query by example: CRNNH against the interim codes\n", interim_section(e, data["interim"]) + "\n"]
    md.append("## Indexing and tagging throughput\n")
    if e:
        md.append(eval_engine.render_indexing(e) + "\n")
    if cp and cp.get("fingerprinting"):
        fp = cp["fingerprinting"]
        md.append(f"Chromaprint fingerprints the same library at **{fp['x_real_time']:.0f}x** real time "
                  f"({fp['wall_s']:.1f} s, one `fpcalc` at a time).\n")
    if data.get("index"):
        md.append(bench_index.render(data["index"]) + "\n")
    if data.get("tag"):
        md.append(bench_tag.render(data["tag"]) + "\n")
    if data.get("similarity"):
        md += ["## Similarity on the corpus's labels (`musichash evaluate`)\n",
               bench_similarity.render(data["similarity"]) + "\n"]
    if data.get("tagging"):
        md += ["## Tag quality where labels exist\n", bench_tagging_auc.render(data["tagging"]) + "\n"]
    if data.get("scale"):
        sc = data["scale"]
        md += ["## Search at scale (synthetic 64-bit codes)\n",
               "No corpus holds a million tracks, so `bench_scale.py` builds libraries of synthetic 64-bit codes "
               "shaped like real ones (tracks of 2-6 min, a segment code every 1.28 s drifting along the track, "
               "tracks clustered around style centres) and queries them with 10 s clips whose window codes have "
               "5, 15 or 25 % of their bits flipped, plus clips of unindexed tracks; its docstring has the details. "
               "Each size runs in a fresh process.\n"]
        if "latency" in rel:
            md.append(f"![query latency against library size]({rel['latency']})\n")
        md.append(bench_scale.render(sc["meta"], sc["results"], header=False) + "\n")
        big = max(sc["results"], key=lambda r: r["n_tracks"])
        md.append(f"Memory bandwidth against the search core: numpy copies {sc['meta']['copy_gbps']:.1f} GB/s "
                  f"({2 * sc['meta']['copy_gbps']:.1f} GB/s read + write); the flat scan of one track code against "
                  f"{big['n_tracks']:,} track codes reads {big['core']['single_gbps']:.1f} GB/s "
                  f"({big['core']['single_gbps'] / sc['meta']['copy_gbps']:.0%} of the copy rate).\n")
    if not (run["meta"]["gpus"]):
        md.append("Not measured: anything on a GPU (this machine has none).\n")
    return "\n".join(md)


def interim_section(e: dict, im: dict) -> str:
    """The CRNNH issue's query-by-example target: the default model against the interim codes it replaced."""
    a, b = next(iter(e["runs"].values())), next(iter(im["runs"].values()))
    same = [o["clip"] for o in next(iter(e["outcomes"].values()))] == [o["clip"] for o in next(iter(im["outcomes"].values()))]
    ta, tb = a["threshold"]["fixed_all"], b["threshold"]["fixed_all"]
    return "\n".join([
        f"The engine's queries again, through a library indexed with `{im['code_model']}` (the interim codes that "
        f"`{e['code_model']}` replaced as the default): {'the same clips, sample for sample' if same else '**other clips**'}. "
        f"Out-of-library clips rejected at each model's shipped threshold: {100 * ta['tnr']:.0f} % "
        f"({eval_engine.shipped_thresholds(e)}) against {100 * tb['tnr']:.0f} % ({eval_engine.shipped_thresholds(im)}).\n",
        query_table({e["code_model"]: a["summary"], im["code_model"]: b["summary"]})])


def crnnh_targets(data: dict) -> str:
    """The CRNNH issue's targets against this run's figures."""
    sim, e, im = data.get("similarity"), data.get("engine"), data.get("interim")
    rows = ["| target | measured | met |", "|---|---|---|"]
    if sim:
        by = {(m["method"].split("-")[0], m["bits"]): m["map_at_r"] for m in sim["report"]["methods"]}
        beat = []  # (bits, CRNNH, LSH, ITQ) where evaluate ran all three
        for (kind, bits), v in sorted(by.items(), key=lambda kv: kv[0][1] or 0):
            if kind == "crnnh" and ("lsh", bits) in by and ("itq", bits) in by:
                beat.append((bits, v, by[("lsh", bits)], by[("itq", bits)]))
        rows.append("| mAP@R above LSH and ITQ at every bit count | "
                    + ("; ".join(f"{bits} bits: {v:.3f} against LSH {lsh:.3f}, ITQ {itq:.3f}" for bits, v, lsh, itq in beat)
                       or "–")
                    + f" | {_met(all(v > max(lsh, itq) for _, v, lsh, itq in beat) if beat else None)} |")
        if ("crnnh", 64) in by and ("float", None) in by:
            ratio = by[("crnnh", 64)] / by[("float", None)]
            rows.append(f"| mAP@R within 5 % of float at 64 bits | {by[('crnnh', 64)]:.3f} against {by[('float', None)]:.3f} "
                        f"({ratio:.1%}) | {_met(ratio >= 0.95)} |")
    if e and im:
        a = {b["length"]: b["top1"] for b in next(iter(e["runs"].values()))["summary"]["by_length"]}
        b = {x["length"]: x["top1"] for x in next(iter(im["runs"].values()))["summary"]["by_length"]}
        ok = all(a[x] >= b[x] for x in (10.0, 5.0) if x in a and x in b)
        rows.append("| engine top-1 on degraded 10 s and 5 s excerpts at least the interim codes' | "
                    + ", ".join(f"{x:g} s: {100 * a[x]:.1f} % against {100 * b[x]:.1f} %" for x in (10.0, 5.0) if x in a and x in b)
                    + f" | {_met(ok)} |")
    return "\n".join(rows)


def same_queries(e: dict, cp: dict) -> str:
    a = [o["clip"] for o in next(iter(e["outcomes"].values()))]
    b = [o["clip"] for o in cp["outcomes"]]
    if a == b:
        return (f"Both systems answered the same {len(a)} clips: the sha1 of every excerpt's samples matches, "
                "query for query.")
    diff = sum(x != y for x, y in zip(a, b)) + abs(len(a) - len(b))
    return f"**Warning: the two systems' queries differ ({diff} of {max(len(a), len(b))} clips).**"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    mode = ap.add_mutually_exclusive_group()
    for name in PROFILES:
        mode.add_argument(f"--{name}", dest="profile", action="store_const", const=name)
    ap.add_argument("--out", type=Path, default=ROOT / "BENCHMARKS.generated.md")
    ap.add_argument("--corpus", type=Path, default=ROOT / "corpus" / "eval", help="evaluation corpus (built if missing)")
    ap.add_argument("--work", type=Path, default=ROOT / "benchmarks" / "out" / "run", help="scratch folder")
    ap.add_argument("--figures", type=Path, default=HERE / "figures", help="where the PNGs go")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--steps", nargs="+", choices=STEPS, default=list(STEPS), help="run only these")
    ap.add_argument("--code-model", dest="code_models", action="append", default=[], metavar="NAME_OR_CKPT",
                    help="the similarity step evaluates this code model (repeatable; default: crnnh16, crnnh32, crnnh64)")
    ap.add_argument("--render-only", action="store_true", help="assemble the Markdown from the last run's JSON")
    a = ap.parse_args(argv)
    if not (a.profile or a.render_only):
        ap.error("choose --smoke, --quick or --full (or --render-only)")
    results, logs = a.work / "results", a.work / "logs"
    results.mkdir(parents=True, exist_ok=True)
    logs.mkdir(parents=True, exist_ok=True)
    if a.render_only:
        run = json.loads((results / "run.json").read_text())
    else:
        p = PROFILES[a.profile]
        command = "python -m benchmarks.run_all " + " ".join(sys.argv[1:] if argv is None else argv)
        run = {"meta": machine(), "versions": versions(), "profile": a.profile, "settings": asdict(p),
               "command": command, "steps": []}
        t0 = time.perf_counter()
        manifest = ensure_corpus(a.corpus)
        # The cuts every step reads (idempotent): bench_index needs them even when the engine step is skipped.
        cut_corpus(manifest, a.work / "eval" / "audio", p.minutes_per_track, p.held_out, a.seed)
        for name in STEPS:
            if name in a.steps and (name != "interim" or p.interim):
                run["steps"].append(run_step(name, step_args(name, p, a, manifest), results, logs))
        run["wall_s"] = time.perf_counter() - t0
        run["load_end"] = [round(x, 2) for x in os.getloadavg()]
        (results / "run.json").write_text(json.dumps(run, indent=1))
    data = {s["name"]: _load(results, s["name"]) for s in run["steps"] if s["rc"] == 0}
    figures = {}
    from benchmarks import plots  # matplotlib, from the bench extra: the tests import this module without it

    if data.get("engine"):
        systems = {"musichash": next(iter(data["engine"]["runs"].values()))["summary"]}
        if data.get("chromaprint"):
            systems["Chromaprint"] = data["chromaprint"]["summary"]
        figures["hit_rate"] = plots.hit_rate_vs_length(systems, a.figures / "hit_rate.png")
    if data.get("scale"):
        figures["latency"] = plots.latency_vs_size(data["scale"]["results"], a.figures / "latency.png")
    failed = [s["name"] for s in run["steps"] if s["rc"] != 0]
    out = a.out if not failed else a.out.with_name(a.out.name + ".failed")
    out.write_text(render(run, data, figures, a.out))
    print(f"wrote {out} ({run['wall_s'] / 60:.1f} min){'; failed: ' + ', '.join(failed) if failed else ''}",
          file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
