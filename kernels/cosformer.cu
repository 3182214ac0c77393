// cosFormer — ReLU features with cos(θ_i − θ_j) re-weighting (SPEC §2), CUDA-core fp32 kernels.
// Non-causal, three launches:
//   cosformer_reduce   per (chunk, bh, c×e tile): partial states of the chunk's keys
//   cosformer_finalize per (element block, bh): fixed-order sum over chunks into `state`
//   cosformer_map      per (row block, bh, e tile): O_i from q_i and the summed state
// Causal (N = S), three launches over chunks of `rows_per_chunk` rows:
//   cosformer_reduce   the same kernel: each chunk's own state contribution
//   cosformer_scan     exclusive prefix over chunks in place (fixed order); total into `state`
//   cosformer_causal   per (chunk, bh, e tile): walks the chunk's blocks from its prefix state,
//                      masked products inside each block, the state carried across blocks
// Decode: cosformer_step adds one token per (b,h) to `state` and reads its output.
// Features sin/cos are never stored in global memory; every reduction runs in a fixed order.
#include "cosformer.cuh"

static_assert(sizeof(CosformerParams) == COSFORMER_PARAMS_SIZE,
              "CosformerParams layout changed: update Rust");

template <typename T>
__device__ __forceinline__ const T* cptr(u64 p) { return reinterpret_cast<const T*>(p); }

__device__ __forceinline__ i64 cos_state_len(const CosformerParams& p) {
  return 2 * (i64)p.d * p.dv + 2 * (i64)p.d;
}

// sin θ and cos θ of sequence row `row`: θ = (π/2)·pos/M with pos = pos0 + row + 1.
__device__ __forceinline__ void cos_angle(const CosformerParams& p, int row, float* sn, float* cs) {
  float x = (float)((i64)p.pos0 + row + 1) / (2.0f * (float)p.m);
  sincospif(x, sn, cs);
}

__device__ __forceinline__ float cos_feat(float x, int relu) { return relu ? fmaxf(x, 0.f) : x; }

// Zeroes a thread's state-sum accumulators (cos_sum_stage's).
__device__ __forceinline__ void cos_zero_sums(float (&as)[COS_TILE / 16][COS_TILE / 16],
                                              float (&ac)[COS_TILE / 16][COS_TILE / 16], float& zs, float& zc) {
#pragma unroll
  for (int i = 0; i < COS_TILE / 16; ++i)
#pragma unroll
    for (int j = 0; j < COS_TILE / 16; ++j) as[i][j] = ac[i][j] = 0.f;
  zs = zc = 0.f;
}

// Writes (ADD: adds) a thread's tile of the sums into state `st`: KVs[c][e] and KVc[c][e] for its
// c = c0 + tc + 16i, e = e0 + te + 16j inside (d, dv).
template <bool ADD>
__device__ __forceinline__ void cos_put_sums(const CosformerParams& p, float* st, int c0, int e0,
                                             const float (&as)[COS_TILE / 16][COS_TILE / 16],
                                             const float (&ac)[COS_TILE / 16][COS_TILE / 16]) {
  const int tc = threadIdx.x / 16, te = threadIdx.x % 16;
  const i64 ddv = (i64)p.d * p.dv;
#pragma unroll
  for (int i = 0; i < COS_TILE / 16; ++i)
#pragma unroll
    for (int j = 0; j < COS_TILE / 16; ++j) {
      const int c = c0 + tc + 16 * i, e = e0 + te + 16 * j;
      if (c < p.d && e < p.dv) {
        float& ks = st[(i64)c * p.dv + e];
        float& kc = st[ddv + (i64)c * p.dv + e];
        ks = ADD ? ks + as[i][j] : as[i][j];
        kc = ADD ? kc + ac[i][j] : ac[i][j];
      }
    }
}

// One stage of key rows for the state sums: stages rows [row0, row0 + COS_ROWS) (zero at or past
// row_end) of k columns [c0, c0 + COS_TILE) as ks = k·sinθ, kc = k·cosθ and of v columns
// [e0, e0 + COS_TILE) as vs (sn, cs: the stage's angles), then, after a barrier, adds them to the
// thread's 4×4 tile: as += ksᵀv, ac += kcᵀv; with zcols, threads below COS_TILE also sum their
// column into zs, zc. The caller's barrier must precede it (the buffers' previous readers).
template <typename T>
__device__ __forceinline__ void cos_sum_stage(const CosformerParams& p, const T* k, const T* v, int row0, int row_end,
                                              int c0, int e0, const float* sn, const float* cs,
                                              float (*ks)[COS_TILE + 1], float (*kc)[COS_TILE + 1],
                                              float (*vs)[COS_TILE + 1], float (&as)[COS_TILE / 16][COS_TILE / 16],
                                              float (&ac)[COS_TILE / 16][COS_TILE / 16], bool zcols, float& zs,
                                              float& zc) {
  constexpr int MT = COS_TILE / 16;
  const int tc = threadIdx.x / 16, te = threadIdx.x % 16;
  for (int i = threadIdx.x; i < COS_ROWS * COS_TILE; i += COS_THREADS) {
    const int r = i / COS_TILE, c = i % COS_TILE, row = row0 + r;
    float kx = 0.f, vx = 0.f;
    if (row < row_end) {
      if (c0 + c < p.d) kx = cos_feat(to_f32(k[(i64)row * p.k_sn + c0 + c]), p.relu);
      if (e0 + c < p.dv) vx = to_f32(v[(i64)row * p.v_sn + e0 + c]);
    }
    ks[r][c] = kx * sn[r];
    kc[r][c] = kx * cs[r];
    vs[r][c] = vx;
  }
  __syncthreads();
  if (zcols && threadIdx.x < COS_TILE) {
    for (int r = 0; r < COS_ROWS; ++r) {
      zs += ks[r][threadIdx.x];
      zc += kc[r][threadIdx.x];
    }
  }
#pragma unroll 4
  for (int r = 0; r < COS_ROWS; ++r) {
    float ksr[MT], kcr[MT], vr[MT];
#pragma unroll
    for (int i = 0; i < MT; ++i) {
      ksr[i] = ks[r][tc + 16 * i];
      kcr[i] = kc[r][tc + 16 * i];
      vr[i] = vs[r][te + 16 * i];
    }
#pragma unroll
    for (int i = 0; i < MT; ++i)
#pragma unroll
      for (int j = 0; j < MT; ++j) {
        as[i][j] = fmaf(ksr[i], vr[j], as[i][j]);
        ac[i][j] = fmaf(kcr[i], vr[j], ac[i][j]);
      }
  }
}

