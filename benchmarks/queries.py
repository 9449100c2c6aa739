"""The seeded query sets that musichash (eval_engine.py) and Chromaprint (bench_chromaprint.py) both answer.

A query set names the excerpt lengths, the degradations of in-library
excerpts and those of out-of-library ones (clips of held-out tracks)::

    core   10 and 5 s x 9 conditions (the set of the first engine evaluation; its
           queries are unchanged, query for query)
    quick  3, 5, 10, 30 s x 10 conditions, a cross-section of full that fits
           run_all.py --quick's 15 minutes
    full   3, 5, 10, 30 s x 22 conditions: every degradation of the benchmark issue

``draw_queries`` yields the excerpts in a fixed order from one generator, so
the same set, corpus, count and seed give the same clips, sample for sample,
in whichever script draws them. Both scripts score their answers as
``Outcome`` records and summarise them with ``summarize`` into plain data
(``cells`` per length x condition, ``by_length``, out-of-library rates) that
run_all.py and plots.py read from JSON.
"""

from __future__ import annotations

import hashlib
import json
import sys
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf

from musichash.features.audio import SAMPLE_RATE, load_audio
from musichash.search.calibrate import (
    JOINT_TNR,
    calibrate_threshold,
    fit_joint,
    matched,
    rates,
)
from musichash.train import augment

STRETCH_ROOM = 1.06  # an excerpt is cut this much longer than asked, so a slowed-down one still fills it


@dataclass(frozen=True)
class QuerySet:
    """lengths: excerpt seconds; conditions: name -> degradations applied in order;
    out_conditions: the conditions (names in ``conditions``) of out-of-library clips."""

    name: str
    lengths: tuple[float, ...]
    conditions: dict[str, list[augment.Degradation]]
    out_conditions: tuple[str, ...]

    def describe(self) -> dict:
        return {"name": self.name, "lengths": list(self.lengths), "out_conditions": list(self.out_conditions),
                "conditions": {c: [d.to_dict() for d in ds] for c, ds in self.conditions.items()}}


def _conditions(*names: str) -> dict[str, list[augment.Degradation]]:
    return {n: ALL_CONDITIONS[n] for n in names}


ALL_CONDITIONS: dict[str, list[augment.Degradation]] = {
    "clean": [],
    **{f"white{db}dB": [augment.noise(float(db))] for db in (0, 5, 10, 20)},
    **{f"babble{db}dB": [augment.noise(float(db), kind="babble")] for db in (0, 5, 10, 20)},
    "mp3_32k": [augment.mp3(32)],
    "mp3_64k": [augment.mp3(64)],
    "ogg_q0": [augment.ogg(0.0)],  # about 29 kbit/s at 16 kHz mono
    "gain+12dB": [augment.gain(12.0)],  # as loud as the clip's headroom allows: augment never clips
    "gain-12dB": [augment.gain(-12.0)],
    "telephone": [augment.telephone()],
    **{f"stretch{r}": [augment.time_stretch(r)] for r in (0.95, 0.97, 1.03, 1.05)},
    "pitch-1": [augment.pitch_shift(-1.0)],
    "pitch+1": [augment.pitch_shift(1.0)],
    "reverb0.5": [augment.reverb(0.5)],
}
OUT_CONDITIONS = ("clean", "white5dB", "mp3_32k", "pitch+1")
#: the "full" set's conditions, frozen: conditions added below for the identification set must not
#: change its draws (runs of it are compared across commits, compare_runs.py)
FULL_CONDITIONS = tuple(ALL_CONDITIONS)

