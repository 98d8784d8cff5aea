"""GGUF export: metadata, tensor layout and values, tokenizer round trip, errors, and llama.cpp parity."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import gguf
import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM

from tiny import CHAT_TEMPLATE
from tunesmith.errors import TunesmithError
from tunesmith.gguf_export import (QTYPES, export_gguf, export_run_gguf, parse_quant, permute_qk,
                                   unpermute_qk)

T = gguf.GGMLQuantizationType


@pytest.fixture(scope="module")
def exported(tiny_model_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("gguf")
    return {q: export_gguf(tiny_model_dir, out / f"tiny-{q}.gguf", q) for q in QTYPES}


def fields(reader) -> dict:
    return {k: f.contents() for k, f in reader.fields.items()}


def test_metadata_and_tokenizer_round_trip(exported, tiny_model_dir, tokenizer):
    cfg = json.loads((tiny_model_dir / "config.json").read_text())
    for qtype, info in exported.items():
        assert info["qtype"] == qtype and info["bytes"] == Path(info["path"]).stat().st_size
        f = fields(gguf.GGUFReader(info["path"]))
        assert f["general.architecture"] == "llama"
        assert f["general.file_type"] == (1 if qtype == "f16" else 7)
        assert f["llama.block_count"] == cfg["num_hidden_layers"] == 2
        assert f["llama.embedding_length"] == 64 and f["llama.feed_forward_length"] == 128
        assert f["llama.attention.head_count"] == 4 and f["llama.attention.head_count_kv"] == 2
        assert f["llama.context_length"] == 512
        assert f["llama.rope.dimension_count"] == 16
        assert f["llama.rope.freq_base"] == pytest.approx(cfg["rope_parameters"]["rope_theta"])
        assert f["llama.attention.layer_norm_rms_epsilon"] == pytest.approx(cfg["rms_norm_eps"])
        assert f["llama.vocab_size"] == len(tokenizer)
        # tokenizer: byte-level BPE with GPT-2 pre-tokenization, ids in order, specials typed control
        assert f["tokenizer.ggml.model"] == "gpt2" and f["tokenizer.ggml.pre"] == "gpt-2"
        vocab = tokenizer.get_vocab()
        assert f["tokenizer.ggml.tokens"] == sorted(vocab, key=vocab.get)
        types = f["tokenizer.ggml.token_type"]
        for special in ("<|endoftext|>", "<|im_start|>", "<|im_end|>"):
            assert types[vocab[special]] == gguf.TokenType.CONTROL
        assert types[vocab["Ġthe"]] == gguf.TokenType.NORMAL
        merges = json.loads((tiny_model_dir / "tokenizer.json").read_text())["model"]["merges"]
        assert f["tokenizer.ggml.merges"] == [" ".join(m) if isinstance(m, list) else m for m in merges]
        assert f["tokenizer.ggml.eos_token_id"] == tokenizer.eos_token_id == vocab["<|im_end|>"]
        assert f["tokenizer.ggml.padding_token_id"] == vocab["<|endoftext|>"]
        assert "tokenizer.ggml.bos_token_id" not in f          # the tiny tokenizer has none
        assert f["tokenizer.ggml.add_bos_token"] is False and f["tokenizer.ggml.add_eos_token"] is False
        assert f["tokenizer.chat_template"] == CHAT_TEMPLATE


def test_tensor_names_types_and_values(exported, tiny_model_dir):
    hf = load_file(str(tiny_model_dir / "model.safetensors"))
    hf_to_gguf = {"model.embed_tokens.weight": "token_embd.weight", "model.norm.weight": "output_norm.weight",
                  "lm_head.weight": "output.weight"}
    for i in range(2):
        p = f"model.layers.{i}."
        hf_to_gguf.update({
            p + "self_attn.q_proj.weight": f"blk.{i}.attn_q.weight", p + "self_attn.k_proj.weight": f"blk.{i}.attn_k.weight",
            p + "self_attn.v_proj.weight": f"blk.{i}.attn_v.weight",
            p + "self_attn.o_proj.weight": f"blk.{i}.attn_output.weight",
            p + "mlp.gate_proj.weight": f"blk.{i}.ffn_gate.weight", p + "mlp.up_proj.weight": f"blk.{i}.ffn_up.weight",
            p + "mlp.down_proj.weight": f"blk.{i}.ffn_down.weight",
            p + "input_layernorm.weight": f"blk.{i}.attn_norm.weight",
            p + "post_attention_layernorm.weight": f"blk.{i}.ffn_norm.weight"})
    assert set(hf) == set(hf_to_gguf)             # the tiny model is untied: it has its own head
    for qtype, info in exported.items():
        reader = gguf.GGUFReader(info["path"])
        tensors = {t.name: t for t in reader.tensors}
        assert set(tensors) == set(hf_to_gguf.values()) and info["n_tensors"] == len(tensors)
        for hf_name, name in hf_to_gguf.items():
            t, orig = tensors[name], hf[hf_name].float().numpy()
            if orig.ndim == 1:
                assert t.tensor_type == T.F32
            else:
                assert t.tensor_type == (T.F16 if qtype == "f16" else T.Q8_0)
                assert [int(n) for n in t.shape] == list(orig.shape[::-1])      # ggml order: columns first
            got = gguf.quants.dequantize(t.data, t.tensor_type).reshape(orig.shape)
            if name.endswith("attn_q.weight"):
                got = unpermute_qk(got, 4)
            elif name.endswith("attn_k.weight"):
                got = unpermute_qk(got, 2)
            # q8_0: 8-bit blocks of 32 with one scale each -> error under max|block| / 127
            tol = 1e-6 if orig.ndim == 1 else 2e-3 * np.abs(orig).max() if qtype == "f16" else np.abs(orig).max() / 120
            np.testing.assert_allclose(got, orig, atol=tol, rtol=0, err_msg=f"{qtype} {name}")
            if name.endswith(("attn_q.weight", "attn_k.weight")):       # it really was permuted
                assert not np.allclose(gguf.quants.dequantize(t.data, t.tensor_type).reshape(orig.shape), orig,
                                       atol=tol)


def _rope_hf(x, pos, base):
    """Hugging Face's rotary embedding on one head vector: pairs (i, i + d/2)."""
    d = x.shape[-1]
    inv = base ** (-np.arange(0, d, 2) / d)
    cos, sin = np.cos(pos * inv), np.sin(pos * inv)
    a, b = x[: d // 2], x[d // 2:]
    return np.concatenate([a * cos - b * sin, b * cos + a * sin])


def _rope_llama_cpp(x, pos, base):
    """llama.cpp's rotary embedding for Llama (rope type "norm"): adjacent pairs (2i, 2i + 1)."""
    d = x.shape[-1]
    inv = base ** (-np.arange(0, d, 2) / d)
    cos, sin = np.cos(pos * inv), np.sin(pos * inv)
    out = x.copy()
    out[0::2], out[1::2] = x[0::2] * cos - x[1::2] * sin, x[1::2] * cos + x[0::2] * sin
    return out


def test_qk_permutation_makes_llama_cpp_rope_give_the_same_attention_scores():
    rng = np.random.default_rng(0)
    n_head, n_kv, head_dim, hidden = 4, 2, 8, 16
    wq, wk = rng.normal(size=(n_head * head_dim, hidden)), rng.normal(size=(n_kv * head_dim, hidden))
    x_q, x_k = rng.normal(size=hidden), rng.normal(size=hidden)
    pq, pk = permute_qk(wq, n_head), permute_qk(wk, n_kv)
    np.testing.assert_array_equal(unpermute_qk(pq, n_head), wq)
    for h in range(n_head):
        kv = h // (n_head // n_kv)
        sl_q, sl_k = slice(h * head_dim, (h + 1) * head_dim), slice(kv * head_dim, (kv + 1) * head_dim)
        hf = _rope_hf((wq @ x_q)[sl_q], 5, 1e4) @ _rope_hf((wk @ x_k)[sl_k], 2, 1e4)
        cpp = _rope_llama_cpp((pq @ x_q)[sl_q], 5, 1e4) @ _rope_llama_cpp((pk @ x_k)[sl_k], 2, 1e4)
        wrong = _rope_llama_cpp((wq @ x_q)[sl_q], 5, 1e4) @ _rope_llama_cpp((wk @ x_k)[sl_k], 2, 1e4)
        assert cpp == pytest.approx(hf, rel=1e-9)
        assert wrong != pytest.approx(hf, rel=1e-3)     # without the permutation the scores differ


def test_tied_embeddings_have_no_output_tensor(tokenizer, tmp_path):
    cfg = LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=1, num_attention_heads=4,
                      num_key_value_heads=4, vocab_size=len(tokenizer), max_position_embeddings=256,
                      tie_word_embeddings=True, eos_token_id=tokenizer.eos_token_id)
    torch.manual_seed(0)
    LlamaForCausalLM(cfg).save_pretrained(tmp_path / "m")
    tokenizer.save_pretrained(tmp_path / "m")
    info = export_gguf(tmp_path / "m", tmp_path / "m.gguf", "q8_0")
    names = {t.name for t in gguf.GGUFReader(info["path"]).tensors}
    assert "token_embd.weight" in names and "output.weight" not in names
    assert names == {"token_embd.weight", "output_norm.weight"} | {
        f"blk.0.{n}.weight" for n in ("attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up",
                                      "ffn_down", "attn_norm", "ffn_norm")}


