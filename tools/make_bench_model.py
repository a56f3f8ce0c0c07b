#!/usr/bin/env python3
"""Write a random-weight model with a real model's shapes, for `stitch bench` and tools/bench_hf.py.

Usage: tools/.venv/bin/python tools/make_bench_model.py OUT_DIR [--shape smollm2-135m|qwen2.5-0.5b|llama-3.2-1b]
       [--seed 0]

The folder gets config.json, generation_config.json, model.safetensors (bfloat16, save_pretrained)
and the llama-style tiny tokenizer from tests/fixtures/tiny_tokenizer/llama (vocab 400: benchmarks
feed random ids below 400, so the small tokenizer is enough). Weights use HF's default init under
a fixed seed: the numbers are meaningless, only the shapes and the timing matter.
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

# Shapes from the public config.json files of the named models.
SHAPES = {
    "smollm2-135m": dict(
        model_type="llama",
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
        model_type="qwen2",
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
        model_type="llama",
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
}

# Special-token ids of the tiny llama-style tokenizer (checked against its tokenizer.json below).
BOS, END_OF_TEXT, EOT = 392, 393, 396


def main() -> int:
    ap = argparse.ArgumentParser(description="random-weight bench model with a real model's shapes")
    ap.add_argument("out_dir")
    ap.add_argument("--shape", choices=sorted(SHAPES), default="smollm2-135m")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(TOKENIZER / "tokenizer.json"))
    assert (tok.token_to_id("<|begin_of_text|>"), tok.token_to_id("<|end_of_text|>"), tok.token_to_id("<|eot_id|>")) == (
        BOS,
        END_OF_TEXT,
        EOT,
    ), "tiny tokenizer changed; update the ids here"

    kw = dict(SHAPES[args.shape])
    model_type = kw.pop("model_type")
    cfg = AutoConfig.for_model(
        model_type,
        bos_token_id=BOS,
        eos_token_id=[END_OF_TEXT, EOT],
        hidden_act="silu",
        initializer_range=0.02,
        **kw,
    )
    torch.manual_seed(args.seed)
    model = AutoModelForCausalLM.from_config(cfg, dtype=torch.bfloat16)
    model.generation_config = GenerationConfig(bos_token_id=BOS, eos_token_id=[END_OF_TEXT, EOT])

    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(out))
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copyfile(TOKENIZER / name, out / name)

    n_params = sum(p.numel() for p in model.parameters())
    size = sum(f.stat().st_size for f in out.glob("*.safetensors"))
    print(
        f"{args.shape}: {model_type}, {n_params / 1e6:.1f}M parameters, bf16 safetensors {size / 2**20:.1f} MiB "
        f"-> {out} (transformers {transformers.__version__}, torch {torch.__version__})"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
