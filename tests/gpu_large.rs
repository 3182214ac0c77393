//! Element offsets past 2³¹ (issue 9: index arithmetic). Every operator runs on one tensor of
//! B·H·N·D > 2³¹ elements, q = k = v (the same 4.3 GB f16 buffer), into an output as large. The
//! slices just below and wholly above element 2³¹ are checked against the f64 reference: a 32-bit
//! offset anywhere would wrap there. Needs ≈ 9 GB of free device memory (a SKIP line with the
//! reason when less is free); skipped on the CPU simulator, where 2³¹ elements take hours.

mod common;

use cudarc::driver::{CudaSlice, CudaStream, DevicePtrMut};
use half::f16;
use sofa::ops::aft::{self, AftParams, Variant};
use sofa::ops::cosformer::{self, CosformerParams};
use sofa::ops::soft::{self, SoftParams};
use sofa::ops::{sima, TensorMut, TensorRef};
use sofa::reference::{self, aft::Bias, Qkv, Rng};
use sofa::verify::compare;
use sofa::verify::soft32;
use sofa::{Dims, Layout, Runtime};
use std::sync::{Arc, Mutex};

/// 513 heads of 64k × 64: head 512 starts at element 2³¹ exactly.
const LONG: Dims = Dims {
    b: 1,
    h: 513,
    n: 65536,
    d: 64,
};
/// AFT-full's w is T×T, so it takes many short heads instead: 2³¹/(256·64) + 1 slices, beyond
/// the 65535 limit of a grid's y dimension as well.
const SHORT: Dims = Dims {
    b: 1,
    h: 131073,
    n: 256,
    d: 64,
};

#[derive(Clone, Copy, Debug)]
enum Op {
    Sima,
    Cos { causal: bool },
    Soft,
    Aft { variant: Variant, causal: bool },
}

impl Op {
    /// The shape past 2³¹ elements for this op.
    fn large(self) -> Dims {
        match self {
            Op::Aft {
                variant: Variant::Full,
                ..
            } => SHORT,
            _ => LONG,
        }
    }

    fn soft_params() -> SoftParams {
        SoftParams::default() // AvgPool1d, m = 64, tied keys
    }

    fn workspace_bytes(self, d: Dims) -> usize {
        match self {
            Op::Sima => sima::workspace_bytes(d, d.d),
            Op::Cos { causal } => cosformer::workspace_bytes(d, d.n, d.d, &cos_params(causal)),
            Op::Soft => soft::workspace_bytes(d, d.d, &Op::soft_params()),
            Op::Aft { variant, causal } => aft::workspace_bytes(d, variant, &AftParams { causal }),
        }
        .unwrap()
    }
}

fn cos_params(causal: bool) -> CosformerParams {
    CosformerParams {
        causal,
        ..Default::default()
    }
}

/// The device, unless it lacks the memory `need` (bytes) asks, or `large` and it is the simulator.
fn device(need: usize, large: bool) -> Option<Arc<Runtime>> {
    let rt = common::gpu("offsets beyond 2^31")?;
    if large && rt.info().name.contains("sofa-sim") {
        println!("SKIP offsets beyond 2^31: 2^31 elements take hours on the CPU simulator");
        return None;
    }
    let (free, _) = rt.context().mem_get_info().unwrap();
    if free < need {
        println!(
            "SKIP offsets beyond 2^31: needs {:.1} GB of device memory, {:.1} GB free",
            need as f64 / 1e9,
            free as f64 / 1e9
        );
        return None;
    }
    Some(rt)
}

/// Runs `op` over `x` (q = k = v) into `o`, both of `dims` contiguous.
fn run(
    rt: &Runtime,
    stream: &Arc<CudaStream>,
    (op, dims): (Op, Dims),
    x: &CudaSlice<f16>,
    o: &mut CudaSlice<f16>,
    bias: Option<&CudaSlice<f32>>,
) {
    let l = Layout::contiguous(dims);
    let r = || TensorRef { data: x, layout: l };
    let out = TensorMut { data: o, layout: l };
    match op {
        Op::Sima => sima::forward(rt, stream, r(), r(), r(), out, None),
        Op::Cos { causal } => {
            cosformer::forward(rt, stream, &cos_params(causal), r(), r(), r(), out, None)
        }
        Op::Soft => soft::attention(
            rt,
            stream,
            &Op::soft_params(),
            r(),
            None,
            r(),
            out,
            None,
            None,
        ),
        Op::Aft { variant, causal } => aft::forward(
            rt,
            stream,
            variant,
            &AftParams { causal },
            r(),
            r(),
            r(),
            out,
            bias,
            None,
        ),
    }
    .unwrap_or_else(|e| panic!("{op:?}: {e}"));
}

/// The f64 reference of one slice `[N, D]` (q = k = v = `x`), head `h` of the full tensor.
fn reference_slice((op, d): (Op, Dims), x: &[f64], h: usize, bias: &[f64]) -> (Vec<f64>, f64) {
    let one = Dims::new(1, 1, d.n, d.d);
    let qkv = Qkv::self_attn(x, x, x, one, d.d).unwrap();
    match op {
        Op::Sima => (reference::sima::forward(x, x, x, one, d.d), 0.0),
        Op::Cos { causal } => (
            reference::cosformer::forward(&qkv, &cos_params(causal)).unwrap(),
            0.0,
        ),
        Op::Soft => {
            let p = Op::soft_params();
            let want = reference::soft::forward(&qkv, None, &p).unwrap();
            // The fp32 Newton iteration on clustered landmarks (means of 1024 rows) sits above
            // the f16 bound: admit 4× an fp32 CPU evaluation's error (tests/gpu_soft.rs).
            let floor = soft32::attention_floor(&qkv, None, &p, soft32::Step::TwoZMinusZaz, &want);
            (want, floor)
        }
        Op::Aft { variant, causal } => {
            let band = |s: usize| 2 * s - 1;
            let b = match variant {
                Variant::Simple => Bias::None,
                Variant::Full => Bias::Full(bias),
                Variant::Local { window } => Bias::Local { w: bias, window },
                // u is per head: this slice's row, as head 0 of a one-head problem.
                Variant::Conv { window } => Bias::Conv {
                    u: &bias[h * band(window)..(h + 1) * band(window)],
                    window,
                },
            };
            (
                reference::aft::forward(&qkv, &b, &AftParams { causal }).unwrap(),
                0.0,
            )
        }
    }
}

