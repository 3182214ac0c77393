//! cosFormer (SPEC §2): ReLU features re-weighted by `cos(θ_i − θ_j)`, `θ_i = (π/2)·i/M`,
//! 1-based positions, `O_i = Σ_j w_ij v_j / max(Σ_j w_ij, ε)`.
//!
//! Non-causal (any N, S): reduce the per-(b,h) states `KVs, KVc, zs, zc` over row chunks of K/V,
//! sum the chunks in a fixed order, map every query row. Causal (N = S): a chunked scan — each
//! chunk's own state, an exclusive prefix over chunks, then per block of 64 query rows the prefix
//! state plus the masked intra-chunk products. Decode: [`State`] keeps the running fp32 state of
//! B·H sequences on the device; [`State::prefill`] runs the causal scan from it and
//! [`State::step`] adds one token per sequence. Any D, Dv ≤ 256, any strides with a unit last dim
//! run on fp32 CUDA-core kernels; f16/bf16 with D == Dv ∈ {32, 48, 64} (causal: {32, 64}), and
//! 128 on sm_90, with 16-byte-aligned rows run on tensor cores (kernels/cosformer_tc.cuh): the
//! same partial states, the products on mma.sync with fp32 accumulation, the causal pass one CTA
//! per chunk (D = 128: per chunk and half of the value columns) carrying its state across 64-row
//! blocks, chained behind the reduce in one launch for D ∈ {64, 128} where that keeps up.

use super::{
    check_raw, check_workspace, launch, launch_smem, ptr_of_mut, rows_16b_aligned, with_raw,
    RawTensor, TensorMut, TensorRef, MAX_HEAD_DIM,
};
use crate::error::{Error, Result};
use crate::runtime::{oom_or, Runtime};
use crate::tensor::{DType, Dims, Element, Layout};
use cudarc::driver::{CudaSlice, CudaStream};
use std::mem::{offset_of, size_of};
use std::sync::Arc;

pub use crate::reference::cosformer::CosformerParams;

const FAMILY: &str = "cosformer";
const THREADS: u32 = 256; // COS_THREADS
const TILE: usize = 64; // COS_TILE
const ROWS: usize = 32; // COS_ROWS
/// Query rows per CTA of the causal pass; causal chunks are multiples of it (COS_BLOCK).
pub const BLOCK: usize = 64;
const MAX_CHUNKS: usize = 256; // non-causal row chunks
/// Causal chunks aimed for over all (b,h) slices and value tiles of 64: each chunk's CTA walks its
/// [`BLOCK`]-row blocks carrying the state, so the workspace holds one state per chunk, about
/// `max(CAUSAL_CTAS, B·H)` states whatever N.
pub const CAUSAL_CTAS: usize = 1024;
const TARGET_CTAS: usize = 1024;
const MAX_GRID_YZ: usize = 65535;
/// Head dims (D == Dv) with tensor-core passes for f16/bf16 and 16-byte-aligned rows: the
/// non-causal reduce/map and the causal pass (D = 128 on sm_90 only: [`TC_SM90_DIMS`]).
const TC_DIMS: [usize; 4] = [32, 48, 64, 128];
/// Tensor-core head dims built for sm_90 only (on sm_80 the bf16 map would spill).
const TC_SM90_DIMS: [usize; 1] = [128];
const TC_CAUSAL_DIMS: [usize; 3] = [32, 64, 128];
/// Causal head dims with the chained one-launch kernel (cosformer_causal_chain_tc*).
const TC_CHAIN_DIMS: [usize; 2] = [64, 128];
const TC_ROWS: usize = 32; // COS_TC_ROWS
const TC_MAP_THREADS: u32 = 128; // COS_TC_MAP_WARPS · 32
const TC_MAP_ROWS: usize = 64; // COS_TC_MAP_WARPS · 16
const TC_CAUSAL_THREADS: u32 = 256; // COS_TC_CAUSAL_WARPS · 32
/// Causal tensor-core CTAs aimed for (one per chunk and (b,h)): a few waves of one CTA per SM.
const TC_CAUSAL_CTAS: usize = 512;
/// Least `rows_per_chunk · B·H` for which a default plan takes the chained launch. A link of the
/// chain (see the flag, read the previous prefix, write its own, fence) takes ~2–3 µs. The next
/// chunk of a slice starts B·H tickets later, i.e. after ≈ (a CTA's time) · B·H / 132 SMs, and a
/// CTA streams ≈ 768 B per row (K, V, then Q, K, V, O) at ≈ 22 GB/s per SM, ≈ 35 ns per row.
/// The chain keeps up when rows · B·H · 35 ns / 132 ≥ ~3.5 µs: at B·H = 16 that is chunks of
/// ≥ 1024 rows (N ≥ 32k with 32 chunks per slice); with fewer slices or shorter chunks the
/// separate launches are faster.
const CHAIN_MIN_ROWS_SLICES: usize = 16384;
/// One-launch path for short non-causal sequences (sm_90 clusters): CTAs per cluster, each
/// reducing one of as many key chunks (COS_TC_SHORT_CL), and the longest N and S it takes
/// (COS_TC_SHORT_MAX).
const SHORT_CL: usize = 8;
const SHORT_MAX: usize = 4096;
/// Whether a plan is short enough for the one-launch path (causal: only D = 64 has the kernel;
/// other head dims find none and take the usual launches).
fn short_plan(n: usize, s: usize) -> bool {
    (1..=SHORT_MAX).contains(&n) && (1..=SHORT_MAX).contains(&s)
}
/// Clusters launched by the one-launch path (each then walks (b,h) slices).
const MAX_CLUSTERS: usize = 1 << 16;

