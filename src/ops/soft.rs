//! SOFT (SPEC §1): Gaussian-kernel Nyström attention with a Newton–Raphson pseudo-inverse,
//! `X = P·(Z·(P_kᵀ·V))` with `P = exp(−½D²(Qs, L))`, `Qs = Q / D^¼`.
//!
//! The pieces, each its own launch and testable alone:
//! * [`landmarks`]: AvgPool1d / AvgPool2d of the scaled keys into fp32 `L [B,H,m,D]`, or the
//!   caller's `Given` landmarks;
//! * [`gaussian_products`]: materialized fp32 `P [B,H,N,m]` and `A [B,H,m,m]` (squared distances
//!   as sums of squared differences);
//! * [`newton_pinv`]: the batched fp32 Newton iteration of SPEC §1.4, all T steps in one launch
//!   with the matrices in shared memory for m ≤ 128 (when the device's opt-in shared memory holds
//!   three m×m matrices), else one launch per GEMM over a global workspace (any m ≤ 256);
//! * [`attention`]: the fused two-pass form. Pass 1 recomputes P_k tiles and accumulates `P_kᵀV`
//!   per row chunk into the workspace, the chunks are summed in a fixed order, `W = Z·(P_kᵀV)`,
//!   pass 2 recomputes P tiles and writes `X = P·W`. P is never written to memory; the fused
//!   passes use `‖x‖² + ‖l‖² − 2x·l` clamped at 0.
//!
//! The kernels are CUDA-core fp32 for any D, Dv ≤ 256, any strides with a unit last dim, m ≤ 256.
//! f16/bf16 with D == Dv ∈ {32, 48, 64} and 16-byte-aligned rows run the two attention passes on
//! tensor cores (kernels/soft_tc.cuh: mma.sync with hi + lo 16-bit operand splits and fp32
//! accumulation, P kept in registers), writing the same pass-1 partials and output.
//! Every reduction runs in a fixed order: outputs are bit-identical run to run.

use super::{check_f32_buffer, MAX_HEAD_DIM};
use super::{
    check_ptr, check_workspace, launch, launch_smem, ptr_of, ptr_of_mut, rows_16b_aligned,
    with_matrices, with_raw, RawTensor, TensorMut, TensorRef,
};
use crate::error::{Error, Result};
use crate::runtime::Runtime;
use crate::tensor::{DType, Dims, Element, Layout};
use cudarc::driver::{CudaSlice, CudaStream};
use std::mem::{offset_of, size_of};
use std::sync::Arc;

pub use crate::reference::soft::{Landmarks, SoftParams};

const FAMILY: &str = "soft";
const NEWTON_FAMILY: &str = "newton";
const THREADS: u32 = 256; // SOFT_THREADS, NEWTON_THREADS
const ROWS: usize = 64; // SOFT_ROWS
const LM: usize = 64; // SOFT_LM
const ET: usize = 64; // SOFT_ET
const NEWTON_TILE: usize = 64; // NEWTON_TILE
/// Largest landmark count m (SOFT_MAX_M).
pub const MAX_M: usize = 256;
/// Largest m of the one-launch Newton kernel (NEWTON_SMEM_MAX_M).
pub const NEWTON_SMEM_MAX_M: usize = 128;
/// Largest m of the cluster form of the one-launch Newton kernel (NEWTON_CL_MAX_M).
pub const NEWTON_CLUSTER_MAX_M: usize = 64;
/// Smallest m given a cluster: below it one CTA does a step's 2m³ FMAs (≤ 8192, about 64
/// clocks of an SM's FP32 pipes) in less time than the cluster barrier each step pays, and 8
/// CTAs of 256 threads per matrix would mostly wait (arithmetic, not yet timed).
pub const NEWTON_CLUSTER_MIN_M: usize = 17;
const NEWTON_CL: usize = 8; // NEWTON_CL: CTAs per matrix
/// Dynamic shared memory of the cluster kernel (NEWTON_CL_SMEM): Â, two Z buffers, 8 rows of T.
const NEWTON_CL_SMEM: u32 = 52000;
const MAX_NEWTON_CLUSTERS: usize = 1 << 16;
/// Row chunks of attention pass 1 at most: bounds the workspace independently of N.
pub const MAX_CHUNKS: usize = 256;
const TARGET_CTAS: usize = 1024;
const MAX_GRID_YZ: usize = 65535;
/// Largest N accepted (the kernels index rows with 32-bit ints).
const MAX_LEN: usize = (i32::MAX / 2) as usize;
/// Head dims (D == Dv) whose attention passes run on tensor cores for f16/bf16 storage and
/// 16-byte-aligned rows (kernels/soft_tc.cuh); D = 128 where pass 2's landmarks fit in shared
/// memory (m ≤ 176 at the H100's 227 KB).
const TC_DIMS: [usize; 4] = [32, 48, 64, 128];
const TC_THREADS: u32 = 128; // SOFT_TC_THREADS
const TC_ROWS: usize = 64; // SOFT_TC_ROWS

/// Launch geometry of the tensor-core passes (mirrors soft_tc_* in kernels/soft_tc.cuh).
mod tc {
    use super::{LM, TC_ROWS};
    /// Landmark rows of pass 2 in shared memory (soft_tc_mpad: m rounded up to 16).
    fn mpad(m: usize) -> usize {
        m.div_ceil(16) * 16
    }
    /// Dynamic shared memory of pass 1: L hi/lo of a tile, K and V double-buffered, the
    /// landmark terms, the row terms of one stage.
    pub fn pass1_smem(d: usize) -> usize {
        (2 * LM + 4 * TC_ROWS) * (d + 8) * 2 + 2 * LM * 4 + TC_ROWS * 4
    }
    /// Dynamic shared memory of pass 2: L and W hi/lo of all landmarks, Q double-buffered,
    /// per-landmark exponent terms and coefficients, per-column scales.
    pub fn pass2_smem(d: usize, m: usize) -> usize {
        (4 * mpad(m) + 2 * TC_ROWS) * (d + 8) * 2 + 2 * mpad(m) * 4 + 2 * d * 4
    }
    // The values the static_assert in kernels/soft_tc.cuh pins.
    #[test]
    fn geometry_matches_the_kernel_header() {
        assert_eq!(pass1_smem(64), 56064);
        assert_eq!(pass2_smem(64, 64), 56320);
        assert_eq!(pass2_smem(64, 256), 168448);
        assert_eq!(pass2_smem(32, 7), 15744);
    }
}

