"""Model of newton_pinv_cl_f32 (kernels/newton.cu) against newton_pinv_t64_f32 (newton_smem): the
cluster form splits the rows of both products over 8 CTAs (rb = ⌈m/8⌉ rows each; 4 warps, thread t
of lane l = t % 32: rows 2·(l / 8) and + 1, columns 16·(t / 32) + 2·(l % 8) and + 1) and all-gathers the new rows of Z into the other of two Z
buffers of every CTA, one cluster barrier per step; both sum every product over k in increasing
order with fp32 FMAs, so Z must be bit-identical.
Checks, for m ∈ {1 … 64}: every (row, column) of Z updated by exactly one thread of one CTA per
step; under the split barrier (arrive after the stores, wait only before the second product) and
an adversarial CTA order, every read sees the current step's values (the first product only the
CTA's own rows); the cluster result equal bit for bit to the one-CTA result.
newton_pinv_cl_late_f32 arrives only after phase A of the next step: the orders it allows are a
subset of the ones modelled here (every CTA's phase A of k + 1 before any phase B of k + 1).
    python3 newton_cluster.py
"""
import numpy as np

F32, F64 = np.float32, np.float64
CL, THREADS = 8, 128


def fma(a, b, c):  # fp32 fmaf: exact product, one rounding
    return (F64(a) * F64(b) + F64(c)).astype(F32)


def alpha_of(ah, m, c):  # newton_alpha: warp row sums (lane-strided, then a shuffle tree)
    rows = []
    for r in range(m):
        lanes = np.zeros(32, F32)
        for j in range(m):
            lanes[j % 32] = F32(lanes[j % 32] + ah[r, j])
        for off in (16, 8, 4, 2, 1):
            lanes = (lanes + lanes[np.arange(32) ^ off]).astype(F32)
        rows.append(lanes[0])
    mx = rows[0]
    for v in rows[1:]:
        mx = max(mx, v)
    return F32(F32(c * F32(2)) / F32(mx * mx))


def init(a, m, ridge, c):
    ah = a.astype(F32).copy()
    al = alpha_of(ah, m, c)
    ah = (ah + np.eye(m, dtype=F32) * F32(ridge)).astype(F32)
    return ah, (al * ah).astype(F32)


def one_cta(a, m, iters, ridge=0.01, c=0.9):
    ah, z = init(a, m, ridge, c)
    for _ in range(iters):
        t = np.zeros((m, m), F32)
        for k in range(m):
            t = fma(z[:, k:k + 1], ah[k:k + 1, :], t)
        u = np.zeros((m, m), F32)
        for k in range(m):
            u = fma(t[:, k:k + 1], z[k:k + 1, :], u)
        z = (F32(2) * z - u).astype(F32)
    return z


def cluster(a, m, iters, ridge=0.01, c=0.9):
    """The kernel's schedule with its split barrier: phase A of step k (T = Z·Â for the CTA's own
    rows) runs before the cluster wait, phase B (T·Z over every row, the new rows stored into
    every CTA's other buffer, then the arrive) after it. The order is adversarial: each CTA runs
    its A of step k + 1 right after its own B of step k, before the other CTAs' B of step k.
    Each element of each copy carries the step of Z it holds; every read asserts it is current."""
    ah, z0 = init(a, m, ridge, c)
    copies = [[z0.copy(), np.zeros((m, m), F32)] for _ in range(CL)]  # Z_k in buffer k % 2
    ver = [[np.zeros((m, m), np.int64), np.full((m, m), -1, np.int64)] for _ in range(CL)]
    rb = -(-m // CL)
    ts = [dict() for _ in range(CL)]  # each CTA's rows of T of the current step

    def threads(r):  # (thread, its row, its first column) of the CTA's live rows
        for t, i in ((t, 2 * (t % 32 // 8) + h) for t in range(THREADS) for h in (0, 1)):
            row, j0 = r * rb + i, 16 * (t // 32) + 2 * (t % 8)
            assert r * rb + 2 * (t % 32 // 8) + 1 < 64, "the thread's rows lie in the buffer"
            if i < rb and row < m:  # others read the zero row 64 (not modelled: no values)
                yield t, row, j0

    def phase_a(r, k):  # T = Z_k·Â, own rows only: before the wait
        buf = k % 2
        ts[r] = {}
        for _, row, _ in threads(r):
            assert r * rb <= row < r * rb + rb, "phase A reads only the CTA's own rows"
            assert (ver[r][buf][row, :] == k).all(), f"phase A of step {k} read a stale own row"
            trow = np.zeros(m, F32)
            for j in range(m):
                acc = F32(0)
                for kk in range(m):
                    acc = fma(copies[r][buf][row, kk], ah[kk, j], acc)
                trow[j] = acc
            ts[r][row] = trow

    def phase_b(r, k, writes):  # after the wait: T·Z_k over every row, stores into buffer k + 1
        cur, nxt = k % 2, (k + 1) % 2
        zc = copies[r][cur]
        assert (ver[r][cur] == k).all(), f"phase B of step {k} read a row not yet arrived"
        for _, row, j0 in threads(r):
            for j in (j0, j0 + 1):
                if j < m:
                    acc = F32(0)
                    for kk in range(m):
                        acc = fma(ts[r][row][kk], zc[kk, j], acc)
                    v = F32(F32(2) * zc[row, j] - acc)
                    writes[row, j] += 1
                    for cp in range(CL):  # st.shared::cluster into every copy's other buffer
                        # every CTA's phase B of step k − 1 (the last reads of this buffer) is
                        # done: this runs after the wait, which follows all of their arrives
                        copies[cp][nxt][row, j] = v
                        ver[cp][nxt][row, j] = k + 1

    for r in range(CL):
        phase_a(r, 0)  # step 0: Z₀ is whole in every CTA
    for k in range(iters):
        writes = np.zeros((m, m), np.int64)
        for r in range(CL):  # the wait of step k passed: every phase B of step k − 1 is done
            phase_b(r, k, writes)
            if k + 1 < iters:
                phase_a(r, k + 1)  # no wait in between: the other CTAs' B of step k may follow
        assert (writes == 1).all(), "each element of Z is written by exactly one thread"
    assert all((v[iters % 2] == iters).all() for v in ver), "the final wait: every copy complete"
    return copies[0][iters % 2]


def main():
    rng = np.random.default_rng(3)
    fails = 0
    for m in (1, 2, 7, 8, 9, 16, 17, 33, 49, 63, 64):
        x = rng.standard_normal((m, 2 * m)).astype(F32)
        a = np.exp(-0.5 * ((x[:, None, :] - x[None, :, :]) ** 2).sum(-1) / (2 * m)).astype(F32)
        iters = 6 if m > 32 else 20
        z1, zc = one_cta(a, m, iters), cluster(a, m, iters)
        same = z1.view(np.uint32).tobytes() == zc.view(np.uint32).tobytes()
        fails += not same
        print(f"{'PASS' if same else 'FAIL'} m={m} T={iters}: cluster == one CTA bit for bit")
    print("ALL PASS" if not fails else f"{fails} FAILED")


if __name__ == "__main__":
    main()
