// AFT-full (causal or not), f16/bf16 storage, as one GEMM over every (b,h) and channel at once:
//   [num | den] (T × bcols) = W (T × T) · bmat (T × bcols),   W[t][t'] = exp(w[t][t'] − r_t),
// then Y = σ(Q)·num/den, with r_t a running reference of row t kept inside the product (moved,
// and the row's accumulators rescaled, when a key block outgrows it: AftFgRef), so w is read
// once. W is shared by every slice (AFT-full's bias has no head), so one
// exp(w) tile made on the fly feeds two channel tiles (256 columns) of the product; bmat holds
// [E⊙V | E] of each 64-channel tile (aft_full_b, E = exp(K − M_c) with M_c the channel max).
// (The window kernel would rebuild W for every (b,h) and channel tile.)
//
// Operands are the storage type (mma.sync m16n8k16, fp32 accumulators), f16 ones scaled into
// range as in aft_tc.cuh (n = T keys for the denominator floor).
//
// Causal: a row tile stops at its last row's key; keys after a row get weight 0 (exact for finite
// operands). In a block reaching past the tile's first row that holds a non-finite bmat value,
// those values are summed key by key into the rows at or after their key and zeroed for the mma,
// so a poisoned later key never reaches earlier rows (aft_tc_nonfinite_block, as the window kernels).
//
// CTA: 128 rows × 256 columns, 8 warps in a 2 × 4 grid of 64 rows × (32 E⊙V + the same 32 E)
// columns, so num and den of an output sit in one thread; per 16-key step a warp issues 8
// ldmatrix.x4 for 32 mma (1 shared-memory word per lane per mma). 32-key blocks, two stages:
// bmat by cp.async, w through registers (loaded one block ahead, exp'd between the two k-steps
// so MUFU work overlaps other warps' mma); one barrier per block. Fragments and cp.async use
// per-thread shared-window addresses stepped per stage (aft_fg_mma16, AftFgB): the hot loop is
// 220 instructions per warp per block (scripts/hot_loops.py).
#pragma once
#include "aft_tc.cuh"

#define AFT_FG_ROWS 128
#define AFT_FG_COLS 256  // two channel tiles
#define AFT_FG_KB 32
#define AFT_FG_THREADS 256
#define AFT_FG_ALD 40   // A rows (halves): ldmatrix rows at 80-byte steps hit distinct banks
#define AFT_FG_BLD 264  // B rows (halves): 528-byte steps, likewise
#define AFT_FG_STAGE (AFT_FG_ROWS * AFT_FG_ALD + AFT_FG_KB * AFT_FG_BLD)  // halves
// bytes: two stages, then the rows' exponent offsets and their moves (AftFgMoves, 2 stages)
#define AFT_FG_SMEM (2 * AFT_FG_STAGE * 2 + AFT_FG_ROWS * 4 + 2 * AFT_FG_ROWS * 8 + 2 * 8 * 4)

static_assert(AFT_FG_COLS == 2 * AFT_FG_TILE && AFT_FG_TILE == 2 * AFT_CT, "bmat tile layout");
static_assert(AFT_FG_KB == AFT_KB, "key blocks of aft_tc_nonfinite_keys");
static_assert((AFT_FG_STAGE * 2) % 16 == 0 && (AFT_FG_ROWS * AFT_FG_ALD * 2) % 16 == 0, "16-byte stages");

// bmat[t][tile·128 + cc] = E⊙V and bmat[t][tile·128 + 64 + cc] = E of channel tile·64… (tile =
// bh·ctiles + channel tile), scaled as above; zeros past d and in the padding tile.
// Grid: x = 64-row chunk, y = tile (grid-stride); 8 row lanes × 32 channel pairs, a thread's 8
// rows loaded first (pair loads when aligned), 4-byte bmat stores.
// Traffic: K, V read once, bmat (2·T·bcols bytes) written once.
template <typename T>
__device__ void aft_full_b(const AftParams& p) {
  constexpr int PAIRS = AFT_CT / 2, LANES = AFT_THREADS / PAIRS, PER = AFT_CHUNK / LANES;
  const int tx = threadIdx.x % PAIRS, ty = threadIdx.x / PAIRS;
  const int ctiles = div_up(p.d, AFT_CT), tiles = p.b * p.h * ctiles;
  const int t0 = blockIdx.x * AFT_CHUNK + ty;  // rows t0 + 8i
  const int rows = min(PER, div_up(p.t - t0, LANES));
  const float se = aft_w_scale<T>(), l2s = AftScaled<T>::value ? 15.f : 0.f;
  for (int tile = blockIdx.y; tile < p.bcols / AFT_FG_TILE; tile += gridDim.y) {
    const int bh = tile / ctiles, c = (tile % ctiles) * AFT_CT + 2 * tx;  // channels c, c + 1
    const bool live0 = tile < tiles && c < p.d, live1 = tile < tiles && c + 1 < p.d;
    const T *k = nullptr, *v = nullptr;
    float mc[2] = {0.f, 0.f}, vf[2] = {0.f, 0.f};  // channel shift, V factor sev / se
    bool pair = false;
    if (live0) {
      const int b = bh / p.h, h = bh % p.h;
      k = reinterpret_cast<const T*>(p.k) + b * p.k_sb + h * p.k_sh + (i64)t0 * p.k_sn + c;
      v = reinterpret_cast<const T*>(p.v) + b * p.v_sb + h * p.v_sh + (i64)t0 * p.v_sn + c;
      const float* tot = aft_stats(p.pre, bh, p.chunks + 1, p.chunks, p.d);
      mc[0] = tot[c];
      vf[0] = aft_ev_scale<T>(p, bh, c) / se;
      if (live1) {
        mc[1] = tot[c + 1];
        vf[1] = aft_ev_scale<T>(p, bh, c + 1) / se;
      }
      pair = live1 && ((reinterpret_cast<u64>(k) | reinterpret_cast<u64>(v)) % 4) == 0 && ((p.k_sn | p.v_sn) & 1) == 0;
    }
    const AftExp<T> ex0(mc[0], l2s), ex1(mc[1], l2s);
    float kx[2][PER], vx[2][PER];  // all rows first: 16 loads in flight per thread
#pragma unroll
    for (int i = 0; i < PER; ++i) kx[0][i] = kx[1][i] = vx[0][i] = vx[1][i] = 0.f;
    if (live0) {
      aft_load_rows<T, PER>(k, LANES * p.k_sn, rows, pair, true, live1, kx[0], kx[1]);
      aft_load_rows<T, PER>(v, LANES * p.v_sn, rows, pair, true, live1, vx[0], vx[1]);
    }
    u32* row = reinterpret_cast<u32*>(reinterpret_cast<u16*>(p.bmat) + (i64)t0 * p.bcols + (i64)tile * AFT_FG_TILE + 2 * tx);
#pragma unroll
    for (int i = 0; i < PER; ++i) {
      if (i >= rows) break;
      // E·se and E⊙V·sev = (E·se)·(V·sev/se); zeros past d and in the padding tile.
      const float e0 = live0 ? ex0(kx[0][i]) : 0.f, e1 = live1 ? ex1(kx[1][i]) : 0.f;
      u32* r = row + (i64)i * LANES * p.bcols / 2;
      r[0] = pack2<T>(e0 * (vx[0][i] * vf[0]), e1 * (vx[1][i] * vf[1]));
      r[AFT_CT / 2] = pack2<T>(e0, e1);
    }
  }
}

