"""Warp-level emulator of kernels/soft_tc.cuh (soft_pass1_tc, soft_pass2_tc), built on the
primitives of ../emu.py (ldmatrix / mma.sync m16n8k16 fragment layouts, cp.async groups, shared
memory with a race detector). Line-by-line translation: every thread register is a numpy vector
over the 32 lanes of a warp; CTA barriers are emulated by running every warp through one barrier
interval before the next. Byte addresses of the kernel are mirrored as element offsets (/2).
Change it together with the kernels (or delete it).
"""
import os
import sys

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
import emu  # noqa: E402
from emu import (F32, U16, U32, LANE, G, T4, MAT, R8, Races, Smem, CpAsync,  # noqa: E402
                 ldmatrix, mma16816, tc_stage, lo16, hi16, pow2_scale, fmaxf)

LM, ROWS, WARPS, LM2, PSCALE = 64, 64, 4, 16, F32(4096)
THREADS = WARPS * 32
PLOG2 = F32(12)                        # SOFT_TC_PLOG2
LOG2E = F32(1.4426950408889634)        # LOG2E_F
KEXP = F32(F32(0.5) * LOG2E)           # SOFT_TC_K
NINF = F32(-np.inf)


def mpad_of(m):
    return (m + LM2 - 1) // LM2 * LM2


def pass1_smem(d):
    return (2 * LM + 4 * ROWS) * (d + 8) * 2 + 2 * LM * 4 + ROWS * 4


def pass2_mi(d):
    """soft_tc_pass2_mi: row blocks of 16 per warp in pass 2."""
    return 2 if d <= 64 else 1


def pass2_smem(d, m):
    return (4 * mpad_of(m) + 2 * ROWS * pass2_mi(d)) * (d + 8) * 2 + 2 * mpad_of(m) * 4 + 2 * d * 4


def f32(x):
    return np.asarray(x, dtype=F32)


def fmaf(a, b, c):
    with np.errstate(invalid="ignore", over="ignore"):
        return (np.asarray(a, np.float64) * np.asarray(b, np.float64) + np.asarray(c, np.float64)).astype(F32)


def unpack2(x):
    return emu.bits2f32(lo16(x)), emu.bits2f32(hi16(x))


def pack2(lo, hi):  # cvt.rn.{f16,bf16}x2.f32
    return emu.pack2(f32(lo), f32(hi))


def split2(a, b):
    hi = pack2(a, b)
    ha, hb = unpack2(hi)
    with np.errstate(invalid="ignore", over="ignore"):
        lo = pack2(f32(a) - ha, f32(b) - hb)
    return hi, lo


def sq4(x, y, acc):
    a, b = unpack2(x)
    c, e = unpack2(y)
    acc = fmaf(a, a, acc)
    acc = fmaf(b, b, acc)
    acc = fmaf(c, c, acc)
    return fmaf(e, e, acc)


def ex2_fast(x):  # ex2.approx.ftz.f32 (as exact exp2; results below 2^-126 flushed to 0)
    with np.errstate(over="ignore", invalid="ignore", under="ignore"):
        y = np.exp2(np.asarray(x, F32)).astype(F32)
    return np.where(y < F32(2.0 ** -126), F32(0), y).astype(F32)


def fmin_nan(a, b):  # min.NaN.f32
    return np.minimum(np.asarray(a, F32), np.asarray(b, F32)).astype(F32)


def fadd(a, b):
    with np.errstate(invalid="ignore", over="ignore"):
        return (np.asarray(a, F32) + np.asarray(b, F32)).astype(F32)


def soft_tc_p(rl, kc, g):  # 2^12·exp(−½d²) from the exponent terms
    return ex2_fast(fmin_nan(PLOG2, fmaf(kc, g, rl)))


def shfl_xor(v, off):
    return v[LANE ^ off]


