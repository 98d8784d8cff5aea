"""Settings of the files + fine-tuning jobs service, the job-recipe template, and the shared context."""
from __future__ import annotations

import copy
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ..errors import TunesmithError

# What every job's recipe starts from (the deployer's template is merged over it, then the job's
# own settings). Jobs train on the uploaded data as given: no held-out split, no cleaning that
# changes or drops examples, no slow extra evaluations; the worker fills in model, data paths,
# objective and hyperparameters.
DEFAULT_TEMPLATE: dict[str, Any] = {
    "data": {
        "split": {"validation": 0.0, "test": 0.0},
        "clean": {"normalize": False, "dedup": False, "near_dedup": False, "anonymize_pii": False},
    },
    "eval": {"compare_base": False, "baselines": []},
    "export": {"verify": False},
    "forgetting": {"general_text": None, "general_prompts": None},
    "tracking": {"mlflow": False},
}


def deep_merge(base: dict, extra: dict) -> dict:
    """``extra`` merged into a copy of ``base``; nested mappings merge, everything else replaces."""
    out = copy.deepcopy(base)
    for k, v in extra.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = deep_merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


def load_template(source: str | Path | dict | None) -> dict:
    """A job-recipe template from a YAML file or a dict (recipe sections; no data paths needed)."""
    if source is None:
        return {}
    if isinstance(source, dict):
        return copy.deepcopy(source)
    path = Path(source)
    if not path.is_file():
        raise TunesmithError("job template not found; expected a recipe YAML file", file=str(path))
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as e:
        raise TunesmithError(f"invalid YAML ({e})", file=str(path)) from None
    if not isinstance(raw, dict):
        raise TunesmithError("expected a mapping of recipe sections", file=str(path))
    return raw


def default_db_url() -> str:
    from ..models import home
    return f"sqlite:///{home() / 'jobs' / 'jobs.db'}"


@dataclass
class JobsSettings:
    """Configuration of the `/v1/files` and `/v1/fine_tuning/jobs` routers.

    ``models`` maps the names clients send as ``model`` to what a recipe's ``model.name`` accepts
    (a catalogue name, a local folder, a hub id); catalogue names are always accepted, anything
    else only with ``allow_any_model``. ``template`` holds recipe sections merged over
    ``DEFAULT_TEMPLATE`` for every job (e.g. ``train.max_steps``, ``method.r``).
    """

    db_url: str = field(default_factory=default_db_url)
    files_dir: Path | None = None         # default: `files/` beside a SQLite database, else ./tunesmith-files
    max_upload_bytes: int = 512 * 1024 * 1024
    organization: str = "tunesmith"
    template: dict = field(default_factory=dict)
    models: dict[str, str] = field(default_factory=dict)
    allow_any_model: bool = False

    def resolved_files_dir(self) -> Path:
        if self.files_dir is not None:
            return Path(self.files_dir)
        from sqlalchemy.engine import make_url
        url = make_url(self.db_url)
        if url.get_backend_name() == "sqlite" and url.database and url.database != ":memory:":
            return Path(url.database).resolve().parent / "files"
        return Path("tunesmith-files").resolve()

    def job_template(self) -> dict:
        return deep_merge(DEFAULT_TEMPLATE, self.template)


class JobsContext:
    """What the routers share: the settings, the database and the file store folder."""

    def __init__(self, settings: JobsSettings, db=None):
        from .db import Database
        self.settings = settings
        self.db = db or Database(settings.db_url)
        self.files_dir = settings.resolved_files_dir()
        self.files_dir.mkdir(parents=True, exist_ok=True)
