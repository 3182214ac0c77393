#!/usr/bin/env bash
# Runs from a gpu-bundle/ folder on a machine with a GPU and the CUDA driver (no Rust needed):
# device info, the GPU test suite (a missing device fails instead of skipping), the same under
# compute-sanitizer memcheck and racecheck, fatbin-vs-NVRTC runs, and a few timed runs.
# Logs go to $1 (default: $OUT, else ./gpu-out). Exit status: non-zero if any step failed.
# Phases (SOFA_PHASES, default all, in this order): info targets tests sanitize examples runs bench
# sweep torch plot profile — a lent machine allows 10 minutes per command, so run them a few at a
# time, e.g.  SOFA_PHASES="info targets tests" ./run-gpu-checks.sh /tmp/g;  SOFA_PHASES="sanitize" ...
# `targets` times only the issues' target cases (a few minutes) and judges them with
# `sofa report` into $out/targets.md: the verdicts first, in case the lent time runs out.
# Every step is stopped after STEP_TIMEOUT seconds (default 480) with SIGINT: a sweep so stopped
# keeps the records it has written.
# SOFA_DRY_RUN=1 (CI, no GPU): runs nothing; every ./sofa command line is only parsed (its
# arguments with --help), so a bad flag fails here, not on a lent machine's clock.
set -uo pipefail
dry=${SOFA_DRY_RUN:-0}
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
out="${1:-${OUT:-$here/gpu-out}}"
mkdir -p "$out"
cd "$here"

