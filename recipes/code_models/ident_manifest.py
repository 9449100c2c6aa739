"""The training manifest of the identification segment head (issue 22): the package-split corpus's
calibration units, less the tracks ``benchmarks.eval_ident`` holds out for out-of-library clips (the
same choice, from the same seed), plus neverball-data's music (in neither split).

    python -m recipes.code_models.ident_manifest --corpus /tmp/corpus22 --out /tmp/corpus22/train_ident.jsonl

Units of ``benchmarks.eval_ident.EVALUATION`` are never written: no evaluation music is trained on.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import soundfile as sf

from benchmarks.eval_ident import EVALUATION
from benchmarks.queries import held_out_rows, split_of

NEVERBALL = Path("/usr/share/games/neverball/bgm")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--corpus", type=Path, required=True, help="folder of benchmarks.corpus's manifest.jsonl")
    ap.add_argument("--seed", type=int, default=0, help="eval_ident's --seed (which tracks it holds out)")
    ap.add_argument("--out", type=Path, required=True)
    a = ap.parse_args(argv)
    corpus = [json.loads(line) for line in (a.corpus / "manifest.jsonl").read_text().splitlines() if line.strip()]
    units = sorted({split_of(r) for r in corpus})
    held = held_out_rows(corpus, len(units), a.seed, held_from=units)  # as eval_ident: one per split unit
    rows = []
    for i, r in enumerate(corpus):
        if split_of(r) in EVALUATION or i in held:
            continue
        r["path"] = str((a.corpus / r["path"]).resolve())
        rows.append(r)
    for f in sorted(NEVERBALL.glob("*.ogg")):  # apt-get install neverball-data
        rows.append({"id": f"debian/neverball-data/{f.stem}", "path": str(f), "package": "neverball-data",
                     "source": "debian", "labels": {"soundtrack": "neverball-data"},
                     "duration_s": sf.info(str(f)).duration})
    a.out.write_text("".join(json.dumps(r) + "\n" for r in rows))
    print(f"{a.out}: {len(rows)} tracks")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
