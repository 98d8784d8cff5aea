"""The recipe's `method:` and `objective:` sections: one small config class per method and per
objective, joined as pydantic discriminated unions on `name` (the PEFT shape: `LoraConfig`,
`IA3Config`, ...). A key the chosen method/objective does not have is rejected.

`MethodConfig(name=..., **keys)` / `ObjectiveConfig(...)` build the chosen member from the flat
keyword arguments earlier versions took (keys of *other* members are dropped there, unknown keys
still raise); recipes are strict. `normalize_section` lets an old run's recipe (every flat
key, with defaults) load.
"""
from __future__ import annotations

from typing import Annotated, Any, ClassVar, Literal, Union

from pydantic import BaseModel, ConfigDict, Field


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)
    names: ClassVar[tuple[str, ...]] = ()     # the `name` values this class configures
    section: ClassVar[str] = ""               # "method" or "objective"

    @classmethod
    def keys(cls) -> list[str]:
        """The keys this member accepts (its `name` included), sorted."""
        return sorted(cls.model_fields)


# ------------------------------------------------------------------------------------ methods

class BaseMethodConfig(_Section):
    """Common base of every method's config (`name` is the discriminator)."""
    section: ClassVar[str] = "method"


_TARGETS = Field("auto", description="Modules LoRA wraps; `auto` = all attention and MLP projections.")


class LoraMethodConfig(BaseMethodConfig):
    """lora, dora (plus a learned magnitude) and rslora (alpha / sqrt(r) scaling)."""
    names: ClassVar[tuple[str, ...]] = ("lora", "dora", "rslora")
    name: Literal["lora", "dora", "rslora"] = Field("lora", description="Fine-tuning method.")
    r: int = Field(16, ge=1, le=1024, description="LoRA rank.")
    alpha: float = Field(32, gt=0, le=65536, description="LoRA alpha (scale = alpha / r).")
    dropout: float = Field(0.05, ge=0, lt=1, description="LoRA dropout.")
    target_modules: list[str] | Literal["auto"] = _TARGETS
    init_from: str | None = Field(
        None, description="Start from this saved adapter folder (trainable) instead of a fresh one; set by "
                          "`tunesmith continue` to the parent version's adapter (its r/alpha/targets apply).")


class IA3MethodConfig(BaseMethodConfig):
    names: ClassVar[tuple[str, ...]] = ("ia3",)
    name: Literal["ia3"] = Field("ia3", description="Fine-tuning method.")
    target_modules: list[str] | Literal["auto"] = Field(
        "auto", description="Modules (IA)^3 rescales; `auto` = key/value and MLP down projections.")


class PromptTuningMethodConfig(BaseMethodConfig):
    names: ClassVar[tuple[str, ...]] = ("prompt_tuning",)
    name: Literal["prompt_tuning"] = Field("prompt_tuning", description="Fine-tuning method.")
    num_virtual_tokens: int = Field(16, ge=1, le=512, description="Virtual tokens of the soft prompt.")
    prompt_init_text: str | None = Field(
        None, description="Initialise the soft prompt from this text (random when null).")


class PrefixTuningMethodConfig(BaseMethodConfig):
    names: ClassVar[tuple[str, ...]] = ("prefix_tuning",)
    name: Literal["prefix_tuning"] = Field("prefix_tuning", description="Fine-tuning method.")
    num_virtual_tokens: int = Field(16, ge=1, le=512, description="Virtual tokens of every layer's prefix.")


class AdapterMethodConfig(BaseMethodConfig):
    names: ClassVar[tuple[str, ...]] = ("adapter",)
    name: Literal["adapter"] = Field("adapter", description="Fine-tuning method.")
    adapter_size: int = Field(32, ge=1, le=65536, description="Bottleneck width of each adapter.")


class FreezeMethodConfig(BaseMethodConfig):
    names: ClassVar[tuple[str, ...]] = ("freeze",)
    name: Literal["freeze"] = Field("freeze", description="Fine-tuning method.")
    top_k_layers: int = Field(2, ge=0, le=4096, description="Number of top blocks trained (plus final norm "
                                                            "and head).")


class BitFitMethodConfig(BaseMethodConfig):
    names: ClassVar[tuple[str, ...]] = ("bitfit",)
    name: Literal["bitfit"] = Field("bitfit", description="Fine-tuning method (biases and norms only).")


class SparseMethodConfig(BaseMethodConfig):
    names: ClassVar[tuple[str, ...]] = ("sparse",)
    name: Literal["sparse"] = Field("sparse", description="Fine-tuning method.")
    sparse_fraction: float = Field(0.01, gt=0, le=1, description="Fraction of weights trained.")
    sparse_selection: Literal["gradient", "magnitude", "random"] = Field(
        "gradient", description="How weights are chosen (gradient = largest |grad| on a calibration batch).")


