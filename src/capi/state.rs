//! The cosFormer causal decode state: create, destroy, query, prefill and step.

use super::plumbing::{
    cosformer_params, dims, dtype, entry, extent, null_handle, on_stream, out, qkvo, runtime,
};
use super::types::{
    SofaCosformerParams, SofaCosformerState, SofaDtype, SofaRuntime, SofaStatus, SofaStream,
    SofaTensor,
};
use crate::error::Result;
use crate::ops::cosformer::State;
use crate::runtime::stream::CurrentContext;
use cudarc::driver::DevicePtr;
use std::ffi::c_void;
use std::sync::Mutex;

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
        // SAFETY: contract.
        let state = unsafe {
            on_stream(&rt.rt, stream, |stream| {
                State::new(&rt.rt, stream, dims.b, dims.h, dims.d, dv, &params)
            })
        }?;
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
        let (state, [q, k, v, o]) = unsafe { (state_ref(state)?, qkvo(q, k, v, o)?) };
        let dtype = self::dtype(dtype)?;
        let (ws, ws_len) = (workspace as u64, workspace_bytes);
        let rt = &state.rt;
        // SAFETY: contract; the op validates shapes, alignment and the workspace size.
        unsafe {
            on_stream(rt, stream, |stream| {
                lock(state).prefill_raw(rt, stream, dtype, q, k, v, o, ws, ws_len)
            })
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
        let (state, [q, k, v, o]) = unsafe { (state_ref(state)?, qkvo(q, k, v, o)?) };
        let dtype = self::dtype(dtype)?;
        let rt = &state.rt;
        // SAFETY: contract; the op validates shapes and alignment.
        unsafe {
            on_stream(rt, stream, |stream| {
                lock(state).step_raw(rt, stream, dtype, q, k, v, o)
            })
        }
    })
}
