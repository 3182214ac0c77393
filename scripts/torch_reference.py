#!/usr/bin/env python3
"""PyTorch as the outside reference for sofa: timings in sofa's JSON-lines schema, and a check of
sofa's outputs against PyTorch's on shared safetensors inputs.

The PyTorch implementations (scripts/torch_ops.py) are written from SPEC.md, not from sofa's Rust:
softmax attention (explicit, and torch's scaled_dot_product_attention), SimA, cosFormer (linear
form; causal as a chunked scan), SOFT (AvgPool1d/2d or given landmarks, Gaussian kernel blocks,
Newton–Raphson pseudo-inverse, two passes over P), AFT simple/local/conv/full (causal or not).
Storage f16/bf16/f32, math in fp32 (float64 for the f32 check). Runs on a CUDA device when torch
sees one, else on the CPU (timings then are host wall-clock, for trying the script out).

Timing mode (default):
  torch_reference.py --out FILE.jsonl [--ops sima,cosformer,...|all] [--shapes 1,16,64k,64 ...]
      [--dtypes f16,bf16] [--causal] [--window 64,256] [--landmarks 49,64,128,256]
      [--iters 30] [--warmup 5] [--flush-l2] [--no-peaks] [--sdpa-max-n 262144]
      [--quadratic-max-n 65536] [--budget-s 10]
  For each shape × dtype × op × variant: warm-up, then CUDA-event timings (median, p10, p90),
  one JSON object per run appended to --out as it finishes, in the schema `sofa bench` writes
  (src/bench/record.rs): ops are named `<op>_torch` (sima_torch, cosformer_torch, soft_torch,
  aft_simple_torch, aft_local_torch, aft_conv_torch, aft_full_torch, softmax_torch for the
  explicit softmax), `softmax_sdpa`, and `cosformer_fla`: causal cosFormer as flash-linear-
  attention's chunk kernel (fla-core `chunk_linear_attn`, normalized, scale 1) fed the 2D-wide
  features [ReLU(x)·sinθ, ReLU(x)·cosθ], built untimed in fla's [B, T, H, K] layout (the kernel
  alone is timed; its error against the PyTorch cosFormer is recorded up to N = 16k; fla-core
  from the environment or scripts/wheels/); variant labels, minimum bytes and FLOPs are sofa's for the
  same op, and the copy/GEMM peaks are measured in the same run, so `sofa plot` draws sofa, its
  cuBLAS baselines, PyTorch and SDPA side by side. A size that does not fit in device memory is
  skipped with a note.

Check mode:
  torch_reference.py --check [--sofa target/release/sofa] [--backend auto|cpu|gpu]
      [--check-shapes 1,2,63,32 1,2,257,64] [--dtypes f16,bf16,f32] [--ops ...] [--keep DIR]
  For each op and variant (causal, window, landmarks, cross-attention S ≠ N, Dv ≠ D, M, ...) on
  small shapes: random inputs saved as safetensors (q, k, v [B,H,N,D]; w, u or landmarks in fp32),
  `sofa run --op OP --input in.safetensors --output out.safetensors --backend B [params]`, then
  the relative Frobenius error of sofa's `o` against PyTorch (fp32 math for f16/bf16 inputs,
  float64 for f32). Tolerances: 2e-3 f16, 1.6e-2 bf16, 1e-5 f32. Exits 1 when a case fails.
  Backend auto = gpu when torch sees a CUDA device, else cpu (softmax always cpu: sofa has no
  GPU softmax kernel).
"""
import argparse
import json
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import torch_ops as T  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
DTYPES = {"f16": torch.float16, "bf16": torch.bfloat16, "f32": torch.float32}
ELEM = {"f16": 2, "bf16": 2, "f32": 4}
TOL = {"f16": 2e-3, "bf16": 1.6e-2, "f32": 1e-5}
TIMED_OPS = ["sima", "cosformer", "soft", "aft_simple", "aft_local", "aft_conv", "aft_full",
             "softmax", "sdpa", "cosformer_fla"]
CAUSAL_OPS = {"cosformer", "aft_simple", "aft_local", "aft_conv", "aft_full", "softmax", "sdpa"}
CAUSAL_ONLY_OPS = {"cosformer_fla"}
WHEELS = Path(__file__).resolve().parent / "wheels"  # gpu-bundle.sh puts fla-core and einops here


def count(s):
    """A count with an optional k/M suffix (64k = 65536, 1M = 1048576)."""
    s = s.strip()
    mult = {"k": 1 << 10, "K": 1 << 10, "m": 1 << 20, "M": 1 << 20}.get(s[-1:], 1)
    return int(s[:-1] if mult > 1 else s) * mult


def parse_shape(s):
    b, h, n, d = (count(x) for x in s.split(","))
    return b, h, n, d


def out_of_memory(e):
    oom = getattr(torch, "OutOfMemoryError", None) or getattr(torch.cuda, "OutOfMemoryError", ())
    return isinstance(e, oom) or "out of memory" in str(e).lower()


