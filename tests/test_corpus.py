"""benchmarks/corpus.py: deny list, manifest round trip, idempotent collection (no apt, no rendering)."""

from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from benchmarks import corpus


@pytest.mark.parametrize(
    "name",
    ["wesnoth", "wesnoth-music", "wesnoth-1.16-music", "wesnoth-1.18-data", "Wesnoth-Music",
     "hedgewars-data", "hedgewars", "freedroidrpg-data", "freedroidrpg"],
)
def test_deny_list_refuses(name):
    with pytest.raises(corpus.ForbiddenPackageError, match="refused"):
        corpus.check_package(name)


def test_deny_list_wins_even_if_allowed(monkeypatch):
    monkeypatch.setattr(corpus, "ALLOWED_PACKAGES", corpus.ALLOWED_PACKAGES + ("wesnoth-1.16-music",))
    with pytest.raises(corpus.ForbiddenPackageError):
        corpus.check_package("wesnoth-1.16-music")


def test_cli_refuses_denied_package_before_anything(tmp_path, capsys):
    assert corpus.main(["--out", str(tmp_path / "c"), "--packages", "hedgewars-data", "--install"]) == 2
    assert "hedgewars-data: refused" in capsys.readouterr().err
    assert not (tmp_path / "c").exists()


def test_allowed_and_unknown_packages():
    for name in corpus.ALLOWED_PACKAGES:
        corpus.check_package(name)
    with pytest.raises(corpus.CorpusError, match="not in ALLOWED_PACKAGES"):
        corpus.check_package("some-other-music")
    assert not any(bad in name for name in corpus.ALLOWED_PACKAGES for bad in corpus.DENIED_NAMES)


def _tracks():
    return [
        corpus.Track(id="debian/p/a", path="debian/p/a.ogg", source="debian", labels={"soundtrack": "p"},
                     duration_s=12.5, sha256="ab" * 32, package="p", version="1.0", licence="GPL-2+"),
        corpus.Track(id="midi/bwv1-organ-20s", path="midi/bwv1-organ-20s.flac", source="midi",
                     labels={"composer": "bach", "instrument_family": "organ"}, duration_s=20.0,
                     sha256="cd" * 32, score="music21:bach/bwv1.6.mxl", extra={"seed": "0"}),
    ]


def test_manifest_round_trip(tmp_path):
    path = tmp_path / "manifest.jsonl"
    tracks = _tracks()
    corpus.write_manifest(path, tracks)
    lines = path.read_text().splitlines()
    assert len(lines) == 2
    assert '"package"' in lines[0] and '"score"' not in lines[0]  # absent fields are left out
    assert corpus.read_manifest(path) == tracks
    assert corpus.read_manifest(tmp_path / "missing.jsonl") == []


def test_summary_table():
    assert corpus.summary(_tracks()) == (
        "| source | tracks | hours |\n|---|---:|---:|\n"
        "| debian | 1 | 0.00 |\n| midi | 1 | 0.01 |\n| total | 2 | 0.01 |"
    )


def test_plan_midi_is_seeded_balanced_and_prefix_stable():
    pools = {"bach": [Path(f"bwv{i}.mxl") for i in range(50)], "josquin": [Path("a.mxl"), Path("b.mxl")]}
    plan = corpus.plan_midi(12, 3, pools)
    assert plan == corpus.plan_midi(12, 3, pools)
    assert plan[:4] == corpus.plan_midi(4, 3, pools)  # a quick corpus is a prefix of a big one
    assert [c for c, _, _ in plan[:4]] == ["bach", "josquin", "bach", "josquin"]
    assert [c for c, _, _ in plan[4:]] == ["bach"] * 8  # josquin ran out
    assert len({p for _, p, _ in plan}) == 12
    families = [f for _, _, f in plan]
    assert sorted(families) == sorted(list(corpus.INSTRUMENTS) * 2)  # each family twice in 12
    assert corpus.plan_midi(100, 3, pools)[-1][0] == "bach" and len(corpus.plan_midi(100, 3, pools)) == 52


@pytest.fixture
def fake_package(tmp_path, monkeypatch):
    """A 'package' holding one 12 s seeded-noise WAV and a 1 s sound effect."""
    src = tmp_path / "pkg"
    src.mkdir()
    rng = np.random.default_rng(1338)
    sf.write(src / "song.wav", 0.1 * rng.standard_normal((12 * 8000, 2)).astype("float32"), 8000)
    sf.write(src / "beep.wav", 0.1 * rng.standard_normal(8000).astype("float32"), 8000)
    pkg = "planetblupi-music-ogg"
    monkeypatch.setattr(corpus, "list_package_files", lambda p: sorted(src.iterdir()) if p == pkg else [])
    monkeypatch.setattr(corpus, "package_version", lambda p: "1.0-1" if p == pkg else None)
    monkeypatch.setattr(corpus, "licence_note", lambda p: "GPL-3+")
    return pkg


def test_collect_is_idempotent(tmp_path, fake_package):
    out = tmp_path / "out"
    logs: list[str] = []
    build = dict(midi=0, seconds=20.0, copy=True, log=logs.append)
    first = corpus.build(out, [fake_package], **build)
    assert [t.path for t in first] == [f"debian/{fake_package}/song.wav"]  # the beep is too short
    t = first[0]
    assert t.labels == {"soundtrack": fake_package} and t.version == "1.0-1" and t.licence == "GPL-3+"
    assert t.duration_s == pytest.approx(12.0)
    assert t.sha256 == corpus.sha256(out / t.path)
    assert corpus.read_manifest(out / "manifest.jsonl") == first
    assert logs == [f"added    {t.path}"]

    logs.clear()
    assert corpus.build(out, [fake_package], **build) == first
    assert logs == [f"present  {t.path}"]

    (out / t.path).write_bytes(b"not the same file")  # a changed file is replaced
    logs.clear()
    assert corpus.build(out, [fake_package], **build) == first
    assert logs == [f"added    {t.path}"]


def test_missing_package_warns(tmp_path, fake_package):
    logs: list[str] = []
    tracks = corpus.build(tmp_path / "out", ["fb-music-high"], midi=0, seconds=20.0, log=logs.append)
    assert tracks == []
    assert logs == [
        "warning: fb-music-high is not installed; skipped (add --install, or apt-get install fb-music-high)"
    ]
