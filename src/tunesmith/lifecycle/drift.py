"""``tunesmith drift``: has live traffic moved away from what a version was trained on?

Compares the prompts logged by ``tunesmith serve --log-dir`` for a named model with the training prompts of
its champion (or a given ``NAME@ref``), three ways:

- **embeddings** (the evaluation's retrieval embedder, :class:`tunesmith.eval.retrieval.Embedder`: offline
  MiniLM, or TF-IDF): each live prompt's cosine similarity to its nearest training prompt, against the same
  number for the version's own held-out prompts (validation/test: what same-distribution traffic looks like);
  the share of live prompts less similar than the 5th percentile of the held-out ones; and the cosine distance
  between the live and the training centroids;
- **prompt length**: a two-sample Kolmogorov-Smirnov test (``scipy.stats.ks_2samp``) on word counts;
- **label mix** (label tasks): the answers' label distribution against the training labels, total variation
  distance and a chi-square test of the 2 x K table (``scipy.stats.chi2_contingency``).

A check flags drift when its effect size passes its threshold (and, for the tests, p < ``alpha``); the
verdict names every check that did.
"""
from __future__ import annotations

from collections import Counter

import numpy as np

from ..errors import TunesmithError
from ..rundir import Layout, Run, read_json, read_jsonl
from .feedback import logged_requests, model_versions, parse_since

OTHER = "(other)"
SIMILARITY_DROP = 0.15      # mean nearest-training similarity this much below the held-out prompts' -> drift
OUTLIER_SHARE = 0.5         # ... or this share of live prompts below the held-out 5th percentile
KS_MIN = 0.3                # KS statistic on prompt lengths
TV_MIN = 0.2                # total variation distance of the label mix
ALPHA = 0.01


def prompt_text(messages: list[dict]) -> str:
    """What varies between requests: the last user message (system prompts are shared)."""
    users = [m.get("content") or "" for m in messages if m.get("role") == "user"]
    return users[-1] if users else " ".join(m.get("content") or "" for m in messages)


def _split_prompts(run_dir, split: str) -> tuple[list[str], list[str | None]]:
    prompts, labels = [], []
    for rec in read_jsonl(Layout(run_dir).data_dir / f"{split}.jsonl"):
        msgs = rec.get("messages") or []
        last = max((i for i, m in enumerate(msgs) if m.get("role") == "assistant"), default=len(msgs))
        text = prompt_text(msgs[:last]) if msgs else rec.get("text") or ""
        if text.strip():
            prompts.append(text)
            labels.append(rec.get("label") if rec.get("label") is not None else
                          (msgs[last]["content"].strip() if last < len(msgs) else None))
    return prompts, labels


def _embedder(spec: str):
    """The requested embedder, or TF-IDF (with the reason) when the sentence-embedding model is unavailable."""
    from ..eval.retrieval import TFIDF, Embedder
    try:
        return Embedder(spec), None
    except (TunesmithError, ImportError, OSError) as e:
        if spec == TFIDF:
            raise
        return Embedder(TFIDF), f"embedding model {spec} unavailable ({str(e).splitlines()[0]}); used TF-IDF"


def embedding_check(train: list[str], held_out: list[str], live: list[str], spec: str,
                    drop: float = SIMILARITY_DROP, outlier_share: float = OUTLIER_SHARE) -> dict:
    embedder, note = _embedder(spec)
    embedder.fit(train + held_out + live)      # TF-IDF: new words must count in a live prompt's norm
    t, q = embedder.encode(train), embedder.encode(live)
    nn_live = (q @ t.T).max(axis=1)
    if held_out:
        nn_ref = (embedder.encode(held_out) @ t.T).max(axis=1)
        reference = "held-out prompts"
    else:                                        # leave-one-out among the training prompts
        sims = t @ t.T
        np.fill_diagonal(sims, -np.inf)
        nn_ref = sims.max(axis=1) if len(train) > 1 else np.ones(1)
        reference = "training prompts (leave-one-out)"
    low = float(np.percentile(nn_ref, 5))
    centroid = lambda m: m.mean(axis=0) / max(float(np.linalg.norm(m.mean(axis=0))), 1e-12)   # noqa: E731
    out = {"embedder": embedder.spec, "reference": reference,
           "live_nn_similarity": round(float(nn_live.mean()), 4),
           "reference_nn_similarity": round(float(nn_ref.mean()), 4),
           "similarity_drop": round(float(nn_ref.mean() - nn_live.mean()), 4),
           "outlier_share": round(float((nn_live < low).mean()), 4), "outlier_below": round(low, 4),
           "centroid_distance": round(1.0 - float(centroid(q) @ centroid(t)), 4),
           "thresholds": {"similarity_drop": drop, "outlier_share": outlier_share}}
    if note:
        out["note"] = note
    out["drift"] = out["similarity_drop"] > drop or out["outlier_share"] > outlier_share
    return out


