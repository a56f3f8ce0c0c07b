#!/usr/bin/env python3
"""HF transformers peer for `stitch bench`: the same measurement, done with PyTorch.

Usage: tools/.venv/bin/python tools/bench_hf.py MODEL_DIR [--prompt-len 512] [--decode 64] [--threads N]
       [--device cpu|cuda] [--repeats 3] [--attn sdpa|eager] [--seed 0] [--json OUT]

Measures, batch 1:
  prefill_tok_s  prompt-len / seconds for one forward over a random-id prompt (ids < 400, seeded),
                 filling a fresh KV cache; HF computes only the last position's logits
                 (logits_to_keep=1, as generate() does). Best of --repeats after one warm-up run.
  decode_tok_s   decode / seconds for `decode` greedy steps (argmax, one token per forward, KV cache)
                 after that prefill; best of --repeats after the warm-up.
  peak_rss_mb    resource.getrusage(RUSAGE_SELF).ru_maxrss of this process (includes the Python stack).
Weights: float32 on CPU (as stitch's CPU backend computes), bfloat16 on CUDA.
Prints one JSON object (also written to --json OUT if given). Never touches the network.
"""

from __future__ import annotations

import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"

import argparse
import json
import resource
import sys
import time

import torch
import transformers
from transformers import AutoModelForCausalLM, DynamicCache

transformers.utils.logging.disable_progress_bar()

MAX_RANDOM_ID = 400  # the tiny tokenizers' vocab; valid for every bench model


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


@torch.inference_mode()
def prefill(model, ids: torch.Tensor):
    cache = DynamicCache(config=model.config)
    out = model(input_ids=ids, past_key_values=cache, use_cache=True, logits_to_keep=1)
    return out.logits[0, -1], out.past_key_values


@torch.inference_mode()
def decode(model, last_logits: torch.Tensor, cache, steps: int) -> list[int]:
    tokens = []
    nxt = torch.argmax(last_logits).view(1, 1)
    for _ in range(steps):
        tokens.append(nxt)
        out = model(input_ids=nxt, past_key_values=cache, use_cache=True, logits_to_keep=1)
        cache = out.past_key_values
        nxt = torch.argmax(out.logits[0, -1]).view(1, 1)
    return [int(t) for t in tokens]


def main() -> int:
    ap = argparse.ArgumentParser(description="HF transformers prefill/decode benchmark (peer of `stitch bench`)")
    ap.add_argument("model_dir")
    ap.add_argument("--prompt-len", type=int, default=512)
    ap.add_argument("--decode", type=int, default=64)
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--attn", choices=["sdpa", "eager"], default="sdpa")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", dest="json_out")
    args = ap.parse_args()
    if args.prompt_len < 1 or args.decode < 1 or args.repeats < 1 or args.threads < 1:
        ap.error("--prompt-len, --decode, --repeats and --threads must be >= 1")
    if args.device == "cuda" and not torch.cuda.is_available():
        print("bench_hf: error: --device cuda but torch sees no CUDA device", file=sys.stderr)
        return 2

    torch.set_num_threads(args.threads)
    dtype = torch.float32 if args.device == "cpu" else torch.bfloat16
    t0 = time.perf_counter()
    model = AutoModelForCausalLM.from_pretrained(args.model_dir, dtype=dtype, attn_implementation=args.attn)
    model.to(args.device).eval()
    load_s = time.perf_counter() - t0

    gen = torch.Generator().manual_seed(args.seed)
    ids = torch.randint(0, MAX_RANDOM_ID, (1, args.prompt_len), generator=gen).to(args.device)

    # Warm-up (allocator, thread pool, kernels), then best-of-N.
    logits, cache = prefill(model, ids)
    decode(model, logits, cache, min(args.decode, 4))
    sync(args.device)

    prefill_s, decode_s = [], []
    for _ in range(args.repeats):
        sync(args.device)
        t = time.perf_counter()
        logits, cache = prefill(model, ids)
        sync(args.device)
        prefill_s.append(time.perf_counter() - t)

        t = time.perf_counter()
        tokens = decode(model, logits, cache, args.decode)
        sync(args.device)
        decode_s.append(time.perf_counter() - t)

    result = {
        "prefill_tok_s": round(args.prompt_len / min(prefill_s), 2),
        "decode_tok_s": round(args.decode / min(decode_s), 2),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "threads": args.threads,
        "torch_version": torch.__version__,
        "transformers_version": transformers.__version__,
        "device": args.device if args.device == "cpu" else f"cuda:{torch.cuda.get_device_name()}",
        "dtype": str(dtype).replace("torch.", ""),
        "attn_implementation": args.attn,
        "prompt_len": args.prompt_len,
        "decode": args.decode,
        "repeats": args.repeats,
        "prefill_s": [round(s, 4) for s in prefill_s],
        "decode_s": [round(s, 4) for s in decode_s],
        "load_s": round(load_s, 2),
        "first_tokens": tokens[:8],
        "model_dir": os.path.abspath(args.model_dir),
    }
    if args.device == "cuda":
        result["peak_gpu_mem_mb"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
    text = json.dumps(result)
    print(text)
    if args.json_out:
        with open(args.json_out, "w") as f:
            f.write(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
