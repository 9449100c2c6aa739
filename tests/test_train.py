"""CRNNH training: dataset layouts, the feature cache, the loop, and `musichash train` end to end (tiny sizes)."""

import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from synth import write_song

from musichash.cli import cli
from musichash.models.crnnh import CRNNH
from musichash.train.cache import CacheConfig, Features, build_cache, load_cache
from musichash.train.data import DatasetError, load_dataset
from musichash.train.loop import TrainConfig, train, validate

TINY = CacheConfig(backbone="unittest_vgg", grid=(4, 2), piece_s=6.0, hop=80, views=2, max_minutes=0.2)


@pytest.fixture
def classes(tmp_path):
    root = tmp_path / "gtzan"
    for c, seeds in (("blues", (1, 2)), ("jazz", (3, 4))):
        (root / c).mkdir(parents=True)
        for s in seeds:
            write_song(root / c / f"{c}{s}.wav", seed=s, seconds=8)
    return root


def test_classes_layout(classes):
    ds = load_dataset(classes, "classes")
    assert ds.names == ("blues", "jazz") and len(ds.files) == 4 and not ds.multilabel
    assert ds.targets.tolist() == [[1, 0], [1, 0], [0, 1], [0, 1]]
    assert ds.summary() == {"layout": "classes", "files": 4, "classes": 2, "per_class": {"blues": 2, "jazz": 2}}


def test_csv_layout_and_its_errors(classes, tmp_path):
    csv_path = classes / "tags.csv"
    csv_path.write_text("path,guitar,piano\nblues/blues1.wav,1,0\njazz/jazz3.wav,1,1\n")
    ds = load_dataset(csv_path, "csv")
    assert ds.names == ("guitar", "piano") and ds.targets.tolist() == [[1, 0], [1, 1]] and ds.multilabel
    csv_path.write_text("path,guitar\nnope.wav,1\n")
    with pytest.raises(DatasetError, match=r"tags.csv:2: .*nope.wav does not exist; paths are relative to the CSV's folder"):
        load_dataset(csv_path, "csv")
    one = tmp_path / "one"
    (one / "only").mkdir(parents=True)
    with pytest.raises(DatasetError, match="at least 2 class sub-folders, found 1"):
        load_dataset(one, "classes")


def test_cache_shapes_targets_and_resume(classes, tmp_path):
    ds = load_dataset(classes, "unlabelled")
    path = tmp_path / "cache.h5"
    seen = []
    build_cache(ds, path, TINY, progress=seen.append)
    assert len(seen) == 4
    f = load_cache(path, ds)
    n = len(f.clean)
    assert f.clean.shape == (n, 5, 4, 4 * 2) and f.views.shape == (n, 2, 5, 4, 8) and f.clean.dtype == np.float16
    assert f.targets.shape == (n, 50) and ((f.targets >= 0) & (f.targets <= 1)).all()  # tagger probabilities
    assert not np.array_equal(f.views[:, 0], f.clean)  # the views are degraded
    again = []
    build_cache(ds, path, TINY, progress=again.append)
    assert again == []  # every file done: nothing recomputed
    with pytest.raises(ValueError, match="other settings"):
        build_cache(ds, path, CacheConfig(backbone="unittest_vgg", views=1))
    # as many files, but others (or the same in another order): the cache's windows are by file index
    (classes / "jazz" / "jazz4.wav").rename(classes / "jazz" / "jazz5.wav")
    with pytest.raises(ValueError, match="other settings or data"):
        build_cache(load_dataset(classes, "unlabelled"), path, TINY)


