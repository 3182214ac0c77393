"""Thread-level numpy emulator of kernels/aft.cu (aft_chunk_<dt>, aft_scan_f32, aft_map_<dt>,
aft_rowmax_f32, aft_window_<dt> with its noinline aft_exact slow path).

Line-by-line translation: a CTA's 256 threads are numpy vectors (thread id = position), divergent
control flow is a per-thread mask, CTA barriers advance a shared-memory epoch (the code between
two barriers runs for all threads before the next interval), __shfl_xor_sync is an exact lane
permutation within each warp (full mask: the caller must be warp-uniform, checked). Arithmetic is
fp32: expf = np.exp on float32 (CUDA's expf is within 2 ulp of it), '/' and '+'/'*' are IEEE fp32,
fmaf is emulated as one f64 product-plus-add rounded to fp32 (exact product; rare double-rounding
ties aside, equal to a true fma). f16/bf16 storage: cvt.rn (numpy float16 / bf16 by bit rounding).

Checks: every global access is resolved against its allocation (and, for the workspace, against
the sub-array the kernel means: part/pre/suf/rmax as sized by Plan::arrays in src/ops/aft.rs);
out of bounds, null, misaligned, reads of never-written workspace, a read of an element written
by another CTA in the same launch, and an element written twice in one launch are reported.
Shared memory tracks, per element and barrier interval, the writing and reading threads: a
location written by one thread and read or written by another in the same interval is a race
(one __syncwarp-guarded pattern, the AFT-full GEMM's reference update, exempts readers of the
writer's own warp: `Smem.write(..., syncwarp=True)`).
"""
from collections import Counter
import os
import sys

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from emu import strip_desc  # noqa: E402

F32 = np.float32
F64 = np.float64
NEG_INF = F32(-np.inf)
TID = np.arange(256, dtype=np.int64)
LANE = TID % 32
WARP = TID // 32

AFT_SIMPLE, AFT_LOCAL, AFT_CONV, AFT_FULL = 0, 1, 2, 3
AFT_THREADS, AFT_CHUNK, AFT_CT, AFT_KB, AFT_SEGS = 256, 64, 64, 32, 8
AFT_DEN_MIN = F32(8.27180613e-25)


def div_up(a, b):
    return (a + b - 1) // b


# ----------------------------------------------------------------------------------------------
# fp32 helpers (errors silenced: inf/NaN follow IEEE exactly as on the device)
def f32(x):
    return np.asarray(x, dtype=F32)


def expf(x):
    with np.errstate(all="ignore"):
        return np.exp(f32(x)).astype(F32)


LOG2E = F32(1.4426950408889634)


def ex2(x):  # ex2_fast: ex2.approx.ftz.f32 (≤ 2 ulp of exp2; emulated exactly rounded)
    with np.errstate(all="ignore"):
        return np.exp2(f32(x)).astype(F32)


def aft_exp(dt, x, m, l2s=F32(0)):
    """AftExp<T>(m, l2s)(x): expf(x − m) for f32 storage, else ex2(x·log2e + (−m·log2e + l2s))."""
    if dt.name == "f32":
        return expf(sub(x, m))
    return ex2(fmaf(x, LOG2E, fmaf(-f32(m), LOG2E, l2s)))


def fdividef(a, b):  # __fdividef: a·rcp(b) (≤ 2 ulp; 0 for 2^126 < |b| < 2^128)
    with np.errstate(all="ignore"):
        r = div(a, b)
        return np.where(np.abs(f32(b)) > F32(2.0**126), F32(0) * f32(a), r).astype(F32)


def sigmoid_t(dt, x):  # aft_sigmoid_t<T>
    if dt.name == "f32":
        return sigmoid(x)
    return fdividef(F32(1), add(F32(1), ex2(mul(-f32(x), LOG2E))))


def fmaf(a, b, c):
    with np.errstate(all="ignore"):
        return (f32(a).astype(F64) * f32(b).astype(F64) + f32(c).astype(F64)).astype(F32)


def fmaxf(a, b):
    return np.fmax(f32(a), f32(b)).astype(F32)


def add(a, b):
    with np.errstate(all="ignore"):
        return (f32(a) + f32(b)).astype(F32)


def sub(a, b):
    with np.errstate(all="ignore"):
        return (f32(a) - f32(b)).astype(F32)


def mul(a, b):
    with np.errstate(all="ignore"):
        return (f32(a) * f32(b)).astype(F32)


def div(a, b):
    with np.errstate(all="ignore"):
        return (f32(a) / f32(b)).astype(F32)


def sigmoid(x):  # aft_sigmoid: 1.f / (1.f + expf(-x))
    return div(F32(1), add(F32(1), expf(-f32(x))))


def bf16_round(x):
    """cvt.rn.bf16.f32 on float32 values, returned as float32 holding the bf16 value."""
    b = f32(x).view(np.uint32).astype(np.uint64)
    nan = np.isnan(f32(x))
    r = ((b + 0x7FFF + ((b >> 16) & 1)) >> 16) << 16
    out = r.astype(np.uint32).view(F32)
    return np.where(nan, F32(np.nan), out).astype(F32)


class DType:
    def __init__(self, name):
        self.name = name
        self.size = 4 if name == "f32" else 2
        self.np = {"f32": F32, "f16": np.float16, "bf16": F32}[name]

    def from_f32(self, x):  # from_f32<T>, cvt.rn
        with np.errstate(all="ignore"):
            if self.name == "f16":
                return f32(x).astype(np.float16)
            if self.name == "bf16":
                return bf16_round(x)
            return f32(x)

    def from_f64(self, x):  # T::from_f64 of the host (half crate / `as f32`)
        with np.errstate(all="ignore"):
            if self.name == "f16":
                return np.asarray(x, F64).astype(np.float16)
            if self.name == "bf16":  # round the f64 mantissa to 8 bits directly (no double rounding)
                b = np.asarray(x, F64).view(np.uint64)
                r = ((b + np.uint64((1 << 44) - 1) + ((b >> np.uint64(45)) & np.uint64(1))) >> np.uint64(45)) << np.uint64(45)
                return r.view(F64).astype(F32)
            return np.asarray(x, F64).astype(F32)


# ----------------------------------------------------------------------------------------------
# global memory
class Alloc:
    def __init__(self, name, arr, initialized):
        self.name = name
        self.a = arr.ravel().copy()
        self.isz = self.a.itemsize
        self.nbytes = self.a.size * self.isz
        self.init = np.full(self.a.size, initialized, bool)
        self.wl = np.full(self.a.size, -1, np.int64)  # launch of the last write
        self.wcta = np.full(self.a.size, -1, np.int64)
        self.nw = np.zeros(self.a.size, np.int64)  # writes over the whole pipeline


