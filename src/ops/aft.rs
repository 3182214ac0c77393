//! AFT — attention free transformer (SPEC §3): per channel,
//! `Y_t = σ(Q_t) ⊙ Σ_{t'} exp(K_{t'} + w_{t,t'}) V_{t'} / Σ_{t'} exp(K_{t'} + w_{t,t'})`.
//!
//! Causal AFT-simple, a per-channel prefix sum, runs as one single-pass scan (K, V, Q read once;
//! a look-back over per-chunk aggregates folded in chunk order: deterministic). Non-causal
//! AFT-simple runs two persistent streaming passes: per-part totals of K, V (max, `Σ e·V`, `Σ e`)
//! over ranges of rows, then Q mapped with the whole-sequence ratio, which every CTA folds from
//! the parts in one fixed order (kernels/aft_simple.cuh). Every other variant first summarizes
//! K, V per 64-row chunk and scans those statistics into prefixes and suffixes (fixed order:
//! deterministic), then runs one window kernel per 64-row tile:
//! a dense weight block against `[E⊙V | E]` over the keys whose weight varies inside the tile
//! (the band for local/conv, the diagonal when causal, every key for full), plus the statistics
//! outside it. `exp` never sees an unshifted value; a denominator that still underflows (K and w
//! peaking at different keys) is recomputed directly with the joint max. The window block product
//! runs on tensor cores for f16/bf16 storage (operands of the storage type, f16 ones scaled into
//! range by the channel's max |V|; fp32 accumulation) and on fp32 CUDA cores for f32 storage (its
//! 1e-5 tolerance); everything else is fp32 CUDA-core work. AFT-full with f16/bf16 storage runs
//! one GEMM over every slice at once instead (`exp(w − r_t)` is shared by all of them; the row
//! references r_t are running maxima kept inside the GEMM, so w is read once;
//! kernels/aft_full_tc.cuh).
//! Any D ≤ 256, any strides with a unit last dim. The bias (`w`, `u`) is fp32 on the device.

use super::{
    check_raw, check_workspace, ctas_per_slice, launch, launch_smem, ptr_of, try_launch_smem,
    with_raw, zero_u32, RawTensor, TensorMut, TensorRef, MAX_HEAD_DIM,
};
use crate::error::{Error, Result};
use crate::runtime::Runtime;
use crate::tensor::{DType, Dims, Element, Layout};
use cudarc::driver::{CudaSlice, CudaStream};
use std::mem::{offset_of, size_of};
use std::sync::Arc;

pub use crate::reference::aft::AftParams;

const FAMILY: &str = "aft";
const THREADS: u32 = 256; // AFT_THREADS
/// Rows per chunk of the statistics and per tile of the window kernel (AFT_CHUNK).
pub const CHUNK: usize = 64;
const CT: usize = 64; // AFT_CT
const TC_THREADS: u32 = 128; // AFT_TC_THREADS
const TC_LD: usize = 72; // AFT_TC_LD: floats per row of the window kernels' ratio tile

// aft_full_tc (kernels/aft_full_tc.cuh): bmat columns per channel tile, CTA rows and columns,
// threads, dynamic shared memory (two stages of a 128 × 40 and a 32 × 264 16-bit tile, the rows'
// exponent offsets, two stages of row moves: 128 (factor, token) pairs and 8 warp flags).
const FG_TILE: usize = 128; // AFT_FG_TILE
const FG_ROWS: usize = 128; // AFT_FG_ROWS
const FG_COLS: usize = 256; // AFT_FG_COLS
const FG_THREADS: u32 = 256; // AFT_FG_THREADS
const FG_SMEM: u32 = (2 * (128 * 40 + 32 * 264) * 2 + 128 * 4 + 2 * (128 * 8 + 8 * 4)) as u32; // AFT_FG_SMEM

// aft_full_tc_cl (sm_90): clusters of FG_CL column CTAs share the exp(w) tile; FG_AST A stages
// (and as many of row moves, with 8 flags per CTA of the cluster); FG_NB stages of the bmat block
// and of w (256 threads × 2 slots × 8 bytes), copied AFT_FG_AHEAD = FG_NB − 1 blocks ahead.
const FG_CL: usize = 4; // AFT_FG_CL
const FG_AST: usize = 4; // AFT_FG_AST
const FG_NB: usize = 5; // AFT_FG_NB
const FG_CL_SMEM: u32 = (FG_AST * 128 * 40 * 2
    + FG_NB * (32 * 264 * 2 + 256 * 2 * 8)
    + 32 * 4
    + FG_AST * (128 * 8 + 8 * FG_CL * 4)) as u32; // AFT_FG_CL_SMEM

