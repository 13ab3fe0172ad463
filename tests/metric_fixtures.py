"""Small real models for the metric tests (random weights, a few hundred parameters), and the reference
implementations fadtk / kadtk loaded by file path with stubs for their heavy imports (see reference_packages).

- `FrameEmbedder`: an `AudioEmbedder` (log-magnitude spectra of 400-sample windows every 200, projected).
- `ToyClassifier`: the clip classifier PasstKLD expects (`info`, `window_seconds`, `logits(wav [B, L])`).
- `ToyClap`: the CLAP model ClapScore expects (`info`, `audio_embeddings`, `text_embeddings`).
"""

from __future__ import annotations

import logging
import math
import warnings
import zlib
from types import ModuleType

import numpy as np
import torch
from torch import Tensor, nn

from mgen.metrics.embedders.base import RANDOM_WEIGHTS, AudioEmbedder, EmbedderInfo
from reference_packages import load_by_path, reference_file


def _spectral_features(frames: Tensor, bands: int) -> Tensor:
    """[..., window] -> [..., bands] log band energies (a fixed, cheap, pitch-sensitive feature)."""
    window = torch.hann_window(frames.shape[-1], dtype=frames.dtype, device=frames.device)
    power = torch.fft.rfft(frames * window).abs().square()
    edges = torch.linspace(0, power.shape[-1], bands + 1).long().tolist()
    pooled = torch.stack([power[..., a:max(b, a + 1)].mean(-1) for a, b in zip(edges[:-1], edges[1:])], -1)
    return torch.log(pooled + 1e-6)


class FrameEmbedder(AudioEmbedder):
    def __init__(self, dim: int = 8, sample_rate: int = 16_000, window: int = 400, hop: int = 200, seed: int = 0,
                 sha256: str = "0" * 64, embedder_id: str = "toy-frames", protocol: str = "toy-v1") -> None:
        super().__init__()
        self.window, self.hop = window, hop
        self.proj = nn.Linear(16, dim)
        generator = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            self.proj.weight.copy_(torch.randn(dim, 16, generator=generator) * 0.3)
            self.proj.bias.copy_(torch.randn(dim, generator=generator))
        self.info = EmbedderInfo(embedder_id, sample_rate, dim, protocol, weights="toy.pt", weights_sha256=sha256,
                                 weights_label=RANDOM_WEIGHTS)
        self.calls: list[int] = []

    def embed(self, wav: Tensor) -> Tensor:
        self.calls.append(wav.shape[-1])
        if wav.shape[-1] < self.window:
            return torch.zeros(0, self.info.dim)
        frames = wav.unfold(0, self.window, self.hop)
        return self.proj(_spectral_features(frames, 16))


class ToyClassifier(nn.Module):
    """527 logits from band energies averaged over 1024-sample frames; records the segment lengths it saw."""

    def __init__(self, window_seconds: float = 1.0, seed: int = 0) -> None:
        super().__init__()
        self.window_seconds = window_seconds
        self.head = nn.Linear(24, 527)
        generator = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            self.head.weight.copy_(torch.randn(527, 24, generator=generator) * 0.5)
            self.head.bias.zero_()
        self.info = EmbedderInfo("toy-passt", 32_000, 527, "toy-v1", weights="toy.pt", weights_sha256="1" * 64,
                                 weights_label=RANDOM_WEIGHTS)
        self.seen: list[tuple[int, ...]] = []

    def logits(self, wav: Tensor) -> Tensor:
        self.seen.append(tuple(wav.shape))
        frames = wav.unfold(-1, 1024, 512) if wav.shape[-1] >= 1024 else torch.nn.functional.pad(
            wav, (0, 1024 - wav.shape[-1]))[:, None]
        features = _spectral_features(frames, 24).mean(1)
        return self.head((features - features.mean(-1, keepdim=True)) / 4)  # centred: softmax not saturated


