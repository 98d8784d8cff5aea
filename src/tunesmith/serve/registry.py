"""Model ids -> servable models: the base, run directories, pluggable sources; adapters loaded on one
shared base and evicted least-recently-used beyond a memory budget."""
from __future__ import annotations

import logging
import re
import threading
import time
import warnings
from collections import OrderedDict
from collections.abc import Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, runtime_checkable

from ..rundir import Layout, Run, has_model
from .engine import TokenText, decode_batch
from .schema import bad_request, model_not_found

log = logging.getLogger("tunesmith.serve")
_GGUF_TAG = re.compile(r"(?:^|[-_.])((?:f|bf)16|f32|q\d(?:_[0-9a-z]+)*)$", re.IGNORECASE)


@dataclass(frozen=True)
class ServedModel:
    """A fine-tuned model offered by a source: its API id and the run directory holding it."""

    id: str
    run_dir: Path
    created: int
    owned_by: str = "tunesmith"


@runtime_checkable
class ModelSource(Protocol):
    """Anything that lists servable fine-tuned models; queried on every lookup and listing."""

    def models(self) -> list[ServedModel]: ...


class RunsSource:
    """Run directories under one or more roots (or given directly); id = the run directory's name."""

    def __init__(self, roots: Sequence[Path | str], owned_by: str = "tunesmith"):
        self.roots = [Path(r).expanduser() for r in roots]
        self.owned_by = owned_by

    def models(self) -> list[ServedModel]:
        out = []
        for root in self.roots:
            candidates = [root] if has_model(root) else \
                sorted(p for p in root.iterdir() if p.is_dir()) if root.is_dir() else []
            for path in candidates:
                if has_model(path):
                    out.append(ServedModel(path.name, path.resolve(), Layout(path).created(), self.owned_by))
        return out



def gguf_tag(path: Path) -> str:
    """``model-q8_0.gguf`` -> ``q8_0``; a name without a quantisation type keeps its whole stem."""
    m = _GGUF_TAG.search(path.stem)
    return (m.group(1) if m else path.stem).lower()


@dataclass
class ModelInfo:
    """What the server knows about one id without loading weights.

    ``kind``: ``base``; ``adapter`` (LoRA-family adapter on the shared base); ``separate`` (its own
    weights: the merged export, or the run's base with the method's weights loaded on it); ``classifier``
    (a label-head run: answers with its labels, ``serve.classifier``); ``gguf`` (llama.cpp); ``refused`` (listed, but generation answers 400 with ``reason``).
    """

    id: str
    kind: str
    created: int
    owned_by: str
    run_dir: Path | None = None
    method: str | None = None
    objective: str | None = None
    weights: Path | None = None        # adapter dir, merged dir or .gguf file
    tokenizer_dir: Path | None = None
    reason: str | None = None
    parent: str | None = None

    def refusal(self) -> bool:
        return self.kind == "refused"

    def card(self) -> dict:
        return {"id": self.id, "object": "model", "created": self.created, "owned_by": self.owned_by}


class Runner:
    """Decodes one batch with a transformers model inside ``context()`` (e.g. the active adapter)."""

    def __init__(self, model, decoder: TokenText, eos_ids: list[int], pad_id: int, context=nullcontext,
                 max_rows: int | None = None):
        self.model, self.decoder, self.eos_ids, self.pad_id = model, decoder, eos_ids, pad_id
        self.context, self.max_rows = context, max_rows

    def run(self, seqs, admit=None) -> int:
        with self.context():
            return decode_batch(self.model, self.decoder, self.eos_ids, self.pad_id, seqs, admit,
                                max(self.max_rows or 0, len(seqs)))


MIXABLE = ("lora", "rslora")     # adapters peft decodes in mixed batches (`adapter_names`; not DoRA)
SHARED_GROUP = "shared-base:"
BASE_ROWS = "__base__"          # peft's adapter name for rows answered by the base itself