def soft_tc_landmarks(D, dyn, lh, ll, fl, lterm, lkc, Lg, lbase, j0, rows, m, log2e_s):
    """soft_tc_landmarks<T, D>: one warp per landmark row r (stride WARPS)."""
    LD = D + 8
    CPL = (D + 31) // 32
    for warp in range(WARPS):
        for r in range(warp, rows, WARPS):
            j = j0 + r
            xs, mx, nrm = [], np.zeros(32, F32), np.zeros(32, F32)
            for i in range(CPL):
                c = LANE + 32 * i
                ok = (c < D) & (j < m)
                x = np.zeros(32, F32)
                if ok.any():
                    x[ok] = Lg.read(lbase + j * D + c[ok])
                xs.append(x)
                mx = fmaxf(mx, np.abs(x))
                nrm = fmaf(x, x, nrm)
            for off in (16, 8, 4, 2, 1):
                mx = fmaxf(mx, shfl_xor(mx, off))
                nrm = f32(nrm + shfl_xor(nrm, off))
            sg = pow2_scale(mx)
            for i in range(CPL):
                c = LANE + 32 * i
                ok = c < D
                with np.errstate(invalid="ignore", over="ignore"):
                    y = f32(xs[i] * sg)
                    hi = emu.f16bits(y)
                    lo = emu.f16bits(f32(y - emu.bits2f32(hi)))
                dyn.write(lh + r * LD + c[ok], hi[ok], warp, "landmarks hi")
                dyn.write(ll + r * LD + c[ok], lo[ok], warp, "landmarks lo")
            lt = fmaf(-KEXP, nrm[0], PLOG2) if j < m else NINF
            fl.write(lterm + r, lt, warp, "lterm")
            fl.write(lkc + r, f32(log2e_s / sg[0]), warp, "lkc")


def tile_row(u, tiles, strip):
    """soft_tc_tile_row: first row of pass 1's 64-row tile at position u of the descending seam order."""
    return emu.strip_desc(u, tiles, max(strip, 1)) * ROWS


