//! Benchmark workloads: an operator on random device inputs, ready to be timed, with the bytes
//! and FLOPs it must move and compute (SPEC §6).

use crate::bench::fill_uniform;
use crate::error::{Error, Result};
use crate::ops::{cosformer, sima, TensorMut, TensorRef};
use crate::reference::cosformer::CosformerParams;
use crate::runtime::Runtime;
use crate::tensor::{DType, Dims, Element, Layout};
use cudarc::driver::{CudaSlice, CudaStream};
use half::{bf16, f16};
use std::sync::Arc;

/// Operators `sofa bench` can measure on the GPU.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum BenchOp {
    Sima,
    Cosformer,
}

impl BenchOp {
    pub const ALL: [BenchOp; 2] = [BenchOp::Sima, BenchOp::Cosformer];

    pub fn name(self) -> &'static str {
        match self {
            BenchOp::Sima => "sima",
            BenchOp::Cosformer => "cosformer",
        }
    }

    /// Whether the op has a causal variant.
    pub fn has_causal(self) -> bool {
        matches!(self, BenchOp::Cosformer)
    }
}

/// The shape of one measurement.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Case {
    pub op: BenchOp,
    pub dims: Dims,
    pub dtype: DType,
    pub causal: bool,
}

impl Case {
    fn params(&self) -> CosformerParams {
        CosformerParams {
            causal: self.causal,
            ..Default::default()
        }
    }

    /// Minimum bytes: q, k, v read once and o written once (self-attention, Dv = D).
    pub fn min_bytes(&self) -> f64 {
        let Dims { b, h, n, d } = self.dims;
        (4 * b * h * n * d * self.dtype.size()) as f64
    }

    /// FLOPs of the linear form (SPEC): SimA 4·N·D·Dv, cosFormer 8·N·D·Dv per (b,h).
    pub fn flops(&self) -> f64 {
        let Dims { b, h, n, d } = self.dims;
        let per = match self.op {
            BenchOp::Sima => 4.0,
            BenchOp::Cosformer => 8.0,
        };
        per * (b * h * n) as f64 * (d * d) as f64
    }

    /// Device memory the case needs: inputs, output and workspace.
    pub fn device_bytes(&self) -> Result<usize> {
        let tensors = self
            .dims
            .numel()
            .and_then(|e| e.checked_mul(4 * self.dtype.size()))
            .ok_or_else(|| Error::param("shape", self.dims, "too large"))?;
        let d = self.dims.d;
        let ws = match self.op {
            BenchOp::Sima => sima::workspace_bytes(self.dims, d)?,
            BenchOp::Cosformer => {
                cosformer::workspace_bytes(self.dims, self.dims.n, d, &self.params())?
            }
        };
        Ok(tensors + ws)
    }
}

/// A case with its device buffers, callable repeatedly on its stream.
pub struct Workload {
    pub case: Case,
    run: Box<dyn FnMut() -> Result<()>>,
}

impl Workload {
    /// Allocates and fills the inputs on the device (random, uniform in [-1, 1)).
    pub fn new(rt: &Arc<Runtime>, stream: &Arc<CudaStream>, case: Case, seed: u64) -> Result<Self> {
        let run = match case.dtype {
            DType::F16 => runner::<f16>(rt, stream, case, seed)?,
            DType::BF16 => runner::<bf16>(rt, stream, case, seed)?,
            DType::F32 => runner::<f32>(rt, stream, case, seed)?,
        };
        Ok(Workload { case, run })
    }

    /// Enqueues one run on the workload's stream.
    pub fn run(&mut self) -> Result<()> {
        (self.run)()
    }
}

fn runner<T: Element>(
    rt: &Arc<Runtime>,
    stream: &Arc<CudaStream>,
    case: Case,
    seed: u64,
) -> Result<Box<dyn FnMut() -> Result<()>>> {
    let l = Layout::contiguous(case.dims);
    let len = l
        .span()
        .ok_or_else(|| Error::param("shape", case.dims, "too large"))?;
    let input = |s| -> Result<CudaSlice<T>> {
        let mut x = rt.alloc::<T>(stream, len)?;
        fill_uniform(rt, stream, &mut x, seed.wrapping_mul(3).wrapping_add(s))?;
        Ok(x)
    };
    let (q, k, v) = (input(0)?, input(1)?, input(2)?);
    let mut o = rt.alloc::<T>(stream, len)?;
    let mut ws = rt.alloc::<u8>(stream, case.device_bytes()? - 4 * len * case.dtype.size())?;
    let (rt, stream) = (rt.clone(), stream.clone());
    Ok(Box::new(move || {
        let t = |x| TensorRef { data: x, layout: l };
        let out = TensorMut {
            data: &mut o,
            layout: l,
        };
        match case.op {
            BenchOp::Sima => sima::forward(&rt, &stream, t(&q), t(&k), t(&v), out, Some(&mut ws)),
            BenchOp::Cosformer => {
                let p = case.params();
                cosformer::forward(&rt, &stream, &p, t(&q), t(&k), t(&v), out, Some(&mut ws))
            }
        }
    }))
}