def test_bad_input_gets_one_clear_line(tiny_model_dir, tmp_path):
    other = tmp_path / "gpt2"
    shutil.copytree(tiny_model_dir, other)
    cfg = json.loads((other / "config.json").read_text())
    cfg.update(model_type="gpt2", architectures=["GPT2LMHeadModel"])
    (other / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(TunesmithError, match="Llama-architecture models only.*gpt2") as e:
        export_gguf(other, tmp_path / "x.gguf", "f16")
    assert "\n" not in str(e.value) and "config.json" in str(e.value)
    with pytest.raises(TunesmithError, match="expected one of f16, q8_0"):
        export_gguf(tiny_model_dir, tmp_path / "x.gguf", "q4_0")
    with pytest.raises(TunesmithError, match="q4_k"):
        parse_quant("f16,q4_k")
    assert parse_quant(" F16, q8_0 ,f16") == ["f16", "q8_0", "f16"]
    with pytest.raises(TunesmithError, match="no merged model"):
        export_run_gguf(tmp_path, ["f16"])
    assert not list(tmp_path.glob("*.gguf")) and not list(tmp_path.glob(".*tmp"))


def test_export_replaces_atomically(tiny_model_dir, tmp_path):
    out = tmp_path / "m.gguf"
    out.write_bytes(b"old")
    info = export_gguf(tiny_model_dir, out, "f16")
    assert out.read_bytes()[:4] == b"GGUF" and info["bytes"] > 1000
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.gguf"]      # no temporary file left behind


def test_llama_cpp_loads_the_file_and_matches_transformers(exported, tiny_model_dir):
    llama_cpp = pytest.importorskip("llama_cpp", reason="llama_cpp not installed (optional extra gguf-runtime)")
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).eval()
    prompt = [1, 40, 41, 42, 43, 44, 45, 46, 47, 48]
    n_new = 12
    ids = list(prompt)
    with torch.inference_mode():
        ref_logits = model(torch.tensor([prompt])).logits[0, -1].numpy()
        for _ in range(n_new):                 # plain argmax decoding, no stopping
            ids.append(int(model(torch.tensor([ids])).logits[0, -1].argmax()))
    llm = llama_cpp.Llama(model_path=exported["f16"]["path"], n_ctx=64, verbose=False, logits_all=True)
    try:
        assert llm.n_vocab() == model.config.vocab_size
        llm.eval(prompt)
        logits = np.asarray(llm.scores[llm.n_tokens - 1])
        np.testing.assert_allclose(logits, ref_logits, atol=2e-2 * np.abs(ref_logits).max())
        got = list(prompt)
        for _ in range(n_new):
            got.append(int(np.argmax(llm.scores[llm.n_tokens - 1])))
            llm.eval([got[-1]])
        assert got == ids
    finally:
        llm.close()


