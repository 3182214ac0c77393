//! The measuring instrument without a GPU: roofline arithmetic, the JSON schema, the plotter.

use serde_json::{json, Value};
use sofa::bench::baseline::{BaselineCase, Reference};
use sofa::bench::fits;
use sofa::bench::plot::{plot, series};
use sofa::bench::record::Record;
use sofa::bench::roofline::Peaks;
use sofa::bench::workload::{BenchOp, Case};
use sofa::bench::Timing;
use sofa::{DType, Dims};

const PEAKS: Peaks = Peaks {
    copy_gb_per_s: 3000.0,
    gemm_tflop_per_s: 750.0,
    launch_pair_us: 5.0,
};

#[test]
fn roofline_takes_the_larger_of_bytes_and_flops_time() {
    // SimA 1×16×64k×64 f16: 537 MB and 17.2 GFLOP; bytes dominate (0.179 ms vs 0.023 ms).
    let case = Case::new(
        BenchOp::Sima,
        Dims::new(1, 16, 65536, 64),
        DType::F16,
        false,
    );
    assert_eq!(case.min_bytes(), 536_870_912.0);
    assert_eq!(case.flops(), 4.0 * 16.0 * 65536.0 * 64.0 * 64.0);
    let floor = PEAKS.roofline_ms(case.min_bytes(), case.flops());
    assert!((floor - 536_870_912.0 / 3e12 * 1e3).abs() < 1e-12);
    assert_eq!(PEAKS.bound(case.min_bytes(), case.flops()), "memory");
    assert!((PEAKS.percent(case.min_bytes(), case.flops(), 2.0 * floor) - 50.0).abs() < 1e-9);
    // A GEMM-like op: 1 MB and 1.5 TFLOP → 2 ms of compute, bound by FLOPs.
    assert!((PEAKS.roofline_ms(1e6, 1.5e12) - 2.0).abs() < 1e-12);
    assert_eq!(PEAKS.bound(1e6, 1.5e12), "compute");
}

#[test]
fn cosformer_counts_twice_the_flops_of_sima() {
    let dims = Dims::new(2, 8, 1000, 128);
    let s = Case::new(BenchOp::Sima, dims, DType::BF16, false);
    let c = Case::new(BenchOp::Cosformer, dims, DType::BF16, true);
    assert_eq!(c.flops(), 2.0 * s.flops());
    assert_eq!(c.min_bytes(), s.min_bytes());
    assert!(c.device_bytes().unwrap() > (4 * 2 * 8 * 1000 * 128 * 2) as usize);
}

#[test]
fn aft_and_soft_count_their_own_bytes_and_flops() {
    let dims = Dims::new(1, 16, 65536, 64);
    let tensors = 4.0 * 16.0 * 65536.0 * 64.0 * 2.0;
    let simple = Case::new(BenchOp::AftSimple, dims, DType::F16, false);
    assert_eq!(simple.min_bytes(), tensors);
    assert_eq!(simple.flops(), 4.0 * 16.0 * 65536.0 * 64.0);
    // The band w [T, 2s−1] is read once, fp32.
    let local = Case::new(BenchOp::AftLocal, dims, DType::F16, true);
    assert_eq!(local.min_bytes(), tensors + 65536.0 * 127.0 * 4.0);
    assert_eq!(local.flops(), 8.0 * 64.0 * 16.0 * 65536.0 * 64.0);
    assert_eq!(local.label(), "causal,s=64");
    let conv = Case::new(BenchOp::AftConv, dims, DType::F16, false);
    assert_eq!(conv.min_bytes(), tensors + 16.0 * 127.0 * 4.0);
    // AFT-full's w [T, T] alone is 17 GB at 64k: device_bytes says so (the sweep skips it).
    let full = Case::new(BenchOp::AftFull, dims, DType::F16, false);
    assert!(full.device_bytes().unwrap() > 65536 * 65536 * 4);
    // SOFT (tied): Q twice (SPEC §1.5: the landmarks need all of Q before P), V, X.
    let mut soft = Case::new(BenchOp::Soft, dims, DType::F16, false);
    soft.landmarks = 49;
    assert_eq!(soft.min_bytes(), tensors);
    let m = 49.0;
    assert_eq!(
        soft.flops(),
        16.0 * (6.0 * 65536.0 * m * 64.0 + 4.0 * m * m * m * 20.0)
    );
    assert_eq!(soft.label(), "m=49");
    // Causal cosFormer through the separate launches (`sofa bench --no-chain`) says so.
    let mut cos = Case::new(BenchOp::Cosformer, dims, DType::F16, true);
    assert_eq!(cos.label(), "causal");
    cos.chained = false;
    assert_eq!(cos.label(), "causal,separate");
    cos.chunk_rows = Some(1024);
    assert_eq!(cos.label(), "causal,separate,rows=1024");
    cos.causal = false;
    assert_eq!(cos.label(), "");
}

