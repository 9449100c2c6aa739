"""Retrieval metrics against hand-computed values, the manifest layout, and `musichash evaluate` end to end (tiny)."""

import json

import numpy as np
import pytest
from click.testing import CliRunner
from synth import write_song

from musichash.cli import cli
from musichash.train.data import DatasetError, guess_layout, load_dataset
from musichash.train.evaluate import (
    MapAtR,
    RadiusPrecision,
    cosine_distances,
    leave_one_file_out,
    map_at_r,
    precision_at_k,
    precision_within_radius,
    rank,
    relevance,
    relevant_counts,
    score,
    tie_order,
)

T, F = True, False

# One query, five database items. Distances 1 0 2 1 3; items 0, 2 and 4 relevant (R = 3).
D1 = np.array([[1, 0, 2, 1, 3]])
REL1 = np.array([[T, F, T, F, T]])


def test_ranking_breaks_ties_by_the_given_order():
    # items 0 and 3 tie at distance 1: index order puts 0 first, an order listing 3 before 0 puts 3 first
    assert rank(D1).tolist() == [[1, 0, 3, 2, 4]]
    assert rank(D1, tiebreak=np.array([3, 1, 2, 0, 4])).tolist() == [[1, 3, 0, 2, 4]]
    # items outside the database go last, whatever their distance
    assert rank(D1, valid=np.array([[T, F, T, T, T]])).tolist() == [[0, 3, 2, 4, 1]]
    order = tie_order(5, seed=0)
    assert sorted(order.tolist()) == [0, 1, 2, 3, 4] and order.tolist() == tie_order(5, seed=0).tolist()
    with pytest.raises(ValueError, match="permutation"):
        rank(D1, tiebreak=np.array([0, 0, 1, 2, 3]))


def test_map_at_r_by_hand():
    # index order: ranked relevance F T F T T; R = 3, so only ranks 1-3 count:
    # AP@R = (1/3) * (P(2) * 1) = (1/3) * (1/2) = 1/6
    assert map_at_r(D1, REL1) == MapAtR(pytest.approx(1 / 6), 1, 0)
    # item 3 wins the tie: F F T -> (1/3) * P(3) = (1/3) * (1/3) = 1/9
    assert map_at_r(D1, REL1, tiebreak=np.array([3, 1, 2, 0, 4])).value == pytest.approx(1 / 9)
    # a hit below rank R does not count: ranked T F T F, R = 2 -> (1/2) * (1/1) = 1/2
    assert map_at_r(np.array([[0, 1, 2, 3]]), np.array([[T, F, T, F]])).value == pytest.approx(0.5)
    # perfect: T T F, R = 2 -> (1/2) * (1 + 1) = 1
    assert map_at_r(np.array([[0, 1, 2]]), np.array([[T, T, F]])).value == 1.0
    # a second query with no relevant item (R = 0) is skipped and counted, not scored 0
    D = np.vstack([D1, [[0, 0, 0, 0, 0]]])
    rel = np.vstack([REL1, [[F, F, F, F, F]]])
    assert map_at_r(D, rel) == MapAtR(pytest.approx(1 / 6), 1, 1)
    # every query skipped: NaN
    assert np.isnan(map_at_r(D[1:], rel[1:]).value)


def test_map_at_r_outside_the_database():
    # item 4 is from the query's own file: R = 2 (items 0, 2); ranked 1 0 3 2 -> F T F T;
    # AP@R = (1/2) * (P(2) * 1) = (1/2) * (1/2) = 1/4
    valid = np.array([[T, T, T, T, F]])
    assert map_at_r(D1, REL1, valid=valid).value == pytest.approx(0.25)


def test_precision_at_k_by_hand():
    # ranked relevance F T F T T
    # P@1 = 0, P@2 = 1/2, P@4 = 2/4, P@10 over min(10, 5) = 5 items: 3/5
    assert precision_at_k(D1, REL1, ks=(1, 2, 4, 10)) == {1: 0.0, 2: 0.5, 4: 0.5, 10: pytest.approx(0.6)}
    # tie broken the other way: F F T T T -> P@2 = 0
    assert precision_at_k(D1, REL1, ks=(2,), tiebreak=np.array([3, 1, 2, 0, 4])) == {2: 0.0}
    # item 4 left out: database of 4, ranked F T F T -> P@10 = 2/4
    assert precision_at_k(D1, REL1, ks=(10,), valid=np.array([[T, T, T, T, F]])) == {10: 0.5}


