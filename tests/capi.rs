//! The C entry points, called as a C program would (cargo feature `capi`). Without a device:
//! every entry point answers (no crash) and those that need a device say SOFA_STATUS_NO_DEVICE.
//! With one: ops through C equal the safe API, decode state, typed errors, graph capture.

mod common;

use sofa::capi::*;
use std::ffi::{c_void, CStr};
use std::ptr::{null, null_mut};

fn last_error() -> String {
    // SAFETY: sofa_last_error returns a NUL-terminated thread-local string.
    unsafe { CStr::from_ptr(sofa_last_error()) }
        .to_string_lossy()
        .into_owned()
}

fn has_device() -> bool {
    sofa::runtime::probe().is_ok()
}

#[test]
fn version_and_names() {
    // SAFETY: static NUL-terminated strings.
    let v = unsafe { CStr::from_ptr(sofa_version()) };
    assert_eq!(v.to_str().unwrap(), env!("CARGO_PKG_VERSION"));
    assert_eq!(sofa_abi_version(), SOFA_ABI_VERSION);
    let name = |s: i32| {
        unsafe { CStr::from_ptr(sofa_status_name(s)) }
            .to_str()
            .unwrap()
    };
    assert_eq!(name(SofaStatus::Ok as i32), "SOFA_STATUS_OK");
    assert_eq!(name(SofaStatus::NoDevice as i32), "SOFA_STATUS_NO_DEVICE");
    assert_eq!(name(SofaStatus::Internal as i32), "SOFA_STATUS_INTERNAL");
    assert_eq!(name(-1), "SOFA_STATUS_UNKNOWN");
    assert_eq!(name(99), "SOFA_STATUS_UNKNOWN");
    assert_eq!(SofaStatus::Ok as i32, 0);
}

#[test]
fn pure_queries_need_no_device() {
    let mut bytes = usize::MAX;
    // SAFETY: valid output pointers.
    unsafe {
        assert_eq!(
            sofa_sima_workspace_bytes(2, 3, 1000, 64, 64, &mut bytes),
            SofaStatus::Ok
        );
        assert_eq!(
            bytes,
            sofa::ops::sima::workspace_bytes(sofa::Dims::new(2, 3, 1000, 64), 64).unwrap()
        );
        assert_eq!(
            sofa_sima_workspace_bytes(2, 3, 1000, 64, 64, null_mut()),
            SofaStatus::InvalidArgument
        );
        assert!(last_error().contains("bytes"), "{}", last_error());
        assert_eq!(
            sofa_sima_workspace_bytes(2, -3, 1000, 64, 64, &mut bytes),
            SofaStatus::InvalidShape
        );
        assert!(last_error().contains("H = -3"), "{}", last_error());
        assert_eq!(
            sofa_sima_workspace_bytes(2, 3, 1000, 300, 64, &mut bytes),
            SofaStatus::InvalidShape
        );
        assert_eq!(bytes, 0, "a failed query writes 0");

        let mut p = sofa_cosformer_params_default();
        assert_eq!((p.m, p.causal, p.relu, p.eps), (0, 0, 1, 1e-6));
        assert_eq!(
            sofa_cosformer_workspace_bytes(1, 2, 100, 120, 32, 48, &p, &mut bytes),
            SofaStatus::Ok
        );
        let want = sofa::ops::cosformer::workspace_bytes(
            sofa::Dims::new(1, 2, 100, 32),
            120,
            48,
            &Default::default(),
        )
        .unwrap();
        assert_eq!(bytes, want);
        assert_eq!(
            sofa_cosformer_workspace_bytes(1, 2, 100, 120, 32, 48, null(), &mut bytes),
            SofaStatus::InvalidArgument
        );
        p.causal = 1; // needs N = S
        assert_eq!(
            sofa_cosformer_workspace_bytes(1, 2, 100, 120, 32, 48, &p, &mut bytes),
            SofaStatus::InvalidArgument
        );
        assert!(last_error().contains("causal"), "{}", last_error());
        p.causal = 0;
        p.m = -5;
        assert_eq!(
            sofa_cosformer_workspace_bytes(1, 2, 100, 120, 32, 48, &p, &mut bytes),
            SofaStatus::InvalidArgument
        );
        // SOFT and AFT.
        let sp = sofa_soft_params_default();
        assert_eq!((sp.m, sp.tied, sp.newton_iters), (64, 1, 20));
        assert_eq!(
            sofa_soft_workspace_bytes(1, 2, 1000, 32, 32, &sp, &mut bytes),
            SofaStatus::Ok
        );
        let want = sofa::ops::soft::workspace_bytes(
            sofa::Dims::new(1, 2, 1000, 32),
            32,
            &Default::default(),
        )
        .unwrap();
        assert_eq!(bytes, want);
        let bad = SofaSoftParams { m: 0, ..sp };
        assert_eq!(
            sofa_soft_workspace_bytes(1, 2, 1000, 32, 32, &bad, &mut bytes),
            SofaStatus::InvalidArgument
        );
        assert!(last_error().contains("`m`"), "{}", last_error());
        // The Newton pseudo-inverse: its workspace query is the multi-launch bound.
        assert_eq!(
            sofa_soft_newton_workspace_bytes(16, 64, &sp, &mut bytes),
            SofaStatus::Ok
        );
        assert_eq!(bytes, 3 * 16 * 64 * 64 * 4);
        for (batch, m, arg) in [
            (16, 257, "`m`"),
            (16, 0, "`m`"),
            (0, 8, "`batch`"),
            (-1, 8, "`batch`"),
        ] {
            assert_eq!(
                sofa_soft_newton_workspace_bytes(batch, m, &sp, &mut bytes),
                SofaStatus::InvalidArgument
            );
            assert!(last_error().contains(arg), "{}", last_error());
        }
        let no_iters = SofaSoftParams {
            newton_iters: 0,
            ..sp
        };
        assert_eq!(
            sofa_soft_newton_workspace_bytes(16, 64, &no_iters, &mut bytes),
            SofaStatus::InvalidArgument
        );
        assert!(last_error().contains("newton_iters"), "{}", last_error());
        let mut ap = sofa_aft_params_default();
        ap.variant = SOFA_AFT_LOCAL;
        let mut len = 0usize;
        assert_eq!(sofa_aft_bias_len(100, 3, &ap, &mut len), SofaStatus::Ok);
        assert_eq!(len, 100 * 127);
        ap.variant = SOFA_AFT_CONV;
        assert_eq!(sofa_aft_bias_len(100, 3, &ap, &mut len), SofaStatus::Ok);
        assert_eq!(len, 3 * 127);
        assert_eq!(
            sofa_aft_workspace_bytes(1, 3, 100, 48, &ap, &mut bytes),
            SofaStatus::Ok
        );
        let want = sofa::ops::aft::workspace_bytes(
            sofa::Dims::new(1, 3, 100, 48),
            sofa::ops::aft::Variant::Conv { window: 64 },
            &Default::default(),
        )
        .unwrap();
        assert_eq!(bytes, want);
        ap.window = 0;
        assert_eq!(
            sofa_aft_bias_len(100, 3, &ap, &mut len),
            SofaStatus::InvalidArgument
        );
        assert!(last_error().contains("window"), "{}", last_error());
        ap.variant = 9;
        assert_eq!(
            sofa_aft_workspace_bytes(1, 3, 100, 48, &ap, &mut bytes),
            SofaStatus::InvalidArgument
        );
        assert!(last_error().contains("variant"), "{}", last_error());

        assert_eq!(
            sofa_sima_workspace_bytes(1, 1, 8, 8, 8, &mut bytes),
            SofaStatus::Ok
        );
        assert_eq!(last_error(), "", "a successful call clears the last error");
    }
}

