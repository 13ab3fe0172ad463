"""Pre-norm transformer blocks for the music LM.

Attention goes through one function, `attention`, which picks a kernel at run time: xformers'
memory-efficient attention on CUDA when it is installed, PyTorch SDPA otherwise (flash / efficient
kernels on GPU, a fused CPU kernel here), or plain math on request. The model code never branches on
the device itself.
"""

from __future__ import annotations

import math
import weakref
from dataclasses import dataclass
from functools import lru_cache

import torch
import torch.nn.functional as F
from torch import Tensor, nn

ATTENTION_BACKENDS = ("auto", "xformers", "sdpa", "math")


@lru_cache(maxsize=None)
def _xformers_ops():
    """The xformers ops module, or None when xformers is not installed or does not import."""
    try:
        import xformers.ops as xops  # optional dependency

        return xops
    except Exception:  # pragma: no cover - depends on the install
        return None


def select_backend(requested: str, device: torch.device) -> str:
    """Resolve 'auto' to the fastest kernel available for this device."""
    if requested not in ATTENTION_BACKENDS:
        raise ValueError(f"unknown attention backend {requested!r}; choose one of {ATTENTION_BACKENDS}")
    if requested == "auto":
        return "xformers" if device.type == "cuda" and _xformers_ops() is not None else "sdpa"
    if requested == "xformers" and (_xformers_ops() is None or device.type != "cuda"):
        raise ValueError("the xformers attention backend needs xformers installed and a CUDA device")
    return requested


def _bias_mask(q_len: int, k_len: int, causal: bool, key_mask: Tensor | None, device: torch.device) -> Tensor | None:
    """Boolean mask [B|1, 1, q_len, k_len], True where attention is allowed.

    Causal alignment is bottom-right: query i sits at key position k_len - q_len + i, which is what a KV
    cache needs (new queries follow the cached keys).
    """
    km = None if key_mask is None else key_mask[:, None, None, :]
    if not causal:
        return km
    q_pos = torch.arange(k_len - q_len, k_len, device=device)[:, None]
    k_pos = torch.arange(k_len, device=device)[None, :]
    if km is None:
        return None if q_len == 1 else (k_pos <= q_pos)[None, None]
    # a query always sees itself, so masked (padding) positions still get a finite output
    return ((k_pos <= q_pos)[None, None] & km) | (k_pos == q_pos)[None, None]


