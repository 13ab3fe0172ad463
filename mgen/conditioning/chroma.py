"""The chromagram that MusicGen's melody conditioning starts from: 12 pitch-class energies per STFT frame.

Published settings (audiocraft ChromaExtractor): power STFT with a 2^14-sample Hann window and a 4096-sample hop
at 32 kHz (7.8 frames/s, long windows resolve semitones in the bass), a 12-bin chroma filterbank, each frame
divided by its maximum (inf-norm) so loudness does not matter.

The filterbank is written here rather than taken from librosa (not a dependency): every FFT bin spreads its energy
over the 12 pitch classes with a Gaussian in circular semitone distance whose width is the bin's own spacing in
semitones (at least one), each bin's weights have unit L2 norm, and a Gaussian over octaves (centred 5 octaves
above A0 = 880 Hz, 2 octaves wide) favours the melodic range. That is the construction of librosa's
``filters.chroma`` (tuning 0, row 0 = C); the DC bin, which has no pitch, gets zero weight here.

(``mgen.data.chroma`` stores a lighter chroma at the codec frame rate next to the tokens; the melody conditioner
takes either.)
"""

from __future__ import annotations

from functools import lru_cache

import torch
from torch import Tensor

N_CHROMA = 12
PUBLISHED_SAMPLE_RATE = 32_000
PUBLISHED_N_FFT = 2 ** 14
PUBLISHED_HOP = 4096
A0_HZ = 27.5  # octave coordinate origin; 880 Hz = 5 octaves above
PITCH_CLASSES = ("C", "C#", "D", "D#", "E", "F", "F#", "G", "G#", "A", "A#", "B")


@lru_cache(maxsize=8)
def _filterbank(sample_rate: int, n_fft: int, centre_octave: float, octave_width: float) -> Tensor:
    n_bins = n_fft // 2 + 1
    freqs = torch.arange(1, n_bins, dtype=torch.float64) * sample_rate / n_fft
    # position of each bin in semitones above A0; A = class 9 once C is row 0
    semis = N_CHROMA * torch.log2(freqs / A0_HZ)
    spacing = torch.cat([(semis[1:] - semis[:-1]).clamp(min=1.0), semis.new_ones(1)])
    classes = torch.arange(N_CHROMA, dtype=torch.float64)[:, None]
    distance = torch.remainder(semis[None, :] - (classes - 9) + N_CHROMA / 2, N_CHROMA) - N_CHROMA / 2
    weights = torch.exp(-0.5 * (2 * distance / spacing[None, :]) ** 2)
    weights = weights / weights.norm(dim=0, keepdim=True)
    octaves = semis / N_CHROMA
    weights = weights * torch.exp(-0.5 * ((octaves - centre_octave) / octave_width) ** 2)[None, :]
    bank = torch.zeros(N_CHROMA, n_bins, dtype=torch.float64)
    bank[:, 1:] = weights
    return bank.to(torch.float32)


def chroma_filterbank(sample_rate: int = PUBLISHED_SAMPLE_RATE, n_fft: int = PUBLISHED_N_FFT,
                      centre_octave: float = 5.0, octave_width: float = 2.0) -> Tensor:
    """[12, n_fft // 2 + 1] weights mapping a power spectrum to pitch classes; row 0 is C. Cached, so cloned."""
    return _filterbank(int(sample_rate), int(n_fft), float(centre_octave), float(octave_width)).clone()


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
    spec = torch.stft(x, n_fft, hop_length=hop_length, window=window, center=True, pad_mode="reflect",
                      return_complex=True)
    power = spec.real.square() + spec.imag.square()  # [B, F, frames]
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

