#!/usr/bin/env bash
# Runs from a gpu-bundle/ folder (scripts/gpu-bundle.sh) on a machine with a GPU and the CUDA
# driver: every tests/gpu_* executable under compute-sanitizer memcheck, racecheck, initcheck
# and synccheck (--error-exitcode 99), one log per tool × test in $1 (default: $OUT/verify, else
# ./gpu-verify-out), plus summary.log with the device and commit. Exit status non-zero on any
# report or failure. Commit the output under bench/results/ (e.g. bench/results/gpu-verify-<commit>/).
#   (cd gpu-bundle && ./gpu-verify.sh /path/to/out)
# SANITIZE_FILTER: optional test-name filter passed to every test executable (gpu_large runs
# only its small-scale harness unless one is given).
# SANITIZE_TESTS: the test files (names; default every tests/gpu_*).
# SANITIZE_TOOLS: the tools to run (default "memcheck racecheck initcheck synccheck").
# SANITIZE_JOBS: tool × test runs at once (default 1). The sanitizers are mostly host-bound, so a
# lent machine's cores run several side by side; the summary is in tool × test order regardless.
# SANITIZE_TIMEOUT: seconds per tool × test run (default none); a run so stopped is CUT, a failure.
set -uo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
out="${1:-${OUT:+$OUT/verify}}"
out="${out:-$here/gpu-verify-out}"
mkdir -p "$out"
cd "$here"

source "$here/gpu-env.sh"  # LD_LIBRARY_PATH, $sanitizer, SOFA_REQUIRE_GPU, SOFA_BIN
summary="$out/summary.log"
{
  echo "gpu-verify: commit $(cat COMMIT 2>/dev/null || echo unknown), $(date -u +%FT%TZ)"
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>&1
  [[ -n "$sanitizer" ]] && "$sanitizer" --version 2>&1 | tail -1
} | tee "$summary"
if [[ -z "$sanitizer" ]]; then
  echo "FAIL: compute-sanitizer not found" | tee -a "$summary"
  exit 2
