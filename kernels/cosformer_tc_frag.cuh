// Building blocks of the cosFormer tensor-core kernels (cosformer_tc.cuh): launch constants and
// shared-memory sizes, the fragment-level pieces (angles, ReLU'd key and query fragments, their
// sin/cos re-weighting, the KV and state products), the register layout of a carried state, and
// the reduction of a chunk's keys into it (shared by the reduce pass and the chained causal pass).
#pragma once
#include "cosformer.cuh"
#include "mma.cuh"

#define COS_TC_ROWS 32         // key rows per pipeline stage of the reduce pass
#define COS_TC_MAP_WARPS 4     // warps per CTA of the map pass, 16 query rows each
#define COS_TC_BLOCK 64        // rows per block of the causal pass
#define COS_TC_CAUSAL_WARPS 8  // warps per CTA of the causal pass

extern __shared__ __align__(16) u16 cos_tc_smem[];

// Row length (elements) of the state operand: [αKVc | αKVs | βzc ×8 | βzs ×8], padded by 8 so that
// ldmatrix rows fall in distinct banks.
__host__ __device__ constexpr int cos_tc_state_ld(int d) { return 2 * d + 24; }
// Stages of the reduce's cp.async ring (one fewer in flight): 4, but 2 at D = 80, whose reduce
// has no registers to spare for the deeper ring at its 2 CTAs per SM (ptxas: 120 > 102).
__host__ __device__ constexpr int cos_tc_reduce_stages(int d) { return d == 80 ? 2 : 4; }
// K and V stages of the reduce (DV = D; the chained causal pass stages its DV value columns).
__host__ __device__ constexpr int cos_tc_reduce_smem(int d, int dv = -1) {
  return cos_tc_reduce_stages(d) * COS_TC_ROWS * ((d + 8) + ((dv < 0 ? d : dv) + 8)) * 2;
}
__host__ __device__ constexpr int cos_tc_map_smem(int d, int warps = COS_TC_MAP_WARPS) {
  return (d * cos_tc_state_ld(d) + 2 * warps * 16 * (d + 8)) * 2;
}
// Value columns per causal CTA: all of them up to D = 64; D = 128 splits them between two CTAs
// (the carried fp32 state of all 128 would not fit in registers).
__host__ __device__ constexpr int cos_tc_causal_dv(int d) { return d > 64 ? 64 : d; }
// Q, K tiles (two buffers), V tiles of the CTA's value columns (two buffers), the output stage, and
// the state operand [D][cos_tc_state_ld(DV)].
__host__ __device__ constexpr int cos_tc_causal_smem(int d) {
  return (4 * COS_TC_BLOCK * (d + 8) + 3 * COS_TC_BLOCK * (cos_tc_causal_dv(d) + 8) +
          d * cos_tc_state_ld(cos_tc_causal_dv(d))) *
         2;
}

// Writes the angle table of rows [row0, row0 + ROWS): tab[0][r] = sinθ, tab[1][r] = cosθ (0 past
// row_end). Threads below ROWS each write one row.
template <int ROWS>
__device__ __forceinline__ void cos_tc_angles(float (*tab)[ROWS], const CosformerParams& p, int row0,
                                              int row_end) {
  if (threadIdx.x < ROWS) {
    float sn = 0.f, cs = 0.f;
    if (row0 + (int)threadIdx.x < row_end) cos_angle(p, row0 + threadIdx.x, &sn, &cs);
    tab[0][threadIdx.x] = sn;
    tab[1][threadIdx.x] = cs;
  }
}

// A = Kᵀ fragment: rows c ∈ [c0, c0+16), columns = key rows [n0, n0+16), ReLU applied.
template <typename T, int LD>
__device__ __forceinline__ void cos_tc_key_frag(u32 (&a)[4], u16 (*ks)[LD], int n0, int c0, int relu) {
  const int lane = threadIdx.x % 32, mat = lane / 8, r = lane % 8;
  ldmatrix_x4_trans_at(a, smem_addr_folded(&ks[n0 + r + (mat / 2) * 8][c0 + (mat % 2) * 8]));
  if (relu) {
#pragma unroll
    for (int i = 0; i < 4; ++i) a[i] = relu2<T>(a[i]);
  }
}

