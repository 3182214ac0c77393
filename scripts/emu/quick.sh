#!/usr/bin/env bash
# The quick modes of every kernel emulator (numpy, no GPU; ~1 minute): cosFormer tensor-core
# passes (incl. the one-launch cluster paths), SOFT tensor-core passes and the Newton st.async
# all-gather's ordering under random schedules, AFT (CUDA-core f32 and
# tensor-core f16/bf16 window kernels, the AFT-full GEMM). Exit status non-zero if any case fails.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
(cd "$here" && python3 run.py quick && python3 cos_step.py)
(cd "$here/soft" && python3 run_soft.py quick && python3 newton_async.py 60)
(cd "$here/aft" && python3 run_aft.py order && python3 run_aft.py quick && python3 run_aft.py gemm)