def test_training_falls_and_resumes(classes, tmp_path):
    ds = load_dataset(classes, "classes")
    build_cache(ds, tmp_path / "c.h5", TINY)
    feats = load_cache(tmp_path / "c.h5", ds)
    cfg = TrainConfig(bits=16, epochs=6, batch=16, hidden=8, lr=3e-3, n_select=2)
    ckpt = train(feats, tmp_path / "run", cfg, grid=(4, 2), multilabel=False)
    meta = json.loads(ckpt.with_suffix(".json").read_text())
    losses = [h["total"] for h in meta["history"]]
    assert len(losses) == 6 and losses[-1] < losses[0]
    assert meta["registry_name"] == "crnnh16" and meta["backbone"] == "unittest_vgg" and meta["config"]["bits"] == 16 and meta["train"]["epochs"] == 6
    more = train(feats, tmp_path / "run", TrainConfig(bits=16, epochs=8, batch=16, hidden=8, lr=3e-3, n_select=2),
                 grid=(4, 2), multilabel=False, resume=True)
    assert [h["epoch"] for h in json.loads(more.with_suffix(".json").read_text())["history"]] == list(range(1, 9))
    with pytest.raises(ValueError, match="other settings"):
        train(feats, tmp_path / "run", TrainConfig(bits=32, epochs=9), grid=(4, 2), multilabel=False, resume=True)


def test_train_command_and_index_with_the_checkpoint(tmp_path):
    music = tmp_path / "music"
    music.mkdir()
    for s in range(2):
        write_song(music / f"s{s}.wav", seed=s, seconds=7)
    out = tmp_path / "run"
    cache = tmp_path / "features.h5"
    args = ["train", str(music), "--views", "1", "--max-minutes", "0.2", "--epochs", "2", "--cache", str(cache), "--json"]
    r = CliRunner().invoke(cli, [*args, "--out", str(out), "--bits", "16"])
    assert r.exit_code == 0, r.output
    ckpt = json.loads(r.stdout)["checkpoint"]
    assert json.loads(r.stdout)["cache"] == str(cache) and cache.is_file()
    # a second bit count reuses the cache: nothing recomputed, nothing cached in its own folder
    before = cache.stat().st_mtime_ns
    r = CliRunner().invoke(cli, [*args, "--out", str(tmp_path / "run32"), "--bits", "32", "--select", "similarity",
                                 "--similarity", "0", "--pull", "0.5", "--batches", "random"])
    assert r.exit_code == 0, r.output
    assert cache.stat().st_mtime_ns == before and not list((tmp_path / "run32").glob("features-*.h5"))
    meta32 = json.loads((tmp_path / "run32" / "crnnh.json").read_text())
    assert meta32["config"]["select"] == "similarity" and meta32["train"]["lambda_s"] == 0
    assert meta32["train"]["lambda_p"] == 0.5 and meta32["train"]["per_file"] == 0
    # the cache's settings go with the checkpoint: how many views it learnt from
    assert meta32["cache_config"]["views"] == 1 and meta32["cache_config"]["max_minutes"] == 0.2
    meta16 = json.loads((out / "crnnh.json").read_text())["train"]
    assert (meta16["lambda_s"], meta16["lambda_p"], meta16["per_file"]) == (TrainConfig.lambda_s, 1.0, 8) == (20, 1.0, 8)
    lib = tmp_path / "lib"
    r = CliRunner().invoke(cli, ["index", str(music), "--library", str(lib), "--code-model", ckpt, "--workers", "0", "--json"])
    assert r.exit_code == 0, r.output
    stats = json.loads(CliRunner().invoke(cli, ["stats", "--library", str(lib), "--json"]).stdout)
    assert stats["bits"] == 16 and stats["tracks"] == 2 and stats["code_model"] == ckpt


def test_validation_counts_own_window_hits_and_flipped_bits():
    torch.manual_seed(0)
    model = CRNNH(bits=16, n_classes=3, grid=(4, 2), n_select=2, hidden=8, channels=4).eval()
    clean = np.random.default_rng(0).standard_normal((12, 5, 4, 8)).astype(np.float16)
    same = Features(clean, clean[:, None].repeat(2, axis=1), np.zeros((12, 3), np.float32), np.zeros(12, np.int32))
    rows = np.arange(12)
    got = validate(model, same, rows)
    assert got["val_flips"] == 0 and got["val_windows"] == 12
    # a view that is another window's audio never finds its own window (ties count as misses)
    swapped = Features(clean, clean[np.roll(rows, 1)][:, None].repeat(2, axis=1), same.targets, same.item)
    assert validate(model, swapped, rows)["val_top1"] == 0
    assert validate(model, same, rows[:1]) == {}


