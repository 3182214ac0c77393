//! `sofa plot`.

use sofa::{Error, Result};
use std::path::PathBuf;

#[derive(clap::Args)]
pub struct PlotArgs {
    /// JSON lines written by `sofa bench --out`, `sofa run --json` or scripts/torch_reference.py.
    input: PathBuf,
    /// SVG file to write.
    #[arg(long)]
    out: PathBuf,
}

pub fn plot(a: &PlotArgs) -> Result<i32> {
    let text = std::fs::read_to_string(&a.input).map_err(|source| Error::Io {
        context: format!("reading {}", a.input.display()),
        source,
    })?;
    let used = sofa::bench::plot::plot(&text, &a.out)?;
    println!("wrote {} ({used} records)", a.out.display());
    Ok(0)
}
