//! `kubectl stepup -- kubectl ...`: run the command; if the API server refused it for
//! kube-stepup, get a grant for the policies the refusal named and run it once more. Output and
//! exit code are the command's own; a command that succeeded, or that is not kubectl, is never
//! run again.

use std::{
    ffi::OsString,
    io::{self, Read, Write},
    path::PathBuf,
    process::{Command, Stdio},
};

use jiff::{Timestamp, tz::TimeZone};

use super::{
    cli::{ClusterArgs, RequestMethod, WrapArgs},
    cluster::Session,
    error::{Error, Result},
    format::GrantView,
    request::{self, GrantRequest},
    sign_in,
    terminal::{self, CodeSource},
    trailer,
};
use stepup_core::api::{GrantScope, Method};

/// The program to run and its arguments. A leading `kubectl` means `$KUBECTL` (if set) or the
/// kubectl on PATH; anything else runs as given.
pub fn program(command: &[String], kubectl_env: Option<OsString>) -> Result<(OsString, Vec<String>, bool)> {
    let Some((first, rest)) = command.split_first() else {
        return Err(Error::usage(
            "nothing to run: give a command after `--`",
            "For example: kubectl stepup -- kubectl delete secret db -n prod",
        ));
    };
    let is_kubectl = first == "kubectl" || first.ends_with("/kubectl");
    let program = match (is_kubectl, kubectl_env) {
        (true, Some(env)) if !env.is_empty() && first == "kubectl" => env,
        _ => OsString::from(first),
    };
    Ok((program, rest.to_vec(), is_kubectl))
}

/// The value of `--flag VALUE` or `--flag=VALUE` among kubectl's own arguments (not after `--`).
pub fn flag_value(args: &[String], flag: &str) -> Option<String> {
    let mut iter = args.iter().take_while(|a| *a != "--");
    while let Some(arg) = iter.next() {
        if arg == flag {
            return iter.next().cloned();
        }
        if let Some(value) = arg.strip_prefix(flag).and_then(|r| r.strip_prefix('=')) {
            return Some(value.to_owned());
        }
    }
    None
}

/// Makes the plugin and kubectl talk to the same cluster as the same user: flags given to one
/// are given to the other. Returns the plugin's cluster flags and kubectl's arguments.
pub fn align_cluster(plugin: &ClusterArgs, kubectl_args: &[String]) -> (ClusterArgs, Vec<String>) {
    let mut cluster = plugin.clone();
    let mut args = kubectl_args.to_vec();
    let mut injected = Vec::new();
    match (&plugin.kubeconfig, flag_value(kubectl_args, "--kubeconfig")) {
        (None, Some(path)) => cluster.kubeconfig = Some(PathBuf::from(path)),
        (Some(path), None) => injected.push(format!("--kubeconfig={}", path.display())),
        _ => {}
    }
    match (&plugin.context, flag_value(kubectl_args, "--context")) {
        (None, Some(context)) => cluster.context = Some(context),
        (Some(context), None) => injected.push(format!("--context={context}")),
        _ => {}
    }
    args.splice(0..0, injected);
    (cluster, args)
}

/// Whether kubectl reads a manifest from standard input (`-f -`): then it is buffered, so the
/// retry gets it too.
pub fn reads_stdin(args: &[String]) -> bool {
    let own = args.iter().take_while(|a| *a != "--").collect::<Vec<_>>();
    own.windows(2).any(|w| (w[0] == "-f" || w[0] == "--filename") && w[1] == "-")
        || own.iter().any(|a| *a == "--filename=-" || *a == "-f=-" || *a == "-f-")
}

/// The command's exit status and everything it wrote to stderr (also passed through live).
struct Run {
    code: u8,
    stderr: String,
}

fn run_once(program: &OsString, args: &[String], stdin: Option<&[u8]>) -> Result<Run> {
    let mut child = Command::new(program)
        .args(args)
        .stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::inherit() })
        .stdout(Stdio::inherit())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| {
            let name = program.to_string_lossy();
            if let Some(misplaced) = super::kubectl_verb_misplaced(&[&[name.to_string()], args].concat()) {
                return misplaced;
            }
            Error::usage(format!("cannot run {name}: {e}"), "Install kubectl, or point $KUBECTL at it.")
        })?;
    let feeder = match (stdin, child.stdin.take()) {
        (Some(data), Some(mut pipe)) => {
            let data = data.to_vec();
            Some(std::thread::spawn(move || {
                let _ = pipe.write_all(&data);
            }))
        }
        _ => None,
    };
    let mut captured = Vec::new();
    if let Some(mut pipe) = child.stderr.take() {
        let mut out = io::stderr();
        let mut buffer = [0u8; 8192];
        loop {
            match pipe.read(&mut buffer) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    let _ = out.write_all(&buffer[..n]);
                    captured.extend_from_slice(&buffer[..n]);
                }
            }
        }
    }
    let status = child.wait().map_err(|e| Error::other(format!("waiting for the command failed: {e}"), ""))?;
    if let Some(feeder) = feeder {
        let _ = feeder.join();
    }
    Ok(Run { code: exit_code(status), stderr: String::from_utf8_lossy(&captured).into_owned() })
}

