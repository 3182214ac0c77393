//! Property tests (issue 9): arbitrary shapes, strides, buffer lengths, dtypes and parameters —
//! small, zero, boundary and overflowing — through the validation layer (`Layout`, the SimA and
//! cosFormer plans and workspace sizes, the decode-state checks) and every CPU reference. Each
//! call returns `Ok` (and on small valid shapes the linear form matches the literal form) or a
//! typed input error naming its argument; never a panic. No GPU needed.

use proptest::prelude::*;
use proptest::test_runner::Config;
use sofa::ops::{cosformer, sima, MAX_HEAD_DIM};
use sofa::reference::{
    aft::{self, AftParams, Bias},
    cosformer::{self as rcos, CosformerParams},
    sima as rsima,
    soft::{self, Landmarks, SoftParams},
    softmax::{self, SoftmaxParams},
    Qkv, Rng,
};
use sofa::{DType, Dims, Error, Layout, LayoutKind, Strides};

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

/// A count: mostly small, sometimes a boundary or overflowing value.
fn count() -> impl Strategy<Value = usize> {
    prop_oneof![
        6 => 0usize..10,
        2 => proptest::sample::select(&HOSTILE[..]),
        1 => 0usize..(1 << 20),
        1 => any::<usize>(),
    ]
}

fn hostile_float() -> impl Strategy<Value = f64> {
    prop_oneof![
        4 => -4.0f64..4.0,
        1 => proptest::sample::select(vec![
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
        ]),
        1 => any::<f64>(),
    ]
}

fn dims() -> impl Strategy<Value = Dims> {
    (count(), count(), count(), count()).prop_map(|(b, h, n, d)| Dims::new(b, h, n, d))
}

fn strides() -> impl Strategy<Value = Strides> {
    (count(), count(), count()).prop_map(|(batch, head, seq)| Strides { batch, head, seq })
}

/// A layout of `d`: contiguous, `[B,N,H,D]`, or arbitrary strides.
fn layout_of(d: Dims) -> impl Strategy<Value = Layout> {
    prop_oneof![
        Just(Layout::contiguous(d)),
        Just(Layout::of_kind(d, LayoutKind::Bnhd)),
        strides().prop_map(move |strides| Layout { dims: d, strides }),
    ]
}

fn layout() -> impl Strategy<Value = Layout> {
    dims().prop_flat_map(layout_of)
}

/// q, k, v, o layouts that usually agree in shape (so plans get past the shape checks).
/// `cross`: k/v may have another length S.
fn qkvo(cross: bool) -> impl Strategy<Value = [Layout; 4]> {
    (dims(), count(), count(), any::<bool>(), any::<bool>())
        .prop_flat_map(move |(q, s, dv, other_s, same_dv)| {
            let s = if cross && other_s { s } else { q.n };
            let dv = if same_dv { q.d } else { dv };
            let kd = Dims::new(q.b, q.h, s, q.d);
            (
                layout_of(q),
                layout_of(kd),
                layout_of(kd.with_d(dv)),
                layout_of(q.with_d(dv)),
            )
        })
        .prop_map(|(q, k, v, o)| [q, k, v, o])
}

fn typed(e: &Error) -> Result<(), TestCaseError> {
    prop_assert!(e.argument().is_some(), "untyped error: {e:?}");
    Ok(())
}

/// `Ok(Some(x))`, or `Ok(None)` after checking the error is typed.
fn ok_or_typed<T>(r: sofa::Result<T>) -> Result<Option<T>, TestCaseError> {
    match r {
        Ok(x) => Ok(Some(x)),
        Err(e) => typed(&e).map(|_| None),
    }
}

fn cos_params() -> impl Strategy<Value = CosformerParams> {
    (
        prop_oneof![Just(None), count().prop_map(Some)],
        any::<bool>(),
        any::<bool>(),
        prop_oneof![Just(1e-6), hostile_float()],
    )
        .prop_map(|(m, causal, relu, eps)| CosformerParams {
            m,
            causal,
            relu,
            eps,
        })
}

