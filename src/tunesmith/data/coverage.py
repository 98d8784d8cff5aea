"""Label tasks: infer the label set of chat data, and check that every evaluated label is trained on.

A model tuned on the tokens of the labels it was shown cannot learn a label that never (or almost
never) appears in training; these checks say so before training, with the numbers.
"""
from __future__ import annotations

from collections import Counter

from .example import Example

MAX_LABELS = 50          # more distinct answers than this: not a label task
MAX_LABEL_CHARS = 40     # a label is a short one-line answer
MIN_PER_LABEL = 3        # on average each label must be given at least this often
RARE_COUNT = 5           # a label seen fewer times than this in training is rare ...
RARE_SHARE = 0.01        # ... or one making up less than this share of training
SPLITS = ("train", "validation", "test")


def label_of(ex: Example) -> str | None:
    """The label of a labelled example, else the (stripped) last assistant answer."""
    if ex.label is not None:
        return ex.label
    ref = ex.reference
    return ref.strip() if ref is not None else None


def infer_labels(examples: list[Example]) -> list[str] | None:
    """The label set when every example's answer comes from a small set of short answers, else None.

    Chat-like data only (text and preference data are never label tasks). A label task has 2 to
    ``MAX_LABELS`` distinct answers, each one line of at most ``MAX_LABEL_CHARS`` characters, and
    each given ``MIN_PER_LABEL`` times on average.
    """
    if not examples or any(not ex.messages or ex.rejected is not None for ex in examples):
        return None
    answers = Counter(label_of(ex) for ex in examples)
    if not 2 <= len(answers) <= MAX_LABELS or len(examples) < MIN_PER_LABEL * len(answers):
        return None
    if any(not a or len(a) > MAX_LABEL_CHARS or "\n" in a for a in answers):
        return None
    return sorted(answers)


def label_coverage(splits: dict[str, list[Example]], labels: list[str]) -> dict:
    """Label distribution per split and the evaluated labels that training lacks or barely has.

    A label of the validation or test split is ``absent`` from training when it never occurs there
    and ``rare`` when it occurs fewer than ``RARE_COUNT`` times or in under ``RARE_SHARE`` of the
    training examples. ``warning`` sums the problems up in one sentence (None when there are none).
    """
    known = list(labels)
    dist: dict[str, dict[str, int]] = {}
    for name in SPLITS:
        if name not in splits:
            continue
        counts = Counter(label_of(ex) for ex in splits[name])
        extra = sorted(k for k in counts if k is not None and k not in known)
        dist[name] = {k: counts.get(k, 0) for k in known + extra}
    train = dist.get("train", {})
    n_train = sum(train.values())
    issues = []
    for name in ("validation", "test"):
        for label, n in dist.get(name, {}).items():
            have = train.get(label, 0)
            if n and (have < RARE_COUNT or (n_train and have / n_train < RARE_SHARE)):
                issues.append({"label": label, "split": name, "count": n, "train_count": have,
                               "kind": "absent" if have == 0 else "rare"})
    warning = None
    if issues:
        shown = "; ".join(f"'{i['label']}' is {i['count']}x in {i['split']} but {i['train_count']}x in "
                          f"{n_train} training examples" for i in issues[:3])
        more = f" (and {len(issues) - 3} more)" if len(issues) > 3 else ""
        warning = (f"{len(issues)} evaluated label(s) absent or rare in training, so the model can "
                   f"hardly learn them: {shown}{more}")
    return {"labels": known, "distribution": dist, "issues": issues, "warning": warning}