/// Launch geometry of the tensor-core kernels (mirrors cos_tc_* in kernels/cosformer_tc.cuh).
mod tc {
    use super::{BLOCK, TC_MAP_ROWS, TC_ROWS};
    fn state_ld(d: usize) -> usize {
        2 * d + 24
    }
    pub fn reduce_threads(d: usize) -> u32 {
        (d / 16 * if d >= 64 { 2 } else { 1 } * 32) as u32
    }
    pub fn reduce_smem(d: usize) -> u32 {
        (4 * TC_ROWS * (d + 8) * 2) as u32
    }
    pub fn map_smem(d: usize) -> u32 {
        ((d * state_ld(d) + 2 * TC_MAP_ROWS * (d + 8)) * 2) as u32
    }
    /// The one-launch causal kernel: the larger of the reduce and the causal pass.
    pub fn short_causal_smem(d: usize) -> u32 {
        causal_smem(d).max(reduce_smem(d))
    }
    /// The one-launch kernel: the larger of the reduce and of a map with the reduce's warps.
    pub fn short_smem(d: usize) -> u32 {
        let map = (d * state_ld(d) + 2 * (reduce_threads(d) as usize / 32) * 16 * (d + 8)) * 2;
        reduce_smem(d).max(map as u32)
    }
    /// Value columns per causal CTA (cos_tc_causal_dv): D = 128 splits them between two CTAs.
    pub fn causal_dv(d: usize) -> usize {
        d.min(64)
    }
    /// Causal tensor-core CTAs per chunk: one per share of the value columns (1 for head dims
    /// without tensor-core causal kernels).
    pub fn causal_shares(d: usize) -> usize {
        if super::TC_CAUSAL_DIMS.contains(&d) {
            d / causal_dv(d)
        } else {
            1
        }
    }
    pub fn causal_smem(d: usize) -> u32 {
        let dv = causal_dv(d);
        ((4 * BLOCK * (d + 8) + 3 * BLOCK * (dv + 8) + d * state_ld(dv)) * 2) as u32
    }
    // The values the static_assert in kernels/cosformer_tc.cuh pins.
    #[test]
    fn geometry_matches_the_kernel_header() {
        assert_eq!(reduce_smem(64), 18432);
        assert_eq!(map_smem(64), 37888);
        assert_eq!((causal_smem(64), causal_smem(128)), (83968, 136192));
        assert_eq!(
            (short_smem(32), short_smem(48), short_smem(64)),
            (10752, 22272, 56320)
        );
        assert_eq!(
            (reduce_threads(32), reduce_threads(64), reduce_threads(128)),
            (64, 256, 512)
        );
    }
}

/// Largest N, S and M accepted (the kernels index rows with 32-bit ints).
const MAX_LEN: usize = (i32::MAX / 2) as usize;

/// Mirror of `CosformerParams` in kernels/cosformer.cuh.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct KernelParams {
    pub q: u64,
    pub k: u64,
    pub v: u64,
    pub o: u64,
    pub partial: u64,
    pub state: u64,
    pub q_sb: i64,
    pub q_sh: i64,
    pub q_sn: i64,
    pub k_sb: i64,
    pub k_sh: i64,
    pub k_sn: i64,
    pub v_sb: i64,
    pub v_sh: i64,
    pub v_sn: i64,
    pub o_sb: i64,
    pub o_sh: i64,
    pub o_sn: i64,
    pub b: i32,
    pub h: i32,
    pub n: i32,
    pub s: i32,
    pub d: i32,
    pub dv: i32,
    pub chunks: i32,
    pub rows_per_chunk: i32,
    pub m: i32,
    pub pos0: i32,
    pub relu: i32,
    pub state_in: i32,
    pub eps: f32,
    /// Tensor-core reduce: state sums as hi + lo parts, so that the state a causal prefill returns
    /// stays fp32-accurate (set by [`queue`]); 0: hi parts, where the sums only feed the 16-bit
    /// state operand of the map or causal pass.
    pub exact_state: i32,
}

// SAFETY: plain old data with the C layout asserted below.
unsafe impl cudarc::driver::DeviceRepr for KernelParams {}

