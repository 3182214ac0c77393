// Tensor-core and async-copy helpers (sm_80+): cp.async, ldmatrix, mma.sync m16n8k16 with fp32
// accumulators. Fragment layouts follow the PTX ISA; g = lane / 4, t = lane % 4.
#pragma once
#include "common.cuh"

__device__ __forceinline__ u32 smem_addr(const void* p) {
  u32 a;
  asm("{ .reg .u64 t; cvta.to.shared.u64 t, %1; cvt.u32.u64 %0, t; }" : "=r"(a) : "l"(p));
  return a;
}
// The same through the compiler's intrinsic, which it can fold into the pointer arithmetic before
// it (32-bit shared-window offsets instead of 64-bit generic ones). Per call site: it cut the
// causal cosFormer block loop by ≈ 11 % but made the AFT window kernels spill.
__device__ __forceinline__ u32 smem_addr_folded(const void* p) { return (u32)__cvta_generic_to_shared(p); }

// 16-byte global→shared copy; copies zeros instead when `valid` is false (src is not read).
__device__ __forceinline__ void cp_async16(void* dst, const void* src, bool valid) {
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(smem_addr(dst)), "l"(src),
               "r"(valid ? 16 : 0));
}
__device__ __forceinline__ void cp_async16_at(u32 dst, const void* src, bool valid) {  // dst: smem_addr
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(dst), "l"(src), "r"(valid ? 16 : 0));
}
// 8- and 4-byte global→shared copies (through L1: .cg takes 16 bytes only); zeros when !valid.
__device__ __forceinline__ void cp_async8_at(u32 dst, const void* src, bool valid) {
  asm volatile("cp.async.ca.shared.global [%0], [%1], 8, %2;\n" ::"r"(dst), "l"(src), "r"(valid ? 8 : 0));
}
__device__ __forceinline__ void cp_async4_at(u32 dst, const void* src, bool valid) {
  asm volatile("cp.async.ca.shared.global [%0], [%1], 4, %2;\n" ::"r"(dst), "l"(src), "r"(valid ? 4 : 0));
}
// L2 eviction priority (sm_80+). A pass that reads or writes a stream for the last time marks its
// accesses evict-first, so that L2 gives up those lines before the ones a later pass re-reads (the
// L2 seams of bench/NOTES.md). Values are unaffected; only which lines L2 keeps. (volatile: made
// where used, one instruction, instead of a 64-bit register held across a kernel's loop.)
__device__ __forceinline__ u64 l2_evict_first() {
  u64 pol;
  asm volatile("createpolicy.fractional.L2::evict_first.b64 %0, 1.0;" : "=l"(pol));
  return pol;
}
// cp_async16_at under an L2 policy (l2_evict_first).
__device__ __forceinline__ void cp_async16_at_hint(u32 dst, const void* src, bool valid, u64 pol) {
  asm volatile("cp.async.cg.shared.global.L2::cache_hint [%0], [%1], 16, %2, %3;\n" ::"r"(dst), "l"(src),
               "r"(valid ? 16 : 0), "l"(pol));
}
// 16-byte global load under an L2 policy (data the kernel does not write).
__device__ __forceinline__ uint4 ld_global_v4_hint(const void* p, u64 pol) {
  uint4 v;
  asm("ld.global.L2::cache_hint.v4.u32 {%0, %1, %2, %3}, [%4], %5;"
      : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w)
      : "l"(p), "l"(pol));
  return v;
}
// 16-byte global store under an L2 policy.
__device__ __forceinline__ void st_global_v4_hint(void* p, uint4 v, u64 pol) {
  asm volatile("st.global.L2::cache_hint.v4.u32 [%0], {%1, %2, %3, %4}, %5;" ::"l"(p), "r"(v.x), "r"(v.y), "r"(v.z),
               "r"(v.w), "l"(pol)
               : "memory");
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::); }
template <int N> __device__ __forceinline__ void cp_async_wait() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(N));
}

// 32-bit store to a shared-window address (smem_addr): keeps staging loops from re-deriving the
// generic-to-shared conversion per store when registers are tight.
__device__ __forceinline__ void sts_u32(u32 addr, u32 v) {
  asm volatile("st.shared.u32 [%0], %1;" ::"r"(addr), "r"(v) : "memory");
}
__device__ __forceinline__ float2 lds_f2(u32 addr) {
  float2 v;
  asm volatile("ld.shared.v2.f32 {%0, %1}, [%2];" : "=f"(v.x), "=f"(v.y) : "r"(addr) : "memory");
  return v;
}
// Four 8×8 b16 matrices; lane l gives the address of row l % 8 of matrix l / 8.
__device__ __forceinline__ void ldmatrix_x4(u32 (&r)[4], const void* p) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(smem_addr(p)));
}
// Same, each matrix transposed on the way (for operands stored with k as the row index).
__device__ __forceinline__ void ldmatrix_x4_trans(u32 (&r)[4], const void* p) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(smem_addr(p)));
}

