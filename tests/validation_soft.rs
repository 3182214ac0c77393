//! SOFT input validation needs no GPU: every refusal is a typed error naming the argument.

use sofa::ops::soft::{
    newton_fits_on_chip, newton_smem_bytes, workspace_bytes, Landmarks, NewtonPath, NewtonPlan,
    Plan, SoftParams, MAX_CHUNKS, MAX_M, NEWTON_CLUSTER_MAX_M, NEWTON_CLUSTER_MIN_M,
    NEWTON_SMEM_MAX_M,
};
use sofa::{Dims, Error, Layout};

/// Shared memory per block opt-in of an H100.
const H100_SMEM: usize = 227 * 1024;

fn arg_of(e: Error) -> &'static str {
    e.argument().unwrap_or_else(|| panic!("untyped error: {e}"))
}

fn with(landmarks: Landmarks) -> SoftParams {
    SoftParams {
        landmarks,
        ..Default::default()
    }
}

/// Plan for contiguous q [B,H,N,D], v and o [B,H,N,Dv] (tied keys).
fn plan(q: Dims, dv: usize, p: &SoftParams) -> Result<Plan, Error> {
    let c = Layout::contiguous;
    let k = (!p.tied).then(|| c(q));
    Plan::new(
        &c(q),
        k.as_ref(),
        &c(q.with_d(dv)),
        &c(q.with_d(dv)),
        p,
        H100_SMEM,
    )
}

#[test]
fn landmark_counts_out_of_range() {
    let q = Dims::new(1, 2, 100, 32);
    let pool = |m| with(Landmarks::AvgPool1d { m });
    assert_eq!(arg_of(plan(q, 32, &pool(101)).unwrap_err()), "m");
    assert_eq!(arg_of(plan(q, 32, &pool(0)).unwrap_err()), "m");
    assert_eq!(plan(q, 32, &pool(100)).unwrap().m, 100);
    assert_eq!(plan(q, 32, &pool(1)).unwrap().m, 1);
    let long = Dims::new(1, 1, 1000, 32);
    assert_eq!(arg_of(plan(long, 32, &pool(MAX_M + 1)).unwrap_err()), "m");
    assert_eq!(plan(long, 32, &pool(MAX_M)).unwrap().m, MAX_M);
    assert_eq!(
        arg_of(plan(q, 32, &with(Landmarks::Given { m: 0 })).unwrap_err()),
        "m"
    );
    assert_eq!(
        arg_of(plan(long, 32, &with(Landmarks::Given { m: 300 })).unwrap_err()),
        "m"
    );
}

#[test]
fn newton_parameters_out_of_range() {
    let q = Dims::new(1, 2, 100, 32);
    let bad = [
        (
            SoftParams {
                newton_iters: 0,
                ..Default::default()
            },
            "newton_iters",
        ),
        (
            SoftParams {
                ridge: -0.01,
                ..Default::default()
            },
            "ridge",
        ),
        (
            SoftParams {
                ridge: f64::NAN,
                ..Default::default()
            },
            "ridge",
        ),
        (
            SoftParams {
                ridge: 1e300,
                ..Default::default()
            },
            "ridge",
        ),
        (
            SoftParams {
                alpha_scale: 0.0,
                ..Default::default()
            },
            "alpha_scale",
        ),
        (
            SoftParams {
                alpha_scale: f64::INFINITY,
                ..Default::default()
            },
            "alpha_scale",
        ),
    ];
    for (p, arg) in bad {
        assert_eq!(arg_of(plan(q, 32, &p).unwrap_err()), arg, "{p:?}");
        assert_eq!(
            arg_of(NewtonPlan::new(4, 16, &p, NewtonPath::Auto, H100_SMEM).unwrap_err()),
            arg,
            "{p:?}"
        );
    }
    let zero_ridge = SoftParams {
        ridge: 0.0,
        ..Default::default()
    };
    assert!(plan(q, 32, &zero_ridge).is_ok());
}