/// 0xFF bytes (NaN in f16) over all of `o`, so a row the kernels skip fails the comparison.
fn poison(stream: &Arc<CudaStream>, o: &mut CudaSlice<f16>) {
    let bytes = o.len() * 2;
    stream.context().bind_to_thread().unwrap();
    let (ptr, _sync) = o.device_ptr_mut(stream);
    // SAFETY: `ptr` addresses `bytes` bytes of `o`, allocated on `stream`'s context; the guard
    // orders the memset with later uses of `o` on the stream.
    unsafe { cudarc::driver::result::memset_d8_async(ptr, 0xFF, bytes, stream.cu_stream()) }
        .unwrap();
}

fn to_f64(x: &[f16]) -> Vec<f64> {
    x.iter().map(|v| v.to_f64()).collect()
}

/// One large case at a time: the test threads of this file would otherwise each take up to
/// 18.5 GB (AFT-full) at once.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

/// Runs `op` at `dims` and checks the slices on both sides of element `boundary` and the last.
fn check_at(op: Op, dims: Dims, boundary: usize) {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let len = dims.b * dims.h * dims.n * dims.d;
    let large = len > 1 << 31;
    let need = 2 * len * 2 + op.workspace_bytes(dims) + (256 << 20);
    println!(
        "{op:?} {dims}: {:.2} GB of device memory with the workspace",
        need as f64 / 1e9
    );
    let Some(rt) = device(need, large) else {
        return;
    };
    let stream = rt.new_stream().unwrap();
    let mut x = rt.alloc::<f16>(&stream, len).unwrap();
    sofa::bench::fill_uniform(&rt, &stream, &mut x, 11).unwrap();
    let mut o = rt.alloc::<f16>(&stream, len).unwrap();
    poison(&stream, &mut o);
    let bias_len = match op {
        Op::Aft { variant, .. } => common::aft_bias_len(variant, dims),
        _ => 0,
    };
    let bias: Vec<f32> = Rng::new(5).fill(bias_len, -1.0, 1.0);
    let bias_dev = (bias_len > 0).then(|| stream.clone_htod(&bias).unwrap());
    run(&rt, &stream, (op, dims), &x, &mut o, bias_dev.as_ref());
    let slice = dims.n * dims.d;
    let bias64: Vec<f64> = bias.iter().map(|&v| v as f64).collect();
    // The slice ending at element `boundary` and the first one starting at or past it.
    let last_below = boundary / slice - 1;
    assert!(
        boundary % slice == 0 && last_below + 1 < dims.h,
        "{dims}: boundary {boundary}"
    );
    let mut heads = vec![last_below, last_below + 1, dims.h - 1];
    heads.dedup();
    for h in heads {
        let at = h * slice;
        let xs = to_f64(&stream.clone_dtoh(&x.slice(at..at + slice)).unwrap());
        let got = to_f64(&stream.clone_dtoh(&o.slice(at..at + slice)).unwrap());
        let (want, floor) = reference_slice((op, dims), &xs, h, &bias64);
        let mut c = compare::<f16>(&got, &want);
        c.admit_algorithm_floor(floor, soft32::FLOOR_FACTOR);
        let what = format!("{op:?} {dims} head {h} (elements {at}..{})", at + slice);
        println!("{what}: {c}");
        assert!(c.pass(), "{what}: {c}");
    }
}

fn check(op: Op) {
    check_at(op, op.large(), 1 << 31);
}

/// The harness itself at a small scale (it runs on the simulator too): the same slices around
/// the start of head 4.
#[test]
fn harness_at_small_scale() {
    for op in every_op() {
        let dims = match op {
            Op::Aft {
                variant: Variant::Full,
                ..
            } => Dims::new(1, 9, 64, 64),
            _ => Dims::new(1, 5, 256, 64),
        };
        check_at(op, dims, 4 * dims.n * dims.d);
    }
}

fn every_op() -> Vec<Op> {
    let mut ops = vec![
        Op::Sima,
        Op::Cos { causal: false },
        Op::Cos { causal: true },
        Op::Soft,
    ];
    for causal in [false, true] {
        for variant in [
            Variant::Simple,
            Variant::Local { window: 64 },
            Variant::Conv { window: 64 },
            Variant::Full,
        ] {
            ops.push(Op::Aft { variant, causal });
        }
    }
    ops
}

#[test]
fn sima_past_2_31() {
    check(Op::Sima);
}

#[test]
fn cosformer_past_2_31() {
    check(Op::Cos { causal: false });
    check(Op::Cos { causal: true });
}

#[test]
fn soft_past_2_31() {
    check(Op::Soft);
}

#[test]
fn aft_past_2_31() {
    for op in every_op()
        .into_iter()
        .filter(|op| matches!(op, Op::Aft { .. }))
    {
        check(op);
    }
}