class Mem:
    SH = 40

    def __init__(self):
        self.allocs = [None]
        self.msgs = Counter()
        self.launch = 0
        self.kernel = ""
        self.cta = 0
        self.regions = {}  # name -> (address, bytes)

    def alloc(self, name, arr, initialized=True):
        self.allocs.append(Alloc(name, arr, initialized))
        return (len(self.allocs) - 1) << self.SH

    def report(self, msg):
        self.msgs[f"[{self.kernel}] {msg}"] += 1

    def _resolve(self, addr, mask, region, what):
        addr = np.asarray(addr, np.int64)
        mask = np.broadcast_to(np.asarray(mask, bool), addr.shape)
        aa = addr[mask]
        if aa.size == 0:
            return None, mask, None
        ids = aa >> self.SH
        if np.any(ids != ids[0]) or ids[0] <= 0 or ids[0] >= len(self.allocs):
            self.report(f"{what} {region}: null or wild pointer")
            return None, mask, None
        al = self.allocs[ids[0]]
        off = aa - (int(ids[0]) << self.SH)
        good = (off >= 0) & (off + al.isz <= al.nbytes) & (off % al.isz == 0)
        if region in self.regions:
            lo, n = self.regions[region]
            rel = aa - lo
            inreg = (rel >= 0) & (rel + al.isz <= n)
            if not np.all(inreg):
                self.report(f"{what} outside its array {region} (bytes [{rel.min()}, {rel.max()}] of {n})")
            good &= inreg
        if not np.all(good):
            self.report(f"{what} {region} out of bounds / misaligned (bytes [{off.min()}, {off.max()}] of {al.nbytes})")
        idx = np.where(good, off // al.isz, -1)
        return al, mask, idx

    def load(self, addr, mask, region):
        """Loads the element at byte address `addr` for threads in `mask` (others get NaN)."""
        addr = np.asarray(addr, np.int64)
        out = np.full(addr.shape, np.nan, F32)
        al, mask, idx = self._resolve(addr, mask, region, "read")
        if al is None:
            return out
        ok = idx >= 0
        ii = idx[ok]
        if not np.all(al.init[ii]):
            self.report(f"read of never-written {region}")
        x = (al.wl[ii] == self.launch) & (al.wcta[ii] != self.cta)
        if np.any(x):
            self.report(f"read of {region} written by another CTA in the same launch (race)")
        vals = np.full(idx.shape, np.nan, F32)
        raw = al.a[ii]
        if raw.dtype == np.uint16:  # bf16 bits: to_f32 is exact
            vals[ok] = (raw.astype(np.uint32) << np.uint32(16)).view(F32)
        else:
            vals[ok] = raw.astype(F32)
        out[mask] = vals
        return out

    def store(self, addr, vals, mask, region):
        addr = np.asarray(addr, np.int64)
        vals = np.broadcast_to(np.asarray(vals), addr.shape)
        al, mask, idx = self._resolve(addr, mask, region, "write")
        if al is None:
            return
        v = vals[mask]
        ok = idx >= 0
        ii, v = idx[ok], v[ok]
        if np.any(al.wl[ii] == self.launch) or np.unique(ii).size != ii.size:
            self.report(f"{region}: element written twice in one launch")
        if al.a.dtype == np.uint16:  # v holds bf16 values (from_f32 rounded): keep the top half
            v = (f32(v).view(np.uint32) >> np.uint32(16)).astype(np.uint16)
        al.a[ii] = v
        al.init[ii] = True
        al.wl[ii] = self.launch
        al.wcta[ii] = self.cta
        np.add.at(al.nw, ii, 1)


# ----------------------------------------------------------------------------------------------
# shared memory with a thread-granular race detector
class Races:
    def __init__(self, mem):
        self.epoch = 0
        self.mem = mem

    def barrier(self):  # __syncthreads()
        self.epoch += 1


BIG = 1 << 30


class Smem:
    def __init__(self, n, name, races):
        self.n, self.name, self.races = n, name, races
        self.a = np.full(n, np.nan, F32)
        self.written = np.zeros(n, bool)
        self.we = np.full(n, -1)
        self.wmin = np.full(n, BIG)
        self.wmax = np.full(n, -1)
        self.re = np.full(n, -1)
        self.rmin = np.full(n, BIG)
        self.rmax = np.full(n, -1)

    def _sel(self, off, tid, mask):
        off = np.asarray(off, np.int64)
        tid = np.broadcast_to(np.asarray(tid, np.int64), off.shape)
        if mask is None:
            mask = np.ones(off.shape, bool)
        mask = np.broadcast_to(np.asarray(mask, bool), off.shape)
        fo, ft = off[mask], tid[mask]
        if fo.size and (fo.min() < 0 or fo.max() >= self.n):
            self.races.mem.report(f"shared {self.name}: out of bounds [{fo.min()}, {fo.max()}] of {self.n}")
            keep = (fo >= 0) & (fo < self.n)
            fo, ft = fo[keep], ft[keep]
            mask = mask.copy()
            mask[mask] = keep
        return off, mask, fo, ft

    def read(self, off, tid, mask=None, tag=""):
        off, mask, fo, ft = self._sel(off, tid, mask)
        out = np.full(off.shape, np.nan, F32)
        if fo.size == 0:
            return out
        ep = self.races.epoch
        rep = self.races.mem.report
        if not np.all(self.written[fo]):
            rep(f"shared {self.name}: read of never-written element ({tag})")
        bad = (self.we[fo] == ep) & ((self.wmin[fo] != ft) | (self.wmax[fo] != ft))
        if np.any(bad):
            rep(f"shared {self.name}: RAW race, read of an element another thread wrote in the same barrier interval ({tag})")
        stale = self.re[fo] != ep
        so = fo[stale]
        self.rmin[so], self.rmax[so], self.re[so] = BIG, -1, ep
        np.minimum.at(self.rmin, fo, ft)
        np.maximum.at(self.rmax, fo, ft)
        out[mask] = self.a[fo]
        return out

    def write(self, off, vals, tid, mask=None, tag="", syncwarp=False):
        """syncwarp: the writer's warp passed __syncwarp() since its reads of this interval, so
        readers in the writer's own warp are ordered before the write."""
        off = np.asarray(off, np.int64)
        vals = np.broadcast_to(f32(vals), off.shape)
        off, mask, fo, ft = self._sel(off, tid, mask)
        if fo.size == 0:
            return
        ep = self.races.epoch
        rep = self.races.mem.report
        if syncwarp:
            others = (self.rmin[fo] // 32 != ft // 32) | (self.rmax[fo] // 32 != ft // 32)
        else:
            others = (self.rmin[fo] != ft) | (self.rmax[fo] != ft)
        bad = (self.re[fo] == ep) & others
        if np.any(bad):
            rep(f"shared {self.name}: WAR race, write of an element another thread read in the same barrier interval ({tag})")
        stale = self.we[fo] != ep
        so = fo[stale]
        self.wmin[so], self.wmax[so], self.we[so] = BIG, -1, ep
        np.minimum.at(self.wmin, fo, ft)
        np.maximum.at(self.wmax, fo, ft)
        if np.any(self.wmin[fo] != self.wmax[fo]):
            rep(f"shared {self.name}: WAW race, two threads write one element in the same interval ({tag})")
        self.a[fo] = vals[mask]
        self.written[fo] = True


def zero_nonfinite(mem, base, ld, cols, tid, nt):
    """aft_tc_zero_nonfinite: the non-finite values of a staged [AFT_KB][cols] block become +0."""
    for it in range(AFT_KB * cols // 2 // nt):
        i = tid + nt * it
        key, col = i // (cols // 2), 2 * (i % (cols // 2))
        for x in range(2):
            a = base + key * ld + col + x
            val = mem.read(a, tid, None, "zero non-finite (check)")
            mem.write(a, np.where(np.isfinite(val), val, F32(0)).astype(F32), tid, None, "zero non-finite")


def shfl_xor(v, o):
    """__shfl_xor_sync(0xffffffff, v, o) for every warp of the CTA."""
    return v.reshape(-1, 32)[:, np.arange(32) ^ o].reshape(v.shape)


def warp_uniform(mask, mem, what):
    m = np.asarray(mask, bool).reshape(-1, 32)
    if np.any(m.any(axis=1) != m.all(axis=1)):
        mem.report(f"{what}: full-mask shuffle in a warp-divergent branch")


# ----------------------------------------------------------------------------------------------
# AftStat helpers: a stat is a tuple (m, a, z) of per-thread fp32 arrays
def aft_combine(x, y):
    xm, xa, xz = x
    ym, ya, yz = y
    m = fmaxf(xm, ym)
    ninf = m == NEG_INF
    sx = expf(sub(xm, m))
    sy = expf(sub(ym, m))
    a = fmaf(xa, sx, mul(ya, sy))
    z = fmaf(xz, sx, mul(yz, sy))
    return (m, np.where(ninf, add(xa, ya), a).astype(F32), np.where(ninf, add(xz, yz), z).astype(F32))


def sel(mask, x, y):
    return tuple(np.where(mask, a, b).astype(F32) for a, b in zip(x, y))


def empty_stat(n=256):
    return (np.full(n, NEG_INF, F32), np.zeros(n, F32), np.zeros(n, F32))


def aft_stats(arr, bh, n, i, d):  # float pointer (byte address) of stats array at (bh, i)
    return arr + ((bh * n + np.asarray(i, np.int64)) * 3 * d) * 4


def aft_vmax(p, bh, i):  # float pointer of vmax at (bh, chunk i)
    return p.vmax + 4 * ((bh * (p.chunks + 1) + i) * p.d)


def aft_load(mem, base, d, c, mask, region):
    return (mem.load(base + 4 * c, mask, region), mem.load(base + 4 * (d + c), mask, region),
            mem.load(base + 4 * (2 * d + c), mask, region))


def aft_store(mem, base, d, c, s, mask, region):
    mem.store(base + 4 * c, s[0], mask, region)
    mem.store(base + 4 * (d + c), s[1], mask, region)
    mem.store(base + 4 * (2 * d + c), s[2], mask, region)


class Ctx:
    """One kernel launch: params (dict-like object `p`), memory, dtype, grid."""

    def __init__(self, p, mem, dt, grid):
        self.p, self.mem, self.dt, self.grid = p, mem, dt, grid


# ----------------------------------------------------------------------------------------------
# aft_chunk
def chunk_block(cx, bid):
    """aft_chunk_block: (chunk, bh, channel tile) of a chunk-pass CTA; with p.strip = L the
    offsets within strips of L tiles descending, every strip and slice of an offset together."""
    p = cx.p
    gx, gy, gz = cx.grid
    slices = gy * gz
    if p.strip <= 0 or gy != p.b * p.h or gx * slices > 0xFFFFFFFF:
        return bid
    l = bid[0] + gx * (bid[1] + gy * bid[2])
    g, sx = l // slices, l % slices
    return strip_desc(g, gx, p.strip), sx % gy, sx // gy


def aft_chunk(cx, bid):
    """aft_chunk<T>: 8 row lanes × 32 channel pairs; thread (ty, tx) takes rows ty + 8i of channels
    2tx, 2tx + 1 (a channel past d is empty: m = −inf); lanes combined in lane order by the first
    64 threads (one channel each)."""
    p, mem, dt = cx.p, cx.mem, cx.dt
    bx, by, bz = chunk_block(cx, bid)
    gdy = cx.grid[1]
    PAIRS = AFT_CT // 2
    LANES, PER = AFT_THREADS // PAIRS, AFT_CHUNK // (AFT_THREADS // PAIRS)
    races = Races(mem)
    red = Smem(LANES * AFT_CT * 3, "red", races)  # AftStat red[LANES][AFT_CT]
    vred = Smem(LANES * AFT_CT, "vred", races)
    tx, ty = TID % PAIRS, TID // PAIRS
    row0 = bx * AFT_CHUNK + ty
    bh = by
    while bh < p.b * p.h:
        b, h = bh // p.h, bh % p.h
        k = p.k + (b * p.k_sb + h * p.k_sh) * dt.size
        v = p.v + (b * p.v_sb + h * p.v_sh) * dt.size
        for x in range(2):  # the two channels of the pair (loads of a pair are value-identical)
            c = bz * AFT_CT + 2 * tx + x
            kx = np.zeros((256, PER), F32)
            vx = np.zeros((256, PER), F32)
            m = np.full(256, NEG_INF, F32)
            vm = np.zeros(256, F32)
            for i in range(PER):
                row = row0 + LANES * i
                ok = (bz * AFT_CT + 2 * tx < p.d) & (row < p.t) & (c < p.d)
                kx[:, i] = np.where(ok, mem.load(k + (row * p.k_sn + c) * dt.size, ok, "k"), NEG_INF)
                vx[:, i] = np.where(ok, mem.load(v + (row * p.v_sn + c) * dt.size, ok, "v"), F32(0))
                m = fmaxf(m, kx[:, i])
                vm = fmaxf(vm, np.abs(vx[:, i]))
            sm, sa, sz = m.copy(), np.zeros(256, F32), np.zeros(256, F32)
            br = m != NEG_INF
            for i in range(PER):
                act = br & ~(kx[:, i] == NEG_INF)
                e = aft_exp(dt, kx[:, i], m)
                sa = np.where(act, fmaf(e, vx[:, i], sa), sa).astype(F32)
                sz = np.where(act, add(sz, e), sz).astype(F32)
            for i in range(PER):
                act = ~br & (kx[:, i] != kx[:, i])
                sa = np.where(act, kx[:, i], sa).astype(F32)
                sz = np.where(act, kx[:, i], sz).astype(F32)
            slot = (ty * AFT_CT + 2 * tx + x) * 3
            red.write(slot, sm, TID, tag="red[ty][2tx+x].m")
            red.write(slot + 1, sa, TID, tag="red[ty][2tx+x].a")
            red.write(slot + 2, sz, TID, tag="red[ty][2tx+x].z")
            vred.write(ty * AFT_CT + 2 * tx + x, vm, TID, tag="vred[ty][2tx+x]")
        races.barrier()
        cc = TID
        act = (TID < AFT_CT) & (bz * AFT_CT + cc < p.d)
        ccr = np.minimum(cc, AFT_CT - 1)
        rd = lambda l: tuple(red.read((l * AFT_CT + ccr) * 3 + f, TID, act, "red[l][cc]") for f in range(3))
        acc = rd(0)
        vmx = vred.read(ccr, TID, act, "vred[0][cc]")
        for l in range(1, LANES):
            acc = aft_combine(acc, rd(l))
            vmx = np.where(act, fmaxf(vmx, vred.read(l * AFT_CT + ccr, TID, act, "vred[l][cc]")), vmx).astype(F32)
        aft_store(mem, aft_stats(p.part, bh, p.chunks, bx, p.d), p.d, bz * AFT_CT + cc, acc, act, "part")
        if p.vmax:
            mem.store(aft_vmax(p, bh, bx) + 4 * (bz * AFT_CT + cc), vmx, act, "vmax")
        races.barrier()
        bh += gdy


# ----------------------------------------------------------------------------------------------
# aft_scan
def aft_scan(cx, bid):
    p, mem = cx.p, cx.mem
    bx, by, _ = bid
    gdy = cx.grid[1]
    races = Races(mem)
    seg_tot = Smem(AFT_SEGS * 32 * 3, "seg_tot", races)
    seg_vmax = Smem(AFT_SEGS * 32, "seg_vmax", races)
    lane, warp = LANE, WARP
    c = bx * 32 + lane
    seg = div_up(p.chunks, AFT_SEGS)
    first = np.minimum(p.chunks, warp * seg)
    last = np.minimum(p.chunks, first + seg)
    cd = c < p.d
    bh = by
    while bh < p.b * p.h:
        tot = empty_stat()
        vm = np.zeros(256, F32)
        i = first.copy()
        while True:
            act = cd & (i < last)
            if not act.any():
                break
            x = aft_load(mem, aft_stats(p.part, bh, p.chunks, i, p.d), p.d, c, act, "part")
            tot = sel(act, aft_combine(tot, x), tot)
            if p.vmax:
                vm = np.where(act, fmaxf(vm, mem.load(aft_vmax(p, bh, i) + 4 * c, act, "vmax")), vm).astype(F32)
            i = i + 1
        slot = (warp * 32 + lane) * 3
        for f in range(3):
            seg_tot.write(slot + f, tot[f], TID, tag="seg_tot[warp][lane]")
        seg_vmax.write(warp * 32 + lane, vm, TID, tag="seg_vmax[warp][lane]")
        races.barrier()
        w0 = cd & (warp == 0)
        if p.vmax and w0.any():
            for w in range(1, AFT_SEGS):
                vm = np.where(w0, fmaxf(vm, seg_vmax.read(w * 32 + lane, TID, w0, "seg_vmax[w][lane]")), vm).astype(F32)
            mem.store(aft_vmax(p, bh, p.chunks) + 4 * c, vm, w0, "vmax")
        rd = lambda w, act: tuple(seg_tot.read((w * 32 + lane) * 3 + f, TID, act, "seg_tot[w][lane]") for f in range(3))
        cur = empty_stat()
        for w in range(AFT_SEGS):
            act = cd & (w < warp)
            if act.any():
                cur = sel(act, aft_combine(cur, rd(w, act)), cur)
        i = first.copy()
        while True:
            act = cd & (i < last)
            if not act.any():
                break
            aft_store(mem, aft_stats(p.pre, bh, p.chunks + 1, i, p.d), p.d, c, cur, act, "pre")
            x = aft_load(mem, aft_stats(p.part, bh, p.chunks, i, p.d), p.d, c, act, "part")
            cur = sel(act, aft_combine(cur, x), cur)
            i = i + 1
        w7 = cd & (warp == AFT_SEGS - 1)
        aft_store(mem, aft_stats(p.pre, bh, p.chunks + 1, p.chunks, p.d), p.d, c, cur, w7, "pre")
        if p.suf:
            cur = sel(cd, empty_stat(), cur)
            for w in range(AFT_SEGS - 1, -1, -1):
                act = cd & (w > warp)
                if act.any():
                    cur = sel(act, aft_combine(rd(w, act), cur), cur)
            aft_store(mem, aft_stats(p.suf, bh, p.chunks + 1, p.chunks, p.d), p.d, c, cur, w7, "suf")
            i = last - 1
            while True:
                act = cd & (i >= first)
                if not act.any():
                    break
                x = aft_load(mem, aft_stats(p.part, bh, p.chunks, i, p.d), p.d, c, act, "part")
                cur = sel(act, aft_combine(x, cur), cur)
                aft_store(mem, aft_stats(p.suf, bh, p.chunks + 1, i, p.d), p.d, c, cur, act, "suf")
                i = i - 1
        races.barrier()
        bh += gdy


# ----------------------------------------------------------------------------------------------
# aft_map
def aft_map(cx, bid):
    p, mem, dt = cx.p, cx.mem, cx.dt
    bx, by, _ = bid
    gdx, gdy = cx.grid[0], cx.grid[1]
    races = Races(mem)
    ratio = Smem(256, "ratio", races)
    bh = by
    while bh < p.b * p.h:
        b, h = bh // p.h, bh % p.h
        tot = aft_stats(p.pre, bh, p.chunks + 1, p.chunks, p.d)
        races.barrier()
        for it in range(div_up(p.d, 256)):
            c = TID + 256 * it
            act = c < p.d
            a = mem.load(tot + 4 * (p.d + c), act, "pre")
            z = mem.load(tot + 4 * (2 * p.d + c), act, "pre")
            ratio.write(c, div(a, z), TID, act, "ratio[c]")
        races.barrier()
        q = p.q + (b * p.q_sb + h * p.q_sh) * dt.size
        o = p.o + (b * p.o_sb + h * p.o_sh) * dt.size
        blk = bx
        PAIRS = AFT_CT // 2
        LANES, PER = AFT_THREADS // PAIRS, AFT_CHUNK // (AFT_THREADS // PAIRS)
        tx, ty = TID % PAIRS, TID // PAIRS  # channel pair 2tx (+ 64·tile), rows ty + 8i
        while blk < p.chunks:
            row0 = blk * AFT_CHUNK + ty
            rows = np.minimum(PER, -((-(min(AFT_CHUNK, p.t - blk * AFT_CHUNK) - ty)) // LANES))
            for ct in range(div_up(p.d, AFT_CT)):
                c0 = 2 * tx + AFT_CT * ct
                for x in range(2):
                    c = c0 + x
                    cok = (c0 < p.d) & (c < p.d)
                    rc = ratio.read(np.minimum(c, 255), TID, cok, "ratio[c]")
                    for i in range(PER):
                        act = cok & (i < rows)
                        r = row0 + LANES * i
                        qv = mem.load(q + (r * p.q_sn + c) * dt.size, act, "q")
                        y = mul(sigmoid_t(dt, qv), rc)
                        mem.store(o + (r * p.o_sn + c) * dt.size, dt.from_f32(y), act, "o")
            blk += gdx
        bh += gdy


# ----------------------------------------------------------------------------------------------
# aft_rowmax
def aft_rowmax(cx, bid):
    p, mem = cx.p, cx.mem
    bx = bid[0]
    lane = LANE
    t = bx * (AFT_THREADS // 32) + TID // 32
    alive = t < p.t  # `if (t >= p.t) return;` (warp-uniform)
    w = p.w + t * p.t * 4
    ln = np.where(p.causal != 0, t + 1, p.t)
    m = np.full(256, NEG_INF, F32)
    tp = lane.copy()
    while True:
        act = alive & (tp < ln)
        if not act.any():
            break
        m = np.where(act, fmaxf(m, mem.load(w + tp * 4, act, "w")), m).astype(F32)
        tp = tp + 32
    warp_uniform(alive, mem, "aft_rowmax")
    for o in (16, 8, 4, 2, 1):
        m = np.where(alive, fmaxf(m, shfl_xor(m, o)), m).astype(F32)
    mem.store(p.rmax + t * 4, m, alive & (lane == 0), "rmax")


# ----------------------------------------------------------------------------------------------
# aft_bias / aft_exact
def aft_bias(cx, h, t, tp, act):
    p, mem = cx.p, cx.mem
    t, tp = np.asarray(t, np.int64), np.asarray(tp, np.int64)
    if p.variant in (AFT_LOCAL, AFT_CONV):
        s = p.window
        j = tp - t
        out = (j <= -s) | (j >= s)
        row = t if p.variant == AFT_LOCAL else np.asarray(h, np.int64)
        val = mem.load(p.w + (row * (2 * s - 1) + (j + s - 1)) * 4, act & ~out, "w")
        return np.where(out, F32(0), val).astype(F32)
    if p.variant == AFT_FULL:
        return mem.load(p.w + (t * p.t + tp) * 4, act, "w")
    return np.zeros(t.shape, F32)


def aft_exact(cx, k, v, h, t, c):
    """aft_exact for a vector of independent calls (one per (thread, output) pair)."""
    p, mem, dt = cx.p, cx.mem, cx.dt
    ln = t + 1 if p.causal else np.full(t.shape, p.t)
    m = np.full(t.shape, NEG_INF, F32)
    for tp in range(int(ln.max())):
        act = tp < ln
        kv = mem.load(k + (tp * p.k_sn + c) * dt.size, act, "k")
        m = np.where(act, fmaxf(m, add(kv, aft_bias(cx, h, t, tp, act))), m).astype(F32)
    num = np.zeros(t.shape, F32)
    den = np.zeros(t.shape, F32)
    for tp in range(int(ln.max())):
        act = tp < ln
        kv = mem.load(k + (tp * p.k_sn + c) * dt.size, act, "k")
        e = expf(sub(add(kv, aft_bias(cx, h, t, tp, act)), m))
        vv = mem.load(v + (tp * p.v_sn + c) * dt.size, act, "v")
        num = np.where(act, fmaf(e, vv, num), num).astype(F32)
        den = np.where(act, add(den, e), den).astype(F32)
    return div(num, den)


# ----------------------------------------------------------------------------------------------
# aft_window
def aft_window_of(p, t0):
    end = min(p.t, t0 + AFT_CHUNK)
    if p.variant in (AFT_LOCAL, AFT_CONV):
        s = min(p.window, p.t)
        lo_chunk = max(0, t0 - s + 1) // AFT_CHUNK
        if p.causal:
            return lo_chunk * AFT_CHUNK, end, lo_chunk, -1
        hi_chunk = min(p.chunks, (t0 + AFT_CHUNK + s - 1 + AFT_CHUNK - 1) // AFT_CHUNK)
        return lo_chunk * AFT_CHUNK, min(p.t, hi_chunk * AFT_CHUNK), lo_chunk, hi_chunk
    if p.variant == AFT_FULL:
        return 0, (end if p.causal else p.t), -1, -1
    return t0, end, t0 // AFT_CHUNK, -1


STATS = {"slow": 0, "kblocks": 0, "tc_scalar_blocks": 0, "band_reused": 0, "fg_moves": 0}


def tile_shifts(cx, bh, h, c0, t0, msh, rsh, gsh, nt=AFT_THREADS, ch=True, rows=True):
    """aft_tile_shifts<nt, ch, rows>: msh (channel max), rsh / gsh (row shift and exp(-r))."""
    p, mem = cx.p, cx.mem
    tid = np.arange(nt, dtype=np.int64)
    lane, warp = tid % 32, tid // 32
    wp = p.w
    band = 2 * p.window - 1
    if ch:
        act = (tid < AFT_CT) & (c0 + tid < p.d)
        upto = min(t0 // AFT_CHUNK + 1, p.chunks) if p.causal else p.chunks
        mv = mem.load(aft_stats(p.pre, bh, p.chunks + 1, upto, p.d) + 4 * (c0 + tid), act, "pre")
        msh.write(tid, mv, tid, act, "msh[threadIdx.x]")
    for it in range(AFT_CHUNK // (nt // 32) if rows else 0):
        i = warp + (nt // 32) * it
        t = t0 + i
        r = np.zeros(nt, F32)
        isfull = (t < p.t) & (p.variant == AFT_FULL)
        if isfull.any():
            r = np.where(isfull, mem.load(p.rmax + 4 * t, isfull, "rmax"), r).astype(F32)
        isband = ~isfull & (t < p.t) & (p.variant in (AFT_LOCAL, AFT_CONV))
        if isband.any():
            s = p.window
            first = np.maximum(0, t - s + 1)
            last = t if p.causal else np.minimum(p.t - 1, t + s - 1)
            row = wp + (t if p.variant == AFT_LOCAL else h) * band * 4
            tp = first + lane
            while True:
                a2 = isband & (tp <= last)
                if not a2.any():
                    break
                r = np.where(a2, fmaxf(r, mem.load(row + (tp - t + s - 1) * 4, a2, "w")), r).astype(F32)
                tp = tp + 32
            warp_uniform(isband, mem, "aft_window row shift")
            for off in (16, 8, 4, 2, 1):
                r = np.where(isband, fmaxf(r, shfl_xor(r, off)), r).astype(F32)
        l0 = lane == 0
        rsh.write(i, r, tid, l0, "rsh[i]")
        g = np.zeros(nt, F32) if p.variant == AFT_FULL else expf(-r)
        gsh.write(i, g, tid, l0, "gsh[i]")


def outside(cx, bh, win, c, mc, cd):
    """aft_outside for threads `cd` (channel c, channel max mc): (a, z), zeros elsewhere."""
    p, mem = cx.p, cx.mem
    _, _, ip, is_ = win
    a = np.zeros(c.shape, F32)
    z = np.zeros(c.shape, F32)
    if ip >= 0:
        sm, sa, szz = aft_load(mem, aft_stats(p.pre, bh, p.chunks + 1, ip, p.d), p.d, c, cd, "pre")
        f = np.where(sm == NEG_INF, F32(0), expf(sub(sm, mc))).astype(F32)
        a = np.where(cd, mul(sa, f), a).astype(F32)
        z = np.where(cd, mul(szz, f), z).astype(F32)
    if is_ >= 0:
        sm, sa, szz = aft_load(mem, aft_stats(p.suf, bh, p.chunks + 1, is_, p.d), p.d, c, cd, "suf")
        f = np.where(sm == NEG_INF, F32(0), expf(sub(sm, mc))).astype(F32)
        a = np.where(cd, fmaf(sa, f, a), a).astype(F32)
        z = np.where(cd, fmaf(szz, f, z), z).astype(F32)
    return a, z


def e_values(cx, k, v, kb, hi, c0, msh, nt):
    """aft_e_of over a staging loop (every iteration at once: independent): per element the
    thread, key row r, channel cc, E and E·V (0 past hi and d) and whether either is non-finite."""
    p, mem, sz = cx.p, cx.mem, cx.dt.size
    idx = (np.arange(nt)[None, :] + nt * np.arange(AFT_KB * AFT_CT // nt)[:, None]).ravel()
    tid = idx % nt
    r, cc = idx // AFT_CT, idx % AFT_CT
    tp, c = kb + r, c0 + cc
    act = (tp < hi) & (c < p.d)
    mv = msh.read(cc, tid, act, "msh[cc]")
    kv = mem.load(k + (tp * p.k_sn + c) * sz, act, "k")
    e = np.where(act, expf(sub(kv, mv)), F32(0)).astype(F32)
    vv = mem.load(v + (tp * p.v_sn + c) * sz, act, "v")
    ev = np.where(act, mul(e, vv), F32(0)).astype(F32)
    bad = np.zeros(nt, bool)
    np.logical_or.at(bad, tid, ~np.isfinite(e) | ~np.isfinite(ev))
    return tid, r, cc, e, ev, bad


def w_values(cx, h, t0, kb, hi, rsh, gsh, nt):
    """aft_weight over a staging loop: per element the thread, row i, key r and the weight."""
    p, mem = cx.p, cx.mem
    band = 2 * p.window - 1
    idx = (np.arange(nt)[None, :] + nt * np.arange(AFT_CHUNK * AFT_KB // nt)[:, None]).ravel()
    tid = idx % nt
    i, r = idx // AFT_KB, idx % AFT_KB
    t, tp = t0 + i, kb + r
    wt = np.zeros(idx.shape, F32)
    act = (t < p.t) & (tp < hi) & ~((p.causal != 0) & (tp > t))
    if p.variant in (AFT_LOCAL, AFT_CONV):
        j = tp - t
        out = act & ((j <= -p.window) | (j >= p.window))
        inn = act & ~((j <= -p.window) | (j >= p.window))
        wt = np.where(out, gsh.read(i, tid, out, "gsh[i]"), wt).astype(F32)
        row = t if p.variant == AFT_LOCAL else np.full(t.shape, h)
        wv = mem.load(p.w + (row * band + (j + p.window - 1)) * 4, inn, "w")
        rv = rsh.read(i, tid, inn, "rsh[i]")
        wt = np.where(inn, expf(sub(wv, rv)), wt).astype(F32)
    elif p.variant == AFT_FULL:
        wv = mem.load(p.w + (t * p.t + tp) * 4, act, "w")
        rv = rsh.read(i, tid, act, "rsh[i]")
        wt = np.where(act, expf(sub(wv, rv)), wt).astype(F32)
    else:
        wt = np.where(act, F32(1), wt).astype(F32)
    return tid, i, r, wt


def stage_e(cx, k, v, kb, hi, c0, msh, es, evs, ld, nt=AFT_THREADS):
    """aft_stage_e<nt> (fp32, aft_window)."""
    tid, r, cc, e, ev, _ = e_values(cx, k, v, kb, hi, c0, msh, nt)
    es.write(r * ld + cc, e, tid, None, "es[r][cc]")
    evs.write(r * ld + cc, ev, tid, None, "evs[r][cc]")


def stage_w(cx, h, t0, kb, hi, rsh, gsh, ws, ld, nt=AFT_THREADS):
    """aft_stage_w<nt> (fp32, aft_window)."""
    tid, i, r, wt = w_values(cx, h, t0, kb, hi, rsh, gsh, nt)
    ws.write(i * ld + r, wt, tid, None, "ws[i][r]")


def window_block(cx, bid):
    """(slice, first tile, tile step) of a window-kernel CTA: grid order, tile-major."""
    return bid[0], bid[1], cx.grid[1]


def aft_window(cx, bid):
    p, mem, dt = cx.p, cx.mem, cx.dt
    bx, by, gdy = window_block(cx, bid)
    RT, CT = AFT_CHUNK // 16, AFT_CT // 16
    races = Races(mem)
    ES_LD = AFT_CT + 1
    WS_LD = AFT_KB + 1
    es = Smem(AFT_KB * ES_LD, "es", races)
    evs = Smem(AFT_KB * ES_LD, "evs", races)
    ws = Smem(AFT_CHUNK * WS_LD, "ws", races)
    rsh = Smem(AFT_CHUNK, "rsh", races)
    gsh = Smem(AFT_CHUNK, "gsh", races)
    msh = Smem(AFT_CT, "msh", races)
    ctiles = div_up(p.d, AFT_CT)
    bh, c0 = bx // ctiles, (bx % ctiles) * AFT_CT
    b, h = bh // p.h, bh % p.h
    tr, tc = TID // 16, TID % 16
    sz = dt.size
    q = p.q + (b * p.q_sb + h * p.q_sh) * sz
    k = p.k + (b * p.k_sb + h * p.k_sh) * sz
    v = p.v + (b * p.v_sb + h * p.v_sh) * sz
    o = p.o + (b * p.o_sb + h * p.o_sh) * sz
    II = np.arange(RT)
    JJ = np.arange(CT)

    tile = by
    while tile < p.chunks:
        t0 = tile * AFT_CHUNK
        win = aft_window_of(p, t0)
        lo, hi, _, _ = win
        races.barrier()
        tile_shifts(cx, bh, h, c0, t0, msh, rsh, gsh)
        races.barrier()

        # accumulators from the statistics outside [lo, hi)
        num = np.zeros((256, RT, CT), F32)
        den = np.zeros((256, RT, CT), F32)
        for j in range(CT):
            c = c0 + tc + 16 * j
            cd = c < p.d
            a = np.zeros(256, F32)
            z = np.zeros(256, F32)
            if cd.any():
                mc = msh.read(tc + 16 * j, TID, cd, "msh[tc+16j]")
                a, z = outside(cx, bh, win, c, mc, cd)
            for i in range(RT):
                g = gsh.read(tr + 16 * i, TID, None, "gsh[tr+16i]")
                num[:, i, j] = mul(g, a)
                den[:, i, j] = mul(g, z)

        kb = lo
        while kb < hi:
            STATS["kblocks"] += 1
            races.barrier()
            stage_e(cx, k, v, kb, hi, c0, msh, es, evs, ES_LD)
            stage_w(cx, h, t0, kb, hi, rsh, gsh, ws, WS_LD)
            races.barrier()

            R = np.arange(AFT_KB)
            rows = tr[:, None] + 16 * II[None, :]  # (256, RT)
            cols = tc[:, None] + 16 * JJ[None, :]  # (256, CT)
            if p.causal and kb + AFT_KB - 1 > t0:
                # act[thread, r, i] = !(kb + r > t0 + tr + 16 i)
                actw = ~(kb + R[None, :, None] > t0 + rows[:, None, :])
                W = ws.read(rows[:, None, :] * WS_LD + R[None, :, None], TID[:, None, None], actw, "ws[tr+16i][r]")
                acte = np.broadcast_to(actw[:, :, :, None], (256, AFT_KB, RT, CT))
                eoff = np.broadcast_to((R[None, :, None, None] * ES_LD + cols[:, None, None, :]), acte.shape)
                tids = np.broadcast_to(TID[:, None, None, None], acte.shape)
                EV = evs.read(eoff, tids, acte, "evs[r][tc+16j]")
                E = es.read(eoff, tids, acte, "es[r][tc+16j]")
                for rr in range(AFT_KB):
                    a4 = acte[:, rr]
                    num = np.where(a4, fmaf(W[:, rr, :, None], EV[:, rr], num), num).astype(F32)
                    den = np.where(a4, fmaf(W[:, rr, :, None], E[:, rr], den), den).astype(F32)
            else:
                W = ws.read(rows[:, None, :] * WS_LD + R[None, :, None], TID[:, None, None], None, "ws[tr+16i][r]")
                eoff = R[None, :, None] * ES_LD + cols[:, None, :]
                E = es.read(eoff, TID[:, None, None], None, "es[r][tc+16j]")
                EV = evs.read(eoff, TID[:, None, None], None, "evs[r][tc+16j]")
                for rr in range(AFT_KB):
                    num = fmaf(W[:, rr, :, None], EV[:, rr, None, :], num)
                    den = fmaf(W[:, rr, :, None], E[:, rr, None, :], den)
            kb += AFT_KB

        # epilogue
        slow = np.zeros(256, np.int64)
        for i in range(RT):
            t = t0 + tr + 16 * i
            for j in range(CT):
                c = c0 + tc + 16 * j
                valid = (t < p.t) & (c < p.d)
                sl = valid & (den[:, i, j] < AFT_DEN_MIN)
                slow |= sl.astype(np.int64) << (i * CT + j)
                fast = valid & ~sl
                qv = mem.load(q + (t * p.q_sn + c) * sz, fast, "q")
                y = mul(sigmoid(qv), div(num[:, i, j], den[:, i, j]))
                mem.store(o + (t * p.o_sn + c) * sz, dt.from_f32(y), fast, "o")
        th, e = np.nonzero((slow[:, None] >> np.arange(RT * CT)[None, :]) & 1)
        if th.size:
            STATS["slow"] += th.size
            t = t0 + tr[th] + 16 * (e // CT)
            c = c0 + tc[th] + 16 * (e % CT)
            qv = mem.load(q + (t * p.q_sn + c) * sz, np.ones(th.shape, bool), "q")
            y = mul(sigmoid(qv), aft_exact(cx, k, v, h, t, c))
            mem.store(o + (t * p.o_sn + c) * sz, dt.from_f32(y), np.ones(th.shape, bool), "o")
        tile += gdy


# ----------------------------------------------------------------------------------------------
# aft_window_tc (kernels/aft_tc.cuh): 16-bit operands (f16 scaled into range) on mma.sync m16n8k16
TC_THREADS, TC_WLD, TC_KLD, TC_LD = 128, 40, 136, 72
SCALE = F32(32768.0)


def scaled(dt):  # AftScaled<T>: f16 operands are scaled into range, bf16 ones are not
    return dt.name == "f16"


def w_scale(dt):
    return SCALE if scaled(dt) else F32(1)


def den_floor(dt, n):
    return F32(max(4.0 * n, float(AFT_DEN_MIN))) if scaled(dt) else AFT_DEN_MIN


def tc_pair_thread(flat, width, nt):
    """The thread that stages element `flat` of a [rows][width] tile when each thread takes two
    adjacent elements per iteration (idx = flat / 2 over rows × width / 2, thread idx % nt)."""
    return (np.asarray(flat) // 2) % nt


def aft_window_band_tc(cx, bid):
    """aft_window_band_tc<T, false>: AFT-local, the W band staged once per tile for p.group
    slices."""
    aft_window_tc(cx, bid, band=True)


def aft_window_band_conv_tc(cx, bid):
    """aft_window_band_tc<T, true>: AFT-conv, one slice, a strip of tiles; the band staged again
    only when a tile is not interior or follows one that is not."""
    aft_window_tc(cx, bid, band=True, conv=True)


def aft_window_tc(cx, bid, band=False, conv=False):
    p, mem, dt = cx.p, cx.mem, cx.dt
    if band:
        nsl = p.b * p.h * div_up(p.d, AFT_CT)
        sx0 = bid[0] * p.group
        slices = range(sx0, sx0 + 1) if conv else range(sx0, min(nsl, sx0 + p.group))
        gy = cx.grid[1]
        if conv:  # a contiguous strip of tiles
            strip = div_up(p.chunks, gy)
            tiles = range(bid[1] * strip, min(p.chunks, (bid[1] + 1) * strip))
        else:
            tiles = range(bid[1], p.chunks, gy)
        hw = (sx0 // div_up(p.d, AFT_CT)) % p.h if conv else 0
    else:
        bx, by, gdy = window_block(cx, bid)
        slices = [bx]
        tiles = range(by, p.chunks, gdy)
    races = Races(mem)
    NT, ROWS, KB = TC_THREADS, AFT_CHUNK, AFT_KB
    tid = np.arange(NT, dtype=np.int64)
    lane, warp = tid % 32, tid // 32
    g, tq = lane // 4, lane % 4
    # kv [KB][TC_KLD] and ws [ROWS][TC_WLD] (16-bit), aliased by the float ratio tile after the
    # key loop behind a barrier: modelled as separate arrays. Band: ws is the band [ROWS][bld].
    op = Smem(KB * TC_KLD + ROWS * TC_WLD, "kv|ws", races)
    WS = KB * TC_KLD
    bld = p.bcols + 8 if band else TC_WLD
    wsm, wbase = (Smem(ROWS * bld, "band", races), 0) if band else (op, WS)
    ratio = Smem(ROWS * TC_LD, "ratio", races)
    rsh, gsh, msh = Smem(ROWS, "rsh", races), Smem(ROWS, "gsh", races), Smem(AFT_CT, "msh", races)
    ash, zsh, ssh = Smem(AFT_CT, "ash", races), Smem(AFT_CT, "zsh", races), Smem(AFT_CT, "ssh", races)
    wcf = Smem(2 * ROWS, "wcf", races)  # float2 per row
    l2sw = F32(15) if scaled(dt) else F32(0)
    ep, wk, wr = 2 * lane, 2 * (tid % 16), tid // 16
    ctiles = div_up(p.d, AFT_CT)
    rw, cw = (warp % 2) * 32, (warp // 2) * 32
    sz = dt.size
    sw = w_scale(dt)

    def write_wcf():
        rows_ = tid < ROWS
        rr = np.minimum(tid, ROWS - 1)
        wcf.write(2 * rr, fmaf(-rsh.read(rr, tid, rows_, "rsh"), LOG2E, l2sw), tid, rows_, "wcf.x")
        wcf.write(2 * rr + 1, mul(gsh.read(rr, tid, rows_, "gsh"), sw), tid, rows_, "wcf.y")

    def stage_w(t0, kb, hi, h, base):
        """W staging of key block kb into wsm at base (row stride bld): keys wk, wk + 1 of rows
        wr + 8n."""
        sb = min(p.window, p.t)
        bandw = 2 * p.window - 1
        for n in range(ROWS // 8):
            i = wr + 8 * n
            t = t0 + i
            tp = kb + wk
            if p.variant == AFT_SIMPLE:
                lim = np.where(t >= p.t, 0, np.minimum(hi, t + 1))
                for x in range(2):
                    wv = np.where(tp + x < lim, sw, F32(0)).astype(F32)
                    wsm.write(base + i * bld + wk + x, dt.from_f32(wv).astype(F32), tid, None, "ws[i][wk] (u32)")
                continue
            cfx = wcf.read(2 * i, tid, None, "wcf[i].x")
            cfy = wcf.read(2 * i + 1, tid, None, "wcf[i].y")
            lim = np.where(t >= p.t, 0, np.minimum(hi, t + 1) if p.causal else hi)
            o_ = tp - t + sb - 1
            for x in range(2):
                valid = tp + x < lim
                inb = valid & (o_ + x >= 0) & (o_ + x < 2 * sb - 1)
                row = t if p.variant == AFT_LOCAL else np.full(t.shape, h)
                wv = mem.load(p.w + (row * bandw + (tp + x - t + p.window - 1)) * 4, inb, "w")
                val = np.where(valid, cfy, F32(0)).astype(F32)
                val = np.where(inb, ex2(fmaf(wv, LOG2E, cfx)), val).astype(F32)
                wsm.write(base + i * bld + wk + x, dt.from_f32(val).astype(F32), tid, None, "ws[i][wk] (u32)")

    staged_interior = False
    for tile in tiles:
        t0 = tile * ROWS
        win = aft_window_of(p, t0)
        lo, hi, _, _ = win
        reach = AFT_CHUNK * div_up(p.window - 1, AFT_CHUNK)
        interior = (conv and t0 >= p.window - 1 and lo == t0 - reach
                    and hi == t0 + ROWS + (0 if p.causal else reach)
                    and (t0 + ROWS <= p.t if p.causal else t0 + ROWS + p.window - 1 <= p.t))
        restage = not (interior and staged_interior)
        staged_interior = interior
        STATS["band_reused"] += band and not restage
        if band:  # the row shifts and the band, once per tile (conv: unless reused)
            races.barrier()
            if restage:
                tile_shifts(cx, 0, hw, 0, t0, msh, rsh, gsh, NT, ch=False)
                races.barrier()
                write_wcf()
                races.barrier()
                for kb in range(lo, hi, KB):
                    stage_w(t0, kb, hi, hw, kb - lo)
        for sx in slices:
            bh, c0 = sx // ctiles, (sx % ctiles) * AFT_CT
            b, h = bh // p.h, bh % p.h
            q = p.q + (b * p.q_sb + h * p.q_sh) * sz
            k = p.k + (b * p.k_sb + h * p.k_sh) * sz
            v = p.v + (b * p.v_sb + h * p.v_sh) * sz
            o = p.o + (b * p.o_sb + h * p.o_sh) * sz
            races.barrier()
            tile_shifts(cx, bh, h, c0, t0, msh, rsh, gsh, NT, rows=not band)
            races.barrier()
            first = tid < AFT_CT
            c = c0 + tid
            cd = first & (c < p.d)
            a = np.zeros(NT, F32)
            z = np.zeros(NT, F32)
            if cd.any():
                mc = msh.read(tid, tid, cd, "msh[tid]")
                a, z = outside(cx, bh, win, c, mc, cd)
            se = ev_scale(cx, bh, c, cd)
            ssh.write(tid, se, tid, first, "ssh")
            ash.write(tid, mul(mul(a, sw), se), tid, first, "ash")
            zsh.write(tid, mul(mul(z, sw), sw), tid, first, "zsh")
            if not band:
                write_wcf()
            races.barrier()
            window_slice(cx, tid, t0, win, c0, h, k, v, q, o, op, WS, wsm, wbase, bld, ratio, rsh, gsh, msh,
                         ash, zsh, ssh, band, stage_w, races)


def window_slice(cx, tid, t0, win, c0, h, k, v, q, o, op, WS, wsm, wbase, bld, ratio, rsh, gsh, msh, ash,
                 zsh, ssh, band, stage_w, races):
    """One slice's tile of aft_window_tc / aft_window_band_tc: E staging (and W staging unless
    band) per key block, the mma or the masked key-by-key sums, the epilogue."""
    p, mem, dt = cx.p, cx.mem, cx.dt
    NT, ROWS, KB = TC_THREADS, AFT_CHUNK, AFT_KB
    lane, warp = tid % 32, tid // 32
    g, tq = lane // 4, lane % 4
    l2sw = F32(15) if scaled(dt) else F32(0)
    ep = 2 * lane
    rw, cw = (warp % 2) * 32, (warp // 2) * 32
    sz = dt.size
    sw = w_scale(dt)
    lo, hi, _, _ = win

    def row_of(mi, hh):
        return rw + 16 * mi + g + 8 * hh

    def col_of(nj, e1):
        return cw + 8 * nj + 2 * tq + e1

    # The staging threads' channel shifts and V factors (E: channels ep, ep + 1 of the tile).
    eok = [c0 + ep < p.d, c0 + ep + 1 < p.d]
    eml, evf = [], []
    for x in range(2):
        mc = np.where(eok[x], msh.read(np.minimum(ep + x, AFT_CT - 1), tid, eok[x], "msh[ep]"), F32(0))
        eml.append(fmaf(-mc, LOG2E, l2sw).astype(F32))
        sv = np.where(eok[x], ssh.read(np.minimum(ep + x, AFT_CT - 1), tid, eok[x], "ssh[ep]"), F32(0))
        evf.append(np.where(eok[x], div(sv, sw), F32(0)).astype(F32))

    acc = np.zeros((NT, 2, 2, 4, 4), F32)  # [num/den, mi, nj, e]
    for mi in range(2):
        for nj in range(4):
            for e in range(4):
                gr = gsh.read(row_of(mi, e // 2), tid, None, "gsh[row]")
                cc = col_of(nj, e % 2)
                acc[:, 0, mi, nj, e] = mul(gr, ash.read(cc, tid, None, "ash"))
                acc[:, 1, mi, nj, e] = mul(gr, zsh.read(cc, tid, None, "zsh"))

    kb = lo
    while kb < hi:
        STATS["kblocks"] += 1
        races.barrier()
        # E staging: thread (warp, lane) stages keys warp + 4i, channels ep, ep + 1.
        bad = np.zeros(NT, bool)
        for i in range(KB // 4):
            r = warp + 4 * i
            rok = kb + r < hi
            for x in range(2):
                c = c0 + ep + x
                act = rok & eok[x]
                kv_ = mem.load(k + ((kb + r) * p.k_sn + c) * sz, act, "k")
                vv = mem.load(v + ((kb + r) * p.v_sn + c) * sz, act, "v")
                e = np.where(act, ex2(fmaf(kv_, LOG2E, eml[x])), F32(0)).astype(F32)
                ev = np.where(act, mul(e, mul(vv, evf[x])), F32(0)).astype(F32)
                bad |= ~np.isfinite(ev)
                op.write(r * TC_KLD + ep + x, dt.from_f32(ev).astype(F32), tid, None, "kv[r][ep] (E.V, u32)")
                op.write(r * TC_KLD + AFT_CT + ep + x, dt.from_f32(e).astype(F32), tid, None, "kv[r][64+ep] (E, u32)")
        if not band:  # W staging: thread stages keys wk, wk + 1 of rows wr + 8n.
            stage_w(t0, kb, hi, h, wbase)
        wb = wbase + (kb - lo if band else 0)  # this block's weights: band columns or ws
        races.barrier()  # __syncthreads_or
        if p.causal and kb + KB - 1 > t0 and bad.any():  # aft_tc_nonfinite_keys, zero, mma
            STATS["tc_scalar_blocks"] += 1
            for r in range(KB):
                for nj in range(4):
                    for e1 in range(2):
                        cc = col_of(nj, e1)
                        evv = op.read(r * TC_KLD + cc, tid, None, "kv E.V")
                        ee = op.read(r * TC_KLD + AFT_CT + cc, tid, None, "kv E")
                        bn, bd = ~np.isfinite(evv), ~np.isfinite(ee)
                        for mi in range(2):
                            for hh in range(2):
                                row = row_of(mi, hh)
                                act = ~(kb + r > t0 + row) & (bn | bd)
                                wv = wsm.read(wb + row * bld + r, tid, act, "ws[row][r]")
                                x = 2 * hh + e1
                                acc[:, 0, mi, nj, x] = np.where(act & bn, fmaf(wv, evv, acc[:, 0, mi, nj, x]), acc[:, 0, mi, nj, x])
                                acc[:, 1, mi, nj, x] = np.where(act & bd, fmaf(wv, ee, acc[:, 1, mi, nj, x]), acc[:, 1, mi, nj, x])
            races.barrier()
            zero_nonfinite(op, 0, TC_KLD, 2 * AFT_CT, tid, NT)
            races.barrier()
        for ks in (0, 16):
            af = np.zeros((NT, 2, 4, 2), F32)
            for mi in range(2):
                af[:, mi] = fg_ldsm(wsm, wb, (rw + 16 * mi + lane % 16) * bld + ks + (lane // 16) * 8, tid, False, "A")
            key = ks + lane % 8 + ((lane // 8) % 2) * 8
            bf = np.zeros((NT, 2, 4, 2, 2), F32)
            for nj in (0, 2):
                off = key * TC_KLD + cw + 8 * nj + (lane // 16) * 8
                for nd in range(2):
                    rr = fg_ldsm(op, 0, off + nd * AFT_CT, tid, True, "B")
                    bf[:, nd, nj] = rr[:, 0:2]
                    bf[:, nd, nj + 1] = rr[:, 2:4]
            acc = fg_mma(acc, af, bf)
        kb += KB

    races.barrier()
    floor = den_floor(dt, hi - lo)
    slow = np.zeros(NT, np.int64)
    for mi in range(2):
        for nj in range(4):
            for hh in range(2):
                row = row_of(mi, hh)
                for e1 in range(2):
                    x = 2 * hh + e1
                    cc = col_of(nj, e1)
                    sv = ssh.read(cc, tid, None, "ssh[cc]")
                    y = mul(fdividef(acc[:, 0, mi, nj, x], acc[:, 1, mi, nj, x]), div(sw, sv))
                    sl = (acc[:, 1, mi, nj, x] < floor) & (t0 + row < p.t) & (c0 + cc < p.d)
                    slow |= sl.astype(np.int64) << (((mi * 4 + nj) * 2 + hh) * 2 + e1)
                    ratio.write(row * TC_LD + cc, y, tid, None, "ratio (float2)")
    th, bit = np.nonzero((slow[:, None] >> np.arange(32)[None, :]) & 1)
    if th.size:
        STATS["slow"] += th.size
        mi, nj, hh, e1 = bit // 16, (bit // 4) % 4, (bit // 2) % 2, bit % 2
        row = rw[th] + 16 * mi + g[th] + 8 * hh
        cc = cw[th] + 8 * nj + 2 * tq[th] + e1
        y = aft_exact(cx, k, v, h, t0 + row, c0 + cc)
        ratio.write(row * TC_LD + cc, y, th, None, "ratio (slow)")
    races.barrier()
    rows = min(ROWS, p.t - t0)
    qt, ot = q + (t0 * p.q_sn + c0) * sz, o + (t0 * p.o_sn + c0) * sz
    if c0 + AFT_CT <= p.d and (p.q_sn | p.o_sn) % 8 == 0 and qt % 16 == 0 and ot % 16 == 0:
        # aft_tc_epilogue's vector path: 8 channels 8·(tid % 8) … of rows tid / 8 + 16i
        cv = 8 * (tid % 8)
        for it in range(ROWS // (NT // 8)):
            row = tid // 8 + (NT // 8) * it
            ok = row < rows
            for x in range(8):
                qv = mem.load(qt + (row * p.q_sn + cv + x) * sz, ok, "q (16-byte)")
                rv = ratio.read(row * TC_LD + cv + x, tid, ok, "ratio (float4)")
                mem.store(ot + (row * p.o_sn + cv + x) * sz, dt.from_f32(mul(sigmoid_t(dt, qv), rv)), ok, "o (16-byte)")
        return
    occ, orow0 = lane + 32 * (warp % 2), warp // 2  # thread: one channel, rows orow0 + 2i
    for it in range(ROWS // 2):
        row = orow0 + 2 * it
        t, c = t0 + row, c0 + occ
        ok = (row < rows) & (c < p.d)
        qv = mem.load(q + (t * p.q_sn + c) * sz, ok, "q")
        rv = ratio.read(row * TC_LD + occ, tid, ok, "ratio")
        y = mul(sigmoid_t(dt, qv), rv)
        mem.store(o + (t * p.o_sn + c) * sz, dt.from_f32(y), ok, "o")


# ----------------------------------------------------------------------------------------------
# aft_full_b / aft_full_tc (kernels/aft_full_tc.cuh): the AFT-full GEMM (causal or not), 16-bit
# operands on mma.sync m16n8k16 (ldmatrix fragments placed by the PTX layouts)
FG_TILE, FG_ROWS, FG_COLS, FG_KB, FG_THREADS, FG_ALD, FG_BLD = 128, 128, 256, 32, 256, 40, 264


def pow2(k):
    k = np.asarray(k, np.int64)
    assert np.all((k >= -126) & (k <= 127))
    return ((k + 127).astype(np.uint32) << np.uint32(23)).view(F32)


def vexp(vm):
    """aft_vexp: b with |V| < 2^b (0 for 0, NaN, Inf)."""
    vm = f32(vm)
    bits = vm.view(np.uint32)
    e = ((bits >> np.uint32(23)) & np.uint32(0xFF)).astype(np.int64) - 127
    ok = (vm > 0) & np.isfinite(vm)
    return np.where(ok, np.maximum(e + 1, -100), 0)


def ev_scale(cx, bh, c, act):
    p, mem = cx.p, cx.mem
    if not scaled(cx.dt):
        return np.ones(np.shape(c), F32)
    vm = mem.load(aft_vmax(p, bh, p.chunks) + 4 * c, act, "vmax")
    return np.where(act, pow2(15 - np.where(act, vexp(vm), 0)), F32(1)).astype(F32)


def aft_full_b(cx, bid):
    """aft_full_b<T>: 8 row lanes × 32 channel pairs; thread (ty, tx) writes rows ty + 8i of
    channels 2tx, 2tx + 1 of each tile (zeros past d and in the padding tile)."""
    p, mem, dt = cx.p, cx.mem, cx.dt
    bx, by, _ = bid
    gdy = cx.grid[1]
    PAIRS = AFT_CT // 2
    LANES, PER = AFT_THREADS // PAIRS, AFT_CHUNK // (AFT_THREADS // PAIRS)
    tx, ty = TID % PAIRS, TID // PAIRS
    ctiles = div_up(p.d, AFT_CT)
    tiles = p.b * p.h * ctiles
    se = w_scale(dt)
    l2s = F32(15) if scaled(dt) else F32(0)
    tile = by
    while tile < p.bcols // FG_TILE:
        bh = tile // ctiles
        b, h = bh // p.h, bh % p.h
        k = p.k + (b * p.k_sb + h * p.k_sh) * dt.size
        v = p.v + (b * p.v_sb + h * p.v_sh) * dt.size
        c0 = (tile % ctiles) * AFT_CT + 2 * tx
        live0 = (tile < tiles) & (c0 < p.d)
        for x in range(2):
            c = c0 + x
            live = (tile < tiles) & (c < p.d)
            mc = np.where(live, mem.load(aft_stats(p.pre, bh, p.chunks + 1, p.chunks, p.d) + 4 * c, live, "pre"), F32(0))
            sev = ev_scale(cx, bh, c, live) if live.any() else np.ones(256, F32)
            vf = np.where(live, div(sev, se), F32(0)).astype(F32)
            for i in range(PER):
                t = bx * AFT_CHUNK + ty + LANES * i
                inr = t < p.t
                act = inr & live & live0
                kv = mem.load(k + (t * p.k_sn + c) * dt.size, act, "k")
                vv = mem.load(v + (t * p.v_sn + c) * dt.size, act, "v")
                kv = np.where(act, kv, F32(0)).astype(F32)
                vv = np.where(act, vv, F32(0)).astype(F32)
                e = np.where(live, aft_exp(dt, kv, mc, l2s), F32(0)).astype(F32)
                ev = mul(e, mul(vv, vf))
                row = p.bmat + (t * p.bcols + tile * FG_TILE) * 2
                col = c - (tile % ctiles) * AFT_CT
                mem.store(row + 2 * col, dt.from_f32(ev), inr, "bmat")
                mem.store(row + 2 * (AFT_CT + col), dt.from_f32(e), inr, "bmat")
        tile += gdy


def fg_ldsm(sm, base, addr, tid, trans, tag):
    """ldmatrix.x4 (.trans) for every warp: addr (NT,) element offsets (lane l gives row l % 8 of
    matrix l / 8); returns (NT, 4, 2) values: matrix m, the pair the lane receives."""
    NT = addr.shape[0]
    lane, warp = tid % 32, tid // 32
    g, tq = lane // 4, lane % 4
    if np.any((base + addr) % 8):
        sm.races.mem.report(f"ldmatrix row address not 16-byte aligned ({tag})")
    out = np.zeros((NT, 4, 2), F32)
    for m in range(4):
        rows = addr.reshape(-1, 32)[:, 8 * m: 8 * m + 8]  # (warps, 8)
        rw = rows[warp]  # (NT, 8): this lane's warp's row addresses
        for x in range(2):
            if trans:  # element (row 2tq + x, column g)
                off = rw[np.arange(NT), 2 * tq + x] + g
            else:  # element (row g, column 2tq + x)
                off = rw[np.arange(NT), g] + 2 * tq + x
            out[:, m, x] = sm.read(base + off, tid, None, tag)
    return out


def fg_mma(acc, a, b):
    """Every mma16816 of one k-step at once. acc (NT, 2, M, J, 4) [num/den, mi, j, e];
    a (NT, M, 4, 2) [mi, reg, half]; b (NT, 2, J, 2, 2) [num/den, j, reg, half]."""
    NT, M, J = acc.shape[0], a.shape[1], b.shape[2]
    nw = NT // 32
    tid = np.arange(NT)
    warp, lane = tid // 32, tid % 32
    g, tq = lane // 4, lane % 4
    A = np.full((nw, M, 16, 16), np.nan)
    B = np.full((nw, 2, J, 16, 8), np.nan)
    na = np.zeros(A.shape, int)
    nb = np.zeros(B.shape, int)
    for mi in range(M):
        for r in range(4):
            for x in range(2):
                row, col = g + 8 * (r % 2), 2 * tq + x + 8 * (r // 2)
                A[warp, mi, row, col] = a[:, mi, r, x]
                np.add.at(na, (warp, mi, row, col), 1)
    for nd in range(2):
        for j in range(J):
            for r in range(2):
                for x in range(2):
                    kk = 2 * tq + x + 8 * r
                    B[warp, nd, j, kk, g] = b[:, nd, j, r, x]
                    np.add.at(nb, (warp, nd, j, kk, g), 1)
    assert (na == 1).all() and (nb == 1).all(), "fragment layout"
    with np.errstate(all="ignore"):
        P = np.einsum("wmik,wdjkn->wdmjin", A, B)  # (w, nd, mi, j, 16, 8), f64 exact products
    out = acc.copy()
    for e in range(4):
        row, col = g + 8 * (e // 2), 2 * tq + e % 2
        with np.errstate(all="ignore"):
            out[:, :, :, :, e] = (P[warp, :, :, :, row, col] + acc[:, :, :, :, e].astype(F64)).astype(F32)
    return out


def aft_full_tc(cx, bid):
    for _ in aft_full_tc_gen(cx, bid):
        pass


FG_CL = 4


def fg_cluster_smem(mem, cl):
    """The dynamic shared memory of aft_full_tc_cl for each CTA of a cluster (three A stages, two
    B stages), each with its own race detector."""
    size = 3 * FG_ROWS * FG_ALD + 2 * FG_KB * FG_BLD + fg_moves_size(3, cl)
    return [Smem(size, f"fg_smem[cta {r}]", Races(mem)) for r in range(cl)]


def fg_moves_size(stages, cl):
    """AftFgMoves: per stage, (factor, token) of each row of the tile, then 8·cl warp flags."""
    return stages * (2 * FG_ROWS + 8 * cl)


def aft_full_tc_gen(cx, bid, cl=1, rank=0, smems=None):
    """aft_full_tc (cl = 1) or, as a generator yielding at every cluster arrive / wait, CTA `rank`
    of aft_full_tc_cl (cl CTAs with shared memories `smems`, stepped in lockstep by the caller)."""
    p, mem, dt = cx.p, cx.mem, cx.dt
    bx, by, _ = bid
    gdy = cx.grid[1]
    NT, ROWS, KB, ALD, BLD = FG_THREADS, FG_ROWS, FG_KB, FG_ALD, FG_BLD
    STAGE = ROWS * ALD + KB * BLD
    ASZ, BSZ = ROWS * ALD, KB * BLD
    if cl == 1:
        races = Races(mem)
        nst = 2
        mv0 = 2 * STAGE  # AftFgMoves after the stages
        sm = Smem(mv0 + fg_moves_size(nst, 1), "fg_smem", races)
        a_off = lambda s_: s_ * STAGE
        b_off = lambda s_: s_ * STAGE + ASZ
        nown = ROWS
    else:
        sm = smems[rank]
        races = sm.races
        nst = 3
        mv0 = 3 * ASZ + 2 * BSZ
        a_off = lambda s_: s_ * ASZ
        b_off = lambda s_: 3 * ASZ + s_ * BSZ
        nown = ROWS // cl
    mv_row = lambda st, row: mv0 + st * 2 * ROWS + 2 * row  # factor; token at + 1
    mv_flag = lambda st, wi: mv0 + nst * 2 * ROWS + st * 8 * cl + wi
    rsh = Smem(nown, "rsh", races)
    tid = np.arange(NT, dtype=np.int64)
    lane, warp = tid % 32, tid // 32
    g, tq = lane // 4, lane % 4
    wr, wt = (warp % 2) * 64, warp // 2
    ncol = (wt // 2) * FG_TILE + (wt % 2) * 32
    ctiles = div_up(p.d, AFT_CT)
    tile = bx * 2 + wt // 2
    live = tile < p.b * p.h * ctiles
    bm = p.bmat + bx * FG_COLS * 2
    nkb = div_up(p.t, KB)
    scale = w_scale(dt)

    slots = 8 if cl == 1 else 2  # w pairs per thread: all 128 rows, or this CTA's own rows

    def row_of_slot(i):  # row of the tile for slot i
        return tid // 16 + 16 * i if cl == 1 else rank * nown + (tid + NT * i) // 16

    def own_of_slot(i):  # index into rsh
        return tid // 16 + 16 * i if cl == 1 else (tid + NT * i) // 16

    def load_w(t0, kb):
        kp = tid % 16
        wreg = np.zeros((NT, slots, 2), F32)
        for i in range(slots):
            t = t0 + row_of_slot(i)
            for e in range(2):
                tp = kb + 2 * kp + e
                ok = (t < p.t) & (tp < p.t)
                wreg[:, i, e] = np.where(ok, mem.load(p.w + (t * p.t + tp) * 4, ok, "w"), F32(0))
        return wreg

    amax = F32(15) if scaled(dt) else F32(0)  # AftFgRef: exponent bound, and S after a move
    snew = amax - F32(4)
    targets = [(sm, tid)] if cl == 1 else [(smems[c], tid + 100000 * (rank + 1)) for c in range(cl)]

    def args(t0, kb, wreg, i, c):  # aft_fg_args: exponents, −inf for masked keys
        tp = kb + 2 * (tid % 16)
        end = np.minimum(p.t, t0 + row_of_slot(i) + 1) if p.causal else p.t
        return [np.where(tp + e < end, fmaf(wreg[:, i, e], LOG2E, c), F32(-np.inf)).astype(F32) for e in range(2)]

    def exp_w(t0, kb, wreg, st, tok):
        """aft_fg_exp_any: operands from the rows' references (rsh); a warp with an exponent above
        amax or NaN redoes the block in aft_fg_move: rows whose block max beats the reference (or
        that have none) take it, publishing factor and token to stage st of every CTA's moves."""
        ap = np.zeros((NT, slots, 2), F32)
        top = np.full(NT, -np.inf, F32)
        c = [rsh.read(own_of_slot(i), tid, None, "rcf") for i in range(slots)]
        for i in range(slots):
            a = args(t0, kb, wreg, i, c[i])
            for e in range(2):
                top = np.where(np.isnan(top) | np.isnan(a[e]), F32(np.nan), np.maximum(top, a[e])).astype(F32)
                ap[:, i, e] = dt.from_f32(ex2(a[e])).astype(F32)
        trig = ~(top <= amax)
        wtrig = np.repeat(trig.reshape(-1, 32).any(axis=1), 32)  # __any_sync
        if not wtrig.any():
            return ap
        STATS["fg_moves"] += int(wtrig.sum() // 32)
        moved_any = np.zeros(NT, bool)
        for i in range(slots):
            a = args(t0, kb, wreg, i, F32(0))
            m = np.fmax(np.where(np.isneginf(a[0]), F32(-np.inf), wreg[:, i, 0]),
                        np.where(np.isneginf(a[1]), F32(-np.inf), wreg[:, i, 1])).astype(F32)
            m = np.repeat(np.fmax.reduce(m.reshape(-1, 16), axis=1), 16)  # the row's 16 lanes
            unset = np.isnan(c[i])
            move = np.where(unset, m > -np.inf, fmaf(m, LOG2E, c[i]) > amax)
            cn = np.where(move, fmaf(-m, LOG2E, snew), c[i]).astype(F32)
            moved = wtrig & move & ~np.isnan(cn)
            moved_any |= moved
            lead = moved & (tid % 16 == 0)
            if lead.any():
                rsh.write(own_of_slot(i), cn, tid, lead, "rcf", syncwarp=True)
                f = np.where(unset, F32(0), ex2(cn - c[i])).astype(F32)
                row = row_of_slot(i)
                for tsm, wtid in targets:
                    tsm.write(mv_row(st, row), f, wtid, lead, "moves (factor)")
                    tsm.write(mv_row(st, row) + 1, np.full(NT, tok, F32), wtid, lead, "moves (token)")
            cu = np.where(np.isnan(cn), F32(-np.inf), cn).astype(F32)
            a = args(t0, kb, wreg, i, cu)
            for e in range(2):
                ap[:, i, e] = np.where(wtrig, dt.from_f32(ex2(a[e])).astype(F32), ap[:, i, e])
        wmoved = np.repeat(moved_any.reshape(-1, 32).any(axis=1), 32)
        flag = wmoved & (lane == 0)
        if flag.any():
            writer = (0 if cl == 1 else rank) * 8 + warp
            for tsm, wtid in targets:
                tsm.write(mv_flag(st, writer), np.full(NT, tok, F32), wtid, flag, "moves (flag)")
        return ap

    def rescale(st, tok, acc):
        """aft_fg_rescale: the warp's accumulator rows whose reference moved for block `tok`."""
        nf = 8 if cl == 1 else 16
        f0 = 0 if cl == 1 else (wr // nown) * 8
        hit = sm.read(mv_flag(st, f0 + lane % nf), tid, None, "moves (flag)") == tok
        whit = np.repeat(hit.reshape(-1, 32).any(axis=1), 32)
        if not whit.any():
            return acc
        acc = acc.copy()
        for mi in range(4):
            for hh in range(2):
                row = wr + 16 * mi + g + 8 * hh
                f = sm.read(mv_row(st, row), tid, whit, "moves (factor)")
                tk = sm.read(mv_row(st, row) + 1, tid, whit, "moves (token)")
                app = whit & (tk == tok)
                for e1 in range(2):
                    x = 2 * hh + e1
                    acc[:, :, mi, :, x] = np.where(app[:, None, None], mul(acc[:, :, mi, :, x], f[:, None, None]),
                                                   acc[:, :, mi, :, x])
        return acc

    def store_w(stage, ap):  # cl > 1: st.shared::cluster into every CTA's A stage
        for i in range(slots):
            row = row_of_slot(i)
            for e in range(2):
                for tsm, wtid in targets:
                    tsm.write(a_off(stage) + row * ALD + 2 * (tid % 16) + e, ap[:, i, e], wtid, None, "As (u32)")

    def copy_b(kb, stage):
        for i in range(4):
            idx = tid + NT * i
            key, seg = idx // 32, idx % 32
            ok = kb + key < p.t
            src = bm + ((kb + key) * p.bcols + seg * 8) * 2
            if np.any(src[ok] % 16):
                mem.report("cp.async source not 16-byte aligned")
            for x in range(8):
                val = np.where(ok, mem.load(src + 2 * x, ok, "bmat"), F32(0))
                sm.write(b_off(stage) + key * BLD + seg * 8 + x, val, tid, None, "Bs (cp.async)")

    def mma(ast, bst, ks, acc):
        a = np.zeros((NT, 4, 4, 2), F32)
        for mi in range(4):
            a[:, mi] = fg_ldsm(sm, a_off(ast), (wr + 16 * mi + lane % 16) * ALD + ks + (lane // 16) * 8, tid, False, "A")
        key = ks + lane % 8 + ((lane // 8) % 2) * 8
        b = np.zeros((NT, 2, 4, 2, 2), F32)
        for j in (0, 2):
            off = key * BLD + ncol + 8 * j + (lane // 16) * 8
            for nd in range(2):
                r = fg_ldsm(sm, b_off(bst), off + nd * AFT_CT, tid, True, "B")
                b[:, nd, j] = r[:, 0:2]
                b[:, nd, j + 1] = r[:, 2:4]
        return fg_mma(acc, a, b)

    def block_bad(bst):
        bad = np.zeros(NT, bool)
        for i in range(16):
            idx = tid + NT * i
            key, col = idx // 128, 2 * (idx % 128)
            for x in range(2):
                val = sm.read(b_off(bst) + key * BLD + col + x, tid, None, "Bs (check)")
                bad |= ~np.isfinite(val)
        return bad

    def nonfinite_sum(ast, bst, t0, kb, acc):  # aft_tc_nonfinite_keys
        acc = acc.copy()
        for r in range(KB):
            for j in range(4):
                for e1 in range(2):
                    col = ncol + 8 * j + 2 * tq + e1
                    bn = sm.read(b_off(bst) + r * BLD + col, tid, None, "Bs (non-finite)")
                    bd = sm.read(b_off(bst) + r * BLD + AFT_CT + col, tid, None, "Bs (non-finite)")
                    fn, fd = ~np.isfinite(bn), ~np.isfinite(bd)
                    for mi in range(4):
                        for hh in range(2):
                            row = wr + 16 * mi + g + 8 * hh
                            act = ~(kb + r > t0 + row) & (fn | fd)
                            wt = sm.read(a_off(ast) + row * ALD + r, tid, act, "As (non-finite)")
                            x = 2 * hh + e1
                            acc[:, 0, mi, j, x] = np.where(act & fn, fmaf(wt, bn, acc[:, 0, mi, j, x]), acc[:, 0, mi, j, x])
                            acc[:, 1, mi, j, x] = np.where(act & fd, fmaf(wt, bd, acc[:, 1, mi, j, x]), acc[:, 1, mi, j, x])
        return acc

    for st in range(nst):  # aft_fg_moves_init: no move published (tokens start at 1)
        for r in range(ROWS):
            for x in range(2):
                sm.write(np.full(NT, mv_row(st, r) + x), np.zeros(NT, F32), tid, tid == (2 * r + x) % NT, "moves (init)")
        for wi in range(8 * cl):
            sm.write(np.full(NT, mv_flag(st, wi)), np.zeros(NT, F32), tid, tid == wi % NT, "moves (init)")
    # The first cluster barrier's arrive (release) orders these before any remote store; this
    # emulator's epochs advance only at a CTA's own wait, so the order is stated here.
    races.barrier()
    tok0 = 1
    tiles_r = div_up(p.t, ROWS)
    it = by
    while it < tiles_r:
        rt = tiles_r - 1 - it if p.causal else it
        t0 = rt * ROWS
        nkb = div_up(min(p.t, t0 + ROWS) if p.causal else p.t, KB)
        if cl == 1:
            races.barrier()
        else:  # cluster_sync
            yield "arrive"
            yield "wait"
            races.barrier()  # a cluster barrier orders this CTA too
        act = tid < nown
        rsh.write(tid, np.full(NT, np.nan, F32), tid, act, "rcf")  # aft_fg_unset: no references yet
        acc = np.zeros((NT, 2, 4, 4, 4), F32)
        wreg = load_w(t0, 0)
        copy_b(0, 0)
        races.barrier()
        store_w(0, exp_w(t0, 0, wreg, 0, tok0))
        races.barrier()
        if cl > 1:  # cluster_sync: A stage 0 complete everywhere
            yield "arrive"
            yield "wait"
            races.barrier()  # a cluster barrier orders this CTA too
        nas = 3 if cl > 1 else 2
        for i in range(nkb):
            ast, bst, nast, nbst = i % nas, i % 2, (i + 1) % nas, (i + 1) % 2
            more = i + 1 < nkb
            acc = rescale(ast, tok0 + i, acc)
            if p.causal and i * KB + KB - 1 > t0:
                masked = bool(block_bad(bst).any())
                races.barrier()  # __syncthreads_or
                if masked:  # aft_fg_nonfinite_keys
                    STATS["tc_scalar_blocks"] += 1
                    acc = nonfinite_sum(ast, bst, t0, i * KB, acc)
                    races.barrier()
                    zero_nonfinite(sm, b_off(bst), BLD, FG_COLS, tid, NT)
                    races.barrier()
            if more:
                wreg = load_w(t0, (i + 1) * KB)
                copy_b((i + 1) * KB, nbst)
            acc = mma(ast, bst, 0, acc)
            if more:
                ap = exp_w(t0, (i + 1) * KB, wreg, nast, tok0 + i + 1)
                if cl > 1:  # shared before the arrive
                    store_w(nast, ap)
            if cl > 1:
                yield "arrive"
            acc = mma(ast, bst, 16, acc)
            if more and cl == 1:
                store_w(nast, ap)
            races.barrier()
            if cl > 1:
                yield "wait"
                races.barrier()  # a cluster barrier orders this CTA too
        # epilogue (live warps only; every warp of a CTA shares `live` per channel-tile half)
        bh = tile // ctiles
        c0 = (tile % ctiles) * AFT_CT + (wt % 2) * 32
        tiny = den_floor(dt, p.t)
        for bhv in np.unique(bh[live]):
            th = live & (bh == bhv)
            b_, h_ = int(bhv) // p.h, int(bhv) % p.h
            sz = dt.size
            q = p.q + (b_ * p.q_sb + h_ * p.q_sh) * sz
            k = p.k + (b_ * p.k_sb + h_ * p.k_sh) * sz
            v = p.v + (b_ * p.v_sb + h_ * p.v_sh) * sz
            o = p.o + (b_ * p.o_sb + h_ * p.o_sh) * sz
            unscale = np.ones((NT, 4, 2), F32)
            for j in range(4):
                for e1 in range(2):
                    c = c0 + 8 * j + 2 * tq + e1
                    ok = th & (c < p.d)
                    if ok.any():
                        unscale[:, j, e1] = np.where(ok, mul(div(F32(1), ev_scale(cx, int(bhv), c, ok)), scale), F32(1))
            slow_t, slow_c = [], []
            for mi in range(4):
                for j in range(4):
                    for e in range(4):
                        t = t0 + wr + 16 * mi + g + 8 * (e // 2)
                        c = c0 + 8 * j + 2 * tq + e % 2
                        ok = th & (t < p.t) & (c < p.d)
                        dn = acc[:, 1, mi, j, e]
                        sl = ok & (dn < tiny)
                        fast = ok & ~sl
                        qv = mem.load(q + (t * p.q_sn + c) * sz, fast, "q")
                        y = mul(sigmoid_t(dt, qv), mul(fdividef(acc[:, 0, mi, j, e], dn), unscale[:, j, e % 2]))
                        mem.store(o + (t * p.o_sn + c) * sz, dt.from_f32(y), fast, "o")
                        slow_t.append(t[sl])
                        slow_c.append(c[sl])
            t = np.concatenate(slow_t)
            if t.size:
                c = np.concatenate(slow_c)
                STATS["slow"] += t.size
                qv = mem.load(q + (t * p.q_sn + c) * sz, np.ones(t.shape, bool), "q")
                y = mul(sigmoid_t(dt, qv), aft_exact(cx, k, v, h_, t, c))
                mem.store(o + (t * p.o_sn + c) * sz, dt.from_f32(y), np.ones(t.shape, bool), "o")
        tok0 += nkb
        it += gdy
    if cl > 1:  # final cluster_sync
        yield "arrive"
        yield "wait"
        races.barrier()  # a cluster barrier orders this CTA too


def launch_cluster(mem, name, grid, p, dt, cl=FG_CL):
    """aft_full_tc_cl: the CTAs of each cluster of `cl` consecutive CTAs in x are interleaved as
    the barrier allows, with CTA 0 running ahead: once every CTA has arrived at barrier k, CTA 0
    passes wait k and runs on to its arrive k + 1 (its next block's remote stores included) before
    the others leave wait k — so a remote store into a stage that another CTA still reads after
    its arrive shows up as a race in that CTA's shared-memory race detector."""
    mem.launch += 1
    mem.kernel = name
    cx = Ctx(p, mem, dt, grid)
    gx, gy, gz = grid
    assert gx % cl == 0, "grid x is a whole number of clusters"

    def step(r, want):
        mem.cta = by * gx + x0 + r
        got = next(gens[r], None)
        assert got == want, f"cluster CTA {r}: expected {want}, got {got}"

    for by in range(gy):
        for x0 in range(0, gx, cl):
            smems = fg_cluster_smem(mem, cl)
            gens = [aft_full_tc_gen(cx, (x0 + r, by, 0), cl, r, smems) for r in range(cl)]
            for r in range(cl):
                step(r, "arrive")
            while True:  # every CTA is at an arrive
                mem.cta = by * gx + x0
                if next(gens[0], None) is None:  # none may finish before the others: check below
                    for r in range(1, cl):
                        step(r, None)
                    break
                mem.cta = by * gx + x0
                lead = next(gens[0], None)  # CTA 0 runs to its next arrive (or to its end)
                for r in range(1, cl):
                    step(r, "wait")
                    step(r, lead)
                if lead is None:
                    break


def launch(mem, name, fn, grid, p, dt):
    mem.launch += 1
    mem.kernel = name
    cx = Ctx(p, mem, dt, grid)
    gx, gy, gz = grid
    for bz in range(gz):
        for by in range(gy):
            for bx in range(gx):
                mem.cta = (bz * gy + by) * gx + bx
                fn(cx, (bx, by, bz))
