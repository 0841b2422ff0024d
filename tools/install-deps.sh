#!/usr/bin/env bash
# Installs every Debian 12 package Portcullis needs to build, test and benchmark.
# Idempotent: does nothing when everything is present. Uses sudo when not root.
set -euo pipefail

PKGS=(
  build-essential cmake pkg-config
  libuv1-dev node-llhttp android-libboringssl-dev
  libxxhash-dev libmimalloc-dev libtomlplusplus-dev
  googletest libgtest-dev libgmock-dev libbenchmark-dev
  curl openssl python3 python3-cryptography libtsan2 util-linux
)
# Extra tools used by `make bench` only; pass --bench to install them too.
BENCH_PKGS=(wrk nginx-light haproxy python3-matplotlib linux-perf liburing-dev)
# clang and its libFuzzer/sanitizer runtimes, used by `make fuzz` only; pass --fuzz.
FUZZ_PKGS=(clang libclang-rt-14-dev)
# clang-tidy 14 (with run-clang-tidy-14) and cppcheck, used by `make lint` only; pass --lint.
LINT_PKGS=(clang-tidy-14 cppcheck)

want=("${PKGS[@]}")
if [ "${1:-}" = "--bench" ]; then want+=("${BENCH_PKGS[@]}"); fi
if [ "${1:-}" = "--fuzz" ]; then want+=("${FUZZ_PKGS[@]}"); fi
if [ "${1:-}" = "--lint" ]; then want+=("${LINT_PKGS[@]}"); fi

missing=()
for p in "${want[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$p")
  fi
done
[ ${#missing[@]} -eq 0 ] && exit 0

SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
echo "install-deps: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
