"""Conversions between mgen models and their transformers counterparts (one import point for users)."""

from mgen.interop.musicgen import config_from_transformers, lm_from_transformers, lm_to_transformers

__all__ = ["config_from_transformers", "lm_from_transformers", "lm_to_transformers"]