// The key fragment re-weighted by sinθ_j (s) and cosθ_j (c) of its key rows, rounded to 16 bits
// (sh, ch). LO: also the rounding remainders (sl, cl), so that hi + lo carries the product to
// ~2⁻²² relative — for the state a prefill returns (reduce with exact_state, then the scan): sums
// over many rows of operands rounded once would lose the fp32 accuracy the state promises.
// Without LO for sums that only feed a 16-bit state operand (the causal pass's carried state, the
// reduce of a plain forward call, causal or not: its rounding, ≤ 2⁻¹² relative per term and
// independent between terms, is below the operand's own). tab = angles of the stage, indexed from
// its first row.
template <typename T, int TAB, bool LO>
__device__ __forceinline__ void cos_tc_key_ops(u32 (&sh)[4], u32 (&ch)[4], u32 (&sl)[4], u32 (&cl)[4], const u32 (&a)[4],
                                               int n0, const float (*tab)[TAB]) {
  const int t = threadIdx.x % 4;
#pragma unroll
  for (int i = 0; i < 4; ++i) {  // a0, a1 hold key columns 2t, 2t+1; a2, a3 hold 2t+8, 2t+9
    const int j = n0 + 2 * t + (i / 2) * 8;
    const float2 sn = *reinterpret_cast<const float2*>(&tab[0][j]);
    const float2 cs = *reinterpret_cast<const float2*>(&tab[1][j]);
    float k0, k1;
    unpack2<T>(a[i], k0, k1);
    if (LO) {
      split2<T>(k0 * sn.x, k1 * sn.y, sh[i], sl[i]);
      split2<T>(k0 * cs.x, k1 * cs.y, ch[i], cl[i]);
    } else {
      sh[i] = pack2<T>(k0 * sn.x, k1 * sn.y);
      ch[i] = pack2<T>(k0 * cs.x, k1 * cs.y);
    }
  }
}

// acc_s += as·V, acc_c += ac·V over value columns [e0, e0 + 8·NT) of key rows [n0, n0 + 16).
template <typename T, int LD, int NT>
__device__ __forceinline__ void cos_tc_kv_mma(float (&acc_s)[NT][4], float (&acc_c)[NT][4], const u32 (&as)[4],
                                              const u32 (&ac)[4], u16 (*vs)[LD], int n0, int e0) {
  const int lane = threadIdx.x % 32, mat = lane / 8, r = lane % 8;
#pragma unroll
  for (int j = 0; j + 1 < NT; j += 2) {
    u32 bf[4];  // B = V: k = key rows, columns e; two n-tiles (j, j + 1)
    ldmatrix_x4_trans_at(bf, smem_addr_folded(&vs[n0 + r + (mat % 2) * 8][e0 + j * 8 + (mat / 2) * 8]));
    mma16816<T>(acc_s[j], as, bf[0], bf[1]);
    mma16816<T>(acc_s[j + 1], as, bf[2], bf[3]);
    mma16816<T>(acc_c[j], ac, bf[0], bf[1]);
    mma16816<T>(acc_c[j + 1], ac, bf[2], bf[3]);
  }
  if (NT % 2) {
    u32 bf[2];  // lanes 0–15 address the two k halves of the last n-tile
    ldmatrix_x2_trans_at(bf, smem_addr_folded(&vs[n0 + r + (mat % 2) * 8][e0 + (NT - 1) * 8]));
    mma16816<T>(acc_s[NT - 1], as, bf[0], bf[1]);
    mma16816<T>(acc_c[NT - 1], ac, bf[0], bf[1]);
  }
}

