// cosFormer tensor-core path (SPEC §2) for f16/bf16, D == Dv, 16-byte-aligned rows. Features are
// never stored: ReLU is applied to the loaded 16-bit fragments, and the sin/cos re-weighting is
// folded into an operand in fp32 right before each mma (reduce state sums: as hi + lo 16-bit parts,
// two mmas, so the fp32 state matches the CUDA-core kernels' accuracy), or applied to the fp32
// products (the state product of the map and causal passes). Accumulation is fp32.
//   cos_reduce_tc  D ∈ {32, 48, 64, 128}: per-chunk states, the layout of cos_reduce (so the
//                  CUDA-core finalize and scan are shared)
//   cos_map_tc     D ∈ {32, 48, 64, 128}: non-causal outputs from the summed state
//   cos_causal_tc  D ∈ {32, 64, 128}: one CTA per (chunk, bh) walks the chunk's 64-row blocks,
//                  carrying the fp32 state in registers: per block, the masked intra-block
//                  products, the state product, then the state update. D = 128: two CTAs per
//                  chunk, each with half of the value columns (and of the state).
//   cos_causal_chain_tc  D ∈ {64, 128}: reduce, scan and causal pass in one launch; each CTA
//                  reduces its chunk (over its value columns) into the registers that carry the
//                  causal state, takes its prefix from the previous chunk's CTAs (a chained scan,
//                  fixed order), then runs the chunk's outputs. K, V read twice within one
//                  kernel (the second time mostly from L2), no separate reduce or scan launch.
//   cos_short_tc   sm_90, N, S ≤ 4096: reduce, the fixed-order sum and map in one launch, one
//                  thread-block cluster of 8 CTAs per (b,h); cos_short_causal_tc (D = 64) the
//                  same for reduce, scan and the causal pass.
// The state enters mma as a 16-bit operand scaled by a power of two (α for KV, β for z) chosen
// from its maximum, so that sums over millions of rows neither overflow nor underflow; outputs
// divide the scales out in fp32. Dynamic shared memory sizes: cos_tc_*_smem (mirrored in Rust).
// D = 128 is built for sm_90 only (see COS_TC_128).
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
__host__ __device__ constexpr int cos_tc_reduce_smem(int d) { return 4 * COS_TC_ROWS * (d + 8) * 2; }
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
  ldmatrix_x4_trans(a, &ks[n0 + r + (mat / 2) * 8][c0 + (mat % 2) * 8]);
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
    ldmatrix_x4_trans(bf, &vs[n0 + r + (mat % 2) * 8][e0 + j * 8 + (mat / 2) * 8]);
    mma16816<T>(acc_s[j], as, bf[0], bf[1]);
    mma16816<T>(acc_s[j + 1], as, bf[2], bf[3]);
    mma16816<T>(acc_c[j], ac, bf[0], bf[1]);
    mma16816<T>(acc_c[j + 1], ac, bf[2], bf[3]);
  }
  if (NT % 2) {
    u32 bf[2];  // lanes 0–15 address the two k halves of the last n-tile
    ldmatrix_x2_trans(bf, &vs[n0 + r + (mat % 2) * 8][e0 + (NT - 1) * 8]);
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
// columns; the chained causal kernel its CTA's (the causal update layout). Staging: cos_tc_smem
// (cos_tc_reduce_smem when DV = D). Ends after a barrier, with every read of the staging buffers
// done.
template <typename T, int D, int DV = D, int ES = cos_tc_reduce_esplit(D)>
__device__ __forceinline__ void cos_reduce_tc_sums(const CosformerParams& p, const u16* k, const u16* v,
                                                   int row_begin, int row_end, float (&as)[DV / ES / 8][4],
                                                   float (&ac)[DV / ES / 8][4], float (&zs)[4], float (&zc)[4]) {
  constexpr int WC = D / 16, LD = D + 8, LDV = DV + 8, ROWS = COS_TC_ROWS;
  constexpr int THREADS = WC * ES * 32, EW = DV / ES, NT = DV / ES / 8;
  auto ks = reinterpret_cast<u16(*)[ROWS][LD]>(cos_tc_smem);
  auto vs = reinterpret_cast<u16(*)[ROWS][LDV]>(cos_tc_smem + 2 * ROWS * LD);
  __shared__ __align__(8) float ang[2][2][ROWS];
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

  __syncthreads();  // earlier reads of the buffers are done
  tc_stage<D, LD, ROWS, THREADS>(ks[0], k, p.k_sn, row_begin, row_end);
  tc_stage<DV, LDV, ROWS, THREADS>(vs[0], v, p.v_sn, row_begin, row_end);
  cos_tc_angles<ROWS>(ang[0], p, row_begin, row_end);
  cp_async_commit();
  int buf = 0;
  for (int row0 = row_begin; row0 < row_end; row0 += ROWS, buf ^= 1) {
    if (row0 + ROWS < row_end) {
      tc_stage<D, LD, ROWS, THREADS>(ks[buf ^ 1], k, p.k_sn, row0 + ROWS, row_end);
      tc_stage<DV, LDV, ROWS, THREADS>(vs[buf ^ 1], v, p.v_sn, row0 + ROWS, row_end);
      cos_tc_angles<ROWS>(ang[buf ^ 1], p, row0 + ROWS, row_end);
    }
    cp_async_commit();
    cp_async_wait<1>();
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
    __syncthreads();  // buffer `buf` is refilled two iterations from now
  }
  cp_async_wait<0>();
}

// Reduce pass. Grid: x = bh (grid-stride), y = chunk. Warps and registers: cos_reduce_tc_sums.
// Traffic: K, V of the chunk read once, one state written.
// (b,h) slices bh0, bh0 + bh_step, …; key chunk `chunk`.
template <typename T, int D>
__device__ void cos_reduce_tc(const CosformerParams& p, int bh0, int bh_step, int chunk) {
  constexpr int WC = D / 16, EW = D / cos_tc_reduce_esplit(D), NT = cos_tc_reduce_nt(D);
  const int warp = threadIdx.x / 32, g = threadIdx.x % 32 / 4;
  const int ct = warp % WC, e0 = (warp / WC) * EW;
  const bool zw = warp < WC;
  const int row_begin = chunk * p.rows_per_chunk;
  const int row_end = min(p.s, row_begin + p.rows_per_chunk);

  for (int bh = bh0; bh < p.b * p.h; bh += bh_step) {
    const int b = bh / p.h, h = bh % p.h;
    const u16* k = reinterpret_cast<const u16*>(p.k) + (b * p.k_sb + h * p.k_sh);
    const u16* v = reinterpret_cast<const u16*>(p.v) + (b * p.v_sb + h * p.v_sh);
    float as[NT][4], ac[NT][4], zs[4], zc[4];
    cos_reduce_tc_sums<T, D>(p, k, v, row_begin, row_end, as, ac, zs, zc);

    float* out = reinterpret_cast<float*>(p.partial) + ((i64)bh * p.chunks + chunk) * cos_state_len(p);
    cos_tc_put_state<D, NT>([&](i64 i, float x) { out[i] = x; }, ct * 16 + g, e0, zw, as, ac, zs, zc);
  }
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
      ldmatrix_x4_trans(bc, &brow[0][e0 + j * 8 + (mat / 2) * 8]);
      ldmatrix_x4_trans(bsn, &brow[0][W + e0 + j * 8 + (mat / 2) * 8]);
      mma16816<T>(oc[j], ac, bc[0], bc[1]);
      mma16816<T>(oc[j + 1], ac, bc[2], bc[3]);
      mma16816<T>(os[j], as, bsn[0], bsn[1]);
      mma16816<T>(os[j + 1], as, bsn[2], bsn[3]);
    }
    if (NT % 2) {
      u32 bc[2], bsn[2];
      ldmatrix_x2_trans(bc, &brow[0][e0 + (NT - 1) * 8]);
      ldmatrix_x2_trans(bsn, &brow[0][W + e0 + (NT - 1) * 8]);
      mma16816<T>(oc[NT - 1], ac, bc[0], bc[1]);
      mma16816<T>(os[NT - 1], as, bsn[0], bsn[1]);
    }
    if (DEN) {
      u32 bz[4];  // n-tile 0: βzc, n-tile 1: βzs
      ldmatrix_x4_trans(bz, &brow[0][2 * W + (mat / 2) * 8]);
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
    ldmatrix_x4(aq[kt], &qs[r0 + lane % 16][kt * 16 + (lane / 16) * 8]);
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

// Map pass (non-causal). Grid: x = CTAs striding over 64-row tiles, y = bh (grid-stride). The
// summed state (fp32) is scaled and kept in shared memory as the B operand; each warp maps 16
// query rows, D > 64 in two passes over the value columns. O_i = (sinθ_i q_i·KVs + cosθ_i q_i·KVc)
// / max(sinθ_i q_i·zs + cosθ_i q_i·zc, ε) with the scales divided out. Traffic: Q read once, O
// written once, the state from L2.
// (b,h) slices bh0, bh0 + bh_step, …; query tiles of WARPS·16 rows tile0, tile0 + tile_step, ….
template <typename T, int D, int WARPS>
__device__ void cos_map_tc(const CosformerParams& p, int bh0, int bh_step, int tile0, int tile_step) {
  constexpr int THREADS = WARPS * 32, ROWS = WARPS * 16;
  constexpr int LD = D + 8, LB = cos_tc_state_ld(D), KT = D / 16;
  constexpr int EP = D > 64 ? 4 : 1, EW = D / EP, NT = EW / 8;  // D = 128: quarters (registers)
  auto bs = reinterpret_cast<u16(*)[LB]>(cos_tc_smem);
  auto qs = reinterpret_cast<u16(*)[ROWS][LD]>(cos_tc_smem + D * LB);
  __shared__ float red[2][WARPS];
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, g = lane / 4, t = lane % 4;
  const int tiles = div_up(p.n, ROWS);
  const i64 ddv = (i64)D * D;

  for (int bh = bh0; bh < p.b * p.h; bh += bh_step) {
    const int b = bh / p.h, h = bh % p.h;
    const u16* q = reinterpret_cast<const u16*>(p.q) + (b * p.q_sb + h * p.q_sh);
    u16* o = reinterpret_cast<u16*>(p.o) + (b * p.o_sb + h * p.o_sh);
    const float* st = reinterpret_cast<const float*>(p.state) + (i64)bh * cos_state_len(p);

    __syncthreads();  // previous bh done with bs, qs, red
    if (tile0 < tiles) tc_stage<D, LD, ROWS, THREADS>(qs[0], q, p.q_sn, tile0 * ROWS, p.n);
    cp_async_commit();
    float mk = 0.f, mz = 0.f;
    for (int i = threadIdx.x; i < 2 * D * D; i += THREADS) mk = fmaxf(mk, fabsf(st[i]));
    for (int i = threadIdx.x; i < 2 * D; i += THREADS) mz = fmaxf(mz, fabsf(st[2 * ddv + i]));
    cos_tc_block_max<WARPS>(mk, mz, red);
    const float alpha = pow2_scale(mk), beta = pow2_scale(mz);
    const float inv_alpha = pow2_inv(alpha), inv_beta = pow2_inv(beta);
    for (int i = threadIdx.x; i < D * D; i += THREADS) {
      const int c = i / D, e = i % D;
      bs[c][e] = from_f32<T>(st[ddv + i] * alpha).bits;  // KVc
      bs[c][D + e] = from_f32<T>(st[i] * alpha).bits;    // KVs
    }
    for (int i = threadIdx.x; i < D * 16; i += THREADS) {
      const int c = i / 16, x = i % 16;
      bs[c][2 * D + x] = from_f32<T>(st[2 * ddv + (x < 8 ? D : 0) + c] * beta).bits;  // zc ×8, zs ×8
    }
    __syncthreads();

    int buf = 0;
    for (int tile = tile0; tile < tiles; tile += tile_step, buf ^= 1) {
      if (tile + tile_step < tiles)
        tc_stage<D, LD, ROWS, THREADS>(qs[buf ^ 1], q, p.q_sn, (tile + tile_step) * ROWS, p.n);
      cp_async_commit();
      cp_async_wait<1>();
      __syncthreads();
      u32 aq[KT][4];
      cos_tc_query_ops<T, D, LD>(aq, qs[buf], warp * 16, p.relu);
      const int row0 = tile * ROWS + warp * 16;
      float sn0, cs0, sn1, cs1;
      cos_angle(p, row0 + g, &sn0, &cs0);
      cos_angle(p, row0 + g + 8, &sn1, &cs1);
      u16(*stage)[LD] = &qs[buf][warp * 16];
      float inv0 = 0.f, inv1 = 0.f;
#pragma unroll 1
      for (int ep = 0; ep < EP; ++ep) {
        float acc[NT][4], dz[4] = {0, 0, 0, 0};
#pragma unroll
        for (int j = 0; j < NT; ++j) acc[j][0] = acc[j][1] = acc[j][2] = acc[j][3] = 0.f;
        if (ep == 0) {
          cos_tc_state_mma<T, D, D, LB, NT, true, true>(acc, dz, aq, bs, sn0, cs0, sn1, cs1, 0);
          inv0 = inv_alpha / fmaxf(dz[0] * inv_beta, p.eps);
          inv1 = inv_alpha / fmaxf(dz[2] * inv_beta, p.eps);
          __syncwarp();  // every lane's ldmatrix reads of the Q rows precede the staging writes
        } else {
          cos_tc_state_mma<T, D, D, LB, NT, false, true>(acc, dz, aq, bs, sn0, cs0, sn1, cs1, ep * EW);
        }
#pragma unroll
        for (int j = 0; j < NT; ++j) {
          const int e = ep * EW + j * 8 + 2 * t;
          *reinterpret_cast<u32*>(&stage[g][e]) = pack2<T>(acc[j][0] * inv0, acc[j][1] * inv0);
          *reinterpret_cast<u32*>(&stage[g + 8][e]) = pack2<T>(acc[j][2] * inv1, acc[j][3] * inv1);
        }
      }
      __syncwarp();
      cos_tc_store_rows<LD, D>(o, p.o_sn, stage, row0, p.n, 0);
      __syncthreads();  // buffer `buf` is refilled next iteration
    }
    cp_async_wait<0>();
  }
}

// The chained causal launch's flags: one u32 per (bh, chunk, share of the value columns) after the
// partials, then the ticket counter. All zero when the kernel starts (Rust queues a memset before
// it).
__device__ __forceinline__ u32* cos_chain_flags(const CosformerParams& p) {
  return reinterpret_cast<u32*>(reinterpret_cast<float*>(p.partial) + (i64)p.b * p.h * p.chunks * cos_state_len(p));
}

// One link of the chained scan over the chunks of slice bh, for the value columns of share `half`
// (of EH; EH = 1: all). On entry the thread's registers hold its elements of the chunk's own sums T
// (cos_tc_get_state's layout, columns e0 + …). Waits until every share of chunk − 1 has published
// its inclusive prefix P (partial slot chunk − 1; chunk 0: `state` when state_in, else zero),
// writes P + T to slot `chunk` (and to `state` for the last chunk when state is non-null; zs, zc,
// which every share sums alike, by share 0), publishes it, and leaves P, the exclusive prefix, in
// the registers. Each element gets cos_scan's add in cos_scan's order. EH > 1 with a single chunk
// and state_in must not run: one share could write `state` before another has read it.
template <int D, int NT, int EH>
__device__ __forceinline__ void cos_tc_chain_link(const CosformerParams& p, int bh, int chunk, int half, int c,
                                                  int e0, bool zw, float (&ss)[NT][4], float (&sc)[NT][4],
                                                  float (&zs)[4], float (&zc)[4]) {
  const i64 slen = cos_state_len(p);
  u32* flags = cos_chain_flags(p) + (i64)bh * p.chunks * EH;
  float* own = reinterpret_cast<float*>(p.partial) + ((i64)bh * p.chunks + chunk) * slen;
  float* st = p.state ? reinterpret_cast<float*>(p.state) + (i64)bh * slen : nullptr;
  const float* prev = chunk > 0 ? own - slen : (p.state_in ? st : nullptr);
  float* total = chunk == p.chunks - 1 ? st : nullptr;
  if (chunk > 0) {
    if (threadIdx.x == 0) {
      for (int x = 0; x < EH; ++x)
        while (atomicAdd(&flags[(chunk - 1) * EH + x], 0u) == 0u) __nanosleep(64);
      __threadfence();
    }
    __syncthreads();
  }
  float ps[NT][4], pc[NT][4], pzs[4], pzc[4];  // P
  cos_tc_get_state<D, NT>([&](i64 i) { return prev ? __ldcg(prev + i) : 0.f; }, c, e0, zw, ps, pc, pzs, pzc);
  __syncthreads();  // every read of `state` is done before it is written (one chunk, state_in)
#pragma unroll
  for (int j = 0; j < NT; ++j)
#pragma unroll
    for (int x = 0; x < 4; ++x) {
      ss[j][x] += ps[j][x];  // the scan's P + T
      sc[j][x] += pc[j][x];
    }
#pragma unroll
  for (int x = 0; x < 4; ++x) {
    zs[x] += pzs[x];
    zc[x] += pzc[x];
  }
  auto put = [&](i64 i, float v) {
    own[i] = v;
    if (total) total[i] = v;
  };
  cos_tc_put_state<D, NT>(put, c, e0, zw && half == 0, ss, sc, zs, zc);
#pragma unroll
  for (int j = 0; j < NT; ++j)
#pragma unroll
    for (int x = 0; x < 4; ++x) {
      ss[j][x] = ps[j][x];
      sc[j][x] = pc[j][x];
    }
#pragma unroll
  for (int x = 0; x < 4; ++x) {
    zs[x] = pzs[x];
    zc[x] = pzc[x];
  }
  __threadfence();
  __syncthreads();
  if (threadIdx.x == 0 && chunk + 1 < p.chunks) atomicAdd(&flags[chunk * EH + half], 1u);
}

// Causal pass (N = S), D ∈ {32, 64, 128}. Grid: (chunks · D/DV, bh), mapped by cos_causal_block;
// 8 warps. The CTA owns value columns [ev, ev + DV) (DV = cos_tc_causal_dv(D)): its V tiles,
// outputs and state columns; the scores need all of Q and K, so D = 128's two CTAs per chunk
// both read them (the second time mostly from L2) and both compute them.
// `partial` holds each chunk's exclusive prefix state (after cos_scan). Per 64-row block of the
// chunk (Q and K tiles ReLU'd once in shared memory, tc_relu_own):
//  1. output: warp (rt, eh) owns query rows [16rt, 16rt+16) × value columns [eh·DV/2, …) (rt
//     paired across schedulers, see rt below): scores S = ReLU(Q)ReLU(K)ᵀ over key groups ≤ rt,
//     weights W = S·cos(θ_i − θ_j) (a table over i − j) masked to j ≤ i (selected, never
//     multiplied, so later keys cannot leak), scaled per row by a power of two σ_i into the
//     16-bit range, then W·V; plus the state product of the state before the block (angles
//     applied to its fp32 products); denominators Σ_j W_ij (fp32) + the z product.
//  2. update: warp (ct, ue) adds the block's Kᵀ·diag(sin|cos)·V to its fp32 state registers,
//     with the re-weighted keys rounded once to 16 bits (hi parts only: this carried state only
//     feeds the 16-bit state operand of step 3; the state a prefill returns comes from the reduce
//     and the scan, which keep hi + lo).
//  3. the new state is scaled and written as the 16-bit B operand for the next block.
// Non-finite values in V of the diagonal key group: the mma takes them as zero and their
// contribution is added for rows j ≤ i only, so rows before a poisoned token stay unchanged.
// Traffic: Q, K, V of the chunk read once (K, V again by the reduce pass), O written once, the
// prefix state read once.
// (b,h) slices bh0, bh0 + bh_step, …; chunk `chunk` of the sequence.
// CHAIN (D ∈ {64, 128}, cosformer_causal_chain_tc): the CTA first reduces its chunk's keys over
// its value columns into the state registers (cos_reduce_tc_sums in this pass's update layout),
// then takes its exclusive prefix from the previous chunk's CTAs and publishes its inclusive one
// (cos_tc_chain_link), so no separate reduce or scan runs.
template <typename T, int D, bool CHAIN = false>
__device__ void cos_causal_tc(const CosformerParams& p, int bh0, int bh_step, int chunk, int ev = 0) {
  constexpr int WARPS = COS_TC_CAUSAL_WARPS, THREADS = WARPS * 32, BR = COS_TC_BLOCK;
  constexpr int DV = cos_tc_causal_dv(D);  // value columns [ev, ev + DV) are this CTA's
  constexpr int LD = D + 8, LDV = DV + 8, LB = cos_tc_state_ld(DV), KT = D / 16;
  constexpr int OW = DV / 2, ONT = OW / 8;                    // output phase: columns per warp
  constexpr int WC = D / 16, UES = WARPS / WC, UW = DV / UES, UNT = UW / 8;  // update phase
  static_assert(D == 32 || D == 64 || D == 128, "causal tensor-core path: D in {32, 64, 128}");
  // Two pipeline buffers of [Q tile | K tile | V tile] (one base per buffer, so the tiles' addresses
  // differ by constants), then the output stage and the state operand.
  constexpr int BUF = 2 * BR * LD + BR * LDV;
  auto q_tile = [](int b) { return reinterpret_cast<u16(*)[LD]>(cos_tc_smem + b * BUF); };
  auto k_tile = [](int b) { return reinterpret_cast<u16(*)[LD]>(cos_tc_smem + b * BUF + BR * LD); };
  auto v_tile = [](int b) { return reinterpret_cast<u16(*)[LDV]>(cos_tc_smem + b * BUF + 2 * BR * LD); };
  auto os = reinterpret_cast<u16(*)[LDV]>(cos_tc_smem + 2 * BUF);
  auto bs = reinterpret_cast<u16(*)[LB]>(cos_tc_smem + 2 * BUF + BR * LDV);
  __shared__ __align__(8) float ang[2][2][BR];
  __shared__ float red[2][WARPS];
  __shared__ float wdiag[WARPS][16][17];  // non-finite fallback: the warp's diagonal weights
  // cos(θ_i − θ_j) = cos(π(i − j)/2M) depends on i − j alone: wdt[64 + d] for d = i − j in
  // [−64, 64) (the output phase reads [−15, 63]); read after the first barrier of the bh loop.
  __shared__ float wdt[2 * BR];
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, g = lane / 4, t = lane % 4;
  const int mat = lane / 8, r8 = lane % 8;
  // Output phase: warp (rt, eh) has rows [16rt, +16) × value half eh. Row tile rt multiplies
  // rt + 1 key groups, so the tiles are paired on the four schedulers (warps s and s + 4 share
  // scheduler s): (0, 3), (1, 2), (2, 1), (3, 0) keep every scheduler's share equal.
  const int eh = warp / 4, rt = eh == 0 ? warp % 4 : 3 - warp % 4, eo = eh * OW;
  const int ct = warp % WC, eu = (warp / WC) * UW;           // update phase
  const bool zw = warp < WC;
  const int row_begin = chunk * p.rows_per_chunk;
  const int row_end = min(p.n, row_begin + p.rows_per_chunk);
  const u32 one = ones2<T>();
  if (threadIdx.x < 2 * BR) wdt[threadIdx.x] = cospif((float)((int)threadIdx.x - BR) / (2.0f * (float)p.m));

  for (int bh = bh0; bh < p.b * p.h; bh += bh_step) {
    const int b = bh / p.h, h = bh % p.h;
    const u16* q = reinterpret_cast<const u16*>(p.q) + (b * p.q_sb + h * p.q_sh);
    const u16* k = reinterpret_cast<const u16*>(p.k) + (b * p.k_sb + h * p.k_sh);
    const u16* v = reinterpret_cast<const u16*>(p.v) + (b * p.v_sb + h * p.v_sh) + ev;
    u16* o = reinterpret_cast<u16*>(p.o) + (b * p.o_sb + h * p.o_sh) + ev;
    const float* pre = reinterpret_cast<const float*>(p.partial) + ((i64)bh * p.chunks + chunk) * cos_state_len(p);

    // The running state in the update layout: rows c = 16ct + g (+8), columns eu + 8j + 2t (+1)
    // of the CTA's value columns (state columns ev + …).
    float ss[UNT][4], sc[UNT][4], zs[4], zc[4];
    if constexpr (CHAIN) {  // the update layout: WC c-tiles × UES e-parts of the CTA's DV columns
      cos_reduce_tc_sums<T, D, DV, UES>(p, k, v, row_begin, row_end, ss, sc, zs, zc);  // ends on a barrier
    } else {
      __syncthreads();  // the previous bh's readers of every buffer are done
    }
    tc_stage<D, LD, BR, THREADS>(q_tile(0), q, p.q_sn, row_begin, row_end);
    tc_stage<D, LD, BR, THREADS>(k_tile(0), k, p.k_sn, row_begin, row_end);
    tc_stage<DV, LDV, BR, THREADS>(v_tile(0), v, p.v_sn, row_begin, row_end);
    cos_tc_angles<BR>(ang[0], p, row_begin, row_end);
    cp_async_commit();

    if constexpr (CHAIN) {
      cos_tc_chain_link<D, UNT, D / DV>(p, bh, chunk, ev / DV, ct * 16 + g, ev + eu, zw, ss, sc, zs, zc);
    } else {
      cos_tc_get_state<D, UNT>([&](i64 i) { return pre[i]; }, ct * 16 + g, ev + eu, zw, ss, sc, zs, zc);
    }

    int buf = 0;
    for (int row0 = row_begin; row0 < row_end; row0 += BR, buf ^= 1) {
      // This block's Q, K tiles (issued a block earlier) with ReLU applied once, in place, by
      // the threads that copied them; the barrier in cos_tc_block_max publishes them.
      cp_async_wait<0>();
      if (p.relu) {
        tc_relu_own<T, D, LD, BR, THREADS>(q_tile(buf));
        tc_relu_own<T, D, LD, BR, THREADS>(k_tile(buf));
      }
      // (3) of the previous block, or the prefix: the state as a scaled 16-bit operand.
      float alpha, beta;
      {
        float mk = 0.f, mz = 0.f;
#pragma unroll
        for (int j = 0; j < UNT; ++j)
#pragma unroll
          for (int i = 0; i < 4; ++i) mk = fmaxf(mk, fmaxf(fabsf(ss[j][i]), fabsf(sc[j][i])));
        if (zw) mz = fmaxf(fmaxf(fabsf(zs[0]), fabsf(zs[2])), fmaxf(fabsf(zc[0]), fabsf(zc[2])));
        cos_tc_block_max<WARPS>(mk, mz, red);  // its barrier also ends every read of bs
        alpha = pow2_scale(mk);
        beta = pow2_scale(mz);
        const int c = ct * 16 + g;
#pragma unroll
        for (int j = 0; j < UNT; ++j) {
          const int e = eu + j * 8 + 2 * t;
          *reinterpret_cast<u32*>(&bs[c][e]) = pack2<T>(sc[j][0] * alpha, sc[j][1] * alpha);
          *reinterpret_cast<u32*>(&bs[c + 8][e]) = pack2<T>(sc[j][2] * alpha, sc[j][3] * alpha);
          *reinterpret_cast<u32*>(&bs[c][DV + e]) = pack2<T>(ss[j][0] * alpha, ss[j][1] * alpha);
          *reinterpret_cast<u32*>(&bs[c + 8][DV + e]) = pack2<T>(ss[j][2] * alpha, ss[j][3] * alpha);
        }
        if (zw) {  // 4 lanes per row fill the 16 z columns: zc in 0–7, zs in 8–15
          *reinterpret_cast<u32*>(&bs[c][2 * DV + 2 * t]) = pack2<T>(zc[0] * beta, zc[0] * beta);
          *reinterpret_cast<u32*>(&bs[c + 8][2 * DV + 2 * t]) = pack2<T>(zc[2] * beta, zc[2] * beta);
          *reinterpret_cast<u32*>(&bs[c][2 * DV + 8 + 2 * t]) = pack2<T>(zs[0] * beta, zs[0] * beta);
          *reinterpret_cast<u32*>(&bs[c + 8][2 * DV + 8 + 2 * t]) = pack2<T>(zs[2] * beta, zs[2] * beta);
        }
      }
      if (row0 + BR < row_end) {  // the other buffer was last read before the barrier above
        tc_stage<D, LD, BR, THREADS>(q_tile(buf ^ 1), q, p.q_sn, row0 + BR, row_end);
        tc_stage<D, LD, BR, THREADS>(k_tile(buf ^ 1), k, p.k_sn, row0 + BR, row_end);
        tc_stage<DV, LDV, BR, THREADS>(v_tile(buf ^ 1), v, p.v_sn, row0 + BR, row_end);
        cos_tc_angles<BR>(ang[buf ^ 1], p, row0 + BR, row_end);
      }
      cp_async_commit();
      cp_async_wait<1>();
      __syncthreads();  // block tiles, angles and bs visible
      u16(*qs)[LD] = q_tile(buf);
      u16(*ks)[LD] = k_tile(buf);
      u16(*vs)[LDV] = v_tile(buf);
      const float(*tab)[BR] = ang[buf];

      // (1) Output of rows [16rt, 16rt + 16).
      {
        const int r0 = rt * 16, i0 = r0 + g, i1 = i0 + 8;
        u32 aq[KT][4];
        cos_tc_query_ops<T, D, LD>(aq, qs, r0, 0);  // tiles already ReLU'd
        float s[8][4];
#pragma unroll
        for (int n = 0; n < 8; ++n) s[n][0] = s[n][1] = s[n][2] = s[n][3] = 0.f;
#pragma unroll
        for (int kg = 0; kg < 4; ++kg) {
          if (kg > rt) continue;  // keys after the warp's rows: masked entirely
#pragma unroll
          for (int kt = 0; kt < KT; ++kt) {
            u32 bk[4];  // B = Kᵀ: n = key rows, k = c; keys kg·16 + {0–7, 8–15}
            ldmatrix_x4(bk, &ks[kg * 16 + (mat / 2) * 8 + r8][kt * 16 + (mat % 2) * 8]);
            mma16816<T>(s[2 * kg], aq[kt], bk[0], bk[1]);
            mma16816<T>(s[2 * kg + 1], aq[kt], bk[2], bk[3]);
          }
        }
        const float sn0 = tab[0][i0], cs0 = tab[1][i0], sn1 = tab[0][i1], cs1 = tab[1][i1];
        const float* wd = &wdt[BR + i0 - 2 * t];  // wd[i − i0 − (j − 2t)] = cos(θ_i − θ_j)
        float rs0 = 0.f, rs1 = 0.f, mx0 = 0.f, mx1 = 0.f;
#pragma unroll
        for (int n = 0; n < 8; ++n) {
          if (n / 2 > rt) continue;  // masked group: s stays 0
#pragma unroll
          for (int x = 0; x < 4; ++x) {
            const int i = x < 2 ? i0 : i1, j = n * 8 + 2 * t + (x % 2);
            const float w = wd[(x < 2 ? 0 : 8) - n * 8 - (x % 2)];
            const float val = j <= i ? s[n][x] * w : 0.f;
            s[n][x] = val;
            if (x < 2) {
              rs0 += val;
              mx0 = fmaxf(mx0, fabsf(val));
            } else {
              rs1 += val;
              mx1 = fmaxf(mx1, fabsf(val));
            }
          }
        }
#pragma unroll
        for (int off = 1; off < 4; off <<= 1) {  // the four lanes of a row, fixed order
          rs0 += __shfl_xor_sync(0xffffffffu, rs0, off);
          rs1 += __shfl_xor_sync(0xffffffffu, rs1, off);
          mx0 = fmaxf(mx0, __shfl_xor_sync(0xffffffffu, mx0, off));
          mx1 = fmaxf(mx1, __shfl_xor_sync(0xffffffffu, mx1, off));
        }
        const float sg0 = pow2_scale(mx0), sg1 = pow2_scale(mx1);
        float acc[ONT][4];
#pragma unroll
        for (int j = 0; j < ONT; ++j) acc[j][0] = acc[j][1] = acc[j][2] = acc[j][3] = 0.f;
        bool poisoned = false;
#pragma unroll
        for (int kg = 0; kg < 4; ++kg) {
          if (kg > rt) continue;
          u32 aw[4];  // σW as the A operand: accumulator layout = A-fragment layout
          aw[0] = pack2<T>(s[2 * kg][0] * sg0, s[2 * kg][1] * sg0);
          aw[1] = pack2<T>(s[2 * kg][2] * sg1, s[2 * kg][3] * sg1);
          aw[2] = pack2<T>(s[2 * kg + 1][0] * sg0, s[2 * kg + 1][1] * sg0);
          aw[3] = pack2<T>(s[2 * kg + 1][2] * sg1, s[2 * kg + 1][3] * sg1);
#pragma unroll
          for (int j = 0; j < ONT; j += 2) {
            u32 bf[4];
            ldmatrix_x4_trans(bf, &vs[kg * 16 + r8 + (mat % 2) * 8][eo + j * 8 + (mat / 2) * 8]);
            if (kg == rt) {  // diagonal group: masked pairs must not meet non-finite values
              bool bad = false;
#pragma unroll
              for (int i = 0; i < 4; ++i) {
                bad |= nonfinite2<T>(bf[i]);
                bf[i] = finite_or_zero2<T>(bf[i]);
              }
              poisoned |= bad;
            }
            mma16816<T>(acc[j], aw, bf[0], bf[1]);
            mma16816<T>(acc[j + 1], aw, bf[2], bf[3]);
          }
        }
        if (__any_sync(0xffffffffu, poisoned)) {
          // Rare path: add w_ij·v_je for the non-finite v_je of the diagonal group, j ≤ i only.
#pragma unroll
          for (int n = 0; n < 8; ++n) {  // static indices into s: the n-tiles of group rt
            if (n / 2 != rt) continue;
            const int col = (n % 2) * 8 + 2 * t;
            wdiag[warp][g][col] = s[n][0] * sg0;
            wdiag[warp][g][col + 1] = s[n][1] * sg0;
            wdiag[warp][g + 8][col] = s[n][2] * sg1;
            wdiag[warp][g + 8][col + 1] = s[n][3] * sg1;
          }
          __syncwarp();
#pragma unroll
          for (int j = 0; j < ONT; ++j) {
#pragma unroll
            for (int x = 0; x < 4; ++x) {
              const int ri = x < 2 ? g : g + 8, e = eo + j * 8 + 2 * t + (x % 2);
              for (int jj = 0; jj <= ri; ++jj) {
                const float ve = to_f32(T{vs[r0 + jj][e]});
                if ((__float_as_uint(ve) & 0x7f800000u) == 0x7f800000u) acc[j][x] += wdiag[warp][ri][jj] * ve;
              }
            }
          }
          __syncwarp();
        }
        // To α units (exact powers of two), then the state product on top.
        const float f0 = alpha * pow2_inv(sg0), f1 = alpha * pow2_inv(sg1);
#pragma unroll
        for (int j = 0; j < ONT; ++j) {
          acc[j][0] *= f0;
          acc[j][1] *= f0;
          acc[j][2] *= f1;
          acc[j][3] *= f1;
        }
        float dz[4] = {0, 0, 0, 0};
        cos_tc_state_mma<T, D, DV, LB, ONT, true, false>(acc, dz, aq, bs, sn0, cs0, sn1, cs1, eo);
        const float inv_alpha = pow2_inv(alpha), inv_beta = pow2_inv(beta);
        const float inv0 = inv_alpha / fmaxf(rs0 + dz[0] * inv_beta, p.eps);
        const float inv1 = inv_alpha / fmaxf(rs1 + dz[2] * inv_beta, p.eps);
#pragma unroll
        for (int j = 0; j < ONT; ++j) {
          const int e = eo + j * 8 + 2 * t;
          *reinterpret_cast<u32*>(&os[i0][e]) = pack2<T>(acc[j][0] * inv0, acc[j][1] * inv0);
          *reinterpret_cast<u32*>(&os[i1][e]) = pack2<T>(acc[j][2] * inv1, acc[j][3] * inv1);
        }
        __syncwarp();
        cos_tc_store_rows<LDV, OW>(o, p.o_sn, &os[r0], row0 + r0, row_end, eo);
      }

      // (2) State update with the block's keys.
#pragma unroll 1
      for (int n0 = 0; n0 < BR; n0 += 16) {
        u32 a[4];
        cos_tc_key_frag<T, LD>(a, ks, n0, ct * 16, 0);
        u32 as[4], ac[4], unused[4];  // hi parts only: see cos_tc_key_ops
        cos_tc_key_ops<T, BR, false>(as, ac, unused, unused, a, n0, tab);
        cos_tc_kv_mma<T, LDV, UNT>(ss, sc, as, ac, vs, n0, eu);
        if (zw) {
          mma16816<T>(zs, as, one, one);
          mma16816<T>(zc, ac, one, one);
        }
      }
    }
    cp_async_wait<0>();
  }
}

// Short non-causal sequences in one launch (sm_90: thread-block clusters of COS_TC_SHORT_CL CTAs;
// a cluster takes the (b,h) slices cl0, cl0 + clusters, …). CTA r of the cluster reduces key chunk
// r (p.chunks = COS_TC_SHORT_CL) into partial[bh][r]; a cluster barrier (release / acquire) makes
// the partials visible; CTA r sums state elements r·THREADS + i, + CL·THREADS, … over the chunks in
// chunk order (cos_finalize's sum, bit for bit) into state[bh]; a second barrier; then it maps query
// tiles r, r + CL, … as cos_map_tc with the reduce's warps. Replaces reduce → finalize → map (three
// launches) where N, S ≤ COS_TC_SHORT_MAX. Dynamic shared memory: cos_tc_short_smem.
#define COS_TC_SHORT_CL 8
#define COS_TC_SHORT_MAX 4096
__host__ __device__ constexpr int cos_tc_short_smem(int d) {
  return cos_tc_map_smem(d, cos_tc_reduce_threads(d) / 32) > cos_tc_reduce_smem(d)
             ? cos_tc_map_smem(d, cos_tc_reduce_threads(d) / 32)
             : cos_tc_reduce_smem(d);
}

__host__ __device__ constexpr int cos_tc_short_causal_smem(int d) {
  return cos_tc_causal_smem(d) > cos_tc_reduce_smem(d) ? cos_tc_causal_smem(d) : cos_tc_reduce_smem(d);
}

#if !defined(__CUDA_ARCH__) || __CUDA_ARCH__ >= 900
template <typename T, int D>
__device__ void cos_short_tc(const CosformerParams& p) {
  constexpr int THREADS = cos_tc_reduce_threads(D), CL = COS_TC_SHORT_CL;
  const int rank = cluster_rank(), bhn = p.b * p.h;
  const i64 slen = cos_state_len(p);
  for (int bh = blockIdx.x / CL; bh < bhn; bh += gridDim.x / CL) {
    cos_reduce_tc<T, D>(p, bh, bhn, rank);  // this slice only
    cluster_sync();
    for (i64 x = (i64)rank * THREADS + threadIdx.x; x < slen; x += (i64)CL * THREADS)
      cos_finalize_element(p, bh, x);
    cluster_sync();
    cos_map_tc<T, D, THREADS / 32>(p, bh, bhn, rank, CL);
  }
}

// Causal short sequences (N ≤ COS_TC_SHORT_MAX, D = 64: the reduce and the causal pass both run
// 8 warps) in one launch: CTA r reduces chunk r; barrier; CTA r scans its eighth of the state
// elements over the chunks in chunk order (cos_scan: exclusive prefixes in place, from `state`
// when state_in, the total into `state` when non-null); barrier; the causal pass of chunk r.
template <typename T, int D>
__device__ void cos_short_causal_tc(const CosformerParams& p) {
  constexpr int THREADS = cos_tc_reduce_threads(D), CL = COS_TC_SHORT_CL;
  static_assert(THREADS == COS_TC_CAUSAL_WARPS * 32, "one CTA size for the reduce and the causal pass");
  const int rank = cluster_rank(), bhn = p.b * p.h;
  const i64 slen = cos_state_len(p);
  for (int bh = blockIdx.x / CL; bh < bhn; bh += gridDim.x / CL) {
    cos_reduce_tc<T, D>(p, bh, bhn, rank);
    cluster_sync();
    for (i64 x = (i64)rank * THREADS + threadIdx.x; x < slen; x += (i64)CL * THREADS)
      cos_scan_element(p, bh, x);
    cluster_sync();
    cos_causal_tc<T, D>(p, bh, bhn, rank);
  }
}

#define COS_TC_SHORT(DIM, T, NAME)                                                              \
  extern "C" __global__ void __launch_bounds__(cos_tc_reduce_threads(DIM), 1)                    \
      __cluster_dims__(COS_TC_SHORT_CL, 1, 1)                                                   \
      cosformer_short_tc##DIM##_##NAME(const __grid_constant__ CosformerParams p) {             \
    cos_short_tc<T, DIM>(p);                                                                    \
  }
#define COS_TC_SHORT_CAUSAL(DIM, T, NAME)                                                       \
  extern "C" __global__ void __launch_bounds__(COS_TC_CAUSAL_WARPS * 32, 1)                      \
      __cluster_dims__(COS_TC_SHORT_CL, 1, 1)                                                   \
      cosformer_short_causal_tc##DIM##_##NAME(const __grid_constant__ CosformerParams p) {      \
    cos_short_causal_tc<T, DIM>(p);                                                             \
  }