// Reduce pass: partial[bh][chunk] = Σ_{j in chunk} (k_j sinθ_j) v_jᵀ, (k_j cosθ_j) v_jᵀ, k_j sinθ_j,
// k_j cosθ_j, restricted to one 64×64 (c, e) tile. Grid: x = chunk, y = bh (grid-stride),
// z = c-tile × e-tile. Traffic: K, V rows of the chunk once per tile; one state tile written.
template <typename T>
__device__ void cos_reduce(const CosformerParams& p) {
  constexpr int MT = COS_TILE / 16;
  __shared__ float ks[COS_ROWS][COS_TILE + 1];
  __shared__ float kc[COS_ROWS][COS_TILE + 1];
  __shared__ float vs[COS_ROWS][COS_TILE + 1];
  __shared__ float rs[COS_ROWS], rc[COS_ROWS];
  const int e_tiles = div_up(p.dv, COS_TILE);
  const int c0 = (blockIdx.z / e_tiles) * COS_TILE, e0 = (blockIdx.z % e_tiles) * COS_TILE;
  const bool zcols = (blockIdx.z % e_tiles) == 0;  // one e-tile per c-tile also sums zs, zc
  const int chunk = blockIdx.x;
  const int row_begin = chunk * p.rows_per_chunk;
  const int row_end = min(p.s, row_begin + p.rows_per_chunk);
  const i64 slen = cos_state_len(p);

  for (int bh = blockIdx.y; bh < p.b * p.h; bh += gridDim.y) {
    const int b = bh / p.h, h = bh % p.h;
    const T* k = cptr<T>(p.k) + b * p.k_sb + h * p.k_sh;
    const T* v = cptr<T>(p.v) + b * p.v_sb + h * p.v_sh;
    float as[MT][MT], ac[MT][MT], zs, zc;  // zs, zc: thread t < COS_TILE owns column c0 + t
    cos_zero_sums(as, ac, zs, zc);

    for (int row0 = row_begin; row0 < row_end; row0 += COS_ROWS) {
      __syncthreads();  // previous stage fully consumed
      if (threadIdx.x < COS_ROWS) {
        float sn = 0.f, cs = 0.f;
        if (row0 + (int)threadIdx.x < row_end) cos_angle(p, row0 + threadIdx.x, &sn, &cs);
        rs[threadIdx.x] = sn;
        rc[threadIdx.x] = cs;
      }
      __syncthreads();
      cos_sum_stage<T>(p, k, v, row0, row_end, c0, e0, rs, rc, ks, kc, vs, as, ac, zcols, zs, zc);
    }

    float* out = reinterpret_cast<float*>(p.partial) + ((i64)bh * p.chunks + chunk) * slen;
    const i64 ddv = (i64)p.d * p.dv;
    cos_put_sums<false>(p, out, c0, e0, as, ac);
    if (zcols && threadIdx.x < COS_TILE && c0 + (int)threadIdx.x < p.d) {
      out[2 * ddv + c0 + threadIdx.x] = zs;
      out[2 * ddv + p.d + c0 + threadIdx.x] = zc;
    }
  }
}

// Finalize (non-causal): state[bh][x] = Σ_chunk partial[bh][chunk][x], chunks in order.
// Grid: x = block of COS_THREADS state elements, y = bh (grid-stride).
// Traffic: the partials read once, one state written.
// state[bh][x] = Σ over chunks, in chunk order, of partial[bh][chunk][x].
__device__ __forceinline__ void cos_finalize_element(const CosformerParams& p, int bh, i64 x) {
  const i64 slen = cos_state_len(p);
  const float* part = reinterpret_cast<const float*>(p.partial) + (i64)bh * p.chunks * slen;
  // Batches of B chunks' loads in flight, then added in chunk order: one L2 round trip per batch
  // (the loop as written issued 4 loads per round trip).
  constexpr int B = 8;
  float acc = 0.f;
  for (int ch0 = 0; ch0 < p.chunks; ch0 += B) {
    float t[B];
    load_batch(t, part + x, ch0 * slen, slen, p.chunks * slen);
#pragma unroll
    for (int j = 0; j < B; ++j)
      if (ch0 + j < p.chunks) acc += t[j];
  }
  reinterpret_cast<float*>(p.state)[(i64)bh * slen + x] = acc;
}

