"""benchmarks/compare_runs.py: which figures of two runs agree within noise, and the exit code."""

import json
from pathlib import Path

import pytest

from benchmarks import compare_runs as compare


def _run(folder: Path, *, top1: float, latency: float, gbps: float) -> Path:
    folder.mkdir()
    (folder / "run.json").write_text(json.dumps({"meta": {"commit": "abc1234", "date": "2026-11-21 10:00 UTC"}}))
    engine = {
        "runs": {"10": {"summary": {"by_length": [{"length": 5.0, "top1": top1, "top10": 1.0}]},
                        "threshold": {"fixed_all": {"tnr": 0.8, "tpr": 0.3}, "all": {"tpr": 0.02}}}},
        "dedup": {"f1": 0.9, "sweep": [{"f1": 0.9}, {"f1": 0.95}]},
        "library": {"code_bytes_per_hour": 22000.0},
        "indexing": {"x_real_time": 46.0},
        "latency_ms": {"p50": latency, "p99": 2 * latency},
        "peak_rss_mb": 1400.0,
    }
    (folder / "engine.json").write_text(json.dumps(engine))
    (folder / "scale.json").write_text(json.dumps({"meta": {"copy_gbps": gbps}, "results": []}))
    return folder


def test_figures_pair_up_and_classify(tmp_path):
    a = _run(tmp_path / "a", top1=0.85, latency=100.0, gbps=10.0)
    b = _run(tmp_path / "b", top1=0.85, latency=110.0, gbps=10.0)
    figs = {f.name: f for f in compare.figures(a, b)}
    assert figs["top-1, 5 s"].kind == compare.QUALITY and figs["top-1, 5 s"].diff() == 0.0
    assert figs["warm 10 s query p50 ms"].kind == compare.COST
    assert figs["warm 10 s query p50 ms"].diff() == pytest.approx(0.10)
    assert figs["dedup best F1 of the sweep"].a == 0.95
    assert all(f.within(0.005, 0.20) for f in figs.values())
    assert compare.main([str(a), str(b), "--out", str(tmp_path / "r.md")]) == 0
    text = (tmp_path / "r.md").read_text()
    assert "**13 of 13 figures are within noise**" in text
    assert "| engine | top-1, 5 s | quality | 0.85 | 0.85 | +0.0000 | yes |" in text


@pytest.mark.parametrize("b_args, bad", [
    ({"top1": 0.80, "latency": 100.0, "gbps": 10.0}, ["top-1, 5 s"]),  # 5 points off: not noise
    ({"top1": 0.85, "latency": 130.0, "gbps": 10.0},  # 30 % slower
     ["warm 10 s query p50 ms", "warm 10 s query p99 ms"]),
])
def test_a_figure_outside_noise_fails_the_run(tmp_path, b_args, bad):
    a = _run(tmp_path / "a", top1=0.85, latency=100.0, gbps=10.0)
    b = _run(tmp_path / "b", **b_args)
    out = tmp_path / "r.json"
    assert compare.main([str(a), str(b), "--out", str(tmp_path / "r.md"), "--json", str(out)]) == 1
    assert [f["name"] for f in json.loads(out.read_text()) if not f["within"]] == bad


def test_a_figure_missing_from_one_run_is_not_within_noise(tmp_path):
    a = _run(tmp_path / "a", top1=0.85, latency=100.0, gbps=10.0)
    b = _run(tmp_path / "b", top1=0.85, latency=100.0, gbps=10.0)
    (b / "scale.json").unlink()
    figs = {f.name: f for f in compare.figures(a, b)}
    assert figs["numpy copy GB/s"].b is None and not figs["numpy copy GB/s"].within(0.005, 0.20)


def test_a_folder_without_run_json_is_refused(tmp_path, capsys):
    a = _run(tmp_path / "a", top1=0.85, latency=100.0, gbps=10.0)
    with pytest.raises(SystemExit) as e:
        compare.main([str(a), str(tmp_path)])
    assert e.value.code == 2
    assert f"{tmp_path}: no run.json" in capsys.readouterr().err


