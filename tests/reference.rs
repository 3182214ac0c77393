//! The f64 CPU reference pinned: linear = literal forms, identities between variants, decode
//! = causal, Newton vs an exact solve, hand-worked cases, and typed errors on bad input.

use sofa::reference::aft::{self, AftParams, Bias};
use sofa::reference::cosformer::{self, CosformerParams, State};
use sofa::reference::soft::{self, Landmarks, SoftParams};
use sofa::reference::softmax::{self, SoftmaxParams};
use sofa::reference::{rel_frobenius, sima, Qkv, Rng};
use sofa::{Dims, Error};

const TOL: f64 = 1e-10;

fn rand(rng: &mut Rng, len: usize, lo: f64, hi: f64) -> Vec<f64> {
    (0..len).map(|_| rng.uniform(lo, hi)).collect()
}

/// Random q [B,H,N,D], k [B,H,S,D], v [B,H,S,Dv] in [-1, 1).
struct Data {
    q: Vec<f64>,
    k: Vec<f64>,
    v: Vec<f64>,
    dims: Dims,
    s: usize,
    dv: usize,
}

impl Data {
    fn new(seed: u64, dims: Dims, s: usize, dv: usize) -> Self {
        let mut rng = Rng::new(seed);
        let bh = dims.b * dims.h;
        let q = rand(&mut rng, bh * dims.n * dims.d, -1.0, 1.0);
        let k = rand(&mut rng, bh * s * dims.d, -1.0, 1.0);
        let v = rand(&mut rng, bh * s * dv, -1.0, 1.0);
        Data {
            q,
            k,
            v,
            dims,
            s,
            dv,
        }
    }

    fn selfattn(seed: u64, b: usize, h: usize, n: usize, d: usize, dv: usize) -> Self {
        Self::new(seed, Dims::new(b, h, n, d), n, dv)
    }

    fn x(&self) -> Qkv<'_> {
        Qkv::new(&self.q, &self.k, &self.v, self.dims, self.s, self.dv).unwrap()
    }
}

fn assert_close(got: &[f64], want: &[f64], tol: f64, what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: lengths");
    let err = rel_frobenius(got, want);
    assert!(
        err <= tol,
        "{what}: rel. error {err:.3e} > {tol:.1e}\n got {:?}\nwant {:?}",
        &got[..got.len().min(8)],
        &want[..want.len().min(8)]
    );
}

// ---------- linear form = literal form ----------

#[test]
fn soft_linear_equals_literal() {
    for (seed, (b, h, n, d, dv)) in [(1, 2, 37, 5, 3), (1, 1, 1, 1, 1), (2, 3, 50, 7, 9)]
        .into_iter()
        .enumerate()
    {
        let x = Data::selfattn(seed as u64, b, h, n, d, dv);
        let mut cases = vec![
            SoftParams {
                landmarks: Landmarks::AvgPool1d { m: n.min(7) },
                ..Default::default()
            },
            SoftParams {
                landmarks: Landmarks::AvgPool1d { m: n },
                tied: false,
                ..Default::default()
            },
        ];
        if n == 50 {
            cases.push(SoftParams {
                landmarks: Landmarks::AvgPool2d {
                    height: 5,
                    width: 10,
                    r: 3,
                },
                ..Default::default()
            });
        }
        for p in cases {
            let lin = soft::linear(&x.x(), None, &p).unwrap();
            assert_close(
                &lin,
                &soft::literal(&x.x(), None, &p).unwrap(),
                TOL,
                &format!("soft {p:?}"),
            );
        }
        let m = 4;
        let given = rand(&mut Rng::new(9), b * h * m * d, -1.0, 1.0);
        let p = SoftParams {
            landmarks: Landmarks::Given { m },
            ..Default::default()
        };
        let lin = soft::linear(&x.x(), Some(&given), &p).unwrap();
        assert_close(
            &lin,
            &soft::literal(&x.x(), Some(&given), &p).unwrap(),
            TOL,
            "soft given",
        );
    }
}

