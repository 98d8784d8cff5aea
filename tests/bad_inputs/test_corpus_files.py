"""Bad-input corpus, part 1: data files, recipes and overrides through the CLI (in-process).

Every case: exit 2 with exactly one ``error:`` line, no traceback, no run folder (all of this is validated
before one is made), the inputs byte-identical. See corpus_harness.check_cli.
"""
from __future__ import annotations

import pytest
import yaml

import corpus_data as d
from corpus_harness import check_cli

LABELLED = {"format": "labelled", "labels": {"0": "negative", "1": "positive"}}


def gen_data(train: str, **kw) -> dict:
    """A whole data section for a generation task (no labels)."""
    return {"train": train, "max_length": 64, "clean": {"near_dedup": False}, **kw}


# ---- data files: (id, file name, bytes, recipe sections (data.train is set to the file), words) -----------------
DATA = [
    ("malformed-json-line", "d.jsonl", d.with_line("{not json"), {}, ["d.jsonl:11", "json"]),
    ("truncated-last-line", "d.jsonl", d.GOOD + b'{"text": "half', {}, ["d.jsonl:81"]),
    ("all-lines-malformed", "d.jsonl", b"nope\n" * 30, {}, ["d.jsonl:1"]),
    ("empty-file", "d.jsonl", b"", {}, ["d.jsonl"]),
    ("whitespace-only", "d.jsonl", b"\n\n   \n\t\n", {}, ["d.jsonl"]),
    ("only-duplicates", "d.jsonl", d.duplicates(), {}, ["d.jsonl"]),
    ("line-is-a-list", "d.jsonl", d.with_line("[1, 2, 3]"), {}, ["d.jsonl:11"]),
    ("line-is-a-string", "d.jsonl", d.with_line('"just text"'), {}, ["d.jsonl:11"]),
    ("line-is-null", "d.jsonl", d.with_line("null"), {}, ["d.jsonl:11"]),
    ("nul-bytes", "d.jsonl", d.with_line(b"\x00\x00\x00"), {}, ["d.jsonl:11"]),
    ("non-utf8", "d.jsonl", d.with_line(b'{"text": "caf\xe9", "label": 1}'), {}, ["d.jsonl:11", "utf-8"]),
    ("utf16-file", "d.jsonl", d.GOOD.decode().encode("utf-16"), {}, ["d.jsonl", "utf-8"]),
    ("deeply-nested", "d.jsonl", d.with_line(d.nested(50_000)), {}, ["d.jsonl:11", "nested"]),
    ("nested-500", "d.jsonl", d.with_line(d.nested(500)), {}, ["d.jsonl:11", "nested"]),
    ("corrupt-gz", "d.jsonl.gz", d.half(d.gz(d.GOOD)), {}, ["gzip"]),
    ("not-gz", "d.jsonl.gz", d.GOOD, {}, ["gzip"]),
    ("corrupt-bz2", "d.jsonl.bz2", d.half(d.bz(d.GOOD)), {}, ["bzip2"]),
    ("gz-of-garbage", "d.jsonl.gz", d.gz(b"\xff\xfe garbage \x00" * 100), {}, ["d.jsonl.gz"]),
    ("parquet-not-parquet", "d.parquet", d.GOOD, {}, ["d.parquet"]),
    ("parquet-empty", "d.parquet", b"", {}, ["d.parquet"]),
    ("csv-without-columns", "d.csv", d.csv("foo,bar"), {}, ["text"]),
    ("csv-header-only", "d.csv", b"text,label\n", {}, ["d.csv"]),
    ("csv-not-utf8", "d.csv", b"text,label\nok,1\ncaf\xe9,0\n", {}, ["d.csv", "utf-8"]),
    ("json-not-json", "d.json", b"{this is not json", {}, ["d.json"]),
    ("json-array-of-numbers", "d.json", d.json_dumps(list(range(50))), {}, ["d.json"]),
    ("file-is-a-directory", "dir.jsonl/x", b"", {"data": {"train": "dir.jsonl"}}, ["dir.jsonl"]),
    # wrong schema for the format
    ("labelled-without-text", "d.jsonl", d.rows(lambda i: {"body": f"t{i}", "label": i % 2}), {}, ["text"]),
    ("labelled-without-label", "d.jsonl", d.rows(lambda i: {"text": f"t{i}"}), {}, ["label"]),
    ("label-not-in-label-set", "d.jsonl", d.with_line('{"text": "odd one", "label": 7}'), {}, ["d.jsonl:11", "7"]),
    ("label-is-a-list", "d.jsonl", d.with_line('{"text": "odd one", "label": [1]}'), {}, ["d.jsonl:11"]),
    ("text-is-a-number", "d.jsonl", d.with_line('{"text": 12345, "label": 1}'), {}, ["d.jsonl:11"]),
    ("chat-messages-not-a-list", "d.jsonl", d.with_line('{"messages": "hi"}', rows=d.CHAT),
     {"task": "sft", "data": gen_data("d.jsonl", format="chat")}, ["d.jsonl:11", "messages"]),
    ("chat-bad-role", "d.jsonl",
     d.with_line('{"messages": [{"role": "wizard", "content": "x"}, {"role": "assistant", "content": "y"}]}',
                 rows=d.CHAT), {"task": "sft", "data": gen_data("d.jsonl", format="chat")}, ["d.jsonl:11", "role"]),
    ("chat-content-a-number", "d.jsonl",
     d.with_line('{"messages": [{"role": "user", "content": 5}, {"role": "assistant", "content": "y"}]}',
                 rows=d.CHAT), {"task": "sft", "data": gen_data("d.jsonl", format="chat")}, ["d.jsonl:11"]),
    ("chat-no-assistant-anywhere", "d.jsonl", d.rows(lambda i: {"messages": [{"role": "user", "content": f"q{i}"}]}),
     {"task": "sft", "data": gen_data("d.jsonl", format="chat")}, ["assistant"]),
    ("chat-file-as-labelled", "d.jsonl", d.CHAT, {}, ["d.jsonl"]),
    ("prompt-completion-missing", "d.jsonl", d.rows(lambda i: {"prompt": f"p{i}"}),
     {"task": "sft", "data": gen_data("d.jsonl", format="prompt_completion")}, ["completion"]),
    ("completion-not-a-string", "d.jsonl", d.with_line('{"prompt": "p", "completion": {"a": 1}}',
                                                       rows=d.rows(lambda i: {"prompt": f"p{i}", "completion": "c"})),
     {"task": "sft", "data": gen_data("d.jsonl", format="prompt_completion")}, ["d.jsonl:11"]),
    ("alpaca-missing-output", "d.jsonl", d.rows(lambda i: {"instruction": f"do {i}", "input": ""}),
     {"task": "sft", "data": gen_data("d.jsonl", format="alpaca")}, ["output"]),
    ("preference-missing-rejected", "d.jsonl", d.rows(lambda i: {"prompt": f"p{i}", "chosen": "a"}),
     {"task": "preference", "objective": {"name": "dpo"}, "data": gen_data("d.jsonl", format="preference")},
     ["rejected"]),
    ("text-format-wrong-field", "d.jsonl", d.rows(lambda i: {"body": f"t{i}"}),
     {"task": "pretraining", "data": gen_data("d.jsonl", format="text")}, ["text"]),
    ("unknown-format-auto", "d.jsonl", d.rows(lambda i: {"foo": i, "bar": "x"}),
     {"task": "sft", "data": gen_data("d.jsonl", format="auto")}, ["d.jsonl"]),
    ("where-keeps-nothing", "d.jsonl", d.GOOD, {"data": {"where": {"label": "9"}}}, ["where"]),
    ("many-bad-rows-hint", "d.jsonl", d.rows(lambda i: {"text": f"t{i}"}), {}, ["see `tunesmith data validate`"]),
    ("validation-file-missing", "d.jsonl", d.GOOD, {"data": {"validation": "missing-val.jsonl"}},
     ["missing-val.jsonl"]),
    ("test-file-malformed", "d.jsonl", d.GOOD, {"data": {"test": "broken.jsonl"}}, ["broken.jsonl:1"]),
    ("package-missing", "d.jsonl", d.GOOD, {"data": {"train": "package:no_such_pkg_zz/x.jsonl"}}, ["no_such_pkg_zz"]),
    ("package-file-missing", "d.jsonl", d.GOOD, {"data": {"train": "package:tunesmith/nope.jsonl"}}, ["nope.jsonl"]),
]


