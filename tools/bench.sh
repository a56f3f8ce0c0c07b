#!/usr/bin/env bash
# `make bench`: stitch bench beside HF transformers on the same random-weight model with
# SmolLM2-135M's shapes, on this machine, in the same run. Prints a table with ratios.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=tools/.venv/bin/python
SHAPE=${SHAPE:-smollm2-135m}
PROMPT_LEN=${PROMPT_LEN:-512}
DECODE=${DECODE:-64}
THREADS=${THREADS:-$(nproc)}
MODEL=build/bench-models/$SHAPE
OUT=build/bench
mkdir -p "$OUT"
[ -f "$MODEL/config.json" ] || HF_HUB_OFFLINE=1 $PY tools/make_bench_model.py "$MODEL" --shape "$SHAPE"
build/stitch bench "$MODEL" --prompt-len "$PROMPT_LEN" --decode "$DECODE" --threads "$THREADS" --json "$OUT/stitch.json"
HF_HUB_OFFLINE=1 $PY tools/bench_hf.py "$MODEL" --prompt-len "$PROMPT_LEN" --decode "$DECODE" --threads "$THREADS" --json "$OUT/hf.json"
$PY - "$OUT/stitch.json" "$OUT/hf.json" "$SHAPE" <<'PYEOF'
import json, sys
s = json.load(open(sys.argv[1])); h = json.load(open(sys.argv[2]))
print(f"\n{sys.argv[3]} shapes, random weights, {s['threads']} threads, prompt {s['prompt_len']} tokens, float32 on CPU")
print(f"| metric | stitch | HF transformers {h.get('transformers_version','')} | stitch / HF |")
print("|---|---|---|---|")
for key, name, better in [("prefill_tok_s", "prefill tok/s", "higher"), ("decode_tok_s", "decode tok/s (batch 1)", "higher"),
                          ("peak_rss_mb", "peak RSS MB", "lower")]:
    print(f"| {name} | {s[key]:.1f} | {h[key]:.1f} | {s[key]/h[key]:.2f} |")
PYEOF
