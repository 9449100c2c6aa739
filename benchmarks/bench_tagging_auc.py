"""Tag quality: per-tag ROC-AUC and PR-AUC of the pretrained taggers on the evaluation corpus, where labels say.

    python -m benchmarks.bench_tagging_auc --manifest M --work DIR [--minutes-per-track 5] [--held-out 4] [--seed 0] [--json OUT]

Track-level probabilities come from ``Tagger.tag_file`` (what ``musichash
tag`` prints: the mean over 3 s windows) of the first minutes of every
corpus track. --work, --minutes-per-track, --held-out and --seed are
eval_engine.py's, so the cuts it made in DIR/audio are read again (library
and held-out tracks alike) rather than decoded a second time.

Ground truth: benchmarks/corpus.py labels every MIDI render with its
``instrument_family`` and ``composer``; LABEL_TAGS maps those labels to tags
of the 50-tag MagnaTagATune vocabulary. A track is a positive for a tag when
one of its labels maps to it and a negative otherwise: the game music too,
on the assumption (nobody listened for it) that no Planet Blupi track, say,
is a piano piece.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from benchmarks.common import machine, peak_rss_mb
from benchmarks.queries import cut_corpus

MODELS = ("MTT_musicnn", "MTT_vgg")
#: manifest label (key, value) -> the MTT tags it makes a positive for; the GM
#: programs are corpus.INSTRUMENTS'. Tags are only those of the vocabulary.
LABEL_TAGS: dict[tuple[str, str], tuple[str, ...]] = {
    ("instrument_family", "piano"): ("piano",),  # acoustic grand
    ("instrument_family", "strings"): ("strings", "violin", "cello"),  # violin, violin, viola, cello
    ("instrument_family", "choir"): ("choir", "choral"),  # choir aahs
    ("instrument_family", "woodwinds"): ("flute",),  # flute leads; oboe, clarinet, bassoon have no tag
    ("instrument_family", "organ"): (),  # no organ tag
    ("instrument_family", "brass"): (),  # no trumpet, horn or brass tag
    # corpus.py's MIDI scores: Renaissance and Baroque part writing, what MTT's annotators tagged classical
    ("composer", "bach"): ("classical",),
    ("composer", "monteverdi"): ("classical",),
    ("composer", "palestrina"): ("classical",),
}
#: fewer positives than this and a tag's AUCs are called indicative
FEW = 5


def roc_auc_np(y: np.ndarray, s: np.ndarray) -> float:
    """ROC-AUC: the chance that a random positive scores above a random negative, a tie counting half.

    ``y: bool [n]``, ``s: float [n]``; the Mann-Whitney U over mean ranks.
    By hand: y = [0, 0, 1, 1], s = [0.1, 0.4, 0.35, 0.8]; of the four
    (positive, negative) pairs, (0.35, 0.1), (0.8, 0.1) and (0.8, 0.4) are in
    order and (0.35, 0.4) is not: 3/4 = 0.75. Ranks 1..4 are those of 0.1,
    0.35, 0.4, 0.8, so the positives' rank sum is 2 + 4 = 6 and
    (6 - 2·3/2) / (2·2) = 0.75.
    """
    y = np.asarray(y, dtype=bool)
    _, inv, cnt = np.unique(s, return_inverse=True, return_counts=True)
    ranks = (np.cumsum(cnt) - (cnt - 1) / 2)[inv]  # 1-based, ties share their mean rank
    p, q = int(y.sum()), int((~y).sum())
    return float((ranks[y].sum() - p * (p + 1) / 2) / (p * q))


def average_precision_np(y: np.ndarray, s: np.ndarray) -> float:
    """PR-AUC as average precision: ``Σ (R_i - R_{i-1}) P_i`` over the distinct scores, highest first.

    Tied scores enter together (one threshold), as in scikit-learn. By hand:
    y = [0, 0, 1, 1], s = [0.1, 0.4, 0.35, 0.8]; from the top, 0.8 (P 1,
    R 1/2), 0.4 (P 1/2, R 1/2), 0.35 (P 2/3, R 1), 0.1 (P 1/2, R 1):
    1/2·1 + 0 + 1/2·2/3 + 0 = 0.8333.
    """
    y = np.asarray(y, dtype=bool)
    order = np.argsort(-np.asarray(s), kind="stable")
    s, y = np.asarray(s)[order], y[order]
    last = np.r_[s[1:] != s[:-1], True]  # the last item of each group of equal scores
    tp = np.cumsum(y)[last]
    precision, recall = tp / np.arange(1, len(y) + 1)[last], tp / y.sum()
    return float(np.sum(np.diff(recall, prepend=0.0) * precision))


try:
    import sklearn
    from sklearn.metrics import average_precision_score as average_precision, roc_auc_score as roc_auc

    AUC_IMPL = f"scikit-learn {sklearn.__version__}"
except ImportError:
    roc_auc, average_precision, AUC_IMPL = roc_auc_np, average_precision_np, "numpy (scikit-learn not installed)"


def ground_truth(rows: list[dict], vocabulary: tuple[str, ...]) -> tuple[list[str], np.ndarray]:
    """(the tags some label maps to, in vocabulary order; ``bool [n_tracks, n_tags]``)."""
    unknown = {t for tags in LABEL_TAGS.values() for t in tags} - set(vocabulary)
    if unknown:
        raise SystemExit(f"LABEL_TAGS names tags the taggers do not have: {', '.join(sorted(unknown))}")
    pos = [{t for kv in r["labels"].items() for t in LABEL_TAGS.get(kv, ())} for r in rows]
    tags = [t for t in vocabulary if any(t in p for p in pos)]
    return tags, np.array([[t in p for t in tags] for p in pos], dtype=bool).reshape(len(rows), len(tags))


def run(manifest: Path, work: Path, minutes: float, held_out: int, seed: int, models: list[str],
        device: str | None) -> dict:
    from musichash.models.tagging import Tagger

    # cut_corpus names each cut after its track's id
    rows = {r["id"].replace("/", "__"): r for r in map(json.loads, filter(str.strip, manifest.read_text().splitlines()))}
    lib, held = cut_corpus(manifest, work / "audio", minutes, held_out, seed)
    files = sorted([*lib, *held], key=lambda f: f.name)
    tracks = [rows[f.stem] for f in files]
    probs, timing, vocabulary = {}, {}, ()
    for model in models:
        t0 = time.perf_counter()
        tagger = Tagger(model, device)
        t1 = time.perf_counter()
        results = [tagger.tag_file(f) for f in files]
        timing[model] = {"load_s": t1 - t0, "tag_s": time.perf_counter() - t1}
        probs[model] = np.stack([r.probs for r in results])
        vocabulary = tagger.vocabulary
    audio_s = sum(r.duration_s for r in results)
    tags, y = ground_truth(tracks, vocabulary)
    per_tag = {m: [] for m in models}
    for j, tag in enumerate(tags):
        if y[:, j].all():
            continue  # no negative: nothing to rank against
        for m in models:
            s = probs[m][:, vocabulary.index(tag)]
            per_tag[m].append({"tag": tag, "positives": int(y[:, j].sum()), "negatives": int((~y[:, j]).sum()),
                               "roc_auc": float(roc_auc(y[:, j], s)), "pr_auc": float(average_precision(y[:, j], s))})
    macro = {m: {k: float(np.mean([t[k] for t in per_tag[m]])) if per_tag[m] else None for k in ("roc_auc", "pr_auc")}
             for m in models}
    return {
        "meta": machine(), "manifest": str(manifest), "minutes_per_track": minutes, "tracks": len(files),
        "audio_s": audio_s, "auc_impl": AUC_IMPL, "few": FEW,
        "label_tags": [{"key": k, "value": v, "tags": list(t)} for (k, v), t in LABEL_TAGS.items()],
        "track_ids": [t["id"] for t in tracks], "vocabulary": list(vocabulary), "timing": timing,
        "probs": {m: np.round(p, 5).tolist() for m, p in probs.items()},
        "per_tag": per_tag, "macro": macro, "peak_rss_mb": peak_rss_mb(),
    }


def render(d: dict) -> str:
    models = list(d["per_tag"])
    groups: dict[tuple[str, tuple[str, ...]], list[str]] = {}
    for x in d["label_tags"]:
        groups.setdefault((x["key"], tuple(x["tags"])), []).append(x["value"])
    maps = "; ".join(f"{k}={'/'.join(vs)} -> {', '.join(t) or 'no tag'}" for (k, t), vs in groups.items())
    lines = [
        f"Per-tag ROC-AUC and PR-AUC (average precision) of the track-level tag probabilities (`Tagger.tag_file`, "
        f"behind `musichash tag`: the mean over 3 s windows) of the {d['tracks']} corpus tracks, the first "
        f"{d['minutes_per_track']:g} min of each ({d['audio_s'] / 60:.0f} min of audio). Positives come from the "
        f"manifest's labels through an explicit mapping to tags of the 50-tag vocabulary ({maps}); every other "
        "track, the game music included, counts as a negative, unchecked by ear. A random ranking scores ROC-AUC "
        f"0.5 and PR-AUC about the prior (positives / tracks). AUCs by {d['auc_impl']}.\n",
    ]
    rows = d["per_tag"][models[0]]
    if not rows:
        return lines[0] + "\nNo track's labels map to a tag, so there is nothing to score."
    head = " | ".join(f"{m} ROC-AUC | {m} PR-AUC" for m in models)
    lines += [f"| tag | positives | prior | {head} |", "|---|---:|---:|" + "---:|" * 2 * len(models)]
    for i, r in enumerate(rows):
        cells = " | ".join(f"{d['per_tag'][m][i]['roc_auc']:.3f} | {d['per_tag'][m][i]['pr_auc']:.3f}" for m in models)
        few = "*" if r["positives"] < d["few"] else ""
        lines.append(f"| {r['tag']} | {r['positives']}{few} of {r['positives'] + r['negatives']} | "
                     f"{r['positives'] / (r['positives'] + r['negatives']):.2f} | {cells} |")
    cells = " | ".join(f"**{d['macro'][m]['roc_auc']:.3f}** | **{d['macro'][m]['pr_auc']:.3f}**" for m in models)
    lines.append(f"| macro mean ({len(rows)} tags) | | | {cells} |")
    few = [r["tag"] for r in rows if r["positives"] < d["few"]]
    if few:
        lines.append(f"\n\\* Fewer than {d['few']} positives ({', '.join(few)}): one or two tracks decide these AUCs, "
                     "so they are indicative only" + (", and so is the macro mean." if len(few) * 2 > len(rows) else "."))
    t = "; ".join(f"{m} {x['tag_s']:.0f} s (model load {x['load_s']:.2f} s)" for m, x in d["timing"].items())
    lines.append(f"\nTagging time: {t}.")
    return "\n".join(lines)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--manifest", type=Path, required=True)
    ap.add_argument("--work", type=Path, required=True, help="eval_engine.py's scratch folder (its cuts are reused)")
    ap.add_argument("--minutes-per-track", type=float, default=5.0)
    ap.add_argument("--held-out", type=int, default=4)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--models", nargs="+", default=list(MODELS))
    ap.add_argument("--device", default=None)
    ap.add_argument("--json", type=Path, help="write the figures as JSON too")
    a = ap.parse_args(argv)
    d = run(a.manifest, a.work, a.minutes_per_track, a.held_out, a.seed, a.models, a.device)
    if a.json:
        a.json.write_text(json.dumps(d, indent=1))
    print(render(d))


if __name__ == "__main__":
    main()
