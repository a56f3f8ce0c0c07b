#!/usr/bin/env python3
"""HF transformers peer for `stitch bench`: the same measurements, done with PyTorch.

Usage: python tools/bench_hf.py MODEL_DIR [--prompt-lens 512,2048] [--decode 64] [--batch B] [--capture]
       [--threads N] [--device cpu|cuda] [--dtype float32|bfloat16|float16] [--repeats 3]
       [--attn auto|sdpa|eager] [--seed 0] [--json OUT]

Measures (random-id prompts: ids below min(400, vocab), seeded; best of --repeats after a warm-up;
on CUDA every timed region ends with torch.cuda.synchronize()):
  prefill {len: tok/s}  len / seconds of one batch-1 forward over a len-token prompt filling a fresh
                 KV cache; HF computes only the last position's logits (logits_to_keep=1, as
                 generate() does). --prompt-lens lists the lengths (--prompt-len N: one length).
                 prefill_tok_s / prompt_len: the first length (the keys of older versions).
  decode_b1_tok_s  `decode` greedy steps (argmax, one token per forward, KV cache) after a 16-token
                 prompt, batch 1 (also written as decode_tok_s).
  decode_bB_tok_s  the same with --batch B sequences decoding together (B different 16-token
                 prompts prefilled together, then B tokens per step): B*decode / seconds. B=1 skips it.
  capture_tok_s  --capture: one forward over a capture_len-token prompt (the first prompt length)
                 with output_hidden_states=True, every block's output (hidden_states[1..n]) copied
                 to host memory as float32 rows, as a capture tool does; tokens / seconds.
  peak_rss_mb    ru_maxrss of this process (includes the Python stack); on CUDA peak_gpu_mem_mb too.
Weights: float32 on CPU (as stitch's CPU backend computes), bfloat16 on CUDA (as stitch's CUDA
backend stores GEMM weights) unless --dtype says otherwise.
--attn auto: eager for models with an attention-logit soft-cap (Gemma 2: SDPA would silently skip
the cap and compute a different model), sdpa otherwise. The JSON records what ran.
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
from transformers import AutoConfig, AutoModelForCausalLM, DynamicCache

transformers.utils.logging.disable_progress_bar()

MAX_RANDOM_ID = 400  # the tiny tokenizers' vocab; valid for every bench model
DECODE_PROMPT = 16  # tokens of the prompt before the timed decode steps (as stitch bench)


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def log(msg: str) -> None:
    print(f"bench_hf: {msg}", file=sys.stderr, flush=True)


@torch.inference_mode()
def prefill(model, ids: torch.Tensor):
    cache = DynamicCache(config=model.config)
    out = model(input_ids=ids, past_key_values=cache, use_cache=True, logits_to_keep=1)
    return out.logits[:, -1], out.past_key_values


@torch.inference_mode()
def decode(model, last_logits: torch.Tensor, cache, steps: int) -> torch.Tensor:
    """Greedy steps for every row of the batch; returns the tokens [batch, steps] (on the device)."""
    tokens = []
    nxt = torch.argmax(last_logits, dim=-1).view(-1, 1)
    for _ in range(steps):
        tokens.append(nxt)
        out = model(input_ids=nxt, past_key_values=cache, use_cache=True, logits_to_keep=1)
        cache = out.past_key_values
        nxt = torch.argmax(out.logits[:, -1], dim=-1).view(-1, 1)
    return torch.cat(tokens, dim=1)


@torch.inference_mode()
def capture(model, ids: torch.Tensor, n_layers: int) -> list[torch.Tensor]:
    """Every block's output at every position, as float32 rows in host memory."""
    out = model(input_ids=ids, use_cache=False, output_hidden_states=True, logits_to_keep=1)
    hs = out.hidden_states
    return [hs[L + 1][0].to("cpu", dtype=torch.float32) for L in range(n_layers)]


def best_of(repeats: int, device: str, fn) -> tuple[float, list[float]]:
    times = []
    for _ in range(repeats):
        sync(device)
        t = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - t)
    return min(times), times


def parse_lens(text: str) -> list[int]:
    try:
        lens = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' is not a comma-separated list of token counts")
    if not lens or min(lens) < 1:
        raise argparse.ArgumentTypeError(f"'{text}': every length must be >= 1")
    return lens


