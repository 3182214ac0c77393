//! SimA on the GPU vs the f64 reference: odd sizes, every dtype, both layouts, poisoned outputs,
//! fatbin vs NVRTC, determinism, typed errors. Skips (with a SKIP line) without a device.

mod common;

use half::{bf16, f16};
use sofa::ops::sima::{self, Order, Plan};
use sofa::ops::{TensorMut, TensorRef};
use sofa::reference::{self, gather, Rng};
use sofa::verify::compare;
use sofa::{Dims, Element, Error, Layout, LayoutKind, LoadPath, LoadPolicy, Runtime, Strides};

/// Runs SimA once on fresh random inputs; returns (GPU output, f64 reference), both contiguous.
fn run_case<T: Element>(
    rt: &Runtime,
    dims: Dims,
    dv: usize,
    kind: LayoutKind,
    seed: u64,
) -> (Vec<f64>, Vec<f64>) {
    run_layouts::<T>(
        rt,
        Layout::of_kind(dims, kind),
        Layout::of_kind(dims.with_d(dv), kind),
        seed,
    )
}

fn run_layouts<T: Element>(
    rt: &Runtime,
    lq: Layout,
    lv: Layout,
    seed: u64,
) -> (Vec<f64>, Vec<f64>) {
    let (dims, dv) = (lq.dims, lv.dims.d);
    let stream = rt.new_stream().unwrap();
    let mut rng = Rng::new(seed);
    let (hq, hk, hv) = (
        common::random::<T>(&mut rng, &lq),
        common::random::<T>(&mut rng, &lq),
        common::random::<T>(&mut rng, &lv),
    );
    let q = stream.clone_htod(&hq).unwrap();
    let k = stream.clone_htod(&hk).unwrap();
    let v = stream.clone_htod(&hv).unwrap();
    let mut o = stream.clone_htod(&common::poisoned::<T>(&lv)).unwrap();
    sima::forward(
        rt,
        &stream,
        TensorRef {
            data: &q,
            layout: lq,
        },
        TensorRef {
            data: &k,
            layout: lq,
        },
        TensorRef {
            data: &v,
            layout: lv,
        },
        TensorMut {
            data: &mut o,
            layout: lv,
        },
        None,
    )
    .unwrap();
    let got = gather(&stream.clone_dtoh(&o).unwrap(), &lv);
    let want = reference::sima::forward(
        &gather(&hq, &lq),
        &gather(&hk, &lq),
        &gather(&hv, &lv),
        dims,
        dv,
    );
    (got, want)
}

fn check<T: Element>(rt: &Runtime, dims: Dims, dv: usize, kind: LayoutKind, seed: u64) {
    let (got, want) = run_case::<T>(rt, dims, dv, kind, seed);
    let c = compare::<T>(&got, &want);
    println!("sima {} {dims} dv={dv} {kind:?}: {c}", T::DTYPE);
    assert!(c.pass(), "{} {dims} dv={dv} {kind:?}: {c}", T::DTYPE);
}

fn check_layout<T: Element>(rt: &Runtime, l: Layout, seed: u64) {
    let (got, want) = run_layouts::<T>(rt, l, l, seed);
    let c = compare::<T>(&got, &want);
    println!("sima {} {} strides {:?}: {c}", T::DTYPE, l.dims, l.strides);
    assert!(
        c.pass(),
        "{} {} strides {:?}: {c}",
        T::DTYPE,
        l.dims,
        l.strides
    );
}

fn sweep(ns: &[usize], ds: &[usize]) {
    let Some(rt) = common::gpu("sima sweep") else {
        return;
    };
    let mut seed = 1;
    for &n in ns {
        // Long sequences use fewer heads to keep the f64 reference quick.
        let (b, h) = if n >= 65536 { (1, 2) } else { (2, 3) };
        for &d in ds {
            for kind in [LayoutKind::Bhnd, LayoutKind::Bnhd] {
                let dims = Dims::new(b, h, n, d);
                check::<f32>(&rt, dims, d, kind, seed);
                check::<f16>(&rt, dims, d, kind, seed + 1);
                check::<bf16>(&rt, dims, d, kind, seed + 2);
                seed += 3;
            }
        }
    }
}

const DS: [usize; 7] = [1, 32, 48, 64, 80, 96, 128];

#[test]
fn sima_short_sequences() {
    sweep(&[1, 7], &DS);
}

#[test]
fn sima_medium_sequences() {
    sweep(&[1000, 4097], &DS);
}

#[test]
fn sima_long_sequences() {
    sweep(&[65536], &DS);
}

#[test]
fn sima_value_dim_differs_and_large_heads() {
    let Some(rt) = common::gpu("sima dv") else {
        return;
    };
    for (n, d, dv) in [
        (300, 64, 32),
        (300, 32, 64),
        (1000, 256, 256),
        (100, 200, 17),
        (9, 256, 256),
        (513, 100, 160),
    ] {
        for kind in [LayoutKind::Bhnd, LayoutKind::Bnhd] {
            check::<f32>(&rt, Dims::new(1, 2, n, d), dv, kind, n as u64);
            check::<f16>(&rt, Dims::new(1, 2, n, d), dv, kind, n as u64 + 1);
            check::<bf16>(&rt, Dims::new(1, 2, n, d), dv, kind, n as u64 + 2);
        }
    }
}

