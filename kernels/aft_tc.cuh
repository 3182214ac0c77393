// AFT window pass on tensor cores (f16/bf16 storage; f32 keeps the CUDA-core aft_window for its
// 1e-5 tolerance). Same shifts, outside statistics and slow path as aft_window; the dense block
// product W (tile rows × keys) · [E⊙V | E] (keys × 64 channels each) runs as mma.sync m16n8k16 on
// operands of the storage type with fp32 accumulators.
//
// Operand range (shared with aft_full_tc.cuh). bf16 has fp32's range. f16 does not (normal down to
// 2^-14), so f16 operands are scaled into [0, 2^15]: W and E by 2^15, E⊙V by 2^(15 − b_c) with
// |V| < 2^b_c on channel c (vmax, from the chunk pass); values down to 2^-29 of their maximum stay
// normal. A value below that loses at most 2^-25 of the scaled unit, so over n dense keys an
// output whose scaled denominator is ≥ 4n (den ≥ n·2^-28) is off by at most 2^-11 relative; below
// that it is recomputed directly (aft_exact), as for an underflowed one.
//
// Tiles of 64 rows × 64 channels (the window kernel's), 4 warps in a 2 × 2 grid of 32 rows × (32
// E⊙V + the same 32 E) columns, so num and den of an output sit in one thread; per 16-key step a
// warp issues 2 ldmatrix.x4 (A) + 4 ldmatrix.x4.trans (B) for 16 mma. Staging writes the scaled
// 16-bit operands (half TF32's shared-memory bytes and twice its mma rate).
// Causal blocks that reach past a row multiply masked keys by a zero weight, which is exact for
// finite E, E⊙V; in a block holding non-finite ones, those alone are summed key by key (skipping
// masked keys, as aft_window does) and zeroed for the mma, so a poisoned later key never reaches
// earlier rows and every other column rounds as in a clean run (aft_tc_nonfinite_keys).
// Epilogue: num/den through shared memory, then Y = σ(Q)·ratio with coalesced Q reads and Y writes.
#pragma once
#include "mma.cuh"

#define AFT_TC_THREADS 128  // 4 warps
#define AFT_TC_WLD 40       // ws rows (halves): ldmatrix rows 80 bytes apart hit distinct banks
#define AFT_TC_KLD 136      // kv rows (halves): E⊙V in 0…63, E in 64…127; rows 272 bytes apart
#define AFT_TC_LD 72        // ratio tile rows (floats)
#define AFT_SCALE 32768.f   // 2^15: f16 operand scale of W and E

// Whether operands of type T are scaled into f16's range (see above).
template <typename T> struct AftScaled;
template <> struct AftScaled<f16> { static constexpr bool value = true; };
template <> struct AftScaled<bf16> { static constexpr bool value = false; };

// The scale of W and E (2^15 for f16, 1 for bf16).
template <typename T> __device__ __forceinline__ float aft_w_scale() { return AftScaled<T>::value ? AFT_SCALE : 1.f; }

// 2^k for −126 ≤ k ≤ 127.
__device__ __forceinline__ float aft_pow2(int k) { return __uint_as_float((u32)(k + 127) << 23); }

// b with |V| < 2^b for every V of a channel whose max |V| is vm (0 for none, NaN or Inf).
__device__ __forceinline__ int aft_vexp(float vm) {
  if (!(vm > 0.f) || !aft_finite(vm)) return 0;
  const int e = (int)((__float_as_uint(vm) >> 23) & 0xffu) - 127;  // vm = m·2^e, 1 ≤ m < 2
  return max(e + 1, -100);
}

// The scale of E⊙V on channel c of slice bh (1 for bf16).
template <typename T> __device__ __forceinline__ float aft_ev_scale(const AftParams& p, int bh, int c) {
  if (!AftScaled<T>::value) return 1.f;
  return aft_pow2(15 - aft_vexp(aft_vmax(p, bh, p.chunks)[c]));
}

// Smallest scaled denominator taken as exact with n dense keys (see above).
template <typename T> __device__ __forceinline__ float aft_den_floor(int n) {
  return AftScaled<T>::value ? fmaxf(4.f * (float)n, AFT_DEN_MIN) : AFT_DEN_MIN;
}

// E staging of one key block for the thread's channels ep, ep + 1 and keys warp + 4i:
// kv[r] = [E⊙V·se | E·sw] at dst (shared address of the thread's first pair). keys: the block's
// valid keys from the warp's first one. FAST: all keys valid and both channels one aligned
// 32-bit load. Returns NaN if a staged value is non-finite (E non-finite makes E⊙V so; 0·x is NaN
// for x = ±inf, NaN), else 0.
template <typename T, bool FAST>
__device__ __forceinline__ float aft_tc_stage_e(const T* kr, const T* vr, i64 kstep, i64 vstep, u32 dst, int keys,
                                               bool pair, bool ok0, bool ok1, const AftExp<T>& ex0,
                                               const AftExp<T>& ex1, float vf0, float vf1) {
  float chk = 0.f;
#pragma unroll
  for (int i = 0; i < AFT_KB / 4; ++i, kr += kstep, vr += vstep, dst += 4 * AFT_TC_KLD * 2) {
    float e0 = 0.f, e1 = 0.f, ev0 = 0.f, ev1 = 0.f;
    if (FAST || 4 * i < keys) {  // warp-uniform
      float k0, k1, v0, v1;
      if (FAST || pair) {
        unpack2<T>(*reinterpret_cast<const u32*>(kr), k0, k1);
        unpack2<T>(*reinterpret_cast<const u32*>(vr), v0, v1);
      } else {
        k0 = ok0 ? to_f32(kr[0]) : 0.f;
        v0 = ok0 ? to_f32(vr[0]) : 0.f;
        k1 = ok1 ? to_f32(kr[1]) : 0.f;
        v1 = ok1 ? to_f32(vr[1]) : 0.f;
      }
      e0 = ok0 ? ex0(k0) : 0.f;
      e1 = ok1 ? ex1(k1) : 0.f;
      ev0 = e0 * (v0 * vf0);
      ev1 = e1 * (v1 * vf1);
    }
    chk = fmaf(ev0, 0.f, fmaf(ev1, 0.f, chk));
    sts_u32(dst, pack2<T>(ev0, ev1));
    sts_u32(dst + AFT_CT * 2, pack2<T>(e0, e1));
  }
  return chk;
}

