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
