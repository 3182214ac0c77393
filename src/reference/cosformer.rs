//! cosFormer reference (SPEC §2): ReLU features re-weighted by `cos(θ_i − θ_j)`,
//! `θ_i = (π/2)·i/M` with 1-based positions. Literal: the `N×S` weight matrix. Linear: the
//! states `KVs, KVc, zs, zc`, summed over all keys (non-causal) or scanned token by token
//! through [`State`] (causal and decode).

use super::{par_slices, par_states, Qkv};
use crate::error::{Error, Result};
use std::f64::consts::FRAC_PI_2;

/// Parameters of cosFormer.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct CosformerParams {
    /// Angle denominator M; `None` = max(N, S). Must be ≥ max(N, S).
    pub m: Option<usize>,
    /// Sums over j ≤ i (requires N = S).
    pub causal: bool,
    /// Apply ReLU to q and k (false: the caller passes non-negative features).
    pub relu: bool,
    /// Denominator clamp: `max(Σ w, eps)`.
    pub eps: f64,
}

impl Default for CosformerParams {
    fn default() -> Self {
        CosformerParams {
            m: None,
            causal: false,
            relu: true,
            eps: 1e-6,
        }
    }
}

impl CosformerParams {
    /// The M in use for lengths N, S, after validating every parameter.
    pub fn resolve_m(&self, n: usize, s: usize) -> Result<usize> {
        if !(self.eps > 0.0 && self.eps.is_finite()) {
            return Err(Error::param("eps", self.eps, "must be finite and > 0"));
        }
        if self.causal && n != s {
            return Err(Error::param(
                "causal",
                true,
                format!("needs N = S, got N = {n}, S = {s}"),
            ));
        }
        let need = n.max(s);
        match self.m {
            None => Ok(need),
            Some(m) if m >= need && m >= 1 => Ok(m),
            Some(m) => Err(Error::param(
                "M",
                m,
                format!("must be >= max(N, S) = {need}"),
            )),
        }
    }
}

/// `θ` of 1-based position `pos`.
fn theta(pos: usize, m: usize) -> f64 {
    FRAC_PI_2 * pos as f64 / m as f64
}

/// The feature map: ReLU or identity.
fn feature(x: f64, relu: bool) -> f64 {
    if relu {
        x.max(0.0)
    } else {
        x
    }
}

/// Literal form: `w_ij = (q_i·k_j) cos(θ_i − θ_j)` as an `N×S` matrix (zero above the
/// diagonal when causal), `O = w V / max(rowsum w, ε)`.
pub fn literal(x: &Qkv, p: &CosformerParams) -> Result<Vec<f64>> {
    let m = p.resolve_m(x.dims.n, x.s)?;
    let (n, s, d, dv) = (x.dims.n, x.s, x.dims.d, x.dv);
    let mut out = x.new_output();
    par_slices(&mut out, n * dv, |bh, o| {
        let (q, k, v) = (x.q_of(bh), x.k_of(bh), x.v_of(bh));
        let mut w = vec![0.0; n * s];
        for i in 0..n {
            let keys = if p.causal { i + 1 } else { s };
            for j in 0..keys {
                let dot: f64 = (0..d)
                    .map(|c| feature(q[i * d + c], p.relu) * feature(k[j * d + c], p.relu))
                    .sum();
                w[i * s + j] = dot * (theta(i + 1, m) - theta(j + 1, m)).cos();
            }
        }
        for i in 0..n {
            // Only visible keys: a masked weight times a non-finite v must not leak backwards.
            let keys = if p.causal { i + 1 } else { s };
            let den = w[i * s..i * s + keys].iter().sum::<f64>().max(p.eps);
            for e in 0..dv {
                o[i * dv + e] = (0..keys).map(|j| w[i * s + j] * v[j * dv + e]).sum::<f64>() / den;
            }
        }
    });
    Ok(out)
}

