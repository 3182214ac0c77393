//! cosFormer on the GPU vs the f64 reference: non-causal (cross-attention N ≠ S) and causal over
//! odd lengths and head dims, every dtype, both layouts, M > max(N, S), ReLU-dead rows (the
//! denominator clamp), prefill + decode equivalence, poisoned outputs, determinism, fatbin vs
//! NVRTC, typed errors. Skips (with a SKIP line) without a device.

mod common;

use cudarc::driver::sys::{CUgraphInstantiate_flags, CUstreamCaptureMode};
use cudarc::driver::{CudaSlice, CudaStream};
use half::{bf16, f16};
use sofa::ops::cosformer::{self, CosformerParams, Plan, State};
use sofa::ops::{TensorMut, TensorRef};
use sofa::reference::{self, gather, Qkv, Rng};
use sofa::verify::compare;
use sofa::{Dims, Element, Error, Layout, LayoutKind, LoadPath, LoadPolicy, Runtime};
use std::sync::Arc;

const LENS: [usize; 7] = [1, 2, 63, 64, 65, 1000, 4097];
const DS: [usize; 5] = [1, 32, 64, 128, 80];

/// A value head dim different from `d`.
fn dv_for(d: usize) -> usize {
    match d {
        1 => 3,
        32 => 48,
        64 => 32,
        128 => 96,
        _ => 64,
    }
}

#[derive(Clone, Copy, Debug)]
struct Case {
    b: usize,
    h: usize,
    n: usize,
    s: usize,
    d: usize,
    dv: usize,
    kind: LayoutKind,
    params: CosformerParams,
    /// Make some q rows and some k rows entirely negative (all-zero ReLU features), including the
    /// first five keys (causal rows 1..5 then have a zero denominator: the clamp).
    dead_rows: bool,
    /// Causal chunk length override (a multiple of 64).
    rows_per_chunk: Option<usize>,
    /// Short non-causal plans: allow the one-launch path (sm_90 tensor cores; the default).
    one_launch: bool,
    /// Causal D = 64 tensor-core plans: allow the chained launch (the default).
    chained: bool,
}

impl Case {
    fn new(n: usize, s: usize, d: usize, dv: usize, kind: LayoutKind, causal: bool) -> Self {
        let (b, h) = if n.max(s) >= 4097 { (1, 2) } else { (2, 2) };
        Case {
            b,
            h,
            n,
            s,
            d,
            dv,
            kind,
            params: CosformerParams {
                causal,
                ..Default::default()
            },
            dead_rows: false,
            rows_per_chunk: None,
            one_launch: true,
            chained: true,
        }
    }

    fn layouts(&self) -> [Layout; 4] {
        let l = |n, d| Layout::of_kind(Dims::new(self.b, self.h, n, d), self.kind);
        [
            l(self.n, self.d),
            l(self.s, self.d),
            l(self.s, self.dv),
            l(self.n, self.dv),
        ]
    }
}

/// Random storage for `layout`; non-negative when the features are given without ReLU.
fn fill<T: Element>(rng: &mut Rng, layout: &Layout, relu: bool) -> Vec<T> {
    if relu {
        common::random::<T>(rng, layout)
    } else {
        rng.fill(layout.span().unwrap(), 0.0, 1.0)
    }
}

/// Makes every element of row `row` of each (b,h) negative (its ReLU features are all zero).
fn kill_row<T: Element>(data: &mut [T], l: &Layout, row: usize) {
    for b in 0..l.dims.b {
        for h in 0..l.dims.h {
            let off = l.offset(b, h, row);
            for x in &mut data[off..off + l.dims.d] {
                *x = T::from_f64(-x.to_f64().abs() - 0.01);
            }
        }
    }
}

struct Host<T> {
    q: Vec<T>,
    k: Vec<T>,
    v: Vec<T>,
}

fn host_inputs<T: Element>(c: &Case, seed: u64) -> Host<T> {
    let [lq, lk, lv, _] = c.layouts();
    let mut rng = Rng::new(seed);
    let relu = c.params.relu;
    let mut x = Host {
        q: fill::<T>(&mut rng, &lq, relu),
        k: fill::<T>(&mut rng, &lk, relu),
        v: common::random::<T>(&mut rng, &lv),
    };
    if c.dead_rows {
        for i in (0..c.n).filter(|i| i % 3 == 1) {
            kill_row(&mut x.q, &lq, i);
        }
        for j in (0..c.s).filter(|j| j % 4 == 2 || *j < 5) {
            kill_row(&mut x.k, &lk, j);
        }
    }
    x
}

