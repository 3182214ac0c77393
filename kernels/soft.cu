// SOFT — Gaussian-kernel Nyström attention (SPEC §1), CUDA-core fp32 kernels. The Newton–Raphson
// pseudo-inverse is in newton.cu. Pieces, each its own launch:
//   soft_landmarks  per (landmark, bh): mean of the scaled keys over a 1-D segment or 2-D window
//   soft_products   per (row block, bh, landmark tile): P = exp(-½‖qs_i − l_j‖²), materialized
//   soft_gram_f32   per (row block, bh, landmark tile): A = exp(-½‖l_i − l_j‖²)
// Fused attention X = P·(Z·(P_kᵀV)), P never stored:
//   soft_pass1      per (chunk, bh, landmark tile × value tile): partial P_kᵀV of the chunk's rows
//   soft_sum_f32    per (element block, bh): S = Σ_chunk partial, in chunk order
//   soft_w_f32      per (landmark, bh): W = Z·S
//   soft_pass2      per (row block, bh, value tile): X = P·W
// f16/bf16 with D == Dv ∈ {32, 48, 64, 80, 96, 128} (pass 2's landmarks in shared memory) and
// 16-byte-aligned rows: soft_pass1_tc / soft_pass2_tc (tensor cores, soft_tc.cuh) write the same
// partials and output.
// Squared distances: the materialized products sum squared differences (no cancellation); the
// fused passes use ‖x‖² + ‖l‖² − 2x·l clamped at 0 (the GEMM form). Every reduction runs in a
// fixed order, so outputs are bit-identical run to run.
#include "soft.cuh"
#include "soft_tc.cuh"

static_assert(sizeof(SoftKernelParams) == SOFT_PARAMS_SIZE,
              "SoftKernelParams layout changed: update Rust");

#define SOFT_XLD (SOFT_KC + 1)  // leading dim of the staged row / landmark columns
#define SOFT_PLD (SOFT_LM + 1)  // leading dim of a P tile and of the staged V / W tile
// Shared floats of one P tile: staged rows and landmarks (reused for a V / W tile), the tile,
// and the row / landmark squared norms.
#define SOFT_STAGE_FLOATS ((SOFT_ROWS + SOFT_LM) * SOFT_XLD)
#define SOFT_TILE_FLOATS (SOFT_ROWS * SOFT_PLD)
static_assert(SOFT_STAGE_FLOATS >= SOFT_LM * SOFT_PLD, "stage area must hold a V/W tile");
static_assert(SOFT_THREADS == 256 && SOFT_ROWS == 64 && SOFT_LM == 64 && SOFT_ET == 64,
              "thread mappings below assume 16×16 threads over 64×64 tiles");

template <typename T>
__device__ __forceinline__ const T* sptr(u64 p) { return reinterpret_cast<const T*>(p); }
__device__ __forceinline__ float* fptr(u64 p) { return reinterpret_cast<float*>(p); }

struct GaussSmem {
  float stage[SOFT_STAGE_FLOATS];  // xs [SOFT_ROWS][SOFT_XLD], then ls [SOFT_LM][SOFT_XLD]
  float tile[SOFT_TILE_FLOATS];    // P tile [SOFT_ROWS][SOFT_PLD]
  float norms[SOFT_ROWS + SOFT_LM];
};

