"""PaSST against hear21passt 0.0.26 (loaded by path, timm and torchaudio stubbed), with random weights."""

from __future__ import annotations

import contextlib
import io
import warnings
from pathlib import Path

import pytest
import torch

from embedder_references import passt, passt_preprocess

from mgen.dsp import mel_filterbank_kaldi
from mgen.metrics.embedders import load_embedder, write_random_weights
from mgen.metrics.embedders.base import EmbedderInfo
from mgen.metrics.embedders.passt import (
    MIN_SAMPLES,
    PaSST,
    PasstMel,
    PasstNet,
    num_mel_frames,
    variant_seconds,
)
from mgen.metrics.embedders.random_weights import random_state_dict

pytestmark = pytest.mark.usefixtures("single_thread")

ARCH = {10: ("passt_s_swa_p16_128_ap476", 998), 20: ("passt_20sec", 2000)}


def reference_mel() -> torch.nn.Module:
    """hear21passt's get_basic_model frontend, in eval mode (fmin 0, fmax 15000, no masks)."""
    with contextlib.redirect_stdout(io.StringIO()):  # it prints the fmax it picks
        mel = passt_preprocess().AugmentMelSTFT(n_mels=128, sr=32000, win_length=800, hopsize=320, n_fft=1024,
                                                freqm=48, timem=192, htk=False, fmin=0.0, fmax=None, norm=1,
                                                fmin_aug_range=10, fmax_aug_range=2000)
    return mel.eval()


def reference_net(seconds: int, state: dict[str, torch.Tensor]) -> torch.nn.Module:
    arch, tdim = ARCH[seconds]
    with contextlib.redirect_stdout(io.StringIO()):  # it prints the whole model
        net = passt().get_model(arch=arch, pretrained=False, input_tdim=tdim)
    net.load_state_dict(state, strict=True)  # the random-weights writer's layout is hear21passt's
    return net.eval()


def test_mel_matches_hear21passt_eval_frontend():
    torch.manual_seed(0)
    wav = 0.3 * torch.randn(2, 320000)
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # return_complex=False is deprecated in torch
        expected = reference_mel()(wav)
    got = PasstMel()(wav)
    assert got.shape == expected.shape == (2, 128, 1000) and num_mel_frames(320000) == 1000
    assert (got - expected).abs().max() <= 1e-5
    kaldi = passt_preprocess().torchaudio.compliance.kaldi
    banks, _ = kaldi.get_mel_banks(128, 1024, 32000, 0.0, 15000.0, 100.0, -500.0, 1.0)
    ours = mel_filterbank_kaldi(128, 1024, 32000, 0.0, 15000.0)
    assert (ours[:, :512] - banks).abs().max() <= 1e-6 and not ours[:, 512].any()


@pytest.fixture(scope="module")
def passt10_weights(tmp_path_factory) -> Path:
    return write_random_weights("passt-10s", tmp_path_factory.mktemp("passt") / "passt10.pt", seed=10)


