//! `kubectl stepup`: kubectl finds this binary on PATH by its name. Parses arguments and hands
//! over to the library.

use std::process::ExitCode;

use clap::Parser;
use kubectl_stepup::{self as plugin, Cli};

fn main() -> ExitCode {
    // kube and rustls both use ring; install it as the process default once.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("__complete") {
        // kubectl's plugin completion (kubectl_complete-stepup) asks this way.
        use std::io::Write as _;
        let _ = std::io::stdout().write_all(plugin::complete::complete(&args[2..]).as_bytes());
        return ExitCode::SUCCESS;
    }
    match Cli::try_parse() {
        Ok(cli) => plugin::main(cli),
        Err(e) => {
            if e.use_stderr()
                && let Some(error) = plugin::kubectl_verb_misplaced(&args[1..])
            {
                eprint!("{}", plugin::Report { error: &error, verbose: false });
                return error.exit().into();
            }
            // Help and version print to stdout and exit 0; usage errors exit 2.
            let _ = e.print();
            ExitCode::from(e.exit_code() as u8)
        }
    }
}
