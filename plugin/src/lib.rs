//! The `kubectl stepup` plugin: enroll an authenticator, exchange codes for grants, inspect and
//! revoke them, check what an operation needs, and wrap kubectl so that a refusal turns into a
//! prompt and one retry. A shell around the API and the decision core, like the webhook.
//!
//! Every failure ends as one sentence, a hint and a stable exit code ([`Exit`]).

#![forbid(unsafe_code)]
#![deny(warnings)]

// Output that never panics: a closed pipe (`kubectl stepup status | head -1`) ends the
// output, not the process with a panic.
macro_rules! out {
    ($($arg:tt)*) => {{ use std::io::Write as _; let _ = write!(std::io::stdout(), $($arg)*); }};
}
macro_rules! outln {
    ($($arg:tt)*) => {{ use std::io::Write as _; let _ = writeln!(std::io::stdout(), $($arg)*); }};
}
macro_rules! err {
    ($($arg:tt)*) => {{ use std::io::Write as _; let _ = write!(std::io::stderr(), $($arg)*); }};
}
macro_rules! errln {
    ($($arg:tt)*) => {{ use std::io::Write as _; let _ = writeln!(std::io::stderr(), $($arg)*); }};
}

pub mod admin;
pub mod ceremony;
pub mod check;
pub mod cli;
pub mod cluster;
pub mod complete;
pub mod enroll;
pub mod error;
pub mod format;
pub mod report;
pub mod request;
pub mod resources;
pub mod sign_in;
pub mod status;
pub mod terminal;
pub mod trailer;
pub mod wait;
pub mod wrap;

use std::process::ExitCode;

use clap::CommandFactory;

pub use cli::Cli;
pub use error::{Error, Exit, Report};

use cli::Command;
use cluster::Session;

/// kubectl's own commands, which people type after `kubectl stepup` by habit.
const KUBECTL_VERBS: &[&str] = &[
    "annotate",
    "apply",
    "attach",
    "auth",
    "cordon",
    "cp",
    "create",
    "debug",
    "delete",
    "drain",
    "edit",
    "exec",
    "expose",
    "get",
    "label",
    "logs",
    "patch",
    "port-forward",
    "proxy",
    "replace",
    "rollout",
    "run",
    "scale",
    "set",
    "taint",
    "uncordon",
];

/// For arguments the parser refused: when the first word is a kubectl command
/// (`kubectl stepup delete secret db`, or `kubectl stepup -- delete ...` with kubectl left out),
/// the usage error that says how to run it with step-up, or how to check what it needs.
pub fn kubectl_verb_misplaced(args: &[String]) -> Option<Error> {
    let words: Vec<&str> = args.iter().map(String::as_str).skip_while(|a| *a == "--").collect();
    let verb = *words.first()?;
    if !KUBECTL_VERBS.contains(&verb) {
        return None;
    }
    let rest = words.join(" ");
    Some(Error::usage(
        format!("`{verb}` is a kubectl command, not a kubectl stepup one"),
        format!(
            "to run it with step-up: kubectl stepup -- kubectl {rest}\n      to see what it needs:   kubectl stepup check {rest}"
        ),
    ))
}

/// Runs the plugin and returns the process exit code.
pub fn main(cli: Cli) -> ExitCode {
    let verbose = cli.cluster.verbose;
    let json = cli.wants_json();
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(e) => {
            err!("{}", Report { error: &Error::other(format!("cannot start: {e}"), ""), verbose });
            return Exit::Error.into();
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(code) => ExitCode::from(code),
        Err(error) => {
            let report = Report { error: &error, verbose };
            err!("{report}");
            if json {
                outln!("{}", format::json(&report.json()));
            }
            error.exit().into()
        }
    }
}

