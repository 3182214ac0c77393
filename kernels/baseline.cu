// Elementwise and reduction kernels of the cuBLAS-composed baselines (SPEC §5): everything
// between the GEMMs of src/baseline/*. Plain CUDA-core code, fp32 arithmetic, 64-bit offsets,
// grid-stride loops (any B·H·N), every reduction in a fixed order (deterministic). All kernels run
// BASELINE_THREADS threads per CTA.
//   shared:    colreduce / colfinal (column Σ|x|, Σx, max x), colscale, to_f32, from_f32, rownorm2
//   softmax:   softmax_rows
//   cosFormer: cosformer_features, cosformer_divide, cosformer_causal_rows
//   SOFT:      soft_pool1d, soft_pool2d, soft_gaussian, soft_gram, newton_init
//   AFT:       aft_wexp_full, aft_wexp_local, aft_expkv, aft_gate
#include "baseline.cuh"

static_assert(sizeof(BaselineParams) == BASELINE_PARAMS_SIZE,
              "BaselineParams layout changed: update Rust");

template <typename T>
__device__ __forceinline__ const T* in(u64 p) { return reinterpret_cast<const T*>(p); }
template <typename T>
__device__ __forceinline__ T* out(u64 p) { return reinterpret_cast<T*>(p); }

__device__ __forceinline__ i64 global_thread() { return (i64)blockIdx.x * blockDim.x + threadIdx.x; }
__device__ __forceinline__ i64 grid_threads() { return (i64)gridDim.x * blockDim.x; }

__device__ __forceinline__ float warp_max(float v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
  return v;
}

// Sum of one value per thread over the CTA, in a fixed order; every thread gets the result.
__device__ float block_sum(float v) {
  __shared__ float part[BASELINE_WARPS];
  v = warp_sum(v);
  __syncthreads();  // the previous call's readers are done with `part`
  if ((threadIdx.x & 31) == 0) part[threadIdx.x >> 5] = v;
  __syncthreads();
  float r = 0.f;
#pragma unroll
  for (int w = 0; w < BASELINE_WARPS; ++w) r += part[w];
  return r;
}

__device__ float block_max(float v) {
  __shared__ float part[BASELINE_WARPS];
  v = warp_max(v);
  __syncthreads();
  if ((threadIdx.x & 31) == 0) part[threadIdx.x >> 5] = v;
  __syncthreads();
  float r = BASELINE_NEG_INF;
#pragma unroll
  for (int w = 0; w < BASELINE_WARPS; ++w) r = fmaxf(r, part[w]);
  return r;
}

// Merges the online-softmax pair (m2, l2) into (m, l): l = Σ exp(x − m) over both sets.
__device__ __forceinline__ void online_merge(float& m, float& l, float m2, float l2) {
  const float mx = fmaxf(m, m2);
  if (mx == BASELINE_NEG_INF) return;  // both sets empty
  l = l * expf(m - mx) + l2 * expf(m2 - mx);
  m = mx;
}

// ---------------------------------------------------------------------------------------------
// Shared pieces

template <int OP>
__device__ __forceinline__ float col_identity() { return OP == BASELINE_OP_MAX ? BASELINE_NEG_INF : 0.f; }
template <int OP>
__device__ __forceinline__ float col_combine(float acc, float x) {
  return OP == BASELINE_OP_MAX ? fmaxf(acc, x) : acc + x;
}

