"""Filterbanks and the power spectrogram, in plain torch (torchaudio and librosa are not dependencies).

Each mel filterbank reproduces one published reference exactly, so they are kept apart even where they look alike:
they differ in the mel formula's constants, in whether the triangles are drawn in Hz or in mel, in the compute dtype
and in the layout, and the embedder tests compare them bit-for-bit-close against the reference code.

- `mel_filterbank_htk`: torchaudio ``melscale_fbanks(mel_scale="htk", norm=None)``, the codec's mel loss;
- `mel_filterbank_kaldi`: torchaudio ``compliance.kaldi.get_mel_banks``, PaSST's frontend;
- `mel_filterbank_audioset`: Google's AudioSet ``mel_features.spectrogram_to_mel_matrix``, VGGish's frontend;
- `chroma_filterbank`: librosa ``filters.chroma``, the melody conditioner's and the chroma metric's chromagram.
"""

from __future__ import annotations

import math
from functools import lru_cache

import torch
import torch.nn.functional as F
from torch import Tensor

N_CHROMA = 12
A0_HZ = 27.5  # chroma octave coordinate origin; 880 Hz = 5 octaves above


def power_spectrogram(x: Tensor, n_fft: int, hop_length: int, window: Tensor, *, center: bool,
                      win_length: int | None = None) -> Tensor:
    """``|stft(x)|²`` of ``[..., L]`` (1-D or 2-D, as `torch.stft` takes) -> ``[..., n_fft // 2 + 1, frames]``;
    centred frames are reflect-padded.

    Half-precision input (bf16, fp16) is transformed in float32 with autocast off, and so is the window: CUDA has no
    bf16 FFT. The result is float32 then (float64 input stays float64)."""
    x = _fft_precision(x)
    with torch.autocast(x.device.type, enabled=False):
        spec = torch.stft(x, n_fft, hop_length=hop_length, win_length=win_length, window=window.to(x.dtype),
                          center=center, pad_mode="reflect", return_complex=True)
    return spec.real.square() + spec.imag.square()


def _fft_precision(x: Tensor) -> Tensor:
    """`x` in a dtype every FFT backend supports: float32 unless it is float32 or float64 already."""
    return x if x.dtype in (torch.float32, torch.float64) else x.float()


# ---- mel -----------------------------------------------------------------------------------------------------

def hz_to_mel_htk(f: Tensor | float) -> Tensor:
    """HTK mel scale ``2595 log10(1 + f / 700)``, float64 (torchaudio's ``_hz_to_mel(mel_scale="htk")``)."""
    return 2595.0 * torch.log10(1.0 + torch.as_tensor(f, dtype=torch.float64) / 700.0)


def mel_to_hz_htk(m: Tensor) -> Tensor:
    """Inverse of `hz_to_mel_htk`."""
    return 700.0 * (10.0 ** (m / 2595.0) - 1.0)


