"""VGGish with Google's FAD protocol, in plain torch: the embedder of the paper's FAD.

Protocol (google-research ``frechet_audio_distance``, the code audiocraft runs in a TensorFlow subprocess):
- 16 kHz mono; peak normalisation ``x / max(0.1, max(x))`` (the largest *positive* sample, as Google's
  ``extract_features`` does);
- 1 s windows every 0.5 s (``--model_step_size 8000``), the tail dropped: audio under 1 s gives no frame;
- per window the 96x64 log-mel example: periodic Hann 400, hop 160, |rfft 512|, 64 HTK mel bands 125-7500 Hz
  (DC row zeroed, unnormalised), ``log(mel + 0.01)``, the first 96 of the window's 98 frames;
- embedding = fc2 **pre-activation** (TF ``vggish/embedding`` has ``activation_fn=None``): no final ReLU, no PCA.

``normalization="audiocraft"`` reproduces what audiocraft feeds Google's code instead: its ``audio_write``
peak-normalises to -1 dBFS and writes 16-bit PCM (``round(x * 2**15)``), Google's reader keeps the raw int16
values, and the peak normalisation above then divides by the largest positive one. Numbers differ from the float
path only by that quantisation (and for audio whose positive peak is under 0.1, where Google's floor applies).

Weights: torchvggish's state dict (``features.*``, ``embeddings.*``; ``pproc.*`` PCA entries are ignored), loaded
strictly. Known remaining gaps to TF FAD: mgen resamples with libsoxr where audiocraft uses julius, and the TF
graph computes in float32 where this frontend uses float64.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor, nn

from mgen.checksum import file_sha256
from mgen.dsp import mel_filterbank_audioset
from mgen.metrics.embedders.base import AudioEmbedder, EmbedderInfo
from mgen.metrics.embedders.weights import (
    check_state_dict,
    load_state_dict_file,
    resolve_weights,
    weights_label,
)

WEIGHTS_FILE = "vggish-10086976.pth"
WEIGHTS_URL = "https://github.com/harritaylor/torchvggish/releases/download/v0.1/vggish-10086976.pth"
# torch.hub's naming convention: the digits after the last "-" are the first hex digits of the file's sha256.
PUBLISHED_SHA256_PREFIX = "10086976"

SAMPLE_RATE = 16000
WINDOW_SAMPLES = 16000       # 1 s per embedding
HOP_SAMPLES = 8000           # Google's default step: one embedding every 0.5 s
STFT_WINDOW = 400            # 25 ms
STFT_HOP = 160               # 10 ms
FFT_SIZE = 512
MEL_BANDS = 64
MEL_LOW_HZ = 125.0
MEL_HIGH_HZ = 7500.0
LOG_OFFSET = 0.01
EXAMPLE_FRAMES = 96          # 0.96 s of log-mel frames per example
EMBEDDING_DIM = 128
PEAK_FLOOR = 0.1             # Google's min_ratio: at most +20 dB of gain
NORMALIZATIONS = ("google", "audiocraft")


# ---- frontend (dtype-generic: float64 reproduces Google's numpy frontend) ------------------------------------

def log_mel_spectrogram(wav: Tensor) -> Tensor:
    """Audio ``[..., L]`` at 16 kHz -> ``[..., frames, 64]`` log-mel, computed in ``wav``'s dtype; no padding, so
    ``frames = 1 + (L - 400) // 160``."""
    frames = wav.unfold(-1, STFT_WINDOW, STFT_HOP)
    window = torch.hann_window(STFT_WINDOW, periodic=True, dtype=wav.dtype, device=wav.device)
    magnitude = torch.fft.rfft(frames * window, n=FFT_SIZE).abs()
    mel = mel_filterbank_audioset(SAMPLE_RATE, FFT_SIZE, MEL_BANDS, MEL_LOW_HZ, MEL_HIGH_HZ, wav.dtype, wav.device)
    return torch.log(magnitude @ mel + LOG_OFFSET)


def num_windows(num_samples: int) -> int:
    """Embeddings Google's protocol makes from `num_samples` at 16 kHz (0 under one second)."""
    return 0 if num_samples < WINDOW_SAMPLES else 1 + (num_samples - WINDOW_SAMPLES) // HOP_SAMPLES


def window_examples(wav: Tensor) -> Tensor:
    """Mono audio ``[L]`` -> ``[windows, 96, 64]``: one log-mel example per 1 s window, windows every 0.5 s."""
    if wav.shape[-1] < WINDOW_SAMPLES:
        return wav.new_zeros(0, EXAMPLE_FRAMES, MEL_BANDS)
    return examples_of(wav.unfold(-1, WINDOW_SAMPLES, HOP_SAMPLES))


def examples_of(windows: Tensor) -> Tensor:
    """1 s windows ``[W, 16000]`` -> ``[W, 96, 64]``: 98 log-mel frames each, of which the first 96 make the
    example (Google frames them with ``frame(log_mel, 96, 96)``)."""
    return log_mel_spectrogram(windows)[:, :EXAMPLE_FRAMES]


def google_peak_normalize(wav: Tensor) -> Tensor:
    """Google's ``extract_features(normalize=True)``: divide by the largest positive sample, floored at 0.1."""
    return wav / wav.max().clamp(min=PEAK_FLOOR)


