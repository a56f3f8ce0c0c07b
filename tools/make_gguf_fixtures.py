#!/usr/bin/env python3
"""Regenerate stitch's GGUF fixtures (tests/fixtures/gguf/) with gguf-py.

Writes, deterministically (running it twice gives byte-identical files):

  types.gguf            every tensor type stitch decodes (F32, F16, BF16, F64, I8..I64, Q4_0, Q4_1,
                        Q5_0, Q5_1, Q8_0, Q2_K, Q3_K, Q4_K, Q5_K, Q6_K, IQ4_NL, IQ4_XS) in awkward
                        shapes (several blocks, >= 2 rows, 1-D to 4-D), general.alignment = 64,
                        and metadata of every GGUF value type (nested arrays included).
                        Types gguf-py can quantize are quantized from random floats; the K and IQ4
                        types, which gguf-py can only dequantize, are random bytes with sane f16
                        scale fields.
  types_ref.safetensors gguf-py's own dequantization (gguf.quants.dequantize) of every tensor of
                        types.gguf, read back with GGUFReader, as float32 under the same names.
  types_v2.gguf         types.gguf with the version field set to 2 (v2 and v3 share the layout;
                        v3 only added big-endian files).
  llama_tied.gguf       tests/fixtures/models/llama_tied converted the way llama.cpp's
                        convert_hf_to_gguf.py converts a Llama: attn_q / attn_k rows permuted for
                        interleaved RoPE (the permutation is re-implemented below), the llama3
                        rope scaling stored as rope_freqs.weight, tokenizer.ggml.* from
                        tokenizer.json. q/k/v and norms are F32 (the test compares wqkv exactly with
                        the HF folder), other matrices Q8_0 (F16 when a row is not a multiple of 32).
  qwen2.gguf            tests/fixtures/models/qwen2 (float16 safetensors): matrices F16, vectors F32,
                        so every weight equals the HF folder's exactly. Not permuted.
  qwen3.gguf            tests/fixtures/models/qwen3: matrices Q8_0, vectors F32. Not permuted.
  gemma_tiny.gguf, gemma2_tiny.gguf, gemma3_tiny.gguf
                        tiny random-weight HF Gemma 1 / 2 / 3 (gemma3_text) models made here with
                        transformers, converted the way convert_hf_to_gguf.py converts architectures
                        gemma / gemma2 / gemma3 (tensor names from gguf-py's TensorNameMap, every
                        *norm.weight stored with its +1 added, no q/k permutation, lm_head dropped, the
                        metadata keys each converter class writes), all tensors F32. They are separate
                        models rather than conversions of tests/fixtures/models/gemma{,2,3_text} because
                        GGUF cannot express those fixtures (see GEMMA_SPECS): their
                        query_pre_attn_scalar differs from head_dim and Gemma 1's hidden_act "gelu"
                        runs the exact erf GELU in transformers 5 while llama.cpp runs the tanh form.
  gemma*_tiny/          beside each: the HF model's config.json and generation_config.json (so
                        load_hf_config can read the same model) and reference.safetensors: HF float32
                        eager logits (prompt.i.logits [T, vocab]), prompt ids and 16-token greedy
                        continuations, as tools/make_fixtures.py computes them. The HF weights are not
                        kept: the script checks that the GGUF holds exactly them (+1 on norms).

Usage: tools/.venv/bin/python tools/make_gguf_fixtures.py
Needs numpy, torch, safetensors and gguf; the Gemma part also transformers and tokenizers (all in
tools/requirements.txt) and imports tools/make_fixtures.py for its model recipe. Never touches the
network.
"""

from __future__ import annotations

import json
import math
import shutil
import struct
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
from safetensors.numpy import save_file
from safetensors.torch import load_file

import gguf
from gguf import GGMLQuantizationType as QT
from gguf import GGUFValueType as VT

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "tests" / "fixtures" / "gguf"
MODELS = ROOT / "tests" / "fixtures" / "models"


def write(writer: gguf.GGUFWriter, path: Path) -> None:
    writer.write_header_to_file(path)
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


# ----------------------------------------------------------------------------------------------
# 1. types.gguf: tensors of every type, metadata of every value type
# ----------------------------------------------------------------------------------------------

# Byte offsets of the f16 scale fields inside one block, per type (ggml-common.h layouts).
F16_FIELDS = {
    QT.Q2_K: [80, 82],   # d, dmin after scales[16], qs[64]
    QT.Q3_K: [108],      # d after hmask[32], qs[64], scales[12]
    QT.Q4_K: [0, 2],     # d, dmin first
    QT.Q5_K: [0, 2],
    QT.Q6_K: [208],      # d after ql[128], qh[64], scales[16]
    QT.IQ4_NL: [0],
    QT.IQ4_XS: [0],
}


