//! The C ABI (cargo feature `capi`): `extern "C"` entry points over raw device pointers on the
//! caller's stream, for inference engines. `include/sofa.h` is generated from this file by
//! cbindgen (`SOFA_BLESS=1 cargo test --test capi_header` rewrites it; CI fails when it is stale).
//!
//! Every entry point catches panics, validates its pointers and returns a [`SofaStatus`]; the
//! message of a failed call is kept per thread ([`sofa_last_error`]). Ops available through C:
//! SimA, cosFormer (with its decode state), SOFT attention and its Newton pseudo-inverse, and the
//! four AFT variants.

use crate::error::{Error, Result};
use crate::ops::aft::{self, AftParams, Variant};
use crate::ops::cosformer::{self, CosformerParams, State};
use crate::ops::soft::{self, Landmarks, SoftParams};
use crate::ops::{sima, RawTensor};
use crate::runtime::stream::{borrow_stream, CurrentContext};
use crate::runtime::{probe, Runtime};
use crate::tensor::{DType, Dims, Layout, Strides};
use cudarc::driver::{CudaStream, DevicePtr};
use std::cell::RefCell;
use std::ffi::{c_char, c_void, CString};
use std::panic::{catch_unwind, AssertUnwindSafe};
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
    rt: Arc<Runtime>,
}

/// A cosFormer causal decode state of B·H sequences (fp32 on the device). Opaque.
pub struct SofaCosformerState {
    rt: Arc<Runtime>,
    state: Mutex<State>,
}

// ---------------------------------------------------------------------------------------------
// Plumbing: status mapping, last error, panic barrier, argument conversion.

thread_local! {
    static LAST_ERROR: RefCell<CString> = RefCell::new(CString::default());
}

fn set_last_error(msg: &str) {
    let c = CString::new(msg.replace('\0', " ")).unwrap_or_default();
    // `try_with`: never panics, even while the thread's locals are being torn down.
    let _ = LAST_ERROR.try_with(|e| {
        if let Ok(mut slot) = e.try_borrow_mut() {
            *slot = c;
        }
    });
}

fn status_of(e: &Error) -> SofaStatus {
    match e {
        Error::NoDevice(_) => SofaStatus::NoDevice,
        Error::InvalidParam { .. } => SofaStatus::InvalidArgument,
        Error::InvalidShape { .. } => SofaStatus::InvalidShape,
        Error::BufferTooSmall { .. } => SofaStatus::BufferTooSmall,
        Error::OutOfMemory { .. } => SofaStatus::OutOfMemory,
        Error::KernelLoad { .. } => SofaStatus::KernelLoad,
        Error::Driver(_) => SofaStatus::CudaError,
        Error::Io { .. } => SofaStatus::Internal,
    }
}

/// Runs one entry point: clears the thread's last error, catches panics, maps errors.
fn entry(f: impl FnOnce() -> Result<()>) -> SofaStatus {
    set_last_error("");
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(Ok(())) => SofaStatus::Ok,
        Ok(Err(e)) => {
            set_last_error(&e.to_string());
            status_of(&e)
        }
        Err(panic) => {
            let what = panic
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "unknown panic".into());
            set_last_error(&format!("internal error in sofa: {what}"));
            SofaStatus::Internal
        }
    }
}

fn null(arg: &'static str, what: &str) -> Error {
    Error::param(arg, "NULL", format!("{what} must not be NULL"))
}

/// A handle that is NULL: no device explains it best when there is none.
fn null_handle(arg: &'static str) -> Error {
    match probe() {
        Err(e) => e,
        Ok(_) => null(arg, "handle"),
    }
}

/// # Safety
/// `rt` is NULL or a live handle from `sofa_runtime_create`.
unsafe fn runtime<'a>(rt: *const SofaRuntime) -> Result<&'a SofaRuntime> {
    // SAFETY: contract.
    unsafe { rt.as_ref() }.ok_or_else(|| null_handle("rt"))
}

/// # Safety
/// `p` is NULL or points to a writable `T`.
unsafe fn out<'a, T>(arg: &'static str, p: *mut T) -> Result<&'a mut T> {
    // SAFETY: contract.
    unsafe { p.as_mut() }.ok_or_else(|| null(arg, "output pointer"))
}

fn dtype(d: SofaDtype) -> Result<DType> {
    match d {
        SOFA_DTYPE_F16 => Ok(DType::F16),
        SOFA_DTYPE_BF16 => Ok(DType::BF16),
        SOFA_DTYPE_F32 => Ok(DType::F32),
        _ => Err(Error::param(
            "dtype",
            d,
            "expected SOFA_DTYPE_F16 (0), SOFA_DTYPE_BF16 (1) or SOFA_DTYPE_F32 (2)",
        )),
    }
}

fn extent(arg: &'static str, what: &str, x: i64) -> Result<usize> {
    usize::try_from(x).map_err(|_| Error::shape(arg, format!("{what} = {x} is negative")))
}