// The SOFT_ROWS × SOFT_LM tile exp(-½‖x_i − l_j‖²) for rows row0.. of x (scaled by xscale) and
// landmarks j0.. of l (fp32, row stride d), into sm.tile; entries with i ≥ nrows or j ≥ m are 0.
// DIFF: squared differences; else ‖x‖² + ‖l‖² − 2x·l clamped at 0. The first statement is a
// barrier, and the tile is complete for all threads only after the caller's next barrier.
template <typename T, bool DIFF>
__device__ __forceinline__ void gauss_tile(GaussSmem& sm, const T* x, i64 x_sn, float xscale, int row0, int nrows,
                           const float* l, int j0, int m, int d) {
  float* xs = sm.stage;
  float* ls = sm.stage + SOFT_ROWS * SOFT_XLD;
  const int t = threadIdx.x, tr = t / 16, tj = t % 16;
  float acc[4][4];
#pragma unroll
  for (int a = 0; a < 4; ++a)
#pragma unroll
    for (int b = 0; b < 4; ++b) acc[a][b] = 0.f;
  float nrm = 0.f;  // t < SOFT_ROWS: ‖x_t‖²; SOFT_ROWS ≤ t < SOFT_ROWS + SOFT_LM: ‖l_t‖²

  for (int c0 = 0; c0 < d; c0 += SOFT_KC) {
    __syncthreads();  // previous users of the stage area (and of the tile) are done
    for (int i = t; i < SOFT_ROWS * SOFT_KC; i += SOFT_THREADS) {
      const int r = i / SOFT_KC, c = i % SOFT_KC;
      const bool cin = c0 + c < d;
      xs[r * SOFT_XLD + c] =
          (cin && row0 + r < nrows) ? to_f32(x[(i64)(row0 + r) * x_sn + c0 + c]) * xscale : 0.f;
      ls[r * SOFT_XLD + c] = (cin && j0 + r < m) ? l[(i64)(j0 + r) * d + c0 + c] : 0.f;
    }
    __syncthreads();
    if (!DIFF && t < SOFT_ROWS + SOFT_LM) {
      const float* row = xs + t * SOFT_XLD;  // ls follows xs directly, so t indexes both
#pragma unroll 8
      for (int c = 0; c < SOFT_KC; ++c) nrm = fmaf(row[c], row[c], nrm);
    }
#pragma unroll 4
    for (int c = 0; c < SOFT_KC; ++c) {
      float xr[4], lr[4];
#pragma unroll
      for (int a = 0; a < 4; ++a) xr[a] = xs[(tr + 16 * a) * SOFT_XLD + c];
#pragma unroll
      for (int b = 0; b < 4; ++b) lr[b] = ls[(tj + 16 * b) * SOFT_XLD + c];
#pragma unroll
      for (int a = 0; a < 4; ++a)
#pragma unroll
        for (int b = 0; b < 4; ++b) {
          if (DIFF) {
            const float df = xr[a] - lr[b];
            acc[a][b] = fmaf(df, df, acc[a][b]);
          } else {
            acc[a][b] = fmaf(xr[a], lr[b], acc[a][b]);
          }
        }
    }
  }
  if (!DIFF) {
    if (t < SOFT_ROWS + SOFT_LM) sm.norms[t] = nrm;
    __syncthreads();
  }
#pragma unroll
  for (int a = 0; a < 4; ++a)
#pragma unroll
    for (int b = 0; b < 4; ++b) {
      const int i = tr + 16 * a, j = tj + 16 * b;
      float d2 = acc[a][b];
      if (!DIFF) d2 = nonneg(sm.norms[i] + sm.norms[SOFT_ROWS + j] - 2.f * d2);
      const bool in = row0 + i < nrows && j0 + j < m;
      sm.tile[i * SOFT_PLD + j] = in ? expf(-0.5f * d2) : 0.f;
    }
}