def random_blocks(rng: np.random.Generator, qtype: QT, rows: int, blocks_per_row: int) -> np.ndarray:
    """Random raw blocks whose f16 scales are finite and modest (so values stay ordinary)."""
    _, type_size = gguf.GGML_QUANT_SIZES[qtype]
    raw = rng.integers(0, 256, size=(rows * blocks_per_row, type_size), dtype=np.uint8)
    for off in F16_FIELDS[qtype]:
        scale = (rng.uniform(0.002, 0.05, size=rows * blocks_per_row) * rng.choice([-1, 1], size=rows * blocks_per_row))
        raw[:, off:off + 2] = scale.astype(np.float16).view(np.uint8).reshape(-1, 2)
    return raw.reshape(rows, blocks_per_row * type_size)


def make_types(path: Path, ref_path: Path) -> None:
    rng = np.random.default_rng(20240601)
    w = gguf.GGUFWriter(None, "stitch-test")
    w.add_custom_alignment(64)

    # Metadata: one key per value type, plus arrays (of numbers, strings, bools, nested arrays).
    w.add_uint8("test.u8", 200)
    w.add_int8("test.i8", -100)
    w.add_uint16("test.u16", 60000)
    w.add_int16("test.i16", -30000)
    w.add_uint32("test.u32", 4000000000)
    w.add_int32("test.i32", -2000000000)
    w.add_float32("test.f32", 1.5)
    w.add_bool("test.bool_true", True)
    w.add_bool("test.bool_false", False)
    w.add_string("test.string", "héllo wörld ✓")
    w.add_key_value("test.empty_string", "", VT.STRING)
    w.add_uint64("test.u64", 2**64 - 1)
    w.add_int64("test.i64", -(2**62) - 3)
    w.add_float64("test.f64", 0.1)
    w.add_array("test.array_i32", [1, -2, 3])
    w.add_key_value("test.array_u8", [7, 8, 9, 255], VT.ARRAY, sub_type=VT.UINT8)
    w.add_key_value("test.array_f32", [0.5, -1.25, 3.0], VT.ARRAY, sub_type=VT.FLOAT32)
    w.add_array("test.array_str", ["a", "", "ünï"])
    w.add_array("test.array_bool", [True, False, True])
    w.add_array("test.array_nested", [[1, 2], [3, 4, 5]])
    w.add_array("test.array_nested_str", [["x", "y"], ["z"]])

    tensors: dict[str, tuple[np.ndarray, QT | None]] = {}

    # Plain float and integer types.
    f32 = rng.standard_normal((3, 40)).astype(np.float32)
    f32[0, :6] = [np.inf, -np.inf, -0.0, 1e-40, 3.4e38, -1e-45]  # subnormals, infinities, signed zero
    tensors["t.f32"] = (f32, None)
    f16 = (rng.standard_normal((3, 40)) * 4).astype(np.float16)
    f16[0, :5] = np.array([np.inf, -0.0, 6e-8, 65504, -3e-5], dtype=np.float16)  # subnormal, max
    tensors["t.f16"] = (f16, None)
    bf16_src = (rng.standard_normal((3, 40)) * 100).astype(np.float32)
    tensors["t.bf16"] = (gguf.quants.quantize(bf16_src, QT.BF16), QT.BF16)
    tensors["t.f64"] = (rng.standard_normal((2, 3)), None)
    tensors["t.i8"] = (rng.integers(-128, 128, size=(3, 5), dtype=np.int8), None)
    tensors["t.i16"] = (rng.integers(-32768, 32768, size=(2, 4), dtype=np.int16), None)
    tensors["t.i32"] = (rng.integers(-(2**20), 2**20, size=(4,), dtype=np.int32), None)
    tensors["t.i64"] = (rng.integers(-(2**20), 2**20, size=(2, 2), dtype=np.int64), None)
    # 1-D, 3-D and 4-D shapes (ggml lists dimensions fastest-first; numpy slowest-first).
    tensors["t.f32_1d"] = (rng.standard_normal(7).astype(np.float32), None)
    tensors["t.f32_3d"] = (rng.standard_normal((2, 3, 8)).astype(np.float32), None)
    tensors["t.f16_4d"] = (rng.standard_normal((2, 1, 3, 4)).astype(np.float16), None)

    # Types gguf-py quantizes: 3 rows x 3 blocks, one block all zeros (d = 0) and one constant.
    for qt in (QT.Q4_0, QT.Q4_1, QT.Q5_0, QT.Q5_1, QT.Q8_0):
        x = (rng.standard_normal((3, 96)) * rng.uniform(0.1, 3)).astype(np.float32)
        x[1, 32:64] = 0.0
        x[2, 64:96] = 0.75
        tensors[f"t.{qt.name.lower()}"] = (gguf.quants.quantize(x, qt), qt)
    q8_3d = rng.standard_normal((2, 2, 64)).astype(np.float32)
    tensors["t.q8_0_3d"] = (gguf.quants.quantize(q8_3d, QT.Q8_0), QT.Q8_0)

    # Types gguf-py only dequantizes: random valid blocks, 2 rows x 2 blocks (3 for 32-element blocks).
    for qt in (QT.Q2_K, QT.Q3_K, QT.Q4_K, QT.Q5_K, QT.Q6_K, QT.IQ4_XS):
        tensors[f"t.{qt.name.lower()}"] = (random_blocks(rng, qt, 2, 2), qt)
    tensors["t.iq4_nl"] = (random_blocks(rng, QT.IQ4_NL, 2, 3), QT.IQ4_NL)

    for name, (arr, qt) in tensors.items():
        w.add_tensor(name, arr, raw_dtype=qt)
    write(w, path)

    # gguf-py's reading of the file it wrote is the reference.
    reader = gguf.GGUFReader(path)
    ref = {}
    for t in reader.tensors:
        if t.tensor_type in (QT.F64, QT.I8, QT.I16, QT.I32, QT.I64):
            values = np.asarray(t.data).astype(np.float32)  # gguf-py has no "dequantize" for these
        else:
            values = gguf.quants.dequantize(np.asarray(t.data), t.tensor_type)
        shape = [int(d) for d in reversed(t.shape)]  # numpy order
        ref[t.name] = np.ascontiguousarray(values.astype(np.float32).reshape(shape))
    save_file(ref, str(ref_path), metadata={"source": "gguf.quants.dequantize (gguf-py " + gguf_version() + ")"})