class FullMethodConfig(BaseMethodConfig):
    names: ClassVar[tuple[str, ...]] = ("full",)
    name: Literal["full"] = Field("full", description="Fine-tuning method (every weight trained).")


METHOD_CONFIGS: dict[str, type[BaseMethodConfig]] = {
    n: cls for cls in (LoraMethodConfig, IA3MethodConfig, PromptTuningMethodConfig, PrefixTuningMethodConfig,
                       AdapterMethodConfig, FreezeMethodConfig, BitFitMethodConfig, SparseMethodConfig,
                       FullMethodConfig) for n in cls.names}
METHOD_NAMES = tuple(METHOD_CONFIGS)

MethodSection = Annotated[Union[tuple(dict.fromkeys(METHOD_CONFIGS.values()))], Field(discriminator="name")]


# ------------------------------------------------------------------------------------ objectives

TRAIN_ONLY = {"train_only": True}
"""Marks an objective setting that changes only training, never how the base model is evaluated (so it stays
out of the evaluation cache's key)."""


def evaluation_settings(section: _Section) -> dict:
    """``section``'s settings without those marked ``TRAIN_ONLY`` (what the base model's evaluation depends on)."""
    fields = type(section).model_fields
    return {k: v for k, v in section.model_dump(mode="json").items()
            if not (k in fields and (fields[k].json_schema_extra or {}).get("train_only"))}


class BaseObjectiveConfig(_Section):
    """Common base of every objective's config (`name` is the discriminator)."""
    section: ClassVar[str] = "objective"

    @classmethod
    def default_for(cls, raw: dict) -> bool:
        """Whether a recipe (its raw mapping) that names no objective trains this one; `sft` when none claims it."""
        return False


class SFTObjectiveConfig(BaseObjectiveConfig):
    names: ClassVar[tuple[str, ...]] = ("sft",)
    name: Literal["sft"] = Field("sft", description="Training objective (loss function).")
    label_smoothing: float = Field(0.0, ge=0, lt=1, description="Label smoothing of the cross-entropy.")
    neftune_alpha: float | None = Field(None, gt=0, le=1000, description="NEFTune embedding-noise scale (e.g. 5).",
                                        json_schema_extra=TRAIN_ONLY)


class ClassificationObjectiveConfig(BaseObjectiveConfig):
    names: ClassVar[tuple[str, ...]] = ("classification",)
    name: Literal["classification"] = Field("classification", description="Training objective: a label head.")
    head_init: Literal["probe", "random"] = Field(
        "probe", description="`probe`: the head starts as a logistic regression on the frozen base's features of "
                             "up to `probe_examples` training examples; `random`: small random weights.",
        json_schema_extra=TRAIN_ONLY)
    probe_examples: int = Field(1024, ge=8, le=100_000, description="Training examples the starting probe fits on "
                                                                    "(under train.time_budget, those done in half of it).",
                                json_schema_extra=TRAIN_ONLY)

    @classmethod
    def default_for(cls, raw: dict) -> bool:
        """`task: classification` under `train.time_budget` trains a head, unless the recipe asks for what only a
        model answering in text gives or what the head does not combine with: a merged model or GGUF files
        (`export.merged: true`, `export.gguf` given), plain-text replay, packing, a multi-task `mix`, or a
        continuation (`model.from`: the parent's objective). Evidence (2-core CPU, 5-minute budget): the bench's
        16-label router 36.5-42.2% with the head against 9.9-15.6% with SFT, spam 98.0% against 23.0%, the demo's
        sentiment task within the noise of SFT. Without a budget a run trains its whole epochs, and there SFT
        did better on sentiment (83.8-85.1% against 78.5%): sft stays the default."""
        def section(name: str) -> dict:
            value = raw.get(name)
            return value if isinstance(value, dict) else {}
        export, data, model, train = section("export"), section("data"), section("model"), section("train")
        return (raw.get("task") == "classification" and train.get("time_budget") is not None
                and not export.get("merged") and not export.get("gguf")
                and not section("forgetting").get("replay") and not data.get("packing") and not data.get("mix")
                and not (model.get("from") or model.get("from_")))


class PreferenceObjectiveConfig(BaseObjectiveConfig):
    """dpo and orpo."""
    names: ClassVar[tuple[str, ...]] = ("dpo", "orpo")
    name: Literal["dpo", "orpo"] = Field("dpo", description="Training objective (loss function).")
    beta: float = Field(0.1, gt=0, le=1000, description="dpo: KL strength; orpo: weight of the odds-ratio term.")


class DistillObjectiveConfig(BaseObjectiveConfig):
    names: ClassVar[tuple[str, ...]] = ("distill",)
    name: Literal["distill"] = Field("distill", description="Training objective (loss function).")
    teacher: str | None = Field(None, description="Teacher model (default: the recipe's model).")
    student: str = Field("half", description="`half` (teacher with every other block) or a model with the "
                                             "same tokenizer.")
    kd: Literal["response", "feature", "both"] = Field("response", description="What is matched.")
    temperature: float = Field(2.0, gt=0, le=100, description="Softmax temperature of the KL term.")
    kd_weight: float = Field(0.5, ge=0, le=1, description="Weight of the KL term vs the hard-label loss.")
    feature_weight: float = Field(1.0, ge=0, le=1000, description="Weight of the hidden-state matching loss.")


