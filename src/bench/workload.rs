//! Benchmark workloads: an operator on random device inputs, ready to be timed, with the bytes
//! and FLOPs it must move and compute (SPEC §6).

use crate::bench::random_buffer;
use crate::error::{Error, Result};
use crate::ops::aft::{self, AftParams};
use crate::ops::soft::NewtonPath;
use crate::ops::{cosformer, sima, soft, TensorMut, TensorRef};
use crate::reference::cosformer::CosformerParams;
use crate::reference::soft::{gaussian, Landmarks, SoftParams};
use crate::reference::Rng;
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
    Soft,
    /// SOFT's batched Newton–Raphson pseudo-inverse alone (SPEC §1.4), B·H fp32 m×m matrices:
    /// the piece issue 4 times against the cuBLAS loop, reported per matrix.
    SoftNewton,
    /// One cosFormer decode step (`cosformer::State::step`): a token per sequence against B·H
    /// fp32 states, which it reads and writes once (issue 5's decode targets).
    CosformerDecode,
    AftSimple,
    AftLocal,
    AftConv,
    AftFull,
}

impl BenchOp {
    pub const ALL: [BenchOp; 9] = [
        BenchOp::Sima,
        BenchOp::Cosformer,
        BenchOp::CosformerDecode,
        BenchOp::Soft,
        BenchOp::SoftNewton,
        BenchOp::AftSimple,
        BenchOp::AftLocal,
        BenchOp::AftConv,
        BenchOp::AftFull,
    ];

    /// The kernel family (file stem under kernels/) the op launches.
    pub fn family(self) -> &'static str {
        match self {
            BenchOp::Sima => "sima",
            BenchOp::Cosformer | BenchOp::CosformerDecode => "cosformer",
            BenchOp::Soft => "soft",
            BenchOp::SoftNewton => "newton",
            _ => "aft",
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            BenchOp::Sima => "sima",
            BenchOp::Cosformer => "cosformer",
            BenchOp::Soft => "soft",
            BenchOp::SoftNewton => "soft_newton",
            BenchOp::CosformerDecode => "cosformer_decode",
            BenchOp::AftSimple => "aft_simple",
            BenchOp::AftLocal => "aft_local",
            BenchOp::AftConv => "aft_conv",
            BenchOp::AftFull => "aft_full",
        }
    }

    /// Whether the op has a causal variant.
    pub fn has_causal(self) -> bool {
        !matches!(
            self,
            BenchOp::Sima | BenchOp::Soft | BenchOp::SoftNewton | BenchOp::CosformerDecode
        )
    }

    /// Whether the op's cases have no sequence length (`--seq` does not apply).
    pub fn has_seq(self) -> bool {
        !matches!(self, BenchOp::SoftNewton | BenchOp::CosformerDecode)
    }

    /// Whether the op takes a window s (AFT-local, AFT-conv).
    pub fn has_window(self) -> bool {
        matches!(self, BenchOp::AftLocal | BenchOp::AftConv)
    }
}

/// The shape of one measurement.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Case {
    pub op: BenchOp,
    pub dims: Dims,
    pub dtype: DType,
    pub causal: bool,
    /// AFT-local/conv window s (ignored by other ops).
    pub window: usize,
    /// SOFT landmarks m (ignored by other ops). For `SoftNewton` the matrices are m×m and
    /// `dims` is `[B, H, m, m]`: one matrix per (b,h). `CosformerDecode` has `dims` `[B, H, 1, D]`
    /// (one token per sequence, Dv = D).
    pub landmarks: usize,
    /// Causal cosFormer: allow the chained launch (the default; `false` labels the record
    /// `separate` and times the reduce → scan → causal launches).
    pub chained: bool,
    /// Causal cosFormer: chunks of this many rows (a multiple of 64) instead of the plan's
    /// (labelled `rows=N`); with the chained launch allowed, it then always chains.
    pub chunk_rows: Option<usize>,
    /// `SoftNewton`: the Newton path to time (labelled `path=…` unless `Auto`, the plain call's).
    pub newton_path: NewtonPath,
}

