"""ChromaCosine: the one-hot cosine is the rate of frames with the same dominant pitch class; the same melody in two
timbres scores high, two melodies low; silence counts as C, as in audiocraft (eval notes §1 chroma, §7 (f))."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from mgen.conditioning.chroma import chromagram
from mgen.metrics import ChromaCosine

SR = 32_000
NOTE_SECONDS = 0.64  # 5 chroma frames per note at hop 4096

pytestmark = pytest.mark.usefixtures("single_thread")


def render(midi_notes: list[int], timbre: str, rate: int = SR, seed: int = 0) -> torch.Tensor:
    """A melody as numpy-synthesised tones: 'sine' (pure), or 'saw' (8 harmonics at 1/k, a plucked envelope and a
    little noise)."""
    rng = np.random.default_rng(seed)
    n = int(NOTE_SECONDS * rate)
    t = np.arange(n) / rate
    out = []
    for note in midi_notes:
        freq = 440.0 * 2 ** ((note - 69) / 12)
        if timbre == "sine":
            wave = 0.3 * np.sin(2 * np.pi * freq * t)
        else:
            wave = sum(np.sin(2 * np.pi * k * freq * t) / k for k in range(1, 9)) * 0.2 * np.exp(-2.5 * t)
            wave = wave + 0.003 * rng.standard_normal(n)
        out.append(wave)
    return torch.from_numpy(np.concatenate(out)).float()[None]


MELODY = [60, 64, 67, 69, 65, 62, 71, 72, 64, 60, 67, 65]        # C E G A F D B C E C G F
OTHER = [61, 66, 70, 63, 68, 61, 66, 70, 63, 68, 61, 66]         # no shared pitch class at any position


def agreement_rate(gen: torch.Tensor, ref: torch.Tensor) -> float:
    frames = math.ceil(ref.shape[-1] / 4096)
    a = chromagram(gen, SR)[0, :frames].argmax(-1)
    b = chromagram(ref, SR)[0, :frames].argmax(-1)
    return float((a == b).double().mean())


def test_same_melody_in_two_timbres_high_two_melodies_low() -> None:
    reference = render(MELODY, "sine")
    same = ChromaCosine()
    same.update([render(MELODY, "saw")], [reference], SR)
    different = ChromaCosine()
    different.update([render(OTHER, "saw")], [reference], SR)
    assert float(same.compute()) >= 0.8
    assert float(different.compute()) <= 0.2
    # one-hot cosine = frame-agreement rate, exactly
    assert float(same.compute()) == pytest.approx(agreement_rate(render(MELODY, "saw"), reference), abs=1e-12)
    assert int(same.frames) == math.ceil(reference.shape[-1] / 4096)
    assert same.describe() | {"frames": 0} == {"metric": "ChromaCosine", "sample_rate": SR, "n_fft": 2 ** 14,
                                               "hop_length": 4096, "argmax": True, "pairs": 1, "frames": 0,
                                               "silent_clips": 0, "silence_policy": "error"}


def test_frame_weighting_lengths_and_rates() -> None:
    ref_a, ref_b = render(MELODY, "sine"), render(MELODY[:4], "sine")
    gen_a, gen_b = render(MELODY, "saw"), render(OTHER[:4] + [60], "saw")  # gen_b longer: cut to its reference
    metric = ChromaCosine()
    metric.update([gen_a, gen_b], [ref_a, ref_b], SR)
    frames_a, frames_b = math.ceil(ref_a.shape[-1] / 4096), math.ceil(ref_b.shape[-1] / 4096)
    expected = (agreement_rate(gen_a, ref_a) * frames_a + agreement_rate(gen_b[..., :ref_b.shape[-1]], ref_b)
                * frames_b) / (frames_a + frames_b)
    assert float(metric.compute()) == pytest.approx(expected, abs=1e-12)
    # a 44.1 kHz stereo reference is mixed down and resampled to 32 kHz first
    stereo = render(MELODY, "sine", rate=44_100).repeat(2, 1)
    resampled = ChromaCosine()
    resampled.update([gen_a], [stereo], SR, reference_sample_rate=44_100)
    assert float(resampled.compute()) >= 0.8
    interval = metric.bootstrap(n_boot=200, seed=0)
    assert interval.value == pytest.approx(float(metric.compute()), abs=1e-6) and interval.unit == "clips"


def test_silent_frames_count_as_c() -> None:
    a_note, c_note = render([69] * 3, "sine"), render([60] * 3, "sine")
    reference = torch.cat([a_note, torch.zeros_like(a_note)], dim=-1)       # A, then silence
    with_c = ChromaCosine()
    with_c.update([torch.cat([a_note, c_note], dim=-1)], [reference], SR)    # A, then C: "agrees" with silence
    with_d = ChromaCosine()
    with_d.update([torch.cat([a_note, render([62] * 3, "sine")], dim=-1)], [reference], SR)
    assert float(with_c.compute()) >= 0.9 and float(with_d.compute()) <= 0.6
    soft = ChromaCosine(argmax=False)  # without argmax, silent frames score 0
    soft.update([torch.cat([a_note, c_note], dim=-1)], [reference], SR)
    assert float(soft.compute()) <= 0.6


def test_bad_input() -> None:
    metric = ChromaCosine()
    tone = render([60], "sine")
    with pytest.raises(ValueError, match="reference clip 'x' is silent"):
        metric.update([tone], [torch.zeros_like(tone)], SR, names=["x"])
    with pytest.raises(ValueError, match="1 generated clips but 2 reference clips"):
        metric.update([tone], [tone, tone], SR)
    with pytest.raises(ValueError, match="chroma cosine has no pair to score"):
        metric.compute()