const ROWMAX_ROWS: usize = 8; // warps per CTA of aft_rowmax
const SC_ROWS: usize = 128; // AFT_SC_ROWS: rows per chunk of aft_simple_causal
/// Most partial statistics per slice of non-causal AFT-simple (AFT_PARTS_MAX): its workspace.
const PARTS_MAX: usize = 128;
const MAX_GRID_YZ: usize = 65535;

/// A grid's y or z extent for `x` units of work (the kernels grid-stride past 65535).
fn grid_yz(x: usize) -> u32 {
    x.clamp(1, MAX_GRID_YZ) as u32
}
/// Largest T accepted (rows are 32-bit ints in the kernels, with room for window arithmetic).
pub const MAX_T: usize = (i32::MAX / 4) as usize;

/// An AFT variant and the extent of its position bias.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Variant {
    /// No bias.
    Simple,
    /// Band `w [T, 2s−1]`, 0 outside the band.
    Local { window: usize },
    /// Per-head `u [H, 2s−1]`, 0 outside the window.
    Conv { window: usize },
    /// `w [T, T]`.
    Full,
}

impl Variant {
    /// The operator's name (`aft_simple`, `aft_local`, `aft_conv`, `aft_full`).
    pub fn name(self) -> &'static str {
        match self {
            Variant::Simple => "aft_simple",
            Variant::Local { .. } => "aft_local",
            Variant::Conv { .. } => "aft_conv",
            Variant::Full => "aft_full",
        }
    }

    fn code(self) -> i32 {
        match self {
            Variant::Simple => 0,
            Variant::Local { .. } => 1,
            Variant::Conv { .. } => 2,
            Variant::Full => 3,
        }
    }

    fn window(self) -> usize {
        match self {
            Variant::Local { window } | Variant::Conv { window } => window,
            _ => 0,
        }
    }

    /// The bias argument's name and the fp32 elements it must hold for T and H (`None`: no bias).
    pub fn bias_len(self, t: usize, h: usize) -> Result<Option<(&'static str, usize)>> {
        let band = |s: usize| -> Result<usize> {
            if s == 0 {
                return Err(Error::param("window", 0, "must be >= 1"));
            }
            if s > MAX_T {
                return Err(Error::param("window", s, format!("must be <= {MAX_T}")));
            }
            Ok(2 * s - 1)
        };
        let need = match self {
            Variant::Simple => return Ok(None),
            Variant::Local { window } => ("w", band(window)?.checked_mul(t)),
            Variant::Conv { window } => ("u", band(window)?.checked_mul(h)),
            Variant::Full => ("w", t.checked_mul(t)),
        };
        match need {
            (arg, Some(n)) => Ok(Some((arg, n))),
            (arg, None) => Err(Error::shape(
                arg,
                format!("{} bias size overflows", self.name()),
            )),
        }
    }
}

/// Mirror of `AftParams` in kernels/aft.cuh.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct KernelParams {
    pub q: u64,
    pub k: u64,
    pub v: u64,
    pub o: u64,
    pub w: u64,
    pub part: u64,
    pub pre: u64,
    pub suf: u64,
    pub rmax: u64,
    pub vmax: u64,
    pub bmat: u64,
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
    pub t: i32,
    pub d: i32,
    pub variant: i32,
    pub window: i32,
    pub causal: i32,
    pub chunks: i32,
    pub bcols: i32,
    /// Band kernels: slices per CTA (conv: 1).
    pub group: i32,
    /// Chunk pass order: tiles per strip of the window pass (`aft_chunk_block`; 0: grid order).
    pub strip: i32,
    /// `aft_simple_reduce` / `_map`: partial statistics per slice (≤ [`PARTS_MAX`]).
    pub parts: i32,
    /// `aft_simple_causal`: its look-back flags and ticket counter (u32), zeroed before it runs.
    pub flags: u64,
}

// SAFETY: plain old data with the C layout asserted below.
unsafe impl cudarc::driver::DeviceRepr for KernelParams {}

