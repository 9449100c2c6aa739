"""Trainable taggers and genre networks from the seed papers, as named configs.

Every network takes model log-mel windows ``x: float [B, T, 96]`` (3 s: T = 187,
``features.audio.MelFrontend``) and returns logits ``float [B, n_out]``; the
inputs derived from the mel (HPSS parts, chroma, MFCC) are computed inside, on
the mel's device (``features.derived``). Each has ``cam_layer``: the module whose
output ``[B, C, T', F']`` Grad-CAM reads (``models.explain``).

- ``fcn3`` .. ``fcn7``: Choi, Fazekas & Sandler 2016, fully convolutional
  networks: 3x3 convolutions, batch norm, ReLU and max pooling only, sigmoid
  outputs. Their pooling here is chosen for 187 x 96 windows (the paper used
  29 s, 96 x 1366) and their widths are small (the paper's FCN-4 has
  128/384/768/2048 channels).
- ``crnn_parallel``: a CNN branch over the mel and a bidirectional GRU branch
  over the mel sequence side by side, their summaries concatenated before the
  output layer (the 2020 thesis' parallel CNN-RNN).
- ``hpss_cnn``: one CNN over the mel and its harmonic and percussive parts as
  three input channels (the CRNNH thesis, part one).
- ``multi_input``: one branch per input (mel, harmonic, percussive, chroma,
  MFCC); after the first stage the branches exchange features in one of
  ``INTERACTIONS`` (the 2023 thesis' middle-level interaction), then finish
  separately and are concatenated.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from musichash.errors import MusichashError
from musichash.features.derived import INPUT_BANDS, derive

#: how multi_input's branches exchange features at the middle layer (z_i: branch i's [B, C, T'] map):
#: ``concat``: z_i + conv1x1_i(concat of the others) (learned exchange); ``sum``: z_i + mean of the
#: others (no parameters); ``gate``: z_i * sigmoid(conv1x1_i(mean of the others)) (each branch
#: re-weighted by the others); ``none``: no exchange (the ablation)
INTERACTIONS = ("concat", "sum", "gate", "none")


class ArchError(MusichashError):
    """Unknown architecture name or config."""


def _block(c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True))


def _pool(k: tuple[int, int], size: tuple[int, int]) -> tuple[int, int]:
    """A pooling kernel no larger than the map it pools (tiny inputs in tests)."""
    return (max(1, min(k[0], size[0])), max(1, min(k[1], size[1])))


class _Conv2dStack(nn.Module):
    """Conv blocks each followed by max pooling. x: [B, C, T, F] -> [B, C_last, T', F'].

    ``last`` is the last block's output before its pooling (Grad-CAM's layer).
    """

    def __init__(self, c_in: int, channels: list[int], pools: list[tuple[int, int]]):
        super().__init__()
        if len(channels) != len(pools):
            raise ArchError(f"{len(channels)} channel counts for {len(pools)} pooling sizes")
        # batch norm of the input first, as Choi et al.'s FCNs: the log-mel's level varies with the recording
        self.norm = nn.BatchNorm2d(c_in)
        self.blocks = nn.ModuleList(_block(a, b) for a, b in zip([c_in, *channels[:-1]], channels))
        self.pools = [tuple(p) for p in pools]

    @property
    def last(self) -> nn.Module:
        return self.blocks[-1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.norm(x)
        for block, k in zip(self.blocks, self.pools):
            x = block(x)
            x = nn.functional.max_pool2d(x, _pool(k, x.shape[-2:]))
        return x


class FCN(nn.Module):
    """Choi et al.'s FCN-n: n conv blocks, global max pooling over what is left, one linear output."""

    inputs = ("mel",)

    def __init__(self, n_out: int, channels: list[int], pools: list[list[int]], dropout: float = 0.3):
        super().__init__()
        self.convs = _Conv2dStack(len(self.inputs), channels, [tuple(p) for p in pools])
        self.drop = nn.Dropout(dropout)
        self.out = nn.Linear(channels[-1], n_out)

    @property
    def cam_layer(self) -> nn.Module:
        return self.convs.last

    def stacked(self, x: torch.Tensor) -> torch.Tensor:
        """The input channels the convolutions read, ``[B, len(inputs), T, 96]``."""
        return x.float()[:, None]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = self.convs(self.stacked(x))
        return self.out(self.drop(z.amax(dim=(2, 3))))