/// The f64 reference on contiguous copies of the inputs.
fn reference_of<T: Element>(c: &Case, x: &Host<T>) -> Vec<f64> {
    let [lq, lk, lv, _] = c.layouts();
    let (q, k, v) = (gather(&x.q, &lq), gather(&x.k, &lk), gather(&x.v, &lv));
    let dims = Dims::new(c.b, c.h, c.n, c.d);
    let qkv = Qkv::new(&q, &k, &v, dims, c.s, c.dv).unwrap();
    reference::cosformer::forward(&qkv, &c.params).unwrap()
}

/// The plan `c` asks for.
fn plan_of(c: &Case) -> Plan {
    let [lq, lk, lv, lo] = c.layouts();
    let mut plan = Plan::new(&lq, &lk, &lv, &lo, &c.params).unwrap();
    if let Some(rows) = c.rows_per_chunk {
        plan = plan.with_rows_per_chunk(rows).unwrap();
    }
    plan.with_one_launch(c.one_launch).with_chained(c.chained)
}

/// The inputs on the device and a poisoned output.
struct Dev<T> {
    q: CudaSlice<T>,
    k: CudaSlice<T>,
    v: CudaSlice<T>,
    o: CudaSlice<T>,
}

fn upload<T: Element>(stream: &Arc<CudaStream>, c: &Case, x: &Host<T>) -> Dev<T> {
    let lo = c.layouts()[3];
    Dev {
        q: stream.clone_htod(&x.q).unwrap(),
        k: stream.clone_htod(&x.k).unwrap(),
        v: stream.clone_htod(&x.v).unwrap(),
        o: stream.clone_htod(&common::poisoned::<T>(&lo)).unwrap(),
    }
}

/// Queues `plan` on `d` (the call allocates the workspace when `ws` is `None`).
fn queue<T: Element>(
    rt: &Runtime,
    stream: &Arc<CudaStream>,
    plan: &Plan,
    c: &Case,
    d: &mut Dev<T>,
    ws: Option<&mut CudaSlice<u8>>,
) {
    let [lq, lk, lv, lo] = c.layouts();
    let t = |data, layout| TensorRef { data, layout };
    let o = TensorMut {
        data: &mut d.o,
        layout: lo,
    };
    cosformer::forward_with_plan(
        rt,
        stream,
        plan,
        t(&d.q, lq),
        t(&d.k, lk),
        t(&d.v, lv),
        o,
        ws,
    )
    .unwrap();
}

/// Runs cosFormer once on the GPU; returns its output as contiguous f64.
fn run_gpu<T: Element>(rt: &Runtime, c: &Case, x: &Host<T>) -> Vec<f64> {
    let stream = rt.new_stream().unwrap();
    let mut d = upload(&stream, c, x);
    queue(rt, &stream, &plan_of(c), c, &mut d, None);
    gather(&stream.clone_dtoh(&d.o).unwrap(), &c.layouts()[3])
}

fn check<T: Element>(rt: &Runtime, c: &Case, seed: u64) {
    let x = host_inputs::<T>(c, seed);
    let got = run_gpu::<T>(rt, c, &x);
    let want = reference_of(c, &x);
    let cmp = compare::<T>(&got, &want);
    println!("cosformer {} {c:?}: {cmp}", T::DTYPE);
    assert!(cmp.pass(), "{} {c:?}: {cmp}", T::DTYPE);
}

fn check_all_dtypes(rt: &Runtime, c: &Case, seed: u64) {
    check::<f32>(rt, c, seed);
    check::<f16>(rt, c, seed + 1);
    check::<bf16>(rt, c, seed + 2);
}

fn kind_of(i: usize) -> LayoutKind {
    if i % 2 == 0 {
        LayoutKind::Bhnd
    } else {
        LayoutKind::Bnhd
    }
}

#[test]
fn cosformer_non_causal_every_length_pair() {
    let Some(rt) = common::gpu("cosformer non-causal lengths") else {
        return;
    };
    let mut i = 0;
    for &n in &LENS {
        for &s in &LENS {
            let d = DS[i % DS.len()];
            let c = Case::new(n, s, d, dv_for(d), kind_of(i / DS.len()), false);
            check_all_dtypes(&rt, &c, 100 + 3 * i as u64);
            i += 1;
        }
    }
}

#[test]
fn cosformer_non_causal_head_dims() {
    let Some(rt) = common::gpu("cosformer non-causal head dims") else {
        return;
    };
    let mut seed = 1000;
    for (n, s) in [(65, 65), (1000, 999), (7, 4097)] {
        for &d in &DS {
            for kind in [LayoutKind::Bhnd, LayoutKind::Bnhd] {
                check_all_dtypes(&rt, &Case::new(n, s, d, dv_for(d), kind, false), seed);
                seed += 3;
            }
        }
    }
}

