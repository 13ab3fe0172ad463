"""Which text a training sample is conditioned on: its description, sometimes merged with its metadata.

This follows MusicGen's text augmentation (audiocraft ``augment_music_info_description``): with probability
``merge_text_p`` the metadata fields (key, bpm, genre, moods, instrument, keywords) are written out as
``"field: value"`` pairs in random order, each kept with probability ``1 - drop_other_p``, and appended to the
description; in that case the description itself is dropped with probability ``drop_desc_p``, so the model also
learns from metadata alone. Published defaults: 0.25 / 0.5 / 0.5. (audiocraft keeps a field when
``rand < drop_other_p``, the opposite of the name; at the published 0.5 both readings are the same.)
Validation always uses the plain description so losses are comparable across runs.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any

# Field order only matters for readability of logs; the merged text shuffles them.
META_FIELDS = ("key", "bpm", "genre", "moods", "instrument", "keywords")


@dataclass(frozen=True)
class CaptionConfig:
    """Text augmentation probabilities (published MusicGen values by default)."""

    merge_text_p: float = 0.25
    drop_desc_p: float = 0.5
    drop_other_p: float = 0.5

    def __post_init__(self) -> None:
        for name in ("merge_text_p", "drop_desc_p", "drop_other_p"):
            value = getattr(self, name)
            if not 0.0 <= float(value) <= 1.0:
                raise ValueError(f"CaptionConfig.{name} must be a probability in [0, 1], got {value}")


def description_of(meta: dict[str, Any]) -> str:
    """The sample's caption: ``description`` (or ``caption``) at the top level or in the nested source ``meta``."""
    nested = meta.get("meta") if isinstance(meta.get("meta"), dict) else {}
    for source in (meta, nested):
        for name in ("description", "caption"):
            value = source.get(name)
            if isinstance(value, str) and value.strip():
                return value.strip()
    return ""


def field_value(meta: dict[str, Any], name: str) -> str | None:
    """A metadata field as text (lists joined by ', '), looked up at the top level then in the nested ``meta``."""
    nested = meta.get("meta") if isinstance(meta.get("meta"), dict) else {}
    value = meta.get(name, nested.get(name))
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, (list, tuple)):
        items = [str(v).strip() for v in value if v is not None and str(v).strip()]
        return ", ".join(items) or None
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, (int, float, str)):
        text = str(value).strip()
        return text or None
    return None


def metadata_text(meta: dict[str, Any], keep_p: float, rng: random.Random) -> str:
    """``"genre: jazz. bpm: 120"``: present fields, each kept with ``keep_p``, in random order."""
    pairs = []
    for name in META_FIELDS:
        value = field_value(meta, name)
        if value is not None and rng.random() < keep_p:
            pairs.append(f"{name}: {value}")
    rng.shuffle(pairs)
    return ". ".join(pairs)


def select_caption(meta: dict[str, Any], config: CaptionConfig | None, rng: random.Random | None,
                   train: bool = True) -> str:
    """The text for one sample (see module docstring); ``train=False`` or ``config=None`` -> plain description."""
    description = description_of(meta)
    if not train or config is None or rng is None or rng.random() >= config.merge_text_p:
        return description
    extra = metadata_text(meta, 1.0 - config.drop_other_p, rng)
    if rng.random() < config.drop_desc_p or not description:
        return extra
    if not extra:
        return description
    return f"{description.rstrip('.')}. {extra}"