const _: () = {
    assert!(size_of::<KernelParams>() == 240); // AFT_PARAMS_SIZE
    assert!(offset_of!(KernelParams, w) == 32);
    assert!(offset_of!(KernelParams, rmax) == 64);
    assert!(offset_of!(KernelParams, bmat) == 80);
    assert!(offset_of!(KernelParams, q_sb) == 88);
    assert!(offset_of!(KernelParams, o_sn) == 176);
    assert!(offset_of!(KernelParams, b) == 184);
    assert!(offset_of!(KernelParams, chunks) == 212);
    assert!(offset_of!(KernelParams, bcols) == 216);
    assert!(offset_of!(KernelParams, strip) == 224);
    assert!(offset_of!(KernelParams, parts) == 228);
    assert!(offset_of!(KernelParams, flags) == 232);
};

/// A validated launch plan for one call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Plan {
    pub dims: Dims,
    pub variant: Variant,
    pub causal: bool,
    /// 64-row chunks of the sequence.
    pub chunks: usize,
    /// The bias argument and its required length, if the variant has one.
    pub bias: Option<(&'static str, usize)>,
}

impl Plan {
    /// Checks q, k, v, o (all `[B,H,T,D]`), the variant's window and the parameters.
    pub fn new(
        q: &Layout,
        k: &Layout,
        v: &Layout,
        o: &Layout,
        variant: Variant,
        params: &AftParams,
    ) -> Result<Self> {
        let dims = q.dims;
        for (arg, l) in [("k", k), ("v", v), ("o", o)] {
            if l.dims != dims {
                return Err(Error::shape(
                    arg,
                    format!(
                        "{} does not match q {dims} (AFT needs S = T and Dv = D)",
                        l.dims
                    ),
                ));
            }
        }
        for (arg, l) in [("q", q), ("k", k), ("v", v), ("o", o)] {
            let span = l.span().unwrap_or(usize::MAX);
            l.validate(arg, span, MAX_HEAD_DIM)?;
        }
        let Dims { b, h, n, d } = dims;
        if n > MAX_T {
            return Err(Error::shape("q", format!("T = {n} exceeds {MAX_T}")));
        }
        let ctiles = d.div_ceil(CT);
        let tiles = b.checked_mul(h).and_then(|bh| bh.checked_mul(ctiles));
        // AFT-full also indexes 128 bmat columns per tile with 32-bit ints.
        let limit = if variant == Variant::Full {
            i32::MAX as usize / FG_TILE - 1
        } else {
            super::MAX_SLICES // `int` slice loops step by up to the slice count (or + group)
        };
        if tiles.is_none_or(|x| x > limit) {
            return Err(Error::shape(
                "q",
                format!("B·H·⌈D/64⌉ = {b}·{h}·{ctiles} exceeds {limit}"),
            ));
        }
        let bias = variant.bias_len(n, h)?;
        let plan = Plan {
            dims,
            variant,
            causal: params.causal,
            chunks: n.div_ceil(CHUNK),
            bias,
        };
        plan.workspace_floats()
            .ok_or_else(|| Error::shape("q", format!("workspace for {dims} overflows")))?;
        Ok(plan)
    }

    /// Whether this is non-causal AFT-simple: whole-sequence totals from at most [`PARTS_MAX`]
    /// partial statistics per slice, no chunk statistics or prefixes.
    fn simple_totals(&self) -> bool {
        self.variant == Variant::Simple && !self.causal
    }

    /// Whether the scan also writes suffix statistics (non-causal local/conv).
    fn needs_suffix(&self) -> bool {
        !self.causal && matches!(self.variant, Variant::Local { .. } | Variant::Conv { .. })
    }

    /// Whether the workspace holds the AFT-full tensor-core GEMM's operand (`bmat`). Used for
    /// f16/bf16 storage; sized for every dtype, so that the workspace does not depend on it.
    fn full_gemm(&self) -> bool {
        self.variant == Variant::Full
    }

    /// Whether a window or GEMM kernel may run (everything but non-causal AFT-simple): then the
    /// workspace holds max |V| per chunk (`vmax`, the f16 operand scale; also sized for every
    /// dtype).
    /// Causal AFT-simple keeps the array for its look-back flags (one `u32` per slice and
    /// 128-row chunk, and a ticket counter).
    fn needs_vmax(&self) -> bool {
        self.variant != Variant::Simple || self.causal
    }