const _: () = {
    assert!(size_of::<KernelParams>() == 200); // COSFORMER_PARAMS_SIZE
    assert!(offset_of!(KernelParams, partial) == 32);
    assert!(offset_of!(KernelParams, state) == 40);
    assert!(offset_of!(KernelParams, q_sb) == 48);
    assert!(offset_of!(KernelParams, o_sn) == 136);
    assert!(offset_of!(KernelParams, b) == 144);
    assert!(offset_of!(KernelParams, m) == 176);
    assert!(offset_of!(KernelParams, eps) == 192);
};

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
    /// Per-chunk state slots in the workspace: `chunks`, or at least [`SHORT_CL`] for a short
    /// plan (the one-launch path reduces that many chunks).
    partials: usize,
    /// Short plans may run as one launch (sm_90 tensor-core path); see [`Plan::with_one_launch`].
    one_launch: bool,
    /// Causal D ∈ {64, 128} tensor-core plans run as one chained launch; see [`Plan::with_chained`].
    chained: bool,
    /// `rows_per_chunk` was given by [`Plan::with_rows_per_chunk`]: every path uses it as is.
    explicit_rows: bool,
    layouts: [Layout; 4],
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
        if b.checked_mul(h).is_none_or(|bh| bh > i32::MAX as usize) {
            return Err(Error::shape("q", format!("B·H = {b}·{h} exceeds 2^31 - 1")));
        }
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
            partials: if short { chunks.max(SHORT_CL) } else { chunks },
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
        self.one_launch = allow && self.partials >= SHORT_CL && short_plan(self.n, self.s);
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
        self.partials = chunks;
        self.one_launch = false;
        Ok(self)
    }

    /// Scratch bytes: the per-chunk states, then the summed state (non-causal) or the chained
    /// launch's flags, one `u32` per chunk state and share of its value columns, and a ticket
    /// counter (causal).
    pub fn workspace_bytes(&self) -> usize {
        let per = state_len(self.d, self.dv);
        let slots = self.b * self.h * self.partials;
        let after = if self.causal {
            slots * tc::causal_shares(self.d) + 1
        } else {
            self.b * self.h * per
        };
        (slots * per + after) * 4
    }

    fn check_layouts(&self, q: &Layout, k: &Layout, v: &Layout, o: &Layout) -> Result<()> {
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

fn grid_dim(x: usize) -> u32 {
    x.min(i32::MAX as usize) as u32
}

fn strides(l: &Layout) -> [i64; 3] {
    [
        l.strides.batch as i64,
        l.strides.head as i64,
        l.strides.seq as i64,
    ]
}

/// Kernel parameters for a plan over raw tensors.
fn kernel_params(
    plan: &Plan,
    q: &RawTensor,
    k: &RawTensor,
    v: &RawTensor,
    o: &RawTensor,
) -> KernelParams {
    let [q_sb, q_sh, q_sn] = strides(&q.layout);
    let [k_sb, k_sh, k_sn] = strides(&k.layout);
    let [v_sb, v_sh, v_sn] = strides(&v.layout);
    let [o_sb, o_sh, o_sn] = strides(&o.layout);
    KernelParams {
        q: q.ptr,
        k: k.ptr,
        v: v.ptr,
        o: o.ptr,
        q_sb,
        q_sh,
        q_sn,
        k_sb,
        k_sh,
        k_sn,
        v_sb,
        v_sh,
        v_sn,
        o_sb,
        o_sh,
        o_sn,
        b: plan.b as i32,
        h: plan.h as i32,
        n: plan.n as i32,
        s: plan.s as i32,
        d: plan.d as i32,
        dv: plan.dv as i32,
        chunks: plan.chunks as i32,
        rows_per_chunk: plan.rows_per_chunk as i32,
        m: plan.m as i32,
        relu: plan.relu as i32,
        eps: plan.eps,
        ..Default::default()
    }
}

/// Queues the kernels of `plan` (validated) with `p` filled by [`kernel_params`].
/// Causal plans read `state` (when `state_in`) and write the total back to it when non-null.
///
/// # Safety
/// Every pointer in `p` addresses memory that holds what the plan reads or writes; the workspace
/// holds `plan.workspace_bytes()`; `state`, when non-null, holds `B·H·state_len` floats.
unsafe fn queue(
    rt: &Runtime,
    stream: &CudaStream,
    plan: &Plan,
    dtype: DType,
    mut p: KernelParams,
    workspace: u64,
) -> Result<()> {
    // Only a state handed back to the caller (a causal prefill's) needs the exact sums.
    p.exact_state = (plan.causal && p.state != 0) as i32;
    if tensor_cores(plan, dtype, &p, rt.info().compute_capability.0 >= 9) {
        // SAFETY: forwarded contract; `tensor_cores` checked the dims and 16-byte alignment.
        return unsafe { queue_tc(rt, stream, plan, dtype, p, workspace) };
    }
    let bh = plan.b * plan.h;
    let per = state_len(plan.d, plan.dv);
    let dt = dtype.name();
    let bh_y = bh.min(MAX_GRID_YZ) as u32;
    let tiles = (plan.d.div_ceil(TILE) * plan.dv.div_ceil(TILE)) as u32;
    let e_tiles = plan.dv.div_ceil(TILE) as u32;
    let elem_blocks = grid_dim(per.div_ceil(THREADS as usize));
    let reduce = rt.function(FAMILY, &format!("cosformer_reduce_{dt}"))?;
    p.partial = workspace;
    // Causal: an exclusive scan over the chunk partials, then per-chunk outputs. Non-causal: the
    // partials summed into one state (after them in the workspace), then the map over queries.
    let (middle, out) = if plan.causal {
        (
            rt.function(FAMILY, "cosformer_scan_f32")?,
            rt.function(FAMILY, &format!("cosformer_causal_{dt}"))?,
        )
    } else {
        p.state = workspace + (bh * plan.partials * per * 4) as u64;
        (
            rt.function(FAMILY, "cosformer_finalize_f32")?,
            rt.function(FAMILY, &format!("cosformer_map_{dt}"))?,
        )
    };
    // SAFETY: the caller's contract; grids cover every chunk, state element and query block.
    unsafe {
        let reduce_grid = (grid_dim(plan.chunks), bh_y, tiles);
        launch(stream, &reduce, reduce_grid, THREADS, &p)?;
        launch(stream, &middle, (elem_blocks, bh_y, 1), THREADS, &p)?;
        // Causal: one CTA per chunk walks its blocks; non-causal: one per block of queries.
        let out_x = if plan.causal {
            plan.chunks
        } else {
            plan.n.div_ceil(BLOCK)
        };
        let out_grid = (grid_dim(out_x), bh_y, e_tiles);
        launch(stream, &out, out_grid, THREADS, &p)?;
    }
    Ok(())
}

/// Whether the tensor-core kernels apply: f16/bf16, D == Dv with a tensor-core build for this
/// device (`sm90`: compute capability ≥ 9), and every row of q, k, v, o 16-byte aligned
/// (pointers and batch/head/seq strides).
fn tensor_cores(plan: &Plan, dtype: DType, p: &KernelParams, sm90: bool) -> bool {
    let dims: &[usize] = if plan.causal {
        &TC_CAUSAL_DIMS
    } else {
        &TC_DIMS
    };
    let aligned = rows_16b_aligned(
        &[p.q, p.k, p.v, p.o],
        &[
            p.q_sb, p.q_sh, p.q_sn, p.k_sb, p.k_sh, p.k_sn, p.v_sb, p.v_sh, p.v_sn, p.o_sb, p.o_sh,
            p.o_sn,
        ],
    );
    let built = sm90 || !TC_SM90_DIMS.contains(&plan.d);
    dtype != DType::F32 && plan.d == plan.dv && dims.contains(&plan.d) && built && aligned
}

/// Causal chunk rows of the tensor-core pass: the plan's when given explicitly, else a multiple of
/// the plan's chunk (so the workspace, sized for the plan's chunks, holds the fewer chunks) long
/// enough that there are about [`TC_CAUSAL_CTAS`] chunks in all: each CTA carries its state
/// across the chunk's blocks.
fn tc_causal_rows(plan: &Plan) -> usize {
    if plan.explicit_rows {
        return plan.rows_per_chunk;
    }
    let slices = plan.b * plan.h * tc::causal_shares(plan.d);
    let want = plan.n.div_ceil(TC_CAUSAL_CTAS.div_ceil(slices));
    want.max(1).div_ceil(plan.rows_per_chunk) * plan.rows_per_chunk
}

/// Queues the chained causal kernel (D ∈ {64, 128}): a memset of its flags, then one launch of
/// `B·H·chunks·shares` CTAs (D = 128: two shares of the value columns per chunk). False when the
/// plan does not take it (not chained, another D, a default chunking below
/// [`CHAIN_MIN_ROWS_SLICES`], more CTAs than a grid holds, or D = 128 continuing a state in a
/// single chunk, where one share could overwrite the state before the other has read it):
/// nothing was queued.
///
/// # Safety
/// As [`queue_tc`], with `p.partial`, `p.chunks` and `p.rows_per_chunk` set for the causal pass
/// (`p.chunks` ≤ the plan's chunk slots).
unsafe fn queue_chained(
    rt: &Runtime,
    stream: &CudaStream,
    plan: &Plan,
    dtype: DType,
    p: &KernelParams,
) -> Result<bool> {
    let (bh, d) = (plan.b * plan.h, plan.d);
    let shares = tc::causal_shares(d);
    let states = bh * p.chunks as usize;
    let ctas = states * shares;
    let slow_chain =
        !plan.explicit_rows && (p.rows_per_chunk as usize) * bh < CHAIN_MIN_ROWS_SLICES;
    let shared_state = shares > 1 && p.state_in != 0 && p.chunks == 1;
    if !plan.chained
        || !TC_CHAIN_DIMS.contains(&d)
        || slow_chain
        || shared_state
        || ctas > i32::MAX as usize
    {
        return Ok(false);
    }
    let f = rt.function(
        FAMILY,
        &format!("cosformer_causal_chain_tc{d}_{}", dtype.name()),
    )?;
    // The reduce's staging and the causal pass's buffers share the dynamic shared memory.
    let smem = tc::short_causal_smem(d);
    rt.allow_dynamic_smem(&f, smem)?;
    // The flags (one per chunk state and share) and the ticket counter follow the partials.
    let flags = p.partial + (states * state_len(d, d) * 4) as u64;
    // SAFETY: the workspace holds the plan's slots' states and slots·shares flags + 1 after them;
    // the p.chunks ≤ slots states used end where these flags begin, and the grid covers every
    // chunk and share.
    stream.context().bind_to_thread()?;
    unsafe {
        cudarc::driver::sys::cuMemsetD32Async(flags, 0, ctas + 1, stream.cu_stream()).result()?;
        launch_smem(stream, &f, (ctas as u32, 1, 1), TC_CAUSAL_THREADS, smem, p)?;
    }
    Ok(true)
}

/// Queues the one-launch kernel of a short plan (sm_90 thread-block clusters; causal: D = 64,
/// where the reduce and the causal pass share 8 warps). False when it does not apply, the build
/// has no sm_90 image of it for this device, or the driver refused the launch (no room for a
/// cluster of 8): nothing was queued, the separate launches must run.
///
/// # Safety
/// As [`queue_tc`], with `p.partial` (and, non-causal, `p.state`) set.
unsafe fn queue_one_launch(
    rt: &Runtime,
    stream: &CudaStream,
    plan: &Plan,
    dtype: DType,
    mut p: KernelParams,
) -> Result<bool> {
    let d = plan.d;
    if !plan.one_launch || rt.info().compute_capability.0 < 9 || (plan.causal && d != 64) {
        return Ok(false);
    }
    let (kernel, smem, threads, rows) = if plan.causal {
        let rows = plan.n.div_ceil(SHORT_CL).div_ceil(BLOCK) * BLOCK;
        (
            "short_causal",
            tc::short_causal_smem(d),
            TC_CAUSAL_THREADS,
            rows,
        )
    } else {
        let rows = plan.s.div_ceil(SHORT_CL).div_ceil(TC_ROWS) * TC_ROWS;
        ("short", tc::short_smem(d), tc::reduce_threads(d), rows)
    };
    let name = format!("cosformer_{kernel}_tc{d}_{}", dtype.name());
    let Ok(f) = rt.function(FAMILY, &name) else {
        return Ok(false);
    };
    rt.allow_dynamic_smem(&f, smem)?;
    p.chunks = SHORT_CL as i32;
    p.rows_per_chunk = rows as i32;
    let grid = (
        ((plan.b * plan.h).min(MAX_CLUSTERS) * SHORT_CL) as u32,
        1,
        1,
    );
    // SAFETY: SHORT_CL ≤ plan.partials slots before the state; one cluster per (b,h) at a time
    // covers every chunk, state element and query tile.
    Ok(unsafe { launch_smem(stream, &f, grid, threads, smem, &p) }.is_ok())
}

/// [`queue`] on the tensor-core kernels.
///
/// # Safety
/// As [`queue`], and [`tensor_cores`] holds.
unsafe fn queue_tc(
    rt: &Runtime,
    stream: &CudaStream,
    plan: &Plan,
    dtype: DType,
    mut p: KernelParams,
    workspace: u64,
) -> Result<()> {
    let (bh, d, dt) = (plan.b * plan.h, plan.d, dtype.name());
    let per = state_len(d, d);
    p.partial = workspace;
    if !plan.causal {
        p.state = workspace + (bh * plan.partials * per * 4) as u64;
    }
    // SAFETY: forwarded contract (the partials and state set just above).
    if unsafe { queue_one_launch(rt, stream, plan, dtype, p)? } {
        return Ok(());
    }
    let bh_y = bh.min(MAX_GRID_YZ) as u32;
    let elem_blocks = grid_dim(per.div_ceil(THREADS as usize));
    let reduce = rt.function(FAMILY, &format!("cosformer_reduce_tc{d}_{dt}"))?;
    let rsmem = tc::reduce_smem(d);
    rt.allow_dynamic_smem(&reduce, rsmem)?;
    if plan.causal {
        let rows = tc_causal_rows(plan);
        p.rows_per_chunk = rows as i32;
        p.chunks = plan.n.div_ceil(rows) as i32;
        // SAFETY: forwarded contract, with the causal chunking set just above.
        if unsafe { queue_chained(rt, stream, plan, dtype, &p)? } {
            return Ok(());
        }
        let scan = rt.function(FAMILY, "cosformer_scan_f32")?;
        let causal = rt.function(FAMILY, &format!("cosformer_causal_tc{d}_{dt}"))?;
        let csmem = tc::causal_smem(d);
        rt.allow_dynamic_smem(&causal, csmem)?;
        let chunks = p.chunks as u32;
        // The causal pass: one CTA per chunk and share of the value columns (cos_causal_block).
        let shares = tc::causal_shares(d) as u32;
        // SAFETY: chunks ≤ plan.chunks, so the partials fit the workspace; grids cover every
        // chunk, value column and state element.
        unsafe {
            let rgrid = (grid_dim(bh), chunks, 1);
            launch_smem(stream, &reduce, rgrid, tc::reduce_threads(d), rsmem, &p)?;
            launch(stream, &scan, (elem_blocks, bh_y, 1), THREADS, &p)?;
            let cgrid = (chunks * shares, bh_y, 1);
            launch_smem(stream, &causal, cgrid, TC_CAUSAL_THREADS, csmem, &p)?;
        }
    } else {
        let finalize = rt.function(FAMILY, "cosformer_finalize_f32")?;
        let map = rt.function(FAMILY, &format!("cosformer_map_tc{d}_{dt}"))?;
        let msmem = tc::map_smem(d);
        rt.allow_dynamic_smem(&map, msmem)?;
        // Persistent map CTAs: one wave, shared among the (b,h) slices.
        let slots = rt.resident_ctas(&map, TC_MAP_THREADS, msmem)?;
        let per_bh = slots.div_ceil(bh).max(1);
        let map_grid = (plan.n.div_ceil(TC_MAP_ROWS).min(per_bh) as u32, bh_y, 1);
        // SAFETY: as in `queue`; the grids cover every chunk, state element and query tile.
        unsafe {
            let rgrid = (grid_dim(bh), plan.chunks as u32, 1);
            launch_smem(stream, &reduce, rgrid, tc::reduce_threads(d), rsmem, &p)?;
            launch(stream, &finalize, (elem_blocks, bh_y, 1), THREADS, &p)?;
            launch_smem(stream, &map, map_grid, TC_MAP_THREADS, msmem, &p)?;
        }
    }
    Ok(())
}

/// Launches cosFormer on raw device pointers.
///
/// # Safety
/// Each pointer must address device memory of this runtime's context that holds its layout's
/// span in elements of `dtype` (q, k, v readable; o writable and not aliasing the inputs), and
/// `workspace` must hold `workspace_len ≥ Plan::workspace_bytes` bytes, 4-byte aligned. They must
/// stay valid until the work queued on `stream` completes.
#[allow(clippy::too_many_arguments)]
pub unsafe fn forward_raw(
    rt: &Runtime,
    stream: &CudaStream,
    params: &CosformerParams,
    dtype: DType,
    q: RawTensor,
    k: RawTensor,
    v: RawTensor,
    o: RawTensor,
    workspace: u64,
    workspace_len: usize,
) -> Result<()> {
    let plan = Plan::new(&q.layout, &k.layout, &v.layout, &o.layout, params)?;
    // SAFETY: forwarded contract.
    unsafe {
        forward_raw_with_plan(
            rt,
            stream,
            &plan,
            dtype,
            q,
            k,
            v,
            o,
            workspace,
            workspace_len,
        )
    }
}

/// [`forward_raw`] with a plan made (and possibly adjusted) by the caller for these layouts.
///
/// # Safety
/// As [`forward_raw`].
#[allow(clippy::too_many_arguments)]
pub unsafe fn forward_raw_with_plan(
    rt: &Runtime,
    stream: &CudaStream,
    plan: &Plan,
    dtype: DType,
    q: RawTensor,
    k: RawTensor,
    v: RawTensor,
    o: RawTensor,
    workspace: u64,
    workspace_len: usize,
) -> Result<()> {
    plan.check_layouts(&q.layout, &k.layout, &v.layout, &o.layout)?;
    check_raw(dtype, [("q", &q), ("k", &k), ("v", &v), ("o", &o)])?;
    check_workspace(plan.workspace_bytes(), workspace, workspace_len)?;
    let p = kernel_params(plan, &q, &k, &v, &o);
    // SAFETY: layouts match the validated plan; pointers, spans and workspace per the contract.
    unsafe { queue(rt, stream, plan, dtype, p, workspace) }
}

/// cosFormer on device buffers. `workspace` may be `None` (then it is allocated for this call).
#[allow(clippy::too_many_arguments)]
pub fn forward<T: Element>(
    rt: &Runtime,
    stream: &Arc<CudaStream>,
    params: &CosformerParams,
    q: TensorRef<'_, T>,
    k: TensorRef<'_, T>,
    v: TensorRef<'_, T>,
    o: TensorMut<'_, T>,
    workspace: Option<&mut CudaSlice<u8>>,
) -> Result<()> {
    let plan = Plan::new(&q.layout, &k.layout, &v.layout, &o.layout, params)?;
    forward_with_plan(rt, stream, &plan, q, k, v, o, workspace)
}

/// [`forward`] with a caller-made plan (e.g. [`Plan::with_rows_per_chunk`]).
#[allow(clippy::too_many_arguments)]
pub fn forward_with_plan<T: Element>(
    rt: &Runtime,
    stream: &Arc<CudaStream>,
    plan: &Plan,
    q: TensorRef<'_, T>,
    k: TensorRef<'_, T>,
    v: TensorRef<'_, T>,
    o: TensorMut<'_, T>,
    workspace: Option<&mut CudaSlice<u8>>,
) -> Result<()> {
    plan.check_layouts(&q.layout, &k.layout, &v.layout, &o.layout)?;
    let ws = Some((workspace, plan.workspace_bytes()));
    with_raw(rt, stream, (q, k, v, o), ws, |t, wp, wl| {
        // SAFETY: every buffer is a live allocation of this context whose length was checked
        // against its layout; `o` is borrowed mutably, so it cannot alias the inputs.
        unsafe { forward_raw_with_plan(rt, stream, plan, T::DTYPE, t.q, t.k, t.v, t.o, wp, wl) }
    })
}

/// The shape of a decode state and the checks of calls against it (pure, no GPU).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct StateShape {
    pub b: usize,
    pub h: usize,
    pub d: usize,
    pub dv: usize,
    /// The fixed angle denominator.
    pub m: usize,
    pub relu: bool,
    pub eps: f64,
}

