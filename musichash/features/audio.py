"""Audio in and the mel front end.

Decoding goes through soundfile (libsndfile: wav, flac, ogg, mp3, ...) and
falls back to PyAV (ffmpeg: m4a, aac, opus, wma, ...). Everything is downmixed
to mono, resampled to 16 kHz with soxr and streamed in blocks, so a two-hour
file never has to fit in memory.

The mel front end reproduces the input the musicnn models were trained on
(librosa's mel spectrogram rounded to float16, then ``log10(10000 * mel + 1)``), in
torch, batched, on whatever device the waveform lives on.
"""

from __future__ import annotations

import functools
import itertools
import math
import os
import stat
import sys
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr
import torch

from musichash.errors import MusichashError

SAMPLE_RATE = 16000
N_FFT = 512
HOP = 256
N_MELS = 96
MIN_SECONDS = 1.0
#: a file that decodes to less than this share of the length its header promises is truncated
#: (an MP3 cut in half still declares its whole length in its Xing header)
TRUNCATED_SHARE = 0.98

# A 16-bit file holding nothing but +-1 LSB of dither peaks at -90.3 dBFS, so
# this threshold calls it silent while any audible recording passes easily.
SILENCE_PEAK_DBFS = -90.0
_SILENCE_PEAK = 10.0 ** (SILENCE_PEAK_DBFS / 20.0)

_F16_MAX = float(np.finfo(np.float16).max)  # 65504

PathLike = str | os.PathLike


# --------------------------------------------------------------------------
# Errors


class AudioError(MusichashError):
    """A file that cannot be turned into audio.

    ``path`` (a Path) is the file, ``reason`` what is wrong and, where there is
    one, the fix; ``str(e)`` is ``"{path}: {reason}"``.
    """

    def __init__(self, path: PathLike, reason: str) -> None:
        # Both go to Exception.__init__ so the error survives pickling, e.g.
        # when it is raised in a decoding worker process.
        super().__init__(path, reason)
        self.path = Path(path)
        self.reason = reason

    def __str__(self) -> str:
        return f"{self.path}: {self.reason}"


class AudioNotFoundError(AudioError):
    """The path does not exist."""


class AudioIsDirectoryError(AudioError):
    """The path is a directory."""


class AudioEmptyError(AudioError):
    """The file has 0 bytes or no audio frames."""


class AudioCorruptError(AudioError):
    """The file looks like audio but is truncated or corrupt."""


class AudioUnsupportedError(AudioError):
    """The file is not audio, or no available decoder reads it."""


class AudioSilentError(AudioError):
    """Every sample is below ``SILENCE_PEAK_DBFS``."""


class AudioTooShortError(AudioError):
    """The audio is shorter than ``MIN_SECONDS``."""


# --------------------------------------------------------------------------
# Records


@dataclass(frozen=True)
class AudioInfo:
    """What the container header says about a file (nothing is resampled).

    ``duration_s`` comes from the header where it has one, so it is an
    estimate for some mp3s and for truncated files.
    """

    path: Path
    format: str  # lowercase container name: "wav", "flac", "ogg", "mp3", "m4a", ...
    duration_s: float
    sample_rate: int  # native rate, before resampling to SAMPLE_RATE
    channels: int


@dataclass(frozen=True)
class _Source:
    """An opened file: its header and a generator of native-rate mono blocks."""

    info: AudioInfo
    blocks: Iterator[np.ndarray]  # float32 [n] at info.sample_rate


# --------------------------------------------------------------------------
# Decoding

# Leading bytes of containers we know to be audio: when no decoder can open
# such a file it is damaged (AudioCorruptError), not of the wrong kind.
_AUDIO_MAGIC = (
    b"RIFF", b"RF64", b"FORM", b"fLaC", b"OggS", b"ID3", b"caff", b".snd",
    b"MAC ", b"wvpk", b"#!AMR",
    b"\x30\x26\xb2\x75\x8e\x66\xcf\x11",  # ASF (wma)
    b"\x1a\x45\xdf\xa3",  # Matroska / WebM
)  # fmt: skip

