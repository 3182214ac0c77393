//! Fuzz target for the validation layer and the CPU backend: decodes bytes into shapes, strides,
//! buffer lengths, dtypes and parameters (small, zero, huge and overflowing values alike), calls
//! `Layout::validate`/`span`/`is_non_overlapping`, the SimA and cosFormer plans and workspace
//! sizes, the cosFormer decode-state checks, and every CPU reference on small decoded shapes.
//! Every call must return `Ok` or a typed input error (`Error::argument()` is `Some`); a panic,
//! an out-of-bounds access or an untyped error is a finding. Run:
//! `cargo fuzz run validation -- -max_total_time=600`.
#![no_main]

use libfuzzer_sys::arbitrary::{Result as AResult, Unstructured};
use libfuzzer_sys::fuzz_target;
use sofa::ops::{cosformer, sima, MAX_HEAD_DIM};
use sofa::reference::{
    aft::{self, AftParams, Bias},
    cosformer::{self as rcos, CosformerParams},
    soft::{self, Landmarks, SoftParams},
    softmax::{self, SoftmaxParams},
    Qkv,
};
use sofa::{DType, Dims, Error, Layout, Strides};

/// The error must be a typed input error naming its argument.
fn typed(e: &Error, what: &str) {
    assert!(e.argument().is_some(), "{what}: untyped error {e:?}");
}

fn ok_or_typed<T>(r: sofa::Result<T>, what: &str) -> Option<T> {
    match r {
        Ok(x) => Some(x),
        Err(e) => {
            typed(&e, what);
            None
        }
    }
}

/// A count: mostly small, sometimes a boundary or an overflowing value.
fn count(u: &mut Unstructured) -> AResult<usize> {
    const HOSTILE: [usize; 14] = [
        0,
        1,
        255,
        256,
        257,
        (1 << 31) - 1,
        1 << 31,
        1 << 32,
        (1 << 62) - 1,
        1 << 62,
        1 << 63,
        usize::MAX / 2,
        usize::MAX - 1,
        usize::MAX,
    ];
    Ok(match u.int_in_range(0u8..=15)? {
        0 => HOSTILE[u.choose_index(HOSTILE.len())?],
        1 => u.arbitrary::<usize>()?,
        2 => u.int_in_range(0..=1 << 20)?,
        _ => u.int_in_range(0..=9)?,
    })
}

fn small(u: &mut Unstructured, lo: usize, hi: usize) -> AResult<usize> {
    u.int_in_range(lo..=hi)
}

fn float(u: &mut Unstructured) -> AResult<f64> {
    const HOSTILE: [f64; 12] = [
        0.0,
        -0.0,
        1e-6,
        -1.0,
        1e-300,
        1e300,
        f64::MIN_POSITIVE,
        f64::MAX,
        f64::INFINITY,
        f64::NEG_INFINITY,
        f64::NAN,
        1e-50,
    ];
    Ok(match u.int_in_range(0u8..=7)? {
        0 => HOSTILE[u.choose_index(HOSTILE.len())?],
        1 => u.arbitrary::<f64>()?,
        _ => u.int_in_range(-4000i32..=4000)? as f64 / 1000.0,
    })
}

fn dims(u: &mut Unstructured) -> AResult<Dims> {
    Ok(Dims::new(count(u)?, count(u)?, count(u)?, count(u)?))
}

fn layout_of(u: &mut Unstructured, d: Dims) -> AResult<Layout> {
    Ok(match u.int_in_range(0u8..=3)? {
        0 => Layout::contiguous(d),
        1 => Layout::of_kind(d, sofa::LayoutKind::Bnhd),
        _ => Layout {
            dims: d,
            strides: Strides {
                batch: count(u)?,
                head: count(u)?,
                seq: count(u)?,
            },
        },
    })
}

