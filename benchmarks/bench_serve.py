"""``musichash serve`` under load: closed-loop clients POSTing 10 s clips to a server over a 10k-track library.

    python -m benchmarks.bench_serve --work /tmp/bench_serve --clients 16 64 --duration 120 --json /tmp/serve.json

- The library: the real game music of Debian's xmoto-data and extremetuxracer-data (``--audio``), indexed with
  the default code model, grown to ``--tracks`` with synthetic tracks through ``LibraryStore.put_tracks``
  (``bench_library_scale.synthetic_tracks``: the same codes, chroma and tags), its index rebuilt once. Kept
  in ``--work`` and reused when it is already that size.
- The clips: 10 s excerpts of the real tracks at seeded offsets, as 16-bit WAV uploads.
- The baseline: ``Library.search`` on the same clips one at a time in this process, warm: its rate is what
  the server's throughput is compared with (the server's overhead).
- The server: ``musichash serve`` in a child process on 127.0.0.1 (``--queue`` as given); its RSS is read
  at the start and the end of each run. Each client sends one clip, waits for the answer, and sends the
  next; on a 503 it waits the Retry-After the server sent. Latencies are of answered (200) requests.

The clients share the machine's cores with the server; on a 2-core machine they take part of its CPU.
"""

from __future__ import annotations

import argparse
import http.client
import io
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import soundfile as sf

import musichash  # noqa: F401  (before faiss and torch: it sets GOMP_SPINCOUNT)
from benchmarks.bench_library_scale import synthetic_tracks
from benchmarks.common import machine
from musichash.features.audio import SAMPLE_RATE, load_audio
from musichash.library import Clip, Library

CLIP_S = 10.0
AUDIO = (Path("/usr/share/games/xmoto/Textures/Musics"), Path("/usr/share/games/etr/music"))
BOUNDARY = "musichashbench"


def real_files(folders) -> list[Path]:
    files = sorted(f for d in folders for f in d.glob("*.ogg"))
    return [f for f in files if sf.info(f).duration >= 40]  # songs, not jingles


def build(work: Path, files: list[Path], n_tracks: int, seed: int) -> Path:
    folder = work / "lib"
    if (folder / "library.db").exists():
        with Library.open(folder) as lib:
            if lib.stats().n_tracks >= n_tracks:
                return folder
    t0 = time.perf_counter()
    with Library.open(folder, write=True) as lib:
        rep = lib.index(files)
        have = lib.stats().n_tracks
        for items in synthetic_tracks(max(0, n_tracks - have), have, np.random.default_rng(seed), len(lib.vocabulary)):
            lib.store.put_tracks(items)
        lib.reindex()
    print(f"library: {len(rep.added)} real tracks indexed, grown to {n_tracks} in {time.perf_counter() - t0:.0f} s",
          file=sys.stderr)
    return folder


def make_clips(files: list[Path], n: int, seed: int) -> list[tuple[str, np.ndarray, str]]:
    rng = np.random.default_rng(seed)
    waves = {f: load_audio(f) for f in files}
    out = []
    for k in range(n):
        f = files[k % len(files)]
        y = waves[f]
        m = int(CLIP_S * SAMPLE_RATE)
        o = int(rng.integers(0, len(y) - m))
        out.append((f"clip{k}.wav", y[o:o + m].copy(), str(f.absolute())))
    return out


def multipart(name: str, wave: np.ndarray) -> bytes:
    buf = io.BytesIO()
    sf.write(buf, wave, SAMPLE_RATE, format="WAV", subtype="PCM_16")
    return (f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="files"; filename="{name}"\r\n'
            f"Content-Type: audio/wav\r\n\r\n").encode() + buf.getvalue() + f"\r\n--{BOUNDARY}--\r\n".encode()


def baseline(folder: Path, clips, seconds: float) -> dict:
    """Library.search's own rate, one clip at a time, warm."""
    with Library.open(folder) as lib:
        for n, w, _ in clips:  # warm-up, as the server's: index paged in, model and caches warm
            list(lib.search([Clip(n, w)]))
        lat, top1, t0 = [], 0, time.perf_counter()
        while time.perf_counter() - t0 < seconds:
            name, wave, path = clips[len(lat) % len(clips)]
            t = time.perf_counter()
            (r,) = lib.search([Clip(name, wave)])
            lat.append(time.perf_counter() - t)
            top1 += bool(r.results) and r.results[0].path == path
        total = time.perf_counter() - t0
    return {"n": len(lat), "seconds": seconds, "rate": len(lat) / total, "p50_ms": 1000 * float(np.median(lat)),
            "p99_ms": 1000 * float(np.quantile(lat, 0.99)), "top1": top1 / len(lat)}


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def sample_rss(pid: int, samples: list[float], done: threading.Event) -> None:
    while not done.wait(10):
        samples.append(round(rss_mb(pid), 1))


