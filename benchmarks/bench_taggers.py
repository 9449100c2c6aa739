"""The seed papers' taggers trained on allowed music: held-out ROC-AUC against the corpus' rendered labels.

    python -m benchmarks.bench_taggers --manifest CORPUS/manifest.jsonl --out DIR [--archs fcn4 crnn_parallel multi_input]
        [--epochs 8] [--windows 4] [--seed 0] [--json OUT]

The data: the MIDI renders of a benchmarks/corpus.py manifest (Debian game music
has no labels and is left out), each tagged with its two rendered labels,
``instrument_family=...`` (the GM instruments it was rendered with) and
``composer=...`` (the score's). These are not MagnaTagATune's or MSD's tags:
the figure is ROC-AUC against those rendered labels on held-out renders (a
seeded 70/10/20 split by file), and says nothing about the papers' tables
(README, "Reproducing the papers"). A score can be rendered more than once with
other instruments, so the composer label can be learnt from a score seen in
training; the instrument family cannot.

Mel windows are computed once and shared by the architectures; each is trained
with ``train_tagger`` as ``musichash train-tagger`` does and scored as
``musichash evaluate-tagger`` does (file-level mean of window probabilities).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import time
from pathlib import Path

import numpy as np

from benchmarks.common import machine, peak_rss_mb
from musichash.models.taggers import load_tagger
from musichash.train.tagger import TaggerTrainConfig, train_tagger, windows_digest
from musichash.train.tagger_eval import predict_files, score
from musichash.train.tagger_run import prepare

LABEL_KEYS = ("instrument_family", "composer")


def labelled_manifest(manifest: Path, out: Path) -> Path:
    """The MIDI renders of ``manifest`` with their rendered labels, paths made absolute, as a manifest in ``out``."""
    rows = [json.loads(line) for line in manifest.read_text().splitlines() if line.strip()]
    keep = [{"path": str((manifest.parent / r["path"]).resolve()),
             "labels": {k: r["labels"][k] for k in LABEL_KEYS if k in r["labels"]}}
            for r in rows if r.get("source") == "midi"]
    out.mkdir(parents=True, exist_ok=True)
    path = out / "rendered_labels.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in keep))
    return path


def _windows(labels: Path, args) -> tuple:
    """The labelled set and its mel windows; the windows are kept in ``--out`` and reused by a run on the same
    labels, seed and window count (another set of architectures)."""
    from musichash.train.tagger_data import Windows, load_labelled

    key = hashlib.sha256(labels.read_bytes() + f"{args.seed} {args.windows}".encode()).hexdigest()[:16]
    cache = args.out / f"windows-{key}.npz"
    if cache.is_file():
        z = np.load(cache)
        return load_labelled(labels, "manifest", None, args.seed), Windows(z["mels"], z["owner"], ())
    data, windows = prepare(labels, "manifest", None, args.seed, args.windows)
    np.savez(cache, mels=windows.mels, owner=windows.file)  # not file=: np.savez's own first parameter
    return data, windows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--manifest", type=Path, required=True)
    ap.add_argument("--out", type=Path, required=True, help="folder for the labels manifest and the checkpoints")
    ap.add_argument("--archs", nargs="+", default=["fcn4", "crnn_parallel", "multi_input"])
    ap.add_argument("--epochs", type=int, default=8)
    ap.add_argument("--windows", type=int, default=4, help="3 s windows per file")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args(argv)

    t0 = time.perf_counter()
    labels = labelled_manifest(args.manifest, args.out)
    data, windows = _windows(labels, args)
    feature_s = time.perf_counter() - t0
    test = np.flatnonzero(np.asarray(data.split) == "test")
    in_test = np.isin(windows.file, test)
    pos = {f: k for k, f in enumerate(test)}
    provenance = {"data": "MIDI renders of benchmarks/corpus.py, rendered labels (instrument_family, composer)",
                  "manifest_sha256": hashlib.sha256(args.manifest.read_bytes()).hexdigest()[:16],
                  "windows_sha256": windows_digest(windows), "max_windows": args.windows,
                  "command": "python -m benchmarks.bench_taggers " + " ".join(argv if argv is not None else __import__("sys").argv[1:])}
    results = []
    for arch in args.archs:
        out = args.out / f"{arch}_rendered.safetensors"
        t = time.perf_counter()
        report = train_tagger(data, windows, arch, out, TaggerTrainConfig(epochs=args.epochs, batch=args.batch, lr=args.lr,
                                                                          seed=args.seed), "cpu", provenance)
        train_s = time.perf_counter() - t
        model = load_tagger(out).model
        probs = predict_files(model, windows.mels[in_test], np.asarray([pos[f] for f in windows.file[in_test]]),
                              len(test), True)
        s = score(data.targets[test], probs, data.names, True)
        row = {"arch": arch, "parameters": report.parameters, "epochs": args.epochs, "train_s": round(train_s, 1),
               "test_files": s.n_files, "macro_roc_auc": round(s.macro_roc_auc, 4), "macro_pr_auc": round(s.macro_pr_auc, 4),
               "per_label_roc_auc": {n: (None if np.isnan(a) else round(a, 4)) for n, a in zip(s.names, s.roc_auc)},
               "checkpoint": str(out), "checkpoint_bytes": out.stat().st_size}
        results.append(row)
        print(f"{arch}: {report.parameters:,} parameters, {train_s:.0f} s, held-out macro ROC-AUC {s.macro_roc_auc:.4f}, "
              f"PR-AUC {s.macro_pr_auc:.4f} ({s.n_files} files)", flush=True)
    split = {w: int(np.sum(np.asarray(data.split) == w)) for w in ("train", "valid", "test")}
    summary = {"bench": "bench_taggers", "labels": list(data.names), "files": len(data.files), "split": split,
               "windows": len(windows.mels), "feature_s": round(feature_s, 1), "results": results,
               "provenance": provenance, "machine": machine(), "peak_rss_mb": peak_rss_mb()}
    print("| arch | parameters | epochs | train s | held-out macro ROC-AUC (rendered labels) | macro PR-AUC |")
    print("|---|---|---|---|---|---|")
    for r in results:
        print(f"| {r['arch']} | {r['parameters']:,} | {r['epochs']} | {r['train_s']:.0f} | {r['macro_roc_auc']:.4f} | {r['macro_pr_auc']:.4f} |")
    if args.json:
        args.json.write_text(json.dumps(summary, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