/// Layout::validate, span and is_non_overlapping against brute force on small extents.
fn check_layout(u: &mut Unstructured) -> AResult<()> {
    let d = dims(u)?;
    let l = layout_of(u, d)?;
    let len = count(u)?;
    let max_d = count(u)?;
    let span = l.span();
    let _ = l.is_non_overlapping();
    match l.validate("x", len, max_d) {
        Ok(()) => {
            let s = span.expect("validated layout has a span");
            assert!(s <= len && s <= i64::MAX as usize / 2, "{l:?} {s} {len}");
            let Dims { b, h, n, d } = l.dims;
            assert!(b >= 1 && h >= 1 && n >= 1 && (1..=max_d).contains(&d));
        }
        Err(e) => typed(&e, "Layout::validate"),
    }
    // Brute force for small tensors: span = max offset + 1; non-overlapping ⇒ offsets distinct.
    let Dims { b, h, n, d } = l.dims;
    if let Some(numel) = l.dims.numel().filter(|&x| (1..=4096).contains(&x)) {
        if let Some(s) = span.filter(|&s| s <= 1 << 24) {
            let mut seen = vec![false; s];
            let (mut max, mut dup) = (0, false);
            for bi in 0..b {
                for hi in 0..h {
                    for ni in 0..n {
                        for c in 0..d {
                            let off = l.offset(bi, hi, ni) + c;
                            max = max.max(off);
                            dup |= std::mem::replace(&mut seen[off], true);
                        }
                    }
                }
            }
            assert_eq!(max + 1, s, "span of {l:?}");
            assert!(!(l.is_non_overlapping() && dup), "overlap missed: {l:?}");
            let _ = numel;
        }
    }
    Ok(())
}

/// Four layouts that usually agree (so plans get past the shape checks), sometimes not.
fn qkvo(u: &mut Unstructured, cross: bool) -> AResult<[Layout; 4]> {
    let q = dims(u)?;
    let s = if cross && u.arbitrary()? {
        count(u)?
    } else {
        q.n
    };
    let dv = if u.arbitrary()? { q.d } else { count(u)? };
    let kd = Dims::new(q.b, q.h, s, q.d);
    let mut out = [
        layout_of(u, q)?,
        layout_of(u, kd)?,
        layout_of(u, kd.with_d(dv))?,
        layout_of(u, q.with_d(dv))?,
    ];
    if u.int_in_range(0u8..=7)? == 0 {
        let i = u.choose_index(4)?;
        let d = dims(u)?;
        out[i] = layout_of(u, d)?;
    }
    Ok(out)
}

fn check_sima(u: &mut Unstructured) -> AResult<()> {
    let [q, k, v, o] = qkvo(u, false)?;
    if let Some(plan) = ok_or_typed(sima::Plan::new(&q, &k, &v, &o), "sima::Plan::new") {
        let ws = plan.workspace_bytes();
        assert!(ws <= isize::MAX as usize);
        assert!(plan.dims.d <= MAX_HEAD_DIM && plan.dv <= MAX_HEAD_DIM);
    }
    ok_or_typed(
        sima::workspace_bytes(q.dims, count(u)?),
        "sima::workspace_bytes",
    );
    Ok(())
}

fn cos_params(u: &mut Unstructured) -> AResult<CosformerParams> {
    Ok(CosformerParams {
        m: if u.arbitrary()? {
            None
        } else {
            Some(count(u)?)
        },
        causal: u.arbitrary()?,
        relu: u.arbitrary()?,
        eps: if u.arbitrary()? { 1e-6 } else { float(u)? },
    })
}

fn check_cosformer(u: &mut Unstructured) -> AResult<()> {
    let [q, k, v, o] = qkvo(u, true)?;
    let p = cos_params(u)?;
    if let Some(plan) = ok_or_typed(cosformer::Plan::new(&q, &k, &v, &o, &p), "cos Plan::new") {
        let _ = plan.workspace_bytes();
        if let Some(p2) = ok_or_typed(plan.with_rows_per_chunk(count(u)?), "with_rows_per_chunk") {
            let _ = p2.workspace_bytes();
        }
    }
    ok_or_typed(
        cosformer::workspace_bytes(q.dims, count(u)?, count(u)?, &p),
        "cos workspace_bytes",
    );
    let st = cosformer::StateShape::new(count(u)?, count(u)?, count(u)?, count(u)?, &p);
    if let Some(st) = ok_or_typed(st, "StateShape::new") {
        let _ = st.len();
        let pos = count(u)?;
        if let Some(plan) = ok_or_typed(st.prefill_plan(pos, &q, &k, &v, &o), "prefill_plan") {
            let _ = plan.workspace_bytes();
        }
        ok_or_typed(st.check_step(pos, &q, &k, &v, &o), "check_step");
    }
    Ok(())
}

