"""The installed distribution carries the weights, vocabularies and licence."""

import importlib.metadata

import pytest

import musichash


def _installed_files():
    try:
        dist = importlib.metadata.distribution("musichash")
    except importlib.metadata.PackageNotFoundError:
        pytest.skip("musichash is not installed (run from a source tree without pip install)")
    files = [str(f) for f in dist.files or []]
    if not any(f.startswith("musichash/") for f in files):
        pytest.skip("editable install: package files are not listed in the distribution")
    return files


def test_wheel_ships_weights_and_licence():
    files = _installed_files()
    for name in ["MTT_musicnn", "MTT_vgg", "MSD_musicnn", "MSD_vgg"]:
        assert f"musichash/models/weights/{name}.safetensors" in files
    for extra in ["PROVENANCE.json", "LICENSE.musicnn", "tags.json"]:
        assert f"musichash/models/weights/{extra}" in files


def test_console_script_is_declared():
    _installed_files()
    eps = importlib.metadata.entry_points(group="console_scripts")
    assert any(ep.name == "musichash" and ep.value == "musichash.cli:cli" for ep in eps)


def test_version_matches_metadata():
    try:
        assert importlib.metadata.version("musichash") == musichash.__version__
    except importlib.metadata.PackageNotFoundError:
        pytest.skip("musichash is not installed")


@pytest.mark.parametrize("given, seen", [(None, musichash.GOMP_SPINCOUNT), ("5000", "5000")])
def test_import_caps_openmp_spinning_unless_the_user_chose(given, seen):
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k != "GOMP_SPINCOUNT"}
    if given is not None:
        env["GOMP_SPINCOUNT"] = given
    code = "import os, musichash, torch, faiss; print(os.environ['GOMP_SPINCOUNT'])"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == seen


def test_training_dependencies_are_an_extra():
    """pip install musichash (index and search) leaves pedalboard and scipy to the `train` extra."""
    try:
        requires = importlib.metadata.requires("musichash") or []
    except importlib.metadata.PackageNotFoundError:
        pytest.skip("musichash is not installed")
    plain = [r for r in requires if "extra ==" not in r]
    assert not any(r.startswith(("pedalboard", "scipy")) for r in plain)
    train = [r.split(";")[0].strip() for r in requires if 'extra == "train"' in r]
    assert sorted(train) == ["pedalboard>=0.9", "scipy>=1.10"]


def test_train_says_in_one_line_when_its_extra_is_missing(monkeypatch, tmp_path):
    import importlib.util

    from click.testing import CliRunner

    from musichash.cli import cli

    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "pedalboard" else find_spec(name, *a))
    r = CliRunner().invoke(cli, ["train", str(tmp_path), "--out", str(tmp_path / "run")])
    assert r.exit_code == 1 and r.stderr == "Error: musichash train needs pedalboard: pip install 'musichash[train]'\n"
