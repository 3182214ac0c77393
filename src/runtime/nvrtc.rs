//! Run-time compilation of the embedded kernel sources with NVRTC (no GPU needed to compile).

use crate::error::{Error, Result};
use crate::runtime::embedded::KernelFamily;
use cudarc::nvrtc::{CompileOptions, Ptx};

/// True when libnvrtc can be loaded (it is looked up like the driver, by LD_LIBRARY_PATH).
pub fn available() -> bool {
    // SAFETY: only tries to dlopen the library by its candidate names.
    unsafe { cudarc::nvrtc::sys::is_culib_present() }
}

/// Compiles `family`'s embedded source to PTX for a virtual architecture such as `compute_90`.
pub fn compile(family: &KernelFamily, arch: &str) -> Result<Ptx> {
    if !available() {
        return Err(Error::KernelLoad {
            family: family.name.into(),
            reason: "libnvrtc not found (add the CUDA lib directory to LD_LIBRARY_PATH)".into(),
        });
    }
    let mut options = vec![format!("--gpu-architecture={arch}"), "-std=c++17".into()];
    options.push("-lineinfo".into());
    let opts = CompileOptions {
        options,
        name: Some(format!("{}.cu", family.name)),
        ..Default::default()
    };
    // cudarc unwraps a few NVRTC calls; keep a panic there from escaping as a panic.
    let res =
        std::panic::catch_unwind(|| cudarc::nvrtc::compile_ptx_with_opts(family.source, opts));
    match res {
        Ok(Ok(ptx)) => Ok(ptx),
        Ok(Err(e)) => Err(Error::KernelLoad {
            family: family.name.into(),
            reason: format!("NVRTC ({arch}): {e}"),
        }),
        Err(_) => Err(Error::KernelLoad {
            family: family.name.into(),
            reason: format!("NVRTC ({arch}) failed unexpectedly"),
        }),
    }
}
