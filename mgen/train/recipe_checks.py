"""Recipe values checked before a run creates anything: right types, sane ranges, `--set` overrides that keep the
type of what they replace, and no unknown `model` keys.

A wrong value used to surface deep inside torch or Lightning (`--set optim.lr=abc` as a TypeError in AdamW,
`trainer.max_steps: -5` as a Lightning traceback) or not at all (`max_steps: 0` exported an untrained model). Here
it is one line naming the recipe, the key and the problem. Types come from the config dataclasses the sections
fill (`LMConfig`, `ConditioningConfig`, `LMTrainConfig`, `CodecConfig`, `CodecTrainConfig`) and, for the sections
`mgen fit` reads itself, from the tables below. A typed recipe schema is meant to replace this module.
"""

from __future__ import annotations

import dataclasses
import math
import re
import types
import typing
from typing import Any, Union

from mgen.codec.model import CodecConfig
from mgen.conditioning.provider import ConditioningConfig
from mgen.lm.model import LMConfig
from mgen.train.codec_module import RECIPE_SECTIONS as CODEC_MODULE_SECTIONS
from mgen.train.codec_module import CodecTrainConfig
from mgen.train.lm_module import LMTrainConfig
from mgen.train.lm_recipe import check_recipe as check_lm_sections

Number = float  # int is accepted where float is expected (widening), never the other way
PRECISION = Union[str, int]

# section -> key -> type, for the sections `mgen fit` reads itself (keys not listed are checked elsewhere)
LM_TYPES: dict[str, Any] = {
    "": {"task": str, "seed": int, "codec": Union[str, None]},
    "model": LMConfig, "conditioning": ConditioningConfig, "optim": LMTrainConfig,
    "data": {"shards": str, "segment_seconds": Number, "global_batch_size": int, "num_workers": int,
             "resampled": bool, "epoch_length": Union[int, None], "max_batch_per_device": Union[int, None],
             "chroma": bool},
    "trainer": {"max_steps": int, "precision": PRECISION, "val_every_n_batches": Union[int, None],
                "limit_val_batches": Number, "log_every_n_steps": int, "checkpoint_every_n_steps": int,
                "progress_bar": bool, "strategy": str, "fsdp": Union[dict, None]},
    "ema": {"decay": Union[Number, None], "every_n_steps": int, "start_step": Union[int, None]},
    "samples": {"count": int, "seconds": Number, "every_n_validations": int, "cfg_coef": Number, "top_k": int,
                "temperature": Number},
    "logger": {"wandb": bool, "project": str},
}
CODEC_TYPES: dict[str, Any] = {
    "": {"task": str, "seed": int},
    "model": CodecConfig, "train": CodecTrainConfig,
    "data": {"shards": str, "shards_dir": str, "segment_seconds": Number, "global_batch_size": int,
             "sample_rate": int, "channels": int, "num_workers": int, "resampled": bool,
             "epoch_length": Union[int, None], "max_batch_per_device": Union[int, None]},
    "trainer": {"max_updates": int, "precision": PRECISION, "val_every_n_updates": int, "log_every_n_steps": int,
                "checkpoint_every_n_updates": int, "limit_val_batches": Number, "progress_bar": bool},
    "ema": {"decay": Union[Number, None], "every_n_updates": int},
}
CODEC_SECTIONS = CODEC_MODULE_SECTIONS | {"seed"}  # `mgen fit` reads the seed itself
# dotted key -> (lowest allowed value, whether the bound itself is allowed)
LM_BOUNDS = {"trainer.max_steps": (1, True), "trainer.val_every_n_batches": (1, True),
             "trainer.log_every_n_steps": (1, True), "trainer.checkpoint_every_n_steps": (1, True),
             "data.global_batch_size": (1, True), "data.num_workers": (0, True), "data.segment_seconds": (0, False),
             "optim.lr": (0, False), "optim.warmup_steps": (0, True), "optim.total_steps": (1, True)}
CODEC_BOUNDS = {"trainer.max_updates": (1, True), "trainer.val_every_n_updates": (1, True),
                "trainer.log_every_n_steps": (1, True), "trainer.checkpoint_every_n_updates": (1, True),
                "data.global_batch_size": (1, True), "data.num_workers": (0, True),
                "data.segment_seconds": (0, False), "train.lr": (0, False)}