fn dims(arg: &'static str, b: i64, h: i64, n: i64, d: i64) -> Result<Dims> {
    Ok(Dims::new(
        extent(arg, "B", b)?,
        extent(arg, "H", h)?,
        extent(arg, "N", n)?,
        extent(arg, "D", d)?,
    ))
}

/// # Safety
/// `t` is NULL or points to a readable `SofaTensor`.
unsafe fn tensor(arg: &'static str, t: *const SofaTensor) -> Result<RawTensor> {
    // SAFETY: contract.
    let t = unsafe { t.as_ref() }.ok_or_else(|| null(arg, "tensor descriptor"))?;
    if t.data.is_null() {
        return Err(null(arg, "tensor data"));
    }
    let layout = Layout {
        dims: dims(arg, t.b, t.h, t.n, t.d)?,
        strides: Strides {
            batch: extent(arg, "stride_b", t.stride_b)?,
            head: extent(arg, "stride_h", t.stride_h)?,
            seq: extent(arg, "stride_n", t.stride_n)?,
        },
    };
    Ok(RawTensor {
        ptr: t.data as u64,
        layout,
    })
}

/// # Safety
/// `p` is NULL or points to readable parameters.
unsafe fn cosformer_params(p: *const SofaCosformerParams) -> Result<CosformerParams> {
    // SAFETY: contract.
    let p = unsafe { p.as_ref() }.ok_or_else(|| null("params", "parameters"))?;
    let m = match p.m {
        0 => None,
        m if m < 0 => return Err(Error::param("M", m, "must be >= 0 (0 = max(N, S))")),
        m => Some(m as usize),
    };
    Ok(CosformerParams {
        m,
        causal: p.causal != 0,
        relu: p.relu != 0,
        eps: p.eps,
    })
}

/// # Safety
/// `p` is NULL or points to readable parameters.
unsafe fn aft_params(p: *const SofaAftParams) -> Result<(Variant, AftParams)> {
    // SAFETY: contract.
    let p = unsafe { p.as_ref() }.ok_or_else(|| null("params", "parameters"))?;
    let window = || extent("window", "s", p.window);
    let variant = match p.variant {
        SOFA_AFT_SIMPLE => Variant::Simple,
        SOFA_AFT_LOCAL => Variant::Local { window: window()? },
        SOFA_AFT_CONV => Variant::Conv { window: window()? },
        SOFA_AFT_FULL => Variant::Full,
        v => {
            return Err(Error::param(
                "variant",
                v,
                "expected SOFA_AFT_SIMPLE … SOFA_AFT_FULL",
            ))
        }
    };
    Ok((
        variant,
        AftParams {
            causal: p.causal != 0,
        },
    ))
}

/// # Safety
/// `p` is NULL or points to readable parameters.
unsafe fn soft_params(p: *const SofaSoftParams) -> Result<SoftParams> {
    // SAFETY: contract.
    let p = unsafe { p.as_ref() }.ok_or_else(|| null("params", "parameters"))?;
    let count = |arg, x: i64| usize::try_from(x).map_err(|_| Error::param(arg, x, "must be >= 0"));
    let landmarks = match p.landmarks {
        SOFA_LANDMARKS_AVGPOOL1D => Landmarks::AvgPool1d {
            m: count("m", p.m)?,
        },
        SOFA_LANDMARKS_GIVEN => Landmarks::Given {
            m: count("m", p.m)?,
        },
        SOFA_LANDMARKS_AVGPOOL2D => Landmarks::AvgPool2d {
            height: count("height", p.height)?,
            width: count("width", p.width)?,
            r: count("r", p.r)?,
        },
        l => return Err(Error::param("landmarks", l, "expected SOFA_LANDMARKS_*")),
    };
    Ok(SoftParams {
        landmarks,
        newton_iters: count("newton_iters", p.newton_iters)?,
        ridge: p.ridge,
        alpha_scale: p.alpha_scale,
        tied: p.tied != 0,
    })
}

/// # Safety
/// `stream` is a live stream handle (or NULL / a special handle) that outlives the wrapper.
unsafe fn stream_of(rt: &Runtime, stream: SofaStream) -> Result<Arc<CudaStream>> {
    // SAFETY: contract.
    unsafe { borrow_stream(rt, stream as cudarc::driver::sys::CUstream) }
}

// ---------------------------------------------------------------------------------------------
// Library, errors, devices.

/// The library version, e.g. "0.1.0" (static storage).
#[no_mangle]
pub extern "C" fn sofa_version() -> *const c_char {
    concat!(env!("CARGO_PKG_VERSION"), "\0").as_ptr().cast()
}

/// The C ABI version the library was built with (`SOFA_ABI_VERSION` of its header).
#[no_mangle]
pub extern "C" fn sofa_abi_version() -> u32 {
    SOFA_ABI_VERSION
}

/// The message of the last failed call on this thread ("" after a successful one). The string
/// belongs to sofa and stays valid until the next sofa call on this thread.
#[no_mangle]
pub extern "C" fn sofa_last_error() -> *const c_char {
    LAST_ERROR
        .try_with(|e| e.try_borrow().map(|c| c.as_ptr()).ok())
        .ok()
        .flatten()
        .unwrap_or(c"".as_ptr())
}

