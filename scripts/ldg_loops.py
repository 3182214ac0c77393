"""Global loads per loop of a kernel's SASS (sm_90a): the check behind bench/NOTES.md's "prologues
that waited out one L2 round trip per value". A loop with few LDG per iteration whose loaded values
are consumed in the same iteration (a copy into shared memory, an atomicMax, a reduction chain)
issues its next loads only after the previous ones return: each iteration costs an L2 or DRAM
round trip (≈ 300 or ≈ 600 clocks). Listed: every loop with an LDG, its instructions and LDG
per iteration; `*` marks loops with fewer than 8 LDG, the ones to read (hot loops with cp.async
or look-ahead loads are fine with few).
    eval "$(SOFA_WITH_SASS_TOOLS=1 scripts/install-cuda-toolchain.sh --env)"
    python3 scripts/ldg_loops.py soft.cu soft_pass2_tc64_f16 [more functions of the same file]
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from hot_loops import sass  # noqa: E402
from sass_loops import loops  # noqa: E402


def main():
    if len(sys.argv) < 3:
        sys.exit(__doc__)
    src = sys.argv[1]
    for fun in sys.argv[2:]:
        for lo, hi, n, ops in loops(sass([], src, fun), min_len=0):
            ldg = ops["LDG"]
            if ldg:
                mark = "*" if ldg < 8 else " "
                print(f"{mark} {fun} loop {lo:x}-{hi:x}: {n} instr, LDG {ldg}, ATOMS {ops['ATOMS']}, "
                      f"STS {ops['STS']}")


if __name__ == "__main__":
    main()
