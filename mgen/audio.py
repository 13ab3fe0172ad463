"""The one place for audio I/O and sample arithmetic, shared by training, inference, evaluation and data
preparation: reading and checking files, channel mixing, band-limited resampling (libsoxr), loudness, FLAC encoding,
for numpy ``[frames, channels]`` arrays (soundfile's layout) and torch ``[..., L]`` tensors; and the one atomic
audio file writer of the `mgen` commands.

torch is imported only by the functions that take tensors, so data preparation (and its worker processes) does not
pay for it; `mgen` never imports `data_prep`.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import soundfile as sf
    from torch import Tensor

# Sample rates we accept as a target. Below 1 kHz nothing musical survives; above 384 kHz no codec or soundcard
# goes, so such a number is almost certainly a typo (e.g. 32000000).
MIN_SAMPLE_RATE = 1000
MAX_SAMPLE_RATE = 384_000

# Level under which a segment counts as silent (dBFS RMS): normalising it would only amplify noise.
SILENCE_DB = -70.0


class AudioError(Exception):
    """An input that cannot be used as audio; the message is the reason written to a data-preparation report."""


def check_sample_rate(sample_rate: int) -> int:
    """Validate a target sample rate early, so a typo fails before hours of work."""
    if isinstance(sample_rate, float) and sample_rate.is_integer():
        sample_rate = int(sample_rate)  # 44100.0 from a YAML file is fine
    if isinstance(sample_rate, bool) or not isinstance(sample_rate, (int, np.integer)):
        raise ValueError(f"sample rate must be a whole number of Hz, got {sample_rate!r}")
    if not MIN_SAMPLE_RATE <= int(sample_rate) <= MAX_SAMPLE_RATE:
        raise ValueError(
            f"sample rate {sample_rate} Hz cannot be reached: use a rate between {MIN_SAMPLE_RATE} and "
            f"{MAX_SAMPLE_RATE} Hz (MusicGen uses 32000)"
        )
    return int(sample_rate)


def check_channels(channels: int) -> int:
    """Only mono and stereo are meaningful targets for the codec."""
    if channels not in (1, 2):
        raise ValueError(f"channels must be 1 (mono) or 2 (stereo), got {channels!r}")
    return int(channels)


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
    import soxr  # only needed when rates differ

    out = soxr.resample(np.ascontiguousarray(audio, dtype=np.float32), rate_in, rate_out, quality="HQ")
    return np.asarray(out, dtype=np.float32).reshape(-1, audio.shape[1])


def resample_tensor(wav: Tensor, rate_in: int, rate_out: int) -> Tensor:
    """`resample` for a tensor ``[..., L]`` (computed on the CPU, returned on ``wav``'s device)."""
    import torch  # see the module docstring

    if rate_in == rate_out:
        return wav
    flat = wav.detach().float().cpu().reshape(-1, wav.shape[-1]).numpy()
    out = resample(np.ascontiguousarray(flat.T), rate_in, rate_out).T
    return torch.from_numpy(np.ascontiguousarray(out)).reshape(*wav.shape[:-1], -1).to(wav.device)


def read_audio(source: Any, where: str | None = None, frames: int = -1) -> tuple[np.ndarray, int]:
    """``([frames, C] float32, sample rate)`` of an audio file (a path or a file object), checked: a file that is
    missing, unreadable, empty or holds NaN/inf is a ValueError / FileNotFoundError naming `where` (default: the
    path). `frames` > 0 reads only the first `frames`."""
    import soundfile as sf

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
    import soundfile as sf

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
    import soundfile as sf

    from mgen.atomic import atomic_path

    fmt = audio_format(path, subtype)
    if not isinstance(audio, np.ndarray):  # a tensor
        audio = audio.detach().float().cpu().numpy().T
    with atomic_path(path) as tmp:
        sf.write(str(tmp), audio, sample_rate, format=fmt, subtype=subtype)


def probe(path: str | Path) -> sf._SoundFileInfo:
    """Read only the header: cheap enough to plan millions of files up front."""
    import soundfile as sf

    try:
        info = sf.info(str(path))
    except Exception as err:  # soundfile raises several types (LibsndfileError, RuntimeError, TypeError)
        raise AudioError(f"not readable as audio: {_short(err)}") from err
    if info.frames <= 0 or info.samplerate <= 0:
        raise AudioError("empty audio (0 frames)")
    return info


def read_segment(path: str | Path, start_frame: int = 0, num_frames: int | None = None) -> tuple[np.ndarray, int]:
    """Read ``[frames, channels]`` float32 from a file, rejecting truncated or non-finite data with an AudioError
    (`read_audio` is the same check for whole files, with errors that name the file for a command's user)."""
    import soundfile as sf

    stop = None if num_frames is None else start_frame + num_frames
    try:
        data, rate = sf.read(str(path), start=start_frame, stop=stop, dtype="float32", always_2d=True)
    except Exception as err:
        raise AudioError(f"decode failed: {_short(err)}") from err
    if data.shape[0] == 0:
        raise AudioError("no audio frames could be decoded (truncated or empty)")
    if num_frames is not None and data.shape[0] < num_frames * 0.99:
        raise AudioError(f"truncated: header promises {num_frames} frames from {start_frame}, got {data.shape[0]}")
    if not np.isfinite(data).all():
        raise AudioError("audio contains NaN or Inf samples")
    return data, int(rate)


def rms_db(audio: np.ndarray) -> float:
    """RMS level in dBFS over all samples (no K-weighting, no gating)."""
    rms = float(np.sqrt(np.mean(np.square(audio, dtype=np.float64)))) if audio.size else 0.0
    return 20.0 * np.log10(max(rms, 1e-12))


def normalize_loudness(audio: np.ndarray, target_db: float, peak_db: float = -1.0) -> np.ndarray:
    """Scale to a target RMS level (dBFS), then lower the gain if needed so the peak stays under ``peak_db``.

    This is plain RMS normalisation, not LUFS (ITU-R BS.1770 adds K-weighting and gating); for training data the
    difference is a few dB and RMS needs no filter design. Peak limiting wins over the RMS target, so very
    dynamic material ends up a little quieter than the target instead of clipping.
    """
    level = rms_db(audio)
    if level <= SILENCE_DB:
        raise AudioError(f"silent audio ({level:.1f} dBFS RMS)")
    gain = 10.0 ** ((target_db - level) / 20.0)
    peak = float(np.max(np.abs(audio))) * gain
    ceiling = 10.0 ** (peak_db / 20.0)
    if peak > ceiling:
        gain *= ceiling / peak
    return (audio * gain).astype(np.float32)


def encode_flac(audio: np.ndarray, sample_rate: int) -> bytes:
    """16-bit FLAC bytes; deterministic for the same samples, so shard hashes are reproducible."""
    import soundfile as sf

    buf = io.BytesIO()
    sf.write(buf, np.clip(audio, -1.0, 1.0), sample_rate, format="FLAC", subtype="PCM_16")
    return buf.getvalue()


def _short(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return (text[0] if text else type(err).__name__)[:200]
