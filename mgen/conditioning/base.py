"""What every conditioner returns: tokens at the LM width and which of them are real.

One small type shared by the conditioners, the dropout and the fuser, so that nulling a condition (classifier-free
guidance) means the same thing everywhere: zero tokens with the mask off, exactly like `Conditioning.null()`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass
class ConditionTensors:
    """embedding [B, S, D] (zero where masked) and mask [B, S] bool (True = real token)."""

    embedding: Tensor
    mask: Tensor

    def __post_init__(self) -> None:
        if self.embedding.dim() != 3:
            raise ValueError(f"condition embedding must be [B, S, D], got shape {tuple(self.embedding.shape)}")
        if self.mask.shape != self.embedding.shape[:2]:
            raise ValueError(f"condition mask {tuple(self.mask.shape)} does not match embedding "
                             f"{tuple(self.embedding.shape)}")
        if self.mask.dtype != torch.bool:
            self.mask = self.mask.to(torch.bool)

    @property
    def batch_size(self) -> int:
        return self.embedding.shape[0]

    def keep(self, keep: Tensor) -> "ConditionTensors":
        """Null the samples where keep [B] is False: their tokens become zeros and their mask goes off."""
        keep = keep.to(device=self.embedding.device, dtype=torch.bool)
        return ConditionTensors(self.embedding * keep[:, None, None].to(self.embedding.dtype),
                                self.mask & keep[:, None])

    def null(self) -> "ConditionTensors":
        """The whole batch nulled (same shapes)."""
        return ConditionTensors(torch.zeros_like(self.embedding), torch.zeros_like(self.mask))