__device__ void cos_finalize(const CosformerParams& p) {
  const i64 x = (i64)blockIdx.x * blockDim.x + threadIdx.x;
  if (x >= cos_state_len(p)) return;
  for (int bh = blockIdx.y; bh < p.b * p.h; bh += gridDim.y) cos_finalize_element(p, bh, x);
}

// Scan (causal): partial[bh][chunk] becomes the state of all rows before the chunk (plus the
// incoming `state` when state_in); the total is written to `state` when it is non-null.
// Grid: x = block of COS_THREADS state elements, y = bh (grid-stride). Traffic: partials read
// and written once.
// partial[bh][·][x] becomes its exclusive prefix over the chunks, in chunk order (from state[bh][x]
// when state_in); the total goes to state[bh][x] when `state` is non-null.
__device__ __forceinline__ void cos_scan_element(const CosformerParams& p, int bh, i64 x) {
  const i64 slen = cos_state_len(p);
  float* part = reinterpret_cast<float*>(p.partial) + (i64)bh * p.chunks * slen;
  float* st = reinterpret_cast<float*>(p.state);
  float run = (st != nullptr && p.state_in) ? st[(i64)bh * slen + x] : 0.f;
  // Batches of B chunks loaded before any is overwritten: one L2 round trip per batch, not per
  // chunk (the compiler cannot move a later chunk's load above an earlier chunk's store).
  constexpr int B = 8;
  for (int ch0 = 0; ch0 < p.chunks; ch0 += B) {
    float t[B];
    load_batch(t, part + x, ch0 * slen, slen, p.chunks * slen);
#pragma unroll
    for (int j = 0; j < B; ++j)
      if (ch0 + j < p.chunks) {
        part[(i64)(ch0 + j) * slen + x] = run;
        run += t[j];
      }
  }
  if (st != nullptr) st[(i64)bh * slen + x] = run;
}

__device__ void cos_scan(const CosformerParams& p) {
  const i64 x = (i64)blockIdx.x * blockDim.x + threadIdx.x;
  if (x >= cos_state_len(p)) return;
  for (int bh = blockIdx.y; bh < p.b * p.h; bh += gridDim.y) cos_scan_element(p, bh, x);
}

// Stages rows [row0, row0 + COS_BLOCK) × columns [c0, c0 + COS_KC) of q or k as fp32 features,
// zero outside the tensor (rows ≥ nrows, columns ≥ d).
template <typename T>
__device__ __forceinline__ void cos_stage_feat(float (*dst)[COS_KC + 1], const T* base, i64 sn,
                                               int row0, int nrows, int c0, int d, int relu) {
  for (int i = threadIdx.x; i < COS_BLOCK * COS_KC; i += COS_THREADS) {
    const int r = i / COS_KC, c = i % COS_KC;
    const bool in = row0 + r < nrows && c0 + c < d;
    dst[r][c] = in ? cos_feat(to_f32(base[(i64)(row0 + r) * sn + c0 + c]), relu) : 0.f;
  }
}

// Stages state rows [c0, c0 + COS_KC) × columns [e0, e0 + COS_TILE) of KVs and KVc (from st)
// plus zs, zc (from z = [zs | zc], d each: the state's own or a copy in shared memory).
__device__ __forceinline__ void cos_stage_state(float (*kvs)[COS_TILE + 1], float (*kvc)[COS_TILE + 1],
                                                float* zs, float* zc, const float* st, const float* z,
                                                const CosformerParams& p, int c0, int e0) {
  const i64 ddv = (i64)p.d * p.dv;
  for (int i = threadIdx.x; i < COS_KC * COS_TILE; i += COS_THREADS) {
    const int c = i / COS_TILE, e = i % COS_TILE;
    const bool in = c0 + c < p.d && e0 + e < p.dv;
    const i64 at = (i64)(c0 + c) * p.dv + e0 + e;
    kvs[c][e] = in ? st[at] : 0.f;
    kvc[c][e] = in ? st[ddv + at] : 0.f;
  }
  if (threadIdx.x < COS_KC) {
    const int c = c0 + threadIdx.x;
    zs[threadIdx.x] = c < p.d ? z[c] : 0.f;
    zc[threadIdx.x] = c < p.d ? z[p.d + c] : 0.f;
  }
}

