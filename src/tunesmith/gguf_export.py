"""GGUF export of merged Llama-architecture models (f16, q8_0) for llama.cpp, with its tokenizer metadata."""
from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterator
from hashlib import sha256
from pathlib import Path
from typing import Literal

import numpy as np

from .errors import TunesmithError
from .rundir import Layout

QType = Literal["f16", "q8_0"]
QTYPES: tuple[str, ...] = ("f16", "q8_0")
LLAMA_ARCHITECTURES = {"LlamaForCausalLM", "LLaMAForCausalLM"}

# The text llama.cpp's converter tokenises to recognise a BPE pre-tokenizer: sha256 of the token id
# list selects the pre-tokenizer llama.cpp should reproduce (tokenizer.ggml.pre).
_CHECK_TEXT = (
    "\n \n\n \n\n\n \t \t\t \t\n  \n   \n    \n     \n\U0001f680 (normal) \U0001f636\u200d\U0001f32b\ufe0f "
    "(multiple emojis concatenated) \u2705 \U0001f999\U0001f999 3 33 333 3333 33333 333333 3333333 33333333 "
    "3.3 3..3 3...3 \u1780\u17b6\u1793\u17cb\u178f\u17c2\u1796\u17b7\u179f\u17c1\u179f\u17a2\u17b6\u1785"
    "\U0001f601 ?\u6211\u60f3\u5728apple\u5de5\u4f5c1314151\u5929\uff5e ------======= "
    "\u043d\u0435\u0449\u043e \u043d\u0430 \u0411\u044a\u043b\u0433\u0430\u0440\u0441\u043a\u0438 "
    "''''''```````\"\"\"\"......!!!!!!?????? I've been 'told he's there, 'RE you sure? 'M not sure I'll "
    "make it, 'D you like some tea? We'Ve a'lL"
)
_PRE_BY_HASH = {
    "855059429035d75a914d1eda9f10a876752e281a054a7a3d421ef0533e5b6249": "smollm",
    "0ef9807a4087ebef797fc749390439009c3b9eda9ad1a097abbe738f486c01e5": "llama-bpe",
    "3ce83efda5659b07b1ad37ca97ca5797ea4285d9b9ab0dc679e4a720c9da7454": "gpt-2",
    "e636dc30a262dcc0d8c323492e32ae2b70728f4df7dfe9737d9f920a282b8aea": "qwen2",
}


def permute_qk(w: np.ndarray, n_head: int) -> np.ndarray:
    """Reorder q/k projection rows from Hugging Face's rotary layout (halves) to llama.cpp's (pairs)."""
    return (w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:])
            .swapaxes(1, 2).reshape(w.shape))


