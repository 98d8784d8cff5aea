"""The CLI's error contract and its light start: one `error:` line and exit 2 for usage errors, 130 on Ctrl-C,
`--version`, and `--help` without torch."""
from __future__ import annotations

import inspect
import json
import subprocess
import sys

import pytest

import tunesmith
from tunesmith.cli import main
from tunesmith.cli.main import COMMANDS, load_command
from tunesmith.errors import TunesmithError


def cli(*args: str, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "tunesmith.cli", *args], capture_output=True, text=True,
                          timeout=120, cwd=cwd)


def one_line(err: str) -> str:
    lines = [x for x in err.splitlines() if x.strip()]
    assert len(lines) == 1, err
    assert "Traceback" not in err
    return lines[0]


def test_version():
    p = cli("--version")
    assert p.returncode == 0 and p.stdout.strip() == f"tunesmith {tunesmith.__version__}" and not p.stderr


@pytest.mark.parametrize("argv, expected", [
    (["trian"], "No such command 'trian'. Did you mean 'train'?"),
    ([], "missing command, one of: run, data, train"),
    (["run", "--bogus"], "No such option: --bogus"),
    (["--bogus"], "No such option: --bogus"),
    (["run"], "Missing argument 'recipe'"),
    (["data"], "missing command, one of: validate, prepare"),
    (["runs", "lst"], "No such command 'lst'. Did you mean 'list'?"),
])
def test_usage_errors_are_one_line_and_exit_2(argv, expected):
    p = cli(*argv)
    line = one_line(p.stderr)
    assert p.returncode == 2 and not p.stdout
    assert line.startswith("error: ") and expected in line and "--help" in line


def test_missing_recipe_is_one_line_naming_the_file(tmp_path):
    p = cli("run", "missing.yaml", cwd=tmp_path)
    line = one_line(p.stderr)
    assert p.returncode == 2 and line.startswith("error: ") and "missing.yaml" in line and "not found" in line
    assert not (tmp_path / "runs").exists()


def test_help_imports_no_torch():
    """`tunesmith --help` and `tunesmith CMD --help` for every command except serve/worker."""
    names = [n for n in COMMANDS if n not in ("serve", "worker")]
    code = ("import contextlib, io, json, sys\n"
            "from tunesmith.cli import main\n"
            "heavy, codes = {}, {}\n"
            f"for argv in [[]] + [[n] for n in {names!r}] + [['data', 'validate'], ['runs', 'list']]:\n"
            "    with contextlib.redirect_stdout(io.StringIO()):\n"
            "        codes[' '.join(argv)] = main([*argv, '--help'])\n"
            "    for m in ('torch', 'transformers', 'tunesmith.pipeline'):\n"
            "        if m in sys.modules:\n"
            "            heavy.setdefault(m, ' '.join(argv))\n"
            "print(json.dumps({'heavy': heavy, 'codes': codes}))\n")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    out = json.loads(p.stdout)
    assert set(out["codes"].values()) == {0}, out
    assert out["heavy"] == {}, f"imported by `tunesmith <cmd> --help`: {out['heavy']}"


def test_serve_help_imports_no_torch():
    code = ("import contextlib, io, sys\nfrom tunesmith.cli import main\n"
            "with contextlib.redirect_stdout(io.StringIO()):\n"
            "    assert main(['serve', '--help']) == 0 and main(['worker', '--help']) == 0\n"
            "assert 'torch' not in sys.modules\n")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr


@pytest.mark.parametrize("name", list(COMMANDS))
def test_listed_summary_is_the_commands_own(name):
    """The root help lists each command from COMMANDS without importing it: the summary must stay its help."""
    target, summary = COMMANDS[name]
    cmd = load_command(target, name)
    assert cmd.name == name
    assert inspect.cleandoc(cmd.help).splitlines()[0] == summary


def test_keyboard_interrupt_exits_130_with_a_hint(monkeypatch, capsys):
    def interrupted():
        raise KeyboardInterrupt
    monkeypatch.setattr("tunesmith.cli.models.list_models", interrupted)
    assert main(["models"]) == 130
    assert "--resume" in one_line(capsys.readouterr().err)


def test_tunesmith_error_exits_2(monkeypatch, capsys):
    def bad():
        raise TunesmithError("expected something else", file="x.yaml", line=3, field="train.lr")
    monkeypatch.setattr("tunesmith.cli.models.list_models", bad)
    assert main(["models"]) == 2
    assert one_line(capsys.readouterr().err) == "error: x.yaml:3, field 'train.lr': expected something else"


def test_serve_flags_are_generated_from_the_settings():
    """Every ServeSettings field is a flag with the field's default and description (no copied defaults)."""
    import typer
    from typer.testing import CliRunner

    from tunesmith.cli.serve import serve_app, settings_parameters
    from tunesmith.serve.settings import ServeSettings
    params = {p.name: p.default for p in settings_parameters()}
    assert params.keys() == ServeSettings.model_fields.keys()
    for name, field in ServeSettings.model_fields.items():
        option = params[name]
        assert isinstance(option, typer.models.OptionInfo)
        if field.default_factory is None:
            assert option.default == field.default, name
        if field.description:
            assert option.help.startswith(field.description), name
    text = CliRunner().invoke(serve_app, ["--help"], env={"COLUMNS": "200"}).output
    for flag in ("--model", "--runs", "--api-key", "--adapter-budget-mb", "--max-batch-size", "--batch-wait-ms",
                 "--device", "--default-max-tokens", "--no-gguf", "--gguf-context", "--host", "--port", "--jobs-db"):
        assert flag in text, flag