#[test]
fn cosformer_linear_equals_literal() {
    let shapes = [
        (2, 3, 17, 17, 5, 7),
        (1, 1, 1, 1, 1, 1),
        (1, 2, 13, 21, 6, 4),
        (1, 2, 29, 6, 3, 5),
    ];
    for (seed, (b, h, n, s, d, dv)) in shapes.into_iter().enumerate() {
        let x = Data::new(seed as u64, Dims::new(b, h, n, d), s, dv);
        let mut cases = vec![
            CosformerParams::default(),
            CosformerParams {
                m: Some(n.max(s) + 11),
                ..Default::default()
            },
        ];
        if n == s {
            cases.push(CosformerParams {
                causal: true,
                ..Default::default()
            });
            cases.push(CosformerParams {
                causal: true,
                m: Some(3 * n),
                ..Default::default()
            });
        }
        for p in cases {
            let lin = cosformer::linear(&x.x(), &p).unwrap();
            assert_close(
                &lin,
                &cosformer::literal(&x.x(), &p).unwrap(),
                TOL,
                &format!("cosformer {p:?} N={n} S={s}"),
            );
        }
    }
}

#[test]
fn cosformer_without_relu_takes_features_as_given() {
    let mut x = Data::selfattn(4, 1, 2, 11, 3, 2);
    x.q.iter_mut()
        .chain(x.k.iter_mut())
        .for_each(|v| *v = v.abs());
    let relu = cosformer::linear(&x.x(), &CosformerParams::default()).unwrap();
    let raw = CosformerParams {
        relu: false,
        ..Default::default()
    };
    assert_close(
        &cosformer::literal(&x.x(), &raw).unwrap(),
        &relu,
        TOL,
        "relu off on non-negative input",
    );
}

/// Every AFT bias of one shape: full, local (window 4), none, conv.
fn aft_biases(
    rng: &mut Rng,
    t: usize,
    h: usize,
    s: usize,
    range: f64,
) -> (Vec<f64>, Vec<f64>, Vec<f64>) {
    (
        rand(rng, t * t, -range, range),
        rand(rng, t * (2 * s - 1), -range, range),
        rand(rng, h * (2 * s - 1), -range, range),
    )
}

#[test]
fn aft_linear_equals_literal() {
    for (seed, (b, h, t, d, s)) in [(2, 3, 19, 5, 4), (1, 1, 1, 1, 1), (1, 2, 23, 3, 30)]
        .into_iter()
        .enumerate()
    {
        let x = Data::selfattn(seed as u64, b, h, t, d, d);
        let (wf, wl, u) = aft_biases(&mut Rng::new(77), t, h, s, 2.0);
        for causal in [false, true] {
            let p = AftParams { causal };
            for bias in [
                Bias::Full(&wf),
                Bias::Local { w: &wl, window: s },
                Bias::None,
                Bias::Conv { u: &u, window: s },
            ] {
                let lin = aft::linear(&x.x(), &bias, &p).unwrap();
                assert_close(
                    &lin,
                    &aft::literal(&x.x(), &bias, &p).unwrap(),
                    TOL,
                    &format!("aft {bias:?} causal={causal}"),
                );
            }
        }
    }
}

#[test]
fn aft_large_keys_and_bias_do_not_overflow() {
    let (b, h, t, d, s) = (1, 2, 31, 4, 5);
    let mut rng = Rng::new(5);
    let mut x = Data::selfattn(5, b, h, t, d, d);
    x.k = rand(&mut rng, b * h * t * d, -60.0, 60.0);
    let (wf, wl, u) = aft_biases(&mut rng, t, h, s, 60.0);
    for causal in [false, true] {
        let p = AftParams { causal };
        for bias in [
            Bias::Full(&wf),
            Bias::Local { w: &wl, window: s },
            Bias::None,
            Bias::Conv { u: &u, window: s },
        ] {
            let lit = aft::literal(&x.x(), &bias, &p).unwrap();
            assert!(lit.iter().all(|v| v.is_finite()), "literal {bias:?}");
            assert_close(
                &aft::linear(&x.x(), &bias, &p).unwrap(),
                &lit,
                1e-9,
                &format!("|K|,|w| <= 60 {bias:?}"),
            );
        }
    }
}

#[test]
fn aft_causal_prefix_far_below_the_column_max_is_still_exact() {
    // Early keys sit 800 below the column max: exp underflows to 0 in the shared-max sums, and
    // the guarded denominator falls back to a joint max for those rows.
    let (t, d, s) = (12, 2, 3);
    let mut x = Data::selfattn(6, 1, 1, t, d, d);
    x.k.iter_mut()
        .enumerate()
        .for_each(|(i, v)| *v += if i / d < t / 2 { -400.0 } else { 400.0 });
    let (wf, wl, u) = aft_biases(&mut Rng::new(6), t, 1, s, 1.0);
    let p = AftParams { causal: true };
    for bias in [
        Bias::Full(&wf),
        Bias::Local { w: &wl, window: s },
        Bias::None,
        Bias::Conv { u: &u, window: s },
    ] {
        let lit = aft::literal(&x.x(), &bias, &p).unwrap();
        assert_close(
            &aft::linear(&x.x(), &bias, &p).unwrap(),
            &lit,
            TOL,
            &format!("underflowing prefix {bias:?}"),
        );
    }
}

