// SimA tensor-core path (SPEC §4) for f16/bf16 with D == Dv ∈ {32, 48, 64, 80, 96, 128} and
// 16-byte-aligned rows: the two products on mma.sync (fp32 accumulation), tiles streamed with cp.async in two
// stages through dynamic shared memory (sizes: sima_tc_*_smem, mirrored in Rust). Writes the same
// workspace as the CUDA-core kernels, so sima_finalize is shared.
#pragma once
#include "mma.cuh"
#include "sima.cuh"

#define SIMA_TC_ROWS 32      // rows of K, V, Q per pipeline stage of the reduce pass
#define SIMA_TC_MAP_WARPS 4  // warps per CTA of the map pass, 16 rows each per tile

extern __shared__ __align__(16) u16 sima_tc_smem[];

// Dynamic shared memory of each pass, in bytes (rows padded by 8 elements against bank conflicts).
__host__ __device__ constexpr int sima_tc_reduce_smem(int d) { return 6 * SIMA_TC_ROWS * (d + 8) * 2; }
__host__ __device__ constexpr int sima_tc_map_smem(int d) {
  return (d + 2 * SIMA_TC_MAP_WARPS * 16) * (d + 8) * 2;
}

// Reduce pass. Grid: x = bh (grid-stride), y = row chunk. D/16 warps; warp w owns rows
// c ∈ [16w, 16w+16) of k^T v (all Dv columns). Σ|q|, Σ|k| from the same shared tiles.
// Traffic: Q, K, V of the chunk read once; (D·Dv + 2D) floats written per chunk.
template <typename T, int D>
__device__ void sima_reduce_tc(const SimaParams& p) {
  constexpr int THREADS = D / 16 * 32, LD = D + 8, NT = D / 8, VPR = D / 8;
  constexpr int ROWS = SIMA_TC_ROWS;
  auto ks = reinterpret_cast<u16(*)[ROWS][LD]>(sima_tc_smem);
  auto vs = ks + 2;
  auto qs = ks + 4;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int g = lane / 4, t = lane % 4;
  const int chunk = blockIdx.y;
  const int row_begin = chunk * p.rows_per_chunk;
  const int row_end = min(p.n, row_begin + p.rows_per_chunk);
  // Norm ownership: thread reads 16-byte column block `cb` of rows r0, r0 + THREADS/VPR, …
  const int cb = threadIdx.x % VPR, r0 = threadIdx.x / VPR;

  for (int bh = blockIdx.x; bh < p.b * p.h; bh += gridDim.x) {
    const int b = bh / p.h, h = bh % p.h;
    const u16* q = reinterpret_cast<const u16*>(p.q) + (b * p.q_sb + h * p.q_sh);
    const u16* k = reinterpret_cast<const u16*>(p.k) + (b * p.k_sb + h * p.k_sh);
    const u16* v = reinterpret_cast<const u16*>(p.v) + (b * p.v_sb + h * p.v_sh);
    float acc[NT][4];
#pragma unroll
    for (int j = 0; j < NT; ++j) acc[j][0] = acc[j][1] = acc[j][2] = acc[j][3] = 0.f;
    float qn[8] = {0, 0, 0, 0, 0, 0, 0, 0}, kn[8] = {0, 0, 0, 0, 0, 0, 0, 0};

    __syncthreads();  // the previous (b,h) iteration's reads of the buffers are done
    tc_stage<D, LD, ROWS, THREADS>(ks[0], k, p.k_sn, row_begin, row_end);
    tc_stage<D, LD, ROWS, THREADS>(vs[0], v, p.v_sn, row_begin, row_end);
    tc_stage<D, LD, ROWS, THREADS>(qs[0], q, p.q_sn, row_begin, row_end);
    cp_async_commit();
    int buf = 0;
    for (int row0 = row_begin; row0 < row_end; row0 += ROWS, buf ^= 1) {
      if (row0 + ROWS < row_end) {
        tc_stage<D, LD, ROWS, THREADS>(ks[buf ^ 1], k, p.k_sn, row0 + ROWS, row_end);
        tc_stage<D, LD, ROWS, THREADS>(vs[buf ^ 1], v, p.v_sn, row0 + ROWS, row_end);
        tc_stage<D, LD, ROWS, THREADS>(qs[buf ^ 1], q, p.q_sn, row0 + ROWS, row_end);
      }
      cp_async_commit();
      cp_async_wait<1>();
      __syncthreads();

#pragma unroll
      for (int r = r0; r < ROWS; r += THREADS / VPR) {
        float x[8], y[8];
        unpack8<T>(&qs[buf][r][cb * 8], x);
        unpack8<T>(&ks[buf][r][cb * 8], y);
#pragma unroll
        for (int i = 0; i < 8; ++i) {
          qn[i] += fabsf(x[i]);
          kn[i] += fabsf(y[i]);
        }
      }
#pragma unroll
      for (int n0 = 0; n0 < ROWS; n0 += 16) {
        u32 a[4];
        {  // A = K^T: rows c of the warp's m-tile, columns n; stored as ks[n][c], so transposed
          int mat = lane / 8, r = lane % 8;
          ldmatrix_x4_trans_at(a, smem_addr_folded(&ks[buf][n0 + r + (mat / 2) * 8][warp * 16 + (mat % 2) * 8]));
        }
#pragma unroll
        for (int e0 = 0; e0 < D; e0 += 16) {
          u32 bf[4];  // B = V: k = n rows, columns e; two n-tiles (e0, e0 + 8)
          int mat = lane / 8, r = lane % 8;
          ldmatrix_x4_trans_at(bf, smem_addr_folded(&vs[buf][n0 + r + (mat % 2) * 8][e0 + (mat / 2) * 8]));
          mma16816<T>(acc[e0 / 8], a, bf[0], bf[1]);
          mma16816<T>(acc[e0 / 8 + 1], a, bf[2], bf[3]);
        }
      }
      __syncthreads();  // buffer `buf` is refilled two iterations from now
    }
    cp_async_wait<0>();

    const i64 stride = (i64)p.d * p.dv + 2 * p.d;
    float* out = reinterpret_cast<float*>(p.partial) + ((i64)bh * p.chunks + chunk) * stride;
#pragma unroll
    for (int j = 0; j < NT; ++j) {
      int c = warp * 16 + g, e = j * 8 + 2 * t;
      // Scalar stores: the workspace is only 4-byte aligned by contract.
      out[(i64)c * p.dv + e] = acc[j][0];
      out[(i64)c * p.dv + e + 1] = acc[j][1];
      out[(i64)(c + 8) * p.dv + e] = acc[j][2];
      out[(i64)(c + 8) * p.dv + e + 1] = acc[j][3];
    }
    // Column norms: THREADS / VPR threads share each column block; sum them in a fixed order.
    float* red = reinterpret_cast<float*>(sima_tc_smem);  // 2·THREADS·8 floats ≤ the tiles
    __syncthreads();
#pragma unroll
    for (int i = 0; i < 8; ++i) {
      red[threadIdx.x * 8 + i] = qn[i];
      red[(THREADS + threadIdx.x) * 8 + i] = kn[i];
    }
    __syncthreads();
    if (threadIdx.x < D) {
      int c = threadIdx.x, blk = c / 8, i = c % 8;
      float sq = 0.f, sk = 0.f;
      for (int s = blk; s < THREADS; s += VPR) {
        sq += red[s * 8 + i];
        sk += red[(THREADS + s) * 8 + i];
      }
      out[(i64)p.d * p.dv + c] = sq;
      out[(i64)p.d * p.dv + p.d + c] = sk;
    }
  }
}

