//! The ceilings every measurement is judged against, measured on the device in the same run:
//! a device-to-device copy (bytes read + written per second), a large cuBLAS f16 GEMM, and the
//! time of two back-to-back empty kernel launches (the floor of a short multi-launch op).

use crate::bench::time_on_stream;
use crate::error::{Error, Result};
use crate::runtime::Runtime;
use cudarc::cublas::sys::cublasOperation_t;
use cudarc::cublas::{CudaBlas, Gemm, GemmConfig};
use cudarc::driver::CudaStream;
use half::f16;
use std::sync::Arc;

/// Measured peaks of one device.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Peaks {
    /// Device-to-device copy, counting bytes read plus bytes written.
    pub copy_gb_per_s: f64,
    /// Dense f16 GEMM with fp32 accumulation (tensor cores).
    pub gemm_tflop_per_s: f64,
    /// Two back-to-back launches of an empty kernel, device-event timed (microseconds).
    pub launch_pair_us: f64,
}

impl Peaks {
    /// The floor of an op that must move `bytes` and compute `flops`: the larger of the two
    /// times, in milliseconds.
    pub fn roofline_ms(&self, bytes: f64, flops: f64) -> f64 {
        let t_bytes = bytes / (self.copy_gb_per_s * 1e9);
        let t_flops = flops / (self.gemm_tflop_per_s * 1e12);
        t_bytes.max(t_flops) * 1e3
    }

    /// Percent of the roofline reached by a run of `ms` milliseconds.
    pub fn percent(&self, bytes: f64, flops: f64, ms: f64) -> f64 {
        100.0 * self.roofline_ms(bytes, flops) / ms
    }

    /// Which ceiling bounds an op: "memory" or "compute".
    pub fn bound(&self, bytes: f64, flops: f64) -> &'static str {
        if bytes / (self.copy_gb_per_s * 1e9) >= flops / (self.gemm_tflop_per_s * 1e12) {
            "memory"
        } else {
            "compute"
        }
    }

    /// Measures the ceilings on `stream` (about a second). Needs libcublas for the GEMM.
    pub fn measure(rt: &Runtime, stream: &Arc<CudaStream>) -> Result<Peaks> {
        Ok(Peaks {
            copy_gb_per_s: measure_copy(rt, stream)?,
            gemm_tflop_per_s: measure_gemm(rt, stream)?,
            launch_pair_us: measure_launch_pair(rt, stream)?,
        })
    }
}

fn measure_launch_pair(rt: &Runtime, stream: &Arc<CudaStream>) -> Result<f64> {
    let f = rt.function("fill", "empty_kernel")?;
    let t = time_on_stream(stream, 10, 200, || {
        for _ in 0..2 {
            // SAFETY: the kernel takes one int and touches no memory.
            unsafe { crate::ops::launch(stream, &f, (1, 1, 1), 32, &0i32)? };
        }
        Ok(())
    })?;
    Ok(t.median_ms * 1e3)
}

fn measure_copy(rt: &Runtime, stream: &Arc<CudaStream>) -> Result<f64> {
    let (free, _) = rt.context().mem_get_info()?;
    let bytes = (1usize << 30).min(free / 4).max(1 << 20);
    let src = rt.alloc::<u8>(stream, bytes)?;
    let mut dst = rt.alloc::<u8>(stream, bytes)?;
    let t = time_on_stream(stream, 3, 20, || Ok(stream.memcpy_dtod(&src, &mut dst)?))?;
    Ok(2.0 * bytes as f64 / (t.median_ms * 1e-3) / 1e9)
}

fn measure_gemm(rt: &Runtime, stream: &Arc<CudaStream>) -> Result<f64> {
    // SAFETY: only tries to dlopen libcublas.
    if !unsafe { cudarc::cublas::sys::is_culib_present() } {
        return Err(Error::KernelLoad {
            family: "cublas".into(),
            reason: "libcublas not found".into(),
        });
    }
    const N: usize = 8192;
    let blas = CudaBlas::new(stream.clone()).map_err(|e| Error::KernelLoad {
        family: "cublas".into(),
        reason: e.to_string(),
    })?;
    let mut a = rt.alloc::<f16>(stream, N * N)?;
    crate::bench::fill_uniform(rt, stream, &mut a, 7)?;
    let b = a.clone();
    let mut c = rt.alloc::<f16>(stream, N * N)?;
    let cfg = GemmConfig {
        transa: cublasOperation_t::CUBLAS_OP_N,
        transb: cublasOperation_t::CUBLAS_OP_N,
        m: N as i32,
        n: N as i32,
        k: N as i32,
        alpha: f16::ONE,
        lda: N as i32,
        ldb: N as i32,
        beta: f16::ZERO,
        ldc: N as i32,
    };
    let t = time_on_stream(stream, 2, 10, || {
        // SAFETY: a, b, c each hold N·N elements, matching the config's leading dimensions.
        unsafe { blas.gemm(cfg, &a, &b, &mut c) }.map_err(|e| Error::KernelLoad {
            family: "cublas".into(),
            reason: e.to_string(),
        })
    })?;
    Ok(2.0 * (N as f64).powi(3) / (t.median_ms * 1e-3) / 1e12)
}