#[test]
fn cosformer_causal_every_length_and_head_dim() {
    let Some(rt) = common::gpu("cosformer causal") else {
        return;
    };
    let mut seed = 2000;
    for &n in &LENS {
        for &d in &DS {
            for kind in [LayoutKind::Bhnd, LayoutKind::Bnhd] {
                check_all_dtypes(&rt, &Case::new(n, n, d, dv_for(d), kind, true), seed);
                seed += 3;
            }
        }
    }
}

#[test]
fn cosformer_causal_longer_chunks() {
    // Chunks of several query blocks: the intra-chunk loop over earlier key blocks.
    let Some(rt) = common::gpu("cosformer causal chunks") else {
        return;
    };
    let mut seed = 3000;
    for (n, rows) in [(65, 128), (1000, 128), (1000, 192), (4097, 512), (64, 64)] {
        for kind in [LayoutKind::Bhnd, LayoutKind::Bnhd] {
            let mut c = Case::new(n, n, 64, 80, kind, true);
            c.rows_per_chunk = Some(rows);
            check_all_dtypes(&rt, &c, seed);
            seed += 3;
        }
    }
}

#[test]
fn cosformer_angle_denominator_above_the_length() {
    let Some(rt) = common::gpu("cosformer M") else {
        return;
    };
    let mut seed = 4000;
    for (n, s, causal) in [
        (1000, 1000, true),
        (65, 65, true),
        (1000, 63, false),
        (63, 1000, false),
    ] {
        for m in [n.max(s) + 1, 3 * n.max(s) + 7] {
            let mut c = Case::new(n, s, 32, 48, LayoutKind::Bnhd, causal);
            c.params.m = Some(m);
            check_all_dtypes(&rt, &c, seed);
            seed += 3;
        }
    }
}

#[test]
fn cosformer_dead_relu_rows_hit_the_denominator_clamp() {
    let Some(rt) = common::gpu("cosformer dead rows") else {
        return;
    };
    let mut seed = 5000;
    for (n, s, causal) in [
        (65, 65, true),
        (1000, 1000, true),
        (1, 1, true),
        (100, 37, false),
        (6, 6, false),
    ] {
        for kind in [LayoutKind::Bhnd, LayoutKind::Bnhd] {
            let mut c = Case::new(n, s, 32, 16, kind, causal);
            c.dead_rows = true;
            check_all_dtypes(&rt, &c, seed);
            seed += 3;
        }
    }
    // Every key dead: every output is 0 / ε = 0.
    let mut c = Case::new(10, 10, 8, 8, LayoutKind::Bhnd, false);
    c.dead_rows = true;
    let mut x = host_inputs::<f32>(&c, 7);
    let [_, lk, _, _] = c.layouts();
    for j in 0..c.s {
        kill_row(&mut x.k, &lk, j);
    }
    let got = run_gpu::<f32>(&rt, &c, &x);
    assert!(got.iter().all(|&y| y == 0.0), "all-dead keys must give 0");
}

#[test]
fn cosformer_features_without_relu() {
    let Some(rt) = common::gpu("cosformer relu off") else {
        return;
    };
    let mut seed = 6000;
    for causal in [false, true] {
        for (n, d) in [(1000, 64), (65, 1)] {
            let mut c = Case::new(n, n, d, dv_for(d), LayoutKind::Bhnd, causal);
            c.params.relu = false;
            check_all_dtypes(&rt, &c, seed);
            seed += 3;
        }
    }
}

#[test]
fn cosformer_largest_and_odd_head_dims() {
    let Some(rt) = common::gpu("cosformer large heads") else {
        return;
    };
    let mut seed = 7000;
    for (n, d, dv) in [(300, 256, 256), (129, 200, 17), (70, 17, 200), (5, 256, 1)] {
        for causal in [false, true] {
            check_all_dtypes(&rt, &Case::new(n, n, d, dv, LayoutKind::Bnhd, causal), seed);
            seed += 3;
        }
    }
}

#[test]
fn cosformer_many_heads_grid_stride() {
    // B·H beyond the 65535 grid limit of the y dim: the kernels loop over (b,h).
    let Some(rt) = common::gpu("cosformer grid stride") else {
        return;
    };
    for causal in [false, true] {
        let mut c = Case::new(3, 3, 8, 8, LayoutKind::Bhnd, causal);
        (c.b, c.h) = (70000, 1);
        check::<f16>(&rt, &c, 8);
    }
}