impl Case {
    /// A case with the SPEC's default window (64) and landmark count (64).
    pub fn new(op: BenchOp, dims: Dims, dtype: DType, causal: bool) -> Self {
        Case {
            op,
            dims,
            dtype,
            causal,
            window: 64,
            landmarks: 64,
            chained: true,
            chunk_rows: None,
            newton_path: NewtonPath::Auto,
        }
    }

    /// The cosFormer plan of this case on contiguous tensors (chained or not, its chunking).
    pub(crate) fn cosformer_plan(&self) -> Result<cosformer::Plan> {
        let l = Layout::contiguous(self.dims);
        let p = self.cosformer_params();
        let mut plan = cosformer::Plan::new(&l, &l, &l, &l, &p)?.with_chained(self.chained);
        if let (true, Some(rows)) = (self.causal, self.chunk_rows) {
            plan = plan.with_rows_per_chunk(rows)?;
        }
        Ok(plan)
    }

    pub(crate) fn cosformer_params(&self) -> CosformerParams {
        CosformerParams {
            causal: self.causal,
            ..Default::default()
        }
    }

    pub(crate) fn soft_params(&self) -> SoftParams {
        SoftParams {
            landmarks: Landmarks::AvgPool1d { m: self.landmarks },
            ..Default::default()
        }
    }

    /// `SoftNewton` on a path asked for by name: whether it can run for the case's m on a device
    /// with `smem_optin` bytes of shared memory per block (otherwise `Ok`: the plain call's path
    /// reports its own errors).
    pub fn check_newton_path(&self, smem_optin: usize) -> Result<()> {
        if self.op == BenchOp::SoftNewton && self.newton_path != NewtonPath::Auto {
            let (batch, p) = (self.dims.b * self.dims.h, self.soft_params());
            soft::NewtonPlan::new(batch, self.landmarks, &p, self.newton_path, smem_optin)?;
        }
        Ok(())
    }

    /// Scratch of a `SoftNewton` case (B·H matrices of m×m): the multi-launch path's, an upper
    /// bound of every path's.
    fn newton_workspace_bytes(&self) -> Result<usize> {
        let (batch, p) = (self.dims.b * self.dims.h, self.soft_params());
        let path = NewtonPath::MultiLaunch;
        Ok(soft::NewtonPlan::new(batch, self.landmarks, &p, path, usize::MAX)?.workspace_bytes())
    }

    fn aft_variant(&self) -> Option<aft::Variant> {
        let window = self.window;
        Some(match self.op {
            BenchOp::AftSimple => aft::Variant::Simple,
            BenchOp::AftLocal => aft::Variant::Local { window },
            BenchOp::AftConv => aft::Variant::Conv { window },
            BenchOp::AftFull => aft::Variant::Full,
            _ => return None,
        })
    }

    /// The record's variant label: "causal", "s=64", "m=64", joined by commas.
    pub fn label(&self) -> String {
        let mut parts = Vec::new();
        if self.causal {
            parts.push("causal".to_string());
        }
        if self.op.has_window() {
            parts.push(format!("s={}", self.window));
        }
        if matches!(self.op, BenchOp::Soft | BenchOp::SoftNewton) {
            parts.push(format!("m={}", self.landmarks));
        }
        if self.op == BenchOp::SoftNewton {
            parts.push(format!("T={}", self.soft_params().newton_iters));
            if let Some(name) = newton_path_name(self.newton_path) {
                parts.push(format!("path={name}"));
            }
        }
        if self.op == BenchOp::Cosformer && self.causal {
            if !self.chained {
                parts.push("separate".to_string());
            }
            if let Some(rows) = self.chunk_rows {
                parts.push(format!("rows={rows}"));
            }
        }
        parts.join(",")
    }

    /// fp32 values of the position bias (AFT-local `w`, AFT-conv `u`, AFT-full `w`).
    pub(crate) fn bias_len(&self) -> Result<usize> {
        match self.aft_variant() {
            Some(v) => Ok(v.bias_len(self.dims.n, self.dims.h)?.map_or(0, |(_, n)| n)),
            None => Ok(0),
        }
    }

