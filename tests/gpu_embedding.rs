//! Embedding in an engine (issue 8), through the raw Rust layer: buffers allocated outside sofa
//! (`cuMemAlloc`), a stream created outside sofa and borrowed, engine layout `[B,N,H,D]`.
//! Raw == safe API, CUDA graph capture + replay == eager, two threads on two streams == serial.
//! Skips (with a SKIP line) without a device.

mod common;

use cudarc::driver::sys::{self, CUgraphInstantiate_flags, CUstreamCaptureMode};
use cudarc::driver::{result, CudaStream};
use half::f16;
use sofa::ops::cosformer::{self, CosformerParams};
use sofa::ops::{sima, RawTensor, TensorMut, TensorRef};
use sofa::reference::{gather, Rng};
use sofa::runtime::stream::borrow_stream;
use sofa::verify::compare;
use sofa::{DType, Dims, Element, Layout, LayoutKind, Runtime};
use std::sync::Arc;

/// Device memory the "engine" owns: plain `cuMemAlloc`, freed on drop.
struct EngineBuf {
    ptr: u64,
    bytes: usize,
}

impl EngineBuf {
    fn zeroed(rt: &Runtime, bytes: usize) -> Self {
        rt.context().bind_to_thread().unwrap();
        // SAFETY: plain allocation in the current (primary) context.
        let ptr = unsafe { result::malloc_sync(bytes.max(1)) }.unwrap();
        // SAFETY: `ptr` holds `bytes` bytes.
        unsafe { result::memset_d8_sync(ptr, 0, bytes.max(1)) }.unwrap();
        EngineBuf { ptr, bytes }
    }

    fn from_host<T: Element>(rt: &Runtime, host: &[T]) -> Self {
        let b = Self::zeroed(rt, std::mem::size_of_val(host));
        b.write(host);
        b
    }

    fn write<T: Element>(&self, host: &[T]) {
        assert_eq!(std::mem::size_of_val(host), self.bytes);
        // SAFETY: the buffer holds exactly `host`'s bytes; synchronous copy.
        unsafe { result::memcpy_htod_sync(self.ptr, host) }.unwrap();
    }

