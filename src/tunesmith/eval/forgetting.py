"""Forgetting checks: general-text perplexity and general-prompt answers before vs after tuning; replay data."""
from __future__ import annotations

from ..config import Recipe
from ..data.example import Example
from ..data.tokenize import Tokenized, tokenize_example
from ..errors import TunesmithError
from . import metrics
from .baselines import load_documents
from ..generation import generate, merged_for_inference

# Everyday questions a general assistant should keep answering the same way after domain tuning.
BUILTIN_PROMPTS = [
    "What is the capital of France?",
    "Give me three tips for sleeping better.",
    "Explain what photosynthesis is in one sentence.",
    "Translate 'good morning' into Spanish.",
    "What is 12 multiplied by 7?",
    "Write a haiku about autumn leaves.",
    "Name the largest planet in our solar system.",
    "How do I boil an egg?",
    "What does a thermometer measure?",
    "Summarize the plot of Cinderella in two sentences.",
    "List three primary colors.",
    "Why is the sky blue?",
    "Write a polite email subject line asking for a meeting.",
    "What is the opposite of 'ancient'?",
    "How many days are there in a leap year?",
    "Suggest a name for a friendly golden retriever.",
]

NOT_GENERATIVE = "the classification objective replaces text generation with a label head"


def general_documents(recipe: Recipe) -> tuple[list[str], list[str]]:
    """(documents for the perplexity check, the remaining documents available for replay)."""
    cfg = recipe.forgetting
    if not cfg.general_text:
        return [], []
    docs = load_documents(cfg.general_text)
    return docs[: cfg.max_documents], docs[cfg.max_documents:]


def general_prompts(recipe: Recipe) -> list[list[dict]]:
    cfg = recipe.forgetting
    if not cfg.general_prompts:
        return []
    if cfg.general_prompts == "builtin":
        texts = BUILTIN_PROMPTS
        return [[{"role": "user", "content": t}] for t in texts[: cfg.max_prompts]]
    from ..data.io import read_records
    out = []
    for line, record in read_records(cfg.general_prompts):
        if isinstance(record, dict) and isinstance(record.get("messages"), list):
            out.append([m for m in record["messages"] if m.get("role") != "assistant"])
        elif isinstance(record, dict) and isinstance(record.get("prompt"), str):
            out.append([{"role": "user", "content": record["prompt"]}])
        else:
            raise TunesmithError("expected a record with `prompt` (string) or `messages` (list)",
                                 file=cfg.general_prompts, line=line, field="prompt")
    return out[: cfg.max_prompts]


def text_sequences(docs: list[str], tokenizer, max_length: int) -> list[Tokenized]:
    """Documents as plain language-modelling sequences (every token trained/scored)."""
    seqs = [tokenize_example(Example(text=d), tokenizer, max_length) for d in docs]
    return [s for s in seqs if s is not None]


def measure(model, tokenizer, recipe: Recipe, *, title: str, text_objective) -> dict:
    """General-text perplexity (the loss of ``text_objective``, a plain language-modelling objective)
    and greedy answers to the general prompts, for one generative model."""
    from ..train.loop import evaluate_loss
    docs, _ = general_documents(recipe)
    out: dict = {"documents": len(docs)}
    device = next(model.parameters()).device
    if docs:
        seqs = text_sequences(docs, tokenizer, min(recipe.data.max_length, 512))
        loss = evaluate_loss(model, seqs, text_objective, batch_size=recipe.train.batch_size,
                             pad_id=tokenizer.pad_token_id if tokenizer.pad_token_id is not None
                             else tokenizer.eos_token_id, device=device)
        out.update(loss=loss["val_loss"], perplexity=loss["perplexity"], tokens=loss.get("tokens"))
    prompts = general_prompts(recipe)
    if prompts:
        with merged_for_inference(model):
            answers = generate(model, tokenizer, prompts, max_new_tokens=48, batch_size=recipe.eval.batch_size)
        out["answers"] = [{"prompt": p[-1]["content"], "answer": a} for p, a in zip(prompts, answers)]
    return out


FRAGMENT_WORDS = 3       # an answer of at most this many words, where the base answered at length, is a fragment
FULL_WORDS = 8
BEHAVIOUR_SHARE = 0.25   # flag behaviour drift when this share of the general prompts turned into fragments/labels


