#!/usr/bin/env python3
"""Capture throughput: `stitch capture` of every block's resid_post at every position, against
stitch's plain forward pass (last-token logits only) and against HF transformers doing the same
capture (output_hidden_states, rows copied out and written to safetensors), same prompts, same
machine, same run. Prints a Markdown table.

Usage: tools/.venv/bin/python tools/bench_capture.py MODEL [MODEL ...] [--prompts 32] [--words 96] [--threads N]
MODEL: an HF folder or a .gguf file (HF loads GGUFs dequantized to float32 through gguf_file=).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

ROOT = Path(__file__).resolve().parent.parent
STITCH = ROOT / "build" / "stitch"
WORDS = ("the quick brown fox jumps over a lazy dog while people in the small village tell stories about "
         "rivers forests winters farmers fields evenings and the old days when everything was different").split()


def prompts(n: int, words: int) -> list[str]:
    rng = random.Random(0)
    return [" ".join(rng.choice(WORDS) for _ in range(words)) for _ in range(n)]


def stitch_run(model: Path, pj: Path, out: Path, sites: str, positions: str, threads: int) -> tuple[float, int]:
    t0 = time.time()
    subprocess.run([str(STITCH), "capture", str(model), "--prompts", str(pj), "--sites", sites, "--positions", positions,
                    "--batch", "8", "--threads", str(threads), "-o", str(out)], check=True, capture_output=True)
    wall = time.time() - t0
    from safetensors import safe_open
    with safe_open(str(out), "np") as f:
        n_rows = f.get_slice("position").get_shape()[0]
    return wall, n_rows


def hf_run(model: Path, texts: list[str], out: Path, threads: int) -> tuple[float, int, int]:
    import numpy as np
    import torch
    from safetensors.numpy import save_file
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.set_num_threads(threads)
    kw = {"gguf_file": model.name} if model.suffix == ".gguf" else {}
    folder = str(model.parent if model.suffix == ".gguf" else model)
    tok = AutoTokenizer.from_pretrained(folder, **kw)
    m = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32, **kw).eval()
    n_layers = m.config.num_hidden_layers
    t0 = time.time()
    rows = [[] for _ in range(n_layers)]
    tokens = 0
    with torch.inference_mode():
        for i in range(0, len(texts), 8):
            for t in texts[i:i + 8]:  # one prompt at a time: no padding rows to filter out
                ids = tok(t, return_tensors="pt")
                hs = m(**ids, output_hidden_states=True).hidden_states
                tokens += ids["input_ids"].shape[1]
                # resid_post of block L is hidden_states[L+1] (the last one is after the final norm,
                # so the last block's output comes from a hook in a faithful capture; the timing is
                # the same either way)
                for L in range(n_layers):
                    rows[L].append(hs[L + 1][0].numpy())
    save_file({f"blocks.{L}.resid_post": np.concatenate(rows[L]) for L in range(n_layers)}, str(out))
    return time.time() - t0, tokens, n_layers


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("models", nargs="+", type=Path)
    ap.add_argument("--prompts", type=int, default=32)
    ap.add_argument("--words", type=int, default=96)
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    args = ap.parse_args()
    texts = prompts(args.prompts, args.words)
    lines = ["| model | stitch capture tok/s (all resid_post, all positions) | stitch forward tok/s (last logits) | "
             "capture / forward | HF capture tok/s | stitch / HF |", "|---|---|---|---|---|---|"]
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        pj = work / "p.jsonl"
        pj.write_text("".join(json.dumps({"prompt": t}) + "\n" for t in texts))
        for model in args.models:
            print(f"bench_capture: {model}", file=sys.stderr)
            stitch_run(model, pj, work / "warm.safetensors", "logits", "last", args.threads)  # warm-up (page cache)
            fw_s, n_prompts = stitch_run(model, pj, work / "fw.safetensors", "logits", "last", args.threads)
            cap_s, tokens = stitch_run(model, pj, work / "cap.safetensors", "blocks.*.resid_post", "all", args.threads)
            hf_s, hf_tokens, _ = hf_run(model, texts, work / "hf.safetensors", args.threads)
            cap, fw, hf = tokens / cap_s, tokens / fw_s, hf_tokens / hf_s
            lines.append(f"| {model.name} | {cap:.0f} | {fw:.0f} | {cap / fw:.2f} | {hf:.0f} | {cap / hf:.2f} |")
            for f in work.glob("*.safetensors"):
                f.unlink()
    print(f"\n{args.prompts} prompts of ~{args.words} words, {args.threads} threads, float32 on CPU; "
          "wall time of each whole command (model load included for stitch; HF timed after load)")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
