import json

import numpy as np
import pytest

from musichash.train import augment as A

SR = A.SAMPLE_RATE


def _tone(freq: float, seconds: float = 2.0, amp: float = 0.3) -> np.ndarray:
    t = np.arange(int(seconds * SR)) / SR
    return (amp * np.sin(2 * np.pi * freq * t)).astype(np.float32)


@pytest.fixture
def x() -> np.ndarray:
    """3 s of a 220 Hz harmonic tone, slowly amplitude-modulated, with a little noise."""
    rng = np.random.default_rng(1338)
    t = np.arange(3 * SR) / SR
    y = sum(0.2 / k * np.sin(2 * np.pi * 220 * k * t + rng.uniform(0, 2 * np.pi)) for k in range(1, 9))
    y = y * (0.6 + 0.4 * np.sin(2 * np.pi * 1.5 * t)) + 0.01 * rng.standard_normal(t.size)
    return y.astype(np.float32)


def _snr_db(x, y) -> float:
    x, y = x.astype(np.float64), y.astype(np.float64)
    return 10 * np.log10(np.mean(x**2) / np.mean((y - x) ** 2))


def _band_energy(y, lo, hi) -> float:
    Y = np.abs(np.fft.rfft(y.astype(np.float64))) ** 2
    f = np.fft.rfftfreq(len(y), 1 / SR)
    return float(Y[(f >= lo) & (f < hi)].sum())


def _peak_hz(y) -> float:
    Y = np.abs(np.fft.rfft(y * np.hanning(len(y)), n=8 * len(y)))
    return float(np.argmax(Y) * SR / (8 * len(y)))


def _needs(codec):
    return pytest.mark.skipif(not A.codec_available(codec), reason=f"no {codec} encoder here")


N = 3 * SR
CASES = [
    (A.noise(10.0), N),
    (A.noise(5.0, kind="babble"), N),
    pytest.param(A.mp3(32), N, marks=_needs("libmp3lame")),
    pytest.param(A.opus(16), N, marks=_needs("libopus")),
    pytest.param(A.ogg(2.0), N, marks=_needs("libvorbis")),
    (A.gain(-6.0), N),
    (A.telephone(), N),
    (A.eq(6.0, -6.0), N),
    (A.time_stretch(1.05), round(N / 1.05)),
    (A.time_stretch(0.95), round(N / 0.95)),
    (A.speed(1.05), round(N / 1.05)),
    (A.speed(0.9), round(N / 0.9)),
    (A.pitch_shift(1.0), N),
    (A.reverb(0.5), N),
    (A.crop(0.5, 1.25), 20000),
    (A.crop(None, 1.0), SR),
    (A.crop(2.5, 1.0), SR),  # runs past the end: zero-padded
    (A.pad_silence(0.25, 0.5), N + 4000 + 8000),
    (A.fade(0.5, 1.0), N),
]


@pytest.mark.parametrize("d, n", CASES, ids=lambda v: v.name if isinstance(v, A.Degradation) else "")
def test_shape_dtype_length(x, d, n):
    y = d.apply(x, np.random.default_rng(0))
    assert y.dtype == np.float32 and y.ndim == 1
    assert np.all(np.isfinite(y)) and np.max(np.abs(y)) <= 1.0
    if d.name in ("time_stretch", "speed"):
        assert abs(len(y) - n) <= 0.01 * n
    else:
        assert len(y) == n
    if d.name != "crop":
        assert not np.array_equal(y[: len(x)], x)


@pytest.mark.parametrize("kind", ["white", "babble"])
@pytest.mark.parametrize("snr", [0.0, 7.5, 20.0])
def test_noise_snr_exact(x, kind, snr):
    y = A.noise(snr, kind=kind).apply(x, np.random.default_rng(3))
    assert abs(_snr_db(x, y) - snr) < 0.1


def test_babble_with_background_music(x):
    music = _tone(330.0, seconds=1.3)
    d = A.noise(3.0, kind="babble", background=music)
    y = d.apply(x, np.random.default_rng(4))
    assert abs(_snr_db(x, y) - 3.0) < 0.1
    # The babble is made of the background, so its energy sits at 330 Hz.
    n = y.astype(np.float64) - x
    assert _band_energy(n, 320, 340) > 0.5 * _band_energy(n, 0, SR / 2)
    assert json.loads(A.describe([d]))[0]["params"]["background"] == "external"
    with pytest.raises(A.AugmentError, match="background="):
        A.from_json(A.describe([d]))


