//! Every way the plugin can fail, as one sentence, a hint and a stable exit code.

use std::fmt;

/// Exit codes scripts can rely on; `--help` lists them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Exit {
    Ok = 0,
    Error = 1,
    Usage = 2,
    /// Step-up required, or the code was refused.
    StepUp = 3,
    /// Not enrolled, waiting for approval, or not confirmed.
    NotEnrolled = 4,
    Locked = 5,
    Unreachable = 6,
    /// The webhook or the controller is not answering.
    Unavailable = 7,
}

impl From<Exit> for std::process::ExitCode {
    fn from(exit: Exit) -> Self {
        std::process::ExitCode::from(exit as u8)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{message}")]
    Usage { message: String, hint: String },
    #[error("you are not enrolled for step-up authentication")]
    NotEnrolled { user: String },
    #[error("your enrollment is waiting for an admin's approval{}", suffix(.message))]
    PendingApproval { user: String, message: Option<String> },
    #[error("your enrollment is not confirmed yet")]
    Unconfirmed,
    #[error("{}", locked(.message))]
    Locked { user: String, message: Option<String> },
    #[error("the code was not accepted: {message}")]
    CodeRefused { message: String },
    #[error("the sign-in was not accepted: {message}")]
    SignInRefused { message: String },
    #[error("the security key's answer was not accepted: {message}")]
    KeyRefused { message: String },
    #[error("the challenge expired before the controller verified it")]
    ChallengeExpired,
    #[error("the API server at {server} cannot be reached")]
    Unreachable { server: String, detail: String },
    #[error("an admission webhook call failed, so the API server refused to {action}")]
    WebhookDown { action: String, detail: String },
    #[error("the stepup controller did not {what} within {after}")]
    ControllerTimeout { what: String, after: stepup_core::api::Duration },
    #[error(
        "the stepup controller did not {what} within {after}; the challenge was withdrawn, so no grant will be issued for it{}",
        if *.revoked { " (a grant issued at the last moment was revoked)" } else { "" }
    )]
    Withdrawn { what: String, after: stepup_core::api::Duration, revoked: bool },
    #[error("interrupted; the challenge was withdrawn, so no grant will be issued for it")]
    Interrupted,
    #[error("your enrollment's key was changed by someone else while you enrolled (it now carries key {now})")]
    KeyChanged { now: String },
    #[error("kube-stepup is not installed in this cluster (no stepup.dev API)")]
    NotInstalled,
    #[error("kube-stepup refused to {action}: {message}")]
    Refused { action: String, message: String },
    #[error("you are not allowed to {action}")]
    Forbidden { action: String, detail: String },
    #[error("the API server did not accept your credentials")]
    Unauthorized { detail: String },
    #[error("cannot load the kubeconfig: {detail}")]
    Kubeconfig { detail: String },
    #[error("the API server refused to {action}: {message}")]
    Api { action: String, message: String },
    #[error("{message}")]
    Other { message: String, hint: String },
}

/// The failure rate limit pauses codes for a while and lifts by itself; a lockout lasts until
/// an admin unlocks. The controller's sentence says which; so does the plugin's.
fn is_rate_limit(message: &Option<String>) -> bool {
    message
        .as_deref()
        .is_some_and(|m| m.contains("try again in") || m.contains("unlocks by itself") || m.contains("checked again"))
}

fn locked(message: &Option<String>) -> String {
    if is_rate_limit(message) {
        format!("your codes are paused after too many failed ones{}", suffix(message))
    } else {
        format!("your step-up enrollment is locked{}", suffix(message))
    }
}