def length_check(train: list[str], live: list[str], ks_min: float = KS_MIN, alpha: float = ALPHA) -> dict:
    from scipy.stats import ks_2samp
    a, b = [len(p.split()) for p in train], [len(p.split()) for p in live]
    res = ks_2samp(a, b)
    out = {"train_mean_words": round(float(np.mean(a)), 2), "live_mean_words": round(float(np.mean(b)), 2),
           "ks_statistic": round(float(res.statistic), 4), "p_value": float(res.pvalue),
           "thresholds": {"ks_statistic": ks_min, "alpha": alpha}}
    out["drift"] = out["ks_statistic"] > ks_min and out["p_value"] < alpha
    return out


def _as_label(answer: str, labels: dict[str, str]) -> str:
    return labels.get(" ".join(answer.casefold().strip(" \t\n.!\"'").split()), OTHER)


def label_check(train_labels: list[str], answers: list[str], tv_min: float = TV_MIN, alpha: float = ALPHA) -> dict:
    from scipy.stats import chi2_contingency
    names = sorted(set(train_labels))
    lookup = {n.casefold(): n for n in names}
    train_c, live_c = Counter(train_labels), Counter(_as_label(a, lookup) for a in answers)
    cols = names + ([OTHER] if live_c.get(OTHER) else [])
    table = np.array([[train_c.get(c, 0) for c in cols], [live_c.get(c, 0) for c in cols]], dtype=float)
    p_train, p_live = table[0] / table[0].sum(), table[1] / table[1].sum()
    tv = 0.5 * float(np.abs(p_train - p_live).sum())
    try:
        p_value = float(chi2_contingency(table).pvalue)
    except ValueError:                            # a degenerate table (one column)
        p_value = 1.0
    out = {"train": {c: round(float(x), 4) for c, x in zip(cols, p_train)},
           "live": {c: round(float(x), 4) for c, x in zip(cols, p_live)},
           "total_variation": round(tv, 4), "p_value": p_value, "thresholds": {"total_variation": tv_min,
                                                                             "alpha": alpha}}
    out["drift"] = tv > tv_min and p_value < alpha
    return out


def drift(ref: str, log_dir, *, since: str | None = None, embedding_model: str | None = None, root=None,
          tracking_uri=None, similarity_drop: float = SIMILARITY_DROP) -> dict:
    """Compare the logged prompts of ``ref``'s model with the training prompts of ``ref`` (``NAME``: the
    champion, else the latest version). Returns the numbers of each check and the verdict."""
    from .versions import resolve
    name, _ = model_versions(ref, root=root, tracking_uri=tracking_uri)
    version = resolve(ref, tracking_uri=tracking_uri, root=root)
    records, torn = logged_requests(log_dir, name, parse_since(since))
    live = [(prompt_text(r.get("messages") or []), r.get("answer") or "") for r in records]
    live = [(p, a) for p, a in live if p.strip()]
    if not live:
        raise TunesmithError(f"no logged chat completions of model '{name}'" + (f" since {since}" if since else "")
                             + "; expected requests to NAME@ALIAS on a server started with --log-dir",
                             file=str(log_dir), field="log-dir")
    train, train_labels = _split_prompts(version.run_dir, "train")
    if not train:
        raise TunesmithError(f"{version.ref} has no training prompts to compare with",
                             file=str(Layout(version.run_dir).data_dir / "train.jsonl"))
    held_out = []
    for split in ("validation", "test"):
        held_out += _split_prompts(version.run_dir, split)[0]
    spec = embedding_model or Run(version.run_dir).recipe.eval.embedding_model
    prompts = [p for p, _ in live]
    checks = {"embedding": embedding_check(train, held_out, prompts, spec, drop=similarity_drop),
              "length": length_check(train, prompts)}
    manifest = read_json(Layout(version.run_dir).data_dir / "manifest.json") or {}
    labelled = [lb for lb in train_labels if lb is not None]
    if (manifest.get("labels") or manifest.get("inferred_labels")) and len(labelled) == len(train_labels):
        checks["labels"] = label_check(labelled, [a for _, a in live])
    flagged = [k for k, c in checks.items() if c["drift"]]
    return {"name": name, "version": version.ref, "live_prompts": len(live), "train_prompts": len(train),
            "held_out_prompts": len(held_out), "since": since, "torn_lines": torn, "checks": checks,
            "drift": bool(flagged), "flagged": flagged, "verdict": verdict(checks, flagged)}


def verdict(checks: dict, flagged: list[str]) -> str:
    e, ln = checks["embedding"], checks["length"]
    parts = [f"nearest-training similarity {e['live_nn_similarity']:.3f} vs {e['reference_nn_similarity']:.3f} "
             f"for {e['reference']} (drop {e['similarity_drop']:+.3f}, {e['outlier_share']:.0%} outliers, centroid "
             f"distance {e['centroid_distance']:.3f})",
             f"prompt length {ln['live_mean_words']:.1f} vs {ln['train_mean_words']:.1f} words "
             f"(KS {ln['ks_statistic']:.2f}, p={ln['p_value']:.2g})"]
    if "labels" in checks:
        lb = checks["labels"]
        parts.append(f"label mix TV {lb['total_variation']:.2f} (p={lb['p_value']:.2g})")
    if flagged:
        return f"live traffic has moved away from the training data ({', '.join(flagged)}): " + "; ".join(parts)
    return "no drift detected: " + "; ".join(parts)


__all__ = ["drift", "embedding_check", "length_check", "label_check", "verdict", "prompt_text"]