fn exit_code(status: std::process::ExitStatus) -> u8 {
    #[cfg(unix)]
    {
        use std::os::unix::process::ExitStatusExt;
        if let Some(signal) = status.signal() {
            return 128u8.saturating_add(signal as u8);
        }
    }
    status.code().map_or(1, |c| c as u8)
}

/// Runs the wrapped command; returns the exit code to leave with.
pub async fn run(plugin: &ClusterArgs, args: &WrapArgs) -> Result<u8> {
    let (program, own_args, is_kubectl) = program(&args.command, std::env::var_os("KUBECTL"))?;
    let (cluster, kubectl_args) =
        if is_kubectl { align_cluster(plugin, &own_args) } else { (plugin.clone(), own_args.clone()) };
    let stdin = if reads_stdin(&kubectl_args) {
        let mut data = Vec::new();
        io::stdin().read_to_end(&mut data).map_err(|e| Error::other(format!("cannot read standard input: {e}"), ""))?;
        Some(data)
    } else {
        None
    };

    let first = {
        let (program, kubectl_args, stdin) = (program.clone(), kubectl_args.clone(), stdin.clone());
        tokio::task::spawn_blocking(move || run_once(&program, &kubectl_args, stdin.as_deref()))
            .await
            .map_err(|e| Error::other(format!("the command could not run: {e}"), ""))??
    };
    let refused_at = tokio::time::Instant::now();
    // Only a failed kubectl command, refused by the API server for stepup, is answered; the
    // output of anything else (a script, a container) is not trusted to ask for a grant.
    if first.code == 0 || !is_kubectl {
        return Ok(first.code);
    }
    let Some(requirement) = trailer::api_refusal_in(&first.stderr) else { return Ok(first.code) };
    let accepts = |m| requirement.methods.contains(&m);
    let (totp, oidc, key) = (accepts(Method::Totp), accepts(Method::Oidc), accepts(Method::WebAuthn));
    if !totp && !oidc && !key {
        return Ok(first.code);
    }

    errln!("\nkube-stepup: this needs a fresh second factor (policy {}).", requirement.policies.join(", "));
    let session = Session::connect(&cluster).await?;
    let me = session.whoami().await?;
    let method = match args.method {
        Some(RequestMethod::Oidc) if oidc => RequestMethod::Oidc,
        Some(RequestMethod::Totp) if totp => RequestMethod::Totp,
        Some(RequestMethod::WebAuthn) if key => RequestMethod::WebAuthn,
        Some(asked) => {
            return Err(Error::usage(
                format!("policy {} does not accept --method {}", requirement.policies.join(", "), asked.as_str()),
                "Leave --method out: the wrapper picks a method the policy accepts.",
            ));
        }
        // TOTP where accepted and enrolled; else a security key where accepted (and enrolled,
        // or nothing else is accepted); else the identity provider.
        None => {
            let totp_ready = totp && request::ensure_enrolled(&session, &me).await.is_ok();
            let key_ready = key && request::ensure_enrolled_for(&session, &me, Method::WebAuthn).await.is_ok();
            match () {
                _ if totp_ready => RequestMethod::Totp,
                _ if key_ready || (key && !totp && !oidc) => RequestMethod::WebAuthn,
                _ if oidc => RequestMethod::Oidc,
                _ if totp => RequestMethod::Totp,
                _ => RequestMethod::WebAuthn,
            }
        }
    };
    let use_oidc = method == RequestMethod::Oidc;
    let response_key = if method == RequestMethod::Totp {
        request::enrolled_or_enroll(&session, &me, CodeSource::Terminal).await?
    } else {
        String::new()
    };
    let reason = match args.reason.as_deref().map(str::trim).filter(|r| !r.is_empty()) {
        Some(r) => Some(r.to_owned()),
        None if requirement.reason_required => request::ask_reason(&[], true, CodeSource::Terminal)?,
        None => None,
    };
    // The narrowest grant that answers the refusal: the policies it named, nothing else.
    let scope = GrantScope { policies: requirement.policies.clone(), namespaces: Vec::new() };
    // The refusal this answers, so that the audit trail ties the step-up to it.
    let correlation = requirement.reference.as_ref().map(|uid| format!("prompt:{uid}"));
    let grant = if method == RequestMethod::WebAuthn {
        let ask = GrantRequest { code: String::new(), reason, duration: args.duration, scope, correlation };
        request::obtain_key_grant(&session, &me, ask, args.sign_in.browser(), args.sign_in.wait(), args.timeout).await?
    } else if use_oidc {
        // The assurance in RFC 9470's words, as the refusal's trailer gave it.
        let assurance = sign_in::Assurance {
            acr_values: requirement.acr_values.clone(),
            max_age: Some(requirement.max_age.as_std()),
        };
        let ask = GrantRequest { code: String::new(), reason, duration: args.duration, scope, correlation };
        request::obtain_oidc_grant(
            &session,
            &me,
            ask,
            &assurance,
            args.sign_in.browser(),
            args.sign_in.wait(),
            args.timeout,
        )
        .await?
    } else {
        let code = terminal::read_code("Code from your authenticator app: ", CodeSource::Terminal)?;
        let ask = GrantRequest { code, reason, duration: args.duration, scope, correlation };
        request::obtain_grant(&session, &me, &response_key, ask, args.timeout).await?
    };
    let now = Timestamp::now();
    let view = GrantView::new(&grant, now);
    if let Some(notice) = request::cap_notice(args.duration, &grant) {
        errln!("kube-stepup: {notice}.");
    }
    errln!(
        "kube-stepup: granted {}, {}; running the command again.\n",
        view.name,
        view.expiry(now, &TimeZone::system())
    );

    // The refusal made the webhook look this user's grants up; within the lookup interval it
    // would decide the retry from its watch-fed cache alone, which may not hold the new grant
    // yet. After it, the retry's lookup finds the grant (a consistent read), however slow the
    // watch. A person typing a code takes longer than this anyway.
    tokio::time::sleep_until(refused_at + stepup_core::grant::LOOKUP_INTERVAL).await;
    let second = tokio::task::spawn_blocking(move || run_once(&program, &kubectl_args, stdin.as_deref()))
        .await
        .map_err(|e| Error::other(format!("the command could not run: {e}"), ""))??;
    Ok(second.code)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(text: &str) -> Vec<String> {
        text.split_whitespace().map(str::to_owned).collect()
    }

    #[test]
    fn kubectl_is_the_one_from_the_environment_or_path() {
        let (p, args, kubectl) = program(&strings("kubectl delete secret db"), Some("/opt/k/kubectl".into())).unwrap();
        assert_eq!((p, args, kubectl), ("/opt/k/kubectl".into(), strings("delete secret db"), true));
        let (p, _, kubectl) = program(&strings("kubectl get pods"), None).unwrap();
        assert_eq!((p, kubectl), ("kubectl".into(), true));
        let (p, _, kubectl) = program(&strings("/usr/bin/kubectl get pods"), Some("/x".into())).unwrap();
        assert_eq!((p, kubectl), ("/usr/bin/kubectl".into(), true), "an explicit path wins");
        let (p, _, kubectl) = program(&strings("helm upgrade x"), Some("/x".into())).unwrap();
        assert_eq!((p, kubectl), ("helm".into(), false));
        assert!(matches!(program(&[], None), Err(Error::Usage { .. })));
    }

    #[test]
    fn flags_are_read_until_the_commands_own_double_dash() {
        let args = strings("--context=prod exec web -- sh --context nope");
        assert_eq!(flag_value(&args, "--context").as_deref(), Some("prod"));
        assert_eq!(flag_value(&strings("get --kubeconfig /k pods"), "--kubeconfig").as_deref(), Some("/k"));
        assert_eq!(flag_value(&strings("exec web -- env --context x"), "--context"), None);
    }

    #[test]
    fn plugin_and_kubectl_use_the_same_cluster() {
        let plugin = ClusterArgs { kubeconfig: Some("/k".into()), context: None, verbose: false, ..Default::default() };
        let (cluster, args) = align_cluster(&plugin, &strings("--context prod delete secret db"));
        assert_eq!(cluster.context.as_deref(), Some("prod"));
        assert_eq!(cluster.kubeconfig, Some(PathBuf::from("/k")));
        assert_eq!(args, strings("--kubeconfig=/k --context prod delete secret db"));

        let plugin =
            ClusterArgs { kubeconfig: None, context: Some("dev".into()), verbose: false, ..Default::default() };
        let (cluster, args) = align_cluster(&plugin, &strings("--kubeconfig=/other get pods"));
        assert_eq!(cluster.kubeconfig, Some(PathBuf::from("/other")));
        assert_eq!(args, strings("--context=dev --kubeconfig=/other get pods"));
    }

    #[test]
    fn manifests_from_stdin_are_buffered_for_the_retry() {
        assert!(reads_stdin(&strings("apply -f -")));
        assert!(reads_stdin(&strings("apply --filename=-")));
        assert!(!reads_stdin(&strings("apply -f deploy.yaml")));
        assert!(!reads_stdin(&strings("exec -i web -- cat -f -")));
    }

    #[cfg(unix)]
    #[test]
    fn output_and_exit_code_pass_through() {
        let run = run_once(&"sh".into(), &["-c".into(), "echo oops >&2; exit 7".into()], None).unwrap();
        assert_eq!((run.code, run.stderr.as_str()), (7, "oops\n"));
        let run = run_once(&"sh".into(), &["-c".into(), "cat >&2".into()], Some(b"manifest")).unwrap();
        assert_eq!((run.code, run.stderr.as_str()), (0, "manifest"));
        assert!(matches!(run_once(&"/nonexistent/kubectl".into(), &[], None), Err(Error::Usage { .. })));
    }
}
