import json

import click
import numpy as np
import pytest
import soundfile as sf
from click.testing import CliRunner

from musichash import __version__
from musichash.cli import cli
from musichash.models import tag_names


@pytest.fixture
def runner():
    return CliRunner()


@pytest.fixture
def song(tmp_path):
    """4 s of a seeded chord with noise, 22.05 kHz stereo."""
    rng = np.random.default_rng(3)
    t = np.arange(4 * 22050) / 22050
    mono = sum(0.2 * np.sin(2 * np.pi * f * t) for f in (220, 277, 330)) + 0.02 * rng.standard_normal(t.size)
    path = tmp_path / "song.wav"
    sf.write(path, np.stack([mono, mono], axis=1).astype(np.float32), 22050)
    return path


def test_every_command_has_help(runner):
    for name, command in cli.commands.items():
        assert command.help, name
        result = runner.invoke(cli, [name, "-h"])
        assert result.exit_code == 0, name
        assert "Usage: cli " + name in result.output or f"Usage: musichash {name}" in result.output


def test_version(runner):
    result = runner.invoke(cli, ["--version"])
    assert result.output == f"musichash, version {__version__}\n"


def test_models_json(runner):
    result = runner.invoke(cli, ["models", "--json"])
    assert result.exit_code == 0
    rows = json.loads(result.output)["models"]
    taggers = ["MTT_musicnn", "MTT_vgg", "MSD_musicnn", "MSD_vgg"]
    codes = [f"interim_vgg_itq{b}" for b in (16, 32, 48, 64, 128)] + [f"crnnh{b}" for b in (16, 32, 48, 64, 128)]
    assert [r["name"] for r in rows] == taggers + codes
    # one default per kind: the tagger for `tag`, the code model for new libraries
    assert [r["name"] for r in rows if r["default"]] == ["MTT_musicnn", "crnnh64"]
    assert all(r["kind"] == "tagger" and r["bits"] is None for r in rows[:4])
    assert [(r["kind"], r["bits"]) for r in rows[4:]] == [("hash", b) for b in (16, 32, 48, 64, 128)] * 2


def test_models_table_marks_the_default(runner):
    lines = runner.invoke(cli, ["models"]).output.splitlines()
    assert lines[0].startswith("* MTT_musicnn ")
    assert lines[12].startswith("* crnnh64 ") and "hash" in lines[12] and lines[7].startswith("  interim_vgg_itq64 ")
    assert len(lines) == 14 and lines[-1].startswith("  crnnh128 ")
    assert len(runner.invoke(cli, ["models", "--all"]).output.splitlines()) == 18


def test_tag_json_lines(runner, song):
    result = runner.invoke(cli, ["tag", str(song), str(song), "--model", "unittest_vgg", "--json", "-n", "3"])
    assert result.exit_code == 0, result.output
    objs = [json.loads(line) for line in result.output.splitlines()]
    assert len(objs) == 2
    for obj in objs:
        assert obj["path"] == str(song)
        assert len(obj["tags"]) == 3
        assert all(t["tag"] in tag_names("MTT") and 0 <= t["p"] <= 1 for t in obj["tags"])
        ps = [t["p"] for t in obj["tags"]]
        assert ps == sorted(ps, reverse=True)


def test_tag_human_output(runner, song):
    result = runner.invoke(cli, ["tag", str(song), "--model", "unittest_musicnn", "-n", "2"])
    assert result.exit_code == 0
    lines = result.output.splitlines()
    assert lines[0] == f"{song}  (0:04, 1 windows)"
    assert len(lines) == 3 and all(line.startswith("  ") for line in lines[1:])


def test_bad_files_get_one_line_errors_and_the_rest_are_tagged(runner, song, tmp_path):
    empty = tmp_path / "empty.mp3"
    empty.touch()
    garbage = tmp_path / "garbage.wav"
    garbage.write_bytes(b"RIFF\x00\x01garbage" * 10)
    missing = tmp_path / "missing.flac"
    result = runner.invoke(cli, ["tag", str(missing), str(song), str(empty), str(garbage), "--model", "unittest_vgg"])
    assert result.exit_code == 1
    errors = [line for line in result.stderr.splitlines() if line.startswith("Error: ")]
    assert len(errors) == 4
    assert errors[0] == f"Error: {missing}: no such file; check the path"
    assert errors[1].startswith(f"Error: {empty}: ")
    assert errors[2].startswith(f"Error: {garbage}: ")
    assert errors[3] == "Error: 3 of 4 files could not be tagged"
    assert "Traceback" not in result.output
    assert result.stdout.startswith(f"{song}  (0:04, 1 windows)")


def test_bad_file_in_json_mode_is_an_object_with_the_error(runner, tmp_path):
    text = tmp_path / "notes.txt"
    text.write_text("not music")
    result = runner.invoke(cli, ["tag", str(text), "--json", "--model", "unittest_vgg"])
    assert result.exit_code == 1
    obj = json.loads(result.stdout)
    assert obj["path"] == str(text) and obj["tags"] == [] and obj["error"]


def test_unknown_model(runner, song):
    result = runner.invoke(cli, ["tag", str(song), "--model", "nope"])
    assert result.exit_code == 1
    assert result.stderr == (
        "Error: unknown model 'nope'; choose one of: MTT_musicnn, MTT_vgg, MSD_musicnn, MSD_vgg, "
        "interim_vgg_itq16, interim_vgg_itq32, interim_vgg_itq48, interim_vgg_itq64, interim_vgg_itq128, "
        "crnnh16, crnnh32, crnnh48, crnnh64, crnnh128 (see `musichash models`)\n"
    )


def test_cuda_without_gpu_is_a_clear_error(runner, song, monkeypatch):
    monkeypatch.setattr("torch.cuda.is_available", lambda: False)
    result = runner.invoke(cli, ["tag", str(song), "--device", "cuda"])
    assert result.exit_code == 1
    assert result.stderr == "Error: device 'cuda' asked for, but no CUDA GPU is usable here; use --device cpu\n"


def test_convert_weights_rejects_a_folder_without_musicnn(runner, tmp_path):
    result = runner.invoke(cli, ["convert-weights", str(tmp_path), "--out", str(tmp_path / "out")])
    assert result.exit_code == 1
    assert result.stderr.startswith(f"Error: {tmp_path}: no musicnn/ folder inside")


def test_tag_needs_a_file(runner):
    result = runner.invoke(cli, ["tag"])
    assert result.exit_code == 2
    assert "Missing argument 'FILES...'" in result.stderr


def test_cli_is_a_click_group():
    assert isinstance(cli, click.Group)