/// A static name for a status value ("SOFA_STATUS_OK", ...; "SOFA_STATUS_UNKNOWN" for any
/// other number).
#[no_mangle]
pub extern "C" fn sofa_status_name(status: i32) -> *const c_char {
    const NAMES: [&std::ffi::CStr; 9] = [
        c"SOFA_STATUS_OK",
        c"SOFA_STATUS_NO_DEVICE",
        c"SOFA_STATUS_INVALID_ARGUMENT",
        c"SOFA_STATUS_INVALID_SHAPE",
        c"SOFA_STATUS_BUFFER_TOO_SMALL",
        c"SOFA_STATUS_OUT_OF_MEMORY",
        c"SOFA_STATUS_KERNEL_LOAD",
        c"SOFA_STATUS_CUDA_ERROR",
        c"SOFA_STATUS_INTERNAL",
    ];
    usize::try_from(status)
        .ok()
        .and_then(|i| NAMES.get(i))
        .copied()
        .unwrap_or(c"SOFA_STATUS_UNKNOWN")
        .as_ptr()
}

/// Number of CUDA devices; `SOFA_STATUS_NO_DEVICE` (and 0) when there is no driver or device.
///
/// # Safety
/// `count` is NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn sofa_device_count(count: *mut i32) -> SofaStatus {
    entry(|| {
        // SAFETY: contract.
        let count = unsafe { out("count", count) }?;
        *count = 0;
        *count = probe()?.min(i32::MAX as usize) as i32;
        Ok(())
    })
}

// ---------------------------------------------------------------------------------------------
// Runtime.

/// Opens device `device` in its primary context (the CUDA runtime's context: retained, never
/// created) and returns a handle in `*out` (NULL on failure). Kernels load on first use or with
/// `sofa_runtime_load_kernels`. The thread's current context is left as it was.
///
/// # Safety
/// `out` is NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn sofa_runtime_create(
    device: i32,
    out: *mut *mut SofaRuntime,
) -> SofaStatus {
    entry(|| {
        // SAFETY: contract.
        let out = unsafe { self::out("out", out) }?;
        *out = std::ptr::null_mut();
        probe()?;
        let ordinal =
            usize::try_from(device).map_err(|_| Error::param("device", device, "must be >= 0"))?;
        let _restore = CurrentContext::save()?;
        let rt = Runtime::new(ordinal)?;
        // SAFETY: the C API never lets cudarc order work across streams: every buffer is the
        // caller's (ordered by the caller, per the header's contract) except a decode state's,
        // which is only used on the streams the caller passes, in the order it calls.
        unsafe { rt.context().disable_event_tracking() };
        *out = Box::into_raw(Box::new(SofaRuntime { rt }));
        Ok(())
    })
}

/// Releases a runtime handle (NULL is a no-op). Work queued through it must have completed.
/// Decode states keep the device open until they are destroyed too.
///
/// # Safety
/// `rt` is NULL or a live handle from `sofa_runtime_create`, not used afterwards.
#[no_mangle]
pub unsafe extern "C" fn sofa_runtime_destroy(rt: *mut SofaRuntime) -> SofaStatus {
    entry(|| {
        if rt.is_null() {
            return Ok(());
        }
        let _restore = CurrentContext::save()?;
        // SAFETY: made by `Box::into_raw` in `sofa_runtime_create` (contract).
        drop(unsafe { Box::from_raw(rt) });
        Ok(())
    })
}

/// The device ordinal of a runtime.
///
/// # Safety
/// `rt` is NULL or live; `device` is NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn sofa_runtime_device(
    rt: *const SofaRuntime,
    device: *mut i32,
) -> SofaStatus {
    entry(|| {
        // SAFETY: contract.
        let (rt, device) = unsafe { (runtime(rt)?, out("device", device)?) };
        *device = rt.rt.info().ordinal as i32;
        Ok(())
    })
}

/// Loads every kernel family now (fatbin, else NVRTC). Call it once before capturing sofa calls
/// into a CUDA graph: an op's first call loads its module, which is not a stream operation.
///
/// # Safety
/// `rt` is NULL or live.
#[no_mangle]
pub unsafe extern "C" fn sofa_runtime_load_kernels(rt: *const SofaRuntime) -> SofaStatus {
    entry(|| {
        // SAFETY: contract.
        let rt = unsafe { runtime(rt) }?;
        let _ctx = CurrentContext::bind(&rt.rt)?;
        rt.rt.load_all()?;
        Ok(())
    })
}

// ---------------------------------------------------------------------------------------------
// Tensor descriptors.

/// Descriptor of a contiguous `[B, H, N, D]` tensor at `data`.
#[no_mangle]
pub extern "C" fn sofa_tensor_bhnd(
    data: *mut c_void,
    b: i64,
    h: i64,
    n: i64,
    d: i64,
) -> SofaTensor {
    SofaTensor {
        data,
        b,
        h,
        n,
        d,
        stride_b: h.saturating_mul(n).saturating_mul(d),
        stride_h: n.saturating_mul(d),
        stride_n: d,
    }
}