/// f16/bf16 with D == Dv ∈ {32, 48, 64, 128} and 16-byte-aligned rows take the tensor-core kernels
/// (causal: D ∈ {32, 64, 128}; D = 128 on sm_90 only); the cases above mostly have Dv ≠ D and
/// stay on CUDA cores.
#[test]
fn cosformer_tensor_core_non_causal() {
    let Some(rt) = common::gpu("cosformer tensor cores, non-causal") else {
        return;
    };
    let mut seed = 9000;
    // D = 128 takes tensor cores on sm_90 (the simulator reports one), CUDA cores on sm_80.
    for &d in &[32, 48, 64, 80, 96, 128] {
        for (n, s) in [(1, 1), (63, 65), (1000, 999), (7, 4097), (4097, 64)] {
            for kind in [LayoutKind::Bhnd, LayoutKind::Bnhd] {
                let c = Case::new(n, s, d, d, kind, false);
                check::<f16>(&rt, &c, seed);
                check::<bf16>(&rt, &c, seed + 1);
                seed += 2;
            }
        }
    }
}

/// Short sequences (N, S ≤ 4096) run as one clustered launch on sm_90; the same shapes through
/// the separate launches (reduce → finalize → map, or reduce → scan → causal) must agree with the
/// reference too.
#[test]
fn cosformer_tensor_core_short_one_and_three_launches() {
    let Some(rt) = common::gpu("cosformer tensor cores, short sequences") else {
        return;
    };
    let non_causal = [32, 48, 64].into_iter().flat_map(|d| {
        [(1, 1), (1, 300), (1100, 40), (1024, 1024), (4096, 4096)].map(|(n, s)| (d, n, s, false))
    });
    // Causal: D = 64 (the one-launch causal kernel); N = 100 leaves 6 of its 8 chunks empty.
    let causal = [1, 100, 1000, 4096].map(|n| (64, n, n, true));
    for (seed, (d, n, s, is_causal)) in (9500..).zip(non_causal.chain(causal)) {
        let c = Case::new(n, s, d, d, LayoutKind::Bnhd, is_causal);
        check_one_and_separate::<f16>(&rt, c, 2 * seed);
        check_one_and_separate::<bf16>(&rt, c, 2 * seed + 1);
    }
}

/// `c` through the one-launch path and through the separate launches (outputs poisoned before
/// each run), both against the f64 reference.
fn check_one_and_separate<T: Element>(rt: &Runtime, mut c: Case, seed: u64) {
    let x = host_inputs::<T>(&c, seed);
    c.one_launch = true;
    let one = run_gpu::<T>(rt, &c, &x);
    c.one_launch = false;
    let separate = run_gpu::<T>(rt, &c, &x);
    let want = reference_of(&c, &x);
    for (what, got) in [("one launch", &one), ("separate launches", &separate)] {
        let cmp = compare::<T>(got, &want);
        println!("cosformer short {} {what} {c:?}: {cmp}", T::DTYPE);
        assert!(cmp.pass(), "{} {what} {c:?}: {cmp}", T::DTYPE);
    }
}

#[test]
fn cosformer_tensor_core_causal() {
    let Some(rt) = common::gpu("cosformer tensor cores, causal") else {
        return;
    };
    let mut seed = 9500;
    // D = 128 (sm_90, as the simulator reports): two CTAs per chunk, one per half of the value
    // columns.
    for &d in &[32, 64, 128] {
        for &n in &LENS {
            for kind in [LayoutKind::Bhnd, LayoutKind::Bnhd] {
                let c = Case::new(n, n, d, d, kind, true);
                check::<f16>(&rt, &c, seed);
                check::<bf16>(&rt, &c, seed + 1);
                seed += 2;
            }
        }
        // Several 64-row blocks per chunk: the state carried across blocks inside one CTA.
        for (n, rows) in [(65, 128), (1000, 256), (4097, 512)] {
            let mut c = Case::new(n, n, d, d, LayoutKind::Bnhd, true);
            c.rows_per_chunk = Some(rows);
            check::<f16>(&rt, &c, seed);
            check::<bf16>(&rt, &c, seed + 1);
            seed += 2;
        }
    }
    // One (b,h) long enough that the default plan already gives multi-block chunks.
    let mut c = Case::new(40000, 40000, 64, 64, LayoutKind::Bhnd, true);
    (c.b, c.h) = (1, 1);
    check::<f16>(&rt, &c, seed);
}