/// Mirror of `SoftKernelParams` in kernels/soft.cuh.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct KernelParams {
    pub q: u64,
    pub k: u64,
    pub v: u64,
    pub o: u64,
    pub l: u64,
    pub p: u64,
    pub a: u64,
    pub z: u64,
    pub partial: u64,
    pub s: u64,
    pub w: u64,
    pub ahat: u64,
    pub gemm_a: u64,
    pub gemm_b: u64,
    pub gemm_c: u64,
    pub gemm_z: u64,
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
    pub d: i32,
    pub dv: i32,
    pub m: i32,
    pub pool: i32,
    pub height: i32,
    pub width: i32,
    pub r: i32,
    pub chunks: i32,
    pub rows_per_chunk: i32,
    pub iters: i32,
    pub gemm_mode: i32,
    pub scale: f32,
    pub alpha_scale: f32,
    pub ridge: f32,
    pub pad_: i32,
}

// SAFETY: plain old data with the C layout asserted below.
unsafe impl cudarc::driver::DeviceRepr for KernelParams {}

const _: () = {
    assert!(size_of::<KernelParams>() == 296); // SOFT_PARAMS_SIZE
    assert!(offset_of!(KernelParams, l) == 32);
    assert!(offset_of!(KernelParams, partial) == 64);
    assert!(offset_of!(KernelParams, gemm_z) == 120);
    assert!(offset_of!(KernelParams, q_sb) == 128);
    assert!(offset_of!(KernelParams, o_sn) == 216);
    assert!(offset_of!(KernelParams, b) == 224);
    assert!(offset_of!(KernelParams, pool) == 248);
    assert!(offset_of!(KernelParams, gemm_mode) == 276);
    assert!(offset_of!(KernelParams, scale) == 280);
    assert!(offset_of!(KernelParams, ridge) == 288);
};

fn grid_dim(x: usize) -> u32 {
    x.min(i32::MAX as usize) as u32
}

fn grid_yz(x: usize) -> u32 {
    x.min(MAX_GRID_YZ) as u32
}

fn strides(l: &Layout) -> [i64; 3] {
    [
        l.strides.batch as i64,
        l.strides.head as i64,
        l.strides.seq as i64,
    ]
}

/// `D^(-1/4)`, the scale of the Gaussian kernel's space.
fn scale_of(d: usize) -> f32 {
    (d as f64).powf(-0.25) as f32
}

/// Which form of the Newton iteration runs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum NewtonPath {
    /// One launch when m ≤ [`NEWTON_SMEM_MAX_M`] and the device's shared memory holds it.
    #[default]
    Auto,
    /// All T steps in one launch, matrices in shared memory (m ≤ [`NEWTON_SMEM_MAX_M`]); for
    /// [`NEWTON_CLUSTER_MIN_M`] ≤ m ≤ [`NEWTON_CLUSTER_MAX_M`] on sm_90 a cluster of 8 CTAs per
    /// matrix (bit-identical to one CTA, which runs where the cluster kernel is absent or its
    /// launch is refused).
    OneLaunch,
    /// As [`NewtonPath::OneLaunch`], always one CTA per matrix (no cluster).
    OneLaunchCta,
    /// One launch per GEMM over a global workspace (any m ≤ [`MAX_M`]).
    MultiLaunch,
}

/// Dynamic shared memory of the one-launch Newton kernel: Â, Z and Z·Â with an odd leading dim
/// (saturating: an m far beyond [`NEWTON_SMEM_MAX_M`] gets a size no device has, not a panic).
pub fn newton_smem_bytes(m: usize) -> usize {
    12usize.saturating_mul(m).saturating_mul(m | 1)
}

/// Static shared memory of the one-launch Newton kernel (row sums and α; ptxas reports 1040
/// bytes), rounded up: it must fit beside the dynamic part.
const NEWTON_STATIC_SMEM: usize = 2048;

/// True when the one-launch Newton kernel can run for m on a device with `smem_optin` bytes of
/// shared memory per block.
pub fn newton_fits_on_chip(m: usize, smem_optin: usize) -> bool {
    m <= NEWTON_SMEM_MAX_M && newton_smem_bytes(m) + NEWTON_STATIC_SMEM <= smem_optin
}

/// The fp32 Newton parameters of SPEC §1.4, checked.
#[derive(Clone, Copy, Debug, PartialEq)]
struct NewtonScalars {
    iters: usize,
    ridge: f32,
    alpha_scale: f32,
}

impl NewtonScalars {
    fn new(p: &SoftParams) -> Result<Self> {
        if p.newton_iters == 0 {
            return Err(Error::param("newton_iters", 0, "must be >= 1"));
        }
        if p.newton_iters > i32::MAX as usize {
            return Err(Error::param(
                "newton_iters",
                p.newton_iters,
                "must fit in 32 bits",
            ));
        }
        let ridge = p.ridge as f32;
        if !(p.ridge >= 0.0 && ridge.is_finite()) {
            return Err(Error::param(
                "ridge",
                p.ridge,
                "must be >= 0 and finite in fp32",
            ));
        }
        let alpha_scale = p.alpha_scale as f32;
        if !(alpha_scale > 0.0 && alpha_scale.is_finite()) {
            return Err(Error::param(
                "alpha_scale",
                p.alpha_scale,
                "must be > 0 and finite in fp32",
            ));
        }
        Ok(NewtonScalars {
            iters: p.newton_iters,
            ridge,
            alpha_scale,
        })
    }
}