// The same two from a 32-bit shared-window address (smem_addr): loops step one base per lane with
// constant offsets, where generic pointers would convert (or keep a 64-bit induction variable)
// per distinct ldmatrix.
__device__ __forceinline__ void ldmatrix_x4_at(u32 (&r)[4], u32 a) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(a));
}
__device__ __forceinline__ void ldmatrix_x4_trans_at(u32 (&r)[4], u32 a) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(a));
}
__device__ __forceinline__ void ldmatrix_x2_trans_at(u32 (&r)[2], u32 a) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x2.trans.shared.b16 {%0,%1}, [%2];\n" : "=r"(r[0]), "=r"(r[1]) : "r"(a));
}
__device__ __forceinline__ u32 lds_u32(u32 addr) {
  u32 v;
  asm volatile("ld.shared.u32 %0, [%1];" : "=r"(v) : "r"(addr) : "memory");
  return v;
}

// d += a(16×16, row) · b(16×8, col), fp32 accumulate. T is f16 or bf16.
template <typename T> __device__ __forceinline__ void mma16816(float (&d)[4], const u32 (&a)[4], u32 b0, u32 b1);
template <> __device__ __forceinline__ void mma16816<f16>(float (&d)[4], const u32 (&a)[4], u32 b0, u32 b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
      "{%0,%1,%2,%3};\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}
template <> __device__ __forceinline__ void mma16816<bf16>(float (&d)[4], const u32 (&a)[4], u32 b0, u32 b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
      "{%0,%1,%2,%3};\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

// Eight 16-bit values from 16 bytes of shared memory, widened to fp32.
template <typename T> __device__ __forceinline__ void unpack8(const u16* p, float* out) {
  uint4 raw = *reinterpret_cast<const uint4*>(p);
  const u16* h = reinterpret_cast<const u16*>(&raw);
#pragma unroll
  for (int i = 0; i < 8; ++i) out[i] = to_f32(T{h[i]});
}

// Copies rows [row0, row0 + ROWS) × D of one (b,h) slice into padded shared rows; rows at or
// past row_end become zeros. Every thread issues its share of 16-byte copies; LAST: the rows'
// last read, evict-first in L2 under `pol` (l2_evict_first).
// Vector i goes to thread i % THREADS. When THREADS is a multiple of the vectors per row, a
// thread keeps one column and steps its row, source and destination pointers (3 instructions
// per copy instead of ~35 of index, 64-bit address and shared-window arithmetic).
template <int D, int LD, int ROWS, int THREADS, bool LAST = false>
__device__ __forceinline__ void tc_stage(u16 (*dst)[LD], const u16* src, i64 sn, int row0, int row_end, u64 pol = 0) {
  constexpr int VPR = D / 8;  // 16-byte vectors per row
  if constexpr (THREADS % VPR == 0) {
    constexpr int RSTEP = THREADS / VPR;
    const int r0 = threadIdx.x / VPR, c = (threadIdx.x % VPR) * 8;
    const u16* s = src + (i64)(row0 + r0) * sn + c;
    u32 d = smem_addr(&dst[r0][c]);
#pragma unroll 4  // (full unrolling makes sima_map_tc128 spill)
    for (int k = 0; k < (ROWS + RSTEP - 1) / RSTEP; ++k, s += RSTEP * sn, d += RSTEP * LD * 2) {
      const int r = r0 + k * RSTEP;
      const bool ok = row0 + r < row_end;
      if (ROWS % RSTEP == 0 || r < ROWS) {
        if constexpr (LAST) {
          cp_async16_at_hint(d, ok ? s : src, ok, pol);
        } else {
          cp_async16_at(d, ok ? s : src, ok);
        }
      }
    }
  } else {
#pragma unroll
    for (int i = threadIdx.x; i < ROWS * VPR; i += THREADS) {
      const int r = i / VPR, c = (i % VPR) * 8;
      const bool ok = row0 + r < row_end;
      if constexpr (LAST) {
        cp_async16_at_hint(smem_addr(&dst[r][c]), ok ? src + (i64)(row0 + r) * sn + c : src, ok, pol);
      } else {
        cp_async16(&dst[r][c], ok ? src + (i64)(row0 + r) * sn + c : src, ok);
      }
    }
  }
}

// Two 8×8 b16 matrices, transposed; lanes 0–15 give the row addresses (matrix l / 8, row l % 8).
__device__ __forceinline__ void ldmatrix_x2_trans(u32 (&r)[2], const void* p) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x2.trans.shared.b16 {%0,%1}, [%2];\n"
               : "=r"(r[0]), "=r"(r[1])
               : "r"(smem_addr(p)));
}

