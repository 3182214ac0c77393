//! cuBLAS-composed baselines (SPEC §5): the same math as `ops::*`, written the way a competent
//! engineer writes it without custom fusion — strided-batched cuBLAS GEMMs (fp32 compute, f16/bf16
//! tensor cores where the operands are 16-bit) plus the simple elementwise/reduction kernels of
//! `kernels/baseline.cu`, every intermediate materialized in a caller-sized workspace.
//!
//! * [`softmax::attention`] — `softmax(s·QKᵀ)V` (quadratic memory; the "why linear" reference).
//! * [`sima::forward`] — column ℓ1 norms, q̂ and k̂ materialized, `q̂·(k̂ᵀv)`.
//! * [`cosformer::forward`] — explicit `[relu(x)·sin, relu(x)·cos]` features, linear
//!   (non-causal) or quadratic masked (causal) products.
//! * [`soft::attention`], [`soft::newton_pinv`] — materialized fp32 `P`, `A`, and two batched
//!   GEMMs per Newton step.
//! * [`aft::forward`] — AFT-full / AFT-local through a dense fp32 `T×T` weight matrix.
//!
//! Inputs are contiguous `[B,H,N,D]` only (a strided layout is refused with a typed error naming
//! the argument). cuBLAS handles: a [`Blas`] wraps one handle bound to one stream; every call of
//! a baseline queues its kernels and GEMMs on that stream and nothing synchronizes. Create one per
//! stream and reuse it (handle creation costs far more than a call).

pub mod aft;
pub mod cosformer;
pub mod sima;
pub mod soft;
pub mod softmax;

use crate::error::{Error, Result};
use crate::ops::MAX_HEAD_DIM;
use crate::runtime::Runtime;
use crate::tensor::{DType, Dims, Layout};
use cudarc::cublas::sys::{cublasComputeType_t, cublasGemmAlgo_t, cublasOperation_t, cudaDataType};
use cudarc::cublas::CudaBlas;
use cudarc::driver::CudaStream;
use std::mem::{offset_of, size_of};
use std::sync::Arc;

/// Kernel family (file stem of kernels/baseline.cu).
const FAMILY: &str = "baseline";
/// Threads per CTA of every baseline kernel (`BASELINE_THREADS`).
const THREADS: u32 = 256;
/// Largest grid of the grid-stride kernels.
const MAX_BLOCKS: usize = 1 << 20;
/// Workspace regions start on this boundary (cuBLAS and vector loads like aligned operands).
const ALIGN: usize = 256;

/// A cuBLAS handle bound to one stream. Every baseline call made with it queues its kernels and
/// GEMMs on [`Blas::stream`], in call order. `Send + Sync` (cuBLAS handles may be used from any
/// thread); work from several threads through one `Blas` shares its one stream, so for
/// concurrency give each stream its own `Blas`.
pub struct Blas {
    blas: CudaBlas,
    stream: Arc<CudaStream>,
}

impl std::fmt::Debug for Blas {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Blas").finish_non_exhaustive()
    }
}

fn blas_error(reason: impl Into<String>) -> Error {
    Error::KernelLoad {
        family: "cublas".into(),
        reason: reason.into(),
    }
}