fn check_m(m: usize) -> Result<()> {
    if m == 0 || m > MAX_M {
        return Err(Error::param("m", m, format!("must be in 1..={MAX_M}")));
    }
    Ok(())
}

fn check_bh(dims: Dims) -> Result<()> {
    let Dims { b, h, n, .. } = dims;
    if b.checked_mul(h).is_none_or(|bh| bh > i32::MAX as usize) {
        return Err(Error::shape("q", format!("B·H = {b}·{h} exceeds 2^31 - 1")));
    }
    if n > MAX_LEN {
        return Err(Error::shape("q", format!("N = {n} exceeds {MAX_LEN}")));
    }
    Ok(())
}

/// A validated batched Newton–Raphson pseudo-inverse: `batch` matrices of `m×m` fp32.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct NewtonPlan {
    pub batch: usize,
    pub m: usize,
    /// The resolved path: [`NewtonPath::OneLaunch`], [`NewtonPath::OneLaunchCta`] or
    /// [`NewtonPath::MultiLaunch`].
    pub path: NewtonPath,
    scalars: NewtonScalars,
}

impl NewtonPlan {
    /// Checks the shape and the Newton parameters of `params` (its landmarks are not used) and
    /// resolves `path` for a device allowing `smem_optin` bytes of shared memory per block.
    pub fn new(
        batch: usize,
        m: usize,
        params: &SoftParams,
        path: NewtonPath,
        smem_optin: usize,
    ) -> Result<Self> {
        if batch == 0 || batch > i32::MAX as usize {
            return Err(Error::param("batch", batch, "must be in 1..=2^31 - 1"));
        }
        check_m(m)?;
        let scalars = NewtonScalars::new(params)?;
        let fits = newton_fits_on_chip(m, smem_optin);
        let path = match path {
            NewtonPath::Auto if fits => NewtonPath::OneLaunch,
            NewtonPath::Auto => NewtonPath::MultiLaunch,
            NewtonPath::OneLaunch | NewtonPath::OneLaunchCta if !fits => {
                return Err(Error::param(
                    "path",
                    format!("{path:?}"),
                    format!(
                        "m = {m} needs m <= {NEWTON_SMEM_MAX_M} and {} bytes of shared memory \
                         (device allows {smem_optin})",
                        newton_smem_bytes(m) + NEWTON_STATIC_SMEM
                    ),
                ))
            }
            p => p,
        };
        Ok(NewtonPlan {
            batch,
            m,
            path,
            scalars,
        })
    }

    /// An error when a one-launch plan was made for a device with more shared memory than `rt`'s.
    fn check_device(&self, rt: &Runtime) -> Result<()> {
        let one = matches!(self.path, NewtonPath::OneLaunch | NewtonPath::OneLaunchCta);
        if one && !newton_fits_on_chip(self.m, rt.info().smem_per_block_optin) {
            return Err(Error::param(
                "path",
                format!("{:?}", self.path),
                "the plan was made for a device with more shared memory",
            ));
        }
        Ok(())
    }

