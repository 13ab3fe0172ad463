"""Melody conditioning reaches generation: the melody steers the output, and only through its argmax chroma."""

from __future__ import annotations

import math

import torch

from mgen.codec.model import Codec
from mgen.lm.model import LM, LMConfig
from mgen.musicgen import MusicGen
from mgen.conditioning.provider import ConditioningConfig, build_condition_provider

RATE = 32000


def melody(pitches_hz: list[float], seconds_each: float = 0.5, amplitude: float = 0.3) -> torch.Tensor:
    """[1, 1, L]: a sequence of pure tones, one per pitch."""
    t = torch.arange(int(seconds_each * RATE)) / RATE
    notes = [amplitude * torch.sin(2 * math.pi * f * t) for f in pitches_hz]
    return torch.cat(notes)[None, None]


def melody_model() -> MusicGen:
    torch.manual_seed(0)
    lm = LM(LMConfig.preset("tiny", n_q=4, card=256))
    conditioner = build_condition_provider(ConditioningConfig(text=True, melody=True), lm.cfg.dim)
    return MusicGen(lm, conditioner, Codec.from_preset("tiny"), max_window_seconds=2.0)


def generated(model: MusicGen, wav: torch.Tensor | None) -> torch.Tensor:
    return model.generate(["a piano tune"], duration=1.0, melody=wav, melody_sample_rate=RATE if wav is not None
                          else None, top_k=50, seed=3)


def test_a_different_melody_changes_the_output_and_loudness_does_not() -> None:
    model = melody_model()
    c_major = melody([261.63, 329.63, 392.0, 523.25])  # C E G C
    f_sharp = melody([369.99, 466.16, 277.18, 311.13])  # F# A# C# D#: other pitch classes
    first = generated(model, c_major)
    assert first.shape == (1, 1, RATE) and torch.isfinite(first).all()
    assert torch.equal(first, generated(model, c_major))  # seeded: same melody, same clip
    assert not torch.equal(first, generated(model, f_sharp))
    assert not torch.equal(first, generated(model, None))  # no melody is the null melody, another input
    # the information bottleneck: the LM sees the dominant pitch class per frame, not the waveform, so the same
    # notes played quieter (and an octave up) give exactly the same clip
    assert torch.equal(first, generated(model, melody([523.25, 659.26, 783.99, 1046.5], amplitude=0.05)))


def test_the_melody_prefix_has_the_training_window_length(monkeypatch) -> None:
    """A melody shorter or longer than the training window is looped or cut to the window's chroma frames, as in
    training (and in audiocraft): a 3-s clip must not meet a prefix shape its LM never saw during training on
    5-s segments (measured in the demo: the melody's chroma gain went from 0.000 to +0.104)."""
    import mgen.musicgen as musicgen_module

    model = melody_model()  # trained window: 2 s
    seen: list[int] = []
    real_generate = musicgen_module.generate

    def spy(lm, frames, conditioning, **kwargs):
        seen.append(conditioning.prefix.shape[1])
        return real_generate(lm, frames, conditioning, **kwargs)

    monkeypatch.setattr(musicgen_module, "generate", spy)
    window = model.conditioner.conditioners["self_wav"].frames_for(2 * RATE, RATE)
    for seconds_each in (0.125, 0.5, 1.0):  # 0.5 s, 2 s and 4 s of melody
        model.generate(["a piano tune"], duration=0.5, melody=melody([261.63, 329.63, 392.0, 523.25], seconds_each),
                       melody_sample_rate=RATE, top_k=50, seed=3)
    assert seen == [window] * 3