// Value-column parts of the reduce pass: D ≥ 64 splits the columns between two warps per c-tile
// (fewer accumulators per thread, more warps per CTA).
__host__ __device__ constexpr int cos_tc_reduce_esplit(int d) { return d >= 64 ? 2 : 1; }
__host__ __device__ constexpr int cos_tc_reduce_threads(int d) { return d / 16 * cos_tc_reduce_esplit(d) * 32; }

// Value columns per reduce warp and its n-tiles (8 columns each).
__host__ __device__ constexpr int cos_tc_reduce_nt(int d) { return d / cos_tc_reduce_esplit(d) / 8; }

// A (b,h) state [KVs | KVc | zs | zc] (D × D KV) in the registers of the fragment layout that the
// reduce and the causal update share: KV rows c (elements 0, 1) and c + 8 (2, 3) × columns e0 + 8j
// + 2t (+1) of n-tile j; zs, zc rows c ([0], [1]) and c + 8 ([2], [3]) in the z warps (zw), zero
// in the others. get(i) / put(i, value) read and write state element i.
template <int D>
__device__ __forceinline__ i64 cos_tc_kv_at(int c, int e0, int j, int x) {
  return (i64)(x < 2 ? c : c + 8) * D + e0 + j * 8 + 2 * (threadIdx.x % 4) + x % 2;
}

template <int D, int NT, typename Get>
__device__ __forceinline__ void cos_tc_get_state(Get get, int c, int e0, bool zw, float (&ss)[NT][4],
                                                 float (&sc)[NT][4], float (&zs)[4], float (&zc)[4]) {
  constexpr i64 DD = (i64)D * D;
#pragma unroll
  for (int j = 0; j < NT; ++j)
#pragma unroll
    for (int x = 0; x < 4; ++x) {
      ss[j][x] = get(cos_tc_kv_at<D>(c, e0, j, x));
      sc[j][x] = get(DD + cos_tc_kv_at<D>(c, e0, j, x));
    }
  zs[0] = zs[1] = zw ? get(2 * DD + c) : 0.f;
  zs[2] = zs[3] = zw ? get(2 * DD + c + 8) : 0.f;
  zc[0] = zc[1] = zw ? get(2 * DD + D + c) : 0.f;
  zc[2] = zc[3] = zw ? get(2 * DD + D + c + 8) : 0.f;
}

// Scalar stores (workspaces are 4-byte aligned); z by one lane of each row.
template <int D, int NT, typename Put>
__device__ __forceinline__ void cos_tc_put_state(Put put, int c, int e0, bool zw, const float (&ss)[NT][4],
                                                 const float (&sc)[NT][4], const float (&zs)[4],
                                                 const float (&zc)[4]) {
  constexpr i64 DD = (i64)D * D;
#pragma unroll
  for (int j = 0; j < NT; ++j)
#pragma unroll
    for (int x = 0; x < 4; ++x) {
      put(cos_tc_kv_at<D>(c, e0, j, x), ss[j][x]);
      put(DD + cos_tc_kv_at<D>(c, e0, j, x), sc[j][x]);
    }
  if (zw && threadIdx.x % 4 == 0) {
    put(2 * DD + c, zs[0]);
    put(2 * DD + c + 8, zs[2]);
    put(2 * DD + D + c, zc[0]);
    put(2 * DD + D + c + 8, zc[2]);
  }
}