// Per row tile: where this thread's w values start, and which blocks take the unchecked forms.
// Thread role: rows r0 + threadIdx.x / 16 + 16·i (slot i), keys kb + 2·(threadIdx.x % 16) + {0, 1}.
struct AftFgW {
  const float* row;  // w at the thread's first row and key offset (add kb)
  i64 step;          // 16 rows
  int r0;            // the first row of the SLOTS × 16
  bool pairs;        // every (row, key pair) is 8-byte aligned: T even, w 8-byte aligned
};
__device__ __forceinline__ AftFgW aft_fg_w(const AftParams& p, int r0) {
  return {reinterpret_cast<const float*>(p.w) + (i64)(r0 + (int)threadIdx.x / 16) * p.t + 2 * (threadIdx.x % 16),
          16 * (i64)p.t, r0, (p.t % 2 == 0) && (p.w % 8 == 0)};
}
// Whether block kb loads without bounds checks (all SLOTS × 16 rows and 32 keys inside w) …
template <int SLOTS> __device__ __forceinline__ bool aft_fg_load_fast(const AftParams& p, const AftFgW& w, int kb) {
  return w.pairs && w.r0 + 16 * SLOTS <= p.t && kb + AFT_FG_KB <= p.t;
}
// … and exps without masks (no key past T; causal: none past the first row).
__device__ __forceinline__ bool aft_fg_exp_fast(const AftParams& p, const AftFgW& w, int kb) {
  return kb + AFT_FG_KB <= p.t && (!p.causal || kb + AFT_FG_KB - 1 <= w.r0);
}

// w of keys [kb, kb + 32) of the thread's SLOTS rows into registers (0 past T).
template <int SLOTS, bool FAST>
__device__ __forceinline__ void aft_fg_load_w(const AftParams& p, const AftFgW& w, int kb, float (&wr)[SLOTS][2]) {
  const int t = w.r0 + threadIdx.x / 16, tp = kb + 2 * (threadIdx.x % 16);
#pragma unroll
  for (int i = 0; i < SLOTS; ++i) {
    const float* a = w.row + i * w.step + kb;
    if (FAST) {
      const float2 x = *reinterpret_cast<const float2*>(a);
      wr[i][0] = x.x;
      wr[i][1] = x.y;
    } else {
      const bool row = t + 16 * i < p.t;
      wr[i][0] = row && tp < p.t ? a[0] : 0.f;
      wr[i][1] = row && tp + 1 < p.t ? a[1] : 0.f;
    }
  }
}

// Row references: the running max, kept lazily. W[t][t'] = 2^(w[t][t']·log2(e) + c_t), c_t =
// S − m_t·log2(e) for a reference m_t, a w of row t seen so far (NaN: none yet). An exponent above
// AMAX (log2 of the operand scale: 15 for f16, 0 for bf16, the bound the exact row max gave) or NaN
// moves the reference of its row to the block's row max, whose exponent becomes S = AMAX − HEAD;
// the row's accumulators are scaled by 2^(c_new − c_old) before that block's product. num and den
// scale alike, so Y does not depend on the references, and w is read once (no row-max pass). With
// 4 bits of headroom a row moves only when a block beats its reference by 2.8 (for N(0,1) w, after
// the first block, about once in 40000 row blocks); each row is still normal in f16 down to 2^-25
// of its largest weight (2^-29 with the exact max), and the denominator floor covers the rest.
template <typename T> struct AftFgRef {
  static constexpr float AMAX = AftScaled<T>::value ? 15.f : 0.f;
  static constexpr float S = AMAX - 4.f;
};

// Where a moved reference is published: per A stage, the factor and token of each row of the row
// tile ({2^(c_new − c_old), token bits}, token = the block's sequence number in this CTA's run, so
// a stale entry never matches) and, per writing warp of the cluster, the token of its last move.
// In every CTA of the cluster: rank·8 + warp is the writer of rows rank·OWN + {2w, 2w + 1} + 16j.
struct AftFgMoves {
  float2* rows;  // [stage][AFT_FG_ROWS]
  int* flags;    // [stage][8·CL]
};

// v at `dst` in the shared memory of every CTA of the cluster (CL = 1: of this CTA).
template <int CL> __device__ __forceinline__ void aft_fg_put(void* dst, u32 v) {
#if !defined(__CUDA_ARCH__) || __CUDA_ARCH__ >= 900
  if constexpr (CL > 1) {
#pragma unroll
    for (int r = 0; r < CL; ++r) st_cluster_u32(dst, r, v);
    return;
  }
#endif
  *reinterpret_cast<u32*>(dst) = v;
}

