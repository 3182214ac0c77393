//! Fuzz target for the validation layer and the CPU backend: decodes bytes into shapes, strides,
//! buffer lengths, dtypes and parameters (small, zero, huge and overflowing values alike), calls
//! `Layout::validate`/`span`/`is_non_overlapping`; the GPU plans and workspace sizes, which need
//! no device: SimA, cosFormer (with the decode-state checks), SOFT (landmarks, Newton parameters
//! and path, `NewtonPlan`, shared-memory sizing, tied/untied keys) and AFT (every variant and
//! window, bias lengths, causal); the cuBLAS baselines' plans (softmax, SimA, cosFormer, SOFT,
//! AFT); the C ABI's device-free queries; and every CPU reference on small decoded shapes. Every
//! call must return `Ok` or a typed input error (`Error::argument()` is `Some`; through C, a
//! status other than `SOFA_STATUS_INTERNAL` with its message); a panic, an out-of-bounds access or
//! an untyped error is a finding, and so is an accepted plan whose extents do not fit the kernels'
//! 32-bit ints or whose workspace disagrees with the stride-free `workspace_bytes`. Run:
//! `cargo fuzz run validation -- -max_total_time=600`.
#![no_main]

use libfuzzer_sys::arbitrary::{Result as AResult, Unstructured};
use libfuzzer_sys::fuzz_target;
use sofa::ops::{aft as gaft, cosformer, sima, soft as gsoft, MAX_HEAD_DIM, MAX_LEN, MAX_SLICES};
use sofa::reference::{
    aft::{self, AftParams, Bias},
    cosformer::{self as rcos, CosformerParams},
    soft::{self, Landmarks, SoftParams},
    softmax::{self, SoftmaxParams},
    Qkv,
};
use sofa::{baseline, capi};
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
        slices_and_len_fit(plan.dims.b, plan.dims.h, &[plan.dims.n], "sima");
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
        slices_and_len_fit(plan.b, plan.h, &[plan.n, plan.s, plan.m], "cosformer");
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
        slices_and_len_fit(st.b, st.h, &[st.m], "StateShape");
        let _ = st.len();
        let pos = count(u)?;
        if let Some(plan) = ok_or_typed(st.prefill_plan(pos, &q, &k, &v, &o), "prefill_plan") {
            let _ = plan.workspace_bytes();
        }
        ok_or_typed(st.check_step(pos, &q, &k, &v, &o), "check_step");
    }
    Ok(())
}

/// Shared memory per block a device might allow (0: none; the ones of real GPUs; huge).
fn smem(u: &mut Unstructured) -> AResult<usize> {
    const SMEM: [usize; 6] = [0, 48 << 10, 99 << 10, 227 << 10, 232_448, usize::MAX];
    Ok(if u.arbitrary()? {
        SMEM[u.choose_index(SMEM.len())?]
    } else {
        count(u)?
    })
}

/// A landmark method for sequence length `n`: often valid for it, sometimes hostile.
fn landmarks(u: &mut Unstructured, n: usize) -> AResult<Landmarks> {
    let fit = n.min(300);
    Ok(match u.int_in_range(0u8..=4)? {
        0 => Landmarks::AvgPool1d { m: count(u)? },
        1 => Landmarks::AvgPool1d {
            m: small(u, 0, fit)?,
        },
        2 => Landmarks::Given {
            m: if u.arbitrary()? {
                count(u)?
            } else {
                small(u, 0, 300)?
            },
        },
        _ => {
            let height = if u.arbitrary()? {
                small(u, 1, n.clamp(1, 64))?
            } else {
                count(u)?
            };
            let width = if height > 0 && n % height == 0 && u.arbitrary()? {
                n / height
            } else {
                count(u)?
            };
            let r = if u.arbitrary()? {
                small(u, 0, 4)?
            } else {
                count(u)?
            };
            Landmarks::AvgPool2d { height, width, r }
        }
    })
}