// aft_tc_stage_e with the pair loads of NB keys issued together (packed, 2 registers a key)
// before their exps and stores; in aft_tc_stage_e a later key's loads wait behind an earlier
// key's exps, one L2 round trip per key. Same values and stores. For kernels with registers to
// spare (NB a divisor of AFT_KB / 4): aft_window_tc keeps aft_tc_stage_e, since this form, even
// at NB = 1, spills 48 bytes in its bf16 build (sm_90a).
template <typename T, bool FAST, int NB>
__device__ __forceinline__ float aft_tc_stage_e_batched(const T* kr, const T* vr, i64 kstep, i64 vstep, u32 dst,
                                                       int keys, bool pair, bool ok0, bool ok1, const AftExp<T>& ex0,
                                                       const AftExp<T>& ex1, float vf0, float vf1) {
  constexpr int N = AFT_KB / 4;
  float chk = 0.f;
  auto put = [&](int i, float k0, float k1, float v0, float v1, bool valid) {
    float e0 = 0.f, e1 = 0.f, ev0 = 0.f, ev1 = 0.f;
    if (valid) {
      e0 = ok0 ? ex0(k0) : 0.f;
      e1 = ok1 ? ex1(k1) : 0.f;
      ev0 = e0 * (v0 * vf0);
      ev1 = e1 * (v1 * vf1);
    }
    chk = fmaf(ev0, 0.f, fmaf(ev1, 0.f, chk));
    const u32 at = dst + i * 4 * AFT_TC_KLD * 2;
    sts_u32(at, pack2<T>(ev0, ev1));
    sts_u32(at + AFT_CT * 2, pack2<T>(e0, e1));
  };
  if (FAST || pair) {
#pragma unroll
    for (int i0 = 0; i0 < N; i0 += NB) {
      u32 kp[NB], vp[NB];
#pragma unroll
      for (int j = 0; j < NB; ++j) {
        kp[j] = vp[j] = 0u;
        if (FAST || 4 * (i0 + j) < keys) {  // warp-uniform
          kp[j] = *reinterpret_cast<const u32*>(kr + (i0 + j) * kstep);
          vp[j] = *reinterpret_cast<const u32*>(vr + (i0 + j) * vstep);
        }
      }
#pragma unroll
      for (int j = 0; j < NB; ++j) {
        float k0, k1, v0, v1;
        unpack2<T>(kp[j], k0, k1);
        unpack2<T>(vp[j], v0, v1);
        put(i0 + j, k0, k1, v0, v1, FAST || 4 * (i0 + j) < keys);
      }
    }
  } else {
#pragma unroll
    for (int i = 0; i < N; ++i, kr += kstep, vr += vstep) {
      float k0 = 0.f, k1 = 0.f, v0 = 0.f, v1 = 0.f;
      if (4 * i < keys) {
        k0 = ok0 ? to_f32(kr[0]) : 0.f;
        v0 = ok0 ? to_f32(vr[0]) : 0.f;
        k1 = ok1 ? to_f32(kr[1]) : 0.f;
        v1 = ok1 ? to_f32(vr[1]) : 0.f;
      }
      put(i, k0, k1, v0, v1, 4 * i < keys);
    }
  }
  return chk;
}

// W staging (local, conv) of one key block for the thread's keys tp, tp + 1 and rows t = t0 + wr
// + 8n: ws[row] = W·sw at dst. wp: w at band index tp − t + s − 1 of the first row, wstep to the
// next; o = tp − t + sb − 1, in the band if in [0, 2sb − 1) (s clamped to T: same membership, no
// overflow); cf: shared address of wcf[wr]; dstep: bytes from a ws row to the one 8 further.
// Keys < lim(t) count (FAST: none masked).
template <typename T, bool FAST>
__device__ __forceinline__ void aft_tc_stage_w(const AftParams& p, const float* wp, i64 wstep, int o, int sb, u32 dst,
                                               u32 cf, int t, int tp, int hi, u32 dstep = 8 * AFT_TC_WLD * 2) {
  const u32 nb = 2 * sb - 1;
  constexpr int R = AFT_CHUNK / 8;
  // Every row's w first, then the exps and stores (else one L2 round trip per row).
  float wv[R][2];
#pragma unroll
  for (int n = 0; n < R; ++n) {
    const int tn = t + 8 * n, on = o - 8 * n;
    const int lim = FAST ? tp + 2 : (tn >= p.t ? 0 : (p.causal ? min(hi, tn + 1) : hi));
    const float* w = wp + n * wstep;
    wv[n][0] = tp < lim && (u32)on < nb ? w[0] : 0.f;  // rows ≥ T have no w row
    wv[n][1] = tp + 1 < lim && (u32)(on + 1) < nb ? w[1] : 0.f;
  }
#pragma unroll
  for (int n = 0; n < R; ++n, o -= 8, t += 8, dst += dstep, cf += 8 * 8) {
    const float2 c = lds_f2(cf);  // log2(sw) − r_t·log2(e), g_t·sw
    const int lim = FAST ? tp + 2 : (t >= p.t ? 0 : (p.causal ? min(hi, t + 1) : hi));
    float w0 = tp < lim ? c.y : 0.f, w1 = tp + 1 < lim ? c.y : 0.f;
    if (tp < lim && (u32)o < nb) w0 = ex2_fast(fmaf(wv[n][0], LOG2E_F, c.x));
    if (tp + 1 < lim && (u32)(o + 1) < nb) w1 = ex2_fast(fmaf(wv[n][1], LOG2E_F, c.x));
    sts_u32(dst, pack2<T>(w0, w1));
  }
}

