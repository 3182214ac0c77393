//! The issues' performance targets, judged against JSON-lines records (`sofa bench --out`,
//! scripts/torch_reference.py): for each target and each measured case, met or missed, and the
//! targets no record covers, as not measured.
//!
//! A target names its case exactly: op, variant label (as a set of its comma-separated parts, so
//! `causal,separate` or `causal,rows=512` records of other schedules do not count for the default
//! one), B, H, D, dtype and a range of N. Only eager records count (CUDA-graph replays are a
//! different measurement). Where several records fit one case, the last one read is judged —
//! the latest run, never the best of several.

use crate::bench::record::json_lines;
use serde_json::Value;
use std::fmt::Write as _;

/// A target's outcome on one measured case.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    Met,
    Missed,
    NotMeasured,
}

impl Verdict {
    pub fn name(self) -> &'static str {
        match self {
            Verdict::Met => "met",
            Verdict::Missed => "MISSED",
            Verdict::NotMeasured => "not measured",
        }
    }
}

/// One line of the report.
#[derive(Clone, Debug, PartialEq)]
pub struct Row {
    pub issue: u32,
    pub target: &'static str,
    /// N and dtype of the judged record (empty when not measured).
    pub case: String,
    pub measured: String,
    pub verdict: Verdict,
}

/// Which records a target judges.
struct Case {
    op: &'static str,
    variant: &'static [&'static str],
    b: usize,
    h: usize,
    d: usize,
    dtype: Option<&'static str>,
    /// Inclusive range of N.
    n: (usize, usize),
}

const ANY_N: (usize, usize) = (0, usize::MAX);

impl Case {
    fn fits(&self, r: &Value) -> bool {
        let num = |k: &str| r[k].as_u64().map(|x| x as usize);
        r["op"].as_str() == Some(self.op)
            && variant_parts(r) == sorted(self.variant)
            && num("b") == Some(self.b)
            && num("h") == Some(self.h)
            && num("d") == Some(self.d)
            && self.dtype.is_none_or(|t| r["dtype"].as_str() == Some(t))
            && num("n").is_some_and(|n| (self.n.0..=self.n.1).contains(&n))
            && r["graph"].as_bool() != Some(true)
    }
}

fn sorted(parts: &[&str]) -> Vec<String> {
    let mut v: Vec<String> = parts.iter().map(|s| s.to_string()).collect();
    v.sort();
    v
}

fn variant_parts(r: &Value) -> Vec<String> {
    let v = r["variant"].as_str().unwrap_or("");
    sorted(&v.split(',').filter(|p| !p.is_empty()).collect::<Vec<_>>())
}

/// What a record is judged by.
#[derive(Clone, Copy)]
enum Metric {
    /// `pct_roofline`: the larger of the byte and tensor-core FLOP times over the median.
    Roofline,
    /// Bytes over the median against the copy rate of the same run, in percent.
    CopyShare,
    /// `speedup_vs_baseline`.
    Speedup,
    /// The median in microseconds.
    MedianUs,
    /// The median over the same run's empty launch pair.
    LaunchPairs,
}

impl Metric {
    fn of(self, r: &Value) -> Option<f64> {
        let f = |k: &str| r[k].as_f64();
        let us = f("median_ms").map(|ms| ms * 1e3);
        match self {
            Metric::Roofline => f("pct_roofline"),
            Metric::CopyShare => Some(100.0 * f("gb_per_s")? / f("peak_copy_gb_per_s")?),
            Metric::Speedup => f("speedup_vs_baseline"),
            Metric::MedianUs => us,
            Metric::LaunchPairs => Some(us? / f("empty_launch_pair_us")?),
        }
    }

    fn show(self, x: f64) -> String {
        match self {
            Metric::Roofline => format!("{x:.1} % of roofline"),
            Metric::CopyShare => format!("{x:.1} % of copy rate"),
            Metric::Speedup => format!("{x:.2}× the baseline"),
            Metric::MedianUs => format!("{x:.2} µs"),
            Metric::LaunchPairs => format!("{x:.2}× an empty launch pair"),
        }
    }
}