    /// Minimum bytes: four [B,H,N,D] tensors (Dv = D) — q, k, v read and o written once; SOFT
    /// (tied) per SPEC §1.5, Q twice (landmarks before P), V once, X once — plus the AFT bias
    /// once; Newton: A read and Z written once (fp32); a decode step: the fp32 state read and
    /// written once plus the token's q, k, v, o.
    pub fn min_bytes(&self) -> f64 {
        let Dims { b, h, n, d } = self.dims;
        if self.op == BenchOp::SoftNewton {
            return (2 * b * h * self.landmarks * self.landmarks * 4) as f64;
        }
        if self.op == BenchOp::CosformerDecode {
            let (state, tokens) = self.decode_bytes();
            return (2 * state + tokens) as f64;
        }
        let bias = self.bias_len().unwrap_or(0) * 4;
        (4 * b * h * n * d * self.dtype.size() + bias) as f64
    }

    /// A decode step's fp32 state bytes (B·H slices) and its q, k, v, o token bytes.
    fn decode_bytes(&self) -> (usize, usize) {
        let Dims { b, h, d, .. } = self.dims;
        (
            b * h * cosformer::state_len(d, d) * 4,
            4 * b * h * d * self.dtype.size(),
        )
    }

    /// FLOPs of the linear form (SPEC): SimA 4·N·D², cosFormer 8·N·D², SOFT 6·N·m·D + 4·m³·T,
    /// AFT simple 4·N·D, local/conv 8·s·N·D, full 4·N²·D, per (b,h) (multiply-add = 2).
    pub fn flops(&self) -> f64 {
        let Dims { b, h, n, d } = self.dims;
        let rows = (b * h * n) as f64;
        let d = d as f64;
        match self.op {
            BenchOp::Sima => 4.0 * rows * d * d,
            BenchOp::Cosformer | BenchOp::CosformerDecode => 8.0 * rows * d * d,
            BenchOp::Soft | BenchOp::SoftNewton => {
                let p = self.soft_params();
                let m = self.landmarks as f64;
                let newton = (b * h) as f64 * 4.0 * m * m * m * p.newton_iters as f64;
                match self.op {
                    BenchOp::Soft => newton + 6.0 * rows * m * d,
                    _ => newton,
                }
            }
            BenchOp::AftSimple => 4.0 * rows * d,
            BenchOp::AftLocal | BenchOp::AftConv => 8.0 * rows * self.window as f64 * d,
            BenchOp::AftFull => 4.0 * rows * n as f64 * d,
        }
    }

    /// Device memory the case needs: inputs, output, bias and workspace.
    pub fn device_bytes(&self) -> Result<usize> {
        if self.op == BenchOp::CosformerDecode {
            let (state, tokens) = self.decode_bytes();
            return Ok(state + tokens);
        }
        if self.op == BenchOp::SoftNewton {
            return Ok(self.min_bytes() as usize + self.workspace_bytes()?);
        }
        let tensors = self
            .dims
            .numel()
            .and_then(|e| e.checked_mul(4 * self.dtype.size()))
            .ok_or_else(|| Error::param("shape", self.dims, "too large"))?;
        Ok(tensors + self.bias_len()? * 4 + self.workspace_bytes()?)
    }

    fn workspace_bytes(&self) -> Result<usize> {
        let d = self.dims.d;
        match self.op {
            BenchOp::Sima => sima::workspace_bytes(self.dims, d),
            BenchOp::Cosformer => Ok(self.cosformer_plan()?.workspace_bytes()),
            BenchOp::Soft => soft::workspace_bytes(self.dims, d, &self.soft_params()),
            BenchOp::SoftNewton => self.newton_workspace_bytes(),
            BenchOp::CosformerDecode => Ok(0),
            _ => {
                let v = self.aft_variant().expect("an AFT op");
                let p = AftParams {
                    causal: self.causal,
                };
                aft::workspace_bytes(self.dims, v, &p)
            }
        }
    }
}

/// Enqueues one run of a workload on its stream.
pub type Runner = Box<dyn FnMut() -> Result<()>>;

/// A case with its device buffers, callable repeatedly on its stream.
pub struct Workload {
    pub case: Case,
    run: Runner,
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

    /// The run alone (its buffers with it), for a [`crate::bench::timer::Timer`].
    pub fn into_runner(self) -> Runner {
        self.run
    }
}

