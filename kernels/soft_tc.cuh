// SOFT tensor-core passes (SPEC §1.5) for f16/bf16 storage, D == Dv ∈ {32, 48, 64} with any
// m ≤ 256 and D = 128 with m ≤ 176 (pass 2's shared memory), 16-byte-aligned rows. They write the same pass-1 workspace (partial [bh][chunk][m][dv], fp32)
// and the same output as soft_pass1 / soft_pass2, so landmarks, A, Newton, soft_sum and soft_w are
// shared. Accumulation is fp32 throughout; the operands enter mma.sync as 16-bit values:
//   * distances d² = s²‖x‖² + ‖l‖² − 2s(x·l), clamped at 0: x (the stored 16-bit row, exact) on
//     mma against l split as l_hi + l_lo (two mmas), each landmark row scaled by its own power of
//     two σ_j into [1, 2) before the split (divided out in fp32), so x·l keeps ~fp32 accuracy
//     where x ≈ l cancels; ‖x‖² in fp32 from the stored 16-bit values, ‖l‖² in fp32;
//   * P·2^12 (so the f16 remainder of any P ≳ 2^-14 is a normal number) in fp32 as one ex2:
//     exp(−½d²)·2^12 = 2^(12 − k·d²), k = ½·log2(e), with the exponent assembled from a per-row
//     term R = −k·s²‖x‖², a per-landmark term L = 12 − k‖l‖² and kc = k·2s/σ_j:
//     ex2(min(12, R + L + kc·g)), g the mma dot product; then split P_hi + P_lo;
//     pass 1: P_hi·V + P_lo·V (V exact); pass 2: P_hi·W_hi + P_lo·W_hi + P_hi·W_lo with W scaled
//     per value column by a power of two into [1, 2) before its split; scales divided out in fp32.
// Pass 1 computes the transposed tile Pᵀ (landmarks × rows) directly (A = L, B = Xᵀ), so its
// accumulators are already the A fragments of Pᵀ·V; pass 2 computes P (rows × landmarks), whose
// accumulators are the A fragments of P·W. P never touches shared or global memory.
// Dynamic shared memory: soft_tc_pass1_smem / soft_tc_pass2_smem (mirrored in src/ops/soft/attention.rs).
#pragma once
#include "mma.cuh"
#include "soft.cuh"

#define SOFT_TC_WARPS 4
#define SOFT_TC_THREADS (SOFT_TC_WARPS * 32)
#define SOFT_TC_ROWS 64         // sequence rows per pipeline stage (pass 1) and per tile (pass 2)
#define SOFT_TC_LM2 16          // landmarks per step of pass 2
#define SOFT_TC_PSCALE 4096.f   // P enters mma as 2^12·P
#define SOFT_TC_PLOG2 12.f      // log2(SOFT_TC_PSCALE)
#define SOFT_TC_K (0.5f * LOG2E_F)  // exp(−½d²) = 2^(−k·d²)
#define SOFT_TC_NEG_INF __int_as_float(0xff800000)

static_assert(SOFT_TC_WARPS * 16 == SOFT_LM, "pass 1: one warp per 16 landmarks of a tile");

extern __shared__ __align__(16) u16 soft_tc_smem[];

// Landmark rows of pass 2 in shared memory: m rounded up to a step.
__host__ __device__ constexpr int soft_tc_mpad(int m) { return (m + SOFT_TC_LM2 - 1) / SOFT_TC_LM2 * SOFT_TC_LM2; }
// Bytes: L hi/lo of the tile, K and V double-buffered (16-bit rows padded by 8 elements against
// ldmatrix bank conflicts), the landmark terms L and kc, the row terms R of the current stage.
__host__ __device__ constexpr int soft_tc_pass1_smem(int d) {
  return (2 * SOFT_LM + 4 * SOFT_TC_ROWS) * (d + 8) * 2 + 2 * SOFT_LM * 4 + SOFT_TC_ROWS * 4;
}
// Row blocks of 16 per warp in pass 2: 2 where the registers allow (D ≤ 64), so each L and W
// fragment it loads serves 32 rows; its tiles are 64·MI rows.
__host__ __device__ constexpr int soft_tc_pass2_mi(int d) { return d <= 64 ? 2 : 1; }
// Bytes: L hi/lo and W hi/lo of all landmarks, Q tiles double-buffered, the terms L and kc per
// landmark, the column scales of W and their inverses.
__host__ __device__ constexpr int soft_tc_pass2_smem(int d, int m) {
  return (4 * soft_tc_mpad(m) + 2 * SOFT_TC_ROWS * soft_tc_pass2_mi(d)) * (d + 8) * 2 + 2 * soft_tc_mpad(m) * 4 +
         2 * d * 4;
}

