//! Status mapping, the thread-local last error, the panic barrier and argument conversion shared by
//! every entry point.

use super::types::{
    SofaAftParams, SofaCosformerParams, SofaDtype, SofaRuntime, SofaSoftParams, SofaStatus,
    SofaStream, SofaTensor, SOFA_AFT_CONV, SOFA_AFT_FULL, SOFA_AFT_LOCAL, SOFA_AFT_SIMPLE,
    SOFA_DTYPE_BF16, SOFA_DTYPE_F16, SOFA_DTYPE_F32, SOFA_LANDMARKS_AVGPOOL1D,
    SOFA_LANDMARKS_AVGPOOL2D, SOFA_LANDMARKS_GIVEN,
};
use crate::error::{Error, Result};
use crate::ops::aft::{AftParams, Variant};
use crate::ops::cosformer::CosformerParams;
use crate::ops::soft::{Landmarks, SoftParams};
use crate::ops::RawTensor;
use crate::runtime::stream::{borrow_stream, CurrentContext};
use crate::runtime::{probe, Runtime};
use crate::tensor::{DType, Dims, Layout, Strides};
use cudarc::driver::CudaStream;
use std::cell::RefCell;
use std::ffi::CString;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;

thread_local! {
    pub(super) static LAST_ERROR: RefCell<CString> = RefCell::new(CString::default());
}

pub(super) fn set_last_error(msg: &str) {
    let c = CString::new(msg.replace('\0', " ")).unwrap_or_default();
    // `try_with`: never panics, even while the thread's locals are being torn down.
    let _ = LAST_ERROR.try_with(|e| {
        if let Ok(mut slot) = e.try_borrow_mut() {
            *slot = c;
        }
    });
}

pub(super) fn status_of(e: &Error) -> SofaStatus {
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
pub(super) fn entry(f: impl FnOnce() -> Result<()>) -> SofaStatus {
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

pub(super) fn null(arg: &'static str, what: &str) -> Error {
    Error::param(arg, "NULL", format!("{what} must not be NULL"))
}

/// A handle that is NULL: no device explains it best when there is none.
pub(super) fn null_handle(arg: &'static str) -> Error {
    match probe() {
        Err(e) => e,
        Ok(_) => null(arg, "handle"),
    }
}

/// # Safety
/// `rt` is NULL or a live handle from `sofa_runtime_create`.
pub(super) unsafe fn runtime<'a>(rt: *const SofaRuntime) -> Result<&'a SofaRuntime> {
    // SAFETY: contract.
    unsafe { rt.as_ref() }.ok_or_else(|| null_handle("rt"))
}

/// # Safety
/// `p` is NULL or points to a writable `T`.
pub(super) unsafe fn out<'a, T>(arg: &'static str, p: *mut T) -> Result<&'a mut T> {
    // SAFETY: contract.
    unsafe { p.as_mut() }.ok_or_else(|| null(arg, "output pointer"))
}

pub(super) fn dtype(d: SofaDtype) -> Result<DType> {
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

pub(super) fn extent(arg: &'static str, what: &str, x: i64) -> Result<usize> {
    usize::try_from(x).map_err(|_| Error::shape(arg, format!("{what} = {x} is negative")))
}

pub(super) fn dims(arg: &'static str, b: i64, h: i64, n: i64, d: i64) -> Result<Dims> {
    Ok(Dims::new(
        extent(arg, "B", b)?,
        extent(arg, "H", h)?,
        extent(arg, "N", n)?,
        extent(arg, "D", d)?,
    ))
}

/// # Safety
/// `t` is NULL or points to a readable `SofaTensor`.
pub(super) unsafe fn tensor(arg: &'static str, t: *const SofaTensor) -> Result<RawTensor> {
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
pub(super) unsafe fn cosformer_params(p: *const SofaCosformerParams) -> Result<CosformerParams> {
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
pub(super) unsafe fn aft_params(p: *const SofaAftParams) -> Result<(Variant, AftParams)> {
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
pub(super) unsafe fn soft_params(p: *const SofaSoftParams) -> Result<SoftParams> {
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
pub(super) unsafe fn stream_of(rt: &Runtime, stream: SofaStream) -> Result<Arc<CudaStream>> {
    // SAFETY: contract.
    unsafe { borrow_stream(rt, stream as cudarc::driver::sys::CUstream) }
}

/// Runs `queue` with the runtime's context current and the caller's stream borrowed: how every
/// entry point that queues work reaches the device.
///
/// # Safety
/// As [`stream_of`].
pub(super) unsafe fn on_stream<T>(
    rt: &Runtime,
    stream: SofaStream,
    queue: impl FnOnce(&Arc<CudaStream>) -> Result<T>,
) -> Result<T> {
    let _ctx = CurrentContext::bind(rt)?;
    // SAFETY: contract.
    let stream = unsafe { stream_of(rt, stream) }?;
    queue(&stream)
}

/// The q, k, v, o descriptors of an attention call, checked in that order.
///
/// # Safety
/// Each pointer is NULL or points to a readable descriptor.
pub(super) unsafe fn qkvo(
    q: *const SofaTensor,
    k: *const SofaTensor,
    v: *const SofaTensor,
    o: *const SofaTensor,
) -> Result<[RawTensor; 4]> {
    // SAFETY: contract.
    unsafe {
        Ok([
            tensor("q", q)?,
            tensor("k", k)?,
            tensor("v", v)?,
            tensor("o", o)?,
        ])
    }
}
