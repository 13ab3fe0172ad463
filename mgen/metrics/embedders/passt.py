"""PaSST (Koutini et al. 2022) in plain torch: AudioSet logits for the KL metric, 768-d features for FAD/KAD.

The network reads hear21passt's ``net`` state dict (159 keys) of the published 10/20/30 s models; the variant is
read from the weights (``time_new_pos_embed`` has 99/200/300 time positions). The frontend is hear21passt's
``AugmentMelSTFT`` in eval mode: pre-emphasis ``[-0.97, 1]``, stft 1024 / hop 320 / Hann(800, periodic=False) /
centred, power, 128 kaldi mel banks 0-15000 Hz (padded to 513 bins), ``(log(x + 1e-5) + 4.5) / 5``: 1000 frames
per 10 s. Unlike hear21passt it uses ``return_complex=True`` (no global stft patch) and needs neither timm nor
torchaudio.

One call takes at most the variant's window (10, 20 or 30 s at 32 kHz) and more than 4800 samples (0.15 s: fewer
make fewer than one 16-frame patch); longer audio is the caller's to split (the KL metric splits it into
non-overlapping windows, audiocraft's protocol).
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mgen.checksum import file_sha256
from mgen.dsp import mel_filterbank_kaldi, power_spectrogram
from mgen.metrics.embedders.base import AudioEmbedder, EmbedderInfo
from mgen.metrics.embedders.weights import (
    check_state_dict,
    load_state_dict_file,
    resolve_weights,
    weights_label,
)

SAMPLE_RATE = 32000
NUM_CLASSES = 527            # AudioSet labels
FEATURE_DIM = 768
MIN_SAMPLES = 4801           # > 0.15 s: at least 16 mel frames, one patch (audiocraft drops segments <= 4800)
MEL_BINS = 128
N_FFT = 1024
HOP = 320
WIN = 800
FMAX_HZ = 15000.0            # eval-mode fmax of hear21passt's get_basic_model (sr / 2 - 2000 / 2)
PATCH = 16
STRIDE = 10

# window seconds -> (time positions in the weights, published file, its URL). hear21passt publishes no checksums.
_RELEASES = "https://github.com/kkoutini/PaSST/releases/download"
VARIANTS: dict[int, tuple[int, str, str]] = {
    10: (99, "passt-s-f128-p16-s10-ap.476-swa.pt", f"{_RELEASES}/v0.0.1-audioset/passt-s-f128-p16-s10-ap.476-swa.pt"),
    20: (200, "passt-s-f128-20sec-p16-s10-ap.474-swa.pt",
         f"{_RELEASES}/v0.0.5/passt-s-f128-20sec-p16-s10-ap.474-swa.pt"),
    30: (300, "passt-s-f128-30sec-p16-s10-ap.473-swa.pt",
         f"{_RELEASES}/v0.0.5/passt-s-f128-30sec-p16-s10-ap.473-swa.pt"),
}


# ---- frontend -------------------------------------------------------------------------------------------------

def num_mel_frames(num_samples: int) -> int:
    """Mel frames for `num_samples` (pre-emphasis drops one sample; the stft is centred)."""
    return (num_samples - 1) // HOP + 1


class PasstMel(nn.Module):
    """Audio ``[B, L]`` at 32 kHz -> normalised log-mel ``[B, 128, frames]`` (float32, whatever the input)."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("window", torch.hann_window(WIN, periodic=False), persistent=False)
        self.register_buffer("mel_banks", mel_filterbank_kaldi(MEL_BINS, N_FFT, SAMPLE_RATE, 0.0, FMAX_HZ),
                             persistent=False)

    def forward(self, wav: Tensor) -> Tensor:
        with torch.autocast(device_type=wav.device.type, enabled=False):
            x = wav.float()
            x = x[:, 1:] - 0.97 * x[:, :-1]
            power = power_spectrogram(x, N_FFT, HOP, self.window, center=True, win_length=WIN)
            mel = self.mel_banks @ power
            return ((mel + 1e-5).log() + 4.5) / 5.0


# ---- network --------------------------------------------------------------------------------------------------

class _Attention(nn.Module):
    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: Tensor) -> Tensor:
        b, n, d = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        return self.proj(F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, n, d))


class _Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(F.gelu(self.fc1(x)))


