"""What the confidence-weighted ranking adds to a query's search + vote on a large library.

    PYTHONPATH=. python benchmarks/bench_rerank.py --tracks 100000 --json /tmp/rerank.json

``engine.query_codes`` with a query's unquantised codes fetches ``RERANK_FACTOR``
times k segments per window, re-ranks them by ``bits.asymmetric_distance`` and
votes on the k nearest; without them it fetches k and votes. On bench_scale.py's
synthetic library (same seed) both are timed over the same 10 s queries, per
segment index, one OpenMP thread, p50 of each path per round, median of the
rounds. The synthetic queries carry no confidence, so their tanh outputs are the
code's signs times magnitudes drawn uniformly from (0, 1]: this measures cost, not accuracy.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import faiss
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_scale import BITS, K, auto_nlist, make_queries, synth_library, to_votes  # noqa: E402
from common import machine  # noqa: E402

from musichash.search.engine import RERANK_FACTOR, rerank  # noqa: E402
from musichash.search.faiss_index import BinaryIndex, IndexConfig  # noqa: E402


def one_query(index, seg_codes, starts, q, relaxed) -> None:
    k = K * RERANK_FACTOR if relaxed is not None else K
    D, I = index.search(q.xq, k)
    dist = None
    if relaxed is not None:
        D, I, dist = rerank(seg_codes, relaxed, D, I, K)
    to_votes(q, 1, D, I, starts, distance=dist)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tracks", type=int, default=100_000)
    ap.add_argument("--queries", type=int, default=100)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--nprobe", type=int, default=64)
    ap.add_argument("--json", type=Path, default=None)
    a = ap.parse_args(argv)
    faiss.omp_set_num_threads(1)
    rng = np.random.default_rng(0)
    lib = synth_library(a.tracks, rng)
    xb = lib.segment_codes()
    queries = [q for q in make_queries(lib, a.queries, rng) if q.condition == "flip15"][: a.queries]
    relaxed = [np.where(np.unpackbits(q.xq, axis=1) > 0, 1.0, -1.0).astype(np.float32)
               * rng.uniform(1e-3, 1.0, size=(len(q.xq), BITS)).astype(np.float32) for q in queries]
    out = {"meta": machine(), "tracks": a.tracks, "segments": int(len(xb)), "queries": len(queries),
           "rerank_factor": RERANK_FACTOR, "k": K, "runs": []}
    nlist = auto_nlist(len(xb))
    for name, config, nprobe in (("flat", IndexConfig("flat"), None), (f"ivf{nlist} nprobe{a.nprobe}", IndexConfig("ivf", nlist=nlist), a.nprobe)):
        index = BinaryIndex.build(xb, config=config, device="cpu")
        index.set_search_params(nprobe=nprobe)
        rounds = {"hamming": [], "weighed": []}
        for _ in range(a.rounds):
            for path in rounds:
                t = []
                for q, r in zip(queries, relaxed):
                    t0 = time.perf_counter()
                    one_query(index, xb, lib.starts, q, r if path == "weighed" else None)
                    t.append(time.perf_counter() - t0)
                rounds[path].append(float(np.median(t) * 1e3))
        run = {"index": name, **{f"{p}_p50_ms": float(np.median(v)) for p, v in rounds.items()},
               **{f"{p}_rounds_ms": v for p, v in rounds.items()}}
        print(json.dumps(run), file=sys.stderr, flush=True)
        out["runs"].append(run)
        del index
    print(f"| index ({a.tracks:,} tracks, 10 s query) | Hamming, k = {K} | weighed, {RERANK_FACTOR * K} re-ranked to {K} |")
    print("|---|---:|---:|")
    for r in out["runs"]:
        print(f"| {r['index']} | {r['hamming_p50_ms']:.2f} ms | {r['weighed_p50_ms']:.2f} ms |")
    if a.json:
        a.json.write_text(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
