"""Thread-level check of soft_landmarks' 1-D vector path (kernels/soft.cu): every (row, channel)
of each segment is summed exactly once, by the thread and in the order the kernel uses, and the
result matches the f64 mean within fp32 rounding. The 2-D / unaligned path is the unchanged
warp-strided loop.
    python3 landmarks.py
"""
import numpy as np

THREADS, V = 256, 8


def landmark(k, begin, count, d):
    """Returns the fp32 sums of rows [begin, begin + count) as the kernel forms them, and how many
    times each (row, channel) was read."""
    vpr = d // V
    rl = THREADS // max(vpr, 1)
    seen = np.zeros((count, d), np.int64)
    part = np.zeros((rl, d), np.float32)
    for t in range(THREADS):
        lr, cv = t // vpr, t % vpr
        if lr >= rl:
            continue
        acc = np.zeros(V, np.float32)
        e = lr
        while e + 3 * rl < count:  # four rows per step, added in row order
            for u in range(4):
                row = e + u * rl
                seen[row, cv * V:(cv + 1) * V] += 1
                acc = (acc + k[begin + row, cv * V:(cv + 1) * V]).astype(np.float32)
            e += 4 * rl
        while e < count:
            seen[e, cv * V:(cv + 1) * V] += 1
            acc = (acc + k[begin + e, cv * V:(cv + 1) * V]).astype(np.float32)
            e += rl
        part[lr, cv * V:(cv + 1) * V] = acc
    s = np.zeros(d, np.float32)
    for w in range(rl):  # row lanes in order
        s = (s + part[w]).astype(np.float32)
    return s, seen


def main():
    rng = np.random.default_rng(5)
    fails = 0
    for n, m, d in [(1, 1, 8), (7, 7, 8), (49, 7, 16), (1000, 49, 64), (4097, 64, 64), (4097, 256, 48),
                    (65536, 64, 64), (1000, 100, 128), (300, 3, 256), (64, 64, 32)]:
        k = rng.standard_normal((n, d)).astype(np.float16).astype(np.float32)
        worst = 0.0
        for j in range(m):
            begin = j * n // m
            count = (j + 1) * n // m - begin
            s, seen = landmark(k, begin, count, d)
            if not (seen == 1).all():
                fails += 1
                print(f"FAIL n={n} m={m} d={d} j={j}: coverage {seen.min()}..{seen.max()}")
                break
            ref = k[begin:begin + count].astype(np.float64).sum(0)
            worst = max(worst, float(np.abs(s - ref).max() / max(np.abs(k[begin:begin + count]).sum(0).max(), 1e-30)))
        ok = worst < 1e-5
        fails += not ok
        print(f"{'PASS' if ok else 'FAIL'} n={n} m={m} d={d}: every element once, worst |Δ|/Σ|k| {worst:.1e}")
    print("ALL PASS" if not fails else f"{fails} FAILED")


if __name__ == "__main__":
    main()
