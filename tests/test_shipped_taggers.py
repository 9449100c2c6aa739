"""Every tagger architecture ships a checkpoint trained on allowed music, small, with its provenance."""

from __future__ import annotations

import torch

from musichash.models.registry import weights_file
from musichash.models.taggers import ARCH_REGISTRY, load_tagger, shipped_taggers


def test_every_architecture_ships_a_checkpoint():
    archs = [n for n, s in ARCH_REGISTRY.items() if not s.test_only]
    assert sorted(shipped_taggers()) == sorted(f"{a}_rendered" for a in archs)


def test_shipped_checkpoints_are_small_load_and_name_their_data():
    for name in shipped_taggers():
        path = weights_file(f"tagger_{name}.safetensors")
        assert path.stat().st_size < 1_000_000, name
        ckpt = load_tagger(name)
        meta = ckpt.meta
        assert meta["arch_name"] == name.removesuffix("_rendered")
        prov = meta["provenance"]
        assert prov["data"].startswith("MIDI renders of benchmarks/corpus.py") and prov["split_files"]["train"] == 105
        assert prov["command"].startswith("python -m benchmarks.bench_taggers ") and prov["manifest_sha256"] == "27e1940fe3c404f0"
        with torch.inference_mode():
            assert ckpt.model(torch.zeros(2, 187, 96)).shape == (2, len(ckpt.names)), name
