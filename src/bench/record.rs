//! One measurement = one JSON line (the schema of `bench/results/*.jsonl`), one CSV row, or one
//! table row.
//!
//! Op names: a sofa operator by its own name (`sima`, `cosformer`, `soft`, `aft_local`, …); its
//! cuBLAS-composed baseline (`crate::baseline`, SPEC §5) as `baseline:<op>` (`baseline:sima`,
//! `baseline:aft_full`, …); cuBLAS softmax attention as `softmax`; PyTorch's references
//! (`scripts/torch_reference.py`) as `<op>_torch` and `softmax_sdpa`. A baseline record has the
//! op's shape and variant label (softmax: `causal` or empty), its own timing, and for bytes and
//! FLOPs what the op must move and compute (softmax: q, k, v, o once and `4·N²·D` per head,
//! half when causal).
//!
//! Fields beyond the measurement itself: `speedup_vs_baseline` = the `baseline:<op>` median over
//! this record's median, `speedup_vs_softmax` = the `softmax` median (same B, H, N, D, dtype,
//! causality) over this record's, both measured in the same run (`sofa bench --baseline`) and
//! `null` when not (no baseline for the op, the baseline skipped the size, or not asked for);
//! `graph` = the timed runs were launches of one captured CUDA graph (`--graph`) rather than
//! eager calls.

use crate::bench::roofline::Peaks;
use crate::bench::Timing;
use crate::runtime::Runtime;
use crate::tensor::DType;
use serde_json::{json, Value};

/// The JSON objects of JSON-lines text (`bench/results/*.jsonl`, several files joined); other
/// lines are skipped.
pub fn json_lines(jsonl: &str) -> impl Iterator<Item = Value> + '_ {
    jsonl
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(Value::is_object)
}

/// The commit this binary was built from (`unknown` outside a git checkout).
pub const COMMIT: &str = env!("SOFA_GIT_COMMIT");

/// What was run, how long it took, and what it had to move and compute.
#[derive(Clone, Debug)]
pub struct Record {
    /// Operator name (`sima`, `cosformer`, …) as on the command line.
    pub op: String,
    /// `causal` or empty.
    pub variant: String,
    pub b: usize,
    pub h: usize,
    pub n: usize,
    /// Key/value length (= n for self-attention).
    pub s: usize,
    pub d: usize,
    pub dv: usize,
    pub dtype: DType,
    pub layout: String,
    pub timing: Timing,
    /// Fewest bytes the op must move (inputs read once, output written once).
    pub min_bytes: f64,
    /// FLOPs of the op's linear form (a multiply-add counts 2).
    pub flops: f64,
    pub peaks: Option<Peaks>,
    /// Error against the f64 reference and the bound it had to meet, when checked.
    pub rel_err: Option<f64>,
    pub err_bound: Option<f64>,
    pub flush_l2: bool,
    /// Timed as CUDA-graph launches.
    pub graph: bool,
    /// Baseline median / this median, when the op's cuBLAS baseline ran on the same inputs.
    pub speedup_vs_baseline: Option<f64>,
    /// Softmax-attention median / this median, when softmax ran on the same shape.
    pub speedup_vs_softmax: Option<f64>,
    /// Device fields, filled by [`Record::device`].
    pub device: Value,
}

impl Record {
    /// The device description every record carries.
    pub fn device(rt: &Runtime, family: &str) -> Value {
        let i = rt.info();
        json!({
            "device": i.name,
            "sm": format!("{}.{}", i.compute_capability.0, i.compute_capability.1),
            "driver": i.driver_version,
            "sm_clock_mhz": i.sm_clock_khz / 1000,
            "mem_clock_mhz": i.mem_clock_khz / 1000,
            "commit": COMMIT,
            "kernels": rt.load_path(family).map_or("?".to_string(), |p| p.to_string()),
        })
    }

    /// Adds the fields of `device` ([`Record::device`]) to the JSON object `line`.
    pub fn add_device_fields(line: &mut Value, device: &Value) {
        if let (Some(obj), Some(dev)) = (line.as_object_mut(), device.as_object()) {
            obj.extend(dev.iter().map(|(k, x)| (k.clone(), x.clone())));
        }
    }

    pub fn tokens_per_s(&self) -> f64 {
        (self.b * self.n) as f64 / (self.timing.median_ms * 1e-3)
    }

    pub fn gb_per_s(&self) -> f64 {
        self.min_bytes / (self.timing.median_ms * 1e-3) / 1e9
    }