/// Descriptor of a contiguous `[B, N, H, D]` tensor at `data` (arguments in memory order).
#[no_mangle]
pub extern "C" fn sofa_tensor_bnhd(
    data: *mut c_void,
    b: i64,
    n: i64,
    h: i64,
    d: i64,
) -> SofaTensor {
    SofaTensor {
        data,
        b,
        h,
        n,
        d,
        stride_b: n.saturating_mul(h).saturating_mul(d),
        stride_h: d,
        stride_n: h.saturating_mul(d),
    }
}

// ---------------------------------------------------------------------------------------------
// SimA.

/// Workspace bytes of `sofa_sima_forward` for q, k `[B,H,N,D]`, v, o `[B,H,N,Dv]` (any strides,
/// any dtype). Needs no device.
///
/// # Safety
/// `bytes` is NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn sofa_sima_workspace_bytes(
    b: i64,
    h: i64,
    n: i64,
    d: i64,
    dv: i64,
    bytes: *mut usize,
) -> SofaStatus {
    entry(|| {
        // SAFETY: contract.
        let bytes = unsafe { out("bytes", bytes) }?;
        *bytes = 0;
        *bytes = sima::workspace_bytes(dims("q", b, h, n, d)?, extent("v", "Dv", dv)?)?;
        Ok(())
    })
}

/// SimA (SPEC §4): `o = q̂ k̂ᵀ v` with column-ℓ1-normalized q and k, queued on `stream`.
/// q, k `[B,H,N,D]`; v, o `[B,H,N,Dv]`; `workspace` holds `workspace_bytes` bytes (at least
/// `sofa_sima_workspace_bytes`; NULL allowed when that is 0).
///
/// # Safety
/// See the header's contract: live device pointers of the runtime's device covering each
/// tensor's span, `o` not aliasing the inputs, a live stream of the runtime's device.
#[no_mangle]
#[allow(clippy::too_many_arguments)]
pub unsafe extern "C" fn sofa_sima_forward(
    rt: *const SofaRuntime,
    stream: SofaStream,
    dtype: SofaDtype,
    q: *const SofaTensor,
    k: *const SofaTensor,
    v: *const SofaTensor,
    o: *const SofaTensor,
    workspace: *mut c_void,
    workspace_bytes: usize,
) -> SofaStatus {
    entry(|| {
        // SAFETY: contract (pointers are NULL or valid).
        let (rt, q, k, v, o) = unsafe {
            (
                runtime(rt)?,
                tensor("q", q)?,
                tensor("k", k)?,
                tensor("v", v)?,
                tensor("o", o)?,
            )
        };
        let dtype = self::dtype(dtype)?;
        let (ws, ws_len) = (workspace as u64, workspace_bytes);
        let _ctx = CurrentContext::bind(&rt.rt)?;
        // SAFETY: contract; the op validates shapes, alignment and the workspace size.
        unsafe {
            let stream = stream_of(&rt.rt, stream)?;
            sima::forward_raw(&rt.rt, &stream, dtype, q, k, v, o, ws, ws_len)
        }
    })
}

// ---------------------------------------------------------------------------------------------
// cosFormer.

/// Defaults: M = max(N, S), non-causal, ReLU on, eps = 1e-6.
#[no_mangle]
pub extern "C" fn sofa_cosformer_params_default() -> SofaCosformerParams {
    SofaCosformerParams {
        m: 0,
        causal: 0,
        relu: 1,
        eps: 1e-6,
    }
}

/// Workspace bytes of `sofa_cosformer_forward` for q `[B,H,N,D]`, k `[B,H,S,D]`, v `[B,H,S,Dv]`
/// (any strides, any dtype). Needs no device.
///
/// # Safety
/// `params` is NULL or readable; `bytes` is NULL or writable.
#[no_mangle]
#[allow(clippy::too_many_arguments)]
pub unsafe extern "C" fn sofa_cosformer_workspace_bytes(
    b: i64,
    h: i64,
    n: i64,
    s: i64,
    d: i64,
    dv: i64,
    params: *const SofaCosformerParams,
    bytes: *mut usize,
) -> SofaStatus {
    entry(|| {
        // SAFETY: contract.
        let (bytes, params) = unsafe { (out("bytes", bytes)?, cosformer_params(params)?) };
        *bytes = 0;
        *bytes = cosformer::workspace_bytes(
            dims("q", b, h, n, d)?,
            extent("k", "S", s)?,
            extent("v", "Dv", dv)?,
            &params,
        )?;
        Ok(())
    })
}