#[test]
fn softmax_online_equals_literal() {
    for (seed, (b, h, n, s, d, dv)) in [
        (2, 2, 15, 15, 6, 5),
        (1, 3, 7, 12, 4, 3),
        (1, 1, 1, 1, 1, 1),
    ]
    .into_iter()
    .enumerate()
    {
        let x = Data::new(seed as u64, Dims::new(b, h, n, d), s, dv);
        let mut cases = vec![
            SoftmaxParams::default(),
            SoftmaxParams {
                scale: Some(3.0),
                ..Default::default()
            },
        ];
        if n == s {
            cases.push(SoftmaxParams {
                causal: true,
                ..Default::default()
            });
        }
        for p in cases {
            assert_close(
                &softmax::online(&x.x(), &p).unwrap(),
                &softmax::literal(&x.x(), &p).unwrap(),
                TOL,
                &format!("softmax {p:?}"),
            );
        }
    }
}

// ---------- identities ----------

/// Token range `lo..hi` of every (b,h) slice of a `[B·H, n, w]` tensor.
fn tokens(x: &[f64], bh: usize, n: usize, w: usize, lo: usize, hi: usize) -> Vec<f64> {
    (0..bh)
        .flat_map(|i| x[(i * n + lo) * w..(i * n + hi) * w].to_vec())
        .collect()
}

#[test]
fn cosformer_prefill_then_decode_equals_causal() {
    let (b, h, n, d, dv, big_m) = (2, 3, 19, 5, 4, 25);
    let x = Data::selfattn(11, b, h, n, d, dv);
    let p = CosformerParams {
        causal: true,
        m: Some(big_m),
        ..Default::default()
    };
    let want = cosformer::literal(&x.x(), &p).unwrap();
    for prefill in [1, 7, 18] {
        let mut st = State::new(b, h, d, dv, &p).unwrap();
        let mut parts = vec![st
            .prefill(
                &tokens(&x.q, b * h, n, d, 0, prefill),
                &tokens(&x.k, b * h, n, d, 0, prefill),
                &tokens(&x.v, b * h, n, dv, 0, prefill),
            )
            .unwrap()];
        for t in prefill..n {
            let (q, k, v) = (
                tokens(&x.q, b * h, n, d, t, t + 1),
                tokens(&x.k, b * h, n, d, t, t + 1),
                tokens(&x.v, b * h, n, dv, t, t + 1),
            );
            parts.push(st.step(&q, &k, &v).unwrap());
        }
        assert_eq!(st.pos(), n);
        // Reassemble [B·H, n, Dv] from the per-call [B·H, len, Dv] pieces.
        let mut got = vec![0.0; want.len()];
        let mut lo = 0;
        for part in &parts {
            let len = part.len() / (b * h * dv);
            for (i, chunk) in part.chunks_exact(len * dv).enumerate() {
                got[(i * n + lo) * dv..(i * n + lo + len) * dv].copy_from_slice(chunk);
            }
            lo += len;
        }
        assert_close(
            &got,
            &want,
            TOL,
            &format!("prefill {prefill} + {} steps", n - prefill),
        );
    }
}

#[test]
fn cosformer_decode_state_is_the_sum_of_features() {
    let (d, dv, big_m) = (3, 2, 8);
    let x = Data::selfattn(12, 1, 1, 2, d, dv);
    let p = CosformerParams {
        causal: true,
        m: Some(big_m),
        ..Default::default()
    };
    let mut st = State::new(1, 1, d, dv, &p).unwrap();
    st.prefill(&x.q, &x.k, &x.v).unwrap();
    for c in 0..d {
        let th = |i: f64| std::f64::consts::FRAC_PI_2 * i / big_m as f64;
        let want: f64 = (0..2)
            .map(|j| x.k[j * d + c].max(0.0) * th(j as f64 + 1.0).sin())
            .sum();
        assert!((st.head(0).zs[c] - want).abs() < 1e-15);
    }
}

