#!/usr/bin/env bash
# Builds (with nvcc) the release `sofa` binary, the test executables and the benches, and copies
# them with run-gpu-checks.sh into gpu-bundle/ (ignored by git), so a GPU machine with the CUDA
# driver but no Rust toolchain can run the GPU tests, compute-sanitizer and benchmarks from that
# folder alone:   (cd gpu-bundle && ./run-gpu-checks.sh [OUT_DIR])
# The same folder packed as gpu-bundle.tar.xz is what fits a transfer to a lent GPU machine.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
eval "$(scripts/install-cuda-toolchain.sh --env)"
export SOFA_REQUIRE_NVCC=1
bundle="${SOFA_BUNDLE_DIR:-$root/gpu-bundle}"
rm -rf "$bundle" && mkdir -p "$bundle/tests" "$bundle/benches"

cargo build --release --bin sofa
cp "${CARGO_TARGET_DIR:-target}/release/sofa" "$bundle/"
# Test and bench executables: ask cargo where it put them.
for kind in tests benches; do
  if [[ $kind == tests ]]; then args=(test --release --no-run --tests --features capi); else args=(bench --no-run); fi
  cargo "${args[@]}" --message-format=json 2>/dev/null |
    python3 -c '
import json, sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["target"]["kind"] != ["bin"]:
        print(m["target"]["name"], m["executable"])
' | while read -r name exe; do
    # tests/cli runs the sofa binary at its build path and capi_header reads the source tree:
    # CPU tests for CI, not for the bundle.
    [[ $kind == tests && ($name == cli || $name == capi_header) ]] || cp "$exe" "$bundle/$kind/$name"
  done
done
# The C example (prints "ok" on a GPU) and the Rust embedding example.
CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-target}" scripts/build-c-example.sh --release >/dev/null
cp "${CARGO_TARGET_DIR:-target}/c-example/sofa_example_static" "$bundle/sofa_example"
cargo build --release --example embed_two_layer
cp "${CARGO_TARGET_DIR:-target}/release/examples/embed_two_layer" "$bundle/"
# Minimal forms of the synchronization patterns racecheck reported on (bench/NOTES.md).
nvcc -arch=sm_90a -std=c++17 -O2 -I kernels -L"$CUDA_HOME/lib" -o "$bundle/sanitizer_repro" scripts/sanitizer_repro.cu
strip "$bundle/sofa" "$bundle/sofa_example" "$bundle/sanitizer_repro" "$bundle/embed_two_layer" "$bundle"/tests/* "$bundle"/benches/* 2>/dev/null || true
cp scripts/run-gpu-checks.sh scripts/gpu-verify.sh scripts/gpu-env.sh scripts/torch_reference.py scripts/torch_ops.py "$bundle/"
# flash-linear-attention (pure Python + Triton) and what it imports, for torch_reference.py's
# cosformer_fla timings on a GPU machine that cannot reach PyPI (~1.2 MB).
python3 -m pip download --quiet --no-deps -d "$bundle/wheels" fla-core==0.6.0 einops==0.8.2 packaging==26.3 ||
  echo "note: no fla-core wheels in the bundle (offline?): cosformer_fla will be skipped" >&2
git rev-parse --short HEAD >"$bundle/COMMIT" 2>/dev/null || echo unknown >"$bundle/COMMIT"
# Every test binary embeds all fatbins (~23 MB each, 380 MB in all on 2026-11-23), far more than a
# 64 MiB transfer to a GPU machine carries. xz -9's 64 MiB dictionary finds each binary's fatbins
# again in the previous one: ~11 MB (the default -6, 8 MiB, gave 51 MB).
# There: mkdir b && tar xJf gpu-bundle.tar.xz -C b
XZ_OPT="-9 -T2" tar cJf "$bundle.tar.xz" -C "$bundle" .
du -sh "$bundle" "$bundle.tar.xz"
ls "$bundle" "$bundle/tests" "$bundle/benches"
