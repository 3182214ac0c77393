//! SOFT reference (SPEC §1): Gaussian-kernel Nyström attention with a Newton–Raphson
//! pseudo-inverse. Per (b,h): `Qs = Q / D^¼`, landmarks `L`, `P = exp(−½D²(Qs, L))`,
//! `A = exp(−½D²(L, L))`, `Z` = T Newton steps on `A + λI`, output `P·Z·P_kᵀ·V`.
//! Literal: the `N×N` matrix `P Z P_kᵀ` materialized. Linear: `P·(Z·(P_kᵀ V))` with P rows
//! recomputed in two passes and never stored (the fused kernel's dataflow).

use super::{par_slices, Qkv};
use crate::error::{Error, Result};

/// How the landmarks are formed (SPEC §1.2).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Landmarks {
    /// Mean of the scaled keys over `m` segments `floor(j·N/m) .. floor((j+1)·N/m)`.
    AvgPool1d { m: usize },
    /// Mean over non-overlapping `r×r` windows of a row-major `height×width` grid (N = h·w).
    AvgPool2d {
        height: usize,
        width: usize,
        r: usize,
    },
    /// Caller-supplied `L [B,H,m,D]`, already in the scaled space.
    Given { m: usize },
}

impl Landmarks {
    /// Number of landmarks m.
    pub fn count(&self) -> usize {
        match *self {
            Landmarks::AvgPool1d { m } | Landmarks::Given { m } => m,
            Landmarks::AvgPool2d { height, width, r } => {
                (height / r.max(1)).saturating_mul(width / r.max(1))
            }
        }
    }

    /// Checks the landmark parameters for sequence length `n`.
    pub fn validate(&self, n: usize) -> Result<()> {
        match *self {
            Landmarks::AvgPool1d { m } if m == 0 || m > n => Err(Error::param(
                "m",
                m,
                format!("AvgPool1d needs 1 <= m <= N = {n}"),
            )),
            Landmarks::Given { m: 0 } => Err(Error::param("m", 0, "needs at least one landmark")),
            Landmarks::AvgPool2d { height, width, r } => {
                if height.checked_mul(width) != Some(n) {
                    return Err(Error::param(
                        "height",
                        height,
                        format!("height·width = {height}·{width} must equal N = {n}"),
                    ));
                }
                if r == 0 || r > height || r > width {
                    return Err(Error::param(
                        "r",
                        r,
                        format!("need 1 <= r <= min(height, width) = {}", height.min(width)),
                    ));
                }
                Ok(())
            }
            _ => Ok(()),
        }
    }
}

/// Parameters of SOFT; defaults are the official code's (SPEC §1.4).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SoftParams {
    pub landmarks: Landmarks,
    /// Newton steps T.
    pub newton_iters: usize,
    /// Ridge λ added to A after α is computed.
    pub ridge: f64,
    /// c in `α = c · 2 / (max row sum of A)²`.
    pub alpha_scale: f64,
    /// K = Q (the paper); false uses the k input for landmarks and `P_k`.
    pub tied: bool,
}

impl Default for SoftParams {
    fn default() -> Self {
        SoftParams {
            landmarks: Landmarks::AvgPool1d { m: 64 },
            newton_iters: 20,
            ridge: 0.01,
            alpha_scale: 0.9,
            tied: true,
        }
    }
}

impl SoftParams {
    /// Checks every parameter for sequence length `n`.
    pub fn validate(&self, n: usize) -> Result<()> {
        if self.newton_iters == 0 {
            return Err(Error::param("newton_iters", 0, "must be >= 1"));
        }
        if !(self.ridge >= 0.0 && self.ridge.is_finite()) {
            return Err(Error::param("ridge", self.ridge, "must be finite and >= 0"));
        }
        if !(self.alpha_scale > 0.0 && self.alpha_scale.is_finite()) {
            return Err(Error::param(
                "alpha_scale",
                self.alpha_scale,
                "must be finite and > 0",
            ));
        }
        self.landmarks.validate(n)
    }
}