#[test]
fn aft_local_with_window_at_least_t_equals_full() {
    let (h, t, d) = (2, 13, 3);
    let x = Data::selfattn(21, 2, h, t, d, d);
    for s in [t, t + 4] {
        let bw = 2 * s - 1;
        let band = rand(&mut Rng::new(s as u64), t * bw, -2.0, 2.0);
        let dense: Vec<f64> = (0..t * t)
            .map(|i| band[(i / t) * bw + (i % t) + s - 1 - i / t])
            .collect();
        for causal in [false, true] {
            let p = AftParams { causal };
            let local = aft::linear(
                &x.x(),
                &Bias::Local {
                    w: &band,
                    window: s,
                },
                &p,
            )
            .unwrap();
            assert_close(
                &local,
                &aft::literal(&x.x(), &Bias::Full(&dense), &p).unwrap(),
                TOL,
                &format!("s={s} causal={causal}"),
            );
        }
    }
}

#[test]
fn aft_conv_equals_local_with_its_toeplitz_band() {
    let (h, t, d, s) = (3, 17, 2, 4);
    let x = Data::selfattn(22, 1, h, t, d, d);
    let u = rand(&mut Rng::new(1), h * (2 * s - 1), -2.0, 2.0);
    for causal in [false, true] {
        let p = AftParams { causal };
        let conv = aft::linear(&x.x(), &Bias::Conv { u: &u, window: s }, &p).unwrap();
        for hi in 0..h {
            let toeplitz: Vec<f64> = (0..t)
                .flat_map(|_| u[hi * (2 * s - 1)..(hi + 1) * (2 * s - 1)].to_vec())
                .collect();
            let sl = |z: &[f64]| z[hi * t * d..(hi + 1) * t * d].to_vec();
            let (q, k, v) = (sl(&x.q), sl(&x.k), sl(&x.v));
            let one = Qkv::self_attn(&q, &k, &v, Dims::new(1, 1, t, d), d).unwrap();
            let local = aft::literal(
                &one,
                &Bias::Local {
                    w: &toeplitz,
                    window: s,
                },
                &p,
            )
            .unwrap();
            assert_close(
                &sl(&conv),
                &local,
                TOL,
                &format!("head {hi} causal={causal}"),
            );
        }
    }
}

#[test]
fn aft_with_zero_bias_equals_simple() {
    let (h, t, d, s) = (2, 15, 4, 3);
    let x = Data::selfattn(23, 2, h, t, d, d);
    let (zf, zl, zu) = (
        vec![0.0; t * t],
        vec![0.0; t * (2 * s - 1)],
        vec![0.0; h * (2 * s - 1)],
    );
    for causal in [false, true] {
        let p = AftParams { causal };
        let simple = aft::literal(&x.x(), &Bias::None, &p).unwrap();
        for bias in [
            Bias::Full(&zf),
            Bias::Local { w: &zl, window: s },
            Bias::Conv { u: &zu, window: s },
        ] {
            assert_close(
                &aft::linear(&x.x(), &bias, &p).unwrap(),
                &simple,
                TOL,
                &format!("{bias:?} causal={causal}"),
            );
        }
    }
}

// ---------- SOFT pieces ----------

fn matmul(a: &[f64], b: &[f64], m: usize) -> Vec<f64> {
    (0..m * m)
        .map(|i| (0..m).map(|k| a[(i / m) * m + k] * b[k * m + i % m]).sum())
        .collect()
}

fn eye(m: usize) -> Vec<f64> {
    (0..m * m)
        .map(|i| if i / m == i % m { 1.0 } else { 0.0 })
        .collect()
}

#[test]
fn newton_sixty_steps_match_the_exact_regularized_inverse() {
    let (m, d) = (12, 4);
    let l = rand(&mut Rng::new(31), m * d, -2.0, 2.0);
    let a = soft::gaussian(&l, &l, d);
    let p = SoftParams {
        newton_iters: 60,
        ..Default::default()
    };
    let mut ar = a.clone();
    (0..m).for_each(|i| ar[i * m + i] += p.ridge);
    let inv = soft::exact_inverse(&ar, m).unwrap();
    assert_close(
        &matmul(&ar, &inv, m),
        &eye(m),
        1e-12,
        "the solve itself: (A+λI)·inv = I",
    );
    assert_close(&soft::newton_pinv(&a, m, &p), &inv, 1e-9, "Newton T=60");
    // Twenty steps are the operator; they are not the inverse for every A, but here they are close.
    let z20 = soft::newton_pinv(&a, m, &SoftParams::default());
    assert!(rel_frobenius(&z20, &inv) < 1e-2);
}

