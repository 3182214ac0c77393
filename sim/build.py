#!/usr/bin/env python3
"""Builds the CPU simulator's libcuda.so.1 from kernels/*.cu, and its libcublas.so and
libcudart.so.13 (sim/README.md).

Each kernel file is preprocessed as C++ with sim/cuda_sim.h force-included, then rewritten:
  * every inline-PTX statement becomes the sim:: call of the table below (an unknown one is an
    error, so a new asm statement cannot slip past the simulator);
  * every __shared__ declaration becomes a slot of the running block's arena, every extern
    (dynamic) one the arena's dynamic region;
  * every extern "C" __global__ entry gets a registrar (name, argument unpacking, cluster shape).
Then the files, sim/exec.cpp, sim/driver.cpp and sim/image.cpp are compiled into one shared library.

usage: sim/build.py [--out DIR] [--asan] [--jobs N]
"""
import argparse
import concurrent.futures
import os
import re
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SIM = os.path.join(ROOT, "sim")
KERNELS = os.path.join(ROOT, "kernels")

# (pattern on the asm template, C++ with {i} for operand i: outputs first, then inputs)
PTX = [
    (r"cvta\.to\.shared\.u64", "{0} = sim::smem_addr((const void*)({1}));"),
    (r"^cp\.async\.cg\.shared\.global \[%0\], \[%1\], 16, %2;", "sim::cp_async16({0}, (const void*)({1}), {2});"),
    (r"^cp\.async\.cg\.shared\.global\.L2::cache_hint \[%0\], \[%1\], 16, %2, %3;",
     "sim::cp_async16({0}, (const void*)({1}), {2}); (void)({3});"),  # L2 policies: no effect on values
    (r"^createpolicy\.fractional\.L2::evict_first\.b64 %0, 1\.0;", "{0} = 0;"),
    (r"^ld\.global\.L2::cache_hint\.v4\.u32 \{%0, %1, %2, %3\}, \[%4\], %5;",
     "{{ unsigned v_[4]; std::memcpy(v_, (const void*)({4}), 16); {0} = v_[0]; {1} = v_[1]; {2} = v_[2]; {3} = v_[3]; (void)({5}); }}"),
    (r"^st\.global\.L2::cache_hint\.v4\.u32 \[%0\], \{%1, %2, %3, %4\}, %5;",
     "{{ const unsigned v_[4] = {{{1}, {2}, {3}, {4}}}; std::memcpy((void*)({0}), v_, 16); (void)({5}); }}"),
    (r"^cp\.async\.ca\.shared\.global \[%0\], \[%1\], 4, %2;", "sim::cp_async({0}, (const void*)({1}), 4, {2});"),
    (r"^cp\.async\.ca\.shared\.global \[%0\], \[%1\], 8, %2;", "sim::cp_async({0}, (const void*)({1}), 8, {2});"),
    (r"^cp\.async\.commit_group", "sim::cp_async_commit();"),
    (r"^cp\.async\.wait_group %0", "sim::cp_async_wait({0});"),
    (r"^st\.shared\.u32 \[%0\], %1", "{{ unsigned v_ = {1}; std::memcpy(sim::smem_ptr({0}, 4, true), &v_, 4); }}"),
    (r"^ld\.shared\.u32 %0, \[%1\]", "{{ std::memcpy(&{0}, sim::smem_ptr({1}, 4), 4); }}"),
    (r"^ld\.shared\.v2\.f32 \{%0, %1\}, \[%2\]",
     "{{ const float* p_ = (const float*)sim::smem_ptr({2}, 8); {0} = p_[0]; {1} = p_[1]; }}"),
    (r"^ld\.shared\.v4\.b32 \{%0,%1,%2,%3\}, \[%4\]",
     "{{ const unsigned* p_ = (const unsigned*)sim::smem_ptr({4}, 16); {0} = p_[0]; {1} = p_[1]; {2} = p_[2]; {3} = p_[3]; }}"),
    (r"^ldmatrix\.sync\.aligned\.m8n8\.x4\.shared\.b16",
     "{{ unsigned r_[4]; sim::ldmatrix(4, 0, {4}, r_); {0} = r_[0]; {1} = r_[1]; {2} = r_[2]; {3} = r_[3]; }}"),
    (r"^ldmatrix\.sync\.aligned\.m8n8\.x4\.trans\.shared\.b16",
     "{{ unsigned r_[4]; sim::ldmatrix(4, 1, {4}, r_); {0} = r_[0]; {1} = r_[1]; {2} = r_[2]; {3} = r_[3]; }}"),
    (r"^ldmatrix\.sync\.aligned\.m8n8\.x2\.trans\.shared\.b16",
     "{{ unsigned r_[2]; sim::ldmatrix(2, 1, {2}, r_); {0} = r_[0]; {1} = r_[1]; }}"),
    (r"^mma\.sync\.aligned\.m16n8k16\.row\.col\.f32\.f16\.f16\.f32",
     "sim::mma16816(0, {0}, {1}, {2}, {3}, {4}, {5}, {6}, {7}, {8}, {9});"),
    (r"^mma\.sync\.aligned\.m16n8k16\.row\.col\.f32\.bf16\.bf16\.f32",
     "sim::mma16816(1, {0}, {1}, {2}, {3}, {4}, {5}, {6}, {7}, {8}, {9});"),
    (r"^max\.f16x2 %0, %1, %2", "{0} = sim::hmax2({1}, {2}, 0);"),
    (r"^max\.bf16x2 %0, %1, %2", "{0} = sim::hmax2({1}, {2}, 1);"),
    (r"^barrier\.cluster\.arrive", "sim::cluster_arrive();"),
    (r"^barrier\.cluster\.wait", "sim::cluster_wait();"),
    (r"^mov\.u32 %0, %%cluster_ctarank", "{0} = sim::cluster_rank();"),
    (r"^mapa\.shared::cluster\.u32 %0, %1, %2", "{0} = sim::mapa({1}, {2});"),
    (r"^st\.shared::cluster\.u32 \[%0\], %1", "sim::st_cluster_u32({0}, {1});"),
    (r"^st\.shared::cluster\.v2\.u32 \[%0\], \{%1, %2\}", "sim::st_cluster_u32({0}, {1}); sim::st_cluster_u32({0} + 4, {2});"),
    (r"^mbarrier\.init\.shared::cta\.b64 \[%0\], %1;", "sim::mbar_init({0}, {1});"),
    (r"^fence\.mbarrier_init\.release\.cluster;", ";"),  # the simulator's inits are visible at once
    (r"mbarrier\.arrive\.expect_tx\.release\.cta\.shared::cta\.b64 state, \[%0\], %1;",
     "sim::mbar_arrive_tx({0}, {1});"),
    (r"mbarrier\.try_wait\.parity\.acquire\.cluster\.shared::cta\.b64 done, \[%0\], %1;\s*@!done bra WAIT;",
     "sim::mbar_wait({0}, {1});"),
    (r"^st\.async\.shared::cluster\.mbarrier::complete_tx::bytes\.v2\.b32 \[%0\], \{%1, %2\}, \[%3\];",
     "{{ const unsigned v_[2] = {{{1}, {2}}}; sim::st_async({0}, v_, 8, {3}); }}"),
    (r"^st\.async\.shared::cluster\.mbarrier::complete_tx::bytes\.b32 \[%0\], %1, \[%2\];",
     "{{ const unsigned v_ = {1}; sim::st_async({0}, &v_, 4, {2}); }}"),
    (r"^cvt\.f32\.f16 %0, %1", "{0} = sim::h2f({1});"),
    (r"^cvt\.rn\.f16\.f32 %0, %1", "{0} = sim::f2h({1});"),
    (r"^cvt\.rn\.bf16\.f32 %0, %1", "{0} = sim::f2bf({1});"),
    (r"^cvt\.rn\.f16x2\.f32 %0, %1, %2", "{0} = (unsigned)sim::f2h({2}) | ((unsigned)sim::f2h({1}) << 16);"),
    (r"^cvt\.rn\.bf16x2\.f32 %0, %1, %2", "{0} = (unsigned)sim::f2bf({2}) | ((unsigned)sim::f2bf({1}) << 16);"),
    (r"^ex2\.approx\.ftz\.f32 %0, %1", "{0} = sim::ex2_approx_ftz({1});"),
    (r"^min\.NaN\.f32 %0, %1, %2", "{0} = sim::min_nan({1}, {2});"),
    (r"^max\.NaN\.f32 %0, %1, %2", "{0} = sim::max_nan({1}, {2});"),
    (r"^griddepcontrol\.launch_dependents;", ";"),  # the simulator runs launches in order
    (r"^griddepcontrol\.wait;", ";"),
    (r"^$", ";"),  # opaque(): no instruction
]


