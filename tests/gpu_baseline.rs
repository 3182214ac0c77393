//! The cuBLAS-composed baselines (SPEC §5) on the GPU vs the f64 reference: softmax, SimA,
//! cosFormer, SOFT (and its Newton iteration alone), AFT-full / AFT-local; every dtype, odd sizes,
//! poisoned outputs, typed errors on the device paths. Skips (with a SKIP line) without a device.
//! The `plan_*` tests at the end need no device: bad inputs are typed errors before any launch.

mod common;

use cudarc::driver::CudaSlice;
use half::{bf16, f16};
use sofa::baseline::aft::{self, AftBias, AftWeights};
use sofa::baseline::cosformer::{self, CosformerParams, CAUSAL_MAX_N};
use sofa::baseline::soft::{self, Landmarks, NewtonPlan, SoftParams};
use sofa::baseline::softmax::{self, SoftmaxParams};
use sofa::baseline::{sima, Blas};
use sofa::ops::{TensorMut, TensorRef};
use sofa::reference::{self, Qkv, Rng};
use sofa::verify::soft32;
use sofa::verify::{compare, Comparison};
use sofa::{DType, Dims, Element, Error, Layout, LayoutKind, Runtime};
use std::sync::Arc;

/// A device with one stream and a cuBLAS handle on it.
struct Dev {
    rt: Arc<Runtime>,
    blas: Blas,
}

fn device(test: &str) -> Option<Dev> {
    let rt = common::gpu(test)?;
    let stream = rt.new_stream().unwrap();
    let blas = Blas::new(&stream).unwrap_or_else(|e| panic!("{test}: cuBLAS: {e}"));
    Some(Dev { rt, blas })
}

/// Runs `$f::<T>(args)` for f32, f16 and bf16.
macro_rules! each_dtype {
    ($f:ident($($a:expr),* $(,)?)) => {{
        $f::<f32>($($a),*);
        $f::<f16>($($a),*);
        $f::<bf16>($($a),*);
    }};
}

/// Host inputs of one call, already rounded to T: q `[B,H,N,D]`, k `[B,H,S,D]`, v `[B,H,S,Dv]`.
struct Inputs<T> {
    dims: Dims,
    s: usize,
    dv: usize,
    q: Vec<T>,
    k: Vec<T>,
    v: Vec<T>,
}

fn widen<T: Element>(x: &[T]) -> Vec<f64> {
    x.iter().map(|v| v.to_f64()).collect()
}

impl<T: Element> Inputs<T> {
    fn new(dims: Dims, s: usize, dv: usize, seed: u64) -> Self {
        let mut rng = Rng::new(seed);
        let Dims { b, h, n, d } = dims;
        Inputs {
            dims,
            s,
            dv,
            q: rng.fill(b * h * n * d, -1.0, 1.0),
            k: rng.fill(b * h * s * d, -1.0, 1.0),
            v: rng.fill(b * h * s * dv, -1.0, 1.0),
        }
    }

    /// Layouts of q, k, v, o (contiguous).
    fn layouts(&self) -> [Layout; 4] {
        let d = self.dims;
        [
            Layout::contiguous(d),
            Layout::contiguous(Dims { n: self.s, ..d }),
            Layout::contiguous(Dims {
                n: self.s,
                d: self.dv,
                ..d
            }),
            Layout::contiguous(d.with_d(self.dv)),
        ]
    }

    fn wide(&self) -> (Vec<f64>, Vec<f64>, Vec<f64>) {
        (widen(&self.q), widen(&self.k), widen(&self.v))
    }

    /// Uploads the inputs and a NaN-poisoned output, runs `f`, returns the output widened.
    fn run(
        &self,
        dev: &Dev,
        f: impl FnOnce(
            TensorRef<'_, T>,
            TensorRef<'_, T>,
            TensorRef<'_, T>,
            TensorMut<'_, T>,
        ) -> sofa::Result<()>,
    ) -> Vec<f64> {
        let stream = dev.blas.stream();
        let [lq, lk, lv, lo] = self.layouts();
        let q = stream.clone_htod(&self.q).unwrap();
        let k = stream.clone_htod(&self.k).unwrap();
        let v = stream.clone_htod(&self.v).unwrap();
        let mut o = stream.clone_htod(&common::poisoned::<T>(&lo)).unwrap();
        let t = |data, layout| TensorRef { data, layout };
        let out = TensorMut {
            data: &mut o,
            layout: lo,
        };
        f(t(&q, lq), t(&k, lk), t(&v, lv), out).unwrap();
        widen(&stream.clone_dtoh(&o).unwrap())
    }
}

