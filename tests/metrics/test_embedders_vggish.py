"""VGGish against torchvggish 0.2 (loaded by path) and Google's FAD protocol, with random weights."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from embedder_references import mel_features, torchvggish

from mgen.dsp import mel_filterbank_audioset
from mgen.metrics.embedders import embed_audio
from mgen.metrics.embedders.base import EmbedderInfo
from mgen.metrics.embedders.random_weights import random_state_dict
from mgen.metrics.embedders.vggish import (
    VGGish,
    VGGishNet,
    audiocraft_pcm16,
    google_peak_normalize,
    log_mel_spectrogram,
    num_windows,
    window_examples,
)

pytestmark = pytest.mark.usefixtures("single_thread")


def reference_log_mel(x: np.ndarray) -> np.ndarray:
    """torchvggish's (= TF models') frontend with VGGish's parameters."""
    return mel_features().log_mel_spectrogram(x, audio_sample_rate=16000, log_offset=0.01, window_length_secs=0.025,
                                              hop_length_secs=0.010, num_mel_bins=64, lower_edge_hertz=125,
                                              upper_edge_hertz=7500)


def reference_examples(x: np.ndarray) -> np.ndarray:
    """Google's AudioSetModel.extract_features (step 8000, normalize=False): a 96x64 example per 1 s window."""
    examples = [mel_features().frame(reference_log_mel(x[i:i + 16000]), 96, 96)
                for i in range(0, x.shape[0] - 16000 + 1, 8000)]
    return np.concatenate(examples) if examples else np.zeros((0, 96, 64))


def reference_net(std: float = 0.05, seed: int = 0) -> torch.nn.Module:
    """torchvggish's network without PCA, random weights at a scale that keeps activations away from zero."""
    torch.manual_seed(seed)
    net = torchvggish()._vgg(postprocess=False).eval()
    with torch.no_grad():
        for p in net.parameters():
            p.normal_(0.0, std)
    return net