async fn run(cli: Cli) -> Result<u8, Error> {
    let command = match cli.command {
        Some(command) => command,
        None if !cli.wrap.command.is_empty() => return wrap::run(&cli.cluster, &cli.wrap).await,
        None => {
            let _ = Cli::command().print_help();
            return Ok(Exit::Usage as u8);
        }
    };
    if let Command::Completion(args) = &command {
        // Into memory first: clap_complete panics on a write error, and `| head -1` closes
        // the pipe early; the out! macro does not.
        let mut script = Vec::new();
        clap_complete::generate(args.shell, &mut Cli::command(), "kubectl-stepup", &mut script);
        out!("{}", String::from_utf8_lossy(&script));
        return Ok(Exit::Ok as u8);
    }
    let session = Session::connect(&cli.cluster).await?;
    let exit = match command {
        Command::Enroll(args) => enroll::run(&session, &args).await.map(|()| Exit::Ok)?,
        Command::Request(args) => request::run(&session, &args).await.map(|()| Exit::Ok)?,
        Command::Status(args) => status::status(&session, &args).await.map(|()| Exit::Ok)?,
        Command::Revoke(args) => status::revoke(&session, &args).await.map(|()| Exit::Ok)?,
        Command::RemoveKey(args) => status::remove_key(&session, &args).await.map(|()| Exit::Ok)?,
        Command::Check(args) => check::run(&session, &args).await?,
        Command::Approve(args) => admin::run(&session, admin::Action::Approve, &args).await.map(|()| Exit::Ok)?,
        Command::Reset(args) => admin::run(&session, admin::Action::Reset, &args).await.map(|()| Exit::Ok)?,
        Command::Unlock(args) => {
            let args = cli::AdminArgs { user: args.user, key: None, method: cli::EnrolledMethod::Totp };
            admin::run(&session, admin::Action::Unlock, &args).await.map(|()| Exit::Ok)?
        }
        Command::Report(args) => report::run(&session, &args).await.map(|()| Exit::Ok)?,
        Command::Completion(_) => Exit::Ok,
    };
    Ok(exit as u8)
}

#[cfg(test)]
mod tests {
    use super::*;

    const KREW_MANIFEST: &str = include_str!("../../krew/stepup.yaml");

    #[test]
    fn krew_manifest_template_installs_this_binary_on_every_platform() {
        let manifest: serde_yaml::Value = serde_yaml::from_str(KREW_MANIFEST).expect("valid YAML");
        assert_eq!(manifest["kind"], "Plugin");
        assert_eq!(manifest["metadata"]["name"], "stepup", "kubectl finds kubectl-stepup as `kubectl stepup`");
        let platforms = manifest["spec"]["platforms"].as_sequence().expect("platforms");
        assert_eq!(platforms.len(), 4);
        for p in platforms {
            assert_eq!(p["bin"], "kubectl-stepup");
            let uri = p["uri"].as_str().unwrap_or_default();
            let os = p["selector"]["matchLabels"]["os"].as_str().unwrap_or_default();
            let arch = p["selector"]["matchLabels"]["arch"].as_str().unwrap_or_default();
            assert!(uri.ends_with(&format!("_{os}_{arch}.tar.gz")), "{uri}");
            assert!(p["sha256"].as_str().is_some_and(|s| s.starts_with("@SHA256_")), "filled in by krew/render.sh");
        }
    }

    #[test]
    fn completion_scripts_name_the_plugin_binary() {
        let mut out = Vec::new();
        clap_complete::generate(clap_complete::Shell::Bash, &mut Cli::command(), "kubectl-stepup", &mut out);
        let script = String::from_utf8(out).unwrap();
        assert!(script.contains("kubectl-stepup"), "{script}");
        assert!(script.contains("enroll") && script.contains("revoke"));
    }

    /// A newcomer's slips (issue 30): `kubectl stepup delete secret db -n prod` said only
    /// "unexpected argument", and `kubectl stepup -- delete ...` said "Install kubectl".
    #[test]
    fn a_kubectl_command_in_the_wrong_place_is_answered_with_the_two_right_ways() {
        let words = |text: &str| text.split_whitespace().map(str::to_owned).collect::<Vec<_>>();
        assert!(
            <Cli as clap::Parser>::try_parse_from(["kubectl-stepup", "delete", "secret", "db"]).is_err(),
            "not a subcommand"
        );
        for typed in ["delete secret db -n prod", "-- delete secret db -n prod"] {
            let error = kubectl_verb_misplaced(&words(typed)).expect("recognised");
            assert_eq!(error.exit(), Exit::Usage);
            let text = Report { error: &error, verbose: false }.to_string();
            assert!(text.starts_with("error: `delete` is a kubectl command, not a kubectl stepup one."), "{text}");
            assert!(text.contains("kubectl stepup -- kubectl delete secret db -n prod"), "{text}");
            assert!(text.contains("kubectl stepup check delete secret db -n prod"), "{text}");
        }
        assert!(kubectl_verb_misplaced(&words("statsu")).is_none(), "other typos keep the parser's message");
    }
}