// Landmarks (SPEC §1.2): L_j = D^(-1/4) · mean of the key rows of segment / window j.
// Grid: x = landmark j, y = bh (grid-stride); SOFT_POOL_THREADS threads, so that 8 CTAs fit an SM
// and m = 64 landmarks of 16 slices run in one wave on an H100: its CTAs then walk their segments
// in step and end on the segments' tails, which the tensor-core pass 1 reads first (soft_tc.cuh).
// Traffic: every key row read once in all (segments and windows partition the rows it uses).
// 1-D segments with 8-element-aligned rows (the common case): each thread sums 8 channels (one
// 16-byte load, 32 for f32) of rows r, r + RL, … (RL = 128 / (d/8) row lanes), four rows in
// flight per step, then the row lanes are added in lane order. Otherwise 4 warps stride over the
// rows, lanes over columns, the warps added in order. Both orders are fixed (deterministic).
template <typename T>
__device__ void soft_landmarks(const SoftKernelParams& p) {
  __shared__ float part[SOFT_POOL_THREADS / 32 * SOFT_MAX_D];  // row-lane (or warp) partial sums
  const int j = blockIdx.x;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  constexpr int WARPS = SOFT_POOL_THREADS / 32, CPL = SOFT_MAX_D / 32, V = 8;
  static_assert(SOFT_POOL_THREADS * V <= WARPS * SOFT_MAX_D, "row-lane partials fit");
  int count, begin = 0, gw = 1;
  if (p.pool == 0) {
    begin = (int)((i64)j * p.n / p.m);
    count = (int)((i64)(j + 1) * p.n / p.m) - begin;
  } else {
    gw = p.width / p.r;
    count = p.r * p.r;
  }
  const int wa = j / gw, wb = j % gw;  // AvgPool2d window (row, column) on the grid
  const int vpr = p.d / V, rl = SOFT_POOL_THREADS / max(vpr, 1);  // vectors per row, row lanes
  const int lr = threadIdx.x / max(vpr, 1), cv = threadIdx.x % max(vpr, 1);
  for (int bh = blockIdx.y; bh < p.b * p.h; bh += gridDim.y) {
    const int b = bh / p.h, h = bh % p.h;
    const T* k = sptr<T>(p.k) + b * p.k_sb + h * p.k_sh;
    const bool vec = p.pool == 0 && p.d % V == 0 && p.k_sn % V == 0 &&
                     reinterpret_cast<u64>(k) % (V * sizeof(T)) == 0;  // CTA-uniform
    int lanes;  // partial rows in `part`, each of p.d floats
    __syncthreads();  // previous (b,h) fully read `part`
    if (vec) {
      float acc[V];
#pragma unroll
      for (int i = 0; i < V; ++i) acc[i] = 0.f;
      if (lr < rl) {
        const i64 step = (i64)rl * p.k_sn;
        const T* kr = k + (i64)(begin + lr) * p.k_sn + cv * V;
        int e = lr;
        for (; e + 3 * rl < count; e += 4 * rl, kr += 4 * step) {
          float x[4][V];
#pragma unroll
          for (int u = 0; u < 4; ++u) load8(kr + u * step, x[u]);
#pragma unroll
          for (int u = 0; u < 4; ++u)
#pragma unroll
            for (int i = 0; i < V; ++i) acc[i] += x[u][i];
        }
        for (; e < count; e += rl, kr += step) {
          float x[V];
          load8(kr, x);
#pragma unroll
          for (int i = 0; i < V; ++i) acc[i] += x[i];
        }
#pragma unroll
        for (int i = 0; i < V; ++i) part[lr * p.d + cv * V + i] = acc[i];
      }
      lanes = rl;
    } else {
      float acc[CPL];
#pragma unroll
      for (int i = 0; i < CPL; ++i) acc[i] = 0.f;
      for (int e = warp; e < count; e += WARPS) {
        const int row = p.pool == 0 ? begin + e
                                    : (wa * p.r + e / p.r) * p.width + wb * p.r + e % p.r;
        const T* kr = k + (i64)row * p.k_sn;
#pragma unroll
        for (int i = 0; i < CPL; ++i) {
          const int c = lane + 32 * i;
          if (c < p.d) acc[i] += to_f32(kr[c]);
        }
      }
#pragma unroll
      for (int i = 0; i < CPL; ++i)
        if (lane + 32 * i < p.d) part[warp * p.d + lane + 32 * i] = acc[i];
      lanes = WARPS;
    }
    __syncthreads();
    float* out = fptr(p.l) + ((i64)bh * p.m + j) * p.d;
    for (int c = threadIdx.x; c < p.d; c += SOFT_POOL_THREADS) {
      float s = 0.f;
      for (int w = 0; w < lanes; ++w) s += part[w * p.d + c];
      out[c] = s / (float)count * p.scale;
    }
  }
}