def test_training_reports_held_out_metrics_each_epoch(tmp_path):
    rng = np.random.default_rng(0)
    n = 40  # four windows from each of ten files: file 9 is held out
    clean = rng.standard_normal((n, 5, 4, 8)).astype(np.float16)
    views = (clean[:, None] + 0.1 * rng.standard_normal((n, 2, 5, 4, 8))).astype(np.float16)
    feats = Features(clean, views, rng.random((n, 3)).astype(np.float32), np.repeat(np.arange(10), 4).astype(np.int32),
                     "unittest_vgg")
    ckpt = train(feats, tmp_path / "run", TrainConfig(bits=16, epochs=2, batch=8, hidden=8, n_select=2), grid=(4, 2),
                 multilabel=True)
    meta = json.loads(ckpt.with_suffix(".json").read_text())
    assert [h["val_windows"] for h in meta["history"]] == [4, 4]
    assert 0 <= meta["metrics"]["val_top1"] <= meta["metrics"]["val_file_top1"] <= 1 and 0 <= meta["metrics"]["val_flips"] < 0.5


def test_teacher_features_are_exactly_pool5():
    from musichash.models.crnnh import resize_maps
    from musichash.train.loop import teacher_features

    g = torch.Generator().manual_seed(0)
    maps = {f"pool{i}": torch.randn(3, 6, 2, 1, generator=g) for i in range(1, 6)}
    got = teacher_features(resize_maps(maps, (8, 4), 6).numpy().astype(np.float16))
    want = maps["pool5"].flatten(1).numpy()  # channel by channel, both rows each
    assert got.shape == (3, 12)
    np.testing.assert_allclose(got, want.astype(np.float16), rtol=0, atol=0)


def test_training_with_the_similarity_term_records_it(tmp_path):
    rng = np.random.default_rng(1)
    n = 40
    clean = rng.standard_normal((n, 5, 4, 8)).astype(np.float16)
    views = (clean[:, None] + 0.1 * rng.standard_normal((n, 2, 5, 4, 8))).astype(np.float16)
    feats = Features(clean, views, rng.random((n, 3)).astype(np.float32), np.repeat(np.arange(10), 4).astype(np.int32))
    cfg = TrainConfig(bits=16, epochs=2, batch=8, hidden=8, n_select=2, lambda_s=5.0, per_file=0)
    ckpt = train(feats, tmp_path / "run", cfg, grid=(4, 2), multilabel=True)
    meta = json.loads(ckpt.with_suffix(".json").read_text())
    assert meta["train"]["lambda_s"] == 5.0
    assert all(h["similarity"] > 0 for h in meta["history"])
    off = train(feats, tmp_path / "off", TrainConfig(bits=16, epochs=1, batch=8, hidden=8, n_select=2, lambda_s=0.0),
                grid=(4, 2), multilabel=True)
    assert json.loads(off.with_suffix(".json").read_text())["history"][0]["similarity"] == 0
    with pytest.raises(ValueError, match="negatives must be one of batch, file, got 'track'"):
        train(feats, tmp_path / "bad", TrainConfig(bits=16, epochs=1, negatives="track"), grid=(4, 2), multilabel=True)


def test_batch_order_keeps_runs_of_one_file():
    from musichash.train.loop import batch_order

    item = np.repeat(np.arange(4), [5, 9, 3, 8])
    rows = np.arange(len(item))
    order = batch_order(rows, item, np.random.default_rng(0), 4)
    assert sorted(order.tolist()) == rows.tolist()  # every window once
    runs = np.split(item[order], np.flatnonzero(np.diff(item[order])) + 1)
    # each file is cut into as few runs of <= 4 as fit, 2 + 3 + 1 + 2, shuffled (with this seed no two runs of a file meet)
    assert [len(r) for r in runs] == [3, 2, 3, 4, 3, 3, 3, 4]
    random = batch_order(rows, item, np.random.default_rng(0), 0)
    assert sorted(random.tolist()) == rows.tolist()


def test_batch_order_by_group_keeps_a_group_s_runs_together():
    from musichash.train.loop import batch_order

    item = np.repeat(np.arange(6), [5, 9, 3, 8, 4, 6])
    group = np.array([0, 1, 0, 2, 1, 0])[item]  # files 0, 2, 5 share labels, and files 1, 4
    rows = np.arange(len(item))
    for seed in range(5):
        order = batch_order(rows, item, np.random.default_rng(seed), 4, group)
        assert sorted(order.tolist()) == rows.tolist()
        # each group's windows in one stretch: the group changes twice, in some order
        assert len(np.unique(group[order])) == 3 and np.count_nonzero(np.diff(group[order])) == 2
    orders = {tuple(group[batch_order(rows, item, np.random.default_rng(s), 4, group)][[0, -1]]) for s in range(20)}
    assert len(orders) > 1  # the groups come in random order


