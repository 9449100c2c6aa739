"""Indexing on a real local Ray cluster (a head and a second node, each its own raylet and workers):
the same codes and tags as indexing in one process, the same search answers, resumable after a
killed driver, and a worker killed mid-run retried with nothing lost or stored twice."""

import os
import shutil
import signal
import time

import numpy as np
import pytest
import soundfile as sf
from click.testing import CliRunner
from synth import write_song

from musichash.cli import cli
from musichash.indexer.pipeline import Progress
from musichash.indexer.store import LibraryStore
from musichash.library import Library

ray = pytest.importorskip("ray", reason="Ray is not installed (pip install 'musichash[cluster]')")
pytestmark = pytest.mark.cluster

MODEL = "unittest_hash"
N_SONGS = 6


@pytest.fixture(scope="module")
def ray_cluster():
    from ray.cluster_utils import Cluster

    os.environ.setdefault("RAY_DATA_DISABLE_PROGRESS_BARS", "1")
    c = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
    c.add_node(num_cpus=1)
    ray.init(address=c.address, include_dashboard=False, log_to_driver=False, logging_level="ERROR")
    c.wait_for_nodes()
    assert len([n for n in ray.nodes() if n["Alive"]]) == 2
    yield c
    ray.shutdown()
    c.shutdown()


@pytest.fixture(scope="module")
def music(tmp_path_factory):
    d = tmp_path_factory.mktemp("music")
    for i in range(N_SONGS):
        write_song(d / f"song{i}.wav", seed=i, seconds=8 + i)
    shutil.copy(d / "song1.wav", d / "copy1.wav")
    (d / "broken.mp3").write_bytes(b"\xff\xfb" + bytes(200))
    return d


@pytest.fixture(scope="module")
def single(tmp_path_factory, music):
    folder = tmp_path_factory.mktemp("single")
    with Library.open(folder, write=True, code_model=MODEL) as lib:
        lib.index([music], workers=0)
    return folder


def contents(folder):
    """Every row by file name: status, error, tags, codes and dedup sketch (bytes, so equality is bit for bit)."""
    out = {}
    with LibraryStore.open(folder) as store:
        for t in store.tracks():
            row = (t.status, t.error, t.tags, t.duration_s, t.format, t.n_segments)
            if t.status == "ok":
                c = store.get_codes(t.id)
                row += tuple(np.ascontiguousarray(a).tobytes() for a in
                             (c.track_code, c.segment_codes, c.segment_times, c.chroma, store.get_sketch(t.id)))
            out[os.path.basename(t.path)] = row
    return out


def cluster_index(folder, music, progress=None, shards=None):
    with Library.open(folder, write=True, code_model=MODEL, shards=shards) as lib:
        return lib.index([music], progress=progress, cluster="")


def test_cluster_codes_and_tags_equal_single_process(ray_cluster, music, single, tmp_path, monkeypatch):
    by_driver = []  # the codes the driver writes itself: the shard writers write every computed file's
    own = LibraryStore._write_codes
    monkeypatch.setattr(LibraryStore, "_write_codes", lambda self, tid, *a: (by_driver.append(tid), own(self, tid, *a)))
    report = cluster_index(tmp_path / "lib", music, shards=2)
    assert len(report.added) == N_SONGS and [os.path.basename(f.path) for f in report.failed] == ["broken.mp3"]
    assert [os.path.basename(c[0]) for c in report.copies] == ["song1.wav"]  # copy1.wav sorts first
    with LibraryStore.open(tmp_path / "lib") as store:  # only the copy, made from stored codes after the run
        assert [os.path.basename(store.get(t).path) for t in by_driver] == ["song1.wav"]
    want, got = contents(single), contents(tmp_path / "lib")
    assert len(want) == N_SONGS + 2 and got == want
    # idempotent: a second run finds everything done and stores nothing twice
    again = cluster_index(tmp_path / "lib", music)
    assert again.unchanged == N_SONGS + 1 and not again.added and not again.updated
    assert contents(tmp_path / "lib") == want


