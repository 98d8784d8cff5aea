"""`tunesmith` command line: run, advise, sweep, runs, data, train, eval, export, verify, chat, serve, worker, models."""
from __future__ import annotations

import sys
from pathlib import Path
from typing import List, Optional

import typer

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Turn a pretrained LLM into an evaluated domain expert, on your own hardware.")
data_app = typer.Typer(no_args_is_help=True, help="Inspect and prepare datasets.")
app.add_typer(data_app, name="data")
from .runs import runs_app  # noqa: E402  (light: heavy imports happen inside the commands)
app.add_typer(runs_app, name="runs", help="List and compare run directories.")

Overrides = typer.Argument(None, help="Recipe overrides as dotted key=value, e.g. train.lr=1e-4")


def _console():
    from rich.console import Console
    # soft wrap: long paths stay on one line (copy-pasteable); pipes get a wide page, not 80 columns
    return Console(soft_wrap=True, width=None if sys.stdout.isatty() else 160)


@app.command()
def run(recipe: str = typer.Argument(..., help="Recipe YAML, or a run directory with --resume."),
        overrides: Optional[List[str]] = Overrides,
        resume: bool = typer.Option(False, "--resume", help="Continue RECIPE (a run directory) from its last checkpoint.")):
    """validate -> prepare -> train -> evaluate (base vs tuned) -> export, in a new run directory."""
    from . import pipeline
    path = pipeline.run(None if resume else recipe, overrides, resume_dir=recipe if resume else None)
    _closing_lines(path)


def _closing_lines(path: Path) -> None:
    import json
    c = _console()
    summary = json.loads((path / "eval" / "summary.json").read_text())
    exp = json.loads((path / "export" / "export.json").read_text())
    tuned, base = summary["tuned"]["metrics"], (summary.get("base") or {}).get("metrics", {})
    c.rule("[bold]done")
    for k, v in tuned.items():
        b = base.get(k)
        c.print(f"  {k:<16} base {b:.4f}  ->  tuned {v:.4f}" if b is not None else f"  {k:<16} tuned {v:.4f}")
    if exp.get("parity"):
        p = exp["parity"]
        c.print(f"  parity: merged model matches adapter-on-base on {p['identical']}/{p['prompts']} prompts")
    c.print(f"Report:  {path / 'report.html'}  (and report.md)")
    if exp.get("merged"):
        c.print(f"Model:   {exp['merged']}  (loads with transformers.AutoModelForCausalLM)")
    if exp.get("adapter"):
        c.print(f"Adapter: {exp['adapter']}")
    c.print(f"Chat:    tunesmith chat {path}")


@data_app.command("validate")
def data_validate(file: str = typer.Argument(..., help="JSONL, CSV or Parquet file (or package:PKG/path)."),
                  recipe: Optional[str] = typer.Option(None, help="Recipe whose data settings apply (format, labels, where…)."),
                  out: Optional[str] = typer.Option(None, help="Where to save the JSON report (default: FILE.report.json next to the cwd)."),
                  tokens: bool = typer.Option(True, help="Measure token lengths with the model's chat template.")):
    """Report every problem in a data file: errors by kind and line, lengths, duplicates, PII, labels."""
    from . import pipeline
    from .data.validate import render_report
    out = out or f"{Path(file.split('/')[-1]).name}.report.json"
    report = pipeline.validate(file, recipe, out=out, with_tokens=tokens)
    _console().print(render_report(report))
    _console().print(f"report saved to {out}")
    if report.get("invalid"):
        raise typer.Exit(1)


@data_app.command("prepare")
def data_prepare(recipe: str, overrides: Optional[List[str]] = Overrides):
    """Clean, anonymise, deduplicate and split the data into a new run directory."""
    from . import pipeline
    r = pipeline.prepare(recipe, overrides)
    print(r.path)