#[test]
fn sima_padded_rows_take_the_generic_path() {
    // Row strides that are not a multiple of 8 rule out 16-byte loads and the tensor-core path.
    let Some(rt) = common::gpu("sima padded rows") else {
        return;
    };
    for (n, d) in [(1000, 64), (300, 32), (77, 48)] {
        let dims = Dims::new(2, 2, n, d);
        let l = Layout {
            dims,
            strides: Strides {
                batch: 2 * n * (d + 3),
                head: n * (d + 3),
                seq: d + 3,
            },
        };
        check_layout::<f16>(&rt, l, 11);
        check_layout::<bf16>(&rt, l, 12);
        check_layout::<f32>(&rt, l, 13);
    }
}

#[test]
fn sima_many_heads_grid_stride() {
    // B·H beyond the 65535 grid limit of the y/z dims: the kernels loop over (b,h).
    let Some(rt) = common::gpu("sima grid stride") else {
        return;
    };
    check::<f16>(&rt, Dims::new(70000, 1, 8, 8), 8, LayoutKind::Bhnd, 5);
    check::<f16>(&rt, Dims::new(70000, 1, 3, 8), 8, LayoutKind::Bhnd, 6);
}

#[test]
fn sima_fatbin_and_nvrtc_agree() {
    let Some(fat) = common::gpu_with("sima fatbin", LoadPolicy::Only(LoadPath::Fatbin)) else {
        return;
    };
    let nvrtc = common::gpu_with("sima nvrtc", LoadPolicy::Only(LoadPath::Nvrtc)).unwrap();
    for (dims, dv) in [
        (Dims::new(2, 3, 1000, 64), 64),
        (Dims::new(1, 2, 7, 48), 48),
        (Dims::new(1, 2, 4097, 80), 80),
    ] {
        let (a, want) = run_case::<f16>(&fat, dims, dv, LayoutKind::Bnhd, 42);
        let (b, _) = run_case::<f16>(&nvrtc, dims, dv, LayoutKind::Bnhd, 42);
        assert_eq!(fat.load_path("sima"), Some(LoadPath::Fatbin));
        assert_eq!(nvrtc.load_path("sima"), Some(LoadPath::Nvrtc));
        let identical = a.iter().zip(&b).all(|(x, y)| x.to_bits() == y.to_bits());
        let diff = reference::max_abs_diff(&a, &b);
        println!("fatbin vs nvrtc {dims}: bit-identical {identical}, max abs diff {diff:.3e}");
        assert!(reference::rel_frobenius(&b, &want) <= 2e-3);
        assert!(diff <= 1e-3, "fatbin and NVRTC outputs differ by {diff}");
    }
}

#[test]
fn sima_is_deterministic() {
    let Some(rt) = common::gpu("sima determinism") else {
        return;
    };
    let dims = Dims::new(1, 4, 65536, 64);
    let (a, _) = run_case::<bf16>(&rt, dims, 64, LayoutKind::Bhnd, 9);
    let (b, _) = run_case::<bf16>(&rt, dims, 64, LayoutKind::Bhnd, 9);
    assert!(
        a.iter().zip(&b).all(|(x, y)| x.to_bits() == y.to_bits()),
        "run-to-run outputs differ"
    );
}

#[test]
fn sima_uses_the_order_the_spec_prescribes() {
    let l = |n, d| Layout::contiguous(Dims::new(1, 1, n, d));
    assert_eq!(
        Plan::new(&l(7, 64), &l(7, 64), &l(7, 64), &l(7, 64))
            .unwrap()
            .order,
        Order::Quadratic
    );
    assert!(matches!(
        Plan::new(&l(64, 64), &l(64, 64), &l(64, 64), &l(64, 64))
            .unwrap()
            .order,
        Order::Linear { .. }
    ));
}

#[test]
fn sima_safe_api_rejects_short_buffers_and_small_workspace() {
    let Some(rt) = common::gpu("sima errors") else {
        return;
    };
    let stream = rt.new_stream().unwrap();
    let dims = Dims::new(1, 2, 100, 32);
    let l = Layout::contiguous(dims);
    let full = stream.alloc_zeros::<f32>(l.span().unwrap()).unwrap();
    let short = stream.alloc_zeros::<f32>(l.span().unwrap() - 1).unwrap();
    let mut o = stream.alloc_zeros::<f32>(l.span().unwrap()).unwrap();
    let t = |d| TensorRef { data: d, layout: l };
    let err = sima::forward(
        &rt,
        &stream,
        t(&full),
        t(&short),
        t(&full),
        TensorMut {
            data: &mut o,
            layout: l,
        },
        None,
    )
    .unwrap_err();
    assert!(
        matches!(err, Error::BufferTooSmall { arg: "k", .. }),
        "{err}"
    );
    let mut ws = stream.alloc_zeros::<u8>(16).unwrap();
    let err = sima::forward(
        &rt,
        &stream,
        t(&full),
        t(&full),
        t(&full),
        TensorMut {
            data: &mut o,
            layout: l,
        },
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
}
