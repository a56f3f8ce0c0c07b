# Writes the hand-made seeds of the binary-parser harnesses (tests/fuzz/seeds/{safetensors,
# safetensors_index,gguf,control_vector,map}/), each a few hundred bytes to 4 KB.
# Usage: tools/.venv/bin/python tests/fuzz/seeds/make_binary_seeds.py  (needs gguf, safetensors, torch)
import os, json, tempfile, numpy as np, torch
import gguf
from safetensors.numpy import save_file
from safetensors.torch import save_file as tsave, save as tsave_bytes
R = os.path.dirname(os.path.abspath(__file__))
rng = np.random.default_rng(0)
def d(name):
    p = os.path.join(R, name); os.makedirs(p, exist_ok=True); return p

# ---- safetensors
p = d("safetensors")
save_file({"w": rng.standard_normal((2, 3)).astype(np.float32), "b": np.ones(3, np.float16)},
          f"{p}/f32_f16.safetensors", metadata={"format": "pt"})
save_file({"x": np.arange(4, dtype=np.float64), "i": np.arange(3, dtype=np.int64),
           "j": np.arange(2, dtype=np.int32), "u": np.arange(5, dtype=np.uint8),
           "bo": np.array([True, False]), "s": np.array(1.5, dtype=np.float32),
           "e": np.zeros((0, 4), np.float32), "k": np.arange(2, dtype=np.int16),
           "m": np.arange(3, dtype=np.int8)}, f"{p}/mixed.safetensors")
tsave({"bf": torch.arange(6, dtype=torch.bfloat16).reshape(2, 3)}, f"{p}/bf16.safetensors")

# ---- index
p = d("safetensors_index")
wm = {"a": "model-00001-of-00002.safetensors", "b": "model-00001-of-00002.safetensors",
      "model.embed_tokens.weight": "model-00002-of-00002.safetensors", "c": "model-00002-of-00002.safetensors"}
open(f"{p}/index.json", "w").write(json.dumps({"metadata": {"total_size": 52}, "weight_map": wm}, indent=2))
open(f"{p}/one_shard.json", "w").write(json.dumps({"weight_map": {"a": "model-00001-of-00002.safetensors"}}))

# ---- gguf: tiny models with embedded vocabularies
p = d("gguf")
def tiny(path, arch="llama", tok="gpt2", qtype=None):
    w = gguf.GGUFWriter(path, arch)
    w.add_block_count(1); w.add_embedding_length(8); w.add_feed_forward_length(16)
    w.add_head_count(2); w.add_head_count_kv(1); w.add_layer_norm_rms_eps(1e-5); w.add_rope_freq_base(10000.0)
    w.add_context_length(64)
    V = 10
    if tok == "gpt2":
        toks = ["H", "e", "l", "o", "Ġ", "w", "He", "ll", "<|endoftext|>", "Hell"]
        w.add_tokenizer_model("gpt2"); w.add_tokenizer_pre("qwen2")
        w.add_token_list(toks); w.add_token_types([1]*8 + [3, 1]); w.add_token_merges(["H e", "l l", "He ll"])
        w.add_eos_token_id(8)
    else:
        toks = ["<unk>", "<s>", "</s>", "▁", "▁H", "e", "l", "o", "<0x41>", "▁Hello"]
        w.add_tokenizer_model("llama"); w.add_token_list(toks)
        w.add_token_scores([0.0, 0.0, 0.0, -1.0, -2.0, -3.0, -4.0, -5.0, 0.0, -1.0]); w.add_token_types([2, 3, 3, 1, 1, 1, 1, 1, 1, 1])
        w.add_bos_token_id(1); w.add_eos_token_id(2); w.add_add_bos_token(True)
    def t(name, shape, dtype=np.float32):
        a = rng.standard_normal(shape).astype(np.float32)
        if qtype is not None and len(shape) == 2 and shape[-1] % 32 == 0:
            w.add_tensor(name, gguf.quants.quantize(a, qtype), raw_dtype=qtype)
        else:
            w.add_tensor(name, a.astype(dtype))
    t("token_embd.weight", (V, 8)); t("blk.0.attn_norm.weight", (8,)); t("blk.0.attn_q.weight", (8, 8))
    t("blk.0.attn_k.weight", (4, 8)); t("blk.0.attn_v.weight", (4, 8)); t("blk.0.attn_output.weight", (8, 8))
    t("blk.0.ffn_norm.weight", (8,)); t("blk.0.ffn_gate.weight", (16, 8)); t("blk.0.ffn_up.weight", (16, 8))
    t("blk.0.ffn_down.weight", (8, 16)); t("output_norm.weight", (8,))
    if arch == "qwen3":
        t("blk.0.attn_q_norm.weight", (4,)); t("blk.0.attn_k_norm.weight", (4,))
    w.write_header_to_file(); w.write_kv_data_to_file(); w.write_tensors_to_file(); w.close()
