"""Bad recipes, overrides and data files: each ends in one TunesmithError line naming the field/line.

Table-driven: a case is (recipe text or bytes, overrides, expected field, expected line, words the
message must contain). Data-file cases go through ``read_records``.
"""
from __future__ import annotations

import bz2
import gzip
import json
import lzma
import random
import time

import pytest

from tunesmith.config import load_recipe
from tunesmith.data.io import read_records
from tunesmith.errors import TunesmithError

B = "data: {train: d.jsonl}\n"


def _bomb(levels: int = 9, where: str = "sweep") -> str:
    """The billion-laughs document inside `sweep.space.x.choices` (9**9 values once expanded)."""
    rows = ["        - &a0 [lol, lol, lol, lol, lol, lol, lol, lol, lol]"]
    rows += [f"        - &a{i} [" + ", ".join([f"*a{i - 1}"] * 9) + "]" for i in range(1, levels + 1)]
    return B + "sweep:\n  space:\n    train.lr:\n      type: categorical\n      choices:\n" + "\n".join(rows) + "\n"


# (id, recipe, overrides, field, line, words in the message)
RECIPES = [
    # --- method / objective: one class per name, foreign keys rejected with the valid keys
    ("full-with-r", B + "method: {name: full, r: 64}\n", [], "method.r", None, ["method 'full'", "name"]),
    ("full-with-virtual-tokens", B + "method: {name: full, num_virtual_tokens: 3}\n", [],
     "method.num_virtual_tokens", None, ["expected one of: name"]),
    ("ia3-with-alpha", B + "method: {name: ia3, alpha: 8}\n", [], "method.alpha", None,
     ["method 'ia3'", "target_modules"]),
    ("lora-with-adapter-size", B + "method: {name: lora, adapter_size: 8}\n", [], "method.adapter_size", None,
     ["alpha", "dropout", "r", "target_modules"]),
    ("dora-with-top-k", B + "method: {name: dora, top_k_layers: 1}\n", [], "method.top_k_layers", None,
     ["method 'dora'"]),
    ("prefix-with-init-text", B + "method: {name: prefix_tuning, prompt_init_text: hi}\n", [],
     "method.prompt_init_text", None, ["num_virtual_tokens"]),
    ("bitfit-with-sparse", B + "method: {name: bitfit, sparse_fraction: 0.5}\n", [], "method.sparse_fraction",
     None, ["method 'bitfit'"]),
    ("sft-with-teacher", B + "objective: {name: sft, teacher: x, beta: 9}\n", [], "objective.teacher", None,
     ["objective 'sft'", "label_smoothing", "neftune_alpha"]),
    ("dpo-with-kd", B + "objective: {name: dpo, kd: feature}\n", [], "objective.kd", None, ["beta"]),
    ("classification-with-beta", B + "objective: {name: classification, beta: 0.2}\n", [], "objective.beta",
     None, ["objective 'classification'"]),
    ("distill-with-label-smoothing", B + "objective: {name: distill, label_smoothing: 0.1}\n", [],
     "objective.label_smoothing", None, ["teacher", "temperature"]),
    ("unknown-method", B + "method: {name: qlora}\n", [], "method.name", None, ["unknown method 'qlora'", "lora"]),
    ("unknown-objective", B + "objective: {name: ppo}\n", [], "objective.name", None, ["dpo", "distill"]),
    ("method-not-a-mapping", B + "method: lora\n", [], "method", None, ["mapping"]),
    ("override-switch-with-foreign-override", B + "method: {name: lora, r: 8}\n", ["method.name=ia3", "method.r=4"],
     "method.r", None, ["method 'ia3'"]),
    ("file-section-with-two-methods-keys", B + "method: {name: freeze, r: 4, top_k_layers: 0}\n", [], "method.r",
     None, ["method 'freeze'", "top_k_layers"]),
    ("override-foreign-key", B, ["method.name=full", "method.r=8"], "method.r", None, ["method 'full'"]),
    ("override-unknown-method", B, ["method.name=qlora"], "method.name", None, ["unknown method"]),
    ("method-value-range", B + "method: {name: lora, r: 4000}\n", [], "method.r", None, ["1024"]),
    ("objective-value-range", B + "objective: {name: distill, kd_weight: 2}\n", [], "objective.kd_weight", None,
     ["less than or equal to 1"]),
    # --- finite bounds
    ("seed-negative", B + "train: {seed: -1}\n", [], "train.seed", None, ["greater than or equal to 0"]),
    ("seed-2-70", B + f"train: {{seed: {2**70}}}\n", [], "train.seed", None, ["4294967295"]),
    ("seed-override-2-64", B, [f"train.seed={2**64}"], "train.seed", None, ["4294967295"]),
    ("split-seed", B.replace("}", ", split: {seed: -5}}"), [], "data.split.seed", None, ["greater than"]),
    ("sweep-seed", B + f"sweep: {{seed: {2**40}}}\n", [], "sweep.seed", None, ["less than"]),
    ("epochs-inf", B + "train: {epochs: .inf}\n", [], "train.epochs", None, ["finite"]),
    ("epochs-nan", B + "train: {epochs: .nan}\n", [], "train.epochs", None, ["finite"]),
    ("epochs-huge", B + "train: {epochs: 1.0e+9}\n", [], "train.epochs", None, ["less than or equal"]),
    ("lr-nan-override", B, ["train.lr=.nan"], "train.lr", None, ["finite"]),
    ("max-grad-norm-inf", B + "train: {max_grad_norm: .inf}\n", [], "train.max_grad_norm", None, ["finite"]),
    ("alpha-inf", B + "method: {name: rslora, alpha: .inf}\n", [], "method.alpha", None, ["finite"]),
    ("beta-inf", B + "objective: {name: orpo, beta: .inf}\n", [], "objective.beta", None, ["finite"]),
    ("temperature-1e309", B + "objective: {name: distill, temperature: 1e309}\n", [], "objective.temperature",
     None, ["finite"]),
    ("sweep-range-inf", B + "sweep: {space: {train.lr: {type: float, low: 0.1, high: .inf}}}\n", [],
     "sweep.space.train.lr.high", None, ["finite"]),
    ("sweep-dim-unknown-key", B + "sweep: {space: {train.lr: {type: float, low: 0, high: 1, lo: 2}}}\n", [],
     "sweep.space.train.lr.lo", None, ["choices", "high", "low"]),
    ("batch-size-huge", B + f"train: {{batch_size: {2**40}}}\n", [], "train.batch_size", None, ["less than"]),
    # --- YAML safety
    ("duplicate-top-level", B + "train: {lr: 0.1}\nname: x\ntrain: {epochs: 2}\n", [], None, 4,
     ["duplicate key 'train'", "lines 2 and 4"]),
    ("duplicate-nested", "data:\n  train: a.jsonl\n  max_length: 64\n  train: b.jsonl\n", [], None, 4,
     ["duplicate key 'train'", "lines 2 and 4"]),
    ("duplicate-in-flow", B + "method: {name: lora, r: 4, r: 8}\n", [], None, 2, ["duplicate key 'r'"]),
    ("duplicate-override-value", B, ["data.where={a: x, a: y}"], "data.where", None, ["duplicate key 'a'"]),
    ("alias-bomb-in-sweep-choices", _bomb(), [], None, None, ["expands to more than", "aliases"]),
    ("alias-bomb-in-override", B, ["sweep.space.x={a: &a [1,1,1,1,1,1,1,1,1,1], b: &b [*a,*a,*a,*a,*a,*a,*a,*a,*a,*a],"
                                   " c: &c [*b,*b,*b,*b,*b,*b,*b,*b,*b,*b], d: &d [*c,*c,*c,*c,*c,*c,*c,*c,*c,*c],"
                                   " e: [*d,*d,*d,*d,*d,*d,*d,*d,*d,*d,*d,*d]}"],
     "sweep.space.x", None, ["expands to more than"]),
    ("recursive-alias", B + "x: &a [1, *a]\n", [], None, 2, ["refers to its own anchor"]),
    ("deep-nesting", B + "x: " + "[" * 5000 + "]" * 5000 + "\n", [], None, None, ["nested more than"]),
    ("too-large", B + "# " + "x" * (1 << 20) + "\n", [], None, None, ["at most 1024 KiB"]),
    ("not-utf8", b"data: {train: d.jsonl}\nname: caf\xe9\n", [], None, 2, ["not valid UTF-8", "byte offset 32"]),
    ("not-utf8-latin1-bom", b"\xff\xfedata: x\n", [], None, 1, ["not valid UTF-8", "byte offset 0"]),
    ("not-a-mapping-list", "- data\n- train\n", [], None, None, ["must be a mapping", "list"]),
    ("not-a-mapping-scalar", "just some words\n", [], None, None, ["must be a mapping", "str"]),
    ("non-text-section-name", B + "1: x\n", [], "1", None, ["section names must be text"]),
    ("yaml-syntax", "data:\n  train: [unclosed\nname: x\n", [], None, 3, ["invalid YAML"]),
    ("python-tag-refused", B + "name: !!python/object/apply:os.system [echo hi]\n", [], None, 2, ["invalid YAML"]),
    ("empty-override-key", B, ["train..lr=1"], "train..lr=1", None, ["empty key"]),
    ("unknown-nested-key", B + "train: {learning_rate: 0.1}\n", [], "train.learning_rate", None, ["lr"]),
]