/// Checks inputs and parameters; returns m.
fn validate(x: &Qkv, given: Option<&[f64]>, p: &SoftParams) -> Result<usize> {
    if x.s != x.dims.n {
        return Err(Error::shape(
            "k",
            format!(
                "SOFT is self-attention: S = {} must equal N = {}",
                x.s, x.dims.n
            ),
        ));
    }
    p.validate(x.dims.n)?;
    let m = p.landmarks.count();
    match (p.landmarks, given) {
        (Landmarks::Given { .. }, None) => {
            Err(Error::shape("landmarks", "Given landmarks need the tensor"))
        }
        (Landmarks::Given { .. }, Some(l)) => {
            super::check_len(
                "landmarks",
                l.len(),
                crate::tensor::Dims::new(x.dims.b, x.dims.h, m, x.dims.d),
            )?;
            Ok(m)
        }
        // A tensor with pooled landmarks would be sliced as if it were `[B,H,m,D]`: refuse it.
        (_, Some(_)) => Err(Error::shape(
            "landmarks",
            "a landmark tensor was passed but the landmarks are pooled, not Given",
        )),
        _ => Ok(m),
    }
}

/// `x / D^¼`, the scaled space of the Gaussian kernel.
pub fn scaled(x: &[f64], d: usize) -> Vec<f64> {
    let s = (d as f64).powf(-0.25);
    x.iter().map(|v| v * s).collect()
}

/// Landmarks `[m, D]` of one head from its scaled keys `ks [N, D]` (`given`: that head's rows).
pub fn landmarks(ks: &[f64], d: usize, lm: &Landmarks, given: Option<&[f64]>) -> Vec<f64> {
    let n = ks.len() / d;
    let mean_of = |rows: &mut dyn Iterator<Item = usize>| {
        let mut acc = vec![0.0; d];
        let mut count = 0.0;
        for i in rows {
            acc.iter_mut()
                .zip(&ks[i * d..(i + 1) * d])
                .for_each(|(a, x)| *a += x);
            count += 1.0;
        }
        acc.into_iter().map(move |a| a / count)
    };
    match *lm {
        Landmarks::AvgPool1d { m } => (0..m)
            .flat_map(|j| mean_of(&mut (j * n / m..(j + 1) * n / m)))
            .collect(),
        Landmarks::AvgPool2d { width, r, height } => {
            let (gh, gw) = (height / r, width / r);
            let window = |a: usize, b: usize| {
                (0..r * r).map(move |i| (a * r + i / r) * width + b * r + i % r)
            };
            (0..gh * gw)
                .flat_map(|j| mean_of(&mut window(j / gw, j % gw)))
                .collect()
        }
        Landmarks::Given { .. } => given.expect("validated: Given has its tensor").to_vec(),
    }
}

/// `exp(−½‖x_i − y_j‖²)` for rows of `x [rows, D]` and `y [cols, D]`, written as differences.
pub fn gaussian(x: &[f64], y: &[f64], d: usize) -> Vec<f64> {
    let mut out = Vec::with_capacity(x.len() / d * (y.len() / d));
    for xi in x.chunks_exact(d) {
        for yj in y.chunks_exact(d) {
            let d2: f64 = xi.iter().zip(yj).map(|(a, b)| (a - b) * (a - b)).sum();
            out.push((-0.5 * d2).exp());
        }
    }
    out
}

/// `C = A·B` for row-major `A [r, k]`, `B [k, c]`.
pub fn matmul(a: &[f64], b: &[f64], r: usize, k: usize, c: usize) -> Vec<f64> {
    let mut out = vec![0.0; r * c];
    for (i, orow) in out.chunks_exact_mut(c).enumerate() {
        for (kk, brow) in b.chunks_exact(c).enumerate().take(k) {
            let a_ik = a[i * k + kk];
            orow.iter_mut().zip(brow).for_each(|(o, x)| *o += a_ik * x);
        }
    }
    out
}

