// The cuBLAS subset sofa calls (cublasGemmStridedBatchedEx for the composed baselines,
// cublasHgemm for the tensor-core peak), computed on the CPU over the simulator's device memory:
// built as libcublas.so beside the simulated libcuda, it lets gpu_baseline and gpu_bench run.
//
// Semantics follow the cuBLAS documentation: column-major operands, op(A) is m×k and op(B) k×n,
// C = α·op(A)·op(B) + β·C with C not read when β = 0, host-pointer α/β (the default pointer
// mode), fp32 accumulation, CUBLAS_COMPUTE_32F_FAST_TF32 rounding fp32 inputs to TF32 (10-bit
// mantissa, round to nearest, ties away) as the tensor cores do. Every operand's extent must lie
// inside one live allocation (checked like memcheck); a violation fails the call with
// CUBLAS_STATUS_EXECUTION_FAILED and a message on stderr. Work is queued through the driver's
// stream submission, so it is recorded under stream capture and replayed by graphs.
#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <functional>
#include <memory>
#include <thread>
#include <vector>

typedef int cublasStatus_t;
typedef void* CUstream;

enum : int {
  SUCCESS = 0,
  NOT_INITIALIZED = 1,
  INVALID_VALUE = 7,
  EXECUTION_FAILED = 13,
  NOT_SUPPORTED = 15,
};
enum : int { OP_N = 0, OP_T = 1, OP_C = 2 };
enum : int { R_32F = 0, R_16F = 2, R_16BF = 14 };
enum : int { COMPUTE_32F = 68, COMPUTE_32F_FAST_TF32 = 77 };

// Exported by the simulated driver (driver.cpp).
int sofa_sim_submit(CUstream s, std::function<int()> work);
extern "C" bool sofa_sim_in_allocation(const void* p, size_t bytes);

