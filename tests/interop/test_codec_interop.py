"""transformers `EncodecModel` ⇄ mgen `Codec`: every weight mapped, identical codes, matching reconstructions."""

from __future__ import annotations

import pytest
import torch

transformers = pytest.importorskip("transformers")
from transformers import EncodecConfig, EncodecModel  # noqa: E402

from mgen.codec import Codec, CodecConfig  # noqa: E402
from mgen.interop.encodec import config_from_transformers, hf_key_to_mgen, mgen_key_to_hf  # noqa: E402
from mgen.interop.hf import codec_from_transformers, codec_to_transformers  # noqa: E402


pytestmark = pytest.mark.usefixtures("single_thread")


def musicgen_32khz_config(**overrides) -> EncodecConfig:
    """The MusicGen 32 kHz codec config (see notes/musicgen-facts.md); num_filters reduced for test speed."""
    kw = dict(
        sampling_rate=32000,
        audio_channels=1,
        num_filters=16,
        upsampling_ratios=[8, 5, 4, 4],
        codebook_size=2048,
        codebook_dim=128,
        hidden_size=128,
        target_bandwidths=[2.2],
        normalize=False,
        use_causal_conv=False,
        pad_mode="reflect",
        num_lstm_layers=2,
        compress=2,
        num_residual_layers=1,
        residual_kernel_size=3,
        kernel_size=7,
        last_kernel_size=7,
        use_conv_shortcut=False,
    )
    kw.update(overrides)
    return EncodecConfig(**kw)


def random_encodec(cfg: EncodecConfig, seed: int = 0) -> EncodecModel:
    """Random-init model whose codebooks are spread over the latent distribution (transformers inits them to 0,
    which would make every code 0 and the comparison meaningless)."""
    torch.manual_seed(seed)
    model = EncodecModel(cfg).eval()
    probe = 0.1 * torch.randn(4, 1, cfg.sampling_rate) * torch.rand(4, 1, 1)
    with torch.no_grad():
        residual = model.encoder(probe).permute(0, 2, 1).reshape(-1, cfg.hidden_size)
        for layer in model.quantizer.layers:
            assert layer.codebook.embed.abs().max() == 0  # the degenerate init we replace
            # codewords = latent frames plus noise, level by level on the residual (a poor man's k-means)
            picks = residual[torch.randint(0, residual.shape[0], (cfg.codebook_size,))]
            layer.codebook.embed.copy_(picks + 0.3 * residual.std() * torch.randn_like(picks))
            residual = residual - layer.decode(layer.encode(residual[None].transpose(1, 2))).transpose(1, 2)[0]
    return model


def _audio(length: int, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    t = torch.arange(length) / 32000
    tone = 0.3 * torch.sin(2 * torch.pi * 440 * t) * torch.sin(2 * torch.pi * 3 * t)
    return (tone + 0.05 * torch.randn(2, 1, length, generator=g)).float()


@pytest.mark.parametrize(
    "overrides",
    [
        {},  # MusicGen 32 kHz layout
        {"pad_mode": "constant", "use_conv_shortcut": True, "num_filters": 8},
        {"use_causal_conv": True, "num_filters": 8, "num_lstm_layers": 1},
    ],
    ids=["musicgen-32khz", "constant-pad-conv-shortcut", "causal"],
)
def test_same_codes_and_audio_as_transformers(overrides):
    hf = random_encodec(musicgen_32khz_config(**overrides))
    codec = codec_from_transformers(hf)
    assert codec.frame_rate == 50.0 and codec.n_q == 4 and codec.card == 2048
    wav = _audio(32000 + 321)
    with torch.no_grad():
        hf_codes = hf.encode(wav, bandwidth=2.2).audio_codes[0]  # [B, K, T]
        hf_audio = hf.decode(hf_codes[None], [None]).audio_values
    codes = codec.encode(wav, sample_rate=32000)
    assert codes.shape == hf_codes.shape == (2, 4, 51)
    assert torch.equal(codes, hf_codes)
    assert all(codes[:, k].unique().numel() > 5 for k in range(4))  # not a comparison of constant codes
    audio = codec.decode(codes)
    assert audio.shape == hf_audio.shape
    assert (audio - hf_audio).abs().max().item() < 1e-4
    assert hf_audio.abs().max().item() > 1e-3


def test_every_weight_is_mapped_both_ways():
    hf = random_encodec(musicgen_32khz_config(num_filters=8))
    codec = codec_from_transformers(hf)
    hf_state, ours = hf.state_dict(), codec.state_dict()
    assert len(hf_state) == len(ours)
    for key, value in hf_state.items():
        assert torch.equal(ours[hf_key_to_mgen(key)], value), key
    assert hf_key_to_mgen("quantizer.layers.3.codebook.embed") == "quantizer.layers.3.embed"
    assert mgen_key_to_hf("quantizer.layers.3.embed") == "quantizer.layers.3.codebook.embed"

    back = codec_to_transformers(codec)
    for key, value in back.state_dict().items():
        assert torch.equal(hf_state[key], value), key
    assert back.config.num_quantizers == 4 and back.config.pad_mode == "reflect"


def test_mgen_codec_exports_to_transformers():
    torch.manual_seed(0)
    codec = Codec(CodecConfig.preset("tiny"))
    with torch.no_grad():
        codec.train()(0.1 * torch.randn(2, 1, 16000))  # k-means init
    codec.eval()
    hf = codec_to_transformers(codec)
    assert hf.config.pad_mode == "constant" and not hf.config.use_conv_shortcut
    wav = _audio(8000)
    with torch.no_grad():
        hf_codes = hf.encode(wav, bandwidth=hf.config.target_bandwidths[0]).audio_codes[0]
        hf_audio = hf.decode(hf_codes[None], [None]).audio_values
    codes = codec.encode(wav)
    assert torch.equal(codes, hf_codes)
    assert (codec.decode(codes) - hf_audio).abs().max().item() < 1e-4


def test_unsupported_transformers_configs_are_refused():
    with pytest.raises(ValueError, match="normalisation"):
        config_from_transformers(musicgen_32khz_config(normalize=True))
    with pytest.raises(ValueError, match="mono"):
        config_from_transformers(musicgen_32khz_config(audio_channels=2))
    with pytest.raises(ValueError, match="chunked"):
        config_from_transformers(musicgen_32khz_config(chunk_length_s=1.0, overlap=0.01))