def match_paren(s, i):
    """Index of the bracket closing the one at s[i], skipping string and char literals."""
    pairs = {"(": ")", "[": "]", "{": "}"}
    stack = [pairs[s[i]]]
    j = i + 1
    while stack:
        c = s[j]
        if c in "\"'":
            j = skip_literal(s, j)
            continue
        if c in pairs:
            stack.append(pairs[c])
        elif c in ")]}":
            if c != stack.pop():
                raise ValueError(f"unbalanced brackets near {s[max(0, j - 80):j + 20]!r}")
        j += 1
    return j - 1


def skip_literal(s, j):
    q = s[j]
    j += 1
    while s[j] != q:
        j += 2 if s[j] == "\\" else 1
    return j + 1


def split_top(s, sep):
    """Splits s at `sep` characters outside brackets and literals."""
    parts, depth, start, j = [], 0, 0, 0
    while j < len(s):
        c = s[j]
        if c in "\"'":
            j = skip_literal(s, j)
            continue
        if c in "([{":
            depth += 1
        elif c in ")]}":
            depth -= 1
        elif c == sep and depth == 0:
            parts.append(s[start:j])
            start = j + 1
        j += 1
    parts.append(s[start:])
    return parts


def rewrite_asm(src, path):
    out, pos = [], 0
    for m in re.finditer(r"\basm\s*(?:volatile\s*)?\(", src):
        if m.start() < pos:
            continue
        open_i = m.end() - 1
        close_i = match_paren(src, open_i)
        sections = split_top(src[open_i + 1:close_i], ":")
        template = "".join(re.findall(r'"((?:[^"\\]|\\.)*)"', sections[0])).replace("\\n", "").strip()
        operands = []
        for sec in sections[1:3]:
            for op in split_top(sec, ","):
                op = op.strip()
                if op:
                    mm = re.match(r'"[^"]*"\s*\((.*)\)$', op, re.S)
                    if not mm:
                        raise SystemExit(f"{path}: cannot parse asm operand {op!r}")
                    operands.append("(" + mm.group(1) + ")")
        for pat, code in PTX:
            if re.search(pat, template):
                repl = code.format(*operands)
                break
        else:
            raise SystemExit(f"{path}: no simulator rule for inline PTX {template!r} (add one to sim/build.py)")
        # The asm statement is followed by its ';' (now after a block, harmless).
        out.append(src[pos:m.start()])
        out.append(repl[:-1] if repl.endswith(";") else repl)
        pos = close_i + 1
    out.append(src[pos:])
    return "".join(out)