def behaviour(pairs: list[tuple[dict, dict]], labels: list[str] | None = None) -> dict:
    """How the answers to general prompts changed in kind: answers that became fragments (a few words where the
    base wrote a sentence or more) or one of the task's labels; ``drift`` when either reaches the share."""
    def words(text: str) -> int:
        return len(str(text).split())
    full = [(x, y) for x, y in pairs if words(x["answer"]) >= FULL_WORDS]
    fragments = [(x, y) for x, y in full if words(y["answer"]) <= FRAGMENT_WORDS]
    label_like = [(x, y) for x, y in pairs
                  if labels and metrics.normalize(y["answer"]) in {metrics.normalize(lb) for lb in labels}
                  and metrics.normalize(x["answer"]) != metrics.normalize(y["answer"])]
    n = len(pairs)
    before_words = sorted(words(x["answer"]) for x, _ in pairs)
    after_words = sorted(words(y["answer"]) for _, y in pairs)
    out = {"prompts": n, "fragments": len(fragments), "label_answers": len(label_like),
           "median_words_before": before_words[n // 2] if n else None,
           "median_words_after": after_words[n // 2] if n else None,
           "examples": [{"prompt": x["prompt"], "before": x["answer"], "after": y["answer"]}
                        for x, y in (fragments + label_like)[:3]]}
    out["drift"] = bool(n) and max(len(fragments), len(label_like)) >= BEHAVIOUR_SHARE * n
    return out


def compare(before: dict | None, after: dict | None, threshold: float, labels: list[str] | None = None) -> dict | None:
    """Perplexity change and answer changes; ``flagged`` when perplexity rose beyond ``threshold`` or the
    answers to general prompts drifted in kind (fragments or task labels, see :func:`behaviour`)."""
    if not before or not after:
        return None
    if before.get("skipped") or after.get("skipped"):
        return {"skipped": before.get("skipped") or after.get("skipped")}
    out: dict = {"threshold": threshold, "flagged": False, "reasons": []}
    if before.get("perplexity") and after.get("perplexity"):
        change = after["perplexity"] / before["perplexity"] - 1
        out.update(perplexity_before=before["perplexity"], perplexity_after=after["perplexity"],
                   perplexity_change=change, documents=before.get("documents"))
        if change > threshold:
            out["flagged"] = True
            out["reasons"].append(f"general-text perplexity rose {100 * change:.1f}% "
                                  f"(threshold {100 * threshold:.0f}%)")
    a, b = before.get("answers") or [], after.get("answers") or []
    if a and b:
        pairs = list(zip(a, b))
        changed = [(x, y) for x, y in pairs if metrics.normalize(x["answer"]) != metrics.normalize(y["answer"])]
        similarity = metrics.rouge([y["answer"] for _, y in pairs], [x["answer"] for x, _ in pairs])
        out.update(prompts=len(pairs), answers_changed=len(changed),
                   answer_similarity=similarity.get("rougeL"),
                   examples=[{"prompt": x["prompt"], "before": x["answer"], "after": y["answer"]}
                             for x, y in changed[:5]])
        drift = out["behaviour"] = behaviour(pairs, labels)
        if drift["drift"]:
            out["flagged"] = True
            what = (f"{drift['fragments']} of {drift['prompts']} became fragments of at most {FRAGMENT_WORDS} words"
                    if drift["fragments"] >= drift["label_answers"] else
                    f"{drift['label_answers']} of {drift['prompts']} became one of the task's labels")
            out["reasons"].append(f"behaviour drift on general prompts: {what} (median answer "
                                  f"{drift['median_words_before']} -> {drift['median_words_after']} words)")
    return out


def replay_plan(recipe: Recipe) -> dict:
    """What ``forgetting.replay`` does for this run, for ``train.json`` and the report: ``{"share", "reason"}``
    (the caller refuses a share for an objective that cannot train on plain text)."""
    share = float(recipe.forgetting.replay)
    if not share:
        return {"share": 0.0, "reason": "forgetting.replay is 0, the default"}
    return {"share": share, "reason": "forgetting.replay in the recipe"}


def replay_sequences(recipe: Recipe, tokenizer, n_train: int, share: float) -> list[Tokenized]:
    """General-text sequences to mix into ``n_train`` training sequences so that ``share`` of the mix is
    replay (the caller checks that the objective trains on plain text)."""
    if not share:
        return []
    _, docs = general_documents(recipe)
    if not docs:
        raise TunesmithError("replay needs general text beyond the documents kept for the perplexity check",
                             field="forgetting.general_text")
    want = max(1, round(n_train * share / (1 - share)))
    seqs = text_sequences(docs, tokenizer, recipe.data.max_length)
    return [seqs[i % len(seqs)] for i in range(want)]
