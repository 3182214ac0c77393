//! Command-line interface: `sofa info`, `sofa run`, `sofa check`.

mod check;
mod info;
mod run;

use clap::{Parser, Subcommand};
use sofa::Error;

/// Exit codes (documented in the README).
pub const EXIT_ERROR: i32 = 1;
pub const EXIT_NO_DEVICE: i32 = 3;
pub const EXIT_CHECK_FAILED: i32 = 4;

#[derive(Parser)]
#[command(
    name = "sofa",
    version,
    about = "Softmax-free attention kernels: run, check, inspect"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
#[allow(clippy::large_enum_variant)] // parsed once; RunArgs carries every op's flags
enum Command {
    /// Device, kernel load paths and per-kernel registers/spills/shared memory.
    Info(info::InfoArgs),
    /// Run one operator on a safetensors file or random inputs (GPU or the CPU reference).
    Run(run::RunArgs),
    /// Cross-check the f64 CPU reference against itself (literal vs linear forms, identities).
    Check(check::CheckArgs),
}

pub fn main() -> i32 {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Info(a) => info::info(&a),
        Command::Run(a) => run::run(&a),
        Command::Check(a) => check::check(&a),
    };
    match result {
        Ok(code) => code,
        Err(e @ Error::NoDevice(_)) => {
            eprintln!("sofa: {e}");
            EXIT_NO_DEVICE
        }
        Err(e) => {
            eprintln!("sofa: error: {e}");
            EXIT_ERROR
        }
    }
}