#else
#define COS_TC_SHORT(DIM, T, NAME)
#define COS_TC_SHORT_CAUSAL(DIM, T, NAME)
#endif

#define COS_TC(DIM, RMIN, MMIN, T, NAME)                                                        \
  extern "C" __global__ void __launch_bounds__(cos_tc_reduce_threads(DIM), RMIN)                \
      cosformer_reduce_tc##DIM##_##NAME(const __grid_constant__ CosformerParams p) {             \
    cos_reduce_tc<T, DIM>(p, blockIdx.x, gridDim.x, blockIdx.y);                                \
  }                                                                                             \
  extern "C" __global__ void __launch_bounds__(COS_TC_MAP_WARPS * 32, MMIN)                      \
      cosformer_map_tc##DIM##_##NAME(const __grid_constant__ CosformerParams p) {                \
    cos_map_tc<T, DIM, COS_TC_MAP_WARPS>(p, blockIdx.y, gridDim.y, blockIdx.x, gridDim.x);      \
  }
// The causal pass's block → (bh slices, chunk, value columns ev), grid (chunks · EH, ≤ B·H) with
// EH = D / cos_tc_causal_dv(D) CTAs per chunk: chunk-major from the last chunk, so that the first
// CTAs re-read the K, V rows that the reduce pass (grid x = bh, y = chunk, so chunk-major too)
// read last and L2 may still hold; a chunk's EH CTAs adjacent, so that they share its Q, K reads
// in L2. With a grid-stride over bh (gridDim.y < B·H) the plain mapping.
template <int EH, int DV>
__device__ __forceinline__ void cos_causal_block(const CosformerParams& p, int& bh0, int& bh_step, int& chunk,
                                                 int& ev) {
  const int bhn = p.b * p.h;
  if ((int)gridDim.y == bhn && (u64)gridDim.x * gridDim.y <= 0xffffffffull) {
    const u32 l = blockIdx.x + gridDim.x * blockIdx.y, lc = l / EH;
    ev = (int)(l % EH) * DV;
    bh0 = (int)(lc % (u32)bhn);
    bh_step = bhn;
    chunk = (int)(gridDim.x / EH - 1 - lc / (u32)bhn);
  } else {
    bh0 = blockIdx.y;
    bh_step = gridDim.y;
    chunk = blockIdx.x / EH;
    ev = (int)(blockIdx.x % EH) * DV;
  }
}

