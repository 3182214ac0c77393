//! SOFT on the GPU vs the f64 reference: landmarks, materialized products, the Newton iteration
//! (one-launch and multi-launch paths), the fused attention over odd sizes, every dtype, both
//! layouts, poisoned outputs, untied keys, given landmarks, AvgPool2d, determinism, typed errors.
//! Skips (with a SKIP line) without a device.

mod common;

use half::{bf16, f16};
use sofa::ops::soft::{self, Landmarks, NewtonPath, NewtonPlan, SoftParams};
use sofa::ops::{TensorMut, TensorRef};
use sofa::reference::{self, gather, soft as rsoft, Qkv, Rng};
use sofa::verify::compare;
use sofa::verify::soft32;
use sofa::{Dims, Element, Error, Layout, LayoutKind, Runtime, Strides};

const NS: [usize; 5] = [1, 7, 49, 1000, 4097];
const MS: [usize; 6] = [1, 7, 49, 64, 100, 256];
const DS: [usize; 4] = [1, 32, 64, 80];
const KINDS: [LayoutKind; 2] = [LayoutKind::Bhnd, LayoutKind::Bnhd];

fn pool1d(m: usize) -> SoftParams {
    SoftParams {
        landmarks: Landmarks::AvgPool1d { m },
        ..Default::default()
    }
}

fn nan_f32(len: usize) -> Vec<f32> {
    vec![f32::NAN; len.max(1)]
}

fn widen(x: &[f32]) -> Vec<f64> {
    x.iter().map(|&v| v as f64).collect()
}

/// One attention problem: host inputs (already rounded to T) and layouts.
struct Case<T> {
    lq: Layout,
    lv: Layout,
    q: Vec<T>,
    k: Option<Vec<T>>,
    v: Vec<T>,
    given: Option<Vec<f32>>,
    params: SoftParams,
}

impl<T: Element> Case<T> {
    fn new(dims: Dims, dv: usize, kind: LayoutKind, params: SoftParams, seed: u64) -> Self {
        let lq = Layout::of_kind(dims, kind);
        let lv = Layout::of_kind(dims.with_d(dv), kind);
        Self::with_layouts(lq, lv, params, seed)
    }

    /// A case on explicit layouts (q and k share `lq`; v and o share `lv`).
    fn with_layouts(lq: Layout, lv: Layout, params: SoftParams, seed: u64) -> Self {
        let dims = lq.dims;
        let mut rng = Rng::new(seed);
        let q = common::random::<T>(&mut rng, &lq);
        let k = (!params.tied).then(|| common::random::<T>(&mut rng, &lq));
        let v = common::random::<T>(&mut rng, &lv);
        let given = match params.landmarks {
            Landmarks::Given { m } => {
                let len = dims.b * dims.h * m * dims.d;
                Some(rng.fill::<f32>(len, -0.5, 0.5))
            }
            _ => None,
        };
        Case {
            lq,
            lv,
            q,
            k,
            v,
            given,
            params,
        }
    }

    fn dims(&self) -> Dims {
        self.lq.dims
    }

    /// Contiguous f64 copies (k = q when tied) and the given landmarks.
    fn host(&self) -> (Vec<f64>, Vec<f64>, Vec<f64>, Option<Vec<f64>>) {
        let q = gather(&self.q, &self.lq);
        let k = self
            .k
            .as_ref()
            .map_or_else(|| q.clone(), |k| gather(k, &self.lq));
        let v = gather(&self.v, &self.lv);
        (q, k, v, self.given.as_deref().map(widen))
    }

    fn reference(&self) -> Vec<f64> {
        let (q, k, v, given) = self.host();
        let x = Qkv::self_attn(&q, &k, &v, self.dims(), self.lv.dims.d).unwrap();
        rsoft::forward(&x, given.as_deref(), &self.params).unwrap()
    }

    fn run(&self, rt: &Runtime) -> Vec<f64> {
        let stream = rt.new_stream().unwrap();
        let q = stream.clone_htod(&self.q).unwrap();
        let k = self.k.as_ref().map(|k| stream.clone_htod(k).unwrap());
        let v = stream.clone_htod(&self.v).unwrap();
        let given = self.given.as_ref().map(|g| stream.clone_htod(g).unwrap());
        let mut o = stream.clone_htod(&common::poisoned::<T>(&self.lv)).unwrap();
        soft::attention(
            rt,
            &stream,
            &self.params,
            TensorRef {
                data: &q,
                layout: self.lq,
            },
            k.as_ref().map(|k| TensorRef {
                data: k,
                layout: self.lq,
            }),
            TensorRef {
                data: &v,
                layout: self.lv,
            },
            TensorMut {
                data: &mut o,
                layout: self.lv,
            },
            given.as_ref(),
            None,
        )
        .unwrap();
        gather(&stream.clone_dtoh(&o).unwrap(), &self.lv)
    }
}

