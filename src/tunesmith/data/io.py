"""Read JSONL/JSON, CSV and Parquet records (optionally gzip/bz2/xz compressed) with their line numbers."""
from __future__ import annotations

import bz2
import codecs
import csv
import gzip
import importlib.util
import io
import json
import lzma
import sys
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from ..errors import TunesmithError

PACKAGE_PREFIX = "package:"
_OPENERS = {".gz": gzip.open, ".bz2": bz2.open, ".xz": lzma.open}
_EXPECTED = "expected .jsonl, .json, .csv or .parquet (.jsonl/.json/.csv may end in .gz, .bz2 or .xz)"
_KIND = {".gz": "gzip", ".bz2": "bzip2", ".xz": "xz"}
# what a damaged compressed stream raises (gzip.BadGzipFile and bz2's "Invalid data stream" are OSErrors)
_CORRUPT = (OSError, EOFError, zlib.error, lzma.LZMAError)
MAX_DEPTH = 100     # nesting of lists/objects in one record (deeper: refused, before it can exhaust the stack)


@dataclass(frozen=True)
class ParseError:
    """A record that could not be parsed (yielded instead of raising in lenient mode)."""

    message: str


def resolve_path(spec: str) -> Path:
    """Turn a data spec into an existing file path.

    ``spec`` is a plain path or ``package:PKG/rel/path``: a file inside the installed Python
    package ``PKG``, located without importing the package.
    """
    if spec.startswith(PACKAGE_PREFIX):
        pkg, _, rel = spec[len(PACKAGE_PREFIX):].partition("/")
        if not pkg or not rel:
            raise TunesmithError("malformed package path; expected package:PKG/relative/path", file=spec)
        try:
            found = importlib.util.find_spec(pkg)
        except (ImportError, ValueError):
            found = None
        if found is None:
            raise TunesmithError(f"package {pkg} is not installed; install it with pip install {pkg}",
                                 file=spec)
        if not found.submodule_search_locations:
            raise TunesmithError(f"{pkg} is a module, not a package; expected a package folder holding "
                                 "the data file", file=spec)
        path = Path(found.submodule_search_locations[0]) / rel
    else:
        path = Path(spec).expanduser()
    if not path.is_file():
        raise TunesmithError("file not found; expected a JSONL, CSV or Parquet file", file=spec)
    return path


def _split_suffix(path: Path) -> tuple[str, str | None]:
    """Return (data extension, compression extension or None), e.g. ('.csv', '.bz2')."""
    suffixes = [s.lower() for s in path.suffixes]
    compression = suffixes[-1] if suffixes and suffixes[-1] in _OPENERS else None
    if compression:
        suffixes = suffixes[:-1]
    return (suffixes[-1] if suffixes else ""), compression


def _open_binary(path: Path, compression: str | None) -> IO[bytes]:
    return _OPENERS[compression](path, "rb") if compression else open(path, "rb")


def _corrupt(spec: str, compression: str, err: BaseException, after: int | None = None) -> TunesmithError:
    where = f" after line {after}" if after else ""
    detail = str(err) or type(err).__name__
    return TunesmithError(f"corrupt or truncated {_KIND[compression]} data{where} ({detail}); expected a complete "
                          f"{compression} file", file=spec)


def _guarded(spec: str, compression: str | None, records: Iterator, progress: list[int]) -> Iterator:
    """``records`` with a damaged compressed stream turned into one ``TunesmithError`` (``progress[0]``:
    the last line read)."""
    if not compression:
        yield from records
        return
    try:
        yield from records
    except _CORRUPT as e:
        raise _corrupt(spec, compression, e, progress[0]) from None


def _depth_error(value: Any) -> str | None:
    """A message if ``value`` nests lists/objects deeper than MAX_DEPTH (iterative: no recursion)."""
    stack = [(value, 1)]
    while stack:
        node, depth = stack.pop()
        if depth > MAX_DEPTH:
            return f"nested more than {MAX_DEPTH} levels deep; expected a flat record"
        children = node.values() if isinstance(node, dict) else node
        stack.extend((c, depth + 1) for c in children if isinstance(c, (dict, list)))
    return None


def _loads(text: str) -> Any:
    """``json.loads``, refusing deep nesting (cheaply pre-checked by counting brackets)."""
    try:
        value = json.loads(text)
    except RecursionError:
        raise ValueError(f"nested more than {MAX_DEPTH} levels deep; expected a flat record") from None
    if isinstance(value, (dict, list)) and text.count("[") + text.count("{") > MAX_DEPTH:
        why = _depth_error(value)
        if why:
            raise ValueError(why)
    return value


def read_records(spec: str, *, lenient: bool = False) -> Iterator[tuple[int, dict | Any]]:
    """Yield ``(line, record)`` for every record of a data file.

    Line numbers are 1-based lines of the file for JSONL (blank lines skipped) and CSV (the header
    is line 1, so the first row is line 2; a multi-line row gets the line it starts on), and
    row index + 1 for Parquet and for a ``.json`` file holding one JSON array. A malformed record
    raises ``TunesmithError`` naming file and line, or, with ``lenient=True``, is yielded as
    ``(line, ParseError(message))`` so callers can count it. A missing file or an unsupported
    extension raises at once, before iteration starts.
    """
    path = resolve_path(spec)
    ext, compression = _split_suffix(path)
    progress = [0]
    if ext == ".json" and _starts_with_array(path, compression, spec):
        return _guarded(spec, compression, _read_json_array(path, compression, spec), progress)
    if ext in (".jsonl", ".json", ".ndjson"):
        return _guarded(spec, compression, _read_json_lines(path, compression, spec, lenient, progress), progress)
    if ext == ".csv":
        return _guarded(spec, compression, _read_csv(path, compression, spec, lenient, progress), progress)
    if ext == ".parquet" and not compression:
        return _read_parquet(path, spec)
    shown = "".join(path.suffixes) or "no extension"
    raise TunesmithError(f"unsupported file type ({shown}); {_EXPECTED}", file=spec)


