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
// finite E, E⊙V; a block holding a non-finite one is summed key by key instead (skipping masked
// keys, as aft_window does), so a poisoned later key never reaches earlier rows.
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
  const AftSlice<T> sl = aft_slice<T>(p);
  const int bh = sl.bh, h = sl.h, c0 = sl.c0;
  const T *q = sl.q, *k = sl.k, *v = sl.v;
  T* o = sl.o;
  const float sw = aft_w_scale<T>();
  // Warp w: rows rw … rw + 32 (two m-tiles), channels cw … cw + 32 (four n-tiles of E⊙V for
  // num and the same four of E for den).
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32, g = lane / 4, tq = lane % 4;
  const int rw = (warp % 2) * 32, cw = (warp / 2) * 32;

  for (int tile = blockIdx.y; tile < p.chunks; tile += gridDim.y) {
    const int t0 = tile * ROWS;
    const AftWindow win = aft_window_of(p, t0);
    __syncthreads();  // previous tile done with the shared arrays
    aft_tile_shifts<THREADS>(p, bh, h, c0, t0, msh, rsh, gsh);
    __syncthreads();
    if (threadIdx.x < AFT_CT) {  // outside statistics and the E⊙V scale, in scaled units
      const int c = c0 + threadIdx.x;
      const bool ok = c < p.d;
      const AftStat az = ok ? aft_outside(p, bh, win, c, msh[threadIdx.x]) : AftStat{0.f, 0.f, 0.f};
      const float se = ok ? aft_ev_scale<T>(p, bh, c) : 1.f;
      ssh[threadIdx.x] = se;
      ash[threadIdx.x] = az.a * sw * se;
      zsh[threadIdx.x] = az.z * sw * sw;
    }
    __syncthreads();

    // Accumulators start from the statistics outside [lo, hi), weighted g_t. Element e of
    // fragment (mi, nj) is row rw + 16·mi + g + 8·(e / 2), channel cw + 8·nj + 2·tq + e % 2.
    float num[2][4][4], den[2][4][4];
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

    for (int kb = win.lo; kb < win.hi; kb += KB) {
      __syncthreads();  // previous block consumed
      // Stage kv[r] = [E⊙V (scaled) | E (scaled)] and ws[i][r] = W (scaled), 16-bit, two
      // adjacent values per 32-bit store.
      bool bad = false;
      for (int idx = threadIdx.x; idx < KB * AFT_CT / 2; idx += THREADS) {
        const int r = idx / (AFT_CT / 2), cc = 2 * (idx % (AFT_CT / 2));
        float e0, ev0, e1, ev1;
        aft_e_of<T>(p, k, v, kb + r, win.hi, c0, cc, msh, e0, ev0);
        aft_e_of<T>(p, k, v, kb + r, win.hi, c0, cc + 1, msh, e1, ev1);
        bad |= !aft_finite(e0) || !aft_finite(ev0) || !aft_finite(e1) || !aft_finite(ev1);
        *reinterpret_cast<u32*>(&kv[r * AFT_TC_KLD + cc]) = pack2<T>(ev0 * ssh[cc], ev1 * ssh[cc + 1]);
        *reinterpret_cast<u32*>(&kv[r * AFT_TC_KLD + AFT_CT + cc]) = pack2<T>(e0 * sw, e1 * sw);
      }
      for (int idx = threadIdx.x; idx < ROWS * KB / 2; idx += THREADS) {
        const int i = idx / (KB / 2), r = 2 * (idx % (KB / 2));
        const float w0 = aft_weight(p, h, t0, i, kb + r, win.hi, rsh, gsh);
        const float w1 = aft_weight(p, h, t0, i, kb + r + 1, win.hi, rsh, gsh);
        *reinterpret_cast<u32*>(&ws[i * AFT_TC_WLD + r]) = pack2<T>(w0 * sw, w1 * sw);
      }
      const bool any_bad = __syncthreads_or(bad);
      if (p.causal && kb + KB - 1 > t0 && any_bad) {
#pragma unroll 1
        for (int r = 0; r < KB; ++r) {
#pragma unroll
          for (int mi = 0; mi < 2; ++mi)
#pragma unroll
            for (int hh = 0; hh < 2; ++hh) {
              const int row = rw + 16 * mi + g + 8 * hh;
              if (kb + r > t0 + row) continue;
              const float wt = to_f32(T{ws[row * AFT_TC_WLD + r]});
#pragma unroll
              for (int nj = 0; nj < 4; ++nj)
#pragma unroll
                for (int e1 = 0; e1 < 2; ++e1) {
                  const int cc = cw + 8 * nj + 2 * tq + e1;
                  const float ev = to_f32(T{kv[r * AFT_TC_KLD + cc]}), e = to_f32(T{kv[r * AFT_TC_KLD + AFT_CT + cc]});
                  num[mi][nj][2 * hh + e1] = fmaf(wt, ev, num[mi][nj][2 * hh + e1]);
                  den[mi][nj][2 * hh + e1] = fmaf(wt, e, den[mi][nj][2 * hh + e1]);
                }
            }
        }
        continue;
      }
#pragma unroll
      for (int ks = 0; ks < KB; ks += 16) {
        u32 a[2][4];
#pragma unroll
        for (int mi = 0; mi < 2; ++mi)
          ldmatrix_x4(a[mi], &ws[(rw + 16 * mi + lane % 16) * AFT_TC_WLD + ks + (lane / 16) * 8]);
        const int key = ks + lane % 8 + ((lane / 8) % 2) * 8;
#pragma unroll
        for (int nj = 0; nj < 4; nj += 2) {
          u32 bn[4], bd[4];
          const u16* b = &kv[key * AFT_TC_KLD + cw + 8 * nj + (lane / 16) * 8];
          ldmatrix_x4_trans(bn, b);
          ldmatrix_x4_trans(bd, b + AFT_CT);
#pragma unroll
          for (int mi = 0; mi < 2; ++mi) {
            mma16816<T>(num[mi][nj], a[mi], bn[0], bn[1]);
            mma16816<T>(num[mi][nj + 1], a[mi], bn[2], bn[3]);
            mma16816<T>(den[mi][nj], a[mi], bd[0], bd[1]);
            mma16816<T>(den[mi][nj + 1], a[mi], bd[2], bd[3]);
          }
        }
      }
    }

    // num/den (unscaled) into the ratio tile; outputs whose denominator is below the floor are
    // recomputed after the others, once the accumulators are dead (keeps the call out of the
    // unrolled loop).
    __syncthreads();  // every warp done with kv/ws
    const float floor = aft_den_floor<T>(win.hi - win.lo);
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
            y[e1] = num[mi][nj][e] / den[mi][nj][e] * (sw / ssh[cc + e1]);
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
    for (int idx = threadIdx.x; idx < ROWS * AFT_CT; idx += THREADS) {
      const int row = idx / AFT_CT, cc = idx % AFT_CT, t = t0 + row, c = c0 + cc;
      if (t >= p.t || c >= p.d) continue;
      const float y = aft_sigmoid(to_f32(q[(i64)t * p.q_sn + c])) * ratio[row][cc];
      o[(i64)t * p.o_sn + c] = from_f32<T>(y);
    }
  }
}

// 4 CTAs per SM (≤ 128 registers, 19 KB of shared memory each): 16 warps.
#define AFT_TC_DTYPE(T, NAME)                                                                      \
  extern "C" __global__ void __launch_bounds__(AFT_TC_THREADS, 4) aft_window_tc_##NAME(               \
      const __grid_constant__ AftParams p) {                                                       \
    aft_window_tc<T>(p);                                                                           \
  }

AFT_TC_DTYPE(f16, f16)
AFT_TC_DTYPE(bf16, bf16)
