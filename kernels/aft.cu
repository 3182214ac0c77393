// AFT — attention free transformer (SPEC §3), fp32 kernels. Per channel c,
//   Y_t = σ(Q_t) · Σ_{t'} exp(K_{t'} + w_{t,t'}) V_{t'} / Σ_{t'} exp(K_{t'} + w_{t,t'}).
// Launches (every variant, causal or not, but AFT-simple):
//   aft_chunk   per (chunk of 64 rows, bh, channel tile): max of K and Σ e·V, Σ e with e = exp(K − max)
//   aft_scan    per (channel group, bh): statistics of every prefix [0, i) and suffix [i, end) of chunks
//   aft_simple_reduce, aft_simple_map  AFT-simple non-causal: totals of the whole sequence, then
//               Y = σ(Q) · a/z, two persistent streaming passes (aft_simple.cuh)
//   aft_simple_causal  AFT-simple causal, alone in one launch (a single-pass scan with a
//               deterministic look-back, aft_simple_causal.cuh)
//   aft_rowmax  AFT-full, f32 storage: max of each row of w (shared by every slice; the 16-bit
//               GEMM keeps running maxima instead)
//   aft_window  everything else: per 64-row tile, the keys whose weight is not the same for every
//               row of the tile (the band, the causal diagonal, all keys for full) as a dense
//               weight block × [E⊙V | E] product, plus the prefix/suffix statistics outside it.
//               f32 storage: aft_window (CUDA cores); f16/bf16: aft_window_tc (16-bit tensor
//               cores, aft_tc.cuh), sharing the helpers below.
//   aft_full_b, aft_full_tc   AFT-full with f16/bf16 storage (causal or not) instead of aft_window_tc:
//               one GEMM over every slice (aft_full_tc.cuh). For the tensor-core kernels the chunk
//               pass also records max |V| per chunk (vmax): f16's operand scale.
// Stability: E = exp(K − M_c) with M_c the channel max over the keys a tile can see, the weight of
// row t is exp(w − r_t) with r_t its row max (≥ 0 for local/conv, whose far keys have w = 0), so
// nothing exceeds 1. When a denominator still falls below AFT_DEN_MIN (K and w peaking at
// different keys) that output is recomputed directly with the joint max of K + w.
#include "aft.cuh"

static_assert(sizeof(AftParams) == AFT_PARAMS_SIZE, "AftParams layout changed: update Rust");

#define AFT_NEG_INF __int_as_float(0xff800000)
// Below this (relative to the shifts) a denominator may have lost terms to underflow: with every
// term ≤ 1 and underflow below 2^-126, at most T·2^-126 is missing, ≤ 2^-25 relative for T ≤ 2^21.
#define AFT_DEN_MIN 8.27180613e-25f  // 2^-80

struct AftStat {
  float m, a, z;
};

// (m, a, z) of the union of two disjoint key sets, in a fixed order. An empty side has m = −inf
// and contributes exp(−inf) = 0; NaN in a or z propagates.
__device__ __forceinline__ AftStat aft_combine(AftStat x, AftStat y) {
  const float m = fmaxf(x.m, y.m);
  if (m == AFT_NEG_INF) return {m, x.a + y.a, x.z + y.z};
  const float sx = expf(x.m - m), sy = expf(y.m - m);
  return {m, fmaf(x.a, sx, y.a * sy), fmaf(x.z, sx, y.z * sy)};
}

__device__ __forceinline__ AftStat aft_load(const float* base, int d, int c) {
  return {base[c], base[d + c], base[2 * d + c]};
}
__device__ __forceinline__ void aft_store(float* base, int d, int c, AftStat s) {
  base[c] = s.m;
  base[d + c] = s.a;
  base[2 * d + c] = s.z;
}

__device__ __forceinline__ bool aft_finite(float x) {
  return (__float_as_uint(x) & 0x7f800000u) != 0x7f800000u;
}

__device__ __forceinline__ float aft_sigmoid(float x) { return 1.f / (1.f + expf(-x)); }

// exp(x − m) for a shift m fixed over many x. f32 storage keeps expf (its 1e-5 tolerance);
// 16-bit storage takes one FFMA + MUFU (ex2_fast, ≤ 2 ulp) instead of expf's ~12 issue slots.
// −m·log2(e) is rounded once per shift: a factor common to every term of a sum, so it cancels
// in num/den. Same non-finite results as expf(x − m) (m = −inf with x = −inf gives NaN).
// The 16-bit form also takes log2 of an operand scale folded into the exponent (exp(x − m)·2^l2s).
template <typename T> struct AftExp {
  float ml;
  __device__ __forceinline__ explicit AftExp(float m, float l2s = 0.f) : ml(fmaf(-m, LOG2E_F, l2s)) {}
  __device__ __forceinline__ float operator()(float x) const { return ex2_fast(fmaf(x, LOG2E_F, ml)); }
};
template <> struct AftExp<float> {
  float m;
  __device__ __forceinline__ explicit AftExp(float m_) : m(m_) {}
  __device__ __forceinline__ float operator()(float x) const { return expf(x - m); }
};

