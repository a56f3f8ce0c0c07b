#!/usr/bin/env python3
"""Real models in weights/ (make weights): stitch against HF transformers and llama.cpp.

For every GGUF given (default: all in weights/), on the prompts below (>= 20):
  - stitch's next-token logits (`stitch capture --sites logits --positions last`) against HF
    transformers loading the same GGUF (transformers dequantizes it to float32), fed stitch's
    own token ids: top-1 agreement and mean KL(HF || stitch);
  - the same against llama.cpp (llama-cpp-python) on the same file: top-1 agreement;
  - HF's tokenizer (rebuilt from the GGUF) against stitch's ids;
  - `stitch generate MODEL --prompt "The capital of France is" -n 6 --temp 0`;
  - load time, peak RSS, and `stitch bench` beside llama.cpp's prefill/decode tok/s.
Prints a Markdown table and writes build/compare_real.json.

Usage: tools/.venv/bin/python tools/compare_real.py [weights/X.gguf ...] [--threads N] [--no-bench]
"""

from __future__ import annotations

import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
STITCH = ROOT / "build" / "stitch"

PROMPTS = [
    "The capital of France is",
    "The largest planet in the solar system is",
    "Water boils at a temperature of",
    "def fibonacci(n):\n    ",
    "Once upon a time, there was a",
    "The chemical symbol for gold is",
    "In 1969, the first person to walk on the moon was",
    "import numpy as np\nx = np.",
    "The three primary colors are red, blue and",
    "Translate to French: Good morning ->",
    "2 + 2 =",
    "The opposite of hot is",
    "Shakespeare wrote the play",
    "A healthy breakfast usually includes",
    "The speed of light is approximately",
    "for (int i = 0; i <",
    "My favourite season is autumn because",
    "The Great Wall of China was built to",
    "Photosynthesis converts sunlight into",
    "The first three prime numbers are 2, 3 and",
    "Ein Hund ist ein",
    "東京は日本の",
    "SELECT name FROM users WHERE",
    "The mitochondria is the powerhouse of the",
    "Question: What is the capital of France?\nAnswer:",
    "The quick brown fox jumps over the",
    "To make a cup of tea, first",
    "The Pacific Ocean is the",
    "class Stack:\n    def __init__(self):\n        self.",
    "The author of 'Pride and Prejudice' is",
    "Monday, Tuesday, Wednesday,",
    "The square root of 81 is",
    "Paris is to France as Rome is to",
    "She opened the door and saw",
    "HTTP status code 404 means",
    "The boiling point of water in Fahrenheit is",
    "La capitale de l'Italie est",
    "Dear Sir or Madam,\nI am writing to",
    "The tallest mountain on Earth is",
    "git commit -m",
]


def run(cmd: list[str], **kw) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, check=True, capture_output=True, text=True, **kw)


def stitch_logits(model: Path, workdir: Path, threads: int):
    from safetensors.numpy import load_file

    pj = workdir / "prompts.jsonl"
    pj.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in PROMPTS))
    out = workdir / "logits.safetensors"
    t0 = time.time()
    proc = subprocess.run(["/usr/bin/time", "-f", "%M", str(STITCH), "capture", str(model), "--prompts", str(pj),
                           "--sites", "logits", "--positions", "last", "--batch", "4", "--threads", str(threads),
                           "-o", str(out)], check=True, capture_output=True, text=True)
    wall = time.time() - t0
    peak_kb = int(proc.stderr.strip().splitlines()[-1])
    t = load_file(str(out))
    ids_flat, prompt_index = t["token_ids"], t["prompt_index"]
    # capture with --positions last gives one row per prompt; full ids come from `tokenize`
    ids = []
    for p in PROMPTS:
        r = run([str(STITCH), "tokenize", str(model), p])
        ids.append([int(x) for x in r.stdout.split()])
    assert len(prompt_index) == len(PROMPTS) and all(int(ids_flat[i]) == ids[i][-1] for i in range(len(PROMPTS)))
    return t["logits"].astype(np.float64), ids, wall, peak_kb / 1024.0


def log_softmax(x):
    x = x - x.max(-1, keepdims=True)
    return x - np.log(np.exp(x).sum(-1, keepdims=True))


def kl(p_logits, q_logits):
    lp, lq = log_softmax(p_logits), log_softmax(q_logits)
    return (np.exp(lp) * (lp - lq)).sum(-1)


def hf_logits(model: Path, ids: list[list[int]]):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    t0 = time.time()
    m = AutoModelForCausalLM.from_pretrained(str(model.parent), gguf_file=model.name, dtype=torch.float32)
    m.eval()
    load = time.time() - t0
    tok = AutoTokenizer.from_pretrained(str(model.parent), gguf_file=model.name)
    out = []
    with torch.no_grad():
        for x in ids:
            out.append(m(input_ids=torch.tensor([x])).logits[0, -1].double().numpy())
    hf_ids = [tok(p)["input_ids"] for p in PROMPTS]
    return np.stack(out), hf_ids, load


