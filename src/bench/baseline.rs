//! The references a sofa op is measured against in the same run (`sofa bench --baseline`): its
//! cuBLAS-composed baseline (`crate::baseline`, SPEC §5) and cuBLAS softmax attention on the same
//! shape. Each says whether it supports a case and how much device memory it needs before
//! anything is allocated, so that long sweeps skip the quadratic ones instead of running out of
//! memory. Inputs come from the same seeds as the op's, so both see the same values.

use crate::baseline::aft::{self, AftWeights};
use crate::baseline::softmax::{self, SoftmaxParams};
use crate::baseline::{cosformer, sima, soft, Blas};
use crate::bench::workload::{BenchOp, Buffers, Case, NewtonBuffers, Runner};
use crate::error::{Error, Result};
use crate::ops::{TensorMut, TensorRef};
use crate::runtime::Runtime;
use crate::tensor::{DType, Dims, Element};
use half::{bf16, f16};
use std::sync::Arc;

/// Which reference.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Reference {
    /// The cuBLAS-composed version of the case's own op (record op `baseline:<op>`).
    Composed,
    /// cuBLAS softmax attention `softmax(QKᵀ/√D)V` on the case's B, H, N, D and dtype, causal
    /// when the case is (record op `softmax`).
    Softmax,
}

/// A reference on the shape of a sofa case.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BaselineCase {
    pub reference: Reference,
    pub case: Case,
}

impl BaselineCase {
    /// The cuBLAS-composed baseline of `case`'s op; `None` for ops without one (AFT-simple and
    /// AFT-conv: `crate::baseline` has no composed version of them).
    pub fn composed(case: Case) -> Option<Self> {
        let has = matches!(
            case.op,
            BenchOp::Sima
                | BenchOp::Cosformer
                | BenchOp::Soft
                | BenchOp::SoftNewton
                | BenchOp::AftLocal
                | BenchOp::AftFull
        );
        has.then_some(BaselineCase {
            reference: Reference::Composed,
            case,
        })
    }

    /// Softmax attention on `case`'s shape, dtype and causality.
    pub fn softmax(case: Case) -> Self {
        BaselineCase {
            reference: Reference::Softmax,
            case,
        }
    }

    /// The record's op name: `baseline:<op>` or `softmax`.
    pub fn name(&self) -> String {
        match self.reference {
            Reference::Composed => format!("baseline:{}", self.case.op.name()),
            Reference::Softmax => "softmax".into(),
        }
    }

    /// The record's variant label: the op's for a composed baseline, `causal` or empty for softmax.
    pub fn label(&self) -> String {
        match self.reference {
            Reference::Composed => self.case.label(),
            Reference::Softmax if self.case.causal => "causal".into(),
            Reference::Softmax => String::new(),
        }
    }

    /// What identifies a softmax measurement (the same for every op of one shape).
    pub fn softmax_key(&self) -> (Dims, DType, bool) {
        (self.case.dims, self.case.dtype, self.case.causal)
    }

    /// Minimum bytes: a composed baseline must do what its op must; softmax reads q, k, v and
    /// writes o once.
    pub fn min_bytes(&self) -> f64 {
        match self.reference {
            Reference::Composed => self.case.min_bytes(),
            Reference::Softmax => {
                let Dims { b, h, n, d } = self.case.dims;
                (4 * b * h * n * d * self.case.dtype.size()) as f64
            }
        }
    }

    /// FLOPs: a composed baseline's op count (the linear form); softmax `4·N²·D` per (b,h) for
    /// `QKᵀ` and `PV`, half of it when causal (the masked half need not be computed).
    pub fn flops(&self) -> f64 {
        match self.reference {
            Reference::Composed => self.case.flops(),
            Reference::Softmax => {
                let Dims { b, h, n, d } = self.case.dims;
                let full = 4.0 * (b * h) as f64 * (n as f64).powi(2) * d as f64;
                if self.case.causal {
                    full / 2.0
                } else {
                    full
                }
            }
        }
    }

    /// Floats of the fp32 position bias: AFT-full `w [T,T]`, AFT-local `w [T, 2s−1]`.
    fn bias_len(&self) -> Result<usize> {
        match self.reference {
            Reference::Composed => self.case.bias_len(),
            Reference::Softmax => Ok(0),
        }
    }

    /// Scratch bytes of the baseline's plan; a case it refuses (the causal cosFormer limit, a
    /// size past cuBLAS's 32-bit extents, an overflowing workspace) is the plan's typed error.
    fn workspace_bytes(&self) -> Result<usize> {
        let Case {
            dims, dtype, op, ..
        } = self.case;
        let (n, d) = (dims.n, dims.d);
        match (self.reference, op) {
            (Reference::Softmax, _) => softmax::workspace_bytes(dtype, dims, n, d),
            (_, BenchOp::Sima) => sima::workspace_bytes(dtype, dims, d),
            (_, BenchOp::Cosformer) => {
                cosformer::workspace_bytes(dtype, dims, n, d, &self.case.cosformer_params())
            }
            (_, BenchOp::Soft) => soft::workspace_bytes(dtype, dims, d, &self.case.soft_params()),
            (_, BenchOp::SoftNewton) => Ok(self.newton_plan()?.workspace_bytes()),
            (_, BenchOp::AftLocal | BenchOp::AftFull) => aft::workspace_bytes(dtype, dims),
            (_, op) => Err(no_baseline(op)),
        }
    }

