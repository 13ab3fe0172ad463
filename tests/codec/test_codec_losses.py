"""Codec losses: mel filterbank and multi-scale mel loss, hinge GAN losses, feature matching, SI-SNR, balancer."""

from __future__ import annotations

import math

import pytest
import torch

from mgen.codec.losses import (
    LossBalancer,
    MelSpectrogram,
    MultiScaleMelLoss,
    feature_matching_loss,
    hinge_discriminator_loss,
    hinge_generator_loss,
    l1_waveform_loss,
    si_snr,
)
from mgen.dsp import hz_to_mel_htk, mel_filterbank_htk, mel_to_hz_htk

SR = 32000


pytestmark = pytest.mark.usefixtures("single_thread")


def test_mel_filterbank_shape_and_peaks():
    fb = mel_filterbank_htk(SR, 1024, 64, f_min=64.0)
    assert fb.shape == (513, 64)
    assert fb.min() >= 0 and fb.max() <= 1
    assert (fb.sum(0) > 0).all()  # with 513 bins every filter covers some bin
    # filter m peaks next to its centre frequency, and centres increase
    centres = mel_to_hz_htk(torch.linspace(float(hz_to_mel_htk(64.0)), float(hz_to_mel_htk(SR / 2)), 66))[1:-1]
    peak_hz = fb.argmax(0).double() * SR / 1024
    assert torch.all((peak_hz - centres).abs() <= SR / 1024)
    assert torch.all(torch.diff(fb.argmax(0)) >= 0)
    assert float(mel_to_hz_htk(hz_to_mel_htk(1000.0))) == pytest.approx(1000.0)


def test_mel_spectrogram_finds_a_sine():
    t = torch.arange(SR) / SR
    wav = torch.sin(2 * math.pi * 2000 * t)[None, None]
    mel = MelSpectrogram(SR, 1024, 256, n_mels=64, f_min=64.0)(wav)
    assert mel.shape[:3] == (1, 1, 64)
    fb = mel_filterbank_htk(SR, 1024, 64, f_min=64.0)
    expected_band = fb[round(2000 * 1024 / SR)].argmax()
    assert mel[0, 0].mean(-1).argmax() == expected_band


def test_multiscale_mel_loss_zero_for_identical_and_positive_otherwise():
    torch.manual_seed(0)
    loss = MultiScaleMelLoss(SR)
    x = 0.1 * torch.randn(2, 1, 4000)
    assert loss(x, x).item() == 0.0
    y = x + 0.01 * torch.randn_like(x)
    assert loss(y, x).item() > 0
    assert loss(0.5 * x, x).item() > loss(0.9 * x, x).item()
    y.requires_grad_(True)
    loss(y, x).backward()
    assert torch.isfinite(y.grad).all() and y.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="shape"):
        loss(x[..., :3000], x)


def test_l1_waveform_loss():
    x = torch.zeros(1, 1, 10)
    assert l1_waveform_loss(x + 0.5, x).item() == pytest.approx(0.5)


def test_hinge_losses_signs():
    real_good = [torch.full((2, 1, 3, 4), 2.0), torch.full((2, 1, 5), 1.5)]
    fake_good = [torch.full((2, 1, 3, 4), -2.0), torch.full((2, 1, 5), -1.0)]
    # a discriminator that separates beyond the margins has zero loss …
    assert hinge_discriminator_loss(real_good, fake_good).item() == 0.0
    # … and a confused one (real < 1, fake > -1) pays for it
    confused = [torch.zeros(2, 1, 3, 4), torch.zeros(2, 1, 5)]
    assert hinge_discriminator_loss(confused, confused).item() == pytest.approx(2.0)
    # generator: lower when fakes score higher
    assert hinge_generator_loss(fake_good).item() > 0
    assert hinge_generator_loss(real_good).item() < 0
    assert hinge_generator_loss([torch.full((1, 4), 3.0)]).item() == pytest.approx(-3.0)


def test_feature_matching_loss():
    real = [[torch.ones(2, 4, 3), torch.zeros(2, 8)], [torch.ones(2, 5)]]
    assert feature_matching_loss(real, real).item() == 0.0
    fake = [[torch.zeros(2, 4, 3, requires_grad=True), torch.zeros(2, 8, requires_grad=True)],
            [torch.full((2, 5), 3.0, requires_grad=True)]]
    value = feature_matching_loss(real, fake)
    # disc 0: mean(1, 0) = 0.5; disc 1: 2 → mean over sub-discriminators = 1.25
    assert value.item() == pytest.approx(1.25)
    value.backward()
    assert fake[0][0].grad is not None


def test_si_snr():
    torch.manual_seed(0)
    ref = torch.randn(3, 1, 8000)
    assert (si_snr(ref, ref) > 60).all()
    noise = torch.randn(3, 1, 8000)
    noise = noise - noise.mean(-1, keepdim=True)
    ref0 = ref - ref.mean(-1, keepdim=True)
    # noise orthogonal to the reference with 10 dB less energy
    noise = noise - (noise * ref0).sum(-1, keepdim=True) / ref0.pow(2).sum(-1, keepdim=True) * ref0
    noise = noise * (ref0.pow(2).sum(-1, keepdim=True) / noise.pow(2).sum(-1, keepdim=True) / 10).sqrt()
    assert torch.allclose(si_snr(ref + noise, ref), torch.full((3, 1), 10.0), atol=1e-3)
    assert torch.allclose(si_snr(0.3 * (ref + noise), ref), si_snr(ref + noise, ref), atol=1e-3)  # scale-invariant


