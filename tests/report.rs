//! `sofa::bench::targets` and `sofa::bench::crossover` on fixed records: which record each target
//! judges, its arithmetic, what counts as not measured, and where an op overtakes softmax.

use serde_json::{json, Value};
use sofa::bench::targets::{judge_all, markdown, Verdict};

/// A record of B = 1, H = 16, D = 64, f16, eager, with the given fields on top.
fn rec(op: &str, variant: &str, n: u64, extra: Value) -> String {
    let mut r = json!({
        "op": op, "variant": variant, "b": 1, "h": 16, "n": n, "s": n, "d": 64, "dv": 64,
        "dtype": "f16", "graph": false, "median_ms": 1.0, "tokens_per_s": 1e6,
        "gb_per_s": 1000.0, "peak_copy_gb_per_s": 3000.0, "empty_launch_pair_us": 5.0,
        "pct_roofline": 33.3, "speedup_vs_baseline": null,
    });
    for (k, v) in extra.as_object().unwrap() {
        r[k] = v.clone();
    }
    r.to_string()
}

fn find<'a>(
    rows: &'a [sofa::bench::targets::Row],
    target: &str,
) -> Vec<&'a sofa::bench::targets::Row> {
    rows.iter()
        .filter(|r| r.target.starts_with(target))
        .collect()
}

#[test]
fn nothing_measured_is_said() {
    let rows = judge_all("not json\n{\"peaks\": 1}\n");
    assert!(rows.len() >= 20);
    assert!(rows
        .iter()
        .all(|r| r.verdict == Verdict::NotMeasured && r.measured == "no record"));
    assert!(markdown(&rows).contains(&format!("0 met, 0 missed, {} not measured", rows.len())));
}

#[test]
fn newton_speedup_and_time_per_matrix() {
    let newton = |speedup: f64| {
        rec(
            "soft_newton",
            "m=64,T=20",
            64,
            json!({"speedup_vs_baseline": speedup, "median_ms": 0.032}),
        )
    };
    let rows = judge_all(&newton(12.5));
    let r = find(&rows, "newton_pinv");
    assert_eq!(r.len(), 1);
    assert_eq!(r[0].verdict, Verdict::Met);
    assert_eq!(r[0].measured, "12.50× the baseline (2.00 µs per matrix)");
    assert_eq!(
        find(&judge_all(&newton(9.9)), "newton_pinv")[0].verdict,
        Verdict::Missed
    );
}

#[test]
fn the_last_record_of_a_case_is_judged_never_the_best() {
    let a = rec("cosformer", "", 65536, json!({"gb_per_s": 2700.0}));
    let b = rec("cosformer", "", 65536, json!({"gb_per_s": 2100.0}));
    let rows = judge_all(&format!("{a}\n{b}\n"));
    let r = find(&rows, "cosFormer non-causal, N ≥ 64k: ≥ 80");
    assert_eq!(r.len(), 1);
    assert_eq!(
        (r[0].verdict, r[0].measured.as_str()),
        (Verdict::Missed, "70.0 % of copy rate")
    );
    let rows = judge_all(&format!("{b}\n{a}\n"));
    assert_eq!(
        find(&rows, "cosFormer non-causal, N ≥ 64k: ≥ 80")[0].verdict,
        Verdict::Met
    );
}

#[test]
fn one_row_per_length_and_dtype_in_range() {
    let lines = [
        rec("aft_simple", "", 16384, json!({})), // below the N ≥ 64k range
        rec("aft_simple", "", 1 << 20, json!({"gb_per_s": 2500.0})),
        rec(
            "aft_simple",
            "",
            65536,
            json!({"gb_per_s": 2460.0, "dtype": "bf16"}),
        ), // f16 only
        rec("aft_simple", "", 65536, json!({"gb_per_s": 2460.0})),
    ]
    .join("\n");
    let rows = judge_all(&lines);
    let r = find(&rows, "AFT-simple, N ≥ 64k");
    let cases: Vec<_> = r.iter().map(|r| (r.case.as_str(), r.verdict)).collect();
    assert_eq!(
        cases,
        [
            ("N = 65536, f16", Verdict::Met),
            ("N = 1048576, f16", Verdict::Met)
        ]
    );
}

