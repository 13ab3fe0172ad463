"""LAION-CLAP (HTSAT-base + RoBERTa) for the metrics, on transformers' `ClapModel`: no laion-clap, no second
environment.

Two ways in, both local only:
- a laion-clap checkpoint file (``music_audioset_epoch_15_esc_90.14.pt``, the one audiocraft scores with), read
  with ``torch.load(weights_only=True)`` (`read_clap_state_dict`) and renamed key by key into transformers' layout
  (`laion_to_transformers`; the HTSAT-base configuration is built here, the RoBERTa sizes are read off the weights);
- a transformers CLAP folder (``save_pretrained`` layout, e.g. ``laion/larger_clap_music``), never with remote code.

The mel frontend is laion's (torchlibrosa: periodic Hann, 1024/480, power 2, slaney mel 64 bands 50-14000 Hz,
10·log10), computed here in torch, batched, on the model's device. transformers' `ClapFeatureExtractor` gives the
same log-mel only when set as the published unfused preprocessor configs are (50-14000 Hz, ``rand_trunc``); its
bare defaults do not. Text goes through the RoBERTa tokenizer padded to 77 tokens, as laion's `CLAP_Module`.

`ClapEmbedder` serves both metric families:
- `audio_embeddings` / `text_embeddings`: one unit vector per clip / caption (CLAP score). Clips longer than 10 s
  are cropped by policy: ``'first'`` (default, deterministic), ``'random'`` (laion/audiocraft: one random 10 s crop,
  drawn with numpy's legacy generator seeded once, so a fixed seed reproduces laion's crops exactly) or ``'mean'``
  (the mean of 10 s windows, as mgen's CLAP conditioner); shorter clips are looped and zero-padded (laion's
  "repeatpad"). No int16 round trip unless ``quantize_int16`` (audiocraft calls laion with ``use_tensor=True``).
- `embed`: frames for CLAP-FAD / KAD in fadtk's protocol: int16 round trip, one 10 s chunk every 1 s (the last ones
  zero-padded), one embedding per chunk.
"""

from __future__ import annotations

import json
import re
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from mgen.checksum import file_sha256
from mgen.conditioning.clap import read_clap_state_dict
from mgen.conditioning.text import check_vocabulary
from mgen.dsp import power_spectrogram
from mgen.errors import first_line
from mgen.metrics.embedders.base import PUBLISHED, UNVERIFIED, AudioEmbedder, EmbedderInfo

SAMPLE_RATE = 48_000
WINDOW = 480_000            # HTSAT's input: 10 s at 48 kHz
FADTK_HOP = 48_000          # `embed`: one chunk every second (fadtk)
TEXT_MAX_LENGTH = 77
EMBED_DIM = 512
CROPS = ("first", "random", "mean")
PROTOCOL = "fadtk-clap-v1"  # what `embed` does: int16 round trip, 10 s chunks at a 1 s hop, zero-padded
PUBLISHED_FILE = "music_audioset_epoch_15_esc_90.14.pt"
WHERE_PUBLISHED = (f"the published music checkpoint is {PUBLISHED_FILE} from https://huggingface.co/lukewys/laion_clap "
                   "(or the converted transformers folder laion/larger_clap_music); place it locally")
# sha256 of published files -> their published name (a match is labelled 'published' and named so, even if the
# local copy was renamed). Source: the Git LFS sha256 on the hub's file page (2,352,471,003 bytes).
PUBLISHED_SHA256 = {"fae3e9c087f2909c28a09dc31c8dfcdacbc42ba44c70e972b58c1bd1caf6dedd": PUBLISHED_FILE}

# laion's HTSAT-base (model_configs/HTSAT-base.json + htsat.create_htsat_model) in transformers' terms.
HTSAT_BASE = dict(spec_size=256, patch_size=4, patch_stride=[4, 4], patch_embeds_hidden_size=128,
                  depths=[2, 2, 12, 2], num_attention_heads=[4, 8, 16, 32], window_size=8, hidden_size=1024,
                  num_mel_bins=64, enable_fusion=False)
