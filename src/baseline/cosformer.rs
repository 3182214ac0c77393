//! cosFormer baseline (SPEC §2) with explicit, materialized features
//! `qf = [f(q)·sin θ, f(q)·cos θ]`, `kf` likewise (`[B,H,·,2D]`, storage dtype; f = ReLU or the
//! identity), so that `qf_i·kf_j = (f(q_i)·f(k_j))·cos(θ_i − θ_j)`.
//!
//! * Non-causal (linear): `KV = kfᵀ v` (batched GEMM, `2D×Dv` per head), `z` = column sums of kf
//!   (reduction kernels), `num = qf·KV` (batched GEMM, fp32), `O = num / max(qf·z, ε)` (kernel).
//! * Causal (quadratic, N = S ≤ [`CAUSAL_MAX_N`]): `W = qf·kfᵀ` (batched GEMM, fp32 `N×N`), a
//!   kernel masks `j > i`, row-sums and normalizes W into P (storage dtype; in place for f32),
//!   then `O = P·V` (batched GEMM).

use super::{check_contiguous, check_dims, heads, int, run, Blas, Gemm, Grid, Mat, Regions};
use super::{elem_bytes, f32_bytes, BaselineParams, ColPlan};
use crate::error::{Error, Result};
use crate::ops::{check_raw, check_workspace, with_raw, RawTensor, TensorMut, TensorRef};
use crate::runtime::Runtime;
use crate::tensor::{DType, Dims, Element, Layout};
use cudarc::driver::CudaSlice;

pub use crate::reference::cosformer::CosformerParams;

/// Longest sequence of the causal (quadratic) baseline: its fp32 `N×N` weights take 1 GiB per
/// (b,h) here. Longer causal sequences are refused with `Error::InvalidParam { arg: "N" }`.
pub const CAUSAL_MAX_N: usize = 16384;

/// A validated call: shapes, dtype, resolved parameters and workspace layout.
#[derive(Clone, Debug)]
pub struct Plan {
    pub dtype: DType,
    /// Extents of q.
    pub dims: Dims,
    /// Key/value length S.
    pub s: usize,
    pub dv: usize,
    /// The angle denominator M in use.
    pub m: usize,
    pub causal: bool,
    pub relu: bool,
    pub eps: f32,
    cols: ColPlan,
    regions: Regions<6>,
}

/// Workspace regions (indices into `Plan::regions`).
const QF: usize = 0;
const KF: usize = 1;
/// Non-causal: `KV`, norm partials, `z`, `num`. Causal: weights, P (and two empty regions).
const KV_OR_W: usize = 2;
const PART_OR_P: usize = 3;
const Z: usize = 4;
const NUM: usize = 5;

impl Plan {
    /// Checks q `[B,H,N,D]`, k `[B,H,S,D]`, v `[B,H,S,Dv]`, o `[B,H,N,Dv]` (contiguous) and the
    /// parameters (M ≥ max(N, S), ε > 0, causal needs N = S ≤ [`CAUSAL_MAX_N`]).
    pub fn new(
        dtype: DType,
        q: &Layout,
        k: &Layout,
        v: &Layout,
        o: &Layout,
        params: &CosformerParams,
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
        let m = params.resolve_m(dims.n, s)?;
        let eps = params.eps as f32;
        if !(eps > 0.0 && eps.is_finite()) {
            return Err(Error::param("eps", params.eps, "must be > 0 in fp32"));
        }
        let bh = heads("q", dims)?;
        int("q", "N", dims.n)?;
        int("k", "S", s)?;
        let angle_m = int("q", "M", m)?;
        if params.causal && dims.n > CAUSAL_MAX_N {
            return Err(Error::param(
                "N",
                dims.n,
                format!("the causal cuBLAS baseline is quadratic; it takes N <= {CAUSAL_MAX_N}"),
            ));
        }
        let (n, d2) = (dims.n, 2 * dims.d);
        let cols = ColPlan::new(bh, s, d2);
        let features = [
            elem_bytes(dtype, &[bh, n, d2]),
            elem_bytes(dtype, &[bh, s, d2]),
        ];
        let rest = if params.causal {
            let probs = match dtype {
                DType::F32 => Some(0), // normalized in place
                _ => elem_bytes(dtype, &[bh, n, n]),
            };
            [f32_bytes(&[bh, n, n]), probs, Some(0), Some(0)]
        } else {
            [
                elem_bytes(dtype, &[bh, d2, dv]),
                cols.partial_bytes(),
                f32_bytes(&[bh, d2]),
                f32_bytes(&[bh, n, dv]),
            ]
        };
        let regions = Regions::new(
            "q",
            [features[0], features[1], rest[0], rest[1], rest[2], rest[3]],
        )?;
        Ok(Plan {
            dtype,
            dims,
            s,
            dv,
            m: angle_m as usize,
            causal: params.causal,
            relu: params.relu,
            eps,
            cols,
            regions,
        })
    }