#[test]
fn tensor_descriptors() {
    let p = 0x1000 as *mut c_void;
    let t = sofa_tensor_bhnd(p, 2, 3, 5, 7);
    assert_eq!((t.b, t.h, t.n, t.d), (2, 3, 5, 7));
    assert_eq!((t.stride_b, t.stride_h, t.stride_n), (105, 35, 7));
    let t = sofa_tensor_bnhd(p, 2, 5, 3, 7);
    assert_eq!((t.b, t.h, t.n, t.d), (2, 3, 5, 7));
    assert_eq!((t.stride_b, t.stride_h, t.stride_n), (105, 7, 21));
    assert_eq!(t.data, p);
    let t = sofa_tensor_bhnd(p, i64::MAX, i64::MAX, i64::MAX, i64::MAX);
    assert_eq!(t.stride_b, i64::MAX, "saturates instead of overflowing");
}

/// Every entry point that needs a device, called as an engine would after a failed
/// `sofa_runtime_create` (NULL handles), plus the create calls themselves.
#[test]
fn every_entry_point_without_a_device() {
    if has_device() {
        eprintln!("SKIP every_entry_point_without_a_device: a device is present");
        return;
    }
    let want = SofaStatus::NoDevice;
    let buf = 0x10000 as *mut c_void;
    let t = sofa_tensor_bhnd(buf, 1, 1, 4, 8);
    let p = SofaCosformerParams {
        m: 16,
        ..sofa_cosformer_params_default()
    };
    let mut count = -1;
    let mut rt: *mut SofaRuntime = std::ptr::dangling_mut();
    let mut state: *mut SofaCosformerState = std::ptr::dangling_mut();
    let (mut dev, mut pos, mut bytes, mut data) = (-1, -1, 7usize, null_mut());
    // SAFETY: every pointer is NULL or valid; handles are NULL.
    let results = unsafe {
        [
            ("device_count", sofa_device_count(&mut count)),
            ("runtime_create", sofa_runtime_create(0, &mut rt)),
            ("runtime_device", sofa_runtime_device(null(), &mut dev)),
            ("runtime_load_kernels", sofa_runtime_load_kernels(null())),
            (
                "sima_forward",
                sofa_sima_forward(
                    null(),
                    null_mut(),
                    SOFA_DTYPE_F32,
                    &t,
                    &t,
                    &t,
                    &t,
                    buf,
                    1 << 20,
                ),
            ),
            (
                "cosformer_forward",
                sofa_cosformer_forward(
                    null(),
                    null_mut(),
                    &p,
                    SOFA_DTYPE_F32,
                    &t,
                    &t,
                    &t,
                    &t,
                    buf,
                    1 << 20,
                ),
            ),
            (
                "soft_attention",
                sofa_soft_attention(
                    null(),
                    null_mut(),
                    &sofa_soft_params_default(),
                    SOFA_DTYPE_F32,
                    &t,
                    &t,
                    &t,
                    &t,
                    null(),
                    0,
                    buf,
                    1 << 20,
                ),
            ),
            (
                "soft_newton_pinv",
                sofa_soft_newton_pinv(
                    null(),
                    null_mut(),
                    &sofa_soft_params_default(),
                    2,
                    8,
                    buf,
                    buf,
                    null_mut(),
                    0,
                ),
            ),
            (
                "aft_forward",
                sofa_aft_forward(
                    null(),
                    null_mut(),
                    &sofa_aft_params_default(),
                    SOFA_DTYPE_F32,
                    &t,
                    &t,
                    &t,
                    &t,
                    null(),
                    0,
                    buf,
                    1 << 20,
                ),
            ),
            (
                "cosformer_state_create",
                sofa_cosformer_state_create(null(), null_mut(), 1, 1, 8, 8, &p, &mut state),
            ),
            (
                "cosformer_state_position",
                sofa_cosformer_state_position(null(), &mut pos),
            ),
            (
                "cosformer_state_buffer",
                sofa_cosformer_state_buffer(null(), &mut data, &mut bytes),
            ),
            (
                "cosformer_state_workspace_bytes",
                sofa_cosformer_state_workspace_bytes(null(), 4, &mut bytes),
            ),
            (
                "cosformer_state_prefill",
                sofa_cosformer_state_prefill(
                    null_mut(),
                    null_mut(),
                    SOFA_DTYPE_F32,
                    &t,
                    &t,
                    &t,
                    &t,
                    buf,
                    1 << 20,
                ),
            ),
            (
                "cosformer_state_step",
                sofa_cosformer_state_step(null_mut(), null_mut(), SOFA_DTYPE_F32, &t, &t, &t, &t),
            ),
        ]
    };
    for (name, status) in results {
        assert_eq!(status, want, "sofa_{name}");
    }
    assert_eq!(count, 0);
    assert!(rt.is_null(), "a failed create writes NULL");
    assert!(state.is_null(), "a failed create writes NULL");
    // Destroying NULL handles is a no-op.
    // SAFETY: NULL handles.
    unsafe {
        assert_eq!(sofa_runtime_destroy(null_mut()), SofaStatus::Ok);
        assert_eq!(sofa_cosformer_state_destroy(null_mut()), SofaStatus::Ok);
        // NULL output pointers are refused before anything else.
        assert_eq!(
            sofa_runtime_create(0, null_mut()),
            SofaStatus::InvalidArgument
        );
        assert_eq!(sofa_device_count(null_mut()), SofaStatus::InvalidArgument);
    }
    eprintln!("no device: every C entry point returned SOFA_STATUS_NO_DEVICE");
}

