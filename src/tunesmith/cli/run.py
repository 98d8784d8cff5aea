"""The pipeline commands: run, data validate|prepare, train, eval, export, advise, chat.

Signatures only at the top (typer): the pipeline, torch and rich load inside the command bodies.
"""
from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from .common import console, overrides_argument

data_app = typer.Typer(help="Inspect and prepare datasets.")


def run(recipe: str = typer.Argument(..., help="Recipe YAML, or a run directory with --resume."),
        overrides: Optional[List[str]] = overrides_argument(),
        resume: bool = typer.Option(False, "--resume", help="Continue RECIPE (a run directory) from its last checkpoint."),
        time_budget: Optional[str] = typer.Option(None, "--time-budget", help="Train for about this long (90s, 10m, "
                                                  "1h30m): same as train.time_budget=..."),
        nproc: Optional[int] = typer.Option(None, "--nproc", help="Train on N processes (data parallel): same as "
                                            "train.nproc=N.")):
    """validate -> prepare -> train -> evaluate (base vs tuned) -> export, in a new run directory."""
    from .. import pipeline
    overrides = _shortcuts(overrides, resume, **{"--time-budget": time_budget, "--nproc": nproc})

    def live_parity(run) -> None:      # export.verify: merged / GGUF / a live server vs adapter-on-base
        if run.recipe.export.verify:
            from ..serve.parity import verify_after_export
            verify_after_export(run, prompts=max(run.recipe.export.parity_prompts, 1))
    if not resume:
        from ..config import load_recipe
        if load_recipe(recipe, overrides).model.from_:      # the next version of a named model
            from ..lifecycle.continuation import continue_from_recipe
            version = continue_from_recipe(recipe, overrides, after_export=live_parity)
            closing_lines(version.run_dir)
            console().print(f"Version: {version.ref} (parent {version.parent})", markup=False, highlight=False)
            return
    path = pipeline.run(None if resume else recipe, overrides, resume_dir=recipe if resume else None,
                        after_export=live_parity)
    closing_lines(path)


def _shortcuts(overrides: list[str] | None, resume: bool, **options) -> list[str] | None:
    """``--time-budget X`` / ``--nproc N`` as the overrides they stand for; a resumed run keeps its recipe."""
    fields = {"--time-budget": "train.time_budget", "--nproc": "train.nproc"}
    for flag, value in options.items():
        if value is None:
            continue
        if resume:
            from ..errors import TunesmithError
            raise TunesmithError(f"{flag} cannot change a run being resumed (it keeps its recorded recipe)",
                                 field=flag)
        overrides = [*(overrides or []), f"{fields[flag]}={value}"]
    return overrides


def closing_lines(path: Path) -> None:
    """The end of `tunesmith run`: headline metrics base -> tuned, parity, where the report and model are."""
    from ..rundir import Layout, read_json
    layout = Layout(path)
    c = console()
    summary = read_json(layout.summary_json) or {}
    exp = read_json(layout.export_json) or {}
    tuned = (summary.get("tuned") or {}).get("metrics", {})
    base = (summary.get("base") or {}).get("metrics", {})
    c.rule("[bold]done")
    for k, v in tuned.items():
        b = base.get(k)
        c.print(f"  {k:<16} base {b:.4f}  ->  tuned {v:.4f}" if b is not None else f"  {k:<16} tuned {v:.4f}")
    if exp.get("parity"):
        p = exp["parity"]
        c.print(f"  parity: merged model matches adapter-on-base on {p['identical']}/{p['prompts']} prompts")
    c.print(f"Report:  {layout.report_html}  (and report.md)")
    if exp.get("merged"):
        c.print(f"Model:   {exp['merged']}  (loads with transformers.AutoModelForCausalLM)")
    if exp.get("adapter"):
        c.print(f"Adapter: {exp['adapter']}")
    c.print(f"Chat:    tunesmith chat {path}")


@data_app.command("validate")
def data_validate(file: str = typer.Argument(..., help="JSONL, CSV or Parquet file (or package:PKG/path)."),
                  recipe: Optional[str] = typer.Option(None, help="Recipe whose data settings apply (format, labels, where…)."),
                  out: Optional[str] = typer.Option(None, help="Where to save the JSON report (default: FILE.report.json in the cwd)."),
                  force: bool = typer.Option(False, "--force", help="Replace the report file if it exists (never an input)."),
                  tokens: bool = typer.Option(True, help="Measure token lengths with the model's chat template.")):
    """Report every problem in a data file: errors by kind and line, lengths, duplicates, PII, labels."""
    from .. import pipeline
    from ..data.validate import render_report
    out = report_path(file, recipe, out, force)
    report = pipeline.validate(file, recipe, out=out, with_tokens=tokens)
    console().print(render_report(report))
    console().print(f"report saved to {out}")
    if report.get("invalid"):
        raise typer.Exit(1)