namespace {

struct Handle {
  CUstream stream = nullptr;
};

float from_bits_f16(uint16_t h) {
  _Float16 v;
  std::memcpy(&v, &h, 2);
  return (float)v;
}
uint16_t to_bits_f16(float f) {
  _Float16 v = (_Float16)f;  // round to nearest even
  uint16_t h;
  std::memcpy(&h, &v, 2);
  return h;
}
float from_bits_bf16(uint16_t b) {
  uint32_t u = (uint32_t)b << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}
uint16_t to_bits_bf16(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  if ((u & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((u >> 16) | 0x40);  // quiet NaN
  u += 0x7fffu + ((u >> 16) & 1);  // round to nearest even
  return (uint16_t)(u >> 16);
}
float to_tf32(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  if ((u & 0x7f800000u) != 0x7f800000u) u = (u + 0x1000u) & 0xffffe000u;  // ties away from zero
  std::memcpy(&f, &u, 4);
  return f;
}

size_t type_bytes(int t) { return t == R_32F ? 4 : 2; }
bool known_type(int t) { return t == R_32F || t == R_16F || t == R_16BF; }

float load(const void* base, int t, size_t i) {
  switch (t) {
    case R_32F: return static_cast<const float*>(base)[i];
    case R_16F: return from_bits_f16(static_cast<const uint16_t*>(base)[i]);
    default: return from_bits_bf16(static_cast<const uint16_t*>(base)[i]);
  }
}
void store(void* base, int t, size_t i, float v) {
  switch (t) {
    case R_32F: static_cast<float*>(base)[i] = v; break;
    case R_16F: static_cast<uint16_t*>(base)[i] = to_bits_f16(v); break;
    default: static_cast<uint16_t*>(base)[i] = to_bits_bf16(v); break;
  }
}

struct Operand {
  const void* p;
  int type;
  long long ld, stride;
};

// One strided-batched GEMM, everything by value (a captured call replays it later).
struct Gemm {
  int ta, tb, m, n, k, batch;
  float alpha, beta;
  Operand a, b;
  void* c;
  int ctype;
  long long ldc, stridec;
  bool tf32;
};

// The bytes an operand spans: `rows` × `cols` column-major at `ld`, `batch` items at `stride`.
bool extent_ok(const char* what, const void* p, int type, long long rows, long long cols, long long ld,
               long long stride, int batch) {
  if (rows == 0 || cols == 0 || batch == 0) return true;
  long long lo = 0, hi = (cols - 1) * ld + rows - 1;
  const long long last = (long long)(batch - 1) * stride;
  lo += std::min(0ll, last);
  hi += std::max(0ll, last);
  const size_t e = type_bytes(type);
  const char* start = static_cast<const char*>(p) + lo * (long long)e;
  if (sofa_sim_in_allocation(start, (size_t)(hi - lo + 1) * e)) return true;
  std::fprintf(stderr,
               "sofa-sim cuBLAS: operand %s (%lld x %lld, ld %lld, stride %lld, batch %d) at %p reaches outside "
               "its allocation\n",
               what, rows, cols, ld, stride, batch, p);
  return false;
}

int run(const Gemm& g) {
  const long long ar = g.ta == OP_N ? g.m : g.k, ac = g.ta == OP_N ? g.k : g.m;
  const long long br = g.tb == OP_N ? g.k : g.n, bc = g.tb == OP_N ? g.n : g.k;
  if (!extent_ok("A", g.a.p, g.a.type, ar, ac, g.a.ld, g.a.stride, g.batch) ||
      !extent_ok("B", g.b.p, g.b.type, br, bc, g.b.ld, g.b.stride, g.batch) ||
      !extent_ok("C", g.c, g.ctype, g.m, g.n, g.ldc, g.stridec, g.batch))
    return EXECUTION_FAILED;
  const long long jobs = (long long)g.batch * g.n;
  const unsigned nt = std::max(1u, std::min<unsigned>(std::thread::hardware_concurrency(), 16));
  auto work = [&](unsigned t) {
    std::vector<float> arow((size_t)g.k * g.m), bcol(g.k);
    int cached = -1;
    for (long long job = t; job < jobs; job += nt) {
      const int bi = (int)(job / g.n), j = (int)(job % g.n);
      const char* A = static_cast<const char*>(g.a.p) + (long long)bi * g.a.stride * (long long)type_bytes(g.a.type);
      const char* B = static_cast<const char*>(g.b.p) + (long long)bi * g.b.stride * (long long)type_bytes(g.b.type);
      char* C = static_cast<char*>(g.c) + (long long)bi * g.stridec * (long long)type_bytes(g.ctype);
      auto in = [&](float v) { return g.tf32 ? to_tf32(v) : v; };
      if (cached != bi) {  // op(A) as m rows of k contiguous values
        for (int i = 0; i < g.m; ++i)
          for (int l = 0; l < g.k; ++l) {
            const long long idx = g.ta == OP_N ? i + (long long)l * g.a.ld : l + (long long)i * g.a.ld;
            arow[(size_t)i * g.k + l] = in(load(A, g.a.type, idx));
          }
        cached = bi;
      }
      for (int l = 0; l < g.k; ++l) {
        const long long idx = g.tb == OP_N ? l + (long long)j * g.b.ld : j + (long long)l * g.b.ld;
        bcol[l] = in(load(B, g.b.type, idx));
      }
      for (int i = 0; i < g.m; ++i) {
        const float* ar_ = &arow[(size_t)i * g.k];
        float acc = 0.f;
        for (int l = 0; l < g.k; ++l) acc += ar_[l] * bcol[l];
        const size_t ci = (size_t)i + (size_t)j * g.ldc;
        float v = g.alpha * acc;
        if (g.beta != 0.f) v += g.beta * load(C, g.ctype, ci);
        store(C, g.ctype, ci, v);
      }
    }
  };
  std::vector<std::thread> pool;
  for (unsigned t = 1; t < nt; ++t) pool.emplace_back(work, t);
  work(0);
  for (auto& th : pool) th.join();
  return SUCCESS;
}

int check_and_submit(void* handle, Gemm g) {
  if (!handle) return NOT_INITIALIZED;
  if (g.m < 0 || g.n < 0 || g.k < 0 || g.batch < 0) return INVALID_VALUE;
  if ((g.ta != OP_N && g.ta != OP_T) || (g.tb != OP_N && g.tb != OP_T)) return g.ta == OP_C || g.tb == OP_C ? NOT_SUPPORTED : INVALID_VALUE;
  const long long ar = g.ta == OP_N ? g.m : g.k, br = g.tb == OP_N ? g.k : g.n;
  if (g.a.ld < std::max(1ll, ar) || g.b.ld < std::max(1ll, br) || g.ldc < std::max(1, g.m)) return INVALID_VALUE;
  if (g.m == 0 || g.n == 0 || g.batch == 0) return SUCCESS;
  return sofa_sim_submit(static_cast<Handle*>(handle)->stream, [g] { return run(g) == SUCCESS ? 0 : 719; }) == 0
             ? SUCCESS
             : EXECUTION_FAILED;
}

}  // namespace

extern "C" {

cublasStatus_t cublasCreate_v2(void** handle) {
  if (!handle) return INVALID_VALUE;
  *handle = new Handle;
  return SUCCESS;
}
cublasStatus_t cublasDestroy_v2(void* handle) {
  if (!handle) return NOT_INITIALIZED;
  delete static_cast<Handle*>(handle);
  return SUCCESS;
}
cublasStatus_t cublasSetStream_v2(void* handle, CUstream s) {
  if (!handle) return NOT_INITIALIZED;
  static_cast<Handle*>(handle)->stream = s;
  return SUCCESS;
}
cublasStatus_t cublasGetStream_v2(void* handle, CUstream* s) {
  if (!handle) return NOT_INITIALIZED;
  if (s) *s = static_cast<Handle*>(handle)->stream;
  return SUCCESS;
}
cublasStatus_t cublasGetVersion_v2(void*, int* v) { return v ? (*v = 130000, SUCCESS) : INVALID_VALUE; }

cublasStatus_t cublasGemmStridedBatchedEx(void* handle, int ta, int tb, int m, int n, int k, const void* alpha,
                                          const void* A, int atype, int lda, long long sa, const void* B,
                                          int btype, int ldb, long long sb, const void* beta, void* C, int ctype,
                                          int ldc, long long sc, int batch, int compute, int /*algo*/) {
  if (!alpha || !beta) return INVALID_VALUE;
  if (!known_type(atype) || !known_type(btype) || !known_type(ctype)) return NOT_SUPPORTED;
  if (compute != COMPUTE_32F && compute != COMPUTE_32F_FAST_TF32) return NOT_SUPPORTED;
  // cuBLAS supports A and B of one type, C of that type or fp32.
  if (atype != btype || (ctype != atype && ctype != R_32F)) return NOT_SUPPORTED;
  Gemm g{ta, tb, m, n, k, batch, *static_cast<const float*>(alpha), *static_cast<const float*>(beta),
         {A, atype, lda, sa}, {B, btype, ldb, sb}, C, ctype, ldc, sc,
         compute == COMPUTE_32F_FAST_TF32 && atype == R_32F};
  return check_and_submit(handle, g);
}

cublasStatus_t cublasHgemm(void* handle, int ta, int tb, int m, int n, int k, const uint16_t* alpha,
                           const uint16_t* A, int lda, const uint16_t* B, int ldb, const uint16_t* beta, uint16_t* C,
                           int ldc) {
  if (!alpha || !beta) return INVALID_VALUE;
  Gemm g{ta, tb, m, n, k, 1, from_bits_f16(*alpha), from_bits_f16(*beta),
         {A, R_16F, lda, 0}, {B, R_16F, ldb, 0}, C, R_16F, ldc, 0, false};
  return check_and_submit(handle, g);
}

const char* cublasGetStatusName(cublasStatus_t s) {
  switch (s) {
    case SUCCESS: return "CUBLAS_STATUS_SUCCESS";
    case NOT_INITIALIZED: return "CUBLAS_STATUS_NOT_INITIALIZED";
    case INVALID_VALUE: return "CUBLAS_STATUS_INVALID_VALUE";
    case EXECUTION_FAILED: return "CUBLAS_STATUS_EXECUTION_FAILED";
    case NOT_SUPPORTED: return "CUBLAS_STATUS_NOT_SUPPORTED";
    default: return "CUBLAS_STATUS_UNKNOWN";
  }
}
const char* cublasGetStatusString(cublasStatus_t s) { return cublasGetStatusName(s); }

}  // extern "C"
