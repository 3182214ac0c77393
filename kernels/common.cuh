// Shared device helpers: dtype load/store (f16/bf16/f32), reductions.
// Self-contained (no CUDA headers), so the same text compiles under nvcc and NVRTC.
#pragma once

typedef unsigned short u16;
typedef unsigned int u32;
typedef unsigned long long u64;
typedef long long i64;

// Storage types: 16-bit floats are carried as raw bits and converted with PTX cvt.
struct f16 { u16 bits; };
struct bf16 { u16 bits; };

__device__ __forceinline__ float to_f32(float x) { return x; }
__device__ __forceinline__ float to_f32(f16 x) {
  float f;
  asm("cvt.f32.f16 %0, %1;" : "=f"(f) : "h"(x.bits));
  return f;
}
__device__ __forceinline__ float to_f32(bf16 x) { return __uint_as_float(((u32)x.bits) << 16); }

template <typename T> __device__ __forceinline__ T from_f32(float x);
template <> __device__ __forceinline__ float from_f32<float>(float x) { return x; }
template <> __device__ __forceinline__ f16 from_f32<f16>(float x) {
  f16 h;
  asm("cvt.rn.f16.f32 %0, %1;" : "=h"(h.bits) : "f"(x));
  return h;
}
template <> __device__ __forceinline__ bf16 from_f32<bf16>(float x) {
  bf16 h;
  asm("cvt.rn.bf16.f32 %0, %1;" : "=h"(h.bits) : "f"(x));
  return h;
}

// Two fp32 values rounded to T (f16, bf16) and packed low-first, in one cvt.
template <typename T> __device__ __forceinline__ u32 pack2(float lo, float hi);
template <> __device__ __forceinline__ u32 pack2<f16>(float lo, float hi) {
  u32 r;
  asm("cvt.rn.f16x2.f32 %0, %1, %2;" : "=r"(r) : "f"(hi), "f"(lo));
  return r;
}
template <> __device__ __forceinline__ u32 pack2<bf16>(float lo, float hi) {
  u32 r;
  asm("cvt.rn.bf16x2.f32 %0, %1, %2;" : "=r"(r) : "f"(hi), "f"(lo));
  return r;
}
// The two values of a packed pair (low first) as fp32.
template <typename T> __device__ __forceinline__ void unpack2(u32 x, float& lo, float& hi) {
  lo = to_f32(T{(u16)(x & 0xffffu)});
  hi = to_f32(T{(u16)(x >> 16)});
}

// a ≈ hi + lo, b likewise: hi = the pair rounded to T, lo = the remainders rounded to T.
template <typename T> __device__ __forceinline__ void split2(float a, float b, u32& hi, u32& lo) {
  hi = pack2<T>(a, b);
  float ha, hb;
  unpack2<T>(hi, ha, hb);
  lo = pack2<T>(a - ha, b - hb);
}

// Loads 8 consecutive elements (16 bytes for 16-bit types) into fp32. `p` must be 16-byte
// aligned for 16-bit types and 32-byte aligned for f32 (callers check alignment on the host).
__device__ __forceinline__ void load8(const f16* p, float* out) {
  uint4 raw = *reinterpret_cast<const uint4*>(p);
  const u16* h = reinterpret_cast<const u16*>(&raw);
#pragma unroll
  for (int i = 0; i < 8; ++i) out[i] = to_f32(f16{h[i]});
}
__device__ __forceinline__ void load8(const bf16* p, float* out) {
  uint4 raw = *reinterpret_cast<const uint4*>(p);
  const u16* h = reinterpret_cast<const u16*>(&raw);
#pragma unroll
  for (int i = 0; i < 8; ++i) out[i] = to_f32(bf16{h[i]});
}
__device__ __forceinline__ void load8(const float* p, float* out) {
  float4 a = reinterpret_cast<const float4*>(p)[0];
  float4 b = reinterpret_cast<const float4*>(p)[1];
  out[0] = a.x; out[1] = a.y; out[2] = a.z; out[3] = a.w;
  out[4] = b.x; out[5] = b.y; out[6] = b.z; out[7] = b.w;
}

