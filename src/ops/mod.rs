//! Operators on the GPU. Each module: parameters and defaults, `validate`/`plan` (pure, no GPU),
//! a raw launch over device pointers on a caller's stream, and a safe wrapper over `CudaSlice`.

pub mod aft;
pub mod cosformer;
pub mod sima;
pub mod soft;

use crate::error::{Error, Result};
use crate::runtime::Runtime;
use crate::tensor::{DType, Element, Layout};
use cudarc::driver::{
    CudaFunction, CudaSlice, CudaStream, DevicePtr, DevicePtrMut, LaunchConfig, PushKernelArg,
};
use std::sync::Arc;

/// Largest head dim any operator accepts (SPEC §0).
pub const MAX_HEAD_DIM: usize = 256;

/// Largest sequence length (N, S, and cosFormer's M) of SOFT, cosFormer and SimA: kernels index
/// rows with 32-bit ints, and a chunk's end (its start + rows per chunk) must stay below 2^31.
pub const MAX_LEN: usize = (i32::MAX / 2) as usize;

/// The most (b, h) slices (B·H, or a Newton batch) one call takes. Kernels walk slices in `int`
/// grid-stride loops (`bh += gridDim`, gridDim ≤ B·H), and the sum must stay below 2^31.
pub const MAX_SLICES: usize = 1 << 30;

/// B·H of `arg`'s dims, or a typed error when it exceeds [`MAX_SLICES`].
pub(crate) fn check_slices(arg: &'static str, b: usize, h: usize) -> Result<usize> {
    b.checked_mul(h)
        .filter(|&bh| bh <= MAX_SLICES)
        .ok_or_else(|| Error::shape(arg, format!("B·H = {b}·{h} exceeds 2^30")))
}

/// A device tensor argument: a buffer and the layout of `[B, H, N, D]` inside it.
pub struct TensorRef<'a, T> {
    pub data: &'a CudaSlice<T>,
    pub layout: Layout,
}

/// A device tensor the operator writes.
pub struct TensorMut<'a, T> {
    pub data: &'a mut CudaSlice<T>,
    pub layout: Layout,
}

/// A tensor given as a raw device address (what engines hand over) plus its layout.
#[derive(Clone, Copy, Debug)]
pub struct RawTensor {
    pub ptr: u64,
    pub layout: Layout,
}

impl<T: Element> TensorRef<'_, T> {
    pub(crate) fn validate(&self, arg: &'static str) -> Result<()> {
        self.layout.validate(arg, self.data.len(), MAX_HEAD_DIM)
    }
}

impl<T: Element> TensorMut<'_, T> {
    pub(crate) fn validate(&self, arg: &'static str) -> Result<()> {
        self.layout.validate(arg, self.data.len(), MAX_HEAD_DIM)?;
        if !self.layout.is_non_overlapping() {
            return Err(Error::shape(
                arg,
                format!("output strides {:?} overlap", self.layout.strides),
            ));
        }
        Ok(())
    }
}

/// Queues the zeroing of `count` u32 words at device address `ptr` on `stream`: the flags and
/// ticket counter a single-pass kernel expects zero when it starts (so a captured graph replays
/// them too).
///
/// # Safety
/// `ptr` addresses `count` writable u32 words of `stream`'s context, valid until the memset runs.
pub(crate) unsafe fn zero_u32(stream: &CudaStream, ptr: u64, count: usize) -> Result<()> {
    stream.context().bind_to_thread()?;
    // SAFETY: forwarded contract.
    unsafe { cudarc::driver::sys::cuMemsetD32Async(ptr, 0, count, stream.cu_stream()).result()? };
    Ok(())
}

/// Launches `f` with one by-value parameter struct.
///
/// # Safety
/// `params` must match the kernel's parameter struct and every pointer in it must be valid for
/// the accesses the kernel makes (established by the operator's validation).
pub(crate) unsafe fn launch<P: cudarc::driver::DeviceRepr>(
    stream: &CudaStream,
    f: &CudaFunction,
    grid: (u32, u32, u32),
    block: u32,
    params: &P,
) -> Result<()> {
    // SAFETY: forwarded from the caller.
    unsafe { launch_smem(stream, f, grid, block, 0, params) }
}

/// [`launch`] with `smem` bytes of dynamic shared memory (see `Runtime::check_dynamic_smem`).
///
/// # Safety
/// As for [`launch`].
pub(crate) unsafe fn launch_smem<P: cudarc::driver::DeviceRepr>(
    stream: &CudaStream,
    f: &CudaFunction,
    grid: (u32, u32, u32),
    block: u32,
    smem: u32,
    params: &P,
) -> Result<()> {
    let cfg = LaunchConfig {
        grid_dim: grid,
        block_dim: (block, 1, 1),
        shared_mem_bytes: smem,
    };
    let mut builder = stream.launch_builder(f);
    builder.arg(params);
    builder.launch(cfg)?;
    Ok(())
}