fn suffix(message: &Option<String>) -> String {
    message.as_deref().map(|m| format!(" ({})", m.trim_end_matches('.'))).unwrap_or_default()
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub fn usage(message: impl Into<String>, hint: impl Into<String>) -> Self {
        Error::Usage { message: message.into(), hint: hint.into() }
    }

    pub fn other(message: impl Into<String>, hint: impl Into<String>) -> Self {
        Error::Other { message: message.into(), hint: hint.into() }
    }

    pub fn exit(&self) -> Exit {
        match self {
            Error::Usage { .. } => Exit::Usage,
            Error::CodeRefused { .. }
            | Error::SignInRefused { .. }
            | Error::KeyRefused { .. }
            | Error::ChallengeExpired => Exit::StepUp,
            Error::NotEnrolled { .. } | Error::PendingApproval { .. } | Error::Unconfirmed => Exit::NotEnrolled,
            Error::Locked { .. } => Exit::Locked,
            Error::Unreachable { .. } => Exit::Unreachable,
            Error::WebhookDown { .. } | Error::ControllerTimeout { .. } | Error::Withdrawn { .. } => Exit::Unavailable,
            _ => Exit::Error,
        }
    }

    /// What to do about it, in one line.
    pub fn hint(&self) -> String {
        match self {
            Error::Usage { hint, .. } | Error::Other { hint, .. } => hint.clone(),
            // Whether this cluster wants an admin's approval is the controller's setting, which
            // nobody can read before enrolling: say what to run either way.
            Error::NotEnrolled { user } => format!(
                "Run `kubectl stepup enroll` once to set up your authenticator app; an admin may need to approve it (they run `kubectl stepup approve {user}`). Then run this command again."
            ),
            Error::PendingApproval { user, .. } => format!(
                "Ask a stepup admin to run `kubectl stepup approve {user}`, then run `kubectl stepup enroll` again."
            ),
            Error::Unconfirmed => "Run `kubectl stepup enroll` to finish enrolling.".into(),
            Error::Locked { message, .. } if is_rate_limit(message) => {
                "Wait until then: it lifts by itself, nobody needs to do anything.".into()
            }
            Error::Locked { user, .. } => format!(
                "Wait if it says until when; otherwise ask a stepup admin to run `kubectl stepup unlock {user}` (lost device: `kubectl stepup enroll --reenroll`, then they run `kubectl stepup reset {user} --key <fingerprint>`)."
            ),
            // The hint follows what the controller said: reuse and a wrong code are different slips.
            Error::CodeRefused { message } if message.contains("already used") => {
                "Wait for the next code in your authenticator app (a code works once) and try again.".into()
            }
            Error::CodeRefused { message } if message.contains("right for another time") => {
                "Type the code your authenticator app shows now. If it was that one, set the device's clock to network time: authenticator apps need the correct time.".into()
            }
            Error::CodeRefused { .. } => {
                "Type the code your authenticator app shows now, from this cluster's entry. If every code fails, the device's clock may be off: authenticator apps need the correct time.".into()
            }
            Error::SignInRefused { message } if message.contains("could not be fetched") => {
                "The cluster could not reach your identity provider; try again in a moment.".into()
            }
            Error::SignInRefused { .. } => {
                "Run the command again and complete the sign-in at your identity provider, second factor included.".into()
            }
            Error::KeyRefused { message } if message.contains("clone") => {
                "Your administrator is told. If you did not copy your key, tell them at once: someone may hold a copy.".into()
            }
            Error::KeyRefused { .. } => {
                "Run the command again and use a key registered to you (`kubectl stepup status` lists them) on the page it opens.".into()
            }
            Error::ChallengeExpired => "Run the command again with a fresh code.".into(),
            Error::Unreachable { .. } => {
                "Check your network, VPN and kubeconfig context (`kubectl cluster-info` shows the same problem).".into()
            }
            Error::WebhookDown { .. } => {
                "The stepup webhook is down or unreachable from the API server; ask your platform team (kubectl -n stepup-system get pods).".into()
            }
            Error::ControllerTimeout { .. } | Error::Withdrawn { .. } => {
                "Is the stepup controller running? Ask your platform team (kubectl -n stepup-system get pods).".into()
            }
            Error::Interrupted => "Run the command again when you are ready.".into(),
            Error::KeyChanged { .. } => "Someone who holds your credentials may be trying to enroll their own authenticator: tell a stepup admin, and do not approve or confirm anything you did not start.".into(),
            Error::NotInstalled => "Check the kubeconfig context, or ask your platform team to install kube-stepup.".into(),
            Error::Refused { .. } => "The sentence above says why; `kubectl stepup status` shows your enrollment and grants.".into(),
            Error::Forbidden { .. } => {
                "Your RBAC role lacks this permission; ask your platform team (users need the stepup user role).".into()
            }
            Error::Unauthorized { .. } => "Log in again or refresh your kubeconfig credentials.".into(),
            Error::Kubeconfig { .. } => "Check --kubeconfig, --context and $KUBECONFIG (`kubectl config view`).".into(),
            Error::Api { .. } => "Retry; run with -v for the API server's full answer.".into(),
        }
    }

    /// The underlying error, shown with `--verbose`.
    pub fn detail(&self) -> Option<&str> {
        match self {
            Error::Unreachable { detail, .. }
            | Error::WebhookDown { detail, .. }
            | Error::Forbidden { detail, .. }
            | Error::Unauthorized { detail } => Some(detail),
            _ => None,
        }
    }

    /// Classifies a Kubernetes client error. `action` completes "to ..." ("create the challenge").
    pub fn from_kube(err: kube::Error, action: &str, server: &str) -> Self {
        match err {
            kube::Error::Api(status) => Self::from_status(&status, action),
            kube::Error::HyperError(e) => {
                Error::Unreachable { server: server.to_owned(), detail: stepup_core::error_chain(&e) }
            }
            kube::Error::Service(e) => {
                Error::Unreachable { server: server.to_owned(), detail: stepup_core::error_chain(e.as_ref()) }
            }
            kube::Error::RustlsTls(e) => {
                Error::Unreachable { server: server.to_owned(), detail: stepup_core::error_chain(&e) }
            }
            kube::Error::Auth(e) => Error::Unauthorized { detail: stepup_core::error_chain(&e) },
            kube::Error::InferConfig(e) => Error::Kubeconfig { detail: stepup_core::error_chain(&e) },
            kube::Error::InferKubeconfig(e) => Error::Kubeconfig { detail: stepup_core::error_chain(&e) },
            other => Error::Api { action: action.to_owned(), message: stepup_core::error_chain(&other) },
        }
    }

    pub fn from_status(status: &kube::core::Status, action: &str) -> Self {
        let message = status.message.clone();
        let action = action.to_owned();
        if message.contains("failed calling webhook") {
            return Error::WebhookDown { action, detail: message };
        }
        match status.code {
            401 => Error::Unauthorized { detail: message },
            403 if message.contains("denied the request") => {
                Error::Refused { action, message: webhook_sentence(&message) }
            }
            403 => Error::Forbidden { action, detail: message },
            404 if status.details.as_ref().is_none_or(|d| d.name.is_empty()) => Error::NotInstalled,
            _ => Error::Api { action, message },
        }
    }
}

