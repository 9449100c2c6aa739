"""CRNNH head and losses on synthetic maps (tiny configs, a few optimiser steps)."""

import numpy as np
import pytest
import torch

from musichash.models.crnnh import CRNNH, CRNNHLoss, balance_loss, pairwise_loss, pyramid, quantization_loss

SHAPES = {"pool1": (92, 48), "pool2": (46, 24), "pool3": (23, 12), "pool4": (11, 6), "pool5": (2, 1)}


def fake_maps(b, c=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    return {k: torch.randn(b, c, *hw, generator=g) for k, hw in SHAPES.items()}


def test_pyramid_shape_and_selection_order():
    maps = fake_maps(3)
    seq = pyramid(maps, grid=(4, 2), n_select=2)
    assert seq.shape == (3, 5, 2 * 4 * 2)
    # a channel equal to the layer mean is the most similar one: it comes first
    m = {k: v.clone() for k, v in maps.items()}
    p1 = m["pool1"]
    p1[:, 3] = p1[:, :3].mean(dim=1) * 4 / 3  # makes channel 3 proportional to the mean over all 4
    resized = torch.nn.functional.interpolate(p1, size=(4, 2), mode="bilinear", align_corners=False)
    first = pyramid(m, grid=(4, 2), n_select=2)[:, 0, :8]
    assert torch.allclose(first, resized[:, 3].flatten(1), atol=1e-6)


def test_pyramid_pads_when_fewer_channels_than_asked():
    seq = pyramid(fake_maps(2, c=3), grid=(2, 2), n_select=5)
    assert seq.shape == (2, 5, 20)
    assert torch.all(seq[:, :, 12:] == 0)


def test_codes_are_exactly_plus_minus_one_and_pack():
    model = CRNNH(bits=16, n_classes=5, grid=(4, 2), n_select=2, hidden=8).eval()
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


def test_tiny_config_trains_with_falling_loss():
    torch.manual_seed(0)
    n, n_classes = 64, 4
    labels = torch.arange(n) % n_classes
    base = fake_maps(n_classes, seed=3)
    # each class has its own maps; items are noisy copies, and a "view" is another noisy copy
    maps = {k: v[labels] + 0.3 * torch.randn(n, *v.shape[1:]) for k, v in base.items()}
    view = {k: v[labels] + 0.3 * torch.randn(n, *v.shape[1:]) for k, v in base.items()}
    model = CRNNH(bits=16, n_classes=n_classes, grid=(4, 2), n_select=2, hidden=16)
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
    model = CRNNH(bits=32, n_classes=3, grid=(4, 2), n_select=2, hidden=8).eval()
    path = tmp_path / "m.safetensors"
    save_checkpoint(model, path, {"registry_name": "crnnh_test", "metrics": {"map": 0.5}})
    back = load_checkpoint(path)
    maps = fake_maps(5)
    with torch.no_grad():
        assert torch.equal(model(maps).relaxed, back(maps).relaxed)
    meta = json.loads(path.with_suffix(".json").read_text())
    assert meta["config"]["bits"] == 32 and meta["registry_name"] == "crnnh_test" and meta["metrics"] == {"map": 0.5}
    assert path.read_bytes()[:8] != b"\x80\x04\x95"  # not a pickle
    with pytest.raises(ValueError, match="not a CRNNH checkpoint"):
        from safetensors.torch import save_file

        save_file({"x": torch.zeros(1)}, str(tmp_path / "other.safetensors"))
        load_checkpoint(tmp_path / "other.safetensors")
