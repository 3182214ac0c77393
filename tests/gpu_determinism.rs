//! Determinism (issue 9): every GPU op run twice on the same inputs gives bit-identical outputs
//! (no atomics whose order varies: partial sums are reduced in a fixed order). SimA linear and
//! quadratic orders on tensor-core and CUDA-core shapes; cosFormer non-causal, causal and decode.
//! Skips (with a SKIP line) without a device.

mod common;

use cudarc::driver::{CudaSlice, CudaStream};
use half::f16;
use sofa::ops::cosformer::{self, CosformerParams, State};
use sofa::ops::sima::{self, Order, Plan};
use sofa::ops::{TensorMut, TensorRef};
use sofa::reference::Rng;
use sofa::{Dims, Element, Layout, Runtime};
use std::sync::Arc;

/// One launch of an op: runtime, stream, inputs [q, k, v], output.
type Launch<'a, T> = dyn Fn(&Runtime, &Arc<CudaStream>, [&CudaSlice<T>; 3], &mut CudaSlice<T>) + 'a;

/// Runs `op` twice on the same inputs (fresh poisoned outputs each time); returns both outputs.
fn twice<T: Element>(
    rt: &Runtime,
    lq: Layout,
    lk: Layout,
    lv: Layout,
    lo: Layout,
    op: &Launch<'_, T>,
) -> (Vec<T>, Vec<T>) {
    let stream = rt.new_stream().unwrap();
    let mut rng = Rng::new(42);
    let q = stream
        .clone_htod(&common::random::<T>(&mut rng, &lq))
        .unwrap();
    let k = stream
        .clone_htod(&common::random::<T>(&mut rng, &lk))
        .unwrap();
    let v = stream
        .clone_htod(&common::random::<T>(&mut rng, &lv))
        .unwrap();
    let run = || {
        let mut o = stream.clone_htod(&common::poisoned::<T>(&lo)).unwrap();
        op(rt, &stream, [&q, &k, &v], &mut o);
        stream.clone_dtoh(&o).unwrap()
    };
    (run(), run())
}

fn bits<T: Element>(x: &[T]) -> Vec<u8> {
    bytemuck::cast_slice(x).to_vec()
}

fn sima_case<T: Element>(rt: &Runtime, dims: Dims, want_linear: bool) {
    let l = Layout::contiguous(dims);
    let plan = Plan::new(&l, &l, &l, &l).unwrap();
    assert_eq!(
        matches!(plan.order, Order::Linear { .. }),
        want_linear,
        "{dims}"
    );
    let (a, b) = twice::<T>(rt, l, l, l, l, &|rt, s, [q, k, v], o| {
        let r = |data| TensorRef { data, layout: l };
        sima::forward(
            rt,
            s,
            r(q),
            r(k),
            r(v),
            TensorMut { data: o, layout: l },
            None,
        )
        .unwrap();
    });
    assert!(
        a.iter().all(|x| x.to_f64().is_finite()),
        "sima {} {dims}: non-finite",
        T::DTYPE
    );
    assert!(
        bits(&a) == bits(&b),
        "sima {} {dims}: runs differ",
        T::DTYPE
    );
    println!("sima {} {dims} ({:?}): bit-identical", T::DTYPE, plan.order);
}

#[test]
fn sima_is_deterministic() {
    let Some(rt) = common::gpu("sima determinism") else {
        return;
    };
    // Linear order, tensor cores (f16, D = 64) and CUDA cores (f32; f16 with D = 80);
    // many row chunks (N large) so the fixed-order chunk reduction is exercised.
    sima_case::<f16>(&rt, Dims::new(2, 4, 8192, 64), true);
    sima_case::<f32>(&rt, Dims::new(2, 4, 8192, 64), true);
    sima_case::<f16>(&rt, Dims::new(1, 3, 4097, 80), true);
    // Quadratic order (N < D).
    sima_case::<f16>(&rt, Dims::new(2, 3, 7, 64), false);
    sima_case::<f32>(&rt, Dims::new(2, 3, 33, 128), false);
}

