// Non-causal AFT-simple (SPEC §3, w = 0): Y_t = σ(Q_t) · Σ_t' exp(K_t')·V_t' / Σ_t' exp(K_t'), per
// channel one total over the whole sequence, then an elementwise map. Two streaming launches:
//   aft_simple_reduce  (m, a, z) of a contiguous range of 64-row blocks per CTA, p.parts ranges per
//                      slice (slice = bh · channel tiles + tile), into p.part [bh][parts][3][d]
//   aft_simple_map     every CTA folds its slice's parts in one fixed order (the same total, bit
//                      for bit, in every CTA), then maps its range of blocks: Y = σ(Q) · a/z
// Both are persistent (about one wave of CTAs, each walking a range of blocks) and keep two
// blocks' loads in flight per thread: block j + 1's rows are loaded before block j is folded or
// mapped. The chunk → scan → map launches they replace put each 64-row block in its own CTA, so
// an SM streamed only while its three CTAs' loads were out, and waited through their exps,
// reductions and exits between them (48 % and 60 % of DRAM bandwidth on the H100, bench/NOTES.md).
// Traffic: K, V, Q read once, Y written once; 3 floats per channel per part written and read.
#pragma once
#include "aft.cuh"

// A channel pair of one row, as loaded: two 16-bit values in a u32, or a float2.
template <typename T> struct AftRaw {
  using type = u32;
};
template <> struct AftRaw<float> {
  using type = float2;
};

// Channels c, c + 1 at p (c + 1 only if ok1; 0 in its place otherwise): one 4- or 8-byte load
// when PAIR (both present, aligned), else one per channel.
template <typename T, bool PAIR>
__device__ __forceinline__ typename AftRaw<T>::type aft_raw_load(const T* p, bool ok1) {
  if constexpr (sizeof(T) == 2) {
    if (PAIR) return *reinterpret_cast<const u32*>(p);
    const u16* h = reinterpret_cast<const u16*>(p);
    return (u32)h[0] | (ok1 ? (u32)h[1] << 16 : 0u);
  } else {
    if (PAIR) return *reinterpret_cast<const float2*>(p);
    return float2{p[0], ok1 ? p[1] : 0.f};
  }
}

template <typename T>
__device__ __forceinline__ void aft_raw_unpack(typename AftRaw<T>::type r, float& x0, float& x1) {
  if constexpr (sizeof(T) == 2) {
    unpack2<T>(r, x0, x1);
  } else {
    x0 = r.x;
    x1 = r.y;
  }
}

// The rows of block `blk` the thread holds: rows blk·64 + warp + 8i, i < n, are inside T.
__device__ __forceinline__ int aft_block_rows(const AftParams& p, int blk, int warp, int per) {
  return max(0, min(per, div_up(p.t - (blk * AFT_CHUNK + warp), AFT_CHUNK / per)));
}

// Rows blk·64 + warp + 8i (i < N) of a channel pair at x + row·sn, as loaded; rows past T load
// row T − 1 instead (the caller masks them), so no load waits on a predicate and every one is
// issued before any is used.
template <typename T, bool PAIR, int N>
__device__ __forceinline__ void aft_raw_rows(const T* x, i64 sn, const AftParams& p, int blk, bool ok1,
                                             typename AftRaw<T>::type (&r)[N]) {
  const int row0 = blk * AFT_CHUNK + (int)threadIdx.x / 32;
#pragma unroll
  for (int i = 0; i < N; ++i) r[i] = aft_raw_load<T, PAIR>(x + (i64)min(row0 + i * (AFT_CHUNK / N), p.t - 1) * sn, ok1);
}

// Whether every lane of the slice loads its channel pair in one access: D even (every lane with
// channels has both) and each row of x and y at the tile's first channel c0 aligned to a pair.
// The same for every lane, so the PAIR branch does not diverge.
template <typename T>
__device__ __forceinline__ bool aft_pairs(const AftParams& p, const void* x, const void* y, i64 xs, i64 ys) {
  return (p.d & 1) == 0 && ((reinterpret_cast<u64>(x) | reinterpret_cast<u64>(y)) % (2 * sizeof(T))) == 0 &&
         ((xs | ys) & 1) == 0;
}