    /// AFT-local's or AFT-conv's band for the band kernels: the most keys a 64-row tile sums
    /// densely (its window [lo, hi) of aft_window_of), when at most [`BAND_MAX_KEYS`].
    fn band_keys(&self) -> Option<usize> {
        let (Variant::Local { window } | Variant::Conv { window }) = self.variant else {
            return None;
        };
        let reach = (window - 1).div_ceil(CHUNK); // chunks of keys on each side of the tile
        let keys = CHUNK * (1 + if self.causal { reach } else { 2 * reach });
        (keys <= BAND_MAX_KEYS).then_some(keys)
    }

    /// Columns of bmat: 128 per channel tile of every (b,h), an even number of tiles.
    fn bcols(&self) -> usize {
        let Dims { b, h, d, .. } = self.dims;
        (b * h * d.div_ceil(CT)).div_ceil(2) * 2 * FG_TILE
    }

    /// fp32 values of each workspace array: part, pre, suf, rmax, vmax, bmat (16-bit values,
    /// plus room to start it on a 16-byte boundary).
    fn arrays(&self) -> Option<[usize; 6]> {
        let Dims { b, h, n, d } = self.dims;
        let per = b.checked_mul(h)?.checked_mul(3 * d)?;
        if self.simple_totals() {
            return Some([per.checked_mul(self.chunks.min(PARTS_MAX))?, 0, 0, 0, 0, 0]);
        }
        let part = per.checked_mul(self.chunks)?;
        let pre = per.checked_mul(self.chunks + 1)?;
        let suf = if self.needs_suffix() { pre } else { 0 };
        let rmax = if self.variant == Variant::Full { n } else { 0 };
        let vmax = if self.needs_vmax() { pre / 3 } else { 0 };
        let bmat = if self.full_gemm() {
            n.checked_mul(self.bcols() / 2)?.checked_add(4)?
        } else {
            0
        };
        Some([part, pre, suf, rmax, vmax, bmat])
    }

    fn workspace_floats(&self) -> Option<usize> {
        let sum = self
            .arrays()?
            .iter()
            .try_fold(0usize, |s, &x| s.checked_add(x))?;
        sum.checked_mul(4).map(|_| sum)
    }

    /// Scratch bytes: chunk statistics, their prefixes (and suffixes), max |V| per chunk; for
    /// full also w's row maxima and the GEMM operand `[E⊙V | E]` (2·T·128 bytes per 64-channel
    /// tile of every (b,h)). Non-causal simple: only its partial statistics, at most
    /// [`PARTS_MAX`] per (b,h) whatever T (1.6 MB at B·H = 16, D = 64).
    pub fn workspace_bytes(&self) -> usize {
        self.workspace_floats().unwrap_or(usize::MAX / 4) * 4
    }

    fn check_bias(&self, ptr: u64, len: usize) -> Result<()> {
        match self.bias {
            None if ptr != 0 || len != 0 => Err(Error::param(
                "bias",
                format!("{ptr:#x}"),
                "aft_simple takes no bias",
            )),
            None => Ok(()),
            Some((arg, need)) => {
                if len != need {
                    return Err(Error::shape(
                        arg,
                        format!(
                            "{} needs {need} fp32 values for T = {}, H = {}, has {len}",
                            self.variant.name(),
                            self.dims.n,
                            self.dims.h
                        ),
                    ));
                }
                if ptr == 0 || ptr % 4 != 0 {
                    return Err(Error::param(
                        arg,
                        format!("{ptr:#x}"),
                        "must be non-null and 4-byte aligned",
                    ));
                }
                Ok(())
            }
        }
    }
}

/// Scratch bytes for `[B,H,T,D]` inputs of `variant` (independent of strides and dtype).
pub fn workspace_bytes(dims: Dims, variant: Variant, params: &AftParams) -> Result<usize> {
    let l = Layout::contiguous(dims);
    Ok(Plan::new(&l, &l, &l, &l, variant, params)?.workspace_bytes())
}

fn strides(l: &Layout) -> [i64; 3] {
    [
        l.strides.batch as i64,
        l.strides.head as i64,
        l.strides.seq as i64,
    ]
}