def test_precision_within_radius_by_hand():
    D = np.array([[0, 2, 3, 1], [3, 4, 5, 3], [0, 0, 0, 0]])
    rel = np.array([[T, F, T, F], [F, T, F, F], [F, F, F, F]])
    # query 0: ball (d <= 2) = items 0, 1, 3, one relevant -> 1/3
    # query 1: nobody within 2 -> precision 0, an empty ball
    # query 2: R = 0, skipped
    # mean (1/3 + 0) / 2 = 1/6; empty 1 of 2 queries
    assert precision_within_radius(D, rel) == RadiusPrecision(pytest.approx(1 / 6), 0.5)
    # radius 3 takes in item 2 for query 0 (2 of 4) and items 0, 3 for query 1 (0 of 2): (1/2 + 0) / 2
    assert precision_within_radius(D, rel, radius=3) == RadiusPrecision(0.25, 0.0)
    # item 0 left out of query 0's database: ball = 1, 3, none relevant; R = 1 still (item 2)
    valid = np.array([[F, T, T, T], [T, T, T, T], [T, T, T, T]])
    assert precision_within_radius(D, rel, valid=valid) == RadiusPrecision(0.0, 0.5)


def test_relevance_is_one_shared_label_and_files_leave_themselves_out():
    # labels a b c: item 0 {a, b}, item 1 {b}, item 2 {c}, item 3 {} (no label: relevant to nobody)
    labels = np.array([[T, T, F], [F, T, F], [F, F, T], [F, F, F]])
    assert relevance(labels, labels).tolist() == [
        [T, T, F, F],
        [T, T, F, F],
        [F, F, T, F],
        [F, F, F, F],
    ]
    files = np.array([0, 0, 1, 2])
    assert leave_one_file_out(files, files).tolist() == [
        [F, F, T, T],
        [F, F, T, T],
        [T, T, F, T],
        [T, T, T, F],
    ]
    # item 0's only relevant neighbour is in its own file: R = 0; item 2 has nobody either
    assert relevant_counts(labels, files).tolist() == [0, 0, 0, 0]
    assert relevant_counts(labels, np.arange(4)).tolist() == [1, 1, 0, 0]


# Four items of 8-bit codes, two files:
#   item  file  label  code      Hamming to 0 1 2 3
#   0     A     x      00000000              - 1 2 0
#   1     A     x      00000001              1 - 1 1
#   2     B     x      00000011              2 1 - 2
#   3     B     y      00000000              0 1 2 -
CODES = np.array([[0b00000000], [0b00000001], [0b00000011], [0b00000000]], dtype=np.uint8)
LABELS = np.array([[T, F], [T, F], [T, F], [F, T]])
FILES = np.array([0, 0, 1, 1])


def test_score_by_hand():
    # query 0 (database 2, 3; relevant 2; R = 1): ranked 3 (d 0), 2 (d 2) -> F T: AP 0, P@1 0, P@10 1/2
    # query 1 (database 2, 3; relevant 2; R = 1): 2 and 3 tie at d 1; index order -> T F: AP 1, P@1 1, P@10 1/2
    # query 2 (database 0, 1, both relevant; R = 2): ranked 1 (d 1), 0 (d 2) -> T T: AP 1, P@1 1, P@10 1
    # query 3 (label y, nobody else has it): R = 0, skipped
    # radius 2 holds the whole database of every query: precisions 1/2, 1/2, 1
    s = score(CODES, LABELS, FILES, ks=(1, 10))
    assert (s.queries, s.skipped) == (3, 1)
    assert s.map_at_r == pytest.approx(2 / 3)
    assert s.precision_at_k == {1: pytest.approx(2 / 3), 10: pytest.approx(2 / 3)}
    assert (s.precision_within_radius, s.empty_ball) == (pytest.approx(2 / 3), 0.0)
    # the tie of query 1 broken the other way (3 before 2): its AP and P@1 drop to 0
    flipped = score(CODES, LABELS, FILES, ks=(1,), tiebreak=np.array([3, 2, 1, 0]))
    assert flipped.map_at_r == pytest.approx(1 / 3) and flipped.precision_at_k == {1: pytest.approx(1 / 3)}
    # radius 0: query 0's ball is item 3 (not relevant): 0; queries 1 and 2 have empty balls: 0
    r0 = score(CODES, LABELS, FILES, radius=0)
    assert (r0.precision_within_radius, r0.empty_ball) == (0.0, pytest.approx(2 / 3))


def test_score_matches_the_matrix_metrics_in_chunks():
    rng = np.random.default_rng(5)
    n = 40
    labels = rng.random((n, 4)) < 0.3
    files = rng.integers(0, 12, n)
    codes = rng.integers(0, 256, (n, 2), dtype=np.uint8)
    valid = leave_one_file_out(files, files)
    rel = relevance(labels, labels)
    order = tie_order(n, seed=1)
    D = np.array([[bin(int.from_bytes(a.tobytes(), "big") ^ int.from_bytes(b.tobytes(), "big")).count("1")
                   for b in codes] for a in codes])
    m = map_at_r(D, rel, valid, tiebreak=order)
    for chunk in (7, 512):
        s = score(codes, labels, files, ks=(5,), radius=4, tiebreak=order, chunk=chunk)
        assert (s.queries, s.skipped) == (m.queries, m.skipped)
        assert s.map_at_r == pytest.approx(m.value)
        assert s.precision_at_k[5] == pytest.approx(precision_at_k(D, rel, (5,), valid, order)[5])
        assert s.precision_within_radius == pytest.approx(precision_within_radius(D, rel, 4, valid).precision)
    # float embeddings rank by cosine and have no radius metric
    x = rng.standard_normal((n, 6))
    f = score(x, labels, files, ks=(5,), tiebreak=order)
    assert f.precision_within_radius is None and f.empty_ball is None
    assert f.map_at_r == pytest.approx(map_at_r(cosine_distances(x, x), rel, valid, order).value)


