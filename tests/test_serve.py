"""``musichash serve``'s HTTP API through FastAPI's TestClient: every endpoint, its error codes, the
limits, and that no request reaches a file that is not a track of the library."""

from __future__ import annotations

import json
import threading
import time

import numpy as np
import pytest
import soundfile as sf
from click.testing import CliRunner
from serve_fixture import MODEL, SONG_S, build_library, excerpt
from synth import SR, make_song, write_song

pytest.importorskip("fastapi", reason="the serve extra: pip install 'musichash[serve]'")
from fastapi.testclient import TestClient

from musichash.cli import cli
from musichash.library import Library
from musichash.service import ServeConfig, create_app

TOKEN = "s3cret-token"


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    return build_library(tmp_path_factory.mktemp("serve"))


@pytest.fixture(scope="module")
def client(built):
    _, lib = built
    with TestClient(create_app(ServeConfig(lib, device="cpu"))) as c:
        yield c


def ids(built) -> dict[str, int]:
    _, lib = built
    with Library.open(lib) as library:
        return {t.path.rsplit("/", 1)[1]: t.id for t in library.tracks()}


def upload(*paths, name=None):
    return [("files", (name or p.name, p.read_bytes(), "application/octet-stream")) for p in paths]


# ------------------------------------------------------------------ reads


def test_health_and_stats_match_the_cli(client, built):
    _, lib = built
    h = client.get("/health").json()
    assert h["status"] == "ok" and h["tracks"] == 4 and h["generation"].startswith(MODEL)
    cli_stats = json.loads(CliRunner().invoke(cli, ["stats", "--library", str(lib), "--json"]).stdout)
    assert client.get("/stats").json() == {k: v for k, v in cli_stats.items() if k not in ("health", "problems")}


def test_search_finds_the_track_and_offset_like_the_library(client, built, tmp_path):
    music, lib = built
    clip = excerpt(tmp_path / "clip.flac", 1, 4.0, 6.0)
    r = client.post("/search", files=upload(clip), data={"top_k": "3"})
    assert r.status_code == 200, r.text
    obj = r.json()
    assert obj["query"] == "clip.flac" and obj["duration_s"] == 6.0
    top = obj["results"][0]
    assert top["path"] == str(music / "song1.wav") and abs(top["offset_s"] - 3.84) < 0.3
    assert {"path", "track_id", "score", "hamming", "offset_s", "tags"} <= set(top) and len(obj["results"]) == 3
    with Library.open(lib) as library:  # the same answer as the Python API (and so the CLI) gives
        [direct] = library.search([clip], top_k=3)
    assert [(h["track_id"], h["offset_s"]) for h in obj["results"]] == [(h.track_id, round(h.offset_s, 2)) for h in direct.results]
    assert obj["match"] == direct.match


def test_search_several_clips_answers_each_in_order(client, built, tmp_path):
    music, _ = built
    a, b = excerpt(tmp_path / "a.wav", 2, 2.56, 6.0, "WAV"), excerpt(tmp_path / "b.flac", 0, 3.84, 6.0)
    out = client.post("/search", files=upload(a, b)).json()
    assert [o["query"] for o in out] == ["a.wav", "b.flac"]
    assert out[0]["results"][0]["path"] == str(music / "song2.wav")
    assert out[1]["results"][0]["path"] in (str(music / "song0.wav"), str(music / "copy0.flac"))


def test_search_raw_pcm_from_the_browser(client, built):
    music, _ = built
    import soxr

    wave = soxr.resample(make_song(2, SONG_S)[round(2.56 * SR): round(8.56 * SR)], SR, 44100).astype("<f4")
    r = client.post("/search", files=[("files", ("mic", wave.tobytes(), "application/octet-stream"))], data={"pcm_rate": "44100"})
    assert r.status_code == 200, r.text
    top = r.json()["results"][0]
    assert top["path"] == str(music / "song2.wav") and abs(top["offset_s"] - 2.56) < 0.3
    odd = client.post("/search", files=[("files", ("mic", b"\0" * 7, "application/octet-stream"))], data={"pcm_rate": "16000"})
    assert odd.status_code == 400 and odd.json() == {"error": "mic: raw PCM must be float32 samples (a multiple of 4 bytes), got 7 bytes"}


@pytest.mark.parametrize("content, reason", [
    (b"RIFF" + bytes(40), "truncated or corrupt"),
    (b"just some text, named like audio\n" * 10, "not an audio file"),
])
def test_corrupt_upload_is_400_with_the_decoders_reason(client, content, reason):
    r = client.post("/search", files=[("files", ("clip.mp3", content, "audio/mpeg"))])
    assert r.status_code == 400
    err = r.json()["error"]
    assert err.startswith("clip.mp3: ") and reason in err and "\n" not in err and "musichash-upload" not in err