@pytest.mark.parametrize("name, content, sections, words", [c[1:] for c in DATA], ids=[c[0] for c in DATA])
def test_bad_data_file(ws, capsys, name, content, sections, words):
    ws.write(name, content)
    ws.write("broken.jsonl", b"{broken\n")
    replace = {k: v for k, v in sections.items() if k in ("task", "objective") or
               (k == "data" and "train" in v and "format" in v)}
    extra = {k: v for k, v in sections.items() if k not in replace}
    extra.setdefault("data", {}).setdefault("train", name)
    if "data" in replace:
        extra.pop("data")
    ws.recipe(replace=replace, **extra)
    check_cli(ws, ["data", "prepare", "recipe.yaml"], capsys, words=tuple(words))


# ---- data validate: fatal files exit 2; the report never replaces the user's files -------------------------------
VALIDATE = [
    ("missing-file", ["data", "validate", "nope.jsonl", "--no-tokens"], {}, 2, ["nope.jsonl"]),
    ("corrupt-gz", ["data", "validate", "d.jsonl.gz", "--no-tokens"], {"d.jsonl.gz": d.half(d.gz(d.GOOD))}, 2,
     ["gzip"]),
    ("nested", ["data", "validate", "d.json", "--no-tokens"], {"d.json": b"[" * 100_000 + b"]" * 100_000}, 2,
     ["nested"]),
    ("out-is-the-input", ["data", "validate", "good.jsonl", "--out", "good.jsonl", "--no-tokens"], {}, 2,
     ["input file", "good.jsonl"]),
    ("out-is-the-input-forced", ["data", "validate", "good.jsonl", "--out", "good.jsonl", "--force", "--no-tokens"],
     {}, 2, ["input file"]),
    ("out-is-the-input-by-another-path", ["data", "validate", "good.jsonl", "--out", "./sub/../good.jsonl",
                                         "--no-tokens"], {"sub/keep": b""}, 2, ["input file"]),
    ("out-is-the-recipe", ["data", "validate", "good.jsonl", "--recipe", "recipe.yaml", "--out", "recipe.yaml",
                           "--no-tokens"], {}, 2, ["input file", "recipe.yaml"]),
    ("out-exists", ["data", "validate", "good.jsonl", "--out", "mine.json", "--no-tokens"],
     {"mine.json": b'{"mine": 1}'}, 2, ["already exists", "--force"]),
    ("default-out-exists", ["data", "validate", "good.jsonl", "--no-tokens"],
     {"good.jsonl.report.json": b'{"mine": 1}'}, 2, ["already exists", "--force"]),
    ("out-is-a-directory", ["data", "validate", "good.jsonl", "--out", "adir", "--force", "--no-tokens"],
     {"adir/x": b""}, 2, ["directory"]),
    ("bad-recipe", ["data", "validate", "good.jsonl", "--recipe", "bad.yaml", "--no-tokens"],
     {"bad.yaml": b"data: {train: x}\ntrain: {lr: fast}\n"}, 2, ["train.lr"]),
    ("malformed-lines-report-exit-1", ["data", "validate", "d.jsonl", "--out", "rep.json", "--no-tokens"],
     {"d.jsonl": d.with_line("{not json")}, 1, []),
]


