"""Named model versions with lineage: the MLflow Model Registry plus a ``lineage.json`` copy in each run.

A name (``sentiment``) has versions ``v1, v2, ...``; each is a finished run directory plus a lineage
record (parent version, base-model hash, method, objective, data fingerprints, recipe, headline
metrics, gate verdict, strategy). The MLflow Model Registry (default: ``sqlite:///<runs>/mlflow.db``,
the same store :mod:`tunesmith.tracking` logs to; any MLflow URI works) holds the versions and the
aliases (``champion``, ``previous``); every run directory keeps a JSON copy of its record, aliases
included, so :func:`versions` and :func:`resolve` still answer from a runs folder when the MLflow
store is missing or unreachable.
"""
from __future__ import annotations

import json
import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import TunesmithError
from ..fsutil import atomic_write_json, sha256_file
from ..rundir import Layout, find_runs, has_model, read_json

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")
ALIAS_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_-]{0,63}$")
VERSION_RE = re.compile(r"^v(\d+)$")
LINEAGE_TAG = "tunesmith.lineage"
DEFAULT_ROOT = "runs"


@dataclass
class Version:
    name: str
    number: int
    run_dir: Path
    aliases: list[str] = field(default_factory=list)
    parent: str | None = None          # "name@vN"
    lineage: dict = field(default_factory=dict)

    @property
    def ref(self) -> str:
        return f"{self.name}@v{self.number}"

    def as_dict(self) -> dict:
        return {"name": self.name, "version": self.number, "ref": self.ref, "run_dir": str(self.run_dir),
                "aliases": list(self.aliases), "parent": self.parent, "lineage": self.lineage}


# ------------------------------------------------------------------------------------ refs and stores

def check_name(name: str) -> str:
    if not isinstance(name, str) or not NAME_RE.match(name):
        raise TunesmithError(f"invalid model name {name!r}; expected letters, digits, '.', '_' or '-'", field="name")
    return name


def check_alias(alias: str) -> str:
    if not isinstance(alias, str) or not ALIAS_RE.match(alias) or VERSION_RE.match(alias) or alias.lower() == "latest":
        raise TunesmithError(f"invalid alias {alias!r}; expected a word like 'champion' (not 'latest' or vN)",
                             field="alias")
    return alias


def parse_ref(ref: str) -> tuple[str, str | None]:
    """``"name@champion"`` -> ("name", "champion"); ``"name@v2"`` -> ("name", "v2"); ``"name"`` -> ("name", None)."""
    if not isinstance(ref, str) or ref.count("@") > 1:
        raise TunesmithError(f"invalid version reference {ref!r}; expected NAME, NAME@vN or NAME@ALIAS", field="ref")
    name, _, sel = ref.partition("@")
    check_name(name)
    if "@" in ref and not sel:
        raise TunesmithError(f"invalid version reference {ref!r}; expected NAME@vN or NAME@ALIAS", field="ref")
    if sel and not VERSION_RE.match(sel):
        check_alias(sel)
    return name, sel or None


def default_uri(root: str | Path | None = None) -> str:
    """The registry URI when none is given: ``$MLFLOW_TRACKING_URI``, else ``sqlite:///<root>/mlflow.db``
    (the default store :mod:`tunesmith.tracking` writes beside the runs)."""
    return os.environ.get("MLFLOW_TRACKING_URI") or \
        f"sqlite:///{Path(root or DEFAULT_ROOT).expanduser().resolve() / 'mlflow.db'}"


def store_missing(uri: str) -> bool:
    """A local store that does not exist yet (reading must not create it)."""
    if uri.startswith("sqlite:///"):
        return not Path(uri[len("sqlite:///"):]).is_file()
    if uri.startswith("file://") or "://" not in uri:
        path = Path(uri[len("file://"):] if uri.startswith("file://") else uri)
        return not path.is_dir()
    return False


def registry_client(uri: str):
    from .. import tracking   # noqa: F401  (sets MLflow's offline defaults)
    import logging
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from mlflow import MlflowClient
    for n in ("mlflow", "alembic", "sqlalchemy"):
        logging.getLogger(n).setLevel(logging.ERROR)
    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def _mlflow_error(e: Exception, what: str) -> TunesmithError:
    first = (str(e).strip().splitlines() or [type(e).__name__])[0]
    return TunesmithError(f"MLflow model registry {what} failed: {first}", field="registry")


def _mlflow_errors():
    from mlflow.exceptions import MlflowException
    return (MlflowException, OSError, ValueError, RuntimeError)


# ------------------------------------------------------------------------------------ lineage record

