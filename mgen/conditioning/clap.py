"""CLAP condition: one LAION-CLAP embedding (512-d, unit norm) per sample, projected to the LM width.

Text and audio share CLAP's joint space, so a model can train on embeddings of its own training audio (no
captions needed) and generate from embeddings of a text prompt (published CLAPEmbeddingConditioner). Training
audio is mixed to mono, resampled to CLAP's 48 kHz and cut into 10 s windows (a shorter clip is looped to one
window, as laion-clap's "repeatpad"); the window embeddings are averaged and renormalised. ``text_p`` is the chance,
per training sample with a caption, of using the text embedding instead of the audio one (published option).

The CLAP model is frozen and kept outside the module tree like the text encoder (``state_dict`` carries only the
projection; ``.to()`` still moves it). Requirements, all local:
- the ``laion-clap`` package (it needs torchvision and numpy<2: see ``scripts/make_clap_venv.sh``);
- its weights as a checkpoint file (e.g. ``music_audioset_epoch_15_esc_90.14.pt`` with ``amodel="HTSAT-base"``),
  loaded with ``torch.load(weights_only=True)`` unless told otherwise (only for files you trust);
- ``roberta-base`` in the HF cache: laion-clap builds its text branch and tokenizer from it (the branch's weights
  are then replaced by the checkpoint). Set ``HF_HUB_OFFLINE=1``: laion-clap also asks the hub for three
  tokenizers when it is imported, and without the flag that costs minutes of retries on a machine with no network.
Not done: the published optional residual quantisation of the embedding.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from mgen.conditioning.audio import check_audio, resample
from mgen.conditioning.base import ConditionTensors
from mgen.conditioning.text import check_vocabulary

CLAP_WINDOW_SECONDS = 10.0


def import_laion_clap() -> Any:
    """The real laion_clap package, or an ImportError that says how to get an environment with it."""
    try:
        import laion_clap  # optional, heavy dependency
    except ImportError as err:
        raise ImportError("the CLAP conditioner needs the laion-clap package, which needs torchvision and numpy<2: "
                          "build the separate environment with scripts/make_clap_venv.sh and run there "
                          f"(cause: {err})") from err
    return laion_clap


def numpy_scalar_globals() -> list[Any]:
    """What ``torch.load(weights_only=True)`` must additionally allow to rebuild plain NumPy number scalars (LAION's
    training checkpoints store one next to the weights): the scalar constructor under its NumPy 1 and 2 names,
    ``np.dtype`` and the numeric dtype classes. None of them can build anything but a number."""
    import numpy as np

    try:
        from numpy._core.multiarray import scalar  # NumPy 2
    except ImportError:
        from numpy.core.multiarray import scalar  # NumPy 1
    numeric = ("Float64DType", "Float32DType", "Float16DType", "Int64DType", "Int32DType", "Int16DType",
               "Int8DType", "UInt8DType", "BoolDType")
    return [(scalar, "numpy.core.multiarray.scalar"), (scalar, "numpy._core.multiarray.scalar"), np.dtype,
            *(getattr(np.dtypes, name) for name in numeric)]


def read_clap_state_dict(path: str | Path, weights_only: bool = True) -> dict[str, Tensor]:
    """The state dict of a LAION-CLAP training checkpoint ({"state_dict": ...} or bare), DDP "module." prefixes
    stripped and position_ids buffers dropped (old checkpoints carry them, recent transformers do not; fadtk even
    rewrites the entry as a plain int). Weights-only loading also accepts NumPy number scalars, nothing else."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"CLAP checkpoint {path} does not exist")
    try:
        with torch.serialization.safe_globals(numpy_scalar_globals()):
            checkpoint = torch.load(path, map_location="cpu", weights_only=weights_only)
    except Exception as err:  # pickle errors come in several types
        raise ValueError(f"cannot load CLAP checkpoint {path} with weights_only={weights_only}; if the file is "
                         f"trusted and holds non-tensor objects, pass weights_only=False (cause: {err})") from err
    state = checkpoint.get("state_dict", checkpoint) if isinstance(checkpoint, dict) else None
    if not isinstance(state, dict) or not state:
        raise ValueError(f"{path} is not a CLAP checkpoint: expected a state dict or {{'state_dict': ...}}")
    state = {(k[len("module."):] if k.startswith("module.") else k): v for k, v in state.items()}
    state = {k: v for k, v in state.items() if not k.endswith("position_ids")}
    not_tensors = [k for k, v in state.items() if not isinstance(v, Tensor)]
    if not state or not_tensors:
        raise ValueError(f"{path} is not a CLAP checkpoint: its state dict holds non-tensor entries "
                         f"{not_tensors[:3]}")
    return state


def load_clap_checkpoint(model: nn.Module, path: str | Path, weights_only: bool = True) -> None:
    """Load a LAION-CLAP training checkpoint (see `read_clap_state_dict`) into model, strictly."""
    state = read_clap_state_dict(path, weights_only)
    try:
        missing, unexpected = model.load_state_dict(state, strict=False)
    except RuntimeError as err:  # shape mismatches
        raise ValueError(f"CLAP checkpoint {path} does not fit the model (wrong amodel?): {err}") from err
    missing = [k for k in missing if not k.endswith("position_ids")]
    if missing or unexpected:
        raise ValueError(f"CLAP checkpoint {path} does not fit the model (wrong amodel / enable_fusion?): "
                         f"missing {missing[:5]} ({len(missing)}), unexpected {unexpected[:5]} ({len(unexpected)})")