/// `admission webhook "validate.stepup.dev" denied the request: kube-stepup: X` → `X`.
fn webhook_sentence(message: &str) -> String {
    let rest = message.split_once("denied the request: ").map_or(message, |(_, r)| r);
    rest.strip_prefix("kube-stepup: ").unwrap_or(rest).trim_end_matches('.').to_owned()
}

/// How an error is shown: `error: <sentence>.` then `hint: <hint>`, never a stack.
pub struct Report<'a> {
    pub error: &'a Error,
    pub verbose: bool,
}

impl fmt::Display for Report<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Sentences carry what the API server said, and a policy's message is anyone's text.
        let sentence = super::format::printable_lines(&self.error.to_string());
        let sentence = sentence.trim_end_matches('.');
        writeln!(f, "error: {sentence}.")?;
        let hint = super::format::printable_lines(&self.error.hint());
        if !hint.is_empty() {
            writeln!(f, "hint: {hint}")?;
        }
        if self.verbose
            && let Some(detail) = self.error.detail()
        {
            writeln!(f, "detail: {}", super::format::printable_lines(detail))?;
        }
        Ok(())
    }
}

impl Report<'_> {
    /// The error as the JSON a script reads on stdout when it asked for `-o json`.
    pub fn json(&self) -> serde_json::Value {
        let mut error = serde_json::json!({
            "message": self.error.to_string().trim_end_matches('.'),
            "exitCode": self.error.exit() as u8,
        });
        let hint = self.error.hint();
        if !hint.is_empty() {
            error["hint"] = hint.into();
        }
        if let Some(detail) = self.error.detail().filter(|_| self.verbose) {
            error["detail"] = detail.into();
        }
        serde_json::json!({ "error": error })
    }
}

#[cfg(test)]
mod tests {
    use kube::core::{Status, response::StatusDetails};

    use super::*;

    fn status(code: u16, message: &str) -> Status {
        Status { code, message: message.to_owned(), ..Status::default() }
    }

    #[test]
    fn each_failure_has_its_exit_code() {
        let cases = [
            (Error::usage("x", "y"), Exit::Usage),
            (Error::CodeRefused { message: "wrong".into() }, Exit::StepUp),
            (Error::NotEnrolled { user: "alice".into() }, Exit::NotEnrolled),
            (Error::PendingApproval { user: "alice".into(), message: None }, Exit::NotEnrolled),
            (Error::Locked { user: "alice".into(), message: None }, Exit::Locked),
            (
                Error::Withdrawn { what: "x".into(), after: stepup_core::api::Duration::from_secs(30), revoked: false },
                Exit::Unavailable,
            ),
            (Error::Unreachable { server: "https://x".into(), detail: String::new() }, Exit::Unreachable),
            (Error::WebhookDown { action: "x".into(), detail: String::new() }, Exit::Unavailable),
            (
                Error::ControllerTimeout { what: "x".into(), after: stepup_core::api::Duration::from_secs(30) },
                Exit::Unavailable,
            ),
            (Error::NotInstalled, Exit::Error),
        ];
        for (error, exit) in cases {
            assert_eq!(error.exit(), exit, "{error}");
        }
    }