// Exponents of the thread's loaded w: w·log2(e) + c_row, −inf for keys past T and (causal) past
// the row.
template <int SLOTS, bool FAST>
__device__ __forceinline__ void aft_fg_args(const AftParams& p, int r0, int kb, const float (&wr)[SLOTS][2], int i,
                                            float c, float& a0, float& a1) {
  a0 = fmaf(wr[i][0], LOG2E_F, c);
  a1 = fmaf(wr[i][1], LOG2E_F, c);
  if (!FAST) {
    const int row = threadIdx.x / 16 + 16 * i, tp = kb + 2 * (threadIdx.x % 16);
    const int end = p.causal ? min(p.t, r0 + row + 1) : p.t;
    a0 = tp < end ? a0 : AFT_NEG_INF;
    a1 = tp + 1 < end ? a1 : AFT_NEG_INF;
  }
}

// The loaded w as packed operands 2^(w·log2(e) + c_row) (rcf[row]: c of the rows from r0).
// Returns whether an exponent exceeds AMAX or is NaN (no reference yet, or a NaN w): then the warp
// redoes the block in aft_fg_move.
template <typename T, int SLOTS, bool FAST>
__device__ __forceinline__ bool aft_fg_exp_w(const AftParams& p, int r0, int kb, const float (&wr)[SLOTS][2],
                                             const float* rcf, u32 (&ap)[SLOTS]) {
  float top = AFT_NEG_INF;
#pragma unroll
  for (int i = 0; i < SLOTS; ++i) {
    float a0, a1;
    aft_fg_args<SLOTS, FAST>(p, r0, kb, wr, i, rcf[threadIdx.x / 16 + 16 * i], a0, a1);
    top = fmax_nan(top, fmax_nan(a0, a1));
    ap[i] = pack2<T>(ex2_fast(a0), ex2_fast(a1));
  }
  return !(top <= AftFgRef<T>::AMAX);
}

// The warp's rows after a trigger (warp-uniform call). A row whose block max m (unmasked keys,
// NaN aside) exceeds AMAX, or that has no reference yet, takes m; its factor (0 for a first
// reference: the accumulators hold 0, or NaN from a NaN w, which stays) goes with `tok` to stage
// `st` of the moves of every CTA of the cluster, then the warp's flag. Then the operands again.
// rows0: the row tile's row of this CTA's first (own) row.
template <typename T, int SLOTS, int CL>
__device__ __forceinline__ void aft_fg_move(const AftParams& p, int r0, int rows0, int kb, const float (&wr)[SLOTS][2],
                                         float* rcf, u32 (&ap)[SLOTS], AftFgMoves mv, int st, int tok) {
  const int lane = threadIdx.x % 32;
  float c[SLOTS], cn[SLOTS];
#pragma unroll
  for (int i = 0; i < SLOTS; ++i) {
    float a0, a1;  // masked keys −inf; fmaxf passes over NaN
    aft_fg_args<SLOTS, false>(p, r0, kb, wr, i, 0.f, a0, a1);
    float m = fmaxf(a0 == AFT_NEG_INF ? AFT_NEG_INF : wr[i][0], a1 == AFT_NEG_INF ? AFT_NEG_INF : wr[i][1]);
#pragma unroll
    for (int o = 8; o > 0; o >>= 1) m = fmaxf(m, __shfl_xor_sync(0xffffffffu, m, o));  // the row's 16 lanes
    c[i] = rcf[threadIdx.x / 16 + 16 * i];
    const bool unset = c[i] != c[i];
    const bool move = unset ? m > AFT_NEG_INF : fmaf(m, LOG2E_F, c[i]) > AftFgRef<T>::AMAX;
    cn[i] = move ? fmaf(-m, LOG2E_F, AftFgRef<T>::S) : c[i];
  }
  __syncwarp();  // every lane has read its rows' c
  bool moved = false;
#pragma unroll
  for (int i = 0; i < SLOTS; ++i) {
    const int row = threadIdx.x / 16 + 16 * i;
    if (cn[i] != c[i] && !(cn[i] != cn[i])) {  // moved (a NaN c that stays NaN did not)
      moved = true;
      if (lane % 16 == 0) {
        rcf[row] = cn[i];
        const float f = c[i] != c[i] ? 0.f : ex2_fast(cn[i] - c[i]);
        float2* dst = &mv.rows[st * AFT_FG_ROWS + rows0 + row];
        aft_fg_put<CL>(&dst->x, __float_as_uint(f));
        aft_fg_put<CL>(&dst->y, (u32)tok);
      }
    }
    const float cu = cn[i] != cn[i] ? AFT_NEG_INF : cn[i];  // still none: weight 0 (NaN w: NaN)
    float a0, a1;
    aft_fg_args<SLOTS, false>(p, r0, kb, wr, i, cu, a0, a1);
    ap[i] = pack2<T>(ex2_fast(a0), ex2_fast(a1));
  }
  if (__any_sync(0xffffffffu, moved) && lane == 0) {
    const int writer = rows0 / (AFT_FG_ROWS / CL) * 8 + (int)threadIdx.x / 32;
    aft_fg_put<CL>(&mv.flags[st * 8 * CL + writer], (u32)tok);
  }
}

// Next block's w (load, then exp) in the form the block allows.
template <int SLOTS>
__device__ __forceinline__ void aft_fg_load_any(const AftParams& p, const AftFgW& w, int kb, float (&wr)[SLOTS][2]) {
  if (aft_fg_load_fast<SLOTS>(p, w, kb))
    aft_fg_load_w<SLOTS, true>(p, w, kb, wr);
  else
    aft_fg_load_w<SLOTS, false>(p, w, kb, wr);
}
// ... and its operands, moving references where the block needs it (stage st, token tok).
template <typename T, int SLOTS, int CL>
__device__ __forceinline__ void aft_fg_exp_any(const AftParams& p, const AftFgW& w, int rows0, int kb,
                                               const float (&wr)[SLOTS][2], float* rcf, u32 (&ap)[SLOTS],
                                               AftFgMoves mv, int st, int tok) {
  const bool trig = aft_fg_exp_fast(p, w, kb) ? aft_fg_exp_w<T, SLOTS, true>(p, w.r0, kb, wr, rcf, ap)
                                              : aft_fg_exp_w<T, SLOTS, false>(p, w.r0, kb, wr, rcf, ap);
  if (__any_sync(0xffffffffu, trig)) aft_fg_move<T, SLOTS, CL>(p, w.r0, rows0, kb, wr, rcf, ap, mv, st, tok);
}