MEL = dict(n_fft=1024, hop=480, n_mels=64, fmin=50.0, fmax=14_000.0)
HTSAT_WIDTHS = {96: "HTSAT-tiny", 128: "HTSAT-base", 256: "HTSAT-large"}

# laion -> transformers names. Inside an audio block (layers.i.blocks.j.) module paths map one to one; "attn.qkv"
# is split into query/key/value. Outside the blocks three prefixes and the projections' Sequential indices differ.
_BLOCK_MODULES = {"norm1": "layernorm_before", "norm2": "layernorm_after", "attn": "attention.self",
                  "attn.proj": "attention.output.dense", "mlp.fc1": "intermediate.dense", "mlp.fc2": "output.dense"}
_PREFIXES = [("text_branch.", "text_model."), ("audio_branch.bn0.", "audio_model.audio_encoder.batch_norm."),
             ("audio_branch.", "audio_model.audio_encoder.")]
_PROJECTION_LAYERS = {"0": "linear1", "2": "linear2"}
_LAION_BLOCK = re.compile(r"audio_branch\.(layers\.\d+\.blocks\.\d+)\.(.+)\.([a-z_]+)")
_HF_BLOCK = re.compile(r"audio_model\.audio_encoder\.(layers\.\d+\.blocks\.\d+)\.(.+)\.([a-z_]+)")
_LAION_PROJECTION = re.compile(r"(text|audio)_projection\.(\d)\.(weight|bias)")
_HF_PROJECTION = re.compile(r"(text|audio)_projection\.(linear\d)\.(weight|bias)")
# Parts of a laion checkpoint that embeddings never use: the torchlibrosa frontend (recomputed here), the AudioSet
# classifier head, the contrastive-loss MLPs, and buffers transformers rebuilds (position/token-type ids, the
# shifted-window attention masks).
_UNUSED_LAION = ("audio_branch.spectrogram_extractor.", "audio_branch.logmel_extractor.", "audio_branch.tscam_conv.",
                 "audio_branch.head.", "text_transform.", "audio_transform.")
_REBUILT_BUFFERS = ("text_model.embeddings.position_ids", "text_model.embeddings.token_type_ids")