// ---------------------------------------------------------------------------------------------
// With a device.

mod gpu {
    use super::*;
    use cudarc::driver::{CudaSlice, CudaStream, DevicePtr};
    use sofa::ops::cosformer::{self, CosformerParams, State};
    use sofa::ops::{sima, TensorMut, TensorRef};
    use sofa::reference::Rng;
    use sofa::{Layout, LayoutKind, Runtime};
    use std::sync::Arc;

    pub struct Ctx {
        pub safe: Arc<Runtime>,
        pub c: *mut SofaRuntime,
        pub stream: Arc<CudaStream>,
    }

    impl Drop for Ctx {
        fn drop(&mut self) {
            // SAFETY: made by sofa_runtime_create; all work is synchronized by the tests.
            assert_eq!(unsafe { sofa_runtime_destroy(self.c) }, SofaStatus::Ok);
        }
    }

    pub fn setup(test: &str) -> Option<Ctx> {
        let safe = common::gpu(test)?;
        let mut c = null_mut();
        // SAFETY: valid output pointer.
        let st = unsafe { sofa_runtime_create(0, &mut c) };
        assert_eq!(st, SofaStatus::Ok, "{}", last_error());
        let stream = safe.new_stream().unwrap();
        Some(Ctx { safe, c, stream })
    }