def llamacpp(model: Path, ids: list[list[int]], threads: int, bench: bool):
    import llama_cpp
    from llama_cpp import Llama

    llm = Llama(model_path=str(model), n_ctx=1024, n_threads=threads, n_batch=512, logits_all=False, verbose=False)

    def last_logits():  # llama-cpp-python 0.3.36 leaves Llama.scores empty without logits_all
        p = llama_cpp.llama_get_logits_ith(llm._ctx.ctx, -1)
        return np.ctypeslib.as_array(p, shape=(llm.n_vocab(),)).astype(np.float64)

    out = []
    for x in ids:
        llm.reset()
        llm.eval(x)
        out.append(last_logits())
    perf = {}
    if bench:
        rng = np.random.default_rng(0)
        prompt = [int(t) for t in rng.integers(0, min(llm.n_vocab(), 30000), 512)]
        best = 1e9
        for _ in range(3):
            llm.reset()
            t0 = time.time()
            llm.eval(prompt)
            best = min(best, time.time() - t0)
        perf["prefill_tok_s"] = 512 / best
        llm.reset()
        llm.eval(prompt[:16])
        t0 = time.time()
        n = 64
        for _ in range(n):
            nxt = int(np.argmax(last_logits()))
            llm.eval([nxt])
        perf["decode_tok_s"] = n / (time.time() - t0)
    return np.stack(out), perf


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("models", nargs="*")
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--no-bench", action="store_true")
    a = ap.parse_args()
    models = [Path(m) for m in a.models] or sorted((ROOT / "weights").glob("*.gguf"))
    torch.set_num_threads(a.threads)
    results = []
    for model in models:
        print(f"== {model.name}", file=sys.stderr)
        with tempfile.TemporaryDirectory() as td:
            s_logits, ids, cap_wall, cap_rss = stitch_logits(model, Path(td), a.threads)
        insp = json.loads(run([str(STITCH), "inspect", "--json", str(model)]).stdout)
        h_logits, hf_ids, hf_load = hf_logits(model, ids)
        l_logits, perf = llamacpp(model, ids, a.threads, not a.no_bench)
        paris = run([str(STITCH), "generate", str(model), "--prompt", "The capital of France is", "-n", "6",
                     "--temp", "0"]).stdout.strip()
        r = {
            "model": model.name,
            "prompts": len(PROMPTS),
            "hf_top1": float((s_logits.argmax(-1) == h_logits.argmax(-1)).mean()),
            "hf_mean_kl": float(kl(h_logits, s_logits).mean()),
            "hf_max_kl": float(kl(h_logits, s_logits).max()),
            "llamacpp_top1": float((s_logits.argmax(-1) == l_logits.argmax(-1)).mean()),
            "llamacpp_mean_kl": float(kl(l_logits, s_logits).mean()),
            # where llama.cpp's top-1 differs: prompt index and stitch's top-1 minus top-2 logit margin
            "llamacpp_disagreements": [
                (i, float(np.sort(s_logits[i])[-1] - np.sort(s_logits[i])[-2]))
                for i in range(len(PROMPTS)) if s_logits[i].argmax() != l_logits[i].argmax()],
            "tokenizer_ids_equal_hf": sum(a_ == b_ for a_, b_ in zip(ids, hf_ids)),
            "paris": paris,
            "stitch_load_s": insp.get("load_seconds"),
            "stitch_capture_peak_rss_mb": cap_rss,
            "hf_load_s": hf_load,
        }
        if not a.no_bench:
            with tempfile.TemporaryDirectory() as td:
                run([str(STITCH), "bench", str(model), "--prompt-len", "512", "--decode", "64", "--threads",
                     str(a.threads), "--json", f"{td}/b.json"])
                b = json.loads(Path(f"{td}/b.json").read_text())
            r.update(stitch_prefill_tok_s=b["prefill_tok_s"], stitch_decode_tok_s=b["decode_tok_s"],
                     stitch_bench_peak_rss_mb=b["peak_rss_mb"], llamacpp_prefill_tok_s=perf["prefill_tok_s"],
                     llamacpp_decode_tok_s=perf["decode_tok_s"])
        results.append(r)
        print(json.dumps(r), file=sys.stderr)
    (ROOT / "build").mkdir(exist_ok=True)
    (ROOT / "build" / "compare_real.json").write_text(json.dumps(results, indent=2) + "\n")
    print("| model | top-1 vs HF | mean KL vs HF | top-1 vs llama.cpp | tokenizer = HF | 'The capital of France is' → | load s | peak RSS MB |")
    print("|---|---|---|---|---|---|---|---|")
    for r in results:
        n = r["prompts"]
        print(f"| {r['model']} | {round(r['hf_top1']*n)}/{n} | {r['hf_mean_kl']:.2e} | {round(r['llamacpp_top1']*n)}/{n} "
              f"({r['llamacpp_top1']*100:.1f}%) | "
              f"{r['tokenizer_ids_equal_hf']}/{r['prompts']} | {r['paris']!r} | {r['stitch_load_s']:.2f} | "
              f"{r['stitch_capture_peak_rss_mb']:.0f} |")
    if not a.no_bench:
        print("\n| model | stitch prefill tok/s | llama.cpp prefill | stitch decode tok/s | llama.cpp decode |")
        print("|---|---|---|---|---|")
        for r in results:
            print(f"| {r['model']} | {r['stitch_prefill_tok_s']:.1f} | {r['llamacpp_prefill_tok_s']:.1f} | "
                  f"{r['stitch_decode_tok_s']:.1f} | {r['llamacpp_decode_tok_s']:.1f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