/// Non-causal AFT-simple: `aft_simple_reduce` (about one wave of CTAs, each folding a range of
/// 64-row blocks of one slice into a part) then `aft_simple_map` (likewise over Q, each CTA
/// folding its slice's parts first). Parts per slice: as many as one wave holds, at most
/// [`PARTS_MAX`] and one per block.
///
/// # Safety
/// As [`forward_raw`], with `p` filled from its validated arguments.
unsafe fn queue_simple_totals(
    rt: &Runtime,
    stream: &CudaStream,
    plan: &Plan,
    dtype: DType,
    mut p: KernelParams,
) -> Result<()> {
    let Dims { b, h, d, .. } = plan.dims;
    let slices = b * h * d.div_ceil(CT);
    let dt = dtype.name();
    let reduce = rt.function(FAMILY, &format!("aft_simple_reduce_{dt}"))?;
    let map = rt.function(FAMILY, &format!("aft_simple_map_{dt}"))?;
    let per_slice = |f| -> Result<usize> {
        let slots = rt.resident_ctas(f, THREADS, 0)?;
        Ok(ctas_per_slice(slots, slices).min(plan.chunks))
    };
    let parts = per_slice(&reduce)?.min(PARTS_MAX);
    let map_ctas = per_slice(&map)?;
    p.parts = parts as i32;
    // SAFETY: parts ≤ min(chunks, PARTS_MAX) statistics per slice fit the part array; the grids
    // cover every part and block (the kernels grid-stride over slices past 65535).
    unsafe {
        launch(
            stream,
            &reduce,
            (parts as u32, grid_yz(slices), 1),
            THREADS,
            &p,
        )?;
        launch(
            stream,
            &map,
            (map_ctas as u32, grid_yz(slices), 1),
            THREADS,
            &p,
        )
    }
}

