//! The command line of `kubectl stepup`: what `--help` shows, with examples and exit codes.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

use stepup_core::api::Duration;

const EXIT_CODES: &str = "\
Exit codes (stable, for scripts):
  0  success; for `check`, the operation is allowed
  1  other error
  2  usage error
  3  step-up required, or the code was refused (wrong, reused, rate-limited, expired)
  4  not enrolled, enrollment waiting for approval or not confirmed yet
  5  enrollment locked after too many failures: an admin must reset it
  6  the API server cannot be reached
  7  kube-stepup is not answering (admission webhook call failed, or the controller did
     not act in time)
With `kubectl stepup -- <command>`, the command's own exit code is passed through.";

const EXIT_SUMMARY: &str = "Exit codes: 0 ok, 2 usage, 3 step-up required or code refused, 4 not enrolled, \
5 locked, 6 API server unreachable, 7 kube-stepup not answering (details: --help).";

const TOP_EXAMPLES: &str = "\
Examples:
  # Once: enroll an authenticator app (scan the QR code, type the first code)
  kubectl stepup enroll

  # Get a grant before a sensitive operation
  kubectl stepup request --reason INC-42

  # Or let kubectl stepup handle a refusal: prompt for the code, get a grant, retry once
  kubectl stepup -- kubectl delete secret db -n prod

  # What would a command need?
  kubectl stepup check delete secret db -n prod";

/// kubectl stepup: step-up authentication for kubectl.
///
/// Dangerous operations (as StepUpPolicies define them) need a fresh second factor: a code
/// from your authenticator app, exchanged for a short-lived StepUpGrant.
#[derive(Parser, Debug)]
#[command(
    name = "kubectl-stepup",
    bin_name = "kubectl stepup",
    version,
    about = "Step-up authentication for kubectl: prove a second factor before dangerous operations",
    after_help = format!("{TOP_EXAMPLES}\n\n{EXIT_SUMMARY}"),
    after_long_help = format!("{TOP_EXAMPLES}\n\n{EXIT_CODES}"),
    subcommand_negates_reqs = true
)]
pub struct Cli {
    #[command(flatten)]
    pub cluster: ClusterArgs,

    #[command(subcommand)]
    pub command: Option<Command>,

    #[command(flatten)]
    pub wrap: WrapArgs,
}

impl Cli {
    /// Whether the command asked for JSON: then errors are JSON on stdout too, so a script
    /// that parses stdout learns what went wrong.
    pub fn wants_json(&self) -> bool {
        match &self.command {
            Some(Command::Request(a)) => a.output == Output::Json,
            Some(Command::Status(a)) => a.output == Output::Json,
            Some(Command::Check(a)) => a.output == Output::Json,
            Some(Command::Report(a)) => a.format == super::report::Format::Json,
            _ => false,
        }
    }
}

/// Which cluster and credentials: the same flags and environment kubectl reads.
#[derive(Args, Debug, Clone, Default)]
pub struct ClusterArgs {
    /// Path to the kubeconfig file (default: $KUBECONFIG, then ~/.kube/config).
    #[arg(long, global = true, value_name = "FILE", help_heading = "Global options")]
    pub kubeconfig: Option<PathBuf>,

    /// The kubeconfig context to use.
    #[arg(long, global = true, value_name = "NAME", help_heading = "Global options")]
    pub context: Option<String>,

    /// Show the underlying error after the one-line explanation.
    #[arg(short, long, global = true, help_heading = "Global options")]
    pub verbose: bool,

    /// The namespace stepup is installed in (where `check` reads the webhook's settings).
    #[arg(
        long,
        global = true,
        value_name = "NAMESPACE",
        env = "KUBECTL_STEPUP_NAMESPACE",
        default_value = "stepup-system",
        help_heading = "Global options"
    )]
    pub stepup_namespace: String,
}

/// `kubectl stepup [--reason ..] -- <kubectl command>`.
#[derive(Args, Debug, Clone, Default)]
pub struct WrapArgs {
    /// Reason to record if the wrapped command needs a grant (asked for when a policy requires one).
    #[arg(long, value_name = "TEXT")]
    pub reason: Option<String>,

    /// Requested lifetime of a grant obtained for the wrapped command (e.g. 30m); at least 1m.
    #[arg(long, value_name = "DURATION", value_parser = grant_duration, allow_hyphen_values = true)]
    pub duration: Option<Duration>,

