"""tunesmith: turn a general pretrained LLM into an evaluated domain expert on your own hardware.

The Python API mirrors the CLI::

    import tunesmith
    run_dir = tunesmith.run("examples/sentiment/recipe.yaml", ["train.epochs=2"])
"""
from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["run", "prepare", "train", "evaluate", "export", "validate", "advise", "sweep", "verify",
           "load_recipe", "TunesmithError", "__version__"]
_ELSEWHERE = {"advise": "advise", "sweep": "sweep", "verify": "verify"}


def __getattr__(name):   # lazy: importing tunesmith stays fast (torch loads on first use)
    if name in {"run", "prepare", "train", "evaluate", "export", "validate"}:
        from . import pipeline
        return getattr(pipeline, name)
    if name in _ELSEWHERE:
        import importlib
        return getattr(importlib.import_module(f".{_ELSEWHERE[name]}", __name__), name)
    if name == "load_recipe":
        from .config import load_recipe
        return load_recipe
    if name == "TunesmithError":
        from .errors import TunesmithError
        return TunesmithError
    raise AttributeError(name)
