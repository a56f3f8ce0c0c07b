#!/usr/bin/env python3
"""Write a random-weight model with a real model's shapes, for `stitch bench` and tools/bench_hf.py.

Usage: python tools/make_bench_model.py OUT_DIR
           [--shape smollm2-135m|llama-3.2-1b|qwen2.5-0.5b|qwen2.5-1.5b|gemma-2-2b] [--seed 0]
           [--device cpu|cuda] [--layers N] [--dry-run]

The folder gets config.json, generation_config.json, model.safetensors (bfloat16, save_pretrained)
and the llama-style tiny tokenizer from tests/fixtures/tiny_tokenizer/llama (vocab 400: benchmarks
feed random ids below 400, so the small tokenizer is enough). Weights use HF's default init under
a fixed seed: the numbers are meaningless, only the shapes and the timing matter.

Shapes are the public config.json files' dimensions, vocabulary, tied embeddings, RoPE (Llama 3.2's
llama3 scaling), and Gemma 2's soft-caps, query_pre_attn_scalar and alternating 4096-token sliding
window. Each shape's parameter count is checked against the published count of the real model.
  --device cuda  initialise the weights on the GPU (faster for the 1-2.6B shapes), saved the same way
  --layers N     fewer layers (smoke tests only: not the real shape, the count check is skipped)
  --dry-run      build the model on torch's meta device (no weights, no memory), check the config
                 and the parameter count, print the bf16 size, write nothing
Works offline with the pinned tools/.venv stack and with torch 2.11 + transformers 5.17 elsewhere.
Never touches the network.
"""

from __future__ import annotations

import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"

import argparse
import shutil
import sys
from pathlib import Path

import torch
import transformers
from transformers import AutoConfig, AutoModelForCausalLM, GenerationConfig

transformers.utils.logging.disable_progress_bar()

ROOT = Path(__file__).resolve().parent.parent
TOKENIZER = ROOT / "tests" / "fixtures" / "tiny_tokenizer" / "llama"

# Shapes from the public config.json files of the named models. `params`: the published parameter
# count of the real model (tied embeddings counted once), checked against what HF builds.
SHAPES = {
    "smollm2-135m": dict(
        params=134_515_008,
        model_type="llama",
        hidden_act="silu",
        hidden_size=576,
        num_hidden_layers=30,
        num_attention_heads=9,
        num_key_value_heads=3,
        intermediate_size=1536,
        vocab_size=49152,
        tie_word_embeddings=True,
        rms_norm_eps=1e-5,
        max_position_embeddings=8192,
        rope_parameters=dict(rope_type="default", rope_theta=100000.0),
    ),
    "qwen2.5-0.5b": dict(
        params=494_032_768,
        model_type="qwen2",
        hidden_act="silu",
        hidden_size=896,
        num_hidden_layers=24,
        num_attention_heads=14,
        num_key_value_heads=2,
        intermediate_size=4864,
        vocab_size=151936,
        tie_word_embeddings=True,
        rms_norm_eps=1e-6,
        max_position_embeddings=32768,
        use_sliding_window=False,
        rope_parameters=dict(rope_type="default", rope_theta=1000000.0),
    ),
    "llama-3.2-1b": dict(
        params=1_235_814_400,
        model_type="llama",
        hidden_act="silu",
        hidden_size=2048,
        num_hidden_layers=16,
        num_attention_heads=32,
        num_key_value_heads=8,
        head_dim=64,
        intermediate_size=8192,
        vocab_size=128256,
        tie_word_embeddings=True,
        rms_norm_eps=1e-5,
        max_position_embeddings=131072,
        rope_parameters=dict(
            rope_type="llama3",
            rope_theta=500000.0,
            factor=32.0,
            low_freq_factor=1.0,
            high_freq_factor=4.0,
            original_max_position_embeddings=8192,
        ),
    ),
    "qwen2.5-1.5b": dict(
        params=1_543_714_304,
        model_type="qwen2",
        hidden_act="silu",
        hidden_size=1536,
        num_hidden_layers=28,
        num_attention_heads=12,
        num_key_value_heads=2,
        intermediate_size=8960,
        vocab_size=151936,
        tie_word_embeddings=True,
        rms_norm_eps=1e-6,
        max_position_embeddings=131072,
        use_sliding_window=False,
        rope_parameters=dict(rope_type="default", rope_theta=1000000.0),
    ),
    # Gemma 2 2B: GeGLU (tanh GELU), head_dim 256 with query_pre_attn_scalar 256, attention-logit
    # soft-cap 50 and final-logit soft-cap 30, a 4096-token sliding window on every other layer
    # (layer 0 sliding, as HF's default layer_types), four norms per block.
    "gemma-2-2b": dict(
        params=2_614_341_888,
        model_type="gemma2",
        hidden_activation="gelu_pytorch_tanh",
        hidden_size=2304,
        num_hidden_layers=26,
        num_attention_heads=8,
        num_key_value_heads=4,
        head_dim=256,
        intermediate_size=9216,
        vocab_size=256000,
        tie_word_embeddings=True,
        rms_norm_eps=1e-6,
        max_position_embeddings=8192,
        query_pre_attn_scalar=256,
        attn_logit_softcapping=50.0,
        final_logit_softcapping=30.0,
        sliding_window=4096,
        rope_parameters=dict(rope_type="default", rope_theta=10000.0),
    ),
}

