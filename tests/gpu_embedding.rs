//! Embedding in an engine (issue 8), through the raw Rust layer: buffers allocated outside sofa
//! (`cuMemAlloc`), a stream created outside sofa and borrowed, engine layout `[B,N,H,D]`.
//! Raw == safe API, CUDA graph capture + replay == eager, two threads on two streams == serial,
//! for SimA, cosFormer (non-causal, causal), SOFT (defaults, tied) and AFT simple / local
//! (windows 64 and 5) / conv / full, each non-causal and causal; the AFT biases live in engine
//! memory too. Skips (with a SKIP line) without a device.

mod common;

use cudarc::driver::sys::{self, CUgraphInstantiate_flags, CUstreamCaptureMode};
use cudarc::driver::{result, CudaStream, DriverError};
use half::f16;
use sofa::ops::aft::{self, AftParams, Variant};
use sofa::ops::cosformer::{self, CosformerParams};
use sofa::ops::soft::{self, Landmarks, SoftParams};
use sofa::ops::{sima, RawTensor, TensorMut, TensorRef};
use sofa::reference::{gather, Rng};
use sofa::runtime::stream::borrow_stream;
use sofa::verify::compare;
use sofa::{DType, Dims, Element, Layout, LayoutKind, Runtime};
use std::sync::Arc;

/// Device memory the "engine" owns: plain `cuMemAlloc`, freed on drop. Its writes and reads go
/// through a private non-blocking stream that is synchronized before they return, as an engine
/// makes its inputs ready before queuing an op. (The legacy default stream would not do: the
/// engine's non-blocking streams do not wait for it, and a "synchronous" memset or pageable
/// upload there may return before the device has it, which the H100 run of 7900c6c caught.
/// Nor would a context synchronization: it is refused while another test thread captures a
/// graph.)
struct EngineBuf {
    ptr: u64,
    bytes: usize,
}

/// Runs `f` on a private non-blocking stream and waits for its work.
fn on_private_stream(f: impl FnOnce(sys::CUstream) -> Result<(), DriverError>) {
    let s = result::stream::create(result::stream::StreamKind::NonBlocking).unwrap();
    f(s).unwrap();
    // SAFETY: our own stream, destroyed once its work is done.
    unsafe {
        result::stream::synchronize(s).unwrap();
        result::stream::destroy(s).unwrap();
    }
}

impl EngineBuf {
    fn zeroed(rt: &Runtime, bytes: usize) -> Self {
        rt.context().bind_to_thread().unwrap();
        // SAFETY: plain allocation in the current (primary) context.
        let ptr = unsafe { result::malloc_sync(bytes.max(1)) }.unwrap();
        // SAFETY: `ptr` holds `bytes` bytes.
        on_private_stream(|s| unsafe { result::memset_d8_async(ptr, 0, bytes.max(1), s) });
        EngineBuf { ptr, bytes }
    }

    fn from_host<T: Element>(rt: &Runtime, host: &[T]) -> Self {
        let b = Self::zeroed(rt, std::mem::size_of_val(host));
        b.write(host);
        b
    }

    fn write<T: Element>(&self, host: &[T]) {
        assert_eq!(std::mem::size_of_val(host), self.bytes);
        // SAFETY: the buffer holds exactly `host`'s bytes; `host` outlives the synchronization.
        on_private_stream(|s| unsafe { result::memcpy_htod_async(self.ptr, host, s) });
    }

    fn read<T: Element>(&self) -> Vec<T> {
        let mut host = vec![T::default(); self.bytes / std::mem::size_of::<T>()];
        // SAFETY: the buffer holds `host`'s bytes; `host` outlives the synchronization.
        on_private_stream(|s| unsafe { result::memcpy_dtoh_async(&mut host, self.ptr, s) });
        host
    }
}

impl Drop for EngineBuf {
    fn drop(&mut self) {
        // SAFETY: allocated by `malloc_sync`; every use was synchronized by the test.
        let _ = unsafe { result::free_sync(self.ptr) };
    }
}

/// A stream the "engine" created; sofa only borrows it.
struct EngineStream {
    raw: sys::CUstream,
    stream: Arc<CudaStream>,
}

