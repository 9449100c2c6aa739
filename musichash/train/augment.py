"""Seeded, reproducible degradations of 16 kHz mono audio.

Used for training views (deep hashing), robustness benchmarks and dedup test
sets. A :class:`Degradation` is a registry name plus JSON-able parameters; the
randomness it needs (noise, babble shifts, a random crop start) comes from the
``numpy.random.Generator`` passed to :meth:`Degradation.apply`, so the same
degradation, input and seed always give the same output::

    view = random_view(np.random.default_rng(7), strength=0.5)
    y = chain(*view).apply(x, np.random.default_rng(7))
    manifest_entry = describe(view)          # JSON; from_json() reads it back

Every degradation takes ``x: float32 [n]`` at :data:`SAMPLE_RATE` and returns
``float32 [m]``, finite (NaN/inf become 0). Nothing is clipped: when a step
leaves the peak above 1.0 (a positive gain, a resonant EQ, a codec overshoot),
the whole output of that step is scaled down so its peak is exactly 1.0. Level
is therefore preserved unless it would have clipped.

Backends: MP3 and Opus go through PyAV (ffmpeg's libmp3lame and libopus), Ogg
Vorbis through the ``ffmpeg`` command (libvorbis); time stretch, pitch shift
and reverb through Spotify's pedalboard (Rubber Band and JUCE), imported only
when used.
"""

from __future__ import annotations

import functools
import io
import json
import math
import shutil
import subprocess
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import soxr
from scipy import signal

from musichash.errors import MusichashError

# Same value as musichash.features.audio.SAMPLE_RATE, repeated so that data-loader
# workers can degrade audio without importing torch.
SAMPLE_RATE = 16000

# Bitrates MPEG-2 layer III allows at 16 kHz; LAME would silently round others.
MP3_KBPS = (8, 16, 24, 32, 40, 48, 56, 64, 80, 96, 112, 128, 144, 160)

# Reverb mix (pedalboard.Reverb defaults): the dry signal at 0.4 plus the
# reverberant signal at 0.33, so a reverbed clip is quieter than its source.
REVERB_WET = 0.33
REVERB_DRY = 0.4

EQ_LOW_HZ = 200.0
EQ_HIGH_HZ = 4000.0
BABBLE_VOICES = 6


class AugmentError(MusichashError):
    """A degradation with bad parameters, or whose backend is missing."""


# --------------------------------------------------------------------------
# The record and its registry

_Apply = Callable[..., np.ndarray]
_REGISTRY: dict[str, _Apply] = {}


def _register(name: str) -> Callable[[_Apply], _Apply]:
    def deco(fn: _Apply) -> _Apply:
        _REGISTRY[name] = fn
        return fn

    return deco


