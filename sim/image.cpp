// Reads kernel resources from a module image (image.h). The layouts, as nvcc 13 writes them:
//  * fatbin: a 16-byte header (magic 0xBA55ED50, u16 version, u16 header size, u64 payload size),
//    then entries, each a header (u16 kind: 2 = ELF; u32 header size at 4; u64 payload size at 8;
//    u32 arch at 28) and its payload. PTX entries are compressed; ELF entries are plain.
//  * ELF (64-bit, little-endian): the SM arch in bits 8..15 of e_flags. Registers come from the
//    `.nv.info` section's REGCOUNT attributes (symbol index, count), the launch bound from each
//    `.nv.info.<kernel>` section's MAX_THREADS attribute, static shared memory from the size of
//    `.nv.shared.<kernel>`, which from sm_90 on also holds the 1 KiB the system reserves per block.
//  * `.nv.info` attributes: u8 format, u8 id, then 2 bytes of value (formats 1–3) or a u16 length
//    and that many bytes (format 4).
#include "image.h"

#include <cstdint>
#include <cstring>
#include <vector>

namespace sim {
namespace {

constexpr uint32_t kFatbinMagic = 0xBA55ED50u;
constexpr int kDeviceArch = 90;       // the arch sofa-sim reports (driver.cpp)
constexpr uint8_t kAttrMaxThreads = 0x05;
constexpr uint8_t kAttrRegCount = 0x2f;
constexpr size_t kReservedSmem = 1024;

// A bounds-checked little-endian view of `size` bytes.
struct View {
  const unsigned char* p;
  size_t size;
  bool has(size_t off, size_t n) const { return off <= size && n <= size - off; }
  template <typename T>
  bool get(size_t off, T& v) const {
    if (!has(off, sizeof(T))) return false;
    std::memcpy(&v, p + off, sizeof(T));
    return true;
  }
  View sub(size_t off, size_t n) const { return has(off, n) ? View{p + off, n} : View{p, 0}; }
};

struct Section {
  std::string name;
  uint32_t type = 0, link = 0;
  View data{nullptr, 0};
};

// Calls f(id, value) for each attribute of an `.nv.info` section; false if malformed.
template <typename F>
bool for_each_attr(View s, F f) {
  size_t off = 0;
  while (off < s.size) {
    uint8_t fmt = 0, id = 0;
    if (!s.get(off, fmt) || !s.get(off + 1, id)) return false;
    if (fmt >= 1 && fmt <= 3) {
      off += 4;
    } else if (fmt == 4) {
      uint16_t len = 0;
      if (!s.get(off + 2, len) || !s.has(off + 4, len)) return false;
      f(id, s.sub(off + 4, len));
      off += 4 + size_t(len);
    } else {
      return false;
    }
  }
  return true;
}

// The sections of an ELF image of `elf.size` bytes, with their names; false if malformed.
bool sections(View elf, std::vector<Section>& out, int& arch) {
  if (!elf.has(0, 64) || std::memcmp(elf.p, "\x7f" "ELF", 4) != 0 || elf.p[4] != 2 || elf.p[5] != 1)
    return false;
  uint64_t shoff = 0;
  uint32_t flags = 0;
  uint16_t shentsize = 0, shnum = 0, shstrndx = 0;
  if (!elf.get(0x28, shoff) || !elf.get(0x30, flags) || !elf.get(0x3a, shentsize) || !elf.get(0x3c, shnum) ||
      !elf.get(0x3e, shstrndx) || shentsize < 64 || shstrndx >= shnum)
    return false;
  arch = int((flags >> 8) & 0xff);
  struct Raw {
    uint32_t name, type, link;
    uint64_t off, size;
  };
  std::vector<Raw> raw(shnum);
  for (uint16_t i = 0; i < shnum; ++i) {
    const size_t h = size_t(shoff) + size_t(i) * shentsize;
    if (!elf.has(h, 64) || !elf.get(h, raw[i].name) || !elf.get(h + 4, raw[i].type) || !elf.get(h + 24, raw[i].off) ||
        !elf.get(h + 32, raw[i].size) || !elf.get(h + 40, raw[i].link))
      return false;
  }
  const View names = elf.sub(raw[shstrndx].off, raw[shstrndx].size);
  for (const Raw& r : raw) {
    Section s;
    for (size_t k = r.name; k < names.size && names.p[k]; ++k) s.name += char(names.p[k]);
    s.type = r.type;
    s.link = r.link;
    // SHT_NOBITS (8) sections, such as `.nv.shared.*`, occupy no bytes of the file: keep the size.
    s.data = r.type == 8 ? View{nullptr, size_t(r.size)} : elf.sub(r.off, r.size);
    out.push_back(std::move(s));
  }
  return true;
}

int read_elf(View elf, std::unordered_map<std::string, KernelImage>& out) {
  std::vector<Section> secs;
  int arch = 0;
  if (!sections(elf, secs, arch)) return 0;
  // Symbol names by index, from the symbol table and its string table.
  std::vector<std::string> symbols;
  for (const Section& s : secs) {
    if (s.type != 2 || s.link >= secs.size()) continue;  // SHT_SYMTAB
    const View str = secs[s.link].data;
    for (size_t off = 0; off + 24 <= s.data.size; off += 24) {
      uint32_t name = 0;
      s.data.get(off, name);
      std::string n;
      for (size_t k = name; k < str.size && str.p[k]; ++k) n += char(str.p[k]);
      symbols.push_back(std::move(n));
    }
  }
  std::unordered_map<std::string, KernelImage> found;
  const std::string info = ".nv.info.", shared = ".nv.shared.", text = ".text.";
  for (const Section& s : secs) {
    if (s.name.compare(0, text.size(), text) == 0) found[s.name.substr(text.size())];
  }
  for (const Section& s : secs) {
    if (s.name == ".nv.info") {
      const bool ok = for_each_attr(s.data, [&](uint8_t id, View v) {
        uint32_t sym = 0, regs = 0;
        if (id == kAttrRegCount && v.get(0, sym) && v.get(4, regs) && sym < symbols.size()) {
          auto it = found.find(symbols[sym]);
          if (it != found.end()) it->second.regs = int(regs);
        }
      });
      if (!ok) return 0;
    } else if (s.name.compare(0, info.size(), info) == 0) {
      auto it = found.find(s.name.substr(info.size()));
      if (it == found.end()) continue;
      const bool ok = for_each_attr(s.data, [&](uint8_t id, View v) {
        uint32_t x = 0, y = 0, z = 0;
        if (id == kAttrMaxThreads && v.get(0, x) && v.get(4, y) && v.get(8, z))
          it->second.max_threads = int(uint64_t(x) * y * z);
      });
      if (!ok) return 0;
    } else if (s.name.compare(0, shared.size(), shared) == 0) {
      auto it = found.find(s.name.substr(shared.size()));
      if (it == found.end()) continue;
      size_t bytes = s.data.size;
      if (arch >= 90) bytes = bytes > kReservedSmem ? bytes - kReservedSmem : 0;
      it->second.static_smem = bytes;
    }
  }
  int n = 0;
  for (auto& [name, k] : found) {
    if (k.regs == 0) continue;  // not a kernel entry (or no REGCOUNT): nothing known
    out[name] = k;
    ++n;
  }
  return n;
}

}  // namespace

int read_image(const void* image, std::unordered_map<std::string, KernelImage>& out) {
  if (!image) return 0;
  const unsigned char* p = static_cast<const unsigned char*>(image);
  uint32_t magic = 0;
  std::memcpy(&magic, p, 4);
  if (magic != kFatbinMagic) {
    if (std::memcmp(p, "\x7f" "ELF", 4) != 0) return 0;
    // A bare cubin declares no total size: bound it by its section header table's end.
    uint64_t shoff = 0;
    uint16_t shentsize = 0, shnum = 0;
    std::memcpy(&shoff, p + 0x28, 8);
    std::memcpy(&shentsize, p + 0x3a, 2);
    std::memcpy(&shnum, p + 0x3c, 2);
    return read_elf(View{p, size_t(shoff) + size_t(shentsize) * shnum}, out);
  }
  uint16_t header = 0;
  uint64_t payload = 0;
  std::memcpy(&header, p + 6, 2);
  std::memcpy(&payload, p + 8, 8);
  const View fat{p, size_t(header) + size_t(payload)};
  // The ELF for the device's arch, else the newest one below it (what a driver would load).
  View best{nullptr, 0};
  int best_arch = -1;
  for (size_t off = header; off < fat.size;) {
    uint16_t kind = 0;
    uint32_t entry_header = 0, arch = 0;
    uint64_t size = 0;
    if (!fat.get(off, kind) || !fat.get(off + 4, entry_header) || !fat.get(off + 8, size) ||
        !fat.get(off + 28, arch) || !fat.has(off + entry_header, size) || entry_header == 0)
      return 0;
    const View body = fat.sub(off + entry_header, size);
    if (kind == 2 && int(arch) <= kDeviceArch && int(arch) > best_arch && body.has(0, 4) &&
        std::memcmp(body.p, "\x7f" "ELF", 4) == 0) {
      best = body;
      best_arch = int(arch);
    }
    off += entry_header + size;
  }
  return best_arch < 0 ? 0 : read_elf(best, out);
}

}  // namespace sim
