#!/usr/bin/env bash
# Every kernel family once, on the CPU simulator (sim/README.md) with racecheck on: `sofa run
# --check always` against the f64 reference for each op, dtype and variant at small, odd sizes;
# then one `sofa bench` sweep of every op with its cuBLAS baseline, as graphs.
# CI runs this (no GPU needed); scripts/sim-test.sh runs the full GPU test files the same way.
#   scripts/sim-smoke.sh [SOFA_BINARY]   (default: target/debug/sofa, built if missing)
set -euo pipefail
cd "$(dirname "$0")/.."
target="${CARGO_TARGET_DIR:-target}"
sofa="${1:-$target/debug/sofa}"
[[ -x "$sofa" ]] || cargo build --bin sofa
python3 sim/build.py --out "$target/sim-race" --racecheck
export LD_LIBRARY_PATH="$(cd "$target/sim-race" && pwd)${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
export SOFA_KERNELS=fatbin
run() {
  local out
  if ! out=$("$sofa" run --backend gpu --check always --iters 1 --warmup 0 "$@" 2>&1); then
    echo "$out"
    echo "sim-smoke: FAILED: sofa run $*"
    exit 1
  fi
  grep -q "sofa-sim" <<<"$out" || { echo "$out"; echo "sim-smoke: not on the simulator"; exit 1; }
  printf '%-70s %s\n' "$*" "$(grep -o 'rel. Frobenius [^ ]*' <<<"$out")"
}
for dt in f16 bf16 f32; do
  run --op soft --shape 1,2,300,64 --m 49 --dtype $dt
  run --op cosformer --shape 1,2,300,64 --dtype $dt
  run --op cosformer --shape 1,2,300,64 --dtype $dt --causal
  run --op aft_simple --shape 1,2,300,64 --dtype $dt --causal
  run --op aft_local --shape 1,2,300,64 --window 64 --dtype $dt
  run --op aft_full --shape 1,2,200,64 --dtype $dt --causal
  run --op sima --shape 1,2,300,64 --dtype $dt
done
run --op soft --shape 1,3,257,80 --m 7 --dtype f16
run --op soft --shape 1,2,256,64 --landmarks avgpool2d --height 16 --pool 2 --dtype bf16
run --op cosformer --shape 2,2,77,32 --dv 48 --kv-len 130 --dtype f16
run --op cosformer --shape 1,2,1000,128 --dtype bf16 --causal
# 128 slices × 2 chunks of 128 rows: a default plan that takes the chained D = 128 launch.
run --op cosformer --shape 1,128,256,128 --dtype f16 --causal
run --op cosformer --shape 1,2,300,128 --dtype bf16
run --op soft --shape 1,2,300,128 --m 49 --dtype f16
run --op aft_simple --shape 1,3,333,80 --dtype f16
# One slice, 16 chunks of 128 rows: causal AFT-simple's look-back over chunks still running.
run --op aft_simple --shape 1,1,2000,64 --dtype bf16 --causal
run --op aft_local --shape 1,2,300,64 --window 5 --dtype f16 --causal
run --op aft_local --shape 1,2,300,64 --window 64 --dtype bf16 --causal
run --op aft_conv --shape 1,2,300,64 --window 17 --dtype f16
run --op aft_conv --shape 1,2,300,48 --window 64 --dtype bf16 --causal
run --op aft_full --shape 1,2,200,64 --dtype bf16
run --op sima --shape 1,3,129,80 --dtype bf16
# The simulator takes each kernel's registers, static shared memory and launch bound from the
# fatbin, as a driver does, and refuses or sizes launches by them (sim/image.cpp): every kernel's
# must equal the build's ptxas report, and its occupancy the H100's rules.
SOFA_REQUIRE_GPU=1 cargo test -q --test gpu_kernels >/dev/null 2>&1 ||
  { echo "sim-smoke: FAILED: cargo test --test gpu_kernels on the simulator"; exit 1; }
printf '%-70s %s\n' "cargo test --test gpu_kernels" "driver attributes = ptxas report"
# The instrument end to end: every op, its cuBLAS-composed baseline (the simulator's cuBLAS) and
# softmax, each captured as a CUDA graph and replayed. Times mean nothing here; the records must.
records=$("$sofa" bench --op all --seq 300 --heads 2 --iters 1 --warmup 0 --no-peaks --baseline --graph \
  --format json 2>/dev/null) || { echo "sim-smoke: FAILED: sofa bench"; exit 1; }
python3 - "$records" <<'PY'
import json, sys
recs = [json.loads(l) for l in sys.argv[1].splitlines()]
ops = sorted(r["op"] for r in recs)
want = sorted(["sima", "baseline:sima", "softmax", "cosformer", "baseline:cosformer", "cosformer_decode", "soft", "baseline:soft",
               "soft_newton", "baseline:soft_newton", "aft_simple", "aft_local", "baseline:aft_local", "aft_conv", "aft_full", "baseline:aft_full"])
assert ops == want, f"bench records {ops} != {want}"
assert all(r["graph"] and r["device"] == "sofa-sim (CPU)" and r["median_ms"] > 0 for r in recs), recs
print(f"{'sofa bench --op all --baseline --graph':70s} {len(recs)} records")
PY
# `sofa report` reads what `sofa bench` writes: the Newton and small-decode target cases (the two
# the simulator runs in seconds) must get a verdict, not "not measured". Met or missed means
# nothing here. The three Newton cluster kernels run once more at m = 49 (one CTA idle): a
# deadlock, an unarmed st.async or a shared-memory race fails the launch.
t=$(mktemp)
"$sofa" bench --op cosformer_decode --batch 8 --heads 16 --head-dim 64 --iters 1 --warmup 0 --no-peaks --out "$t" >/dev/null 2>&1 &&
  "$sofa" bench --op soft_newton --landmarks 64 --iters 1 --warmup 0 --no-peaks --baseline --out "$t" >/dev/null 2>&1 &&
  "$sofa" bench --op soft_newton --landmarks 49 --iters 1 --warmup 0 --no-peaks --out "$t" \
    --newton-path one-launch,cluster-late,cluster-async >/dev/null 2>&1 ||
  { echo "sim-smoke: FAILED: sofa bench at the target cases"; exit 1; }
report=$("$sofa" report "$t") || { echo "sim-smoke: FAILED: sofa report"; exit 1; }
grep -q '"op":"newton_cluster_probe"' "$t" ||
  { echo "sim-smoke: FAILED: no newton_cluster_probe record from sofa bench --op soft_newton"; exit 1; }
rm -f "$t"
for target in "newton_pinv m = 64" "decode step B = 8"; do
  grep -F "| $target" <<<"$report" | grep -qE '\| (met|MISSED) \|$' ||
    { echo "sim-smoke: FAILED: sofa report gave no verdict for '$target'"; echo "$report"; exit 1; }
done
printf '%-70s %s\n' "sofa report (Newton, decode target cases); Newton cluster probe" "verdicts; record"
echo "sim-smoke: every case passed"
