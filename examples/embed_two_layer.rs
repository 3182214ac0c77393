//! Embedding sofa in an engine, through the raw Rust layer: a toy two-layer model whose memory,
//! stream and allocator belong to the "engine", not to sofa.
//!
//! * the engine allocates every buffer once with `cuMemAlloc`, in its own `[B, N, H, D]` layout;
//! * it creates its own stream and lends it to sofa (`runtime::stream::borrow_stream`);
//! * it sizes one workspace for both layers from the `workspace_bytes` queries;
//! * each step: new input → layer 1 (SimA, q = k = v = x) → layer 2 (causal cosFormer, q = k =
//!   h1, v = x), all queued on the engine's stream; the engine synchronizes once per step.
//!
//! The output is checked against the f64 reference. Run: `cargo run --example embed_two_layer`
//! (prints SKIP without a GPU).

use cudarc::driver::{result, sys};
use sofa::ops::cosformer::{self, CosformerParams};
use sofa::ops::{sima, RawTensor};
use sofa::reference::{self, gather, scatter, Qkv, Rng};
use sofa::runtime::stream::borrow_stream;
use sofa::{DType, Dims, Error, Layout, LayoutKind, Runtime};

/// Engine-owned device memory.
struct Buf(u64, usize);

impl Buf {
    fn new(bytes: usize) -> sofa::Result<Self> {
        // SAFETY: plain allocation in the current context (the runtime's primary context).
        Ok(Buf(unsafe { result::malloc_sync(bytes.max(1)) }?, bytes))
    }
}

impl Drop for Buf {
    fn drop(&mut self) {
        // SAFETY: allocated by `malloc_sync`; the stream was synchronized before drop.
        let _ = unsafe { result::free_sync(self.0) };
    }
}

fn main() -> sofa::Result<()> {
    let rt = match Runtime::new(0) {
        Ok(rt) => rt,
        Err(Error::NoDevice(why)) => {
            println!("SKIP embed_two_layer: no CUDA device ({why})");
            return Ok(());
        }
        Err(e) => return Err(e),
    };
    let dims = Dims::new(2, 4, 512, 64);
    let layout = Layout::of_kind(dims, LayoutKind::Bnhd); // the engine's layout
    let elems = layout.span().expect("span");
    let bytes = elems * 4;
    let causal = CosformerParams {
        causal: true,
        ..Default::default()
    };

    // Engine resources, made once.
    rt.context().bind_to_thread()?;
    let raw_stream: sys::CUstream =
        result::stream::create(result::stream::StreamKind::NonBlocking)?;
    // SAFETY: the engine keeps `raw_stream` alive until after the last use of the wrapper.
    let stream = unsafe { borrow_stream(&rt, raw_stream) }?;
    let (x, h1, h2) = (Buf::new(bytes)?, Buf::new(bytes)?, Buf::new(bytes)?);
    let ws_bytes = sima::workspace_bytes(dims, dims.d)?
        .max(cosformer::workspace_bytes(dims, dims.n, dims.d, &causal)?);
    let ws = Buf::new(ws_bytes)?;
    println!(
        "{} | [B,N,H,D] = [{},{},{},{}] f32 | workspace {} KiB, allocated once",
        rt.info().name,
        dims.b,
        dims.n,
        dims.h,
        dims.d,
        ws_bytes / 1024
    );

    let t = |b: &Buf| RawTensor { ptr: b.0, layout };
    let mut rng = Rng::new(7);
    let mut worst = 0.0f64;
    for step in 0..4 {
        let host_x: Vec<f32> = rng.fill(elems, -1.0, 1.0);
        // SAFETY: `x` holds `bytes` bytes; synchronous copy (the engine's input).
        unsafe { result::memcpy_htod_sync(x.0, &host_x) }?;
        // SAFETY: engine buffers of this context that cover `layout`; outputs do not alias the
        // inputs; one workspace of `ws_bytes`, used by one op at a time on one stream; all of it
        // lives until the synchronization below.
        unsafe {
            sima::forward_raw(
                &rt,
                &stream,
                DType::F32,
                t(&x),
                t(&x),
                t(&x),
                t(&h1),
                ws.0,
                ws.1,
            )?;
            cosformer::forward_raw(
                &rt,
                &stream,
                &causal,
                DType::F32,
                t(&h1),
                t(&h1),
                t(&x),
                t(&h2),
                ws.0,
                ws.1,
            )?;
        }
        stream.synchronize()?;
        let mut out = vec![0f32; elems];
        // SAFETY: `h2` holds `bytes` bytes; the stream is synchronized.
        unsafe { result::memcpy_dtoh_sync(&mut out, h2.0) }?;

        // The same two layers in f64.
        let xs = gather(&host_x, &layout);
        let r1 = reference::sima::forward(&xs, &xs, &xs, dims, dims.d);
        // Layer 2 sees layer 1's output rounded to f32, as the GPU does.
        let mut h1_f32 = vec![0f32; elems];
        scatter(&r1, &layout, &mut h1_f32);
        let r1 = gather(&h1_f32, &layout);
        let r2 =
            reference::cosformer::forward(&Qkv::self_attn(&r1, &r1, &xs, dims, dims.d)?, &causal)?;
        let err = reference::rel_frobenius(&gather(&out, &layout), &r2);
        worst = worst.max(err);
        println!("step {step}: two layers queued on the engine's stream, rel err {err:.2e}");
    }
    drop(stream);
    // SAFETY: the engine's own stream, idle after the last synchronize.
    unsafe { result::stream::destroy(raw_stream) }?;
    if worst > 1e-4 {
        println!("FAILED: relative error {worst:.2e} > 1e-4");
        std::process::exit(1);
    }
    println!("ok");
    Ok(())
}
