//! `sofa run` on the GPU: every op with a kernel, on the problem's values laid out as asked
//! (`--layout`), the output poisoned first, timed with device events after warm-up, and checked
//! against the f64 reference on the same (storage-rounded) values.

use super::{verdict, Check, Op, Problem, RunArgs, CHECK_BUDGET_FLOPS};
use cudarc::driver::CudaSlice;
use sofa::bench::{time_on_stream, Timing};
use sofa::ops::{aft, cosformer, sima, soft, TensorMut, TensorRef};
use sofa::reference::{gather, scatter};
use sofa::{Dims, Element, Error, Layout, LayoutKind, Result, Runtime};

/// Whether `op` has a GPU kernel (softmax attention is a CPU reference and baseline only).
pub(super) fn has_kernel(op: Op) -> bool {
    op != Op::Softmax
}

/// Layouts of q, k, v, o in the requested memory order, rows `--seq-pad` elements apart.
fn layouts(p: &Problem, args: &RunArgs) -> [Layout; 4] {
    let Dims { b, h, n, d } = p.dims;
    let l = |n, d| {
        let mut l = Layout::of_kind(Dims::new(b, h, n, d), args.layout);
        if args.seq_pad > 0 {
            let (s, add, mul) = (&mut l.strides, usize::saturating_add, usize::saturating_mul);
            s.seq = add(s.seq, args.seq_pad);
            match args.layout {
                LayoutKind::Bhnd => {
                    s.head = mul(n, s.seq);
                    s.batch = mul(h, s.head);
                }
                LayoutKind::Bnhd => s.batch = mul(n, s.seq),
            }
        }
        l
    };
    [l(n, d), l(p.s, d), l(p.s, p.dv), l(n, p.dv)]
}

/// Elements of `data` outside `l`'s rows (the `--seq-pad` gaps) that are no longer NaN.
fn gap_writes<T: Element>(data: &[T], l: &Layout) -> usize {
    let Dims { b, h, n, d } = l.dims;
    let mut inside = vec![false; data.len()];
    for bi in 0..b {
        for hi in 0..h {
            for ni in 0..n {
                let off = l.offset(bi, hi, ni);
                inside[off..off + d].iter_mut().for_each(|x| *x = true);
            }
        }
    }
    data.iter()
        .zip(&inside)
        .filter(|(x, &inside)| !inside && !x.to_f64().is_nan())
        .count()
}

/// Scratch bytes of the op for this problem (also validates the shape before any allocation).
fn workspace_bytes(p: &Problem, args: &RunArgs) -> Result<usize> {
    match p.op {
        Op::Sima => {
            if p.s != p.dims.n {
                return Err(Error::shape(
                    "k",
                    format!(
                        "SimA is self-attention: S = {} must equal N = {}",
                        p.s, p.dims.n
                    ),
                ));
            }
            sima::workspace_bytes(p.dims, p.dv)
        }
        Op::Cosformer => cosformer::workspace_bytes(p.dims, p.s, p.dv, &p.cosformer(args)),
        Op::Soft => soft::workspace_bytes(p.dims, p.dv, &p.soft),
        Op::AftFull | Op::AftLocal | Op::AftSimple | Op::AftConv => {
            aft::workspace_bytes(p.dims, p.aft_variant(), &p.aft(args))
        }
        Op::Softmax => Err(Error::param("op", "softmax", "has no GPU kernel")),
    }
}

/// Bytes each tensor moves once: q, k (unless SOFT ties it to q), v, o, and the AFT bias (fp32).
fn min_bytes(p: &Problem, size: usize) -> f64 {
    let Dims { b, h, n, d } = p.dims;
    let k = if p.op == Op::Soft && p.soft.tied {
        0
    } else {
        p.s * d
    };
    let elems = b * h * (n * d + k + p.s * p.dv + n * p.dv);
    let bias = match p.op {
        Op::AftFull | Op::AftLocal | Op::AftConv => p.extra.as_ref().map_or(0, |e| e.len() * 4),
        _ => 0,
    };
    (elems * size + bias) as f64
}