def gguf_version() -> str:
    from importlib.metadata import version

    return version("gguf")


def make_v2(src: Path, dst: Path) -> None:
    data = bytearray(src.read_bytes())
    assert data[:4] == b"GGUF" and struct.unpack_from("<I", data, 4)[0] == 3
    struct.pack_into("<I", data, 4, 2)
    dst.write_bytes(bytes(data))


# ----------------------------------------------------------------------------------------------
# 2. Model fixtures converted from the HF fixtures, as convert_hf_to_gguf.py would
# ----------------------------------------------------------------------------------------------


def llama_permute(w: np.ndarray, n_head: int) -> np.ndarray:
    """llama.cpp's q/k row order: within each head, rows (i, i + hd/2) become (2i, 2i+1)."""
    rows = w.shape[0]
    hd = rows // n_head
    return w.reshape(n_head, 2, hd // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def llama3_rope_divisors(theta: float, head_dim: int, rp: dict) -> np.ndarray:
    """The per-frequency divisors llama.cpp stores as rope_freqs.weight (same rule as HF llama3)."""
    freqs = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim))
    factor, lo, hi = rp["factor"], rp["low_freq_factor"], rp["high_freq_factor"]
    old = rp["original_max_position_embeddings"]
    low_wavelen, high_wavelen = old / lo, old / hi
    out = []
    for f in freqs.tolist():
        wavelen = 2 * math.pi / f
        if wavelen < high_wavelen:
            out.append(1.0)
        elif wavelen > low_wavelen:
            out.append(factor)
        else:
            smooth = (old / wavelen - lo) / (hi - lo)
            out.append(1.0 / ((1 - smooth) / factor + smooth))
    return np.array(out, dtype=np.float32)


def add_tokenizer(w: gguf.GGUFWriter, model_dir: Path, pre: str, eos: int, bos: int, eot: int | None, pad: int | None,
                  add_bos: bool | None = None):
    tj = json.loads((model_dir / "tokenizer.json").read_text())
    vocab = dict(tj["model"]["vocab"])
    special = set()
    for a in tj["added_tokens"]:
        vocab[a["content"]] = a["id"]
        if a["special"]:
            special.add(a["id"])
    tokens = [None] * len(vocab)
    for tok, i in vocab.items():
        tokens[i] = tok
    assert all(t is not None for t in tokens)
    merges = [m if isinstance(m, str) else " ".join(m) for m in tj["model"]["merges"]]
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre(pre)
    w.add_token_list(tokens)
    w.add_token_types([3 if i in special else 1 for i in range(len(tokens))])
    w.add_token_merges(merges)
    w.add_bos_token_id(bos)
    w.add_eos_token_id(eos)
    if eot is not None:
        w.add_eot_token_id(eot)
    if pad is not None:
        w.add_pad_token_id(pad)
    if add_bos is not None:
        w.add_add_bos_token(add_bos)


