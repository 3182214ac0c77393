//! SOFT baseline (SPEC §1), everything materialized in fp32 and every product a cuBLAS SGEMM:
//!
//! 1. `Qs = Q / D^¼` (and `Ks` when untied) widened to fp32, V widened to fp32 (f16/bf16),
//!    squared row norms (kernels);
//! 2. landmarks `L [B,H,m,D]`: AvgPool1d / AvgPool2d kernel over the scaled keys, or the caller's
//!    `Given` fp32 landmarks; their squared norms;
//! 3. `P = exp(−½ max(‖qs‖² + ‖l‖² − 2·Qs·Lᵀ, 0))`: batched GEMM `Qs·Lᵀ` (`N×m`) then an exp
//!    kernel in place (likewise `P_k` when untied); `A = exp(−½‖l_i − l_j‖²)` (`m×m`, kernel);
//! 4. `Z` = [`newton_pinv`]: T Newton steps, two batched GEMMs each (`Y = 2I − Â·Z`,
//!    `Z ← Z·Y`, with 2I written by a fill kernel before the first);
//! 5. `X = P·(Z·(P_kᵀ·V))`: three batched GEMMs, then a narrowing copy into O (f16/bf16).

use super::{check_contiguous, check_dims, heads, int, run, Blas, Gemm, Grid, Mat, Regions};
use super::{f32_bytes, BaselineParams};
use crate::error::{Error, Result};
use crate::ops::{
    check_f32_buffer, check_raw, check_workspace, ptr_of, with_matrices, with_raw, RawTensor,
};
use crate::ops::{TensorMut, TensorRef};
use crate::runtime::Runtime;
use crate::tensor::{DType, Dims, Element, Layout};
use cudarc::driver::{CudaSlice, CudaStream};

pub use crate::reference::soft::{Landmarks, SoftParams};

/// Checks the Newton parameters of `params` (T ≥ 1, λ ≥ 0 and c > 0 finite in fp32).
fn check_newton(params: &SoftParams) -> Result<(f32, f32)> {
    if params.newton_iters == 0 {
        return Err(Error::param("newton_iters", 0, "must be >= 1"));
    }
    let (ridge, c) = (params.ridge as f32, params.alpha_scale as f32);
    if !(ridge >= 0.0 && ridge.is_finite()) {
        return Err(Error::param(
            "ridge",
            params.ridge,
            "must be finite and >= 0",
        ));
    }
    if !(c > 0.0 && c.is_finite()) {
        return Err(Error::param(
            "alpha_scale",
            params.alpha_scale,
            "must be finite and > 0",
        ));
    }
    Ok((ridge, c))
}

/// A validated batched Newton–Raphson pseudo-inverse: `batch` fp32 `m×m` matrices.
#[derive(Clone, Debug)]
pub struct NewtonPlan {
    pub batch: usize,
    pub m: usize,
    pub iters: usize,
    pub ridge: f32,
    pub alpha_scale: f32,
    /// [−Â | 2I] (`m×2m`), Y = 2I − Â·Z, and the two `[Z; I]` (`2m×m`) of the ping-pong.
    regions: Regions<4>,
}

impl NewtonPlan {
    pub fn new(batch: usize, m: usize, params: &SoftParams) -> Result<Self> {
        let (ridge, alpha_scale) = check_newton(params)?;
        if batch == 0 {
            return Err(Error::param("batch", 0, "must be >= 1"));
        }
        if m == 0 {
            return Err(Error::param("m", 0, "must be >= 1"));
        }
        int("a", "batch", batch)?;
        int("a", "m", m)?;
        let (one, two) = (f32_bytes(&[batch, m, m]), f32_bytes(&[batch, 2 * m, m]));
        Ok(NewtonPlan {
            batch,
            m,
            iters: params.newton_iters,
            ridge,
            alpha_scale,
            regions: Regions::new("a", [two, one, two, two])?,
        })
    }

    /// Floats in `a` (and `z`): `batch·m²`.
    pub fn len(&self) -> usize {
        self.batch * self.m * self.m
    }