// Row tile start: no references yet (rcf: the n own rows), CTA-strided; the caller synchronizes.
__device__ __forceinline__ void aft_fg_unset(int n, float* rcf) {
  for (int i = threadIdx.x; i < n; i += AFT_FG_THREADS) rcf[i] = __int_as_float(0x7fffffff);
}

// Kernel start: no moves published (tokens start at 1).
__device__ __forceinline__ void aft_fg_moves_init(AftFgMoves mv, int stages, int cl) {
  for (int i = threadIdx.x; i < stages * AFT_FG_ROWS; i += AFT_FG_THREADS) mv.rows[i] = make_float2(0.f, 0.f);
  for (int i = threadIdx.x; i < stages * 8 * cl; i += AFT_FG_THREADS) mv.flags[i] = 0;
}

// The lane's flag address (shared window) in stage 0 for the warp's rows wr … wr + 63: their
// writers are every warp of the CTA (CL = 1) or of cluster ranks wr / OWN and the next; lanes past
// them repeat one (same vote).
template <int CL> __device__ __forceinline__ u32 aft_fg_flag_at(AftFgMoves mv, int wr) {
  constexpr int NF = CL == 1 ? 8 : 16;
  const int f0 = CL == 1 ? 0 : wr / (AFT_FG_ROWS / CL) * 8;
  return smem_addr(mv.flags + f0 + (int)threadIdx.x % NF);
}

// Before block `tok`'s product (stage st): the warp's accumulator rows (wr … wr + 63) whose
// reference moved for that block are scaled (fl: aft_fg_flag_at).
template <int CL>
__device__ __forceinline__ void aft_fg_rescale(AftFgMoves mv, u32 fl, int st, int tok, int wr, float (&num)[4][4][4],
                                               float (&den)[4][4][4]) {
  const int g = threadIdx.x % 32 / 4;
  if (!__any_sync(0xffffffffu, (int)lds_u32(fl + st * 8 * CL * 4) == tok)) return;
#pragma unroll
  for (int mi = 0; mi < 4; ++mi)
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      const float2 e = mv.rows[st * AFT_FG_ROWS + wr + 16 * mi + g + 8 * h];
      if (__float_as_int(e.y) != tok) continue;
#pragma unroll
      for (int j = 0; j < 4; ++j)
#pragma unroll
        for (int e1 = 0; e1 < 2; ++e1) {
          num[mi][j][2 * h + e1] *= e.x;
          den[mi][j][2 * h + e1] *= e.x;
        }
    }
}

__device__ __forceinline__ void aft_fg_store_w(u16* as, const u32 (&ap)[8]) {
#pragma unroll
  for (int i = 0; i < 8; ++i)
    *reinterpret_cast<u32*>(&as[(threadIdx.x / 16 + 16 * i) * AFT_FG_ALD + 2 * (threadIdx.x % 16)]) = ap[i];
}

// A thread's share of each bmat block copy: keys tid / 32 + 8i (i < 4), 16-byte segment tid % 32
// of the CTA's 256 columns. src: its first source (key tid / 32 of the next block, advanced by
// aft_fg_copy_b), step: 8 keys, dst: its first destination in B tile 0 (a shared address).
struct AftFgB {
  const u16* src;
  i64 step;
  u32 dst;
};
__device__ __forceinline__ AftFgB aft_fg_b(const AftParams& p, const u16* bm, const u16* bs0) {
  const int key = threadIdx.x / 32, seg = threadIdx.x % 32;
  return {bm + (i64)key * p.bcols + seg * 8, 8 * (i64)p.bcols, smem_addr(bs0 + key * AFT_FG_BLD + seg * 8)};
}
// Block kb (rows [kb, kb + 32) × 256 columns, zeros past T) by cp.async into the B tile `off`
// bytes past tile 0; then src moves to the next block. Without a tail: 4 copies, no checks.
__device__ __forceinline__ void aft_fg_copy_b(const AftParams& p, AftFgB& b, int kb, u32 off) {
  const u32 dst = b.dst + off;
  if (kb + AFT_FG_KB <= p.t) {
#pragma unroll
    for (int i = 0; i < 4; ++i) cp_async16_at(dst + i * 8 * AFT_FG_BLD * 2, b.src + i * b.step, true);
  } else {
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      const bool ok = kb + (int)threadIdx.x / 32 + 8 * i < p.t;
      cp_async16_at(dst + i * 8 * AFT_FG_BLD * 2, ok ? b.src + i * b.step : b.src, ok);
    }
  }
  b.src += 4 * b.step;
}

// Whether the stage's bmat block holds a non-finite value (every thread checks 16 words).
template <typename T> __device__ __forceinline__ bool aft_fg_block_bad(const u16* bs) {
  bool bad = false;
#pragma unroll
  for (int i = 0; i < 16; ++i) {
    const int idx = threadIdx.x + AFT_FG_THREADS * i, key = idx / 128, col = 2 * (idx % 128);
    bad |= nonfinite2<T>(*reinterpret_cast<const u32*>(&bs[key * AFT_FG_BLD + col]));
  }
  return bad;
}

// The warp's place in the CTA's 128 × 256 block: rows wr …, channel tile wt / 2 of the CTA's
// pair (`tile` overall; `live` unless it is the padding tile), half wt % 2 (bmat columns from
// ncol); bm: the pair's first bmat column.
struct AftFgPlace {
  int wr, wt, ncol, tile;
  bool live;
  const u16* bm;
};
__device__ __forceinline__ AftFgPlace aft_fg_place(const AftParams& p) {
  const int warp = threadIdx.x / 32, wt = warp / 2, tile = blockIdx.x * 2 + wt / 2;
  return {(warp % 2) * 64,
          wt,
          (wt / 2) * AFT_FG_TILE + (wt % 2) * 32,
          tile,
          tile < p.b * p.h * div_up(p.d, AFT_CT),
          reinterpret_cast<const u16*>(p.bmat) + (i64)blockIdx.x * AFT_FG_COLS};
}

