"""Detect record formats (chat, prompt/completion, alpaca, text, labelled, preference); normalise to Example."""
from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any

from ..config import DataConfig
from ..errors import TunesmithError
from .example import Example
from .io import ParseError, read_records

FORMATS = ("chat", "prompt_completion", "alpaca", "text", "labelled", "preference")
# OpenAI DPO spellings of the preferred / dispreferred reply fields (output, then completion)
PREFERRED = ("preferred_output", "preferred_completion")
NON_PREFERRED = ("non_preferred_output", "non_preferred_completion")
ROLES = ("system", "user", "assistant", "tool")


class FormatError(Exception):
    """A record that does not match its format's schema; ``kind`` is a short machine-readable tag."""

    def __init__(self, kind: str, message: str, field: str | None = None):
        self.kind, self.message, self.field = kind, message, field
        super().__init__(f"field '{field}': {message}" if field else message)


def _type_name(value: Any) -> str:
    return {dict: "an object", list: "a list", str: "a string", bool: "a boolean", int: "a number",
            float: "a number", type(None): "null"}.get(type(value), type(value).__name__)


def _scalar_str(value: Any) -> str:
    """A raw cell value as the string users write in recipes (``1.0`` -> ``"1"``, True -> ``"true"``)."""
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def _get_str(record: dict, key: str, *, required: bool = True) -> str | None:
    """``record[key]`` as a non-empty string, or a FormatError naming the field."""
    if key not in record or record[key] is None:
        if not required:
            return None
        raise FormatError("missing_field", "missing; expected a non-empty string", key)
    value = record[key]
    if not isinstance(value, str):
        raise FormatError("bad_type", f"is {_type_name(value)}; expected a string", key)
    if required and not value.strip():
        raise FormatError("empty_content", "is empty; expected a non-empty string", key)
    return value


def detect_format(record: Any, cfg: DataConfig, *, source: str | None = None,
                  line: int | None = None) -> str:
    """Guess the format of ``record`` from its field names."""
    if not isinstance(record, dict):
        raise TunesmithError(f"record is {_type_name(record)}; expected a JSON object (or a table row)",
                             file=source, line=line)
    keys = set(record)
    if keys & {*PREFERRED, *NON_PREFERRED} or {"chosen", "rejected"} <= keys:
        return "preference"
    if "messages" in keys:
        return "chat"
    if {"prompt", "completion"} <= keys:
        return "prompt_completion"
    if {"instruction", "output"} <= keys:
        return "alpaca"
    if {cfg.text_field, cfg.label_field} <= keys and (cfg.labels or cfg.format == "labelled"):
        return "labelled"
    if cfg.text_field in keys:
        return "text"
    found = ", ".join(sorted(map(str, keys))) or "none"
    raise TunesmithError(
        f"cannot detect the data format from fields ({found}); expected 'messages' (chat), "
        f"'prompt'+'completion', 'instruction'+'output' (alpaca), '{cfg.text_field}' (text), or "
        f"'{cfg.text_field}'+'{cfg.label_field}' with data.labels (labelled), or 'input'+'preferred_output'+"
        f"'non_preferred_output' / 'prompt'+'chosen'+'rejected' (preference)", file=source, line=line)


def _chat_messages(record: dict) -> list[dict]:
    if "messages" not in record:
        found = ", ".join(sorted(map(str, record))) or "none"
        raise FormatError("missing_messages", f"no 'messages' field (found {found}); expected a list "
                                              "of {role, content} messages", "messages")
    messages = _message_list(record["messages"], "messages")
    assistants = [m for m in messages if m["role"] == "assistant"]
    if not assistants:
        raise FormatError("no_assistant_turn", "no assistant turn; expected at least one message with "
                                               "role 'assistant'", "messages")
    if all(m.get("weight", 1) == 0 for m in assistants):
        raise FormatError("no_assistant_turn", "every assistant turn has weight 0; expected at least "
                                               "one trained assistant turn", "messages")
    return messages


