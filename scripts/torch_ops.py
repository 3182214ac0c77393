"""Plain PyTorch implementations of sofa's operators, written from shared SPEC.md (not from sofa's
Rust): the outside reference `scripts/torch_reference.py` times and checks sofa against.

Every function takes storage tensors q, k, v `[B,H,N,D]` (any float dtype, any device) and does
its math in `acc` (fp32 by default, as SPEC §0 asks of every accumulation, exp, division and the
SOFT Newton loop; float64 for a reference), returning the output in `acc` (callers cast it back
to the storage dtype). Nothing here is fused by hand: it is what a competent engineer writes with
torch ops, vectorized over (B, H), O(N) memory where SPEC's linear forms allow it (long N is
processed in row segments, never as an N×D×Dv or N×m tensor at once).
"""
import math

import torch
import torch.nn.functional as F

# fp32 means fp32: no TF32 in matmuls or cuDNN convolutions (AFT-conv uses conv1d).
torch.backends.cuda.matmul.allow_tf32 = False
torch.backends.cudnn.allow_tf32 = False

# Elements of the largest temporary a segmented loop makes at once (per segment).
SEGMENT_ELEMS = 1 << 26


def _rows_per_segment(bh, per_row, n):
    """Rows per segment so that bh·rows·per_row ≤ SEGMENT_ELEMS (at least 1, at most n)."""
    return max(1, min(n, SEGMENT_ELEMS // max(1, bh * per_row)))


# --------------------------------------------------------------------------------------------
# Softmax attention (SPEC §5): the quadratic reference point.


def softmax_attention(q, k, v, causal=False, scale=None, acc=torch.float32):
    """softmax(Q Kᵀ · scale) V, scale 1/√D by default; causal keeps j ≤ i (needs N = S)."""
    qf, kf, vf = q.to(acc), k.to(acc), v.to(acc)
    n, s, d = q.shape[-2], k.shape[-2], q.shape[-1]
    scale = 1.0 / math.sqrt(d) if scale is None else scale
    scores = (qf @ kf.transpose(-1, -2)) * scale
    if causal:
        if n != s:
            raise ValueError("causal softmax needs N == S")
        mask = torch.ones(n, s, dtype=torch.bool, device=q.device).triu(1)
        scores = scores.masked_fill(mask, float("-inf"))
    return torch.softmax(scores, dim=-1) @ vf


def sdpa(q, k, v, causal=False, scale=None):
    """torch's scaled_dot_product_attention (FlashAttention class on a GPU), storage dtype."""
    return F.scaled_dot_product_attention(q, k, v, is_causal=causal, scale=scale)


# --------------------------------------------------------------------------------------------
# SimA (SPEC §4).


def sima(q, k, v, acc=torch.float32):
    """q̂ = q / max(Σ_n |q|, 1e-12) per (b,h,c), same for k; O = q̂ k̂ᵀ v, as (q̂k̂ᵀ)v when N < D
    else q̂(k̂ᵀv)."""
    qf, kf, vf = q.to(acc), k.to(acc), v.to(acc)
    qh = qf / qf.abs().sum(dim=-2, keepdim=True).clamp_min(1e-12)
    kh = kf / kf.abs().sum(dim=-2, keepdim=True).clamp_min(1e-12)
    if q.shape[-2] < q.shape[-1]:
        return (qh @ kh.transpose(-1, -2)) @ vf
    return qh @ (kh.transpose(-1, -2) @ vf)


# --------------------------------------------------------------------------------------------
# cosFormer (SPEC §2).


def _angles(n, big_m, device, acc):
    """θ_i = (π/2)·i/M for 1-based i = 1..n, computed in float64, returned in acc, [n, 1]."""
    i = torch.arange(1, n + 1, dtype=torch.float64, device=device)
    return ((math.pi / 2) * i / big_m).to(acc).unsqueeze(-1)


def _cosformer_features(q, k, big_m, relu, acc):
    n, s = q.shape[-2], k.shape[-2]
    big_m = max(n, s) if big_m is None else big_m
    if big_m < max(n, s):
        raise ValueError(f"cosFormer needs M >= max(N, S) = {max(n, s)}, got {big_m}")
    qf, kf = q.to(acc), k.to(acc)
    if relu:
        qf, kf = qf.relu(), kf.relu()
    tq, tk = _angles(n, big_m, q.device, acc), _angles(s, big_m, q.device, acc)
    return qf * tq.sin(), qf * tq.cos(), kf * tk.sin(), kf * tk.cos()


def cosformer(q, k, v, causal=False, big_m=None, relu=True, eps=1e-6, acc=torch.float32,
              chunk=64):
    """Linear forms. Non-causal: the states KVs, KVc (D×Dv) and zs, zc (D), then a map over i.
    Causal (N = S): a chunked scan — masked products inside each chunk of `chunk` rows plus the
    running state of the chunks before (per segment of rows, so memory stays O(N·D))."""
    vf = v.to(acc)
    qs, qc, ks, kc = _cosformer_features(q, k, big_m, relu, acc)
    if not causal:
        kvs, kvc = ks.transpose(-1, -2) @ vf, kc.transpose(-1, -2) @ vf
        zs, zc = ks.sum(-2), kc.sum(-2)
        num = qs @ kvs + qc @ kvc
        den = (qs * zs.unsqueeze(-2)).sum(-1) + (qc * zc.unsqueeze(-2)).sum(-1)
        return num / den.clamp_min(eps).unsqueeze(-1)
    if q.shape[-2] != k.shape[-2]:
        raise ValueError("causal cosFormer needs N == S")
    return _cosformer_causal_chunked(qs, qc, ks, kc, vf, eps, chunk)


def _cosformer_causal_chunked(qs, qc, ks, kc, v, eps, chunk):
    b, h, n, d = qs.shape
    dv = v.shape[-1]
    out = torch.empty(b, h, n, dv, dtype=v.dtype, device=v.device)
    st_s = v.new_zeros(b, h, d, dv)
    st_c = v.new_zeros(b, h, d, dv)
    z_s = v.new_zeros(b, h, d)
    z_c = v.new_zeros(b, h, d)
    # Per segment: scores chunk·C per row, chunk states 2·D·Dv per chunk.
    seg = _rows_per_segment(b * h, chunk + 2 * d * dv // chunk + 4 * (d + dv), n)
    seg = max(chunk, seg // chunk * chunk)
    tri = torch.ones(chunk, chunk, dtype=torch.bool, device=v.device).tril()
    for start in range(0, n, seg):
        end = min(n, start + seg)
        rows = end - start
        nc = -(-rows // chunk)
        pad = nc * chunk - rows

        def blocks(x):
            x = x[:, :, start:end]
            if pad:
                x = F.pad(x, (0, 0, 0, pad))  # zero rows: no contribution, outputs dropped
            return x.reshape(b, h, nc, chunk, x.shape[-1])

        qs_, qc_, ks_, kc_, v_ = (blocks(x) for x in (qs, qc, ks, kc, v))
        # Inside each chunk: w_ij = (q_i sinθ_i)·(k_j sinθ_j) + (q_i cosθ_i)·(k_j cosθ_j), j ≤ i.
        w = (qs_ @ ks_.transpose(-1, -2) + qc_ @ kc_.transpose(-1, -2)) * tri
        num = w @ v_
        den = w.sum(-1)
        # The chunks before (exclusive prefix over chunks) plus everything before the segment.
        kv_s, kv_c = ks_.transpose(-1, -2) @ v_, kc_.transpose(-1, -2) @ v_
        zs_, zc_ = ks_.sum(-2), kc_.sum(-2)
        pre_s = kv_s.cumsum(2) - kv_s + st_s.unsqueeze(2)
        pre_c = kv_c.cumsum(2) - kv_c + st_c.unsqueeze(2)
        pz_s = zs_.cumsum(2) - zs_ + z_s.unsqueeze(2)
        pz_c = zc_.cumsum(2) - zc_ + z_c.unsqueeze(2)
        num = num + qs_ @ pre_s + qc_ @ pre_c
        den = den + (qs_ * pz_s.unsqueeze(-2)).sum(-1) + (qc_ * pz_c.unsqueeze(-2)).sum(-1)
        o = num / den.clamp_min(eps).unsqueeze(-1)
        out[:, :, start:end] = o.reshape(b, h, nc * chunk, dv)[:, :, :rows]
        st_s = st_s + kv_s.sum(2)
        st_c = st_c + kv_c.sum(2)
        z_s = z_s + zs_.sum(2)
        z_c = z_c + zc_.sum(2)
    return out


def cosformer_quadratic(q, k, v, causal=False, big_m=None, relu=True, eps=1e-6,
                        acc=torch.float32):
    """SPEC §2's reference: w_ij = (q_i·k_j)·cos(θ_i − θ_j) as an N×S matrix, masked j ≤ i when
    causal, rows normalized by max(Σ_j w_ij, ε)."""
    n, s = q.shape[-2], k.shape[-2]
    big_m = max(n, s) if big_m is None else big_m
    qf, kf, vf = q.to(acc), k.to(acc), v.to(acc)
    if relu:
        qf, kf = qf.relu(), kf.relu()
    ti, tj = _angles(n, big_m, q.device, acc), _angles(s, big_m, q.device, acc).transpose(0, 1)
    w = (qf @ kf.transpose(-1, -2)) * torch.cos(ti - tj)
    if causal:
        w = w * torch.ones(n, s, dtype=torch.bool, device=q.device).tril()
    return (w @ vf) / w.sum(-1, keepdim=True).clamp_min(eps)


# --------------------------------------------------------------------------------------------
# SOFT (SPEC §1).


def soft_landmarks_avgpool1d(xs, m):
    """Segment j covers rows floor(j·N/m) .. floor((j+1)·N/m); L_j is their mean (1 ≤ m ≤ N).
    (torch's adaptive_avg_pool1d rounds segment ends up, so segments overlap: not SPEC's.)"""
    n = xs.shape[-2]
    if not 1 <= m <= n:
        raise ValueError(f"AvgPool1d needs 1 <= m <= N, got m={m}, N={n}")
    if n % m == 0:
        return F.avg_pool1d(xs.flatten(0, 1).transpose(1, 2), n // m).transpose(1, 2).reshape(
            *xs.shape[:2], m, xs.shape[-1])
    bounds = torch.tensor([j * n // m for j in range(m + 1)], device=xs.device)
    seg = torch.searchsorted(bounds, torch.arange(n, device=xs.device), right=True) - 1
    sums = xs.new_zeros(*xs.shape[:2], m, xs.shape[-1]).index_add_(2, seg, xs)
    counts = (bounds[1:] - bounds[:-1]).to(xs.dtype)
    return sums / counts.unsqueeze(-1)


def soft_landmarks_avgpool2d(xs, height, width, r):
    """Row-major height×width grid (N = height·width), non-overlapping r×r windows, no padding:
    m = ⌊height/r⌋·⌊width/r⌋, landmarks in row-major window order."""
    b, h, n, d = xs.shape
    if height * width != n:
        raise ValueError(f"AvgPool2d needs N = height·width, got {n} != {height}·{width}")
    img = xs.reshape(b * h, height, width, d).permute(0, 3, 1, 2)
    pooled = F.avg_pool2d(img, r, stride=r)  # floor mode: the ragged edge is dropped
    return pooled.permute(0, 2, 3, 1).reshape(b, h, -1, d)


def _gauss(x, y):
    """exp(-½‖x_i − y_j‖²) via ‖x‖² + ‖y‖² − 2x·y, clamped at 0 before exp."""
    xy = x @ y.transpose(-1, -2)
    d2 = (x * x).sum(-1, keepdim=True) + (y * y).sum(-1).unsqueeze(-2) - 2 * xy
    return torch.exp(-0.5 * d2.clamp_min(0))


def newton_pinv(a, iters=20, ridge=0.01, c=0.9):
    """α = c·2/(max_i Σ_j A_ij)², Â = A + λI, Z₀ = αÂ, Z_{k+1} = 2Z_k − Z_k Â Z_k, T steps."""
    alpha = c * 2.0 / a.sum(-1).amax(-1) ** 2
    ah = a + ridge * torch.eye(a.shape[-1], dtype=a.dtype, device=a.device)
    z = alpha[..., None, None] * ah
    for _ in range(iters):
        z = 2 * z - z @ (ah @ z)
    return z


def soft(q, v, k=None, landmarks="avgpool1d", m=64, height=None, width=None, r=2, given=None,
         newton_iters=20, ridge=0.01, alpha_scale=0.9, acc=torch.float32):
    """X = P_q · (Z · (P_kᵀ · V)) with P = exp(-½D²(Xs, L)), A = exp(-½D²(L, L)), Z the Newton
    pseudo-inverse of A. Keys are the queries unless `k` is given (untied); scaled by D^(-1/4).
    Landmarks: "avgpool1d" (m), "avgpool2d" (height, width, r), or "given" (`given` [B,H,m,D],
    already in the scaled space). P is recomputed per row segment (two passes), never stored
    whole."""
    d = q.shape[-1]
    scale = d ** -0.25
    qs = q.to(acc) * scale
    ks = qs if k is None else k.to(acc) * scale
    vf = v.to(acc)
    if landmarks == "avgpool1d":
        lm = soft_landmarks_avgpool1d(ks, m)
    elif landmarks == "avgpool2d":
        lm = soft_landmarks_avgpool2d(ks, height, width, r)
    elif landmarks == "given":
        lm = given.to(acc)
    else:
        raise ValueError(f"unknown landmarks {landmarks!r}")
    z = newton_pinv(_gauss(lm, lm), newton_iters, ridge, alpha_scale)
    b, h, n, _ = qs.shape
    seg = _rows_per_segment(b * h, lm.shape[-2] + d, n)
    ptv = None
    for s0 in range(0, ks.shape[-2], seg):  # pass 1: P_kᵀ V (m×Dv)
        part = _gauss(ks[:, :, s0:s0 + seg], lm).transpose(-1, -2) @ vf[:, :, s0:s0 + seg]
        ptv = part if ptv is None else ptv + part
    w = z @ ptv
    out = torch.empty(b, h, n, v.shape[-1], dtype=acc, device=q.device)
    for s0 in range(0, n, seg):  # pass 2: X = P_q W
        out[:, :, s0:s0 + seg] = _gauss(qs[:, :, s0:s0 + seg], lm) @ w
    return out


# --------------------------------------------------------------------------------------------
# AFT (SPEC §3). Y_t = σ(Q_t) ⊙ Σ_t' exp(K_t' + w_tt') V_t' / Σ_t' exp(K_t' + w_tt').
# exp(K) is taken after subtracting the per-(b,h,c) max over time, exp(w) after a per-row shift;
# both cancel in the ratio. Limitation (kept for speed, it is what plain PyTorch does): the causal
# prefix sums share that one max over all T, so when K drifts by more than ~80 along time the
# first rows' fp32 sums underflow to 0/0 (sofa's kernels keep a running max instead). Inputs of
# the check and the benchmarks (uniform in [-1, 1)) are far from it; float64 moves the limit to
# ~700.


def _exp_k(k, acc):
    kf = k.to(acc)
    return torch.exp(kf - kf.amax(dim=-2, keepdim=True))


def _finish(q, num, den, acc):
    return torch.sigmoid(q.to(acc)) * num / den


def aft_simple(q, k, v, causal=False, acc=torch.float32):
    """Y_t = σ(Q_t) ⊙ Σ_t' softmax_t'(K) ⊙ V_t' (causal: t' ≤ t, prefix sums)."""
    ek = _exp_k(k, acc)
    ekv = ek * v.to(acc)
    if causal:
        return _finish(q, ekv.cumsum(-2), ek.cumsum(-2), acc)
    return _finish(q, ekv.sum(-2, keepdim=True), ek.sum(-2, keepdim=True), acc)


def aft_full(q, k, v, w, causal=False, acc=torch.float32):
    """w [T,T] shared over batch, heads and channels: two products of exp(w − rowmax) with
    exp(K − colmax)⊙V and exp(K − colmax) (causal: w = −∞ for t' > t)."""
    t = q.shape[-2]
    wf = w.to(acc)
    if causal:
        mask = torch.ones(t, t, dtype=torch.bool, device=w.device).triu(1)
        wf = wf.masked_fill(mask, float("-inf"))
    ew = (wf - wf.amax(-1, keepdim=True)).exp_()  # one [T,T] temporary besides w
    ek = _exp_k(k, acc)
    return _finish(q, ew @ (ek * v.to(acc)), ew @ ek, acc)


def _global_sums(ekv, ek, causal):
    if causal:
        return ekv.cumsum(-2), ek.cumsum(-2)
    return ekv.sum(-2, keepdim=True), ek.sum(-2, keepdim=True)


def aft_local(q, k, v, w, causal=False, acc=torch.float32):
    """Window s from the band w [T, 2s−1] (entry (t, t'−t+s−1) for |t − t'| < s, w = 0
    outside, not −∞): global sums of exp(K)⊙V and exp(K) plus a banded correction with weights
    exp(w) − 1, one offset of the band at a time. Causal: t' ≤ t, prefix sums, the band's
    offsets ≤ 0."""
    t, cols = w.shape
    s = (cols + 1) // 2
    wf = w.to(acc)
    shift = wf.amax(-1).clamp_min(0)  # per row; the 0 stands for the entries outside the band
    ek = _exp_k(k, acc)
    x = torch.cat([ek * v.to(acc), ek], dim=-1)  # [B,H,T,2D]: numerator and denominator sums
    g_num, g_den = _global_sums(x[..., : v.shape[-1]], ek, causal)
    e0 = torch.exp(-shift)
    acc_x = torch.cat([g_num, g_den], dim=-1) * e0[:, None]
    xp = F.pad(x, (0, 0, s - 1, s - 1))  # zero rows past both ends: no contribution
    last = 0 if causal else s - 1
    for o in range(-(s - 1), last + 1):
        coef = torch.exp(wf[:, o + s - 1] - shift) - e0  # exp(w − shift) − exp(0 − shift)
        acc_x.addcmul_(coef[:, None], xp[:, :, o + s - 1: o + s - 1 + t])
    dv = v.shape[-1]
    return _finish(q, acc_x[..., :dv], acc_x[..., dv:], acc)


def aft_conv(q, k, v, u, causal=False, acc=torch.float32):
    """Per-head relative bias u [H, 2s−1], w_tt' = u[h, t'−t+s−1] inside the window, 0 outside:
    a depthwise conv1d of exp(K)⊙V and exp(K) with exp(u) − 1, plus the global sums. Causal:
    prefix sums and the kernel's taps for t' > t zeroed."""
    b, h, t, d = q.shape
    cols = u.shape[-1]
    s = (cols + 1) // 2
    uf = u.to(acc)
    shift = uf.amax(-1).clamp_min(0)  # per head
    e0 = torch.exp(-shift)
    taps = torch.exp(uf - shift[:, None]) - e0[:, None]  # [H, 2s−1]
    if causal:
        taps = taps.clone()
        taps[:, s:] = 0  # t' > t
    ek = _exp_k(k, acc)
    x = torch.cat([ek * v.to(acc), ek], dim=-1)  # [B,H,T,2D]
    g = torch.cat(_global_sums(x[..., :d], ek, causal), dim=-1) * e0[None, :, None, None]
    # conv1d is a cross-correlation: out[t] = Σ_j weight[j] · in[t + j − (s−1)], j = t'−t+s−1.
    chans = x.permute(0, 1, 3, 2).reshape(b, h * 2 * d, t)
    weight = taps.repeat_interleave(2 * d, dim=0).unsqueeze(1)  # [H·2D, 1, 2s−1]
    corr = F.conv1d(chans, weight, padding=s - 1, groups=h * 2 * d)
    corr = corr.reshape(b, h, 2 * d, t).permute(0, 1, 3, 2)
    tot = g + corr
    return _finish(q, tot[..., :d], tot[..., d:], acc)


def aft_dense(q, k, v, w_full, causal=False, acc=torch.float64):
    """The direct T×T sum with an explicit w [T,T] (for tests of the forms above: build w_full
    from a band or u with `band_to_full` / `conv_to_full`)."""
    return aft_full(q, k, v, w_full, causal, acc)


def band_to_full(w, t):
    """AFT-local band w [T, 2s−1] as the dense [T,T] bias (0 outside the window)."""
    s = (w.shape[-1] + 1) // 2
    i = torch.arange(t, device=w.device)
    off = i[None, :] - i[:, None]  # t' − t
    inside = off.abs() < s
    idx = (off + s - 1).clamp(0, 2 * s - 2)
    full = torch.gather(w, 1, idx)
    return torch.where(inside, full, torch.zeros_like(full))


def conv_to_full(u, t):
    """AFT-conv u [H, 2s−1] as dense per-head biases [H,T,T]."""
    return torch.stack([band_to_full(u[h].expand(t, -1), t) for h in range(u.shape[0])])
