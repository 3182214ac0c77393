//! Landmark pooling and the materialized Gaussian-kernel products P and A.

use super::{
    check_bh, check_m, grid_dim, grid_yz, scale_of, strides, KernelParams, Landmarks, SoftParams,
    FAMILY, LM, POOL_THREADS, ROWS, THREADS,
};
use crate::error::{Error, Result};
use crate::ops::{
    check_f32_buffer, check_ptr, launch, ptr_of, ptr_of_mut, RawTensor, TensorRef, MAX_HEAD_DIM,
};
use crate::runtime::Runtime;
use crate::tensor::{DType, Dims, Element};
use cudarc::driver::{CudaSlice, CudaStream};
use std::sync::Arc;

/// Checks the landmark method for `[B,H,N,D]` inputs: the SoftParams rules of SPEC §1.2 plus
/// m ≤ [`MAX_M`](super::MAX_M). Returns m.
pub(super) fn check_landmarks(params: &SoftParams, n: usize) -> Result<usize> {
    params.landmarks.validate(n)?;
    let m = params.landmarks.count();
    check_m(m)?;
    Ok(m)
}

/// Queues the pooling kernel: keys `k` (q when tied) → fp32 `L [B,H,m,D]` at `out`.
///
/// # Safety
/// `k` is valid for its layout in elements of `dtype`; `out` holds B·H·m·D writable floats.
pub(super) unsafe fn queue_landmarks(
    rt: &Runtime,
    stream: &CudaStream,
    dtype: DType,
    lm: &Landmarks,
    m: usize,
    k: &RawTensor,
    out: u64,
) -> Result<()> {
    let Dims { b, h, n, d } = k.layout.dims;
    let [k_sb, k_sh, k_sn] = strides(&k.layout);
    let (pool, height, width, r) = match *lm {
        Landmarks::AvgPool2d { height, width, r } => (1, height, width, r),
        _ => (0, 0, 0, 0),
    };
    let p = KernelParams {
        k: k.ptr,
        l: out,
        k_sb,
        k_sh,
        k_sn,
        b: b as i32,
        h: h as i32,
        n: n as i32,
        d: d as i32,
        m: m as i32,
        pool,
        height: height as i32,
        width: width as i32,
        r: r as i32,
        scale: scale_of(d),
        ..Default::default()
    };
    let f = rt.function(FAMILY, &format!("soft_landmarks_{}", dtype.name()))?;
    // SAFETY: the caller's contract; m ≤ 256 landmarks, each a segment or window inside N rows.
    unsafe { launch(stream, &f, (m as u32, grid_yz(b * h), 1), POOL_THREADS, &p) }
}

/// Landmarks on raw device pointers: `keys` are the rows pooled (q when tied, k when untied),
/// `out` receives fp32 `[B,H,m,D]` (contiguous). `Given` landmarks are the caller's: refused here.
///
/// # Safety
/// `keys` must address its layout's span of `dtype` elements and `out` `out_len` writable floats
/// of this runtime's context, valid until the work on `stream` completes.
pub unsafe fn landmarks_raw(
    rt: &Runtime,
    stream: &CudaStream,
    params: &SoftParams,
    dtype: DType,
    keys: RawTensor,
    out: u64,
    out_len: usize,
) -> Result<()> {
    let l = &keys.layout;
    l.validate("k", l.span().unwrap_or(usize::MAX), MAX_HEAD_DIM)?;
    check_bh(l.dims)?;
    let m = check_landmarks(params, l.dims.n)?;
    if let Landmarks::Given { .. } = params.landmarks {
        return Err(Error::param(
            "landmarks",
            "Given",
            "given landmarks are the caller's tensor; nothing to pool",
        ));
    }
    check_ptr(dtype, "k", &keys)?;
    let Dims { b, h, d, .. } = l.dims;
    check_f32_buffer("landmarks", out, out_len, b * h * m * d)?;
    // SAFETY: validated above and by the caller's contract.
    unsafe { queue_landmarks(rt, stream, dtype, &params.landmarks, m, &keys, out) }
}

/// Landmarks `L [B,H,m,D]` (fp32, contiguous, scaled space) of SPEC §1.2 into `out`: pooled from
/// `q` (tied) or `k` (untied, required then), or a copy of `given` for [`Landmarks::Given`].
#[allow(clippy::too_many_arguments)]
pub fn landmarks<T: Element>(
    rt: &Runtime,
    stream: &Arc<CudaStream>,
    params: &SoftParams,
    q: TensorRef<'_, T>,
    k: Option<TensorRef<'_, T>>,
    given: Option<&CudaSlice<f32>>,
    out: &mut CudaSlice<f32>,
) -> Result<()> {
    q.validate("q")?;
    let keys = keys_of(params, &q, k.as_ref())?;
    keys.validate("k")?;
    check_bh(q.layout.dims)?;
    let m = check_landmarks(params, q.layout.dims.n)?;
    let Dims { b, h, d, .. } = q.layout.dims;
    let need = b * h * m * d;
    if out.len() < need {
        return Err(Error::BufferTooSmall {
            arg: "landmarks",
            needed: need,
            len: out.len(),
        });
    }
    match (params.landmarks, given) {
        (Landmarks::Given { .. }, Some(g)) => {
            check_given(g.len(), need)?;
            stream.memcpy_dtod(&g.slice(0..need), &mut out.slice_mut(0..need))?;
            Ok(())
        }
        (Landmarks::Given { .. }, None) => {
            Err(Error::shape("landmarks", "Given landmarks need the tensor"))
        }
        (_, Some(_)) => Err(Error::shape(
            "landmarks",
            "a landmark tensor was passed but the landmarks are pooled, not Given",
        )),
        (lm, None) => {
            let (kp, _gk) = ptr_of(keys.data, stream);
            let (op, _go) = ptr_of_mut(out, stream);
            let raw = RawTensor {
                ptr: kp,
                layout: keys.layout,
            };
            // SAFETY: `keys` was checked against its buffer, `out` holds B·H·m·D floats.
            unsafe { queue_landmarks(rt, stream, T::DTYPE, &lm, m, &raw, op) }
        }
    }
}

