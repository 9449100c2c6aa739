"""Similarity search on a labelled corpus: `musichash evaluate` in a child process, rendered as Markdown.

    python -m benchmarks.bench_similarity MANIFEST [--windows 16] [--code-model NAME_OR_CKPT ...] [--json OUT]

MANIFEST is benchmarks/corpus.py's JSON Lines (each ``labels`` key=value is
one label: soundtrack, composer, instrument family). The command's own
``--json`` report is kept as it is, next to the exact command, its wall time
and its peak RSS; ``render`` turns it into the method table of BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import json
import resource
import shlex
import subprocess
import sys
import time
from pathlib import Path

from benchmarks.common import machine


def run(manifest: Path, windows: int, code_models: list[str], seed: int, device: str | None) -> dict:
    args = ["evaluate", str(manifest), "--json", "--windows", str(windows), "--seed", str(seed)]
    for m in code_models:
        args += ["--code-model", m]
    if device:
        args += ["--device", device]
    t0 = time.perf_counter()
    # from the working directory it inherits, the repository root, the child imports this checkout
    out = subprocess.run([sys.executable, "-m", "musichash", *args], capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if out.returncode:
        sys.exit(f"musichash {args[0]} failed ({out.returncode}): {out.stderr.strip()}")
    # the children's largest peak: the only child this process starts is the evaluation (KiB on Linux)
    rss = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    return {"meta": machine(), "command": "musichash " + shlex.join(args), "wall_s": wall, "peak_rss_mb": rss,
            "code_models": code_models, "report": json.loads(out.stdout)}


def render(d: dict) -> str:
    r = d["report"]
    radius = r["radius"]
    ks = [str(k) for k in r["k"]]
    R = r["R"]
    skipped = (f"; {r['queries_without_relevant']} windows whose file shares no label with another file are not "
               "queries") if r["queries_without_relevant"] else ""
    bad = "".join(f" Not decoded: {Path(f['path']).name} ({f['reason']})." for f in r["skipped_files"])
    # a database (every window but the query file's own) no larger than k: P@k is then R / database for every method
    whole = [k for k in ks if int(k) >= r["items"] - r["windows_per_file"]]
    whole = (f" P@{', P@'.join(whole)} rank{'s' if len(whole) == 1 else ''} the whole database of each query here "
             "(too few windows), so it is the same for every method.") if whole else ""
    lines = [
        f"{r['items']} windows (up to {r['windows_per_file']} per file, evenly spaced over its first "
        f"{r['max_minutes']:g} min) of {r['files']} files, {r['labels']} labels; {r['queries']} queries, "
        f"R (relevant windows per query) mean {R['mean']:.1f}, min {R['min']}, max {R['max']}{skipped}.{bad} "
        "Protocol: each window queries the windows of every *other* file (leave-one-file-out); relevant means "
        "sharing a manifest label (a key=value pair such as `composer=bach`); LSH and ITQ are "
        f"drawn and fitted, unsupervised, on the evaluated windows themselves; ties are broken by one seeded order "
        f"(seed {r['seed']}) shared by all methods; P@r<={radius} scores an empty Hamming ball 0, and the last column "
        f"is the share of queries whose ball is empty.{whole} `{d['command']}` ({d['wall_s']:.0f} s).\n",
        "| method | model | mAP@R | " + " | ".join(f"P@{k}" for k in ks) + f" | P@r<={radius} | empty ball |",
        "|---|---|" + "---:|" * (len(ks) + 3),
    ]

    def num(v: float | None) -> str:
        return "–" if v is None else f"{v:.3f}"

    for m in r["methods"]:
        ball = m["empty_ball"]
        lines.append(f"| {m['method']} | {m['model']} | {num(m['map_at_r'])} | "
                     + " | ".join(num(m["precision_at_k"][k]) for k in ks)
                     + f" | {num(m['precision_within_radius'])} | {'–' if ball is None else f'{100 * ball:.0f} %'} |")
    return "\n".join(lines)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("manifest", type=Path)
    ap.add_argument("--windows", type=int, default=16, help="3 s windows per file")
    ap.add_argument("--code-model", dest="code_models", action="append", default=[],
                    help="also evaluate this code model (repeatable; default: the registry's default)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", default=None)
    ap.add_argument("--json", type=Path, help="write the figures as JSON too")
    a = ap.parse_args(argv)
    d = run(a.manifest, a.windows, a.code_models, a.seed, a.device)
    if a.json:
        a.json.write_text(json.dumps(d, indent=1))
    print(render(d))


if __name__ == "__main__":
    main()
