"""MS-STFT discriminator shapes, and one full codec GAN step (generator via the balancer, then discriminator)."""

from __future__ import annotations

import pytest
import torch

from mgen.codec import (
    Codec,
    CodecConfig,
    LossBalancer,
    MultiScaleMelLoss,
    MultiScaleSTFTDiscriminator,
    feature_matching_loss,
    hinge_discriminator_loss,
    hinge_generator_loss,
    l1_waveform_loss,
)


pytestmark = pytest.mark.usefixtures("single_thread")


def test_msstftd_shapes():
    torch.manual_seed(0)
    disc = MultiScaleSTFTDiscriminator(filters=8)
    length = 8192
    logits, fmaps = disc(0.1 * torch.randn(2, 1, length))
    assert len(logits) == len(fmaps) == 5
    for sub, logit, fmap, n_fft in zip(disc.discriminators, logits, fmaps, (1024, 2048, 512, 256, 128)):
        assert sub.hop_length == n_fft // 4 and sub.win_length == n_fft
        frames = (length - n_fft) // (n_fft // 4) + 1
        freqs = n_fft // 2 + 1
        for _ in range(3):  # three (1, 2)-strided convs over frequency
            freqs = (freqs - 1) // 2 + 1
        assert logit.shape == (2, 1, frames, freqs)
        assert len(fmap) == 5  # first conv, 3 dilated strided convs, last conv
        assert fmap[0].shape == (2, 8, frames, n_fft // 2 + 1)
        assert all(f.shape[1] == 8 for f in fmap)
    # the published size: 32 filters, weight norm everywhere
    full = MultiScaleSTFTDiscriminator()
    first = full.discriminators[0].convs[0]
    assert first.weight.shape == (32, 2, 3, 9) and hasattr(first, "parametrizations")
    assert full.discriminators[0].activation.negative_slope == 0.3
    with pytest.raises(ValueError, match="shorter than the STFT window"):
        disc(torch.randn(1, 1, 1000))


def test_one_gan_step_updates_generator_and_discriminator():
    torch.manual_seed(0)
    codec = Codec(CodecConfig.preset("tiny", quantizer={"kmeans_iters": 2})).train()
    disc = MultiScaleSTFTDiscriminator(filters=4, n_ffts=(512, 256, 128))
    mel = MultiScaleMelLoss(codec.sample_rate)
    balancer = LossBalancer({"l1": 0.1, "msspec": 2.0, "adv": 4.0, "feat": 4.0})
    opt_g = torch.optim.Adam(codec.parameters(), lr=3e-4, betas=(0.5, 0.9))
    opt_d = torch.optim.Adam(disc.parameters(), lr=3e-4, betas=(0.5, 0.9))
    wav = 0.1 * torch.randn(2, 1, 6400)

    # discriminator step on a detached reconstruction
    out = codec(wav)
    logits_real, _ = disc(wav)
    logits_fake, _ = disc(out.audio.detach())
    d_loss = hinge_discriminator_loss(logits_real, logits_fake)
    opt_d.zero_grad()
    d_loss.backward()
    assert all(p.grad is not None for p in disc.parameters())
    opt_d.step()

    # generator step: balanced losses through the reconstruction, commitment penalty on its own
    opt_g.zero_grad()
    out = codec(wav)
    logits_fake, fmaps_fake = disc(out.audio)
    with torch.no_grad():
        _, fmaps_real = disc(wav)
    losses = {
        "l1": l1_waveform_loss(out.audio, wav),
        "msspec": mel(out.audio, wav),
        "adv": hinge_generator_loss(logits_fake),
        "feat": feature_matching_loss(fmaps_real, fmaps_fake),
    }
    out.penalty.backward(retain_graph=True)  # shares the encoder graph with the balanced losses
    effective = balancer.backward(losses, out.audio)
    assert set(effective) == set(losses) and all(torch.isfinite(v) for v in effective.values())
    grads = [p.grad for p in codec.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    before = codec.decoder.layers[0].conv.parametrizations.weight.original1.detach().clone()
    opt_g.step()
    assert not torch.equal(before, codec.decoder.layers[0].conv.parametrizations.weight.original1)


def test_discriminator_stft_is_fp32_for_bf16_input_and_under_autocast(stft_calls):
    """CUDA has no bf16 FFT: the STFT runs in float32 with autocast off; the convolutions after it follow autocast."""
    torch.manual_seed(0)
    disc = MultiScaleSTFTDiscriminator(filters=4, n_ffts=(512, 256))
    wav = 0.1 * torch.randn(2, 1, 4096)
    rounded = wav.to(torch.bfloat16)
    logits, fmaps = disc(rounded)  # fp32 weights, no autocast: bf16 audio is transformed and judged in fp32
    expected, _ = disc(rounded.float())
    for a, b in zip(logits, expected):
        assert a.dtype == torch.float32
        torch.testing.assert_close(a, b)
    reference, _ = disc(wav)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        mixed, _ = disc(wav)
    for a, b in zip(mixed, reference):
        assert torch.isfinite(a).all()
        torch.testing.assert_close(a.float(), b, rtol=0.05, atol=0.05 * float(b.detach().abs().max()))
    assert stft_calls and all(c == (torch.float32, torch.float32, False) for c in stft_calls)
