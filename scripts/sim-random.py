#!/usr/bin/env python3
"""Random differential runs of the GPU kernels on sofa-sim (sim/README.md) against the f64 reference.

Each case draws an operator, a shape (odd sizes, head dims on and off the tensor-core list, Dv ≠ D,
cross-attention lengths), a dtype, a layout (sometimes with NaN-filled gaps between rows, `--seq-pad`)
and the operator's parameters (sometimes invalid), and
runs `sofa run --backend gpu --check always` once. A case passes when the run checks PASS, or when
the parameters are invalid and sofa exits 1 with a typed `sofa: error: invalid …` message. Anything
else — a FAIL, a panic, a signal, a simulator fault (deadlock, shared access out of bounds, an
AddressSanitizer report), a timeout — is a finding: its command line goes to stdout and to
FINDINGS (default target/sim-random-findings.txt).

    python3 sim/build.py --asan --out target/sim-asan && cargo build --release
    python3 scripts/sim-random.py --sim target/sim-asan --asan --minutes 60 --seed 1

The same seed draws the same cases; `--case N` reruns case N of a seed alone and prints its
command. Needs the release `sofa` binary built with nvcc (the simulator loads its fatbins).
"""
import argparse
import os
import random
import shlex
import subprocess
import sys
import time

TC_DIMS = [32, 48, 64, 80, 96, 128]


def head_dim(r):
    if r.random() < 0.6:
        return r.choice(TC_DIMS)
    return r.choice([1, 2, 7, 16, 31, 33, 63, 65, 100, 127, 129, 160, 256])


def length(r, hi):
    pick = r.random()
    if pick < 0.15:
        return r.choice([1, 2, 3, 63, 64, 65, 127, 128, 129])
    return r.randint(1, hi)


