// The CUDA driver API subset sofa (through cudarc) calls, over host memory and the simulator in
// exec.cpp: built as libcuda.so.1 and found first on LD_LIBRARY_PATH, it lets the GPU test suite
// run the real kernel sources on a machine without a GPU. Work is synchronous: a call returns when
// its copy or kernel is done, so every stream is trivially ordered and events time host work.
// The device it reports is an H100-like sm_90 part (clusters available) named "sofa-sim (CPU)".
#include <algorithm>
#include <chrono>
#include <cstdarg>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <mutex>
#include <vector>
#include <string>
#include <unordered_map>

#include <unistd.h>

#include "exec.h"
#include "image.h"

typedef int CUresult;
typedef int CUdevice;
typedef uint64_t CUdeviceptr;
typedef void* CUcontext;
typedef void* CUmodule;
typedef void* CUstream;
typedef void* CUevent;
typedef const sim::Entry* CUfunction;

enum : int {
  OK = 0,
  INVALID_VALUE = 1,
  OUT_OF_MEMORY = 2,
  INVALID_DEVICE = 101,
  INVALID_CONTEXT = 201,
  INVALID_HANDLE = 400,
  NOT_FOUND = 500,
  LAUNCH_OUT_OF_RESOURCES = 701,
  LAUNCH_FAILED = 719,
  NOT_SUPPORTED = 801,
  CAPTURE_UNSUPPORTED = 900,
  CAPTURE_INVALIDATED = 901,
};

