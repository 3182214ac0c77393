"""Shared-memory wavefronts against issue slots, per loop of a kernel's SASS (sm_90a): the count
behind bench/NOTES.md's "shared-memory bound" remarks. A wavefront is 128 bytes, one per SM clock;
the count assumes no bank conflicts and no broadcasts: LDSM .x4/.x2/.x1 = 4/2/1, LDS/STS and
cp.async (LDGSTS) 128/64/≤32-bit = 4/2/1. With every warp of the SM in the same loop, the loop
is bound by shared memory when its wavefronts exceed a quarter of its instructions (four issues
per SM clock): `ratio` > 1. Loops with tensor-core instructions (HMMA) only, or all with --all.
    eval "$(SOFA_WITH_SASS_TOOLS=1 scripts/install-cuda-toolchain.sh --env)"
    python3 scripts/smem_wavefronts.py soft.cu soft_pass1_tc64_f16 [--all]
"""
import collections
import os
import re
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from hot_loops import sass  # noqa: E402
from sass_loops import loops  # noqa: E402


def body(text, lo, hi):
    """Opcodes (predicates stripped) of the instructions at addresses [lo, hi]."""
    out = []
    for line in text.splitlines():
        m = re.match(r'\s*/\*([0-9a-f]{4,})\*/\s+(.*?);', line)
        if m and lo <= int(m.group(1), 16) <= hi:
            out.append(re.sub(r'^@!?U?P\w+\s+', '', m.group(2)).split()[0])
    return out


def wavefronts(ops):
    """(wavefronts, Counter of the shared-memory opcodes) of a list of opcodes."""
    total, seen = 0, collections.Counter()
    for op in ops:
        if op.startswith('LDSM'):
            n = 4 if '.4' in op else 2 if '.2' in op else 1
        elif op.startswith(('LDS', 'STS', 'LDGSTS')):
            n = 4 if '.128' in op else 2 if '.64' in op else 1
        else:
            continue
        seen[op] += 1
        total += n
    return total, seen


def main():
    args = [a for a in sys.argv[1:] if not a.startswith('--')]
    if len(args) != 2:
        sys.exit(__doc__)
    text = sass([], *args)
    for lo, hi, n, ops in loops(text):
        if ops['HMMA'] or '--all' in sys.argv:
            w, seen = wavefronts(body(text, lo, hi))
            print(f"loop {lo:x}-{hi:x}: {n} instr, HMMA {ops['HMMA']}, {w} wavefronts, ratio {w / (n / 4):.2f}")
            print('   ', ', '.join(f'{k}:{v}' for k, v in seen.most_common()))


if __name__ == "__main__":
    main()