// The lane's ldmatrix offsets (bytes) in an A and a B tile for the warp's rows wr … and columns
// ncol … (the addressing of aft_tc_mma16 at ks = 0).
__device__ __forceinline__ u32 aft_fg_aoff(int wr) {
  const int lane = threadIdx.x % 32;
  return ((wr + lane % 16) * AFT_FG_ALD + (lane / 16) * 8) * 2;
}
__device__ __forceinline__ u32 aft_fg_boff(int ncol) {
  const int lane = threadIdx.x % 32;
  return ((lane % 8 + ((lane / 8) % 2) * 8) * AFT_FG_BLD + ncol + (lane / 16) * 8) * 2;
}
// aft_tc_mma16<T, 4, AFT_FG_ALD, AFT_FG_BLD> (same products, same order) from the lane's shared
// addresses a, b of this 16-key step: one add per ldmatrix instead of a generic-pointer conversion.
template <typename T>
__device__ __forceinline__ void aft_fg_mma16(u32 a, u32 b, float (&num)[4][4][4], float (&den)[4][4][4]) {
  u32 af[4][4];
#pragma unroll
  for (int mi = 0; mi < 4; ++mi) ldmatrix_x4_at(af[mi], a + mi * 16 * AFT_FG_ALD * 2);
#pragma unroll
  for (int j = 0; j < 4; j += 2) {
    u32 bn[4], bd[4];
    ldmatrix_x4_trans_at(bn, b + j * 16);
    ldmatrix_x4_trans_at(bd, b + j * 16 + AFT_CT * 2);
#pragma unroll
    for (int mi = 0; mi < 4; ++mi) {
      mma16816<T>(num[mi][j], af[mi], bn[0], bn[1]);
      mma16816<T>(num[mi][j + 1], af[mi], bn[2], bn[3]);
      mma16816<T>(den[mi][j], af[mi], bd[0], bd[1]);
      mma16816<T>(den[mi][j + 1], af[mi], bd[2], bd[3]);
    }
  }
}

// Row tile `it` of the grid-stride loop: its first row and its 32-key blocks (causal: the longest
// tiles first, each stopping at its last row's key).
__device__ __forceinline__ void aft_fg_rows(const AftParams& p, int it, int& t0, int& nkb) {
  const int tiles_r = div_up(p.t, AFT_FG_ROWS), rt = p.causal ? tiles_r - 1 - it : it;
  t0 = rt * AFT_FG_ROWS;
  nkb = div_up(p.causal ? min(p.t, t0 + AFT_FG_ROWS) : p.t, AFT_FG_KB);
}

__device__ __forceinline__ void aft_fg_zero(float (&num)[4][4][4], float (&den)[4][4][4]) {
#pragma unroll
  for (int mi = 0; mi < 4; ++mi)
#pragma unroll
    for (int j = 0; j < 4; ++j)
#pragma unroll
      for (int e = 0; e < 4; ++e) num[mi][j][e] = den[mi][j][e] = 0.f;
}

// Epilogue straight from the accumulators of the warp's 64 rows × 32 channels of channel tile
// `tile` (element e of (mi, j) is row wr + 16·mi + g + 8·(e / 2), channel c0 + 8·j + 2·tq + e % 2):
// Y = σ(Q)·num/den; underflowed outputs are recomputed after the others, once the accumulators
// are dead.
template <typename T>
__device__ __forceinline__ void aft_fg_epilogue(const AftParams& p, int tile, int t0, int wr, int wt,
                                                const float (&num)[4][4][4], const float (&den)[4][4][4]) {
  const int lane = threadIdx.x % 32, g = lane / 4, tq = lane % 4;
  const int ctiles = div_up(p.d, AFT_CT);
  const int bh = tile / ctiles, b = bh / p.h, h = bh % p.h;
  const int c0 = (tile % ctiles) * AFT_CT + (wt % 2) * 32;
  const T* q = reinterpret_cast<const T*>(p.q) + b * p.q_sb + h * p.q_sh;
  const T* k = reinterpret_cast<const T*>(p.k) + b * p.k_sb + h * p.k_sh;
  const T* v = reinterpret_cast<const T*>(p.v) + b * p.v_sb + h * p.v_sh;
  T* o = reinterpret_cast<T*>(p.o) + b * p.o_sb + h * p.o_sh;
  // ratio = num / den · unscale; den below `tiny` → slow path (at most T keys per row).
  const float tiny = aft_den_floor<T>(p.t);
  float unscale[4][2];
#pragma unroll
  for (int j = 0; j < 4; ++j)
#pragma unroll
    for (int e1 = 0; e1 < 2; ++e1) {
      const int c = c0 + 8 * j + 2 * tq + e1;
      unscale[j][e1] = c < p.d ? aft_w_scale<T>() / aft_ev_scale<T>(p, bh, c) : 1.f;
    }
  u64 slow = 0;
#pragma unroll
  for (int mi = 0; mi < 4; ++mi)
#pragma unroll
    for (int j = 0; j < 4; ++j)
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const int t = t0 + wr + 16 * mi + g + 8 * (e / 2), c = c0 + 8 * j + 2 * tq + e % 2;
        if (t >= p.t || c >= p.d) continue;
        const float dn = den[mi][j][e];
        if (dn < tiny) {
          slow |= 1ull << ((mi * 4 + j) * 4 + e);
          continue;
        }
        const float y = aft_sigmoid_t<T>(to_f32(q[(i64)t * p.q_sn + c])) * (__fdividef(num[mi][j][e], dn) * unscale[j][e % 2]);
        o[(i64)t * p.o_sn + c] = from_f32<T>(y);
      }
#pragma unroll 1
  for (; slow; slow &= slow - 1) {
    const int bit = __ffsll((long long)slow) - 1, mi = bit / 16, j = (bit / 4) % 4, e = bit % 4;
    const int t = t0 + wr + 16 * mi + g + 8 * (e / 2), c = c0 + 8 * j + 2 * tq + e % 2;
    const float y = aft_sigmoid_t<T>(to_f32(q[(i64)t * p.q_sn + c])) * aft_exact<T>(p, k, v, h, t, c);
    o[(i64)t * p.o_sn + c] = from_f32<T>(y);
  }
}

