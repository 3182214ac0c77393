//! `sofa`: the command-line front end (thin: parse, call the library, print).

mod cli;

fn main() {
    std::process::exit(cli::main());
}
