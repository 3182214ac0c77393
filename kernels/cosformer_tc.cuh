// cosFormer tensor-core path (SPEC §2) for f16/bf16, D == Dv, 16-byte-aligned rows. Features are
// never stored: ReLU is applied to the loaded 16-bit fragments, and the sin/cos re-weighting is
// folded into an operand in fp32 right before each mma (reduce state sums: as hi + lo 16-bit parts,
// two mmas, so the fp32 state matches the CUDA-core kernels' accuracy), or applied to the fp32
// products (the state product of the map and causal passes). Accumulation is fp32.
//   cos_reduce_tc  D ∈ {32, 48, 64, 80, 96, 128}: per-chunk states, the layout of cos_reduce (so the
//                  CUDA-core finalize and scan are shared)
//   cos_map_tc     D ∈ {32, 48, 64, 80, 96, 128}: non-causal outputs from the summed state
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
//                  thread-block cluster of 8 CTAs per (b,h), the state exchanged in distributed
//                  shared memory; cos_short_causal_tc (D = 64) the same for reduce, scan and
//                  the causal pass (only a prefill's returned state goes to global memory).
// The state enters mma as a 16-bit operand scaled by a power of two (α for KV, β for z) chosen
// from its maximum, so that sums over millions of rows neither overflow nor underflow; outputs
// divide the scales out in fp32. Dynamic shared memory sizes: cos_tc_*_smem (mirrored in Rust).
// D = 128 is built for sm_90 only (see COS_TC_128).
// Files: cosformer_tc_frag.cuh (constants, fragment-level pieces, the state's register layout),
// cosformer_tc_causal.cuh (the causal pass, separate or chained); here the reduce, map and short
// kernels and every instantiation.
#pragma once
#include "cosformer_tc_frag.cuh"
#include "cosformer_tc_causal.cuh"

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