    /// Scratch bytes: the features plus the linear states (non-causal) or the `N×N` weights.
    pub fn workspace_bytes(&self) -> usize {
        self.regions.total
    }
}

/// Scratch bytes for q `[B,H,N,D]`, keys/values of length `s` and value dim `dv`.
pub fn workspace_bytes(
    dtype: DType,
    dims: Dims,
    s: usize,
    dv: usize,
    params: &CosformerParams,
) -> Result<usize> {
    let q = Layout::contiguous(dims);
    let k = Layout::contiguous(Dims { n: s, ..dims });
    let v = Layout::contiguous(Dims {
        n: s,
        d: dv,
        ..dims
    });
    let o = Layout::contiguous(dims.with_d(dv));
    Ok(Plan::new(dtype, &q, &k, &v, &o, params)?.workspace_bytes())
}

/// cosFormer on raw device pointers, queued on `blas.stream()`.
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
    params: &CosformerParams,
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
    let (s, bh) = (plan.s, plan.dims.b * plan.dims.h);
    let (qf, kf) = (
        plan.regions.at(workspace, QF),
        plan.regions.at(workspace, KF),
    );
    let features = |src, dst, rows: usize| BaselineParams {
        src,
        dst,
        count: (bh * rows * d) as i64,
        bh: bh as i32,
        rows: rows as i32,
        cols: d as i32,
        relu: plan.relu as i32,
        angle_m: plan.m as i32,
        ..Default::default()
    };
    let name = format!("cosformer_features_{}", dtype.name());
    let stream = blas.stream();
    // SAFETY: the buffers hold the shapes validated by the plan (caller's contract); the
    // features are workspace regions sized by the plan.
    unsafe {
        run(rt, stream, &name, Grid::Elements, &features(q.ptr, qf, n))?;
        run(rt, stream, &name, Grid::Elements, &features(k.ptr, kf, s))?;
        if plan.causal {
            queue_causal(rt, blas, &plan, qf, kf, v.ptr, o.ptr, workspace)
        } else {
            queue_linear(rt, blas, &plan, qf, kf, v.ptr, o.ptr, workspace)
        }
    }
}

