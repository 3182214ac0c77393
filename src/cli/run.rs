//! `sofa run`: one operator on a safetensors file or random inputs; the CPU backend computes
//! the f64 linear form (multi-threaded), the GPU backend (every op but softmax, `run/gpu.rs`) is
//! timed and checked against the f64 reference.

mod gpu;

use half::{bf16, f16};
use sofa::io::{FileDType, HostTensor, TensorFile};
use sofa::ops::aft::Variant;
use sofa::reference::aft::{AftParams, Bias};
use sofa::reference::cosformer::CosformerParams;
use sofa::reference::soft::{Landmarks, SoftParams};
use sofa::reference::softmax::SoftmaxParams;
use sofa::reference::{self, Qkv, Rng};
use sofa::{DType, Dims, Error, LayoutKind, Result, Runtime};
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

    /// The kernel family (kernels/<family>.cu) that runs the op on the GPU.
    fn family(self) -> &'static str {
        if self.is_aft() {
            "aft"
        } else {
            self.name()
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
    /// GPU: E extra elements after every row (sequence stride D + E, or H·D + E for bnhd), as in a
    /// slice of a fused buffer. The gaps hold NaN: an output that reads them, or a write into o's
    /// gaps, fails the run.
    #[arg(long, default_value_t = 0)]
    seq_pad: usize,
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
    /// cosFormer: q and k are already non-negative features (skip ReLU; random q, k are drawn from
    /// [0, 1)).
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
    let rt = match (args.backend, gpu::has_kernel(args.op)) {
        (Backend::Cpu, _) => None,
        (Backend::Gpu, true) => Some(Runtime::new(args.device)?),
        (Backend::Gpu, false) => {
            return Err(Error::param(
                "backend",
                "gpu",
                format!(
                    "{} has no GPU kernel (it is a reference and baseline); use --backend cpu",
                    args.op.name()
                ),
            ))
        }
        (Backend::Auto, true) => match Runtime::new(args.device) {
            Ok(rt) => Some(rt),
            Err(Error::NoDevice(why)) => {
                eprintln!(
                    "note: no CUDA device ({why}); running the CPU reference backend instead"
                );
                None
            }
            Err(e) => return Err(e),
        },
        (Backend::Auto, false) => {
            eprintln!(
                "note: no GPU kernel for {}; running the CPU reference backend",
                args.op.name()
            );
            None
        }
    };
    let mut p = Problem::load(args)?;
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
    // The GPU takes the bias / given landmarks in fp32: the reference sees the same values.
    if let Some(e) = p.extra.as_mut() {
        e.iter_mut().for_each(|x| *x = *x as f32 as f64);
    }
    match p.dtype.storage() {
        Some(DType::F16) => gpu::run::<f16>(&rt, args, &p),
        Some(DType::BF16) => gpu::run::<bf16>(&rt, args, &p),
        Some(DType::F32) => gpu::run::<f32>(&rt, args, &p),
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
        let mut fill = |arg: &'static str, dims: Dims, lo: f64| -> Result<Vec<f64>> {
            reference::check_len(arg, dims.numel().unwrap_or(0), dims)?;
            Ok((0..dims.numel().unwrap_or(0))
                .map(|_| dtype.round(rng.uniform(lo, 1.0)))
                .collect())
        };
        // cosFormer without ReLU takes q, k as features, which SPEC §2 requires non-negative.
        let qk_lo = if args.op == Op::Cosformer && args.no_relu {
            0.0
        } else {
            -1.0
        };
        let (q, k, v) = (
            fill("q", dims, qk_lo)?,
            fill("k", Dims { n: s, ..dims }, qk_lo)?,
            fill("v", Dims::new(dims.b, dims.h, s, dv), -1.0)?,
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
            .map(|e| fill(extra_name(args.op), e, -1.0))
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

    fn cosformer(&self, args: &RunArgs) -> CosformerParams {
        CosformerParams {
            m: args.big_m,
            causal: args.causal,
            relu: !args.no_relu,
            eps: args.eps,
        }
    }

    fn aft(&self, args: &RunArgs) -> AftParams {
        AftParams {
            causal: args.causal,
        }
    }

    /// The AFT variant (simple for non-AFT ops, which never ask).
    fn aft_variant(&self) -> Variant {
        let window = self.window;
        match self.op {
            Op::AftFull => Variant::Full,
            Op::AftLocal => Variant::Local { window },
            Op::AftConv => Variant::Conv { window },
            _ => Variant::Simple,
        }
    }

    /// The AFT bias for the reference.
    fn bias(&self) -> Bias<'_> {
        let extra = self.extra.as_deref().unwrap_or(&[]);
        let window = self.window;
        match self.op {
            Op::AftFull => Bias::Full(extra),
            Op::AftLocal => Bias::Local { w: extra, window },
            Op::AftConv => Bias::Conv { u: extra, window },
            _ => Bias::None,
        }
    }

    /// The record's variant label: "causal", "s=64", "m=64", joined by commas.
    fn label(&self, args: &RunArgs) -> String {
        let mut parts = Vec::new();
        if args.causal {
            parts.push("causal".to_string());
        }
        match self.op {
            Op::AftLocal | Op::AftConv => parts.push(format!("s={}", self.window)),
            Op::Soft => parts.push(format!("m={}", self.soft.landmarks.count())),
            _ => {}
        }
        parts.join(",")
    }

    /// FLOPs of the op's linear form (what the GPU computes and the check costs).
    fn linear_flops(&self, args: &RunArgs) -> Result<f64> {
        use sofa::reference::{aft, cosformer, sima, soft, softmax};
        let x = self.qkv()?;
        Ok(match self.op {
            Op::Sima => sima::flops(self.dims, self.dv),
            Op::Cosformer => cosformer::flops(&x),
            Op::Soft => soft::flops(&x, &self.soft),
            Op::Softmax => softmax::flops(&x),
            _ => {
                let _ = args;
                aft::flops(&x, &self.bias())
            }
        })
    }

    fn qkv(&self) -> Result<Qkv<'_>> {
        Qkv::new(&self.q, &self.k, &self.v, self.dims, self.s, self.dv)
    }

    /// The error of the op's own algorithm evaluated in fp32 on the CPU against `want`, where that
    /// can exceed the storage-type bound (SOFT: the fp32 Newton iteration on a nearly singular A).
    fn algorithm_floor(&self, want: &[f64]) -> Result<Option<f64>> {
        use sofa::verify::soft32::{attention_floor, Step};
        Ok(match self.op {
            Op::Soft => Some(attention_floor(
                &self.qkv()?,
                self.extra.as_deref(),
                &self.soft,
                Step::TwoZMinusZaz,
                want,
            )),
            _ => None,
        })
    }

    /// Runs the op's linear form (the CPU backend) or its literal form.
    fn compute(&self, args: &RunArgs, literal: bool) -> Result<Vec<f64>> {
        use sofa::reference::{aft, cosformer, sima as rsima, soft, softmax};
        let x = self.qkv()?;
        let (aft_p, bias) = (self.aft(args), self.bias());
        match self.op {
            Op::Soft if literal => soft::literal(&x, self.extra.as_deref(), &self.soft),
            Op::Soft => soft::linear(&x, self.extra.as_deref(), &self.soft),
            Op::Cosformer => {
                let cp = self.cosformer(args);
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
