"""The chromagram that MusicGen's melody conditioning starts from: 12 pitch-class energies per STFT frame.

Published settings (audiocraft ChromaExtractor): power STFT with a 2^14-sample Hann window and a 4096-sample hop
at 32 kHz (7.8 frames/s, long windows resolve semitones in the bass), a 12-bin chroma filterbank, each frame
divided by its maximum (inf-norm) so loudness does not matter.

The filterbank is `mgen.dsp.chroma_filterbank` (librosa's ``filters.chroma``, tuning 0, row 0 = C, the DC bin at
zero) with its Gaussian over octaves centred 5 octaves above A0 (880 Hz), 2 octaves wide.

(``mgen.data.chroma`` stores a lighter chroma at the codec frame rate next to the tokens; the melody conditioner
takes either.)
"""

from __future__ import annotations

import torch
from torch import Tensor

from mgen.dsp import chroma_filterbank, power_spectrogram

PUBLISHED_SAMPLE_RATE = 32_000
PUBLISHED_N_FFT = 2 ** 14
PUBLISHED_HOP = 4096
PITCH_CLASSES = ("C", "C#", "D", "D#", "E", "F", "F#", "G", "G#", "A", "A#", "B")


def chromagram(wav: Tensor, sample_rate: int = PUBLISHED_SAMPLE_RATE, n_fft: int = PUBLISHED_N_FFT,
               hop_length: int = PUBLISHED_HOP, eps: float = 1e-6) -> Tensor:
    """Mono audio [B, L] -> chroma [B, frames, 12], inf-norm per frame (silent frames stay all zero).

    Frames are centred every hop (``1 + L // hop`` of them); audio shorter than one window is zero-padded first,
    as published.
    """
    if wav.dim() != 2:
        raise ValueError(f"chromagram expects mono audio [B, L], got shape {tuple(wav.shape)}")
    x = wav.float()
    if x.shape[-1] < n_fft:
        pad = n_fft - x.shape[-1]
        x = torch.nn.functional.pad(x, (pad // 2, pad - pad // 2))
    window = torch.hann_window(n_fft, device=x.device)
    power = power_spectrogram(x, n_fft, hop_length, window, center=True)  # [B, F, frames]
    bank = chroma_filterbank(sample_rate, n_fft).to(x.device)
    chroma = torch.einsum("cf,bft->btc", bank, power)
    peak = chroma.amax(dim=-1, keepdim=True)
    return torch.where(peak > eps, chroma / peak.clamp(min=eps), torch.zeros_like(chroma))


def frames_per_second(sample_rate: int = PUBLISHED_SAMPLE_RATE, hop_length: int = PUBLISHED_HOP) -> float:
    """Chroma frame rate: 7.8125 Hz with the published settings."""
    return sample_rate / hop_length


def num_chroma_frames(num_samples: int, hop_length: int = PUBLISHED_HOP, n_fft: int = PUBLISHED_N_FFT) -> int:
    """Frames `chromagram` returns for `num_samples` samples."""
    return 1 + max(num_samples, n_fft) // hop_length


def pitch_class(name: str) -> int:
    """Index of a pitch-class name ('C' = 0 ... 'B' = 11)."""
    return PITCH_CLASSES.index(name)