fn check_attention<T: Element>(rt: &Runtime, case: &Case<T>, label: &str) {
    let got = case.run(rt);
    let want = case.reference();
    let mut c = compare::<T>(&got, &want);
    // The bound also admits 4× the error of the same algorithm in f32 on the CPU: the fp32
    // Newton iteration on nearly singular A is the floor then, not the storage type.
    let (hq, hk, hv, hg) = case.host();
    let x = Qkv::self_attn(&hq, &hk, &hv, case.dims(), case.lv.dims.d).unwrap();
    let emulated = soft32::attention_floor(
        &x,
        hg.as_deref(),
        &case.params,
        soft32::Step::TwoZMinusZaz,
        &want,
    );
    c.admit_algorithm_floor(emulated, soft32::FLOOR_FACTOR);
    let dims = case.dims();
    let dv = case.lv.dims.d;
    println!(
        "soft {} {dims} dv={dv} {label}: {c}; f32 CPU evaluation {emulated:.1e}",
        T::DTYPE
    );
    assert!(c.pass(), "soft {} {dims} dv={dv} {label}: {c}", T::DTYPE);
}

fn attention_sweep(ns: &[usize]) {
    let Some(rt) = common::gpu("soft attention sweep") else {
        return;
    };
    let mut seed = 1;
    for &n in ns {
        for &m in MS.iter().filter(|&&m| m <= n) {
            for &d in &DS {
                for kind in KINDS {
                    let dims = Dims::new(1, 2, n, d);
                    let label = format!("m={m} {kind:?}");
                    let p = pool1d(m);
                    check_attention(&rt, &Case::<f32>::new(dims, d, kind, p, seed), &label);
                    check_attention(&rt, &Case::<f16>::new(dims, d, kind, p, seed + 1), &label);
                    check_attention(&rt, &Case::<bf16>::new(dims, d, kind, p, seed + 2), &label);
                    seed += 3;
                }
            }
        }
    }
}

#[test]
fn soft_attention_short_sequences() {
    attention_sweep(&[1, 7, 49]);
}

#[test]
fn soft_attention_medium_sequences() {
    attention_sweep(&[1000, 4097]);
}

#[test]
fn soft_attention_untied_keys_value_dims_and_heads() {
    let Some(rt) = common::gpu("soft untied") else {
        return;
    };
    let untied = |m| SoftParams {
        tied: false,
        ..pool1d(m)
    };
    for (dims, dv, m) in [
        (Dims::new(2, 3, 300, 64), 32, 16),
        (Dims::new(1, 2, 1000, 32), 200, 64),
        (Dims::new(1, 2, 513, 256), 256, 100),
        (Dims::new(2, 1, 77, 48), 17, 77),
    ] {
        for kind in KINDS {
            for (i, p) in [pool1d(m), untied(m)].into_iter().enumerate() {
                let label = format!("m={m} tied={} {kind:?}", p.tied);
                let s = 100 + i as u64;
                check_attention(&rt, &Case::<f32>::new(dims, dv, kind, p, s), &label);
                check_attention(&rt, &Case::<f16>::new(dims, dv, kind, p, s), &label);
                check_attention(&rt, &Case::<bf16>::new(dims, dv, kind, p, s), &label);
            }
        }
    }
}