#[test]
fn other_schedules_graphs_and_shapes_do_not_count() {
    let lines = [
        rec(
            "cosformer",
            "causal,separate",
            65536,
            json!({"gb_per_s": 2900.0}),
        ),
        rec(
            "cosformer",
            "causal,rows=512",
            65536,
            json!({"gb_per_s": 2900.0}),
        ),
        rec(
            "cosformer",
            "causal",
            65536,
            json!({"gb_per_s": 2900.0, "graph": true}),
        ),
        rec(
            "cosformer",
            "causal",
            65536,
            json!({"gb_per_s": 2900.0, "d": 128}),
        ),
    ]
    .join("\n");
    let rows = judge_all(&lines);
    let r = find(&rows, "cosFormer causal, N ≥ 8k: ≥ 60");
    assert_eq!((r.len(), r[0].verdict), (1, Verdict::NotMeasured));
}

#[test]
fn causal_against_non_causal() {
    let plain = rec("aft_local", "s=64", 65536, json!({"median_ms": 0.30}));
    let causal = |ms: f64| rec("aft_local", "causal,s=64", 65536, json!({"median_ms": ms}));
    let judge = |lines: String| {
        let rows = judge_all(&lines);
        let r = find(&rows, "AFT-local s = 64 causal")[0].clone();
        (r.verdict, r.measured)
    };
    assert_eq!(
        judge(format!("{plain}\n{}", causal(0.36))),
        (Verdict::Met, "1.20× non-causal".into())
    );
    assert_eq!(
        judge(format!("{plain}\n{}", causal(0.48))).0,
        Verdict::Missed
    );
    // No non-causal run of the same case: not measured, and said why.
    let (v, m) = judge(causal(0.36));
    assert_eq!(
        (v, m.as_str()),
        (Verdict::NotMeasured, "a value it needs is missing")
    );
}

#[test]
fn causal_cosformer_against_fla() {
    let ours = rec("cosformer", "causal", 8192, json!({"tokens_per_s": 9e8}));
    let fla = |t: f64| rec("cosformer_fla", "causal", 8192, json!({"tokens_per_s": t}));
    let judge = |lines: String| {
        let rows = judge_all(&lines);
        let r = find(&rows, "cosFormer causal, N ≥ 8k: ≥ 2×")[0].clone();
        (r.verdict, r.measured)
    };
    assert_eq!(
        judge(format!("{ours}\n{}", fla(3e8))),
        (Verdict::Met, "3.00× cosformer_fla".into())
    );
    assert_eq!(judge(format!("{ours}\n{}", fla(5e8))).0, Verdict::Missed);
    // fla at another length does not count.
    let other = rec(
        "cosformer_fla",
        "causal",
        16384,
        json!({"tokens_per_s": 1e8}),
    );
    assert_eq!(judge(format!("{ours}\n{other}")).0, Verdict::NotMeasured);
}

#[test]
fn short_sequences_against_the_launch_pair_and_decode_in_microseconds() {
    let short = rec(
        "cosformer",
        "",
        1024,
        json!({"median_ms": 0.008, "empty_launch_pair_us": 5.0}),
    );
    let decode = |b: u64, h: u64, d: u64, ms: f64| {
        rec(
            "cosformer_decode",
            "",
            1,
            json!({"b": b, "h": h, "d": d, "median_ms": ms}),
        )
    };
    let lines = [short, decode(8, 16, 64, 0.0123), decode(64, 32, 128, 0.25)].join("\n");
    let rows = judge_all(&lines);
    let s = find(&rows, "cosFormer non-causal, N = 1k")[0];
    assert_eq!(
        (s.verdict, s.measured.as_str()),
        (Verdict::Met, "1.60× an empty launch pair")
    );
    let d = find(&rows, "decode step B = 8")[0];
    assert_eq!(
        (d.verdict, d.measured.as_str()),
        (Verdict::Missed, "12.30 µs")
    );
    assert_eq!(
        d.case, "f16",
        "a decode step has no sequence length to show"
    );
    let d = find(&rows, "decode step B = 64")[0];
    assert_eq!(
        (d.verdict, d.measured.as_str()),
        (Verdict::Missed, "33.3 % of copy rate")
    );
}

#[test]
fn a_missing_measurement_is_not_a_verdict() {
    // A run without peaks has no % of roofline; without --baseline no speedup.
    let r = rec("soft", "m=64", 65536, json!({"pct_roofline": null}));
    let rows = judge_all(&r);
    for t in [
        "soft::attention m = 64, N ≥ 64k: ≥ 70",
        "soft::attention m = 64, N ≥ 64k: ≥ 2×",
    ] {
        assert_eq!(find(&rows, t)[0].verdict, Verdict::NotMeasured, "{t}");
    }
    // That record is at 64k, not 1M.
    assert_eq!(
        find(&rows, "soft::attention m = 64, N = 1M")[0].measured,
        "no record"
    );
    let rows = judge_all(&rec("soft", "m=64", 1 << 20, json!({"median_ms": 3.5})));
    let r = find(&rows, "soft::attention m = 64, N = 1M")[0];
    assert_eq!((r.verdict, r.measured.as_str()), (Verdict::Met, "3.500 ms"));
}