// 16 bytes from a 32-bit shared-window address.
__device__ __forceinline__ uint4 soft_lds128(u32 addr) {
  uint4 r;
  asm volatile("ld.shared.v4.b32 {%0,%1,%2,%3}, [%4];\n" : "=r"(r.x), "=r"(r.y), "=r"(r.z), "=r"(r.w) : "r"(addr));
  return r;
}


// Σ of the squares of the four 16-bit values in two packed pairs (exact products, fp32 sums).
template <typename T> __device__ __forceinline__ float soft_sq4(u32 x, u32 y, float acc) {
  float a, b, c, e;
  unpack2<T>(x, a, b);
  unpack2<T>(y, c, e);
  acc = fmaf(a, a, acc);
  acc = fmaf(b, b, acc);
  acc = fmaf(c, c, acc);
  return fmaf(e, e, acc);
}

// 2^12·exp(−½d²) from the exponent terms rl = R + L (see the header): FFMA, FMNMX, MUFU.
// min(12, ·) is the clamp d² ≥ 0; min.NaN keeps a NaN distance NaN (fminf would return 12, i.e.
// P = 2^12, and hide a poisoned row or landmark: docs/non-finite.md). rl = −inf (a masked row
// or landmark) gives ex2(−inf) = 0 for finite g; masked operands are zero rows, so g = 0 unless
// the other operand is non-finite (see the callers).
__device__ __forceinline__ float soft_tc_p(float rl, float kc, float g) {
  return ex2_fast(fmin_nan(SOFT_TC_PLOG2, fmaf(kc, g, rl)));
}

// Landmarks j0 + [0, rows) of one (b,h) (fp32, row length D, at l) into shared memory as 16-bit
// hi/lo parts of σ_j·l_j (σ_j a power of two putting max_c |l_jc| in [1, 2)); lterm[r] =
// 12 − k‖l_j‖², lkc[r] = k·2s/σ_j = log2(e)·s/σ_j. Rows j ≥ m become zeros with lterm = −inf (P = 0).
// One warp per landmark row, fixed reduction order; a warp loads NB rows before reducing them, so
// their L2 round trips and shuffle chains overlap (one row at a time, this prologue took ≈ 4 µs
// of every CTA at m = 64, 16 rows per warp, and 4× that at m = 256). NB = 4 in pass 2. Pass 1
// keeps NB = 1: it starts beside the Newton kernel (sm_90), which hides its prologue, and NB ≥ 2
// made ptxas spill 4 bytes in its D = 48 build for sm_80.
template <typename T, int D, int NB>
__device__ __forceinline__ void soft_tc_landmarks(u16 (*lh)[D + 8], u16 (*ll)[D + 8], float* lterm, float* lkc,
                                                  const float* l, int j0, int rows, int m, float log2e_s) {
  constexpr int CPL = (D + 31) / 32;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
#pragma unroll 1
  for (int r0 = warp; r0 < rows; r0 += NB * SOFT_TC_WARPS) {
    float x[NB][CPL], mx[NB], nrm[NB];
#pragma unroll
    for (int b = 0; b < NB; ++b) {
      const int r = r0 + b * SOFT_TC_WARPS, j = j0 + r;
#pragma unroll
      for (int i = 0; i < CPL; ++i) {
        const int c = lane + 32 * i;
        x[b][i] = (c < D && j < m && r < rows) ? l[(i64)j * D + c] : 0.f;
      }
    }
#pragma unroll
    for (int b = 0; b < NB; ++b) {
      mx[b] = 0.f, nrm[b] = 0.f;
#pragma unroll
      for (int i = 0; i < CPL; ++i) {
        mx[b] = fmaxf(mx[b], fabsf(x[b][i]));
        nrm[b] = fmaf(x[b][i], x[b][i], nrm[b]);
      }
    }
#pragma unroll
    for (int off = 16; off > 0; off >>= 1)
#pragma unroll
      for (int b = 0; b < NB; ++b) {
        mx[b] = fmaxf(mx[b], __shfl_xor_sync(0xffffffffu, mx[b], off));
        nrm[b] += __shfl_xor_sync(0xffffffffu, nrm[b], off);
      }
#pragma unroll
    for (int b = 0; b < NB; ++b) {
      const int r = r0 + b * SOFT_TC_WARPS, j = j0 + r;
      if (r >= rows) break;  // warp-uniform
      const float sg = pow2_scale(mx[b]);
#pragma unroll
      for (int i = 0; i < CPL; ++i) {
        const int c = lane + 32 * i;
        if (c < D) {
          const float y = x[b][i] * sg;
          const T hi = from_f32<T>(y);
          lh[r][c] = hi.bits;
          ll[r][c] = from_f32<T>(y - to_f32(hi)).bits;
        }
      }
      if (lane == 0) {
        lterm[r] = j < m ? fmaf(-SOFT_TC_K, nrm[b], SOFT_TC_PLOG2) : SOFT_TC_NEG_INF;
        lkc[r] = log2e_s / sg;
      }
    }
  }
}

