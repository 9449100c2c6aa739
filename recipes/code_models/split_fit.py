"""Split the fit corpus's manifest into a training part and a calibration part, by path.

    python -m recipes.code_models.split_fit /tmp/corpus_fit

writes ``train.jsonl`` and ``calibration.jsonl`` beside ``manifest.jsonl``
(same rows, paths still relative to that folder). Files are taken in path
order and every third one (the 3rd, 6th, ...) goes to calibration: the
CRNNH models are trained on the rest, and their match and dedup thresholds
are fitted on music they never heard.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

EVERY = 3


def split(rows: list[dict]) -> tuple[list[dict], list[dict]]:
    ordered = sorted(rows, key=lambda r: r["path"])
    return ([r for i, r in enumerate(ordered) if i % EVERY != EVERY - 1],
            [r for i, r in enumerate(ordered) if i % EVERY == EVERY - 1])


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("corpus", type=Path, help="a folder with manifest.jsonl (benchmarks/corpus.py)")
    args = ap.parse_args(argv)
    manifest = args.corpus / "manifest.jsonl"
    if not manifest.is_file():
        raise SystemExit(f"{manifest}: no such manifest; build the corpus first (recipes/code_models/README.md)")
    rows = [json.loads(line) for line in manifest.read_text().splitlines() if line.strip()]
    train, calibration = split(rows)
    for name, part in (("train", train), ("calibration", calibration)):
        (args.corpus / f"{name}.jsonl").write_text("".join(json.dumps(r, sort_keys=True) + "\n" for r in part))
    print(f"{manifest}: {len(train)} files to train.jsonl, {len(calibration)} to calibration.jsonl")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
