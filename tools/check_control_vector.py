#!/usr/bin/env python3
"""llama.cpp control-vector interop: stitch's GGUF control vectors steer llama.cpp the way they steer stitch.

1. `stitch vector --sweep ... -o cv.gguf` on a real GGUF model (default: SmolLM2-135M-Instruct).
2. llama.cpp (llama-cpp-python) loads the same model and applies cv.gguf the way
   common_control_vector_load + llama_apply_adapter_cvec do (direction.N -> slot N, data offset
   (N-1)*n_embd, layers 1..n-1), then gives next-token logits for a few prompts.
3. `stitch capture --sites logits --steer blocks.*.resid_post:add:cv.gguf:ALPHA` gives stitch's.
It prints, per prompt, the KL between the two and whether the top-1 tokens agree, for the clean
model and the steered one, plus how far steering moved each (so agreement is not vacuous).

Usage: tools/.venv/bin/python tools/check_control_vector.py [--model weights/X.gguf] [--alpha 4]
Needs build/stitch, tools/.venv (llama-cpp-python, gguf, safetensors), and `make weights`.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
STITCH = ROOT / "build" / "stitch"

POSITIVE = [
    "I love this. It is wonderful and makes me so happy",
    "What a beautiful day, everything is great",
    "The party was fantastic and everyone was joyful",
    "I am thrilled with the results, they are excellent",
]
NEGATIVE = [
    "I hate this. It is awful and makes me so sad",
    "What a miserable day, everything is terrible",
    "The party was dreadful and everyone was gloomy",
    "I am upset with the results, they are horrible",
]
PROMPTS = ["Today I feel", "The weather this morning is", "My opinion of the movie:", "Honestly, the food was"]


def log_softmax(x):
    x = x - x.max(-1, keepdims=True)
    return x - np.log(np.exp(x).sum(-1, keepdims=True))


def kl(p, q):
    lp, lq = log_softmax(p), log_softmax(q)
    return (np.exp(lp) * (lp - lq)).sum(-1)


def stitch_logits(model: Path, work: Path, steer: list[str]) -> np.ndarray:
    from safetensors.numpy import load_file

    pj = work / "prompts.jsonl"
    pj.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in PROMPTS))
    out = work / "logits.safetensors"
    cmd = [str(STITCH), "capture", str(model), "--prompts", str(pj), "--sites", "logits", "--positions", "last", "-o", str(out)]
    for s in steer:
        cmd += ["--steer", s]
    subprocess.run(cmd, check=True, capture_output=True)
    return load_file(str(out))["logits"].astype(np.float64)


def llamacpp_logits(model: Path, cv: Path | None, alpha: float) -> np.ndarray:
    import gguf
    import llama_cpp
    from llama_cpp import Llama

    llm = Llama(model_path=str(model), n_ctx=256, n_batch=256, logits_all=False, verbose=False)
    n_embd, n_layer = llm.n_embd(), llama_cpp.llama_model_n_layer(llm.model)
    if cv is not None:
        # common_control_vector_load: direction.N (N >= 1) scaled by the strength into slot N,
        # buffer offset (N-1)*n_embd; applied to layers [1, n_layer].
        buf = np.zeros((n_layer - 1) * n_embd, dtype=np.float32)
        reader = gguf.GGUFReader(str(cv))
        for t in reader.tensors:
            n = int(t.name.split(".")[1])
            assert n >= 1, "direction.0 is invalid for llama.cpp"
            buf[(n - 1) * n_embd:n * n_embd] += alpha * np.asarray(t.data, dtype=np.float32)
        ptr = buf.ctypes.data_as(ctypes.POINTER(ctypes.c_float))
        rc = llama_cpp.llama_apply_adapter_cvec(  # the deprecated name is the one 0.3.36 documents
            llm._ctx.ctx, ptr, buf.size, n_embd, 1, n_layer)
        assert rc == 0, "llama_apply_adapter_cvec failed"
    out = []
    for p in PROMPTS:
        ids = llm.tokenize(p.encode(), add_bos=True, special=True)
        llm.reset()
        llm.eval(ids)
        lp = llama_cpp.llama_get_logits_ith(llm._ctx.ctx, -1)
        out.append(np.ctypeslib.as_array(lp, shape=(llm.n_vocab(),)).astype(np.float64))
    return np.stack(out)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=Path, default=ROOT / "weights" / "SmolLM2-135M-Instruct.Q4_1.gguf")
    ap.add_argument("--alpha", type=float, default=4.0)
    args = ap.parse_args()
    if not args.model.exists():
        sys.exit(f"{args.model}: missing (make weights)")
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        (work / "P.jsonl").write_text("".join(json.dumps({"prompt": p}) + "\n" for p in POSITIVE))
        (work / "N.jsonl").write_text("".join(json.dumps({"prompt": p}) + "\n" for p in NEGATIVE))
        cv = work / "cv.gguf"
        subprocess.run([str(STITCH), "vector", str(args.model), "--method", "mean", "--positive", str(work / "P.jsonl"),
                        "--negative", str(work / "N.jsonl"), "--site", "blocks.0.resid_post", "--sweep", "-o", str(cv)],
                       check=True, capture_output=True)
        rows = []
        for name, steer, path in [("clean", [], None),
                                  (f"steered (alpha {args.alpha})", [f"blocks.*.resid_post:add:{cv}:{args.alpha}"], cv)]:
            s = stitch_logits(args.model, work, steer)
            l = llamacpp_logits(args.model, path, args.alpha)
            rows.append((name, s, l))
        clean_s = rows[0][1]
        print(f"model {args.model.name}; control vector from `stitch vector --method mean --sweep` ({cv.name})")
        print("| run | prompt | KL(stitch || llama.cpp) | top-1 agree | KL(steered || clean) stitch |")
        print("|---|---|---|---|---|")
        for name, s, l in rows:
            k = kl(s, l)
            moved = kl(s, clean_s)
            for i, p in enumerate(PROMPTS):
                agree = int(np.argmax(s[i])) == int(np.argmax(l[i]))
                print(f"| {name} | {p!r} | {k[i]:.2e} | {'yes' if agree else 'no'} | {moved[i]:.3f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