def rewrite_shared(src):
    dynamic = {}
    out, pos, site = [], 0, 0
    for m in re.finditer(r"(\bextern\s+)?\bSIM_SHARED\b", src):
        if m.start() < pos:
            continue
        end = m.end()
        depth, j = 0, end
        while not (src[j] == ";" and depth == 0):
            depth += src[j] in "([{"
            depth -= src[j] in ")]}"
            j += 1
        decl = src[end:j].strip()
        align = "1"
        am = re.match(r"alignas\s*\((.*?)\)\s*", decl)
        if am:
            align, decl = am.group(1), decl[am.end():]
        tm = re.match(r"((?:const\s+|volatile\s+|unsigned\s+)*[A-Za-z_][\w:]*(?:\s*<[^;]*?>)?)\s+", decl)
        if not tm:
            raise SystemExit(f"cannot parse shared declaration {decl!r}")
        typ, rest = tm.group(1), decl[tm.end():]
        out.append(src[pos:m.start()])
        if m.group(1):
            name = re.match(r"(\w+)\s*\[\s*\]$", rest.strip())
            if not name:
                raise SystemExit(f"cannot parse dynamic shared declaration {decl!r}")
            dynamic[name.group(1)] = typ
        else:
            stmts = []
            for d in split_top(rest, ","):
                dm = re.match(r"\s*(\w+)\s*(.*)$", d, re.S)
                name, dims = dm.group(1), dm.group(2).strip()
                site += 1
                alias = f"sim_shared_t{site}_"
                stmts.append(
                    f"using {alias} = {typ} {dims}; {alias}& {name} = *static_cast<{alias}*>(sim::shared_var("
                    f"__PRETTY_FUNCTION__, {site}, sizeof({alias}), "
                    f"alignof({alias}) > ({align}) ? alignof({alias}) : ({align})))")
            out.append("; ".join(stmts))
        pos = j  # keep the ';'
    out.append(src[pos:])
    src = "".join(out)
    for name, typ in dynamic.items():
        src = re.sub(rf"\b{name}\b", f"(reinterpret_cast<{typ}*>(sim::dyn_shared()))", src)
    return src