OBJECTIVE_CONFIGS: dict[str, type[BaseObjectiveConfig]] = {
    n: cls for cls in (SFTObjectiveConfig, ClassificationObjectiveConfig, PreferenceObjectiveConfig,
                       DistillObjectiveConfig) for n in cls.names}
OBJECTIVE_NAMES = tuple(OBJECTIVE_CONFIGS)

ObjectiveSection = Annotated[Union[tuple(dict.fromkeys(OBJECTIVE_CONFIGS.values()))],
                             Field(discriminator="name")]

FAMILIES: dict[str, tuple[dict[str, type[_Section]], str]] = {
    "method": (METHOD_CONFIGS, "lora"), "objective": (OBJECTIVE_CONFIGS, "sft")}

# The flat sections of earlier versions, as every old run's recipe holds them (all keys, these
# defaults). Frozen here on purpose: a later change of a default must not break old runs.
LEGACY_DEFAULTS: dict[str, dict[str, Any]] = {
    "method": {"r": 16, "alpha": 32, "dropout": 0.05, "target_modules": "auto", "top_k_layers": 2,
               "num_virtual_tokens": 16, "prompt_init_text": None, "adapter_size": 32,
               "sparse_fraction": 0.01, "sparse_selection": "gradient"},
    "objective": {"label_smoothing": 0.0, "neftune_alpha": None, "beta": 0.1, "teacher": None,
                  "student": "half", "kd": "response", "temperature": 2.0, "kd_weight": 0.5,
                  "feature_weight": 1.0},
}


def config_class(section: str, name: str) -> type[_Section] | None:
    """The config class of method/objective ``name`` (``section`` is "method" or "objective")."""
    return FAMILIES[section][0].get(name)


def _same(a: Any, b: Any) -> bool:
    """Equal and of the same kind (32 == 32.0 counts; True == 1 does not)."""
    if isinstance(a, bool) or isinstance(b, bool):
        return a is b
    return a == b and (type(a) is type(b) or all(isinstance(x, (int, float)) for x in (a, b)))


def normalize_section(section: str, value: Any, *, legacy: bool = False) -> Any:
    """``value`` (a raw `method`/`objective` mapping) with its `name` defaulted and old-version leftovers dropped.

    A mapping that holds every flat key of earlier versions is an old run's recipe: its keys
    that the chosen member lacks are dropped when they still have their old default. With
    ``legacy=True`` every flat key of earlier versions that the chosen member lacks is dropped,
    whatever its value (earlier versions ignored it). Anything else stays, so validation rejects it.
    """
    members, default = FAMILIES[section]
    if not isinstance(value, dict):
        return value
    value = dict(value)
    value.setdefault("name", default)
    chosen = members.get(value["name"]) if isinstance(value["name"], str) else None
    if chosen is None:
        return value
    old = LEGACY_DEFAULTS[section]
    foreign = [k for k in value if k not in chosen.model_fields and k in old]
    if legacy:
        drop = set(foreign)
    elif set(old) <= set(value):
        drop = {k for k in foreign if _same(value[k], old[k])}
    else:
        return value
    return {k: v for k, v in value.items() if k not in drop}


class _Family(type):
    """Metaclass of `MethodConfig`/`ObjectiveConfig`: calling one builds the chosen member's class."""

    def __call__(cls, name: str | None = None, **keys):
        members, default = FAMILIES[cls.section]
        name = default if name is None else name
        member = members.get(name)
        if member is None:
            raise ValueError(f"unknown {cls.section} {name!r}; expected one of: {', '.join(members)}")
        flat = {k for m in members.values() for k in m.model_fields}
        return member(name=name, **{k: v for k, v in keys.items() if k in member.model_fields or k not in flat})

    def __instancecheck__(cls, obj) -> bool:
        return isinstance(obj, cls.base)

    @property
    def model_fields(cls) -> dict:
        """Every member's fields, flat (the first member that has a key wins): for default look-ups."""
        out: dict = {}
        for member in dict.fromkeys(FAMILIES[cls.section][0].values()):
            for k, f in member.model_fields.items():
                out.setdefault(k, f)
        return out


class MethodConfig(metaclass=_Family):
    """``MethodConfig(name="lora", r=8)`` -> a `LoraMethodConfig` (any member: ``isinstance`` holds)."""
    section = "method"
    base = BaseMethodConfig


class ObjectiveConfig(metaclass=_Family):
    """``ObjectiveConfig(name="dpo", beta=0.2)`` -> a `PreferenceObjectiveConfig`."""
    section = "objective"
    base = BaseObjectiveConfig
