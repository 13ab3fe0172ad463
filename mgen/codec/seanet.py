"""SEANet encoder and decoder, the convolutional halves of an EnCodec-style codec.

The encoder maps audio ``[B, C, L]`` to a latent ``[B, D, T]`` with ``T = ceil(L / hop)``; the decoder maps a latent
back to ``[B, C, T * hop]``. The layer order (and so the parameter names) follows the published EnCodec/SEANet
layout so that weights can be moved between implementations by renaming keys only (see `mgen.interop.encodec`).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
from torch import nn
from torch.nn import functional as F
from torch.nn.utils.parametrizations import weight_norm

PAD_MODES = ("constant", "reflect", "replicate", "circular")
NORMS = ("weight_norm", "none")


@dataclass
class SEANetConfig:
    """Hyper-parameters shared by `SEANetEncoder` and `SEANetDecoder`.

    ``ratios`` are listed in decoder (upsampling) order, as in EnCodec: the encoder downsamples by them in reverse.
    Channel width doubles after every downsampling stage, starting from ``n_filters``.
    """

    channels: int = 1
    dimension: int = 128
    n_filters: int = 32
    ratios: tuple[int, ...] = (8, 5, 4, 2)
    n_residual_layers: int = 1
    residual_kernel_size: int = 3
    dilation_base: int = 2
    compress: int = 2
    lstm: int = 2
    kernel_size: int = 7
    last_kernel_size: int = 7
    causal: bool = False
    pad_mode: str = "constant"
    true_skip: bool = True
    trim_right_ratio: float = 1.0
    norm: str = "weight_norm"

    def __post_init__(self) -> None:
        self.ratios = tuple(int(r) for r in self.ratios)
        if not self.ratios or any(r < 1 for r in self.ratios):
            raise ValueError(f"SEANet ratios must be positive integers, got {self.ratios}")
        if self.pad_mode not in PAD_MODES:
            raise ValueError(f"SEANet pad_mode must be one of {PAD_MODES}, got {self.pad_mode!r}")
        if self.norm not in NORMS:
            raise ValueError(f"SEANet norm must be one of {NORMS}, got {self.norm!r}")
        if not self.causal and self.trim_right_ratio != 1.0:
            raise ValueError("trim_right_ratio != 1.0 only makes sense for a causal SEANet")
        if not 0.0 <= self.trim_right_ratio <= 1.0:
            raise ValueError(f"trim_right_ratio must be in [0, 1], got {self.trim_right_ratio}")
        if self.n_filters < 1 or self.dimension < 1 or self.compress < 1:
            raise ValueError("SEANet n_filters, dimension and compress must be >= 1")

    @property
    def hop_length(self) -> int:
        return math.prod(self.ratios)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["ratios"] = list(self.ratios)
        return d


def extra_padding_for_conv1d(length: int, kernel_size: int, stride: int, padding_total: int) -> int:
    """Right padding that makes the last conv window complete, so that no input sample is dropped.

    Integer arithmetic on purpose: float division loses exactness on long audio.
    """
    steps = -(-(length - kernel_size + padding_total) // stride)  # ceil division, also for negative numerators
    ideal_length = steps * stride + kernel_size - padding_total
    return max(ideal_length - length, 0)


def pad1d(x: torch.Tensor, left: int, right: int, mode: str = "constant") -> torch.Tensor:
    """`F.pad` that also reflect-pads inputs shorter than the padding (zero-extends first, then trims)."""
    if mode != "reflect":
        return F.pad(x, (left, right), mode=mode)
    length = x.shape[-1]
    extra = 0
    if length <= max(left, right):
        extra = max(left, right) - length + 1
        x = F.pad(x, (0, extra))
    padded = F.pad(x, (left, right), mode="reflect")
    return padded[..., : padded.shape[-1] - extra]


class NormConv1d(nn.Module):
    """Conv1d with weight norm and "same"-style padding: causal (all left) or centred (left gets the odd one)."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        stride: int = 1,
        dilation: int = 1,
        *,
        causal: bool = False,
        pad_mode: str = "constant",
        norm: str = "weight_norm",
    ) -> None:
        super().__init__()
        conv = nn.Conv1d(in_channels, out_channels, kernel_size, stride, dilation=dilation)
        self.conv = weight_norm(conv) if norm == "weight_norm" else conv
        self.causal = causal
        self.pad_mode = pad_mode
        self.effective_kernel = (kernel_size - 1) * dilation + 1
        self.stride = stride
        self.padding_total = self.effective_kernel - stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        extra = extra_padding_for_conv1d(x.shape[-1], self.effective_kernel, self.stride, self.padding_total)
        if self.causal:
            left, right = self.padding_total, extra
        else:
            left = self.padding_total - self.padding_total // 2
            right = self.padding_total // 2 + extra
        if self.pad_mode == "constant" and left == right:
            # Let the conv kernel zero-pad: same result, without copying the activation into a padded buffer.
            conv = self.conv
            return F.conv1d(x, conv.weight, conv.bias, conv.stride, left, conv.dilation, conv.groups)
        return self.conv(pad1d(x, left, right, self.pad_mode))