impl StateShape {
    /// Validates a state for B·H sequences; `params.m` must be given (decode needs a fixed M).
    pub fn new(b: usize, h: usize, d: usize, dv: usize, params: &CosformerParams) -> Result<Self> {
        let m = params
            .m
            .ok_or_else(|| Error::param("M", "None", "decode needs a fixed M"))?;
        params.resolve_m(1, 1)?;
        if m > MAX_LEN {
            return Err(Error::param("M", m, format!("must be <= {MAX_LEN}")));
        }
        if !((params.eps as f32) > 0.0 && (params.eps as f32).is_finite()) {
            return Err(Error::param(
                "eps",
                params.eps,
                "must be a positive, finite fp32 value",
            ));
        }
        for (arg, x) in [("B", b), ("H", h)] {
            if x == 0 {
                return Err(Error::param(arg, x, "must be >= 1"));
            }
        }
        for (arg, x) in [("D", d), ("Dv", dv)] {
            if x == 0 || x > MAX_HEAD_DIM {
                return Err(Error::param(
                    arg,
                    x,
                    format!("must be in 1..={MAX_HEAD_DIM}"),
                ));
            }
        }
        if b.checked_mul(h).is_none_or(|bh| bh > i32::MAX as usize) {
            return Err(Error::param("B·H", b.saturating_mul(h), "exceeds 2^31 - 1"));
        }
        Ok(StateShape {
            b,
            h,
            d,
            dv,
            m,
            relu: params.relu,
            eps: params.eps,
        })
    }

