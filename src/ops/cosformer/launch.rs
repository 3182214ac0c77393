//! Kernel parameters and the queueing of a validated plan (CUDA-core kernels; the tensor-core
//! paths are in [`super::tc`]).

use super::plan::{state_len, Plan, BLOCK, TILE};
use super::tc::{queue_tc, tensor_cores};
use crate::error::Result;
use crate::ops::{launch, RawTensor};
use crate::runtime::Runtime;
use crate::tensor::{DType, Layout};
use cudarc::driver::CudaStream;
use std::mem::{offset_of, size_of};

pub(super) const FAMILY: &str = "cosformer";
pub(super) const THREADS: u32 = 256; // COS_THREADS
pub(super) const MAX_GRID_YZ: usize = 65535;

/// Mirror of `CosformerParams` in kernels/cosformer.cuh.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct KernelParams {
    pub q: u64,
    pub k: u64,
    pub v: u64,
    pub o: u64,
    pub partial: u64,
    pub state: u64,
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
    pub s: i32,
    pub d: i32,
    pub dv: i32,
    pub chunks: i32,
    pub rows_per_chunk: i32,
    pub m: i32,
    pub pos0: i32,
    pub relu: i32,
    pub state_in: i32,
    pub eps: f32,
    /// Tensor-core reduce: state sums as hi + lo parts, so that the state a causal prefill returns
    /// stays fp32-accurate (set by `queue`); 0: hi parts, where the sums only feed the 16-bit
    /// state operand of the map or causal pass.
    pub exact_state: i32,
}

// SAFETY: plain old data with the C layout asserted below.
unsafe impl cudarc::driver::DeviceRepr for KernelParams {}

const _: () = {
    assert!(size_of::<KernelParams>() == 200); // COSFORMER_PARAMS_SIZE
    assert!(offset_of!(KernelParams, partial) == 32);
    assert!(offset_of!(KernelParams, state) == 40);
    assert!(offset_of!(KernelParams, q_sb) == 48);
    assert!(offset_of!(KernelParams, o_sn) == 136);
    assert!(offset_of!(KernelParams, b) == 144);
    assert!(offset_of!(KernelParams, m) == 176);
    assert!(offset_of!(KernelParams, eps) == 192);
};

pub(super) fn grid_dim(x: usize) -> u32 {
    x.min(i32::MAX as usize) as u32
}

fn strides(l: &Layout) -> [i64; 3] {
    [
        l.strides.batch as i64,
        l.strides.head as i64,
        l.strides.seq as i64,
    ]
}

/// Kernel parameters for a plan over raw tensors.
pub(super) fn kernel_params(
    plan: &Plan,
    q: &RawTensor,
    k: &RawTensor,
    v: &RawTensor,
    o: &RawTensor,
) -> KernelParams {
    let [q_sb, q_sh, q_sn] = strides(&q.layout);
    let [k_sb, k_sh, k_sn] = strides(&k.layout);
    let [v_sb, v_sh, v_sn] = strides(&v.layout);
    let [o_sb, o_sh, o_sn] = strides(&o.layout);
    KernelParams {
        q: q.ptr,
        k: k.ptr,
        v: v.ptr,
        o: o.ptr,
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
        b: plan.b as i32,
        h: plan.h as i32,
        n: plan.n as i32,
        s: plan.s as i32,
        d: plan.d as i32,
        dv: plan.dv as i32,
        chunks: plan.chunks as i32,
        rows_per_chunk: plan.rows_per_chunk as i32,
        m: plan.m as i32,
        relu: plan.relu as i32,
        eps: plan.eps,
        ..Default::default()
    }
}

/// Queues the kernels of `plan` (validated) with `p` filled by [`kernel_params`].
/// Causal plans read `state` (when `state_in`) and write the total back to it when non-null.
///
/// # Safety
/// Every pointer in `p` addresses memory that holds what the plan reads or writes; the workspace
/// holds `plan.workspace_bytes()`; `state`, when non-null, holds `B·H·state_len` floats.
pub(super) unsafe fn queue(
    rt: &Runtime,
    stream: &CudaStream,
    plan: &Plan,
    dtype: DType,
    mut p: KernelParams,
    workspace: u64,
) -> Result<()> {
    // Only a state handed back to the caller (a causal prefill's) needs the exact sums.
    p.exact_state = (plan.causal && p.state != 0) as i32;
    if tensor_cores(plan, dtype, &p, rt.info().compute_capability.0 >= 9) {
        // SAFETY: forwarded contract; `tensor_cores` checked the dims and 16-byte alignment.
        return unsafe { queue_tc(rt, stream, plan, dtype, p, workspace) };
    }
    let bh = plan.b * plan.h;
    let per = state_len(plan.d, plan.dv);
    let dt = dtype.name();
    let bh_y = bh.min(MAX_GRID_YZ) as u32;
    let tiles = (plan.d.div_ceil(TILE) * plan.dv.div_ceil(TILE)) as u32;
    let e_tiles = plan.dv.div_ceil(TILE) as u32;
    let elem_blocks = grid_dim(per.div_ceil(THREADS as usize));
    let reduce = rt.function(FAMILY, &format!("cosformer_reduce_{dt}"))?;
    p.partial = workspace;
    // Causal: an exclusive scan over the chunk partials, then per-chunk outputs. Non-causal: the
    // partials summed into one state (after them in the workspace), then the map over queries.
    let (middle, out) = if plan.causal {
        (
            rt.function(FAMILY, "cosformer_scan_f32")?,
            rt.function(FAMILY, &format!("cosformer_causal_{dt}"))?,
        )
    } else {
        p.state = workspace + (bh * plan.chunks * per * 4) as u64;
        (
            rt.function(FAMILY, "cosformer_finalize_f32")?,
            rt.function(FAMILY, &format!("cosformer_map_{dt}"))?,
        )
    };
    // SAFETY: the caller's contract; grids cover every chunk, state element and query block.
    unsafe {
        let reduce_grid = (grid_dim(plan.chunks), bh_y, tiles);
        launch(stream, &reduce, reduce_grid, THREADS, &p)?;
        launch(stream, &middle, (elem_blocks, bh_y, 1), THREADS, &p)?;
        // Causal: one CTA per chunk walks its blocks; non-causal: one per block of queries.
        let out_x = if plan.causal {
            plan.chunks
        } else {
            plan.n.div_ceil(BLOCK)
        };
        let out_grid = (grid_dim(out_x), bh_y, e_tiles);
        launch(stream, &out, out_grid, THREADS, &p)?;
    }
    Ok(())
}