class NormConvTranspose1d(nn.Module):
    """ConvTranspose1d with weight norm that trims exactly what the matching `NormConv1d` padded."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        stride: int = 1,
        *,
        causal: bool = False,
        trim_right_ratio: float = 1.0,
        norm: str = "weight_norm",
    ) -> None:
        super().__init__()
        conv = nn.ConvTranspose1d(in_channels, out_channels, kernel_size, stride)
        self.conv = weight_norm(conv) if norm == "weight_norm" else conv
        padding_total = kernel_size - stride
        if causal:
            self.trim_right = math.ceil(padding_total * trim_right_ratio)
        else:
            self.trim_right = padding_total // 2
        self.trim_left = padding_total - self.trim_right

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        return y[..., self.trim_left : y.shape[-1] - self.trim_right]


class ResidualBlock(nn.Module):
    """ELU → conv(k, dilation) → ELU → conv(1) with a bottleneck of ``dim // compress`` channels, plus a skip."""

    def __init__(self, dim: int, dilation: int, cfg: SEANetConfig) -> None:
        super().__init__()
        hidden = dim // cfg.compress
        conv = dict(causal=cfg.causal, pad_mode=cfg.pad_mode, norm=cfg.norm)
        self.block = nn.Sequential(
            nn.ELU(),
            NormConv1d(dim, hidden, cfg.residual_kernel_size, dilation=dilation, **conv),
            nn.ELU(),
            NormConv1d(hidden, dim, 1, **conv),
        )
        # true_skip: identity shortcut (EnCodec/MusicGen); otherwise a learned 1x1 conv.
        self.shortcut = nn.Identity() if cfg.true_skip else NormConv1d(dim, dim, 1, **conv)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.shortcut(x) + self.block(x)


class LSTMBlock(nn.Module):
    """Residual LSTM over time on a conv-layout tensor ``[B, C, T]``; gives the bottleneck long-range context."""

    def __init__(self, dim: int, num_layers: int) -> None:
        super().__init__()
        self.lstm = nn.LSTM(dim, dim, num_layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        seq = x.permute(2, 0, 1)  # [T, B, C]
        out, _ = self.lstm(seq)
        return (out + seq).permute(1, 2, 0)


def _residual_stack(dim: int, cfg: SEANetConfig) -> list[nn.Module]:
    return [ResidualBlock(dim, cfg.dilation_base**j, cfg) for j in range(cfg.n_residual_layers)]


class SEANetEncoder(nn.Module):
    """Audio ``[B, channels, L]`` → latent ``[B, dimension, ceil(L / hop)]``."""

    def __init__(self, cfg: SEANetConfig) -> None:
        super().__init__()
        self.config = cfg
        conv = dict(causal=cfg.causal, pad_mode=cfg.pad_mode, norm=cfg.norm)
        layers: list[nn.Module] = [NormConv1d(cfg.channels, cfg.n_filters, cfg.kernel_size, **conv)]
        mult = 1
        for ratio in reversed(cfg.ratios):
            dim = mult * cfg.n_filters
            layers += _residual_stack(dim, cfg)
            layers += [nn.ELU(), NormConv1d(dim, dim * 2, kernel_size=ratio * 2, stride=ratio, **conv)]
            mult *= 2
        if cfg.lstm:
            layers.append(LSTMBlock(mult * cfg.n_filters, cfg.lstm))
        layers += [nn.ELU(), NormConv1d(mult * cfg.n_filters, cfg.dimension, cfg.last_kernel_size, **conv)]
        self.layers = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


class SEANetDecoder(nn.Module):
    """Latent ``[B, dimension, T]`` → audio ``[B, channels, T * hop]``; mirrors `SEANetEncoder`, no final activation."""

    def __init__(self, cfg: SEANetConfig) -> None:
        super().__init__()
        self.config = cfg
        conv = dict(causal=cfg.causal, pad_mode=cfg.pad_mode, norm=cfg.norm)
        mult = 2 ** len(cfg.ratios)
        layers: list[nn.Module] = [NormConv1d(cfg.dimension, mult * cfg.n_filters, cfg.kernel_size, **conv)]
        if cfg.lstm:
            layers.append(LSTMBlock(mult * cfg.n_filters, cfg.lstm))
        for ratio in cfg.ratios:
            dim = mult * cfg.n_filters
            layers += [
                nn.ELU(),
                NormConvTranspose1d(
                    dim,
                    dim // 2,
                    kernel_size=ratio * 2,
                    stride=ratio,
                    causal=cfg.causal,
                    trim_right_ratio=cfg.trim_right_ratio,
                    norm=cfg.norm,
                ),
            ]
            layers += _residual_stack(dim // 2, cfg)
            mult //= 2
        layers += [nn.ELU(), NormConv1d(cfg.n_filters, cfg.channels, cfg.last_kernel_size, **conv)]
        self.layers = nn.Sequential(*layers)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.layers(z)


__all__ = [
    "SEANetConfig",
    "SEANetEncoder",
    "SEANetDecoder",
    "NormConv1d",
    "NormConvTranspose1d",
    "ResidualBlock",
    "LSTMBlock",
    "pad1d",
    "extra_padding_for_conv1d",
]