#[test]
fn newton_without_ridge_satisfies_the_penrose_conditions() {
    // Two equal landmarks make A singular (rank 3 of 4): Z must be its Moore–Penrose inverse.
    let d = 2;
    let l = [0.0, 0.0, 0.0, 0.0, 1.5, -0.5, -1.0, 1.2];
    let m = 4;
    let a = soft::gaussian(&l, &l, d);
    let z = soft::newton_pinv(
        &a,
        m,
        &SoftParams {
            ridge: 0.0,
            newton_iters: 80,
            ..Default::default()
        },
    );
    let t = |x: &[f64]| {
        (0..m * m)
            .map(|i| x[(i % m) * m + i / m])
            .collect::<Vec<f64>>()
    };
    let (az, za) = (matmul(&a, &z, m), matmul(&z, &a, m));
    assert_close(&matmul(&az, &a, m), &a, 1e-9, "A Z A = A");
    assert_close(&matmul(&za, &z, m), &z, 1e-9, "Z A Z = Z");
    assert_close(&t(&az), &az, 1e-9, "(AZ)ᵀ = AZ");
    assert_close(&t(&za), &za, 1e-9, "(ZA)ᵀ = ZA");
}

#[test]
fn avgpool1d_with_m_equal_n_gives_the_exact_gaussian_kernel() {
    let (h, n, d) = (2, 9, 6);
    let x = Data::selfattn(32, 1, h, n, d, 2);
    let p = SoftParams {
        landmarks: Landmarks::AvgPool1d { m: n },
        ..Default::default()
    };
    let (pm, am) = soft::gaussian_products(&x.x(), None, &p).unwrap();
    let mut want = Vec::new();
    for hi in 0..h {
        for i in 0..n {
            for j in 0..n {
                let row = |r: usize| &x.q[(hi * n + r) * d..(hi * n + r + 1) * d];
                let d2: f64 = row(i)
                    .iter()
                    .zip(row(j))
                    .map(|(a, b)| (a - b) * (a - b))
                    .sum();
                want.push((-d2 / (2.0 * (d as f64).sqrt())).exp());
            }
        }
    }
    assert_close(&pm, &want, 1e-14, "P");
    assert_close(&am, &want, 1e-14, "A (landmarks = the scaled queries)");
}

#[test]
fn landmark_pooling_by_hand() {
    let ks: Vec<f64> = (0..5).map(f64::from).collect();
    assert_eq!(
        soft::landmarks(&ks, 1, &Landmarks::AvgPool1d { m: 2 }, None),
        vec![0.5, 3.0]
    ); // rows 0..2, 2..5
    assert_eq!(
        soft::landmarks(&ks, 1, &Landmarks::AvgPool1d { m: 3 }, None),
        vec![0.0, 1.5, 3.5]
    ); // 0..1, 1..3, 3..5
    let grid: Vec<f64> = (0..15).map(f64::from).collect(); // 3×5, row-major
                                                           // 2×2 windows, no padding: tokens {0,1,5,6} and {2,3,7,8}; the last row and column drop.
    let lm = Landmarks::AvgPool2d {
        height: 3,
        width: 5,
        r: 2,
    };
    assert_eq!(lm.count(), 2);
    assert_eq!(soft::landmarks(&grid, 1, &lm, None), vec![3.0, 5.0]);
}

// ---------- SimA ----------

#[test]
fn sima_both_orders_agree() {
    for (seed, (n, d, dv)) in [(23, 6, 7), (5, 9, 3), (1, 1, 1), (64, 48, 48)]
        .into_iter()
        .enumerate()
    {
        let x = Data::selfattn(seed as u64, 2, 2, n, d, dv);
        let lin = sima::linear(&x.q, &x.k, &x.v, x.dims, dv);
        assert_close(
            &lin,
            &sima::literal(&x.q, &x.k, &x.v, x.dims, dv),
            TOL,
            &format!("N={n} D={d}"),
        );
        assert_eq!(
            sima::forward(&x.q, &x.k, &x.v, x.dims, dv),
            if n < d {
                sima::literal(&x.q, &x.k, &x.v, x.dims, dv)
            } else {
                lin
            }
        );
    }
}