class HPSSCNN(FCN):
    """One CNN over [mel, harmonic, percussive] stacked as three input channels."""

    inputs = ("mel", "harmonic", "percussive")

    def stacked(self, x: torch.Tensor) -> torch.Tensor:
        parts = derive(x, self.inputs)
        return torch.stack([parts[n] for n in self.inputs], dim=1)


class CRNNParallel(nn.Module):
    """A CNN branch and a bidirectional GRU branch over the same mel, concatenated.

    The GRU reads the mel averaged over ``rnn_pool`` frames and projected to ``rnn_hidden``
    features; its summary is its last hidden states in both directions.
    """

    inputs = ("mel",)

    def __init__(self, n_out: int, channels: list[int], pools: list[list[int]], rnn_hidden: int = 64,
                 rnn_pool: int = 4, dropout: float = 0.3):
        super().__init__()
        self.convs = _Conv2dStack(1, channels, [tuple(p) for p in pools])
        self.rnn_pool = rnn_pool
        self.proj = nn.Linear(INPUT_BANDS["mel"], rnn_hidden)
        self.rnn = nn.GRU(rnn_hidden, rnn_hidden, batch_first=True, bidirectional=True)
        self.drop = nn.Dropout(dropout)
        self.out = nn.Linear(channels[-1] + 2 * rnn_hidden, n_out)

    @property
    def cam_layer(self) -> nn.Module:
        return self.convs.last

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.float()
        cnn = self.convs(x[:, None]).amax(dim=(2, 3))
        seq = nn.functional.avg_pool1d(x.transpose(1, 2), self.rnn_pool, ceil_mode=True).transpose(1, 2)
        _, h = self.rnn(torch.tanh(self.proj(seq)))  # h: [2, B, hidden]
        rnn = torch.cat([h[0], h[1]], dim=1)
        return self.out(self.drop(torch.cat([cnn, rnn], dim=1)))


class MultiInput(nn.Module):
    """Parallel branches over several inputs with a middle-level feature exchange (``INTERACTIONS``).

    Stage one, per input: 2-D conv blocks over ``[B, 1, T, bands]``, then max over bands -> ``[B, C, T']``.
    The exchange. Stage two, per branch: 1-D conv blocks over time, global max. Branch summaries
    concatenated -> linear.
    """

    def __init__(self, n_out: int, inputs: list[str], channels: int = 32, stage1: int = 2, stage2: int = 2,
                 interaction: str = "concat", dropout: float = 0.3):
        super().__init__()
        if interaction not in INTERACTIONS:
            raise ArchError(f"unknown interaction {interaction!r}; choose one of: {', '.join(INTERACTIONS)}")
        unknown = [n for n in inputs if n not in INPUT_BANDS]
        if unknown or len(inputs) < 2:
            raise ArchError(f"multi_input needs 2 or more inputs from {', '.join(INPUT_BANDS)}, got {inputs}")
        self.inputs = tuple(inputs)
        self.interaction = interaction
        n = len(inputs)
        self.stage1 = nn.ModuleList(_Conv2dStack(1, [channels] * stage1, [(2, 2)] * stage1) for _ in inputs)
        if interaction == "concat":
            self.mix = nn.ModuleList(nn.Conv1d(channels * (n - 1), channels, 1) for _ in inputs)
        elif interaction == "gate":
            self.mix = nn.ModuleList(nn.Conv1d(channels, channels, 1) for _ in inputs)
        self.stage2 = nn.ModuleList(
            nn.Sequential(*[m for _ in range(stage2) for m in (
                nn.Conv1d(channels, channels, 3, padding=1, bias=False), nn.BatchNorm1d(channels), nn.ReLU(inplace=True))])
            for _ in inputs
        )
        self.drop = nn.Dropout(dropout)
        self.out = nn.Linear(channels * n, n_out)

    @property
    def cam_layer(self) -> nn.Module:
        """The mel branch's first stage (the only branch laid out over mel bands)."""
        i = self.inputs.index("mel") if "mel" in self.inputs else 0
        return self.stage1[i].last

    def exchange(self, z: list[torch.Tensor]) -> list[torch.Tensor]:
        """The middle-level interaction. z: one [B, C, T'] map per branch."""
        if self.interaction == "none":
            return z
        out = []
        for i, zi in enumerate(z):
            others = [zj for j, zj in enumerate(z) if j != i]
            if self.interaction == "concat":
                out.append(zi + self.mix[i](torch.cat(others, dim=1)))
            elif self.interaction == "sum":
                out.append(zi + torch.stack(others).mean(0))
            else:
                out.append(zi * torch.sigmoid(self.mix[i](torch.stack(others).mean(0))))
        return out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        parts = derive(x, self.inputs)
        z = [s(parts[n][:, None]).amax(dim=3) for s, n in zip(self.stage1, self.inputs)]
        z = self.exchange(z)
        summary = [s(zi).amax(dim=2) for s, zi in zip(self.stage2, z)]
        return self.out(self.drop(torch.cat(summary, dim=1)))