// One 16-key step of a warp's (16·MI rows) × (32 E⊙V + the same 32 E) block on mma.sync: keys
// ks … ks + 15 of a: weights [row][key] (row stride ALD) and b: [key][E⊙V | E] (row stride BLD,
// E at +AFT_CT); rows row0 + 16·mi …, columns col0 + 8·j … of the accumulators. Per step: MI + 4
// ldmatrix.x4 for 16·MI mma. ald: a's row stride when not the compile-time ALD (the shared band).
template <typename T, int MI, int ALD, int BLD>
__device__ __forceinline__ void aft_tc_mma16(const u16* a, const u16* b, int ks, int row0, int col0,
                                             float (&num)[MI][4][4], float (&den)[MI][4][4], int ald = ALD) {
  const int lane = threadIdx.x % 32;
  u32 af[MI][4];
#pragma unroll
  for (int mi = 0; mi < MI; ++mi) ldmatrix_x4(af[mi], &a[(row0 + 16 * mi + lane % 16) * ald + ks + (lane / 16) * 8]);
  const int key = ks + lane % 8 + ((lane / 8) % 2) * 8;
#pragma unroll
  for (int j = 0; j < 4; j += 2) {
    u32 bn[4], bd[4];
    const u16* bp = &b[key * BLD + col0 + 8 * j + (lane / 16) * 8];
    ldmatrix_x4_trans(bn, bp);
    ldmatrix_x4_trans(bd, bp + AFT_CT);
#pragma unroll
    for (int mi = 0; mi < MI; ++mi) {
      mma16816<T>(num[mi][j], af[mi], bn[0], bn[1]);
      mma16816<T>(num[mi][j + 1], af[mi], bn[2], bn[3]);
      mma16816<T>(den[mi][j], af[mi], bd[0], bd[1]);
      mma16816<T>(den[mi][j + 1], af[mi], bd[2], bd[3]);
    }
  }
}

// Causal key blocks holding a non-finite staged value: the zero weights of keys after a row would
// turn 0·NaN into NaN in that earlier row. The fix keeps every other value on the mma path, so the
// columns of other channels (and slices) round exactly as in a clean run:
//  1. aft_tc_nonfinite_keys: each warp adds the block's non-finite values key by key, each only
//     into the rows at or after its key;
//  2. (barrier) they become zeros in shared memory (aft_tc_nonfinite_block does 1 and 2);
//  3. (barrier) the usual mma over the block, now finite.
// a: weights [row][key] (row stride ALD), b: [key][E⊙V | E] (row stride BLD, E at +AFT_CT); the
// warp's accumulators cover rows row0 + 16·mi + g + 8·(e / 2) and columns col0 + 8·j + 2·tq + e % 2,
// tile rows starting at sequence row t0.
template <typename T, int MI, int ALD, int BLD>
__device__ void aft_tc_nonfinite_keys(const u16* a, const u16* b, int t0, int kb, int row0, int col0,
                                      float (&num)[MI][4][4], float (&den)[MI][4][4], int ald = ALD) {
  const int lane = threadIdx.x % 32, g = lane / 4, tq = lane % 4;
  const u16 e = exp_mask<T>();
#pragma unroll 1
  for (int r = 0; r < AFT_KB; ++r)
#pragma unroll
    for (int j = 0; j < 4; ++j)
#pragma unroll
      for (int e1 = 0; e1 < 2; ++e1) {
        const int col = col0 + 8 * j + 2 * tq + e1;
        const u16 bn = b[r * BLD + col], bd = b[r * BLD + AFT_CT + col];
        if ((bn & e) != e && (bd & e) != e) continue;
#pragma unroll
        for (int mi = 0; mi < MI; ++mi)
#pragma unroll
          for (int hh = 0; hh < 2; ++hh) {
            const int row = row0 + 16 * mi + g + 8 * hh;
            if (kb + r > t0 + row) continue;
            const float wt = to_f32(T{a[row * ald + r]});
            float& n = num[mi][j][2 * hh + e1];
            float& d = den[mi][j][2 * hh + e1];
            if ((bn & e) == e) n = fmaf(wt, to_f32(T{bn}), n);
            if ((bd & e) == e) d = fmaf(wt, to_f32(T{bd}), d);
          }
      }
}

// Steps 1–2 above for a staged block b of COLS columns (the CTA's; a CTA-uniform call).
template <typename T, int MI, int ALD, int BLD, int COLS, int THREADS>
__device__ void aft_tc_nonfinite_block(const u16* a, u16* b, int t0, int kb, int row0, int col0,
                                       float (&num)[MI][4][4], float (&den)[MI][4][4], int ald = ALD) {
  aft_tc_nonfinite_keys<T, MI, ALD, BLD>(a, b, t0, kb, row0, col0, num, den, ald);
  __syncthreads();  // every warp has read the non-finite values
#pragma unroll 1
  for (int i = threadIdx.x; i < AFT_KB * COLS / 2; i += THREADS) {
    u32* x = reinterpret_cast<u32*>(&b[(i / (COLS / 2)) * BLD + 2 * (i % (COLS / 2))]);
    *x = finite_or_zero2<T>(*x);
  }
  __syncthreads();
}

