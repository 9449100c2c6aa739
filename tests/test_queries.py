"""benchmarks/queries.py: the threshold table of an evaluation run (the fit itself: test_calibrate.py)."""

import numpy as np

from benchmarks import queries


def _outcomes(rng, n, in_library, shift):
    return [queries.Outcome("t", 5.0, "clean", in_library, bool(rng.random() < 0.9), True, None,
                            float(rng.normal(shift, 0.1)), 0.0,
                            chroma=None if rng.random() < 0.1 else float(np.clip(rng.normal(shift, 0.2), -1, 1)))
            for _ in range(n)]


def test_threshold_data_reports_the_joint_fit():
    rng = np.random.default_rng(1)
    outs = _outcomes(rng, 40, True, 0.5) + _outcomes(rng, 40, False, 0.3)
    d = queries.threshold_data(outs, 0.4, 0.4)
    assert d["joint_all"]["tnr"] >= queries.JOINT_TNR == 0.975
    assert set(d["joint_half"]) == {"t", "tc", "tnr", "tpr"}
    table = queries.threshold_table(d, "model default", shipping=" (for shipping)")
    assert "| both fitted together to 97.5% on all of them (for shipping): " in table
    assert "queries (for shipping)" not in table  # the thresholds fitted one at a time are not the shipped ones
    no_chroma = [queries.Outcome(o.track, o.length, o.condition, o.in_library, o.top1, o.top10, None, o.score, 0.0)
                 for o in outs]
    assert "joint_all" not in queries.threshold_data(no_chroma, 0.4)


def _manifest(tmp_path, rows):
    import json

    import soundfile as sf

    for r in rows:
        (tmp_path / r["path"]).parent.mkdir(parents=True, exist_ok=True)
        t = np.arange(16000 * 4) / 16000
        sf.write(str(tmp_path / r["path"]), (0.1 * np.sin(2 * np.pi * (200 + 10 * len(r["id"])) * t)).astype("float32"),
                 16000)
    m = tmp_path / "manifest.jsonl"
    m.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return m


def test_a_package_split_holds_out_tracks_of_its_own_units_only(tmp_path):
    rows = [{"id": f"debian/{p}/t{i}", "path": f"debian/{p}/t{i}.wav", "source": "debian", "package": p}
            for p in ("pkg-a", "pkg-b") for i in range(3)]
    rows += [{"id": f"midi/bach-{i}", "path": f"midi/bach-{i}.wav", "source": "midi", "labels": {"composer": "bach"}}
             for i in range(2)]
    m = _manifest(tmp_path, rows)
    units = queries.splits_of(m)
    assert units["midi__bach-0.flac"] == "midi/bach" and units["debian__pkg-a__t0.flac"] == "pkg-a"
    lib, held = queries.cut_corpus(m, tmp_path / "cut", 1.0, 3, 0, held_from=["pkg-b", "midi/bach"])
    assert sorted(units[f.name] for f in held) == ["midi/bach", "midi/bach", "pkg-b"]  # alternating, pkg-a never
    assert len(lib) == 5 and not {f.name for f in lib} & {f.name for f in held}


def test_music_underneath_is_another_track(tmp_path, monkeypatch):
    """The ident set's music5dB mixes a track other than the clip's own under it, at 5 dB."""
    import soundfile as sf

    files = []
    for i, f0 in enumerate((220.0, 330.0)):
        files.append(tmp_path / f"t{i}.wav")
        sf.write(str(files[-1]), (0.2 * np.sin(2 * np.pi * f0 * np.arange(16000 * 20) / 16000)).astype("float32"), 16000)
    seen = []
    real = queries.augment.noise
    monkeypatch.setattr(queries.augment, "noise", lambda snr, kind="white", background=None:
                        seen.append((snr, kind, background)) or real(snr, kind, background))
    qs = queries.QuerySet("t", (3.0,), {"music5dB": []}, ())
    for _, _, _, f, y, _ in queries.draw_queries([files[0]], [], 3, 0, qs, others=files):
        assert f == files[0]
    assert [(snr, kind) for snr, kind, _ in seen] == [(5.0, "music")] * 3
    for _, _, bg in seen:  # the other track's 330 Hz, never the clip's own 220 Hz
        f = np.fft.rfftfreq(len(bg), 1 / 16000)[np.abs(np.fft.rfft(bg)).argmax()]
        assert abs(f - 330.0) < 1.0


def test_the_ident_set_and_the_frozen_full_set():
    qs = queries.SETS["ident"]
    assert qs.lengths == (2.0, 3.0, 5.0, 10.0) and len(qs.conditions) == 21
    assert tuple(queries.SETS["full"].conditions) == queries.FULL_CONDITIONS  # the full set's draws stay as they were
