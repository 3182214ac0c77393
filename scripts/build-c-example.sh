#!/usr/bin/env bash
# Builds examples/c/sofa_example.c with gcc against include/sofa.h and libsofa (cargo feature
# `capi`), linked both ways: dynamically (libsofa.so) and statically (libsofa.a). Does not run it
# (that needs a GPU): run $CARGO_TARGET_DIR/c-example/sofa_example (default target/c-example/) afterwards; it prints "ok".
#   scripts/build-c-example.sh [--release]     (CARGO_TARGET_DIR is honoured)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

profile=debug
cargo_flags=()
if [[ "${1:-}" == "--release" ]]; then
    profile=release
    cargo_flags+=(--release)
fi
target_dir=${CARGO_TARGET_DIR:-target}
out=$target_dir/c-example

# The CUDA runtime headers and libcudart come from the pinned toolchain (or any CUDA_HOME).
if [[ -z "${CUDA_HOME:-}" || ! -f "${CUDA_HOME}/include/cuda_runtime.h" ]]; then
    eval "$(scripts/install-cuda-toolchain.sh --env)"
fi
cudart_dir=""
for d in "$CUDA_HOME/lib" "$CUDA_HOME/lib64" "$CUDA_HOME/targets/x86_64-linux/lib"; do
    if [[ -e "$d/libcudart.so" ]]; then
        cudart_dir=$d
        break
    fi
done
if [[ -z "$cudart_dir" ]]; then
    echo "libcudart.so not found under $CUDA_HOME" >&2
    exit 1
fi

cargo build --features capi --lib "${cargo_flags[@]}"
lib_dir=$target_dir/$profile
mkdir -p "$out"

cflags=(-std=c11 -O2 -Wall -Wextra -Werror -Iinclude "-I$CUDA_HOME/include")
gcc "${cflags[@]}" examples/c/sofa_example.c -o "$out/sofa_example" \
    "-L$lib_dir" -lsofa "-L$cudart_dir" -lcudart -lm \
    "-Wl,-rpath,$(cd "$lib_dir" && pwd)" "-Wl,-rpath,$cudart_dir"
gcc "${cflags[@]}" examples/c/sofa_example.c -o "$out/sofa_example_static" \
    "$lib_dir/libsofa.a" "-L$cudart_dir" -lcudart -lpthread -ldl -lm -lrt \
    "-Wl,-rpath,$cudart_dir"
echo "built $out/sofa_example (libsofa.so) and $out/sofa_example_static (libsofa.a)"
