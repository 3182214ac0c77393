//! cosFormer (SPEC §2): ReLU features re-weighted by `cos(θ_i − θ_j)`, `θ_i = (π/2)·i/M`,
//! 1-based positions, `O_i = Σ_j w_ij v_j / max(Σ_j w_ij, ε)`.
//!
//! Non-causal (any N, S): reduce the per-(b,h) states `KVs, KVc, zs, zc` over row chunks of K/V,
//! sum the chunks in a fixed order, map every query row. Causal (N = S): a chunked scan — each
//! chunk's own state, an exclusive prefix over chunks, then per block of 64 query rows the prefix
//! state plus the masked intra-chunk products. Decode: [`State`] keeps the running fp32 state of
//! B·H sequences on the device; [`State::prefill`] runs the causal scan from it and
//! [`State::step`] adds one token per sequence. Any D, Dv ≤ 256, any strides with a unit last dim
//! run on fp32 CUDA-core kernels; f16/bf16 with D == Dv ∈ {32, 48, 64, 80, 96} (causal: {32, 64}), and
//! 128 on sm_90, with 16-byte-aligned rows run on tensor cores (kernels/cosformer_tc.cuh): the
//! same partial states, the products on mma.sync with fp32 accumulation, the causal pass one CTA
//! per chunk (D = 128: per chunk and half of the value columns) carrying its state across 64-row
//! blocks, chained behind the reduce in one launch for D ∈ {64, 128} where that keeps up.
//!
//! Files: `plan` (validation, chunking, workspace), `launch` (kernel parameters, the CUDA-core
//! launches), `tc` (the tensor-core launches and their geometry), `state` (decode).

mod launch;
mod plan;
mod state;
mod tc;

pub use launch::KernelParams;
pub use plan::{state_len, workspace_bytes, Plan, BLOCK, CAUSAL_CTAS};
pub use state::{State, StateShape};

use super::{check_raw, check_workspace, with_raw, RawTensor, TensorMut, TensorRef};
use crate::error::Result;
use crate::runtime::Runtime;
use crate::tensor::{DType, Element};
use cudarc::driver::{CudaSlice, CudaStream};
use launch::{kernel_params, queue};
use std::sync::Arc;

pub use crate::reference::cosformer::CosformerParams;

/// Launches cosFormer on raw device pointers.
///
/// # Safety
/// Each pointer must address device memory of this runtime's context that holds its layout's
/// span in elements of `dtype` (q, k, v readable; o writable and not aliasing the inputs), and
/// `workspace` must hold `workspace_len ≥ Plan::workspace_bytes` bytes, 4-byte aligned. They must
/// stay valid until the work queued on `stream` completes.
#[allow(clippy::too_many_arguments)]
pub unsafe fn forward_raw(
    rt: &Runtime,
    stream: &CudaStream,
    params: &CosformerParams,
    dtype: DType,
    q: RawTensor,
    k: RawTensor,
    v: RawTensor,
    o: RawTensor,
    workspace: u64,
    workspace_len: usize,
) -> Result<()> {
    let plan = Plan::new(&q.layout, &k.layout, &v.layout, &o.layout, params)?;
    // SAFETY: forwarded contract.
    unsafe {
        forward_raw_with_plan(
            rt,
            stream,
            &plan,
            dtype,
            q,
            k,
            v,
            o,
            workspace,
            workspace_len,
        )
    }
}

/// [`forward_raw`] with a plan made (and possibly adjusted) by the caller for these layouts.
///
/// # Safety
/// As [`forward_raw`].
#[allow(clippy::too_many_arguments)]
pub unsafe fn forward_raw_with_plan(
    rt: &Runtime,
    stream: &CudaStream,
    plan: &Plan,
    dtype: DType,
    q: RawTensor,
    k: RawTensor,
    v: RawTensor,
    o: RawTensor,
    workspace: u64,
    workspace_len: usize,
) -> Result<()> {
    plan.check_layouts(&q.layout, &k.layout, &v.layout, &o.layout)?;
    check_raw(dtype, [("q", &q), ("k", &k), ("v", &v), ("o", &o)])?;
    check_workspace(plan.workspace_bytes(), workspace, workspace_len)?;
    let p = kernel_params(plan, &q, &k, &v, &o);
    // SAFETY: layouts match the validated plan; pointers, spans and workspace per the contract.
    unsafe { queue(rt, stream, plan, dtype, p, workspace) }
}

/// cosFormer on device buffers. `workspace` may be `None` (then it is allocated for this call).
#[allow(clippy::too_many_arguments)]
pub fn forward<T: Element>(
    rt: &Runtime,
    stream: &Arc<CudaStream>,
    params: &CosformerParams,
    q: TensorRef<'_, T>,
    k: TensorRef<'_, T>,
    v: TensorRef<'_, T>,
    o: TensorMut<'_, T>,
    workspace: Option<&mut CudaSlice<u8>>,
) -> Result<()> {
    let plan = Plan::new(&q.layout, &k.layout, &v.layout, &o.layout, params)?;
    forward_with_plan(rt, stream, &plan, q, k, v, o, workspace)
}

/// [`forward`] with a caller-made plan (e.g. [`Plan::with_rows_per_chunk`]).
#[allow(clippy::too_many_arguments)]
pub fn forward_with_plan<T: Element>(
    rt: &Runtime,
    stream: &Arc<CudaStream>,
    plan: &Plan,
    q: TensorRef<'_, T>,
    k: TensorRef<'_, T>,
    v: TensorRef<'_, T>,
    o: TensorMut<'_, T>,
    workspace: Option<&mut CudaSlice<u8>>,
) -> Result<()> {
    plan.check_layouts(&q.layout, &k.layout, &v.layout, &o.layout)?;
    let ws = Some((workspace, plan.workspace_bytes()));
    with_raw(rt, stream, (q, k, v, o), ws, |t, wp, wl| {
        // SAFETY: every buffer is a live allocation of this context whose length was checked
        // against its layout; `o` is borrowed mutably, so it cannot alias the inputs.
        unsafe { forward_raw_with_plan(rt, stream, plan, T::DTYPE, t.q, t.k, t.v, t.o, wp, wl) }
    })
}
