//! Command-line interface: `sofa info`, `run`, `check`, `bench`, `plot`, `report`.

mod bench;
mod check;
mod info;
mod plot;
mod report;
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
    /// Sweep GPU operators over sequence lengths: time, throughput, % of roofline.
    Bench(bench::BenchArgs),
    /// Plot JSON-lines results (throughput and % of roofline vs N, log-log) to SVG.
    Plot(plot::PlotArgs),
    /// Summarize JSON-lines results: the issues' performance targets (met, missed, not measured)
    /// and where each op overtakes softmax attention (Markdown tables).
    Report(report::ReportArgs),
}

pub fn main() -> i32 {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Info(a) => info::info(&a),
        Command::Run(a) => run::run(&a),
        Command::Check(a) => check::check(&a),
        Command::Bench(a) => bench::bench(&a),
        Command::Plot(a) => plot::plot(&a),
        Command::Report(a) => report::report(&a),
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

/// Appends one line to a results file (each record is written as soon as it exists, so an
/// interrupted sweep keeps what it measured).
fn append_line(path: &std::path::Path, line: &str) -> sofa::Result<()> {
    use std::io::Write;
    let io = |source| Error::Io {
        context: format!("appending to {}", path.display()),
        source,
    };
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(io)?;
    writeln!(f, "{line}").map_err(io)
}

/// The files' text, concatenated with a newline between them (JSON-lines inputs).
fn read_inputs(inputs: &[std::path::PathBuf]) -> sofa::Result<String> {
    let mut text = String::new();
    for input in inputs {
        let part = std::fs::read_to_string(input).map_err(|source| Error::Io {
            context: format!("reading {}", input.display()),
            source,
        })?;
        text.push_str(&part);
        if !text.ends_with('\n') {
            text.push('\n');
        }
    }
    Ok(text)
}
