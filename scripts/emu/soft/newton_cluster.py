"""Model of newton_pinv_cl_f32 (kernels/newton.cu) against newton_pinv_t64_f32 (newton_smem): the
cluster form splits the rows of both products over 8 CTAs (rb = ⌈m/8⌉ rows each; 4 warps, thread t
of lane l = t % 32: rows 2·(l / 8) and + 1, columns 16·(t / 32) + 2·(l % 8) and + 1) and all-gathers the new rows of Z into the other of two Z
buffers of every CTA, one cluster barrier per step; both sum every product over k in increasing
order with fp32 FMAs, so Z must be bit-identical.
Checks, for m ∈ {1 … 64}: every (row, column) of Z updated by exactly one thread of one CTA per
step; within each barrier interval no element of any CTA's copy is both read and written (CTAs
run unordered between barriers, so that is the race-freedom condition of the single barrier);
the cluster result equal bit for bit to the one-CTA result.
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
    ah, z0 = init(a, m, ridge, c)
    # each CTA's shared-memory Z buffers: Z_k in buffer k % 2
    copies = [[z0.copy(), np.zeros((m, m), F32)] for _ in range(CL)]
    rb = -(-m // CL)
    for it in range(iters):
        cur, nxt = it % 2, (it + 1) % 2
        writes = np.zeros((m, m), np.int64)
        read = np.zeros((CL, 2, m, m), bool)  # (copy, buffer, row, col) touched in this interval
        written = np.zeros((CL, 2, m, m), bool)
        for r in range(CL):  # the interval between barriers it − 1 and it, CTAs in any order
            zc = copies[r][cur]
            for t, i in ((t, 2 * (t % 32 // 8) + h) for t in range(THREADS) for h in (0, 1)):
                row, j0 = r * rb + i, 16 * (t // 32) + 2 * (t % 8)
                assert r * rb + 2 * (t % 32 // 8) + 1 < 64, "the thread's rows lie in the buffer"
                if i >= rb or row >= m:
                    continue
                # The CTA's T row (every lane of the warp writes its two columns before the
                # __syncthreads; each thread then reads all m): the same FMAs for every column.
                trow = np.zeros(m, F32)
                for j in range(m):
                    acc = F32(0)
                    for k in range(m):
                        acc = fma(zc[row, k], ah[k, j], acc)
                    trow[j] = acc
                read[r, cur, row, :] = True
                for j in (j0, j0 + 1):
                    if j < m:
                        acc = F32(0)
                        for k in range(m):
                            acc = fma(trow[k], zc[k, j], acc)
                        read[r, cur, :, j] = True
                        v = F32(F32(2) * zc[row, j] - acc)
                        writes[row, j] += 1
                        for cp in range(CL):  # st.shared::cluster into every copy's other buffer
                            copies[cp][nxt][row, j] = v
                            written[cp, nxt, row, j] = True
        assert (writes == 1).all(), "each element of Z is written by exactly one thread"
        assert not (read & written).any(), "an element read and written in one barrier interval"
        # cluster barrier it: every copy of the new buffer complete and identical
        assert all((cp[nxt] == copies[0][nxt]).all() for cp in copies)
        assert written[:, nxt].all()
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
