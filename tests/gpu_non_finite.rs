//! Non-finite inputs on the GPU (issue 9, docs/non-finite.md): a NaN or ±Inf in q, k or v of one
//! (b,h) slice never reaches another slice (bit-identical to the clean run there), causal
//! operators never leak a poisoned token to earlier rows, and the output turns non-finite where
//! the page says it does. SimA (linear and quadratic orders, tensor-core and CUDA-core paths),
//! cosFormer (non-causal, causal), SOFT (tied: one-launch and multi-launch Newton; untied) and
//! AFT (simple, local, conv, full; non-causal and causal), plus AFT's shared bias, the one
//! documented cross-slice input. Skips without a device.

mod common;

use half::f16;
use sofa::ops::aft::{self, AftParams, Variant};
use sofa::ops::cosformer::{self, CosformerParams};
use sofa::ops::sima;
use sofa::ops::soft::{self, Landmarks, SoftParams};
use sofa::ops::{TensorMut, TensorRef};
use sofa::reference::Rng;
use sofa::{Dims, Element, Layout, Runtime};

#[derive(Clone, Copy, Debug)]
enum Op {
    Sima,
    Cos { causal: bool },
    Soft(SoftParams),
    Aft { variant: Variant, causal: bool },
}

impl Op {
    /// fp32 values of the op's bias at `dims` (AFT local, conv, full), 0 without one.
    fn bias_len(self, dims: Dims) -> usize {
        match self {
            Op::Aft { variant, .. } => common::aft_bias_len(variant, dims),
            _ => 0,
        }
    }
}

/// Runs `op` through the safe API (output poisoned first); `bias` is AFT's fp32 `w`/`u` (empty
/// for the other ops and AFT-simple). Returns the output in storage order as f64.
fn run<T: Element>(
    rt: &Runtime,
    op: Op,
    l: Layout,
    q: &[T],
    k: &[T],
    v: &[T],
    bias: &[f32],
) -> Vec<f64> {
    let stream = rt.new_stream().unwrap();
    let (dq, dk, dv) = (
        stream.clone_htod(q).unwrap(),
        stream.clone_htod(k).unwrap(),
        stream.clone_htod(v).unwrap(),
    );
    let w = (!bias.is_empty()).then(|| stream.clone_htod(bias).unwrap());
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
        Op::Soft(p) => {
            // Tied keys (the default) take no k: the keys are q.
            let keys = (!p.tied).then(|| r(&dk));
            soft::attention(rt, &stream, &p, r(&dq), keys, r(&dv), out, None, None)
        }
        Op::Aft { variant, causal } => aft::forward(
            rt,
            &stream,
            variant,
            &AftParams { causal },
            r(&dq),
            r(&dk),
            r(&dv),
            out,
            w.as_ref(),
            None,
        ),
    }
    .unwrap_or_else(|e| panic!("{op:?}: {e}"));
    stream
        .clone_dtoh(&o)
        .unwrap()
        .iter()
        .map(|x| x.to_f64())
        .collect()
}

fn same_bits(a: &[f64], b: &[f64]) -> bool {
    a.iter().zip(b).all(|(x, y)| x.to_bits() == y.to_bits())
}