// The map pass's query tiles tile0, tile0 + tile_step, … of one slice (q, o at its row 0), with
// the state operand bs (scales divided out by inv_alpha, inv_beta) complete and tile0's rows
// already staged into qs[0] and committed. Ends with every copy complete.
template <typename T, int D, int WARPS>
__device__ __forceinline__ void cos_map_tc_tiles(const CosformerParams& p, const u16* q, u16* o,
                                                 u16 (*qs)[WARPS * 16][D + 8], u16 (*bs)[cos_tc_state_ld(D)],
                                                 float inv_alpha, float inv_beta, int tile0, int tile_step) {
  constexpr int THREADS = WARPS * 32, ROWS = WARPS * 16;
  constexpr int LD = D + 8, LB = cos_tc_state_ld(D), KT = D / 16;
  // Value columns per pass: D > 64 in passes of 32 (16 for D = 80) columns, for registers.
  constexpr int EW = D <= 64 ? D : (D % 32 == 0 ? 32 : 16), EP = D / EW, NT = EW / 8;
  static_assert(D % EW == 0 && EW % 8 == 0, "whole n-tiles per pass");
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, g = lane / 4, t = lane % 4;
  const int tiles = div_up(p.n, ROWS);
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

// Map pass (non-causal). Grid: x = CTAs striding over 64-row tiles, y = bh (grid-stride). The
// summed state (fp32) is scaled and kept in shared memory as the B operand; each warp maps 16
// query rows, D > 64 in two passes over the value columns. O_i = (sinθ_i q_i·KVs + cosθ_i q_i·KVc)
// / max(sinθ_i q_i·zs + cosθ_i q_i·zc, ε) with the scales divided out. Traffic: Q read once, O
// written once, the state from L2.
// (b,h) slices bh0, bh0 + bh_step, …; query tiles of WARPS·16 rows tile0, tile0 + tile_step, ….
template <typename T, int D, int WARPS>
__device__ void cos_map_tc(const CosformerParams& p, int bh0, int bh_step, int tile0, int tile_step) {
  constexpr int THREADS = WARPS * 32, ROWS = WARPS * 16;
  constexpr int LD = D + 8, LB = cos_tc_state_ld(D);
  auto bs = reinterpret_cast<u16(*)[LB]>(cos_tc_smem);
  auto qs = reinterpret_cast<u16(*)[ROWS][LD]>(cos_tc_smem + D * LB);
  __shared__ float red[2][WARPS];
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
    // The state (2·D² + 2·D floats, in L2) is read SB values per thread at a time, all in flight:
    // one L2 round trip per few values made this prologue ≈ 5 µs of every CTA at D = 64. (The max
    // is exact in any order; fmaxf skips NaN.)
    constexpr int SB = 8;
    float mk = 0.f, mz = 0.f;
#pragma unroll 1
    for (int i0 = threadIdx.x; i0 < 2 * D * D; i0 += SB * THREADS) {
      float v[SB];
      load_batch(v, st, i0, THREADS, 2 * D * D);
#pragma unroll
      for (int u = 0; u < SB; ++u) mk = fmaxf(mk, fabsf(v[u]));
    }
    for (int i = threadIdx.x; i < 2 * D; i += THREADS) mz = fmaxf(mz, fabsf(st[2 * ddv + i]));
    cos_tc_block_max<WARPS>(mk, mz, red);
    const float alpha = pow2_scale(mk), beta = pow2_scale(mz);
    const float inv_alpha = pow2_inv(alpha), inv_beta = pow2_inv(beta);
#pragma unroll 1
    for (int i0 = threadIdx.x; i0 < D * D; i0 += SB * THREADS) {
      float vc[SB], vs[SB];
      load_batch(vc, st + ddv, i0, THREADS, D * D);
      load_batch(vs, st, i0, THREADS, D * D);
#pragma unroll
      for (int u = 0; u < SB; ++u) {
        const int i = i0 + u * THREADS, c = i / D, e = i % D;
        if (i < D * D) {
          bs[c][e] = from_f32<T>(vc[u] * alpha).bits;      // KVc
          bs[c][D + e] = from_f32<T>(vs[u] * alpha).bits;  // KVs
        }
      }
    }
    for (int i = threadIdx.x; i < D * 16; i += THREADS) {
      const int c = i / 16, x = i % 16;
      bs[c][2 * D + x] = from_f32<T>(st[2 * ddv + (x < 8 ? D : 0) + c] * beta).bits;  // zc ×8, zs ×8
    }
    __syncthreads();

    cos_map_tc_tiles<T, D, WARPS>(p, q, o, qs, bs, inv_alpha, inv_beta, tile0, tile_step);
  }
}

// Short non-causal sequences in one launch (sm_90: thread-block clusters of COS_TC_SHORT_CL CTAs;
// a cluster takes the (b,h) slices cl0, cl0 + clusters, …), the state never leaving the cluster:
//  1. CTA r reduces key chunk r (p.rows_per_chunk rows) into registers, then stages its first
//     query tile (it lands while the state is exchanged).
//  2. It pushes each partial element to the CTA that owns it (CTA x/PER owns elements
//     [x·PER, x·PER + PER)): recv[r][·] in that CTA's shared memory (st.shared::cluster).
//  3. Barrier. CTA r sums its elements over the ranks in rank order (cos_finalize's sum of the
//     chunks, bit for bit) and pushes its maxima of |KV| and |z| to every CTA.
//  4. Barrier. Every CTA has the same scales (pow2_scale of the maxima); CTA r writes its elements,
//     scaled to 16 bits, into every CTA's state operand bs (the layout of cos_map_tc's prologue).
//  5. Barrier. CTA r maps query tiles r, r + CL, … (cos_map_tc_tiles).
// No partial or state goes through global memory. The earlier form (partials to global,
// barrier, sums to global, barrier, then a map prologue reading the state twice) waited out about
// a dozen dependent L2 round trips per CTA. Its sums and scales are taken in the same order here.
// Replaces reduce → finalize → map (three launches) where N, S ≤ COS_TC_SHORT_MAX. Dynamic shared
// memory: cos_tc_short_smem.
#define COS_TC_SHORT_CL 8
#define COS_TC_SHORT_MAX 4096
// State elements each CTA of the cluster owns (even, so that pairs never straddle two owners).
__host__ __device__ constexpr int cos_tc_short_per(int d) {
  return ((2 * d * d + 2 * d + COS_TC_SHORT_CL - 1) / COS_TC_SHORT_CL + 1) / 2 * 2;
}
// u16 elements of the first region: the reduce's staging, later the map's two query tiles.
// (Two query tiles of cos_tc_reduce_threads(d) / 2 rows each.)
__host__ __device__ constexpr int cos_tc_short_stage(int d) {
  return cos_tc_reduce_smem(d) / 2 > cos_tc_reduce_threads(d) * (d + 8) ? cos_tc_reduce_smem(d) / 2
                                                                        : cos_tc_reduce_threads(d) * (d + 8);
}
// Bytes: the first region, then the pushed partials (fp32 [CL][PER]), later the state operand.
__host__ __device__ constexpr int cos_tc_short_smem(int d) {
  return cos_tc_short_stage(d) * 2 + (COS_TC_SHORT_CL * cos_tc_short_per(d) * 4 > d * cos_tc_state_ld(d) * 2
                                          ? COS_TC_SHORT_CL * cos_tc_short_per(d) * 4
                                          : d * cos_tc_state_ld(d) * 2);
}

