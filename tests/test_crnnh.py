"""CRNNH head and losses on synthetic maps (tiny configs, a few optimiser steps)."""

import numpy as np
import pytest
import torch

from musichash.models.crnnh import (
    CRNNH,
    CRNNHLoss,
    balance_loss,
    pairwise_loss,
    quantization_loss,
    rank_channels,
    resize_maps,
    similarity_loss,
)

SHAPES = {"pool1": (92, 48), "pool2": (46, 24), "pool3": (23, 12), "pool4": (11, 6), "pool5": (2, 1)}


def fake_maps(b, c=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    return {k: torch.randn(b, c, *hw, generator=g) for k, hw in SHAPES.items()}


def test_resize_maps_shape_and_padding():
    maps = fake_maps(3, c=3)
    x = resize_maps(maps, grid=(4, 2), channels=5)
    assert x.shape == (3, 5, 5, 8)
    assert torch.all(x[:, :, 3:] == 0)  # two padded channels per layer
    expect = torch.nn.functional.interpolate(maps["pool2"], size=(4, 2), mode="bilinear", align_corners=False)
    assert torch.allclose(x[:, 1, :3], expect.flatten(2))
    with pytest.raises(ValueError, match="pool1 has 3 channels, the model takes 2"):
        resize_maps(maps, grid=(4, 2), channels=2)


def test_rank_channels_puts_the_mean_like_channel_first_and_dead_ones_last():
    x = resize_maps(fake_maps(6), grid=(4, 2), channels=4).abs()  # non-negative, as after ReLU
    x[:, :, 2] = x[:, :, [0, 1, 3]].mean(dim=2) * 2  # channel 2 is proportional to the layer mean ...
    x[:, :, 1] = 0  # ... and channel 1 is dead
    ranked = rank_channels(x)
    assert ranked.shape == (5, 4)
    assert ranked[:, 0].tolist() == [2] * 5 and ranked[:, -1].tolist() == [1] * 5


def test_similarity_selection_is_the_same_for_every_window():
    model = CRNNH(bits=16, n_classes=3, grid=(4, 2), n_select=2, hidden=8, channels=4)
    ranked = torch.tensor([[3, 1, 0, 2]] * 5)
    model.set_selection(ranked)
    x = torch.randn(7, 5, 4, 8)
    steps = model.steps(x)
    assert steps.shape == (7, 5, 16)
    # every window and layer keeps channels 3 then 1, whatever its own maps look like
    assert torch.equal(steps, torch.cat([x[:, :, 3], x[:, :, 1]], dim=2))


def test_learned_selection_mixes_channels_and_trains():
    model = CRNNH(bits=16, n_classes=3, grid=(4, 2), n_select=2, hidden=8, channels=4, select="learned")
    out = model(fake_maps(4))
    out.logits.sum().backward()
    assert model.mix.grad is not None and model.mix.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="select must be one of"):
        CRNNH(bits=16, select="random")


def test_codes_are_exactly_plus_minus_one_and_pack():
    model = CRNNH(bits=16, n_classes=5, grid=(4, 2), n_select=2, hidden=8, channels=4).eval()
    out = model(fake_maps(6))
    assert out.relaxed.shape == (6, 16) and out.logits.shape == (6, 5)
    assert set(out.codes.unique().tolist()) <= {-1.0, 1.0}
    assert torch.all(out.relaxed.abs() < 1)
    packed = np.packbits(out.codes.numpy() > 0, axis=1)
    assert packed.shape == (6, 2) and packed.dtype == np.uint8


def test_bits_are_validated():
    with pytest.raises(ValueError, match="bits must be one of"):
        CRNNH(bits=20)


def test_balance_term_penalises_a_skewed_batch():
    g = torch.Generator().manual_seed(1)
    balanced = torch.where(torch.rand(256, 16, generator=g) > 0.5, 1.0, -1.0)
    skewed = balanced.clone()
    skewed[:, :8] = 1.0  # half of the bits always on
    assert balance_loss(skewed) > 5 * balance_loss(balanced)
    # and minimising it moves a skewed relaxed code towards balance
    h = (skewed * 0.9).clone().requires_grad_(True)
    opt = torch.optim.Adam([h], lr=0.1)
    before = h.detach()[:, :8].mean().item()
    for _ in range(20):
        opt.zero_grad()
        balance_loss(torch.tanh(h)).backward()
        opt.step()
    assert abs(h.detach()[:, :8].mean().item()) < abs(before) / 2


