// The simulated GPU's execution model (sim/README.md): a kernel's blocks run cluster by cluster;
// inside one, every CUDA thread is a fiber with its own stack, switched only at barriers and warp
// collectives, so the kernel's memory accesses happen in a legal but unforgiving order:
//   * a block barrier releases only when every live thread of the block has arrived;
//   * a warp collective (shuffle, ldmatrix, mma) completes when every lane of its mask has arrived,
//     on the values the lanes supplied; lanes must agree on the operation and the mask;
//   * cp.async copies land at the cp.async.wait_group that covers them, not earlier;
//   * shared memory starts as 0xFF bytes (NaN in every float format) unless SOFA_SIM_SMEM=zero.
// Any round in which no thread can make progress is a deadlock and fails the launch.
#include "exec.h"

#include <sys/mman.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
#include <mutex>
#include <thread>
#include <unordered_map>
#include <utility>
#include <vector>

#include "cuda_sim.h"

#if defined(__SANITIZE_ADDRESS__)
#include <sanitizer/asan_interface.h>
#include <sanitizer/common_interface_defs.h>
#define SIM_ASAN 1
#else
#define SIM_ASAN 0
#endif

// Saves the callee-saved registers and the FP control words on the current stack, stores the
// stack pointer to *save, switches to `next` and restores what was saved there (System V x86-64).
extern "C" void sim_swap(void** save, void* next);
extern "C" void sim_fiber_start();
asm(R"(
.text
.globl sim_swap
.type sim_swap,@function
sim_swap:
  pushq %rbp
  pushq %rbx
  pushq %r12
  pushq %r13
  pushq %r14
  pushq %r15
  subq $8, %rsp
  stmxcsr (%rsp)
  fnstcw 4(%rsp)
  movq %rsp, (%rdi)
  movq %rsi, %rsp
  ldmxcsr (%rsp)
  fldcw 4(%rsp)
  addq $8, %rsp
  popq %r15
  popq %r14
  popq %r13
  popq %r12
  popq %rbx
  popq %rbp
  ret
.size sim_swap,.-sim_swap
.globl sim_fiber_start
.type sim_fiber_start,@function
sim_fiber_start:
  movq %r12, %rdi
  callq *%r13
  ud2
.size sim_fiber_start,.-sim_fiber_start
)");

