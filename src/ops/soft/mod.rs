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
//! * [`attention`](attention()): the fused two-pass form. Pass 1 recomputes P_k tiles and
//!   accumulates `P_kᵀV` per row chunk into the workspace, the chunks are summed in a fixed order,
//!   `W = Z·(P_kᵀV)`, pass 2 recomputes P tiles and writes `X = P·W`. P is never written to memory; the fused
//!   passes use `‖x‖² + ‖l‖² − 2x·l` clamped at 0.
//!
//! The kernels are CUDA-core fp32 for any D, Dv ≤ 256, any strides with a unit last dim, m ≤ 256.
//! f16/bf16 with D == Dv ∈ {32, 48, 64, 80, 96, 128} (96: m ≤ 240, 128: m ≤ 176, where pass 2's
//! landmarks fit in shared memory) and 16-byte-aligned rows run the two attention passes on
//! tensor cores (kernels/soft_tc.cuh: mma.sync with hi + lo 16-bit operand splits and fp32
//! accumulation, P kept in registers), writing the same pass-1 partials and output.
//!
//! Files: `newton` (the pseudo-inverse), `products` (landmarks, P and A), `attention` (the fused
//! passes); this one holds the kernel parameters and the checks they share.
//! Every reduction runs in a fixed order: outputs are bit-identical run to run.

mod attention;
mod newton;
mod products;

pub use attention::{attention, attention_raw, workspace_bytes, Plan};
pub use newton::{
    newton_fits_on_chip, newton_pinv, newton_pinv_raw, newton_smem_bytes, NewtonPath, NewtonPlan,
};
pub use products::{gaussian_products, gaussian_products_raw, landmarks, landmarks_raw};

use crate::error::{Error, Result};
use crate::ops::MAX_LEN;
use crate::tensor::{Dims, Layout};
use std::mem::{offset_of, size_of};

pub use crate::reference::soft::{Landmarks, SoftParams};

const FAMILY: &str = "soft";
const NEWTON_FAMILY: &str = "newton";
const THREADS: u32 = 256; // SOFT_THREADS, NEWTON_THREADS
const POOL_THREADS: u32 = 128; // SOFT_POOL_THREADS
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
const NEWTON_CL_SMEM: u32 = 57664;
/// Threads of a cluster kernel CTA (NEWTON_CL_THREADS): 4 warps of 2 × 2 register blocks.
const NEWTON_CL_THREADS: u32 = 128;
/// Matrices in flight in a one-launch Newton grid (clusters, or CTAs of the one-CTA kernel); the
/// kernels take any more in turn.
const MAX_NEWTON_CLUSTERS: usize = 1 << 16;
/// Row chunks of attention pass 1 at most: bounds the workspace independently of N.
pub const MAX_CHUNKS: usize = 256;
const TARGET_CTAS: usize = 1024;
const MAX_GRID_YZ: usize = 65535;
/// Head dims (D == Dv) whose attention passes run on tensor cores for f16/bf16 storage and
/// 16-byte-aligned rows (kernels/soft_tc.cuh), where pass 2's landmarks fit in shared memory
/// (at the H100's 227 KB: every m ≤ 256 up to D = 80; m ≤ 240 for 96, ≤ 176 for 128).
const TC_DIMS: [usize; 6] = [32, 48, 64, 80, 96, 128];
const TC_THREADS: u32 = 128; // SOFT_TC_THREADS
const TC_ROWS: usize = 64; // SOFT_TC_ROWS

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
    /// Tensor-core attention passes: 64-row tiles per pooling segment, the unit of their L2 seam
    /// order (`strip_desc` in kernels/common.cuh).
    pub strip: i32,
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
    assert!(offset_of!(KernelParams, strip) == 292);
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

fn check_m(m: usize) -> Result<()> {
    if m == 0 || m > MAX_M {
        return Err(Error::param("m", m, format!("must be in 1..={MAX_M}")));
    }
    Ok(())
}

fn check_bh(dims: Dims) -> Result<()> {
    let Dims { b, h, n, .. } = dims;
    super::check_slices("q", b, h)?;
    if n > MAX_LEN {
        return Err(Error::shape("q", format!("N = {n} exceeds {MAX_LEN}")));
    }
    Ok(())
}
