"""Typed recipes: one pydantic schema per task (`LMRecipe`, `CodecRecipe`), read once by `mgen fit`.

A recipe is one YAML file = one run. Why pydantic (v2): every key has one declared type and one default, an unknown
key or a wrong type fails before anything is built with the key path and what was expected, `--set a.b=v` goes
through the same validation, and `recipe_json_schema()` gives editors a JSON Schema for recipe files. The model
sections embed the config dataclasses the code already uses (`LMConfig`, `CodecConfig`, `ConditioningConfig`,
`LMTrainConfig`, `CodecTrainConfig`, `FSDPPlan`, `Retention`, `EMAConfig`, `EvalConfig`), so no field is declared
twice. The same knob has the same name in both tasks (`optim`, `trainer.max_steps`, `trainer.val_every_n_steps`,
`trainer.checkpoint_every_n_steps`, `ema.every_n_steps`, `logger`); keys of earlier versions fail with
"X was renamed to Y" (`RENAMED`), never as silent aliases.
"""

from __future__ import annotations

import copy
import dataclasses
import inspect
import math
import types
import typing
from pathlib import Path
from typing import Annotated, Any, Literal, Union

import yaml
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, NonNegativeInt, PositiveFloat, PositiveInt
from pydantic import ValidationError, model_validator

from mgen.codec.model import PRESETS as CODEC_PRESETS
from mgen.codec.model import CodecConfig
from mgen.conditioning.provider import ConditioningConfig
from mgen.lm.model import SIZE_PRESETS, LMConfig
from mgen.train.checkpoints import Retention
from mgen.train.codec_module import CodecTrainConfig
from mgen.train.ema import EMAConfig
from mgen.train.eval_metrics import EvalConfig
from mgen.train.lm_module import LMTrainConfig
from mgen.train.parallel import FSDPPlan

TASKS = ("lm", "codec")

# old key path -> new key path (None: removed, with the reason as the value of REMOVED)
RENAMED: dict[str, str] = {
    "train": "optim",  # codec recipes
    "logging": "logger",
    "trainer.max_updates": "trainer.max_steps",
    "trainer.val_every_n_updates": "trainer.val_every_n_steps",
    "trainer.val_every_n_batches": "trainer.val_every_n_steps",
    "trainer.checkpoint_every_n_updates": "trainer.checkpoint_every_n_steps",
    "ema.every_n_updates": "ema.every_n_steps",
    "optim.total_steps": "trainer.max_steps",
    "optim.max_updates": "trainer.max_steps",
    "optim.ema_decay": "ema.decay",
    "optim.ema_every": "ema.every_n_steps",
    "data.shards_dir": "data.shards",
    "model.quantizer.bins": "model.quantizer.card",
}
REMOVED: dict[str, str] = {
    "data.sample_rate": "a codec run reads audio at its model's sample rate (model.sample_rate)",
    "data.channels": "a codec run reads audio with its model's channels (model.channels)",
}


class RecipeError(ValueError):
    """A recipe that cannot be run: one line naming the file, the key path and the problem."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


# ------------------------------------------------------------------------------------------------ sections
class LoggerSection(_Section):
    """Where metrics go besides the run's CSV (`logs/`)."""

    wandb: bool = False
    project: str = "mgen"


class DataSection(_Section):
    """Training input. `global_batch_size` is the global batch: per-device batch and accumulation derive from the
    world size. `resampled`: shards drawn with replacement, epochs of `epoch_length` samples per rank."""

    shards: str | None = None
    segment_seconds: PositiveFloat
    global_batch_size: PositiveInt
    num_workers: NonNegativeInt = 2
    resampled: bool
    epoch_length: PositiveInt | None
    max_batch_per_device: PositiveInt | None = None


class LMData(DataSection):
    segment_seconds: PositiveFloat = 30.0
    global_batch_size: PositiveInt = 192
    resampled: bool = False
    epoch_length: PositiveInt | None = None
    chroma: bool = False  # token shards made with `mgen prep tokenize --chroma` (melody LMs)