@pytest.mark.parametrize("text, overrides, field, line, words", [c[1:] for c in RECIPES],
                         ids=[c[0] for c in RECIPES])
def test_bad_recipe_is_one_clear_line(tmp_path, text, overrides, field, line, words):
    path = tmp_path / "r.yaml"
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    start = time.perf_counter()
    with pytest.raises(TunesmithError) as e:
        load_recipe(path, overrides)
    assert time.perf_counter() - start < 2.0
    msg = str(e.value)
    assert "\n" not in msg and len(msg) < 600, msg
    for word in words:
        assert word in msg, msg
    if field is not None:
        assert e.value.field == field, msg
        assert f"field '{field}'" in msg
    if line is not None:
        assert e.value.line == line, msg
        assert f"r.yaml:{line}" in msg
    if not overrides or text != B:
        assert e.value.file == str(path)


def test_case_count():
    assert len(RECIPES) + len(DATA) >= 40


# --------------------------------------------------------------------------------------------- data files

GOOD = b"".join(json.dumps({"text": f"row {random.Random(i).random()}"}).encode() + b"\n" for i in range(3000))
CSV = b"text,label\n" + b"".join(f"{random.Random(i).random()},{i % 2}\n".encode() for i in range(3000))


def _half(data: bytes) -> bytes:
    return data[: len(data) // 2]


# (id, file name, content, line, words)
DATA = [
    ("gz-truncated", "d.jsonl.gz", _half(gzip.compress(GOOD)), None, ["corrupt or truncated gzip", ".gz file",
                                                                      "after line"]),
    ("gz-not-gzip", "d.jsonl.gz", b'{"text": "plain"}\n', None, ["corrupt or truncated gzip", "Not a gzipped"]),
    ("gz-damaged-block", "d.jsonl.gz", (lambda z: z[:20] + b"\xff" * 64 + z[84:])(gzip.compress(GOOD)), None,
     ["corrupt or truncated gzip"]),
    ("bz2-truncated", "d.jsonl.bz2", _half(bz2.compress(GOOD)), None, ["corrupt or truncated bzip2", ".bz2 file"]),
    ("bz2-garbage", "d.jsonl.bz2", b"BZh9 this is not bzip2", None, ["bzip2", "Invalid data stream"]),
    ("xz-truncated", "d.jsonl.xz", _half(lzma.compress(GOOD)), None, ["corrupt or truncated xz"]),
    ("csv-gz-truncated", "d.csv.gz", _half(gzip.compress(CSV)), None, ["corrupt or truncated gzip", "after line"]),
    ("json-array-gz-truncated", "d.json.gz", _half(gzip.compress(b"[" + GOOD.replace(b"\n", b",")[:-1] + b"]")),
     None, ["corrupt or truncated gzip"]),
    ("jsonl-nested-100k", "d.jsonl", b'{"text": "ok"}\n' + b"[" * 100_000 + b"]" * 100_000 + b"\n", 2,
     ["nested more than 100 levels"]),
    ("jsonl-nested-500-in-object", "d.jsonl", b'{"text": "ok"}\n{"text": ' + b"[" * 500 + b"]" * 500 + b"}\n", 2,
     ["nested more than 100 levels"]),
    ("json-array-nested", "d.json", b"[" + b"{\"a\": " * 50_000 + b"1" + b"}" * 50_000 + b"]", None,
     ["nested more than"]),
    ("jsonl-not-utf8", "d.jsonl", b'{"text": "ok"}\n{"text": "ok"}\n{"text": "caf\xe9"}\n', 3, ["not valid UTF-8"]),
    ("csv-not-utf8", "d.csv", b"text,label\nok,1\nok,0\ncaf\xe9,1\n", 4, ["not valid UTF-8", "byte offset 24"]),
    ("json-array-not-utf8", "d.json", b'[{"text": "ok"},\n{"text": "caf\xe9"}]', 2, ["not valid UTF-8"]),
]


@pytest.mark.parametrize("name, content, line, words", [c[1:] for c in DATA], ids=[c[0] for c in DATA])
def test_bad_data_file_is_one_clear_line(tmp_path, name, content, line, words):
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(TunesmithError) as e:
        list(read_records(str(path)))
    msg = str(e.value)
    assert "\n" not in msg and e.value.file == str(path), msg
    for word in words:
        assert word in msg, msg
    if line is not None:
        assert e.value.line == line and f"{name}:{line}" in msg, msg


def test_deep_nesting_is_counted_in_lenient_mode(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_bytes(b'{"text": "ok"}\n' + b"[" * 100_000 + b"]" * 100_000 + b'\n{"text": "also ok"}\n')
    rows = list(read_records(str(path), lenient=True))
    assert [r[0] for r in rows] == [1, 2, 3]
    assert "nested more than" in rows[1][1].message and rows[2][1] == {"text": "also ok"}


def test_intact_compressed_files_still_read(tmp_path):
    for name, pack in (("d.jsonl.gz", gzip.compress), ("d.jsonl.bz2", bz2.compress), ("d.jsonl.xz", lzma.compress)):
        (tmp_path / name).write_bytes(pack(GOOD))
        assert len(list(read_records(str(tmp_path / name)))) == 3000
    (tmp_path / "d.csv.gz").write_bytes(gzip.compress(CSV))
    assert len(list(read_records(str(tmp_path / "d.csv.gz")))) == 3000