def test_quantization_and_pairwise_terms():
    ones = torch.ones(4, 8)
    assert quantization_loss(ones) == 0
    assert quantization_loss(torch.full((4, 8), 0.5)) == pytest.approx(0.25)
    a = torch.randn(8, 16)
    assert pairwise_loss(a, a) < pairwise_loss(a, torch.randn(8, 16))


def test_similarity_term_is_zero_when_code_agreement_equals_teacher_cosine():
    codes = torch.tensor([[1.0, 1, 1, 1], [1, 1, -1, -1], [1, -1, 1, -1]])  # inner products / 4: 0 off the diagonal
    teacher = torch.eye(3) * 5  # orthogonal: cosines 0 off the diagonal; the scale does not matter
    assert similarity_loss(codes, teacher) == 0
    # the same codes against a teacher that calls items 0 and 1 identical: 2 of the 6 off-diagonal pairs miss by 1
    teacher = torch.tensor([[1.0, 0, 0], [1, 0, 0], [0, 0, 1]])
    assert similarity_loss(codes, teacher).item() == pytest.approx(2 / 6)
    assert similarity_loss(codes[:1], teacher[:1]) == 0  # one item: no pairs


def test_similarity_term_neighbour_order_and_groups():
    codes = torch.tensor([[1.0, 1, 1, 1], [1, 1, -1, -1], [1, -1, 1, -1], [1, 1, 1, -1]])
    a = codes @ codes.T / 4
    # the codes themselves as teacher: the same neighbours in the same order, KL 0
    assert similarity_loss(codes, codes, temperature=0.1).item() == pytest.approx(0, abs=1e-6)
    # item 3's codes agree equally with items 0, 1 and 2 (0.5 each); this teacher puts item 0 nearest
    teacher = torch.tensor([[1.0, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 0], [1, 0, 0, 0.2]])
    assert similarity_loss(codes, teacher, temperature=0.1).item() > 0.1
    # groups: only pairs across groups count (pairs 0-2, 0-3, 1-2, 1-3 of 0 0 1 1)
    group = torch.tensor([0, 0, 1, 1])
    c = torch.nn.functional.normalize(teacher, dim=1) @ torch.nn.functional.normalize(teacher, dim=1).T
    cross = [(0, 2), (0, 3), (1, 2), (1, 3)]
    want = sum((a[i, j] - c[i, j]) ** 2 for i, j in cross) / len(cross)
    assert similarity_loss(codes, teacher, group=group).item() == pytest.approx(want.item())
    assert similarity_loss(codes, teacher, group=torch.zeros(4, dtype=torch.long)) == 0  # no pair across groups


def test_pairwise_negatives_within_a_group_only():
    a, b = torch.randn(6, 16), torch.randn(6, 16)
    pull = (a - b).pow(2).mean()
    # every item alone in its group: no negatives, InfoNCE is 0 and only the pull remains
    assert pairwise_loss(a, b, group=torch.arange(6)).item() == pytest.approx(pull.item())
    assert pairwise_loss(a, b, group=torch.zeros(6, dtype=torch.long)).item() == pytest.approx(pairwise_loss(a, b).item())


def test_similarity_term_pulls_codes_towards_the_teachers_neighbours():
    torch.manual_seed(0)
    n = 48
    teacher = torch.randn(4, 32)[torch.arange(n) % 4] + 0.1 * torch.randn(n, 32)  # four clusters of teacher features
    maps = fake_maps(n, seed=5)  # the maps carry the clusters only through the teacher's target
    maps = {k: v + teacher[:, :4, None, None] for k, v in maps.items()}
    model = CRNNH(bits=16, n_classes=2, grid=(4, 2), n_select=2, hidden=16, channels=4, select="learned")
    loss_fn = CRNNHLoss(lambda_q=0.0, lambda_b=0.0, lambda_p=0.0, lambda_s=1.0)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    before = loss_fn(model(maps), torch.zeros(n, 2), teacher=teacher).similarity.item()
    for _ in range(60):
        opt.zero_grad()
        parts = loss_fn(model(maps), torch.zeros(n, 2), teacher=teacher)
        parts.total.backward()
        opt.step()
    assert parts.similarity.item() < 0.75 * before
    with torch.no_grad():
        codes = model.eval()(maps).codes
    same = (torch.arange(n)[:, None] % 4 == torch.arange(n)[None] % 4).float()
    agree = codes @ codes.T / 16
    assert (agree * same).sum() / same.sum() > (agree * (1 - same)).sum() / (1 - same).sum() + 0.3