class CodecData(DataSection):
    segment_seconds: PositiveFloat = 1.0
    global_batch_size: PositiveInt = 8
    resampled: bool = True
    epoch_length: PositiveInt | None = 1000


def _precision(value: Any) -> Any:
    """Lightning's names for what mgen trains with; `*-true` half precision is refused because it would store the
    weights, the optimiser state, checkpoints and exports in 16 bits."""
    if value in (32, "32"):
        return "32-true"
    if value in ("bf16-true", "16-true", "bf16", "16"):
        raise ValueError(f"{value!r} would keep the weights and the optimiser state in 16 bits (and write them so): "
                         "use bf16-mixed (autocast, fp32 weights) or 32-true")
    return value


Precision = Literal["32-true", "bf16-mixed", "16-mixed"]


class TrainerSection(_Section):
    """The run's length and rhythm, counted in optimiser steps (a codec step is one generator update)."""

    max_steps: PositiveInt = 1_000_000
    precision: Annotated[Precision, BeforeValidator(_precision)] = "32-true"
    tf32: bool = True  # fp32 matmuls and convolutions on Ampere+ GPUs use TF32 (no effect on CPUs)
    val_every_n_steps: PositiveInt | None = 200  # null: at every epoch end
    limit_val_batches: Union[NonNegativeInt, Annotated[float, Field(ge=0.0, le=1.0)]] = 4
    log_every_n_steps: PositiveInt = 10
    checkpoint_every_n_steps: PositiveInt = 500
    checkpoints: Retention = Field(default_factory=Retention)
    progress_bar: bool = True


class LMTrainer(TrainerSection):
    strategy: Literal["auto", "ddp", "fsdp"] = "auto"
    fsdp: FSDPPlan | None = None


class CodecTrainer(TrainerSection):
    val_every_n_steps: PositiveInt | None = 1000
    log_every_n_steps: PositiveInt = 50
    checkpoint_every_n_steps: PositiveInt = 1000


class SamplesSection(_Section):
    """Clips generated at validation from validation prompts, logged as audio + spectrograms (count 0: none)."""

    count: NonNegativeInt = 0
    seconds: PositiveFloat = 5.0
    every_n_validations: PositiveInt = 1
    cfg_coef: float = 3.0
    top_k: PositiveInt = 250
    temperature: PositiveFloat = 1.0


def _pop_preset(value: Any, presets: Any, what: str) -> tuple[str | None, Any]:
    """(preset name, the other fields) of a `model:` mapping; (None, value) without a preset."""
    if not isinstance(value, dict) or "preset" not in value:
        return None, value
    rest = dict(value)
    name = rest.pop("preset")
    if name not in presets:
        raise ValueError(f"unknown {what} preset {name!r}; choose one of {sorted(presets)}")
    return name, rest


def _expand_lm_preset(value: Any) -> Any:
    """`model: {preset: NAME, ...}`: the preset's sizes, then the section's fields."""
    name, rest = _pop_preset(value, SIZE_PRESETS, "LM")
    if name is None:
        return rest
    dim, heads, layers = SIZE_PRESETS[name]
    return {"dim": dim, "num_heads": heads, "num_layers": layers, **rest}


def _expand_codec_preset(value: Any) -> Any:
    """`model: {preset: NAME, ...}`: the preset's config, nested sections merged key by key."""
    name, rest = _pop_preset(value, CODEC_PRESETS, "codec")
    if name is None:
        return rest
    merged = CODEC_PRESETS[name]().to_dict()
    for key, item in rest.items():
        merged[key] = {**merged[key], **item} if isinstance(item, dict) and isinstance(merged.get(key), dict) else item
    return merged


def _lm_eval(value: Any) -> Any:
    return EvalConfig.from_section(value, "LM") if isinstance(value, dict) else value


def _codec_eval(value: Any) -> Any:
    return EvalConfig.from_section(value, "codec") if isinstance(value, dict) else value


