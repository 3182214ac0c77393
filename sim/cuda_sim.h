// The CUDA dialect of kernels/*.cu as plain C++ for the CPU simulator (sim/README.md).
// Force-included before a kernel file by sim/build.py; the file's inline PTX is replaced by calls
// into sim:: (the table in build.py), its __shared__ declarations by per-block arena slots.
#pragma once
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <sched.h>

#define SOFA_SIM 1
#define __global__ SIM_GLOBAL            // marker: build.py registers the entry, then drops it
#define __cluster_dims__(...) SIM_CLUSTER(__VA_ARGS__)
#define __shared__ SIM_SHARED            // marker: build.py rewrites the declaration
#define __device__
#define __host__
#define __forceinline__ inline __attribute__((always_inline))
#define __noinline__ __attribute__((noinline))
#define __launch_bounds__(...)
#define __grid_constant__
#define __align__(n) alignas(n)

struct uint3 { unsigned x, y, z; };
struct alignas(8) float2 { float x, y; };
struct alignas(16) float4 { float x, y, z, w; };
struct alignas(16) uint4 { unsigned x, y, z, w; };
struct alignas(8) uint2 { unsigned x, y; };
struct alignas(8) int2 { int x, y; };
inline float2 make_float2(float x, float y) { return {x, y}; }
inline float4 make_float4(float x, float y, float z, float w) { return {x, y, z, w}; }
inline uint4 make_uint4(unsigned x, unsigned y, unsigned z, unsigned w) { return {x, y, z, w}; }
inline uint2 make_uint2(unsigned x, unsigned y) { return {x, y}; }

namespace sim {
// The current simulated thread's coordinates (set by the scheduler before it resumes a thread).
struct Coords { uint3 tid, bid, bdim, gdim; };
extern thread_local const Coords* coords;

// Barriers and warp collectives: every call may switch to another simulated thread.
void syncthreads();
int syncthreads_or(int pred);
void syncwarp(unsigned mask);
unsigned shfl(unsigned mask, unsigned v, int arg, int mode);  // mode 0 xor, 1 idx, 2 down, 3 up
int any_sync(unsigned mask, int pred);
unsigned ballot_sync(unsigned mask, int pred);
void mma16816(int bf, float& d0, float& d1, float& d2, float& d3, unsigned a0, unsigned a1, unsigned a2,
              unsigned a3, unsigned b0, unsigned b1);
void ldmatrix(int count, int trans, unsigned addr, unsigned* r);
void cluster_arrive();
void cluster_wait();
unsigned cluster_rank();
unsigned mapa(unsigned addr, unsigned rank);
void st_cluster_u32(unsigned addr, unsigned v);
// mbarriers (count arrivals + transaction bytes per phase) and st.async into them.
void mbar_init(unsigned addr, unsigned count);
void mbar_arrive_tx(unsigned addr, unsigned bytes);
void mbar_wait(unsigned addr, unsigned parity);  // blocks until the phase of that parity completed
void st_async(unsigned addr, const void* v, unsigned bytes, unsigned bar);

// Shared memory: a per-block arena addressed by 32-bit offsets (the shared window).
void* shared_var(const char* fn, int site, size_t bytes, size_t align);
void* dyn_shared();
unsigned smem_addr(const void* p);
void* smem_ptr(unsigned addr, size_t bytes, bool write = false);  // bounds-checked

// cp.async: the copy lands no earlier than the wait that covers its group (the latest legal time).
void cp_async16(unsigned dst, const void* src, unsigned src_bytes);
void cp_async(unsigned dst, const void* src, unsigned bytes, unsigned src_bytes);  // 4, 8 or 16 bytes
void cp_async_commit();
void cp_async_wait(int n);

// Number formats (round to nearest even, as the PTX cvt.rn forms).
unsigned short f2h(float x);
unsigned short f2bf(float x);
float h2f(unsigned short h);
float ex2_approx_ftz(float x);
float min_nan(float a, float b);
float max_nan(float a, float b);
unsigned hmax2(unsigned x, unsigned y, int bf);
}  // namespace sim

#define threadIdx (sim::coords->tid)
#define blockIdx (sim::coords->bid)
#define blockDim (sim::coords->bdim)
#define gridDim (sim::coords->gdim)

inline void __syncthreads() { sim::syncthreads(); }
inline int __syncthreads_or(int p) { return sim::syncthreads_or(p); }
inline void __syncwarp(unsigned mask = 0xffffffffu) { sim::syncwarp(mask); }
inline int __any_sync(unsigned mask, int p) { return sim::any_sync(mask, p); }
inline unsigned __ballot_sync(unsigned mask, int p) { return sim::ballot_sync(mask, p); }