// σ(x): exact for f32 storage; for 16-bit storage ex2 and an approximate reciprocal (≤ 2 ulp;
// x → −∞ gives 1/inf = 0, NaN stays NaN).
template <typename T> __device__ __forceinline__ float aft_sigmoid_t(float x) {
  return __fdividef(1.f, 1.f + ex2_fast(-x * LOG2E_F));
}
template <> __device__ __forceinline__ float aft_sigmoid_t<float>(float x) { return aft_sigmoid(x); }

// Statistics array `arr` ([bh][n][3][d]) at (bh, i).
__device__ __forceinline__ float* aft_stats(u64 arr, int bh, int n, int i, int d) {
  return reinterpret_cast<float*>(arr) + ((i64)bh * n + i) * 3 * d;
}

// max |V| of chunk i of slice bh (i = chunks: of the whole sequence), per channel.
__device__ __forceinline__ float* aft_vmax(const AftParams& p, int bh, int i) {
  return reinterpret_cast<float*>(p.vmax) + ((i64)bh * (p.chunks + 1) + i) * p.d;
}

// w_{t,t'} of head h for t' inside the row's window (the caller masks causal t' > t).
__device__ __forceinline__ float aft_bias(const AftParams& p, int h, int t, int tp) {
  const float* w = reinterpret_cast<const float*>(p.w);
  switch (p.variant) {
    case AFT_LOCAL:
    case AFT_CONV: {
      const int s = p.window;
      const int j = tp - t;  // |j| < s is the band
      if (j <= -s || j >= s) return 0.f;
      const i64 row = p.variant == AFT_LOCAL ? (i64)t : (i64)h;
      return w[row * (2 * (i64)s - 1) + (j + s - 1)];
    }
    case AFT_FULL:
      return w[(i64)t * p.t + tp];
    default:
      return 0.f;
  }
}

// Rows i < n of N of a channel pair (channels c, c + 1 at p + i·step) as fp32 x0[i], x1[i] (rows
// ≥ n untouched): one 4-byte (16-bit T) or 8-byte (f32) load per row when `pair`, else one load per
// existing channel (0 for a missing one). Every row's load is issued before any conversion (16-bit
// values stay packed until all are in flight): converting each row as it loads made every row wait
// a DRAM round trip before the next one's load issued.
template <typename T, int N>
__device__ __forceinline__ void aft_load_rows(const T* p, i64 step, int n, bool pair, bool ok0, bool ok1,
                                              float (&x0)[N], float (&x1)[N]) {
  if (pair) {
    if constexpr (sizeof(T) == 2) {
      u32 raw[N];
#pragma unroll
      for (int i = 0; i < N; ++i)
        if (i < n) raw[i] = *reinterpret_cast<const u32*>(p + i * step);
#pragma unroll
      for (int i = 0; i < N; ++i)
        if (i < n) unpack2<T>(raw[i], x0[i], x1[i]);
    } else {
#pragma unroll
      for (int i = 0; i < N; ++i)
        if (i < n) {
          const float2 w = *reinterpret_cast<const float2*>(p + i * step);
          x0[i] = to_f32(w.x);
          x1[i] = to_f32(w.y);
        }
    }
  } else if constexpr (sizeof(T) == 2) {
    T r0[N], r1[N];
#pragma unroll
    for (int i = 0; i < N; ++i)
      if (i < n) {
        if (ok0) r0[i] = p[i * step];
        if (ok1) r1[i] = p[i * step + 1];
      }
#pragma unroll
    for (int i = 0; i < N; ++i)
      if (i < n) {
        x0[i] = ok0 ? to_f32(r0[i]) : 0.f;
        x1[i] = ok1 ? to_f32(r1[i]) : 0.f;
      }
  } else {  // f32: nothing to convert, so nothing waits on a load
#pragma unroll
    for (int i = 0; i < N; ++i)
      if (i < n) {
        x0[i] = ok0 ? p[i * step] : 0.f;
        x1[i] = ok1 ? p[i * step + 1] : 0.f;
      }
  }
}

// (m, Σ exp(K − m)·V, Σ exp(K − m)) of N keys k with values v and max m (padding keys −inf):
// m = −inf (no finite key) keeps a NaN key's NaN in a and z.
template <typename T, int N>
__device__ __forceinline__ AftStat aft_stat_of(float m, const float (&k)[N], const float (&v)[N]) {
  AftStat s = {m, 0.f, 0.f};
  if (m != AFT_NEG_INF) {
    const AftExp<T> ex(m);
#pragma unroll
    for (int i = 0; i < N; ++i) {
      if (k[i] == AFT_NEG_INF) continue;  // a padding row (or a key of −inf: weight 0)
      const float e = ex(k[i]);
      s.a = fmaf(e, v[i], s.a);
      s.z += e;
    }
  } else {
#pragma unroll
    for (int i = 0; i < N; ++i)  // only NaN (or no) keys: keep the NaN
      if (k[i] != k[i]) s.a = s.z = k[i];
  }
  return s;
}

