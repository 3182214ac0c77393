//! SimA — ℓ1-normalized attention (SPEC §4): `O = q̂ k̂ᵀ v` with column-ℓ1-normalized q and k.
//!
//! N ≥ D: fused linear order, three launches (reduce k^T v and the column norms per row chunk;
//! finalize G in a fixed order; map O = q·G). N < D: the quadratic order (q̂ k̂ᵀ) v, two launches.
//! f16/bf16 with D == Dv ∈ {32, 48, 64, 80, 96, 128} and 16-byte-aligned rows run both products
//! on tensor cores; everything else (f32, other head dims, odd strides) on the CUDA-core kernels.

use super::{
    check_raw, check_workspace, ctas_per_slice, launch, launch_smem, one_wave_rows, with_raw,
    RawTensor, TensorMut, TensorRef, MAX_HEAD_DIM, MAX_LEN,
};
use crate::error::{Error, Result};
use crate::runtime::Runtime;
use crate::tensor::{DType, Dims, Element, Layout};
use cudarc::driver::{CudaSlice, CudaStream};
use std::mem::{offset_of, size_of};

const FAMILY: &str = "sima";
const THREADS: u32 = 256;
const ROW_TILE: usize = 32; // SIMA_ROW_TILE
const MAP_ROWS: usize = 64; // SIMA_MAP_ROWS
const MAX_CHUNKS: usize = 256;
/// Reduce-pass CTAs aimed for: one full wave on a 128+ SM GPU at six CTAs per SM.
const TARGET_CTAS: usize = 768;
const MAX_GRID_YZ: usize = 65535;
/// Head dims with a tensor-core path (f16/bf16, D == Dv, 16-byte-aligned rows).
const TC_DIMS: [usize; 6] = [32, 48, 64, 80, 96, 128];
const TC_ROWS: usize = 32; // SIMA_TC_ROWS

/// Dynamic shared memory of the tensor-core passes (`sima_tc_*_smem` in sima_tc.cuh).
fn tc_reduce_smem(d: usize) -> u32 {
    (6 * TC_ROWS * (d + 8) * 2) as u32
}
fn tc_map_smem(d: usize) -> u32 {
    ((d + 2 * MAP_ROWS) * (d + 8) * 2) as u32
}
const TC_MAP_THREADS: u32 = 128; // SIMA_TC_MAP_WARPS · 32

/// Mirror of `SimaParams` in kernels/sima.cuh.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct SimaParams {
    pub q: u64,
    pub k: u64,
    pub v: u64,
    pub o: u64,
    pub partial: u64,
    pub g: u64,
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
    pub d: i32,
    pub dv: i32,
    pub chunks: i32,
    pub rows_per_chunk: i32,
    pub vec: i32,
}

// SAFETY: plain old data with the C layout asserted below.
unsafe impl cudarc::driver::DeviceRepr for SimaParams {}

const _: () = {
    assert!(size_of::<SimaParams>() == 176); // SIMA_PARAMS_SIZE
    assert!(offset_of!(SimaParams, partial) == 32);
    assert!(offset_of!(SimaParams, q_sb) == 48);
    assert!(offset_of!(SimaParams, o_sn) == 136);
    assert!(offset_of!(SimaParams, b) == 144);
    assert!(offset_of!(SimaParams, vec) == 172);
};

/// Which evaluation order a shape uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Order {
    /// `q̂ (k̂ᵀ v)`, for N ≥ D.
    Linear {
        tile: usize,
        chunks: usize,
        rows_per_chunk: usize,
    },
    /// `(q̂ k̂ᵀ) v`, for N < D.
    Quadratic,
}

/// A validated launch plan for one shape.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Plan {
    pub dims: Dims,
    pub dv: usize,
    pub order: Order,
}

impl Plan {
    /// Checks that q, k `[B,H,N,D]`, v and o `[B,H,N,Dv]` agree and are in range.
    pub fn new(q: &Layout, k: &Layout, v: &Layout, o: &Layout) -> Result<Self> {
        let dims = q.dims;
        let dv = v.dims.d;
        for (arg, l, want) in [
            ("k", k, dims),
            ("v", v, dims.with_d(dv)),
            ("o", o, dims.with_d(dv)),
        ] {
            if l.dims != want {
                return Err(Error::shape(
                    arg,
                    format!("{} does not match q {} (expected {want})", l.dims, dims),
                ));
            }
        }
        for (arg, l) in [("q", q), ("k", k), ("v", v), ("o", o)] {
            let span = l.span().unwrap_or(usize::MAX);
            l.validate(arg, span, MAX_HEAD_DIM)?;
        }
        let Dims { b, h, n, .. } = dims;
        super::check_slices("q", b, h)?;
        // Chunk ends (row + rows per chunk) and the 32-row steps stay below 2^31.
        if n > MAX_LEN {
            return Err(Error::shape("q", format!("N = {n} exceeds {MAX_LEN}")));
        }
        Ok(Plan {
            dims,
            dv,
            order: Self::order(dims, dv),
        })
    }

