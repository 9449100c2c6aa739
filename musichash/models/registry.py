"""Named model configurations, and building models from them.

A model is known by its name only; its architecture, config and weights file
come from here (weights ship as package data, never pickled classes).
The ``unittest_*`` configs are tiny, randomly initialised and seeded: for
fast tests, never for real use.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file

from musichash.errors import MusichashError
from musichash.models.backbones import VGG, Musicnn, _Backbone

WEIGHTS_PACKAGE = "musichash.models"
DEFAULT_TAGGER = "MTT_musicnn"
DEFAULT_CODE_MODEL = "crnnh64"
#: what ``resolve_precision`` takes
PRECISIONS = ("auto", "float32", "bfloat16")
#: bit lengths of the shipped interim code models
INTERIM_BITS = (16, 32, 48, 64, 128)
#: bit lengths of the shipped CRNNH code models (recipes/code_models/train_crnnh.sh)
CRNNH_BITS = (16, 32, 48, 64, 128)


#: interim code model -> the CRNNH model of the same size that replaces it
SUPERSEDED = {f"interim_vgg_itq{bits}": f"crnnh{bits}" for bits in INTERIM_BITS if bits in CRNNH_BITS}


def superseded_by(code_model: str) -> str | None:
    """The CRNNH model that replaces an interim code model (None for any other model)."""
    return SUPERSEDED.get(code_model)


class ModelError(MusichashError):
    """Unknown model name, or its weights are missing or do not fit."""


@dataclass(frozen=True)
class ModelSpec:
    """One registered model. ``kind`` is what it produces: ``tagger`` (tags and feature maps)
    or ``hash`` (binary codes made from the feature maps of the tagger named ``backbone``).

    For ``hash`` models with ``arch == "binarizer"``, ``weights`` is a fitted linear
    binarizer of the backbone's ``feature`` map (``None``: a seeded random projection,
    test configs only).

    For ``arch == "crnnh"``, ``weights`` is the head whose codes keep similar music
    together (track codes, ``similar``, ``recommend``, ``evaluate``) and
    ``segment_weights``, when set, a second head trained only to find clips
    (segment codes: ``search`` and ``dedup``); without it one head makes both.
    """

    name: str
    kind: str
    arch: str
    vocabulary: str
    description: str
    weights: str | None = None
    config: dict[str, Any] = field(default_factory=dict)
    bits: int | None = None
    test_only: bool = False
    backbone: str | None = None
    feature: str | None = None
    segment_weights: str | None = None


REGISTRY: dict[str, ModelSpec] = {
    s.name: s
    for s in [
        ModelSpec(
            "MTT_musicnn", "tagger", "musicnn", "MTT",
            "musicnn trained on MagnaTagATune (ROC-AUC 0.907); default tagger",
            weights="MTT_musicnn.safetensors",
        ),
        ModelSpec(
            "MTT_vgg", "tagger", "vgg", "MTT",
            "VGG-like CNN trained on MagnaTagATune (ROC-AUC 0.903); five pooled maps for CRNNH",
            weights="MTT_vgg.safetensors",
        ),
        ModelSpec(
            "MSD_musicnn", "tagger", "musicnn", "MSD",
            "musicnn trained on the Million Song Dataset's top-50 tags",
            weights="MSD_musicnn.safetensors",
        ),
        ModelSpec(
            "MSD_vgg", "tagger", "vgg", "MSD",
            "VGG-like CNN trained on the Million Song Dataset's top-50 tags",
            weights="MSD_vgg.safetensors",
        ),
        *(
            ModelSpec(
                f"interim_vgg_itq{bits}", "hash", "binarizer", "MTT",
                f"interim codes: MTT_vgg pool5 features, {bits}-bit noise-robust LDA + ITQ fitted on allowed music",
                weights=f"interim_vgg_itq{bits}.safetensors", bits=bits, backbone="MTT_vgg", feature="pool5",
                # match threshold: 95 % of out-of-library clips rejected on the fit corpus
                # (benchmarks/HISTORY.md); only the 64-bit model is calibrated
                config={"match_threshold": 0.219, "thresholds_source": "the fit corpus (95 % of out-of-library clips)"}
                if bits == 64 else {},
            )
            for bits in INTERIM_BITS
        ),
        *(
            ModelSpec(
                f"crnnh{bits}", "hash", "crnnh", "MTT",
                f"CRNNH: MTT_vgg pool1-5 pyramid, LSTM hash heads for clips and for similarity, {bits} bits, "
                "trained on allowed music" + ("; default code model" if bits == 64 else ""),
                weights=f"crnnh{bits}.safetensors", segment_weights=f"crnnh{bits}_segments.safetensors", bits=bits, backbone="MTT_vgg",
            )
            for bits in CRNNH_BITS
        ),
        ModelSpec(
            "unittest_vgg", "tagger", "vgg", "MTT", "tiny random VGG for tests",
            config={"n_filters": 4}, test_only=True,
        ),
        ModelSpec(
            "unittest_musicnn", "tagger", "musicnn", "MTT", "tiny random musicnn for tests",
            config={"n_filt_frontend": 0.1, "n_filt_midend": 4, "n_units": 8}, test_only=True,
        ),
        ModelSpec(
            "unittest_crnnh", "hash", "crnnh", "MTT", "tiny random CRNNH for tests (unittest_vgg maps, 32 bits)",
            bits=32, backbone="unittest_vgg", test_only=True,
            config={"dedup_threshold": 0.5, "crnnh": {"grid": [4, 2], "n_select": 2, "hidden": 8, "channels": 4}},
        ),
        ModelSpec(
            "unittest_hash", "hash", "binarizer", "MTT", "tiny random codes for tests (unittest_vgg + 16-bit LSH)",
            bits=16, backbone="unittest_vgg", feature="pool5", test_only=True,
            # half a track's windows aligned: copies and trims pass, and these songs' random codes do not
            # line up by chance (tests/test_engine.py, test_dedup_finds_a_trimmed_copy_by_its_codes)
            config={"dedup_threshold": 0.5},
        ),
    ]
}

ARCHS: dict[str, type[_Backbone]] = {"vgg": VGG, "musicnn": Musicnn}


def get_spec(name: str) -> ModelSpec:
    """A registered model, or a trained CRNNH checkpoint given by its .safetensors path."""
    if name not in REGISTRY and name.endswith(".safetensors"):
        return _checkpoint_spec(name)
    try:
        return REGISTRY[name]
    except KeyError:
        known = ", ".join(n for n, s in REGISTRY.items() if not s.test_only)
        raise ModelError(f"unknown model {name!r}; choose one of: {known} (see `musichash models`)") from None


def _checkpoint_spec(name: str) -> ModelSpec:
    from pathlib import Path

    path = Path(name).expanduser()
    meta_path = path.with_suffix(".json")
    if not path.is_file() or not meta_path.is_file():
        raise ModelError(f"{name}: no CRNNH checkpoint here (needs the .safetensors and its .json); train one with `musichash train`")
    meta = json.loads(meta_path.read_text())
    return ModelSpec(
        str(path.resolve()), "hash", "crnnh", "MTT", "trained CRNNH checkpoint",
        weights=str(path.resolve()), bits=int(meta["config"]["bits"]), backbone=meta.get("backbone", "MTT_vgg"),
    )


def weights_digest(spec: ModelSpec) -> str:
    """What made a code model's codes: sha256 (16 hex digits) of its weight files, in order.

    A library records it when it is created and refuses a model whose
    digest differs (retrained weights under the same name), so codes of two
    sets of weights are never mixed. Seeded test heads count as ``seeded``.
    """
    h = hashlib.sha256()
    for w in (spec.weights, spec.segment_weights):
        if w is None:
            h.update(b"seeded")
            continue
        path = weights_file(w)
        try:
            st = path.stat()
        except OSError:
            raise missing_weights(spec, w) from None
        h.update(_file_digest(str(path), st.st_size, st.st_mtime_ns).encode())
    return h.hexdigest()[:16]


@lru_cache(maxsize=64)
def _file_digest(path: str, _size: int, _mtime_ns: int) -> str:
    """sha256 of one file; size and mtime are part of the cache key, so a rewritten file is read again."""
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


@lru_cache(maxsize=None)
def tag_names(vocabulary: str) -> tuple[str, ...]:
    """The tag vocabulary (``MTT`` or ``MSD``), in the order of the model's outputs."""
    text = weights_file("tags.json").read_text()
    return tuple(json.loads(text)[vocabulary])