// The sums of key rows [row_begin, row_end) of one (b,h) slice over the DV value columns from v
// into the calling warp's registers: warp (ct, ep) of (D/16 c-tiles) × ES e-parts holds state rows
// c = 16ct + g (+8) × columns ep·DV/ES + 8j + 2t (+1) of KVs (as) and KVc (ac), and the ep = 0
// warps zs, zc of rows c (+8) in every column of the ones-product (zs[0] = zs[1] = row c, zs[2] =
// zs[3] = row c + 8; other warps 0): cos_tc_get_state's layout. The reduce pass takes all value
// columns; the chained causal kernel its CTA's (the causal update layout). Staging: cos_tc_smem,
// cos_tc_reduce_smem(D, DV) bytes. Ends after a barrier, with every read of the staging buffers
// done.
template <typename T, int D, int DV = D, int ES = cos_tc_reduce_esplit(D)>
__device__ __forceinline__ void cos_reduce_tc_sums(const CosformerParams& p, const u16* k, const u16* v,
                                                   int row_begin, int row_end, float (&as)[DV / ES / 8][4],
                                                   float (&ac)[DV / ES / 8][4], float (&zs)[4], float (&zc)[4]) {
  constexpr int WC = D / 16, LD = D + 8, LDV = DV + 8, ROWS = COS_TC_ROWS, S = cos_tc_reduce_stages(D);
  constexpr int THREADS = WC * ES * 32, EW = DV / ES, NT = DV / ES / 8;
  auto ks = reinterpret_cast<u16(*)[ROWS][LD]>(cos_tc_smem);
  auto vs = reinterpret_cast<u16(*)[ROWS][LDV]>(cos_tc_smem + S * ROWS * LD);
  __shared__ __align__(8) float ang[S][2][ROWS];
  const int warp = threadIdx.x / 32;
  const int ct = warp % WC, e0 = (warp / WC) * EW;
  const bool zw = warp < WC;
  const u32 one = ones2<T>();
#pragma unroll
  for (int i = 0; i < 4; ++i) zs[i] = zc[i] = 0.f;
#pragma unroll
  for (int j = 0; j < NT; ++j)
#pragma unroll
    for (int i = 0; i < 4; ++i) as[j][i] = ac[j][i] = 0.f;

  // A ring of S stages, S − 1 in flight while one is multiplied: with two (one in flight) the
  // reduce kept 8 KB of loads out per CTA, 16 KB per SM at its 2 CTAs, below what DRAM latency
  // needs at the copy rate (≈ 23 GB/s per SM × ≈ 1 µs), and ran at 44 % of DRAM bandwidth.
  auto stage = [&](int s, int row0) {
    if (row0 < row_end) {
      tc_stage<D, LD, ROWS, THREADS>(ks[s], k, p.k_sn, row0, row_end);
      tc_stage<DV, LDV, ROWS, THREADS>(vs[s], v, p.v_sn, row0, row_end);
      cos_tc_angles<ROWS>(ang[s], p, row0, row_end);
    }
    cp_async_commit();  // (an empty group past the end keeps the wait counts uniform)
  };
  __syncthreads();  // earlier reads of the buffers are done
#pragma unroll
  for (int s = 0; s < S - 1; ++s) stage(s, row_begin + s * ROWS);
  int buf = 0;
  for (int row0 = row_begin; row0 < row_end; row0 += ROWS, buf = buf == S - 1 ? 0 : buf + 1) {
    stage(buf == 0 ? S - 1 : buf - 1, row0 + (S - 1) * ROWS);  // the stage read last iteration
    cp_async_wait<S - 1>();
    __syncthreads();
#pragma unroll 1
    for (int n0 = 0; n0 < ROWS; n0 += 16) {
      u32 a[4];
      cos_tc_key_frag<T, LD>(a, ks[buf], n0, ct * 16, p.relu);
      // exact_state (a prefill, whose state is returned): hi + lo, fp32-accurate; else the sums
      // only feed a 16-bit state operand: hi parts.
      u32 sh[4], ch[4], sl[4], cl[4];
      if (p.exact_state)
        cos_tc_key_ops<T, ROWS, true>(sh, ch, sl, cl, a, n0, ang[buf]);
      else
        cos_tc_key_ops<T, ROWS, false>(sh, ch, sl, cl, a, n0, ang[buf]);
      cos_tc_kv_mma<T, LDV, NT>(as, ac, sh, ch, vs[buf], n0, e0);
      if (zw) {
        mma16816<T>(zs, sh, one, one);
        mma16816<T>(zc, ch, one, one);
      }
      if (p.exact_state) {
        cos_tc_kv_mma<T, LDV, NT>(as, ac, sl, cl, vs[buf], n0, e0);
        if (zw) {
          mma16816<T>(zs, sl, one, one);
          mma16816<T>(zc, cl, one, one);
        }
      }
    }
    __syncthreads();  // buffer `buf` is refilled next iteration
  }
  cp_async_wait<0>();
}


