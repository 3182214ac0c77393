// The causal cosFormer tensor-core pass (cosformer_tc.cuh), separate or chained: the chained
// scan's flags and links, the pass itself, its block mapping, and the chained kernel's tickets.
#pragma once
#include "cosformer_tc_frag.cuh"

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
// SHARED_PRE (not CHAIN): the exclusive prefix from shared memory at `pre_addr` instead of
// `partial` (cos_short_causal_tc).
template <typename T, int D, bool CHAIN = false, bool SHARED_PRE = false>
__device__ void cos_causal_tc(const CosformerParams& p, int bh0, int bh_step, int chunk, int ev = 0,
                              u32 pre_addr = 0) {
  constexpr int WARPS = COS_TC_CAUSAL_WARPS, THREADS = WARPS * 32, BR = COS_TC_BLOCK;
  constexpr int DV = cos_tc_causal_dv(D);  // value columns [ev, ev + DV) are this CTA's
  constexpr int LD = D + 8, LDV = DV + 8, LB = cos_tc_state_ld(DV), KT = D / 16;
  constexpr int OW = DV / 2, ONT = OW / 8;                    // output phase: columns per warp
  constexpr int WC = D / 16, UES = WARPS / WC, UW = DV / UES, UNT = UW / 8;  // update phase
  static_assert(D == 32 || D == 64 || D == 128, "causal tensor-core path: D in {32, 64, 128}");
  static_assert(!CHAIN || cos_tc_reduce_smem(D, DV) <= cos_tc_causal_smem(D), "the chain's reduce stages fit");
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
      if constexpr (SHARED_PRE)
        cos_tc_get_state<D, UNT>([&](i64 i) { return __uint_as_float(lds_u32(pre_addr + (u32)i * 4)); }, ct * 16 + g,
                                 ev + eu, zw, ss, sc, zs, zc);
      else
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
            ldmatrix_x4_at(bk, smem_addr_folded(&ks[kg * 16 + (mat / 2) * 8 + r8][kt * 16 + (mat % 2) * 8]));
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
            ldmatrix_x4_trans_at(bf, smem_addr_folded(&vs[kg * 16 + r8 + (mat % 2) * 8][eo + j * 8 + (mat / 2) * 8]));
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