// The L2 seams of the tied (K = Q) op, which reads Q three times: the pooling, pass 1, pass 2.
// Each pass's CTAs advance in step (one wave), so what a pass reads last is a band of offsets
// within the pooling segments (strips of p.strip 64-row tiles), not a range of rows:
//  * the pooling walks every segment forward, so it ends on their tails;
//  * pass 1 takes the tiles by offset within a strip, descending (strip_desc), tails first;
//  * pass 2 takes its tiles (64·MI rows, strips of ⌈p.strip / MI⌉) ascending, so it starts on
//    the heads pass 1 read last.
// V (pass 1) and Q, X (pass 2) are accessed for the last time, evict-first in L2, so they do not
// push out the Q lines that the next pass re-reads (bench/NOTES.md).

// First row of pass 1's 64-row tile at position u of the descending order.
__device__ __forceinline__ int soft_tc_tile_row(int u, int tiles, int strip) {
  return (int)strip_desc(u, tiles, max(strip, 1)) * SOFT_TC_ROWS;
}

// Pass 1: partial[bh][chunk][j][e] = Σ_{rows of the chunk} P_k[row, j]·V[row, e] for the 64
// landmarks of tile blockIdx.z, all Dv columns. Grid: x = chunk, y = bh (grid-stride), z =
// landmark tile; chunk c holds the 64-row tiles c, c + chunks, … of the seam order (above). Warp
// w owns landmarks [16w, 16w + 16) of the tile; per 16 rows it computes Gᵀ = (σL)·Xᵀ (hi, lo), Pᵀ
// in registers, then Pᵀ·V (hi, lo). K, V stream through two cp.async stages of 64 rows; the row
// terms R of a stage are computed once by the whole CTA (xr).
// Traffic: K, V rows of the chunk once per landmark tile, L from L2.
// Launched beside the Newton kernel (PDL): every CTA must reach the pdl_wait_previous() at the
// end, with no early return, or the launches after this one could run before Z is complete.
template <typename T, int D>
__device__ void soft_pass1_tc(const SoftKernelParams& p) {
  constexpr int LD = D + 8, KT = D / 16, NT = D / 8, ROWS = SOFT_TC_ROWS, THREADS = SOFT_TC_THREADS;
  auto lh = reinterpret_cast<u16(*)[LD]>(soft_tc_smem);
  auto ll = lh + SOFT_LM;
  auto ks = reinterpret_cast<u16(*)[ROWS][LD]>(soft_tc_smem + 2 * SOFT_LM * LD);
  auto vs = ks + 2;
  float* lterm = reinterpret_cast<float*>(soft_tc_smem + (2 * SOFT_LM + 4 * ROWS) * LD);
  float* lkc = lterm + SOFT_LM;
  float* xr = lkc + SOFT_LM;  // R of the current stage's rows (−inf past row_end)
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, g = lane / 4, t = lane % 4;
  const int mat = lane / 8, r8 = lane % 8;
  const int j0 = blockIdx.z * SOFT_LM;
  const bool active = j0 + warp * 16 < p.m;  // warp-uniform: the warp owns a landmark < m
  const int chunk = blockIdx.x, tiles = div_up(p.n, ROWS);
  const float rk = -SOFT_TC_K * (p.scale * p.scale);
  // Per-lane byte addresses of the ldmatrix rows: stage 0 of K (B = Xᵀ) and of V (B = V), the
  // warp's landmark rows (A = σL, hi; lo one plane further).
  const u32 kaddr = smem_addr(&ks[0][(mat / 2) * 8 + r8][(mat % 2) * 8]);
  const u32 vaddr = smem_addr(&vs[0][r8 + (mat % 2) * 8][(mat / 2) * 8]);
  const u32 laddr = smem_addr(&lh[warp * 16 + lane % 16][(lane / 16) * 8]);
  constexpr u32 STAGE = ROWS * LD * 2;  // bytes of one stage of K or V
  // Row terms: lane pair (l, l ^ 16) of warp w sums half the channels each of row 16w + l % 16
  // (conflict-free 16-byte loads: 8 consecutive lanes read 8 different rows).
  const int xrow = warp * 16 + lane % 16;
  const u32 xaddr = smem_addr(&ks[0][xrow][(lane / 16) * (D / 2)]);

  // (b,h) slices in reverse, for when they take more than one wave: the pooling goes slice by
  // slice ascending, so the first CTAs read the key rows (Q when tied) of the slices it read
  // last; pass 2 goes ascending and so starts on the slice this pass reads last.
  for (int r = blockIdx.y; r < p.b * p.h; r += gridDim.y) {
    const int bh = p.b * p.h - 1 - r, b = bh / p.h, h = bh % p.h;
    const u16* k = reinterpret_cast<const u16*>(p.k) + (b * p.k_sb + h * p.k_sh);
    const u16* v = reinterpret_cast<const u16*>(p.v) + (b * p.v_sb + h * p.v_sh);
    const float* l = reinterpret_cast<const float*>(p.l) + (i64)bh * p.m * D;

    __syncthreads();  // the previous (b,h) iteration's reads of every buffer are done
    if (chunk < tiles) {
      const int row0 = soft_tc_tile_row(chunk, tiles, p.strip);
      tc_stage<D, LD, ROWS, THREADS>(ks[0], k, p.k_sn, row0, p.n);
      tc_stage<D, LD, ROWS, THREADS, true>(vs[0], v, p.v_sn, row0, p.n, l2_evict_first());
    }
    cp_async_commit();
    soft_tc_landmarks<T, D, 1>(lh, ll, lterm, lkc, l, j0, SOFT_LM, p.m, LOG2E_F * p.scale);
    __syncthreads();

    // The warp's landmark terms (rows g, g + 8).
    const float lt0 = lterm[warp * 16 + g], lt1 = lterm[warp * 16 + g + 8];
    const float kc0 = lkc[warp * 16 + g], kc1 = lkc[warp * 16 + g + 8];
    // A = the warp's σ-scaled landmark rows (hi, lo), the same for every row of the slice: held
    // in registers for D ≤ 64 (2·D/4 of them), so the row loop reads only Xᵀ and V from shared
    // memory (36 wavefronts per 16 rows instead of 68: the loop was bound by shared memory).
    constexpr bool HOLD = D <= 64;
    u32 alr[HOLD ? 2 : 1][HOLD ? KT : 1][4];
    if constexpr (HOLD) {
#pragma unroll
      for (int part = 0; part < 2; ++part)
#pragma unroll
        for (int kt = 0; kt < KT; ++kt) ldmatrix_x4_at(alr[part][kt], laddr + part * (SOFT_LM * LD * 2) + kt * 32);
    }

    float acc[NT][4];
#pragma unroll
    for (int j = 0; j < NT; ++j) acc[j][0] = acc[j][1] = acc[j][2] = acc[j][3] = 0.f;

    int buf = 0;
    for (int u = chunk; u < tiles; u += p.chunks, buf ^= 1) {
      // Stage `buf` (rows row0 …) visible to all; every warp is done with stage buf ^ 1 and with
      // xr, so the next tile is issued into buf ^ 1 now (it loads while this one is computed).
      const int row0 = soft_tc_tile_row(u, tiles, p.strip), row_end = min(p.n, row0 + ROWS);
      cp_async_wait<0>();
      __syncthreads();
      if (u + p.chunks < tiles) {
        const int next = soft_tc_tile_row(u + p.chunks, tiles, p.strip);
        tc_stage<D, LD, ROWS, THREADS>(ks[buf ^ 1], k, p.k_sn, next, p.n);
        tc_stage<D, LD, ROWS, THREADS, true>(vs[buf ^ 1], v, p.v_sn, next, p.n, l2_evict_first());
      }
      cp_async_commit();
      {  // xr[r] = R of row row0 + r: fp32 sum of the squares of the stored 16-bit values
        float sq = 0.f;
#pragma unroll
        for (int c = 0; c < D / 2; c += 8) {
          const uint4 x = soft_lds128(xaddr + buf * STAGE + c * 2);
          sq = soft_sq4<T>(x.z, x.w, soft_sq4<T>(x.x, x.y, sq));
        }
        sq += __shfl_xor_sync(0xffffffffu, sq, 16);  // a + b = b + a: both lanes get the same sum
        // Rows past row_end (zero-filled): R = −inf, P = 0. g = 0 there unless a landmark is
        // non-finite, and then Newton's Z makes every output of the (b,h) NaN anyway.
        if (lane < 16) xr[xrow] = row0 + xrow < row_end ? rk * sq : SOFT_TC_NEG_INF;
      }
      __syncthreads();
      if (active) {
#pragma unroll 1
        for (int n0 = 0; n0 < ROWS; n0 += 16) {
          // B = Xᵀ (k = c, n = rows): bx[kt][0..1] rows n0 + g, bx[kt][2..3] rows n0 + 8 + g.
          u32 bx[KT][4];
#pragma unroll
          for (int kt = 0; kt < KT; ++kt) ldmatrix_x4_at(bx[kt], kaddr + buf * STAGE + (n0 * LD + kt * 16) * 2);
          // Accumulator columns 2t, 2t + 1 of n-tile nt are rows n0 + 8nt + 2t (+1).
          const float2 xr0 = *reinterpret_cast<const float2*>(&xr[n0 + 2 * t]);
          const float2 xr1 = *reinterpret_cast<const float2*>(&xr[n0 + 8 + 2 * t]);

          float gt[2][4];  // Gᵀ: landmarks g, g + 8 × rows n0 + 8nt + 2t (+1)
#pragma unroll
          for (int nt = 0; nt < 2; ++nt) gt[nt][0] = gt[nt][1] = gt[nt][2] = gt[nt][3] = 0.f;
#pragma unroll
          for (int part = 0; part < 2; ++part)
#pragma unroll
            for (int kt = 0; kt < KT; ++kt) {
              u32 al[4];  // A = the warp's σ-scaled landmark rows (hi or lo)
              if constexpr (HOLD) {
#pragma unroll
                for (int x = 0; x < 4; ++x) al[x] = alr[part][kt][x];
              } else {
                ldmatrix_x4_at(al, laddr + part * (SOFT_LM * LD * 2) + kt * 32);
              }
              mma16816<T>(gt[0], al, bx[kt][0], bx[kt][1]);
              mma16816<T>(gt[1], al, bx[kt][2], bx[kt][3]);
            }
#pragma unroll
          for (int nt = 0; nt < 2; ++nt)
#pragma unroll
            for (int x = 0; x < 4; ++x) {
              const float2 r = nt ? xr1 : xr0;
              gt[nt][x] = soft_tc_p((x % 2 ? r.y : r.x) + (x < 2 ? lt0 : lt1), x < 2 ? kc0 : kc1, gt[nt][x]);
            }
          // Pᵀ as the A operand (m = landmarks, k = rows): the accumulator layout.
          u32 ph[4], pl[4];
          split2<T>(gt[0][0], gt[0][1], ph[0], pl[0]);
          split2<T>(gt[0][2], gt[0][3], ph[1], pl[1]);
          split2<T>(gt[1][0], gt[1][1], ph[2], pl[2]);
          split2<T>(gt[1][2], gt[1][3], ph[3], pl[3]);
#pragma unroll
          for (int e0 = 0; e0 < D; e0 += 16) {
            u32 bv[4];  // B = V (k = rows, n = e): n-tiles e0, e0 + 8
            ldmatrix_x4_trans_at(bv, vaddr + buf * STAGE + (n0 * LD + e0) * 2);
            mma16816<T>(acc[e0 / 8], ph, bv[0], bv[1]);
            mma16816<T>(acc[e0 / 8 + 1], ph, bv[2], bv[3]);
            mma16816<T>(acc[e0 / 8], pl, bv[0], bv[1]);
            mma16816<T>(acc[e0 / 8 + 1], pl, bv[2], bv[3]);
          }
        }
      }
    }
    cp_async_wait<0>();

    if (active) {
      float* out = reinterpret_cast<float*>(p.partial) + ((i64)bh * p.chunks + chunk) * p.m * D;
      const int ja = j0 + warp * 16 + g, jb = ja + 8;
      constexpr float inv = 1.f / SOFT_TC_PSCALE;
#pragma unroll
      for (int j = 0; j < NT; ++j) {
        const int e = j * 8 + 2 * t;  // scalar stores: the workspace is 4-byte aligned
        if (ja < p.m) {
          out[(i64)ja * D + e] = acc[j][0] * inv;
          out[(i64)ja * D + e + 1] = acc[j][1] * inv;
        }
        if (jb < p.m) {
          out[(i64)jb * D + e] = acc[j][2] * inv;
          out[(i64)jb * D + e + 1] = acc[j][3] * inv;
        }
      }
    }
  }
  // Launched beside the Newton kernel (which it does not read): complete only after it, so that
  // the launches after this one see Z.
  pdl_wait_previous();
}