/// [`launch_smem`] for a kernel with a fallback path (a cluster launch the device may not have
/// room for): `Ok(false)` when the driver refused the launch, so nothing was queued and the
/// caller runs its fallback; the error when the kernel itself failed (a fault sofa-sim reports
/// at launch, or a sticky device error), which a fallback must not hide.
///
/// # Safety
/// As for [`launch`].
pub(crate) unsafe fn try_launch_smem<P: cudarc::driver::DeviceRepr>(
    stream: &CudaStream,
    f: &CudaFunction,
    grid: (u32, u32, u32),
    block: u32,
    smem: u32,
    params: &P,
) -> Result<bool> {
    // SAFETY: forwarded from the caller.
    match unsafe { launch_smem(stream, f, grid, block, smem, params) } {
        Ok(()) => Ok(true),
        Err(Error::Driver(e)) if kernel_failed(e.0) => Err(Error::Driver(e)),
        Err(_) => Ok(false),
    }
}

/// Whether a launch's status says the kernel itself failed (a fault sofa-sim reports at launch,
/// or a sticky device error) rather than that the driver refused the launch.
fn kernel_failed(status: cudarc::driver::sys::CUresult) -> bool {
    use cudarc::driver::sys::CUresult as R;
    matches!(
        status,
        R::CUDA_ERROR_LAUNCH_FAILED
            | R::CUDA_ERROR_ILLEGAL_ADDRESS
            | R::CUDA_ERROR_ILLEGAL_INSTRUCTION
            | R::CUDA_ERROR_MISALIGNED_ADDRESS
            | R::CUDA_ERROR_INVALID_ADDRESS_SPACE
            | R::CUDA_ERROR_INVALID_PC
            | R::CUDA_ERROR_HARDWARE_STACK_ERROR
            | R::CUDA_ERROR_ASSERT
            | R::CUDA_ERROR_LAUNCH_TIMEOUT
    )
}

/// [`launch_smem`] with programmatic stream serialization (sm_90): the kernel may start while the
/// previous kernel on `stream` still runs, once every CTA of that one has called
/// `pdl_start_dependents` (kernels/common.cuh). The kernel must call `pdl_wait_previous` before it
/// exits, so that it completes after the previous kernel and later launches see both. Where the
/// driver refuses the attribute the kernel is launched plainly (the same results, serialized); a
/// kernel that failed is an error, as in [`try_launch_smem`].
///
/// # Safety
/// As for [`launch`]; the kernel takes `params` as its only argument.
pub(crate) unsafe fn launch_smem_beside<P: cudarc::driver::DeviceRepr>(
    stream: &CudaStream,
    f: &CudaFunction,
    grid: (u32, u32, u32),
    block: u32,
    smem: u32,
    params: &P,
) -> Result<()> {
    use cudarc::driver::sys;
    stream.context().bind_to_thread()?;
    // SAFETY: a zeroed attribute is valid plain data; the union member set is the one its id names.
    let mut attr: sys::CUlaunchAttribute = unsafe { std::mem::zeroed() };
    attr.id = sys::CUlaunchAttributeID::CU_LAUNCH_ATTRIBUTE_PROGRAMMATIC_STREAM_SERIALIZATION;
    attr.value.programmaticStreamSerializationAllowed = 1;
    let cfg = sys::CUlaunchConfig {
        gridDimX: grid.0,
        gridDimY: grid.1,
        gridDimZ: grid.2,
        blockDimX: block,
        blockDimY: 1,
        blockDimZ: 1,
        sharedMemBytes: smem,
        hStream: stream.cu_stream(),
        attrs: &mut attr,
        numAttrs: 1,
    };
    let mut args = [params as *const P as *mut std::ffi::c_void];
    // SAFETY: the caller's contract; `cfg`, `attr` and `args` outlive the call, which copies them.
    let launched = unsafe {
        sys::cuLaunchKernelEx(
            &cfg,
            f.cu_function(),
            args.as_mut_ptr(),
            std::ptr::null_mut(),
        )
    };
    match launched {
        sys::CUresult::CUDA_SUCCESS => Ok(()),
        status if kernel_failed(status) => Err(cudarc::driver::DriverError(status).into()),
        // SAFETY: forwarded from the caller.
        _ => unsafe { launch_smem(stream, f, grid, block, smem, params) },
    }
}

