//! The operators: SimA, cosFormer, SOFT (attention and the Newton pseudo-inverse) and AFT.

use super::plumbing::{
    aft_params, cosformer_params, dims, dtype, entry, extent, on_stream, out, qkvo, runtime,
    soft_params,
};
use super::types::{
    SofaAftParams, SofaCosformerParams, SofaDtype, SofaRuntime, SofaSoftParams, SofaStatus,
    SofaStream, SofaTensor, SOFA_AFT_SIMPLE, SOFA_LANDMARKS_AVGPOOL1D,
};
use crate::error::{Error, Result};
use crate::ops::aft;
use crate::ops::cosformer;
use crate::ops::sima;
use crate::ops::soft::{self, SoftParams};
use std::ffi::c_void;

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
        let (rt, [q, k, v, o]) = unsafe { (runtime(rt)?, qkvo(q, k, v, o)?) };
        let dtype = self::dtype(dtype)?;
        let (ws, ws_len) = (workspace as u64, workspace_bytes);
        // SAFETY: contract; the op validates shapes, alignment and the workspace size.
        unsafe {
            on_stream(&rt.rt, stream, |stream| {
                sima::forward_raw(&rt.rt, stream, dtype, q, k, v, o, ws, ws_len)
            })
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
        let (rt, params, [q, k, v, o]) =
            unsafe { (runtime(rt)?, cosformer_params(params)?, qkvo(q, k, v, o)?) };
        let dtype = self::dtype(dtype)?;
        let (ws, ws_len) = (workspace as u64, workspace_bytes);
        // SAFETY: contract; the op validates shapes, alignment and the workspace size.
        unsafe {
            on_stream(&rt.rt, stream, |stream| {
                cosformer::forward_raw(&rt.rt, stream, &params, dtype, q, k, v, o, ws, ws_len)
            })
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
        let (rt, params, [q, k, v, o]) =
            unsafe { (runtime(rt)?, soft_params(params)?, qkvo(q, k, v, o)?) };
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
        // SAFETY: contract; the op validates shapes, alignment, the landmarks and the workspace.
        unsafe {
            on_stream(&rt.rt, stream, |stream| {
                soft::attention_raw(&rt.rt, stream, &plan, dtype, q, k, v, o, given, ws, ws_len)
            })
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
        // SAFETY: contract; the op checks NULL and misaligned addresses, the workspace size and
        // the device.
        unsafe {
            on_stream(&rt.rt, stream, |stream| {
                soft::newton_pinv_raw(
                    &rt.rt, stream, &plan, a as u64, len, z as u64, len, ws, ws_len,
                )
            })
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
        let (rt, (variant, p), [q, k, v, o]) =
            unsafe { (runtime(rt)?, aft_params(params)?, qkvo(q, k, v, o)?) };
        let dtype = self::dtype(dtype)?;
        let (w, ws, ws_len) = (bias as u64, workspace as u64, workspace_bytes);
        // SAFETY: contract; the op validates shapes, the bias length, alignment and workspace.
        unsafe {
            on_stream(&rt.rt, stream, |stream| {
                aft::forward_raw(
                    &rt.rt, stream, variant, &p, dtype, q, k, v, o, w, bias_len, ws, ws_len,
                )
            })
        }
    })
}
