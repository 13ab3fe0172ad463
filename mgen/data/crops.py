"""Fixed-length training windows: a random (or first) crop of a clip, zero-padded with a mask when it is short.

Audio is cropped *before* decoding the whole file: FLAC seeks, so only the window (plus a few samples for the
resampler) is decoded, which keeps 30 s crops from long tracks cheap. Codes and chroma are cropped the same way in
frame units. Masks are True on real data and False on padding (the convention of HF ``padding_mask`` and of the
LM's target mask), so ``loss * mask`` keeps what is real.
"""

from __future__ import annotations

import io

import numpy as np
import soundfile as sf

from mgen.audio import resample, to_channels
from mgen.data.skips import SampleError


def crop_start(length: int, segment: int, rng: np.random.Generator | None) -> int:
    """Uniform start in ``[0, length - segment]``; 0 when the clip is not longer than the segment or ``rng`` is None."""
    if rng is None or length <= segment:
        return 0
    return int(rng.integers(0, length - segment + 1))


def pad_to(array: np.ndarray, segment: int, value: float | int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Pad (or cut) the last axis to ``segment``; returns the array and its ``[segment]`` bool mask of real data."""
    have = min(array.shape[-1], segment)
    out = np.full(array.shape[:-1] + (segment,), value, dtype=array.dtype)
    out[..., :have] = array[..., :have]
    mask = np.zeros(segment, dtype=bool)
    mask[:have] = True
    return out, mask


def crop_frames(array: np.ndarray, segment: int, rng: np.random.Generator | None,
                value: float | int = 0) -> tuple[np.ndarray, np.ndarray, int]:
    """Crop ``[..., T]`` to ``segment`` frames; returns (array, mask, start)."""
    start = crop_start(array.shape[-1], segment, rng)
    out, mask = pad_to(array[..., start:start + segment], segment, value)
    return out, mask, start


def read_audio_crop(data: bytes, sample_rate: int, channels: int, segment: int,
                    rng: np.random.Generator | None) -> tuple[np.ndarray, np.ndarray]:
    """Decode a ``segment``-sample window at ``sample_rate`` from encoded audio bytes.

    Returns ``audio [channels, segment]`` float32 (zero-padded) and ``mask [segment]`` bool. Raises
    :class:`SampleError` for undecodable, empty or non-finite audio.
    """
    try:
        with sf.SoundFile(io.BytesIO(data)) as f:
            rate_in, frames = int(f.samplerate), int(f.frames)
            if frames <= 0 or rate_in <= 0:
                raise SampleError("empty", "audio has no frames")
            length_out = int(frames * sample_rate // rate_in)
            start_out = crop_start(length_out, segment, rng)
            start_in = int(round(start_out * rate_in / sample_rate))
            # a few extra input samples so the resampler's output reaches the full window
            need_in = int(np.ceil(segment * rate_in / sample_rate)) + (0 if rate_in == sample_rate else 16)
            if start_in:
                f.seek(start_in)
            audio = f.read(min(need_in, frames - start_in), dtype="float32", always_2d=True)
    except SampleError:
        raise
    except Exception as err:  # libsndfile raises several types for corrupt data
        raise SampleError("audio", f"cannot decode audio: {type(err).__name__}: {str(err)[:200]}") from err
    if audio.shape[0] == 0:
        raise SampleError("empty", "no audio frames could be decoded")
    if not np.isfinite(audio).all():
        raise SampleError("nan", "audio contains NaN or Inf samples")
    audio = resample(to_channels(audio, channels), rate_in, sample_rate)
    real = min(segment, length_out - start_out, audio.shape[0])
    out, mask = pad_to(audio[:real].T, segment)
    return np.ascontiguousarray(out, dtype=np.float32), mask
