"""The `tunesmith` entry point: the root command, lazy dispatch to the command modules, the error contract.

Lazy dispatch (the mlx-lm shape): the root group knows each command's name, module and one-line summary,
and imports a command's module only when that command runs or its own ``--help`` is asked for, so
``tunesmith --help`` imports neither torch nor the command modules. Command modules keep their heavy
imports inside the command bodies, so ``tunesmith CMD --help`` stays light too.

Error contract of :func:`main`: a usage error (unknown command, bad flag, missing argument, bare
``tunesmith``) or a :class:`~tunesmith.errors.TunesmithError` prints one ``error: ...`` line on stderr
and returns 2; Ctrl-C returns 130 with a line saying how to continue.
"""
from __future__ import annotations

import importlib
import sys

import typer
from typer.core import TyperCommand, TyperGroup

try:        # typer >= 0.2x bundles its own click: its exceptions are not `click.ClickException`
    from typer._click import core as click_core, exceptions as click_exc
except ImportError:     # older typer uses the click package
    from click import core as click_core, exceptions as click_exc
# Ctrl-C at a prompt: typer's own Abort, and click's where click is the package
ABORTS = tuple({typer.Abort, getattr(click_exc, "Abort", typer.Abort)})
EXITS = tuple({typer.Exit, getattr(click_exc, "Exit", typer.Exit)})

PROG = "tunesmith"
INTERRUPTED_HINT = ("interrupted; continue a run with `tunesmith run --resume RUN_DIR`, a sweep by running "
                    "`tunesmith sweep RECIPE` again")

# name -> ("module:attribute", one-line summary shown by `tunesmith --help`); the attribute is a command
# function or a typer app (a command group). tests/test_cli_errors.py checks each summary against the
# first line of the command's own help.
COMMANDS: dict[str, tuple[str, str]] = {
    "run": ("tunesmith.cli.run:run",
            "validate -> prepare -> train -> evaluate (base vs tuned) -> export, in a new run directory."),
    "data": ("tunesmith.cli.run:data_app", "Inspect and prepare datasets."),
    "train": ("tunesmith.cli.run:train",
              "Fine-tune; writes checkpoints, metrics.jsonl and the trained model into the run directory."),
    "eval": ("tunesmith.cli.run:evaluate",
             "Evaluate base and tuned models on the run's test split and write report.md/report.html."),
    "export": ("tunesmith.cli.run:export",
               "Export the adapter and a merged model directory (with the parity check), or GGUF files."),
    "advise": ("tunesmith.cli.run:advise",
               "Measure zero-shot, few-shot and RAG on a sample, time a training step, recommend a path."),
    "continue": ("tunesmith.cli.continue_cmd:continue_command",
                 "Train the next version of a named model on new data (replay, stack or regularize), evaluated on "
                 "every ancestor's tests."),
    "sweep": ("tunesmith.cli.sweep:sweep_command",
              "Hyperparameter sweep (Optuna): every trial is a run; continues an interrupted sweep."),
    "runs": ("tunesmith.cli.runs:runs_app", "List and compare run directories."),
    "verify": ("tunesmith.cli.verify:verify_command",
               "Check that the merged model, GGUF files and a live server answer exactly like adapter-on-base."),
    "chat": ("tunesmith.cli.run:chat",
             "Chat with a run's tuned model in the terminal (tokens stream as they are generated)."),
    "serve": ("tunesmith.cli.serve:serve",
              "Serve the base model and every fine-tuned run with an OpenAI-compatible API."),
    "ui": ("tunesmith.cli.ui:ui",
           "Open the web dashboard on a runs folder: `tunesmith serve --runs DIR` plus the browser at /ui."),
    "worker": ("tunesmith.cli.serve:worker",
               "Train queued fine-tuning jobs from the jobs database (run several for parallel jobs)."),
    "models": ("tunesmith.cli.models:list_models", "List the offline model catalogue."),
    "register": ("tunesmith.cli.lifecycle:register_command",
                 "Register a finished run as the next version of a named model (writes lineage.json)."),
    "versions": ("tunesmith.cli.lifecycle:versions_command",
                 "Show a named model's versions as a lineage tree: parent, aliases, headline metric, gate verdict, run."),
    "promote": ("tunesmith.cli.lifecycle:promote_command",
                "Check the recipe's promotion gates and move the champion alias to a version."),
    "rollback": ("tunesmith.cli.lifecycle:rollback_command",
                 "Move the champion alias back to the previous version."),
    "harvest": ("tunesmith.cli.feedback:harvest_command",
                "Turn logged corrections and preferred/rejected pairs into deduplicated SFT and preference data."),
    "drift": ("tunesmith.cli.feedback:drift_command",
              "Compare logged prompts with a version's training prompts (embeddings, length, label mix): drift or not."),
}