# YAML 1.1 (PyYAML) reads 1e-4 as a string: a number without a dot before the exponent
_EXPONENT_NUMBER = re.compile(r"^[+-]?(\d+\.?\d*|\.\d+)[eE][+-]?\d+$")


def checked_recipe(recipe: dict[str, Any], base: dict[str, Any], overrides: list[str],
                   source: str | None = None) -> dict[str, Any]:
    """`recipe` (= `base` + `overrides`) with its values checked; raises ValueError naming `source`, the key and
    the problem. Numbers written like `1e-4` (a string to YAML 1.1) become floats where a number is expected."""
    where = f"recipe {source}" if source else "recipe"
    task = recipe.get("task")
    if task not in ("lm", "codec"):
        return recipe  # `fit` says which tasks exist
    schema, bounds = (LM_TYPES, LM_BOUNDS) if task == "lm" else (CODEC_TYPES, CODEC_BOUNDS)
    try:
        _check_overrides(base, recipe, overrides, schema)
        for section, spec in schema.items():
            node = recipe if section == "" else recipe.get(section)
            if node is not None and not isinstance(node, dict):
                raise ValueError(f"section {section!r} must be a mapping, got {node!r}")
            if section == "model" and node is not None:  # only a preset name or a config field is a model key
                _check_keys("model", node, spec, extra={"preset"})
            if node is not None:
                _check_values(section, node, spec)
        for dotted, (low, inclusive) in bounds.items():
            _check_bound(recipe, dotted, low, inclusive)
        if task == "lm":  # unknown sections and keys, before the run directory is made
            check_lm_sections(recipe)
        elif set(recipe) - CODEC_SECTIONS:
            raise ValueError(f"unknown codec recipe sections {sorted(set(recipe) - CODEC_SECTIONS)}; "
                             f"known: {sorted(CODEC_SECTIONS)}")
    except ValueError as err:
        raise ValueError(f"{where}: {err}") from None
    return recipe


def _check_overrides(base: dict[str, Any], recipe: dict[str, Any], overrides: list[str],
                     schema: dict[str, Any]) -> None:
    """An override of a key without a declared type keeps the type of the value it replaces (an int may replace a
    float); a declared key, a null or an absent value is checked against the section's types instead (so
    `segment_seconds: 30` takes `--set data.segment_seconds=0.5`)."""
    for item in overrides:
        dotted = item.split("=", 1)[0].strip()
        old, new = _lookup(base, dotted), _lookup(recipe, dotted)
        if old is _MISSING or old is None or new is None or _declared(schema, dotted):
            continue
        if isinstance(old, float) and isinstance(new, str) and _EXPONENT_NUMBER.match(new.strip()):
            new = float(new)
            _store(recipe, dotted, new)
        if not _same_kind(old, new):
            raise ValueError(f"--set {item}: {dotted} must be {_describe_value(old)} like the value it replaces "
                             f"({old!r}), got {new!r}")


def _declared(schema: dict[str, Any], dotted: str) -> bool:
    """Whether the schema gives `dotted` a type (top-level keys, a section's keys, a dataclass section's fields)."""
    section, _, key = dotted.rpartition(".")
    spec = schema.get(section)
    return spec is not None and "." not in section and key in _fields(spec)


def _same_kind(old: Any, new: Any) -> bool:
    if isinstance(old, bool) or isinstance(new, bool):
        return isinstance(old, bool) and isinstance(new, bool)
    if isinstance(old, float):
        return isinstance(new, (int, float))
    if isinstance(old, int):
        return isinstance(new, int)
    if isinstance(old, (list, tuple)):
        return isinstance(new, (list, tuple))
    return isinstance(new, type(old))


def _check_keys(section: str, node: dict[str, Any], spec: Any, extra: set[str] = frozenset()) -> None:
    known = set(_fields(spec)) | set(extra)
    unknown = sorted(set(node) - known)
    if unknown:
        raise ValueError(f"unknown keys in section {section!r}: {unknown}; known: {sorted(known)}")


