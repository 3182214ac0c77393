// The CUDA runtime subset an embedding engine's host code calls (examples/c/sofa_example.c):
// device selection, streams, allocation, copies, errors, over the simulated driver. Built as
// libcudart.so.13 with the real library's symbol version, so the C example, linked against the
// toolkit's libcudart, runs on the simulator when target/sim comes first on LD_LIBRARY_PATH.
// Runtime semantics kept: cudaSetDevice makes the device's primary context current (where sofa's
// runtime also works), and errors are the runtime's codes.
#include <cstddef>
#include <cstdint>
#include <cstring>

typedef int CUresult;
typedef void* CUstream;
typedef void* CUcontext;
typedef uint64_t CUdeviceptr;

extern "C" {
CUresult cuInit(unsigned);
CUresult cuDevicePrimaryCtxRetain(CUcontext*, int);
CUresult cuCtxSetCurrent(CUcontext);
CUresult cuStreamCreate(CUstream*, unsigned);
CUresult cuStreamDestroy_v2(CUstream);
CUresult cuStreamSynchronize(CUstream);
CUresult cuMemAlloc_v2(CUdeviceptr*, size_t);
CUresult cuMemFree_v2(CUdeviceptr);
CUresult cuMemcpyHtoDAsync_v2(CUdeviceptr, const void*, size_t, CUstream);
CUresult cuMemcpyDtoHAsync_v2(void*, CUdeviceptr, size_t, CUstream);
CUresult cuMemcpyDtoDAsync_v2(CUdeviceptr, CUdeviceptr, size_t, CUstream);
CUresult cuDeviceGetCount(int*);
}

namespace {
enum : int {
  Success = 0,
  InvalidValue = 1,
  MemoryAllocation = 2,
  InvalidDevice = 101,
  Unknown = 999,
};
enum : int { HostToHost = 0, HostToDevice = 1, DeviceToHost = 2, DeviceToDevice = 3, Default = 4 };

int from_driver(CUresult r) {
  switch (r) {
    case 0: return Success;
    case 1: return InvalidValue;
    case 2: return MemoryAllocation;
    case 101: return InvalidDevice;
    default: return Unknown;
  }
}

// Runtime calls set up the primary context on first use, as the real runtime does.
int ensure_context() {
  CUcontext c;
  CUresult r = cuInit(0);
  if (r == 0) r = cuDevicePrimaryCtxRetain(&c, 0);
  if (r == 0) r = cuCtxSetCurrent(c);
  return from_driver(r);
}
}  // namespace

extern "C" {

int cudaSetDevice(int device) {
  int n = 0;
  cuDeviceGetCount(&n);
  if (device < 0 || device >= n) return InvalidDevice;
  return ensure_context();
}
int cudaGetDeviceCount(int* n) { return n ? from_driver(cuDeviceGetCount(n)) : InvalidValue; }
int cudaStreamCreateWithFlags(CUstream* s, unsigned flags) {
  if (int e = ensure_context()) return e;
  return from_driver(cuStreamCreate(s, flags));
}
int cudaStreamCreate(CUstream* s) { return cudaStreamCreateWithFlags(s, 0); }
int cudaStreamDestroy(CUstream s) { return from_driver(cuStreamDestroy_v2(s)); }
int cudaStreamSynchronize(CUstream s) { return from_driver(cuStreamSynchronize(s)); }
int cudaDeviceSynchronize() { return Success; }
int cudaMalloc(void** p, size_t n) {
  if (!p) return InvalidValue;
  if (int e = ensure_context()) return e;
  CUdeviceptr d = 0;
  const int e = from_driver(cuMemAlloc_v2(&d, n));
  *p = e == Success ? reinterpret_cast<void*>(d) : nullptr;
  return e;
}
int cudaFree(void* p) { return from_driver(cuMemFree_v2(reinterpret_cast<CUdeviceptr>(p))); }
int cudaMemcpyAsync(void* dst, const void* src, size_t n, int kind, CUstream s) {
  const CUdeviceptr d = reinterpret_cast<CUdeviceptr>(dst), sp = reinterpret_cast<CUdeviceptr>(src);
  switch (kind) {
    case HostToDevice: return from_driver(cuMemcpyHtoDAsync_v2(d, src, n, s));
    case DeviceToHost: return from_driver(cuMemcpyDtoHAsync_v2(dst, sp, n, s));
    case DeviceToDevice:
    case Default: return from_driver(cuMemcpyDtoDAsync_v2(d, sp, n, s));
    case HostToHost: std::memmove(dst, src, n); return Success;
    default: return InvalidValue;
  }
}
int cudaMemcpy(void* dst, const void* src, size_t n, int kind) { return cudaMemcpyAsync(dst, src, n, kind, nullptr); }
const char* cudaGetErrorString(int e) {
  switch (e) {
    case Success: return "no error";
    case InvalidValue: return "invalid argument";
    case MemoryAllocation: return "out of memory";
    case InvalidDevice: return "invalid device ordinal";
    default: return "unknown error";
  }
}
const char* cudaGetErrorName(int e) {
  switch (e) {
    case Success: return "cudaSuccess";
    case InvalidValue: return "cudaErrorInvalidValue";
    case MemoryAllocation: return "cudaErrorMemoryAllocation";
    case InvalidDevice: return "cudaErrorInvalidDevice";
    default: return "cudaErrorUnknown";
  }
}

}  // extern "C"
