//! criterion: SimA on the GPU, timed with device events (`iter_custom`), throughput in tokens.
//! Without a CUDA device it registers nothing and says so.

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use half::f16;
use sofa::ops::sima;
use sofa::ops::{TensorMut, TensorRef};
use sofa::reference::Rng;
use sofa::{Dims, Layout, Runtime};
use std::time::Duration;

fn bench_sima(c: &mut Criterion) {
    let rt = match Runtime::new(0) {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("benches/sima: {e}; nothing to measure");
            return;
        }
    };
    let stream = rt.new_stream().expect("stream");
    let mut group = c.benchmark_group("sima_f16");
    for n in [4096usize, 65536, 262144] {
        let dims = Dims::new(1, 16, n, 64);
        let l = Layout::contiguous(dims);
        let mut rng = Rng::new(n as u64);
        let len = l.span().unwrap();
        let q = stream.clone_htod(&rng.fill::<f16>(len, -1.0, 1.0)).unwrap();
        let k = stream.clone_htod(&rng.fill::<f16>(len, -1.0, 1.0)).unwrap();
        let v = stream.clone_htod(&rng.fill::<f16>(len, -1.0, 1.0)).unwrap();
        let mut o = rt.alloc::<f16>(&stream, len).unwrap();
        let mut ws = rt
            .alloc::<u8>(&stream, sima::workspace_bytes(dims, 64).unwrap())
            .unwrap();
        group.throughput(Throughput::Elements(n as u64));
        group.bench_with_input(BenchmarkId::from_parameter(n), &n, |b, _| {
            b.iter_custom(|iters| {
                let mut call = || {
                    sima::forward(
                        &rt,
                        &stream,
                        TensorRef {
                            data: &q,
                            layout: l,
                        },
                        TensorRef {
                            data: &k,
                            layout: l,
                        },
                        TensorRef {
                            data: &v,
                            layout: l,
                        },
                        TensorMut {
                            data: &mut o,
                            layout: l,
                        },
                        Some(&mut ws),
                    )
                };
                let t = sofa::bench::time_on_stream(&stream, 1, iters as usize, &mut call).unwrap();
                Duration::from_secs_f64(t.median_ms * 1e-3 * iters as f64)
            })
        });
    }
    group.finish();
}

criterion_group!(benches, bench_sima);
criterion_main!(benches);