fn out_of<T>(data: &mut CudaSlice<T>, layout: Layout) -> TensorMut<'_, T> {
    TensorMut { data, layout }
}

fn report(c: &Comparison, label: &str) {
    println!("{label}: {c}");
    assert!(c.pass(), "{label}: {c}");
}

fn check<T: Element>(got: &[f64], want: &[f64], label: &str) {
    report(
        &compare::<T>(got, want),
        &format!("baseline {} {label}", T::DTYPE),
    );
}

const NS: [usize; 4] = [1, 7, 100, 1000];
const DS: [usize; 4] = [1, 32, 64, 80];

// ---------------------------------------------------------------------------------------------
// Softmax

fn softmax_case<T: Element>(dev: &Dev, dims: Dims, s: usize, dv: usize, causal: bool, seed: u64) {
    let x = Inputs::<T>::new(dims, s, dv, seed);
    let params = SoftmaxParams {
        causal,
        scale: None,
    };
    let got = x.run(dev, |q, k, v, o| {
        softmax::attention(&dev.rt, &dev.blas, &params, q, k, v, o, None)
    });
    let (q, k, v) = x.wide();
    let qkv = Qkv::new(&q, &k, &v, dims, s, dv).unwrap();
    let want = reference::softmax::literal(&qkv, &params).unwrap();
    check::<T>(
        &got,
        &want,
        &format!("softmax {dims} S={s} dv={dv} causal={causal}"),
    );
}

#[test]
fn softmax_matches_reference() {
    let Some(dev) = device("baseline softmax") else {
        return;
    };
    let mut seed = 1;
    for n in NS {
        for d in DS {
            for causal in [false, true] {
                each_dtype!(softmax_case(
                    &dev,
                    Dims::new(1, 2, n, d),
                    n,
                    d,
                    causal,
                    seed
                ));
                seed += 1;
            }
        }
    }
    // Cross attention (S ≠ N), a value dim unlike D, and several batches.
    each_dtype!(softmax_case(
        &dev,
        Dims::new(2, 3, 37, 48),
        211,
        17,
        false,
        99
    ));
}

// ---------------------------------------------------------------------------------------------
// SimA

fn sima_case<T: Element>(dev: &Dev, dims: Dims, dv: usize, seed: u64) {
    let x = Inputs::<T>::new(dims, dims.n, dv, seed);
    let got = x.run(dev, |q, k, v, o| {
        sima::forward(&dev.rt, &dev.blas, q, k, v, o, None)
    });
    let (q, k, v) = x.wide();
    let want = reference::sima::forward(&q, &k, &v, dims, dv);
    check::<T>(&got, &want, &format!("sima {dims} dv={dv}"));
}

#[test]
fn sima_matches_reference() {
    let Some(dev) = device("baseline sima") else {
        return;
    };
    let mut seed = 1;
    for n in NS {
        for d in DS {
            each_dtype!(sima_case(&dev, Dims::new(2, 3, n, d), d, seed));
            seed += 1;
        }
    }
    // Long enough for several row chunks of the norm reduction; Dv ≠ D.
    each_dtype!(sima_case(&dev, Dims::new(1, 2, 20000, 48), 40, 77));
}

// ---------------------------------------------------------------------------------------------
// cosFormer

fn cosformer_case<T: Element>(dev: &Dev, dims: Dims, s: usize, dv: usize, causal: bool, seed: u64) {
    let x = Inputs::<T>::new(dims, s, dv, seed);
    let params = CosformerParams {
        causal,
        ..Default::default()
    };
    let got = x.run(dev, |q, k, v, o| {
        cosformer::forward(&dev.rt, &dev.blas, &params, q, k, v, o, None)
    });
    let (q, k, v) = x.wide();
    let qkv = Qkv::new(&q, &k, &v, dims, s, dv).unwrap();
    // The quadratic literal form while it is cheap, the f64 linear form beyond.
    let want = if dims.n * s <= 1 << 20 {
        reference::cosformer::literal(&qkv, &params)
    } else {
        reference::cosformer::linear(&qkv, &params)
    };
    let label = format!("cosformer {dims} S={s} dv={dv} causal={causal}");
    check::<T>(&got, &want.unwrap(), &label);
}

