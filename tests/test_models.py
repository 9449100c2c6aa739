import hashlib
import json
import shutil
from importlib import resources
from pathlib import Path

import numpy as np
import pytest
import torch

from musichash.models import REGISTRY, ModelError, build_backbone, get_spec, tag_names
from musichash.models.backbones import WINDOW_FRAMES, window_starts
from musichash.models.tfcheckpoint import CheckpointError, read_checkpoint, read_index

FIXTURES = Path(__file__).parent / "fixtures"
TINY = FIXTURES / "tiny_ckpt"


def test_reads_real_tensorflow_checkpoint():
    tensors = read_checkpoint(TINY / "model")
    expected = {k.replace("|", "/"): v for k, v in np.load(TINY / "expected.npz").items()}
    assert set(tensors) == set(expected)
    for name, value in expected.items():
        assert tensors[name].dtype == value.dtype, name
        assert tensors[name].shape == value.shape, name
        np.testing.assert_array_equal(tensors[name], value, err_msg=name)


def test_index_lists_shapes_without_reading_data():
    entries = read_index(TINY / "model.index")
    assert entries["conv/kernel"].shape == (3, 3, 2, 4)
    assert entries["scalar"].shape == ()


@pytest.mark.parametrize(
    "damage, message",
    [
        (lambda d: d[: len(d) // 2], "bad magic"),
        (lambda d: d[:10], "too short"),
        (lambda d: d[:-8] + b"\0" * 8, "bad magic"),
    ],
)
def test_damaged_index_raises(tmp_path, damage, message):
    shutil.copy(TINY / "model.data-00000-of-00001", tmp_path)
    (tmp_path / "model.index").write_bytes(damage((TINY / "model.index").read_bytes()))
    with pytest.raises(CheckpointError, match=message):
        read_checkpoint(tmp_path / "model")


def test_missing_or_truncated_data_shard_raises(tmp_path):
    shutil.copy(TINY / "model.index", tmp_path)
    with pytest.raises(CheckpointError, match="data shard 0 is missing"):
        read_checkpoint(tmp_path / "model")
    data = (TINY / "model.data-00000-of-00001").read_bytes()
    (tmp_path / "model.data-00000-of-00001").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated"):
        read_checkpoint(tmp_path / "model")


def test_shipped_weights_match_provenance():
    weights = resources.files("musichash.models").joinpath("weights")
    provenance = json.loads(weights.joinpath("PROVENANCE.json").read_text())
    assert provenance["source_version"] == "0.1.0"
    assert "Permission to use, copy, modify" in weights.joinpath("LICENSE.musicnn").read_text()  # ISC text
    for name, rec in provenance["models"].items():
        data = weights.joinpath(f"{name}.safetensors").read_bytes()
        assert hashlib.sha256(data).hexdigest() == rec["safetensors_sha256"]
        model = build_backbone(name)  # strict load: every tensor has a home
        assert sum(p.numel() for p in model.state_dict().values() if p.dtype.is_floating_point) == rec["parameters"]


def test_every_real_model_is_registered_with_weights_and_vocabulary():
    for spec in REGISTRY.values():
        assert len(tag_names(spec.vocabulary)) == 50
        assert spec.test_only == (spec.weights is None)
    assert tag_names("MTT")[:3] == ("guitar", "classical", "slow")


def test_building_a_model_leaves_the_global_rng_alone():
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    build_backbone("unittest_vgg")
    torch.testing.assert_close(torch.rand(3), expected)


def test_vgg_convolutions_are_channels_last_and_agree_with_nchw():
    net = build_backbone("unittest_vgg")
    assert all(c.weight.is_contiguous(memory_format=torch.channels_last) for c in net.convs)
    x = torch.randn(2, WINDOW_FRAMES, 96, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        nhwc = net(x).logits
        nchw = net.to(memory_format=torch.contiguous_format)(x).logits
    torch.testing.assert_close(nhwc, nchw, atol=1e-5, rtol=0)


def test_unknown_model_names_the_choices():
    with pytest.raises(ModelError, match="unknown model 'nope'; choose one of: MTT_musicnn"):
        get_spec("nope")


def test_window_starts_cover_the_track():
    assert window_starts(100, 176, 16) == [0]
    assert window_starts(WINDOW_FRAMES, 176, 16) == [0]
    starts = window_starts(1000, 176, 16)
    assert all(s % 16 == 0 for s in starts)
    assert 1000 - (starts[-1] + WINDOW_FRAMES) < 176
    with pytest.raises(ValueError):
        window_starts(1000, 100, 16)


@pytest.mark.parametrize("name", ["unittest_vgg", "unittest_musicnn"])
def test_streamed_windows_do_not_depend_on_chunking(name):
    model = build_backbone(name)
    mel = torch.rand(1500, 96, generator=torch.Generator().manual_seed(0)) * 3
    whole = list(model.iter_windows(mel, 176, chunk_windows=1000))
    for chunk_windows, chunk_frames in [(1, 97), (3, 1500), (5, 401)]:
        parts = list(model.iter_windows(mel.split(chunk_frames), 176, chunk_windows=chunk_windows))
        assert torch.cat([p.starts for p in parts]).tolist() == whole[0].starts.tolist()
        torch.testing.assert_close(torch.cat([p.logits for p in parts]), whole[0].logits, atol=1e-5, rtol=0)


@pytest.mark.parametrize("name", ["unittest_vgg", "unittest_musicnn"])
def test_a_one_window_track_equals_patch_inference(name):
    """The window cut from the track maps must be exactly the patch (no off-by-one in pool strides)."""
    model = build_backbone(name)
    patch = torch.rand(WINDOW_FRAMES, 96, generator=torch.Generator().manual_seed(1)) * 3
    ref = model(patch.unsqueeze(0))
    track = list(model.iter_windows(patch, 176))
    assert track[0].starts.tolist() == [0]
    torch.testing.assert_close(track[0].logits, ref.logits, atol=1e-5, rtol=0)


def test_short_track_is_repeat_padded_to_one_window():
    model = build_backbone("unittest_vgg")
    short = torch.rand(70, 96)
    [batch] = list(model.iter_windows(short, 176))
    tiled = short.repeat(3, 1)[:WINDOW_FRAMES]
    torch.testing.assert_close(batch.logits, model(tiled.unsqueeze(0)).logits)


@pytest.mark.parametrize("grid", [(8, 4), (4, 2), (16, 3)])
def test_vgg_resizes_window_maps_without_cutting_them(grid):
    """``poolN@HxW`` read from the track's maps equals the cut window's map resized by F.interpolate."""
    import torch.nn.functional as F

    model = build_backbone("unittest_vgg")
    h, w = grid
    want = {f"pool{i}" for i in range(1, 6)} | {f"pool{i}@{h}x{w}" for i in range(1, 6)}
    mel = torch.rand(900, 96, generator=torch.Generator().manual_seed(2)) * 3
    batches = list(model.iter_windows(mel, 48, chunk_windows=7, features=want))
    patches = model.head(model.trunk(torch.rand(3, WINDOW_FRAMES, 96)), [0, 0, 0], frozenset(want))
    for feats in [b.features for b in batches] + [patches.features]:
        for i in range(1, 6):
            resized = F.interpolate(feats[f"pool{i}"], size=grid, mode="bilinear", align_corners=False)
            assert feats[f"pool{i}@{h}x{w}"].shape == resized.shape
            torch.testing.assert_close(feats[f"pool{i}@{h}x{w}"], resized, atol=1e-5, rtol=1e-5)
    # asked for alone, the resized maps come without the cut ones
    [first, *_] = model.iter_windows(mel, 48, features={"pool1@8x4"})
    assert set(first.features) == {"pool1@8x4"}
    with pytest.raises(ValueError, match="'pool1@8by4': the grid must be HxW, for example pool1@8x4"):
        next(model.iter_windows(mel, 48, features={"pool1@8by4"}))
    with pytest.raises(ValueError, match=r"'conv2@8x4': only pool1 \.\.\. pool5 come resized"):
        next(model.iter_windows(mel, 48, features={"conv2@8x4"}))


def test_vgg_exposes_the_five_pooled_maps():
    model = build_backbone("unittest_vgg")
    out = model(torch.rand(2, WINDOW_FRAMES, 96))
    shapes = {k: tuple(v.shape[2:]) for k, v in out.features.items()}
    assert shapes == {"pool1": (92, 48), "pool2": (46, 24), "pool3": (23, 12), "pool4": (11, 6), "pool5": (2, 1)}
    assert out.logits.shape == (2, 50)


def test_vgg_block_order_is_exact():
    """pool-then-ReLU/BN (and pool1's strided conv) equal the original conv-ReLU-BN-pool bit for bit."""
    import torch.nn.functional as F

    torch.manual_seed(0)
    model = build_backbone("unittest_vgg")
    with torch.no_grad():
        for bn in model.bns:  # both signs of BN scale, as the real weights have
            bn.weight.copy_(torch.randn_like(bn.weight))
            bn.running_mean.copy_(torch.randn_like(bn.running_mean))
            bn.running_var.uniform_(0.5, 2.0)
    h = torch.randn(2, model.n_filters, 40, 24)
    h0 = torch.randn(2, 1, 80, 96)
    with torch.inference_mode():
        for i in range(5):
            x = h0 if i == 0 else h
            kernel, stride = model.POOLS[i]
            plain = F.max_pool2d(model.bns[i](F.relu(model.convs[i](x))), kernel, stride)
            assert torch.equal(model._block(i, x), plain), i


def test_precision_is_resolved_from_the_argument_the_environment_and_the_cpu(monkeypatch):
    from musichash.models import registry
    from musichash.models.registry import resolve_precision

    monkeypatch.delenv("MUSICHASH_PRECISION", raising=False)
    assert resolve_precision("float32") is torch.float32
    assert resolve_precision("bfloat16") is torch.bfloat16
    for native, expected in [(True, torch.bfloat16), (False, torch.float32)]:
        monkeypatch.setattr(registry, "_cpu_has_bf16", lambda native=native: native)
        assert resolve_precision("auto") is expected and resolve_precision(None) is expected
    assert resolve_precision("auto", "cuda") is torch.float32  # not measured on a GPU: the port's float32
    monkeypatch.setenv("MUSICHASH_PRECISION", "float32")
    assert resolve_precision("auto") is torch.float32
    assert resolve_precision("bfloat16") is torch.bfloat16  # an explicit choice wins over the environment
    monkeypatch.setenv("MUSICHASH_PRECISION", "fp8")
    with pytest.raises(ModelError, match=r"^\$MUSICHASH_PRECISION 'fp8' is not one of: auto, float32, bfloat16$"):
        resolve_precision("auto")
    with pytest.raises(ModelError, match=r"^precision 'half' is not one of: auto, float32, bfloat16$"):
        resolve_precision("half")


def test_bfloat16_vgg_runs_its_convolutions_in_bfloat16_close_to_float32(monkeypatch):
    import torch.nn.functional as F

    from musichash.models import backbones

    exact, fast = build_backbone("unittest_vgg"), build_backbone("unittest_vgg", precision="bfloat16")
    assert exact.compute_dtype is torch.float32 and fast.compute_dtype is torch.bfloat16
    seen, plain = [], F.conv2d

    def conv2d(x, *args, **kwargs):
        seen.append((x.dtype, x.stride()))
        return plain(x, *args, **kwargs)

    monkeypatch.setattr(backbones.F, "conv2d", conv2d)
    mel = torch.rand(700, 96, generator=torch.Generator().manual_seed(3)) * 3
    [a] = exact.iter_windows(mel, 48, features={"pool1@8x4", "pool5"})
    n = len(seen)
    [b] = fast.iter_windows(mel, 48, features={"pool1@8x4", "pool5"})
    assert {dt for dt, _ in seen[:n]} == {torch.float32} and {dt for dt, _ in seen[n:]} == {torch.bfloat16}
    # the one-channel input goes to the first conv strided as NHWC (oneDNN's fast path)
    assert seen[0][1][1] == 1 and seen[n][1][1] == 1
    assert b.logits.dtype == torch.float32 and not torch.equal(a.logits, b.logits)
    torch.testing.assert_close(b.logits, a.logits, atol=0.05, rtol=0.02)
    for key in ("pool1@8x4", "pool5"):
        assert b.features[key].dtype == torch.float32
        torch.testing.assert_close(b.features[key], a.features[key], atol=0.05, rtol=0.02)


def test_musicnn_ignores_the_precision():
    x = torch.rand(2, WINDOW_FRAMES, 96, generator=torch.Generator().manual_seed(4))
    a = build_backbone("unittest_musicnn")(x).logits
    assert torch.equal(build_backbone("unittest_musicnn", precision="bfloat16")(x).logits, a)


@pytest.mark.parametrize("kernel, stride", [((4, 1), (2, 1)), ((2, 2), (2, 2)), ((4, 4), (4, 4)), ((3, 2), (2, 1))])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_max_pool_by_views_equals_max_pool2d(kernel, stride, dtype):
    import torch.nn.functional as F

    from musichash.models.backbones import _max_pool

    for shape in [(1, 8, 37, 12), (3, 8, 11, 6), (2, 8, 4, 4)]:
        y = torch.randn(shape, generator=torch.Generator().manual_seed(5)).to(dtype)
        for x in (y, y.contiguous(memory_format=torch.channels_last)):
            assert torch.equal(_max_pool(x, kernel, stride), F.max_pool2d(x, kernel, stride))
