"""`tunesmith harvest` and `tunesmith drift`: feedback and traffic logged by `tunesmith serve --log-dir`."""
from __future__ import annotations

import json
from typing import Optional

import typer

from .common import console

LOG_DIR_HELP = "The request log folder of `tunesmith serve --log-dir DIR`."
ROOT_HELP = "Runs folder holding the versions (default: runs)."
REGISTRY_HELP = "MLflow URI of the model registry (default: sqlite:///<runs>/mlflow.db beside the runs)."
SINCE_HELP = "Only requests logged at or after this ISO date/time (UTC when no zone is given)."


def _say(text: str) -> None:
    console().print(text, markup=False, highlight=False)


def harvest_command(name: str = typer.Argument(..., help="Model name (every alias and version of it)."),
                    log_dir: str = typer.Option(..., "--log-dir", help=LOG_DIR_HELP),
                    since: Optional[str] = typer.Option(None, "--since", help=SINCE_HELP),
                    out: Optional[str] = typer.Option(None, "--out", help="SFT file to write (default NAME-harvest."
                                                      "jsonl); preference pairs go to OUT-stem.preference.jsonl, the "
                                                      "summary to OUT-stem.harvest.json. Never overwritten."),
                    root: Optional[str] = typer.Option(None, "--root", help=ROOT_HELP),
                    registry: Optional[str] = typer.Option(None, "--registry", help=REGISTRY_HELP)):
    """Turn logged corrections and preferred/rejected pairs into deduplicated SFT and preference data."""
    from ..lifecycle.feedback import harvest
    r = harvest(name, log_dir, out=out, since=since, root=root, tracking_uri=registry)
    _say(f"{r['name']}: {r['requests']} logged request(s), {r['feedback']} feedback item(s) "
         f"(ratings: {r['ratings']['up']} up, {r['ratings']['down']} down)")
    h = r["harvested"]
    _say(f"harvested {h['sft']} SFT example(s)" + (f" -> {r['files']['sft']}" if "sft" in r["files"] else "")
         + f", {h['preference']} preference pair(s)"
         + (f" -> {r['files']['preference']}" if "preference" in r["files"] else ""))
    d = r["duplicates"]
    _say(f"dropped {d['count']} duplicate(s) (against each other and the data of "
         f"{', '.join(d['against_versions'])})" + (":" if d["examples"] else ""))
    for ex in d["examples"]:
        _say(f"  - {ex['kind']} \"{ex['prompt']}\" duplicates {ex['duplicate_of']}")
    skipped = r["skipped"]
    _say(f"skipped {sum(skipped.values())}" + (": " + "; ".join(f"{n} {why}" for why, n in skipped.items())
                                                 if skipped else ""))
    if r["torn_lines"]:
        _say(f"{r['torn_lines']} damaged log line(s) ignored")
    if "sft" in r["files"]:
        _say(f"next: tunesmith continue {r['name']}@champion {r['files']['sft']}")
    elif not r["files"]:
        _say("nothing harvested; no file written")


def drift_command(ref: str = typer.Argument(..., help="Model name (its champion, else latest) or NAME@ALIAS / "
                                                       "NAME@vN whose training prompts are the reference."),
                  log_dir: str = typer.Option(..., "--log-dir", help=LOG_DIR_HELP),
                  since: Optional[str] = typer.Option(None, "--since", help=SINCE_HELP),
                  embedding_model: Optional[str] = typer.Option(
                      None, "--embedding-model", help="Sentence-embedding model folder, package:PKG/dir or tfidf "
                                                      "(default: the version's eval.embedding_model)."),
                  threshold: float = typer.Option(0.15, "--threshold", help="Drop in mean nearest-training "
                                                  "similarity (vs held-out prompts) that counts as drift."),
                  as_json: bool = typer.Option(False, "--json", help="Print the numbers as JSON."),
                  root: Optional[str] = typer.Option(None, "--root", help=ROOT_HELP),
                  registry: Optional[str] = typer.Option(None, "--registry", help=REGISTRY_HELP)):
    """Compare logged prompts with a version's training prompts (embeddings, length, label mix): drift or not."""
    from ..lifecycle.drift import drift
    r = drift(ref, log_dir, since=since, embedding_model=embedding_model, root=root, tracking_uri=registry,
              similarity_drop=threshold)
    if as_json:
        print(json.dumps(r, indent=2, default=str))
        return
    _say(f"{r['name']}: {r['live_prompts']} logged prompt(s) vs {r['train_prompts']} training prompt(s) of "
         f"{r['version']}")
    note = r["checks"]["embedding"].get("note")
    if note:
        _say(note)
    _say(r["verdict"])
