"""Conditioners: turn attributes (captions, melody audio) into condition tensors at the LM width.

``ConditionProvider`` is the entry point; the pieces are usable alone. Plain PyTorch: no Lightning here.
"""

from mgen.conditioning.base import ConditionTensors
from mgen.conditioning.chroma import chromagram
from mgen.conditioning.clap import ClapConditioner
from mgen.conditioning.dropout import AttributeDropout, ClassifierFreeGuidanceDropout
from mgen.conditioning.fuser import ConditionFuser
from mgen.conditioning.melody import MelodyConditioner
from mgen.conditioning.provider import CLAP, MELODY, TEXT, ConditionProvider
from mgen.conditioning.text import TextConditioner

__all__ = [
    "CLAP", "MELODY", "TEXT", "AttributeDropout", "ClapConditioner", "ClassifierFreeGuidanceDropout",
    "ConditionFuser", "ConditionProvider", "ConditionTensors", "MelodyConditioner", "TextConditioner",
    "chromagram",
]
