//! `sofa bench`: sweeps of GPU operators over sequence lengths, with the roofline of each run.

use indicatif::{ProgressBar, ProgressStyle};
use sofa::bench::record::Record;
use sofa::bench::roofline::Peaks;
use sofa::bench::time_with_setup;
use sofa::bench::workload::{BenchOp, Case, Workload};
use sofa::tensor::parse_count;
use sofa::{DType, Dims, Error, Result, Runtime};
use std::io::Write;
use std::path::PathBuf;

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    Table,
    Json,
    Csv,
}

#[derive(clap::Args)]
pub struct BenchArgs {
    /// Operator to sweep: sima, cosformer, soft, aft_simple, aft_local, aft_conv, aft_full, or
    /// all (comma-separated list accepted).
    #[arg(long, default_value = "all")]
    op: String,
    /// AFT-local/conv windows s, comma-separated (SPEC §6: 64, 256).
    #[arg(long, default_value = "64")]
    window: String,
    /// SOFT landmark counts m, comma-separated (SPEC §6: 49, 64, 128, 256).
    #[arg(long, default_value = "64")]
    landmarks: String,
    /// Also the causal variant of ops that have one.
    #[arg(long)]
    causal: bool,
    /// Sequence lengths (k/M suffixes).
    #[arg(long, default_value = "1k,4k,16k,64k,256k,1M")]
    seq: String,
    #[arg(long, default_value_t = 1)]
    batch: usize,
    #[arg(long, default_value_t = 16)]
    heads: usize,
    #[arg(long, default_value_t = 64)]
    head_dim: usize,
    /// Storage types, comma-separated.
    #[arg(long, default_value = "f16")]
    dtype: String,
    #[arg(long, value_enum, default_value_t = Format::Table)]
    format: Format,
    /// Append one JSON line per run to this file (written as each run finishes).
    #[arg(long)]
    out: Option<PathBuf>,
    #[arg(long, default_value_t = 30)]
    iters: usize,
    #[arg(long, default_value_t = 5)]
    warmup: usize,
    /// Overwrite a buffer twice the L2 size before every timed run.
    #[arg(long)]
    flush_l2: bool,
    /// Skip measuring the copy and GEMM peaks (no % of roofline then).
    #[arg(long)]
    no_peaks: bool,
    #[arg(long, default_value_t = 0)]
    device: usize,
}

/// A comma-separated list of counts (k/M suffixes accepted).
fn counts(arg: &'static str, list: &str) -> Result<Vec<usize>> {
    list.split(',')
        .map(|s| {
            parse_count(s.trim()).ok_or_else(|| Error::param(arg, s, "expected a count like 4k"))
        })
        .collect()
}

fn ops(list: &str) -> Result<Vec<BenchOp>> {
    if list == "all" {
        return Ok(BenchOp::ALL.to_vec());
    }
    let names: Vec<&str> = BenchOp::ALL.iter().map(|o| o.name()).collect();
    list.split(',')
        .map(|name| {
            BenchOp::ALL
                .into_iter()
                .find(|o| o.name() == name.trim())
                .ok_or_else(|| {
                    Error::param(
                        "op",
                        name,
                        format!("GPU sweeps exist for {}, all", names.join(", ")),
                    )
                })
        })
        .collect()
}

fn cases(a: &BenchArgs) -> Result<Vec<Case>> {
    let seqs = counts("seq", &a.seq)?;
    let windows = counts("window", &a.window)?;
    let landmarks = counts("landmarks", &a.landmarks)?;
    let dtypes = a
        .dtype
        .split(',')
        .map(|s| s.trim().parse())
        .collect::<Result<Vec<DType>>>()?;
    let mut out = Vec::new();
    for op in ops(&a.op)? {
        // One pass per window (AFT-local/conv) or landmark count (SOFT); one for other ops.
        let extents: Vec<(usize, usize)> = match op {
            BenchOp::AftLocal | BenchOp::AftConv => windows.iter().map(|&s| (s, 64)).collect(),
            BenchOp::Soft => landmarks.iter().map(|&m| (64, m)).collect(),
            _ => vec![(64, 64)],
        };
        for causal in [false, true] {
            if causal && !(a.causal && op.has_causal()) {
                continue;
            }
            for &(window, m) in &extents {
                for &dtype in &dtypes {
                    for &n in &seqs {
                        let dims = Dims::new(a.batch, a.heads, n, a.head_dim);
                        let mut case = Case::new(op, dims, dtype, causal);
                        case.window = window;
                        case.landmarks = m;
                        out.push(case);
                    }
                }
            }
        }
    }
    Ok(out)
}