#[test]
fn cosformer_matches_reference() {
    let Some(dev) = device("baseline cosformer") else {
        return;
    };
    let mut seed = 1;
    for n in NS {
        for d in DS {
            for causal in [false, true] {
                each_dtype!(cosformer_case(
                    &dev,
                    Dims::new(1, 2, n, d),
                    n,
                    d,
                    causal,
                    seed
                ));
                seed += 1;
            }
        }
    }
    each_dtype!(cosformer_case(
        &dev,
        Dims::new(2, 3, 37, 48),
        211,
        17,
        false,
        99
    ));
    each_dtype!(cosformer_case(
        &dev,
        Dims::new(1, 2, 5000, 64),
        5000,
        64,
        false,
        98
    ));
}

#[test]
fn cosformer_without_relu_and_a_larger_m() {
    let Some(dev) = device("baseline cosformer params") else {
        return;
    };
    for causal in [false, true] {
        let dims = Dims::new(1, 2, 100, 32);
        let x = Inputs::<f32>::new(dims, 100, 32, 5);
        // Non-negative features without the ReLU: the caller's job when relu = false.
        let abs = |v: &[f32]| v.iter().map(|x| x.abs()).collect::<Vec<_>>();
        let x = Inputs {
            q: abs(&x.q),
            k: abs(&x.k),
            ..x
        };
        let params = CosformerParams {
            causal,
            relu: false,
            m: Some(1000),
            ..Default::default()
        };
        let got = x.run(&dev, |q, k, v, o| {
            cosformer::forward(&dev.rt, &dev.blas, &params, q, k, v, o, None)
        });
        let (q, k, v) = x.wide();
        let qkv = Qkv::self_attn(&q, &k, &v, dims, 32).unwrap();
        let want = reference::cosformer::literal(&qkv, &params).unwrap();
        check::<f32>(
            &got,
            &want,
            &format!("cosformer relu=false M=1000 causal={causal}"),
        );
    }
}

// ---------------------------------------------------------------------------------------------
// SOFT

/// `C = A·B` in f32 for row-major `A [r,k]`, `B [k,c]`.
fn soft_case<T: Element>(dev: &Dev, dims: Dims, dv: usize, params: SoftParams, seed: u64) {
    let x = Inputs::<T>::new(dims, dims.n, dv, seed);
    let m = params.landmarks.count();
    let given: Option<Vec<f32>> = matches!(params.landmarks, Landmarks::Given { .. })
        .then(|| Rng::new(seed + 7).fill(dims.b * dims.h * m * dims.d, -0.5, 0.5));
    let stream = dev.blas.stream();
    let given_dev = given.as_ref().map(|g| stream.clone_htod(g).unwrap());
    let got = x.run(dev, |q, k, v, o| {
        let k = (!params.tied).then_some(k);
        soft::attention(
            &dev.rt,
            &dev.blas,
            &params,
            q,
            k,
            v,
            o,
            given_dev.as_ref(),
            None,
        )
    });
    let (q, k, v) = x.wide();
    let k = if params.tied { q.clone() } else { k };
    let qkv = Qkv::self_attn(&q, &k, &v, dims, dv).unwrap();
    let given64 = given.as_deref().map(widen);
    let want = reference::soft::forward(&qkv, given64.as_deref(), &params).unwrap();
    let mut c = compare::<T>(&got, &want);
    let floor = soft32::attention_floor(
        &qkv,
        given64.as_deref(),
        &params,
        soft32::Step::ZTimesTwoIMinusAz,
        &want,
    );
    c.admit_algorithm_floor(floor, soft32::FLOOR_FACTOR);
    let label = format!(
        "baseline {} soft {dims} dv={dv} {:?} tied={}; f32 CPU evaluation {floor:.1e}",
        T::DTYPE,
        params.landmarks,
        params.tied
    );
    report(&c, &label);
}

fn pool1d(m: usize) -> SoftParams {
    SoftParams {
        landmarks: Landmarks::AvgPool1d { m },
        ..Default::default()
    }
}

