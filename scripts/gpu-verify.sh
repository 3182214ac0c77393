#!/usr/bin/env bash
# Runs from a gpu-bundle/ folder (scripts/gpu-bundle.sh) on a machine with a GPU and the CUDA
# driver: every tests/gpu_* executable under compute-sanitizer memcheck, racecheck, initcheck
# and synccheck (--error-exitcode 99), one log per tool × test in $1 (default: $OUT/verify, else
# ./gpu-verify-out), plus summary.log with the device and commit. Exit status non-zero on any
# report or failure. Commit the output under bench/results/ (e.g. bench/results/gpu-verify-<commit>/).
#   (cd gpu-bundle && ./gpu-verify.sh /path/to/out)
# SANITIZE_FILTER: optional test-name filter passed to every test executable (gpu_large runs
# only its small-scale harness unless one is given).
set -uo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
out="${1:-${OUT:+$OUT/verify}}"
out="${out:-$here/gpu-verify-out}"
mkdir -p "$out"
cd "$here"

for d in /usr/local/cuda/lib64 /usr/local/cuda/targets/x86_64-linux/lib \
  $(python3 -c 'import nvidia, os; print(" ".join(os.path.join(p, "cu13", "lib") for p in nvidia.__path__))' 2>/dev/null); do
  [[ -d "$d" ]] && export LD_LIBRARY_PATH="$d:${LD_LIBRARY_PATH:-}"
done
sanitizer="$(command -v compute-sanitizer || ls /usr/local/cuda/bin/compute-sanitizer 2>/dev/null || true)"
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
if [[ ${#tests[@]} -eq 0 ]]; then
  echo "FAIL: no tests/gpu_* executables (run scripts/gpu-bundle.sh)" | tee -a "$summary"
  exit 2
fi
# A missing device fails instead of skipping.
export SOFA_REQUIRE_GPU=1
failed=()
for t in "${tests[@]}"; do
  name=$(basename "$t")
  for tool in memcheck racecheck initcheck synccheck; do
    extra=()
    [[ $tool == memcheck ]] && extra=(--leak-check full)
    log="$out/$tool-$name.log"
    t0=$SECONDS
    # gpu_large's 2^31-element cases (minutes each even unsanitized) run as their harness: the
    # same code over every operator at a small scale.
    filter=${SANITIZE_FILTER:-}
    [[ $name == gpu_large ]] && filter=${SANITIZE_FILTER:-harness}
    "$sanitizer" --tool "$tool" --error-exitcode 99 "${extra[@]}" \
      "$t" --test-threads=1 $filter >"$log" 2>&1
    rc=$?
    # Belt and braces: a report line fails the run even if the exit status did not.
    reports=$(grep -cE '^========= (Invalid|Race|Uninitialized|Barrier|Error|Program hit|Leaked|ERROR)' "$log")
    errors=$(grep -oE 'ERROR SUMMARY: [0-9]+' "$log" | tail -1)
    status=ok
    if [[ $rc -ne 0 || $reports -ne 0 || ( -n "$errors" && "$errors" != "ERROR SUMMARY: 0" ) ]]; then
      status=FAIL
      failed+=("$tool-$name")
    fi
    printf '%-5s %-10s %-28s rc=%-3s %s (%d s)\n' "$status" "$tool" "$name" "$rc" \
      "${errors:-no summary}" $((SECONDS - t0)) | tee -a "$summary"
  done
done
echo "=== failed: ${failed[*]:-none}" | tee -a "$summary"
[[ ${#failed[@]} -eq 0 ]]