// The chained causal kernel's dynamic shared memory: the reduce's staging and the causal pass's
// buffers share it.
__host__ __device__ constexpr int cos_tc_chain_smem(int d) {
  return cos_tc_causal_smem(d) > cos_tc_reduce_smem(d) ? cos_tc_causal_smem(d) : cos_tc_reduce_smem(d);
}
// The causal one-launch kernel's: that region, then the pushed partials (fp32 [CL][PER]) and the
// CTA's exclusive prefix state (fp32, the state's length), both outside it.
__host__ __device__ constexpr int cos_tc_short_causal_smem(int d) {
  return cos_tc_chain_smem(d) + (COS_TC_SHORT_CL * cos_tc_short_per(d) + 2 * d * d + 2 * d) * 4;
}

#if !defined(__CUDA_ARCH__) || __CUDA_ARCH__ >= 900
// Step 2 of both one-launch kernels: the reduce's registers (cos_reduce_tc_sums, all D value
// columns), each partial element to the CTA that owns it (CTA x / PER owns elements
// [x·PER, x·PER + PER)): into recv[rank][·] of that CTA's shared memory (recv_addr: a local shared
// address).
template <int D, int NT>
__device__ __forceinline__ void cos_short_push_partials(u32 recv_addr, int rank, const float (&as)[NT][4],
                                                        const float (&ac)[NT][4], const float (&zs)[4],
                                                        const float (&zc)[4]) {
  constexpr int WC = D / 16, EW = D / cos_tc_reduce_esplit(D), PER = cos_tc_short_per(D);
  const int warp = threadIdx.x / 32, g = threadIdx.x % 32 / 4;
  cos_tc_put_state<D, NT>(
      [&](i64 i, float x) {
        const int owner = (int)i / PER, off = (int)i - owner * PER;
        st_cluster_u32_at(cluster_map(recv_addr, owner) + (u32)(rank * PER + off) * 4, __float_as_uint(x));
      },
      (warp % WC) * 16 + g, (warp / WC) * EW, warp < WC, as, ac, zs, zc);
}

// Step 4 for one pair of owned elements x, x + 1 (x even, both below the state length) with sums
// v0, v1: into every CTA's bs at `bs_addr` (a local shared address).
template <typename T, int D>
__device__ __forceinline__ void cos_short_push_operand(u32 bs_addr, int x, float v0, float v1, float alpha,
                                                       float beta) {
  constexpr int DD = D * D, LB = cos_tc_state_ld(D);
  if (x < 2 * DD) {  // KVs[c][e] → bs[c][D + e], KVc[c][e] → bs[c][e]
    const int y = x < DD ? x : x - DD, c = y / D, col = (x < DD ? D : 0) + y % D;
    const u32 at = (u32)(c * LB + col) * 2, v = pack2<T>(v0 * alpha, v1 * alpha);
#pragma unroll 1
    for (int r = 0; r < COS_TC_SHORT_CL; ++r) st_cluster_u32_at(cluster_map(bs_addr, r) + at, v);
    return;
  }
#pragma unroll
  for (int u = 0; u < 2; ++u) {  // zs[c] → bs[c][2D + 8 …], zc[c] → bs[c][2D + 0 …], 8 copies each
    const int z = x + u - 2 * DD, c = z < D ? z : z - D;
    const float w = (u ? v1 : v0) * beta;
    const u32 at = (u32)(c * LB + 2 * D + (z < D ? 8 : 0)) * 2, v = pack2<T>(w, w);
#pragma unroll 1
    for (int r = 0; r < COS_TC_SHORT_CL; ++r)
#pragma unroll
      for (int k = 0; k < 4; ++k) st_cluster_u32_at(cluster_map(bs_addr, r) + at + 4 * k, v);
  }
}