// Materialized products (SPEC §1.3, §1.6). Grid: x = row block of SOFT_ROWS, y = bh
// (grid-stride), z = landmark tile of SOFT_LM. Traffic: each Q row read once per landmark tile,
// L from L2; each P element written once. GRAM: rows are the landmarks themselves (A, m×m).
template <typename T, bool GRAM>
__device__ void soft_products(const SoftKernelParams& p) {
  __shared__ GaussSmem sm;
  const int row0 = blockIdx.x * SOFT_ROWS, j0 = blockIdx.z * SOFT_LM;
  for (int bh = blockIdx.y; bh < p.b * p.h; bh += gridDim.y) {
    const int b = bh / p.h, h = bh % p.h;
    const float* l = fptr(p.l) + (i64)bh * p.m * p.d;
    float* out;
    int rows;
    if constexpr (GRAM) {
      rows = p.m;
      out = fptr(p.a) + (i64)bh * p.m * p.m;
      gauss_tile<float, true>(sm, l, p.d, 1.f, row0, rows, l, j0, p.m, p.d);
    } else {
      rows = p.n;
      out = fptr(p.p) + (i64)bh * p.n * p.m;
      const T* q = sptr<T>(p.q) + b * p.q_sb + h * p.q_sh;
      gauss_tile<T, true>(sm, q, p.q_sn, p.scale, row0, rows, l, j0, p.m, p.d);
    }
    __syncthreads();
    for (int i = threadIdx.x; i < SOFT_ROWS * SOFT_LM; i += SOFT_THREADS) {
      const int r = i / SOFT_LM, j = i % SOFT_LM;
      if (row0 + r < rows && j0 + j < p.m)
        out[(i64)(row0 + r) * p.m + j0 + j] = sm.tile[r * SOFT_PLD + j];
    }
  }
}

// Attention pass 1 (SPEC §1.5): partial[bh][chunk] = Σ_{rows of the chunk} P_k[row, :]ᵀ V[row, :]
// for one landmark tile × value tile. Grid: x = chunk, y = bh (grid-stride), z = landmark tile ×
// value tile. Traffic: K rows of the chunk once per tile pair, V once per landmark tile, L from L2.
template <typename T>
__device__ void soft_pass1(const SoftKernelParams& p) {
  __shared__ GaussSmem sm;
  const int e_tiles = div_up(p.dv, SOFT_ET);
  const int j0 = (blockIdx.z / e_tiles) * SOFT_LM, e0 = (blockIdx.z % e_tiles) * SOFT_ET;
  const int chunk = blockIdx.x;
  const int row_begin = chunk * p.rows_per_chunk;
  const int row_end = min(p.n, row_begin + p.rows_per_chunk);
  const int tj = threadIdx.x / 16, te = threadIdx.x % 16;
  float* vs = sm.stage;  // [SOFT_ROWS][SOFT_PLD]
  for (int bh = blockIdx.y; bh < p.b * p.h; bh += gridDim.y) {
    const int b = bh / p.h, h = bh % p.h;
    const T* k = sptr<T>(p.k) + b * p.k_sb + h * p.k_sh;
    const T* v = sptr<T>(p.v) + b * p.v_sb + h * p.v_sh;
    const float* l = fptr(p.l) + (i64)bh * p.m * p.d;
    float acc[4][4];
#pragma unroll
    for (int a = 0; a < 4; ++a)
#pragma unroll
      for (int c = 0; c < 4; ++c) acc[a][c] = 0.f;
    for (int row0 = row_begin; row0 < row_end; row0 += SOFT_ROWS) {
      gauss_tile<T, false>(sm, k, p.k_sn, p.scale, row0, row_end, l, j0, p.m, p.d);
      __syncthreads();  // tile complete; the stage area is free for V
      for (int i = threadIdx.x; i < SOFT_ROWS * SOFT_ET; i += SOFT_THREADS) {
        const int r = i / SOFT_ET, e = i % SOFT_ET;
        vs[r * SOFT_PLD + e] = (row0 + r < row_end && e0 + e < p.dv)
                                   ? to_f32(v[(i64)(row0 + r) * p.v_sn + e0 + e])
                                   : 0.f;
      }
      __syncthreads();
#pragma unroll 4
      for (int r = 0; r < SOFT_ROWS; ++r) {
        float pr[4], vr[4];
#pragma unroll
        for (int a = 0; a < 4; ++a) pr[a] = sm.tile[r * SOFT_PLD + tj + 16 * a];
#pragma unroll
        for (int c = 0; c < 4; ++c) vr[c] = vs[r * SOFT_PLD + te + 16 * c];
#pragma unroll
        for (int a = 0; a < 4; ++a)
#pragma unroll
          for (int c = 0; c < 4; ++c) acc[a][c] = fmaf(pr[a], vr[c], acc[a][c]);
      }
    }
    float* out = fptr(p.partial) + ((i64)bh * p.chunks + chunk) * p.m * p.dv;
#pragma unroll
    for (int a = 0; a < 4; ++a)
#pragma unroll
      for (int c = 0; c < 4; ++c) {
        const int j = j0 + tj + 16 * a, e = e0 + te + 16 * c;
        if (j < p.m && e < p.dv) out[(i64)j * p.dv + e] = acc[a][c];
      }
  }
}