// A chunk-pass CTA's (chunk, bh, channel tile). Grid (chunks, bh, ctiles). With p.strip = L > 0
// the CTAs take the chunks in the reverse of the window pass's progress: its CTAs walk strips of
// L tiles (AFT_CHUNK rows each) in step, tile 0 of every strip first (L = chunks: one strip,
// tile by tile), so the chunk pass goes by offset within a strip descending, every strip and
// slice of one offset together (strip_desc). The K, V it reads last, ≈ L2's size of them, are
// what the window pass reads first (the seam of bench/NOTES.md). Grid order when
// the grid strides over bh or has ≥ 2^32 CTAs.
struct AftChunkBlock {
  int chunk, bh, ct;
};
__device__ __forceinline__ AftChunkBlock aft_chunk_block(const AftParams& p) {
  const u32 slices = gridDim.y * gridDim.z;
  if (p.strip <= 0 || (int)gridDim.y != p.b * p.h || (u64)gridDim.x * slices > 0xffffffffull)
    return {(int)blockIdx.x, (int)blockIdx.y, (int)blockIdx.z};
  const u32 l = blockIdx.x + gridDim.x * (blockIdx.y + gridDim.y * blockIdx.z);
  const u32 g = l / slices, sx = l % slices;
  return {(int)strip_desc(g, gridDim.x, p.strip), (int)(sx % gridDim.y), (int)(sx / gridDim.y)};
}

// Chunk pass: part[bh][chunk] = (max K, Σ exp(K − max)·V, Σ exp(K − max)) per channel.
// Grid: x = chunk, y = bh (grid-stride), z = channel tile, in aft_chunk_block's order; 8 row
// lanes × 32 channel pairs per CTA: a thread takes rows ty + 8i of channels 2tx, 2tx + 1 (one
// 4-byte load of each pair when aligned), then the 8 lanes are combined in lane order
// (deterministic).
// Traffic: K and V read once; 3 floats per channel per chunk written.
template <typename T>
__device__ void aft_chunk(const AftParams& p) {
  constexpr int PAIRS = AFT_CT / 2, LANES = AFT_THREADS / PAIRS, PER = AFT_CHUNK / LANES;
  __shared__ AftStat red[LANES][AFT_CT];
  __shared__ float vred[LANES][AFT_CT];
  const int tx = threadIdx.x % PAIRS, ty = threadIdx.x / PAIRS;
  const AftChunkBlock blk = aft_chunk_block(p);
  const int c0 = blk.ct * AFT_CT, c = c0 + 2 * tx;  // the tile's and the thread's first channel
  const bool ok0 = c < p.d, ok1 = c + 1 < p.d;
  const int row0 = blk.chunk * AFT_CHUNK + ty;
  const int rows = ok0 ? min(PER, div_up(p.t - row0, LANES)) : 0;  // this thread's valid rows
  for (int bh = blk.bh; bh < p.b * p.h; bh += gridDim.y) {
    const int b = bh / p.h, h = bh % p.h;
    const T* k = reinterpret_cast<const T*>(p.k) + b * p.k_sb + h * p.k_sh + (i64)row0 * p.k_sn + c;
    const T* v = reinterpret_cast<const T*>(p.v) + b * p.v_sb + h * p.v_sh + (i64)row0 * p.v_sn + c;
    const bool pair = ok1 && ((reinterpret_cast<u64>(k) | reinterpret_cast<u64>(v)) % (2 * sizeof(T))) == 0 &&
                      ((p.k_sn | p.v_sn) & 1) == 0;
    float kx[2][PER], vx[2][PER];
    float m[2] = {AFT_NEG_INF, AFT_NEG_INF}, vm[2] = {0.f, 0.f};
#pragma unroll
    for (int i = 0; i < PER; ++i) {
      kx[0][i] = kx[1][i] = AFT_NEG_INF;
      vx[0][i] = vx[1][i] = 0.f;
    }
    aft_load_rows<T, PER>(k, LANES * p.k_sn, rows, pair, ok0, ok1, kx[0], kx[1]);
    aft_load_rows<T, PER>(v, LANES * p.v_sn, rows, pair, ok0, ok1, vx[0], vx[1]);
#pragma unroll
    for (int i = 0; i < PER; ++i) {
      if (!ok1) kx[1][i] = AFT_NEG_INF;  // no channel c + 1: an empty one
#pragma unroll
      for (int x = 0; x < 2; ++x) {
        m[x] = fmaxf(m[x], kx[x][i]);
        vm[x] = fmaxf(vm[x], fabsf(vx[x][i]));  // NaN is skipped: vmax only sets a scale
      }
    }
#pragma unroll
    for (int x = 0; x < 2; ++x) {
      red[ty][2 * tx + x] = aft_stat_of<T, PER>(m[x], kx[x], vx[x]);
      vred[ty][2 * tx + x] = vm[x];
    }
    __syncthreads();
    if (threadIdx.x < AFT_CT && c0 + (int)threadIdx.x < p.d) {
      const int cc = threadIdx.x;
      AftStat acc = red[0][cc];
      float vmax = vred[0][cc];
#pragma unroll 1  // (unrolled, ptxas spills 8 bytes in the bf16 sm_80 build)
      for (int l = 1; l < LANES; ++l) {
        acc = aft_combine(acc, red[l][cc]);
        vmax = fmaxf(vmax, vred[l][cc]);
      }
      aft_store(aft_stats(p.part, bh, p.chunks, blk.chunk, p.d), p.d, c0 + cc, acc);
      if (p.vmax) aft_vmax(p, bh, blk.chunk)[c0 + cc] = vmax;
    }
    __syncthreads();
  }
}

