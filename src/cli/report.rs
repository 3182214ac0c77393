//! `sofa report`.

use sofa::bench::{crossover, targets};
use sofa::Result;
use std::path::PathBuf;

#[derive(clap::Args)]
pub struct ReportArgs {
    /// JSON lines written by `sofa bench --out` and scripts/torch_reference.py (SDPA, and fla for
    /// the causal cosFormer target), read together.
    #[arg(required = true)]
    inputs: Vec<PathBuf>,
}

pub fn report(a: &ReportArgs) -> Result<i32> {
    let text = super::read_inputs(&a.inputs)?;
    for (device, commit, n) in targets::sources(&text) {
        println!("Records: {n} from {device}, commit {commit}");
    }
    println!("\n## Performance targets (issues 4–6)\n");
    print!("{}", targets::markdown(&targets::judge_all(&text)));
    println!("\n## Where each op overtakes softmax attention\n");
    let rows = crossover::crossings(&text);
    if rows.is_empty() {
        println!("No sofa op and softmax reference measured at a common shape.");
    } else {
        print!("{}", crossover::markdown(&rows));
        println!(
            "\nN: the shortest measured length from which sofa is faster at every longer length \
             measured by both, as the bracket of measured lengths it lies in."
        );
    }
    Ok(0)
}