def unpermute_qk(w: np.ndarray, n_head: int) -> np.ndarray:
    """The inverse of :func:`permute_qk` (llama.cpp layout back to Hugging Face's)."""
    return (w.reshape(n_head, w.shape[0] // n_head // 2, 2, *w.shape[1:])
            .swapaxes(1, 2).reshape(w.shape))


def read_config(model_dir: Path) -> dict:
    """The model's config.json, checked to be a Llama-architecture causal LM."""
    path = Path(model_dir) / "config.json"
    if not path.is_file():
        raise TunesmithError("no config.json; expected a merged Hugging Face model folder", file=str(model_dir))
    cfg = json.loads(path.read_text())
    archs = cfg.get("architectures") or []
    if cfg.get("model_type") != "llama" or not LLAMA_ARCHITECTURES.intersection(archs):
        raise TunesmithError(f"GGUF export supports Llama-architecture models only; found model_type "
                             f"'{cfg.get('model_type')}' ({', '.join(archs) or 'no architectures'})",
                             file=str(path), field="architectures")
    return cfg


def _rope(cfg: dict) -> tuple[float, dict | None]:
    """(rope theta, scaling dict or None) from either the transformers 4 or 5 config layout."""
    params = cfg.get("rope_parameters") or {}
    theta = cfg.get("rope_theta", params.get("rope_theta", 10000.0))
    scaling = cfg.get("rope_scaling") or (params if params.get("rope_type", "default") != "default" else None)
    if scaling and scaling.get("rope_type", scaling.get("type", "default")) == "default":
        scaling = None
    return float(theta), scaling


def _head_dim(cfg: dict) -> int:
    return int(cfg.get("head_dim") or cfg["hidden_size"] // cfg["num_attention_heads"])


def _llama3_rope_factors(cfg: dict, scaling: dict) -> np.ndarray:
    """Per-frequency rope factors of Llama 3.1-style scaling (the ``rope_freqs`` tensor)."""
    import math
    theta, dim = _rope(cfg)[0], _head_dim(cfg)
    freqs = 1.0 / (theta ** (np.arange(0, dim, 2, dtype=np.float32) / dim))
    factor = scaling.get("factor", 8.0)
    low, high = scaling.get("low_freq_factor", 1.0), scaling.get("high_freq_factor", 4.0)
    old_ctx = scaling.get("original_max_position_embeddings", 8192)
    low_wavelen, high_wavelen = old_ctx / low, old_ctx / high
    out = []
    for f in freqs:
        wavelen = 2 * math.pi / f
        if wavelen < high_wavelen:
            out.append(1.0)
        elif wavelen > low_wavelen:
            out.append(factor)
        else:
            smooth = (old_ctx / wavelen - low) / (high - low)
            out.append(1 / ((1 - smooth) / factor + smooth))
    return np.asarray(out, dtype=np.float32)


def _iter_weights(model_dir: Path) -> Iterator[tuple[str, np.ndarray]]:
    """(name, float32 array) for every tensor of the safetensors files in ``model_dir``."""
    import torch
    from safetensors import safe_open
    files = sorted(Path(model_dir).glob("*.safetensors"))
    if not files:
        raise TunesmithError("no *.safetensors weights; expected a merged model saved with safetensors",
                             file=str(model_dir))
    for f in files:
        with safe_open(str(f), framework="pt", device="cpu") as part:
            for name in part.keys():  # noqa: SIM118 (safe_open handles are not iterable)
                yield name, part.get_tensor(name).to(torch.float32).numpy()


def pre_tokenizer_name(tokenizer, tokenizer_json: dict | None) -> str:
    """llama.cpp's ``tokenizer.ggml.pre`` for this tokenizer.

    Known tokenizers are recognised as llama.cpp's converter does (hash of the ids of a check
    text); others by the structure of their pre-tokenizer: plain byte-level (GPT-2 regex) or
    single digits followed by byte-level (SmolLM).
    """
    ids = tokenizer.encode(_CHECK_TEXT)
    known = _PRE_BY_HASH.get(sha256(str(ids).encode()).hexdigest())
    if known:
        return known
    pre = (tokenizer_json or {}).get("pre_tokenizer") or {}
    steps = pre.get("pretokenizers", [pre]) if pre.get("type") == "Sequence" else [pre]
    kinds = [s.get("type") for s in steps]
    if kinds == ["ByteLevel"] and steps[0].get("use_regex", True):
        return "gpt-2"
    if kinds == ["Digits", "ByteLevel"] and steps[0].get("individual_digits") and steps[1].get("use_regex", True):
        return "smollm"
    raise TunesmithError(f"GGUF export: the tokenizer's pre-tokenizer ({' + '.join(map(str, kinds)) or 'none'}) "
                         "has no llama.cpp equivalent known to tunesmith; expected a byte-level BPE tokenizer")


def _vocab(model_dir: Path, cfg: dict) -> dict:
    """Tokens, token types, merges, special ids, add-bos/eos flags and chat template, as llama.cpp wants them."""
    import gguf
    from transformers import AutoTokenizer

    tok_json_path = Path(model_dir) / "tokenizer.json"
    tok_json = json.loads(tok_json_path.read_text()) if tok_json_path.is_file() else None
    if not tok_json or (tok_json.get("model") or {}).get("type") != "BPE" or tok_json["model"].get("byte_fallback"):
        raise TunesmithError("GGUF export supports byte-level BPE tokenizers (tokenizer.json, GPT-2 style) only",
                             file=str(tok_json_path))
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    vocab = tokenizer.get_vocab()
    vocab_size = int(cfg.get("vocab_size") or len(vocab))
    if max(vocab.values()) >= vocab_size:
        raise TunesmithError(f"tokenizer has ids up to {max(vocab.values())} but vocab_size is {vocab_size}",
                             file=str(Path(model_dir) / "config.json"), field="vocab_size")
    reverse = {i: t for t, i in vocab.items()}
    added = tokenizer.get_added_vocab()
    decoder = tokenizer.added_tokens_decoder
    tokens, types = [], []
    for i in range(vocab_size):
        if i not in reverse:
            tokens.append(f"[PAD{i}]")
            types.append(gguf.TokenType.UNUSED)
            continue
        token = reverse[i]
        if token in added:
            if not decoder[i].normalized:     # llama.cpp expects added tokens in normalised form
                token = tokenizer.decode(tokenizer.encode(token, add_special_tokens=False))
            looks_special = token.startswith("<|") and token.endswith("|>")
            types.append(gguf.TokenType.CONTROL if decoder[i].special or looks_special
                         else gguf.TokenType.USER_DEFINED)
        else:
            types.append(gguf.TokenType.NORMAL)
        tokens.append(token)
    merges = gguf.SpecialVocab(model_dir, load_merges=True).merges
    if not merges:
        raise TunesmithError("tokenizer.json has no BPE merges", file=str(tok_json_path))
    probe = tokenizer("a")["input_ids"]
    template = tokenizer.chat_template
    if isinstance(template, dict):
        template = [{"name": k, "template": v} for k, v in template.items()]
    return {
        "tokens": tokens, "types": [int(t) for t in types], "merges": merges,
        "pre": pre_tokenizer_name(tokenizer, tok_json),
        "ids": {k: getattr(tokenizer, f"{k}_token_id") for k in ("bos", "eos", "unk", "pad")},
        "add_bos": bool(tokenizer.bos_token_id is not None and probe[:1] == [tokenizer.bos_token_id]),
        "add_eos": bool(tokenizer.eos_token_id is not None and probe[-1:] == [tokenizer.eos_token_id]),
        "chat_template": template,
    }


def export_gguf(model_dir: str | Path, out_path: str | Path, qtype: QType = "f16", *,
                name: str | None = None) -> dict:
    """Write a llama.cpp GGUF file of the merged Llama model in ``model_dir``.

    Mirrors llama.cpp's ``convert_hf_to_gguf.py`` for Llama: q/k rows permuted to llama.cpp's
    rotary layout, 1-D tensors and norms kept in f32, the rest in ``qtype`` (q8_0 falls back to
    f16 for a tensor whose rows are not a multiple of 32), no ``output.weight`` when the
    embeddings are tied, and the GPT-2 style tokenizer with its chat template. The file is
    written next to ``out_path`` and renamed into place. Returns path, qtype, bytes, n_tensors.
    """
    import gguf

    model_dir, out_path = Path(model_dir), Path(out_path)
    if qtype not in QTYPES:
        raise TunesmithError(f"unknown GGUF type '{qtype}'; expected one of {', '.join(QTYPES)}", field="export.gguf")
    cfg = read_config(model_dir)
    n_layers, n_head = int(cfg["num_hidden_layers"]), int(cfg["num_attention_heads"])
    n_kv = int(cfg.get("num_key_value_heads") or n_head)
    tied = bool(cfg.get("tie_word_embeddings", False))
    theta, scaling = _rope(cfg)
    rope_kind = (scaling or {}).get("rope_type", (scaling or {}).get("type"))
    if scaling and rope_kind not in ("linear", "llama3"):
        raise TunesmithError(f"GGUF export: rope scaling '{rope_kind}' is not supported (default, linear, llama3)",
                             file=str(model_dir / "config.json"), field="rope_scaling")
    vocab = _vocab(model_dir, cfg)   # before any weight is read: a bad tokenizer fails fast

    arch = gguf.MODEL_ARCH_NAMES[gguf.MODEL_ARCH.LLAMA]
    writer = gguf.GGUFWriter(None, arch)
    ftype = gguf.LlamaFileType.MOSTLY_F16 if qtype == "f16" else gguf.LlamaFileType.MOSTLY_Q8_0
    wanted = gguf.GGMLQuantizationType.F16 if qtype == "f16" else gguf.GGMLQuantizationType.Q8_0

    writer.add_type(gguf.GGUFType.MODEL)
    writer.add_name(name or cfg.get("_name_or_path") or model_dir.name)
    writer.add_block_count(n_layers)
    writer.add_context_length(int(cfg.get("max_position_embeddings", 2048)))
    writer.add_embedding_length(int(cfg["hidden_size"]))
    writer.add_feed_forward_length(int(cfg["intermediate_size"]))
    writer.add_head_count(n_head)
    writer.add_head_count_kv(n_kv)
    writer.add_rope_freq_base(theta)
    writer.add_layer_norm_rms_eps(float(cfg.get("rms_norm_eps", 1e-6)))
    if cfg.get("head_dim"):
        writer.add_key_length(int(cfg["head_dim"]))
        writer.add_value_length(int(cfg["head_dim"]))
    writer.add_file_type(ftype)
    writer.add_vocab_size(len(vocab["tokens"]))
    writer.add_rope_dimension_count(_head_dim(cfg))
    if rope_kind == "linear":
        writer.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        writer.add_rope_scaling_factor(float(scaling["factor"]))

    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(vocab["pre"])
    writer.add_token_list(vocab["tokens"])
    writer.add_token_types(vocab["types"])
    writer.add_token_merges(vocab["merges"])
    for kind, tid in vocab["ids"].items():
        if tid is not None:
            getattr(writer, f"add_{kind}_token_id")(int(tid))
    writer.add_add_bos_token(vocab["add_bos"])
    writer.add_add_eos_token(vocab["add_eos"])
    if vocab["chat_template"]:
        writer.add_chat_template(vocab["chat_template"])
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)

    names = gguf.TensorNameMap(gguf.MODEL_ARCH.LLAMA, n_layers)
    n_tensors = 0

    def add(new_name: str, data: np.ndarray) -> None:
        nonlocal n_tensors
        dtype = wanted
        if data.ndim <= 1 or new_name.endswith("_norm.weight") or not new_name.endswith(".weight"):
            dtype = gguf.GGMLQuantizationType.F32
        try:
            out = gguf.quants.quantize(data, dtype)
        except gguf.QuantError:          # rows not a multiple of the block size
            dtype = gguf.GGMLQuantizationType.F16
            out = gguf.quants.quantize(data, dtype)
        writer.add_tensor(new_name, out, raw_dtype=dtype)
        n_tensors += 1

    if rope_kind == "llama3":
        add(gguf.TENSOR_NAMES[gguf.MODEL_TENSOR.ROPE_FREQS] + ".weight", _llama3_rope_factors(cfg, scaling))
    for hf_name, data in _iter_weights(model_dir):
        if hf_name.endswith(".rotary_emb.inv_freq") or (tied and hf_name == "lm_head.weight"):
            continue
        if hf_name.endswith(("q_proj.weight", "q_proj.bias")):
            data = permute_qk(data, n_head)
        elif hf_name.endswith(("k_proj.weight", "k_proj.bias")):
            data = permute_qk(data, n_kv)
        new_name = names.get_name(hf_name, try_suffixes=(".weight", ".bias"))
        if new_name is None:
            raise TunesmithError(f"GGUF export: tensor '{hf_name}' has no llama.cpp name (not a plain Llama "
                                 "causal LM?)", file=str(model_dir))
        add(new_name, data)

    out_path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=out_path.parent, prefix=f".{out_path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        writer.write_header_to_file(path=Path(tmp))
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, out_path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return {"path": str(out_path), "qtype": qtype, "bytes": out_path.stat().st_size, "n_tensors": n_tensors}


def export_run_gguf(run_dir: str | Path, qtypes: list[str] | tuple[str, ...]) -> list[dict]:
    """Write ``export/<run>-<qtype>.gguf`` for each type from the run's ``export/merged`` folder."""
    run = Layout(run_dir)
    merged = run.merged_dir
    if not run.has_merged():
        raise TunesmithError("run has no merged model to convert; export it first (`tunesmith export`) with "
                             "export.merged: true and a mergeable method", file=str(run.path))
    return [export_gguf(merged, run.gguf_path(q), q, name=run.path.name)
            for q in dict.fromkeys(qtypes)]


def parse_quant(quant: str) -> list[str]:
    """``"f16,q8_0"`` -> ``["f16", "q8_0"]``, rejecting unknown types with one clear line."""
    qtypes = [q.strip().lower() for q in quant.split(",") if q.strip()]
    bad = [q for q in qtypes if q not in QTYPES]
    if bad or not qtypes:
        raise TunesmithError(f"unknown GGUF type(s) {', '.join(bad) or '(none given)'}; expected a comma-separated "
                             f"list of {', '.join(QTYPES)}", field="--quant")
    return qtypes