class ClapConditioner(nn.Module):
    """texts (generation) or audio [B, C, L] (training) -> ConditionTensors([B, 1, dim], mask [B, 1])."""

    def __init__(self, dim: int, checkpoint: str | Path, amodel: str = "HTSAT-base", enable_fusion: bool = False,
                 text_p: float = 0.0, window_seconds: float = CLAP_WINDOW_SECONDS,
                 weights_only: bool = True, generator: torch.Generator | None = None):
        super().__init__()
        if not 0.0 <= text_p <= 1.0:
            raise ValueError(f"text_p must be in [0, 1], got {text_p}")
        laion_clap = import_laion_clap()
        try:
            clap = laion_clap.CLAP_Module(enable_fusion=enable_fusion, amodel=amodel, device="cpu")
        except OSError as err:
            raise OSError("laion-clap builds its text branch from 'roberta-base', which must already be in the HF "
                          f"cache (nothing downloads at run time); cause: {err}") from err
        try:
            check_vocabulary(clap.tokenize, clap.model.text_branch, "roberta-base (HF cache)")
        except ValueError as err:
            raise ValueError(f"laion-clap's 'roberta-base' tokenizer is unusable: {err}") from err
        load_clap_checkpoint(clap.model, checkpoint, weights_only)
        clap.eval().requires_grad_(False)
        self.__dict__["clap"] = clap  # frozen: deliberately not a registered submodule
        self.checkpoint = str(checkpoint)
        self.text_p = text_p
        self.generator = generator
        self.clap_sample_rate = int(clap.model_cfg["audio_cfg"]["sample_rate"])
        self.window = int(round(window_seconds * self.clap_sample_rate))
        self.embed_dim = int(clap.model.joint_embed_shape)
        self.proj = nn.Linear(self.embed_dim, dim)

    clap: Any  # set through __dict__ above

    def _apply(self, fn: Any, recurse: bool = True) -> "ClapConditioner":
        """Move/cast the unregistered CLAP model together with the projection."""
        super()._apply(fn, recurse)
        self.clap._apply(fn)
        return self

    @property
    def device(self) -> torch.device:
        return self.proj.weight.device

    @torch.no_grad()
    def text_embedding(self, texts: Sequence[str]) -> Tensor:
        """[N] strings -> [N, 512] unit vectors."""
        tokens = self.clap.tokenizer(list(texts))
        return self.clap.model.get_text_embedding(dict(tokens)).float()

    @torch.no_grad()
    def audio_embedding(self, wavs: Tensor, sample_rate: int) -> Tensor:
        """[B, C, L] audio -> [B, 512] unit vectors (mean over 10 s windows, renormalised)."""
        check_audio(wavs, sample_rate, "CLAP audio")
        mono = resample(wavs.float().mean(dim=1), sample_rate, self.clap_sample_rate).to(self.device)
        length = mono.shape[-1]
        if length < self.window:
            mono = mono.repeat(1, -(-self.window // length))[:, :self.window]
            length = self.window
        starts = list(range(0, length - self.window + 1, self.window))
        if starts[-1] + self.window < length:
            starts.append(length - self.window)  # cover the tail with a last window aligned to the end
        windows = torch.stack([mono[:, s:s + self.window] for s in starts], dim=1)  # [B, W, window]
        flat = self.clap.get_audio_embedding_from_data(windows.reshape(-1, self.window), use_tensor=True)
        embedding = flat.float().reshape(windows.shape[0], windows.shape[1], -1).mean(dim=1)
        return torch.nn.functional.normalize(embedding, dim=-1)

    def forward(self, texts: Sequence[str | None] | None = None, wavs: Tensor | None = None,
                sample_rate: int | None = None, batch_size: int | None = None) -> ConditionTensors:
        """Audio embeddings when wavs are given (training), else text embeddings; missing rows are nulled."""
        if texts is not None and (isinstance(texts, str) or len(texts) == 0):
            raise ValueError("texts must be a non-empty list of str | None, one per sample")
        if wavs is not None:
            if sample_rate is None:
                raise ValueError("sample_rate is required with CLAP audio")
            check_audio(wavs, sample_rate, "CLAP audio")
        batch = wavs.shape[0] if wavs is not None else len(texts) if texts is not None else batch_size
        if not batch:
            raise ValueError("the CLAP conditioner got neither texts nor audio")
        if texts is not None and len(texts) != batch:
            raise ValueError(f"{len(texts)} texts for {batch} audio clips")
        embedding = torch.zeros(batch, self.embed_dim, device=self.device)
        present = torch.zeros(batch, dtype=torch.bool)
        has_text = torch.tensor([bool(t and t.strip()) for t in texts] if texts is not None else [False] * batch)
        use_text = has_text.clone()
        if wavs is not None:
            coins = torch.rand(batch, generator=self.generator) < self.text_p
            use_text = use_text & coins if self.training else torch.zeros_like(use_text)
            embedding = self.audio_embedding(wavs, sample_rate)
            present[:] = True
        if bool(use_text.any()):
            rows = use_text.nonzero().flatten()
            embedding[rows.to(self.device)] = self.text_embedding([texts[i] for i in rows.tolist()])
            present |= use_text
        out = self.proj(embedding.to(self.proj.weight.dtype))[:, None, :]
        mask = present.to(self.device)[:, None]
        return ConditionTensors(out * mask[..., None].to(out.dtype), mask)

    def null(self, batch_size: int) -> ConditionTensors:
        """No CLAP condition: one zero token per sample, mask off."""
        weight = self.proj.weight
        return ConditionTensors(weight.new_zeros(batch_size, 1, weight.shape[0]),
                                torch.zeros(batch_size, 1, dtype=torch.bool, device=weight.device))
