#!/usr/bin/env bash
# tools/gpu_check.sh (`make bench-gpu`): everything GPU-related in ONE call on a fresh CUDA machine
# with no network, in under 10 minutes (docs/gpu.md):
#   1. checks the build's Debian -dev packages and says exactly what is missing (no apt: no network)
#   2. checks that a GPU is there (stops here, exit 3, on a machine without one)
#   3. builds build/stitch and build/stitch_gpu_tests (make -j16) while the machine's python3
#      (torch + transformers) writes random-weight bf16 models with the shapes of Llama-3.2-1B,
#      Qwen2.5-0.5B, Qwen2.5-1.5B and Gemma-2-2B (tools/make_bench_model.py)
#   4. make test-gpu (its output in OUT/test-gpu.log)
#   5. per shape: stitch bench --device cuda and tools/bench_hf.py --device cuda --dtype bfloat16
#   6. one Markdown table: stitch vs HF prefill 512/2048, decode batch 1/16, capture, ratios, decode
#      GB/s and % of the measured copy bandwidth, prefill GEMM % of the measured bf16 GEMM peak, and
#      the test-gpu line
# Every step has a time box, and a step that fails or times out is reported while the rest go on.
# Output (table.md, the JSONs, every step's log) goes to $OUT when set, else build/gpu-check/.
# Knobs (environment): SHAPES, TOTAL_S (default 540: the whole run's budget), PYTHON (python3),
# MODELS_DIR (build/bench-models: ~12 GB, never under OUT), JOBS (make -j, default min(nproc, 16)),
# BUILD_DIR (build), BENCH_ARGS / HF_ARGS (extra arguments for each side), MODEL_DEVICE (cuda: where
# the random init runs), PROMPT_LENS (512,2048), DECODE (64), BATCH (16). Testing this script on a
# machine without a GPU: GPU_CHECK_FAKE_GPU=1 goes on past the GPU check, and BENCH_DEVICE=cpu (with
# MODEL_DEVICE=cpu and small PROMPT_LENS) runs both benchmarks on the CPU (float32) instead.
set -uo pipefail
cd "$(dirname "$0")/.." || exit 2
ROOT=$PWD
T0=$(date +%s)
TOTAL_S=${TOTAL_S:-540}
OUTDIR=${OUT:-build/gpu-check}
mkdir -p "$OUTDIR/logs"
OUTDIR=$(cd "$OUTDIR" && pwd)
PY=${PYTHON:-python3}
MODELS_DIR=${MODELS_DIR:-build/bench-models}
BUILD_DIR=${BUILD_DIR:-build}
SHAPES=${SHAPES:-llama-3.2-1b qwen2.5-0.5b qwen2.5-1.5b gemma-2-2b}
JOBS=${JOBS:-$(n=$(nproc); echo $((n < 16 ? n : 16)))}
STITCH=$BUILD_DIR/stitch
PROMPT_LENS=${PROMPT_LENS:-512,2048}
DECODE=${DECODE:-64}
BATCH=${BATCH:-16}
BENCH_DEVICE=${BENCH_DEVICE:-cuda}
HF_DTYPE=$([ "$BENCH_DEVICE" = cuda ] && echo bfloat16 || echo float32)
export PROMPT_LENS BATCH
SUMMARY=$OUTDIR/steps.tsv
: >"$SUMMARY"
FAILED=0

say() { echo "gpu_check: $*" | tee -a "$OUTDIR/gpu_check.log" >&2; }
elapsed() { echo $(($(date +%s) - T0)); }
left() { echo $((TOTAL_S - $(elapsed))); }