#[test]
fn sima_zero_columns_give_zeros_not_nan() {
    let (n, d, dv) = (7, 3, 2);
    let mut x = Data::selfattn(41, 1, 1, n, d, dv);
    // Column 1 of q and column 2 of k are zero: those channels drop out; nothing is NaN.
    (0..n).for_each(|i| {
        x.q[i * d + 1] = 0.0;
        x.k[i * d + 2] = 0.0;
    });
    let mut zero_q = x.q.clone();
    zero_q.iter_mut().for_each(|v| *v = 0.0);
    for f in [sima::linear, sima::literal] {
        let o = f(&x.q, &x.k, &x.v, x.dims, dv);
        assert!(o.iter().all(|v| v.is_finite()));
        // Only channel 0 survives: O = q̂[:,0] (k̂[:,0]ᵀ v).
        let (qn, kn): (f64, f64) = (
            (0..n).map(|i| x.q[i * d].abs()).sum(),
            (0..n).map(|i| x.k[i * d].abs()).sum(),
        );
        for i in 0..n {
            for e in 0..dv {
                let g: f64 = (0..n).map(|j| x.k[j * d] / kn * x.v[j * dv + e]).sum();
                assert!((o[i * dv + e] - x.q[i * d] / qn * g).abs() < 1e-14);
            }
        }
        assert!(f(&zero_q, &x.k, &x.v, x.dims, dv).iter().all(|&v| v == 0.0));
    }
}

// ---------- hand-worked cases ----------

fn one(q: &[f64], k: &[f64], v: &[f64], n: usize, s: usize) -> (Dims, usize) {
    assert_eq!((q.len(), k.len(), v.len()), (n, s, s));
    (Dims::new(1, 1, n, 1), s)
}

#[test]
fn softmax_by_hand() {
    // Scores [0, ln 3] (scale 1/√1): weights 1/4, 3/4, so o = 1/4·1 + 3/4·5 = 4.
    let (q, k, v) = ([1.0], [0.0, 3f64.ln()], [1.0, 5.0]);
    let (dims, s) = one(&q, &k, &v, 1, 2);
    let x = Qkv::new(&q, &k, &v, dims, s, 1).unwrap();
    assert!((softmax::literal(&x, &SoftmaxParams::default()).unwrap()[0] - 4.0).abs() < 1e-14);
    // Causal on two tokens: the first sees only itself.
    let q2 = [1.0, 1.0];
    let x = Qkv::self_attn(&q2, &k, &v, Dims::new(1, 1, 2, 1), 1).unwrap();
    let o = softmax::online(
        &x,
        &SoftmaxParams {
            causal: true,
            scale: None,
        },
    )
    .unwrap();
    assert_close(&o, &[1.0, 4.0], 1e-14, "causal");
}

#[test]
fn cosformer_by_hand() {
    // N = S = M = 2: θ = π/4, π/2, so w = [[1, c], [c, 1]] with c = cos(π/4).
    let c = std::f64::consts::FRAC_1_SQRT_2;
    let (q, k, v) = ([1.0, 1.0], [1.0, 1.0], [1.0, 3.0]);
    let x = Qkv::self_attn(&q, &k, &v, Dims::new(1, 1, 2, 1), 1).unwrap();
    let want = [(1.0 + 3.0 * c) / (1.0 + c), (c + 3.0) / (c + 1.0)];
    assert_close(
        &cosformer::linear(&x, &CosformerParams::default()).unwrap(),
        &want,
        1e-14,
        "non-causal",
    );
    let causal = CosformerParams {
        causal: true,
        ..Default::default()
    };
    assert_close(
        &cosformer::literal(&x, &causal).unwrap(),
        &[1.0, want[1]],
        1e-14,
        "causal",
    );
    // ReLU zeroes query 1: its weights are 0, the clamp gives 0 instead of 0/0.
    let qn = [-1.0, 1.0];
    let x = Qkv::self_attn(&qn, &k, &v, Dims::new(1, 1, 2, 1), 1).unwrap();
    assert_close(
        &cosformer::linear(&x, &CosformerParams::default()).unwrap(),
        &[0.0, want[1]],
        1e-14,
        "relu",
    );
}

