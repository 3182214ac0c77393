//! The C ABI (cargo feature `capi`): `extern "C"` entry points over raw device pointers on the
//! caller's stream, for inference engines. `include/sofa.h` is generated from this module's files
//! by cbindgen (`SOFA_BLESS=1 cargo test --test capi_header` rewrites it; CI fails when it is stale).
//!
//! Every entry point catches panics, validates its pointers and returns a [`SofaStatus`]; the
//! message of a failed call is kept per thread ([`sofa_last_error`]). Ops available through C:
//! SimA, cosFormer (with its decode state), SOFT attention and its Newton pseudo-inverse, and the
//! four AFT variants.
//!
//! Files: `types` (every `#[repr(C)]` type and constant of the header), `plumbing` (status
//! mapping, the last error, the panic barrier, argument conversion), `ops` (the operators),
//! `state` (the cosFormer decode state); here the library, device and runtime entry points and
//! the tensor descriptors.

mod ops;
mod plumbing;
mod state;
mod types;

pub use ops::*;
pub use state::*;
pub use types::*;

use crate::error::Error;
use crate::runtime::stream::CurrentContext;
use crate::runtime::{probe, Runtime};
use plumbing::{entry, out, runtime, LAST_ERROR};
use std::ffi::{c_char, c_void};

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