@app.command()
def train(target: str = typer.Argument(..., help="Recipe YAML (prepares a new run) or a prepared run directory."),
          overrides: Optional[List[str]] = Overrides,
          resume: bool = typer.Option(False, "--resume", help="Continue from the run's last checkpoint.")):
    """Fine-tune; writes checkpoints, metrics.jsonl and the trained model into the run directory."""
    from . import pipeline
    r, result = pipeline.train(target, overrides, resume=resume)
    print(r.path)


@app.command("eval")
def evaluate(run_dir: str):
    """Evaluate base and tuned models on the run's test split and write report.md/report.html."""
    from . import pipeline
    summary = pipeline.evaluate(run_dir)
    _console().print_json(data={"tuned": summary["tuned"], "base": summary["base"]})


@app.command()
def export(run_dir: str,
           format: str = typer.Option("hf", "--format", help="hf: adapter + merged folder; gguf: llama.cpp files "
                                                             "of the merged model."),
           quant: str = typer.Option("f16,q8_0", "--quant", help="GGUF types for --format gguf (f16, q8_0).")):
    """Export the adapter and a merged model directory (with the parity check), or GGUF files."""
    from . import pipeline
    from .errors import TunesmithError
    if format == "gguf":
        from .gguf_export import export_run_gguf, parse_quant
        _console().print_json(data=export_run_gguf(run_dir, parse_quant(quant)))
        return
    if format != "hf":
        raise TunesmithError(f"unknown export format '{format}'; expected hf or gguf", field="--format")
    _console().print_json(data=pipeline.export(run_dir))


@app.command()
def advise(recipe: str, overrides: Optional[List[str]] = Overrides,
           sample: int = typer.Option(64, help="Held-out examples the baselines are measured on.")):
    """Measure zero-shot, few-shot and RAG on a sample, time a training step, recommend a path."""
    from .advise import advise as _advise, print_advice
    print_advice(_advise(recipe, overrides, sample=sample), _console())


def _register_plugins() -> None:
    from .jobs.cli import worker as _worker
    from .serve.cli import serve as _serve
    from .sweep import sweep_command
    from .verify import verify_command
    app.command("sweep")(sweep_command)
    app.command("verify")(verify_command)
    app.command("serve")(_serve)
    app.command("worker")(_worker)


_register_plugins()


@app.command()
def chat(run_dir: str, max_new_tokens: int = typer.Option(256, help="Reply length limit."),
         temperature: float = typer.Option(0.0, help="0 = greedy."),
         system: Optional[str] = typer.Option(None, help="System prompt (default: the recipe's).")):
    """Chat with a run's tuned model in the terminal (tokens stream as they are generated)."""
    from .chat import chat as _chat
    _chat(Path(run_dir), max_new_tokens, temperature, system)


@app.command("models")
def list_models():
    """List the offline model catalogue."""
    from rich.table import Table

    from .models import catalogue, home
    t = Table(title=f"tunesmith models (cache: {home()})")
    for col in ("name", "parameters", "architecture", "license", "package", "installed", "cached"):
        t.add_column(col, no_wrap=True)
    for row in catalogue():
        t.add_row(row["name"], f"{row['parameters'] / 1e6:.1f}M", row["architecture"], row["license"],
                  row["package"], "yes" if row["installed"] else "no", "yes" if row["cached"] else "no")
    _console().print(t)
    _console().print("Also accepted: a local Hugging Face model folder, a .gguf file, or a hub id (needs network).")


def main(argv: list[str] | None = None) -> int:
    from .errors import TunesmithError
    try:
        rc = app(args=argv, standalone_mode=False)    # without standalone mode, typer.Exit codes are returned
        if isinstance(rc, int):
            return rc
    except TunesmithError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted; continue a run with `tunesmith run --resume RUN_DIR`, a sweep by running "
              "`tunesmith sweep RECIPE` again", file=sys.stderr)
        return 130
    except typer.Exit as e:
        return e.exit_code
    except Exception as e:  # click usage errors
        import click
        if isinstance(e, click.exceptions.ClickException):
            e.show()
            return 2
        if isinstance(e, click.exceptions.Abort):
            return 130
        raise
    return 0


if __name__ == "__main__":
    sys.exit(main())
