//! The GPU: device probe, context (the device's primary context), kernel modules (fatbin or
//! NVRTC) with a function cache, allocation with typed out-of-memory errors, events.

pub mod embedded;
pub mod nvrtc;
pub mod stream;

use crate::error::{Error, Result};
use cudarc::driver::sys::{CUdevice_attribute as Attr, CUfunction_attribute, CUresult};
use cudarc::driver::{CudaContext, CudaFunction, CudaModule, CudaSlice, CudaStream, DriverError};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// How a kernel family was (or is to be) loaded.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum LoadPath {
    /// Machine code compiled by nvcc at build time.
    Fatbin,
    /// Source compiled by NVRTC when first used.
    Nvrtc,
}

impl std::fmt::Display for LoadPath {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            LoadPath::Fatbin => "fatbin",
            LoadPath::Nvrtc => "nvrtc",
        })
    }
}

/// Which load paths a runtime may use. `Auto` prefers the fatbin and falls back to NVRTC.
/// The environment variable `SOFA_KERNELS=auto|fatbin|nvrtc` sets the default.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum LoadPolicy {
    #[default]
    Auto,
    Only(LoadPath),
}

impl LoadPolicy {
    pub fn from_env() -> Result<Self> {
        match std::env::var("SOFA_KERNELS").as_deref() {
            Err(_) | Ok("") | Ok("auto") => Ok(LoadPolicy::Auto),
            Ok("fatbin") => Ok(LoadPolicy::Only(LoadPath::Fatbin)),
            Ok("nvrtc") => Ok(LoadPolicy::Only(LoadPath::Nvrtc)),
            Ok(other) => Err(Error::param(
                "SOFA_KERNELS",
                other,
                "expected auto, fatbin or nvrtc",
            )),
        }
    }
}

/// What the probe learned about the device.
#[derive(Clone, Debug)]
pub struct DeviceInfo {
    pub ordinal: usize,
    pub name: String,
    pub compute_capability: (i32, i32),
    pub multiprocessors: u32,
    pub total_memory: usize,
    pub l2_bytes: usize,
    pub smem_per_block_optin: usize,
    pub sm_clock_khz: u32,
    pub mem_clock_khz: u32,
    pub mem_bus_bits: u32,
    pub driver_version: i32,
}

impl DeviceInfo {
    /// The CPU simulator (sim/), whose times mean nothing about a GPU.
    pub fn is_simulator(&self) -> bool {
        self.name.contains("sofa-sim")
    }

    /// The architecture of the embedded SASS this device runs: `sm_90a` on compute capability 9.0,
    /// `sm_80` on 8.x; `None` elsewhere, where the driver compiles the embedded PTX itself (so the
    /// build's ptxas report does not describe the code that runs).
    pub fn sass_arch(&self) -> Option<&'static str> {
        match self.compute_capability {
            (9, 0) => Some("sm_90a"),
            (8, _) => Some("sm_80"),
            _ => None,
        }
    }

    /// Datasheet-style DRAM bandwidth from clock and bus width (bytes/s); a lead, not a measure.
    pub fn theoretical_bandwidth(&self) -> f64 {
        2.0 * self.mem_clock_khz as f64 * 1e3 * self.mem_bus_bits as f64 / 8.0
    }
}

struct Loaded {
    module: Arc<CudaModule>,
    path: LoadPath,
    functions: HashMap<String, CudaFunction>,
}

/// A device with its primary context and the kernel modules loaded into it.
/// `Send + Sync`: launch from any thread, on any stream of this context.
pub struct Runtime {
    ctx: Arc<CudaContext>,
    info: DeviceInfo,
    policy: LoadPolicy,
    modules: Mutex<HashMap<&'static str, Loaded>>,
    /// What launches ask of each loaded kernel, answered without a driver call (a launch at
    /// N = 1k takes a few µs, and the host's time before it counts).
    kernels: Mutex<HashMap<usize, KernelLimits>>,
}