#[test]
fn avgpool2d_grid_and_window() {
    let q = Dims::new(1, 1, 12 * 10, 16);
    let grid = |height, width, r| with(Landmarks::AvgPool2d { height, width, r });
    assert_eq!(plan(q, 16, &grid(12, 10, 3)).unwrap().m, 4 * 3);
    assert_eq!(plan(q, 16, &grid(12, 10, 10)).unwrap().m, 1);
    assert_eq!(arg_of(plan(q, 16, &grid(12, 11, 3)).unwrap_err()), "height");
    assert_eq!(arg_of(plan(q, 16, &grid(10, 10, 3)).unwrap_err()), "height");
    assert_eq!(arg_of(plan(q, 16, &grid(12, 10, 0)).unwrap_err()), "r");
    assert_eq!(arg_of(plan(q, 16, &grid(12, 10, 11)).unwrap_err()), "r");
    // 2×2 windows of a 40×40 grid: 400 landmarks, more than the kernels take.
    let big = Dims::new(1, 1, 1600, 16);
    assert_eq!(arg_of(plan(big, 16, &grid(40, 40, 2)).unwrap_err()), "m");
}

#[test]
fn shapes_that_disagree_name_the_tensor() {
    let c = Layout::contiguous;
    let tied = SoftParams::default();
    let untied = SoftParams {
        tied: false,
        ..Default::default()
    };
    let q = Dims::new(2, 3, 100, 64);
    let v = q.with_d(40);
    assert!(Plan::new(&c(q), None, &c(v), &c(v), &tied, H100_SMEM).is_ok());
    assert!(Plan::new(&c(q), Some(&c(q)), &c(v), &c(v), &untied, H100_SMEM).is_ok());
    let e = Plan::new(&c(q), Some(&c(q)), &c(v), &c(v), &tied, H100_SMEM).unwrap_err();
    assert_eq!(arg_of(e), "k");
    let e = Plan::new(&c(q), None, &c(v), &c(v), &untied, H100_SMEM).unwrap_err();
    assert_eq!(arg_of(e), "k");
    for k2 in [
        Dims::new(2, 3, 100, 63),
        Dims::new(2, 3, 99, 64),
        Dims::new(1, 3, 100, 64),
    ] {
        let e = Plan::new(&c(q), Some(&c(k2)), &c(v), &c(v), &untied, H100_SMEM).unwrap_err();
        assert_eq!(arg_of(e), "k", "{k2}");
    }
    for v2 in [Dims::new(2, 3, 99, 40), Dims::new(2, 2, 100, 40)] {
        let e = Plan::new(&c(q), None, &c(v2), &c(v), &tied, H100_SMEM).unwrap_err();
        assert_eq!(arg_of(e), "v", "{v2}");
    }
    for o2 in [Dims::new(2, 3, 100, 41), Dims::new(2, 3, 101, 40)] {
        let e = Plan::new(&c(q), None, &c(v), &c(o2), &tied, H100_SMEM).unwrap_err();
        assert_eq!(arg_of(e), "o", "{o2}");
    }
    for bad in [
        Dims::new(1, 1, 100, 0),
        Dims::new(1, 1, 100, 257),
        Dims::new(0, 1, 100, 8),
    ] {
        let e = plan(bad, 8, &tied).unwrap_err();
        assert!(matches!(e, Error::InvalidShape { .. }), "{bad}: {e}");
    }
    assert_eq!(
        arg_of(plan(Dims::new(1, 1, 100, 8), 257, &tied).unwrap_err()),
        "v"
    );
    assert!(plan(Dims::new(1, 1, 100, 256), 256, &tied).is_ok());
}