    /// Never true (batch and m are ≥ 1).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Scratch bytes: seven `batch·m²` fp32 buffers' worth.
    pub fn workspace_bytes(&self) -> usize {
        self.regions.total
    }

    /// Queues the whole iteration: `z` = T steps from `a`.
    ///
    /// # Safety
    /// `a` holds [`NewtonPlan::len`] readable floats, `z` as many writable ones, `workspace`
    /// [`NewtonPlan::workspace_bytes`] bytes, none aliasing; valid until the stream's work ends.
    unsafe fn queue(
        &self,
        rt: &Runtime,
        blas: &Blas,
        a: u64,
        z: u64,
        workspace: u64,
    ) -> Result<()> {
        let (m, batch) = (self.m, self.batch);
        let at = |i| self.regions.at(workspace, i);
        let (aug, y, stacked) = (at(0), at(1), [at(2), at(3)]);
        // Each step is two plain GEMMs (the 40 launches for T = 20): Y = [−Â | 2I]·[Z; I]
        // = 2I − Â·Z, then Z' = Z·Y into the other [Z; I] (the last step into `z`). The init
        // kernel writes [−Â | 2I], [Z₀; I] and the other buffer's I.
        let p = BaselineParams {
            src: a,
            dst: aug,
            dst2: stacked[0],
            aux: stacked[1],
            bh: batch as i32,
            rows: m as i32,
            ridge: self.ridge,
            alpha_scale: self.alpha_scale,
            ..Default::default()
        };
        let over_eye = |ptr| Mat {
            ptr,
            ld: m,
            stride: 2 * m * m,
        };
        let gemm = |k, a, b, c| Gemm {
            m,
            n: m,
            k,
            a,
            trans_a: false,
            b,
            trans_b: false,
            c,
            ab_type: DType::F32,
            c_type: DType::F32,
            alpha: 1.0,
            beta: 0.0,
            batch,
            fast_tf32: false,
        };
        let aug_mat = Mat {
            ptr: aug,
            ld: 2 * m,
            stride: 2 * m * m,
        };
        let stream = blas.stream();
        // SAFETY: forwarded from the caller; the regions hold the sizes `new` gave them.
        unsafe {
            run(rt, stream, "newton_init_f32", Grid::Ctas(batch), &p)?;
            for k in 0..self.iters {
                let cur = over_eye(stacked[k % 2]);
                let next = if k + 1 == self.iters {
                    Mat::packed(z, m, m)
                } else {
                    over_eye(stacked[(k + 1) % 2])
                };
                blas.gemm(&gemm(2 * m, aug_mat, cur, Mat::packed(y, m, m)))?; // Y = 2I − Â·Z
                blas.gemm(&gemm(m, cur, Mat::packed(y, m, m), next))?; // Z' = Z·Y
            }
        }
        Ok(())
    }
}

/// Batched Newton–Raphson pseudo-inverse (SPEC §1.4) on raw device pointers: `a` and `z` hold
/// `a_len`, `z_len ≥ plan.len()` fp32 values (`[batch][m][m]`). Queued on `blas.stream()`.
///
/// # Safety
/// `a` readable and `z` writable device memory of this runtime's context of the given lengths,
/// and `workspace` `workspace_len ≥ plan.workspace_bytes()` bytes, none aliasing another; all
/// valid until the work queued on the stream completes.
#[allow(clippy::too_many_arguments)]
pub unsafe fn newton_pinv_raw(
    rt: &Runtime,
    blas: &Blas,
    plan: &NewtonPlan,
    a: u64,
    a_len: usize,
    z: u64,
    z_len: usize,
    workspace: u64,
    workspace_len: usize,
) -> Result<()> {
    check_f32_buffer("a", a, a_len, plan.len())?;
    check_f32_buffer("z", z, z_len, plan.len())?;
    check_workspace(plan.workspace_bytes(), workspace, workspace_len)?;
    // SAFETY: forwarded contract; lengths checked above.
    unsafe { plan.queue(rt, blas, a, z, workspace) }
}