class _Block(nn.Module):
    """Pre-norm transformer block (LayerNorm eps 1e-6, as timm's ViT)."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = _Attention(dim, heads)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = _Mlp(dim, 4 * dim)

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class PasstNet(nn.Module):
    """PaSST-S (patch 16, stride 10, distilled) in hear21passt's layout: mel ``[B, 128, T]`` -> (logits
    ``[B, 527]``, features ``[B, 768]`` = mean of the cls and distillation tokens)."""

    def __init__(self, time_positions: int = 99, dim: int = FEATURE_DIM, depth: int = 12, heads: int = 12,
                 num_classes: int = NUM_CLASSES) -> None:
        super().__init__()
        freq_positions = (MEL_BINS - PATCH) // STRIDE + 1
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.dist_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.new_pos_embed = nn.Parameter(torch.zeros(1, 2, dim))
        self.freq_new_pos_embed = nn.Parameter(torch.zeros(1, dim, freq_positions, 1))
        self.time_new_pos_embed = nn.Parameter(torch.zeros(1, dim, 1, time_positions))
        self.patch_embed = nn.Module()
        self.patch_embed.proj = nn.Conv2d(1, dim, kernel_size=PATCH, stride=STRIDE)
        self.blocks = nn.Sequential(*[_Block(dim, heads) for _ in range(depth)])
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.head = nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, num_classes))
        self.head_dist = nn.Linear(dim, num_classes)  # in the published layout; PaSST's forward does not use it

    @property
    def time_positions(self) -> int:
        return self.time_new_pos_embed.shape[-1]

    def forward(self, mel: Tensor) -> tuple[Tensor, Tensor]:
        x = self.patch_embed.proj(mel.unsqueeze(1))                        # [B, dim, freq, time]
        if x.shape[-1] > self.time_positions:
            raise ValueError(f"PaSST input has {x.shape[-1]} time patches, the weights have positions for "
                             f"{self.time_positions}: split the audio into shorter windows")
        x = x + self.time_new_pos_embed[..., : x.shape[-1]] + self.freq_new_pos_embed
        x = x.flatten(2).transpose(1, 2)                                    # [B, freq * time, dim]
        tokens = torch.cat([self.cls_token, self.dist_token], dim=1) + self.new_pos_embed
        x = torch.cat([tokens.expand(x.shape[0], -1, -1), x], dim=1)
        x = self.norm(self.blocks(x))
        features = (x[:, 0] + x[:, 1]) / 2
        return self.head(features), features


def variant_seconds(state: dict[str, Tensor], path: str | Path = "PaSST weights") -> int:
    """The window (10, 20 or 30 s) a PaSST state dict was trained for, from its time position embedding."""
    pos = state.get("time_new_pos_embed")
    if pos is None:
        raise ValueError(f"{path}: not a hear21passt PaSST state dict (no time_new_pos_embed)")
    by_positions = {positions: seconds for seconds, (positions, _, _) in VARIANTS.items()}
    if pos.shape[-1] not in by_positions:
        raise ValueError(f"{path}: PaSST time_new_pos_embed has {pos.shape[-1]} time positions; mgen knows the "
                         f"published 10/20/30 s models (99/200/300)")
    return by_positions[pos.shape[-1]]


# ---- embedder -------------------------------------------------------------------------------------------------

class PaSST(AudioEmbedder):
    """`logits` / `features` of audio ``[B, L]`` (one window), and `embed`: one 768-d feature per window."""

    min_samples = MIN_SAMPLES

    def __init__(self, net: PasstNet, info: EmbedderInfo, hop_seconds: float | None = None, batch_size: int = 8):
        super().__init__()
        self.mel = PasstMel()
        self.net = net.eval()
        self.info = info
        self.window_seconds = variant_seconds(net.state_dict())
        self.max_samples = self.window_seconds * SAMPLE_RATE
        self.hop_samples = self.max_samples if hop_seconds is None else round(hop_seconds * SAMPLE_RATE)
        if not 0 < self.hop_samples <= self.max_samples:
            raise ValueError(f"PaSST hop_seconds must be in (0, {self.window_seconds}], got {hop_seconds}")
        self.batch_size = batch_size

    def _check(self, wav: Tensor) -> None:
        if wav.dim() != 2:
            raise ValueError(f"PaSST takes audio [B, L] at 32 kHz, got shape {tuple(wav.shape)}")
        length = wav.shape[-1]
        if length > self.max_samples:
            raise ValueError(f"{self.info.id} takes at most {self.window_seconds} s ({self.max_samples} samples at "
                             f"32 kHz) per call, got {length} samples: split longer audio into windows first")
        if length < MIN_SAMPLES:
            raise ValueError(f"{self.info.id} needs more than 0.15 s ({MIN_SAMPLES} samples at 32 kHz), got {length}")
        if not bool(torch.isfinite(wav).all()):
            raise ValueError("audio contains NaN or infinite samples")

    @torch.no_grad()
    def features(self, wav: Tensor) -> tuple[Tensor, Tensor]:
        """Audio ``[B, L]`` (0.15 s < L <= window) -> (logits ``[B, 527]``, features ``[B, 768]``), float32."""
        self._check(wav)
        dtype = self.net.cls_token.dtype
        logits, features = self.net(self.mel(wav.to(self.net.cls_token.device)).to(dtype))
        return logits.float(), features.float()

    def logits(self, wav: Tensor) -> Tensor:
        """Audio ``[B, L]`` at 32 kHz, at most one window -> AudioSet logits ``[B, 527]`` (softmax is the caller's)."""
        return self.features(wav)[0]

    def segments(self, wav: Tensor) -> list[Tensor]:
        """Windows of mono ``[L]``: every `hop` samples, no padding, the last one reaching the end; pieces of
        0.15 s or less dropped (with the default hop: audiocraft's ``torch.split`` segmentation)."""
        out = []
        for start in range(0, wav.shape[-1], self.hop_samples):
            piece = wav[start:start + self.max_samples]
            if piece.shape[-1] >= MIN_SAMPLES:
                out.append(piece)
            if start + self.max_samples >= wav.shape[-1]:
                break
        return out

    def embed(self, wav: Tensor) -> Tensor:
        if wav.dim() != 1:
            raise ValueError(f"PaSST embeds mono audio [L], got shape {tuple(wav.shape)}")
        pieces = self.segments(wav)
        if not pieces:
            return torch.zeros(0, FEATURE_DIM, device=self.net.cls_token.device)
        # Full windows go in batches; a shorter last piece (different length) on its own.
        full = [p for p in pieces if p.shape[-1] == self.max_samples]
        batches = [torch.stack(full[i:i + self.batch_size]) for i in range(0, len(full), self.batch_size)]
        batches += [p[None] for p in pieces if p.shape[-1] != self.max_samples]
        return torch.cat([self.features(batch)[1] for batch in batches])


def load_passt_state_dict(path: str | Path) -> dict[str, Tensor]:
    """hear21passt's ``net`` weights from `path` (a ``net.``-prefixed wrapper state dict is accepted too), checked
    against `PasstNet`'s layout for the variant they are."""
    state = load_state_dict_file(path, "PaSST")
    if any(k.startswith("net.") for k in state):  # a PasstBasicWrapper's state dict
        state = {k[len("net."):]: v for k, v in state.items() if k.startswith("net.")}
    seconds = variant_seconds(state, path)
    with torch.device("meta"):
        layout = PasstNet(VARIANTS[seconds][0]).state_dict()
    check_state_dict(state, layout, path, f"hear21passt PaSST-{seconds}s")
    return state


def load_passt(weights: str | Path | None = None, variant: int | None = None, hop_seconds: float | None = None,
               batch_size: int = 8) -> PaSST:
    """PaSST from `weights` (its variant read from them), or the published file of `variant` (default 20 s, the
    window of audiocraft's KL) from the torch hub cache. A named variant must match the weights."""
    if variant is not None and variant not in VARIANTS:
        raise ValueError(f"PaSST variant must be one of {sorted(VARIANTS)} (seconds), got {variant}")
    _, filename, url = VARIANTS[variant or 20]
    path = resolve_weights(weights, filename, url, "PaSST")
    state = load_passt_state_dict(path)
    seconds = variant_seconds(state, path)
    if variant is not None and variant != seconds:
        raise ValueError(f"{path}: holds the PaSST-{seconds}s model, but PaSST-{variant}s was asked for")
    with torch.device("meta"):
        net = PasstNet(VARIANTS[seconds][0])
    net.load_state_dict(state, strict=True, assign=True)
    sha = file_sha256(path)
    hop = seconds if hop_seconds is None else hop_seconds
    info = EmbedderInfo(id=f"passt-{seconds}s", sample_rate=SAMPLE_RATE, dim=FEATURE_DIM,
                        protocol=f"passt-features-v1-window{seconds}s-hop{hop:g}s", weights=str(path),
                        weights_sha256=sha, weights_label=weights_label(path, sha, None))
    return PaSST(net, info, hop_seconds=hop_seconds, batch_size=batch_size)