// Block [first, last) of this CTA's even split of `blocks` blocks into `parts` ranges.
__device__ __forceinline__ int aft_range_at(int i, int blocks, int parts) { return (int)((i64)i * blocks / parts); }

// s extended by N keys k (−inf: weight 0; padding rows are −inf) with values v: one rescale when
// the keys raise the max, then the keys' terms at that max (aft_stat_of). NaN keys make a and z
// NaN; +inf makes them NaN too (inf − inf), as aft_combine of the chunk statistics did.
template <typename T, int N>
__device__ __forceinline__ void aft_fold(AftStat& s, const float (&k)[N], const float (&v)[N]) {
  float m = AFT_NEG_INF;
#pragma unroll
  for (int i = 0; i < N; ++i) m = fmaxf(m, k[i]);  // NaN skipped
  if (m > s.m) {
    const float f = aft_sc_exp<T>(s.m - m);  // 0 from s.m = −inf; a NaN sum stays NaN
    s.a *= f;
    s.z *= f;
    s.m = m;
  }
  const AftStat t = aft_stat_of<T, N>(s.m, k, v);
  s.a += t.a;
  s.z += t.z;
}

// Slice sx (bh · channel tiles + tile) as the lane sees it: channels c = c0 + 2·lane, c + 1 (ok0,
// ok1: inside D) and the channel its loads use, cl (c0 for a lane without channels, whose values
// are never used).
struct AftSimpleSlice {
  int bh, b, h, c0, c, cl;
  bool ok0, ok1;
  __device__ __forceinline__ AftSimpleSlice(const AftParams& p, int sx, int ctiles) {
    bh = sx / ctiles;
    b = bh / p.h;
    h = bh % p.h;
    c0 = (sx % ctiles) * AFT_CT;
    c = c0 + 2 * ((int)threadIdx.x % 32);
    ok0 = c < p.d;
    ok1 = c + 1 < p.d;
    cl = ok0 ? c : c0;
  }
};

// Pass 1, one slice: the thread's (m, a, z) of channels c, c + 1 over its rows of blocks
// [first, last); k and v at row 0 of the slice, channel c (a lane without channels: c0, its
// values unused). Two buffers: block j + 1's loads go out before block j is folded and block
// j + 2's as soon as j's registers are free, so two blocks are in flight while one is folded.
template <typename T, bool PAIR>
__device__ __forceinline__ void aft_simple_reduce_rows(const AftParams& p, const T* k, const T* v, int first,
                                                       int last, bool ok0, bool ok1, AftStat (&s)[2]) {
  using Raw = typename AftRaw<T>::type;
  constexpr int PER = AFT_CHUNK / (AFT_THREADS / 32);
  const int warp = threadIdx.x / 32;
  Raw ka[PER], va[PER], kb[PER], vb[PER];
  auto load = [&](int blk, Raw(&kr)[PER], Raw(&vr)[PER]) {
    if (blk >= last) return 0;  // uniform over the CTA
    aft_raw_rows<T, PAIR, PER>(k, p.k_sn, p, blk, ok1, kr);
    aft_raw_rows<T, PAIR, PER>(v, p.v_sn, p, blk, ok1, vr);
    return ok0 ? aft_block_rows(p, blk, warp, PER) : 0;
  };
  auto fold = [&](int n, const Raw(&kr)[PER], const Raw(&vr)[PER]) {
    float kx[2][PER], vx[2][PER];
#pragma unroll
    for (int i = 0; i < PER; ++i) {
      aft_raw_unpack<T>(kr[i], kx[0][i], kx[1][i]);
      aft_raw_unpack<T>(vr[i], vx[0][i], vx[1][i]);
      if (i >= n) kx[0][i] = AFT_NEG_INF;  // a row past T: weight 0
      if (i >= n || !ok1) kx[1][i] = AFT_NEG_INF;  // and no channel c + 1: an empty one
    }
    aft_fold<T, PER>(s[0], kx[0], vx[0]);
    aft_fold<T, PER>(s[1], kx[1], vx[1]);
  };
  int na = load(first, ka, va);
#pragma unroll 1
  for (int blk = first; blk < last; blk += 2) {
    const int nb = load(blk + 1, kb, vb);
    fold(na, ka, va);
    na = load(blk + 2, ka, va);
    if (blk + 1 < last) fold(nb, kb, vb);
  }
}