def weights_file(filename: str) -> Path:
    """The one weights lookup: a file shipped in ``musichash/models/weights/``, or an absolute path
    (a trained checkpoint) as it is. The file may not exist; callers say what is missing."""
    if Path(filename).is_absolute():
        return Path(filename)
    return Path(str(resources.files(WEIGHTS_PACKAGE).joinpath(f"weights/{filename}")))


def missing_weights(spec: ModelSpec, filename: str, fix: str = "reinstall musichash") -> ModelError:
    return ModelError(f"weights for {spec.name} are missing ({filename}); {fix}")


def build_backbone(name: str, device: str | torch.device = "cpu", precision: str = "float32") -> _Backbone:
    """Build a registered backbone in inference mode, weights loaded.

    ``precision`` (see :func:`resolve_precision`): the VGG's convolutions in float32 (the port,
    exact) or bfloat16; musicnn always runs in float32.
    """
    dtype = resolve_precision(precision, device)
    spec = get_spec(name)
    if spec.kind != "tagger":
        raise ModelError(f"{name} is a {spec.kind} model, not a backbone; its backbone is {spec.backbone}")
    n_tags = len(tag_names(spec.vocabulary))
    with torch.random.fork_rng(devices=[]):  # test configs are random but reproducible; callers' RNG untouched
        torch.manual_seed(0)
        model = ARCHS[spec.arch](n_tags=n_tags, **spec.config)
    if spec.weights is not None:
        path = weights_file(spec.weights)
        if not path.is_file():
            raise missing_weights(spec, spec.weights, "reinstall musichash, or convert them: "
                                  "musichash convert-weights musicnn-0.1.0-py3-none-any.whl")
        state = load_file(str(path))
        try:
            model.load_state_dict(state, strict=True)
        except RuntimeError as e:
            raise ModelError(f"weights {spec.weights} do not fit model {name}: {e}") from e
    model = model.eval().to(device)
    if spec.arch == "vgg":
        # NHWC convolutions: on 2 CPU cores indexing with crnnh64 went from 48x to 56x real time and a
        # warm 10 s query from 152 to 131 ms (benchmarks/HISTORY.md, "Channels-last VGG"), logits
        # within 1e-5, the same codes; musicnn's tall thin kernels run slower that way
        model = model.to(memory_format=torch.channels_last)
        model.compute_dtype = dtype
    return model