template <typename T> inline T sim_shfl(unsigned mask, T v, int arg, int mode) {
  static_assert(sizeof(T) == 4, "32-bit shuffles only");
  unsigned u;
  std::memcpy(&u, &v, 4);
  u = sim::shfl(mask, u, arg, mode);
  std::memcpy(&v, &u, 4);
  return v;
}
template <typename T> inline T __shfl_xor_sync(unsigned m, T v, int lm, int = 32) { return sim_shfl(m, v, lm, 0); }
template <typename T> inline T __shfl_sync(unsigned m, T v, int src, int = 32) { return sim_shfl(m, v, src, 1); }
template <typename T> inline T __shfl_down_sync(unsigned m, T v, unsigned d, int = 32) { return sim_shfl(m, v, (int)d, 2); }
template <typename T> inline T __shfl_up_sync(unsigned m, T v, unsigned d, int = 32) { return sim_shfl(m, v, (int)d, 3); }

inline unsigned __float_as_uint(float x) { unsigned u; std::memcpy(&u, &x, 4); return u; }
inline float __uint_as_float(unsigned u) { float x; std::memcpy(&x, &u, 4); return x; }
inline int __float_as_int(float x) { int u; std::memcpy(&u, &x, 4); return u; }
inline float __int_as_float(int u) { float x; std::memcpy(&x, &u, 4); return x; }
inline float __fdividef(float a, float b) { return a / b; }
inline int __ffs(int x) { return __builtin_ffs(x); }
inline int __ffsll(long long x) { return __builtin_ffsll(x); }
inline int __popc(unsigned x) { return __builtin_popcount(x); }
inline int __clz(int x) { return x == 0 ? 32 : __builtin_clz((unsigned)x); }
// Atomics: real ones (blocks of different clusters run on several OS threads), made by the
// simulator so that racecheck treats them as atomics, not as a racing load and store.
namespace sim {
int atomic_max(int* p, int v);
unsigned atomic_max(unsigned* p, unsigned v);
int atomic_add(int* p, int v);
unsigned atomic_add(unsigned* p, unsigned v);
float atomic_add(float* p, float v);
}  // namespace sim
inline int atomicMax(int* p, int v) { return sim::atomic_max(p, v); }
inline unsigned atomicMax(unsigned* p, unsigned v) { return sim::atomic_max(p, v); }
inline int atomicAdd(int* p, int v) { return sim::atomic_add(p, v); }
inline unsigned atomicAdd(unsigned* p, unsigned v) { return sim::atomic_add(p, v); }
inline float atomicAdd(float* p, float v) { return sim::atomic_add(p, v); }

// Memory ordering between blocks (the chained causal cosFormer scan): blocks of different
// clusters run on different OS threads, so a fence is a real one and an L2 load a relaxed atomic
// load. __nanosleep yields the OS thread, never the fiber: a spinning thread must not stall the
// block's scheduler into reporting a deadlock while another OS thread runs the block it waits on.
inline void __threadfence() { __atomic_thread_fence(__ATOMIC_SEQ_CST); }
inline void __nanosleep(unsigned) { sched_yield(); }
template <typename T> inline T __ldcg(const T* p) {
  T v;
  __atomic_load(p, &v, __ATOMIC_RELAXED);
  return v;
}

using std::ceil; using std::cos; using std::exp; using std::floor; using std::log2; using std::sqrt;
inline int min(int a, int b) { return a < b ? a : b; }
inline int max(int a, int b) { return a > b ? a : b; }
inline unsigned min(unsigned a, unsigned b) { return a < b ? a : b; }
inline unsigned max(unsigned a, unsigned b) { return a > b ? a : b; }
inline long long min(long long a, long long b) { return a < b ? a : b; }
inline long long max(long long a, long long b) { return a > b ? a : b; }
inline unsigned long long min(unsigned long long a, unsigned long long b) { return a < b ? a : b; }
inline unsigned long long max(unsigned long long a, unsigned long long b) { return a > b ? a : b; }
inline float min(float a, float b) { return fminf(a, b); }
inline float max(float a, float b) { return fmaxf(a, b); }
inline double min(double a, double b) { return fmin(a, b); }
inline double max(double a, double b) { return fmax(a, b); }
inline float rsqrtf(float x) { return 1.f / sqrtf(x); }
inline float __saturatef(float x) { return x < 0.f ? 0.f : (x > 1.f ? 1.f : x); }
// sin(πx), cos(πx) as CUDA's accurate forms (argument reduction before the multiply by π).
inline double sim_pi_reduce(double x) { return x - 2.0 * std::nearbyint(x / 2.0); }
inline float cospif(float x) { return (float)std::cos(M_PI * sim_pi_reduce(x)); }
inline float sinpif(float x) { return (float)std::sin(M_PI * sim_pi_reduce(x)); }
inline void sincospif(float x, float* s, float* c) { *s = sinpif(x); *c = cospif(x); }

// The CUDA intrinsic (kernels/mma.cuh smem_addr_folded): the shared-window address of a generic one.
inline unsigned long long __cvta_generic_to_shared(const void* p) { return sim::smem_addr(p); }