// Accumulates the state part for the thread's rows: aS += q·KVs, aC += q·KVc, dS += q·zs,
// dC += q·zc over all d columns (sin/cos of the query applied by the caller); KV from st, z as in
// cos_stage_state.
// Uses shared: qf[COS_BLOCK][COS_KC+1], kvs/kvc[COS_KC][COS_TILE+1], zs/zc[COS_KC].
template <typename T>
__device__ __forceinline__ void cos_state_product(const CosformerParams& p, const T* q,
                                                  const float* st, const float* z, int row0, int e0,
                                                  float (*qf)[COS_KC + 1],
                                                  float (*kvs)[COS_TILE + 1],
                                                  float (*kvc)[COS_TILE + 1], float* zs, float* zc,
                                                  float (&aS)[4][4], float (&aC)[4][4],
                                                  float (&dS)[4], float (&dC)[4]) {
  const int tr = threadIdx.x / 16, te = threadIdx.x % 16;
  for (int c0 = 0; c0 < p.d; c0 += COS_KC) {
    __syncthreads();
    cos_stage_feat<T>(qf, q, p.q_sn, row0, p.n, c0, p.d, p.relu);
    cos_stage_state(kvs, kvc, zs, zc, st, z, p, c0, e0);
    __syncthreads();
#pragma unroll 4
    for (int c = 0; c < COS_KC; ++c) {
      float qv[4], sv[4], cv[4];
      const float zsc = zs[c], zcc = zc[c];
#pragma unroll
      for (int a = 0; a < 4; ++a) qv[a] = qf[tr + 16 * a][c];
#pragma unroll
      for (int j = 0; j < 4; ++j) {
        sv[j] = kvs[c][te + 16 * j];
        cv[j] = kvc[c][te + 16 * j];
      }
#pragma unroll
      for (int a = 0; a < 4; ++a) {
        dS[a] = fmaf(qv[a], zsc, dS[a]);
        dC[a] = fmaf(qv[a], zcc, dC[a]);
#pragma unroll
        for (int j = 0; j < 4; ++j) {
          aS[a][j] = fmaf(qv[a], sv[j], aS[a][j]);
          aC[a][j] = fmaf(qv[a], cv[j], aC[a][j]);
        }
      }
    }
  }
}

// Map pass (non-causal): O_i = (sinθ_i q_i·KVs + cosθ_i q_i·KVc) / max(sinθ_i q_i·zs + cosθ_i q_i·zc, ε).
// Grid: x = block of COS_BLOCK query rows, y = bh (grid-stride), z = e-tile of COS_TILE.
// Traffic: Q rows once per e-tile, the state from L2, each O element written once.
template <typename T>
__device__ void cos_map(const CosformerParams& p) {
  __shared__ float qf[COS_BLOCK][COS_KC + 1];
  __shared__ float kvs[COS_KC][COS_TILE + 1], kvc[COS_KC][COS_TILE + 1];
  __shared__ float zs[COS_KC], zc[COS_KC];
  const int row0 = blockIdx.x * COS_BLOCK, e0 = blockIdx.z * COS_TILE;
  const int tr = threadIdx.x / 16, te = threadIdx.x % 16;
  const i64 slen = cos_state_len(p);

  for (int bh = blockIdx.y; bh < p.b * p.h; bh += gridDim.y) {
    const int b = bh / p.h, h = bh % p.h;
    const T* q = cptr<T>(p.q) + b * p.q_sb + h * p.q_sh;
    const float* st = reinterpret_cast<const float*>(p.state) + (i64)bh * slen;
    float aS[4][4], aC[4][4], dS[4], dC[4];
#pragma unroll
    for (int a = 0; a < 4; ++a) {
      dS[a] = dC[a] = 0.f;
#pragma unroll
      for (int j = 0; j < 4; ++j) aS[a][j] = aC[a][j] = 0.f;
    }
    cos_state_product<T>(p, q, st, st + 2 * (i64)p.d * p.dv, row0, e0, qf, kvs, kvc, zs, zc, aS, aC, dS, dC);

    T* o = reinterpret_cast<T*>(p.o) + b * p.o_sb + h * p.o_sh;
#pragma unroll
    for (int a = 0; a < 4; ++a) {
      const int row = row0 + tr + 16 * a;
      if (row >= p.n) continue;
      float sn, cs;
      cos_angle(p, row, &sn, &cs);
      const float inv = 1.f / fmaxf(sn * dS[a] + cs * dC[a], p.eps);
#pragma unroll
      for (int j = 0; j < 4; ++j) {
        const int e = e0 + te + 16 * j;
        if (e < p.dv) o[(i64)row * p.o_sn + e] = from_f32<T>((sn * aS[a][j] + cs * aC[a][j]) * inv);
      }
    }
  }
}

// The causal pass's state update after block [row0, row0 + COS_BLOCK): the KV columns
// [e0, e0 + COS_TILE) of st += Σ_r (k_r sinθ_r)ᵀ v_r and (k_r cosθ_r)ᵀ v_r, and z (= [zs | zc]) +=
// Σ_r k_r sinθ_r, k_r cosθ_r, by c-tiles of COS_TILE and stages of COS_ROWS rows (cos_sum_stage,
// as the reduce pass). sn, cs: the angles of the block's rows. Starts with a barrier (the staging buffers
// alias the output phase's).
template <typename T>
__device__ __forceinline__ void cos_causal_update(const CosformerParams& p, const T* k, const T* v, float* st,
                                                  float* z, int row0, int e0, float (*ks)[COS_TILE + 1],
                                                  float (*kc)[COS_TILE + 1], float (*vs)[COS_TILE + 1],
                                                  const float* sn, const float* cs) {
  constexpr int MT = COS_TILE / 16;
  for (int c0 = 0; c0 < p.d; c0 += COS_TILE) {
    float as[MT][MT], ac[MT][MT], zs, zc;  // zs, zc: thread t < COS_TILE owns column c0 + t
    cos_zero_sums(as, ac, zs, zc);
    for (int r0 = 0; r0 < COS_BLOCK; r0 += COS_ROWS) {
      __syncthreads();  // the previous stage (or the output phase) consumed the buffers
      cos_sum_stage<T>(p, k, v, row0 + r0, p.n, c0, e0, sn + r0, cs + r0, ks, kc, vs, as, ac, true, zs, zc);
    }
    cos_put_sums<true>(p, st, c0, e0, as, ac);
    if (threadIdx.x < COS_TILE && c0 + (int)threadIdx.x < p.d) {
      z[c0 + threadIdx.x] += zs;
      z[p.d + c0 + threadIdx.x] += zc;
    }
  }
}