def test_noise_on_silence_is_identity():
    z = np.zeros(SR, np.float32)
    assert np.array_equal(A.noise(0.0).apply(z, np.random.default_rng(0)), z)


@pytest.mark.parametrize("db", [-20.0, -3.5, 0.0, 4.0])
def test_gain_exact(x, db):
    y = A.gain(db).apply(x, np.random.default_rng(0))
    assert abs(20 * np.log10(np.std(y) / np.std(x)) - db) < 1e-3


def test_gain_past_full_scale_is_scaled_not_clipped(x):
    y = A.gain(20.0).apply(x, np.random.default_rng(0))
    assert np.max(np.abs(y)) == pytest.approx(1.0, abs=1e-6)
    # Scaled as a whole: the waveform shape is unchanged, nothing flattened.
    np.testing.assert_allclose(y, x / np.max(np.abs(x)), atol=1e-6)


def test_telephone_band():
    rng = np.random.default_rng(5)
    white = (0.1 * rng.standard_normal(N)).astype(np.float32)
    y = A.telephone().apply(white, rng)
    pass_in, pass_out = _band_energy(white, 500, 3000), _band_energy(y, 500, 3000)
    assert pass_out > 0.8 * pass_in
    assert _band_energy(y, 0, 200) < 0.01 * _band_energy(white, 0, 200)
    assert _band_energy(y, 4000, 8000) < 1e-4 * _band_energy(white, 4000, 8000)
    assert _band_energy(y, 0, 300) + _band_energy(y, 3400, 8000) < 0.1 * _band_energy(y, 300, 3400)