#: the identification issue's degradations (issue 22), with the lengths 2, 3, 5 and 10 s
IDENT_CONDITIONS: dict[str, list[augment.Degradation]] = {
    "clean": [],
    "mp3_64k": [augment.mp3(64)],
    "aac_48k": [augment.aac(48)],
    **{f"white{db}dB": [augment.noise(float(db))] for db in (10, 5, 0)},
    "pink0dB": [augment.noise(0.0, kind="pink")],
    "babble5dB": [augment.noise(5.0, kind="babble")],  # speech-like babble
    "music5dB": [],  # another track of the corpus underneath at 5 dB SNR: drawn per clip (MUSIC_UNDER)
    "gain+12dB": [augment.gain(12.0)],
    "gain-12dB": [augment.gain(-12.0)],
    "overdrive12dB": [augment.overdrive(12.0)],
    "phone": [augment.phone_recording(0.5)],
    "tempo0.94": [augment.time_stretch(0.94)],
    "tempo1.06": [augment.time_stretch(1.06)],
    **{f"pitch{st:+d}": [augment.pitch_shift(float(st))] for st in (-2, -1, 1, 2)},
    "speed0.97": [augment.speed(0.97)],
    "speed1.03": [augment.speed(1.03)],
}
#: conditions that mix another corpus track under the clip, at this SNR (dB)
MUSIC_UNDER = {"music5dB": 5.0}

SETS = {
    "core": QuerySet("core", (10.0, 5.0), _conditions(
        "clean", "white5dB", "babble5dB", "mp3_32k", "telephone", "stretch0.95", "stretch1.05", "pitch-1", "pitch+1"),
        OUT_CONDITIONS),
    "quick": QuerySet("quick", (3.0, 5.0, 10.0, 30.0), _conditions(
        "clean", "white5dB", "babble10dB", "mp3_32k", "ogg_q0", "gain-12dB", "telephone", "stretch1.05", "pitch+1",
        "reverb0.5"), ("clean", "mp3_32k")),
    "full": QuerySet("full", (3.0, 5.0, 10.0, 30.0), _conditions(*FULL_CONDITIONS), OUT_CONDITIONS),
    "ident": QuerySet("ident", (2.0, 3.0, 5.0, 10.0), IDENT_CONDITIONS, ("clean", "white5dB", "phone", "pitch+2")),
}


@dataclass
class Outcome:
    track: str
    length: float
    condition: str
    in_library: bool
    top1: bool
    top10: bool
    offset_err: float | None
    score: float
    latency_s: float
    clip: str = ""  # clip_id of the excerpt: two systems' outcomes can be checked query for query
    chroma: float | None = None  # harmony agreement with the top track (musichash.features.chroma); None: not checked
    matched: bool | None = None  # the system's own answer to "is it in the library" (Library.search's match)


def clip_id(y: np.ndarray) -> str:
    """A short hash of an excerpt's samples."""
    return hashlib.sha1(np.ascontiguousarray(y, dtype=np.float32).tobytes()).hexdigest()[:12]


def split_of(row: dict) -> str:
    """A manifest row's split unit: its Debian package, or ``midi/<composer>`` for a render."""
    return row.get("package") or f"{row['source']}/{row.get('labels', {}).get('composer', 'other')}"


def splits_of(manifest: Path) -> dict[str, str]:
    """Cut file name (``cut_corpus``'s) -> split unit (``split_of``), for every manifest row."""
    rows = [json.loads(line) for line in manifest.read_text().splitlines() if line.strip()]
    return {r["id"].replace("/", "__") + ".flac": split_of(r) for r in rows}


def held_out_rows(rows: list[dict], held_out: int, seed: int, held_from: Collection[str] | None = None) -> set[int]:
    """The manifest rows ``cut_corpus`` holds out (indices): ``held_out`` of them, alternating over the
    sources, or over the split units ``held_from``."""
    rng = np.random.default_rng(seed)
    by_source: dict[str, list[int]] = {}
    for i, r in enumerate(rows):
        if held_from is None:
            by_source.setdefault(r["source"], []).append(i)
        elif split_of(r) in held_from:
            by_source.setdefault(split_of(r), []).append(i)
    held = set()
    for k in range(held_out):  # alternate sources so both styles are tested out of library
        pool = by_source[sorted(by_source)[k % len(by_source)]]
        if not pool:
            continue
        held.add(pool.pop(int(rng.integers(len(pool)))))
    return held


