"""Generation: sampling rules, CFG as one doubled batch, KV cache vs recomputation, prompts, long windows."""

from __future__ import annotations

import pytest
import torch

from mgen.lm.generate import SamplingParams, generate, generate_window, sample_next_tokens
from mgen.lm.model import LM, Conditioning, LMConfig

PATTERNS = ["parallel", "delay", "unroll", "coarse_first", "musiclm"]


def tiny(**overrides) -> LM:
    torch.manual_seed(0)
    return LM(LMConfig.preset("tiny", card=32, **overrides)).eval()


def cond(batch: int = 2, seed: int = 1) -> Conditioning:
    g = torch.Generator().manual_seed(seed)
    return Conditioning(cross=torch.randn(batch, 3, 64, generator=g))


def naive_greedy(lm: LM, num_frames: int, conditioning: Conditioning, cfg_coef: float,
                 prompt: torch.Tensor | None = None) -> torch.Tensor:
    """Reference: recompute the whole sequence at every step, conditional and null passes run separately."""
    pattern = lm.pattern_provider.get_pattern(num_frames)
    b = conditioning.batch_size
    codes = torch.full((b, lm.cfg.n_q, num_frames), -1)
    if prompt is not None:
        codes[..., :prompt.shape[-1]] = prompt
    seq, valid = pattern.build_sequence(codes, lm.special_token)
    start = max(pattern.first_step_at_or_after(0 if prompt is None else prompt.shape[-1]), 1)
    with torch.no_grad():
        for s in range(start, pattern.num_steps):
            logits = lm(seq[..., :s], conditioning)[:, :, -1]
            if cfg_coef != 1.0:
                null = lm(seq[..., :s], conditioning.null())[:, :, -1]
                logits = null + cfg_coef * (logits - null)
            tokens = torch.where(valid[:, s], logits.argmax(-1), lm.special_token)
            seq[..., s] = torch.where(seq[..., s] == -1, tokens, seq[..., s])
    return pattern.revert_sequence(seq, lm.special_token)[0]


def test_top_k_keeps_only_the_k_best() -> None:
    logits = torch.tensor([[0.0, 5.0, 4.9, -1.0, 4.8]]).repeat(500, 1)
    g = torch.Generator().manual_seed(0)
    tokens = sample_next_tokens(logits, SamplingParams(top_k=2), g)
    assert set(tokens.tolist()) == {1, 2}


def test_top_p_keeps_the_nucleus() -> None:
    probs = torch.tensor([0.5, 0.3, 0.15, 0.05])
    logits = probs.log().repeat(2000, 1)
    g = torch.Generator().manual_seed(0)
    tokens = sample_next_tokens(logits, SamplingParams(top_p=0.7, top_k=0), g)
    assert set(tokens.tolist()) == {0, 1}
    assert abs((tokens == 0).float().mean().item() - 0.5 / 0.8) < 0.05


def test_plain_sampling_follows_the_distribution() -> None:
    probs = torch.tensor([0.7, 0.2, 0.1])
    tokens = sample_next_tokens(probs.log().repeat(5000, 1), SamplingParams(top_k=0), torch.Generator().manual_seed(0))
    freq = torch.bincount(tokens, minlength=3).float() / 5000
    torch.testing.assert_close(freq, probs, atol=0.03, rtol=0)


def test_greedy_and_temperature_zero_take_the_argmax() -> None:
    logits = torch.randn(3, 4, 10)
    assert torch.equal(sample_next_tokens(logits, SamplingParams(greedy=True)), logits.argmax(-1))
    assert torch.equal(sample_next_tokens(logits, SamplingParams(temperature=0)), logits.argmax(-1))
    with pytest.raises(ValueError, match="top_p"):
        SamplingParams(top_p=1.5)


@pytest.mark.parametrize("pattern", PATTERNS)
@pytest.mark.parametrize("cfg_coef", [1.0, 3.0])
def test_cached_guided_generation_equals_naive_recomputation(pattern: str, cfg_coef: float) -> None:
    lm = tiny(pattern=pattern)
    c = cond()
    ours = generate_window(lm, 7, c, params=SamplingParams(greedy=True, cfg_coef=cfg_coef))
    assert torch.equal(ours, naive_greedy(lm, 7, c, cfg_coef))