def audiocraft_pcm16(wav: Tensor) -> Tensor:
    """The int16 values (as floats) of audiocraft's ``audio_write(strategy="peak")`` WAV: peak to -1 dBFS, then
    ``round(x * 2**15)`` (``2**15 - 1`` when that would clip). Silence stays zeros (audiocraft divides by zero)."""
    peak = wav.abs().max()
    if peak > 0:
        wav = wav * (10 ** (-1 / 20) / peak)
    pcm = torch.round(wav * 2 ** 15)
    if pcm.max() >= 2 ** 15:
        pcm = torch.round(wav * (2 ** 15 - 1))
    return pcm


# ---- network --------------------------------------------------------------------------------------------------

class VGGishNet(nn.Module):
    """VGGish in torchvggish's state-dict layout; ``forward`` returns the fc2 pre-activation (no final ReLU)."""

    def __init__(self) -> None:
        super().__init__()

        def conv(cin: int, cout: int) -> list[nn.Module]:
            return [nn.Conv2d(cin, cout, kernel_size=3, padding=1), nn.ReLU()]

        def pool() -> nn.Module:
            return nn.MaxPool2d(kernel_size=2, stride=2)

        # Indices (features.0, .3, .6, .8, .11, .13) are the published file's keys.
        self.features = nn.Sequential(*conv(1, 64), pool(), *conv(64, 128), pool(), *conv(128, 256),
                                      *conv(256, 256), pool(), *conv(256, 512), *conv(512, 512), pool())
        self.embeddings = nn.Sequential(nn.Linear(512 * 6 * 4, 4096), nn.ReLU(), nn.Linear(4096, 4096), nn.ReLU(),
                                        nn.Linear(4096, EMBEDDING_DIM))

    def forward(self, examples: Tensor) -> Tensor:
        """Log-mel examples ``[N, 96, 64]`` -> embeddings ``[N, 128]``."""
        x = self.features(examples.unsqueeze(1))           # [N, 512, 6, 4]
        x = x.permute(0, 2, 3, 1).flatten(1)               # TF's NHWC flatten order
        return self.embeddings(x)


class VGGish(AudioEmbedder):
    """Google-FAD VGGish embedder: mono 16 kHz ``[L]`` -> ``[num_windows(L), 128]``."""

    min_samples = WINDOW_SAMPLES

    def __init__(self, net: VGGishNet, info: EmbedderInfo, normalization: str = "google", batch_size: int = 64):
        super().__init__()
        if normalization not in NORMALIZATIONS:
            raise ValueError(f"VGGish normalization must be one of {NORMALIZATIONS}, got {normalization!r}")
        self.net = net.eval()
        self.info = info
        self.normalization = normalization
        self.batch_size = batch_size

    @torch.no_grad()
    def embed(self, wav: Tensor) -> Tensor:
        if wav.dim() != 1:
            raise ValueError(f"VGGish embeds mono audio [L], got shape {tuple(wav.shape)}")
        weight = self.net.embeddings[0].weight
        if wav.shape[0] < WINDOW_SAMPLES:
            return torch.zeros(0, EMBEDDING_DIM, device=weight.device)
        wav = wav.to(device=weight.device, dtype=torch.float64)
        if not bool(torch.isfinite(wav).all()):
            raise ValueError("audio contains NaN or infinite samples")
        if self.normalization == "audiocraft":
            wav = audiocraft_pcm16(wav)
        windows = google_peak_normalize(wav).unfold(-1, WINDOW_SAMPLES, HOP_SAMPLES)
        # The frontend runs per batch too: a whole song's float64 spectra at once would take gigabytes.
        out = [self.net(examples_of(chunk).to(weight.dtype)) for chunk in windows.split(self.batch_size)]
        return torch.cat(out).float()


def protocol_name(normalization: str) -> str:
    return "google-fad-v1" if normalization == "google" else "google-fad-v1+audiocraft-pcm16"


def load_vggish_state_dict(path: str | Path) -> dict[str, Tensor]:
    """torchvggish's weights from `path`, checked against `VGGishNet`'s layout (PCA entries dropped)."""
    state = {k: v for k, v in load_state_dict_file(path, "VGGish").items() if not k.startswith("pproc.")}
    with torch.device("meta"):
        layout = VGGishNet().state_dict()
    check_state_dict(state, layout, path, "torchvggish VGGish")
    return state


def load_vggish(weights: str | Path | None = None, normalization: str = "google", batch_size: int = 64) -> VGGish:
    """The VGGish embedder from `weights` (default: ``vggish-10086976.pth`` in the torch hub cache)."""
    path = resolve_weights(weights, WEIGHTS_FILE, WEIGHTS_URL, "VGGish")
    state = load_vggish_state_dict(path)
    with torch.device("meta"):  # no random init of 72M parameters that are overwritten at once
        net = VGGishNet()
    net.load_state_dict(state, strict=True, assign=True)
    sha = file_sha256(path)
    info = EmbedderInfo(id="vggish", sample_rate=SAMPLE_RATE, dim=EMBEDDING_DIM,
                        protocol=protocol_name(normalization), weights=str(path), weights_sha256=sha,
                        weights_label=weights_label(path, sha, PUBLISHED_SHA256_PREFIX))
    return VGGish(net, info, normalization=normalization, batch_size=batch_size)

