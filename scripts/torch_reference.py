#!/usr/bin/env python3
"""Outside references timed on the same GPU as sofa (needs PyTorch with CUDA).

Measures, with CUDA events after warm-up (median of many runs):
  * the two roofline ceilings: a 1 GiB device-to-device copy (bytes read + written) and an
    8192^3 f16 matmul;
  * plain PyTorch SimA written from SPEC.md §4 (column l1 norms, k^T v, q G), and
  * softmax attention via torch.nn.functional.scaled_dot_product_attention (FlashAttention class),
on the shapes given, appending JSON lines in the schema `sofa run --json` writes.

usage: torch_reference.py --out FILE.jsonl [--shapes 1,16,65536,64 ...] [--dtypes f16,bf16]
"""
import argparse
import json
import math

import torch


def timed(fn, iters=30, warmup=5):
    for _ in range(warmup):
        fn()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    ts = []
    for _ in range(iters):
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        ts.append(start.elapsed_time(end))
    ts.sort()
    return ts[len(ts) // 2], ts[len(ts) // 10], ts[(len(ts) * 9) // 10]


def sima_torch(q, k, v):
    # SPEC §4: q̂ = q / max(Σ_n |q|, 1e-12) per (b,h,c), same for k; O = q̂ (k̂ᵀ v), fp32 math.
    qf, kf, vf = q.float(), k.float(), v.float()
    qh = qf / qf.abs().sum(dim=2, keepdim=True).clamp_min(1e-12)
    kh = kf / kf.abs().sum(dim=2, keepdim=True).clamp_min(1e-12)
    return (qh @ (kh.transpose(-1, -2) @ vf)).to(q.dtype)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--shapes", nargs="*", default=["1,16,4096,64", "1,16,16384,64", "1,16,65536,64", "1,16,262144,64"])
    ap.add_argument("--dtypes", default="f16,bf16")
    ap.add_argument("--sdpa-max-n", type=int, default=262144)
    a = ap.parse_args()
    dev = torch.cuda.get_device_name()
    dtypes = {"f16": torch.float16, "bf16": torch.bfloat16}
    rows = []

    x = torch.empty(1 << 30, dtype=torch.uint8, device="cuda")
    y = torch.empty_like(x)
    ms, _, _ = timed(lambda: y.copy_(x))
    rows.append({"op": "peak_copy", "device": dev, "median_ms": ms, "gb_per_s": 2 * x.numel() / ms / 1e6})
    del x, y
    m = torch.randn(8192, 8192, device="cuda", dtype=torch.float16)
    ms, _, _ = timed(lambda: m @ m, iters=10)
    rows.append({"op": "peak_gemm_f16", "device": dev, "median_ms": ms, "tflop_per_s": 2 * 8192**3 / ms / 1e9})
    del m

    for shape in a.shapes:
        b, h, n, d = (int(s) for s in shape.split(","))
        for name in a.dtypes.split(","):
            dt = dtypes[name]
            q, k, v = (torch.rand(b, h, n, d, device="cuda", dtype=dt) * 2 - 1 for _ in range(3))
            bytes_ = 4 * b * h * n * d * q.element_size()
            base = {"b": b, "h": h, "n": n, "d": d, "dv": d, "dtype": name, "device": dev, "min_bytes": bytes_}
            try:
                med, p10, p90 = timed(lambda: sima_torch(q, k, v))
                rows.append({**base, "op": "sima_torch", "median_ms": med, "p10_ms": p10, "p90_ms": p90,
                             "tokens_per_s": b * n / (med * 1e-3), "gb_per_s": bytes_ / med / 1e6})
            except torch.OutOfMemoryError:
                pass
            if n <= a.sdpa_max_n:
                fl = 4 * b * h * n * n * d
                med, p10, p90 = timed(lambda: torch.nn.functional.scaled_dot_product_attention(q, k, v), iters=10)
                rows.append({**base, "op": "softmax_sdpa", "median_ms": med, "p10_ms": p10, "p90_ms": p90,
                             "tokens_per_s": b * n / (med * 1e-3), "flops": fl, "tflop_per_s": fl / med / 1e9})
            del q, k, v
            torch.cuda.empty_cache()

    with open(a.out, "a") as f:
        for r in rows:
            f.write(json.dumps(r) + "\n")
    for r in rows:
        print(" ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in r.items()))


if __name__ == "__main__":
    main()