/// Newton–Raphson (Newton–Schulz) of SPEC §1.4 on one `m×m` A: `α = c·2/(max row sum)²`,
/// `Â = A + λI`, `Z₀ = αÂ`, `Z ← 2Z − Z Â Z`, T times.
pub fn newton_pinv(a: &[f64], m: usize, p: &SoftParams) -> Vec<f64> {
    let max_row = a
        .chunks_exact(m)
        .map(|r| r.iter().sum::<f64>())
        .fold(f64::NEG_INFINITY, f64::max);
    let alpha = p.alpha_scale * 2.0 / (max_row * max_row);
    let mut ah = a.to_vec();
    (0..m).for_each(|i| ah[i * m + i] += p.ridge);
    let mut z: Vec<f64> = ah.iter().map(|x| alpha * x).collect();
    for _ in 0..p.newton_iters {
        let zaz = matmul(&matmul(&z, &ah, m, m, m), &z, m, m, m);
        z.iter_mut()
            .zip(&zaz)
            .for_each(|(zi, x)| *zi = 2.0 * *zi - x);
    }
    z
}

/// Pieces of one head: scaled queries, scaled keys, landmarks `[m, D]` and `Z [m, m]`.
struct HeadPieces {
    qs: Vec<f64>,
    ks: Vec<f64>,
    l: Vec<f64>,
    z: Vec<f64>,
}

fn pieces(x: &Qkv, given: Option<&[f64]>, p: &SoftParams, m: usize, bh: usize) -> HeadPieces {
    let d = x.dims.d;
    let qs = scaled(x.q_of(bh), d);
    let ks = if p.tied {
        qs.clone()
    } else {
        scaled(x.k_of(bh), d)
    };
    let g = given.map(|l| &l[bh * m * d..(bh + 1) * m * d]);
    let l = landmarks(&ks, d, &p.landmarks, g);
    let z = newton_pinv(&gaussian(&l, &l, d), m, p);
    HeadPieces { qs, ks, l, z }
}

/// Materialized `P [B,H,N,m]` and `A [B,H,m,m]` (SPEC §1.6 `gaussian_products`).
pub fn gaussian_products(
    x: &Qkv,
    given: Option<&[f64]>,
    p: &SoftParams,
) -> Result<(Vec<f64>, Vec<f64>)> {
    let m = validate(x, given, p)?;
    let (n, d) = (x.dims.n, x.dims.d);
    let (mut pm, mut am) = (Vec::new(), Vec::new());
    for bh in 0..x.heads() {
        let qs = scaled(x.q_of(bh), d);
        let ks = if p.tied {
            qs.clone()
        } else {
            scaled(x.k_of(bh), d)
        };
        let l = landmarks(
            &ks,
            d,
            &p.landmarks,
            given.map(|g| &g[bh * m * d..(bh + 1) * m * d]),
        );
        pm.extend(gaussian(&qs, &l, d));
        am.extend(gaussian(&l, &l, d));
    }
    debug_assert_eq!(pm.len(), x.heads() * n * m);
    Ok((pm, am))
}

/// Literal form: `S = P Z P_kᵀ` (`N×N`), then `X = S V`.
pub fn literal(x: &Qkv, given: Option<&[f64]>, p: &SoftParams) -> Result<Vec<f64>> {
    let m = validate(x, given, p)?;
    let (n, d, dv) = (x.dims.n, x.dims.d, x.dv);
    let mut out = x.new_output();
    par_slices(&mut out, n * dv, |bh, o| {
        let hp = pieces(x, given, p, m, bh);
        let pq = gaussian(&hp.qs, &hp.l, d);
        let pk = gaussian(&hp.ks, &hp.l, d);
        let pkt: Vec<f64> = (0..m * n).map(|i| pk[(i % n) * m + i / n]).collect();
        let s = matmul(&matmul(&pq, &hp.z, n, m, m), &pkt, n, m, n);
        o.copy_from_slice(&matmul(&s, x.v_of(bh), n, n, dv));
    });
    Ok(out)
}

