"""The LM: sizes, attention kernels, KV cache, init, loss masking, input checks."""

from __future__ import annotations

import math

import pytest
import torch

from mgen.lm.model import LM, Conditioning, LMConfig, count_parameters, cross_entropy_per_codebook
from mgen.lm.transformer import attention, select_backend


def tiny(**overrides) -> LM:
    torch.manual_seed(0)
    return LM(LMConfig.preset("tiny", card=32, **overrides)).eval()


@pytest.mark.parametrize("preset", ["bench-small", "small", "medium", "large"])
@pytest.mark.parametrize("cross", [True, False])
def test_presets_on_meta_match_closed_form(preset: str, cross: bool) -> None:
    cfg = LMConfig.preset(preset, cross_attention=cross)
    with torch.device("meta"):
        lm = LM(cfg)
    assert lm.num_parameters() == count_parameters(cfg)


def test_published_sizes() -> None:
    # audiocraft's small with cross-attention is 420.37M including the 768->1024 T5 projection (in our
    # conditioner, not the LM); medium 1.84B, large 3.26B in the same count.
    t5_proj = 768 * 1024 + 1024
    assert abs(count_parameters(LMConfig.preset("small")) + t5_proj - 420.37e6) < 0.05e6
    assert abs(count_parameters(LMConfig.preset("medium")) / 1e9 - 1.84) < 0.01
    assert abs(count_parameters(LMConfig.preset("large")) / 1e9 - 3.26) < 0.01
    # melody medium is prefix-only (no cross-attention layers): 1.39B
    assert abs(count_parameters(LMConfig.preset("medium", cross_attention=False)) / 1e9 - 1.39) < 0.01


def test_unknown_preset_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="unknown LM preset"):
        LMConfig.preset("huge")


@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("q_len,k_len", [(7, 7), (3, 7), (1, 7)])
@pytest.mark.parametrize("with_mask", [False, True])
def test_sdpa_matches_math(causal: bool, q_len: int, k_len: int, with_mask: bool) -> None:
    torch.manual_seed(0)
    q = torch.randn(2, 3, q_len, 8)
    k, v = torch.randn(2, 3, k_len, 8), torch.randn(2, 3, k_len, 8)
    mask = None
    if with_mask:
        mask = torch.ones(2, k_len, dtype=torch.bool)
        mask[0, :2] = False
        mask[1] = False  # fully masked row: attends to everything instead of NaN
    ref = attention(q, k, v, causal, mask, backend="math")
    out = attention(q, k, v, causal, mask, backend="sdpa")
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)


def test_causal_attention_is_bottom_right_aligned() -> None:
    """With a cache, new queries follow the cached keys: the last query sees every key."""
    torch.manual_seed(0)
    q, k, v = torch.randn(1, 1, 4, 8), torch.randn(1, 1, 6, 8), torch.randn(1, 1, 6, 8)
    out = attention(q, k, v, causal=True, backend="math")
    full_q = torch.cat([torch.randn(1, 1, 2, 8), q], dim=2)
    torch.testing.assert_close(attention(full_q, k, v, causal=True, backend="math")[:, :, 2:], out)


def test_backend_selection() -> None:
    assert select_backend("auto", torch.device("cpu")) == "sdpa"
    with pytest.raises(ValueError, match="xformers"):
        select_backend("xformers", torch.device("cpu"))
    with pytest.raises(ValueError, match="unknown attention backend"):
        select_backend("flash9", torch.device("cpu"))


def test_kv_cache_matches_full_forward_with_prefix_and_cross() -> None:
    lm = tiny()
    torch.manual_seed(1)
    seq = torch.randint(0, 33, (2, 4, 9))
    prefix = torch.randn(2, 3, 64)
    prefix_mask = torch.tensor([[True, True, True], [False, True, True]])
    cond = Conditioning(cross=torch.randn(2, 5, 64), cross_mask=torch.tensor([[1, 1, 1, 0, 0], [1] * 5]).bool(),
                        prefix=prefix, prefix_mask=prefix_mask)
    with torch.no_grad():
        full = lm(seq, cond)
        cache = lm.make_cache(3 + 9)
        parts = [lm(seq[..., :4], cond, cache, 0)]
        for s in range(4, 9):
            parts.append(lm(seq[..., s:s + 1], cond, cache, 3 + s))
    torch.testing.assert_close(torch.cat(parts, dim=2), full, atol=1e-5, rtol=1e-5)


def test_model_is_causal() -> None:
    lm = tiny()
    seq = torch.randint(0, 32, (1, 4, 8))
    cond = Conditioning(cross=torch.randn(1, 2, 64))
    with torch.no_grad():
        base = lm(seq, cond)
        changed = seq.clone()
        changed[..., 5:] = (changed[..., 5:] + 1) % 32
        other = lm(changed, cond)
    torch.testing.assert_close(base[..., :5, :], other[..., :5, :])
    assert not torch.allclose(base[..., 5:, :], other[..., 5:, :])