def _problem(spec: str, line: int, message: str, lenient: bool) -> tuple[int, ParseError]:
    if not lenient:
        raise TunesmithError(message, file=spec, line=line)
    return line, ParseError(message)


def _starts_with_array(path: Path, compression: str | None, spec: str) -> bool:
    try:
        with _open_binary(path, compression) as f:
            return f.read(4096).lstrip(b"\xef\xbb\xbf \t\r\n").startswith(b"[")
    except _CORRUPT as e:
        if compression:
            raise _corrupt(spec, compression, e) from None
        raise


def _bad_utf8(path: Path, compression: str | None) -> tuple[int, int] | None:
    """(line, byte offset in the file) of the first byte that is not valid UTF-8, or None."""
    decoder = codecs.getincrementaldecoder("utf-8")()
    offset, line = 0, 1
    with _open_binary(path, compression) as f:
        while chunk := f.read(1 << 16):
            try:
                decoder.decode(chunk)
            except UnicodeDecodeError as e:
                return line + chunk.count(b"\n", 0, e.start), offset + e.start
            line += chunk.count(b"\n")
            offset += len(chunk)
    return None


def _utf8_error(spec: str, path: Path, compression: str | None, expected: str) -> TunesmithError:
    found = _bad_utf8(path, compression)
    at = f" (byte offset {found[1]})" if found else ""
    return TunesmithError(f"not valid UTF-8{at}; expected {expected}", file=spec, line=found[0] if found else None)


def _read_json_lines(path: Path, compression: str | None, spec: str,
                     lenient: bool, progress: list[int]) -> Iterator[tuple[int, Any]]:
    with _open_binary(path, compression) as f:
        for lineno, raw in enumerate(f, start=1):
            progress[0] = lineno - 1
            try:
                text = raw.decode("utf-8").rstrip("\r\n")
            except UnicodeDecodeError as e:
                yield _problem(spec, lineno, f"not valid UTF-8 (byte {e.start + 1}); expected UTF-8 "
                                             "encoded JSON", lenient)
                continue
            if lineno == 1:
                text = text.lstrip("\ufeff")
            if not text.strip():
                continue
            try:
                record = _loads(text)
            except json.JSONDecodeError as e:
                yield _problem(spec, lineno, f"invalid JSON ({e.msg} at column {e.colno}); expected one "
                                             "JSON object per line", lenient)
                continue
            except ValueError as e:
                yield _problem(spec, lineno, f"{e}", lenient)
                continue
            yield lineno, record


def _read_json_array(path: Path, compression: str | None, spec: str) -> Iterator[tuple[int, Any]]:
    """A ``.json`` file holding one array: element index + 1 stands in for the line."""
    with _open_binary(path, compression) as f:
        data = f.read()
    try:
        records = _loads(data.decode("utf-8-sig"))
    except UnicodeDecodeError:
        raise _utf8_error(spec, path, compression, "UTF-8 encoded JSON") from None
    except json.JSONDecodeError as e:
        raise TunesmithError(f"invalid JSON ({e.msg} at column {e.colno}); expected a JSON array "
                             "of objects or one JSON object per line", file=spec, line=e.lineno) from None
    except ValueError as e:
        raise TunesmithError(f"{e}", file=spec) from None
    yield from enumerate(records, start=1)


def _raise_field_limit() -> None:
    limit = sys.maxsize
    while True:
        try:
            csv.field_size_limit(limit)
            return
        except OverflowError:
            limit //= 10


def _read_csv(path: Path, compression: str | None, spec: str,
              lenient: bool, progress: list[int]) -> Iterator[tuple[int, dict]]:
    _raise_field_limit()
    with _open_binary(path, compression) as raw, \
            io.TextIOWrapper(raw, encoding="utf-8-sig", newline="") as f:
        reader = csv.reader(f)
        try:
            header = next((row for row in reader if row), None)
            if header is None:
                raise TunesmithError("empty CSV file; expected a header row and data rows", file=spec)
            prev = reader.line_num
            while True:
                start = prev + 1
                try:
                    row = next(reader)
                except StopIteration:
                    return
                except csv.Error as e:
                    prev = reader.line_num
                    yield _problem(spec, start, f"malformed CSV row ({e})", lenient)
                    continue
                prev = progress[0] = reader.line_num
                if not row:
                    continue
                if len(row) != len(header):
                    yield _problem(spec, start, f"row has {len(row)} fields; expected {len(header)} "
                                                f"(the header's columns)", lenient)
                    continue
                yield start, dict(zip(header, row))
        except UnicodeDecodeError:
            raise _utf8_error(spec, path, compression, "a UTF-8 encoded CSV file") from None
        except csv.Error as e:
            raise TunesmithError(f"malformed CSV header ({e})", file=spec, line=1) from None


def _read_parquet(path: Path, spec: str) -> Iterator[tuple[int, dict]]:
    import pyarrow.parquet as pq
    from pyarrow import ArrowException

    try:
        pf = pq.ParquetFile(path)
        batches = pf.iter_batches(batch_size=4096)
        index = 0
        for batch in batches:
            for record in batch.to_pylist():
                index += 1
                yield index, record
    except (ArrowException, OSError) as e:
        raise TunesmithError(f"cannot read Parquet file ({e}); expected a valid Parquet file",
                             file=spec) from None