// Partial column reduction (SPEC §4 ℓ1 norms, §2 z, §3 column max of K): partial[bh][chunk][c]
// = Σ|x| / Σx / max x over the chunk's rows of src T [bh][rows][cols].
// Grid: x = BASELINE_COL_TILE-column tile, y = row chunk, z = bh (grid-stride); lane = column,
// warp = row phase. Traffic: reads src once (32-wide rows), writes bh·chunks·cols floats.
template <typename T, int OP>
__device__ void colreduce(const BaselineParams& p) {
  __shared__ float part[BASELINE_WARPS][BASELINE_COL_TILE + 1];
  const int lane = threadIdx.x % BASELINE_COL_TILE, warp = threadIdx.x / BASELINE_COL_TILE;
  const int c = blockIdx.x * BASELINE_COL_TILE + lane;
  const i64 r0 = (i64)blockIdx.y * p.rows_per_chunk;  // 64-bit: rows may reach 2^31 − 1
  const i64 r1 = min((i64)p.rows, r0 + p.rows_per_chunk);
  for (i64 bh = blockIdx.z; bh < p.bh; bh += gridDim.z) {
    const T* x = in<T>(p.src) + bh * p.rows * (i64)p.cols;
    float acc = col_identity<OP>();
    if (c < p.cols) {
      for (i64 r = r0 + warp; r < r1; r += BASELINE_WARPS) {
        const float v = to_f32(x[r * p.cols + c]);
        acc = col_combine<OP>(acc, OP == BASELINE_OP_L1 ? fabsf(v) : v);
      }
    }
    __syncthreads();  // the previous slice's reads of `part` are done
    part[warp][lane] = acc;
    __syncthreads();
    if (warp == 0 && c < p.cols) {
      float a = part[0][lane];
#pragma unroll
      for (int w = 1; w < BASELINE_WARPS; ++w) a = col_combine<OP>(a, part[w][lane]);
      out<float>(p.dst)[(bh * p.chunks + blockIdx.y) * p.cols + c] = a;
    }
  }
}

// Column reduction finish: dst[bh][c] = the chunks of src (partial fp32) combined in chunk order,
// then L1: 1/max(Σ|x|, eps); SUM: Σx; MAX: max x.
// Grid: one thread per (bh, c), grid-stride. Traffic: reads the partials once, writes bh·cols.
template <int OP>
__device__ void colfinal(const BaselineParams& p) {
  const i64 total = (i64)p.bh * p.cols;
  for (i64 i = global_thread(); i < total; i += grid_threads()) {
    const i64 bh = i / p.cols, c = i % p.cols;
    const float* part = in<float>(p.src) + bh * p.chunks * p.cols + c;
    float a = col_identity<OP>();
    for (int ch = 0; ch < p.chunks; ++ch) a = col_combine<OP>(a, part[(i64)ch * p.cols]);
    out<float>(p.dst)[i] = OP == BASELINE_OP_L1 ? 1.f / fmaxf(a, p.eps) : a;
  }
}

// Column scaling (SPEC §4 q̂ = q / ‖q_c‖₁): dst T[bh][r][c] = src[bh][r][c] · aux[bh][c].
// Grid: one thread per element, grid-stride. Traffic: reads src once, writes dst once.
template <typename T>
__device__ void colscale(const BaselineParams& p) {
  const i64 slice = (i64)p.rows * p.cols;
  for (i64 i = global_thread(); i < p.count; i += grid_threads()) {
    const float s = in<float>(p.aux)[(i / slice) * p.cols + i % p.cols];
    out<T>(p.dst)[i] = from_f32<T>(to_f32(in<T>(p.src)[i]) * s);
  }
}

// Widening copy (SOFT §1.1 Qs = Q / D^¼, and V for the fp32 GEMMs): dst fp32[i] = scale · src[i].
// Grid: one thread per element, grid-stride. Traffic: reads src once, writes 4 bytes per element.
template <typename T>
__device__ void to_f32_scaled(const BaselineParams& p) {
  for (i64 i = global_thread(); i < p.count; i += grid_threads())
    out<float>(p.dst)[i] = p.scale * to_f32(in<T>(p.src)[i]);
}

// Narrowing copy (the fp32 result of the last GEMM into the output dtype): dst T[i] = src fp32[i].
// Grid: one thread per element, grid-stride. Traffic: reads 4 bytes, writes one T per element.
template <typename T>
__device__ void from_f32_copy(const BaselineParams& p) {
  for (i64 i = global_thread(); i < p.count; i += grid_threads())
    out<T>(p.dst)[i] = from_f32<T>(in<float>(p.src)[i]);
}