    /// How long to wait for the stepup controller.
    #[arg(long, value_name = "DURATION", default_value = "30s")]
    pub timeout: Duration,

    /// How to step up when both are accepted: TOTP or OIDC. By default OIDC when the policy
    /// accepts it and you have no authenticator enrolled, TOTP otherwise.
    #[arg(long, value_enum, ignore_case = true)]
    pub method: Option<RequestMethod>,

    #[command(flatten)]
    pub sign_in: SignInArgs,

    /// The command to run, after `--`: `kubectl ...` (runs $KUBECTL or the kubectl on PATH).
    /// If kube-stepup refuses it, you are asked for a code, a grant is obtained and the
    /// command is retried once. Output and exit code are passed through unchanged.
    #[arg(last = true, value_name = "COMMAND")]
    pub command: Vec<String>,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Enroll an authenticator app (once per user) or move to a new one; or register a security key or passkey (--method WebAuthn).
    #[command(after_help = "\
Examples:
  # First enrollment: waits for an admin's approval if your cluster requires it,
  # shows a QR code for your authenticator app and asks for its first code
  kubectl stepup enroll

  # Move to a new phone: asks a code from the old authenticator, then enrolls the new one
  # (lost the old one: press Enter and have an admin approve the fingerprint shown)
  kubectl stepup enroll --reenroll

  # The first admin of a fresh installation, within the bootstrap window
  kubectl stepup enroll --bootstrap")]
    Enroll(EnrollArgs),

    /// Prove a second factor (a code from your authenticator, your security key, a sign-in) and get a grant.
    #[command(after_help = "\
Examples:
  kubectl stepup request
  kubectl stepup request --reason INC-42 --duration 30m
  kubectl stepup request --namespace prod --policy prod-secrets
  # Automation: the code on standard input, the grant as JSON
  echo 123456 | kubectl stepup request --code-stdin -o json")]
    Request(RequestArgs),

    /// Show your enrollment and your grants with their remaining time.
    #[command(after_help = "\
Examples:
  kubectl stepup status
  kubectl stepup status --all -o json")]
    Status(StatusArgs),

    /// Revoke (delete) your grants.
    #[command(after_help = "\
Examples:
  # Your only active grant
  kubectl stepup revoke
  kubectl stepup revoke alice-7f3c2a
  kubectl stepup revoke --all")]
    Revoke(RevokeArgs),

    /// Which policies apply to an operation, and whether a current grant satisfies them.
    #[command(after_help = "\
Like `kubectl auth can-i`, for step-up. Exit code 0 when the operation is allowed as far as
step-up is concerned, 3 when it needs a grant first.

Verbs: get, list, watch (describe, logs: get); create; update, patch, apply, edit, replace,
scale, label, annotate; delete; exec, attach, port-forward, proxy (pods/exec, ...). `apply`
checks create and update. Reads need a grant only where a policy names them with `verbs`
and the API server sends them to stepup's authorizer.

Examples:
  kubectl stepup check delete secret db -n prod
  kubectl stepup check get secret db -n prod
  kubectl stepup check delete secrets/db -n prod
  kubectl stepup check exec pod web -n prod
  kubectl stepup check create clusterrolebindings
  kubectl stepup check -f deploy.yaml
  kubectl stepup check delete -f deploy.yaml -o json")]
    Check(CheckArgs),

    /// Admins: approve a user's first enrollment, for the one key fingerprint they show you.
    #[command(after_help = "\
Needs membership in stepup's admin group (default stepup:admins). You cannot approve yourself.
The approval is for the key the enrollment carries now; ask the user to read you the
fingerprint their `kubectl stepup enroll` shows, and compare. It is used once, within the
controller's approval window (default 15m).

Examples:
  kubectl stepup approve alice@example.com
  kubectl stepup approve alice@example.com --key 3f2a-91c0-77de-0b14-aa58-c3e9")]
    Approve(AdminArgs),

    /// Admins: allow one re-enrollment without the old device, for one key fingerprint.
    #[command(after_help = "\
Needs membership in stepup's admin group (default stepup:admins). You cannot reset yourself.
The user runs `kubectl stepup enroll --reenroll` and reads you the fingerprint it shows; the
approval is for that key only, used once within the controller's approval window (default 15m).
It does not unlock anything by itself: once the new authenticator is confirmed, the old one no
longer works. To clear a lockout and nothing else, use `kubectl stepup unlock`.

Examples:
  kubectl stepup reset alice@example.com
  kubectl stepup reset alice@example.com --key 3f2a-91c0-77de-0b14-aa58-c3e9")]
    Reset(AdminArgs),