// A thread's E staging role in a slice: channels ep, ep + 1 (ep = 2·lane) of the channel tile at
// c0; kc, vc: K and V at them. pair: both channels as one 32-bit load (both exist and every pair
// address is 4-byte aligned).
template <typename T> struct AftTcE {
  const T *kc, *vc;
  bool ok0, ok1, pair;
  __device__ __forceinline__ AftTcE(const AftParams& p, const T* k, const T* v, int c0) {
    const int ep = 2 * (threadIdx.x % 32);
    ok0 = c0 + ep < p.d;
    ok1 = c0 + ep + 1 < p.d;
    kc = k + c0 + ep;
    vc = v + c0 + ep;
    pair = ok1 && ((reinterpret_cast<u64>(kc) | reinterpret_cast<u64>(vc)) & 3) == 0 && ((p.k_sn | p.v_sn) & 1) == 0;
  }
};

// E staging of key block kb (keys < hi) for role e, the unchecked form when every key is valid
// and both channels load as one pair; kv at kv_addr. NB > 1: pair loads NB keys at a time
// (aft_tc_stage_e_batched).
template <typename T, int NB>
__device__ __forceinline__ float aft_tc_stage_e_block(const AftParams& p, const AftTcE<T>& e, u32 kv_addr, int kb, int hi,
                                                      const AftExp<T>& ex0, const AftExp<T>& ex1, float vf0, float vf1) {
  const int warp = threadIdx.x / 32, ep = 2 * (threadIdx.x % 32);
  const T* kr = e.kc + (i64)(kb + warp) * p.k_sn;
  const T* vr = e.vc + (i64)(kb + warp) * p.v_sn;
  const u32 edst = kv_addr + (warp * AFT_TC_KLD + ep) * 2;
  if constexpr (NB > 1) {
    return e.pair && kb + AFT_KB <= hi
               ? aft_tc_stage_e_batched<T, true, NB>(kr, vr, 4 * p.k_sn, 4 * p.v_sn, edst, AFT_KB, true, true, true,
                                                     ex0, ex1, vf0, vf1)
               : aft_tc_stage_e_batched<T, false, NB>(kr, vr, 4 * p.k_sn, 4 * p.v_sn, edst, hi - kb - warp, e.pair,
                                                      e.ok0, e.ok1, ex0, ex1, vf0, vf1);
  } else {
    return e.pair && kb + AFT_KB <= hi
               ? aft_tc_stage_e<T, true>(kr, vr, 4 * p.k_sn, 4 * p.v_sn, edst, AFT_KB, true, true, true, ex0, ex1, vf0,
                                         vf1)
               : aft_tc_stage_e<T, false>(kr, vr, 4 * p.k_sn, 4 * p.v_sn, edst, hi - kb - warp, e.pair, e.ok0, e.ok1,
                                          ex0, ex1, vf0, vf1);
  }
}

// W staging (local, conv) of key block kb of the tile at t0 (keys < hi) for the thread's keys
// wk, wk + 1 and rows wr + 8i: wrow0 (w at band index −(t0 + wr) + s − 1, wstep to the thread's
// next row), into shared memory at wdst (rows dstep bytes per 8), the unchecked form when no key
// or row is masked.
template <typename T>
__device__ __forceinline__ void aft_tc_stage_w_block(const AftParams& p, const float* wrow0, i64 wstep, int sb, u32 wdst,
                                                     u32 cf, int t0, int kb, int hi, u32 dstep) {
  const int wk = 2 * (threadIdx.x % 16), wr = threadIdx.x / 16, tp = kb + wk;
  const int o = tp - (t0 + wr) + sb - 1;
  if (kb + AFT_KB <= hi && t0 + AFT_CHUNK <= p.t && (!p.causal || kb + AFT_KB - 1 <= t0))
    aft_tc_stage_w<T, true>(p, wrow0 + tp, wstep, o, sb, wdst, cf, t0 + wr, tp, hi, dstep);
  else
    aft_tc_stage_w<T, false>(p, wrow0 + tp, wstep, o, sb, wdst, cf, t0 + wr, tp, hi, dstep);
}

// Threads < AFT_CT: the statistics of their channel outside the tile's dense keys and its E⊙V
// scale, in scaled units (ssh = se, ash = a·sw·se, zsh = z·sw²), after the channel maxima msh.
template <typename T>
__device__ __forceinline__ void aft_tc_outside(const AftParams& p, int bh, const AftWindow& win, int c0,
                                               const float* msh, float* ssh, float* ash, float* zsh) {
  if (threadIdx.x < AFT_CT) {
    const float sw = aft_w_scale<T>();
    const int c = c0 + threadIdx.x;
    const bool ok = c < p.d;
    const AftStat az = ok ? aft_outside(p, bh, win, c, msh[threadIdx.x]) : AftStat{0.f, 0.f, 0.f};
    const float se = ok ? aft_ev_scale<T>(p, bh, c) : 1.f;
    ssh[threadIdx.x] = se;
    ash[threadIdx.x] = az.a * sw * se;
    zsh[threadIdx.x] = az.z * sw * sw;
  }
}