def report_path(file: str, recipe: str | None, out: str | None, force: bool) -> str:
    """Where `data validate` may write its report: never over an input, never over an existing file without --force.

    The default name (``FILE.report.json`` in the cwd) always differs from FILE; checked before any work.
    """
    from ..errors import TunesmithError
    path = Path(out or f"{Path(file.split('/')[-1]).name}.report.json")
    inputs = [Path(p) for p in (file, recipe) if p and not p.startswith("package:")]
    for src in inputs:
        if path.exists() and src.exists() and path.samefile(src):     # also a hard or symbolic link to it
            raise TunesmithError(f"refusing to write the report over the input file {src}; choose another --out",
                                 field="--out")
    if path.is_dir():
        raise TunesmithError(f"{path} is a directory; --out needs a file name", field="--out")
    if path.exists() and not force:
        raise TunesmithError(f"{path} already exists; pass --force to replace it or --out to choose another name",
                             field="--out")
    return str(path)


@data_app.command("prepare")
def data_prepare(recipe: str = typer.Argument(..., help="Recipe YAML."),
                 overrides: Optional[List[str]] = overrides_argument()):
    """Clean, anonymise, deduplicate and split the data into a new run directory."""
    from .. import pipeline
    print(pipeline.prepare(recipe, overrides).path)


def train(target: str = typer.Argument(..., help="Recipe YAML (prepares a new run) or a prepared run directory."),
          overrides: Optional[List[str]] = overrides_argument(),
          resume: bool = typer.Option(False, "--resume", help="Continue from the run's last checkpoint."),
          nproc: Optional[int] = typer.Option(None, "--nproc", help="Train on N processes (data parallel): same "
                                              "as train.nproc=N (for a recipe; a prepared run keeps its own).")):
    """Fine-tune; writes checkpoints, metrics.jsonl and the trained model into the run directory."""
    from .. import pipeline
    overrides = _shortcuts(overrides, resume, **{"--nproc": nproc})
    r, _result = pipeline.train(target, overrides, resume=resume)
    print(r.path)


def evaluate(run_dir: str = typer.Argument(..., help="Trained run directory.")):
    """Evaluate base and tuned models on the run's test split and write report.md/report.html."""
    from .. import pipeline
    summary = pipeline.evaluate(run_dir)
    console().print_json(data={"tuned": summary["tuned"], "base": summary["base"]})


def export(run_dir: str = typer.Argument(..., help="Evaluated run directory."),
           format: str = typer.Option("hf", "--format", help="hf: adapter + merged folder; gguf: llama.cpp files "
                                                             "of the merged model."),
           quant: str = typer.Option("f16,q8_0", "--quant", help="GGUF types for --format gguf (f16, q8_0).")):
    """Export the adapter and a merged model directory (with the parity check), or GGUF files."""
    from ..errors import TunesmithError
    if format == "gguf":
        from ..gguf_export import export_run_gguf, parse_quant
        console().print_json(data=export_run_gguf(run_dir, parse_quant(quant)))
        return
    if format != "hf":
        raise TunesmithError(f"unknown export format '{format}'; expected hf or gguf", field="--format")
    from .. import pipeline
    console().print_json(data=pipeline.export(run_dir))


def advise(recipe: str = typer.Argument(..., help="Recipe YAML."),
           overrides: Optional[List[str]] = overrides_argument(),
           sample: int = typer.Option(64, help="Held-out examples the baselines are measured on.")):
    """Measure zero-shot, few-shot and RAG on a sample, time a training step, recommend a path."""
    from ..advise import advise as measure, print_advice
    print_advice(measure(recipe, overrides, sample=sample), console())


def chat(run_dir: str = typer.Argument(..., help="Run directory with a trained model."),
         max_new_tokens: int = typer.Option(256, help="Reply length limit."),
         temperature: float = typer.Option(0.0, help="0 = greedy."),
         system: Optional[str] = typer.Option(None, help="System prompt (default: the recipe's).")):
    """Chat with a run's tuned model in the terminal (tokens stream as they are generated)."""
    from ..chat import chat as converse
    converse(Path(run_dir), max_new_tokens, temperature, system)