    /// Admins: clear a user's lockout, and nothing else.
    #[command(after_help = "\
Needs membership in stepup's admin group (default stepup:admins). You cannot unlock yourself.
Forgets the failed attempts; the enrolled authenticator and key stay as they are.

Example:
  kubectl stepup unlock alice@example.com")]
    Unlock(UnlockArgs),

    /// Remove one of your security keys (lost, or replaced); admins: another person's (--user).
    #[command(after_help = "\
Removing your own key takes a fresh second factor: one of your registered keys (any, the one
you remove included) or, with --method TOTP, your authenticator app. Someone holding only your
kubeconfig removes nothing. Lost every key and have no authenticator app? An admin removes it
(--user; their own step-up). The key stops answering at once; its removal and who removed it
are recorded (Event SecurityKeyRemoved, audit event enrollment.key_removed).
`kubectl stepup status` lists your keys by id.

Examples:
  kubectl stepup remove-key 3aab35e8c53f55b02cf433bc125c8dca
  kubectl stepup remove-key 3aab35e8 --method TOTP
  kubectl stepup remove-key 3aab35e8 --user alice@example.com     # an admin")]
    RemoveKey(RemoveKeyArgs),

    /// What an auditor asks for a period: prompts, step-ups, grants used, break-glass, lockouts.
    #[command(after_help = "\
Examples:
  kubectl stepup report --since 30d
  kubectl stepup report --since 2026-10-01 --until 2026-11-01 --user alice -o csv
  # One self-contained file for the auditor, including every request the API server reviewed
  kubectl stepup report --since 90d --audit-log /var/log/kubernetes/audit.log -o html > report.html

Needs read access to stepup's audit trail (the <release>-auditor ClusterRole).")]
    Report(ReportArgs),

    /// Print a shell completion script for `kubectl-stepup` called by that name.
    #[command(after_help = "\
`kubectl stepup <TAB>` completes through kubectl's own completion instead (source <(kubectl
completion bash)), which runs `kubectl_complete-stepup` from PATH; it ships beside kubectl-stepup.

Examples:
  source <(kubectl-stepup completion bash)
  kubectl-stepup completion zsh > \"${fpath[1]}/_kubectl-stepup\"")]
    Completion(CompletionArgs),
}

#[derive(Args, Debug, Clone)]
pub struct EnrollArgs {
    /// Replace an active enrollment (new authenticator); asks for a code from the current one,
    /// or waits for an admin to approve the new key (`kubectl stepup reset`).
    #[arg(long)]
    pub reenroll: bool,

    /// The first admin of a fresh installation: enroll through the one-time bootstrap, which
    /// needs no second admin while its window is open and nobody has used it.
    #[arg(long)]
    pub bootstrap: bool,

    /// How long to wait for the controller, and for an admin's approval.
    #[arg(long, value_name = "DURATION", default_value = "5m")]
    pub timeout: Duration,

    /// What to enroll: an authenticator app (`TOTP`) or a security key or passkey (`WebAuthn`,
    /// one more each time, in your browser).
    #[arg(long, value_enum, default_value_t = EnrolledMethod::Totp, ignore_case = true)]
    pub method: EnrolledMethod,

    /// For WebAuthn: print the address of the security-key page instead of opening a browser.
    #[arg(long)]
    pub no_browser: bool,

    /// For WebAuthn, with a key registered already: wait for an admin to approve the new key
    /// instead of allowing it with one of your registered keys (a key lost or at home).
    #[arg(long)]
    pub approval: bool,
}

#[derive(Args, Debug, Clone)]
pub struct RequestArgs {
    /// Why you step up (ticket, incident); recorded in the grant and the audit trail.
    #[arg(long, value_name = "TEXT")]
    pub reason: Option<String>,

    /// Requested lifetime of the grant (e.g. 15m, 1h); at least 1m, and the controller caps it.
    #[arg(long, value_name = "DURATION", value_parser = grant_duration, allow_hyphen_values = true)]
    pub duration: Option<Duration>,

    /// Limit the grant to these namespaces (repeatable).
    #[arg(long = "namespace", short = 'n', value_name = "NAMESPACE")]
    pub namespaces: Vec<String>,

