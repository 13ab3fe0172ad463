"""The MusicGen language model: one transformer over K parallel codebook streams.

Input at pattern step s is the sum of K codebook embeddings (the special token `card` where a codebook
has nothing at that step) plus a sinusoidal position; L pre-norm layers with causal self-attention and
optional cross-attention to a condition memory; a final LayerNorm; one bias-free linear head per codebook.
Conditions can also be prepended to the input as a prefix (the melody path of the paper).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mgen.lm.patterns import PatternProvider, make_pattern
from mgen.lm.transformer import LayerCache, KVCache, TransformerLayer, sinusoidal_embedding
from mgen.codes import check_codes
from mgen.lm.presets import SIZE_PRESETS  # apart from the model: `mgen info --help` lists them without torch


@dataclass
class LMConfig:
    """Architecture of the LM. Presets are named instances: `LMConfig.preset("large")`."""

    n_q: int = 4
    card: int = 2048
    dim: int = 512
    num_heads: int = 8
    num_layers: int = 8
    ffn_dim: int | None = None  # default 4 * dim
    activation: str = "gelu"
    cross_attention: bool = True
    dropout: float = 0.0
    bias_attn: bool = False
    bias_ff: bool = False
    bias_proj: bool = False
    norm_eps: float = 1e-5
    max_period: float = 10_000.0
    pattern: str = "delay"
    pattern_options: dict[str, Any] = field(default_factory=dict)
    attention_backend: str = "auto"

    def __post_init__(self) -> None:
        if self.ffn_dim is None:
            self.ffn_dim = 4 * self.dim
        if self.dim % self.num_heads:
            raise ValueError(f"dim {self.dim} must be divisible by num_heads {self.num_heads}")
        if self.n_q < 1 or self.card < 2:
            raise ValueError(f"need n_q >= 1 and card >= 2, got n_q={self.n_q}, card={self.card}")

    @property
    def special_token(self) -> int:
        return self.card

    @classmethod
    def preset(cls, name: str, **overrides: Any) -> "LMConfig":
        if name not in SIZE_PRESETS:
            raise ValueError(f"unknown LM preset {name!r}; choose one of {sorted(SIZE_PRESETS)}")
        dim, heads, layers = SIZE_PRESETS[name]
        return cls(dim=dim, num_heads=heads, num_layers=layers, **overrides)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "LMConfig":
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown LMConfig fields: {sorted(unknown)}")
        return cls(**data)


def count_parameters(cfg: LMConfig) -> int:
    """Closed-form parameter count, used to check the model and to size runs without building them."""
    d, k, card, f = cfg.dim, cfg.n_q, cfg.card, cfg.ffn_dim
    norm = 2 * d
    attn = 4 * d * d + (4 * d if cfg.bias_attn else 0)
    ff = 2 * d * f + ((f + d) if cfg.bias_ff else 0)
    layer = attn + ff + 2 * norm + ((attn + norm) if cfg.cross_attention else 0)
    heads = k * (d * card + (card if cfg.bias_proj else 0))
    return k * (card + 1) * d + cfg.num_layers * layer + norm + heads


@dataclass
class Conditioning:
    """Condition tensors at LM width, as the fuser hands them to the LM.

    cross:  [B, Sc, D] memory for cross-attention; cross_mask [B, Sc] bool (True = real token).
    prefix: [B, Sp, D] tokens prepended to the input (e.g. melody); prefix_mask [B, Sp] bool.
    """

    cross: Tensor | None = None
    cross_mask: Tensor | None = None
    prefix: Tensor | None = None
    prefix_mask: Tensor | None = None

    @property
    def batch_size(self) -> int | None:
        for t in (self.cross, self.prefix):
            if t is not None:
                return t.shape[0]
        return None

    def null(self) -> "Conditioning":
        """The 'no condition' of classifier-free guidance: zero tensors, all positions masked."""
        def zeros(t: Tensor | None) -> Tensor | None:
            return None if t is None else torch.zeros_like(t)

        def off(ref: Tensor | None) -> Tensor | None:
            return None if ref is None else torch.zeros(ref.shape[:2], dtype=torch.bool, device=ref.device)

        return Conditioning(zeros(self.cross), off(self.cross), zeros(self.prefix), off(self.prefix))

    def concat(self, other: "Conditioning") -> "Conditioning":
        """Stack two conditionings along the batch (conditional first), for one doubled CFG batch."""
        def cat(a: Tensor | None, b: Tensor | None, ref_a: Tensor | None, ref_b: Tensor | None) -> Tensor | None:
            if a is None and b is None:
                return None
            if a is None:
                a = torch.ones(ref_a.shape[:2], dtype=torch.bool, device=ref_a.device)
            if b is None:
                b = torch.ones(ref_b.shape[:2], dtype=torch.bool, device=ref_b.device)
            return torch.cat([a, b], dim=0)

        return Conditioning(
            cross=None if self.cross is None else torch.cat([self.cross, other.cross]),
            cross_mask=cat(self.cross_mask, other.cross_mask, self.cross, other.cross),
            prefix=None if self.prefix is None else torch.cat([self.prefix, other.prefix]),
            prefix_mask=cat(self.prefix_mask, other.prefix_mask, self.prefix, other.prefix),
        )


class LM(nn.Module):
    """The autoregressive transformer over pattern sequences [B, K, S] -> logits [B, K, S, card]."""

    def __init__(self, cfg: LMConfig):
        super().__init__()
        self.cfg = cfg
        self.pattern_provider: PatternProvider = make_pattern(cfg.pattern, cfg.n_q, **cfg.pattern_options)
        self.embeddings = nn.ModuleList(nn.Embedding(cfg.card + 1, cfg.dim) for _ in range(cfg.n_q))
        self.layers = nn.ModuleList(
            TransformerLayer(cfg.dim, cfg.num_heads, cfg.ffn_dim, cfg.cross_attention, cfg.activation,
                             cfg.bias_attn, cfg.bias_ff, cfg.norm_eps, cfg.dropout, cfg.attention_backend)
            for _ in range(cfg.num_layers))
        self.out_norm = nn.LayerNorm(cfg.dim, eps=cfg.norm_eps)
        self.heads = nn.ModuleList(nn.Linear(cfg.dim, cfg.card, bias=cfg.bias_proj) for _ in range(cfg.n_q))
        self.reset_parameters()

    # ----------------------------------------------------------------------------------------- init
    @torch.no_grad()
    def reset_parameters(self) -> None:
        """Published init: truncated normal (±3σ), σ = 1/sqrt(fan_in), divided by sqrt(2·(layer+1)) inside
        layer `layer`; biases zero; LayerNorms at identity."""
        def init(module: nn.Module, depth: int | None) -> None:
            for sub in module.modules():
                if isinstance(sub, (nn.Linear, nn.Embedding)):
                    std = 1.0 / math.sqrt(sub.weight.shape[1])
                    if depth is not None:
                        std /= math.sqrt(2 * depth)
                    if sub.weight.device.type != "meta":
                        nn.init.trunc_normal_(sub.weight, std=std, a=-3 * std, b=3 * std)
                    if getattr(sub, "bias", None) is not None:
                        nn.init.zeros_(sub.bias)
                elif isinstance(sub, nn.LayerNorm):
                    sub.reset_parameters()

        init(self.embeddings, None)
        for i, layer in enumerate(self.layers):
            init(layer, i + 1)
        init(self.heads, None)
        self.out_norm.reset_parameters()

    # --------------------------------------------------------------------------------------- helpers
    @property
    def special_token(self) -> int:
        return self.cfg.card

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def make_cache(self, max_len: int) -> list[LayerCache]:
        """Fresh per-layer caches for a generation of at most `max_len` positions (prefix included)."""
        return [LayerCache(KVCache(max_len)) for _ in self.layers]

    def check_codes(self, codes: Tensor) -> None:
        """Raise a clear error for codes of the wrong shape or outside [0, card) (an empty prompt is fine)."""
        check_codes(codes, self.cfg.n_q, self.cfg.card, "this LM", allow_empty=True)

    # --------------------------------------------------------------------------------------- forward
    def forward(self, sequence: Tensor, conditioning: Conditioning | None = None,
                cache: list[LayerCache] | None = None, offset: int = 0) -> Tensor:
        """sequence [B, K, S] of token ids (special = card) -> logits [B, K, S, card].

        With a cache, `offset` is the number of positions already processed (prefix included) and the
        prefix is only prepended when offset == 0.
        """
        b, k, s = sequence.shape
        if k != self.cfg.n_q:
            raise ValueError(f"sequence has {k} codebooks, this LM models {self.cfg.n_q}")
        cond = conditioning or Conditioning()
        x = self.embeddings[0](sequence[:, 0])
        for i in range(1, k):
            x = x + self.embeddings[i](sequence[:, i])
        key_mask = None
        prefix_len = 0
        if cond.prefix is not None and offset == 0:
            prefix_len = cond.prefix.shape[1]
            x = torch.cat([cond.prefix.to(x.dtype), x], dim=1)
        if cond.prefix_mask is not None:
            # the prefix keys stay masked for every later step too
            seq_mask = torch.ones(b, offset + x.shape[1] - cond.prefix_mask.shape[1], dtype=torch.bool,
                                  device=x.device)
            # kept even when all True (the same attention as none): checking would stall the host on every step
            key_mask = torch.cat([cond.prefix_mask.to(x.device), seq_mask], dim=1)
        positions = torch.arange(offset, offset + x.shape[1], device=x.device)
        x = x + sinusoidal_embedding(positions, self.cfg.dim, self.cfg.max_period).to(x.dtype)
        if self.cfg.cross_attention and cond.cross is None:
            raise ValueError("this LM was built with cross-attention: pass Conditioning(cross=[B, Sc, D])")
        memory = None if cond.cross is None else cond.cross.to(x.dtype)
        for i, layer in enumerate(self.layers):
            x = layer(x, memory, cond.cross_mask, key_mask, cache[i] if cache is not None else None)
        x = self.out_norm(x[:, prefix_len:])
        return torch.stack([head(x) for head in self.heads], dim=1)

    # -------------------------------------------------------------------------------------- training
    def compute_predictions(self, codes: Tensor, conditioning: Conditioning | None = None) -> tuple[Tensor, Tensor]:
        """Teacher-forced training pass: codes [B, K, T] -> (logits [B, K, T, card], mask [K, T]).

        The codes are laid out by the pattern (only the steps whose targets exist), run through the model,
        and the logits are reverted to frame order, so logits[..., t, :] predicts codes[..., t]. mask marks
        the (k, t) that have a prediction; the rest hold NaN.
        """
        self.check_codes(codes)
        pattern = self.pattern_provider.get_pattern(codes.shape[-1])
        sequence, _ = pattern.build_sequence(codes, self.special_token, keep_only_valid_steps=True)
        logits = self(sequence, conditioning)
        return pattern.revert_logits(logits, keep_only_valid_steps=True)


def _valid_targets(logits: Tensor, mask: Tensor, padding_mask: Tensor | None) -> Tensor:
    """[B, K, T] bool: positions the pattern makes valid and the padding mask marks as real."""
    b, k, t, _ = logits.shape
    valid = mask[None].expand(b, k, t)
    if padding_mask is not None:
        valid = valid & padding_mask[:, None, :].to(torch.bool)
    return valid


def cross_entropy_per_codebook(logits: Tensor, codes: Tensor, mask: Tensor,
                               padding_mask: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """Mean cross-entropy over valid positions, per codebook and averaged over codebooks.

    logits [B, K, T, card], codes [B, K, T], mask [K, T] (pattern validity) and optional padding_mask
    [B, T] (real audio frames). Invalid positions never touch the loss, NaN filler included.
    Returns (loss, per_codebook [K]).
    """
    sums, counts = _masked_cross_entropy_sums(logits, codes, _valid_targets(logits, mask, padding_mask))
    per_codebook = sums / counts.clamp(min=1)  # a codebook without any valid target counts 0
    return per_codebook.mean(), per_codebook


def _masked_cross_entropy_sums(logits: Tensor, codes: Tensor, valid: Tensor) -> tuple[Tensor, Tensor]:
    """Per codebook, the float32 cross-entropy summed over the valid [B, K, T] positions and their number ([K] each).

    A weighted sum over all positions rather than boolean indexing, whose output size the host would have to wait
    for on every step; invalid logits (NaN filler included) are replaced by zeros so that they reach neither the sum
    nor the gradient."""
    sums = []
    for q in range(logits.shape[1]):
        sel = valid[:, q]
        logit = torch.where(sel[..., None], logits[:, q], 0.0).float()  # [B, T, card]
        ce = F.cross_entropy(logit.flatten(0, 1), torch.where(sel, codes[:, q], 0).flatten(), reduction="none")
        sums.append((ce * sel.flatten()).sum())
    return torch.stack(sums), valid.sum(dim=(0, 2))


def cross_entropy_sums(logits: Tensor, codes: Tensor, mask: Tensor,
                       padding_mask: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """Per codebook: the summed cross-entropy over valid positions and their number (both ``[K]``), so that means
    over many batches (and ranks) weight every token once: ``sum(sums) / sum(counts)``. Same arguments as
    :func:`cross_entropy_per_codebook`."""
    return _masked_cross_entropy_sums(logits, codes, _valid_targets(logits, mask, padding_mask))


def build_lm(cfg: LMConfig | str, **overrides: Any) -> LM:
    """An LM from a config or a preset name."""
    if isinstance(cfg, str):
        cfg = LMConfig.preset(cfg, **overrides)
    elif overrides:
        cfg = replace(cfg, **overrides)
    return LM(cfg)