impl Blas {
    /// Creates a cuBLAS handle on `stream`. A missing or unusable libcublas is
    /// `Error::KernelLoad { family: "cublas", .. }`, never a panic.
    pub fn new(stream: &Arc<CudaStream>) -> Result<Self> {
        // SAFETY: only tries to dlopen libcublas by its candidate names.
        if !unsafe { cudarc::cublas::sys::is_culib_present() } {
            return Err(blas_error("libcublas not found"));
        }
        // cudarc panics when a symbol is missing from the library; keep that a typed error.
        let made = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            CudaBlas::new(stream.clone())
        }))
        .map_err(|_| blas_error("libcublas is unusable (a symbol is missing)"))?;
        let blas = made.map_err(|e| blas_error(format!("cublasCreate: {e}")))?;
        Ok(Blas {
            blas,
            stream: stream.clone(),
        })
    }

    /// The stream this handle queues on.
    pub fn stream(&self) -> &Arc<CudaStream> {
        &self.stream
    }

    /// Queues one strided-batched GEMM described in row-major terms.
    ///
    /// # Safety
    /// Every pointer must address device memory holding the matrices `g` describes (`batch`
    /// items at their strides), `c` must not alias `a` or `b`, and all must stay valid until the
    /// work on [`Blas::stream`] completes.
    pub(crate) unsafe fn gemm(&self, g: &Gemm) -> Result<()> {
        let (ab, c) = (data_type(g.ab_type), data_type(g.c_type));
        if !(g.c_type == g.ab_type || g.c_type == DType::F32) {
            return Err(Error::param(
                "gemm",
                g.c_type,
                format!("no cuBLAS product of {} operands into it", g.ab_type),
            ));
        }
        let int = |what: &'static str, v: usize| -> Result<i32> {
            i32::try_from(v).map_err(|_| Error::param(what, v, "exceeds cuBLAS's 2^31 - 1"))
        };
        let long = |what: &'static str, v: usize| -> Result<i64> {
            i64::try_from(v).map_err(|_| Error::param(what, v, "exceeds 2^63 - 1"))
        };
        let op = |t: bool| {
            if t {
                cublasOperation_t::CUBLAS_OP_T
            } else {
                cublasOperation_t::CUBLAS_OP_N
            }
        };
        let (alpha, beta) = (g.alpha, g.beta);
        self.stream.context().bind_to_thread()?;
        // Row-major C = op(A)·op(B) is column-major Cᵀ = op(B)ᵀ·op(A)ᵀ: swap the operands and the
        // extents M ↔ N; each buffer read column-major is its row-major transpose, so the
        // transpose flags carry over unchanged.
        // SAFETY: the caller's contract covers the buffers; alpha and beta are host floats
        // (CUBLAS_POINTER_MODE_HOST, the default) that outlive the call.
        unsafe {
            cudarc::cublas::result::gemm_strided_batched_ex(
                *self.blas.handle(),
                op(g.trans_b),
                op(g.trans_a),
                int("gemm n", g.n)?,
                int("gemm m", g.m)?,
                int("gemm k", g.k)?,
                (&alpha as *const f32).cast(),
                g.b.ptr as *const std::ffi::c_void,
                ab,
                int("gemm ldb", g.b.ld)?,
                long("gemm stride b", g.b.stride)?,
                g.a.ptr as *const std::ffi::c_void,
                ab,
                int("gemm lda", g.a.ld)?,
                long("gemm stride a", g.a.stride)?,
                (&beta as *const f32).cast(),
                g.c.ptr as *mut std::ffi::c_void,
                c,
                int("gemm ldc", g.c.ld)?,
                long("gemm stride c", g.c.stride)?,
                int("gemm batch", g.batch)?,
                if g.fast_tf32 {
                    cublasComputeType_t::CUBLAS_COMPUTE_32F_FAST_TF32
                } else {
                    cublasComputeType_t::CUBLAS_COMPUTE_32F
                },
                cublasGemmAlgo_t::CUBLAS_GEMM_DEFAULT,
            )
        }
        .map_err(|e| blas_error(format!("cublasGemmStridedBatchedEx: {e}")))
    }
}

fn data_type(d: DType) -> cudaDataType {
    match d {
        DType::F16 => cudaDataType::CUDA_R_16F,
        DType::BF16 => cudaDataType::CUDA_R_16BF,
        DType::F32 => cudaDataType::CUDA_R_32F,
    }
}

/// One operand of a [`Gemm`]: a row-major matrix, `ld` elements between rows, `stride` elements
/// between batch items.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Mat {
    pub ptr: u64,
    pub ld: usize,
    pub stride: usize,
}

