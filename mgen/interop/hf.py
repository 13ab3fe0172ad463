"""Conversions between mgen models and their transformers counterparts (one import point for users)."""

from mgen.interop.encodec import codec_from_transformers, codec_to_transformers
from mgen.interop.musicgen import config_from_transformers, lm_from_transformers, lm_to_transformers

__all__ = ["codec_from_transformers", "codec_to_transformers", "config_from_transformers",
           "lm_from_transformers", "lm_to_transformers"]