#[test]
fn soft_matches_reference() {
    let Some(dev) = device("baseline soft") else {
        return;
    };
    let mut seed = 1;
    for n in NS {
        for m in [1, 7, 49, 64].into_iter().filter(|&m| m <= n) {
            for d in DS {
                each_dtype!(soft_case(&dev, Dims::new(1, 2, n, d), d, pool1d(m), seed));
                seed += 1;
            }
        }
    }
}

#[test]
fn soft_untied_pool2d_and_given_landmarks() {
    let Some(dev) = device("baseline soft variants") else {
        return;
    };
    let untied = SoftParams {
        tied: false,
        ..pool1d(16)
    };
    let grid = SoftParams {
        landmarks: Landmarks::AvgPool2d {
            height: 15,
            width: 9,
            r: 4,
        },
        ..Default::default()
    };
    let given = SoftParams {
        landmarks: Landmarks::Given { m: 20 },
        ..Default::default()
    };
    each_dtype!(soft_case(&dev, Dims::new(2, 3, 300, 64), 32, untied, 1));
    each_dtype!(soft_case(&dev, Dims::new(2, 2, 15 * 9, 64), 64, grid, 2));
    each_dtype!(soft_case(&dev, Dims::new(2, 2, 7, 64), 64, given, 3));
    // An odd number of Newton steps ends the ping-pong in the other buffer.
    let odd = SoftParams {
        newton_iters: 7,
        ..pool1d(49)
    };
    each_dtype!(soft_case(&dev, Dims::new(1, 2, 1000, 32), 32, odd, 4));
}

#[test]
fn soft_newton_pinv_matches_reference() {
    let Some(dev) = device("baseline newton") else {
        return;
    };
    let stream = dev.blas.stream();
    for m in [1, 7, 49, 64, 100] {
        for iters in [20, 7, 60, 1] {
            let params = SoftParams {
                newton_iters: iters,
                ..Default::default()
            };
            let batch = 3;
            // Gaussian Gram matrices of random points: the A that SOFT inverts.
            let mut rng = Rng::new((m * 100 + iters) as u64);
            let d = 16;
            let mut a = Vec::with_capacity(batch * m * m);
            for _ in 0..batch {
                let pts: Vec<f64> = (0..m * d).map(|_| rng.uniform(-0.6, 0.6)).collect();
                a.extend(reference::soft::gaussian(&pts, &pts, d));
            }
            let a32: Vec<f32> = a.iter().map(|&x| x as f32).collect();
            let a_dev = stream.clone_htod(&a32).unwrap();
            let mut z_dev = stream.clone_htod(&vec![f32::NAN; a32.len()]).unwrap();
            soft::newton_pinv(
                &dev.rt, &dev.blas, &params, batch, m, &a_dev, &mut z_dev, None,
            )
            .unwrap();
            let got = widen(&stream.clone_dtoh(&z_dev).unwrap());
            // The reference starts from the fp32 A the device sees.
            let want: Vec<f64> = a32
                .chunks_exact(m * m)
                .flat_map(|a| reference::soft::newton_pinv(&widen(a), m, &params))
                .collect();
            let mut c = compare::<f32>(&got, &want);
            let floor =
                soft32::newton_floor(&a32, m, &params, soft32::Step::ZTimesTwoIMinusAz, &want);
            c.admit_algorithm_floor(floor, soft32::FLOOR_FACTOR);
            report(
                &c,
                &format!("baseline newton m={m} T={iters}; f32 CPU evaluation {floor:.1e}"),
            );
        }
    }
}

// ---------------------------------------------------------------------------------------------
// AFT

fn aft_case<T: Element>(dev: &Dev, dims: Dims, window: Option<usize>, causal: bool, seed: u64) {
    let x = Inputs::<T>::new(dims, dims.n, dims.d, seed);
    let t = dims.n;
    let len = window.map_or(t * t, |s| t * (2 * s - 1));
    let w: Vec<f32> = Rng::new(seed + 3).fill(len, -1.0, 1.0);
    let w_dev = dev.blas.stream().clone_htod(&w).unwrap();
    let weights = match window {
        None => AftWeights::Full(&w_dev),
        Some(window) => AftWeights::Local { w: &w_dev, window },
    };
    let got = x.run(dev, |q, k, v, o| {
        aft::forward(&dev.rt, &dev.blas, q, k, v, o, weights, causal, None)
    });
    let (q, k, v) = x.wide();
    let qkv = Qkv::self_attn(&q, &k, &v, dims, dims.d).unwrap();
    let w64 = widen(&w);
    let bias = match window {
        None => reference::aft::Bias::Full(&w64),
        Some(window) => reference::aft::Bias::Local { w: &w64, window },
    };
    let p = reference::aft::AftParams { causal };
    // The direct T×T×D sum while it is cheap, the f64 linear form beyond.
    let want = if t <= 100 {
        reference::aft::literal(&qkv, &bias, &p)
    } else {
        reference::aft::linear(&qkv, &bias, &p)
    };
    let want = want.unwrap();
    check::<T>(
        &got,
        &want,
        &format!("aft {dims} window={window:?} causal={causal}"),
    );
}