def xformers_bias(q_len: int, k_len: int, causal: bool, key_mask: Tensor, num_heads: int,
                  dtype: torch.dtype) -> Tensor:
    """Additive attention bias [B, num_heads, q_len, k_len] for xformers: -inf where attention is not allowed
    (`_bias_mask`, the causal part included when `causal`), 0 elsewhere.

    One [B, 1, q_len, ceil8(k_len)] tensor is allocated and expanded over the heads (stride 0): a dense per-head bias
    would be H times larger, and autograd keeps it for the backward of every layer. xformers wants the last dimension
    allocated with a multiple of 8 elements, hence the padded storage viewed at k_len.
    """
    b = key_mask.shape[0]
    allowed = _bias_mask(q_len, k_len, causal, key_mask, key_mask.device)  # [B, 1, 1 | q_len, k_len]
    bias = torch.zeros(b, 1, q_len, -(-k_len // 8) * 8, dtype=dtype, device=key_mask.device)[..., :k_len]
    bias.masked_fill_(~allowed, float("-inf"))
    return bias.expand(b, num_heads, q_len, k_len)


# the last bias built, as (weak ref to its key mask, its parameters, weak ref to the bias); see _shared_xformers_bias
_last_bias: tuple[weakref.ref, tuple, weakref.ref] | None = None


def _shared_xformers_bias(q_len: int, k_len: int, causal: bool, key_mask: Tensor, num_heads: int,
                          dtype: torch.dtype) -> Tensor:
    """`xformers_bias`, built once per forward pass: the layers of a model get the same key mask tensor, and while
    the first layer's graph keeps the bias for backward the next layers reuse it instead of holding a copy each.
    Only weak references are kept, so nothing outlives the forward (and its graph) that uses it."""
    global _last_bias
    params = (q_len, k_len, causal, num_heads, dtype, key_mask._version)
    if _last_bias is not None:
        mask_ref, last_params, bias_ref = _last_bias
        bias = bias_ref()
        if mask_ref() is key_mask and last_params == params and bias is not None:
            return bias
    bias = xformers_bias(q_len, k_len, causal, key_mask, num_heads, dtype)
    _last_bias = (weakref.ref(key_mask), params, weakref.ref(bias))
    return bias


def attention(q: Tensor, k: Tensor, v: Tensor, causal: bool = False, key_mask: Tensor | None = None,
              backend: str = "auto") -> Tensor:
    """Scaled dot-product attention.

    q: [B, H, Sq, Dh], k/v: [B, H, Sk, Dh]; key_mask: [B, Sk] bool, True for keys that may be attended.
    No row is ever fully masked, so no NaN can appear: in causal self-attention a query always sees
    itself; in cross-attention a query whose keys are all masked attends to all of them (the memory is
    then the zero 'null condition' of classifier-free guidance). Returns [B, H, Sq, Dh].
    """
    if key_mask is not None and not causal:
        key_mask = key_mask | ~key_mask.any(dim=-1, keepdim=True)
    backend = select_backend(backend, q.device)
    q_len, k_len = q.shape[-2], k.shape[-2]
    if backend == "xformers":
        xops = _xformers_ops()
        bias = None
        if key_mask is not None:
            bias = _shared_xformers_bias(q_len, k_len, causal, key_mask.to(q.device), q.shape[1], q.dtype)
        elif causal and q_len > 1:
            bias = xops.fmha.attn_bias.LowerTriangularFromBottomRightMask()
        out = xops.memory_efficient_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), attn_bias=bias)
        return out.transpose(1, 2)
    if backend == "sdpa":
        if key_mask is None and causal and q_len == k_len:
            return F.scaled_dot_product_attention(q, k, v, is_causal=True)
        mask = _bias_mask(q_len, k_len, causal, key_mask, q.device)
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    # plain math: the reference the fused kernels are tested against
    scores = (q @ k.transpose(-2, -1)) / math.sqrt(q.shape[-1])
    mask = _bias_mask(q_len, k_len, causal, key_mask, q.device)
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    return scores.softmax(dim=-1) @ v


