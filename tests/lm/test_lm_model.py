"""The LM: sizes, attention kernels, KV cache, init, loss masking, input checks."""

from __future__ import annotations

import math

import pytest
import torch

from mgen.lm.model import LM, Conditioning, LMConfig, count_parameters, cross_entropy_per_codebook, cross_entropy_sums
from mgen.lm.transformer import _shared_xformers_bias, attention, select_backend, xformers_bias


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


@pytest.mark.parametrize("causal,q_len,k_len", [(True, 5, 5), (True, 2, 11), (False, 5, 11)])
def test_xformers_bias_is_one_head_expanded(causal: bool, q_len: int, k_len: int) -> None:
    """The bias xformers gets is [B, H, Sq, Sk] over one [B, 1, Sq, ceil8(Sk)] allocation (stride 0 over heads)."""
    b, heads = 2, 6
    key_mask = torch.ones(b, k_len, dtype=torch.bool)
    key_mask[0, :3] = False
    bias = xformers_bias(q_len, k_len, causal, key_mask, heads, torch.bfloat16)
    padded = -(-k_len // 8) * 8
    assert bias.shape == (b, heads, q_len, k_len) and bias.dtype == torch.bfloat16
    assert bias.stride() == (q_len * padded, 0, padded, 1)
    assert bias.untyped_storage().nbytes() == b * q_len * padded * bias.element_size()
    q_pos = torch.arange(k_len - q_len, k_len)[:, None]
    k_pos = torch.arange(k_len)[None, :]
    allowed = key_mask[:, None, None, :].expand(b, heads, q_len, k_len)
    if causal:  # bottom-right causal, and a query always sees itself
        allowed = (allowed & (k_pos <= q_pos)) | (k_pos == q_pos)
    assert torch.equal(bias == float("-inf"), ~allowed) and bool((bias[allowed] == 0).all())
    # the additive bias gives the attention of the boolean mask
    torch.manual_seed(0)
    q, k, v = torch.randn(b, heads, q_len, 8), torch.randn(b, heads, k_len, 8), torch.randn(b, heads, k_len, 8)
    scores = (q @ k.transpose(-2, -1)) / math.sqrt(8) + xformers_bias(q_len, k_len, causal, key_mask, heads,
                                                                      torch.float32)
    torch.testing.assert_close(scores.softmax(-1) @ v, attention(q, k, v, causal, key_mask, backend="math"))


def test_xformers_bias_is_shared_by_the_layers_of_one_forward() -> None:
    key_mask = torch.tensor([[False, True, True, True], [True] * 4])
    first = _shared_xformers_bias(4, 4, True, key_mask, 2, torch.float32)
    assert _shared_xformers_bias(4, 4, True, key_mask, 2, torch.float32) is first
    assert _shared_xformers_bias(4, 4, True, key_mask.clone(), 2, torch.float32) is not first
    assert _shared_xformers_bias(4, 4, True, key_mask, 2, torch.float32) is not first  # cache holds the latest only
    key_mask[1, 0] = False  # changed in place: rebuilt
    assert bool(_shared_xformers_bias(4, 4, True, key_mask, 2, torch.float32)[1, :, 1, 0].isinf().all())


def test_all_true_prefix_mask_is_the_same_as_no_mask() -> None:
    lm = tiny(cross_attention=False)
    seq = torch.randint(0, 33, (2, 4, 6))
    prefix = torch.randn(2, 3, 64)
    with torch.no_grad():
        masked = lm(seq, Conditioning(prefix=prefix, prefix_mask=torch.ones(2, 3, dtype=torch.bool)))
        torch.testing.assert_close(masked, lm(seq, Conditioning(prefix=prefix)))


def test_masked_loss_matches_selecting_the_valid_positions() -> None:
    """The loss is a weighted sum (no boolean indexing, no host sync): same values and gradients as selecting."""
    torch.manual_seed(0)
    b, k, t, card = 3, 4, 5, 16
    logits = torch.randn(b, k, t, card)
    codes = torch.randint(0, card, (b, k, t))
    mask = torch.ones(k, t, dtype=torch.bool)
    mask[3] = False  # a codebook without any target: counts 0
    mask[1, -2:] = False
    logits[:, ~mask] = float("nan")
    padding = torch.ones(b, t, dtype=torch.bool)
    padding[2, 2:] = False
    logits.requires_grad_(True)
    loss, per_codebook = cross_entropy_per_codebook(logits, codes, mask, padding)
    valid = mask[None] & padding[:, None]
    expected = [torch.nn.functional.cross_entropy(logits[:, q][valid[:, q]], codes[:, q][valid[:, q]])
                if valid[:, q].any() else torch.zeros(()) for q in range(k)]
    torch.testing.assert_close(per_codebook, torch.stack(expected))
    (grad,) = torch.autograd.grad(loss, logits)
    (expected_grad,) = torch.autograd.grad(torch.stack(expected).mean(), logits)
    assert torch.isfinite(grad).all() and bool((grad[~valid[..., None].expand_as(grad)] == 0).all())
    torch.testing.assert_close(grad, expected_grad)
    sums, counts = cross_entropy_sums(logits, codes, mask, padding)
    torch.testing.assert_close(sums / counts.clamp(min=1), per_codebook)
    assert counts.tolist() == [12, 8, 12, 0]
