"""Model of cosformer_step's thread mapping (kernels/cosformer.cu, cos_step / cos_step_rows): row
groups split the D state rows; within a group a thread updates VEC adjacent columns of each of its
rows (VEC = 4 where Dv % 4 == 0 and the slices' state is 16-byte aligned, else 1), in batches of 4
rows; the groups' partial numerators are added in group order. Checks, for odd and extreme
(D, Dv) and both VEC, that every state element is updated exactly once, that no partial numerator
slot is written twice or read unwritten, and that the state and the output equal the direct
formula. f64 arithmetic: the indexing is under test, not the rounding.

    python3 cos_step.py
"""
import numpy as np

THREADS = 256  # COS_THREADS
STEP_VEC, STEP_ROWS = 4, 4  # COS_STEP_VEC, COS_STEP_ROWS


def step(st, q, k, v, d, dv, sn, cs, vec, eps=1e-6):
    st = st.copy()
    ddv = d * dv
    st[2 * ddv:2 * ddv + d] += k * sn
    st[2 * ddv + d:] += k * cs
    den = max(sn * (q @ st[2 * ddv:2 * ddv + d]) + cs * (q @ st[2 * ddv + d:]), eps)
    lanes = dv // vec
    groups = max(1, THREADS // lanes)
    num = np.full((2, STEP_VEC * THREADS), np.nan)
    num_writes = np.zeros(STEP_VEC * THREADS, int)
    writes = np.zeros(2 * ddv, int)
    for t in range(THREADS):
        e, g = vec * (t % lanes), t // lanes
        ns, nc = np.zeros(vec), np.zeros(vec)
        if g < groups and e < dv:
            rows = -(-d // groups)
            c_end = min(d, (g + 1) * rows)
            for c0 in range(g * rows, c_end, STEP_ROWS):
                for c in range(c0, min(c0 + STEP_ROWS, c_end)):
                    for j in range(vec):
                        at = c * dv + e + j
                        st[at] += k[c] * sn * v[e + j]
                        st[ddv + at] += k[c] * cs * v[e + j]
                        writes[at] += 1
                        writes[ddv + at] += 1
                        ns[j] += q[c] * st[at]
                        nc[j] += q[c] * st[ddv + at]
        if g < groups:
            for j in range(vec):
                if e + j >= dv:
                    break
                num[:, g * dv + e + j] = ns[j], nc[j]
                num_writes[g * dv + e + j] += 1
    assert (num_writes <= 1).all(), "a partial numerator written twice"
    used = num[:, :groups * dv]
    assert not np.isnan(used).any(), "a partial numerator read unwritten"
    o = np.array([(sn * num[0, t:groups * dv:dv].sum() + cs * num[1, t:groups * dv:dv].sum()) / den
                  for t in range(dv)])
    return st, o, writes


def main():
    rng = np.random.default_rng(1)
    for d, dv in [(1, 1), (64, 64), (128, 128), (64, 80), (80, 200), (256, 256), (48, 3), (7, 129), (3, 4),
                  (256, 4), (5, 252)]:
        for vec in (1, STEP_VEC) if dv % STEP_VEC == 0 else (1,):
            ddv = d * dv
            st = rng.random(2 * ddv + 2 * d)
            q, k, v = rng.random(d), rng.random(d), rng.random(dv)
            sn, cs = 0.3, 0.9
            got, o, writes = step(st, q, k, v, d, dv, sn, cs, vec)
            kvs = st[:ddv].reshape(d, dv) + np.outer(k * sn, v)
            kvc = st[ddv:2 * ddv].reshape(d, dv) + np.outer(k * cs, v)
            zs, zc = st[2 * ddv:2 * ddv + d] + k * sn, st[2 * ddv + d:] + k * cs
            want = (sn * (q @ kvs) + cs * (q @ kvc)) / max(sn * (q @ zs) + cs * (q @ zc), 1e-6)
            ok = ((writes == 1).all() and np.allclose(o, want) and np.allclose(got[:ddv], kvs.ravel())
                  and np.allclose(got[ddv:2 * ddv], kvc.ravel()))
            print(f"{'PASS' if ok else 'FAIL'} D={d} Dv={dv} VEC={vec}")
            assert ok


if __name__ == "__main__":
    main()