# ============================================================================================
# flash-linear-attention (issue 5's outside reference for causal cosFormer)

_FLA = {}


def fla_chunk_linear_attn():
    """fla-core's chunk_linear_attn, or None. Imported from the environment, else from the wheels
    next to this script (pure Python + Triton: unpacked into a temporary directory, because
    Triton's JIT reads kernel sources from files)."""
    if "fn" in _FLA:
        return _FLA["fn"]
    fn = None
    try:
        from fla.ops.linear_attn import chunk_linear_attn as fn
    except ImportError:
        wheels = sorted(WHEELS.glob("*.whl")) if WHEELS.is_dir() else []
        if wheels:
            import tempfile
            import zipfile
            root = tempfile.mkdtemp(prefix="sofa-fla-")
            for w in wheels:
                zipfile.ZipFile(w).extractall(root)
            sys.path.append(root)  # after the environment's own packages (packaging, einops)
            try:
                from fla.ops.linear_attn import chunk_linear_attn as fn
            except ImportError as e:
                print(f"note: fla-core from {WHEELS} does not import: {e}", file=sys.stderr)
    _FLA["fn"] = fn
    return fn


def fla_cosformer_inputs(q, k, v):
    """Causal cosFormer as fla's normalized linear attention: the 2D-wide features
    [ReLU(x)·sinθ, ReLU(x)·cosθ] (θ_i = π(i+1)/2N, M = N) in the storage dtype, fla's [B, T, H, K]
    layout; (q·k' summed over the 2D features) = ReLU(q)·ReLU(k)·cos(θ_i − θ_j)."""
    qs, qc, ks, kc = T._cosformer_features(q, k, None, True, torch.float32)
    to = lambda x: x.to(q.dtype).transpose(1, 2).contiguous()  # noqa: E731
    return to(torch.cat([qs, qc], -1)), to(torch.cat([ks, kc], -1)), v.transpose(1, 2).contiguous()


def fla_selfcheck():
    """The feature mapping of cosformer_fla, checked without a GPU: fla's naive recurrent
    normalized linear attention on fla_cosformer_inputs against the PyTorch cosFormer (float64)."""
    if fla_chunk_linear_attn() is None:
        print(f"fla-core is not importable (pip install fla-core, or its wheel in {WHEELS})", file=sys.stderr)
        return 1
    from fla.ops.linear_attn.naive import naive_recurrent_linear_attn
    gen = torch.Generator().manual_seed(0)
    q, k, v = (torch.rand(1, 2, 200, 16, generator=gen, dtype=torch.float64) * 2 - 1 for _ in range(3))
    q2, k2, vt = fla_cosformer_inputs(q, k, v)
    got = naive_recurrent_linear_attn(q2, k2, vt, scale=1.0, normalize=True)[0].transpose(1, 2)
    want = T.cosformer(q, k, v, causal=True).double()
    err = float((got - want).norm() / want.norm())
    print(f"fla naive form vs PyTorch cosFormer (causal, B=1 H=2 N=200 D=16): rel. Frobenius {err:.2e}")
    return 0 if err < 1e-5 else 1


# ============================================================================================
# Timing


class Timer:
    """CUDA-event timing after warm-up (host wall-clock on the CPU), optional L2 flush."""

    def __init__(self, dev, warmup, iters, budget_s, flush_l2):
        self.dev, self.warmup, self.iters, self.budget_ms = dev, warmup, iters, budget_s * 1e3
        self.flush = None
        if flush_l2 and dev.type == "cuda":
            l2 = getattr(torch.cuda.get_device_properties(dev), "L2_cache_size", 64 << 20)
            self.flush = torch.empty(2 * l2, dtype=torch.uint8, device=dev)

    def _one(self, fn):
        if self.flush is not None:
            self.flush.zero_()
        if self.dev.type == "cuda":
            a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            a.record()
            fn()
            b.record()
            b.synchronize()
            return a.elapsed_time(b)
        t = time.perf_counter()
        fn()
        return (time.perf_counter() - t) * 1e3

    def time(self, fn, iters=None):
        """(median, p10, p90, runs) in ms; the run count shrinks to fit the time budget."""
        first = [self._one(fn)]  # warm-up, cut short when one run eats the budget
        while len(first) < self.warmup and sum(first) < self.budget_ms / 4:
            first.append(self._one(fn))
        iters = iters or self.iters
        iters = max(3, min(iters, int(self.budget_ms / max(min(first), 1e-3))))
        s = sorted(self._one(fn) for _ in range(iters))
        at = lambda q: s[round((len(s) - 1) * q)]  # noqa: E731 — sofa's Timing::from_samples
        return at(0.5), at(0.1), at(0.9), len(s)


