use clap::Parser;

/// kubectl stepup: obtain and manage step-up grants. Commands arrive with the plugin issue.
#[derive(Parser, Debug)]
#[command(name = "kubectl-stepup", version, about = "Step-up authentication for kubectl")]
struct Cli {}

fn main() {
    let _ = Cli::parse();
    println!("kubectl-stepup {}: no commands yet; see `kubectl stepup --help`", env!("CARGO_PKG_VERSION"));
}
