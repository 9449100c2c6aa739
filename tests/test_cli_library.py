"""The library commands through CliRunner: exit codes, messages and JSON shapes (DESIGN.md)."""

import json
import re

import pytest
import soundfile as sf
from click.testing import CliRunner
from synth import SR, make_song, write_song

from musichash.cli import cli
from musichash.library import Library


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """A library of three songs and a bad file, indexed once for the read-only tests. Segments every 80
    frames, as when these tests' expectations were read off the tiny random model (at other hops its
    16-bit codes join or order the three songs otherwise)."""
    root = tmp_path_factory.mktemp("cli")
    music = root / "music"
    music.mkdir()
    for i in range(3):
        write_song(music / f"song{i}.wav", seed=i, seconds=10)
    (music / "bad.wav").write_bytes(b"RIFF" + bytes(40))
    lib = root / "lib"
    result = CliRunner().invoke(cli, ["index", str(music), "--library", str(lib), "--code-model", "unittest_hash", "--workers", "0",
                                      "--segment-hop-frames", "80"])
    assert result.exit_code == 0, result.output
    return music, lib, result


def run(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


def test_index_summary_and_skipped_files(built):
    music, lib, result = built
    assert re.fullmatch(
        rf"{re.escape(str(lib))}: 3 added, 0 updated, 0 unchanged, 0 moved, 0 exact copies, 0 pruned, 1 failed "
        r"\(0:30 of audio in [\d.]+ s, \d+x real time\)\n",
        result.stdout,
    )
    assert result.stderr.startswith(f"  skipped: {music / 'bad.wav'}: ")


def test_index_json_again_is_incremental(built):
    music, lib, _ = built
    result = run("index", music, "--library", lib, "--json", "--workers", "0")
    assert result.exit_code == 0
    obj = json.loads(result.stdout)
    assert (obj["added"], obj["updated"], obj["unchanged"]) == (0, 0, 3)
    assert [f["path"] for f in obj["failed"]] == [str(music / "bad.wav")]
    assert set(obj) == {"library", "added", "updated", "unchanged", "moved", "copies", "pruned", "failed", "audio_s", "seconds",
                        "damaged_redone", "tagger"}


def test_search_json_shape(built):
    music, lib, _ = built
    result = run("search", music / "song2.wav", "--library", lib, "--json", "-k", "2")
    assert result.exit_code == 0, result.output
    obj = json.loads(result.stdout)
    assert obj["query"] == str(music / "song2.wav") and obj["match"] is True
    top = obj["results"][0]
    assert {"path", "track_id", "score", "hamming", "offset_s", "tags"} <= set(top)
    assert top["path"] == str(music / "song2.wav") and top["hamming"] == 0
    assert all(set(t) == {"tag", "p"} for t in top["tags"])
    assert len(obj["results"]) <= 2


def test_search_text_output(built):
    music, lib, _ = built
    result = run("search", music / "song1.wav", "--library", lib)
    lines = result.stdout.splitlines()
    assert lines[0] == f"{music / 'song1.wav'}  (10.0 s): match"
    assert lines[1].startswith(f"  1. {music / 'song1.wav'}  at 0:00.0  score ")


def test_search_bad_clips_exit_1_and_others_still_answered(built, tmp_path):
    music, lib, _ = built
    short = tmp_path / "short.wav"
    sf.write(short, make_song(5, 1.5), SR)
    result = run("search", short, tmp_path / "gone.wav", music / "song0.wav", "--library", lib, "--json")
    assert result.exit_code == 1
    assert result.stderr.splitlines() == [
        f"Error: {tmp_path / 'gone.wav'}: no such file or folder; check the path",
        f"Error: {short}: clip is 1.5 s long; queries need at least 2 s",
        "Error: 2 of 3 clips could not be searched",
    ]
    rows = [json.loads(line) for line in result.stdout.splitlines()]
    assert [r["query"] for r in rows] == [str(short), str(music / "song0.wav")]
    assert rows[0]["error"] and rows[0]["results"] == [] and rows[1]["match"]


def test_missing_library(tmp_path):
    result = run("search", tmp_path, "--library", tmp_path / "nolib")
    assert result.exit_code == 1
    assert result.stderr == (
        f"Error: {tmp_path / 'nolib'}: no musichash library here; create one with "
        f"`musichash index --library {tmp_path / 'nolib'} PATH...`\n"
    )


def test_a_bad_precision_setting_is_one_line(built, monkeypatch):
    music, lib, _ = built
    monkeypatch.setenv("MUSICHASH_PRECISION", "fp8")
    result = run("search", music / "song0.wav", "--library", lib)
    assert result.exit_code == 1
    assert result.stderr == "Error: $MUSICHASH_PRECISION 'fp8' is not one of: auto, float32, bfloat16\n"
    monkeypatch.setenv("MUSICHASH_PRECISION", "float32")
    exact = run("search", music / "song0.wav", "--library", lib, "--json")
    assert exact.exit_code == 0 and json.loads(exact.stdout)["match"] is True


def test_second_writer_refused(built):
    music, lib, _ = built
    with Library.open(lib, write=True):
        result = run("index", music, "--library", lib, "--workers", "0")
    assert result.exit_code == 1
    assert result.stderr.startswith(f"Error: {lib / '.lock'}: the library is being written by another musichash process")


def test_code_model_mismatch(built):
    music, lib, _ = built
    result = run("index", music, "--library", lib, "--code-model", "interim_vgg_itq32")
    assert result.exit_code == 1
    assert result.stderr == (
        f"Error: {lib}: library holds codes of model unittest_hash (16 bits), not interim_vgg_itq32 (32 bits); "
        f"leave out --code-model to keep using unittest_hash, or give another --library for interim_vgg_itq32\n"
    )


def test_a_library_of_interim_codes_is_told_to_reindex(tmp_path, built):
    lib = tmp_path / "lib"
    Library.open(lib, write=True, code_model="interim_vgg_itq64").close()
    result = run("stats", "--library", lib, "--json")
    assert result.exit_code == 0 and json.loads(result.stdout)["code_model"] == "interim_vgg_itq64"
    assert result.stderr == (
        f"Note: {lib} holds interim codes (interim_vgg_itq64); the default is now CRNNH (crnnh64), better at finding "
        "clips: to use it, index the music again into a new --library\n"
    )
    assert run("stats", "--library", built[1]).stderr == ""  # any other code model: no note


def test_dedup_outputs(built):
    _, lib, _ = built
    result = run("dedup", "--library", lib, "--json")
    assert result.exit_code == 0 and json.loads(result.stdout) == {"groups": []}
    assert run("dedup", "--library", lib, "--csv").stdout == "group,track_id,path,start_s,end_s\n"
    assert run("dedup", "--library", lib).stdout == "no duplicates found\n"


def test_similar_json_and_unknown_tag(built):
    music, lib, _ = built
    result = run("similar", music / "song0.wav", "--library", lib, "--json", "-k", "5")
    assert result.exit_code == 0, result.output
    obj = json.loads(result.stdout)
    assert obj["seed"] == str(music / "song0.wav")
    assert sorted(r["path"] for r in obj["results"]) == [str(music / "song1.wav"), str(music / "song2.wav")]
    assert all({"path", "track_id", "score", "tags"} <= set(r) for r in obj["results"])
    bad = run("similar", music / "song0.wav", "--library", lib, "--tag", "polka")
    assert bad.exit_code == 1 and bad.stderr.startswith("Error: unknown tag 'polka'; the tags are: guitar, classical,")


def test_recommend_usage_and_all(built, tmp_path):
    music, lib, _ = built
    assert run("recommend", "--library", lib).exit_code == 2
    no_out = run("recommend", "--all", "--library", lib)
    assert no_out.exit_code == 2 and "--all writes one line per track: give --out FILE" in no_out.stderr
    out = tmp_path / "rec.jsonl"
    result = run("recommend", "--all", "--out", out, "--library", lib, "-k", "1")
    assert result.exit_code == 0 and result.stdout == f"{out}: candidates for 3 tracks\n"
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == 3 and all(len(r["results"]) == 1 and r["seed"] != r["results"][0]["path"] for r in rows)
    both = run("recommend", "--seeds", music / "song0.wav", "--seeds", music / "song1.wav", "--library", lib, "--json")
    assert [r["path"] for r in json.loads(both.stdout)["results"]] == [str(music / "song2.wav")]


def test_stats_json(built):
    _, lib, _ = built
    obj = json.loads(run("stats", "--library", lib, "--json").stdout)
    assert obj["tracks"] == 3 and obj["errors"] == 1 and obj["code_model"] == "unittest_hash" and obj["bits"] == 16
    assert obj["index_type"] == "flat"
    # the library's settings: the hop this fixture pins, one codes file, the code model's own tag head
    assert (obj["segment_hop_frames"], obj["shards"], obj["tagger"]) == (80, 1, None)
    # a 10 s track (626 frames): windows at 0, 80, ..., 400 (the tail at 432 is < hop/2 further),
    # so 6 segment codes plus one track code, 2 bytes each
    assert obj["code_bytes"] == 3 * 2 * (6 + 1)
    assert obj["code_bytes_per_hour"] == pytest.approx(42 / (30 / 3600), rel=1e-3)


def test_remove_and_reindex(tmp_path):
    music = tmp_path / "m"
    music.mkdir()
    for i in range(2):
        write_song(music / f"s{i}.wav", seed=i, seconds=6)
    lib = tmp_path / "lib"
    assert run("index", music, "--library", lib, "--code-model", "unittest_hash", "--workers", "0", "-q",
               "--segment-hop-frames", "80").exit_code == 0
    result = run("remove", music / "s0.wav", "--library", lib)
    assert result.exit_code == 0 and result.stdout == f"removed {music / 's0.wav'}\n"
    again = run("remove", music / "s0.wav", "--library", lib)
    assert again.exit_code == 1
    assert again.stderr == f"Error: {music / 's0.wav'}: no track of the library is at or under this path; see `musichash tracks`\n"
    result = run("reindex", "--library", lib, "--index-type", "hnsw", "--json")
    assert result.exit_code == 0
    assert json.loads(result.stdout) == {"library": str(lib), "index_type": "hnsw", "segments": 3, "tracks": 1, "device": "cpu"}


@pytest.mark.postgres
def test_library_on_postgresql(tmp_path, pg_url):
    """--db-url: metadata in PostgreSQL, codes in the folder; every command works the same."""
    music = tmp_path / "m"
    music.mkdir()
    for i in range(2):
        write_song(music / f"s{i}.wav", seed=i, seconds=6)
    lib = tmp_path / "lib"
    common = ["--library", lib, "--db-url", pg_url]
    assert run("index", music, *common, "--code-model", "unittest_hash", "--workers", "0", "-q").exit_code == 0
    assert not (lib / "library.db").exists() and (lib / "codes.h5").exists()
    obj = json.loads(run("search", music / "s1.wav", *common, "--json").stdout)
    assert obj["match"] and obj["results"][0]["path"] == str(music / "s1.wav")
    assert json.loads(run("stats", *common, "--json").stdout)["tracks"] == 2
    again = json.loads(run("index", music, *common, "--json", "--workers", "0").stdout)
    assert again["unchanged"] == 2
