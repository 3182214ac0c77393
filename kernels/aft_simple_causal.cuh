// Causal AFT-simple (SPEC §3, w = 0) in one launch: Y_t = σ(Q_t) · Σ_{t'≤t} exp(K_t')·V_t' /
// Σ_{t'≤t} exp(K_t'), per channel a prefix sum, as a single-pass scan with a deterministic
// decoupled look-back. Replaces chunk pass → scan → window kernel, which read K and V twice.
// Grid: one CTA per (chunk of AFT_SC_ROWS rows, slice = bh · channel tiles + tile), in ticket
// order (chunk-major over the slices, so a CTA's predecessors took earlier tickets: they are
// running or done, and the look-back never waits on a CTA that has not started). 8 warps: warp w
// owns rows [w·PER, w·PER + PER) of the chunk, lane l channels c0 + 2l, c0 + 2l + 1.
//  1. Load the chunk's K, V rows into registers; per warp (m, a, z) over its rows; fold the 8
//     warps in order into the chunk's aggregate, publish it (flag 1).
//  2. Look back from chunk − 1 until a chunk whose inclusive prefix is published (flag 2), or the
//     start; then fold forward: P = inc(j) ⊕ agg(j+1) ⊕ … ⊕ agg(chunk−1), and inc(chunk) = P ⊕
//     agg(chunk) (flag 2). Every inclusive prefix is thus the left fold of the aggregates from
//     chunk 0 in chunk order, whatever j the look-back stopped at: the outputs are bit-identical
//     run to run, and no CTA waits on a chain of predecessors' look-backs.
//  3. Each warp's exclusive state P ⊕ warps before it, then per row the state updated with the
//     row's key (a running max, so no sum underflows whatever the keys) and Y = σ(Q)·a/z.
// Traffic: K, V, Q read once, Y written once; per chunk 2 × 3 floats per channel and a flag
// written, and the look-back's reads of the predecessors' (from L2).
// Workspace: p.part [bh][·][3][d] aggregates, p.pre [bh][·][3][d] inclusive prefixes at
// chunk + 1 (pre's layout), p.flags [slices][chunks] u32 then a ticket counter, zeroed before the
// launch.
#pragma once
#include "aft.cuh"
#include "mma.cuh"  // cp.async

#define AFT_SC_ROWS 128  // rows per chunk (16 per warp)

// exp(x) for the running state: expf for f32 storage (its 1e-5 tolerance), one MUFU otherwise.
template <typename T> __device__ __forceinline__ float aft_sc_exp(float x) {
  if constexpr (sizeof(T) == 4) {
    return expf(x);
  } else {
    return ex2_fast(x * LOG2E_F);
  }
}

// The state s extended by one key k (weight exp(k)) with value v. A key of −inf has weight 0; a
// NaN or +inf key or a NaN or infinite value makes a and z non-finite from here on (+inf: inf/inf,
// as the reference and docs/non-finite.md have it, not the limit v).
template <typename T> __device__ __forceinline__ void aft_sc_push(AftStat& s, float k, float v) {
  if (k == AFT_NEG_INF) return;
  if (k == -AFT_NEG_INF) {
    s = {k, __int_as_float(0x7fffffff), __int_as_float(0x7fffffff)};
    return;
  }
  if (k > s.m) {
    const float f = aft_sc_exp<T>(s.m - k);  // 0 for the first key (s.m = −inf)
    s.a = fmaf(s.a, f, v);
    s.z = fmaf(s.z, f, 1.f);
    s.m = k;
  } else {
    const float e = aft_sc_exp<T>(k - s.m);
    s.a = fmaf(e, v, s.a);
    s.z += e;
  }
}

__device__ __forceinline__ u32* aft_sc_flags(const AftParams& p) { return reinterpret_cast<u32*>(p.flags); }

