//! cosFormer input validation needs no GPU: every refusal is a typed error naming the argument.

use sofa::ops::cosformer::{
    state_len, workspace_bytes, CosformerParams, Plan, StateShape, BLOCK, CAUSAL_CTAS,
};
use sofa::{Dims, Error, Layout};

fn arg_of(e: Error) -> &'static str {
    e.argument().unwrap_or_else(|| panic!("untyped error: {e}"))
}

/// Plan for q [B,H,N,D], k [B,H,S,D], v [B,H,S,Dv], o [B,H,N,Dv], all contiguous.
fn plan(q: Dims, s: usize, dv: usize, p: &CosformerParams) -> Result<Plan, Error> {
    let c = Layout::contiguous;
    let k = Dims::new(q.b, q.h, s, q.d);
    Plan::new(&c(q), &c(k), &c(k.with_d(dv)), &c(q.with_d(dv)), p)
}

fn causal() -> CosformerParams {
    CosformerParams {
        causal: true,
        ..Default::default()
    }
}

fn with_m(m: usize, causal: bool) -> CosformerParams {
    CosformerParams {
        m: Some(m),
        causal,
        ..Default::default()
    }
}

#[test]
fn m_below_the_longest_sequence_is_refused() {
    let q = Dims::new(1, 2, 100, 32);
    let e = plan(q, 150, 32, &with_m(149, false)).unwrap_err();
    assert_eq!(arg_of(e), "M");
    assert_eq!(plan(q, 150, 32, &with_m(150, false)).unwrap().m, 150);
    assert_eq!(
        plan(q, 150, 32, &CosformerParams::default()).unwrap().m,
        150
    );
    assert_eq!(
        arg_of(plan(q, 100, 32, &with_m(99, true)).unwrap_err()),
        "M"
    );
    assert_eq!(plan(q, 100, 32, &with_m(1000, true)).unwrap().m, 1000);
}

#[test]
fn causal_needs_equal_lengths() {
    let q = Dims::new(1, 2, 100, 32);
    assert_eq!(arg_of(plan(q, 101, 32, &causal()).unwrap_err()), "causal");
    assert!(
        plan(q, 101, 32, &CosformerParams::default()).is_ok(),
        "cross-attention is fine non-causal"
    );
    assert!(plan(q, 100, 48, &causal()).is_ok());
}

#[test]
fn shapes_that_disagree_name_the_tensor() {
    let c = Layout::contiguous;
    let p = CosformerParams::default();
    let q = Dims::new(2, 3, 50, 64);
    let k = Dims::new(2, 3, 70, 64);
    let v = Dims::new(2, 3, 70, 40);
    let o = Dims::new(2, 3, 50, 40);
    assert!(Plan::new(&c(q), &c(k), &c(v), &c(o), &p).is_ok());
    let bad_k = [
        Dims::new(2, 3, 70, 63),
        Dims::new(1, 3, 70, 64),
        Dims::new(2, 4, 70, 64),
    ];
    for k2 in bad_k {
        let e = Plan::new(&c(q), &c(k2), &c(v), &c(o), &p).unwrap_err();
        assert_eq!(arg_of(e), "k", "{k2}");
    }
    let bad_v = [Dims::new(2, 3, 69, 40), Dims::new(2, 2, 70, 40)];
    for v2 in bad_v {
        let e = Plan::new(&c(q), &c(k), &c(v2), &c(o), &p).unwrap_err();
        assert_eq!(arg_of(e), "v", "{v2}");
    }
    let bad_o = [Dims::new(2, 3, 70, 40), Dims::new(2, 3, 50, 64)];
    for o2 in bad_o {
        let e = Plan::new(&c(q), &c(k), &c(v), &c(o2), &p).unwrap_err();
        assert_eq!(arg_of(e), "o", "{o2}");
    }
}

#[test]
fn head_dims_and_empty_extents() {
    let p = CosformerParams::default();
    for bad in [
        Dims::new(1, 1, 10, 0),
        Dims::new(1, 1, 10, 257),
        Dims::new(1, 1, 0, 8),
        Dims::new(0, 1, 10, 8),
    ] {
        let e = plan(bad, 10, 8, &p).unwrap_err();
        assert!(matches!(e, Error::InvalidShape { .. }), "{bad}: {e}");
    }
    assert_eq!(
        arg_of(plan(Dims::new(1, 1, 10, 8), 0, 8, &p).unwrap_err()),
        "k"
    );
    assert_eq!(
        arg_of(plan(Dims::new(1, 1, 10, 8), 10, 257, &p).unwrap_err()),
        "v"
    );
    assert!(plan(Dims::new(1, 1, 3, 256), 5, 256, &p).is_ok());
    assert!(plan(Dims::new(1, 1, 3, 1), 5, 1, &p).is_ok());
}

