"""Validation media: WAV and spectrogram PNG files from audio tensors of any float dtype."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from PIL import Image

from mgen.train.media import log_audio_examples, log_mel_image


def test_bf16_audio_is_logged_like_its_float32_value(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """bf16-mixed validation decodes bf16 audio; numpy has none, so the media path converts to float32 first."""
    monkeypatch.chdir(tmp_path)  # no logger: files go to ./media
    torch.manual_seed(0)
    wav = (0.1 * torch.randn(2, 8000)).clamp(-0.9, 0.9).to(torch.bfloat16)
    written = log_audio_examples([], "val/samples", [wav], 16000, step=7)
    assert [p.name for p in written] == ["val_samples_step7_0.wav", "val_samples_step7_0.png"]
    clip, rate = sf.read(tmp_path / written[0])
    assert rate == 16000 and clip.shape == (8000, 2)
    np.testing.assert_allclose(clip.T, wav.float().numpy(), atol=1.5 / 32768)
    image = np.asarray(Image.open(tmp_path / written[1]))
    np.testing.assert_array_equal(image, log_mel_image(wav.float().mean(0), 16000))