// Pass 1. Grid: x = part (< p.parts), y = slice (grid-stride). Lane l takes channels c0 + 2l,
// c0 + 2l + 1, warp w rows w, w + 8, … of each block (a warp's load is one row of the tile); each
// thread keeps its own (m, a, z) over its rows of the part's range, then the 8 warps are folded
// in warp order (deterministic).
template <typename T>
__device__ void aft_simple_reduce(const AftParams& p) {
  constexpr int WARPS = AFT_THREADS / 32;
  static_assert(AFT_CT == 64, "a lane per channel pair");
  __shared__ AftStat red[WARPS][AFT_CT];
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  const int ctiles = div_up(p.d, AFT_CT), slices = p.b * p.h * ctiles;
  const int first = aft_range_at(blockIdx.x, p.chunks, p.parts);
  const int last = aft_range_at(blockIdx.x + 1, p.chunks, p.parts);
  for (int sx = blockIdx.y; sx < slices; sx += gridDim.y) {
    const AftSimpleSlice x(p, sx, ctiles);
    const int bh = x.bh, c0 = x.c0;
    const T* k = reinterpret_cast<const T*>(p.k) + x.b * p.k_sb + x.h * p.k_sh + x.cl;
    const T* v = reinterpret_cast<const T*>(p.v) + x.b * p.v_sb + x.h * p.v_sh + x.cl;
    AftStat s[2] = {{AFT_NEG_INF, 0.f, 0.f}, {AFT_NEG_INF, 0.f, 0.f}};
    if (aft_pairs<T>(p, k - x.cl + c0, v - x.cl + c0, p.k_sn, p.v_sn))
      aft_simple_reduce_rows<T, true>(p, k, v, first, last, x.ok0, x.ok1, s);
    else
      aft_simple_reduce_rows<T, false>(p, k, v, first, last, x.ok0, x.ok1, s);
    red[warp][2 * lane] = s[0];
    red[warp][2 * lane + 1] = s[1];
    __syncthreads();
    if (threadIdx.x < AFT_CT && c0 + (int)threadIdx.x < p.d) {
      AftStat acc = red[0][threadIdx.x];
#pragma unroll 1
      for (int w = 1; w < WARPS; ++w) acc = aft_combine(acc, red[w][threadIdx.x]);
      aft_store(aft_stats(p.part, bh, p.parts, blockIdx.x, p.d), p.d, c0 + threadIdx.x, acc);
    }
    __syncthreads();  // red is rewritten for the next slice
  }
}

// The total (m, a, z) of channel c of slice bh over its p.parts parts, by a fixed tree: thread
// (channel cc, quarter j) folds parts [j·P/4, (j+1)·P/4) in order, 4 parts in flight at a time,
// then the quarters are folded in order. Every CTA of the slice gets the same ratio, bit for bit.
__device__ __forceinline__ void aft_simple_ratio(const AftParams& p, int bh, int c0, AftStat (*quarter)[AFT_CT],
                                                 float* ratio) {
  constexpr int Q = AFT_THREADS / AFT_CT, B = 4;
  const int cc = threadIdx.x % AFT_CT, j = threadIdx.x / AFT_CT;
  AftStat acc = {AFT_NEG_INF, 0.f, 0.f};
  if (c0 + cc < p.d) {
    const int lo = aft_range_at(j, p.parts, Q), hi = aft_range_at(j + 1, p.parts, Q);
#pragma unroll 1
    for (int i = lo; i < hi; i += B) {
      AftStat st[B];
#pragma unroll
      for (int u = 0; u < B; ++u)
        if (i + u < hi) st[u] = aft_load(aft_stats(p.part, bh, p.parts, i + u, p.d), p.d, c0 + cc);
#pragma unroll
      for (int u = 0; u < B; ++u)
        if (i + u < hi) acc = aft_combine(acc, st[u]);
    }
  }
  quarter[j][cc] = acc;
  __syncthreads();
  if (threadIdx.x < AFT_CT) {
    AftStat tot = quarter[0][threadIdx.x];
#pragma unroll
    for (int x = 1; x < Q; ++x) tot = aft_combine(tot, quarter[x][threadIdx.x]);
    ratio[threadIdx.x] = tot.a / tot.z;
  }
  __syncthreads();
}

