//! The kernels the driver runs are the ones the build analyzed: for every kernel of the device's
//! SASS architecture, the driver's register count and static shared memory equal the embedded
//! `-Xptxas -v` report (so the SASS read offline is what runs, not a JIT of the PTX), its
//! occupancy is what the H100's register-file and shared-memory rules give for them, and it may
//! use all the dynamic shared memory the device allows from the moment it is loaded. On sofa-sim
//! the same assertions check that the simulator reads the fatbin as a driver does and applies the
//! same limits (sim/image.cpp, sim/driver.cpp).
mod common;

use cudarc::driver::sys::CUfunction_attribute as Attr;
use sofa::runtime::embedded::{self, KernelResources};
use sofa::{LoadPath, LoadPolicy, Runtime};
use std::sync::Arc;

/// Blocks of `threads` threads per SM on an sm_80 / sm_90 part (65536 registers in four
/// sub-partitions, allocated per warp in units of 256; 64 warps and 32 blocks per SM; shared
/// memory per block rounded up to 128 bytes after the 1 KiB the system reserves), with the
/// largest shared-memory carveout, which sofa asks for when it loads a kernel.
fn expected_blocks_per_sm(r: &KernelResources, threads: u32, smem_per_sm: usize) -> u32 {
    let warps = threads.div_ceil(32);
    let warp_regs = (r.registers * 32).div_ceil(256) * 256;
    let by_regs = (65536 / 4 / warp_regs) * 4 / warps;
    let per_block = (r.smem_bytes as usize + 1024).div_ceil(128) * 128;
    let by_smem = (smem_per_sm / per_block) as u32;
    (64 / warps).min(32).min(by_regs).min(by_smem)
}

/// The device with the fatbin's kernels (the code ptxas reported on), or `None` after a SKIP.
fn device(test: &str) -> Option<Arc<Runtime>> {
    common::gpu_with(test, LoadPolicy::Only(LoadPath::Fatbin))
}

#[test]
fn the_driver_runs_the_analyzed_sass() {
    let Some(rt) = device("kernels: driver vs ptxas") else {
        return;
    };
    let Some(arch) = rt.info().sass_arch() else {
        eprintln!(
            "SKIP kernels: driver vs ptxas: no SASS embedded for compute capability {:?}",
            rt.info().compute_capability
        );
        return;
    };
    // Shared memory per SM as the occupancy rules see it: 228 KiB on sm_90, 164 KiB on sm_80.
    // The rules below are those of compute capability 8.0 and 9.0 (8.6 and 8.9 have fewer warp
    // and block slots per SM): elsewhere only the registers and shared memory are compared.
    let smem_per_sm = rt.info().smem_per_block_optin + 1024;
    let rules_apply = matches!(rt.info().compute_capability, (8, 0) | (9, 0));
    let (mut checked, mut occupancies) = (0, 0);
    let mut mismatches = Vec::new();
    for family in embedded::FAMILIES {
        for r in family.resources.iter().filter(|r| r.arch == arch) {
            let f = rt.function(family.name, r.kernel).unwrap();
            let regs = f.get_attribute(Attr::CU_FUNC_ATTRIBUTE_NUM_REGS).unwrap();
            let smem = f
                .get_attribute(Attr::CU_FUNC_ATTRIBUTE_SHARED_SIZE_BYTES)
                .unwrap();
            if (regs, smem) != (r.registers as i32, r.smem_bytes as i32) {
                mismatches.push(format!(
                    "{}: driver {regs} registers, {smem} B static smem; ptxas {} and {}",
                    r.kernel, r.registers, r.smem_bytes
                ));
                continue;
            }
            // Set once at load to all the room the device allows, never per launch (a per-launch
            // setting races between threads launching one kernel with different sizes).
            let room = f
                .get_attribute(Attr::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES)
                .unwrap();
            let want_room = rt.info().smem_per_block_optin as i32 - smem;
            if room != want_room {
                mismatches.push(format!(
                    "{}: may use {room} B of dynamic smem, the device allows {want_room}",
                    r.kernel
                ));
            }
            // A kernel built with a cluster shape is placed by clusters per GPC, which the
            // per-block rules do not describe: its registers and shared memory are compared only.
            let cluster = f
                .get_attribute(Attr::CU_FUNC_ATTRIBUTE_REQUIRED_CLUSTER_WIDTH)
                .unwrap();
            if !rules_apply || cluster > 0 {
                checked += 1;
                continue;
            }
            let max_threads = f
                .get_attribute(Attr::CU_FUNC_ATTRIBUTE_MAX_THREADS_PER_BLOCK)
                .unwrap() as u32;
            let threads = 128.min(max_threads);
            let blocks = f
                .occupancy_max_active_blocks_per_multiprocessor(threads, 0, None)
                .unwrap();
            let want = expected_blocks_per_sm(r, threads, smem_per_sm);
            if blocks != want {
                mismatches.push(format!(
                    "{}: {blocks} blocks of {threads} threads per SM, the rules give {want}",
                    r.kernel
                ));
            }
            checked += 1;
            occupancies += 1;
        }
    }
    assert!(mismatches.is_empty(), "{}", mismatches.join("\n"));
    assert!(checked > 100, "only {checked} kernels of {arch} compared");
    assert!(
        !rules_apply || occupancies > 100,
        "only {occupancies} occupancies compared"
    );
}

