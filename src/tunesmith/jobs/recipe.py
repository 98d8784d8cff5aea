"""Fine-tuning job settings -> a tunesmith recipe: method, hyperparameters ("auto" resolved), template merge."""
from __future__ import annotations

import math
from typing import Any

from ..config import TrainConfig, load_recipe, merge_settings
from ..config_methods import config_class
from ..errors import TunesmithError
from .errors import bad_request
from .settings import deep_merge

METHOD_TYPES = ("supervised", "dpo", "reinforcement")
# hyperparameter -> (kind, low, high, low inclusive); beta only for dpo
HYPERPARAMETER_LIMITS: dict[str, tuple[type, float, float, bool]] = {
    "n_epochs": (int, 1, 50, True),
    "batch_size": (int, 1, 256, True),
    "learning_rate_multiplier": (float, 0, math.inf, False),
    "beta": (float, 0, 2, False),
}
JOB_HYPERPARAMETERS = ("batch_size", "learning_rate_multiplier", "n_epochs")


def parse_method(body: dict) -> tuple[str, dict, str]:
    """(method type, requested hyperparameters, their parameter path) from `method` / `hyperparameters`."""
    legacy = body.get("hyperparameters")
    if legacy is not None and not isinstance(legacy, dict):
        raise bad_request("'hyperparameters' must be an object", param="hyperparameters")
    method = body.get("method")
    if method is None:
        return "supervised", dict(legacy or {}), "hyperparameters"
    if not isinstance(method, dict):
        raise bad_request("'method' must be an object with 'type'", param="method")
    kind = method.get("type")
    if kind not in METHOD_TYPES:
        raise bad_request(f"Invalid value for 'method.type': {kind!r}; expected 'supervised' or 'dpo'",
                          param="method.type")
    if kind == "reinforcement":
        raise bad_request("method 'reinforcement' is not supported by this server; use 'supervised' or 'dpo'",
                          param="method.type", code="unsupported_method")
    section = method.get(kind) or {}
    if not isinstance(section, dict):
        raise bad_request(f"'method.{kind}' must be an object", param=f"method.{kind}")
    hp = section.get("hyperparameters") or {}
    if not isinstance(hp, dict):
        raise bad_request(f"'method.{kind}.hyperparameters' must be an object",
                          param=f"method.{kind}.hyperparameters")
    if hp and legacy:
        raise bad_request("hyperparameters given both in 'method' and at the top level; use 'method'",
                          param="hyperparameters")
    if legacy and not hp:
        return kind, dict(legacy), "hyperparameters"
    return kind, dict(hp), f"method.{kind}.hyperparameters"


def check_hyperparameters(hp: dict, kind: str, where: str) -> dict:
    """Each value "auto" or a number in range; unknown names rejected. Returns the checked dict."""
    allowed = JOB_HYPERPARAMETERS + (("beta",) if kind == "dpo" else ())
    out = {}
    for name, value in hp.items():
        param = f"{where}.{name}"
        if name not in allowed:
            raise bad_request(f"Unknown hyperparameter '{name}' for method '{kind}'; expected one of "
                              f"{', '.join(allowed)}", param=param)
        if value == "auto" or value is None:
            out[name] = "auto"
            continue
        typ, lo, hi, lo_incl = HYPERPARAMETER_LIMITS[name]
        ok_type = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
        if typ is int and ok_type and float(value).is_integer():
            value = int(value)
        elif typ is int:
            ok_type = False
        if not ok_type or value > hi or (value < lo if lo_incl else value <= lo):
            span = f"an integer from {lo:g} to {hi:g}" if typ is int else \
                f"a number {'>=' if lo_incl else '>'} {lo:g}" + (f" and <= {hi:g}" if hi != math.inf else "")
            raise bad_request(f"Invalid value for '{name}': {value!r}; expected \"auto\" or {span}",
                              param=param, code="invalid_hyperparameter")
        out[name] = value
    return out


def auto_epochs(n_examples: int) -> int:
    """OpenAI's documented default: 3 epochs, more for tiny sets, fewer for huge ones."""
    n = max(1, n_examples)
    if n * 3 < 100:
        return min(25, 100 // n)
    if n * 3 > 25000:
        return max(1, 25000 // n)
    return 3


def resolve(template: dict, kind: str, hp: dict, n_examples: int) -> dict:
    """Replace "auto" by concrete values: the template's, else OpenAI's epoch rule / tunesmith defaults."""
    train = template.get("train", {})
    out = {
        "n_epochs": hp.get("n_epochs", "auto"),
        "batch_size": hp.get("batch_size", "auto"),
        "learning_rate_multiplier": hp.get("learning_rate_multiplier", "auto"),
    }
    if out["n_epochs"] == "auto":
        epochs = train.get("epochs")
        out["n_epochs"] = epochs if epochs is not None else auto_epochs(n_examples)
    if out["batch_size"] == "auto":
        out["batch_size"] = train.get("batch_size", TrainConfig.model_fields["batch_size"].default)
    if out["learning_rate_multiplier"] == "auto":
        out["learning_rate_multiplier"] = 1.0
    if kind == "dpo":
        beta = hp.get("beta", "auto")
        out["beta"] = template.get("objective", {}).get("beta", config_class("objective", "dpo").model_fields["beta"].default) \
            if beta == "auto" else beta
    return out


def base_lr(template: dict) -> float:
    return float(template.get("train", {}).get("lr", TrainConfig.model_fields["lr"].default))


def job_recipe(template: dict, *, job_id: str, model: str, kind: str, data_format: str, hp: dict,
               seed: int, where: str = "hyperparameters") -> dict:
    """The job's recipe (all but data paths and output folder), validated against the recipe schema."""
    lr = base_lr(template) * float(hp["learning_rate_multiplier"])
    if lr >= 1:
        raise bad_request(f"learning_rate_multiplier {hp['learning_rate_multiplier']} gives a learning rate of "
                          f"{lr:g}; expected a learning rate below 1 (the base rate is {base_lr(template):g})",
                          param=f"{where}.learning_rate_multiplier", code="invalid_hyperparameter")
    objective: dict[str, Any] = {"name": "dpo", "beta": hp["beta"]} if kind == "dpo" else {"name": "sft"}
    recipe = merge_settings(template, {
        "name": job_id, "task": "preference" if kind == "dpo" else "sft",
        "model": {"name": model},
        "data": {"format": data_format},
        "objective": objective,
        "train": {"epochs": hp["n_epochs"], "batch_size": hp["batch_size"], "lr": lr, "seed": seed},
    })
    try:
        load_recipe(deep_merge(recipe, {"data": {"train": "training.jsonl"}}))
    except TunesmithError as e:
        raise bad_request(f"the job's settings do not make a valid recipe: {e}", param=where,
                          code="invalid_hyperparameter") from None
    return recipe


def check_template(template: dict) -> None:
    """Raise TunesmithError if a deployer's template cannot make a valid recipe."""
    load_recipe(deep_merge(template, {"data": {"train": "training.jsonl"}}))


def run_recipe(recipe: dict, *, train_path: str, validation_path: str | None, output_dir: str) -> dict:
    """The stored job recipe completed with the uploaded files and the worker's run folder."""
    data: dict[str, Any] = {"train": train_path}
    if validation_path:
        data["validation"] = validation_path
    return deep_merge(recipe, {"data": data, "output_dir": output_dir})