enum Rule {
    /// The metric against a bound (`at_least`, or at most).
    Bound {
        metric: Metric,
        at_least: bool,
        bound: f64,
    },
    /// The causal median over the non-causal median of the same case, at most this.
    CausalOverPlain(f64),
    /// The case's tokens/s over the reference op's on the same case, at least this.
    OverReference(&'static str, f64),
    /// A record exists (the case ran).
    Runs,
}

struct Target {
    issue: u32,
    text: &'static str,
    case: Case,
    rule: Rule,
}

const fn at_least(metric: Metric, bound: f64) -> Rule {
    Rule::Bound {
        metric,
        at_least: true,
        bound,
    }
}

const fn at_most(metric: Metric, bound: f64) -> Rule {
    Rule::Bound {
        metric,
        at_least: false,
        bound,
    }
}

/// B = 1, H = 16, D = 64 (the issues' benchmark shape) of `op`, f16, N in `n`.
const fn shape(op: &'static str, variant: &'static [&'static str], n: (usize, usize)) -> Case {
    Case {
        op,
        variant,
        b: 1,
        h: 16,
        d: 64,
        dtype: Some("f16"),
        n,
    }
}

const K64: (usize, usize) = (64 << 10, usize::MAX);
const K8: (usize, usize) = (8 << 10, usize::MAX);

/// The targets of issues 4, 5 and 6, as written there.
const TARGETS: &[Target] = &[
    Target {
        issue: 4,
        text: "newton_pinv m = 64, B·H = 16, T = 20: ≥ 10× the cuBLAS loop",
        case: Case {
            op: "soft_newton",
            variant: &["m=64", "T=20"],
            b: 1,
            h: 16,
            d: 64,
            dtype: None,
            n: ANY_N,
        },
        rule: at_least(Metric::Speedup, 10.0),
    },
    Target {
        issue: 4,
        text: "soft::attention m = 64, N ≥ 64k: ≥ 2× baseline::soft",
        case: shape("soft", &["m=64"], K64),
        rule: at_least(Metric::Speedup, 2.0),
    },
    Target {
        issue: 4,
        text: "soft::attention m = 64, N ≥ 64k: ≥ 70 % of roofline",
        case: shape("soft", &["m=64"], K64),
        rule: at_least(Metric::Roofline, 70.0),
    },
    Target {
        issue: 4,
        text: "soft::attention m = 64, N = 1M runs",
        case: shape("soft", &["m=64"], (1 << 20, 1 << 20)),
        rule: Rule::Runs,
    },
    Target {
        issue: 5,
        text: "cosFormer non-causal, N ≥ 64k: ≥ 80 % of the copy rate",
        case: shape("cosformer", &[], K64),
        rule: at_least(Metric::CopyShare, 80.0),
    },
    Target {
        issue: 5,
        text: "cosFormer non-causal, N ≥ 64k: ≥ 2× baseline::cosformer",
        case: shape("cosformer", &[], K64),
        rule: at_least(Metric::Speedup, 2.0),
    },
    Target {
        issue: 5,
        text: "cosFormer causal, N ≥ 8k: ≥ 60 % of the copy rate",
        case: shape("cosformer", &["causal"], K8),
        rule: at_least(Metric::CopyShare, 60.0),
    },
    Target {
        issue: 5,
        text: "cosFormer causal, N ≥ 8k: ≥ 2× the tokens/s of fla's chunk kernel",
        case: shape("cosformer", &["causal"], K8),
        rule: Rule::OverReference("cosformer_fla", 2.0),
    },
    Target {
        issue: 5,
        text: "cosFormer non-causal, N = 1k: ≤ 2× an empty launch pair",
        case: shape("cosformer", &[], (1 << 10, 1 << 10)),
        rule: at_most(Metric::LaunchPairs, 2.0),
    },
    Target {
        issue: 5,
        text: "cosFormer causal, N = 1k: ≤ 2× an empty launch pair",
        case: shape("cosformer", &["causal"], (1 << 10, 1 << 10)),
        rule: at_most(Metric::LaunchPairs, 2.0),
    },
    Target {
        issue: 5,
        text: "decode step B = 8, H = 16, D = 64: ≤ 10 µs, launch included",
        case: Case {
            op: "cosformer_decode",
            variant: &[],
            b: 8,
            h: 16,
            d: 64,
            dtype: None,
            n: ANY_N,
        },
        rule: at_most(Metric::MedianUs, 10.0),
    },
    Target {
        issue: 5,
        text: "decode step B = 64, H = 32, D = 128: ≥ 70 % of the copy rate over the state",
        case: Case {
            op: "cosformer_decode",
            variant: &[],
            b: 64,
            h: 32,
            d: 128,
            dtype: None,
            n: ANY_N,
        },
        rule: at_least(Metric::CopyShare, 70.0),
    },
    Target {
        issue: 6,
        text: "AFT-simple, N ≥ 64k: ≥ 80 % of the copy rate",
        case: shape("aft_simple", &[], K64),
        rule: at_least(Metric::CopyShare, 80.0),
    },
    Target {
        issue: 6,
        text: "AFT-simple causal, N ≥ 64k: ≤ 1.5× non-causal",
        case: shape("aft_simple", &["causal"], K64),
        rule: Rule::CausalOverPlain(1.5),
    },
    Target {
        issue: 6,
        text: "AFT-local s = 64, N ≥ 64k: ≥ 80 % of the copy rate",
        case: shape("aft_local", &["s=64"], K64),
        rule: at_least(Metric::CopyShare, 80.0),
    },
    Target {
        issue: 6,
        text: "AFT-local s = 64 causal, N ≥ 64k: ≤ 1.5× non-causal",
        case: shape("aft_local", &["causal", "s=64"], K64),
        rule: Rule::CausalOverPlain(1.5),
    },
    Target {
        issue: 6,
        text: "AFT-conv s = 64, N ≥ 64k: ≥ 80 % of the copy rate",
        case: shape("aft_conv", &["s=64"], K64),
        rule: at_least(Metric::CopyShare, 80.0),
    },
    Target {
        issue: 6,
        text: "AFT-conv s = 64 causal, N ≥ 64k: ≤ 1.5× non-causal",
        case: shape("aft_conv", &["causal", "s=64"], K64),
        rule: Rule::CausalOverPlain(1.5),
    },
    Target {
        issue: 6,
        text: "AFT-full T = 16k: ≥ 1.5× baseline::aft",
        case: shape("aft_full", &[], (16 << 10, 16 << 10)),
        rule: at_least(Metric::Speedup, 1.5),
    },
    Target {
        issue: 6,
        text: "AFT-full causal T = 16k: ≥ 1.5× baseline::aft",
        case: shape("aft_full", &["causal"], (16 << 10, 16 << 10)),
        rule: at_least(Metric::Speedup, 1.5),
    },
];

/// The key of one measured case: N, S and dtype (the rest is fixed by the target).
fn key(r: &Value) -> (u64, u64, String) {
    (
        r["n"].as_u64().unwrap_or(0),
        r["s"].as_u64().unwrap_or(0),
        r["dtype"].as_str().unwrap_or("").to_string(),
    )
}

/// The same case in another op or variant: same B, H, N, S, D, dtype.
fn twin<'a>(records: &'a [Value], r: &Value, op: &str, variant: &[String]) -> Option<&'a Value> {
    let same = |x: &Value, k: &str| x[k] == r[k];
    records.iter().rev().find(|x| {
        x["op"].as_str() == Some(op)
            && variant_parts(x) == variant
            && x["graph"].as_bool() != Some(true)
            && ["b", "h", "n", "s", "d", "dtype"]
                .iter()
                .all(|k| same(x, k))
    })
}

