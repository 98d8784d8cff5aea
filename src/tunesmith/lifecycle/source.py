"""A model source for the inference server: every registered version as ``name@vN`` plus its aliases
(``name@champion``, ``name@previous``, ...), each pointing at the version's run directory.

The server queries sources on every lookup and keys its loaded models by id *and* run directory, so an
alias moved by ``tunesmith promote``/``rollback`` is served from the new version on the next request,
without a restart (requests already decoding finish on the model they started with).
"""
from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

from ..rundir import Layout, find_runs, has_model
from ..serve.registry import ServedModel
from .versions import from_json_copies, from_registry, store_missing, default_uri, read_lineage

log = logging.getLogger("tunesmith.serve")


def _registered_names(uri: str) -> list[str]:
    if store_missing(uri):
        return []
    try:
        from .versions import registry_client
        client = registry_client(uri)
        return [m.name for m in client.search_registered_models(max_results=1000)]
    except Exception as e:       # noqa: BLE001  (unreachable store: the JSON copies still answer)
        log.warning("model registry %s unreachable: %s", uri, str(e).splitlines()[0] if str(e) else e)
        return []


def _json_names(root: Path) -> list[str]:
    try:
        runs = find_runs(root)
    except Exception:            # noqa: BLE001
        return []
    names = {(read_lineage(p) or {}).get("name") for p in runs}
    return sorted(n for n in names if isinstance(n, str))


def _stat(path: Path) -> tuple | None:
    try:
        st = path.stat()
    except OSError:
        return None
    return st.st_mtime_ns, st.st_size, st.st_ino


def _stamp(uri: str, root: Path | None) -> tuple | None:
    """What the listing depends on, for a local SQLite registry: the database files and every run's
    lineage.json (any write moves a stamp); None (no caching) for other registries."""
    if not uri.startswith("sqlite:///"):
        return None
    db = Path(uri[len("sqlite:///"):])
    parts = [_stat(db), _stat(Path(str(db) + "-wal"))]
    if root is not None:
        try:
            runs = find_runs(root)
        except Exception:        # noqa: BLE001
            runs = []
        parts += sorted((str(p), _stat(Layout(p).lineage_json), _stat(Layout(p).model_dir)) for p in runs)
    return tuple(parts)


class VersionsSource:
    """``models()`` lists ``name@vN`` and ``name@ALIAS`` for every registered name.

    ``roots``: runs folders (or run directories, meaning their parent folder); each one's registry is
    ``registry`` when given, else its default ``sqlite:///<root>/mlflow.db``; a name missing from an
    unreachable or absent registry is listed from the runs folder's ``lineage.json`` copies.
    """

    def __init__(self, roots: Sequence[Path | str] = (), registry: str | None = None,
                 owned_by: str = "tunesmith"):
        folders = []
        for r in roots:
            p = Path(r).expanduser()
            folders.append(p.parent if has_model(p) else p)
        self.roots = list(dict.fromkeys(f.resolve() for f in folders))
        self.registry = registry
        self.owned_by = owned_by
        self._cache: dict[tuple, tuple] = {}

    def _pairs(self) -> list[tuple[str | None, Path | None]]:
        if self.registry and not self.roots:
            return [(self.registry, None)]
        return [(self.registry or default_uri(root), root) for root in self.roots]

    def models(self) -> list[ServedModel]:
        out: dict[str, ServedModel] = {}
        for uri, root in self._pairs():
            stamp = _stamp(uri, root)
            hit = self._cache.get((uri, root))
            if stamp is None or hit is None or hit[0] != stamp:
                hit = (stamp, self._list(uri, root))
                self._cache[(uri, root)] = hit
            for m in hit[1]:
                out.setdefault(m.id, m)
        return list(out.values())

    def _list(self, uri: str, root: Path | None) -> list[ServedModel]:
        out: dict[str, ServedModel] = {}
        names = _registered_names(uri)
        in_mlflow = set(names)
        if root is not None:
            names += [n for n in _json_names(root) if n not in in_mlflow]
        for name in names:
            found = from_registry(name, uri) if name in in_mlflow else None
            if found is None and root is not None:
                found = from_json_copies(name, root)
            for v in found or []:
                if not has_model(v.run_dir):
                    continue
                created = Layout(v.run_dir).created()
                for alias in [f"v{v.number}", *v.aliases]:
                    out.setdefault(f"{name}@{alias}", ServedModel(f"{name}@{alias}", v.run_dir.resolve(),
                                                                  created, self.owned_by))
        return list(out.values())

    def __repr__(self) -> str:
        return f"VersionsSource(roots={[str(r) for r in self.roots]}, registry={self.registry!r})"


__all__ = ["VersionsSource"]