/// Values of a small tensor: mostly moderate, sometimes non-finite or huge.
fn values(u: &mut Unstructured, len: usize, hostile: bool) -> AResult<Vec<f64>> {
    (0..len)
        .map(|_| {
            if hostile {
                float(u)
            } else {
                Ok(u.int_in_range(-2000i32..=2000)? as f64 / 1000.0)
            }
        })
        .collect()
}

/// A buffer length: exact, or off by a little.
fn buf_len(u: &mut Unstructured, exact: usize) -> AResult<usize> {
    Ok(match u.int_in_range(0u8..=15)? {
        0 => exact + 1,
        1 => exact.saturating_sub(1),
        2 => 0,
        _ => exact,
    })
}

fn close(a: &[f64], b: &[f64], what: &str) {
    assert_eq!(a.len(), b.len());
    let scale = b.iter().fold(1.0f64, |m, x| m.max(x.abs()));
    for (x, y) in a.iter().zip(b) {
        assert!(
            (x - y).abs() <= 1e-7 * scale,
            "{what}: literal {y} vs linear {x} (scale {scale})"
        );
    }
}

fn check_reference(u: &mut Unstructured) -> AResult<()> {
    let (b, h) = (small(u, 0, 2)?, small(u, 0, 2)?);
    let (n, d, dv) = (small(u, 0, 7)?, small(u, 0, 5)?, small(u, 0, 5)?);
    let s = if u.arbitrary()? { n } else { small(u, 0, 7)? };
    let hostile = u.int_in_range(0u8..=3)? == 0;
    let (nq, nk, nv) = (b * h * n * d, b * h * s * d, b * h * s * dv);
    let q = {
        let len = buf_len(u, nq)?;
        values(u, len, hostile)?
    };
    let k = {
        let len = buf_len(u, nk)?;
        values(u, len, hostile)?
    };
    let v = {
        let len = buf_len(u, nv)?;
        values(u, len, hostile)?
    };
    let dims = Dims::new(b, h, n, d);
    // The shape check of every reference call; SimA's checked entry point.
    let Some(x) = ok_or_typed(Qkv::new(&q, &k, &v, dims, s, dv), "Qkv::new") else {
        // Shapes the reference refuses must also be refused by the checked SimA entry.
        if s == n {
            let r = sofa::reference::sima::try_forward(&q, &k, &v, dims, dv);
            assert!(r.is_err(), "sima::try_forward accepted what Qkv refused");
            typed(&r.unwrap_err(), "sima::try_forward");
        }
        return Ok(());
    };
    let finite = !hostile;
    match u.int_in_range(0u8..=4)? {
        0 => {
            if s == n {
                let lin = sofa::reference::sima::try_forward(&q, &k, &v, dims, dv);
                let lin = lin.expect("valid shapes");
                if finite {
                    let lit = sofa::reference::sima::literal(&q, &k, &v, dims, dv);
                    let l2 = sofa::reference::sima::linear(&q, &k, &v, dims, dv);
                    close(&l2, &lit, "sima");
                }
                let _ = lin;
            }
        }
        1 => {
            let p = cos_params(u)?;
            let lin = ok_or_typed(rcos::linear(&x, &p), "cos linear");
            let lit = ok_or_typed(rcos::literal(&x, &p), "cos literal");
            assert_eq!(lin.is_some(), lit.is_some());
            if let (Some(a), Some(b)) = (lin, lit) {
                if finite && p.relu && p.eps >= 1e-6 && p.eps <= 1.0 {
                    close(&a, &b, "cosformer");
                }
            }
            // Decode: a fresh state, prefill then a step of possibly wrong size.
            if let Some(mut st) = ok_or_typed(rcos::State::new(b, h, d, dv, &p), "State::new") {
                if s == n {
                    ok_or_typed(st.prefill(&q, &k, &v), "State::prefill");
                }
                let one = {
                    let len = buf_len(u, b * h * d)?;
                    values(u, len, hostile)?
                };
                let onev = {
                    let len = buf_len(u, b * h * dv)?;
                    values(u, len, hostile)?
                };
                ok_or_typed(st.step(&one, &one, &onev), "State::step");
            }
        }
        2 => {
            let causal = u.arbitrary()?;
            let window = if u.arbitrary()? {
                small(u, 0, 9)?
            } else {
                count(u)?
            };
            let band = (2 * window.min(64)).saturating_sub(1);
            let bias_len = match u.int_in_range(0u8..=3)? {
                0 => n * n,
                1 => band * n,
                2 => band * h,
                _ => small(u, 0, 40)?,
            };
            let w = {
                let len = buf_len(u, bias_len)?;
                values(u, len, hostile)?
            };
            let bias = match u.int_in_range(0u8..=3)? {
                0 => Bias::None,
                1 => Bias::Full(&w),
                2 => Bias::Local { w: &w, window },
                _ => Bias::Conv { u: &w, window },
            };
            let p = AftParams { causal };
            let lin = ok_or_typed(aft::linear(&x, &bias, &p), "aft linear");
            let lit = ok_or_typed(aft::literal(&x, &bias, &p), "aft literal");
            assert_eq!(lin.is_some(), lit.is_some());
            if let (Some(a), Some(b)) = (lin, lit) {
                if finite {
                    close(&a, &b, "aft");
                }
            }
        }
        3 => {
            let landmarks = match u.int_in_range(0u8..=2)? {
                0 => Landmarks::AvgPool1d { m: count(u)? },
                1 => Landmarks::AvgPool2d {
                    height: count(u)?,
                    width: count(u)?,
                    r: count(u)?,
                },
                _ => Landmarks::Given { m: small(u, 0, 4)? },
            };
            let p = SoftParams {
                landmarks,
                // Iterations are capped: a huge T is a long computation, not a fault.
                newton_iters: small(u, 0, 30)?,
                ridge: if u.arbitrary()? { 0.01 } else { float(u)? },
                alpha_scale: if u.arbitrary()? { 0.9 } else { float(u)? },
                tied: u.arbitrary()?,
            };
            let given = if u.arbitrary()? {
                let m = landmarks.count().min(8);
                Some({
                    let len = buf_len(u, b * h * m * d)?;
                    values(u, len, hostile)?
                })
            } else {
                None
            };
            let g = given.as_deref();
            let lin = ok_or_typed(soft::linear(&x, g, &p), "soft linear");
            let lit = ok_or_typed(soft::literal(&x, g, &p), "soft literal");
            assert_eq!(lin.is_some(), lit.is_some());
            ok_or_typed(soft::gaussian_products(&x, g, &p), "soft gaussian_products");
        }
        _ => {
            let p = SoftmaxParams {
                causal: u.arbitrary()?,
                scale: if u.arbitrary()? {
                    None
                } else {
                    Some(float(u)?)
                },
            };
            let lin = ok_or_typed(softmax::online(&x, &p), "softmax online");
            let lit = ok_or_typed(softmax::literal(&x, &p), "softmax literal");
            assert_eq!(lin.is_some(), lit.is_some());
            if let (Some(a), Some(b)) = (lin, lit) {
                if finite && p.scale.is_none_or(|s| s.abs() <= 4.0) {
                    close(&a, &b, "softmax");
                }
            }
        }
    }
    Ok(())
}

fn check_parse(u: &mut Unstructured) -> AResult<()> {
    let s: &str = u.arbitrary()?;
    let _ = s.parse::<Dims>();
    let _ = s.parse::<DType>();
    let _ = s.parse::<sofa::LayoutKind>();
    let _ = sofa::tensor::parse_count(s);
    Ok(())
}

fn run(data: &[u8]) -> AResult<()> {
    let mut u = Unstructured::new(data);
    while !u.is_empty() {
        match u.int_in_range(0u8..=4)? {
            0 => check_layout(&mut u)?,
            1 => check_sima(&mut u)?,
            2 => check_cosformer(&mut u)?,
            3 => check_reference(&mut u)?,
            _ => check_parse(&mut u)?,
        }
    }
    Ok(())
}

fuzz_target!(|data: &[u8]| {
    let _ = run(data);
});
