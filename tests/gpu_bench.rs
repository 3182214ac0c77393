//! The measuring instrument on the GPU: a CUDA-graph replay of an op and of a cuBLAS baseline
//! writes what the eager call writes; every workload and cuBLAS reference of a small sweep is
//! captured and timed; `sofa bench --baseline --graph` writes op, baseline and softmax records
//! with the speedup fields. Skips (with a SKIP line) without a device.

mod common;

use cudarc::driver::{CudaSlice, CudaStream};
use half::f16;
use serde_json::Value;
use sofa::baseline::softmax::{self, SoftmaxParams};
use sofa::baseline::Blas;
use sofa::bench::baseline::BaselineCase;
use sofa::bench::graph::capture;
use sofa::bench::random_buffer;
use sofa::bench::timer::Timer;
use sofa::bench::workload::{BenchOp, Case, Runner, Workload};
use sofa::ops::{sima, TensorMut, TensorRef};
use sofa::{DType, Dims, Layout, Result, Runtime};
use std::sync::Arc;

/// A device with event tracking off (one stream owns every buffer, as in `sofa bench`), the
/// stream and a cuBLAS handle on it.
fn device(test: &str) -> Option<(Arc<Runtime>, Arc<CudaStream>, Arc<Blas>)> {
    let rt = common::gpu(test)?;
    // SAFETY: every buffer of these tests lives on the one stream made below.
    unsafe { rt.context().disable_event_tracking() };
    let stream = rt.new_stream().unwrap();
    let blas = Arc::new(Blas::new(&stream).expect("cuBLAS"));
    Some((rt, stream, blas))
}

/// Runs `call` eagerly, then zeroes `o` and replays a graph captured from `call`: same bits.
fn graph_matches_eager(
    stream: &Arc<CudaStream>,
    o: &mut CudaSlice<f16>,
    mut call: impl FnMut(&mut CudaSlice<f16>) -> Result<()>,
) {
    call(o).unwrap();
    let eager = stream.clone_dtoh(o).unwrap();
    stream.memset_zeros(o).unwrap();
    let graph = capture(stream, &mut || call(o)).expect("capture");
    graph.launch().unwrap();
    let replay = stream.clone_dtoh(o).unwrap();
    let bits = |v: &[f16]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
    assert_eq!(bits(&eager), bits(&replay));
    assert!(
        eager.iter().any(|x| x.to_bits() != 0),
        "the call wrote nothing"
    );
}

#[test]
fn graph_replay_writes_what_the_eager_call_writes() {
    let Some((rt, stream, blas)) = device("graph_replay_writes_what_the_eager_call_writes") else {
        return;
    };
    let l = Layout::contiguous(Dims::new(1, 2, 1000, 64));
    let len = l.span().unwrap();
    let input = |seed| random_buffer::<f16>(&rt, &stream, len, seed).unwrap();
    let (q, k, v) = (input(1), input(2), input(3));
    let mut o = rt.alloc::<f16>(&stream, len).unwrap();
    let t = |x| TensorRef { data: x, layout: l };
    let mut ws = rt
        .alloc::<u8>(&stream, sima::workspace_bytes(l.dims, 64).unwrap())
        .unwrap();
    graph_matches_eager(&stream, &mut o, |o| {
        let out = TensorMut { data: o, layout: l };
        sima::forward(&rt, &stream, t(&q), t(&k), t(&v), out, Some(&mut ws))
    });
    let bytes = softmax::workspace_bytes(DType::F16, l.dims, 1000, 64).unwrap();
    let mut ws = rt.alloc::<u8>(&stream, bytes).unwrap();
    let p = SoftmaxParams {
        causal: true,
        ..Default::default()
    };
    graph_matches_eager(&stream, &mut o, |o| {
        let out = TensorMut { data: o, layout: l };
        softmax::attention(&rt, &blas, &p, t(&q), t(&k), t(&v), out, Some(&mut ws))
    });
}

/// Times `run` with graph replay; it must have been captured.
fn timed_as_graph(timer: &mut Timer, what: &str, mut run: Runner) {
    run().unwrap_or_else(|e| panic!("{what}: {e}"));
    let m = timer.time(&mut *run).unwrap();
    assert!(m.graph, "{what}: {:?}", m.note);
    assert!(m.timing.median_ms > 0.0 && m.timing.runs == 3, "{what}");
}