    pub fn addr<T>(s: &CudaSlice<T>, stream: &CudaStream) -> *mut c_void {
        s.device_ptr(stream).0 as *mut c_void
    }

    pub fn desc(p: *mut c_void, l: &Layout) -> SofaTensor {
        SofaTensor {
            data: p,
            b: l.dims.b as i64,
            h: l.dims.h as i64,
            n: l.dims.n as i64,
            d: l.dims.d as i64,
            stride_b: l.strides.batch as i64,
            stride_h: l.strides.head as i64,
            stride_n: l.strides.seq as i64,
        }
    }

    /// Descriptors of q, k, v (of `i`) and o, all of layout `l`.
    pub fn descs(i: &Inputs, o: &CudaSlice<f32>, l: &Layout, s: &CudaStream) -> [SofaTensor; 4] {
        [&i.q, &i.k, &i.v, o].map(|buf| desc(addr(buf, s), l))
    }

    pub fn cs(s: &CudaStream) -> SofaStream {
        s.cu_stream() as SofaStream
    }

    pub struct Inputs {
        pub lq: Layout,
        pub lv: Layout,
        pub q: CudaSlice<f32>,
        pub k: CudaSlice<f32>,
        pub v: CudaSlice<f32>,
    }

    pub fn inputs(x: &Ctx, lq: Layout, lv: Layout, seed: u64) -> Inputs {
        let mut rng = Rng::new(seed);
        let s = &x.stream;
        Inputs {
            lq,
            lv,
            q: s.clone_htod(&common::random::<f32>(&mut rng, &lq)).unwrap(),
            k: s.clone_htod(&common::random::<f32>(&mut rng, &lq)).unwrap(),
            v: s.clone_htod(&common::random::<f32>(&mut rng, &lv)).unwrap(),
        }
    }

    pub fn sima_safe(x: &Ctx, i: &Inputs) -> Vec<f32> {
        let mut o = x
            .stream
            .clone_htod(&common::poisoned::<f32>(&i.lv))
            .unwrap();
        let r = |d| TensorRef {
            data: d,
            layout: i.lq,
        };
        sima::forward(
            &x.safe,
            &x.stream,
            r(&i.q),
            r(&i.k),
            TensorRef {
                data: &i.v,
                layout: i.lv,
            },
            TensorMut {
                data: &mut o,
                layout: i.lv,
            },
            None,
        )
        .unwrap();
        x.stream.clone_dtoh(&o).unwrap()
    }

    pub fn kind() -> LayoutKind {
        LayoutKind::Bnhd
    }

    pub use cosformer::workspace_bytes as cos_ws;
    pub type Params = CosformerParams;
    pub type SafeState = State;
}