def param_type(p):
    p = p.strip()
    toks = re.findall(r"[A-Za-z_]\w*|\*|&|::|<|>|,", p)
    if len(toks) >= 2 and re.match(r"[A-Za-z_]\w*$", toks[-1]) and toks[-2] not in ("const", "unsigned", "signed"):
        return p[: p.rfind(toks[-1])].strip()
    return p


def register_entries(src):
    regs = []
    for m in re.finditer(r'extern\s+"C"\s+SIM_GLOBAL\s+void\s+(?:SIM_CLUSTER\s*(\((?:[^()]|\([^()]*\))*\))\s*)?(\w+)\s*\(', src):
        cluster, name = m.group(1), m.group(2)
        close = match_paren(src, m.end() - 1)
        params = [p for p in split_top(src[m.end():close], ",") if p.strip() and p.strip() != "void"]
        args = ", ".join(f"*reinterpret_cast<{param_type(p)}*>(a[{i}])" for i, p in enumerate(params))
        dims = ", ".join(f"(unsigned)({d.strip()})" for d in split_top(cluster[1:-1], ",")) if cluster else "0, 0, 0"
        sizes = ", ".join(f"sizeof({param_type(p)})" for p in params)
        regs.append(f'static sim::Registrar sim_reg_{name}("{name}", [](void** a) {{ {name}({args}); }}, {dims}, '
                    f'{{{sizes}}});')
    src = re.sub(r"SIM_GLOBAL\s+", "", src)
    src = re.sub(r"SIM_CLUSTER\s*\((?:[^()]|\([^()]*\))*\)\s*", "", src)
    return src, regs


def run(cmd):
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0:
        sys.stderr.write(r.stdout + r.stderr)
        raise SystemExit(f"failed: {' '.join(cmd)}")
    return r.stdout


def build_kernel(cu, out, cxx, flags, kdir):
    base = os.path.splitext(os.path.basename(cu))[0]
    pre = run([cxx, "-E", "-P", "-std=c++17", "-x", "c++", "-D__CUDA_ARCH__=900", "-include",
               os.path.join(SIM, "exec.h"), "-include", os.path.join(SIM, "cuda_sim.h"), "-I", kdir, cu])
    src = rewrite_asm(pre, cu)
    src = rewrite_shared(src)
    src, regs = register_entries(src)
    src = src + "\n" + "\n".join(regs) + "\n"
    cpp = os.path.join(out, f"k_{base}.cpp")
    with open(cpp, "w") as f:
        f.write(src)
    obj = cpp[:-4] + ".o"
    run([cxx, *flags, "-I", SIM, "-c", cpp, "-o", obj])
    return obj, len(regs)