def reference_forward(net: torch.nn.Module, wav: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        return net(reference_mel()(wav).unsqueeze(1))


def test_10s_network_and_frontend_match_hear21passt(passt10_weights):
    """Same random weights (written in the published layout, loaded strictly by both): same logits/features."""
    ours = load_embedder("passt", passt10_weights)
    assert ours.window_seconds == 10 and ours.info.id == "passt-10s"
    assert ours.info.weights_label == "random-weights"
    ref = reference_net(10, torch.load(passt10_weights, weights_only=True))
    torch.manual_seed(1)
    wav = 0.3 * torch.randn(2, 32000)  # 1 s: cheap, and shorter than the window (time positions cropped)
    ref_logits, ref_features = reference_forward(ref, wav)
    logits, features = ours.features(wav)
    assert logits.shape == (2, 527) and features.shape == (2, 768)
    assert (logits - ref_logits).abs().max() <= 1e-4
    assert (features - ref_features).abs().max() <= 1e-4
    assert logits.std() > 0.1 and (logits[0] - logits[1]).abs().max() > 0.01  # random weights that do not collapse
    assert torch.allclose(ours.logits(wav[1:]), logits[1:], atol=1e-5)
    # embed: one 768-d feature per window; the 1 s clip is a single (short) window.
    assert torch.allclose(ours.embed(wav[0]), features[:1], atol=1e-5)


def test_20s_network_matches_hear21passt():
    """The 20 s model (input_tdim=2000): 200 time positions, cropped for shorter input."""
    state = random_state_dict("passt-20s", seed=20)
    ref = reference_net(20, state)
    with torch.device("meta"):
        ours = PasstNet(200)
    ours.load_state_dict(state, strict=True, assign=True)
    torch.manual_seed(2)
    mel = PasstMel()(0.3 * torch.randn(1, 40000))
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "Input image size (128*125) doesn't match model (128*2000)"
        ref_logits, ref_features = ref(mel.unsqueeze(1))
        logits, features = ours.eval()(mel)
    assert variant_seconds(state) == 20
    assert (logits - ref_logits).abs().max() <= 1e-4 and (features - ref_features).abs().max() <= 1e-4


def small_passt(time_positions: int) -> PaSST:
    """A one-block PaSST: the window checks do not depend on depth, and it runs in milliseconds."""
    torch.manual_seed(0)
    info = EmbedderInfo(id=f"passt-{VARIANT_OF[time_positions]}s", sample_rate=32000, dim=768, protocol="p")
    return PaSST(PasstNet(time_positions, depth=1), info)


VARIANT_OF = {99: 10, 200: 20}


def test_window_limits_are_clear_errors():
    model = small_passt(99)
    assert model.window_seconds == 10 and model.min_samples == MIN_SAMPLES == 4801
    with pytest.raises(ValueError, match=r"at most 10 s \(320000 samples"):
        model.logits(torch.zeros(1, 320001))
    with pytest.raises(ValueError, match="more than 0.15 s"):
        model.logits(torch.zeros(1, 4800))
    with pytest.raises(ValueError, match=r"\[B, L\]"):
        model.logits(torch.zeros(320))
    with pytest.raises(ValueError, match="NaN"):
        model.logits(torch.full((1, 6000), float("nan")))
    assert model.logits(torch.zeros(1, MIN_SAMPLES)).shape == (1, 527)  # the shortest window: one patch
    # A full 10 s window is the longest input: 1000 frames -> 99 time patches, all the positions there are.
    assert model.logits(torch.zeros(1, 320000)).shape == (1, 527)
    with pytest.raises(ValueError, match="100 time patches"):
        model.net(torch.zeros(1, 128, 1010))


def test_segments_follow_audiocraft_split():
    model = small_passt(200)
    lengths = [p.shape[-1] for p in model.segments(torch.zeros(45 * 32000))]
    assert lengths == [640000, 640000, 160000]                      # torch.split, no padding
    assert [p.shape[-1] for p in model.segments(torch.zeros(640000 + 4800))] == [640000]  # <= 0.15 s dropped
    assert [p.shape[-1] for p in model.segments(torch.zeros(640000 + 4801))] == [640000, 4801]
    assert model.segments(torch.zeros(4800)) == []
    assert model.embed(torch.zeros(4800)).shape == (0, 768)
    hop = PaSST(model.net, model.info, hop_seconds=5.0)  # windows every 5 s until one reaches the end
    assert [p.shape[-1] for p in hop.segments(torch.zeros(27 * 32000))] == [640000, 640000, 544000]
    assert model.embed(torch.zeros(25 * 32000)).shape == (2, 768)  # a full window (batched) and the 5 s tail


def test_variant_is_read_from_the_weights(passt10_weights, tmp_path):
    assert variant_seconds({"time_new_pos_embed": torch.zeros(1, 768, 1, 300)}) == 30
    with pytest.raises(ValueError, match="150 time positions"):
        variant_seconds({"time_new_pos_embed": torch.zeros(1, 768, 1, 150)})
    path = passt10_weights
    with pytest.raises(ValueError, match="holds the PaSST-10s model, but PaSST-20s was asked for"):
        load_embedder("passt-20s", path)
    # The state dict of hear21passt's wrapper (net.* keys, no mel parameters) loads too.
    state = torch.load(path, weights_only=True)
    torch.save({"net." + k: v for k, v in state.items()} | {"device_proxy": torch.zeros(1)}, tmp_path / "wrap.pt")
    assert load_embedder("passt-10s", tmp_path / "wrap.pt").info.weights_label == "unverified"
