//! `sofa check`: every cross-check of the f64 reference on small random shapes, as a table.
//! A new user's first proof that the math of SPEC.md holds on their machine.

use sofa::reference::aft::{self, AftParams, Bias};
use sofa::reference::cosformer::{self, CosformerParams, State};
use sofa::reference::soft::{self, Landmarks, SoftParams};
use sofa::reference::softmax::{self, SoftmaxParams};
use sofa::reference::{rel_frobenius, sima, Qkv, Rng};
use sofa::{Dims, Result};

#[derive(clap::Args)]
pub struct CheckArgs {
    /// Seed of the random inputs.
    #[arg(long, default_value_t = 0)]
    seed: u64,
}

/// Relative error allowed between two f64 evaluations of the same math.
const TOL: f64 = 1e-10;
/// Newton (T = 60) vs the exact inverse.
const NEWTON_TOL: f64 = 1e-9;

/// One row of the table.
struct Row {
    op: &'static str,
    check: String,
    error: f64,
    tol: f64,
}

/// Random q, k, v of one shape (values in [-1, 1)).
struct Data {
    q: Vec<f64>,
    k: Vec<f64>,
    v: Vec<f64>,
    dims: Dims,
    s: usize,
    dv: usize,
}

impl Data {
    fn new(rng: &mut Rng, dims: Dims, s: usize, dv: usize) -> Self {
        let mut fill = |len| {
            (0..len)
                .map(|_| rng.uniform(-1.0, 1.0))
                .collect::<Vec<f64>>()
        };
        let (b, h) = (dims.b, dims.h);
        Data {
            q: fill(b * h * dims.n * dims.d),
            k: fill(b * h * s * dims.d),
            v: fill(b * h * s * dv),
            dims,
            s,
            dv,
        }
    }

    fn qkv(&self) -> Qkv<'_> {
        Qkv::new(&self.q, &self.k, &self.v, self.dims, self.s, self.dv)
            .expect("consistent by construction")
    }
}

pub fn check(args: &CheckArgs) -> Result<i32> {
    let mut rng = Rng::new(args.seed);
    let mut rows = Vec::new();
    soft_checks(&mut rng, &mut rows)?;
    cosformer_checks(&mut rng, &mut rows)?;
    aft_checks(&mut rng, &mut rows)?;
    sima_checks(&mut rng, &mut rows);
    softmax_checks(&mut rng, &mut rows)?;

    println!(
        "{:<10} {:<52} {:>10} {:>8}  result",
        "op", "check", "error", "tol"
    );
    let mut failed = 0;
    for r in &rows {
        let pass = r.error <= r.tol; // NaN fails
        failed += usize::from(!pass);
        println!(
            "{:<10} {:<52} {:>10.2e} {:>8.0e}  {}",
            r.op,
            r.check,
            r.error,
            r.tol,
            if pass { "pass" } else { "FAIL" }
        );
    }
    println!("{} checks, {} failed", rows.len(), failed);
    Ok(if failed == 0 {
        0
    } else {
        super::EXIT_CHECK_FAILED
    })
}

fn soft_checks(rng: &mut Rng, rows: &mut Vec<Row>) -> Result<()> {
    let x = Data::new(rng, Dims::new(2, 3, 42, 5), 42, 3);
    let given: Vec<f64> = (0..2 * 3 * 5 * 5).map(|_| rng.uniform(-1.0, 1.0)).collect();
    let variants = [
        ("avgpool1d m=7", Landmarks::AvgPool1d { m: 7 }, true),
        ("avgpool1d m=7 untied", Landmarks::AvgPool1d { m: 7 }, false),
        (
            "avgpool2d 6x7 r=2",
            Landmarks::AvgPool2d {
                height: 6,
                width: 7,
                r: 2,
            },
            true,
        ),
        ("given m=5", Landmarks::Given { m: 5 }, true),
    ];
    for (name, landmarks, tied) in variants {
        let p = SoftParams {
            landmarks,
            tied,
            ..SoftParams::default()
        };
        let g = matches!(landmarks, Landmarks::Given { .. }).then_some(&given[..]);
        let err = rel_frobenius(
            &soft::linear(&x.qkv(), g, &p)?,
            &soft::literal(&x.qkv(), g, &p)?,
        );
        rows.push(Row {
            op: "soft",
            check: format!("linear = literal, {name}"),
            error: err,
            tol: TOL,
        });
    }
    // Well-separated landmarks: A is near I, so 60 Newton steps reach (A + λI)⁻¹.
    let (m, d) = (9, 4);
    let l: Vec<f64> = (0..m * d).map(|_| rng.uniform(-2.0, 2.0)).collect();
    let a = soft::gaussian(&l, &l, d);
    let p = SoftParams {
        newton_iters: 60,
        ..SoftParams::default()
    };
    let mut ar = a.clone();
    (0..m).for_each(|i| ar[i * m + i] += p.ridge);
    let err = match soft::exact_inverse(&ar, m) {
        Some(inv) => rel_frobenius(&soft::newton_pinv(&a, m, &p), &inv),
        None => f64::NAN,
    };
    rows.push(Row {
        op: "soft",
        check: "Newton T=60 = exact (A+λI)⁻¹".into(),
        error: err,
        tol: NEWTON_TOL,
    });
    // m = N: landmarks are the scaled queries, P is the Gaussian kernel exp(−‖q_i−q_j‖²/(2√D)).
    let y = Data::new(rng, Dims::new(1, 2, 11, 6), 11, 6);
    let p = SoftParams {
        landmarks: Landmarks::AvgPool1d { m: 11 },
        ..SoftParams::default()
    };
    let (pm, _) = soft::gaussian_products(&y.qkv(), None, &p)?;
    let want: Vec<f64> = (0..2 * 11 * 11)
        .map(|i| {
            let (bh, r, c) = (i / 121, i / 11 % 11, i % 11);
            let row = |j: usize| &y.q[(bh * 11 + j) * 6..(bh * 11 + j + 1) * 6];
            let d2: f64 = row(r)
                .iter()
                .zip(row(c))
                .map(|(a, b)| (a - b) * (a - b))
                .sum();
            (-d2 / (2.0 * 6f64.sqrt())).exp()
        })
        .collect();
    rows.push(Row {
        op: "soft",
        check: "avgpool1d m=N: P = Gaussian kernel".into(),
        error: rel_frobenius(&pm, &want),
        tol: TOL,
    });
    Ok(())
}

