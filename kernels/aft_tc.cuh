// AFT window pass on tensor cores (f16/bf16 storage; f32 keeps the CUDA-core aft_window for its
// 1e-5 tolerance). Same shifts, staging, outside statistics and slow path as aft_window; the
// dense block product W (tile rows × keys) · [E⊙V | E] (keys × 64 channels each) runs as TF32
// mma.sync m16n8k8 with fp32 accumulators. Operands are rounded to TF32 once, when staged: a
// 10-bit mantissa with the fp32 exponent range, so exp of ±60 inputs keeps its range (f16 operands
// would underflow below e^-17).
// Tiles of 64 rows × 64 channels (the window kernel's), 4 warps in a 2 × 2 grid of 32 rows × 32
// channels: per k-step a warp reads 24 fragment words per lane for 16 mma. Shared-memory bandwidth
// is the bound (bench/NOTES.md): 8 warps of 32 rows × 16 channels read 2 words per mma; 128-row
// tiles would read 1.5 but multiply every row against a longer window (4 chunks instead of 3).
// Causal blocks that reach past a row multiply masked keys by a zero weight, which is exact for
// finite E, E⊙V; a block holding a non-finite one is summed key by key instead (skipping masked
// keys, as aft_window does), so a poisoned later key never reaches earlier rows.
// Epilogue: num/den through shared memory, then Y = σ(Q)·ratio with coalesced Q reads and Y writes.
#pragma once

#define AFT_TC_THREADS 128  // 4 warps
#define AFT_TC_LD 72        // es/evs row stride: B reads (k = tq, n = g) hit banks 8·tq + g
#define AFT_TC_WLD 36       // ws row stride: A reads (m = g, k = tq) hit banks 4·g + tq

