"""Audio helpers: resampling keeps pitch and length, loudness hits its target, bad inputs give reasons."""

from __future__ import annotations

import numpy as np
import pytest
import soundfile as sf

from mgen.audio import (AudioError, check_sample_rate, encode_flac, normalize_loudness, probe, read_segment, resample,
                        rms_db, to_channels)


def _peak_hz(x: np.ndarray, rate: int) -> float:
    spectrum = np.abs(np.fft.rfft(x[:, 0] * np.hanning(len(x))))
    return float(np.fft.rfftfreq(len(x), 1.0 / rate)[np.argmax(spectrum)])


@pytest.mark.parametrize("rate_in,rate_out", [(44100, 32000), (22050, 32000), (48000, 16000)])
def test_resample_keeps_pitch_and_length(rate_in, rate_out):
    t = np.arange(rate_in * 2) / rate_in
    x = (0.5 * np.sin(2 * np.pi * 1000.0 * t))[:, None].astype(np.float32)
    y = resample(x, rate_in, rate_out)
    assert y.dtype == np.float32 and y.shape[1] == 1
    assert abs(y.shape[0] - 2 * rate_out) <= 1
    assert _peak_hz(y, rate_out) == pytest.approx(1000.0, abs=1.0)
    assert rms_db(y[1000:-1000]) == pytest.approx(rms_db(x[1000:-1000]), abs=0.1)


def test_resample_removes_content_above_the_new_nyquist():
    rate = 48000
    t = np.arange(rate) / rate
    x = (0.5 * np.sin(2 * np.pi * 12000.0 * t))[:, None].astype(np.float32)  # above 8 kHz Nyquist of 16 kHz
    assert rms_db(resample(x, rate, 16000)) < -60


def test_normalize_loudness_and_peak_ceiling():
    rng = np.random.default_rng(0)
    x = (0.01 * rng.standard_normal((32000, 1))).astype(np.float32)
    assert rms_db(normalize_loudness(x, -20.0)) == pytest.approx(-20.0, abs=0.01)
    spiky = x.copy()
    spiky[100] = 0.5  # a peak that the RMS target would push far over full scale
    y = normalize_loudness(spiky, -10.0, peak_db=-1.0)
    assert np.max(np.abs(y)) == pytest.approx(10 ** (-1 / 20), rel=1e-4)
    with pytest.raises(AudioError, match="silent"):
        normalize_loudness(np.zeros((1000, 1), np.float32), -20.0)


def test_channel_conversion():
    stereo = np.stack([np.ones(4), -np.ones(4) * 0.5], axis=1).astype(np.float32)
    assert np.allclose(to_channels(stereo, 1), 0.25)
    assert to_channels(stereo[:, :1], 2).shape == (4, 2)
    assert to_channels(stereo, 2) is stereo


def test_flac_encoding_is_deterministic_and_lossless_at_16_bit():
    x = (np.round(np.sin(np.arange(8000) / 10)[:, None] * 16000) / 32768).astype(np.float32)
    assert encode_flac(x, 16000) == encode_flac(x, 16000)
    import io

    y, rate = sf.read(io.BytesIO(encode_flac(x, 16000)), dtype="float32", always_2d=True)
    assert rate == 16000 and np.array_equal(x, y)


@pytest.mark.parametrize("rate", [0, -1, 999, 384_001, 10**9, 32000.5, float("nan"), "32000", True])
def test_sample_rates_that_cannot_be_reached(rate):
    with pytest.raises(ValueError, match="sample rate"):
        check_sample_rate(rate)


def test_whole_float_sample_rate_is_accepted():
    assert check_sample_rate(44100.0) == 44100


def test_unreadable_audio_gives_a_reason(tmp_path):
    (tmp_path / "empty.wav").write_bytes(b"")
    with pytest.raises(AudioError, match="not readable"):
        probe(tmp_path / "empty.wav")
    sf.write(str(tmp_path / "nan.wav"), np.full((100, 1), np.nan, np.float32), 8000, subtype="FLOAT")
    with pytest.raises(AudioError, match="NaN"):
        read_segment(tmp_path / "nan.wav")