    /// Limit the grant to these policies (repeatable).
    #[arg(long = "policy", value_name = "POLICY")]
    pub policies: Vec<String>,

    /// How to step up: TOTP (a code from your authenticator app), OIDC (sign in at the
    /// identity provider the cluster trusts, in your browser) or WebAuthn (your security key or
    /// passkey, in your browser).
    #[arg(long, value_enum, default_value_t = RequestMethod::Totp, ignore_case = true)]
    pub method: RequestMethod,

    #[command(flatten)]
    pub sign_in: SignInArgs,

    /// Read the code from standard input instead of asking on the terminal.
    #[arg(long)]
    pub code_stdin: bool,

    /// Insist on a reason: ask for one when --reason is missing (and fail without a terminal).
    #[arg(long)]
    pub reason_required: bool,

    /// How long to wait for the controller's verdict.
    #[arg(long, value_name = "DURATION", default_value = "30s")]
    pub timeout: Duration,

    /// Output format: text for people, json for scripts.
    #[arg(short, long, value_enum, default_value_t = Output::Text)]
    pub output: Output,
}

/// How an `OIDC` step-up reaches the identity provider (`request` and the wrapper).
#[derive(clap::Args, Clone, Debug, Default)]
pub struct SignInArgs {
    /// For OIDC and WebAuthn: print the address (sign-in, security-key page) instead of
    /// opening a browser.
    #[arg(long)]
    pub no_browser: bool,

    /// For OIDC: sign in on another device (the device authorization grant: a code to enter
    /// in any browser), for a terminal without one.
    #[arg(long, conflicts_with = "no_browser")]
    pub device: bool,

    /// For OIDC and WebAuthn: how long to wait for the sign-in at the identity provider, or
    /// for your security key.
    #[arg(long, value_name = "DURATION", default_value = "5m")]
    pub sign_in_timeout: Duration,
}

impl SignInArgs {
    pub fn browser(&self) -> super::sign_in::Browser {
        use super::sign_in::Browser;
        match (self.device, self.no_browser) {
            (true, _) => Browser::Device,
            (false, true) => Browser::Print,
            (false, false) => Browser::Open,
        }
    }

    pub fn wait(&self) -> std::time::Duration {
        self.sign_in_timeout.as_std()
    }
}

/// `kubectl stepup request --method`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum RequestMethod {
    #[value(name = "TOTP")]
    Totp,
    #[value(name = "OIDC")]
    Oidc,
    #[value(name = "WebAuthn")]
    WebAuthn,
}

impl RequestMethod {
    pub const fn as_str(self) -> &'static str {
        match self {
            RequestMethod::Totp => "TOTP",
            RequestMethod::Oidc => "OIDC",
            RequestMethod::WebAuthn => "WebAuthn",
        }
    }
}

/// The shortest grant worth asking for: a shorter one expires before the command that needs it
/// has run (and `0` or `1ns` used to come back as a grant already expired).
pub const MIN_GRANT_DURATION: Duration = Duration::from_secs(60);

/// `--duration`: a grant's requested lifetime. Negative values are taken as values
/// (`allow_hyphen_values`) so that `-5m` is refused with this sentence, not as an unknown flag.
fn grant_duration(value: &str) -> Result<Duration, String> {
    if let Some(magnitude) = value.strip_prefix('-') {
        return Err(match magnitude.parse::<Duration>() {
            Ok(d) => format!(
                "a grant's duration cannot be negative; give how long it should last, e.g. {}",
                d.max(MIN_GRANT_DURATION)
            ),
            // `--duration --code-stdin`: the value was forgotten.
            Err(_) => {
                format!("{value} is a flag, not a duration: give one such as 15m (at least {MIN_GRANT_DURATION})")
            }
        });
    }
    let duration = value.parse::<Duration>().map_err(|e| e.to_string())?;
    if duration < MIN_GRANT_DURATION {
        return Err(format!(
            "a grant lasts at least {MIN_GRANT_DURATION}: a shorter one would expire before the command that needs it runs"
        ));
    }
    Ok(duration)
}

#[derive(Args, Debug, Clone)]
pub struct StatusArgs {
    /// Also list expired and revoked grants (kept as audit evidence).
    #[arg(long)]
    pub all: bool,

    /// Output format: text for people, json for scripts.
    #[arg(short, long, value_enum, default_value_t = Output::Text)]
    pub output: Output,
}