/// The chained causal launch (each CTA reduces its chunk, links the chained scan and writes the
/// chunk's outputs; D = 128: two CTAs per chunk, one per half of the value columns) against the
/// separate reduce → scan → causal launches: the same adds in the same order, so bit-identical
/// outputs; both against the reference. Several slices interleave their chains, chunks of one
/// and of several 64-row blocks, a ragged last chunk. (Default plans chain only long chunks of
/// many slices: the prefill test below runs one.)
#[test]
fn cosformer_tensor_core_causal_chained_equals_separate() {
    let Some(rt) = common::gpu("cosformer tensor cores, chained causal launch") else {
        return;
    };
    let cases = [
        (65, Some(64), (2, 2)),
        (1000, Some(64), (3, 5)),
        (1000, Some(192), (2, 2)),
        (4097, None, (1, 2)),
        (5000, Some(128), (1, 1)),
        (5000, Some(1024), (2, 8)),
    ];
    for (i, (n, rows, (b, h))) in cases.into_iter().enumerate() {
        let mut c = Case::new(n, n, 64, 64, kind_of(i), true);
        (c.b, c.h, c.rows_per_chunk, c.one_launch) = (b, h, rows, false);
        chained_equals_separate::<f16>(&rt, c, 9900 + 2 * i as u64);
        chained_equals_separate::<bf16>(&rt, c, 9901 + 2 * i as u64);
    }
    // D = 128 (sm_90, as the simulator reports).
    let cases = [(65, 64, (2, 2)), (1000, 192, (1, 3)), (3000, 1024, (2, 2))];
    for (i, (n, rows, (b, h))) in cases.into_iter().enumerate() {
        let mut c = Case::new(n, n, 128, 128, kind_of(i), true);
        (c.b, c.h, c.rows_per_chunk, c.one_launch) = (b, h, Some(rows), false);
        chained_equals_separate::<f16>(&rt, c, 9950 + 2 * i as u64);
        chained_equals_separate::<bf16>(&rt, c, 9951 + 2 * i as u64);
    }
}

fn chained_equals_separate<T: Element>(rt: &Runtime, mut c: Case, seed: u64) {
    let x = host_inputs::<T>(&c, seed);
    c.chained = true;
    let chained = run_gpu::<T>(rt, &c, &x);
    c.chained = false;
    let separate = run_gpu::<T>(rt, &c, &x);
    let cmp = compare::<T>(&chained, &reference_of(&c, &x));
    println!("cosformer chained {} {c:?}: {cmp}", T::DTYPE);
    assert!(cmp.pass(), "{} chained {c:?}: {cmp}", T::DTYPE);
    let same = chained
        .iter()
        .zip(&separate)
        .all(|(a, b)| a.to_bits() == b.to_bits());
    assert!(
        same,
        "{} {c:?}: chained and separate launches differ",
        T::DTYPE
    );
}

/// The chained launch captured into a CUDA graph: the captured memset zeroes its flags and
/// ticket counter on every replay, so each replay equals the eager run bit for bit.
#[test]
fn cosformer_chained_graph_replays_equal_eager() {
    let Some(rt) = common::gpu("cosformer chained launch in a CUDA graph") else {
        return;
    };
    // With event tracking on and two streams in the context, cudarc makes each pointer taken
    // wait on its buffer's last write; inside the capture, a wait on a write made before it is
    // refused (CUDA_ERROR_STREAM_CAPTURE_ISOLATION, seen on the H100 at 7900c6c). Off, as in
    // `sofa bench --graph`: each stream below is synchronized before another reads its buffers.
    // SAFETY: see above; this runtime's context wrapper is this test's alone.
    unsafe { rt.context().disable_event_tracking() };
    let mut c = Case::new(1000, 1000, 64, 64, LayoutKind::Bhnd, true);
    (c.b, c.h, c.rows_per_chunk, c.one_launch) = (2, 3, Some(128), false);
    let x = host_inputs::<f16>(&c, 77);
    let eager = run_gpu::<f16>(&rt, &c, &x);
    let plan = plan_of(&c);
    assert!(plan.chained());
    let stream = rt.new_stream().unwrap();
    let mut d = upload(&stream, &c, &x);
    let mut ws = stream.alloc_zeros::<u8>(plan.workspace_bytes()).unwrap();
    stream.synchronize().unwrap();
    stream
        .begin_capture(CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_THREAD_LOCAL)
        .unwrap();
    queue(&rt, &stream, &plan, &c, &mut d, Some(&mut ws));
    let graph = stream
        .end_capture(CUgraphInstantiate_flags(0))
        .unwrap()
        .expect("a captured graph");
    for replay in 0..3 {
        graph.launch().unwrap();
        let got = gather(&stream.clone_dtoh(&d.o).unwrap(), &c.layouts()[3]);
        let same = got
            .iter()
            .zip(&eager)
            .all(|(a, b)| a.to_bits() == b.to_bits());
        assert!(same, "replay {replay} differs from the eager run");
    }
}