#[test]
fn sima_and_cosformer_through_c_equal_the_safe_api() {
    let Some(x) = gpu::setup("capi ops") else {
        return;
    };
    let s = &x.stream;
    let dims = sofa::Dims::new(2, 3, 300, 64);
    let lq = sofa::Layout::of_kind(dims, gpu::kind());
    let i = gpu::inputs(&x, lq, lq, 11);
    let want = gpu::sima_safe(&x, &i);

    let mut bytes = 0;
    // SAFETY: valid output pointer.
    unsafe { sofa_sima_workspace_bytes(2, 3, 300, 64, 64, &mut bytes) };
    let ws = x.safe.alloc::<u8>(s, bytes).unwrap();
    let o = s.clone_htod(&common::poisoned::<f32>(&lq)).unwrap();
    let (q, k, v, od, w) = (
        gpu::desc(gpu::addr(&i.q, s), &lq),
        gpu::desc(gpu::addr(&i.k, s), &lq),
        gpu::desc(gpu::addr(&i.v, s), &lq),
        gpu::desc(gpu::addr(&o, s), &lq),
        gpu::addr(&ws, s),
    );
    // SAFETY: live buffers covering each layout, synchronized before reading.
    let st =
        unsafe { sofa_sima_forward(x.c, gpu::cs(s), SOFA_DTYPE_F32, &q, &k, &v, &od, w, bytes) };
    assert_eq!(st, SofaStatus::Ok, "{}", last_error());
    assert_eq!(
        s.clone_dtoh(&o).unwrap(),
        want,
        "C SimA == safe SimA (bitwise)"
    );

    // Typed errors, nothing launched.
    let bad = gpu::desc(
        gpu::addr(&o, s),
        &sofa::Layout::of_kind(dims.with_d(32), gpu::kind()),
    );
    // SAFETY: as above; every call is refused before a launch.
    unsafe {
        let f = |q: &SofaTensor, o: &SofaTensor, w, n, dt| {
            sofa_sima_forward(x.c, gpu::cs(s), dt, q, &k, &v, o, w, n)
        };
        assert_eq!(
            f(&q, &bad, w, bytes, SOFA_DTYPE_F32),
            SofaStatus::InvalidShape
        );
        assert!(last_error().contains("`o`"), "{}", last_error());
        assert_eq!(
            f(&q, &od, w, bytes - 4, SOFA_DTYPE_F32),
            SofaStatus::BufferTooSmall
        );
        assert_eq!(
            f(&q, &od, null_mut(), bytes, SOFA_DTYPE_F32),
            SofaStatus::InvalidArgument
        );
        assert_eq!(f(&q, &od, w, bytes, 7), SofaStatus::InvalidArgument);
        assert!(last_error().contains("dtype"), "{}", last_error());
        let mut nulldata = q;
        nulldata.data = null_mut();
        assert_eq!(
            f(&nulldata, &od, w, bytes, SOFA_DTYPE_F32),
            SofaStatus::InvalidArgument
        );
        let mut neg = q;
        neg.stride_n = -64;
        assert_eq!(
            f(&neg, &od, w, bytes, SOFA_DTYPE_F32),
            SofaStatus::InvalidShape
        );
        assert_eq!(
            sofa_sima_forward(
                x.c,
                gpu::cs(s),
                SOFA_DTYPE_F32,
                null(),
                &k,
                &v,
                &od,
                w,
                bytes
            ),
            SofaStatus::InvalidArgument
        );
        assert_eq!(
            sofa_sima_forward(
                null(),
                gpu::cs(s),
                SOFA_DTYPE_F32,
                &q,
                &k,
                &v,
                &od,
                w,
                bytes
            ),
            SofaStatus::InvalidArgument,
            "NULL runtime with a device present"
        );
    }

    // cosFormer, causal, through C vs the safe API.
    let params = gpu::Params {
        causal: true,
        ..Default::default()
    };
    let cp = SofaCosformerParams {
        causal: 1,
        ..sofa_cosformer_params_default()
    };
    let need = gpu::cos_ws(dims, 300, 64, &params).unwrap();
    let ws = x.safe.alloc::<u8>(s, need).unwrap();
    let mut o_safe = s.clone_htod(&common::poisoned::<f32>(&lq)).unwrap();
    sofa::ops::cosformer::forward(
        &x.safe,
        s,
        &params,
        sofa::ops::TensorRef {
            data: &i.q,
            layout: lq,
        },
        sofa::ops::TensorRef {
            data: &i.k,
            layout: lq,
        },
        sofa::ops::TensorRef {
            data: &i.v,
            layout: lq,
        },
        sofa::ops::TensorMut {
            data: &mut o_safe,
            layout: lq,
        },
        None,
    )
    .unwrap();
    let o = s.clone_htod(&common::poisoned::<f32>(&lq)).unwrap();
    let od = gpu::desc(gpu::addr(&o, s), &lq);
    // SAFETY: live buffers covering each layout.
    let st = unsafe {
        sofa_cosformer_forward(
            x.c,
            gpu::cs(s),
            &cp,
            SOFA_DTYPE_F32,
            &q,
            &k,
            &v,
            &od,
            gpu::addr(&ws, s),
            need,
        )
    };
    assert_eq!(st, SofaStatus::Ok, "{}", last_error());
    assert_eq!(
        s.clone_dtoh(&o).unwrap(),
        s.clone_dtoh(&o_safe).unwrap(),
        "C cosFormer == safe cosFormer (bitwise)"
    );
}

