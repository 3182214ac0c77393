//! Where each sofa operator overtakes softmax attention (issue 7's README table), from JSON-lines
//! records: against FlashAttention-class `softmax_sdpa` (scripts/torch_reference.py) and cuBLAS
//! `softmax` (`sofa bench --baseline`), each on the same B, H, D, dtype and causality.
//!
//! The crossover is the shortest measured N from which sofa is faster at every longer N where the
//! reference was also measured. It is reported as the bracket of measured lengths it lies in, not
//! interpolated. Eager records only; the last record of a case counts.

use crate::bench::record::json_lines;
use std::collections::BTreeMap;
use std::fmt::Write as _;

/// The references, in the order of the table's columns.
pub const REFERENCES: [&str; 2] = ["softmax_sdpa", "softmax"];

/// One sofa curve (op, variant, B, H, D, dtype) against the references.
#[derive(Clone, Debug, PartialEq)]
pub struct Crossing {
    pub op: String,
    pub variant: String,
    pub b: u64,
    pub h: u64,
    pub d: u64,
    pub dtype: String,
    /// Per reference of [`REFERENCES`]: the crossover, or `None` where no length was measured
    /// by both.
    pub vs: [Option<Bracket>; 2],
}

/// Where the crossover lies among the lengths measured by both.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Bracket {
    /// Faster at every length measured, the shortest being this.
    AtOrBelow(u64),
    /// Slower at the first, faster from the second on.
    Between(u64, u64),
    /// Slower at the longest length measured, this.
    NotReached(u64),
}

impl Bracket {
    pub fn show(self) -> String {
        match self {
            Bracket::AtOrBelow(n) => format!("≤ {}", len(n)),
            Bracket::Between(a, b) => format!("{}–{}", len(a), len(b)),
            Bracket::NotReached(n) => format!("not by {}", len(n)),
        }
    }
}

/// 65536 → "64k", 1048576 → "1M", other lengths as they are.
fn len(n: u64) -> String {
    match n {
        n if n >= 1 << 20 && n % (1 << 20) == 0 => format!("{}M", n >> 20),
        n if n >= 1 << 10 && n % (1 << 10) == 0 => format!("{}k", n >> 10),
        n => n.to_string(),
    }
}

fn is_sofa_op(op: &str) -> bool {
    crate::bench::workload::BenchOp::ALL
        .iter()
        .any(|o| o.name() == op && o.has_seq())
}

fn causal(variant: &str) -> bool {
    variant.split(',').any(|p| p == "causal")
}

/// (op or reference, causal-or-variant, b, h, d, dtype): the curve a record belongs to.
type Curve = (String, String, u64, u64, u64, String);

/// Every sofa curve with at least one length the reference also measured.
pub fn crossings(jsonl: &str) -> Vec<Crossing> {
    // Curve → N → median (the last record read).
    let mut curves: BTreeMap<Curve, BTreeMap<u64, f64>> = BTreeMap::new();
    for r in json_lines(jsonl) {
        let (Some(op), Some(n), Some(ms)) =
            (r["op"].as_str(), r["n"].as_u64(), r["median_ms"].as_f64())
        else {
            continue;
        };
        if r["graph"].as_bool() == Some(true) || r["s"].as_u64().is_some_and(|s| s != n) {
            continue;
        }
        let variant = r["variant"].as_str().unwrap_or("");
        let variant = if REFERENCES.contains(&op) {
            if causal(variant) {
                "causal"
            } else {
                ""
            }
        } else if is_sofa_op(op) {
            variant
        } else {
            continue;
        };
        let num = |k: &str| r[k].as_u64().unwrap_or(0);
        let key = (
            op.to_string(),
            variant.to_string(),
            num("b"),
            num("h"),
            num("d"),
            r["dtype"].as_str().unwrap_or("").to_string(),
        );
        curves.entry(key).or_default().insert(n, ms);
    }
    let mut out = Vec::new();
    for ((op, variant, b, h, d, dtype), ours) in &curves {
        if REFERENCES.contains(&op.as_str()) {
            continue;
        }
        let mut vs = [None; 2];
        for (slot, reference) in vs.iter_mut().zip(REFERENCES) {
            let rv = if causal(variant) { "causal" } else { "" };
            let key = (
                reference.to_string(),
                rv.to_string(),
                *b,
                *h,
                *d,
                dtype.clone(),
            );
            if let Some(theirs) = curves.get(&key) {
                *slot = bracket(ours, theirs);
            }
        }
        if vs.iter().any(Option::is_some) {
            out.push(Crossing {
                op: op.clone(),
                variant: variant.clone(),
                b: *b,
                h: *h,
                d: *d,
                dtype: dtype.clone(),
                vs,
            });
        }
    }
    out
}

/// The crossover of `ours` against `theirs` over the lengths both measured.
fn bracket(ours: &BTreeMap<u64, f64>, theirs: &BTreeMap<u64, f64>) -> Option<Bracket> {
    let pts: Vec<(u64, bool)> = ours
        .iter()
        .filter_map(|(n, ms)| theirs.get(n).map(|t| (*n, ms < t)))
        .collect();
    let last = pts.last()?;
    // The first index from which sofa is faster at every measured length.
    let from = pts
        .iter()
        .rposition(|(_, faster)| !faster)
        .map_or(0, |i| i + 1);
    Some(match from {
        0 => Bracket::AtOrBelow(pts[0].0),
        i if i == pts.len() => Bracket::NotReached(last.0),
        i => Bracket::Between(pts[i - 1].0, pts[i].0),
    })
}

/// The crossings as a Markdown table.
pub fn markdown(rows: &[Crossing]) -> String {
    let mut s = String::from(
        "| op | variant | B,H,D | dtype | overtakes SDPA (FlashAttention-class) at N | overtakes cuBLAS softmax at N |\n\
         |---|---|---|---|---|---|\n",
    );
    for r in rows {
        let show = |b: Option<Bracket>| b.map_or("—".to_string(), Bracket::show);
        let _ = writeln!(
            s,
            "| {} | {} | {},{},{} | {} | {} | {} |",
            r.op,
            r.variant,
            r.b,
            r.h,
            r.d,
            r.dtype,
            show(r.vs[0]),
            show(r.vs[1])
        );
    }
    s
}
