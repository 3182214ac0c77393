//! SimA reference (SPEC §4): literal `(q̂ k̂ᵀ) v` and the linear `q̂ (k̂ᵀ v)` form, in f64.

use super::{par_slices, Qkv};
use crate::error::Result;
use crate::tensor::Dims;

/// Column ℓ1 clamp of SPEC §4.
pub const EPS: f64 = 1e-12;

/// Column-normalized copy of one `[N, D]` slice: `x[:, c] / max(Σ_n |x[n, c]|, ε)`.
fn normalize_columns(x: &[f64], n: usize, d: usize) -> Vec<f64> {
    let mut norms = vec![0.0f64; d];
    for row in x.chunks_exact(d).take(n) {
        for (s, v) in norms.iter_mut().zip(row) {
            *s += v.abs();
        }
    }
    let mut out = x[..n * d].to_vec();
    for row in out.chunks_exact_mut(d) {
        for (v, s) in row.iter_mut().zip(&norms) {
            *v /= s.max(EPS);
        }
    }
    out
}

/// Literal form: S = q̂ k̂ᵀ (`N×N`), O = S v. Quadratic in N; for tests and small shapes.
pub fn literal(q: &[f64], k: &[f64], v: &[f64], dims: Dims, dv: usize) -> Vec<f64> {
    let Dims { b, h, n, d } = dims;
    let mut out = vec![0.0; b * h * n * dv];
    par_slices(&mut out, n * dv, |bh, o| {
        let qh = normalize_columns(&q[bh * n * d..], n, d);
        let kh = normalize_columns(&k[bh * n * d..], n, d);
        let vs = &v[bh * n * dv..(bh + 1) * n * dv];
        let mut s = vec![0.0; n];
        for i in 0..n {
            for (j, sj) in s.iter_mut().enumerate() {
                *sj = (0..d).map(|c| qh[i * d + c] * kh[j * d + c]).sum();
            }
            for e in 0..dv {
                o[i * dv + e] = (0..n).map(|j| s[j] * vs[j * dv + e]).sum();
            }
        }
    });
    out
}

/// Linear form: G = diag(1/(‖q_c‖₁‖k_c‖₁)) (kᵀv), O = q G. `4·N·D·Dv` flops per (b,h).
pub fn linear(q: &[f64], k: &[f64], v: &[f64], dims: Dims, dv: usize) -> Vec<f64> {
    let Dims { b, h, n, d } = dims;
    let mut out = vec![0.0; b * h * n * dv];
    par_slices(&mut out, n * dv, |bh, o| {
        let qs = &q[bh * n * d..(bh + 1) * n * d];
        let ks = &k[bh * n * d..(bh + 1) * n * d];
        let vs = &v[bh * n * dv..(bh + 1) * n * dv];
        let (mut qn, mut kn) = (vec![0.0f64; d], vec![0.0f64; d]);
        let mut g = vec![0.0f64; d * dv];
        for i in 0..n {
            let (qr, kr, vr) = (
                &qs[i * d..(i + 1) * d],
                &ks[i * d..(i + 1) * d],
                &vs[i * dv..(i + 1) * dv],
            );
            for c in 0..d {
                qn[c] += qr[c].abs();
                kn[c] += kr[c].abs();
                let grow = &mut g[c * dv..(c + 1) * dv];
                for (ge, ve) in grow.iter_mut().zip(vr) {
                    *ge += kr[c] * ve;
                }
            }
        }
        for c in 0..d {
            let scale = 1.0 / (qn[c].max(EPS) * kn[c].max(EPS));
            g[c * dv..(c + 1) * dv].iter_mut().for_each(|x| *x *= scale);
        }
        for i in 0..n {
            let orow = &mut o[i * dv..(i + 1) * dv];
            for c in 0..d {
                let qc = qs[i * d + c];
                for (oe, ge) in orow.iter_mut().zip(&g[c * dv..(c + 1) * dv]) {
                    *oe += qc * ge;
                }
            }
        }
    });
    out
}

/// Checks that q, k hold exactly `[B,H,N,D]` and v `[B,H,N,Dv]` elements, every extent ≥ 1.
/// [`literal`], [`linear`] and [`forward`] take raw slices and assume this (they panic on
/// buffers shorter than their shape); [`try_forward`] checks it first.
pub fn validate(q: &[f64], k: &[f64], v: &[f64], dims: Dims, dv: usize) -> Result<()> {
    Qkv::self_attn(q, k, v, dims, dv).map(|_| ())
}

/// [`forward`] after [`validate`]: a typed error instead of a panic on bad shapes.
pub fn try_forward(q: &[f64], k: &[f64], v: &[f64], dims: Dims, dv: usize) -> Result<Vec<f64>> {
    validate(q, k, v, dims, dv)?;
    Ok(forward(q, k, v, dims, dv))
}

/// The evaluation the SPEC prescribes for the shape: literal when N < D, else linear.
pub fn forward(q: &[f64], k: &[f64], v: &[f64], dims: Dims, dv: usize) -> Vec<f64> {
    if dims.n < dims.d {
        literal(q, k, v, dims, dv)
    } else {
        linear(q, k, v, dims, dv)
    }
}

/// Minimum FLOPs of the linear form (multiply-add = 2).
pub fn flops(dims: Dims, dv: usize) -> f64 {
    4.0 * (dims.b * dims.h * dims.n) as f64 * dims.d as f64 * dv as f64
}
