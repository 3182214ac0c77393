# Sourced (with `here` set to the bundle folder) by the scripts that run from a gpu-bundle/ folder
# on a GPU machine: the environment its test and bench executables need, and the sanitizer.
# NVRTC and its builtins: the toolkit's lib dir, or the pip wheel beside a Python install.
for d in /usr/local/cuda/lib64 /usr/local/cuda/targets/x86_64-linux/lib \
  $(python3 -c 'import nvidia, os; print(" ".join(os.path.join(p, "cu13", "lib") for p in nvidia.__path__))' 2>/dev/null); do
  [[ -d "$d" ]] && export LD_LIBRARY_PATH="$d:${LD_LIBRARY_PATH:-}"
done
sanitizer="$(command -v compute-sanitizer || ls /usr/local/cuda/bin/compute-sanitizer 2>/dev/null || true)"
# A missing device fails instead of skipping.
export SOFA_REQUIRE_GPU=1
# gpu_bench runs the CLI: the bundle's binary, not cargo's build path.
export SOFA_BIN="$here/sofa"