impl Mat {
    /// `rows × cols` matrices packed one after another (`ld = cols`, `stride = rows·cols`).
    pub fn packed(ptr: u64, rows: usize, cols: usize) -> Self {
        Mat {
            ptr,
            ld: cols,
            stride: rows * cols,
        }
    }
}

/// `C_i = α·op(A_i)·op(B_i) + β·C_i` for `batch` items, row-major: `op(A)` is `m×k`, `op(B)`
/// `k×n`, `C` `m×n`; a transposed operand is stored as its transpose (`k×m`, `n×k`).
#[derive(Clone, Copy, Debug)]
pub(crate) struct Gemm {
    pub m: usize,
    pub n: usize,
    pub k: usize,
    pub a: Mat,
    pub trans_a: bool,
    pub b: Mat,
    pub trans_b: bool,
    pub c: Mat,
    /// Type of A and B (fp32 compute in every case).
    pub ab_type: DType,
    /// Type of C: `ab_type`, or f32 for 16-bit operands.
    pub c_type: DType,
    pub alpha: f32,
    pub beta: f32,
    pub batch: usize,
    /// fp32 operands multiplied as TF32 on tensor cores (CUBLAS_COMPUTE_32F_FAST_TF32): the
    /// operand precision of sofa's AFT window kernel for 16-bit storage.
    pub fast_tf32: bool,
}

/// Mirror of `BaselineParams` in kernels/baseline.cuh.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct BaselineParams {
    pub src: u64,
    pub src2: u64,
    pub dst: u64,
    pub dst2: u64,
    pub aux: u64,
    pub aux2: u64,
    pub count: i64,
    pub bh: i32,
    pub rows: i32,
    pub cols: i32,
    pub inner: i32,
    pub chunks: i32,
    pub rows_per_chunk: i32,
    pub causal: i32,
    pub relu: i32,
    pub angle_m: i32,
    pub window: i32,
    pub grid_h: i32,
    pub grid_w: i32,
    pub grid_r: i32,
    pub out_rows: i32,
    pub scale: f32,
    pub eps: f32,
    pub ridge: f32,
    pub alpha_scale: f32,
}

// SAFETY: plain old data with the C layout asserted below.
unsafe impl cudarc::driver::DeviceRepr for BaselineParams {}

const _: () = {
    assert!(size_of::<BaselineParams>() == 128); // BASELINE_PARAMS_SIZE
    assert!(offset_of!(BaselineParams, count) == 48);
    assert!(offset_of!(BaselineParams, bh) == 56);
    assert!(offset_of!(BaselineParams, causal) == 80);
    assert!(offset_of!(BaselineParams, out_rows) == 108);
    assert!(offset_of!(BaselineParams, scale) == 112);
    assert!(offset_of!(BaselineParams, alpha_scale) == 124);
};

/// An extent as a kernel `int`, or a typed error naming `arg`.
pub(crate) fn int(arg: &'static str, what: &str, v: usize) -> Result<i32> {
    i32::try_from(v).map_err(|_| Error::shape(arg, format!("{what} = {v} exceeds 2^31 - 1")))
}

/// Grid of a grid-stride kernel over `items` units of `per_block` each.
fn blocks(items: usize, per_block: usize) -> u32 {
    items.div_ceil(per_block).clamp(1, MAX_BLOCKS) as u32
}

/// Launch shapes of the baseline kernels.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Grid {
    /// One thread per element of `p.count`.
    Elements,
    /// One warp per row, `rows` rows in all.
    Warps(usize),
    /// One CTA per row, `rows` rows in all.
    Ctas(usize),
    /// An explicit grid.
    Dims(u32, u32, u32),
}