/// `KV = kfᵀv`, `z = Σ kf`, `num = qf·KV`, `O = num / max(qf·z, ε)`.
///
/// # Safety
/// As [`forward_raw`], with the features already queued into the workspace.
#[allow(clippy::too_many_arguments)]
unsafe fn queue_linear(
    rt: &Runtime,
    blas: &Blas,
    plan: &Plan,
    qf: u64,
    kf: u64,
    v: u64,
    o: u64,
    workspace: u64,
) -> Result<()> {
    let Dims { n, d, .. } = plan.dims;
    let (s, dv, d2, dtype) = (plan.s, plan.dv, 2 * d, plan.dtype);
    let bh = plan.dims.b * plan.dims.h;
    let at = |i| plan.regions.at(workspace, i);
    let (kv, partial, z, num) = (at(KV_OR_W), at(PART_OR_P), at(Z), at(NUM));
    let gemm = |m, nn, k, a, trans_a, b, c, c_type| Gemm {
        m,
        n: nn,
        k,
        a,
        trans_a,
        b,
        trans_b: false,
        c,
        ab_type: dtype,
        c_type,
        alpha: 1.0,
        beta: 0.0,
        batch: bh,
        fast_tf32: false,
    };
    let divide = BaselineParams {
        src: num,
        src2: qf,
        aux: z,
        dst: o,
        bh: bh as i32,
        rows: n as i32,
        cols: dv as i32,
        inner: d2 as i32,
        eps: plan.eps,
        ..Default::default()
    };
    let stream = blas.stream();
    // SAFETY: forwarded from the caller; every region was sized by the plan.
    unsafe {
        let (kf_m, v_m) = (Mat::packed(kf, s, d2), Mat::packed(v, s, dv));
        blas.gemm(&gemm(
            d2,
            dv,
            s,
            kf_m,
            true,
            v_m,
            Mat::packed(kv, d2, dv),
            dtype,
        ))?;
        plan.cols
            .queue(rt, stream, "sum", dtype, kf, partial, z, 0.0)?;
        let (qf_m, kv_m) = (Mat::packed(qf, n, d2), Mat::packed(kv, d2, dv));
        let num_m = Mat::packed(num, n, dv);
        blas.gemm(&gemm(n, dv, d2, qf_m, false, kv_m, num_m, DType::F32))?;
        let name = format!("cosformer_divide_{}", dtype.name());
        run(rt, stream, &name, Grid::Warps(bh * n), &divide)
    }
}

/// `W = qf·kfᵀ`, P = causal-masked rows of W over their sums, `O = P·V`.
///
/// # Safety
/// As [`forward_raw`], with the features already queued into the workspace.
#[allow(clippy::too_many_arguments)]
unsafe fn queue_causal(
    rt: &Runtime,
    blas: &Blas,
    plan: &Plan,
    qf: u64,
    kf: u64,
    v: u64,
    o: u64,
    workspace: u64,
) -> Result<()> {
    let Dims { n, d, .. } = plan.dims;
    let (dv, d2, dtype) = (plan.dv, 2 * d, plan.dtype);
    let bh = plan.dims.b * plan.dims.h;
    let w = plan.regions.at(workspace, KV_OR_W);
    let probs = match dtype {
        DType::F32 => w,
        _ => plan.regions.at(workspace, PART_OR_P),
    };
    let rows = BaselineParams {
        src: w,
        dst: probs,
        bh: bh as i32,
        rows: n as i32,
        eps: plan.eps,
        ..Default::default()
    };
    // SAFETY: forwarded from the caller; every region was sized by the plan.
    unsafe {
        blas.gemm(&Gemm {
            m: n,
            n,
            k: d2,
            a: Mat::packed(qf, n, d2),
            trans_a: false,
            b: Mat::packed(kf, n, d2),
            trans_b: true,
            c: Mat::packed(w, n, n),
            ab_type: dtype,
            c_type: DType::F32,
            alpha: 1.0,
            beta: 0.0,
            batch: bh,
            fast_tf32: false,
        })?;
        let name = format!("cosformer_causal_rows_{}", dtype.name());
        run(rt, blas.stream(), &name, Grid::Ctas(bh * n), &rows)?;
        blas.gemm(&Gemm {
            m: n,
            n: dv,
            k: n,
            a: Mat::packed(probs, n, n),
            trans_a: false,
            b: Mat::packed(v, n, dv),
            trans_b: false,
            c: Mat::packed(o, n, dv),
            ab_type: dtype,
            c_type: dtype,
            alpha: 1.0,
            beta: 0.0,
            batch: bh,
            fast_tf32: false,
        })
    }
}

/// cosFormer on device buffers. `workspace` may be `None` (then it is allocated for this call).
#[allow(clippy::too_many_arguments)]
pub fn forward<T: Element>(
    rt: &Runtime,
    blas: &Blas,
    params: &CosformerParams,
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
        unsafe { forward_raw(rt, blas, params, T::DTYPE, t.q, t.k, t.v, t.o, wp, wl) }
    })
}
