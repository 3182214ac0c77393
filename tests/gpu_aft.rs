//! AFT on the GPU vs the f64 reference: simple, local, conv and full, non-causal and causal, over
//! odd lengths, windows (1, 2, 64, T, > T) and head dims, every dtype, both layouts; adversarial
//! magnitudes (K and w up to ±60 peaking at different keys); poisoned outputs; determinism;
//! typed errors for bad biases. Skips (with a SKIP line) without a device.

mod common;

use half::{bf16, f16};
use sofa::ops::aft::{self, AftParams, Variant};
use sofa::ops::{TensorMut, TensorRef};
use sofa::reference::aft::Bias;
use sofa::reference::{self, gather, Qkv, Rng};
use sofa::verify::{compare, Comparison};
use sofa::{Dims, Element, Error, Layout, LayoutKind, Runtime};

#[derive(Clone, Copy, Debug)]
struct Case {
    b: usize,
    h: usize,
    t: usize,
    d: usize,
    variant: Variant,
    causal: bool,
    kind: LayoutKind,
    /// K and the bias drawn from ±60 (with planted peaks) instead of ±1.
    adversarial: bool,
    /// K from ±8 and V scaled per channel from 1e-4 to 3e4 (the f16 operand scaling of the
    /// tensor-core kernels, kernels/aft_tc.cuh).
    value_range: bool,
    /// AFT-full's w shaped against the GEMM's running row maxima.
    rows: RowMax,
}

/// Shapes of AFT-full's w rows for the running row maxima of kernels/aft_full_tc.cuh (a row's
/// reference moves when a 32-key block beats it by 2.8).
#[derive(Clone, Copy, Debug, PartialEq)]
enum RowMax {
    /// Uniform ±1: the first block sets every reference.
    Flat,
    /// ±1 plus `step` per key: every block (step 0.25) or every few (0.03) moves each row.
    Rising(f32),
    /// ±1 minus 0.25 per key: nothing moves after the first block.
    Falling,
    /// ±1 plus one +30 at a key that depends on the row (before or after its first block).
    Spike,
}

impl Case {
    fn new(t: usize, d: usize, variant: Variant, causal: bool) -> Self {
        Case {
            b: if t >= 4097 { 1 } else { 2 },
            h: 2,
            t,
            d,
            variant,
            causal,
            kind: LayoutKind::Bhnd,
            adversarial: false,
            value_range: false,
            rows: RowMax::Flat,
        }
    }

    fn layout(&self) -> Layout {
        Layout::of_kind(Dims::new(self.b, self.h, self.t, self.d), self.kind)
    }

    fn params(&self) -> AftParams {
        AftParams {
            causal: self.causal,
        }
    }
}

struct Host<T> {
    q: Vec<T>,
    k: Vec<T>,
    v: Vec<T>,
    /// The bias as the kernel sees it (fp32).
    w: Vec<f32>,
}

