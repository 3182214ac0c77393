//! Shared by the GPU test files: device acquisition with a visible SKIP, random tensors.
#![allow(dead_code)]

use sofa::ops::aft::Variant;
use sofa::reference::Rng;
use sofa::{Dims, Element, Error, Layout, LoadPolicy, Runtime};
use std::io::Write;
use std::sync::Arc;

/// The device, or `None` after printing a SKIP line. `SOFA_REQUIRE_GPU=1` turns a missing device
/// into a failure (the GPU bundle sets it, so a GPU run cannot pass by skipping).
pub fn gpu(test: &str) -> Option<Arc<Runtime>> {
    gpu_with(test, LoadPolicy::from_env().expect("SOFA_KERNELS"))
}

pub fn gpu_with(test: &str, policy: LoadPolicy) -> Option<Arc<Runtime>> {
    match Runtime::with_policy(0, policy) {
        Ok(rt) => Some(rt),
        Err(Error::NoDevice(why)) => {
            if std::env::var("SOFA_REQUIRE_GPU").is_ok_and(|v| v == "1") {
                panic!("{test}: SOFA_REQUIRE_GPU=1 but no CUDA device: {why}");
            }
            // Written to the real stderr (not the captured test output) so the SKIP is visible.
            let _ = writeln!(std::io::stderr(), "SKIP {test}: no CUDA device ({why})");
            None
        }
        Err(e) => panic!("{test}: runtime: {e}"),
    }
}

/// Host storage for one tensor argument: random values over the whole span of `layout`.
pub fn random<T: Element>(rng: &mut Rng, layout: &Layout) -> Vec<T> {
    rng.fill(layout.span().expect("span"), -1.0, 1.0)
}

/// A buffer of NaN (or the dtype's NaN pattern) covering `layout`: any element the kernel fails
/// to write stays NaN and fails the comparison.
pub fn poisoned<T: Element>(layout: &Layout) -> Vec<T> {
    vec![T::from_f64(f64::NAN); layout.span().expect("span")]
}

/// AFT variants the embedding and non-finite tests cover: every kind, a window that spans several
/// tiles, a short one, a short conv window.
pub fn aft_variants() -> [Variant; 5] {
    [
        Variant::Simple,
        Variant::Local { window: 64 },
        Variant::Local { window: 5 },
        Variant::Conv { window: 7 },
        Variant::Full,
    ]
}

/// fp32 values of an AFT variant's bias at `dims` (`w` for local and full, `u` for conv; 0 for
/// simple).
pub fn aft_bias_len(variant: Variant, dims: Dims) -> usize {
    variant
        .bias_len(dims.n, dims.h)
        .unwrap()
        .map_or(0, |(_, n)| n)
}