/// A loaded kernel's dynamic shared memory limit (set by [`Runtime::function`]) and its
/// resident CTAs per SM by (threads, dynamic shared memory), as the driver answered.
#[derive(Default)]
struct KernelLimits {
    smem_room: Option<i32>,
    per_sm: HashMap<(u32, u32), usize>,
}

/// Returns `Error::NoDevice` unless a driver library and at least one device are present.
pub fn probe() -> Result<usize> {
    // SAFETY: only tries to dlopen libcuda by its candidate names.
    if !unsafe { cudarc::driver::sys::is_culib_present() } {
        return Err(Error::NoDevice(
            "the CUDA driver library (libcuda.so) was not found".into(),
        ));
    }
    // cudarc panics if a symbol is missing from an old driver; treat that as no usable device.
    let count = std::panic::catch_unwind(|| {
        cudarc::driver::result::init()?;
        cudarc::driver::result::device::get_count()
    })
    .map_err(|_| Error::NoDevice("the CUDA driver library is unusable".into()))?
    .map_err(|e| Error::NoDevice(format!("driver initialisation failed: {e}")))?;
    if count <= 0 {
        return Err(Error::NoDevice("the driver reports no CUDA devices".into()));
    }
    Ok(count as usize)
}

impl Runtime {
    /// Opens device `ordinal` with the load policy from `SOFA_KERNELS`.
    pub fn new(ordinal: usize) -> Result<Arc<Self>> {
        Self::with_policy(ordinal, LoadPolicy::from_env()?)
    }

    pub fn with_policy(ordinal: usize, policy: LoadPolicy) -> Result<Arc<Self>> {
        let count = probe()?;
        if ordinal >= count {
            return Err(Error::param(
                "device",
                ordinal,
                format!("{count} device(s) present"),
            ));
        }
        let ctx = CudaContext::new(ordinal)?;
        let attr = |a: Attr| ctx.attribute(a).map(|v| v.max(0) as u32);
        let mut driver_version = 0;
        // SAFETY: writes one int.
        unsafe { cudarc::driver::sys::cuDriverGetVersion(&mut driver_version) }.result()?;
        let info = DeviceInfo {
            ordinal,
            name: ctx.name()?,
            compute_capability: ctx.compute_capability()?,
            multiprocessors: attr(Attr::CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT)?,
            total_memory: ctx.total_mem()?,
            l2_bytes: attr(Attr::CU_DEVICE_ATTRIBUTE_L2_CACHE_SIZE)? as usize,
            smem_per_block_optin: attr(Attr::CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_BLOCK_OPTIN)?
                as usize,
            sm_clock_khz: attr(Attr::CU_DEVICE_ATTRIBUTE_CLOCK_RATE)?,
            mem_clock_khz: attr(Attr::CU_DEVICE_ATTRIBUTE_MEMORY_CLOCK_RATE)?,
            mem_bus_bits: attr(Attr::CU_DEVICE_ATTRIBUTE_GLOBAL_MEMORY_BUS_WIDTH)?,
            driver_version,
        };
        Ok(Arc::new(Runtime {
            ctx,
            info,
            policy,
            modules: Mutex::new(HashMap::new()),
            kernels: Mutex::new(HashMap::new()),
        }))
    }

    pub fn info(&self) -> &DeviceInfo {
        &self.info
    }

    pub fn policy(&self) -> LoadPolicy {
        self.policy
    }

    pub fn context(&self) -> &Arc<CudaContext> {
        &self.ctx
    }

    /// The context's default (legacy NULL) stream.
    pub fn default_stream(&self) -> Arc<CudaStream> {
        self.ctx.default_stream()
    }

    pub fn new_stream(&self) -> Result<Arc<CudaStream>> {
        Ok(self.ctx.new_stream()?)
    }

    /// The path `family` was loaded by, if it has been loaded.
    pub fn load_path(&self, family: &str) -> Option<LoadPath> {
        self.lock_modules().get(family).map(|m| m.path)
    }