    /// fp32 elements of the input A and of the output Z.
    pub fn len(&self) -> usize {
        self.batch * self.m * self.m
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Scratch bytes: Â, Z·Â and a second Z for the multi-launch path; none for one launch.
    pub fn workspace_bytes(&self) -> usize {
        match self.path {
            NewtonPath::MultiLaunch => 3 * self.len() * 4,
            _ => 0,
        }
    }

    /// Queues the iteration: A at `a`, Z to `z`, scratch at `ws` (`workspace_bytes`).
    ///
    /// # Safety
    /// `a` holds `len()` readable floats, `z` `len()` writable floats not aliasing `a` or `ws`,
    /// `ws` holds `workspace_bytes()` bytes, 4-byte aligned; all valid until the work completes.
    unsafe fn queue(
        &self,
        rt: &Runtime,
        stream: &CudaStream,
        a: u64,
        z: u64,
        ws: u64,
    ) -> Result<()> {
        let m = self.m;
        let mut p = KernelParams {
            a,
            z,
            b: self.batch as i32,
            h: 1,
            m: m as i32,
            iters: self.scalars.iters as i32,
            ridge: self.scalars.ridge,
            alpha_scale: self.scalars.alpha_scale,
            ..Default::default()
        };
        if self.path == NewtonPath::OneLaunch
            && (NEWTON_CLUSTER_MIN_M..=NEWTON_CLUSTER_MAX_M).contains(&m)
            && rt.info().compute_capability.0 >= 9
        {
            if let Ok(f) = rt.function(NEWTON_FAMILY, "newton_pinv_cl_f32") {
                let grid = (
                    (self.batch.min(MAX_NEWTON_CLUSTERS) * NEWTON_CL) as u32,
                    1,
                    1,
                );
                // SAFETY: the caller's contract; a cluster per matrix with the shared memory the
                // kernel is built for. A refused launch queued nothing: the one-CTA kernel runs
                // instead.
                if rt.allow_dynamic_smem(&f, NEWTON_CL_SMEM).is_ok()
                    && unsafe { launch_smem(stream, &f, grid, THREADS, NEWTON_CL_SMEM, &p) }.is_ok()
                {
                    return Ok(());
                }
            }
        }
        if matches!(self.path, NewtonPath::OneLaunch | NewtonPath::OneLaunchCta) {
            let tile = [16, 32, 64, 128]
                .into_iter()
                .find(|&t| m <= t)
                .unwrap_or(NEWTON_SMEM_MAX_M);
            let f = rt.function(NEWTON_FAMILY, &format!("newton_pinv_t{tile}_f32"))?;
            let smem = newton_smem_bytes(m) as u32;
            rt.allow_dynamic_smem(&f, smem)?;
            // SAFETY: the caller's contract; m ≤ tile and the shared memory was sized for m.
            return unsafe {
                launch_smem(stream, &f, (grid_dim(self.batch), 1, 1), THREADS, smem, &p)
            };
        }
        let mat = (self.len() * 4) as u64;
        let (ahat, tbuf, zalt) = (ws, ws + mat, ws + 2 * mat);
        // Z_k lives in `z` when T − k is even, so that Z_T lands in `z`.
        let iters = self.scalars.iters;
        let zbuf = |k: usize| if (iters - k) % 2 == 0 { z } else { zalt };
        let init = rt.function(NEWTON_FAMILY, "newton_init_f32")?;
        let gemm = rt.function(NEWTON_FAMILY, "newton_gemm_f32")?;
        let tiles = m.div_ceil(NEWTON_TILE);
        let ggrid = ((tiles * tiles) as u32, grid_yz(self.batch), 1);
        p.ahat = ahat;
        p.z = zbuf(0);
        // SAFETY: the caller's contract; the workspace holds Â, Z·Â and the second Z, and no
        // GEMM writes a buffer it reads.
        unsafe {
            launch(stream, &init, (grid_dim(self.batch), 1, 1), THREADS, &p)?;
            for k in 0..iters {
                let (zk, zn) = (zbuf(k), zbuf(k + 1));
                p.gemm_mode = 0;
                (p.gemm_a, p.gemm_b, p.gemm_c, p.gemm_z) = (zk, ahat, tbuf, 0);
                launch(stream, &gemm, ggrid, THREADS, &p)?;
                p.gemm_mode = 1;
                (p.gemm_a, p.gemm_b, p.gemm_c, p.gemm_z) = (tbuf, zk, zn, zk);
                launch(stream, &gemm, ggrid, THREADS, &p)?;
            }
        }
        Ok(())
    }
}

/// Batched Newton–Raphson pseudo-inverse on raw device pointers: `a` and `z` hold
/// `plan.len()` fp32 values each (`[batch][m][m]`).
///
/// # Safety
/// `a` must address `a_len ≥ plan.len()` readable floats and `z` `z_len ≥ plan.len()` writable
/// floats of this runtime's context, not aliasing each other or the workspace (`workspace_len ≥
/// plan.workspace_bytes()` bytes, 4-byte aligned); all valid until the work on `stream` completes.
#[allow(clippy::too_many_arguments)]
pub unsafe fn newton_pinv_raw(
    rt: &Runtime,
    stream: &CudaStream,
    plan: &NewtonPlan,
    a: u64,
    a_len: usize,
    z: u64,
    z_len: usize,
    workspace: u64,
    workspace_len: usize,
) -> Result<()> {
    check_f32_buffer("a", a, a_len, plan.len())?;
    check_f32_buffer("z", z, z_len, plan.len())?;
    check_workspace(plan.workspace_bytes(), workspace, workspace_len)?;
    plan.check_device(rt)?;
    // SAFETY: forwarded contract; buffers checked above.
    unsafe { plan.queue(rt, stream, a, z, workspace) }
}

/// `Z` = T Newton steps on `A + λI` (SPEC §1.4) for `batch` fp32 `m×m` matrices `a`
/// (`[batch][m][m]`), into `z`. `workspace` may be `None` (then allocated when needed).
#[allow(clippy::too_many_arguments)]
pub fn newton_pinv(
    rt: &Runtime,
    stream: &Arc<CudaStream>,
    params: &SoftParams,
    batch: usize,
    m: usize,
    path: NewtonPath,
    a: &CudaSlice<f32>,
    z: &mut CudaSlice<f32>,
    workspace: Option<&mut CudaSlice<u8>>,
) -> Result<()> {
    let plan = NewtonPlan::new(batch, m, params, path, rt.info().smem_per_block_optin)?;
    let bytes = plan.workspace_bytes();
    with_matrices(
        rt,
        stream,
        a,
        z,
        workspace,
        bytes,
        |ap, al, zp, zl, wp, wl| {
            // SAFETY: live allocations of this context with their lengths; `z` and the workspace are
            // borrowed mutably, so nothing aliases.
            unsafe { newton_pinv_raw(rt, stream, &plan, ap, al, zp, zl, wp, wl) }
        },
    )
}

/// Checks the landmark method for `[B,H,N,D]` inputs: the SoftParams rules of SPEC §1.2 plus
/// m ≤ [`MAX_M`]. Returns m.
fn check_landmarks(params: &SoftParams, n: usize) -> Result<usize> {
    params.landmarks.validate(n)?;
    let m = params.landmarks.count();
    check_m(m)?;
    Ok(m)
}

/// Queues the pooling kernel: keys `k` (q when tied) → fp32 `L [B,H,m,D]` at `out`.
///
/// # Safety
/// `k` is valid for its layout in elements of `dtype`; `out` holds B·H·m·D writable floats.
unsafe fn queue_landmarks(
    rt: &Runtime,
    stream: &CudaStream,
    dtype: DType,
    lm: &Landmarks,
    m: usize,
    k: &RawTensor,
    out: u64,
) -> Result<()> {
    let Dims { b, h, n, d } = k.layout.dims;
    let [k_sb, k_sh, k_sn] = strides(&k.layout);
    let (pool, height, width, r) = match *lm {
        Landmarks::AvgPool2d { height, width, r } => (1, height, width, r),
        _ => (0, 0, 0, 0),
    };
    let p = KernelParams {
        k: k.ptr,
        l: out,
        k_sb,
        k_sh,
        k_sn,
        b: b as i32,
        h: h as i32,
        n: n as i32,
        d: d as i32,
        m: m as i32,
        pool,
        height: height as i32,
        width: width as i32,
        r: r as i32,
        scale: scale_of(d),
        ..Default::default()
    };
    let f = rt.function(FAMILY, &format!("soft_landmarks_{}", dtype.name()))?;
    // SAFETY: the caller's contract; m ≤ 256 landmarks, each a segment or window inside N rows.
    unsafe { launch(stream, &f, (m as u32, grid_yz(b * h), 1), THREADS, &p) }
}

/// Landmarks on raw device pointers: `keys` are the rows pooled (q when tied, k when untied),
/// `out` receives fp32 `[B,H,m,D]` (contiguous). `Given` landmarks are the caller's: refused here.
///
/// # Safety
/// `keys` must address its layout's span of `dtype` elements and `out` `out_len` writable floats
/// of this runtime's context, valid until the work on `stream` completes.
pub unsafe fn landmarks_raw(
    rt: &Runtime,
    stream: &CudaStream,
    params: &SoftParams,
    dtype: DType,
    keys: RawTensor,
    out: u64,
    out_len: usize,
) -> Result<()> {
    let l = &keys.layout;
    l.validate("k", l.span().unwrap_or(usize::MAX), MAX_HEAD_DIM)?;
    check_bh(l.dims)?;
    let m = check_landmarks(params, l.dims.n)?;
    if let Landmarks::Given { .. } = params.landmarks {
        return Err(Error::param(
            "landmarks",
            "Given",
            "given landmarks are the caller's tensor; nothing to pool",
        ));
    }
    check_ptr(dtype, "k", &keys)?;
    let Dims { b, h, d, .. } = l.dims;
    check_f32_buffer("landmarks", out, out_len, b * h * m * d)?;
    // SAFETY: validated above and by the caller's contract.
    unsafe { queue_landmarks(rt, stream, dtype, &params.landmarks, m, &keys, out) }
}

/// Landmarks `L [B,H,m,D]` (fp32, contiguous, scaled space) of SPEC §1.2 into `out`: pooled from
/// `q` (tied) or `k` (untied, required then), or a copy of `given` for [`Landmarks::Given`].
#[allow(clippy::too_many_arguments)]
pub fn landmarks<T: Element>(
    rt: &Runtime,
    stream: &Arc<CudaStream>,
    params: &SoftParams,
    q: TensorRef<'_, T>,
    k: Option<TensorRef<'_, T>>,
    given: Option<&CudaSlice<f32>>,
    out: &mut CudaSlice<f32>,
) -> Result<()> {
    q.validate("q")?;
    let keys = keys_of(params, &q, k.as_ref())?;
    keys.validate("k")?;
    check_bh(q.layout.dims)?;
    let m = check_landmarks(params, q.layout.dims.n)?;
    let Dims { b, h, d, .. } = q.layout.dims;
    let need = b * h * m * d;
    if out.len() < need {
        return Err(Error::BufferTooSmall {
            arg: "landmarks",
            needed: need,
            len: out.len(),
        });
    }
    match (params.landmarks, given) {
        (Landmarks::Given { .. }, Some(g)) => {
            check_given(g.len(), need)?;
            stream.memcpy_dtod(&g.slice(0..need), &mut out.slice_mut(0..need))?;
            Ok(())
        }
        (Landmarks::Given { .. }, None) => {
            Err(Error::shape("landmarks", "Given landmarks need the tensor"))
        }
        (_, Some(_)) => Err(Error::shape(
            "landmarks",
            "a landmark tensor was passed but the landmarks are pooled, not Given",
        )),
        (lm, None) => {
            let (kp, _gk) = ptr_of(keys.data, stream);
            let (op, _go) = ptr_of_mut(out, stream);
            let raw = RawTensor {
                ptr: kp,
                layout: keys.layout,
            };
            // SAFETY: `keys` was checked against its buffer, `out` holds B·H·m·D floats.
            unsafe { queue_landmarks(rt, stream, T::DTYPE, &lm, m, &raw, op) }
        }
    }
}

fn check_given(len: usize, need: usize) -> Result<()> {
    if len < need {
        return Err(Error::BufferTooSmall {
            arg: "landmarks",
            needed: need,
            len,
        });
    }
    Ok(())
}

/// The keys the landmarks and `P_k` use: q when tied (then no k may be passed), k when untied.
fn keys_of<'a, 'b, T>(
    params: &SoftParams,
    q: &'b TensorRef<'a, T>,
    k: Option<&'b TensorRef<'a, T>>,
) -> Result<TensorRef<'a, T>> {
    match (params.tied, k) {
        (true, None) => Ok(TensorRef {
            data: q.data,
            layout: q.layout,
        }),
        (false, Some(k)) => {
            if k.layout.dims != q.layout.dims {
                return Err(Error::shape(
                    "k",
                    format!("{} does not match q {}", k.layout.dims, q.layout.dims),
                ));
            }
            Ok(TensorRef {
                data: k.data,
                layout: k.layout,
            })
        }
        (true, Some(_)) => Err(Error::shape(
            "k",
            "keys are tied to the queries (tied = true): pass no k",
        )),
        (false, None) => Err(Error::shape("k", "untied keys (tied = false) need k")),
    }
}