// ReLU of two packed values: max(x, +0); max(NaN, 0) = 0, as fmaxf (docs/non-finite.md).
template <typename T> __device__ __forceinline__ u32 relu2(u32 x);
template <> __device__ __forceinline__ u32 relu2<f16>(u32 x) {
  u32 r;
  asm("max.f16x2 %0, %1, %2;" : "=r"(r) : "r"(x), "r"(0u));
  return r;
}
template <> __device__ __forceinline__ u32 relu2<bf16>(u32 x) {
  u32 r;
  asm("max.bf16x2 %0, %1, %2;" : "=r"(r) : "r"(x), "r"(0u));
  return r;
}

// ReLU in place of the 16-byte vectors this thread copied with tc_stage<D, LD, ROWS, THREADS>
// (same assignment), once its copies are complete (cp_async_wait): a thread sees its own cp.async
// data; a barrier then publishes the result. Rows past the end are zeros and stay so.
template <typename T, int D, int LD, int ROWS, int THREADS>
__device__ __forceinline__ void tc_relu_own(u16 (*dst)[LD]) {
  constexpr int VPR = D / 8;
  static_assert(THREADS % VPR == 0, "tc_stage's stepped assignment");
  constexpr int RSTEP = THREADS / VPR;
  const int c = (threadIdx.x % VPR) * 8;
#pragma unroll
  for (int r = threadIdx.x / VPR; r < ROWS; r += RSTEP) {
    uint4* x = reinterpret_cast<uint4*>(&dst[r][c]);
    uint4 y = *x;
    y.x = relu2<T>(y.x);
    y.y = relu2<T>(y.y);
    y.z = relu2<T>(y.z);
    y.w = relu2<T>(y.w);
    *x = y;
  }
}

// Two packed values times two fp32 factors, computed in fp32 and rounded once.
template <typename T> __device__ __forceinline__ u32 scale2(u32 x, float lo, float hi) {
  float a, b;
  unpack2<T>(x, a, b);
  return pack2<T>(a * lo, b * hi);
}

// Two packed ones: a B fragment of ones turns an mma into row sums of A.
template <typename T> __device__ __forceinline__ u32 ones2();
template <> __device__ __forceinline__ u32 ones2<f16>() { return 0x3C003C00u; }
template <> __device__ __forceinline__ u32 ones2<bf16>() { return 0x3F803F80u; }

// Exponent mask of one 16-bit value: all bits set means ±Inf or NaN.
template <typename T> __device__ __forceinline__ u32 exp_mask();
template <> __device__ __forceinline__ u32 exp_mask<f16>() { return 0x7C00u; }
template <> __device__ __forceinline__ u32 exp_mask<bf16>() { return 0x7F80u; }

// Whether either packed value is ±Inf or NaN.
template <typename T> __device__ __forceinline__ bool nonfinite2(u32 x) {
  const u32 e = exp_mask<T>();
  return (x & e) == e || ((x >> 16) & e) == e;
}
// The same pair with non-finite values replaced by +0.
template <typename T> __device__ __forceinline__ u32 finite_or_zero2(u32 x) {
  const u32 e = exp_mask<T>();
  const u32 lo = (x & e) == e ? 0u : (x & 0xffffu);
  const u32 hi = ((x >> 16) & e) == e ? 0u : (x >> 16);
  return lo | (hi << 16);
}

// A power of two 2^e with mx·2^e ∈ [1, 2) (e clamped to ±120; 1 when mx is 0 or NaN, 2 when it
// is +inf): scales fp32 values into the 16-bit operand range without changing their mantissas.
// From the exponent bits (frexpf's exponent for normal mx; subnormal ones clamp to −120 either
// way), so no frexpf/ldexpf call sequences in the hot loops.
__device__ __forceinline__ float pow2_scale(float mx) {
  const int be = (int)((__float_as_uint(mx) >> 23) & 0xffu);
  const int ex = be == 255 ? 0 : max(-120, min(120, be - 126));  // mx = m·2^ex, m ∈ [0.5, 1)
  return mx > 0.f ? __uint_as_float((u32)(128 - ex) << 23) : 1.f;  // 2^(1 − ex)
}

// 1/x for a power of two x = 2^k, |k| ≤ 126, exactly (no division).
__device__ __forceinline__ float pow2_inv(float x) { return __uint_as_float((254u << 23) - __float_as_uint(x)); }

