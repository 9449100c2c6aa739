"""Fit the shipped interim code models: VGG pool5 features -> 16..128-bit codes.

    python -m recipes.code_models.fit_interim --corpus /tmp/corpus_fit \\
        --eval-manifest /tmp/corpus_full/manifest.jsonl --build

The fit corpus is allowed Debian game music plus seeded MIDI renders (see
``FIT_PACKAGES``), disjoint from the evaluation corpus: no package, file or
music21 score of ``--eval-manifest`` may appear in it (checked, not assumed).

Features are exactly the engine's: ``MTT_vgg`` ``iter_windows`` on the log-mel
spectrogram, ``pool5`` flattened (256-d) per 3 s window. Library segments are
the windows every ``LIB_HOP`` frames of the first ``--minutes-per-track``
minutes of each track. For the pairs, each track is cut into 12 s pieces
(``--views`` times), each piece degraded with its own
``augment.random_view`` at strength 1 (noise 0-20 dB, MP3/Opus, telephone or
EQ, gain, pitch +-1 st, tempo +-5 %) and windowed every ``QUERY_HOP`` frames,
like a query clip; every library segment inside a piece is paired with the
degraded window at the same musical time (scaled by the tempo change) plus a
random offset of up to half a library hop, the misalignment a query window
has from its nearest library segment.

``--kind lda_itq`` (the default, what ships) fits
``fit_binarizer.fit_pairs(clean, degraded)``; ``--kind itq`` fits plain ITQ on the
clean segments (the baseline). Outputs go to ``--out``:
``interim_vgg_itq{bits}.safetensors`` for each of ``BITS`` and
``interim_codes.json`` (provenance and sha256 of each file).
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import json
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

from benchmarks import corpus as corpus_builder
from musichash.features.audio import SAMPLE_RATE, load_audio, log_mel
from musichash.models import build_backbone
from musichash.models.backbones import WINDOW_FRAMES
from musichash.models.binarizer import BITS, Binarizer
from musichash.train import augment, fit_binarizer

REPO = Path(__file__).resolve().parents[2]

FIT_PACKAGES = (
    "pushover-data",
    "tomatoes-data",
    "xmoto-data",
    "extremetuxracer-data",
    "openclonk-data",
)
FIT_MIDI = 40
FIT_MIDI_SEED = 1  # the evaluation corpus renders with seed 0; its scores are excluded anyway
MIDI_SECONDS = 60.0
BACKBONE = "MTT_vgg"
FEATURE = "pool5"
LIB_HOP = 80  # frames (1.28 s), as the engine's library segments
QUERY_HOP = 16  # frames (0.256 s), as the engine's query windows
OUT_NAME = "interim_vgg_itq{bits}.safetensors"
PIECE_S = 12.0  # seconds of audio per independently degraded piece
HOP_SAMPLES = 256  # samples per spectrogram frame at 16 kHz
FEATURES_VERSION = "2"  # bump when extraction changes, to invalidate caches


class FitCorpusError(Exception):
    """The fit corpus overlaps the evaluation corpus or is missing."""


def check_disjoint(fit: list, held: list) -> None:
    """Raise if a fit track shares a package, a file or a score with the evaluation tracks."""
    clash = []
    pk = {t.package for t in held if t.package}
    sh = {t.sha256 for t in held}
    sc = {t.score for t in held if t.score}
    for t in fit:
        if t.package in pk or t.sha256 in sh or (t.score and t.score in sc):
            clash.append(t.id)
    if clash:
        raise FitCorpusError(
            f"{len(clash)} fit tracks overlap the evaluation corpus ({', '.join(clash[:5])});"
            " rebuild the fit corpus with other packages and --exclude-scores-of the eval manifest"
        )


def window_features(model, wave: np.ndarray, hop: int) -> tuple[np.ndarray, np.ndarray]:
    """wave: float [n] 16 kHz -> starts: int [w] (frames), feats: float32 [w, 256]."""
    mel = torch.from_numpy(np.ascontiguousarray(log_mel(wave), dtype=np.float32))
    starts, feats = [], []
    with torch.no_grad():
        for wb in model.iter_windows(mel, hop, features=True):
            starts.append(wb.starts.numpy())
            feats.append(wb.features[FEATURE].flatten(1).numpy())
    return np.concatenate(starts), np.concatenate(feats).astype(np.float32)


def tempo_rate(view: list) -> float:
    """How much faster the degraded copy plays (product of time_stretch/speed rates)."""
    rate = 1.0
    for d in view:
        if d.name in ("time_stretch", "speed"):
            rate *= float(d.params["rate"])
    return rate


def track_features(model, wave: np.ndarray, n_views: int, seed: list[int]) -> dict[str, np.ndarray]:
    """Library segments of one track and their degraded partners.

    Each view cuts the track into ``PIECE_S`` pieces, degrades every piece with
    its own random view (many conditions per track, and query-like clip
    edges) and pairs the library segments that lie inside a piece. Returns
    ``lib: float32 [s, 256]`` and, over all views, ``clean, aug: float32 [p,
    256]`` (row i of ``aug`` is a degraded window of the segment in row i of
    ``clean``).
    """
    starts, lib = window_features(model, wave, LIB_HOP)
    piece = int(PIECE_S * SAMPLE_RATE)
    piece_frames = piece // HOP_SAMPLES
    clean, aug = [], []
    for v in range(n_views):
        rng = np.random.default_rng([*seed, v])
        for a in range(0, max(1, len(wave) - piece // 2), piece):
            inside = (starts >= a // HOP_SAMPLES) & (starts + WINDOW_FRAMES <= a // HOP_SAMPLES + piece_frames)
            if not inside.any():
                continue
            view = augment.random_view(rng, strength=1.0)
            y = augment.chain(*view).apply(wave[a : a + piece], rng)
            a_starts, a_feats = window_features(model, y, QUERY_HOP)
            shift = rng.uniform(-LIB_HOP / 2, LIB_HOP / 2, size=int(inside.sum()))
            target = (starts[inside] - a // HOP_SAMPLES) / tempo_rate(view) + shift
            j = np.abs(a_starts[None, :] - target[:, None]).argmin(axis=1)
            clean.append(lib[inside])
            aug.append(a_feats[j])
    return {"lib": lib, "clean": np.concatenate(clean), "aug": np.concatenate(aug)}


def extract(tracks: list, root: Path, cache: Path, minutes: float, n_views: int, seed: int,
            log=print) -> dict[str, np.ndarray]:
    """Features of every fit track, cached per track under ``cache``."""
    model = build_backbone(BACKBONE)
    cache.mkdir(parents=True, exist_ok=True)
    parts: dict[str, list[np.ndarray]] = {"lib": [], "clean": [], "aug": [], "lib_track": [], "pair_track": []}
    for i, t in enumerate(tracks):
        key = hashlib.sha1(f"{FEATURES_VERSION}|{t.sha256}|{minutes}|{n_views}|{seed}".encode()).hexdigest()[:16]
        path = cache / f"{key}.npz"
        if path.is_file():
            z = dict(np.load(path))
        else:
            t0 = time.time()
            wave = load_audio(root / t.path, duration_s=minutes * 60.0)
            z = track_features(model, wave, n_views, [seed, i])
            np.savez(path, **z)
            log(f"  {t.id}: {len(z['lib'])} segments, {time.time() - t0:.0f}s")
        for k in ("lib", "clean", "aug"):
            parts[k].append(z[k])
        parts["lib_track"].append(np.full(len(z["lib"]), i))
        parts["pair_track"].append(np.full(len(z["clean"]), i))
    return {k: np.concatenate(v) for k, v in parts.items()}


def fit(feats: dict[str, np.ndarray], bits: int, kind: str, seed: int, ridge: float) -> Binarizer:
    if kind == "itq":
        return fit_binarizer.fit(feats["lib"], bits, kind="itq", seed=seed, feature=FEATURE)
    return fit_binarizer.fit_pairs(feats["clean"], feats["aug"], bits, seed=seed, ridge=ridge, feature=FEATURE)


def holdout_check(feats: dict[str, np.ndarray], kinds: list[tuple[str, float]], seed: int, bits: int = 64,
                  log=print) -> None:
    """Fit on the even-numbered fit tracks, test on the odd ones: how often the
    nearest clean segment (Hamming) of a degraded window comes from its own
    track, and the mean Hamming distance of a pair. Chooses ``--ridge``
    without looking at the evaluation corpus."""
    from musichash.search.faiss_index import hamming_knn

    def part(odd: int) -> dict[str, np.ndarray]:
        lib = feats["lib_track"] % 2 == odd
        pair = feats["pair_track"] % 2 == odd
        return {"lib": feats["lib"][lib], "lib_track": feats["lib_track"][lib],
                "clean": feats["clean"][pair], "aug": feats["aug"][pair], "pair_track": feats["pair_track"][pair]}

    train, test = part(0), part(1)
    for kind, ridge in kinds:
        b = fit(train, bits, kind, seed, ridge)
        xb = b.encode(test["lib"])
        D, I = hamming_knn(b.encode(test["aug"]), xb, 1)
        top1 = float((test["lib_track"][I[:, 0]] == test["pair_track"]).mean())
        d_pair = float(np.unpackbits(b.encode(test["clean"]) ^ b.encode(test["aug"]), axis=1).sum(1).mean())
        log(f"  holdout {kind} ridge={ridge:g}: segment top-1 track {100 * top1:.1f}%, pair Hamming {d_pair:.1f}/{bits}")


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def git_commit() -> str:
    r = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    return r.stdout.strip() or "unknown"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--corpus", type=Path, required=True, help="fit corpus folder (manifest.jsonl inside)")
    ap.add_argument("--eval-manifest", type=Path, required=True,
                    help="manifest of the evaluation corpus the fit must not overlap")
    ap.add_argument("--build", action="store_true", help="build or refresh the fit corpus first")
    ap.add_argument("--kind", choices=("lda_itq", "itq"), default="lda_itq")
    ap.add_argument("--minutes-per-track", type=float, default=3.0)
    ap.add_argument("--views", type=int, default=1, help="degraded copies per track (lda_itq pairs)")
    ap.add_argument("--ridge", type=float, default=0.1,
                    help="lda_itq: added to the within-pair scatter, as a fraction of its mean eigenvalue")
    ap.add_argument("--holdout-check", action="store_true",
                    help="first compare itq and lda_itq ridges on held-out fit tracks (see holdout_check)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--cache", type=Path, default=Path("/tmp/musichash_fit_interim"))
    ap.add_argument("--out", type=Path, default=REPO / "musichash" / "models" / "weights")
    args = ap.parse_args(argv)
    torch.set_num_threads(2)

    def log(msg: str) -> None:
        print(msg, file=sys.stderr)

    held = corpus_builder.read_manifest(args.eval_manifest)
    if not held:
        raise FitCorpusError(f"{args.eval_manifest}: no evaluation manifest there; build the eval corpus first")
    if args.build:
        corpus_builder.build(
            args.corpus, FIT_PACKAGES, midi=FIT_MIDI, seconds=MIDI_SECONDS, seed=FIT_MIDI_SEED,
            exclude_scores=[t.score for t in held if t.score], log=log,
        )
    tracks = corpus_builder.read_manifest(args.corpus / "manifest.jsonl")
    if not tracks:
        raise FitCorpusError(f"{args.corpus}: no manifest.jsonl; run again with --build")
    check_disjoint(tracks, held)

    t0 = time.time()
    feats = extract(tracks, args.corpus, args.cache, args.minutes_per_track, args.views, args.seed, log)
    log(f"features: {len(feats['lib'])} segments, {len(feats['clean'])} pairs ({time.time() - t0:.0f}s)")

    if args.holdout_check:
        holdout_check(feats, [("itq", 0.0)] + [("lda_itq", r) for r in (0.01, 0.03, 0.1, 0.3, 1.0)],
                      args.seed, log=log)
    args.out.mkdir(parents=True, exist_ok=True)
    outputs = {}
    for bits in BITS:
        b = fit(feats, bits, args.kind, args.seed, args.ridge)
        path = args.out / OUT_NAME.format(bits=bits)
        b.save(path)
        outputs[path.name] = {"bits": bits, "sha256": sha256(path)}
        log(f"  {path.name}: loss {b.summary.loss:.3f}")

    hours: dict[str, float] = {}
    counts: dict[str, int] = {}
    for t in tracks:
        src = t.package or "midi"
        used = min(t.duration_s, args.minutes_per_track * 60.0)
        hours[src] = hours.get(src, 0.0) + used / 3600
        counts[src] = counts.get(src, 0) + 1
    provenance = {
        "backbone": BACKBONE,
        "feature": FEATURE,
        "kind": args.kind,
        "seed": args.seed,
        "ridge": args.ridge if args.kind == "lda_itq" else None,
        "views_per_track": args.views if args.kind == "lda_itq" else 0,
        "degradations": "augment.random_view(strength=1.0)",
        "lib_hop_frames": LIB_HOP,
        "query_hop_frames": QUERY_HOP,
        "minutes_per_track": args.minutes_per_track,
        "segments": int(len(feats["lib"])),
        "pairs": int(len(feats["clean"])) if args.kind == "lda_itq" else 0,
        "fit_corpus": {
            "sources": {k: {"tracks": counts[k], "hours": round(hours[k], 3)} for k in sorted(counts)},
            "tracks": [t.id for t in tracks],
            "hours": round(sum(hours.values()), 3),
            "midi_seed": FIT_MIDI_SEED,
            "disjoint_from": [t.id for t in held],
        },
        "commit": git_commit(),
        "date": datetime.date.today().isoformat(),
        "machine": f"{platform.machine()}, torch {torch.__version__}, {torch.get_num_threads()} threads",
        "command": "python -m recipes.code_models.fit_interim " + " ".join(sys.argv[1:] if argv is None else argv),
        "outputs": outputs,
    }
    (args.out / "interim_codes.json").write_text(json.dumps(provenance, indent=2) + "\n")
    log(f"wrote {len(outputs)} binarizers and interim_codes.json to {args.out} ({time.time() - t0:.0f}s)")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except (FitCorpusError, corpus_builder.CorpusError) as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