/// Launch bounds and registers cap a kernel's block: 256 threads for the Newton CTA kernel
/// (`__launch_bounds__(256, 1)`), 1024 for a small kernel without a bound.
#[test]
fn thread_limits_follow_launch_bounds_and_registers() {
    let Some(rt) = device("kernels: thread limits") else {
        return;
    };
    if rt.info().sass_arch().is_none() {
        return;
    }
    let max_threads = |family, kernel| {
        rt.function(family, kernel)
            .unwrap()
            .get_attribute(Attr::CU_FUNC_ATTRIBUTE_MAX_THREADS_PER_BLOCK)
            .unwrap()
    };
    assert_eq!(max_threads("newton", "newton_pinv_t64_f32"), 256);
    assert_eq!(max_threads("fill", "fill_uniform_f32"), 1024);
}

/// `check_dynamic_smem` accepts up to the device's opt-in less the kernel's static shared memory
/// and names the argument beyond it.
#[test]
fn dynamic_shared_memory_beyond_the_device_is_a_typed_error() {
    let Some(rt) = device("kernels: smem check") else {
        return;
    };
    let f = rt.function("newton", "newton_pinv_t128_f32").unwrap();
    let fixed = f
        .get_attribute(Attr::CU_FUNC_ATTRIBUTE_SHARED_SIZE_BYTES)
        .unwrap() as u32;
    let room = rt.info().smem_per_block_optin as u32 - fixed;
    rt.check_dynamic_smem(&f, room).unwrap();
    let e = rt.check_dynamic_smem(&f, room + 1).unwrap_err();
    assert!(e.to_string().contains("shared memory"), "{e}");
}

/// sofa-sim refuses the launches the hardware refuses (checked on the simulator only: on a GPU a
/// launch the driver accepted would run the kernel on zeroed parameters). A block above the
/// kernel's launch bound is out of resources; dynamic shared memory above the kernel's limit, or
/// a limit above the device's opt-in less the static part, is an invalid value.
#[test]
fn the_simulator_refuses_what_the_hardware_refuses() {
    use cudarc::driver::sys::{self, CUresult};
    let Some(rt) = device("kernels: refused launches") else {
        return;
    };
    if !rt.info().is_simulator() {
        eprintln!("SKIP kernels: refused launches: simulator only");
        return;
    }
    let f = rt.function("newton", "newton_pinv_t64_f32").unwrap();
    let stream = rt.default_stream();
    let launch = |block: u32, smem: u32| {
        let mut params = [0u8; 512];
        let mut args = [params.as_mut_ptr() as *mut std::ffi::c_void];
        // SAFETY: every launch here is one the driver refuses before running anything.
        unsafe {
            sys::cuLaunchKernel(
                f.cu_function(),
                1,
                1,
                1,
                block,
                1,
                1,
                smem,
                stream.cu_stream(),
                args.as_mut_ptr(),
                std::ptr::null_mut(),
            )
        }
    };
    assert_eq!(launch(512, 0), CUresult::CUDA_ERROR_LAUNCH_OUT_OF_RESOURCES);
    let fixed = f
        .get_attribute(Attr::CU_FUNC_ATTRIBUTE_SHARED_SIZE_BYTES)
        .unwrap() as u32;
    let room = rt.info().smem_per_block_optin as u32 - fixed;
    assert_eq!(launch(256, room + 1), CUresult::CUDA_ERROR_INVALID_VALUE);
    let set =
        |bytes: i32| f.set_attribute(Attr::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES, bytes);
    assert!(
        set(room as i32 + 1).is_err(),
        "an opt-in beyond the device's room"
    );
    set((48 * 1024 - fixed) as i32).unwrap();
    assert_eq!(
        launch(256, 48 * 1024 - fixed + 1),
        CUresult::CUDA_ERROR_INVALID_VALUE
    );
    set(room as i32).unwrap(); // as `Runtime::function` left it
}
