"""Validation of code tensors, shared by everything that reads codes (codec decode, LM, generation prompts)."""

from __future__ import annotations

import torch


def check_codes(codes: torch.Tensor, n_q: int, card: int, owner: str,
                allow_empty: bool = False) -> None:
    """Raise a clear ValueError unless codes is an integer [B, K, T] tensor with K = n_q and values in
    [0, card). `owner` names what expects them ("the codec", "this LM") and may carry a detail in
    parentheses."""
    if not isinstance(codes, torch.Tensor) or codes.dim() != 3:
        shape = tuple(codes.shape) if isinstance(codes, torch.Tensor) else type(codes).__name__
        raise ValueError(f"codes must have shape [B, K, T], got {shape}")
    if codes.dtype.is_floating_point or codes.dtype == torch.bool or codes.is_complex():
        raise ValueError(f"codes must be an integer tensor, got {codes.dtype}")
    if codes.shape[1] != n_q:
        raise ValueError(f"codes have {codes.shape[1]} codebooks, {owner} expects {n_q}")
    if codes.numel() == 0:
        if allow_empty:
            return
        raise ValueError(f"codes are empty: shape {tuple(codes.shape)}")
    lo, hi = int(codes.min()), int(codes.max())
    if lo < 0 or hi >= card:
        raise ValueError(f"codes must lie in [0, {card - 1}] (codebook size {card} for {owner}); "
                         f"found values in [{lo}, {hi}]")