namespace {

std::mutex mu;  // one launch or allocation change at a time
std::unordered_map<uintptr_t, size_t> allocs;
size_t allocated = 0;
std::unordered_map<CUfunction, int> max_dyn_smem;  // opt-in per function (default 48 KiB − static)
int module_token;
// Per kernel name, what the last fatbin that held it said (image.h). A kernel never loaded from a
// fatbin (only from PTX text) has no entry and gets no per-kernel limits; one loaded from both
// keeps its fatbin's.
std::unordered_map<std::string, sim::KernelImage> images;

// The H100's register file and shared memory, as the occupancy rules use them.
constexpr int kRegsPerSm = 65536, kSubPartitions = 4, kRegUnit = 256, kMaxWarpsPerSm = 64, kMaxBlocksPerSm = 32;
constexpr size_t kSmemPerSm = 228 * 1024, kReservedSmem = 1024, kSmemUnit = 128, kDefaultSmem = 48 * 1024;

int round_up(int x, int unit) { return (x + unit - 1) / unit * unit; }
int warps_of(unsigned threads) { return int((threads + 31) / 32); }
// Registers a warp of `f` is allocated.
int warp_regs(const sim::KernelImage& k) { return round_up(k.regs * 32, kRegUnit); }
// Whether a block of `threads` threads fits the register file (warps are placed on the four
// sub-partitions in turn, so the hardware assumes a multiple of four).
bool regs_fit(const sim::KernelImage& k, unsigned threads) {
  return k.regs <= 255 && warp_regs(k) * round_up(warps_of(threads), kSubPartitions) <= kRegsPerSm;
}
const sim::KernelImage* image_of(CUfunction f) {  // caller holds mu
  auto it = images.find(f->name);
  return it == images.end() ? nullptr : &it->second;
}
// The most threads a block of `f` may have: its launch bound, and what its registers allow.
int max_threads_of(const sim::KernelImage* k) {
  if (!k) return 1024;
  int t = k->max_threads > 0 ? std::min(k->max_threads, 1024) : 1024;
  while (t > 0 && !regs_fit(*k, unsigned(t))) t -= 32;
  return t;
}
size_t static_smem_of(const sim::KernelImage* k) { return k ? k->static_smem : 0; }
// The dynamic shared memory `f` may launch with: its opt-in, else 48 KiB less its static memory.
// The opt-in shared memory per block: the H100's 227 KiB, or SOFA_SIM_SMEM_OPTIN_KB (a smaller
// device, e.g. 99 for sm_86/sm_120, to exercise the fallbacks of kernels that need more).
size_t optin_smem() {
  static const size_t v = [] {
    const char* e = std::getenv("SOFA_SIM_SMEM_OPTIN_KB");
    const size_t kb = e ? size_t(std::strtoul(e, nullptr, 10)) : 0;
    return kb > 0 && kb * 1024 < sim::kMaxSmem ? kb * 1024 : sim::kMaxSmem;
  }();
  return v;
}

size_t max_dyn_smem_of(CUfunction f, const sim::KernelImage* k) {  // caller holds mu
  auto it = max_dyn_smem.find(f);
  if (it != max_dyn_smem.end()) return size_t(it->second);
  const size_t st = static_smem_of(k);
  return st < kDefaultSmem ? kDefaultSmem - st : 0;
}

// Contexts are tokens: the primary one, and non-primary ones made by cuCtxCreate. A stream
// remembers the context current when it was made (cuStreamGetCtx).
struct Context {};
Context primary;
// As in the real driver, a thread starts with no current context: calls that act in "the
// current context" fail with CUDA_ERROR_INVALID_CONTEXT until cuCtxSetCurrent or
// cuCtxPushCurrent gives it one (cudarc binds before its calls; raw paths must too).
thread_local CUcontext current = nullptr;
thread_local std::vector<CUcontext> pushed;  // cuCtxPushCurrent's stack below `current`
CUcontext cur_ctx() { return current ? current : &primary; }
#define NEED_CTX \
  do {           \
    if (!current) return INVALID_CONTEXT; \
  } while (0)

// Work recorded by stream capture, replayed in order by cuGraphLaunch.
struct Graph {
  std::vector<std::function<CUresult()>> nodes;
};
struct Stream {
  CUcontext ctx;
  Graph* capture = nullptr;  // non-null while capturing
};
// Runs `work` now, or records it when `s` is capturing.
CUresult submit(CUstream s, std::function<CUresult()> work) {
  Stream* st = static_cast<Stream*>(s);
  if (st && st->capture) {
    st->capture->nodes.push_back(std::move(work));
    return OK;
  }
  return work();
}

size_t mem_limit() {
  static const size_t lim = [] {
    const char* v = std::getenv("SOFA_SIM_MEM_GB");
    if (v && *v) return (size_t)(std::atof(v) * (1ull << 30));
    return (size_t)sysconf(_SC_PHYS_PAGES) * (size_t)sysconf(_SC_PAGE_SIZE) / 2;  // half the host's memory
  }();
  return lim;
}

bool trace() {
  static const bool t = [] {
    const char* v = std::getenv("SOFA_SIM_TRACE");
    return v && *v && *v != '0';
  }();
  return t;
}

// Fresh device memory holds 0xFF bytes (NaN in every float format) unless SOFA_SIM_MEM=zero,
// so a kernel that reads what nobody wrote produces NaN instead of plausible zeros.
unsigned char fresh_byte() {
  static const unsigned char b = [] {
    const char* v = std::getenv("SOFA_SIM_MEM");
    return v && std::strcmp(v, "zero") == 0 ? 0 : 0xFF;
  }();
  return b;
}

CUresult alloc(CUdeviceptr* p, size_t bytes) {
  if (!p) return INVALID_VALUE;
  std::lock_guard<std::mutex> g(mu);
  if (bytes == 0) bytes = 1;
  if (allocated + bytes > mem_limit()) return OUT_OF_MEMORY;
  void* q = std::aligned_alloc(256, (bytes + 255) & ~size_t(255));
  if (!q) return OUT_OF_MEMORY;
  std::memset(q, fresh_byte(), bytes);
  allocs[(uintptr_t)q] = bytes;
  allocated += bytes;
  *p = (CUdeviceptr)q;
  return OK;
}

CUresult release(CUdeviceptr p) {
  if (!p) return OK;
  std::lock_guard<std::mutex> g(mu);
  auto it = allocs.find((uintptr_t)p);
  if (it == allocs.end()) return INVALID_VALUE;
  allocated -= it->second;
  allocs.erase(it);
  std::free((void*)p);
  return OK;
}

CUresult run_kernel(CUfunction f, const sim::Launch& l, std::vector<std::vector<unsigned char>>& args) {
  void* ptrs[sim::kMaxParams];
  for (size_t i = 0; i < args.size(); ++i) ptrs[i] = args[i].data();
  std::string error;
  const auto t0 = std::chrono::steady_clock::now();
  bool ok;
  {
    std::lock_guard<std::mutex> g(mu);
    ok = sim::run(*f, l, ptrs, error);
  }
  if (trace())
    std::fprintf(stderr, "sofa-sim: %s grid (%u,%u,%u) block (%u,%u,%u) smem %zu: %.1f ms\n", f->name, l.grid[0],
                 l.grid[1], l.grid[2], l.block[0], l.block[1], l.block[2], l.dyn_smem,
                 std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count());
  if (!ok) {
    std::fprintf(stderr, "sofa-sim: kernel fault: %s\n", error.c_str());
    return LAUNCH_FAILED;
  }
  return OK;
}

struct Event {
  std::chrono::steady_clock::time_point t;
};

}  // namespace