/// Queues kernel `baseline_<name>` with `p`.
///
/// # Safety
/// Every pointer in `p` must be valid for the accesses the kernel's comment describes for the
/// extents in `p`, until the work on `stream` completes.
pub(crate) unsafe fn run(
    rt: &Runtime,
    stream: &CudaStream,
    name: &str,
    grid: Grid,
    p: &BaselineParams,
) -> Result<()> {
    let f = rt.function(FAMILY, &format!("baseline_{name}"))?;
    let dims = match grid {
        Grid::Elements => (blocks(p.count.max(1) as usize, THREADS as usize), 1, 1),
        Grid::Warps(rows) => (blocks(rows, THREADS as usize / 32), 1, 1),
        Grid::Ctas(rows) => (blocks(rows, 1), 1, 1),
        Grid::Dims(x, y, z) => (x, y, z),
    };
    // SAFETY: forwarded from the caller.
    unsafe { crate::ops::launch(stream, &f, dims, THREADS, p) }
}

/// Row chunks of a column reduction over `rows` rows of `cols` columns in `bh` slices.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct ColPlan {
    pub bh: usize,
    pub rows: usize,
    pub cols: usize,
    pub chunks: usize,
    pub rows_per_chunk: usize,
}

impl ColPlan {
    /// CTAs aimed for (about two waves on a 132-SM GPU) and the most chunks per slice.
    const TARGET_CTAS: usize = 1024;
    const MAX_CHUNKS: usize = 64;
    const MIN_ROWS: usize = 64;

    pub fn new(bh: usize, rows: usize, cols: usize) -> Self {
        let tiles = cols.div_ceil(32).max(1);
        let want = Self::TARGET_CTAS.div_ceil(bh.max(1) * tiles);
        let most = Self::MAX_CHUNKS.min(rows.div_ceil(Self::MIN_ROWS)).max(1);
        let rows_per_chunk = rows.div_ceil(want.clamp(1, most)).max(1);
        ColPlan {
            bh,
            rows,
            cols,
            chunks: rows.div_ceil(rows_per_chunk).max(1),
            rows_per_chunk,
        }
    }

    /// fp32 partials this reduction needs (bytes).
    pub fn partial_bytes(&self) -> Option<usize> {
        f32_bytes(&[self.bh, self.chunks, self.cols])
    }

    /// Queues `colreduce_<op>_<dtype>` then `colfinal_<op>_f32`: `out [bh][cols]` fp32 from `src`
    /// (`[bh][rows][cols]` of `dtype`) through `partial`.
    ///
    /// # Safety
    /// `src` holds the input, `partial` [`ColPlan::partial_bytes`] and `out` `bh·cols` floats,
    /// valid until the work on `stream` completes.
    #[allow(clippy::too_many_arguments)]
    pub unsafe fn queue(
        &self,
        rt: &Runtime,
        stream: &CudaStream,
        op: &str,
        dtype: DType,
        src: u64,
        partial: u64,
        out: u64,
        eps: f32,
    ) -> Result<()> {
        let mut p = BaselineParams {
            src,
            dst: partial,
            bh: int("q", "B·H", self.bh)?,
            rows: int("q", "N", self.rows)?,
            cols: int("q", "columns", self.cols)?,
            chunks: self.chunks as i32,
            rows_per_chunk: self.rows_per_chunk as i32,
            eps,
            ..Default::default()
        };
        let grid = Grid::Dims(
            self.cols.div_ceil(32) as u32,
            self.chunks as u32,
            self.bh.min(65535) as u32,
        );
        let reduce = format!("colreduce_{op}_{}", dtype.name());
        // SAFETY: forwarded from the caller; the extents are the ones the buffers were sized by.
        unsafe { run(rt, stream, &reduce, grid, &p)? };
        p.src = partial;
        p.dst = out;
        p.count = (self.bh * self.cols) as i64;
        // SAFETY: as above.
        unsafe {
            run(
                rt,
                stream,
                &format!("colfinal_{op}_f32"),
                Grid::Elements,
                &p,
            )
        }
    }
}

