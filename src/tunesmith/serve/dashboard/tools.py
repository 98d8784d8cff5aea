"""What the dashboard's data, new-job and playground pages compute: a data file's validation report and its
first training batch as the model sees it (chat template applied, trained tokens marked), the job form's
fields, and a pasted recipe's check. Called from worker threads (tokenizers and validation take seconds)."""
from __future__ import annotations

import functools
import math
import os
import re
import tempfile
from pathlib import Path

import yaml

from ...errors import TunesmithError

UPLOAD_MAX_BYTES = 32 * 1024 * 1024       # largest data file the data page accepts (multipart body)
DATA_SUFFIXES = (".jsonl", ".json", ".csv", ".parquet", ".jsonl.gz", ".jsonl.bz2", ".csv.gz", ".csv.bz2")
MAX_PREVIEW_EXAMPLES = 16                 # examples shown of the first batch
RECIPE_MAX_CHARS = 200_000


def data_suffix(filename: str) -> str:
    """The data-format suffix of an uploaded file's name (format detection needs it)."""
    name = (filename or "").lower()
    for suffix in sorted(DATA_SUFFIXES, key=len, reverse=True):
        if name.endswith(suffix):
            return suffix
    raise TunesmithError(f"unsupported data file {filename!r}; expected one of {', '.join(DATA_SUFFIXES)}",
                         file=filename or None)


def scratch_file(folder: Path, suffix: str) -> Path:
    """A new empty file in the dashboard's own temporary folder."""
    folder.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=folder, prefix="data-", suffix=suffix)
    os.close(fd)
    return Path(name)


