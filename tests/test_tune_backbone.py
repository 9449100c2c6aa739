"""Fine-tuned VGG blocks for segment codes (`musichash train --tune-backbone`): the branch the engine runs
beside the tagger's blocks, the cache's pool3 context, training it, and a library indexed with it (tiny sizes)."""

import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import load_file
from synth import write_song

from musichash.cli import cli
from musichash.models import build_backbone
from musichash.models.backbones import VGGBranch
from musichash.models.crnnh import (
    BRANCH_LAYERS,
    CRNNH,
    load_checkpoint,
    resize_maps,
    save_checkpoint,
)
from musichash.train.cache import CacheConfig, _context, build_cache, load_cache
from musichash.train.data import load_dataset
from musichash.train.loop import TrainConfig, start_from, train, validate

TUNED = CacheConfig(backbone="unittest_vgg", grid=(4, 2), piece_s=6.0, hop=80, views=2, max_minutes=0.2,
                    tune_backbone=True)
WANT = {"seg_pool4@4x2", "seg_pool5@4x2", "pool4@4x2", "pool5@4x2"}


def _track_maps(vgg, mel):
    with torch.inference_mode():
        wbs = list(vgg.iter_windows(mel, 48, features=WANT))
    return torch.cat([w.starts for w in wbs]).tolist(), {k: torch.cat([w.features[k] for w in wbs]) for k in WANT}


def _perturbed_branch(vgg):
    branch = VGGBranch.from_vgg(vgg)
    with torch.no_grad():
        for conv in branch.convs:
            conv.weight.add_(0.3 * torch.randn(conv.weight.shape, generator=torch.Generator().manual_seed(1)))
    return branch


def test_a_fresh_branch_gives_the_tagger_s_own_maps():
    vgg = build_backbone("unittest_vgg")
    vgg.attach_branch(VGGBranch.from_vgg(vgg))
    _, maps = _track_maps(vgg, torch.randn(700, 96, generator=torch.Generator().manual_seed(0)).abs())
    assert torch.equal(maps["seg_pool4@4x2"], maps["pool4@4x2"]) and torch.equal(maps["seg_pool5@4x2"], maps["pool5@4x2"])


def test_the_branch_on_cached_context_is_what_the_engine_cuts_from_a_track():
    vgg = build_backbone("unittest_vgg")
    branch = _perturbed_branch(vgg)
    vgg.attach_branch(branch)
    mel = torch.randn(900, 96, generator=torch.Generator().manual_seed(0)).abs()
    starts, maps = _track_maps(vgg, mel)
    assert not torch.allclose(maps["seg_pool4@4x2"], maps["pool4@4x2"], atol=1e-2)  # the branch's own maps
    with torch.inference_mode():
        ctx = torch.from_numpy(_context(vgg.trunk(mel[None])["pool3"], starts).astype(np.float32))
        p4, p5 = branch(ctx, vgg)
    got = resize_maps({"seg_pool4": p4, "seg_pool5": p5}, (4, 2), 4, BRANCH_LAYERS[3:])
    want = torch.stack([maps["seg_pool4@4x2"].flatten(2), maps["seg_pool5@4x2"].flatten(2)], dim=1)
    # equal but for the cache's float16 (the windows at the track's ends included: the conv's zero padding)
    assert torch.allclose(got, want, rtol=2e-3, atol=2e-3 * float(want.abs().max()))


def test_asking_for_branch_maps_without_a_branch_is_refused():
    vgg = build_backbone("unittest_vgg")
    with pytest.raises(ValueError, match="no segment branch"):
        list(vgg.iter_windows(torch.zeros(300, 96), 48, features={"seg_pool4@4x2"}))


@pytest.fixture
def music(tmp_path):
    root = tmp_path / "music"
    root.mkdir()
    for s in range(3):
        write_song(root / f"s{s}.wav", seed=s, seconds=8)
    return root


