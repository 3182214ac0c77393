// What a real driver learns about each kernel from the module image, besides its code: registers
// per thread, static shared memory and the __launch_bounds__ thread limit. sofa-sim runs kernels
// compiled from source, so it reads these from the sm_90 ELF inside the fatbin it is given (the
// code an H100 would run) and applies the hardware's launch limits and occupancy rules with them.
#pragma once
#include <cstddef>
#include <string>
#include <unordered_map>

namespace sim {

struct KernelImage {
  int regs = 0;            // registers per thread
  size_t static_smem = 0;  // static shared memory, bytes (without the 1 KiB the system reserves)
  int max_threads = 0;     // __launch_bounds__ threads per block; 0: none
};

// Reads a fatbin (its sm_90 ELF, else the newest ELF below sm_90) or a bare ELF cubin into `out`,
// keyed by kernel name. Returns the number of kernels described; 0 for anything else (PTX text
// from NVRTC, which a driver would compile itself: no limits are known then). Every read is
// bounds-checked against the sizes the image declares; a malformed image describes nothing.
int read_image(const void* image, std::unordered_map<std::string, KernelImage>& out);

}  // namespace sim
