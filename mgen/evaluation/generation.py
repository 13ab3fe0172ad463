"""Generated clips for an evaluation, cached as WAV files so that an interrupted run resumes where it stopped.

The cache is a folder (``OUT_DIR/generated``) of ``<name>.wav`` files (32-bit float, what the model produced,
unclipped), a ``captions.jsonl`` (so ``mgen evaluate --gen OUT_DIR/generated`` can score them again, CLAP included)
and ``settings.json``: the model's checksum and every generation setting. A folder made with other settings is
refused, never mixed.

Reproducible by construction:
- each clip has its own seed, derived from the run's seed and the clip's name, and its own random generator in
  the batch, so its tokens do not depend on the other clips of the batch;
- batches are fixed consecutive groups of the prompt list; a batch with any clip missing is generated whole
  again (same composition, so the same numerics) and only its missing clips are written;
- every WAV is written to a temporary name and renamed into place: a clip is in the cache complete or not at
  all, and a cached file that cannot be read back at the expected length is generated again.
"""

from __future__ import annotations

import hashlib
import json
import sys
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import soundfile as sf
import torch
from torch import Tensor
from tqdm import tqdm

from mgen.atomic import TMP_MARK, write_text_atomic
from mgen.audio import resample_tensor, write_audio
from mgen.evaluation.sources import CAPTIONS_NAME, Clip

SETTINGS_NAME = "settings.json"
CACHE_FORMAT = "mgen-generated-clips"
CACHE_VERSION = 1


@dataclass(frozen=True)
class GenerationSettings:
    """The paper's sampling (top-k 250, CFG 3). `max_duration` caps each clip's duration (its reference's);
    None: the model's training window, so no clip slides over windows."""

    top_k: int = 250
    top_p: float = 0.0
    temperature: float = 1.0
    cfg_coef: float = 3.0
    seed: int = 0
    max_duration: float | None = None
    batch_size: int = 8

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise ValueError(f"batch size must be >= 1, got {self.batch_size}")
        if self.max_duration is not None and self.max_duration <= 0:
            raise ValueError(f"max duration must be > 0 seconds, got {self.max_duration}")


@dataclass(frozen=True)
class Prompt:
    """What one clip is generated from: its name, caption, duration, and the melody clip (melody models)."""

    name: str
    text: str
    seconds: float
    melody: Clip | None = None


def clip_seed(seed: int, name: str) -> int:
    """A 63-bit seed of its own for the clip `name` (the same in any batch, any N, any order)."""
    return int.from_bytes(hashlib.sha256(f"{seed}/{name}".encode()).digest()[:8], "big") >> 1


def write_clip(path: Path, audio: Tensor, sample_rate: int) -> None:
    """``[C, L]`` as a 32-bit float WAV (no rounding before scoring), atomically."""
    write_audio(path, audio, sample_rate, subtype="FLOAT")


