//! Softmax attention baseline (SPEC §5): `O = softmax(s·QKᵀ)V`, `s = 1/√D` by default.
//!
//! Three launches: scores `s·QKᵀ` (batched GEMM into an fp32 `[B,H,N,S]` buffer), a row softmax
//! kernel (max-subtracted, fp32; masked for causal) writing P in the storage dtype (in place for
//! f32), then `P·V` (batched GEMM into O). Quadratic memory by design: [`workspace_bytes`] is
//! `B·H·N·S·(4 + sizeof(T))` bytes (`·4` for f32), and a size whose workspace does not fit is a
//! typed error (`InvalidShape` on overflow, `OutOfMemory` from the allocation).

use super::{check_contiguous, check_dims, heads, int, run, Blas, Gemm, Grid, Mat, Regions};
use super::{elem_bytes, f32_bytes, BaselineParams};
use crate::error::{Error, Result};
use crate::ops::{check_raw, check_workspace, with_raw, RawTensor, TensorMut, TensorRef};
use crate::runtime::Runtime;
use crate::tensor::{DType, Dims, Element, Layout};
use cudarc::driver::CudaSlice;

pub use crate::reference::softmax::SoftmaxParams;

/// A validated call: shapes, dtype, scale and workspace layout.
#[derive(Clone, Debug)]
pub struct Plan {
    pub dtype: DType,
    /// Extents of q (`N` queries of head dim `D`).
    pub dims: Dims,
    /// Key/value length S.
    pub s: usize,
    pub dv: usize,
    pub scale: f32,
    pub causal: bool,
    regions: Regions<2>,
}

impl Plan {
    /// Checks q `[B,H,N,D]`, k `[B,H,S,D]`, v `[B,H,S,Dv]`, o `[B,H,N,Dv]` (all contiguous) and
    /// the parameters.
    pub fn new(
        dtype: DType,
        q: &Layout,
        k: &Layout,
        v: &Layout,
        o: &Layout,
        params: &SoftmaxParams,
    ) -> Result<Self> {
        check_contiguous("q", q)?;
        let dims = q.dims;
        let (s, dv) = (k.dims.n, v.dims.d);
        check_dims("k", k, Dims { n: s, ..dims }, "q")?;
        check_dims(
            "v",
            v,
            Dims {
                n: s,
                d: dv,
                ..dims
            },
            "k",
        )?;
        check_dims("o", o, dims.with_d(dv), "q and v")?;
        if params.causal && dims.n != s {
            return Err(Error::param(
                "causal",
                true,
                format!("needs N = S, got N = {}, S = {s}", dims.n),
            ));
        }
        let scale = params.scale.unwrap_or(1.0 / (dims.d as f64).sqrt());
        if !(scale.is_finite() && (scale as f32).is_finite()) {
            return Err(Error::param("scale", scale, "must be finite in fp32"));
        }
        let bh = heads("q", dims)?;
        int("q", "N", dims.n)?;
        int("k", "S", s)?;
        let probs = match dtype {
            DType::F32 => Some(0), // the softmax runs in place
            _ => elem_bytes(dtype, &[bh, dims.n, s]),
        };
        let regions = Regions::new("q", [f32_bytes(&[bh, dims.n, s]), probs])?;
        Ok(Plan {
            dtype,
            dims,
            s,
            dv,
            scale: scale as f32,
            causal: params.causal,
            regions,
        })
    }

    /// Scratch bytes: the fp32 scores and (f16/bf16) the probabilities.
    pub fn workspace_bytes(&self) -> usize {
        self.regions.total
    }
}

/// Scratch bytes for q `[B,H,N,D]`, keys/values of length `s` and value dim `dv`.
pub fn workspace_bytes(dtype: DType, dims: Dims, s: usize, dv: usize) -> Result<usize> {
    let q = Layout::contiguous(dims);
    let k = Layout::contiguous(Dims { n: s, ..dims });
    let v = Layout::contiguous(Dims {
        n: s,
        d: dv,
        ..dims
    });
    let o = Layout::contiguous(dims.with_d(dv));
    Ok(Plan::new(dtype, &q, &k, &v, &o, &SoftmaxParams::default())?.workspace_bytes())
}

