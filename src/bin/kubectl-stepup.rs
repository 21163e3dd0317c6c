//! `kubectl stepup`: kubectl finds this binary on PATH by its name. Parses arguments and hands
//! over to the library.

use std::process::ExitCode;

use clap::Parser;
use kube_stepup::plugin::{self, Cli};

fn main() -> ExitCode {
    // kube and rustls both use ring; install it as the process default once.
    let _ = rustls::crypto::ring::default_provider().install_default();
    match Cli::try_parse() {
        Ok(cli) => plugin::main(cli),
        Err(e) => {
            // Help and version print to stdout and exit 0; usage errors exit 2.
            let _ = e.print();
            ExitCode::from(e.exit_code() as u8)
        }
    }
}
