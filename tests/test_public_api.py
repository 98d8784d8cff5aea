"""The README's Python API: each documented name is the API function, also after the same-named submodules
(tunesmith.train, .export, .verify, .sweep, .advise) have been imported, and stays so on a second call."""
from __future__ import annotations

import importlib
import inspect
import json
import subprocess
import sys
import types

import tunesmith

# name -> the module that defines the function
DOCUMENTED = {"run": "tunesmith.pipeline", "prepare": "tunesmith.pipeline", "train": "tunesmith.pipeline",
              "evaluate": "tunesmith.pipeline", "export": "tunesmith.pipeline", "validate": "tunesmith.pipeline",
              "advise": "tunesmith.advise", "sweep": "tunesmith.sweep", "verify": "tunesmith.verify",
              "load_recipe": "tunesmith.config"}
SHADOWING_SUBMODULES = ["tunesmith.train", "tunesmith.train.loop", "tunesmith.train.checkpoint", "tunesmith.export",
                        "tunesmith.verify", "tunesmith.sweep", "tunesmith.advise", "tunesmith.pipeline"]


def check_api_names():
    for name, module in DOCUMENTED.items():
        fn = getattr(tunesmith, name)
        assert inspect.isfunction(fn) and callable(fn), (name, fn)
        assert fn.__module__ == module and fn.__name__ == name, (name, fn.__module__)
        assert fn is getattr(sys.modules[module], name)


def test_documented_names_are_functions_after_the_submodules_load():
    for name in DOCUMENTED:             # forget cached names: the lookups below start from scratch
        vars(tunesmith).pop(name, None)
    for module in SHADOWING_SUBMODULES:
        importlib.import_module(module)
    check_api_names()
    check_api_names()
    assert set(DOCUMENTED) <= set(tunesmith.__all__)


def test_in_a_fresh_process_the_names_survive_the_imports_a_run_makes():
    """The README failure: after the first API call had imported tunesmith.train etc., the second call hit
    the module (`TypeError: 'module' object is not callable`)."""
    code = (f"import importlib, inspect, tunesmith\n"
            f"first = {{n: getattr(tunesmith, n) for n in {list(DOCUMENTED)!r}}}\n"
            f"for m in {SHADOWING_SUBMODULES!r}:\n"
            f"    importlib.import_module(m)\n"
            f"for n, f in first.items():\n"
            f"    assert getattr(tunesmith, n) is f and inspect.isfunction(f), n\n")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr


def test_submodules_stay_reachable():
    assert isinstance(importlib.import_module("tunesmith.train"), types.ModuleType)
    assert isinstance(sys.modules["tunesmith.verify"], types.ModuleType)
    from tunesmith.train.loop import train as loop_train
    assert loop_train.__module__ == "tunesmith.train.loop"
    from tunesmith import export
    assert export is sys.modules["tunesmith.pipeline"].export
    tunesmith.some_attribute = 1            # other attributes bind as usual
    assert tunesmith.some_attribute == 1
    del tunesmith.some_attribute


def test_validate_called_twice(sentiment_file, tmp_path):
    for i in range(2):
        out = tmp_path / f"report-{i}.json"
        report = tunesmith.validate(str(sentiment_file), out=out, with_tokens=False)
        assert report["valid"] == 80 and not report.get("invalid")
        assert json.loads(out.read_text())["valid"] == 80
        importlib.import_module("tunesmith.train.loop")      # between the calls, as a run would