class KVCache:
    """Keys and values of one attention layer, preallocated for a whole generation.

    Writing in place avoids re-allocating [B, H, S, Dh] tensors at every step.
    """

    def __init__(self, max_len: int):
        self.max_len = max_len
        self.keys: Tensor | None = None
        self.values: Tensor | None = None
        self.length = 0

    def append(self, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        if self.keys is None:
            shape = (k.shape[0], k.shape[1], self.max_len, k.shape[3])
            self.keys = k.new_empty(shape)
            self.values = v.new_empty(shape)
        end = self.length + k.shape[2]
        if end > self.max_len:
            raise ValueError(f"KV cache overflow: {end} positions > capacity {self.max_len}")
        self.keys[:, :, self.length:end] = k
        self.values[:, :, self.length:end] = v
        self.length = end
        return self.keys[:, :, :end], self.values[:, :, :end]


@dataclass
class LayerCache:
    """Generation state of one transformer layer: the self-attention KV cache and the cross-attention
    keys/values, which are computed once because the condition does not change during generation."""

    self_attn: KVCache
    cross_kv: tuple[Tensor, Tensor] | None = None


class SelfAttention(nn.Module):
    """Causal multi-head self-attention with a fused QKV projection."""

    def __init__(self, dim: int, num_heads: int, bias: bool = False, backend: str = "auto"):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim {dim} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.backend = backend
        self.qkv = nn.Linear(dim, 3 * dim, bias=bias)
        self.out = nn.Linear(dim, dim, bias=bias)

    def forward(self, x: Tensor, key_mask: Tensor | None = None, cache: KVCache | None = None) -> Tensor:
        b, s, d = x.shape
        q, k, v = self.qkv(x).view(b, s, 3, self.num_heads, d // self.num_heads).permute(2, 0, 3, 1, 4)
        if cache is not None:
            k, v = cache.append(k, v)
        y = attention(q, k, v, causal=True, key_mask=key_mask, backend=self.backend)
        return self.out(y.transpose(1, 2).reshape(b, s, d))


class CrossAttention(nn.Module):
    """Multi-head attention from the sequence to a fixed condition memory [B, Sc, D]."""

    def __init__(self, dim: int, num_heads: int, bias: bool = False, backend: str = "auto"):
        super().__init__()
        self.num_heads = num_heads
        self.backend = backend
        self.q = nn.Linear(dim, dim, bias=bias)
        self.kv = nn.Linear(dim, 2 * dim, bias=bias)
        self.out = nn.Linear(dim, dim, bias=bias)

    def memory_kv(self, memory: Tensor) -> tuple[Tensor, Tensor]:
        b, m, d = memory.shape
        k, v = self.kv(memory).view(b, m, 2, self.num_heads, d // self.num_heads).permute(2, 0, 3, 1, 4)
        return k, v

    def forward(self, x: Tensor, kv: tuple[Tensor, Tensor], memory_mask: Tensor | None = None) -> Tensor:
        b, s, d = x.shape
        q = self.q(x).view(b, s, self.num_heads, d // self.num_heads).transpose(1, 2)
        y = attention(q, kv[0], kv[1], causal=False, key_mask=memory_mask, backend=self.backend)
        return self.out(y.transpose(1, 2).reshape(b, s, d))


class FeedForward(nn.Module):
    """D -> hidden -> D with GELU (as published) or ReLU (as the paper text says)."""

    def __init__(self, dim: int, hidden: int, activation: str = "gelu", bias: bool = False):
        super().__init__()
        if activation not in ("gelu", "relu"):
            raise ValueError(f"activation must be 'gelu' or 'relu', got {activation!r}")
        self.up = nn.Linear(dim, hidden, bias=bias)
        self.down = nn.Linear(hidden, dim, bias=bias)
        self.act = nn.GELU() if activation == "gelu" else nn.ReLU()

    def forward(self, x: Tensor) -> Tensor:
        return self.down(self.act(self.up(x)))


class TransformerLayer(nn.Module):
    """x += SA(LN(x)); x += CA(LN(x), memory); x += FF(LN(x))."""

    def __init__(self, dim: int, num_heads: int, ffn_dim: int, cross_attention: bool, activation: str = "gelu",
                 bias_attn: bool = False, bias_ff: bool = False, norm_eps: float = 1e-5, dropout: float = 0.0,
                 backend: str = "auto"):
        super().__init__()
        self.norm_self = nn.LayerNorm(dim, eps=norm_eps)
        self.self_attn = SelfAttention(dim, num_heads, bias=bias_attn, backend=backend)
        self.norm_cross = nn.LayerNorm(dim, eps=norm_eps) if cross_attention else None
        self.cross_attn = CrossAttention(dim, num_heads, bias=bias_attn, backend=backend) if cross_attention else None
        self.norm_ff = nn.LayerNorm(dim, eps=norm_eps)
        self.ff = FeedForward(dim, ffn_dim, activation, bias=bias_ff)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: Tensor, memory: Tensor | None = None, memory_mask: Tensor | None = None,
                key_mask: Tensor | None = None, cache: LayerCache | None = None) -> Tensor:
        x = x + self.dropout(self.self_attn(self.norm_self(x), key_mask, cache.self_attn if cache else None))
        if self.cross_attn is not None:
            if memory is None:
                raise ValueError("this LM has cross-attention: pass a condition memory [B, Sc, D]")
            if cache is not None:
                if cache.cross_kv is None:
                    cache.cross_kv = self.cross_attn.memory_kv(memory)
                kv = cache.cross_kv
            else:
                kv = self.cross_attn.memory_kv(memory)
            x = x + self.dropout(self.cross_attn(self.norm_cross(x), kv, memory_mask))
        return x + self.dropout(self.ff(self.norm_ff(x)))


def sinusoidal_embedding(positions: Tensor, dim: int, max_period: float = 10_000.0) -> Tensor:
    """[..., dim] embedding cat(cos, sin) of positions, frequencies max_period^(-i/(dim/2 - 1))."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=positions.device, dtype=torch.float32)
                      / (half - 1))
    phase = positions.to(torch.float32)[..., None] * freqs
    return torch.cat([torch.cos(phase), torch.sin(phase)], dim=-1)