def test_limits_413(built, tmp_path):
    _, lib = built
    long = tmp_path / "long.wav"
    write_song(long, 5, seconds=8)
    with TestClient(create_app(ServeConfig(lib, device="cpu", max_upload_mb=1, max_clip_s=5, max_clips=2))) as c:
        big = c.post("/search", files=[("files", ("big.wav", bytes(1_100_000), "audio/wav"))])
        assert big.status_code == 413 and big.json()["error"].startswith("upload larger than 1 MB")
        too_long = c.post("/search", files=upload(long))
        assert too_long.status_code == 413
        assert too_long.json() == {"error": "long.wav: longer than 5 s; send a shorter clip (the limit is musichash serve --max-clip-s)"}
        clip = excerpt(tmp_path / "c.flac", 0, 0, 3)
        many = c.post("/search", files=upload(clip, clip, clip))
        assert many.status_code == 413 and many.json() == {"error": "3 clips in one request; send at most 2"}

        def chunked():  # no Content-Length: the body is counted as it arrives
            yield b'--x\r\nContent-Disposition: form-data; name="files"; filename="a.wav"\r\n\r\n'
            for _ in range(30):
                yield bytes(50_000)

        r = c.post("/search", content=chunked(), headers={"content-type": "multipart/form-data; boundary=x"})
        assert r.status_code == 413


def test_tracks_paging_and_filters(client, built):
    music, _ = built
    every = client.get("/tracks").json()
    assert every["total"] == 5 and [t["track_id"] for t in every["tracks"]] == sorted(ids(built).values())
    page = client.get("/tracks", params={"offset": 1, "limit": 2}).json()
    assert page["tracks"] == every["tracks"][1:3] and page["total"] == 5
    assert [t["path"] for t in client.get("/tracks", params={"q": "SONG1"}).json()["tracks"]] == [str(music / "song1.wav")]
    assert client.get("/tracks", params={"status": "error"}).json()["tracks"][0]["path"].endswith("bad.wav")
    tagged = client.get("/tracks", params={"tag": "piano", "min_p": 0.5}).json()
    assert tagged["total"] == 4 and client.get("/tracks", params={"tag": "piano", "min_p": 1.0}).json()["total"] == 0
    bad = client.get("/tracks", params={"tag": "kazoo"})
    assert bad.status_code == 400 and bad.json()["error"].startswith("unknown tag 'kazoo'")
    assert client.get("/tracks", params={"limit": 0}).status_code == 422


def test_track_by_id(client, built):
    tid = ids(built)["song2.wav"]
    t = client.get(f"/tracks/{tid}").json()
    assert t["track_id"] == tid and t["status"] == "ok" and t["duration_s"] == SONG_S and len(t["tags"]) == 5
    missing = client.get("/tracks/999")
    assert missing.status_code == 404 and missing.json()["error"].startswith("no track with id 999")
    assert client.get("/tracks/abc").status_code == 422


def test_similar_and_recommend(client, built):
    music, _ = built
    i = ids(built)
    r = client.get(f"/tracks/{i['song0.wav']}/similar").json()
    assert r["excluded"] == [str(music / "copy0.flac")]  # its duplicate is left out
    assert {h["path"] for h in r["results"]} == {str(music / "song1.wav"), str(music / "song2.wav")}
    none = client.get(f"/tracks/{i['song0.wav']}/similar", params={"tag": "piano", "min_p": 1.0}).json()
    assert none["results"] == []
    assert client.get(f"/tracks/{i['song0.wav']}/similar", params={"exclude_tag": "piano"}).json()["results"] == []
    assert client.get(f"/tracks/{i['song0.wav']}/similar", params={"tag": "kazoo"}).status_code == 400
    assert client.get(f"/tracks/{i['bad.wav']}/similar").status_code == 409
    assert client.get("/tracks/999/similar").status_code == 404
    rec = client.post("/recommend", json={"seeds": [i["song1.wav"], i["song2.wav"]], "top_k": 5}).json()
    assert {h["path"] for h in rec["results"]} <= {str(music / "song0.wav"), str(music / "copy0.flac")}
    assert client.post("/recommend", json={"seeds": []}).status_code == 422
    assert client.post("/recommend", json={"seeds": ["/etc/passwd"]}).status_code == 422  # ids only, never paths
    assert client.post("/recommend", json={"seeds": [999]}).status_code == 404