class LMRecipe(_Section):
    """A text/melody-to-music LM run (`recipes/lm/*.yaml`, `recipes/quickstart/lm.yaml`)."""

    task: Literal["lm"]
    seed: int = 0
    codec: str | None = None  # codec export or .ckpt (default: the one that tokenized the data)
    model: Annotated[LMConfig, BeforeValidator(_expand_lm_preset)] = Field(default_factory=LMConfig)
    conditioning: ConditioningConfig = Field(default_factory=ConditioningConfig)
    optim: LMTrainConfig = Field(default_factory=LMTrainConfig)
    data: LMData = Field(default_factory=LMData)
    trainer: LMTrainer = Field(default_factory=LMTrainer)
    ema: EMAConfig = Field(default_factory=EMAConfig)
    samples: SamplesSection = Field(default_factory=SamplesSection)
    logger: LoggerSection = Field(default_factory=LoggerSection)
    eval: Annotated[EvalConfig | None, BeforeValidator(_lm_eval)] = None

    @model_validator(mode="after")
    def _consistent(self) -> "LMRecipe":
        trainer = self.trainer
        if trainer.fsdp is not None and trainer.strategy != "fsdp":
            raise ValueError(f"trainer.fsdp is set but trainer.strategy is {trainer.strategy!r}: set "
                             "trainer.strategy: fsdp")
        if trainer.strategy == "fsdp" and self.ema.decay:
            raise ValueError("trainer.strategy: fsdp does not support `ema:` (the weight average would need its own "
                             "sharded copy of the model): remove the ema section or use trainer.strategy: ddp")
        if trainer.strategy == "fsdp" and trainer.precision != "32-true":
            raise ValueError(f"trainer.strategy: fsdp keeps trainer.precision at 32-true (got "
                             f"{trainer.precision!r}); mixed precision comes from trainer.fsdp.param_dtype")
        if trainer.val_every_n_steps is None and self.data.resampled and self.data.epoch_length is None:
            raise ValueError("trainer.val_every_n_steps is null (validate at every epoch end), but data.resampled "
                             "without data.epoch_length never ends an epoch: set data.epoch_length or "
                             "trainer.val_every_n_steps")
        return self


class CodecRecipe(_Section):
    """A codec (audio tokenizer) run (`recipes/codec/*.yaml`)."""

    task: Literal["codec"]
    seed: int = 0
    model: Annotated[CodecConfig, BeforeValidator(_expand_codec_preset)] = Field(
        default_factory=lambda: CodecConfig.preset("tiny"))
    optim: CodecTrainConfig = Field(default_factory=CodecTrainConfig)
    data: CodecData = Field(default_factory=CodecData)
    trainer: CodecTrainer = Field(default_factory=CodecTrainer)
    ema: EMAConfig = Field(default_factory=lambda: EMAConfig(decay=0.99))
    logger: LoggerSection = Field(default_factory=LoggerSection)
    eval: Annotated[EvalConfig | None, BeforeValidator(_codec_eval)] = None

    @model_validator(mode="after")
    def _consistent(self) -> "CodecRecipe":
        if self.ema.start_step is not None:
            raise ValueError("ema.start_step is an LM recipe key: the codec's average starts at its first update")
        samples = int(self.data.segment_seconds * self.model.sample_rate)
        longest = max([1024, *(self.optim.disc_n_ffts if self.optim.adversarial else ())])
        if samples < longest:
            raise ValueError(f"data.segment_seconds {self.data.segment_seconds} ({samples} samples) is shorter than "
                             f"the longest STFT window ({longest}); use longer segments")
        return self


Recipe = Union[LMRecipe, CodecRecipe]
SCHEMAS: dict[str, type[BaseModel]] = {"lm": LMRecipe, "codec": CodecRecipe}