fn record(n: usize, ms: f64) -> Record {
    Record {
        op: "sima".into(),
        variant: String::new(),
        b: 1,
        h: 16,
        n,
        s: n,
        d: 64,
        dv: 64,
        dtype: DType::F16,
        layout: "bhnd".into(),
        timing: Timing {
            median_ms: ms,
            p10_ms: ms * 0.99,
            p90_ms: ms * 1.01,
            runs: 30,
        },
        min_bytes: (4 * 16 * n * 64 * 2) as f64,
        flops: (4 * 16 * n * 64 * 64) as f64,
        peaks: Some(PEAKS),
        rel_err: Some(1e-4),
        err_bound: Some(2e-3),
        flush_l2: false,
        graph: false,
        speedup_vs_baseline: None,
        speedup_vs_softmax: None,
        device: json!({ "device": "Test GPU", "sm": "9.0", "driver": 13000, "commit": "abc1234", "kernels": "fatbin" }),
    }
}

#[test]
fn json_lines_carry_the_schema() {
    let line = record(65536, 0.286).to_json();
    let v: Value = serde_json::from_str(&line).unwrap();
    for key in [
        "op",
        "variant",
        "b",
        "h",
        "n",
        "s",
        "d",
        "dv",
        "dtype",
        "layout",
        "median_ms",
        "p10_ms",
        "p90_ms",
        "runs",
        "tokens_per_s",
        "min_bytes",
        "gb_per_s",
        "flops",
        "tflop_per_s",
        "peak_copy_gb_per_s",
        "peak_gemm_tflop_per_s",
        "empty_launch_pair_us",
        "pct_roofline",
        "rel_err",
        "err_bound",
        "flush_l2",
        "graph",
        "speedup_vs_baseline",
        "speedup_vs_softmax",
        "device",
        "sm",
        "driver",
        "commit",
        "kernels",
    ] {
        assert!(v.get(key).is_some(), "missing {key} in {line}");
    }
    assert_eq!(v["device"], "Test GPU");
    let gbps = v["gb_per_s"].as_f64().unwrap();
    assert!((gbps - 536_870_912.0 / 0.286e-3 / 1e9).abs() < 1e-6);
    let pct = v["pct_roofline"].as_f64().unwrap();
    assert!((pct - 100.0 * (536_870_912.0 / 3e12 * 1e3) / 0.286).abs() < 1e-9);
    assert_eq!(
        record(1024, 0.03).to_csv().split(',').count(),
        Record::CSV_HEADER.split(',').count()
    );
}

