"""Chroma at the codec frame rate, stored next to the tokens so melody LMs train without the audio.

The chromagram itself is the melody conditioner's (`mgen.conditioning.chroma`, one filterbank for the whole
project); this module only picks a window for the codec's hop and aligns the frames with the codes.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from mgen.conditioning.chroma import chromagram as conditioner_chromagram


def chromagram(wav: torch.Tensor | np.ndarray, sample_rate: int, hop_length: int,
               num_frames: int | None = None) -> torch.Tensor:
    """Chroma of audio ``[L]`` or ``[C, L]`` (mixed down) -> ``[12, frames]`` float32, inf-norm per frame.

    The window is the power of two >= 4 hops (enough to separate semitones down to about 100 Hz at 32 kHz);
    ``num_frames`` pads or cuts to a given count, e.g. the codec's ``ceil(L / hop)``.
    """
    x = torch.as_tensor(wav, dtype=torch.float32)
    if x.dim() == 2:
        x = x.mean(dim=0)
    if x.dim() != 1:
        raise ValueError(f"chromagram expects audio [L] or [C, L], got shape {tuple(x.shape)}")
    n_fft = 1 << math.ceil(math.log2(4 * hop_length))
    chroma = conditioner_chromagram(x[None], sample_rate, n_fft=n_fft, hop_length=hop_length)[0].T
    if num_frames is not None:
        chroma = chroma[:, :num_frames]
        if chroma.shape[1] < num_frames:
            chroma = torch.nn.functional.pad(chroma, (0, num_frames - chroma.shape[1]))
    return chroma.contiguous()