    /// Loads every embedded family now (instead of on first use); returns the paths used.
    pub fn load_all(&self) -> Result<Vec<(&'static str, LoadPath)>> {
        embedded::FAMILIES
            .iter()
            .map(|f| self.with_module(f.name, |m| m.path).map(|p| (f.name, p)))
            .collect()
    }

    /// The kernel `name` of `family`, loading the family on first use.
    pub fn function(&self, family: &'static str, name: &str) -> Result<CudaFunction> {
        self.with_module(family, |m| -> Result<CudaFunction> {
            if let Some(f) = m.functions.get(name) {
                return Ok(f.clone());
            }
            // A kernel the build's machine code for this device lacks (a probe for an optional
            // kernel) is answered here: asked of the driver, the miss is an API error that
            // compute-sanitizer reports.
            if let (LoadPath::Fatbin, Some(arch)) = (m.path, self.info.sass_arch()) {
                if !embedded::built_for(family, name, arch) {
                    return Err(Error::KernelLoad {
                        family: family.into(),
                        reason: format!("kernel {name}: not in the {arch} build"),
                    });
                }
            }
            let f = m
                .module
                .load_function(name)
                .map_err(|e| Error::KernelLoad {
                    family: family.into(),
                    reason: format!("kernel {name}: {e}"),
                })?;
            // Streaming kernels want shared memory (tiles) over L1: ask for the largest carveout
            // so that occupancy is limited by registers, not by the default split.
            f.set_attribute(
                CUfunction_attribute::CU_FUNC_ATTRIBUTE_PREFERRED_SHARED_MEMORY_CARVEOUT,
                100,
            )?;
            // Dynamic shared memory up to the device's opt-in limit, set once here. Setting it
            // per launch to the launch's size would race: another thread could lower it for the
            // same kernel between this thread's setting and its launch.
            let static_smem =
                f.get_attribute(CUfunction_attribute::CU_FUNC_ATTRIBUTE_SHARED_SIZE_BYTES)?;
            let room = self
                .info
                .smem_per_block_optin
                .saturating_sub(static_smem.max(0) as usize);
            let room = room.min(i32::MAX as usize) as i32;
            f.set_attribute(
                CUfunction_attribute::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES,
                room,
            )?;
            self.lock_kernels()
                .entry(f.cu_function() as usize)
                .or_default()
                .smem_room = Some(room);
            m.functions.insert(name.to_string(), f.clone());
            Ok(f)
        })?
    }

    /// CTAs of `f` (`threads` threads, `smem` bytes of dynamic shared memory) that fit on the
    /// whole device at once.
    pub fn resident_ctas(&self, f: &CudaFunction, threads: u32, smem: u32) -> Result<usize> {
        let key = f.cu_function() as usize;
        let cached = self
            .lock_kernels()
            .get(&key)
            .and_then(|k| k.per_sm.get(&(threads, smem)).copied());
        let per_sm = match cached {
            Some(n) => n,
            None => {
                let n = f
                    .occupancy_max_active_blocks_per_multiprocessor(threads, smem as usize, None)?
                    .max(1) as usize;
                let mut kernels = self.lock_kernels();
                kernels
                    .entry(key)
                    .or_default()
                    .per_sm
                    .insert((threads, smem), n);
                n
            }
        };
        Ok(per_sm * self.info.multiprocessors as usize)
    }

    /// The dynamic shared memory `f` may launch with: the device's opt-in limit less its static
    /// shared memory (the limit [`Runtime::function`] set when it loaded `f`).
    fn dynamic_smem_room(&self, f: &CudaFunction) -> Result<i32> {
        let known = self
            .lock_kernels()
            .get(&(f.cu_function() as usize))
            .and_then(|k| k.smem_room);
        Ok(match known {
            Some(room) => room,
            None => f.get_attribute(
                CUfunction_attribute::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES,
            )?,
        })
    }

    /// Whether `f` may launch with `bytes` of dynamic shared memory (for optional kernels, which
    /// step aside on a device with less).
    pub fn fits_dynamic_smem(&self, f: &CudaFunction, bytes: u32) -> Result<bool> {
        Ok(i64::from(bytes) <= i64::from(self.dynamic_smem_room(f)?))
    }