// Causal pass: one CTA per (chunk, bh, e-tile) walks the chunk's COS_BLOCK-row blocks in order,
// carrying the state P of the rows before the block. P starts as the chunk's exclusive prefix
// (partial slot after cos_scan); its KV columns [e0, e0 + COS_TILE) are updated in place in the
// slot (only this CTA touches them), its zs, zc in a shared copy (every e-tile CTA of the chunk
// sums them alike). Per block, for query rows i:
// O_i = (sinθ_i q_i·P_s + cosθ_i q_i·P_c + Σ_{block start ≤ j ≤ i} (q_i·k_j) cos(θ_i−θ_j) v_j) / max(den, ε),
// cos(θ_i−θ_j) = sinθ_i sinθ_j + cosθ_i cosθ_j; then P += the block's keys. Grid: x = chunk,
// y = bh (grid-stride), z = e-tile. Traffic: Q, K, V rows of the chunk once per e-tile (K, V
// again from L1/L2 for the update), the state slot from L2, each O element written once.
// Workspace: one state per chunk, and chunks are few (Plan): each CTA's walk is long.
template <typename T>
__device__ void cos_causal(const CosformerParams& p) {
  // Shared memory is one buffer reused by phase: the state product (qf, kvs, kvc, zs, zc), the
  // intra-block scores (qf, kf, then vt), the masked weight block `wa` throughout phase 2, and
  // the update's staged features (ks, kc, vs).
  constexpr int QF = COS_BLOCK * (COS_KC + 1), KV = COS_KC * (COS_TILE + 1);
  constexpr int VT = COS_BLOCK * (COS_TILE + 1), WA = COS_BLOCK * (COS_BLOCK + 1);
  constexpr int UP = COS_ROWS * (COS_TILE + 1);
  constexpr int PHASE1 = QF + 2 * KV + 2 * COS_KC;
  constexpr int PHASE2 = (2 * QF > VT ? 2 * QF : VT);
  constexpr int UNION = PHASE1 > PHASE2 ? (PHASE1 > 3 * UP ? PHASE1 : 3 * UP) : (PHASE2 > 3 * UP ? PHASE2 : 3 * UP);
  __shared__ float sm[UNION + WA];
  __shared__ float qsn[COS_BLOCK], qcs[COS_BLOCK], ksn[COS_BLOCK], kcs[COS_BLOCK];
  __shared__ float dint[COS_BLOCK];
  __shared__ float zrun[2 * 256];  // [zs | zc] of P, d ≤ 256 each
  auto qf = reinterpret_cast<float(*)[COS_KC + 1]>(sm);
  auto kvs = reinterpret_cast<float(*)[COS_TILE + 1]>(sm + QF);
  auto kvc = reinterpret_cast<float(*)[COS_TILE + 1]>(sm + QF + KV);
  float* zs = sm + QF + 2 * KV;
  float* zc = zs + COS_KC;
  auto kf = reinterpret_cast<float(*)[COS_KC + 1]>(sm + QF);
  auto vt = reinterpret_cast<float(*)[COS_TILE + 1]>(sm);
  auto wa = reinterpret_cast<float(*)[COS_BLOCK + 1]>(sm + UNION);
  auto uks = reinterpret_cast<float(*)[COS_TILE + 1]>(sm);
  auto ukc = reinterpret_cast<float(*)[COS_TILE + 1]>(sm + UP);
  auto uvs = reinterpret_cast<float(*)[COS_TILE + 1]>(sm + 2 * UP);

  const int chunk = blockIdx.x, e0 = blockIdx.z * COS_TILE;
  const int chunk_row0 = chunk * p.rows_per_chunk;
  const int chunk_end = min(p.n, chunk_row0 + p.rows_per_chunk);
  const int tr = threadIdx.x / 16, te = threadIdx.x % 16;
  const i64 slen = cos_state_len(p), ddv = (i64)p.d * p.dv;

  for (int bh = blockIdx.y; bh < p.b * p.h; bh += gridDim.y) {
    const int b = bh / p.h, h = bh % p.h;
    const T* q = cptr<T>(p.q) + b * p.q_sb + h * p.q_sh;
    const T* k = cptr<T>(p.k) + b * p.k_sb + h * p.k_sh;
    const T* v = cptr<T>(p.v) + b * p.v_sb + h * p.v_sh;
    T* o = reinterpret_cast<T*>(p.o) + b * p.o_sb + h * p.o_sh;
    float* st = reinterpret_cast<float*>(p.partial) + ((i64)bh * p.chunks + chunk) * slen;
    __syncthreads();  // the previous bh's readers of zrun are done
    for (int c = threadIdx.x; c < 2 * p.d; c += COS_THREADS) zrun[c] = st[2 * ddv + c];

    for (int row0 = chunk_row0; row0 < chunk_end; row0 += COS_BLOCK) {
      // Phase 1: the state before the block.
      float aS[4][4], aC[4][4], dS[4], dC[4], acc[4][4];
#pragma unroll
      for (int a = 0; a < 4; ++a) {
        dS[a] = dC[a] = 0.f;
#pragma unroll
        for (int j = 0; j < 4; ++j) aS[a][j] = aC[a][j] = acc[a][j] = 0.f;
      }
      __syncthreads();  // the previous block's readers of qsn/qcs/dint are done; zrun written
      if (threadIdx.x < COS_BLOCK) {
        cos_angle(p, row0 + threadIdx.x, &qsn[threadIdx.x], &qcs[threadIdx.x]);
        ksn[threadIdx.x] = qsn[threadIdx.x];  // the diagonal key block is the query block
        kcs[threadIdx.x] = qcs[threadIdx.x];
      }
      cos_state_product<T>(p, q, st, zrun, row0, e0, qf, kvs, kvc, zs, zc, aS, aC, dS, dC);

      // Phase 2: the diagonal block, keys j ≤ i.
      float sc[4][4];
#pragma unroll
      for (int a = 0; a < 4; ++a)
#pragma unroll
        for (int j = 0; j < 4; ++j) sc[a][j] = 0.f;
      for (int c0 = 0; c0 < p.d; c0 += COS_KC) {
        __syncthreads();
        cos_stage_feat<T>(qf, q, p.q_sn, row0, p.n, c0, p.d, p.relu);
        cos_stage_feat<T>(kf, k, p.k_sn, row0, p.s, c0, p.d, p.relu);
        __syncthreads();
#pragma unroll 4
        for (int c = 0; c < COS_KC; ++c) {
          float qv[4], kv[4];
#pragma unroll
          for (int a = 0; a < 4; ++a) {
            qv[a] = qf[tr + 16 * a][c];
            kv[a] = kf[te + 16 * a][c];
          }
#pragma unroll
          for (int a = 0; a < 4; ++a)
#pragma unroll
            for (int j = 0; j < 4; ++j) sc[a][j] = fmaf(qv[a], kv[j], sc[a][j]);
        }
      }
      // Masked, re-weighted scores; rows past N and keys past S or after the query are zero.
#pragma unroll
      for (int a = 0; a < 4; ++a)
#pragma unroll
        for (int j = 0; j < 4; ++j) {
          const int i = tr + 16 * a, jj = te + 16 * j;
          const bool keep = row0 + jj < p.s && jj <= i;
          wa[i][jj] = keep ? sc[a][j] * (qsn[i] * ksn[jj] + qcs[i] * kcs[jj]) : 0.f;
        }
      __syncthreads();  // wa complete; qf/kf no longer read
      if (threadIdx.x < COS_BLOCK) {
        float drow = 0.f;  // Σ_j w_ij of query row row0 + i
        for (int j = 0; j < COS_BLOCK; ++j) drow += wa[threadIdx.x][j];
        dint[threadIdx.x] = drow;
      }
      for (int i = threadIdx.x; i < COS_BLOCK * COS_TILE; i += COS_THREADS) {
        const int r = i / COS_TILE, e = i % COS_TILE;
        const bool in = row0 + r < p.s && e0 + e < p.dv;
        vt[r][e] = in ? to_f32(v[(i64)(row0 + r) * p.v_sn + e0 + e]) : 0.f;
      }
      __syncthreads();
      // Masked pairs are skipped, not multiplied by zero: a non-finite v_j must not reach rows
      // before j (docs/non-finite.md).
#pragma unroll 4
      for (int j = 0; j < COS_BLOCK; ++j) {
        float wv[4], vv[4];
#pragma unroll
        for (int a = 0; a < 4; ++a) {
          wv[a] = wa[tr + 16 * a][j];
          vv[a] = vt[j][te + 16 * a];
        }
#pragma unroll
        for (int a = 0; a < 4; ++a) {
          const bool seen = j <= tr + 16 * a;
#pragma unroll
          for (int jj = 0; jj < 4; ++jj) acc[a][jj] = seen ? fmaf(wv[a], vv[jj], acc[a][jj]) : acc[a][jj];
        }
      }

#pragma unroll
      for (int a = 0; a < 4; ++a) {
        const int i = tr + 16 * a, row = row0 + i;
        if (row >= p.n) continue;
        const float sn = qsn[i], cs = qcs[i];
        const float inv = 1.f / fmaxf(sn * dS[a] + cs * dC[a] + dint[i], p.eps);
#pragma unroll
        for (int j = 0; j < 4; ++j) {
          const int e = e0 + te + 16 * j;
          if (e < p.dv)
            o[(i64)row * p.o_sn + e] = from_f32<T>((sn * aS[a][j] + cs * aC[a][j] + acc[a][j]) * inv);
        }
      }
      if (row0 + COS_BLOCK < chunk_end) cos_causal_update<T>(p, k, v, st, zrun, row0, e0, uks, ukc, uvs, qsn, qcs);
    }
  }
}