#[test]
fn eps_must_be_a_positive_fp32() {
    let q = Dims::new(1, 1, 10, 8);
    for eps in [0.0, -1e-6, f64::NAN, f64::INFINITY, 1e-60] {
        let p = CosformerParams {
            eps,
            ..Default::default()
        };
        assert_eq!(
            arg_of(plan(q, 10, 8, &p).unwrap_err()),
            "eps",
            "eps = {eps}"
        );
    }
}

#[test]
fn causal_chunks_and_workspace() {
    let (b, h, d, dv) = (2, 3, 64, 48);
    let per = state_len(d, dv);
    assert_eq!(per, 2 * 64 * 48 + 2 * 64);
    for n in [1, 63, 64, 65, 1000, 4097] {
        let pl = plan(Dims::new(b, h, n, d), n, dv, &causal()).unwrap();
        assert_eq!(pl.rows_per_chunk, BLOCK);
        assert_eq!(pl.chunks, n.div_ceil(BLOCK));
        // Per chunk a state and a flag of the chained launch, then its ticket counter (short
        // plans too: the one-launch path keeps its 8 partials in the cluster).
        assert_eq!(pl.workspace_bytes(), b * h * pl.chunks * (per + 1) * 4 + 4);
        assert_eq!(
            workspace_bytes(Dims::new(b, h, n, d), n, dv, &causal()).unwrap(),
            pl.workspace_bytes()
        );
    }
    // D = Dv = 128: the chained launch runs two CTAs per chunk (one per half of the value
    // columns), each with its flag.
    let per = state_len(128, 128);
    let pl = plan(Dims::new(b, h, 5000, 128), 5000, 128, &causal()).unwrap();
    assert_eq!(pl.workspace_bytes(), b * h * pl.chunks * (per + 2) * 4 + 4);
    // Long sequences: the chunk count is capped, so chunks grow (in multiples of BLOCK).
    let n = 1 << 20;
    let pl = plan(Dims::new(1, 1, n, d), n, dv, &causal()).unwrap();
    assert!(pl.chunks <= CAUSAL_CTAS);
    assert_eq!(pl.rows_per_chunk % BLOCK, 0);
    assert!(pl.chunks * pl.rows_per_chunk >= n);
    // About CAUSAL_CTAS chunks over all slices and value tiles, whatever N: the workspace holds
    // max(CAUSAL_CTAS, B·H) states at most (8 × 32 heads of D = Dv = 128: 2 chunks each, 68 MB).
    for (b, h, d, n) in [
        (8, 32, 128, 1 << 16),
        (1, 16, 64, 1 << 20),
        (1, 2048, 64, 1 << 14),
    ] {
        let pl = plan(Dims::new(b, h, n, d), n, d, &causal()).unwrap();
        assert!(pl.chunks * pl.rows_per_chunk >= n && pl.rows_per_chunk % BLOCK == 0);
        let states = (b * h * pl.chunks) as f64;
        assert!(
            states <= (CAUSAL_CTAS.max(b * h)) as f64,
            "{b}×{h} heads: {states} states"
        );
        let flags = if d == 128 { 2 } else { 1 }; // per state: one per chained CTA
        assert_eq!(
            pl.workspace_bytes(),
            b * h * pl.chunks * (state_len(d, d) + flags) * 4 + 4
        );
    }
    // Larger chunks on request; a size that is not a multiple of BLOCK is refused.
    let pl = plan(Dims::new(1, 1, 1000, d), 1000, dv, &causal()).unwrap();
    let big = pl.with_rows_per_chunk(192).unwrap();
    assert_eq!((big.rows_per_chunk, big.chunks), (192, 6));
    assert!(big.workspace_bytes() < pl.workspace_bytes());
    assert_eq!(
        arg_of(pl.with_rows_per_chunk(100).unwrap_err()),
        "rows_per_chunk"
    );
    assert_eq!(
        arg_of(pl.with_rows_per_chunk(0).unwrap_err()),
        "rows_per_chunk"
    );
}

#[test]
fn non_causal_workspace_holds_partials_and_the_total() {
    let (d, dv) = (32, 80);
    let pl = plan(
        Dims::new(1, 4, 10, d),
        5000,
        dv,
        &CosformerParams::default(),
    )
    .unwrap();
    assert!(pl.chunks >= 1 && pl.chunks * pl.rows_per_chunk >= 5000);
    assert_eq!(
        pl.workspace_bytes(),
        4 * (pl.chunks + 1) * state_len(d, dv) * 4
    );
}