def recipe_for(data_path: Path, model: str, run_recipe: Path | None):
    """The recipe validation and the batch preview use: a run's recipe with its training file swapped for
    ``data_path`` (its other given files left out), or the server's base model with defaults."""
    from ...config import load_recipe
    if run_recipe is None:
        return load_recipe({"model": {"name": model}, "data": {"train": str(data_path)}})
    try:
        raw = yaml.load(run_recipe.read_text(encoding="utf-8"), Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    except (OSError, yaml.YAMLError) as e:
        raise TunesmithError(f"cannot read the run's recipe ({str(e).splitlines()[0]})", file=str(run_recipe))
    if not isinstance(raw, dict):
        raise TunesmithError("the run's recipe is not a mapping", file=str(run_recipe))
    data = dict(raw.get("data") or {})
    data["train"] = str(data_path)
    for key in ("validation", "test"):
        data.pop(key, None)
    raw = {**raw, "data": data}
    raw.pop("output_dir", None)
    return load_recipe(raw, legacy=True)


@functools.lru_cache(maxsize=4)
def _tokenizer(resolved: str):
    from transformers import AutoTokenizer
    return AutoTokenizer.from_pretrained(resolved)


def tokenizer_for(model: str):
    from ... import models
    return _tokenizer(str(models.resolve(model)))


def first_batch(recipe, data_path: Path) -> dict:
    """The first ``train.batch_size`` examples of the file, tokenised as training tokenises them: each token
    as (text, trained) with trained = its label is not IGNORE (the loss is computed on it)."""
    from ...data.clean import clean_example
    from ...data.formats import parse_file
    from ...data.pii import anonymize_example
    from ...data.tokenize import IGNORE, tokenize_example
    tok = tokenizer_for(recipe.model.name)
    size = min(recipe.train.batch_size, MAX_PREVIEW_EXAMPLES)
    parsed = parse_file(recipe.data, str(data_path), sample=False)
    clean = recipe.data.clean
    out = []
    for ex in parsed.examples:
        if len(out) == size:
            break
        ex = clean_example(ex, strip_html=clean.strip_html, normalize=clean.normalize)   # as `data prepare` cleans
        if clean.anonymize_pii:
            ex, _ = anonymize_example(ex)
        seq = tokenize_example(ex, tok, recipe.data.max_length)
        if seq is None:
            continue
        tokens = [(tok.decode([i]), label != IGNORE) for i, label in zip(seq.input_ids, seq.labels)]
        out.append({"line": ex.line, "tokens": tokens, "length": seq.length, "trained": seq.n_trained,
                    "truncated": seq.truncated})
    return {"examples": out, "batch_size": recipe.train.batch_size, "max_length": recipe.data.max_length,
            "model": recipe.model.name}


def check_data(data_path: Path, model: str, run_recipe: Path | None) -> dict:
    """Validation report (``tunesmith.pipeline.validate`` with token statistics) and the first batch."""
    from ... import pipeline
    recipe = recipe_for(data_path, model, run_recipe)
    report = pipeline.validate(str(data_path), recipe=recipe, with_tokens=True)
    return {"report": report, "batch": first_batch(recipe, data_path)}


# ---------------------------------------------------------------------------- the new-job form

def job_fields() -> list[dict]:
    """The fine-tuning job form: name, label, kind, description, default, bounds (what the jobs API accepts;
    descriptions and defaults from the recipe's pydantic models where the job maps onto them)."""
    from ...config import TrainConfig
    from ...jobs.recipe import HYPERPARAMETER_LIMITS as lim     # (kind, low, high, low inclusive)
    fields = TrainConfig.model_fields

    def desc(name: str, extra: str = "") -> str:
        return ((fields[name].description or "") + extra).strip()
    return [
        {"name": "model", "label": "model", "kind": "text", "required": True,
         "help": "A base model the jobs API offers (the server's jobs configuration); an unknown name is "
                 "answered with the list of available ones."},
        {"name": "training_file", "label": "training file", "kind": "file", "required": True,
         "help": "An uploaded file with purpose fine-tune (chat 'messages', 'prompt'+'completion', or DPO pairs)."},
        {"name": "validation_file", "label": "validation file", "kind": "file", "required": False,
         "help": "Optional file evaluated during training."},
        {"name": "method", "label": "method", "kind": "choice", "choices": ["supervised", "dpo"],
         "default": "supervised", "help": "Supervised fine-tuning or direct preference optimisation."},
        {"name": "n_epochs", "label": "epochs (n_epochs)", "kind": "int", "min": lim["n_epochs"][1],
         "max": lim["n_epochs"][2], "step": 1,
         "help": desc("epochs", " Empty: auto (the server's template).")},
        {"name": "batch_size", "label": "batch size", "kind": "int", "min": lim["batch_size"][1],
         "max": lim["batch_size"][2], "step": 1,
         "help": desc("batch_size", " Empty: auto.")},
        {"name": "learning_rate_multiplier", "label": "learning-rate multiplier", "kind": "float", "min": 0,
         "step": "any", "help": f"Multiplies the template's peak learning rate (train.lr: "
                                f"{fields['lr'].description} default {fields['lr'].default:g}); > 0. Empty: auto."},
        {"name": "beta", "label": "beta (dpo only)", "kind": "float", "min": lim["beta"][1], "max": lim["beta"][2],
         "step": "any",
         "help": "DPO's KL strength, > 0 and <= 2. Empty: auto."},
        {"name": "suffix", "label": "suffix", "kind": "text", "required": False,
         "help": "Up to 64 letters, digits, '.', '_' or '-' added to the fine-tuned model's name."},
        {"name": "seed", "label": "seed", "kind": "int", "min": 0, "step": 1, "help": desc("seed")},
    ]


def _number(text: str):
    """A form value as the JSON the API expects: an int, a float, or the text as typed (so the API's own
    message names the bad value)."""
    text = text.strip()
    if re.fullmatch(r"[+-]?\d+", text):
        return int(text)
    try:
        value = float(text)
    except ValueError:
        return text
    return value if math.isfinite(value) else text


def job_body(form: dict) -> dict:
    """The jobs API's create body from the form's values (empty fields left out: the API's defaults)."""
    get = {k: (v.strip() if isinstance(v, str) else "") for k, v in form.items()}
    body: dict = {"model": get.get("model", ""), "training_file": get.get("training_file", "")}
    if get.get("validation_file"):
        body["validation_file"] = get["validation_file"]
    if get.get("suffix"):
        body["suffix"] = get["suffix"]
    if get.get("seed"):
        body["seed"] = _number(get["seed"])
    kind = get.get("method") or "supervised"
    names = ("n_epochs", "batch_size", "learning_rate_multiplier") + (("beta",) if kind == "dpo" else ())
    hp = {n: _number(get[n]) for n in names if get.get(n)}
    body["method"] = {"type": kind, kind: {"hyperparameters": hp}} if kind in ("supervised", "dpo") else {"type": kind}
    return body


def check_recipe(text: str, folder: Path) -> str:
    """Validate a pasted recipe YAML with ``tunesmith.config.load_recipe`` (the CLI's checks, relative paths
    against the dashboard's scratch folder); returns the resolved recipe as YAML, or raises TunesmithError."""
    from ...config import load_recipe
    if len(text) > RECIPE_MAX_CHARS:
        raise TunesmithError(f"the recipe is longer than {RECIPE_MAX_CHARS:,} characters")
    if not text.strip():
        raise TunesmithError("paste a recipe (YAML) first")
    path = scratch_file(folder, ".yaml")
    try:
        path.write_text(text, encoding="utf-8")
        recipe = load_recipe(path)
    finally:
        path.unlink(missing_ok=True)
    return yaml.safe_dump(recipe.model_dump(mode="json"), sort_keys=False, allow_unicode=True)


def one_line(err: BaseException) -> str:
    """An error as the one line the CLI prints (the scratch file's name shown as 'pasted recipe')."""
    text = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    return re.sub(r"\S*/data-[A-Za-z0-9_]+\.yaml", "pasted recipe", text)