    fn order(dims: Dims, dv: usize) -> Order {
        let Dims { b, h, n, d } = dims;
        if n < d {
            return Order::Quadratic;
        }
        let tile = [32, 48, 64]
            .into_iter()
            .find(|&t| d.max(dv) <= t)
            .unwrap_or(64);
        let tiles = d.div_ceil(tile) * dv.div_ceil(tile);
        let want = TARGET_CTAS.div_ceil(b * h * tiles);
        let chunks = want.clamp(1, MAX_CHUNKS.min(n.div_ceil(4 * ROW_TILE)).max(1));
        let rows_per_chunk = n.div_ceil(chunks).div_ceil(ROW_TILE) * ROW_TILE;
        Order::Linear {
            tile,
            chunks: n.div_ceil(rows_per_chunk),
            rows_per_chunk,
        }
    }

    /// Scratch bytes this plan needs (fp32 partials and G, or the column norms).
    pub fn workspace_bytes(&self) -> usize {
        let Dims { b, h, d, .. } = self.dims;
        let bh = b * h;
        let floats = match self.order {
            Order::Linear { chunks, .. } => bh * chunks * (d * self.dv + 2 * d) + bh * d * self.dv,
            Order::Quadratic => bh * 2 * d,
        };
        floats * 4
    }
}

/// Scratch bytes for q, k `[B,H,N,D]` and v `[B,H,N,Dv]` (independent of strides and dtype).
pub fn workspace_bytes(dims: Dims, dv: usize) -> Result<usize> {
    let l = Layout::contiguous(dims);
    let lv = Layout::contiguous(dims.with_d(dv));
    Ok(Plan::new(&l, &l, &lv, &lv)?.workspace_bytes())
}

fn grid_dim(x: usize) -> u32 {
    x.min(i32::MAX as usize) as u32
}