def test_search_on_a_cluster_indexed_sharded_library_equals_single_process(ray_cluster, music, single, tmp_path):
    cluster_index(tmp_path / "lib", music, shards=3)
    clips = []
    for i in (0, 2, 4):
        audio, sr = sf.read(music / f"song{i}.wav")
        sf.write(tmp_path / f"clip{i}.wav", audio[int(1.7 * sr): int(6.9 * sr)], sr)
        clips.append(tmp_path / f"clip{i}.wav")
    answers = []
    for folder in (single, tmp_path / "lib"):
        with Library.open(folder) as lib:
            answers.append([(r.match, [(os.path.basename(h.path), round(h.score, 6), h.hamming, round(h.offset_s, 3))
                                       for h in r.results]) for r in lib.search(clips, top_k=4)])
    assert answers[0] == answers[1] and all(r[1] for r in answers[0])


class Interrupt(Progress):
    """Stops the driver after ``after`` files are stored, as a Ctrl-C or a killed driver would."""

    def __init__(self, after):
        self.after, self.done = after, 0

    def advance(self, path, seconds):
        self.done += 1
        if self.done == self.after:
            raise KeyboardInterrupt


def test_a_stopped_driver_loses_only_unfinished_files(ray_cluster, music, single, tmp_path, monkeypatch):
    from musichash.cluster import index as cluster_mod

    monkeypatch.setattr(cluster_mod, "DEFAULT_BATCH", 1)  # one file a commit
    folder = tmp_path / "lib"
    with pytest.raises(KeyboardInterrupt):
        cluster_index(folder, music, progress=Interrupt(after=3))  # the bad file may be one of the three
    part = contents(folder)
    kept = {k: v for k, v in part.items() if v[0] == "ok"}
    assert 2 <= len(kept) < N_SONGS and all(v == contents(single)[k] for k, v in kept.items())
    report = cluster_index(folder, music)
    assert report.unchanged == len(part) - ("broken.mp3" in part)  # the stored ones are not redone
    assert contents(folder) == contents(single)


def encoder_pids():
    """PIDs of the processes running the model's actors (Ray titles them ``ray::MapWorker(MapBatches(_Encoder))``)."""
    pids = []
    for d in os.listdir("/proc"):
        try:
            with open(f"/proc/{d}/cmdline", "rb") as f:
                cmd = f.read()
        except OSError:
            continue
        if d.isdigit() and cmd.startswith(b"ray::") and b"_Encoder" in cmd:
            pids.append(int(d))
    return pids


class KillEncoder(Progress):
    """SIGKILLs the model actor's process once the first file is stored, with the others in flight."""

    killed = None

    def __init__(self):
        self.after = []  # files stored after the kill (each encoded by the restarted actor or a retry)

    def advance(self, path, seconds):
        if self.killed is None:
            pids = encoder_pids()
            assert len(pids) == 1, pids
            self.killed = pids[0]
            os.kill(self.killed, signal.SIGKILL)
        else:
            self.after.append(path)


@pytest.mark.skipif(not os.path.isdir("/proc"), reason="finds the actor's process in /proc (Linux)")
def test_a_killed_worker_is_retried_with_nothing_lost_or_doubled(ray_cluster, music, single, tmp_path, monkeypatch):
    from musichash.cluster import index as cluster_mod

    monkeypatch.setattr(cluster_mod, "DEFAULT_BATCH", 1)  # one file a batch: the kill lands while most are to do
    folder = tmp_path / "lib"
    progress = KillEncoder()
    report = cluster_index(folder, music, progress=progress)
    assert progress.killed is not None and not os.path.exists(f"/proc/{progress.killed}")
    # the kill came mid-run: files were still to be encoded, and were, by the actor Ray brought back
    assert len(progress.after) >= 3 and encoder_pids() != [progress.killed]
    assert len(report.added) == N_SONGS
    with LibraryStore.open(folder) as store:
        paths = [t.path for t in store.tracks()]
        assert len(paths) == len(set(paths)) == N_SONGS + 2
    assert contents(folder) == contents(single)