def mel_filterbank_htk(sample_rate: int, n_fft: int, n_mels: int, f_min: float = 0.0,
                       f_max: float | None = None) -> Tensor:
    """``[n_fft // 2 + 1, n_mels]`` float32 triangular filters, unnormalised (peak 1), the triangles drawn in Hz
    between HTK-mel-spaced edges. Matches torchaudio ``melscale_fbanks(mel_scale="htk", norm=None)``.

    With small FFTs some filters fall between FFT bins and are all zero; that is expected and harmless.
    """
    f_max = sample_rate / 2 if f_max is None else f_max
    if not 0 <= f_min < f_max <= sample_rate / 2:
        raise ValueError(f"need 0 <= f_min < f_max <= sample_rate/2, got f_min={f_min}, f_max={f_max}")
    freqs = torch.linspace(0, sample_rate / 2, n_fft // 2 + 1, dtype=torch.float64)
    mel_points = torch.linspace(float(hz_to_mel_htk(f_min)), float(hz_to_mel_htk(f_max)), n_mels + 2,
                                dtype=torch.float64)
    hz_points = mel_to_hz_htk(mel_points)
    lower, centre, upper = hz_points[:-2], hz_points[1:-1], hz_points[2:]
    rising = (freqs[:, None] - lower[None, :]) / (centre - lower)[None, :]
    falling = (upper[None, :] - freqs[:, None]) / (upper - centre)[None, :]
    return torch.clamp(torch.minimum(rising, falling), min=0.0).float()


def mel_filterbank_kaldi(n_mels: int, n_fft: int, sample_rate: int, f_min: float, f_max: float) -> Tensor:
    """``[n_mels, n_fft // 2 + 1]`` float32 triangular filters drawn in mel (``1127 ln(1 + f / 700)``, edges evenly
    spaced), computed in float32, the Nyquist column zero. Matches torchaudio ``compliance.kaldi.get_mel_banks``
    (which returns ``n_fft // 2`` columns; hear21passt pads the Nyquist one)."""
    def to_mel(hz: float) -> float:
        return 1127.0 * math.log(1.0 + hz / 700.0)

    low, high = to_mel(f_min), to_mel(f_max)
    step = (high - low) / (n_mels + 1)
    band = torch.arange(n_mels, dtype=torch.float32).unsqueeze(1)
    left, center, right = low + band * step, low + (band + 1.0) * step, low + (band + 2.0) * step
    bin_hz = (sample_rate / n_fft) * torch.arange(n_fft // 2, dtype=torch.float32)
    bin_mel = 1127.0 * (1.0 + bin_hz / 700.0).log()
    banks = torch.minimum((bin_mel - left) / (center - left), (right - bin_mel) / (right - center)).clamp(min=0.0)
    return F.pad(banks, (0, 1))


def mel_filterbank_audioset(sample_rate: int, n_fft: int, n_mels: int, f_min: float, f_max: float,
                            dtype: torch.dtype = torch.float64,
                            device: torch.device | str | None = None) -> Tensor:
    """``[n_fft // 2 + 1, n_mels]`` triangular filters drawn in mel (``1127 ln(1 + f / 700)``), unnormalised, the DC
    row zero, computed in float64 and returned in ``dtype``. Matches Google's AudioSet
    ``mel_features.spectrogram_to_mel_matrix`` (the VGGish frontend)."""
    def to_mel(hz: Tensor) -> Tensor:
        return 1127.0 * torch.log(1.0 + hz / 700.0)

    bin_mel = to_mel(torch.linspace(0.0, sample_rate / 2, n_fft // 2 + 1, dtype=torch.float64))
    edges = torch.linspace(float(to_mel(torch.tensor(f_min, dtype=torch.float64))),
                           float(to_mel(torch.tensor(f_max, dtype=torch.float64))), n_mels + 2, dtype=torch.float64)
    lower, center, upper = edges[:-2], edges[1:-1], edges[2:]
    rising = (bin_mel[:, None] - lower) / (center - lower)
    falling = (upper - bin_mel[:, None]) / (upper - center)
    weights = torch.minimum(rising, falling).clamp(min=0.0)
    weights[0] = 0.0
    return weights.to(dtype=dtype, device=device)


# ---- chroma --------------------------------------------------------------------------------------------------

@lru_cache(maxsize=8)
def _chroma_filterbank(sample_rate: int, n_fft: int, centre_octave: float, octave_width: float) -> Tensor:
    n_freqs = n_fft // 2 + 1
    freqs = torch.arange(1, n_freqs, dtype=torch.float64) * sample_rate / n_fft
    # position of each bin in semitones above A0; A = class 9 once C is row 0
    semis = N_CHROMA * torch.log2(freqs / A0_HZ)
    spacing = torch.cat([(semis[1:] - semis[:-1]).clamp(min=1.0), semis.new_ones(1)])
    classes = torch.arange(N_CHROMA, dtype=torch.float64)[:, None]
    distance = torch.remainder(semis[None, :] - (classes - 9) + N_CHROMA / 2, N_CHROMA) - N_CHROMA / 2
    weights = torch.exp(-0.5 * (2 * distance / spacing[None, :]) ** 2)
    weights = weights / weights.norm(dim=0, keepdim=True)
    octaves = semis / N_CHROMA
    weights = weights * torch.exp(-0.5 * ((octaves - centre_octave) / octave_width) ** 2)[None, :]
    bank = torch.zeros(N_CHROMA, n_freqs, dtype=torch.float64)
    bank[:, 1:] = weights
    return bank.to(torch.float32)


def chroma_filterbank(sample_rate: int, n_fft: int, centre_octave: float = 5.0, octave_width: float = 2.0) -> Tensor:
    """``[12, n_fft // 2 + 1]`` float32 weights mapping a power spectrum to pitch classes, row 0 = C. Matches
    librosa ``filters.chroma`` (tuning 0), except that the DC bin, which has no pitch, gets zero weight.

    Every FFT bin spreads its energy over the 12 pitch classes with a Gaussian in circular semitone distance whose
    width is the bin's own spacing in semitones (at least one), each bin's weights have unit L2 norm, and a Gaussian
    over octaves (centred ``centre_octave`` octaves above A0, ``octave_width`` wide) favours the melodic range.
    Cached, so each call returns a fresh clone.
    """
    return _chroma_filterbank(int(sample_rate), int(n_fft), float(centre_octave), float(octave_width)).clone()