/// cosFormer (SPEC §2), non-causal or causal, queued on `stream`. q `[B,H,N,D]`, k `[B,H,S,D]`,
/// v `[B,H,S,Dv]`, o `[B,H,N,Dv]`; `workspace` as `sofa_cosformer_workspace_bytes` says.
///
/// # Safety
/// As `sofa_sima_forward`; `params` is NULL or readable.
#[no_mangle]
#[allow(clippy::too_many_arguments)]
pub unsafe extern "C" fn sofa_cosformer_forward(
    rt: *const SofaRuntime,
    stream: SofaStream,
    params: *const SofaCosformerParams,
    dtype: SofaDtype,
    q: *const SofaTensor,
    k: *const SofaTensor,
    v: *const SofaTensor,
    o: *const SofaTensor,
    workspace: *mut c_void,
    workspace_bytes: usize,
) -> SofaStatus {
    entry(|| {
        // SAFETY: contract (pointers are NULL or valid).
        let (rt, params, q, k, v, o) = unsafe {
            (
                runtime(rt)?,
                cosformer_params(params)?,
                tensor("q", q)?,
                tensor("k", k)?,
                tensor("v", v)?,
                tensor("o", o)?,
            )
        };
        let dtype = self::dtype(dtype)?;
        let (ws, ws_len) = (workspace as u64, workspace_bytes);
        let _ctx = CurrentContext::bind(&rt.rt)?;
        // SAFETY: contract; the op validates shapes, alignment and the workspace size.
        unsafe {
            let stream = stream_of(&rt.rt, stream)?;
            cosformer::forward_raw(&rt.rt, &stream, &params, dtype, q, k, v, o, ws, ws_len)
        }
    })
}

// ---------------------------------------------------------------------------------------------
// SOFT.

/// Defaults: avgpool1d with m = 64, tied, T = 20, λ = 0.01, c = 0.9.
#[no_mangle]
pub extern "C" fn sofa_soft_params_default() -> SofaSoftParams {
    let d = SoftParams::default();
    SofaSoftParams {
        landmarks: SOFA_LANDMARKS_AVGPOOL1D,
        tied: 1,
        m: d.landmarks.count() as i64,
        height: 0,
        width: 0,
        r: 2,
        newton_iters: d.newton_iters as i64,
        ridge: d.ridge,
        alpha_scale: d.alpha_scale,
    }
}

/// Workspace bytes of `sofa_soft_attention` for q `[B,H,N,D]`, v `[B,H,N,Dv]` (independent of
/// N beyond the landmark pooling). Needs no device.
///
/// # Safety
/// `params` NULL or readable; `bytes` NULL or writable.
#[no_mangle]
#[allow(clippy::too_many_arguments)]
pub unsafe extern "C" fn sofa_soft_workspace_bytes(
    b: i64,
    h: i64,
    n: i64,
    d: i64,
    dv: i64,
    params: *const SofaSoftParams,
    bytes: *mut usize,
) -> SofaStatus {
    entry(|| {
        // SAFETY: contract.
        let (bytes, params) = unsafe { (out("bytes", bytes)?, soft_params(params)?) };
        *bytes = 0;
        *bytes = soft::workspace_bytes(dims("q", b, h, n, d)?, extent("v", "Dv", dv)?, &params)?;
        Ok(())
    })
}

/// SOFT attention (SPEC §1), the fused two-pass form, queued on `stream`. q, k `[B,H,N,D]` (k is
/// not read when `params.tied`; pass q), v, o `[B,H,N,Dv]`; `given` is the fp32 `[B,H,m,D]`
/// landmark tensor of `SOFA_LANDMARKS_GIVEN` holding `given_len` floats (else NULL, 0).
///
/// # Safety
/// As `sofa_sima_forward`; `params` NULL or readable; `given` as described.
#[no_mangle]
#[allow(clippy::too_many_arguments)]
pub unsafe extern "C" fn sofa_soft_attention(
    rt: *const SofaRuntime,
    stream: SofaStream,
    params: *const SofaSoftParams,
    dtype: SofaDtype,
    q: *const SofaTensor,
    k: *const SofaTensor,
    v: *const SofaTensor,
    o: *const SofaTensor,
    given: *const c_void,
    given_len: usize,
    workspace: *mut c_void,
    workspace_bytes: usize,
) -> SofaStatus {
    entry(|| {
        // SAFETY: contract (pointers are NULL or valid).
        let (rt, params, q, k, v, o) = unsafe {
            (
                runtime(rt)?,
                soft_params(params)?,
                tensor("q", q)?,
                tensor("k", k)?,
                tensor("v", v)?,
                tensor("o", o)?,
            )
        };
        let dtype = self::dtype(dtype)?;
        let plan = soft::Plan::new(
            &q.layout,
            (!params.tied).then_some(&k.layout),
            &v.layout,
            &o.layout,
            &params,
            rt.rt.info().smem_per_block_optin,
        )?;
        let given = (!given.is_null()).then_some((given as u64, given_len));
        let (ws, ws_len) = (workspace as u64, workspace_bytes);
        let _ctx = CurrentContext::bind(&rt.rt)?;
        // SAFETY: contract; the op validates shapes, alignment, the landmarks and the workspace.
        unsafe {
            let stream = stream_of(&rt.rt, stream)?;
            soft::attention_raw(&rt.rt, &stream, &plan, dtype, q, k, v, o, given, ws, ws_len)
        }
    })
}