/// Materialized products on raw pointers: `P [B,H,N,m]` and `A [B,H,m,m]` (fp32, contiguous)
/// from q and fp32 landmarks `l [B,H,m,D]`.
///
/// # Safety
/// `q` addresses its layout's span of `dtype` elements; `l`, `p`, `a` hold `l_len`, `p_len`,
/// `a_len` floats (`p`, `a` writable, aliasing nothing), all valid until the work completes.
#[allow(clippy::too_many_arguments)]
pub unsafe fn gaussian_products_raw(
    rt: &Runtime,
    stream: &CudaStream,
    dtype: DType,
    q: RawTensor,
    m: usize,
    l: (u64, usize),
    p: (u64, usize),
    a: (u64, usize),
) -> Result<()> {
    let lq = &q.layout;
    lq.validate("q", lq.span().unwrap_or(usize::MAX), MAX_HEAD_DIM)?;
    check_bh(lq.dims)?;
    check_m(m)?;
    check_ptr(dtype, "q", &q)?;
    let Dims { b, h, n, d } = lq.dims;
    let bh = b * h;
    check_f32_buffer("landmarks", l.0, l.1, bh * m * d)?;
    let p_need = bh.saturating_mul(n.saturating_mul(m));
    check_f32_buffer("p", p.0, p.1, p_need)?;
    check_f32_buffer("a", a.0, a.1, bh * m * m)?;
    let [q_sb, q_sh, q_sn] = strides(lq);
    let kp = KernelParams {
        q: q.ptr,
        l: l.0,
        p: p.0,
        a: a.0,
        q_sb,
        q_sh,
        q_sn,
        b: b as i32,
        h: h as i32,
        n: n as i32,
        d: d as i32,
        m: m as i32,
        scale: scale_of(d),
        ..Default::default()
    };
    let prod = rt.function(FAMILY, &format!("soft_products_{}", dtype.name()))?;
    let gram = rt.function(FAMILY, "soft_gram_f32")?;
    let lt = m.div_ceil(LM) as u32;
    // SAFETY: validated above and by the caller's contract; grids cover every P and A element.
    unsafe {
        launch(
            stream,
            &prod,
            (grid_dim(n.div_ceil(ROWS)), grid_yz(bh), lt),
            THREADS,
            &kp,
        )?;
        launch(
            stream,
            &gram,
            (m.div_ceil(ROWS) as u32, grid_yz(bh), lt),
            THREADS,
            &kp,
        )?;
    }
    Ok(())
}