// Map pass. Grid: x = CTAs striding over 64-row tiles, y = bh (grid-stride). G (fp32) is scaled
// by a power of two α so that max|αG| ∈ [1, 2) — G ~ 1/N² would underflow f16 otherwise — then
// kept in shared memory as the B operand; O = (Q · αG) / α. Traffic: Q read once, O written once.
template <typename T, int D>
__device__ void sima_map_tc(const SimaParams& p) {
  constexpr int WARPS = SIMA_TC_MAP_WARPS, THREADS = WARPS * 32, ROWS = WARPS * 16;
  constexpr int LD = D + 8, NT = D / 8, KT = D / 16;
  auto gs = reinterpret_cast<u16(*)[LD]>(sima_tc_smem);
  auto qs = reinterpret_cast<u16(*)[ROWS][LD]>(sima_tc_smem + D * LD);
  __shared__ float wmax[WARPS];
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int g = lane / 4, t = lane % 4;
  const int tiles = div_up(p.n, ROWS);

  for (int bh = blockIdx.y; bh < p.b * p.h; bh += gridDim.y) {
    const int b = bh / p.h, h = bh % p.h;
    const u16* q = reinterpret_cast<const u16*>(p.q) + (b * p.q_sb + h * p.q_sh);
    T* o = reinterpret_cast<T*>(p.o) + (b * p.o_sb + h * p.o_sh);
    const float* gm = reinterpret_cast<const float*>(p.g) + (i64)bh * D * D;

    __syncthreads();  // previous bh done with gs, qs, wmax
    if (blockIdx.x < tiles) {
      tc_stage<D, LD, ROWS, THREADS>(qs[0], q, p.q_sn, blockIdx.x * ROWS, p.n);
    }
    cp_async_commit();
    // G (D² floats, in L2) is read GB values per thread at a time, all in flight, for its max and
    // its 16-bit copy (one round trip per few values cost ≈ 3 µs of every CTA at D = 64).
    constexpr int GB = 8;
    float mx = 0.f;
#pragma unroll 1
    for (int i0 = threadIdx.x; i0 < D * D; i0 += GB * THREADS) {
      float v[GB];
      load_batch(v, gm, i0, THREADS, D * D);
#pragma unroll
      for (int u = 0; u < GB; ++u) mx = fmaxf(mx, fabsf(v[u]));
    }
#pragma unroll
    for (int off = 16; off > 0; off >>= 1) mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, off));
    if (lane == 0) wmax[warp] = mx;
    __syncthreads();
    mx = wmax[0];
