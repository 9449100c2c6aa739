"""train-tagger, evaluate-tagger and explain from the command line, on generated instruments in class folders."""

from __future__ import annotations

import json

import numpy as np
import pytest
import soundfile as sf
from click.testing import CliRunner

from musichash.cli import cli
from tests.synth_labels import INSTRUMENTS, SR, clip


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A classes folder of 18 clips (6 per instrument) and a tiny FCN-4 trained on it from the CLI."""
    root = tmp_path_factory.mktemp("instruments")
    for c, name in enumerate(INSTRUMENTS):
        (root / name).mkdir()
        for i in range(6):
            sf.write(root / name / f"{i}.wav", clip((name,), 3.2, 100 * c + i), SR)
    out = root.parent / "fcn.safetensors"
    result = CliRunner().invoke(cli, ["train-tagger", str(root), "--arch", "unittest_fcn4", "-o", str(out), "--epochs", "20",
                                      "--batch", "12", "--lr", "0.01", "--json"])
    assert result.exit_code == 0, result.output
    return root, out, json.loads(result.output)


def test_train_tagger_writes_a_checkpoint_with_its_config_and_provenance(trained):
    root, out, report = trained
    assert (report["arch"], report["epochs"], report["resumed_from"], report["windows"]) == ("unittest_fcn4", 20, 0, 14)
    meta = json.loads(out.with_suffix(".json").read_text())
    assert meta["names"] == sorted(INSTRUMENTS) and meta["multilabel"] is False and meta["arch"] == "fcn"
    assert meta["provenance"]["data"] == str(root.resolve())
    assert meta["provenance"]["split_files"] == {"train": 12, "valid": 2, "test": 4}
    assert out.with_suffix(".state.safetensors").is_file()


def test_evaluate_tagger_scores_the_held_out_files_and_compares_two_checkpoints(trained):
    root, out, _ = trained
    result = CliRunner().invoke(cli, ["evaluate-tagger", str(out), str(root), "--json", "--against", str(out), "--resamples", "20"])
    assert result.exit_code == 0, result.output
    r = json.loads(result.output)
    assert r["files"] == 4 and r["accuracy"] >= 0.75
    assert sum(map(sum, r["confusion"])) == 4
    assert r["comparison"]["diff"] == 0.0 and r["comparison"]["metric"] == "accuracy"
    text = CliRunner().invoke(cli, ["evaluate-tagger", str(out), str(root)])
    assert text.exit_code == 0 and "test files, accuracy" in text.output and "true \\ guessed" in text.output


def test_train_tagger_resumes_from_its_checkpoint(trained, tmp_path):
    root, out, _ = trained
    copy = tmp_path / "fcn.safetensors"
    for suffix in (".safetensors", ".json", ".state.safetensors"):
        copy.with_suffix(suffix).write_bytes(out.with_suffix(suffix).read_bytes())
    result = CliRunner().invoke(cli, ["train-tagger", str(root), "--arch", "unittest_fcn4", "-o", str(copy), "--epochs", "21",
                                      "--batch", "12", "--lr", "0.01", "--json"])
    assert result.exit_code == 0, result.output
    r = json.loads(result.output)
    assert r["resumed_from"] == 20 and len(r["history"]) == 21


def test_explain_writes_a_png_and_the_raw_maps(trained, tmp_path):
    _, out, _ = trained
    wav = tmp_path / "bell.wav"
    sf.write(wav, clip(("bell",), 4.0, 7), SR)
    png = tmp_path / "bell.png"
    result = CliRunner().invoke(cli, ["explain", str(wav), "--tag", "bell", "--model", str(out), "--json", "-o", str(png)])
    assert result.exit_code == 0, result.output
    r = json.loads(result.output)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert set(r["maps"]) == {"gradcam", "occlusion"} and r["frames"] == 251 and r["bands"] == 96
    grid = np.asarray(r["maps"]["gradcam"])
    assert grid.shape == (251, 96) and grid.min() >= 0 and grid.max() == 1.0


def test_cli_tagger_errors_are_one_line(trained, tmp_path):
    root, out, _ = trained
    r = CliRunner().invoke(cli, ["train-tagger", str(root), "--arch", "fcn9"])
    assert r.exit_code == 1
    assert r.output.startswith("Error: unknown architecture 'fcn9'; choose one of: fcn3, fcn4") and r.output.count("\n") == 1
    wav = tmp_path / "x.wav"
    sf.write(wav, clip(("drums",), 2.0, 1), SR)
    r = CliRunner().invoke(cli, ["explain", str(wav), "--tag", "guitar", "--model", str(out)])
    assert r.exit_code == 2 and "Error: --tag 'guitar': " in r.output and "knows bell, drums, organ" in r.output
    r = CliRunner().invoke(cli, ["explain", str(tmp_path / "missing.wav"), "--tag", "bell", "--model", str(out)])
    assert r.exit_code == 1 and r.output.startswith("Error: ") and "missing.wav" in r.output