#define COS_TC_CAUSAL(DIM, T, NAME)                                                             \
  extern "C" __global__ void __launch_bounds__(COS_TC_CAUSAL_WARPS * 32, 1)                      \
      cosformer_causal_tc##DIM##_##NAME(const __grid_constant__ CosformerParams p) {             \
    constexpr int DV = cos_tc_causal_dv(DIM);                                                   \
    int bh0, bh_step, chunk, ev;                                                                \
    cos_causal_block<DIM / DV, DV>(p, bh0, bh_step, chunk, ev);                                 \
    cos_causal_tc<T, DIM>(p, bh0, bh_step, chunk, ev);                                          \
  }

// Causal D ∈ {64, 128} in one launch (after a memset of cos_chain_flags): each CTA reduces its
// chunk over its value columns, links the chained scan (cos_tc_chain_link) and runs the causal
// pass of the chunk. Grid: B·H·chunks·EH CTAs (EH = D / cos_tc_causal_dv(D) shares of the value
// columns). CTAs take tickets from the counter in start order: ticket i → share i % EH, then l =
// i / EH → chunk l / (B·H), slice l % (B·H). A CTA thus waits only on CTAs that took earlier
// tickets, so they are running or done whatever order the hardware starts CTAs in, and each
// slice's chunks start in order.
template <typename T, int D>
__device__ void cos_causal_chain_tc(const CosformerParams& p) {
  constexpr int DV = cos_tc_causal_dv(D), EH = D / DV;
  __shared__ int ticket;
  const int bhn = p.b * p.h;
  if (threadIdx.x == 0) ticket = (int)atomicAdd(&cos_chain_flags(p)[(i64)bhn * p.chunks * EH], 1u);
  __syncthreads();
  const int l = ticket / EH;
  cos_causal_tc<T, D, true>(p, l % bhn, bhn, l / bhn, ticket % EH * DV);
}

