"""The codec: SEANet encoder → residual VQ → SEANet decoder, with presets and input checks.

`Codec.encode(wav [B, C, L]) -> codes [B, K·C, T]` and `Codec.decode(codes) -> wav [B, C, T·hop]` are what the data
pipeline and the LM use; `Codec.forward` is the training pass. A stereo codec runs the *same mono model* on each
channel and interleaves the codebooks as ``[L0, R0, L1, R1, …]``: the order the published stereo MusicGen models
use, so the LM sees ``2·K`` codebooks and can use delays ``[0, 0, 1, 1, …]``.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field, fields

import torch
from torch import nn

from mgen.codec.quantizer import ResidualVectorQuantizer, RVQConfig
from mgen.codec.seanet import SEANetConfig, SEANetDecoder, SEANetEncoder
from mgen.codes import check_codes


def _paper_32khz() -> "CodecConfig":
    # audiocraft `encodec_large_nq4_s640`: the MusicGen tokenizer (32 kHz mono, 50 Hz, 4 x 2048 codes = 2.2 kbps).
    return CodecConfig(
        sample_rate=32000,
        channels=1,
        seanet=SEANetConfig(
            dimension=128, n_filters=64, ratios=(8, 5, 4, 4), lstm=2, causal=False, pad_mode="constant"
        ),
        quantizer=RVQConfig(n_q=4, card=2048),
    )


def _tiny() -> "CodecConfig":
    # Same structure and the same 50 Hz frame rate at 32 kHz, ~100x fewer FLOPs: trains on a CPU in minutes.
    return CodecConfig(
        sample_rate=32000,
        channels=1,
        seanet=SEANetConfig(dimension=32, n_filters=8, ratios=(8, 5, 4, 4), lstm=1, causal=False),
        quantizer=RVQConfig(n_q=4, card=256, kmeans_iters=10),
    )


PRESETS = {"paper-32khz": _paper_32khz, "tiny": _tiny}


@dataclass
class CodecConfig:
    """Everything needed to rebuild a `Codec`. ``channels`` is the audio channel count (1 or 2); the
    convolutional model itself is always mono (``seanet.channels == 1``)."""

    sample_rate: int = 32000
    channels: int = 1
    seanet: SEANetConfig = field(default_factory=SEANetConfig)
    quantizer: RVQConfig = field(default_factory=RVQConfig)

    def __post_init__(self) -> None:
        try:
            if isinstance(self.seanet, dict):
                self.seanet = SEANetConfig(**self.seanet)
            if isinstance(self.quantizer, dict):
                self.quantizer = RVQConfig(**self.quantizer)
        except TypeError as err:  # unknown keys in a recipe: report them as a config error
            raise ValueError(f"bad codec config: {err}") from err
        if self.channels not in (1, 2):
            raise ValueError(f"codec channels must be 1 (mono) or 2 (stereo), got {self.channels}")
        if self.seanet.channels != 1:
            raise ValueError("the codec's SEANet is mono (seanet.channels=1); stereo is set with CodecConfig.channels")
        if self.sample_rate <= 0:
            raise ValueError(f"sample_rate must be positive, got {self.sample_rate}")

    @classmethod
    def preset(cls, name: str, **overrides) -> "CodecConfig":
        """A named configuration (``paper-32khz``, ``tiny``).

        Keyword overrides replace fields; dict values merge into the nested configs, e.g.
        ``CodecConfig.preset("tiny", channels=2, quantizer={"n_q": 2})``.
        """
        if name not in PRESETS:
            raise ValueError(f"unknown codec preset {name!r}; choose one of {sorted(PRESETS)}")
        cfg = PRESETS[name]()
        if overrides:
            d = cfg.to_dict()
            for key, value in overrides.items():
                if isinstance(value, dict) and isinstance(d.get(key), dict):
                    d[key] = {**d[key], **value}
                else:
                    d[key] = value
            cfg = cls.from_dict(d)
        return cfg

    @property
    def hop_length(self) -> int:
        return self.seanet.hop_length

    @property
    def frame_rate(self) -> float:
        return self.sample_rate / self.hop_length

    def to_dict(self) -> dict:
        return {
            "sample_rate": self.sample_rate,
            "channels": self.channels,
            "seanet": self.seanet.to_dict(),
            "quantizer": self.quantizer.to_dict(),
        }

    @classmethod
    def from_dict(cls, d: dict) -> "CodecConfig":
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown CodecConfig fields: {sorted(unknown)}")
        return cls(**d)


@dataclass
class CodecOutput:
    audio: torch.Tensor  # [B, C, L] reconstruction, trimmed to the input length
    codes: torch.Tensor  # [B, n_q·C, T]
    penalty: torch.Tensor  # commitment loss (backpropagate it outside the loss balancer)


def interleave_channels(codes: torch.Tensor) -> torch.Tensor:
    """Per-channel codes ``[B, C, K, T]`` → LM codes ``[B, K·C, T]`` ordered ``[c0k0, c1k0, c0k1, c1k1, …]``."""
    b, c, k, t = codes.shape
    return codes.permute(0, 2, 1, 3).reshape(b, k * c, t)


def deinterleave_channels(codes: torch.Tensor, channels: int) -> torch.Tensor:
    """Inverse of `interleave_channels`: ``[B, K·C, T]`` → ``[B, C, K, T]``."""
    b, kc, t = codes.shape
    return codes.reshape(b, kc // channels, channels, t).permute(0, 2, 1, 3)


class Codec(nn.Module):
    """EnCodec-style neural audio codec: waveform ⇄ discrete codes at ``frame_rate`` Hz."""

    def __init__(self, config: CodecConfig | None = None) -> None:
        super().__init__()
        self.config = config or CodecConfig()
        self.encoder = SEANetEncoder(self.config.seanet)
        self.decoder = SEANetDecoder(self.config.seanet)
        self.quantizer = ResidualVectorQuantizer(self.config.seanet.dimension, self.config.quantizer)

    @classmethod
    def from_preset(cls, name: str, **overrides) -> "Codec":
        return cls(CodecConfig.preset(name, **overrides))

    # ---- what the rest of mgen needs to know -------------------------------------------------------------
    @property
    def sample_rate(self) -> int:
        return self.config.sample_rate

    @property
    def channels(self) -> int:
        return self.config.channels

    @property
    def hop_length(self) -> int:
        return self.config.hop_length

    @property
    def frame_rate(self) -> float:
        return self.config.frame_rate

    @property
    def n_q(self) -> int:
        """Codebooks the LM sees: ``config.quantizer.n_q`` per channel, interleaved across channels."""
        return self.config.quantizer.n_q * self.channels

    @property
    def card(self) -> int:
        """Codebook size: codes lie in ``[0, card)``."""
        return self.config.quantizer.card

    def num_frames(self, length: int) -> int:
        """Frames produced for ``length`` samples: ``ceil(length / hop)`` (the encoder pads the last frame)."""
        return math.ceil(length / self.hop_length)

    # ---- checks ----------------------------------------------------------------------------------------------
    def _check_audio(self, wav: torch.Tensor, sample_rate: int | None) -> None:
        if not isinstance(wav, torch.Tensor):
            raise ValueError(f"audio must be a torch.Tensor [B, C, L], got {type(wav).__name__}")
        if sample_rate is not None and int(sample_rate) != self.sample_rate:
            raise ValueError(
                f"audio sample rate {sample_rate} Hz does not match the codec's {self.sample_rate} Hz; resample first"
            )
        if wav.dim() != 3:
            raise ValueError(f"audio must have shape [B, C, L], got {tuple(wav.shape)}")
        if wav.shape[1] != self.channels:
            raise ValueError(
                f"audio has {wav.shape[1]} channel(s) but the codec expects {self.channels} "
                f"({'mono' if self.channels == 1 else 'stereo'})"
            )
        if wav.shape[0] == 0 or wav.shape[-1] == 0:
            raise ValueError(f"audio is empty: shape {tuple(wav.shape)}")
        if not wav.is_floating_point():
            raise ValueError(f"audio must be a floating-point tensor, got {wav.dtype}")
        if not bool(torch.isfinite(wav).all()):
            raise ValueError("audio contains NaN or infinite samples")
        if not bool(wav.detach().abs().amax() > 0):
            # Silence is valid input (padding, gaps), so only warn: all-zero batches usually mean a data bug.
            warnings.warn("audio is entirely silent (all zeros)", RuntimeWarning, stacklevel=3)

    def _check_codes(self, codes: torch.Tensor) -> None:
        per_channel = f"{self.config.quantizer.n_q} per channel x {self.channels} channel(s)"
        check_codes(codes, self.n_q, self.card, f"the codec ({per_channel})")

    # ---- inference ---------------------------------------------------------------------------------------
    def _mono_batch(self, wav: torch.Tensor) -> torch.Tensor:
        b, c, length = wav.shape
        return wav.reshape(b * c, 1, length)

    @torch.no_grad()
    def encode(self, wav: torch.Tensor, sample_rate: int | None = None) -> torch.Tensor:
        """Audio ``[B, C, L]`` → codes ``[B, n_q·C, ceil(L / hop)]`` (int64). Never updates the codebooks."""
        self._check_audio(wav, sample_rate)
        b, c, _ = wav.shape
        latent = self.encoder(self._mono_batch(wav))
        codes = self.quantizer.encode(latent)  # [B·C, K, T]
        return interleave_channels(codes.reshape(b, c, *codes.shape[1:]))

    @torch.no_grad()
    def decode(self, codes: torch.Tensor, length: int | None = None) -> torch.Tensor:
        """Codes ``[B, n_q·C, T]`` → audio ``[B, C, T·hop]``, or ``[B, C, length]`` when ``length`` is given."""
        self._check_codes(codes)
        b, _, t = codes.shape
        per_channel = deinterleave_channels(codes.long(), self.channels).reshape(b * self.channels, -1, t)
        wav = self.decoder(self.quantizer.decode(per_channel))
        wav = wav.reshape(b, self.channels, wav.shape[-1])
        return wav if length is None else wav[..., :length]

    # ---- training --------------------------------------------------------------------------------------
    def forward(self, wav: torch.Tensor) -> CodecOutput:
        """Training pass: reconstruction (same length as the input), codes and the commitment penalty."""
        self._check_audio(wav, None)
        b, c, length = wav.shape
        latent = self.encoder(self._mono_batch(wav))
        q = self.quantizer(latent)
        audio = self.decoder(q.quantized)[..., :length].reshape(b, c, length)
        codes = interleave_channels(q.codes.reshape(b, c, *q.codes.shape[1:]))
        return CodecOutput(audio=audio, codes=codes, penalty=q.penalty)


__all__ = ["Codec", "CodecConfig", "CodecOutput", "PRESETS", "interleave_channels", "deinterleave_channels"]
