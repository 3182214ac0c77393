//! criterion: every GPU operator at the SPEC §6 shape (B=1, H=16, D=64, f16), timed with device
//! events (`iter_custom`), throughput in tokens. Without a CUDA device it registers nothing.

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use sofa::bench::time_on_stream;
use sofa::bench::workload::{BenchOp, Case, Workload};
use sofa::{DType, Dims, Runtime};
use std::time::Duration;

fn bench_ops(c: &mut Criterion) {
    let rt = match Runtime::new(0) {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("benches/ops: {e}; nothing to measure");
            return;
        }
    };
    let stream = rt.new_stream().expect("stream");
    for op in BenchOp::ALL {
        for causal in [false, true] {
            if causal && !op.has_causal() {
                continue;
            }
            let name = format!("{}{}_f16", op.name(), if causal { "_causal" } else { "" });
            let mut group = c.benchmark_group(name);
            for n in [4096usize, 65536, 262144] {
                let case = Case::new(op, Dims::new(1, 16, n, 64), DType::F16, causal);
                let free = rt.context().mem_get_info().map_or(0, |(f, _)| f);
                if case
                    .device_bytes()
                    .map_or(true, |need| need > free / 10 * 9)
                {
                    eprintln!("benches/ops: {} N={n} does not fit; skipped", op.name());
                    continue;
                }
                let mut w = Workload::new(&rt, &stream, case, n as u64).expect("workload");
                w.run().expect("first run");
                group.throughput(Throughput::Elements(n as u64));
                group.bench_with_input(BenchmarkId::from_parameter(n), &n, |b, _| {
                    b.iter_custom(|iters| {
                        let t =
                            time_on_stream(&stream, 1, iters as usize, || w.run()).expect("timing");
                        Duration::from_secs_f64(t.median_ms * 1e-3 * iters as f64)
                    })
                });
            }
            group.finish();
        }
    }
}

criterion_group!(benches, bench_ops);
criterion_main!(benches);
