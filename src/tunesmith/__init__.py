"""tunesmith: turn a general pretrained LLM into an evaluated domain expert on your own hardware.

The Python API mirrors the CLI::

    import tunesmith
    run_dir = tunesmith.run(recipe_path, ["train.epochs=2"])     # e.g. the demo recipe in examples/sentiment/

The API names load on first use (importing tunesmith stays fast; torch loads when needed) and always
name the API functions: ``tunesmith.train``, ``.export``, ``.verify``, ``.sweep`` and ``.advise`` share
their names with submodules, and the package keeps the function when the import system binds such a
submodule. Reach those modules with ``from tunesmith.verify import ...`` or
``importlib.import_module("tunesmith.verify")``, not ``from tunesmith import verify``.
"""
from __future__ import annotations

import sys
import types

__version__ = "0.1.0"

# API name -> the module that defines it
API = {"run": "pipeline", "prepare": "pipeline", "train": "pipeline", "evaluate": "pipeline",
       "export": "pipeline", "validate": "pipeline", "advise": "advise", "sweep": "sweep", "verify": "verify",
       "load_recipe": "config", "TunesmithError": "errors"}

__all__ = [*API, "__version__"]


def __getattr__(name):   # lazy: the defining module is imported on first use, then the name is cached
    if name not in API:
        raise AttributeError(f"module 'tunesmith' has no attribute {name!r}")
    import importlib
    value = getattr(importlib.import_module(f".{API[name]}", __name__), name)
    globals()[name] = value
    return value


class _Package(types.ModuleType):
    """The ``tunesmith`` module: binding a submodule over an API name keeps the API function."""

    def __setattr__(self, name, value):
        if name in API and isinstance(value, types.ModuleType):
            return        # e.g. importing tunesmith.train: the module stays in sys.modules only
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package