def _message_list(raw: Any, name: str) -> list[dict]:
    """Validate a list of ``{role, content}`` messages found in field ``name``."""
    if not isinstance(raw, list):
        raise FormatError("messages_not_list", f"is {_type_name(raw)}; expected a list of "
                                               "{role, content} messages", name)
    messages = []
    for i, m in enumerate(raw):
        where = f"{name}[{i}]"
        if not isinstance(m, dict):
            raise FormatError("bad_type", f"is {_type_name(m)}; expected an object with role and "
                                          "content", where)
        if "role" not in m:
            raise FormatError("missing_field", f"missing; expected one of {', '.join(ROLES)}",
                              f"{where}.role")
        role = m["role"]
        if role not in ROLES:
            raise FormatError("unknown_role", f"unknown role {role!r}; expected one of {', '.join(ROLES)}",
                              f"{where}.role")
        content = m.get("content")
        if content is None:
            raise FormatError("missing_field", "missing; expected a non-empty string", f"{where}.content")
        if not isinstance(content, str):
            raise FormatError("bad_type", f"is {_type_name(content)}; expected a string",
                              f"{where}.content")
        if not content.strip():
            raise FormatError("empty_content", "is empty; expected a non-empty string",
                              f"{where}.content")
        message = {"role": role, "content": content}
        if "weight" in m:
            weight = m["weight"]
            if role != "assistant":
                raise FormatError("bad_weight", f"weight on a {role} turn; weights are only allowed on "
                                                "assistant turns", f"{where}.weight")
            if isinstance(weight, bool) or weight not in (0, 1):
                raise FormatError("bad_weight", f"is {weight!r}; expected 0 or 1", f"{where}.weight")
            message["weight"] = int(weight)
        messages.append(message)
    return messages


def _reply(value: Any, name: str) -> str:
    """One assistant reply: a non-empty string, or a list holding exactly one assistant message."""
    if isinstance(value, str):
        if not value.strip():
            raise FormatError("empty_content", "is empty; expected a non-empty string", name)
        return value
    messages = _message_list(value, name)
    if len(messages) != 1:
        raise FormatError("bad_reply", f"has {len(messages)} messages; expected exactly one assistant "
                                       "message", name)
    if messages[0]["role"] != "assistant":
        raise FormatError("bad_reply", f"role is {messages[0]['role']!r}; expected 'assistant'",
                          f"{name}[0].role")
    return messages[0]["content"]


def _first_present(record: dict, names: tuple[str, ...]) -> str:
    """The first of ``names`` present in ``record`` (the first name when none is)."""
    return next((n for n in names if record.get(n) is not None), names[0])


def _preference(record: dict) -> tuple[list[dict], str, str]:
    """(prompt messages, chosen reply, rejected reply) of a preference record.

    Accepts OpenAI's DPO shape (``input.messages`` + ``preferred_output``/``non_preferred_output``,
    or the ``*_completion`` spellings), ``prompt``/``chosen``/``rejected`` with a string or message
    list prompt and string or one-message replies, and ``chosen``/``rejected`` conversations
    without ``prompt`` whose shared turns before the last reply are the prompt.
    """
    if "chosen" in record or "rejected" in record or "prompt" in record:
        if record.get("prompt") is None and isinstance(record.get("chosen"), list) \
                and isinstance(record.get("rejected"), list):
            return _implicit_prompt(record)
        raw = record.get("prompt")
        if raw is None:
            raise FormatError("missing_field", "missing; expected a string or a list of messages", "prompt")
        prompt = _message_list(raw, "prompt") if isinstance(raw, list) else \
            [{"role": "user", "content": _get_str(record, "prompt")}]
        names = ("chosen", "rejected")
    else:
        names = (_first_present(record, PREFERRED), _first_present(record, NON_PREFERRED))
        raw = record.get("input")
        if raw is None:
            raise FormatError("missing_field", "missing; expected an object with 'messages'", "input")
        if not isinstance(raw, dict):
            raise FormatError("bad_type", f"is {_type_name(raw)}; expected an object with 'messages'",
                              "input")
        if raw.get("messages") is None:
            raise FormatError("missing_field", "missing; expected a list of messages", "input.messages")
        prompt = _message_list(raw["messages"], "input.messages")
    if not prompt:
        raise FormatError("empty_content", "is empty; expected at least one message",
                          "prompt" if names[0] == "chosen" else "input.messages")
    replies = []
    for name in names:
        if record.get(name) is None:
            raise FormatError("missing_field", "missing; expected the reply (a string or a list with one "
                                               "assistant message)", name)
        replies.append(_reply(record[name], name))
    return prompt, replies[0], replies[1]