def resolve_precision(precision: str | None = "auto", device: str | torch.device = "cpu") -> torch.dtype:
    """The dtype of a VGG's convolutions: ``"float32"``, ``"bfloat16"``, or ``None`` / ``"auto"``:
    ``$MUSICHASH_PRECISION`` if set, else bfloat16 on a CPU with native bfloat16 dot products
    (AVX512-BF16 or AMX) and float32 elsewhere.

    bfloat16 runs the VGG's convolutions about 1.6x as fast on such a CPU and moves 0.1-0.3 % of a
    crnnh64 library's segment code bits (benchmarks/HISTORY.md, "bfloat16 convolutions"), so codes
    made either way can be searched together.
    """
    if precision in (None, "auto"):
        precision = os.environ.get("MUSICHASH_PRECISION") or "auto"
        source = "$MUSICHASH_PRECISION"
    else:
        source = "precision"
    if precision == "auto":
        native = torch.device(device).type == "cpu" and _cpu_has_bf16()
        return torch.bfloat16 if native else torch.float32
    if precision not in PRECISIONS:
        raise ModelError(f"{source} {precision!r} is not one of: {', '.join(PRECISIONS)}")
    return getattr(torch, precision)


def _cpu_has_bf16() -> bool:
    cpu = torch.cpu
    return any(getattr(cpu, f, lambda: False)() for f in ("_is_avx512_bf16_supported", "_is_amx_tile_supported"))