class SharedRunner:
    """Decodes one batch mixing the base and any of its LoRA adapters (peft's mixed-adapter batches): each
    row names its adapter, loaded on first sight; the adapters of live rows are pinned against eviction."""

    def __init__(self, registry: "Registry"):
        self.registry = registry

    def run(self, seqs, admit=None) -> int:
        reg = self.registry
        names: dict[str, str] = {}

        def row_inputs(rows) -> dict:
            for s in rows:
                if s.request.model_id not in names:
                    names[s.request.model_id] = reg.adapter_name(s.request.model_id)
            if reg.metrics is not None and len({s.request.model_id for s in rows}) > 1:
                reg.metrics.mixed_batches.inc()
            return {"adapter_names": [names[s.request.model_id] for s in rows]} if reg.peft is not None else {}
        base, _ = reg._base_model()
        dec = reg.decoder(reg.get(seqs[0].request.model_id))
        try:
            return decode_batch(lambda: reg.peft or base, dec, reg._eos(dec, base), reg._pad(dec), seqs, admit,
                                max(reg.max_rows or 0, len(seqs)), row_inputs=row_inputs)
        finally:
            reg.pinned.clear()


@dataclass
class _Loaded:
    info: ModelInfo
    nbytes: int
    runner: object
    adapter_name: str | None = None
    release: object = None


def _param_bytes(model) -> int:
    return sum(p.numel() * p.element_size() for p in model.parameters()) + \
        sum(b.numel() * b.element_size() for b in model.buffers())