// Scan pass: pre[bh][i] = statistics of chunks [0, i), suf[bh][i] = of chunks [i, chunks)
// (suf only when p.suf != 0). Grid: x = group of 32 channels, y = bh (grid-stride); warp w owns a
// contiguous segment of chunks, segments are combined in a fixed order (deterministic). Each walk
// over a segment loads AFT_SCAN_BATCH chunks' statistics before it combines them in order: one L2
// round trip per batch, not per chunk (a segment is chunks / 8 long: 128 at T = 64k).
// Traffic: part read twice (segment totals, then the rescan), pre (and suf) written once.
#define AFT_SCAN_BATCH 8
// The statistics (and max |V|) of chunks [i, i + AFT_SCAN_BATCH) ∩ [i, last) of channel c.
struct AftBatch {
  AftStat s[AFT_SCAN_BATCH];
  float vm[AFT_SCAN_BATCH];
};
__device__ __forceinline__ AftBatch aft_scan_load(const AftParams& p, int bh, int c, int i, int last, bool vmax) {
  AftBatch b;
#pragma unroll
  for (int j = 0; j < AFT_SCAN_BATCH; ++j) {
    if (i + j < last) {
      b.s[j] = aft_load(aft_stats(p.part, bh, p.chunks, i + j, p.d), p.d, c);
      b.vm[j] = vmax ? aft_vmax(p, bh, i + j)[c] : 0.f;
    }
  }
  return b;
}

__device__ void aft_scan(const AftParams& p) {
  constexpr int B = AFT_SCAN_BATCH;
  __shared__ AftStat seg_tot[AFT_SEGS][32];
  __shared__ float seg_vmax[AFT_SEGS][32];
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  const int c = blockIdx.x * 32 + lane;
  const int seg = div_up(p.chunks, AFT_SEGS);
  const int first = min(p.chunks, warp * seg), last = min(p.chunks, first + seg);
  const AftStat empty = {AFT_NEG_INF, 0.f, 0.f};
  const bool vmax = p.vmax != 0;
  for (int bh = blockIdx.y; bh < p.b * p.h; bh += gridDim.y) {
    AftStat tot = empty;
    float vm = 0.f;
    if (c < p.d)
      for (int i = first; i < last; i += B) {
        const AftBatch b = aft_scan_load(p, bh, c, i, last, vmax);
#pragma unroll
        for (int j = 0; j < B; ++j)
          if (i + j < last) {
            tot = aft_combine(tot, b.s[j]);
            vm = fmaxf(vm, b.vm[j]);
          }
      }
    seg_tot[warp][lane] = tot;
    seg_vmax[warp][lane] = vm;
    __syncthreads();
    if (vmax && warp == 0 && c < p.d) {
#pragma unroll
      for (int w = 1; w < AFT_SEGS; ++w) vm = fmaxf(vm, seg_vmax[w][lane]);
      aft_vmax(p, bh, p.chunks)[c] = vm;
    }
    if (c < p.d) {
      AftStat cur = empty;
      for (int w = 0; w < warp; ++w) cur = aft_combine(cur, seg_tot[w][lane]);
      for (int i = first; i < last; i += B) {
        const AftBatch b = aft_scan_load(p, bh, c, i, last, false);
#pragma unroll
        for (int j = 0; j < B; ++j)
          if (i + j < last) {
            aft_store(aft_stats(p.pre, bh, p.chunks + 1, i + j, p.d), p.d, c, cur);
            cur = aft_combine(cur, b.s[j]);
          }
      }
      if (warp == AFT_SEGS - 1) aft_store(aft_stats(p.pre, bh, p.chunks + 1, p.chunks, p.d), p.d, c, cur);
      if (p.suf) {
        cur = empty;
        for (int w = AFT_SEGS - 1; w > warp; --w) cur = aft_combine(seg_tot[w][lane], cur);
        if (warp == AFT_SEGS - 1) aft_store(aft_stats(p.suf, bh, p.chunks + 1, p.chunks, p.d), p.d, c, cur);
        // Backwards in batches: chunks [i − B + 1, i] (clipped at first), combined from the top.
        for (int i = last - 1; i >= first; i -= B) {
          const int lo = max(first, i - B + 1);
          const AftBatch b = aft_scan_load(p, bh, c, lo, i + 1, false);
#pragma unroll
          for (int j = B - 1; j >= 0; --j)
            if (lo + j <= i) {
              cur = aft_combine(b.s[j], cur);
              aft_store(aft_stats(p.suf, bh, p.chunks + 1, lo + j, p.d), p.d, c, cur);
            }
        }
      }
    }
    __syncthreads();
  }
}