    /// fp32 elements of the whole state.
    pub fn len(&self) -> usize {
        self.b * self.h * state_len(self.d, self.dv)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn params(&self) -> CosformerParams {
        CosformerParams {
            m: Some(self.m),
            causal: true,
            relu: self.relu,
            eps: self.eps,
        }
    }

    /// Checks that q, k, v, o describe `n` new tokens of every sequence of this state.
    fn check_tensors(&self, q: &Layout, k: &Layout, v: &Layout, o: &Layout) -> Result<()> {
        let n = q.dims.n;
        for (arg, l, d) in [
            ("q", q, self.d),
            ("k", k, self.d),
            ("v", v, self.dv),
            ("o", o, self.dv),
        ] {
            let want = Dims::new(self.b, self.h, n, d);
            if l.dims != want {
                return Err(Error::shape(
                    "state",
                    format!(
                        "state is for B={}, H={}, D={}, Dv={}, but `{arg}` is {} (expected {want})",
                        self.b, self.h, self.d, self.dv, l.dims
                    ),
                ));
            }
        }
        Ok(())
    }

    fn check_room(&self, pos: usize, n: usize) -> Result<()> {
        if pos.checked_add(n).is_none_or(|end| end > self.m) {
            return Err(Error::param(
                "M",
                self.m,
                format!("{pos} tokens seen + {n} new would pass M"),
            ));
        }
        Ok(())
    }

    /// The causal plan of a prefill of `q.dims.n` tokens after `pos` tokens.
    pub fn prefill_plan(
        &self,
        pos: usize,
        q: &Layout,
        k: &Layout,
        v: &Layout,
        o: &Layout,
    ) -> Result<Plan> {
        self.check_tensors(q, k, v, o)?;
        self.check_room(pos, q.dims.n)?;
        Plan::new(q, k, v, o, &self.params())
    }

    /// Checks a decode step after `pos` tokens: one token (`[B,H,1,D]`, `[B,H,1,Dv]`).
    pub fn check_step(
        &self,
        pos: usize,
        q: &Layout,
        k: &Layout,
        v: &Layout,
        o: &Layout,
    ) -> Result<()> {
        if q.dims.n != 1 {
            return Err(Error::shape(
                "q",
                format!("a step takes one token per sequence, got {}", q.dims),
            ));
        }
        self.check_tensors(q, k, v, o)?;
        self.check_room(pos, 1)?;
        for (arg, l) in [("q", q), ("k", k), ("v", v), ("o", o)] {
            let span = l.span().unwrap_or(usize::MAX);
            l.validate(arg, span, MAX_HEAD_DIM)?;
        }
        Ok(())
    }
}

/// Causal decode state of B·H sequences at a fixed M: fp32 `KVs, KVc, zs, zc` per (b,h) on the
/// device, and the number of tokens seen so far (on the host).
pub struct State {
    shape: StateShape,
    pos: usize,
    buf: CudaSlice<f32>,
}

impl State {
    /// A zeroed state (queued on `stream`).
    pub fn new(
        rt: &Runtime,
        stream: &Arc<CudaStream>,
        b: usize,
        h: usize,
        d: usize,
        dv: usize,
        params: &CosformerParams,
    ) -> Result<Self> {
        let _ = rt;
        let shape = StateShape::new(b, h, d, dv, params)?;
        let buf = stream
            .alloc_zeros::<f32>(shape.len())
            .map_err(|e| oom_or(e, shape.len() * 4))?;
        Ok(State { shape, pos: 0, buf })
    }

