"""CRNNH head settings compared on one feature cache, by the training loop's held-out metrics.

Trains one 64-bit CRNNH per variant from a finished ``musichash train``
feature cache (same data, seeds and epochs) and prints, per variant, the
last epoch's held-out figures (``musichash.train.loop``: one file in ten
held out): how often a degraded view's code finds its own clean window
(``val_top1``) or a window of its own file (``val_file_top1``) nearest
among the held-out windows, and the share of bits a degradation flips. The
shipped interim binariser is scored on the same windows for reference (its
pool5 input is read back from the cache's resized pool5 maps, which is
exact: bilinear up-sampling keeps the edge rows).

    musichash train /tmp/corpus_fit --out /tmp/crnnh64 --epochs 1 --cache /tmp/crnnh_cache.h5
    python benchmarks/crnnh_ablation.py --data /tmp/corpus_fit --cache /tmp/crnnh_cache.h5 --out /tmp/ablation

``--variants segment`` compares settings of the clip-finding head that makes
segment codes (no similarity term) on the recipe's cache instead:

    python benchmarks/crnnh_ablation.py --data /tmp/corpus_fit/train.jsonl --layout manifest \
        --cache /tmp/crnnh_train/features.h5 --out /tmp/ablation_seg --variants segment
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from musichash.models.encoder import _load_binarizer
from musichash.models.registry import get_spec
from musichash.train.cache import Features, load_cache
from musichash.train.data import load_dataset
from musichash.train.loop import VAL_EVERY, TrainConfig, teacher_features, train, validate_codes

VARIANTS = {
    "similarity-ranked channels, random batches": {"select": "similarity", "per_file": 0},
    "learned mixtures, random batches": {"select": "learned", "per_file": 0},
    "learned mixtures, 32 maps per layer, random batches": {"select": "learned", "per_file": 0, "n_select": 32},
    "learned mixtures, lambda_p 3, random batches": {"select": "learned", "per_file": 0, "lambda_p": 3.0},
    "learned mixtures, runs of 8 windows per file (shipped)": {"select": "learned", "per_file": 8},
}

#: the segment (clip-finding) head: labels as targets, no similarity term
SEGMENT_VARIANTS = {
    "similarity term 20 (the track head)": {"lambda_s": 20.0},
    "no similarity term": {"lambda_s": 0.0},
    "no similarity term, 60 epochs": {"lambda_s": 0.0, "epochs": 60},
    "no similarity term, lambda_p 3": {"lambda_s": 0.0, "lambda_p": 3.0},
    "no similarity term, runs of 16": {"lambda_s": 0.0, "per_file": 16},
    "no similarity term, hidden 512": {"lambda_s": 0.0, "hidden": 512},
    "no similarity term, lambda_q 0.3": {"lambda_s": 0.0, "lambda_q": 0.3},
}


def interim_codes(bits: int = 64):
    """The shipped interim binariser as a function of cached windows (float16 [n, L, C, H*W]) to +-1 codes.

    Its pool5 input is read back from the cache's resized pool5 maps (``teacher_features``), which is exact.
    """
    b = _load_binarizer(get_spec(f"interim_vgg_itq{bits}"), None)

    def codes(x):
        return torch.from_numpy(np.where(b.project(teacher_features(x)) > 0, 1.0, -1.0)).float()

    return codes


def interim_scores(feats: Features, rows: np.ndarray, bits: int = 64) -> dict:
    """The interim binariser's held-out figures, by the training loop's own ``validate_codes``."""
    return validate_codes(interim_codes(bits), feats, rows)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", required=True, help="the data the cache was built from")
    ap.add_argument("--layout", default="unlabelled", help="the data's layout (musichash train --layout)")
    ap.add_argument("--variants", choices=("head", "segment"), default="head")
    ap.add_argument("--cache", required=True)
    ap.add_argument("--out", required=True, type=Path)
    ap.add_argument("--epochs", type=int, default=30)
    args = ap.parse_args(argv)
    torch.set_num_threads(2)
    dataset = load_dataset(args.data, args.layout)
    feats = load_cache(args.cache, dataset)
    rows = np.flatnonzero(feats.item % VAL_EVERY == VAL_EVERY - 1)
    results = {"interim_vgg_itq64 (reference)": interim_scores(feats, rows)}
    for i, (name, kw) in enumerate((VARIANTS if args.variants == "head" else SEGMENT_VARIANTS).items()):
        cfg = TrainConfig(bits=64, **{"epochs": args.epochs, **kw})
        ckpt = train(feats, args.out / f"v{i}", cfg, grid=(8, 4), multilabel=dataset.layout != "classes",
                     meta={"backbone": feats.backbone})
        results[name] = json.loads(ckpt.with_suffix(".json").read_text())["metrics"]
        print(f"done: {name}", flush=True)
    print(f"\n{len(rows)} held-out windows of {len(np.unique(feats.item[rows]))} files, 2 degraded views each; "
          f"{len(feats.clean) - len(rows)} training windows, {args.epochs} epochs, 64 bits\n")
    print("| code | view finds its own window | view finds its own file | bits flipped |")
    print("|---|---|---|---|")
    for name, m in results.items():
        print(f"| {name} | {m['val_top1']:.1%} | {m['val_file_top1']:.1%} | {m['val_flips']:.1%} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
