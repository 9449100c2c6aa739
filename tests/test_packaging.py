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
