"""The hot-path instruction counts quoted in bench/NOTES.md, reproduced: each kernel is compiled
(sm_90a, f16) from a temporary copy of kernels/ with its uniform fast-path conditions forced
(the substitutions below: fast staging forms, no masked or non-finite block, a fixed row tile),
and the loops of its SASS are counted with scripts/sass_loops.py. Counts are per warp.
    eval "$(SOFA_WITH_SASS_TOOLS=1 scripts/install-cuda-toolchain.sh --env)"
    python3 scripts/hot_loops.py          # ~1 minute
"""
import os
import re
import shutil
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from sass_loops import loops  # noqa: E402

KERNELS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "kernels")


def sass(subs, src, fun):
    """SASS of `fun` from `src` after the (file, old, new) substitutions (each must apply)."""
    with tempfile.TemporaryDirectory() as d:
        k = os.path.join(d, "k")
        shutil.copytree(KERNELS, k)
        for f, old, new in subs:
            p = os.path.join(k, f)
            s = open(p).read()
            n = len(re.findall(old, s))
            if n == 0:
                sys.exit(f"substitution no longer applies in {f}: {old!r} (update scripts/hot_loops.py)")
            open(p, "w").write(re.sub(old, new, s))
        cubin = os.path.join(d, "k.cubin")
        subprocess.run(["nvcc", "-arch=sm_90a", "-cubin", "-O3", "-std=c++17", "-o", cubin, src], cwd=k,
                       check=True, capture_output=True)
        return subprocess.run(["cuobjdump", "-sass", "-fun", fun, cubin], check=True, capture_output=True,
                              text=True).stdout


def with_hmma(text, n):
    """Instruction counts of the loops with exactly n HMMA, innermost (shortest) first."""
    return sorted(c for _, _, c, h in loops(text) if h["HMMA"] == n)


AFT_FAST = [
    ("aft_tc.cuh", re.escape("return e.pair && kb + AFT_KB <= hi\n"), "return true\n"),
    ("aft_tc.cuh", re.escape("if (kb + AFT_KB <= hi && t0 + AFT_CHUNK <= p.t && (!p.causal || kb + AFT_KB - 1 <= t0))"),
     "if (true)"),
    ("aft_tc.cuh", re.escape("if (p.variant == AFT_SIMPLE) {"), "if (false) {"),
    ("aft_tc.cuh", re.escape("if (p.causal && kb + KB - 1 > t0 && any_bad) {"), "if (false) {"),
]


# AFT-full's GEMM: unchecked w loads and exps, no poisoned causal block, no reference moves.
FULL_FAST = [
    ("aft_full_tc.cuh", re.escape("return w.pairs && w.r0 + 16 * SLOTS <= p.t && kb + AFT_FG_KB <= p.t;"), "return true;"),
    ("aft_full_tc.cuh", re.escape("return kb + AFT_FG_KB <= p.t && (!p.causal || kb + AFT_FG_KB - 1 <= w.r0);"),
     "return true;"),
    ("aft_full_tc.cuh", re.escape("if (p.causal && i * KB + KB - 1 > t0 && __syncthreads_or("), "if (false && ("),
    ("aft_full_tc.cuh", re.escape("if (kb + AFT_FG_KB <= p.t) {"), "if (true) {"),
    # the move check and the rescale's flag test stay, their rare bodies become one store
    ("aft_full_tc.cuh", re.escape("aft_fg_move<T, SLOTS, CL>(p, w.r0, rows0, kb, wr, rcf, ap, mv, st, tok);"), "ap[0] = 0;"),
    ("aft_full_tc.cuh", re.escape("== tok)) return;"), "== tok)) return;\n  num[0][0][0] = 0.f;\n  return;"),
]


def main():
    print("AFT window, one 32-key block (32 HMMA):")
    for fun in ("aft_window_tc_f16", "aft_window_band_tc_f16", "aft_window_band_conv_tc_f16"):
        print(f"  {fun:30s} {with_hmma(sass(AFT_FAST, 'aft.cu', fun), 32)[0]}")

    print("AFT-full GEMM, one 32-key block (64 HMMA):")
    for fun in ("aft_full_tc_f16", "aft_full_tc_cl_f16"):
        print(f"  {fun:30s} {with_hmma(sass(FULL_FAST, 'aft.cu', fun), 64)[0]}")

    print("cosFormer causal pass, per 64-row block (row-block loop + 3 more state-update steps):")
    # D = 128: each of the two CTAs per chunk has 64 value columns; its update of 16 keys is 18 HMMA.
    for d, update_hmma in ((64, 10), (128, 18)):
        for rt in range(4):
            subs = [("cosformer_tc_causal.cuh", re.escape("if (__any_sync(0xffffffffu, poisoned))"), "if (false)"),
                    ("cosformer_tc_causal.cuh", r"const int eh = warp / 4, rt = [^,]*,", f"const int eh = warp / 4, rt = {rt},"),
                    ("cosformer_tc_causal.cuh", re.escape("if (p.relu) {"), "if (true) {")]
            text = sass(subs, "cosformer.cu", f"cosformer_causal_tc{d}_f16")
            update = with_hmma(text, update_hmma)[0]  # the state update of 16 keys
            block = min(c for _, _, c, h in loops(text) if h["HMMA"] > update_hmma)  # the row-block loop
            print(f"  D = {d}, rt = {rt}: {block} + 3 × {update} = {block + 3 * update}")

    print("cosFormer reduce, per 16 keys:")
    for exact in (0, 1):
        subs = [("cosformer_tc_frag.cuh", re.escape("if (p.exact_state)"), f"if ({exact})")]
        text = sass(subs, "cosformer.cu", "cosformer_reduce_tc64_f16")
        print(f"  exact_state = {exact}: {loops(text)[0][2]}")


if __name__ == "__main__":
    main()