/// Launches AFT on raw device pointers. `bias` is the fp32 `w` (local, full) or `u` (conv)
/// holding `bias_len` values (0 and 0 for simple).
///
/// # Safety
/// Each pointer must address device memory of this runtime's context that holds its layout's
/// span in elements of `dtype` (q, k, v readable; o writable and not aliasing the inputs), `bias`
/// must hold `bias_len` fp32 values, and `workspace` must hold `workspace_len ≥
/// Plan::workspace_bytes` bytes, 4-byte aligned. They must stay valid until the work queued on
/// `stream` completes.
#[allow(clippy::too_many_arguments)]
pub unsafe fn forward_raw(
    rt: &Runtime,
    stream: &CudaStream,
    variant: Variant,
    params: &AftParams,
    dtype: DType,
    q: RawTensor,
    k: RawTensor,
    v: RawTensor,
    o: RawTensor,
    bias: u64,
    bias_len: usize,
    workspace: u64,
    workspace_len: usize,
) -> Result<()> {
    let plan = Plan::new(&q.layout, &k.layout, &v.layout, &o.layout, variant, params)?;
    check_raw(dtype, [("q", &q), ("k", &k), ("v", &v), ("o", &o)])?;
    plan.check_bias(bias, bias_len)?;
    check_workspace(plan.workspace_bytes(), workspace, workspace_len)?;

    let Dims { b, h, n, d } = plan.dims;
    let [part, pre, suf, rmax, vmax, _] = plan.arrays().unwrap_or_default();
    let at = |floats: usize| workspace + 4 * floats as u64;
    // The tensor-core GEMM of AFT-full (16-bit storage; f32 keeps the window kernel).
    let gemm = plan.full_gemm() && dtype != DType::F32;
    let bcols = if gemm { plan.bcols() } else { 0 };
    let [q_sb, q_sh, q_sn] = strides(&q.layout);
    let [k_sb, k_sh, k_sn] = strides(&k.layout);
    let [v_sb, v_sh, v_sn] = strides(&v.layout);
    let [o_sb, o_sh, o_sn] = strides(&o.layout);
    let mut p = KernelParams {
        q: q.ptr,
        k: k.ptr,
        v: v.ptr,
        o: o.ptr,
        w: bias,
        part: workspace,
        pre: at(part),
        suf: if plan.needs_suffix() {
            at(part + pre)
        } else {
            0
        },
        // w's row maxima: the f32 window kernel's (the GEMM keeps running ones).
        rmax: if variant == Variant::Full && !gemm {
            at(part + pre + suf)
        } else {
            0
        },
        // max |V| per chunk: the f16 operand scale of the tensor-core kernels.
        vmax: if dtype != DType::F32 && plan.needs_vmax() {
            at(part + pre + suf + rmax)
        } else {
            0
        },
        bmat: if gemm {
            at(part + pre + suf + rmax + vmax).next_multiple_of(16)
        } else {
            0
        },
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
        b: b as i32,
        h: h as i32,
        t: n as i32,
        d: d as i32,
        variant: variant.code(),
        window: variant.window().min(MAX_T) as i32,
        causal: params.causal as i32,
        chunks: plan.chunks as i32,
        bcols: bcols as i32,
        group: 0,
        strip: 0,
        parts: 0,
        flags: 0,
    };
    let bh = b * h;
    let ctiles = d.div_ceil(CT);
    let dt = dtype.name();
    // Causal AFT-simple in one launch (one CTA per slice and 128-row chunk, while they fit in
    // a grid): a single-pass scan whose aggregates and inclusive prefixes take the statistics
    // arrays, and its flags and ticket counter the max |V| array, which is at least as large
    // (kernels/aft_simple_causal.cuh).
    let ctas = bh * ctiles * n.div_ceil(SC_ROWS);
    if variant == Variant::Simple && params.causal && ctas < i32::MAX as usize {
        p.flags = at(part + pre + suf + rmax);
        let f = rt.function(FAMILY, &format!("aft_simple_causal_{dt}"))?;
        // SAFETY: the flags fit the max |V| array (`Plan::arrays`); the grid is one CTA per
        // ticket (slice and chunk), and the kernel reads and writes only validated extents.
        unsafe {
            zero_u32(stream, p.flags, ctas + 1)?;
            launch(stream, &f, (ctas as u32, 1, 1), THREADS, &p)?;
        }
        return Ok(());
    }
    if plan.simple_totals() {
        // SAFETY: as above; the parts fit the workspace's part array (`Plan::arrays`).
        return unsafe { queue_simple_totals(rt, stream, &plan, dtype, p) };
    }
    // The window pass, if one follows; the chunk pass then reads K, V in the reverse of its
    // progress, so that the window pass's first reads may still be in L2.
    let window = (variant != Variant::Simple || params.causal) && !gemm;
    let window = window.then(|| window_launch(&plan, dtype, rt.info().multiprocessors as usize));
    if let Some(w) = &window {
        p.strip = w.strip as i32;
        p.bcols = w.bcols as i32;
        p.group = w.group as i32;
    }
    let chunk = rt.function(FAMILY, &format!("aft_chunk_{dt}"))?;
    let scan = rt.function(FAMILY, "aft_scan_f32")?;
    // SAFETY: pointers, spans, bias and workspace validated above and by the caller's contract;
    // the workspace arrays are laid out as `Plan::arrays` sizes them.
    unsafe {
        launch(
            stream,
            &chunk,
            (plan.chunks as u32, grid_yz(bh), ctiles as u32),
            THREADS,
            &p,
        )?;
        launch(
            stream,
            &scan,
            (d.div_ceil(32) as u32, grid_yz(bh), 1),
            THREADS,
            &p,
        )?;
        if variant == Variant::Full && !gemm {
            let rowmax = rt.function(FAMILY, "aft_rowmax_f32")?;
            launch(
                stream,
                &rowmax,
                (n.div_ceil(ROWMAX_ROWS) as u32, 1, 1),
                THREADS,
                &p,
            )?;
        }
        if gemm {
            let operand = rt.function(FAMILY, &format!("aft_full_b_{dt}"))?;
            launch(
                stream,
                &operand,
                (plan.chunks as u32, grid_yz(bcols / FG_TILE), 1),
                THREADS,
                &p,
            )?;
            let grid = ((bcols / FG_COLS) as u32, grid_yz(n.div_ceil(FG_ROWS)), 1);
            if queue_full_cluster(rt, stream, dtype, grid, &p)? {
                return Ok(());
            }
            let product = rt.function(FAMILY, &format!("aft_full_tc_{dt}"))?;
            rt.check_dynamic_smem(&product, FG_SMEM)?;
            launch_smem(stream, &product, grid, FG_THREADS, FG_SMEM, &p)?;
            return Ok(());
        }
        if let Some(w) = window {
            let f = rt.function(FAMILY, &w.name)?;
            if w.smem > 0 {
                rt.check_dynamic_smem(&f, w.smem)?;
            }
            launch_smem(stream, &f, w.grid, w.threads, w.smem, &p)?;
        }
    }
    Ok(())
}