class Registry:
    """Resolves ids, lends tokenizers to request handlers, and (on the engine thread only) loads,
    switches and evicts models.

    LoRA-family runs trained on the server's base become named adapters of ONE peft wrapper around
    the shared base (``load_adapter``/``set_adapter``; the base itself runs with adapters disabled).
    Other runs are separate models: the merged export when present, else the run's base with the
    method's own ``load``. Both count against ``adapter_budget_mb`` (adapter parameter bytes, or the
    whole model's bytes); the least recently used are evicted beyond it.
    """

    def __init__(self, settings, sources: Sequence[ModelSource] = (), metrics=None):
        self.settings = settings
        self.sources: list[ModelSource] = ([RunsSource(settings.runs)] if settings.runs else []) + list(sources)
        self.metrics = metrics
        self.device = settings.resolved_device()
        self.budget = int(settings.adapter_budget_mb * 1024 * 1024)
        self.max_rows = settings.max_batch_size
        self.started = int(time.time())
        self._meta: dict[tuple, ModelInfo] = {}
        self._tok_lock = threading.Lock()
        self._tokenizers: OrderedDict[str, TokenText] = OrderedDict()
        self._contexts: dict[str, int] = {}
        self._base = None          # (model, TokenText)
        self._peft = None          # peft wrapper around the base while any adapter is loaded
        self._loaded: OrderedDict[str, _Loaded] = OrderedDict()
        self._loaded_lock = threading.Lock()     # readers (health) vs the engine thread
        self._names = 0
        self.pinned: set[str] = set()     # ids whose adapters live rows of the running batch use
        self.shared = SharedRunner(self)
        self._base_path = None
        self._gguf_available: bool | None = None

    # ---- listing and lookup (any thread) ----------------------------------------------------------
    def base_info(self) -> ModelInfo:
        s = self.settings
        if s.model.endswith(".gguf") and self.gguf_available():
            return ModelInfo(s.base_id, "gguf", self.started, "tunesmith", weights=Path(s.model).expanduser(),
                             tokenizer_dir=None)
        return ModelInfo(s.base_id, "base", self.started, "tunesmith")

    def gguf_available(self) -> bool:
        if self._gguf_available is None:
            from .gguf_backend import available
            self._gguf_available = self.settings.gguf and available()
        return self._gguf_available

    def list(self) -> list[ModelInfo]:
        out: dict[str, ModelInfo] = {}
        base = self.base_info()
        out[base.id] = base
        for source in self.sources:
            try:
                served_models = source.models()
            except Exception as e:     # one broken source must not take the others (or the base) down
                log.warning("model source %r failed: %s", source, e)
                continue
            for served in served_models:
                if served.id in out:
                    continue
                info = self._describe(served)
                out[served.id] = info
                if self.gguf_available() and info.run_dir is not None:
                    for f in Layout(info.run_dir).gguf_files():
                        gid = f"{served.id}:gguf-{gguf_tag(f)}"
                        out.setdefault(gid, ModelInfo(gid, "gguf", served.created, served.owned_by,
                                                      run_dir=info.run_dir, method=info.method, weights=f,
                                                      tokenizer_dir=info.tokenizer_dir, parent=served.id))
        return list(out.values())

    def get(self, model_id: str) -> ModelInfo:
        for info in self.list():
            if info.id == model_id:
                return info
        raise model_not_found(model_id)

    def _describe(self, served: ServedModel) -> ModelInfo:
        run_dir = Path(served.run_dir)
        layout = Layout(run_dir)
        stamp = tuple(_mtime(p) for p in (layout.recipe_path, layout.model_dir / "tunesmith.json",
                                          layout.merged_dir / "config.json"))
        key = (served.id, str(run_dir), stamp)
        hit = self._meta.get(key)
        if hit is None:
            if len(self._meta) > 4096:
                self._meta.clear()
            hit = self._meta[key] = self._inspect(served, run_dir)
        return hit

    def _inspect(self, served: ServedModel, run_dir: Path) -> ModelInfo:
        from .. import methods, objectives
        from ..objectives.base import hook
        info = ModelInfo(served.id, "refused", int(served.created), served.owned_by, run_dir=run_dir,
                         parent=self.settings.base_id)
        layout = Layout(run_dir)
        for cand in (layout.model_dir, layout.adapter_dir, layout.merged_dir):
            if (cand / "tokenizer_config.json").is_file():
                info.tokenizer_dir = cand
                break
        try:
            recipe = Run(run_dir).recipe
        except Exception as e:   # a recipe this version cannot read: listed, not servable
            info.reason = f"cannot read the run's recipe ({str(e).splitlines()[0]})"
            return info
        meta = layout.load_json("model/tunesmith.json") or {}
        info.method = meta.get("method", recipe.method.name)
        info.objective = meta.get("objective", recipe.objective.name)
        try:
            method, objective = methods.get(info.method), objectives.OBJECTIVES[info.objective]
        except (KeyError, Exception) as e:
            info.reason = f"unknown method or objective ({e})"
            return info
        if info.tokenizer_dir is None:
            info.reason = "the run has no saved tokenizer (model/ or export/)"
        elif not objective.generates_text and hook(objective, "label_logprobs") and layout.model_dir.is_dir():
            info.kind, info.weights = "classifier", layout.model_dir     # answers with its head's labels
        elif not objective.generates_text:
            info.reason = (f"this run's objective ({info.objective}) predicts with its own head rather than "
                           "generating text; it cannot serve completions")
        elif method.shares_base and not objective.own_model and \
                (layout.model_dir / "adapter_config.json").is_file() and self._same_base(recipe.model.name):
            info.kind, info.weights = "adapter", layout.model_dir
        elif layout.has_merged():
            info.kind, info.weights = "separate", layout.merged_dir
        elif method.virtual_tokens:
            info.reason = (f"method '{info.method}' (virtual tokens) is not servable by this server; "
                           "serve a LoRA-family or mergeable run")
        elif objective.own_model:
            info.reason = "a distilled student is served from its merged export; run `tunesmith export` first"
        elif layout.model_dir.is_dir():
            info.kind, info.weights = "separate", layout.model_dir
        else:
            info.reason = "the run has no trained model"
        return info

    def _same_base(self, name: str) -> bool:
        if name == self.settings.model:
            return True
        from .. import models
        try:
            if self._base_path is None:
                self._base_path = Path(models.resolve(self.settings.model)).resolve()
            other = models.resolve(name)
            return isinstance(other, Path) and other.resolve() == self._base_path
        except Exception:
            return False

    # ---- tokenizers and limits (any thread) ---------------------------------------------------------
    def _base_ref(self):
        from .. import models
        return models.resolve(self.settings.model)

    def decoder(self, info: ModelInfo) -> TokenText:
        """The tokenizer the model was trained with (the run's saved one), wrapped for decoding."""
        if info.refusal():
            raise bad_request(f"model `{info.id}` cannot generate: {info.reason}", param="model",
                              code="model_not_servable")
        key = str(info.tokenizer_dir) if info.tokenizer_dir else f"base:{info.weights or ''}"
        with self._tok_lock:
            hit = self._tokenizers.get(key)
            if hit is not None:
                self._tokenizers.move_to_end(key)
                return hit
        from transformers import AutoTokenizer
        if info.tokenizer_dir is not None:
            tok = AutoTokenizer.from_pretrained(info.tokenizer_dir)
        elif info.kind == "gguf":
            tok = AutoTokenizer.from_pretrained(info.weights.parent, gguf_file=info.weights.name)
        else:
            tok = AutoTokenizer.from_pretrained(self._base_ref())
        if tok.pad_token is None:
            tok.pad_token = tok.eos_token
        dec = TokenText(tok)
        with self._tok_lock:
            dec = self._tokenizers.setdefault(key, dec)
            while len(self._tokenizers) > 64:
                self._tokenizers.popitem(last=False)
        return dec

    def context_length(self, info: ModelInfo) -> int:
        if info.kind == "gguf":
            return self.settings.gguf_context
        if info.id in self._contexts:
            return self._contexts[info.id]
        from .. import models
        if info.kind == "separate" and info.weights is not None and (info.weights / "config.json").is_file():
            ref = info.weights
        elif info.kind in ("separate", "classifier") and info.run_dir is not None:
            ref = models.resolve(Run(info.run_dir).recipe.model.name)
        else:
            ref = self._base_ref()
        n = models.context_length(ref) or 2048
        self._contexts[info.id] = int(n)
        return int(n)

    # ---- loading (engine thread only) -----------------------------------------------------------------
    @property
    def peft(self):
        """The peft wrapper around the base while any adapter is loaded, else None."""
        return self._peft

    @staticmethod
    def mixes(info: ModelInfo) -> bool:
        return info.kind == "base" or (info.kind == "adapter" and info.method in MIXABLE)

    def group(self, model_id: str) -> str:
        """The engine's batching group of ``model_id``: the base and its LoRA adapters whose tokenizers decode
        alike share one (their requests decode together); any other model is a group of its own."""
        try:
            info = self.get(model_id)
            if self.mixes(info):
                return SHARED_GROUP + self.decoder(info).fingerprint()
        except Exception:       # unknown or refused ids fail in acquire, with their own error
            pass
        return model_id

    def adapter_name(self, model_id: str) -> str:
        """The peft adapter name of ``model_id``'s rows in a mixed batch (loading it; pinned for the batch)."""
        info = self.get(model_id)
        if info.kind == "base":
            return BASE_ROWS
        self.pinned.add(model_id)
        return self.ensure(info).adapter_name

    def acquire(self, model_id: str):
        """A runner for ``model_id``, loading it (and evicting others) as needed."""
        info = self.get(model_id)
        if info.refusal():
            raise bad_request(f"model `{info.id}` cannot generate: {info.reason}", param="model",
                              code="model_not_servable")
        if self.mixes(info):
            if info.kind == "adapter":
                self.ensure(info)
            return self.shared
        return self.ensure(info).runner

    def ensure(self, info: ModelInfo) -> "_Loaded":
        """The loaded fine-tuned model ``info`` (loading it, evicting others over the budget, as needed)."""
        model_id = info.id
        hit = self._loaded.get(model_id)
        if hit is not None and hit.info.weights == info.weights:
            with self._loaded_lock:
                self._loaded.move_to_end(model_id)
            return hit
        if hit is not None:       # the same id now points elsewhere (a re-published run)
            self._evict(model_id)
        loaded = {"adapter": self._load_adapter, "separate": self._load_separate,
                  "classifier": self._load_classifier, "gguf": self._load_gguf}[info.kind](info)
        with self._loaded_lock:
            self._loaded[model_id] = loaded
        self._enforce_budget(keep=model_id)
        return loaded

    def loaded(self) -> dict[str, int]:
        """Loaded fine-tuned models and the bytes each counts against the budget (LRU first)."""
        with self._loaded_lock:
            return {k: v.nbytes for k, v in self._loaded.items()}

    def _base_model(self):
        if self._base is None:
            from .. import models
            model, tok = models.load(self.settings.model, device=self.device)
            model.eval()
            self._base = (model, tok)
        return self._base

    @staticmethod
    def _eos(dec: TokenText, model) -> list[int]:
        from ..generation import eos_token_ids
        return eos_token_ids(dec.tokenizer, model)

    @staticmethod
    def _pad(dec: TokenText) -> int:
        from ..generation import pad_token_id
        return pad_token_id(dec.tokenizer)

    def _load_adapter(self, info: ModelInfo) -> _Loaded:
        from peft import PeftModel
        base, _ = self._base_model()
        self._names += 1
        name = f"adapter{self._names}"          # peft adapter names must not contain '.'
        if self._peft is None:
            self._peft = PeftModel.from_pretrained(base, info.weights, adapter_name=name, is_trainable=False)
        else:
            self._peft.load_adapter(info.weights, adapter_name=name, is_trainable=False)
        self._peft.eval()
        nbytes = sum(p.numel() * p.element_size() for n, p in self._peft.named_parameters()
                     if f".{name}." in n or n.endswith(f".{name}"))
        dec = self.decoder(info)
        peft = self._peft

        @contextmanager
        def active():
            peft.set_adapter(name)
            yield

        runner = Runner(base, dec, self._eos(dec, base), self._pad(dec), active, self.max_rows)
        return _Loaded(info, nbytes, runner, adapter_name=name)

    def _load_separate(self, info: ModelInfo) -> _Loaded:
        from ..tuned import load_tuned
        dec = self.decoder(info)
        merged = info.weights == Layout(info.run_dir).merged_dir    # else the method's own load on a fresh base
        model, _ = load_tuned(info.run_dir, self.device, prefer_merged=merged, tokenizer=dec.tokenizer)
        return _Loaded(info, _param_bytes(model), Runner(model, dec, self._eos(dec, model), self._pad(dec),
                                                          max_rows=self.max_rows))

    def _load_classifier(self, info: ModelInfo) -> _Loaded:
        from .. import objectives
        from ..tuned import load_tuned
        from .classifier import ClassifierRunner
        dec = self.decoder(info)
        run = Run(info.run_dir)
        objective = objectives.from_recipe(run.recipe)
        objective.load_meta(run.model_dir)
        model, _ = load_tuned(run, self.device, tokenizer=dec.tokenizer, objective=objective)
        return _Loaded(info, _param_bytes(model), ClassifierRunner(model, objective, dec, self._eos(dec, model),
                                                                   self._pad(dec), self.max_rows))

    def _load_gguf(self, info: ModelInfo) -> _Loaded:
        from .gguf_backend import GGUFRunner
        dec = self.decoder(info)
        runner = GGUFRunner(info.weights, dec, n_ctx=self.settings.gguf_context)
        return _Loaded(info, info.weights.stat().st_size, runner, release=runner.close)

    def _enforce_budget(self, keep: str) -> None:
        while sum(v.nbytes for v in self._loaded.values()) > self.budget and len(self._loaded) > 1:
            victim = next((k for k in self._loaded if k != keep and k not in self.pinned), None)
            if victim is None:        # every other one serves a row of the running batch
                break
            self._evict(victim)
        self._gauges()

    def _evict(self, model_id: str) -> None:
        with self._loaded_lock:
            item = self._loaded.pop(model_id, None)
        if item is None:
            return
        if item.adapter_name is not None and self._peft is not None:
            if len(self._peft.peft_config) <= 1:
                self._peft.unload()          # removes the LoRA layers; the base is plain again
                self._peft = None
            else:
                with warnings.catch_warnings():     # "the active adapter was deleted": expected here
                    warnings.simplefilter("ignore", UserWarning)
                    self._peft.delete_adapter(item.adapter_name)
        if callable(item.release):
            item.release()
        if self.metrics is not None:
            self.metrics.evictions.inc()
        self._gauges()

    def _gauges(self) -> None:
        if self.metrics is not None:
            self.metrics.loaded_adapters.set(len(self._loaded))
            self.metrics.loaded_bytes.set(sum(v.nbytes for v in self._loaded.values()))


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except OSError:
        return 0.0
