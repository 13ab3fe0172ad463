"""What FAD and KAD share: audio -> embedder frames, a reference that outlives `reset()`, reference files.

The embedder is duck-typed (`mgen.metrics.embedders.base.AudioEmbedder`): ``info`` (`EmbedderInfo`) and
``embed(wav [L] at info.sample_rate) -> [frames, info.dim]``. It is deliberately *not* a submodule of the metric:
a frozen embedder must stay out of checkpoints, precision casts and DDP wrapping, so ``metric.to(...)`` does not
move it and ``metric.state_dict()`` holds no weights; place it on a device yourself (audio is moved to it).
An `EmbedderInfo` alone may stand in for the embedder when frames are computed elsewhere (`update_embeddings`).

The reference comes from a file (`load_reference`, checked against the embedder) or from reference audio given to
``update(..., reference=True)``; either survives `reset()`, which clears the generated side only. All states sync
across ranks (sums add, frame lists concatenate in rank order).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor
from torchmetrics import Metric

from mgen.metrics.clips import (Audio, SilencePolicy, check_policy, check_sample_rate, clip_name, is_silent,
                                module_device, silence_error, split_clips)
from mgen.metrics.embedders.base import EmbedderInfo, embed_audio
from mgen.metrics.reference import FAD_PROTOCOL, ReferenceStats, check_source
from mgen.metrics.states import counts_as_update, synced

GENERATED, REFERENCE = "generated", "reference"


class EmbeddingMetric(Metric):
    """Base class: subclasses add their states, `_add_frames`, `_reference_from_states` and `compute`."""

    is_differentiable = False
    full_state_update = False
    # states that hold the reference side and survive reset()
    reference_states: tuple[str, ...] = ("ref_clips",)

    def __init__(self, embedder: Any, *, silence: SilencePolicy = "error", reference_source: str = "real",
                 **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if isinstance(embedder, EmbedderInfo):
            info, embedder = embedder, None
        else:
            info = getattr(embedder, "info", None)
            if not isinstance(info, EmbedderInfo) or not callable(getattr(embedder, "embed", None)):
                raise TypeError("embedder must have `info: EmbedderInfo` and `embed(wav)` (see "
                                "mgen.metrics.embedders), or be an EmbedderInfo for update_embeddings only")
        object.__setattr__(self, "_embedder", embedder)  # not a submodule: see the module docstring
        self.info: EmbedderInfo = info
        self.silence = check_policy(silence)
        self.reference_source = check_source(reference_source)
        self._loaded: ReferenceStats | None = None
        for name in ("gen_clips", "silent_clips", "ref_clips"):
            self.add_state(name, torch.zeros((), dtype=torch.int64), dist_reduce_fx="sum")

    # ----------------------------------------------------------------------------------------------- input
    def update(self, audio: Audio, sample_rate: int, *, lengths: Sequence[int] | Tensor | None = None,
               names: Sequence[str] | None = None, reference: bool = False) -> None:
        """Embed clips (``[B, C, L]`` or a list of ``[C, L]``, valid `lengths` in samples) and add them to the
        generated side, or to the reference side with ``reference=True``. `names` (e.g. file stems) label clips in
        errors and in per-song results. Silent generated clips follow the `silence` policy; a silent reference clip
        is always refused (`mgen.metrics.clips`)."""
        if self._embedder is None:
            raise ValueError(f"this {type(self).__name__} has no embedder (built from an EmbedderInfo): use "
                             "update_embeddings")
        self._check_reference_side(reference)
        side = REFERENCE if reference else GENERATED
        sample_rate = check_sample_rate(sample_rate)
        clips = split_clips(audio, lengths, side)
        if names is not None and len(names) != len(clips):
            raise ValueError(f"{side}: {len(names)} names for {len(clips)} clips")
        device = module_device(self._embedder)
        frames, kept_names, silent = [], [], 0
        for i, clip in enumerate(clips):
            name = clip_name(i, names, side)
            if is_silent(clip, name):
                if reference or self.silence == "error":
                    raise silence_error(name)
                silent += 1
                if self.silence == "skip":
                    continue
            frames.append(embed_audio(self._embedder, clip if device is None else clip.to(device), sample_rate))
            kept_names.append(names[i] if names is not None else None)
        self.silent_clips += silent
        self._add(frames, kept_names, reference)

    @counts_as_update
    def update_embeddings(self, frames: Tensor | Sequence[Tensor], *, names: Sequence[str] | None = None,
                          reference: bool = False) -> None:
        """Add precomputed frames: one clip's ``[frames, dim]`` tensor, or a list of them (one per clip)."""
        self._check_reference_side(reference)
        side = REFERENCE if reference else GENERATED
        clips = [frames] if isinstance(frames, Tensor) else list(frames)
        if names is not None and len(names) != len(clips):
            raise ValueError(f"{side}: {len(names)} names for {len(clips)} clips")
        for i, f in enumerate(clips):
            if not isinstance(f, Tensor) or f.dim() != 2 or f.shape[1] != self.info.dim:
                shape = tuple(f.shape) if isinstance(f, Tensor) else type(f).__name__
                raise ValueError(f"{clip_name(i, names, side)}: expected frames [n, {self.info.dim}] for "
                                 f"{self.info.id}, got {shape}")
            if not torch.isfinite(f).all():
                raise ValueError(f"{clip_name(i, names, side)}: frames contain NaN or infinite values")
        self._add(clips, list(names) if names is not None else [None] * len(clips), reference)

    def _check_reference_side(self, reference: bool) -> None:
        if reference and self._loaded is not None:
            raise ValueError(f"the reference was loaded from {self._loaded.origin or 'statistics'}; reference audio "
                             "cannot be added to it (make a new metric to build a reference from audio)")

    def _add(self, frames: list[Tensor], names: list[str | None], reference: bool) -> None:
        frames = [f.detach().to(self.device) for f in frames]
        if reference:
            self.ref_clips += len(frames)
        else:
            self.gen_clips += len(frames)
        self._add_frames(frames, names, reference)

    def _add_frames(self, frames: list[Tensor], names: list[str | None], reference: bool) -> None:
        raise NotImplementedError

    # ------------------------------------------------------------------------------------------- reference
    @counts_as_update
    def load_reference(self, reference: str | Path | ReferenceStats) -> ReferenceStats:
        """Use reference statistics from a file (or object); refused when another embedder, weights file or
        protocol made them, or when reference audio was already added."""
        ref = reference if isinstance(reference, ReferenceStats) else ReferenceStats.load(reference)
        ref.check_compatible(self.info)
        if int(self.ref_clips) > 0:
            raise ValueError("this metric already holds reference audio; load reference statistics into a new one")
        self._check_loaded(ref)
        self._loaded = ref
        return ref

    def _check_loaded(self, ref: ReferenceStats) -> None:
        """Subclass hook: what a loaded reference must contain."""

    def reference_stats(self) -> ReferenceStats:
        """The reference in use (loaded, or built from the reference audio of all ranks)."""
        with self.synced():
            return self._reference()

    def save_reference(self, path: str | Path) -> Path:
        """Write the reference (statistics, and frames where kept) to `path` (``.npz``), atomically. Under DDP,
        every rank must call it (the states are gathered), rank 0 alone writes, and all ranks return once the file
        is complete."""
        ref = self.reference_stats()
        distributed = dist.is_available() and dist.is_initialized()
        if not distributed or dist.get_rank() == 0:
            ref.save(path)
        if distributed:
            dist.barrier(group=self.process_group)
        return Path(path)

    def _reference(self) -> ReferenceStats:
        if self._loaded is not None:
            return self._loaded
        if int(self.ref_clips) == 0:
            raise ValueError(f"{type(self).__name__} has no reference: pass reference=PATH.npz, call "
                             "load_reference, or add reference audio with update(..., reference=True)")
        return self._reference_from_states()

    def _reference_from_states(self) -> ReferenceStats:
        raise NotImplementedError

    def describe(self) -> dict[str, Any]:
        """What a report must say besides the value (JSON-able): embedder and weights, protocol versions, where the
        reference comes from and whether it is real or reconstructed audio, and how much was scored."""
        with self.synced():
            if self._loaded is not None:
                ref = self._loaded
                reference = {"source": ref.source, "file": ref.origin, "clips": ref.clips, "frames": ref.stats.n}
            else:
                reference = {"source": self.reference_source, "file": None, "clips": int(self.ref_clips),
                             "frames": self._num_frames(reference=True)}
            return {"metric": type(self).__name__, "embedder": self.info.to_dict(), "fad_protocol": FAD_PROTOCOL,
                    "reference": reference,
                    "generated": {"clips": int(self.gen_clips), "frames": self._num_frames(reference=False),
                                  "silent_clips": int(self.silent_clips), "silence_policy": self.silence}}

    def _num_frames(self, reference: bool) -> int:
        raise NotImplementedError

    # ---------------------------------------------------------------------------------------------- states
    def synced(self) -> Any:
        return synced(self)

    def reset(self) -> None:
        """Clear the generated side; the reference (loaded or accumulated) is kept."""
        kept = {name: getattr(self, name) for name in self.reference_states}
        kept = {name: list(v) if isinstance(v, list) else v.clone() for name, v in kept.items()}
        super().reset()
        for name, value in kept.items():
            setattr(self, name, value)

    def reset_reference(self) -> None:
        """Forget the reference too (a new reference set follows)."""
        self._loaded = None
        super().reset()
