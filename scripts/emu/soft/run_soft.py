"""Drives the emulated SOFT tensor-core passes (emu_soft.py) the way attention_raw
(src/ops/soft/attention.rs) launches them, with the shared CUDA-core steps (landmarks, A, Newton, chunk sum,
W = Z·S) evaluated in fp32 at value level, and compares the output with an f64 reference of SPEC §1.
Checks: relative Frobenius error within the dtype's tolerance, every output element written
exactly once, no shared-memory race, the poisoned-V column rule of docs/non-finite.md. Also
printed (p1, p2): each pass against f64 on its own inputs (the fp32 landmarks, the stored 16-bit
K, V, Q, the fp32 W): p1 the chunk-summed pass-1 workspace (fp32, sensitive to the P
evaluation), p2 the 16-bit output (floor: its rounding).
    python3 run_soft.py            # all cases (f16)
    python3 run_soft.py quick      # a few cases
    python3 run_soft.py bf16 [quick]
"""
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
if "bf16" in sys.argv:
    import bf16mode  # noqa: F401  (switches emu to bf16 before emu_soft imports it)
import emu  # noqa: E402
import emu_soft as es  # noqa: E402
from emu import F32, U16  # noqa: E402

TARGET_CTAS, MAX_CHUNKS, ROWS, LM = 1024, 256, 64, 64
div_up = lambda a, b: -(-a // b)
BF16 = "bf16" in sys.argv
TOL = 1.6e-2 if BF16 else 2e-3


def plan(b, h, n, dv, m):
    tiles = div_up(m, LM) * div_up(dv, 64)
    want = div_up(TARGET_CTAS, b * h * tiles)
    chunks = max(1, min(want, max(1, min(MAX_CHUNKS, div_up(n, 4 * ROWS)))))
    rows = div_up(div_up(n, chunks), ROWS) * ROWS
    return div_up(n, rows), rows


def round16(x):
    x = np.asarray(x, F32)
    return emu.bits2f32(emu.f16bits(x)).astype(np.float64)


def reference(q, k, v, m, T=20, lam=0.01, c=0.9):
    n, d = q.shape
    s = d ** -0.25
    qs, ks = q * s, k * s
    L = np.stack([ks[(j * n) // m:((j + 1) * n) // m].mean(0) for j in range(m)])
    gauss = lambda x, y: np.exp(-0.5 * ((x[:, None, :] - y[None, :, :]) ** 2).sum(-1))
    A = gauss(L, L)
    al = c * 2 / (A.sum(1).max() ** 2)
    Ah = A + lam * np.eye(m)
    Z = al * Ah
    for _ in range(T):
        Z = 2 * Z - Z @ Ah @ Z
    return gauss(qs, L) @ (Z @ (gauss(ks, L).T @ v))


def shared_f32(k, m, T=20, lam=0.01, c=0.9):
    """Landmarks (fp32, scaled), Z (fp32 Newton) of one (b,h), value level."""
    n, d = k.shape
    s = F32(d ** -0.25)
    k32 = k.astype(F32)
    L = np.stack([(k32[(j * n) // m:((j + 1) * n) // m].sum(0, dtype=F32)
                   / F32(((j + 1) * n) // m - (j * n) // m)) * s for j in range(m)]).astype(F32)
    A = np.exp(F32(-0.5) * ((L[:, None, :] - L[None, :, :]) ** 2).sum(-1, dtype=F32)).astype(F32)
    al = F32(c * 2) / (A.sum(1, dtype=F32).max() ** 2)
    Ah = (A + F32(lam) * np.eye(m, dtype=F32)).astype(F32)
    Z = (al * Ah).astype(F32)
    for _ in range(T):
        Z = (2 * Z - (Z @ Ah) @ Z).astype(F32)
    return L, Z


def strides(B, H, N, D, kind):
    return (H * N * D, N * D, D) if kind == "bhnd" else (N * H * D, D, H * D)


def store(x, kind):
    x = emu.f16bits(x.astype(F32))
    return np.ascontiguousarray(x if kind == "bhnd" else x.transpose(0, 2, 1, 3)).ravel().copy()


def load(flat, B, H, N, D, kind):
    f = emu.bits2f32(flat).astype(np.float64)
    return f.reshape(B, H, N, D) if kind == "bhnd" else f.reshape(B, N, H, D).transpose(0, 2, 1, 3)


def run(B, H, N, D, m, kind, tied=True, seed=1, gdx=2, gdy=None, poison=None):
    rng = np.random.default_rng(seed)
    q = round16(rng.uniform(-1, 1, (B, H, N, D)))
    k = q if tied else round16(rng.uniform(-1, 1, (B, H, N, D)))
    v = round16(rng.uniform(-1, 1, (B, H, N, D)))
    if poison is not None:
        which, bh, row, col, val = poison
        [q, k, v][which][bh // H, bh % H, row, col] = val
    chunks, rpc = plan(B, H, N, D, m)
    sb, sh, sn = strides(B, H, N, D, kind)
    BH = B * H
    Ls, Zs = zip(*[shared_f32(k[b, h], m) for b in range(B) for h in range(H)])
    strip = max(1, (N + 32 * m) // (64 * m))  # attention.rs seam_strip
    p = dict(b=B, h=H, n=N, d=D, dv=D, m=m, chunks=chunks, rows_per_chunk=rpc, strip=strip, scale=F32(D ** -0.25),
             q_sb=sb, q_sh=sh, q_sn=sn, k_sb=sb, k_sh=sh, k_sn=sn, v_sb=sb, v_sh=sh, v_sn=sn,
             o_sb=sb, o_sh=sh, o_sn=sn)
    p["Q"] = emu.Glob(store(q, kind), "q")
    p["K"] = emu.Glob(store(k, kind), "k")
    p["V"] = emu.Glob(store(v, kind), "v")
    p["O"] = emu.Glob(np.full(B * H * N * D, 0x7E00 if not BF16 else 0x7FC0, U16), "o")
    p["L"] = emu.Glob(np.concatenate([x.ravel() for x in Ls]).astype(F32), "l")
    p["partial"] = emu.Glob(np.full(BH * chunks * m * D, np.nan, F32), "partial")
    races = {}
    gdy = gdy or BH
    for bz in range(div_up(m, LM)):
        for by in range(min(gdy, BH)):
            for bx in range(chunks):
                es.soft_pass1_tc(p, D, bx, by, bz, gdy, races)
    part = p["partial"]
    assert np.all(part.nwrites == 1), "pass 1: partial elements written != once"
    # soft_sum (chunk order) and soft_w (fmaf chain over c), fp32
    P = part.a.reshape(BH, chunks, m, D)
    S = np.zeros((BH, m, D), F32)
    for ch in range(chunks):
        S = (S + P[:, ch]).astype(F32)
    W = np.zeros((BH, m, D), F32)
    for bh in range(BH):
        acc = np.zeros((m, D), np.float64)
        for c in range(m):
            acc = (Zs[bh][:, c:c + 1].astype(np.float64) * S[bh][c][None, :] + acc).astype(F32).astype(np.float64)
        W[bh] = acc.astype(F32)
    p["W"] = emu.Glob(W.ravel().copy(), "w")
    s64 = float(F32(D ** -0.25))
    gauss = lambda x, L: np.exp(-0.5 * ((s64 * x[:, None, :] - L[None, :, :].astype(np.float64)) ** 2).sum(-1))
    S_ref = np.stack([gauss(k[b, h], Ls[b * H + h]).T @ v[b, h] for b in range(B) for h in range(H)])
    tiles = div_up(N, ROWS * es.pass2_mi(D))  # pass 2's tiles
    gx = max(1, min(tiles, gdx))
    for by in range(min(gdy, BH)):
        for bx in range(gx):
            es.soft_pass2_tc(p, D, bx, by, gx, gdy, races)
    O = p["O"]
    # every element of the layout written exactly once (contiguous layouts: all of them)
    assert np.all(O.nwrites == 1), f"pass 2: {np.sum(O.nwrites != 1)} output elements not written once"
    got = load(O.a, B, H, N, D, kind)
    O_ref = np.stack([gauss(q[b, h], Ls[b * H + h]) @ W[b * H + h].astype(np.float64)
                      for b in range(B) for h in range(H)])
    with np.errstate(invalid="ignore"):
        diag = dict(p1=np.linalg.norm(S - S_ref) / np.linalg.norm(S_ref),
                    p2=np.linalg.norm(got.reshape(O_ref.shape) - O_ref) / np.linalg.norm(O_ref))
    return got, q, k, v, races, diag


def check(B, H, N, D, m, kind, tied=True, seed=1, gdx=2, gdy=None):
    t0 = time.time()
    got, q, k, v, races, diag = run(B, H, N, D, m, kind, tied, seed, gdx, gdy)
    want = np.stack([reference(q[b, h], k[b, h], v[b, h], m) for b in range(B) for h in range(H)])
    got = got.reshape(want.shape)
    ok_fin = np.all(np.isfinite(got))
    err = np.linalg.norm(got - want) / np.linalg.norm(want)
    ok = ok_fin and err <= TOL and not races
    print(f"{'PASS' if ok else 'FAIL'} {'bf16' if BF16 else 'f16'} B={B} H={H} N={N} D={D} m={m} {kind} "
          f"tied={tied} gdx={gdx} gdy={gdy}: rel {err:.2e} (tol {TOL:.1e}) p1 {diag['p1']:.2e} "
          f"p2 {diag['p2']:.2e} finite={ok_fin} "
          f"races={list(races)[:3]} [{time.time() - t0:.1f}s]", flush=True)
    return ok


def check_poison(N=300, D=32, m=16):
    """docs/non-finite.md, SOFT: v[j,e] poisons column e of its slice; an untied q[j,c] reaches
    only row j (NaN: all NaN; ±Inf: NaN or zeros, unchecked); other slices stay bit-identical."""
    ok = True
    for val in (np.nan, np.inf):
        clean, *_ = run(1, 2, N, D, m, "bnhd", seed=4)
        bad, *_ = run(1, 2, N, D, m, "bnhd", seed=4, poison=(2, 1, 5, 3, val))
        s0 = np.array_equal(clean[0, 0], bad[0, 0], equal_nan=True)
        col = np.all(~np.isfinite(bad[0, 1, :, 3]))
        others = np.all(np.isfinite(np.delete(bad[0, 1], 3, axis=1)))
        good = s0 and col
        print(f"{'PASS' if good else 'FAIL'} poisoned v = {val}: other slice identical={s0}, column "
              f"non-finite={col}, other columns of the slice finite={others}", flush=True)
        clean, *_ = run(1, 2, N, D, m, "bhnd", tied=False, seed=5)
        bad, *_ = run(1, 2, N, D, m, "bhnd", tied=False, seed=5, poison=(0, 1, 7, 2, val))
        s0 = np.array_equal(clean[0, 0], bad[0, 0])
        rows = np.array_equal(np.delete(clean[0, 1], 7, axis=0), np.delete(bad[0, 1], 7, axis=0))
        own = bool(np.all(np.isnan(bad[0, 1, 7]))) if np.isnan(val) else True
        good2 = s0 and rows and own
        print(f"{'PASS' if good2 else 'FAIL'} poisoned untied q = {val}: other slice identical={s0}, "
              f"other rows identical={rows}, own row NaN={own}", flush=True)
        ok &= good and good2
    return ok


if __name__ == "__main__":
    quick = "quick" in sys.argv
    cases = [
        (1, 2, 1, 32, 1, "bhnd"), (1, 2, 7, 64, 7, "bnhd"), (1, 2, 49, 32, 49, "bhnd"),
        (1, 2, 1000, 64, 64, "bnhd"), (1, 2, 1000, 32, 100, "bhnd"), (1, 1, 4097, 64, 7, "bnhd"),
        (1, 2, 130, 48, 70, "bhnd"),
    ]
    if not quick:
        cases += [
            (1, 1, 4097, 32, 256, "bhnd"), (2, 1, 1000, 64, 256, "bnhd"), (1, 2, 49, 64, 1, "bnhd"),
            (1, 1, 1000, 64, 49, "bhnd"), (1, 2, 200, 48, 17, "bnhd"),
        ]
    ok = True
    for (B, H, N, D, m, kind) in cases:
        ok &= check(B, H, N, D, m, kind)
    ok &= check(1, 2, 300, 64, 33, "bnhd", tied=False, seed=7)
    ok &= check(3, 1, 100, 32, 20, "bhnd", seed=8, gdx=1, gdy=2)  # grid-stride over (b,h)
    ok &= check_poison()
    print("ALL PASS" if ok else "SOME FAILED")
    sys.exit(0 if ok else 1)