/// Null and dtype-alignment checks of a raw pointer.
pub(crate) fn check_ptr(dtype: DType, arg: &'static str, t: &RawTensor) -> Result<()> {
    if t.ptr == 0 {
        return Err(Error::param(arg, "null", "device pointer is null"));
    }
    if t.ptr % dtype.size() as u64 != 0 {
        return Err(Error::param(
            arg,
            format!("{:#x}", t.ptr),
            format!("not aligned to {dtype}"),
        ));
    }
    Ok(())
}

/// [`check_ptr`] for q, k, v, o (in that order), and the output must not overlap itself.
pub(crate) fn check_raw(dtype: DType, ts: [(&'static str, &RawTensor); 4]) -> Result<()> {
    let o = ts[3].1;
    if !o.layout.is_non_overlapping() {
        return Err(Error::shape(
            "o",
            format!("output strides {:?} overlap", o.layout.strides),
        ));
    }
    ts.into_iter()
        .try_for_each(|(arg, t)| check_ptr(dtype, arg, t))
}

/// A raw fp32 buffer of `len` floats must hold `need` and be non-null and 4-byte aligned.
pub(crate) fn check_f32_buffer(arg: &'static str, ptr: u64, len: usize, need: usize) -> Result<()> {
    if len < need {
        return Err(Error::BufferTooSmall {
            arg,
            needed: need,
            len,
        });
    }
    if ptr == 0 || ptr % 4 != 0 {
        return Err(Error::param(
            arg,
            format!("{ptr:#x}"),
            "must be non-null and 4-byte aligned",
        ));
    }
    Ok(())
}

/// CTAs per (b,h) slice of a persistent pass (CTAs striding over a slice's row tiles) that keep
/// its grid of `slices` slices within one wave of `slots` resident CTAs: rounded down, at least 1.
/// Rounded up, `slots % slices` CTAs waited for a second wave and then ran a whole share of tiles
/// alone, adding up to a whole CTA's run time to the pass (at 3 CTAs per SM on an H100 and 16
/// slices: 400 CTAs for 396 slots).
pub(crate) fn ctas_per_slice(slots: usize, slices: usize) -> usize {
    (slots / slices.max(1)).max(1)
}

/// Rows per split of a split-over-rows reduction (partials summed in a fixed order after it) for
/// one wave of its CTAs: as many splits per slice as `slots` resident CTAs hold for `slices`
/// slices, where the plan sized the workspace for `plan_splits` splits of `plan_rows` rows. A
/// multiple of `plan_rows`, so never more splits than the workspace holds; fewer partials to
/// write and sum, at the same critical path as several waves of the plan's splits.
pub(crate) fn one_wave_rows(
    plan_splits: usize,
    plan_rows: usize,
    slots: usize,
    slices: usize,
) -> usize {
    plan_splits.div_ceil(ctas_per_slice(slots, slices)) * plan_rows
}

/// Whether 16-bit rows at these device addresses and element strides start on 16-byte boundaries
/// (what the tensor-core kernels' cp.async / 16-byte stores need).
pub(crate) fn rows_16b_aligned(ptrs: &[u64], strides: &[i64]) -> bool {
    ptrs.iter().all(|a| a % 16 == 0) && strides.iter().all(|s| s % 8 == 0)
}

/// A raw workspace must hold `need` bytes and be non-null and 4-byte aligned when used.
pub(crate) fn check_workspace(need: usize, workspace: u64, len: usize) -> Result<()> {
    if len < need {
        return Err(Error::BufferTooSmall {
            arg: "workspace",
            needed: need,
            len,
        });
    }
    if need > 0 && (workspace == 0 || workspace % 4 != 0) {
        return Err(Error::param(
            "workspace",
            format!("{workspace:#x}"),
            "must be non-null and 4-byte aligned",
        ));
    }
    Ok(())
}

/// The q, k, v → o arguments of a safe call in raw form.
pub(crate) struct RawQkvo {
    pub q: RawTensor,
    pub k: RawTensor,
    pub v: RawTensor,
    pub o: RawTensor,
}

/// Runs `f` on the raw form of a safe call: each tensor checked against its buffer (`o` also for
/// overlap), the workspace taken from the caller or allocated (`workspace` = the caller's buffer
/// and the bytes needed; `None` for ops without one), and device addresses read for `stream`.
/// cudarc's stream-ordering events are recorded when `f` returns.
pub(crate) fn with_raw<T: Element, R>(
    rt: &Runtime,
    stream: &Arc<CudaStream>,
    (q, k, v, o): (
        TensorRef<'_, T>,
        TensorRef<'_, T>,
        TensorRef<'_, T>,
        TensorMut<'_, T>,
    ),
    workspace: Option<(Option<&mut CudaSlice<u8>>, usize)>,
    f: impl FnOnce(RawQkvo, u64, usize) -> Result<R>,
) -> Result<R> {
    q.validate("q")?;
    k.validate("k")?;
    v.validate("v")?;
    o.validate("o")?;
    let mut owned = None;
    let ws = match workspace {
        Some((given, bytes)) => Some(given_or_alloc(rt, stream, given, bytes, &mut owned)?),
        None => None,
    };
    let ws_len = ws.as_ref().map_or(0, |w| w.len());
    let (wp, _gw) = match ws {
        Some(ws) => {
            let (p, g) = ptr_of_mut(ws, stream);
            (p, Some(g))
        }
        None => (0, None),
    };
    let (qp, _gq) = ptr_of(q.data, stream);
    let (kp, _gk) = ptr_of(k.data, stream);
    let (vp, _gv) = ptr_of(v.data, stream);
    let (op, _go) = ptr_of_mut(o.data, stream);
    let raw = |ptr, layout| RawTensor { ptr, layout };
    let t = RawQkvo {
        q: raw(qp, q.layout),
        k: raw(kp, k.layout),
        v: raw(vp, v.layout),
        o: raw(op, o.layout),
    };
    f(t, wp, ws_len)
}

/// The caller's workspace, or `bytes` freshly allocated on `stream` into `owned` (which keeps it
/// alive for the call).
pub(crate) fn given_or_alloc<'a>(
    rt: &Runtime,
    stream: &Arc<CudaStream>,
    given: Option<&'a mut CudaSlice<u8>>,
    bytes: usize,
    owned: &'a mut Option<CudaSlice<u8>>,
) -> Result<&'a mut CudaSlice<u8>> {
    match given {
        Some(ws) => Ok(ws),
        None => Ok(owned.insert(rt.alloc::<u8>(stream, bytes)?)),
    }
}

