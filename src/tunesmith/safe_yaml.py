"""Bounded YAML loading for recipes and other small configuration: one clear line for every problem.

On top of ``yaml.SafeLoader``: a size cap, UTF-8 with the byte offset of a bad byte, duplicate keys
rejected (naming both lines), nesting depth and the number of values *after alias expansion*
limited while composing (a "billion laughs" alias bomb is refused before anything is built).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from yaml.nodes import MappingNode, Node, SequenceNode

from .errors import TunesmithError

MAX_BYTES = 1 << 20          # a recipe is configuration, not data
MAX_VALUES = 100_000         # scalars, sequences and mappings counted with every alias expanded
MAX_DEPTH = 64               # nesting of sequences/mappings


class YAMLLimitError(Exception):
    """A YAML document breaks one of this module's rules; ``line`` is 1-based or None."""

    def __init__(self, message: str, line: int | None = None):
        super().__init__(message)
        self.message, self.line = message, line


class _BoundedLoader(yaml.SafeLoader):
    """SafeLoader with depth/expansion limits while composing and duplicate-key detection."""

    def __init__(self, stream):
        super().__init__(stream)
        self._depth = 0

    def compose_node(self, parent, index):
        self._depth += 1
        try:
            if self._depth > MAX_DEPTH:
                mark = self.peek_event().start_mark
                raise YAMLLimitError(f"nested more than {MAX_DEPTH} levels deep; expected a shallow "
                                     "configuration", mark.line + 1)
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1

    def get_single_node(self):
        node = super().get_single_node()
        if node is not None:
            check_expansion(node)
        return node

    def construct_mapping(self, node, deep=False):
        if isinstance(node, MappingNode):
            seen: dict[Any, int] = {}
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":
                    continue
                key = self.construct_object(key_node, deep=True)
                try:
                    first = seen.get(key)
                except TypeError:           # unhashable: SafeConstructor words that error
                    continue
                line = key_node.start_mark.line + 1
                if first is not None:
                    where = f"twice on line {line}" if first == line else f"lines {first} and {line}"
                    raise YAMLLimitError(f"duplicate key {key!r} ({where}); a later key would silently "
                                         "replace the earlier one", line)
                seen[key] = line
        return super().construct_mapping(node, deep=deep)


def check_expansion(root: Node) -> None:
    """Raise if ``root``, aliases followed, holds more than MAX_VALUES values, nests deeper than
    MAX_DEPTH or refers to itself.

    Iterative, and linear in the number of distinct nodes: each node's expanded size and depth are
    computed once and reused wherever an alias points to it.
    """
    size: dict[int, tuple[int, int]] = {}       # id -> (values, depth)
    open_: set[int] = set()
    stack: list[tuple[Node, bool]] = [(root, False)]
    while stack:
        node, done = stack.pop()
        if id(node) in size:
            continue
        children = ([c for pair in node.value for c in pair] if isinstance(node, MappingNode)
                    else list(node.value) if isinstance(node, SequenceNode) else [])
        line = node.start_mark.line + 1
        if not done:
            if id(node) in open_:
                continue
            open_.add(id(node))
            stack.append((node, True))
            for c in children:
                if id(c) in open_:
                    raise YAMLLimitError("an alias refers to its own anchor (a recursive structure); "
                                         "expected plain values", c.start_mark.line + 1)
                if id(c) not in size:
                    stack.append((c, False))
            continue
        open_.discard(id(node))
        total = 1 + sum(size[id(c)][0] for c in children)
        depth = 1 + max((size[id(c)][1] for c in children), default=0)
        if total > MAX_VALUES:
            raise YAMLLimitError(f"expands to more than {MAX_VALUES:,} values (YAML aliases repeat "
                                 "their anchor's content); expected a small configuration", line)
        if depth > MAX_DEPTH:
            raise YAMLLimitError(f"nested more than {MAX_DEPTH} levels deep (aliases followed); expected a "
                                 "shallow configuration", line)
        size[id(node)] = (total, depth)


def load(text: str | bytes) -> Any:
    """Parse one YAML document with the limits above; raises ``YAMLLimitError`` or ``yaml.YAMLError``."""
    if isinstance(text, bytes):
        text = decode(text)
    if len(text.encode("utf-8", "surrogatepass")) > MAX_BYTES:
        raise YAMLLimitError(f"is larger than {MAX_BYTES // 1024} KiB; expected a small configuration")
    loader = _BoundedLoader(text)
    try:
        return loader.get_single_data()
    except RecursionError:
        raise YAMLLimitError("nested too deeply; expected a shallow configuration") from None
    finally:
        loader.dispose()


def decode(data: bytes) -> str:
    """UTF-8 (an optional BOM is removed); a bad byte raises ``YAMLLimitError`` with its offset and line."""
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        start = e.start + (3 if data.startswith(b"\xef\xbb\xbf") else 0)
        raise YAMLLimitError(f"not valid UTF-8 (byte 0x{data[start]:02x} at byte offset {start}); expected a "
                             "UTF-8 encoded YAML file", data.count(b"\n", 0, start) + 1) from None


def load_file(path: str | Path, what: str = "YAML file") -> Any:
    """Read and parse ``path`` (size-capped before reading); every problem is one ``TunesmithError``."""
    path = Path(path)
    label = str(path)
    try:
        size = path.stat().st_size
        if size > MAX_BYTES:
            raise TunesmithError(f"is {size:,} bytes; expected a {what} of at most {MAX_BYTES // 1024} KiB",
                                 file=label)
        data = path.read_bytes()
    except OSError as e:
        raise TunesmithError(f"cannot read ({e.strerror or e}); expected a readable {what}", file=label) from None
    return loads(data, label)


def loads(text: str | bytes, label: str) -> Any:
    """``load`` with every problem turned into one ``TunesmithError`` naming ``label`` and the line."""
    try:
        return load(text)
    except YAMLLimitError as e:
        raise TunesmithError(e.message, file=label, line=e.line) from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise TunesmithError(f"invalid YAML ({problem})", file=label,
                             line=mark.line + 1 if mark else None) from None