/// `P = exp(−½D²(Qs, L))` (`[B,H,N,m]`) and `A = exp(−½D²(L, L))` (`[B,H,m,m]`), fp32,
/// contiguous (SPEC §1.3), from `q` and the landmarks `l` (fp32 `[B,H,m,D]`, e.g. from
/// [`landmarks`]). Squared distances are sums of squared differences.
pub fn gaussian_products<T: Element>(
    rt: &Runtime,
    stream: &Arc<CudaStream>,
    q: TensorRef<'_, T>,
    m: usize,
    l: &CudaSlice<f32>,
    p: &mut CudaSlice<f32>,
    a: &mut CudaSlice<f32>,
) -> Result<()> {
    q.validate("q")?;
    let (qp, _gq) = ptr_of(q.data, stream);
    let (lp, _gl) = ptr_of(l, stream);
    let (p_len, a_len) = (p.len(), a.len());
    let (pp, _gp) = ptr_of_mut(p, stream);
    let (ap, _ga) = ptr_of_mut(a, stream);
    let raw = RawTensor {
        ptr: qp,
        layout: q.layout,
    };
    // SAFETY: live allocations with their lengths; p and a are borrowed mutably (no aliasing).
    unsafe {
        gaussian_products_raw(
            rt,
            stream,
            T::DTYPE,
            raw,
            m,
            (lp, l.len()),
            (pp, p_len),
            (ap, a_len),
        )
    }
}

/// A validated launch plan of the fused attention for one set of layouts.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Plan {
    pub dims: Dims,
    pub dv: usize,
    pub m: usize,
    pub params: SoftParams,
    pub newton: NewtonPlan,
    /// Row chunks of pass 1 and their length (a multiple of 64).
    pub chunks: usize,
    pub rows_per_chunk: usize,
    layouts: [Layout; 4],
}

/// Offsets (bytes) of the pieces of the attention workspace.
struct WsLayout {
    l: usize,
    a: usize,
    z: usize,
    partial: usize,
    s: usize,
    w: usize,
    newton: usize,
    total: usize,
}

impl Plan {
    /// Checks q `[B,H,N,D]`, k (untied only, like q), v and o `[B,H,N,Dv]` and the parameters;
    /// `smem_optin` (the device's shared memory per block) picks the Newton path.
    pub fn new(
        q: &Layout,
        k: Option<&Layout>,
        v: &Layout,
        o: &Layout,
        params: &SoftParams,
        smem_optin: usize,
    ) -> Result<Self> {
        let dims = q.dims;
        let dv = v.dims.d;
        match (params.tied, k) {
            (true, Some(_)) => {
                return Err(Error::shape(
                    "k",
                    "keys are tied to the queries (tied = true): pass no k",
                ))
            }
            (false, None) => return Err(Error::shape("k", "untied keys (tied = false) need k")),
            _ => {}
        }
        let mut checks = vec![("v", v, dims.with_d(dv)), ("o", o, dims.with_d(dv))];
        if let Some(k) = k {
            checks.insert(0, ("k", k, dims));
        }
        for (arg, l, want) in checks {
            if l.dims != want {
                return Err(Error::shape(
                    arg,
                    format!("{} does not match q {dims} (expected {want})", l.dims),
                ));
            }
        }
        let mut all = vec![("q", q), ("v", v), ("o", o)];
        if let Some(k) = k {
            all.push(("k", k));
        }
        for (arg, l) in all {
            let span = l.span().unwrap_or(usize::MAX);
            l.validate(arg, span, MAX_HEAD_DIM)?;
        }
        check_bh(dims)?;
        let m = check_landmarks(params, dims.n)?;
        let Dims { b, h, n, .. } = dims;
        let newton = NewtonPlan::new(b * h, m, params, NewtonPath::Auto, smem_optin)?;
        let tiles = m.div_ceil(LM) * dv.div_ceil(ET);
        let want = TARGET_CTAS.div_ceil(b * h * tiles);
        let chunks = want.clamp(1, MAX_CHUNKS.min(n.div_ceil(4 * ROWS)).max(1));
        let rows_per_chunk = n.div_ceil(chunks).div_ceil(ROWS) * ROWS;
        Ok(Plan {
            dims,
            dv,
            m,
            params: *params,
            newton,
            chunks: n.div_ceil(rows_per_chunk),
            rows_per_chunk,
            layouts: [*q, k.copied().unwrap_or(*q), *v, *o],
        })
    }

