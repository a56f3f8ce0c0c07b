#!/usr/bin/env python3
"""PEFT LoRA adapter fixtures for `--lora` (DESIGN.md §6).

For two tiny fixture models, builds a LoRA adapter with peft (random, non-zero A and B so the
adapter really changes the model), saves it with save_pretrained (adapter_config.json +
adapter_model.safetensors) under tests/fixtures/lora/<name>/, and records the adapted model's
logits and 16-token greedy continuations (HF + peft, float32, unmerged) in reference.safetensors
in the same layout as tests/fixtures/models/*/reference.safetensors.

Usage: tools/.venv/bin/python tools/make_lora_fixtures.py   (needs peft, see tools/requirements.txt)
"""

from __future__ import annotations

import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"

import json
import shutil
import sys
from pathlib import Path

import peft
import torch
import transformers
from peft import LoraConfig, get_peft_model
from safetensors import safe_open
from transformers import AutoModelForCausalLM

sys.path.insert(0, str(Path(__file__).resolve().parent))
import make_fixtures as mf  # noqa: E402  (shared writer and greedy loop)

transformers.utils.logging.disable_progress_bar()
ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "tests" / "fixtures" / "lora"

ADAPTERS = {
    # every projection a LoRA can target, plain scaling alpha / r
    "qwen2_all": dict(base="qwen2", seed=11, config=dict(
        r=4, lora_alpha=8,
        target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"])),
    # rsLoRA scaling alpha / sqrt(r), per-module rank and alpha overrides
    "llama_rslora": dict(base="llama_untied", seed=12, config=dict(
        r=8, lora_alpha=4, use_rslora=True, target_modules=["q_proj", "v_proj", "down_proj"],
        rank_pattern={"down_proj": 2}, alpha_pattern={"v_proj": 16})),
}


def build(name: str, spec: dict) -> None:
    base_dir = ROOT / "tests" / "fixtures" / "models" / spec["base"]
    torch.manual_seed(spec["seed"])
    model = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32, attn_implementation="eager")
    model.eval()
    cfg = LoraConfig(lora_dropout=0.0, bias="none", task_type="CAUSAL_LM", init_lora_weights=False, **spec["config"])
    pm = get_peft_model(model, cfg)
    with torch.no_grad():  # random A and B, large enough to move the logits visibly
        for n, p in pm.named_parameters():
            if "lora_A" in n or "lora_B" in n:
                p.copy_(torch.randn_like(p) * (0.3 / p.shape[1] ** 0.5))
    pm.eval()
    out = OUT / name
    if out.exists():
        shutil.rmtree(out)
    pm.save_pretrained(out)
    (out / "README.md").unlink(missing_ok=True)
    cfg_path = out / "adapter_config.json"  # machine-independent base path
    cfg_json = json.loads(cfg_path.read_text())
    cfg_json["base_model_name_or_path"] = f"tests/fixtures/models/{spec['base']}"
    cfg_path.write_text(json.dumps(cfg_json, indent=2, sort_keys=True) + "\n")
    (out / "adapter_model.safetensors").chmod(0o644)

    ref = safe_open(str(base_dir / "reference.safetensors"), "pt")
    meta = ref.metadata()
    n_prompts = int(meta["n_prompts"])
    tensors, metadata = {}, {"n_prompts": str(n_prompts), "base": spec["base"],
                             "transformers_version": transformers.__version__, "peft_version": peft.__version__,
                             "torch_version": torch.__version__,
                             "notes": "logits/greedy of the base fixture model with this adapter applied (peft, unmerged, float32)"}
    base_logits_diff = 0.0
    with torch.no_grad():
        for i in range(n_prompts):
            ids = ref.get_tensor(f"prompt.{i}.ids").tolist()
            logits = pm(input_ids=torch.tensor([ids])).logits[0].float()
            base_logits_diff = max(base_logits_diff, float((logits - ref.get_tensor(f"prompt.{i}.logits")).abs().max()))
            toks, _, _ = mf.greedy(pm, ids, 16)
            tensors[f"prompt.{i}.ids"] = torch.tensor(ids, dtype=torch.int32)
            tensors[f"prompt.{i}.logits"] = logits
            tensors[f"prompt.{i}.greedy"] = torch.tensor(toks, dtype=torch.int32)
            metadata[f"prompt.{i}.text"] = meta[f"prompt.{i}.text"]
        merged = pm.merge_and_unload()
        for i in range(n_prompts):
            m = merged(input_ids=tensors[f"prompt.{i}.ids"].long()[None]).logits[0]
            assert (m - tensors[f"prompt.{i}.logits"]).abs().max() < 1e-4, "merged != unmerged"
    assert base_logits_diff > 0.1, f"adapter barely changes the model ({base_logits_diff})"
    mf.write_safetensors(out / "reference.safetensors", tensors, metadata)
    print(f"{name}: base {spec['base']}, max |logit change| vs base {base_logits_diff:.3f}, "
          f"{sum(f.stat().st_size for f in out.iterdir())} bytes")


def main() -> int:
    for name, spec in ADAPTERS.items():
        build(name, spec)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