def _headline(run_dir: Path) -> dict | None:
    from ..runs import run_summary
    return run_summary(run_dir).get("headline")


def _base_model(recipe) -> dict:
    name = recipe.model.name
    out = {"name": name, "hash": None}
    try:
        from ..eval.cache import model_fingerprint
        from ..models import resolve as resolve_model
        ref = resolve_model(name)
        out["hash"] = model_fingerprint(ref) if isinstance(ref, Path) else None
        out["path"] = str(ref)
    except TunesmithError as e:
        out["hash_error"] = str(e)
    return out


def _data_fingerprints(layout: Layout) -> dict:
    manifest = read_json(layout.data_dir / "manifest.json") or {}
    files = {k: {kk: v.get(kk) for kk in ("spec", "path", "sha256")}
             for k, v in (manifest.get("files") or {}).items() if isinstance(v, dict)}
    out = {"files": files, "split_files": manifest.get("split_files") or {}, "counts": manifest.get("counts")}
    for key in ("replay", "continue", "harvest"):
        if manifest.get(key) is not None:
            out[key] = manifest[key]
    return out


def build_lineage(run_dir: Path, name: str, number: int, parent: str | None, strategy: str | None) -> dict:
    """The lineage record of a run registered as ``name@v<number>``."""
    from ..rundir import Run
    run = Run(run_dir)
    recipe = run.recipe
    summary = read_json(run.summary_json) or {}
    tuned = summary.get("tuned") or {}
    return {
        "name": name, "version": number, "ref": f"{name}@v{number}", "parent": parent,
        "run_dir": str(run_dir), "registered": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "base_model": _base_model(recipe), "method": recipe.method.name, "objective": recipe.objective.name,
        "task": recipe.task, "data": _data_fingerprints(run),
        "recipe": {"path": str(run.recipe_path), "sha256": sha256_file(run.recipe_path)},
        "metrics": {"headline": _headline(run_dir), "tuned": tuned.get("metrics") or {},
                    "loss": tuned.get("loss") or {}},
        "strategy": strategy, "gate": None, "overrides": [], "aliases": [],
    }


def read_lineage(run_dir: str | Path) -> dict | None:
    return read_json(Layout(run_dir).lineage_json)


def write_lineage(run_dir: str | Path, record: dict) -> None:
    atomic_write_json(Layout(run_dir).lineage_json, record)


def update_lineage(run_dir: str | Path, **fields) -> dict:
    """Set top-level fields of a run's lineage.json (atomic); returns the new record."""
    record = read_lineage(run_dir) or {}
    record.update(fields)
    write_lineage(run_dir, record)
    sync_registry_tag(record)
    return record


def sync_registry_tag(record: dict) -> bool:
    """Copy a changed lineage record (gate verdict, overrides) to its registry version's tag, when that
    registry is reachable; the run's lineage.json stays the source of truth. Returns whether it was copied."""
    reg = record.get("registry") or {}
    uri, number, name = reg.get("tracking_uri"), record.get("version"), record.get("name")
    if not (isinstance(uri, str) and isinstance(number, int) and isinstance(name, str)) or store_missing(uri):
        return False
    try:
        client = registry_client(uri)
        client.set_model_version_tag(name, str(number), LINEAGE_TAG, _lineage_tag(record))
        gate = record.get("gate")
        if isinstance(gate, dict):
            client.set_model_version_tag(name, str(number), "gate", "passed" if gate.get("passed") else "failed")
    except Exception as e:      # noqa: BLE001  (an unreachable registry keeps its older copy)
        import logging
        logging.getLogger("tunesmith").warning("lineage of %s@v%s not copied to %s: %s", name, number, uri,
                                               str(e).splitlines()[0] if str(e) else type(e).__name__)
        return False
    return True


def _lineage_tag(record: dict) -> str:
    text = json.dumps(record, sort_keys=True, default=str)
    return text if len(text) <= 90_000 else json.dumps({k: record.get(k) for k in ("name", "version", "parent")})


# ------------------------------------------------------------------------------------ register

