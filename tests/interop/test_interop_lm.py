"""Weights interop with transformers' MusicGen: same logits, same greedy codes, round trips."""

from __future__ import annotations

import pytest
import torch

transformers = pytest.importorskip("transformers")
from transformers import MusicgenDecoderConfig, MusicgenForCausalLM  # noqa: E402

from mgen.interop.hf import lm_from_transformers, lm_to_transformers  # noqa: E402
from mgen.lm.generate import SamplingParams, generate_window  # noqa: E402
from mgen.lm.model import LM, Conditioning, LMConfig  # noqa: E402

K, CARD, DIM = 4, 64, 64


def hf_decoder(audio_channels: int = 1, n_q: int = K) -> MusicgenForCausalLM:
    torch.manual_seed(0)
    cfg = MusicgenDecoderConfig(vocab_size=CARD, hidden_size=DIM, num_hidden_layers=2, num_attention_heads=4,
                                ffn_dim=4 * DIM, num_codebooks=n_q, audio_channels=audio_channels,
                                pad_token_id=CARD, bos_token_id=CARD, decoder_start_token_id=CARD,
                                max_position_embeddings=256)
    model = MusicgenForCausalLM(cfg).eval()
    with torch.no_grad():  # LayerNorms start at identity: perturb them so the test sees every weight
        for name, p in model.named_parameters():
            if "layer_norm" in name:
                p.add_(0.1 * torch.randn_like(p))
    return model


def test_logits_equal_transformers() -> None:
    model = hf_decoder()
    lm = lm_from_transformers(model).eval()
    torch.manual_seed(1)
    b, s = 2, 12
    seq = torch.randint(0, CARD + 1, (b, K, s))
    memory = torch.randn(b, 7, DIM)
    with torch.no_grad():
        theirs = model(input_ids=seq.reshape(b * K, s), encoder_hidden_states=memory).logits.reshape(b, K, s, CARD)
        ours = lm(seq, Conditioning(cross=memory))
    assert (ours - theirs).abs().max().item() <= 1e-4


def test_greedy_generation_equals_transformers() -> None:
    """Against transformers' generate with use_cache=False: its cached path (transformers 5.24) drifts from
    its own uncached forward after a few steps, while ours equals the uncached recomputation exactly
    (test_generate.py checks that for every pattern)."""
    model = hf_decoder()
    lm = lm_from_transformers(model).eval()
    torch.manual_seed(2)
    b, frames = 2, 10
    memory = torch.randn(b, 5, DIM)
    with torch.no_grad():
        # an explicit attention mask: transformers otherwise masks the all-special first step as padding
        theirs = model.generate(input_ids=torch.full((b * K, 1), CARD), attention_mask=torch.ones(b * K, 1),
                                encoder_hidden_states=memory, do_sample=False, max_new_tokens=frames + K - 1,
                                use_cache=False, num_return_sequences=1)
    ours = generate_window(lm, frames, Conditioning(cross=memory), params=SamplingParams(greedy=True, cfg_coef=1.0))
    assert theirs.shape == ours.shape == (b, K, frames)
    assert torch.equal(ours, theirs)


def test_round_trip_keeps_every_weight() -> None:
    model = hf_decoder()
    back = lm_to_transformers(lm_from_transformers(model))
    theirs, ours = model.state_dict(), back.state_dict()
    for name, value in theirs.items():
        if name.endswith("embed_positions.weights"):
            continue
        torch.testing.assert_close(ours[name], value, msg=name)


def test_mgen_to_transformers_logits() -> None:
    torch.manual_seed(3)
    lm = LM(LMConfig(n_q=K, card=CARD, dim=DIM, num_heads=4, num_layers=2)).eval()
    model = lm_to_transformers(lm)
    seq = torch.randint(0, CARD + 1, (1, K, 9))
    memory = torch.randn(1, 3, DIM)
    with torch.no_grad():
        theirs = model(input_ids=seq.reshape(K, 9), encoder_hidden_states=memory).logits.reshape(1, K, 9, CARD)
        ours = lm(seq, Conditioning(cross=memory))
    assert (ours - theirs).abs().max().item() <= 1e-4


def test_stereo_decoder_uses_the_interleaved_delays() -> None:
    lm = lm_from_transformers(hf_decoder(audio_channels=2, n_q=8))
    assert lm.cfg.pattern_options["delays"] == [0, 0, 1, 1, 2, 2, 3, 3]
    assert lm_to_transformers(lm).config.audio_channels == 2


def test_conditional_generation_model_is_accepted() -> None:
    from mgen.bench.generation import build_transformers_musicgen

    lm = LM(LMConfig(n_q=K, card=CARD, dim=DIM, num_heads=4, num_layers=2))
    full = build_transformers_musicgen(lm)
    back = lm_from_transformers(full)
    for a, b in zip(lm.parameters(), back.parameters()):
        torch.testing.assert_close(a, b)


def test_unconvertible_models_are_clear_errors() -> None:
    with pytest.raises(ValueError, match="MusicgenForCausalLM"):
        lm_from_transformers(torch.nn.Linear(2, 2))
    lm = LM(LMConfig(n_q=K, card=CARD, dim=DIM, num_heads=4, num_layers=1, pattern="parallel"))
    with pytest.raises(ValueError, match="delay pattern"):
        lm_to_transformers(lm)