#define COS_STEP_VEC 4
#define COS_STEP_ROWS 4  // rows whose loads a thread issues before it updates and stores them

// The thread's place in the step's row groups: VEC adjacent columns from e of rows
// [c_begin, c_end) of KVs and KVc (none when g ≥ groups or e ≥ dv).
template <int VEC>
struct CosStepLane {
  int e, g, groups, c_begin, c_end;
  __device__ __forceinline__ explicit CosStepLane(const CosformerParams& p) {
    const int lanes = max(1, p.dv / VEC);  // threads per row (unused VEC = 4 lanes when dv < 4)
    e = VEC * ((int)threadIdx.x % lanes);
    g = (int)threadIdx.x / lanes;
    groups = max(1, COS_THREADS / lanes);
    const int rows = div_up(p.d, groups);
    const bool live = g < groups && e < p.dv;
    c_begin = live ? g * rows : 0;
    c_end = live ? min(p.d, (g + 1) * rows) : 0;
  }
};

// Rows [c0, c0 + COS_STEP_ROWS) ∩ [·, c_end) of KVs (s) and KVc (x) at columns e … e + VEC − 1.
template <int VEC>
__device__ __forceinline__ void cos_step_load(const CosformerParams& p, const float* st, int c0, int c_end, int e,
                                              float (&s)[COS_STEP_ROWS][COS_STEP_VEC],
                                              float (&x)[COS_STEP_ROWS][COS_STEP_VEC]) {
  const i64 ddv = (i64)p.d * p.dv;
#pragma unroll
  for (int u = 0; u < COS_STEP_ROWS; ++u) {
    if (c0 + u >= c_end) break;
    const float* ps = st + (i64)(c0 + u) * p.dv + e;
    if constexpr (VEC == 4) {
      const float4 a = *reinterpret_cast<const float4*>(ps), b = *reinterpret_cast<const float4*>(ps + ddv);
      s[u][0] = a.x, s[u][1] = a.y, s[u][2] = a.z, s[u][3] = a.w;
      x[u][0] = b.x, x[u][1] = b.y, x[u][2] = b.z, x[u][3] = b.w;
    } else {
      s[u][0] = ps[0];
      x[u][0] = ps[ddv];
    }
  }
}

