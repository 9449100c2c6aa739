"""A trained tagger backing a library's tags (``musichash index --tagger``): results carry its labels."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from musichash.cli import cli
from musichash.features.audio import load_audio, log_mel
from musichash.indexer.tag_source import TaggerTags
from musichash.models.taggers import load_tagger
from tests.synth import write_song

TAGGER = "fcn4_rendered"


def run(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


@pytest.fixture(scope="module")
def music(tmp_path_factory):
    root = tmp_path_factory.mktemp("tagged")
    (root / "music").mkdir()
    for i in range(3):
        write_song(root / "music" / f"song{i}.wav", 40 + i, 12.0)
    return root


@pytest.fixture(scope="module")
def tagged(music):
    lib = music / "lib"
    r = run("index", music / "music" / "song0.wav", music / "music" / "song1.wav", "--library", lib,
            "--code-model", "unittest_hash", "--workers", "0", "--tagger", TAGGER, "--json")
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["tagger"] == TAGGER
    return lib


def _tags(rows):
    return {t["tag"] for row in rows for t in row["tags"]}


def test_results_show_the_taggers_tags(music, tagged):
    names = set(load_tagger(TAGGER).names)
    tracks = [json.loads(line) for line in run("tracks", "--library", tagged, "--json").stdout.splitlines()]
    assert len(tracks) == 2 and _tags(tracks) <= names and all(len(t["tags"]) == 5 for t in tracks)
    # the stored tags are the tagger's file-level mean over the track's windows, not the tag head's
    tagger = TaggerTags(TAGGER)
    expect = tagger(log_mel(load_audio(music / "music" / "song0.wav")))
    top = sorted(zip(tagger.names, expect), key=lambda t: -t[1])[:5]
    assert [(t["tag"], t["p"]) for t in tracks[0]["tags"]] == [(n, round(float(p), 4)) for n, p in top]
    r = run("search", music / "music" / "song1.wav", "--library", tagged, "--json")
    assert r.exit_code == 0 and _tags(json.loads(r.stdout)["results"]) <= names
    r = run("similar", music / "music" / "song0.wav", "--library", tagged, "--json")
    assert r.exit_code == 0 and _tags(json.loads(r.stdout)["results"]) <= names
    assert _tags(json.loads(r.stdout)["results"])
    r = run("similar", music / "music" / "song0.wav", "--library", tagged, "--tag", "instrument_family=piano",
            "--min-p", "0", "--json")
    assert r.exit_code == 0, r.output


def test_later_runs_keep_the_tagger(music, tagged):
    r = run("index", music / "music", "--library", tagged, "--workers", "0", "--json")
    assert r.exit_code == 0 and json.loads(r.stdout)["added"] == 1 and json.loads(r.stdout)["tagger"] == TAGGER
    tracks = [json.loads(line) for line in run("tracks", "--library", tagged, "--json").stdout.splitlines()]
    assert len(tracks) == 3 and _tags(tracks) <= set(load_tagger(TAGGER).names)


def test_the_default_stays_the_code_models_tag_head(music, tmp_path):
    lib = tmp_path / "plain"
    r = run("index", music / "music" / "song0.wav", "--library", lib, "--code-model", "unittest_hash", "--workers", "0", "--json")
    assert r.exit_code == 0 and json.loads(r.stdout)["tagger"] is None
    tracks = [json.loads(line) for line in run("tracks", "--library", lib, "--json").stdout.splitlines()]
    assert not _tags(tracks) & set(load_tagger(TAGGER).names) and len(tracks[0]["tags"]) == 5


def test_tagger_errors_are_one_line(music, tagged, tmp_path):
    song = music / "music" / "song0.wav"
    r = run("index", song, "--library", tagged, "--tagger", "crnn_parallel_rendered")
    assert r.exit_code == 1 and r.output == (
        f"Error: {tagged}: its tags come from the tagger {TAGGER}, not crnn_parallel_rendered; leave out --tagger to keep "
        f"using it, or give another --library for crnn_parallel_rendered\n")
    plain = tmp_path / "plain"
    assert run("index", song, "--library", plain, "--code-model", "unittest_hash", "--workers", "0", "-q").exit_code == 0
    r = run("index", song, "--library", plain, "--tagger", TAGGER)
    assert r.exit_code == 1 and r.output == (
        f"Error: {plain}: its 1 tracks were tagged by the code model's tag head; a library's tags come from one "
        f"network: index into a new --library to tag with {TAGGER}\n")
    missing = tmp_path / "nope.safetensors"
    r = run("index", song, "--library", tmp_path / "new", "--tagger", missing)
    assert r.exit_code == 1 and r.output.startswith(f"Error: {missing}: no tagger checkpoint here") and r.output.count("\n") == 1
    assert not (tmp_path / "new").exists()  # refused before the library was made


def test_reshard_keeps_the_libraries_tagger(music, tagged, tmp_path):
    """A library copied into shards carries its tagger, so its copied tags keep their labels."""
    r = run("reshard", tmp_path / "new", "--library", tagged, "--shards", "2", "--json")
    assert r.exit_code == 0, r.output
    old = [json.loads(line) for line in run("tracks", "--library", tagged, "--json").stdout.splitlines()]
    new = [json.loads(line) for line in run("tracks", "--library", tmp_path / "new", "--json").stdout.splitlines()]
    assert [(t["path"], t["tags"]) for t in new] == [(t["path"], t["tags"]) for t in old]
    from musichash.library import Library

    with Library.open(tmp_path / "new") as lib:
        assert lib.tagger == TAGGER
    stats = json.loads(run("stats", "--library", tmp_path / "new", "--json").stdout)
    assert (stats["tagger"], stats["shards"]) == (TAGGER, 2)