def test_training_moves_the_branch_and_keeps_the_tagger(music, tmp_path):
    ds = load_dataset(music, "unlabelled")
    feats = load_cache(build_cache(ds, tmp_path / "c.h5", TUNED), ds)
    n = len(feats.clean)
    assert feats.clean_ctx.shape == (n, 4, 23 + 4, 12) and feats.views_ctx.shape == (n, 2, 4, 27, 12)
    assert TUNED.key() != CacheConfig(**{**TUNED.__dict__, "tune_backbone": False}).key()
    cfg = TrainConfig(bits=16, epochs=3, batch=16, hidden=8, n_select=2, lambda_s=0, tune_lr=1e-2)
    ckpt = train(feats, tmp_path / "run", cfg, grid=(4, 2), multilabel=True)
    model = load_checkpoint(ckpt)
    assert model.layers == BRANCH_LAYERS and json.loads(ckpt.with_suffix(".json").read_text())["config"]["branch"] == 4
    vgg = build_backbone("unittest_vgg")
    start = VGGBranch.from_vgg(vgg)
    moved = [not torch.equal(a, b) for a, b in zip(model.branch.convs.parameters(), start.convs.parameters())]
    assert all(moved)  # both convs learnt
    # the batch norms keep musicnn's statistics; the tagger's own blocks are not in the checkpoint
    assert torch.equal(model.branch.bns[0].running_mean, start.bns[0].running_mean)
    assert not any(k.startswith("convs.") for k in load_file(str(ckpt)))
    # held-out validation runs the branch too: a view of a window next to its own clean window
    scores = validate(model, feats, np.arange(n), vgg)
    assert scores["val_windows"] == n and 0 < scores["val_file_top1"] <= 1 and 0 <= scores["val_flips"] < 0.5


def test_init_starts_the_head_from_a_trained_one(tmp_path):
    trained = CRNNH(16, 3, grid=(4, 2), n_select=2, hidden=8, channels=4, select="learned")
    save_checkpoint(trained, tmp_path / "h.safetensors")
    fresh = CRNNH(16, 3, grid=(4, 2), n_select=2, hidden=8, channels=4, select="learned", layers=BRANCH_LAYERS, branch=4)
    copied = start_from(fresh, load_checkpoint(tmp_path / "h.safetensors"))
    assert "lstm.weight_ih_l0" in copied and "mix" in copied and not any(k.startswith("branch.") for k in copied)
    assert torch.equal(fresh.lstm.weight_hh_l0, trained.lstm.weight_hh_l0) and torch.equal(fresh.mix, trained.mix)


def test_train_tune_backbone_then_index_and_search_with_it(music, tmp_path):
    out = tmp_path / "run"
    base = ["train", str(music), "--views", "2", "--max-minutes", "0.2", "--epochs", "2", "--bits", "16",
            "--similarity", "0", "--json"]
    r = CliRunner().invoke(cli, [*base, "--out", str(tmp_path / "plain")])
    assert r.exit_code == 0, r.output
    plain = json.loads(r.stdout)["checkpoint"]
    r = CliRunner().invoke(cli, [*base, "--out", str(out), "--tune-backbone", "--init", plain, "--lr", "3e-4",
                                 "--tune-lr", "0.01"])
    assert r.exit_code == 0, r.output
    ckpt = json.loads(r.stdout)["checkpoint"]
    meta = json.loads((out / "crnnh.json").read_text())
    assert meta["cache_config"]["tune_backbone"] is True and meta["config"]["layers"] == list(BRANCH_LAYERS)
    assert (meta["train"]["lr"], meta["train"]["tune_lr"]) == (3e-4, 0.01)
    assert meta["init"] == plain  # the head it started from is on record
    lib = tmp_path / "lib"
    r = CliRunner().invoke(cli, ["index", str(music), "--library", str(lib), "--code-model", ckpt, "--workers", "0", "--json"])
    assert r.exit_code == 0, r.output
    r = CliRunner().invoke(cli, ["search", str(music / "s1.wav"), "--library", str(lib), "--json"])
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["results"][0]["path"].endswith("s1.wav")


def test_init_that_is_not_a_checkpoint_is_a_usage_error(music, tmp_path):
    bad = tmp_path / "notes.txt"
    bad.write_text("hello")
    r = CliRunner().invoke(cli, ["train", str(music), "--out", str(tmp_path / "o"), "--init", str(bad)])
    assert r.exit_code == 2
    assert f"--init {bad}: not a CRNNH checkpoint; give a .safetensors written by `musichash train`" in r.output
