// SimA — ℓ1-normalized attention (SPEC §4), fused linear form and the quadratic order for N < D.
// Linear order (N >= D), three launches:
//   sima_reduce   per (bh, row chunk, c×e tile): partial k^T v, Σ|q|, Σ|k| into the workspace
//   sima_finalize per (bh, c): fixed-order sum over chunks, G = (k^T v) / (‖q_c‖₁ ‖k_c‖₁)
//   sima_map      per (bh, row block, e tile): O = q · G
// Quadratic order (N < D): sima_colnorms, then sima_quadratic computes (q̂ k̂ᵀ) v row by row.
// f16/bf16 with D == Dv ∈ {32, 48, 64, 80, 96, 128}: sima_reduce_tc / sima_map_tc (tensor cores,
// sima_tc.cuh).
// Every reduction runs in a fixed order, so outputs are bit-identical run to run.
#include "sima.cuh"
#include "sima_tc.cuh"

static_assert(sizeof(SimaParams) == SIMA_PARAMS_SIZE, "SimaParams layout changed: update Rust");

template <typename T>
__device__ __forceinline__ const T* ptr(u64 p) { return reinterpret_cast<const T*>(p); }

// Stages rows [row0, row0 + SIMA_ROW_TILE) × columns [col0, col0 + W) of one (b,h) slice into
// shared memory as fp32, zero-filling rows past `row_end` and columns past `ncols`.
template <typename T, int W>
__device__ __forceinline__ void stage_tile(float (*dst)[W + 1], const T* base, i64 sn, int row0,
                                           int row_end, int col0, int ncols, bool vec) {
  if (vec) {
    // ncols and col0 are multiples of 8 here, so a vector is wholly inside or outside.
    for (int i = threadIdx.x; i < SIMA_ROW_TILE * (W / 8); i += SIMA_THREADS) {
      int r = i / (W / 8), c = (i % (W / 8)) * 8;
      float x[8];
      if (row0 + r < row_end && col0 + c < ncols) {
        load8(base + (i64)(row0 + r) * sn + col0 + c, x);
      } else {
#pragma unroll
        for (int j = 0; j < 8; ++j) x[j] = 0.f;
      }
#pragma unroll
      for (int j = 0; j < 8; ++j) dst[r][c + j] = x[j];
    }
  } else {
    for (int i = threadIdx.x; i < SIMA_ROW_TILE * W; i += SIMA_THREADS) {
      int r = i / W, c = i % W;
      bool in = row0 + r < row_end && col0 + c < ncols;
      dst[r][c] = in ? to_f32(base[(i64)(row0 + r) * sn + col0 + c]) : 0.f;
    }
  }
}