    pub fn tflop_per_s(&self) -> f64 {
        self.flops / (self.timing.median_ms * 1e-3) / 1e12
    }

    pub fn pct_roofline(&self) -> Option<f64> {
        self.peaks
            .map(|p| p.percent(self.min_bytes, self.flops, self.timing.median_ms))
    }

    pub fn to_json(&self) -> String {
        let t = &self.timing;
        let mut v = json!({
            "op": self.op, "variant": self.variant,
            "b": self.b, "h": self.h, "n": self.n, "s": self.s, "d": self.d, "dv": self.dv,
            "dtype": self.dtype.name(), "layout": self.layout,
            "median_ms": t.median_ms, "p10_ms": t.p10_ms, "p90_ms": t.p90_ms, "runs": t.runs,
            "tokens_per_s": self.tokens_per_s(), "min_bytes": self.min_bytes,
            "gb_per_s": self.gb_per_s(), "flops": self.flops, "tflop_per_s": self.tflop_per_s(),
            "peak_copy_gb_per_s": self.peaks.map(|p| p.copy_gb_per_s),
            "peak_gemm_tflop_per_s": self.peaks.map(|p| p.gemm_tflop_per_s),
            "empty_launch_pair_us": self.peaks.map(|p| p.launch_pair_us),
            "pct_roofline": self.pct_roofline(),
            "rel_err": self.rel_err, "err_bound": self.err_bound, "flush_l2": self.flush_l2,
            "graph": self.graph, "speedup_vs_baseline": self.speedup_vs_baseline,
            "speedup_vs_softmax": self.speedup_vs_softmax,
        });
        Record::add_device_fields(&mut v, &self.device);
        v.to_string()
    }

    pub const CSV_HEADER: &'static str =
        "op,variant,b,h,n,s,d,dv,dtype,median_ms,tokens_per_s,gb_per_s,tflop_per_s,pct_roofline,\
         speedup_vs_baseline,speedup_vs_softmax,graph";

    /// One CSV row under [`Record::CSV_HEADER`]; an unmeasured value is an empty field. The
    /// variant is quoted when it holds commas (`"causal,s=64"`).
    pub fn to_csv(&self) -> String {
        let opt = |x: Option<f64>, prec: usize| x.map_or(String::new(), |v| format!("{v:.prec$}"));
        let variant = if self.variant.contains(',') {
            format!("\"{}\"", self.variant)
        } else {
            self.variant.clone()
        };
        format!(
            "{},{},{},{},{},{},{},{},{},{:.6},{:.6e},{:.2},{:.3},{},{},{},{}",
            self.op,
            variant,
            self.b,
            self.h,
            self.n,
            self.s,
            self.d,
            self.dv,
            self.dtype,
            self.timing.median_ms,
            self.tokens_per_s(),
            self.gb_per_s(),
            self.tflop_per_s(),
            opt(self.pct_roofline(), 1),
            opt(self.speedup_vs_baseline, 3),
            opt(self.speedup_vs_softmax, 3),
            self.graph,
        )
    }

    /// The table's column titles, aligned with [`Record::to_table_row`].
    pub fn table_header() -> String {
        format!(
            "{:<18} {:<15} {:>3} {:>3} {:>8} {:>4} {:>5} {:>10} {:>11} {:>8} {:>8} {:>6} {:>8} {:>10} {:>6}",
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
            "%roof",
            "vs_base",
            "vs_softmax",
            "launch"
        )
    }

    /// One table row: `-` for an empty variant and for what was not measured; speedups as
    /// `3.21x`; `launch` is `graph` or `eager`.
    pub fn to_table_row(&self) -> String {
        let speedup = |x: Option<f64>| x.map_or("-".into(), |v| format!("{v:.2}x"));
        format!(
            "{:<18} {:<15} {:>3} {:>3} {:>8} {:>4} {:>5} {:>10.4} {:>11.3e} {:>8.0} {:>8.2} {:>6} {:>8} {:>10} {:>6}",
            self.op,
            if self.variant.is_empty() { "-" } else { &self.variant },
            self.b,
            self.h,
            self.n,
            self.d,
            self.dtype.name(),
            self.timing.median_ms,
            self.tokens_per_s(),
            self.gb_per_s(),
            self.tflop_per_s(),
            self.pct_roofline().map_or("-".into(), |p| format!("{p:.0}")),
            speedup(self.speedup_vs_baseline),
            speedup(self.speedup_vs_softmax),
            if self.graph { "graph" } else { "eager" },
        )
    }
}