/// The window pass's launch: kernel, grid, CTA size, dynamic shared memory, and its parameters
/// (`bcols`, `group`, and the `strip` length that orders the chunk pass before it).
struct WindowLaunch {
    name: String,
    grid: (u32, u32, u32),
    threads: u32,
    smem: u32,
    bcols: usize,
    group: usize,
    strip: usize,
}

fn window_launch(plan: &Plan, dtype: DType, sms: usize) -> WindowLaunch {
    let Dims { b, h, d, .. } = plan.dims;
    let slices = b * h * d.div_ceil(CT);
    if let Some(keys) = plan.band_keys().filter(|_| dtype != DType::F32) {
        // The W band staged at once and reused: AFT-local, once per tile for a group of slices
        // (w is shared by all of them), groups small enough to keep ≥ 4 CTAs per SM busy;
        // AFT-conv, once per strip of tiles of one slice (u is per head; interior tiles share
        // it), strips long but as many as 4 CTAs per SM hold in one wave (`ctas_per_slice`).
        let (name, group, grid_y, strip) = if matches!(plan.variant, Variant::Conv { .. }) {
            let strips = grid_yz(ctas_per_slice(4 * sms, slices).min(plan.chunks));
            let strip = plan.chunks.div_ceil(strips as usize); // tiles a CTA walks
            ("aft_window_band_conv_tc", 1, strips, strip)
        } else {
            let group = (slices * plan.chunks / (4 * sms)).clamp(1, BAND_MAX_GROUP);
            (
                "aft_window_band_tc",
                group,
                grid_yz(plan.chunks),
                plan.chunks,
            )
        };
        return WindowLaunch {
            name: format!("{name}_{}", dtype.name()),
            grid: (slices.div_ceil(group) as u32, grid_y, 1),
            threads: TC_THREADS,
            smem: band_smem_bytes(keys),
            bcols: keys,
            group,
            strip,
        };
    }
    let (name, threads) = window_kernel(dtype);
    WindowLaunch {
        name,
        grid: (slices as u32, grid_yz(plan.chunks), 1),
        threads,
        smem: 0,
        bcols: 0,
        group: 0,
        strip: plan.chunks,
    }
}

/// Largest slice group of the AFT-local band kernel.
const BAND_MAX_GROUP: usize = 8;
/// Largest band (keys per 64-row tile) the band kernel stages: s ≤ 65, causal s ≤ 129; wider
/// windows keep the per-block W staging (the band's shared memory would cut occupancy).
const BAND_MAX_KEYS: usize = 192;

/// Dynamic shared memory of `aft_window_band_tc` (aft_band_smem_bytes): the band [64][keys + 8]
/// of 16-bit W, then the kv | ratio union.
const fn band_smem_bytes(keys: usize) -> u32 {
    (CHUNK * (keys + 8) * 2 + CHUNK * TC_LD * 4) as u32
}
const _: () = assert!(band_smem_bytes(BAND_MAX_KEYS) == 44032); // aft_band_smem_bytes(192)

/// Queues the AFT-full product on clusters of `FG_CL` CTAs sharing each exp(w) tile (sm_90).
/// False when it does not apply (an earlier device, a column-pair count that is not a multiple of
/// the cluster, less shared memory per block than it needs), the build has no sm_90 image of it,
/// or the driver refused the launch: nothing was queued, and the single-CTA kernel must run.
///
/// # Safety
/// As the launch in [`forward_raw`]: `p` describes validated buffers and workspace.
unsafe fn queue_full_cluster(
    rt: &Runtime,
    stream: &CudaStream,
    dtype: DType,
    grid: (u32, u32, u32),
    p: &KernelParams,
) -> Result<bool> {
    if rt.info().compute_capability.0 < 9 || grid.0 as usize % FG_CL != 0 {
        return Ok(false);
    }
    let Ok(f) = rt.function(FAMILY, &format!("aft_full_tc_cl_{}", dtype.name())) else {
        return Ok(false);
    };
    // 147 KB: a device with less shared memory per block takes the single-CTA kernel (54 KB).
    if !rt.fits_dynamic_smem(&f, FG_CL_SMEM)? {
        return Ok(false);
    }
    // SAFETY: forwarded contract; the grid's x is a whole number of clusters.
    unsafe { try_launch_smem(stream, &f, grid, FG_THREADS, FG_CL_SMEM, p) }
}