def register(run_dir, name: str, *, parent: str | None = None, strategy: str | None = None,
             tracking_uri: str | None = None) -> Version:
    """Make a finished run the next version of ``name``; writes ``lineage.json`` into the run directory."""
    check_name(name)
    run_dir = Path(run_dir).expanduser().resolve()
    if not has_model(run_dir):
        raise TunesmithError("not a finished tunesmith run (no trained model); expected a run directory "
                             "after `tunesmith run`/`train`", file=str(run_dir))
    existing = read_lineage(run_dir)
    if existing and existing.get("name") and existing.get("version"):
        raise TunesmithError(f"run is already registered as {existing['name']}@v{existing['version']}",
                             file=str(run_dir))
    from ..config import TrackingConfig
    from ..rundir import Run
    from ..tracking import resolve_uri
    recipe = Run(run_dir).recipe
    uri = tracking_uri or resolve_uri(run_dir, getattr(recipe, "tracking", None) or TrackingConfig())
    if parent is not None:
        pname, sel = parse_ref(parent)
        parent_version = resolve(parent, tracking_uri=uri, root=run_dir.parent)
        parent = parent_version.ref
        if pname != name:
            raise TunesmithError(f"parent {parent} belongs to another name; expected {name}@vN", field="parent")
    in_registry = {v.number for v in from_registry(name, uri) or []}
    orphans = [v.ref for v in from_json_copies(name, run_dir.parent) if v.number not in in_registry]
    if orphans:       # a lost or other registry would number this version again from v1
        raise TunesmithError(f"the registry {uri} does not hold {', '.join(orphans)} that the runs folder's "
                             f"lineage.json copies record; expected the registry they were registered in "
                             "(--registry URI)", field="registry")
    record = build_lineage(run_dir, name, 0, parent, strategy)     # everything that can fail, before MLflow
    client = registry_client(uri)
    from mlflow.exceptions import MlflowException
    try:
        try:
            client.get_registered_model(name)
        except MlflowException:
            client.create_registered_model(name, tags={"tunesmith": "true"})
        run_id = None
        state = (read_json(Layout(run_dir).tracking_json) or {}).get("mlflow") or {}
        if isinstance(state.get(uri), dict):
            run_id = state[uri].get("run_id")
        tags = {"run_dir": str(run_dir), "parent": parent or "", "strategy": strategy or ""}
        mv = client.create_model_version(name, source=run_dir.as_uri(), run_id=run_id, tags=tags)
        number = int(mv.version)
        record.update(version=number, ref=f"{name}@v{number}")
        if existing:                     # keep what others wrote before registration (e.g. backward evaluation)
            record = {**existing, **record}
        record["registry"] = {"tracking_uri": uri, "model_version": number, "run_id": run_id}
        client.set_model_version_tag(name, str(number), LINEAGE_TAG, _lineage_tag(record))
    except _mlflow_errors() as e:
        if isinstance(e, TunesmithError):
            raise
        raise _mlflow_error(e, "registration") from None
    write_lineage(run_dir, record)
    return Version(name, number, run_dir, [], parent, record)


# ------------------------------------------------------------------------------------ reading

def from_registry(name: str, uri: str) -> list[Version] | None:
    """The versions of ``name`` in the registry; None when the store is missing/unreachable or lacks the name."""
    if store_missing(uri):
        return None
    try:
        client = registry_client(uri)
        from mlflow.exceptions import MlflowException
        try:
            rm = client.get_registered_model(name)
        except MlflowException:
            return None
        by_version: dict[int, list[str]] = {}
        for alias, ver in (rm.aliases or {}).items():
            by_version.setdefault(int(ver), []).append(alias)
        out = []
        for mv in client.search_model_versions(f"name = '{name}'", max_results=10_000):
            number = int(mv.version)
            tags = mv.tags or {}
            run_dir = Path(tags.get("run_dir") or mv.source.replace("file://", ""))
            record = read_lineage(run_dir)
            if not record or record.get("name") != name or record.get("version") != number:
                try:
                    record = json.loads(tags.get(LINEAGE_TAG) or "{}")
                except ValueError:
                    record = {}
            record = {**record, "aliases": sorted(by_version.get(number, []))}
            out.append(Version(name, number, run_dir, sorted(by_version.get(number, [])),
                               tags.get("parent") or record.get("parent") or None, record))
    except Exception as e:      # noqa: BLE001  (an unreachable or damaged store: fall back to the JSON copies)
        if isinstance(e, TunesmithError):
            raise
        return None
    return sorted(out, key=lambda v: v.number)


def from_json_copies(name: str, root: str | Path | None) -> list[Version]:
    root = Path(root or DEFAULT_ROOT).expanduser()
    if not root.is_dir():
        return []
    out: dict[int, Version] = {}
    for run_dir in find_runs(root):
        record = read_lineage(run_dir)
        if not record or record.get("name") != name or not isinstance(record.get("version"), int):
            continue
        n = record["version"]
        if n in out:    # two copies claim the same version: keep the earlier registration
            if str(record.get("registered")) >= str(out[n].lineage.get("registered")):
                continue
        out[n] = Version(name, n, run_dir.resolve(), sorted(record.get("aliases") or []), record.get("parent"),
                         record)
    return [out[k] for k in sorted(out)]


