//! CUDA-graph replay (`sofa bench --graph`): one call of a multi-launch op captured on its stream
//! and replayed as a single graph launch, so that a timing measures the kernels rather than the
//! host's per-launch overhead.

use crate::error::{Error, Result};
use cudarc::driver::sys::{CUgraphInstantiate_flags, CUstreamCaptureMode};
use cudarc::driver::CudaStream;
use std::sync::Arc;

pub use cudarc::driver::CudaGraph;

/// Captures one call of `run` on `stream` into an instantiated, uploaded graph.
///
/// `run` must only enqueue work on `stream` — no allocation, synchronization, host copy or wait on
/// an event recorded outside the capture (cudarc's per-buffer event tracking does such waits on a
/// multi-stream context: disable it for buffers that are to be captured) — and should have run
/// once already (kernels loaded, cuBLAS initialised). Any failure ends the capture and is
/// returned; the stream is then usable as before.
pub fn capture(stream: &Arc<CudaStream>, run: &mut dyn FnMut() -> Result<()>) -> Result<CudaGraph> {
    stream.begin_capture(CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_THREAD_LOCAL)?;
    let ran = run();
    let ended = stream.end_capture(CUgraphInstantiate_flags(0));
    ran?;
    let graph = ended?.ok_or_else(|| {
        Error::param(
            "graph",
            "empty",
            "the captured call enqueued no work on the stream",
        )
    })?;
    graph.upload()?;
    Ok(graph)
}