/// One row of P: `exp(−½ max(‖x‖² + ‖l_j‖² − 2x·l_j, 0))` (the kernel's evaluation; the clamp
/// keeps NaN, as the kernels' `nonneg` does, so a poisoned row stays poisoned).
fn p_row(xi: &[f64], l: &[f64], l2: &[f64], row: &mut [f64]) {
    let x2: f64 = xi.iter().map(|a| a * a).sum();
    for ((pj, lj), &lj2) in row.iter_mut().zip(l.chunks_exact(xi.len())).zip(l2) {
        let dot: f64 = xi.iter().zip(lj).map(|(a, b)| a * b).sum();
        let d2 = x2 + lj2 - 2.0 * dot;
        *pj = (-0.5 * if d2 < 0.0 { 0.0 } else { d2 }).exp();
    }
}

/// Linear form: pass 1 accumulates `P_kᵀ V` (`m×Dv`), `W = Z·(P_kᵀV)`, pass 2 writes `X = P W`.
pub fn linear(x: &Qkv, given: Option<&[f64]>, p: &SoftParams) -> Result<Vec<f64>> {
    let m = validate(x, given, p)?;
    let (n, d, dv) = (x.dims.n, x.dims.d, x.dv);
    let mut out = x.new_output();
    par_slices(&mut out, n * dv, |bh, o| {
        let hp = pieces(x, given, p, m, bh);
        let l2: Vec<f64> =
            hp.l.chunks_exact(d)
                .map(|r| r.iter().map(|a| a * a).sum())
                .collect();
        let mut prow = vec![0.0; m];
        let mut ptv = vec![0.0; m * dv];
        for (ki, vi) in hp.ks.chunks_exact(d).zip(x.v_of(bh).chunks_exact(dv)) {
            p_row(ki, &hp.l, &l2, &mut prow);
            for (pj, acc) in prow.iter().zip(ptv.chunks_exact_mut(dv)) {
                acc.iter_mut().zip(vi).for_each(|(a, v)| *a += pj * v);
            }
        }
        let w = matmul(&hp.z, &ptv, m, m, dv);
        for (qi, oi) in hp.qs.chunks_exact(d).zip(o.chunks_exact_mut(dv)) {
            p_row(qi, &hp.l, &l2, &mut prow);
            for (pj, wj) in prow.iter().zip(w.chunks_exact(dv)) {
                oi.iter_mut().zip(wj).for_each(|(a, x)| *a += pj * x);
            }
        }
    });
    Ok(out)
}

/// The CPU backend's evaluation (the linear form).
pub fn forward(x: &Qkv, given: Option<&[f64]>, p: &SoftParams) -> Result<Vec<f64>> {
    linear(x, given, p)
}

/// FLOPs of the linear form, ≈ `6·N·m·D + 4·m³·T` per (b,h) (SPEC §1.5).
pub fn flops(x: &Qkv, p: &SoftParams) -> f64 {
    let (n, d, m) = (x.dims.n as f64, x.dims.d as f64, p.landmarks.count() as f64);
    x.heads() as f64 * (6.0 * n * m * d + 4.0 * m * m * m * p.newton_iters as f64)
}

/// `A⁻¹` by Gauss–Jordan elimination with partial pivoting (`None` when singular): the
/// independent solve the Newton iteration is checked against.
pub fn exact_inverse(a: &[f64], m: usize) -> Option<Vec<f64>> {
    let mut aug = a.to_vec();
    let mut inv: Vec<f64> = (0..m * m)
        .map(|i| if i / m == i % m { 1.0 } else { 0.0 })
        .collect();
    for col in 0..m {
        let piv =
            (col..m).max_by(|&i, &j| aug[i * m + col].abs().total_cmp(&aug[j * m + col].abs()))?;
        if aug[piv * m + col].abs() < 1e-300 {
            return None;
        }
        for c in 0..m {
            aug.swap(col * m + c, piv * m + c);
            inv.swap(col * m + c, piv * m + c);
        }
        let s = 1.0 / aug[col * m + col];
        for c in 0..m {
            aug[col * m + c] *= s;
            inv[col * m + c] *= s;
        }
        for r in (0..m).filter(|&r| r != col) {
            let f = aug[r * m + col];
            for c in 0..m {
                aug[r * m + c] -= f * aug[col * m + c];
                inv[r * m + c] -= f * inv[col * m + c];
            }
        }
    }
    Some(inv)
}
