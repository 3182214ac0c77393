//! AFT-full and AFT-local baselines (SPEC §3) through one dense fp32 `T×T` weight matrix:
//!
//! 1. `Wexp[t,t'] = exp(w_tt' − max_t' w_tt')` over the visible keys (0 for t' > t when causal),
//!    shared by every (b,h) and channel (kernel). AFT-full reads `w [T,T]`; AFT-local expands the
//!    band `w [T, 2s−1]` with `w = 0` outside `|t − t'| < s`;
//! 2. the column max of K per (b,h,channel) (reduction kernels), then `[E⊙V | E]` with
//!    `E = exp(K − colmax)`, fp32, token-major `[T][B·H][2D]` (kernel);
//! 3. `[num | den] = Wexp · [E⊙V | E]`: one GEMM `[T×T]·[T × B·H·2D]` for every head at once,
//!    fp32 operands: multiplied as TF32 for f16/bf16 storage (cuBLAS's fastest path that keeps
//!    the explicit matrix over fp32's range: an f16 `Wexp` would flush the small weights that
//!    sofa's kernels keep by scaling each operand tile), as fp32 for f32 storage;
//! 4. `Y = σ(Q) ⊙ num / den` (kernel). The denominator is not guarded: it underflows only when
//!    K and w peak far apart (|ΔK| ≳ 87), which the baseline does not handle.
//!
//! The bias `w` is an fp32 device buffer. Quadratic in T in time and in memory (the weights and
//! `[num | den]`), linear in B·H.

use super::{check_contiguous, check_dims, heads, int, run, Blas, Gemm, Grid, Mat, Regions};
use super::{f32_bytes, BaselineParams, ColPlan};
use crate::error::{Error, Result};
use crate::ops::{check_raw, check_workspace, ptr_of, with_raw, RawTensor, TensorMut, TensorRef};
use crate::runtime::Runtime;
use crate::tensor::{DType, Dims, Element, Layout};
use cudarc::driver::CudaSlice;

/// The position bias of a raw call: the address of an fp32 device buffer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AftBias {
    /// AFT-full: `w [T, T]`.
    Full { w: u64 },
    /// AFT-local: band `w [T, 2s−1]`, entry `(t, t'−t+s−1)`; `window` = s ≥ 1.
    Local { w: u64, window: usize },
}

/// The position bias of a safe call.
#[derive(Clone, Copy, Debug)]
pub enum AftWeights<'a> {
    /// AFT-full: `w [T, T]`.
    Full(&'a CudaSlice<f32>),
    /// AFT-local: band `w [T, 2s−1]`; `window` = s ≥ 1.
    Local {
        w: &'a CudaSlice<f32>,
        window: usize,
    },
}

impl AftBias {
    /// Floats `w` must hold for sequence length `t`, after checking the window.
    pub fn w_len(&self, t: usize) -> Result<usize> {
        let need = match *self {
            AftBias::Full { .. } => t.checked_mul(t),
            AftBias::Local { window: 0, .. } => {
                return Err(Error::param("window", 0, "must be >= 1"))
            }
            AftBias::Local { window, .. } => window
                .checked_mul(2)
                .filter(|&band| band <= i32::MAX as usize)
                .and_then(|band| (band - 1).checked_mul(t)),
        };
        need.ok_or_else(|| Error::param("window", format!("{self:?}"), "w's size overflows"))
    }

    fn ptr(&self) -> u64 {
        match *self {
            AftBias::Full { w } | AftBias::Local { w, .. } => w,
        }
    }
}

/// A validated call: shapes, dtype and workspace layout.
#[derive(Clone, Debug)]
pub struct Plan {
    pub dtype: DType,
    /// `[B, H, T, D]`.
    pub dims: Dims,
    pub causal: bool,
    cols: ColPlan,
    regions: Regions<5>,
}

impl Plan {
    /// Checks q, k, v and o `[B,H,T,D]` (contiguous, the same shape).
    pub fn new(
        dtype: DType,
        q: &Layout,
        k: &Layout,
        v: &Layout,
        o: &Layout,
        causal: bool,
    ) -> Result<Self> {
        check_contiguous("q", q)?;
        let dims = q.dims;
        check_dims("k", k, dims, "q")?;
        check_dims("v", v, dims, "q (AFT needs Dv = D)")?;
        check_dims("o", o, dims, "q")?;
        let bh = heads("q", dims)?;
        let Dims { n: t, d, .. } = dims;
        int("q", "T", t)?;
        int("q", "B·H·2D", bh * 2 * d)?;
        let cols = ColPlan::new(bh, t, d);
        let regions = Regions::new(
            "q",
            [
                f32_bytes(&[t, t]),
                cols.partial_bytes(),
                f32_bytes(&[bh, d]),
                f32_bytes(&[t, bh, 2 * d]),
                f32_bytes(&[t, bh, 2 * d]),
            ],
        )?;
        Ok(Plan {
            dtype,
            dims,
            causal,
            cols,
            regions,
        })
    }

    /// Scratch bytes: the `T×T` weights, column maxima, `[E⊙V | E]` and `[num | den]`.
    pub fn workspace_bytes(&self) -> usize {
        self.regions.total
    }
}

/// Scratch bytes for q, k, v `[B,H,T,D]` (the same for AFT-full and AFT-local).
pub fn workspace_bytes(dtype: DType, dims: Dims) -> Result<usize> {
    let l = Layout::contiguous(dims);
    Ok(Plan::new(dtype, &l, &l, &l, &l, false)?.workspace_bytes())
}