#[test]
fn decode_state_through_c_equals_the_safe_state() {
    let Some(x) = gpu::setup("capi decode state") else {
        return;
    };
    let s = &x.stream;
    let (b, h, d, n0, m) = (2usize, 3usize, 32usize, 70usize, 128usize);
    let params = gpu::Params {
        m: Some(m),
        causal: true,
        ..Default::default()
    };
    let cp = SofaCosformerParams {
        m: m as i64,
        causal: 1,
        ..sofa_cosformer_params_default()
    };
    let lp = sofa::Layout::of_kind(sofa::Dims::new(b, h, n0, d), gpu::kind());
    let l1 = sofa::Layout::of_kind(sofa::Dims::new(b, h, 1, d), gpu::kind());
    let pre = gpu::inputs(&x, lp, lp, 21);
    let steps: Vec<gpu::Inputs> = (0..3).map(|t| gpu::inputs(&x, l1, l1, 30 + t)).collect();

    // Safe state.
    let mut safe = gpu::SafeState::new(&x.safe, s, b, h, d, d, &params).unwrap();
    let mut o = s.clone_htod(&common::poisoned::<f32>(&lp)).unwrap();
    let r = |data, layout| sofa::ops::TensorRef { data, layout };
    safe.prefill(
        &x.safe,
        s,
        r(&pre.q, lp),
        r(&pre.k, lp),
        r(&pre.v, lp),
        sofa::ops::TensorMut {
            data: &mut o,
            layout: lp,
        },
        None,
    )
    .unwrap();
    let mut want = vec![s.clone_dtoh(&o).unwrap()];
    for t in &steps {
        let mut o1 = s.clone_htod(&common::poisoned::<f32>(&l1)).unwrap();
        safe.step(
            &x.safe,
            s,
            r(&t.q, l1),
            r(&t.k, l1),
            r(&t.v, l1),
            sofa::ops::TensorMut {
                data: &mut o1,
                layout: l1,
            },
        )
        .unwrap();
        want.push(s.clone_dtoh(&o1).unwrap());
    }

    // C state.
    let mut st: *mut SofaCosformerState = null_mut();
    // SAFETY: live stream; valid output pointer.
    let rc = unsafe {
        sofa_cosformer_state_create(
            x.c,
            gpu::cs(s),
            b as i64,
            h as i64,
            d as i64,
            d as i64,
            &cp,
            &mut st,
        )
    };
    assert_eq!(rc, SofaStatus::Ok, "{}", last_error());
    let mut bytes = 0;
    // SAFETY: live state; valid output pointer.
    unsafe { sofa_cosformer_state_workspace_bytes(st, n0 as i64, &mut bytes) };
    let ws = x.safe.alloc::<u8>(s, bytes).unwrap();
    let o = s.clone_htod(&common::poisoned::<f32>(&lp)).unwrap();
    let dsc = |sl: &CudaSliceF32, l| gpu::desc(gpu::addr(sl, s), l);
    // SAFETY: live buffers covering each layout, synchronized before reading.
    let rc = unsafe {
        sofa_cosformer_state_prefill(
            st,
            gpu::cs(s),
            SOFA_DTYPE_F32,
            &dsc(&pre.q, &lp),
            &dsc(&pre.k, &lp),
            &dsc(&pre.v, &lp),
            &dsc(&o, &lp),
            gpu::addr(&ws, s),
            bytes,
        )
    };
    assert_eq!(rc, SofaStatus::Ok, "{}", last_error());
    let mut got = vec![s.clone_dtoh(&o).unwrap()];
    for t in &steps {
        let o1 = s.clone_htod(&common::poisoned::<f32>(&l1)).unwrap();
        // SAFETY: as above.
        let rc = unsafe {
            sofa_cosformer_state_step(
                st,
                gpu::cs(s),
                SOFA_DTYPE_F32,
                &dsc(&t.q, &l1),
                &dsc(&t.k, &l1),
                &dsc(&t.v, &l1),
                &dsc(&o1, &l1),
            )
        };
        assert_eq!(rc, SofaStatus::Ok, "{}", last_error());
        got.push(s.clone_dtoh(&o1).unwrap());
    }
    assert_eq!(got, want, "C decode state == safe decode state (bitwise)");
    let (mut pos, mut data, mut nbytes) = (0i64, null_mut(), 0usize);
    // SAFETY: live state; valid output pointers.
    unsafe {
        assert_eq!(sofa_cosformer_state_position(st, &mut pos), SofaStatus::Ok);
        assert_eq!(
            sofa_cosformer_state_buffer(st, &mut data, &mut nbytes),
            SofaStatus::Ok
        );
    }
    assert_eq!(pos as usize, n0 + 3);
    assert!(!data.is_null());
    assert_eq!(nbytes, b * h * (2 * d * d + 2 * d) * 4);
    // SAFETY: the state's buffer holds `nbytes` bytes; synchronized copy.
    let mut host = vec![0f32; nbytes / 4];
    unsafe {
        cudarc::driver::result::memcpy_dtoh_sync(&mut host, data as u64).unwrap();
    }
    assert_eq!(host, safe.to_host(s).unwrap(), "state buffers agree");
    s.synchronize().unwrap();
    // SAFETY: live state, its stream still alive.
    assert_eq!(unsafe { sofa_cosformer_state_destroy(st) }, SofaStatus::Ok);
}

type CudaSliceF32 = cudarc::driver::CudaSlice<f32>;