// The accumulators of a window tile start from the statistics outside [lo, hi), weighted g_t.
// Element e of fragment (mi, nj) is row rw + 16·mi + g + 8·(e / 2), channel cw + 8·nj + 2·tq +
// e % 2 (the 2 × 2 warp layout of aft_window_tc).
__device__ __forceinline__ void aft_tc_init_acc(const float* gsh, const float* ash, const float* zsh,
                                                float (&num)[2][4][4], float (&den)[2][4][4]) {
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32, g = lane / 4, tq = lane % 4;
  const int rw = (warp % 2) * 32, cw = (warp / 2) * 32;
#pragma unroll
  for (int mi = 0; mi < 2; ++mi)
#pragma unroll
    for (int nj = 0; nj < 4; ++nj)
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const float gr = gsh[rw + 16 * mi + g + 8 * (e / 2)];
        const int cc = cw + 8 * nj + 2 * tq + e % 2;
        num[mi][nj][e] = gr * ash[cc];
        den[mi][nj][e] = gr * zsh[cc];
      }
}

// The end of a window tile: num/den (unscaled) of the warps' accumulators, then Y = σ(Q)·ratio
// for rows [t0, t0 + AFT_CHUNK) × channels [c0, c0 + AFT_CT) of slice (q, k, v, o) of head h;
// nkeys: the tile's dense keys (the denominator floor). ratio aliases the operand tiles: the
// first barrier ends their use. The warp layout of aft_window_tc (4 warps, 2 × 2).
template <typename T>
__device__ __forceinline__ void aft_tc_epilogue(const AftParams& p, float (*ratio)[AFT_TC_LD], const float* ssh,
                                                float (&num)[2][4][4], float (&den)[2][4][4], int t0, int c0,
                                                int h, int nkeys, const T* q, const T* k, const T* v, T* o) {
  constexpr int ROWS = AFT_CHUNK;
  const float sw = aft_w_scale<T>();
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32, g = lane / 4, tq = lane % 4;
  const int rw = (warp % 2) * 32, cw = (warp / 2) * 32;
  // num/den (unscaled) into the ratio tile; outputs whose denominator is below the floor are
  // recomputed after the others, once the accumulators are dead (keeps the call out of the
  // unrolled loop).
  __syncthreads();  // every warp done with kv/ws
  const float floor = aft_den_floor<T>(nkeys);
  u32 slow = 0;
#pragma unroll
  for (int mi = 0; mi < 2; ++mi)
#pragma unroll
    for (int nj = 0; nj < 4; ++nj)
#pragma unroll
      for (int hh = 0; hh < 2; ++hh) {
        const int row = rw + 16 * mi + g + 8 * hh, cc = cw + 8 * nj + 2 * tq;
        float y[2];
#pragma unroll
        for (int e1 = 0; e1 < 2; ++e1) {
          const int e = 2 * hh + e1;
          y[e1] = __fdividef(num[mi][nj][e], den[mi][nj][e]) * (sw / ssh[cc + e1]);  // ≤ 2 ulp
          if (den[mi][nj][e] < floor && t0 + row < p.t && c0 + cc + e1 < p.d)
            slow |= 1u << (((mi * 4 + nj) * 2 + hh) * 2 + e1);
        }
        *reinterpret_cast<float2*>(&ratio[row][cc]) = float2{y[0], y[1]};
      }
#pragma unroll 1
  for (; slow; slow &= slow - 1) {
    const int bit = __ffs(slow) - 1;
    const int mi = bit / 16, nj = (bit / 4) % 4, hh = (bit / 2) % 2, e1 = bit % 2;
    const int row = rw + 16 * mi + g + 8 * hh, cc = cw + 8 * nj + 2 * tq + e1;
    ratio[row][cc] = aft_exact<T>(p, k, v, h, t0 + row, c0 + cc);
  }
  __syncthreads();
  const int rows = min(ROWS, p.t - t0);
  const T* qt = q + (i64)t0 * p.q_sn + c0;
  T* ot = o + (i64)t0 * p.o_sn + c0;
  // Y = σ(Q)·ratio. By 16-byte vectors when the tile's 64 channels exist and Q, O rows are 16-byte
  // aligned: the thread's 8 channels 8·(tid % 8) … of rows tid / 8 + 16i (a quarter-warp reads
  // one 256-byte ratio row: no bank conflict); else one channel per thread, rows strided.
  // Q and Y are touched for the last time: evict-first in L2, so that they do not push out the
  // K, V rows the chunk pass left there for this pass (the L2 seam of bench/NOTES.md).
  if (c0 + AFT_CT <= p.d && ((p.q_sn | p.o_sn) & 7) == 0 && ((reinterpret_cast<u64>(qt) | reinterpret_cast<u64>(ot)) & 15) == 0) {
    const int cv = 8 * (threadIdx.x % 8);
    const u64 last = l2_evict_first();
#pragma unroll
    for (int row = threadIdx.x / 8; row < ROWS; row += AFT_TC_THREADS / 8) {
      if (row >= rows) break;
      const uint4 qv = ld_global_v4_hint(qt + (i64)row * p.q_sn + cv, last);
      const float4 r0 = *reinterpret_cast<const float4*>(&ratio[row][cv]);
      const float4 r1 = *reinterpret_cast<const float4*>(&ratio[row][cv + 4]);
      float x[8];
      unpack2<T>(qv.x, x[0], x[1]);
      unpack2<T>(qv.y, x[2], x[3]);
      unpack2<T>(qv.z, x[4], x[5]);
      unpack2<T>(qv.w, x[6], x[7]);
      const uint4 yv = {pack2<T>(aft_sigmoid_t<T>(x[0]) * r0.x, aft_sigmoid_t<T>(x[1]) * r0.y),
                        pack2<T>(aft_sigmoid_t<T>(x[2]) * r0.z, aft_sigmoid_t<T>(x[3]) * r0.w),
                        pack2<T>(aft_sigmoid_t<T>(x[4]) * r1.x, aft_sigmoid_t<T>(x[5]) * r1.y),
                        pack2<T>(aft_sigmoid_t<T>(x[6]) * r1.z, aft_sigmoid_t<T>(x[7]) * r1.w)};
      st_global_v4_hint(ot + (i64)row * p.o_sn + cv, yv, last);
    }
    return;
  }
  {  // the thread's channel lane + 32·(warp % 2), rows warp / 2 + 2i
    const int cc = lane + 32 * (warp % 2), row0 = warp / 2;
    const T* qp = qt + (i64)row0 * p.q_sn + cc;
    T* op = ot + (i64)row0 * p.o_sn + cc;
    if (c0 + cc < p.d)
#pragma unroll 4
      for (int row = row0; row < rows; row += 2, qp += 2 * p.q_sn, op += 2 * p.o_sn)
        *op = from_f32<T>(aft_sigmoid_t<T>(to_f32(*qp)) * ratio[row][cc]);
  }
}

