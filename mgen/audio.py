"""The one place for audio sample arithmetic shared by training, inference and evaluation: channel mixing and
band-limited resampling (libsoxr), for numpy ``[frames, channels]`` arrays and torch ``[..., L]`` tensors; and the
one atomic audio file writer of the `mgen` commands.

`data_prep` builds on these (it re-exports them from `data_prep.audio_io`); `mgen` never imports `data_prep`.
"""

from __future__ import annotations

from pathlib import Path

from typing import Any

import numpy as np
import torch
from torch import Tensor


def to_channels(audio: np.ndarray, channels: int) -> np.ndarray:
    """``[frames, C]`` mixed down to mono by averaging, or up to stereo by duplicating; >2 channels are averaged
    first."""
    have = audio.shape[1]
    if have == channels:
        return audio
    mono = audio.mean(axis=1, keepdims=True)
    return mono if channels == 1 else np.repeat(mono, 2, axis=1)


def resample(audio: np.ndarray, rate_in: int, rate_out: int) -> np.ndarray:
    """High-quality band-limited resampling (libsoxr 'HQ') of ``[frames, C]`` float32; identity when rates match."""
    if rate_in == rate_out:
        return audio
    import soxr  # noqa: PLC0415 - only needed when rates differ

    out = soxr.resample(np.ascontiguousarray(audio, dtype=np.float32), rate_in, rate_out, quality="HQ")
    return np.asarray(out, dtype=np.float32).reshape(-1, audio.shape[1])


def resample_tensor(wav: Tensor, rate_in: int, rate_out: int) -> Tensor:
    """`resample` for a tensor ``[..., L]`` (computed on the CPU, returned on ``wav``'s device)."""
    if rate_in == rate_out:
        return wav
    flat = wav.detach().float().cpu().reshape(-1, wav.shape[-1]).numpy()
    out = resample(np.ascontiguousarray(flat.T), rate_in, rate_out).T
    return torch.from_numpy(np.ascontiguousarray(out)).reshape(*wav.shape[:-1], -1).to(wav.device)


def read_audio(source: Any, where: str | None = None, frames: int = -1) -> tuple[np.ndarray, int]:
    """``([frames, C] float32, sample rate)`` of an audio file (a path or a file object), checked: a file that is
    missing, unreadable, empty or holds NaN/inf is a ValueError / FileNotFoundError naming `where` (default: the
    path). `frames` > 0 reads only the first `frames`."""
    import soundfile as sf  # noqa: PLC0415

    where = where or str(source)
    if isinstance(source, (str, Path)) and not Path(source).is_file():
        raise FileNotFoundError(f"{where}: audio file not found")
    try:
        audio, rate = sf.read(source if not isinstance(source, Path) else str(source), dtype="float32",
                              always_2d=True, frames=frames)
    except Exception as err:  # libsndfile raises several types for unreadable input
        lines = str(err).strip().splitlines()
        raise ValueError(f"{where}: cannot be read as audio ({type(err).__name__}: "
                         f"{(lines[0] if lines else '')[:200]})") from err
    if audio.shape[0] == 0:
        raise ValueError(f"{where}: the audio is empty")
    if not np.isfinite(audio).all():
        raise ValueError(f"{where}: the audio contains NaN or infinite samples")
    return audio, int(rate)


def audio_format(path: str | Path, subtype: str = "PCM_16") -> str:
    """The soundfile format named by `path`'s extension (WAV for .wav); ValueError when it is not an audio format
    soundfile writes, or cannot hold `subtype` samples."""
    import soundfile as sf  # noqa: PLC0415

    path = Path(path)
    fmt = path.suffix.lstrip(".").upper()
    if fmt not in sf.available_formats():
        raise ValueError(f"{path}: unknown audio format {path.suffix or '(no extension)'!r}; use .wav or .flac")
    if not sf.check_format(fmt, subtype):
        raise ValueError(f"{path}: {fmt} cannot hold {subtype} samples; use .wav or .flac")
    return fmt


def write_audio(path: str | Path, audio: np.ndarray | Tensor, sample_rate: int, subtype: str = "PCM_16") -> None:
    """Write ``[frames, C]`` audio (or a ``[C, L]`` tensor) in the format of `path`'s extension, atomically:
    through a unique temporary in the same folder, never a half-written or leftover file."""
    import soundfile as sf  # noqa: PLC0415

    from mgen.atomic import atomic_path  # noqa: PLC0415

    fmt = audio_format(path, subtype)
    if isinstance(audio, Tensor):
        audio = audio.detach().float().cpu().numpy().T
    with atomic_path(path) as tmp:
        sf.write(str(tmp), audio, sample_rate, format=fmt, subtype=subtype)
