//! Kernels embedded at build time: per family, the amalgamated source (for NVRTC), the fatbin
//! when nvcc was available, and ptxas's resource report for each kernel and architecture.

/// ptxas's report for one kernel on one architecture.
#[derive(Clone, Copy, Debug)]
pub struct KernelResources {
    pub kernel: &'static str,
    pub arch: &'static str,
    pub registers: u32,
    pub stack_bytes: u32,
    pub spill_store_bytes: u32,
    pub spill_load_bytes: u32,
    pub smem_bytes: u32,
}

/// One `kernels/<name>.cu` file.
#[derive(Clone, Copy, Debug)]
pub struct KernelFamily {
    pub name: &'static str,
    pub source: &'static str,
    pub fatbin: Option<&'static [u8]>,
    pub resources: &'static [KernelResources],
}

include!(concat!(env!("OUT_DIR"), "/kernels.rs"));

/// The embedded family called `name`.
pub fn family(name: &str) -> Option<&'static KernelFamily> {
    FAMILIES.iter().find(|f| f.name == name)
}

/// Whether `family`'s `arch` machine code has the kernel `name`; true where the build reported
/// nothing for `arch` (the driver then decides).
pub fn built_for(family: &str, name: &str, arch: &str) -> bool {
    let Some(f) = self::family(family) else {
        return true;
    };
    let mut built = f.resources.iter().filter(|r| r.arch == arch).peekable();
    built.peek().is_none() || built.any(|r| r.kernel == name)
}
