"""`tunesmith verify RUN_DIR`: artifact parity checks (``tunesmith.verify`` loads in the body)."""
from __future__ import annotations

from typing import Optional

import typer


def verify_command(run_dir: str = typer.Argument(..., help="Run directory to check."),
                   server: Optional[str] = typer.Option(None, "--server", help="Also check a live OpenAI-compatible "
                                                        "server at this URL (e.g. http://127.0.0.1:8000)."),
                   api_key: Optional[str] = typer.Option(None, "--api-key", envvar="TUNESMITH_API_KEY",
                                                         help="Bearer token for --server."),
                   prompts: int = typer.Option(8, "--prompts", help="Test prompts to compare."),
                   max_new_tokens: Optional[int] = typer.Option(None, "--max-new-tokens",
                                                                help="Reply length (default: eval.max_new_tokens)."),
                   live: bool = typer.Option(False, "--live", help="Start tunesmith's own server on loopback for "
                                                                   "the run and check it too.")):
    """Check that the merged model, GGUF files and a live server answer exactly like adapter-on-base."""
    if live and server:
        from ..errors import TunesmithError
        raise TunesmithError("use --server URL or --live, not both", field="--live")
    if live:
        from ..serve.parity import verify_live
        result = verify_live(run_dir, prompts=prompts, max_new_tokens=max_new_tokens)
    else:
        from ..verify import verify
        result = verify(run_dir, server_url=server, api_key=api_key, prompts=prompts, max_new_tokens=max_new_tokens)
    if not result["ok"]:
        raise typer.Exit(1)


app = typer.Typer(add_completion=False, help="Artifact parity checks.")
app.command("verify")(verify_command)