// Reduce pass. Grid: x = bh (grid-stride), y = row chunk, z = c-tile × e-tile. Reads each row of
// K and V of the chunk once per tile pair (once in all when d <= TC and dv <= TE), Q once.
template <typename T, int TC, int TE>
__device__ void sima_reduce(const SimaParams& p) {
  constexpr int MC = TC / 16, ME = TE / 16;
  __shared__ float ks[SIMA_ROW_TILE][TC + 1];
  __shared__ float vs[SIMA_ROW_TILE][TE + 1];
  __shared__ float qs[SIMA_ROW_TILE][TC + 1];
  const int e_tiles = div_up(p.dv, TE);
  const int c0 = (blockIdx.z / e_tiles) * TC, e0 = (blockIdx.z % e_tiles) * TE;
  const bool norms = (blockIdx.z % e_tiles) == 0;  // one e-tile per c-tile also sums |q|, |k|
  const int chunk = blockIdx.y;
  const int row_begin = chunk * p.rows_per_chunk;
  const int row_end = min(p.n, row_begin + p.rows_per_chunk);
  const int tc = threadIdx.x / 16, te = threadIdx.x % 16;
  const bool vec = p.vec != 0;

  for (int bh = blockIdx.x; bh < p.b * p.h; bh += gridDim.x) {
    const int b = bh / p.h, h = bh % p.h;
    const T* q = ptr<T>(p.q) + b * p.q_sb + h * p.q_sh;
    const T* k = ptr<T>(p.k) + b * p.k_sb + h * p.k_sh;
    const T* v = ptr<T>(p.v) + b * p.v_sb + h * p.v_sh;
    float acc[MC][ME];
#pragma unroll
    for (int i = 0; i < MC; ++i)
#pragma unroll
      for (int j = 0; j < ME; ++j) acc[i][j] = 0.f;
    float qsum = 0.f, ksum = 0.f;  // thread t < TC owns column c0 + t

    for (int row0 = row_begin; row0 < row_end; row0 += SIMA_ROW_TILE) {
      __syncthreads();  // previous stage fully consumed
      stage_tile<T, TC>(ks, k, p.k_sn, row0, row_end, c0, p.d, vec);
      stage_tile<T, TE>(vs, v, p.v_sn, row0, row_end, e0, p.dv, vec);
      if (norms) stage_tile<T, TC>(qs, q, p.q_sn, row0, row_end, c0, p.d, vec);
      __syncthreads();
      if (norms && threadIdx.x < TC) {
#pragma unroll 8
        for (int r = 0; r < SIMA_ROW_TILE; ++r) {
          qsum += fabsf(qs[r][threadIdx.x]);
          ksum += fabsf(ks[r][threadIdx.x]);
        }
      }
#pragma unroll 4
      for (int r = 0; r < SIMA_ROW_TILE; ++r) {
        float kr[MC], vr[ME];
#pragma unroll
        for (int i = 0; i < MC; ++i) kr[i] = ks[r][tc + 16 * i];
#pragma unroll
        for (int j = 0; j < ME; ++j) vr[j] = vs[r][te + 16 * j];
#pragma unroll
        for (int i = 0; i < MC; ++i)
#pragma unroll
          for (int j = 0; j < ME; ++j) acc[i][j] = fmaf(kr[i], vr[j], acc[i][j]);
      }
    }

    const i64 stride = (i64)p.d * p.dv + 2 * p.d;
    float* out = reinterpret_cast<float*>(p.partial) + ((i64)bh * p.chunks + chunk) * stride;
#pragma unroll
    for (int i = 0; i < MC; ++i)
#pragma unroll
      for (int j = 0; j < ME; ++j) {
        int c = c0 + tc + 16 * i, e = e0 + te + 16 * j;
        if (c < p.d && e < p.dv) out[(i64)c * p.dv + e] = acc[i][j];
      }
    if (norms && threadIdx.x < TC && c0 + threadIdx.x < p.d) {
      out[(i64)p.d * p.dv + c0 + threadIdx.x] = qsum;
      out[(i64)p.d * p.dv + p.d + c0 + threadIdx.x] = ksum;
    }
  }
}

// Finalize. Grid: x = bh (grid-stride), y = c. Sums the chunks in order (deterministic) and
// writes G[c, :] = (k^T v)[c, :] / (max(Σ|q_c|, ε) · max(Σ|k_c|, ε)).
__device__ void sima_finalize(const SimaParams& p) {
  __shared__ float scale;
  const int c = blockIdx.y;
  const i64 stride = (i64)p.d * p.dv + 2 * p.d;
  for (int bh = blockIdx.x; bh < p.b * p.h; bh += gridDim.x) {
    const float* part = reinterpret_cast<const float*>(p.partial) + (i64)bh * p.chunks * stride;
    __syncthreads();
    if (threadIdx.x < 32) {
      float qn = 0.f, kn = 0.f;
      for (int ch = threadIdx.x; ch < p.chunks; ch += 32) {
        qn += part[ch * stride + (i64)p.d * p.dv + c];
        kn += part[ch * stride + (i64)p.d * p.dv + p.d + c];
      }
      qn = warp_sum(qn);
      kn = warp_sum(kn);
      if (threadIdx.x == 0) scale = 1.f / (fmaxf(qn, SIMA_EPS) * fmaxf(kn, SIMA_EPS));
    }
    __syncthreads();
    float* g = reinterpret_cast<float*>(p.g) + (i64)bh * p.d * p.dv + (i64)c * p.dv;
    for (int e = threadIdx.x; e < p.dv; e += blockDim.x) {
      float kv = 0.f;
      for (int ch = 0; ch < p.chunks; ++ch) kv += part[ch * stride + (i64)c * p.dv + e];
      g[e] = kv * scale;
    }
  }
}