/// `got ≈ want` within `tol` of the largest magnitude of `want` (at least 1).
fn close(got: &[f64], want: &[f64], tol: f64) -> Result<(), TestCaseError> {
    prop_assert_eq!(got.len(), want.len());
    let scale = want.iter().fold(1.0f64, |m, x| m.max(x.abs()));
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        prop_assert!((g - w).abs() <= tol * scale, "element {i}: {g} vs {w}");
    }
    Ok(())
}

/// Contiguous random inputs of a small self- or cross-attention shape.
#[derive(Debug, Clone)]
struct Inputs {
    q: Vec<f64>,
    k: Vec<f64>,
    v: Vec<f64>,
    dims: Dims,
    s: usize,
    dv: usize,
}

impl Inputs {
    fn x(&self) -> sofa::Result<Qkv<'_>> {
        Qkv::new(&self.q, &self.k, &self.v, self.dims, self.s, self.dv)
    }
}

/// Small shapes (every extent 1..=limits), random values in [-2, 2); `cross` lets S ≠ N.
fn inputs(cross: bool, same_dv: bool) -> impl Strategy<Value = Inputs> {
    (
        1usize..=2,
        1usize..=2,
        1usize..=7,
        1usize..=7,
        1usize..=5,
        1usize..=5,
        any::<u64>(),
    )
        .prop_map(move |(b, h, n, s, d, dv, seed)| {
            let s = if cross { s } else { n };
            let dv = if same_dv { d } else { dv };
            let mut rng = Rng::new(seed);
            let mut fill = |len| (0..len).map(|_| rng.uniform(-2.0, 2.0)).collect::<Vec<_>>();
            Inputs {
                q: fill(b * h * n * d),
                k: fill(b * h * s * d),
                v: fill(b * h * s * dv),
                dims: Dims::new(b, h, n, d),
                s,
                dv,
            }
        })
}

/// A buffer whose length differs from `exact` (shorter, longer or empty).
fn wrong_len(exact: usize, how: u8) -> Vec<f64> {
    let len = match how % 3 {
        0 => exact + 1,
        1 => exact - 1,
        _ => 0,
    };
    vec![0.5; len]
}

proptest! {
    #![proptest_config(Config { cases: 512, failure_persistence: None, ..Config::default() })]

    #[test]
    fn layout_validate_is_total(l in layout(), len in count(), max_d in count()) {
        let span = l.span();
        let _ = l.is_non_overlapping();
        match l.validate("x", len, max_d) {
            Ok(()) => {
                let s = span.expect("a validated layout has a span");
                prop_assert!(s <= len && s <= i64::MAX as usize / 2);
                let Dims { b, h, n, d } = l.dims;
                prop_assert!(b >= 1 && h >= 1 && n >= 1 && (1..=max_d).contains(&d));
            }
            Err(e) => {
                prop_assert_eq!(e.argument(), Some("x"));
                if let Error::BufferTooSmall { needed, len: got, .. } = e {
                    prop_assert_eq!(Some(needed), span);
                    prop_assert!(needed > got);
                }
            }
        }
    }

    #[test]
    fn contiguous_layouts_never_panic(d in dims(), kind in prop_oneof![Just(LayoutKind::Bhnd), Just(LayoutKind::Bnhd)]) {
        let l = Layout::of_kind(d, kind);
        let _ = (l.span(), l.is_non_overlapping());
        ok_or_typed(l.validate("q", usize::MAX, MAX_HEAD_DIM))?;
        if let (Some(numel), Some(span)) = (d.numel(), l.span()) {
            if numel > 0 {
                prop_assert_eq!(span, numel);
                prop_assert!(l.is_non_overlapping());
            }
        }
    }

    #[test]
    fn sima_plan_is_total([q, k, v, o] in qkvo(false), dv in count()) {
        if let Some(plan) = ok_or_typed(sima::Plan::new(&q, &k, &v, &o))? {
            prop_assert!(plan.workspace_bytes() <= isize::MAX as usize);
            prop_assert!(plan.dims.d <= MAX_HEAD_DIM && plan.dv <= MAX_HEAD_DIM);
            let linear = matches!(plan.order, sima::Order::Linear { .. });
            prop_assert_eq!(linear, plan.dims.n >= plan.dims.d);
        }
        ok_or_typed(sima::workspace_bytes(q.dims, dv))?;
    }

    #[test]
    fn cosformer_plan_is_total(
        [q, k, v, o] in qkvo(true),
        p in cos_params(),
        rows in count(),
        st in (count(), count(), count(), count(), count()),
    ) {
        if let Some(plan) = ok_or_typed(cosformer::Plan::new(&q, &k, &v, &o, &p))? {
            prop_assert!(plan.workspace_bytes() <= isize::MAX as usize);
            prop_assert!(plan.m >= plan.n.max(plan.s));
            if let Some(p2) = ok_or_typed(plan.with_rows_per_chunk(rows))? {
                prop_assert!(p2.workspace_bytes() <= isize::MAX as usize);
            }
        }
        ok_or_typed(cosformer::workspace_bytes(q.dims, k.dims.n, v.dims.d, &p))?;
        let (b, h, d, dv, pos) = st;
        if let Some(shape) = ok_or_typed(cosformer::StateShape::new(b, h, d, dv, &p))? {
            let _ = shape.len();
            if let Some(plan) = ok_or_typed(shape.prefill_plan(pos, &q, &k, &v, &o))? {
                prop_assert!(plan.workspace_bytes() <= isize::MAX as usize);
            }
            ok_or_typed(shape.check_step(pos, &q, &k, &v, &o))?;
        }
    }

    #[test]
    fn text_parsers_are_total(s in "\\PC{0,12}") {
        let _ = s.parse::<Dims>().map_err(|e| typed(&e));
        let _ = s.parse::<DType>().map_err(|e| typed(&e));
        let _ = s.parse::<LayoutKind>().map_err(|e| typed(&e));
        let _ = sofa::tensor::parse_count(&s);
    }
}