#pragma unroll
    for (int w = 1; w < WARPS; ++w) mx = fmaxf(mx, wmax[w]);
    const float alpha = pow2_scale(mx), inv_alpha = 1.f / alpha;
#pragma unroll 1
    for (int i0 = threadIdx.x; i0 < D * D; i0 += GB * THREADS) {
      float v[GB];
      load_batch(v, gm, i0, THREADS, D * D);
#pragma unroll
      for (int u = 0; u < GB; ++u) {
        const int i = i0 + u * THREADS;
        if (i < D * D) gs[i / D][i % D] = from_f32<T>(v[u] * alpha).bits;
      }
    }
    __syncthreads();

    int buf = 0;
    for (int tile = blockIdx.x; tile < tiles; tile += gridDim.x, buf ^= 1) {
      if (tile + gridDim.x < tiles) {
        tc_stage<D, LD, ROWS, THREADS>(qs[buf ^ 1], q, p.q_sn, (tile + gridDim.x) * ROWS, p.n);
      }
      cp_async_commit();
      cp_async_wait<1>();
      __syncthreads();
      float acc[NT][4];
#pragma unroll
      for (int j = 0; j < NT; ++j) acc[j][0] = acc[j][1] = acc[j][2] = acc[j][3] = 0.f;
#pragma unroll
      for (int kt = 0; kt < KT; ++kt) {
        u32 a[4];
        ldmatrix_x4_at(a, smem_addr_folded(&qs[buf][warp * 16 + lane % 16][kt * 16 + (lane / 16) * 8]));
#pragma unroll
        for (int e0 = 0; e0 < D; e0 += 16) {
          u32 bf[4];  // B = αG: k = c rows, columns e; two n-tiles (e0, e0 + 8)
          int mat = lane / 8, r = lane % 8;
          ldmatrix_x4_trans_at(bf, smem_addr_folded(&gs[kt * 16 + r + (mat % 2) * 8][e0 + (mat / 2) * 8]));
          mma16816<T>(acc[e0 / 8], a, bf[0], bf[1]);
          mma16816<T>(acc[e0 / 8 + 1], a, bf[2], bf[3]);
        }
      }
      // Epilogue: the warp's 16 Q rows in shared memory were read only by this warp, so they
      // stage its output; then each lane writes whole 16-byte pieces of O rows.
      u16(*stage)[LD] = &qs[buf][warp * 16];
      __syncwarp();  // every lane's ldmatrix reads of these rows precede any lane's writes
#pragma unroll
      for (int j = 0; j < NT; ++j) {
        int e = j * 8 + 2 * t;
        *reinterpret_cast<u32*>(&stage[g][e]) = pack2<T>(acc[j][0] * inv_alpha, acc[j][1] * inv_alpha);
        *reinterpret_cast<u32*>(&stage[g + 8][e]) = pack2<T>(acc[j][2] * inv_alpha, acc[j][3] * inv_alpha);
      }
      __syncwarp();
      const int row0 = tile * ROWS + warp * 16;
      u16* ob = reinterpret_cast<u16*>(o);
#pragma unroll
      for (int i = lane; i < 16 * (D / 8); i += 32) {
        int r = i / (D / 8), c = (i % (D / 8)) * 8;
        if (row0 + r < p.n)
          *reinterpret_cast<uint4*>(&ob[(i64)(row0 + r) * p.o_sn + c]) = *reinterpret_cast<const uint4*>(&stage[r][c]);
      }
      __syncthreads();  // buffer `buf` is refilled next iteration
    }
    cp_async_wait<0>();
  }
}

// RMIN / MMIN: CTAs per SM the register allocation must allow for the reduce / map pass.
#define SIMA_TC(DIM, RMIN, MMIN, T, NAME)                                                       \
  extern "C" __global__ void __launch_bounds__(DIM / 16 * 32, RMIN)                             \
      sima_reduce_tc##DIM##_##NAME(const __grid_constant__ SimaParams p) {                      \
    sima_reduce_tc<T, DIM>(p);                                                                  \
  }                                                                                             \
  extern "C" __global__ void __launch_bounds__(SIMA_TC_MAP_WARPS * 32, MMIN)                    \
      sima_map_tc##DIM##_##NAME(const __grid_constant__ SimaParams p) {                         \
    sima_map_tc<T, DIM>(p);                                                                     \
  }

#define SIMA_TC_DTYPE(T, NAME)                                                                  \
  SIMA_TC(32, 6, 6, T, NAME)                                                                    \
  SIMA_TC(48, 6, 6, T, NAME)                                                                    \
  SIMA_TC(64, 6, 6, T, NAME)                                                                    \
  SIMA_TC(80, 4, 4, T, NAME)                                                                    \
  SIMA_TC(96, 3, 2, T, NAME)                                                                    \
  SIMA_TC(128, 2, 3, T, NAME)