_CORRUPT_FIX = "re-download or re-encode it"
_CONVERT_FIX = "convert it to wav or flac, e.g. ffmpeg -i IN OUT.flac"


def _looks_like_audio(path: Path) -> bool:
    try:
        with open(path, "rb") as f:
            head = f.read(12)
    except OSError:
        return False
    if head.startswith(_AUDIO_MAGIC) or head[4:8] == b"ftyp":  # ftyp: mp4 / m4a
        return True
    # Eleven set bits: an MPEG audio or ADTS AAC frame header without a tag.
    return len(head) >= 2 and head[0] == 0xFF and head[1] & 0xE0 == 0xE0


def _check_path(path: PathLike) -> Path:
    """Raises the errors that need no decoder: missing, directory, 0 bytes, unreadable."""
    p = Path(path)
    try:
        st = p.stat()
    except FileNotFoundError:
        raise AudioNotFoundError(path, "no such file; check the path") from None
    except OSError as e:
        raise AudioError(path, f"cannot read ({e.strerror}); check the path and its permissions") from None
    if stat.S_ISDIR(st.st_mode):
        raise AudioIsDirectoryError(path, "is a directory, not an audio file; pass one of the files inside it")
    if not stat.S_ISREG(st.st_mode):
        # Opening a named pipe would block forever waiting for a writer.
        raise AudioUnsupportedError(path, "not a regular file (a pipe, socket or device); pass an audio file")
    if st.st_size == 0:
        raise AudioEmptyError(path, f"file is empty (0 bytes); {_CORRUPT_FIX}")
    if not os.access(p, os.R_OK):
        raise AudioError(path, "cannot read (permission denied); check the file's permissions")
    return p


def _format_name(sf_format: str) -> str:
    return {"WAVEX": "wav", "RF64": "wav"}.get(sf_format, sf_format.lower())