def test_cli_index_cluster(ray_cluster, music, single, tmp_path):
    runner = CliRunner()
    r = runner.invoke(cli, ["index", str(music), "--library", str(tmp_path / "lib"), "--code-model", MODEL,
                            "--shards", "2", "--json", "--cluster"])
    assert r.exit_code == 0, r.output
    import json

    out = json.loads(r.stdout)
    assert out["added"] == N_SONGS and [f["path"] for f in out["failed"]] == [str(music / "broken.mp3")]
    assert contents(tmp_path / "lib") == contents(single)
    r = runner.invoke(cli, ["index", "--cluster", str(music), "--library", str(tmp_path / "lib")])
    assert r.exit_code == 2
    assert f"'{music}' is a path, not a Ray address; put --cluster after the paths" in r.output


def test_search_through_shard_actors_equals_local(ray_cluster, music, single, tmp_path):
    from musichash.cluster.search import RemoteShards, attach

    cluster_index(tmp_path / "lib", music, shards=3)
    audio, sr = sf.read(music / "song3.wav")
    sf.write(tmp_path / "clip.wav", audio[int(2.1 * sr): int(7.0 * sr)], sr)

    def answer(lib):
        return [(r.match, [(os.path.basename(h.path), round(h.score, 6), h.offset_s) for h in r.results])
                for r in lib.search([tmp_path / "clip.wav"], top_k=4)] + [
            sorted(sorted(os.path.basename(m.path) for m in g.tracks) for g in lib.dedup(verify=False))]

    with Library.open(tmp_path / "lib") as lib:
        local = answer(lib)
        remote = attach(lib)
        assert isinstance(lib.search_index().segments, RemoteShards) and len(remote.actors) == 3
        assert answer(lib) == local and local[0][1]


def test_shard_actors_reserve_a_share_every_node_can_hold():
    """Three shards on two one-core nodes: 0.5 a shard, so two fit on one node (at 2/3, the cluster's
    cores over the shards, the third actor found no node and the first search waited for ever)."""
    from musichash.cluster.search import shard_cpus

    def node(cpus, alive=True):
        return {"Alive": alive, "Resources": {"CPU": cpus}}

    assert shard_cpus([node(1), node(1)], 3) == 0.5
    assert shard_cpus([node(1), node(1), node(8, alive=False)], 3) == 0.5
    assert shard_cpus([node(4), node(2)], 3) == 1.0
    assert shard_cpus([node(2), node(16)], 8) == 0.5


def test_serve_cluster_answers_from_shard_actors_as_the_library_does(ray_cluster, music, tmp_path):
    """``musichash serve --cluster``: the reader's segment shards live in Ray actors, searches answer
    as the library does in one process, and closing the app stops the actors."""
    pytest.importorskip("fastapi", reason="the serve extra is not installed")
    from fastapi.testclient import TestClient

    from musichash.cluster.search import RemoteShards
    from musichash.service import ServeConfig, create_app

    # hop 80: the tiny random test model finds song4 from this clip there (as the serve fixture's library)
    with Library.open(tmp_path / "lib", write=True, code_model=MODEL, shards=3, segment_hop=80) as lib:
        lib.index([music], workers=0)
    audio, sr = sf.read(music / "song4.wav")
    sf.write(tmp_path / "clip.wav", audio[int(2.56 * sr): int(8.56 * sr)], sr)
    with Library.open(tmp_path / "lib") as lib:
        [direct] = lib.search([tmp_path / "clip.wav"], top_k=3)
    with TestClient(create_app(ServeConfig(tmp_path / "lib", cluster=""))) as client:
        reader = client.app.state.reader
        assert isinstance(reader.lib.search_index().segments, RemoteShards) and len(reader.remote.actors) == 3
        actors = list(reader.remote.actors)
        with open(tmp_path / "clip.wav", "rb") as f:
            r = client.post("/search", files=[("files", ("clip.wav", f.read(), "audio/wav"))], data={"top_k": "3"})
        assert r.status_code == 200, r.text
        got = r.json()
    assert [(h["track_id"], h["offset_s"]) for h in got["results"]] == [
        (h.track_id, round(h.offset_s, 2)) for h in direct.results]
    assert got["match"] == direct.match and os.path.basename(got["results"][0]["path"]) == "song4.wav"
    # the app's shutdown stopped them: ray.kill takes effect soon after it returns, not at once (a call sent
    # right after it has been answered), so ask until the actor is gone
    deadline = time.monotonic() + 60
    with pytest.raises(ray.exceptions.RayActorError):
        while time.monotonic() < deadline:
            ray.get(actors[0].ntotal.remote(), timeout=60)
            time.sleep(0.2)