#if !defined(__CUDA_ARCH__) || __CUDA_ARCH__ >= 900
// Thread-block clusters (sm_90). Every thread of the cluster arrives (release) and waits
// (acquire): memory operations before the barrier, global and distributed shared ones included,
// are visible to the whole cluster after it. The split halves let work run between them.
__device__ __forceinline__ void cluster_arrive() { asm volatile("barrier.cluster.arrive.release.aligned;\n" ::: "memory"); }
__device__ __forceinline__ void cluster_wait() { asm volatile("barrier.cluster.wait.acquire.aligned;\n" ::: "memory"); }
__device__ __forceinline__ void cluster_sync() {
  cluster_arrive();
  cluster_wait();
}
__device__ __forceinline__ int cluster_rank() {
  u32 r;
  asm volatile("mov.u32 %0, %%cluster_ctarank;" : "=r"(r));
  return (int)r;
}
// Stores v at the address of `local` in the shared memory of cluster CTA `rank`.
__device__ __forceinline__ void st_cluster_u32(const void* local, int rank, u32 v) {
  u32 remote;
  asm volatile("mapa.shared::cluster.u32 %0, %1, %2;" : "=r"(remote) : "r"(smem_addr(local)), "r"(rank));
  asm volatile("st.shared::cluster.u32 [%0], %1;" ::"r"(remote), "r"(v) : "memory");
}
// The cluster shared-window address of shared-window address `local` in cluster CTA `rank`.
// Linear: mapa(local + d) = mapa(local) + d, so one per CTA serves a whole array.
__device__ __forceinline__ u32 cluster_map(u32 local, int rank) {
  u32 remote;
  asm("mapa.shared::cluster.u32 %0, %1, %2;" : "=r"(remote) : "r"(local), "r"(rank));
  return remote;
}
// Stores (v0, v1) at cluster shared-window address `remote` (8-byte aligned).
__device__ __forceinline__ void st_cluster_v2_at(u32 remote, u32 v0, u32 v1) {
  asm volatile("st.shared::cluster.v2.u32 [%0], {%1, %2};" ::"r"(remote), "r"(v0), "r"(v1) : "memory");
}
// Stores v at cluster shared-window address `remote`.
__device__ __forceinline__ void st_cluster_u32_at(u32 remote, u32 v) {
  asm volatile("st.shared::cluster.u32 [%0], %1;" ::"r"(remote), "r"(v) : "memory");
}
// mbarriers (sm_90) at shared-window address `bar` (8-byte aligned). A phase completes when its
// pending arrivals (the count given at init) and its expected transaction bytes are both spent.
__device__ __forceinline__ void mbar_init(u32 bar, u32 count) {
  asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;" ::"r"(bar), "r"(count) : "memory");
}
// Makes this thread's mbarrier inits visible to the cluster's async operations (st.async of other
// CTAs); a cluster barrier must still separate it from their first use.
__device__ __forceinline__ void mbar_init_fence() { asm volatile("fence.mbarrier_init.release.cluster;" ::: "memory"); }
// One arrival on the current phase, which then also waits for `bytes` more transaction bytes.
__device__ __forceinline__ void mbar_arrive_expect_tx(u32 bar, u32 bytes) {
  asm volatile("{\n .reg .b64 state;\n mbarrier.arrive.expect_tx.release.cta.shared::cta.b64 state, [%0], %1;\n}"
               ::"r"(bar), "r"(bytes) : "memory");
}
// Returns once the phase of parity `parity` has completed; acquires at cluster scope, so the
// bytes other CTAs' st.async completed on that phase are visible after it.
__device__ __forceinline__ void mbar_wait_cluster(u32 bar, u32 parity) {
  asm volatile(
      "{\n .reg .pred done;\n WAIT:\n"
      " mbarrier.try_wait.parity.acquire.cluster.shared::cta.b64 done, [%0], %1;\n"
      " @!done bra WAIT;\n}" ::"r"(bar), "r"(parity) : "memory");
}
// Asynchronous stores into another CTA's shared memory: (v0, v1) (8-byte aligned) or v at cluster
// address `remote`, each completing its bytes on the mbarrier at cluster address `remote_bar` of
// that same CTA. No fence and no wait on the sender's side; the complete-tx releases at cluster
// scope, ordering the sender's earlier memory operations before the receiver's wait.
__device__ __forceinline__ void st_async_v2(u32 remote, u32 v0, u32 v1, u32 remote_bar) {
  asm volatile("st.async.shared::cluster.mbarrier::complete_tx::bytes.v2.b32 [%0], {%1, %2}, [%3];"
               ::"r"(remote), "r"(v0), "r"(v1), "r"(remote_bar) : "memory");
}
__device__ __forceinline__ void st_async_u32(u32 remote, u32 v, u32 remote_bar) {
  asm volatile("st.async.shared::cluster.mbarrier::complete_tx::bytes.b32 [%0], %1, [%2];"
               ::"r"(remote), "r"(v), "r"(remote_bar) : "memory");
}
#endif