#[test]
fn c_calls_capture_into_a_cuda_graph() {
    use cudarc::driver::sys::{CUgraphInstantiate_flags, CUstreamCaptureMode};
    let Some(x) = gpu::setup("capi graph capture") else {
        return;
    };
    let s = &x.stream;
    // SAFETY: live runtime.
    assert_eq!(
        unsafe { sofa_runtime_load_kernels(x.c) },
        SofaStatus::Ok,
        "{}",
        last_error()
    );
    let lq = sofa::Layout::of_kind(sofa::Dims::new(1, 4, 512, 64), gpu::kind());
    let i = gpu::inputs(&x, lq, lq, 41);
    let want = gpu::sima_safe(&x, &i);
    let mut bytes = 0;
    // SAFETY: valid output pointer.
    unsafe { sofa_sima_workspace_bytes(1, 4, 512, 64, 64, &mut bytes) };
    let ws = x.safe.alloc::<u8>(s, bytes).unwrap();
    let o = s.clone_htod(&common::poisoned::<f32>(&lq)).unwrap();
    let d = |sl: &CudaSliceF32| gpu::desc(gpu::addr(sl, s), &lq);
    let (q, k, v, od, w) = (d(&i.q), d(&i.k), d(&i.v), d(&o), gpu::addr(&ws, s));
    s.synchronize().unwrap();
    s.begin_capture(CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_THREAD_LOCAL)
        .unwrap();
    // SAFETY: live buffers; the stream is capturing, so nothing runs yet.
    let st =
        unsafe { sofa_sima_forward(x.c, gpu::cs(s), SOFA_DTYPE_F32, &q, &k, &v, &od, w, bytes) };
    let graph = s
        .end_capture(CUgraphInstantiate_flags(0))
        .unwrap()
        .expect("a captured graph");
    assert_eq!(st, SofaStatus::Ok, "{}", last_error());
    assert!(
        s.clone_dtoh(&o).unwrap().iter().all(|x| x.is_nan()),
        "capture ran nothing"
    );
    graph.launch().unwrap();
    graph.launch().unwrap();
    assert_eq!(s.clone_dtoh(&o).unwrap(), want, "replay == eager");
}

#[test]
fn aft_local_through_c_equals_the_safe_api() {
    let Some(x) = gpu::setup("capi aft") else {
        return;
    };
    let s = &x.stream;
    let (b, h, t, d, window) = (2, 3, 300, 48, 16);
    let l = sofa::Layout::of_kind(sofa::Dims::new(b, h, t, d), gpu::kind());
    let i = gpu::inputs(&x, l, l, 13);
    let mut rng = sofa::reference::Rng::new(14);
    let w = s
        .clone_htod(&rng.fill::<f32>(t * (2 * window - 1), -1.0, 1.0))
        .unwrap();
    let variant = sofa::ops::aft::Variant::Local { window };
    let params = sofa::ops::aft::AftParams { causal: true };
    let mut want = s.clone_htod(&common::poisoned::<f32>(&l)).unwrap();
    let r = |data| sofa::ops::TensorRef { data, layout: l };
    sofa::ops::aft::forward(
        &x.safe,
        s,
        variant,
        &params,
        r(&i.q),
        r(&i.k),
        r(&i.v),
        sofa::ops::TensorMut {
            data: &mut want,
            layout: l,
        },
        Some(&w),
        None,
    )
    .unwrap();

    let cp = SofaAftParams {
        variant: SOFA_AFT_LOCAL,
        causal: 1,
        window: window as i64,
    };
    let mut bytes = 0;
    // SAFETY: valid pointers.
    let st = unsafe {
        sofa_aft_workspace_bytes(b as i64, h as i64, t as i64, d as i64, &cp, &mut bytes)
    };
    assert_eq!(st, SofaStatus::Ok, "{}", last_error());
    let ws = x.safe.alloc::<u8>(s, bytes).unwrap();
    let o = s.clone_htod(&common::poisoned::<f32>(&l)).unwrap();
    let [q, k, v, od] = gpu::descs(&i, &o, &l, s);
    // SAFETY: live buffers covering each layout and the band; synchronized before reading.
    let st = unsafe {
        sofa_aft_forward(
            x.c,
            gpu::cs(s),
            &cp,
            SOFA_DTYPE_F32,
            &q,
            &k,
            &v,
            &od,
            gpu::addr(&w, s),
            w.len(),
            gpu::addr(&ws, s),
            bytes,
        )
    };
    assert_eq!(st, SofaStatus::Ok, "{}", last_error());
    assert_eq!(
        s.clone_dtoh(&o).unwrap(),
        s.clone_dtoh(&want).unwrap(),
        "C AFT-local == safe AFT-local (bitwise)"
    );
    // A band of the wrong width is a typed error naming w.
    // SAFETY: as above; nothing is launched.
    let st = unsafe {
        sofa_aft_forward(
            x.c,
            gpu::cs(s),
            &cp,
            SOFA_DTYPE_F32,
            &q,
            &k,
            &v,
            &od,
            gpu::addr(&w, s),
            w.len() - 1,
            gpu::addr(&ws, s),
            bytes,
        )
    };
    assert_eq!(st, SofaStatus::InvalidShape);
    assert!(last_error().contains("`w`"), "{}", last_error());
}