// Squared row norms (SOFT §1.3 ‖x‖², ‖l‖²): aux[r] = Σ_c src[r][c]² over bh·rows rows of fp32.
// Grid: one warp per row, grid-stride. Traffic: reads src once, writes one float per row.
__device__ void rownorm2(const BaselineParams& p) {
  const i64 total = (i64)p.bh * p.rows;
  const int lane = threadIdx.x & 31;
  const i64 warps = grid_threads() / 32;
  for (i64 r = global_thread() / 32; r < total; r += warps) {
    const float* x = in<float>(p.src) + r * p.cols;
    float s = 0.f;
    for (int c = lane; c < p.cols; c += 32) s = fmaf(x[c], x[c], s);
    s = warp_sum(s);
    if (lane == 0) out<float>(p.aux)[r] = s;
  }
}

// ---------------------------------------------------------------------------------------------
// Softmax attention (SPEC §5)

// Row softmax: dst T[r][j] = exp(s_rj − max) / Σ exp(s − max) over the row's visible keys of the
// fp32 scores src [bh·rows][cols] (j > r % rows masked to 0 when causal). May run in place (f32).
// Grid: one CTA per row, grid-stride; threads stride over the columns.
// Traffic: reads each score twice (online max/sum, then the write pass), writes P once.
template <typename T>
__device__ void softmax_rows(const BaselineParams& p) {
  __shared__ float pm[BASELINE_WARPS], pl[BASELINE_WARPS];
  const i64 total = (i64)p.bh * p.rows;
  for (i64 r = blockIdx.x; r < total; r += gridDim.x) {
    const float* s = in<float>(p.src) + r * p.cols;
    T* dst = out<T>(p.dst) + r * p.cols;
    const i64 diag = r % p.rows + 1;
    const int visible = p.causal && diag < p.cols ? (int)diag : p.cols;
    float m = BASELINE_NEG_INF, l = 0.f;
    for (int j = threadIdx.x; j < visible; j += BASELINE_THREADS) {
      const float x = s[j];
      if (x > m) {
        l = l * expf(m - x) + 1.f;
        m = x;
      } else {
        l += expf(x - m);
      }
    }
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) {
      const float m2 = __shfl_xor_sync(0xffffffffu, m, o), l2 = __shfl_xor_sync(0xffffffffu, l, o);
      online_merge(m, l, m2, l2);
    }
    __syncthreads();  // the previous row's readers of pm/pl are done
    if ((threadIdx.x & 31) == 0) {
      pm[threadIdx.x >> 5] = m;
      pl[threadIdx.x >> 5] = l;
    }
    __syncthreads();
    m = BASELINE_NEG_INF;
    l = 0.f;
#pragma unroll
    for (int w = 0; w < BASELINE_WARPS; ++w) online_merge(m, l, pm[w], pl[w]);
    const float inv = 1.f / l;
    for (int j = threadIdx.x; j < p.cols; j += BASELINE_THREADS)
      dst[j] = from_f32<T>(j < visible ? expf(s[j] - m) * inv : 0.f);
  }
}

// ---------------------------------------------------------------------------------------------
// cosFormer (SPEC §2)

// Explicit features: dst T[bh][r][0..D) = f(x)·sin θ_r, dst[bh][r][D..2D) = f(x)·cos θ_r with
// f = ReLU (or identity), θ_r = (π/2)·(r+1)/M, for src T [bh][rows][cols = D].
// Grid: one thread per input element, grid-stride. Traffic: reads src once, writes 2× its size.
template <typename T>
__device__ void cosformer_features(const BaselineParams& p) {
  const i64 slice = (i64)p.rows * p.cols;
  for (i64 i = global_thread(); i < p.count; i += grid_threads()) {
    const i64 bh = i / slice, r = (i % slice) / p.cols, c = i % p.cols;
    float x = to_f32(in<T>(p.src)[i]);
    if (p.relu) x = fmaxf(x, 0.f);
    const float theta = 1.57079632679489662f * ((float)(r + 1) / (float)p.angle_m);
    float sn, cs;
    sincosf(theta, &sn, &cs);
    T* row = out<T>(p.dst) + (bh * p.rows + r) * (2 * (i64)p.cols);
    row[c] = from_f32<T>(x * sn);
    row[p.cols + c] = from_f32<T>(x * cs);
  }
}