@pytest.mark.parametrize("argv, files, code, words", [c[1:] for c in VALIDATE], ids=[c[0] for c in VALIDATE])
def test_data_validate(ws, capsys, argv, files, code, words):
    for name, content in files.items():
        ws.write(name, content)
    check_cli(ws, argv, capsys, code=code, words=tuple(words))


def test_validate_default_name_differs_from_input_and_force_replaces_only_reports(ws, capsys):
    """The report goes to FILE.report.json, never FILE; --force replaces an existing report, not the data."""
    from tunesmith.cli import main
    ws.write("good.jsonl.report.json", b"{}")
    before = (ws.root / "good.jsonl").read_bytes()
    assert main(["data", "validate", "good.jsonl", "--no-tokens", "--force"]) == 0
    assert (ws.root / "good.jsonl").read_bytes() == before
    assert '"records"' in (ws.root / "good.jsonl.report.json").read_text() or \
        len((ws.root / "good.jsonl.report.json").read_text()) > 10
    ws.write("good.jsonl.report.json.report.json", b"")
    assert main(["data", "validate", "good.jsonl.report.json", "--no-tokens"]) == 2   # its default name exists
    assert "already exists" in capsys.readouterr().err


# ---- recipes: (id, recipe text, command, words) --------------------------------------------------------------
def rtext(**sections) -> dict:
    return sections


