"""Ray's cost on one machine, and what shards cost a search.

    python -m benchmarks.bench_cluster FILE_OR_FOLDER... [--rounds 2] [--segments 2000000] [--shards 4] [--json OUT]

1. Indexing: the inputs indexed into a fresh library by ``Library.index`` in this process
   (``workers`` as the engine picks), then by ``Library.index(cluster='')`` on a Ray cluster started
   on this machine (``ray.init``, all cores), alternating, ``--rounds`` times each. Ray's figure is
   taken with the cluster already up (its start is timed apart). Both libraries' codes and tags are
   compared bit for bit.
2. Sharded search: ``--segments`` random 64-bit codes in one flat index and split over ``--shards``
   shards (``search.shards.ShardedIndex``, by a random track id as the store splits them); each query is
   one 10 s clip's 8 windows, k = 40 (the engine's 10 x RERANK_FACTOR 4). Latency per query, p50 and
   p99 over ``--queries`` queries, both indexes queried alternately; the answers compared with
   brute force on a sample. ``one_core``: the one index on one core (OpenMP off), the per-core
   scan rate docs/scale.md builds on. Memory: bytes of each saved index (flat and IVF, one shard's share).
3. The driver's commits (``--commit-tracks``): how fast the one process that writes a cluster run's
   results can store them. ``LibraryStore.put_tracks`` in batches of ``cluster.index.DEFAULT_BATCH``
   into a fresh ``--shards`` library, tracks of ``--commit-track-s`` seconds with random codes and
   chroma and the dedup sketches of the inputs' real audio (sketches are most of the bytes, and they
   compress as real ones do); tracks a second and MB of codes file a second.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks.common import machine

from musichash.models import DEFAULT_CODE_MODEL


def library_contents(folder: Path) -> dict:
    from musichash.indexer.store import LibraryStore

    out = {}
    with LibraryStore.open(folder) as store:
        for t in store.tracks():
            row = (t.status, t.tags)
            if t.status == "ok":
                c = store.get_codes(t.id)
                row += tuple(np.ascontiguousarray(a).tobytes() for a in (c.track_code, c.segment_codes, c.segment_times, c.chroma))
            out[t.path] = row
    return out


def index_once(paths: list[str], code_model: str, tmp: Path, name: str, cluster: str | None) -> dict:
    from musichash.library import Library

    folder = tmp / name
    with Library.open(folder, write=True, code_model=code_model) as lib:
        if cluster is None:
            lib.model  # noqa: B018 -- loaded before the clock, as the CLI does; Ray's actors load theirs inside it
        t0 = time.perf_counter()
        report = lib.index(paths, cluster=cluster)
        wall = time.perf_counter() - t0
    return {"how": "ray" if cluster is not None else "single", "audio_s": report.audio_s, "wall_s": wall,
            "x_real_time": report.audio_s / wall, "files": len(report.added), "failed": len(report.failed),
            "folder": str(folder)}


def bench_index(paths: list[str], code_model: str, rounds: int) -> dict:
    import ray

    if ray.is_initialized():  # the commit measurement's cluster: a fresh one is timed here
        ray.shutdown()
    t0 = time.perf_counter()
    ray.init(include_dashboard=False, log_to_driver=False, logging_level="ERROR")
    start_s = time.perf_counter() - t0
    runs = []
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(rounds):
            for how in ("single", "ray") if r % 2 == 0 else ("ray", "single"):
                run = index_once(paths, code_model, Path(tmp), f"{how}{r}", "" if how == "ray" else None)
                print(f"  round {r} {how}: {run['audio_s']:.0f} s audio in {run['wall_s']:.1f} s, {run['x_real_time']:.0f}x real time", flush=True)
                runs.append(run)
        same = library_contents(Path(runs[0]["folder"])) == library_contents(Path(runs[1]["folder"]))
    ray.shutdown()
    best = {h: max(r["x_real_time"] for r in runs if r["how"] == h) for h in ("single", "ray")}
    mean = {h: float(np.mean([r["x_real_time"] for r in runs if r["how"] == h])) for h in ("single", "ray")}
    return {"ray_start_s": start_s, "runs": runs, "best_x": best, "mean_x": mean,
            "ray_over_single_mean": mean["ray"] / mean["single"], "same_codes_and_tags": same}


def bench_search(n: int, n_shards: int, queries: int, seed: int = 0) -> dict:
    import faiss

    from musichash.indexer import shards as sharding
    from musichash.search.faiss_index import BinaryIndex, IndexConfig, hamming_knn
    from musichash.search.shards import ShardedIndex

    rng = np.random.default_rng(seed)
    xb = rng.integers(0, 256, (n, 8), dtype=np.uint8)
    track = rng.integers(0, n // 30, n)  # ~30 segments a track, as a 40 s track has
    rows = np.arange(n, dtype=np.int64)
    flat_cfg = IndexConfig("flat", bits=64)
    one = BinaryIndex.build(xb, rows, flat_cfg, "cpu")
    sharded = ShardedIndex.build(xb, rows, sharding.rows_by_shard(track, n_shards), flat_cfg, "cpu")
    # a query: 8 windows near stored codes (a clip of the library) with a few bits flipped
    picks = rng.integers(0, n, (queries, 8))
    flips = rng.integers(0, 2, (queries, 8, 8), dtype=np.uint8) * (1 << rng.integers(0, 8, (queries, 8, 8))).astype(np.uint8)
    xq = xb[picks] ^ flips
    k = 40
    times = {"one": [], "sharded": [], "one_core": []}
    threads = faiss.omp_get_max_threads()
    for q in range(queries):
        for name in ("one", "sharded", "one_core") if q % 2 == 0 else ("one_core", "sharded", "one"):
            faiss.omp_set_num_threads(1 if name == "one_core" else threads)
            t0 = time.perf_counter()
            (sharded if name == "sharded" else one).search(xq[q], k)
            times[name].append(time.perf_counter() - t0)
    faiss.omp_set_num_threads(threads)
    exact = True
    for q in range(min(5, queries)):
        D, _ = sharded.search(xq[q], k)
        exact &= bool(np.array_equal(D, hamming_knn(xq[q], xb, k)[0]))
    lat = {name: {"p50_ms": 1e3 * float(np.percentile(t, 50)), "p99_ms": 1e3 * float(np.percentile(t, 99)),
                  "mean_ms": 1e3 * float(np.mean(t))} for name, t in times.items()}
    with tempfile.TemporaryDirectory() as tmp:
        one.save(Path(tmp) / "flat.faiss")
        shard_n = sharded.shards[0].ntotal
        ivf = BinaryIndex.build(xb[:shard_n], rows[:shard_n], IndexConfig("ivf", bits=64), "cpu")
        ivf.save(Path(tmp) / "ivf.faiss")
        sizes = {"flat_bytes_per_code": (Path(tmp) / "flat.faiss").stat().st_size / n,
                 "ivf_bytes_per_code": (Path(tmp) / "ivf.faiss").stat().st_size / shard_n, "ivf_nlist": ivf.config.nlist}
    return {"segments": n, "shards": n_shards, "k": k, "windows_per_query": 8, "queries": queries,
            "faiss_threads": faiss.omp_get_max_threads(), "latency": lat,
            "sharded_over_one_p50": lat["sharded"]["p50_ms"] / lat["one"]["p50_ms"],
            "sharded_over_one_p99": lat["sharded"]["p99_ms"] / lat["one"]["p99_ms"],
            "exact_distances": exact, **sizes}


def bench_commit(paths: list[str], n_tracks: int, track_s: float, n_shards: int, writers: bool = False,
                 seed: int = 0) -> dict:
    """``writers``: the codes go through ``cluster.index.shard_writers`` (a Ray actor a shard, on a
    cluster started here), as ``index --cluster`` writes them; else the store writes them itself."""
    import contextlib
    import hashlib

    from musichash.cluster.index import DEFAULT_BATCH
    from musichash.features.chroma import pack
    from musichash.features.spectra import FRAME_S, sketch_of_file
    from musichash.indexer.pipeline import scan
    from musichash.indexer.store import LibraryStore, TrackRecord
    from musichash.models.encoder import FRAME_S as MEL_FRAME_S
    from musichash.models.encoder import LIBRARY_HOP

    rng = np.random.default_rng(seed)
    n_frames = int(track_s / FRAME_S)
    sketches = []
    for f in scan(paths)[0][:8]:
        sk = sketch_of_file(f)
        sketches += [np.resize(sk, (n_frames, sk.shape[1]))]  # real sketches, repeated to the track's length
    n_seg = int((track_s - 3.0) / (LIBRARY_HOP * MEL_FRAME_S)) + 1
    with tempfile.TemporaryDirectory() as tmp:
        store = LibraryStore.open(Path(tmp) / "lib", write=True, code_model="crnnh64", bits=64, shards=n_shards)
        stack = contextlib.ExitStack()
        write = None
        if writers:
            from musichash.cluster.index import shard_writers

            write = stack.enter_context(shard_writers(store))
            write.ready()  # started before the clock, as they start while a run's first batch is decoded
        t0, n = time.perf_counter(), 0
        while n < n_tracks:
            items = []
            for i in range(n, min(n + DEFAULT_BATCH, n_tracks)):
                rec = TrackRecord(f"/bench/{i:07d}.flac", hashlib.sha256(str(i).encode()).hexdigest(), 1, 0.0,
                                  track_s, "flac", tuple(float(p) for p in rng.random(50, dtype=np.float32)))
                items.append((rec, rng.integers(0, 256, 8, dtype=np.uint8), rng.integers(0, 256, (n_seg, 8), dtype=np.uint8),
                              np.arange(n_seg, dtype=np.float32) * LIBRARY_HOP * MEL_FRAME_S,
                              pack(rng.random((int(track_s), 12)) < 0.3), sketches[i % len(sketches)]))
            store.put_tracks(items, write=write)
            n += len(items)
        stack.close()  # the writers' files closed and taken back
        wall = time.perf_counter() - t0
        store.close()
        size = sum(f.stat().st_size for f in (Path(tmp) / "lib").rglob("*.h5"))
    return {"tracks": n_tracks, "track_s": track_s, "shards": n_shards, "batch": DEFAULT_BATCH, "writers": writers,
            "wall_s": wall,
            "tracks_per_s": n_tracks / wall, "audio_h_per_s": n_tracks * track_s / 3600 / wall,
            "codes_mb_per_s": size / 1e6 / wall, "codes_bytes_per_track": size / n_tracks}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("paths", nargs="*", help="audio to index (none: the search part only)")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--code-model", default=DEFAULT_CODE_MODEL)
    ap.add_argument("--segments", type=int, default=2_000_000)
    ap.add_argument("--shards", type=int, default=4)
    ap.add_argument("--queries", type=int, default=200)
    ap.add_argument("--commit-tracks", type=int, default=0, help="tracks the commit measurement stores (0: skip it)")
    ap.add_argument("--commit-track-s", type=float, default=210.0)
    ap.add_argument("--no-index", action="store_true", help="skip the indexing comparison (the inputs give sketches only)")
    ap.add_argument("--json", type=Path)
    a = ap.parse_args(argv)
    os.environ.setdefault("RAY_DATA_DISABLE_PROGRESS_BARS", "1")
    out = {"machine": machine(), "code_model": a.code_model}
    if a.commit_tracks:
        out["commit"] = []
        for r in range(a.rounds):  # alternating, the load on a shared machine being what it is
            for writers in (False, True) if r % 2 == 0 else (True, False):
                c = bench_commit(a.paths, a.commit_tracks, a.commit_track_s, a.shards, writers)
                out["commit"].append(c)
                print(f"commits ({'shard writers' if writers else 'the store itself'}): {c['tracks_per_s']:.0f} tracks/s "
                      f"of {c['track_s']:.0f} s ({c['audio_h_per_s']:.1f} h of audio a second), "
                      f"{c['codes_mb_per_s']:.1f} MB/s, {c['codes_bytes_per_track'] / 1e3:.1f} KB a track", flush=True)
    if a.paths and not a.no_index:
        print(f"indexing {len(a.paths)} inputs, {a.rounds} rounds each way", flush=True)
        out["index"] = bench_index(a.paths, a.code_model, a.rounds)
        i = out["index"]
        print(f"ray start {i['ray_start_s']:.1f} s; mean {i['mean_x']['single']:.0f}x single, {i['mean_x']['ray']:.0f}x ray "
              f"({100 * i['ray_over_single_mean']:.0f} %); same codes and tags: {i['same_codes_and_tags']}", flush=True)
    out["search"] = s = bench_search(a.segments, a.shards, a.queries)
    print(f"search over {s['segments']:,} codes: one index p50 {s['latency']['one']['p50_ms']:.2f} ms p99 "
          f"{s['latency']['one']['p99_ms']:.2f} ms; {s['shards']} shards p50 {s['latency']['sharded']['p50_ms']:.2f} ms "
          f"p99 {s['latency']['sharded']['p99_ms']:.2f} ms ({100 * (s['sharded_over_one_p50'] - 1):+.0f} % at p50); "
          f"one index on one core p50 {s['latency']['one_core']['p50_ms']:.2f} ms; "
          f"exact: {s['exact_distances']}; flat {s['flat_bytes_per_code']:.1f} B/code, ivf {s['ivf_bytes_per_code']:.1f} B/code")
    if a.json:
        a.json.write_text(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