/// The tensor-core passes (kernels/soft_tc.cuh) take f16/bf16 with D == Dv ∈ {32, 48, 64, 80, 96,
/// 128} and
/// 16-byte-aligned rows (the sweeps above reach them for D ∈ {32, 64} as well): every N and m of
/// the sweep (the last 64-landmark tile masked, multi-stage chunks at N = 4097), both layouts,
/// tied and untied keys, two (b,h) slices.
#[test]
fn soft_attention_tensor_core_passes() {
    let Some(rt) = common::gpu("soft tensor cores") else {
        return;
    };
    let mut seed = 5000;
    for &n in &NS {
        for &m in MS.iter().filter(|&&m| m <= n) {
            // D = 96 and 128 with m = 256 exceed pass 2's shared memory: the CUDA-core passes.
            for d in [32, 48, 64, 80, 96, 128] {
                for kind in KINDS {
                    let tied = seed % 4 < 2;
                    let p = SoftParams { tied, ..pool1d(m) };
                    let dims = Dims::new(1, 2, n, d);
                    let label = format!("tensor cores m={m} tied={tied} {kind:?}");
                    check_attention(&rt, &Case::<f16>::new(dims, d, kind, p, seed), &label);
                    check_attention(&rt, &Case::<bf16>::new(dims, d, kind, p, seed + 1), &label);
                    seed += 2;
                }
            }
        }
    }
}

/// `[B,H,N,D]` with the rows padded to `d + pad` elements: a seq stride that is not a multiple
/// of 8 keeps the attention on the CUDA-core passes.
fn padded(dims: Dims, pad: usize) -> Layout {
    let Dims { h, n, d, .. } = dims;
    let seq = d + pad;
    Layout {
        dims,
        strides: Strides {
            batch: h * n * seq,
            head: n * seq,
            seq,
        },
    }
}

/// The same values through the tensor-core passes (contiguous rows) and the CUDA-core passes
/// (rows padded by one element): both meet the bound and agree with each other within the f16
/// tolerance. Also the other tensor-core edges: B·H beyond the 65535 grid limit
/// (grid-stride over (b,h) with one persistent pass-2 CTA per slice), a long single slice (many
/// pass-2 tiles per CTA), Given landmarks.
#[test]
fn soft_attention_tensor_cores_match_cuda_cores() {
    let Some(rt) = common::gpu("soft tensor cores vs CUDA cores") else {
        return;
    };
    for (dims, m, tied) in [
        (Dims::new(2, 2, 1000, 64), 64, true),
        (Dims::new(1, 3, 4097, 32), 256, false),
        (Dims::new(2, 1, 777, 48), 100, true),
    ] {
        let p = SoftParams { tied, ..pool1d(m) };
        let fast = Case::<f16>::new(dims, dims.d, LayoutKind::Bhnd, p, 31);
        let mut slow = Case::<f16>::with_layouts(padded(dims, 1), padded(dims, 1), p, 31);
        // Same logical values: copy the contiguous case's rows into the padded layout.
        let host = fast.host();
        let (lq, lv) = (fast.lq, slow.lq);
        for (i, dst) in [&mut slow.q, &mut slow.v].into_iter().enumerate() {
            let src = if i == 0 { &host.0 } else { &host.2 };
            scatter(src, &lv, dst);
        }
        if let (Some(k), Some(dst)) = (fast.k.as_ref(), slow.k.as_mut()) {
            scatter(&gather(k, &lq), &lv, dst);
        }
        let label = format!("m={m} tied={tied}");
        check_attention(&rt, &fast, &format!("{label} tensor cores"));
        check_attention(&rt, &slow, &format!("{label} CUDA cores (padded rows)"));
        let (a, b) = (fast.run(&rt), slow.run(&rt));
        let want = fast.reference();
        let (ea, eb) = (
            reference::rel_frobenius(&a, &want),
            reference::rel_frobenius(&b, &want),
        );
        let diff = reference::rel_frobenius(&a, &b);
        println!("soft {dims} m={m}: tensor vs CUDA cores {diff:.2e} (errors {ea:.2e}, {eb:.2e})");
        assert!(
            diff <= f16::DTYPE.tolerance(),
            "{dims} m={m}: paths differ by {diff:.2e}"
        );
    }
    let case = Case::<bf16>::new(
        Dims::new(70000, 1, 9, 32),
        32,
        LayoutKind::Bnhd,
        pool1d(3),
        5,
    );
    check_attention(&rt, &case, "tensor cores m=3 B=70000");
    let case = Case::<f16>::new(
        Dims::new(1, 1, 200_000, 64),
        64,
        LayoutKind::Bhnd,
        pool1d(64),
        6,
    );
    check_attention(&rt, &case, "tensor cores m=64 N=200000");
    let given = SoftParams {
        landmarks: Landmarks::Given { m: 70 },
        ..Default::default()
    };
    let case = Case::<bf16>::new(Dims::new(2, 2, 1000, 64), 64, LayoutKind::Bnhd, given, 8);
    check_attention(&rt, &case, "tensor cores Given m=70");
}