// Stores y0, y1 at p, p + 1 (channel c + 1 only if ok1): one 4-byte (16-bit T) or 8-byte (f32)
// store when `pair`.
template <typename T> __device__ __forceinline__ void aft_store2(T* p, bool pair, bool ok1, float y0, float y1) {
  if (pair) {
    if constexpr (sizeof(T) == 2) {
      *reinterpret_cast<u32*>(p) = pack2<T>(y0, y1);
    } else {
      *reinterpret_cast<float2*>(p) = float2{y0, y1};
    }
  } else {
    p[0] = from_f32<T>(y0);
    if (ok1) p[1] = from_f32<T>(y1);
  }
}

// AFT-full: rmax[t] = max_{t'} w[t][t'] (causal: t' ≤ t). Grid: x = block of 8 rows; warp per row.
// Traffic: w read once.
__device__ void aft_rowmax(const AftParams& p) {
  const int lane = threadIdx.x % 32;
  const int t = blockIdx.x * (AFT_THREADS / 32) + threadIdx.x / 32;
  if (t >= p.t) return;
  const float* w = reinterpret_cast<const float*>(p.w) + (i64)t * p.t;
  const int len = p.causal ? t + 1 : p.t;
  float m = AFT_NEG_INF;
  for (int tp = lane; tp < len; tp += 32) m = fmaxf(m, w[tp]);
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) m = fmaxf(m, __shfl_xor_sync(0xffffffffu, m, o));
  if (lane == 0) reinterpret_cast<float*>(p.rmax)[t] = m;
}

// The output (t, c) directly: joint max of K + w over the keys row t sees, then the two sums.
// Used only where the shifted denominator underflowed. Traffic: a column of K and V (and a row
// of w) per call.
template <typename T>
__device__ __noinline__ float aft_exact(const AftParams& p, const T* k, const T* v, int h, int t, int c) {
  const int len = p.causal ? t + 1 : p.t;
  float m = AFT_NEG_INF;
  for (int tp = 0; tp < len; ++tp) m = fmaxf(m, to_f32(k[(i64)tp * p.k_sn + c]) + aft_bias(p, h, t, tp));
  float num = 0.f, den = 0.f;
  for (int tp = 0; tp < len; ++tp) {
    const float e = expf(to_f32(k[(i64)tp * p.k_sn + c]) + aft_bias(p, h, t, tp) - m);
    num = fmaf(e, to_f32(v[(i64)tp * p.v_sn + c]), num);
    den += e;
  }
  return num / den;
}

// The keys that the dense block of the tile of rows [t0, t0 + AFT_CHUNK) covers, [lo, hi), and
// the chunk indices of the statistics outside it: pre[ip] covers [0, lo), suf[is] covers [hi, t)
// (is < 0: none). Every key of the window is multiplied against every row of the tile, so per
// row the work is the window (3 chunks for a 64-row local tile with s = 64, 4 for 128 rows):
// small tiles are cheaper.
struct AftWindow {
  int lo, hi, ip, is;
};

__device__ __forceinline__ AftWindow aft_window_of(const AftParams& p, int t0) {
  const int end = min(p.t, t0 + AFT_CHUNK);  // causal keys stop at the tile's last row
  switch (p.variant) {
    case AFT_LOCAL:
    case AFT_CONV: {
      const i64 s = min(p.window, p.t);  // a window beyond T covers everything
      const int lo_chunk = (int)(max((i64)0, (i64)t0 - s + 1) / AFT_CHUNK);
      if (p.causal) return {lo_chunk * AFT_CHUNK, end, lo_chunk, -1};
      // Last band key of the tile's last row is t0 + 63 + s − 1: round up to a chunk boundary.
      const int hi_chunk = (int)min((i64)p.chunks, ((i64)t0 + AFT_CHUNK + s - 1 + AFT_CHUNK - 1) / AFT_CHUNK);
      return {lo_chunk * AFT_CHUNK, min(p.t, hi_chunk * AFT_CHUNK), lo_chunk, hi_chunk};
    }
    case AFT_FULL:
      return {0, p.causal ? end : p.t, -1, -1};
    default:  // simple, causal: the tile's own rows; everything before is pre[t0 / AFT_CHUNK]
      return {t0, end, t0 / AFT_CHUNK, -1};
  }
}

// The (b,h) slice of window-kernel slice index sx (bh × channel tile) and its first channel.
template <typename T> struct AftSlice {
  int bh, h, c0;
  const T *q, *k, *v;
  T* o;
};
template <typename T> __device__ __forceinline__ AftSlice<T> aft_slice(const AftParams& p, int sx) {
  const int ctiles = div_up(p.d, AFT_CT);
  const int bh = sx / ctiles, b = bh / p.h, h = bh % p.h;
  return {bh,
          h,
          (sx % ctiles) * AFT_CT,
          reinterpret_cast<const T*>(p.q) + b * p.q_sb + h * p.q_sh,
          reinterpret_cast<const T*>(p.k) + b * p.k_sb + h * p.k_sh,
          reinterpret_cast<const T*>(p.v) + b * p.v_sb + h * p.v_sh,
          reinterpret_cast<T*>(p.o) + b * p.o_sb + h * p.o_sh};
}