/// `Z` = T Newton steps on `A + λI` for `batch` fp32 `m×m` matrices `a` (`[batch][m][m]`), into
/// `z`, with two batched GEMMs per step. `workspace` may be `None` (then it is allocated).
#[allow(clippy::too_many_arguments)]
pub fn newton_pinv(
    rt: &Runtime,
    blas: &Blas,
    params: &SoftParams,
    batch: usize,
    m: usize,
    a: &CudaSlice<f32>,
    z: &mut CudaSlice<f32>,
    workspace: Option<&mut CudaSlice<u8>>,
) -> Result<()> {
    let plan = NewtonPlan::new(batch, m, params)?;
    let bytes = plan.workspace_bytes();
    with_matrices(
        rt,
        blas.stream(),
        a,
        z,
        workspace,
        bytes,
        |ap, al, zp, zl, wp, wl| {
            // SAFETY: live allocations of this context with their lengths; `z` and the workspace are
            // borrowed mutably, so nothing aliases.
            unsafe { newton_pinv_raw(rt, blas, &plan, ap, al, zp, zl, wp, wl) }
        },
    )
}

/// Workspace regions of [`attention`] (indices into `Plan::regions`).
const QS: usize = 0; // fp32 Qs [bh][N][D]
const KS: usize = 1; // fp32 Ks (untied)
const V32: usize = 2; // fp32 V (f16/bf16)
const NQ: usize = 3; // ‖qs‖² [bh][N]
const NK: usize = 4; // ‖ks‖² (untied)
const L: usize = 5; // landmarks [bh][m][D] (pooled)
const NL: usize = 6; // ‖l‖² [bh][m]
const P: usize = 7; // [bh][N][m]
const PK: usize = 8; // P_k (untied)
const A: usize = 9; // [bh][m][m]
const Z: usize = 10; // [bh][m][m]
const NEWTON: usize = 11; // the Newton plan's workspace
const W1: usize = 12; // P_kᵀV [bh][m][Dv]
const W: usize = 13; // Z·W1
const X32: usize = 14; // fp32 X (f16/bf16)
const REGIONS: usize = 15;

/// A validated SOFT call: shapes, dtype, parameters and workspace layout.
#[derive(Clone, Debug)]
pub struct Plan {
    pub dtype: DType,
    pub dims: Dims,
    pub dv: usize,
    pub m: usize,
    pub params: SoftParams,
    newton: NewtonPlan,
    regions: Regions<REGIONS>,
}

impl Plan {
    /// Checks q `[B,H,N,D]`, k (`Some` exactly when `params.tied` is false) `[B,H,N,D]`, v and o
    /// `[B,H,N,Dv]`, all contiguous, and the parameters (SPEC §1; any m ≥ 1).
    pub fn new(
        dtype: DType,
        q: &Layout,
        k: Option<&Layout>,
        v: &Layout,
        o: &Layout,
        params: &SoftParams,
    ) -> Result<Self> {
        check_contiguous("q", q)?;
        let dims = q.dims;
        let dv = v.dims.d;
        match (k, params.tied) {
            (Some(k), false) => check_dims("k", k, dims, "q")?,
            (None, false) => return Err(Error::shape("k", "untied SOFT needs the k tensor")),
            (Some(_), true) => {
                return Err(Error::shape("k", "tied SOFT (K = Q) takes no k tensor"))
            }
            (None, true) => {}
        }
        check_dims("v", v, dims.with_d(dv), "q")?;
        check_dims("o", o, dims.with_d(dv), "v")?;
        params.validate(dims.n)?;
        let m = params.landmarks.count();
        let bh = heads("q", dims)?;
        int("q", "N", dims.n)?;
        let newton = NewtonPlan::new(bh, m, params)?;
        let Dims { n, d, .. } = dims;
        let untied = |x: Option<usize>| if params.tied { Some(0) } else { x };
        let widened = |x: Option<usize>| if dtype == DType::F32 { Some(0) } else { x };
        let pooled = match params.landmarks {
            Landmarks::Given { .. } => Some(0),
            _ => f32_bytes(&[bh, m, d]),
        };
        let regions = Regions::new(
            "q",
            [
                f32_bytes(&[bh, n, d]),
                untied(f32_bytes(&[bh, n, d])),
                widened(f32_bytes(&[bh, n, dv])),
                f32_bytes(&[bh, n]),
                untied(f32_bytes(&[bh, n])),
                pooled,
                f32_bytes(&[bh, m]),
                f32_bytes(&[bh, n, m]),
                untied(f32_bytes(&[bh, n, m])),
                f32_bytes(&[bh, m, m]),
                f32_bytes(&[bh, m, m]),
                Some(newton.workspace_bytes()),
                f32_bytes(&[bh, m, dv]),
                f32_bytes(&[bh, m, dv]),
                widened(f32_bytes(&[bh, n, dv])),
            ],
        )?;
        Ok(Plan {
            dtype,
            dims,
            dv,
            m,
            params: *params,
            newton,
            regions,
        })
    }

