//! `sofa run`: one operator on a safetensors file or random inputs; the CPU backend computes
//! the f64 linear form (multi-threaded), the GPU backend (SimA so far) is timed and checked
//! against the f64 reference.

use half::{bf16, f16};
use sofa::bench::{time_on_stream, Timing};
use sofa::io::{FileDType, HostTensor, TensorFile};
use sofa::ops::{sima, TensorMut, TensorRef};
use sofa::reference::aft::{AftParams, Bias};
use sofa::reference::cosformer::CosformerParams;
use sofa::reference::soft::{Landmarks, SoftParams};
use sofa::reference::softmax::SoftmaxParams;
use sofa::reference::{self, gather, scatter, Qkv, Rng};
use sofa::{DType, Dims, Element, Error, Layout, LayoutKind, Result, Runtime};
use std::path::{Path, PathBuf};
use std::time::Instant;

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Op {
    Soft,
    Cosformer,
    #[value(name = "aft_full", alias = "aft-full")]
    AftFull,
    #[value(name = "aft_local", alias = "aft-local")]
    AftLocal,
    #[value(name = "aft_simple", alias = "aft-simple")]
    AftSimple,
    #[value(name = "aft_conv", alias = "aft-conv")]
    AftConv,
    Sima,
    Softmax,
}

