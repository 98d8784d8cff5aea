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


def typed_lines(stdin, stdout):
    """The user's non-empty lines, each after a ``you> `` prompt, until /exit, /quit or end of input."""
    while True:
        stdout.write("you> ")
        stdout.flush()
        line = stdin.readline()
        if not line or line.strip() in {"/exit", "/quit"}:
            stdout.write("\n")
            return
        if line.strip():
            yield line.strip()


def classify(run_dir: Path, system: str | None, stdin, stdout) -> None:
    """A label-head run: each line is classified on its own (no history); the label, its probability and
    the next two labels are printed."""
    from . import objectives
    from .rundir import Run
    from .tuned import load_tuned
    run = Run(run_dir)
    if not run.model_dir.is_dir():
        raise TunesmithError("run has no trained model; train it first", file=str(run_dir))
    objective = objectives.from_recipe(run.recipe)
    objective.load_meta(run.model_dir)
    model, tok = load_tuned(run, objective=objective)
    system = system or run.recipe.data.system_prompt
    stdout.write(f"Classifying with {run.path.name} ({len(objective.labels)} labels: "
                 f"{', '.join(objective.labels[:8])}{', ...' if len(objective.labels) > 8 else ''}). "
                 "Each line is classified on its own; /exit or Ctrl-D quits.\n")
    for text in typed_lines(stdin, stdout):
        messages = ([{"role": "system", "content": system}] if system else []) + \
            [{"role": "user", "content": text}]
        probs = objective.predict(model, tok, [messages])[0]["probabilities"]
        ranked = sorted(probs.items(), key=lambda kv: -kv[1])
        nxt = ", ".join(f"{lb} {p:.2f}" for lb, p in ranked[1:3])
        stdout.write(f"label> {ranked[0][0]} ({ranked[0][1]:.2f}; next: {nxt})\n")


def chat(run_dir: Path, max_new_tokens: int = 256, temperature: float = 0.0, system: str | None = None,
         stdin=None, stdout=None) -> None:
    from . import objectives
    from .generation import stream_chat
    from .objectives.base import hook
    from .rundir import Run
    stdin, stdout = stdin or sys.stdin, stdout or sys.stdout
    objective = objectives.OBJECTIVES[Run(Path(run_dir)).recipe.objective.name]
    if not objective.generates_text and hook(objective, "label_logprobs"):
        return classify(Path(run_dir), system, stdin, stdout)
    model, tok, run = load_for_chat(Path(run_dir))
    system = system or run.recipe.data.system_prompt
    history: list[dict] = [{"role": "system", "content": system}] if system else []
    stdout.write(f"Chatting with {run.path.name} ({run.recipe.method.name} on {run.recipe.model.name}). "
                 "/reset clears the history, /exit or Ctrl-D quits.\n")
    for text in typed_lines(stdin, stdout):
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