def _two_losses(y):
    # Output gradients with wildly different scales: 1e3 * 2y/N and 1e-3 * cos(y)
    return {"big": 1e3 * y.pow(2).mean(), "small": 1e-3 * torch.sin(y).sum()}


def _output_grads(y):
    grads = {}
    for name, loss in _two_losses(y).items():
        (grads[name],) = torch.autograd.grad(loss, [y])
    return grads


def test_balancer_contributions_follow_weights():
    torch.manual_seed(0)
    y0 = torch.randn(1, 1, 256)
    balancer = LossBalancer({"big": 1.0, "small": 3.0}, total_norm=1.0)
    y = y0.clone().requires_grad_(True)
    out = y * 1.0  # the "model output", a non-leaf like a decoder output
    effective = balancer.backward(_two_losses(out), out)
    g = _output_grads(y0.clone().requires_grad_(True))
    # y.grad = a·g_big + b·g_small; solve for (a, b) by least squares and check each contribution's norm
    basis = torch.stack([g["big"].flatten(), g["small"].flatten()], dim=1)
    coeffs = torch.linalg.lstsq(basis.double(), y.grad.flatten().double()[:, None]).solution.flatten()
    contrib_big = (coeffs[0] * g["big"].double()).norm().item()
    contrib_small = (coeffs[1] * g["small"].double()).norm().item()
    assert contrib_big == pytest.approx(0.25, rel=1e-4)
    assert contrib_small == pytest.approx(0.75, rel=1e-4)
    assert contrib_small / contrib_big == pytest.approx(3.0, rel=1e-4)
    # the raw gradients differ by orders of magnitude, so this is the balancer's doing
    assert g["big"].norm() / g["small"].norm() > 100
    assert set(effective) == {"big", "small"}
    assert set(balancer.last_grad_norms) == {"big", "small"}


def test_balancer_uses_ema_of_gradient_norms():
    balancer = LossBalancer({"big": 1.0, "small": 1.0}, ema_decay=0.5)
    norms = []
    for scale in (1.0, 4.0):
        y0 = scale * torch.linspace(-1, 1, 64)[None]
        y = y0.clone().requires_grad_(True)
        balancer.backward(_two_losses(y), y)
        g = _output_grads(y0.clone().requires_grad_(True))
        norms.append({k: v.norm().item() for k, v in g.items()})
        last_grad = y.grad
    # second step: averaged norm = (0.5·n1 + n2) / (0.5 + 1)
    avg_big = (0.5 * norms[0]["big"] + norms[1]["big"]) / 1.5
    avg_small = (0.5 * norms[0]["small"] + norms[1]["small"]) / 1.5
    expected = 0.5 * g["big"] / avg_big + 0.5 * g["small"] / avg_small
    assert torch.allclose(last_grad, expected, rtol=1e-4, atol=1e-9)
    state = balancer.state_dict()
    restored = LossBalancer({"big": 1.0, "small": 1.0}, ema_decay=0.5)
    restored.load_state_dict(state)
    assert restored.state_dict() == state


def test_balancer_off_is_weighted_sum():
    y0 = torch.linspace(-1, 1, 32)[None]
    balancer = LossBalancer({"big": 2.0, "small": 5.0}, balance=False)
    y = y0.clone().requires_grad_(True)
    effective = balancer.backward(_two_losses(y), y)
    g = _output_grads(y0.clone().requires_grad_(True))
    assert torch.allclose(y.grad, 2.0 * g["big"] + 5.0 * g["small"])
    assert effective["big"].item() == pytest.approx(2.0 * _two_losses(y0)["big"].item())


def test_balancer_rejects_unknown_losses():
    y = torch.randn(4, requires_grad=True)
    with pytest.raises(ValueError, match="no weight"):
        LossBalancer({"a": 1.0}).backward({"b": y.sum()}, y)


def test_mel_loss_runs_in_fp32_for_bf16_input_and_under_autocast(stft_calls):
    """bf16-mixed codec training: CUDA has no bf16 FFT, so the STFT (window included) and the mel are float32."""
    torch.manual_seed(0)
    loss = MultiScaleMelLoss(SR)
    x = 0.1 * torch.randn(2, 1, 4000)
    y = x + 0.01 * torch.randn_like(x)
    reference = loss(y, x)
    stft_calls.clear()
    y16 = y.to(torch.bfloat16).requires_grad_(True)
    of_bf16 = loss(y16, x.to(torch.bfloat16))
    assert of_bf16.dtype == torch.float32
    torch.testing.assert_close(of_bf16, loss(y.to(torch.bfloat16).float(), x.to(torch.bfloat16).float()))
    of_bf16.backward()
    assert y16.grad.dtype == torch.bfloat16 and torch.isfinite(y16.grad.float()).all()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        mixed = loss(y, x)
        mel = MelSpectrogram(SR, 1024, 256, n_mels=64, f_min=64.0, log=True)(y)
    assert mel.dtype == torch.float32 and torch.isfinite(mixed)
    torch.testing.assert_close(mixed, reference, rtol=1e-5, atol=1e-6)
    assert stft_calls and all(c == (torch.float32, torch.float32, False) for c in stft_calls)
