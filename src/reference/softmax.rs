//! Softmax attention (SPEC §5, the baseline): `O = softmax(s·QKᵀ) V`, `s = 1/√D` by default.
//! Literal: the `N×S` probability matrix, materialized. Online: one pass over keys per query
//! with a running max (flash-attention style), `O(Dv)` extra memory; still quadratic time.

use super::{par_slices, Qkv};
use crate::error::{Error, Result};

/// Parameters of softmax attention.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct SoftmaxParams {
    /// Query i attends to keys j ≤ i (requires N = S).
    pub causal: bool,
    /// Score scale; `None` = 1/√D.
    pub scale: Option<f64>,
}

/// Checks the parameters against the inputs; returns the scale in use.
fn validate(x: &Qkv, p: &SoftmaxParams) -> Result<f64> {
    if p.causal && x.dims.n != x.s {
        return Err(Error::param(
            "causal",
            true,
            format!("needs N = S, got N = {}, S = {}", x.dims.n, x.s),
        ));
    }
    let scale = p.scale.unwrap_or(1.0 / (x.dims.d as f64).sqrt());
    if !scale.is_finite() {
        return Err(Error::param("scale", scale, "must be finite"));
    }
    Ok(scale)
}

/// Number of keys query `i` sees.
fn visible(i: usize, s: usize, causal: bool) -> usize {
    if causal {
        i + 1
    } else {
        s
    }
}

fn dot(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

/// Literal form: P = softmax(s·QKᵀ) as an `N×S` matrix (masked for causal), then O = P V.
pub fn literal(x: &Qkv, p: &SoftmaxParams) -> Result<Vec<f64>> {
    let scale = validate(x, p)?;
    let (n, s, d, dv) = (x.dims.n, x.s, x.dims.d, x.dv);
    let mut out = x.new_output();
    par_slices(&mut out, n * dv, |bh, o| {
        let (q, k, v) = (x.q_of(bh), x.k_of(bh), x.v_of(bh));
        let mut prob = vec![0.0; n * s];
        for (i, row) in prob.chunks_exact_mut(s).enumerate() {
            let len = visible(i, s, p.causal);
            for (j, pj) in row[..len].iter_mut().enumerate() {
                *pj = scale * dot(&q[i * d..(i + 1) * d], &k[j * d..(j + 1) * d]);
            }
            let mx = row[..len].iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            row[..len].iter_mut().for_each(|pj| *pj = (*pj - mx).exp());
            let sum: f64 = row[..len].iter().sum();
            row[..len].iter_mut().for_each(|pj| *pj /= sum);
        }
        for i in 0..n {
            // Only visible keys: a masked 0 times a non-finite v must not leak backwards.
            let len = visible(i, s, p.causal);
            for e in 0..dv {
                o[i * dv + e] = (0..len).map(|j| prob[i * s + j] * v[j * dv + e]).sum();
            }
        }
    });
    Ok(out)
}

/// Online form: per query, a running max `m`, denominator `l` and accumulator rescaled by
/// `exp(m_old − m_new)` whenever the max grows.
pub fn online(x: &Qkv, p: &SoftmaxParams) -> Result<Vec<f64>> {
    let scale = validate(x, p)?;
    let (n, s, d, dv) = (x.dims.n, x.s, x.dims.d, x.dv);
    let mut out = x.new_output();
    par_slices(&mut out, n * dv, |bh, o| {
        let (q, k, v) = (x.q_of(bh), x.k_of(bh), x.v_of(bh));
        for (i, acc) in o.chunks_exact_mut(dv).enumerate() {
            let qi = &q[i * d..(i + 1) * d];
            let (mut m, mut l) = (f64::NEG_INFINITY, 0.0);
            for j in 0..visible(i, s, p.causal) {
                let sc = scale * dot(qi, &k[j * d..(j + 1) * d]);
                if sc > m {
                    let r = (m - sc).exp();
                    acc.iter_mut().for_each(|a| *a *= r);
                    l *= r;
                    m = sc;
                }
                let e = (sc - m).exp();
                l += e;
                for (a, vj) in acc.iter_mut().zip(&v[j * dv..(j + 1) * dv]) {
                    *a += e * vj;
                }
            }
            acc.iter_mut().for_each(|a| *a /= l);
        }
    });
    Ok(out)
}

/// The CPU backend's evaluation (the online form).
pub fn forward(x: &Qkv, p: &SoftmaxParams) -> Result<Vec<f64>> {
    online(x, p)
}

/// FLOPs of `QKᵀ` and `PV` (multiply-add = 2), non-causal.
pub fn flops(x: &Qkv) -> f64 {
    2.0 * (x.heads() * x.dims.n * x.s) as f64 * (x.dims.d + x.dv) as f64
}