pub fn bench(a: &BenchArgs) -> Result<i32> {
    let cases = cases(a)?;
    let rt = Runtime::new(a.device)?;
    let stream = rt.new_stream()?;
    let peaks = if a.no_peaks {
        None
    } else {
        match Peaks::measure(&rt, &stream) {
            Ok(p) => {
                eprintln!(
                    "peaks: copy {:.0} GB/s, f16 GEMM {:.0} TFLOP/s",
                    p.copy_gb_per_s, p.gemm_tflop_per_s
                );
                Some(p)
            }
            Err(e) => {
                eprintln!("note: peaks not measured ({e}); no % of roofline");
                None
            }
        }
    };
    let mut flush = if a.flush_l2 {
        Some(rt.alloc::<u8>(&stream, 2 * rt.info().l2_bytes.max(1))?)
    } else {
        None
    };
    let bar = ProgressBar::new(cases.len() as u64);
    bar.set_style(ProgressStyle::with_template("{bar:30} {pos}/{len} {msg}").expect("template"));
    match a.format {
        Format::Table => bar.println(format!(
            "{:<10} {:<7} {:>3} {:>3} {:>8} {:>4} {:>5} {:>10} {:>11} {:>8} {:>8} {:>6}",
            "op",
            "variant",
            "B",
            "H",
            "N",
            "D",
            "dtype",
            "ms",
            "tokens/s",
            "GB/s",
            "TFLOP/s",
            "%roof"
        )),
        Format::Csv => bar.println(Record::CSV_HEADER),
        Format::Json => {}
    }
    for (i, case) in cases.iter().enumerate() {
        bar.set_message(format!("{} N={}", case.op.name(), case.dims.n));
        let (free, _) = rt.context().mem_get_info()?;
        let need = case.device_bytes()?;
        if need > free / 10 * 9 {
            bar.println(format!(
                "skip {} {}: needs {:.1} GB, {:.1} GB free",
                case.op.name(),
                case.dims,
                need as f64 / 1e9,
                free as f64 / 1e9
            ));
            bar.inc(1);
            continue;
        }
        let mut w = Workload::new(&rt, &stream, *case, i as u64)?;
        w.run()?; // loads the kernels
        let timing = time_with_setup(
            &stream,
            a.warmup,
            a.iters,
            || match flush.as_mut() {
                Some(f) => Ok(stream.memset_zeros(f)?),
                None => Ok(()),
            },
            || w.run(),
        )?;
        drop(w);
        let Dims { b, h, n, d } = case.dims;
        let rec = Record {
            op: case.op.name().into(),
            variant: case.label(),
            b,
            h,
            n,
            s: n,
            d,
            dv: d,
            dtype: case.dtype,
            layout: "bhnd".into(),
            timing,
            min_bytes: case.min_bytes(),
            flops: case.flops(),
            peaks,
            rel_err: None,
            err_bound: None,
            flush_l2: a.flush_l2,
            device: Record::device(&rt, case.op.name()),
        };
        if let Some(path) = &a.out {
            super::append_line(path, &rec.to_json())?;
        }
        bar.println(match a.format {
            Format::Json => rec.to_json(),
            Format::Csv => rec.to_csv(),
            Format::Table => format!(
                "{:<10} {:<7} {:>3} {:>3} {:>8} {:>4} {:>5} {:>10.4} {:>11.3e} {:>8.0} {:>8.2} {:>6}",
                rec.op,
                rec.variant,
                b,
                h,
                n,
                d,
                rec.dtype.name(),
                rec.timing.median_ms,
                rec.tokens_per_s(),
                rec.gb_per_s(),
                rec.tflop_per_s(),
                rec.pct_roofline().map_or("-".into(), |p| format!("{p:.0}"))
            ),
        });
        bar.inc(1);
    }
    bar.finish_and_clear();
    std::io::stdout().flush().ok();
    Ok(0)
}