def laion_to_transformers(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """A laion-clap state dict ('module.' prefixes allowed) renamed into `ClapModel`'s layout, unused parts dropped."""
    out: dict[str, Tensor] = {}
    for key, value in state.items():
        key = key.removeprefix("module.")
        if key.startswith(_UNUSED_LAION) or key.endswith(("position_ids", "token_type_ids", ".attn_mask")):
            continue
        if block := _LAION_BLOCK.fullmatch(key):
            where, module, param = block.groups()
            base = f"audio_model.audio_encoder.{where}"
            if module == "attn.qkv":
                for name, part in zip(("query", "key", "value"), value.chunk(3, dim=0)):
                    out[f"{base}.attention.self.{name}.{param}"] = part.clone()
                continue
            if module not in _BLOCK_MODULES:
                raise ValueError(f"unexpected key {key!r} in a laion-clap HTSAT checkpoint")
            out[f"{base}.{_BLOCK_MODULES[module]}.{param}"] = value
        elif projection := _LAION_PROJECTION.fullmatch(key):
            branch, index, param = projection.groups()
            out[f"{branch}_projection.{_PROJECTION_LAYERS[index]}.{param}"] = value
        else:
            out[_rename_prefix(key, _PREFIXES)] = value
    return out


def transformers_to_laion(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """The inverse of `laion_to_transformers` on the parts it keeps (used to write laion-layout test files)."""
    block_modules = {hf: laion for laion, hf in _BLOCK_MODULES.items()}
    projection_layers = {hf: laion for laion, hf in _PROJECTION_LAYERS.items()}
    out: dict[str, Tensor] = {}
    for key, value in state.items():
        if key in _REBUILT_BUFFERS:
            continue
        if block := _HF_BLOCK.fullmatch(key):
            where, module, param = block.groups()
            base = f"audio_branch.{where}"
            if module in ("attention.self.query", "attention.self.key", "attention.self.value"):
                if module.endswith("query"):
                    parts = [state[key.replace(".query.", f".{n}.")] for n in ("query", "key", "value")]
                    out[f"{base}.attn.qkv.{param}"] = torch.cat(parts, dim=0)
                continue
            out[f"{base}.{block_modules[module]}.{param}"] = value
        elif projection := _HF_PROJECTION.fullmatch(key):
            branch, layer, param = projection.groups()
            out[f"{branch}_projection.{projection_layers[layer]}.{param}"] = value
        else:
            out[_rename_prefix(key, [(hf, laion) for laion, hf in _PREFIXES])] = value
    return out


def _rename_prefix(key: str, prefixes: list[tuple[str, str]]) -> str:
    for old, new in prefixes:
        if key.startswith(old):
            return new + key[len(old):]
    return key


def check_laion_architecture(state: dict[str, Tensor], where: str) -> None:
    """Refuse, by name, laion checkpoints (state from `read_clap_state_dict`) that are not non-fusion HTSAT-base
    with a RoBERTa text branch."""
    keys = list(state)
    if any("fusion_model" in k or k.startswith("audio_branch.mel_conv") for k in keys):
        raise ValueError(f"{where} is a fusion CLAP checkpoint (enable_fusion=True); only non-fusion HTSAT-base "
                         f"is supported ({WHERE_PUBLISHED})")
    patch = state.get("audio_branch.patch_embed.proj.weight")
    if patch is None:
        raise ValueError(f"{where} is not a laion-clap HTSAT checkpoint (no audio_branch.patch_embed.proj.weight; "
                         f"a PANN audio branch or another model?)")
    width = int(patch.shape[0])
    blocks = {int(m.group(1)) for k in keys if (m := re.fullmatch(r"audio_branch\.layers\.2\.blocks\.(\d+)\..+", k))}
    if width != HTSAT_BASE["patch_embeds_hidden_size"] or len(blocks) != HTSAT_BASE["depths"][2]:
        name = HTSAT_WIDTHS.get(width, f"an HTSAT of width {width}")
        raise ValueError(f"{where} holds {name} ({len(blocks)} blocks in stage 3); only HTSAT-base is supported "
                         f"({WHERE_PUBLISHED})")
    if "text_branch.embeddings.word_embeddings.weight" not in keys or "text_branch.pooler.dense.weight" not in keys:
        raise ValueError(f"{where} has no RoBERTa text branch (text_branch.embeddings/pooler); only laion-clap's "
                         f"tmodel='roberta' is supported")


def roberta_config_from_state(state: dict[str, Tensor]) -> dict[str, Any]:
    """The text tower's sizes, read off a laion state dict (roberta-base for every published checkpoint)."""
    def shape(key: str) -> tuple[int, ...]:
        return tuple(state[f"text_branch.{key}"].shape)

    vocab, hidden = shape("embeddings.word_embeddings.weight")
    layers = {int(m.group(1)) for k in state if (m := re.match(r"text_branch\.encoder\.layer\.(\d+)\.", k))}
    return dict(vocab_size=vocab, hidden_size=hidden, num_hidden_layers=len(layers),
                num_attention_heads=hidden // 64,  # roberta-base: 768 / 12 heads (not stored in the weights)
                intermediate_size=shape("encoder.layer.0.intermediate.dense.weight")[0],
                max_position_embeddings=shape("embeddings.position_embeddings.weight")[0],
                type_vocab_size=shape("embeddings.token_type_embeddings.weight")[0],
                layer_norm_eps=1e-5, pad_token_id=1, bos_token_id=0, eos_token_id=2)  # roberta-base's config.json


def htsat_base_config(text_config: dict[str, Any]) -> Any:
    """transformers' `ClapConfig` for laion's non-fusion HTSAT-base with the given RoBERTa sizes."""
    from transformers import ClapConfig  # heavy import, only when a CLAP model is built

    return ClapConfig(text_config=dict(text_config), audio_config=dict(HTSAT_BASE), projection_dim=EMBED_DIM)


class ClapMelFrontend(nn.Module):
    """Audio ``[B, L]`` at 48 kHz -> laion's log-mel ``[B, 1, frames, 64]`` (torchlibrosa's, in torch).

    Always float32, whatever the model's dtype: the filter bank is kept in float64 numpy, not as a buffer that a
    ``.half()`` would round.
    """

    def __init__(self) -> None:
        super().__init__()
        from transformers.audio_utils import mel_filter_bank

        self.mel_bank = mel_filter_bank(num_frequency_bins=MEL["n_fft"] // 2 + 1, num_mel_filters=MEL["n_mels"],
                                        min_frequency=MEL["fmin"], max_frequency=MEL["fmax"],
                                        sampling_rate=SAMPLE_RATE, norm="slaney", mel_scale="slaney")  # [513, 64]

    def forward(self, wav: Tensor) -> Tensor:
        window = torch.hann_window(MEL["n_fft"], periodic=True, device=wav.device)
        power = power_spectrogram(wav.float(), MEL["n_fft"], MEL["hop"], window, center=True)  # [B, 513, frames]
        mel = power.transpose(1, 2) @ torch.as_tensor(self.mel_bank, dtype=torch.float32, device=wav.device)
        return 10.0 * torch.log10(mel.clamp_min(1e-10))[:, None]


def repeat_pad(wav: Tensor, length: int = WINDOW) -> Tensor:
    """laion's 'repeatpad' for ``[..., L]`` with L < length: repeat int(length / L) times, then zero-pad."""
    repeated = wav.repeat(*([1] * (wav.dim() - 1)), length // wav.shape[-1])
    return nn.functional.pad(repeated, (0, length - repeated.shape[-1]))


def window_starts(length: int, window: int = WINDOW) -> list[int]:
    """Starts of the 10 s windows for the 'mean' policy: back to back, plus one aligned to the end for a tail."""
    starts = list(range(0, length - window + 1, window))
    if starts[-1] + window < length:
        starts.append(length - window)
    return starts


def int16_round_trip(wav: Tensor) -> Tensor:
    """laion's int16 round trip: clip to [-1, 1], scale by 32767, truncate to int16, scale back, in wav's dtype
    (laion does it in float32 on librosa's output, fadtk in float64 on its int16 reads)."""
    return torch.trunc(wav.clamp(-1.0, 1.0) * 32767.0) / 32767.0


def check_finite(wav: Tensor) -> None:
    if not bool(torch.isfinite(wav).all()):
        raise ValueError("CLAP audio contains NaN or Inf samples")


class ClapEmbedder(AudioEmbedder):
    """CLAP text and audio embeddings (512-d, unit norm) from a transformers `ClapModel` holding laion's weights."""

    def __init__(self, model: nn.Module, tokenizer: Any, info: EmbedderInfo, crop: str = "first", seed: int = 0,
                 quantize_int16: bool = False, batch_size: int = 8):
        super().__init__()
        if crop not in CROPS:
            raise ValueError(f"crop must be one of {CROPS}, got {crop!r}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.model = model.eval().requires_grad_(False)
        self.frontend = ClapMelFrontend()
        self.tokenizer = tokenizer
        self.info = info
        self.crop = crop
        self.seed = seed
        self.quantize_int16 = quantize_int16
        self.batch_size = batch_size
        self.reseed(seed)

    def reseed(self, seed: int | None = None) -> None:
        """Restart the 'random' crop stream (at `seed`, else the constructor's): laion draws each clip's start
        with ``np.random.randint(0, overflow + 1)`` from numpy's legacy generator, so after ``np.random.seed(s)``
        laion and ``reseed(s)`` crop the same clips at the same samples."""
        self.seed = self.seed if seed is None else seed
        self.crop_rng = np.random.RandomState(self.seed)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @torch.no_grad()
    def text_embeddings(self, texts: Sequence[str]) -> Tensor:
        """[N] captions -> [N, 512] unit vectors (RoBERTa tokens, padded / truncated to 77)."""
        if isinstance(texts, str) or len(texts) == 0:
            raise ValueError("texts must be a non-empty list of str")
        tokens = self.tokenizer(list(texts), padding="max_length", truncation=True, max_length=TEXT_MAX_LENGTH,
                                return_tensors="pt")
        pooled = self.model.text_model(input_ids=tokens["input_ids"].to(self.device),
                                       attention_mask=tokens["attention_mask"].to(self.device)).pooler_output
        return nn.functional.normalize(self.model.text_projection(pooled).float(), dim=-1)

    @torch.no_grad()
    def window_embeddings(self, windows: Sequence[Tensor]) -> Tensor:
        """Exactly-10 s windows (``[480000]`` each, views are fine) -> ``[W, 512]`` unit vectors; only
        `batch_size` windows are stacked at a time, so long audio never sits in memory as overlapping copies."""
        dtype = next(self.model.parameters()).dtype
        out = [torch.zeros(0, EMBED_DIM, device=self.device)]
        for first in range(0, len(windows), self.batch_size):
            batch = torch.stack(list(windows[first:first + self.batch_size])).to(self.device)
            mel = self.frontend(batch).to(dtype)
            pooled = self.model.audio_model(input_features=mel).pooler_output
            out.append(nn.functional.normalize(self.model.audio_projection(pooled).float(), dim=-1))
        return torch.cat(out)

    @torch.no_grad()
    def audio_embeddings(self, wav: Tensor, crop: str | None = None) -> Tensor:
        """Mono clips ``[N, L]`` at 48 kHz -> ``[N, 512]`` unit vectors, one per clip (crop policy: `self.crop`)."""
        crop = crop or self.crop
        if crop not in CROPS:
            raise ValueError(f"crop must be one of {CROPS}, got {crop!r}")
        if wav.dim() != 2 or wav.shape[-1] == 0:
            raise ValueError(f"CLAP audio must be mono clips [N, L] with L > 0 at {SAMPLE_RATE} Hz, "
                             f"got shape {tuple(wav.shape)}")
        check_finite(wav)
        wav = wav.float()
        if self.quantize_int16:
            wav = int16_round_trip(wav)
        length = wav.shape[-1]
        if length < WINDOW:
            wav = repeat_pad(wav)
        if length <= WINDOW or crop == "first":
            return self.window_embeddings(wav[:, :WINDOW].unbind(0))
        if crop == "random":
            starts = [int(self.crop_rng.randint(0, length - WINDOW + 1)) for _ in range(wav.shape[0])]
            return self.window_embeddings([row[s:s + WINDOW] for row, s in zip(wav, starts)])
        starts = window_starts(length)
        flat = self.window_embeddings([row[s:s + WINDOW] for row in wav for s in starts])
        return nn.functional.normalize(flat.reshape(wav.shape[0], len(starts), -1).mean(dim=1), dim=-1)

    @torch.no_grad()
    def embed(self, wav: Tensor) -> Tensor:
        """fadtk's CLAP frames: mono ``[L]`` at 48 kHz -> ``[ceil(L / 48000), 512]`` (int16 round trip, 10 s chunks
        starting every second, the ones running past the end zero-padded)."""
        if wav.dim() != 1:
            raise ValueError(f"embed takes mono audio [L], got shape {tuple(wav.shape)}")
        check_finite(wav)
        wav = int16_round_trip(wav if wav.dtype == torch.float64 else wav.float()).float()
        padded = nn.functional.pad(wav, (0, WINDOW))
        return self.window_embeddings([padded[s:s + WINDOW] for s in range(0, wav.shape[0], FADTK_HOP)])


def load_roberta_tokenizer(location: str | Path, model: nn.Module) -> Any:
    """RoBERTa's tokenizer from a folder or the HF cache ('roberta-base'), checked against the text tower."""
    import huggingface_hub.constants
    from transformers import RobertaTokenizer

    where = str(location)
    needed = (f"CLAP needs roberta-base's vocab.json and merges.txt: pass tokenizer=PATH (a local folder) or put "
              f"'roberta-base' in the HF cache ({huggingface_hub.constants.HF_HUB_CACHE}); nothing is downloaded")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            tokenizer = RobertaTokenizer.from_pretrained(where, local_files_only=True)
    except (OSError, ValueError) as err:
        raise FileNotFoundError(f"no RoBERTa tokenizer at {where!r} ({first_line(err)}); {needed}") from err
    try:
        check_vocabulary(tokenizer, model.text_model, where)
    except ValueError as err:
        raise ValueError(f"unusable RoBERTa tokenizer at {where!r}: {err}; {needed}") from err
    return tokenizer


def checkpoint_name(path: Path) -> str:
    """The name in the embedder id: the file stem, or the folder name (the repo name for an HF-cache snapshot)."""
    if path.is_dir() and re.fullmatch(r"[0-9a-f]{40}", path.name) and path.parent.name == "snapshots":
        return path.parent.parent.name.split("--")[-1]
    return path.name.removesuffix(".pt").removesuffix(".ckpt") if path.is_file() else path.name


def _load_laion_file(path: Path) -> nn.Module:
    from transformers import ClapModel

    state = read_clap_state_dict(path)  # torch.load(weights_only=True)
    check_laion_architecture(state, str(path))
    mapped = laion_to_transformers(state)
    model = ClapModel(htsat_base_config(roberta_config_from_state(state)))
    try:
        missing, unexpected = model.load_state_dict(mapped, strict=False)
    except RuntimeError as err:  # shape mismatches
        raise ValueError(f"CLAP checkpoint {path} does not fit HTSAT-base + RoBERTa: {first_line(err)}") from err
    missing = [k for k in missing if k not in _REBUILT_BUFFERS]
    if missing or unexpected:
        raise ValueError(f"CLAP checkpoint {path} does not fit HTSAT-base + RoBERTa: missing {missing[:5]} "
                         f"({len(missing)}), unexpected {unexpected[:5]} ({len(unexpected)})")
    check_mel_bank(state, path)
    return model


def check_mel_bank(state: dict[str, Tensor], path: Path) -> None:
    """A laion checkpoint stores its torchlibrosa mel bank: refuse one that is not the frontend computed here."""
    stored = state.get("audio_branch.logmel_extractor.melW")
    if stored is None:
        return
    ours = torch.from_numpy(ClapMelFrontend().mel_bank).float()
    if stored.shape != ours.shape or not torch.allclose(stored.float(), ours, rtol=1e-4, atol=1e-6):
        raise ValueError(f"CLAP checkpoint {path} was trained on another mel frontend (its logmel_extractor.melW "
                         f"{tuple(stored.shape)} differs from 64 slaney bands 50-14000 Hz at 48 kHz)")


def _load_transformers_folder(path: Path) -> tuple[nn.Module, Path]:
    from transformers import ClapConfig, ClapModel

    config_file = path / "config.json"
    if not config_file.is_file():
        raise FileNotFoundError(f"{path} is not a transformers CLAP folder (no config.json); {WHERE_PUBLISHED}")
    raw = json.loads(config_file.read_text())
    if "auto_map" in raw:
        raise ValueError(f"{config_file} asks for remote code (auto_map): refused, mgen never runs a model "
                         f"folder's own code")
    if raw.get("model_type") != "clap":
        raise ValueError(f"{config_file} is model_type {raw.get('model_type')!r}, not a transformers CLAP model")
    config = ClapConfig.from_pretrained(path, local_files_only=True)  # defaults filled in: check what is built
    audio = config.audio_config
    if audio.enable_fusion:
        raise ValueError(f"{config_file} is a fusion CLAP (enable_fusion=true); only non-fusion HTSAT-base is "
                         f"supported ({WHERE_PUBLISHED})")
    for key in ("patch_embeds_hidden_size", "depths", "num_attention_heads", "num_mel_bins", "spec_size"):
        if list(np.atleast_1d(getattr(audio, key))) != list(np.atleast_1d(HTSAT_BASE[key])):
            raise ValueError(f"{config_file}: audio_config.{key}={getattr(audio, key)} is not HTSAT-base's "
                             f"{HTSAT_BASE[key]}; only HTSAT-base is supported ({WHERE_PUBLISHED})")
    weights = [path / n for n in ("model.safetensors", "pytorch_model.bin") if (path / n).is_file()]
    if not weights:
        raise FileNotFoundError(f"{path} has no model.safetensors (or pytorch_model.bin); {WHERE_PUBLISHED}")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model = ClapModel.from_pretrained(path, config=config, local_files_only=True, trust_remote_code=False)
    except Exception as err:  # transformers raises several types for broken folders
        raise ValueError(f"cannot load the CLAP folder {path}: {first_line(err)}") from err
    return model, weights[0]


def embedder_info(path: Path, weights_file: Path, weights_label: str | None = None) -> EmbedderInfo:
    """Id ``clap-<checkpoint name>`` (the published name when the sha256 is a published one), checksum, label."""
    sha256 = file_sha256(weights_file)
    published = PUBLISHED_SHA256.get(sha256)
    name = published.removesuffix(".pt") if published else checkpoint_name(path)
    return EmbedderInfo(id=f"clap-{name}", sample_rate=SAMPLE_RATE, dim=EMBED_DIM, protocol=PROTOCOL,
                        weights=str(weights_file), weights_sha256=sha256,
                        weights_label=weights_label or (PUBLISHED if published else UNVERIFIED))


def load_clap_embedder(weights: str | Path, crop: str = "first", seed: int = 0, quantize_int16: bool = False,
                       tokenizer: str | Path | None = None, batch_size: int = 8,
                       weights_label: str | None = None) -> ClapEmbedder:
    """A `ClapEmbedder` from a laion-clap checkpoint file or a transformers CLAP folder (local paths only).

    The tokenizer comes from `tokenizer`, else the folder itself when it has one, else 'roberta-base' in the HF
    cache. `weights_label` overrides the label reports print (default: 'published' when the sha256 is a known
    published one, else 'unverified').
    """
    if crop not in CROPS:
        raise ValueError(f"crop must be one of {CROPS}, got {crop!r}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    path = Path(weights).expanduser()
    if not path.exists():
        raise FileNotFoundError(f"CLAP weights {path} do not exist; {WHERE_PUBLISHED}")
    if path.is_dir():
        model, weights_file = _load_transformers_folder(path)
        has_tokenizer = (path / "vocab.json").is_file() or (path / "tokenizer.json").is_file()
        default_tokenizer: str | Path = path if has_tokenizer else "roberta-base"
    else:
        model, weights_file, default_tokenizer = _load_laion_file(path), path, "roberta-base"
    text_tokenizer = load_roberta_tokenizer(tokenizer or default_tokenizer, model)
    info = embedder_info(path, weights_file, weights_label)
    print(f"CLAP embedder {info.id}: {weights_file} sha256 {info.weights_sha256} ({info.weights_label})")
    return ClapEmbedder(model, text_tokenizer, info, crop=crop, seed=seed, quantize_int16=quantize_int16,
                        batch_size=batch_size)