# Special-token ids of the tiny llama-style tokenizer (checked against its tokenizer.json below).
BOS, END_OF_TEXT, EOT = 392, 393, 396


def check_config(shape: str, cfg) -> None:
    """The family facts a shape must carry into config.json (what stitch and HF both read)."""
    if shape == "llama-3.2-1b":
        rp = cfg.rope_parameters
        assert rp["rope_type"] == "llama3" and rp["factor"] == 32.0 and rp["original_max_position_embeddings"] == 8192, rp
    if shape == "gemma-2-2b":
        assert (cfg.attn_logit_softcapping, cfg.final_logit_softcapping) == (50.0, 30.0)
        assert cfg.sliding_window == 4096 and cfg.query_pre_attn_scalar == 256
        types = list(cfg.layer_types)
        assert types[0] == "sliding_attention" and types[1] == "full_attention", types[:2]
        assert types.count("sliding_attention") == (cfg.num_hidden_layers + 1) // 2, types
    assert cfg.tie_word_embeddings, shape


def main() -> int:
    ap = argparse.ArgumentParser(description="random-weight bench model with a real model's shapes")
    ap.add_argument("out_dir")
    ap.add_argument("--shape", choices=list(SHAPES), default="smollm2-135m")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", choices=["cpu", "cuda"], default="cpu", help="where the random init runs")
    ap.add_argument("--layers", type=int, help="fewer layers (smoke tests; not the real shape)")
    ap.add_argument("--dry-run", action="store_true", help="meta device: check config and counts, write nothing")
    args = ap.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        print("make_bench_model: error: --device cuda but torch sees no CUDA device", file=sys.stderr)
        return 2

    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(TOKENIZER / "tokenizer.json"))
    assert (tok.token_to_id("<|begin_of_text|>"), tok.token_to_id("<|end_of_text|>"), tok.token_to_id("<|eot_id|>")) == (
        BOS,
        END_OF_TEXT,
        EOT,
    ), "tiny tokenizer changed; update the ids here"

    kw = dict(SHAPES[args.shape])
    model_type = kw.pop("model_type")
    expected_params = kw.pop("params")
    if args.layers is not None:
        if not 1 <= args.layers <= kw["num_hidden_layers"]:
            ap.error(f"--layers must be in 1..{kw['num_hidden_layers']}")
        kw["num_hidden_layers"] = args.layers
    cfg = AutoConfig.for_model(
        model_type,
        bos_token_id=BOS,
        eos_token_id=[END_OF_TEXT, EOT],
        pad_token_id=None,
        initializer_range=0.02,
        **kw,
    )
    check_config(args.shape, cfg)
    torch.manual_seed(args.seed)
    device = "meta" if args.dry_run else args.device
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(cfg, dtype=torch.bfloat16)
    n_params = sum(p.numel() for p in model.parameters())
    if args.layers is None and n_params != expected_params:
        print(f"make_bench_model: error: {args.shape}: HF built {n_params:,} parameters, the real model has "
              f"{expected_params:,}", file=sys.stderr)
        return 1
    dtypes = {p.dtype for p in model.parameters()}
    assert dtypes == {torch.bfloat16}, dtypes
    if args.dry_run:
        print(f"{args.shape}: {model_type}, {n_params:,} parameters (matches the real model), "
              f"bf16 {2 * n_params / 2**30:.2f} GiB, config OK (dry run on the meta device, nothing written; "
              f"transformers {transformers.__version__}, torch {torch.__version__})")
        return 0
    model.generation_config = GenerationConfig(bos_token_id=BOS, eos_token_id=[END_OF_TEXT, EOT])

    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(out))
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copyfile(TOKENIZER / name, out / name)

    size = sum(f.stat().st_size for f in out.glob("*.safetensors"))
    print(
        f"{args.shape}{'' if args.layers is None else f' ({args.layers} layers)'}: {model_type}, "
        f"{n_params / 1e6:.1f}M parameters, bf16 safetensors {size / 2**20:.1f} MiB "
        f"-> {out} (transformers {transformers.__version__}, torch {torch.__version__})"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
