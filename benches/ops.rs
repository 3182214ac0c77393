//! criterion: every GPU operator at the SPEC §6 shape (B=1, H=16, D=64, f16), each followed by
//! its cuBLAS-composed baseline (`baseline_<op>…`), and cuBLAS softmax attention (`softmax…`), all
//! timed with device events (`iter_custom`), throughput in tokens; SOFT's Newton pseudo-inverse
//! (`soft_newton`, 16 fp32 m×m matrices, T = 20) per m against the cuBLAS loop; the cosFormer
//! decode step (`cosformer_decode`) at issue 5's two shapes, sized by sequences per step (B·H = 128:
//! B = 8, H = 16, D = 64; 2048: B = 64, H = 32, D = 128). Sizes a baseline refuses or
//! that do not fit in device memory are skipped with a note. Without a CUDA device it registers
//! nothing.

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use cudarc::driver::CudaStream;
use sofa::baseline::Blas;
use sofa::bench::baseline::BaselineCase;
use sofa::bench::workload::{BenchOp, Case, Runner, Workload};
use sofa::bench::{fits, time_on_stream};
use sofa::{DType, Dims, Runtime};
use std::sync::Arc;
use std::time::Duration;

const SEQ: [usize; 3] = [4096, 65536, 262144];
/// Matrix sizes m of `soft_newton` (SPEC §6 landmark counts).
const NEWTON_M: [usize; 4] = [49, 64, 128, 256];
/// Sequences per step (B·H) of `cosformer_decode`: issue 5's two shapes.
const DECODE_BH: [usize; 2] = [128, 2048];

/// The case of `op` at size `n`: the sequence length, m for `soft_newton`, B·H for
/// `cosformer_decode`.
fn case(op: BenchOp, n: usize, causal: bool) -> Case {
    match op {
        BenchOp::SoftNewton => {
            let mut c = Case::new(op, Dims::new(1, 16, n, n), DType::F32, false);
            c.landmarks = n;
            c
        }
        BenchOp::CosformerDecode => {
            let dims = match n {
                128 => Dims::new(8, 16, 1, 64),
                _ => Dims::new(64, 32, 1, 128),
            };
            Case::new(op, dims, DType::F16, false)
        }
        _ => Case::new(op, Dims::new(1, 16, n, 64), DType::F16, causal),
    }
}

/// The sizes `op` is measured at.
fn sizes(op: BenchOp) -> &'static [usize] {
    match op {
        BenchOp::SoftNewton => &NEWTON_M,
        BenchOp::CosformerDecode => &DECODE_BH,
        _ => &SEQ,
    }
}

/// One group `name`, one benchmark per size that `need` says fits.
fn group(
    c: &mut Criterion,
    rt: &Runtime,
    stream: &Arc<CudaStream>,
    name: &str,
    sizes: &[usize],
    need: impl Fn(usize) -> sofa::Result<usize>,
    build: impl Fn(usize) -> sofa::Result<Runner>,
) {
    let mut group = c.benchmark_group(name);
    for &n in sizes {
        let free = rt.context().mem_get_info().map_or(0, |(f, _)| f);
        match need(n) {
            Ok(bytes) if fits(bytes, free) => {}
            Ok(_) => {
                eprintln!("benches/ops: {name} N={n} does not fit; skipped");
                continue;
            }
            Err(e) => {
                eprintln!("benches/ops: {name} N={n}: {e}; skipped");
                continue;
            }
        }
        let mut run = build(n).expect("workload");
        run().expect("first run");
        group.throughput(Throughput::Elements(n as u64));
        group.bench_with_input(BenchmarkId::from_parameter(n), &n, |b, _| {
            b.iter_custom(|iters| {
                let t = time_on_stream(stream, 1, iters as usize, &mut run).expect("timing");
                Duration::from_secs_f64(t.median_ms * 1e-3 * iters as f64)
            })
        });
    }
    group.finish();
}

fn bench_ops(c: &mut Criterion) {
    let rt = match Runtime::new(0) {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("benches/ops: {e}; nothing to measure");
            return;
        }
    };
    let stream = rt.new_stream().expect("stream");
    let blas = match Blas::new(&stream) {
        Ok(b) => Some(Arc::new(b)),
        Err(e) => {
            eprintln!("benches/ops: {e}; no cuBLAS baselines");
            None
        }
    };
    for op in BenchOp::ALL {
        for causal in [false, true] {
            if causal && !op.has_causal() {
                continue;
            }
            let dt = if op == BenchOp::SoftNewton {
                "f32"
            } else {
                "f16"
            };
            let name = format!("{}{}_{dt}", op.name(), if causal { "_causal" } else { "" });
            group(
                c,
                &rt,
                &stream,
                &name,
                sizes(op),
                |n| case(op, n, causal).device_bytes(),
                |n| Ok(Workload::new(&rt, &stream, case(op, n, causal), n as u64)?.into_runner()),
            );
            let Some(blas) = &blas else { continue };
            if BaselineCase::composed(case(op, 1, causal)).is_none() {
                eprintln!("benches/ops: {} has no cuBLAS baseline", op.name());
                continue;
            }
            let baseline = |n| BaselineCase::composed(case(op, n, causal)).expect("has one");
            group(
                c,
                &rt,
                &stream,
                &format!("baseline_{name}"),
                sizes(op),
                |n| baseline(n).device_bytes(),
                |n| baseline(n).workload(&rt, blas, n as u64),
            );
        }
    }
    let Some(blas) = &blas else { return };
    for causal in [false, true] {
        let softmax = |n| BaselineCase::softmax(case(BenchOp::Sima, n, causal));
        group(
            c,
            &rt,
            &stream,
            &format!("softmax{}_f16", if causal { "_causal" } else { "" }),
            &SEQ,
            |n| softmax(n).device_bytes(),
            |n| softmax(n).workload(&rt, blas, n as u64),
        );
    }
}

criterion_group!(benches, bench_ops);
criterion_main!(benches);