/// What docs/non-finite.md says about the poisoned slice itself (`g` poisoned run, `c` clean
/// run, both `[N, D]` of that slice) for `tensor` (0 = q, 1 = k, 2 = v) = `val` at (row, col).
#[allow(clippy::too_many_arguments)]
fn check_poisoned_slice(
    op: Op,
    tensor: usize,
    val: f64,
    dims: Dims,
    (row, col): (usize, usize),
    g: &[f64],
    c: &[f64],
    what: &str,
) {
    let d = dims.d;
    let at = |t: usize, e: usize| t * d + e;
    match op {
        Op::Sima => {
            assert!(
                g.iter().any(|x| !x.is_finite()),
                "{what}: no non-finite output"
            );
        }
        Op::Cos { causal } => {
            if causal {
                // Rows before the poisoned token are unchanged.
                let before = row * d;
                assert!(
                    same_bits(&g[..before], &c[..before]),
                    "{what}: leaked to earlier rows"
                );
            }
            // A NaN q or k is clamped by the ReLU (finite); +Inf and any v are non-finite.
            if tensor == 2 || !val.is_nan() {
                assert!(
                    g.iter().any(|x| !x.is_finite()),
                    "{what}: no non-finite output"
                );
            }
        }
        Op::Soft(p) => match (tensor, p.tied) {
            // Tied: q feeds the pooled landmarks, hence A, Z and every row: the whole slice.
            // Untied: the same for k.
            (0, true) | (1, false) => {
                assert!(
                    g.iter().all(|x| !x.is_finite()),
                    "{what}: the whole slice must be non-finite"
                );
            }
            // Untied q reaches only its own row: every other row is bit-identical; a NaN makes
            // the row NaN (the distance clamp keeps NaN), ±Inf may leave it zero.
            (0, false) => {
                if val.is_nan() {
                    assert!(
                        g[at(row, 0)..at(row + 1, 0)].iter().all(|x| x.is_nan()),
                        "{what}: own row {row} must be NaN"
                    );
                }
                for t in (0..dims.n).filter(|&t| t != row) {
                    assert!(
                        same_bits(&g[at(t, 0)..at(t + 1, 0)], &c[at(t, 0)..at(t + 1, 0)]),
                        "{what}: reached row {t}"
                    );
                }
            }
            // v: column `col` of the whole slice.
            (2, _) => {
                for t in 0..dims.n {
                    assert!(
                        !g[at(t, col)].is_finite(),
                        "{what}: ({t},{col}) must be non-finite"
                    );
                }
            }
            _ => unreachable!("tied SOFT does not read k"),
        },
        Op::Aft { causal, .. } => {
            for t in 0..dims.n {
                for e in 0..d {
                    let (x, y) = (g[at(t, e)], c[at(t, e)]);
                    let same = x.to_bits() == y.to_bits();
                    if tensor == 0 {
                        // q enters only its own output: NaN there, σ(±Inf) ∈ {0, 1} keeps it
                        // finite; nothing else changes.
                        if (t, e) == (row, col) {
                            let ok = if val.is_nan() {
                                x.is_nan()
                            } else {
                                x.is_finite()
                            };
                            assert!(ok, "{what}: own output ({t},{e}) = {x}");
                        } else {
                            assert!(same, "{what}: q reached ({t},{e})");
                        }
                    } else if e != col {
                        // Every channel is its own head.
                        assert!(same, "{what}: reached channel {e} (row {t})");
                    } else if causal && t < row {
                        // Rows before the key stay finite (may differ by rounding: the channel
                        // shift of the key's tile saw the poisoned value).
                        assert!(x.is_finite(), "{what}: leaked to earlier row {t}");
                    } else {
                        // Every row that sees the key (local: all rows, far keys keep exp(K)).
                        assert!(!x.is_finite(), "{what}: row {t} sees the key but is {x}");
                    }
                }
            }
        }
    }
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
    let bias: Vec<f32> = (0..op.bias_len(dims))
        .map(|_| rng.uniform(-1.0, 1.0) as f32)
        .collect();
    let clean = run(rt, op, l, &q, &k, &v, &bias);
    assert!(
        clean.iter().all(|x| x.is_finite()),
        "{op:?} {dims}: clean run"
    );
    let slice_len = dims.n * dims.d;
    let (target, row, col) = (1usize, dims.n / 2, dims.d / 3);
    for which in 0..3 {
        if which == 1 && matches!(op, Op::Soft(p) if p.tied) {
            continue; // tied SOFT takes no k
        }
        for val in [f64::NAN, f64::INFINITY] {
            let mut t = [q.clone(), k.clone(), v.clone()];
            t[which][target * slice_len + row * dims.d + col] = T::from_f64(val);
            let got = run(rt, op, l, &t[0], &t[1], &t[2], &bias);
            let what = format!("{} {op:?} {dims} tensor {which} = {val}", T::DTYPE);
            for s in 0..dims.b * dims.h {
                let r = s * slice_len..(s + 1) * slice_len;
                let (g, c) = (&got[r.clone()], &clean[r]);
                if s != target {
                    assert!(same_bits(g, c), "{what}: reached slice {s}");
                } else {
                    check_poisoned_slice(op, which, val, dims, (row, col), g, c, &what);
                }
            }
            println!("{what}: isolated");
        }
    }
    if op.bias_len(dims) > 0 {
        bias_case(rt, op, dims, (&q, &k, &v), &bias, &clean);
    }
}