// Grid: x = pair of channel tiles (bmat column block), y = 128-row tile (grid-stride, causal:
// the longest tiles first); x runs fastest, so the CTAs sharing a row tile of w run together and
// read it from L2.
template <typename T>
__device__ void aft_full_tc(const AftParams& p) {
  constexpr int ROWS = AFT_FG_ROWS, KB = AFT_FG_KB;
  extern __shared__ __align__(16) u16 fg_smem[];
  float* rcf = reinterpret_cast<float*>(fg_smem + 2 * AFT_FG_STAGE);  // the rows' exponent offsets
  const AftFgMoves mv = {reinterpret_cast<float2*>(rcf + ROWS), reinterpret_cast<int*>(rcf + ROWS + 4 * ROWS)};
  const AftFgPlace pl = aft_fg_place(p);
  const int wr = pl.wr, ncol = pl.ncol;
  const u16* bm = pl.bm;
  // the lane's fragment addresses in stage 0 (A, then B)
  const u32 fa = smem_addr(fg_smem) + aft_fg_aoff(wr), fb = smem_addr(fg_smem + ROWS * AFT_FG_ALD) + aft_fg_boff(ncol);
  const u32 fl = aft_fg_flag_at<1>(mv, wr);
  aft_fg_moves_init(mv, 2, 1);
  int tok0 = 1;  // token of the row tile's first block

  for (int it = blockIdx.y; it < div_up(p.t, ROWS); it += gridDim.y) {
    int t0, nkb;
    aft_fg_rows(p, it, t0, nkb);
    __syncthreads();  // the previous row tile is done with shared memory
    aft_fg_unset(ROWS, rcf);
    const AftFgW w = aft_fg_w(p, t0);
    float num[4][4][4], den[4][4][4];
    aft_fg_zero(num, den);
    float wreg[8][2];
    u32 ap[8];
    AftFgB b = aft_fg_b(p, bm, fg_smem + ROWS * AFT_FG_ALD);
    aft_fg_load_any(p, w, 0, wreg);
    aft_fg_copy_b(p, b, 0, 0);
    cp_async_commit();
    __syncthreads();  // rcf
    aft_fg_exp_any<T, 8, 1>(p, w, 0, 0, wreg, rcf, ap, mv, 0, tok0);
    aft_fg_store_w(fg_smem, ap);
    cp_async_wait<0>();
    __syncthreads();

    for (int i = 0; i < nkb; ++i) {
      const u16* as = fg_smem + (i & 1) * AFT_FG_STAGE;
      u16* bs = fg_smem + (i & 1) * AFT_FG_STAGE + ROWS * AFT_FG_ALD;  // non-finite values may be zeroed
      u16* nas = fg_smem + ((i + 1) & 1) * AFT_FG_STAGE;
      const bool more = i + 1 < nkb;
      aft_fg_rescale<1>(mv, fl, i & 1, tok0 + i, wr, num, den);
      // Causal blocks past the tile's first row: 0 weights mask later keys unless one is
      // non-finite (0·NaN); then its non-finite values go key by key (a uniform branch, taken
      // before the next block's loads so that their registers are not live across it).
      if (p.causal && i * KB + KB - 1 > t0 && __syncthreads_or(aft_fg_block_bad<T>(bs)))
        aft_tc_nonfinite_block<T, 4, AFT_FG_ALD, AFT_FG_BLD, AFT_FG_COLS, AFT_FG_THREADS>(as, bs, t0, i * KB, wr, ncol,
                                                                                    num, den);
      if (more) {  // next block: w into registers, bmat into the other stage
        aft_fg_load_any(p, w, (i + 1) * KB, wreg);
        aft_fg_copy_b(p, b, (i + 1) * KB, ((i + 1) & 1) * AFT_FG_STAGE * 2);
        cp_async_commit();
      }
      const u32 sa = fa + (i & 1) * AFT_FG_STAGE * 2, sb = fb + (i & 1) * AFT_FG_STAGE * 2;
      aft_fg_mma16<T>(sa, sb, num, den);
      if (more) aft_fg_exp_any<T, 8, 1>(p, w, 0, (i + 1) * KB, wreg, rcf, ap, mv, (i + 1) & 1, tok0 + i + 1);
      aft_fg_mma16<T>(sa + 16 * 2, sb + 16 * AFT_FG_BLD * 2, num, den);
      if (more) aft_fg_store_w(nas, ap);
      cp_async_wait<0>();
      __syncthreads();  // the other stage is complete; this one may be overwritten next
    }
    if (pl.live) aft_fg_epilogue<T>(p, pl.tile, t0, wr, pl.wt, num, den);
    tok0 += nkb;
  }
}