template <typename T>
__device__ void aft_window_tc(const AftParams& p) {
  constexpr int ROWS = AFT_CHUNK, THREADS = AFT_TC_THREADS, KB = AFT_KB;
  static_assert(THREADS == 128 && ROWS == 64 && AFT_CT == 64 && KB == 32, "warp layout");
  static_assert((KB * AFT_TC_KLD + ROWS * AFT_TC_WLD) * 2 <= ROWS * AFT_TC_LD * 4, "operands fit the ratio tile");
  // The 16-bit operands while summing, the [ROWS][AFT_TC_LD] ratio tile after.
  __shared__ __align__(16) float buf[ROWS * AFT_TC_LD];
  u16* kv = reinterpret_cast<u16*>(buf);  // [KB][AFT_TC_KLD]
  u16* ws = kv + KB * AFT_TC_KLD;         // [ROWS][AFT_TC_WLD]
  float(*ratio)[AFT_TC_LD] = reinterpret_cast<float(*)[AFT_TC_LD]>(buf);
  __shared__ float rsh[ROWS], gsh[ROWS], msh[AFT_CT], ash[AFT_CT], zsh[AFT_CT], ssh[AFT_CT];
  __shared__ float2 wcf[ROWS];  // per row: log2(sw) − r_t·log2(e), g_t·sw (W staging)
  // (Read in the tile loop, blockIdx.y cost 64 bytes of spills in an f16 sm_90a build without -lineinfo.)
  const int tile0 = opaque(blockIdx.y);
  const AftSlice<T> sl = aft_slice<T>(p, blockIdx.x);
  const int bh = sl.bh, h = sl.h, c0 = sl.c0;
  const T *q = sl.q, *k = sl.k, *v = sl.v;
  T* o = sl.o;
  const float sw = aft_w_scale<T>(), l2sw = AftScaled<T>::value ? 15.f : 0.f;
  // Warp w: rows rw … rw + 32 (two m-tiles), channels cw … cw + 32 (four n-tiles of E⊙V for
  // num and the same four of E for den).
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  const int rw = (warp % 2) * 32, cw = (warp / 2) * 32;
  // Staging roles, fixed per thread so its shifts and pointers are per tile, not per element:
  // E: channels ep, ep + 1 of the tile, keys warp + 4i (a warp stores one 128-byte kv row);
  // W: keys wk, wk + 1 of the block, rows wr + 8i (16 lanes per ws row, coalesced w reads).
  const int ep = 2 * lane, wk = 2 * (threadIdx.x % 16), wr = threadIdx.x / 16;
  const AftTcE<T> er(p, k, v, c0);
  // w row of the band: local: row t (band floats each), conv: row h. wrow0 + tp is w at band
  // index tp − t + s − 1 for t = t0 + wr; the next row of the thread (t + 8) is wstep further.
  // The band test uses s clamped to T (same membership for keys and rows < T, no overflow).
  const i64 band = 2 * (i64)p.window - 1;
  const int sb = min(p.window, p.t);
  const i64 wstep = p.variant == AFT_LOCAL ? 8 * (band - 1) : -8;
  const u32 kv_addr = smem_addr(kv), ws_addr = smem_addr(ws), wcf_addr = smem_addr(&wcf[wr]);

  for (int tile = tile0; tile < p.chunks; tile += gridDim.y) {
    const int t0 = tile * ROWS;
    const AftWindow win = aft_window_of(p, t0);
    const float* wrow0 = reinterpret_cast<const float*>(p.w) + (p.variant == AFT_LOCAL ? (i64)(t0 + wr) : (i64)h) * band +
                         (p.window - 1) - (t0 + wr);
    __syncthreads();  // previous tile done with the shared arrays
    aft_tile_shifts<THREADS>(p, bh, h, c0, t0, msh, rsh, gsh);
    __syncthreads();
    aft_tc_outside<T>(p, bh, win, c0, msh, ssh, ash, zsh);
    if (threadIdx.x < ROWS) wcf[threadIdx.x] = float2{fmaf(-rsh[threadIdx.x], LOG2E_F, l2sw), gsh[threadIdx.x] * sw};
    __syncthreads();
    // E·sw = exp(K − M_c)·sw and E⊙V·se = (E·sw)·(V·se/sw) for the thread's two channels.
    const AftExp<T> ex0(er.ok0 ? msh[ep] : 0.f, l2sw), ex1(er.ok1 ? msh[ep + 1] : 0.f, l2sw);
    const float vf0 = er.ok0 ? ssh[ep] / sw : 0.f, vf1 = er.ok1 ? ssh[ep + 1] / sw : 0.f;

    float num[2][4][4], den[2][4][4];
    aft_tc_init_acc(gsh, ash, zsh, num, den);

    for (int kb = win.lo; kb < win.hi; kb += KB) {
      __syncthreads();  // previous block consumed
      // Stage kv[r] = [E⊙V (scaled) | E (scaled)] and ws[i][r] = W (scaled), 16-bit, two
      // adjacent values per 32-bit store; bad: a staged value is non-finite (0·x is NaN then).
      // Fast forms: no masked key (keys < hi; causal: before the tile's first row; rows < T).
      const float chk = aft_tc_stage_e_block<T, 1>(p, er, kv_addr, kb, win.hi, ex0, ex1, vf0, vf1);
      const u32 wdst = ws_addr + (wr * AFT_TC_WLD + wk) * 2;
      if (p.variant == AFT_SIMPLE) {  // causal simple: weight 1 up to the row
        const int tp = kb + wk;  // the thread's first key
#pragma unroll 4
        for (int i = wr; i < ROWS; i += 8) {
          const int t = t0 + i, lim = t >= p.t ? 0 : min(win.hi, t + 1);
          sts_u32(wdst + i / 8 * 8 * AFT_TC_WLD * 2, pack2<T>(tp < lim ? sw : 0.f, tp + 1 < lim ? sw : 0.f));
        }
      } else {
        aft_tc_stage_w_block<T>(p, wrow0, wstep, sb, wdst, wcf_addr, t0, kb, win.hi, 8 * AFT_TC_WLD * 2);
      }
      const bool bad = !aft_finite(chk);
      const bool any_bad = __syncthreads_or(bad);
      if (p.causal && kb + KB - 1 > t0 && any_bad) {  // CTA-uniform
        aft_tc_nonfinite_block<T, 2, AFT_TC_WLD, AFT_TC_KLD, 2 * AFT_CT, THREADS>(ws, kv, t0, kb, rw, cw, num, den);
      }
#pragma unroll
      for (int ks = 0; ks < KB; ks += 16) aft_tc_mma16<T, 2, AFT_TC_WLD, AFT_TC_KLD>(ws, kv, ks, rw, cw, num, den);
    }

    aft_tc_epilogue<T>(p, ratio, ssh, num, den, t0, c0, h, win.hi - win.lo, q, k, v, o);
  }
}