// The thread's rows (CosStepLane) updated by the token and stored, batch by batch (every load
// of a batch issued before its stores: the compiler cannot move a later row's load above an
// earlier row's store to the same array); the first batch (s0, x0) was loaded by the caller
// before the token's features were staged. Its partial numerators go to num[·][g·dv + e …].
template <int VEC>
__device__ __forceinline__ void cos_step_rows(const CosformerParams& p, const CosStepLane<VEC>& l, float* st,
                                             const float* qf, const float* kf, const float* vr, float sn, float cs,
                                             float (&s0)[COS_STEP_ROWS][COS_STEP_VEC],
                                             float (&x0)[COS_STEP_ROWS][COS_STEP_VEC],
                                             float (*num)[COS_STEP_VEC * COS_THREADS]) {
  constexpr int U = COS_STEP_ROWS;
  const i64 ddv = (i64)p.d * p.dv;
  const int e = l.e;
  float ns[VEC] = {}, nc[VEC] = {};
  if (l.c_begin < l.c_end) {
    float ve[VEC];
#pragma unroll
    for (int j = 0; j < VEC; ++j) ve[j] = vr[e + j];
    // Batch by batch in s0, x0 (the first one already loaded).
    for (int c0 = l.c_begin; c0 < l.c_end; c0 += U) {
      if (c0 != l.c_begin) cos_step_load<VEC>(p, st, c0, l.c_end, e, s0, x0);
#pragma unroll
      for (int u = 0; u < U; ++u) {
        const int c = c0 + u;
        if (c >= l.c_end) break;
        const float ks = kf[c] * sn, kc = kf[c] * cs;
#pragma unroll
        for (int j = 0; j < VEC; ++j) {
          s0[u][j] = fmaf(ks, ve[j], s0[u][j]);
          x0[u][j] = fmaf(kc, ve[j], x0[u][j]);
          ns[j] = fmaf(qf[c], s0[u][j], ns[j]);
          nc[j] = fmaf(qf[c], x0[u][j], nc[j]);
        }
        float* ps = st + (i64)c * p.dv + e;
        if constexpr (VEC == 4) {
          *reinterpret_cast<float4*>(ps) = float4{s0[u][0], s0[u][1], s0[u][2], s0[u][3]};
          *reinterpret_cast<float4*>(ps + ddv) = float4{x0[u][0], x0[u][1], x0[u][2], x0[u][3]};
        } else {
          ps[0] = s0[u][0];
          ps[ddv] = x0[u][0];
        }
      }
    }
  }
  if (l.g < l.groups) {
#pragma unroll
    for (int j = 0; j < VEC; ++j) {
      if (e + j >= p.dv) break;
      num[0][l.g * p.dv + e + j] = ns[j];
      num[1][l.g * p.dv + e + j] = nc[j];
    }
  }
}

