"""Melody conditioner: chroma of sine tones finds the right pitch classes; argmax bottleneck; prefix shapes."""

from __future__ import annotations

import math

import pytest
import torch

from mgen.conditioning.chroma import PITCH_CLASSES, chromagram, num_chroma_frames, pitch_class
from mgen.conditioning.melody import MelodyConditioner, argmax_one_hot, demucs_separator
from mgen.dsp import chroma_filterbank

SR = 32_000
DIM = 16
C_MAJOR = [60, 62, 64, 65, 67, 69, 71, 72]  # C4 D4 E4 F4 G4 A4 B4 C5 (MIDI)


def tone(midi: float, seconds: float, sr: int = SR) -> torch.Tensor:
    t = torch.arange(int(seconds * sr), dtype=torch.float64) / sr
    return (0.5 * torch.sin(2 * math.pi * 440.0 * 2 ** ((midi - 69) / 12) * t)).float()


def scale(notes: list[int], seconds_per_note: float = 1.0, sr: int = SR) -> torch.Tensor:
    return torch.cat([tone(n, seconds_per_note, sr) for n in notes])


@pytest.fixture(scope="module")
def melody() -> MelodyConditioner:
    torch.manual_seed(0)
    return MelodyConditioner(DIM)


def test_pure_tones_give_their_pitch_class() -> None:
    for midi, name in [(69, "A"), (60, "C"), (66, "F#"), (43, "G"), (83, "B")]:
        chroma = chromagram(tone(midi, 2.0)[None])
        assert chroma.shape == (1, num_chroma_frames(2 * SR), 12)
        assert torch.all(chroma[0].argmax(-1) == pitch_class(name)), (midi, name)
        assert torch.allclose(chroma.amax(-1), torch.ones(1, chroma.shape[1]))  # inf-norm per frame


def test_c_major_scale_argmax_bins(melody: MelodyConditioner) -> None:
    wav = scale(C_MAJOR)[None, None]  # [1, 1, 8 s]
    one_hot = argmax_one_hot(melody.chroma(wav, SR))[0]
    assert torch.all(one_hot.sum(-1) == 1)
    classes = one_hot.argmax(-1)
    rate = melody.chroma_rate
    expected = [n % 12 for n in C_MAJOR]
    for i, pc in enumerate(expected):
        # frames well inside note i (the 0.51 s window straddles note boundaries)
        inner = classes[math.ceil((i + 0.3) * rate): math.floor((i + 0.7) * rate) + 1]
        assert len(inner) >= 2 and torch.all(inner == pc), (PITCH_CLASSES[pc], inner.tolist())


def test_filterbank_shape_and_dc() -> None:
    bank = chroma_filterbank(SR, 2 ** 14)
    assert bank.shape == (12, 2 ** 13 + 1)
    assert (bank[:, 0] == 0).all() and (bank >= 0).all()


def test_filterbank_matches_librosa_reference() -> None:
    librosa = pytest.importorskip("librosa")
    ref = torch.from_numpy(librosa.filters.chroma(sr=SR, n_fft=2 ** 14, tuning=0.0, n_chroma=12))
    torch.testing.assert_close(chroma_filterbank(SR, 2 ** 14)[:, 1:], ref[:, 1:].float(), atol=1e-6, rtol=1e-5)


def test_prefix_shapes_at_native_and_lm_rates(melody: MelodyConditioner) -> None:
    wav = torch.stack([scale(C_MAJOR[:4]), scale(C_MAJOR[4:])])[:, None]  # [2, 1, 4 s]
    native = melody(wav, SR)
    frames = num_chroma_frames(4 * SR)
    assert native.embedding.shape == (2, frames, DIM) and native.mask.all()
    assert melody.frames_for(4 * SR, SR) == frames
    at_lm = MelodyConditioner(DIM, frame_rate=50.0)
    at_lm.load_state_dict(melody.state_dict())
    out = at_lm(wav, SR)
    assert out.embedding.shape == (2, round(frames * 50 / melody.chroma_rate), DIM)
    assert at_lm.frames_for(4 * SR, SR) == out.embedding.shape[1]
    # the same pitch sequence, only repeated in time: every LM-rate token is one of the native tokens
    assert torch.isin(out.embedding[0, :, 0], native.embedding[0, :, 0]).all()
    fixed = melody(wav, SR, num_frames=frames * 2 + 3)  # looped, as published for short melodies
    assert fixed.embedding.shape[1] == frames * 2 + 3
    torch.testing.assert_close(fixed.embedding[:, frames:2 * frames], native.embedding)


