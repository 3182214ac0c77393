//! What a step of SOFT's Newton cluster kernel pays beyond its FMAs: kernels/newton.cu's
//! `newton_cluster_probe` runs the step's synchronization (the all-gather of new rows into the 8
//! CTAs of a cluster, the split cluster barrier, two CTA barriers) with no arithmetic. The
//! difference between a launch of many steps and one of none, per step, is that cost when
//! nothing overlaps it: an upper bound of what the real kernel's first product does not hide.

use crate::bench::time_on_stream;
use crate::error::Result;
use crate::runtime::Runtime;
use cudarc::driver::CudaStream;
use std::sync::Arc;

/// CTAs per cluster and threads per CTA of the probe (as `newton_pinv_cl_f32`).
const CLUSTER: usize = 8;
const THREADS: u32 = 128;
/// Microseconds per step over a launch of `steps` steps (`sofa bench`: 400), with `clusters`
/// clusters running together (one per matrix, as the Newton kernel launches them); `None` below
/// sm_90 or where the probe kernel is absent.
pub fn newton_cluster_step_us(
    rt: &Runtime,
    stream: &Arc<CudaStream>,
    clusters: usize,
    steps: u16,
) -> Result<Option<f64>> {
    if rt.info().compute_capability.0 < 9 {
        return Ok(None);
    }
    let Ok(f) = rt.function("newton", "newton_cluster_probe") else {
        return Ok(None);
    };
    let grid = ((clusters.clamp(1, 1 << 16) * CLUSTER) as u32, 1, 1);
    let time = |steps: i32| {
        time_on_stream(stream, 3, 21, || {
            // SAFETY: the kernel takes one int and touches only its own shared memory and that
            // of its cluster's CTAs; the cluster shape is compiled in.
            unsafe { crate::ops::launch(stream, &f, grid, THREADS, &steps) }
        })
    };
    let (none, many) = (time(0)?, time(steps.max(1).into())?);
    Ok(Some(
        ((many.median_ms - none.median_ms) * 1e3 / f64::from(steps.max(1))).max(0.0),
    ))
}
