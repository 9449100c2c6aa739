"""CRNNH training settings compared on music held out from their training, for similarity and for query by example.

The fit corpus's manifest labels its files (soundtrack; composer and
instrument family). One file in three (by cache index: the files of
``data/code_models/split_fit.py``'s ``calibration.jsonl``) is held out; each
variant trains a CRNNH (``--bits``, 64 by default) on the other files from the same finished
feature cache, and is scored on up to 16 evenly spaced clean windows of each
held-out file:

- ``mAP@R``: each window a query against the windows of the other held-out
  files, relevance a shared label (``musichash.train.evaluate.score``, as
  ``musichash evaluate`` scores);
- ``view->window``: ``val_top1`` of the training loop's ``validate_codes`` on
  all held-out windows (a degraded view's code finds its own clean window).

Float (cosine on centred pool5), LSH and ITQ of as many bits (fitted on the scored
windows, as ``musichash evaluate`` fits them) and the shipped interim code
(fitted on the whole fit corpus, so in-sample here) are scored on the same windows.

    musichash train /tmp/corpus_fit --out /tmp/crnnh64 --epochs 1 --cache /tmp/crnnh_cache.h5
    python benchmarks/crnnh_similarity.py --data /tmp/corpus_fit --cache /tmp/crnnh_cache.h5 --out /tmp/crnnh_sim
"""

from __future__ import annotations

import argparse
import functools
import json
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from musichash.train.evaluate import score, tie_order
from musichash.train import fit_binarizer
from musichash.models.binarizer import Binarizer
from musichash.models.crnnh import load_checkpoint
from musichash.train.cache import load_cache
from musichash.train.data import Dataset, load_dataset
from musichash.train.loop import TrainConfig, cached_codes, teacher_features, train, validate_codes

sys.path.insert(0, str(Path(__file__).resolve().parent))
from crnnh_ablation import interim_codes  # noqa: E402  (benchmarks/crnnh_ablation.py)

HOLD = 3  # one file in HOLD is held out
PER_FILE = 16  # scored windows per held-out file, as musichash evaluate's default
#: name -> TrainConfig settings ("_targets": tags = the tagger's soft tags, labels = the manifest's labels)
VARIANTS = {
    "tags, runs of 8 per file (shipped before)": {"lambda_s": 0.0},
    "tags, runs of 8, lambda_s 1": {"lambda_s": 1.0},
    "tags, runs of 8, lambda_s 3": {"lambda_s": 3.0},
    "tags, runs of 8, lambda_s 10": {"lambda_s": 10.0},
    "tags, runs of 8, lambda_s 30": {"lambda_s": 30.0},
    "tags, random batches, lambda_s 1": {"lambda_s": 1.0, "per_file": 0},
    "tags, random batches, lambda_s 10": {"lambda_s": 10.0, "per_file": 0},
    "tags, random batches, lambda_s 30": {"lambda_s": 30.0, "per_file": 0},
    "tags, random batches, lambda_s 30, lambda_p 0.3": {"lambda_s": 30.0, "per_file": 0, "lambda_p": 0.3},
    "tags + labels, runs of 8, lambda_s 1": {"lambda_s": 1.0, "_targets": "both"},
    "labels, runs of 8, lambda_s 1": {"lambda_s": 1.0, "_targets": "labels"},
    "labels, runs of 8, lambda_s 10": {"lambda_s": 10.0, "_targets": "labels"},
    "labels, runs of 8, lambda_s 20 (shipped)": {"lambda_s": 20.0, "_targets": "labels"},
    "labels, random batches, lambda_s 10": {"lambda_s": 10.0, "per_file": 0, "_targets": "labels"},
    "labels, random batches, lambda_s 30": {"lambda_s": 30.0, "per_file": 0, "_targets": "labels"},
    "tags, runs of 8, neighbour order (T 0.1), lambda_s 1": {"lambda_s": 1.0, "temperature_s": 0.1},
    "tags, runs of 8, neighbour order (T 0.1), lambda_s 5": {"lambda_s": 5.0, "temperature_s": 0.1},
    "labels, runs of 8, neighbour order (T 0.1), lambda_s 5": {"lambda_s": 5.0, "temperature_s": 0.1, "_targets": "labels"},
    "tags, runs of 8, negatives and lambda_s 30 split by file": {"lambda_s": 30.0, "negatives": "file"},
    "tags, runs of 8, negatives and neighbour order (T 0.1, lambda_s 1) split by file":
        {"lambda_s": 1.0, "temperature_s": 0.1, "negatives": "file"},
    "labels, runs of 8, negatives and lambda_s 30 split by file": {"lambda_s": 30.0, "negatives": "file", "_targets": "labels"},
    "labels, runs of 8, lambda_s 40": {"lambda_s": 40.0, "_targets": "labels"},
    "labels, runs of 8, lambda_s 80": {"lambda_s": 80.0, "_targets": "labels"},
    "labels, random batches, lambda_s 30, lambda_p 0.3": {"lambda_s": 30.0, "per_file": 0, "lambda_p": 0.3, "_targets": "labels"},
    "labels, random batches, lambda_s 60": {"lambda_s": 60.0, "per_file": 0, "_targets": "labels"},
    "labels, random batches, lambda_s 30, lambda_p 0": {"lambda_s": 30.0, "per_file": 0, "lambda_p": 0.0, "_targets": "labels"},
    "labels, random batches, lambda_s 60, lambda_p 0": {"lambda_s": 60.0, "per_file": 0, "lambda_p": 0.0, "_targets": "labels"},
    "labels, random batches, lambda_s 15, lambda_p 0": {"lambda_s": 15.0, "per_file": 0, "lambda_p": 0.0, "_targets": "labels"},
    "labels, random batches, lambda_s 5, lambda_p 0": {"lambda_s": 5.0, "per_file": 0, "lambda_p": 0.0, "_targets": "labels"},
    "labels, random batches, lambda_s 0, lambda_p 0": {"lambda_s": 0.0, "per_file": 0, "lambda_p": 0.0, "_targets": "labels"},
}