fn host_inputs<T: Element>(c: &Case, seed: u64) -> Host<T> {
    let l = c.layout();
    let mut rng = Rng::new(seed);
    let q = common::random::<T>(&mut rng, &l);
    let mut v = common::random::<T>(&mut rng, &l);
    let wlen = c.variant.bias_len(c.t, c.h).unwrap().map_or(0, |(_, n)| n);
    let (mut k, mut w): (Vec<T>, Vec<f32>) = if c.adversarial {
        (
            rng.fill(l.span().unwrap(), -60.0, 60.0),
            (0..wlen).map(|_| rng.uniform(-60.0, 60.0) as f32).collect(),
        )
    } else {
        (
            common::random::<T>(&mut rng, &l),
            (0..wlen).map(|_| rng.uniform(-1.0, 1.0) as f32).collect(),
        )
    };
    if c.value_range {
        k = rng.fill(l.span().unwrap(), -8.0, 8.0);
        let top = c.d.saturating_sub(1).max(1) as f64;
        for (i, x) in v.iter_mut().enumerate() {
            let ch = (i % c.d) as f64; // the last dim is contiguous in both layouts
            *x = T::from_f64(x.to_f64() * 10f64.powf(-4.0 + 8.5 * ch / top));
        }
    }
    if c.adversarial {
        // Plant K's peak at key 0 of every channel and w's at the last key of each row (or band
        // entry), so the two maxima never coincide.
        for b in 0..c.b {
            for h in 0..c.h {
                let off = l.offset(b, h, 0);
                k[off..off + c.d].fill(T::from_f64(60.0));
            }
        }
        let width = if c.t > 0 { wlen / c.t.max(1) } else { 0 };
        match c.variant {
            Variant::Full | Variant::Local { .. } => {
                for row in w.chunks_exact_mut(width.max(1)) {
                    row.fill(-60.0);
                    *row.last_mut().unwrap() = 60.0;
                }
            }
            _ => {}
        }
    }
    if c.variant == Variant::Full && c.rows != RowMax::Flat {
        for (t, row) in w.chunks_exact_mut(c.t).enumerate() {
            for (tp, x) in row.iter_mut().enumerate() {
                *x += match c.rows {
                    RowMax::Rising(step) => step * tp as f32,
                    RowMax::Falling => -0.25 * tp as f32,
                    _ => 0.0,
                };
            }
            if c.rows == RowMax::Spike {
                row[(t * 7919 + 13) % c.t] += 30.0;
            }
        }
    }
    Host { q, k, v, w }
}

fn reference_of<T: Element>(c: &Case, x: &Host<T>) -> Vec<f64> {
    let l = c.layout();
    let (q, k, v) = (gather(&x.q, &l), gather(&x.k, &l), gather(&x.v, &l));
    let dims = Dims::new(c.b, c.h, c.t, c.d);
    let qkv = Qkv::self_attn(&q, &k, &v, dims, c.d).unwrap();
    let w: Vec<f64> = x.w.iter().map(|&x| x as f64).collect();
    let bias = match c.variant {
        Variant::Simple => Bias::None,
        Variant::Full => Bias::Full(&w),
        Variant::Local { window } => Bias::Local { w: &w, window },
        Variant::Conv { window } => Bias::Conv { u: &w, window },
    };
    reference::aft::linear(&qkv, &bias, &c.params()).unwrap()
}

/// Runs AFT once on the GPU (output poisoned first); returns it as contiguous f64.
fn run_gpu<T: Element>(rt: &Runtime, c: &Case, x: &Host<T>) -> Vec<f64> {
    let l = c.layout();
    let stream = rt.new_stream().unwrap();
    let q = stream.clone_htod(&x.q).unwrap();
    let k = stream.clone_htod(&x.k).unwrap();
    let v = stream.clone_htod(&x.v).unwrap();
    let w = (!x.w.is_empty()).then(|| stream.clone_htod(&x.w).unwrap());
    let mut o = stream.clone_htod(&common::poisoned::<T>(&l)).unwrap();
    let r = |data| TensorRef { data, layout: l };
    aft::forward(
        rt,
        &stream,
        c.variant,
        &c.params(),
        r(&q),
        r(&k),
        r(&v),
        TensorMut {
            data: &mut o,
            layout: l,
        },
        w.as_ref(),
        None,
    )
    .unwrap_or_else(|e| panic!("{c:?}: {e}"));
    let host = stream.clone_dtoh(&o).unwrap();
    gather(&host, &l)
}

fn check<T: Element>(rt: &Runtime, c: &Case, seed: u64) -> Comparison {
    let x = host_inputs::<T>(c, seed);
    let got = run_gpu(rt, c, &x);
    let cmp = compare::<T>(&got, &reference_of(c, &x));
    assert!(cmp.pass(), "{} {c:?}: {cmp}", T::DTYPE);
    cmp
}

/// Windows of the SPEC's test list for length t: 1, 2, 64, T, > T.
fn windows(t: usize) -> Vec<usize> {
    let mut w = vec![1, 2, 64, t, t + 5];
    w.sort();
    w.dedup();
    w
}

