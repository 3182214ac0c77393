//! `sofa plot`: throughput and % of roofline against sequence length, log–log, one line per
//! op / variant / dtype / head dim, each labelled at its last point (no legend lookup needed).

use crate::bench::record::json_lines;
use crate::bench::workload::BenchOp;
use crate::error::{Error, Result};
use plotters::prelude::*;
use std::collections::BTreeMap;
use std::path::Path;

/// One curve: its label and (N, value) points sorted by N.
pub type Series = BTreeMap<String, Vec<(f64, f64)>>;

/// Groups JSON lines into curves of `field` against `n` (CUDA-graph timings, `"graph": true`,
/// are curves of their own, labelled `graph`). Lines without `n` or the field (peak
/// measurements, other schemas) and ops without a sequence length are skipped; returns the
/// curves and the number of lines used.
pub fn series(jsonl: &str, field: &str) -> (Series, usize) {
    let mut out: Series = BTreeMap::new();
    let mut used = 0;
    for v in json_lines(jsonl) {
        let (Some(n), Some(y)) = (v["n"].as_f64(), v[field].as_f64()) else {
            continue;
        };
        if n <= 0.0 || y <= 0.0 || !y.is_finite() {
            continue;
        }
        let s = |k: &str| v[k].as_str().unwrap_or("").to_string();
        // Ops without a sequence axis (Newton matrices, decode steps) are no curve against N.
        let op = s("op");
        let base = op.strip_prefix("baseline:").unwrap_or(&op);
        if BenchOp::ALL
            .iter()
            .any(|o| o.name() == base && !o.has_seq())
        {
            continue;
        }
        let variant = s("variant");
        let label = format!(
            "{}{} {} D={}{}",
            s("op"),
            if variant.is_empty() {
                String::new()
            } else {
                format!(" {variant}")
            },
            s("dtype"),
            v["d"].as_u64().unwrap_or(0),
            if v["graph"] == true { " graph" } else { "" }
        );
        out.entry(label).or_default().push((n, y));
        used += 1;
    }
    for pts in out.values_mut() {
        pts.sort_by(|a, b| a.0.total_cmp(&b.0));
    }
    (out, used)
}

/// Writes an SVG with two log–log panels (tokens/s and % of roofline vs N) from JSON lines.
pub fn plot(jsonl: &str, out: &Path) -> Result<usize> {
    let (tput, used) = series(jsonl, "tokens_per_s");
    let (roof, _) = series(jsonl, "pct_roofline");
    if tput.is_empty() {
        return Err(Error::param(
            "input",
            out.display(),
            "no records with n and tokens_per_s",
        ));
    }
    let err = |e: String| Error::Io {
        context: format!("plotting {}", out.display()),
        source: std::io::Error::other(e),
    };
    let root = SVGBackend::new(out, (1000, 1100)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| err(e.to_string()))?;
    let panels = root.split_evenly((2, 1));
    panel(&panels[0], &tput, "throughput (tokens/s)").map_err(err)?;
    if !roof.is_empty() {
        panel(
            &panels[1],
            &roof,
            "% of roofline (max of bytes/BW, FLOPs/peak)",
        )
        .map_err(err)?;
    }
    root.present().map_err(|e| err(e.to_string()))?;
    Ok(used)
}

fn panel<DB: DrawingBackend>(
    area: &DrawingArea<DB, plotters::coord::Shift>,
    s: &Series,
    title: &str,
) -> std::result::Result<(), String> {
    let all = s.values().flatten();
    let (mut x0, mut x1, mut y0, mut y1) = (f64::MAX, f64::MIN, f64::MAX, f64::MIN);
    for &(x, y) in all {
        (x0, x1, y0, y1) = (x0.min(x), x1.max(x), y0.min(y), y1.max(y));
    }
    let mut chart = ChartBuilder::on(area)
        .caption(title, ("sans-serif", 22))
        .margin(15)
        .x_label_area_size(40)
        .y_label_area_size(70)
        .right_y_label_area_size(10)
        .build_cartesian_2d(
            (x0 * 0.8..x1 * 4.0).log_scale(),
            (y0 * 0.7..y1 * 1.5).log_scale(),
        )
        .map_err(|e| e.to_string())?;
    chart
        .configure_mesh()
        .x_desc("sequence length N")
        .draw()
        .map_err(|e| e.to_string())?;
    for (i, (label, pts)) in s.iter().enumerate() {
        let color = Palette99::pick(i).to_rgba();
        chart
            .draw_series(LineSeries::new(pts.iter().copied(), color.stroke_width(2)))
            .map_err(|e| e.to_string())?;
        chart
            .draw_series(pts.iter().map(|&p| Circle::new(p, 3, color.filled())))
            .map_err(|e| e.to_string())?;
        if let Some(&last) = pts.last() {
            chart
                .draw_series(std::iter::once(Text::new(
                    label.clone(),
                    last,
                    ("sans-serif", 13).into_font().color(&color),
                )))
                .map_err(|e| e.to_string())?;
        }
    }
    Ok(())
}