def load(port: int, bodies, paths, clients: int, seconds: float, timeout: float) -> dict:
    """``clients`` threads, each sending clips back to back for ``seconds``."""
    records: list[tuple[float, int, bool]] = []  # (latency s, status; 0: timeout or connection error, right track)
    lock = threading.Lock()
    stop = time.perf_counter() + seconds

    def client(c: int) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
        k = c
        while time.perf_counter() < stop:
            body = bodies[k % len(bodies)]
            t = time.perf_counter()
            try:
                conn.request("POST", "/search", body, {"Content-Type": f"multipart/form-data; boundary={BOUNDARY}"})
                resp = conn.getresponse()
                data = resp.read()
                status, retry = resp.status, resp.getheader("Retry-After")
            except (OSError, http.client.HTTPException):
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
                status, data, retry = 0, b"", None
            lat = time.perf_counter() - t
            right = status == 200 and json.loads(data)["results"][0]["path"] == paths[k % len(paths)]
            with lock:
                records.append((lat, status, right))
            k += clients
            if status == 503:
                time.sleep(min(float(retry or 1), max(0.0, stop - time.perf_counter())))
        conn.close()

    threads = [threading.Thread(target=client, args=(c,)) for c in range(clients)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    ok = np.array([r[0] for r in records if r[1] == 200])
    n = len(records)
    count = lambda f: sum(1 for r in records if f(r[1]))
    return {"clients": clients, "seconds": round(wall, 1), "requests": n, "ok": len(ok),
            "throughput": len(ok) / wall, "p50_ms": 1000 * float(np.median(ok)) if len(ok) else None,
            "p95_ms": 1000 * float(np.quantile(ok, 0.95)) if len(ok) else None,
            "p99_ms": 1000 * float(np.quantile(ok, 0.99)) if len(ok) else None,
            "rate_503": count(lambda s: s == 503) / n, "rate_5xx_other": count(lambda s: s >= 500 and s != 503) / n,
            "rate_4xx": count(lambda s: 400 <= s < 500) / n, "rate_timeout": count(lambda s: s == 0) / n,
            "top1": sum(r[2] for r in records) / max(1, len(ok))}


def serve(folder: Path, queue: int, timeout: float) -> tuple[subprocess.Popen, int]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-m", "musichash", "serve", "--library", str(folder), "--port", str(port),
                             "--queue", str(queue), "--timeout", str(timeout), "-q"])
    for _ in range(600):
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
            conn.request("GET", "/health")
            if conn.getresponse().status == 200:
                return proc, port
        except OSError:
            time.sleep(0.2)
    proc.kill()
    sys.exit("the server did not come up")


def run(a: argparse.Namespace) -> dict:
    a.work.mkdir(parents=True, exist_ok=True)
    files = real_files(a.audio)
    folder = build(a.work, files, a.tracks, a.seed)
    clips = make_clips(files, a.clips, a.seed)
    out = {"meta": machine(), "tracks": a.tracks, "real_tracks": len(files), "clip_s": CLIP_S, "queue": a.queue,
           "timeout_s": a.timeout, "duration_s": a.duration}
    bodies, paths = [multipart(n, w) for n, w, _ in clips], [p for _, _, p in clips]
    out["runs"] = []
    for clients in a.clients:
        # measured just before each run: on a shared machine the load moves within minutes
        base = baseline(folder, clips, a.baseline_s)
        out.setdefault("baseline", base)
        print(f"Library.search alone: {base['rate']:.1f} clips/s, p50 {base['p50_ms']:.0f} ms", file=sys.stderr)
        proc, port = serve(folder, a.queue, a.timeout)
        try:
            load(port, bodies, paths, 2, 10, a.timeout + 10)  # warm-up: index loaded, model and caches warm
            rss0 = rss_mb(proc.pid)
            samples: list[float] = []  # every 10 s: a leak climbs to the end, a warm-up levels off
            done = threading.Event()
            sampler = threading.Thread(target=sample_rss, args=(proc.pid, samples, done))
            sampler.start()
            try:
                # the clients wait longer than the server's own timeout, so that its 504 is seen as one
                r = load(port, bodies, paths, clients, a.duration, a.timeout + 10)
            finally:
                done.set()
                sampler.join()
            r.update(rss_start_mb=rss0, rss_end_mb=rss_mb(proc.pid), rss_samples_mb=samples,
                     load_after=[round(x, 2) for x in os.getloadavg()])
        finally:
            proc.send_signal(signal.SIGINT)
            proc.wait(30)
        r["baseline"] = base
        r["share_of_library_rate"] = r["throughput"] / base["rate"]
        print(f"{clients} clients: {r['throughput']:.1f}/s, p50 {r['p50_ms']:.0f} p95 {r['p95_ms']:.0f} "
              f"p99 {r['p99_ms']:.0f} ms, 503 {100 * r['rate_503']:.1f} %, other 5xx {100 * r['rate_5xx_other']:.1f} %, "
              f"timeouts {100 * r['rate_timeout']:.1f} %, RSS {r['rss_start_mb']:.0f} -> {r['rss_end_mb']:.0f} MB",
              file=sys.stderr, flush=True)
        out["runs"].append(r)
    return out