/// The batched Newton plan of `sofa_soft_newton_pinv` (only the Newton fields of `params` are
/// read: `newton_iters`, `ridge`, `alpha_scale`).
unsafe fn newton_plan(
    batch: i64,
    m: i64,
    params: *const SofaSoftParams,
    smem_optin: usize,
) -> Result<soft::NewtonPlan> {
    // SAFETY: contract.
    let params = unsafe { soft_params(params) }?;
    let count = |arg, x: i64| usize::try_from(x).map_err(|_| Error::param(arg, x, "must be >= 0"));
    let (batch, m) = (count("batch", batch)?, count("m", m)?);
    soft::NewtonPlan::new(batch, m, &params, soft::NewtonPath::Auto, smem_optin)
}

/// Workspace bytes of `sofa_soft_newton_pinv` for `batch` fp32 `m×m` matrices: an upper bound
/// for any device (0 where the one-launch kernel runs; the multi-launch path's scratch
/// otherwise). Needs no device.
///
/// # Safety
/// `params` NULL or readable; `bytes` NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn sofa_soft_newton_workspace_bytes(
    batch: i64,
    m: i64,
    params: *const SofaSoftParams,
    bytes: *mut usize,
) -> SofaStatus {
    entry(|| {
        // SAFETY: contract.
        let bytes = unsafe { out("bytes", bytes)? };
        *bytes = 0;
        // SAFETY: contract. A device with no shared memory: the multi-launch path's size.
        *bytes = unsafe { newton_plan(batch, m, params, 0)? }.workspace_bytes();
        Ok(())
    })
}

/// The batched Newton–Raphson pseudo-inverse of SOFT (SPEC §1.4), queued on `stream`: `z` =
/// `newton_iters` steps on `a + ridge·I` for `batch` fp32 row-major `m×m` matrices `a`
/// (`[batch][m][m]`, read only) into `z` (the same size, not aliasing `a`). m ≤ 128: all steps in
/// one launch with the matrices in shared memory; up to 256: one launch per GEMM over the
/// workspace (`sofa_soft_newton_workspace_bytes`; NULL and 0 are fine where it says 0).
///
/// # Safety
/// `rt` NULL or a live runtime; `stream` a stream of its device (or NULL); `params` NULL or
/// readable; `a`, `z` device addresses of `batch·m·m` floats and `workspace` of
/// `workspace_bytes` bytes (4-byte aligned), valid until the queued work completes.
#[no_mangle]
#[allow(clippy::too_many_arguments)]
pub unsafe extern "C" fn sofa_soft_newton_pinv(
    rt: *const SofaRuntime,
    stream: SofaStream,
    params: *const SofaSoftParams,
    batch: i64,
    m: i64,
    a: *const c_void,
    z: *mut c_void,
    workspace: *mut c_void,
    workspace_bytes: usize,
) -> SofaStatus {
    entry(|| {
        // SAFETY: contract (pointers are NULL or valid).
        let rt = unsafe { runtime(rt)? };
        // SAFETY: contract.
        let plan = unsafe { newton_plan(batch, m, params, rt.rt.info().smem_per_block_optin)? };
        let len = plan.len();
        let (ws, ws_len) = (workspace as u64, workspace_bytes);
        let _ctx = CurrentContext::bind(&rt.rt)?;
        // SAFETY: contract; the op checks NULL and misaligned addresses, the workspace size and
        // the device.
        unsafe {
            let stream = stream_of(&rt.rt, stream)?;
            soft::newton_pinv_raw(
                &rt.rt, &stream, &plan, a as u64, len, z as u64, len, ws, ws_len,
            )
        }
    })
}

// ---------------------------------------------------------------------------------------------
// AFT.

/// Defaults: AFT-simple, non-causal, window 64 (for local and conv).
#[no_mangle]
pub extern "C" fn sofa_aft_params_default() -> SofaAftParams {
    SofaAftParams {
        variant: SOFA_AFT_SIMPLE,
        causal: 0,
        window: 64,
    }
}

/// fp32 values the bias of `params.variant` must hold for T and H (0 for simple). Needs no device.
///
/// # Safety
/// `params` NULL or readable; `len` NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn sofa_aft_bias_len(
    t: i64,
    h: i64,
    params: *const SofaAftParams,
    len: *mut usize,
) -> SofaStatus {
    entry(|| {
        // SAFETY: contract.
        let (len, (variant, _)) = unsafe { (out("len", len)?, aft_params(params)?) };
        *len = 0;
        let (t, h) = (extent("q", "T", t)?, extent("q", "H", h)?);
        *len = variant.bias_len(t, h)?.map_or(0, |(_, n)| n);
        Ok(())
    })
}

/// Workspace bytes of `sofa_aft_forward` for q, k, v, o `[B,H,T,D]`. Needs no device.
///
/// # Safety
/// `params` NULL or readable; `bytes` NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn sofa_aft_workspace_bytes(
    b: i64,
    h: i64,
    t: i64,
    d: i64,
    params: *const SofaAftParams,
    bytes: *mut usize,
) -> SofaStatus {
    entry(|| {
        // SAFETY: contract.
        let (bytes, (variant, p)) = unsafe { (out("bytes", bytes)?, aft_params(params)?) };
        *bytes = 0;
        *bytes = aft::workspace_bytes(dims("q", b, h, t, d)?, variant, &p)?;
        Ok(())
    })
}