def test_a_killed_shard_writer_fails_the_batch_and_loses_nothing_committed(ray_cluster, tmp_path):
    """A shard writer killed between two batches: the first batch stays 'ok' and readable, the second
    fails with one line and its rows stay 'pending', and storing it again completes the library."""
    from musichash.cluster.index import shard_writers
    from musichash.indexer.pipeline import IndexingError
    from musichash.indexer.store import TrackRecord

    rng = np.random.default_rng(3)

    def item(i):
        rec = TrackRecord(f"/m/{i}.flac", f"{i:064x}", 1, 0.0, 10.0, "flac", None)
        return (rec, rng.integers(0, 256, 8, dtype=np.uint8), rng.integers(0, 256, (5, 8), dtype=np.uint8),
                np.arange(5, dtype=np.float32), None, rng.integers(0, 256, (20, 32), dtype=np.uint8))

    items = [item(i) for i in range(8)]
    with LibraryStore.open(tmp_path / "lib", write=True, code_model=MODEL, bits=64, shards=2) as store:
        with pytest.raises(IndexingError, match="^a shard writer failed .*run the same command again"):
            with shard_writers(store) as write:
                first = store.put_tracks(items[:4], write=write)
                ray.kill(write.actors[0])
                store.put_tracks(items[4:], write=write)
        assert [t.status for t in store.tracks()] == ["ok"] * 4 + ["pending"] * 4
        for t, it in zip(first, items):
            np.testing.assert_array_equal(store.get_codes(t.id).segment_codes, it[2])
        with shard_writers(store) as write:  # the next run
            store.put_tracks(items[4:], write=write)
        tracks = store.tracks()
        assert len(tracks) == 8 and all(t.status == "ok" for t in tracks)
        for t in tracks:
            np.testing.assert_array_equal(store.get_codes(t.id).segment_codes, items[int(t.path[3:-5])][2])


def test_the_library_settings_hold_in_the_model_actors(ray_cluster, music, tmp_path):
    """A library's tagger and segment hop (here 32, not the default) hold on the cluster: the same
    segments, at the library's hop, and the tagger's tags, as indexing in one process."""
    from musichash.models.encoder import FRAME_S
    from musichash.models.taggers import load_tagger

    tags, times = {}, {}
    for how in ("single", "ray"):
        with Library.open(tmp_path / how, write=True, code_model=MODEL, tagger="fcn4_rendered", segment_hop=32) as lib:
            lib.index([music / "song2.wav", music / "song3.wav"], workers=0, cluster="" if how == "ray" else None)
            tags[how] = {os.path.basename(t.path): t.tags for t in lib.tracks()}
            times[how] = {os.path.basename(t.path): lib.store.get_codes(t.id).segment_times for t in lib.tracks()}
    for name, t in times["single"].items():
        np.testing.assert_array_equal(times["ray"][name], t)
        np.testing.assert_allclose(np.diff(t)[:-1], 32 * FRAME_S, rtol=1e-5)  # the last window ends with the file
    assert tags["ray"].keys() == tags["single"].keys() and len(tags["single"]) == 2
    for name, p in tags["single"].items():  # the actor's torch runs on other threads: last bits may differ
        np.testing.assert_allclose(tags["ray"][name], p, rtol=0, atol=1e-6)
    n_labels = len(load_tagger("fcn4_rendered").names)  # the tagger's labels, not the code model's tag head's
    assert all(len(t) == n_labels for t in tags["single"].values())