template <typename T, int D>
__device__ void cos_short_tc(const CosformerParams& p) {
  constexpr int THREADS = cos_tc_reduce_threads(D), WARPS = THREADS / 32, CL = COS_TC_SHORT_CL;
  constexpr int ROWS = WARPS * 16, LD = D + 8, LB = cos_tc_state_ld(D);
  constexpr int DD = D * D, SLEN = 2 * DD + 2 * D, PER = cos_tc_short_per(D);
  constexpr int NT = cos_tc_reduce_nt(D);
  constexpr int PAIRS = (PER / 2 + THREADS - 1) / THREADS;  // owned pairs per thread
  auto qs = reinterpret_cast<u16(*)[ROWS][LD]>(cos_tc_smem);
  float* recv = reinterpret_cast<float*>(cos_tc_smem + cos_tc_short_stage(D));  // [CL][PER]
  auto bs = reinterpret_cast<u16(*)[LB]>(cos_tc_smem + cos_tc_short_stage(D));  // aliases recv
  __shared__ float maxima[CL][2];
  __shared__ float red[2][WARPS];
  const int rank = cluster_rank(), bhn = p.b * p.h;
  const int tiles = div_up(p.n, ROWS);
  const u32 recv_addr = smem_addr(recv), bs_addr = smem_addr(&bs[0][0]), max_addr = smem_addr(&maxima[0][0]);
  // Every CTA of the cluster has started before any pushes into it (the wait is before step 2).
  cluster_arrive();
  bool arrived = true;
  for (int bh = blockIdx.x / CL; bh < bhn; bh += gridDim.x / CL) {
    const int b = bh / p.h, h = bh % p.h;
    const u16* k = reinterpret_cast<const u16*>(p.k) + (b * p.k_sb + h * p.k_sh);
    const u16* v = reinterpret_cast<const u16*>(p.v) + (b * p.v_sb + h * p.v_sh);
    const u16* q = reinterpret_cast<const u16*>(p.q) + (b * p.q_sb + h * p.q_sh);
    u16* o = reinterpret_cast<u16*>(p.o) + (b * p.o_sb + h * p.o_sh);

    // 1. Key chunk `rank` (empty past S: zeros), then the first query tile into the staging.
    float as[NT][4], ac[NT][4], zs[4], zc[4];
    const int row_begin = rank * p.rows_per_chunk, row_end = min(p.s, row_begin + p.rows_per_chunk);
    cos_reduce_tc_sums<T, D>(p, k, v, row_begin, row_end, as, ac, zs, zc);  // ends after a barrier
    if (rank < tiles) tc_stage<D, LD, ROWS, THREADS>(qs[0], q, p.q_sn, rank * ROWS, p.n);
    cp_async_commit();

    // 2. Each partial element to its owner.
    if (arrived) cluster_wait();
    arrived = false;
    cos_short_push_partials<D>(recv_addr, rank, as, ac, zs, zc);
    cluster_sync();

    // 3. The owned elements summed in rank order; the maxima to every CTA.
    float sum[PAIRS][2], mk = 0.f, mz = 0.f;
#pragma unroll
    for (int u = 0; u < PAIRS; ++u) {
      const int off = 2 * (threadIdx.x + u * THREADS), x = rank * PER + off;
#pragma unroll
      for (int y = 0; y < 2; ++y) {
        float acc = 0.f;
        if (off < PER && x < SLEN) {
#pragma unroll
          for (int r = 0; r < CL; ++r) acc += recv[r * PER + off + y];
          if (x < 2 * DD)
            mk = fmaxf(mk, fabsf(acc));  // (fmaxf skips NaN, as the map prologue's does)
          else
            mz = fmaxf(mz, fabsf(acc));
        }
        sum[u][y] = acc;
      }
    }
    cos_tc_block_max<WARPS>(mk, mz, red);  // ends on a barrier: every thread has both
    if (threadIdx.x < CL) {
      const u32 at = cluster_map(max_addr, threadIdx.x) + rank * 8;
      st_cluster_u32_at(at, __float_as_uint(mk));
      st_cluster_u32_at(at + 4, __float_as_uint(mz));
    }
    cluster_sync();

    // 4. Every CTA's state operand (bs aliases recv, which every CTA is done reading).
#pragma unroll
    for (int r = 0; r < CL; ++r) {
      mk = fmaxf(mk, maxima[r][0]);
      mz = fmaxf(mz, maxima[r][1]);
    }
    const float alpha = pow2_scale(mk), beta = pow2_scale(mz);
#pragma unroll
    for (int u = 0; u < PAIRS; ++u) {
      const int off = 2 * (threadIdx.x + u * THREADS), x = rank * PER + off;
      if (off < PER && x < SLEN) cos_short_push_operand<T, D>(bs_addr, x, sum[u][0], sum[u][1], alpha, beta);
    }
    cluster_sync();

    // 5. Query tiles rank, rank + CL, ….
    cos_map_tc_tiles<T, D, WARPS>(p, q, o, qs, bs, pow2_inv(alpha), pow2_inv(beta), rank, CL);
    // A next slice's pushes into recv (= bs) wait until every CTA has mapped this one.
    if (bh + (int)gridDim.x / CL < bhn) cluster_sync();
  }
  if (arrived) cluster_wait();  // (no slice: leave the arrival matched)
}