def test_cfg_changes_the_output() -> None:
    lm = tiny()
    c = cond()
    a = generate_window(lm, 12, c, params=SamplingParams(greedy=True, cfg_coef=1.0))
    b = generate_window(lm, 12, c, params=SamplingParams(greedy=True, cfg_coef=5.0))
    assert not torch.equal(a, b)


@pytest.mark.parametrize("pattern", PATTERNS)
def test_sampled_codes_never_hold_the_special_token(pattern: str) -> None:
    lm = tiny(pattern=pattern)
    out = generate_window(lm, 9, cond(), params=SamplingParams(top_k=0, temperature=2.0),
                          generator=torch.Generator().manual_seed(0))
    assert out.shape == (2, 4, 9)
    assert out.min() >= 0 and out.max() < lm.cfg.card


def test_prefix_conditioning_generation_matches_naive() -> None:
    lm = tiny(cross_attention=False)
    c = Conditioning(prefix=torch.randn(2, 4, 64), prefix_mask=torch.tensor([[True] * 4, [False, True, True, True]]))
    ours = generate_window(lm, 6, c, params=SamplingParams(greedy=True, cfg_coef=3.0))
    assert torch.equal(ours, naive_greedy(lm, 6, c, 3.0))


def test_prompt_is_continued_and_kept() -> None:
    lm = tiny()
    c = cond()
    prompt = torch.randint(0, 32, (2, 4, 5))
    out = generate_window(lm, 11, c, prompt=prompt, params=SamplingParams(greedy=True, cfg_coef=3.0))
    assert torch.equal(out[..., :5], prompt)
    assert torch.equal(out, naive_greedy(lm, 11, c, 3.0, prompt))


def test_sampling_is_reproducible_with_a_generator() -> None:
    lm = tiny()
    c = cond()
    a = generate_window(lm, 8, c, generator=torch.Generator().manual_seed(3))
    b = generate_window(lm, 8, c, generator=torch.Generator().manual_seed(3))
    assert torch.equal(a, b)


def test_long_generation_slides_windows() -> None:
    lm = tiny()
    c = cond()
    params = SamplingParams(greedy=True, cfg_coef=3.0)
    out = generate(lm, 23, c, params=params, max_window=10, stride=6)
    assert out.shape == (2, 4, 23)
    first = generate_window(lm, 10, c, params=params)
    assert torch.equal(out[..., :10], first)
    # the second window continues from the last 4 frames of the first
    second = generate_window(lm, 10, c, prompt=first[..., 6:], params=params)
    assert torch.equal(out[..., 10:16], second[..., 4:])


def test_long_generation_from_a_long_prompt() -> None:
    lm = tiny()
    prompt = torch.randint(0, 32, (2, 4, 15))
    out = generate(lm, 20, cond(), prompt=prompt, params=SamplingParams(greedy=True), max_window=10, stride=5)
    assert out.shape == (2, 4, 20) and torch.equal(out[..., :15], prompt)


def test_progress_is_reported() -> None:
    seen: list[tuple[int, int]] = []
    generate_window(tiny(), 5, cond(), progress=lambda done, total: seen.append((done, total)))
    assert seen[-1][0] == seen[-1][1] == len(seen)


def test_bad_generation_requests_are_clear_errors() -> None:
    lm = tiny()
    c = cond()
    with pytest.raises(ValueError, match="longer than the 4 frames requested"):
        generate(lm, 4, c, prompt=torch.zeros(2, 4, 6, dtype=torch.long))
    with pytest.raises(ValueError, match="must be > 0"):
        generate(lm, 0, c)
    with pytest.raises(ValueError, match="2 codebooks"):
        generate(lm, 8, c, prompt=torch.zeros(2, 2, 3, dtype=torch.long))
    with pytest.raises(ValueError, match="codes must lie"):
        generate(lm, 8, c, prompt=torch.full((2, 4, 3), 40))
    with pytest.raises(ValueError, match="conditioning batch"):
        generate(lm, 8, cond(batch=3), prompt=torch.zeros(2, 4, 3, dtype=torch.long))