/// AFT (SPEC §3) of `params.variant`, queued on `stream`. q, k, v, o `[B,H,T,D]`; `bias` is the
/// fp32 `w` (local `[T, 2s−1]`, full `[T, T]`) or `u` (conv `[H, 2s−1]`) holding `bias_len`
/// floats (`sofa_aft_bias_len`), NULL and 0 for simple.
///
/// # Safety
/// As `sofa_sima_forward`; `params` NULL or readable; `bias` as described.
#[no_mangle]
#[allow(clippy::too_many_arguments)]
pub unsafe extern "C" fn sofa_aft_forward(
    rt: *const SofaRuntime,
    stream: SofaStream,
    params: *const SofaAftParams,
    dtype: SofaDtype,
    q: *const SofaTensor,
    k: *const SofaTensor,
    v: *const SofaTensor,
    o: *const SofaTensor,
    bias: *const c_void,
    bias_len: usize,
    workspace: *mut c_void,
    workspace_bytes: usize,
) -> SofaStatus {
    entry(|| {
        // SAFETY: contract (pointers are NULL or valid).
        let (rt, (variant, p), q, k, v, o) = unsafe {
            (
                runtime(rt)?,
                aft_params(params)?,
                tensor("q", q)?,
                tensor("k", k)?,
                tensor("v", v)?,
                tensor("o", o)?,
            )
        };
        let dtype = self::dtype(dtype)?;
        let (w, ws, ws_len) = (bias as u64, workspace as u64, workspace_bytes);
        let _ctx = CurrentContext::bind(&rt.rt)?;
        // SAFETY: contract; the op validates shapes, the bias length, alignment and workspace.
        unsafe {
            let stream = stream_of(&rt.rt, stream)?;
            aft::forward_raw(
                &rt.rt, &stream, variant, &p, dtype, q, k, v, o, w, bias_len, ws, ws_len,
            )
        }
    })
}

/// # Safety
/// `state` is NULL or a live handle.
unsafe fn state_ref<'a>(state: *const SofaCosformerState) -> Result<&'a SofaCosformerState> {
    // SAFETY: contract.
    unsafe { state.as_ref() }.ok_or_else(|| null_handle("state"))
}

fn lock(s: &SofaCosformerState) -> std::sync::MutexGuard<'_, State> {
    // A panic inside a call leaves the host side of the state consistent (pos is updated last).
    s.state.lock().unwrap_or_else(|p| p.into_inner())
}

/// A zeroed causal decode state for B·H sequences (`params.m` > 0 is the fixed M; `causal` is
/// ignored). This is the one call that allocates device memory: `B·H·(2·D·Dv + 2·D)` floats,
/// allocated and zeroed in stream order on `stream`, and freed on the same stream by
/// `sofa_cosformer_state_destroy`: that stream must outlive the state.
///
/// # Safety
/// `rt` NULL or live; `stream` live (see above); `params` NULL or readable; `out` NULL or
/// writable.
#[no_mangle]
#[allow(clippy::too_many_arguments)]
pub unsafe extern "C" fn sofa_cosformer_state_create(
    rt: *const SofaRuntime,
    stream: SofaStream,
    b: i64,
    h: i64,
    d: i64,
    dv: i64,
    params: *const SofaCosformerParams,
    out: *mut *mut SofaCosformerState,
) -> SofaStatus {
    entry(|| {
        // SAFETY: contract.
        let out = unsafe { self::out("out", out) }?;
        *out = std::ptr::null_mut();
        // SAFETY: contract.
        let (rt, params) = unsafe { (runtime(rt)?, cosformer_params(params)?) };
        let dims = dims("state", b, h, 1, d)?;
        let dv = extent("state", "Dv", dv)?;
        let _ctx = CurrentContext::bind(&rt.rt)?;
        // SAFETY: contract.
        let stream = unsafe { stream_of(&rt.rt, stream) }?;
        let state = State::new(&rt.rt, &stream, dims.b, dims.h, dims.d, dv, &params)?;
        *out = Box::into_raw(Box::new(SofaCosformerState {
            rt: rt.rt.clone(),
            state: Mutex::new(state),
        }));
        Ok(())
    })
}

/// Frees a decode state (NULL is a no-op): the free is queued on the stream it was created on.
/// Work using the state must be queued before (or on that stream).
///
/// # Safety
/// `state` is NULL or a live handle, not used afterwards.
#[no_mangle]
pub unsafe extern "C" fn sofa_cosformer_state_destroy(
    state: *mut SofaCosformerState,
) -> SofaStatus {
    entry(|| {
        if state.is_null() {
            return Ok(());
        }
        // SAFETY: made by `Box::into_raw` in `sofa_cosformer_state_create` (contract).
        let state = unsafe { Box::from_raw(state) };
        let _ctx = CurrentContext::bind(&state.rt)?;
        drop(state);
        Ok(())
    })
}