namespace sim {

thread_local const Coords* coords = nullptr;
bool racecheck_on = false;
void race_access(const void* p, size_t n, bool write);

namespace {

constexpr size_t kStack = 256 * 1024;
constexpr size_t kArena = kMaxSmem + 64 * 1024;  // dynamic region + static variables
constexpr size_t kRedzone = 64;

struct Cta;
struct Cluster;

struct Copy {
  unsigned dst;
  const void* src;
  unsigned src_bytes;
  unsigned bytes = 16;  // copy size: 4, 8 or 16
};

struct Shadow {
  unsigned long long serial = 0;
  unsigned w_epoch = 0, r_epoch = 0;
  unsigned short w_thread = 0, r_warp = 0;
  bool written = false, read = false;
};

struct Thread {
  Coords c{};
  Cta* cta = nullptr;
  void* sp = nullptr;
  char* stack = nullptr;
  int lane = 0, warp = 0;
  bool done = false;
  const char* waiting = nullptr;  // what it waits for (deadlock report)
  std::vector<Copy> open;                 // cp.async issued since the last commit
  std::vector<std::vector<Copy>> groups;  // committed, not yet waited for (oldest first)
  unsigned cl_gen = 0;
  bool cl_arrived = false;
};

// A warp collective in progress: lane inputs, then every lane's result once all have arrived.
struct Warp {
  unsigned arrived = 0, gen = 0, mask = 0, live = 0xffffffffu;
  int op = -1;
  alignas(16) unsigned char in[32][48];
  alignas(16) unsigned char out[32][16];
};

// st.async data not yet landed (SOFA_SIM_ST_ASYNC=late, the default): at its mbarrier's phase
// completion, the latest time PTX allows.
struct AsyncStore {
  unsigned off;
  unsigned char bytes[8];
  unsigned n;
};

// An mbarrier (keyed by its shared offset): phase count, arrivals left, transaction bytes left.
struct Mbar {
  unsigned expected = 0, pending = 0, phase = 0;
  long long tx = 0;
  std::vector<AsyncStore> landing;
};

struct Cta {
  Cluster* cl = nullptr;
  unsigned rank = 0;
  std::vector<Thread> threads;
  std::vector<Warp> warps;
  unsigned char* arena = nullptr;
  size_t dyn = 0, top = 0;
  size_t static_bytes = 0;  // the block's static __shared__ variables, as the hardware counts them
  std::vector<unsigned char> valid;  // 1 per arena byte a variable or the dynamic region owns
  std::map<std::pair<const char*, int>, size_t> vars;
  unsigned bar_arrived = 0, bar_gen = 0, alive = 0;
  int or_acc = 0, or_result = 0;
  unsigned epoch = 0;          // barrier releases so far (racecheck)
  unsigned long long serial;   // distinguishes this block's racecheck shadow from earlier ones
  std::vector<Shadow> shadow;  // per 4-byte word of the arena (racecheck only)
  std::map<unsigned, Mbar> mbars;
};

struct Cluster {
  const Entry* e = nullptr;
  Launch l{};
  void** args = nullptr;
  std::vector<Cta*> ctas;
  unsigned cl_arrived = 0, cl_gen = 0, alive = 0;
  unsigned long long progress = 0;
  std::string fault;
};

thread_local Thread* cur = nullptr;
thread_local void* sched_sp = nullptr;
thread_local Cluster* cur_cluster = nullptr;
#if SIM_ASAN
thread_local void* sched_fake_stack = nullptr;
thread_local const void* sched_stack_bottom = nullptr;
thread_local size_t sched_stack_size = 0;
#endif

// Fiber stacks are reused across blocks and launches (a global pool: worker threads come and go).
std::mutex stack_mu;
std::vector<char*> stack_pool;
char* take_stack() {
  {
    std::lock_guard<std::mutex> g(stack_mu);
    if (!stack_pool.empty()) {
      char* s = stack_pool.back();
      stack_pool.pop_back();
      return s;
    }
  }
  void* p = mmap(nullptr, kStack, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
  if (p == MAP_FAILED) {
    std::fprintf(stderr, "sofa-sim: cannot map a fiber stack\n");
    std::abort();
  }
  mprotect(p, 4096, PROT_NONE);  // guard page: a stack overflow faults instead of corrupting
  return static_cast<char*>(p);
}
void give_stacks(const std::vector<Thread>& ts) {
  std::lock_guard<std::mutex> g(stack_mu);
  for (const Thread& t : ts) stack_pool.push_back(t.stack);
}

// Switches from the running fiber back to the scheduler.
void yield() {
  Thread* t = cur;
#if SIM_ASAN
  void* fake = nullptr;
  __sanitizer_start_switch_fiber(&fake, sched_stack_bottom, sched_stack_size);
#endif
  sim_swap(&t->sp, sched_sp);
#if SIM_ASAN
  __sanitizer_finish_switch_fiber(fake, &sched_stack_bottom, &sched_stack_size);
#endif
  cur = t;
  coords = &t->c;
}

void resume(Thread* t) {
  cur = t;
  coords = &t->c;
#if SIM_ASAN
  __sanitizer_start_switch_fiber(&sched_fake_stack, t->stack + 4096, kStack - 4096);
#endif
  sim_swap(&sched_sp, t->sp);
#if SIM_ASAN
  __sanitizer_finish_switch_fiber(sched_fake_stack, nullptr, nullptr);
#endif
}

// Records the first fault of the launch and parks the fiber for good.
[[noreturn]] void fault(const std::string& what) {
  Cluster* cl = cur_cluster;
  if (cl->fault.empty()) {
    const Coords& c = cur->c;
    char where[160];
    std::snprintf(where, sizeof where, "%s: block (%u,%u,%u) thread (%u,%u,%u): ", cl->e->name, c.bid.x, c.bid.y,
                  c.bid.z, c.tid.x, c.tid.y, c.tid.z);
    cl->fault = where + what;
  }
  for (;;) yield();
}

void wait_while(const char* what, const unsigned& gen, unsigned seen) {
  cur->waiting = what;
  while (gen == seen && cur_cluster->fault.empty()) yield();
  cur->waiting = nullptr;
}

void release_block(Cta& b) {
  ++b.epoch;
  b.bar_arrived = 0;
  b.or_result = b.or_acc;
  b.or_acc = 0;
  ++b.bar_gen;
}

void release_cluster(Cluster& cl) {
  for (Cta* b : cl.ctas) ++b->epoch;
  cl.cl_arrived = 0;
  ++cl.cl_gen;
}

using Compute = void (*)(Warp&);

// Supplies `in` for this lane and returns once every lane of `mask` has; `compute` fills all
// lanes' results (run by the last lane to arrive).
unsigned char* warp_op(unsigned mask, int op, const void* in, size_t n, Compute compute) {
  Thread* t = cur;
  Warp& w = t->cta->warps[t->warp];
  const unsigned me = 1u << t->lane;
  if (!(mask & me)) fault("a warp collective whose mask leaves out the calling lane");
  if ((mask & w.live) != mask) fault("a warp collective whose mask names an exited lane");
  if (w.arrived == 0) {
    w.mask = mask;
    w.op = op;
  } else if (w.mask != mask || w.op != op) {
    fault("lanes of one warp disagree on the collective (operation or mask)");
  }
  std::memcpy(w.in[t->lane], in, n);
  w.arrived |= me;
  ++cur_cluster->progress;
  const unsigned gen = w.gen;
  if (w.arrived == mask) {
    compute(w);
    w.arrived = 0;
    ++w.gen;
  } else {
    wait_while("a warp collective", w.gen, gen);
  }
  return w.out[t->lane];
}

void thread_exit(Thread* t) {
  Cta& b = *t->cta;
  t->done = true;
  --b.alive;
  b.warps[t->warp].live &= ~(1u << t->lane);
  --b.cl->alive;
  if (b.bar_arrived > 0 && b.bar_arrived == b.alive) release_block(b);
  if (b.cl->cl_arrived > 0 && b.cl->cl_arrived == b.cl->alive) release_cluster(*b.cl);
  ++b.cl->progress;
  t->open.clear();
  t->groups.clear();
}

extern "C" void fiber_main(Thread* t) {
#if SIM_ASAN
  __sanitizer_finish_switch_fiber(nullptr, &sched_stack_bottom, &sched_stack_size);
#endif
  cur = t;
  coords = &t->c;
  cur_cluster->e->invoke(cur_cluster->args);
  thread_exit(t);
  for (;;) yield();  // never resumed again
}

void* new_fiber(Thread* t) {
  t->stack = take_stack();
  // Frame popped by sim_swap: control words, r15, r14, r13 (entry), r12 (arg), rbx, rbp, return.
  uintptr_t top = reinterpret_cast<uintptr_t>(t->stack + kStack) & ~uintptr_t(15);
  uint64_t* sp = reinterpret_cast<uint64_t*>(top - 16);  // return slot at 16n + 8 → call site aligned
  sp[0] = 0;
  *--sp = reinterpret_cast<uint64_t>(&sim_fiber_start);
  *--sp = 0;                                               // rbp
  *--sp = 0;                                               // rbx
  *--sp = reinterpret_cast<uint64_t>(t);                   // r12
  *--sp = reinterpret_cast<uint64_t>(&fiber_main);         // r13
  *--sp = 0;                                               // r14
  *--sp = 0;                                               // r15
  unsigned ctl[2] = {0x1F80u, 0x037Fu};                    // default MXCSR, x87 control word
  *--sp = (uint64_t)ctl[0] | ((uint64_t)ctl[1] << 32);
  return sp;
}

bool smem_poison_nan() {
  static const bool nan = [] {
    const char* v = std::getenv("SOFA_SIM_SMEM");
    return !(v && std::strcmp(v, "zero") == 0);
  }();
  return nan;
}

void init_cta(Cta& b, Cluster& cl, const uint3& bid, unsigned rank) {
  const Launch& l = cl.l;
  b.cl = &cl;
  b.rank = rank;
  const unsigned n = l.block[0] * l.block[1] * l.block[2];
  b.threads.resize(n);
  b.warps.assign((n + 31) / 32, Warp{});
  if (n % 32) b.warps.back().live = (1u << (n % 32)) - 1;
  b.alive = n;
  // Only the part of the arena the previous block used needs restoring (a grid of many small
  // blocks would otherwise spend its time clearing 291 KB per block).
  size_t dirty = b.top;
  if (!b.arena) {
    b.arena = static_cast<unsigned char*>(std::aligned_alloc(128, kArena));
    b.valid.assign(kArena, 0);
    dirty = kArena;
  }
  std::memset(b.arena, smem_poison_nan() ? 0xFF : 0, dirty);
  std::fill(b.valid.begin(), b.valid.begin() + dirty, 0);
  b.dyn = l.dyn_smem;
  std::fill(b.valid.begin(), b.valid.begin() + b.dyn, 1);
  b.top = (b.dyn + kRedzone + 127) & ~size_t(127);
  b.vars.clear();
  b.mbars.clear();
  b.static_bytes = 0;
  static std::atomic<unsigned long long> serials{1};
  b.serial = serials.fetch_add(1);
  b.epoch = 0;
#if SIM_ASAN
  ASAN_POISON_MEMORY_REGION(b.arena, kArena);
  ASAN_UNPOISON_MEMORY_REGION(b.arena, b.dyn);
#endif
  for (unsigned i = 0; i < n; ++i) {
    Thread& t = b.threads[i];
    t = Thread{};
    t.cta = &b;
    t.c.tid = {i % l.block[0], (i / l.block[0]) % l.block[1], i / (l.block[0] * l.block[1])};
    t.c.bid = bid;
    t.c.bdim = {l.block[0], l.block[1], l.block[2]};
    t.c.gdim = {l.grid[0], l.grid[1], l.grid[2]};
    t.lane = i % 32;
    t.warp = i / 32;
    t.sp = new_fiber(&t);
  }
}

void free_cta(Cta& b) {
  give_stacks(b.threads);
#if SIM_ASAN
  ASAN_UNPOISON_MEMORY_REGION(b.arena, kArena);
#endif
}

std::string deadlock_report(Cluster& cl) {
  std::string s = std::string(cl.e->name) + ": deadlock, no thread can proceed (";
  std::map<std::string, int> count;
  for (Cta* b : cl.ctas)
    for (Thread& t : b->threads)
      if (!t.done) ++count[t.waiting ? t.waiting : "running"];
  bool first = true;
  for (auto& [what, n] : count) {
    s += (first ? "" : ", ") + std::to_string(n) + " waiting at " + what;
    first = false;
  }
  return s + ")";
}

// After the last thread exits: an mbarrier phase left with bytes outstanding or data not landed
// means a CTA exited while st.async into it were still possible (or a fill was never waited on).
std::string unfinished_async(Cluster& cl) {
  for (Cta* b : cl.ctas)
    for (auto& [off, mb] : b->mbars)
      if (mb.tx != 0 || !mb.landing.empty())
        return std::string(cl.e->name) + ": block rank " + std::to_string(b->rank) + " exited with the mbarrier at " +
               std::to_string(off) + " expecting " + std::to_string(mb.tx) + " more st.async bytes";
  return {};
}

// Runs one cluster of blocks to completion on this OS thread.
bool run_cluster(Cluster& cl, std::vector<Cta>& pool, const uint3& first, std::string& error) {
  const unsigned csize = cl.l.cluster[0] * cl.l.cluster[1] * cl.l.cluster[2];
  if (pool.size() < csize) pool.resize(csize);
  cl.ctas.clear();
  for (unsigned r = 0; r < csize; ++r) {
    const uint3 bid = {first.x + r % cl.l.cluster[0], first.y + (r / cl.l.cluster[0]) % cl.l.cluster[1],
                       first.z + r / (cl.l.cluster[0] * cl.l.cluster[1])};
    init_cta(pool[r], cl, bid, r);
    cl.ctas.push_back(&pool[r]);
  }
  cl.alive = csize * cl.l.block[0] * cl.l.block[1] * cl.l.block[2];
  cl.cl_arrived = 0;
  cl.cl_gen = 0;
  cl.fault.clear();
  cur_cluster = &cl;
  for (;;) {
    const unsigned long long before = cl.progress;
    bool live = false;
    for (Cta* b : cl.ctas)
      for (Thread& t : b->threads)
        if (!t.done) {
          live = true;
          resume(&t);
          if (!cl.fault.empty()) break;
        }
    if (!cl.fault.empty()) {
      error = cl.fault;
      break;
    }
    if (!live) {
      error = unfinished_async(cl);
      break;
    }
    if (cl.progress == before) {
      error = deadlock_report(cl);
      break;
    }
  }
  for (Cta* b : cl.ctas) free_cta(*b);
  cur_cluster = nullptr;
  cur = nullptr;
  coords = nullptr;
  return error.empty();
}

std::unordered_map<std::string, Entry>& registry() {
  static std::unordered_map<std::string, Entry> r;
  return r;
}

unsigned sim_threads() {
  const char* v = std::getenv("SOFA_SIM_THREADS");
  if (v && *v) return std::max(1, std::atoi(v));
  return std::max(1u, std::thread::hardware_concurrency());
}

}  // namespace

Registrar::Registrar(const char* name, Invoke invoke, unsigned cx, unsigned cy, unsigned cz,
                     std::initializer_list<size_t> param_bytes) {
  Entry e{name, invoke, {cx, cy, cz}, 0, {}};
  for (size_t b : param_bytes) {
    if (e.nparams == kMaxParams) {
      std::fprintf(stderr, "sofa-sim: %s: more than %d parameters\n", name, kMaxParams);
      std::abort();
    }
    e.param_bytes[e.nparams++] = b;
  }
  registry()[name] = e;
}

const Entry* find_entry(const char* name) {
  auto it = registry().find(name);
  return it == registry().end() ? nullptr : &it->second;
}

bool run(const Entry& e, const Launch& l0, void** args, std::string& error) {
  Launch l = l0;
  for (int i = 0; i < 3; ++i) {
    if (l.cluster[i] == 0) l.cluster[i] = 1;
    if (l.grid[i] % l.cluster[i]) {
      error = std::string(e.name) + ": grid not divisible by the cluster shape";
      return false;
    }
  }
  const unsigned cx = l.grid[0] / l.cluster[0], cy = l.grid[1] / l.cluster[1], cz = l.grid[2] / l.cluster[2];
  const unsigned long long clusters = (unsigned long long)cx * cy * cz;
  std::atomic<unsigned long long> next{0};
  std::mutex m;
  std::string first_error;
  auto worker = [&] {
    std::vector<Cta> pool;
    Cluster cl;
    cl.e = &e;
    cl.l = l;
    cl.args = args;
    for (;;) {
      const unsigned long long i = next.fetch_add(1);
      if (i >= clusters) break;
      const uint3 first = {(unsigned)(i % cx) * l.cluster[0], (unsigned)((i / cx) % cy) * l.cluster[1],
                           (unsigned)(i / ((unsigned long long)cx * cy)) * l.cluster[2]};
      std::string err;
      if (!run_cluster(cl, pool, first, err)) {
        std::lock_guard<std::mutex> g(m);
        if (first_error.empty()) first_error = err;
        next = clusters;  // stop handing out work
        break;
      }
    }
    for (Cta& b : pool) std::free(b.arena);
  };
  const unsigned nt = (unsigned)std::min<unsigned long long>(sim_threads(), clusters);
  if (nt <= 1) {
    worker();
  } else {
    std::vector<std::thread> ts;
    for (unsigned i = 0; i < nt; ++i) ts.emplace_back(worker);
    for (auto& t : ts) t.join();
  }
  error = first_error;
  return error.empty();
}

// ---- the calls the kernels make (cuda_sim.h) -------------------------------------------------

void syncthreads() {
  Cta& b = *cur->cta;
  const unsigned gen = b.bar_gen;
  ++cur_cluster->progress;
  if (++b.bar_arrived == b.alive) release_block(b);
  else wait_while("__syncthreads", b.bar_gen, gen);
}

int syncthreads_or(int pred) {
  Cta& b = *cur->cta;
  b.or_acc |= pred != 0;
  syncthreads();
  return b.or_result;
}

void syncwarp(unsigned mask) {
  warp_op(mask, 0, "", 0, [](Warp&) {});
}

unsigned shfl(unsigned mask, unsigned v, int arg, int mode) {
  struct In { unsigned v; int arg; } in{v, arg};
  static const Compute fns[4] = {
      [](Warp& w) {
        for (int l = 0; l < 32; ++l) {
          if (!(w.mask >> l & 1)) continue;
          const In* me = reinterpret_cast<const In*>(w.in[l]);
          int src = l ^ (me->arg & 31);
          if (!(w.mask >> src & 1)) src = l;
          std::memcpy(w.out[l], &reinterpret_cast<const In*>(w.in[src])->v, 4);
        }
      },
      [](Warp& w) {
        for (int l = 0; l < 32; ++l) {
          if (!(w.mask >> l & 1)) continue;
          int src = reinterpret_cast<const In*>(w.in[l])->arg & 31;
          if (!(w.mask >> src & 1)) src = l;
          std::memcpy(w.out[l], &reinterpret_cast<const In*>(w.in[src])->v, 4);
        }
      },
      [](Warp& w) {
        for (int l = 0; l < 32; ++l) {
          if (!(w.mask >> l & 1)) continue;
          int src = l + reinterpret_cast<const In*>(w.in[l])->arg;
          if (src > 31 || !(w.mask >> src & 1)) src = l;
          std::memcpy(w.out[l], &reinterpret_cast<const In*>(w.in[src])->v, 4);
        }
      },
      [](Warp& w) {
        for (int l = 0; l < 32; ++l) {
          if (!(w.mask >> l & 1)) continue;
          int src = l - reinterpret_cast<const In*>(w.in[l])->arg;
          if (src < 0 || !(w.mask >> src & 1)) src = l;
          std::memcpy(w.out[l], &reinterpret_cast<const In*>(w.in[src])->v, 4);
        }
      }};
  unsigned r;
  std::memcpy(&r, warp_op(mask, 10 + mode, &in, sizeof in, fns[mode & 3]), 4);
  return r;
}

unsigned ballot_sync(unsigned mask, int pred) {
  const int p = pred != 0;
  unsigned r;
  std::memcpy(&r,
              warp_op(mask, 2, &p, 4,
                      [](Warp& w) {
                        unsigned bits = 0;
                        for (int l = 0; l < 32; ++l)
                          if ((w.mask >> l & 1) && *reinterpret_cast<const int*>(w.in[l])) bits |= 1u << l;
                        for (int l = 0; l < 32; ++l) std::memcpy(w.out[l], &bits, 4);
                      }),
              4);
  return r;
}

int any_sync(unsigned mask, int pred) { return ballot_sync(mask, pred) != 0; }

namespace {
float bf2f(unsigned short b) { return __uint_as_float((unsigned)b << 16); }
float lo16(unsigned x, bool bf) { return bf ? bf2f(x & 0xffffu) : h2f(x & 0xffffu); }
float hi16(unsigned x, bool bf) { return bf ? bf2f(x >> 16) : h2f(x >> 16); }

template <bool BF> void mma_compute(Warp& w) {
  struct In { unsigned a[4], b[2]; float c[4]; };
  float A[16][16], B[16][8], C[16][8];
  for (int l = 0; l < 32; ++l) {
    const In& x = *reinterpret_cast<const In*>(w.in[l]);
    const int g = l / 4, t = l % 4;
    const int rows[4] = {g, g + 8, g, g + 8}, cols[4] = {2 * t, 2 * t, 2 * t + 8, 2 * t + 8};
    for (int i = 0; i < 4; ++i) {
      A[rows[i]][cols[i]] = lo16(x.a[i], BF);
      A[rows[i]][cols[i] + 1] = hi16(x.a[i], BF);
    }
    B[2 * t][g] = lo16(x.b[0], BF);
    B[2 * t + 1][g] = hi16(x.b[0], BF);
    B[2 * t + 8][g] = lo16(x.b[1], BF);
    B[2 * t + 9][g] = hi16(x.b[1], BF);
    C[g][2 * t] = x.c[0];
    C[g][2 * t + 1] = x.c[1];
    C[g + 8][2 * t] = x.c[2];
    C[g + 8][2 * t + 1] = x.c[3];
  }
  for (int l = 0; l < 32; ++l) {
    const int g = l / 4, t = l % 4;
    float d[4];
    for (int i = 0; i < 4; ++i) {
      const int r = g + (i >= 2 ? 8 : 0), c = 2 * t + (i & 1);
      // Products of 16-bit values are exact in fp32; the hardware's sum is fp32 as well.
      double s = 0;
      for (int k = 0; k < 16; ++k) s += (double)(A[r][k] * B[k][c]);
      d[i] = (float)(s + (double)C[r][c]);
    }
    std::memcpy(w.out[l], d, sizeof d);
  }
}
}  // namespace

void mma16816(int bf, float& d0, float& d1, float& d2, float& d3, unsigned a0, unsigned a1, unsigned a2,
              unsigned a3, unsigned b0, unsigned b1) {
  struct In { unsigned a[4], b[2]; float c[4]; } in{{a0, a1, a2, a3}, {b0, b1}, {d0, d1, d2, d3}};
  const float* d = reinterpret_cast<const float*>(
      warp_op(0xffffffffu, bf ? 4 : 3, &in, sizeof in, bf ? mma_compute<true> : mma_compute<false>));
  d0 = d[0];
  d1 = d[1];
  d2 = d[2];
  d3 = d[3];
}

namespace {
template <int COUNT, bool TRANS> void ldmatrix_compute(Warp& w) {
  for (int l = 0; l < 32; ++l) {
    unsigned r[4] = {0, 0, 0, 0};
    for (int j = 0; j < COUNT; ++j) {
      // Matrix j's rows come from the addresses of lanes 8j … 8j+7.
      const int row = TRANS ? 2 * (l % 4) : l / 4;
      const int col = TRANS ? l / 4 : 2 * (l % 4);
      unsigned short e[2];
      for (int k = 0; k < 2; ++k) {
        const int rr = TRANS ? row + k : row, cc = TRANS ? col : col + k;
        const unsigned addr = *reinterpret_cast<const unsigned*>(w.in[8 * j + rr]);
        std::memcpy(&e[k], smem_ptr(addr + 2 * cc, 2), 2);
      }
      r[j] = e[0] | ((unsigned)e[1] << 16);
    }
    std::memcpy(w.out[l], r, sizeof r);
  }
}
}  // namespace

void ldmatrix(int count, int trans, unsigned addr, unsigned* r) {
  if (addr % 16) fault("ldmatrix row address not 16-byte aligned");
  static const Compute fns[2][3] = {{ldmatrix_compute<1, false>, ldmatrix_compute<2, false>, ldmatrix_compute<4, false>},
                                    {ldmatrix_compute<1, true>, ldmatrix_compute<2, true>, ldmatrix_compute<4, true>}};
  const int ci = count == 1 ? 0 : count == 2 ? 1 : 2;
  const unsigned char* out = warp_op(0xffffffffu, 5 + ci + 3 * trans, &addr, 4, fns[trans != 0][ci]);
  std::memcpy(r, out, 4 * count);
}

void cluster_arrive() {
  Thread* t = cur;
  Cluster& cl = *cur_cluster;
  if (t->cl_arrived) fault("barrier.cluster.arrive twice without a wait");
  t->cl_arrived = true;
  t->cl_gen = cl.cl_gen;
  ++cl.progress;
  if (++cl.cl_arrived == cl.alive) release_cluster(cl);
}

void cluster_wait() {
  Thread* t = cur;
  if (!t->cl_arrived) fault("barrier.cluster.wait without an arrive");
  t->cl_arrived = false;
  wait_while("barrier.cluster.wait", cur_cluster->cl_gen, t->cl_gen);
}

unsigned cluster_rank() { return cur->cta->rank; }

// Shared-window addresses of another block of the cluster carry its rank + 1 in the top byte.
unsigned mapa(unsigned addr, unsigned rank) {
  if (rank >= cur_cluster->ctas.size()) fault("mapa to a rank outside the cluster");
  if (addr >> 24) fault("mapa of an address that is not a local shared address");
  return addr | ((rank + 1) << 24);
}

void st_cluster_u32(unsigned addr, unsigned v) {
  const unsigned rank = (addr >> 24) - 1, off = addr & 0xffffffu;
  if ((addr >> 24) == 0 || rank >= cur_cluster->ctas.size()) fault("st.shared::cluster to an unmapped address");
  Cta& b = *cur_cluster->ctas[rank];
  if (off % 4 || off + 4 > kArena || !b.valid[off] || !b.valid[off + 3])
    fault("st.shared::cluster outside the target block's shared memory");
  std::memcpy(b.arena + off, &v, 4);
}

// ---- mbarriers and st.async ----
namespace {
bool st_async_early() {
  static const bool early = [] {
    const char* v = std::getenv("SOFA_SIM_ST_ASYNC");
    return v && std::strcmp(v, "early") == 0;
  }();
  return early;
}

Mbar& mbar_at(Cta& b, unsigned off, const char* op) {
  auto it = b.mbars.find(off);
  if (it == b.mbars.end()) fault(std::string(op) + " on shared offset " + std::to_string(off) + ", not an initialized mbarrier");
  return it->second;
}

// Completes the phase once its arrivals and bytes are spent: late st.async data lands first.
void mbar_advance(Cta& b, Mbar& mb) {
  if (mb.pending != 0 || mb.tx != 0) return;
  for (const AsyncStore& st : mb.landing) std::memcpy(b.arena + st.off, st.bytes, st.n);
  mb.landing.clear();
  ++mb.phase;
  mb.pending = mb.expected;
  ++cur_cluster->progress;
}
}  // namespace

void mbar_init(unsigned addr, unsigned count) {
  Cta& b = *cur->cta;
  smem_ptr(addr, 8, true);
  if (addr % 8) fault("mbarrier.init of an address not 8-byte aligned");
  if (count == 0) fault("mbarrier.init with a count of 0");
  b.mbars[addr] = Mbar{count, count, 0, 0, {}};
}

void mbar_arrive_tx(unsigned addr, unsigned bytes) {
  Cta& b = *cur->cta;
  Mbar& mb = mbar_at(b, addr, "mbarrier.arrive.expect_tx");
  mb.tx += bytes;
  if (mb.pending == 0) fault("mbarrier.arrive on a phase with no arrival pending");
  --mb.pending;
  ++cur_cluster->progress;
  mbar_advance(b, mb);
}

void mbar_wait(unsigned addr, unsigned parity) {
  Cta& b = *cur->cta;
  Mbar& mb = mbar_at(b, addr, "mbarrier.try_wait.parity");
  cur->waiting = "mbarrier.try_wait.parity";
  while ((mb.phase & 1u) == (parity & 1u) && cur_cluster->fault.empty()) yield();
  cur->waiting = nullptr;
}

// Stricter than PTX (whose tx-count may go transiently negative): the bytes must arrive on a
// phase already armed for them, as sofa's kernels guarantee by their order.
void st_async(unsigned addr, const void* v, unsigned n, unsigned bar) {
  const unsigned rank = (addr >> 24) - 1, off = addr & 0xffffffu, brank = (bar >> 24) - 1, boff = bar & 0xffffffu;
  if ((addr >> 24) == 0 || rank >= cur_cluster->ctas.size()) fault("st.async to an unmapped address");
  if ((bar >> 24) == 0 || brank != rank) fault("st.async whose mbarrier is not in the destination block");
  if (off % n) fault("st.async destination not aligned to its size");
  Cta& b = *cur_cluster->ctas[rank];
  if (off + n > kArena || !b.valid[off] || !b.valid[off + n - 1])
    fault("st.async outside the target block's shared memory");
  Mbar& mb = mbar_at(b, boff, "st.async complete_tx");
  if (mb.tx < (long long)n) fault("st.async completes bytes its mbarrier's phase does not expect (not armed yet)");
  if (st_async_early()) {
    std::memcpy(b.arena + off, v, n);
  } else {
    AsyncStore st{off, {}, n};
    std::memcpy(st.bytes, v, n);
    mb.landing.push_back(st);
  }
  mb.tx -= n;
  ++cur_cluster->progress;
  mbar_advance(b, mb);
}

void* shared_var(const char* fn, int site, size_t bytes, size_t align) {
  Cta& b = *cur->cta;
  auto key = std::make_pair(fn, site);
  auto it = b.vars.find(key);
  if (it != b.vars.end()) return b.arena + it->second;
  align = std::max<size_t>(align, 16);
  const size_t off = (b.top + align - 1) & ~(align - 1);
  if (off + bytes + kRedzone > kArena) fault("static shared memory beyond the arena");
  // The hardware's limit is on static plus dynamic shared memory per block.
  b.static_bytes = ((b.static_bytes + align - 1) & ~(align - 1)) + bytes;
  if (b.dyn + b.static_bytes > kMaxSmem) fault("static + dynamic shared memory above the 227 KiB a block may have");
  b.vars[key] = off;
  b.top = off + bytes + kRedzone;
  std::fill(b.valid.begin() + off, b.valid.begin() + off + bytes, 1);
#if SIM_ASAN
  ASAN_UNPOISON_MEMORY_REGION(b.arena + off, bytes);
#endif
  return b.arena + off;
}

void* dyn_shared() { return cur->cta->arena; }

unsigned smem_addr(const void* p) {
  const unsigned char* a = cur->cta->arena;
  const unsigned char* q = static_cast<const unsigned char*>(p);
  if (q < a || q >= a + kArena) fault("cvta.to.shared of a pointer outside the block's shared memory");
  return (unsigned)(q - a);
}

void* smem_ptr(unsigned addr, size_t bytes, bool write) {
  Cta& b = *cur->cta;
  if ((addr >> 24) != 0) fault("a cluster-mapped address used as a local shared address");
  if (addr + bytes > kArena || !b.valid[addr] || !b.valid[addr + bytes - 1])
    fault("shared memory access outside any variable (offset " + std::to_string(addr) + ")");
  if (racecheck_on) race_access(b.arena + addr, bytes, write);
  return b.arena + addr;
}

void cp_async(unsigned dst, const void* src, unsigned bytes, unsigned src_bytes) {
  const std::string n = std::to_string(bytes);
  if (dst % bytes) fault("cp.async destination not " + n + "-byte aligned");
  if (src_bytes && reinterpret_cast<uintptr_t>(src) % bytes) fault("cp.async source not " + n + "-byte aligned");
  if (src_bytes > bytes) fault("cp.async source size above its copy size");
  if (dst + bytes > kArena || !cur->cta->valid[dst] || !cur->cta->valid[dst + bytes - 1])
    fault("cp.async destination outside any shared variable");
  cur->open.push_back(Copy{dst, src, src_bytes, bytes});
}
void cp_async16(unsigned dst, const void* src, unsigned src_bytes) { cp_async(dst, src, 16, src_bytes); }

void cp_async_commit() {
  Thread* t = cur;
  t->groups.push_back(std::move(t->open));
  t->open.clear();
}

void cp_async_wait(int n) {
  Thread* t = cur;
  while ((int)t->groups.size() > n) {
    for (const Copy& c : t->groups.front()) {
      unsigned char* d = static_cast<unsigned char*>(smem_ptr(c.dst, c.bytes, true));
      std::memset(d, 0, c.bytes);
      if (c.src_bytes) std::memcpy(d, c.src, c.src_bytes);
    }
    t->groups.erase(t->groups.begin());
  }
}

unsigned short f2h(float x) {
  unsigned u = __float_as_uint(x);
  const unsigned sign = (u >> 16) & 0x8000u;
  const unsigned ax = u & 0x7fffffffu;
  if (ax > 0x7f800000u) return 0x7fff;                   // NaN (canonical, as cvt.rn.f16.f32)
  if (ax >= 0x477ff000u) return (unsigned short)(sign | 0x7c00u);  // rounds to ±inf
  if (ax < 0x38800000u) {                                // subnormal or zero in f16
    const float a = __uint_as_float(ax);
    const float q = std::nearbyint(a * 16777216.f);      // units of 2^-24, ties to even
    return (unsigned short)(sign | (unsigned)q);
  }
  const unsigned mant = ax & 0x7fffffu, exp = (ax >> 23) - 112;
  unsigned h = (exp << 10) | (mant >> 13);
  const unsigned rest = mant & 0x1fffu;
  if (rest > 0x1000u || (rest == 0x1000u && (h & 1))) ++h;
  return (unsigned short)(sign | h);
}

unsigned short f2bf(float x) {
  const unsigned u = __float_as_uint(x);
  if ((u & 0x7fffffffu) > 0x7f800000u) return 0x7fff;
  return (unsigned short)((u + 0x7fffu + ((u >> 16) & 1)) >> 16);
}

float h2f(unsigned short h) {
  const unsigned sign = (unsigned)(h & 0x8000u) << 16;
  const unsigned e = (h >> 10) & 0x1f, m = h & 0x3ffu;
  if (e == 0) return __uint_as_float(sign) + (sign ? -1.f : 1.f) * (float)m * 5.9604644775390625e-8f;
  if (e == 31) return __uint_as_float(sign | 0x7f800000u | (m << 13));
  return __uint_as_float(sign | ((e + 112) << 23) | (m << 13));
}

float ex2_approx_ftz(float x) {
  if (std::fabs(x) < 1.17549435e-38f) x = 0.f;  // ftz input
  const float y = std::exp2(x);
  return y < 1.17549435e-38f ? 0.f : y;
}

float min_nan(float a, float b) {
  if (std::isnan(a) || std::isnan(b)) return __uint_as_float(0x7fffffffu);
  return std::fmin(a, b);
}
float max_nan(float a, float b) {
  if (std::isnan(a) || std::isnan(b)) return __uint_as_float(0x7fffffffu);
  return std::fmax(a, b);
}

// max.{f16,bf16}x2: a NaN operand yields the other one; max(−0, +0) = +0.
unsigned hmax2(unsigned x, unsigned y, int bf) {
  unsigned r = 0;
  for (int k = 0; k < 2; ++k) {
    const unsigned short a = (x >> (16 * k)) & 0xffffu, b = (y >> (16 * k)) & 0xffffu;
    const float fa = bf ? bf2f(a) : h2f(a), fb = bf ? bf2f(b) : h2f(b);
    unsigned short m;
    if (std::isnan(fa)) m = std::isnan(fb) ? 0x7fff : b;
    else if (std::isnan(fb)) m = a;
    else if (fa == fb) m = (a & 0x8000u) ? b : a;
    else m = fa > fb ? a : b;
    r |= (unsigned)m << (16 * k);
  }
  return r;
}

namespace {
template <typename T> T fetch_max(T* p, T v) {
  T old = __atomic_load_n(p, __ATOMIC_RELAXED);
  while (old < v && !__atomic_compare_exchange_n(p, &old, v, true, __ATOMIC_RELAXED, __ATOMIC_RELAXED)) {
  }
  return old;
}
}  // namespace
int atomic_max(int* p, int v) { return fetch_max(p, v); }
unsigned atomic_max(unsigned* p, unsigned v) { return fetch_max(p, v); }
int atomic_add(int* p, int v) { return __atomic_fetch_add(p, v, __ATOMIC_RELAXED); }
unsigned atomic_add(unsigned* p, unsigned v) { return __atomic_fetch_add(p, v, __ATOMIC_RELAXED); }
float atomic_add(float* p, float v) {
  unsigned old = __atomic_load_n(reinterpret_cast<unsigned*>(p), __ATOMIC_RELAXED), next;
  do {
    next = __float_as_uint(__uint_as_float(old) + v);
  } while (!__atomic_compare_exchange_n(reinterpret_cast<unsigned*>(p), &old, next, true, __ATOMIC_RELAXED,
                                        __ATOMIC_RELAXED));
  return __uint_as_float(old);
}

}  // namespace sim

// ---- racecheck: shared-memory hazards between warps ------------------------------------------
// With `build.py --racecheck` the kernels are compiled with GCC's ThreadSanitizer instrumentation,
// which calls __tsan_read/write before every load and store; these definitions (no TSan runtime
// is linked) check the accesses that fall in the running block's shared arena. Two accesses to
// one 4-byte word by different warps between the same two barriers (block or cluster), at least
// one a store, are a hazard (RAW, WAR or WAW), as compute-sanitizer's racecheck reports. Accesses
// the simulator makes itself (ldmatrix, cp.async landing, ld/st.shared) are checked the same way.
namespace sim {
namespace {
constexpr unsigned short kManyWarps = 0xffff;

void hazard(const char* kind, unsigned off, unsigned other_warp) {
  char buf[160];
  std::snprintf(buf, sizeof buf, "racecheck: %s hazard on shared offset %u with warp %s", kind, off,
                other_warp == kManyWarps ? "(several)" : std::to_string(other_warp).c_str());
  fault(buf);
}
}  // namespace

void race_access(const void* p, size_t n, bool write) {
  Thread* t = cur;
  if (!t || !cur_cluster) return;
  Cta& b = *t->cta;
  const unsigned char* q = static_cast<const unsigned char*>(p);
  if (q < b.arena || q >= b.arena + kArena) return;
  std::vector<Shadow>& shadow = b.shadow;
  if (shadow.size() != kArena / 4) shadow.assign(kArena / 4, Shadow{});
  const unsigned first = (unsigned)(q - b.arena) / 4, last = (unsigned)(q + n - 1 - b.arena) / 4;
  const unsigned short warp = (unsigned short)t->warp;
  const unsigned short tid = (unsigned short)(&*t - &b.threads[0]);
  for (unsigned w = first; w <= last && w < kArena / 4; ++w) {
    Shadow& s = shadow[w];
    if (s.serial != b.serial) s = Shadow{b.serial};
    const bool w_now = s.written && s.w_epoch == b.epoch && s.w_thread / 32 != warp;
    if (w_now) hazard(write ? "write-after-write" : "read-after-write", w * 4, s.w_thread / 32);
    if (write) {
      if (s.read && s.r_epoch == b.epoch && s.r_warp != warp) hazard("write-after-read", w * 4, s.r_warp);
      s.written = true;
      s.w_epoch = b.epoch;
      s.w_thread = tid;
    } else if (!s.read || s.r_epoch != b.epoch) {
      s.read = true;
      s.r_epoch = b.epoch;
      s.r_warp = warp;
    } else if (s.r_warp != warp) {
      s.r_warp = kManyWarps;
    }
  }
}
}  // namespace sim

extern "C" {
void __tsan_init() { sim::racecheck_on = true; }  // run by every instrumented file
void __tsan_func_entry(void*) {}
void __tsan_func_exit() {}
void __tsan_vptr_update(void**, void*) {}
void __tsan_vptr_read(void**) {}
void __tsan_read_range(void* p, unsigned long n) { sim::race_access(p, n, false); }
void __tsan_write_range(void* p, unsigned long n) { sim::race_access(p, n, true); }
#define SIM_TSAN(N)                                                                         \
  void __tsan_read##N(void* p) { sim::race_access(p, N, false); }                           \
  void __tsan_write##N(void* p) { sim::race_access(p, N, true); }                           \
  void __tsan_unaligned_read##N(void* p) { sim::race_access(p, N, false); }                 \
  void __tsan_unaligned_write##N(void* p) { sim::race_access(p, N, true); }
SIM_TSAN(1)
SIM_TSAN(2)
SIM_TSAN(4)
SIM_TSAN(8)
SIM_TSAN(16)
#undef SIM_TSAN
// Atomics in kernel code (__threadfence, __ldcg of global flags and states) are not shared-memory
// accesses: performed as they are, not checked.
void __tsan_atomic_thread_fence(int) { __atomic_thread_fence(__ATOMIC_SEQ_CST); }
int __tsan_atomic32_load(const volatile int* a, int) { return __atomic_load_n(a, __ATOMIC_SEQ_CST); }
long long __tsan_atomic64_load(const volatile long long* a, int) { return __atomic_load_n(a, __ATOMIC_SEQ_CST); }
}