def _noisy_features(n_files: int, per_file: int, n_classes: int, seed: int = 0, *, soft: bool = False) -> Features:
    rng = np.random.default_rng(seed)
    n = n_files * per_file
    clean = rng.standard_normal((n, 5, 4, 8)).astype(np.float16)
    views = (clean[:, None] + 0.1 * rng.standard_normal((n, 2, 5, 4, 8))).astype(np.float16)
    item = np.repeat(np.arange(n_files), per_file).astype(np.int32)
    targets = rng.random((n, n_classes)) if soft else np.eye(n_classes)[item % n_classes]
    return Features(clean, views, targets.astype(np.float32), item, "unittest_vgg")


def test_classes_files_trains_one_class_per_file(tmp_path):
    feats = _noisy_features(10, 4, 2)  # two label classes, ten files
    cfg = TrainConfig(bits=16, epochs=2, batch=8, hidden=8, n_select=2, lambda_s=0.0, classes="files", batch_by="labels")
    ckpt = train(feats, tmp_path / "run", cfg, grid=(4, 2), multilabel=True)
    meta = json.loads(ckpt.with_suffix(".json").read_text())
    assert meta["config"]["n_classes"] == 10 and meta["train"]["classes"] == "files" and meta["train"]["batch_by"] == "labels"
    assert all(h["classification"] > 0 for h in meta["history"])
    labels = train(feats, tmp_path / "labels", TrainConfig(bits=16, epochs=1, batch=8, hidden=8, n_select=2), grid=(4, 2),
                   multilabel=True)
    assert json.loads(labels.with_suffix(".json").read_text())["config"]["n_classes"] == 2
    with pytest.raises(ValueError, match="batch_by='labels' needs labelled files"):
        train(_noisy_features(10, 4, 3, soft=True), tmp_path / "soft", TrainConfig(bits=16, epochs=1, batch_by="labels"),
              grid=(4, 2), multilabel=True)
    with pytest.raises(ValueError, match="classes must be one of labels, files, got 'tracks'"):
        train(feats, tmp_path / "bad", TrainConfig(bits=16, epochs=1, classes="tracks"), grid=(4, 2), multilabel=True)


def test_train_command_refuses_label_runs_without_labels(tmp_path):
    music = tmp_path / "music"
    music.mkdir()
    write_song(music / "s0.wav", seed=0, seconds=7)
    r = CliRunner().invoke(cli, ["train", str(music), "--out", str(tmp_path / "run"), "--batches", "label-runs"])
    assert r.exit_code == 2
    assert "Error: --batches label-runs groups files by their labels; unlabelled data has none" in r.output
    assert not (tmp_path / "run").exists()
    r = CliRunner().invoke(cli, ["train", str(music), "--out", str(tmp_path / "run"), "--views", "2", "--short-views", "3"])
    assert r.exit_code == 2
    assert "Error: --short-views 3 is more than --views 2; the short views are some of the views" in r.output
    assert not (tmp_path / "run").exists()