def _implicit_prompt(record: dict) -> tuple[list[dict], str, str]:
    chosen = _message_list(record["chosen"], "chosen")
    rejected = _message_list(record["rejected"], "rejected")
    for name, conv in (("chosen", chosen), ("rejected", rejected)):
        if len(conv) < 2 or conv[-1]["role"] != "assistant":
            raise FormatError("bad_reply", "expected a conversation ending with an assistant reply "
                                           "(or give the shared turns in 'prompt')", name)
    shared = [{"role": m["role"], "content": m["content"]} for m in chosen[:-1]]
    if shared != [{"role": m["role"], "content": m["content"]} for m in rejected[:-1]]:
        raise FormatError("prompt_mismatch", "turns before the last reply differ from those in "
                                             "'chosen'; expected the same prompt", "rejected")
    return chosen[:-1], chosen[-1]["content"], rejected[-1]["content"]


def _labelled(record: dict, cfg: DataConfig, label_names: list[str]) -> tuple[str, str]:
    """Return (text, label name) of a labelled record."""
    text = _get_str(record, cfg.text_field)
    raw = record.get(cfg.label_field)
    if raw is None or (isinstance(raw, str) and not raw.strip()):
        raise FormatError("missing_field", "missing or empty; expected a label", cfg.label_field)
    if isinstance(raw, (dict, list)):
        raise FormatError("bad_type", f"is {_type_name(raw)}; expected a label value", cfg.label_field)
    key = _scalar_str(raw).strip()
    if cfg.labels:
        if key in cfg.labels:
            return text, cfg.labels[key]
        if key in cfg.labels.values():
            return text, key
        raise FormatError("unknown_label", f"unknown label {key!r}; expected one of "
                                           f"{', '.join(sorted(cfg.labels))}", cfg.label_field)
    if label_names and key not in label_names:
        raise FormatError("unknown_label", f"unknown label {key!r}; expected one of "
                                           f"{', '.join(label_names)}", cfg.label_field)
    return text, key


def _configured_labels(cfg: DataConfig) -> list[str] | None:
    return sorted(set(cfg.labels.values())) if cfg.labels else None


def labelled_prompt(cfg: DataConfig, text: str, label_names: list[str]) -> str:
    """The user message of a labelled example."""
    return f"{cfg.instruction}\n\nText: {text}\n\nAnswer with one of: {', '.join(label_names)}."


def to_example(record: Any, fmt: str, cfg: DataConfig, source: str, line: int, *,
               label_names: list[str] | None = None) -> Example:
    """Normalise one record of format ``fmt``; raises FormatError on schema problems.

    ``label_names`` is the label set shown in labelled prompts; it defaults to the names in
    ``cfg.labels`` and is required for labelled data without ``cfg.labels``.
    """
    if not isinstance(record, dict):
        raise FormatError("not_a_dict", f"record is {_type_name(record)}; expected a JSON object")
    if fmt == "text":
        return Example(text=_get_str(record, cfg.text_field), source=source, line=line)
    label = rejected = None
    if fmt == "preference":
        prompt, chosen, rejected = _preference(record)
        if chosen.strip() == rejected.strip():
            raise FormatError("identical_replies", "the preferred and the rejected reply are identical; "
                                                   "expected two different replies")
        messages = prompt + [{"role": "assistant", "content": chosen}]
    elif fmt == "chat":
        messages = _chat_messages(record)
    elif fmt == "prompt_completion":
        prompt, completion = _get_str(record, "prompt"), _get_str(record, "completion")
        messages = [{"role": "user", "content": prompt}, {"role": "assistant", "content": completion}]
    elif fmt == "alpaca":
        instruction = _get_str(record, "instruction")
        extra = _get_str(record, "input", required=False)
        output = _get_str(record, "output")
        user = f"{instruction}\n\n{extra}" if extra and extra.strip() else instruction
        messages = [{"role": "user", "content": user}, {"role": "assistant", "content": output}]
    elif fmt == "labelled":
        names = label_names or _configured_labels(cfg) or []
        text, label = _labelled(record, cfg, names)
        if not names:
            raise ValueError("labelled data without cfg.labels needs label_names")
        messages = [{"role": "user", "content": labelled_prompt(cfg, text, names)},
                    {"role": "assistant", "content": label}]
    else:
        raise TunesmithError(f"unknown format {fmt!r}; expected one of {', '.join(FORMATS)}",
                             field="data.format")
    if cfg.system_prompt and not any(m["role"] == "system" for m in messages):
        messages.insert(0, {"role": "system", "content": cfg.system_prompt})
    # labelled examples keep their raw text so cleaning can rebuild the prompt from it
    return Example(messages=messages, text=text if fmt == "labelled" else None, label=label,
                   source=source, line=line, rejected=rejected)