impl Op {
    /// The name used across kernels, CLI and JSON.
    pub fn name(self) -> &'static str {
        match self {
            Op::Soft => "soft",
            Op::Cosformer => "cosformer",
            Op::AftFull => "aft_full",
            Op::AftLocal => "aft_local",
            Op::AftSimple => "aft_simple",
            Op::AftConv => "aft_conv",
            Op::Sima => "sima",
            Op::Softmax => "softmax",
        }
    }

    fn is_aft(self) -> bool {
        matches!(
            self,
            Op::AftFull | Op::AftLocal | Op::AftSimple | Op::AftConv
        )
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Backend {
    /// The GPU when one is present and has the op, else the CPU (with a note).
    Auto,
    Gpu,
    Cpu,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Check {
    /// Compare when it is affordable (≤ 4e10 reference flops).
    Auto,
    Always,
    Never,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum LandmarkKind {
    Avgpool1d,
    Avgpool2d,
    Given,
}

#[derive(clap::Args)]
pub struct RunArgs {
    #[arg(long, value_enum)]
    op: Op,
    /// safetensors file with q, k, v [B,H,N,D] (and w, u or landmarks where the op takes them).
    #[arg(long)]
    input: Option<PathBuf>,
    /// Write the output tensor `o` (input dtype) to this safetensors file.
    #[arg(long)]
    output: Option<PathBuf>,
    /// B,H,N,D of random inputs (N accepts k/M suffixes: 64k = 65536). Required without --input.
    #[arg(long)]
    shape: Option<Dims>,
    /// Head dim of v for random inputs (default: D).
    #[arg(long)]
    dv: Option<usize>,
    /// Key/value length S for random inputs (cross-attention: cosformer, softmax; default N).
    #[arg(long)]
    kv_len: Option<usize>,
    /// Storage type of random inputs (and of the output).
    #[arg(long, default_value = "f16")]
    dtype: DType,
    #[arg(long, value_enum, default_value_t = Backend::Auto)]
    backend: Backend,
    /// Memory order of the GPU tensors: bhnd, or bnhd (the inference-engine layout, by strides).
    #[arg(long, default_value = "bhnd")]
    layout: LayoutKind,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Timed runs (GPU); the median is reported.
    #[arg(long, default_value_t = 50)]
    iters: usize,
    #[arg(long, default_value_t = 5)]
    warmup: usize,
    /// GPU: compare with the f64 reference. CPU: compare the linear form with the literal one.
    #[arg(long, value_enum, default_value_t = Check::Auto)]
    check: Check,
    #[arg(long, default_value_t = 0)]
    device: usize,
    /// Append one JSON line with the measurement (GPU runs) to this file.
    #[arg(long)]
    json: Option<PathBuf>,

    /// Causal variant (cosformer, aft_*, softmax).
    #[arg(long)]
    causal: bool,

    /// SOFT: how landmarks are formed (given: tensor `landmarks` [B,H,m,D] in --input, in the
    /// scaled space q/D^(1/4)).
    #[arg(long, value_enum, default_value_t = LandmarkKind::Avgpool1d)]
    landmarks: LandmarkKind,
    /// SOFT: number of landmarks for avgpool1d (given: taken from the tensor).
    #[arg(long, default_value_t = 64)]
    m: usize,
    /// SOFT avgpool2d: grid height (width = N / height; default: the square root of N).
    #[arg(long)]
    height: Option<usize>,
    /// SOFT avgpool2d: pooling window r (r×r, no padding).
    #[arg(long, default_value_t = 2)]
    pool: usize,
    /// SOFT: Newton–Raphson steps T.
    #[arg(long, default_value_t = 20)]
    newton_iters: usize,
    /// SOFT: ridge λ.
    #[arg(long, default_value_t = 0.01)]
    ridge: f64,
    /// SOFT: c in α = c·2/(max row sum of A)².
    #[arg(long, default_value_t = 0.9)]
    alpha_scale: f64,
    /// SOFT: use the k tensor (not K = Q) for the landmarks and P_k.
    #[arg(long)]
    untied: bool,

    /// cosFormer: angle denominator M (default max(N, S)).
    #[arg(long = "M")]
    big_m: Option<usize>,
    /// cosFormer: q and k are already non-negative features (skip ReLU).
    #[arg(long)]
    no_relu: bool,
    /// cosFormer: denominator clamp ε.
    #[arg(long, default_value_t = 1e-6)]
    eps: f64,

    /// AFT-local/conv: window s (default: from w or u in --input, else 64).
    #[arg(long)]
    window: Option<usize>,

    /// Softmax: score scale (default 1/√D).
    #[arg(long)]
    scale: Option<f64>,
}

/// Reference flops above which `--check auto` skips the comparison.
const CHECK_BUDGET_FLOPS: f64 = 4e10;
/// Largest AFT-full `w` (elements) the CLI will create at random.
const MAX_RANDOM_W: usize = 1 << 28;
/// Linear vs literal agreement the CPU check asks for (both f64).
const CPU_CHECK_TOL: f64 = 1e-9;

pub fn run(args: &RunArgs) -> Result<i32> {
    let rt = match (args.backend, args.op) {
        (Backend::Cpu, _) => None,
        (Backend::Gpu, Op::Sima) => Some(Runtime::new(args.device)?),
        (Backend::Gpu, op) => {
            return Err(Error::param(
                "backend",
                "gpu",
                format!(
                    "the GPU kernel for {} is not implemented yet (use --backend cpu)",
                    op.name()
                ),
            ))
        }
        (Backend::Auto, Op::Sima) => match Runtime::new(args.device) {
            Ok(rt) => Some(rt),
            Err(Error::NoDevice(why)) => {
                eprintln!(
                    "note: no CUDA device ({why}); running the CPU reference backend instead"
                );
                None
            }
            Err(e) => return Err(e),
        },
        (Backend::Auto, op) => {
            eprintln!(
                "note: no GPU kernel for {} yet; running the CPU reference backend",
                op.name()
            );
            None
        }
    };
    let p = Problem::load(args)?;
    println!(
        "op {}  shape {}  S {}  dv {}  dtype {}  layout {:?}  source {}",
        args.op.name(),
        p.dims,
        p.s,
        p.dv,
        p.dtype.name(),
        args.layout,
        args.input
            .as_ref()
            .map_or("random".into(), |f| f.display().to_string())
    );
    let Some(rt) = rt else {
        return run_cpu(args, &p);
    };
    if p.s != p.dims.n {
        return Err(Error::shape(
            "k",
            format!(
                "SimA is self-attention: S = {} must equal N = {}",
                p.s, p.dims.n
            ),
        ));
    }
    sima::workspace_bytes(p.dims, p.dv)?; // validates the shape before any allocation
    match p.dtype.storage() {
        Some(DType::F16) => run_gpu::<f16>(&rt, args, &p),
        Some(DType::BF16) => run_gpu::<bf16>(&rt, args, &p),
        Some(DType::F32) => run_gpu::<f32>(&rt, args, &p),
        None => Err(Error::param(
            "dtype",
            "f64",
            "the GPU takes f16, bf16 or f32 tensors",
        )),
    }
}

/// The inputs of one run, contiguous `[B,H,N,D]` f64 (values exactly those of the storage type).
struct Problem {
    op: Op,
    q: Vec<f64>,
    k: Vec<f64>,
    v: Vec<f64>,
    /// w (aft_full, aft_local), u (aft_conv) or landmarks (soft, given).
    extra: Option<Vec<f64>>,
    dims: Dims,
    s: usize,
    dv: usize,
    dtype: FileDType,
    /// AFT-local/conv window; SOFT landmarks and parameters.
    window: usize,
    soft: SoftParams,
}

impl Problem {
    fn load(args: &RunArgs) -> Result<Self> {
        match &args.input {
            Some(path) => Self::from_file(args, path),
            None => Self::random(args),
        }
    }

    fn random(args: &RunArgs) -> Result<Self> {
        let dims = args
            .shape
            .ok_or_else(|| Error::param("shape", "none", "give --shape B,H,N,D or --input FILE"))?;
        let dv = if args.op.is_aft() {
            dims.d
        } else {
            args.dv.unwrap_or(dims.d)
        };
        let s = if matches!(args.op, Op::Cosformer | Op::Softmax) {
            args.kv_len.unwrap_or(dims.n)
        } else {
            dims.n
        };
        let dtype = FileDType::from(args.dtype);
        let mut rng = Rng::new(args.seed);
        let mut fill = |arg: &'static str, dims: Dims| -> Result<Vec<f64>> {
            reference::check_len(arg, dims.numel().unwrap_or(0), dims)?;
            Ok((0..dims.numel().unwrap_or(0))
                .map(|_| dtype.round(rng.uniform(-1.0, 1.0)))
                .collect())
        };
        let (q, k, v) = (
            fill("q", dims)?,
            fill("k", Dims { n: s, ..dims })?,
            fill("v", Dims::new(dims.b, dims.h, s, dv))?,
        );
        let window = args.window.unwrap_or(64);
        let extra_dims = match args.op {
            Op::AftFull if dims.n.saturating_mul(dims.n) > MAX_RANDOM_W => {
                return Err(Error::param(
                    "shape",
                    dims,
                    "aft_full's random w [T,T] would not fit; use a smaller N",
                ))
            }
            Op::AftFull => Some(Dims::new(1, 1, dims.n, dims.n)),
            Op::AftLocal => Some(Dims::new(1, 1, dims.n, band(window)?)),
            Op::AftConv => Some(Dims::new(1, 1, dims.h, band(window)?)),
            Op::Soft if args.landmarks == LandmarkKind::Given => {
                Some(Dims::new(dims.b, dims.h, args.m, dims.d))
            }
            _ => None,
        };
        let extra = extra_dims
            .map(|e| fill(extra_name(args.op), e))
            .transpose()?;
        let soft = soft_params(args, dims.n, args.m)?;
        Ok(Problem {
            op: args.op,
            q,
            k,
            v,
            extra,
            dims,
            s,
            dv,
            dtype,
            window,
            soft,
        })
    }

    fn from_file(args: &RunArgs, path: &Path) -> Result<Self> {
        let file = TensorFile::read(path)?;
        let q = file.get("q")?;
        let dims = q.dims("q")?;
        let uses_k = args.op != Op::Soft || args.untied;
        let k = if uses_k { file.get("k")? } else { q };
        let kd = k.dims("k")?;
        if (kd.b, kd.h, kd.d) != (dims.b, dims.h, dims.d) {
            return Err(Error::shape(
                "k",
                format!(
                    "shape {:?} must be [{},{},S,{}] to match q",
                    k.shape, dims.b, dims.h, dims.d
                ),
            ));
        }
        let v = file.get("v")?;
        let vd = v.dims("v")?;
        if (vd.b, vd.h, vd.n) != (dims.b, dims.h, kd.n) {
            return Err(Error::shape(
                "v",
                format!(
                    "shape {:?} must be [{},{},{},Dv] to match q and k",
                    v.shape, dims.b, dims.h, kd.n
                ),
            ));
        }
        let (mut window, mut m) = (args.window.unwrap_or(64), args.m);
        let extra = match args.op {
            Op::AftFull => Some(expect(&file, "w", &[dims.n, dims.n])?),
            Op::AftLocal | Op::AftConv => {
                let name = extra_name(args.op);
                let t = file.get(name)?;
                let rows = if args.op == Op::AftLocal {
                    dims.n
                } else {
                    dims.h
                };
                window = window_of(name, t, rows, args.window)?;
                Some(t.data.clone())
            }
            Op::Soft if args.landmarks == LandmarkKind::Given => {
                let l = file.get("landmarks")?;
                let ld = l.dims("landmarks")?;
                m = ld.n;
                Some(expect(&file, "landmarks", &[dims.b, dims.h, m, dims.d])?)
            }
            _ => None,
        };
        let soft = soft_params(args, dims.n, m)?;
        let (q, k, v) = (q.data.clone(), k.data.clone(), v.data.clone());
        Ok(Problem {
            op: args.op,
            q,
            k,
            v,
            extra,
            dims,
            s: kd.n,
            dv: vd.d,
            dtype: file.get("q")?.dtype,
            window,
            soft,
        })
    }

    fn qkv(&self) -> Result<Qkv<'_>> {
        Qkv::new(&self.q, &self.k, &self.v, self.dims, self.s, self.dv)
    }

    /// Runs the op's linear form (the CPU backend) or its literal form.
    fn compute(&self, args: &RunArgs, literal: bool) -> Result<Vec<f64>> {
        use sofa::reference::{aft, cosformer, sima as rsima, soft, softmax};
        let x = self.qkv()?;
        let extra = self.extra.as_deref().unwrap_or(&[]);
        let aft_p = AftParams {
            causal: args.causal,
        };
        let bias = match self.op {
            Op::AftFull => Bias::Full(extra),
            Op::AftLocal => Bias::Local {
                w: extra,
                window: self.window,
            },
            Op::AftConv => Bias::Conv {
                u: extra,
                window: self.window,
            },
            _ => Bias::None,
        };
        match self.op {
            Op::Soft if literal => soft::literal(&x, self.extra.as_deref(), &self.soft),
            Op::Soft => soft::linear(&x, self.extra.as_deref(), &self.soft),
            Op::Cosformer => {
                let cp = CosformerParams {
                    m: args.big_m,
                    causal: args.causal,
                    relu: !args.no_relu,
                    eps: args.eps,
                };
                if literal {
                    cosformer::literal(&x, &cp)
                } else {
                    cosformer::linear(&x, &cp)
                }
            }
            Op::AftFull | Op::AftLocal | Op::AftSimple | Op::AftConv if literal => {
                aft::literal(&x, &bias, &aft_p)
            }
            Op::AftFull | Op::AftLocal | Op::AftSimple | Op::AftConv => {
                aft::linear(&x, &bias, &aft_p)
            }
            Op::Sima => {
                let x = Qkv::self_attn(&self.q, &self.k, &self.v, self.dims, self.dv)?;
                Ok(if literal {
                    rsima::literal
                } else {
                    rsima::linear
                }(x.q, x.k, x.v, self.dims, self.dv))
            }
            Op::Softmax => {
                let sp = SoftmaxParams {
                    causal: args.causal,
                    scale: args.scale,
                };
                if literal {
                    softmax::literal(&x, &sp)
                } else {
                    softmax::online(&x, &sp)
                }
            }
        }
    }

    /// Rough flops of the literal (quadratic) form, for `--check auto`.
    fn literal_flops(&self) -> f64 {
        let heads = (self.dims.b * self.dims.h) as f64;
        heads
            * (self.dims.n * self.s) as f64
            * (2 * (self.dims.d + self.dv) + self.soft.landmarks.count()) as f64
    }

    fn write_output(&self, path: &Path, o: Vec<f64>) -> Result<()> {
        let shape = vec![self.dims.b, self.dims.h, self.dims.n, self.dv];
        let mut file = TensorFile::default();
        file.tensors.insert(
            "o".into(),
            HostTensor {
                dtype: self.dtype,
                shape,
                data: o,
            },
        );
        file.write(path)?;
        println!(
            "output  wrote o [{},{},{},{}] {} to {}",
            self.dims.b,
            self.dims.h,
            self.dims.n,
            self.dv,
            self.dtype.name(),
            path.display()
        );
        Ok(())
    }
}

/// Band width `2s − 1` of window `s ≥ 1`.
fn band(window: usize) -> Result<usize> {
    match window.checked_mul(2) {
        Some(w2) if window >= 1 => Ok(w2 - 1),
        _ => Err(Error::param("window", window, "must be >= 1")),
    }
}

/// Name of the op's extra tensor.
fn extra_name(op: Op) -> &'static str {
    match op {
        Op::AftConv => "u",
        Op::Soft => "landmarks",
        _ => "w",
    }
}

