"""The training manifest of the identification segment head (issue 22): the package-split corpus's
calibration units, less the tracks its evaluation holds out for out-of-library clips, plus
neverball-data's music (in neither split).

    python -m recipes.code_models.ident_manifest --corpus /tmp/corpus22 \
        --held-out /tmp/ident/calibration.json --out /tmp/corpus22/train_ident.jsonl

``--held-out``: the JSON ``benchmarks.eval_ident --split calibration`` wrote (``library.held_out``).
Units of ``benchmarks.eval_ident.EVALUATION`` are never written: no evaluation music is trained on.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import soundfile as sf

from benchmarks.eval_ident import EVALUATION
from benchmarks.queries import split_of

NEVERBALL = Path("/usr/share/games/neverball/bgm")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--corpus", type=Path, required=True, help="folder of benchmarks.corpus's manifest.jsonl")
    ap.add_argument("--held-out", type=Path, required=True)
    ap.add_argument("--out", type=Path, required=True)
    a = ap.parse_args(argv)
    held = {Path(n).stem for n in json.loads(a.held_out.read_text())["library"]["held_out"]}
    rows = []
    for line in (a.corpus / "manifest.jsonl").read_text().splitlines():
        r = json.loads(line)
        if split_of(r) in EVALUATION or r["id"].replace("/", "__") in held:
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
