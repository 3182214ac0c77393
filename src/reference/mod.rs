//! f64 CPU implementations of SPEC.md: the oracle every GPU kernel is checked against.
//! Tensors here are contiguous `[B, H, N, D]` `Vec<f64>`; [`gather`]/[`scatter`] convert from and
//! to strided storage of any element type.

pub mod aft;
pub mod cosformer;
pub mod sima;
pub mod soft;
pub mod softmax;

use crate::error::{Error, Result};
use crate::tensor::{Dims, Element, Layout};

/// The three inputs of one attention call, contiguous f64: `q [B,H,N,D]`, `k [B,H,S,D]`,
/// `v [B,H,S,Dv]`. Built by [`Qkv::new`], which checks every length.
#[derive(Clone, Copy, Debug)]
pub struct Qkv<'a> {
    pub q: &'a [f64],
    pub k: &'a [f64],
    pub v: &'a [f64],
    /// Extents of q.
    pub dims: Dims,
    /// Key/value length S.
    pub s: usize,
    /// Head dim of v.
    pub dv: usize,
}

impl<'a> Qkv<'a> {
    /// Validates that every extent is ≥ 1 and that each buffer holds exactly its shape.
    pub fn new(
        q: &'a [f64],
        k: &'a [f64],
        v: &'a [f64],
        dims: Dims,
        s: usize,
        dv: usize,
    ) -> Result<Self> {
        let Dims { b, h, n, d } = dims;
        check_len("q", q.len(), Dims::new(b, h, n, d))?;
        check_len("k", k.len(), Dims::new(b, h, s, d))?;
        check_len("v", v.len(), Dims::new(b, h, s, dv))?;
        Ok(Qkv {
            q,
            k,
            v,
            dims,
            s,
            dv,
        })
    }

    /// Self-attention inputs (S = N).
    pub fn self_attn(
        q: &'a [f64],
        k: &'a [f64],
        v: &'a [f64],
        dims: Dims,
        dv: usize,
    ) -> Result<Self> {
        Self::new(q, k, v, dims, dims.n, dv)
    }

    /// Number of (b, h) slices.
    pub fn heads(&self) -> usize {
        self.dims.b * self.dims.h
    }

    /// The `[N, D]` slice of q for head `bh`.
    pub fn q_of(&self, bh: usize) -> &'a [f64] {
        let len = self.dims.n * self.dims.d;
        &self.q[bh * len..(bh + 1) * len]
    }

    /// The `[S, D]` slice of k for head `bh`.
    pub fn k_of(&self, bh: usize) -> &'a [f64] {
        let len = self.s * self.dims.d;
        &self.k[bh * len..(bh + 1) * len]
    }

    /// The `[S, Dv]` slice of v for head `bh`.
    pub fn v_of(&self, bh: usize) -> &'a [f64] {
        let len = self.s * self.dv;
        &self.v[bh * len..(bh + 1) * len]
    }

    /// A zeroed output `[B, H, N, Dv]`.
    pub fn new_output(&self) -> Vec<f64> {
        vec![0.0; self.heads() * self.dims.n * self.dv]
    }
}

/// Checks that a buffer named `arg` holds exactly the elements of `dims` (all extents ≥ 1).
pub fn check_len(arg: &'static str, len: usize, dims: Dims) -> Result<()> {
    let Dims { b, h, n, d } = dims;
    for (name, v) in [("B", b), ("H", h), ("N", n), ("D", d)] {
        if v == 0 {
            return Err(Error::shape(
                arg,
                format!("{name} = 0 in {dims}; every extent must be >= 1"),
            ));
        }
    }
    match dims.numel() {
        Some(want) if want == len => Ok(()),
        Some(want) => Err(Error::shape(
            arg,
            format!("{dims} needs {want} elements, buffer has {len}"),
        )),
        None => Err(Error::shape(arg, format!("{dims} overflows"))),
    }
}

/// Like [`par_slices`], with one mutable per-slice state (`states.len()` slices).
pub fn par_states<S: Send>(
    out: &mut [f64],
    slice_len: usize,
    states: &mut [S],
    f: impl Fn(usize, &mut S, &mut [f64]) + Sync,
) {
    if slice_len == 0 || states.is_empty() {
        return;
    }
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let per = states.len().div_ceil(threads).max(1);
    std::thread::scope(|s| {
        let threads: Vec<_> = states
            .chunks_mut(per)
            .zip(out.chunks_mut(per * slice_len))
            .enumerate()
            .map(|(g, (sts, outs))| {
                let f = &f;
                s.spawn(move || {
                    for (i, (st, o)) in sts.iter_mut().zip(outs.chunks_mut(slice_len)).enumerate() {
                        f(g * per + i, st, o);
                    }
                })
            })
            .collect();
        join_all(threads);
    });
}