RECIPES = [
    ("unknown-top-level-key", {"trainer": {"lr": 1}}, ["trainer"]),
    ("unknown-nested-key", {"train": {"learning_rate": 0.1}}, ["train.learning_rate"]),
    ("wrong-type-lr", {"train": {"lr": "fast"}}, ["train.lr"]),
    ("wrong-type-epochs-list", {"train": {"epochs": [1, 2]}}, ["train.epochs"]),
    ("batch-size-zero", {"train": {"batch_size": 0}}, ["train.batch_size"]),
    ("lr-negative", {"train": {"lr": -1}}, ["train.lr"]),
    ("seed-negative", {"train": {"seed": -1}}, ["train.seed"]),
    ("seed-2-70", {"train": {"seed": 2 ** 70}}, ["train.seed"]),
    ("epochs-inf", {"train": {"epochs": float("inf")}}, ["train.epochs"]),
    ("max-length-too-small", {"data": {"max_length": 4}}, ["data.max_length"]),
    ("max-length-beyond-context", {"data": {"max_length": 4096}}, ["data.max_length", "512"]),
    ("format-unknown", {"data": {"format": "xml"}}, ["data.format"]),
    ("labels-not-a-mapping", {"data": {"labels": "positive,negative"}}, ["data.labels"]),
    ("method-unknown", {"method": {"name": "qlora"}}, ["qlora"]),
    ("method-foreign-key", {"method": {"name": "full", "r": 8}}, ["method.r"]),
    ("method-r-zero", {"method": {"r": 0}}, ["method.r"]),
    ("objective-unknown", {"objective": {"name": "ppo"}}, ["objective"]),
    ("task-unknown", {"task": "poetry"}, ["task"]),
    ("name-with-slash", {"name": "../escape"}, ["name"]),
    ("name-empty", {"name": ""}, ["name"]),
    ("missing-data-file", {"data": {"train": "missing.jsonl"}}, ["missing.jsonl"]),
    ("unknown-model", {"model": {"name": "no-such-model-zz"}}, ["no-such-model-zz"]),
    ("model-dir-without-model", {"model": {"name": "emptymodel"}}, ["emptymodel"]),
    ("output-dir-under-a-file", {"output_dir": "good.jsonl/runs"}, ["good.jsonl"]),
    ("output-dir-is-a-file", {"output_dir": "good.jsonl"}, ["good.jsonl"]),
    ("eval-batch-size-huge", {"eval": {"batch_size": 2 ** 40}}, ["eval.batch_size"]),
    ("section-is-a-scalar", {"train": 5}, ["train"]),
]
RAW = [
    ("duplicate-top-level-key", "data: {train: good.jsonl}\ntrain: {lr: 0.1}\ntrain: {epochs: 2}\n",
     ["duplicate key 'train'", "lines 2 and 3"]),
    ("alias-bomb", "data: {train: good.jsonl}\nx: &a [lol, lol, lol, lol, lol, lol, lol, lol, lol]\n" + "".join(
        f"x{i}: &a{i} [{', '.join(['*a' if i == 0 else f'*a{i - 1}'] * 9)}]\n" for i in range(9)), ["alias"]),
    ("not-a-mapping", "- one\n- two\n", ["mapping"]),
    ("empty-recipe", "", ["recipe.yaml"]),
    ("only-a-comment", "# nothing here\n", ["recipe.yaml"]),
    ("yaml-syntax-error", "data:\n  train: [unclosed\nname: x\n", ["yaml"]),
    ("tab-indentation", "data:\n\ttrain: good.jsonl\n", ["yaml"]),
    ("python-tag", "data: {train: good.jsonl}\nname: !!python/object/apply:os.system [echo hi]\n", ["yaml"]),
    ("not-utf8", b"data: {train: good.jsonl}\nname: caf\xe9\n", ["utf-8"]),
    ("binary-garbage", bytes(range(256)) * 4, ["recipe.yaml"]),
]