def _scale_run(folder: Path, core_rounds: list[float]) -> Path:
    folder.mkdir()
    (folder / "run.json").write_text(json.dumps({"meta": {"commit": "abc1234", "date": "2026-11-21 10:00 UTC"}}))
    row = {"n_tracks": 1_000_000, "core": {"single_p50_ms": sorted(core_rounds)[len(core_rounds) // 2],
                                           "single_rounds_ms": core_rounds, "batch2_us_per_q": 5.0}, "runs": []}
    (folder / "scale.json").write_text(json.dumps({"meta": {"copy_gbps": 10.0}, "results": [row]}))
    return folder


@pytest.mark.parametrize("b_rounds, within", [
    ([1.1, 2.2, 2.3], True),   # medians 2.3x apart, but A's rounds saw B's speed: the bimodal machine
    ([2.2, 2.3, 2.4], False),  # every round of B slower than every round of A: a real change
])
def test_latencies_timed_in_rounds_agree_when_their_ranges_overlap(tmp_path, b_rounds, within):
    a = _scale_run(tmp_path / "a", [0.9, 1.0, 2.1])
    b = _scale_run(tmp_path / "b", b_rounds)
    [core] = [f for f in compare.figures(a, b) if f.name == "1,000,000 tracks: search core p50 ms"]
    assert core.a_range == (0.9, 2.1) and core.b_range == (min(b_rounds), max(b_rounds))
    assert abs(core.diff()) > 0.20 and core.within(0.005, 0.20) is within
    compare.main([str(a), str(b), "--out", str(tmp_path / "r.md")])
    assert f"| 1 (0.9–2.1) | {sorted(b_rounds)[1]:.4g} ({min(b_rounds):.4g}–{max(b_rounds):.4g}) |" in (tmp_path / "r.md").read_text()


def test_steps_limit_the_comparison_to_a_partial_rerun(tmp_path):
    a = _run(tmp_path / "a", top1=0.85, latency=100.0, gbps=10.0)
    b = _scale_run(tmp_path / "b", [1.0])  # only the scale step was run again
    (b / "scale.json").write_text((a / "scale.json").read_text())
    assert compare.main([str(a), str(b), "--out", str(tmp_path / "r.md")]) == 1  # the engine's figures are missing
    assert compare.main([str(a), str(b), "--out", str(tmp_path / "r.md"), "--steps", "scale"]) == 0
    assert "**1 of 1 figures are within noise**" in (tmp_path / "r.md").read_text()


def test_the_interim_step_compares_quality_only(tmp_path):
    a = _run(tmp_path / "a", top1=0.85, latency=100.0, gbps=10.0)
    engine = json.loads((a / "engine.json").read_text())
    interim = {**engine, "latency_ms": None}
    del interim["dedup"]
    (a / "interim.json").write_text(json.dumps(interim))
    names = {f.name for f in compare.figures(a, a, ("interim",))}
    assert names == {"top-1, 5 s", "top-10, 5 s", "out-of-library rejected at the shipped threshold",
                     "in-library matched at the shipped threshold", "in-library matched at 95 % rejection",
                     "code bytes per hour"}


def test_run_all_scores_the_crnnh_targets():
    """run_all's CRNNH table: above LSH and ITQ at every size evaluated, within 5 % of float, and the interim codes."""
    from benchmarks import run_all  # imports every step's module, musichash and torch with them

    def method(name, bits, v):
        return {"method": name, "bits": bits, "map_at_r": v}

    report = {"methods": [method("float", None, 0.58), method("lsh-16", 16, 0.40), method("itq-16", 16, 0.57),
                          method("crnnh-16", 16, 0.59), method("lsh-64", 64, 0.52), method("itq-64", 64, 0.58),
                          method("crnnh-64", 64, 0.56)]}

    def engine(top1_10, top1_5):
        return {"runs": {"10": {"summary": {"by_length": [{"length": 10.0, "top1": top1_10},
                                                          {"length": 5.0, "top1": top1_5}]}}}}

    rows = run_all.crnnh_targets({"similarity": {"report": report}, "engine": engine(0.93, 0.87),
                                  "interim": engine(0.82, 0.87)}).splitlines()
    assert rows[2] == ("| mAP@R above LSH and ITQ at every bit count | 16 bits: 0.590 against LSH 0.400, ITQ 0.570; "
                       "64 bits: 0.560 against LSH 0.520, ITQ 0.580 | no |")
    assert rows[3] == "| mAP@R within 5 % of float at 64 bits | 0.560 against 0.580 (96.6%) | yes |"
    assert rows[4] == ("| engine top-1 on degraded 10 s and 5 s excerpts at least the interim codes' | "
                       "10 s: 93.0 % against 82.0 %, 5 s: 87.0 % against 87.0 % | yes |")
    report["methods"][-1]["map_at_r"] = 0.60
    assert run_all.crnnh_targets({"similarity": {"report": report}}).splitlines()[2].endswith("| yes |")