extern "C" {

CUresult cuInit(unsigned) { return OK; }
// Private driver tables (NVRTC looks one up when libcuda is present): none here, as a driver
// without that table would answer.
CUresult cuGetExportTable(const void** table, const void*) {
  if (table) *table = nullptr;
  return NOT_SUPPORTED;
}
CUresult cuDriverGetVersion(int* v) { return v ? (*v = 13000, OK) : INVALID_VALUE; }
CUresult cuDeviceGetCount(int* n) { return n ? (*n = 1, OK) : INVALID_VALUE; }
CUresult cuDeviceGet(CUdevice* d, int ordinal) {
  if (!d) return INVALID_VALUE;
  if (ordinal != 0) return INVALID_DEVICE;
  *d = 0;
  return OK;
}
CUresult cuDeviceGetName(char* name, int len, CUdevice) {
  if (!name || len <= 0) return INVALID_VALUE;
  std::snprintf(name, (size_t)len, "sofa-sim (CPU)");
  return OK;
}
CUresult cuDeviceTotalMem_v2(size_t* b, CUdevice) { return b ? (*b = mem_limit(), OK) : INVALID_VALUE; }
CUresult cuDeviceGetUuid(void* u, CUdevice) { return u ? (std::memset(u, 0, 16), OK) : INVALID_VALUE; }
CUresult cuDeviceGetUuid_v2(void* u, CUdevice d) { return cuDeviceGetUuid(u, d); }

CUresult cuDeviceGetAttribute(int* v, int attr, CUdevice) {
  if (!v) return INVALID_VALUE;
  switch (attr) {
    case 1: *v = 1024; break;                                  // max threads per block
    case 2: case 3: *v = 1024; break;                          // max block dims x, y
    case 4: *v = 64; break;                                    // max block dim z
    case 5: *v = 0x7fffffff; break;                            // max grid x
    case 6: case 7: *v = 65535; break;                         // max grid y, z
    case 8: *v = 48 * 1024; break;                             // shared memory per block
    case 10: *v = 32; break;                                   // warp size
    case 13: *v = 1980000; break;                              // SM clock, kHz
    case 16: *v = 132; break;                                  // multiprocessors
    case 36: *v = 2619000; break;                              // memory clock, kHz
    case 37: *v = 5120; break;                                 // bus width, bits
    case 38: *v = 50 * 1024 * 1024; break;                     // L2 bytes
    case 39: *v = 2048; break;                                 // max threads per SM
    case 75: *v = 9; break;                                    // compute capability
    case 76: *v = 0; break;
    case 81: *v = 228 * 1024; break;                           // shared memory per SM
    case 82: *v = 65536; break;                                // registers per SM
    case 97: *v = (int)optin_smem(); break;                    // opt-in shared memory per block
    case 106: *v = 32; break;                                  // max blocks per SM
    case 115: *v = 1; break;                                   // memory pools
    case 120: *v = 1; break;                                   // cluster launch
    default: *v = 0; break;
  }
  return OK;
}

CUresult cuDevicePrimaryCtxRetain(CUcontext* c, CUdevice) { return c ? (*c = &primary, OK) : INVALID_VALUE; }
CUresult cuDevicePrimaryCtxRelease_v2(CUdevice) { return OK; }
CUresult cuCtxSetCurrent(CUcontext c) { current = c; return OK; }
CUresult cuCtxCreate_v4(CUcontext* c, void*, unsigned, CUdevice d) {
  if (!c) return INVALID_VALUE;
  if (d != 0) return INVALID_DEVICE;
  *c = current = new Context;
  return OK;
}
CUresult cuCtxCreate_v3(CUcontext* c, void*, int, unsigned f, CUdevice d) { return cuCtxCreate_v4(c, nullptr, f, d); }
CUresult cuCtxDestroy_v2(CUcontext c) {
  if (!c || c == &primary) return INVALID_VALUE;
  if (current == c) current = nullptr;
  delete static_cast<Context*>(c);
  return OK;
}
CUresult cuCtxGetCurrent(CUcontext* c) { return c ? (*c = current, OK) : INVALID_VALUE; }
CUresult cuCtxPushCurrent_v2(CUcontext c) {
  if (!c) return INVALID_CONTEXT;
  pushed.push_back(current);
  current = c;
  return OK;
}
CUresult cuCtxPopCurrent_v2(CUcontext* c) {
  NEED_CTX;
  if (c) *c = current;
  current = pushed.empty() ? nullptr : pushed.back();
  if (!pushed.empty()) pushed.pop_back();
  return OK;
}
CUresult cuCtxGetDevice(CUdevice* d) { NEED_CTX; return d ? (*d = 0, OK) : INVALID_VALUE; }
CUresult cuCtxSynchronize() { NEED_CTX; return OK; }
CUresult cuCtxSetFlags(unsigned) { return OK; }
CUresult cuCtxSetLimit(int, size_t) { return OK; }
CUresult cuCtxGetLimit(size_t* v, int) { return v ? (*v = 0, OK) : INVALID_VALUE; }
CUresult cuCtxGetStreamPriorityRange(int* lo, int* hi) { if (lo) *lo = 0; if (hi) *hi = 0; return OK; }

CUresult cuStreamCreate(CUstream* s, unsigned) { NEED_CTX; return s ? (*s = new Stream{cur_ctx()}, OK) : INVALID_VALUE; }
CUresult cuStreamCreateWithPriority(CUstream* s, unsigned f, int) { return cuStreamCreate(s, f); }
CUresult cuStreamDestroy_v2(CUstream s) { delete static_cast<Stream*>(s); return OK; }
CUresult cuStreamSynchronize(CUstream) { return OK; }
CUresult cuStreamQuery(CUstream) { return OK; }
CUresult cuStreamWaitEvent(CUstream, CUevent, unsigned) { return OK; }
CUresult cuStreamGetCtx(CUstream s, CUcontext* c) { return c ? (*c = s ? static_cast<Stream*>(s)->ctx : cur_ctx(), OK) : INVALID_VALUE; }
CUresult cuStreamIsCapturing(CUstream s, int* status) {
  if (!status) return INVALID_VALUE;
  *status = s && static_cast<Stream*>(s)->capture ? 1 : 0;  // CU_STREAM_CAPTURE_STATUS_ACTIVE
  return OK;
}
// Capture on a created stream: launches, copies and memsets are recorded, not run (the legacy
// NULL stream cannot capture, as with the real driver).
CUresult cuStreamBeginCapture_v2(CUstream s, int) {
  if (!s) return CAPTURE_UNSUPPORTED;
  Stream* st = static_cast<Stream*>(s);
  if (st->capture) return CAPTURE_INVALIDATED;
  st->capture = new Graph;
  return OK;
}
CUresult cuStreamEndCapture(CUstream s, void** graph) {
  Stream* st = static_cast<Stream*>(s);
  if (!st || !st->capture || !graph) return CAPTURE_INVALIDATED;
  *graph = st->capture;
  st->capture = nullptr;
  return OK;
}
CUresult cuGraphInstantiateWithFlags(void** exec, void* graph, unsigned long long) {
  if (!exec || !graph) return INVALID_VALUE;
  *exec = new Graph(*static_cast<Graph*>(graph));
  return OK;
}
CUresult cuGraphLaunch(void* exec, CUstream s) {
  if (!exec) return INVALID_HANDLE;
  const Graph g = *static_cast<Graph*>(exec);
  return submit(s, [g] {
    for (const auto& node : g.nodes)
      if (CUresult r = node()) return r;
    return (CUresult)OK;
  });
}
CUresult cuGraphUpload(void*, CUstream) { return OK; }
CUresult cuGraphDestroy(void* g) { delete static_cast<Graph*>(g); return OK; }
CUresult cuGraphExecDestroy(void* e) { delete static_cast<Graph*>(e); return OK; }
CUresult cuLaunchHostFunc(CUstream s, void (*fn)(void*), void* data) {
  if (!fn) return INVALID_VALUE;
  return submit(s, [fn, data] { fn(data); return OK; });
}

// For the simulated cuBLAS (cublas.cpp): queue host work in stream order (recorded under
// capture), and check that a byte range lies inside one live allocation.
bool sofa_sim_in_allocation(const void* p, size_t bytes) {
  std::lock_guard<std::mutex> g(mu);
  const uintptr_t lo = (uintptr_t)p;
  for (const auto& [base, size] : allocs)
    if (lo >= base && lo - base <= size && bytes <= size - (lo - base)) return true;
  return false;
}

CUresult cuEventCreate(CUevent* e, unsigned) { NEED_CTX; return e ? (*e = new Event{std::chrono::steady_clock::now()}, OK) : INVALID_VALUE; }
CUresult cuEventDestroy_v2(CUevent e) { delete static_cast<Event*>(e); return OK; }
CUresult cuEventRecord(CUevent e, CUstream) {
  if (!e) return INVALID_HANDLE;
  static_cast<Event*>(e)->t = std::chrono::steady_clock::now();
  return OK;
}
CUresult cuEventRecordWithFlags(CUevent e, CUstream s, unsigned) { return cuEventRecord(e, s); }
CUresult cuEventSynchronize(CUevent) { return OK; }
CUresult cuEventQuery(CUevent) { return OK; }
CUresult cuEventElapsedTime(float* ms, CUevent a, CUevent b) {
  if (!ms || !a || !b) return INVALID_VALUE;
  *ms = std::chrono::duration<float, std::milli>(static_cast<Event*>(b)->t - static_cast<Event*>(a)->t).count();
  return OK;
}
CUresult cuEventElapsedTime_v2(float* ms, CUevent a, CUevent b) { return cuEventElapsedTime(ms, a, b); }

CUresult cuMemAlloc_v2(CUdeviceptr* p, size_t n) { NEED_CTX; return alloc(p, n); }
CUresult cuMemAllocAsync(CUdeviceptr* p, size_t n, CUstream) { return alloc(p, n); }
CUresult cuMemFree_v2(CUdeviceptr p) { NEED_CTX; return release(p); }
CUresult cuMemFreeAsync(CUdeviceptr p, CUstream) { return release(p); }
CUresult cuMemGetInfo_v2(size_t* free, size_t* total) {
  NEED_CTX;
  std::lock_guard<std::mutex> g(mu);
  if (free) *free = mem_limit() - allocated;
  if (total) *total = mem_limit();
  return OK;
}
CUresult cuMemHostAlloc(void** p, size_t n, unsigned) { return p ? ((*p = std::malloc(n ? n : 1)) ? OK : OUT_OF_MEMORY) : INVALID_VALUE; }
CUresult cuMemAllocHost_v2(void** p, size_t n) { return cuMemHostAlloc(p, n, 0); }
CUresult cuMemFreeHost(void* p) { std::free(p); return OK; }

CUresult cuMemcpyHtoD_v2(CUdeviceptr d, const void* s, size_t n) { if (n) std::memmove((void*)d, s, n); return OK; }
CUresult cuMemcpyDtoH_v2(void* d, CUdeviceptr s, size_t n) { if (n) std::memmove(d, (const void*)s, n); return OK; }
CUresult cuMemcpyDtoD_v2(CUdeviceptr d, CUdeviceptr s, size_t n) { if (n) std::memmove((void*)d, (const void*)s, n); return OK; }
CUresult cuMemcpyHtoDAsync_v2(CUdeviceptr d, const void* s, size_t n, CUstream st) { return submit(st, [=] { return cuMemcpyHtoD_v2(d, s, n); }); }
CUresult cuMemcpyDtoHAsync_v2(void* d, CUdeviceptr s, size_t n, CUstream st) { return submit(st, [=] { return cuMemcpyDtoH_v2(d, s, n); }); }
CUresult cuMemcpyDtoDAsync_v2(CUdeviceptr d, CUdeviceptr s, size_t n, CUstream st) { return submit(st, [=] { return cuMemcpyDtoD_v2(d, s, n); }); }
CUresult cuMemsetD8_v2(CUdeviceptr d, unsigned char v, size_t n) { if (n) std::memset((void*)d, v, n); return OK; }
CUresult cuMemsetD8Async(CUdeviceptr d, unsigned char v, size_t n, CUstream st) { return submit(st, [=] { return cuMemsetD8_v2(d, v, n); }); }
CUresult cuMemsetD32_v2(CUdeviceptr d, unsigned v, size_t n) {
  for (size_t i = 0; i < n; ++i) std::memcpy((char*)d + 4 * i, &v, 4);
  return OK;
}
CUresult cuMemsetD32Async(CUdeviceptr d, unsigned v, size_t n, CUstream st) { return submit(st, [=] { return cuMemsetD32_v2(d, v, n); }); }

// Every kernel of every family is linked in; a module is only a token.
CUresult cuModuleLoadData(CUmodule* m, const void* image) {
  NEED_CTX;
  if (!m) return INVALID_VALUE;
  {
    std::lock_guard<std::mutex> g(mu);
    sim::read_image(image, images);
  }
  *m = &module_token;
  return OK;
}
CUresult cuModuleUnload(CUmodule) { return OK; }
CUresult cuModuleGetFunction(CUfunction* f, CUmodule, const char* name) {
  if (!f || !name) return INVALID_VALUE;
  const sim::Entry* e = sim::find_entry(name);
  if (!e) return NOT_FOUND;
  *f = e;
  return OK;
}
CUresult cuFuncGetAttribute(int* v, int attr, CUfunction f) {
  if (!v || !f) return INVALID_VALUE;
  std::lock_guard<std::mutex> g(mu);
  const sim::KernelImage* k = image_of(f);
  switch (attr) {
    case 0: *v = max_threads_of(k); break;                  // max threads per block
    case 1: *v = int(static_smem_of(k)); break;             // static shared memory
    case 4: *v = k ? k->regs : 64; break;                   // registers (64: unknown, PTX module)
    case 8: *v = int(max_dyn_smem_of(f, k)); break;         // max dynamic shared memory
    case 11: case 12: case 13: *v = int(f->cluster[attr - 11]); break;  // __cluster_dims__ (0: none)
    case 5: *v = 90; break;                                 // PTX version
    case 6: *v = 90; break;                                 // binary version
    default: *v = 0; break;
  }
  return OK;
}
CUresult cuFuncSetAttribute(CUfunction f, int attr, int v) {
  if (!f) return INVALID_HANDLE;
  if (attr == 8) {
    std::lock_guard<std::mutex> g(mu);
    if (v < 0 || (size_t)v + static_smem_of(image_of(f)) > optin_smem()) return INVALID_VALUE;
    max_dyn_smem[f] = v;
  }
  return OK;
}
CUresult cuFuncSetCacheConfig(CUfunction, int) { return OK; }

// The H100's rules: warp slots, the register file per sub-partition (when the image gave the
// registers), and shared memory with the per-block reservation in 128-byte units.
CUresult cuOccupancyMaxActiveBlocksPerMultiprocessor(int* n, CUfunction f, int threads, size_t smem) {
  if (!n || !f || threads <= 0) return INVALID_VALUE;
  std::lock_guard<std::mutex> g(mu);
  const sim::KernelImage* k = image_of(f);
  const int warps = warps_of(unsigned(threads));
  if (threads > max_threads_of(k) || smem > max_dyn_smem_of(f, k)) return (*n = 0, OK);
  int blocks = std::min(kMaxBlocksPerSm, kMaxWarpsPerSm / warps);
  if (k) blocks = std::min(blocks, (kRegsPerSm / kSubPartitions / warp_regs(*k)) * kSubPartitions / warps);
  const size_t per_block = (static_smem_of(k) + smem + kReservedSmem + kSmemUnit - 1) / kSmemUnit * kSmemUnit;
  blocks = std::min(blocks, int(kSmemPerSm / per_block));
  *n = std::max(0, blocks);
  return OK;
}
CUresult cuOccupancyMaxActiveBlocksPerMultiprocessorWithFlags(int* n, CUfunction f, int t, size_t s, unsigned) {
  return cuOccupancyMaxActiveBlocksPerMultiprocessor(n, f, t, s);
}

CUresult cuLaunchKernel(CUfunction f, unsigned gx, unsigned gy, unsigned gz, unsigned bx, unsigned by, unsigned bz,
                        unsigned smem, CUstream stream, void** params, void** extra) {
  NEED_CTX;
  if (!f) return INVALID_HANDLE;
  if (extra) return NOT_SUPPORTED;
  const unsigned long long threads = (unsigned long long)bx * by * bz;
  if (!gx || !gy || !gz || !bx || !by || !bz || threads > 1024 || bz > 64 || gy > 65535 || gz > 65535 ||
      gx > 0x7fffffffu)
    return INVALID_VALUE;
  {
    std::lock_guard<std::mutex> g(mu);
    const sim::KernelImage* k = image_of(f);
    const size_t limit = max_dyn_smem_of(f, k);
    if (smem > limit) {
      std::fprintf(stderr, "sofa-sim: %s: %u bytes of dynamic shared memory above its limit (%zu; static %zu)\n",
                   f->name, smem, limit, static_smem_of(k));
      return INVALID_VALUE;
    }
    // What the hardware refuses as "too many resources requested for launch".
    if (threads > (unsigned long long)max_threads_of(k)) {
      std::fprintf(stderr, "sofa-sim: %s: %llu threads per block, above its limit of %d (%d registers, bound %d)\n",
                   f->name, threads, max_threads_of(k), k ? k->regs : 0, k ? k->max_threads : 0);
      return LAUNCH_OUT_OF_RESOURCES;
    }
  }
  const unsigned csize = std::max(1u, f->cluster[0]) * std::max(1u, f->cluster[1]) * std::max(1u, f->cluster[2]);
  if (csize > 8) return INVALID_VALUE;
  const sim::Launch l{{gx, gy, gz}, {bx, by, bz}, {f->cluster[0], f->cluster[1], f->cluster[2]}, smem};
  if (!params && f->nparams) return INVALID_VALUE;
  // The argument values, copied now (a captured launch replays them later).
  std::vector<std::vector<unsigned char>> args(f->nparams);
  for (int i = 0; i < f->nparams; ++i) {
    const unsigned char* a = static_cast<const unsigned char*>(params[i]);
    args[i].assign(a, a + f->param_bytes[i]);
  }
  return submit(stream, [f, l, args]() mutable { return run_kernel(f, l, args); });
}

// cuLaunchKernelEx with cuda.h's CUlaunchConfig / CUlaunchAttribute layout. Launches run in order
// here, so programmatic stream serialization (attribute 6, SOFT's pass 1 beside Newton) changes
// nothing; any other attribute is refused, as a driver without it would.
struct LaunchAttribute {
  int id;
  char pad[4];
  union {
    char bytes[64];
    void* align;
  } value;
};
struct LaunchConfig {
  unsigned gx, gy, gz, bx, by, bz, smem;
  CUstream stream;
  LaunchAttribute* attrs;
  unsigned nattrs;
};
CUresult cuLaunchKernelEx(const LaunchConfig* c, CUfunction f, void** params, void** extra) {
  if (!c || (c->nattrs && !c->attrs)) return INVALID_VALUE;
  for (unsigned i = 0; i < c->nattrs; ++i)
    if (c->attrs[i].id != 6) return NOT_SUPPORTED;
  return cuLaunchKernel(f, c->gx, c->gy, c->gz, c->bx, c->by, c->bz, c->smem, c->stream, params, extra);
}

// The codes this driver returns: name and description.
static const struct { CUresult code; const char* name; const char* text; } kErrors[] = {
    {OK, "CUDA_SUCCESS", "no error"},
    {INVALID_VALUE, "CUDA_ERROR_INVALID_VALUE", "invalid argument"},
    {OUT_OF_MEMORY, "CUDA_ERROR_OUT_OF_MEMORY", "out of memory"},
    {INVALID_DEVICE, "CUDA_ERROR_INVALID_DEVICE", "invalid device ordinal"},
    {INVALID_CONTEXT, "CUDA_ERROR_INVALID_CONTEXT", "invalid device context"},
    {INVALID_HANDLE, "CUDA_ERROR_INVALID_HANDLE", "invalid resource handle"},
    {NOT_FOUND, "CUDA_ERROR_NOT_FOUND", "named symbol not found"},
    {LAUNCH_FAILED, "CUDA_ERROR_LAUNCH_FAILED", "unspecified launch failure (sofa-sim: see stderr)"},
    {NOT_SUPPORTED, "CUDA_ERROR_NOT_SUPPORTED", "operation not supported (sofa-sim)"},
    {CAPTURE_UNSUPPORTED, "CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED", "operation not permitted when stream is capturing"},
    {CAPTURE_INVALIDATED, "CUDA_ERROR_STREAM_CAPTURE_INVALIDATED", "operation failed due to a previous error during capture"},
};
static CUresult describe(CUresult r, const char** s, bool name) {
  if (!s) return INVALID_VALUE;
  *s = name ? "CUDA_ERROR_UNKNOWN" : "unknown error";
  for (const auto& e : kErrors)
    if (e.code == r) *s = name ? e.name : e.text;
  return OK;
}
CUresult cuGetErrorString(CUresult r, const char** s) { return describe(r, s, false); }
CUresult cuGetErrorName(CUresult r, const char** s) { return describe(r, s, true); }

}  // extern "C"

// C++ linkage (it takes a std::function): the simulated cuBLAS queues its GEMMs through it.
CUresult sofa_sim_submit(CUstream s, std::function<CUresult()> work) { return submit(s, std::move(work)); }