def test_dedup_groups_with_spans(client, built):
    music, _ = built
    [g] = client.get("/dedup").json()["groups"]
    assert sorted(m["path"] for m in g["tracks"]) == [str(music / "copy0.flac"), str(music / "song0.wav")]
    assert all(m["span_s"][0] < 0.5 and m["span_s"][1] > SONG_S - 0.5 for m in g["tracks"])


def test_audio_streams_tracks_with_ranges(client, built):
    music, _ = built
    tid = ids(built)["song1.wav"]
    data = (music / "song1.wav").read_bytes()
    full = client.get(f"/tracks/{tid}/audio")
    assert full.status_code == 200 and full.content == data and full.headers["content-type"] == "audio/wav"
    part = client.get(f"/tracks/{tid}/audio", headers={"Range": "bytes=100-199"})
    assert part.status_code == 206 and part.content == data[100:200]
    assert part.headers["content-range"] == f"bytes 100-199/{len(data)}"
    assert client.get(f"/tracks/{ids(built)['bad.wav']}/audio").status_code == 404  # not a playable track


@pytest.mark.parametrize("url", [
    "/tracks/../../../../etc/passwd/audio",
    "/tracks/..%2F..%2F..%2Fetc%2Fpasswd/audio",
    "/tracks/%2Fetc%2Fpasswd/audio",
    "/tracks//etc/passwd/audio",
    "/tracks/1%2F..%2F..%2Fetc%2Fpasswd/audio",
    "/tracks/1/audio/../../../etc/passwd",
    "/tracks/1/audio?path=/etc/passwd",
    "/static/../../../../etc/passwd",
    "/static/..%2F..%2F..%2F..%2Fetc%2Fpasswd",
])
def test_audio_path_traversal_never_reaches_the_filesystem(client, url):
    r = client.get(url)
    assert b"root:" not in r.content
    assert r.status_code in (404, 422) or r.content == client.get("/tracks/1/audio").content


def test_audio_of_a_track_swapped_for_a_link_is_refused(tmp_path):
    music, lib = build_library(tmp_path)
    song = music / "song2.wav"
    with TestClient(create_app(ServeConfig(lib, device="cpu"))) as c:
        tid = next(t["track_id"] for t in c.get("/tracks").json()["tracks"] if t["path"] == str(song))
        song.unlink()
        song.symlink_to("/etc/passwd")
        r = c.get(f"/tracks/{tid}/audio")
        assert r.status_code == 409 and b"root:" not in r.content
        assert r.json()["error"] == f"track {tid}: {song} changed since it was indexed; run musichash index on it"
        song.unlink()
        assert c.get(f"/tracks/{tid}/audio").status_code == 410


def test_metrics_in_prometheus_format(client, built, tmp_path):
    client.post("/search", files=upload(excerpt(tmp_path / "m.flac", 0, 0, 4)))
    text = client.get("/metrics").text
    assert 'musichash_requests_total{method="POST",route="/search",status="200"}' in text
    assert 'musichash_request_seconds_bucket{route="/search",le="+Inf"}' in text
    assert "# TYPE musichash_request_seconds histogram" in text and "\nmusichash_queue_depth 0\n" in text
    assert client.get("/metrics").headers["content-type"].startswith("text/plain; version=0.0.4")


# --------------------------------------------------------------- overload


def test_full_queue_is_503_with_retry_after_and_slow_is_504(built, tmp_path):
    _, lib = built
    clip = excerpt(tmp_path / "q.flac", 0, 0, 4)
    with TestClient(create_app(ServeConfig(lib, device="cpu", queue=0, timeout_s=0.3))) as c:
        gate = threading.Event()
        c.app.state.queue.submit(gate.wait)  # the model is busy, and the queue (bound 0) is full
        r = c.post("/search", files=upload(clip))
        assert r.status_code == 503 and int(r.headers["retry-after"]) >= 1
        assert r.json()["error"].startswith("the server is busy")
        text = c.get("/metrics").text
        assert "musichash_queue_rejected_total 1" in text
        assert 'musichash_requests_total{method="POST",route="/search",status="503"} 1' in text
        gate.set()
        time.sleep(0.1)
        c.app.state.queue.submit(lambda: time.sleep(1.0))
        with c.app.state.queue._lock:
            c.app.state.queue.bound = 5
        slow = c.post("/search", files=upload(clip))
        assert slow.status_code == 504 and "longer than 0.3 s" in slow.json()["error"]