/// The fill seed of input `i` (q, k, v, then the bias) of the workload seeded `seed`; the cuBLAS
/// references use the same seeds, so they see the same values.
pub(crate) fn input_seed(seed: u64, i: u64) -> u64 {
    seed.wrapping_mul(3).wrapping_add(i)
}

/// The device buffers of one timed workload, all contiguous `[B,H,N,D]`: random q, k, v (and
/// the AFT bias), an output and a workspace.
pub(crate) struct Buffers<T> {
    pub layout: Layout,
    pub q: CudaSlice<T>,
    pub k: CudaSlice<T>,
    pub v: CudaSlice<T>,
    pub o: CudaSlice<T>,
    pub ws: CudaSlice<u8>,
    pub bias: Option<CudaSlice<f32>>,
}

impl<T: Element> Buffers<T> {
    /// Buffers of `dims` with `workspace` bytes and a bias of `bias_len` floats (none when 0),
    /// the inputs filled from [`input_seed`]`(seed, ·)`.
    pub(crate) fn new(
        rt: &Runtime,
        stream: &Arc<CudaStream>,
        dims: Dims,
        workspace: usize,
        bias_len: usize,
        seed: u64,
    ) -> Result<Self> {
        let layout = Layout::contiguous(dims);
        let len = layout
            .span()
            .ok_or_else(|| Error::param("shape", dims, "too large"))?;
        let input = |i| random_buffer::<T>(rt, stream, len, input_seed(seed, i));
        Ok(Buffers {
            layout,
            q: input(0)?,
            k: input(1)?,
            v: input(2)?,
            o: rt.alloc::<T>(stream, len)?,
            ws: rt.alloc::<u8>(stream, workspace)?,
            // The AFT bias: uniform in [-1, 1) like the inputs (fp32).
            bias: match bias_len {
                0 => None,
                n => Some(random_buffer::<f32>(rt, stream, n, input_seed(seed, 3))?),
            },
        })
    }
}

fn runner<T: Element>(
    rt: &Arc<Runtime>,
    stream: &Arc<CudaStream>,
    case: Case,
    seed: u64,
) -> Result<Runner> {
    if case.op == BenchOp::SoftNewton {
        return newton_runner(rt, stream, case, seed);
    }
    if case.op == BenchOp::CosformerDecode {
        return decode_runner::<T>(rt, stream, case, seed);
    }
    let (ws_bytes, bias_len) = (case.workspace_bytes()?, case.bias_len()?);
    let Buffers {
        layout: l,
        q,
        k,
        v,
        mut o,
        mut ws,
        bias,
    } = Buffers::<T>::new(rt, stream, case.dims, ws_bytes, bias_len, seed)?;
    let cos_plan = match case.op {
        BenchOp::Cosformer => Some(case.cosformer_plan()?),
        _ => None,
    };
    let (rt, stream) = (rt.clone(), stream.clone());
    Ok(Box::new(move || {
        let t = |x| TensorRef { data: x, layout: l };
        let out = TensorMut {
            data: &mut o,
            layout: l,
        };
        let ws = Some(&mut ws);
        match case.op {
            BenchOp::Sima => sima::forward(&rt, &stream, t(&q), t(&k), t(&v), out, ws),
            BenchOp::Cosformer => {
                let plan = cos_plan.as_ref().expect("made above");
                cosformer::forward_with_plan(&rt, &stream, plan, t(&q), t(&k), t(&v), out, ws)
            }
            BenchOp::Soft => {
                let p = case.soft_params();
                soft::attention(&rt, &stream, &p, t(&q), None, t(&v), out, None, ws)
            }
            _ => {
                let variant = case.aft_variant().expect("an AFT op");
                let p = AftParams {
                    causal: case.causal,
                };
                let (q, k, v) = (t(&q), t(&k), t(&v));
                aft::forward(&rt, &stream, variant, &p, q, k, v, out, bias.as_ref(), ws)
            }
        }
    }))
}