def cut_corpus(manifest: Path, out: Path, minutes: float, held_out: int, seed: int,
               held_from: Collection[str] | None = None) -> tuple[list[Path], list[Path]]:
    """FLAC cuts of each track's first minutes, in out/library and out/held-out; returns both lists.

    Held-out tracks alternate over the sources, or with ``held_from`` over those split units
    (``split_of``: packages, ``midi/<composer>``), so out-of-library clips come only from them.
    """
    rows = [json.loads(line) for line in manifest.read_text().splitlines() if line.strip()]
    held = held_out_rows(rows, held_out, seed, held_from)
    lib, out_files = [], []
    for i, r in enumerate(rows):
        dest = out / ("held-out" if i in held else "library") / (r["id"].replace("/", "__") + ".flac")
        if not dest.exists():
            dest.parent.mkdir(parents=True, exist_ok=True)
            src = manifest.parent / r["path"]
            info = sf.info(str(src))
            y, sr = sf.read(str(src), frames=int(minutes * 60 * info.samplerate), dtype="float32")
            sf.write(str(dest), y, sr)
        (out_files if i in held else lib).append(dest)
    return lib, out_files


def excerpt(wave: np.ndarray, length: float, degradations: list[augment.Degradation],
            rng: np.random.Generator) -> tuple[np.ndarray, float]:
    """A degraded excerpt (float32 [length * 16000] at most) and its true offset (s) in the track."""
    need = length * STRETCH_ROOM
    off = float(rng.uniform(0, max(0.0, len(wave) / SAMPLE_RATE - need)))
    x = wave[int(off * SAMPLE_RATE) : int((off + need) * SAMPLE_RATE)]
    y = augment.chain(*degradations).apply(x, rng)
    return y[: int(length * SAMPLE_RATE)], off