def test_init_is_depth_scaled_truncated_normal() -> None:
    torch.manual_seed(0)
    cfg = LMConfig(dim=256, num_heads=4, num_layers=4, card=64)
    lm = LM(cfg)
    for i, layer in enumerate(lm.layers):
        w = layer.ff.up.weight
        expected = 1 / math.sqrt(256) / math.sqrt(2 * (i + 1))
        # a ±3σ truncated normal has std ≈ 0.986σ
        assert abs(w.std().item() / (0.986 * expected) - 1) < 0.03
        assert w.abs().max().item() <= 3 * expected + 1e-6
    emb = lm.embeddings[0].weight
    assert abs(emb.std().item() / (0.986 / math.sqrt(256)) - 1) < 0.03


def test_relu_is_selectable_and_changes_output() -> None:
    seq = torch.randint(0, 32, (1, 4, 6))
    cond = Conditioning(cross=torch.randn(1, 2, 64))
    gelu, relu = tiny(), tiny(activation="relu")
    relu.load_state_dict(gelu.state_dict())
    with torch.no_grad():
        assert not torch.allclose(gelu(seq, cond), relu(seq, cond))
    with pytest.raises(ValueError, match="activation"):
        tiny(activation="swish")


def test_loss_ignores_invalid_pattern_positions() -> None:
    lm = tiny()
    codes = torch.randint(0, 32, (2, 4, 10))
    cond = Conditioning(cross=torch.randn(2, 3, 64))
    logits, mask = lm.compute_predictions(codes, cond)
    assert logits.shape == (2, 4, 10, 32) and mask.shape == (4, 10)
    assert not mask.all() and torch.isnan(logits[:, ~mask]).all()  # delay: last k frames of codebook k
    loss, per_codebook = cross_entropy_per_codebook(logits, codes, mask)
    assert torch.isfinite(loss) and per_codebook.shape == (4,)
    tampered = logits.detach().clone()
    tampered[:, ~mask] = 123.0
    tampered_loss, _ = cross_entropy_per_codebook(tampered, codes, mask)
    torch.testing.assert_close(tampered_loss, loss.detach())
    loss.backward()
    assert all(p.grad is not None for p in lm.heads.parameters())


def test_loss_of_untrained_model_is_near_uniform() -> None:
    lm = tiny()
    codes = torch.randint(0, 32, (4, 4, 20))
    logits, mask = lm.compute_predictions(codes, Conditioning(cross=torch.randn(4, 3, 64)))
    loss, _ = cross_entropy_per_codebook(logits, codes, mask)
    assert abs(loss.item() - math.log(32)) < 0.5


@pytest.mark.parametrize("pattern", ["parallel", "delay", "unroll", "coarse_first", "musiclm"])
def test_training_pass_for_every_pattern(pattern: str) -> None:
    lm = tiny(pattern=pattern)
    codes = torch.randint(0, 32, (2, 4, 6))
    logits, mask = lm.compute_predictions(codes, Conditioning(cross=torch.randn(2, 3, 64)))
    loss, _ = cross_entropy_per_codebook(logits, codes, mask)
    assert torch.isfinite(loss)
    assert torch.isfinite(logits[:, mask]).all()


def test_bad_codes_are_clear_errors() -> None:
    lm = tiny()
    cond = Conditioning(cross=torch.randn(1, 2, 64))
    with pytest.raises(ValueError, match=r"codes must lie in \[0, 31\]"):
        lm.compute_predictions(torch.full((1, 4, 5), 32), cond)
    with pytest.raises(ValueError, match=r"codes must lie"):
        lm.compute_predictions(torch.full((1, 4, 5), -3), cond)
    with pytest.raises(ValueError, match="3 codebooks, this LM expects 4"):
        lm.compute_predictions(torch.zeros(1, 3, 5, dtype=torch.long), cond)
    with pytest.raises(ValueError, match="cross-attention"):
        lm.compute_predictions(torch.zeros(1, 4, 5, dtype=torch.long))
    with pytest.raises(ValueError, match="unknown pattern|pattern"):
        LM(LMConfig.preset("tiny", pattern="zigzag"))


def test_prefix_only_model_without_cross_attention() -> None:
    lm = tiny(cross_attention=False)
    codes = torch.randint(0, 32, (2, 4, 6))
    prefix = torch.randn(2, 5, 64)
    a, _ = lm.compute_predictions(codes, Conditioning(prefix=prefix))
    b, mask = lm.compute_predictions(codes, Conditioning(prefix=prefix + 1))
    assert not torch.allclose(a[:, mask], b[:, mask])


def test_bf16_autocast_cpu_path() -> None:
    lm = tiny()
    codes = torch.randint(0, 32, (1, 4, 5))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits, mask = lm.compute_predictions(codes, Conditioning(cross=torch.randn(1, 2, 64)))
        loss, _ = cross_entropy_per_codebook(logits, codes, mask)
    assert torch.isfinite(loss)
    loss.backward()


def test_config_round_trip() -> None:
    cfg = LMConfig.preset("tiny", pattern="delay", pattern_options={"delays": [0, 0, 1, 1]}, n_q=4)
    assert LMConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ValueError, match="unknown LMConfig fields"):
        LMConfig.from_dict({**cfg.to_dict(), "depth": 3})