#[test]
fn plot_groups_series_and_writes_svg() {
    let mut text = String::new();
    for (n, ms) in [(4096, 0.042), (65536, 0.286), (1 << 20, 3.83)] {
        text.push_str(&record(n, ms).to_json());
        text.push('\n');
    }
    // Lines of other schemas (a peak measurement, garbage) are skipped.
    text.push_str("{\"op\":\"peak_copy\",\"gb_per_s\":2955}\nnot json\n");
    text.push_str(
        "{\"op\":\"softmax_sdpa\",\"n\":4096,\"d\":64,\"dtype\":\"f16\",\"tokens_per_s\":2.1e7}\n",
    );
    // Ops without a sequence axis are no curve against N.
    for op in ["soft_newton", "baseline:soft_newton", "cosformer_decode"] {
        text.push_str(&format!(
            "{{\"op\":\"{op}\",\"n\":64,\"d\":64,\"dtype\":\"f32\",\"tokens_per_s\":1e6}}\n"
        ));
    }
    let (s, used) = series(&text, "tokens_per_s");
    assert_eq!(used, 4);
    assert_eq!(s["sima f16 D=64"].len(), 3);
    assert!(s["sima f16 D=64"].windows(2).all(|w| w[0].0 < w[1].0));
    assert!(s.contains_key("softmax_sdpa f16 D=64"));
    let dir = std::env::temp_dir().join(format!("sofa-plot-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let svg = dir.join("t.svg");
    assert_eq!(plot(&text, &svg).unwrap(), 4);
    let body = std::fs::read_to_string(&svg).unwrap();
    assert!(body.starts_with("<svg"), "not an SVG");
    assert!(body.contains("sima f16 D=64") && body.contains("% of roofline"));
    assert!(plot("{\"op\":\"x\"}\n", &dir.join("empty.svg")).is_err());
}

#[test]
fn speedups_are_null_unless_measured() {
    let v: Value = serde_json::from_str(&record(4096, 0.04).to_json()).unwrap();
    assert!(v["speedup_vs_baseline"].is_null() && v["speedup_vs_softmax"].is_null());
    assert_eq!(v["graph"], false);
    let mut r = record(4096, 0.04);
    r.speedup_vs_baseline = Some(3.5);
    r.speedup_vs_softmax = Some(120.25);
    r.graph = true;
    let v: Value = serde_json::from_str(&r.to_json()).unwrap();
    assert_eq!(v["speedup_vs_baseline"], 3.5);
    assert_eq!(v["speedup_vs_softmax"], 120.25);
    assert_eq!(v["graph"], true);
}

#[test]
fn csv_rows_match_the_header() {
    let header: Vec<&str> = Record::CSV_HEADER.split(',').collect();
    assert_eq!(
        header[header.len() - 3..],
        ["speedup_vs_baseline", "speedup_vs_softmax", "graph"]
    );
    let plain = record(1024, 0.03).to_csv();
    assert_eq!(plain.split(',').count(), header.len());
    assert!(plain.ends_with(",,,false"), "{plain}");
    let mut r = record(1024, 0.03);
    r.speedup_vs_baseline = Some(2.0);
    r.speedup_vs_softmax = Some(40.0);
    r.graph = true;
    assert!(r.to_csv().ends_with(",2.000,40.000,true"), "{}", r.to_csv());
    // A variant with commas is one quoted field.
    r.variant = "causal,s=64".into();
    let row = r.to_csv();
    assert!(row.starts_with("sima,\"causal,s=64\",1,16,"), "{row}");
    assert_eq!(
        row.replace("\"causal,s=64\"", "v").split(',').count(),
        header.len()
    );
}

#[test]
fn table_rows_line_up_with_the_header() {
    let header = Record::table_header();
    let plain = record(65536, 0.286).to_table_row();
    let mut r = record(65536, 0.286);
    r.op = "baseline:cosformer".into();
    r.variant = "causal,s=256".into();
    r.speedup_vs_baseline = Some(3.214);
    r.speedup_vs_softmax = Some(131.0);
    r.graph = true;
    let full = r.to_table_row();
    for row in [&plain, &full] {
        assert_eq!(row.len(), header.len(), "\n{header}\n{row}");
        assert_eq!(
            row.split_whitespace().count(),
            header.split_whitespace().count(),
            "\n{header}\n{row}"
        );
    }
    let cols = |s: &str| s.split_whitespace().map(String::from).collect::<Vec<_>>();
    let (h, p, f) = (cols(&header), cols(&plain), cols(&full));
    assert_eq!(h[h.len() - 3..], ["vs_base", "vs_softmax", "launch"]);
    assert_eq!(p[1], "-");
    assert_eq!(p[p.len() - 3..], ["-", "-", "eager"]);
    assert_eq!(f[f.len() - 3..], ["3.21x", "131.00x", "graph"]);
    assert_eq!(f[0], "baseline:cosformer");
}

#[test]
fn references_are_named_and_sized_before_allocating() {
    let dims = Dims::new(1, 16, 4096, 64);
    let sima = Case::new(BenchOp::Sima, dims, DType::F16, false);
    let b = BaselineCase::composed(sima).unwrap();
    assert_eq!(b.reference, Reference::Composed);
    assert_eq!(b.name(), "baseline:sima");
    assert_eq!((b.min_bytes(), b.flops()), (sima.min_bytes(), sima.flops()));
    // q, k, v, o plus q̂ and k̂ at least.
    assert!(b.device_bytes().unwrap() >= 6 * 16 * 4096 * 64 * 2);
    for op in [BenchOp::AftSimple, BenchOp::AftConv] {
        assert!(BaselineCase::composed(Case::new(op, dims, DType::F16, false)).is_none());
    }
    let mut local = Case::new(BenchOp::AftLocal, dims, DType::BF16, true);
    local.window = 256;
    let b = BaselineCase::composed(local).unwrap();
    assert_eq!(
        (b.name(), b.label()),
        ("baseline:aft_local".into(), "causal,s=256".into())
    );
    // The dense T×T fp32 weights are in the need.
    assert!(b.device_bytes().unwrap() > 4096 * 4096 * 4);

    // Softmax: the case's shape and causality, quadratic FLOPs (half when causal).
    let sm = BaselineCase::softmax(local);
    assert_eq!((sm.name(), sm.label()), ("softmax".into(), "causal".into()));
    assert_eq!(sm.softmax_key(), (dims, DType::BF16, true));
    assert_eq!(sm.flops(), 2.0 * 16.0 * 4096.0 * 4096.0 * 64.0);
    assert_eq!(sm.min_bytes(), (4 * 16 * 4096 * 64 * 2) as f64);
    assert_eq!(BaselineCase::softmax(sima).label(), "");
    // fp32 scores + f16 probabilities: 6 bytes per score.
    assert!(BaselineCase::softmax(sima).device_bytes().unwrap() >= 16 * 4096 * 4096 * 6);

    // At 1M tokens softmax needs ~100 TB: known before allocating, so a sweep skips it.
    let long = Case::new(
        BenchOp::Sima,
        Dims::new(1, 16, 1 << 20, 64),
        DType::F16,
        false,
    );
    let need = BaselineCase::softmax(long).device_bytes().unwrap();
    assert!(need > 16 * (1usize << 40) * 6);
    assert!(!fits(need, 80 << 30));
    // The causal cosFormer baseline is quadratic and capped; the refusal names N.
    let causal = Case::new(
        BenchOp::Cosformer,
        Dims::new(1, 16, 65536, 64),
        DType::F16,
        true,
    );
    let err = BaselineCase::composed(causal)
        .unwrap()
        .device_bytes()
        .unwrap_err();
    assert!(err.to_string().contains("`N`"), "{err}");
    let ok = Case::new(
        BenchOp::Cosformer,
        Dims::new(1, 16, 16384, 64),
        DType::F16,
        true,
    );
    assert!(BaselineCase::composed(ok).unwrap().device_bytes().is_ok());
}

#[test]
fn fits_keeps_a_tenth_spare() {
    assert!(fits(90, 100));
    assert!(!fits(91, 100));
    assert!(fits(0, 0));
}

#[test]
fn graph_timings_are_their_own_series() {
    let mut g = record(4096, 0.03);
    g.graph = true;
    let text = format!("{}\n{}\n", record(4096, 0.04).to_json(), g.to_json());
    let (s, used) = series(&text, "tokens_per_s");
    assert_eq!(used, 2);
    assert!(s.contains_key("sima f16 D=64") && s.contains_key("sima f16 D=64 graph"));
}

#[test]
fn soft_newton_counts_its_matrices() {
    // issue 4's Newton target: B·H = 16 fp32 matrices of 64×64, T = 20.
    let mut newton = Case::new(
        BenchOp::SoftNewton,
        Dims::new(1, 16, 64, 64),
        DType::F32,
        false,
    );
    newton.landmarks = 64;
    assert_eq!(newton.label(), "m=64,T=20");
    // A read and Z written once.
    assert_eq!(newton.min_bytes(), (2 * 16 * 64 * 64 * 4) as f64);
    // Two m³ products per step.
    assert_eq!(newton.flops(), 16.0 * 4.0 * 64.0_f64.powi(3) * 20.0);
    assert!(!BenchOp::SoftNewton.has_causal());
    // The cuBLAS loop: the same counts, A, Z and three scratch matrices (Â, Z·Â, the other Z).
    let b = BaselineCase::composed(newton).unwrap();
    assert_eq!(
        (b.name(), b.label()),
        ("baseline:soft_newton".into(), "m=64,T=20".into())
    );
    assert_eq!(
        (b.min_bytes(), b.flops()),
        (newton.min_bytes(), newton.flops())
    );
    assert!(b.device_bytes().unwrap() >= 5 * 16 * 64 * 64 * 4);
    assert!(newton.device_bytes().unwrap() >= 2 * 16 * 64 * 64 * 4);
    // Paths asked for by name are labelled (so they never stand in for the plain call's path in
    // `sofa report`); whether one can run is checked before anything is allocated.
    use sofa::bench::workload::NEWTON_PATHS;
    use sofa::ops::soft::NewtonPath;
    let labels: Vec<String> = NEWTON_PATHS
        .iter()
        .map(|&(_, path)| {
            Case {
                newton_path: path,
                ..newton
            }
            .label()
        })
        .collect();
    assert_eq!(
        labels,
        [
            "m=64,T=20",
            "m=64,T=20,path=one-launch",
            "m=64,T=20,path=cluster-early",
            "m=64,T=20,path=cluster-late",
            "m=64,T=20,path=cluster-async",
            "m=64,T=20,path=cta",
            "m=64,T=20,path=multi"
        ]
    );
    let big = Case {
        newton_path: NewtonPath::OneLaunchCta,
        landmarks: 256,
        dims: Dims::new(1, 16, 256, 256),
        ..newton
    };
    let e = big.check_newton_path(232_448).unwrap_err();
    assert_eq!(e.argument(), Some("path"), "{e}");
    let multi = Case {
        newton_path: NewtonPath::MultiLaunch,
        ..big
    };
    assert!(multi.check_newton_path(232_448).is_ok());
    // The plain call's path reports its own errors when it runs.
    assert!(Case {
        landmarks: 300,
        ..newton
    }
    .check_newton_path(0)
    .is_ok());
    // Every path fits the case's workspace (the multi-launch path's, the largest).
    assert_eq!(newton.device_bytes().unwrap(), multi_bytes(&newton));
}

fn multi_bytes(c: &Case) -> usize {
    Case {
        newton_path: sofa::ops::soft::NewtonPath::MultiLaunch,
        ..*c
    }
    .device_bytes()
    .unwrap()
}

#[test]
fn cosformer_decode_counts_its_state() {
    // issue 5's decode targets: B = 8, H = 16, D = 64 and B = 64, H = 32, D = 128 (f16 tokens).
    for (b, h, d) in [(8, 16, 64), (64, 32, 128)] {
        let c = Case::new(
            BenchOp::CosformerDecode,
            Dims::new(b, h, 1, d),
            DType::F16,
            false,
        );
        // KVs, KVc (D×Dv each) and zs, zc (D each) in fp32, read and written once, plus the
        // token's q, k, v, o.
        let state = b * h * (2 * d * d + 2 * d) * 4;
        assert_eq!(c.min_bytes(), (2 * state + 4 * b * h * d * 2) as f64);
        assert_eq!(c.device_bytes().unwrap(), state + 4 * b * h * d * 2);
        assert_eq!(c.flops(), 8.0 * (b * h) as f64 * (d * d) as f64);
        assert!(BaselineCase::composed(c).is_none());
    }
    // 256 MiB of KVs, KVc at the large shape (the "256 MB"); 541 MB of state moved plus
    // 2 MB of tokens.
    let big = Case::new(
        BenchOp::CosformerDecode,
        Dims::new(64, 32, 1, 128),
        DType::F16,
        false,
    );
    assert!((big.min_bytes() / 1e6 - 543.2).abs() < 0.1);
    assert!(!BenchOp::CosformerDecode.has_causal() && !BenchOp::CosformerDecode.has_seq());
    assert_eq!(BenchOp::CosformerDecode.name(), "cosformer_decode");
}