/// Writes contiguous `[B,H,N,D]` values `src` into a buffer laid out as `l`.
fn scatter<T: Element>(src: &[f64], l: &Layout, dst: &mut [T]) {
    let Dims { b, h, n, d } = l.dims;
    let mut i = 0;
    for bi in 0..b {
        for hi in 0..h {
            for r in 0..n {
                let off = l.offset(bi, hi, r);
                for c in 0..d {
                    dst[off + c] = T::from_f64(src[i]);
                    i += 1;
                }
            }
        }
    }
}

#[test]
fn soft_attention_avgpool2d_and_given_landmarks() {
    let Some(rt) = common::gpu("soft pool2d / given") else {
        return;
    };
    let grid = |height, width, r| SoftParams {
        landmarks: Landmarks::AvgPool2d { height, width, r },
        ..Default::default()
    };
    let given = |m| SoftParams {
        landmarks: Landmarks::Given { m },
        ..Default::default()
    };
    for (n, d, p) in [
        (14 * 14, 32, grid(14, 14, 2)),
        (15 * 9, 64, grid(15, 9, 4)),
        (32 * 32, 80, grid(32, 32, 2)),
        (1000, 32, given(49)),
        (7, 64, given(20)),
    ] {
        let dims = Dims::new(2, 2, n, d);
        for kind in KINDS {
            let label = format!("{:?} {kind:?}", p.landmarks);
            check_attention(&rt, &Case::<f32>::new(dims, d, kind, p, 7), &label);
            check_attention(&rt, &Case::<f16>::new(dims, d, kind, p, 8), &label);
            check_attention(&rt, &Case::<bf16>::new(dims, d, kind, p, 9), &label);
        }
    }
}

#[test]
fn soft_attention_non_default_newton_parameters() {
    let Some(rt) = common::gpu("soft newton params") else {
        return;
    };
    for (iters, ridge, alpha_scale) in [(1, 0.01, 0.9), (7, 0.1, 0.5), (30, 0.0, 1.0)] {
        let p = SoftParams {
            newton_iters: iters,
            ridge,
            alpha_scale,
            ..pool1d(33)
        };
        let dims = Dims::new(1, 2, 500, 32);
        let label = format!("T={iters} ridge={ridge} c={alpha_scale}");
        check_attention(
            &rt,
            &Case::<f32>::new(dims, 32, LayoutKind::Bhnd, p, 3),
            &label,
        );
    }
}

#[test]
fn soft_attention_million_rows() {
    let Some(rt) = common::gpu("soft N = 1M") else {
        return;
    };
    let dims = Dims::new(1, 1, 1 << 20, 32);
    let case = Case::<bf16>::new(dims, 32, LayoutKind::Bnhd, pool1d(64), 21);
    check_attention(&rt, &case, "m=64 N=1M");
}

#[test]
fn soft_attention_many_heads_grid_stride() {
    // B·H beyond the 65535 grid limit of the y dim: the kernels loop over (b,h).
    let Some(rt) = common::gpu("soft grid stride") else {
        return;
    };
    let case = Case::<f16>::new(Dims::new(70000, 1, 9, 8), 8, LayoutKind::Bhnd, pool1d(3), 5);
    check_attention(&rt, &case, "m=3 B=70000");
}

#[test]
fn soft_attention_is_deterministic() {
    let Some(rt) = common::gpu("soft determinism") else {
        return;
    };
    for (dims, m) in [
        (Dims::new(1, 4, 4097, 64), 100),
        (Dims::new(1, 2, 65536, 32), 200),
    ] {
        let case = Case::<bf16>::new(dims, dims.d, LayoutKind::Bhnd, pool1d(m), 9);
        let (a, b) = (case.run(&rt), case.run(&rt));
        assert!(
            a.iter().zip(&b).all(|(x, y)| x.to_bits() == y.to_bits()),
            "{dims} m={m}: run-to-run outputs differ"
        );
    }
}

