//! Streams and contexts that belong to the caller (an inference engine): a caller's `CUstream`
//! wrapped without taking ownership, and a guard that leaves the thread's current context as the
//! caller had it.
//!
//! sofa always works in the device's primary context, the one the CUDA runtime API uses, so a
//! stream made with `cudaStreamCreate` on that device is accepted as is.

use super::Runtime;
use crate::error::{Error, Result};
use cudarc::driver::sys::{self, CUcontext, CUstream};
use cudarc::driver::CudaStream;
use std::sync::Arc;

/// `CU_STREAM_LEGACY` / `cudaStreamLegacy`: the legacy default stream, by handle.
pub const STREAM_LEGACY: usize = 0x1;
/// `CU_STREAM_PER_THREAD` / `cudaStreamPerThread`: the calling thread's default stream.
pub const STREAM_PER_THREAD: usize = 0x2;

/// Wraps the caller's `stream` for launches; dropping the wrapper does not destroy the stream.
///
/// `0` (the NULL stream), [`STREAM_LEGACY`] and [`STREAM_PER_THREAD`] are accepted as they are;
/// any other handle must belong to `rt`'s context (the device's primary context), which is
/// checked with `cuStreamGetCtx`.
///
/// # Safety
/// `stream` must be a live CUDA stream handle (or one of the special values above) and stay alive
/// as long as the returned wrapper, or anything holding it, is used. The caller orders the work
/// it queues elsewhere with the work sofa queues on the stream.
pub unsafe fn borrow_stream(rt: &Runtime, stream: CUstream) -> Result<Arc<CudaStream>> {
    let ctx = rt.context();
    let handle = stream as usize;
    if handle != 0 && handle != STREAM_LEGACY && handle != STREAM_PER_THREAD {
        let mut owner: CUcontext = std::ptr::null_mut();
        // SAFETY: `stream` is a live handle (contract); writes one context handle.
        unsafe { sys::cuStreamGetCtx(stream, &mut owner) }.result()?;
        if owner != ctx.cu_ctx() {
            return Err(Error::param(
                "stream",
                format!("{stream:p}"),
                format!(
                    "belongs to context {owner:p}, not device {}'s primary context {:p}",
                    rt.info().ordinal,
                    ctx.cu_ctx()
                ),
            ));
        }
    }
    // SAFETY: the stream belongs to this context (checked above, or a special handle that always
    // refers to the current context's default stream) and outlives the wrapper (contract).
    Ok(unsafe { ctx.wrap_borrowed_stream(stream) })
}

/// Makes `rt`'s context current on this thread for the guard's lifetime, then restores whatever
/// the caller had current (nothing included). Costs one `cuCtxGetCurrent` when the primary
/// context is already current, which is the usual case under the CUDA runtime API.
#[must_use = "the previous context is restored when the guard drops"]
pub struct CurrentContext {
    previous: CUcontext,
}

impl CurrentContext {
    /// Remembers the thread's current context, to be restored on drop (for calls that bind a
    /// context themselves, like [`Runtime::new`]). Needs a loaded, initialised driver.
    pub fn save() -> Result<Self> {
        let mut previous: CUcontext = std::ptr::null_mut();
        // SAFETY: writes one context handle.
        unsafe { sys::cuCtxGetCurrent(&mut previous) }.result()?;
        Ok(CurrentContext { previous })
    }

    /// [`CurrentContext::save`], then makes `rt`'s context current.
    pub fn bind(rt: &Runtime) -> Result<Self> {
        let guard = Self::save()?;
        let target = rt.context().cu_ctx();
        if guard.previous != target {
            // SAFETY: `target` is the primary context retained by `rt`.
            unsafe { sys::cuCtxSetCurrent(target) }.result()?;
        }
        Ok(guard)
    }
}

impl Drop for CurrentContext {
    fn drop(&mut self) {
        let mut now: CUcontext = std::ptr::null_mut();
        // SAFETY: writes one context handle; restores the handle the thread had (NULL included).
        // A failure leaves sofa's context current, which is all that could be done.
        unsafe {
            if sys::cuCtxGetCurrent(&mut now).result().is_err() || now != self.previous {
                let _ = sys::cuCtxSetCurrent(self.previous);
            }
        }
    }
}
