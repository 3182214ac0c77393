//! AFT reference (SPEC §3): per channel c,
//! `Y_t = σ(Q_t) ⊙ Σ_{t'} exp(K_{t'} + w_{t,t'}) ⊙ V_{t'} / Σ_{t'} exp(K_{t'} + w_{t,t'})`.
//! The variants differ only in `w` ([`Bias`]). Literal: the direct `T×T×D` sum with a joint max
//! per (t, c). Linear: `E = exp(K − colmax)` once, then full: a product with `exp(w − rowmax)`;
//! local/conv: sums of `E⊙V`, `E` outside the band (prefix + suffix) plus the band weighted
//! by `exp(w)`;
//! simple: one softmax over time per channel (online max when causal).

use super::{par_slices, sigmoid, Qkv};
use crate::error::{Error, Result};

/// Parameters shared by every AFT variant.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AftParams {
    /// Weight 0 for t' > t (w = −∞ there).
    pub causal: bool,
}

/// The position bias `w` of a variant.
#[derive(Clone, Copy, Debug)]
pub enum Bias<'a> {
    /// AFT-simple: no w.
    None,
    /// AFT-full: `w [T, T]`, shared over batch, heads and channels.
    Full(&'a [f64]),
    /// AFT-local: band `w [T, 2s−1]`, entry `(t, t'−t+s−1)`; 0 outside the band.
    Local { w: &'a [f64], window: usize },
    /// AFT-conv: per-head `u [H, 2s−1]`, `w_{t,t'} = u[h, t'−t+s−1]` in the window, 0 outside.
    Conv { u: &'a [f64], window: usize },
}

impl Bias<'_> {
    /// Checks the bias against T and H.
    pub fn validate(&self, t: usize, h: usize) -> Result<()> {
        let (arg, len, want) = match *self {
            Bias::None => return Ok(()),
            Bias::Full(w) => ("w", w.len(), t.checked_mul(t)),
            Bias::Local { w, window } => ("w", w.len(), band(window)?.checked_mul(t)),
            Bias::Conv { u, window } => ("u", u.len(), band(window)?.checked_mul(h)),
        };
        match want {
            Some(want) if want == len => Ok(()),
            _ => Err(Error::shape(
                arg,
                format!("{self:?} needs {want:?} elements for T = {t}, H = {h}, has {len}"),
            )),
        }
    }

    /// Dense `w_{t,t'}` for head `h` (0 outside a band).
    pub fn at(&self, h: usize, t: usize, tp: usize, seq: usize) -> f64 {
        match *self {
            Bias::None => 0.0,
            Bias::Full(w) => w[t * seq + tp],
            Bias::Local { w, window } => {
                band_entry(t, tp, window).map_or(0.0, |j| w[t * (2 * window - 1) + j])
            }
            Bias::Conv { u, window } => {
                band_entry(t, tp, window).map_or(0.0, |j| u[h * (2 * window - 1) + j])
            }
        }
    }
}

/// Band width `2s − 1`, refusing s = 0.
fn band(window: usize) -> Result<usize> {
    if window == 0 {
        return Err(Error::param("window", 0, "must be >= 1"));
    }
    window
        .checked_mul(2)
        .map(|x| x - 1)
        .ok_or_else(|| Error::param("window", window, "too large"))
}

/// Column `t'−t+s−1` of the band when `|t − t'| < s`.
fn band_entry(t: usize, tp: usize, s: usize) -> Option<usize> {
    (tp + s > t && tp < t + s).then(|| tp + s - 1 - t)
}

/// Suffix sums of the rows of `x [T, D]`: row t of the result (`T+1` rows) is `Σ_{t' ≥ t} x_{t'}`.
fn suffix(x: &[f64], d: usize) -> Vec<f64> {
    let seq = x.len() / d;
    let mut out = vec![0.0; (seq + 1) * d];
    for t in (0..seq).rev() {
        for c in 0..d {
            out[t * d + c] = out[(t + 1) * d + c] + x[t * d + c];
        }
    }
    out
}

/// Checks inputs (S = N = T, Dv = D) and the bias.
fn validate(x: &Qkv, bias: &Bias) -> Result<()> {
    if x.s != x.dims.n {
        return Err(Error::shape(
            "k",
            format!("AFT needs S = T; got T = {}, S = {}", x.dims.n, x.s),
        ));
    }
    if x.dv != x.dims.d {
        return Err(Error::shape(
            "v",
            format!("AFT needs Dv = D; got D = {}, Dv = {}", x.dims.d, x.dv),
        ));
    }
    bias.validate(x.dims.n, x.dims.h)
}

/// Keys row `t` sees: `0..=t` causal, else all.
fn keys(t: usize, seq: usize, causal: bool) -> usize {
    if causal {
        t + 1
    } else {
        seq
    }
}

/// Literal form: for every (t, c), the direct sum over t' of `exp(K + w − max)` (max joint over
/// the row, so nothing overflows), divided, times σ(Q).
pub fn literal(x: &Qkv, bias: &Bias, p: &AftParams) -> Result<Vec<f64>> {
    validate(x, bias)?;
    let (seq, d) = (x.dims.n, x.dims.d);
    let mut out = x.new_output();
    par_slices(&mut out, seq * d, |bh, o| {
        let (q, k, v, h) = (x.q_of(bh), x.k_of(bh), x.v_of(bh), bh % x.dims.h);
        let mut w = vec![0.0; seq];
        for t in 0..seq {
            let len = keys(t, seq, p.causal);
            for (tp, wt) in w[..len].iter_mut().enumerate() {
                *wt = bias.at(h, t, tp, seq);
            }
            for c in 0..d {
                let mx = (0..len)
                    .map(|tp| k[tp * d + c] + w[tp])
                    .fold(f64::NEG_INFINITY, f64::max);
                let (mut num, mut den) = (0.0, 0.0);
                for tp in 0..len {
                    let e = (k[tp * d + c] + w[tp] - mx).exp();
                    num += e * v[tp * d + c];
                    den += e;
                }
                o[t * d + c] = sigmoid(q[t * d + c]) * num / den;
            }
        }
    });
    Ok(out)
}

/// Linear form (quadratic for AFT-full, whose math is): see the module comment.
pub fn linear(x: &Qkv, bias: &Bias, p: &AftParams) -> Result<Vec<f64>> {
    validate(x, bias)?;
    let (seq, d) = (x.dims.n, x.dims.d);
    let mut out = x.new_output();
    par_slices(&mut out, seq * d, |bh, o| {
        let head = Head {
            q: x.q_of(bh),
            k: x.k_of(bh),
            v: x.v_of(bh),
            seq,
            d,
            causal: p.causal,
        };
        let h = bh % x.dims.h;
        match *bias {
            Bias::None => head.simple(o),
            Bias::Full(w) => head.full(w, o),
            Bias::Local { w, window } => head.banded(window, |t, j| w[t * (2 * window - 1) + j], o),
            Bias::Conv { u, window } => head.banded(window, |_, j| u[h * (2 * window - 1) + j], o),
        }
        head.gate(o);
    });
    Ok(out)
}

/// The CPU backend's evaluation (the linear form).
pub fn forward(x: &Qkv, bias: &Bias, p: &AftParams) -> Result<Vec<f64>> {
    linear(x, bias, p)
}

/// FLOPs of the linear form per variant (multiply-add = 2), non-causal.
pub fn flops(x: &Qkv, bias: &Bias) -> f64 {
    let (rows, d) = ((x.heads() * x.dims.n) as f64, x.dims.d as f64);
    match *bias {
        Bias::None => 4.0 * rows * d,
        Bias::Full(_) => 4.0 * rows * x.dims.n as f64 * d,
        Bias::Local { window, .. } | Bias::Conv { window, .. } => {
            4.0 * rows * (2 * window) as f64 * d
        }
    }
}

/// One (b,h) slice, `[T, D]` each.
struct Head<'a> {
    q: &'a [f64],
    k: &'a [f64],
    v: &'a [f64],
    seq: usize,
    d: usize,
    causal: bool,
}