/// SOFT parameters; the GPU plans do no work, so T may be huge here.
fn soft_params(u: &mut Unstructured, n: usize) -> AResult<SoftParams> {
    Ok(SoftParams {
        landmarks: landmarks(u, n)?,
        newton_iters: if u.arbitrary()? {
            small(u, 0, 30)?
        } else {
            count(u)?
        },
        ridge: if u.arbitrary()? { 0.01 } else { float(u)? },
        alpha_scale: if u.arbitrary()? { 0.9 } else { float(u)? },
        tied: u.arbitrary()?,
    })
}

fn fits_i32(x: usize) -> bool {
    x <= i32::MAX as usize
}

/// What the kernels' `int` slice loops and row indices need of an accepted plan.
fn slices_and_len_fit(b: usize, h: usize, lens: &[usize], what: &str) {
    assert!(b * h <= MAX_SLICES, "{what}: B·H = {b}·{h} accepted");
    for &n in lens {
        assert!(n <= MAX_LEN, "{what}: length {n} accepted");
    }
}

/// Every Newton path (the names `sofa bench --newton-path` takes).
fn newton_path(u: &mut Unstructured) -> AResult<gsoft::NewtonPath> {
    use sofa::bench::workload::NEWTON_PATHS;
    Ok(NEWTON_PATHS[u.choose_index(NEWTON_PATHS.len())?].1)
}

/// `NewtonPlan` and the shared-memory sizing on their own.
fn check_newton(u: &mut Unstructured) -> AResult<()> {
    use gsoft::NewtonPath;
    let batch = count(u)?;
    let m = if u.arbitrary()? {
        small(u, 0, 300)?
    } else {
        count(u)?
    };
    let p = soft_params(u, 1)?;
    let (path, sm) = (newton_path(u)?, smem(u)?);
    let _ = gsoft::newton_smem_bytes(m);
    let fits = gsoft::newton_fits_on_chip(m, sm);
    let r = gsoft::NewtonPlan::new(batch, m, &p, path, sm);
    if let Some(plan) = ok_or_typed(r, "NewtonPlan::new") {
        assert!((1..=gsoft::MAX_M).contains(&plan.m) && plan.batch <= MAX_SLICES);
        assert!(fits_i32(p.newton_iters), "{p:?}");
        match (path, plan.path) {
            (_, NewtonPath::Auto) => panic!("unresolved path"),
            (NewtonPath::Auto, got) => assert_eq!(got == NewtonPath::OneLaunch, fits),
            (want, got) => assert_eq!(want, got),
        }
        assert!(plan.path == NewtonPath::MultiLaunch || fits);
        if matches!(plan.path, NewtonPath::ClusterEarlyArrive | NewtonPath::ClusterLateArrive | NewtonPath::ClusterAsync) {
            assert!((gsoft::NEWTON_CLUSTER_MIN_M..=gsoft::NEWTON_CLUSTER_MAX_M).contains(&m));
        }
        let ws = plan.workspace_bytes();
        assert!(ws == 0 || ws == 12 * plan.len());
        let n = count(u)?;
        let capped = ok_or_typed(plan.with_max_in_flight(n), "NewtonPlan::with_max_in_flight");
        assert_eq!(capped.is_some(), n >= 1);
    }
    Ok(())
}

