"""Multi-scale STFT discriminator (MS-STFT-D), the adversary of the EnCodec-style codec.

Each sub-discriminator looks at the complex STFT (real and imaginary parts as channels) at one resolution, so
together they judge both fine time structure (small FFTs) and fine frequency structure (large FFTs).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn
from torch.nn.utils.parametrizations import weight_norm


def _same_padding(kernel: tuple[int, int], dilation: tuple[int, int] = (1, 1)) -> tuple[int, int]:
    return ((kernel[0] - 1) * dilation[0] // 2, (kernel[1] - 1) * dilation[1] // 2)


def _conv2d(in_ch: int, out_ch: int, kernel: tuple[int, int], **kw) -> nn.Module:
    return weight_norm(nn.Conv2d(in_ch, out_ch, kernel, **kw))


class STFTDiscriminator(nn.Module):
    """Convolutional critic on one STFT resolution. Input ``[B, C, L]`` → (logits ``[B, 1, frames, bins']``,
    feature maps after every hidden layer)."""

    def __init__(
        self,
        filters: int = 32,
        in_channels: int = 1,
        n_fft: int = 1024,
        hop_length: int | None = None,
        win_length: int | None = None,
        max_filters: int = 1024,
        filters_scale: int = 1,
        kernel_size: tuple[int, int] = (3, 9),
        dilations: Sequence[int] = (1, 2, 4),
        stride: tuple[int, int] = (1, 2),
        negative_slope: float = 0.3,
        normalized: bool = True,
    ) -> None:
        super().__init__()
        self.in_channels = in_channels
        self.n_fft = n_fft
        self.hop_length = hop_length or n_fft // 4
        self.win_length = win_length or n_fft
        self.normalized = normalized
        self.register_buffer("window", torch.hann_window(self.win_length), persistent=False)
        self.activation = nn.LeakyReLU(negative_slope)

        convs = [_conv2d(2 * in_channels, filters, kernel_size, padding=_same_padding(kernel_size))]
        in_ch = min(filters_scale * filters, max_filters)
        for i, d in enumerate(dilations):
            out_ch = min(filters_scale ** (i + 1) * filters, max_filters)
            convs.append(
                _conv2d(
                    in_ch,
                    out_ch,
                    kernel_size,
                    stride=stride,
                    dilation=(d, 1),
                    padding=_same_padding(kernel_size, (d, 1)),
                )
            )
            in_ch = out_ch
        out_ch = min(filters_scale ** (len(dilations) + 1) * filters, max_filters)
        square = (kernel_size[0], kernel_size[0])
        convs.append(_conv2d(in_ch, out_ch, square, padding=_same_padding(square)))
        self.convs = nn.ModuleList(convs)
        self.conv_post = _conv2d(out_ch, 1, square, padding=_same_padding(square))

    def spectrogram(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, C, L]`` → ``[B, 2C, frames, freqs]`` (real and imaginary parts, time before frequency), in float32
        with autocast off whatever the input (CUDA has no bf16 FFT); the convolutions after it follow autocast."""
        b, c, length = x.shape
        window = self.window.float()
        with torch.autocast(x.device.type, enabled=False):
            spec = torch.stft(
                x.reshape(b * c, length).float(),
                self.n_fft,
                self.hop_length,
                self.win_length,
                window=window,
                center=False,
                return_complex=True,
            )
            if self.normalized:
                spec = spec / window.pow(2).sum().sqrt()
        spec = spec.reshape(b, c, *spec.shape[-2:])
        return torch.cat([spec.real, spec.imag], dim=1).transpose(2, 3)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        if x.dim() != 3 or x.shape[1] != self.in_channels:
            raise ValueError(f"discriminator expects audio [B, {self.in_channels}, L], got {tuple(x.shape)}")
        if x.shape[-1] < self.win_length:
            raise ValueError(f"audio of {x.shape[-1]} samples is shorter than the STFT window {self.win_length}")
        z = self.spectrogram(x)
        fmaps = []
        for conv in self.convs:
            z = self.activation(conv(z))
            fmaps.append(z)
        return self.conv_post(z), fmaps


class MultiScaleSTFTDiscriminator(nn.Module):
    """Several `STFTDiscriminator`s (n_fft 1024, 2048, 512, 256, 128; hop n_fft/4). Returns per sub-discriminator
    lists of logits and of feature maps, ready for `hinge_*_loss` and `feature_matching_loss`."""

    def __init__(
        self,
        filters: int = 32,
        in_channels: int = 1,
        n_ffts: Sequence[int] = (1024, 2048, 512, 256, 128),
        hop_lengths: Sequence[int] | None = None,
        win_lengths: Sequence[int] | None = None,
        **kwargs,
    ) -> None:
        super().__init__()
        hop_lengths = hop_lengths or [n // 4 for n in n_ffts]
        win_lengths = win_lengths or list(n_ffts)
        if not len(n_ffts) == len(hop_lengths) == len(win_lengths):
            raise ValueError("n_ffts, hop_lengths and win_lengths must have the same length")
        self.discriminators = nn.ModuleList(
            STFTDiscriminator(filters, in_channels, n_fft=n, hop_length=h, win_length=w, **kwargs)
            for n, h, w in zip(n_ffts, hop_lengths, win_lengths)
        )

    def forward(self, x: torch.Tensor) -> tuple[list[torch.Tensor], list[list[torch.Tensor]]]:
        logits, fmaps = [], []
        for disc in self.discriminators:
            logit, fmap = disc(x)
            logits.append(logit)
            fmaps.append(fmap)
        return logits, fmaps


__all__ = ["STFTDiscriminator", "MultiScaleSTFTDiscriminator"]