#[test]
fn aft_by_hand() {
    // σ(0) = 1/2; exp(K) = [1, 3]; V = [1, 5].
    let (q, k, v) = ([0.0, 0.0], [0.0, 3f64.ln()], [1.0, 5.0]);
    let x = Qkv::self_attn(&q, &k, &v, Dims::new(1, 1, 2, 1), 1).unwrap();
    let (nc, c) = (AftParams { causal: false }, AftParams { causal: true });
    let run = |b: &Bias, p: &AftParams| aft::linear(&x, b, p).unwrap();
    // simple: (1·1 + 3·5)/4 = 4, halved.
    assert_close(&run(&Bias::None, &nc), &[2.0, 2.0], 1e-14, "simple");
    assert_close(&run(&Bias::None, &c), &[0.5, 2.0], 1e-14, "simple causal");
    // full, w = [[0, ln 3], [0, 0]]: row 0 weights [1, 9] → 46/10.
    let wf = [0.0, 3f64.ln(), 0.0, 0.0];
    assert_close(&run(&Bias::Full(&wf), &nc), &[2.3, 2.0], 1e-14, "full");
    // local s = 1 (diagonal only), w = [ln 2, 0]: row 0 weights [2, 3] (t'=1 outside: w = 0).
    let wl = [2f64.ln(), 0.0];
    assert_close(
        &run(&Bias::Local { w: &wl, window: 1 }, &nc),
        &[1.7, 2.0],
        1e-14,
        "local",
    );
    assert_close(
        &run(&Bias::Local { w: &wl, window: 1 }, &c),
        &[0.5, 2.0],
        1e-14,
        "local causal",
    );
    // conv s = 2, u = [ln 3, ln 2, 0] for t'−t = −1, 0, +1.
    // Row 0: weights [2, 3] → 17/5. Row 1: [3·1, 2·3] → (3 + 30)/9 = 11/3.
    let u = [3f64.ln(), 2f64.ln(), 0.0];
    assert_close(
        &run(&Bias::Conv { u: &u, window: 2 }, &nc),
        &[1.7, 11.0 / 6.0],
        1e-14,
        "conv",
    );
    assert_close(
        &aft::literal(&x, &Bias::Conv { u: &u, window: 2 }, &c).unwrap(),
        &[0.5, 11.0 / 6.0],
        1e-14,
        "conv causal",
    );
}

#[test]
fn sima_by_hand() {
    // q̂ = [1, −3]/4, k̂ = [2, 2]/4, k̂ᵀv = (4 + 8)/2 = 6.
    let (q, k, v) = ([1.0, -3.0], [2.0, 2.0], [4.0, 8.0]);
    let dims = Dims::new(1, 1, 2, 1);
    assert_close(
        &sima::linear(&q, &k, &v, dims, 1),
        &[1.5, -4.5],
        1e-15,
        "linear",
    );
    assert_close(
        &sima::literal(&q, &k, &v, dims, 1),
        &[1.5, -4.5],
        1e-15,
        "literal",
    );
}

#[test]
fn soft_by_hand() {
    // N = 2, D = 1 (scale 1), m = 1: L = mean(0, 2) = 1, P = [e^-½, e^-½], A = [1].
    // Scalar Newton on a = 1 + λ from z₀ = α·a, α = 0.9·2: 1 − a·z_T = (1 − a·z₀)^(2^T).
    // X_i = P_i · z_T · Σ_j P_j v_j = z_T · e^-1 · (v₁ + v₂).
    let (q, v) = ([0.0, 2.0], [1.0, 2.0]);
    let x = Qkv::self_attn(&q, &q, &v, Dims::new(1, 1, 2, 1), 1).unwrap();
    for t in [1, 2, 20] {
        let p = SoftParams {
            landmarks: Landmarks::AvgPool1d { m: 1 },
            newton_iters: t,
            ..Default::default()
        };
        let a = 1.0 + p.ridge;
        let z = (1.0 - (1.0 - a * 1.8 * a).powi(1 << t)) / a;
        let want = 3.0 * z * (-1f64).exp();
        assert_close(
            &soft::linear(&x, None, &p).unwrap(),
            &[want, want],
            1e-13,
            &format!("T = {t}"),
        );
        assert_close(
            &soft::literal(&x, None, &p).unwrap(),
            &[want, want],
            1e-13,
            &format!("literal T = {t}"),
        );
    }
}

// ---------- typed errors on bad input ----------

fn arg_of<T: std::fmt::Debug>(r: sofa::Result<T>) -> &'static str {
    let e: Error = r.unwrap_err();
    assert!(!e.to_string().is_empty());
    e.argument().unwrap_or("<none>")
}