def versions(name: str, *, tracking_uri=None, root=None) -> list[Version]:
    """All versions of ``name``, oldest first (MLflow registry; the runs folder's lineage.json copies when
    the registry is missing or unreachable)."""
    check_name(name)
    found = from_registry(name, tracking_uri or default_uri(root))
    return found if found is not None else from_json_copies(name, root)


def describe_known(name: str, found: list[Version]) -> str:
    if not found:
        return f"no versions of '{name}' are registered"
    nums = ", ".join(f"v{v.number}" for v in found)
    aliases = ", ".join(f"{a} -> v{v.number}" for v in found for a in v.aliases)
    return f"known: {nums}" + (f"; aliases: {aliases}" if aliases else "; no aliases")


def resolve(ref: str, *, tracking_uri: str | None = None, root: str | Path | None = None) -> Version:
    """The version ``ref`` names: ``name@champion``, ``name@previous``, ``name@v2``, or ``name`` (the
    champion, else the latest version)."""
    name, sel = parse_ref(ref)
    found = versions(name, tracking_uri=tracking_uri, root=root)
    if not found:
        raise TunesmithError(f"unknown model version '{ref}': {describe_known(name, found)} "
                             "(register one with `tunesmith register RUN --as NAME`)", field="ref")
    if sel is None:
        champ = [v for v in found if "champion" in v.aliases]
        return champ[0] if champ else found[-1]
    m = VERSION_RE.match(sel)
    hit = [v for v in found if (v.number == int(m.group(1)) if m else sel in v.aliases)]
    if not hit:
        raise TunesmithError(f"unknown model version '{ref}': {describe_known(name, found)}", field="ref")
    return hit[0]


# ------------------------------------------------------------------------------------ aliases

def _sync_json_aliases(found: list[Version], alias: str, number: int | None) -> None:
    """Move ``alias`` in the lineage.json copies (``number`` None removes it)."""
    for v in found:
        if not Layout(v.run_dir).lineage_json.is_file():
            continue
        record = read_lineage(v.run_dir) or {}
        aliases = [a for a in (record.get("aliases") or []) if a != alias]
        if v.number == number:
            aliases.append(alias)
        if sorted(aliases) != sorted(record.get("aliases") or []):
            record["aliases"] = sorted(aliases)
            write_lineage(v.run_dir, record)


def _apply_aliases(name: str, moves: dict[str, int | None], *, tracking_uri=None, root=None) -> None:
    """Set (number) or delete (None) several aliases of ``name`` in the registry and the JSON copies."""
    uri = tracking_uri or default_uri(root)
    found = versions(name, tracking_uri=uri, root=root)
    numbers = {v.number for v in found}
    for alias, number in moves.items():
        check_alias(alias)
        if number is not None and number not in numbers:
            raise TunesmithError(f"unknown model version '{name}@v{number}': {describe_known(name, found)}",
                                 field="ref")
    in_registry = from_registry(name, uri) is not None
    if not in_registry and not store_missing(uri):
        import logging
        logging.getLogger("tunesmith").warning("registry %s is unreachable or does not hold '%s': aliases are "
                                               "moved in the runs' lineage.json copies only", uri, name)
    if in_registry:
        try:
            client = registry_client(uri)
            for alias, number in moves.items():
                if number is None:
                    client.delete_registered_model_alias(name, alias)
                else:
                    client.set_registered_model_alias(name, alias, str(number))
        except _mlflow_errors() as e:
            raise _mlflow_error(e, "alias update") from None
    for alias, number in moves.items():
        _sync_json_aliases(found, alias, number)


def set_alias(name: str, alias: str, number: int, *, tracking_uri=None, root=None) -> None:
    """Point ``name@alias`` at version ``number`` (registry and lineage.json copies)."""
    check_name(name)
    _apply_aliases(name, {alias: int(number)}, tracking_uri=tracking_uri, root=root)


def move_aliases(name: str, moves: dict[str, int | None], *, tracking_uri=None, root=None) -> None:
    """Several alias moves at once (``None`` deletes an alias), e.g. champion/previous on promotion."""
    check_name(name)
    _apply_aliases(name, moves, tracking_uri=tracking_uri, root=root)


__all__ = ["Version", "register", "resolve", "versions", "set_alias", "move_aliases", "parse_ref",
           "read_lineage", "update_lineage", "default_uri", "describe_known"]