def test_no_stack_trace_in_responses(built, tmp_path, monkeypatch):
    _, lib = built

    def boom(*a, **k):
        raise RuntimeError("secret detail at /home/user/file.py line 3")

    monkeypatch.setattr(Library, "search", boom)
    with TestClient(create_app(ServeConfig(lib, device="cpu")), raise_server_exceptions=False) as c:
        r = c.post("/search", files=upload(excerpt(tmp_path / "x.flac", 0, 0, 4)))
    assert r.status_code == 500
    assert r.json() == {"error": "internal error (RuntimeError); see the server's log"}


def test_cors_off_by_default(client, built):
    _, lib = built
    assert "access-control-allow-origin" not in client.get("/health", headers={"Origin": "http://evil.test"}).headers
    with TestClient(create_app(ServeConfig(lib, device="cpu", cors_origins=("http://app.test",)))) as c:
        assert c.get("/health", headers={"Origin": "http://app.test"}).headers["access-control-allow-origin"] == "http://app.test"


def test_page_and_openapi(client):
    page = client.get("/")
    assert page.status_code == 200 and '<script src="/static/app.js"' in page.text
    assert "http" not in page.text.replace("http-equiv", "")  # no CDN: nothing loaded from elsewhere
    assert client.get("/static/app.js").status_code == 200 and client.get("/static/style.css").status_code == 200
    paths = client.get("/openapi.json").json()["paths"]
    assert {"/search", "/tracks", "/tracks/{track_id}", "/tracks/{track_id}/similar", "/recommend", "/dedup", "/stats",
            "/health", "/metrics", "/tracks/{track_id}/audio", "/index", "/jobs/{job_id}"} <= set(paths)


# ------------------------------------------------------------------ writes


def test_writes_are_off_without_a_token(client):
    r = client.post("/index", json={"paths": ["/tmp"]})
    assert r.status_code == 403 and r.json()["error"].startswith("writes are off on this server")
    assert client.delete("/tracks/1").status_code == 403


def test_index_job_and_delete_with_the_token(tmp_path):
    music, lib = build_library(tmp_path)
    new = tmp_path / "new"
    new.mkdir()
    write_song(new / "song7.wav", seed=7, seconds=SONG_S)
    outside = tmp_path / "outside"
    outside.mkdir()
    (new / "escape").symlink_to(outside)
    config = ServeConfig(lib, device="cpu", admin_token=TOKEN, allow_roots=(new,))
    auth = {"Authorization": f"Bearer {TOKEN}"}
    with TestClient(create_app(config)) as c:
        assert c.post("/index", json={"paths": [str(new)]}).status_code == 401
        wrong = c.post("/index", json={"paths": [str(new)]}, headers={"Authorization": "Bearer nope"})
        assert wrong.status_code == 401 and wrong.json()["error"].startswith("missing or wrong admin token")
        for p in (str(music), f"{new}/../music", str(new / "escape"), "/etc"):
            r = c.post("/index", json={"paths": [p]}, headers=auth)
            assert r.status_code == 403 and r.json()["error"] == f"{p}: not under an --allow-root folder of this server; only those can be indexed"
        before = c.get("/health").json()
        r = c.post("/index", json={"paths": [str(new)]}, headers=auth)
        assert r.status_code == 202 and r.headers["location"] == f"/jobs/{r.json()['job_id']}"
        for _ in range(300):
            job = c.get(r.headers["location"]).json()
            if job["state"] in ("done", "failed"):
                break
            time.sleep(0.1)
        assert job["state"] == "done" and job["report"]["added"] == 1 and job["progress"] == 1.0, job
        # the read-only library sees the new track once the run's generation stamp is out
        assert c.get("/health").json()["tracks"] == before["tracks"] + 1
        [hit] = c.get("/tracks", params={"q": "song7"}).json()["tracks"]
        assert hit["path"] == str(new / "song7.wav") and hit["status"] == "ok"
        # the reader reopened on the new generation: a search is answered from the new index
        assert c.post("/search", files=upload(new / "song7.wav")).status_code == 200
        assert c.get("/jobs/99").status_code == 404
        assert c.delete(f"/tracks/{hit['track_id']}", headers={"Authorization": "Bearer nope"}).status_code == 401
        gone = c.delete(f"/tracks/{hit['track_id']}", headers=auth)
        assert gone.status_code == 200 and gone.json() == {"removed": [str(new / "song7.wav")]}
        assert c.get(f"/tracks/{hit['track_id']}").status_code == 404
        assert c.get("/health").json()["tracks"] == before["tracks"]


