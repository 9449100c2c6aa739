"""Torch models: the pretrained musicnn backbones, their registry and weight conversion."""

from musichash.models.backbones import VGG, BackboneOutput, Musicnn, WindowBatch
from musichash.models.registry import (
    DEFAULT_CODE_MODEL,
    DEFAULT_TAGGER,
    REGISTRY,
    ModelError,
    ModelSpec,
    build_backbone,
    get_spec,
    tag_names,
)

__all__ = [
    "DEFAULT_CODE_MODEL",
    "DEFAULT_TAGGER",
    "REGISTRY",
    "VGG",
    "BackboneOutput",
    "ModelError",
    "ModelSpec",
    "Musicnn",
    "WindowBatch",
    "build_backbone",
    "get_spec",
    "tag_names",
]
