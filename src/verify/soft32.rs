//! SOFT evaluated on the CPU in f32: the error floor of the algorithm itself. The Newton iteration
//! on a nearly singular A (clustered landmarks, or D = 1 where every landmark is a scalar)
//! amplifies fp32 rounding, so any fp32 evaluation can sit well above the storage-type bound
//! whatever its code. How far it sits depends on the order of its sums, so the floor is the
//! largest error of three legitimate orders: one fp32 evaluation is a single sample of that noise,
//! and a device evaluation (kernel or cuBLAS) is another. `sofa run --check` and the GPU tests
//! admit [`FLOOR_FACTOR`] times it.

use crate::reference::soft::SoftParams;
use crate::reference::{self, soft as rsoft, Qkv};

/// How many times the fp32 floor a device evaluation may err by.
pub const FLOOR_FACTOR: f64 = 4.0;

/// The order of every fp32 sum: increasing k with fused multiply-adds (the kernels' order),
/// decreasing k with separate multiplies and adds, or blocks of 16 summed alone and then added
/// (the tensor cores' k-steps).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Order {
    ForwardFma,
    ReversePlain,
    Blocked16,
}

/// How a Newton step is evaluated; equal in exact arithmetic, rounded differently in fp32.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Step {
    /// `Z ← 2Z − (Z·Â)·Z` (the fused kernels).
    TwoZMinusZaz,
    /// `Y = 2I − Â·Z`, `Z ← Z·Y` (the cuBLAS baseline: two GEMMs with α/β).
    ZTimesTwoIMinusAz,
}

const ORDERS: [Order; 3] = [Order::ForwardFma, Order::ReversePlain, Order::Blocked16];

fn dot(
    a: impl DoubleEndedIterator<Item = f32>,
    b: impl DoubleEndedIterator<Item = f32>,
    o: Order,
) -> f32 {
    match o {
        Order::ForwardFma => a.zip(b).fold(0.0, |s, (x, y)| x.mul_add(y, s)),
        Order::ReversePlain => a.rev().zip(b.rev()).fold(0.0, |s, (x, y)| s + x * y),
        Order::Blocked16 => {
            let (mut total, mut block, mut i) = (0.0f32, 0.0f32, 0);
            for (x, y) in a.zip(b) {
                block = x.mul_add(y, block);
                i += 1;
                if i % 16 == 0 {
                    total += block;
                    block = 0.0;
                }
            }
            total + block
        }
    }
}

/// `C = A·B` in f32 for row-major `A [r,k]`, `B [k,c]`, summed in `o`'s order.
pub fn matmul32(a: &[f32], b: &[f32], r: usize, k: usize, c: usize, o: Order) -> Vec<f32> {
    let mut out = vec![0.0f32; r * c];
    for i in 0..r {
        for j in 0..c {
            let col = (0..k).map(|kk| b[kk * c + j]);
            out[i * c + j] = dot(a[i * k..(i + 1) * k].iter().copied(), col, o);
        }
    }
    out
}

/// SPEC §1.4 in f32 on one `m×m` matrix: α from row sums before the ridge, then T steps of
/// `Z ← 2Z − Z·Â·Z` in the form `step`.
pub fn newton32(a: &[f32], m: usize, p: &SoftParams, step: Step, o: Order) -> Vec<f32> {
    let max_row = a
        .chunks_exact(m)
        .map(|r| r.iter().sum::<f32>())
        .fold(f32::NEG_INFINITY, f32::max);
    let alpha = p.alpha_scale as f32 * 2.0 / (max_row * max_row);
    let mut ah = a.to_vec();
    (0..m).for_each(|i| ah[i * m + i] += p.ridge as f32);
    let mut z: Vec<f32> = ah.iter().map(|&v| alpha * v).collect();
    for _ in 0..p.newton_iters {
        z = match step {
            Step::TwoZMinusZaz => {
                let zaz = matmul32(&matmul32(&z, &ah, m, m, m, o), &z, m, m, m, o);
                z.iter().zip(&zaz).map(|(zi, t)| 2.0 * zi - t).collect()
            }
            Step::ZTimesTwoIMinusAz => {
                let mut y = matmul32(&ah, &z, m, m, m, o);
                y.iter_mut().for_each(|t| *t = -*t);
                (0..m).for_each(|i| y[i * m + i] += 2.0);
                matmul32(&z, &y, m, m, m, o)
            }
        };
    }
    z
}

