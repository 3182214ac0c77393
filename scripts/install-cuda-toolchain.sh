#!/usr/bin/env bash
# Installs the pinned CUDA 13.0 compiler (nvcc, NVRTC, headers) from PyPI into .cuda-toolchain/
# (ignored by git) and prints the CUDA_HOME to use. CUDA 13.0 matches the GPU machines' driver:
# PTX from a newer toolkit will not load there. Idempotent: a second run only checks the stamp.
#
#   eval "$(scripts/install-cuda-toolchain.sh --env)"   # exports CUDA_HOME, PATH, NVCC
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
prefix="${SOFA_TOOLCHAIN_DIR:-$root/.cuda-toolchain}"
packages=(
  nvidia-cuda-nvcc==13.0.88
  nvidia-cuda-crt==13.0.88
  nvidia-nvvm==13.0.88
  nvidia-cuda-cccl==13.0.85
  nvidia-cuda-runtime==13.0.96
  nvidia-cuda-nvrtc==13.0.88
)
# Optional, for reading SASS offline (no 13.0 builds exist; 13.2 reads 13.0 binaries).
sass_tools=(nvidia-cuda-cuobjdump==13.2.51 nvidia-cuda-nvdisasm==13.2.51)

want="${packages[*]}"
[[ "${SOFA_WITH_SASS_TOOLS:-0}" == 1 ]] && want="$want ${sass_tools[*]}"
stamp="$prefix/.installed"
cuda_home="$prefix/nvidia/cu13"

if [[ ! -f "$stamp" || "$(cat "$stamp")" != "$want" || ! -x "$cuda_home/bin/nvcc" ]]; then
  python="${PYTHON:-$(command -v python3 || command -v python)}"
  echo "installing CUDA 13.0 toolchain into $prefix" >&2
  # shellcheck disable=SC2086
  "$python" -m pip install --quiet --disable-pip-version-check --no-warn-script-location \
    --upgrade --target "$prefix" $want >&2
  # nvcc looks for its crt/nvvm next to itself; the wheels put them in the shared cu13 tree.
  echo "$want" >"$stamp"
fi

# The wheels ship the versioned runtime/NVRTC libraries; give the linker-style names too.
for lib in cudart nvrtc; do
  so=$(ls "$cuda_home/lib/lib$lib.so."* 2>/dev/null | head -n1 || true)
  [[ -n "$so" && ! -e "$cuda_home/lib/lib$lib.so" ]] && ln -s "$(basename "$so")" "$cuda_home/lib/lib$lib.so"
done

if [[ "${1:-}" == "--env" ]]; then
  echo "export CUDA_HOME='$cuda_home'"
  echo "export NVCC='$cuda_home/bin/nvcc'"
  echo "export PATH='$cuda_home/bin':\"\$PATH\""
  echo "export LD_LIBRARY_PATH='$cuda_home/lib':\"\${LD_LIBRARY_PATH:-}\""
else
  echo "$cuda_home"
fi