// d += a(16×8, row) · b(8×8, col), TF32 operands, fp32 accumulate. g = lane / 4, tq = lane % 4:
// a = {(g, tq), (g + 8, tq), (g, tq + 4), (g + 8, tq + 4)}, b = {(tq, g), (tq + 4, g)},
// d = {(g, 2tq), (g, 2tq + 1), (g + 8, 2tq), (g + 8, 2tq + 1)}.
__device__ __forceinline__ void mma1688_tf32(float (&d)[4], const u32 (&a)[4], u32 b0, u32 b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
      "{%0,%1,%2,%3};\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

template <typename T>
__device__ void aft_window_tc(const AftParams& p) {
  constexpr int ROWS = AFT_CHUNK, THREADS = AFT_TC_THREADS;
  static_assert(THREADS == 128 && ROWS == 64 && AFT_CT == 64 && AFT_KB % 8 == 0, "warp layout");
  static_assert(2 * AFT_KB >= ROWS, "the ratio tile reuses es/evs");
  // kv[0] = es (E), kv[1] = evs (E⊙V); after the key loop, the [ROWS][AFT_TC_LD] ratio tile.
  __shared__ __align__(16) float kv[2][AFT_KB][AFT_TC_LD];
  __shared__ float ws[ROWS][AFT_TC_WLD];
  __shared__ float rsh[ROWS], gsh[ROWS], msh[AFT_CT], ash[AFT_CT], zsh[AFT_CT];
  float(*ratio)[AFT_TC_LD] = reinterpret_cast<float(*)[AFT_TC_LD]>(&kv[0][0][0]);
  const AftSlice<T> sl = aft_slice<T>(p);
  const int bh = sl.bh, h = sl.h, c0 = sl.c0;
  const T *q = sl.q, *k = sl.k, *v = sl.v;
  T* o = sl.o;
  // Warp w: rows rw … rw + 32 (two m-tiles), channels cw … cw + 32 (four n-tiles of E⊙V for
  // num and the same four of E for den, so num and den of an output sit in one thread).
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32, g = lane / 4, tq = lane % 4;
  const int rw = (warp % 2) * 32, cw = (warp / 2) * 32;

  for (int tile = blockIdx.y; tile < p.chunks; tile += gridDim.y) {
    const int t0 = tile * ROWS;
    const AftWindow win = aft_window_of(p, t0);
    __syncthreads();  // previous tile done with the shared arrays
    aft_tile_shifts<THREADS>(p, bh, h, c0, t0, msh, rsh, gsh);
    __syncthreads();
    if (threadIdx.x < AFT_CT) {
      const int c = c0 + threadIdx.x;
      const AftStat az = c < p.d ? aft_outside(p, bh, win, c, msh[threadIdx.x]) : AftStat{0.f, 0.f, 0.f};
      ash[threadIdx.x] = az.a;
      zsh[threadIdx.x] = az.z;
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

    for (int kb = win.lo; kb < win.hi; kb += AFT_KB) {
      __syncthreads();  // previous block consumed
      const bool bad = aft_stage_e<T, AFT_TC_LD, true, THREADS>(p, k, v, kb, win.hi, c0, msh, kv[0], kv[1]);
      aft_stage_w<AFT_TC_WLD, true, THREADS>(p, h, t0, kb, win.hi, rsh, gsh, ws);
      const bool any_bad = __syncthreads_or(bad);
      if (p.causal && kb + AFT_KB - 1 > t0 && any_bad) {
#pragma unroll 1
        for (int r = 0; r < AFT_KB; ++r) {
#pragma unroll
          for (int mi = 0; mi < 2; ++mi)
#pragma unroll
            for (int hh = 0; hh < 2; ++hh) {
              const int row = rw + 16 * mi + g + 8 * hh;
              if (kb + r > t0 + row) continue;
              const float wt = ws[row][r];
#pragma unroll
              for (int nj = 0; nj < 4; ++nj)
#pragma unroll
                for (int e1 = 0; e1 < 2; ++e1) {
                  const int cc = cw + 8 * nj + 2 * tq + e1;
                  num[mi][nj][2 * hh + e1] = fmaf(wt, kv[1][r][cc], num[mi][nj][2 * hh + e1]);
                  den[mi][nj][2 * hh + e1] = fmaf(wt, kv[0][r][cc], den[mi][nj][2 * hh + e1]);
                }
            }
        }
        continue;
      }
#pragma unroll
      for (int k0 = 0; k0 < AFT_KB; k0 += 8) {
        u32 a[2][4];
#pragma unroll
        for (int mi = 0; mi < 2; ++mi) {
          const int r0 = rw + 16 * mi + g;
          a[mi][0] = __float_as_uint(ws[r0][k0 + tq]);
          a[mi][1] = __float_as_uint(ws[r0 + 8][k0 + tq]);
          a[mi][2] = __float_as_uint(ws[r0][k0 + tq + 4]);
          a[mi][3] = __float_as_uint(ws[r0 + 8][k0 + tq + 4]);
        }
#pragma unroll
        for (int nj = 0; nj < 4; ++nj) {
          const int n = cw + 8 * nj + g;
          const u32 v0 = __float_as_uint(kv[1][k0 + tq][n]), v1 = __float_as_uint(kv[1][k0 + tq + 4][n]);
          const u32 e0 = __float_as_uint(kv[0][k0 + tq][n]), e1 = __float_as_uint(kv[0][k0 + tq + 4][n]);
#pragma unroll
          for (int mi = 0; mi < 2; ++mi) {
            mma1688_tf32(num[mi][nj], a[mi], v0, v1);
            mma1688_tf32(den[mi][nj], a[mi], e0, e1);
          }
        }
      }
    }

    // num/den into the ratio tile; outputs whose denominator underflowed are recomputed after
    // the others, once the accumulators are dead (keeps the call out of the unrolled loop).
    __syncthreads();  // every warp done with es/evs
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
            y[e1] = num[mi][nj][e] / den[mi][nj][e];
            if (den[mi][nj][e] < AFT_DEN_MIN && t0 + row < p.t && c0 + cc + e1 < p.d)
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

// 4 CTAs per SM (≤ 128 registers, 29 KB of shared memory each): 16 warps.
#define AFT_TC_DTYPE(T, NAME)                                                                      \
  extern "C" __global__ void __launch_bounds__(AFT_TC_THREADS, 4) aft_window_tc_##NAME(               \
      const __grid_constant__ AftParams p) {                                                       \
    aft_window_tc<T>(p);                                                                           \
  }

AFT_TC_DTYPE(f16, f16)
AFT_TC_DTYPE(bf16, bf16)