pub(super) fn run<T: Element>(rt: &Runtime, args: &RunArgs, p: &Problem) -> Result<i32> {
    let [lq, lk, lv, lo] = layouts(p, args);
    let ws_bytes = workspace_bytes(p, args)?;
    let stream = rt.new_stream()?;
    let put = |src: &[f64], l: &Layout| -> Result<_> {
        let span = l
            .span()
            .ok_or_else(|| Error::param("shape", l.dims, "too large"))?;
        let mut host = vec![T::from_f64(f64::NAN); span]; // NaN in any --seq-pad gap
        scatter(src, l, &mut host);
        Ok(stream.clone_htod(&host)?)
    };
    let (q, k, v) = (put(&p.q, &lq)?, put(&p.k, &lk)?, put(&p.v, &lv)?);
    let mut o = put(&vec![f64::NAN; lo.dims.numel().unwrap_or(0)], &lo)?;
    let extra = match &p.extra {
        Some(e) => Some(stream.clone_htod(&e.iter().map(|&x| x as f32).collect::<Vec<f32>>())?),
        None => None,
    };
    let mut ws = rt.alloc::<u8>(&stream, ws_bytes)?;
    let (cp, ap) = (p.cosformer(args), p.aft(args));
    let call = |o: &mut CudaSlice<T>, ws: &mut CudaSlice<u8>| -> Result<()> {
        let r = |data, layout| TensorRef { data, layout };
        let (tq, tk, tv) = (r(&q, lq), r(&k, lk), r(&v, lv));
        let to = TensorMut {
            data: o,
            layout: lo,
        };
        let ws = Some(ws);
        match p.op {
            Op::Sima => sima::forward(rt, &stream, tq, tk, tv, to, ws),
            Op::Cosformer => cosformer::forward(rt, &stream, &cp, tq, tk, tv, to, ws),
            Op::Soft => {
                let tk = (!p.soft.tied).then_some(tk);
                soft::attention(rt, &stream, &p.soft, tq, tk, tv, to, extra.as_ref(), ws)
            }
            Op::Softmax => Err(Error::param("op", "softmax", "has no GPU kernel")),
            _ => aft::forward(
                rt,
                &stream,
                p.aft_variant(),
                &ap,
                tq,
                tk,
                tv,
                to,
                extra.as_ref(),
                ws,
            ),
        }
    };
    call(&mut o, &mut ws)?; // first call loads the kernels; checked, not timed
    let o_host = stream.clone_dtoh(&o)?;
    let got = gather(&o_host, &lo);
    let stray = gap_writes(&o_host, &lo);
    let timing = time_on_stream(&stream, args.warmup, args.iters, || call(&mut o, &mut ws))?;
    let i = rt.info();
    let family = p.op.family();
    println!(
        "backend gpu: {} (sm_{}{}), kernels from {}",
        i.name,
        i.compute_capability.0,
        i.compute_capability.1,
        rt.load_path(family).map_or("?".into(), |p| p.to_string())
    );
    let (bytes, flops) = (min_bytes(p, T::DTYPE.size()), p.linear_flops(args)?);
    print_timing(&timing, (p.dims.b * p.dims.n) as f64, bytes, flops);
    if args.seq_pad > 0 {
        println!(
            "gaps    {stray} elements of o's row gaps written: {}",
            verdict(stray == 0)
        );
    }
    if let Some(path) = &args.output {
        p.write_output(path, got.clone())?;
    }

    let check = match args.check {
        Check::Always => true,
        Check::Never => false,
        Check::Auto => flops <= CHECK_BUDGET_FLOPS,
    };
    let cmp = if check {
        let want = p.compute(args, false)?;
        let mut cmp = sofa::verify::compare::<T>(&got, &want);
        // Only a miss needs the (three fp32 evaluations') floor: it can only widen the bound.
        if !cmp.pass() && cmp.non_finite == 0 {
            if let Some(floor) = p.algorithm_floor(&want)? {
                cmp.admit_algorithm_floor(floor, sofa::verify::soft32::FLOOR_FACTOR);
            }
        }
        println!("check   {cmp} vs f64 reference: {}", verdict(cmp.pass()));
        Some(cmp)
    } else {
        println!("check   skipped (reference would take {flops:.1e} flops; use --check always)");
        None
    };
    if let Some(path) = &args.json {
        let Dims { b, h, n, d } = p.dims;
        let record = sofa::bench::record::Record {
            op: p.op.name().into(),
            variant: p.label(args),
            b,
            h,
            n,
            s: p.s,
            d,
            dv: p.dv,
            dtype: T::DTYPE,
            layout: format!("{:?}", args.layout).to_lowercase(),
            timing,
            min_bytes: bytes,
            flops,
            peaks: None,
            rel_err: cmp.map(|c| c.rel),
            err_bound: cmp.map(|c| c.bound),
            flush_l2: false,
            graph: false,
            speedup_vs_baseline: None,
            speedup_vs_softmax: None,
            device: sofa::bench::record::Record::device(rt, family),
        };
        super::super::append_line(path, &record.to_json())?;
    }
    Ok(match cmp {
        Some(c) if !c.pass() => super::super::EXIT_CHECK_FAILED,
        _ if stray > 0 => super::super::EXIT_CHECK_FAILED,
        _ => 0,
    })
}

fn print_timing(t: &Timing, tokens: f64, bytes: f64, flops: f64) {
    let s = t.median_ms * 1e-3;
    println!(
        "time    median {:.4} ms (p10 {:.4}, p90 {:.4}; {} runs)  {:.3e} tokens/s  {:.1} GB/s over min. bytes  {:.2} TFLOP/s",
        t.median_ms,
        t.p10_ms,
        t.p90_ms,
        t.runs,
        tokens / s,
        bytes / s / 1e9,
        flops / s / 1e12
    );
}