// Exponentials of the 16-bit-storage kernels. expf costs ~12 issue slots (range reduction,
// two-step exp2, a rescale, and a branch when guarded); these cost one MUFU each, with the
// argument pre-multiplied by log2(e) in an FFMA the caller already does. ex2.approx.ftz:
// ≤ 2 ulp relative error (far below the 16-bit operands' 2^-9), results below 2^-126 flushed
// to 0, ex2(−inf) = 0, ex2(NaN) = NaN.
#define LOG2E_F 1.4426950408889634f
__device__ __forceinline__ float ex2_fast(float x) {
  float y;
  asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x));
  return y;
}
// min(a, b), NaN if either is NaN (fminf would return the other operand and hide a poison).
__device__ __forceinline__ float fmin_nan(float a, float b) {
  float y;
  asm("min.NaN.f32 %0, %1, %2;" : "=f"(y) : "f"(a), "f"(b));
  return y;
}
// max(a, b), NaN if either is NaN.
__device__ __forceinline__ float fmax_nan(float a, float b) {
  float y;
  asm("max.NaN.f32 %0, %1, %2;" : "=f"(y) : "f"(a), "f"(b));
  return y;
}

__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

// max(x, 0) that keeps NaN (fmaxf(NaN, 0) is 0): a poisoned distance stays poisoned.
__device__ __forceinline__ float nonneg(float x) { return x < 0.f ? 0.f : x; }

__device__ __forceinline__ int div_up(int a, int b) { return (a + b - 1) / b; }

// v[u] = p[i0 + u·step] where i0 + u·step < n, else 0: all N loads issued before any value is
// used. A loop over a small array in L2 written plainly compiles to a load and its use per
// iteration, one round trip each (bench/NOTES.md, "prologues that waited out one L2 round trip
// per value"); with this it pays one per N values.
template <int N, typename I>
__device__ __forceinline__ void load_batch(float (&v)[N], const float* p, I i0, I step, I n) {
#pragma unroll
  for (int u = 0; u < N; ++u) v[u] = i0 + u * step < n ? p[i0 + u * step] : 0.f;
}

// The item at position g (< n) of an order on n items split into strips of L consecutive ones (the
// last strip may be shorter): by offset within a strip, descending, every strip of one offset
// together in ascending strips. A bijection on [0, n); strip_desc(n − 1 − g, …) is the reverse
// order. A pass whose CTAs walk strips in step reads first what a pass in the reverse order read
// last, which L2 may still hold (the L2 seams of bench/NOTES.md).
__device__ __forceinline__ u32 strip_desc(u32 g, u32 n, u32 L) {
  const u32 F = n / L, R = n % L;  // whole strips; tiles of the short one
  const u32 top = (L - R) * F;     // (offset, strip) pairs of the offsets ≥ R
  const u32 o = g < top ? L - 1 - g / F : R - 1 - (g - top) / (F + 1);
  const u32 strip = g < top ? g % F : (g - top) % (F + 1);
  return strip * L + o;
}

// x, as a value the compiler cannot recompute from its source (a special register, say) where it
// is used: a register-allocation lever (no instruction is emitted).
__device__ __forceinline__ int opaque(int x) {
  asm volatile("" : "+r"(x));
  return x;
}

// Programmatic dependent launch (sm_90; no-ops in a launch that did not ask for it, and before
// sm_90). A kernel that the next one need not wait for lets it start beside itself with
// pdl_start_dependents(); that next kernel, launched with the programmatic-serialization
// attribute (ops::launch_smem_beside), calls pdl_wait_previous() before it exits, so it still
// completes after the previous kernel and its writes, and the launches after it see both.
__device__ __forceinline__ void pdl_start_dependents() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.launch_dependents;" ::: "memory");
#endif
}
__device__ __forceinline__ void pdl_wait_previous() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.wait;" ::: "memory");
#endif
}