/// The tensor `name` with exactly shape `want`.
fn expect(file: &TensorFile, name: &'static str, want: &[usize]) -> Result<Vec<f64>> {
    let t = file.get(name)?;
    t.expect_shape(name, want)?;
    Ok(t.data.clone())
}

/// Window s of a band tensor `[rows, 2s−1]`, checked against `--window` when given.
fn window_of(
    name: &'static str,
    t: &HostTensor,
    rows: usize,
    flag: Option<usize>,
) -> Result<usize> {
    let cols = match t.shape[..] {
        [r, c] if r == rows && c % 2 == 1 => c,
        _ => {
            return Err(Error::shape(
                name,
                format!("expected [{rows}, 2s-1] (odd width), got {:?}", t.shape),
            ))
        }
    };
    let s = cols.div_ceil(2);
    match flag {
        Some(f) if f != s => Err(Error::shape(
            name,
            format!("width {cols} means window {s}, but --window {f}"),
        )),
        _ => Ok(s),
    }
}

/// SOFT parameters from the flags (`m` already resolved for given landmarks).
fn soft_params(args: &RunArgs, n: usize, m: usize) -> Result<SoftParams> {
    let landmarks = match args.landmarks {
        LandmarkKind::Avgpool1d => Landmarks::AvgPool1d { m },
        LandmarkKind::Given => Landmarks::Given { m },
        LandmarkKind::Avgpool2d => {
            let height = args
                .height
                .unwrap_or((n as f64).sqrt().round() as usize)
                .max(1);
            Landmarks::AvgPool2d {
                height,
                width: n / height,
                r: args.pool,
            }
        }
    };
    Ok(SoftParams {
        landmarks,
        newton_iters: args.newton_iters,
        ridge: args.ridge,
        alpha_scale: args.alpha_scale,
        tied: !args.untied,
    })
}