/// Judges one record; `None` when a value it needs is missing (a run without peaks, a baseline
/// or a reference).
fn judge(t: &Target, r: &Value, records: &[Value]) -> Option<(String, bool)> {
    Some(match t.rule {
        Rule::Bound {
            metric,
            at_least,
            bound,
        } => {
            let x = metric.of(r)?;
            let ok = if at_least { x >= bound } else { x <= bound };
            let extra = match metric {
                // The issue asks for µs per matrix too.
                Metric::Speedup if t.case.op == "soft_newton" => {
                    let per = r["median_ms"].as_f64()? * 1e3 / (t.case.b * t.case.h) as f64;
                    format!(" ({per:.2} µs per matrix)")
                }
                _ => String::new(),
            };
            (format!("{}{extra}", metric.show(x)), ok)
        }
        Rule::CausalOverPlain(most) => {
            let mut plain = variant_parts(r);
            plain.retain(|p| p != "causal");
            let p = twin(records, r, t.case.op, &plain)?;
            let ratio = r["median_ms"].as_f64()? / p["median_ms"].as_f64()?;
            (format!("{ratio:.2}× non-causal"), ratio <= most)
        }
        Rule::OverReference(op, least) => {
            let other = twin(records, r, op, &variant_parts(r))?;
            let ratio = r["tokens_per_s"].as_f64()? / other["tokens_per_s"].as_f64()?;
            (format!("{ratio:.2}× {op}"), ratio >= least)
        }
        Rule::Runs => (format!("{:.3} ms", r["median_ms"].as_f64()?), true),
    })
}

