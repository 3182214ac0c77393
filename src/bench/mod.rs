//! Measuring: device-event timing after warm-up, summary statistics.

use crate::error::Result;
use cudarc::driver::sys::CUevent_flags;
use cudarc::driver::CudaStream;

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
    stream: &std::sync::Arc<CudaStream>,
    warmup: usize,
    iters: usize,
    mut f: impl FnMut() -> Result<()>,
) -> Result<Timing> {
    let ctx = stream.context();
    for _ in 0..warmup {
        f()?;
    }
    let start = ctx.new_event(Some(CUevent_flags::CU_EVENT_DEFAULT))?;
    let end = ctx.new_event(Some(CUevent_flags::CU_EVENT_DEFAULT))?;
    let mut samples = Vec::with_capacity(iters);
    for _ in 0..iters.max(1) {
        start.record(stream)?;
        f()?;
        end.record(stream)?;
        samples.push(start.elapsed_ms(&end)? as f64);
    }
    Ok(Timing::from_samples(&samples).expect("at least one sample"))
}
