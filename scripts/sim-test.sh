#!/usr/bin/env bash
# Runs GPU test files against the CPU simulator (sim/README.md): builds target/sim/libcuda.so.1
# (or target/sim-asan with --asan), builds the test executables (needs nvcc: the runtime loads the
# embedded fatbin), then runs each named tests/gpu_*.rs file with the simulator as the driver.
#   scripts/sim-test.sh [--asan] [TEST_FILE ...] [-- TEST_ARGS]
# With no file named: every GPU test file (the simulator brings its own cuBLAS for gpu_baseline
# and gpu_bench). Exit status: 0 only if every file passed.
set -euo pipefail
cd "$(dirname "$0")/.."
asan=0
files=()
while [[ $# -gt 0 ]]; do
  case "$1" in
    --asan) asan=1; shift ;;
    --) shift; break ;;
    *) files+=("$1"); shift ;;
  esac
done
if [[ ${#files[@]} -eq 0 ]]; then
  files=(gpu_kernels gpu_aft gpu_cosformer gpu_soft gpu_sima gpu_non_finite gpu_determinism gpu_embedding gpu_oom
    gpu_baseline gpu_bench gpu_large)
fi
target="${CARGO_TARGET_DIR:-target}"
simdir="$target/sim"
build_args=()
if [[ $asan -eq 1 ]]; then
  simdir="$target/sim-asan"
  build_args=(--asan)
fi
python3 sim/build.py --out "$simdir" "${build_args[@]}"
cargo test --release --no-run "${files[@]/#/--test=}" 2>&1 | grep -v '^ *Executable' >&2 || true
export LD_LIBRARY_PATH="$(cd "$simdir" && pwd)${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
export SOFA_REQUIRE_GPU=1 SOFA_KERNELS=fatbin
# ASan's runtime is preloaded into the test executables only: under it, the cargo and rustc
# that locate them crash (and cargo caches rustc's crash in target/.rustc_info.json).
preload=()
if [[ $asan -eq 1 ]]; then
  preload=(env "LD_PRELOAD=$(${CXX:-g++} -print-file-name=libasan.so)")
  export ASAN_OPTIONS="detect_leaks=0:abort_on_error=1:${ASAN_OPTIONS:-}"
fi
failed=()
for f in "${files[@]}"; do
  exe=$(cargo test --release --no-run --test "$f" --message-format=json 2>/dev/null |
    python3 -c 'import json,sys
for l in sys.stdin:
    m = json.loads(l)
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["target"]["kind"] == ["test"]:
        print(m["executable"])' | tail -1)
  echo "== $f (sofa-sim$([[ $asan -eq 1 ]] && echo ", AddressSanitizer"))"
  start=$(date +%s)
  if [[ -z "$exe" ]]; then
    echo "== $f: no test executable (did the build fail?)"
    failed+=("$f")
    continue
  fi
  if "${preload[@]}" "$exe" --test-threads 1 "$@"; then
    echo "== $f passed in $(( $(date +%s) - start )) s"
  else
    echo "== $f FAILED after $(( $(date +%s) - start )) s"
    failed+=("$f")
  fi
done
if [[ ${#failed[@]} -gt 0 ]]; then
  echo "sofa-sim: failed: ${failed[*]}"
  exit 1
fi
echo "sofa-sim: all passed (${files[*]})"
