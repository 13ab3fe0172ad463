"""Move EnCodec weights between transformers' `EncodecModel` and `mgen.codec.Codec`.

mgen's SEANet keeps the published layer order, so parameter names coincide with transformers' except for the
codebook buffers (transformers nests them one level deeper, ``…layers.i.codebook.embed``). The mapping is still
spelled out and checked both ways: every source tensor must land somewhere and every target tensor must be filled,
so a layout change on either side fails loudly instead of leaving random weights behind.

Only the configurations mgen can represent are accepted: mono, weight norm, no input normalisation, no chunking
(the MusicGen 32 kHz tokenizer is one of them). A stereo mgen codec is exported as its mono model, which is how
transformers' stereo MusicGen uses its audio encoder too (one pass per channel).
"""

from __future__ import annotations

import math
import re

import torch

from mgen.codec.model import Codec, CodecConfig
from mgen.codec.quantizer import RVQConfig
from mgen.codec.seanet import SEANetConfig

_CODEBOOK_HF = re.compile(r"^quantizer\.layers\.(\d+)\.codebook\.(inited|cluster_size|embed|embed_avg)$")
_CODEBOOK_MGEN = re.compile(r"^quantizer\.layers\.(\d+)\.(inited|cluster_size|embed|embed_avg)$")


def hf_key_to_mgen(key: str) -> str:
    """transformers state-dict key → mgen key."""
    m = _CODEBOOK_HF.match(key)
    if m:
        return f"quantizer.layers.{m.group(1)}.{m.group(2)}"
    return key


def mgen_key_to_hf(key: str) -> str:
    """mgen state-dict key → transformers key."""
    m = _CODEBOOK_MGEN.match(key)
    if m:
        return f"quantizer.layers.{m.group(1)}.codebook.{m.group(2)}"
    return key


def _transfer(source: dict[str, torch.Tensor], target: torch.nn.Module, rename) -> None:
    """Copy ``source`` into ``target`` under ``rename``; every key on both sides must be used exactly once."""
    expected = target.state_dict()
    mapped: dict[str, torch.Tensor] = {}
    for key, value in source.items():
        new_key = rename(key)
        if new_key not in expected:
            raise ValueError(f"weight {key!r} (as {new_key!r}) has no counterpart in {type(target).__name__}")
        if tuple(expected[new_key].shape) != tuple(value.shape):
            raise ValueError(
                f"shape mismatch for {key!r}: {tuple(value.shape)} vs {tuple(expected[new_key].shape)} in target"
            )
        mapped[new_key] = value
    missing = sorted(set(expected) - set(mapped))
    if missing:
        raise ValueError(f"{type(target).__name__} weights not provided by the source: {missing[:8]}")
    target.load_state_dict(mapped, strict=True)


def config_from_transformers(hf_config) -> CodecConfig:
    """`transformers.EncodecConfig` → `CodecConfig`, refusing what mgen's codec does not implement."""
    c = hf_config
    if c.audio_channels != 1:
        raise ValueError(f"only mono EnCodec models can be loaded (audio_channels={c.audio_channels})")
    if c.norm_type != "weight_norm":
        raise ValueError(f"only norm_type='weight_norm' is supported, got {c.norm_type!r}")
    if c.normalize:
        raise ValueError("EnCodec models with input normalisation (normalize=True) are not supported")
    if c.chunk_length_s is not None:
        raise ValueError("chunked EnCodec models (chunk_length_s set) are not supported")
    if c.codebook_dim != c.hidden_size:
        raise ValueError(f"codebook_dim ({c.codebook_dim}) must equal hidden_size ({c.hidden_size})")
    seanet = SEANetConfig(
        channels=1,
        dimension=c.hidden_size,
        n_filters=c.num_filters,
        ratios=tuple(c.upsampling_ratios),
        n_residual_layers=c.num_residual_layers,
        residual_kernel_size=c.residual_kernel_size,
        dilation_base=c.dilation_growth_rate,
        compress=c.compress,
        lstm=c.num_lstm_layers,
        kernel_size=c.kernel_size,
        last_kernel_size=c.last_kernel_size,
        causal=c.use_causal_conv,
        pad_mode=c.pad_mode,
        true_skip=not c.use_conv_shortcut,
        trim_right_ratio=c.trim_right_ratio,
        norm="weight_norm",
    )
    return CodecConfig(
        sample_rate=c.sampling_rate,
        channels=1,
        seanet=seanet,
        quantizer=RVQConfig(n_q=c.num_quantizers, card=c.codebook_size),
    )


def codec_from_transformers(model) -> Codec:
    """Build an mgen `Codec` with the weights and codebooks of a transformers `EncodecModel` (eval mode)."""
    codec = Codec(config_from_transformers(model.config))
    _transfer(model.state_dict(), codec, hf_key_to_mgen)
    return codec.eval()


def config_to_transformers(config: CodecConfig):
    """`CodecConfig` → `transformers.EncodecConfig` for the (mono) model."""
    from transformers import EncodecConfig

    s, q = config.seanet, config.quantizer
    if s.norm != "weight_norm":
        raise ValueError("only weight-normed codecs can be exported to transformers")
    if 2 ** int(math.log2(q.card)) != q.card:
        raise ValueError(f"transformers requires a power-of-two codebook size, got {q.card}")
    # transformers derives the number of codebooks from a bandwidth in kbps and an integer frame rate.
    hf_frame_rate = math.ceil(config.sample_rate / s.hop_length)
    bandwidth = q.n_q * math.ceil(math.log2(q.card)) * hf_frame_rate / 1000
    hf = EncodecConfig(
        target_bandwidths=[bandwidth],
        sampling_rate=config.sample_rate,
        audio_channels=1,
        normalize=False,
        chunk_length_s=None,
        overlap=None,
        hidden_size=s.dimension,
        num_filters=s.n_filters,
        num_residual_layers=s.n_residual_layers,
        upsampling_ratios=list(s.ratios),
        norm_type="weight_norm",
        kernel_size=s.kernel_size,
        last_kernel_size=s.last_kernel_size,
        residual_kernel_size=s.residual_kernel_size,
        dilation_growth_rate=s.dilation_base,
        use_causal_conv=s.causal,
        pad_mode=s.pad_mode,
        compress=s.compress,
        num_lstm_layers=s.lstm,
        trim_right_ratio=s.trim_right_ratio,
        codebook_size=q.card,
        codebook_dim=s.dimension,
        use_conv_shortcut=not s.true_skip,
    )
    if hf.num_quantizers != q.n_q:  # float rounding in bandwidth → codebook count; nudge up
        hf.target_bandwidths = [bandwidth * (1 + 1e-6)]
    if hf.num_quantizers != q.n_q:
        raise ValueError(f"cannot express {q.n_q} codebooks as a transformers bandwidth")
    return hf


def codec_to_transformers(codec: Codec):
    """Build a transformers `EncodecModel` (mono, eval mode) with the weights of ``codec``.

    Encode with ``bandwidth=model.config.target_bandwidths[0]`` to get all codebooks.
    """
    from transformers import EncodecModel

    model = EncodecModel(config_to_transformers(codec.config))
    _transfer(codec.state_dict(), model, mgen_key_to_hf)
    return model.eval()


__all__ = [
    "codec_from_transformers",
    "codec_to_transformers",
    "config_from_transformers",
    "config_to_transformers",
    "hf_key_to_mgen",
    "mgen_key_to_hf",
]