# --------------------------------------------------------------------- CLI


def test_serve_command_errors(tmp_path, monkeypatch):
    r = CliRunner().invoke(cli, ["serve", "--library", str(tmp_path / "none")])
    assert r.exit_code == 1
    assert r.stderr == (f"Error: {tmp_path / 'none'}: no library here; index some music first: "
                        f"musichash index PATH... --library {tmp_path / 'none'}\n")
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda m, *a: None if m == "uvicorn" else real(m, *a))
    r = CliRunner().invoke(cli, ["serve", "--library", str(tmp_path)])
    assert r.exit_code == 1 and r.stderr == "Error: musichash serve needs uvicorn: pip install 'musichash[serve]'\n"


def test_serve_command_runs_uvicorn_on_localhost(built, monkeypatch):
    _, lib = built
    seen = {}
    import uvicorn

    monkeypatch.setattr(uvicorn, "run", lambda app, host, port, log_level: seen.update(app=app, host=host, port=port))
    r = CliRunner().invoke(cli, ["serve", "--library", str(lib), "--port", "8123", "-q"])
    assert r.exit_code == 0, r.output
    assert seen["host"] == "127.0.0.1" and seen["port"] == 8123
    assert TestClient(seen["app"]).get("/health").json()["tracks"] == 4


def test_upload_is_checked_by_decoding_not_by_name(client, built, tmp_path):
    music, _ = built
    y = make_song(1, SONG_S)[2 * SR: 8 * SR]
    path = tmp_path / "really_flac.txt"
    sf.write(path, y, SR, format="FLAC")
    r = client.post("/search", files=upload(path))
    assert r.status_code == 200 and r.json()["results"][0]["path"] == str(music / "song1.wav")
    assert np.isclose(r.json()["duration_s"], 6.0)


# ------------------------------------------------------------------ explain (issue 25)


def test_explain_a_track_as_json_and_png(client, built):
    from musichash.features.audio import load_audio, log_mel
    from musichash.models.explain import explain, tag_target
    from musichash.models.taggers import load_tagger

    music, _ = built
    tid = ids(built)["song1.wav"]
    r = client.get(f"/tracks/{tid}/explain", params={"tag": "instrument_family=piano", "model": "fcn4_rendered", "seconds": 6})
    assert r.status_code == 200, r.text
    obj = r.json()
    assert (obj["track_id"], obj["model"], obj["explains"], list(obj["maps"])) == (tid, "fcn4_rendered", "instrument_family=piano", ["gradcam"])
    # the map the CLI's explain makes for the same part of the file
    ckpt = load_tagger("fcn4_rendered")
    mel = log_mel(load_audio(music / "song1.wav", duration_s=6))
    e = explain(ckpt.model, mel, tag_target(ckpt.names.index("instrument_family=piano"), True), "", ("gradcam",))
    assert np.allclose(np.asarray(obj["maps"]["gradcam"]), e.maps["gradcam"], atol=2e-4)
    r = client.get(f"/tracks/{tid}/explain", params={"tag": "composer=bach", "model": "fcn4_rendered", "seconds": 4,
                                                      "format": "png"})
    assert r.status_code == 200 and r.headers["content-type"] == "image/png" and r.content[:8] == b"\x89PNG\r\n\x1a\n"


def test_explain_errors(client, built):
    tid = ids(built)["song1.wav"]
    r = client.get(f"/tracks/{tid}/explain", params={"tag": "rock"})
    assert r.status_code == 400 and r.json()["error"].startswith(
        "this library's tags come from its code model's tag head, which has no map to show; name a tagger: model=one of ")
    r = client.get(f"/tracks/{tid}/explain", params={"tag": "rock", "model": "/etc/passwd"})
    assert r.status_code == 400 and r.json()["error"].startswith("model='/etc/passwd': not this library's tagger nor a shipped one")
    r = client.get(f"/tracks/{tid}/explain", params={"tag": "rock", "model": "fcn4_rendered"})
    assert r.status_code == 400 and r.json()["error"].startswith("tag='rock': fcn4 (fcn4_rendered) knows composer=bach, ")
    r = client.get("/tracks/999/explain", params={"tag": "rock", "model": "fcn4_rendered"})
    assert r.status_code == 404
    bad = ids(built)["bad.wav"]
    r = client.get(f"/tracks/{bad}/explain", params={"tag": "composer=bach", "model": "fcn4_rendered"})
    assert r.status_code == 409 and "has no audio to explain" in r.json()["error"]
