"""Weights between mgen's LM and transformers' MusicGen decoder.

This is how users fine-tune the public MusicGen checkpoints with mgen: load them with transformers from a
local path, convert, train, and convert back. transformers keeps separate q/k/v projections; mgen fuses
them (one matmul for self-attention, one for the cross-attention keys/values).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from mgen.lm.model import LM, LMConfig
from mgen.lm.patterns import stereo_delays


def _decoder_parts(model: Any) -> tuple[Any, Any, Any]:
    """(config, decoder, lm_heads) of a MusicgenForCausalLM or a MusicgenForConditionalGeneration."""
    causal = getattr(model, "decoder", model)  # ConditionalGeneration holds a MusicgenForCausalLM as .decoder
    if not hasattr(causal, "lm_heads") or not hasattr(causal, "model"):
        raise ValueError(f"expected a transformers MusicgenForCausalLM or MusicgenForConditionalGeneration, "
                         f"got {type(model).__name__}")
    return causal.config, causal.model.decoder, causal.lm_heads


def config_from_transformers(hf_config: Any) -> LMConfig:
    """The LMConfig equivalent to a transformers MusicgenDecoderConfig."""
    if getattr(hf_config, "scale_embedding", False):
        raise ValueError("scale_embedding=True MusicGen decoders are not supported")
    act = hf_config.activation_function
    if act not in ("gelu", "relu"):
        raise ValueError(f"unsupported activation {act!r}")
    n_q = hf_config.num_codebooks
    options: dict[str, Any] = {}
    if getattr(hf_config, "audio_channels", 1) == 2:
        options["delays"] = stereo_delays(n_q // 2)
    return LMConfig(n_q=n_q, card=hf_config.vocab_size, dim=hf_config.hidden_size,
                    num_heads=hf_config.num_attention_heads, num_layers=hf_config.num_hidden_layers,
                    ffn_dim=hf_config.ffn_dim, activation=act, cross_attention=True, pattern="delay",
                    pattern_options=options)


def _copy(dst: nn.Parameter | torch.Tensor, src: torch.Tensor) -> None:
    if dst.shape != src.shape:
        raise ValueError(f"shape mismatch while converting weights: {tuple(dst.shape)} vs {tuple(src.shape)}")
    with torch.no_grad():
        dst.copy_(src)


def _copy_norm(dst: nn.LayerNorm, src: nn.LayerNorm) -> None:
    _copy(dst.weight, src.weight)
    _copy(dst.bias, src.bias)


@torch.no_grad()
def lm_from_transformers(model: Any) -> LM:
    """An mgen LM with the weights of a transformers MusicGen decoder (float32, on the CPU)."""
    hf_config, decoder, heads = _decoder_parts(model)
    lm = LM(config_from_transformers(hf_config))
    for ours, theirs in zip(lm.embeddings, decoder.embed_tokens):
        _copy(ours.weight, theirs.weight)
    for ours, theirs in zip(lm.layers, decoder.layers):
        sa, ca = theirs.self_attn, theirs.encoder_attn
        _copy(ours.self_attn.qkv.weight, torch.cat([sa.q_proj.weight, sa.k_proj.weight, sa.v_proj.weight]))
        _copy(ours.self_attn.out.weight, sa.out_proj.weight)
        _copy(ours.cross_attn.q.weight, ca.q_proj.weight)
        _copy(ours.cross_attn.kv.weight, torch.cat([ca.k_proj.weight, ca.v_proj.weight]))
        _copy(ours.cross_attn.out.weight, ca.out_proj.weight)
        _copy(ours.ff.up.weight, theirs.fc1.weight)
        _copy(ours.ff.down.weight, theirs.fc2.weight)
        _copy_norm(ours.norm_self, theirs.self_attn_layer_norm)
        _copy_norm(ours.norm_cross, theirs.encoder_attn_layer_norm)
        _copy_norm(ours.norm_ff, theirs.final_layer_norm)
    _copy_norm(lm.out_norm, decoder.layer_norm)
    for ours, theirs in zip(lm.heads, heads):
        _copy(ours.weight, theirs.weight)
    return lm


def _check_convertible(cfg: LMConfig) -> None:
    problems = []
    if not cfg.cross_attention:
        problems.append("transformers' MusicGen decoder always has cross-attention")
    if cfg.bias_attn or cfg.bias_ff or cfg.bias_proj:
        problems.append("transformers' MusicGen decoder has no biases in attention, feed-forward or heads")
    if cfg.pattern != "delay":
        problems.append(f"transformers' MusicGen generates with the delay pattern, this LM uses {cfg.pattern!r}")
    if cfg.max_period != 10_000.0:
        problems.append("transformers' positional embedding uses max period 10000")
    if problems:
        raise ValueError("cannot convert this LM to transformers: " + "; ".join(problems))


@torch.no_grad()
def lm_to_transformers(lm: LM) -> Any:
    """A transformers MusicgenForCausalLM with the weights of an mgen LM."""
    from transformers import MusicgenDecoderConfig, MusicgenForCausalLM  # heavy import

    cfg = lm.cfg
    _check_convertible(cfg)
    delays = list(cfg.pattern_options.get("delays", range(cfg.n_q)))
    stereo = cfg.n_q % 2 == 0 and delays == stereo_delays(cfg.n_q // 2)
    if not stereo and delays != list(range(cfg.n_q)):
        raise ValueError(f"transformers' MusicGen uses delays 0..K-1 (or the stereo layout), this LM uses {delays}")
    hf_config = MusicgenDecoderConfig(
        vocab_size=cfg.card, hidden_size=cfg.dim, num_hidden_layers=cfg.num_layers,
        num_attention_heads=cfg.num_heads, ffn_dim=cfg.ffn_dim, activation_function=cfg.activation,
        num_codebooks=cfg.n_q, audio_channels=2 if stereo else 1, pad_token_id=cfg.card,
        bos_token_id=cfg.card, dropout=0.0, attention_dropout=0.0, activation_dropout=0.0)
    model = MusicgenForCausalLM(hf_config).eval()
    decoder = model.model.decoder
    d = cfg.dim
    for ours, theirs in zip(lm.embeddings, decoder.embed_tokens):
        _copy(theirs.weight, ours.weight)
    for ours, theirs in zip(lm.layers, decoder.layers):
        sa, ca = theirs.self_attn, theirs.encoder_attn
        q, k, v = ours.self_attn.qkv.weight.split(d)
        _copy(sa.q_proj.weight, q)
        _copy(sa.k_proj.weight, k)
        _copy(sa.v_proj.weight, v)
        _copy(sa.out_proj.weight, ours.self_attn.out.weight)
        _copy(ca.q_proj.weight, ours.cross_attn.q.weight)
        k, v = ours.cross_attn.kv.weight.split(d)
        _copy(ca.k_proj.weight, k)
        _copy(ca.v_proj.weight, v)
        _copy(ca.out_proj.weight, ours.cross_attn.out.weight)
        _copy(theirs.fc1.weight, ours.ff.up.weight)
        _copy(theirs.fc2.weight, ours.ff.down.weight)
        _copy_norm(theirs.self_attn_layer_norm, ours.norm_self)
        _copy_norm(theirs.encoder_attn_layer_norm, ours.norm_cross)
        _copy_norm(theirs.final_layer_norm, ours.norm_ff)
    _copy_norm(decoder.layer_norm, lm.out_norm)
    for ours, theirs in zip(lm.heads, model.lm_heads):
        _copy(theirs.weight, ours.weight)
    return model