fn cosformer_checks(rng: &mut Rng, rows: &mut Vec<Row>) -> Result<()> {
    let selfx = Data::new(rng, Dims::new(2, 3, 17, 5), 17, 7);
    let cross = Data::new(rng, Dims::new(1, 2, 13, 6), 21, 4);
    let variants = [
        ("non-causal", &selfx, CosformerParams::default()),
        (
            "causal",
            &selfx,
            CosformerParams {
                causal: true,
                ..Default::default()
            },
        ),
        (
            "causal M=40",
            &selfx,
            CosformerParams {
                causal: true,
                m: Some(40),
                ..Default::default()
            },
        ),
        ("cross N=13 S=21", &cross, CosformerParams::default()),
    ];
    for (name, x, p) in variants {
        let err = rel_frobenius(
            &cosformer::linear(&x.qkv(), &p)?,
            &cosformer::literal(&x.qkv(), &p)?,
        );
        rows.push(Row {
            op: "cosformer",
            check: format!("linear = literal, {name}"),
            error: err,
            tol: TOL,
        });
    }
    // Prefill 12 tokens then 5 decode steps = causal on 17 tokens, M = 20 throughout.
    let p = CosformerParams {
        causal: true,
        m: Some(20),
        ..Default::default()
    };
    let want = cosformer::literal(&selfx.qkv(), &p)?;
    let (b, h, d, dv, n0) = (2, 3, 5, 7, 12);
    let mut st = State::new(b, h, d, dv, &p)?;
    let take = |x: &[f64], w: usize, lo: usize, hi: usize| -> Vec<f64> {
        (0..b * h)
            .flat_map(|bh| x[(bh * 17 + lo) * w..(bh * 17 + hi) * w].to_vec())
            .collect()
    };
    let mut got = vec![0.0; want.len()];
    let mut put = |o: &[f64], lo: usize, hi: usize| {
        for (bh, chunk) in o.chunks_exact((hi - lo) * dv).enumerate() {
            got[(bh * 17 + lo) * dv..(bh * 17 + hi) * dv].copy_from_slice(chunk);
        }
    };
    let o = st.prefill(
        &take(&selfx.q, d, 0, n0),
        &take(&selfx.k, d, 0, n0),
        &take(&selfx.v, dv, 0, n0),
    )?;
    put(&o, 0, n0);
    for t in n0..17 {
        let o = st.step(
            &take(&selfx.q, d, t, t + 1),
            &take(&selfx.k, d, t, t + 1),
            &take(&selfx.v, dv, t, t + 1),
        )?;
        put(&o, t, t + 1);
    }
    rows.push(Row {
        op: "cosformer",
        check: "prefill 12 + 5 steps = causal on 17".into(),
        error: rel_frobenius(&got, &want),
        tol: TOL,
    });
    Ok(())
}

