//! `sofa bench`: sweeps of GPU operators over sequence lengths, with the roofline of each run
//! and, with `--baseline`, the cuBLAS references timed beside each op on the same inputs.

use indicatif::{ProgressBar, ProgressStyle};
use sofa::baseline::Blas;
use sofa::bench::baseline::BaselineCase;
use sofa::bench::fits;
use sofa::bench::record::Record;
use sofa::bench::roofline::Peaks;
use sofa::bench::timer::{Measured, Timer};
use sofa::bench::workload::{BenchOp, Case, Runner, Workload, NEWTON_PATHS};
use sofa::tensor::parse_count;
use sofa::{DType, Dims, Error, Result, Runtime};
use std::collections::{HashMap, HashSet};
use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    Table,
    Json,
    Csv,
}

#[derive(clap::Args)]
pub struct BenchArgs {
    /// Operator to sweep: sima, cosformer, cosformer_decode (one decode step of B·H sequences
    /// against their fp32 states; --seq does not apply), soft, soft_newton (SOFT's Newton
    /// pseudo-inverse alone, B·H matrices of m×m for each --landmarks m; --seq, --head-dim and
    /// --dtype do not apply), aft_simple, aft_local, aft_conv, aft_full, or all (comma-separated
    /// list accepted).
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
    /// Also time each op's cuBLAS-composed baseline (`baseline:<op>`) on the same inputs and
    /// cuBLAS softmax attention (`softmax`) on the same shape, and report the speedups.
    /// References that do not support a case or do not fit in memory are skipped with a note.
    #[arg(long)]
    baseline: bool,
    /// Time launches of one CUDA graph captured from a call instead of eager calls (falls back
    /// to eager calls, with a note, where a call cannot be captured).
    #[arg(long)]
    graph: bool,
    /// Causal cosFormer through the separate reduce → scan → causal launches instead of the
    /// chained launch where a plan would take it (records labelled `separate`), to compare them;
    /// non-causal cosFormer is then not run.
    #[arg(long)]
    no_chain: bool,
    /// Causal cosFormer chunks of this many rows (a multiple of 64) instead of the plan's
    /// (records labelled `rows=N`; chained where allowed), to tune the chunking; non-causal
    /// cosFormer is then not run.
    #[arg(long)]
    chunk_rows: Option<usize>,
    /// soft_newton: the Newton paths to time, comma-separated: auto (the plain call's), one-launch
    /// (the cluster of 8 CTAs per matrix where it applies, as cluster-async, else one CTA),
    /// cluster-early (the cluster with remote stores and a cluster barrier per step), cluster-late
    /// (the same, arriving on the barrier one product later), cluster-async (all-gathering with
    /// st.async into mbarriers, no cluster barrier per step), cta (one CTA per matrix), multi
    /// (one launch per GEMM). Records other than auto's are labelled `path=…`.
    #[arg(long, default_value = "auto")]
    newton_path: String,
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
    let newton_paths = a
        .newton_path
        .split(',')
        .map(|name| {
            NEWTON_PATHS
                .iter()
                .find(|(n, _)| *n == name.trim())
                .map(|(_, p)| *p)
                .ok_or_else(|| {
                    let names: Vec<&str> = NEWTON_PATHS.iter().map(|(n, _)| *n).collect();
                    Error::param("newton-path", name, format!("expected one of {names:?}"))
                })
        })
        .collect::<Result<Vec<_>>>()?;
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
            BenchOp::Soft | BenchOp::SoftNewton => landmarks.iter().map(|&m| (64, m)).collect(),
            _ => vec![(64, 64)],
        };
        if op == BenchOp::SoftNewton {
            // B·H fp32 m×m matrices: no sequence length, head dim or storage type.
            for &(_, m) in &extents {
                for &path in &newton_paths {
                    let dims = Dims::new(a.batch, a.heads, m, m);
                    let mut case = Case::new(op, dims, DType::F32, false);
                    case.landmarks = m;
                    case.newton_path = path;
                    out.push(case);
                }
            }
            continue;
        }
        if op == BenchOp::CosformerDecode {
            // One token per sequence: no sequence length.
            for &dtype in &dtypes {
                let dims = Dims::new(a.batch, a.heads, 1, a.head_dim);
                out.push(Case::new(op, dims, dtype, false));
            }
            continue;
        }
        // --no-chain and --chunk-rows select causal cosFormer variants: its non-causal cases
        // (the same as without them) are left out.
        let causal_variant = a.no_chain || a.chunk_rows.is_some();
        for causal in [false, true] {
            if causal && !(a.causal && op.has_causal()) {
                continue;
            }
            if !causal && causal_variant && op == BenchOp::Cosformer {
                continue;
            }
            for &(window, m) in &extents {
                for &dtype in &dtypes {
                    for &n in &seqs {
                        let dims = Dims::new(a.batch, a.heads, n, a.head_dim);
                        let mut case = Case::new(op, dims, dtype, causal);
                        case.window = window;
                        case.landmarks = m;
                        case.chained = !a.no_chain;
                        case.chunk_rows = a.chunk_rows;
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
    // SAFETY: every buffer of the sweep is allocated, used and freed on the one stream below, so
    // cudarc's cross-stream event tracking has nothing to order; without it the buffers can be
    // captured into CUDA graphs (no waits on events recorded outside the capture).
    unsafe { rt.context().disable_event_tracking() };
    let stream = rt.new_stream()?;
    let bar = ProgressBar::new(cases.len() as u64);
    bar.set_style(ProgressStyle::with_template("{bar:30} {pos}/{len} {msg}").expect("template"));
    let mut sweep = Sweep {
        a,
        timer: Timer::new(&rt, &stream, a.warmup, a.iters, a.flush_l2, a.graph)?,
        peaks: None,
        blas: None,
        rt,
        stream,
        bar,
        said: HashSet::new(),
        softmax: HashMap::new(),
        probed: HashSet::new(),
    };
    sweep.start()?;
    for (i, case) in cases.iter().enumerate() {
        let label = case.label();
        sweep
            .bar
            .set_message(format!("{} N={} {label}", case.op.name(), case.dims.n));
        sweep.case(*case, i as u64)?;
        sweep.bar.inc(1);
    }
    sweep.bar.finish_and_clear();
    std::io::stdout().flush().ok();
    Ok(0)
}

/// A sweep in progress: the device, the timer, the progress bar and what was said already.
struct Sweep<'a> {
    a: &'a BenchArgs,
    rt: Arc<Runtime>,
    stream: Arc<cudarc::driver::CudaStream>,
    timer: Timer,
    peaks: Option<Peaks>,
    /// The cuBLAS handle of the references (`--baseline`).
    blas: Option<Arc<Blas>>,
    bar: ProgressBar,
    /// Notes printed so far (each is printed once).
    said: HashSet<String>,
    /// Softmax medians by (dims, dtype, causal), measured once per run; `None` = skipped.
    softmax: HashMap<(Dims, DType, bool), Option<f64>>,
    /// Newton batch sizes whose cluster synchronization was probed.
    probed: HashSet<usize>,
}

/// `[B,H,N,D]` plus the variant label, for notes.
fn describe(dims: Dims, label: &str) -> String {
    if label.is_empty() {
        dims.to_string()
    } else {
        format!("{dims} {label}")
    }
}

fn gb(bytes: usize) -> String {
    format!("{:.1} GB", bytes as f64 / 1e9)
}

impl Sweep<'_> {
    /// Measures the ceilings, makes the cuBLAS handle, prints the header.
    fn start(&mut self) -> Result<()> {
        let info = self.rt.info().clone();
        let (major, minor) = info.compute_capability;
        self.say(format!(
            "device: {} (sm_{major}{minor}, driver {})",
            info.name, info.driver_version
        ));
        if info.is_simulator() {
            self.note("the CPU simulator (sim/): its times are not GPU times".into());
        }
        if !self.a.no_peaks {
            match Peaks::measure(&self.rt, &self.stream) {
                Ok(p) => {
                    self.say(format!(
                        "peaks: copy {:.0} GB/s, f16 GEMM {:.0} TFLOP/s, empty launch pair {:.1} µs",
                        p.copy_gb_per_s, p.gemm_tflop_per_s, p.launch_pair_us
                    ));
                    self.peaks = Some(p);
                }
                Err(e) => self.note(format!("peaks not measured ({e}); no % of roofline")),
            }
        }
        if self.a.baseline {
            match Blas::new(&self.stream) {
                Ok(b) => self.blas = Some(Arc::new(b)),
                Err(e) => self.note(format!("no cuBLAS references ({e})")),
            }
        }
        match self.a.format {
            Format::Table => self.print(&Record::table_header()),
            Format::Csv => self.print(Record::CSV_HEADER),
            Format::Json => {}
        }
        Ok(())
    }

    /// A line on stderr, above the progress bar, once per distinct text.
    fn say(&mut self, line: String) {
        if self.said.insert(line.clone()) {
            self.bar.suspend(|| eprintln!("{line}"));
        }
    }

    fn note(&mut self, msg: String) {
        self.say(format!("note: {msg}"));
    }

    /// A line on stdout, above the progress bar.
    fn print(&self, line: &str) {
        self.bar.suspend(|| println!("{line}"));
    }

    /// Appends a record to `--out` and prints it in the chosen format.
    fn emit(&self, rec: &Record) -> Result<()> {
        if let Some(path) = &self.a.out {
            super::append_line(path, &rec.to_json())?;
        }
        self.print(&match self.a.format {
            Format::Json => rec.to_json(),
            Format::Csv => rec.to_csv(),
            Format::Table => rec.to_table_row(),
        });
        Ok(())
    }

    /// Checks that `need` bytes fit, builds the workload, runs it once (loading its kernels),
    /// then times it. `Ok(None)` after a note when it does not fit or its allocation fails.
    fn measure(
        &mut self,
        what: &str,
        need: usize,
        build: impl FnOnce() -> Result<Runner>,
    ) -> Result<Option<Measured>> {
        // The previous workload's buffers were freed stream-ordered; a synchronization hands
        // them back to the device before its free memory is read.
        self.stream.synchronize()?;
        let (free, _) = self.rt.context().mem_get_info()?;
        if !fits(need, free) {
            self.note(format!(
                "skip {what}: needs {}, {} free",
                gb(need),
                gb(free)
            ));
            return Ok(None);
        }
        let mut run = match build() {
            Err(Error::OutOfMemory { bytes }) => {
                self.note(format!(
                    "skip {what}: out of memory allocating {}",
                    gb(bytes)
                ));
                return Ok(None);
            }
            built => built?,
        };
        run()?;
        let m = self.timer.time(&mut *run)?;
        if let Some(why) = &m.note {
            self.note(format!("{what}: {why}"));
        }
        Ok(Some(m))
    }

    /// One sofa op on one case, then (`--baseline`) its references; the op's record first.
    fn case(&mut self, case: Case, seed: u64) -> Result<()> {
        let what = format!("{} {}", case.op.name(), describe(case.dims, &case.label()));
        if let Err(e) = case.check_newton_path(self.rt.info().smem_per_block_optin) {
            // A path asked for by name that this m or device does not allow.
            self.note(format!("skip {what}: {e}"));
            return Ok(());
        }
        let (rt, stream) = (self.rt.clone(), self.stream.clone());
        let build = || Ok(Workload::new(&rt, &stream, case, seed)?.into_runner());
        let Some(op) = self.measure(&what, case.device_bytes()?, build)? else {
            return Ok(());
        };
        let mut rec = self.record(case.op.name().into(), case.label(), &case, &op);
        (rec.min_bytes, rec.flops) = (case.min_bytes(), case.flops());
        rec.device = Record::device(&self.rt, case.op.family());
        let mut references = Vec::new();
        if self.blas.is_some() {
            let ms = op.timing.median_ms;
            match BaselineCase::composed(case) {
                Some(bc) => {
                    if let Some((m, r)) = self.reference(bc, seed) {
                        rec.speedup_vs_baseline = Some(m.timing.median_ms / ms);
                        references.push(r);
                    }
                }
                None => self.note(format!(
                    "{} has no cuBLAS-composed baseline (no speedup_vs_baseline)",
                    case.op.name()
                )),
            }
            if case.op.has_seq() {
                let softmax = BaselineCase::softmax(case);
                let key = softmax.softmax_key();
                let median = match self.softmax.get(&key) {
                    Some(&median) => median,
                    None => {
                        let m = self.reference(softmax, seed);
                        let median = m.as_ref().map(|(m, _)| m.timing.median_ms);
                        references.extend(m.map(|(_, r)| r));
                        self.softmax.insert(key, median);
                        median
                    }
                };
                rec.speedup_vs_softmax = median.map(|s| s / ms);
            }
        }
        if case.op == BenchOp::CosformerDecode {
            // Issue 5: µs per step (events around each call, so the launch gap is inside) and
            // the share of the copy rate for the state's bytes.
            let copy = self.peaks.map(|p| p.copy_gb_per_s);
            let gbs = rec.gb_per_s();
            self.say(format!(
                "cosformer_decode B={} H={} D={} {}: {:.2} µs per step, {:.0} GB/s over the state{}",
                case.dims.b,
                case.dims.h,
                case.dims.d,
                case.dtype.name(),
                op.timing.median_ms * 1e3,
                gbs,
                copy.map_or(String::new(), |c| format!(" ({:.0} % of the copy rate)", 100.0 * gbs / c))
            ));
        }
        if case.op == BenchOp::SoftNewton {
            // No attention to compare with; issue 4 asks for the time per matrix.
            let per = |ms: f64| ms * 1e3 / (case.dims.b * case.dims.h) as f64;
            let cublas = references.first().map(|r| per(r.timing.median_ms));
            self.say(format!(
                "soft_newton {}: {:.2} µs per matrix{}",
                case.label(),
                per(op.timing.median_ms),
                cublas.map_or(String::new(), |u| format!(" (cuBLAS loop {u:.2})"))
            ));
            self.newton_probe(case.dims.b * case.dims.h)?;
        }
        self.emit(&rec)?;
        references.iter().try_for_each(|r| self.emit(r))
    }

    /// The Newton cluster kernel's synchronization, once per batch size: a note, and with `--out`
    /// a `newton_cluster_probe` line with the device fields.
    fn newton_probe(&mut self, batch: usize) -> Result<()> {
        if !self.probed.insert(batch) {
            return Ok(());
        }
        // 400-step launches would take minutes on the simulator, whose times mean nothing.
        let steps = if self.rt.info().is_simulator() {
            2
        } else {
            400
        };
        let probe = sofa::bench::probe::newton_cluster_step(&self.rt, &self.stream, batch, steps);
        let p = match probe {
            Ok(Some(p)) => p,
            Ok(None) => return Ok(()),
            Err(e) => {
                self.note(format!("Newton cluster probe failed: {e}"));
                return Ok(());
            }
        };
        let fmas = sofa::bench::probe::PROBE_FMAS;
        self.note(format!(
            "Newton cluster step, {batch} clusters of 8 CTAs (µs per step): all-gather + barriers \
             alone {:.3}; {fmas} FMAs per thread alone {:.3}; both, FMAs between arrive and wait \
             (as newton_pinv_cl_f32) {:.3}; FMAs before the arrive {:.3}; st.async all-gather \
             alone {:.3}; with the FMAs between sends and wait (as newton_pinv_cl_async_f32) {:.3}",
            p.sync_alone,
            p.fmas_alone,
            p.arrive_early,
            p.arrive_late,
            p.gather_alone,
            p.gather_overlap
        ));
        if let Some(path) = &self.a.out {
            let mut line = serde_json::json!({
                "op": "newton_cluster_probe", "clusters": batch, "fmas_per_thread": fmas,
                "sync_alone_us": p.sync_alone, "fmas_alone_us": p.fmas_alone,
                "arrive_early_us": p.arrive_early, "arrive_late_us": p.arrive_late,
                "gather_alone_us": p.gather_alone, "gather_overlap_us": p.gather_overlap,
            });
            Record::add_device_fields(&mut line, &Record::device(&self.rt, "newton"));
            super::append_line(path, &line.to_string())?;
        }
        Ok(())
    }

    /// Measures a cuBLAS reference; anything that keeps it from running is a note, not an error.
    fn reference(&mut self, bc: BaselineCase, seed: u64) -> Option<(Measured, Record)> {
        let blas = self.blas.clone()?;
        let what = format!("{} {}", bc.name(), describe(bc.case.dims, &bc.label()));
        let rt = self.rt.clone();
        let measured = bc
            .device_bytes()
            .and_then(|need| self.measure(&what, need, || bc.workload(&rt, &blas, seed)));
        let m = match measured {
            Ok(m) => m?,
            Err(e) => {
                self.note(format!("skip {what}: {e}"));
                return None;
            }
        };
        let mut rec = self.record(bc.name(), bc.label(), &bc.case, &m);
        (rec.min_bytes, rec.flops) = (bc.min_bytes(), bc.flops());
        Some((m, rec))
    }

    /// The record of a measurement on `case`'s shape; bytes and FLOPs are the caller's to fill,
    /// the device fields name the baseline kernel family unless the caller says otherwise.
    fn record(&self, op: String, variant: String, case: &Case, m: &Measured) -> Record {
        let Dims { b, h, n, d } = case.dims;
        Record {
            op,
            variant,
            b,
            h,
            n,
            s: n,
            d,
            dv: d,
            dtype: case.dtype,
            layout: "bhnd".into(),
            timing: m.timing,
            min_bytes: 0.0,
            flops: 0.0,
            peaks: self.peaks,
            rel_err: None,
            err_bound: None,
            flush_l2: self.a.flush_l2,
            graph: m.graph,
            speedup_vs_baseline: None,
            speedup_vs_softmax: None,
            device: Record::device(&self.rt, "baseline"),
        }
    }
}
