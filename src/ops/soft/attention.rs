//! The fused two-pass SOFT attention: its plan, workspace and launches (CUDA-core or tensor-core
//! passes).

use super::products::{check_landmarks, keys_of, queue_landmarks};
use super::{
    check_bh, grid_dim, grid_yz, scale_of, strides, KernelParams, Landmarks, NewtonPath,
    NewtonPlan, SoftParams, ET, FAMILY, LM, MAX_CHUNKS, ROWS, TARGET_CTAS, TC_DIMS, TC_ROWS,
    TC_THREADS, THREADS,
};
use crate::error::{Error, Result};
use crate::ops::{
    check_f32_buffer, check_ptr, check_workspace, ctas_per_slice, launch, launch_smem,
    launch_smem_beside, one_wave_rows, ptr_of, rows_16b_aligned, with_raw, RawTensor, TensorMut,
    TensorRef, MAX_HEAD_DIM,
};
use crate::runtime::Runtime;
use crate::tensor::{DType, Dims, Element, Layout};
use cudarc::driver::{CudaSlice, CudaStream};
use std::sync::Arc;

/// Launch geometry of the tensor-core passes (mirrors soft_tc_* in kernels/soft_tc.cuh).
mod tc {
    use super::{LM, TC_ROWS};
    /// Landmark rows of pass 2 in shared memory (soft_tc_mpad: m rounded up to 16).
    fn mpad(m: usize) -> usize {
        m.div_ceil(16) * 16
    }
    /// Dynamic shared memory of pass 1: L hi/lo of a tile, K and V double-buffered, the
    /// landmark terms, the row terms of one stage.
    pub fn pass1_smem(d: usize) -> usize {
        (2 * LM + 4 * TC_ROWS) * (d + 8) * 2 + 2 * LM * 4 + TC_ROWS * 4
    }
    /// Rows of a pass-2 tile: 16·soft_tc_pass2_mi row blocks per warp, 2 for D ≤ 64.
    pub fn pass2_rows(d: usize) -> usize {
        TC_ROWS * if d <= 64 { 2 } else { 1 }
    }
    /// Dynamic shared memory of pass 2: L and W hi/lo of all landmarks, Q tiles double-buffered,
    /// per-landmark exponent terms and coefficients, per-column scales.
    pub fn pass2_smem(d: usize, m: usize) -> usize {
        (4 * mpad(m) + 2 * pass2_rows(d)) * (d + 8) * 2 + 2 * mpad(m) * 4 + 2 * d * 4
    }
    // The values the static_assert in kernels/soft_tc.cuh pins.
    #[test]
    fn geometry_matches_the_kernel_header() {
        assert_eq!(pass1_smem(64), 56064);
        assert_eq!(pass2_smem(64, 64), 74752);
        assert_eq!(pass2_smem(64, 256), 186880);
        assert_eq!(pass2_smem(32, 7), 25984);
        assert_eq!(pass2_smem(80, 64), 68736);
        assert_eq!((pass2_rows(64), pass2_rows(80)), (128, 64));
        // The largest m whose pass 2 fits 227 KB: 256 up to D = 80, 240 at 96, 176 at 128.
        let fits = |d, m| pass2_smem(d, m) <= 227 * 1024;
        assert!(fits(80, 256) && fits(96, 240) && !fits(96, 241) && fits(128, 176));
        assert!(!fits(128, 177));
    }
}

/// A validated launch plan of the fused attention for one set of layouts.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Plan {
    pub dims: Dims,
    pub dv: usize,
    pub m: usize,
    pub params: SoftParams,
    pub newton: NewtonPlan,
    /// Row chunks of pass 1 and their length (a multiple of 64).
    pub chunks: usize,
    pub rows_per_chunk: usize,
    layouts: [Layout; 4],
}

/// Offsets (bytes) of the pieces of the attention workspace.
struct WsLayout {
    l: usize,
    a: usize,
    z: usize,
    partial: usize,
    s: usize,
    w: usize,
    newton: usize,
    total: usize,
}

