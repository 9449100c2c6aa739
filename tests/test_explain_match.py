"""``explain FILE --match CLIP``: the evidence for a match lies in the part of FILE the clip was cut from.

FILE is song A (6 s) then song B (6 s), generated; the clip is B from its second second.
The library is crnnh64's (the shipped default), so the search finds the clip where it was cut.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import soundfile as sf
from click.testing import CliRunner

from musichash import Library
from musichash.cli import cli
from musichash.search.explain_match import explain_match
from tests.synth import SR, make_song

HALF_S = 6.0


@pytest.fixture(scope="module")
def matched(tmp_path_factory):
    root = tmp_path_factory.mktemp("match")
    music = root / "music"
    music.mkdir()
    b = make_song(2, HALF_S)
    sf.write(music / "ab.wav", np.concatenate([make_song(1, HALF_S), b]), SR)
    sf.write(music / "other.wav", make_song(3, 20.0), SR)
    sf.write(root / "clip.wav", b[SR:], SR)
    sf.write(root / "outside.wav", make_song(9, 5.0), SR)
    lib = root / "lib"
    with Library.open(lib, write=True, code_model="crnnh64", device="cpu") as library:
        library.index([music], workers=0)
    return root, music, lib


def run(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


def test_the_matched_half_holds_the_evidence(matched):
    root, music, lib = matched
    with Library.open(lib, device="cpu") as library:
        m = explain_match(library, music / "ab.wav", root / "clip.wav")
    assert m.path == str(music / "ab.wav") and abs(m.offset_s - (HALF_S + 1.0)) < 1.0 and m.start_s == 0.0
    e = m.explanation
    half = round(HALF_S / e.seconds_per_frame)
    # windows of A are not aligned with the clip: no target; those over B are
    assert [math.isnan(s) for s in e.window_scores] == [True, True, False, False, False]
    for method, v in e.maps.items():
        assert v.shape == e.mel.shape and v.max() == pytest.approx(1.0)
        assert v[half:].sum() / v.sum() > 0.95, method
        # within B, the evidence is spread over the clip's windows, not one spot
        assert (v[half:].mean(axis=1) > 0).mean() > 0.5, method


def test_cli_writes_the_png_and_the_raw_maps(matched, tmp_path):
    root, music, lib = matched
    png = tmp_path / "m.png"
    r = run("explain", music / "ab.wav", "--match", root / "clip.wav", "--library", lib, "--method", "gradcam",
            "--json", "-o", png, "--device", "cpu")
    assert r.exit_code == 0, r.output
    obj = json.loads(r.stdout)
    assert (obj["path"], obj["match"], obj["code_model"], obj["png"]) == (str(music / "ab.wav"), str(root / "clip.wav"), "crnnh64", str(png))
    assert list(obj["maps"]) == ["gradcam"] and obj["window_scores"][:2] == [None, None]
    v = np.asarray(obj["maps"]["gradcam"])
    assert v.shape == (obj["frames"], 96) and v[: v.shape[0] // 2].sum() < 0.05 * v.sum()
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_cli_explain_match_errors_are_one_line(matched, tmp_path):
    root, music, lib = matched
    clip, ab = root / "clip.wav", music / "ab.wav"
    r = run("explain", clip, "--match", clip, "--library", lib)
    assert r.exit_code == 1
    assert r.output == f"Error: {clip}: not a track of {lib}; index it first: musichash index {clip} --library {lib}\n"
    r = run("explain", ab, "--match", music / "other.wav", "--library", lib)
    assert r.exit_code == 1
    assert r.output.startswith(f"Error: {music / 'other.wav'}: matches {music / 'other.wav'} (score ")
    assert r.output.endswith(f"), not {ab}; give that file, or a clip of {ab}\n")
    r = run("explain", ab, "--match", root / "outside.wav", "--library", lib)
    assert r.exit_code == 1 and r.output.count("\n") == 1
    assert r.output.startswith(f"Error: {root / 'outside.wav'}: no match in {lib} (best ")
    assert r.output.endswith(f"says why); explain --match needs a clip the library finds in {ab}\n")
    r = run("explain", ab, "--match", tmp_path / "missing.wav", "--library", lib)
    assert r.exit_code == 1 and r.output.startswith(f"Error: {tmp_path / 'missing.wav'}: ") and r.output.count("\n") == 1
    r = run("explain", ab, "--library", lib)
    assert r.exit_code == 2 and r.output.endswith(
        "Error: give --tag TAG --model CHECKPOINT (a tagger's evidence) or --match CLIP --library DIR (why the library "
        "finds CLIP in FILE), one of the two\n")
    r = run("explain", ab, "--tag", "bell")
    assert r.exit_code == 2 and r.output.endswith(
        "Error: --tag needs --model: a checkpoint of `musichash train-tagger` or a shipped one (fcn4_rendered, ...)\n")


def test_a_library_of_interim_codes_is_refused(matched, tmp_path):
    root, music, _ = matched
    lib = tmp_path / "interim"
    assert run("index", music, "--library", lib, "--code-model", "unittest_hash", "--workers", "0", "-q").exit_code == 0
    r = run("explain", music / "ab.wav", "--match", root / "clip.wav", "--library", lib)
    assert r.exit_code == 1 and r.output == (
        f"Error: {lib}: its codes come from unittest_hash, a fitted linear binarizer, not CRNNH: there are no trained "
        f"relaxed codes to explain; explain --match needs a library of a CRNNH code model (crnnh64, the default)\n")


def test_the_service_explains_a_match_for_an_uploaded_clip(matched):
    """POST /tracks/{id}/explain-match (the page's 'Why this match?'): the CLI's maps for an upload."""
    pytest.importorskip("fastapi", reason="the serve extra is not installed")
    from fastapi.testclient import TestClient

    from musichash.service import ServeConfig, create_app

    root, music, lib = matched
    with Library.open(lib) as library:
        ab = library.store.find_by_path(str(music / "ab.wav")).id
        other = library.store.find_by_path(str(music / "other.wav")).id
    with TestClient(create_app(ServeConfig(lib, device="cpu"))) as client:
        def post(track, clip, **form):
            return client.post(f"/tracks/{track}/explain-match", files=[("files", (clip.name, clip.read_bytes(), "audio/wav"))],
                               data=form)

        r = post(ab, root / "clip.wav")
        assert r.status_code == 200, r.text
        obj = r.json()
        assert (obj["path"], obj["match"], list(obj["maps"])) == (str(music / "ab.wav"), "clip.wav", ["gradcam"])
        assert obj["window_scores"][:2] == [None, None]  # song A's windows: not aligned with the clip
        v = np.asarray(obj["maps"]["gradcam"])
        assert v[: v.shape[0] // 2].sum() < 0.05 * v.sum()
        png = post(ab, root / "clip.wav", format="png")
        assert png.status_code == 200 and png.content[:8] == b"\x89PNG\r\n\x1a\n"
        wrong = post(other, root / "clip.wav")
        assert wrong.status_code == 400 and wrong.json()["error"].startswith(
            f"clip.wav: matches {music / 'ab.wav'} (score ")
        assert post(10_000, root / "clip.wav").status_code == 404