/// AFT's bias is shared by every (b,h) slice (docs/non-finite.md, AFT): a non-finite `w[t,t]`
/// (local: the band's centre, full: the diagonal) makes output row `t` non-finite in every slice
/// and leaves every other row bit-identical; a non-finite `u[h, s−1]` (conv: the centre, inside
/// every row's window) makes every row of head `h` non-finite in every batch and leaves the
/// other heads bit-identical.
fn bias_case<T: Element>(
    rt: &Runtime,
    op: Op,
    dims: Dims,
    (q, k, v): (&[T], &[T], &[T]),
    bias: &[f32],
    clean: &[f64],
) {
    let Op::Aft { variant, .. } = op else {
        unreachable!("only AFT has a bias")
    };
    let Dims { n, d, .. } = dims;
    let (row, head) = (n / 2, dims.h - 1);
    let index = match variant {
        Variant::Local { window } => row * (2 * window - 1) + window - 1,
        Variant::Conv { window } => head * (2 * window - 1) + window - 1,
        Variant::Full => row * n + row,
        Variant::Simple => unreachable!("AFT-simple has no bias"),
    };
    let l = Layout::contiguous(dims);
    for val in [f32::NAN, f32::INFINITY] {
        let mut w = bias.to_vec();
        w[index] = val;
        let got = run(rt, op, l, q, k, v, &w);
        let what = format!("{} {op:?} {dims} bias[{index}] = {val}", T::DTYPE);
        for b in 0..dims.b {
            for h in 0..dims.h {
                for t in 0..n {
                    let off = l.offset(b, h, t);
                    let (g, c) = (&got[off..off + d], &clean[off..off + d]);
                    let hit = match variant {
                        Variant::Conv { .. } => h == head,
                        _ => t == row,
                    };
                    if hit {
                        assert!(
                            g.iter().all(|x| !x.is_finite()),
                            "{what}: (b={b}, h={h}) row {t} must be non-finite"
                        );
                    } else {
                        assert!(same_bits(g, c), "{what}: reached (b={b}, h={h}) row {t}");
                    }
                }
            }
        }
        println!("{what}: reaches exactly the documented rows");
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

#[test]
fn soft_non_finite_stays_in_its_slice() {
    let Some(rt) = common::gpu("soft non-finite") else {
        return;
    };
    let pool = |m| SoftParams {
        landmarks: Landmarks::AvgPool1d { m },
        ..Default::default()
    };
    // Defaults (m = 64: the one-launch Newton kernel where shared memory allows).
    case::<f16>(
        &rt,
        Op::Soft(SoftParams::default()),
        Dims::new(2, 2, 1000, 64),
    );
    case::<f32>(
        &rt,
        Op::Soft(SoftParams::default()),
        Dims::new(2, 2, 333, 80),
    );
    // m = 200 > 128: the multi-launch Newton path.
    case::<f32>(&rt, Op::Soft(pool(200)), Dims::new(2, 2, 1000, 48));
    let untied = SoftParams {
        tied: false,
        ..Default::default()
    };
    case::<f16>(&rt, Op::Soft(untied), Dims::new(2, 2, 300, 64));
}

#[test]
fn aft_non_finite_stays_in_its_slice() {
    let Some(rt) = common::gpu("aft non-finite") else {
        return;
    };
    for variant in common::aft_variants() {
        for causal in [false, true] {
            let op = Op::Aft { variant, causal };
            // D = 80: two channel tiles, the second partial; N not a multiple of the 64-row tile.
            case::<f32>(&rt, op, Dims::new(2, 2, 1000, 80));
            case::<f16>(&rt, op, Dims::new(2, 3, 333, 64));
        }
    }
}