    #[test]
    fn reports_are_one_sentence_and_a_hint() {
        let error =
            Error::Locked { user: "alice".into(), message: Some("locked since 12:00 after 10 failed codes".into()) };
        let text = Report { error: &error, verbose: true }.to_string();
        assert_eq!(
            text,
            "error: your step-up enrollment is locked (locked since 12:00 after 10 failed codes).\n\
             hint: Wait if it says until when; otherwise ask a stepup admin to run `kubectl stepup unlock alice` (lost device: `kubectl stepup enroll --reenroll`, then they run `kubectl stepup reset alice --key <fingerprint>`).\n"
        );
        let error = Error::Unreachable { server: "https://127.0.0.1:1".into(), detail: "connection refused".into() };
        assert!(!Report { error: &error, verbose: false }.to_string().contains("refused"));
        assert!(Report { error: &error, verbose: true }.to_string().contains("detail: connection refused"));
    }

    /// A newcomer's report (issue 30): a wrong code and a reused one both got the hint about
    /// reuse.
    #[test]
    fn a_wrong_code_and_a_reused_one_get_their_own_hint() {
        let reused = Error::CodeRefused { message: "this code was already used; wait for the next code".into() };
        assert!(reused.hint().contains("a code works once"), "{}", reused.hint());
        let wrong = Error::CodeRefused {
            message: "wrong code: check the code and your device's clock, then try the next code".into(),
        };
        assert!(wrong.hint().contains("shows now") && !wrong.hint().contains("works once"), "{}", wrong.hint());
        let stale = Error::CodeRefused {
            message: "that code is right for another time within 10 minutes, not now: type the code your app shows now; if you did, your device's clock is off".into(),
        };
        assert!(stale.hint().contains("set the device's clock to network time"), "{}", stale.hint());
    }

    /// A newcomer's report (issue 30): the rate limit that lifts by itself and the lockout
    /// that needs an admin were both "locked".
    #[test]
    fn a_pause_that_lifts_by_itself_is_not_called_a_lockout() {
        let paused =
            Error::Locked { user: "alice".into(), message: Some("too many failed codes; try again in 4m".into()) };
        assert!(paused.to_string().starts_with("your codes are paused"), "{paused}");
        assert!(paused.hint().contains("lifts by itself") && !paused.hint().contains("unlock"), "{}", paused.hint());
        let locked = Error::Locked {
            user: "alice".into(),
            message: Some("locked after too many failed codes; an admin must unlock it".into()),
        };
        assert!(locked.to_string().starts_with("your step-up enrollment is locked"), "{locked}");
        assert!(locked.hint().contains("kubectl stepup unlock alice"));
    }

    #[test]
    fn api_server_answers_are_classified() {
        let down = status(
            500,
            "Internal error occurred: failed calling webhook \"validate.stepup.dev\": failed to call webhook: connection refused",
        );
        assert!(matches!(Error::from_status(&down, "create the challenge"), Error::WebhookDown { .. }));

        let refused = status(
            403,
            "admission webhook \"validate.stepup.dev\" denied the request: kube-stepup: you may only revoke your own grants.",
        );
        match Error::from_status(&refused, "revoke grant g") {
            Error::Refused { message, .. } => assert_eq!(message, "you may only revoke your own grants"),
            other => panic!("{other:?}"),
        }
        let rbac = status(403, "stepupgrants.stepup.dev is forbidden: User \"bob\" cannot list resource");
        assert!(matches!(Error::from_status(&rbac, "list grants"), Error::Forbidden { .. }));
        assert!(matches!(Error::from_status(&status(404, "the server could not find"), "x"), Error::NotInstalled));
        let named = Status {
            details: Some(serde_json::from_value::<StatusDetails>(serde_json::json!({"name": "g"})).unwrap()),
            ..status(404, "not found")
        };
        assert!(matches!(Error::from_status(&named, "x"), Error::Api { .. }));
        assert!(matches!(Error::from_status(&status(401, "Unauthorized"), "x"), Error::Unauthorized { .. }));
    }
}
