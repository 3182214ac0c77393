// AFT-full (causal or not), f16/bf16 storage, as one GEMM over every (b,h) and channel at once:
//   [num | den] (T × bcols) = W (T × T) · bmat (T × bcols),   W[t][t'] = exp(w[t][t'] − r_t),
// then Y = σ(Q)·num/den. W is shared by every slice (AFT-full's bias has no head), so one
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
// so MUFU work overlaps other warps' mma); one barrier per block.
#pragma once
#include "aft_tc.cuh"

#define AFT_FG_ROWS 128
#define AFT_FG_COLS 256  // two channel tiles
#define AFT_FG_KB 32
#define AFT_FG_THREADS 256
#define AFT_FG_ALD 40   // A rows (halves): ldmatrix rows at 80-byte steps hit distinct banks
#define AFT_FG_BLD 264  // B rows (halves): 528-byte steps, likewise
#define AFT_FG_STAGE (AFT_FG_ROWS * AFT_FG_ALD + AFT_FG_KB * AFT_FG_BLD)  // halves
#define AFT_FG_SMEM (2 * AFT_FG_STAGE * 2 + AFT_FG_ROWS * 4)             // bytes (+ row exp coefficients)

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

// The loaded w as packed operands exp(w − r_t)·sw = 2^(w·log2(e) + rcf) (rcf[row] = log2(sw) −
// r_t·log2(e) of the rows from r0); 0 for keys past T and (causal) past the row.
template <typename T, int SLOTS, bool FAST>
__device__ __forceinline__ void aft_fg_exp_w(const AftParams& p, int r0, int kb, const float (&wr)[SLOTS][2],
                                             const float* rcf, u32 (&ap)[SLOTS]) {
  const int tp = kb + 2 * (threadIdx.x % 16);
#pragma unroll
  for (int i = 0; i < SLOTS; ++i) {
    const int row = threadIdx.x / 16 + 16 * i;
    const float c = rcf[row];
    float a0 = ex2_fast(fmaf(wr[i][0], LOG2E_F, c)), a1 = ex2_fast(fmaf(wr[i][1], LOG2E_F, c));
    if (!FAST) {
      const int end = p.causal ? min(p.t, r0 + row + 1) : p.t;
      a0 = tp < end ? a0 : 0.f;
      a1 = tp + 1 < end ? a1 : 0.f;
    }
    ap[i] = pack2<T>(a0, a1);
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
template <typename T, int SLOTS>
__device__ __forceinline__ void aft_fg_exp_any(const AftParams& p, const AftFgW& w, int kb, const float (&wr)[SLOTS][2],
                                               const float* rcf, u32 (&ap)[SLOTS]) {
  if (aft_fg_exp_fast(p, w, kb))
    aft_fg_exp_w<T, SLOTS, true>(p, w.r0, kb, wr, rcf, ap);
  else
    aft_fg_exp_w<T, SLOTS, false>(p, w.r0, kb, wr, rcf, ap);
}

// rcf[i] for rows r0 + i, i < n (CTA-strided; the caller synchronizes).
template <typename T> __device__ __forceinline__ void aft_fg_row_coef(const AftParams& p, int r0, int n, float* rcf) {
  const float* rmax = reinterpret_cast<const float*>(p.rmax);
  const float l2s = AftScaled<T>::value ? 15.f : 0.f;
  for (int i = threadIdx.x; i < n; i += AFT_FG_THREADS) rcf[i] = fmaf(r0 + i < p.t ? -rmax[r0 + i] : 0.f, LOG2E_F, l2s);
}

__device__ __forceinline__ void aft_fg_store_w(u16* as, const u32 (&ap)[8]) {
#pragma unroll
  for (int i = 0; i < 8; ++i)
    *reinterpret_cast<u32*>(&as[(threadIdx.x / 16 + 16 * i) * AFT_FG_ALD + 2 * (threadIdx.x % 16)]) = ap[i];
}

// bmat rows [kb, kb + 32) × the CTA's 256 columns into bs by cp.async (zeros past T).
__device__ __forceinline__ void aft_fg_copy_b(const AftParams& p, const u16* bm, int kb, u16* bs) {
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    const int idx = threadIdx.x + AFT_FG_THREADS * i, key = idx / 32, seg = idx % 32;
    const bool ok = kb + key < p.t;
    cp_async16(&bs[key * AFT_FG_BLD + seg * 8], ok ? bm + (i64)(kb + key) * p.bcols + seg * 8 : bm, ok);
  }
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
  float* rcf = reinterpret_cast<float*>(fg_smem + 2 * AFT_FG_STAGE);
  const AftFgPlace pl = aft_fg_place(p);
  const int wr = pl.wr, ncol = pl.ncol;
  const u16* bm = pl.bm;

  for (int it = blockIdx.y; it < div_up(p.t, ROWS); it += gridDim.y) {
    int t0, nkb;
    aft_fg_rows(p, it, t0, nkb);
    __syncthreads();  // the previous row tile is done with shared memory
    aft_fg_row_coef<T>(p, t0, ROWS, rcf);
    const AftFgW w = aft_fg_w(p, t0);
    float num[4][4][4], den[4][4][4];
    aft_fg_zero(num, den);
    float wreg[8][2];
    u32 ap[8];
    aft_fg_load_any(p, w, 0, wreg);
    aft_fg_copy_b(p, bm, 0, fg_smem + ROWS * AFT_FG_ALD);
    cp_async_commit();
    __syncthreads();  // rcf
    aft_fg_exp_any<T>(p, w, 0, wreg, rcf, ap);
    aft_fg_store_w(fg_smem, ap);
    cp_async_wait<0>();
    __syncthreads();

    for (int i = 0; i < nkb; ++i) {
      const u16* as = fg_smem + (i & 1) * AFT_FG_STAGE;
      u16* bs = fg_smem + (i & 1) * AFT_FG_STAGE + ROWS * AFT_FG_ALD;  // non-finite values may be zeroed
      u16* nas = fg_smem + ((i + 1) & 1) * AFT_FG_STAGE;
      const bool more = i + 1 < nkb;
      // Causal blocks past the tile's first row: 0 weights mask later keys unless one is
      // non-finite (0·NaN); then its non-finite values go key by key (a uniform branch, taken
      // before the next block's loads so that their registers are not live across it).
      if (p.causal && i * KB + KB - 1 > t0 && __syncthreads_or(aft_fg_block_bad<T>(bs)))
        aft_tc_nonfinite_block<T, 4, AFT_FG_ALD, AFT_FG_BLD, AFT_FG_COLS, AFT_FG_THREADS>(as, bs, t0, i * KB, wr, ncol,
                                                                                    num, den);
      if (more) {  // next block: w into registers, bmat into the other stage
        aft_fg_load_any(p, w, (i + 1) * KB, wreg);
        aft_fg_copy_b(p, bm, (i + 1) * KB, nas + ROWS * AFT_FG_ALD);
        cp_async_commit();
      }
      aft_tc_mma16<T, 4, AFT_FG_ALD, AFT_FG_BLD>(as, bs, 0, wr, ncol, num, den);
      if (more) aft_fg_exp_any<T>(p, w, (i + 1) * KB, wreg, rcf, ap);
      aft_tc_mma16<T, 4, AFT_FG_ALD, AFT_FG_BLD>(as, bs, 16, wr, ncol, num, den);
      if (more) aft_fg_store_w(nas, ap);
      cp_async_wait<0>();
      __syncthreads();  // the other stage is complete; this one may be overwritten next
    }
    if (pl.live) aft_fg_epilogue<T>(p, pl.tile, t0, wr, pl.wt, num, den);
  }
}

#if !defined(__CUDA_ARCH__) || __CUDA_ARCH__ >= 900
// The same product with the W tile shared by a cluster of AFT_FG_CL CTAs (consecutive channel
// pairs of one row tile, sm_90): CTA r exps rows [32r, 32r + 32) of each 32-key block and stores
// them into the A stage of every CTA of the cluster (distributed shared memory), so w is read and
// exp'd once per cluster instead of once per CTA: L2 → SM traffic per block 16 KB of bmat + 4 KB of
// w (was 16 + 16). Three A stages and one split cluster barrier per block: a CTA arrives after its
// remote stores for block i + 1 and waits after its own second k-step; a stage written in block i
// was last read in block i − 2, before every CTA's arrival of block i − 1.
#define AFT_FG_CL 4
#define AFT_FG_OWN (AFT_FG_ROWS / AFT_FG_CL)  // rows each CTA exps
#define AFT_FG_CL_SMEM (3 * AFT_FG_ROWS * AFT_FG_ALD * 2 + 2 * AFT_FG_KB * AFT_FG_BLD * 2 + AFT_FG_OWN * 4)

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

template <typename T>
__device__ void aft_full_tc_cl(const AftParams& p) {
  constexpr int ROWS = AFT_FG_ROWS, KB = AFT_FG_KB, ASZ = ROWS * AFT_FG_ALD, BSZ = KB * AFT_FG_BLD;
  extern __shared__ __align__(16) u16 fg_smem[];
  u16* const abase = fg_smem;           // three A stages
  u16* const bbase = fg_smem + 3 * ASZ;  // two B stages
  float* rcf = reinterpret_cast<float*>(bbase + 2 * BSZ);  // exp coefficients of this CTA's own rows
  const int rank = cluster_rank();
  const AftFgPlace pl = aft_fg_place(p);
  const int wr = pl.wr, ncol = pl.ncol;
  const u16* bm = pl.bm;

  for (int it = blockIdx.y; it < div_up(p.t, ROWS); it += gridDim.y) {
    int t0, nkb;
    aft_fg_rows(p, it, t0, nkb);
    // Every CTA of the cluster has started, and is done with the previous row tile's A stages.
    cluster_sync();
    const int r0 = t0 + rank * AFT_FG_OWN;  // this CTA's rows of W
    aft_fg_row_coef<T>(p, r0, AFT_FG_OWN, rcf);
    const AftFgW w = aft_fg_w(p, r0);
    float num[4][4][4], den[4][4][4];
    aft_fg_zero(num, den);
    float wreg[2][2];
    u32 ap[2];
    aft_fg_load_any(p, w, 0, wreg);
    aft_fg_copy_b(p, bm, 0, bbase);
    cp_async_commit();
    __syncthreads();  // rcf
    aft_fg_exp_any<T>(p, w, 0, wreg, rcf, ap);
    aft_fgc_share_w(rank, ap, abase);
    cp_async_wait<0>();
    __syncthreads();
    cluster_sync();  // A stage 0 complete in every CTA

    for (int i = 0; i < nkb; ++i) {
      const u16* as = abase + (i % 3) * ASZ;
      u16* bs = bbase + (i & 1) * BSZ;  // non-finite values may be zeroed
      const bool more = i + 1 < nkb;
      // Causal blocks past the tile's first row holding a non-finite bmat value: those values
      // key by key.
      if (p.causal && i * KB + KB - 1 > t0 && __syncthreads_or(aft_fg_block_bad<T>(bs)))
        aft_tc_nonfinite_block<T, 4, AFT_FG_ALD, AFT_FG_BLD, AFT_FG_COLS, AFT_FG_THREADS>(as, bs, t0, i * KB, wr, ncol,
                                                                                    num, den);
      if (more) {
        aft_fg_load_any(p, w, (i + 1) * KB, wreg);
        aft_fg_copy_b(p, bm, (i + 1) * KB, bbase + ((i + 1) & 1) * BSZ);
        cp_async_commit();
      }
      aft_tc_mma16<T, 4, AFT_FG_ALD, AFT_FG_BLD>(as, bs, 0, wr, ncol, num, den);
      if (more) {
        aft_fg_exp_any<T>(p, w, (i + 1) * KB, wreg, rcf, ap);
        aft_fgc_share_w(rank, ap, abase + ((i + 1) % 3) * ASZ);
      }
      cluster_arrive();  // this CTA's stores of block i + 1 are done
      aft_tc_mma16<T, 4, AFT_FG_ALD, AFT_FG_BLD>(as, bs, 16, wr, ncol, num, den);
      cp_async_wait<0>();
      __syncthreads();
      cluster_wait();  // every CTA's stores of block i + 1 are visible
    }
    if (pl.live) aft_fg_epilogue<T>(p, pl.tile, t0, wr, pl.wt, num, den);
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
