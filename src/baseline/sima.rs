//! SimA baseline (SPEC §4): `O = q̂ (k̂ᵀ v)` with column-ℓ1-normalized q and k, composed as
//! column ℓ1 norms of q and k (reduction kernels), materialized q̂ and k̂ in the storage dtype
//! (elementwise kernel), `KV = k̂ᵀ v` (batched GEMM, `D×Dv` per head, storage dtype) and
//! `O = q̂·KV` (batched GEMM). The linear order for every N (same math as the SPEC's order).

use super::{check_contiguous, check_dims, heads, int, run, Blas, Gemm, Grid, Mat, Regions};
use super::{elem_bytes, f32_bytes, BaselineParams, ColPlan};
use crate::error::Result;
use crate::ops::{check_raw, check_workspace, with_raw, RawTensor, TensorMut, TensorRef};
use crate::reference::sima::EPS;
use crate::runtime::Runtime;
use crate::tensor::{DType, Dims, Element, Layout};
use cudarc::driver::CudaSlice;

/// A validated call: shapes, dtype and workspace layout.
#[derive(Clone, Debug)]
pub struct Plan {
    pub dtype: DType,
    pub dims: Dims,
    pub dv: usize,
    cols: ColPlan,
    regions: Regions<6>,
}

impl Plan {
    /// Checks q, k `[B,H,N,D]`, v and o `[B,H,N,Dv]`, all contiguous.
    pub fn new(dtype: DType, q: &Layout, k: &Layout, v: &Layout, o: &Layout) -> Result<Self> {
        check_contiguous("q", q)?;
        let dims = q.dims;
        let dv = v.dims.d;
        check_dims("k", k, dims, "q")?;
        check_dims("v", v, dims.with_d(dv), "q")?;
        check_dims("o", o, dims.with_d(dv), "v")?;
        let bh = heads("q", dims)?;
        int("q", "N", dims.n)?;
        let Dims { n, d, .. } = dims;
        let cols = ColPlan::new(bh, n, d);
        let regions = Regions::new(
            "q",
            [
                cols.partial_bytes(),
                f32_bytes(&[bh, d]),
                f32_bytes(&[bh, d]),
                elem_bytes(dtype, &[bh, n, d]),
                elem_bytes(dtype, &[bh, n, d]),
                elem_bytes(dtype, &[bh, d, dv]),
            ],
        )?;
        Ok(Plan {
            dtype,
            dims,
            dv,
            cols,
            regions,
        })
    }

    /// Scratch bytes: norm partials, inverse norms, q̂, k̂ and `k̂ᵀv`.
    pub fn workspace_bytes(&self) -> usize {
        self.regions.total
    }
}

/// Scratch bytes for q, k `[B,H,N,D]` and v `[B,H,N,Dv]` in `dtype`.
pub fn workspace_bytes(dtype: DType, dims: Dims, dv: usize) -> Result<usize> {
    let l = Layout::contiguous(dims);
    let lv = Layout::contiguous(dims.with_d(dv));
    Ok(Plan::new(dtype, &l, &l, &lv, &lv)?.workspace_bytes())
}

/// SimA on raw device pointers, queued on `blas.stream()`.
///
/// # Safety
/// Each pointer must address device memory of this runtime's context holding its contiguous
/// tensor in elements of `dtype` (q, k, v readable; o writable, aliasing none of them), and
/// `workspace` must hold `workspace_len ≥ Plan::workspace_bytes` bytes. All must stay valid until
/// the work queued on the stream completes.
#[allow(clippy::too_many_arguments)]
pub unsafe fn forward_raw(
    rt: &Runtime,
    blas: &Blas,
    dtype: DType,
    q: RawTensor,
    k: RawTensor,
    v: RawTensor,
    o: RawTensor,
    workspace: u64,
    workspace_len: usize,
) -> Result<()> {
    let plan = Plan::new(dtype, &q.layout, &k.layout, &v.layout, &o.layout)?;
    check_raw(dtype, [("q", &q), ("k", &k), ("v", &v), ("o", &o)])?;
    check_workspace(plan.workspace_bytes(), workspace, workspace_len)?;
    let Dims { n, d, .. } = plan.dims;
    let (dv, bh) = (plan.dv, plan.dims.b * plan.dims.h);
    let at = |i| plan.regions.at(workspace, i);
    let (partial, q_inv, k_inv, q_hat, k_hat, kv) = (at(0), at(1), at(2), at(3), at(4), at(5));
    let stream = blas.stream();
    let scale = |src, inv, dst| BaselineParams {
        src,
        aux: inv,
        dst,
        count: (bh * n * d) as i64,
        bh: bh as i32,
        rows: n as i32,
        cols: d as i32,
        ..Default::default()
    };
    let colscale = format!("colscale_{}", dtype.name());
    // SAFETY: the buffers hold the shapes validated by the plan (caller's contract); every
    // intermediate is a workspace region sized by the plan.
    unsafe {
        let eps = EPS as f32;
        plan.cols
            .queue(rt, stream, "l1", dtype, q.ptr, partial, q_inv, eps)?;
        plan.cols
            .queue(rt, stream, "l1", dtype, k.ptr, partial, k_inv, eps)?;
        run(
            rt,
            stream,
            &colscale,
            Grid::Elements,
            &scale(q.ptr, q_inv, q_hat),
        )?;
        run(
            rt,
            stream,
            &colscale,
            Grid::Elements,
            &scale(k.ptr, k_inv, k_hat),
        )?;
        blas.gemm(&Gemm {
            m: d,
            n: dv,
            k: n,
            a: Mat::packed(k_hat, n, d),
            trans_a: true,
            b: Mat::packed(v.ptr, n, dv),
            trans_b: false,
            c: Mat::packed(kv, d, dv),
            ab_type: dtype,
            c_type: dtype,
            alpha: 1.0,
            beta: 0.0,
            batch: bh,
            fast_tf32: false,
        })?;
        blas.gemm(&Gemm {
            m: n,
            n: dv,
            k: d,
            a: Mat::packed(q_hat, n, d),
            trans_a: false,
            b: Mat::packed(kv, d, dv),
            trans_b: false,
            c: Mat::packed(o.ptr, n, dv),
            ab_type: dtype,
            c_type: dtype,
            alpha: 1.0,
            beta: 0.0,
            batch: bh,
            fast_tf32: false,
        })
    }
}

/// SimA on device buffers. `workspace` may be `None` (then it is allocated for this call).
pub fn forward<T: Element>(
    rt: &Runtime,
    blas: &Blas,
    q: TensorRef<'_, T>,
    k: TensorRef<'_, T>,
    v: TensorRef<'_, T>,
    o: TensorMut<'_, T>,
    workspace: Option<&mut CudaSlice<u8>>,
) -> Result<()> {
    let plan = Plan::new(T::DTYPE, &q.layout, &k.layout, &v.layout, &o.layout)?;
    let ws = Some((workspace, plan.workspace_bytes()));
    with_raw(rt, blas.stream(), (q, k, v, o), ws, |t, wp, wl| {
        // SAFETY: every buffer is a live allocation of this context whose length was checked
        // against its layout; `o` is borrowed mutably, so it cannot alias the inputs.
        unsafe { forward_raw(rt, blas, T::DTYPE, t.q, t.k, t.v, t.o, wp, wl) }
    })
}