#[test]
fn aft_matches_reference() {
    let Some(dev) = device("baseline aft") else {
        return;
    };
    let mut seed = 1;
    for n in NS {
        for d in DS {
            for window in [None, Some(1), Some(3), Some(64)] {
                for causal in [false, true] {
                    each_dtype!(aft_case(&dev, Dims::new(1, 2, n, d), window, causal, seed));
                    seed += 1;
                }
            }
        }
    }
    each_dtype!(aft_case(
        &dev,
        Dims::new(2, 3, 257, 48),
        Some(256),
        true,
        500
    ));
}

// ---------------------------------------------------------------------------------------------
// Typed errors on the device paths

#[test]
fn short_buffers_small_workspace_and_huge_sizes_are_typed_errors() {
    let Some(dev) = device("baseline errors") else {
        return;
    };
    let (rt, blas) = (&dev.rt, &dev.blas);
    let stream = blas.stream();
    let l = Layout::contiguous(Dims::new(1, 2, 100, 32));
    let span = l.span().unwrap();
    let full = stream.alloc_zeros::<f32>(span).unwrap();
    let short = stream.alloc_zeros::<f32>(span - 1).unwrap();
    let mut o = stream.alloc_zeros::<f32>(span).unwrap();
    let t = |d| TensorRef { data: d, layout: l };
    let err = sima::forward(
        rt,
        blas,
        t(&full),
        t(&short),
        t(&full),
        out_of(&mut o, l),
        None,
    )
    .unwrap_err();
    assert!(
        matches!(err, Error::BufferTooSmall { arg: "k", .. }),
        "{err}"
    );
    let mut ws = stream.alloc_zeros::<u8>(16).unwrap();
    let params = SoftmaxParams::default();
    let err = softmax::attention(
        rt,
        blas,
        &params,
        t(&full),
        t(&full),
        t(&full),
        out_of(&mut o, l),
        Some(&mut ws),
    )
    .unwrap_err();
    assert!(
        matches!(
            err,
            Error::BufferTooSmall {
                arg: "workspace",
                ..
            }
        ),
        "{err}"
    );
    // A bias shorter than T·(2s−1).
    let w = stream.alloc_zeros::<f32>(100).unwrap();
    let weights = AftWeights::Local { w: &w, window: 2 };
    let err = aft::forward(
        rt,
        blas,
        t(&full),
        t(&full),
        t(&full),
        out_of(&mut o, l),
        weights,
        false,
        None,
    )
    .unwrap_err();
    assert!(
        matches!(err, Error::BufferTooSmall { arg: "w", .. }),
        "{err}"
    );

    // Softmax's quadratic workspace: 16 heads × 65536² fp32 scores (256 GiB) cannot be had.
    let big = Layout::contiguous(Dims::new(1, 16, 65536, 8));
    let x = stream.alloc_zeros::<f16>(big.span().unwrap()).unwrap();
    let mut y = stream.alloc_zeros::<f16>(big.span().unwrap()).unwrap();
    let tb = |d| TensorRef {
        data: d,
        layout: big,
    };
    let out_big = TensorMut {
        data: &mut y,
        layout: big,
    };
    let err =
        softmax::attention(rt, blas, &params, tb(&x), tb(&x), tb(&x), out_big, None).unwrap_err();
    assert!(matches!(err, Error::OutOfMemory { .. }), "{err}");
}

// ---------------------------------------------------------------------------------------------
// No device needed: plans refuse bad inputs with typed errors naming the argument.

fn arg_of(e: Error) -> &'static str {
    e.argument()
        .unwrap_or_else(|| panic!("not an input error: {e}"))
}

