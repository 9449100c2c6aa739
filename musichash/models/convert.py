"""Convert the musicnn TensorFlow checkpoints to safetensors state dicts.

The variable names below are the ones TensorFlow's ``tf.compat.v1.layers``
gave the layers in musicnn's ``models.py`` (creation order decides the
``_N`` suffixes). Optimizer slots (``*/Adam*``, ``beta*_power``) are dropped.
"""

from __future__ import annotations

import hashlib
import json
import tempfile
import zipfile
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file

from musichash.models.tfcheckpoint import CheckpointError, read_checkpoint

MUSICNN_MODELS = ("MTT_vgg", "MTT_musicnn", "MSD_vgg", "MSD_musicnn")


def _conv2d(kernel: np.ndarray) -> np.ndarray:
    """TF ``[kh, kw, in, out]`` to torch ``[out, in, kh, kw]``."""
    return kernel.transpose(3, 2, 0, 1)


def _conv1d_over_width(kernel: np.ndarray) -> np.ndarray:
    """A TF ``[7, C, 1, out]`` kernel sliding over time with the full width ``C`` as channels."""
    return kernel[:, :, 0, :].transpose(2, 1, 0)


def _bn(tf: dict[str, np.ndarray], src: str, dst: str) -> dict[str, np.ndarray]:
    return {
        f"{dst}.weight": tf[f"{src}/gamma"],
        f"{dst}.bias": tf[f"{src}/beta"],
        f"{dst}.running_mean": tf[f"{src}/moving_mean"],
        f"{dst}.running_var": tf[f"{src}/moving_variance"],
    }


def vgg_state_dict(tf: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """State dict of :class:`~musichash.models.backbones.VGG` from TF tensors."""
    sd = _bn(tf, "batch_normalization", "bn_in")
    for i in range(5):
        sd[f"convs.{i}.weight"] = _conv2d(tf[f"{i + 1}CNN/kernel"])
        sd[f"convs.{i}.bias"] = tf[f"{i + 1}CNN/bias"]
        sd.update(_bn(tf, f"batch_normalization_{i + 1}", f"bns.{i}"))
    sd["dense.weight"] = tf["dense/kernel"].T
    sd["dense.bias"] = tf["dense/bias"]
    return sd


def musicnn_state_dict(tf: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """State dict of :class:`~musichash.models.backbones.Musicnn` from TF tensors."""
    sd = _bn(tf, "batch_normalization", "bn_in")
    convs = ["timbral.0", "timbral.1", "temporal.0", "temporal.1", "temporal.2"]
    bns = ["timbral_bn.0", "timbral_bn.1", "temporal_bn.0", "temporal_bn.1", "temporal_bn.2"]
    for i, (conv, bn) in enumerate(zip(convs, bns)):
        suffix = f"_{i}" if i else ""
        sd[f"{conv}.weight"] = _conv2d(tf[f"conv2d{suffix}/kernel"])
        sd[f"{conv}.bias"] = tf[f"conv2d{suffix}/bias"]
        sd.update(_bn(tf, f"batch_normalization_{i + 1}", bn))
    for i in range(3):
        sd[f"mid.{i}.weight"] = _conv1d_over_width(tf[f"conv2d_{i + 5}/kernel"])
        sd[f"mid.{i}.bias"] = tf[f"conv2d_{i + 5}/bias"]
        sd.update(_bn(tf, f"batch_normalization_{i + 6}", f"mid_bn.{i}"))
    sd.update(_bn(tf, "batch_normalization_9", "bn_flat"))
    sd["dense.weight"] = tf["dense/kernel"].T
    sd["dense.bias"] = tf["dense/bias"]
    sd.update(_bn(tf, "batch_normalization_10", "bn_dense"))
    sd["out.weight"] = tf["dense_1/kernel"].T
    sd["out.bias"] = tf["dense_1/bias"]
    return sd


def state_dict_from_checkpoint(name: str, prefix: str | Path) -> dict[str, torch.Tensor]:
    """Read a musicnn checkpoint and map it onto our module names."""
    tf = read_checkpoint(prefix)
    mapper = vgg_state_dict if "vgg" in name else musicnn_state_dict
    try:
        sd = mapper(tf)
    except KeyError as e:
        raise CheckpointError(f"{prefix}: no variable {e} — not a {name} checkpoint") from e
    return {k: torch.from_numpy(np.ascontiguousarray(v, dtype=np.float32)) for k, v in sd.items()}


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def convert_musicnn_wheel(source: str | Path, out_dir: str | Path, names: tuple[str, ...] = MUSICNN_MODELS) -> dict:
    """Convert the checkpoints of a musicnn wheel (or its unpacked folder) to safetensors.

    Writes ``<name>.safetensors`` per model, ``PROVENANCE.json`` (wheel name
    and sha256, sha256 of every source file and output) and
    ``LICENSE.musicnn`` into ``out_dir``. Returns the provenance record.
    """
    source, out_dir = Path(source), Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    provenance: dict = {
        "source": source.name,
        "converted": datetime.now(timezone.utc).strftime("%Y-%m-%d"),
        "converter": "musichash.models.convert",
        "models": {},
    }
    with tempfile.TemporaryDirectory() as tmp:
        root = source
        if source.is_file():
            provenance["source_sha256"] = _sha256(source.read_bytes())
            root = Path(tmp)
            try:
                with zipfile.ZipFile(source) as z:
                    z.extractall(root)
            except zipfile.BadZipFile as e:
                raise CheckpointError(f"{source}: not a wheel (zip) file") from e
        pkg = root / "musicnn"
        if not pkg.is_dir():
            raise CheckpointError(
                f"{source}: no musicnn/ folder inside; pass the wheel from `pip download --no-deps musicnn`"
            )
        dist_info = next(root.glob("musicnn-*.dist-info"), None)
        if dist_info is not None:
            provenance["source_version"] = dist_info.name.removeprefix("musicnn-").removesuffix(".dist-info")
        licence = next(root.glob("musicnn-*.dist-info/LICENSE*"), None)
        if licence is not None:
            (out_dir / "LICENSE.musicnn").write_bytes(licence.read_bytes())
        for name in names:
            ckpt = pkg / name
            sd = state_dict_from_checkpoint(name, f"{ckpt}/")
            target = out_dir / f"{name}.safetensors"
            save_file(sd, str(target), metadata={"source": f"musicnn/{name}", "format": "pt"})
            provenance["models"][name] = {
                "files": {
                    f.name: _sha256(f.read_bytes())
                    for f in sorted(ckpt.iterdir())
                    if f.name.startswith((".index", ".data"))
                },
                "safetensors_sha256": _sha256(target.read_bytes()),
                "parameters": int(sum(t.numel() for t in sd.values())),
            }
    (out_dir / "PROVENANCE.json").write_text(json.dumps(provenance, indent=2) + "\n")
    return provenance
