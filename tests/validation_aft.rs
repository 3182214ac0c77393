//! AFT input validation needs no GPU: every refusal is a typed error naming the argument.

use sofa::ops::aft::{workspace_bytes, AftParams, Plan, Variant, CHUNK, MAX_T};
use sofa::{Dims, Error, Layout};

fn arg_of(e: Error) -> &'static str {
    e.argument().unwrap_or_else(|| panic!("untyped error: {e}"))
}

fn plan(dims: Dims, variant: Variant, causal: bool) -> Result<Plan, Error> {
    let l = Layout::contiguous(dims);
    Plan::new(&l, &l, &l, &l, variant, &AftParams { causal })
}

#[test]
fn window_zero_is_refused() {
    let d = Dims::new(1, 2, 100, 32);
    for v in [Variant::Local { window: 0 }, Variant::Conv { window: 0 }] {
        assert_eq!(arg_of(plan(d, v, false).unwrap_err()), "window");
    }
    assert_eq!(
        arg_of(plan(d, Variant::Local { window: MAX_T + 1 }, false).unwrap_err()),
        "window"
    );
}

#[test]
fn bias_lengths_follow_the_variant() {
    let d = Dims::new(2, 3, 100, 32);
    let len = |v: Variant| plan(d, v, false).unwrap().bias;
    assert_eq!(len(Variant::Simple), None);
    assert_eq!(len(Variant::Full), Some(("w", 100 * 100)));
    assert_eq!(len(Variant::Local { window: 4 }), Some(("w", 100 * 7)));
    assert_eq!(len(Variant::Conv { window: 4 }), Some(("u", 3 * 7)));
    // A window beyond T is allowed (the band covers everything); storage still has 2s − 1 columns.
    assert_eq!(len(Variant::Local { window: 150 }), Some(("w", 100 * 299)));
}

#[test]
fn shapes_must_agree() {
    let d = Dims::new(1, 2, 100, 32);
    let l = Layout::contiguous(d);
    let p = AftParams::default();
    let short = Layout::contiguous(Dims::new(1, 2, 99, 32));
    let wide = Layout::contiguous(d.with_d(48));
    assert_eq!(
        arg_of(Plan::new(&l, &short, &l, &l, Variant::Simple, &p).unwrap_err()),
        "k"
    );
    assert_eq!(
        arg_of(Plan::new(&l, &l, &wide, &l, Variant::Simple, &p).unwrap_err()),
        "v"
    );
    assert_eq!(
        arg_of(Plan::new(&l, &l, &l, &wide, Variant::Simple, &p).unwrap_err()),
        "o"
    );
    let big_d = Dims::new(1, 1, 10, 257);
    assert_eq!(
        arg_of(plan(big_d, Variant::Simple, false).unwrap_err()),
        "q"
    );
    let long = Dims::new(1, 1, MAX_T + 1, 8);
    assert_eq!(arg_of(plan(long, Variant::Simple, true).unwrap_err()), "q");
}

#[test]
fn workspace_is_chunk_statistics() {
    let d = Dims::new(1, 16, 65536, 64);
    let chunks = 65536 / CHUNK;
    let per = 16 * 3 * 64 * 4;
    // max |V| per chunk (the f16 operand scale), for every plan that runs a window or GEMM kernel
    let vmax = 16 * 64 * (chunks + 1) * 4;
    // Non-causal simple: only its per-part totals, at most 128 per slice whatever T.
    let totals = workspace_bytes(d, Variant::Simple, &AftParams::default()).unwrap();
    assert_eq!(totals, per * 128);
    let short = workspace_bytes(
        Dims::new(1, 16, 1000, 64),
        Variant::Simple,
        &AftParams::default(),
    );
    assert_eq!(short.unwrap(), per * 1000usize.div_ceil(CHUNK));
    let long = workspace_bytes(
        Dims::new(1, 16, 1 << 20, 64),
        Variant::Simple,
        &AftParams::default(),
    );
    assert_eq!(long.unwrap(), totals);
    // The chunk statistics and their prefixes of every other plan.
    let simple = per * (2 * chunks + 1);
    let local = workspace_bytes(d, Variant::Local { window: 64 }, &AftParams::default()).unwrap();
    assert_eq!(local, per * (3 * chunks + 2) + vmax);
    let causal = workspace_bytes(
        d,
        Variant::Local { window: 64 },
        &AftParams { causal: true },
    );
    assert_eq!(causal.unwrap(), simple + vmax);
    let causal_simple = workspace_bytes(d, Variant::Simple, &AftParams { causal: true });
    assert_eq!(causal_simple.unwrap(), simple + vmax);
    // Full (causal or not): + w's row maxima and the tensor-core GEMM's 16-bit operand
    // [E⊙V | E] (128 columns per 64-channel tile, + 16 bytes for alignment).
    let full = workspace_bytes(d, Variant::Full, &AftParams::default()).unwrap();
    let bmat = 65536 * (16 * 128) * 2 + 16;
    assert_eq!(full, simple + 65536 * 4 + vmax + bmat);
    let causal_full = workspace_bytes(d, Variant::Full, &AftParams { causal: true });
    assert_eq!(causal_full.unwrap(), full);
    // An odd number of channel tiles is padded to an even one (the GEMM's CTAs take two).
    let odd = Dims::new(1, 3, 64, 64);
    let bytes = workspace_bytes(odd, Variant::Full, &AftParams::default()).unwrap();
    let stats = 3 * 3 * 64 * 4 * 3; // part (1 chunk) + pre (2 entries)
    assert_eq!(
        bytes,
        stats + 64 * 4 + 3 * 64 * 2 * 4 + 64 * (4 * 128) * 2 + 16
    );
}

#[test]
fn slice_count_keeps_kernel_ints_in_range() {
    // Slice loops step by up to the slice count B·H·⌈D/64⌉ (or a group of it) in ints: ≤ 2^30.
    let over = Dims::new(1 << 15, (1 << 15) + 1, 1, 1);
    for v in [Variant::Simple, Variant::Conv { window: 1 }] {
        assert_eq!(arg_of(plan(over, v, false).unwrap_err()), "q");
    }
    assert!(plan(Dims::new(1 << 15, 1 << 15, 1, 1), Variant::Simple, true).is_ok());
}
