//! `sofa targets`.

use sofa::Result;
use std::path::PathBuf;

#[derive(clap::Args)]
pub struct TargetsArgs {
    /// JSON lines written by `sofa bench --out` (and scripts/torch_reference.py, for the
    /// flash-linear-attention comparison), read together.
    #[arg(required = true)]
    inputs: Vec<PathBuf>,
}

pub fn targets(a: &TargetsArgs) -> Result<i32> {
    let text = super::read_inputs(&a.inputs)?;
    print!(
        "{}",
        sofa::bench::targets::markdown(&sofa::bench::targets::judge_all(&text))
    );
    Ok(0)
}
