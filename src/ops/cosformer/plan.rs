//! Validated launch plans: the chunking of a call, its one-launch and chained options, and its
//! workspace.

use super::tc;
use super::CosformerParams;
use crate::error::{Error, Result};
use crate::ops::{MAX_HEAD_DIM, MAX_LEN};
use crate::tensor::{Dims, Layout};

pub(super) const TILE: usize = 64; // COS_TILE
const ROWS: usize = 32; // COS_ROWS
/// Query rows per CTA of the causal pass; causal chunks are multiples of it (COS_BLOCK).
pub const BLOCK: usize = 64;
const MAX_CHUNKS: usize = 256; // non-causal row chunks
/// Causal chunks aimed for over all (b,h) slices and value tiles of 64: each chunk's CTA walks its
/// [`BLOCK`]-row blocks carrying the state, so the workspace holds one state per chunk, about
/// `max(CAUSAL_CTAS, B·H)` states whatever N.
pub const CAUSAL_CTAS: usize = 1024;
const TARGET_CTAS: usize = 1024;
/// One-launch path for short non-causal sequences (sm_90 clusters): CTAs per cluster, each
/// reducing one of as many key chunks (COS_TC_SHORT_CL), and the longest N and S it takes
/// (COS_TC_SHORT_MAX).
pub(super) const SHORT_CL: usize = 8;
const SHORT_MAX: usize = 4096;
/// Whether a plan is short enough for the one-launch path (causal: only D = 64 has the kernel;
/// other head dims find none and take the usual launches).
fn short_plan(n: usize, s: usize) -> bool {
    (1..=SHORT_MAX).contains(&n) && (1..=SHORT_MAX).contains(&s)
}

/// fp32 values in the state of one (b,h): `KVs, KVc` (`D×Dv`), `zs, zc` (`D`).
pub fn state_len(d: usize, dv: usize) -> usize {
    2 * d * dv + 2 * d
}

/// A validated launch plan for one call.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Plan {
    pub b: usize,
    pub h: usize,
    /// Query rows.
    pub n: usize,
    /// Key/value rows.
    pub s: usize,
    pub d: usize,
    pub dv: usize,
    /// The angle denominator in use.
    pub m: usize,
    pub causal: bool,
    pub relu: bool,
    pub eps: f32,
    /// Row chunks of K/V (causal: of the sequence) and their length.
    pub chunks: usize,
    pub rows_per_chunk: usize,
    /// Short plans may run as one launch (sm_90 tensor-core path); see [`Plan::with_one_launch`].
    pub(super) one_launch: bool,
    /// Causal D ∈ {64, 128} tensor-core plans run as one chained launch; see [`Plan::with_chained`].
    pub(super) chained: bool,
    /// `rows_per_chunk` was given by [`Plan::with_rows_per_chunk`]: every path uses it as is.
    pub(super) explicit_rows: bool,
    pub(super) layouts: [Layout; 4],
}

impl Plan {
    /// Checks q `[B,H,N,D]`, k `[B,H,S,D]`, v `[B,H,S,Dv]`, o `[B,H,N,Dv]` and the parameters.
    pub fn new(
        q: &Layout,
        k: &Layout,
        v: &Layout,
        o: &Layout,
        params: &CosformerParams,
    ) -> Result<Self> {
        let qd = q.dims;
        let s = k.dims.n;
        let dv = v.dims.d;
        for (arg, l, want) in [
            ("k", k, Dims::new(qd.b, qd.h, s, qd.d)),
            ("v", v, Dims::new(qd.b, qd.h, s, dv)),
            ("o", o, qd.with_d(dv)),
        ] {
            if l.dims != want {
                return Err(Error::shape(
                    arg,
                    format!(
                        "{} does not match q {qd} and k {} (expected {want})",
                        l.dims, k.dims
                    ),
                ));
            }
        }
        for (arg, l) in [("q", q), ("k", k), ("v", v), ("o", o)] {
            let span = l.span().unwrap_or(usize::MAX);
            l.validate(arg, span, MAX_HEAD_DIM)?;
        }
        let Dims { b, h, n, d } = qd;
        crate::ops::check_slices("q", b, h)?;
        for (arg, len) in [("q", n), ("k", s)] {
            if len > MAX_LEN {
                return Err(Error::shape(arg, format!("length {len} exceeds {MAX_LEN}")));
            }
        }
        let m = params.resolve_m(n, s)?;
        if m > MAX_LEN {
            return Err(Error::param("M", m, format!("must be <= {MAX_LEN}")));
        }
        let eps = params.eps as f32;
        if !(eps > 0.0 && eps.is_finite()) {
            return Err(Error::param(
                "eps",
                params.eps,
                "must be a positive, finite fp32 value",
            ));
        }
        let short = short_plan(n, s);
        let (chunks, rows_per_chunk) = if params.causal {
            let blocks = n.div_ceil(BLOCK).max(1);
            let per_bh = CAUSAL_CTAS
                .div_ceil(b * h * dv.div_ceil(TILE))
                .clamp(1, blocks);
            let rows = blocks.div_ceil(per_bh) * BLOCK;
            (n.div_ceil(rows), rows)
        } else {
            let tiles = d.div_ceil(TILE) * dv.div_ceil(TILE);
            let want = TARGET_CTAS.div_ceil(b * h * tiles);
            let chunks = want.clamp(1, MAX_CHUNKS.min(s.div_ceil(4 * ROWS)).max(1));
            let rows = s.div_ceil(chunks).div_ceil(ROWS) * ROWS;
            (s.div_ceil(rows), rows)
        };
        Ok(Plan {
            b,
            h,
            n,
            s,
            d,
            dv,
            m,
            causal: params.causal,
            relu: params.relu,
            eps,
            chunks,
            rows_per_chunk,
            one_launch: short,
            chained: true,
            explicit_rows: false,
            layouts: [*q, *k, *v, *o],
        })
    }

