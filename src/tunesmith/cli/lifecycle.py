"""`tunesmith register|versions|promote|rollback`: named model versions (imports inside the commands)."""
from __future__ import annotations

import json
from typing import Optional

import typer

from .common import console

REGISTRY_HELP = "MLflow URI of the model registry (default: sqlite:///<runs>/mlflow.db beside the runs)."
ROOT_HELP = "Runs folder (the default registry lives there; its lineage.json copies are read when MLflow is missing)."


def register_command(run_dir: str = typer.Argument(..., help="A finished run directory."),
                     name: str = typer.Option(..., "--as", help="Model name, e.g. sentiment."),
                     parent: Optional[str] = typer.Option(None, "--parent", help="Parent version, NAME@vN."),
                     registry: Optional[str] = typer.Option(None, "--registry", help=REGISTRY_HELP)):
    """Register a finished run as the next version of a named model (writes lineage.json)."""
    from ..lifecycle import register
    v = register(run_dir, name, parent=parent, tracking_uri=registry)
    console().print(f"registered {v.run_dir} as {v.ref}" + (f" (parent {v.parent})" if v.parent else "")
                    + f"; promote it with `tunesmith promote {v.ref}`", markup=False, highlight=False)


def _verdict_text(gate: dict | None) -> str:
    if not isinstance(gate, dict):
        return "—"
    return "passed" if gate.get("passed") else "failed"


def _headline_text(lineage: dict) -> str:
    from .runs import headline_text
    return headline_text((lineage.get("metrics") or {}).get("headline"))


def versions_command(name: str = typer.Argument(..., help="Model name."),
                     root: Optional[str] = typer.Option(None, "--root", help=ROOT_HELP),
                     registry: Optional[str] = typer.Option(None, "--registry", help=REGISTRY_HELP),
                     as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a tree.")):
    """Show a named model's versions as a lineage tree: parent, aliases, headline metric, gate verdict, run."""
    from ..errors import TunesmithError
    from ..lifecycle import versions
    from ..lifecycle.versions import describe_known
    found = versions(name, tracking_uri=registry, root=root)
    if not found:
        raise TunesmithError(f"unknown model '{name}': {describe_known(name, found)}", field="name")
    if as_json:
        print(json.dumps([v.as_dict() for v in found], indent=2, default=str))
        return
    from rich.text import Text
    from rich.tree import Tree
    tree = Tree(name)
    nodes = {}
    for v in found:           # oldest first: a parent is always placed before its children
        forced = any(o.get("forced") for o in v.lineage.get("overrides") or [] if isinstance(o, dict))
        label = (f"v{v.number}" + (f" [{', '.join(v.aliases)}]" if v.aliases else "")
                 + f"  {_headline_text(v.lineage)}  gate: {_verdict_text(v.lineage.get('gate'))}"
                 + (" (forced)" if forced else "") + (f"  strategy: {v.lineage['strategy']}"
                                                      if v.lineage.get("strategy") else "")
                 + f"  {v.run_dir}")
        parent_node = nodes.get(v.parent, tree)
        nodes[v.ref] = parent_node.add(Text(label))
    console().print(tree)


def promote_command(ref: str = typer.Argument(..., help="The version to promote, NAME@vN."),
                    force: bool = typer.Option(False, "--force", help="Promote even when a gate fails "
                                               "(the override is recorded in lineage.json)."),
                    root: Optional[str] = typer.Option(None, "--root", help=ROOT_HELP),
                    registry: Optional[str] = typer.Option(None, "--registry", help=REGISTRY_HELP)):
    """Check the recipe's promotion gates and move the champion alias to a version."""
    from ..lifecycle.gates import promote
    out = promote(ref, force=force, tracking_uri=registry, root=root)
    c = console()
    for rule in out["verdict"]["rules"]:
        mark = "ok  " if rule["passed"] else "FAIL"
        c.print(f"{mark} {rule['rule']}: {rule['detail']}", markup=False, highlight=False)
    c.print(f"{out['champion']} is now champion" + (f", {out['previous']} previous" if out["previous"] else "")
            + (" (forced past failed gates; recorded in lineage.json)" if out["forced"] else ""),
            markup=False, highlight=False)


def rollback_command(name: str = typer.Argument(..., help="Model name."),
                     root: Optional[str] = typer.Option(None, "--root", help=ROOT_HELP),
                     registry: Optional[str] = typer.Option(None, "--registry", help=REGISTRY_HELP)):
    """Move the champion alias back to the previous version."""
    from ..lifecycle.gates import rollback
    out = rollback(name, tracking_uri=registry, root=root)
    console().print(f"{out['champion']} is champion again" + (f", {out['previous']} previous"
                                                               if out["previous"] else ""),
                    markup=False, highlight=False)