#[test]
fn decode_state_shape_checks() {
    let p = with_m(100, true);
    assert_eq!(
        arg_of(StateShape::new(1, 2, 8, 8, &CosformerParams::default()).unwrap_err()),
        "M",
        "decode needs a fixed M"
    );
    assert_eq!(arg_of(StateShape::new(1, 2, 0, 8, &p).unwrap_err()), "D");
    assert_eq!(arg_of(StateShape::new(1, 2, 8, 300, &p).unwrap_err()), "Dv");
    assert_eq!(arg_of(StateShape::new(0, 2, 8, 8, &p).unwrap_err()), "B");
    let st = StateShape::new(2, 3, 16, 24, &p).unwrap();
    assert_eq!(st.len(), 6 * state_len(16, 24));

    let c = Layout::contiguous;
    let lay = |b, h, n, d| c(Dims::new(b, h, n, d));
    // A prefill of 40 tokens after 50 seen fits M = 100; after 70 it does not.
    let (q, v) = (lay(2, 3, 40, 16), lay(2, 3, 40, 24));
    let pl = st.prefill_plan(50, &q, &q, &v, &v).unwrap();
    assert!(pl.causal && pl.m == 100);
    assert_eq!(
        arg_of(st.prefill_plan(70, &q, &q, &v, &v).unwrap_err()),
        "M"
    );
    // Tensors of the wrong shape for this state.
    let wrong_d = lay(2, 3, 40, 8);
    assert_eq!(
        arg_of(st.prefill_plan(0, &wrong_d, &wrong_d, &v, &v).unwrap_err()),
        "state"
    );
    let wrong_b = lay(1, 3, 40, 16);
    assert_eq!(
        arg_of(st.prefill_plan(0, &wrong_b, &q, &v, &v).unwrap_err()),
        "state"
    );
    let wrong_dv = lay(2, 3, 40, 23);
    assert_eq!(
        arg_of(
            st.prefill_plan(0, &q, &q, &wrong_dv, &wrong_dv)
                .unwrap_err()
        ),
        "state"
    );

    // Steps: one token per sequence, room left under M.
    let (q1, v1) = (lay(2, 3, 1, 16), lay(2, 3, 1, 24));
    assert!(st.check_step(99, &q1, &q1, &v1, &v1).is_ok());
    assert_eq!(
        arg_of(st.check_step(100, &q1, &q1, &v1, &v1).unwrap_err()),
        "M"
    );
    let q2 = lay(2, 3, 2, 16);
    assert_eq!(
        arg_of(st.check_step(0, &q2, &q2, &v1, &v1).unwrap_err()),
        "q"
    );
    let h4 = lay(2, 4, 1, 16);
    assert_eq!(
        arg_of(st.check_step(0, &h4, &h4, &v1, &v1).unwrap_err()),
        "state"
    );
}

#[test]
fn short_plans_need_no_partials_of_their_own() {
    let (d, dv) = (64, 64);
    let per = state_len(d, dv);
    // N = S = 300: fewer natural chunks than the one-launch path's 8. That path keeps its partials
    // in the cluster's shared memory, so the workspace is the separate launches' (which run when
    // the cluster launch is refused).
    let pl = plan(
        Dims::new(1, 2, 300, d),
        300,
        dv,
        &CosformerParams::default(),
    )
    .unwrap();
    assert!(pl.one_launch() && pl.chunks < 8);
    assert_eq!(pl.workspace_bytes(), 2 * (pl.chunks + 1) * per * 4);
    assert!(!pl.with_one_launch(false).one_launch());
    assert_eq!(
        pl.with_one_launch(false).workspace_bytes(),
        pl.workspace_bytes()
    );
    // Longer than 4096: never.
    let long = plan(
        Dims::new(1, 2, 5000, d),
        5000,
        dv,
        &CosformerParams::default(),
    )
    .unwrap();
    assert!(!long.one_launch() && !long.with_one_launch(true).one_launch());
    // Causal short plans too, unless the caller fixes the chunking.
    let c = plan(Dims::new(1, 2, 300, d), 300, dv, &causal()).unwrap();
    assert!(c.one_launch() && c.workspace_bytes() == 2 * c.chunks * (per + 1) * 4 + 4);
    let fixed = c.with_rows_per_chunk(128).unwrap();
    assert!(!fixed.one_launch() && !fixed.with_one_launch(true).one_launch());
    assert_eq!(fixed.workspace_bytes(), 2 * 3 * (per + 1) * 4 + 4);
    // The chained causal launch is the default and can be turned off; the workspace stays.
    assert!(c.chained() && !c.with_chained(false).chained());
    assert_eq!(c.with_chained(false).workspace_bytes(), c.workspace_bytes());
}

#[test]
fn slice_count_keeps_kernel_ints_in_range() {
    // Slice loops add gridDim (≤ B·H) to an int: at most 2^30 slices.
    let p = CosformerParams::default();
    let over = Dims::new(1 << 15, (1 << 15) + 1, 1, 1);
    assert_eq!(arg_of(plan(over, 1, 1, &p).unwrap_err()), "q");
    assert!(plan(Dims::new(1 << 15, 1 << 15, 1, 1), 1, 1, &p).is_ok());
    assert_eq!(
        arg_of(StateShape::new(1 << 15, (1 << 15) + 1, 8, 8, &with_m(64, true)).unwrap_err()),
        "B·H"
    );
}