// Channel shifts M_c (msh: the max over every key the rows [t0, t0 + AFT_CHUNK) see) and row
// shifts r_t (rsh; gsh = exp(−r_t), the weight of keys outside a local/conv row's band) of one
// tile: full from rmax, local/conv over the row's band (≥ 0: far keys have w = 0), 0 otherwise.
// THREADS: the CTA's threads (AFT_CT at least). CH / ROWS: compute msh / rsh and gsh (the row
// shifts of AFT-local do not depend on the slice).
template <int THREADS, bool CH = true, bool ROWS = true>
__device__ void aft_tile_shifts(const AftParams& p, int bh, int h, int c0, int t0, float* msh, float* rsh,
                                float* gsh) {
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  const float* wp = reinterpret_cast<const float*>(p.w);
  const i64 band = 2 * (i64)p.window - 1;
  if (CH && threadIdx.x < AFT_CT && c0 + (int)threadIdx.x < p.d) {
    const int upto = p.causal ? min(t0 / AFT_CHUNK + 1, p.chunks) : p.chunks;
    msh[threadIdx.x] = aft_stats(p.pre, bh, p.chunks + 1, upto, p.d)[c0 + threadIdx.x];
  }
  if (!ROWS) return;
  constexpr int NW = THREADS / 32, RP = 4;  // warps; rows per pass, whose band loads overlap
  for (int i0 = warp; i0 < AFT_CHUNK; i0 += RP * NW) {
    float r[RP];
    const float* row[RP];  // w of row i at band index first − t + s − 1 (local, conv)
    int len[RP], lmax = 0;  // band keys of each row
#pragma unroll
    for (int u = 0; u < RP; ++u) {
      const int i = i0 + u * NW, t = t0 + i;
      r[u] = 0.f;
      len[u] = 0;
      row[u] = wp;
      if (i < AFT_CHUNK && t < p.t && p.variant == AFT_FULL) {
        r[u] = reinterpret_cast<const float*>(p.rmax)[t];
      } else if (i < AFT_CHUNK && t < p.t && (p.variant == AFT_LOCAL || p.variant == AFT_CONV)) {
        const int s = p.window;
        const int first = (int)max((i64)0, (i64)t - s + 1);
        const int last = p.causal ? t : (int)min((i64)p.t - 1, (i64)t + s - 1);
        row[u] = wp + (p.variant == AFT_LOCAL ? (i64)t : (i64)h) * band + ((i64)(first - t) + s - 1);
        len[u] = last - first + 1;
        lmax = max(lmax, len[u]);
      }
    }
    for (int off = lane; off < lmax; off += 32)  // max is order-free: same r as a row at a time
#pragma unroll
      for (int u = 0; u < RP; ++u)
        if (off < len[u]) r[u] = fmaxf(r[u], row[u][off]);
#pragma unroll
    for (int u = 0; u < RP; ++u) {
      const int i = i0 + u * NW;
#pragma unroll
      for (int o = 16; o > 0; o >>= 1) r[u] = fmaxf(r[u], __shfl_xor_sync(0xffffffffu, r[u], o));
      if (lane == 0 && i < AFT_CHUNK) {
        rsh[i] = r[u];
        gsh[i] = p.variant == AFT_FULL ? 0.f : expf(-r[u]);  // full has no keys outside [lo, hi)
      }
    }
  }
}

// (mc, a, z): the statistics of channel c over the keys outside [lo, hi) (pre and suf), shifted
// to the channel max mc.
__device__ __forceinline__ AftStat aft_outside(const AftParams& p, int bh, const AftWindow& win, int c, float mc) {
  float a = 0.f, z = 0.f;
  if (win.ip >= 0) {
    const AftStat s = aft_load(aft_stats(p.pre, bh, p.chunks + 1, win.ip, p.d), p.d, c);
    const float f = s.m == AFT_NEG_INF ? 0.f : expf(s.m - mc);
    a = s.a * f;
    z = s.z * f;
  }
  if (win.is >= 0) {
    const AftStat s = aft_load(aft_stats(p.suf, bh, p.chunks + 1, win.is, p.d), p.d, c);
    const float f = s.m == AFT_NEG_INF ? 0.f : expf(s.m - mc);
    a = fmaf(s.a, f, a);
    z = fmaf(s.z, f, z);
  }
  return {mc, a, z};
}

// E = exp(K − M_c) and E·V of key tp on channel c0 + cc (both 0 past hi and past d).
template <typename T>
__device__ __forceinline__ void aft_e_of(const AftParams& p, const T* k, const T* v, int tp, int hi, int c0, int cc,
                                         const float* msh, float& e, float& ev) {
  const int c = c0 + cc;
  e = ev = 0.f;
  if (tp < hi && c < p.d) {
    e = expf(to_f32(k[(i64)tp * p.k_sn + c]) - msh[cc]);
    ev = e * to_f32(v[(i64)tp * p.v_sn + c]);
  }
}