// Pass 2, one slice: the first block's Q loads go out before the ratio's prologue; then blocks
// [first, last) with two buffers as in the reduce. q and o at row 0 of the slice, channel c (a
// lane without channels: c0, nothing stored).
template <typename T, bool PAIR>
__device__ __forceinline__ void aft_simple_map_rows(const AftParams& p, const T* q, T* o, int first, int last,
                                                    bool ok0, bool ok1, int bh, int c0,
                                                    AftStat (*quarter)[AFT_CT], float* ratio) {
  using Raw = typename AftRaw<T>::type;
  constexpr int PER = AFT_CHUNK / (AFT_THREADS / 32);
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  Raw qa[PER], qb[PER];
  auto load = [&](int blk, Raw(&qr)[PER]) {
    if (blk >= last) return 0;  // uniform over the CTA
    aft_raw_rows<T, PAIR, PER>(q, p.q_sn, p, blk, ok1, qr);
    return ok0 ? aft_block_rows(p, blk, warp, PER) : 0;
  };
  int na = load(first, qa);
  aft_simple_ratio(p, bh, c0, quarter, ratio);
  const float r0 = ratio[2 * lane], r1 = ratio[2 * lane + 1];  // (r1 unused without channel c + 1)
  auto map = [&](int blk, int n, const Raw(&qr)[PER]) {
    const int row0 = blk * AFT_CHUNK + warp;
#pragma unroll
    for (int i = 0; i < PER; ++i)
      if (i < n) {
        float x0, x1;
        aft_raw_unpack<T>(qr[i], x0, x1);
        aft_store2<T>(o + (i64)(row0 + i * (AFT_CHUNK / PER)) * p.o_sn, PAIR, ok1, aft_sigmoid_t<T>(x0) * r0,
                      aft_sigmoid_t<T>(x1) * r1);
      }
  };
#pragma unroll 1
  for (int blk = first; blk < last; blk += 2) {
    const int nb = load(blk + 1, qb);
    map(blk, na, qa);
    na = load(blk + 2, qa);
    map(blk + 1, nb, qb);
  }
}

// Pass 2. Grid: x = CTA of the slice (its range of blocks), y = slice (grid-stride).
template <typename T>
__device__ void aft_simple_map(const AftParams& p) {
  __shared__ AftStat quarter[AFT_THREADS / AFT_CT][AFT_CT];
  __shared__ float ratio[AFT_CT];
  const int ctiles = div_up(p.d, AFT_CT), slices = p.b * p.h * ctiles;
  const int first = aft_range_at(blockIdx.x, p.chunks, gridDim.x);
  const int last = aft_range_at(blockIdx.x + 1, p.chunks, gridDim.x);
  for (int sx = blockIdx.y; sx < slices; sx += gridDim.y) {
    const AftSimpleSlice x(p, sx, ctiles);
    const T* q = reinterpret_cast<const T*>(p.q) + x.b * p.q_sb + x.h * p.q_sh + x.cl;
    T* o = reinterpret_cast<T*>(p.o) + x.b * p.o_sb + x.h * p.o_sh + x.cl;
    if (aft_pairs<T>(p, q - x.cl + x.c0, o - x.cl + x.c0, p.q_sn, p.o_sn))
      aft_simple_map_rows<T, true>(p, q, o, first, last, x.ok0, x.ok1, x.bh, x.c0, quarter, ratio);
    else
      aft_simple_map_rows<T, false>(p, q, o, first, last, x.ok0, x.ok1, x.bh, x.c0, quarter, ratio);
    __syncthreads();  // quarter and ratio are rewritten for the next slice
  }
}
