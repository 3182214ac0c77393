#!/usr/bin/env bash
# One command of a lent GPU machine's session (bench/RUNBOOK.md), run from the repo's root there:
#   scripts/gpu-lease.sh PLAN [SECONDS]
# Unpacks the carried gpu-bundle.tar.xz into /tmp/b (once per machine), takes the repo's
# scripts over the bundle's (a fix made after the bundle was built still applies), runs PLAN's
# steps within SECONDS (default 560, under the tool's 600 s limit), and packs everything written
# into $OUT/PLAN.tgz: the tool returns at most 8 files from $OUT, and a step cut at the deadline
# still leaves its logs. Timed steps run alone; correctness steps run side by side.
# Plans: verdicts (info, issue targets, then the GPU tests beside all four sanitizers), recheck
# (the GPU test files at once beside chosen sanitizers),
# sweep (SPEC §6 sweeps, plot, report), torch (PyTorch/SDPA/fla references), rest (runs,
# examples, ncu profiles), repro (scripts/sanitizer_repro.cu under racecheck).
set -uo pipefail
plan=$1 budget=${2:-560}
end=$((SECONDS + budget))
b=/tmp/b o=/tmp/lease/$plan
if [[ ! -x $b/sofa ]]; then
  mkdir -p $b && tar xJf gpu-bundle.tar.xz -C $b || exit 2
fi
# SOFA_COMMIT: the commit the bundle was built from, when it was built before the commit was made.
[[ -n ${SOFA_COMMIT:-} ]] && echo "$SOFA_COMMIT" >$b/COMMIT
cp scripts/run-gpu-checks.sh scripts/gpu-verify.sh scripts/gpu-env.sh scripts/torch_reference.py scripts/torch_ops.py $b/
rm -rf "$o" && mkdir -p "$o"
cd $b
here=$b
source ./gpu-env.sh  # the steps run here directly get what run-gpu-checks.sh gives its own
left() { echo $((end - SECONDS - ${1:-0})); }
checks() { # checks NAME "PHASES" SECONDS: run-gpu-checks.sh's phases into $o/NAME
  local s=$3
  ((s > $(left 15))) && s=$(left 15)
  ((s > 10)) || return 0
  STEP_TIMEOUT=$s SOFA_PHASES=$2 timeout --signal=INT --kill-after=10 "$s" ./run-gpu-checks.sh "$o/$1" >"$o/$1.out" 2>&1
}
verify() { # verify NAME "TOOLS" JOBS: gpu-verify.sh until the deadline
  local s
  s=$(left 20)
  ((s > 10)) || return 0
  SANITIZE_TOOLS=$2 SANITIZE_JOBS=$3 SANITIZE_TIMEOUT=$((s - 5)) timeout --kill-after=10 "$s" \
    ./gpu-verify.sh "$o/$1" >"$o/$1.out" 2>&1
}
case $plan in
verdicts)
  checks targets "info targets" 300
  checks tests tests 9999 &
  verify verify "memcheck racecheck initcheck synccheck" 6 &
  wait
  ;;
recheck) # after fixes: every GPU test file at once (gpu_large, the memory-heavy one, apart from
  # RECHECK_LARGE=1), gpu_embedding three times, beside the sanitizers (RECHECK_TOOLS).
  mkdir -p "$o/tests"
  # The Newton and SOFT targets again first, alone (the ones a kernel change of 2026-11-24 moved).
  ./sofa bench --baseline --op soft_newton --landmarks 64 \
    --newton-path auto,one-launch,cluster-early,cluster-late,cluster-async --out "$o/targets.jsonl" >"$o/newton.log" 2>&1
  ./sofa bench --baseline --op soft --landmarks 64 --seq 64k,256k,1M --out "$o/targets.jsonl" >"$o/soft.log" 2>&1
  for t in tests/gpu_*; do
    n=$(basename "$t")
    [[ $n == gpu_large && ${RECHECK_LARGE:-0} != 1 ]] && continue
    reps=1
    [[ $n == gpu_embedding ]] && reps=3
    for r in $(seq $reps); do
      (
        t0=$SECONDS
        timeout --signal=INT --kill-after=10 "$(left 30)" "$t" --test-threads=4 --nocapture >"$o/tests/$n-$r.log" 2>&1
        echo "$n #$r rc=$? ($((SECONDS - t0)) s) $(grep -h '^test result' "$o/tests/$n-$r.log" | tail -1)" >>"$o/tests/summary.log"
      ) &
    done
  done
  verify verify "${RECHECK_TOOLS:-memcheck initcheck synccheck}" 6 &
  # racecheck (the slowest) on the files it finished quickest, in its own folder.
  SANITIZE_TESTS=${RECHECK_RACE:-gpu_determinism gpu_kernels gpu_oom gpu_non_finite gpu_large gpu_embedding gpu_bench} \
    verify race racecheck 2 &
  wait
  ;;
repro) # the minimal synchronization patterns (scripts/sanitizer_repro.cu) plain and under racecheck
  for mode in mbar split; do
    ./sanitizer_repro $mode >"$o/repro-$mode.log" 2>&1
    "$sanitizer" --tool racecheck --error-exitcode 99 ./sanitizer_repro $mode >"$o/racecheck-$mode.log" 2>&1
    echo "$mode: $(tail -1 "$o/repro-$mode.log"); racecheck: $(grep -E "RACECHECK SUMMARY|ERROR SUMMARY" "$o/racecheck-$mode.log" | tr "\n" " ")" >>"$o/summary.log"
  done
  ;;
sweep) checks sweep "sweep plot" 9999 ;;
torch) checks torch "torch" 9999 ;;
rest)
  checks runs "runs examples" 9999
  checks profile profile 9999
  ;;
*) echo "unknown plan $plan" >&2 && exit 2 ;;
esac
# What did not finish still says how far it got.
for d in verify race; do cat "$o/$d"/*.status >>"$o/$d/summary.log" 2>/dev/null; done
tar czf "$OUT/$plan.tgz" -C /tmp/lease "$plan"
for f in "$o"/summary.log "$o"/*/summary.log; do [[ -f $f ]] && echo "## $f" && sort "$f"; done
[[ -f $o/targets/targets.md ]] && cat "$o/targets/targets.md"
grep -h "µs per matrix\|^soft " "$o"/newton.log "$o"/soft.log 2>/dev/null
exit 0