template <typename T>
__device__ void aft_simple_causal(const AftParams& p) {
  constexpr int PAIRS = AFT_CT / 2, WARPS = AFT_THREADS / 32, PER = AFT_SC_ROWS / WARPS;
  static_assert(PAIRS == 32, "a lane per channel pair");
  __shared__ AftStat wst[WARPS][AFT_CT];  // per warp: its rows' stats, then its exclusive state
  __shared__ AftStat excl[AFT_CT];        // the chunk's exclusive prefix
  __shared__ int ticket, stop;
  // The chunk's Q tile, copied in at the start (16-bit storage, whole aligned tiles): it lands
  // during the look-back. Loaded at step 3 instead, it was two dependent DRAM round trips (half a
  // warp's rows at a time, for registers) after everything else.
  constexpr int QLD = AFT_CT + 8;
  __shared__ __align__(16) u16 qs[AFT_SC_ROWS][QLD];
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  const int ctiles = div_up(p.d, AFT_CT), slices = p.b * p.h * ctiles;
  const int chunks = div_up(p.t, AFT_SC_ROWS);
  u32* flags = aft_sc_flags(p);
  if (threadIdx.x == 0) ticket = (int)atomicAdd(&flags[(i64)slices * chunks], 1u);
  __syncthreads();
  const int chunk = ticket / slices, sx = ticket % slices;
  const int bh = sx / ctiles, b = bh / p.h, h = bh % p.h, c0 = (sx % ctiles) * AFT_CT;
  const int c = c0 + 2 * lane;  // the thread's first channel
  const bool ok0 = c < p.d, ok1 = c + 1 < p.d;
  const int row0 = chunk * AFT_SC_ROWS + warp * PER;
  const int rows = ok0 ? max(0, min(PER, p.t - row0)) : 0;  // this thread's valid rows
  u32* my_flags = flags + (i64)sx * chunks;
  const T* qt = reinterpret_cast<const T*>(p.q) + b * p.q_sb + h * p.q_sh + c0;  // the tile's row 0
  const bool staged = sizeof(T) == 2 && c0 + AFT_CT <= p.d && reinterpret_cast<u64>(qt) % 16 == 0 &&
                      p.q_sn % 8 == 0;  // CTA-uniform
  if (staged)
    tc_stage<AFT_CT, QLD, AFT_SC_ROWS, AFT_THREADS>(qs, reinterpret_cast<const u16*>(qt), p.q_sn,
                                                    chunk * AFT_SC_ROWS, p.t);
  cp_async_commit();

  // 1. K, V into registers; the warp's stats; the chunk's aggregate.
  const T* k = reinterpret_cast<const T*>(p.k) + b * p.k_sb + h * p.k_sh + (i64)row0 * p.k_sn + c;
  const T* v = reinterpret_cast<const T*>(p.v) + b * p.v_sb + h * p.v_sh + (i64)row0 * p.v_sn + c;
  const bool kv_pair = ok1 && ((reinterpret_cast<u64>(k) | reinterpret_cast<u64>(v)) % (2 * sizeof(T))) == 0 &&
                       ((p.k_sn | p.v_sn) & 1) == 0;
  float kx[2][PER], vx[2][PER];
  float m[2] = {AFT_NEG_INF, AFT_NEG_INF};
#pragma unroll
  for (int i = 0; i < PER; ++i) {
    kx[0][i] = kx[1][i] = AFT_NEG_INF;
    vx[0][i] = vx[1][i] = 0.f;
  }
  aft_load_rows<T, PER>(k, p.k_sn, rows, kv_pair, ok0, ok1, kx[0], kx[1]);
  aft_load_rows<T, PER>(v, p.v_sn, rows, kv_pair, ok0, ok1, vx[0], vx[1]);
#pragma unroll
  for (int i = 0; i < PER; ++i) {
    if (!ok1) kx[1][i] = AFT_NEG_INF;  // no channel c + 1: an empty one
#pragma unroll
    for (int x = 0; x < 2; ++x) m[x] = fmaxf(m[x], kx[x][i]);
  }
#pragma unroll
  for (int x = 0; x < 2; ++x) wst[warp][2 * lane + x] = aft_stat_of<T, PER>(m[x], kx[x], vx[x]);
  __syncthreads();
  // Threads < AFT_CT: one channel each for the aggregate, the look-back fold and the publishing.
  const int cc = threadIdx.x;
  const bool chan = cc < AFT_CT && c0 + cc < p.d;
  float* agg_own = aft_stats(p.part, bh, p.chunks, chunk, p.d);
  AftStat agg = {AFT_NEG_INF, 0.f, 0.f};
  if (chan) {
    agg = wst[0][cc];
#pragma unroll 1
    for (int w = 1; w < WARPS; ++w) agg = aft_combine(agg, wst[w][cc]);
    aft_store(agg_own, p.d, c0 + cc, agg);
  }
  __threadfence();
  __syncthreads();
  if (threadIdx.x == 0) {
    atomicAdd(&my_flags[chunk], 1u);  // 0 → 1: aggregate published
    // 2. Look back to the nearest published inclusive prefix (or the start).
    int j = chunk - 1;
    for (; j >= 0; --j) {
      u32 f;
      while ((f = atomicAdd(&my_flags[j], 0u)) == 0u) __nanosleep(32);
      if (f == 2u) break;
    }
    stop = j;
    __threadfence();
  }
  __syncthreads();
  if (chan) {
    AftStat acc = {AFT_NEG_INF, 0.f, 0.f};
    if (stop >= 0) {
      const float* inc = aft_stats(p.pre, bh, p.chunks + 1, stop + 1, p.d) + c0 + cc;
      acc = {__ldcg(inc), __ldcg(inc + p.d), __ldcg(inc + 2 * p.d)};
    }
    // One combine site for every fold, so each inclusive prefix is the same left fold bit for bit.
#pragma unroll 1
    for (int i = stop + 1; i <= chunk; ++i) {
      AftStat next = agg;
      if (i < chunk) {
        const float* a = aft_stats(p.part, bh, p.chunks, i, p.d) + c0 + cc;
        next = {__ldcg(a), __ldcg(a + p.d), __ldcg(a + 2 * p.d)};
      } else {
        excl[cc] = acc;
      }
      acc = aft_combine(acc, next);
    }
    aft_store(aft_stats(p.pre, bh, p.chunks + 1, chunk + 1, p.d), p.d, c0 + cc, acc);
  }
  __threadfence();
  __syncthreads();
  if (threadIdx.x == 0) atomicAdd(&my_flags[chunk], 1u);  // 1 → 2: inclusive prefix published

  // 3. Each warp's exclusive state, then its rows in order.
  if (chan) {
    AftStat s = excl[cc];
#pragma unroll 1
    for (int w = 0; w < WARPS; ++w) {
      const AftStat own = wst[w][cc];
      wst[w][cc] = s;
      s = aft_combine(s, own);
    }
  }
  cp_async_wait<0>();
  __syncthreads();  // (also publishes every thread's copies of the Q tile)
  if (rows == 0) return;
  const T* q = reinterpret_cast<const T*>(p.q) + b * p.q_sb + h * p.q_sh + (i64)row0 * p.q_sn + c;
  T* o = reinterpret_cast<T*>(p.o) + b * p.o_sb + h * p.o_sh + (i64)row0 * p.o_sn + c;
  const bool qo_pair = ok1 && ((reinterpret_cast<u64>(q) | reinterpret_cast<u64>(o)) % (2 * sizeof(T))) == 0 &&
                       ((p.q_sn | p.o_sn) & 1) == 0;
  AftStat s[2];  // (a braced initializer here crashes cicc 13.0)
  s[0] = wst[warp][2 * lane];
  s[1] = wst[warp][2 * lane + 1];  // a channel past d: the empty stats of step 1
  constexpr int HALF = PER / 2;  // queries loaded half a warp's rows at a time (registers)
#pragma unroll
  for (int h0 = 0; h0 < PER; h0 += HALF) {
    float qx[2][HALF];
    bool have = false;
    if constexpr (sizeof(T) == 2) {
      if (staged) {
#pragma unroll
        for (int i = 0; i < HALF; ++i)
          unpack2<T>(*reinterpret_cast<const u32*>(&qs[warp * PER + h0 + i][2 * lane]), qx[0][i], qx[1][i]);
        have = true;
      }
    }
    if (!have) aft_load_rows<T, HALF>(q + h0 * p.q_sn, p.q_sn, rows - h0, qo_pair, true, ok1, qx[0], qx[1]);
#pragma unroll
    for (int i = 0; i < HALF; ++i) {
      if (h0 + i >= rows) break;
      float y[2];
#pragma unroll
      for (int x = 0; x < 2; ++x) {
        aft_sc_push<T>(s[x], kx[x][h0 + i], vx[x][h0 + i]);
        const float r = sizeof(T) == 4 ? s[x].a / s[x].z : __fdividef(s[x].a, s[x].z);
        y[x] = aft_sigmoid_t<T>(qx[x][i]) * r;
      }
      aft_store2<T>(o + (h0 + i) * p.o_sn, qo_pair, ok1, y[0], y[1]);
    }
  }
}
