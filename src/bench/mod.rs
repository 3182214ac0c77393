//! Measuring: device-event timing after warm-up, summary statistics, the roofline ceilings,
//! random device inputs, the cuBLAS references, CUDA-graph replay, and the JSON-lines records of
//! `sofa run --json` and `sofa bench`.

pub mod baseline;
pub mod crossover;
pub mod graph;
pub mod plot;
pub mod probe;
pub mod record;
pub mod roofline;
pub mod targets;
pub mod timer;
pub mod workload;

use crate::error::Result;
use crate::runtime::Runtime;
use crate::tensor::Element;
use cudarc::driver::sys::CUevent_flags;
use cudarc::driver::{CudaSlice, CudaStream, LaunchConfig, PushKernelArg};
use std::sync::Arc;

/// Summary of repeated timings, in milliseconds.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Timing {
    pub median_ms: f64,
    pub p10_ms: f64,
    pub p90_ms: f64,
    pub runs: usize,
}

impl Timing {
    /// Summarizes samples (any order); `None` when empty.
    pub fn from_samples(samples: &[f64]) -> Option<Self> {
        if samples.is_empty() {
            return None;
        }
        let mut s = samples.to_vec();
        s.sort_by(|a, b| a.total_cmp(b));
        let at = |q: f64| s[((s.len() - 1) as f64 * q).round() as usize];
        Some(Timing {
            median_ms: at(0.5),
            p10_ms: at(0.1),
            p90_ms: at(0.9),
            runs: s.len(),
        })
    }
}

/// Runs `f` `warmup` times, then times each of `iters` runs with a pair of device events on
/// `stream`. `f` must only enqueue work on `stream`.
pub fn time_on_stream(
    stream: &Arc<CudaStream>,
    warmup: usize,
    iters: usize,
    f: impl FnMut() -> Result<()>,
) -> Result<Timing> {
    time_with_setup(stream, warmup, iters, || Ok(()), f)
}

/// Like [`time_on_stream`], with `setup` enqueued before each run, outside the timed events
/// (used to flush L2 between runs).
pub fn time_with_setup(
    stream: &Arc<CudaStream>,
    warmup: usize,
    iters: usize,
    mut setup: impl FnMut() -> Result<()>,
    mut f: impl FnMut() -> Result<()>,
) -> Result<Timing> {
    let ctx = stream.context();
    for _ in 0..warmup {
        setup()?;
        f()?;
    }
    let start = ctx.new_event(Some(CUevent_flags::CU_EVENT_DEFAULT))?;
    let end = ctx.new_event(Some(CUevent_flags::CU_EVENT_DEFAULT))?;
    let mut samples = Vec::with_capacity(iters);
    for _ in 0..iters.max(1) {
        setup()?;
        start.record(stream)?;
        f()?;
        end.record(stream)?;
        samples.push(start.elapsed_ms(&end)? as f64);
    }
    Ok(Timing::from_samples(&samples).expect("at least one sample"))
}

/// Whether a workload needing `need` bytes fits in `free` bytes of device memory, keeping a
/// tenth of it spare (allocator slack, cuBLAS workspaces).
pub fn fits(need: usize, free: usize) -> bool {
    need <= free / 10 * 9
}

/// `len` elements uniform in [-1, 1) from `seed` (the same seed gives the same values).
pub fn random_buffer<T: Element>(
    rt: &Runtime,
    stream: &Arc<CudaStream>,
    len: usize,
    seed: u64,
) -> Result<CudaSlice<T>> {
    let mut x = rt.alloc::<T>(stream, len)?;
    fill_uniform(rt, stream, &mut x, seed)?;
    Ok(x)
}

/// Fills `buf` with values uniform in [-1, 1) on the device (kernels/fill.cu), from `seed`.
pub fn fill_uniform<T: Element>(
    rt: &Runtime,
    stream: &Arc<CudaStream>,
    buf: &mut CudaSlice<T>,
    seed: u64,
) -> Result<()> {
    let f = rt.function("fill", &format!("fill_uniform_{}", T::DTYPE.name()))?;
    let n = buf.len() as u64;
    let blocks = (n.div_ceil(256)).clamp(1, 4 * rt.info().multiprocessors as u64 * 8) as u32;
    let cfg = LaunchConfig {
        grid_dim: (blocks, 1, 1),
        block_dim: (256, 1, 1),
        shared_mem_bytes: 0,
    };
    let (lo, hi) = (-1.0f32, 1.0f32);
    let mut b = stream.launch_builder(&f);
    b.arg(buf).arg(&n).arg(&seed).arg(&lo).arg(&hi);
    // SAFETY: the kernel writes exactly `n` elements of `buf`'s type.
    unsafe { b.launch(cfg) }?;
    Ok(())
}