class ClipCache:
    """The generated clips of one model and one set of settings, in `folder` (see the module docstring)."""

    def __init__(self, folder: str | Path, model: Any, model_id: dict[str, Any], settings: GenerationSettings) -> None:
        self.folder = Path(folder)
        self.model = model
        self.settings = settings
        self.sample_rate = int(model.codec.sample_rate)
        self.channels = int(model.codec.channels)
        self.record = {"format": CACHE_FORMAT, "version": CACHE_VERSION, "model": model_id,
                       "sample_rate": self.sample_rate, "channels": self.channels, "settings": asdict(settings)}
        self._claim()

    def _claim(self) -> None:
        """Use the folder if it is new or holds clips of the same model and settings; else refuse."""
        self.folder.mkdir(parents=True, exist_ok=True)
        path = self.folder / SETTINGS_NAME
        if path.is_file():
            try:
                existing = json.loads(path.read_text())
            except json.JSONDecodeError:
                existing = None
            if existing != self.record:
                differ = sorted(k for k in set(existing or {}) | set(self.record)
                                if (existing or {}).get(k) != self.record.get(k))
                raise ValueError(f"{self.folder}: holds clips generated with other {', '.join(differ) or 'settings'} "
                                 f"(see {path}); use another output folder, or delete this one to start over")
        else:
            if any(self.folder.glob("*.wav")):
                raise ValueError(f"{self.folder}: holds WAV files but no {SETTINGS_NAME}; use another output folder")
            write_text_atomic(path, json.dumps(self.record, indent=1))
        for stale in self.folder.glob(f"*{TMP_MARK}*"):  # left by a killed run (the caller holds the folder lock)
            stale.unlink(missing_ok=True)

    def path(self, name: str) -> Path:
        return self.folder / f"{name}.wav"

    def frames(self, prompt: Prompt) -> int:
        return max(1, round(prompt.seconds * self.sample_rate))

    def is_cached(self, prompt: Prompt) -> bool:
        path = self.path(prompt.name)
        if not path.is_file():
            return False
        try:
            info = sf.info(str(path))
        except Exception:  # unreadable: generate it again
            return False
        return (info.samplerate, info.channels, info.frames) == (self.sample_rate, self.channels, self.frames(prompt))

    def clip(self, prompt: Prompt) -> Clip:
        return Clip(prompt.name, str(self.path(prompt.name)), self.sample_rate, self.channels, self.frames(prompt),
                    prompt.text, str(self.path(prompt.name)))

    def generate(self, prompts: Sequence[Prompt], progress: bool = True,
                 on_batch: Callable[[int], None] | None = None) -> dict[str, int]:
        """Make every missing clip; returns how many were reused and generated. `on_batch(i)` runs after batch i
        is written (progress reports, tests)."""
        names = [p.name for p in prompts]
        if len(set(names)) != len(names):
            raise ValueError("two prompts share a clip name")
        self._write_captions(prompts)
        size = self.settings.batch_size
        batches = [list(prompts[i:i + size]) for i in range(0, len(prompts), size)]
        cached = {p.name for p in prompts if self.is_cached(p)}
        bar = _progress(len(prompts), len(cached), progress)
        made = 0
        try:
            for index, batch in enumerate(batches):
                missing = [p for p in batch if p.name not in cached]
                if not missing:
                    continue
                audio = self._generate(batch)
                for prompt, clip in zip(batch, audio):
                    if prompt.name not in cached:
                        write_clip(self.path(prompt.name), clip[:, : self.frames(prompt)], self.sample_rate)
                made += len(missing)
                bar.update(len(missing))
                if on_batch is not None:
                    on_batch(index)
        finally:
            bar.close()
        return {"reused": len(cached), "generated": made}

    def _generate(self, batch: list[Prompt]) -> Tensor:
        s = self.settings
        seconds = max(p.seconds for p in batch)
        melody, melody_rate = self._melody(batch, seconds)
        texts = [p.text for p in batch]
        return self.model.generate(texts, duration=seconds, melody=melody, melody_sample_rate=melody_rate,
                                   cfg_coef=s.cfg_coef, top_k=s.top_k, top_p=s.top_p, temperature=s.temperature,
                                   seed=[clip_seed(s.seed, p.name) for p in batch])

    @staticmethod
    def _melody(batch: list[Prompt], seconds: float) -> tuple[Tensor | None, int | None]:
        """The batch's melody clips, mono at the first one's rate, cut to their clips' durations and zero-padded
        to the batch's: ``[B, 1, L]``."""
        if batch[0].melody is None:
            return None, None
        rate = batch[0].melody.sample_rate
        wavs = []
        for prompt in batch:
            clip = prompt.melody
            wav = clip.load(max(1, round(prompt.seconds * clip.sample_rate))).mean(0)
            wavs.append(resample_tensor(wav, clip.sample_rate, rate))
        length = max(round(seconds * rate), max(w.shape[-1] for w in wavs))
        out = torch.zeros(len(wavs), 1, length)
        for i, wav in enumerate(wavs):
            out[i, 0, : wav.shape[-1]] = wav[:length]
        return out, rate

    def _write_captions(self, prompts: Sequence[Prompt]) -> None:
        lines = "".join(json.dumps({"stem": p.name, "text": p.text}, ensure_ascii=False) + "\n" for p in prompts)
        write_text_atomic(self.folder / CAPTIONS_NAME, lines)


def _progress(total: int, initial: int, enabled: bool) -> tqdm:
    return tqdm(total=total, initial=initial, unit="clip", desc="[mgen evaluate] generating", file=sys.stderr,
                dynamic_ncols=True, disable=not enabled)