proptest! {
    #![proptest_config(Config { cases: 32, failure_persistence: None, ..Config::default() })]

    /// Small layouts against brute force: span = max offset + 1, and a layout called
    /// non-overlapping maps every index to a distinct element.
    #[test]
    fn layout_span_and_overlap_match_brute_force(
        (b, h, n, d) in (1usize..4, 1usize..4, 1usize..4, 1usize..4),
        (sb, sh, sn) in (0usize..40, 0usize..40, 0usize..40),
    ) {
        let l = Layout { dims: Dims::new(b, h, n, d), strides: Strides { batch: sb, head: sh, seq: sn } };
        let span = l.span().unwrap();
        let mut seen = vec![false; span];
        let mut dup = false;
        for bi in 0..b {
            for hi in 0..h {
                for ni in 0..n {
                    for c in 0..d {
                        dup |= std::mem::replace(&mut seen[l.offset(bi, hi, ni) + c], true);
                    }
                }
            }
        }
        prop_assert!(seen[span - 1], "span {span} is not max offset + 1");
        prop_assert!(!(l.is_non_overlapping() && dup), "overlap missed");
        prop_assert!(l.validate("x", span, 4).is_ok());
        let too_small = matches!(l.validate("x", span - 1, 4), Err(Error::BufferTooSmall { .. }));
        prop_assert!(too_small, "a buffer one short must be refused");
    }

    #[test]
    fn reference_sima(x in inputs(false, false), how in any::<u8>()) {
        let (q, k, v, dims, dv) = (&x.q, &x.k, &x.v, x.dims, x.dv);
        let lit = rsima::literal(q, k, v, dims, dv);
        close(&rsima::linear(q, k, v, dims, dv), &lit, 1e-9)?;
        prop_assert_eq!(rsima::try_forward(q, k, v, dims, dv).unwrap(), rsima::forward(q, k, v, dims, dv));
        let bad = wrong_len(q.len(), how);
        let e = rsima::try_forward(&bad, k, v, dims, dv).unwrap_err();
        prop_assert_eq!(e.argument(), Some("q"));
        let e = rsima::try_forward(q, k, &wrong_len(v.len(), how), dims, dv).unwrap_err();
        prop_assert_eq!(e.argument(), Some("v"));
    }

    #[test]
    fn reference_cosformer(x in inputs(true, false), p in cos_params(), how in any::<u8>()) {
        let xx = x.x().unwrap();
        let lin = ok_or_typed(rcos::linear(&xx, &p))?;
        let lit = ok_or_typed(rcos::literal(&xx, &p))?;
        prop_assert_eq!(lin.is_some(), lit.is_some());
        if let (Some(a), Some(b)) = (lin, lit) {
            // ReLU features give non-negative weights: no cancellation, forms agree closely.
            if p.relu && (1e-9..=1.0).contains(&p.eps) {
                close(&a, &b, 1e-9)?;
            }
        }
        let bad = wrong_len(x.k.len(), how);
        let e = Qkv::new(&x.q, &bad, &x.v, x.dims, x.s, x.dv).unwrap_err();
        prop_assert_eq!(e.argument(), Some("k"));
    }

    #[test]
    fn reference_cosformer_decode(x in inputs(false, false), p in cos_params(), how in any::<u8>()) {
        let Dims { b, h, d, .. } = x.dims;
        if let Some(mut st) = ok_or_typed(rcos::State::new(b, h, d, x.dv, &p))? {
            if let Some(out) = ok_or_typed(st.prefill(&x.q, &x.k, &x.v))? {
                // Prefill equals the causal operator with the same M.
                let causal = CosformerParams { causal: true, ..p };
                if p.relu && (1e-9..=1.0).contains(&p.eps) {
                    close(&out, &rcos::literal(&x.x().unwrap(), &causal).unwrap(), 1e-9)?;
                }
            }
            let one = vec![0.25; b * h * d];
            ok_or_typed(st.step(&one, &one, &vec![0.5; b * h * x.dv]))?;
            ok_or_typed(st.step(&wrong_len(one.len(), how), &one, &vec![0.5; b * h * x.dv]))?;
        }
    }

    #[test]
    fn reference_cosformer_state_hostile(b in count(), h in count(), d in count(), dv in count(), p in cos_params()) {
        // Small states are built; states whose size overflows (or passes isize::MAX bytes) must
        // be refused with a typed error before any allocation. Sizes in between would really
        // allocate host memory, so they are not tried here.
        let values = d.checked_mul(dv).and_then(|x| x.checked_add(d))
            .and_then(|x| x.checked_mul(2)).and_then(|x| x.checked_mul(b.checked_mul(h)?));
        let refused = [b, h, d, dv].contains(&0) || values.is_none_or(|x| x > isize::MAX as usize / 8);
        if refused || values.is_some_and(|x| x <= 1 << 16) {
            let r = rcos::State::new(b, h, d, dv, &p);
            if refused {
                prop_assert!(r.is_err());
            }
            ok_or_typed(r)?;
        }
    }

    #[test]
    fn reference_aft(
        x in inputs(false, true),
        causal in any::<bool>(),
        variant in 0u8..4,
        window in prop_oneof![4 => 0usize..9, 1 => count()],
        seed in any::<u64>(),
        len_off in prop_oneof![4 => Just(0i64), 1 => -2i64..3],
    ) {
        let (t, h) = (x.dims.n, x.dims.h);
        let band = window.min(64).saturating_mul(2).saturating_sub(1);
        let want = match variant { 1 => t * t, 2 => band * t, 3 => band * h, _ => 0 };
        let len = (want as i64 + len_off).max(0) as usize;
        let mut rng = Rng::new(seed);
        let w: Vec<f64> = (0..len).map(|_| rng.uniform(-2.0, 2.0)).collect();
        let bias = match variant {
            0 => Bias::None,
            1 => Bias::Full(&w),
            2 => Bias::Local { w: &w, window },
            _ => Bias::Conv { u: &w, window },
        };
        let xx = x.x().unwrap();
        let p = AftParams { causal };
        let lin = ok_or_typed(aft::linear(&xx, &bias, &p))?;
        let lit = ok_or_typed(aft::literal(&xx, &bias, &p))?;
        prop_assert_eq!(lin.is_some(), lit.is_some());
        if let (Some(a), Some(b)) = (lin, lit) {
            close(&a, &b, 1e-9)?;
        }
    }

    #[test]
    fn reference_soft(
        x in inputs(false, false),
        lm in prop_oneof![
            count().prop_map(|m| Landmarks::AvgPool1d { m }),
            (count(), count(), count()).prop_map(|(height, width, r)| Landmarks::AvgPool2d { height, width, r }),
            (0usize..4).prop_map(|m| Landmarks::Given { m }),
        ],
        iters in prop_oneof![Just(20usize), 0usize..30],
        ridge in prop_oneof![Just(0.01), hostile_float()],
        alpha in prop_oneof![Just(0.9), hostile_float()],
        tied in any::<bool>(),
        given in prop_oneof![Just(None), Just(Some(0i64)), (-1i64..2).prop_map(Some)],
    ) {
        let p = SoftParams { landmarks: lm, newton_iters: iters, ridge, alpha_scale: alpha, tied };
        let Dims { b, h, d, .. } = x.dims;
        let g = given.map(|off| {
            let want = b * h * lm.count().min(8) * d;
            vec![0.1; (want as i64 + off).max(0) as usize]
        });
        let xx = x.x().unwrap();
        let lin = ok_or_typed(soft::linear(&xx, g.as_deref(), &p))?;
        let lit = ok_or_typed(soft::literal(&xx, g.as_deref(), &p))?;
        prop_assert_eq!(lin.is_some(), lit.is_some());
        if let (Some(a), Some(b)) = (lin, lit) {
            // The default Newton setup on pooled landmarks stays well-scaled: forms agree.
            if iters == 20 && ridge == 0.01 && alpha == 0.9 && matches!(lm, Landmarks::AvgPool1d { .. }) {
                close(&a, &b, 1e-6)?;
            }
        }
        ok_or_typed(soft::gaussian_products(&xx, g.as_deref(), &p))?;
    }

    #[test]
    fn reference_softmax(
        x in inputs(true, false),
        causal in any::<bool>(),
        scale in prop_oneof![Just(None), hostile_float().prop_map(Some)],
    ) {
        let p = SoftmaxParams { causal, scale };
        let xx = x.x().unwrap();
        let lin = ok_or_typed(softmax::online(&xx, &p))?;
        let lit = ok_or_typed(softmax::literal(&xx, &p))?;
        prop_assert_eq!(lin.is_some(), lit.is_some());
        if let (Some(a), Some(b)) = (lin, lit) {
            if scale.is_none_or(|s| s.abs() <= 4.0) {
                close(&a, &b, 1e-9)?;
            }
        }
    }

    /// Every reference refuses extents of 0 and overflowing shapes with a typed error.
    #[test]
    fn reference_refuses_bad_shapes(d in dims(), s in count(), dv in count()) {
        let empty: [f64; 0] = [];
        let r = Qkv::new(&empty, &empty, &empty, d, s, dv);
        // An empty buffer only fits a shape with zero elements, which has an extent of 0.
        prop_assert!(r.is_err());
        typed(&r.unwrap_err())?;
        if s == d.n {
            typed(&rsima::try_forward(&empty, &empty, &empty, d, dv).unwrap_err())?;
        }
    }
}

/// Found by review: B·H = 2³¹ − 1 sequences of 2³⁰ − 1 tokens with zero strides (broadcast
/// inputs) pass validation; 64-row causal chunks would then need a workspace of ~2⁷² bytes.
#[test]
fn cosformer_tiny_chunks_of_huge_shapes_are_refused() {
    let d = Dims::new(1 << 30, 1, (1 << 30) - 1, 256); // the most slices and rows accepted
    let l = Layout {
        dims: d,
        strides: Strides {
            batch: 0,
            head: 0,
            seq: 0,
        },
    };
    let p = CosformerParams {
        causal: true,
        ..Default::default()
    };
    let plan = cosformer::Plan::new(&l, &l, &l, &l, &p).unwrap();
    assert!(plan.workspace_bytes() <= isize::MAX as usize);
    let e = plan.with_rows_per_chunk(cosformer::BLOCK).unwrap_err();
    assert_eq!(e.argument(), Some("rows_per_chunk"));
}