/// The window kernel for `dtype` and its CTA size: tensor cores for 16-bit storage, fp32 CUDA
/// cores for f32.
fn window_kernel(dtype: DType) -> (String, u32) {
    match dtype {
        DType::F32 => ("aft_window_f32".into(), THREADS),
        _ => (format!("aft_window_tc_{}", dtype.name()), TC_THREADS),
    }
}

/// AFT on device buffers. `bias` is the fp32 `w`/`u` of the variant (`None` for simple);
/// `workspace` may be `None` (then it is allocated for this call).
#[allow(clippy::too_many_arguments)]
pub fn forward<T: Element>(
    rt: &Runtime,
    stream: &Arc<CudaStream>,
    variant: Variant,
    params: &AftParams,
    q: TensorRef<'_, T>,
    k: TensorRef<'_, T>,
    v: TensorRef<'_, T>,
    o: TensorMut<'_, T>,
    bias: Option<&CudaSlice<f32>>,
    workspace: Option<&mut CudaSlice<u8>>,
) -> Result<()> {
    let plan = Plan::new(&q.layout, &k.layout, &v.layout, &o.layout, variant, params)?;
    let ws = Some((workspace, plan.workspace_bytes()));
    let (bp, _guard) = match bias {
        Some(w) => {
            let (p, g) = ptr_of(w, stream);
            (p, Some(g))
        }
        None => (0, None),
    };
    let blen = bias.map_or(0, |w| w.len());
    with_raw(rt, stream, (q, k, v, o), ws, |t, wp, wl| {
        // SAFETY: every buffer is a live allocation of this context whose length was checked
        // against its layout (the bias's length by `forward_raw`); `o` is borrowed mutably, so it
        // cannot alias the inputs.
        unsafe {
            forward_raw(
                rt,
                stream,
                variant,
                params,
                T::DTYPE,
                t.q,
                t.k,
                t.v,
                t.o,
                bp,
                blen,
                wp,
                wl,
            )
        }
    })
}

#[cfg(test)]
mod tests {
    /// The launch geometry above is the kernels' (`#define`s in kernels/aft.cuh, aft_tc.cuh).
    #[test]
    fn geometry_matches_the_kernel_headers() {
        let src = [
            include_str!("../../kernels/aft.cuh"),
            include_str!("../../kernels/aft_tc.cuh"),
            include_str!("../../kernels/aft_full_tc.cuh"),
        ]
        .concat();
        let define = |name: &str| -> usize {
            let line = src
                .lines()
                .find(|l| l.split_whitespace().nth(1) == Some(name))
                .unwrap_or_else(|| panic!("no #define {name}"));
            line.split_whitespace().nth(2).unwrap().parse().unwrap()
        };
        assert_eq!(define("AFT_THREADS"), super::THREADS as usize);
        assert_eq!(define("AFT_CHUNK"), super::CHUNK);
        assert_eq!(define("AFT_CT"), super::CT);
        assert_eq!(define("AFT_TC_THREADS"), super::TC_THREADS as usize);
        assert_eq!(define("AFT_FG_TILE"), super::FG_TILE);
        assert_eq!(define("AFT_FG_ROWS"), super::FG_ROWS);
        assert_eq!(define("AFT_FG_COLS"), super::FG_COLS);
        assert_eq!(define("AFT_FG_THREADS"), super::FG_THREADS as usize);
        let (rows, kb) = (define("AFT_FG_ROWS"), define("AFT_FG_KB"));
        let (ald, bld) = (define("AFT_FG_ALD"), define("AFT_FG_BLD"));
        let smem = 2 * (rows * ald + kb * bld) * 2 + rows * 4 + 2 * (rows * 8 + 8 * 4);
        assert_eq!(smem, super::FG_SMEM as usize);
        let cl = define("AFT_FG_CL");
        assert_eq!(cl, super::FG_CL);
        let (nb, ast) = (define("AFT_FG_AHEAD") + 1, define("AFT_FG_AST"));
        assert_eq!((nb, ast), (super::FG_NB, super::FG_AST));
        let wstage = define("AFT_FG_THREADS") * 2 * 8;
        let smem_cl = ast * rows * ald * 2
            + nb * (kb * bld * 2 + wstage)
            + rows / cl * 4
            + ast * (rows * 8 + 8 * cl * 4);
        assert_eq!(smem_cl, super::FG_CL_SMEM as usize);
    }
}
