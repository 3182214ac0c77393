//! Input validation needs no GPU: every refusal is a typed error naming the argument.

use sofa::ops::sima::{workspace_bytes, Plan};
use sofa::{Dims, Error, Layout, LayoutKind, Strides};

fn plan(q: Dims, k: Dims, v: Dims, o: Dims) -> Result<Plan, Error> {
    let c = Layout::contiguous;
    Plan::new(&c(q), &c(k), &c(v), &c(o))
}

fn arg_of(e: Error) -> &'static str {
    e.argument().unwrap_or_else(|| panic!("untyped error: {e}"))
}

#[test]
fn mismatched_shapes_name_the_tensor() {
    let q = Dims::new(2, 4, 100, 64);
    assert_eq!(
        arg_of(plan(q, Dims::new(2, 4, 99, 64), q, q).unwrap_err()),
        "k"
    );
    assert_eq!(
        arg_of(plan(q, q, Dims::new(2, 3, 100, 64), q).unwrap_err()),
        "v"
    );
    assert_eq!(
        arg_of(plan(q, q, q, Dims::new(2, 4, 100, 32)).unwrap_err()),
        "o"
    );
    assert!(
        plan(q, q, q.with_d(32), q.with_d(32)).is_ok(),
        "Dv != D is allowed"
    );
}

#[test]
fn head_dim_and_length_limits() {
    for bad in [
        Dims::new(1, 1, 10, 0),
        Dims::new(1, 1, 10, 257),
        Dims::new(1, 1, 0, 64),
        Dims::new(0, 1, 10, 64),
    ] {
        let e = plan(bad, bad, bad, bad).unwrap_err();
        assert!(
            matches!(e, Error::InvalidShape { arg: "q", .. }),
            "{bad}: {e}"
        );
    }
    let ok = Dims::new(1, 1, 1, 256);
    assert!(plan(ok, ok, ok, ok).is_ok());
}

#[test]
fn stride_out_of_bounds_is_a_buffer_error() {
    let dims = Dims::new(1, 2, 10, 8);
    let l = Layout {
        dims,
        strides: Strides {
            batch: 160,
            head: 80,
            seq: 9,
        },
    };
    let len = Layout::contiguous(dims).span().unwrap();
    match l.validate("q", len, 256) {
        Err(Error::BufferTooSmall {
            arg: "q",
            needed,
            len: have,
        }) => assert!(needed > have),
        other => panic!("expected BufferTooSmall, got {other:?}"),
    }
}

#[test]
fn overflowing_strides_are_refused() {
    let dims = Dims::new(2, 2, 10, 8);
    let l = Layout {
        dims,
        strides: Strides {
            batch: usize::MAX / 2,
            head: 80,
            seq: 8,
        },
    };
    assert!(matches!(
        l.validate("v", usize::MAX, 256),
        Err(Error::InvalidShape { arg: "v", .. })
    ));
}

#[test]
fn engine_layout_is_strides_only() {
    let dims = Dims::new(2, 3, 5, 4);
    let l = Layout::of_kind(dims, LayoutKind::Bnhd);
    assert_eq!(
        l.strides,
        Strides {
            batch: 60,
            head: 4,
            seq: 12
        }
    );
    assert_eq!(l.span(), Some(120));
    assert!(l.is_non_overlapping());
    assert_eq!(l.offset(1, 2, 3), 60 + 8 + 36);
}

#[test]
fn overlapping_output_strides_are_detected() {
    let dims = Dims::new(1, 2, 10, 8);
    let l = Layout {
        dims,
        strides: Strides {
            batch: 160,
            head: 8,
            seq: 8,
        },
    };
    assert!(!l.is_non_overlapping());
}

#[test]
fn workspace_is_independent_of_n_beyond_chunking() {
    let small = workspace_bytes(Dims::new(1, 16, 65536, 64), 64).unwrap();
    let large = workspace_bytes(Dims::new(1, 16, 1 << 20, 64), 64).unwrap();
    assert_eq!(
        small, large,
        "chunk count is capped, so workspace stops growing with N"
    );
    assert!(workspace_bytes(Dims::new(1, 1, 0, 64), 64).is_err());
}

#[test]
fn parse_shapes_and_dtypes() {
    let d: Dims = "1,16,64k,64".parse().unwrap();
    assert_eq!(d, Dims::new(1, 16, 65536, 64));
    assert!("1,16,64".parse::<Dims>().is_err());
    assert!(matches!(
        "f8".parse::<sofa::DType>(),
        Err(Error::InvalidParam { arg: "dtype", .. })
    ));
}

#[test]
fn slice_count_and_length_keep_kernel_ints_in_range() {
    // B·H ≤ 2^30: slice loops add gridDim (≤ B·H) to an int. N ≤ 2^30 − 1: a chunk's end
    // (start + rows per chunk) and the 32-row steps stay below 2^31.
    let at = Dims::new(1 << 15, 1 << 15, 1, 1);
    assert!(plan(at, at, at, at).is_ok());
    let over = Dims::new(1 << 15, (1 << 15) + 1, 1, 1);
    assert!(matches!(
        plan(over, over, over, over).unwrap_err(),
        Error::InvalidShape { arg: "q", .. }
    ));
    let long = Dims::new(1, 1, 1 << 30, 1);
    assert!(matches!(
        plan(long, long, long, long).unwrap_err(),
        Error::InvalidShape { arg: "q", .. }
    ));
    let ok = Dims::new(1, 1, (1 << 30) - 1, 1);
    assert!(plan(ok, ok, ok, ok).is_ok());
}