fn variants(t: usize) -> Vec<Variant> {
    let mut v = vec![Variant::Simple, Variant::Full];
    for s in windows(t) {
        v.push(Variant::Local { window: s });
        v.push(Variant::Conv { window: s });
    }
    v
}

#[test]
fn every_variant_f32_odd_sizes() {
    let Some(rt) = common::gpu("every_variant_f32_odd_sizes") else {
        return;
    };
    let mut worst = 0f64;
    for t in [1, 2, 63, 1000] {
        for d in [1, 48, 64, 80] {
            for variant in variants(t) {
                for causal in [false, true] {
                    let c = Case::new(t, d, variant, causal);
                    worst = worst.max(check::<f32>(&rt, &c, (t * 1000 + d) as u64).rel);
                }
            }
        }
    }
    println!("worst f32 rel. Frobenius {worst:.2e}");
}

#[test]
fn every_variant_half_precision() {
    let Some(rt) = common::gpu("every_variant_half_precision") else {
        return;
    };
    let (mut w16, mut wb16) = (0f64, 0f64);
    for t in [1, 63, 1000] {
        for d in [1, 64, 80] {
            for variant in variants(t) {
                for causal in [false, true] {
                    let c = Case::new(t, d, variant, causal);
                    w16 = w16.max(check::<f16>(&rt, &c, 7 + t as u64).rel);
                    wb16 = wb16.max(check::<bf16>(&rt, &c, 9 + d as u64).rel);
                }
            }
        }
    }
    println!("worst f16 {w16:.2e}, bf16 {wb16:.2e}");
}

#[test]
fn long_sequences() {
    let Some(rt) = common::gpu("long_sequences") else {
        return;
    };
    let t = 4097;
    for variant in [
        Variant::Simple,
        Variant::Local { window: 64 },
        Variant::Conv { window: 64 },
        Variant::Local { window: t },
        Variant::Full,
    ] {
        for causal in [false, true] {
            let c = Case::new(t, 64, variant, causal);
            check::<f16>(&rt, &c, 11);
            check::<f32>(&rt, &c, 12);
        }
    }
    // Many chunks (the scan's segments all busy) and the local band at the benchmark shape.
    for causal in [false, true] {
        let mut c = Case::new(65536, 64, Variant::Local { window: 64 }, causal);
        c.b = 1;
        c.h = 1;
        check::<f16>(&rt, &c, 13);
        // Enough slices × tiles that the band kernel groups several slices per CTA (B·H = 64,
        // 64 tiles: groups of 7–8 on 132 SMs), two channel tiles, engine layout.
        let mut g = Case::new(4096, 80, Variant::Local { window: 64 }, causal);
        g.b = 4;
        g.h = 16;
        g.kind = LayoutKind::Bnhd;
        check::<bf16>(&rt, &g, 15);
        // AFT-conv's band kernel: strips of 16 tiles per CTA (B·H = 16, 512 tiles on 132 SMs),
        // the interior ones reusing the staged band.
        let mut cv = Case::new(32768, 64, Variant::Conv { window: 64 }, causal);
        cv.b = 1;
        cv.h = 16;
        check::<f16>(&rt, &cv, 16);
        let mut s = Case::new(65536 + 3, 48, Variant::Simple, causal);
        s.h = 1;
        check::<bf16>(&rt, &s, 14);
        // AFT-simple with many slices: a part (and a map CTA) walks a range of 10–20 blocks, odd
        // and even counts, through both load paths (D = 33: one load per channel; D = 64 in the
        // engine layout: one per channel pair).
        for (d, kind, seed) in [(33, LayoutKind::Bhnd, 17), (64, LayoutKind::Bnhd, 18)] {
            let mut m = Case::new(5000, d, Variant::Simple, causal);
            m.b = 4;
            m.h = 16;
            m.kind = kind;
            check::<f16>(&rt, &m, seed);
            check::<bf16>(&rt, &m, seed + 100);
        }
    }
}