def pre_activation(net: torch.nn.Module, examples: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(fc2 output before torchvggish's final ReLU, the net's own output)."""
    seen = []
    handle = net.embeddings[4].register_forward_hook(lambda module, args, out: seen.append(out.clone()))
    with torch.no_grad():
        out = net(examples.unsqueeze(1))
    handle.remove()
    return seen[0], out


@pytest.fixture(scope="module")
def audio() -> np.ndarray:
    rng = np.random.default_rng(0)
    t = np.arange(int(2.3 * 16000)) / 16000
    return (0.5 * np.sin(2 * np.pi * 440 * t) + 0.2 * rng.standard_normal(t.shape)).astype(np.float64)


def test_frontend_matches_torchvggish_mel_features(audio):
    ours = mel_filterbank_audioset(16000, 512, 64, 125.0, 7500.0)
    reference = mel_features().spectrogram_to_mel_matrix(64, 257, 16000, 125.0, 7500.0)
    np.testing.assert_allclose(ours.numpy(), reference, rtol=0, atol=1e-12)
    ref = reference_log_mel(audio)
    ours64 = log_mel_spectrogram(torch.from_numpy(audio))
    ours32 = log_mel_spectrogram(torch.from_numpy(audio).float())
    assert ours64.dtype == torch.float64 and ours32.dtype == torch.float32
    assert ours64.shape == ref.shape == (1 + (audio.shape[0] - 400) // 160, 64)
    assert np.abs(ours64.numpy() - ref).max() <= 1e-10
    assert np.abs(ours32.numpy() - ref).max() <= 1e-4


@pytest.mark.parametrize("seconds", [0.0, 0.5, 0.999, 1.0, 1.4999, 1.5, 2.3, 3.0])
def test_windows_every_half_second_as_google(seconds):
    rng = np.random.default_rng(1)
    x = rng.uniform(-1, 1, round(seconds * 16000))
    expected = 0 if x.shape[0] < 16000 else 1 + (x.shape[0] - 16000) // 8000
    ours = window_examples(torch.from_numpy(x))
    ref = reference_examples(x)
    assert num_windows(x.shape[0]) == ours.shape[0] == ref.shape[0] == expected
    assert ours.shape[1:] == (96, 64)
    if expected:
        assert np.abs(ours.numpy() - ref).max() <= 1e-10


def test_peak_normalisation_divides_by_largest_positive_sample_floored_at_0_1():
    x = torch.tensor([0.3, -0.9, 0.1], dtype=torch.float64)
    assert torch.equal(google_peak_normalize(x), x / 0.3)        # not the absolute peak
    quiet = x * 0.1                                                # positive peak 0.03 < 0.1: at most +20 dB
    assert torch.allclose(google_peak_normalize(quiet), quiet / 0.1)
    assert torch.equal(google_peak_normalize(-x.abs()), -x.abs() / 0.1)


def test_audiocraft_pcm16_round_trip():
    """audio_write(strategy='peak'): peak to -1 dBFS, round(x * 2**15) int16 values, as scipy reads them back."""
    rng = np.random.default_rng(2)
    x = rng.uniform(-0.3, 0.2, 1000)
    pcm = audiocraft_pcm16(torch.from_numpy(x)).numpy()
    expected = np.round(x * (10 ** (-1 / 20) / np.abs(x).max()) * 32768)
    np.testing.assert_array_equal(pcm, expected)
    assert np.abs(pcm).max() == round(32768 * 10 ** (-1 / 20))
    assert np.all(pcm == np.round(pcm)) and np.abs(pcm).max() < 32768
    assert torch.equal(audiocraft_pcm16(torch.zeros(5, dtype=torch.float64)), torch.zeros(5, dtype=torch.float64))


@pytest.fixture(scope="module")
def nets():
    ref = reference_net()
    ours = VGGishNet().eval()
    ours.load_state_dict(ref.state_dict(), strict=True)
    return ref, ours


def test_network_matches_torchvggish_without_final_relu(nets, audio):
    ref, ours = nets
    examples = window_examples(torch.from_numpy(audio)).float()
    assert examples.shape[0] == 3
    expected, ref_out = pre_activation(ref, examples)
    with torch.no_grad():
        got = ours(examples)
    assert got.shape == (3, 128)
    assert (got - expected).abs().max() <= 1e-5
    assert (got < 0).any(), "the random net must give negative pre-activations, or the ReLU test proves nothing"
    assert torch.allclose(ref_out, got.clamp(min=0), atol=1e-5, rtol=0)  # torchvggish = ours + the final ReLU


def test_embed_equals_google_protocol_on_torchvggish(nets, audio):
    """Whole pipeline: Google's peak normalisation and windows, the reference frontend and network (no ReLU)."""
    ref, ours = nets
    info = EmbedderInfo(id="vggish", sample_rate=16000, dim=128, protocol="google-fad-v1")
    embedder = VGGish(ours, info, batch_size=2)  # batches of 2: the chunking is exercised too
    x = 0.7 * audio
    normalised = x / max(0.1, x.max())
    expected, _ = pre_activation(ref, torch.from_numpy(reference_examples(normalised)).float())
    got = embedder.embed(torch.from_numpy(x))
    assert got.dtype == torch.float32 and got.shape == (3, 128)
    assert (got - expected).abs().max() <= 1e-6 * expected.abs().max()  # outputs are ~100 with std-0.05 weights

    # Under one second there is no window: an empty [0, 128], which the metrics report by name.
    assert embedder.embed(torch.zeros(15999)).shape == (0, 128)
    assert embedder.min_samples == 16000
    # Stereo 32 kHz input goes through embed_audio's channel mean and resampling: 2.3 s -> 3 windows.
    stereo = torch.from_numpy(np.stack([x, x])).float()
    stereo32k = torch.nn.functional.interpolate(stereo[None], scale_factor=2, mode="linear")[0]
    assert embed_audio(embedder, stereo32k, 32000).shape == (3, 128)
    with pytest.raises(ValueError, match="NaN"):
        embedder.embed(torch.full((16000,), float("nan")))


def test_audiocraft_normalization_is_google_after_pcm16(nets, audio):
    _, ours = nets
    info = EmbedderInfo(id="vggish", sample_rate=16000, dim=128, protocol="x")
    google = VGGish(ours, info, normalization="google")
    audiocraft = VGGish(ours, info, normalization="audiocraft")
    x = torch.from_numpy(0.05 * audio).float()  # quiet: Google's floor applies to floats, not to int16 values
    pcm = audiocraft_pcm16(x.double())
    expected = google.embed(pcm / pcm.max())
    got = audiocraft.embed(x)
    assert (got - expected).abs().max() <= 1e-6 * expected.abs().max()
    # Google's floor kept the quiet float audio quieter (peak 0.5 after /0.1), the int16 path normalised it to 1.
    assert (got - google.embed(x)).abs().max() > 0.01 * expected.abs().max()
    with pytest.raises(ValueError, match="normalization"):
        VGGish(ours, info, normalization="loudness")


def test_random_weights_run_in_bfloat16():
    with torch.device("meta"):
        net = VGGishNet()
    net.load_state_dict(random_state_dict("vggish", seed=3), assign=True)
    info = EmbedderInfo(id="vggish", sample_rate=16000, dim=128, protocol="google-fad-v1")
    embedder = VGGish(net.eval(), info)
    x = torch.sin(torch.arange(24000) * 0.05)
    full = embedder.embed(x)
    half = embedder.to(torch.bfloat16).embed(x)
    assert half.dtype == torch.float32 and half.shape == full.shape == (2, 128)
    assert full.std() > 0.1  # random weights that do not vanish
    assert (half - full).abs().max() <= 0.1 * full.abs().max()