def build_runtime(src, out, cxx, flags):
    """The simulator itself (never instrumented for racecheck: its own accesses are not the kernel's)."""
    obj = os.path.join(out, src[:-4] + ".o")
    run([cxx, *flags, "-c", os.path.join(SIM, src), "-o", obj])
    return obj, 0


def link_library(out, soname, alias, inputs, cxx, flags):
    """Links `inputs` into out/soname (finding its siblings through $ORIGIN), plus a symlink `alias`."""
    lib = os.path.join(out, soname)
    run([cxx, *flags, "-shared", f"-Wl,-soname,{soname}", "-Wl,-rpath,$ORIGIN", "-o", lib, *inputs])
    if alias:
        link = os.path.join(out, alias)
        if os.path.lexists(link):
            os.remove(link)
        os.symlink(soname, link)
    return lib


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=os.path.join(ROOT, "target", "sim"))
    ap.add_argument("--asan", action="store_true", help="AddressSanitizer build (memcheck)")
    ap.add_argument("--racecheck", action="store_true", help="shared-memory hazard checking (racecheck)")
    ap.add_argument("--kernels", default=KERNELS, help="kernel sources (a mutated copy, for testing the checks)")
    ap.add_argument("--jobs", type=int, default=os.cpu_count() or 2)
    ap.add_argument("--cxx", default=os.environ.get("CXX", "g++"))
    a = ap.parse_args()
    out = os.path.abspath(a.out)
    os.makedirs(out, exist_ok=True)
    flags = ["-std=c++17", "-O2", "-g0", "-fPIC", "-fno-strict-aliasing", "-w", "-pthread"]
    if a.asan:
        flags += ["-fsanitize=address", "-fno-omit-frame-pointer"]
    kflags = flags + (["-fsanitize=thread"] if a.racecheck else [])
    kdir = os.path.abspath(a.kernels)
    kernels = sorted(os.path.join(kdir, f) for f in os.listdir(kdir) if f.endswith(".cu"))
    with concurrent.futures.ThreadPoolExecutor(a.jobs) as ex:
        jobs = [ex.submit(build_kernel, cu, out, a.cxx, kflags, kdir) for cu in kernels]
        jobs += [ex.submit(build_runtime, src, out, a.cxx, flags) for src in ("exec.cpp", "driver.cpp", "image.cpp")]
        results = [j.result() for j in jobs]
    with concurrent.futures.ThreadPoolExecutor(a.jobs) as ex:
        extra = {src: ex.submit(build_runtime, src, out, a.cxx, flags) for src in ("cublas.cpp", "cudart.cpp")}
    lib = link_library(out, "libcuda.so.1", "libcuda.so", [o for o, _ in results], a.cxx, flags)
    # The cuBLAS subset (cublas.cpp), found by cudarc as libcublas.so.
    link_library(out, "libcublas.so.13", "libcublas.so", [extra["cublas.cpp"].result()[0], lib], a.cxx, flags)
    # The CUDA runtime subset of the C example (cudart.cpp), with the toolkit library's symbol
    # version so a binary linked against the real libcudart.so.13 binds to it.
    vers = os.path.join(out, "cudart.map")
    with open(vers, "w") as f:
        f.write("libcudart.so.13 { global: cuda*; local: *; };\n")
    link_library(out, "libcudart.so.13", None, [extra["cudart.cpp"].result()[0], lib], a.cxx,
                 flags + [f"-Wl,--version-script={vers}"])
    print(f"sofa-sim: {sum(n for _, n in results)} kernels in {lib}" + (" (AddressSanitizer)" if a.asan else "") + (" (racecheck)" if a.racecheck else ""))


if __name__ == "__main__":
    main()