// The weight of key tp for row t0 + i: exp(w − r_t) in the band (every key for full), g_t
// outside it, 1 for simple; 0 past hi, past T and (causal) after the row.
__device__ __forceinline__ float aft_weight(const AftParams& p, int h, int t0, int i, int tp, int hi, const float* rsh,
                                            const float* gsh) {
  const int t = t0 + i;
  if (t >= p.t || tp >= hi || (p.causal && tp > t)) return 0.f;
  const float* wp = reinterpret_cast<const float*>(p.w);
  switch (p.variant) {
    case AFT_LOCAL:
    case AFT_CONV: {
      const int j = tp - t;
      if (j <= -p.window || j >= p.window) return gsh[i];
      const i64 row = p.variant == AFT_LOCAL ? (i64)t : (i64)h;
      return expf(wp[row * (2 * (i64)p.window - 1) + (j + p.window - 1)] - rsh[i]);
    }
    case AFT_FULL:
      return expf(wp[(i64)t * p.t + tp] - rsh[i]);
    default:
      return 1.f;
  }
}

// Stages es[r][cc] = E and evs[r][cc] = E·V of the keys kb + r (fp32, aft_window).
template <typename T, int LD, int THREADS>
__device__ __forceinline__ void aft_stage_e(const AftParams& p, const T* k, const T* v, int kb, int hi, int c0,
                                            const float* msh, float (*es)[LD], float (*evs)[LD]) {
  for (int idx = threadIdx.x; idx < AFT_KB * AFT_CT; idx += THREADS) {
    const int r = idx / AFT_CT, cc = idx % AFT_CT;
    aft_e_of<T>(p, k, v, kb + r, hi, c0, cc, msh, es[r][cc], evs[r][cc]);
  }
}

// Stages ws[i][r] = the weight of key kb + r for row t0 + i (fp32, aft_window).
template <int LD, int THREADS>
__device__ __forceinline__ void aft_stage_w(const AftParams& p, int h, int t0, int kb, int hi, const float* rsh,
                                            const float* gsh, float (*ws)[LD]) {
  for (int idx = threadIdx.x; idx < AFT_CHUNK * AFT_KB; idx += THREADS) {
    const int i = idx / AFT_KB, r = idx % AFT_KB;
    ws[i][r] = aft_weight(p, h, t0, i, kb + r, hi, rsh, gsh);
  }
}

// Window pass: for one 64-row tile of one (b,h) and 64 channels,
//   num = g_t·(pre + suf) + Σ_{t' in [lo,hi)} W_{t,t'} E_{t'}V_{t'},  den likewise with E,
// W_{t,t'} = exp(w_{t,t'} − r_t) in the band (all keys for full), g_t = exp(−r_t) outside it,
// 0 for causal t' > t; then Y = σ(Q)·num/den.
// Grid: x = bh × channel tile, y = row tile (grid-stride): tile-major, the slices of a tile
// together, so AFT-local's w [T, 2s−1] (shared by every slice, as large as a head's K, V) comes
// from DRAM about once, and the chunk pass ran in the reverse order (aft_chunk_block with
// p.strip = chunks); 256 threads, 4×4 outputs each.
// Traffic: Q read, Y written; K, V of [lo, hi) (the halo re-read from L2 by neighbours); the
// bias rows of the tile (local; from L2 for other slices), all of w's tile rows (full).
template <typename T>
__device__ void aft_window(const AftParams& p) {
  constexpr int RT = AFT_CHUNK / 16, CT = AFT_CT / 16;
  __shared__ float es[AFT_KB][AFT_CT + 1];
  __shared__ float evs[AFT_KB][AFT_CT + 1];
  __shared__ float ws[AFT_CHUNK][AFT_KB + 1];
  __shared__ float rsh[AFT_CHUNK], gsh[AFT_CHUNK], msh[AFT_CT];
  const AftSlice<T> sl = aft_slice<T>(p, blockIdx.x);
  const int bh = sl.bh, h = sl.h, c0 = sl.c0;
  const T *q = sl.q, *k = sl.k, *v = sl.v;
  T* o = sl.o;
  const int tr = threadIdx.x / 16, tc = threadIdx.x % 16;

  for (int tile = blockIdx.y; tile < p.chunks; tile += gridDim.y) {
    const int t0 = tile * AFT_CHUNK;
    const AftWindow win = aft_window_of(p, t0);
    __syncthreads();  // previous tile done with the shared arrays
    aft_tile_shifts<AFT_THREADS>(p, bh, h, c0, t0, msh, rsh, gsh);
    __syncthreads();

    // Accumulators start from the statistics outside [lo, hi), weighted g_t.
    float num[RT][CT], den[RT][CT];
#pragma unroll
    for (int j = 0; j < CT; ++j) {
      const int c = c0 + tc + 16 * j;
      const AftStat az = c < p.d ? aft_outside(p, bh, win, c, msh[tc + 16 * j]) : AftStat{0.f, 0.f, 0.f};
#pragma unroll
      for (int i = 0; i < RT; ++i) {
        const float g = gsh[tr + 16 * i];
        num[i][j] = g * az.a;
        den[i][j] = g * az.z;
      }
    }

    for (int kb = win.lo; kb < win.hi; kb += AFT_KB) {
      __syncthreads();  // previous block consumed
      aft_stage_e<T, AFT_CT + 1, AFT_THREADS>(p, k, v, kb, win.hi, c0, msh, es, evs);
      aft_stage_w<AFT_KB + 1, AFT_THREADS>(p, h, t0, kb, win.hi, rsh, gsh, ws);
      __syncthreads();
      // Causal blocks that reach past a row skip (not zero-weight) the keys after it, so a
      // non-finite later key cannot reach earlier rows through 0·NaN.
      if (p.causal && kb + AFT_KB - 1 > t0) {
        for (int r = 0; r < AFT_KB; ++r) {
#pragma unroll
          for (int i = 0; i < RT; ++i) {
            if (kb + r > t0 + tr + 16 * i) continue;
            const float wt = ws[tr + 16 * i][r];
#pragma unroll
            for (int j = 0; j < CT; ++j) {
              num[i][j] = fmaf(wt, evs[r][tc + 16 * j], num[i][j]);
              den[i][j] = fmaf(wt, es[r][tc + 16 * j], den[i][j]);
            }
          }
        }
      } else {
#pragma unroll 4
        for (int r = 0; r < AFT_KB; ++r) {
          float wt[RT], e[CT], ev[CT];
#pragma unroll
          for (int i = 0; i < RT; ++i) wt[i] = ws[tr + 16 * i][r];
#pragma unroll
          for (int j = 0; j < CT; ++j) {
            e[j] = es[r][tc + 16 * j];
            ev[j] = evs[r][tc + 16 * j];
          }
#pragma unroll
          for (int i = 0; i < RT; ++i)
#pragma unroll
            for (int j = 0; j < CT; ++j) {
              num[i][j] = fmaf(wt[i], ev[j], num[i][j]);
              den[i][j] = fmaf(wt[i], e[j], den[i][j]);
            }
        }
      }
    }

    // Outputs whose denominator underflowed are recomputed after the others, once the
    // accumulators are dead (keeps the call out of the unrolled epilogue: no spills).
    u32 slow = 0;
#pragma unroll
    for (int i = 0; i < RT; ++i) {
      const int t = t0 + tr + 16 * i;
#pragma unroll
      for (int j = 0; j < CT; ++j) {
        const int c = c0 + tc + 16 * j;
        if (t >= p.t || c >= p.d) continue;
        if (den[i][j] < AFT_DEN_MIN) {
          slow |= 1u << (i * CT + j);
          continue;
        }
        const float y = aft_sigmoid(to_f32(q[(i64)t * p.q_sn + c])) * (num[i][j] / den[i][j]);
        o[(i64)t * p.o_sn + c] = from_f32<T>(y);
      }
    }
#pragma unroll 1
    for (; slow; slow &= slow - 1) {
      const int e = __ffs(slow) - 1;
      const int t = t0 + tr + 16 * (e / CT), c = c0 + tc + 16 * (e % CT);
      const float y = aft_sigmoid(to_f32(q[(i64)t * p.q_sn + c])) * aft_exact<T>(p, k, v, h, t, c);
      o[(i64)t * p.o_sn + c] = from_f32<T>(y);
    }
  }
}