    pub fn shape(&self) -> &StateShape {
        &self.shape
    }

    /// Tokens consumed so far; the next token sits at position `pos() + 1`.
    pub fn pos(&self) -> usize {
        self.pos
    }

    /// The device buffer `[B·H][state_len(D, Dv)]`.
    pub fn buffer(&self) -> &CudaSlice<f32> {
        &self.buf
    }

    /// Copies the state to the host (synchronizes `stream`).
    pub fn to_host(&self, stream: &Arc<CudaStream>) -> Result<Vec<f32>> {
        Ok(stream.clone_dtoh(&self.buf)?)
    }

    /// Workspace bytes of a prefill of `n` tokens.
    pub fn workspace_bytes(&self, n: usize) -> Result<usize> {
        let s = &self.shape;
        let q = Layout::contiguous(Dims::new(s.b, s.h, n, s.d));
        let v = Layout::contiguous(Dims::new(s.b, s.h, n, s.dv));
        Ok(Plan::new(&q, &q, &v, &v, &s.params())?.workspace_bytes())
    }

    /// Consumes `n` tokens (`q, k [B,H,n,D]`, `v, o [B,H,n,Dv]`), writing their causal outputs;
    /// positions continue from [`State::pos`].
    ///
    /// # Safety
    /// As [`forward_raw`]; the state must not be in use by work on another stream.
    #[allow(clippy::too_many_arguments)]
    pub unsafe fn prefill_raw(
        &mut self,
        rt: &Runtime,
        stream: &CudaStream,
        dtype: DType,
        q: RawTensor,
        k: RawTensor,
        v: RawTensor,
        o: RawTensor,
        workspace: u64,
        workspace_len: usize,
    ) -> Result<()> {
        let plan = self
            .shape
            .prefill_plan(self.pos, &q.layout, &k.layout, &v.layout, &o.layout)?;
        check_raw(dtype, [("q", &q), ("k", &k), ("v", &v), ("o", &o)])?;
        check_workspace(plan.workspace_bytes(), workspace, workspace_len)?;
        let mut p = kernel_params(&plan, &q, &k, &v, &o);
        let (sp, _gs) = ptr_of_mut(&mut self.buf, stream);
        p.state = sp;
        p.state_in = 1;
        p.pos0 = self.pos as i32;
        p.m = self.shape.m as i32;
        // SAFETY: validated plan; the state buffer holds B·H·state_len floats (made by `new`).
        unsafe { queue(rt, stream, &plan, dtype, p, workspace)? };
        self.pos += plan.n;
        Ok(())
    }