// The CTA-wide maxima of |KV| and |z| from per-thread values: `red` holds 2 × WARPS floats.
// Ends with a barrier, after which every thread holds both maxima.
template <int WARPS>
__device__ __forceinline__ void cos_tc_block_max(float& mk, float& mz, float (*red)[WARPS]) {
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
#pragma unroll
  for (int off = 16; off > 0; off >>= 1) {
    mk = fmaxf(mk, __shfl_xor_sync(0xffffffffu, mk, off));
    mz = fmaxf(mz, __shfl_xor_sync(0xffffffffu, mz, off));
  }
  if (lane == 0) {
    red[0][warp] = mk;
    red[1][warp] = mz;
  }
  __syncthreads();
  mk = red[0][0];
  mz = red[1][0];
#pragma unroll
  for (int w = 1; w < WARPS; ++w) {
    mk = fmaxf(mk, red[0][w]);
    mz = fmaxf(mz, red[1][w]);
  }
}

// Row-tile state product: acc += cosθ_i·(q_i·αKVc) + sinθ_i·(q_i·αKVs) over value columns
// [e0, e0 + 8·NT), and dz += cosθ_i·(q_i·βzc) + sinθ_i·(q_i·βzs) (all columns of dz equal), for
// the warp's A fragments of ReLU(q) (KT k-steps) and rows g, g + 8 (angles sn0/cs0, sn1/cs1).
// bs rows hold [αKVc | αKVs | βzc ×8 | βzs ×8] of W value columns each (W = D, or the causal
// CTA's share of them).
// FOLD: the angles folded into the A operand in fp32 and rounded once (the map pass: fewest
// registers, for its occupancy); else applied to separate fp32 products (the causal pass, which
// has registers to spare at one CTA per SM: no re-rounded operands, ~100 fewer instructions).
template <typename T, int D, int W, int LB, int NT, bool DEN, bool FOLD>
__device__ __forceinline__ void cos_tc_state_mma(float (&acc)[NT][4], float (&dz)[4], const u32 (&aq)[D / 16][4],
                                                 u16 (*bs)[LB], float sn0, float cs0, float sn1, float cs1,
                                                 int e0) {
  const int lane = threadIdx.x % 32, mat = lane / 8, r = lane % 8;
  float pc[NT][4], ps[NT][4], zc[4] = {0, 0, 0, 0}, zs[4] = {0, 0, 0, 0};  // !FOLD only
#pragma unroll
  for (int j = 0; j < NT; ++j) pc[j][0] = pc[j][1] = pc[j][2] = pc[j][3] = ps[j][0] = ps[j][1] = ps[j][2] = ps[j][3] = 0.f;
  float(*oc)[4] = FOLD ? acc : pc;  // where the cos and sin products accumulate
  float(*os)[4] = FOLD ? acc : ps;
  float(&ozc)[4] = *(FOLD ? &dz : &zc);
  float(&ozs)[4] = *(FOLD ? &dz : &zs);
#pragma unroll
  for (int kt = 0; kt < D / 16; ++kt) {
    u32 ac[4], as[4];  // the A operands: FOLD: rows g (0, 2) and g + 8 (1, 3) scaled; else q
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      ac[i] = FOLD ? scale2<T>(aq[kt][i], i % 2 ? cs1 : cs0, i % 2 ? cs1 : cs0) : aq[kt][i];
      as[i] = FOLD ? scale2<T>(aq[kt][i], i % 2 ? sn1 : sn0, i % 2 ? sn1 : sn0) : aq[kt][i];
    }
    u16(*brow)[LB] = bs + kt * 16 + r + (mat % 2) * 8;
#pragma unroll
    for (int j = 0; j + 1 < NT; j += 2) {
      u32 bc[4], bsn[4];
      ldmatrix_x4_trans_at(bc, smem_addr_folded(&brow[0][e0 + j * 8 + (mat / 2) * 8]));
      ldmatrix_x4_trans_at(bsn, smem_addr_folded(&brow[0][W + e0 + j * 8 + (mat / 2) * 8]));
      mma16816<T>(oc[j], ac, bc[0], bc[1]);
      mma16816<T>(oc[j + 1], ac, bc[2], bc[3]);
      mma16816<T>(os[j], as, bsn[0], bsn[1]);
      mma16816<T>(os[j + 1], as, bsn[2], bsn[3]);
    }
    if (NT % 2) {
      u32 bc[2], bsn[2];
      ldmatrix_x2_trans_at(bc, smem_addr_folded(&brow[0][e0 + (NT - 1) * 8]));
      ldmatrix_x2_trans_at(bsn, smem_addr_folded(&brow[0][W + e0 + (NT - 1) * 8]));
      mma16816<T>(oc[NT - 1], ac, bc[0], bc[1]);
      mma16816<T>(os[NT - 1], as, bsn[0], bsn[1]);
    }
    if (DEN) {
      u32 bz[4];  // n-tile 0: βzc, n-tile 1: βzs
      ldmatrix_x4_trans_at(bz, smem_addr_folded(&brow[0][2 * W + (mat / 2) * 8]));
      mma16816<T>(ozc, ac, bz[0], bz[1]);
      mma16816<T>(ozs, as, bz[2], bz[3]);
    }
  }
  if (!FOLD) {
#pragma unroll
    for (int j = 0; j < NT; ++j)
#pragma unroll
      for (int x = 0; x < 4; ++x)  // elements 0, 1: row g; 2, 3: row g + 8
        acc[j][x] = fmaf(x < 2 ? sn0 : sn1, ps[j][x], fmaf(x < 2 ? cs0 : cs1, pc[j][x], acc[j][x]));
    if (DEN) {
#pragma unroll
      for (int x = 0; x < 4; ++x) dz[x] = fmaf(x < 2 ? sn0 : sn1, zs[x], fmaf(x < 2 ? cs0 : cs1, zc[x], dz[x]));
    }
  }
}