/// Landmarks and the materialized products of one case, checked against the reference.
fn check_products<T: Element>(rt: &Runtime, case: &Case<T>, label: &str) {
    let stream = rt.new_stream().unwrap();
    let Dims { b, h, n, d } = case.dims();
    let m = case.params.landmarks.count();
    let q = stream.clone_htod(&case.q).unwrap();
    let k = case.k.as_ref().map(|k| stream.clone_htod(k).unwrap());
    let given = case.given.as_ref().map(|g| stream.clone_htod(g).unwrap());
    let mut l = stream.clone_htod(&nan_f32(b * h * m * d)).unwrap();
    let mut pm = stream.clone_htod(&nan_f32(b * h * n * m)).unwrap();
    let mut am = stream.clone_htod(&nan_f32(b * h * m * m)).unwrap();
    let tq = || TensorRef {
        data: &q,
        layout: case.lq,
    };
    let tk = k.as_ref().map(|k| TensorRef {
        data: k,
        layout: case.lq,
    });
    soft::landmarks(rt, &stream, &case.params, tq(), tk, given.as_ref(), &mut l).unwrap();
    soft::gaussian_products(rt, &stream, tq(), m, &l, &mut pm, &mut am).unwrap();
    let (got_l, got_p, got_a) = (
        widen(&stream.clone_dtoh(&l).unwrap()),
        widen(&stream.clone_dtoh(&pm).unwrap()),
        widen(&stream.clone_dtoh(&am).unwrap()),
    );

    let (hq, hk, hv, hg) = case.host();
    let x = Qkv::self_attn(&hq, &hk, &hv, case.dims(), case.lv.dims.d).unwrap();
    let want_l = soft32::landmarks(&x, &case.params, hg.as_deref());
    let (want_p, want_a) = rsoft::gaussian_products(&x, hg.as_deref(), &case.params).unwrap();
    for (what, got, want) in [
        ("landmarks", &got_l, &want_l),
        ("P", &got_p, &want_p),
        ("A", &got_a, &want_a),
    ] {
        let c = compare::<f32>(got, want);
        println!("soft {what} {} {} {label}: {c}", T::DTYPE, case.dims());
        assert!(c.pass(), "{what} {} {} {label}: {c}", T::DTYPE, case.dims());
    }
}

#[test]
fn soft_landmarks_and_products_sweep() {
    let Some(rt) = common::gpu("soft products sweep") else {
        return;
    };
    let mut seed = 1000;
    for &n in &NS {
        for &m in MS.iter().filter(|&&m| m <= n) {
            for &d in &DS {
                for kind in KINDS {
                    let dims = Dims::new(2, 2, n, d);
                    let label = format!("m={m} {kind:?}");
                    let p = pool1d(m);
                    check_products(&rt, &Case::<f32>::new(dims, 1, kind, p, seed), &label);
                    check_products(&rt, &Case::<f16>::new(dims, 1, kind, p, seed + 1), &label);
                    check_products(&rt, &Case::<bf16>::new(dims, 1, kind, p, seed + 2), &label);
                    seed += 3;
                }
            }
        }
    }
}

#[test]
fn soft_products_avgpool2d_untied_and_given() {
    let Some(rt) = common::gpu("soft products variants") else {
        return;
    };
    let variants = [
        (
            14 * 14,
            SoftParams {
                landmarks: Landmarks::AvgPool2d {
                    height: 14,
                    width: 14,
                    r: 3,
                },
                ..Default::default()
            },
        ),
        (
            31 * 33,
            SoftParams {
                landmarks: Landmarks::AvgPool2d {
                    height: 31,
                    width: 33,
                    r: 2,
                },
                tied: false,
                ..Default::default()
            },
        ),
        (
            500,
            SoftParams {
                tied: false,
                ..pool1d(100)
            },
        ),
        (
            50,
            SoftParams {
                landmarks: Landmarks::Given { m: 70 },
                ..Default::default()
            },
        ),
    ];
    for (n, p) in variants {
        for kind in KINDS {
            let dims = Dims::new(2, 3, n, 48);
            let label = format!("{:?} tied={} {kind:?}", p.landmarks, p.tied);
            check_products(&rt, &Case::<f32>::new(dims, 1, kind, p, 5), &label);
            check_products(&rt, &Case::<bf16>::new(dims, 1, kind, p, 6), &label);
        }
    }
}

/// `batch` matrices A = exp(−½D²(L, L)) of random landmarks: spread out (well-conditioned) or
/// clustered around one point (ill-conditioned). Rounded to f32, returned widened.
fn gram_batch(batch: usize, m: usize, clustered: bool, seed: u64) -> Vec<f64> {
    let d = 16;
    let mut rng = Rng::new(seed);
    let mut out = Vec::with_capacity(batch * m * m);
    for _ in 0..batch {
        let center: Vec<f64> = (0..d).map(|_| rng.uniform(-1.0, 1.0)).collect();
        let l: Vec<f64> = (0..m * d)
            .map(|i| {
                if clustered {
                    center[i % d] + rng.uniform(-0.05, 0.05)
                } else {
                    rng.uniform(-1.5, 1.5)
                }
            })
            .collect();
        out.extend(rsoft::gaussian(&l, &l, d));
    }
    out.iter().map(|&x| x as f32 as f64).collect()
}