#[test]
fn every_workload_and_reference_is_captured() {
    let Some((rt, stream, blas)) = device("every_workload_and_reference_is_captured") else {
        return;
    };
    let mut timer = Timer::new(&rt, &stream, 1, 3, true, true).unwrap();
    for op in BenchOp::ALL {
        for causal in [false, true] {
            if causal && !op.has_causal() {
                continue;
            }
            let n = if op == BenchOp::CosformerDecode {
                1
            } else {
                1000
            };
            let case = Case::new(op, Dims::new(1, 2, n, 64), DType::F16, causal);
            let run = Workload::new(&rt, &stream, case, 7).unwrap().into_runner();
            timed_as_graph(&mut timer, &format!("{op:?} causal={causal}"), run);
            let composed = BaselineCase::composed(case);
            let softmax = op.has_seq().then(|| BaselineCase::softmax(case));
            for bc in composed.into_iter().chain(softmax) {
                assert!(bc.device_bytes().unwrap() > 0);
                let run = bc.workload(&rt, &blas, 7).unwrap();
                timed_as_graph(&mut timer, &format!("{} {case:?}", bc.name()), run);
            }
        }
    }
}

#[test]
fn bench_cli_writes_references_and_speedups() {
    if common::gpu("bench_cli_writes_references_and_speedups").is_none() {
        return;
    }
    let args = [
        "bench",
        "--op",
        "sima,aft_simple,cosformer",
        "--causal",
        "--seq",
        "1000",
        "--heads",
        "2",
        "--iters",
        "3",
        "--warmup",
        "1",
        "--no-peaks",
        "--baseline",
        "--graph",
        "--format",
        "json",
    ];
    // SOFA_BIN: the binary beside a moved test executable (gpu-bundle on a GPU machine), since
    // cargo's build path does not exist there.
    let sofa = std::env::var_os("SOFA_BIN").unwrap_or_else(|| env!("CARGO_BIN_EXE_sofa").into());
    let out = std::process::Command::new(sofa)
        .args(args)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    let records: Vec<Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let ops = |name: &'static str| records.iter().filter(move |r| r["op"] == name);
    // sima; cosformer and its causal variant; aft_simple and its causal variant.
    assert_eq!(ops("sima").count(), 1);
    assert_eq!(ops("baseline:sima").count(), 1);
    assert_eq!(ops("baseline:cosformer").count(), 2);
    assert_eq!(ops("baseline:aft_simple").count(), 0);
    assert!(
        stderr.contains("aft_simple has no cuBLAS-composed baseline"),
        "{stderr}"
    );
    // Softmax once per shape and causality.
    assert_eq!(ops("softmax").count(), 2);
    for r in &records {
        assert_eq!(r["graph"], true, "{r}");
        let name = r["op"].as_str().unwrap();
        let is_op = BenchOp::ALL.iter().any(|o| o.name() == name);
        assert_eq!(r["speedup_vs_softmax"].is_f64(), is_op, "{r}");
        let has_baseline = matches!(name, "sima" | "cosformer");
        assert_eq!(r["speedup_vs_baseline"].is_f64(), has_baseline, "{r}");
    }
}

/// The Newton cluster probe (`sofa bench --op soft_newton` prints it) runs to completion on
/// sm_90: its remote stores and split barriers, and its st.async all-gather, neither fault nor
/// hang, with 1 and 16 clusters.
#[test]
fn newton_cluster_probe_runs() {
    let Some((rt, stream, _)) = device("newton cluster probe") else {
        return;
    };
    for clusters in [1, 16] {
        let p = sofa::bench::probe::newton_cluster_step(&rt, &stream, clusters, 3).unwrap();
        if rt.info().compute_capability.0 >= 9 {
            let p = p.expect("the probe runs on sm_90");
            let all = [
                p.sync_alone,
                p.fmas_alone,
                p.arrive_early,
                p.arrive_late,
                p.gather_alone,
                p.gather_overlap,
            ];
            assert!(all.iter().all(|t| t.is_finite() && *t >= 0.0), "{p:?}");
            println!("newton cluster probe, {clusters} clusters: {p:?}");
        } else {
            assert_eq!(p, None);
        }
    }
}
