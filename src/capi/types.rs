//! The types and constants of the C header (`#[repr(C)]`, cbindgen reads them from here).

use crate::ops::cosformer::State;
use crate::runtime::Runtime;
use std::ffi::c_void;
use std::sync::{Arc, Mutex};

/// Version of the C ABI: bumped whenever a signature or struct in this header changes
/// incompatibly. Compare with `sofa_abi_version()` at run time.
pub const SOFA_ABI_VERSION: u32 = 1;

/// Status of every call. `SOFA_STATUS_OK` is 0; for any other value `sofa_last_error()` has a
/// message naming the argument and the value.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SofaStatus {
    /// Success.
    Ok = 0,
    /// No CUDA driver, or no usable device. Also returned for a NULL runtime or state handle on
    /// a machine without a device (the handle could not have been made there).
    NoDevice = 1,
    /// A NULL pointer where one is required, an unknown dtype, a parameter out of range, a
    /// misaligned pointer, a stream of another context, a NULL handle (device present).
    InvalidArgument = 2,
    /// Tensor extents or strides that are negative, disagree with each other, overflow, or have
    /// a head dim outside 1..=256.
    InvalidShape = 3,
    /// The workspace is smaller than the `*_workspace_bytes` query said.
    BufferTooSmall = 4,
    /// A device allocation failed (only `sofa_cosformer_state_create` allocates).
    OutOfMemory = 5,
    /// A kernel module could not be loaded (fatbin and NVRTC both failed).
    KernelLoad = 6,
    /// The CUDA driver reported an error (a sticky error of an earlier launch included).
    CudaError = 7,
    /// A bug in sofa (a caught panic). Please report it with the message.
    Internal = 8,
}

/// Storage type of the tensors of one call (`SOFA_DTYPE_*`). Accumulation is always fp32.
pub type SofaDtype = i32;
/// IEEE half precision.
pub const SOFA_DTYPE_F16: SofaDtype = 0;
/// bfloat16.
pub const SOFA_DTYPE_BF16: SofaDtype = 1;
/// IEEE single precision.
pub const SOFA_DTYPE_F32: SofaDtype = 2;

/// A CUDA stream of the runtime's device (`cudaStream_t` / `CUstream` converts to it). NULL is the
/// legacy default stream; `cudaStreamPerThread` is accepted too.
pub type SofaStream = *mut c_void;

/// One `[B, H, N, D]` tensor argument: a device address, the logical extents and the element
/// strides of the batch, head and sequence dims (the last dim is contiguous, stride 1).
/// `[B, H, N, D]` contiguous: strides `(H·N·D, N·D, D)`; `[B, N, H, D]` contiguous (what most
/// engines hold): `(N·H·D, D, H·D)`. See `sofa_tensor_bhnd` and `sofa_tensor_bnhd`.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct SofaTensor {
    /// Device address of element (0, 0, 0, 0). Inputs are only read.
    pub data: *mut c_void,
    /// Batch.
    pub b: i64,
    /// Heads.
    pub h: i64,
    /// Sequence length.
    pub n: i64,
    /// Head dim.
    pub d: i64,
    /// Element stride between batches.
    pub stride_b: i64,
    /// Element stride between heads.
    pub stride_h: i64,
    /// Element stride between sequence positions.
    pub stride_n: i64,
}

/// cosFormer parameters (SPEC §2). Start from `sofa_cosformer_params_default()`.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct SofaCosformerParams {
    /// Angle denominator M; 0 = max(N, S). Must be >= max(N, S); a decode state needs M > 0.
    pub m: i64,
    /// Non-zero: causal (sums over j <= i; needs N = S).
    pub causal: i32,
    /// Non-zero: apply ReLU to q and k (0: the caller passes non-negative features).
    pub relu: i32,
    /// Denominator clamp `max(sum w, eps)`, > 0.
    pub eps: f64,
}

/// AFT variants (`SofaAftParams::variant`, SPEC §3).
pub type SofaAftVariant = i32;
/// No position bias.
pub const SOFA_AFT_SIMPLE: SofaAftVariant = 0;
/// Band bias `w [T, 2s−1]` (fp32), 0 outside the band.
pub const SOFA_AFT_LOCAL: SofaAftVariant = 1;
/// Per-head bias `u [H, 2s−1]` (fp32), 0 outside the window.
pub const SOFA_AFT_CONV: SofaAftVariant = 2;
/// Full bias `w [T, T]` (fp32).
pub const SOFA_AFT_FULL: SofaAftVariant = 3;

/// AFT parameters (SPEC §3). Start from `sofa_aft_params_default()`.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct SofaAftParams {
    /// One of `SOFA_AFT_*`.
    pub variant: SofaAftVariant,
    /// Non-zero: causal (weight 0 for t' > t).
    pub causal: i32,
    /// Window s >= 1 of local and conv (ignored otherwise).
    pub window: i64,
}

/// How SOFT forms its landmarks (`SofaSoftParams::landmarks`).
pub type SofaLandmarks = i32;
/// Means of `m` contiguous segments of the scaled keys.
pub const SOFA_LANDMARKS_AVGPOOL1D: SofaLandmarks = 0;
/// Means of `r×r` windows of a `height×width` grid (N = height·width).
pub const SOFA_LANDMARKS_AVGPOOL2D: SofaLandmarks = 1;
/// Given by the caller: fp32 `[B,H,m,D]` in the scaled space.
pub const SOFA_LANDMARKS_GIVEN: SofaLandmarks = 2;

/// SOFT parameters (SPEC §1). Start from `sofa_soft_params_default()`.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct SofaSoftParams {
    /// One of `SOFA_LANDMARKS_*`.
    pub landmarks: SofaLandmarks,
    /// Non-zero: K = Q (the paper; k is not read).
    pub tied: i32,
    /// Landmarks m (avgpool1d, given).
    pub m: i64,
    /// avgpool2d grid height, width and window r.
    pub height: i64,
    pub width: i64,
    pub r: i64,
    /// Newton–Raphson steps T >= 1.
    pub newton_iters: i64,
    /// Ridge λ >= 0.
    pub ridge: f64,
    /// c in α = c·2/(max row sum of A)².
    pub alpha_scale: f64,
}

/// A device, its primary context and its loaded kernels. Opaque; thread-safe.
pub struct SofaRuntime {
    pub(super) rt: Arc<Runtime>,
}

/// A cosFormer causal decode state of B·H sequences (fp32 on the device). Opaque.
pub struct SofaCosformerState {
    pub(super) rt: Arc<Runtime>,
    pub(super) state: Mutex<State>,
}