def soft_pass1_tc(p, D, bx, by, bz, gdy, races_out):
    LD, KT, NT = D + 8, D // 16, D // 8
    races = Races()
    nu16 = (2 * LM + 4 * ROWS) * LD
    dyn = Smem(nu16, U16, "p1.dyn", races)
    fl = Smem(2 * LM + ROWS, F32, "p1.f32", races)
    assert pass1_smem(D) == nu16 * 2 + (2 * LM + ROWS) * 4
    cpa = CpAsync([dyn])
    lh, ll = 0, LM * LD
    ks = lambda b: 2 * LM * LD + b * ROWS * LD
    vs = lambda b: 2 * LM * LD + (2 + b) * ROWS * LD
    lterm, lkc, xr = 0, LM, 2 * LM
    m, n = p["m"], p["n"]
    j0 = bz * LM
    chunk = bx
    tiles = -(-n // ROWS)  # chunk takes tiles chunk, chunk + chunks, … of the seam order
    scale = F32(p["scale"])
    rk = f32(-KEXP * f32(scale * scale))
    kaddr = ks(0) + ((MAT // 2) * 8 + R8) * LD + (MAT % 2) * 8
    vaddr = vs(0) + (R8 + (MAT % 2) * 8) * LD + (MAT // 2) * 8
    laddr = {w: lh + (w * 16 + LANE % 16) * LD + (LANE // 16) * 8 for w in range(WARPS)}
    STAGE = ROWS * LD
    xrow = {w: w * 16 + LANE % 16 for w in range(WARPS)}
    xaddr = {w: ks(0) + xrow[w] * LD + (LANE // 16) * (D // 2) for w in range(WARPS)}
    K, V, Lg, part = p["K"], p["V"], p["L"], p["partial"]
    for r in range(by, p["b"] * p["h"], gdy):
        bh = p["b"] * p["h"] - 1 - r  # slices in reverse (L2 seam with the pooling)
        b, h = bh // p["h"], bh % p["h"]
        kb = b * p["k_sb"] + h * p["k_sh"]
        vb = b * p["v_sb"] + h * p["v_sh"]
        lbase = bh * m * D
        races.barrier()
        if chunk < tiles:
            row0 = tile_row(chunk, tiles, p["strip"])
            tc_stage(D, LD, ROWS, THREADS, dyn, ks(0), K, kb, p["k_sn"], row0, n, cpa)
            tc_stage(D, LD, ROWS, THREADS, dyn, vs(0), V, vb, p["v_sn"], row0, n, cpa)
        cpa.commit()
        soft_tc_landmarks(D, dyn, lh, ll, fl, lterm, lkc, Lg, lbase, j0, LM, m, f32(LOG2E * scale))
        races.barrier()
        st = {}
        for w in range(WARPS):
            st[w] = dict(
                lt0=fl.read(lterm + w * 16 + G, w, "lt0"), lt1=fl.read(lterm + w * 16 + G + 8, w, "lt1"),
                kc0=fl.read(lkc + w * 16 + G, w, "kc0"), kc1=fl.read(lkc + w * 16 + G + 8, w, "kc1"),
                acc=np.zeros((NT, 4, 32), F32), active=j0 + w * 16 < m)
        buf = 0
        for u in range(chunk, tiles, p["chunks"]):
            row0 = tile_row(u, tiles, p["strip"])
            row_end = min(n, row0 + ROWS)
            cpa.wait(0)
            races.barrier()
            if u + p["chunks"] < tiles:
                nxt = tile_row(u + p["chunks"], tiles, p["strip"])
                tc_stage(D, LD, ROWS, THREADS, dyn, ks(buf ^ 1), K, kb, p["k_sn"], nxt, n, cpa)
                tc_stage(D, LD, ROWS, THREADS, dyn, vs(buf ^ 1), V, vb, p["v_sn"], nxt, n, cpa)
            cpa.commit()
            for w in range(WARPS):  # row terms: lanes l, l ^ 16 each sum half the channels of a row
                vals = dyn.read(xaddr[w][:, None] + buf * STAGE + np.arange(D // 2)[None, :], w, "p1 K rows")
                xv = emu.bits2f32(vals)
                sq = np.zeros(32, F32)
                for c in range(D // 2):
                    sq = fmaf(xv[:, c], xv[:, c], sq)
                sq = f32(sq + shfl_xor(sq, 16))
                rr = np.where(row0 + xrow[w] < row_end, f32(rk * sq), NINF).astype(F32)
                fl.write(xr + xrow[w][:16], rr[:16], w, "xr")
            races.barrier()
            for w in range(WARPS):
                S = st[w]
                if not S["active"]:
                    continue
                acc = S["acc"]
                for n0 in range(0, ROWS, 16):
                    bxs = []
                    for kt in range(KT):
                        bxs.append(ldmatrix(dyn, kaddr + buf * STAGE + n0 * LD + kt * 16, w, 4, False, "p1 K"))
                    xr0 = (fl.read(xr + n0 + 2 * T4, w, "xr"), fl.read(xr + n0 + 2 * T4 + 1, w, "xr"))
                    xr1 = (fl.read(xr + n0 + 8 + 2 * T4, w, "xr"), fl.read(xr + n0 + 8 + 2 * T4 + 1, w, "xr"))
                    gt = [np.zeros((4, 32), F32), np.zeros((4, 32), F32)]
                    for prt in range(2):
                        for kt in range(KT):
                            al = ldmatrix(dyn, laddr[w] + prt * LM * LD + kt * 16, w, 4, False, "p1 L")
                            gt[0] = mma16816(gt[0], al, bxs[kt][0], bxs[kt][1])
                            gt[1] = mma16816(gt[1], al, bxs[kt][2], bxs[kt][3])
                    for nt in range(2):
                        for x in range(4):
                            r = (xr1 if nt else xr0)[x % 2]
                            lt = S["lt0"] if x < 2 else S["lt1"]
                            kc = S["kc0"] if x < 2 else S["kc1"]
                            gt[nt][x] = soft_tc_p(fadd(r, lt), kc, gt[nt][x])
                    ph, pl = [None] * 4, [None] * 4
                    ph[0], pl[0] = split2(gt[0][0], gt[0][1])
                    ph[1], pl[1] = split2(gt[0][2], gt[0][3])
                    ph[2], pl[2] = split2(gt[1][0], gt[1][1])
                    ph[3], pl[3] = split2(gt[1][2], gt[1][3])
                    for e0 in range(0, D, 16):
                        bv = ldmatrix(dyn, vaddr + buf * STAGE + n0 * LD + e0, w, 4, True, "p1 V")
                        acc[e0 // 8] = mma16816(acc[e0 // 8], ph, bv[0], bv[1])
                        acc[e0 // 8 + 1] = mma16816(acc[e0 // 8 + 1], ph, bv[2], bv[3])
                        acc[e0 // 8] = mma16816(acc[e0 // 8], pl, bv[0], bv[1])
                        acc[e0 // 8 + 1] = mma16816(acc[e0 // 8 + 1], pl, bv[2], bv[3])
            buf ^= 1
        cpa.wait(0)
        out = (bh * p["chunks"] + chunk) * m * D
        inv = F32(1) / PSCALE
        for w in range(WARPS):
            S = st[w]
            if not S["active"]:
                continue
            ja = j0 + w * 16 + G
            jb = ja + 8
            for j in range(NT):
                e = j * 8 + 2 * T4
                a = ja < m
                part.write(out + ja[a] * D + e[a], f32(S["acc"][j][0][a] * inv))
                part.write(out + ja[a] * D + e[a] + 1, f32(S["acc"][j][1][a] * inv))
                bb = jb < m
                part.write(out + jb[bb] * D + e[bb], f32(S["acc"][j][2][bb] * inv))
                part.write(out + jb[bb] * D + e[bb] + 1, f32(S["acc"][j][3][bb] * inv))
    races_out.update(races.msgs)


def soft_pass2_tc(p, D, bx, by, gdx, gdy, races_out):
    LD, KT, NT, NJ = D + 8, D // 16, D // 8, LM2 // 8
    MI = pass2_mi(D)  # row blocks of 16 per warp; tiles of ROWS2 rows
    ROWS2 = ROWS * MI
    m, n = p["m"], p["n"]
    mpad = mpad_of(m)
    races = Races()
    nu16 = (4 * mpad + 2 * ROWS2) * LD
    dyn = Smem(nu16, U16, "p2.dyn", races)
    nfl = 2 * mpad + 2 * D
    fl = Smem(nfl, F32, "p2.f32", races)
    assert pass2_smem(D, m) == nu16 * 2 + nfl * 4
    cpa = CpAsync([dyn])
    lh, ll, wh, wl = 0, mpad * LD, 2 * mpad * LD, 3 * mpad * LD
    xs = lambda b: 4 * mpad * LD + b * ROWS2 * LD
    lterm, lkc, csc, cinv = 0, mpad, 2 * mpad, 2 * mpad + D
    tiles = -(-n // ROWS2)
    strip = -(-max(p["strip"], 1) // MI)  # in tiles of ROWS2
    tile_row2 = lambda u: emu.strip_desc(tiles - 1 - u, tiles, strip) * ROWS2  # ascending seam order
    scale = F32(p["scale"])
    rk = f32(-KEXP * f32(scale * scale))
    laddr = lh + ((MAT // 2) * 8 + R8) * LD + (MAT % 2) * 8
    waddr = wh + (R8 + (MAT % 2) * 8) * LD + (MAT // 2) * 8
    plane = mpad * LD
    Q, O, Lg, Wg = p["Q"], p["O"], p["L"], p["W"]
    for bh in range(by, p["b"] * p["h"], gdy):
        b, h = bh // p["h"], bh % p["h"]
        qb = b * p["q_sb"] + h * p["q_sh"]
        ob = b * p["o_sb"] + h * p["o_sh"]
        lbase = bh * m * D
        wbase = bh * m * D
        races.barrier()
        trow = 0
        if bx < tiles:
            trow = tile_row2(bx)
            tc_stage(D, LD, ROWS2, THREADS, dyn, xs(0), Q, qb, p["q_sn"], trow, n, cpa)
        cpa.commit()
        for e in range(D):
            fl.write(csc + e, F32(0), (e % THREADS) // 32, "cmax zero")
        soft_tc_landmarks(D, dyn, lh, ll, fl, lterm, lkc, Lg, lbase, 0, mpad, m, f32(LOG2E * scale))
        races.barrier()
        # atomicMax on the bits of |w| (order-free); bypasses the race detector (atomics)
        wv = np.abs(Wg.read(wbase + np.arange(m * D)).reshape(m, D)).astype(F32)
        cm = fl.a[csc:csc + D].copy().view(U32)
        cm = np.maximum(cm, wv.view(U32).max(axis=0))
        fl.a[csc:csc + D] = cm.view(F32)
        races.barrier()
        for e in range(D):
            w_ = (e % THREADS) // 32
            sc = pow2_scale(F32(fl.read(csc + e, w_, "cmax").view(U32).view(F32)))
            fl.write(csc + e, sc, w_, "csc")
            fl.write(cinv + e, f32(F32(1) / f32(sc * PSCALE)), w_, "cinv")
        races.barrier()
        for i in range(mpad * D):
            w_ = (i % THREADS) // 32
            r, c = i // D, i % D
            if r < m:
                with np.errstate(invalid="ignore", over="ignore"):
                    y = f32(Wg.read(wbase + i) * fl.read(csc + c, w_, "csc"))
            else:
                y = F32(0)
            hi = emu.f16bits(y)
            with np.errstate(invalid="ignore", over="ignore"):
                lo = emu.f16bits(f32(y - emu.bits2f32(hi)))
            dyn.write(wh + r * LD + c, hi, w_, "W hi")
            dyn.write(wl + r * LD + c, lo, w_, "W lo")
        buf = 0
        tile = bx
        while tile < tiles:
            nxt = 0
            if tile + gdx < tiles:
                nxt = tile_row2(tile + gdx)
                tc_stage(D, LD, ROWS2, THREADS, dyn, xs(buf ^ 1), Q, qb, p["q_sn"], nxt, n, cpa)
            cpa.commit()
            cpa.wait(1)
            races.barrier()
            for w, mi in ((w, mi) for w in range(WARPS) for mi in range(MI)):
                r0 = w * 16 * MI + 16 * mi  # the block's rows (its L, W fragments are shared in the kernel)
                xaddr = xs(0) + (r0 + LANE % 16) * LD + (LANE // 16) * 8
                ax = []
                x0, x1 = np.zeros(32, F32), np.zeros(32, F32)
                for kt in range(KT):
                    r = ldmatrix(dyn, xaddr + buf * ROWS2 * LD + kt * 16, w, 4, False, "p2 Q")
                    ax.append(r)
                    x0 = sq4(r[0], r[2], x0)
                    x1 = sq4(r[1], r[3], x1)
                for off in (1, 2):
                    x0 = f32(x0 + shfl_xor(x0, off))
                    x1 = f32(x1 + shfl_xor(x1, off))
                x0 = f32(x0 * rk)
                x1 = f32(x1 * rk)
                acc = np.zeros((NT, 4, 32), F32)
                for jb in range(0, m, LM2):
                    gs = [np.zeros((4, 32), F32) for _ in range(NJ)]
                    lrow = laddr + jb * LD
                    for prt in range(2):
                        for kt in range(KT):
                            for np_ in range(NJ // 2):
                                bl = ldmatrix(dyn, lrow + prt * plane + np_ * 16 * LD + kt * 16, w, 4, False, "p2 L")
                                gs[2 * np_] = mma16816(gs[2 * np_], ax[kt], bl[0], bl[1])
                                gs[2 * np_ + 1] = mma16816(gs[2 * np_ + 1], ax[kt], bl[2], bl[3])
                    for nn in range(NJ):
                        j = jb + nn * 8 + 2 * T4
                        ltx = fl.read(lterm + j, w, "lterm")
                        lty = fl.read(lterm + j + 1, w, "lterm")
                        kcx = fl.read(lkc + j, w, "lkc")
                        kcy = fl.read(lkc + j + 1, w, "lkc")
                        for x in range(4):
                            kc = kcy if x % 2 else kcx
                            lt = lty if x % 2 else ltx
                            xx = x0 if x < 2 else x1
                            gs[nn][x] = soft_tc_p(fadd(xx, lt), kc, gs[nn][x])
                    for kk in range(NJ // 2):
                        ph, pl = [None] * 4, [None] * 4
                        ph[0], pl[0] = split2(gs[2 * kk][0], gs[2 * kk][1])
                        ph[1], pl[1] = split2(gs[2 * kk][2], gs[2 * kk][3])
                        ph[2], pl[2] = split2(gs[2 * kk + 1][0], gs[2 * kk + 1][1])
                        ph[3], pl[3] = split2(gs[2 * kk + 1][2], gs[2 * kk + 1][3])
                        wrow = waddr + (jb + kk * 16) * LD
                        for e0 in range(0, D, 16):
                            bh4 = ldmatrix(dyn, wrow + e0, w, 4, True, "p2 W hi")
                            bl4 = ldmatrix(dyn, wrow + plane + e0, w, 4, True, "p2 W lo")
                            acc[e0 // 8] = mma16816(acc[e0 // 8], ph, bh4[0], bh4[1])
                            acc[e0 // 8 + 1] = mma16816(acc[e0 // 8 + 1], ph, bh4[2], bh4[3])
                            acc[e0 // 8] = mma16816(acc[e0 // 8], pl, bh4[0], bh4[1])
                            acc[e0 // 8 + 1] = mma16816(acc[e0 // 8 + 1], pl, bh4[2], bh4[3])
                            acc[e0 // 8] = mma16816(acc[e0 // 8], ph, bl4[0], bl4[1])
                            acc[e0 // 8 + 1] = mma16816(acc[e0 // 8 + 1], ph, bl4[2], bl4[3])
                # epilogue: stage in the warp's own rows (after __syncwarp), 16-byte stores
                stage = xs(buf) + r0 * LD
                for j in range(NT):
                    e = j * 8 + 2 * T4
                    c0 = fl.read(cinv + e, w, "cinv")
                    c1 = fl.read(cinv + e + 1, w, "cinv")
                    with np.errstate(invalid="ignore", over="ignore"):
                        v0 = pack2(f32(acc[j][0] * c0), f32(acc[j][1] * c1))
                        v1 = pack2(f32(acc[j][2] * c0), f32(acc[j][3] * c1))
                    for (rr, vv) in ((G, v0), (G + 8, v1)):
                        dyn.write(stage + rr * LD + e, lo16(vv), w, "stage lo")
                        dyn.write(stage + rr * LD + e + 1, hi16(vv), w, "stage hi")
                row0 = trow + r0
                for lane in range(32):
                    i = lane
                    while i < 16 * (D // 8):
                        r, c = i // (D // 8), (i % (D // 8)) * 8
                        if row0 + r < n:
                            vals = dyn.read(stage + r * LD + c + np.arange(8), w, "store stage")
                            off = ob + (row0 + r) * p["o_sn"] + c
                            assert off % 8 == 0
                            O.write(off + np.arange(8), vals)
                        i += 32
            races.barrier()
            trow = nxt
            tile += gdx
            buf ^= 1
        cpa.wait(0)
    races_out.update(races.msgs)