/// A softmax or sofa record of B = 1, H = 16, D = 64, f16 at length n taking `ms`.
fn timed(op: &str, variant: &str, n: u64, ms: f64) -> String {
    rec(op, variant, n, json!({ "median_ms": ms }))
}

#[test]
fn crossover_brackets_between_measured_lengths() {
    use sofa::bench::crossover::{crossings, Bracket};
    let lines = [
        // SimA: slower at 1k, faster from 4k on against SDPA; faster everywhere against cuBLAS.
        timed("sima", "", 1024, 0.02),
        timed("sima", "", 4096, 0.04),
        timed("sima", "", 16384, 0.1),
        timed("softmax_sdpa", "", 1024, 0.01),
        timed("softmax_sdpa", "", 4096, 0.05),
        timed("softmax_sdpa", "", 16384, 0.6),
        timed("softmax", "", 1024, 0.03),
        timed("softmax", "", 4096, 0.2),
        // Causal AFT-local: faster at 4k, slower again at 16k: not for good until 64k.
        timed("aft_local", "causal,s=64", 4096, 0.02),
        timed("aft_local", "causal,s=64", 16384, 0.5),
        timed("aft_local", "causal,s=64", 65536, 1.0),
        timed("softmax_sdpa", "causal", 4096, 0.03),
        timed("softmax_sdpa", "causal", 16384, 0.3),
        timed("softmax_sdpa", "causal", 65536, 4.0),
        // cosFormer never faster than SDPA where both ran; the non-causal SDPA does not count
        // for a causal op.
        timed("cosformer", "causal", 1024, 0.5),
        timed("cosformer", "causal", 2048, 0.5),
        timed("softmax_sdpa", "causal", 1024, 0.01),
        timed("softmax_sdpa", "causal", 2048, 0.02),
        timed("softmax_sdpa", "", 2048, 1.0),
        // PyTorch's own SimA and baselines are no sofa curve.
        timed("sima_torch", "", 4096, 9.0),
        timed("baseline:sima", "", 4096, 9.0),
    ]
    .join("\n");
    let rows = crossings(&lines);
    let got: Vec<_> = rows
        .iter()
        .map(|r| (r.op.as_str(), r.variant.as_str(), r.vs))
        .collect();
    assert_eq!(
        got,
        [
            (
                "aft_local",
                "causal,s=64",
                [Some(Bracket::Between(16384, 65536)), None]
            ),
            (
                "cosformer",
                "causal",
                [Some(Bracket::NotReached(2048)), None]
            ),
            (
                "sima",
                "",
                [
                    Some(Bracket::Between(1024, 4096)),
                    Some(Bracket::AtOrBelow(1024))
                ]
            ),
        ]
    );
    let table = sofa::bench::crossover::markdown(&rows);
    assert!(
        table.contains("| sima |  | 1,16,64 | f16 | 1k–4k | ≤ 1k |"),
        "{table}"
    );
    assert!(table.contains("| not by 2k | — |"), "{table}");
}

#[test]
fn crossover_takes_the_last_record_and_skips_graphs_and_cross_lengths() {
    use sofa::bench::crossover::{crossings, Bracket};
    let lines = [
        timed("sima", "", 4096, 0.5),
        timed("sima", "", 4096, 0.01), // the later run counts
        rec("sima", "", 4096, json!({"median_ms": 9.0, "graph": true})),
        rec("sima", "", 4096, json!({"median_ms": 9.0, "s": 8192})),
        timed("softmax_sdpa", "", 4096, 0.02),
    ]
    .join("\n");
    let rows = crossings(&lines);
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].vs, [Some(Bracket::AtOrBelow(4096)), None]);
}

#[test]
fn sources_name_device_and_commit() {
    let a = rec(
        "sima",
        "",
        4096,
        json!({"device": "NVIDIA H100 80GB HBM3", "commit": "abc1234"}),
    );
    let b = rec(
        "sima",
        "",
        8192,
        json!({"device": "NVIDIA H100 80GB HBM3", "commit": "abc1234"}),
    );
    let c = rec(
        "softmax_sdpa",
        "",
        4096,
        json!({"device": "NVIDIA H100 80GB HBM3"}),
    );
    let got = sofa::bench::targets::sources(&format!("{a}\n{b}\n{c}\n{{}}\n"));
    let h100 = "NVIDIA H100 80GB HBM3".to_string();
    assert_eq!(
        got,
        [(h100.clone(), "abc1234".into(), 2), (h100, "?".into(), 1)]
    );
}