#[test]
fn cosformer_tensor_core_relu_off_dead_rows_and_grid_stride() {
    let Some(rt) = common::gpu("cosformer tensor cores, edge cases") else {
        return;
    };
    let mut seed = 9800;
    for causal in [false, true] {
        let mut c = Case::new(1000, 1000, 64, 64, LayoutKind::Bhnd, causal);
        c.params.relu = false;
        check::<f16>(&rt, &c, seed);
        check::<bf16>(&rt, &c, seed + 1);
        let mut c = Case::new(300, 300, 32, 32, LayoutKind::Bnhd, causal);
        c.dead_rows = true;
        check::<f16>(&rt, &c, seed + 2);
        check::<bf16>(&rt, &c, seed + 3);
        let mut c = Case::new(3, 3, 32, 32, LayoutKind::Bhnd, causal);
        (c.b, c.h) = (70000, 1);
        check::<f16>(&rt, &c, seed + 4);
        seed += 5;
    }
}

/// Rows [r0, r1) of a `[B,H,N,D]` tensor held in `l`, as a new tensor of the same layout kind.
fn rows_of<T: Element>(
    data: &[T],
    l: &Layout,
    r0: usize,
    r1: usize,
    kind: LayoutKind,
) -> (Vec<T>, Layout) {
    let Dims { b, h, d, .. } = l.dims;
    let out_l = Layout::of_kind(Dims::new(b, h, r1 - r0, d), kind);
    let mut out = vec![T::from_f64(0.0); out_l.span().unwrap()];
    for bi in 0..b {
        for hi in 0..h {
            for r in r0..r1 {
                let (src, dst) = (l.offset(bi, hi, r), out_l.offset(bi, hi, r - r0));
                out[dst..dst + d].copy_from_slice(&data[src..src + d]);
            }
        }
    }
    (out, out_l)
}

/// Prefill in the pieces `prefills`, then `steps` decode steps, against the reference causal
/// operator on all the tokens with the same M. Also checks the final state.
fn check_decode<T: Element>(
    rt: &Runtime,
    (b, h, d, dv): (usize, usize, usize, usize),
    prefills: &[usize],
    steps: usize,
    kind: LayoutKind,
    seed: u64,
) {
    let total: usize = prefills.iter().sum::<usize>() + steps;
    let m = total + 5;
    let params = CosformerParams {
        m: Some(m),
        causal: true,
        ..Default::default()
    };
    let c = Case {
        b,
        h,
        n: total,
        s: total,
        d,
        dv,
        kind,
        params,
        dead_rows: false,
        rows_per_chunk: None,
        one_launch: true,
        chained: true,
    };
    let x = host_inputs::<T>(&c, seed);
    let want = reference_of(&c, &x);
    let [lq, _, lv, _] = c.layouts();

    let stream = rt.new_stream().unwrap();
    let mut st = State::new(rt, &stream, b, h, d, dv, &params).unwrap();
    let mut got = vec![f64::NAN; b * h * total * dv];
    let mut pos = 0;
    let mut run = |st: &mut State, len: usize, step: bool| {
        let (hq, l1) = rows_of(&x.q, &lq, pos, pos + len, kind);
        let (hk, _) = rows_of(&x.k, &lq, pos, pos + len, kind);
        let (hv, l2) = rows_of(&x.v, &lv, pos, pos + len, kind);
        let q = stream.clone_htod(&hq).unwrap();
        let k = stream.clone_htod(&hk).unwrap();
        let v = stream.clone_htod(&hv).unwrap();
        let mut o = stream.clone_htod(&common::poisoned::<T>(&l2)).unwrap();
        let (tq, tk, tv) = (
            TensorRef {
                data: &q,
                layout: l1,
            },
            TensorRef {
                data: &k,
                layout: l1,
            },
            TensorRef {
                data: &v,
                layout: l2,
            },
        );
        let to = TensorMut {
            data: &mut o,
            layout: l2,
        };
        if step {
            st.step(rt, &stream, tq, tk, tv, to).unwrap();
        } else {
            st.prefill(rt, &stream, tq, tk, tv, to, None).unwrap();
        }
        let out = gather(&stream.clone_dtoh(&o).unwrap(), &l2);
        for bh in 0..b * h {
            for r in 0..len {
                let dst = (bh * total + pos + r) * dv;
                got[dst..dst + dv].copy_from_slice(&out[(bh * len + r) * dv..][..dv]);
            }
        }
        pos += len;
        assert_eq!(st.pos(), pos);
    };
    for &len in prefills {
        run(&mut st, len, false);
    }
    for _ in 0..steps {
        run(&mut st, 1, true);
    }
    let cmp = compare::<T>(&got, &want);
    let what = format!(
        "{} prefill {prefills:?} + {steps} steps, d={d} dv={dv} {kind:?}",
        T::DTYPE
    );
    println!("cosformer decode {what}: {cmp}");
    assert!(cmp.pass(), "{what}: {cmp}");

    // The final state equals the reference state after all the tokens.
    let dev = st.to_host(&stream).unwrap();
    let (q, k, v) = (gather(&x.q, &lq), gather(&x.k, &lq), gather(&x.v, &lv));
    let mut rs = reference::cosformer::State::new(b, h, d, dv, &params).unwrap();
    rs.prefill(&q, &k, &v).unwrap();
    let per = cosformer::state_len(d, dv);
    let mut want_state = Vec::with_capacity(b * h * per);
    for bh in 0..b * h {
        let hs = rs.head(bh);
        for part in [&hs.kvs, &hs.kvc, &hs.zs, &hs.zc] {
            want_state.extend_from_slice(part);
        }
    }
    let got_state: Vec<f64> = dev.iter().map(|&x| x as f64).collect();
    let rel = reference::rel_frobenius(&got_state, &want_state);
    assert!(rel <= 1e-5, "{what}: final state rel. error {rel:.3e}");
}

