"""Codec model: presets, shapes and frame rates (mono, stereo), channel interleaving, SEANet padding, input checks."""

from __future__ import annotations

import math
import warnings

import pytest
import torch

from mgen.codec import Codec, CodecConfig, deinterleave_channels, interleave_channels
from mgen.codec.seanet import SEANetConfig, SEANetEncoder, pad1d


pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.fixture(scope="module")
def tiny() -> Codec:
    torch.manual_seed(0)
    codec = Codec(CodecConfig.preset("tiny"))
    with torch.no_grad():
        codec.train()(_noise(2, 1, 32000, seed=99))  # k-means init: spread-out codes, as in a trained codec
    return codec.eval()


@pytest.fixture(scope="module")
def tiny_stereo(tiny) -> Codec:
    stereo = Codec(CodecConfig.preset("tiny", channels=2)).eval()
    stereo.load_state_dict(tiny.state_dict())  # same mono model
    return stereo


def _noise(*shape: int, seed: int = 0) -> torch.Tensor:
    return 0.1 * torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def test_presets():
    paper = CodecConfig.preset("paper-32khz")
    assert paper.sample_rate == 32000 and paper.channels == 1
    assert paper.hop_length == 640 and paper.frame_rate == 50.0
    assert paper.seanet.n_filters == 64 and paper.seanet.dimension == 128 and paper.seanet.lstm == 2
    assert paper.quantizer.n_q == 4 and paper.quantizer.card == 2048
    assert not paper.seanet.causal
    tiny = CodecConfig.preset("tiny")
    assert tiny.frame_rate == 50.0 and tiny.quantizer.card == 256
    with pytest.raises(ValueError, match="unknown codec preset"):
        CodecConfig.preset("huge")
    merged = CodecConfig.preset("tiny", channels=2, quantizer={"n_q": 2})
    assert merged.channels == 2 and merged.quantizer.n_q == 2 and merged.quantizer.card == 256
    assert CodecConfig.from_dict(merged.to_dict()) == merged
    with pytest.raises(ValueError, match="bad codec config"):
        CodecConfig.from_dict({**merged.to_dict(), "seanet": {"nonsense": 1}})
    with pytest.raises(ValueError, match="channels"):
        CodecConfig(channels=3)


@pytest.mark.parametrize("length", [1, 639, 640, 641, 16000 + 37])
def test_tiny_mono_round_trip_shapes(tiny, length):
    wav = _noise(2, 1, length)
    codes = tiny.encode(wav, sample_rate=32000)
    frames = math.ceil(length / 640)
    assert codes.shape == (2, 4, frames) == (2, tiny.n_q, tiny.num_frames(length))
    assert codes.dtype == torch.int64 and codes.min() >= 0 and codes.max() < tiny.card
    out = tiny.decode(codes)
    assert out.shape == (2, 1, frames * 640)
    assert tiny.decode(codes, length=length).shape == (2, 1, length)


def test_properties(tiny, tiny_stereo):
    assert (tiny.sample_rate, tiny.channels, tiny.frame_rate, tiny.n_q, tiny.card) == (
        32000, 1, 50.0, 4, 256,
    )
    assert tiny_stereo.channels == 2 and tiny_stereo.n_q == 8


def test_forward_training_pass(tiny):
    codec = Codec(CodecConfig.preset("tiny", quantizer={"kmeans_iters": 2}))
    codec.train()
    wav = _noise(2, 1, 6400 + 5)
    out = codec(wav)
    assert out.audio.shape == wav.shape
    assert out.codes.shape == (2, 4, 11)
    assert out.penalty.ndim == 0 and out.penalty.item() >= 0
    (out.audio.pow(2).mean() + out.penalty).backward()
    assert codec.encoder.layers[0].conv.parametrizations.weight.original1.grad is not None
    assert codec.decoder.layers[-1].conv.parametrizations.weight.original1.grad is not None
    assert all(layer.inited.item() == 1 for layer in codec.quantizer.layers)


def test_stereo_interleaves_left_right_per_codebook(tiny, tiny_stereo):
    left, right = _noise(2, 1, 3200, seed=1), _noise(2, 1, 3200, seed=2)
    stereo_codes = tiny_stereo.encode(torch.cat([left, right], dim=1))
    assert stereo_codes.shape == (2, 8, 5)
    left_codes, right_codes = tiny.encode(left), tiny.encode(right)
    assert not torch.equal(left_codes, right_codes)
    # [L0, R0, L1, R1, …]
    assert torch.equal(stereo_codes[:, 0::2], left_codes)
    assert torch.equal(stereo_codes[:, 1::2], right_codes)
    audio = tiny_stereo.decode(stereo_codes)
    assert audio.shape == (2, 2, 3200)
    assert torch.allclose(audio[:, :1], tiny.decode(left_codes), atol=1e-6)
    assert torch.allclose(audio[:, 1:], tiny.decode(right_codes), atol=1e-6)
    out = tiny_stereo(torch.cat([left, right], dim=1))
    assert out.audio.shape == (2, 2, 3200) and out.codes.shape == (2, 8, 5)


def test_interleave_helpers_round_trip():
    per_channel = torch.arange(2 * 2 * 3 * 4).reshape(2, 2, 3, 4)  # [B, C, K, T]
    lm = interleave_channels(per_channel)
    assert lm.shape == (2, 6, 4)
    assert torch.equal(lm[:, 2], per_channel[:, 0, 1]) and torch.equal(lm[:, 3], per_channel[:, 1, 1])
    assert torch.equal(deinterleave_channels(lm, 2), per_channel)


