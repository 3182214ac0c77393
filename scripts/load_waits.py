"""Memory-level parallelism of each loop in a cubin's SASS: per loop body (a backward branch), the
global loads (LDG) and the 'waits', instructions that read a register an LDG in flight writes.
Loads per wait near 1 means every load is a full memory round trip before the next one issues
(bench/NOTES.md, session 12: the decode step, the scans, the AFT staging and streaming passes).
Static and approximate (branches are read as straight-line code), so a flag is a place to look.

    eval "$(SOFA_WITH_SASS_TOOLS=1 scripts/install-cuda-toolchain.sh --env)"
    nvcc -cubin -arch=sm_90a -O3 -std=c++17 -o /tmp/aft.cubin kernels/aft.cu
    python3 scripts/load_waits.py /tmp/aft.cubin ['kernel-name regex']
"""
import re
import subprocess
import sys


def functions(cubin):
    out = subprocess.run(["cuobjdump", "-sass", cubin], capture_output=True, text=True, check=True).stdout
    funcs, cur = {}, None
    for line in out.splitlines():
        m = re.search(r"Function : (\S+)", line)
        if m:
            cur = m.group(1)
            funcs[cur] = []
            continue
        m = re.match(r"\s+/\*([0-9a-f]{4,})\*/\s+(.*?);", line)
        if m and cur:
            funcs[cur].append((int(m.group(1), 16), m.group(2).strip()))
    return funcs


def loop_stats(instrs):
    """(first, last address, instructions, loads, waits) of every loop body."""
    out = []
    for addr, ins in instrs:
        m = re.search(r"BRA 0x([0-9a-f]+)", ins)
        if not (m and int(m.group(1), 16) < addr):
            continue
        lo = int(m.group(1), 16)
        body = [s for a, s in instrs if lo <= a <= addr]
        pending, loads, waits = set(), 0, 0
        for s in body:
            s = re.sub(r"^@!?U?P\w+\s+", "", s)
            op = s.split()[0]
            args = s[len(op):].split(",")
            reads = args if op.startswith(("ST", "RED", "ATOM")) else args[1:]
            if pending & set(re.findall(r"\bR\d+\b", " ".join(reads))):
                waits += 1
                pending.clear()
            if op.startswith("LDG"):
                first = int(re.match(r"\s*R(\d+)", args[0]).group(1)) if re.match(r"\s*R\d+", args[0]) else None
                if first is not None:
                    width = 4 if ".128" in op else 2 if ".64" in op else 1
                    pending |= {f"R{first + i}" for i in range(width)}
                loads += 1
        if loads:
            out.append((lo, addr, len(body), loads, waits))
    return out


def main():
    pat = re.compile(sys.argv[2]) if len(sys.argv) > 2 else None
    for name, instrs in sorted(functions(sys.argv[1]).items()):
        if pat and not pat.search(name):
            continue
        for lo, hi, n, loads, waits in loop_stats(instrs):
            lpw = loads / max(waits, 1)
            flag = "  <-- one round trip per load or two" if lpw < 2 and loads >= 2 else ""
            print(f"{name:45s} loop {lo:05x}-{hi:05x} {n:5d} instr {loads:3d} LDG {waits:3d} waits {lpw:5.1f}/wait{flag}")


if __name__ == "__main__":
    main()