def test_split_fit_sends_every_third_file_to_calibration(tmp_path, capsys):
    from recipes.code_models import split_fit
    names = [f"f{i}.wav" for i in (5, 1, 4, 0, 6, 3, 2)]  # the manifest's order is not the split's
    rows = [{"path": n, "labels": {"soundtrack": "a" if n < "f4" else "b"}} for n in names]
    for n in names:
        (tmp_path / n).write_bytes(b"")
    (tmp_path / "manifest.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert split_fit.main([str(tmp_path)]) == 0
    assert capsys.readouterr().out.endswith("manifest.jsonl: 5 files to train.jsonl, 2 to calibration.jsonl\n")
    cal = load_dataset(tmp_path / "calibration.jsonl", "manifest")
    train_part = load_dataset(tmp_path / "train.jsonl", "manifest")
    assert [f.name for f in cal.files] == ["f2.wav", "f5.wav"]  # the 3rd and 6th in path order
    assert [f.name for f in train_part.files] == ["f0.wav", "f1.wav", "f3.wav", "f4.wav", "f6.wav"]
    assert train_part.names == ("soundtrack=a", "soundtrack=b")
    with pytest.raises(SystemExit, match="no such manifest"):
        split_fit.main([str(tmp_path / "nowhere")])


def test_identification_views_reach_the_cache(classes, tmp_path, monkeypatch):
    from musichash.train import augment

    drawn = []  # (file's call, whether other music came with it)
    real = augment.identification_view
    monkeypatch.setattr(augment, "identification_view",
                        lambda rng, background=None: drawn.append(background is not None) or real(rng, background))
    ds = load_dataset(classes, "unlabelled")
    ident = CacheConfig(**{**TINY.__dict__, "view_kind": "identification", "jitter": 24})
    assert ident.key() != TINY.key()
    # caches made before view kinds keep their key (the shipped heads' JSON records it)
    assert TINY.key() == __import__("hashlib").sha1(json.dumps(
        {k: v for k, v in TINY.__dict__.items() if k not in ("view_kind", "short_views", "tune_backbone")}, sort_keys=True).encode()).hexdigest()[:12]
    a = load_cache(build_cache(ds, tmp_path / "r.h5", TINY), ds)
    assert drawn == []  # random views: identification_view is not asked
    b = load_cache(build_cache(ds, tmp_path / "i.h5", ident), ds)
    assert np.array_equal(a.clean, b.clean)  # same windows, other views
    assert not np.array_equal(a.views, b.views)
    # the identification cache's views are identification_view's, every piece's, and from the second
    # file on with the file before as the music underneath
    assert len(drawn) >= len(ds.files) * ident.views
    assert drawn[0] is False and drawn[-1] is True and drawn == sorted(drawn)
    with pytest.raises(ValueError, match="view_kind must be one of random, identification"):
        CacheConfig(view_kind="hard")


def test_short_views_are_tiled_short_clips(classes, tmp_path):
    ds = load_dataset(classes, "unlabelled")
    cfg = CacheConfig(**{**TINY.__dict__, "view_kind": "identification", "jitter": 24, "short_views": 1})
    f = load_cache(build_cache(ds, tmp_path / "s.h5", cfg), ds)
    assert f.views.shape[1] == 2 and np.isfinite(f.views.astype(np.float32)).all()
    assert not np.array_equal(f.views[:, 1], f.views[:, 0])
    # the same draws without short views: the first view is the same, the last one is not (it is a 2 s clip)
    full = load_cache(build_cache(ds, tmp_path / "f.h5", CacheConfig(**{**cfg.__dict__, "short_views": 0})), ds)
    assert np.array_equal(full.views[:, 0], f.views[:, 0]) and not np.array_equal(full.views[:, 1], f.views[:, 1])
    with pytest.raises(ValueError, match=r"short_views must be in 0..views \(2\), got 3"):
        CacheConfig(views=2, short_views=3)


def test_identification_views_lie_off_the_backbone_grid(classes, tmp_path, monkeypatch):
    """A clean identification view still differs from its window: its audio is shifted by part of the
    backbone's stride (a query's windows lie anywhere), which whole-frame jitter, rounded to the
    stride where windows are cut, never did."""
    from musichash.train import augment

    monkeypatch.setattr(augment, "identification_view", lambda rng, background=None: [])
    monkeypatch.setattr(augment, "random_view", lambda rng, *a, **k: [])
    ds = load_dataset(classes, "unlabelled")
    plain = CacheConfig(**{**TINY.__dict__, "jitter": 0, "views": 1})
    f = load_cache(build_cache(ds, tmp_path / "p.h5", plain), ds)
    assert np.array_equal(f.views[:, 0], f.clean)  # no degradation, no offset: the same windows
    ident = CacheConfig(**{**plain.__dict__, "view_kind": "identification"})
    g = load_cache(build_cache(ds, tmp_path / "i.h5", ident), ds)
    assert np.array_equal(g.clean, f.clean) and not np.array_equal(g.views[:, 0], g.clean)