// Pass 2: X = P·W. Grid: x = CTAs striding over tiles of 64·MI rows in the ascending seam order
// (above), y = bh (grid-stride). Per (b,h) the CTA splits L (σ-scaled, hi/lo) and W
// (column-scaled, hi/lo) of all m landmarks into shared memory; then per tile warp w maps rows
// [16·MI·w, 16·MI·(w + 1)) as MI blocks of 16: the Q fragments stay in registers, 16 landmarks at
// a time G = X·(σL)ᵀ (hi, lo), P in registers, acc += P·W (three products). Each L and W fragment
// loaded from shared memory serves the MI row blocks (MI = 2 for D ≤ 64: the loop was bound by
// shared memory at MI = 1, 72 wavefronts against 133 instructions per block).
// The output is staged in the warp's own Q rows and written with 16-byte stores.
// Traffic: Q read once, X written once, L and W from L2 once per CTA and (b,h).
template <typename T, int D>
__device__ void soft_pass2_tc(const SoftKernelParams& p) {
  constexpr int MI = soft_tc_pass2_mi(D);
  constexpr int LD = D + 8, KT = D / 16, NT = D / 8, ROWS = SOFT_TC_ROWS * MI, THREADS = SOFT_TC_THREADS;
  constexpr int NJ = SOFT_TC_LM2 / 8;  // landmark n-tiles per step
  const int mpad = soft_tc_mpad(p.m);
  auto lh = reinterpret_cast<u16(*)[LD]>(soft_tc_smem);
  auto ll = lh + mpad;
  auto wh = ll + mpad;
  auto wl = wh + mpad;
  auto xs = reinterpret_cast<u16(*)[ROWS][LD]>(soft_tc_smem + 4 * mpad * LD);
  float* lterm = reinterpret_cast<float*>(soft_tc_smem + (4 * mpad + 2 * ROWS) * LD);
  float* lkc = lterm + mpad;
  float* csc = lkc + mpad;  // per value column: max |W| (as bits), then its power-of-two scale
  float* cinv = csc + D;     // 1 / (scale · 2^12)
  u32* cmax = reinterpret_cast<u32*>(csc);
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, g = lane / 4, t = lane % 4;
  const int mat = lane / 8, r8 = lane % 8;
  const int tiles = div_up(p.n, ROWS), strip = div_up(max(p.strip, 1), MI);  // in tiles of ROWS
  // First row of the tile at position u of the ascending seam order.
  auto tile_row = [&](int u) { return (int)strip_desc(tiles - 1 - u, tiles, strip) * ROWS; };
  const float rk = -SOFT_TC_K * (p.scale * p.scale);
  // Per-lane byte addresses of the ldmatrix rows: (σL)ᵀ hi (lo one plane further), W hi (lo one
  // plane further).
  const u32 laddr = smem_addr(&lh[(mat / 2) * 8 + r8][(mat % 2) * 8]);
  const u32 waddr = smem_addr(&wh[r8 + (mat % 2) * 8][(mat / 2) * 8]);
  const u32 plane = mpad * LD * 2;  // bytes of one [mpad][LD] plane

  for (int bh = blockIdx.y; bh < p.b * p.h; bh += gridDim.y) {
    const int b = bh / p.h, h = bh % p.h;
    const u16* q = reinterpret_cast<const u16*>(p.q) + (b * p.q_sb + h * p.q_sh);
    u16* o = reinterpret_cast<u16*>(p.o) + (b * p.o_sb + h * p.o_sh);
    const float* l = reinterpret_cast<const float*>(p.l) + (i64)bh * p.m * D;
    const float* w = reinterpret_cast<const float*>(p.w) + (i64)bh * p.m * D;

    __syncthreads();  // the previous (b,h) iteration's reads of every buffer are done
    int trow = 0;     // first row of the current tile
    if (blockIdx.x < tiles) {
      trow = tile_row(blockIdx.x);
      tc_stage<D, LD, ROWS, THREADS, true>(xs[0], q, p.q_sn, trow, p.n, l2_evict_first());
    }
    cp_async_commit();
    for (int e = threadIdx.x; e < D; e += THREADS) cmax[e] = 0u;
    soft_tc_landmarks<T, D, 4>(lh, ll, lterm, lkc, l, 0, mpad, p.m, LOG2E_F * p.scale);
    __syncthreads();
    // Column maxima of |W| (non-negative floats order like their bits; NaN wins, then scale 1).
    // W (m × D fp32, in L2) is read 8 values per thread at a time, all in flight, here and in the
    // split below: one L2 round trip per value cost ≈ 5 µs per loop at m = 64.
    constexpr int WB = 8;
#pragma unroll 1
    for (int i0 = threadIdx.x; i0 < p.m * D; i0 += WB * THREADS) {
      float y[WB];
      load_batch(y, w, i0, THREADS, p.m * D);
#pragma unroll
      for (int u = 0; u < WB; ++u)
        if (i0 + u * THREADS < p.m * D) atomicMax(&cmax[(i0 + u * THREADS) % D], __float_as_uint(fabsf(y[u])));
    }
    __syncthreads();
    for (int e = threadIdx.x; e < D; e += THREADS) {
      const float sc = pow2_scale(__uint_as_float(cmax[e]));
      csc[e] = sc;
      cinv[e] = 1.f / (sc * SOFT_TC_PSCALE);
    }
    __syncthreads();
#pragma unroll 1
    for (int i0 = threadIdx.x; i0 < mpad * D; i0 += WB * THREADS) {
      float y[WB];
      load_batch(y, w, i0, THREADS, p.m * D);
#pragma unroll
      for (int u = 0; u < WB; ++u) {
        const int i = i0 + u * THREADS, r = i / D, c = i % D;
        if (i < mpad * D) {
          const float z = r < p.m ? y[u] * csc[c] : 0.f;
          const T hi = from_f32<T>(z);
          wh[r][c] = hi.bits;
          wl[r][c] = from_f32<T>(z - to_f32(hi)).bits;
        }
      }
    }
    // Shared L, W and scales are visible after the first barrier of the tile loop.

    int buf = 0;
    for (int u = blockIdx.x; u < tiles; u += gridDim.x, buf ^= 1) {
      int next = 0;
      if (u + gridDim.x < tiles) {
        next = tile_row(u + gridDim.x);
        tc_stage<D, LD, ROWS, THREADS, true>(xs[buf ^ 1], q, p.q_sn, next, p.n, l2_evict_first());
      }
      cp_async_commit();
      cp_async_wait<1>();
      __syncthreads();

      const int r0 = warp * 16 * MI;
      u32 ax[MI][KT][4];  // A = X of row block mi: a0, a2 row g; a1, a3 row g + 8
      float x0[MI], x1[MI];
#pragma unroll
      for (int mi = 0; mi < MI; ++mi) {
        const u32 xaddr = smem_addr(&xs[0][r0 + 16 * mi + lane % 16][(lane / 16) * 8]);
        x0[mi] = x1[mi] = 0.f;
#pragma unroll
        for (int kt = 0; kt < KT; ++kt) {
          ldmatrix_x4_at(ax[mi][kt], xaddr + buf * (ROWS * LD * 2) + kt * 32);
          x0[mi] = soft_sq4<T>(ax[mi][kt][0], ax[mi][kt][2], x0[mi]);
          x1[mi] = soft_sq4<T>(ax[mi][kt][1], ax[mi][kt][3], x1[mi]);
        }
#pragma unroll
        for (int off = 1; off < 4; off <<= 1) {
          x0[mi] += __shfl_xor_sync(0xffffffffu, x0[mi], off);
          x1[mi] += __shfl_xor_sync(0xffffffffu, x1[mi], off);
        }
        x0[mi] *= rk;  // R of rows g, g + 8
        x1[mi] *= rk;
      }

      float acc[MI][NT][4];
#pragma unroll
      for (int mi = 0; mi < MI; ++mi)
#pragma unroll
        for (int j = 0; j < NT; ++j) acc[mi][j][0] = acc[mi][j][1] = acc[mi][j][2] = acc[mi][j][3] = 0.f;
#pragma unroll 1
      for (int jb = 0; jb < p.m; jb += SOFT_TC_LM2) {
        float gs[MI][NJ][4];  // G: rows g, g + 8 of block mi × landmarks jb + 8n + 2t (+1)
#pragma unroll
        for (int mi = 0; mi < MI; ++mi)
#pragma unroll
          for (int n = 0; n < NJ; ++n) gs[mi][n][0] = gs[mi][n][1] = gs[mi][n][2] = gs[mi][n][3] = 0.f;
        const u32 lrow = laddr + jb * LD * 2;
#pragma unroll
        for (int part = 0; part < 2; ++part) {
#pragma unroll
          for (int kt = 0; kt < KT; ++kt)
#pragma unroll
            for (int np = 0; np < NJ / 2; ++np) {
              u32 bl[4];  // B = (σL)ᵀ (k = c, n = landmarks): n-tiles 2np, 2np + 1
              ldmatrix_x4_at(bl, lrow + part * plane + (np * 16 * LD + kt * 16) * 2);
#pragma unroll
              for (int mi = 0; mi < MI; ++mi) {
                mma16816<T>(gs[mi][2 * np], ax[mi][kt], bl[0], bl[1]);
                mma16816<T>(gs[mi][2 * np + 1], ax[mi][kt], bl[2], bl[3]);
              }
            }
        }
        // Landmarks j ≥ m (zero rows, up to mpad) have lterm = −inf: P = 0 without a mask
        // (g = 0 there unless the Q row is non-finite: that row is then NaN, which
        // docs/non-finite.md allows).
#pragma unroll
        for (int n = 0; n < NJ; ++n) {
          const int j = jb + n * 8 + 2 * t;
          const float2 lt = *reinterpret_cast<const float2*>(&lterm[j]);
          const float2 kc = *reinterpret_cast<const float2*>(&lkc[j]);
#pragma unroll
          for (int mi = 0; mi < MI; ++mi)
#pragma unroll
            for (int x = 0; x < 4; ++x)
              gs[mi][n][x] = soft_tc_p((x < 2 ? x0[mi] : x1[mi]) + (x % 2 ? lt.y : lt.x), x % 2 ? kc.y : kc.x, gs[mi][n][x]);
        }
#pragma unroll
        for (int kk = 0; kk < NJ / 2; ++kk) {  // k-step: landmarks jb + 16kk + [0, 16)
          u32 ph[MI][4], pl[MI][4];  // P as the A operand (m = rows, k = landmarks): the accumulator layout
#pragma unroll
          for (int mi = 0; mi < MI; ++mi) {
            split2<T>(gs[mi][2 * kk][0], gs[mi][2 * kk][1], ph[mi][0], pl[mi][0]);
            split2<T>(gs[mi][2 * kk][2], gs[mi][2 * kk][3], ph[mi][1], pl[mi][1]);
            split2<T>(gs[mi][2 * kk + 1][0], gs[mi][2 * kk + 1][1], ph[mi][2], pl[mi][2]);
            split2<T>(gs[mi][2 * kk + 1][2], gs[mi][2 * kk + 1][3], ph[mi][3], pl[mi][3]);
          }
          const u32 wrow = waddr + (jb + kk * 16) * LD * 2;
#pragma unroll
          for (int e0 = 0; e0 < D; e0 += 16) {
            u32 bh4[4], bl4[4];  // B = W (k = landmarks, n = e): n-tiles e0, e0 + 8
            ldmatrix_x4_trans_at(bh4, wrow + e0 * 2);
            ldmatrix_x4_trans_at(bl4, wrow + plane + e0 * 2);
#pragma unroll
            for (int mi = 0; mi < MI; ++mi) {
              mma16816<T>(acc[mi][e0 / 8], ph[mi], bh4[0], bh4[1]);
              mma16816<T>(acc[mi][e0 / 8 + 1], ph[mi], bh4[2], bh4[3]);
              mma16816<T>(acc[mi][e0 / 8], pl[mi], bh4[0], bh4[1]);
              mma16816<T>(acc[mi][e0 / 8 + 1], pl[mi], bh4[2], bh4[3]);
              mma16816<T>(acc[mi][e0 / 8], ph[mi], bl4[0], bl4[1]);
              mma16816<T>(acc[mi][e0 / 8 + 1], ph[mi], bl4[2], bl4[3]);
            }
          }
        }
      }

      // Epilogue: the warp's 16·MI Q rows were read only by this warp, so they stage its output.
      u16(*stage)[LD] = &xs[buf][r0];
      __syncwarp();  // every lane's ldmatrix reads of these rows precede any lane's writes
#pragma unroll
      for (int mi = 0; mi < MI; ++mi)
#pragma unroll
        for (int j = 0; j < NT; ++j) {
          const int e = j * 8 + 2 * t;
          const float c0 = cinv[e], c1 = cinv[e + 1];
          *reinterpret_cast<u32*>(&stage[16 * mi + g][e]) = pack2<T>(acc[mi][j][0] * c0, acc[mi][j][1] * c1);
          *reinterpret_cast<u32*>(&stage[16 * mi + g + 8][e]) = pack2<T>(acc[mi][j][2] * c0, acc[mi][j][3] * c1);
        }
      __syncwarp();
      const int row0 = trow + r0;
      const u64 last = l2_evict_first();
#pragma unroll
      for (int i = lane; i < 16 * MI * (D / 8); i += 32) {
        const int r = i / (D / 8), c = (i % (D / 8)) * 8;
        if (row0 + r < p.n)
          st_global_v4_hint(&o[(i64)(row0 + r) * p.o_sn + c], *reinterpret_cast<const uint4*>(&stage[r][c]), last);
      }
      trow = next;
      __syncthreads();  // buffer `buf` is refilled next iteration
    }
    cp_async_wait<0>();
  }
}