    /// [`Runtime::fits_dynamic_smem`], with a typed error naming the sizes where it does not.
    pub fn check_dynamic_smem(&self, f: &CudaFunction, bytes: u32) -> Result<()> {
        let room = self.dynamic_smem_room(f)?;
        if i64::from(bytes) > i64::from(room) {
            return Err(Error::param(
                "shared memory",
                bytes,
                format!(
                    "the kernel may use {room} bytes of dynamic shared memory (device opt-in {} \
                     bytes per block, less its static shared memory)",
                    self.info.smem_per_block_optin
                ),
            ));
        }
        Ok(())
    }

    fn lock_kernels(&self) -> std::sync::MutexGuard<'_, HashMap<usize, KernelLimits>> {
        // As lock_modules: every insert leaves the map consistent.
        self.kernels.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn lock_modules(&self) -> std::sync::MutexGuard<'_, HashMap<&'static str, Loaded>> {
        // A panic while holding the lock leaves the map consistent (inserts are atomic).
        self.modules.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn with_module<R>(&self, family: &'static str, f: impl FnOnce(&mut Loaded) -> R) -> Result<R> {
        let mut modules = self.lock_modules();
        if !modules.contains_key(family) {
            let loaded = self.load(family)?;
            modules.insert(family, loaded);
        }
        Ok(f(modules.get_mut(family).expect("just inserted")))
    }

    fn load(&self, name: &'static str) -> Result<Loaded> {
        let family = embedded::family(name).ok_or_else(|| Error::KernelLoad {
            family: name.into(),
            reason: "no such kernel family is embedded".into(),
        })?;
        let mut reasons = Vec::new();
        if self.policy != LoadPolicy::Only(LoadPath::Nvrtc) {
            match family.fatbin {
                Some(bin) => {
                    match self
                        .ctx
                        .load_module(cudarc::nvrtc::Ptx::from_binary(bin.to_vec()))
                    {
                        Ok(module) => {
                            return Ok(Loaded {
                                module,
                                path: LoadPath::Fatbin,
                                functions: HashMap::new(),
                            })
                        }
                        Err(e) => reasons.push(format!("fatbin: {e}")),
                    }
                }
                None => reasons.push("fatbin: not built (nvcc was not found at build time)".into()),
            }
        }
        if self.policy != LoadPolicy::Only(LoadPath::Fatbin) {
            let (major, minor) = self.info.compute_capability;
            match nvrtc::compile(family, &format!("compute_{major}{minor}")) {
                Ok(ptx) => match self.ctx.load_module(ptx) {
                    Ok(module) => {
                        return Ok(Loaded {
                            module,
                            path: LoadPath::Nvrtc,
                            functions: HashMap::new(),
                        })
                    }
                    Err(e) => reasons.push(format!("nvrtc module load: {e}")),
                },
                Err(e) => reasons.push(e.to_string()),
            }
        }
        Err(Error::KernelLoad {
            family: name.into(),
            reason: reasons.join("; "),
        })
    }

    /// Allocates `len` elements (uninitialised) on `stream`; a failure is `Error::OutOfMemory`.
    pub fn alloc<T: cudarc::driver::DeviceRepr>(
        &self,
        stream: &Arc<CudaStream>,
        len: usize,
    ) -> Result<CudaSlice<T>> {
        let bytes = len.saturating_mul(std::mem::size_of::<T>());
        // SAFETY: the memory is uninitialised; every user writes before reading (kernels write
        // every output element, tests poison first).
        unsafe { stream.alloc::<T>(len.max(1)) }.map_err(|e| oom_or(e, bytes))
    }
}

/// Maps the driver's out-of-memory code to `Error::OutOfMemory`.
pub(crate) fn oom_or(e: DriverError, bytes: usize) -> Error {
    if e.0 == CUresult::CUDA_ERROR_OUT_OF_MEMORY {
        Error::OutOfMemory { bytes }
    } else {
        Error::Driver(e)
    }
}