    fn ws_layout(&self) -> WsLayout {
        let Dims { b, h, d, .. } = self.dims;
        let (bh, m, dv) = (b * h, self.m, self.dv);
        let mut at = 0;
        let mut take = |floats: usize| {
            let off = at;
            at += (floats * 4).div_ceil(256) * 256;
            off
        };
        let l = take(bh * m * d);
        let a = take(bh * m * m);
        let z = take(bh * m * m);
        let partial = take(bh * self.chunks * m * dv);
        let s = take(bh * m * dv);
        let w = take(bh * m * dv);
        let newton = take(self.newton.workspace_bytes() / 4);
        WsLayout {
            l,
            a,
            z,
            partial,
            s,
            w,
            newton,
            total: at,
        }
    }

    /// Scratch bytes: landmarks, A, Z, the pass-1 partials (at most [`MAX_CHUNKS`] chunks), the
    /// summed `P_kᵀV`, W, and the multi-launch Newton scratch when that path runs.
    pub fn workspace_bytes(&self) -> usize {
        self.ws_layout().total
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

/// Scratch bytes of [`attention`] for q `[B,H,N,D]`, v `[B,H,N,Dv]`, independent of strides,
/// dtype and device (assumes the multi-launch Newton path: an upper bound).
pub fn workspace_bytes(dims: Dims, dv: usize, params: &SoftParams) -> Result<usize> {
    let l = Layout::contiguous(dims);
    let lv = Layout::contiguous(dims.with_d(dv));
    let k = (!params.tied).then_some(&l);
    Ok(Plan::new(&l, k, &lv, &lv, params, 0)?.workspace_bytes())
}

/// The fused SOFT attention on raw device pointers. `k` is ignored when `params.tied` (pass q);
/// `given` is the fp32 `[B,H,m,D]` landmark tensor for [`Landmarks::Given`] (address, floats).
///
/// # Safety
/// Each pointer must address device memory of this runtime's context that holds its layout's
/// span in elements of `dtype` (q, k, v readable; o writable and not aliasing the inputs), `given`
/// its floats, and `workspace` `workspace_len ≥ Plan::workspace_bytes` bytes, 4-byte aligned;
/// all valid until the work queued on `stream` completes.
#[allow(clippy::too_many_arguments)]
pub unsafe fn attention_raw(
    rt: &Runtime,
    stream: &CudaStream,
    plan: &Plan,
    dtype: DType,
    q: RawTensor,
    k: RawTensor,
    v: RawTensor,
    o: RawTensor,
    given: Option<(u64, usize)>,
    workspace: u64,
    workspace_len: usize,
) -> Result<()> {
    let k = if plan.params.tied { q } else { k };
    plan.check_layouts(&q.layout, &k.layout, &v.layout, &o.layout)?;
    if !o.layout.is_non_overlapping() {
        return Err(Error::shape(
            "o",
            format!("output strides {:?} overlap", o.layout.strides),
        ));
    }
    for (arg, t) in [("q", &q), ("k", &k), ("v", &v), ("o", &o)] {
        check_ptr(dtype, arg, t)?;
    }
    let ws = plan.ws_layout();
    check_workspace(ws.total, workspace, workspace_len)?;
    let Dims { b, h, n, d } = plan.dims;
    let (bh, m, dv) = (b * h, plan.m, plan.dv);
    let at = |off: usize| workspace + off as u64;
    let l = match (plan.params.landmarks, given) {
        (Landmarks::Given { .. }, Some((ptr, len))) => {
            check_f32_buffer("landmarks", ptr, len, bh * m * d)?;
            ptr
        }
        (Landmarks::Given { .. }, None) => {
            return Err(Error::shape("landmarks", "Given landmarks need the tensor"))
        }
        (_, Some(_)) => {
            return Err(Error::shape(
                "landmarks",
                "a landmark tensor was passed but the landmarks are pooled, not Given",
            ))
        }
        (_, None) => at(ws.l),
    };
    plan.newton.check_device(rt)?;
    let [q_sb, q_sh, q_sn] = strides(&q.layout);
    let [k_sb, k_sh, k_sn] = strides(&k.layout);
    let [v_sb, v_sh, v_sn] = strides(&v.layout);
    let [o_sb, o_sh, o_sn] = strides(&o.layout);
    let p = KernelParams {
        q: q.ptr,
        k: k.ptr,
        v: v.ptr,
        o: o.ptr,
        l,
        a: at(ws.a),
        z: at(ws.z),
        partial: at(ws.partial),
        s: at(ws.s),
        w: at(ws.w),
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
        n: n as i32,
        d: d as i32,
        dv: dv as i32,
        m: m as i32,
        chunks: plan.chunks as i32,
        rows_per_chunk: plan.rows_per_chunk as i32,
        scale: scale_of(d),
        ..Default::default()
    };
    let dt = dtype.name();
    let gram = rt.function(FAMILY, "soft_gram_f32")?;
    let sum = rt.function(FAMILY, "soft_sum_f32")?;
    let wk = rt.function(FAMILY, "soft_w_f32")?;
    let (bh_y, lt) = (grid_yz(bh), m.div_ceil(LM) as u32);
    let tiles = (m.div_ceil(LM) * dv.div_ceil(ET)) as u32;
    // The two heavy passes: tensor cores when the dims and alignment allow, else CUDA cores. Both
    // write the same partials (same chunks and landmark tiles) and the same output.
    let (pass1, pass2) = if tensor_cores(plan, dtype, &p, rt.info().smem_per_block_optin) {
        let (s1, s2) = (tc::pass1_smem(d) as u32, tc::pass2_smem(d, m) as u32);
        let f1 = rt.function(FAMILY, &format!("soft_pass1_tc{d}_{dt}"))?;
        let f2 = rt.function(FAMILY, &format!("soft_pass2_tc{d}_{dt}"))?;
        rt.allow_dynamic_smem(&f1, s1)?;
        rt.allow_dynamic_smem(&f2, s2)?;
        // Pass 2 is persistent: one wave of CTAs shared among the (b,h) slices, each splitting
        // L and W into shared memory once per slice.
        let slots = rt.resident_ctas(&f2, TC_THREADS, s2)?;
        let per_bh = slots.div_ceil(bh).max(1);
        let grid2 = (n.div_ceil(TC_ROWS).min(per_bh) as u32, bh_y, 1);
        (
            (f1, (plan.chunks as u32, bh_y, lt), TC_THREADS, s1),
            (f2, grid2, TC_THREADS, s2),
        )
    } else {
        let f1 = rt.function(FAMILY, &format!("soft_pass1_{dt}"))?;
        let f2 = rt.function(FAMILY, &format!("soft_pass2_{dt}"))?;
        let grid2 = (grid_dim(n.div_ceil(ROWS)), bh_y, dv.div_ceil(ET) as u32);
        (
            (f1, (plan.chunks as u32, bh_y, tiles), THREADS, 0),
            (f2, grid2, THREADS, 0),
        )
    };
    // SAFETY: layouts match the validated plan; pointers, spans and the workspace (sized by
    // `ws_layout`) per the caller's contract; every grid covers its output; the tensor-core passes
    // run only where `tensor_cores` checked the dims, 16-byte rows and the shared memory asked for.
    unsafe {
        if !matches!(plan.params.landmarks, Landmarks::Given { .. }) {
            queue_landmarks(rt, stream, dtype, &plan.params.landmarks, m, &k, l)?;
        }
        launch(
            stream,
            &gram,
            (m.div_ceil(ROWS) as u32, bh_y, lt),
            THREADS,
            &p,
        )?;
        plan.newton.queue(rt, stream, p.a, p.z, at(ws.newton))?;
        let (f1, grid1, threads1, smem1) = &pass1;
        launch_smem(stream, f1, *grid1, *threads1, *smem1, &p)?;
        let elems = (m * dv).div_ceil(THREADS as usize) as u32;
        launch(stream, &sum, (elems, bh_y, 1), THREADS, &p)?;
        launch(stream, &wk, (m as u32, bh_y, 1), THREADS, &p)?;
        let (f2, grid2, threads2, smem2) = &pass2;
        launch_smem(stream, f2, *grid2, *threads2, *smem2, &p)?;
    }
    Ok(())
}

/// Whether the tensor-core attention passes apply: f16/bf16, D == Dv ∈ [`TC_DIMS`], every row of
/// q, k, v, o 16-byte aligned (pointers and batch/head/seq strides multiples of 8 elements), and
/// both passes' shared memory within the device's per-block limit (pass 2 holds all m landmarks:
/// m = 256, D = 64 needs 168 KB).
fn tensor_cores(plan: &Plan, dtype: DType, p: &KernelParams, smem_optin: usize) -> bool {
    let d = plan.dims.d;
    let aligned = rows_16b_aligned(
        &[p.q, p.k, p.v, p.o],
        &[
            p.q_sb, p.q_sh, p.q_sn, p.k_sb, p.k_sh, p.k_sn, p.v_sb, p.v_sh, p.v_sn, p.o_sb, p.o_sh,
            p.o_sn,
        ],
    );
    let fits = tc::pass1_smem(d) <= smem_optin && tc::pass2_smem(d, plan.m) <= smem_optin;
    matches!(dtype, DType::F16 | DType::BF16)
        && d == plan.dv
        && TC_DIMS.contains(&d)
        && aligned
        && fits
}

/// SOFT attention `X = P·(Z·(P_kᵀ·V))` on device buffers (SPEC §1). `k` only when
/// `params.tied` is false; `given` only for [`Landmarks::Given`] (fp32 `[B,H,m,D]`). `workspace`
/// may be `None` (then it is allocated for this call).
#[allow(clippy::too_many_arguments)]
pub fn attention<T: Element>(
    rt: &Runtime,
    stream: &Arc<CudaStream>,
    params: &SoftParams,
    q: TensorRef<'_, T>,
    k: Option<TensorRef<'_, T>>,
    v: TensorRef<'_, T>,
    o: TensorMut<'_, T>,
    given: Option<&CudaSlice<f32>>,
    workspace: Option<&mut CudaSlice<u8>>,
) -> Result<()> {
    let plan = Plan::new(
        &q.layout,
        k.as_ref().map(|k| &k.layout),
        &v.layout,
        &o.layout,
        params,
        rt.info().smem_per_block_optin,
    )?;
    let keys = keys_of(params, &q, k.as_ref())?;
    let (gp, _gg) = match given {
        Some(g) => {
            let (p, guard) = ptr_of(g, stream);
            (Some((p, g.len())), Some(guard))
        }
        None => (None, None),
    };
    let ws = Some((workspace, plan.workspace_bytes()));
    with_raw(rt, stream, (q, keys, v, o), ws, |t, wp, wl| {
        // SAFETY: every buffer is a live allocation of this context whose length was checked
        // against its layout; `o` is borrowed mutably, so it cannot alias the inputs.
        unsafe { attention_raw(rt, stream, &plan, T::DTYPE, t.q, t.k, t.v, t.o, gp, wp, wl) }
    })
}