// The window kernel with the whole band of W staged at once ([ROWS][bcols + 8], keys lo … lo +
// bcols) and reused:
//  * AFT-local: w is shared over batch, heads and channels, so a tile's row shifts and W depend on
//    the tile alone; they are staged once per tile for a group of p.group consecutive slices.
//  * AFT-conv (p.group = 1: u is per head): an interior tile (every row's band inside [0, T), the
//    key window unclipped) has the same row shifts and W, relative to t0, as the next interior
//    one; a CTA walks a contiguous strip of tiles and restages only at the sequence's ends.
// Each slice then runs aft_window_tc's E staging, mma and epilogue against the band. Same values
// and summation order as aft_window_tc, so the same outputs bit for bit; per 32-key block a warp
// skips the W staging (≈ 140 of its ≈ 455 instructions), and the band maxima of the row shifts
// are paid once per group or strip. Grid: x = slice groups, y = strips of ⌈chunks / gridDim.y⌉
// tiles (local: one tile per strip, grid-stride); the chunk pass ran in the reverse of the
// strips' progress (aft_chunk_block), so the first K, V read here may still be in L2. Dynamic
// shared memory aft_band_smem_bytes(bcols): the band, then the kv | ratio union.
__host__ __device__ constexpr int aft_band_smem_bytes(int bcols) {
  return AFT_CHUNK * (bcols + 8) * 2 + AFT_CHUNK * AFT_TC_LD * 4;
}
template <typename T, bool CONV>
__device__ void aft_window_band_tc(const AftParams& p) {
  constexpr int ROWS = AFT_CHUNK, THREADS = AFT_TC_THREADS, KB = AFT_KB;
  static_assert(KB * AFT_TC_KLD * 2 <= ROWS * AFT_TC_LD * 4, "kv fits the ratio tile");
  extern __shared__ __align__(16) float aft_band_smem[];
  const int bld = p.bcols + 8;  // band row (halves): ≡ 8 mod 32, so ldmatrix rows hit distinct banks
  u16* ws = reinterpret_cast<u16*>(aft_band_smem);  // [ROWS][bld]
  float* buf = aft_band_smem + ROWS * bld / 2;
  u16* kv = reinterpret_cast<u16*>(buf);  // [KB][AFT_TC_KLD]
  float(*ratio)[AFT_TC_LD] = reinterpret_cast<float(*)[AFT_TC_LD]>(buf);
  __shared__ float rsh[ROWS], gsh[ROWS], msh[AFT_CT], ash[AFT_CT], zsh[AFT_CT], ssh[AFT_CT];
  __shared__ float2 wcf[ROWS];
  const float sw = aft_w_scale<T>(), l2sw = AftScaled<T>::value ? 15.f : 0.f;
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  const int rw = (warp % 2) * 32, cw = (warp / 2) * 32;
  const int ep = 2 * lane, wk = 2 * (threadIdx.x % 16), wr = threadIdx.x / 16;
  const i64 band = 2 * (i64)p.window - 1;
  const int sb = min(p.window, p.t);
  const u32 kv_addr = smem_addr(kv), ws_addr = smem_addr(ws), wcf_addr = smem_addr(&wcf[wr]);
  const int slices = p.b * p.h * div_up(p.d, AFT_CT);
  const int sx0 = blockIdx.x * p.group, sx1 = CONV ? sx0 + 1 : min(slices, sx0 + p.group);
  // Interior tiles (every row's band inside [0, T), the key window unclipped) have the same row
  // shifts and W relative to t0 under AFT-conv (u per head): staged once, reused by the next ones.
  bool staged_interior = false;
  // Tiles: local: grid-stride; conv: a contiguous strip per CTA (long, so the band is reused).
  // Bounds and per-variant constants are recomputed from the parameters where used (registers
  // are tight).
  for (int tile = CONV ? blockIdx.y * div_up(p.chunks, gridDim.y) : blockIdx.y;
       tile < (CONV ? min(p.chunks, (int)(blockIdx.y + 1) * div_up(p.chunks, gridDim.y)) : p.chunks);
       tile += CONV ? 1 : gridDim.y) {
    const int t0 = tile * ROWS;
    const AftWindow win = aft_window_of(p, t0);
    const int reach = AFT_CHUNK * div_up(p.window - 1, AFT_CHUNK);
    const bool interior = CONV && t0 >= p.window - 1 && win.lo == t0 - reach &&
                          win.hi == t0 + ROWS + (p.causal ? 0 : reach) &&
                          (p.causal ? t0 + ROWS <= p.t : t0 + ROWS + p.window - 1 <= p.t);
    const bool restage = !(interior && staged_interior);
    staged_interior = interior;
    __syncthreads();  // previous tile done with the band and the row shifts
    if (restage) {  // the row shifts, then W of every key block, as aft_window_tc stages it
      const int hw = CONV ? (sx0 / div_up(p.d, AFT_CT)) % p.h : 0;  // conv: the CTA's one head
      aft_tile_shifts<THREADS, false, true>(p, 0, hw, 0, t0, msh, rsh, gsh);
      __syncthreads();
      if (threadIdx.x < ROWS) wcf[threadIdx.x] = float2{fmaf(-rsh[threadIdx.x], LOG2E_F, l2sw), gsh[threadIdx.x] * sw};
      __syncthreads();
      const i64 wstep = CONV ? -8 : 8 * (band - 1);
      const float* wrow0 = reinterpret_cast<const float*>(p.w) + (CONV ? (i64)hw : (i64)(t0 + wr)) * band +
                           (p.window - 1) - (t0 + wr);
      for (int kb = win.lo; kb < win.hi; kb += KB)
        aft_tc_stage_w_block<T>(p, wrow0, wstep, sb, ws_addr + (wr * bld + (kb - win.lo) + wk) * 2, wcf_addr, t0, kb,
                                win.hi, 8 * bld * 2);
    }
    for (int sx = sx0; sx < sx1; ++sx) {
      const AftSlice<T> sl = aft_slice<T>(p, sx);
      const int bh = sl.bh, c0 = sl.c0;
      const AftTcE<T> er(p, sl.k, sl.v, c0);
      __syncthreads();  // the previous slice's epilogue done with ratio and ssh (and the band staged)
      aft_tile_shifts<THREADS, true, false>(p, bh, sl.h, c0, t0, msh, rsh, gsh);
      __syncthreads();
      aft_tc_outside<T>(p, bh, win, c0, msh, ssh, ash, zsh);
      __syncthreads();
      const AftExp<T> ex0(er.ok0 ? msh[ep] : 0.f, l2sw), ex1(er.ok1 ? msh[ep + 1] : 0.f, l2sw);
      const float vf0 = er.ok0 ? ssh[ep] / sw : 0.f, vf1 = er.ok1 ? ssh[ep + 1] / sw : 0.f;
      float num[2][4][4], den[2][4][4];
      aft_tc_init_acc(gsh, ash, zsh, num, den);
      for (int kb = win.lo; kb < win.hi; kb += KB) {
        __syncthreads();  // previous block consumed
        const float chk = aft_tc_stage_e_block<T, 4>(p, er, kv_addr, kb, win.hi, ex0, ex1, vf0, vf1);
        const bool any_bad = __syncthreads_or(!aft_finite(chk));
        const u16* wb = ws + (kb - win.lo);  // this block's columns of the band
        if (p.causal && kb + KB - 1 > t0 && any_bad) {  // CTA-uniform
          aft_tc_nonfinite_block<T, 2, 0, AFT_TC_KLD, 2 * AFT_CT, THREADS>(wb, kv, t0, kb, rw, cw, num, den, bld);
        }
#pragma unroll
        for (int ks = 0; ks < KB; ks += 16) aft_tc_mma16<T, 2, 0, AFT_TC_KLD>(wb, kv, ks, rw, cw, num, den, bld);
      }
      aft_tc_epilogue<T>(p, ratio, ssh, num, den, t0, c0, sl.h, win.hi - win.lo, sl.q, sl.k, sl.v, sl.o);
    }
  }
}

// 4 CTAs per SM (≤ 128 registers, 19 KB of shared memory each): 16 warps.
#define AFT_TC_DTYPE(T, NAME)                                                                      \
  extern "C" __global__ void __launch_bounds__(AFT_TC_THREADS, 4) aft_window_tc_##NAME(               \
      const __grid_constant__ AftParams p) {                                                       \
    aft_window_tc<T>(p);                                                                           \
  }                                                                                                \
  extern "C" __global__ void __launch_bounds__(AFT_TC_THREADS, 4) aft_window_band_tc_##NAME(          \
      const __grid_constant__ AftParams p) {                                                       \
    aft_window_band_tc<T, false>(p);                                                               \
  }                                                                                                \
  extern "C" __global__ void __launch_bounds__(AFT_TC_THREADS, 4) aft_window_band_conv_tc_##NAME(     \
      const __grid_constant__ AftParams p) {                                                       \
    aft_window_band_tc<T, true>(p);                                                                \
  }

AFT_TC_DTYPE(f16, f16)
AFT_TC_DTYPE(bf16, bf16)

// Mirrored in src/ops/aft.rs (band_smem_bytes).
static_assert(aft_band_smem_bytes(192) == 44032, "band kernel shared memory changed: update Rust");
