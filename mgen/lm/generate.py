"""Autoregressive generation over any codebook pattern.

One sampling function (`sample_next_tokens`) serves every caller. Classifier-free guidance runs the
conditional and the null condition as one doubled batch; the KV cache makes each step cost one position.
Generation longer than the training window slides: the last `window - stride` frames become the prompt
of the next window.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from mgen.lm.model import LM, Conditioning

ProgressFn = Callable[[int, int], None]


@dataclass
class SamplingParams:
    """How to pick each token. temperature 0 (or greedy=True) takes the argmax; top_p > 0 wins over top_k."""

    temperature: float = 1.0
    top_k: int = 250
    top_p: float = 0.0
    greedy: bool = False
    cfg_coef: float = 3.0

    def __post_init__(self) -> None:
        if not (math.isfinite(self.temperature) and self.temperature >= 0):
            raise ValueError(f"temperature must be a finite number >= 0, got {self.temperature}")
        if self.top_k < 0:
            raise ValueError(f"top_k must be >= 0, got {self.top_k}")
        if not 0.0 <= self.top_p <= 1.0:
            raise ValueError(f"top_p must be in [0, 1], got {self.top_p}")
        if not (math.isfinite(self.cfg_coef) and self.cfg_coef >= 0):  # 1: no guidance, 0: unconditional only
            raise ValueError(f"cfg_coef must be a finite number >= 0, got {self.cfg_coef}")

    @property
    def uses_cfg(self) -> bool:
        return self.cfg_coef != 1.0


Generators = torch.Generator | Sequence[torch.Generator] | None


def _multinomial(probs: Tensor, generator: Generators) -> Tensor:
    """One draw per row of probs [R, V] -> [R, 1]. With a sequence of G generators the rows are split into G equal
    consecutive groups (batch-major: one group per batch item), each drawn from its own generator, so an item's
    tokens depend on its own seed only, not on the rest of the batch."""
    if generator is None or isinstance(generator, torch.Generator):
        return torch.multinomial(probs, 1, generator=generator)
    if probs.shape[0] % len(generator):
        raise ValueError(f"{len(generator)} generators for {probs.shape[0]} rows of probabilities")
    groups = probs.split(probs.shape[0] // len(generator))
    return torch.cat([torch.multinomial(group, 1, generator=g) for group, g in zip(groups, generator)])


def sample_next_tokens(logits: Tensor, params: SamplingParams, generator: Generators = None) -> Tensor:
    """logits [B, ..., card] -> token ids [B, ...]; `generator` may be one per batch item (see `_multinomial`)."""
    if params.greedy or params.temperature == 0:
        return logits.argmax(dim=-1)
    probs = torch.softmax(logits.float() / params.temperature, dim=-1)
    flat = probs.reshape(-1, probs.shape[-1])
    if params.top_p > 0:
        sorted_probs, order = flat.sort(dim=-1, descending=True)
        cumulative = sorted_probs.cumsum(dim=-1)
        # keep the smallest prefix whose mass reaches top_p (the first token always stays)
        sorted_probs = sorted_probs.masked_fill(cumulative - sorted_probs > params.top_p, 0.0)
        choice = _multinomial(sorted_probs, generator)
        tokens = order.gather(-1, choice)
    elif 0 < params.top_k < flat.shape[-1]:
        top_probs, top_ids = flat.topk(params.top_k, dim=-1)
        tokens = top_ids.gather(-1, _multinomial(top_probs, generator))
    else:
        tokens = _multinomial(flat, generator)
    return tokens.reshape(probs.shape[:-1])


def _guided_logits(lm: LM, sequence: Tensor, conditioning: Conditioning | None, params: SamplingParams,
                   cache, offset: int) -> Tensor:
    """Logits of the last step in fp32 (whatever the LM's dtype), CFG applied when the batch was doubled."""
    if params.uses_cfg and conditioning is not None:
        logits = lm(torch.cat([sequence, sequence]), conditioning, cache, offset)[:, :, -1].float()
        cond, uncond = logits.chunk(2)
        return uncond + params.cfg_coef * (cond - uncond)
    return lm(sequence, conditioning, cache, offset)[:, :, -1].float()


@torch.no_grad()
def generate_window(lm: LM, num_frames: int, conditioning: Conditioning | None = None,
                    prompt: Tensor | None = None, params: SamplingParams | None = None, batch_size: int = 1,
                    generator: Generators = None, progress: ProgressFn | None = None) -> Tensor:
    """Generate codes [B, K, num_frames] in one pass (num_frames within what the model was trained on).

    conditioning: the conditional tensors; with CFG the null condition is derived from it and the two run
    as one batch of 2B. prompt: codes [B, K, Tp] to continue (Tp <= num_frames).
    """
    params = params or SamplingParams()
    if num_frames <= 0:
        raise ValueError(f"number of frames to generate must be > 0, got {num_frames}")
    special = lm.special_token
    device = next(lm.parameters()).device
    if prompt is not None:
        lm.check_codes(prompt)
        if prompt.shape[-1] > num_frames:
            raise ValueError(f"prompt has {prompt.shape[-1]} frames, longer than the {num_frames} frames requested")
        batch_size = prompt.shape[0]
    if conditioning is not None and conditioning.batch_size is not None:
        if prompt is not None and conditioning.batch_size != batch_size:
            raise ValueError(f"conditioning batch {conditioning.batch_size} != prompt batch {batch_size}")
        batch_size = conditioning.batch_size
    if params.uses_cfg and conditioning is not None:
        conditioning = conditioning.concat(conditioning.null())

    pattern = lm.pattern_provider.get_pattern(num_frames)
    codes = torch.full((batch_size, lm.cfg.n_q, num_frames), -1, dtype=torch.long, device=device)
    prompt_len = 0
    if prompt is not None and prompt.shape[-1] > 0:
        prompt_len = prompt.shape[-1]
        codes[..., :prompt_len] = prompt.to(device)
    sequence, valid = pattern.build_sequence(codes, special)  # valid [K, S], on the codes' device
    start = max(pattern.first_step_at_or_after(prompt_len), 1)
    num_steps = pattern.num_steps
    prefix_len = 0 if conditioning is None or conditioning.prefix is None else conditioning.prefix.shape[1]
    cache = lm.make_cache(prefix_len + num_steps)

    was_training = lm.training
    lm.eval()
    try:
        previous = 0
        for step in range(start, num_steps):
            chunk = sequence[..., previous:step]
            offset = 0 if previous == 0 else prefix_len + previous
            logits = _guided_logits(lm, chunk, conditioning, params, cache, offset)
            tokens = sample_next_tokens(logits, params, generator)
            tokens = torch.where(valid[:, step], tokens, special)
            current = sequence[..., step]
            # prompt tokens stay as given; only unknown slots take the sampled tokens
            sequence[..., step] = torch.where(current == -1, tokens, current)
            previous = step
            if progress is not None:
                progress(step - start + 1, num_steps - start)
    finally:
        lm.train(was_training)

    out, out_mask = pattern.revert_sequence(sequence, special)
    if not bool(out_mask.all()) or bool((out < 0).any()) or bool((out >= lm.cfg.card).any()):
        raise RuntimeError("generation left frames without a valid token; the pattern does not cover all frames")
    return out


@torch.no_grad()
def generate(lm: LM, num_frames: int, conditioning: Conditioning | None = None, prompt: Tensor | None = None,
             params: SamplingParams | None = None, batch_size: int = 1, max_window: int | None = None,
             stride: int | None = None, generator: Generators = None,
             progress: ProgressFn | None = None) -> Tensor:
    """Generate codes [B, K, num_frames], sliding over windows of `max_window` frames when longer.

    Each new window starts from the last `max_window - stride` frames of what exists so far, so every
    window sees as much context as training did. stride defaults to 60% of the window (18 s of 30 s, as
    published).
    """
    if num_frames <= 0:
        raise ValueError(f"number of frames to generate must be > 0, got {num_frames}")
    if prompt is not None and prompt.shape[-1] > num_frames:
        raise ValueError(f"prompt has {prompt.shape[-1]} frames, longer than the {num_frames} frames requested")
    if max_window is None or num_frames <= max_window:
        return generate_window(lm, num_frames, conditioning, prompt, params, batch_size, generator, progress)
    stride = stride or max(1, int(round(0.6 * max_window)))
    if not 0 < stride <= max_window:
        raise ValueError(f"stride must be in (0, max_window={max_window}], got {stride}")
    context = max_window - stride
    if prompt is not None and prompt.shape[-1] > max_window:
        codes = prompt  # the loop below continues from its last `context` frames
    else:
        codes = generate_window(lm, max_window, conditioning, prompt, params, batch_size, generator, progress)
    while codes.shape[-1] < num_frames:
        keep = codes[..., codes.shape[-1] - context:] if context else codes[..., :0]
        window = min(max_window, context + num_frames - codes.shape[-1])
        nxt = generate_window(lm, window, conditioning, keep, params, codes.shape[0], generator, progress)
        codes = torch.cat([codes, nxt[..., context:]], dim=-1)
    return codes