#include "aft_tc.cuh"
#include "aft_full_tc.cuh"
#include "aft_simple_causal.cuh"
#include "aft_simple.cuh"

// Entry points: aft_<step>_<dtype>; the streaming AFT-simple passes at `RED` and `MAP` CTAs per SM
// (≤ 128 and ≤ 80 registers; f32 holds twice the registers per buffered row): 16 or 24 warps,
// each thread with one to two blocks' loads in flight, ≥ 32 KB (reduce) and ≥ 24 KB (map) per SM.
#define AFT_DTYPE(T, NAME, RED, MAP)                                                                   \
  extern "C" __global__ void __launch_bounds__(AFT_THREADS) aft_chunk_##NAME(                      \
      const __grid_constant__ AftParams p) {                                                       \
    aft_chunk<T>(p);                                                                               \
  }                                                                                                \
  extern "C" __global__ void __launch_bounds__(AFT_THREADS, RED) aft_simple_reduce_##NAME(        \
      const __grid_constant__ AftParams p) {                                                       \
    aft_simple_reduce<T>(p);                                                                       \
  }                                                                                                \
  extern "C" __global__ void __launch_bounds__(AFT_THREADS, MAP) aft_simple_map_##NAME(           \
      const __grid_constant__ AftParams p) {                                                       \
    aft_simple_map<T>(p);                                                                          \
  }                                                                                                \
  extern "C" __global__ void __launch_bounds__(AFT_THREADS, 2) aft_simple_causal_##NAME(           \
      const __grid_constant__ AftParams p) {                                                       \
    aft_simple_causal<T>(p);                                                                       \
  }

AFT_DTYPE(f16, f16, 2, 3)
AFT_DTYPE(bf16, bf16, 2, 3)
AFT_DTYPE(float, f32, 2, 2)

// f16/bf16 take aft_window_tc (aft_tc.cuh).
extern "C" __global__ void __launch_bounds__(AFT_THREADS) aft_window_f32(const __grid_constant__ AftParams p) {
  aft_window<float>(p);
}
extern "C" __global__ void __launch_bounds__(AFT_THREADS) aft_scan_f32(const __grid_constant__ AftParams p) {
  aft_scan(p);
}
extern "C" __global__ void __launch_bounds__(AFT_THREADS) aft_rowmax_f32(const __grid_constant__ AftParams p) {
  aft_rowmax(p);
}