fn run_cpu(args: &RunArgs, p: &Problem) -> Result<i32> {
    let t = Instant::now();
    let out = p.compute(args, false)?;
    let ms = t.elapsed().as_secs_f64() * 1e3;
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    println!("backend cpu (f64 linear form, {threads} threads)");
    println!(
        "time    {ms:.3} ms  ({:.3e} tokens/s)",
        (p.dims.b * p.dims.n) as f64 / (ms * 1e-3)
    );
    let finite = out.iter().all(|x| x.is_finite());
    println!("output  {} elements, all finite: {finite}", out.len());
    let check = match args.check {
        Check::Always => true,
        Check::Never => false,
        Check::Auto => p.literal_flops() <= CHECK_BUDGET_FLOPS,
    };
    let mut pass = finite;
    if check {
        let want = p.compute(args, true)?;
        let rel = reference::rel_frobenius(&out, &want);
        let ok = rel <= CPU_CHECK_TOL;
        println!("check   linear vs literal form: rel. Frobenius {rel:.3e} (tolerance {CPU_CHECK_TOL:.0e}): {}", verdict(ok));
        pass &= ok;
    } else {
        println!(
            "check   skipped (literal form ≈ {:.1e} flops; use --check always)",
            p.literal_flops()
        );
    }
    if let Some(path) = &args.output {
        p.write_output(path, out)?;
    }
    Ok(if pass { 0 } else { super::EXIT_CHECK_FAILED })
}