#[test]
fn plan_softmax_refuses_bad_inputs() {
    let dims = Dims::new(1, 2, 10, 16);
    let l = Layout::contiguous(dims);
    let p = SoftmaxParams::default();
    let plan = |q: &Layout, k: &Layout, v: &Layout, o: &Layout, p: &SoftmaxParams| {
        softmax::Plan::new(DType::F16, q, k, v, o, p)
    };
    assert!(plan(&l, &l, &l, &l, &p).is_ok());
    let strided = Layout::of_kind(dims, LayoutKind::Bnhd);
    assert_eq!(arg_of(plan(&strided, &l, &l, &l, &p).unwrap_err()), "q");
    assert_eq!(arg_of(plan(&l, &strided, &l, &l, &p).unwrap_err()), "k");
    let wide_k = Layout::contiguous(dims.with_d(17));
    assert_eq!(arg_of(plan(&l, &wide_k, &l, &l, &p).unwrap_err()), "k");
    let long = Layout::contiguous(Dims::new(1, 2, 11, 16));
    assert_eq!(arg_of(plan(&l, &long, &l, &l, &p).unwrap_err()), "v");
    assert_eq!(arg_of(plan(&l, &l, &l, &long, &p).unwrap_err()), "o");
    let causal = SoftmaxParams {
        causal: true,
        scale: None,
    };
    assert_eq!(
        arg_of(plan(&l, &long, &long, &l, &causal).unwrap_err()),
        "causal"
    );
    let nan = SoftmaxParams {
        causal: false,
        scale: Some(f64::NAN),
    };
    assert_eq!(arg_of(plan(&l, &l, &l, &l, &nan).unwrap_err()), "scale");
    // D above 256 and an empty dim.
    let d300 = Layout::contiguous(dims.with_d(300));
    assert_eq!(
        arg_of(plan(&d300, &d300, &d300, &d300, &p).unwrap_err()),
        "q"
    );
    let empty = Layout::contiguous(Dims::new(1, 0, 10, 16));
    assert_eq!(arg_of(plan(&empty, &l, &l, &l, &p).unwrap_err()), "q");
    // The quadratic workspace of N = S = 2^30 overflows usize: a typed error, not a panic.
    let huge = Dims::new(1, 16, 1 << 30, 64);
    let err = softmax::workspace_bytes(DType::F16, huge, 1 << 30, 64).unwrap_err();
    assert_eq!(arg_of(err), "q");
    let ws = softmax::workspace_bytes(DType::F16, Dims::new(2, 3, 100, 64), 50, 64).unwrap();
    assert!(ws >= 2 * 3 * 100 * 50 * (4 + 2));
}

#[test]
fn plan_sima_and_cosformer_refuse_bad_inputs() {
    let dims = Dims::new(2, 2, 50, 32);
    let l = Layout::contiguous(dims);
    let lv = Layout::contiguous(dims.with_d(8));
    assert!(sima::Plan::new(DType::BF16, &l, &l, &lv, &lv).is_ok());
    let other_n = Layout::contiguous(Dims::new(2, 2, 51, 8));
    let err = sima::Plan::new(DType::BF16, &l, &l, &other_n, &lv).unwrap_err();
    assert_eq!(arg_of(err), "v");
    let err = sima::Plan::new(DType::BF16, &l, &l, &lv, &l).unwrap_err();
    assert_eq!(arg_of(err), "o");
    let strided = Layout::of_kind(dims, LayoutKind::Bnhd);
    let err = sima::Plan::new(DType::BF16, &l, &strided, &lv, &lv).unwrap_err();
    assert_eq!(arg_of(err), "k");
    assert!(sima::workspace_bytes(DType::F32, dims, 8).unwrap() > 0);

    let plan = |n: usize, s: usize, p: &CosformerParams| {
        let q = Layout::contiguous(Dims::new(1, 2, n, 16));
        let k = Layout::contiguous(Dims::new(1, 2, s, 16));
        cosformer::Plan::new(DType::F16, &q, &k, &k, &q, p)
    };
    let causal = CosformerParams {
        causal: true,
        ..Default::default()
    };
    assert!(plan(100, 100, &causal).is_ok());
    assert!(plan(100, 300, &CosformerParams::default()).is_ok());
    assert_eq!(arg_of(plan(100, 300, &causal).unwrap_err()), "causal");
    let n = CAUSAL_MAX_N + 1;
    assert_eq!(arg_of(plan(n, n, &causal).unwrap_err()), "N");
    let small_m = CosformerParams {
        m: Some(99),
        ..Default::default()
    };
    assert_eq!(arg_of(plan(100, 100, &small_m).unwrap_err()), "M");
    let zero_eps = CosformerParams {
        eps: 0.0,
        ..Default::default()
    };
    assert_eq!(arg_of(plan(100, 100, &zero_eps).unwrap_err()), "eps");
    let tiny_eps = CosformerParams {
        eps: 1e-300, // positive in f64, zero in fp32
        ..Default::default()
    };
    assert_eq!(arg_of(plan(100, 100, &tiny_eps).unwrap_err()), "eps");
}