@contextmanager
def _decoder_notes(path: Path, notes: list[str]) -> Iterator[None]:
    """Collects what a decoder library writes straight to the process's stderr (libmpg123's "Note:
    Illegal Audio-MPEG-Header ..." and "Warning: Xing stream size off ...") into ``notes``, so it can
    be told with the file's name instead of as an anonymous line."""
    import tempfile

    try:
        saved = os.dup(2)
    except OSError:  # no stderr to redirect
        yield
        return
    with tempfile.TemporaryFile() as tmp:
        sys.stderr.flush()
        os.dup2(tmp.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            tmp.seek(0)
            notes += [line.strip() for line in tmp.read().decode("utf-8", "replace").splitlines() if line.strip()]


def _tell_notes(path: Path, notes: list[str]) -> None:
    for note in dict.fromkeys(notes):  # once each
        print(f"Warning: {path}: decoder: {note}", file=sys.stderr)


def _sf_blocks(path: Path, f: sf.SoundFile, block_frames: int, promised: int, notes: list[str]) -> Iterator[np.ndarray]:
    """``notes``: what the decoder said while opening the file; told with the file's name at the end."""
    count = 0
    mp3 = f.format == "MP3"  # libsndfile decodes MP3 with libmpg123, which talks on stderr
    try:
        while True:
            if mp3:
                with _decoder_notes(path, notes):
                    x = f.read(block_frames, dtype="float32", always_2d=True)
            else:
                x = f.read(block_frames, dtype="float32", always_2d=True)  # [n, channels]
            if len(x) == 0:
                break
            count += len(x)
            yield x.mean(axis=1, dtype=np.float32) if x.shape[1] > 1 else x[:, 0]
    except sf.SoundFileError as e:
        raise AudioCorruptError(path, f"truncated or corrupt (libsndfile: {e}); {_CORRUPT_FIX}") from None
    if count == 0 and promised > 0:
        raise AudioCorruptError(path, f"header promises {promised} frames but none decode; {_CORRUPT_FIX}")
    # libsndfile's length is exact for WAV, FLAC or Ogg; an MP3's is an estimate unless a Xing header
    # states it, and libmpg123 notes when that header disagrees with the file: cut short
    stated = not mp3 or any("Xing stream size off" in n for n in notes)
    _tell_notes(path, notes)
    if stated and count < TRUNCATED_SHARE * promised:
        rate = f.samplerate
        raise AudioCorruptError(
            path, f"truncated: {count / rate:.1f} s decode of the {promised / rate:.1f} s its header promises; {_CORRUPT_FIX}"
        )
    if f.format == "OGG" and _ogg_unfinished(path):
        raise AudioCorruptError(path, f"truncated: its last Ogg page does not end the stream; {_CORRUPT_FIX}")


def _ogg_unfinished(path: Path) -> bool:
    """Whether an Ogg file stops before its stream's end: its last page is cut short or lacks the
    end-of-stream flag (an Ogg cut in half decodes cleanly to the cut and says nothing else)."""
    size = path.stat().st_size
    with open(path, "rb") as fh:
        fh.seek(max(0, size - 70_000))  # a page is at most 27 + 255 + 255 * 255 bytes
        tail = fh.read()
    at = tail.rfind(b"OggS")
    if at < 0 or len(tail) - at < 27:
        return True
    header_type, n_segments = tail[at + 5], tail[at + 26]
    table = tail[at + 27 : at + 27 + n_segments]
    if len(table) < n_segments:
        return True
    return at + 27 + n_segments + sum(table) > len(tail) or not header_type & 0x04


def _av_error(path: Path, e: Exception, stage: str) -> AudioError:
    import av  # noqa: PLC0415  (see _open_av)

    # av's str(e) repeats errno and path; its strerror is the part worth showing
    why = getattr(e, "strerror", None) or str(e)
    if isinstance(e, av.error.DecoderNotFoundError):
        return AudioUnsupportedError(path, f"no decoder in this ffmpeg build ({why}); {_CONVERT_FIX}")
    if _looks_like_audio(path):
        return AudioCorruptError(path, f"truncated or corrupt; ffmpeg failed while {stage} ({why}); {_CORRUPT_FIX}")
    return AudioUnsupportedError(path, f"not an audio file that soundfile or ffmpeg can read; {_CONVERT_FIX}")


@contextmanager
def _open_av(path: Path, block_seconds: float) -> Iterator[_Source]:
    # Imported here because it costs ~0.2 s and most libraries are wav, flac,
    # ogg and mp3, which never need it.
    import av  # noqa: PLC0415

    try:
        container = av.open(str(path), metadata_errors="ignore")
    except (av.FFmpegError, OSError) as e:
        raise _av_error(path, e, "opening it") from None
    try:
        if not container.streams.audio:
            if _looks_like_audio(path):
                raise AudioCorruptError(path, f"container has no audio stream; {_CORRUPT_FIX}")
            raise AudioUnsupportedError(path, f"not an audio file (no audio stream found); {_CONVERT_FIX}")
        stream = container.streams.audio[0]
        rate = int(stream.rate or 0)
        if rate <= 0 or stream.codec_context is None:
            raise AudioUnsupportedError(path, f"ffmpeg cannot decode its audio stream; {_CONVERT_FIX}")
        if stream.duration is not None and stream.time_base is not None:
            duration = float(stream.duration * stream.time_base)
        elif container.duration is not None:
            duration = container.duration / 1e6  # AV_TIME_BASE
        else:
            duration = math.nan  # filled in by audio_info when it matters
        names = container.format.name.split(",")
        if "ogg" in names and _ogg_unfinished(path):
            raise AudioCorruptError(path, f"truncated: its last Ogg page does not end the stream; {_CORRUPT_FIX}")
        ext = path.suffix.lower().lstrip(".")
        info = AudioInfo(
            path=path,
            format=ext if ext in names else names[0],
            duration_s=duration,
            sample_rate=rate,
            channels=int(stream.codec_context.channels),
        )
        yield _Source(info, _av_blocks(path, container, stream, max(1, int(block_seconds * rate))))
    finally:
        container.close()


def _av_blocks(path: Path, container, stream, block_frames: int) -> Iterator[np.ndarray]:
    import av  # noqa: PLC0415  (see _open_av)

    # Only the sample format changes (to planar float); layout and rate follow
    # the first frame, so mid-stream format changes are converted to it.
    resampler = av.AudioResampler(format="fltp")
    pending: list[np.ndarray] = []
    n_pending = 0
    count = 0
    frames = container.decode(stream)
    while True:
        try:
            frame = next(frames, None)
            converted = resampler.resample(frame)  # None flushes
        except (av.FFmpegError, OSError, ValueError) as e:
            stage = f"decoding after {count / stream.rate:.1f} s"
            raise _av_error(path, e, stage) from None
        for c in converted:
            x = c.to_ndarray()  # [channels, n]
            pending.append(x.mean(axis=0, dtype=np.float32) if x.shape[0] > 1 else x[0])
            n_pending += x.shape[1]
            count += x.shape[1]
        if frame is None or n_pending >= block_frames:
            if n_pending:
                yield np.concatenate(pending)
            pending, n_pending = [], 0
        if frame is None:
            return


@contextmanager
def _open(path: Path, block_seconds: float) -> Iterator[_Source]:
    """Opens with soundfile, else with PyAV; the source's blocks are native-rate mono."""
    notes: list[str] = []
    try:
        with _decoder_notes(path, notes):
            f = sf.SoundFile(path)
    except (sf.SoundFileError, OSError):
        f = None  # what the decoder said is moot: ffmpeg tries next, and its error is the one told
    if f is not None and f.frames == 0:
        # libsndfile reports 0 frames for a header-only wav but also for an
        # Ogg cut in half; ffmpeg tells the two apart (empty vs. EOF error).
        f.close()
        f = None
    if f is None:
        with _open_av(path, block_seconds) as src:
            yield src
        return
    with f:
        info = AudioInfo(
            path=path,
            format=_format_name(f.format),
            duration_s=f.frames / f.samplerate,
            sample_rate=int(f.samplerate),
            channels=int(f.channels),
        )
        block_frames = max(1, int(block_seconds * f.samplerate))
        yield _Source(info, _sf_blocks(path, f, block_frames, f.frames, notes))


def _native_checked(path: Path, blocks: Iterator[np.ndarray]) -> Iterator[np.ndarray]:
    """Passes blocks through; rejects non-finite samples and files without any frames."""
    count = 0
    for x in blocks:
        if not np.isfinite(x).all():
            raise AudioCorruptError(path, f"contains NaN or infinite samples; {_CORRUPT_FIX}")
        count += len(x)
        yield x
    if count == 0:
        raise AudioEmptyError(path, f"contains no audio frames (empty, or cut off after its header); {_CORRUPT_FIX}")


def _windows(blocks: Iterable[np.ndarray], size: int, step: int) -> Iterator[np.ndarray]:
    """Windows of exactly ``size`` samples every ``step`` across blocks of any sizes.

    After the last full window comes the remainder (the samples from the next
    start on, shorter than ``size``) if there is one. Holds at most one input
    block plus one window.
    """
    pending: list[np.ndarray] = []
    n = 0
    for x in blocks:
        pending.append(x)
        n += len(x)
        if n < size:
            continue
        joined = np.concatenate(pending)
        start = 0
        while n - start >= size:
            yield joined[start : start + size]
            start += step
        pending = [joined[start:].copy()]
        n -= start
    if n > 0:
        yield np.concatenate(pending)


def _iter_16k(path: Path, block_seconds: float) -> Iterator[np.ndarray]:
    """16 kHz mono float32 blocks of ``block_seconds`` (the last shorter), unchecked for length or silence."""
    with _open(path, block_seconds) as src:
        native = _native_checked(path, src.blocks)
        rate = src.info.sample_rate
        if rate == SAMPLE_RATE:
            resampled: Iterable[np.ndarray] = native
        else:
            resampled = _resample_stream(native, rate)
        size = max(1, round(block_seconds * SAMPLE_RATE))
        yield from _windows(resampled, size, size)


def _resample_stream(blocks: Iterable[np.ndarray], rate: int) -> Iterator[np.ndarray]:
    # One stream for the whole file, so block boundaries leave no trace: the
    # output equals soxr.resample on the whole signal.
    rs = soxr.ResampleStream(rate, SAMPLE_RATE, 1, dtype="float32")
    for x in blocks:
        y = rs.resample_chunk(x, last=False)
        if len(y):
            yield y
    y = rs.resample_chunk(np.zeros(0, np.float32), last=True)
    if len(y):
        yield y


def _check_content(path: Path, n: int, peak: float, what: str = "audio") -> None:
    if n < MIN_SECONDS * SAMPLE_RATE:
        e = AudioTooShortError(path, f"{what} is {n / SAMPLE_RATE:.2f} s long; need at least {MIN_SECONDS:g} s")
        e.duration_s = n / SAMPLE_RATE
        raise e
    if peak < _SILENCE_PEAK:
        db = 20 * math.log10(peak) if peak > 0 else -math.inf
        raise AudioSilentError(
            path, f"{what} is silent (peak {db:.1f} dBFS, below {SILENCE_PEAK_DBFS:g} dBFS); nothing to analyse"
        )


def iter_audio_blocks(path: PathLike, block_seconds: float = 60.0) -> Iterator[np.ndarray]:
    """Streams a file as 16 kHz mono float32 blocks.

    Yields float32 [round(block_seconds * 16000)] blocks, the last one
    shorter; memory stays bounded by the block size whatever the file length.
    Missing, directory and 0-byte files raise at the call; decoding errors
    raise during iteration; AudioTooShortError and AudioSilentError can only
    be known, and are raised, once the last block has been yielded.
    """
    if not block_seconds > 0:
        raise ValueError(f"block_seconds must be positive, got {block_seconds}")
    return _iter_checked(_check_path(path), block_seconds)


def _iter_checked(path: Path, block_seconds: float) -> Iterator[np.ndarray]:
    n = 0
    peak = 0.0
    for x in _iter_16k(path, block_seconds):
        n += len(x)
        if len(x):
            peak = max(peak, float(np.abs(x).max()))
        yield x
    _check_content(path, n, peak)


def load_audio(path: PathLike, *, offset_s: float = 0.0, duration_s: float | None = None) -> np.ndarray:
    """Decodes a file (or the segment from ``offset_s`` lasting ``duration_s``) to float32 [n] at 16 kHz.

    The length and silence checks apply to the audio returned, so a segment
    past the end of the file raises AudioTooShortError; ``duration_s`` below
    ``MIN_SECONDS`` can never pass and is a ValueError. Decoding stops as soon
    as the segment is complete.
    """
    if not offset_s >= 0:
        raise ValueError(f"offset_s must be >= 0, got {offset_s}")
    if duration_s is not None and not duration_s >= MIN_SECONDS:
        raise ValueError(f"duration_s must be at least MIN_SECONDS={MIN_SECONDS:g}, got {duration_s}")
    p = _check_path(path)
    start = round(offset_s * SAMPLE_RATE)
    stop = None if duration_s is None else start + round(duration_s * SAMPLE_RATE)
    parts: list[np.ndarray] = []
    pos = 0  # samples of the file seen so far
    blocks = _iter_16k(p, 60.0)
    try:
        for x in blocks:
            lo = max(start - pos, 0)
            hi = len(x) if stop is None else min(stop - pos, len(x))
            if hi > lo:
                parts.append(x[lo:hi])
            pos += len(x)
            if stop is not None and pos >= stop:
                break
    finally:
        blocks.close()  # releases the file now when we stop early
    y = np.concatenate(parts) if parts else np.zeros(0, np.float32)
    segment = offset_s > 0 or duration_s is not None
    what = f"segment from {offset_s:g} s (file is {pos / SAMPLE_RATE:.2f} s)" if segment else "audio"
    _check_content(p, len(y), float(np.abs(y).max()) if len(y) else 0.0, what)
    return y


def audio_info(path: PathLike) -> AudioInfo:
    """Reads a file's header (format, duration, native rate, channels) without resampling.

    Only when the container states no duration is the file decoded to count
    its frames. A header-only file reports a duration of 0 rather than raising.
    """
    p = _check_path(path)
    with _open(p, 60.0) as src:
        info = src.info
        if math.isnan(info.duration_s):
            frames = sum(len(x) for x in src.blocks)
            info = AudioInfo(p, info.format, frames / info.sample_rate, info.sample_rate, info.channels)
    return info


# --------------------------------------------------------------------------
# Mel front end


class MelFrontend(torch.nn.Module):
    """Log-mel spectrogram exactly as musicnn computed it for training.

    musicnn's numpy reference::

        mel = librosa.feature.melspectrogram(y=audio, sr=16000, hop_length=256,
                                             n_fft=512, n_mels=96).T
        mel = mel.astype(np.float16)
        mel = np.log10(10000 * mel + 1)

    Under the numpy < 1.17 musicnn ran with, ``10000 * float16_array``
    promotes to float32 (the scalar's minimal type, uint16, and float16 meet
    in float32), so only the mel is rounded to float16 and the log is taken
    in float32. numpy 2 would keep float16 and overflow to inf past
    mel = 6.55, which most mastered music reaches; that is not what the
    models were trained on. ``float16_compat`` replays the rounding of the
    mel; the float16 maximum bounds it so that absurd input stays finite.

    In that mode the STFT runs in float64 and is rounded to complex64, as
    librosa's does, and the mel sum runs in float64, so that our float32 mel
    lands on the same side of float16 rounding points as librosa's in all
    but ~1e-5 of the bins. Devices without float64 (MPS) fall back to float32.

    Without ``float16_compat`` it is plain float32 ``log10(1 + 10000 * mel)``.

    The filterbank is a non-persistent buffer: it is derived from constants,
    so checkpoints neither store nor require it.
    """

    mel_basis: torch.Tensor  # float32 [96, 257]

    def __init__(self, float16_compat: bool = True) -> None:
        super().__init__()
        import librosa  # noqa: PLC0415  (only the front end needs it)

        self.float16_compat = float16_compat
        fb = librosa.filters.mel(sr=SAMPLE_RATE, n_fft=N_FFT, n_mels=N_MELS)
        self.register_buffer("mel_basis", torch.from_numpy(np.asarray(fb, np.float32)), persistent=False)

    def forward(self, wave: torch.Tensor) -> torch.Tensor:
        """wave: float [B, N] at 16 kHz -> float32 [B, T, 96], T = 1 + N // 256."""
        return self._log_mel(wave, center=True)

    def _log_mel(self, wave: torch.Tensor, center: bool) -> torch.Tensor:
        """``center=False`` takes an already padded signal: iter_mel_blocks feeds it slices."""
        if wave.dim() != 2:
            raise ValueError(f"wave must be [B, N], got shape {tuple(wave.shape)}")
        dev = wave.device
        dtype = torch.float64 if self.float16_compat and dev.type != "mps" else torch.float32
        window = torch.hann_window(N_FFT, periodic=True, dtype=dtype, device=dev)
        spec = torch.stft(
            wave.to(torch.float32).to(dtype),  # round to float32 first, as the reference's input is
            N_FFT,
            HOP,
            window=window,
            center=center,
            pad_mode="constant",
            return_complex=True,
        ).to(torch.complex64)  # [B, 257, T]
        wide = _wide_rounding(dev)
        # float32, as librosa's np.abs(stft) ** 2
        power = (spec.to(torch.complex128).abs().to(torch.float32) if wide else spec.abs()).pow(2)
        # In float64 the sum no longer depends on how BLAS blocks it for a
        # given T, so streamed chunks of any length match the whole-signal mel.
        mel = torch.matmul(self.mel_basis.to(device=dev, dtype=dtype), power.to(dtype))
        mel = mel.to(torch.float32).transpose(1, 2)  # [B, T, 96]
        if not self.float16_compat:
            return torch.log10(1 + 10000 * mel)
        y = 10000 * _round_f16(mel.clamp(max=_F16_MAX)) + 1
        return torch.log10(y.double()).to(torch.float32) if wide else torch.log10(y)


def _wide_rounding(dev: torch.device) -> bool:
    """Whether ``abs`` and ``log10`` run in float64, rounded to float32. CUDA's float32 ``log10`` and
    complex ``abs`` differ from the CPU's in the last bit: on an H200 only 64 % of log-mel values
    equalled the CPU's (issue 23). The CPU's are correctly rounded in all but ~4e-5 of values, so
    float64 rounded to float32 replays them, leaving the CPU's own arithmetic (and codes) as they were."""
    return dev.type == "cuda"


def _round_f16(x: torch.Tensor) -> torch.Tensor:
    return x.to(torch.float16).to(torch.float32)


@functools.lru_cache(maxsize=8)
def _frontend(device: str) -> MelFrontend:
    return MelFrontend(float16_compat=True).to(device).eval()


def log_mel(wave: np.ndarray, device: str | torch.device = "cpu") -> np.ndarray:
    """wave: float32 [n] at 16 kHz -> float32 [1 + n // 256, 96], musicnn's log-mel."""
    dev = torch.device(device)
    x = torch.from_numpy(np.ascontiguousarray(wave, dtype=np.float32).reshape(1, -1)).to(dev)
    with torch.inference_mode():
        return _frontend(str(dev))(x)[0].cpu().numpy()


def iter_mel_blocks(
    blocks: Iterable[np.ndarray], block_frames: int = 4096, device: str | torch.device = "cpu"
) -> Iterator[np.ndarray]:
    """Streams the log-mel of a long signal given as 16 kHz blocks of any sizes.

    Yields float32 [block_frames, 96] chunks (the last one [<= block_frames, 96])
    whose concatenation equals ``log_mel(np.concatenate(blocks))``: the
    center padding is added once at each end and the STFT overlap is carried
    across block boundaries. Holds at most about one input block plus
    ``block_frames`` hops of audio.
    """
    if block_frames < 1:
        raise ValueError(f"block_frames must be >= 1, got {block_frames}")
    dev = torch.device(device)
    return _iter_mel(blocks, block_frames, _frontend(str(dev)), dev)


def _iter_mel(blocks: Iterable[np.ndarray], block_frames: int, fe: MelFrontend, dev: torch.device) -> Iterator[np.ndarray]:
    def frames(padded: np.ndarray) -> np.ndarray:
        x = torch.from_numpy(padded).to(dev).reshape(1, -1)
        with torch.inference_mode():
            return fe._log_mel(x, center=False)[0].cpu().numpy()

    def checked(blocks: Iterable[np.ndarray]) -> Iterator[np.ndarray]:
        for b in blocks:
            b = np.asarray(b, dtype=np.float32)
            if b.ndim != 1:
                raise ValueError(f"blocks must be 1-D, got shape {b.shape}")
            yield b

    pad = np.zeros(N_FFT // 2, np.float32)  # the centre padding, once at each end
    padded = itertools.chain([pad], checked(blocks), [pad])
    need = (block_frames - 1) * HOP + N_FFT  # samples that make block_frames frames
    for w in _windows(padded, need, block_frames * HOP):
        if len(w) >= N_FFT:  # the remainder holds fewer than block_frames frames, maybe none
            yield frames(w)