/// The fused SOFT plan: shapes, tied/untied keys, landmarks, Newton parameters, row chunks.
fn check_soft(u: &mut Unstructured) -> AResult<()> {
    let [q, k, v, o] = qkvo(u, false)?;
    let p = soft_params(u, q.dims.n)?;
    let pass_k = if u.int_in_range(0u8..=7)? == 0 {
        p.tied // the wrong choice
    } else {
        !p.tied
    };
    let sm = smem(u)?;
    let r = gsoft::Plan::new(&q, pass_k.then_some(&k), &v, &o, &p, sm);
    if let Some(plan) = ok_or_typed(r, "soft::Plan::new") {
        let Dims { b, h, n, d } = plan.dims;
        assert!(!pass_k || k.dims == q.dims);
        assert_eq!(plan.m, p.landmarks.count());
        assert!((1..=gsoft::MAX_M).contains(&plan.m));
        assert!((1..=MAX_HEAD_DIM).contains(&d) && (1..=MAX_HEAD_DIM).contains(&plan.dv));
        // Everything the kernels take as an int.
        slices_and_len_fit(b, h, &[n], "soft");
        assert!(fits_i32(p.newton_iters));
        if let Landmarks::AvgPool2d { height, width, r } = p.landmarks {
            assert!(fits_i32(height) && fits_i32(width) && fits_i32(r));
        }
        assert_eq!(plan.newton.batch, b * h);
        assert!(plan.newton.path != gsoft::NewtonPath::Auto);
        let (c, rpc) = (plan.chunks, plan.rows_per_chunk);
        assert!((1..=gsoft::MAX_CHUNKS).contains(&c) && rpc % 64 == 0);
        assert!(
            c * rpc >= n && (c - 1) * rpc < n,
            "{c} chunks of {rpc} for N = {n}"
        );
        let ws = plan.workspace_bytes();
        // The stride-free size assumes the multi-launch Newton path: an upper bound.
        if let Ok(bound) = gsoft::workspace_bytes(plan.dims, plan.dv, &p) {
            assert!(ws <= bound, "{ws} > {bound}");
        }
    }
    let dv = if u.arbitrary()? { q.dims.d } else { count(u)? };
    ok_or_typed(
        gsoft::workspace_bytes(q.dims, dv, &p),
        "soft workspace_bytes",
    );
    Ok(())
}

fn aft_variant(u: &mut Unstructured) -> AResult<gaft::Variant> {
    use gaft::Variant::*;
    let window = if u.arbitrary()? {
        small(u, 0, 9)?
    } else {
        count(u)?
    };
    Ok(match u.int_in_range(0u8..=3)? {
        0 => Simple,
        1 => Local { window },
        2 => Conv { window },
        _ => Full,
    })
}

/// The AFT plan: every variant and window, causal or not, S ≠ T and Dv ≠ D refused.
fn check_aft(u: &mut Unstructured) -> AResult<()> {
    let cross = u.arbitrary()?;
    let [q, k, v, o] = qkvo(u, cross)?;
    let variant = aft_variant(u)?;
    let p = AftParams {
        causal: u.arbitrary()?,
    };
    let r = gaft::Plan::new(&q, &k, &v, &o, variant, &p);
    if let Some(plan) = ok_or_typed(r, "aft::Plan::new") {
        let Dims { b, h, n, d } = plan.dims;
        assert!(k.dims == q.dims && v.dims == q.dims && o.dims == q.dims);
        assert!(n <= gaft::MAX_T && (1..=MAX_HEAD_DIM).contains(&d));
        assert!(fits_i32(b * h * d.div_ceil(64)));
        if variant != gaft::Variant::Full {
            assert!(b * h * d.div_ceil(64) <= MAX_SLICES, "{b}·{h}·{d} tiles accepted");
        }
        assert_eq!(plan.chunks, n.div_ceil(gaft::CHUNK));
        let bias = variant.bias_len(n, h).expect("accepted by the plan");
        assert_eq!(plan.bias, bias);
        let ws = plan.workspace_bytes();
        assert!(ws < usize::MAX / 4 * 4, "workspace overflow passed as {ws}");
        if let Ok(w) = gaft::workspace_bytes(plan.dims, variant, &p) {
            assert_eq!(w, ws, "the workspace depends on strides");
        }
    }
    ok_or_typed(variant.bias_len(count(u)?, count(u)?), "aft bias_len");
    let _ = variant.name();
    ok_or_typed(
        gaft::workspace_bytes(dims(u)?, variant, &p),
        "aft workspace_bytes",
    );
    Ok(())
}