#[test]
fn adversarial_magnitudes_stay_finite_and_correct() {
    let Some(rt) = common::gpu("adversarial_magnitudes_stay_finite_and_correct") else {
        return;
    };
    for t in [2, 63, 1000] {
        for variant in [
            Variant::Simple,
            Variant::Full,
            Variant::Local { window: 2 },
            Variant::Local { window: 64 },
            Variant::Conv { window: 64 },
        ] {
            for causal in [false, true] {
                let mut c = Case::new(t, 48, variant, causal);
                c.adversarial = true;
                check::<f32>(&rt, &c, 21);
                check::<f16>(&rt, &c, 22);
                check::<bf16>(&rt, &c, 23);
            }
        }
    }
}

/// The tensor-core kernels multiply 16-bit operands; f16 ones are scaled into range per channel by
/// max |V| (kernels/aft_tc.cuh): values across 8 decades, K over ±8, every variant.
#[test]
fn value_range() {
    let Some(rt) = common::gpu("value_range") else {
        return;
    };
    for (t, d) in [(63, 64), (1000, 80), (4097, 64)] {
        for variant in [
            Variant::Full,
            Variant::Local { window: 64 },
            Variant::Conv { window: 64 },
            Variant::Simple,
        ] {
            for causal in [false, true] {
                let mut c = Case::new(t, d, variant, causal);
                c.value_range = true;
                check::<f16>(&rt, &c, 41);
                check::<bf16>(&rt, &c, 42);
                check::<f32>(&rt, &c, 43);
            }
        }
    }
}

/// AFT-full's product runs on clusters of 4 CTAs sharing each exp(w) tile (sm_90) when the
/// column-pair count (B·H·⌈D/64⌉ / 2) is a multiple of 4, else on single CTAs: both here. The
/// cluster kernel copies 3 key blocks ahead: odd T (w by single floats), and T of fewer blocks
/// than that (1, 63) too.
#[test]
fn full_cluster_and_single_cta_products() {
    let Some(rt) = common::gpu("full_cluster_and_single_cta_products") else {
        return;
    };
    for (b, h, d, t) in [
        (1, 8, 64, 1000),
        (2, 4, 128, 1000),
        (1, 2, 64, 1000),
        (1, 3, 64, 1000),
        (1, 8, 64, 999),
        (1, 8, 64, 63),
        (1, 8, 64, 1),
    ] {
        for causal in [false, true] {
            let mut c = Case::new(t, d, Variant::Full, causal);
            c.b = b;
            c.h = h;
            check::<f16>(&rt, &c, 51);
            check::<bf16>(&rt, &c, 52);
        }
    }
}

/// AFT-full's GEMM keeps running row maxima of w (no row-max pass): rows whose maximum rises in
/// every block, every few blocks, once by 30, or never after the first, with clusters and
/// without, causal or not.
#[test]
fn full_running_row_max() {
    let Some(rt) = common::gpu("full_running_row_max") else {
        return;
    };
    for rows in [
        RowMax::Rising(0.25),
        RowMax::Rising(0.03),
        RowMax::Falling,
        RowMax::Spike,
    ] {
        for (t, h) in [(300, 8), (1000, 2)] {
            for causal in [false, true] {
                let mut c = Case::new(t, 64, Variant::Full, causal);
                c.b = 1;
                c.h = h;
                c.rows = rows;
                check::<f16>(&rt, &c, 61);
                check::<bf16>(&rt, &c, 62);
            }
        }
    }
}

#[test]
fn engine_layout_bnhd() {
    let Some(rt) = common::gpu("engine_layout_bnhd") else {
        return;
    };
    for variant in [
        Variant::Simple,
        Variant::Local { window: 64 },
        Variant::Conv { window: 2 },
        Variant::Full,
    ] {
        for causal in [false, true] {
            let mut c = Case::new(1000, 80, variant, causal);
            c.kind = LayoutKind::Bnhd;
            c.h = 3;
            check::<f16>(&rt, &c, 31);
            check::<f32>(&rt, &c, 32);
        }
    }
}

