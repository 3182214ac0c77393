//! What a step of SOFT's Newton cluster kernel pays beyond its arithmetic: kernels/newton.cu's
//! `newton_cluster_probe` runs the step's synchronization (the all-gather of new rows into the 8
//! CTAs of a cluster, the split cluster barrier, two CTA barriers) around a fixed number of FMAs
//! that stand in for a product; and the same for `newton_pinv_cl_async_f32`'s all-gather
//! (`st.async` into mbarriers, no cluster barrier). Each figure is the time of a launch of many
//! steps minus that of a launch of none, per step.

use crate::bench::time_on_stream;
use crate::error::Result;
use crate::runtime::Runtime;
use cudarc::driver::CudaStream;
use std::sync::Arc;

/// CTAs per cluster and threads per CTA of the probe (as `newton_pinv_cl_f32`).
const CLUSTER: usize = 8;
const THREADS: u32 = 128;
/// FMAs per thread standing in for a product: half of a step's 512 at m = 64.
pub const PROBE_FMAS: i32 = 256;

/// The probe kernel's one argument (`NewtonProbe` in kernels/newton.cu).
#[repr(C)]
#[derive(Clone, Copy)]
struct ProbeParams {
    iters: i32,
    work: i32,
    mode: i32,
}

// SAFETY: plain old data, three ints as in the kernel's struct.
unsafe impl cudarc::driver::DeviceRepr for ProbeParams {}

/// Microseconds per step of each arrangement.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ClusterStep {
    /// The synchronization alone: nothing overlaps it.
    pub sync_alone: f64,
    /// [`PROBE_FMAS`] FMAs per thread alone, no cluster operation.
    pub fmas_alone: f64,
    /// The FMAs between the arrive and the next wait, where `newton_cluster` runs its first
    /// product.
    pub arrive_early: f64,
    /// The FMAs between the stores and the arrive.
    pub arrive_late: f64,
    /// The `st.async` all-gather and its mbarrier wait alone.
    pub gather_alone: f64,
    /// The FMAs between the sends and the next wait, where `newton_cluster_async` runs its first
    /// product.
    pub gather_overlap: f64,
}

/// The probe with `clusters` clusters running together (one per matrix, as the Newton kernel
/// launches them) over launches of `steps` steps (`sofa bench`: 400); `None` below sm_90 or
/// where the probe kernel is absent.
pub fn newton_cluster_step(
    rt: &Runtime,
    stream: &Arc<CudaStream>,
    clusters: usize,
    steps: u16,
) -> Result<Option<ClusterStep>> {
    if rt.info().compute_capability.0 < 9 {
        return Ok(None);
    }
    let Ok(f) = rt.function("newton", "newton_cluster_probe") else {
        return Ok(None);
    };
    let grid = ((clusters.clamp(1, 1 << 16) * CLUSTER) as u32, 1, 1);
    let steps = i32::from(steps.max(1));
    // µs per step of `mode` (bit 0: no cluster part; bit 1: arrive after the FMAs; bit 2: the
    // st.async all-gather instead of stores and the cluster barrier).
    let per_step = |work: i32, mode: i32| -> Result<f64> {
        let time = |iters: i32| {
            time_on_stream(stream, 3, 21, || {
                let p = ProbeParams { iters, work, mode };
                // SAFETY: the kernel takes that struct and touches only its own shared memory
                // and that of its cluster's CTAs; the cluster shape is compiled in.
                unsafe { crate::ops::launch(stream, &f, grid, THREADS, &p) }
            })
        };
        let (none, many) = (time(0)?, time(steps)?);
        Ok(((many.median_ms - none.median_ms) * 1e3 / f64::from(steps)).max(0.0))
    };
    Ok(Some(ClusterStep {
        sync_alone: per_step(0, 0)?,
        fmas_alone: per_step(PROBE_FMAS, 1)?,
        arrive_early: per_step(PROBE_FMAS, 0)?,
        arrive_late: per_step(PROBE_FMAS, 2)?,
        gather_alone: per_step(0, 4)?,
        gather_overlap: per_step(PROBE_FMAS, 4)?,
    }))
}