#[test]
fn soft_through_c_equals_the_safe_api() {
    let Some(x) = gpu::setup("capi soft") else {
        return;
    };
    let s = &x.stream;
    // Attention: untied keys, engine layout [B,N,H,D], m = 49 landmarks by AvgPool1d.
    let (b, h, n, d, m) = (2, 3, 300, 32, 49);
    let l = sofa::Layout::of_kind(sofa::Dims::new(b, h, n, d), gpu::kind());
    let i = gpu::inputs(&x, l, l, 21);
    let params = sofa::ops::soft::SoftParams {
        landmarks: sofa::ops::soft::Landmarks::AvgPool1d { m },
        tied: false,
        ..Default::default()
    };
    let mut want = s.clone_htod(&common::poisoned::<f32>(&l)).unwrap();
    let r = |data| sofa::ops::TensorRef { data, layout: l };
    sofa::ops::soft::attention(
        &x.safe,
        s,
        &params,
        r(&i.q),
        Some(r(&i.k)),
        r(&i.v),
        sofa::ops::TensorMut {
            data: &mut want,
            layout: l,
        },
        None,
        None,
    )
    .unwrap();
    let cp = SofaSoftParams {
        m: m as i64,
        tied: 0,
        ..sofa_soft_params_default()
    };
    let mut bytes = 0;
    // SAFETY: valid pointers.
    let st = unsafe {
        sofa_soft_workspace_bytes(
            b as i64, h as i64, n as i64, d as i64, d as i64, &cp, &mut bytes,
        )
    };
    assert_eq!(st, SofaStatus::Ok, "{}", last_error());
    let ws = x.safe.alloc::<u8>(s, bytes).unwrap();
    let o = s.clone_htod(&common::poisoned::<f32>(&l)).unwrap();
    let [q, k, v, od] = gpu::descs(&i, &o, &l, s);
    // SAFETY: live buffers covering each layout; synchronized before reading.
    let st = unsafe {
        sofa_soft_attention(
            x.c,
            gpu::cs(s),
            &cp,
            SOFA_DTYPE_F32,
            &q,
            &k,
            &v,
            &od,
            null(),
            0,
            gpu::addr(&ws, s),
            bytes,
        )
    };
    assert_eq!(st, SofaStatus::Ok, "{}", last_error());
    assert_eq!(
        s.clone_dtoh(&o).unwrap(),
        s.clone_dtoh(&want).unwrap(),
        "C SOFT == safe SOFT (bitwise)"
    );

    // Newton: the one-launch path (m = 64) and the multi-launch one (m = 200).
    for (batch, m) in [(5, 64), (3, 200)] {
        let mut rng = sofa::reference::Rng::new(22 + m as u64);
        // Symmetric positive matrices, as Gaussian-kernel products are.
        let mut a = vec![0f32; batch * m * m];
        for mat in a.chunks_mut(m * m) {
            let g = rng.fill::<f32>(m * m, 0.0, 1.0);
            for r in 0..m {
                for c in 0..m {
                    mat[r * m + c] = 0.5 * (g[r * m + c] + g[c * m + r]);
                }
            }
        }
        let a = s.clone_htod(&a).unwrap();
        let mut want = s.clone_htod(&vec![f32::NAN; batch * m * m]).unwrap();
        sofa::ops::soft::newton_pinv(
            &x.safe,
            s,
            &Default::default(),
            batch,
            m,
            sofa::ops::soft::NewtonPath::Auto,
            &a,
            &mut want,
            None,
        )
        .unwrap();
        let sp = sofa_soft_params_default();
        // SAFETY: valid pointers.
        let st =
            unsafe { sofa_soft_newton_workspace_bytes(batch as i64, m as i64, &sp, &mut bytes) };
        assert_eq!(st, SofaStatus::Ok, "{}", last_error());
        let ws = x.safe.alloc::<u8>(s, bytes.max(4)).unwrap();
        let z = s.clone_htod(&vec![f32::NAN; batch * m * m]).unwrap();
        // SAFETY: live buffers of batch·m·m floats and the queried workspace; synchronized
        // before reading.
        let st = unsafe {
            sofa_soft_newton_pinv(
                x.c,
                gpu::cs(s),
                &sp,
                batch as i64,
                m as i64,
                gpu::addr(&a, s),
                gpu::addr(&z, s),
                gpu::addr(&ws, s),
                bytes,
            )
        };
        assert_eq!(st, SofaStatus::Ok, "m = {m}: {}", last_error());
        assert_eq!(
            s.clone_dtoh(&z).unwrap(),
            s.clone_dtoh(&want).unwrap(),
            "m = {m}: C Newton == safe Newton (bitwise)"
        );
        if m > sofa::ops::soft::NEWTON_SMEM_MAX_M {
            // SAFETY: as above; a workspace one byte short is refused before any launch.
            let st = unsafe {
                sofa_soft_newton_pinv(
                    x.c,
                    gpu::cs(s),
                    &sp,
                    batch as i64,
                    m as i64,
                    gpu::addr(&a, s),
                    gpu::addr(&z, s),
                    gpu::addr(&ws, s),
                    bytes - 1,
                )
            };
            assert_eq!(st, SofaStatus::BufferTooSmall, "m = {m}");
        }
    }
}