/// Bytes of `Π dims` fp32 values (`None` on overflow).
pub(crate) fn f32_bytes(dims: &[usize]) -> Option<usize> {
    elem_bytes(DType::F32, dims)
}

/// Bytes of `Π dims` values of `dtype` (`None` on overflow).
pub(crate) fn elem_bytes(dtype: DType, dims: &[usize]) -> Option<usize> {
    dims.iter()
        .try_fold(dtype.size(), |acc, &d| acc.checked_mul(d))
}

/// Consecutive workspace regions, each starting on an [`ALIGN`]-byte boundary.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Regions<const K: usize> {
    pub offsets: [usize; K],
    pub total: usize,
}

impl<const K: usize> Regions<K> {
    /// Lays out regions of the given sizes (`None` = overflowed); `arg` names the tensor whose
    /// shape is to blame when the total does not fit in `usize`.
    pub fn new(arg: &'static str, sizes: [Option<usize>; K]) -> Result<Self> {
        let mut offsets = [0; K];
        let mut total = 0usize;
        for (off, size) in offsets.iter_mut().zip(sizes) {
            *off = total;
            total = size
                .and_then(|s| s.checked_next_multiple_of(ALIGN))
                .and_then(|s| total.checked_add(s))
                .ok_or_else(|| Error::shape(arg, "the baseline's workspace size overflows"))?;
        }
        Ok(Regions { offsets, total })
    }

    /// Device address of region `i` in a workspace at `base`.
    pub fn at(&self, base: u64, i: usize) -> u64 {
        base.wrapping_add(self.offsets[i] as u64)
    }
}

/// A baseline takes contiguous `[B,H,N,D]` tensors only; checks extents (≥ 1, D ≤ 256) too.
pub(crate) fn check_contiguous(arg: &'static str, l: &Layout) -> Result<()> {
    let want = Layout::contiguous(l.dims);
    if l.strides != want.strides {
        return Err(Error::shape(
            arg,
            format!(
                "the cuBLAS baselines take contiguous [B,H,N,D] only; {} has strides {:?} \
                 (contiguous: {:?})",
                l.dims, l.strides, want.strides
            ),
        ));
    }
    let span = l.span().unwrap_or(usize::MAX);
    l.validate(arg, span, MAX_HEAD_DIM)
}

/// `t` must have exactly `want` extents (and be contiguous).
pub(crate) fn check_dims(arg: &'static str, t: &Layout, want: Dims, of: &str) -> Result<()> {
    if t.dims != want {
        return Err(Error::shape(
            arg,
            format!("{} does not match {of} (expected {want})", t.dims),
        ));
    }
    check_contiguous(arg, t)
}

/// B·H as a cuBLAS batch count and kernel `int`.
pub(crate) fn heads(arg: &'static str, d: Dims) -> Result<usize> {
    let bh =
        d.b.checked_mul(d.h)
            .ok_or_else(|| Error::shape(arg, format!("B·H of {d} overflows")))?;
    int(arg, "B·H", bh)?;
    Ok(bh)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn regions_are_aligned_and_checked() {
        let r = Regions::new("q", [Some(10), Some(300), Some(0), Some(1)]).unwrap();
        assert_eq!(r.offsets, [0, 256, 768, 768]);
        assert_eq!(r.total, 1024);
        assert!(Regions::new("q", [Some(usize::MAX - 3)]).is_err());
        assert!(Regions::new("q", [None]).is_err());
    }

    #[test]
    fn column_plans_cover_every_row() {
        for (bh, rows, cols) in [(1, 1, 1), (16, 1 << 20, 64), (2, 1000, 80), (70000, 8, 8)] {
            let p = ColPlan::new(bh, rows, cols);
            assert!(p.chunks >= 1 && p.chunks <= ColPlan::MAX_CHUNKS);
            assert!(p.chunks * p.rows_per_chunk >= rows);
            assert!((p.chunks - 1) * p.rows_per_chunk < rows);
        }
    }
}