#[test]
fn newton_paths() {
    let p = SoftParams::default();
    let one = |m, smem| {
        NewtonPlan::new(3, m, &p, NewtonPath::Auto, smem)
            .unwrap()
            .path
    };
    assert_eq!(one(1, H100_SMEM), NewtonPath::OneLaunch);
    assert_eq!(one(NEWTON_SMEM_MAX_M, H100_SMEM), NewtonPath::OneLaunch);
    assert_eq!(
        one(NEWTON_SMEM_MAX_M + 1, H100_SMEM),
        NewtonPath::MultiLaunch
    );
    assert_eq!(one(MAX_M, H100_SMEM), NewtonPath::MultiLaunch);
    // A device with 100 KiB per block holds three 90×91 matrices, not three 128×129.
    assert_eq!(one(90, 100 * 1024), NewtonPath::OneLaunch);
    assert_eq!(one(128, 100 * 1024), NewtonPath::MultiLaunch);
    assert!(newton_smem_bytes(128) <= H100_SMEM);
    assert!(newton_fits_on_chip(128, H100_SMEM));
    assert!(!newton_fits_on_chip(129, H100_SMEM));
    let forced = NewtonPlan::new(3, 200, &p, NewtonPath::OneLaunch, H100_SMEM).unwrap_err();
    assert_eq!(arg_of(forced), "path");
    let multi = NewtonPlan::new(3, 64, &p, NewtonPath::MultiLaunch, H100_SMEM).unwrap();
    assert_eq!(multi.path, NewtonPath::MultiLaunch);
    assert_eq!(multi.workspace_bytes(), 3 * 3 * 64 * 64 * 4);
    let single = NewtonPlan::new(3, 64, &p, NewtonPath::OneLaunch, H100_SMEM).unwrap();
    assert_eq!(single.workspace_bytes(), 0);
    let cta = NewtonPlan::new(3, 64, &p, NewtonPath::OneLaunchCta, H100_SMEM).unwrap();
    assert_eq!(
        (cta.path, cta.workspace_bytes()),
        (NewtonPath::OneLaunchCta, 0)
    );
    let forced = NewtonPlan::new(3, 200, &p, NewtonPath::OneLaunchCta, H100_SMEM).unwrap_err();
    assert_eq!(arg_of(forced), "path");
    // The cluster-only paths name the cluster kernel's m range instead of falling back.
    for path in [
        NewtonPath::ClusterEarlyArrive,
        NewtonPath::ClusterLateArrive,
        NewtonPath::ClusterAsync,
    ] {
        let (lo, hi) = (NEWTON_CLUSTER_MIN_M, NEWTON_CLUSTER_MAX_M);
        for m in [lo, 49, hi] {
            assert_eq!(
                NewtonPlan::new(3, m, &p, path, H100_SMEM).unwrap().path,
                path
            );
        }
        for m in [1, lo - 1, hi + 1, 128] {
            let e = NewtonPlan::new(3, m, &p, path, H100_SMEM).unwrap_err();
            assert!(e.to_string().contains("cluster kernels take"), "{e}");
            assert_eq!(arg_of(e), "path");
        }
    }
    for (batch, m) in [(0, 8), (1, 0), (1, MAX_M + 1)] {
        let e = NewtonPlan::new(batch, m, &p, NewtonPath::Auto, H100_SMEM).unwrap_err();
        assert_eq!(arg_of(e), if batch == 0 { "batch" } else { "m" });
    }
}

#[test]
fn workspace_does_not_grow_with_n_beyond_the_chunk_cap() {
    let p = SoftParams::default();
    let at = |n| workspace_bytes(Dims::new(1, 2, n, 64), 64, &p).unwrap();
    let long = at(1 << 20);
    assert_eq!(long, at(1 << 24), "N = 1M and 16M need the same scratch");
    assert!(long < 64 << 20, "{long} bytes");
    for n in [64, 1000, 4097, 1 << 20] {
        let pl = plan(Dims::new(1, 2, n, 64), 64, &p).unwrap();
        assert!(pl.chunks <= MAX_CHUNKS && pl.chunks >= 1);
        assert_eq!(pl.rows_per_chunk % 64, 0);
        assert!(pl.chunks * pl.rows_per_chunk >= n);
        assert!((pl.chunks - 1) * pl.rows_per_chunk < n);
    }
}

#[test]
fn newton_smem_bytes_saturates_for_huge_m() {
    // 3·m·(m|1)·4 overflowed for m ≥ 2^31 (a panic with overflow checks, as the fuzz build has).
    assert_eq!(newton_smem_bytes(64), 3 * 64 * 65 * 4);
    assert_eq!(newton_smem_bytes(1 << 32), usize::MAX);
    assert_eq!(newton_smem_bytes(usize::MAX), usize::MAX);
    assert!(!newton_fits_on_chip(usize::MAX, usize::MAX));
}

#[test]
fn slice_count_keeps_kernel_ints_in_range() {
    // Slice loops add gridDim (≤ B·H, or the Newton batch) to an int: at most 2^30 slices.
    let p = SoftParams::default();
    let over = Dims::new(1 << 15, (1 << 15) + 1, 64, 1);
    assert_eq!(arg_of(plan(over, 1, &p).unwrap_err()), "q");
    assert!(plan(Dims::new(1 << 15, 1 << 15, 64, 1), 1, &p).is_ok());
    let newton = |batch| NewtonPlan::new(batch, 2, &p, NewtonPath::Auto, H100_SMEM);
    assert!(newton(1 << 30).is_ok());
    assert_eq!(arg_of(newton((1 << 30) + 1).unwrap_err()), "batch");
}