def test_tiny_config_trains_with_falling_loss():
    torch.manual_seed(0)
    n, n_classes = 64, 4
    labels = torch.arange(n) % n_classes
    base = fake_maps(n_classes, seed=3)
    # each class has its own maps; items are noisy copies, and a "view" is another noisy copy
    maps = {k: v[labels] + 0.3 * torch.randn(n, *v.shape[1:]) for k, v in base.items()}
    view = {k: v[labels] + 0.3 * torch.randn(n, *v.shape[1:]) for k, v in base.items()}
    model = CRNNH(bits=16, n_classes=n_classes, grid=(4, 2), n_select=2, hidden=16, channels=4)
    loss_fn = CRNNHLoss(multilabel=False)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    history = []
    for _ in range(40):
        opt.zero_grad()
        parts = loss_fn(model(maps), labels, model(view))
        parts.total.backward()
        opt.step()
        history.append(parts.total.item())
    assert np.mean(history[-5:]) < 0.6 * np.mean(history[:5])
    model.eval()
    with torch.no_grad():
        codes = model(maps).codes
    # same-class items now share more bits than items of different classes
    same = (labels[:, None] == labels[None]).float()
    agree = (codes @ codes.T) / 16
    assert (agree * same).sum() / same.sum() > (agree * (1 - same)).sum() / (1 - same).sum() + 0.3


def test_checkpoint_round_trip(tmp_path):
    import json

    from musichash.models.crnnh import load_checkpoint, save_checkpoint

    torch.manual_seed(2)
    model = CRNNH(bits=32, n_classes=3, grid=(4, 2), n_select=2, hidden=8, channels=4).eval()
    model.set_selection(torch.tensor([[2, 0, 1, 3]] * 5))
    path = tmp_path / "m.safetensors"
    save_checkpoint(model, path, {"registry_name": "crnnh_test", "metrics": {"map": 0.5}})
    back = load_checkpoint(path)
    maps = fake_maps(5)
    with torch.no_grad():
        assert torch.equal(model(maps).relaxed, back(maps).relaxed)
    assert back.selection[:, 0].tolist() == [2] * 5  # the channel ranking travels with the weights
    meta = json.loads(path.with_suffix(".json").read_text())
    assert meta["config"]["bits"] == 32 and meta["registry_name"] == "crnnh_test" and meta["metrics"] == {"map": 0.5}
    assert path.read_bytes()[:8] != b"\x80\x04\x95"  # not a pickle
    # a checkpoint of the first format (channels ranked per window) is refused with a way out
    from safetensors.torch import load_file, save_file

    old = {k: v for k, v in meta["config"].items() if k not in ("channels", "select")}
    weights = {k: v for k, v in load_file(str(path)).items() if k != "selection"}
    save_file(weights, str(tmp_path / "old.safetensors"), metadata={"format": "musichash.crnnh", "config": json.dumps(old)})
    with pytest.raises(ValueError, match="from an older musichash .*; train it again"):
        load_checkpoint(tmp_path / "old.safetensors")
    with pytest.raises(ValueError, match="not a CRNNH checkpoint"):
        from safetensors.torch import save_file

        save_file({"x": torch.zeros(1)}, str(tmp_path / "other.safetensors"))
        load_checkpoint(tmp_path / "other.safetensors")