# run NAME MAX_SECONDS CMD...: runs CMD with its output in logs/NAME.log, time-boxed to
# min(MAX_SECONDS, what the budget has left minus a reserve for the table); records the outcome.
run() {
  local name=$1 max=$2
  shift 2
  local budget=$(($(left) - 20))
  local limit=$((max < budget ? max : budget))
  if [ "$limit" -lt 5 ]; then
    say "SKIP $name: the ${TOTAL_S}s budget is spent"
    printf '%s\tskipped (no time left)\t0\n' "$name" >>"$SUMMARY"
    FAILED=1
    return 124
  fi
  say "step $name (time box ${limit}s): $*"
  local t rc=0
  t=$(date +%s)
  timeout -k 5 "$limit" "$@" >"$OUTDIR/logs/$name.log" 2>&1 || rc=$?
  local dt=$(($(date +%s) - t)) status=ok
  if [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ]; then
    status="TIMED OUT after ${limit}s"
  elif [ "$rc" -ne 0 ]; then
    status="FAILED (exit $rc)"
  fi
  [ "$status" = ok ] || { FAILED=1; say "$name: $status; last lines of logs/$name.log:"; tail -n 5 "$OUTDIR/logs/$name.log" | sed 's/^/    /' >&2; }
  printf '%s\t%s\t%s\n' "$name" "$status" "$dt" >>"$SUMMARY"
  say "$name: $status in ${dt}s"
  return "$rc"
}

say "started $(date -u +%FT%TZ) in $ROOT, output in $OUTDIR, budget ${TOTAL_S}s"

# ---- 0. what this machine is ------------------------------------------------------------------
{
  echo "## machine"
  uname -a
  echo "cpus: $(nproc)"
  free -g 2>/dev/null | head -2
  df -h . 2>/dev/null | tail -1
  command -v nvidia-smi >/dev/null && timeout 20 nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.memory --format=csv 2>&1
  NVCC=$(command -v nvcc || ls /usr/local/cuda/bin/nvcc 2>/dev/null)
  [ -n "$NVCC" ] && "$NVCC" --version | tail -2
  command -v g++ >/dev/null && g++ --version | head -1
  timeout 60 "$PY" -c 'import sys, torch, transformers; print("python", sys.version.split()[0], "torch", torch.__version__, "transformers", transformers.__version__, "cuda", torch.cuda.is_available())' 2>&1 | tail -1
} >"$OUTDIR/machine.txt" 2>&1
cat "$OUTDIR/machine.txt" >&2

# ---- 1. build dependencies (no apt here: the machine has no network) -------------------------------
# The list is tools/install_deps.sh's; without dpkg, the headers and libraries themselves are looked for.
mapfile -t PKGS < <(sed -n '/^pkgs=(/,/)/p' tools/install_deps.sh | tr -d '()' | sed 's/pkgs=//' | tr -s ' \t' '\n' | grep -v '^$')
declare -A PROBE=(
  [libfmt-dev]=/usr/include/fmt/format.h [doctest-dev]=/usr/include/doctest/doctest.h
  [nlohmann-json3-dev]=/usr/include/nlohmann/json.hpp [libpcre2-dev]=/usr/include/pcre2.h
  [libutf8proc-dev]=/usr/include/utf8proc.h [libsentencepiece-dev]=/usr/include/sentencepiece_processor.h
  [libopenblas-openmp-dev]=/usr/lib/x86_64-linux-gnu/openblas-openmp/libopenblas.so.0
)
MISSING=()
DPKG_ALL=1  # every package known to dpkg: then `make test-gpu`'s deps step is a no-op, not apt
for p in "${PKGS[@]}"; do
  if command -v dpkg >/dev/null && dpkg -s "$p" >/dev/null 2>&1; then continue; fi
  DPKG_ALL=0
  probe=${PROBE[$p]:-}
  if [ -n "$probe" ] && [ -e "$probe" ]; then continue; fi
  case $p in g++ | make | pkg-config | python3) command -v "$p" >/dev/null && continue ;; esac
  case $p in xz-utils) command -v xz >/dev/null && continue ;; esac
  case $p in python3-pip) "$PY" -m pip --version >/dev/null 2>&1 && continue ;; esac
  MISSING+=("$p")
done
BUILD_BLOCKERS=()
for p in "${MISSING[@]}"; do
  case $p in python3-pip | xz-utils | pkg-config | libopenblas-openmp-dev) ;; *) BUILD_BLOCKERS+=("$p") ;; esac