    /// One decode step: `q, k [B,H,1,D]`, `v, o [B,H,1,Dv]` at position `pos() + 1`.
    ///
    /// # Safety
    /// As [`forward_raw`] (no workspace); the state must not be in use by work on another stream.
    #[allow(clippy::too_many_arguments)]
    pub unsafe fn step_raw(
        &mut self,
        rt: &Runtime,
        stream: &CudaStream,
        dtype: DType,
        q: RawTensor,
        k: RawTensor,
        v: RawTensor,
        o: RawTensor,
    ) -> Result<()> {
        self.shape
            .check_step(self.pos, &q.layout, &k.layout, &v.layout, &o.layout)?;
        check_raw(dtype, [("q", &q), ("k", &k), ("v", &v), ("o", &o)])?;
        let s = self.shape;
        let plan = Plan::new(&q.layout, &k.layout, &v.layout, &o.layout, &s.params())?;
        let mut p = kernel_params(&plan, &q, &k, &v, &o);
        let (sp, _gs) = ptr_of_mut(&mut self.buf, stream);
        p.state = sp;
        p.pos0 = self.pos as i32;
        p.m = s.m as i32;
        let f = rt.function(FAMILY, &format!("cosformer_step_{}", dtype.name()))?;
        // SAFETY: one CTA per (b,h) reads one row of q, k, v and writes one row of o (validated
        // layouts) and updates its own state slice; D, Dv ≤ 256 = threads per CTA.
        unsafe { launch(stream, &f, (grid_dim(s.b * s.h), 1, 1), THREADS, &p)? };
        self.pos += 1;
        Ok(())
    }