impl Head<'_> {
    /// `E = exp(K − colmax)` and `E⊙V`, `[T, D]` each.
    fn exp_keys(&self) -> (Vec<f64>, Vec<f64>) {
        let d = self.d;
        let mut mx = vec![f64::NEG_INFINITY; d];
        for row in self.k.chunks_exact(d) {
            mx.iter_mut().zip(row).for_each(|(m, &x)| *m = m.max(x));
        }
        let e: Vec<f64> = self
            .k
            .iter()
            .enumerate()
            .map(|(i, &x)| (x - mx[i % d]).exp())
            .collect();
        let ev = e.iter().zip(self.v).map(|(a, b)| a * b).collect();
        (e, ev)
    }

    /// `o ← σ(Q) ⊙ o`.
    fn gate(&self, o: &mut [f64]) {
        o.iter_mut()
            .zip(self.q)
            .for_each(|(y, &q)| *y *= sigmoid(q));
    }

    /// AFT-simple: softmax over time per channel; causal keeps a running max per channel.
    fn simple(&self, o: &mut [f64]) {
        let d = self.d;
        if !self.causal {
            let (e, ev) = self.exp_keys();
            let (mut num, mut den) = (vec![0.0; d], vec![0.0; d]);
            for (er, evr) in e.chunks_exact(d).zip(ev.chunks_exact(d)) {
                num.iter_mut().zip(evr).for_each(|(a, b)| *a += b);
                den.iter_mut().zip(er).for_each(|(a, b)| *a += b);
            }
            for row in o.chunks_exact_mut(d) {
                row.iter_mut()
                    .enumerate()
                    .for_each(|(c, y)| *y = num[c] / den[c]);
            }
            return;
        }
        let (mut m, mut num, mut den) = (vec![f64::NEG_INFINITY; d], vec![0.0; d], vec![0.0; d]);
        for (t, row) in o.chunks_exact_mut(d).enumerate() {
            for c in 0..d {
                let kc = self.k[t * d + c];
                if kc > m[c] {
                    let r = (m[c] - kc).exp();
                    num[c] *= r;
                    den[c] *= r;
                    m[c] = kc;
                }
                let e = (kc - m[c]).exp();
                num[c] += e * self.v[t * d + c];
                den[c] += e;
                row[c] = num[c] / den[c];
            }
        }
    }

    /// AFT-full: `Σ_{t'} exp(w_{t,t'} − rowmax_t) · [E⊙V | E]_{t'}` per row t.
    fn full(&self, w: &[f64], o: &mut [f64]) {
        let (seq, d) = (self.seq, self.d);
        let (e, ev) = self.exp_keys();
        let mut den = vec![0.0; d];
        for (t, row) in o.chunks_exact_mut(d).enumerate() {
            let wr = &w[t * seq..t * seq + keys(t, seq, self.causal)];
            let r = wr.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            den.fill(0.0);
            for (tp, &wt) in wr.iter().enumerate() {
                let a = (wt - r).exp();
                row.iter_mut()
                    .zip(&ev[tp * d..(tp + 1) * d])
                    .for_each(|(y, x)| *y += a * x);
                den.iter_mut()
                    .zip(&e[tp * d..(tp + 1) * d])
                    .for_each(|(y, x)| *y += a * x);
            }
            self.divide(t, row, &den, |tp| w[t * seq + tp]);
        }
    }

    /// AFT-local/conv: w is 0 outside the band, so with `g = exp(−r_t)` (`r_t` = max of 0 and
    /// the band row) `num_t = g·Σ_outside E⊙V + Σ_band exp(w − r_t)·E⊙V`. The outside sum is a
    /// running prefix plus a stored suffix, not `global − band`: with the SPEC's
    /// `global + (exp(w) − 1)·band` a dominant key under a very negative w cancels
    /// catastrophically (relative error up to e^(|w|+ΔK)·1e-16).
    fn banded(&self, s: usize, w: impl Fn(usize, usize) -> f64, o: &mut [f64]) {
        let (seq, d) = (self.seq, self.d);
        let (e, ev) = self.exp_keys();
        let (suf_num, suf_den) = if self.causal {
            (vec![0.0; (seq + 1) * d], vec![0.0; (seq + 1) * d])
        } else {
            (suffix(&ev, d), suffix(&e, d))
        };
        let (mut pre_num, mut pre_den, mut next) = (vec![0.0; d], vec![0.0; d], 0);
        let mut den = vec![0.0; d];
        for (t, row) in o.chunks_exact_mut(d).enumerate() {
            let lo = t.saturating_sub(s - 1);
            let hi = if self.causal { t + 1 } else { (t + s).min(seq) };
            for tp in next..lo {
                pre_num
                    .iter_mut()
                    .zip(&ev[tp * d..(tp + 1) * d])
                    .for_each(|(a, b)| *a += b);
                pre_den
                    .iter_mut()
                    .zip(&e[tp * d..(tp + 1) * d])
                    .for_each(|(a, b)| *a += b);
            }
            next = next.max(lo);
            let wt = |tp: usize| w(t, tp + s - 1 - t);
            let r = (lo..hi).map(wt).fold(0.0, f64::max);
            let g = (-r).exp();
            for c in 0..d {
                row[c] = g * (pre_num[c] + suf_num[hi * d + c]);
                den[c] = g * (pre_den[c] + suf_den[hi * d + c]);
            }
            for tp in lo..hi {
                let a = (wt(tp) - r).exp();
                row.iter_mut()
                    .zip(&ev[tp * d..(tp + 1) * d])
                    .for_each(|(y, x)| *y += a * x);
                den.iter_mut()
                    .zip(&e[tp * d..(tp + 1) * d])
                    .for_each(|(y, x)| *y += a * x);
            }
            self.divide(t, row, &den, |tp| {
                if tp + s > t && tp < t + s {
                    wt(tp)
                } else {
                    0.0
                }
            });
        }
    }

    /// `row ← row / den`; where a denominator underflowed (keys far below their column max),
    /// that channel is recomputed directly with a joint max (`w_at` gives the dense bias row).
    fn divide(&self, t: usize, row: &mut [f64], den: &[f64], w_at: impl Fn(usize) -> f64) {
        let d = self.d;
        for (c, (y, &dn)) in row.iter_mut().zip(den).enumerate() {
            if dn >= f64::MIN_POSITIVE {
                *y /= dn;
                continue;
            }
            let len = keys(t, self.seq, self.causal);
            let mx = (0..len)
                .map(|tp| self.k[tp * d + c] + w_at(tp))
                .fold(f64::NEG_INFINITY, f64::max);
            let (mut num, mut den) = (0.0, 0.0);
            for tp in 0..len {
                let a = (self.k[tp * d + c] + w_at(tp) - mx).exp();
                num += a * self.v[tp * d + c];
                den += a;
            }
            *y = num / den;
        }
    }
}