source "$here/gpu-env.sh"  # LD_LIBRARY_PATH, $sanitizer, SOFA_REQUIRE_GPU, SOFA_BIN
failed=()
phases=" ${SOFA_PHASES:-info targets tests sanitize examples runs bench sweep torch plot profile} "
want() { [[ $phases == *" $1 "* ]]; }
step() { # step NAME CMD...: runs CMD, logs to $out/NAME.log, records failure
  local name=$1; shift
  echo "=== $name: $*" | tee -a "$out/summary.log"
  if [[ $dry == 1 ]]; then
    local args=("$@")
    while [[ ${#args[@]} -gt 0 && ${args[0]} != ./sofa ]]; do args=("${args[@]:1}"); done
    [[ ${#args[@]} -gt 0 ]] || return 0
    "${args[@]}" --help >/dev/null 2>"$out/$name.log" || { echo "    does not parse" | tee -a "$out/summary.log"; failed+=("$name"); }
    return 0
  fi
  local t0=$SECONDS
  timeout --signal=INT --kill-after=20 "${STEP_TIMEOUT:-480}" "$@" >"$out/$name.log" 2>&1
  local rc=$?
  echo "    rc=$rc ($((SECONDS - t0)) s)" | tee -a "$out/summary.log"
  [[ $rc -eq 0 ]] || failed+=("$name")
  return $rc
}

echo "commit $(cat COMMIT 2>/dev/null), $(date -u +%FT%TZ)" | tee "$out/summary.log"
[[ $dry == 1 ]] || nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.mem --format=csv 2>&1 | tee -a "$out/summary.log"
want info && step info ./sofa info
# The issues' performance targets (issues 4, 5, 6), at exactly their cases, then judged.
if want targets; then
  tj="$out/targets.jsonl"
  step target-soft ./sofa bench --baseline --op soft --landmarks 64 --seq 64k,256k,1M --out "$tj"
  # Newton: the plain call's path (the target) and each path by name, to place the cluster barrier.
  step target-newton ./sofa bench --baseline --op soft_newton --landmarks 64 --newton-path auto,one-launch,cluster-early,cluster-late,cluster-async,cta,multi --out "$tj"
  step target-cosformer ./sofa bench --baseline --op cosformer --causal --seq 1k,8k,64k,256k --out "$tj"
  step target-decode ./sofa bench --op cosformer_decode --batch 8 --heads 16 --head-dim 64 --iters 200 --out "$tj"
  step target-decode-large ./sofa bench --op cosformer_decode --batch 64 --heads 32 --head-dim 128 --iters 100 --out "$tj"
  step target-aft ./sofa bench --op aft_simple,aft_local,aft_conv --causal --window 64 --seq 64k,256k,1M --out "$tj"
  step target-aft-full ./sofa bench --baseline --op aft_full --causal --seq 16k --out "$tj"
  tt=()
  if [[ -f torch_reference.py ]] && python3 -c 'import torch' 2>/dev/null; then
    step target-fla python3 torch_reference.py --ops cosformer_fla --shapes 1,16,8k,64 1,16,64k,64 1,16,256k,64 \
      --dtypes f16 --out "$out/targets-torch.jsonl"
    tt=("$out/targets-torch.jsonl")
  fi
  step targets ./sofa report "$tj" "${tt[@]}"
  [[ $dry == 1 ]] || cp "$out/targets.log" "$out/targets.md"
fi
if want tests; then
  for t in tests/*; do
    step "test-$(basename "$t")" "$t" --test-threads=4 --nocapture
  done
fi
if ! want sanitize || [[ $dry == 1 ]]; then
  :
elif [[ -n "$sanitizer" ]]; then
  for t in tests/gpu_*; do
    n=$(basename "$t")
    # gpu_large's 2^31-element cases would outlast the step limit under the sanitizers: its
    # harness (every operator, tensor-core paths included, at a small scale) runs instead, and
    # is racecheck's widest cheap coverage.
    mfilter=${SANITIZE_FILTER:-} rfilter=${RACECHECK_FILTER:-short}
    [[ $n == gpu_large ]] && mfilter=${SANITIZE_FILTER:-harness} rfilter=${RACECHECK_FILTER:-harness}
    step "memcheck-$n" "$sanitizer" --tool memcheck --error-exitcode 99 --leak-check full "$t" --test-threads=1 $mfilter
    step "racecheck-$n" "$sanitizer" --tool racecheck --error-exitcode 99 "$t" --test-threads=1 $rfilter
  done
else
  echo "compute-sanitizer not found" | tee -a "$out/summary.log"; failed+=(sanitizer-missing)
fi
if want examples; then
  [[ -x sofa_example ]] && step c-example ./sofa_example
  [[ -x embed_two_layer ]] && step embed-example ./embed_two_layer
fi
want runs && for path in fatbin nvrtc; do
  step "run-sima-$path" env SOFA_KERNELS=$path ./sofa run --op sima --shape 1,16,4k,64 --dtype f16 --check always
done
# Every GPU op through `sofa run` (checked against the f64 reference), [B,N,H,D] layout.
want runs && for op in cosformer soft aft_simple aft_local aft_conv aft_full; do
  for causal in "" --causal; do
    [[ $op == soft && -n $causal ]] && continue
    step "run-$op$causal" ./sofa run --op $op --shape 1,4,4097,64 --dtype f16 --layout bnhd --check always $causal
  done
done
# Benchmarks: JSON lines (one per shape × dtype) in $out/sima.jsonl. Inputs of N ≥ 16k exceed
# the 50 MB L2 of an H100; smaller ones are warm-cache numbers.
bench() { step "bench-$1-$2-$3" ./sofa run --op sima --shape "$1" --dtype "$2" --check "$3" --json "$out/sima.jsonl"; }
if want bench; then
  for n in 1k 4k 16k 64k 256k; do
    for dt in f16 bf16; do bench 1,16,$n,64 $dt auto; bench 1,8,$n,128 $dt auto; done
  done
  bench 1,16,64k,64 f32 always
  bench 1,16,64k,32 f16 always
  bench 1,16,64k,48 f16 always
  bench 1,16,1M,64 f16 never
  bench 1,16,1M,64 bf16 never
fi
# SPEC §6 sweeps. AFT-full is quadratic: its sweep stops at 16k.
linear=sima,cosformer,soft,aft_simple,aft_local,aft_conv
want sweep && step sweep ./sofa bench --baseline --op $linear --causal --seq 1k,4k,16k,64k,256k,1M --dtype f16,bf16 --window 64,256 --landmarks 49,64,128,256 --out "$out/bench.jsonl"
want sweep && step sweep-full ./sofa bench --baseline --op aft_full --causal --seq 1k,4k,16k --dtype f16 --out "$out/bench.jsonl"
# Issue 4's Newton target: B·H = 16 matrices, T = 20, against the cuBLAS loop (µs per matrix on stderr).
want sweep && step sweep-newton ./sofa bench --baseline --op soft_newton --landmarks 49,64,100,128,256 --out "$out/bench.jsonl"
# Each Newton path by name (a path that cannot run an m is skipped with a note): the cluster of 8
# CTAs against one CTA per matrix gives the cluster barrier's cost per step (bench/NOTES.md).
want sweep && step sweep-newton-paths ./sofa bench --op soft_newton --landmarks 16,32,49,64,100,128 --newton-path one-launch,cluster-early,cluster-late,cluster-async,cta,multi --out "$out/bench.jsonl"
# Issue 5's decode targets: B = 8, H = 16, D = 64 in ≤ 10 µs a step, launch included (eager calls:
# the events bracket each launch), and B = 64, H = 32, D = 128 at ≥ 70 % of the copy rate over
# the fp32 state (µs per step and % of the copy rate on stderr). Graph launches beside them.
want sweep && step sweep-decode ./sofa bench --op cosformer_decode --batch 8 --heads 16 --head-dim 64 --dtype f16,bf16 --iters 200 --out "$out/bench.jsonl"
want sweep && step sweep-decode-graph ./sofa bench --op cosformer_decode --batch 8 --heads 16 --head-dim 64 --dtype f16 --iters 200 --graph --out "$out/bench.jsonl"
want sweep && step sweep-decode-large ./sofa bench --op cosformer_decode --batch 64 --heads 32 --head-dim 128 --dtype f16 --iters 100 --out "$out/bench.jsonl"
# Causal cosFormer through the separate launches, beside the chained launch of the sweep above
# (records labelled causal,separate): which one wins where (bench/NOTES.md, session 10).
want sweep && step sweep-separate ./sofa bench --op cosformer --causal --no-chain --seq 8k,16k,32k,64k,256k,1M --dtype f16 --out "$out/bench.jsonl"
# The chained launch's chunk length (the default plan takes 2048 rows at H = 16, N = 64k): L2
# reuse of the second K, V read against prefix traffic and chain latency.
for rows in 512 1024 4096; do
  want sweep && step "sweep-rows-$rows" ./sofa bench --op cosformer --causal --chunk-rows $rows --seq 64k,256k --dtype f16 --out "$out/bench.jsonl"
done
# SPEC §6's second shape: D = 128 takes tensor cores on sm_90, causal cosFormer with two CTAs per
# chunk (bench/NOTES.md, session 11).
want sweep && step sweep-d128 ./sofa bench --op $linear --causal --heads 8 --head-dim 128 --seq 4k,64k,1M --dtype f16 --out "$out/bench.jsonl"
# D = 128 causal cosFormer: chained (above) against the separate launches, and 1024-row chunks.
want sweep && step sweep-d128-separate ./sofa bench --op cosformer --causal --no-chain --heads 8 --head-dim 128 --seq 64k,256k --dtype f16 --out "$out/bench.jsonl"
want sweep && step sweep-d128-rows-1024 ./sofa bench --op cosformer --causal --chunk-rows 1024 --heads 8 --head-dim 128 --seq 64k,256k --dtype f16 --out "$out/bench.jsonl"
if want torch && [[ -f torch_reference.py ]] && python3 -c 'import torch' 2>/dev/null; then
  step torch-check python3 torch_reference.py --check --backend gpu --sofa ./sofa
  # Issue 5's outside reference for causal cosFormer: fla's chunk kernel on the 2D-wide features
  # (wheels/ from gpu-bundle.sh), first, so the long run below cannot crowd it out.
  step torch-fla python3 torch_reference.py --ops cosformer_fla --shapes 1,16,8k,64 1,16,64k,64 1,16,256k,64 \
    --dtypes f16,bf16 --out "$out/torch.jsonl"
  step torch python3 torch_reference.py --out "$out/torch.jsonl"
fi

# One plot of sofa's sweep with the PyTorch and SDPA references when the torch phase ran.
plot_inputs=("$out/bench.jsonl")
[[ -f "$out/torch.jsonl" ]] && plot_inputs+=("$out/torch.jsonl")
want plot && [[ -f "$out/bench.jsonl" ]] && step plot ./sofa plot "${plot_inputs[@]}" --out "$out/bench.svg"
# Targets and crossovers over everything measured (the README's table): report.md.
report_inputs=()
for f in targets.jsonl targets-torch.jsonl bench.jsonl torch.jsonl; do
  [[ -f "$out/$f" ]] && report_inputs+=("$out/$f")
done
if want plot && [[ ${#report_inputs[@]} -gt 0 ]]; then
  step report ./sofa report "${report_inputs[@]}" && cp "$out/report.log" "$out/report.md"
fi

# Nsight Compute on the tensor-core kernels at benchmark shapes (one launch each): speed of light,
# memory (L2 and shared-memory traffic), compute (pipe utilisation) and warp stall reasons (e.g.
# the Newton cluster barrier against shared-memory throttling) — what decides the next
# lever for each (bench/NOTES.md), e.g. whether aft_full_tc is L2- or tensor-bound.
ncu="$(command -v ncu || ls /usr/local/cuda/bin/ncu 2>/dev/null || true)"
profile() { # profile NAME KERNEL-REGEX SOFA-RUN-ARGS...
  local name=$1 kernel=$2; shift 2
  step "ncu-$name" "$ncu" --kernel-name "regex:$kernel" --launch-count 1 --section SpeedOfLight \
    --section MemoryWorkloadAnalysis --section ComputeWorkloadAnalysis --section Occupancy --section WarpStateStats \
    ./sofa run "$@" --dtype f16 --check never --iters 3
}
# Why the warps wait: the average number of warps stalled for each reason per issue, the breakdown
# behind WarpStateStats' "cycles per issued instruction" (2026-11-24's profiles had only the
# total). A step of its own, so that a metric this ncu lacks cannot cost the profile above.
STALLS=barrier,long_scoreboard,short_scoreboard,wait,math_pipe_throttle,mio_throttle,lg_throttle,membar
STALLS+=,not_selected,selected,dispatch_stall,no_instruction,branch_resolving,sleeping,misc
stalls() { # stalls NAME KERNEL-REGEX SOFA-RUN-ARGS...
  local name=$1 kernel=$2 metrics=() r; shift 2
  for r in ${STALLS//,/ }; do metrics+=("smsp__average_warps_issue_stalled_${r}_per_issue_active.ratio"); done
  step "ncu-stalls-$name" "$ncu" --kernel-name "regex:$kernel" --launch-count 1 \
    --metrics "$(IFS=,; echo "${metrics[*]}")" ./sofa run "$@" --dtype f16 --check never --iters 3
}
# L2 seams (bench/NOTES.md): a pass that starts on the rows the previous pass read last. Application
# replay without cache control keeps the L2 state the preceding kernels left: DRAM bytes read and
# the L2 hit rate of the first such launch, against the pass's own K/V/Q bytes.
seam() { # seam NAME KERNEL-REGEX SOFA-RUN-ARGS...
  local name=$1 kernel=$2; shift 2
  step "ncu-seam-$name" "$ncu" --replay-mode application --cache-control none --kernel-name "regex:$kernel" \
    --launch-count 1 --metrics dram__bytes_read.sum,lts__t_sector_hit_rate.pct \
    ./sofa run "$@" --dtype f16 --check never --iters 1
}
if want profile && [[ -n $ncu || $dry == 1 ]]; then
  seam soft-pass1 soft_pass1 --op soft --shape 1,16,64k,64 --m 64
  seam soft-pass2 soft_pass2 --op soft --shape 1,16,64k,64 --m 64
  seam cosformer-causal cosformer_causal --op cosformer --shape 1,16,64k,64 --causal
  # (s = 64, f16: the band kernels aft_window_band_tc / aft_window_band_conv_tc)
  seam aft-local aft_window --op aft_local --window 64 --shape 1,16,64k,64
  seam aft-conv aft_window --op aft_conv --window 64 --shape 1,16,64k,64
  profile aft-full aft_full_tc --op aft_full --shape 1,16,16k,64
  profile aft-full-causal aft_full_tc --op aft_full --shape 1,16,16k,64 --causal
  profile aft-local aft_window --op aft_local --window 64 --shape 1,16,64k,64
  profile aft-simple-reduce aft_simple_reduce --op aft_simple --shape 1,16,64k,64
  profile aft-simple-map aft_simple_map --op aft_simple --shape 1,16,64k,64
  profile aft-simple-causal aft_simple_causal --op aft_simple --shape 1,16,64k,64 --causal
  profile cosformer cosformer_ --op cosformer --shape 1,16,64k,64
  profile cosformer-causal cosformer_causal --op cosformer --shape 1,16,64k,64 --causal
  profile cosformer-causal-d128 cosformer_causal --op cosformer --shape 1,8,64k,128 --causal
  profile soft-pass1 soft_pass1 --op soft --shape 1,16,64k,64 --m 64
  profile soft-pass2 soft_pass2 --op soft --shape 1,16,64k,64 --m 64
  profile soft-newton newton_pinv --op soft --shape 1,16,64k,64 --m 64
  profile soft-landmarks soft_landmarks --op soft --shape 1,16,64k,64 --m 64
  profile sima-map sima_map --op sima --shape 1,16,64k,64
  stalls aft-full aft_full_tc --op aft_full --shape 1,16,16k,64
  stalls aft-local aft_window --op aft_local --window 64 --shape 1,16,64k,64
  stalls aft-simple-reduce aft_simple_reduce --op aft_simple --shape 1,16,64k,64
  stalls cosformer-causal cosformer_causal --op cosformer --shape 1,16,64k,64 --causal
  stalls cosformer-short-causal cosformer_short_causal --op cosformer --shape 1,16,1k,64 --causal
  stalls soft-pass1 soft_pass1 --op soft --shape 1,16,64k,64 --m 64
  stalls soft-pass2 soft_pass2 --op soft --shape 1,16,64k,64 --m 64
fi
echo "=== failed: ${failed[*]:-none}" | tee -a "$out/summary.log"
[[ ${#failed[@]} -eq 0 ]]
