#!/usr/bin/env bash
# Runs each libFuzzer harness for SECONDS under ASan + UBSan (built by `make fuzz`), then prints
# one table: harness, executions, executions/s, corpus size, result. Exits 1 when any harness
# found something; the offending inputs stay in BUILD/findings/NAME/ with the log in BUILD/logs/.
#
# Usage: tools/run_fuzz.sh BUILD SECONDS BIN...   (FUZZ=a,b runs only fuzz_a and fuzz_b)
# Corpus: BUILD/corpus/NAME, seeded from tests/fuzz/seeds/NAME/ and the files that
# tests/fuzz/seeds/NAME.list names (globs relative to the repository root, e.g. fixtures).
set -uo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
build=$1 seconds=$2
shift 2
export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1:abort_on_error=1:malloc_limit_mb=4096:allocator_may_return_null=0}
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}
export LSAN_OPTIONS=${LSAN_OPTIONS:-suppressions=$here/tests/fuzz/lsan.supp}
mkdir -p "$build/logs" "$build/findings"
rows=() failed=0
for bin in "$@"; do
  name=$(basename "$bin"); name=${name#fuzz_}
  if [ -n "${FUZZ:-}" ] && [[ ",$FUZZ," != *",$name,"* ]]; then continue; fi
  corpus=$build/corpus/$name findings=$build/findings/$name log=$build/logs/$name.log
  mkdir -p "$corpus" "$findings"
  [ -d "$here/tests/fuzz/seeds/$name" ] && cp -n "$here/tests/fuzz/seeds/$name"/* "$corpus"/ 2>/dev/null
  if [ -f "$here/tests/fuzz/seeds/$name.list" ]; then
    while read -r glob; do
      [[ -z "$glob" || "$glob" == \#* ]] && continue
      for f in $here/$glob; do
        [ -f "$f" ] && cp -n "$f" "$corpus/seed-$(echo "${f#$here/}" | tr '/' '_')"
      done
    done < "$here/tests/fuzz/seeds/$name.list"
  fi
  dict=() ; [ -f "$here/tests/fuzz/seeds/$name.dict" ] && dict=(-dict="$here/tests/fuzz/seeds/$name.dict")
  echo "fuzz: $name for ${seconds}s ($(ls "$corpus" | wc -l) inputs in the corpus)" >&2
  "$bin" "$corpus" "${dict[@]}" -max_total_time="$seconds" -timeout=10 -rss_limit_mb=4096 \
      -print_final_stats=1 -artifact_prefix="$findings/" -max_len="${FUZZ_MAX_LEN:-65536}" >"$log" 2>&1
  rc=$?
  execs=$(sed -nE 's/^stat::number_of_executed_units: *([0-9]+).*/\1/p' "$log" | tail -1)
  rate=$(sed -nE 's/^stat::average_exec_per_sec: *([0-9]+).*/\1/p' "$log" | tail -1)
  size=$(ls "$corpus" | wc -l)
  if [ $rc -eq 0 ]; then result=clean; else result="FINDING (exit $rc, see $log)"; failed=1; fi
  rows+=("$(printf '%-22s %12s %10s %8s  %s' "$name" "${execs:-?}" "${rate:-?}" "$size" "$result")")
done
printf '%-22s %12s %10s %8s  %s\n' harness executions "execs/s" corpus result
printf '%s\n' "${rows[@]}"
exit $failed