ARCHS: dict[str, type[nn.Module]] = {"fcn": FCN, "crnn_parallel": CRNNParallel, "hpss_cnn": HPSSCNN, "multi_input": MultiInput}

#: FCN pooling (time, bands) for 187 x 96 windows: the bands pool to 1, time to a few frames, then global max
_FCN_POOLS = {
    3: [[3, 4], [4, 4], [4, 6]],
    4: [[2, 4], [2, 4], [3, 3], [4, 2]],
    5: [[2, 2], [2, 2], [2, 3], [3, 4], [4, 2]],
    6: [[2, 2], [2, 2], [2, 2], [2, 3], [2, 2], [3, 2]],
    7: [[2, 2], [2, 2], [2, 2], [2, 2], [2, 3], [2, 2], [2, 1]],
}
_FCN_CHANNELS = {3: [32, 64, 128], 4: [32, 48, 64, 96], 5: [32, 32, 48, 64, 96], 6: [24, 32, 48, 48, 64, 96],
                 7: [24, 32, 32, 48, 48, 64, 96]}
_SMALL = [[2, 4], [2, 4], [3, 3], [4, 2]]


@dataclass(frozen=True)
class ArchSpec:
    """One named tagger architecture: ``arch`` (a key of ``ARCHS``) built with ``config``."""

    name: str
    arch: str
    description: str
    config: dict[str, Any] = field(default_factory=dict)
    test_only: bool = False


def _specs() -> list[ArchSpec]:
    out = [
        ArchSpec(f"fcn{n}", "fcn", f"FCN-{n} (Choi et al. 2016): {n} conv/pool layers over the mel",
                 {"channels": _FCN_CHANNELS[n], "pools": _FCN_POOLS[n]})
        for n in range(3, 8)
    ]
    out += [
        ArchSpec("crnn_parallel", "crnn_parallel", "parallel CNN + bidirectional GRU branches over the mel, concatenated",
                 {"channels": [32, 48, 64, 96], "pools": _SMALL, "rnn_hidden": 64}),
        ArchSpec("hpss_cnn", "hpss_cnn", "CNN over the mel and its harmonic and percussive parts as 3 channels",
                 {"channels": [32, 48, 64, 96], "pools": _SMALL}),
    ]
    inputs = ["mel", "harmonic", "percussive", "chroma", "mfcc"]
    for mode in INTERACTIONS[:3]:
        name = "multi_input" if mode == "concat" else f"multi_input_{mode}"
        out.append(ArchSpec(name, "multi_input", f"mel/HPSS/chroma/MFCC branches, middle-level interaction: {mode}",
                            {"inputs": inputs, "channels": 32, "interaction": mode}))
    # tiny configs for tests: same code paths, a few thousand parameters
    tiny = [[4, 4], [4, 4], [4, 6]]
    out += [ArchSpec(f"unittest_fcn{n}", "fcn", f"tiny FCN-{n} for tests", {"channels": [6] * n, "pools": _FCN_POOLS[n]}, True)
            for n in range(3, 8)]
    out += [
        ArchSpec("unittest_crnn_parallel", "crnn_parallel", "tiny parallel CNN-RNN for tests",
                 {"channels": [6, 8, 8], "pools": tiny, "rnn_hidden": 8}, True),
        ArchSpec("unittest_hpss_cnn", "hpss_cnn", "tiny HPSS CNN for tests", {"channels": [6, 8, 8], "pools": tiny}, True),
    ]
    for mode in INTERACTIONS:
        out.append(ArchSpec(f"unittest_multi_input_{mode}", "multi_input", f"tiny multi-input network ({mode}) for tests",
                            {"inputs": ["mel", "harmonic", "chroma", "mfcc"], "channels": 6, "interaction": mode}, True))
    return out


