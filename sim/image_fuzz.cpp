// Mutation fuzzing of the module-image reader (image.cpp), outside the simulator:
//   g++ -std=c++17 -O1 -g -fsanitize=address,undefined -Isim sim/image.cpp sim/image_fuzz.cpp \
//       -o /tmp/image_fuzz && /tmp/image_fuzz target/release/build/sofa-*/out/newton.fatbin 3000
// Each round copies the fatbin into a heap buffer of its exact size and changes 1–8 bytes,
// biased to the fatbin header and every ELF's header and section header table, then reads it.
// AddressSanitizer or UBSan abort on any read past the buffer or undefined arithmetic. The
// fatbin's declared total size (its header size and payload size, bytes 6..15) is left intact:
// a driver, given only a pointer, must trust it too.
#include "image.h"

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <iterator>
#include <random>
#include <utility>
#include <vector>

int main(int argc, char** argv) {
  if (argc != 3) {
    std::fprintf(stderr, "usage: image_fuzz FATBIN ROUNDS\n");
    return 2;
  }
  std::ifstream f(argv[1], std::ios::binary);
  const std::vector<unsigned char> image((std::istreambuf_iterator<char>(f)), {});
  if (image.size() < 256) {
    std::fprintf(stderr, "image_fuzz: %s is not a fatbin\n", argv[1]);
    return 2;
  }
  std::vector<std::pair<size_t, size_t>> regions{{0, 256}};  // (offset, length)
  for (size_t i = 0; i + 64 < image.size(); ++i) {
    if (std::memcmp(&image[i], "\x7f" "ELF", 4) != 0) continue;
    uint64_t shoff = 0;
    uint16_t shnum = 0;
    std::memcpy(&shoff, &image[i + 0x28], 8);
    std::memcpy(&shnum, &image[i + 0x3c], 2);
    regions.push_back({i, 64});
    if (shoff < image.size() && i + shoff + size_t(shnum) * 64 <= image.size())
      regions.push_back({i + shoff, size_t(shnum) * 64});
  }
  std::mt19937_64 rng(42);
  long described = 0;
  const long rounds = std::atol(argv[2]);
  for (long round = 0; round < rounds; ++round) {
    unsigned char* copy = static_cast<unsigned char*>(std::malloc(image.size()));
    std::memcpy(copy, image.data(), image.size());
    for (int k = 1 + int(rng() % 8); k > 0; --k) {
      const auto [at, len] = regions[rng() % regions.size()];
      const size_t pos = rng() % 3 == 0 ? rng() % image.size() : at + rng() % len;
      if (pos >= 6 && pos < 16) continue;
      copy[pos] = (unsigned char)rng();
    }
    std::unordered_map<std::string, sim::KernelImage> out;
    described += sim::read_image(copy, out);
    std::free(copy);
  }
  std::printf("image_fuzz: %ld rounds, %ld kernels described in all, no fault\n", rounds, described);
}