#if !defined(__CUDA_ARCH__) || __CUDA_ARCH__ >= 900
// The same product with the W tile shared by a cluster of AFT_FG_CL CTAs (consecutive channel
// pairs of one row tile, sm_90): CTA r exps rows [32r, 32r + 32) of each 32-key block and stores
// them into the A stage of every CTA of the cluster (distributed shared memory), so w is read and
// exp'd once per cluster instead of once per CTA: L2 → SM traffic per block 16 KB of bmat + 4 KB of
// w (was 16 + 16).
// The exchange runs two blocks ahead, on one split cluster barrier per block whose wait comes a
// block after its arrival: in block i a CTA waits (after its first k-step) for the phase that
// every CTA arrived at in block i − 1, which made A(i + 1) complete; then exps and stores A(i + 2)
// and arrives. So the barrier's round trip (a GPU-scope fence for the remote stores, then the
// slowest CTA's arrival) overlaps a whole block of product instead of sitting between two k-steps
// (ptxas schedules the second k-step's HMMAs after a wait that follows them). Four A stages: A(i + 2)
// goes into the stage of block i − 2, which every CTA finished reading before it arrived in block
// i − 1.
// Copies run AFT_FG_AHEAD blocks ahead of the product: block i + AHEAD's bmat and w go out (one
// cp.async group) halfway through block i's product, and block i + 2's w is read in block i, so it
// has ≈ AHEAD − 2 blocks of product time to land (w is read from DRAM about once per row tile: with
// one 8-warp CTA per SM nothing else covers a DRAM round trip). w goes into per-thread slots of a
// w stage (AftFgW), read back only by the thread that copied it, so its own cp.async wait orders
// it.
#define AFT_FG_CL 4
#define AFT_FG_OWN (AFT_FG_ROWS / AFT_FG_CL)  // rows each CTA exps
#define AFT_FG_AST 4     // A stages (and stages of row moves)
#define AFT_FG_AHEAD 4   // ≥ 3: block i + 2 is waited for while block i + 3 may be out
#define AFT_FG_NB (AFT_FG_AHEAD + 1)                     // bmat and w stages
#define AFT_FG_WSTAGE (AFT_FG_THREADS * 2 * 8)           // bytes: 2 row slots × a key pair per thread
// bytes: AST A stages, NB B and w stages, this CTA's rows' exponent offsets, the moves (AST stages)
#define AFT_FG_CL_SMEM                                                                                 \
  (AFT_FG_AST * AFT_FG_ROWS * AFT_FG_ALD * 2 + AFT_FG_NB * (AFT_FG_KB * AFT_FG_BLD * 2 + AFT_FG_WSTAGE) + \
   AFT_FG_OWN * 4 + AFT_FG_AST * (AFT_FG_ROWS * 8 + 8 * AFT_FG_CL * 4))

// The packed operands of this CTA's rows (slot j: own row threadIdx.x / 16 + 16·j) stored into A
// stage `as` of every CTA of the cluster.
__device__ __forceinline__ void aft_fgc_share_w(int rank, const u32 (&ap)[2], u16* as) {
#pragma unroll
  for (int j = 0; j < 2; ++j) {
    const int row = rank * AFT_FG_OWN + threadIdx.x / 16 + 16 * j;
    const u16* dst = &as[row * AFT_FG_ALD + 2 * (threadIdx.x % 16)];
#pragma unroll
    for (int c = 0; c < AFT_FG_CL; ++c) st_cluster_u32(dst, c, ap[j]);
  }
}

// w of keys [kb, kb + 32) of the thread's SLOTS rows (aft_fg_load_w's values, zeros past T) by
// cp.async into the thread's own slots of the w stage at shared address `ws`: slot i at
// ws + (i·AFT_FG_THREADS + threadIdx.x)·8 (a warp's slots are 256 contiguous bytes).
template <int SLOTS>
__device__ __forceinline__ void aft_fg_copy_w(const AftParams& p, const AftFgW& w, int kb, u32 ws) {
  if (aft_fg_load_fast<SLOTS>(p, w, kb)) {  // every row and key inside, pairs aligned
    const u32 own = ws + threadIdx.x * 8;
#pragma unroll
    for (int i = 0; i < SLOTS; ++i) cp_async8_at(own + i * AFT_FG_THREADS * 8, w.row + i * w.step + kb, true);
    return;
  }
  const int t = w.r0 + threadIdx.x / 16, tp = kb + 2 * (threadIdx.x % 16);
  const float* none = reinterpret_cast<const float*>(p.w);  // not read
#pragma unroll
  for (int i = 0; i < SLOTS; ++i) {
    const float* a = w.row + i * w.step + kb;
    const bool row = t + 16 * i < p.t;
    const u32 d = ws + (i * AFT_FG_THREADS + threadIdx.x) * 8;
    if (w.pairs) {  // T even: a pair is inside or past T as a whole
      cp_async8_at(d, row && tp < p.t ? a : none, row && tp < p.t);
    } else {
      cp_async4_at(d, row && tp < p.t ? a : none, row && tp < p.t);
      cp_async4_at(d + 4, row && tp + 1 < p.t ? a + 1 : none, row && tp + 1 < p.t);
    }
  }
}
template <int SLOTS> __device__ __forceinline__ void aft_fg_read_w(u32 ws, float (&wr)[SLOTS][2]) {
#pragma unroll
  for (int i = 0; i < SLOTS; ++i) {
    const float2 x = lds_f2(ws + (i * AFT_FG_THREADS + threadIdx.x) * 8);
    wr[i][0] = x.x;
    wr[i][1] = x.y;
  }
}