    /// Scratch bytes of every materialized intermediate.
    pub fn workspace_bytes(&self) -> usize {
        self.regions.total
    }

    /// Floats the `Given` landmarks must hold (`B·H·m·D`).
    pub fn given_len(&self) -> usize {
        self.dims.b * self.dims.h * self.m * self.dims.d
    }
}

/// Scratch bytes for q `[B,H,N,D]` (and k when untied), v `[B,H,N,Dv]` in `dtype`.
pub fn workspace_bytes(dtype: DType, dims: Dims, dv: usize, params: &SoftParams) -> Result<usize> {
    let l = Layout::contiguous(dims);
    let lv = Layout::contiguous(dims.with_d(dv));
    let k = (!params.tied).then_some(&l);
    Ok(Plan::new(dtype, &l, k, &lv, &lv, params)?.workspace_bytes())
}

/// SOFT attention on raw device pointers, queued on `blas.stream()`. `k` only when
/// `params.tied` is false; `given` = (fp32 `[B,H,m,D]` landmarks, their length in floats) only
/// for [`Landmarks::Given`].
///
/// # Safety
/// Each pointer must address device memory of this runtime's context holding its contiguous
/// tensor in elements of `dtype` (q, k, v and the given landmarks readable; o writable, aliasing
/// none of them), and `workspace` must hold `workspace_len ≥ Plan::workspace_bytes` bytes. All
/// must stay valid until the work queued on the stream completes.
#[allow(clippy::too_many_arguments)]
pub unsafe fn attention_raw(
    rt: &Runtime,
    blas: &Blas,
    params: &SoftParams,
    dtype: DType,
    q: RawTensor,
    k: Option<RawTensor>,
    v: RawTensor,
    o: RawTensor,
    given: Option<(u64, usize)>,
    workspace: u64,
    workspace_len: usize,
) -> Result<()> {
    let plan = Plan::new(
        dtype,
        &q.layout,
        k.as_ref().map(|k| &k.layout),
        &v.layout,
        &o.layout,
        params,
    )?;
    let keys = k.unwrap_or(q);
    check_raw(dtype, [("q", &q), ("k", &keys), ("v", &v), ("o", &o)])?;
    let given = match (params.landmarks, given) {
        (Landmarks::Given { .. }, Some((ptr, len))) => {
            check_f32_buffer("landmarks", ptr, len, plan.given_len())?;
            Some(ptr)
        }
        (Landmarks::Given { .. }, None) => {
            return Err(Error::shape("landmarks", "Given landmarks need the tensor"))
        }
        (_, Some(_)) => {
            return Err(Error::shape(
                "landmarks",
                "a landmark tensor was passed but the landmarks are pooled, not Given",
            ))
        }
        (_, None) => None,
    };
    check_workspace(plan.workspace_bytes(), workspace, workspace_len)?;
    // SAFETY: forwarded contract; every buffer was checked against the plan above.
    unsafe {
        queue(
            rt, blas, &plan, q.ptr, keys.ptr, v.ptr, o.ptr, given, workspace,
        )
    }
}