// Loads the warp's 16 query rows as A fragments (ReLU applied).
template <typename T, int D, int LD>
__device__ __forceinline__ void cos_tc_query_ops(u32 (&aq)[D / 16][4], u16 (*qs)[LD], int r0, int relu) {
  const int lane = threadIdx.x % 32;
#pragma unroll
  for (int kt = 0; kt < D / 16; ++kt) {
    ldmatrix_x4_at(aq[kt], smem_addr_folded(&qs[r0 + lane % 16][kt * 16 + (lane / 16) * 8]));
    if (relu) {
#pragma unroll
      for (int i = 0; i < 4; ++i) aq[kt][i] = relu2<T>(aq[kt][i]);
    }
  }
}

// Writes the warp's staged 16 output rows [row0, row0 + 16) × columns [e0, e0 + EW) with 16-byte
// stores (rows at or past n skipped).
template <int LD, int EW>
__device__ __forceinline__ void cos_tc_store_rows(u16* o, i64 o_sn, u16 (*stage)[LD], int row0, int n, int e0) {
  const int lane = threadIdx.x % 32;
#pragma unroll
  for (int i = lane; i < 16 * (EW / 8); i += 32) {
    const int r = i / (EW / 8), c = e0 + (i % (EW / 8)) * 8;
    if (row0 + r < n)
      *reinterpret_cast<uint4*>(&o[(i64)(row0 + r) * o_sn + c]) = *reinterpret_cast<const uint4*>(&stage[r][c]);
  }
}

