//! One measurement = one JSON line (the schema of `bench/results/*.jsonl`), or one CSV row.

use crate::bench::roofline::Peaks;
use crate::bench::Timing;
use crate::runtime::Runtime;
use crate::tensor::DType;
use serde_json::{json, Value};

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
            "pct_roofline": self.pct_roofline(),
            "rel_err": self.rel_err, "err_bound": self.err_bound, "flush_l2": self.flush_l2,
        });
        if let (Some(obj), Some(dev)) = (v.as_object_mut(), self.device.as_object()) {
            obj.extend(dev.iter().map(|(k, x)| (k.clone(), x.clone())));
        }
        v.to_string()
    }

    pub const CSV_HEADER: &'static str =
        "op,variant,b,h,n,s,d,dv,dtype,median_ms,tokens_per_s,gb_per_s,tflop_per_s,pct_roofline";

    pub fn to_csv(&self) -> String {
        format!(
            "{},{},{},{},{},{},{},{},{},{:.6},{:.6e},{:.2},{:.3},{}",
            self.op,
            self.variant,
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
            self.pct_roofline()
                .map_or(String::new(), |p| format!("{p:.1}"))
        )
    }
}