# ------------------------------------------------------------------------------------------------ reading
def read_yaml(path: str | Path) -> dict[str, Any]:
    """The mapping a recipe file holds; a missing file or bad YAML is a one-line error."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"recipe not found: {path}")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise RecipeError(f"{path}: not valid YAML: {' '.join(str(err).split())}") from None
    if not isinstance(data, dict):
        raise RecipeError(f"{path}: a recipe is a mapping of sections (task, model, optim, data, trainer, ...)")
    return data


def apply_overrides(raw: dict[str, Any], overrides: list[str], source: str | None = None) -> dict[str, Any]:
    """`section.key=value` overrides (values read as YAML) on a copy of the raw recipe."""
    raw = copy.deepcopy(raw)
    where = f"recipe {source}: " if source else ""
    for item in overrides:
        if "=" not in item:
            raise RecipeError(f"{where}--set {item!r} must look like section.key=value")
        dotted, value = item.split("=", 1)
        dotted = dotted.strip()
        _check_renamed(dotted, where=f"{where}--set {item}: ")
        node = raw
        *parents, leaf = dotted.split(".")
        for key in parents:
            child = node.get(key)
            if not isinstance(child, dict):
                child = node[key] = {}
            node = child
        node[leaf] = yaml.safe_load(value)
    return raw


def parse_recipe(raw: dict[str, Any], source: str | None = None) -> Recipe:
    """The typed recipe of a raw mapping; raises `RecipeError` (one line) naming `source`, the key path and what
    was expected."""
    where = f"recipe {source}: " if source else "recipe: "
    task = raw.get("task")
    if task not in SCHEMAS:
        raise RecipeError(f"{where}task must be one of {list(TASKS)}, got {task!r}")
    for dotted in _paths(raw):
        _check_renamed(dotted, where)
    schema = SCHEMAS[task]
    try:
        recipe = schema.model_validate(raw)
    except ValidationError as err:
        raise RecipeError(where + describe_errors(err, schema, task)) from None
    try:
        _check_finite(recipe, "")
    except ValueError as err:
        raise RecipeError(f"{where}{err}") from None
    return recipe


def load_recipe(recipe: str | Path | dict[str, Any], overrides: list[str] | None = None,
                data: str | Path | None = None) -> tuple[Recipe, dict]:
    """(typed recipe, raw mapping with the overrides applied) of a recipe file or mapping; `data` (`mgen fit --data`)
    replaces `data.shards` (set directly, not read as YAML: a path may contain `: `)."""
    source = None if isinstance(recipe, dict) else str(recipe)
    raw = recipe if isinstance(recipe, dict) else read_yaml(recipe)
    raw = apply_overrides(raw, overrides or [], source)
    if data is not None:
        raw["data"] = {**(raw.get("data") if isinstance(raw.get("data"), dict) else {}), "shards": str(data)}
    return parse_recipe(raw, source), raw


def _paths(node: dict[str, Any], prefix: str = "") -> list[str]:
    out = []
    for key, value in node.items():
        dotted = f"{prefix}{key}"
        out.append(dotted)
        if isinstance(value, dict):
            out.extend(_paths(value, dotted + "."))
    return out


def _check_renamed(dotted: str, where: str) -> None:
    if dotted in RENAMED:
        raise RecipeError(f"{where}{dotted} was renamed to {RENAMED[dotted]} (see README, 'Updating a recipe')")
    if dotted in REMOVED:
        raise RecipeError(f"{where}{dotted} was removed: {REMOVED[dotted]}")


def _check_finite(value: Any, path: str) -> None:
    """No nan / inf anywhere (the dataclass sections do not carry pydantic's allow_inf_nan)."""
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError(f"{path} must be a finite number, got {value!r}")
    if isinstance(value, BaseModel):
        items = ((name, getattr(value, name)) for name in type(value).model_fields)
    elif dataclasses.is_dataclass(value) and not isinstance(value, type):
        items = ((f.name, getattr(value, f.name)) for f in dataclasses.fields(value))
    elif isinstance(value, dict):
        items = value.items()
    elif isinstance(value, (list, tuple)):
        items = enumerate(value)
    else:
        return
    for key, item in items:
        _check_finite(item, f"{path}.{key}" if path else str(key))


# ------------------------------------------------------------------------------------------------ errors
def describe_errors(err: ValidationError, schema: type[BaseModel], task: str) -> str:
    """pydantic's errors as one line: `key.path: what was expected (got VALUE)`, one entry per key path."""
    messages: dict[str, list[str]] = {}
    got: dict[str, str] = {}
    for item in err.errors():
        keys = _key_path(schema, item["loc"])
        dotted = ".".join(str(k) for k in keys) or "(top level)"
        if item["type"] in ("extra_forbidden", "unexpected_keyword_argument"):
            messages[dotted] = [_unknown_key(schema, keys, task)]
            continue
        message = item["msg"].removeprefix("Value error, ")
        if keys and not message.startswith(dotted.split(".")[0]):  # a dataclass's own check names its key already
            message = f"{dotted}: {message}"
        seen = messages.setdefault(dotted, [])
        if seen:  # another branch of a union: "a valid string or integer"
            message = message.removeprefix(f"{dotted}: ").removeprefix("Input should be a valid ")
        if message not in seen:
            seen.append(message)
        if item["type"] != "value_error" and "input" in item and not isinstance(item["input"], (dict, BaseModel)):
            got[dotted] = f" (got {item['input']!r})"
    return "; ".join(" or ".join(parts) + got.get(dotted, "") for dotted, parts in messages.items())


def _unknown_key(schema: type[BaseModel], keys: list[Any], task: str) -> str:
    dotted = ".".join(str(k) for k in keys)
    other = next(t for t in TASKS if t != task)
    if _field_type(SCHEMAS[other], keys) is not None:
        return f"{dotted} is a key of {other} recipes, not of {task} recipes"
    parent = _field_type(schema, keys[:-1]) if len(keys) > 1 else schema
    known = sorted(_fields(parent)) if parent is not None else []
    if keys[:1] == ["model"] and len(keys) == 2:
        known = sorted([*known, "preset"])
    return f"unknown key {dotted}" + (f"; known: {', '.join(known)}" if known else "")


def _key_path(schema: type[BaseModel], loc: tuple[Any, ...]) -> list[Any]:
    """The recipe keys of an error location (pydantic adds union-branch and validator tags that are not keys)."""
    keys: list[Any] = []
    current: Any = schema
    for part in loc:
        fields = _fields(current)
        if isinstance(part, str) and part in fields:
            current = fields[part]
        elif isinstance(part, str) and fields and not _is_tag(part):
            current = None  # an unknown key of a section: the path ends here
        elif isinstance(part, str) and _is_mapping(current) or isinstance(part, int) and _is_sequence(current):
            current = _element(current)
        else:
            continue  # a union branch or validator tag
        keys.append(part)
        if current is None:
            break
    return keys


def _is_tag(part: str) -> bool:
    return "[" in part or part in ("str", "int", "float", "bool", "none", "list", "dict", "tuple")


def _field_type(schema: Any, keys: list[Any]) -> Any:
    current = schema
    for key in keys:
        fields = _fields(current)
        if key not in fields:
            return None
        current = fields[key]
    return current


def _unwrap(hint: Any) -> Any:
    """The section type inside Annotated / Optional / Union hints."""
    if typing.get_origin(hint) is Annotated:
        hint = typing.get_args(hint)[0]
    if typing.get_origin(hint) in (Union, types.UnionType):
        inner = [a for a in typing.get_args(hint) if a is not type(None)]
        structured = [a for a in inner if _is_structured(a) or _is_mapping(a) or _is_sequence(a)]
        return structured[0] if structured else inner[0]
    return hint


def _is_structured(hint: Any) -> bool:
    return isinstance(hint, type) and (issubclass(hint, BaseModel) or dataclasses.is_dataclass(hint))


def _fields(hint: Any) -> dict[str, Any]:
    hint = _unwrap(hint)
    if isinstance(hint, type) and issubclass(hint, BaseModel):
        return {name: info.annotation for name, info in hint.model_fields.items()}
    if isinstance(hint, type) and dataclasses.is_dataclass(hint):
        hints = typing.get_type_hints(hint)
        return {f.name: hints[f.name] for f in dataclasses.fields(hint)}
    return {}


def _is_mapping(hint: Any) -> bool:
    return typing.get_origin(_unwrap_annotated(hint)) is dict


def _is_sequence(hint: Any) -> bool:
    return typing.get_origin(_unwrap_annotated(hint)) in (list, tuple)


def _unwrap_annotated(hint: Any) -> Any:
    return typing.get_args(hint)[0] if typing.get_origin(hint) is Annotated else hint


def _element(hint: Any) -> Any:
    args = typing.get_args(_unwrap(hint))
    return args[-1] if args and args[-1] is not Ellipsis else (args[0] if args else None)


# ------------------------------------------------------------------------------------------------ reference
def recipe_json_schema(task: str) -> dict[str, Any]:
    """The JSON Schema of a task's recipes (for editors: `# yaml-language-server: $schema=...`)."""
    return SCHEMAS[task].model_json_schema(mode="validation")


def recipe_reference() -> str:
    """docs/recipes.md: every key of every task with its type and default, generated from the schema."""
    lines = ["# Recipe reference", "",
             "Generated from `mgen/train/recipe.py` by `python -m mgen.train.recipe > docs/recipes.md` (a test checks "
             "that it is current). A recipe is one YAML file = one run; `mgen fit RECIPE --set section.key=value` "
             "overrides any key through the same checks.", ""]
    for task, schema in SCHEMAS.items():
        lines += [f"## `task: {task}`", "", (schema.__doc__ or "").strip(), "",
                  "| key | type | default |", "|---|---|---|"]
        lines += _reference_rows(schema, "")
        lines.append("")
    lines += ["## Renamed keys", "", "| old | new |", "|---|---|"]
    lines += [f"| `{old}` | `{new}` |" for old, new in RENAMED.items()]
    lines += [f"| `{old}` | removed: {why} |" for old, why in REMOVED.items()]
    return "\n".join(lines) + "\n"


def _reference_rows(hint: Any, prefix: str, defaults: dict[str, Any] | None = None) -> list[str]:
    rows = []
    defaults = _defaults(hint) if defaults is None else defaults
    for name, field_hint in _fields(hint).items():
        dotted = f"{prefix}{name}"
        inner = _unwrap(field_hint)
        if _is_structured(inner):
            about = " ".join((inspect.getdoc(inner) or "").split("\n\n")[0].split())
            rows.append(f"| **`{dotted}`** | section | {about} |")
            if dotted == "model":
                rows.append(f"| `model.preset` | name | (none): {_preset_names(hint)} |")
            rows += _reference_rows(inner, dotted + ".", _values(defaults.get(name)))
            continue
        default = defaults.get(name, "(required)")
        rows.append(f"| `{dotted}` | {_type_name(field_hint)} | `{default}` |")
    return rows


def _values(instance: Any) -> dict[str, Any] | None:
    """The field values of a section's default instance (None: use the section type's own defaults)."""
    if isinstance(instance, BaseModel):
        return {name: getattr(instance, name) for name in type(instance).model_fields}
    if dataclasses.is_dataclass(instance) and not isinstance(instance, type):
        return {f.name: getattr(instance, f.name) for f in dataclasses.fields(instance)}
    return None


def _preset_names(schema: Any) -> str:
    return ", ".join(sorted(SIZE_PRESETS if schema is LMRecipe else CODEC_PRESETS))


def _defaults(hint: Any) -> dict[str, Any]:
    hint = _unwrap(hint)
    if isinstance(hint, type) and issubclass(hint, BaseModel):
        out = {}
        for name, info in hint.model_fields.items():
            if info.default_factory is None and info.is_required():
                continue
            out[name] = info.default_factory() if info.default_factory is not None else info.default
        return out
    if isinstance(hint, type) and dataclasses.is_dataclass(hint):
        out = {}
        for f in dataclasses.fields(hint):
            if f.default is not dataclasses.MISSING:
                out[f.name] = f.default
            elif f.default_factory is not dataclasses.MISSING:
                out[f.name] = f.default_factory()
        return out
    return {}


def _type_name(hint: Any) -> str:
    hint = _unwrap_annotated(hint)
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (Union, types.UnionType):
        return " \\| ".join(_type_name(a) for a in args)
    if origin is Literal:
        return " \\| ".join(repr(a) for a in args)
    if origin is not None:
        return f"{origin.__name__}[{', '.join(_type_name(a) for a in args)}]"
    if hint is type(None):
        return "null"
    return getattr(hint, "__name__", str(hint))


if __name__ == "__main__":
    print(recipe_reference(), end="")