/// Linear form: non-causal sums the states over all keys then maps every query; causal runs
/// a fresh [`State`] over the sequence.
pub fn linear(x: &Qkv, p: &CosformerParams) -> Result<Vec<f64>> {
    let m = p.resolve_m(x.dims.n, x.s)?;
    if p.causal {
        let mut st = State::new(
            x.dims.b,
            x.dims.h,
            x.dims.d,
            x.dv,
            &CosformerParams { m: Some(m), ..*p },
        )?;
        return st.prefill(x.q, x.k, x.v);
    }
    let (n, d, dv) = (x.dims.n, x.dims.d, x.dv);
    let mut out = x.new_output();
    par_slices(&mut out, n * dv, |bh, o| {
        let mut st = HeadState::new(d, dv);
        let (k, v) = (x.k_of(bh), x.v_of(bh));
        for (j, (kj, vj)) in k.chunks_exact(d).zip(v.chunks_exact(dv)).enumerate() {
            st.add(kj, vj, theta(j + 1, m), p.relu);
        }
        for (i, (qi, oi)) in x
            .q_of(bh)
            .chunks_exact(d)
            .zip(o.chunks_exact_mut(dv))
            .enumerate()
        {
            st.read(qi, theta(i + 1, m), p, oi);
        }
    });
    Ok(out)
}

/// The CPU backend's evaluation (the linear form).
pub fn forward(x: &Qkv, p: &CosformerParams) -> Result<Vec<f64>> {
    linear(x, p)
}

/// FLOPs of the linear form (≈ 8·N·D·Dv per (b,h), SPEC §2).
pub fn flops(x: &Qkv) -> f64 {
    4.0 * (x.heads() * (x.dims.n + x.s)) as f64 * (x.dims.d * x.dv) as f64
}

/// The state of one (b,h): `KVs = Σ (k sinθ) vᵀ`, `KVc = Σ (k cosθ) vᵀ` (`D×Dv`, row-major),
/// `zs = Σ k sinθ`, `zc = Σ k cosθ` (`D`).
#[derive(Clone, Debug)]
pub struct HeadState {
    pub kvs: Vec<f64>,
    pub kvc: Vec<f64>,
    pub zs: Vec<f64>,
    pub zc: Vec<f64>,
}

impl HeadState {
    fn new(d: usize, dv: usize) -> Self {
        HeadState {
            kvs: vec![0.0; d * dv],
            kvc: vec![0.0; d * dv],
            zs: vec![0.0; d],
            zc: vec![0.0; d],
        }
    }

    /// [`HeadState::new`] that reports allocation failure instead of aborting.
    fn try_new(
        d: usize,
        dv: usize,
    ) -> std::result::Result<Self, std::collections::TryReserveError> {
        let zeros =
            |len: usize| -> std::result::Result<Vec<f64>, std::collections::TryReserveError> {
                let mut v = Vec::new();
                v.try_reserve_exact(len)?;
                v.resize(len, 0.0);
                Ok(v)
            };
        Ok(HeadState {
            kvs: zeros(d * dv)?,
            kvc: zeros(d * dv)?,
            zs: zeros(d)?,
            zc: zeros(d)?,
        })
    }

    /// Adds key `k` (at angle `th`) with value `v`.
    fn add(&mut self, k: &[f64], v: &[f64], th: f64, relu: bool) {
        let dv = v.len();
        let (sn, cs) = th.sin_cos();
        for (c, &kc) in k.iter().enumerate() {
            let kc = feature(kc, relu);
            if kc == 0.0 {
                continue;
            }
            let (ks, kc2) = (kc * sn, kc * cs);
            self.zs[c] += ks;
            self.zc[c] += kc2;
            let rows = self.kvs[c * dv..(c + 1) * dv]
                .iter_mut()
                .zip(&mut self.kvc[c * dv..(c + 1) * dv]);
            for ((s, cc), &ve) in rows.zip(v) {
                *s += ks * ve;
                *cc += kc2 * ve;
            }
        }
    }

    /// Writes the output of query `q` (at angle `th`) into `o`.
    fn read(&self, q: &[f64], th: f64, p: &CosformerParams, o: &mut [f64]) {
        let dv = o.len();
        let (sn, cs) = th.sin_cos();
        o.fill(0.0);
        let mut den = 0.0;
        for (c, &qc) in q.iter().enumerate() {
            let qc = feature(qc, p.relu);
            if qc == 0.0 {
                continue;
            }
            let (qs, qc2) = (qc * sn, qc * cs);
            den += qs * self.zs[c] + qc2 * self.zc[c];
            let rows = self.kvs[c * dv..(c + 1) * dv]
                .iter()
                .zip(&self.kvc[c * dv..(c + 1) * dv]);
            for (oe, (s, cc)) in o.iter_mut().zip(rows) {
                *oe += qs * s + qc2 * cc;
            }
        }
        let den = den.max(p.eps);
        o.iter_mut().for_each(|x| *x /= den);
    }
}