/// Judges every target against the records of `jsonl` (lines that are not JSON objects are
/// skipped). One row per target and measured case (N, S, dtype), in the order of [`TARGETS`].
pub fn judge_all(jsonl: &str) -> Vec<Row> {
    let records: Vec<Value> = json_lines(jsonl).collect();
    let mut rows = Vec::new();
    for t in TARGETS {
        // The last record of each case; cases by N, S and dtype.
        let mut cases: Vec<((u64, u64, String), &Value)> = Vec::new();
        for r in records.iter().filter(|r| t.case.fits(r)) {
            match cases.iter_mut().find(|(k, _)| *k == key(r)) {
                Some(slot) => slot.1 = r,
                None => cases.push((key(r), r)),
            }
        }
        cases.sort_by(|a, b| a.0.cmp(&b.0));
        if cases.is_empty() {
            rows.push(Row {
                issue: t.issue,
                target: t.text,
                case: String::new(),
                measured: "no record".into(),
                verdict: Verdict::NotMeasured,
            });
        }
        for ((n, s, dtype), r) in cases {
            // Decode steps and Newton matrices have no sequence length to show.
            let case = if t.case.n == ANY_N {
                dtype
            } else if n == s {
                format!("N = {n}, {dtype}")
            } else {
                format!("N = {n}, S = {s}, {dtype}")
            };
            let (measured, verdict) = match judge(t, r, &records) {
                Some((m, ok)) => (m, if ok { Verdict::Met } else { Verdict::Missed }),
                None => ("a value it needs is missing".into(), Verdict::NotMeasured),
            };
            rows.push(Row {
                issue: t.issue,
                target: t.text,
                case,
                measured,
                verdict,
            });
        }
    }
    rows
}

/// Where the records came from: (device, commit, records), in order of first appearance.
pub fn sources(jsonl: &str) -> Vec<(String, String, usize)> {
    let mut out: Vec<(String, String, usize)> = Vec::new();
    for r in json_lines(jsonl) {
        let Some(device) = r["device"].as_str() else {
            continue;
        };
        let commit = r["commit"].as_str().unwrap_or("?");
        match out.iter_mut().find(|(d, c, _)| d == device && c == commit) {
            Some(slot) => slot.2 += 1,
            None => out.push((device.to_string(), commit.to_string(), 1)),
        }
    }
    out
}

/// The rows as a Markdown table, with a count of each verdict.
pub fn markdown(rows: &[Row]) -> String {
    let mut s =
        String::from("| issue | target | case | measured | verdict |\n|---|---|---|---|---|\n");
    for r in rows {
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} | {} |",
            r.issue,
            r.target,
            r.case,
            r.measured,
            r.verdict.name()
        );
    }
    let count = |v| rows.iter().filter(|r| r.verdict == v).count();
    let _ = writeln!(
        s,
        "\n{} met, {} missed, {} not measured",
        count(Verdict::Met),
        count(Verdict::Missed),
        count(Verdict::NotMeasured)
    );
    s
}
