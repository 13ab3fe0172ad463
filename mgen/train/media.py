"""Audio examples and spectrogram images for whatever logger a run uses.

W&B and TensorBoard get native media; every logger (CSV included) also gets WAV and PNG files under
`<log_dir>/media/`, so samples are never lost when no media-capable logger is configured. Callers log from global
rank 0 only; each file is committed whole (`mgen.atomic`), its name carrying the step.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from lightning.pytorch.loggers import TensorBoardLogger, WandbLogger
from PIL import Image

from mgen.atomic import atomic_write
from mgen.audio import write_audio


def log_mel_image(wav: torch.Tensor, sample_rate: int, n_fft: int = 1024, n_mels: int = 80) -> np.ndarray:
    """A log-magnitude mel spectrogram of mono audio [L] as an RGB uint8 image [mels, frames, 3] (low at bottom)."""
    from mgen.dsp import mel_filterbank_htk, power_spectrogram

    wav = wav.detach().float().cpu().reshape(-1)
    if wav.numel() < n_fft:
        wav = torch.nn.functional.pad(wav, (0, n_fft - wav.numel()))
    power = power_spectrogram(wav, n_fft, n_fft // 4, torch.hann_window(n_fft), center=True)
    mel = torch.log10(mel_filterbank_htk(sample_rate, n_fft, n_mels).T @ power + 1e-8)
    mel = (mel - mel.max() + 8.0).clamp(min=0) / 8.0  # 80 dB range
    x = mel.flip(0).numpy()
    # a small perceptual colormap: black -> purple -> orange -> yellow
    stops = np.array([[0, 0, 4], [87, 16, 110], [188, 55, 84], [249, 142, 9], [252, 255, 164]], dtype=np.float32)
    pos = x * (len(stops) - 1)
    lo = np.floor(pos).astype(int).clip(0, len(stops) - 2)
    frac = (pos - lo)[..., None]
    return (stops[lo] * (1 - frac) + stops[lo + 1] * frac).astype(np.uint8)


def _media_dir(logger) -> Path:
    base = getattr(logger, "log_dir", None) or getattr(logger, "save_dir", None) or "."
    path = Path(base) / "media"
    path.mkdir(parents=True, exist_ok=True)
    return path


def write_wav(path: Path, wav: torch.Tensor, sample_rate: int) -> None:
    """Audio [C, L] as 16-bit WAV, committed atomically (a reader never sees half a file)."""
    write_audio(path, wav, sample_rate)


def write_png(path: Path, image: np.ndarray) -> None:
    with atomic_write(path) as file:
        Image.fromarray(image).save(file, format="PNG")


def log_audio_examples(loggers: list, key: str, wavs: list[torch.Tensor], sample_rate: int, step: int,
                       captions: list[str] | None = None) -> list[Path]:
    """Log audio [C, L] examples with their spectrograms; returns the files written."""
    written: list[Path] = []
    wavs = [w.detach().float().cpu() for w in wavs]  # float32 first: numpy has no bf16, and a bf16 mean rounds
    images = [log_mel_image(w.mean(0), sample_rate) for w in wavs]
    captions = captions or [f"{key} {i}" for i in range(len(wavs))]
    for logger in loggers:
        if isinstance(logger, WandbLogger):
            logger.log_audio(key=key, audios=[w.mean(0).numpy() for w in wavs], step=step,
                             sample_rate=[sample_rate] * len(wavs), caption=captions)
            logger.log_image(key=f"{key}/spectrogram", images=images, step=step, caption=captions)
        elif isinstance(logger, TensorBoardLogger):
            for i, (w, img) in enumerate(zip(wavs, images)):
                logger.experiment.add_audio(f"{key}/{i}", w.mean(0), step, sample_rate)
                logger.experiment.add_image(f"{key}/{i}/spectrogram", img, step, dataformats="HWC")
    folder = _media_dir(loggers[0]) if loggers else Path("media")
    folder.mkdir(parents=True, exist_ok=True)
    safe = key.replace("/", "_")
    for i, (w, img) in enumerate(zip(wavs, images)):
        wav_path = folder / f"{safe}_step{step}_{i}.wav"
        write_wav(wav_path, w, sample_rate)
        png_path = folder / f"{safe}_step{step}_{i}.png"
        write_png(png_path, img)
        written += [wav_path, png_path]
    return written