/// AFT-full / AFT-local on raw device pointers, queued on `blas.stream()`. `w_len` is the
/// number of floats the bias buffer holds.
///
/// # Safety
/// Each pointer must address device memory of this runtime's context holding its contiguous
/// tensor in elements of `dtype` (q, k, v readable; o writable, aliasing none of them), the bias
/// `w_len` readable floats, and `workspace` `workspace_len ≥ Plan::workspace_bytes` bytes. All
/// must stay valid until the work queued on the stream completes.
#[allow(clippy::too_many_arguments)]
pub unsafe fn forward_raw(
    rt: &Runtime,
    blas: &Blas,
    dtype: DType,
    q: RawTensor,
    k: RawTensor,
    v: RawTensor,
    o: RawTensor,
    bias: AftBias,
    w_len: usize,
    causal: bool,
    workspace: u64,
    workspace_len: usize,
) -> Result<()> {
    let plan = Plan::new(dtype, &q.layout, &k.layout, &v.layout, &o.layout, causal)?;
    let Dims { n: t, d, .. } = plan.dims;
    let need = bias.w_len(t)?;
    if w_len < need {
        return Err(Error::BufferTooSmall {
            arg: "w",
            needed: need,
            len: w_len,
        });
    }
    if bias.ptr() == 0 || bias.ptr() % 4 != 0 {
        return Err(Error::param(
            "w",
            format!("{:#x}", bias.ptr()),
            "must be non-null and 4-byte aligned",
        ));
    }
    check_raw(dtype, [("q", &q), ("k", &k), ("v", &v), ("o", &o)])?;
    check_workspace(plan.workspace_bytes(), workspace, workspace_len)?;
    let bh = plan.dims.b * plan.dims.h;
    let at = |i| plan.regions.at(workspace, i);
    let (wexp, partial, colmax, eve, nd) = (at(0), at(1), at(2), at(3), at(4));
    let (name, window) = match bias {
        AftBias::Full { .. } => ("aft_wexp_full_f32", 0),
        AftBias::Local { window, .. } => ("aft_wexp_local_f32", window as i32),
    };
    let weights = BaselineParams {
        src: bias.ptr(),
        dst: wexp,
        rows: t as i32,
        window,
        causal: causal as i32,
        ..Default::default()
    };
    let elementwise = |src, src2, dst| BaselineParams {
        src,
        src2,
        dst,
        aux: colmax,
        count: (bh * t * d) as i64,
        bh: bh as i32,
        rows: t as i32,
        cols: d as i32,
        ..Default::default()
    };
    let stream = blas.stream();
    let dt = dtype.name();
    let wide = bh * 2 * d;
    // SAFETY: the buffers hold the shapes validated above (caller's contract); every
    // intermediate is a workspace region sized by the plan.
    unsafe {
        run(rt, stream, name, Grid::Ctas(t), &weights)?;
        plan.cols
            .queue(rt, stream, "max", dtype, k.ptr, partial, colmax, 0.0)?;
        let expkv = elementwise(k.ptr, v.ptr, eve);
        run(
            rt,
            stream,
            &format!("aft_expkv_{dt}"),
            Grid::Elements,
            &expkv,
        )?;
        blas.gemm(&Gemm {
            m: t,
            n: wide,
            k: t,
            a: Mat::packed(wexp, t, t),
            trans_a: false,
            b: Mat::packed(eve, t, wide),
            trans_b: false,
            c: Mat::packed(nd, t, wide),
            ab_type: DType::F32,
            c_type: DType::F32,
            alpha: 1.0,
            beta: 0.0,
            batch: 1,
            fast_tf32: dtype != DType::F32,
        })?;
        let gate = elementwise(q.ptr, nd, o.ptr);
        run(rt, stream, &format!("aft_gate_{dt}"), Grid::Elements, &gate)
    }
}

/// AFT-full / AFT-local on device buffers. `workspace` may be `None` (then it is allocated).
#[allow(clippy::too_many_arguments)]
pub fn forward<T: Element>(
    rt: &Runtime,
    blas: &Blas,
    q: TensorRef<'_, T>,
    k: TensorRef<'_, T>,
    v: TensorRef<'_, T>,
    o: TensorMut<'_, T>,
    weights: AftWeights<'_>,
    causal: bool,
    workspace: Option<&mut CudaSlice<u8>>,
) -> Result<()> {
    let plan = Plan::new(T::DTYPE, &q.layout, &k.layout, &v.layout, &o.layout, causal)?;
    let stream = blas.stream();
    let (w, window) = match weights {
        AftWeights::Full(w) => (w, None),
        AftWeights::Local { w, window } => (w, Some(window)),
    };
    let (wp, _gw) = ptr_of(w, stream);
    let bias = match window {
        None => AftBias::Full { w: wp },
        Some(window) => AftBias::Local { w: wp, window },
    };
    let w_len = w.len();
    let ws = Some((workspace, plan.workspace_bytes()));
    with_raw(rt, stream, (q, k, v, o), ws, |t, wsp, wsl| {
        // SAFETY: every buffer is a live allocation of this context whose length was checked
        // against its layout (w against its length in forward_raw); `o` is borrowed mutably.
        unsafe {
            forward_raw(
                rt,
                blas,
                T::DTYPE,
                t.q,
                t.k,
                t.v,
                t.o,
                bias,
                w_len,
                causal,
                wsp,
                wsl,
            )
        }
    })
}