fn run_newton(
    rt: &Runtime,
    a: &[f64],
    batch: usize,
    m: usize,
    p: &SoftParams,
    path: NewtonPath,
) -> Vec<f64> {
    let stream = rt.new_stream().unwrap();
    let a32: Vec<f32> = a.iter().map(|&x| x as f32).collect();
    let da = stream.clone_htod(&a32).unwrap();
    let mut z = stream.clone_htod(&nan_f32(batch * m * m)).unwrap();
    soft::newton_pinv(rt, &stream, p, batch, m, path, &da, &mut z, None).unwrap();
    widen(&stream.clone_dtoh(&z).unwrap())
}

fn reference_newton(a: &[f64], m: usize, p: &SoftParams) -> Vec<f64> {
    a.chunks_exact(m * m)
        .flat_map(|ai| rsoft::newton_pinv(ai, m, p))
        .collect()
}

fn paths_for(rt: &Runtime, m: usize) -> Vec<NewtonPath> {
    let mut paths = vec![NewtonPath::MultiLaunch];
    if soft::newton_fits_on_chip(m, rt.info().smem_per_block_optin) {
        // OneLaunch takes the cluster kernel where it applies (sm_90, 17 ≤ m ≤ 64).
        paths.push(NewtonPath::OneLaunch);
        // The cluster-only kernels where they run (else a typed error, tested without a GPU).
        let cluster = (soft::NEWTON_CLUSTER_MIN_M..=soft::NEWTON_CLUSTER_MAX_M).contains(&m);
        if cluster && rt.info().compute_capability.0 >= 9 {
            paths.push(NewtonPath::ClusterEarlyArrive);
            paths.push(NewtonPath::ClusterLateArrive);
            paths.push(NewtonPath::ClusterAsync);
        }
        paths.push(NewtonPath::OneLaunchCta);
    } else if m <= soft::NEWTON_SMEM_MAX_M {
        println!("one-launch Newton skipped for m = {m}: not enough shared memory");
    }
    paths
}

#[test]
fn soft_newton_matches_the_f64_iteration() {
    let Some(rt) = common::gpu("soft newton") else {
        return;
    };
    let p = SoftParams::default();
    let mut seed = 1;
    for m in [1, 2, 7, 16, 17, 33, 49, 64, 100, 128, 129, 200, 256] {
        for (clustered, tol) in [(false, 1e-4), (true, 1e-2)] {
            let batch = 3;
            let a = gram_batch(batch, m, clustered, seed);
            seed += 1;
            let want = reference_newton(&a, m, &p);
            let mut outs = Vec::new();
            let paths = paths_for(&rt, m);
            for &path in &paths {
                let got = run_newton(&rt, &a, batch, m, &p, path);
                let rel = reference::rel_frobenius(&got, &want);
                println!("newton m={m} clustered={clustered} {path:?}: rel {rel:.3e}");
                assert!(
                    rel <= tol,
                    "m={m} clustered={clustered} {path:?}: {rel:.3e}"
                );
                outs.push(got);
            }
            if let [multi, one, rest @ ..] = &outs[..] {
                let rel = reference::rel_frobenius(one, multi);
                // Same sums in the same order; only FMA contraction may differ, and the
                // iteration amplifies that on a nearly singular A.
                let agree = if clustered { 1e-3 } else { 1e-5 };
                assert!(rel <= agree, "m={m}: the two paths differ by {rel:.3e}");
                // The cluster (arriving early or late, or all-gathering with st.async) and one-CTA
                // forms of the one launch: the same FMAs in the same order.
                for (other, path) in rest.iter().zip(&paths[2..]) {
                    assert!(
                        one.iter()
                            .zip(other)
                            .all(|(a, b)| a.to_bits() == b.to_bits()),
                        "m={m} clustered={clustered}: OneLaunch and {path:?} differ"
                    );
                }
            }
        }
    }
}

