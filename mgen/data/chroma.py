"""A small chromagram: how much energy each of the 12 pitch classes has in each frame.

Stored next to the tokens (one frame per codec frame) so melody conditioning can train from token shards without
decoding audio. Power STFT (Hann window), a 12-bin filterbank that maps each FFT bin between ``fmin`` and ``fmax``
to its pitch class with a Gaussian weight in semitones from the class centre, then each frame is divided by its
maximum (inf-norm, as audiocraft's ChromaExtractor) so loudness does not matter; silent frames stay zero. The
melody conditioner (argmax bottleneck, stems) is a separate, later piece.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
import torch

A4_HZ = 440.0
A4_MIDI = 69


@lru_cache(maxsize=8)
def chroma_filterbank(sample_rate: int, n_fft: int, fmin: float = 55.0, fmax: float = 5000.0,
                      width: float = 0.5) -> np.ndarray:
    """``[12, n_fft // 2 + 1]`` weights; row 0 is C. ``width`` is the Gaussian's standard deviation in semitones."""
    freqs = np.fft.rfftfreq(n_fft, 1.0 / sample_rate)
    fb = np.zeros((12, freqs.size), dtype=np.float64)
    valid = (freqs >= fmin) & (freqs <= min(fmax, sample_rate / 2))
    midi = A4_MIDI + 12.0 * np.log2(freqs[valid] / A4_HZ)
    for pc in range(12):
        distance = (midi - pc + 6.0) % 12.0 - 6.0  # circular semitone distance to pitch class pc (C = 0)
        fb[pc, valid] = np.exp(-0.5 * (distance / width) ** 2)
    fb = fb.astype(np.float32)
    fb.setflags(write=False)  # cached: shared by every caller
    return fb


def chromagram(wav: torch.Tensor | np.ndarray, sample_rate: int, hop_length: int, n_fft: int | None = None,
               num_frames: int | None = None, eps: float = 1e-8) -> torch.Tensor:
    """Chroma of mono audio ``[L]`` (or ``[C, L]``, mixed down) -> ``[12, frames]`` float32 in [0, 1].

    Frames are centred every ``hop_length`` samples (``1 + L // hop`` of them); ``num_frames`` pads or cuts to a
    given count, e.g. the codec's ``ceil(L / hop)``. ``n_fft`` defaults to the power of two >= 4 hops, enough to
    separate semitones down to about 100 Hz at 32 kHz.
    """
    x = torch.as_tensor(wav, dtype=torch.float32)
    if x.dim() == 2:
        x = x.mean(dim=0)
    if x.dim() != 1:
        raise ValueError(f"chromagram expects audio [L] or [C, L], got shape {tuple(x.shape)}")
    n_fft = n_fft or 1 << int(np.ceil(np.log2(4 * hop_length)))
    if x.numel() < n_fft // 2 + 1:  # reflect padding needs at least half a window
        x = torch.nn.functional.pad(x, (0, n_fft // 2 + 1 - x.numel()))
    spec = torch.stft(x, n_fft, hop_length=hop_length, window=torch.hann_window(n_fft), center=True,
                      pad_mode="reflect", return_complex=True)
    power = spec.real.square() + spec.imag.square()  # [F, frames]
    fb = torch.tensor(chroma_filterbank(sample_rate, n_fft))
    chroma = fb @ power
    peak = chroma.amax(dim=0, keepdim=True)
    chroma = torch.where(peak > eps, chroma / peak.clamp(min=eps), torch.zeros_like(chroma))
    if num_frames is not None:
        chroma = chroma[:, :num_frames]
        if chroma.shape[1] < num_frames:
            chroma = torch.nn.functional.pad(chroma, (0, num_frames - chroma.shape[1]))
    return chroma.contiguous()