// Non-causal output: dst T[bh][i][e] = num[bh][i][e] / max(qf_i · z, eps), with num = src fp32
// [bh][rows][cols = Dv], qf = src2 T [bh][rows][inner = 2D], z = aux fp32 [bh][inner].
// Grid: one warp per row, grid-stride. Traffic: reads num, qf once and z from cache; writes O once.
template <typename T>
__device__ void cosformer_divide(const BaselineParams& p) {
  const i64 total = (i64)p.bh * p.rows;
  const int lane = threadIdx.x & 31;
  const i64 warps = grid_threads() / 32;
  for (i64 r = global_thread() / 32; r < total; r += warps) {
    const i64 bh = r / p.rows;
    const T* qf = in<T>(p.src2) + r * p.inner;
    const float* z = in<float>(p.aux) + bh * p.inner;
    float den = 0.f;
    for (int c = lane; c < p.inner; c += 32) den = fmaf(to_f32(qf[c]), z[c], den);
    const float inv = 1.f / fmaxf(warp_sum(den), p.eps);
    const float* num = in<float>(p.src) + r * p.cols;
    T* o = out<T>(p.dst) + r * p.cols;
    for (int e = lane; e < p.cols; e += 32) o[e] = from_f32<T>(num[e] * inv);
  }
}

// Causal weights: dst T[bh][i][j] = w_ij / max(Σ_{j'≤i} w_ij', eps) for j ≤ i, else 0, with
// w = src fp32 [bh][rows][rows] (the GEMM qf·kfᵀ, already cos-reweighted by the features).
// Grid: one CTA per row, grid-stride. Traffic: reads each visible weight twice, writes P once.
template <typename T>
__device__ void cosformer_causal_rows(const BaselineParams& p) {
  const i64 total = (i64)p.bh * p.rows;
  for (i64 r = blockIdx.x; r < total; r += gridDim.x) {
    const float* w = in<float>(p.src) + r * p.rows;
    T* dst = out<T>(p.dst) + r * p.rows;
    const int visible = (int)(r % p.rows) + 1;
    float s = 0.f;
    for (int j = threadIdx.x; j < visible; j += BASELINE_THREADS) s += w[j];
    const float inv = 1.f / fmaxf(block_sum(s), p.eps);
    for (int j = threadIdx.x; j < p.rows; j += BASELINE_THREADS)
      dst[j] = from_f32<T>(j < visible ? w[j] * inv : 0.f);
  }
}

// ---------------------------------------------------------------------------------------------
// SOFT (SPEC §1)

// AvgPool1d landmarks (§1.2): dst L[bh][j][c] = mean of src fp32 [bh][rows][cols = D] over rows
// floor(j·N/m) .. floor((j+1)·N/m), m = out_rows.
// Grid: one CTA per (bh, j), grid-stride; threads stride over the columns. Traffic: reads src once.
__device__ void soft_pool1d(const BaselineParams& p) {
  const i64 total = (i64)p.bh * p.out_rows;
  for (i64 o = blockIdx.x; o < total; o += gridDim.x) {
    const i64 bh = o / p.out_rows, j = o % p.out_rows;
    const i64 lo = j * p.rows / p.out_rows, hi = (j + 1) * p.rows / p.out_rows;
    const float* x = in<float>(p.src) + bh * p.rows * (i64)p.cols;
    for (int c = threadIdx.x; c < p.cols; c += BASELINE_THREADS) {
      float s = 0.f;
      for (i64 r = lo; r < hi; ++r) s += x[r * p.cols + c];
      out<float>(p.dst)[o * p.cols + c] = s / (float)(hi - lo);
    }
  }
}