/// `plan` on `a` through the raw entry point (device pointers), Z copied back.
fn run_newton_plan(rt: &Runtime, plan: &NewtonPlan, a: &[f32]) -> Vec<f32> {
    use cudarc::driver::{DevicePtr, DevicePtrMut};
    let stream = rt.new_stream().unwrap();
    let da = stream.clone_htod(a).unwrap();
    let mut z = stream.clone_htod(&nan_f32(a.len())).unwrap();
    let mut ws = stream
        .alloc_zeros::<u8>(plan.workspace_bytes().max(4))
        .unwrap();
    let ws_len = ws.len();
    {
        let (ap, _ga) = da.device_ptr(&stream);
        let (zp, _gz) = z.device_ptr_mut(&stream);
        let (wp, _gw) = ws.device_ptr_mut(&stream);
        // SAFETY: three live allocations of this context with their lengths, not aliasing; the
        // guards keep them ordered with the launch on `stream`.
        unsafe { soft::newton_pinv_raw(rt, &stream, plan, ap, a.len(), zp, a.len(), wp, ws_len) }
            .unwrap();
    }
    stream.clone_dtoh(&z).unwrap()
}

/// With fewer matrices in flight than the batch, each cluster (or CTA) of the one-launch kernels
/// takes several matrices in turn: the same bits as one matrix each.
#[test]
fn soft_newton_matrices_in_turn() {
    let Some(rt) = common::gpu("soft newton in turn") else {
        return;
    };
    let p = SoftParams::default();
    let batch = 5;
    for (seed, m) in [7, 17, 49, 64, 100].into_iter().enumerate() {
        let a: Vec<f32> = gram_batch(batch, m, false, 40 + seed as u64)
            .iter()
            .map(|&x| x as f32)
            .collect();
        for path in paths_for(&rt, m)
            .into_iter()
            .filter(|&p| p != NewtonPath::MultiLaunch)
        {
            let smem = rt.info().smem_per_block_optin;
            let plan = NewtonPlan::new(batch, m, &p, path, smem).unwrap();
            let all = run_newton_plan(&rt, &plan, &a);
            assert!(all.iter().all(|x| x.is_finite()), "m={m} {path:?}");
            for n in [1, 2] {
                let turn = run_newton_plan(&rt, &plan.with_max_in_flight(n).unwrap(), &a);
                assert!(
                    all.iter()
                        .zip(&turn)
                        .all(|(x, y)| x.to_bits() == y.to_bits()),
                    "m={m} {path:?}: {n} in flight differs from {batch}"
                );
            }
        }
    }
    let plan = NewtonPlan::new(batch, 64, &p, NewtonPath::OneLaunch, usize::MAX).unwrap();
    let e = plan.with_max_in_flight(0).unwrap_err();
    assert_eq!(e.argument(), Some("max_in_flight"), "{e}");
}

#[test]
fn soft_newton_parameters_and_convergence() {
    let Some(rt) = common::gpu("soft newton convergence") else {
        return;
    };
    // Many steps on a well-conditioned A: Z ≈ (A + λI)⁻¹.
    for m in [8, 64, 160] {
        let p = SoftParams {
            newton_iters: 60,
            ..Default::default()
        };
        let a = gram_batch(2, m, false, 77);
        let mut want = Vec::new();
        for ai in a.chunks_exact(m * m) {
            let mut ah = ai.to_vec();
            (0..m).for_each(|i| ah[i * m + i] += p.ridge);
            want.extend(rsoft::exact_inverse(&ah, m).unwrap());
        }
        for path in paths_for(&rt, m) {
            let got = run_newton(&rt, &a, 2, m, &p, path);
            let rel = reference::rel_frobenius(&got, &want);
            println!("newton T=60 m={m} {path:?} vs inverse: rel {rel:.3e}");
            assert!(rel <= 1e-4, "m={m} {path:?}: {rel:.3e}");
        }
    }
    // Every parameter is honoured. Newton–Schulz from Z₀ = αÂ converges only while α·μ² < 2 for
    // every eigenvalue μ of Â = A + λI, with α = 2c/R² from A's largest row sum R (before the
    // ridge). These Gram matrices are close to I (R ≈ 1, μ ≈ 1 + λ), so c < 1/(1 + λ)²: with
    // λ = 0.3, c must stay below 0.59 (c = 1 diverges to NaN in the f64 reference as well).
    for (iters, ridge, alpha_scale) in [(1, 0.01, 0.9), (5, 0.0, 0.5), (21, 0.3, 0.55)] {
        let p = SoftParams {
            newton_iters: iters,
            ridge,
            alpha_scale,
            ..Default::default()
        };
        let m = 40;
        let a = gram_batch(2, m, false, 5);
        let want = reference_newton(&a, m, &p);
        for path in paths_for(&rt, m) {
            let got = run_newton(&rt, &a, 2, m, &p, path);
            let rel = reference::rel_frobenius(&got, &want);
            assert!(
                rel <= 1e-4,
                "T={iters} λ={ridge} c={alpha_scale} {path:?}: {rel:.3e}"
            );
        }
    }
}

