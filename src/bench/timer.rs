//! The timing protocol of `sofa bench` (SPEC §6) for any workload: warm-up, device events around
//! each run, optionally an L2 flush before each run (outside the events) and CUDA-graph replay.

use crate::bench::graph::capture;
use crate::bench::{time_with_setup, Timing};
use crate::error::Result;
use crate::runtime::Runtime;
use cudarc::driver::{CudaSlice, CudaStream};
use std::sync::Arc;

/// One timed workload.
#[derive(Clone, Debug)]
pub struct Measured {
    pub timing: Timing,
    /// Whether graph launches were timed (false for eager calls, and after a failed capture).
    pub graph: bool,
    /// Why a requested graph replay fell back to eager calls.
    pub note: Option<String>,
}

/// Times workloads on one stream, all with the same settings.
pub struct Timer {
    stream: Arc<CudaStream>,
    warmup: usize,
    iters: usize,
    /// A buffer twice the L2 size, overwritten before every run (`--flush-l2`).
    flush: Option<CudaSlice<u8>>,
    graph: bool,
}

impl Timer {
    /// `flush_l2` allocates the flush buffer now; `graph` asks for CUDA-graph replay.
    pub fn new(
        rt: &Runtime,
        stream: &Arc<CudaStream>,
        warmup: usize,
        iters: usize,
        flush_l2: bool,
        graph: bool,
    ) -> Result<Self> {
        let flush = if flush_l2 {
            Some(rt.alloc::<u8>(stream, 2 * rt.info().l2_bytes.max(1))?)
        } else {
            None
        };
        Ok(Timer {
            stream: stream.clone(),
            warmup,
            iters,
            flush,
            graph,
        })
    }

    /// Times `run`, which must only enqueue work on the timer's stream and should have run once
    /// (kernels loaded). With graph replay, one call is captured and its graph launches are
    /// timed; a call that cannot be captured is timed eagerly and the reason is in the note.
    pub fn time(&mut self, run: &mut dyn FnMut() -> Result<()>) -> Result<Measured> {
        let (graph, note) = if self.graph {
            match capture(&self.stream, run) {
                Ok(g) => (Some(g), None),
                Err(e) => (
                    None,
                    Some(format!("not captured as a CUDA graph ({e}); timed eagerly")),
                ),
            }
        } else {
            (None, None)
        };
        let stream = &self.stream;
        let flush = &mut self.flush;
        let timing = time_with_setup(
            stream,
            self.warmup,
            self.iters,
            || match flush.as_mut() {
                Some(f) => Ok(stream.memset_zeros(f)?),
                None => Ok(()),
            },
            || match &graph {
                Some(g) => Ok(g.launch()?),
                None => run(),
            },
        )?;
        Ok(Measured {
            timing,
            graph: graph.is_some(),
            note,
        })
    }
}