impl EngineStream {
    fn new(rt: &Runtime) -> Self {
        rt.context().bind_to_thread().unwrap();
        let raw = result::stream::create(result::stream::StreamKind::NonBlocking).unwrap();
        // SAFETY: `raw` is live until `drop`, after the wrapper is no longer used.
        let stream = unsafe { borrow_stream(rt, raw) }.unwrap();
        EngineStream { raw, stream }
    }

    fn sync(&self) {
        self.stream.synchronize().unwrap();
    }
}

impl Drop for EngineStream {
    fn drop(&mut self) {
        // SAFETY: our own stream; destroyed after its work completes (the wrapper does not).
        unsafe {
            let _ = result::stream::synchronize(self.raw);
            let _ = result::stream::destroy(self.raw);
        }
    }
}

/// One attention layer's tensors in engine layout, in engine memory.
struct Io {
    lq: Layout,
    lv: Layout,
    q: EngineBuf,
    k: EngineBuf,
    v: EngineBuf,
    o: EngineBuf,
    /// AFT's fp32 position bias (`w` of local/full, `u` of conv), allocated by the engine like
    /// the weights of a layer; `None` for the ops without one.
    bias: Option<EngineBuf>,
    /// The same bias on the host, for the safe API.
    bias_host: Vec<f32>,
}

impl Io {
    fn new<T: Element>(rt: &Runtime, op: Op, dims: Dims, seed: u64) -> (Self, [Vec<T>; 3]) {
        let lq = Layout::of_kind(dims, LayoutKind::Bnhd);
        let lv = lq;
        let mut rng = Rng::new(seed);
        let host = [
            common::random::<T>(&mut rng, &lq),
            common::random::<T>(&mut rng, &lq),
            common::random::<T>(&mut rng, &lv),
        ];
        let bias_host: Vec<f32> = (0..bias_len(op, dims))
            .map(|_| rng.uniform(-1.0, 1.0) as f32)
            .collect();
        let io = Io {
            lq,
            lv,
            q: EngineBuf::from_host(rt, &host[0]),
            k: EngineBuf::from_host(rt, &host[1]),
            v: EngineBuf::from_host(rt, &host[2]),
            o: EngineBuf::from_host(rt, &common::poisoned::<T>(&lv)),
            bias: (!bias_host.is_empty()).then(|| EngineBuf::from_host(rt, &bias_host)),
            bias_host,
        };
        (io, host)
    }

    /// The bias as `forward_raw` takes it: address and fp32 count (0, 0 when there is none).
    fn raw_bias(&self) -> (u64, usize) {
        self.bias
            .as_ref()
            .map_or((0, 0), |b| (b.ptr, b.bytes / std::mem::size_of::<f32>()))
    }

    fn raw(&self) -> [RawTensor; 4] {
        let r = |b: &EngineBuf, layout| RawTensor { ptr: b.ptr, layout };
        [
            r(&self.q, self.lq),
            r(&self.k, self.lq),
            r(&self.v, self.lv),
            r(&self.o, self.lv),
        ]
    }

    fn poison<T: Element>(&self) {
        self.o.write(&common::poisoned::<T>(&self.lv));
    }
}

#[derive(Clone, Copy, Debug)]
enum Op {
    Sima,
    Cos(CosformerParams),
    Soft(SoftParams),
    Aft(Variant, AftParams),
}

/// Every op at sequence length `n`: SimA, cosFormer (non-causal, causal), SOFT, and AFT simple,
/// local (a multi-tile band and a small odd one), conv, full, each non-causal and causal.
fn ops(n: usize) -> Vec<Op> {
    let mut ops = vec![
        Op::Sima,
        Op::Cos(CosformerParams::default()),
        Op::Cos(CosformerParams {
            causal: true,
            ..Default::default()
        }),
        Op::Soft(soft_params(n)),
    ];
    for variant in common::aft_variants() {
        for causal in [false, true] {
            ops.push(Op::Aft(variant, AftParams { causal }));
        }
    }
    ops
}

/// SOFT's defaults (tied keys, AvgPool1d m = 64, 20 Newton steps), m capped at N: pooling needs
/// m ≤ N.
fn soft_params(n: usize) -> SoftParams {
    let p = SoftParams::default();
    match p.landmarks {
        Landmarks::AvgPool1d { m } if m > n => SoftParams {
            landmarks: Landmarks::AvgPool1d { m: n },
            ..p
        },
        _ => p,
    }
}