// Chunk sum: S[bh] = Σ_chunk partial[bh][chunk] (m×dv), chunks in order. Grid: x = element
// block, y = bh (grid-stride). Traffic: every partial read once, S written once.
__device__ void soft_sum(const SoftKernelParams& p) {
  const i64 len = (i64)p.m * p.dv;
  const i64 i = (i64)blockIdx.x * blockDim.x + threadIdx.x;
  if (i >= len) return;
  for (int bh = blockIdx.y; bh < p.b * p.h; bh += gridDim.y) {
    const float* part = fptr(p.partial) + (i64)bh * p.chunks * len + i;
    float s = 0.f;
    for (int ch = 0; ch < p.chunks; ++ch) s += part[ch * len];
    fptr(p.s)[(i64)bh * len + i] = s;
  }
}

// W = Z·S (m×m times m×dv). Grid: x = landmark row j, y = bh (grid-stride); threads over value
// columns. Traffic: Z row j once, S from L2, W row j written once.
__device__ void soft_w(const SoftKernelParams& p) {
  __shared__ float zrow[SOFT_MAX_M];
  const int j = blockIdx.x;
  for (int bh = blockIdx.y; bh < p.b * p.h; bh += gridDim.y) {
    const float* z = fptr(p.z) + ((i64)bh * p.m + j) * p.m;
    const float* s = fptr(p.s) + (i64)bh * p.m * p.dv;
    __syncthreads();
    for (int c = threadIdx.x; c < p.m; c += blockDim.x) zrow[c] = z[c];
    __syncthreads();
    float* w = fptr(p.w) + ((i64)bh * p.m + j) * p.dv;
    for (int e = threadIdx.x; e < p.dv; e += blockDim.x) {
      float acc = 0.f;
      for (int c = 0; c < p.m; ++c) acc = fmaf(zrow[c], s[(i64)c * p.dv + e], acc);
      w[e] = acc;
    }
  }
}