/// Raw addresses and lengths of `a`, `z` and the workspace (given, or allocated for the call) for
/// a matrix-to-matrix op such as `newton_pinv` on `stream`: `f(a, a_len, z, z_len, ws, ws_len)`.
pub(crate) fn with_matrices<R>(
    rt: &Runtime,
    stream: &Arc<CudaStream>,
    a: &CudaSlice<f32>,
    z: &mut CudaSlice<f32>,
    workspace: Option<&mut CudaSlice<u8>>,
    bytes: usize,
    f: impl FnOnce(u64, usize, u64, usize, u64, usize) -> Result<R>,
) -> Result<R> {
    let mut owned = None;
    let ws = given_or_alloc(rt, stream, workspace, bytes, &mut owned)?;
    let ws_len = ws.len();
    let (wp, _gw) = ptr_of_mut(ws, stream);
    let (ap, _ga) = ptr_of(a, stream);
    let z_len = z.len();
    let (zp, _gz) = ptr_of_mut(z, stream);
    f(ap, a.len(), zp, z_len, wp, ws_len)
}

/// Reads the raw address of a slice for a kernel on `stream` (recording cudarc's events).
pub(crate) fn ptr_of<'a, T>(s: &'a CudaSlice<T>, stream: &'a CudaStream) -> (u64, impl Drop + 'a) {
    let (p, guard) = s.device_ptr(stream);
    (p, guard)
}

pub(crate) fn ptr_of_mut<'a, T>(
    s: &'a mut CudaSlice<T>,
    stream: &'a CudaStream,
) -> (u64, impl Drop + 'a) {
    let (p, guard) = s.device_ptr_mut(stream);
    (p, guard)
}

#[cfg(test)]
mod tests {
    use super::ctas_per_slice;

    #[test]
    fn persistent_grids_fit_one_wave() {
        // 3 CTAs per SM on 132 SMs, 16 slices: 24 per slice (25 would leave 4 CTAs for a second wave).
        assert_eq!(ctas_per_slice(396, 16), 24);
        assert_eq!(ctas_per_slice(528, 16), 33);
        for slots in [1, 7, 132, 396, 528, 792] {
            for slices in [0, 1, 3, 5, 16, 17, 1000] {
                let c = ctas_per_slice(slots, slices);
                assert!(c >= 1);
                if (1..=slots).contains(&slices) {
                    assert!(
                        c * slices <= slots && (c + 1) * slices > slots,
                        "{slots} {slices}"
                    );
                }
            }
        }
    }
}