    fn read<T: Element>(&self) -> Vec<T> {
        let mut host = vec![T::default(); self.bytes / std::mem::size_of::<T>()];
        // SAFETY: the buffer holds `host`'s bytes; synchronous copy.
        unsafe { result::memcpy_dtoh_sync(&mut host, self.ptr) }.unwrap();
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
}

impl Io {
    fn new<T: Element>(rt: &Runtime, dims: Dims, seed: u64) -> (Self, [Vec<T>; 3]) {
        let lq = Layout::of_kind(dims, LayoutKind::Bnhd);
        let lv = lq;
        let mut rng = Rng::new(seed);
        let host = [
            common::random::<T>(&mut rng, &lq),
            common::random::<T>(&mut rng, &lq),
            common::random::<T>(&mut rng, &lv),
        ];
        let io = Io {
            lq,
            lv,
            q: EngineBuf::from_host(rt, &host[0]),
            k: EngineBuf::from_host(rt, &host[1]),
            v: EngineBuf::from_host(rt, &host[2]),
            o: EngineBuf::from_host(rt, &common::poisoned::<T>(&lv)),
        };
        (io, host)
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
}

fn ops() -> [Op; 3] {
    [
        Op::Sima,
        Op::Cos(CosformerParams::default()),
        Op::Cos(CosformerParams {
            causal: true,
            ..Default::default()
        }),
    ]
}

fn workspace_bytes(op: Op, dims: Dims) -> usize {
    match op {
        Op::Sima => sima::workspace_bytes(dims, dims.d).unwrap(),
        Op::Cos(p) => cosformer::workspace_bytes(dims, dims.n, dims.d, &p).unwrap(),
    }
}

/// Queues `op` on raw pointers: what an engine does.
fn queue_raw(rt: &Runtime, s: &CudaStream, dtype: DType, op: Op, io: &Io, ws: &EngineBuf) {
    let [q, k, v, o] = io.raw();
    // SAFETY: engine buffers of this context covering each layout; `o` is its own buffer; the
    // workspace holds `ws.bytes` bytes; everything outlives the synchronization that follows.
    unsafe {
        match op {
            Op::Sima => sima::forward_raw(rt, s, dtype, q, k, v, o, ws.ptr, ws.bytes),
            Op::Cos(p) => cosformer::forward_raw(rt, s, &p, dtype, q, k, v, o, ws.ptr, ws.bytes),
        }
    }
    .unwrap();
}

/// The safe API on cudarc buffers with the given layout kind; returns o gathered to f64.
fn safe<T: Element>(rt: &Runtime, op: Op, dims: Dims, kind: LayoutKind, h: &[Vec<T>; 3]) -> Vec<T> {
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
    let mut o = s.clone_htod(&common::poisoned::<T>(&l)).unwrap();
    let r = |data| TensorRef { data, layout: l };
    let out = TensorMut {
        data: &mut o,
        layout: l,
    };
    match op {
        Op::Sima => sima::forward(rt, &s, r(&q), r(&k), r(&v), out, None),
        Op::Cos(p) => cosformer::forward(rt, &s, &p, r(&q), r(&k), r(&v), out, None),
    }
    .unwrap();
    let got = s.clone_dtoh(&o).unwrap();
    // Back to engine layout for comparison.
    let mut back = vec![T::default(); src.span().unwrap()];
    sofa::reference::scatter(&gather(&got, &l), &src, &mut back);
    back
}

fn raw_vs_safe<T: Element>(rt: &Arc<Runtime>, dims: Dims, seed: u64) {
    let es = EngineStream::new(rt);
    for (i, op) in ops().into_iter().enumerate() {
        let (io, host) = Io::new::<T>(rt, dims, seed + i as u64);
        let ws = EngineBuf::zeroed(rt, workspace_bytes(op, dims));
        queue_raw(rt, &es.stream, T::DTYPE, op, &io, &ws);
        es.sync();
        let got: Vec<T> = io.o.read();
        let same_layout = safe::<T>(rt, op, dims, LayoutKind::Bnhd, &host);
        assert!(
            bytemuck::cast_slice::<T, u8>(&got) == bytemuck::cast_slice::<T, u8>(&same_layout),
            "{op:?} {} {dims}: raw on engine buffers != safe API, same layout",
            T::DTYPE
        );
        let other = safe::<T>(rt, op, dims, LayoutKind::Bhnd, &host);
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
    // One workspace for all three ops: they run one after another on one stream.
    let ws_bytes = ops()
        .iter()
        .map(|&op| workspace_bytes(op, dims))
        .max()
        .unwrap();
    let ws = EngineBuf::zeroed(&rt, ws_bytes);
    let layers: Vec<(Op, Io, [Vec<f16>; 3])> = ops()
        .into_iter()
        .enumerate()
        .map(|(i, op)| {
            let (io, host) = Io::new::<f16>(&rt, dims, 300 + i as u64);
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
    println!("graph capture: 3 ops captured on an engine stream, replays == eager (bitwise)");
}

#[test]
fn two_threads_on_two_streams_equal_serial() {
    let Some(rt) = common::gpu("embedding two threads") else {
        return;
    };
    let dims = Dims::new(2, 8, 2048, 64);
    let ws_bytes = ops()
        .iter()
        .map(|&op| workspace_bytes(op, dims))
        .max()
        .unwrap();
    let sets: Vec<Vec<Io>> = (0..2)
        .map(|t| {
            ops()
                .iter()
                .enumerate()
                .map(|(i, _)| Io::new::<f16>(&rt, dims, 500 + 10 * t + i as u64).0)
                .collect()
        })
        .collect();

    // Serial: one stream, both sets.
    let serial: Vec<Vec<Vec<f16>>> = {
        let es = EngineStream::new(&rt);
        let ws = EngineBuf::zeroed(&rt, ws_bytes);
        sets.iter()
            .map(|set| {
                for (op, io) in ops().into_iter().zip(set) {
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
                scope.spawn(move || {
                    let es = EngineStream::new(&rt);
                    let ws = EngineBuf::zeroed(&rt, ws_bytes);
                    (0..4)
                        .map(|_| {
                            for (op, io) in ops().into_iter().zip(set) {
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