// Attention pass 2 (SPEC §1.5): X = P·W, P recomputed tile by tile. Grid: x = row block of
// SOFT_ROWS, y = bh (grid-stride), z = value tile. Traffic: Q rows once per landmark tile and
// value tile, W and L from L2, each X element written once.
template <typename T>
__device__ void soft_pass2(const SoftKernelParams& p) {
  __shared__ GaussSmem sm;
  const int row0 = blockIdx.x * SOFT_ROWS, e0 = blockIdx.z * SOFT_ET;
  const int tr = threadIdx.x / 16, te = threadIdx.x % 16;
  float* ws = sm.stage;  // [SOFT_LM][SOFT_PLD]
  for (int bh = blockIdx.y; bh < p.b * p.h; bh += gridDim.y) {
    const int b = bh / p.h, h = bh % p.h;
    const T* q = sptr<T>(p.q) + b * p.q_sb + h * p.q_sh;
    const float* l = fptr(p.l) + (i64)bh * p.m * p.d;
    const float* w = fptr(p.w) + (i64)bh * p.m * p.dv;
    float acc[4][4];
#pragma unroll
    for (int a = 0; a < 4; ++a)
#pragma unroll
      for (int c = 0; c < 4; ++c) acc[a][c] = 0.f;
    for (int j0 = 0; j0 < p.m; j0 += SOFT_LM) {
      gauss_tile<T, false>(sm, q, p.q_sn, p.scale, row0, p.n, l, j0, p.m, p.d);
      __syncthreads();  // tile complete; the stage area is free for W
      for (int i = threadIdx.x; i < SOFT_LM * SOFT_ET; i += SOFT_THREADS) {
        const int j = i / SOFT_ET, e = i % SOFT_ET;
        ws[j * SOFT_PLD + e] =
            (j0 + j < p.m && e0 + e < p.dv) ? w[(i64)(j0 + j) * p.dv + e0 + e] : 0.f;
      }
      __syncthreads();
#pragma unroll 4
      for (int j = 0; j < SOFT_LM; ++j) {
        float pr[4], wr[4];
#pragma unroll
        for (int a = 0; a < 4; ++a) pr[a] = sm.tile[(tr + 16 * a) * SOFT_PLD + j];
#pragma unroll
        for (int c = 0; c < 4; ++c) wr[c] = ws[j * SOFT_PLD + te + 16 * c];
#pragma unroll
        for (int a = 0; a < 4; ++a)
#pragma unroll
          for (int c = 0; c < 4; ++c) acc[a][c] = fmaf(pr[a], wr[c], acc[a][c]);
      }
    }
    T* o = reinterpret_cast<T*>(p.o) + b * p.o_sb + h * p.o_sh;
#pragma unroll
    for (int a = 0; a < 4; ++a) {
      const int row = row0 + tr + 16 * a;
      if (row >= p.n) continue;
#pragma unroll
      for (int c = 0; c < 4; ++c) {
        const int e = e0 + te + 16 * c;
        if (e < p.dv) o[(i64)row * p.o_sn + e] = from_f32<T>(acc[a][c]);
      }
    }
  }
}

// Entry points: soft_<step>_<dtype>.
#define SOFT_DTYPE(T, NAME)                                                                    \
  extern "C" __global__ void __launch_bounds__(SOFT_POOL_THREADS, 8)                              \
      soft_landmarks_##NAME(const __grid_constant__ SoftKernelParams p) {                      \
    soft_landmarks<T>(p);                                                                      \
  }                                                                                            \
  extern "C" __global__ void __launch_bounds__(SOFT_THREADS, 2)                                   \
      soft_products_##NAME(const __grid_constant__ SoftKernelParams p) {                       \
    soft_products<T, false>(p);                                                                \
  }                                                                                            \
  extern "C" __global__ void __launch_bounds__(SOFT_THREADS, 2)                                   \
      soft_pass1_##NAME(const __grid_constant__ SoftKernelParams p) {                          \
    soft_pass1<T>(p);                                                                          \
  }                                                                                            \
  extern "C" __global__ void __launch_bounds__(SOFT_THREADS, 2)                                   \
      soft_pass2_##NAME(const __grid_constant__ SoftKernelParams p) {                          \
    soft_pass2<T>(p);                                                                          \
  }

SOFT_DTYPE(f16, f16)
SOFT_DTYPE(bf16, bf16)
SOFT_DTYPE(float, f32)
SOFT_TC_DTYPE(f16, f16)
SOFT_TC_DTYPE(bf16, bf16)

extern "C" __global__ void __launch_bounds__(SOFT_THREADS, 2)
    soft_gram_f32(const __grid_constant__ SoftKernelParams p) {
  soft_products<float, true>(p);
}
extern "C" __global__ void __launch_bounds__(SOFT_THREADS)
    soft_sum_f32(const __grid_constant__ SoftKernelParams p) {
  soft_sum(p);
}
extern "C" __global__ void __launch_bounds__(SOFT_THREADS)
    soft_w_f32(const __grid_constant__ SoftKernelParams p) {
  soft_w(p);
}