/// Launches SimA on raw device pointers.
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
    dtype: DType,
    q: RawTensor,
    k: RawTensor,
    v: RawTensor,
    o: RawTensor,
    workspace: u64,
    workspace_len: usize,
) -> Result<()> {
    let plan = Plan::new(&q.layout, &k.layout, &v.layout, &o.layout)?;
    check_raw(dtype, [("q", &q), ("k", &k), ("v", &v), ("o", &o)])?;
    check_workspace(plan.workspace_bytes(), workspace, workspace_len)?;

    let Dims { b, h, n, d } = plan.dims;
    let dv = plan.dv;
    let st = |l: &Layout| {
        [
            l.strides.batch as i64,
            l.strides.head as i64,
            l.strides.seq as i64,
        ]
    };
    let [q_sb, q_sh, q_sn] = st(&q.layout);
    let [k_sb, k_sh, k_sn] = st(&k.layout);
    let [v_sb, v_sh, v_sn] = st(&v.layout);
    let [o_sb, o_sh, o_sn] = st(&o.layout);
    let aligned = [q.ptr, k.ptr, v.ptr].iter().all(|p| p % 16 == 0);
    let strides8 = [q_sb, q_sh, q_sn, k_sb, k_sh, k_sn, v_sb, v_sh, v_sn]
        .iter()
        .all(|s| s % 8 == 0);
    let vec = aligned && strides8 && d % 8 == 0 && dv % 8 == 0;
    let mut p = SimaParams {
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
        b: b as i32,
        h: h as i32,
        n: n as i32,
        d: d as i32,
        dv: dv as i32,
        vec: vec as i32,
        ..Default::default()
    };
    let bh = b * h;
    let dt = dtype.name();
    match plan.order {
        Order::Linear {
            tile,
            chunks,
            rows_per_chunk,
        } => {
            let partial_bytes = bh * chunks * (d * dv + 2 * d) * 4;
            p.partial = workspace;
            p.g = workspace + partial_bytes as u64;
            p.chunks = chunks as i32;
            p.rows_per_chunk = rows_per_chunk as i32;
            let o_vec = o.ptr % 16 == 0 && [o_sb, o_sh, o_sn].iter().all(|s| s % 8 == 0);
            let tensor_cores =
                dtype != DType::F32 && vec && o_vec && d == dv && TC_DIMS.contains(&d);
            let finalize = rt.function(FAMILY, "sima_finalize_f32")?;
            if tensor_cores {
                let reduce = rt.function(FAMILY, &format!("sima_reduce_tc{d}_{dt}"))?;
                let map = rt.function(FAMILY, &format!("sima_map_tc{d}_{dt}"))?;
                // Persistent map CTAs: one wave, shared among the (b,h) slices.
                let (rsmem, msmem) = (tc_reduce_smem(d), tc_map_smem(d));
                rt.check_dynamic_smem(&reduce, rsmem)?;
                rt.check_dynamic_smem(&map, msmem)?;
                // The reduce in one wave: fewer partials to write and sum (one_wave_rows).
                let rthreads = (d / 16 * 32) as u32;
                let rslots = rt.resident_ctas(&reduce, rthreads, rsmem)?;
                let rows = one_wave_rows(chunks, rows_per_chunk, rslots, bh);
                p.rows_per_chunk = rows as i32;
                p.chunks = n.div_ceil(rows) as i32;
                let slots = rt.resident_ctas(&map, TC_MAP_THREADS, msmem)?;
                let per_bh = ctas_per_slice(slots, bh);
                let map_grid = (
                    n.div_ceil(MAP_ROWS).min(per_bh) as u32,
                    bh.min(MAX_GRID_YZ) as u32,
                    1,
                );
                // SAFETY: as below; the tensor-core kernels additionally need 16-byte-aligned
                // rows of q, k, v and o (checked: `vec`, `o_vec`) and d == dv (checked).
                unsafe {
                    let reduce_grid = (grid_dim(bh), p.chunks as u32, 1);
                    launch_smem(stream, &reduce, reduce_grid, rthreads, rsmem, &p)?;
                    launch(stream, &finalize, (grid_dim(bh), d as u32, 1), 128, &p)?;
                    launch_smem(stream, &map, map_grid, TC_MAP_THREADS, msmem, &p)?;
                }
                return Ok(());
            }
            let tiles = d.div_ceil(tile) * dv.div_ceil(tile);
            let reduce = rt.function(FAMILY, &format!("sima_reduce_t{tile}_{dt}"))?;
            let map = rt.function(FAMILY, &format!("sima_map_t{tile}_{dt}"))?;
            // SAFETY: pointers and spans validated above and by the caller's contract; the
            // workspace holds partials and G as sized by `workspace_bytes`.
            unsafe {
                launch(
                    stream,
                    &reduce,
                    (grid_dim(bh), chunks as u32, tiles as u32),
                    THREADS,
                    &p,
                )?;
                launch(stream, &finalize, (grid_dim(bh), d as u32, 1), 128, &p)?;
                let map_grid = (
                    grid_dim(n.div_ceil(MAP_ROWS)),
                    bh.min(MAX_GRID_YZ) as u32,
                    dv.div_ceil(tile) as u32,
                );
                launch(stream, &map, map_grid, THREADS, &p)?;
            }
        }
        Order::Quadratic => {
            p.g = workspace;
            let norms = rt.function(FAMILY, &format!("sima_colnorms_{dt}"))?;
            let quad = rt.function(FAMILY, &format!("sima_quadratic_{dt}"))?;
            // SAFETY: as above; N < D ≤ 256 fits the kernel's shared rows.
            unsafe {
                launch(stream, &norms, (grid_dim(bh), 1, 1), THREADS, &p)?;
                launch(
                    stream,
                    &quad,
                    (n as u32, bh.min(MAX_GRID_YZ) as u32, 1),
                    THREADS,
                    &p,
                )?;
            }
        }
    }
    Ok(())
}

/// SimA on device buffers. `workspace` may be `None` (then it is allocated for this call).
pub fn forward<T: Element>(
    rt: &Runtime,
    stream: &std::sync::Arc<CudaStream>,
    q: TensorRef<'_, T>,
    k: TensorRef<'_, T>,
    v: TensorRef<'_, T>,
    o: TensorMut<'_, T>,
    workspace: Option<&mut CudaSlice<u8>>,
) -> Result<()> {
    let plan = Plan::new(&q.layout, &k.layout, &v.layout, &o.layout)?;
    let ws = Some((workspace, plan.workspace_bytes()));
    with_raw(rt, stream, (q, k, v, o), ws, |t, wp, wl| {
        // SAFETY: every buffer is a live allocation of this context whose length was checked
        // against its layout; `o` is borrowed mutably, so it cannot alias the inputs.
        unsafe { forward_raw(rt, stream, T::DTYPE, t.q, t.k, t.v, t.o, wp, wl) }
    })
}