fn check_given(len: usize, need: usize) -> Result<()> {
    if len < need {
        return Err(Error::BufferTooSmall {
            arg: "landmarks",
            needed: need,
            len,
        });
    }
    Ok(())
}

/// The keys the landmarks and `P_k` use: q when tied (then no k may be passed), k when untied.
pub(super) fn keys_of<'a, 'b, T>(
    params: &SoftParams,
    q: &'b TensorRef<'a, T>,
    k: Option<&'b TensorRef<'a, T>>,
) -> Result<TensorRef<'a, T>> {
    match (params.tied, k) {
        (true, None) => Ok(TensorRef {
            data: q.data,
            layout: q.layout,
        }),
        (false, Some(k)) => {
            if k.layout.dims != q.layout.dims {
                return Err(Error::shape(
                    "k",
                    format!("{} does not match q {}", k.layout.dims, q.layout.dims),
                ));
            }
            Ok(TensorRef {
                data: k.data,
                layout: k.layout,
            })
        }
        (true, Some(_)) => Err(Error::shape(
            "k",
            "keys are tied to the queries (tied = true): pass no k",
        )),
        (false, None) => Err(Error::shape("k", "untied keys (tied = false) need k")),
    }
}

/// Materialized products on raw pointers: `P [B,H,N,m]` and `A [B,H,m,m]` (fp32, contiguous)
/// from q and fp32 landmarks `l [B,H,m,D]`.
///
/// # Safety
/// `q` addresses its layout's span of `dtype` elements; `l`, `p`, `a` hold `l_len`, `p_len`,
/// `a_len` floats (`p`, `a` writable, aliasing nothing), all valid until the work completes.
#[allow(clippy::too_many_arguments)]
pub unsafe fn gaussian_products_raw(
    rt: &Runtime,
    stream: &CudaStream,
    dtype: DType,
    q: RawTensor,
    m: usize,
    l: (u64, usize),
    p: (u64, usize),
    a: (u64, usize),
) -> Result<()> {
    let lq = &q.layout;
    lq.validate("q", lq.span().unwrap_or(usize::MAX), MAX_HEAD_DIM)?;
    check_bh(lq.dims)?;
    check_m(m)?;
    check_ptr(dtype, "q", &q)?;
    let Dims { b, h, n, d } = lq.dims;
    let bh = b * h;
    check_f32_buffer("landmarks", l.0, l.1, bh * m * d)?;
    let p_need = bh.saturating_mul(n.saturating_mul(m));
    check_f32_buffer("p", p.0, p.1, p_need)?;
    check_f32_buffer("a", a.0, a.1, bh * m * m)?;
    let [q_sb, q_sh, q_sn] = strides(lq);
    let kp = KernelParams {
        q: q.ptr,
        l: l.0,
        p: p.0,
        a: a.0,
        q_sb,
        q_sh,
        q_sn,
        b: b as i32,
        h: h as i32,
        n: n as i32,
        d: d as i32,
        m: m as i32,
        scale: scale_of(d),
        ..Default::default()
    };
    let prod = rt.function(FAMILY, &format!("soft_products_{}", dtype.name()))?;
    let gram = rt.function(FAMILY, "soft_gram_f32")?;
    let lt = m.div_ceil(LM) as u32;
    // SAFETY: validated above and by the caller's contract; grids cover every P and A element.
    unsafe {
        launch(
            stream,
            &prod,
            (grid_dim(n.div_ceil(ROWS)), grid_yz(bh), lt),
            THREADS,
            &kp,
        )?;
        launch(
            stream,
            &gram,
            (m.div_ceil(ROWS) as u32, grid_yz(bh), lt),
            THREADS,
            &kp,
        )?;
    }
    Ok(())
}

/// `P = exp(−½D²(Qs, L))` (`[B,H,N,m]`) and `A = exp(−½D²(L, L))` (`[B,H,m,m]`), fp32,
/// contiguous (SPEC §1.3), from `q` and the landmarks `l` (fp32 `[B,H,m,D]`, e.g. from
/// [`landmarks`]). Squared distances are sums of squared differences.
pub fn gaussian_products<T: Element>(
    rt: &Runtime,
    stream: &Arc<CudaStream>,
    q: TensorRef<'_, T>,
    m: usize,
    l: &CudaSlice<f32>,
    p: &mut CudaSlice<f32>,
    a: &mut CudaSlice<f32>,
) -> Result<()> {
    q.validate("q")?;
    let (qp, _gq) = ptr_of(q.data, stream);
    let (lp, _gl) = ptr_of(l, stream);
    let (p_len, a_len) = (p.len(), a.len());
    let (pp, _gp) = ptr_of_mut(p, stream);
    let (ap, _ga) = ptr_of_mut(a, stream);
    let raw = RawTensor {
        ptr: qp,
        layout: q.layout,
    };
    // SAFETY: live allocations with their lengths; p and a are borrowed mutably (no aliasing).
    unsafe {
        gaussian_products_raw(
            rt,
            stream,
            T::DTYPE,
            raw,
            m,
            (lp, l.len()),
            (pp, p_len),
            (ap, a_len),
        )
    }
}