impl Plan {
    /// Checks q `[B,H,N,D]`, k (untied only, like q), v and o `[B,H,N,Dv]` and the parameters;
    /// `smem_optin` (the device's shared memory per block) picks the Newton path.
    pub fn new(
        q: &Layout,
        k: Option<&Layout>,
        v: &Layout,
        o: &Layout,
        params: &SoftParams,
        smem_optin: usize,
    ) -> Result<Self> {
        let dims = q.dims;
        let dv = v.dims.d;
        match (params.tied, k) {
            (true, Some(_)) => {
                return Err(Error::shape(
                    "k",
                    "keys are tied to the queries (tied = true): pass no k",
                ))
            }
            (false, None) => return Err(Error::shape("k", "untied keys (tied = false) need k")),
            _ => {}
        }
        let mut checks = vec![("v", v, dims.with_d(dv)), ("o", o, dims.with_d(dv))];
        if let Some(k) = k {
            checks.insert(0, ("k", k, dims));
        }
        for (arg, l, want) in checks {
            if l.dims != want {
                return Err(Error::shape(
                    arg,
                    format!("{} does not match q {dims} (expected {want})", l.dims),
                ));
            }
        }
        let mut all = vec![("q", q), ("v", v), ("o", o)];
        if let Some(k) = k {
            all.push(("k", k));
        }
        for (arg, l) in all {
            let span = l.span().unwrap_or(usize::MAX);
            l.validate(arg, span, MAX_HEAD_DIM)?;
        }
        check_bh(dims)?;
        let m = check_landmarks(params, dims.n)?;
        let Dims { b, h, n, .. } = dims;
        let newton = NewtonPlan::new(b * h, m, params, NewtonPath::Auto, smem_optin)?;
        let tiles = m.div_ceil(LM) * dv.div_ceil(ET);
        let want = TARGET_CTAS.div_ceil(b * h * tiles);
        let chunks = want.clamp(1, MAX_CHUNKS.min(n.div_ceil(4 * ROWS)).max(1));
        let rows_per_chunk = n.div_ceil(chunks).div_ceil(ROWS) * ROWS;
        Ok(Plan {
            dims,
            dv,
            m,
            params: *params,
            newton,
            chunks: n.div_ceil(rows_per_chunk),
            rows_per_chunk,
            layouts: [*q, k.copied().unwrap_or(*q), *v, *o],
        })
    }

    fn ws_layout(&self) -> WsLayout {
        let Dims { b, h, d, .. } = self.dims;
        let (bh, m, dv) = (b * h, self.m, self.dv);
        let mut at = 0;
        let mut take = |floats: usize| {
            let off = at;
            at += (floats * 4).div_ceil(256) * 256;
            off
        };
        let l = take(bh * m * d);
        let a = take(bh * m * m);
        let z = take(bh * m * m);
        let partial = take(bh * self.chunks * m * dv);
        let s = take(bh * m * dv);
        let w = take(bh * m * dv);
        let newton = take(self.newton.workspace_bytes() / 4);
        WsLayout {
            l,
            a,
            z,
            partial,
            s,
            w,
            newton,
            total: at,
        }
    }

    /// Scratch bytes: landmarks, A, Z, the pass-1 partials (at most [`MAX_CHUNKS`] chunks), the
    /// summed `P_kᵀV`, W, and the multi-launch Newton scratch when that path runs.
    pub fn workspace_bytes(&self) -> usize {
        self.ws_layout().total
    }

    fn check_layouts(&self, q: &Layout, k: &Layout, v: &Layout, o: &Layout) -> Result<()> {
        for (i, (arg, l)) in [("q", q), ("k", k), ("v", v), ("o", o)]
            .into_iter()
            .enumerate()
        {
            if *l != self.layouts[i] {
                return Err(Error::shape(
                    arg,
                    format!(
                        "{} {:?} is not the layout the plan was made for",
                        l.dims, l.strides
                    ),
                ));
            }
        }
        Ok(())
    }
}