def test_paper_preset_mono_and_stereo_shapes():
    torch.manual_seed(0)
    codec = Codec(CodecConfig.preset("paper-32khz")).eval()
    assert sum(p.numel() for p in codec.parameters()) == pytest.approx(56.9e6, rel=0.01)
    wav = _noise(1, 1, 6401)
    codes = codec.encode(wav)
    assert codes.shape == (1, 4, 11)
    assert codec.decode(codes).shape == (1, 1, 11 * 640)
    stereo = Codec(CodecConfig.preset("paper-32khz", channels=2)).eval()
    stereo.load_state_dict(codec.state_dict())
    sc = stereo.encode(torch.cat([wav, 0.5 * wav], dim=1))
    assert sc.shape == (1, 8, 11) and stereo.n_q == 8
    assert torch.equal(sc[:, 0::2], codes)
    assert stereo.decode(sc).shape == (1, 2, 11 * 640)


def test_causal_encoder_ignores_the_future():
    cfg = SEANetConfig(dimension=8, n_filters=4, ratios=(4, 4), lstm=1, causal=True, trim_right_ratio=1.0)
    enc = SEANetEncoder(cfg).eval()
    x = _noise(1, 1, 16 * 10)
    y = x.clone()
    y[..., 16 * 6 :] += 1.0
    with torch.no_grad():
        zx, zy = enc(x), enc(y)
    assert zx.shape == (1, 8, 10)
    assert torch.allclose(zx[..., :6], zy[..., :6])
    assert not torch.allclose(zx[..., 6:], zy[..., 6:])


@pytest.mark.parametrize("pad_mode", ["constant", "reflect", "replicate"])
@pytest.mark.parametrize("causal", [False, True])
def test_seanet_variants_lengths(pad_mode, causal):
    cfg = CodecConfig(
        sample_rate=8000,
        seanet=SEANetConfig(
            dimension=8, n_filters=4, ratios=(5, 2), lstm=0, causal=causal, pad_mode=pad_mode, true_skip=False
        ),
        quantizer={"n_q": 2, "card": 8},
    )
    codec = Codec(cfg).eval()
    assert codec.encoder.layers[1].shortcut.__class__.__name__ == "NormConv1d"  # true_skip=False
    for length in (1, 3, 10, 11, 57):
        codes = codec.encode(_noise(1, 1, length))
        assert codes.shape == (1, 2, math.ceil(length / 10))
        assert codec.decode(codes).shape[-1] == codes.shape[-1] * 10


def test_reflect_pad_on_inputs_shorter_than_the_padding():
    x = torch.arange(3.0).reshape(1, 1, 3)
    out = pad1d(x, 4, 5, "reflect")
    assert out.shape[-1] == 3 + 9 and torch.isfinite(out).all()
    assert torch.equal(out[..., 4:7], x)


# ---- bad input -----------------------------------------------------------------------------------------------


def test_bad_audio_raises(tiny, tiny_stereo):
    with pytest.raises(ValueError, match="channel"):
        tiny.encode(_noise(1, 2, 640))
    with pytest.raises(ValueError, match="channel"):
        tiny_stereo.encode(_noise(1, 1, 640))
    with pytest.raises(ValueError, match="sample rate 44100"):
        tiny.encode(_noise(1, 1, 640), sample_rate=44100)
    with pytest.raises(ValueError, match=r"\[B, C, L\]"):
        tiny.encode(_noise(1, 640))
    with pytest.raises(ValueError, match="empty"):
        tiny.encode(torch.zeros(1, 1, 0))
    for bad in (float("nan"), float("inf"), -float("inf")):
        wav = _noise(1, 1, 640)
        wav[0, 0, 17] = bad
        with pytest.raises(ValueError, match="NaN or infinite"):
            tiny.encode(wav)
        with pytest.raises(ValueError, match="NaN or infinite"):
            tiny(wav)
    with pytest.raises(ValueError, match="floating-point"):
        tiny.encode(torch.zeros(1, 1, 640, dtype=torch.int16))


def test_silent_audio_warns_but_encodes(tiny):
    with pytest.warns(RuntimeWarning, match="silent"):
        codes = tiny.encode(torch.zeros(1, 1, 640))
    assert codes.shape == (1, 4, 1)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        tiny.encode(_noise(1, 1, 640))  # no warning for real audio


def test_bad_codes_raise(tiny, tiny_stereo):
    good = torch.zeros(1, 4, 3, dtype=torch.long)
    tiny.decode(good)
    with pytest.raises(ValueError, match=r"shape \[B, K, T\]"):
        tiny.decode(torch.zeros(4, 3, dtype=torch.long))
    with pytest.raises(ValueError, match=r"3 codebooks, the codec \(4 per channel x 1 channel\(s\)\) expects 4"):
        tiny.decode(torch.zeros(1, 3, 3, dtype=torch.long))
    with pytest.raises(ValueError, match="expects 8"):
        tiny_stereo.decode(good)
    with pytest.raises(ValueError, match=r"codes must lie in \[0, 255\]"):
        tiny.decode(good - 1)
    with pytest.raises(ValueError, match=r"codes must lie in \[0, 255\]"):
        tiny.decode(good + 256)
    with pytest.raises(ValueError, match="integer"):
        tiny.decode(good.float())