def draw(r):
    """One case: (argument list, whether its parameters are valid by construction)."""
    op = r.choice(["sima", "cosformer", "cosformer", "soft", "soft", "aft_simple", "aft_local", "aft_conv",
                   "aft_full"])
    b, h = r.choice([1, 1, 2, 3]), r.choice([1, 2, 3, 5])
    d = head_dim(r)
    n = length(r, 3000 if op != "aft_full" else 1200)
    dv = d if r.random() < 0.75 else head_dim(r)
    dtype = r.choices(["f16", "bf16", "f32"], weights=[4, 3, 2])[0]
    args = ["--op", op, "--dtype", dtype, "--layout", r.choice(["bhnd", "bnhd"]), "--seed", str(r.randint(0, 999))]
    valid = True
    if op == "sima":
        pass
    elif op == "cosformer":
        causal = r.random() < 0.5
        if causal:
            args.append("--causal")
            if r.random() < 0.05:  # causal needs S = N
                args += ["--kv-len", str(n + 1)]
                valid = False
        elif r.random() < 0.4:
            args += ["--kv-len", str(length(r, 3000))]
        s = int(args[args.index("--kv-len") + 1]) if "--kv-len" in args else n
        if r.random() < 0.3:
            big_m = r.randint(1, 2 * max(n, s) + 2)
            valid = valid and big_m >= max(n, s)
            args += ["--M", str(big_m)]
        if r.random() < 0.2:
            args.append("--no-relu")
        if r.random() < 0.1:
            eps = r.choice([1e-3, 0.0, -1e-6])
            args.append(f"--eps={eps}")
            valid = valid and eps > 0
    elif op == "soft":
        dv = d  # SOFT's value dim follows Q's in `sofa run`'s random inputs
        if r.random() < 0.15:
            args += ["--landmarks", "avgpool2d"]
            side = r.randint(1, 40)
            width = r.randint(1, 40)
            n = side * width
            pool = r.choice([1, 2, 3, 4])
            args += ["--height", str(side), "--pool", str(pool)]
            m = (side // pool) * (width // pool)  # SPEC §1.2: floor(height/r)·floor(width/r)
            valid = 1 <= m <= min(n, 256)
        else:
            m = r.choice([1, 7, 49, 64, 100, 128, 256]) if r.random() < 0.6 else r.randint(1, 300)
            valid = m <= min(n, 256)
            args += ["--m", str(m)]
        if r.random() < 0.3:
            args.append("--untied")
        if r.random() < 0.2:
            t = r.randint(0, 30)
            valid = valid and t > 0
            args += ["--newton-iters", str(t)]
        if r.random() < 0.1:
            ridge = r.choice([0.0, 0.1, -0.01])
            args.append(f"--ridge={ridge}")
            valid = valid and ridge >= 0
    else:
        dv = d  # AFT is elementwise per channel: V has Q's head dim
        if r.random() < 0.5:
            args.append("--causal")
        if op in ("aft_local", "aft_conv"):
            s = r.choice([1, 2, 17, 64, 65, 129, n, n + 5]) if r.random() < 0.7 else r.randint(0, n + 10)
            valid = s >= 1
            args += ["--window", str(s)]
    if r.random() < 0.3:  # rows apart, NaN in the gaps: reads and writes of them fail the run
        args += ["--seq-pad", str(r.choice([1, 3, 8, 64]))]
    args += ["--shape", f"{b},{h},{n},{d}"]
    if dv != d:
        args += ["--dv", str(dv)]
    return args, valid


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sim", default="target/sim", help="simulator build folder (python3 sim/build.py --out …)")
    ap.add_argument("--asan", action="store_true", help="the folder is an --asan build: preload ASan's runtime")
    ap.add_argument("--sofa", default=os.path.join(os.environ.get("CARGO_TARGET_DIR", "target"), "release", "sofa"))
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--cases", type=int, default=10**9)
    ap.add_argument("--minutes", type=float, default=30.0)
    ap.add_argument("--case", type=int, help="rerun only this case of the seed")
    ap.add_argument("--timeout", type=int, default=900, help="seconds per case")
    ap.add_argument("--findings", default="target/sim-random-findings.txt")
    a = ap.parse_args()

    env = dict(os.environ, SOFA_KERNELS="fatbin", SOFA_REQUIRE_GPU="1")
    env["LD_LIBRARY_PATH"] = os.path.abspath(a.sim) + (":" + env["LD_LIBRARY_PATH"] if env.get("LD_LIBRARY_PATH") else "")
    if a.asan:
        lib = subprocess.run(["g++", "-print-file-name=libasan.so"], capture_output=True, text=True).stdout.strip()
        env["LD_PRELOAD"] = lib
        env["ASAN_OPTIONS"] = "detect_leaks=0:abort_on_error=1"
    r = random.Random(a.seed)
    deadline = time.time() + 60 * a.minutes
    counts = {"pass": 0, "typed error": 0, "finding": 0}
    i = 0
    while i < a.cases and (a.case is not None or time.time() < deadline):
        args, valid = draw(r)
        i += 1
        if a.case is not None and i != a.case:
            continue
        cmd = [a.sofa, "run", "--backend", "gpu", "--iters", "1", "--warmup", "0", "--check", "always"] + args
        t0 = time.time()
        try:
            p = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=a.timeout)
            rc, out = p.returncode, p.stdout + p.stderr
        except subprocess.TimeoutExpired:
            rc, out = "timeout", ""
        if rc == 0 and ": PASS" in out and valid:
            verdict = "pass"
        elif rc == 1 and "sofa: error: invalid" in out and not valid:
            verdict = "typed error"
        else:
            verdict = "finding"
        counts[verdict] += 1
        line = f"case {i} [{verdict}] rc={rc} {time.time() - t0:.1f}s: {shlex.join(args)}"
        print(line, flush=True)
        if verdict == "finding":
            tail = "\n".join(out.strip().splitlines()[-12:])
            print(tail, flush=True)
            with open(a.findings, "a") as f:
                f.write(f"seed {a.seed} {line}\n{tail}\n\n")
        if a.case is not None:
            break
    print(f"seed {a.seed}: {i} cases drawn; " + ", ".join(f"{k} {v}" for k, v in counts.items()), flush=True)
    sys.exit(1 if counts["finding"] else 0)


if __name__ == "__main__":
    main()
