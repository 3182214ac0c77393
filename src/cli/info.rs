//! `sofa info`.

use sofa::runtime::embedded::{self, KernelResources};
use sofa::{Result, Runtime};

#[derive(clap::Args)]
pub struct InfoArgs {
    /// Device ordinal.
    #[arg(long, default_value_t = 0)]
    device: usize,
    /// Only print the build-time kernel report (registers, spills, smem); needs no GPU.
    #[arg(long)]
    kernels: bool,
}

pub fn info(args: &InfoArgs) -> Result<i32> {
    if args.kernels {
        print_resources(None);
        return Ok(0);
    }
    let rt = Runtime::new(args.device)?;
    let i = rt.info();
    println!("device        {} (ordinal {})", i.name, i.ordinal);
    println!(
        "compute cap.  {}.{}",
        i.compute_capability.0, i.compute_capability.1
    );
    println!("SMs           {}", i.multiprocessors);
    println!(
        "memory        {:.1} GiB",
        i.total_memory as f64 / (1u64 << 30) as f64
    );
    println!("L2            {} MiB", i.l2_bytes >> 20);
    println!(
        "smem/block    {} KiB (opt-in)",
        i.smem_per_block_optin >> 10
    );
    println!(
        "clocks        SM {} MHz, memory {} MHz, bus {} bits",
        i.sm_clock_khz / 1000,
        i.mem_clock_khz / 1000,
        i.mem_bus_bits
    );
    println!(
        "driver        CUDA {}.{}",
        i.driver_version / 1000,
        (i.driver_version % 1000) / 10
    );
    println!(
        "built with    nvcc {}",
        embedded::NVCC_VERSION.unwrap_or("(none: NVRTC only)")
    );
    println!("load policy   {:?}", rt.policy());
    for (family, path) in rt.load_all()? {
        println!("kernels       {family}: loaded from {path}");
    }
    match i.sass_arch() {
        Some(arch) => print_resources(Some(arch)),
        None => println!("\n(no SASS for this device is embedded: the driver compiles the PTX)"),
    }
    Ok(0)
}

fn print_resources(arch: Option<&str>) {
    println!();
    println!(
        "{:<28} {:<7} {:>5} {:>7} {:>7} {:>9}",
        "kernel", "arch", "regs", "spill", "stack", "smem"
    );
    let mut any = false;
    for fam in embedded::FAMILIES {
        for r in fam
            .resources
            .iter()
            .filter(|r| arch.is_none_or(|a| r.arch == a))
        {
            any = true;
            print_row(r);
        }
    }
    if !any {
        println!(
            "(no fatbin embedded: nvcc was not found at build time; kernels compile with NVRTC)"
        );
    }
}

fn print_row(r: &KernelResources) {
    println!(
        "{:<28} {:<7} {:>5} {:>7} {:>7} {:>9}",
        r.kernel,
        r.arch,
        r.registers,
        r.spill_store_bytes + r.spill_load_bytes,
        r.stack_bytes,
        r.smem_bytes
    );
}