/// fp32 values of the op's bias (AFT local, conv, full), 0 without one.
fn bias_len(op: Op, dims: Dims) -> usize {
    match op {
        Op::Aft(variant, _) => common::aft_bias_len(variant, dims),
        _ => 0,
    }
}

fn workspace_bytes(op: Op, dims: Dims) -> usize {
    match op {
        Op::Sima => sima::workspace_bytes(dims, dims.d).unwrap(),
        Op::Cos(p) => cosformer::workspace_bytes(dims, dims.n, dims.d, &p).unwrap(),
        // An upper bound (multi-launch Newton), whatever path the device takes.
        Op::Soft(p) => soft::workspace_bytes(dims, dims.d, &p).unwrap(),
        Op::Aft(variant, p) => aft::workspace_bytes(dims, variant, &p).unwrap(),
    }
}

/// The largest workspace of `ops` at `dims`: one buffer serves ops queued one after another.
fn max_workspace(ops: &[Op], dims: Dims) -> usize {
    ops.iter()
        .map(|&op| workspace_bytes(op, dims))
        .max()
        .unwrap()
}

/// Queues `op` on raw pointers: what an engine does. Nothing here allocates or synchronizes
/// (the SOFT plan is host-side validation), so the call can be captured into a graph.
fn queue_raw(rt: &Runtime, s: &CudaStream, dtype: DType, op: Op, io: &Io, ws: &EngineBuf) {
    let [q, k, v, o] = io.raw();
    // Every arm: engine buffers of this context covering each layout; `o` is its own buffer; the
    // workspace holds `ws.bytes` bytes and the bias `raw_bias().1` floats; everything outlives
    // the synchronization that follows.
    match op {
        // SAFETY: see above.
        Op::Sima => unsafe { sima::forward_raw(rt, s, dtype, q, k, v, o, ws.ptr, ws.bytes) },
        // SAFETY: see above.
        Op::Cos(p) => unsafe {
            cosformer::forward_raw(rt, s, &p, dtype, q, k, v, o, ws.ptr, ws.bytes)
        },
        Op::Soft(p) => {
            let smem = rt.info().smem_per_block_optin;
            let plan = soft::Plan::new(&q.layout, None, &v.layout, &o.layout, &p, smem).unwrap();
            // Tied keys: k is not read; q goes in its place (the raw API's convention).
            // SAFETY: see above.
            unsafe { soft::attention_raw(rt, s, &plan, dtype, q, q, v, o, None, ws.ptr, ws.bytes) }
        }
        Op::Aft(variant, p) => {
            let (bias, bias_len) = io.raw_bias();
            // SAFETY: see above.
            unsafe {
                aft::forward_raw(
                    rt, s, variant, &p, dtype, q, k, v, o, bias, bias_len, ws.ptr, ws.bytes,
                )
            }
        }
    }
    .unwrap_or_else(|e| panic!("{op:?} {dtype} raw: {e}"));
}

/// The safe API on cudarc buffers with the given layout kind (AFT's bias uploaded from
/// `bias`); returns o in engine layout.
fn safe<T: Element>(
    rt: &Runtime,
    op: Op,
    dims: Dims,
    kind: LayoutKind,
    h: &[Vec<T>; 3],
    bias: &[f32],
) -> Vec<T> {
    let s = rt.new_stream().unwrap();
    let l = Layout::of_kind(dims, kind);
    let src = Layout::of_kind(dims, LayoutKind::Bnhd);
    // Re-lay the engine-layout host data out in `kind`.
    let relay = |x: &[T]| {
        let mut out = vec![T::default(); l.span().unwrap()];
        sofa::reference::scatter(&gather(x, &src), &l, &mut out);
        out
    };
    let (q, k, v) = (
        s.clone_htod(&relay(&h[0])).unwrap(),
        s.clone_htod(&relay(&h[1])).unwrap(),
        s.clone_htod(&relay(&h[2])).unwrap(),
    );
    let w = (!bias.is_empty()).then(|| s.clone_htod(bias).unwrap());
    let mut o = s.clone_htod(&common::poisoned::<T>(&l)).unwrap();
    let r = |data| TensorRef { data, layout: l };
    let out = TensorMut {
        data: &mut o,
        layout: l,
    };
    match op {
        Op::Sima => sima::forward(rt, &s, r(&q), r(&k), r(&v), out, None),
        Op::Cos(p) => cosformer::forward(rt, &s, &p, r(&q), r(&k), r(&v), out, None),
        Op::Soft(p) => soft::attention(rt, &s, &p, r(&q), None, r(&v), out, None, None),
        Op::Aft(variant, p) => aft::forward(
            rt,
            &s,
            variant,
            &p,
            r(&q),
            r(&k),
            r(&v),
            out,
            w.as_ref(),
            None,
        ),
    }
    .unwrap_or_else(|e| panic!("{op:?} {} safe {kind:?}: {e}", T::DTYPE));
    let got = s.clone_dtoh(&o).unwrap();
    // Back to engine layout for comparison.
    let mut back = vec![T::default(); src.span().unwrap()];
    sofa::reference::scatter(&gather(&got, &l), &src, &mut back);
    back
}