/// Scratch bytes of [`attention`] for q `[B,H,N,D]`, v `[B,H,N,Dv]`, independent of strides,
/// dtype and device (assumes the multi-launch Newton path: an upper bound).
pub fn workspace_bytes(dims: Dims, dv: usize, params: &SoftParams) -> Result<usize> {
    let l = Layout::contiguous(dims);
    let lv = Layout::contiguous(dims.with_d(dv));
    let k = (!params.tied).then_some(&l);
    Ok(Plan::new(&l, k, &lv, &lv, params, 0)?.workspace_bytes())
}

/// The fused SOFT attention on raw device pointers. `k` is ignored when `params.tied` (pass q);
/// `given` is the fp32 `[B,H,m,D]` landmark tensor for [`Landmarks::Given`] (address, floats).
///
/// # Safety
/// Each pointer must address device memory of this runtime's context that holds its layout's
/// span in elements of `dtype` (q, k, v readable; o writable and not aliasing the inputs), `given`
/// its floats, and `workspace` `workspace_len ≥ Plan::workspace_bytes` bytes, 4-byte aligned;
/// all valid until the work queued on `stream` completes.
#[allow(clippy::too_many_arguments)]
pub unsafe fn attention_raw(
    rt: &Runtime,
    stream: &CudaStream,
    plan: &Plan,
    dtype: DType,
    q: RawTensor,
    k: RawTensor,
    v: RawTensor,
    o: RawTensor,
    given: Option<(u64, usize)>,
    workspace: u64,
    workspace_len: usize,
) -> Result<()> {
    let k = if plan.params.tied { q } else { k };
    plan.check_layouts(&q.layout, &k.layout, &v.layout, &o.layout)?;
    if !o.layout.is_non_overlapping() {
        return Err(Error::shape(
            "o",
            format!("output strides {:?} overlap", o.layout.strides),
        ));
    }
    for (arg, t) in [("q", &q), ("k", &k), ("v", &v), ("o", &o)] {
        check_ptr(dtype, arg, t)?;
    }
    let ws = plan.ws_layout();
    check_workspace(ws.total, workspace, workspace_len)?;
    let Dims { b, h, n, d } = plan.dims;
    let (bh, m, dv) = (b * h, plan.m, plan.dv);
    let at = |off: usize| workspace + off as u64;
    let l = match (plan.params.landmarks, given) {
        (Landmarks::Given { .. }, Some((ptr, len))) => {
            check_f32_buffer("landmarks", ptr, len, bh * m * d)?;
            ptr
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
        (_, None) => at(ws.l),
    };
    plan.newton.check_device(rt)?;
    let [q_sb, q_sh, q_sn] = strides(&q.layout);
    let [k_sb, k_sh, k_sn] = strides(&k.layout);
    let [v_sb, v_sh, v_sn] = strides(&v.layout);
    let [o_sb, o_sh, o_sn] = strides(&o.layout);
    let mut p = KernelParams {
        q: q.ptr,
        k: k.ptr,
        v: v.ptr,
        o: o.ptr,
        l,
        a: at(ws.a),
        z: at(ws.z),
        partial: at(ws.partial),
        s: at(ws.s),
        w: at(ws.w),
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
        b: b as i32,
        h: h as i32,
        n: n as i32,
        d: d as i32,
        dv: dv as i32,
        m: m as i32,
        chunks: plan.chunks as i32,
        rows_per_chunk: plan.rows_per_chunk as i32,
        scale: scale_of(d),
        strip: seam_strip(n, m) as i32,
        ..Default::default()
    };
    let dt = dtype.name();
    let gram = rt.function(FAMILY, "soft_gram_f32")?;
    let sum = rt.function(FAMILY, "soft_sum_f32")?;
    let wk = rt.function(FAMILY, "soft_w_f32")?;
    let (bh_y, lt) = (grid_yz(bh), m.div_ceil(LM) as u32);
    let tiles = (m.div_ceil(LM) * dv.div_ceil(ET)) as u32;
    // The two heavy passes: tensor cores when the dims and alignment allow, else CUDA cores. Both
    // write partials of the same layout (chunks of the workspace, landmark tiles) and the output;
    // the tensor-core pass 1 takes fewer, longer chunks (one wave), sized once Newton is queued.
    let (pass1, pass2) = if tensor_cores(plan, dtype, &p, rt.info().smem_per_block_optin) {
        let (s1, s2) = (tc::pass1_smem(d) as u32, tc::pass2_smem(d, m) as u32);
        let f1 = rt.function(FAMILY, &format!("soft_pass1_tc{d}_{dt}"))?;
        let f2 = rt.function(FAMILY, &format!("soft_pass2_tc{d}_{dt}"))?;
        rt.check_dynamic_smem(&f1, s1)?;
        rt.check_dynamic_smem(&f2, s2)?;
        // Pass 1 in one wave: the CTAs resident on an idle device, less Newton's (below).
        let slots1 = rt.resident_ctas(&f1, TC_THREADS, s1)?;
        // Pass 2 is persistent: one wave of CTAs shared among the (b,h) slices, each splitting
        // L and W into shared memory once per slice.
        let slots = rt.resident_ctas(&f2, TC_THREADS, s2)?;
        let per_bh = ctas_per_slice(slots, bh);
        let grid2 = (n.div_ceil(tc::pass2_rows(d)).min(per_bh) as u32, bh_y, 1);
        (
            (f1, Pass1Grid::OneWave(slots1), TC_THREADS, s1),
            (f2, grid2, TC_THREADS, s2),
        )
    } else {
        let f1 = rt.function(FAMILY, &format!("soft_pass1_{dt}"))?;
        let f2 = rt.function(FAMILY, &format!("soft_pass2_{dt}"))?;
        let grid2 = (grid_dim(n.div_ceil(ROWS)), bh_y, dv.div_ceil(ET) as u32);
        (
            (
                f1,
                Pass1Grid::Fixed((plan.chunks as u32, bh_y, tiles)),
                THREADS,
                0,
            ),
            (f2, grid2, THREADS, 0),
        )
    };
    // SAFETY: layouts match the validated plan; pointers, spans and the workspace (sized by
    // `ws_layout`) per the caller's contract; every grid covers its output; the tensor-core passes
    // run only where `tensor_cores` checked the dims, 16-byte rows and the shared memory asked for.
    unsafe {
        if !matches!(plan.params.landmarks, Landmarks::Given { .. }) {
            queue_landmarks(rt, stream, dtype, &plan.params.landmarks, m, &k, l)?;
        }
        launch(
            stream,
            &gram,
            (m.div_ceil(ROWS) as u32, bh_y, lt),
            THREADS,
            &p,
        )?;
        let newton_ctas = plan.newton.queue(rt, stream, p.a, p.z, at(ws.newton))?;
        let (f1, grid1, threads1, smem1) = &pass1;
        let grid = match *grid1 {
            Pass1Grid::Fixed(grid) => grid,
            // The tensor-core pass 1 does not read Z, so it starts beside the one-launch Newton
            // kernel (sm_90), in one wave of the slots that kernel leaves: fewer partials of PᵀV
            // to write and sum (one_wave_rows), and Newton off the critical path.
            Pass1Grid::OneWave(slots) => {
                let sms = rt.info().multiprocessors as usize;
                let free = slots.saturating_sub(newton_ctas).max(sms);
                let rows = one_wave_rows(plan.chunks, plan.rows_per_chunk, free, bh * lt as usize);
                p.rows_per_chunk = rows as i32;
                p.chunks = n.div_ceil(rows) as i32;
                (p.chunks as u32, bh_y, lt)
            }
        };
        if matches!(grid1, Pass1Grid::OneWave(_)) && rt.info().compute_capability.0 >= 9 {
            launch_smem_beside(stream, f1, grid, *threads1, *smem1, &p)?;
        } else {
            launch_smem(stream, f1, grid, *threads1, *smem1, &p)?;
        }
        let elems = (m * dv).div_ceil(THREADS as usize) as u32;
        launch(stream, &sum, (elems, bh_y, 1), THREADS, &p)?;
        launch(stream, &wk, (m as u32, bh_y, 1), THREADS, &p)?;
        let (f2, grid2, threads2, smem2) = &pass2;
        launch_smem(stream, f2, *grid2, *threads2, *smem2, &p)?;
    }
    Ok(())
}

/// 64-row tiles per pooling segment (N/m rows), rounded, at least 1: the strips of the
/// tensor-core passes' L2 seam order (kernels/soft_tc.cuh).
fn seam_strip(n: usize, m: usize) -> usize {
    let seg = m.max(1) * TC_ROWS;
    ((n + seg / 2) / seg).max(1)
}

/// Pass 1's grid: fixed by the plan (CUDA cores), or one wave of `slots` resident CTAs less those
/// the Newton kernel keeps (tensor cores), known once Newton is queued.
#[derive(Clone, Copy)]
enum Pass1Grid {
    Fixed((u32, u32, u32)),
    OneWave(usize),
}

/// Whether the tensor-core attention passes apply: f16/bf16, D == Dv ∈ [`TC_DIMS`], every row of
/// q, k, v, o 16-byte aligned (pointers and batch/head/seq strides multiples of 8 elements), and
/// both passes' shared memory within the device's per-block limit (pass 2 holds all m landmarks:
/// m = 256, D = 64 needs 168 KB).
fn tensor_cores(plan: &Plan, dtype: DType, p: &KernelParams, smem_optin: usize) -> bool {
    let d = plan.dims.d;
    let aligned = rows_16b_aligned(
        &[p.q, p.k, p.v, p.o],
        &[
            p.q_sb, p.q_sh, p.q_sn, p.k_sb, p.k_sh, p.k_sn, p.v_sb, p.v_sh, p.v_sn, p.o_sb, p.o_sh,
            p.o_sn,
        ],
    );
    let fits = tc::pass1_smem(d) <= smem_optin && tc::pass2_smem(d, plan.m) <= smem_optin;
    matches!(dtype, DType::F16 | DType::BF16)
        && d == plan.dv
        && TC_DIMS.contains(&d)
        && aligned
        && fits
}

/// SOFT attention `X = P·(Z·(P_kᵀ·V))` on device buffers (SPEC §1). `k` only when
/// `params.tied` is false; `given` only for [`Landmarks::Given`] (fp32 `[B,H,m,D]`). `workspace`
/// may be `None` (then it is allocated for this call).
#[allow(clippy::too_many_arguments)]
pub fn attention<T: Element>(
    rt: &Runtime,
    stream: &Arc<CudaStream>,
    params: &SoftParams,
    q: TensorRef<'_, T>,
    k: Option<TensorRef<'_, T>>,
    v: TensorRef<'_, T>,
    o: TensorMut<'_, T>,
    given: Option<&CudaSlice<f32>>,
    workspace: Option<&mut CudaSlice<u8>>,
) -> Result<()> {
    let plan = Plan::new(
        &q.layout,
        k.as_ref().map(|k| &k.layout),
        &v.layout,
        &o.layout,
        params,
        rt.info().smem_per_block_optin,
    )?;
    let keys = keys_of(params, &q, k.as_ref())?;
    let (gp, _gg) = match given {
        Some(g) => {
            let (p, guard) = ptr_of(g, stream);
            (Some((p, g.len())), Some(guard))
        }
        None => (None, None),
    };
    let ws = Some((workspace, plan.workspace_bytes()));
    with_raw(rt, stream, (q, keys, v, o), ws, |t, wp, wl| {
        // SAFETY: every buffer is a live allocation of this context whose length was checked
        // against its layout; `o` is borrowed mutably, so it cannot alias the inputs.
        unsafe { attention_raw(rt, stream, &plan, T::DTYPE, t.q, t.k, t.v, t.o, gp, wp, wl) }
    })
}

#[cfg(test)]
mod tests {
    use super::seam_strip;

    #[test]
    fn seam_strips_are_pooling_segments_in_tiles() {
        assert_eq!(seam_strip(65536, 64), 16); // 1024-row segments
        assert_eq!(seam_strip(65536, 49), 21); // 1337.5 rows → 20.9 tiles
        assert_eq!(seam_strip(4097, 7), 9);
        assert_eq!(seam_strip(1, 1), 1); // never 0: the kernels divide by it
        assert_eq!(seam_strip(1000, 256), 1);
    }
}
