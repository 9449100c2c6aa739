#!/usr/bin/env python
"""Generate TensorFlow reference numbers for the musicnn -> PyTorch parity test.

This script runs the *original* musicnn 0.1.0 TensorFlow graphs (``MTT_vgg`` and
``MTT_musicnn``, restored from the checkpoints shipped in the PyPI wheel) on a few
short excerpts of real music and stores inputs, outputs and a summary of every
intermediate feature map in one compressed ``.npz`` file.  The PyTorch port in
``musichash.models`` is checked against that file by the test suite.

It deliberately imports nothing from ``musichash``: it only needs TensorFlow,
librosa, soundfile and the ``musicnn`` wheel, in a throwaway virtualenv (see
``recipes/musicnn_parity/README.md`` for the exact recipe)::

    /tmp/tfvenv/bin/python recipes/musicnn_parity/make_fixture.py \
        --out tests/fixtures/musicnn_parity.npz

Input pipeline (mirrors ``musicnn.extractor.batch_data`` under the numpy it was
written for, numpy < 1.17):

1. An excerpt (default 12 s from the middle of each track) is read at the source's
   native sample rate with soundfile and written losslessly (32-bit float) to a
   temporary WAV file.
2. ``librosa.load(tmp_wav, sr=16000)`` (mono downmix, librosa's default resampler).
3. ``librosa.feature.melspectrogram(y, sr=16000, hop_length=256, n_fft=512,
   n_mels=96).T`` -> ``.astype(float16)``.
4. ``log10(10000 * x + 1)``.  NOTE: with the legacy (value-based) numpy type
   promotion that musicnn was written for, ``10000 * float16_array`` is computed in
   **float32** (``promote_types(float16, min_scalar_type(10000)=uint16) ==
   float32``).  numpy >= 2 (NEP 50) keeps it in float16, which overflows to ``inf``
   for any mel power above ~6.55 -- i.e. for almost all real music.  This script
   therefore does the multiplication explicitly in float32, which reproduces the
   original behaviour bit for bit; the count of non-finite values the literal
   numpy-2 code path would give is recorded in the metadata for reference.
5. Non-overlapping patches of 187 frames (3 s), like ``extractor(...,
   input_length=3, input_overlap=False)``; the tail that does not fill a patch is
   dropped.

The model graph is built exactly as ``musicnn.extractor.extractor`` does it
(``tf.compat.v1`` graph mode, placeholder ``x`` of shape [None, 187, 96],
``models.define_model(x, is_training, model, 50)``, ``sigmoid``,
``Saver().restore(sess, <musicnn dir>/<model>/)``, ``is_training=False``), but the
features are fetched by this script (``extractor()`` has a bug that re-uses the
first batch's ``cnn1_``, ``cnn2_``, ``cnn3_`` and ``penultimate_`` for all later
batches).  Patches are run one at a
time (musicnn's ``BATCH_SIZE = 1``); a whole-batch run is compared as a sanity
check.

Layout of the output npz (all tensors in TensorFlow's layout, NHWC / [n, T, C]):

* ``meta`` -- 0-d unicode array holding a JSON document: clips (file, sha256,
  excerpt start/length, ...), per-model tensor shapes, variable list, slice
  indices, versions, musicnn wheel sha256, date, top-5 tags.
* ``clip{k}/input`` -- float32 [n, 187, 96]: the exact network input (shared by
  both models, so stored once per clip).
* ``clip{k}/mel_f16`` -- float16 [n, 187, 96]: the float16-quantised mel power
  spectrogram patches before the log (lossless intermediate of step 3).
* ``{model}/clip{k}/logits`` and ``.../probs`` -- float32 [n, 50].
* ``{model}/clip{k}/summary/{feat}`` -- float64 [n, 3]: per-patch mean, std, max
  over all elements of the feature map.
* ``{model}/clip{k}/feat/{feat}`` -- float32 full values of the small maps
  (VGG ``pool5`` [n, 2, 1, 128]; musicnn ``penultimate`` [n, 200], ``mean_pool``
  and ``max_pool`` [n, 753]).
* ``{model}/clip{k}/slice/{feat}`` -- float32: patch 0 of every feature map,
  sub-sampled on a grid (indices per axis in ``meta["models"][model]
  ["slice_index"][feat]``, use ``fmap[0][np.ix_(*idx)]``) so that element-wise
  layout errors, which the permutation-invariant summaries cannot see, are caught.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import hashlib
import json
import os
import platform
import sys
import tempfile
import warnings

# tf.compat.v1.layers only exists with the legacy Keras 2 (package tf-keras) on
# TF >= 2.16, and must be selected before tensorflow is imported.
os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")  # CPU only: reproducible numbers
# musicnn's models.py calls the deprecated tf.compat.v1.layers API on every layer
warnings.filterwarnings("ignore", message=r".*is deprecated and will be removed")

import numpy as np  # noqa: E402
import soundfile as sf  # noqa: E402
import librosa  # noqa: E402
import tensorflow as tf  # noqa: E402

import musicnn  # noqa: E402
from musicnn import configuration as config  # noqa: E402
from musicnn import models  # noqa: E402

MUSICNN_WHEEL_SHA256 = "f38a4890c648c1ddbb141c5d96d2b0a8cfcd36746002d896989f7b88beb65cfa"
MODELS = ("MTT_vgg", "MTT_musicnn")
MUSIC_DIR = "/usr/share/planetblupi/music"
# Three different planetblupi tracks (Debian package planetblupi-music-ogg, GPL-3+).
DEFAULT_CLIPS = ("music000.ogg", "music004.ogg", "music009.ogg")
DEFAULT_LENGTH_S = 12.0
INPUT_LENGTH_S = 3  # musicnn's default / training input length

FEATURES = {
    "MTT_vgg": ("pool1", "pool2", "pool3", "pool4", "pool5"),
    "MTT_musicnn": ("timbral", "temporal", "cnn1", "cnn2", "cnn3",
                    "mean_pool", "max_pool", "penultimate"),
}
FULL_FEATURES = {
    "MTT_vgg": ("pool5",),
    "MTT_musicnn": ("penultimate", "mean_pool", "max_pool"),
}
# Sub-sampling grid for the per-feature "slice": at most this many indices per
# non-batch axis (the last, channel axis gets more).
SLICE_SPATIAL = 12
SLICE_CHANNELS = 32


def sha256_file(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def sha256_array(a: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(a).tobytes()).hexdigest()


def n_frames_for(seconds: float) -> int:
    # exactly as musicnn.extractor.extractor
    return int(librosa.time_to_frames(seconds, sr=config.SR, n_fft=config.FFT_SIZE,
                                      hop_length=config.FFT_HOP)) + 1


def log_mel_patches(wav_path: str, n_frames: int):
    """musicnn.extractor.batch_data(wav_path, n_frames, overlap=n_frames) with
    numpy<1.17 promotion semantics. Returns (mel_f16 patches, input patches,
    audio16k, number of non-finite values the literal numpy>=2 code would give)."""
    audio, sr = librosa.load(wav_path, sr=config.SR)
    audio_rep = librosa.feature.melspectrogram(y=audio, sr=sr,
                                               hop_length=config.FFT_HOP,
                                               n_fft=config.FFT_SIZE,
                                               n_mels=config.N_MELS).T
    mel_f16 = audio_rep.astype(np.float16)
    # legacy promotion: 10000 * float16 -> float32 (see module docstring)
    log_rep = np.log10(np.float32(10000) * mel_f16.astype(np.float32) + np.float32(1))
    assert log_rep.dtype == np.float32
    with np.errstate(over="ignore", invalid="ignore"):
        literal_np2 = np.log10(np.float16(10000) * mel_f16 + np.float16(1))
    n_nonfinite_np2 = int((~np.isfinite(literal_np2)).sum())

    # non-overlapping patches, as the range(0, last_frame, overlap) loop does
    starts = list(range(0, log_rep.shape[0] - n_frames + 1, n_frames))
    if not starts:
        raise ValueError(f"{wav_path}: shorter than one {n_frames}-frame patch")
    inp = np.stack([log_rep[s:s + n_frames] for s in starts])
    mel = np.stack([mel_f16[s:s + n_frames] for s in starts])
    return mel, inp, audio, n_nonfinite_np2, int(log_rep.shape[0])


def load_excerpt(path: str, start_s: float, length_s: float, n_frames: int):
    info = sf.info(path)
    sr = info.samplerate
    start = int(round(start_s * sr))
    frames = int(round(length_s * sr))
    if start < 0 or start + frames > info.frames:
        raise ValueError(f"{path}: excerpt {start_s}+{length_s}s outside the file")
    pcm, sr2 = sf.read(path, start=start, frames=frames, dtype="float32", always_2d=True)
    assert sr2 == sr and pcm.shape[0] == frames, (pcm.shape, frames)
    with tempfile.TemporaryDirectory() as tmp:
        wav = os.path.join(tmp, "excerpt.wav")
        sf.write(wav, pcm, sr, subtype="FLOAT")
        mel, inp, audio16k, nonfinite_np2, total_frames = log_mel_patches(wav, n_frames)
    rec = {
        "native_sr": sr,
        "channels": info.channels,
        "source_duration_s": info.frames / sr,
        "start_s": start / sr,
        "start_sample": start,
        "length_s": frames / sr,
        "length_samples": frames,
        "excerpt_pcm_float32_sha256": sha256_array(pcm),
        "audio16k_samples": int(audio16k.shape[0]),
        "audio16k_float32_sha256": sha256_array(audio16k.astype(np.float32)),
        "mel_frames": total_frames,
        "n_patches": int(inp.shape[0]),
        "nonfinite_with_numpy2_float16_log": nonfinite_np2,
    }
    return mel, inp, rec


def choose_excerpt(path: str, start_s: float | None, length_s: float, n_frames: int):
    """Default: middle of the file. If the input has inf/nan (float16 overflow of
    the mel power, > 65504), try other excerpts around it and say so."""
    dur = sf.info(path).frames / sf.info(path).samplerate
    first = (dur - length_s) / 2.0 if start_s is None else start_s
    candidates = [first] + [first + k * s * length_s for k in range(1, 11) for s in (1, -1)]
    skipped = []
    for cand in candidates:
        if cand < 0 or cand + length_s > dur:
            continue
        mel, inp, rec = load_excerpt(path, cand, length_s, n_frames)
        if np.isfinite(inp).all() and np.isfinite(mel.astype(np.float32)).all():
            rec["skipped_nonfinite_starts_s"] = skipped
            if skipped:
                print(f"  NOTE {os.path.basename(path)}: excerpts at {skipped} s had "
                      f"inf/nan inputs, using {rec['start_s']:.3f} s instead")
            return mel, inp, rec
        skipped.append(round(cand, 6))
    raise RuntimeError(f"{path}: every candidate excerpt overflows float16")


def summary(a: np.ndarray) -> np.ndarray:
    flat = a.reshape(a.shape[0], -1).astype(np.float64)
    return np.stack([flat.mean(1), flat.std(1), flat.max(1)], axis=1)


def slice_index(shape) -> list[list[int]]:
    """Index grid over the non-batch axes of a feature map of `shape` (with batch)."""
    idx = []
    dims = list(shape[1:])
    for ax, d in enumerate(dims):
        m = SLICE_CHANNELS if ax == len(dims) - 1 else SLICE_SPATIAL
        idx.append(sorted(set(np.linspace(0, d - 1, min(d, m)).round().astype(int).tolist())))
    return idx


class TFModel:
    """The musicnn graph, built the way musicnn.extractor.extractor builds it."""

    def __init__(self, model: str, n_frames: int):
        self.model = model
        self.graph = tf.Graph()
        with self.graph.as_default():
            with tf.name_scope("model"):
                self.x = tf.compat.v1.placeholder(tf.float32, [None, n_frames, config.N_MELS])
                self.is_training = tf.compat.v1.placeholder(tf.bool)
                outs = models.define_model(self.x, self.is_training, model,
                                           len(config.MTT_LABELS))
                self.logits = outs[0]
                self.feats = dict(zip(FEATURES[model], outs[1:]))
                self.probs = tf.nn.sigmoid(self.logits)
            self.sess = tf.compat.v1.Session(graph=self.graph)
            self.sess.run(tf.compat.v1.global_variables_initializer())
            saver = tf.compat.v1.train.Saver()
            # unlike extractor(), do not swallow restore errors
            saver.restore(self.sess, os.path.join(os.path.dirname(musicnn.__file__), model) + "/")
            self.variables = [[v.name, v.shape.as_list()]
                              for v in tf.compat.v1.global_variables()]

    def run(self, batch: np.ndarray):
        fetch = [self.logits, self.probs] + [self.feats[k] for k in FEATURES[self.model]]
        out = self.sess.run(fetch, feed_dict={self.x: batch, self.is_training: False})
        return out[0], out[1], dict(zip(FEATURES[self.model], out[2:]))

    def run_per_patch(self, batch: np.ndarray):
        parts = [self.run(batch[i:i + 1]) for i in range(batch.shape[0])]
        logits = np.concatenate([p[0] for p in parts])
        probs = np.concatenate([p[1] for p in parts])
        feats = {k: np.concatenate([p[2][k] for p in parts]) for k in FEATURES[self.model]}
        return logits, probs, feats


def versions() -> dict:
    from importlib import metadata

    def v(name):
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            return None

    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "tensorflow": tf.__version__,
        "tf_keras": v("tf-keras") or v("tf_keras"),
        "keras": v("keras"),
        "TF_USE_LEGACY_KERAS": os.environ.get("TF_USE_LEGACY_KERAS"),
        "librosa": librosa.__version__,
        "numpy": np.__version__,
        "scipy": v("scipy"),
        "soundfile": sf.__version__,
        "libsndfile": getattr(sf, "__libsndfile_version__", None),
        "soxr": v("soxr"),
        "musicnn": v("musicnn"),
    }


def parse_clip(spec: str):
    """PATH or PATH@START_SECONDS; a bare file name is looked up in MUSIC_DIR."""
    start = None
    if "@" in spec:
        spec, s = spec.rsplit("@", 1)
        start = float(s)
    path = spec if os.path.sep in spec else os.path.join(MUSIC_DIR, spec)
    return path, start


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", required=True, help="output .npz path")
    ap.add_argument("--clips", nargs="+", default=list(DEFAULT_CLIPS),
                    help="audio files, PATH or PATH@START_SECONDS (bare names are "
                         f"looked up in {MUSIC_DIR}); default: %(default)s, middle excerpt")
    ap.add_argument("--length", type=float, default=DEFAULT_LENGTH_S,
                    help="excerpt length in seconds (default %(default)s)")
    ap.add_argument("--models", nargs="+", default=list(MODELS), choices=MODELS)
    ap.add_argument("--wheel", default="/tmp/dl/musicnn-0.1.0-py3-none-any.whl",
                    help="musicnn wheel, only to verify its sha256 if present")
    args = ap.parse_args(argv)

    if len(args.clips) < 3:
        print("warning: the parity test expects at least 3 clips", file=sys.stderr)

    wheel_sha = sha256_file(args.wheel) if os.path.exists(args.wheel) else None
    if wheel_sha is not None and wheel_sha != MUSICNN_WHEEL_SHA256:
        raise SystemExit(f"{args.wheel}: sha256 {wheel_sha} != {MUSICNN_WHEEL_SHA256}")

    n_frames = n_frames_for(INPUT_LENGTH_S)
    assert n_frames == 187, n_frames
    labels = list(config.MTT_LABELS)

    arrays: dict[str, np.ndarray] = {}
    clips_meta = []
    print(f"inputs ({args.length} s excerpts, {n_frames}-frame patches)")
    for k, spec in enumerate(args.clips):
        path, start = parse_clip(spec)
        mel, inp, rec = choose_excerpt(path, start, args.length, n_frames)
        rec = {"key": f"clip{k}", "file": os.path.basename(path), "path": path,
               "sha256": sha256_file(path), **rec,
               "input_min": float(inp.min()), "input_max": float(inp.max()),
               "input_mean": float(inp.astype(np.float64).mean())}
        assert np.isfinite(inp).all()
        clips_meta.append(rec)
        arrays[f"clip{k}/input"] = inp.astype(np.float32)
        arrays[f"clip{k}/mel_f16"] = mel.astype(np.float16)
        print(f"  clip{k}: {rec['file']} @ {rec['start_s']:.3f}s + {rec['length_s']:.3f}s "
              f"-> {inp.shape}, range [{rec['input_min']:.3f}, {rec['input_max']:.3f}]; "
              f"numpy>=2 float16 log would have {rec['nonfinite_with_numpy2_float16_log']} "
              f"non-finite values")

    models_meta = {}
    for model in args.models:
        print(f"\n{model}")
        net = TFModel(model, n_frames)
        mmeta = {"features": list(FEATURES[model]),
                 "full_features": list(FULL_FEATURES[model]),
                 "variables": net.variables,
                 "checkpoint_sha256": {
                     f: sha256_file(os.path.join(os.path.dirname(musicnn.__file__), model, f))
                     for f in (".data-00000-of-00001", ".index", ".meta")},
                 "shapes": {}, "slice_index": {}, "batch_vs_per_patch_maxabs": {},
                 "top5_mean_tags": {}}
        for k, clip in enumerate(clips_meta):
            inp = arrays[f"clip{k}/input"]
            logits, probs, feats = net.run_per_patch(inp)
            b_logits, b_probs, b_feats = net.run(inp)
            mmeta["batch_vs_per_patch_maxabs"][f"clip{k}"] = {
                "logits": float(np.abs(b_logits - logits).max()),
                **{f: float(np.abs(b_feats[f] - feats[f]).max()) for f in feats}}
            pre = f"{model}/clip{k}"
            arrays[f"{pre}/logits"] = logits.astype(np.float32)
            arrays[f"{pre}/probs"] = probs.astype(np.float32)
            assert probs.shape == (inp.shape[0], len(labels))
            for name, fm in feats.items():
                assert np.isfinite(fm).all(), (model, name)
                shape = [None] + list(fm.shape[1:])
                if mmeta["shapes"].setdefault(name, shape) != shape:
                    raise AssertionError((name, shape, mmeta["shapes"][name]))
                arrays[f"{pre}/summary/{name}"] = summary(fm)
                if name in FULL_FEATURES[model]:
                    arrays[f"{pre}/feat/{name}"] = fm.astype(np.float32)
                idx = mmeta["slice_index"].setdefault(name, slice_index(fm.shape))
                arrays[f"{pre}/slice/{name}"] = fm[0][np.ix_(*idx)].astype(np.float32)
            mmeta["shapes"]["logits"] = [None, len(labels)]
            mean = probs.mean(0)
            top = np.argsort(-mean)[:5]
            mmeta["top5_mean_tags"][f"clip{k}"] = [[labels[i], float(mean[i])] for i in top]
            print(f"  clip{k} {clip['file']}: " +
                  ", ".join(f"{labels[i]} {mean[i]:.3f}" for i in top))
        net.sess.close()
        models_meta[model] = mmeta

    meta = {
        "description": "TensorFlow reference outputs of musicnn 0.1.0 (MTT models) "
                       "for the PyTorch parity test; see recipes/musicnn_parity/README.md",
        "generator": "recipes/musicnn_parity/make_fixture.py",
        "created_utc": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "musicnn_wheel": "musicnn-0.1.0-py3-none-any.whl",
        "musicnn_wheel_sha256": MUSICNN_WHEEL_SHA256,
        "musicnn_wheel_sha256_verified": wheel_sha == MUSICNN_WHEEL_SHA256,
        "versions": versions(),
        "preprocessing": {
            "sr": config.SR, "n_fft": config.FFT_SIZE, "hop_length": config.FFT_HOP,
            "n_mels": config.N_MELS, "n_frames": n_frames, "overlap": n_frames,
            "librosa_load_res_type": "librosa default (soxr_hq in librosa>=0.10)",
            "mel": "librosa.feature.melspectrogram defaults (power=2, htk=False, "
                   "norm='slaney', center=True, pad_mode='constant', window='hann')",
            "log": "log10(10000 * float32(mel.astype(float16)) + 1), float32",
            "layout": "inputs [n, time=187, mel=96]; features in TF layout (NHWC / [n, T, C])",
        },
        "labels": labels,
        "summary_columns": ["mean", "std", "max"],
        "slice": "fmap[0][np.ix_(*slice_index[feat])] (patch 0, axes after batch)",
        "clips": clips_meta,
        "models": models_meta,
        "keys": {},
    }
    meta["keys"] = {k: {"shape": list(v.shape), "dtype": str(v.dtype)}
                    for k, v in sorted(arrays.items())}
    arrays["meta"] = np.array(json.dumps(meta, indent=1, sort_keys=True))

    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    np.savez_compressed(args.out, **arrays)
    print(f"\nwrote {args.out}: {len(arrays)} arrays, {os.path.getsize(args.out)} bytes")
    return 0


if __name__ == "__main__":
    sys.exit(main())