fn verdict(ok: bool) -> &'static str {
    if ok {
        "PASS"
    } else {
        "FAIL"
    }
}

/// Device copies of q, k, v in the requested layout.
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
        let span = |l: &Layout| {
            l.span()
                .ok_or_else(|| Error::param("shape", l.dims, "too large"))
        };
        let mut rng = Rng::new(seed);
        let (sq, sv) = (span(&lq)?, span(&lv)?);
        Ok(Inputs {
            q: rng.fill(sq, -1.0, 1.0),
            k: rng.fill(sq, -1.0, 1.0),
            v: rng.fill(sv, -1.0, 1.0),
            lq,
            lv,
        })
    }

    /// The problem's tensors (contiguous f64) scattered into `kind`.
    fn from_problem(p: &Problem, kind: LayoutKind) -> Self {
        let lq = Layout::of_kind(p.dims, kind);
        let lv = Layout::of_kind(p.dims.with_d(p.dv), kind);
        let put = |src: &[f64], l: &Layout| {
            let mut data = vec![T::default(); l.span().unwrap_or(0)];
            scatter(src, l, &mut data);
            data
        };
        Inputs {
            q: put(&p.q, &lq),
            k: put(&p.k, &lq),
            v: put(&p.v, &lv),
            lq,
            lv,
        }
    }

    fn reference(&self) -> Vec<f64> {
        let (q, k, v) = (
            gather(&self.q, &self.lq),
            gather(&self.k, &self.lq),
            gather(&self.v, &self.lv),
        );
        reference::sima::forward(&q, &k, &v, self.lq.dims, self.lv.dims.d)
    }
}