/// Queues the whole pipeline of the module comment.
///
/// # Safety
/// As [`attention_raw`], after its checks.
#[allow(clippy::too_many_arguments)]
unsafe fn queue(
    rt: &Runtime,
    blas: &Blas,
    plan: &Plan,
    q: u64,
    k: u64,
    v: u64,
    o: u64,
    given: Option<u64>,
    workspace: u64,
) -> Result<()> {
    let Dims { n, d, .. } = plan.dims;
    let (m, dv, dtype, tied) = (plan.m, plan.dv, plan.dtype, plan.params.tied);
    let bh = plan.dims.b * plan.dims.h;
    let at = |i| plan.regions.at(workspace, i);
    let stream = blas.stream();
    let dt = dtype.name();
    let base = BaselineParams {
        bh: bh as i32,
        rows: n as i32,
        cols: d as i32,
        ..Default::default()
    };
    let widen = |src, dst, cols: usize, scale| BaselineParams {
        src,
        dst,
        count: (bh * n * cols) as i64,
        scale,
        ..base
    };
    let scale = (d as f64).powf(-0.25) as f32;
    let (qs, nq) = (at(QS), at(NQ));
    let (ks, nk) = if tied { (qs, nq) } else { (at(KS), at(NK)) };
    let v32 = if dtype == DType::F32 { v } else { at(V32) };
    let l = given.unwrap_or(at(L));
    let (p, pk) = (at(P), if tied { at(P) } else { at(PK) });
    let (x32, a, z) = (if dtype == DType::F32 { o } else { at(X32) }, at(A), at(Z));
    // SAFETY: forwarded from the caller; every intermediate is a workspace region sized by the
    // plan, and each kernel's extents are the plan's.
    unsafe {
        let to_f32 = format!("to_f32_{dt}");
        run(rt, stream, &to_f32, Grid::Elements, &widen(q, qs, d, scale))?;
        let norms = BaselineParams {
            src: qs,
            aux: nq,
            ..base
        };
        run(rt, stream, "rownorm2_f32", Grid::Warps(bh * n), &norms)?;
        if !tied {
            run(rt, stream, &to_f32, Grid::Elements, &widen(k, ks, d, scale))?;
            let norms = BaselineParams {
                src: ks,
                aux: nk,
                ..base
            };
            run(rt, stream, "rownorm2_f32", Grid::Warps(bh * n), &norms)?;
        }
        if dtype != DType::F32 {
            run(rt, stream, &to_f32, Grid::Elements, &widen(v, v32, dv, 1.0))?;
        }
        queue_landmarks(rt, stream, plan, ks, given, l)?;
        let l_rows = BaselineParams {
            src: l,
            aux: at(NL),
            rows: m as i32,
            ..base
        };
        run(rt, stream, "rownorm2_f32", Grid::Warps(bh * m), &l_rows)?;
        for (x, nx, px) in [(qs, nq, p), (ks, nk, pk)]
            .into_iter()
            .take(2 - tied as usize)
        {
            blas.gemm(&sgemm(bh, n, m, d, (x, false), (l, true), px))?;
            let g = BaselineParams {
                src: px,
                aux: nx,
                aux2: at(NL),
                count: (bh * n * m) as i64,
                cols: m as i32,
                ..base
            };
            run(rt, stream, "soft_gaussian_f32", Grid::Elements, &g)?;
        }
        let gram = BaselineParams {
            src: l,
            dst: a,
            count: (bh * m * m) as i64,
            rows: m as i32,
            inner: d as i32,
            ..base
        };
        run(rt, stream, "soft_gram_f32", Grid::Elements, &gram)?;
        plan.newton.queue(rt, blas, a, z, at(NEWTON))?;
        let (w1, w) = (at(W1), at(W));
        blas.gemm(&sgemm(bh, m, dv, n, (pk, true), (v32, false), w1))?;
        blas.gemm(&sgemm(bh, m, dv, m, (z, false), (w1, false), w))?;
        blas.gemm(&sgemm(bh, n, dv, m, (p, false), (w, false), x32))?;
        if dtype != DType::F32 {
            let narrow = BaselineParams {
                src: x32,
                dst: o,
                count: (bh * n * dv) as i64,
                ..base
            };
            run(
                rt,
                stream,
                &format!("from_f32_{dt}"),
                Grid::Elements,
                &narrow,
            )?;
        }
    }
    Ok(())
}