// AvgPool2d landmarks (§1.2): dst L[bh][j][c] = mean of src fp32 [bh][rows = h·w][cols = D] over
// the j-th non-overlapping grid_r × grid_r window of the row-major grid_h × grid_w token grid.
// Grid: one CTA per (bh, j), grid-stride; threads stride over the columns. Traffic: reads src once.
__device__ void soft_pool2d(const BaselineParams& p) {
  const i64 total = (i64)p.bh * p.out_rows;
  const int gw = p.grid_w / p.grid_r, rr = p.grid_r;
  for (i64 o = blockIdx.x; o < total; o += gridDim.x) {
    const i64 bh = o / p.out_rows;
    const int j = (int)(o % p.out_rows), a = j / gw, b = j % gw;
    const float* x = in<float>(p.src) + bh * p.rows * (i64)p.cols;
    for (int c = threadIdx.x; c < p.cols; c += BASELINE_THREADS) {
      float s = 0.f;
      for (int i = 0; i < rr * rr; ++i) {
        const i64 row = (i64)(a * rr + i / rr) * p.grid_w + b * rr + i % rr;
        s += x[row * p.cols + c];
      }
      out<float>(p.dst)[o * p.cols + c] = s / (float)(rr * rr);
    }
  }
}

// Gaussian kernel from GEMM dot products (§1.3), in place: src fp32 [bh][rows][cols] holds x·l;
// it becomes exp(−½ max(‖x_r‖² + ‖l_c‖² − 2x·l, 0)) with aux [bh·rows], aux2 [bh·cols] the norms.
// Grid: one thread per element, grid-stride. Traffic: reads and writes the matrix once.
__device__ void soft_gaussian(const BaselineParams& p) {
  const i64 slice = (i64)p.rows * p.cols;
  float* g = out<float>(p.src);
  for (i64 i = global_thread(); i < p.count; i += grid_threads()) {
    const i64 bh = i / slice, r = (i % slice) / p.cols, c = i % p.cols;
    const float d2 = in<float>(p.aux)[bh * p.rows + r] + in<float>(p.aux2)[bh * p.cols + c] - 2.f * g[i];
    g[i] = expf(-0.5f * fmaxf(d2, 0.f));
  }
}

// Landmark Gram matrix (§1.3 A): dst fp32 [bh][m][m] = exp(−½ Σ_c (l_i − l_j)²) from src fp32
// L [bh][rows = m][inner = D], summed as squared differences (m×m is small; no cancellation).
// Grid: one thread per (bh, i, j), grid-stride. Traffic: reads L from cache, writes A once.
__device__ void soft_gram(const BaselineParams& p) {
  const i64 mm = (i64)p.rows * p.rows;
  for (i64 idx = global_thread(); idx < p.count; idx += grid_threads()) {
    const i64 bh = idx / mm, i = (idx % mm) / p.rows, j = idx % p.rows;
    const float* li = in<float>(p.src) + (bh * p.rows + i) * p.inner;
    const float* lj = in<float>(p.src) + (bh * p.rows + j) * p.inner;
    float d2 = 0.f;
    for (int c = 0; c < p.inner; ++c) {
      const float t = li[c] - lj[c];
      d2 = fmaf(t, t, d2);
    }
    out<float>(p.dst)[idx] = expf(-0.5f * d2);
  }
}