#[derive(Args, Debug, Clone)]
pub struct RevokeArgs {
    /// Grants to revoke. Without a name, your only active grant.
    #[arg(value_name = "GRANT", conflicts_with = "all")]
    pub grants: Vec<String>,

    /// Revoke all your active grants.
    #[arg(long)]
    pub all: bool,
}

#[derive(Args, Debug, Clone)]
pub struct RemoveKeyArgs {
    /// The key's id, as `kubectl stepup status` lists it (a unique beginning of at least 8
    /// characters will do).
    #[arg(value_name = "KEY")]
    pub key: String,

    /// Admins: the person whose key it is (you cannot remove others' keys otherwise).
    #[arg(long, value_name = "USER")]
    pub user: Option<String>,

    /// The factor that proves it is you: a registered security key (in the browser) or your
    /// authenticator app's code. Admins removing another's key step up as for any admin act.
    #[arg(long, value_enum, default_value = "WebAuthn")]
    pub method: EnrolledMethod,

    /// Print the security-key page's address instead of opening a browser.
    #[arg(long)]
    pub no_browser: bool,

    /// Read the authenticator app's code from standard input (with --method TOTP).
    #[arg(long)]
    pub code_stdin: bool,

    /// How long to wait for the controller.
    #[arg(long, value_name = "DURATION", default_value = "1m")]
    pub timeout: Duration,
}

#[derive(Args, Debug, Clone)]
pub struct CheckArgs {
    /// Verb (delete, create, update, patch, apply, exec, ...), then resource and name:
    /// `delete secret db`, `delete secrets/db`, `create deployments.apps`.
    #[arg(value_name = "VERB RESOURCE [NAME]", num_args = 0..=3)]
    pub words: Vec<String>,

    /// Namespace of the object (default: the context's namespace).
    #[arg(short, long, value_name = "NAMESPACE")]
    pub namespace: Option<String>,

    /// Objects from a manifest file (`-` for standard input) instead of VERB RESOURCE NAME;
    /// the verb defaults to `apply`.
    #[arg(short = 'f', long = "filename", value_name = "FILE")]
    pub filename: Option<PathBuf>,

    /// Subresource, e.g. `exec` or `status`.
    #[arg(long, value_name = "NAME")]
    pub subresource: Option<String>,

    /// Output format: text for people, json for scripts.
    #[arg(short, long, value_enum, default_value_t = Output::Text)]
    pub output: Output,
}

#[derive(Args, Debug, Clone)]
pub struct AdminArgs {
    /// The user's name, exactly as the API server authenticates them.
    #[arg(value_name = "USER")]
    pub user: String,

    /// The key fingerprint the user read to you; without it, you are asked to confirm the one
    /// shown.
    #[arg(long, value_name = "FINGERPRINT")]
    pub key: Option<String>,

    /// Which of the user's enrollments: their authenticator app (`TOTP`) or their security keys
    /// and passkeys (`WebAuthn`, where each approval lets them register one more key).
    #[arg(long, value_enum, default_value_t = EnrolledMethod::Totp, ignore_case = true)]
    pub method: EnrolledMethod,
}

/// The methods that have an enrollment.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum EnrolledMethod {
    #[value(name = "TOTP")]
    Totp,
    #[value(name = "WebAuthn")]
    WebAuthn,
}

impl EnrolledMethod {
    pub const fn method(self) -> stepup_core::api::Method {
        match self {
            EnrolledMethod::Totp => stepup_core::api::Method::Totp,
            EnrolledMethod::WebAuthn => stepup_core::api::Method::WebAuthn,
        }
    }
}

#[derive(Args, Debug, Clone)]
pub struct UnlockArgs {
    /// The user's name, exactly as the API server authenticates them.
    #[arg(value_name = "USER")]
    pub user: String,
}

#[derive(Args, Debug, Clone)]
pub struct CompletionArgs {
    #[arg(value_enum)]
    pub shell: clap_complete::Shell,
}

#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Output {
    #[default]
    Text,
    Json,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    #[default]
    Table,
    Csv,
    Json,
    Html,
}