HF_TO_GGUF = {
    "input_layernorm.weight": "attn_norm.weight",
    "self_attn.q_proj.weight": "attn_q.weight",
    "self_attn.k_proj.weight": "attn_k.weight",
    "self_attn.v_proj.weight": "attn_v.weight",
    "self_attn.q_proj.bias": "attn_q.bias",
    "self_attn.k_proj.bias": "attn_k.bias",
    "self_attn.v_proj.bias": "attn_v.bias",
    "self_attn.o_proj.weight": "attn_output.weight",
    "self_attn.q_norm.weight": "attn_q_norm.weight",
    "self_attn.k_norm.weight": "attn_k_norm.weight",
    "post_attention_layernorm.weight": "ffn_norm.weight",
    "mlp.gate_proj.weight": "ffn_gate.weight",
    "mlp.up_proj.weight": "ffn_up.weight",
    "mlp.down_proj.weight": "ffn_down.weight",
}


def gguf_name(hf: str) -> str:
    if hf == "model.embed_tokens.weight":
        return "token_embd.weight"
    if hf == "model.norm.weight":
        return "output_norm.weight"
    if hf == "lm_head.weight":
        return "output.weight"
    parts = hf.split(".")
    assert parts[0] == "model" and parts[1] == "layers", hf
    return f"blk.{parts[2]}." + HF_TO_GGUF[".".join(parts[3:])]


def convert(name: str, arch: str, matrix_type, f32_names: tuple[str, ...] = ()) -> None:
    """matrix_type(gguf_name, ndarray) -> (array to write, raw_dtype or None)."""
    src = MODELS / name
    cfg = json.loads((src / "config.json").read_text())
    gen = json.loads((src / "generation_config.json").read_text())
    state = load_file(str(src / "model.safetensors"))
    n_head, n_kv = cfg["num_attention_heads"], cfg["num_key_value_heads"]
    head_dim = cfg.get("head_dim") or cfg["hidden_size"] // n_head
    rp = cfg.get("rope_parameters") or cfg.get("rope_scaling") or {}
    theta = rp.get("rope_theta", cfg.get("rope_theta", 10000.0))

    w = gguf.GGUFWriter(None, arch)
    w.add_name(f"stitch fixture {name}")
    w.add_block_count(cfg["num_hidden_layers"])
    w.add_context_length(cfg["max_position_embeddings"])
    w.add_embedding_length(cfg["hidden_size"])
    w.add_feed_forward_length(cfg["intermediate_size"])
    w.add_head_count(n_head)
    w.add_head_count_kv(n_kv)
    w.add_rope_freq_base(theta)
    w.add_layer_norm_rms_eps(cfg["rms_norm_eps"])
    w.add_key_length(head_dim)
    w.add_value_length(head_dim)
    w.add_rope_dimension_count(head_dim)
    w.add_vocab_size(cfg["vocab_size"])
    w.add_file_type(gguf.LlamaFileType.MOSTLY_Q8_0)
    eos = gen["eos_token_id"]
    eos = eos if isinstance(eos, list) else [eos]
    add_tokenizer(w, src, "llama-bpe" if arch == "llama" else "qwen2", eos=eos[0], bos=gen["bos_token_id"],
                  eot=eos[1] if len(eos) > 1 else None, pad=gen.get("pad_token_id"))

    if rp.get("rope_type") == "llama3":
        w.add_tensor("rope_freqs.weight", llama3_rope_divisors(theta, head_dim, rp))

    for hf, t in state.items():
        x = t.float().numpy()
        if arch == "llama" and hf.endswith(("q_proj.weight", "q_proj.bias")):
            x = llama_permute(x, n_head)
        if arch == "llama" and hf.endswith(("k_proj.weight", "k_proj.bias")):
            x = llama_permute(x, n_kv)
        g = gguf_name(hf)
        if x.ndim == 1 or g.endswith(f32_names):
            w.add_tensor(g, x.astype(np.float32))
        else:
            arr, raw = matrix_type(g, x)
            w.add_tensor(g, arr, raw_dtype=raw)
    write(w, OUT / f"{name}.gguf")


def q8_or_f16(_name: str, x: np.ndarray):
    if x.shape[-1] % 32 == 0:
        return gguf.quants.quantize(x, QT.Q8_0), QT.Q8_0
    return x.astype(np.float16), None


def f16(_name: str, x: np.ndarray):
    return x.astype(np.float16), None