@pytest.mark.parametrize("sections, words", [c[1:] for c in RECIPES], ids=[c[0] for c in RECIPES])
@pytest.mark.parametrize("command", ["data prepare", "run"])
def test_bad_recipe(ws, capsys, command, sections, words):
    (ws.root / "emptymodel").mkdir()
    ws.recipe(replace={k: v for k, v in sections.items() if not isinstance(v, dict)},
              **{k: v for k, v in sections.items() if isinstance(v, dict)})
    check_cli(ws, [*command.split(), "recipe.yaml"], capsys, words=tuple(words))


@pytest.mark.parametrize("text, words", [c[1:] for c in RAW], ids=[c[0] for c in RAW])
def test_bad_recipe_text(ws, capsys, text, words):
    ws.write("recipe.yaml", text)
    check_cli(ws, ["run", "recipe.yaml"], capsys, words=tuple(words))


def test_recipe_missing_or_a_directory(ws, capsys):
    check_cli(ws, ["run", "nope.yaml"], capsys, words=("nope.yaml",))
    (ws.root / "adir").mkdir()
    check_cli(ws, ["data", "prepare", "adir"], capsys, words=("adir",))


# ---- overrides: (id, overrides, words) ------------------------------------------------------------------------
OVERRIDES = [
    ("no-equals", ["train.lr"], ["train.lr"]),
    ("empty-key", ["=1"], []),
    ("empty-segment", ["train..lr=1"], ["empty key"]),
    ("unknown-key", ["train.nope=1"], ["train.nope"]),
    ("unknown-section", ["nosection.x=1"], ["nosection"]),
    ("bad-value", ["train.lr=abc"], ["train.lr"]),
    ("bad-yaml-value", ["train.lr=[1"], ["train.lr"]),
    ("out-of-range", ["train.batch_size=0"], ["train.batch_size"]),
    ("nan", ["train.lr=.nan"], ["train.lr"]),
    ("seed-2-64", [f"train.seed={2 ** 64}"], ["train.seed"]),
    ("section-to-scalar", ["train=1"], ["train"]),
    ("max-length-beyond-context", ["data.max_length=100000"], ["data.max_length"]),
    ("unknown-model", ["model.name=no-such-model-zz"], ["no-such-model-zz"]),
    ("foreign-method-key", ["method.name=full", "method.r=4"], ["method.r"]),
    ("duplicate-key-in-value", ["data.where={a: x, a: y}"], ["duplicate key"]),
    ("missing-data-file", ["data.train=missing.jsonl"], ["missing.jsonl"]),
    ("python-tag-value", ["name=!!python/object/apply:os.system [echo]"], ["name"]),
]


@pytest.mark.parametrize("overrides, words", [c[1:] for c in OVERRIDES], ids=[c[0] for c in OVERRIDES])
def test_bad_override(ws, capsys, overrides, words):
    check_cli(ws, ["run", "recipe.yaml", *overrides], capsys, words=tuple(words))


def test_recipe_builder_is_valid(ws, capsys):
    """The corpus's base recipe itself is valid: the cases fail for their own reason."""
    from tunesmith.config import load_recipe
    recipe = load_recipe(ws.root / "recipe.yaml")
    assert recipe.data.max_length == 64 and yaml.safe_load((ws.root / "recipe.yaml").read_text())["name"] == "tiny"