@pytest.mark.parametrize("bits", [16, 32, 48, 64, 128])
def test_shipped_crnnh_models_load_and_encode(bits):
    import json
    from importlib import resources

    from musichash.features.audio import log_mel
    from musichash.models.encoder import CodeModel

    model = CodeModel(f"crnnh{bits}")
    t = np.arange(16000 * 6) / 16000
    wave = (0.3 * np.sin(2 * np.pi * 440 * t) * (1 + np.sin(2 * np.pi * 2 * t))).astype(np.float32)
    enc = model.encode(log_mel(wave))
    assert enc.codes.shape[1] == bits // 8 and enc.codes.dtype == np.uint8 and len(enc.codes) == len(enc.times) > 1
    meta = json.loads(resources.files("musichash.models").joinpath(f"weights/crnnh{bits}.json").read_text())
    assert meta["registry_name"] == f"crnnh{bits}" and meta["config"]["bits"] == bits and meta["backbone"] == "MTT_vgg"
    # two thirds of the fit corpus, labelled; the track head: the similarity term, random batches, no pull
    track = ("lambda_s", "lambda_p", "per_file")
    assert meta["data"]["files"] == 114 and meta["data"]["layout"] == "manifest"
    assert [meta["train"][k] for k in track] == [5, 0, 0]
    assert 0 < meta["metrics"]["val_top1"] <= 1
    # the segment head: same data, no similarity term, views pulled together in runs of one file,
    # so it finds its own window more often
    seg = json.loads(resources.files("musichash.models").joinpath(f"weights/crnnh{bits}_segments.json").read_text())
    assert seg["config"]["bits"] == bits and [seg["train"][k] for k in track] == [0, 1, 8]
    # the same settings as the track head but the pull, batches and similarity (and the seed of crnnh64's)
    same = [k for k in seg["train"] if k not in track and not (bits == 64 and k == "seed")]
    assert {k: seg["train"][k] for k in same} == {k: meta["train"][k] for k in same}
    assert model.segment_head is not model.head
    if bits == 64:
        # the identification head (issue 22, recipes/code_models/train_ident.sh): the package-split corpus's
        # calibration music and neverball-data, views of the conditions queries meet, at any offset, some 2 s
        assert seg["data"]["files"] == 157 and seg["data"]["per_class"]["soundtrack=neverball-data"] == 8
        assert {k: seg["cache_config"][k] for k in ("view_kind", "jitter", "short_views")} == \
            {"view_kind": "identification", "jitter": 24, "short_views": 2}
        # its thresholds were fitted for 2 s clips too, at the library hop they were fitted at
        assert seg["thresholds"]["by_length"][0][0] == 2.5 and list(seg["thresholds_by_hop"]) == ["48"]
        return
    assert seg["data"] == meta["data"]
    assert seg["metrics"]["val_top1"] > meta["metrics"]["val_top1"]
    # from a cache with six degraded views of each window (the track heads' has two)
    assert seg["cache_config"]["views"] == 6 and seg["cache"] == "features_views6.h5"


def test_bfloat16_codes_of_crnnh64_keep_their_bits(monkeypatch):
    """The default precision's codes (bfloat16 convolutions on CPUs that have them) against the float32 port's."""
    from synth import make_song

    from musichash.features.audio import log_mel
    from musichash.models import registry
    from musichash.models.encoder import CodeModel

    monkeypatch.delenv("MUSICHASH_PRECISION", raising=False)
    monkeypatch.setattr(registry, "_cpu_has_bf16", lambda: True)
    fast = CodeModel("crnnh64", device="cpu")  # "auto" precision is the CPU's choice; CUDA's is float32
    assert fast.backbone.compute_dtype is torch.bfloat16
    exact = CodeModel("crnnh64", device="cpu", precision="float32")
    mel = log_mel(make_song(5, seconds=20.0))
    a, b = exact.encode(mel), fast.encode(mel)
    flipped = np.unpackbits(a.codes ^ b.codes, axis=1).mean()
    assert flipped < 0.01, flipped  # measured 0.1-0.3 % on the corpus (benchmarks/HISTORY.md)
    np.testing.assert_allclose(b.tags, a.tags, atol=0.01)
    np.testing.assert_allclose(b.relaxed, a.relaxed, atol=0.1)
    assert not np.array_equal(b.relaxed, a.relaxed)  # the bfloat16 path did run


@pytest.mark.gpu
def test_crnnh64_codes_on_cuda_are_the_cpus():
    """float32 on CUDA gives the CPU's codes; bfloat16 on CUDA moves at most 0.5 % of the bits (issue 23)."""
    from synth import make_song

    from musichash.features.audio import log_mel
    from musichash.models.encoder import CodeModel

    mel = log_mel(make_song(5, seconds=20.0))
    cpu = CodeModel("crnnh64", device="cpu", precision="float32").encode(mel)
    gpu = CodeModel("crnnh64", device="cuda", precision="float32").encode(mel)
    np.testing.assert_array_equal(gpu.codes, cpu.codes)
    np.testing.assert_array_equal(gpu.track_code, cpu.track_code)
    np.testing.assert_allclose(gpu.tags, cpu.tags, atol=1e-3)
    half = CodeModel("crnnh64", device="cuda", precision="bfloat16")
    assert half.backbone.compute_dtype is torch.bfloat16
    flipped = np.unpackbits(half.encode(mel).codes ^ cpu.codes, axis=1).mean()
    assert flipped <= 0.005, flipped