# ----------------------------------------------------------------------------------------------
# 3. Gemma 1 / 2 / 3: tiny HF models made here, converted as convert_hf_to_gguf.py converts them
# ----------------------------------------------------------------------------------------------
#
# GGUF cannot express every HF Gemma config, so these are not conversions of the HF fixtures in
# tests/fixtures/models/ but models of their own whose every setting survives conversion:
#  - query_pre_attn_scalar (Gemma 2/3) is not stored; llama.cpp scales q·k by head_dim^-0.5
#    (hidden/heads^-0.5 for the 27B models, told apart by their 46 / 62 layers). models/gemma2 has
#    24 and models/gemma3_text 20 against head_dim 16. Here: query_pre_attn_scalar = head_dim.
#  - Gemma 1's activation is not stored; llama.cpp runs the tanh GELU. models/gemma says hidden_act
#    "gelu", which transformers 5 runs as the exact erf GELU. Here: hidden_act "gelu_pytorch_tanh".
#  - The gemma and gemma2 converter classes write no rope.freq_base (llama.cpp's default: 10000)
#    and no sliding-window pattern (gemma2: even layers local, HF's default too).
#  - gemma3: no pattern either (llama.cpp: 5 local : 1 global, layer L global iff L % 6 == 5, HF's
#    default); the local RoPE base is written as rope.freq_base_swa only from transformers-5 configs
#    (rope_parameters keyed by layer type) and llama.cpp versions before that key hard-code 10000,
#    so it is 10000 here (unscaled, as HF and llama.cpp both apply the linear scaling to global
#    layers only).

TINY_TOKENIZER = ROOT / "tests" / "fixtures" / "tiny_tokenizer" / "llama"
GEMMA_ARCH = {"gemma": gguf.MODEL_ARCH.GEMMA, "gemma2": gguf.MODEL_ARCH.GEMMA2, "gemma3": gguf.MODEL_ARCH.GEMMA3}

# name -> make_fixtures.py-style spec (+ arch). Small (hidden 32, GQA 2:1) so that three models and
# their reference logits fit the fixture budget; the long prompt outruns both windows.
GEMMA_SPECS = {
    "gemma_tiny": dict(
        arch="gemma",
        style="llama",
        seed=8008,
        norm_mean=0.0,
        embed_std=0.3,
        final_norm=(-1.0, 1.0),
        config=dict(
            model_type="gemma",
            hidden_size=32,
            num_hidden_layers=3,
            num_attention_heads=2,
            num_key_value_heads=1,
            head_dim=24,  # not hidden / heads: attention.key_length must be honoured
            intermediate_size=56,
            hidden_act="gelu_pytorch_tanh",
            tie_word_embeddings=True,
            rms_norm_eps=1e-6,
            max_position_embeddings=8192,
            rope_parameters=dict(rope_type="default", rope_theta=10000.0),
        ),
    ),
    # soft-caps lowered so that they bite (asserted below), a 16-token window on even layers
    "gemma2_tiny": dict(
        arch="gemma2",
        style="llama",
        seed=9009,
        norm_mean=0.0,
        embed_std=0.4,
        final_norm=(-1.0, 1.0),
        config=dict(
            model_type="gemma2",
            hidden_size=32,
            num_hidden_layers=4,
            num_attention_heads=2,
            num_key_value_heads=1,
            head_dim=16,
            intermediate_size=48,
            hidden_activation="gelu_pytorch_tanh",
            tie_word_embeddings=True,
            rms_norm_eps=1e-6,
            max_position_embeddings=8192,
            query_pre_attn_scalar=16,
            sliding_window=16,
            attn_logit_softcapping=4.0,
            final_logit_softcapping=6.0,
            rope_parameters=dict(rope_type="default", rope_theta=10000.0),
        ),
    ),
    # 7 layers = 5 local + 1 global + 1 local, 8-token window, local base 1e4 vs global 1e6 with
    # linear x8 on the global layer only, q/k norms, final_logit_softcapping set (the converter
    # writes it when truthy; HF Gemma3ForCausalLM applies it)
    "gemma3_tiny": dict(
        arch="gemma3",
        style="llama",
        seed=10010,
        norm_mean=0.0,
        embed_std=0.3,
        final_norm=(-1.0, 1.0),
        config=dict(
            model_type="gemma3_text",
            hidden_size=32,
            num_hidden_layers=7,
            num_attention_heads=2,
            num_key_value_heads=1,
            head_dim=16,
            intermediate_size=40,
            hidden_activation="gelu_pytorch_tanh",
            tie_word_embeddings=True,
            rms_norm_eps=1e-6,
            max_position_embeddings=32768,
            query_pre_attn_scalar=16,
            sliding_window=8,
            final_logit_softcapping=12.0,
            rope_parameters=dict(
                sliding_attention=dict(rope_type="default", rope_theta=10000.0),
                full_attention=dict(rope_type="linear", factor=8.0, rope_theta=1000000.0),
            ),
        ),
    ),
}