#[test]
fn plan_soft_and_newton_refuse_bad_inputs() {
    let dims = Dims::new(1, 2, 100, 32);
    let l = Layout::contiguous(dims);
    let p = pool1d(10);
    let plan = |k: Option<&Layout>, p: &SoftParams| soft::Plan::new(DType::F16, &l, k, &l, &l, p);
    assert!(plan(None, &p).is_ok());
    assert_eq!(arg_of(plan(Some(&l), &p).unwrap_err()), "k");
    let untied = SoftParams { tied: false, ..p };
    assert_eq!(arg_of(plan(None, &untied).unwrap_err()), "k");
    assert!(plan(Some(&l), &untied).is_ok());
    assert_eq!(arg_of(plan(None, &pool1d(101)).unwrap_err()), "m");
    assert_eq!(arg_of(plan(None, &pool1d(0)).unwrap_err()), "m");
    let no_steps = SoftParams {
        newton_iters: 0,
        ..p
    };
    assert_eq!(arg_of(plan(None, &no_steps).unwrap_err()), "newton_iters");
    let grid = SoftParams {
        landmarks: Landmarks::AvgPool2d {
            height: 9,
            width: 10,
            r: 2,
        },
        ..p
    };
    assert_eq!(arg_of(plan(None, &grid).unwrap_err()), "height");

    let d = SoftParams::default();
    assert!(NewtonPlan::new(4, 64, &d).is_ok());
    assert_eq!(arg_of(NewtonPlan::new(0, 64, &d).unwrap_err()), "batch");
    assert_eq!(arg_of(NewtonPlan::new(4, 0, &d).unwrap_err()), "m");
    let bad_ridge = SoftParams { ridge: -1.0, ..d };
    assert_eq!(
        arg_of(NewtonPlan::new(4, 8, &bad_ridge).unwrap_err()),
        "ridge"
    );
    let bad_c = SoftParams {
        alpha_scale: f64::INFINITY,
        ..d
    };
    assert_eq!(
        arg_of(NewtonPlan::new(4, 8, &bad_c).unwrap_err()),
        "alpha_scale"
    );
    let plan = NewtonPlan::new(3, 10, &d).unwrap();
    assert_eq!(plan.len(), 300);
    assert!(plan.workspace_bytes() >= 3 * 300 * 4);
    assert!(soft::workspace_bytes(DType::BF16, dims, 32, &p).unwrap() > 0);
}

#[test]
fn plan_aft_refuses_bad_inputs() {
    let dims = Dims::new(1, 2, 64, 16);
    let l = Layout::contiguous(dims);
    assert!(aft::Plan::new(DType::F32, &l, &l, &l, &l, true).is_ok());
    let lv = Layout::contiguous(dims.with_d(8));
    let err = aft::Plan::new(DType::F32, &l, &l, &lv, &lv, false).unwrap_err();
    assert_eq!(arg_of(err), "v");
    let strided = Layout::of_kind(dims, LayoutKind::Bnhd);
    let err = aft::Plan::new(DType::F32, &l, &l, &l, &strided, false).unwrap_err();
    assert_eq!(arg_of(err), "o");
    let local = |window| AftBias::Local { w: 256, window };
    assert_eq!(local(3).w_len(64).unwrap(), 64 * 5);
    assert_eq!(AftBias::Full { w: 256 }.w_len(64).unwrap(), 64 * 64);
    assert_eq!(arg_of(local(0).w_len(64).unwrap_err()), "window");
    assert_eq!(arg_of(local(usize::MAX).w_len(64).unwrap_err()), "window");
    assert!(aft::workspace_bytes(DType::F16, dims).unwrap() >= 64 * 64 * 4);
}