def test_eq_shelves():
    low, high = _tone(50.0), _tone(7000.0)
    d = A.eq(6.0, -6.0)
    rng = np.random.default_rng(0)

    def db(a, b):
        return 20 * np.log10(np.std(b[SR // 2 :]) / np.std(a[SR // 2 :]))

    assert db(low, d.apply(low, rng)) == pytest.approx(6.0, abs=0.5)
    assert db(high, d.apply(high, rng)) == pytest.approx(-6.0, abs=0.5)
    mid = _tone(1000.0)
    assert abs(db(mid, d.apply(mid, rng))) < 1.5


@pytest.mark.parametrize("semitones", [1.0, -1.0])
def test_pitch_shift_moves_peak(semitones):
    y = A.pitch_shift(semitones).apply(_tone(440.0), np.random.default_rng(0))
    assert _peak_hz(y) == pytest.approx(440.0 * 2 ** (semitones / 12), rel=0.005)


@pytest.mark.parametrize("d", [A.pitch_shift(1.0), A.pitch_shift(-1.0), A.reverb(0.5), A.eq(6.0, 6.0), A.telephone()])
def test_length_keeping_effects_stay_aligned(d):
    """A tone burst starting at 1 s still starts there (within 5 ms)."""
    x = np.zeros(3 * SR, np.float32)
    x[SR : 2 * SR] = _tone(440.0, seconds=1.0)
    y = d.apply(x, np.random.default_rng(0))
    assert abs(int(np.argmax(np.abs(y) > 0.05)) - SR) <= 80


def test_empty_input_stays_empty():
    z = np.zeros(0, np.float32)
    for d in [A.noise(5.0), A.gain(3.0), A.telephone(), A.eq(3.0, 3.0), A.speed(1.1), A.time_stretch(1.1), A.fade(1, 1)]:
        y = d.apply(z, np.random.default_rng(0))
        assert y.dtype == np.float32 and y.size == 0


def test_speed_moves_pitch_and_stretch_does_not():
    tone = _tone(440.0)
    assert _peak_hz(A.speed(1.05).apply(tone, np.random.default_rng(0))) == pytest.approx(462.0, rel=0.003)
    assert _peak_hz(A.time_stretch(1.05).apply(tone, np.random.default_rng(0))) == pytest.approx(440.0, rel=0.003)


def _lag_and_corr(x, y, max_lag=400):
    """The lag (samples, y later than x is positive) maximising the normalised correlation."""
    best = (0, -1.0)
    x64, y64 = x.astype(np.float64), y.astype(np.float64)
    for lag in range(-max_lag, max_lag + 1, 1):
        a = x64[max(0, -lag) : len(x) - max(0, lag)]
        b = y64[max(0, lag) : len(y) - max(0, -lag)]
        c = float(a @ b / np.sqrt((a @ a) * (b @ b)))
        if c > best[1]:
            best = (lag, c)
    return best


@pytest.mark.parametrize(
    "d",
    [
        pytest.param(A.mp3(32), marks=_needs("libmp3lame")),
        pytest.param(A.mp3(64), marks=_needs("libmp3lame")),
        pytest.param(A.opus(16), marks=_needs("libopus")),
        pytest.param(A.ogg(3.0), marks=_needs("libvorbis")),
        pytest.param(A.aac(48), marks=_needs("aac")),
    ],
    ids=lambda d: f"{d.name}-{list(d.params.values())[0]}",
)
def test_codec_aligned_and_lossy(x, d):
    y = d.apply(x, np.random.default_rng(0))
    lag, c = _lag_and_corr(x[: 2 * SR], y[: 2 * SR], max_lag=160)
    assert abs(lag) <= 32  # within 2 ms
    c0 = float(np.dot(x, y) / np.sqrt(np.dot(x, x) * np.dot(y, y)))
    assert c0 > 0.9
    assert not np.allclose(x, y, atol=1e-3)


def test_mp3_bitrate_checked():
    with pytest.raises(A.AugmentError, match="kbps"):
        A.mp3(100)


@pytest.mark.parametrize(
    "make",
    [lambda: A.time_stretch(0), lambda: A.speed(-1), lambda: A.noise(float("nan")), lambda: A.noise(5, kind="brown"),
     lambda: A.noise(5, kind="music"), lambda: A.overdrive(-1), lambda: A.aac(8),
     lambda: A.crop(-1, 1), lambda: A.reverb(2.0), lambda: A.opus(1)],
)
def test_bad_parameters(make):
    with pytest.raises(A.AugmentError):
        make()


def test_rejects_stereo():
    with pytest.raises(A.AugmentError, match="mono"):
        A.gain(0).apply(np.zeros((2, 100), np.float32), np.random.default_rng(0))


def test_chain_applies_in_order(x):
    steps = [A.gain(-6.0), A.pad_silence(0.1, 0.0), A.crop(0.0, 0.5)]
    y = A.chain(*steps).apply(x, np.random.default_rng(0))
    assert len(y) == SR // 2
    assert np.all(y[: SR // 10] == 0)
    np.testing.assert_allclose(y[SR // 10 :], x[: SR // 2 - SR // 10] * 10 ** (-6 / 20), atol=1e-6)


def test_random_view_reproducible(x):
    v1 = A.random_view(np.random.default_rng(11), duration_s=3.0, crop_s=2.0)
    v2 = A.random_view(np.random.default_rng(11), duration_s=3.0, crop_s=2.0)
    assert v1 == v2
    y1 = A.chain(*v1).apply(x, np.random.default_rng(12))
    y2 = A.chain(*v2).apply(x, np.random.default_rng(12))
    assert np.array_equal(y1, y2)
    assert y1.dtype == np.float32 and np.all(np.isfinite(y1))
    views = {A.describe(A.random_view(np.random.default_rng(s))) for s in range(20)}
    assert len(views) > 15


def test_random_view_strength_zero_is_only_the_crop(x):
    v = A.random_view(np.random.default_rng(0), strength=0.0, crop_s=1.0)
    assert [d.name for d in v] == ["crop"] and v[0].params["start_s"] is None


def test_random_view_strength_one_draws_every_kind():
    names = {d.name for s in range(200) for d in A.random_view(np.random.default_rng(s))}
    assert {"time_stretch", "pitch_shift", "eq", "telephone", "noise", "mp3", "opus", "gain"} <= names


def test_describe_round_trips():
    view = [A.noise(7.0, kind="babble"), A.mp3(48), A.crop(None, 2.0), A.eq(-3.0, 2.5), A.telephone()]
    text = A.describe(view)
    assert json.loads(text)[0] == {"name": "noise", "params": {"kind": "babble", "snr_db": 7.0}}
    assert A.from_json(text) == view
    assert A.describe(A.chain(*view)) == text
    with pytest.raises(A.AugmentError, match="unknown degradation"):
        A.from_json('[{"name": "bitcrush", "params": {}}]')


def test_pink_noise_has_equal_power_per_octave(x):
    y = A.noise(0.0, kind="pink").apply(np.zeros_like(x) + x, np.random.default_rng(1)).astype(np.float64) - x
    f = np.fft.rfftfreq(len(y), 1 / SR)
    p = np.abs(np.fft.rfft(y)) ** 2
    octave = [p[(f >= lo) & (f < 2 * lo)].sum() for lo in (250.0, 500.0, 1000.0, 2000.0)]
    assert max(octave) / min(octave) < 1.5  # white noise would double per octave


def test_music_underneath_is_the_background_at_the_asked_snr(x):
    other = np.sin(2 * np.pi * 97.0 * np.arange(len(x)) / SR).astype(np.float32)
    y = A.noise(5.0, kind="music", background=other).apply(x, np.random.default_rng(2)).astype(np.float64)
    n = y - x
    assert 10 * np.log10(np.mean(x.astype(np.float64) ** 2) / np.mean(n**2)) == pytest.approx(5.0, abs=0.05)
    spec = np.abs(np.fft.rfft(n))
    assert np.fft.rfftfreq(len(n), 1 / SR)[spec.argmax()] == pytest.approx(97.0, abs=0.5)


def test_overdrive_clips_hard(x):
    y = A.overdrive(12.0).apply(x, np.random.default_rng(0))
    assert np.abs(y).max() == pytest.approx(1.0)
    assert np.mean(np.abs(y) >= 0.999) > 0.01  # flat tops
    assert np.array_equal(A.overdrive(0.0).apply(x, np.random.default_rng(0)), (x / np.abs(x).max()).astype(np.float32))


@_needs("libopencore_amrnb")
def test_phone_recording_is_narrowband_and_keeps_length(x):
    y = A.phone_recording(0.5).apply(x, np.random.default_rng(0))
    assert len(y) == len(x)
    f = np.fft.rfftfreq(len(y), 1 / SR)
    p = np.abs(np.fft.rfft(y.astype(np.float64))) ** 2
    assert p[f > 4200].sum() < 1e-3 * p.sum()  # nothing above the 8 kHz codec's band


def test_identification_views_cover_the_query_conditions():
    other = np.ones(SR, dtype=np.float32)
    views = [A.identification_view(np.random.default_rng(s), other) for s in range(300)]
    names = {d.name for v in views for d in v}
    assert {"mp3", "aac", "noise", "gain", "overdrive", "phone_recording", "time_stretch", "pitch_shift", "speed"} <= names
    kinds = {d.params["kind"] for v in views for d in v if d.name == "noise"}
    assert kinds == {"white", "pink", "babble", "music"}
    assert all(d.background is other for v in views for d in v if d.name == "noise" and d.params["kind"] == "music")
    assert 0.08 < sum(v == [] for v in views) / len(views) < 0.18  # one in eight left clean
    pitches = [d.params["semitones"] for v in views for d in v if d.name == "pitch_shift"]
    assert min(pitches) < -1.0 and max(pitches) > 1.0  # +-2 semitones, beyond random_view's +-1
    # without other music, the music condition falls back to babble
    assert not any(d.params.get("kind") == "music" for s in range(300)
                   for d in A.identification_view(np.random.default_rng(s)))
    assert A.identification_view(np.random.default_rng(5), other) == A.identification_view(np.random.default_rng(5), other)


def test_time_scale_multiplies_tempo_and_speed():
    assert A.time_scale([]) == 1.0
    assert A.time_scale([A.time_stretch(1.05), A.mp3(64), A.speed(0.97)]) == pytest.approx(1.05 * 0.97)
    assert A.time_scale([A.pitch_shift(2.0)]) == 1.0