def _mf():
    """tools/make_fixtures.py: the model recipe (config, weight init, HF reference) shared with the HF fixtures."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import make_fixtures

    return make_fixtures


def gemma_prompts(mf) -> list[str]:
    # make_fixtures' prompts minus the 40-token prose one (the reference logits are most of the
    # bytes); "Total: 42 items ..." is 36 tokens, past both windows + 8.
    return [mf.COMMON_PROMPTS[0], mf.COMMON_PROMPTS[1], mf.COMMON_PROMPTS[3], mf.LLAMA_SPECIAL_PROMPT]


def check_llamacpp_expressible(name: str, arch: str, hp: dict) -> None:
    """Everything this HF config says must be something a GGUF file of `arch` says too (see above)."""
    n, hd = hp["num_hidden_layers"], hp["head_dim"]
    rp = hp["rope_parameters"]
    if arch == "gemma":
        assert hp["hidden_act"] == "gelu_pytorch_tanh", name
        assert rp == {"rope_type": "default", "rope_theta": 10000.0}, (name, rp)
        return
    assert hp["query_pre_attn_scalar"] == hd, (name, "llama.cpp scales q by head_dim^-0.5")
    assert n not in (46, 62), (name, "llama.cpp would take this for a 27B model")
    if arch == "gemma2":
        assert rp == {"rope_type": "default", "rope_theta": 10000.0}, (name, rp)
        want = ["sliding_attention" if i % 2 < 1 else "full_attention" for i in range(n)]
    else:
        assert rp["sliding_attention"] == {"rope_type": "default", "rope_theta": 10000.0}, (name, rp)
        assert rp["full_attention"].get("rope_type", "default") in ("default", "linear"), (name, rp)
        want = ["sliding_attention" if i % 6 < 5 else "full_attention" for i in range(n)]
    assert hp["layer_types"] == want, (name, hp["layer_types"], want)


@torch.no_grad()
def check_gemma_semantics(mf, name: str, model, prompt_ids: list[list[int]]) -> str:
    """What the model is for, asserted on the HF side; returns notes for the reference file."""
    cfg = model.config
    x = torch.linspace(-6, 6, 1001)
    act = model.model.layers[0].mlp.act_fn
    assert torch.equal(act(x), torch.nn.functional.gelu(x, approximate="tanh")), f"{name}: HF does not run the tanh GELU"
    hd = cfg.head_dim
    for layer in model.model.layers:
        assert layer.self_attn.scaling == hd**-0.5, (name, layer.self_attn.scaling)
    notes = f" HF runs the tanh GELU and scales q·k by head_dim^-0.5 = {hd ** -0.5}, as llama.cpp does."
    if cfg.model_type != "gemma":
        longest = max(len(p) for p in prompt_ids)
        assert longest > cfg.sliding_window + 8, (name, longest, cfg.sliding_window)
        notes += f" layer_types {cfg.layer_types}, sliding_window {cfg.sliding_window}, longest prompt {longest} tokens."
    if cfg.model_type == "gemma2":
        notes += " " + mf.softcap_activity(name, model, prompt_ids)
    return notes


def write_gemma_gguf(path: Path, name: str, arch: str, hp: dict, gen: dict, state: dict[str, torch.Tensor]) -> dict[str, np.ndarray]:
    """The GGUF convert_hf_to_gguf.py's GemmaModel / Gemma2Model / Gemma3Model would write with
    --outtype f32. Returns the tensors written (GGUF name -> float32 array, numpy order)."""
    n_layers, head_dim = hp["num_hidden_layers"], hp["head_dim"]
    w = gguf.GGUFWriter(None, gguf.MODEL_ARCH_NAMES[GEMMA_ARCH[arch]])
    w.add_type(gguf.GGUFType.MODEL)
    w.add_name(f"stitch fixture {name}")
    if arch in ("gemma", "gemma2"):
        # GemmaModel / Gemma2Model.set_gguf_parameters (neither calls TextModel's: no rope keys)
        w.add_context_length(hp["max_position_embeddings"])
        w.add_embedding_length(hp["hidden_size"])
        w.add_block_count(n_layers)
        w.add_feed_forward_length(hp["intermediate_size"])
        w.add_head_count(hp["num_attention_heads"])
        w.add_head_count_kv(hp["num_key_value_heads"])
        w.add_layer_norm_rms_eps(hp["rms_norm_eps"])
        w.add_key_length(head_dim)
        w.add_value_length(head_dim)
        w.add_file_type(gguf.LlamaFileType.ALL_F32)
        if arch == "gemma2":
            w.add_attn_logit_softcapping(hp["attn_logit_softcapping"])
            w.add_final_logit_softcapping(hp["final_logit_softcapping"])
            w.add_sliding_window(hp["sliding_window"])
    else:
        # Gemma3Model.set_gguf_parameters: TextModel's keys (rope scaling and base from the
        # full_attention parameters, rope.freq_base_swa from sliding_attention), then its own.
        rp = hp["rope_parameters"]
        full = rp.get("full_attention", rp)
        w.add_block_count(n_layers)
        w.add_context_length(hp.get("max_position_embeddings", 131072))
        w.add_embedding_length(hp["hidden_size"])
        w.add_feed_forward_length(hp["intermediate_size"])
        w.add_head_count(hp.get("num_attention_heads", 8))
        w.add_head_count_kv(hp.get("num_key_value_heads", 4))
        if full.get("rope_type") == "linear" and full.get("factor") is not None:
            w.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
            w.add_rope_scaling_factor(full["factor"])
        w.add_rope_freq_base(full.get("rope_theta", 1_000_000.0))
        if (local := rp.get("sliding_attention", {}).get("rope_theta")) is not None:
            w.add_rope_freq_base_swa(local)
        w.add_layer_norm_rms_eps(hp.get("rms_norm_eps", 1e-6))
        w.add_key_length(hp.get("head_dim", 256))
        w.add_value_length(hp.get("head_dim", 256))
        w.add_file_type(gguf.LlamaFileType.ALL_F32)
        assert hp.get("attn_logit_softcapping") is None  # the converter asserts it too
        if final_cap := hp.get("final_logit_softcapping"):
            w.add_final_logit_softcapping(final_cap)
        if hp.get("sliding_window_pattern") != 1:
            w.add_sliding_window(hp["sliding_window"])
    eos = gen["eos_token_id"]
    eos = eos if isinstance(eos, list) else [eos]
    # The tiny fixtures' tokenizer is byte-level BPE with Llama 3's pre-tokenizer (the converter
    # would want a SentencePiece tokenizer.model for gemma / gemma2); its post-processor adds BOS.
    add_tokenizer(w, TINY_TOKENIZER, "llama-bpe", eos=eos[0], bos=gen["bos_token_id"],
                  eot=eos[1] if len(eos) > 1 else None, pad=gen.get("pad_token_id"), add_bos=True)

    tmap = gguf.get_tensor_name_map(GEMMA_ARCH[arch], n_layers)
    written: dict[str, np.ndarray] = {}
    for hf, t in state.items():
        assert hf != "lm_head.weight", "tied Gemma checkpoints have no lm_head (the converter drops it anyway)"
        x = t.float()
        if hf.endswith("norm.weight"):
            x = x + 1  # HF's RMSNorm multiplies by (1 + w) in float32; the file holds 1 + w
        g = tmap.get_name(hf, try_suffixes=(".weight", ".bias"))
        assert g is not None, hf
        arr = np.ascontiguousarray(x.numpy().astype(np.float32))
        w.add_tensor(g, arr)
        written[g] = arr
    write(w, path)
    return written


def check_gemma_gguf(path: Path, written: dict[str, np.ndarray], arch: str, n_layers: int) -> None:
    """Reads the file back with gguf-py: exactly the tensors meant, F32, under llama.cpp's names."""
    r = gguf.GGUFReader(path)
    assert r.fields["general.architecture"].contents() == gguf.MODEL_ARCH_NAMES[GEMMA_ARCH[arch]]
    assert sorted(t.name for t in r.tensors) == sorted(written), sorted(t.name for t in r.tensors)
    for t in r.tensors:
        assert t.tensor_type == QT.F32, t.name
        got = np.asarray(t.data).reshape([int(d) for d in reversed(t.shape)])
        assert np.array_equal(got, written[t.name]), t.name
    per_layer = {"gemma": ["attn_norm", "attn_q", "attn_k", "attn_v", "attn_output", "ffn_norm", "ffn_gate", "ffn_up", "ffn_down"]}
    per_layer["gemma2"] = per_layer["gemma"] + ["post_attention_norm", "post_ffw_norm"]
    per_layer["gemma3"] = per_layer["gemma2"] + ["attn_q_norm", "attn_k_norm"]
    want = {"token_embd.weight", "output_norm.weight"}
    want |= {f"blk.{L}.{s}.weight" for L in range(n_layers) for s in per_layer[arch]}
    assert set(written) == want, sorted(set(written) ^ want)


