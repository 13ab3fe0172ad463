"""Codebook interleaving patterns: exact layouts, partition/round-trip properties, logits alignment, errors."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from mgen.lm.patterns import (
    PATTERN_NAMES,
    CoarseFirstPattern,
    DelayPattern,
    MusicLMPattern,
    ParallelPattern,
    Pattern,
    UnrollPattern,
    make_pattern,
    stereo_delays,
)

SPECIAL = 2048  # audiocraft's convention: special token id = card

# ----------------------------------------------------------------------------- exact layouts (K=4, T=3)
EXPECTED_K4_T3 = {
    "parallel": [
        [],
        [(0, 0), (0, 1), (0, 2), (0, 3)],
        [(1, 0), (1, 1), (1, 2), (1, 3)],
        [(2, 0), (2, 1), (2, 2), (2, 3)],
    ],
    "delay": [
        [],
        [(0, 0)],
        [(1, 0), (0, 1)],
        [(2, 0), (1, 1), (0, 2)],
        [(2, 1), (1, 2), (0, 3)],
        [(2, 2), (1, 3)],
        [(2, 3)],
    ],
    "unroll": [
        [],
        [(0, 0)], [(0, 1)], [(0, 2)], [(0, 3)],
        [(1, 0)], [(1, 1)], [(1, 2)], [(1, 3)],
        [(2, 0)], [(2, 1)], [(2, 2)], [(2, 3)],
    ],
    "coarse_first": [
        [],
        [(0, 0)], [(1, 0)], [(2, 0)],
        [(0, 1), (0, 2), (0, 3)],
        [(1, 1), (1, 2), (1, 3)],
        [(2, 1), (2, 2), (2, 3)],
    ],
    "musiclm": [
        [],
        [(0, 0)], [(0, 1)], [(1, 0)], [(1, 1)], [(2, 0)], [(2, 1)],
        [(0, 2)], [(0, 3)], [(1, 2)], [(1, 3)], [(2, 2)], [(2, 3)],
    ],
}
EXPECTED_MAX_DELAY_K4 = {"parallel": 0, "delay": 3, "unroll": 0, "coarse_first": 0, "musiclm": 0}


@pytest.mark.parametrize("name", PATTERN_NAMES)
def test_default_layouts(name):
    pattern = make_pattern(name, 4).get_pattern(3)
    assert pattern.layout == EXPECTED_K4_T3[name]
    assert pattern.num_steps == len(EXPECTED_K4_T3[name])
    assert pattern.max_delay == EXPECTED_MAX_DELAY_K4[name]
    assert pattern.valid_layout == EXPECTED_K4_T3[name][: pattern.num_steps - pattern.max_delay]


def test_provider_classes_match_names():
    classes = {"parallel": ParallelPattern, "delay": DelayPattern, "unroll": UnrollPattern,
               "coarse_first": CoarseFirstPattern, "musiclm": MusicLMPattern}
    assert PATTERN_NAMES == ("parallel", "delay", "unroll", "coarse_first", "musiclm")
    for name, cls in classes.items():
        assert type(make_pattern(name, 4)) is cls


def test_delay_valid_layout_is_t_plus_one_steps():
    pattern = DelayPattern(4).get_pattern(10)
    assert pattern.num_steps == 1 + 10 + 3
    assert len(pattern.valid_layout) == 10 + 1


@pytest.mark.parametrize("options, timesteps, expected, max_delay", [
    (dict(flattening=[0, 1, 1, 2]), 2,
     [[], [(0, 0)], [(0, 1), (0, 2)], [(0, 3)], [(1, 0)], [(1, 1), (1, 2)], [(1, 3)]], 0),
    # audiocraft's docstring example (n_q=3, flattening [0, 1, 1], delays [0, 3, 3]); the trailing empty
    # steps are where audiocraft keeps codebook 0 coordinates past the clip.
    (dict(flattening=[0, 1, 1], delays=[0, 3, 3]), 4,
     [[], [(0, 0)], [(1, 0)], [(2, 0)], [(0, 1), (0, 2)], [(3, 0)], [(1, 1), (1, 2)], [],
      [(2, 1), (2, 2)], [], [(3, 1), (3, 2)], []], 3),
    # a gap in the flattening values leaves an empty step per frame, sorted first within the frame
    (dict(flattening=[0, 2]), 2, [[], [], [(0, 0)], [(0, 1)], [], [(1, 0)], [(1, 1)]], 0),
])
def test_unroll_options(options, timesteps, expected, max_delay):
    pattern = make_pattern("unroll", len(options["flattening"]), **options).get_pattern(timesteps)
    assert pattern.layout == expected
    assert pattern.max_delay == max_delay


def test_delay_flatten_first_and_empty_initial():
    pattern = DelayPattern(2, flatten_first=1).get_pattern(2)
    assert pattern.layout == [[], [(0, 0)], [(0, 1)], [(1, 0)], [(1, 1)]]
    assert pattern.max_delay == 1
    pattern = DelayPattern(2, empty_initial=2).get_pattern(1)
    assert pattern.layout == [[], [], [], [(0, 0)], [(0, 1)]]
    assert pattern.max_delay == 1


def test_coarse_first_with_delays():
    pattern = CoarseFirstPattern(4, delays=[0, 1, 1]).get_pattern(2)
    assert pattern.layout == [[], [(0, 0)], [(1, 0)], [(0, 1)], [(1, 1), (0, 2), (0, 3)], [(1, 2), (1, 3)]]
    assert pattern.max_delay == 1


def test_musiclm_group_by_one_is_codebook_after_codebook():
    pattern = MusicLMPattern(2, group_by=1).get_pattern(2)
    assert pattern.layout == [[], [(0, 0)], [(1, 0)], [(0, 1)], [(1, 1)]]


def test_stereo_delays():
    assert stereo_delays(4) == [0, 0, 1, 1, 2, 2, 3, 3]
    pattern = make_pattern("delay", 8, delays=stereo_delays(4)).get_pattern(5)
    assert pattern.layout[1] == [(0, 0), (0, 1)]  # L0 and R0 of frame 0 together
    assert pattern.layout[2] == [(1, 0), (1, 1), (0, 2), (0, 3)]
    assert pattern.num_steps == 1 + 5 + 3 and pattern.max_delay == 3
    _check_structure(pattern)


def test_first_step_at_or_after_delay():
    pattern = DelayPattern(4).get_pattern(3)
    assert [pattern.first_step_at_or_after(t) for t in range(5)] == [1, 2, 3, 7, 7]
    pattern = DelayPattern(4, delays=[2, 2, 3, 3]).get_pattern(3)  # steps 1, 2 are empty
    assert pattern.num_steps == 7
    assert [pattern.first_step_at_or_after(t) for t in range(4)] == [3, 4, 5, 7]


def test_provider_caches_patterns():
    provider = DelayPattern(4)
    assert provider.get_pattern(7) is provider.get_pattern(7)
    assert provider.get_pattern(7) is not provider.get_pattern(8)


# ------------------------------------------------------------------------------------ property tests
@st.composite
def providers(draw):
    """(name, n_q, options) over all patterns, defaults and custom options."""
    name = draw(st.sampled_from(PATTERN_NAMES))
    n_q = draw(st.integers(2 if name == "coarse_first" else 1, 6))
    options: dict = {}
    use_options = draw(st.booleans())
    if name == "delay" and use_options:
        options["delays"] = draw(st.lists(st.integers(0, 4), min_size=n_q, max_size=n_q))
        options["flatten_first"] = draw(st.integers(0, 3))
        options["empty_initial"] = draw(st.integers(0, 2))
    elif name == "unroll" and use_options:
        flattening = sorted(draw(st.lists(st.integers(0, n_q), min_size=n_q, max_size=n_q)))
        group_delay = {g: draw(st.integers(0, 3)) for g in sorted(set(flattening))}
        options = dict(flattening=flattening, delays=[group_delay[g] for g in flattening])
    elif name == "coarse_first" and use_options:
        options["delays"] = draw(st.lists(st.integers(0, 3), min_size=n_q - 1, max_size=n_q - 1))
    elif name == "musiclm":
        options["group_by"] = draw(st.sampled_from([g for g in range(1, n_q + 1) if n_q % g == 0]))
    return name, n_q, options


def _step_of(pattern: Pattern) -> dict:
    return {coord: s for s, step in enumerate(pattern.layout) for coord in step}


def _check_structure(pattern: Pattern) -> None:
    K, T = pattern.n_q, pattern.timesteps
    assert pattern.layout[0] == []
    coords = [c for step in pattern.layout for c in step]
    assert sorted(coords) == sorted((t, k) for t in range(T) for k in range(K))  # partition of Omega
    for step in pattern.layout:
        codebooks = [k for _, k in step]
        assert len(codebooks) == len(set(codebooks))
    for k in range(K):
        frames = [t for step in pattern.layout for t, q in step if q == k]
        assert frames == list(range(T))  # each codebook moves forward in time
    assert 0 <= pattern.max_delay < pattern.num_steps


@settings(max_examples=150, deadline=None)
@given(spec=providers(), timesteps=st.integers(1, 9))
def test_pattern_structure(spec, timesteps):
    name, n_q, options = spec
    pattern = make_pattern(name, n_q, **options).get_pattern(timesteps)
    _check_structure(pattern)
    step_of = _step_of(pattern)
    for t in range(timesteps + 2):
        later = [s for (u, _), s in step_of.items() if u >= t]
        assert pattern.first_step_at_or_after(t) == (min(later) if later else pattern.num_steps)


@settings(max_examples=150, deadline=None)
@given(spec=providers(), timesteps=st.integers(1, 9), batch=st.integers(1, 3), seed=st.integers(0, 2**16))
def test_build_and_revert_sequence(spec, timesteps, batch, seed):
    name, n_q, options = spec
    pattern = make_pattern(name, n_q, **options).get_pattern(timesteps)
    step_of = _step_of(pattern)
    gen = torch.Generator().manual_seed(seed)
    codes = torch.randint(-1, SPECIAL, (batch, n_q, timesteps), generator=gen)  # -1: "unknown" in generation

    sequence, mask = pattern.build_sequence(codes, SPECIAL)
    assert sequence.shape == (batch, n_q, pattern.num_steps) and sequence.dtype == codes.dtype
    assert mask.shape == (n_q, pattern.num_steps) and mask.dtype == torch.bool
    assert int(mask.sum()) == n_q * timesteps
    assert (sequence[:, ~mask] == SPECIAL).all()
    for (t, k), s in step_of.items():
        assert mask[k, s] and torch.equal(sequence[:, k, s], codes[:, k, t])
    reverted, reverted_mask = pattern.revert_sequence(sequence, SPECIAL)
    assert torch.equal(reverted, codes) and reverted_mask.all()

    # training layout: only the valid steps
    valid_steps = len(pattern.valid_layout)
    sequence, mask = pattern.build_sequence(codes, SPECIAL, keep_only_valid_steps=True)
    assert sequence.shape == (batch, n_q, valid_steps)
    assert torch.equal(sequence, pattern.build_sequence(codes, SPECIAL)[0][..., :valid_steps])
    reverted, reverted_mask = pattern.revert_sequence(sequence, SPECIAL, keep_only_valid_steps=True)
    expected_mask = torch.zeros(n_q, timesteps, dtype=torch.bool)
    for (t, k), s in step_of.items():
        expected_mask[k, t] = s < valid_steps
    assert torch.equal(reverted_mask, expected_mask)
    assert torch.equal(reverted[:, expected_mask], codes[:, expected_mask])
    assert (reverted[:, ~expected_mask] == SPECIAL).all()


@settings(max_examples=150, deadline=None)
@given(spec=providers(), timesteps=st.integers(1, 9), keep=st.booleans())
def test_revert_logits_alignment(spec, timesteps, keep):
    """logits[b, k, s, :] = s, so after reverting, (t, k) must read the step before its own."""
    name, n_q, options = spec
    pattern = make_pattern(name, n_q, **options).get_pattern(timesteps)
    num_steps = len(pattern.valid_layout) if keep else pattern.num_steps
    card = 3
    logits = torch.arange(num_steps, dtype=torch.float32).view(1, 1, -1, 1).expand(2, n_q, num_steps, card)
    out, mask = pattern.revert_logits(logits.contiguous(), keep_only_valid_steps=keep)
    assert out.shape == (2, n_q, timesteps, card) and mask.shape == (n_q, timesteps)
    for (t, k), s in _step_of(pattern).items():
        assert bool(mask[k, t]) == (s < num_steps)
        if s < num_steps:
            assert (out[:, k, t] == s - 1).all()
        else:
            assert out[:, k, t].isnan().all()
    if not keep:
        assert mask.all()


def test_revert_logits_delay_training_mask_matches_audiocraft():
    """With keep_only_valid_steps, codebook k has no target for its last k frames."""
    K, T = 4, 6
    pattern = DelayPattern(K).get_pattern(T)
    sequence, _ = pattern.build_sequence(torch.zeros(1, K, T, dtype=torch.long), SPECIAL, keep_only_valid_steps=True)
    assert sequence.shape[-1] == T + 1
    logits = torch.randn(1, K, T + 1, 5)
    out, mask = pattern.revert_logits(logits, keep_only_valid_steps=True)
    expected = torch.tensor([[t < T - k for t in range(T)] for k in range(K)])
    assert torch.equal(mask, expected)
    assert out[:, ~mask].isnan().all() and not out[:, mask].isnan().any()
    for k in range(K):
        for t in range(T - k):
            assert torch.equal(out[0, k, t], logits[0, k, t + k])  # (t, k) sits at step t + k + 1


def test_revert_logits_gradient_reaches_only_valid_targets():
    pattern = DelayPattern(4).get_pattern(5)
    logits = torch.randn(2, 4, len(pattern.valid_layout), 7, requires_grad=True)
    out, mask = pattern.revert_logits(logits, keep_only_valid_steps=True)
    out[:, mask].sum().backward()
    used = (logits.grad != 0).all(-1)  # [B, K, S]
    assert int(used.sum()) == 2 * int(mask.sum())


def test_partial_sequence_revert_for_generation():
    pattern = DelayPattern(4).get_pattern(3)
    codes = torch.arange(12).view(1, 4, 3)
    sequence, _ = pattern.build_sequence(codes, SPECIAL)
    reverted, mask = pattern.revert_sequence(sequence[..., :4], SPECIAL)  # steps 0..3 generated so far
    assert torch.equal(mask, torch.tensor([[1, 1, 1], [1, 1, 0], [1, 0, 0], [0, 0, 0]], dtype=torch.bool))
    assert torch.equal(reverted[0][mask], codes[0][mask]) and (reverted[0][~mask] == SPECIAL).all()


def test_keeps_dtype():
    pattern = DelayPattern(2).get_pattern(4)
    codes = torch.randint(0, 100, (3, 2, 4), dtype=torch.int16)
    sequence, _ = pattern.build_sequence(codes, SPECIAL)
    assert sequence.dtype == torch.int16
    assert pattern.revert_sequence(sequence, SPECIAL)[0].dtype == torch.int16


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_inputs():
    pattern = DelayPattern(4).get_pattern(8)
    codes = torch.randint(0, 100, (2, 4, 8), device="cuda")
    sequence, mask = pattern.build_sequence(codes, SPECIAL)
    assert sequence.device == codes.device and mask.device == codes.device
    assert torch.equal(pattern.revert_sequence(sequence, SPECIAL)[0], codes)
    out, mask = pattern.revert_logits(torch.randn(2, 4, pattern.num_steps, 3, device="cuda"))
    assert out.device == codes.device and mask.all()


# -------------------------------------------------------------------------------------------- errors
@pytest.mark.parametrize("name, n_q, options, match", [
    ("nope", 4, {}, "valid names: parallel, delay, unroll, coarse_first, musiclm"),
    ("delay", 4, dict(delays=[0, 1, 2]), "delays must have 4 entries"),
    ("delay", 2, dict(delays=[0, -1]), "non-negative"),
    ("delay", 2, dict(flatten_first=-1), "flatten_first"),
    ("delay", 2, dict(bogus=1), "does not take options"),
    ("parallel", 2, dict(delays=[0, 0]), "does not take options"),
    ("unroll", 3, dict(flattening=[1, 0, 2]), "non-decreasing"),
    ("unroll", 3, dict(flattening=[0, 1, 1], delays=[0, 1, 2]), "share a delay"),
    ("unroll", 3, dict(flattening=[0, 1]), "flattening must have 3 entries"),
    ("coarse_first", 4, dict(delays=[0, 0, 0, 0]), "delays must have 3 entries"),
    ("musiclm", 4, dict(group_by=3), "group_by must be a positive divisor"),
    ("musiclm", 4, dict(group_by=0), "group_by"),
    ("delay", 0, {}, "n_q"),
])
def test_bad_names_and_options(name, n_q, options, match):
    with pytest.raises(ValueError, match=match):
        make_pattern(name, n_q, **options)


def test_bad_inputs():
    pattern = DelayPattern(4).get_pattern(5)
    with pytest.raises(ValueError, match="3 codebooks"):
        pattern.build_sequence(torch.zeros(1, 3, 5, dtype=torch.long), SPECIAL)
    with pytest.raises(ValueError, match="6 frames"):
        pattern.build_sequence(torch.zeros(1, 4, 6, dtype=torch.long), SPECIAL)
    with pytest.raises(ValueError, match=r"\[B, K, T\]"):
        pattern.build_sequence(torch.zeros(4, 5, dtype=torch.long), SPECIAL)
    with pytest.raises(ValueError, match="more than"):
        pattern.revert_sequence(torch.zeros(1, 4, pattern.num_steps + 1, dtype=torch.long), SPECIAL)
    with pytest.raises(ValueError, match="valid steps"):
        pattern.revert_logits(torch.zeros(1, 4, pattern.num_steps, 2), keep_only_valid_steps=True)
    with pytest.raises(ValueError, match="codebooks"):
        pattern.revert_logits(torch.zeros(1, 3, 4, 2))
    with pytest.raises(ValueError, match="floating point"):
        pattern.revert_logits(torch.zeros(1, 4, 4, 2, dtype=torch.long))
    with pytest.raises(ValueError, match="timesteps"):
        DelayPattern(4).get_pattern(0)
    with pytest.raises(ValueError):
        pattern.first_step_at_or_after(-1)


@pytest.mark.parametrize("layout, match", [
    ([[(0, 0)], [(1, 0)]], r"layout\[0\]"),
    ([[], [(0, 0), (1, 0)]], "codebook 0 more than once"),
    ([[], [(1, 0)], [(0, 0)]], "comes after"),
    ([[], [(0, 0)], [(0, 0)], [(1, 0)]], "repeats"),
    ([[], [(0, 0)], [(2, 0)]], "outside"),
    ([[], [(0, 1)]], "outside"),
    ([[], [(0, 0)]], "does not cover"),
])
def test_invalid_layouts(layout, match):
    with pytest.raises(ValueError, match=match):
        Pattern(layout, timesteps=2, n_q=1)


def test_handmade_pattern():
    """A Pattern can be built directly from any valid layout (e.g. to try a new interleaving)."""
    pattern = Pattern([[], [(0, 1)], [(0, 0), (1, 1)], [(1, 0)]], timesteps=2, n_q=2)
    assert pattern.max_delay == 0 and pattern.valid_layout == pattern.layout
    codes = torch.tensor([[[1, 2], [3, 4]]])
    sequence, mask = pattern.build_sequence(codes, -5)
    assert sequence.tolist() == [[[-5, -5, 1, 2], [-5, 3, 4, -5]]]
    assert torch.equal(pattern.revert_sequence(sequence, -5)[0], codes)
    assert math.isnan(pattern.revert_logits(torch.zeros(1, 2, 2, 1))[0][0, 0, 1, 0].item())
