//! `sofa plot`.

use sofa::{Error, Result};
use std::path::PathBuf;

#[derive(clap::Args)]
pub struct PlotArgs {
    /// JSON lines written by `sofa bench --out`, `sofa run --json` or scripts/torch_reference.py;
    /// several files are plotted together (e.g. sofa's sweep and the PyTorch references).
    #[arg(required = true)]
    inputs: Vec<PathBuf>,
    /// SVG file to write.
    #[arg(long)]
    out: PathBuf,
}

pub fn plot(a: &PlotArgs) -> Result<i32> {
    let mut text = String::new();
    for input in &a.inputs {
        let part = std::fs::read_to_string(input).map_err(|source| Error::Io {
            context: format!("reading {}", input.display()),
            source,
        })?;
        text.push_str(&part);
        if !text.ends_with('\n') {
            text.push('\n');
        }
    }
    let used = sofa::bench::plot::plot(&text, &a.out)?;
    println!("wrote {} ({used} records)", a.out.display());
    Ok(0)
}
