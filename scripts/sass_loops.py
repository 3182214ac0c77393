"""Per-loop opcode histograms of a kernel's SASS: the issue-slot counts quoted in bench/NOTES.md.
Every backward branch delimits a loop; loops over 30 instructions are printed with their
instruction count, HMMA / LDSM / MUFU counts and the most frequent opcodes. A loop's count is
static: branches inside it (rare paths, unchecked vs checked forms) are counted once each; the
hot path of a kernel with uniform fast-path branches is measured on a copy compiled with those
conditions forced (scripts/hot_loops.py does that for the kernels NOTES quotes).
    eval "$(SOFA_WITH_SASS_TOOLS=1 scripts/install-cuda-toolchain.sh --env)"
    nvcc -arch=sm_90a -cubin -O3 -std=c++17 -o /tmp/aft.cubin kernels/aft.cu
    cuobjdump -sass -fun aft_window_tc_f16 /tmp/aft.cubin > /tmp/k.sass   # cuobjdump 13.x
    python3 scripts/sass_loops.py /tmp/k.sass
"""
import collections
import re
import sys


def loops(sass_text, min_len=30):
    """[(start, end, instruction count, opcode Counter)] of every backward-branch loop."""
    ins = []
    for l in sass_text.splitlines():
        m = re.match(r'\s*/\*([0-9a-f]{4,})\*/\s+(.*?);', l)
        if m:
            ins.append((int(m.group(1), 16), m.group(2)))
    addr = {a: i for i, (a, _) in enumerate(ins)}
    out = []
    for i, (a, t) in enumerate(ins):
        m2 = re.search(r'0x([0-9a-f]+)', t) if 'BRA' in t else None
        if m2:
            tgt = int(m2.group(1), 16)
            if tgt < a and tgt in addr:
                body = ins[addr[tgt]:i + 1]
                c = collections.Counter()
                for _, x in body:
                    x = re.sub(r'^@!?U?P\w+\s+', '', x)
                    c[x.split()[0].split('.')[0]] += 1
                if len(body) > min_len:
                    out.append((tgt, a, len(body), c))
    return out


def main():
    for tgt, a, n, c in loops(open(sys.argv[1]).read()):
        print(f"loop {tgt:x}-{a:x}: {n} instr; HMMA {c['HMMA']} LDSM {c['LDSM']} MUFU {c['MUFU']}")
        print('   ', ', '.join(f'{k}:{v}' for k, v in c.most_common(25)))


if __name__ == "__main__":
    main()
