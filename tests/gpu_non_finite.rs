//! Non-finite inputs on the GPU (issue 9, docs/non-finite.md): a NaN or ±Inf in q, k or v of one
//! (b,h) slice never reaches another slice (bit-identical to the clean run there), and causal
//! cosFormer never leaks a poisoned token to earlier rows. SimA (linear and quadratic orders,
//! tensor-core and CUDA-core paths) and cosFormer (non-causal, causal). Skips without a device.

mod common;

use half::f16;
use sofa::ops::cosformer::{self, CosformerParams};
use sofa::ops::sima;
use sofa::ops::{TensorMut, TensorRef};
use sofa::reference::Rng;
use sofa::{Dims, Element, Layout, Runtime};

#[derive(Clone, Copy, Debug)]
enum Op {
    Sima,
    Cos { causal: bool },
}

fn run<T: Element>(rt: &Runtime, op: Op, l: Layout, q: &[T], k: &[T], v: &[T]) -> Vec<f64> {
    let stream = rt.new_stream().unwrap();
    let (dq, dk, dv) = (
        stream.clone_htod(q).unwrap(),
        stream.clone_htod(k).unwrap(),
        stream.clone_htod(v).unwrap(),
    );
    let mut o = stream.clone_htod(&common::poisoned::<T>(&l)).unwrap();
    let r = |data| TensorRef { data, layout: l };
    let out = TensorMut {
        data: &mut o,
        layout: l,
    };
    match op {
        Op::Sima => sima::forward(rt, &stream, r(&dq), r(&dk), r(&dv), out, None),
        Op::Cos { causal } => {
            let p = CosformerParams {
                causal,
                ..Default::default()
            };
            cosformer::forward(rt, &stream, &p, r(&dq), r(&dk), r(&dv), out, None)
        }
    }
    .unwrap();
    stream
        .clone_dtoh(&o)
        .unwrap()
        .iter()
        .map(|x| x.to_f64())
        .collect()
}

fn case<T: Element>(rt: &Runtime, op: Op, dims: Dims) {
    let l = Layout::contiguous(dims);
    let mut rng = Rng::new(11);
    let len = l.span().unwrap();
    // Positive q, k: no ReLU feature is zero (docs/non-finite.md, cosFormer).
    let (q, k, v): (Vec<T>, Vec<T>, Vec<T>) = (
        rng.fill(len, 0.1, 1.0),
        rng.fill(len, 0.1, 1.0),
        rng.fill(len, -1.0, 1.0),
    );
    let clean = run(rt, op, l, &q, &k, &v);
    assert!(
        clean.iter().all(|x| x.is_finite()),
        "{op:?} {dims}: clean run"
    );
    let slice_len = dims.n * dims.d;
    let (target, row, col) = (1usize, dims.n / 2, dims.d / 3);
    for which in 0..3 {
        for val in [f64::NAN, f64::INFINITY] {
            let mut t = [q.clone(), k.clone(), v.clone()];
            t[which][target * slice_len + row * dims.d + col] = T::from_f64(val);
            let got = run(rt, op, l, &t[0], &t[1], &t[2]);
            let what = format!("{} {op:?} {dims} tensor {which} = {val}", T::DTYPE);
            for s in 0..dims.b * dims.h {
                let r = s * slice_len..(s + 1) * slice_len;
                let (g, c) = (&got[r.clone()], &clean[r]);
                if s != target {
                    let same = g.iter().zip(c).all(|(a, b)| a.to_bits() == b.to_bits());
                    assert!(same, "{what}: reached slice {s}");
                } else if let Op::Cos { causal: true } = op {
                    // Rows before the poisoned token are unchanged.
                    let before = row * dims.d;
                    let same = g[..before]
                        .iter()
                        .zip(&c[..before])
                        .all(|(a, b)| a.to_bits() == b.to_bits());
                    assert!(same, "{what}: leaked to earlier rows");
                }
            }
            // Where docs/non-finite.md says the slice turns non-finite, it does.
            let must = match op {
                Op::Sima => true,
                Op::Cos { .. } => which == 2 || !val.is_nan(),
            };
            if must {
                let poisoned = &got[target * slice_len..(target + 1) * slice_len];
                assert!(
                    poisoned.iter().any(|x| !x.is_finite()),
                    "{what}: no non-finite output"
                );
            }
            println!("{what}: isolated");
        }
    }
}

#[test]
fn sima_non_finite_stays_in_its_slice() {
    let Some(rt) = common::gpu("sima non-finite") else {
        return;
    };
    case::<f16>(&rt, Op::Sima, Dims::new(2, 2, 1000, 64)); // linear, tensor cores
    case::<f32>(&rt, Op::Sima, Dims::new(2, 2, 1000, 80)); // linear, CUDA cores
    case::<f16>(&rt, Op::Sima, Dims::new(2, 2, 7, 64)); // quadratic
}

#[test]
fn cosformer_non_finite_stays_in_its_slice() {
    let Some(rt) = common::gpu("cosformer non-finite") else {
        return;
    };
    for causal in [false, true] {
        case::<f32>(&rt, Op::Cos { causal }, Dims::new(2, 2, 1000, 48));
        case::<f16>(&rt, Op::Cos { causal }, Dims::new(2, 2, 300, 64));
    }
}