def test_different_melodies_give_different_prefixes(melody: MelodyConditioner) -> None:
    up = melody(scale(C_MAJOR)[None, None], SR).embedding
    down = melody(scale(C_MAJOR[::-1])[None, None], SR).embedding
    same = melody(scale(C_MAJOR)[None, None] * 0.1, SR).embedding  # louder/softer: same one-hot
    assert up.shape == down.shape and not torch.allclose(up, down)
    torch.testing.assert_close(up, same)


def test_other_sample_rates_and_stereo(melody: MelodyConditioner) -> None:
    wav = scale(C_MAJOR[:2], sr=44_100)[None, None].expand(1, 2, -1)
    out = melody(wav, 44_100)
    assert out.embedding.shape[1] == melody.frames_for(wav.shape[-1], 44_100)
    classes = argmax_one_hot(melody.chroma(wav, 44_100))[0].argmax(-1)
    assert classes[2] == 0 and classes[-3] == 2  # C then D


def test_silence_and_null(melody: MelodyConditioner) -> None:
    silent = torch.zeros(1, 1, SR)
    assert argmax_one_hot(melody.chroma(silent, SR)).sum() == 0
    assert argmax_one_hot(melody.chroma(silent, SR), silence="argmax")[..., 0].all()  # published: "C"
    null = melody.null(3, num_frames=5)
    assert null.embedding.shape == (3, 5, DIM) and not null.mask.any() and (null.embedding == 0).all()
    present = torch.tensor([True, False])
    out = melody(scale(C_MAJOR[:2])[None, None].expand(2, 1, -1), SR, present=present)
    assert out.mask[0].all() and not out.mask[1].any() and (out.embedding[1] == 0).all()


def test_projection_trains_and_is_the_whole_state(melody: MelodyConditioner) -> None:
    assert set(melody.state_dict()) == {"proj.weight", "proj.bias"}
    melody.zero_grad()
    melody(scale(C_MAJOR[:2])[None, None], SR).embedding.sum().backward()
    assert melody.proj.weight.grad is not None and melody.proj.weight.grad.abs().sum() > 0


def test_precomputed_chroma(melody: MelodyConditioner) -> None:
    chroma = torch.zeros(2, 10, 12)
    chroma[0, :, 4] = 1.0
    chroma[1, :, 7] = 0.5
    out = melody.embed_chroma(chroma, chroma_rate=50.0)
    assert out.embedding.shape == (2, round(10 * melody.chroma_rate / 50), DIM)
    torch.testing.assert_close(out.embedding[0, 0], melody.proj.weight[:, 4] + melody.proj.bias)
    with pytest.raises(ValueError, match=r"\[B, T, 12\]"):
        melody.embed_chroma(torch.zeros(2, 12, 10)[..., :5])


def test_pluggable_separator_runs_before_the_chroma() -> None:
    calls = []

    def keep_high_voice(wav: torch.Tensor, sample_rate: int) -> torch.Tensor:
        calls.append((tuple(wav.shape), sample_rate))
        return wav[..., :wav.shape[-1] // 2].repeat(1, 1, 2)  # stand-in "stem": the first note only

    cond = MelodyConditioner(DIM, separator=keep_high_voice)
    classes = argmax_one_hot(cond.chroma(scale([60, 67])[None, None], SR))[0].argmax(-1)
    assert calls == [((1, 1, 2 * SR), SR)] and (classes == 0).all()


def test_demucs_separator_is_clear_when_missing() -> None:
    """demucs is deliberately not a dependency: asking for it must say so."""
    try:
        import demucs  # noqa: F401
    except ImportError:
        with pytest.raises(ImportError, match="demucs"):
            demucs_separator()
        with pytest.raises(ImportError, match="demucs"):
            MelodyConditioner(DIM, separator="demucs")
    else:
        pytest.skip("demucs is installed here; the missing-package error cannot be checked")


def test_bad_melody_inputs(melody: MelodyConditioner) -> None:
    with pytest.raises(ValueError, match=r"\[B, C, L\]"):
        melody(torch.zeros(SR), SR)
    with pytest.raises(ValueError, match=r"\[B, C, L\]"):
        melody(torch.zeros(2, SR), SR)
    with pytest.raises(TypeError, match="floating point"):
        melody(torch.zeros(1, 1, SR, dtype=torch.long), SR)
    with pytest.raises(TypeError, match="torch.Tensor"):
        melody([0.0] * SR, SR)
    with pytest.raises(ValueError, match="channels"):
        melody(torch.zeros(1, SR, 2), SR)
    with pytest.raises(ValueError, match="empty"):
        melody(torch.zeros(1, 1, 0), SR)
    with pytest.raises(ValueError, match="NaN"):
        melody(torch.full((1, 1, SR), float("nan")), SR)
    with pytest.raises(ValueError, match="sample_rate"):
        melody(torch.zeros(1, 1, SR), 0)
    with pytest.raises(ValueError, match="silence"):
        MelodyConditioner(DIM, silence="C")