#[test]
fn bit_identical_run_to_run() {
    let Some(rt) = common::gpu("bit_identical_run_to_run") else {
        return;
    };
    for variant in [
        Variant::Simple,
        Variant::Local { window: 64 },
        Variant::Full,
    ] {
        for causal in [false, true] {
            let c = Case::new(4097, 64, variant, causal);
            let x = host_inputs::<bf16>(&c, 41);
            let a = run_gpu(&rt, &c, &x);
            let b = run_gpu(&rt, &c, &x);
            assert!(
                a.iter().zip(&b).all(|(x, y)| x.to_bits() == y.to_bits()),
                "{c:?} differs run to run"
            );
        }
    }
}

/// Causal AFT-simple's single-pass scan (kernels/aft_simple_causal.cuh): many slices (two
/// channel tiles each) and chunks, so that CTAs look back over predecessors still running and
/// stop at different chunks from run to run; outputs match the reference and every run's bits.
#[test]
fn simple_causal_look_back() {
    let Some(rt) = common::gpu("simple_causal_look_back") else {
        return;
    };
    // One slice: consecutive tickets are consecutive chunks, so look-backs pass over chunks
    // whose CTAs have published only their aggregate. Many slices, two channel tiles each.
    let mut one = Case::new(5000, 64, Variant::Simple, true);
    (one.b, one.h) = (1, 1);
    let mut many = Case::new(5000, 80, Variant::Simple, true);
    (many.b, many.h) = (3, 13);
    for c in [one, many] {
        check::<f32>(&rt, &c, 51);
        check::<f16>(&rt, &c, 52);
        let x = host_inputs::<bf16>(&c, 53);
        let first = run_gpu(&rt, &c, &x);
        for _ in 0..3 {
            let again = run_gpu(&rt, &c, &x);
            assert!(
                first
                    .iter()
                    .zip(&again)
                    .all(|(a, b)| a.to_bits() == b.to_bits()),
                "{c:?} differs run to run"
            );
        }
    }
}

#[test]
fn bad_bias_is_a_typed_error() {
    let Some(rt) = common::gpu("bad_bias_is_a_typed_error") else {
        return;
    };
    let c = Case::new(100, 32, Variant::Local { window: 4 }, false);
    let l = c.layout();
    let stream = rt.new_stream().unwrap();
    let x = host_inputs::<f32>(&c, 51);
    let q = stream.clone_htod(&x.q).unwrap();
    let mut o = stream.clone_htod(&x.q).unwrap();
    let mut call = |variant: Variant, w: Option<&cudarc::driver::CudaSlice<f32>>| {
        aft::forward(
            &rt,
            &stream,
            variant,
            &AftParams::default(),
            TensorRef {
                data: &q,
                layout: l,
            },
            TensorRef {
                data: &q,
                layout: l,
            },
            TensorRef {
                data: &q,
                layout: l,
            },
            TensorMut {
                data: &mut o,
                layout: l,
            },
            w,
            None,
        )
    };
    let narrow = stream.clone_htod(&vec![0f32; 100 * 5]).unwrap(); // band of s = 3, not 4
    let arg = |r: Result<(), Error>| r.unwrap_err().argument();
    assert_eq!(
        arg(call(Variant::Local { window: 4 }, Some(&narrow))),
        Some("w")
    );
    assert_eq!(arg(call(Variant::Local { window: 4 }, None)), Some("w"));
    assert_eq!(
        arg(call(Variant::Local { window: 0 }, Some(&narrow))),
        Some("window")
    );
    assert_eq!(arg(call(Variant::Full, Some(&narrow))), Some("w"));
    assert_eq!(
        arg(call(Variant::Conv { window: 3 }, Some(&narrow))),
        Some("u")
    );
    assert_eq!(arg(call(Variant::Simple, Some(&narrow))), Some("bias"));
    // The right band works.
    call(Variant::Local { window: 3 }, Some(&narrow)).unwrap();
}