#[test]
fn cosformer_prefill_then_decode_equals_causal() {
    let Some(rt) = common::gpu("cosformer decode") else {
        return;
    };
    let mut seed = 8000;
    for (prefills, steps) in [
        (&[1][..], 5),
        (&[63], 3),
        (&[64], 2),
        (&[65], 4),
        (&[1000], 3),
        (&[100, 37], 2),
        (&[], 6),
        (&[64, 1, 200], 1),
    ] {
        for (i, &d) in DS.iter().enumerate() {
            let dims = (2, 3, d, dv_for(d));
            let kind = kind_of(i);
            check_decode::<f32>(&rt, dims, prefills, steps, kind, seed);
            check_decode::<f16>(&rt, dims, prefills, steps, kind, seed + 1);
            check_decode::<bf16>(&rt, dims, prefills, steps, kind, seed + 2);
            seed += 3;
        }
    }
    check_decode::<f16>(&rt, (1, 2, 256, 256), &[77], 3, LayoutKind::Bnhd, 1);
    // The step's 16-byte path needs Dv % 4 == 0 and a state of 2·D·(Dv + 1) floats per slice
    // that is a multiple of 4: odd D with Dv = 8 takes the scalar path, D = 2 the vector one.
    check_decode::<f32>(&rt, (2, 3, 7, 8), &[5], 3, LayoutKind::Bhnd, 2);
    check_decode::<f32>(&rt, (2, 3, 2, 4), &[5], 3, LayoutKind::Bhnd, 3);
    // Tensor-core prefill (D == Dv = 64, f16/bf16), state handed on to the decode steps.
    for (i, prefills) in [&[1000][..], &[64, 1, 200], &[130, 70]].iter().enumerate() {
        let kind = kind_of(i);
        check_decode::<f16>(&rt, (2, 3, 64, 64), prefills, 3, kind, 8500 + i as u64);
        check_decode::<bf16>(&rt, (2, 3, 32, 32), prefills, 3, kind, 8600 + i as u64);
    }
    // A prefill that a default plan chains (D = 64, 32 slices of 8200 rows: chunks of 640 rows),
    // from the state a short prefill returned, writing the state the decode steps go on from.
    check_decode::<f16>(&rt, (4, 8, 64, 64), &[100, 8200], 2, LayoutKind::Bhnd, 8700);
    // D = 128 on tensor cores (sm_90): a chained prefill (8 chunks × 2 halves per slice) from a
    // state; then 256 slices of one chunk each from a state, which the chain must not take (one
    // half could write the state before the other has read it).
    check_decode::<f16>(
        &rt,
        (4, 8, 128, 128),
        &[100, 8200],
        2,
        LayoutKind::Bnhd,
        8800,
    );
    check_decode::<bf16>(
        &rt,
        (16, 16, 128, 128),
        &[64, 64],
        1,
        LayoutKind::Bhnd,
        8900,
    );
}

#[test]
fn cosformer_is_deterministic() {
    let Some(rt) = common::gpu("cosformer determinism") else {
        return;
    };
    for causal in [false, true] {
        let c = Case::new(4097, 4097, 64, 64, LayoutKind::Bhnd, causal);
        let x = host_inputs::<bf16>(&c, 9);
        let a = run_gpu::<bf16>(&rt, &c, &x);
        let b = run_gpu::<bf16>(&rt, &c, &x);
        assert!(
            a.iter().zip(&b).all(|(x, y)| x.to_bits() == y.to_bits()),
            "run-to-run outputs differ (causal {causal})"
        );
    }
}