ARCH_REGISTRY: dict[str, ArchSpec] = {s.name: s for s in _specs()}


def arch_spec(name: str) -> ArchSpec:
    try:
        return ARCH_REGISTRY[name]
    except KeyError:
        known = ", ".join(n for n, s in ARCH_REGISTRY.items() if not s.test_only)
        raise ArchError(f"unknown architecture {name!r}; choose one of: {known}") from None


def build_tagger(arch: str, config: dict[str, Any], n_out: int, seed: int = 0) -> nn.Module:
    """A freshly initialised network of ``ARCHS[arch]`` (seeded; the caller's RNG is left alone)."""
    if arch not in ARCHS:
        raise ArchError(f"unknown architecture class {arch!r}; choose one of: {', '.join(ARCHS)}")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        try:
            return ARCHS[arch](n_out=n_out, **config)
        except TypeError as e:
            raise ArchError(f"config {config} does not fit {arch}: {e}") from None


def n_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@dataclass(frozen=True)
class TaggerCheckpoint:
    """A trained tagger: ``model`` in eval mode, its output ``names``, and the JSON sidecar ``meta``
    (``arch_name``, ``arch``, ``config``, ``multilabel``, ``epoch``, ``history``, ``provenance``)."""

    model: nn.Module
    names: tuple[str, ...]
    multilabel: bool
    meta: dict[str, Any]


def sidecar(path: str | Path) -> Path:
    """The JSON next to a checkpoint's ``.safetensors``."""
    return Path(path).with_suffix(".json")


def save_tagger(path: str | Path, model: nn.Module, meta: dict[str, Any]) -> None:
    """Weights as safetensors and ``meta`` as JSON beside them, each written whole then renamed,
    so an interrupted save leaves the previous checkpoint readable."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    tmp = path.with_suffix(".safetensors.tmp")
    save_file(state, str(tmp))
    meta_tmp = path.with_suffix(".json.tmp")
    meta_tmp.write_text(json.dumps(meta, indent=1))
    os.replace(tmp, path)
    os.replace(meta_tmp, sidecar(path))


def shipped_taggers() -> tuple[str, ...]:
    """Names of the trained taggers that ship in ``models/weights/`` as ``tagger_NAME.safetensors``."""
    from musichash.models.registry import weights_file

    folder = weights_file("tags.json").parent
    return tuple(sorted(p.name[len("tagger_"):-len(".safetensors")] for p in folder.glob("tagger_*.safetensors")))


def load_tagger(path: str | Path, device: str | torch.device = "cpu") -> TaggerCheckpoint:
    """A checkpoint written by ``save_tagger`` (``musichash train-tagger``), or the name of a shipped one
    (``shipped_taggers``)."""
    if str(path) in shipped_taggers() and not Path(path).exists():
        from musichash.models.registry import weights_file

        path = weights_file(f"tagger_{path}.safetensors")
    path = Path(path).expanduser()
    meta_path = sidecar(path)
    if not path.is_file() or not meta_path.is_file():
        shipped = ", ".join(shipped_taggers()) or "none"
        raise ArchError(f"{path}: no tagger checkpoint here (needs the .safetensors and its .json); "
                        f"train one with `musichash train-tagger`, or name a shipped one ({shipped})")
    try:
        meta = json.loads(meta_path.read_text())
        names, arch, config = tuple(meta["names"]), meta["arch"], meta["config"]
    except (ValueError, KeyError) as e:
        raise ArchError(f"{meta_path}: not a tagger checkpoint's config ({e}); was it written by `musichash train-tagger`?") from None
    model = build_tagger(arch, config, len(names))
    try:
        model.load_state_dict(load_file(str(path)), strict=True)
    except (RuntimeError, OSError) as e:
        raise ArchError(f"{path}: weights do not fit {meta.get('arch_name', arch)}: {str(e).splitlines()[0]}") from None
    return TaggerCheckpoint(model.eval().to(device), names, bool(meta.get("multilabel", True)), meta)