/// An fp32 batched product `C [rows×cols] = op(A)·op(B)` over `k`, operands packed per head
/// (`(ptr, transposed)`; a transposed operand is stored `k×rows` / `cols×k`).
fn sgemm(
    batch: usize,
    rows: usize,
    cols: usize,
    k: usize,
    (a, trans_a): (u64, bool),
    (b, trans_b): (u64, bool),
    c: u64,
) -> Gemm {
    let a = if trans_a {
        Mat::packed(a, k, rows)
    } else {
        Mat::packed(a, rows, k)
    };
    let b = if trans_b {
        Mat::packed(b, cols, k)
    } else {
        Mat::packed(b, k, cols)
    };
    Gemm {
        m: rows,
        n: cols,
        k,
        a,
        trans_a,
        b,
        trans_b,
        c: Mat::packed(c, rows, cols),
        ab_type: DType::F32,
        c_type: DType::F32,
        alpha: 1.0,
        beta: 0.0,
        batch,
        fast_tf32: false,
    }
}

/// Queues the pooling kernel of the plan's landmarks from the fp32 scaled keys `ks` into `l`
/// (nothing for `Given`).
///
/// # Safety
/// `ks` holds `[bh][N][D]` and `l` `[bh][m][D]` fp32 values, valid until the stream's work ends.
unsafe fn queue_landmarks(
    rt: &Runtime,
    stream: &CudaStream,
    plan: &Plan,
    ks: u64,
    given: Option<u64>,
    l: u64,
) -> Result<()> {
    let bh = plan.dims.b * plan.dims.h;
    let mut p = BaselineParams {
        src: ks,
        dst: l,
        bh: bh as i32,
        rows: plan.dims.n as i32,
        cols: plan.dims.d as i32,
        out_rows: plan.m as i32,
        ..Default::default()
    };
    let name = match plan.params.landmarks {
        Landmarks::AvgPool1d { .. } => "soft_pool1d_f32",
        Landmarks::AvgPool2d { height, width, r } => {
            // Validated: height·width = N fits an int, 1 ≤ r ≤ min(height, width).
            (p.grid_h, p.grid_w, p.grid_r) = (height as i32, width as i32, r as i32);
            "soft_pool2d_f32"
        }
        Landmarks::Given { .. } => {
            debug_assert!(given.is_some());
            return Ok(());
        }
    };
    // SAFETY: forwarded from the caller.
    unsafe { run(rt, stream, name, Grid::Ctas(bh * plan.m), &p) }
}

/// SOFT attention on device buffers. `k` only when `params.tied` is false; `given` only for
/// [`Landmarks::Given`] (fp32 `[B,H,m,D]`). `workspace` may be `None` (then it is allocated).
#[allow(clippy::too_many_arguments)]
pub fn attention<T: Element>(
    rt: &Runtime,
    blas: &Blas,
    params: &SoftParams,
    q: TensorRef<'_, T>,
    k: Option<TensorRef<'_, T>>,
    v: TensorRef<'_, T>,
    o: TensorMut<'_, T>,
    given: Option<&CudaSlice<f32>>,
    workspace: Option<&mut CudaSlice<u8>>,
) -> Result<()> {
    let plan = Plan::new(
        T::DTYPE,
        &q.layout,
        k.as_ref().map(|k| &k.layout),
        &v.layout,
        &o.layout,
        params,
    )?;
    let stream = blas.stream();
    let (gp, _gg) = match given {
        Some(g) => {
            let (p, guard) = ptr_of(g, stream);
            (Some((p, g.len())), Some(guard))
        }
        None => (None, None),
    };
    let tied = k.is_none();
    let keys = k.unwrap_or(TensorRef {
        data: q.data,
        layout: q.layout,
    });
    let ws = Some((workspace, plan.workspace_bytes()));
    with_raw(rt, stream, (q, keys, v, o), ws, |t, wp, wl| {
        let k = (!tied).then_some(t.k);
        // SAFETY: every buffer is a live allocation of this context whose length was checked
        // against its layout; `o` is borrowed mutably, so it cannot alias the inputs.
        unsafe { attention_raw(rt, blas, params, T::DTYPE, t.q, k, t.v, t.o, gp, wp, wl) }
    })
}