#[test]
fn cosformer_fatbin_and_nvrtc_agree() {
    let Some(fat) = common::gpu_with("cosformer fatbin", LoadPolicy::Only(LoadPath::Fatbin)) else {
        return;
    };
    let nvrtc = common::gpu_with("cosformer nvrtc", LoadPolicy::Only(LoadPath::Nvrtc)).unwrap();
    for causal in [false, true] {
        let c = Case::new(1000, 1000, 80, 64, LayoutKind::Bnhd, causal);
        let x = host_inputs::<f16>(&c, 42);
        let a = run_gpu::<f16>(&fat, &c, &x);
        let b = run_gpu::<f16>(&nvrtc, &c, &x);
        assert_eq!(fat.load_path("cosformer"), Some(LoadPath::Fatbin));
        assert_eq!(nvrtc.load_path("cosformer"), Some(LoadPath::Nvrtc));
        let want = reference_of(&c, &x);
        let diff = reference::max_abs_diff(&a, &b);
        println!("fatbin vs nvrtc (causal {causal}): max abs diff {diff:.3e}");
        assert!(compare::<f16>(&b, &want).pass());
        assert!(diff <= 1e-3, "fatbin and NVRTC outputs differ by {diff}");
    }
}

#[test]
fn cosformer_safe_api_rejects_bad_buffers_and_states() {
    let Some(rt) = common::gpu("cosformer errors") else {
        return;
    };
    let stream = rt.new_stream().unwrap();
    let p = CosformerParams::default();
    let l = Layout::contiguous(Dims::new(1, 2, 100, 32));
    let full = stream.alloc_zeros::<f32>(l.span().unwrap()).unwrap();
    let short = stream.alloc_zeros::<f32>(l.span().unwrap() - 1).unwrap();
    let mut o = stream.alloc_zeros::<f32>(l.span().unwrap()).unwrap();
    let t = |d| TensorRef { data: d, layout: l };
    let err = cosformer::forward(
        &rt,
        &stream,
        &p,
        t(&full),
        t(&short),
        t(&full),
        TensorMut {
            data: &mut o,
            layout: l,
        },
        None,
    )
    .unwrap_err();
    assert!(
        matches!(err, Error::BufferTooSmall { arg: "k", .. }),
        "{err}"
    );
    let mut ws = stream.alloc_zeros::<u8>(16).unwrap();
    let err = cosformer::forward(
        &rt,
        &stream,
        &p,
        t(&full),
        t(&full),
        t(&full),
        TensorMut {
            data: &mut o,
            layout: l,
        },
        Some(&mut ws),
    )
    .unwrap_err();
    assert!(
        matches!(
            err,
            Error::BufferTooSmall {
                arg: "workspace",
                ..
            }
        ),
        "{err}"
    );

    // A state for D = 16 given D = 32 tokens; a state that would pass M.
    let sp = CosformerParams {
        m: Some(100),
        causal: true,
        ..Default::default()
    };
    let mut st = State::new(&rt, &stream, 1, 2, 16, 32, &sp).unwrap();
    let l1 = Layout::contiguous(Dims::new(1, 2, 1, 32));
    let one = stream.alloc_zeros::<f32>(l1.span().unwrap()).unwrap();
    let mut o1 = stream.alloc_zeros::<f32>(l1.span().unwrap()).unwrap();
    let t1 = |d| TensorRef {
        data: d,
        layout: l1,
    };
    let err = st
        .step(
            &rt,
            &stream,
            t1(&one),
            t1(&one),
            t1(&one),
            TensorMut {
                data: &mut o1,
                layout: l1,
            },
        )
        .unwrap_err();
    assert_eq!(err.argument(), Some("state"), "{err}");
    assert_eq!(st.pos(), 0, "a refused step does not advance");
    let mut st = State::new(&rt, &stream, 1, 2, 32, 32, &sp).unwrap();
    let out = TensorMut {
        data: &mut o,
        layout: l,
    };
    st.prefill(&rt, &stream, t(&full), t(&full), t(&full), out, None)
        .unwrap();
    assert_eq!(st.pos(), 100, "a prefill of all M tokens is allowed");
    let err = st
        .step(
            &rt,
            &stream,
            t1(&one),
            t1(&one),
            t1(&one),
            TensorMut {
                data: &mut o1,
                layout: l1,
            },
        )
        .unwrap_err();
    assert_eq!(err.argument(), Some("M"), "{err}");
}