// Map pass. Grid: x = row block of SIMA_MAP_ROWS, y = bh (grid-stride), z = e-tile.
// Reads each Q row once per e-tile and G from L2; writes each O element once.
template <typename T, int TC, int TE>
__device__ void sima_map(const SimaParams& p) {
  constexpr int MR = SIMA_MAP_ROWS / 16, ME = TE / 16;
  __shared__ float qs[SIMA_MAP_ROWS][TC + 1];
  __shared__ float gs[TC][TE + 1];
  const int row0 = blockIdx.x * SIMA_MAP_ROWS;
  const int e0 = blockIdx.z * TE;
  const int tr = threadIdx.x / 16, te = threadIdx.x % 16;
  const bool vec = p.vec != 0;

  for (int bh = blockIdx.y; bh < p.b * p.h; bh += gridDim.y) {
    const int b = bh / p.h, h = bh % p.h;
    const T* q = ptr<T>(p.q) + b * p.q_sb + h * p.q_sh;
    const float* g = reinterpret_cast<const float*>(p.g) + (i64)bh * p.d * p.dv;
    float acc[MR][ME];
#pragma unroll
    for (int i = 0; i < MR; ++i)
#pragma unroll
      for (int j = 0; j < ME; ++j) acc[i][j] = 0.f;

    for (int c0 = 0; c0 < p.d; c0 += TC) {
      __syncthreads();
      for (int half = 0; half < SIMA_MAP_ROWS; half += SIMA_ROW_TILE)
        stage_tile<T, TC>(reinterpret_cast<float(*)[TC + 1]>(&qs[half][0]), q, p.q_sn, row0 + half,
                          p.n, c0, p.d, vec);
      for (int i = threadIdx.x; i < TC * TE; i += SIMA_THREADS) {
        int c = i / TE, e = i % TE;
        gs[c][e] = (c0 + c < p.d && e0 + e < p.dv) ? g[(i64)(c0 + c) * p.dv + e0 + e] : 0.f;
      }
      __syncthreads();
#pragma unroll 4
      for (int c = 0; c < TC; ++c) {
        float qr[MR], gr[ME];
#pragma unroll
        for (int i = 0; i < MR; ++i) qr[i] = qs[tr + 16 * i][c];
#pragma unroll
        for (int j = 0; j < ME; ++j) gr[j] = gs[c][te + 16 * j];
#pragma unroll
        for (int i = 0; i < MR; ++i)
#pragma unroll
          for (int j = 0; j < ME; ++j) acc[i][j] = fmaf(qr[i], gr[j], acc[i][j]);
      }
    }

    T* o = reinterpret_cast<T*>(p.o) + b * p.o_sb + h * p.o_sh;
#pragma unroll
    for (int i = 0; i < MR; ++i) {
      int row = row0 + tr + 16 * i;
      if (row >= p.n) continue;
#pragma unroll
      for (int j = 0; j < ME; ++j) {
        int e = e0 + te + 16 * j;
        if (e < p.dv) o[(i64)row * p.o_sn + e] = from_f32<T>(acc[i][j]);
      }
    }
  }
}

// Column ℓ1 norms for the quadratic order. Grid: x = bh (grid-stride). N < D <= 256 rows.
template <typename T>
__device__ void sima_colnorms(const SimaParams& p) {
  for (int bh = blockIdx.x; bh < p.b * p.h; bh += gridDim.x) {
    const int b = bh / p.h, h = bh % p.h;
    const T* q = ptr<T>(p.q) + b * p.q_sb + h * p.q_sh;
    const T* k = ptr<T>(p.k) + b * p.k_sb + h * p.k_sh;
    float* norms = reinterpret_cast<float*>(p.g) + (i64)bh * 2 * p.d;
    for (int c = threadIdx.x; c < p.d; c += blockDim.x) {
      float qn = 0.f, kn = 0.f;
      for (int n = 0; n < p.n; ++n) {
        qn += fabsf(to_f32(q[(i64)n * p.q_sn + c]));
        kn += fabsf(to_f32(k[(i64)n * p.k_sn + c]));
      }
      norms[c] = qn;
      norms[p.d + c] = kn;
    }
  }
}