def _matches(record: Any, where: dict[str, str]) -> bool:
    if not where or not isinstance(record, dict):
        return True  # non-objects pass through so they are reported, not silently dropped
    return all(k in record and record[k] is not None and _scalar_str(record[k]) == v
               for k, v in where.items())


@dataclass
class LoadResult:
    """Everything learnt while loading one file (used by the loader and the validator)."""

    examples: list[Example] = field(default_factory=list)
    errors: list[dict] = field(default_factory=list)
    format: str | None = None
    lines: int = 0          # records read, parse errors included
    filtered_out: int = 0   # records dropped by `where`
    sampled_out: int = 0    # valid examples dropped by `max_examples`
    label_names: list[str] | None = None


def parse_file(cfg: DataConfig, spec: str, *, limit_seed: int = 0, sample: bool = True,
               label_names: list[str] | None = None) -> LoadResult:
    """Read, filter, detect, convert and (optionally) sample one data file; collect errors."""
    result = LoadResult()
    records: list[tuple[int, Any]] = []
    for line, record in read_records(spec, lenient=True):
        result.lines += 1
        if isinstance(record, ParseError):
            result.errors.append({"line": line, "kind": "parse_error", "field": None,
                                  "message": record.message})
        elif _matches(record, cfg.where):
            records.append((line, record))
        else:
            result.filtered_out += 1
    fmt = cfg.format
    if fmt == "auto":
        first = next(((ln, r) for ln, r in records if isinstance(r, dict)), None)
        fmt = detect_format(first[1], cfg, source=spec, line=first[0]) if first else None
    result.format = fmt
    if fmt == "labelled":
        result.label_names = label_names or _configured_labels(cfg) or _distinct_labels(records, cfg)
    for line, record in records:
        try:
            # fmt is None only when no record is an object: each then fails as not_a_dict.
            ex = to_example(record, fmt or "text", cfg, spec, line, label_names=result.label_names)
        except FormatError as e:
            result.errors.append({"line": line, "kind": e.kind, "field": e.field, "message": str(e)})
        else:
            result.examples.append(ex)
    result.errors.sort(key=lambda e: e["line"])
    if sample and cfg.max_examples and len(result.examples) > cfg.max_examples:
        keep = sorted(random.Random(limit_seed).sample(range(len(result.examples)), cfg.max_examples))
        result.sampled_out = len(result.examples) - len(keep)
        result.examples = [result.examples[i] for i in keep]
    return result


def _distinct_labels(records: list[tuple[int, Any]], cfg: DataConfig) -> list[str]:
    names = set()
    for _, record in records:
        if isinstance(record, dict):
            raw = record.get(cfg.label_field)
            if raw is not None and not isinstance(raw, (dict, list)) and _scalar_str(raw).strip():
                names.add(_scalar_str(raw).strip())
    return sorted(names)


def load_examples(cfg: DataConfig, spec: str, *, limit_seed: int = 0,
                  label_names: list[str] | None = None) -> tuple[list[Example], list[dict]]:
    """Load one file as Examples plus the schema errors found (``{"line", "kind", "message", ...}``).

    Pass the training set's ``label_names`` when loading validation/test files of labelled data
    without ``cfg.labels``, so every split shows the same label choices.
    """
    result = parse_file(cfg, spec, limit_seed=limit_seed, label_names=label_names)
    return result.examples, result.errors


def load_examples_strict(cfg: DataConfig, spec: str, *, limit_seed: int = 0,
                         label_names: list[str] | None = None) -> list[Example]:
    """Like ``load_examples`` but any bad record, or an empty result, raises TunesmithError."""
    result = parse_file(cfg, spec, limit_seed=limit_seed, label_names=label_names)
    if result.errors:
        first, more = result.errors[0], len(result.errors) - 1
        suffix = f" (and {more} more bad record{'s' if more > 1 else ''}; see `tunesmith data validate`)" \
            if more else ""
        err = TunesmithError(first["message"] + suffix, file=spec, line=first["line"])
        err.field = first["field"]
        raise err
    if not result.examples:
        why = f" after the filter data.where={cfg.where}" if cfg.where and result.filtered_out else ""
        raise TunesmithError(f"no examples{why}; expected at least one record", file=spec)
    return result.examples


def label_set(examples: list[Example]) -> list[str]:
    """The sorted distinct labels of ``examples`` (empty for unlabelled data)."""
    return sorted({ex.label for ex in examples if ex.label is not None})