/// The landmarks `[B,H,m,D]` of the keys (q when tied), from the f64 reference.
pub fn landmarks(x: &Qkv, p: &SoftParams, given: Option<&[f64]>) -> Vec<f64> {
    let (d, m) = (x.dims.d, p.landmarks.count());
    (0..x.heads())
        .flat_map(|bh| {
            let keys = if p.tied { x.q_of(bh) } else { x.k_of(bh) };
            let g = given.map(|g| &g[bh * m * d..(bh + 1) * m * d]);
            rsoft::landmarks(&rsoft::scaled(keys, d), d, &p.landmarks, g)
        })
        .collect()
}

/// The fused algorithm in f32: landmarks (f64, rounded) and A from differences, P from
/// `‖x‖² + ‖l‖² − 2x·l` clamped at 0, fp32 Newton, `W = Z·(PᵀV)`, `X = P·W`.
pub fn attention32(
    x: &Qkv,
    given: Option<&[f64]>,
    p: &SoftParams,
    step: Step,
    o: Order,
) -> Vec<f64> {
    let (n, d, dv) = (x.dims.n, x.dims.d, x.dv);
    let m = p.landmarks.count();
    let ls = landmarks(x, p, given);
    let scale = (d as f64).powf(-0.25) as f32;
    let mut out = Vec::with_capacity(x.heads() * n * dv);
    for bh in 0..x.heads() {
        let l: Vec<f32> = ls[bh * m * d..(bh + 1) * m * d]
            .iter()
            .map(|&v| v as f32)
            .collect();
        let q: Vec<f32> = x.q_of(bh).iter().map(|&v| v as f32 * scale).collect();
        let keys = if p.tied { x.q_of(bh) } else { x.k_of(bh) };
        let k: Vec<f32> = keys.iter().map(|&v| v as f32 * scale).collect();
        let v: Vec<f32> = x.v_of(bh).iter().map(|&v| v as f32).collect();
        let mut a = vec![0.0f32; m * m];
        for i in 0..m {
            for j in 0..m {
                let d2: f32 = (0..d).map(|c| (l[i * d + c] - l[j * d + c]).powi(2)).sum();
                a[i * m + j] = (-0.5 * d2).exp();
            }
        }
        let z = newton32(&a, m, p, step, o);
        let l2: Vec<f32> = l
            .chunks_exact(d)
            .map(|r| dot(r.iter().copied(), r.iter().copied(), o))
            .collect();
        let prow = |xi: &[f32]| -> Vec<f32> {
            let x2 = dot(xi.iter().copied(), xi.iter().copied(), o);
            l.chunks_exact(d)
                .zip(&l2)
                .map(|(lj, &lj2)| {
                    let xl = dot(xi.iter().copied(), lj.iter().copied(), o);
                    (-0.5 * (x2 + lj2 - 2.0 * xl).max(0.0)).exp()
                })
                .collect()
        };
        // PᵀV as an [m, dv] product of Pᵀ [m, n] and V [n, dv].
        let pk: Vec<Vec<f32>> = k.chunks_exact(d).map(prow).collect();
        let pt: Vec<f32> = (0..m).flat_map(|j| pk.iter().map(move |r| r[j])).collect();
        let ptv = matmul32(&pt, &v, m, n, dv, o);
        let w = matmul32(&z, &ptv, m, m, dv, o);
        let pq: Vec<f32> = q.chunks_exact(d).flat_map(prow).collect();
        out.extend(matmul32(&pq, &w, n, m, dv, o).iter().map(|&t| t as f64));
    }
    out
}

/// The error floor of any fp32 evaluation against `want`: the largest of the orders'.
pub fn attention_floor(
    x: &Qkv,
    given: Option<&[f64]>,
    p: &SoftParams,
    step: Step,
    want: &[f64],
) -> f64 {
    ORDERS
        .map(|o| reference::rel_frobenius(&attention32(x, given, p, step, o), want))
        .into_iter()
        .fold(0.0, f64::max)
}

/// The same floor for the Newton iteration alone, over `batch` matrices `a` (`m×m` each).
pub fn newton_floor(a: &[f32], m: usize, p: &SoftParams, step: Step, want: &[f64]) -> f64 {
    ORDERS
        .map(|o| {
            let z: Vec<f64> = a
                .chunks_exact(m * m)
                .flat_map(|ai| newton32(ai, m, p, step, o))
                .map(|t| t as f64)
                .collect();
            reference::rel_frobenius(&z, want)
        })
        .into_iter()
        .fold(0.0, f64::max)
}