REAL_RUN = Path("/tmp/fresh4/runs/sentiment-001")
GENERAL_PROMPTS = ["Write one sentence about the sea.", "What is the capital of France?",
                   "Give me three tips for a good night's sleep.", "Explain what a movie review is.",
                   "Translate 'good morning' into French.", "Name two colours of the rainbow."]


@pytest.mark.slow
@pytest.mark.skipif(not (REAL_RUN / "export" / "merged" / "config.json").is_file(), reason="real sentiment run absent")
def test_real_sentiment_model_f16_and_q8_0_in_llama_cpp(tmp_path, monkeypatch):
    """The merged SmolLM2 sentiment model: llama.cpp greedy replies vs transformers, with its chat template."""
    import os
    monkeypatch.setenv("TUNESMITH_HOME", os.environ.get("TUNESMITH_REAL_HOME")
                       or os.path.expanduser("~/.cache/tunesmith"))    # the converted base model, not a re-conversion
    pytest.importorskip("llama_cpp", reason="llama_cpp not installed (optional extra gguf-runtime)")
    from transformers import AutoTokenizer

    from tunesmith.generation import render_prompt
    from tunesmith.verify import compare, llama_cpp_replies, transformers_replies, verify
    run = tmp_path / REAL_RUN.name
    shutil.copytree(REAL_RUN, run, ignore=shutil.ignore_patterns("checkpoints"))
    infos = export_run_gguf(run, ["f16", "q8_0"])
    assert [i["qtype"] for i in infos] == ["f16", "q8_0"]
    assert infos[1]["bytes"] < 0.6 * infos[0]["bytes"]

    # the run's own test prompts through every artifact (reference: adapter on base)
    result = verify(run, prompts=8, print_table=False)
    arts = result["artifacts"]
    assert arts["merged"]["identical"] == 8
    f16, q8 = arts[f"{run.name}-f16.gguf"], arts[f"{run.name}-q8_0.gguf"]
    assert f16["tokenizer_mismatches"] == 0 and f16["chat_template_matches"] is True
    assert f16["identical"] >= 7, f16
    print(f"\nrun prompts: f16 {f16['identical']}/8, q8_0 {q8['identical']}/8 identical")

    # longer open-ended replies from the merged model (a harder test of numerical agreement)
    merged = run / "export" / "merged"
    tok = AutoTokenizer.from_pretrained(merged)
    chats = [[{"role": "user", "content": p}] for p in GENERAL_PROMPTS]
    texts = [render_prompt(tok, c) for c in chats]
    ids = [tok(t, add_special_tokens=False)["input_ids"] for t in texts]
    model = AutoModelForCausalLM.from_pretrained(merged, dtype=torch.float32)
    ref = transformers_replies(model, tok, ids, 32)
    agreement = {}
    for info in infos:
        replies, extra = llama_cpp_replies(Path(info["path"]), tok, ids, 32, texts)
        assert extra["tokenizer_mismatches"] == 0
        agreement[info["qtype"]] = cmp = compare(ref, replies, chats)
        print(f"open prompts, {info['qtype']}: {cmp['identical']}/{len(chats)} identical; "
              + "; ".join(f"token {m['first_diff_token']}" for m in cmp["mismatches"]))
    assert agreement["f16"]["identical"] >= len(chats) - 1, agreement["f16"]