fn aft_checks(rng: &mut Rng, rows: &mut Vec<Row>) -> Result<()> {
    let (b, h, t, d, s) = (2, 3, 19, 5, 4);
    let x = Data::new(rng, Dims::new(b, h, t, d), t, d);
    let mut fill = |len: usize| {
        (0..len)
            .map(|_| rng.uniform(-2.0, 2.0))
            .collect::<Vec<f64>>()
    };
    let (wf, wl, u) = (fill(t * t), fill(t * (2 * s - 1)), fill(h * (2 * s - 1)));
    for causal in [false, true] {
        let p = AftParams { causal };
        let tag = if causal { "causal" } else { "non-causal" };
        let variants = [
            ("aft_full", Bias::Full(&wf)),
            ("aft_local", Bias::Local { w: &wl, window: s }),
            ("aft_simple", Bias::None),
            ("aft_conv", Bias::Conv { u: &u, window: s }),
        ];
        for (op, bias) in variants {
            let err = rel_frobenius(
                &aft::linear(&x.qkv(), &bias, &p)?,
                &aft::literal(&x.qkv(), &bias, &p)?,
            );
            rows.push(Row {
                op,
                check: format!("linear = literal, {tag}"),
                error: err,
                tol: TOL,
            });
        }
        // Window s = T: the band covers every pair; as a dense matrix it is AFT-full's w.
        let (big, bw) = (t, 2 * t - 1);
        let band: Vec<f64> = fill(t * bw);
        let dense: Vec<f64> = (0..t * t)
            .map(|i| band[(i / t) * bw + i % t + big - 1 - i / t])
            .collect();
        let local = aft::linear(
            &x.qkv(),
            &Bias::Local {
                w: &band,
                window: big,
            },
            &p,
        )?;
        let full = aft::literal(&x.qkv(), &Bias::Full(&dense), &p)?;
        rows.push(Row {
            op: "aft_local",
            check: format!("window=T = aft_full with the band, {tag}"),
            error: rel_frobenius(&local, &full),
            tol: TOL,
        });
        // Conv = local with the Toeplitz band it implies (one head at a time).
        let conv = aft::linear(&x.qkv(), &Bias::Conv { u: &u, window: s }, &p)?;
        let mut via_local = Vec::new();
        for bi in 0..b {
            for hi in 0..h {
                let row = &u[hi * (2 * s - 1)..(hi + 1) * (2 * s - 1)];
                let toeplitz: Vec<f64> = (0..t).flat_map(|_| row.iter().copied()).collect();
                let one = Dims::new(1, 1, t, d);
                let off = (bi * h + hi) * t * d;
                let sl = |z: &Vec<f64>| z[off..off + t * d].to_vec();
                let (q1, k1, v1) = (sl(&x.q), sl(&x.k), sl(&x.v));
                let x1 = Qkv::self_attn(&q1, &k1, &v1, one, d)?;
                via_local.extend(aft::literal(
                    &x1,
                    &Bias::Local {
                        w: &toeplitz,
                        window: s,
                    },
                    &p,
                )?);
            }
        }
        rows.push(Row {
            op: "aft_conv",
            check: format!("= aft_local with Toeplitz w, {tag}"),
            error: rel_frobenius(&conv, &via_local),
            tol: TOL,
        });
        let zeros = vec![0.0; t * t];
        let full0 = aft::linear(&x.qkv(), &Bias::Full(&zeros), &p)?;
        let simple = aft::literal(&x.qkv(), &Bias::None, &p)?;
        rows.push(Row {
            op: "aft_full",
            check: format!("w = 0 = aft_simple, {tag}"),
            error: rel_frobenius(&full0, &simple),
            tol: TOL,
        });
    }
    Ok(())
}

fn sima_checks(rng: &mut Rng, rows: &mut Vec<Row>) {
    for (n, d) in [(23, 6), (5, 9)] {
        let x = Data::new(rng, Dims::new(2, 2, n, d), n, 7);
        let err = rel_frobenius(
            &sima::linear(&x.q, &x.k, &x.v, x.dims, 7),
            &sima::literal(&x.q, &x.k, &x.v, x.dims, 7),
        );
        rows.push(Row {
            op: "sima",
            check: format!("(qk^T)v = q(k^T v) normalized, N={n} D={d}"),
            error: err,
            tol: TOL,
        });
    }
    // Zero columns of q: those channels contribute nothing; output finite. Zero q entirely: O = 0.
    let mut x = Data::new(rng, Dims::new(1, 2, 9, 4), 9, 3);
    x.q.iter_mut().for_each(|v| *v = 0.0);
    let mut worst = 0.0f64;
    for o in [
        sima::linear(&x.q, &x.k, &x.v, x.dims, 3),
        sima::literal(&x.q, &x.k, &x.v, x.dims, 3),
    ] {
        worst = worst.max(o.iter().fold(0.0, |m, v| {
            if v.is_finite() {
                m.max(v.abs())
            } else {
                f64::NAN
            }
        }));
    }
    rows.push(Row {
        op: "sima",
        check: "zero q columns give 0, not NaN".into(),
        error: worst,
        tol: 0.0,
    });
}

fn softmax_checks(rng: &mut Rng, rows: &mut Vec<Row>) -> Result<()> {
    let selfx = Data::new(rng, Dims::new(2, 2, 15, 6), 15, 5);
    let cross = Data::new(rng, Dims::new(1, 3, 7, 4), 12, 3);
    let variants = [
        ("non-causal", &selfx, SoftmaxParams::default()),
        (
            "causal",
            &selfx,
            SoftmaxParams {
                causal: true,
                ..Default::default()
            },
        ),
        ("cross N=7 S=12", &cross, SoftmaxParams::default()),
    ];
    for (name, x, p) in variants {
        let err = rel_frobenius(
            &softmax::online(&x.qkv(), &p)?,
            &softmax::literal(&x.qkv(), &p)?,
        );
        rows.push(Row {
            op: "softmax",
            check: format!("online = literal, {name}"),
            error: err,
            tol: TOL,
        });
    }
    Ok(())
}