def labels_by_item(data: Path, plain: Dataset) -> tuple[np.ndarray, list[str]]:
    """bool [n_files, C]: the manifest's labels of each cache file index (``plain``: the unlabelled layout of ``data``)."""
    labelled = load_dataset(data / "manifest.jsonl", "manifest")
    row = {p.resolve(): i for i, p in enumerate(labelled.files)}
    return np.stack([labelled.targets[row[p.resolve()]] >= 0.5 for p in plain.files]), list(labelled.names)


def scored_rows(item: np.ndarray, files: np.ndarray) -> np.ndarray:
    out = []
    for f in files:
        rows = np.flatnonzero(item == f)
        out.append(rows[((np.arange(min(PER_FILE, len(rows))) + 0.5) * len(rows) / min(PER_FILE, len(rows))).astype(int)])
    return np.concatenate(out)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", required=True, type=Path, help="the folder the cache was built from, with manifest.jsonl")
    ap.add_argument("--cache", required=True)
    ap.add_argument("--out", required=True, type=Path)
    ap.add_argument("--epochs", type=int, default=30)
    ap.add_argument("--bits", type=int, default=64, choices=(16, 32, 48, 64, 128))
    ap.add_argument("--only", nargs="*", help="variant numbers to run (default: all)")
    args = ap.parse_args(argv)
    torch.set_num_threads(2)
    plain = load_dataset(args.data, "unlabelled")
    feats = load_cache(args.cache, plain)
    labels, names = labels_by_item(args.data, plain)
    files = np.unique(feats.item)
    held_files = files[files % HOLD == HOLD - 1]
    held = np.isin(feats.item, held_files)
    fit = np.flatnonzero(~held)
    rows = scored_rows(feats.item, held_files)
    item, lab = feats.item[rows], labels[feats.item[rows]]
    tiebreak = tie_order(len(rows), 0)
    x = teacher_features(feats.clean[rows])
    x -= x.mean(axis=0)
    ref = score(x, lab, item, tiebreak=tiebreak)
    results = {"float (pool5, cosine)": ref.map_at_r}
    for kind in ("lsh", "itq"):
        codes = fit_binarizer.fit(x, args.bits, kind=kind, seed=0, feature="pool5").encode(x)
        results[f"{kind}-{args.bits} (fitted on the scored windows)"] = score(codes, lab, item, tiebreak=tiebreak).map_at_r
    all_held = np.flatnonzero(held)
    interim = interim_codes(args.bits)
    name = f"interim_vgg_itq{args.bits} (shipped; fitted on all of the fit corpus, held-out files included)"
    results[name] = score(np.packbits(interim(feats.clean[rows]).numpy() > 0, axis=1), lab, item, tiebreak=tiebreak).map_at_r
    qbe = {name: validate_codes(interim, feats, all_held)["val_top1"]}
    for i, (name, kw) in enumerate(VARIANTS.items()):
        if args.only and str(i) not in args.only:
            continue
        kw = dict(kw)
        targets = kw.pop("_targets", "tags")
        t = feats.targets[fit]
        if targets != "tags":
            lt = labels[feats.item[fit]].astype(np.float32)
            t = lt if targets == "labels" else np.concatenate([t, lt], axis=1)
        sub = replace(feats, clean=feats.clean[fit], views=feats.views[fit], targets=t, item=feats.item[fit])
        run = args.out / (f"s{i}" if args.bits == 64 else f"s{i}-{args.bits}")
        ckpt = train(sub, run, TrainConfig(bits=args.bits, epochs=args.epochs, **kw), grid=(8, 4), multilabel=True,
                     resume=True)
        codes = functools.partial(cached_codes, load_checkpoint(ckpt))
        packed = np.packbits(codes(feats.clean[rows]).numpy() > 0, axis=1)
        results[name] = score(packed, lab, item, tiebreak=tiebreak).map_at_r
        qbe[name] = validate_codes(codes, feats, all_held)["val_top1"]
        print(f"done: {name}: mAP@R {results[name]:.3f}, view->window {qbe[name]:.1%}", flush=True)
    print(f"\n{len(held_files)} held-out files ({len(rows)} scored windows, {ref.queries} queries, labels {', '.join(names)}); "
          f"{len(np.unique(feats.item[fit]))} training files, {len(fit)} windows, {args.epochs} epochs, {args.bits} bits\n")
    print("| code | mAP@R | view finds its own window |")
    print("|---|---|---|")
    for name, r in results.items():
        print(f"| {name} | {r:.3f} | {qbe[name]:.1%} |" if name in qbe else f"| {name} | {r:.3f} | |")
    (args.out / "results.json").write_text(json.dumps({k: {"map_at_r": v, "val_top1": qbe.get(k)} for k, v in results.items()}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