fn cos_case<T: Element>(rt: &Runtime, q: Dims, s: usize, dv: usize, causal: bool) {
    let p = CosformerParams {
        causal,
        ..Default::default()
    };
    let kd = Dims::new(q.b, q.h, s, q.d);
    let c = Layout::contiguous;
    let (lq, lk, lv, lo) = (c(q), c(kd), c(kd.with_d(dv)), c(q.with_d(dv)));
    let (a, b) = twice::<T>(rt, lq, lk, lv, lo, &|rt, st, [qq, kk, vv], o| {
        let r = |data, layout| TensorRef { data, layout };
        cosformer::forward(
            rt,
            st,
            &p,
            r(qq, lq),
            r(kk, lk),
            r(vv, lv),
            TensorMut {
                data: o,
                layout: lo,
            },
            None,
        )
        .unwrap();
    });
    assert!(
        a.iter().all(|x| x.to_f64().is_finite()),
        "cosformer {} {q}: non-finite",
        T::DTYPE
    );
    assert!(
        bits(&a) == bits(&b),
        "cosformer {} {q} s={s} causal={causal}: runs differ",
        T::DTYPE
    );
    println!(
        "cosformer {} {q} s={s} dv={dv} causal={causal}: bit-identical",
        T::DTYPE
    );
}

#[test]
fn cosformer_is_deterministic() {
    let Some(rt) = common::gpu("cosformer determinism") else {
        return;
    };
    cos_case::<f16>(&rt, Dims::new(2, 4, 4096, 64), 8192, 64, false);
    cos_case::<f32>(&rt, Dims::new(1, 3, 1000, 48), 4097, 80, false);
    cos_case::<f16>(&rt, Dims::new(2, 4, 8192, 64), 8192, 64, true);
    cos_case::<f32>(&rt, Dims::new(1, 2, 4097, 80), 4097, 80, true);
}

#[test]
fn cosformer_decode_is_deterministic() {
    let Some(rt) = common::gpu("cosformer decode determinism") else {
        return;
    };
    let (b, h, d, dv, n, steps) = (2, 3, 64, 64, 1000, 5);
    let p = CosformerParams {
        m: Some(n + steps),
        causal: true,
        ..Default::default()
    };
    let stream = rt.new_stream().unwrap();
    let run = || {
        let mut rng = Rng::new(7);
        let mut st = State::new(&rt, &stream, b, h, d, dv, &p).unwrap();
        let mut outs = Vec::new();
        for len in std::iter::once(n).chain(std::iter::repeat_n(1, steps)) {
            let (lq, lv) = (
                Layout::contiguous(Dims::new(b, h, len, d)),
                Layout::contiguous(Dims::new(b, h, len, dv)),
            );
            let q = stream
                .clone_htod(&common::random::<f16>(&mut rng, &lq))
                .unwrap();
            let k = stream
                .clone_htod(&common::random::<f16>(&mut rng, &lq))
                .unwrap();
            let v = stream
                .clone_htod(&common::random::<f16>(&mut rng, &lv))
                .unwrap();
            let mut o = stream.clone_htod(&common::poisoned::<f16>(&lv)).unwrap();
            let (tq, tk, tv) = (
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
            );
            let to = TensorMut {
                data: &mut o,
                layout: lv,
            };
            if len == 1 {
                st.step(&rt, &stream, tq, tk, tv, to).unwrap();
            } else {
                st.prefill(&rt, &stream, tq, tk, tv, to, None).unwrap();
            }
            outs.extend(bits(&stream.clone_dtoh(&o).unwrap()));
        }
        outs.extend(bytemuck::cast_slice::<f32, u8>(&st.to_host(&stream).unwrap()).to_vec());
        outs
    };
    let (a, b2) = (run(), run());
    assert!(
        a == b2,
        "cosformer decode: prefill + steps differ between runs"
    );
    println!("cosformer decode prefill {n} + {steps} steps: bit-identical (outputs and state)");
}