tiny(f"{p}/llama_gpt2.gguf")
tiny(f"{p}/llama_spm.gguf", tok="llama")
tiny(f"{p}/qwen3_gpt2.gguf", arch="qwen3")
# quantized tensors of several types in a small file
w = gguf.GGUFWriter(f"{p}/quants.gguf", "test")
w.add_uint32("test.u", 3); w.add_array("test.arr", [1, 2, 3]); w.add_array("test.s", ["a", "bc"])
w.add_float64("test.f64", 1.5); w.add_bool("test.b", True); w.add_int8("test.i8", -3)
for q in [gguf.GGMLQuantizationType.Q8_0, gguf.GGMLQuantizationType.Q4_0, gguf.GGMLQuantizationType.Q5_1,
          gguf.GGMLQuantizationType.Q4_K, gguf.GGMLQuantizationType.Q6_K, gguf.GGMLQuantizationType.F16,
          gguf.GGMLQuantizationType.BF16]:
    a = rng.standard_normal((1, 256)).astype(np.float32)
    try:
        w.add_tensor(q.name.lower(), gguf.quants.quantize(a, q), raw_dtype=q)
    except Exception as e:
        print("skip", q, e)
w.add_tensor("i32", np.arange(4, dtype=np.int32))
w.write_header_to_file(); w.write_kv_data_to_file(); w.write_tensors_to_file(); w.close()

# ---- control vectors: first byte = selector (bit0: gguf, bit1: width 4, bit2: 3 layers, bits3-4: site)
p = d("control_vector")
cv = os.path.join(tempfile.gettempdir(), "cv.gguf")
w = gguf.GGUFWriter(cv, "controlvector")
w.add_string("controlvector.model_hint", "llama"); w.add_uint32("controlvector.layer_count", 2)
w.add_tensor("direction.1", rng.standard_normal(4).astype(np.float32))
w.add_tensor("direction.2", rng.standard_normal(4).astype(np.float32))
w.write_header_to_file(); w.write_kv_data_to_file(); w.write_tensors_to_file(); w.close()
open(f"{p}/cv_gguf", "wb").write(bytes([0x07]) + open(cv, "rb").read())
def st(name, sel, tensors, meta=None):
    tmp = os.path.join(tempfile.gettempdir(), "x.safetensors"); save_file(tensors, tmp, metadata=meta)
    open(f"{p}/{name}", "wb").write(bytes([sel]) + open(tmp, "rb").read())
st("shared", 0x06, {"blocks.1.resid_post": rng.standard_normal(4).astype(np.float32)})
st("per_layer", 0x06, {"direction": rng.standard_normal((3, 4)).astype(np.float16)})
st("row", 0x02, {"v": rng.standard_normal((1, 4)).astype(np.float32)})
st("patch", 0x06, {"prompt_index": np.array([0, 0], np.int64), "position": np.array([1, 2], np.int32),
                   "blocks.1.resid_post": rng.standard_normal((2, 4)).astype(np.float32)})

# ---- maps
p = d("map")
def mp(name, kind, tensors, ds, dt, h):
    meta = {"format": "stitch-map", "kind": kind, "d_src": str(ds), "d_tgt": str(dt), "hidden": str(h),
            "source_site": "blocks.1.resid_post", "target_model": "tgt-model", "source_model_type": "llama"}
    save_file(tensors, f"{p}/{name}", metadata=meta)
mp("affine.safetensors", "affine", {"W": rng.standard_normal((3, 4)).astype(np.float32), "b": np.zeros(3, np.float32)}, 4, 3, 0)
mp("ae.safetensors", "autoencoder", {"W1": rng.standard_normal((2, 4)).astype(np.float32), "b1": np.zeros(2, np.float32),
    "W2": rng.standard_normal((3, 2)).astype(np.float32), "b2": np.ones(3, np.float32)}, 4, 3, 2)