@dataclass(frozen=True)
class Degradation:
    """One named degradation: ``name`` is a registry key, ``params`` its JSON-able
    arguments. ``background`` (float [k], 16 kHz) is the only non-JSON input: the
    music that ``noise(kind="babble", background=...)`` mixes in; manifests
    record only that one was used."""

    name: str
    params: dict[str, Any]
    background: np.ndarray | None = field(default=None, repr=False, compare=False)

    def apply(self, x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """``x: float [n]`` at 16 kHz -> ``float32 [m]``, finite, peak <= 1."""
        x = _check_input(x)
        kwargs = dict(self.params)
        if self.name == "noise":
            kwargs["background"] = self.background
        return _finish(_REGISTRY[self.name](x, rng, **kwargs))

    def to_dict(self) -> dict[str, Any]:
        params = dict(self.params)
        if self.background is not None:
            params["background"] = "external"
        return {"name": self.name, "params": params}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Degradation:
        name, params = d["name"], dict(d["params"])
        if name not in _REGISTRY:
            raise AugmentError(f"unknown degradation {name!r}; known: {', '.join(sorted(_REGISTRY))}")
        if params.pop("background", None) is not None:
            raise AugmentError(
                f"{name}: the manifest used an external background recording, which it does not store; "
                "rebuild it with noise(..., background=array)"
            )
        return cls(name, params)


@dataclass(frozen=True)
class Chain:
    """Degradations applied in order, sharing one generator."""

    steps: tuple[Degradation, ...]

    def apply(self, x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        y = _finish(_check_input(x))
        for d in self.steps:
            y = d.apply(y, rng)
        return y


def chain(*degradations: Degradation) -> Chain:
    return Chain(tuple(degradations))


def describe(degradations: Sequence[Degradation] | Chain) -> str:
    """JSON list of ``{"name", "params"}`` for a manifest; :func:`from_json` reads it."""
    steps = degradations.steps if isinstance(degradations, Chain) else degradations
    return json.dumps([d.to_dict() for d in steps], sort_keys=True)


def from_json(text: str) -> list[Degradation]:
    return [Degradation.from_dict(d) for d in json.loads(text)]


def _check_input(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x)
    if x.ndim != 1:
        raise AugmentError(f"expected mono audio of shape [n], got shape {x.shape}; downmix first")
    return x.astype(np.float32, copy=False)


def _finish(y: np.ndarray) -> np.ndarray:
    y = np.nan_to_num(np.asarray(y, dtype=np.float64).reshape(-1), nan=0.0, posinf=0.0, neginf=0.0)
    peak = float(np.max(np.abs(y))) if y.size else 0.0
    if peak > 1.0:
        y = y / peak
    return y.astype(np.float32)


def _seconds(s: float, what: str) -> int:
    if not (math.isfinite(s) and s >= 0):
        raise AugmentError(f"{what} must be a finite number of seconds >= 0, got {s}")
    return int(round(s * SAMPLE_RATE))


def _positive(v: float, what: str) -> float:
    v = float(v)
    if not (math.isfinite(v) and v > 0):
        raise AugmentError(f"{what} must be finite and > 0, got {v}")
    return v


def _fit(y: np.ndarray, n: int) -> np.ndarray:
    """Trim or zero-pad ``y`` at the end to exactly ``n`` samples."""
    if len(y) >= n:
        return y[:n]
    return np.concatenate([y, np.zeros(n - len(y), dtype=y.dtype)])


def _pedalboard():
    try:
        import pedalboard
    except ImportError as e:
        raise AugmentError("this degradation needs pedalboard: pip install 'musichash[train]'") from e
    return pedalboard


# --------------------------------------------------------------------------
# Additive noise


def noise(snr_db: float, kind: str = "white", background: np.ndarray | None = None) -> Degradation:
    """Add noise at exactly ``snr_db`` (signal power / noise power over the whole
    clip). ``kind="white"``: Gaussian. ``kind="pink"``: Gaussian with power falling
    as 1/f (equal power per octave, as most real background noise). ``kind="music"``:
    ``background`` (other music, required) as it is, looped and at a random start:
    another song playing underneath. ``kind="babble"``: the sum of
    ``BABBLE_VOICES`` time-shifted, band-passed "voices", each made from
    ``background`` (other music, float [k] at 16 kHz, looped to length) or,
    without one, from speech-like noise (300-3400 Hz, syllable-rate envelope).
    A silent input is returned unchanged, since no noise level gives it an SNR."""
    if not math.isfinite(snr_db):
        raise AugmentError(f"snr_db must be finite, got {snr_db}")
    if kind not in NOISE_KINDS:
        raise AugmentError(f"noise kind must be one of {', '.join(NOISE_KINDS)}, got {kind!r}")
    if kind == "music" and background is None:
        raise AugmentError("noise kind 'music' needs the background music to mix in")
    if background is not None:
        if kind not in ("babble", "music"):
            raise AugmentError("a background recording is only used with kind='babble' or 'music'")
        background = _check_input(background)
        if not np.any(background):
            raise AugmentError("the background recording is silent; pass music or leave it out")
    return Degradation("noise", {"snr_db": float(snr_db), "kind": kind}, background)


@_register("noise")
def _noise(x, rng, snr_db, kind, background=None):
    x64 = x.astype(np.float64)
    ps = float(np.mean(x64**2)) if x.size else 0.0
    if ps == 0.0:
        return x
    if kind == "white":
        n = rng.standard_normal(len(x))
    elif kind == "pink":
        n = _pink(len(x), rng)
    elif kind == "music":
        n = np.roll(np.resize(background.astype(np.float64), len(x)), int(rng.integers(0, max(len(background), 1))))
    else:
        n = _babble(len(x), rng, background)
    pn = float(np.mean(n**2))
    if pn == 0.0:
        return x
    n *= math.sqrt(ps / 10.0 ** (snr_db / 10.0) / pn)
    return x64 + n


NOISE_KINDS = ("white", "pink", "babble", "music")


def _pink(n: int, rng: np.random.Generator) -> np.ndarray:
    """Gaussian noise shaped to a 1/f power spectrum (amplitude 1/sqrt(f)) in the frequency domain."""
    spec = np.fft.rfft(rng.standard_normal(n))
    f = np.fft.rfftfreq(n, 1.0 / SAMPLE_RATE)
    spec[1:] /= np.sqrt(f[1:] / f[1])
    spec[0] = 0.0
    return np.fft.irfft(spec, n)


def _band(x: np.ndarray, lo: float, hi: float) -> np.ndarray:
    sos = signal.butter(4, [lo, hi], btype="bandpass", fs=SAMPLE_RATE, output="sos")
    return signal.sosfilt(sos, x)


def _babble(n: int, rng: np.random.Generator, background: np.ndarray | None) -> np.ndarray:
    out = np.zeros(n)
    t = np.arange(n) / SAMPLE_RATE
    for _ in range(BABBLE_VOICES):
        if background is None:
            v = _band(rng.standard_normal(n), 300.0, 3400.0)
            # Syllables: a 3-6 Hz envelope, squared so it has gaps like speech.
            env = 0.5 + 0.5 * np.sin(2 * np.pi * rng.uniform(3.0, 6.0) * t + rng.uniform(0, 2 * np.pi))
            v *= env**2
        else:
            v = np.resize(background.astype(np.float64), n)
            v = np.roll(v, int(rng.integers(0, max(len(background), 1))))
            lo = rng.uniform(100.0, 600.0)
            v = _band(v, lo, rng.uniform(max(2000.0, 2 * lo), 6000.0))
        rms = math.sqrt(float(np.mean(v**2)))
        if rms > 0:
            out += v / rms * rng.uniform(0.5, 1.0)
    return out


# --------------------------------------------------------------------------
# Level, filters and band limiting


def gain(db: float) -> Degradation:
    """Multiply by ``10 ** (db / 20)`` (exact unless the peak would pass 1.0)."""
    if not math.isfinite(db):
        raise AugmentError(f"gain must be finite dB, got {db}")
    return Degradation("gain", {"db": float(db)})


@_register("gain")
def _gain(x, rng, db):
    return x.astype(np.float64) * 10.0 ** (db / 20.0)


def telephone() -> Degradation:
    """A phone line: down to 8 kHz and back (nothing above 4 kHz survives), then a
    zero-phase 300-3400 Hz Butterworth band-pass (order 4, applied forward and
    backward, so no delay)."""
    return Degradation("telephone", {})


@_register("telephone")
def _telephone(x, rng):
    n = len(x)
    y = soxr.resample(x, SAMPLE_RATE, 8000, quality="HQ")
    y = soxr.resample(y, 8000, SAMPLE_RATE, quality="HQ")
    sos = signal.butter(4, [300.0, 3400.0], btype="bandpass", fs=SAMPLE_RATE, output="sos")
    if n <= 3 * 2 * len(sos):
        return np.zeros(n)
    return _fit(signal.sosfiltfilt(sos, y), n)


def overdrive(drive_db: float) -> Degradation:
    """Hard clipping: the clip's peak driven ``drive_db`` above full scale, then cut at full scale
    (an overdriven recording or a broadcast limiter pushed too far)."""
    if not (math.isfinite(drive_db) and drive_db >= 0):
        raise AugmentError(f"overdrive needs drive_db >= 0, got {drive_db}")
    return Degradation("overdrive", {"drive_db": float(drive_db)})


@_register("overdrive")
def _overdrive(x, rng, drive_db):
    peak = float(np.max(np.abs(x))) if x.size else 0.0
    if peak == 0.0:
        return x
    return np.clip(x.astype(np.float64) * (10.0 ** (drive_db / 20.0) / peak), -1.0, 1.0)


def phone_recording(room_size: float = 0.5) -> Degradation:
    """A phone held up to a speaker in a room: reverb (``room_size``), the phone line's
    300-3400 Hz band at 8 kHz (:func:`telephone`), and the AMR-NB speech codec at 12.2 kbit/s
    (through PyAV's libopencore_amrnb)."""
    if not 0.0 <= room_size <= 1.0:
        raise AugmentError(f"room_size must be in [0, 1], got {room_size}")
    return Degradation("phone_recording", {"room_size": float(room_size)})


@_register("phone_recording")
def _phone_recording(x, rng, room_size):
    n = len(x)
    y = _telephone(_reverb(x, rng, room_size), rng)
    y = soxr.resample(np.asarray(y, np.float32), SAMPLE_RATE, 8000, quality="HQ")
    peak = float(np.max(np.abs(y))) if y.size else 0.0
    if peak > 1.0:
        y = y / peak
    y = _codec_roundtrip(y, "libopencore_amrnb", "amr", "s16", bit_rate=12200, rate=8000)
    return _fit(soxr.resample(y, 8000, SAMPLE_RATE, quality="HQ"), n)


def eq(low_db: float, high_db: float) -> Degradation:
    """Shelving EQ: a low shelf at ``EQ_LOW_HZ`` (200 Hz) by ``low_db`` and a high
    shelf at ``EQ_HIGH_HZ`` (4 kHz) by ``high_db`` (RBJ cookbook biquads, slope 1)."""
    if not (math.isfinite(low_db) and math.isfinite(high_db)):
        raise AugmentError(f"eq gains must be finite dB, got {low_db}, {high_db}")
    return Degradation("eq", {"low_db": float(low_db), "high_db": float(high_db)})


def _shelf(f0: float, db: float, high: bool) -> np.ndarray:
    """RBJ shelving biquad as one sos row (b0 b1 b2 1 a1 a2)."""
    a = 10.0 ** (db / 40.0)
    w = 2 * math.pi * f0 / SAMPLE_RATE
    cw, alpha = math.cos(w), math.sin(w) / 2 * math.sqrt(2.0)
    s = -1.0 if high else 1.0  # the high shelf is the low shelf with cos(w) terms negated
    sa = 2 * math.sqrt(a) * alpha
    b = [
        a * ((a + 1) - s * (a - 1) * cw + sa),
        s * 2 * a * ((a - 1) - s * (a + 1) * cw),
        a * ((a + 1) - s * (a - 1) * cw - sa),
    ]
    den = [(a + 1) + s * (a - 1) * cw + sa, -s * 2 * ((a - 1) + s * (a + 1) * cw), (a + 1) + s * (a - 1) * cw - sa]
    return np.array(b + den) / den[0]


@_register("eq")
def _eq(x, rng, low_db, high_db):
    if x.size == 0:
        return x
    sos = np.stack([_shelf(EQ_LOW_HZ, low_db, high=False), _shelf(EQ_HIGH_HZ, high_db, high=True)])
    return signal.sosfilt(sos, x.astype(np.float64))


def reverb(room_size: float) -> Degradation:
    """pedalboard.Reverb (Freeverb) with ``room_size`` in [0, 1], damping 0.5 and
    the mix ``REVERB_DRY`` (0.4) dry + ``REVERB_WET`` (0.33) wet. The tail past
    the end of the clip is cut, so the length is unchanged."""
    if not (math.isfinite(room_size) and 0.0 <= room_size <= 1.0):
        raise AugmentError(f"room_size must be in [0, 1], got {room_size}")
    return Degradation("reverb", {"room_size": float(room_size)})


@_register("reverb")
def _reverb(x, rng, room_size):
    pb = _pedalboard()
    fx = pb.Reverb(room_size=room_size, wet_level=REVERB_WET, dry_level=REVERB_DRY)
    return fx(x, SAMPLE_RATE)


# --------------------------------------------------------------------------
# Time and pitch


def time_stretch(rate: float) -> Degradation:
    """Tempo times ``rate`` with pitch kept (Rubber Band via pedalboard): the
    output has ``n / rate`` samples, so ``rate > 1`` is faster and shorter."""
    return Degradation("time_stretch", {"rate": _positive(rate, "time_stretch rate")})


@_register("time_stretch")
def _time_stretch(x, rng, rate):
    if rate == 1.0 or x.size == 0:
        return x
    pb = _pedalboard()
    return pb.time_stretch(x[None, :], SAMPLE_RATE, stretch_factor=rate)[0]


def speed(rate: float) -> Degradation:
    """Tape speed: tempo and pitch both times ``rate`` (a resample), ``n / rate``
    samples out."""
    return Degradation("speed", {"rate": _positive(rate, "speed rate")})


@_register("speed")
def _speed(x, rng, rate):
    if rate == 1.0 or x.size == 0:
        return x
    return soxr.resample(x, SAMPLE_RATE * rate, SAMPLE_RATE, quality="HQ")


def pitch_shift(semitones: float) -> Degradation:
    """Pitch by ``semitones`` with tempo and length kept (pedalboard.PitchShift,
    latency compensated)."""
    if not (math.isfinite(semitones) and abs(semitones) <= 72):
        raise AugmentError(f"pitch_shift needs semitones in [-72, 72], got {semitones}")
    return Degradation("pitch_shift", {"semitones": float(semitones)})


@_register("pitch_shift")
def _pitch_shift(x, rng, semitones):
    if semitones == 0.0 or x.size == 0:
        return x
    pb = _pedalboard()
    return pb.PitchShift(semitones=semitones)(x, SAMPLE_RATE)


# --------------------------------------------------------------------------
# Editing


def crop(start_s: float | None, length_s: float) -> Degradation:
    """Keep exactly ``length_s`` seconds from ``start_s`` (zero-padded at the end
    if the clip is shorter). ``start_s=None`` draws the start uniformly from the
    generator at apply time, among starts that fit inside the clip."""
    _seconds(length_s, "crop length")
    if start_s is not None:
        _seconds(start_s, "crop start")
    return Degradation("crop", {"start_s": None if start_s is None else float(start_s), "length_s": float(length_s)})


@_register("crop")
def _crop(x, rng, start_s, length_s):
    m = _seconds(length_s, "crop length")
    if start_s is None:
        start = int(rng.integers(0, max(len(x) - m, 0) + 1))
    else:
        start = _seconds(start_s, "crop start")
    return _fit(x[start : start + m], m)


def pad_silence(before_s: float, after_s: float) -> Degradation:
    """Digital silence before and after the clip."""
    _seconds(before_s, "silence before")
    _seconds(after_s, "silence after")
    return Degradation("pad_silence", {"before_s": float(before_s), "after_s": float(after_s)})


@_register("pad_silence")
def _pad_silence(x, rng, before_s, after_s):
    return np.pad(x, (_seconds(before_s, "silence before"), _seconds(after_s, "silence after")))


def fade(in_s: float, out_s: float) -> Degradation:
    """Raised-cosine fade in over ``in_s`` and out over ``out_s`` (each at most the
    clip length)."""
    _seconds(in_s, "fade in")
    _seconds(out_s, "fade out")
    return Degradation("fade", {"in_s": float(in_s), "out_s": float(out_s)})


@_register("fade")
def _fade(x, rng, in_s, out_s):
    y = x.astype(np.float64)
    a = min(_seconds(in_s, "fade in"), len(y))
    b = min(_seconds(out_s, "fade out"), len(y))
    if a:
        y[:a] *= 0.5 - 0.5 * np.cos(np.pi * (np.arange(a) + 0.5) / a)
    if b:
        y[len(y) - b :] *= 0.5 + 0.5 * np.cos(np.pi * (np.arange(b) + 0.5) / b)
    return y


# --------------------------------------------------------------------------
# Codecs


def mp3(kbps: int) -> Degradation:
    """Encode to MP3 in memory at a constant ``kbps`` (LAME via PyAV, at 16 kHz, so
    MPEG-2 layer III; ``kbps`` must be one of :data:`MP3_KBPS`) and decode back.
    The decoder drops LAME's encoder delay and padding, so the output lines up
    with the input sample for sample and has the same length."""
    if kbps not in MP3_KBPS:
        raise AugmentError(f"mp3 at 16 kHz allows kbps in {MP3_KBPS}, got {kbps}")
    return Degradation("mp3", {"kbps": int(kbps)})


@_register("mp3")
def _mp3(x, rng, kbps):
    return _codec_roundtrip(x, "libmp3lame", "mp3", "fltp", bit_rate=kbps * 1000)


def opus(kbps: int) -> Degradation:
    """Encode to Opus in Ogg at ``kbps`` (libopus via PyAV, 6-128) and decode back.
    Opus runs at 48 kHz, so the decoded audio is resampled to 16 kHz; the
    decoder removes the pre-skip, so input and output stay aligned."""
    if not (isinstance(kbps, int) and 6 <= kbps <= 128):
        raise AugmentError(f"opus kbps must be an integer in [6, 128], got {kbps}")
    return Degradation("opus", {"kbps": int(kbps)})


@_register("opus")
def _opus(x, rng, kbps):
    return _codec_roundtrip(x, "libopus", "ogg", "flt", bit_rate=kbps * 1000)


def aac(kbps: int) -> Degradation:
    """Encode to AAC-LC in ADTS at ``kbps`` (ffmpeg's native encoder via PyAV, 16-160) and decode back."""
    if not (isinstance(kbps, int) and 16 <= kbps <= 160):
        raise AugmentError(f"aac kbps must be an integer in [16, 160], got {kbps}")
    return Degradation("aac", {"kbps": int(kbps)})


@_register("aac")
def _aac(x, rng, kbps):
    n = len(x)
    y = _codec_roundtrip(x, "aac", "adts", "fltp", bit_rate=kbps * 1000)
    return _align(x, y, n)


def _align(x: np.ndarray, y: np.ndarray, n: int, max_lag: int = 4096) -> np.ndarray:
    """y shifted to line up with x (codecs whose decoder keeps the encoder's priming delay)."""
    m = min(len(x), len(y), 1 << 15)
    if m < 2 * max_lag:
        return _fit(y, n)
    a, b = np.asarray(x[:m], np.float64), np.asarray(y[:m], np.float64)
    corr = [float(np.dot(a[: m - lag], b[lag:m])) for lag in range(0, max_lag, 16)]
    lag = 16 * int(np.argmax(corr))
    lag = max(0, lag - 16) + int(np.argmax([float(np.dot(a[: m - L], b[L:m])) for L in range(max(0, lag - 16), lag + 17)]))
    return _fit(y[lag:], n)


def ogg(quality: float) -> Degradation:
    """Encode to Ogg Vorbis at VBR ``quality`` (-1..10, as ``oggenc -q``) and decode
    back, through the ``ffmpeg`` command (it needs libvorbis): PyAV's wheels ship
    without libvorbis, and libsndfile's Vorbis writer crashes on long input."""
    if not (math.isfinite(quality) and -1.0 <= quality <= 10.0):
        raise AugmentError(f"ogg quality must be in [-1, 10], got {quality}")
    return Degradation("ogg", {"quality": float(quality)})


@_register("ogg")
def _ogg(x, rng, quality):
    if not codec_available("libvorbis"):
        raise AugmentError("ogg needs the ffmpeg command with libvorbis: apt-get install ffmpeg")
    n = len(x)
    if n == 0:
        return x
    raw = ["-f", "f32le", "-ar", str(SAMPLE_RATE), "-ac", "1"]
    # "-q:a" ignores negative qualities; the VBR quality in units of FF_QP2LAMBDA (118) takes them.
    q = ["-flags", "+qscale", "-global_quality", str(int(round(quality * 118)))]
    enc = _ffmpeg([*raw, "-i", "pipe:0", "-c:a", "libvorbis", *q, "-f", "ogg", "pipe:1"],
                  np.ascontiguousarray(x, dtype="<f4").tobytes())
    y = np.frombuffer(_ffmpeg(["-i", "pipe:0", *raw, "pipe:1"], enc), dtype="<f4")
    return _fit(y, n)


def _ffmpeg(args: list[str], data: bytes) -> bytes:
    r = subprocess.run(["ffmpeg", "-v", "error", "-nostdin", "-threads", "1", *args], input=data, capture_output=True)
    if r.returncode != 0:
        raise AugmentError(f"ffmpeg failed ({r.returncode}): {r.stderr.decode(errors='replace').strip()}")
    return r.stdout


@functools.cache
def _ffmpeg_encoders() -> frozenset[str]:
    if shutil.which("ffmpeg") is None:
        return frozenset()
    r = subprocess.run(["ffmpeg", "-hide_banner", "-encoders"], capture_output=True, text=True)
    return frozenset(line.split()[1] for line in r.stdout.splitlines() if len(line.split()) > 1 and line.startswith(" A"))


def codec_available(codec: str) -> bool:
    """Whether ``codec`` (e.g. ``"libmp3lame"``) can encode here: through PyAV's ffmpeg, or for
    ``"libvorbis"``, which :func:`ogg` runs through the ``ffmpeg`` command, through that."""
    if codec == "libvorbis":
        return codec in _ffmpeg_encoders()
    try:
        import av
    except ImportError:
        return False
    return codec in av.codecs_available


def _codec_roundtrip(x: np.ndarray, codec: str, fmt: str, sample_fmt: str, bit_rate: int | None = None,
                     rate: int = SAMPLE_RATE) -> np.ndarray:
    if not codec_available(codec):
        raise AugmentError(
            f"PyAV's ffmpeg has no {codec} encoder; install an ffmpeg build with it, or use another codec"
        )
    import av

    n = len(x)
    if n == 0:
        return x
    buf = io.BytesIO()
    with av.open(buf, "w", format=fmt) as out:
        st = out.add_stream(codec, rate=rate)
        st.layout = "mono"
        st.format = sample_fmt
        if bit_rate is not None:
            st.bit_rate = bit_rate
        pcm = np.ascontiguousarray(x, dtype=np.float32)[None, :]
        frame = av.AudioFrame.from_ndarray(pcm, format="fltp", layout="mono")
        frame.sample_rate = rate
        frame.pts = 0
        for packet in st.encode(frame):
            out.mux(packet)
        for packet in st.encode(None):
            out.mux(packet)
    buf.seek(0)
    chunks, got = [], rate
    with av.open(buf, "r") as inp:
        ast = inp.streams.audio[0]
        for fr in inp.decode(ast):
            got = fr.sample_rate
            a = fr.to_ndarray()
            chunks.append(a.mean(axis=0) if a.ndim == 2 and a.shape[0] > 1 else a.reshape(-1))
    y = np.concatenate(chunks).astype(np.float32) if chunks else np.zeros(0, np.float32)
    if got != rate:
        y = soxr.resample(y, got, rate, quality="HQ")
    return _fit(y, n)


# --------------------------------------------------------------------------
# Random training views


def random_view(
    rng: np.random.Generator,
    strength: float = 1.0,
    *,
    duration_s: float | None = None,
    crop_s: float | None = None,
) -> list[Degradation]:
    """Draw one training view: a list of degradations to pass to :func:`chain`.

    At ``strength=1``: a random crop of ``crop_s`` seconds (if given; its start is
    drawn now when ``duration_s`` is known, otherwise at apply time), time stretch
    up to +-5 %, pitch up to +-1 semitone, shelving EQ up to +-6 dB or a
    telephone band, noise at 0-20 dB SNR, an MP3 or Opus re-encode at low
    bitrate, and gain of -12..+3 dB. Each step is drawn with a probability that
    grows with ``strength``, and magnitudes scale with it, so ``strength=0``
    gives no degradation besides the crop.
    """
    s = float(strength)
    if not (math.isfinite(s) and 0.0 <= s <= 1.0):
        raise AugmentError(f"strength must be in [0, 1], got {strength}")
    view: list[Degradation] = []

    def maybe(p: float) -> bool:
        return bool(rng.random() < p * s)

    if crop_s is not None:
        start = None
        if duration_s is not None:
            start = round(float(rng.uniform(0.0, max(duration_s - crop_s, 0.0))), 3)
        view.append(crop(start, crop_s))
    if maybe(0.5):
        view.append(time_stretch(round(1.0 + float(rng.uniform(-0.05, 0.05)) * s, 4)))
    if maybe(0.5):
        view.append(pitch_shift(round(float(rng.uniform(-1.0, 1.0)) * s, 3)))
    if maybe(0.2):
        view.append(telephone())
    elif maybe(0.5):
        view.append(eq(round(float(rng.uniform(-6, 6)) * s, 2), round(float(rng.uniform(-6, 6)) * s, 2)))
    if maybe(0.7):
        # Strength 1 spans 0-20 dB; weaker views keep the noise quieter (up to 40 dB).
        snr = float(rng.uniform(0.0, 20.0)) + 20.0 * (1.0 - s)
        view.append(noise(round(snr, 2), kind="babble" if rng.random() < 0.3 else "white"))
    if maybe(0.6):
        if rng.random() < 0.5:
            view.append(mp3(int(rng.choice([24, 32, 48, 64]))))
        else:
            view.append(opus(int(rng.choice([12, 16, 24, 32]))))
    if maybe(0.8):
        view.append(gain(round(float(rng.uniform(-12.0, 3.0)) * s, 2)))
    return view


#: the kinds of training view a feature cache draws: :func:`random_view`, :func:`identification_view`
VIEW_KINDS = ("random", "identification")


def identification_view(rng: np.random.Generator, background: np.ndarray | None = None) -> list[Degradation]:
    """Draw one view for identification training: the conditions query clips meet (issue 22's list).

    One clip in eight is left clean (the window's offset from the library grid is then all that
    changes it). Otherwise one main condition, drawn evenly from: MP3 at 32-64 kbit/s, AAC at 48,
    white noise at 0-10 dB SNR, pink noise at 0-10 dB, babble at 0-10 dB, other music underneath at
    0-10 dB (``background``, float [k] at 16 kHz; speech-like babble without one), gain of ±6-12 dB,
    overdrive of 6-15 dB, a phone recording in a room, tempo ±2-6 %, pitch ±0.5-2 semitones and
    speed ±1-3 %; half the time followed by a lighter second step (an MP3 or Opus re-encode, an EQ,
    or a gain).
    """
    if rng.random() < 1 / 8:
        return []

    def snr() -> float:
        return round(float(rng.uniform(0.0, 10.0)), 2)

    def signed(lo: float, hi: float, digits: int) -> float:
        return round(float(rng.uniform(lo, hi)) * (1 if rng.random() < 0.5 else -1), digits)

    mains: list[Callable[[], Degradation]] = [
        lambda: mp3(int(rng.choice([32, 48, 64]))),
        lambda: aac(48),
        lambda: noise(snr(), kind="white"),
        lambda: noise(snr(), kind="pink"),
        lambda: noise(snr(), kind="babble"),
        lambda: noise(snr(), kind="music", background=background) if background is not None
        else noise(snr(), kind="babble"),
        lambda: gain(signed(6.0, 12.0, 2)),
        lambda: overdrive(round(float(rng.uniform(6.0, 15.0)), 2)),
        lambda: phone_recording(round(float(rng.uniform(0.2, 0.8)), 2)),
        lambda: time_stretch(round(1.0 + signed(0.02, 0.06, 4), 4)),
        lambda: pitch_shift(signed(0.5, 2.0, 3)),
        lambda: speed(round(1.0 + signed(0.01, 0.03, 4), 4)),
    ]
    view = [mains[int(rng.integers(len(mains)))]()]
    if rng.random() < 0.5:
        extra = int(rng.integers(4))
        if extra == 0:
            view.append(mp3(int(rng.choice([32, 48, 64, 96]))))
        elif extra == 1:
            view.append(opus(int(rng.choice([16, 24, 32]))))
        elif extra == 2:
            view.append(eq(round(float(rng.uniform(-6, 6)), 2), round(float(rng.uniform(-6, 6)), 2)))
        else:
            view.append(gain(signed(0.0, 6.0, 2)))
    return view


def time_scale(view: Sequence[Degradation]) -> float:
    """How much faster a view's music runs than its source: the product of its tempo and speed rates
    (a window starting at frame s of the source starts near s / rate in the view)."""
    rate = 1.0
    for d in view:
        if d.name in ("time_stretch", "speed"):
            rate *= float(d.params["rate"])
    return rate
