//! `sofa run`: one operator on random inputs, timed, checked against the f64 reference.

use half::{bf16, f16};
use sofa::bench::{time_on_stream, Timing};
use sofa::ops::{sima, TensorMut, TensorRef};
use sofa::reference::{self, gather, Rng};
use sofa::{DType, Dims, Element, Error, Layout, LayoutKind, Result, Runtime};
use std::time::Instant;

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Op {
    Sima,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Backend {
    /// The GPU when one is present, else the CPU reference (with a note).
    Auto,
    Gpu,
    Cpu,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Check {
    /// Compare with the reference when it is affordable (≤ 4e10 reference flops).
    Auto,
    Always,
    Never,
}

#[derive(clap::Args)]
pub struct RunArgs {
    #[arg(long, value_enum)]
    op: Op,
    /// B,H,N,D (N accepts k/M suffixes: 64k = 65536).
    #[arg(long)]
    shape: Dims,
    /// Head dim of v (default: D).
    #[arg(long)]
    dv: Option<usize>,
    #[arg(long, default_value = "f16")]
    dtype: DType,
    #[arg(long, value_enum, default_value_t = Backend::Auto)]
    backend: Backend,
    /// Memory order of every tensor: bhnd, or bnhd (the inference-engine layout, by strides).
    #[arg(long, default_value = "bhnd")]
    layout: LayoutKind,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Timed runs (GPU); the median is reported.
    #[arg(long, default_value_t = 50)]
    iters: usize,
    #[arg(long, default_value_t = 5)]
    warmup: usize,
    #[arg(long, value_enum, default_value_t = Check::Auto)]
    check: Check,
    #[arg(long, default_value_t = 0)]
    device: usize,
}

/// Reference flops above which `--check auto` skips the comparison.
const CHECK_BUDGET_FLOPS: f64 = 4e10;

struct Inputs<T> {
    q: Vec<T>,
    k: Vec<T>,
    v: Vec<T>,
    lq: Layout,
    lv: Layout,
}

impl<T: Element> Inputs<T> {
    fn random(dims: Dims, dv: usize, kind: LayoutKind, seed: u64) -> Result<Self> {
        let lq = Layout::of_kind(dims, kind);
        let lv = Layout::of_kind(dims.with_d(dv), kind);
        let span = |l: &Layout| l.span().ok_or_else(|| Error::param("shape", l.dims, "too large"));
        let mut rng = Rng::new(seed);
        let (sq, sv) = (span(&lq)?, span(&lv)?);
        Ok(Inputs { q: rng.fill(sq, -1.0, 1.0), k: rng.fill(sq, -1.0, 1.0), v: rng.fill(sv, -1.0, 1.0), lq, lv })
    }

    fn reference(&self) -> Vec<f64> {
        let (q, k, v) = (gather(&self.q, &self.lq), gather(&self.k, &self.lq), gather(&self.v, &self.lv));
        reference::sima::forward(&q, &k, &v, self.lq.dims, self.lv.dims.d)
    }
}

pub fn run(args: &RunArgs) -> Result<i32> {
    let dims = args.shape;
    let dv = args.dv.unwrap_or(dims.d);
    sima::workspace_bytes(dims, dv)?; // validates the shape before any allocation
    let rt = match args.backend {
        Backend::Cpu => None,
        Backend::Gpu => Some(Runtime::new(args.device)?),
        Backend::Auto => match Runtime::new(args.device) {
            Ok(rt) => Some(rt),
            Err(Error::NoDevice(why)) => {
                eprintln!("note: no CUDA device ({why}); running the CPU reference backend instead");
                None
            }
            Err(e) => return Err(e),
        },
    };
    println!(
        "op {:?}  shape {dims}  dv {dv}  dtype {}  layout {:?}",
        args.op, args.dtype, args.layout
    );
    match (rt, args.dtype) {
        (None, _) => run_cpu(args, dims, dv),
        (Some(rt), DType::F16) => run_gpu::<f16>(&rt, args, dims, dv),
        (Some(rt), DType::BF16) => run_gpu::<bf16>(&rt, args, dims, dv),
        (Some(rt), DType::F32) => run_gpu::<f32>(&rt, args, dims, dv),
    }
}

fn run_cpu(args: &RunArgs, dims: Dims, dv: usize) -> Result<i32> {
    let inputs = Inputs::<f32>::random(dims, dv, args.layout, args.seed)?;
    let t = Instant::now();
    let out = inputs.reference();
    let ms = t.elapsed().as_secs_f64() * 1e3;
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    println!("backend cpu (f64 reference, {threads} threads)");
    println!("time    {ms:.3} ms  ({:.3e} tokens/s)", (dims.b * dims.n) as f64 / (ms * 1e-3));
    let finite = out.iter().all(|x| x.is_finite());
    println!("output  {} elements, all finite: {finite}", out.len());
    Ok(if finite { 0 } else { super::EXIT_CHECK_FAILED })
}

fn run_gpu<T: Element>(rt: &Runtime, args: &RunArgs, dims: Dims, dv: usize) -> Result<i32> {
    let stream = rt.new_stream()?;
    let inputs = Inputs::<T>::random(dims, dv, args.layout, args.seed)?;
    let lo = inputs.lv;
    let q = stream.clone_htod(&inputs.q)?;
    let k = stream.clone_htod(&inputs.k)?;
    let v = stream.clone_htod(&inputs.v)?;
    let poison = vec![T::from_f64(f64::NAN); lo.span().unwrap_or(0)];
    let mut o = stream.clone_htod(&poison)?;
    let mut ws = rt.alloc::<u8>(&stream, sima::workspace_bytes(dims, dv)?)?;
    let call = |o: &mut _, ws: &mut _| {
        sima::forward(
            rt,
            &stream,
            TensorRef { data: &q, layout: inputs.lq },
            TensorRef { data: &k, layout: inputs.lq },
            TensorRef { data: &v, layout: inputs.lv },
            TensorMut { data: o, layout: lo },
            Some(ws),
        )
    };
    call(&mut o, &mut ws)?; // first call loads the kernels; checked, not timed
    let got = gather(&stream.clone_dtoh(&o)?, &lo);
    let timing = time_on_stream(&stream, args.warmup, args.iters, || call(&mut o, &mut ws))?;
    let i = rt.info();
    println!(
        "backend gpu: {} (sm_{}{}), kernels from {}",
        i.name,
        i.compute_capability.0,
        i.compute_capability.1,
        rt.load_path("sima").map_or("?".into(), |p| p.to_string())
    );
    print_timing(&timing, dims, dv, T::DTYPE);

    let flops = reference::sima::flops(dims, dv);
    let check = match args.check {
        Check::Always => true,
        Check::Never => false,
        Check::Auto => flops <= CHECK_BUDGET_FLOPS,
    };
    if !check {
        println!("check   skipped (reference would take {flops:.1e} flops; use --check always)");
        return Ok(0);
    }
    let want = inputs.reference();
    let rel = reference::rel_frobenius(&got, &want);
    let max_abs = reference::max_abs_diff(&got, &want);
    let tol = T::DTYPE.tolerance();
    let pass = rel <= tol; // NaN compares false
    println!(
        "check   rel. Frobenius {rel:.3e} (tolerance {tol:.1e}), max abs {max_abs:.3e} vs f64 reference: {}",
        if pass { "PASS" } else { "FAIL" }
    );
    Ok(if pass { 0 } else { super::EXIT_CHECK_FAILED })
}

fn print_timing(t: &Timing, dims: Dims, dv: usize, dtype: DType) {
    let bytes = ((2 * dims.d + 2 * dv) * dims.b * dims.h * dims.n * dtype.size()) as f64;
    let s = t.median_ms * 1e-3;
    println!(
        "time    median {:.4} ms (p10 {:.4}, p90 {:.4}; {} runs)  {:.3e} tokens/s  {:.1} GB/s over min. bytes  {:.2} TFLOP/s",
        t.median_ms,
        t.p10_ms,
        t.p90_ms,
        t.runs,
        (dims.b * dims.n) as f64 / s,
        bytes / s / 1e9,
        reference::sima::flops(dims, dv) / s / 1e12
    );
}