fn softmax_params(u: &mut Unstructured) -> AResult<SoftmaxParams> {
    Ok(SoftmaxParams {
        causal: u.arbitrary()?,
        scale: if u.arbitrary()? {
            None
        } else {
            Some(float(u)?)
        },
    })
}

fn dtype(u: &mut Unstructured) -> AResult<DType> {
    Ok(DType::ALL[u.choose_index(DType::ALL.len())?])
}

/// The cuBLAS baselines' plans (contiguous tensors only), checked against their stride-free
/// `workspace_bytes`.
fn check_baseline(u: &mut Unstructured) -> AResult<()> {
    let which = u.int_in_range(0u8..=5)?;
    let mut l = qkvo(u, which == 0 || which == 2)?;
    if u.int_in_range(0u8..=3)? != 0 {
        l = l.map(|x| Layout::contiguous(x.dims));
    }
    let [q, k, v, o] = l;
    let (dt, dims, s, dv) = (dtype(u)?, q.dims, k.dims.n, v.dims.d);
    match which {
        0 => {
            let p = softmax_params(u)?;
            let r = baseline::softmax::Plan::new(dt, &q, &k, &v, &o, &p);
            if let Some(plan) = ok_or_typed(r, "baseline softmax") {
                assert!(!p.causal || dims.n == s);
                let w = baseline::softmax::workspace_bytes(dt, dims, s, dv);
                assert_eq!(w.ok(), Some(plan.workspace_bytes()));
            }
        }
        1 => {
            if let Some(plan) = ok_or_typed(
                baseline::sima::Plan::new(dt, &q, &k, &v, &o),
                "baseline sima",
            ) {
                let w = baseline::sima::workspace_bytes(dt, dims, dv);
                assert_eq!(w.ok(), Some(plan.workspace_bytes()));
            }
        }
        2 => {
            let p = cos_params(u)?;
            let r = baseline::cosformer::Plan::new(dt, &q, &k, &v, &o, &p);
            if let Some(plan) = ok_or_typed(r, "baseline cosformer") {
                assert!(!p.causal || dims.n <= baseline::cosformer::CAUSAL_MAX_N);
                let w = baseline::cosformer::workspace_bytes(dt, dims, s, dv, &p);
                assert_eq!(w.ok(), Some(plan.workspace_bytes()));
            }
        }
        3 => {
            let p = soft_params(u, dims.n)?;
            let kk = (!p.tied ^ (u.int_in_range(0u8..=7)? == 0)).then_some(&k);
            let r = baseline::soft::Plan::new(dt, &q, kk, &v, &o, &p);
            if let Some(plan) = ok_or_typed(r, "baseline soft") {
                let _ = plan.given_len();
                let w = baseline::soft::workspace_bytes(dt, dims, dv, &p);
                assert_eq!(w.ok(), Some(plan.workspace_bytes()));
            }
            let m = if u.arbitrary()? {
                small(u, 0, 300)?
            } else {
                count(u)?
            };
            let r = baseline::soft::NewtonPlan::new(count(u)?, m, &p);
            if let Some(np) = ok_or_typed(r, "baseline NewtonPlan") {
                assert!(np.workspace_bytes() >= 12 * np.len());
            }
        }
        4 => {
            let causal = u.arbitrary()?;
            let r = baseline::aft::Plan::new(dt, &q, &k, &v, &o, causal);
            if let Some(plan) = ok_or_typed(r, "baseline aft") {
                let w = baseline::aft::workspace_bytes(dt, dims);
                assert_eq!(w.ok(), Some(plan.workspace_bytes()));
            }
            let window = count(u)?;
            for bias in [
                baseline::aft::AftBias::Full { w: 0 },
                baseline::aft::AftBias::Local { w: 0, window },
            ] {
                ok_or_typed(bias.w_len(count(u)?), "baseline aft w_len");
            }
        }
        _ => {
            let dims = self::dims(u)?;
            let p = cos_params(u)?;
            let (s, dv) = (count(u)?, count(u)?);
            ok_or_typed(
                baseline::cosformer::workspace_bytes(dt, dims, s, dv, &p),
                "baseline cos ws",
            );
            ok_or_typed(
                baseline::softmax::workspace_bytes(dt, dims, s, dv),
                "baseline softmax ws",
            );
            let p = soft_params(u, dims.n)?;
            ok_or_typed(
                baseline::soft::workspace_bytes(dt, dims, dv, &p),
                "baseline soft ws",
            );
            ok_or_typed(
                baseline::sima::workspace_bytes(dt, dims, dv),
                "baseline sima ws",
            );
            ok_or_typed(baseline::aft::workspace_bytes(dt, dims), "baseline aft ws");
        }
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
            let p = softmax_params(u)?;
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

/// A C extent: mostly a small count, sometimes negative, zero or past every limit.
fn c_int(u: &mut Unstructured) -> AResult<i64> {
    const HOSTILE: [i64; 8] = [-1, i64::MIN, i64::MAX, 1 << 31, 1 << 40, 257, 0, 1];
    Ok(if u.int_in_range(0u8..=3)? == 0 {
        HOSTILE[u.choose_index(HOSTILE.len())?]
    } else {
        count(u)?.min(i64::MAX as usize) as i64
    })
}

/// A C status and the thread's last error agree: a message exactly when the call failed, and never
/// `SOFA_STATUS_INTERNAL` (a panic caught at the boundary).
fn c_status(st: capi::SofaStatus, what: &str) -> bool {
    assert_ne!(
        st,
        capi::SofaStatus::Internal,
        "{what}: a panic reached the C boundary"
    );
    // SAFETY: a NUL-terminated string in thread-local storage, valid until the next call.
    let msg = unsafe { std::ffi::CStr::from_ptr(capi::sofa_last_error()) };
    let ok = st == capi::SofaStatus::Ok;
    assert_eq!(
        msg.is_empty(),
        ok,
        "{what}: status {st:?} with message {msg:?}"
    );
    ok
}

/// The C ABI's queries that need no device (workspace sizes, bias lengths, descriptors, status
/// names) on hostile extents and parameters: each returns a status, never panics, and agrees with
/// the Rust API where it succeeds.
fn check_capi(u: &mut Unstructured) -> AResult<()> {
    let mut bytes = 0usize;
    let e: [i64; 6] = [
        c_int(u)?,
        c_int(u)?,
        c_int(u)?,
        c_int(u)?,
        c_int(u)?,
        c_int(u)?,
    ];
    let flag = |u: &mut Unstructured| -> AResult<i32> { Ok(*u.choose(&[0, 1, -7, i32::MAX])?) };
    let as_usize = |x: i64| usize::try_from(x).unwrap();
    match u.int_in_range(0u8..=5)? {
        0 => {
            // SAFETY: a valid output pointer.
            let st = unsafe {
                capi::sofa_sima_workspace_bytes(e[0], e[1], e[2], e[3], e[4], &mut bytes)
            };
            if c_status(st, "sofa_sima_workspace_bytes") {
                let d = Dims::new(
                    as_usize(e[0]),
                    as_usize(e[1]),
                    as_usize(e[2]),
                    as_usize(e[3]),
                );
                assert_eq!(Some(bytes), sima::workspace_bytes(d, as_usize(e[4])).ok());
            }
        }
        1 => {
            let cp = capi::SofaCosformerParams {
                m: c_int(u)?,
                causal: flag(u)?,
                relu: flag(u)?,
                eps: if u.arbitrary()? { 1e-6 } else { float(u)? },
            };
            // SAFETY: valid pointers.
            let st = unsafe {
                capi::sofa_cosformer_workspace_bytes(
                    e[0], e[1], e[2], e[3], e[4], e[5], &cp, &mut bytes,
                )
            };
            if c_status(st, "sofa_cosformer_workspace_bytes") {
                let p = CosformerParams {
                    m: (cp.m != 0).then(|| as_usize(cp.m)),
                    causal: cp.causal != 0,
                    relu: cp.relu != 0,
                    eps: cp.eps,
                };
                let d = Dims::new(
                    as_usize(e[0]),
                    as_usize(e[1]),
                    as_usize(e[2]),
                    as_usize(e[4]),
                );
                let want = cosformer::workspace_bytes(d, as_usize(e[3]), as_usize(e[5]), &p);
                assert_eq!(Some(bytes), want.ok());
            }
        }
        2 | 3 => {
            let sp = capi::SofaSoftParams {
                landmarks: *u.choose(&[0, 1, 2, 3, -1])?,
                tied: flag(u)?,
                m: c_int(u)?,
                height: c_int(u)?,
                width: c_int(u)?,
                r: c_int(u)?,
                newton_iters: c_int(u)?,
                ridge: if u.arbitrary()? { 0.01 } else { float(u)? },
                alpha_scale: if u.arbitrary()? { 0.9 } else { float(u)? },
            };
            // SAFETY: valid pointers.
            let st = unsafe {
                if u.arbitrary()? {
                    capi::sofa_soft_workspace_bytes(e[0], e[1], e[2], e[3], e[4], &sp, &mut bytes)
                } else {
                    capi::sofa_soft_newton_workspace_bytes(e[0], e[1], &sp, &mut bytes)
                }
            };
            c_status(st, "sofa_soft_*workspace_bytes");
        }
        4 => {
            let ap = capi::SofaAftParams {
                variant: *u.choose(&[0, 1, 2, 3, 4, -1])?,
                causal: flag(u)?,
                window: c_int(u)?,
            };
            // SAFETY: valid pointers.
            let st = unsafe { capi::sofa_aft_bias_len(e[0], e[1], &ap, &mut bytes) };
            c_status(st, "sofa_aft_bias_len");
            // SAFETY: valid pointers.
            let st =
                unsafe { capi::sofa_aft_workspace_bytes(e[0], e[1], e[2], e[3], &ap, &mut bytes) };
            c_status(st, "sofa_aft_workspace_bytes");
        }
        _ => {
            let t = capi::sofa_tensor_bhnd(std::ptr::null_mut(), e[0], e[1], e[2], e[3]);
            let t2 = capi::sofa_tensor_bnhd(std::ptr::null_mut(), e[0], e[2], e[1], e[3]);
            assert_eq!((t.b, t.h, t.n, t.d), (t2.b, t2.h, t2.n, t2.d));
            let status: i32 = u.arbitrary()?;
            // SAFETY: a static NUL-terminated string.
            let name = unsafe { std::ffi::CStr::from_ptr(capi::sofa_status_name(status)) };
            assert!(!name.is_empty());
            // Without a device every call that needs one says so, whatever its arguments.
            // SAFETY: a valid output pointer.
            let mut n = -1;
            c_status(
                unsafe { capi::sofa_device_count(&mut n) },
                "sofa_device_count",
            );
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
        match u.int_in_range(0u8..=9)? {
            0 => check_layout(&mut u)?,
            1 => check_sima(&mut u)?,
            2 => check_cosformer(&mut u)?,
            3 => check_reference(&mut u)?,
            4 => check_soft(&mut u)?,
            5 => check_newton(&mut u)?,
            6 => check_aft(&mut u)?,
            7 => check_baseline(&mut u)?,
            8 => check_capi(&mut u)?,
            _ => check_parse(&mut u)?,
        }
    }
    Ok(())
}

fuzz_target!(|data: &[u8]| {
    let _ = run(data);
});