done
if [ ${#MISSING[@]} -gt 0 ]; then
  say "MISSING Debian packages: ${MISSING[*]} (install with: apt-get install ${MISSING[*]}; this script never runs apt)"
  [ ${#BUILD_BLOCKERS[@]} -gt 0 ] && say "the build needs: ${BUILD_BLOCKERS[*]}; stitch will not build"
  printf 'deps\tmissing: %s\t0\n' "${MISSING[*]}" >>"$SUMMARY"
  FAILED=1
else
  say "build dependencies: all of tools/install_deps.sh's packages are there"
  printf 'deps\tok\t0\n' >>"$SUMMARY"
fi

# ---- 2. a GPU? ------------------------------------------------------------------------------------
GPU=""
if command -v nvidia-smi >/dev/null; then GPU=$(timeout 20 nvidia-smi -L 2>/dev/null | head -1); fi
if [ -z "$GPU" ] && ls /proc/driver/nvidia/gpus/* >/dev/null 2>&1; then GPU="NVIDIA GPU (nvidia-smi unavailable)"; fi
if [ -z "$GPU" ] && [ "${GPU_CHECK_FAKE_GPU:-0}" = 1 ]; then GPU="none (GPU_CHECK_FAKE_GPU=1: a test run of this script)"; fi
if [ -z "$GPU" ]; then
  say "no GPU: nvidia-smi lists none and /proc/driver/nvidia/gpus is empty; nothing to measure here (exit 3)"
  printf 'gpu\tno GPU\t0\n' >>"$SUMMARY"
  exit 3
fi
say "GPU: $GPU"
printf 'gpu\t%s\t0\n' "$GPU" >>"$SUMMARY"

# ---- 3. build, with the models written meanwhile (GPU + disk; the build is CPU) ---------------------
PY_OK=0
if timeout 60 "$PY" -c 'import torch, transformers, tokenizers, safetensors' >/dev/null 2>&1; then
  PY_OK=1
  timeout 60 "$PY" -c 'import torch; assert torch.cuda.is_available()' >/dev/null 2>&1 ||
    say "WARNING: torch in $PY sees no CUDA device: the HF peer will fail"
else
  say "$PY cannot import torch, transformers, tokenizers and safetensors: no models, no HF peer"
  printf 'python\tno torch+transformers in %s\t0\n' "$PY" >>"$SUMMARY"
  FAILED=1
fi
# shellcheck disable=SC2317  # run in a child bash (export -f)
make_models() {
  local rc=0 sh dev
  for sh in $SHAPES; do
    if [ -f "$MODELS_DIR/$sh/config.json" ]; then
      echo "$sh: already in $MODELS_DIR/$sh"
      continue
    fi
    # written under a temporary name, renamed when complete (a killed run leaves no half model)
    for dev in "$MODEL_DEVICE" cpu; do
      rm -rf "${MODELS_DIR:?}/$sh.tmp"
      if HF_HUB_OFFLINE=1 "$PY" tools/make_bench_model.py "$MODELS_DIR/$sh.tmp" --shape "$sh" --device "$dev"; then
        mv "$MODELS_DIR/$sh.tmp" "$MODELS_DIR/$sh"
        break
      fi
      rm -rf "${MODELS_DIR:?}/$sh.tmp"
      [ "$dev" = cpu ] && { rc=1; break; }
      echo "$sh: init on $dev failed; again on the CPU (slower)"  # a safety net
    done
  done
  return "$rc"
}
MODELS_PID=""
if [ "$PY_OK" = 1 ]; then
  mkdir -p "$MODELS_DIR"
  export -f make_models
  MODEL_DEVICE=${MODEL_DEVICE:-cuda}
  export MODELS_DIR SHAPES PY MODEL_DEVICE
  run models 240 bash -c make_models &
  MODELS_PID=$!
fi
BUILT=0
if [ ${#BUILD_BLOCKERS[@]} -eq 0 ]; then
  # -k: a broken GPU test must not keep the benchmarks from running (test-gpu reports it)
  run build 300 nice make -k -j"$JOBS" BUILD="$BUILD_DIR" "$STITCH" "$BUILD_DIR/stitch_gpu_tests"
  if [ -x "$STITCH" ] && make -q BUILD="$BUILD_DIR" "$STITCH" 2>/dev/null; then
    BUILT=1
  else
    say "no up-to-date $STITCH: no stitch benchmarks"
  fi
else
  printf 'build\tskipped (missing: %s)\t0\n' "${BUILD_BLOCKERS[*]}" >>"$SUMMARY"
fi
if [ -n "$MODELS_PID" ]; then
  wait "$MODELS_PID" || FAILED=1
  cat "$OUTDIR/logs/models.log" >&2
fi

# ---- 4. make test-gpu -------------------------------------------------------------------------------
TESTGPU_LINE="test-gpu: not run"
if [ "$BUILT" = 1 ]; then
  if [ "$DPKG_ALL" = 1 ]; then
    run test-gpu 150 make -j"$JOBS" BUILD="$BUILD_DIR" test-gpu
  else  # `make test-gpu` without its deps step, which would call apt
    run test-gpu 150 bash -c "make -j'$JOBS' BUILD='$BUILD_DIR' '$BUILD_DIR/stitch_gpu_tests' && tools/run_tests.sh '$BUILD_DIR/stitch_gpu_tests'"
  fi
  cp "$OUTDIR/logs/test-gpu.log" "$OUTDIR/test-gpu.log"
  TESTGPU_LINE=$(grep -E '^tests: [0-9]+ passed' "$OUTDIR/test-gpu.log" | tail -1)
  [ -n "$TESTGPU_LINE" ] || TESTGPU_LINE="test-gpu: no summary line (see test-gpu.log)"
fi
say "$TESTGPU_LINE"

# ---- 5. benchmarks ----------------------------------------------------------------------------------
# Same lengths, steps and batch on both sides; best of 3 after a warm-up.
COMMON="--prompt-lens $PROMPT_LENS --decode $DECODE --batch $BATCH --capture"
for sh in $SHAPES; do
  model=$MODELS_DIR/$sh
  if [ ! -f "$model/config.json" ]; then
    say "$sh: no model (see logs/models.log); skipping its benchmarks"
    continue
  fi
  if [ "$BUILT" = 1 ]; then
    # shellcheck disable=SC2086
    run "stitch-$sh" 100 "$STITCH" bench "$model" --device "$BENCH_DEVICE" $COMMON --reps 3 --json "$OUTDIR/$sh.stitch.json" ${BENCH_ARGS:-}
  fi
  # shellcheck disable=SC2086
  run "hf-$sh" 120 "$PY" tools/bench_hf.py "$model" --device "$BENCH_DEVICE" --dtype "$HF_DTYPE" $COMMON --repeats 3 --json "$OUTDIR/$sh.hf.json" ${HF_ARGS:-}
done

# ---- 6. the table -----------------------------------------------------------------------------------
TABLE=$OUTDIR/table.md
if command -v "$PY" >/dev/null; then
  # shellcheck disable=SC2086  # one argument per shape
  "$PY" - "$OUTDIR" "$TESTGPU_LINE" "$SUMMARY" $SHAPES >"$TABLE" <<'PYEOF'
import json, os, sys

out, testgpu, summary, shapes = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4:]
lens = [x for x in os.environ.get("PROMPT_LENS", "512,2048").split(",") if x]
short, long = lens[0], lens[-1]
batch = os.environ.get("BATCH", "16")

def load(path):
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None

def num(d, *keys):
    for k in keys:
        if d is None or not isinstance(d, dict) or k not in d:
            return None
        d = d[k]
    return d if isinstance(d, (int, float)) else None

def pair(s, h):
    if s is None and h is None:
        return "–"
    fmt = lambda x: "–" if x is None else f"{x:,.0f}" if x >= 100 else f"{x:.3g}"
    fs, fh = fmt(s), fmt(h)
    ratio = f" ({s / h:.2f}×)" if s and h else ""
    return f"{fs} / {fh}{ratio}"

rows, checks = [], []
device = None
for sh in shapes:
    s, h = load(f"{out}/{sh}.stitch.json"), load(f"{out}/{sh}.hf.json")
    device = device or (s or {}).get("device_name") or (h or {}).get("device_name")
    gb, roof = num(s, "decode_gb_s"), num(s, "decode_roofline_pct")
    tf, pct = num(s, "gemm_tflops"), num(s, "gemm_pct")
    rows.append("| " + " | ".join([
        sh,
        *[pair(num(s, "prefill", n), num(h, "prefill", n)) for n in lens],
        pair(num(s, "decode_b1_tok_s"), num(h, "decode_b1_tok_s")),
        pair(num(s, f"decode_b{batch}_tok_s"), num(h, f"decode_b{batch}_tok_s")),
        pair(num(s, "capture_tok_s"), num(h, "capture_tok_s")),
        f"{gb:,.0f} ({roof:.0f}%)" if gb is not None and roof is not None else "–",
        f"{tf:,.0f} ({pct:.0f}%)" if tf is not None and pct is not None else "–",
    ]) + " |")
    if sh == "llama-3.2-1b" and roof is not None:
        checks.append(f"- batch-1 decode, {sh}: {roof:.0f}% of the measured copy bandwidth (target ≥ 70%): "
                      f"{'MET' if roof >= 70 else 'NOT MET'}")
    cs, ch = num(s, "capture_tok_s"), num(h, "capture_tok_s")
    if cs and ch:
        checks.append(f"- capture, {sh}: {cs / ch:.1f}× HF output_hidden_states (target ≥ 5×): "
                      f"{'MET' if cs / ch >= 5 else 'NOT MET'}")
    if pct is not None:
        checks.append(f"- prefill GEMMs at {long} tokens, {sh}: {pct:.0f}% of the measured bf16 GEMM peak (target ≥ 60%): "
                      f"{'MET' if pct >= 60 else 'NOT MET'}")

s0 = next((load(f"{out}/{sh}.stitch.json") for sh in shapes if load(f"{out}/{sh}.stitch.json")), None)
h0 = next((load(f"{out}/{sh}.hf.json") for sh in shapes if load(f"{out}/{sh}.hf.json")), None)
print(f"## stitch vs HF transformers on {device or 'the GPU'}\n")
print("Random-weight bf16 models with the real models' shapes; tok/s as `stitch / HF (stitch ÷ HF)`; best of 3 after a warm-up.")
if h0:
    print(f"HF: transformers {h0.get('transformers_version')}, torch {h0.get('torch_version')}, {h0.get('dtype')}.")
if num(s0, "copy_gb_s"):
    print(f"Device ceilings measured by stitch bench: copy {num(s0, 'copy_gb_s') or 0:,.0f} GB/s (1 GiB device-to-device, "
          f"read + write), bf16 GEMM {num(s0, 'gemm_peak_tflops') or 0:,.0f} TFLOP/s (8192³ cublasGemmEx).")
kernels = []
for sh in shapes:
    s = load(f"{out}/{sh}.stitch.json")
    if s and "prefill_attention" in s:
        kernels.append(f"{sh}: prefill attention on {s['prefill_attention']}, decode "
                       f"{'as CUDA graphs' if s.get('decode_graphs') else 'without CUDA graphs'}")
if kernels:
    print("stitch kernels: " + "; ".join(kernels) + ".")
print()
cols = ([f"prefill {n}" for n in lens] + ["decode b1", f"decode b{batch}", f"capture ({short} tok)",
        "stitch decode GB/s (% roofline)", f"stitch GEMM TFLOP/s at {long} (% peak)"])
print("| shape | " + " | ".join(cols) + " |")
print("|---" * (len(cols) + 1) + "|")
print("\n".join(rows))
print()
print(testgpu)
print()
print("Targets:")
print("\n".join(checks) if checks else "- nothing measured")
print()
print("Steps:")
print("| step | outcome | seconds |\n|---|---|---|")
with open(summary) as f:
    for line in f:
        parts = line.rstrip("\n").split("\t")
        if len(parts) == 3:
            print(f"| {parts[0]} | {parts[1]} | {parts[2]} |")
PYEOF
else
  {
    echo "no $PY to format the table; raw results:"
    cat "$OUTDIR"/*.json 2>/dev/null
    echo "$TESTGPU_LINE"
    cat "$SUMMARY"
  } >"$TABLE"
fi
cat "$TABLE"
say "done in $(elapsed)s; table and JSONs in $OUTDIR"
exit "$FAILED"