def make_gemma(name: str, spec: dict) -> None:
    mf = _mf()
    from tokenizers import Tokenizer
    from transformers import AutoModelForCausalLM, AutoTokenizer

    arch = spec["arch"]
    tok = Tokenizer.from_file(str(TINY_TOKENIZER / "tokenizer.json"))
    hf_tok = AutoTokenizer.from_pretrained(str(TINY_TOKENIZER))
    cfg, gen_cfg = mf.make_config(spec, tok)
    prompts = gemma_prompts(mf)
    prompt_ids = [hf_tok(p, add_special_tokens=True)["input_ids"] for p in prompts]
    folder = OUT / name
    for attempt in range(20):
        seed = spec["seed"] + 7919 * attempt
        torch.manual_seed(seed)
        model = AutoModelForCausalLM.from_config(cfg, attn_implementation="eager", dtype=torch.float32)
        mf.reinit_weights(model, seed, spec["norm_mean"], spec["embed_std"], spec["final_norm"])
        model.generation_config = gen_cfg
        with tempfile.TemporaryDirectory() as tmp:
            model.save_pretrained(tmp)
            ref, info = AutoModelForCausalLM.from_pretrained(
                tmp, dtype=torch.float32, attn_implementation="eager", output_loading_info=True
            )
            assert not any(info.values()), f"{name}: missing/unexpected/mismatched keys on reload: {info}"
            ref.eval()
            result = mf.compute_reference(ref, prompt_ids, hf_tok)
            if result["min_margin"] <= mf.MIN_MARGIN:
                print(f"  {name}: seed {seed} min greedy margin {result['min_margin']:.2e} too small, re-seeding")
                continue
            notes = check_gemma_semantics(mf, name, ref, prompt_ids)
            config_text = (Path(tmp) / "config.json").read_text()
            gen_text = (Path(tmp) / "generation_config.json").read_text()
            state = load_file(str(Path(tmp) / "model.safetensors"))
        break
    else:
        raise SystemExit(f"{name}: no seed gave greedy margins > {mf.MIN_MARGIN}")

    hp, gen = json.loads(config_text), json.loads(gen_text)
    check_llamacpp_expressible(name, arch, hp)
    # The converter truncates gemma3's embedding to the tokenizer's size; here they agree.
    assert state["model.embed_tokens.weight"].shape[0] == tok.get_vocab_size() == hp["vocab_size"]
    written = write_gemma_gguf(OUT / f"{name}.gguf", name, arch, hp, gen, state)
    check_gemma_gguf(OUT / f"{name}.gguf", written, arch, hp["num_hidden_layers"])

    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir()
    (folder / "config.json").write_text(config_text)
    (folder / "generation_config.json").write_text(gen_text)
    import transformers

    meta = {
        "n_prompts": str(len(prompts)),
        "transformers_version": transformers.__version__,
        "torch_version": torch.__version__,
        "model": name,
        "seed": str(seed),
        "notes": (
            f"Tiny random-weight {hp['model_type']} model made by tools/make_gguf_fixtures.py (recipe of "
            "tools/make_fixtures.py), saved in float32; the GGUF beside this folder holds exactly its weights "
            "(norms + 1) under llama.cpp's names and keys. HF reference computed in float32, "
            "attn_implementation=eager, batch 1, no padding. prompt.i.ids I32 [T]: tokenizer(text, "
            "add_special_tokens=True) with tests/fixtures/tiny_tokenizer/llama. prompt.i.logits F32 [T, vocab]. "
            f"prompt.i.greedy I32 [{mf.N_GREEDY}]: argmax with HF's KV cache, no EOS stopping; "
            f"prompt.i.greedy_margin F32: top1-top2 logit per step (all > {mf.MIN_MARGIN})." + notes
        ),
    }
    tensors = {}
    for i, (text, r) in enumerate(zip(prompts, result["prompts"])):
        meta[f"prompt.{i}.text"] = text
        tensors[f"prompt.{i}.ids"] = torch.tensor(prompt_ids[i], dtype=torch.int32)
        tensors[f"prompt.{i}.logits"] = r["logits"].contiguous()
        tensors[f"prompt.{i}.greedy"] = torch.tensor(r["greedy"], dtype=torch.int32)
        tensors[f"prompt.{i}.greedy_margin"] = torch.tensor(r["margins"], dtype=torch.float32)
    mf.write_safetensors(folder / "reference.safetensors", tensors, meta)
    for f in folder.iterdir():
        f.chmod(0o644)
    print(
        f"  {name}: seed {seed}, T={[len(p) for p in prompt_ids]}, min greedy margin {result['min_margin']:.3f}, "
        f"gguf {(OUT / f'{name}.gguf').stat().st_size} B, reference {(folder / 'reference.safetensors').stat().st_size} B"
    )


def main() -> int:
    OUT.mkdir(parents=True, exist_ok=True)
    make_types(OUT / "types.gguf", OUT / "types_ref.safetensors")
    make_v2(OUT / "types.gguf", OUT / "types_v2.gguf")
    convert("llama_tied", "llama", q8_or_f16, f32_names=("attn_q.weight", "attn_k.weight", "attn_v.weight"))
    convert("qwen2", "qwen2", f16)
    convert("qwen3", "qwen3", q8_or_f16)
    torch.use_deterministic_algorithms(True)
    torch.set_num_threads(1)  # bit-stable HF reference logits regardless of the machine's core count
    for name, spec in GEMMA_SPECS.items():
        make_gemma(name, spec)
    files = sorted(p for p in OUT.rglob("*") if p.is_file())
    total = sum(p.stat().st_size for p in files)
    for p in files:
        print(f"{p.relative_to(ROOT)}: {p.stat().st_size} bytes")
    print(f"total {total} bytes")
    if total >= 2 << 20:
        print("fixture folder is over 2 MiB", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