    /// Whether the plan may run as one launch: N, S ≤ 4096 on an sm_90 device where the
    /// tensor-core kernels apply (f16/bf16, D == Dv ∈ {32, 48, 64}, 16-byte-aligned rows; causal:
    /// D = 64).
    pub fn one_launch(&self) -> bool {
        self.one_launch
    }

    /// The same plan with the one-launch path for short sequences allowed (the default where
    /// N, S ≤ 4096) or not (always the separate reduce, finalize or scan, and map or causal
    /// launches, e.g. to compare them).
    pub fn with_one_launch(mut self, allow: bool) -> Self {
        self.one_launch = allow && !self.explicit_rows && short_plan(self.n, self.s);
        self
    }

    /// Whether a causal plan on the tensor-core path with D ∈ {64, 128} may run as one chained
    /// launch: each CTA reduces its chunk (D = 128: over its half of the value columns), takes the
    /// prefix state from the previous chunk's CTAs, and runs the chunk's outputs, so K and V are
    /// read twice within one kernel (the second time partly from L2). The default, taken where the chain keeps up with the CTAs (chunk rows × B·H ≥
    /// 16384, e.g. B·H = 16 and N ≥ 32k; or an explicit chunking); `false` always queues the
    /// separate reduce → scan → causal launches. Both give bit-identical outputs and state.
    pub fn chained(&self) -> bool {
        self.chained
    }

    /// The same plan with the chained causal launch allowed (the default) or not.
    pub fn with_chained(mut self, allow: bool) -> Self {
        self.chained = allow;
        self
    }

    /// The same plan with causal chunks of `rows` rows (a multiple of [`BLOCK`]): fewer chunks
    /// (less workspace) for more intra-chunk work. Non-causal plans are returned unchanged.
    pub fn with_rows_per_chunk(mut self, rows: usize) -> Result<Self> {
        if !self.causal {
            return Ok(self);
        }
        if rows == 0 || rows % BLOCK != 0 || rows > MAX_LEN {
            return Err(Error::param(
                "rows_per_chunk",
                rows,
                format!("must be a positive multiple of {BLOCK}"),
            ));
        }
        let chunks = self.n.div_ceil(rows);
        // Many short chunks of a long sequence: the workspace size must not overflow.
        let ws = (self.b * self.h)
            .checked_mul(chunks)
            .and_then(|x| x.checked_mul(state_len(self.d, self.dv) + 1))
            .and_then(|x| x.checked_add(1))
            .and_then(|x| x.checked_mul(4));
        if ws.is_none_or(|x| x > isize::MAX as usize) {
            return Err(Error::param(
                "rows_per_chunk",
                rows,
                format!("{chunks} chunks: the workspace size overflows"),
            ));
        }
        self.rows_per_chunk = rows;
        self.explicit_rows = true;
        self.chunks = chunks;
        // An explicit chunking is what runs: no one-launch path (it chunks by 8).
        self.one_launch = false;
        Ok(self)
    }

    /// Scratch bytes: the per-chunk states, then the summed state (non-causal) or the chained
    /// launch's flags, one `u32` per chunk state and share of its value columns, and a ticket
    /// counter (causal).
    pub fn workspace_bytes(&self) -> usize {
        let per = state_len(self.d, self.dv);
        let slots = self.b * self.h * self.chunks;
        let after = if self.causal {
            slots * tc::causal_shares(self.d) + 1
        } else {
            self.b * self.h * per
        };
        (slots * per + after) * 4
    }

    pub(super) fn check_layouts(
        &self,
        q: &Layout,
        k: &Layout,
        v: &Layout,
        o: &Layout,
    ) -> Result<()> {
        for (i, (arg, l)) in [("q", q), ("k", k), ("v", v), ("o", o)]
            .into_iter()
            .enumerate()
        {
            if *l != self.layouts[i] {
                return Err(Error::shape(
                    arg,
                    format!(
                        "{} {:?} is not the layout the plan was made for",
                        l.dims, l.strides
                    ),
                ));
            }
        }
        Ok(())
    }
}

/// Scratch bytes for q `[B,H,N,D]`, k `[B,H,S,D]`, v `[B,H,S,Dv]` (independent of strides and
/// dtype).
pub fn workspace_bytes(q: Dims, s: usize, dv: usize, params: &CosformerParams) -> Result<usize> {
    let c = Layout::contiguous;
    let kd = Dims::new(q.b, q.h, s, q.d);
    Ok(Plan::new(&c(q), &c(kd), &c(kd.with_d(dv)), &c(q.with_d(dv)), params)?.workspace_bytes())
}