/// Causal decode state for all (b,h) at a fixed M: feed tokens with [`State::prefill`] or
/// [`State::step`]; each token's output reads the state after adding that token.
#[derive(Clone, Debug)]
pub struct State {
    b: usize,
    h: usize,
    d: usize,
    dv: usize,
    m: usize,
    params: CosformerParams,
    pos: usize,
    heads: Vec<HeadState>,
}

impl State {
    /// An empty state; `p.m` must be given (decode needs a fixed M).
    pub fn new(b: usize, h: usize, d: usize, dv: usize, p: &CosformerParams) -> Result<Self> {
        let m =
            p.m.ok_or_else(|| Error::param("M", "None", "decode needs a fixed M"))?;
        p.resolve_m(1, 1)?;
        for (arg, v) in [("B", b), ("H", h), ("D", d), ("Dv", dv)] {
            if v == 0 {
                return Err(Error::param(arg, v, "must be >= 1"));
            }
        }
        // Checked sizes and fallible allocation: a state too large for the host is a typed
        // error, not an overflow panic or an allocation abort.
        let too_large = |why: String| Error::param("B·H·D·Dv", format!("{b}·{h}·{d}·{dv}"), why);
        let bh = b.checked_mul(h);
        let values = d
            .checked_mul(dv)
            .and_then(|x| x.checked_add(d))
            .and_then(|x| x.checked_mul(2))
            .and_then(|x| x.checked_mul(bh?))
            .filter(|&x| x <= isize::MAX as usize / 8)
            .ok_or_else(|| too_large("the state's size overflows".into()))?;
        let bh = bh.unwrap_or_default();
        let mut heads = Vec::new();
        let alloc_err = |_| too_large(format!("cannot allocate {values} f64 values"));
        heads.try_reserve_exact(bh).map_err(alloc_err)?;
        for _ in 0..bh {
            heads.push(HeadState::try_new(d, dv).map_err(alloc_err)?);
        }
        Ok(State {
            b,
            h,
            d,
            dv,
            m,
            params: *p,
            pos: 0,
            heads,
        })
    }

    /// Tokens consumed so far.
    pub fn pos(&self) -> usize {
        self.pos
    }

    /// The state of head `bh = b·H + h`.
    pub fn head(&self, bh: usize) -> &HeadState {
        &self.heads[bh]
    }

    /// Consumes `n` tokens (`q, k [B,H,n,D]`, `v [B,H,n,Dv]`); returns their causal outputs
    /// `[B,H,n,Dv]`. Positions continue from [`State::pos`] and may not pass M.
    pub fn prefill(&mut self, q: &[f64], k: &[f64], v: &[f64]) -> Result<Vec<f64>> {
        let (d, dv, bh) = (self.d, self.dv, self.b * self.h);
        let n = q.len() / (bh * d);
        let x = Qkv::self_attn(q, k, v, crate::tensor::Dims::new(self.b, self.h, n, d), dv)?;
        if self.pos + n > self.m {
            return Err(Error::param(
                "M",
                self.m,
                format!("{} tokens would pass M", self.pos + n),
            ));
        }
        let (m, p, start) = (self.m, self.params, self.pos);
        let mut out = x.new_output();
        par_states(&mut out, n * dv, &mut self.heads, |bh, st, o| {
            let rows = x
                .q_of(bh)
                .chunks_exact(d)
                .zip(x.k_of(bh).chunks_exact(d))
                .zip(x.v_of(bh).chunks_exact(dv));
            for (i, (((qi, ki), vi), oi)) in rows.zip(o.chunks_exact_mut(dv)).enumerate() {
                let th = theta(start + i + 1, m);
                st.add(ki, vi, th, p.relu);
                st.read(qi, th, &p, oi);
            }
        });
        self.pos += n;
        Ok(out)
    }

    /// One decode step: `q, k [B,H,1,D]`, `v [B,H,1,Dv]` → `[B,H,1,Dv]`.
    pub fn step(&mut self, q: &[f64], k: &[f64], v: &[f64]) -> Result<Vec<f64>> {
        let bh = self.b * self.h;
        if q.len() != bh * self.d {
            return Err(Error::shape(
                "q",
                format!("a step takes [{},{},1,{}]", self.b, self.h, self.d),
            ));
        }
        self.prefill(q, k, v)
    }
}