// MIN1, MIN2: CTAs per SM the register allocation must allow for pass 1 and pass 2 (4 × 128
// threads: ≤ 128 registers; 3: ≤ 168; 2: ≤ 255). Pass 1 D ≤ 64 at 4; D ∈ {80, 96} at 2; D = 128
// at 1. Pass 2 D ≤ 64 (two row blocks per warp) at 3, with 75 KB of shared memory at m = 64;
// D ∈ {80, 96} at 2; D = 128 at 1. No spills.
#define SOFT_TC(DIM, MIN1, MIN2, T, NAME)                                                       \
  extern "C" __global__ void __launch_bounds__(SOFT_TC_THREADS, MIN1)                           \
      soft_pass1_tc##DIM##_##NAME(const __grid_constant__ SoftKernelParams p) {                 \
    soft_pass1_tc<T, DIM>(p);                                                                   \
  }                                                                                             \
  extern "C" __global__ void __launch_bounds__(SOFT_TC_THREADS, MIN2)                           \
      soft_pass2_tc##DIM##_##NAME(const __grid_constant__ SoftKernelParams p) {                 \
    soft_pass2_tc<T, DIM>(p);                                                                   \
  }

#define SOFT_TC_DTYPE(T, NAME)                                                                  \
  SOFT_TC(32, 4, 3, T, NAME)                                                                    \
  SOFT_TC(48, 4, 3, T, NAME)                                                                    \
  SOFT_TC(64, 4, 3, T, NAME)                                                                    \
  SOFT_TC(80, 2, 2, T, NAME)                                                                    \
  SOFT_TC(96, 2, 2, T, NAME)                                                                    \
  SOFT_TC(128, 1, 1, T, NAME)

// Mirrored in src/ops/soft/attention.rs (mod tc); a change here must be made there too.
static_assert(soft_tc_pass1_smem(64) == 56064 && soft_tc_pass2_smem(64, 64) == 74752 &&
                  soft_tc_pass2_smem(64, 256) == 186880 && soft_tc_pass2_smem(32, 7) == 25984 &&
                  soft_tc_pass2_smem(80, 64) == 68736 && soft_tc_pass2_mi(64) == 2 && soft_tc_pass2_mi(80) == 1 &&
                  SOFT_TC_THREADS == 128 && SOFT_TC_ROWS == 64,
              "SOFT tensor-core launch geometry changed: update Rust");