#[test]
fn soft_newton_is_deterministic() {
    let Some(rt) = common::gpu("soft newton determinism") else {
        return;
    };
    let p = SoftParams::default();
    for m in [64, 200] {
        let a = gram_batch(4, m, true, 3);
        for path in paths_for(&rt, m) {
            let x = run_newton(&rt, &a, 4, m, &p, path);
            let y = run_newton(&rt, &a, 4, m, &p, path);
            assert!(x.iter().zip(&y).all(|(u, v)| u.to_bits() == v.to_bits()));
        }
    }
}

#[test]
fn soft_safe_api_rejects_bad_buffers() {
    let Some(rt) = common::gpu("soft errors") else {
        return;
    };
    let stream = rt.new_stream().unwrap();
    let dims = Dims::new(1, 2, 100, 32);
    let l = Layout::contiguous(dims);
    let span = l.span().unwrap();
    let full = stream.alloc_zeros::<f32>(span).unwrap();
    let short = stream.alloc_zeros::<f32>(span - 1).unwrap();
    let mut o = stream.alloc_zeros::<f32>(span).unwrap();
    let t = |d| TensorRef { data: d, layout: l };
    let p = pool1d(10);
    let mut attn = |v, ws: Option<&mut _>, given: Option<&_>, p: &SoftParams| {
        soft::attention(
            &rt,
            &stream,
            p,
            t(&full),
            None,
            t(v),
            TensorMut {
                data: &mut o,
                layout: l,
            },
            given,
            ws,
        )
        .unwrap_err()
    };
    let e = attn(&short, None, None, &p);
    assert!(matches!(e, Error::BufferTooSmall { arg: "v", .. }), "{e}");
    let mut ws = stream.alloc_zeros::<u8>(16).unwrap();
    let e = attn(&full, Some(&mut ws), None, &p);
    assert!(
        matches!(
            e,
            Error::BufferTooSmall {
                arg: "workspace",
                ..
            }
        ),
        "{e}"
    );
    let given = stream.alloc_zeros::<f32>(10).unwrap();
    let e = attn(&full, None, Some(&given), &p);
    assert_eq!(e.argument(), Some("landmarks"), "{e}");
    let gp = SoftParams {
        landmarks: Landmarks::Given { m: 10 },
        ..Default::default()
    };
    let e = attn(&full, None, Some(&given), &gp);
    assert!(
        matches!(
            e,
            Error::BufferTooSmall {
                arg: "landmarks",
                ..
            }
        ),
        "{e}"
    );
    let e = attn(&full, None, None, &gp);
    assert_eq!(e.argument(), Some("landmarks"), "{e}");

    let a = stream.alloc_zeros::<f32>(3 * 64 * 64 - 1).unwrap();
    let mut z = stream.alloc_zeros::<f32>(3 * 64 * 64).unwrap();
    let e =
        soft::newton_pinv(&rt, &stream, &p, 3, 64, NewtonPath::Auto, &a, &mut z, None).unwrap_err();
    assert!(matches!(e, Error::BufferTooSmall { arg: "a", .. }), "{e}");
    let plan = NewtonPlan::new(3, 64, &p, NewtonPath::MultiLaunch, 0).unwrap();
    let mut small = stream
        .alloc_zeros::<u8>(plan.workspace_bytes() - 4)
        .unwrap();
    let a = stream.alloc_zeros::<f32>(3 * 64 * 64).unwrap();
    let e = soft::newton_pinv(
        &rt,
        &stream,
        &p,
        3,
        64,
        NewtonPath::MultiLaunch,
        &a,
        &mut z,
        Some(&mut small),
    )
    .unwrap_err();
    assert!(
        matches!(
            e,
            Error::BufferTooSmall {
                arg: "workspace",
                ..
            }
        ),
        "{e}"
    );
}