template <typename T>
__device__ void aft_full_tc_cl(const AftParams& p) {
  constexpr int ROWS = AFT_FG_ROWS, KB = AFT_FG_KB, ASZ = ROWS * AFT_FG_ALD, BSZ = KB * AFT_FG_BLD;
  constexpr int AHEAD = AFT_FG_AHEAD, NB = AFT_FG_NB, AST = AFT_FG_AST;
  static_assert(AHEAD >= 3 && AST >= 4, "the exchange two blocks ahead of the product");
  extern __shared__ __align__(16) u16 fg_smem[];
  u16* const abase = fg_smem;              // AST A stages
  u16* const bbase = fg_smem + AST * ASZ;  // NB B stages
  const u32 wbase = smem_addr(bbase + NB * BSZ);  // NB w stages
  float* rcf = reinterpret_cast<float*>(bbase + NB * BSZ + NB * AFT_FG_WSTAGE / 2);  // this CTA's own rows
  const AftFgMoves mv = {reinterpret_cast<float2*>(rcf + AFT_FG_OWN),
                         reinterpret_cast<int*>(rcf + AFT_FG_OWN + 2 * AST * ROWS)};  // AST stages
  const int rank = cluster_rank();
  const AftFgPlace pl = aft_fg_place(p);
  const int wr = pl.wr, ncol = pl.ncol;
  const u16* bm = pl.bm;
  const u32 fa = smem_addr(abase) + aft_fg_aoff(wr), fb = smem_addr(bbase) + aft_fg_boff(ncol);  // stage 0
  const u32 fl = aft_fg_flag_at<AFT_FG_CL>(mv, wr);
  aft_fg_moves_init(mv, AST, AFT_FG_CL);  // before the first cluster barrier: no remote store yet
  int tok0 = 1;  // token of the row tile's first block

  for (int it = blockIdx.y; it < div_up(p.t, ROWS); it += gridDim.y) {
    int t0, nkb;
    aft_fg_rows(p, it, t0, nkb);
    // Every CTA of the cluster has started, and is done with the previous row tile's A stages.
    cluster_sync();
    const int r0 = t0 + rank * AFT_FG_OWN;  // this CTA's rows of W
    aft_fg_unset(AFT_FG_OWN, rcf);
    const AftFgW w = aft_fg_w(p, r0);
    float num[4][4][4], den[4][4][4];
    aft_fg_zero(num, den);
    float wreg[2][2];
    u32 ap[2];
    AftFgB b = aft_fg_b(p, bm, bbase);
    // Blocks 0 … AHEAD − 1 go out, a cp.async group each (empty past the tile's last block), so
    // that exactly one group is committed per block and wait<AHEAD − 3> in block i means
    // "through block i + 2".
#pragma unroll
    for (int j = 0; j < AHEAD; ++j) {
      if (j < nkb) {
        aft_fg_copy_b(p, b, j * KB, (j % NB) * BSZ * 2);
        aft_fg_copy_w<2>(p, w, j * KB, wbase + (j % NB) * AFT_FG_WSTAGE);
      }
      cp_async_commit();
    }
    // A(j): block j's operands of this CTA's rows into A stage j % AST of every CTA (a moved
    // reference into row-move stage j % AST), from its w copies (complete for this thread).
    auto exchange = [&](int j) {
      aft_fg_read_w<2>(wbase + (j % NB) * AFT_FG_WSTAGE, wreg);
      aft_fg_exp_any<T, 2, AFT_FG_CL>(p, w, rank * AFT_FG_OWN, j * KB, wreg, rcf, ap, mv, j % AST, tok0 + j);
      aft_fgc_share_w(rank, ap, abase + (j % AST) * ASZ);
    };
    cp_async_wait<AHEAD - 2>();  // blocks 0 and 1
    __syncthreads();             // rcf; block 0's bmat from every thread
    exchange(0);
    cluster_sync();  // A(0) complete in every CTA
    if (nkb > 1) exchange(1);
    cluster_arrive();  // the phase that completes A(1), waited for in block 0

    for (int i = 0; i < nkb; ++i) {
      const u16* as = abase + (i % AST) * ASZ;
      u16* bs = bbase + (i % NB) * BSZ;  // non-finite values may be zeroed
      aft_fg_rescale<AFT_FG_CL>(mv, fl, i % AST, tok0 + i, wr, num, den);
      // Causal blocks past the tile's first row holding a non-finite bmat value: those values
      // key by key.
      if (p.causal && i * KB + KB - 1 > t0 && __syncthreads_or(aft_fg_block_bad<T>(bs)))
        aft_tc_nonfinite_block<T, 4, AFT_FG_ALD, AFT_FG_BLD, AFT_FG_COLS, AFT_FG_THREADS>(as, bs, t0, i * KB, wr, ncol,
                                                                                    num, den);
      const u32 sa = fa + (i % AST) * ASZ * 2, sb = fb + (i % NB) * BSZ * 2;
      aft_fg_mma16<T>(sa, sb, num, den);
      cluster_wait();  // every CTA's stores of A(i + 1), arrived at in block i − 1
      if (i + 2 < nkb) {
        cp_async_wait<AHEAD - 3>();  // this thread's copies of block i + 2 (i + 3's may be out)
        exchange(i + 2);
      }
      cluster_arrive();  // this CTA's stores of A(i + 2) are done (waited for in block i + 1)
      // Block i + AHEAD into the stages block i − 1 used (every thread finished reading that B
      // stage before the last block's barrier; the w stage is this thread's own). Issued after
      // the arrive: its release is a GPU-scope fence (MEMBAR.ALL.GPU), which must not wait for
      // copies that have only just gone out.
      if (i + AHEAD < nkb) {
        const int s = (i + AHEAD) % NB;
        aft_fg_copy_b(p, b, (i + AHEAD) * KB, s * BSZ * 2);
        aft_fg_copy_w<2>(p, w, (i + AHEAD) * KB, wbase + s * AFT_FG_WSTAGE);
      }
      cp_async_commit();
      aft_fg_mma16<T>(sa + 16 * 2, sb + 16 * AFT_FG_BLD * 2, num, den);
      __syncthreads();  // block i + 1's bmat from every thread (each waited for it in block i − 1)
    }
    cluster_wait();  // the arrival of the last block
    if (pl.live) aft_fg_epilogue<T>(p, pl.tile, t0, wr, pl.wt, num, den);
    tok0 += nkb;
  }
  cluster_sync();  // no CTA exits while another may still address its shared memory
}

#define AFT_FG_CL_DTYPE(T, NAME)                                                                   \
  extern "C" __global__ void __launch_bounds__(AFT_FG_THREADS, 1) __cluster_dims__(AFT_FG_CL, 1, 1) \
      aft_full_tc_cl_##NAME(const __grid_constant__ AftParams p) {                                 \
    aft_full_tc_cl<T>(p);                                                                          \
  }
#else
#define AFT_FG_CL_DTYPE(T, NAME)
#endif
AFT_FG_CL_DTYPE(f16, f16)
AFT_FG_CL_DTYPE(bf16, bf16)

// 1 CTA (8 warps, ≤ 255 registers, 54 KB of dynamic shared memory) per SM.
#define AFT_FG_DTYPE(T, NAME)                                                                      \
  extern "C" __global__ void __launch_bounds__(AFT_THREADS) aft_full_b_##NAME(                     \
      const __grid_constant__ AftParams p) {                                                       \
    aft_full_b<T>(p);                                                                              \
  }                                                                                                \
  extern "C" __global__ void __launch_bounds__(AFT_FG_THREADS, 1) aft_full_tc_##NAME(              \
      const __grid_constant__ AftParams p) {                                                       \
    aft_full_tc<T>(p);                                                                             \
  }

AFT_FG_DTYPE(f16, f16)
AFT_FG_DTYPE(bf16, bf16)
