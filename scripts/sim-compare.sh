#!/usr/bin/env bash
# One `sofa run` output, bit for bit, between the kernels of a git revision and those of the working
# tree, both on sofa-sim (the CPU simulator): how bench/NOTES.md's "outputs bit-identical" claims
# for kernel changes are checked. Exit 0 when identical, 1 when not. The host code is the working
# tree's, so REV's kernels must define every kernel it launches.
#   scripts/sim-compare.sh REV -- --op aft_simple --shape 1,2,5000,64 --dtype f16 [--causal …]
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
rev=$1
shift
[[ ${1:-} == -- ]] && shift
eval "$(scripts/install-cuda-toolchain.sh --env 2>/dev/null)"
target=${CARGO_TARGET_DIR:-target}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
git archive "$rev" kernels | tar -x -C "$work"
python3 sim/build.py --out "$target/sim-cmp-base" --kernels "$work/kernels" >/dev/null
python3 sim/build.py --out "$target/sim-cmp-head" >/dev/null
cargo build --release -q
for side in base head; do
  if ! LD_LIBRARY_PATH="$target/sim-cmp-$side${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}" SOFA_KERNELS=fatbin \
    "$target/release/sofa" run --backend gpu --iters 1 --warmup 0 --seed 5 "$@" \
    --output "$work/$side.safetensors" >"$work/$side.log" 2>&1; then
    cat "$work/$side.log"
    exit 1
  fi
done
if cmp -s "$work/base.safetensors" "$work/head.safetensors"; then
  echo "bit-identical to $rev: $*"
else
  echo "DIFFERENT from $rev: $*"
  exit 1
fi