fn run_gpu<T: Element>(rt: &Runtime, args: &RunArgs, p: &Problem) -> Result<i32> {
    let (dims, dv) = (p.dims, p.dv);
    let stream = rt.new_stream()?;
    let inputs = match args.input {
        Some(_) => Inputs::<T>::from_problem(p, args.layout),
        None => Inputs::<T>::random(dims, dv, args.layout, args.seed)?,
    };
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
            TensorRef {
                data: &q,
                layout: inputs.lq,
            },
            TensorRef {
                data: &k,
                layout: inputs.lq,
            },
            TensorRef {
                data: &v,
                layout: inputs.lv,
            },
            TensorMut {
                data: o,
                layout: lo,
            },
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
    if let Some(path) = &args.output {
        p.write_output(path, got.clone())?;
    }

    let flops = reference::sima::flops(dims, dv);
    let check = match args.check {
        Check::Always => true,
        Check::Never => false,
        Check::Auto => flops <= CHECK_BUDGET_FLOPS,
    };
    let cmp = if check {
        let cmp = sofa::verify::compare::<T>(&got, &inputs.reference());
        println!("check   {cmp} vs f64 reference: {}", verdict(cmp.pass()));
        Some(cmp)
    } else {
        println!("check   skipped (reference would take {flops:.1e} flops; use --check always)");
        None
    };
    if let Some(path) = &args.json {
        let Dims { b, h, n, d } = dims;
        let record = sofa::bench::record::Record {
            op: "sima".into(),
            variant: String::new(),
            b,
            h,
            n,
            s: n,
            d,
            dv,
            dtype: T::DTYPE,
            layout: format!("{:?}", args.layout).to_lowercase(),
            timing,
            min_bytes: ((2 * d + 2 * dv) * b * h * n * T::DTYPE.size()) as f64,
            flops: reference::sima::flops(dims, dv),
            peaks: None,
            rel_err: cmp.map(|c| c.rel),
            err_bound: cmp.map(|c| c.bound),
            flush_l2: false,
            device: sofa::bench::record::Record::device(rt, "sima"),
        };
        super::append_line(path, &record.to_json())?;
    }
    Ok(match cmp {
        Some(c) if !c.pass() => super::EXIT_CHECK_FAILED,
        _ => 0,
    })
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
