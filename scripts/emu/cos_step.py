"""Model of cosformer_step's thread mapping (kernels/cosformer.cu, cos_step): COS_THREADS / Dv
groups of Dv threads split the D state rows, each thread updates column t % Dv of its group's
rows, and the groups' partial numerators are added in group order. Checks, for odd and extreme
(D, Dv), that every state element is updated exactly once and that the state and the output equal
the direct formula. f64 arithmetic: the indexing is under test, not the rounding.

    python3 cos_step.py
"""
import numpy as np

THREADS = 256  # COS_THREADS


def step(st, q, k, v, d, dv, sn, cs, eps=1e-6):
    st = st.copy()
    ddv = d * dv
    st[2 * ddv:2 * ddv + d] += k * sn
    st[2 * ddv + d:] += k * cs
    den = max(sn * (q @ st[2 * ddv:2 * ddv + d]) + cs * (q @ st[2 * ddv + d:]), eps)
    groups = max(1, THREADS // dv)
    num = np.zeros((2, THREADS))
    writes = np.zeros(2 * ddv, int)
    for t in range(THREADS):
        e, g = t % dv, t // dv
        ns = nc = 0.0
        if g < groups:
            rows = -(-d // groups)
            for c in range(g * rows, min(d, (g + 1) * rows)):
                at = c * dv + e
                st[at] += k[c] * sn * v[e]
                st[ddv + at] += k[c] * cs * v[e]
                writes[at] += 1
                writes[ddv + at] += 1
                ns += q[c] * st[at]
                nc += q[c] * st[ddv + at]
        num[:, t] = ns, nc
    o = np.array([(sn * num[0, t::dv][:groups].sum() + cs * num[1, t::dv][:groups].sum()) / den
                  for t in range(dv)])
    return st, o, writes


def main():
    rng = np.random.default_rng(1)
    for d, dv in [(1, 1), (64, 64), (128, 128), (64, 80), (80, 200), (256, 256), (48, 3), (7, 129)]:
        ddv = d * dv
        st = rng.random(2 * ddv + 2 * d)
        q, k, v = rng.random(d), rng.random(d), rng.random(dv)
        sn, cs = 0.3, 0.9
        got, o, writes = step(st, q, k, v, d, dv, sn, cs)
        kvs = st[:ddv].reshape(d, dv) + np.outer(k * sn, v)
        kvc = st[ddv:2 * ddv].reshape(d, dv) + np.outer(k * cs, v)
        zs, zc = st[2 * ddv:2 * ddv + d] + k * sn, st[2 * ddv + d:] + k * cs
        want = (sn * (q @ kvs) + cs * (q @ kvc)) / max(sn * (q @ zs) + cs * (q @ zc), 1e-6)
        ok = ((writes == 1).all() and np.allclose(o, want) and np.allclose(got[:ddv], kvs.ravel())
              and np.allclose(got[ddv:2 * ddv], kvc.ravel()))
        print(f"{'PASS' if ok else 'FAIL'} D={d} Dv={dv}")
        assert ok


if __name__ == "__main__":
    main()