    /// Safe [`State::prefill_raw`] over device buffers (`workspace` allocated when `None`).
    #[allow(clippy::too_many_arguments)]
    pub fn prefill<T: Element>(
        &mut self,
        rt: &Runtime,
        stream: &Arc<CudaStream>,
        q: TensorRef<'_, T>,
        k: TensorRef<'_, T>,
        v: TensorRef<'_, T>,
        o: TensorMut<'_, T>,
        workspace: Option<&mut CudaSlice<u8>>,
    ) -> Result<()> {
        let plan = self
            .shape
            .prefill_plan(self.pos, &q.layout, &k.layout, &v.layout, &o.layout)?;
        let ws = Some((workspace, plan.workspace_bytes()));
        with_raw(rt, stream, (q, k, v, o), ws, |t, wp, wl| {
            // SAFETY: live allocations of this context, lengths checked against their layouts;
            // `o` is borrowed mutably, so it cannot alias the inputs; the state is borrowed
            // mutably.
            unsafe { self.prefill_raw(rt, stream, T::DTYPE, t.q, t.k, t.v, t.o, wp, wl) }
        })
    }

    /// Safe [`State::step_raw`] over device buffers.
    pub fn step<T: Element>(
        &mut self,
        rt: &Runtime,
        stream: &Arc<CudaStream>,
        q: TensorRef<'_, T>,
        k: TensorRef<'_, T>,
        v: TensorRef<'_, T>,
        o: TensorMut<'_, T>,
    ) -> Result<()> {
        with_raw(rt, stream, (q, k, v, o), None, |t, _, _| {
            // SAFETY: as in `prefill`.
            unsafe { self.step_raw(rt, stream, T::DTYPE, t.q, t.k, t.v, t.o) }
        })
    }
}