fn raw_vs_safe<T: Element>(rt: &Arc<Runtime>, dims: Dims, seed: u64) {
    let es = EngineStream::new(rt);
    for (i, op) in ops(dims.n).into_iter().enumerate() {
        let (io, host) = Io::new::<T>(rt, op, dims, seed + i as u64);
        let ws = EngineBuf::zeroed(rt, workspace_bytes(op, dims));
        queue_raw(rt, &es.stream, T::DTYPE, op, &io, &ws);
        es.sync();
        let got: Vec<T> = io.o.read();
        let same_layout = safe::<T>(rt, op, dims, LayoutKind::Bnhd, &host, &io.bias_host);
        assert!(
            bytemuck::cast_slice::<T, u8>(&got) == bytemuck::cast_slice::<T, u8>(&same_layout),
            "{op:?} {} {dims}: raw on engine buffers != safe API, same layout",
            T::DTYPE
        );
        let other = safe::<T>(rt, op, dims, LayoutKind::Bhnd, &host, &io.bias_host);
        let c = compare::<T>(&gather(&got, &io.lv), &gather(&other, &io.lv));
        println!(
            "{op:?} {} {dims}: raw [B,N,H,D] vs safe [B,H,N,D]: {c}",
            T::DTYPE
        );
        assert!(c.pass(), "{op:?} {} {dims}: {c}", T::DTYPE);
    }
}

#[test]
fn raw_api_on_engine_buffers_equals_safe_api() {
    let Some(rt) = common::gpu("embedding raw vs safe") else {
        return;
    };
    for dims in [
        Dims::new(2, 4, 333, 64),
        Dims::new(1, 3, 40, 48),
        Dims::new(2, 2, 7, 80),
    ] {
        raw_vs_safe::<f32>(&rt, dims, 100);
        raw_vs_safe::<f16>(&rt, dims, 200);
    }
}

#[test]
fn graph_capture_and_replay_equal_eager() {
    let Some(rt) = common::gpu("embedding graph capture") else {
        return;
    };
    rt.load_all().unwrap();
    let dims = Dims::new(2, 4, 1000, 64);
    let es = EngineStream::new(&rt);
    let s = &es.stream;
    let ops = ops(dims.n);
    // One workspace for all the ops: they run one after another on one stream. The AFT biases
    // are allocated with the layers, before the capture.
    let ws = EngineBuf::zeroed(&rt, max_workspace(&ops, dims));
    let layers: Vec<(Op, Io, [Vec<f16>; 3])> = ops
        .iter()
        .enumerate()
        .map(|(i, &op)| {
            let (io, host) = Io::new::<f16>(&rt, op, dims, 300 + i as u64);
            (op, io, host)
        })
        .collect();

    let eager = |layers: &[(Op, Io, [Vec<f16>; 3])]| -> Vec<Vec<f16>> {
        for (op, io, _) in layers {
            io.poison::<f16>();
            queue_raw(&rt, s, DType::F16, *op, io, &ws);
        }
        es.sync();
        layers.iter().map(|(_, io, _)| io.o.read()).collect()
    };
    let want = eager(&layers);

    for (_, io, _) in &layers {
        io.poison::<f16>();
    }
    s.begin_capture(CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_THREAD_LOCAL)
        .unwrap();
    for (op, io, _) in &layers {
        queue_raw(&rt, s, DType::F16, *op, io, &ws);
    }
    let graph = s
        .end_capture(CUgraphInstantiate_flags(0))
        .unwrap()
        .expect("a captured graph");
    es.sync();
    for (_, io, _) in &layers {
        assert!(
            io.o.read::<f16>().iter().all(|x| x.is_nan()),
            "capturing must not run anything"
        );
    }
    for replay in 0..3 {
        graph.launch().unwrap();
        es.sync();
        let got: Vec<Vec<f16>> = layers.iter().map(|(_, io, _)| io.o.read()).collect();
        assert!(got == want, "replay {replay} != eager");
    }

    // New inputs in the same buffers: the graph reads them (what an engine's decode loop does).
    let mut rng = Rng::new(999);
    for (_, io, _) in &layers {
        io.q.write(&common::random::<f16>(&mut rng, &io.lq));
        io.v.write(&common::random::<f16>(&mut rng, &io.lv));
        io.poison::<f16>();
    }
    graph.launch().unwrap();
    es.sync();
    let replayed: Vec<Vec<f16>> = layers.iter().map(|(_, io, _)| io.o.read()).collect();
    let want = eager(&layers);
    assert!(replayed == want, "replay on new inputs != eager");
    drop(graph);
    println!(
        "graph capture: {} ops captured on an engine stream, replays == eager (bitwise)",
        layers.len()
    );
}