// Decode step: adds token pos0 + 1 (row 0 of q, k, v) of each (b,h) to `state`, then writes its
// output from the updated state. Grid: x = bh, one CTA of COS_THREADS (d, dv ≤ 256). Every thread
// streams state: row groups split the d rows, and within a group a thread updates VEC adjacent
// columns of each of its rows (VEC = 4, one 16-byte load per array and row, where dv % 4 == 0 and
// every slice's state is 16-byte aligned; else VEC = 1), loading COS_STEP_ROWS rows before it
// stores them: 8 loads (128 B with VEC = 4) in flight per thread. The first batch is loaded before
// the token's q, k, v: the two DRAM round trips overlap instead of following each other (at
// B·H = 128, D = 64 one batch is every row a thread has). The groups' partial numerators are
// added in group order (deterministic).
// Traffic: the state read and written once, one q, k, v row read, one O row written.
template <typename T>
__device__ void cos_step(const CosformerParams& p) {
  __shared__ float qf[256], kf[256], vr[256];
  __shared__ float num[2][COS_STEP_VEC * COS_THREADS];  // [group][column] partial numerators
  __shared__ float den;
  const int bh = blockIdx.x;
  const int b = bh / p.h, h = bh % p.h;
  const int t = threadIdx.x;
  const i64 slen = cos_state_len(p), ddv = (i64)p.d * p.dv;
  float* st = reinterpret_cast<float*>(p.state) + (i64)bh * slen;
  // Launch-uniform: 16-byte rows for every slice.
  const bool vec = p.dv % COS_STEP_VEC == 0 && slen % COS_STEP_VEC == 0 && p.state % 16 == 0;
  // (The VEC = 1 path, unaligned or odd dv, loads its first batch after the staging.)
  const CosStepLane<COS_STEP_VEC> l4(p);
  float s0[COS_STEP_ROWS][COS_STEP_VEC], x0[COS_STEP_ROWS][COS_STEP_VEC];
  if (vec) cos_step_load<COS_STEP_VEC>(p, st, l4.c_begin, l4.c_end, l4.e, s0, x0);
  float sn, cs;
  cos_angle(p, 0, &sn, &cs);
  if (t < p.d) {
    qf[t] = cos_feat(to_f32(cptr<T>(p.q)[b * p.q_sb + h * p.q_sh + t]), p.relu);
    const float kx = cos_feat(to_f32(cptr<T>(p.k)[b * p.k_sb + h * p.k_sh + t]), p.relu);
    kf[t] = kx;
    st[2 * ddv + t] += kx * sn;
    st[2 * ddv + p.d + t] += kx * cs;
  }
  if (t < p.dv) vr[t] = to_f32(cptr<T>(p.v)[b * p.v_sb + h * p.v_sh + t]);
  __syncthreads();  // features staged; z updated (each element by its owner thread)
  if (t < 32) {
    float ds = 0.f, dc = 0.f;
    for (int c = t; c < p.d; c += 32) {
      ds = fmaf(qf[c], st[2 * ddv + c], ds);
      dc = fmaf(qf[c], st[2 * ddv + p.d + c], dc);
    }
    ds = warp_sum(ds);
    dc = warp_sum(dc);
    if (t == 0) den = fmaxf(sn * ds + cs * dc, p.eps);
  }
  int groups;
  if (vec) {
    cos_step_rows<COS_STEP_VEC>(p, l4, st, qf, kf, vr, sn, cs, s0, x0, num);
    groups = l4.groups;
  } else {
    const CosStepLane<1> l1(p);
    cos_step_load<1>(p, st, l1.c_begin, l1.c_end, l1.e, s0, x0);
    cos_step_rows<1>(p, l1, st, qf, kf, vr, sn, cs, s0, x0, num);
    groups = l1.groups;
  }
  __syncthreads();
  if (t < p.dv) {
    float s = 0.f, c = 0.f;
    for (int gg = 0; gg < groups; ++gg) {
      s += num[0][gg * p.dv + t];
      c += num[1][gg * p.dv + t];
    }
    reinterpret_cast<T*>(p.o)[b * p.o_sb + h * p.o_sh + t] = from_f32<T>((sn * s + cs * c) / den);
  }
}

// Entry points: cosformer_<step>_<dtype>.
#define COS_DTYPE(T, NAME)                                                                       \
  extern "C" __global__ void __launch_bounds__(COS_THREADS, 1)                                    \
      cosformer_reduce_##NAME(const __grid_constant__ CosformerParams p) {                     \
    cos_reduce<T>(p);                                                                          \
  }                                                                                            \
  extern "C" __global__ void __launch_bounds__(COS_THREADS, 1)                                    \
      cosformer_map_##NAME(const __grid_constant__ CosformerParams p) {                        \
    cos_map<T>(p);                                                                             \
  }                                                                                            \
  extern "C" __global__ void __launch_bounds__(COS_THREADS, 1)                                    \
      cosformer_causal_##NAME(const __grid_constant__ CosformerParams p) {                     \
    cos_causal<T>(p);                                                                          \
  }                                                                                            \
  extern "C" __global__ void __launch_bounds__(COS_THREADS, 1)                                    \
      cosformer_step_##NAME(const __grid_constant__ CosformerParams p) {                       \
    cos_step<T>(p);                                                                            \
  }

COS_DTYPE(f16, f16)
COS_DTYPE(bf16, bf16)
COS_DTYPE(float, f32)

// Tensor-core entry points: cosformer_{reduce,map}_tc<D>_<dtype>, cosformer_causal_tc<D>_<dtype>.
#include "cosformer_tc.cuh"
COS_TC_DTYPE(f16, f16)
COS_TC_DTYPE(bf16, bf16)

extern "C" __global__ void __launch_bounds__(COS_THREADS, 1)
    cosformer_finalize_f32(const __grid_constant__ CosformerParams p) {
  cos_finalize(p);
}
extern "C" __global__ void __launch_bounds__(COS_THREADS, 1)
    cosformer_scan_f32(const __grid_constant__ CosformerParams p) {
  cos_scan(p);
}