// Steps 1 and 2 of cos_short_causal_tc for slice bh, with the cluster wait matching the kernel's
// first arrival between them when `wait`. (A function of its own: inlined into the kernel, the
// reduce's registers and the causal pass's were allocated together, and spilled.)
template <typename T, int D>
__device__ __noinline__ void cos_short_causal_push(const CosformerParams& p, int bh, int rank, u32 recv_addr,
                                                   bool wait) {
  constexpr int NT = cos_tc_reduce_nt(D);
  const int b = bh / p.h, h = bh % p.h;
  const u16* k = reinterpret_cast<const u16*>(p.k) + (b * p.k_sb + h * p.k_sh);
  const u16* v = reinterpret_cast<const u16*>(p.v) + (b * p.v_sb + h * p.v_sh);
  float as[NT][4], ac[NT][4], zs[4], zc[4];
  const int row_begin = rank * p.rows_per_chunk, row_end = min(p.s, row_begin + p.rows_per_chunk);
  cos_reduce_tc_sums<T, D>(p, k, v, row_begin, row_end, as, ac, zs, zc);
  if (wait) cluster_wait();
  cos_short_push_partials<D>(recv_addr, rank, as, ac, zs, zc);
}

// Causal short sequences (N ≤ COS_TC_SHORT_MAX, D = 64: the reduce and the causal pass both run
// 8 warps) in one launch, the state never leaving the cluster (as cos_short_tc):
//  1. CTA r reduces chunk r (p.chunks = CL; chunks past N are empty: zero sums) into registers.
//  2. It pushes each partial element to the CTA that owns it (recv, as cos_short_tc). Barrier.
//  3. Each owner scans its elements over the chunks in chunk order (cos_scan_element's adds in its
//     order: from `state` when state_in, the total into `state` when non-null) and stores chunk
//     r's exclusive prefix into CTA r's `pre`. Barrier.
//  4. CTA r runs the causal pass of chunk r from that prefix.
// The earlier form (partials to global, barrier, the scan through global, barrier, the prefix read
// from global) waited out a chain of dependent L2 round trips between the reduce and the pass;
// the values are the same, bit for bit. recv and pre lie outside the staging and the pass's
// buffers: the owners read a slice's recv, and the pass reads its pre, before the barriers that
// precede the next slice's writes to them.
template <typename T, int D>
__device__ void cos_short_causal_tc(const CosformerParams& p) {
  constexpr int THREADS = cos_tc_reduce_threads(D), CL = COS_TC_SHORT_CL;
  constexpr int SLEN = 2 * D * D + 2 * D, PER = cos_tc_short_per(D);  // D = Dv
  static_assert(THREADS == COS_TC_CAUSAL_WARPS * 32, "one CTA size for the reduce and the causal pass");
  float* recv = reinterpret_cast<float*>(cos_tc_smem + cos_tc_chain_smem(D) / 2);  // [CL][PER]
  const u32 recv_addr = smem_addr(recv), pre_addr = recv_addr + CL * PER * 4;      // pre: [SLEN]
  const int rank = cluster_rank(), bhn = p.b * p.h;
  // Every CTA of the cluster has started before any pushes into it (the wait is before step 2).
  cluster_arrive();
  bool arrived = true;
  for (int bh = blockIdx.x / CL; bh < bhn; bh += gridDim.x / CL) {
    __syncthreads();  // the previous slice's causal pass is done with the staging
    cos_short_causal_push<T, D>(p, bh, rank, recv_addr, arrived);  // 1, 2
    arrived = false;
    cluster_sync();

    // 3. The owned elements' exclusive prefixes, chunk by chunk, into each chunk's CTA.
    float* st = p.state ? reinterpret_cast<float*>(p.state) + (i64)bh * SLEN : nullptr;
    for (int off = threadIdx.x; off < PER && rank * PER + off < SLEN; off += THREADS) {
      const int x = rank * PER + off;
      float run = (st != nullptr && p.state_in) ? st[x] : 0.f;
#pragma unroll 1
      for (int r = 0; r < CL; ++r) {
        st_cluster_u32_at(cluster_map(pre_addr, r) + (u32)x * 4, __float_as_uint(run));
        run += recv[r * PER + off];
      }
      if (st != nullptr) st[x] = run;
    }
    cluster_sync();

    // 4. The causal pass of chunk `rank`.
    cos_causal_tc<T, D, false, true>(p, bh, bhn, rank, 0, pre_addr);
  }
  if (arrived) cluster_wait();  // (no slice: leave the arrival matched)
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
  COS_TC(80, 2, 2, T, NAME)                                                                     \
  COS_TC(96, 1, 2, T, NAME)                                                                     \
  COS_TC_128(T, NAME)                                                                           \
  COS_TC_CAUSAL(32, T, NAME)                                                                    \
  COS_TC_CAUSAL(64, T, NAME)                                                                    \
  COS_TC_CAUSAL_CHAIN(64, T, NAME)                                                              \
  COS_TC_SHORT(32, T, NAME)                                                                     \
  COS_TC_SHORT(48, T, NAME)                                                                     \
  COS_TC_SHORT(64, T, NAME)                                                                     \
  COS_TC_SHORT_CAUSAL(64, T, NAME)

// Mirrored in src/ops/cosformer/tc.rs; a change here must be made there too.
static_assert(cos_tc_reduce_smem(64) == 36864 && cos_tc_reduce_smem(80) == 22528 && cos_tc_map_smem(64) == 37888 &&
                  cos_tc_short_smem(64) == 70144 && cos_tc_short_smem(32) == 28928 &&
                  cos_tc_short_smem(48) == 47488 && cos_tc_short_per(64) == 1040 && cos_tc_chain_smem(64) == 83968 &&
                  cos_tc_short_causal_smem(64) == 150528 &&
                  cos_tc_causal_smem(64) == 83968 && cos_tc_causal_smem(128) == 136192 &&
                  cos_tc_reduce_threads(64) == 256 &&
                  cos_tc_reduce_threads(32) == 64 && cos_tc_reduce_threads(128) == 512 &&
                  cos_tc_reduce_threads(80) == 320 && cos_tc_reduce_threads(96) == 384 &&
                  cos_tc_map_smem(80) == 51968 && cos_tc_map_smem(96) == 68096,
              "cosFormer tensor-core launch geometry changed: update Rust");