def main() -> int:
    ap = argparse.ArgumentParser(description="HF transformers prefill/decode/capture benchmark (peer of `stitch bench`)")
    ap.add_argument("model_dir")
    ap.add_argument("--prompt-lens", type=parse_lens, help="comma-separated prefill lengths (default 512)")
    ap.add_argument("--prompt-len", type=int, help="one prefill length (older spelling of --prompt-lens N)")
    ap.add_argument("--decode", type=int, default=64)
    ap.add_argument("--batch", type=int, default=1, help="sequences of the batched decode (default 1: skip it)")
    ap.add_argument("--capture", action="store_true", help="also measure output_hidden_states capture")
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    ap.add_argument("--dtype", choices=["float32", "bfloat16", "float16"])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--attn", choices=["auto", "sdpa", "eager"], default="auto")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", dest="json_out")
    args = ap.parse_args()
    lens = args.prompt_lens or [args.prompt_len or 512]
    if args.prompt_lens and args.prompt_len:
        ap.error("give --prompt-lens or --prompt-len, not both")
    if min(lens) < 1 or args.decode < 1 or args.repeats < 1 or args.threads < 1 or args.batch < 1:
        ap.error("--prompt-len(s), --decode, --batch, --repeats and --threads must be >= 1")
    if args.device == "cuda" and not torch.cuda.is_available():
        print("bench_hf: error: --device cuda but torch sees no CUDA device", file=sys.stderr)
        return 2

    torch.set_num_threads(args.threads)
    dtype = getattr(torch, args.dtype) if args.dtype else (torch.float32 if args.device == "cpu" else torch.bfloat16)
    attn = args.attn
    if attn == "auto":
        cfg = AutoConfig.from_pretrained(args.model_dir)
        attn = "eager" if getattr(cfg, "attn_logit_softcapping", None) else "sdpa"
    t0 = time.perf_counter()
    model = AutoModelForCausalLM.from_pretrained(args.model_dir, dtype=dtype, attn_implementation=attn)
    model.to(args.device).eval()
    load_s = time.perf_counter() - t0
    n_layers = model.config.num_hidden_layers
    id_limit = min(MAX_RANDOM_ID, model.config.vocab_size)

    gen = torch.Generator().manual_seed(args.seed)
    prompts = {n: torch.randint(0, id_limit, (1, n), generator=gen).to(args.device) for n in sorted(set(lens))}
    short = torch.randint(0, id_limit, (args.batch, DECODE_PROMPT), generator=gen).to(args.device)

    result: dict = {"prefill": {}}
    timings: dict = {}
    for n in lens:
        log(f"prefill {n} tokens: warm-up + best of {args.repeats}")
        prefill(model, prompts[n])
        best, times = best_of(args.repeats, args.device, lambda: prefill(model, prompts[n]))
        result["prefill"][str(n)] = round(n / best, 2)
        timings[f"prefill_{n}_s"] = [round(s, 5) for s in times]

    def decode_rate(batch: int) -> tuple[float, list[int]]:
        ids = short[:batch]
        logits, cache = prefill(model, ids)
        decode(model, logits, cache, min(args.decode, 4))  # warm-up
        best, first = 1e30, []
        for _ in range(args.repeats):
            logits, cache = prefill(model, ids)
            sync(args.device)
            t = time.perf_counter()
            toks = decode(model, logits, cache, args.decode)
            sync(args.device)
            best = min(best, time.perf_counter() - t)
            first = toks[0, :8].tolist()
        return batch * args.decode / best, first

    log(f"decode batch 1: {args.decode} steps after a {DECODE_PROMPT}-token prompt")
    b1, first_tokens = decode_rate(1)
    result["decode_b1_tok_s"] = round(b1, 2)
    if args.batch > 1:
        log(f"decode batch {args.batch}: {args.decode} steps")
        bb, _ = decode_rate(args.batch)
        result[f"decode_b{args.batch}_tok_s"] = round(bb, 2)
    if args.capture:
        n = lens[0]
        log(f"capture: {n} tokens, hidden_states of {n_layers} blocks to host")
        capture(model, prompts[n], n_layers)
        best, times = best_of(args.repeats, args.device, lambda: capture(model, prompts[n], n_layers))
        result["capture_tok_s"] = round(n / best, 2)
        result["capture_len"] = n
        timings["capture_s"] = [round(s, 5) for s in times]

    result.update({
        "prompt_len": lens[0],
        "prefill_tok_s": result["prefill"][str(lens[0])],
        "decode_tok_s": result["decode_b1_tok_s"],
        "decode_tokens": args.decode,
        "decode_batch": args.batch,
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "threads": args.threads,
        "torch_version": torch.__version__,
        "transformers_version": transformers.__version__,
        "device": args.device,
        "device_name": torch.cuda.get_device_name() if args.device == "cuda" else "cpu",
        "dtype": str(dtype).replace("torch.", ""),
        "attn_implementation": attn,
        "parameters": sum(p.numel() for p in model.parameters()),
        "repeats": args.repeats,
        "timings": timings,
        "load_s": round(load_s, 2),
        "first_tokens": first_tokens,
        "model_dir": os.path.abspath(args.model_dir),
    })
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