/// Tokens consumed so far; the next token sits at 1-based position `*pos + 1`.
///
/// # Safety
/// `state` NULL or live; `pos` NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn sofa_cosformer_state_position(
    state: *const SofaCosformerState,
    pos: *mut i64,
) -> SofaStatus {
    entry(|| {
        // SAFETY: contract.
        let (state, pos) = unsafe { (state_ref(state)?, out("pos", pos)?) };
        *pos = lock(state).pos() as i64;
        Ok(())
    })
}

/// The state's device buffer: `[B·H][2·D·Dv + 2·D]` fp32 (`KVs`, `KVc`, `zs`, `zc` per
/// sequence), for an engine that snapshots or copies it. Owned by the state.
///
/// # Safety
/// `state` NULL or live; `data` and `bytes` NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn sofa_cosformer_state_buffer(
    state: *const SofaCosformerState,
    data: *mut *mut c_void,
    bytes: *mut usize,
) -> SofaStatus {
    entry(|| {
        // SAFETY: contract.
        let (state, data, bytes) =
            unsafe { (state_ref(state)?, out("data", data)?, out("bytes", bytes)?) };
        let s = lock(state);
        let stream = state.rt.default_stream();
        // Event tracking is off for C runtimes: reading the address queues nothing.
        let (ptr, _guard) = s.buffer().device_ptr(&stream);
        *data = ptr as *mut c_void;
        *bytes = s.buffer().len() * 4;
        Ok(())
    })
}

/// Workspace bytes of a prefill of `n` tokens with this state.
///
/// # Safety
/// `state` NULL or live; `bytes` NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn sofa_cosformer_state_workspace_bytes(
    state: *const SofaCosformerState,
    n: i64,
    bytes: *mut usize,
) -> SofaStatus {
    entry(|| {
        // SAFETY: contract.
        let (state, bytes) = unsafe { (state_ref(state)?, out("bytes", bytes)?) };
        *bytes = 0;
        *bytes = lock(state).workspace_bytes(extent("q", "N", n)?)?;
        Ok(())
    })
}

/// Consumes `n` tokens per sequence (q, k `[B,H,n,D]`, v, o `[B,H,n,Dv]`), writing their causal
/// outputs, positions continuing from `sofa_cosformer_state_position`.
///
/// # Safety
/// As `sofa_cosformer_forward`; calls on one state are ordered by the caller (same stream, or
/// synchronized streams).
#[no_mangle]
#[allow(clippy::too_many_arguments)]
pub unsafe extern "C" fn sofa_cosformer_state_prefill(
    state: *mut SofaCosformerState,
    stream: SofaStream,
    dtype: SofaDtype,
    q: *const SofaTensor,
    k: *const SofaTensor,
    v: *const SofaTensor,
    o: *const SofaTensor,
    workspace: *mut c_void,
    workspace_bytes: usize,
) -> SofaStatus {
    entry(|| {
        // SAFETY: contract (pointers are NULL or valid).
        let (state, q, k, v, o) = unsafe {
            (
                state_ref(state)?,
                tensor("q", q)?,
                tensor("k", k)?,
                tensor("v", v)?,
                tensor("o", o)?,
            )
        };
        let dtype = self::dtype(dtype)?;
        let (ws, ws_len) = (workspace as u64, workspace_bytes);
        let rt = &state.rt;
        let _ctx = CurrentContext::bind(rt)?;
        // SAFETY: contract; the op validates shapes, alignment and the workspace size.
        unsafe {
            let stream = stream_of(rt, stream)?;
            lock(state).prefill_raw(rt, &stream, dtype, q, k, v, o, ws, ws_len)
        }
    })
}

/// One decode step: q, k `[B,H,1,D]`, v, o `[B,H,1,Dv]` at position `position + 1`. No workspace.
///
/// # Safety
/// As `sofa_cosformer_state_prefill`.
#[no_mangle]
#[allow(clippy::too_many_arguments)]
pub unsafe extern "C" fn sofa_cosformer_state_step(
    state: *mut SofaCosformerState,
    stream: SofaStream,
    dtype: SofaDtype,
    q: *const SofaTensor,
    k: *const SofaTensor,
    v: *const SofaTensor,
    o: *const SofaTensor,
) -> SofaStatus {
    entry(|| {
        // SAFETY: contract (pointers are NULL or valid).
        let (state, q, k, v, o) = unsafe {
            (
                state_ref(state)?,
                tensor("q", q)?,
                tensor("k", k)?,
                tensor("v", v)?,
                tensor("o", o)?,
            )
        };
        let dtype = self::dtype(dtype)?;
        let rt = &state.rt;
        let _ctx = CurrentContext::bind(rt)?;
        // SAFETY: contract; the op validates shapes and alignment.
        unsafe {
            let stream = stream_of(rt, stream)?;
            lock(state).step_raw(rt, &stream, dtype, q, k, v, o)
        }
    })
}