def _settled(r: dict) -> str:
    """RSS from the third 10 s sample (the run's concurrency reached) to the end."""
    s = r.get("rss_samples_mb") or []
    if len(s) < 3:
        return "–"
    return f"{s[2]:.0f} → {r['rss_end_mb']:.0f} ({100 * (r['rss_end_mb'] / s[2] - 1):+.1f} %)"


def render(d: dict) -> str:
    m, b = d["meta"], d["baseline"]
    intro = (
        f"`musichash serve` over a {d['tracks']:,}-track library ({d['real_tracks']} real, the rest synthetic), "
        f"closed-loop clients POSTing {d['clip_s']:g} s WAV clips for {d['duration_s']:g} s per run, server "
        f"`--queue {d['queue']} --timeout {d['timeout_s']:g}`; clients and server on the same machine. "
        f"Baseline: `Library.search` alone, one clip at a time in one process, for {b['seconds']:g} s just before "
        f"each run (the first: {b['rate']:.1f} clips/s, p50 {b['p50_ms']:.0f} ms, p99 {b['p99_ms']:.0f} ms, "
        f"top-1 {100 * b['top1']:.0f} %). "
        f"{m['date']}, commit {m['commit']}, {m['cpu']} ({m['cores']} cores), no GPU; load before: {m['load']}."
    )
    lines = [
        intro,
        "",
        "| clients | answered/s | Library.search alone /s | server's share | p50 ms | p95 ms | p99 ms | 503 % | other 5xx % | timeouts % | 4xx % | top-1 % | server RSS start → end MB | RSS 30 s in → end |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---|",
    ]
    for r in d["runs"]:
        alone = r.get("baseline", b)["rate"]
        lines.append(f"| {r['clients']} | {r['throughput']:.1f} | {alone:.1f} | {100 * r['share_of_library_rate']:.0f} % | {r['p50_ms']:.0f} | "
                     f"{r['p95_ms']:.0f} | {r['p99_ms']:.0f} | {100 * r['rate_503']:.1f} | {100 * r['rate_5xx_other']:.1f} | "
                     f"{100 * r['rate_timeout']:.1f} | {100 * r['rate_4xx']:.1f} | {100 * r['top1']:.0f} | "
                     f"{r['rss_start_mb']:.0f} → {r['rss_end_mb']:.0f} ({100 * (r['rss_end_mb'] / r['rss_start_mb'] - 1):+.1f} %) | "
                     f"{_settled(r)} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", type=Path, default=Path("/tmp/bench_serve"))
    ap.add_argument("--audio", type=Path, nargs="+", default=list(AUDIO), help="folders of .ogg songs to index")
    ap.add_argument("--tracks", type=int, default=10_000)
    ap.add_argument("--clips", type=int, default=24)
    ap.add_argument("--clients", type=int, nargs="+", default=[16, 64])
    ap.add_argument("--duration", type=float, default=120.0)
    ap.add_argument("--baseline-s", type=float, default=30.0)
    ap.add_argument("--queue", type=int, default=32)
    ap.add_argument("--timeout", type=float, default=30.0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", type=Path, default=None)
    a = ap.parse_args(argv)
    d = run(a)
    if a.json:
        a.json.write_text(json.dumps(d, indent=1))
    print(render(d))
    return 0


if __name__ == "__main__":
    sys.exit(main())
