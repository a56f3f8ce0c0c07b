#!/usr/bin/env bash
# Installs the Debian packages stitch builds against, when any is missing.
# Runs apt-get as root, or through sudo. Safe to run repeatedly.
set -euo pipefail
pkgs=(g++ make pkg-config xz-utils python3 python3-pip
      libfmt-dev doctest-dev nlohmann-json3-dev libpcre2-dev libutf8proc-dev libsentencepiece-dev
      libopenblas-openmp-dev)
# `make fuzz`: clang with libFuzzer and the sanitizer runtimes, and LLVM's OpenMP.
[ "${STITCH_FUZZ_DEPS:-0}" = 1 ] && pkgs+=(clang libclang-rt-dev libomp-dev)
missing=()
for p in "${pkgs[@]}"; do
  dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
done
[ ${#missing[@]} -eq 0 ] && exit 0
echo "installing: ${missing[*]}" >&2
SUDO=""
if [ "$(id -u)" -ne 0 ]; then
  command -v sudo >/dev/null || { echo "stitch: error: need root or sudo to install: ${missing[*]}" >&2; exit 2; }
  SUDO=sudo
fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
