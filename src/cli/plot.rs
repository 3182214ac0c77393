//! `sofa plot`.

use sofa::Result;
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
    let text = super::read_inputs(&a.inputs)?;
    let used = sofa::bench::plot::plot(&text, &a.out)?;
    println!("wrote {} ({used} records)", a.out.display());
    Ok(0)
}