#[test]
fn bad_parameters_are_typed_errors() {
    let x = Data::new(51, Dims::new(1, 2, 6, 3), 6, 3);
    let cross = Data::new(52, Dims::new(1, 2, 6, 3), 9, 3);
    let soft_with = |landmarks, f: fn(&mut SoftParams)| {
        let mut p = SoftParams {
            landmarks,
            ..Default::default()
        };
        f(&mut p);
        soft::linear(&x.x(), None, &p)
    };
    let pool = Landmarks::AvgPool1d { m: 3 };
    assert_eq!(
        arg_of(soft_with(Landmarks::AvgPool1d { m: 0 }, |_| {})),
        "m"
    );
    assert_eq!(
        arg_of(soft_with(Landmarks::AvgPool1d { m: 7 }, |_| {})),
        "m"
    );
    assert_eq!(
        arg_of(soft_with(pool, |p| p.newton_iters = 0)),
        "newton_iters"
    );
    assert_eq!(arg_of(soft_with(pool, |p| p.ridge = -0.1)), "ridge");
    assert_eq!(
        arg_of(soft_with(pool, |p| p.alpha_scale = 0.0)),
        "alpha_scale"
    );
    assert_eq!(
        arg_of(soft_with(
            Landmarks::AvgPool2d {
                height: 4,
                width: 2,
                r: 1
            },
            |_| {}
        )),
        "height"
    );
    assert_eq!(
        arg_of(soft_with(
            Landmarks::AvgPool2d {
                height: 2,
                width: 3,
                r: 0
            },
            |_| {}
        )),
        "r"
    );
    assert_eq!(
        arg_of(soft_with(
            Landmarks::AvgPool2d {
                height: 2,
                width: 3,
                r: 3
            },
            |_| {}
        )),
        "r"
    );
    assert_eq!(
        arg_of(soft_with(Landmarks::Given { m: 2 }, |_| {})),
        "landmarks"
    );
    assert_eq!(
        arg_of(soft::literal(
            &cross.x(),
            None,
            &SoftParams {
                landmarks: pool,
                ..Default::default()
            }
        )),
        "k"
    );

    let cos = |p: CosformerParams, d: &Data| cosformer::linear(&d.x(), &p);
    assert_eq!(
        arg_of(cos(
            CosformerParams {
                m: Some(5),
                ..Default::default()
            },
            &x
        )),
        "M"
    );
    assert_eq!(
        arg_of(cos(
            CosformerParams {
                m: Some(8),
                ..Default::default()
            },
            &cross
        )),
        "M"
    );
    assert_eq!(
        arg_of(cos(
            CosformerParams {
                causal: true,
                ..Default::default()
            },
            &cross
        )),
        "causal"
    );
    assert_eq!(
        arg_of(cos(
            CosformerParams {
                eps: 0.0,
                ..Default::default()
            },
            &x
        )),
        "eps"
    );
    assert_eq!(
        arg_of(State::new(1, 1, 3, 3, &CosformerParams::default())),
        "M"
    );
    let mut st = State::new(
        1,
        2,
        3,
        3,
        &CosformerParams {
            m: Some(6),
            causal: true,
            ..Default::default()
        },
    )
    .unwrap();
    st.prefill(&x.q, &x.k, &x.v).unwrap();
    assert_eq!(arg_of(st.step(&x.q[..6], &x.k[..6], &x.v[..6])), "M"); // token 7 > M = 6
    assert_eq!(arg_of(st.step(&x.q[..5], &x.k[..6], &x.v[..6])), "q");

    let w = vec![0.0; 6 * 6];
    let p = AftParams::default();
    assert_eq!(
        arg_of(aft::linear(&x.x(), &Bias::Local { w: &w, window: 0 }, &p)),
        "window"
    );
    assert_eq!(
        arg_of(aft::linear(&x.x(), &Bias::Local { w: &w, window: 2 }, &p)),
        "w"
    );
    assert_eq!(arg_of(aft::linear(&x.x(), &Bias::Full(&w[..35]), &p)), "w");
    assert_eq!(
        arg_of(aft::linear(
            &x.x(),
            &Bias::Conv {
                u: &w[..5],
                window: 2
            },
            &p
        )),
        "u"
    );
    assert_eq!(arg_of(aft::literal(&cross.x(), &Bias::None, &p)), "k");
    let dv2 = Data::new(53, Dims::new(1, 1, 4, 3), 4, 2);
    assert_eq!(arg_of(aft::linear(&dv2.x(), &Bias::None, &p)), "v");

    assert_eq!(
        arg_of(softmax::online(
            &cross.x(),
            &SoftmaxParams {
                causal: true,
                scale: None
            }
        )),
        "causal"
    );
    assert_eq!(
        arg_of(softmax::literal(
            &x.x(),
            &SoftmaxParams {
                causal: false,
                scale: Some(f64::NAN)
            }
        )),
        "scale"
    );

    // Buffers that do not match their shape name the tensor.
    assert_eq!(arg_of(Qkv::new(&x.q[1..], &x.k, &x.v, x.dims, 6, 3)), "q");
    assert_eq!(arg_of(Qkv::new(&x.q, &x.k, &x.v, x.dims, 7, 3)), "k");
    assert_eq!(arg_of(Qkv::new(&x.q, &x.k, &x.v, x.dims, 6, 4)), "v");
    assert_eq!(
        arg_of(Qkv::new(&[], &[], &[], Dims::new(1, 1, 0, 3), 0, 3)),
        "q"
    );
}