# ------------------------------------------------------------------ data


def test_manifest_layout(tmp_path):
    (tmp_path / "a").mkdir()
    for name in ("a/one.wav", "two.wav"):
        (tmp_path / name).write_bytes(b"")  # the loader only checks that files exist
    m = tmp_path / "manifest.jsonl"
    m.write_text(
        json.dumps({"path": "a/one.wav", "labels": {"composer": "bach", "instrument_family": "choir"}}) + "\n\n"
        + json.dumps({"path": "two.wav", "labels": {"soundtrack": "x", "mood": ["calm", "dark"]}}) + "\n"
    )
    ds = load_dataset(m, "manifest")
    assert ds.layout == "manifest" and ds.multilabel
    assert ds.files == ((tmp_path / "a/one.wav").resolve(), (tmp_path / "two.wav").resolve())
    assert ds.names == ("composer=bach", "instrument_family=choir", "mood=calm", "mood=dark", "soundtrack=x")
    assert ds.targets.tolist() == [[1, 1, 0, 0, 0], [0, 0, 1, 1, 1]]
    assert [guess_layout(m), guess_layout(tmp_path), guess_layout(tmp_path / "t.csv")] == ["manifest", "classes", "csv"]
    plain = load_dataset(m, "unlabelled")  # the manifest's files without their labels (train on a listed subset)
    assert (plain.layout, plain.files, plain.names, plain.targets) == ("unlabelled", ds.files, (), None)
    with pytest.raises(DatasetError) as e:
        load_dataset(tmp_path / "two.wav", "unlabelled")
    assert str(e.value) == f"{tmp_path / 'two.wav'}: not a folder; the unlabelled layout needs a folder of audio files or a .jsonl manifest"

    m.write_text('{"path": "gone.wav", "labels": {}}\n')
    with pytest.raises(DatasetError) as e:
        load_dataset(m, "manifest")
    assert str(e.value) == f"{m}:1: {tmp_path / 'gone.wav'} does not exist; paths are relative to the manifest's folder"
    m.write_text('{"path": "two.wav"}\n')
    with pytest.raises(DatasetError, match=r':1: needs "path" \(a string\) and "labels"'):
        load_dataset(m, "manifest")


# ------------------------------------------------------------------ the command


@pytest.fixture(scope="module")
def labelled(tmp_path_factory):
    root = tmp_path_factory.mktemp("labelled")
    for c, seeds in (("drone", (1, 2, 3)), ("melody", (4, 5, 6))):
        (root / c).mkdir()
        for s in seeds:
            write_song(root / c / f"{c}{s}.wav", seed=s, seconds=5)
    return root


def test_evaluate_command_json(labelled):
    result = CliRunner().invoke(cli, [
        "evaluate", str(labelled), "--bits", "16", "--windows", "3", "--code-model", "unittest_crnnh",
        "--code-model", "unittest_hash", "--k", "5", "--json", "--device", "cpu",
    ])
    assert result.exit_code == 0, result.output
    obj = json.loads(result.stdout)
    assert set(obj) == {
        "data", "layout", "items", "files", "labels", "windows_per_file", "max_minutes", "seed", "radius", "k",
        "queries", "queries_without_relevant", "R", "skipped_files", "methods",
    }
    assert (obj["layout"], obj["files"], obj["labels"], obj["k"]) == ("classes", 6, 2, [5])
    # 5 s files hold 3 windows each; every window has the 2 other files of its class * 3 windows = 6 relevant
    assert obj["items"] == 18 and obj["R"] == {"mean": 6.0, "min": 6, "max": 6} and obj["queries_without_relevant"] == 0
    methods = {m["method"]: m for m in obj["methods"]}
    assert list(methods) == ["float", "lsh-16", "itq-16", "interim-16", "crnnh-32", "unittest_hash"]
    assert methods["float"]["precision_within_radius"] is None and methods["float"]["bits"] is None
    for m in obj["methods"]:
        assert set(m) == {"method", "bits", "model", "map_at_r", "precision_at_k", "precision_within_radius", "empty_ball"}
        assert 0 <= m["map_at_r"] <= 1 and set(m["precision_at_k"]) == {"5"}
    assert methods["crnnh-32"]["bits"] == 32 and methods["interim-16"]["model"] == "interim_vgg_itq16"


def test_evaluate_command_bad_manifest(tmp_path):
    m = tmp_path / "set.jsonl"
    m.write_text('{"path": "gone.flac", "labels": {"genre": "jazz"}}\n')
    result = CliRunner().invoke(cli, ["evaluate", str(m)])
    assert result.exit_code == 1
    assert result.stderr == f"Error: {m}:1: {tmp_path / 'gone.flac'} does not exist; paths are relative to the manifest's folder\n"