class ToyClap(nn.Module):
    """Unit-norm audio embeddings from band energies, text embeddings from hashed character trigrams."""

    def __init__(self, dim: int = 16, seed: int = 0,
                 weights: str = "/models/music_audioset_epoch_15_esc_90.14.pt",
                 sha256: str = "1a2b3c4d" + "e" * 56) -> None:
        super().__init__()
        generator = torch.Generator().manual_seed(seed)
        self.audio_proj = nn.Parameter(torch.randn(32, dim, generator=generator))
        self.text_table = nn.Parameter(torch.randn(257, dim, generator=generator))
        self.info = EmbedderInfo("clap-toy", 48_000, dim, "toy-v1", weights=weights, weights_sha256=sha256,
                                 weights_label=RANDOM_WEIGHTS)
        self.audio_shapes: list[tuple[int, ...]] = []

    def audio_embeddings(self, wav: Tensor) -> Tensor:
        self.audio_shapes.append(tuple(wav.shape))
        frames = wav.unfold(-1, 2048, 1024)
        emb = _spectral_features(frames, 32).mean(1) @ self.audio_proj
        return torch.nn.functional.normalize(emb, dim=-1)

    def text_embeddings(self, texts: list[str]) -> Tensor:
        rows = []
        for text in texts:
            ids = [zlib.crc32(text[i:i + 3].encode()) % 257 for i in range(max(1, len(text) - 2))]
            rows.append(self.text_table[ids].mean(0))
        return torch.nn.functional.normalize(torch.stack(rows), dim=-1)


def sine(freq: float, seconds: float, rate: int, amp: float = 0.3) -> Tensor:
    t = torch.arange(int(seconds * rate), dtype=torch.float64) / rate
    return (amp * torch.sin(2 * math.pi * freq * t)).float()


# ------------------------------------------------------------------------------------ reference implementations
def _module(name: str, **attrs: object) -> ModuleType:
    module = ModuleType(name)
    module.__dict__.update(attrs)
    return module


def _hypy_stubs() -> dict[str, ModuleType]:
    return {
        "hypy_utils": _module("hypy_utils", write=lambda *a, **k: None),
        "hypy_utils.tqdm_utils": _module("hypy_utils.tqdm_utils", tq=lambda it, *a, **k: it,
                                         tmap=lambda fn, it, *a, **k: list(map(fn, it)),
                                         pmap=lambda fn, it, *a, **k: list(map(fn, it))),
        "hypy_utils.logging_utils": _module("hypy_utils.logging_utils",
                                            setup_logger=lambda *a, **k: logging.getLogger("fadtk")),
        "hypy_utils.nlp_utils": _module("hypy_utils.nlp_utils", substr_between=lambda *a, **k: ""),
    }


_loaded: dict[str, ModuleType] = {}


def load_fadtk() -> ModuleType:
    """fadtk 1.1.0's ``fad.py`` (calc_frechet_distance, calc_embd_statistics, FrechetAudioDistance.score_inf)."""
    if "fadtk" not in _loaded:
        package = _module("_ref_fadtk", __path__=[])
        stubs = {**_hypy_stubs(), "torchaudio": _module("torchaudio"), "_ref_fadtk": package,
                 "_ref_fadtk.model_loader": _module("_ref_fadtk.model_loader", ModelLoader=object),
                 "_ref_fadtk.utils": _module("_ref_fadtk.utils", find_sox_formats=lambda *a: [], PathLike=object)}
        _loaded["fadtk"] = load_by_path("_ref_fadtk.fad", reference_file("fadtk", "fadtk/fad.py"), stubs)
    return _loaded["fadtk"]


def load_kadtk() -> ModuleType:
    """kadtk 1.1.0's ``kad.py`` (calc_kernel_audio_distance, median_pairwise_distance)."""
    if "kadtk" not in _loaded:
        stubs = {**_hypy_stubs(), "kadtk": _module("kadtk", __path__=[]),
                 "kadtk.emb_loader": _module("kadtk.emb_loader", EmbeddingLoader=object),
                 "kadtk.model_loader": _module("kadtk.model_loader", ModelLoader=object)}
        with warnings.catch_warnings():  # kad.py silences all warnings at import; keep that local
            _loaded["kadtk"] = load_by_path("_ref_kadtk_kad", reference_file("kadtk", "kadtk/kad.py"), stubs)
    return _loaded["kadtk"]


def fma_pop() -> dict[str, np.ndarray]:
    """fadtk's real float64 reference statistics (FMA pop) for several embedders: ``{'vggish.mu': ...}``."""
    with np.load(reference_file("fadtk", "fadtk/stats/fma_pop.npz")) as data:
        return {key: data[key] for key in data.files}