/// Softmax attention on raw device pointers, queued on `blas.stream()`.
///
/// # Safety
/// Each pointer must address device memory of this runtime's context holding its contiguous
/// tensor in elements of `dtype` (q, k, v readable; o writable, aliasing none of them), and
/// `workspace` must hold `workspace_len ≥ Plan::workspace_bytes` bytes. All must stay valid until
/// the work queued on the stream completes.
#[allow(clippy::too_many_arguments)]
pub unsafe fn attention_raw(
    rt: &Runtime,
    blas: &Blas,
    params: &SoftmaxParams,
    dtype: DType,
    q: RawTensor,
    k: RawTensor,
    v: RawTensor,
    o: RawTensor,
    workspace: u64,
    workspace_len: usize,
) -> Result<()> {
    let plan = Plan::new(dtype, &q.layout, &k.layout, &v.layout, &o.layout, params)?;
    check_raw(dtype, [("q", &q), ("k", &k), ("v", &v), ("o", &o)])?;
    check_workspace(plan.workspace_bytes(), workspace, workspace_len)?;
    let Dims { n, d, .. } = plan.dims;
    let (s, dv, bh) = (plan.s, plan.dv, plan.dims.b * plan.dims.h);
    let scores = plan.regions.at(workspace, 0);
    let probs = match dtype {
        DType::F32 => scores,
        _ => plan.regions.at(workspace, 1),
    };
    let p = BaselineParams {
        src: scores,
        dst: probs,
        bh: bh as i32,
        rows: n as i32,
        cols: s as i32,
        causal: plan.causal as i32,
        ..Default::default()
    };
    // SAFETY: the buffers hold the shapes validated by the plan (caller's contract); scores and
    // probabilities are workspace regions sized by the plan.
    unsafe {
        blas.gemm(&Gemm {
            m: n,
            n: s,
            k: d,
            a: Mat::packed(q.ptr, n, d),
            trans_a: false,
            b: Mat::packed(k.ptr, s, d),
            trans_b: true,
            c: Mat::packed(scores, n, s),
            ab_type: dtype,
            c_type: DType::F32,
            alpha: plan.scale,
            beta: 0.0,
            batch: bh,
            fast_tf32: false,
        })?;
        let name = format!("softmax_rows_{}", dtype.name());
        run(rt, blas.stream(), &name, Grid::Ctas(bh * n), &p)?;
        blas.gemm(&Gemm {
            m: n,
            n: dv,
            k: s,
            a: Mat::packed(probs, n, s),
            trans_a: false,
            b: Mat::packed(v.ptr, s, dv),
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

/// Softmax attention on device buffers. `workspace` may be `None` (then it is allocated).
#[allow(clippy::too_many_arguments)]
pub fn attention<T: Element>(
    rt: &Runtime,
    blas: &Blas,
    params: &SoftmaxParams,
    q: TensorRef<'_, T>,
    k: TensorRef<'_, T>,
    v: TensorRef<'_, T>,
    o: TensorMut<'_, T>,
    workspace: Option<&mut CudaSlice<u8>>,
) -> Result<()> {
    let plan = Plan::new(T::DTYPE, &q.layout, &k.layout, &v.layout, &o.layout, params)?;
    let ws = Some((workspace, plan.workspace_bytes()));
    with_raw(rt, blas.stream(), (q, k, v, o), ws, |t, wp, wl| {
        // SAFETY: every buffer is a live allocation of this context whose length was checked
        // against its layout; `o` is borrowed mutably, so it cannot alias the inputs.
        unsafe { attention_raw(rt, blas, params, T::DTYPE, t.q, t.k, t.v, t.o, wp, wl) }
    })
}