// Newton init (§1.4) in the augmented form that makes each step of the cuBLAS loop two plain
// GEMMs (40 launches for T = 20, none to refill 2I): Y = [−Â | 2I]·[Z; I] = 2I − Â·Z, then
// Z' = Z·Y. src fp32 [bh][m][m] = A (m = rows); writes dst [bh][m][2m] = [−Â | 2I] with
// Â = A + λI, dst2 [bh][2m][m] = [αÂ; I] (Z₀ above I) and the lower I of aux [bh][2m][m] (its
// upper half takes the next Z); α = c·2/(max row sum of A)². Grid: one CTA per slice
// (grid-stride). Traffic: reads A twice, writes 6·m² floats per slice.
__device__ void newton_init(const BaselineParams& p) {
  const int m = p.rows;
  const i64 mm = (i64)m * m;
  for (i64 bh = blockIdx.x; bh < p.bh; bh += gridDim.x) {
    const float* a = in<float>(p.src) + bh * mm;
    float mx = BASELINE_NEG_INF;
    for (int i = threadIdx.x; i < m; i += BASELINE_THREADS) {
      float s = 0.f;
      for (int j = 0; j < m; ++j) s += a[(i64)i * m + j];
      mx = fmaxf(mx, s);
    }
    mx = block_max(mx);
    const float alpha = p.alpha_scale * 2.f / (mx * mx);
    float* aug = out<float>(p.dst) + bh * 2 * mm;
    float* z0 = out<float>(p.dst2) + bh * 2 * mm;
    float* z1 = out<float>(p.aux) + bh * 2 * mm;
    for (i64 e = threadIdx.x; e < mm; e += BASELINE_THREADS) {
      const i64 i = e / m, j = e % m;
      const float x = a[e] + (i == j ? p.ridge : 0.f), eye = i == j ? 1.f : 0.f;
      aug[i * 2 * m + j] = -x;
      aug[i * 2 * m + m + j] = 2.f * eye;
      z0[e] = alpha * x;
      z0[mm + e] = eye;
      z1[mm + e] = eye;
    }
  }
}

// ---------------------------------------------------------------------------------------------
// AFT (SPEC §3)

// Dense w_tt' (rows = T): FULL reads src [T][T]; LOCAL the band src [T][2s−1], 0 outside it.
template <bool LOCAL>
__device__ __forceinline__ float aft_bias(const BaselineParams& p, i64 t, i64 tp) {
  if (!LOCAL) return in<float>(p.src)[t * p.rows + tp];
  const i64 s = p.window;
  return (tp + s > t && tp < t + s) ? in<float>(p.src)[t * (2 * s - 1) + tp - t + s - 1] : 0.f;
}

// Dense bias weights, shared by every (b,h) and channel: dst fp32 [T][T] = exp(w_tt' − max_t')
// over the visible keys (t' ≤ t when causal; masked entries 0), w from aft_bias (s = window).
// Grid: one CTA per row t, grid-stride; threads stride over t'. Traffic: reads the row twice.
template <bool LOCAL>
__device__ void aft_wexp(const BaselineParams& p) {
  for (i64 t = blockIdx.x; t < p.rows; t += gridDim.x) {
    const i64 visible = p.causal ? t + 1 : p.rows;
    float mx = BASELINE_NEG_INF;
    for (i64 tp = threadIdx.x; tp < visible; tp += BASELINE_THREADS) mx = fmaxf(mx, aft_bias<LOCAL>(p, t, tp));
    mx = block_max(mx);
    float* row = out<float>(p.dst) + t * p.rows;
    for (i64 tp = threadIdx.x; tp < p.rows; tp += BASELINE_THREADS)
      row[tp] = tp < visible ? expf(aft_bias<LOCAL>(p, t, tp) - mx) : 0.f;
  }
}

// Exponentiated keys: dst fp32 [T][bh][2D] = [E⊙V | E] with E = exp(K − colmax), K = src,
// V = src2 (T [bh][T][D]), colmax = aux fp32 [bh][D]. Token-major, so that one GEMM
// [T×T]·[T × bh·2D] serves every (b,h). Grid: one thread per element of K, grid-stride.
// Traffic: reads K, V once, writes 8 bytes per element.
template <typename T>
__device__ void aft_expkv(const BaselineParams& p) {
  const i64 slice = (i64)p.rows * p.cols;
  for (i64 i = global_thread(); i < p.count; i += grid_threads()) {
    const i64 bh = i / slice, t = (i % slice) / p.cols, c = i % p.cols;
    const float e = expf(to_f32(in<T>(p.src)[i]) - in<float>(p.aux)[bh * p.cols + c]);
    float* row = out<float>(p.dst) + (t * p.bh + bh) * (2 * (i64)p.cols);
    row[c] = e * to_f32(in<T>(p.src2)[i]);
    row[p.cols + c] = e;
  }
}