#define COS_TC_CAUSAL_CHAIN(DIM, T, NAME)                                                       \
  extern "C" __global__ void __launch_bounds__(COS_TC_CAUSAL_WARPS * 32, 1)                      \
      cosformer_causal_chain_tc##DIM##_##NAME(const __grid_constant__ CosformerParams p) {       \
    cos_causal_chain_tc<T, DIM>(p);                                                             \
  }

// D = 128: one CTA per SM for the reduce (512 threads, 127 registers), two for the map (187/255
// registers, 106 KB of shared memory); the causal pass with two CTAs per chunk, one per half of
// the value columns, separate or chained. sm_90 only: on sm_80 the bf16 map spills, and Rust takes the CUDA-core
// kernels there.
#if !defined(__CUDA_ARCH__) || __CUDA_ARCH__ >= 900
#define COS_TC_128(T, NAME) \
  COS_TC(128, 1, 1, T, NAME) COS_TC_CAUSAL(128, T, NAME) COS_TC_CAUSAL_CHAIN(128, T, NAME)
#else
#define COS_TC_128(T, NAME)
#endif

#define COS_TC_DTYPE(T, NAME)                                                                   \
  COS_TC(32, 6, 6, T, NAME)                                                                     \
  COS_TC(48, 4, 3, T, NAME)                                                                     \
  COS_TC(64, 2, 3, T, NAME)                                                                     \
  COS_TC_128(T, NAME)                                                                           \
  COS_TC_CAUSAL(32, T, NAME)                                                                    \
  COS_TC_CAUSAL(64, T, NAME)                                                                    \
  COS_TC_CAUSAL_CHAIN(64, T, NAME)                                                              \
  COS_TC_SHORT(32, T, NAME)                                                                     \
  COS_TC_SHORT(48, T, NAME)                                                                     \
  COS_TC_SHORT(64, T, NAME)                                                                     \
  COS_TC_SHORT_CAUSAL(64, T, NAME)

// Mirrored in src/ops/cosformer/tc.rs; a change here must be made there too.
static_assert(cos_tc_reduce_smem(64) == 18432 && cos_tc_map_smem(64) == 37888 &&
                  cos_tc_short_smem(64) == 56320 && cos_tc_short_smem(32) == 10752 &&
                  cos_tc_short_smem(48) == 22272 && cos_tc_short_causal_smem(64) == 83968 &&
                  cos_tc_causal_smem(64) == 83968 && cos_tc_causal_smem(128) == 136192 &&
                  cos_tc_reduce_threads(64) == 256 &&
                  cos_tc_reduce_threads(32) == 64 && cos_tc_reduce_threads(128) == 512,
              "cosFormer tensor-core launch geometry changed: update Rust");