def _fields(spec: Any) -> dict[str, Any]:
    """key -> type of a dataclass or a type table."""
    if dataclasses.is_dataclass(spec):
        hints = typing.get_type_hints(spec)
        return {f.name: hints[f.name] for f in dataclasses.fields(spec)}
    return spec


def _check_values(path: str, node: dict[str, Any], spec: Any) -> None:
    """Every key of `node` with a known type has that type (nested dataclass sections included)."""
    fields = _fields(spec)
    for key, value in list(node.items()):
        if key not in fields:
            continue
        dotted = f"{path}.{key}" if path else key
        hint = fields[key]
        if isinstance(value, str) and _accepts_number(hint) and _EXPONENT_NUMBER.match(value.strip()):
            node[key] = value = float(value)
        if dataclasses.is_dataclass(hint) and isinstance(value, dict):
            _check_keys(dotted, value, hint)
            _check_values(dotted, value, hint)
            continue
        if not _matches(value, hint):
            raise ValueError(f"{dotted} must be {_describe_type(hint)}, got {value!r} ({type(value).__name__})")
        if isinstance(value, float) and not math.isfinite(value):
            raise ValueError(f"{dotted} must be a finite number, got {value!r}")


def _accepts_number(hint: Any) -> bool:
    return hint is float or any(_accepts_number(a) for a in typing.get_args(hint)
                                if typing.get_origin(hint) in (Union, types.UnionType))


def _matches(value: Any, hint: Any) -> bool:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is Any:
        return True
    if origin in (Union, types.UnionType):
        return any(_matches(value, a) for a in args)
    if hint is type(None):
        return value is None
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if origin in (tuple, list) or hint in (tuple, list):
        if not isinstance(value, (list, tuple)):
            return False
        if origin is tuple and args and args[-1] is not Ellipsis:
            return len(value) == len(args) and all(_matches(v, a) for v, a in zip(value, args))
        return not args or all(_matches(v, args[0]) for v in value)
    if origin is dict or hint is dict:
        return isinstance(value, dict) and (not args or all(_matches(v, args[1]) for v in value.values()))
    if dataclasses.is_dataclass(hint):
        return isinstance(value, (dict, hint))
    return isinstance(value, hint) if isinstance(hint, type) else True


def _describe_type(hint: Any) -> str:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (Union, types.UnionType):
        words = [_describe_type(a) for a in args if a is not type(None)]
        return " or ".join(dict.fromkeys(words)) + (" or null" if type(None) in args else "")
    if hint is float:
        return "a number"
    if hint is int:
        return "an integer"
    if hint is bool:
        return "true or false"
    if hint is str:
        return "a string"
    if origin is tuple and args and args[-1] is not Ellipsis:
        return f"a list of {len(args)} values"
    if origin in (tuple, list) and args:
        return f"a list of {_describe_type(args[0]).removeprefix('a ').removeprefix('an ')}s"
    if origin in (tuple, list) or hint in (tuple, list):
        return "a list"
    if origin is dict and args[1] is not Any:
        return f"a mapping whose values are {_describe_type(args[1]).removeprefix('a ').removeprefix('an ')}s"
    if origin is dict or hint is dict or dataclasses.is_dataclass(hint):
        return "a mapping"
    return getattr(hint, "__name__", str(hint))


def _describe_value(value: Any) -> str:
    return _describe_type(list if isinstance(value, tuple) else type(value))


def _check_bound(recipe: dict[str, Any], dotted: str, low: float, inclusive: bool) -> None:
    value = _lookup(recipe, dotted)
    if value is _MISSING or value is None or isinstance(value, bool) or not isinstance(value, (int, float)):
        return
    if not (value >= low if inclusive else value > low):
        raise ValueError(f"{dotted} must be {'>=' if inclusive else '>'} {low}, got {value!r}")


_MISSING = object()


def _store(recipe: dict[str, Any], dotted: str, value: Any) -> None:
    *parents, leaf = dotted.split(".")
    node = recipe
    for key in parents:
        node = node[key]
    node[leaf] = value


def _lookup(recipe: dict[str, Any], dotted: str) -> Any:
    node: Any = recipe
    for key in dotted.split("."):
        if not isinstance(node, dict) or key not in node:
            return _MISSING
        node = node[key]
    return node
