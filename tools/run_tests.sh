#!/usr/bin/env bash
# Runs the doctest binary and closes with one plain summary line ("tests: N passed, N failed"),
# keeping the binary's exit status.
set -uo pipefail
log=$(mktemp)
"$@" 2>&1 | tee "$log"
status=${PIPESTATUS[0]}
line=$(grep -E '^\[doctest\] test cases:' "$log" | tail -n 1)
passed=$(echo "$line" | sed -nE 's/.*\| *([0-9]+) passed.*/\1/p')
failed=$(echo "$line" | sed -nE 's/.*\| *([0-9]+) failed.*/\1/p')
rm -f "$log"
if [ -n "$passed" ]; then
  echo "tests: ${passed} passed, ${failed:-0} failed"
else
  echo "tests: 0 passed, 1 failed"
  [ "$status" -eq 0 ] && status=1
fi
exit "$status"
