// Kernel execution on the CPU: one cooperative fiber per simulated thread, one scheduler per
// cluster (or block), kernels found by name in a registry filled by the generated entry stubs.
#pragma once
#include <cstddef>
#include <cstdint>
#include <initializer_list>
#include <string>

namespace sim {

using Invoke = void (*)(void** args);

constexpr int kMaxParams = 8;

// One kernel entry: its name, how to call it from a cuLaunchKernel argument array, the byte size
// of each parameter (a captured launch copies them), and the cluster shape it was compiled with
// (0 = none).
struct Entry {
  const char* name;
  Invoke invoke;
  unsigned cluster[3];
  int nparams;
  size_t param_bytes[kMaxParams];
};

struct Registrar {
  Registrar(const char* name, Invoke invoke, unsigned cx, unsigned cy, unsigned cz,
            std::initializer_list<size_t> param_bytes);
};

const Entry* find_entry(const char* name);

struct Launch {
  unsigned grid[3], block[3], cluster[3];
  size_t dyn_smem;
};

// Runs the whole grid to completion. Returns false (with a message) on a detected fault:
// deadlock, shared-memory access out of bounds, misaligned ldmatrix, inconsistent collectives.
bool run(const Entry& e, const Launch& l, void** args, std::string& error);

// Largest dynamic shared memory a block may ask for (the H100's opt-in limit).
constexpr size_t kMaxSmem = 227 * 1024;

}  // namespace sim