#[derive(clap::Args, Debug, Clone)]
pub struct ReportArgs {
    /// Start of the period: a duration back from now (`30d`, `12h`), a date (`2026-11-01`) or
    /// an RFC 3339 time.
    #[arg(long, default_value = "30d")]
    pub since: String,
    /// End of the period (same forms); default now.
    #[arg(long)]
    pub until: Option<String>,
    /// Only this user.
    #[arg(long)]
    pub user: Option<String>,
    /// Only records that involve this policy.
    #[arg(long)]
    pub policy: Option<String>,
    /// table, csv, json, or html (one self-contained file: `-o html > report.html`).
    #[arg(short = 'o', long = "output", value_enum, default_value_t = Format::Table)]
    pub format: Format,
    /// A kube-apiserver audit log (JSON lines) to take every reviewed request from, by its
    /// `validate.stepup.dev/*` and `advise.stepup.dev/*` annotations, instead of the webhook's
    /// own records.
    #[arg(long, value_name = "FILE")]
    pub audit_log: Option<std::path::PathBuf>,
    /// Exit 1 when the trail is incomplete (records dropped by their writers, or unreadable):
    /// for a scheduled evidence job that must not pass on a partial trail.
    #[arg(long)]
    pub strict: bool,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Exit;
    use clap::CommandFactory;

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("kubectl-stepup").chain(args.iter().copied()))
    }

    #[test]
    fn the_command_line_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn everything_after_the_double_dash_is_the_wrapped_command() {
        let cli = parse(&["--reason", "INC-1", "--", "kubectl", "delete", "secret", "db", "-n", "prod"]).unwrap();
        assert!(cli.command.is_none());
        assert_eq!(cli.wrap.command, ["kubectl", "delete", "secret", "db", "-n", "prod"]);
        assert_eq!(cli.wrap.reason.as_deref(), Some("INC-1"));
    }

    #[test]
    fn global_cluster_flags_work_before_and_after_the_subcommand() {
        let cli = parse(&["--context", "prod", "status", "--kubeconfig", "/k", "-o", "json"]).unwrap();
        assert_eq!(cli.cluster.context.as_deref(), Some("prod"));
        assert_eq!(cli.cluster.kubeconfig, Some(PathBuf::from("/k")));
        let Some(Command::Status(s)) = cli.command else { panic!("status") };
        assert_eq!(s.output, Output::Json);
    }

    #[test]
    fn request_takes_scope_duration_and_reason() {
        let cli =
            parse(&["request", "-n", "prod", "-n", "stage", "--policy", "p", "--duration", "30m", "--code-stdin"])
                .unwrap();
        let Some(Command::Request(r)) = cli.command else { panic!("request") };
        assert_eq!(r.namespaces, ["prod", "stage"]);
        assert_eq!(r.policies, ["p"]);
        assert_eq!(r.duration.unwrap().to_string(), "30m");
        assert!(r.code_stdin);
        assert!(parse(&["request", "--duration", "soon"]).is_err());
    }

    #[test]
    fn grants_shorter_than_a_minute_or_negative_are_refused_naming_the_flag_and_the_minimum() {
        let request = |value: &str| parse(&["request", "--duration", value]).map(|_| ());
        let wrapper = |value: &str| parse(&["--duration", value, "--", "kubectl", "get", "pods"]).map(|_| ());
        for command in [&request as &dyn Fn(&str) -> Result<(), clap::Error>, &wrapper] {
            for (value, says) in [
                ("0", "at least 1m"),
                ("0s", "at least 1m"),
                ("1ns", "at least 1m"),
                ("59.9s", "at least 1m"),
                ("-5m", "cannot be negative"),
                ("-1h", "cannot be negative"),
            ] {
                let error = command(value).unwrap_err();
                assert_eq!(error.exit_code(), Exit::Usage as i32, "{value}");
                let text = error.to_string();
                assert!(text.contains("--duration") && text.contains(says), "{value}: {text}");
                assert!(!text.contains("unexpected argument"), "{value}: {text}");
            }
            let forgotten = command("--code-stdin").unwrap_err().to_string();
            assert!(forgotten.contains("is a flag, not a duration"), "{forgotten}");
            assert!(command("1m").is_ok() && command("1000h").is_ok());
        }
    }

    #[test]
    fn usage_errors_exit_with_2_and_help_documents_exit_codes() {
        assert_eq!(parse(&["check", "a", "b", "c", "d"]).unwrap_err().exit_code(), 2);
        assert_eq!(parse(&["revoke", "g", "--all"]).unwrap_err().exit_code(), 2);
        let help = Cli::command().render_long_help().to_string();
        assert!(help.contains("Exit codes"), "{help}");
        assert!(help.contains("5  enrollment locked"), "{help}");
    }
}