// Output gate: dst T[bh][t][c] = σ(Q) · num / den with Q = src T [bh][T][D] and [num | den] =
// src2 fp32 [T][bh][2D] (the GEMM result). Grid: one thread per output element, grid-stride.
// Traffic: reads Q once and 8 bytes of the product per element, writes O once.
template <typename T>
__device__ void aft_gate(const BaselineParams& p) {
  const i64 slice = (i64)p.rows * p.cols;
  for (i64 i = global_thread(); i < p.count; i += grid_threads()) {
    const i64 bh = i / slice, t = (i % slice) / p.cols, c = i % p.cols;
    const float* nd = in<float>(p.src2) + (t * p.bh + bh) * (2 * (i64)p.cols);
    const float gate = 1.f / (1.f + expf(-to_f32(in<T>(p.src)[i])));
    out<T>(p.dst)[i] = from_f32<T>(gate * nd[c] / nd[p.cols + c]);
  }
}

// ---------------------------------------------------------------------------------------------
// Entry points: baseline_<step>_<dtype>.

#define BASELINE_KERNEL(NAME, BODY)                                                              \
  extern "C" __global__ void __launch_bounds__(BASELINE_THREADS)                               \
      baseline_##NAME(const __grid_constant__ BaselineParams p) {                              \
    BODY;                                                                                      \
  }

#define BASELINE_DTYPE(T, S)                                                                   \
  BASELINE_KERNEL(colreduce_l1_##S, (colreduce<T, BASELINE_OP_L1>(p)))                         \
  BASELINE_KERNEL(colreduce_sum_##S, (colreduce<T, BASELINE_OP_SUM>(p)))                       \
  BASELINE_KERNEL(colreduce_max_##S, (colreduce<T, BASELINE_OP_MAX>(p)))                       \
  BASELINE_KERNEL(colscale_##S, colscale<T>(p))                                                \
  BASELINE_KERNEL(to_f32_##S, to_f32_scaled<T>(p))                                             \
  BASELINE_KERNEL(from_f32_##S, from_f32_copy<T>(p))                                           \
  BASELINE_KERNEL(softmax_rows_##S, softmax_rows<T>(p))                                        \
  BASELINE_KERNEL(cosformer_features_##S, cosformer_features<T>(p))                            \
  BASELINE_KERNEL(cosformer_divide_##S, cosformer_divide<T>(p))                                \
  BASELINE_KERNEL(cosformer_causal_rows_##S, cosformer_causal_rows<T>(p))                      \
  BASELINE_KERNEL(aft_expkv_##S, aft_expkv<T>(p))                                              \
  BASELINE_KERNEL(aft_gate_##S, aft_gate<T>(p))

BASELINE_DTYPE(f16, f16)
BASELINE_DTYPE(bf16, bf16)
BASELINE_DTYPE(float, f32)

BASELINE_KERNEL(colfinal_l1_f32, colfinal<BASELINE_OP_L1>(p))
BASELINE_KERNEL(colfinal_sum_f32, colfinal<BASELINE_OP_SUM>(p))
BASELINE_KERNEL(colfinal_max_f32, colfinal<BASELINE_OP_MAX>(p))
BASELINE_KERNEL(rownorm2_f32, rownorm2(p))
BASELINE_KERNEL(soft_pool1d_f32, soft_pool1d(p))
BASELINE_KERNEL(soft_pool2d_f32, soft_pool2d(p))
BASELINE_KERNEL(soft_gaussian_f32, soft_gaussian(p))
BASELINE_KERNEL(soft_gram_f32, soft_gram(p))
BASELINE_KERNEL(newton_init_f32, newton_init(p))
BASELINE_KERNEL(aft_wexp_full_f32, aft_wexp<false>(p))
BASELINE_KERNEL(aft_wexp_local_f32, aft_wexp<true>(p))