def draw_queries(lib_files: list[Path], held: list[Path], n: int, seed: int, qset: str | QuerySet = "core",
                 others: list[Path] | None = None):
    """The seeded excerpts, in a fixed order: (length, condition, in_library, file, excerpt, true offset).

    ``lib_files`` are the tracks in-library clips are cut from (with a package split, only the
    evaluation packages' tracks), ``held`` the tracks out-of-library clips are cut from; ``others``
    (default: both) the music that ``MUSIC_UNDER`` conditions mix under a clip, never its own track.

    ``n`` per length x condition (in library) and per length x out-condition. An
    excerpt comes from the tracks long enough for it (all of them if none is), so
    a 30 s clip is never a whole 25 s chorale; with every track long enough, as
    in the core set, the draws are those of the first engine evaluation.
    """
    qs = SETS[qset] if isinstance(qset, str) else qset
    rng = np.random.default_rng(seed)
    others = list(others) if others is not None else [*lib_files, *held]
    waves = {f: load_audio(f) for f in {*lib_files, *held, *others}}
    jobs = [(length, cond, True) for length in qs.lengths for cond in qs.conditions]
    jobs += [(length, cond, False) for length in qs.lengths for cond in qs.out_conditions]
    for length, cond, inside in jobs:
        pool = lib_files if inside else held
        pool = [f for f in pool if len(waves[f]) >= length * STRETCH_ROOM * SAMPLE_RATE] or pool
        for _ in range(n):
            f = pool[int(rng.integers(len(pool)))]
            chain = qs.conditions[cond]
            if cond in MUSIC_UNDER:
                under = [g for g in others if g != f]
                bg, _ = excerpt(waves[under[int(rng.integers(len(under)))]], length, [], rng)
                chain = [augment.noise(MUSIC_UNDER[cond], kind="music", background=bg)]
            y, off = excerpt(waves[f], length, chain, rng)
            yield length, cond, inside, f, y, off
        print(f"  {length:g}s {cond:12s} {'in' if inside else 'out'}: done", file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------
# summaries (plain data) and their tables


def _rates(sel: list[Outcome]) -> dict:
    errs = [o.offset_err for o in sel if o.offset_err is not None]
    return {"n": len(sel), "top1": float(np.mean([o.top1 for o in sel])) if sel else None,
            "top10": float(np.mean([o.top10 for o in sel])) if sel else None,
            "offset_median_s": float(np.median(errs)) if errs else None,
            "offset_p90_s": float(np.quantile(errs, 0.9)) if errs else None}


def summarize(outs: list[Outcome], match: float, chroma: float | None = None) -> dict:
    """Hit rates per length x condition (``cells``) and per length (``by_length``, with the
    out-of-library true-negative rate at the match thresholds: not ``matched``)."""
    lengths = sorted({o.length for o in outs})
    conds = list(dict.fromkeys(o.condition for o in outs if o.in_library))
    cells = []
    for length in lengths:
        for cond in conds:
            sel = [o for o in outs if o.in_library and o.length == length and o.condition == cond]
            if sel:
                cells.append({"length": length, "condition": cond, **_rates(sel)})
    by_length = []
    for length in lengths:
        neg = [not matched(o, match, chroma) for o in outs if not o.in_library and o.length == length]
        by_length.append({"length": length, **_rates([o for o in outs if o.in_library and o.length == length]),
                          "ool_n": len(neg), "ool_tnr": float(np.mean(neg)) if neg else None})
    return {"match_threshold": match, "chroma_threshold": chroma, "cells": cells, "by_length": by_length,
            "all": _rates([o for o in outs if o.in_library])}


def _pct(x, digits: int = 0) -> str:
    return "–" if x is None else f"{100 * x:.{digits}f}%"


def _s(x) -> str:
    return "–" if x is None else f"{x:.2f}"


def query_table(systems: dict[str, dict]) -> str:
    """Side by side: name -> summarize() output, same queries. Top-1, top-10, median offset error per cell."""
    names = list(systems)
    first = systems[names[0]]
    head = ["length", "condition", *(f"top-1 {s}" for s in names), *(f"top-10 {s}" for s in names),
            *(f"median offset error {s} (s)" for s in names)]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    cells = {s: {(c["length"], c["condition"]): c for c in systems[s]["cells"]} for s in names}
    lens = {s: {b["length"]: b for b in systems[s]["by_length"]} for s in names}
    for b in first["by_length"]:
        length = b["length"]
        for c in first["cells"]:
            if c["length"] != length:
                continue
            key = (length, c["condition"])
            row = [f"{length:g} s", c["condition"], *(_pct(cells[s][key]["top1"]) for s in names),
                   *(_pct(cells[s][key]["top10"]) for s in names),
                   *(_s(cells[s][key]["offset_median_s"]) for s in names)]
            lines.append("| " + " | ".join(row) + " |")
        row = [f"{length:g} s", "**all**", *(f"**{_pct(lens[s][length]['top1'], 1)}**" for s in names),
               *(_pct(lens[s][length]["top10"], 1) for s in names), *(_s(lens[s][length]["offset_median_s"]) for s in names)]
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def pairs_of(families: list[set[str]]) -> set[frozenset]:
    """Every unordered pair of names within each family (dedup's ground truth or its groups)."""
    return {frozenset((a, b)) for s in families for a in s for b in s if a < b}


def pair_scores(pred: set[frozenset], truth: set[frozenset]) -> dict:
    """Pair precision / recall / F1 of predicted duplicate pairs against the true ones."""
    tp = len(pred & truth)
    pr, rc = (tp / len(pred) if pred else 1.0), (tp / len(truth) if truth else 1.0)
    return {"precision": pr, "recall": rc, "f1": 2 * pr * rc / (pr + rc) if pr + rc else 0.0,
            "predicted_pairs": len(pred)}


def threshold_data(outs: list[Outcome], fixed: float, fixed_chroma: float | None = None) -> dict:
    """TNR/TPR (``matched``) at fixed thresholds, at ones calibrated for 95 % TNR on half the
    out-of-library queries (rates on the other half), and at ones calibrated on all of them.

    With chroma agreements in the outcomes, each calibration fits the code score's and the
    chroma's threshold separately, each at 95 % of the negatives; ``joint_half`` and ``joint_all``
    fit them together to ``JOINT_TNR`` (``calibrate.fit_joint``, the rule the shipped thresholds
    come from); ``code_all`` is the code score alone, for comparison. Rates: ``calibrate.rates``.
    """
    pos = [o for o in outs if o.in_library]
    neg = [o for o in outs if not o.in_library]
    has_chroma = any(o.chroma is not None for o in outs)
    cal = np.arange(len(neg)) % 2 == 0

    def fit(sel: list[Outcome], chroma: bool) -> tuple[float, float | None]:
        t = calibrate_threshold([o.score for o in sel], target_tnr=0.95)
        cs = [o.chroma for o in sel if o.chroma is not None]
        return float(t), (calibrate_threshold(cs, target_tnr=0.95) if chroma and cs else None)

    def at(t: float, tc: float | None, p: list[Outcome], n: list[Outcome]) -> dict:
        r = rates(p + n, t, tc)
        return {"t": float(t), "tc": tc, "tnr": r["tnr"], "tpr": r["tpr"]}

    out = {"n_pos": len(pos), "n_neg": len(neg)}
    fit_neg = [o for o, c in zip(neg, cal) if c]
    held = [o for o, c in zip(neg, cal) if not c]
    if has_chroma:  # both thresholds fitted together: the most in-library matches at JOINT_TNR of the negatives
        out["joint_half"] = at(*fit_joint(pos[::2] + fit_neg, JOINT_TNR), pos[1::2], held)
        out["joint_all"] = at(*fit_joint(pos + neg, JOINT_TNR), pos, neg)
    out["fixed"] = at(fixed, fixed_chroma, pos[1::2], held)
    out["half"] = at(*fit(fit_neg, has_chroma), pos[1::2], held)
    out["all"] = at(*fit(neg, has_chroma), pos, neg)
    out["fixed_all"] = at(fixed, fixed_chroma, pos, neg)
    if has_chroma:
        out["code_all"] = at(*fit(neg, False), pos, neg)
    return out


def threshold_table(d: dict, fixed_name: str, unit: str = "threshold", show=lambda t: t, shipping: str = "") -> str:
    """The table of threshold_data(); ``show`` turns a threshold into what is printed (e.g. BER = 1 - t)."""
    def t(r: dict) -> str:
        return f"{show(r['t']):.3f}" + (f", chroma {r['tc']:.3f}" if r.get("tc") is not None else "")

    rows = [f"| {unit} | TNR (out-of-library, held-out half) | TPR (in-library, correct top-1 and match) |",
            "|---|---|---|",
            f"| {fixed_name}: {t(d['fixed'])} | {_pct(d['fixed']['tnr'])} | {_pct(d['fixed']['tpr'])} |",
            f"| calibrated on the other half: {t(d['half'])} | {_pct(d['half']['tnr'])} "
            f"| {_pct(d['half']['tpr'])} |",
            f"| calibrated on all {d['n_neg']} out-of-library queries{'' if 'joint_all' in d else shipping}: {t(d['all'])} "
            f"| {_pct(d['all']['tnr'])} (fitted) | {_pct(d['all']['tpr'])} |"]
    if "joint_all" in d:
        rows.append(f"| both fitted together to {JOINT_TNR:.1%} on the other half: {t(d['joint_half'])} "
                    f"| {_pct(d['joint_half']['tnr'])} | {_pct(d['joint_half']['tpr'])} |")
        rows.append(f"| both fitted together to {JOINT_TNR:.1%} on all of them{shipping}: {t(d['joint_all'])} "
                    f"| {_pct(d['joint_all']['tnr'])} (fitted) | {_pct(d['joint_all']['tpr'])} |")
    if "code_all" in d:
        rows.append(f"| the code score alone, calibrated on all of them: {t(d['code_all'])} "
                    f"| {_pct(d['code_all']['tnr'])} (fitted) | {_pct(d['code_all']['tpr'])} |")
    return "\n".join(rows)
