"""Audio read / resample / loudness / encode helpers shared by the corpus builder and the shard writer.

Everything works on float32 numpy arrays shaped ``[frames, channels]`` so that soundfile's layout is kept and no
torch import is needed in data preparation (torchaudio does not exist for our torch version).
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import soundfile as sf

from mgen.audio import resample, to_channels  # noqa: F401 - re-exported: one implementation for mgen and data_prep

# Sample rates we accept as a target. Below 1 kHz nothing musical survives; above 384 kHz no codec or soundcard
# goes, so such a number is almost certainly a typo (e.g. 32000000).
MIN_SAMPLE_RATE = 1000
MAX_SAMPLE_RATE = 384_000

# Level under which a segment counts as silent (dBFS RMS): normalising it would only amplify noise.
SILENCE_DB = -70.0


class AudioError(Exception):
    """An input that cannot be used as audio; the message is the reason written to the report."""


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


def probe(path: str | Path) -> sf._SoundFileInfo:
    """Read only the header: cheap enough to plan millions of files up front."""
    try:
        info = sf.info(str(path))
    except Exception as err:  # soundfile raises several types (LibsndfileError, RuntimeError, TypeError)
        raise AudioError(f"not readable as audio: {_short(err)}") from err
    if info.frames <= 0 or info.samplerate <= 0:
        raise AudioError("empty audio (0 frames)")
    return info


def read_segment(path: str | Path, start_frame: int = 0, num_frames: int | None = None) -> tuple[np.ndarray, int]:
    """Read ``[frames, channels]`` float32 from a file, rejecting truncated or non-finite data."""
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
    buf = io.BytesIO()
    sf.write(buf, np.clip(audio, -1.0, 1.0), sample_rate, format="FLAC", subtype="PCM_16")
    return buf.getvalue()


def _short(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return (text[0] if text else type(err).__name__)[:200]