// Quadratic order (q̂ k̂ᵀ) v for N < D. Grid: x = query row n, y = bh (grid-stride).
// Shared: the scaled query row (D floats) and the score row s[m] = q̂_n · k̂_m (N floats).
template <typename T>
__device__ void sima_quadratic(const SimaParams& p) {
  __shared__ float qrow[256];
  __shared__ float srow[256];
  const int n = blockIdx.x;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, warps = blockDim.x / 32;
  for (int bh = blockIdx.y; bh < p.b * p.h; bh += gridDim.y) {
    const int b = bh / p.h, h = bh % p.h;
    const T* q = ptr<T>(p.q) + b * p.q_sb + h * p.q_sh;
    const T* k = ptr<T>(p.k) + b * p.k_sb + h * p.k_sh;
    const T* v = ptr<T>(p.v) + b * p.v_sb + h * p.v_sh;
    const float* norms = reinterpret_cast<const float*>(p.g) + (i64)bh * 2 * p.d;
    __syncthreads();
    for (int c = threadIdx.x; c < p.d; c += blockDim.x)
      qrow[c] = to_f32(q[(i64)n * p.q_sn + c]) /
                (fmaxf(norms[c], SIMA_EPS) * fmaxf(norms[p.d + c], SIMA_EPS));
    __syncthreads();
    for (int m = warp; m < p.n; m += warps) {
      float s = 0.f;
      for (int c = lane; c < p.d; c += 32) s += qrow[c] * to_f32(k[(i64)m * p.k_sn + c]);
      s = warp_sum(s);
      if (lane == 0) srow[m] = s;
    }
    __syncthreads();
    T* o = reinterpret_cast<T*>(p.o) + b * p.o_sb + h * p.o_sh;
    for (int e = threadIdx.x; e < p.dv; e += blockDim.x) {
      float acc = 0.f;
      for (int m = 0; m < p.n; ++m) acc = fmaf(srow[m], to_f32(v[(i64)m * p.v_sn + e]), acc);
      o[(i64)n * p.o_sn + e] = from_f32<T>(acc);
    }
  }
}

// Entry points: sima_<step>[_t<tile>]_<dtype>.
#define SIMA_TILED(TILE, T, NAME)                                                              \
  extern "C" __global__ void __launch_bounds__(SIMA_THREADS, 2)                                   \
      sima_reduce_t##TILE##_##NAME(const __grid_constant__ SimaParams p) {                     \
    sima_reduce<T, TILE, TILE>(p);                                                             \
  }                                                                                            \
  extern "C" __global__ void __launch_bounds__(SIMA_THREADS, 2)                                   \
      sima_map_t##TILE##_##NAME(const __grid_constant__ SimaParams p) {                        \
    sima_map<T, TILE, TILE>(p);                                                                \
  }

#define SIMA_DTYPE(T, NAME)                                                                    \
  SIMA_TILED(32, T, NAME)                                                                      \
  SIMA_TILED(48, T, NAME)                                                                      \
  SIMA_TILED(64, T, NAME)                                                                      \
  extern "C" __global__ void __launch_bounds__(SIMA_THREADS, 2)                                   \
      sima_colnorms_##NAME(const __grid_constant__ SimaParams p) {                             \
    sima_colnorms<T>(p);                                                                       \
  }                                                                                            \
  extern "C" __global__ void __launch_bounds__(SIMA_THREADS, 2)                                   \
      sima_quadratic_##NAME(const __grid_constant__ SimaParams p) {                            \
    sima_quadratic<T>(p);                                                                      \
  }

SIMA_DTYPE(f16, f16)
SIMA_DTYPE(bf16, bf16)
SIMA_DTYPE(float, f32)
SIMA_TC_DTYPE(f16, f16)
SIMA_TC_DTYPE(bf16, bf16)

extern "C" __global__ void __launch_bounds__(128)
    sima_finalize_f32(const __grid_constant__ SimaParams p) {
  sima_finalize(p);
}