    /// The cuBLAS loop's plan of a `SoftNewton` case.
    fn newton_plan(&self) -> Result<soft::NewtonPlan> {
        let (dims, p) = (self.case.dims, self.case.soft_params());
        soft::NewtonPlan::new(dims.b * dims.h, self.case.landmarks, &p)
    }

    /// Device memory the reference needs: q, k, v, o, the bias and the workspace (Newton: A, Z
    /// and the workspace). Computed without touching the device; an unsupported case is an error.
    pub fn device_bytes(&self) -> Result<usize> {
        if self.case.op == BenchOp::SoftNewton {
            return Ok(self.case.min_bytes() as usize + self.workspace_bytes()?);
        }
        let tensors = self
            .case
            .dims
            .numel()
            .and_then(|e| e.checked_mul(4 * self.case.dtype.size()))
            .ok_or_else(|| Error::param("shape", self.case.dims, "too large"))?;
        let bias = self
            .bias_len()?
            .checked_mul(4)
            .ok_or_else(|| Error::param("shape", self.case.dims, "bias too large"))?;
        let workspace = self.workspace_bytes()?;
        tensors
            .checked_add(bias)
            .and_then(|x| x.checked_add(workspace))
            .ok_or_else(|| Error::param("shape", self.case.dims, "memory need overflows"))
    }

    /// Allocates and fills the inputs (the seeds of the op's workload `seed`) and returns the
    /// run, queued on `blas`'s stream.
    pub fn workload(&self, rt: &Arc<Runtime>, blas: &Arc<Blas>, seed: u64) -> Result<Runner> {
        if (self.reference, self.case.op) == (Reference::Composed, BenchOp::SoftNewton) {
            return self.newton_workload(rt, blas, seed);
        }
        match self.case.dtype {
            DType::F16 => runner::<f16>(rt, blas, *self, seed),
            DType::BF16 => runner::<bf16>(rt, blas, *self, seed),
            DType::F32 => runner::<f32>(rt, blas, *self, seed),
        }
    }

    /// The cuBLAS Newton loop (two batched GEMMs per step) on the op's matrices.
    fn newton_workload(&self, rt: &Arc<Runtime>, blas: &Arc<Blas>, seed: u64) -> Result<Runner> {
        let ws = self.workspace_bytes()?;
        let mut b = NewtonBuffers::new(rt, blas.stream(), &self.case, ws, seed)?;
        let (rt, blas) = (rt.clone(), blas.clone());
        Ok(Box::new(move || {
            let (a, z, ws) = (&b.a, &mut b.z, Some(&mut b.ws));
            soft::newton_pinv(&rt, &blas, &b.params, b.batch, b.m, a, z, ws)
        }))
    }
}

fn no_baseline(op: BenchOp) -> Error {
    Error::param("op", op.name(), "has no cuBLAS-composed baseline")
}

fn runner<T: Element>(
    rt: &Arc<Runtime>,
    blas: &Arc<Blas>,
    bc: BaselineCase,
    seed: u64,
) -> Result<Runner> {
    let case = bc.case;
    let (ws_bytes, bias_len) = (bc.workspace_bytes()?, bc.bias_len()?);
    let Buffers {
        layout: l,
        q,
        k,
        v,
        mut o,
        mut ws,
        bias,
    } = Buffers::<T>::new(rt, blas.stream(), case.dims, ws_bytes, bias_len, seed)?;
    let (rt, blas) = (rt.clone(), blas.clone());
    Ok(Box::new(move || {
        let t = |x| TensorRef { data: x, layout: l };
        let out = TensorMut {
            data: &mut o,
            layout: l,
        };
        let ws = Some(&mut ws);
        let (q, k, v) = (t(&q), t(&k), t(&v));
        match (bc.reference, case.op) {
            (Reference::Softmax, _) => {
                let p = SoftmaxParams {
                    causal: case.causal,
                    ..Default::default()
                };
                softmax::attention(&rt, &blas, &p, q, k, v, out, ws)
            }
            (_, BenchOp::Sima) => sima::forward(&rt, &blas, q, k, v, out, ws),
            (_, BenchOp::Cosformer) => {
                let p = case.cosformer_params();
                cosformer::forward(&rt, &blas, &p, q, k, v, out, ws)
            }
            (_, BenchOp::Soft) => {
                let p = case.soft_params();
                soft::attention(&rt, &blas, &p, q, None, v, out, None, ws)
            }
            (_, BenchOp::AftLocal | BenchOp::AftFull) => {
                let w = bias.as_ref().ok_or_else(|| no_baseline(case.op))?;
                let weights = match case.op {
                    BenchOp::AftLocal => AftWeights::Local {
                        w,
                        window: case.window,
                    },
                    _ => AftWeights::Full(w),
                };
                aft::forward(&rt, &blas, q, k, v, out, weights, case.causal, ws)
            }
            (_, op) => Err(no_baseline(op)),
        }
    }))
}