/// Joins scoped threads one by one, re-raising a panic. The scope's implicit wait ends when the
/// closures return, before the threads' thread-local destructors have run; an explicit join
/// reaps each thread, so none is still exiting (and freeing) after the call returns.
fn join_all(threads: Vec<std::thread::ScopedJoinHandle<'_, ()>>) {
    for t in threads {
        if let Err(panic) = t.join() {
            std::panic::resume_unwind(panic);
        }
    }
}

/// Logistic sigmoid.
pub fn sigmoid(x: f64) -> f64 {
    if x >= 0.0 {
        1.0 / (1.0 + (-x).exp())
    } else {
        let e = x.exp();
        e / (1.0 + e)
    }
}

/// Contiguous f64 copy of a strided tensor.
pub fn gather<T: Element>(data: &[T], layout: &Layout) -> Vec<f64> {
    let Dims { b, h, n, d } = layout.dims;
    let mut out = Vec::with_capacity(b * h * n * d);
    for bi in 0..b {
        for hi in 0..h {
            for ni in 0..n {
                let off = layout.offset(bi, hi, ni);
                out.extend(data[off..off + d].iter().map(|x| x.to_f64()));
            }
        }
    }
    out
}

/// Writes a contiguous f64 tensor into strided storage (rounding to `T`).
pub fn scatter<T: Element>(src: &[f64], layout: &Layout, data: &mut [T]) {
    let Dims { b, h, n, d } = layout.dims;
    let mut it = src.chunks_exact(d);
    for bi in 0..b {
        for hi in 0..h {
            for ni in 0..n {
                let off = layout.offset(bi, hi, ni);
                let row = it.next().expect("src has B·H·N·D elements");
                for (dst, &x) in data[off..off + d].iter_mut().zip(row) {
                    *dst = T::from_f64(x);
                }
            }
        }
    }
}

/// Runs `f(bh, out_slice)` for every (b,h) slice of a contiguous output, across threads.
pub fn par_slices(out: &mut [f64], slice_len: usize, f: impl Fn(usize, &mut [f64]) + Sync) {
    if slice_len == 0 {
        return;
    }
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let slices: Vec<(usize, &mut [f64])> = out.chunks_mut(slice_len).enumerate().collect();
    let per = slices.len().div_ceil(threads).max(1);
    let mut groups: Vec<Vec<(usize, &mut [f64])>> = Vec::new();
    let mut it = slices.into_iter().peekable();
    while it.peek().is_some() {
        groups.push(it.by_ref().take(per).collect());
    }
    std::thread::scope(|s| {
        let threads: Vec<_> = groups
            .into_iter()
            .map(|group| {
                let f = &f;
                s.spawn(move || {
                    for (bh, slice) in group {
                        f(bh, slice);
                    }
                })
            })
            .collect();
        join_all(threads);
    });
}

/// Relative Frobenius error ‖got − want‖ / ‖want‖ (absolute when ‖want‖ = 0); NaN if any
/// element of `got` is not finite.
pub fn rel_frobenius(got: &[f64], want: &[f64]) -> f64 {
    assert_eq!(got.len(), want.len());
    let (mut num, mut den) = (0.0f64, 0.0f64);
    for (&g, &w) in got.iter().zip(want) {
        if !g.is_finite() {
            return f64::NAN;
        }
        num += (g - w) * (g - w);
        den += w * w;
    }
    if den == 0.0 {
        num.sqrt()
    } else {
        (num / den).sqrt()
    }
}

/// Largest |got − want| (NaN if any element of `got` is not finite).
pub fn max_abs_diff(got: &[f64], want: &[f64]) -> f64 {
    let mut m = 0.0f64;
    for (&g, &w) in got.iter().zip(want) {
        if !g.is_finite() {
            return f64::NAN;
        }
        m = m.max((g - w).abs());
    }
    m
}

/// Small seeded generator (SplitMix64) for reproducible random inputs.
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed ^ 0x9E37_79B9_7F4A_7C15)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [lo, hi).
    pub fn uniform(&mut self, lo: f64, hi: f64) -> f64 {
        let u = (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64;
        lo + (hi - lo) * u
    }

    /// `len` values uniform in [lo, hi), already rounded to `T` (so the reference sees exactly
    /// what the device sees).
    pub fn fill<T: Element>(&mut self, len: usize, lo: f64, hi: f64) -> Vec<T> {
        (0..len)
            .map(|_| T::from_f64(self.uniform(lo, hi)))
            .collect()
    }
}