#[test]
fn two_threads_on_two_streams_equal_serial() {
    let Some(rt) = common::gpu("embedding two threads") else {
        return;
    };
    let dims = Dims::new(2, 8, 2048, 64);
    let ops = ops(dims.n);
    let ws_bytes = max_workspace(&ops, dims);
    let sets: Vec<Vec<Io>> = (0..2)
        .map(|t| {
            ops.iter()
                .enumerate()
                .map(|(i, &op)| Io::new::<f16>(&rt, op, dims, 500 + 100 * t + i as u64).0)
                .collect()
        })
        .collect();

    // Serial: one stream, both sets.
    let serial: Vec<Vec<Vec<f16>>> = {
        let es = EngineStream::new(&rt);
        let ws = EngineBuf::zeroed(&rt, ws_bytes);
        sets.iter()
            .map(|set| {
                for (&op, io) in ops.iter().zip(set) {
                    queue_raw(&rt, &es.stream, DType::F16, op, io, &ws);
                }
                es.sync();
                set.iter().map(|io| io.o.read()).collect()
            })
            .collect()
    };

    for set in &sets {
        for io in set {
            io.poison::<f16>();
        }
    }
    // Concurrent: one thread per set, each with its own stream and workspace, several rounds.
    let results: Vec<Vec<Vec<Vec<f16>>>> = std::thread::scope(|scope| {
        let handles: Vec<_> = sets
            .iter()
            .map(|set| {
                let rt = rt.clone();
                let ops = &ops;
                scope.spawn(move || {
                    let es = EngineStream::new(&rt);
                    let ws = EngineBuf::zeroed(&rt, ws_bytes);
                    (0..4)
                        .map(|_| {
                            for (&op, io) in ops.iter().zip(set) {
                                queue_raw(&rt, &es.stream, DType::F16, op, io, &ws);
                            }
                            es.sync();
                            set.iter().map(|io| io.o.read()).collect()
                        })
                        .collect()
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    for (t, rounds) in results.iter().enumerate() {
        for (r, got) in rounds.iter().enumerate() {
            assert!(*got == serial[t], "thread {t} round {r} != serial run");
        }
    }
    println!("two threads, two streams, 4 rounds each: identical to the serial run");
}

#[test]
fn borrowed_stream_of_another_context_is_refused() {
    let Some(rt) = common::gpu("embedding foreign stream") else {
        return;
    };
    // A non-primary context's stream must be refused, and the wrapper never destroys a stream.
    let other = cudarc::driver::CudaContext::new_non_primary(0, 0).unwrap();
    other.bind_to_thread().unwrap();
    let raw = result::stream::create(result::stream::StreamKind::NonBlocking).unwrap();
    // SAFETY: `raw` is live for the call.
    let err = unsafe { borrow_stream(&rt, raw) }.expect_err("refused");
    assert_eq!(err.argument(), Some("stream"), "{err}");
    // SAFETY: our own stream in `other`, still current.
    unsafe { result::stream::destroy(raw) }.unwrap();
    drop(other);

    let es = EngineStream::new(&rt);
    drop(es.stream.clone()); // dropping a wrapper leaves the stream alive
    es.sync();
}