def measure_peaks(dev, timer):
    """Device-to-device copy GB/s (bytes read + written) and 8192³ f16 GEMM TFLOP/s."""
    free, _ = torch.cuda.mem_get_info(dev)
    nbytes = max(1 << 20, min(1 << 30, free // 4))
    x = torch.empty(nbytes, dtype=torch.uint8, device=dev)
    y = torch.empty_like(x)
    ms = timer.time(lambda: y.copy_(x), iters=20)[0]
    copy = 2 * nbytes / (ms * 1e-3) / 1e9
    del x, y
    n = 8192
    a = torch.rand(n, n, device=dev, dtype=torch.float16) * 2 - 1
    c = torch.empty_like(a)
    ms = timer.time(lambda: torch.matmul(a, a, out=c), iters=10)[0]
    del a, c
    torch.cuda.empty_cache()
    return copy, 2 * n**3 / (ms * 1e-3) / 1e12


def device_fields(dev):
    """The device description sofa puts in every record (nvidia-smi for driver and clocks)."""
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO,
                                capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        commit = "unknown"
    cuda = torch.version.cuda or "cpu"
    f = {"device": "cpu", "sm": None, "driver": None, "sm_clock_mhz": None, "mem_clock_mhz": None,
         "commit": commit, "kernels": f"torch {torch.__version__} (cuda {cuda})"}
    if dev.type != "cuda":
        return f
    idx = dev.index if dev.index is not None else torch.cuda.current_device()
    maj, mnr = torch.cuda.get_device_capability(idx)
    f.update(device=torch.cuda.get_device_name(idx), sm=f"{maj}.{mnr}")
    try:
        q = "driver_version,clocks.max.sm,clocks.max.mem"
        line = subprocess.run(["nvidia-smi", f"--query-gpu={q}", "--format=csv,noheader,nounits",
                               "-i", str(idx)], capture_output=True, text=True, check=True,
                              timeout=30).stdout.strip().splitlines()[0]
        drv, sm, mem = (x.strip() for x in line.split(","))
        f.update(driver=drv, sm_clock_mhz=int(float(sm)), mem_clock_mhz=int(float(mem)))
    except (OSError, subprocess.SubprocessError, ValueError, IndexError):
        pass
    return f


class TimedCase:
    """One op × variant on one shape: its callable, label, minimum bytes and FLOPs (sofa's
    Case::min_bytes / Case::flops and BaselineCase for softmax, so the records compare)."""

    def __init__(self, op, b, h, n, d, dtype, causal=False, window=64, m=64):
        self.op, self.b, self.h, self.n, self.d, self.dtype = op, b, h, n, d, dtype
        self.causal, self.window, self.m = causal, window, m

    @property
    def name(self):
        return {"sdpa": "softmax_sdpa", "cosformer_fla": "cosformer_fla"}.get(self.op, f"{self.op}_torch")

    def label(self):
        parts = ["causal"] if self.causal else []
        if self.op in ("aft_local", "aft_conv"):
            parts.append(f"s={self.window}")
        if self.op == "soft":
            parts.append(f"m={self.m}")
        return ",".join(parts)

    def bias_len(self):
        return {"aft_local": self.n * (2 * self.window - 1),
                "aft_conv": self.h * (2 * self.window - 1),
                "aft_full": self.n * self.n}.get(self.op, 0)

    def min_bytes(self):
        tensors = 4  # q, k, v, o; SOFT (tied) per SPEC §1.5: Q twice, V, X
        return float(tensors * self.b * self.h * self.n * self.d * ELEM[self.dtype]
                     + 4 * self.bias_len())

    def flops(self):
        bh, rows, d = self.b * self.h, self.b * self.h * self.n, self.d
        return float({
            "sima": 4 * rows * d * d,
            "cosformer": 8 * rows * d * d,
            "cosformer_fla": 8 * rows * d * d,
            "soft": bh * 4 * self.m**3 * 20 + 6 * rows * self.m * d,
            "aft_simple": 4 * rows * d,
            "aft_local": 8 * rows * self.window * d,
            "aft_conv": 8 * rows * self.window * d,
            "aft_full": 4 * rows * self.n * d,
            "softmax": 4 * bh * self.n**2 * d / (2 if self.causal else 1),
            "sdpa": 4 * bh * self.n**2 * d / (2 if self.causal else 1),
        }[self.op])

    def runner(self, q, k, v, gen):
        """The callable that computes the op (storage dtype out); its fp32 bias is made here,
        uniform in [-1, 1) like the inputs."""
        dev, c, s, op = q.device, self.causal, self.window, self.op

        def bias(*shape):
            return torch.rand(*shape, generator=gen, device=dev, dtype=torch.float32) * 2 - 1

        if op == "sdpa":
            return lambda: T.sdpa(q, k, v, causal=c)
        if op == "cosformer_fla":  # fla's chunk kernel alone: features and layout made here
            fla = fla_chunk_linear_attn()
            q2, k2, vt = fla_cosformer_inputs(q, k, v)
            return lambda: fla(q2, k2, vt, scale=1.0, normalize=True)[0]
        if op == "sima":
            f = lambda: T.sima(q, k, v)  # noqa: E731
        elif op == "cosformer":
            f = lambda: T.cosformer(q, k, v, causal=c)  # noqa: E731
        elif op == "soft":
            f = lambda: T.soft(q, v, m=self.m)  # noqa: E731
        elif op == "aft_simple":
            f = lambda: T.aft_simple(q, k, v, causal=c)  # noqa: E731
        elif op == "aft_local":
            w = bias(self.n, 2 * s - 1)
            f = lambda: T.aft_local(q, k, v, w, causal=c)  # noqa: E731
        elif op == "aft_conv":
            u = bias(self.h, 2 * s - 1)
            f = lambda: T.aft_conv(q, k, v, u, causal=c)  # noqa: E731
        elif op == "aft_full":
            w = bias(self.n, self.n)
            f = lambda: T.aft_full(q, k, v, w, causal=c)  # noqa: E731
        elif op == "softmax":
            f = lambda: T.softmax_attention(q, k, v, causal=c)  # noqa: E731
        else:
            raise ValueError(op)
        return lambda: f().to(q.dtype)


def timed_cases(a, b, h, n, d, dtype):
    # all: the causal-only ops (fla) with --causal; by name they always run
    ops = ([o for o in TIMED_OPS if a.causal or o not in CAUSAL_ONLY_OPS] if a.ops == "all"
           else [o.strip() for o in a.ops.split(",")])
    for op in ops:
        if op not in TIMED_OPS:
            sys.exit(f"unknown op {op!r}: expected {', '.join(TIMED_OPS)} or all")
        causals = [False, True] if a.causal and op in CAUSAL_OPS else [False]
        for causal in ([True] if op in CAUSAL_ONLY_OPS else causals):
            if op in ("aft_local", "aft_conv"):
                for s in a.window.split(","):
                    yield TimedCase(op, b, h, n, d, dtype, causal, window=count(s))
            elif op == "soft":
                for m in a.landmarks.split(","):
                    yield TimedCase(op, b, h, n, d, dtype, causal, m=count(m))
            else:
                yield TimedCase(op, b, h, n, d, dtype, causal)


def skip_reason(a, c, dev):
    if c.op == "sdpa" and c.n > a.sdpa_max_n:
        return f"N > --sdpa-max-n {a.sdpa_max_n}"
    if c.op in ("softmax", "aft_full") and c.n > a.quadratic_max_n:
        return f"quadratic in N, N > --quadratic-max-n {a.quadratic_max_n}"
    if c.op == "soft" and c.m > c.n:
        return f"m = {c.m} > N"
    if c.op == "cosformer_fla":
        if dev.type != "cuda":
            return "fla's kernels are Triton (CUDA only)"
        if fla_chunk_linear_attn() is None:
            return f"fla-core is not importable (pip install fla-core, or its wheel in {WHEELS})"
    return None


def record(c, timing, peaks, devf, flush_l2):
    med, p10, p90, runs = timing
    mb, fl = c.min_bytes(), c.flops()
    pct = None
    if peaks:
        pct = 100 * max(mb / (peaks[0] * 1e9), fl / (peaks[1] * 1e12)) * 1e3 / med
    r = {"op": c.name, "variant": c.label(), "b": c.b, "h": c.h, "n": c.n, "s": c.n, "d": c.d,
         "dv": c.d, "dtype": c.dtype, "layout": "bhnd", "median_ms": med, "p10_ms": p10,
         "p90_ms": p90, "runs": runs, "tokens_per_s": c.b * c.n / (med * 1e-3), "min_bytes": mb,
         "gb_per_s": mb / (med * 1e-3) / 1e9, "flops": fl, "tflop_per_s": fl / (med * 1e-3) / 1e12,
         "peak_copy_gb_per_s": peaks[0] if peaks else None,
         "peak_gemm_tflop_per_s": peaks[1] if peaks else None, "pct_roofline": pct,
         "rel_err": None, "err_bound": None, "flush_l2": flush_l2, "graph": False,
         "speedup_vs_baseline": None, "speedup_vs_softmax": None}
    r.update(devf)
    return r


def table_row(r):
    pct = "-" if r["pct_roofline"] is None else f"{r['pct_roofline']:.0f}"
    return (f"{r['op']:<18} {r['variant'] or '-':<12} {r['b']:>3} {r['h']:>3} {r['n']:>8} "
            f"{r['d']:>4} {r['dtype']:>5} {r['median_ms']:>10.4f} {r['tokens_per_s']:>11.3e} "
            f"{r['gb_per_s']:>8.0f} {r['tflop_per_s']:>8.2f} {pct:>6}")


def bench(a):
    dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if dev.type != "cuda":
        print("note: no CUDA device; timing on the CPU with host wall-clock", file=sys.stderr)
    timer = Timer(dev, a.warmup, a.iters, a.budget_s, a.flush_l2)
    devf = device_fields(dev)
    peaks = None
    if dev.type == "cuda" and not a.no_peaks:
        peaks = measure_peaks(dev, timer)
        print(f"peaks: copy {peaks[0]:.0f} GB/s, f16 GEMM {peaks[1]:.0f} TFLOP/s on "
              f"{devf['device']}", file=sys.stderr)
    print(f"{'op':<18} {'variant':<12} {'B':>3} {'H':>3} {'N':>8} {'D':>4} {'dtype':>5} "
          f"{'ms':>10} {'tokens/s':>11} {'GB/s':>8} {'TFLOP/s':>8} {'%roof':>6}")
    out = open(a.out, "a") if a.out else None
    gen = torch.Generator(device=dev)
    for shape in a.shapes:
        b, h, n, d = parse_shape(shape)
        for dt in a.dtypes.split(","):
            dt = dt.strip()
            gen.manual_seed(a.seed)
            try:
                q, k, v = (torch.rand(b, h, n, d, generator=gen, device=dev,
                                      dtype=torch.float32).mul_(2).sub_(1).to(DTYPES[dt])
                           for _ in range(3))
            except (RuntimeError, MemoryError) as e:
                if not out_of_memory(e):
                    raise
                print(f"note: skip {b},{h},{n},{d} {dt}: inputs do not fit in memory",
                      file=sys.stderr)
                continue
            for c in timed_cases(a, b, h, n, d, dt):
                why = skip_reason(a, c, dev)
                if why:
                    print(f"note: skip {c.name} {c.label()} {b},{h},{n},{d} {dt}: {why}",
                          file=sys.stderr)
                    continue
                try:
                    fn = c.runner(q, k, v, gen)
                    r = record(c, timer.time(fn), peaks, devf, a.flush_l2)
                    if c.op == "cosformer_fla" and n <= 16384:  # the features are right
                        got = fn().transpose(1, 2).double()
                        want = T.cosformer(q, k, v, causal=True).double()
                        r["rel_err"] = float((got - want).norm() / want.norm())
                        r["err_bound"] = TOL[dt]
                except (RuntimeError, MemoryError) as e:
                    if not out_of_memory(e) and c.op != "cosformer_fla":
                        raise
                    fn = None
                    why = "out of memory" if out_of_memory(e) else f"{type(e).__name__}: {e}"
                    print(f"note: skip {c.name} {c.label()} {b},{h},{n},{d} {dt}: {why}",
                          file=sys.stderr)
                    if dev.type == "cuda":
                        torch.cuda.empty_cache()
                    continue
                except Exception as e:  # noqa: BLE001 — Triton's compile errors, in fla only
                    if c.op != "cosformer_fla":
                        raise
                    fn = None
                    print(f"note: skip {c.name} {b},{h},{n},{d} {dt}: {type(e).__name__}: {e}",
                          file=sys.stderr)
                    continue
                print(table_row(r), flush=True)
                if out:
                    out.write(json.dumps(r) + "\n")
                    out.flush()
                del fn
            del q, k, v
            if dev.type == "cuda":
                torch.cuda.empty_cache()
    if out:
        out.close()
    return 0


# ============================================================================================
# Check against `sofa run`


class CheckCase:
    """One op variant: sofa's CLI flags, PyTorch's call, and how its inputs are made."""

    def __init__(self, op, label, flags=(), ref=None, s=None, dv=None, shape=None,
                 extra=None, nonneg=False, extra_scale=1.0, qk_scale=1.0):
        self.op, self.label, self.flags = op, label, list(flags)
        self.ref = ref  # (q, k, v, extras, acc) -> output
        self.s, self.dv = s, dv  # functions of (n, d) or None
        self.shape = shape  # fixed (b, h, n, d) or None: the --check-shapes
        self.extra = extra  # (b, h, n, d) -> {name: shape} of fp32 extra tensors
        self.nonneg = nonneg
        # Scale of the uniform extras: SOFT's given landmarks live where the scaled queries do
        # (|q|/D^(1/4) ≲ 0.35 at D = 64); landmarks far from every query make P ~ e^-12 and
        # outputs below f16's subnormal range, where f16 storage alone is off by percents.
        self.extra_scale = extra_scale
        # Scale of q and k: SOFT on small inputs has near-equal landmarks, A close to all-ones
        # and a Newton loop that T = 20 steps leave unconverged (sofa must follow the same steps).
        self.qk_scale = qk_scale


def check_cases():
    C = CheckCase
    cases = [
        C("sima", ""),
        C("sima", "dv=d/2", dv=lambda n, d: d // 2),
        C("softmax", ""),
        C("softmax", "causal", ["--causal"]),
        C("softmax", "S=N+37", s=lambda n, d: n + 37),
        C("softmax", "scale=0.3", ["--scale", "0.3"]),
        C("cosformer", ""),
        C("cosformer", "causal", ["--causal"]),
        C("cosformer", "S=N+37,dv=d/2", s=lambda n, d: n + 37, dv=lambda n, d: d // 2),
        C("cosformer", "S=N-20", s=lambda n, d: n - 20),
        C("cosformer", "M=3N", ["--M", "{3n}"]),
        C("cosformer", "causal,M=3N", ["--causal", "--M", "{3n}"]),
        C("cosformer", "no_relu", ["--no-relu"], nonneg=True),
        C("cosformer", "causal,no_relu", ["--causal", "--no-relu"], nonneg=True),
        C("soft", "m=16", ["--m", "16"]),
        C("soft", "m=49", ["--m", "49"]),
        C("soft", "m=min(N,256)", ["--m", "{n<=256}"]),
        C("soft", "m=1", ["--m", "1"]),
        C("soft", "m=16,untied", ["--m", "16", "--untied"]),
        C("soft", "m=32,q*0.05 (A ill-cond.)", ["--m", "32"], qk_scale=0.05),
        C("soft", "m=16,T=5,l=0.05,c=0.5",
          ["--m", "16", "--newton-iters", "5", "--ridge", "0.05", "--alpha-scale", "0.5"]),
        C("soft", "given m=24", ["--landmarks", "given"],
          extra=lambda b, h, n, d: {"landmarks": (b, h, 24, d)}, extra_scale=0.25),
        C("soft", "avgpool2d 8x8 r=2", ["--landmarks", "avgpool2d", "--height", "8", "--pool",
                                        "2"], shape=(1, 2, 64, 32)),
        C("soft", "avgpool2d 12x20 r=3", ["--landmarks", "avgpool2d", "--height", "12",
                                          "--pool", "3"], shape=(1, 2, 240, 64)),
        C("soft", "avgpool2d 7x9 r=2", ["--landmarks", "avgpool2d", "--height", "7", "--pool",
                                        "2"], shape=(2, 1, 63, 16)),
        C("aft_simple", ""),
        C("aft_simple", "causal", ["--causal"]),
        C("aft_full", "", extra=lambda b, h, n, d: {"w": (n, n)}),
        C("aft_full", "causal", ["--causal"], extra=lambda b, h, n, d: {"w": (n, n)}),
    ]
    for s in (1, 8, 70):
        for causal in (False, True):
            flag, lab = (["--causal"], "causal,") if causal else ([], "")
            cases.append(C("aft_local", f"{lab}s={s}", flag,
                           extra=lambda b, h, n, d, s=s: {"w": (n, 2 * s - 1)}))
            cases.append(C("aft_conv", f"{lab}s={s}", flag,
                           extra=lambda b, h, n, d, s=s: {"u": (h, 2 * s - 1)}))
    return cases


def parse_flags(flags):
    """sofa run's flags as {"--name": value}; a switch (no value) maps to True."""
    out, i = {}, 0
    while i < len(flags):
        if i + 1 < len(flags) and not flags[i + 1].startswith("--"):
            out[flags[i]] = flags[i + 1]
            i += 2
        else:
            out[flags[i]] = True
            i += 1
    return out


def torch_ref(c, t, flags, acc):
    """PyTorch's output for case c on tensors t (q, k, v and extras), math in acc."""
    q, k, v = t["q"], t["k"], t["v"]
    fl = parse_flags(flags)
    causal = "--causal" in flags
    num = lambda name, default: type(default)(fl.get(name, default))  # noqa: E731
    if c.op == "sima":
        return T.sima(q, k, v, acc=acc)
    if c.op == "softmax":
        scale = float(fl["--scale"]) if "--scale" in fl else None
        return T.softmax_attention(q, k, v, causal=causal, scale=scale, acc=acc)
    if c.op == "cosformer":
        big_m = int(fl["--M"]) if "--M" in fl else None
        return T.cosformer(q, k, v, causal=causal, big_m=big_m, relu="--no-relu" not in flags,
                           acc=acc)
    if c.op == "soft":
        kw = dict(newton_iters=num("--newton-iters", 20), ridge=num("--ridge", 0.01),
                  alpha_scale=num("--alpha-scale", 0.9), acc=acc)
        key = k if "--untied" in flags else None
        kind = fl.get("--landmarks", "avgpool1d")
        if kind == "given":
            return T.soft(q, v, k=key, landmarks="given", given=t["landmarks"], **kw)
        if kind == "avgpool2d":
            height = int(fl["--height"])
            return T.soft(q, v, k=key, landmarks="avgpool2d", height=height,
                          width=q.shape[-2] // height, r=int(fl["--pool"]), **kw)
        return T.soft(q, v, k=key, m=int(fl.get("--m", 64)), **kw)
    if c.op == "aft_simple":
        return T.aft_simple(q, k, v, causal, acc=acc)
    if c.op == "aft_full":
        return T.aft_full(q, k, v, t["w"], causal, acc=acc)
    if c.op == "aft_local":
        return T.aft_local(q, k, v, t["w"], causal, acc=acc)
    if c.op == "aft_conv":
        return T.aft_conv(q, k, v, t["u"], causal, acc=acc)
    raise ValueError(c.op)


def dense_ref(c, t, flags):
    """The quadratic forms in float64 (cosFormer's masked w, AFT's T×T sum with w made dense):
    a second PyTorch opinion used only to tell a linear-form bug from a sofa disagreement."""
    q, k, v = t["q"], t["k"], t["v"]
    causal = "--causal" in flags
    n = q.shape[-2]
    if c.op == "cosformer":
        fl = parse_flags(flags)
        big_m = int(fl["--M"]) if "--M" in fl else None
        return T.cosformer_quadratic(q, k, v, causal, big_m, "--no-relu" not in flags,
                                     acc=torch.float64)
    if c.op == "aft_local":
        return T.aft_dense(q, k, v, T.band_to_full(t["w"].double(), n), causal)
    if c.op == "aft_conv":
        return T.aft_dense(q, k, v, T.conv_to_full(t["u"].double(), n), causal)
    if c.op == "aft_simple":
        return T.aft_dense(q, k, v, torch.zeros(n, n, dtype=torch.float64, device=q.device),
                           causal)
    return None


def run_check(a):
    from safetensors.torch import load_file, save_file

    sofa = Path(a.sofa)
    if not sofa.is_absolute():
        sofa = (Path.cwd() / sofa) if (Path.cwd() / sofa).exists() else REPO / sofa
    if not sofa.exists():
        sys.exit(f"sofa binary not found at {sofa} (cargo build --release, or pass --sofa)")
    dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    backend = a.backend if a.backend != "auto" else ("gpu" if dev.type == "cuda" else "cpu")
    ops = None if a.ops == "all" else {o.strip() for o in a.ops.split(",")}
    shapes = [parse_shape(s) for s in a.check_shapes]
    work = Path(a.keep) if a.keep else Path(tempfile.mkdtemp(prefix="sofa_check_"))
    work.mkdir(parents=True, exist_ok=True)
    gen = torch.Generator(device="cpu")
    gen.manual_seed(a.seed)
    t0 = time.time()
    rows, failed = [], 0
    hdr = (f"{'op':<11} {'variant':<26} {'B,H,N,S,D,Dv':<20} {'dtype':<5} {'backend':<7} "
           f"{'rel.err':>9} {'tol':>7} {'dense':>9} {'sofa':>4}  result")
    print(hdr)
    for c in check_cases():
        if ops is not None and c.op not in ops:
            continue
        for shape in ([c.shape] if c.shape else shapes):
            b, h, n, d = shape
            s = c.s(n, d) if c.s else n
            dv = c.dv(n, d) if c.dv else d
            flags = [f.replace("{3n}", str(3 * max(n, s))).replace("{n}", str(n)).replace("{n<=256}", str(min(n, 256)))
                     for f in c.flags]
            for dt in a.dtypes.split(","):
                dt = dt.strip()
                def rnd(*sh):
                    return torch.rand(*sh, generator=gen, dtype=torch.float64) * 2 - 1

                t = {"q": rnd(b, h, n, d), "k": rnd(b, h, s, d), "v": rnd(b, h, s, dv)}
                if c.nonneg:
                    t["q"], t["k"] = t["q"].abs(), t["k"].abs()
                t["q"], t["k"] = t["q"] * c.qk_scale, t["k"] * c.qk_scale
                t = {name: x.to(DTYPES[dt]) for name, x in t.items()}
                if c.extra:
                    for name, sh in c.extra(b, h, n, d).items():
                        t[name] = (rnd(*sh) * c.extra_scale).float()
                tag = re.sub(r"[^A-Za-z0-9]+", "_", f"{c.op}_{c.label}_{n}_{d}_{dt}").strip("_")
                fin, fout = work / f"{tag}.in.safetensors", work / f"{tag}.out.safetensors"
                save_file({k_: x.contiguous() for k_, x in t.items()}, str(fin))
                be = "cpu" if c.op == "softmax" else backend
                cmd = [str(sofa), "run", "--op", c.op, "--input", str(fin), "--output", str(fout),
                       "--backend", be, *flags]
                if be == "gpu" and a.layout:
                    cmd += ["--layout", a.layout]
                p = subprocess.run(cmd, capture_output=True, text=True)
                acc = torch.float64 if dt == "f32" else torch.float32
                td = {k_: x.to(dev) for k_, x in t.items()}
                refs = [(c.op, torch_ref(c, td, flags, acc).double().cpu())]
                if c.op == "softmax":
                    # SDPA itself (storage dtype in and out) against the same sofa output.
                    fl = parse_flags(flags)
                    scale = float(fl["--scale"]) if "--scale" in fl else None
                    o = T.sdpa(td["q"], td["k"], td["v"], causal="--causal" in flags,
                               scale=scale)
                    refs.append(("sdpa", o.double().cpu()))
                dense = dense_ref(c, {k_: x.double() for k_, x in td.items()}, flags)
                got = None
                if fout.exists():
                    got = load_file(str(fout))["o"].double()
                    fout.unlink()
                desc = f"{b},{h},{n},{s},{d},{dv}"
                tol = TOL[dt]
                for name, ref in refs:
                    dense_err = err = None
                    if dense is not None:
                        dense_err = ((ref - dense.cpu()).norm() / dense.cpu().norm()).item()
                    if got is not None and got.shape == ref.shape:
                        err = ((got - ref).norm() / ref.norm()).item()
                    # PyTorch's linear form against its own dense float64 form: same tolerance.
                    ok = (p.returncode == 0 and err is not None and err <= tol
                          and (dense_err is None or dense_err <= tol))
                    failed += not ok
                    es = "-" if err is None else f"{err:.2e}"
                    ds = "-" if dense_err is None else f"{dense_err:.2e}"
                    print(f"{name:<11} {c.label or '-':<26} {desc:<20} {dt:<5} {be:<7} {es:>9} "
                          f"{tol:>7.1e} {ds:>9} {p.returncode:>4}  {'PASS' if ok else 'FAIL'}",
                          flush=True)
                    rows.append({"op": name, "variant": c.label, "shape": desc, "dtype": dt,
                                 "backend": be, "rel_err": err, "tol": tol,
                                 "dense_err": dense_err, "sofa_rc": p.returncode, "pass": ok})
                if p.returncode != 0 or got is None:
                    print("    " + " ".join(cmd))
                    for line in (p.stdout + p.stderr).strip().splitlines()[-6:]:
                        print("    | " + line)
                if not a.keep:
                    fin.unlink()
    if not a.keep:
        try:
            work.rmdir()
        except OSError:
            pass
    secs = time.time() - t0
    print(f"check: {len(rows) - failed} passed, {failed} failed ({len(rows)} cases, "
          f"{secs:.1f} s, torch {torch.__version__} on {dev.type}, sofa --backend {backend})")
    if a.check_json:
        with open(a.check_json, "w") as f:
            for r in rows:
                f.write(json.dumps(r) + "\n")
    return 1 if failed else 0


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog="\n\n".join(__doc__.split("\n\n")[1:]))
    ap.add_argument("--check", action="store_true",
                    help="compare sofa run's outputs with PyTorch's instead of timing")
    ap.add_argument("--ops", default="all",
                    help=f"comma-separated: {','.join(TIMED_OPS)} (check: sofa op names), or all")
    ap.add_argument("--shapes", nargs="+", default=[f"1,16,{n},64" for n in
                                                   ("1k", "4k", "16k", "64k", "256k", "1M")],
                    help="timing shapes B,H,N,D (k/M suffixes; SPEC §6)")
    ap.add_argument("--dtypes", default=None,
                    help="timing: f16,bf16 (default); check: f16,bf16,f32")
    ap.add_argument("--causal", action="store_true", help="also the causal variant of ops with one")
    ap.add_argument("--window", default="64", help="AFT-local/conv windows s, comma-separated")
    ap.add_argument("--landmarks", default="64", help="SOFT landmark counts m, comma-separated")
    ap.add_argument("--out", help="append one JSON line per timed run to this file")
    ap.add_argument("--iters", type=int, default=30)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--budget-s", type=float, default=10.0,
                    help="fewer timed runs (at least 3) when a case would take longer than this")
    ap.add_argument("--flush-l2", action="store_true", help="overwrite 2×L2 before each timed run")
    ap.add_argument("--no-peaks", action="store_true", help="skip the copy/GEMM peak measurements")
    ap.add_argument("--sdpa-max-n", type=int, default=262144)
    ap.add_argument("--quadratic-max-n", type=int, default=65536,
                    help="largest N for the explicit softmax and AFT-full")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--sofa", default="target/release/sofa", help="check: the sofa binary")
    ap.add_argument("--backend", choices=["auto", "cpu", "gpu"], default="auto",
                    help="check: sofa run's backend (auto: gpu when torch sees a CUDA device)")
    ap.add_argument("--layout", choices=["bhnd", "bnhd"], default=None,
                    help="check, gpu backend: sofa run's --layout")
    ap.add_argument("--check-shapes", nargs="+", default=["1,2,63,32", "1,2,257,64"],
                    help="check shapes B,H,N,D (cases with a fixed shape keep theirs)")
    ap.add_argument("--keep", help="check: keep the safetensors inputs in this directory")
    ap.add_argument("--check-json", help="check: write one JSON line per case to this file")
    ap.add_argument("--fla-selfcheck", action="store_true",
                    help="check cosformer_fla's feature mapping with fla's naive form (CPU) and exit")
    a = ap.parse_args()
    if a.fla_selfcheck:
        return fla_selfcheck()
    if a.dtypes is None:
        a.dtypes = "f16,bf16,f32" if a.check else "f16,bf16"
    if a.check:
        return run_check(a)
    if not a.out:
        print("note: no --out; results go to stdout only", file=sys.stderr)
    return bench(a)


if __name__ == "__main__":
    sys.exit(main())
