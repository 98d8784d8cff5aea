"""Interactive terminal chat with a tuned run's model, streaming tokens as they are generated."""
from __future__ import annotations

import sys
from pathlib import Path

from .errors import TunesmithError


def load_for_chat(run_dir: Path):
    """The run's merged model if exported, else base + its trained adapter/weights (as evaluated)."""
    from .rundir import Run
    from .tuned import load_tuned
    from . import objectives
    run = Run(run_dir)
    if not objectives.OBJECTIVES[run.recipe.objective.name].generates_text:
        raise TunesmithError(f"objective {run.recipe.objective.name} predicts with its own head; there is no "
                             "text reply to chat with", file=str(run_dir))
    if not run.has_merged() and not run.model_dir.is_dir():
        raise TunesmithError("run has no trained model to chat with; train it first", file=str(run_dir))
    model, tok = load_tuned(run, prefer_merged=True)
    return model, tok, run


def chat(run_dir: Path, max_new_tokens: int = 256, temperature: float = 0.0, system: str | None = None,
         stdin=None, stdout=None) -> None:
    from .generation import stream_chat
    stdin, stdout = stdin or sys.stdin, stdout or sys.stdout
    model, tok, run = load_for_chat(Path(run_dir))
    system = system or run.recipe.data.system_prompt
    history: list[dict] = [{"role": "system", "content": system}] if system else []
    stdout.write(f"Chatting with {run.path.name} ({run.recipe.method.name} on {run.recipe.model.name}). "
                 "/reset clears the history, /exit or Ctrl-D quits.\n")
    while True:
        stdout.write("you> ")
        stdout.flush()
        line = stdin.readline()
        if not line or line.strip() in {"/exit", "/quit"}:
            stdout.write("\n")
            return
        text = line.strip()
        if not text:
            continue
        if text == "/reset":
            history = history[:1] if system else []
            continue
        history.append({"role": "user", "content": text})
        stdout.write("model> ")
        reply = []
        for piece in stream_chat(model, tok, history, max_new_tokens, temperature):
            reply.append(piece)
            stdout.write(piece)
            stdout.flush()
        stdout.write("\n")
        history.append({"role": "assistant", "content": "".join(reply).strip()})