class Interrupted(Exception):
    """Ctrl-C inside a command (typer would turn a KeyboardInterrupt into a silent exit 130)."""


def load_command(target: str, name: str) -> click_core.Command:
    """The click command for ``"module:attribute"`` (a typer command function or a typer app)."""
    module, attr = target.split(":")
    obj = getattr(importlib.import_module(module), attr)
    if isinstance(obj, typer.Typer):
        cmd = typer.main.get_group(obj)
    else:
        single = typer.Typer(add_completion=False)
        single.command(name)(obj)
        cmd = typer.main.get_command(single)
    cmd.name = name
    return cmd


class LazyGroup(TyperGroup):
    """A typer group whose commands (``COMMANDS``) are imported on first use; help lists them from the table."""

    lazy = COMMANDS

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._listing = False

    def list_commands(self, ctx):
        return [*super().list_commands(ctx), *(n for n in self.lazy if n not in self.commands)]

    def get_command(self, ctx, cmd_name):
        cmd = super().get_command(ctx, cmd_name)
        if cmd is not None or cmd_name not in self.lazy:
            return cmd
        target, summary = self.lazy[cmd_name]
        if self._listing:         # the root help only needs the name and summary: import nothing
            return TyperCommand(name=cmd_name, help=summary)
        cmd = self.commands[cmd_name] = load_command(target, cmd_name)
        return cmd

    def format_help(self, ctx, formatter):
        self._listing = True
        try:
            return super().format_help(ctx, formatter)
        finally:
            self._listing = False

    def resolve_command(self, ctx, args):
        name = args[0] if args else ""
        names = self.list_commands(ctx)
        if name and not name.startswith("-") and name not in names:
            import difflib
            close = difflib.get_close_matches(name, names)
            ctx.fail(f"No such command {name!r}." + (f" Did you mean {', '.join(map(repr, close))}?" if close else ""))
        return super().resolve_command(ctx, args)

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except KeyboardInterrupt as e:
            raise Interrupted() from e


def _version(value: bool) -> None:
    if value:
        from .. import __version__
        typer.echo(f"{PROG} {__version__}")
        raise typer.Exit()


app = typer.Typer(cls=LazyGroup, add_completion=False, pretty_exceptions_enable=False,
                  help="Turn a pretrained LLM into an evaluated domain expert, on your own hardware.")


@app.callback()
def root(version: bool = typer.Option(False, "--version", is_eager=True, callback=_version,
                                      help="Print the version and exit.")) -> None:
    """Turn a pretrained LLM into an evaluated domain expert, on your own hardware."""


def usage_line(e: click_exc.UsageError) -> str:
    """One line for a click usage error: the message and where to read the usage.

    A group called without its command (bare ``tunesmith``, ``tunesmith data``) lists the commands
    instead of printing the whole help page.
    """
    ctx = getattr(e, "ctx", None)
    where = ctx.command_path if ctx is not None else PROG
    group = ctx is not None and isinstance(ctx.command, TyperGroup) and not ctx.invoked_subcommand
    if group and (isinstance(e, click_exc.NoArgsIsHelpError) or e.message.startswith("Missing command")):
        return f"error: missing command, one of: {', '.join(ctx.command.list_commands(ctx))} (see `{where} --help`)"
    return f"error: {e.format_message()} (see `{where} --help`)"


def main(argv: list[str] | None = None) -> int:
    """Run the CLI on ``argv`` (default ``sys.argv[1:]``) and return the exit code; never raises for user errors."""
    from ..errors import TunesmithError
    try:
        rc = app(args=argv, prog_name=PROG, standalone_mode=False)  # typer.Exit codes come back as the result
        return rc if isinstance(rc, int) else 0
    except TunesmithError as e:
        print(f"error: {e}", file=sys.stderr)
        return e.exit_code
    except (KeyboardInterrupt, Interrupted, *ABORTS):
        print(INTERRUPTED_HINT, file=sys.stderr)
        return 130
    except EXITS as e:
        return e.exit_code
    except click_exc.UsageError as e:
        print(usage_line(e), file=sys.stderr)
        return 2
    except click_exc.ClickException as e:
        print(f"error: {e.format_message()}", file=sys.stderr)
        return e.exit_code


if __name__ == "__main__":
    sys.exit(main())