/// The buffers of a `SoftNewton` workload (the op's or the cuBLAS loop's): B·H Gaussian Gram
/// matrices `exp(−½‖x_i − x_j‖²)` of m random points in 8 dimensions (uniform in [−1, 1)), fp32
/// `[B·H][m][m]`, the well-conditioned landmark matrices SOFT's Newton step sees; Z; the
/// workspace. Seeded like the other inputs, so both see the same matrices.
pub(crate) struct NewtonBuffers {
    pub a: CudaSlice<f32>,
    pub z: CudaSlice<f32>,
    pub ws: CudaSlice<u8>,
    pub batch: usize,
    pub m: usize,
    pub params: SoftParams,
}

impl NewtonBuffers {
    pub(crate) fn new(
        rt: &Runtime,
        stream: &Arc<CudaStream>,
        case: &Case,
        workspace: usize,
        seed: u64,
    ) -> Result<Self> {
        const DIMS: usize = 8;
        let (batch, m) = (case.dims.b * case.dims.h, case.landmarks);
        let mut rng = Rng::new(input_seed(seed, 0));
        let mut host = Vec::with_capacity(batch * m * m);
        for _ in 0..batch {
            let x: Vec<f64> = (0..m * DIMS).map(|_| rng.uniform(-1.0, 1.0)).collect();
            host.extend(gaussian(&x, &x, DIMS).into_iter().map(|v| v as f32));
        }
        Ok(NewtonBuffers {
            a: stream.clone_htod(&host)?,
            z: rt.alloc::<f32>(stream, host.len())?,
            ws: rt.alloc::<u8>(stream, workspace.max(1))?,
            batch,
            m,
            params: case.soft_params(),
        })
    }
}

/// The names `sofa bench --newton-path` takes, and the record labels (`None`: the plain call's
/// path, unlabelled).
pub const NEWTON_PATHS: [(&str, NewtonPath); 7] = [
    ("auto", NewtonPath::Auto),
    ("one-launch", NewtonPath::OneLaunch),
    ("cluster-early", NewtonPath::ClusterEarlyArrive),
    ("cluster-late", NewtonPath::ClusterLateArrive),
    ("cluster-async", NewtonPath::ClusterAsync),
    ("cta", NewtonPath::OneLaunchCta),
    ("multi", NewtonPath::MultiLaunch),
];

fn newton_path_name(path: NewtonPath) -> Option<&'static str> {
    NEWTON_PATHS
        .iter()
        .find(|(_, p)| *p == path && path != NewtonPath::Auto)
        .map(|(name, _)| *name)
}

/// The Newton workload, on the case's path (by default the one a plain call takes).
fn newton_runner(
    rt: &Arc<Runtime>,
    stream: &Arc<CudaStream>,
    case: Case,
    seed: u64,
) -> Result<Runner> {
    let mut b = NewtonBuffers::new(rt, stream, &case, case.workspace_bytes()?, seed)?;
    let (rt, stream) = (rt.clone(), stream.clone());
    Ok(Box::new(move || {
        let path = case.newton_path;
        let (a, z, ws) = (&b.a, &mut b.z, Some(&mut b.ws));
        soft::newton_pinv(&rt, &stream, &b.params, b.batch, b.m, path, a, z, ws)
    }))
}

/// The decode workload: random q, k, v tokens `[B,H,1,D]` and a zeroed state at M = 2^30 − 1
/// (room for any number of timed steps; the position does not change the work). Each run is one
/// `State::step`, so the state advances by a token per run.
fn decode_runner<T: Element>(
    rt: &Arc<Runtime>,
    stream: &Arc<CudaStream>,
    case: Case,
    seed: u64,
) -> Result<Runner> {
    let Dims { b, h, d, .. } = case.dims;
    let params = CosformerParams {
        causal: true,
        m: Some(crate::ops::MAX_LEN),
        ..Default::default()
    };
    let mut state = cosformer::State::new(rt, stream, b, h, d, d, &params)?;
    let Buffers {
        layout: l,
        q,
        k,
        v,
        mut o,
        ..
    } = Buffers::<T>::new(rt, stream, case.dims, 0, 0, seed)?;
    let (rt, stream) = (rt.clone(), stream.clone());
    Ok(Box::new(move || {
        let t = |x| TensorRef { data: x, layout: l };
        let out = TensorMut {
            data: &mut o,
            layout: l,
        };
        state.step(&rt, &stream, t(&q), t(&k), t(&v), out)
    }))
}