fi
shopt -s nullglob
tests=(tests/gpu_*)
# SANITIZE_TESTS: the test files to run (names, default every tests/gpu_*).
[[ -n ${SANITIZE_TESTS:-} ]] && tests=($(for n in $SANITIZE_TESTS; do echo "tests/$n"; done))
if [[ ${#tests[@]} -eq 0 ]]; then
  echo "FAIL: no tests/gpu_* executables (run scripts/gpu-bundle.sh)" | tee -a "$summary"
  exit 2
fi
export sanitizer out

# Tests whose point is a failing driver call (an allocation larger than the device): the
# sanitizers report every API error, so these run apart with API-error reports off, and the
# rest of their file with them on. FILE (all of it) or FILE:TEST.
expected_api_errors="gpu_oom gpu_baseline:short_buffers_small_workspace_and_huge_sizes_are_typed_errors"

one() { # one TOOL TEST [MODE]: runs it, writes $out/TOOL-NAME[-MODE].log and its summary line
  # to .status. MODE: api-quiet:TEST (only TEST, API errors not reported; all of the file when
  # TEST is empty) or skip:TEST (all but TEST).
  local tool=$1 t=$2 mode=${3:-} name tag extra=() limit=() filter rc reports hazards errors status t0=$SECONDS
  name=$(basename "$t")
  tag=$name${mode:+-${mode%%:*}}
  [[ $tool == memcheck ]] && extra=(--leak-check full)
  [[ -n ${SANITIZE_TIMEOUT:-} ]] && limit=(timeout --signal=INT --kill-after=20 "$SANITIZE_TIMEOUT")
  local log="$out/$tool-$tag.log"
  # gpu_large's 2^31-element cases (minutes each even unsanitized) run as their harness: the
  # same code over every operator at a small scale.
  filter=${SANITIZE_FILTER:-}
  [[ $name == gpu_large ]] && filter=${SANITIZE_FILTER:-harness}
  case $mode in
  api-quiet:*)
    extra+=(--report-api-errors no)
    [[ -n ${mode#*:} ]] && filter="${mode#*:} --exact"
    ;;
  skip:*) filter="$filter --skip ${mode#*:}" ;;
  esac
  "${limit[@]}" "$sanitizer" --tool "$tool" --error-exitcode 99 "${extra[@]}" \
    "$t" --test-threads=1 $filter >"$log" 2>&1
  rc=$?
  # Belt and braces: a report line fails the run even if the exit status did not, and so do
  # racecheck's warnings (hazards it does not count as errors, e.g. a missing __syncwarp).
  reports=$(grep -E '^========= (Invalid|Race|Uninitialized|Barrier|Error|Warning|Program hit|Leaked)' "$log" |
    grep -vc 'SUMMARY')
  hazards=$(grep -oE 'RACECHECK SUMMARY: [0-9]+' "$log" | grep -oE '[0-9]+$' | sort -n | tail -1)
  errors=$(grep -oE 'ERROR SUMMARY: [0-9]+' "$log" | tail -1)
  local summed=$errors
  [[ -n $hazards ]] && errors="${errors:+$errors, }$hazards hazards"
  status=ok
  if [[ $rc -ne 0 || $reports -ne 0 || ${hazards:-0} -ne 0 ||
    (-n "$summed" && "$summed" != "ERROR SUMMARY: 0") ]]; then
    status=FAIL
    [[ $rc -eq 124 || $rc -eq 137 ]] && status=CUT
  fi
  printf '%-5s %-10s %-38s rc=%-3s %s (%d s)\n' "$status" "$tool" "$tag" "$rc" \
    "${errors:-no summary}" $((SECONDS - t0)) | tee "$out/$tool-$tag.status"
}
export -f one

# The longest runs first (memcheck on the H100, 7900c6c: gpu_soft > 400 s, gpu_cosformer 143,
# gpu_aft 88, gpu_sima 70, gpu_baseline 61, the rest ≤ 15), each test's tools together, so that
# side-by-side jobs do not end on one long tail.
slow="gpu_soft gpu_cosformer gpu_aft gpu_sima gpu_baseline"
ordered=()
for n in $slow; do [[ " ${tests[*]} " == *" tests/$n "* ]] && ordered+=("tests/$n"); done
for t in "${tests[@]}"; do [[ " $slow " == *" $(basename "$t") "* ]] || ordered+=("$t"); done
tests=("${ordered[@]}")

jobs() { # the runs, one line each: TOOL TEST [MODE]
  local tool t e
  for t in "${tests[@]}"; do
    for tool in ${SANITIZE_TOOLS:-memcheck racecheck initcheck synccheck}; do
      local name modes=("")
      name=$(basename "$t")
      for e in $expected_api_errors; do
        if [[ $e == "$name" ]]; then
          modes=(api-quiet:)
        elif [[ $e == "$name":* ]]; then
          modes=("skip:${e#*:}" "api-quiet:${e#*:}")
        fi
      done
      for m in "${modes[@]}"; do echo "$tool $t${m:+ $m}"; done
    done
  done
}
jobs | xargs -P "${SANITIZE_JOBS:-1}" -L 1 bash -c 'one "$@"' _
failed=()
while read -r tool t mode; do
  tag=$(basename "$t")${mode:+-${mode%%:*}}
  s="$out/$tool-$tag.status"
  if [[ -f $s ]]; then cat "$s" >>"$summary"; else echo "MISS  $tool $tag" >>"$summary"; fi
  [[ -f $s ]] && grep -q '^ok ' "$s" || failed+=("$tool-$tag")
  rm -f "$s"
done < <(jobs)
echo "=== failed: ${failed[*]:-none}" | tee -a "$summary"
[[ ${#failed[@]} -eq 0 ]]
