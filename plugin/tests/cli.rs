//! The plugin binary as a person and a script meet it: exit codes, messages, pipes.

use std::process::{Command, Stdio};

const PLUGIN: &str = env!("CARGO_BIN_EXE_kubectl-stepup");

#[test]
fn completion_piped_into_head_ends_quietly() {
    let mut child = Command::new(PLUGIN)
        .args(["completion", "bash"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // The reader goes away before the plugin writes, as `| head -0` would: every write fails
    // with a broken pipe (a script that fits the pipe buffer would never see one otherwise).
    drop(child.stdout.take());
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(!String::from_utf8_lossy(&out.stderr).contains("panicked"));
}

#[test]
fn kubectl_plugin_completion_answers_in_cobras_protocol() {
    let out = Command::new(PLUGIN).args(["__complete", "re"]).output().unwrap();
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.lines().any(|l| l.starts_with("request\t")), "{text}");
    assert!(text.ends_with(":4\n"), "{text}");
    let script =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../krew/kubectl_complete-stepup")).unwrap();
    assert!(script.contains("kubectl-stepup __complete \"$@\""));
}

#[test]
fn with_json_output_errors_are_json_on_stdout_too() {
    let out = Command::new(PLUGIN)
        .args(["status", "-o", "json", "--kubeconfig", "/nonexistent/kubeconfig"])
        .env_remove("KUBECONFIG")
        .output()
        .unwrap();
    let code = out.status.code().unwrap();
    assert_ne!(code, 0);
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).expect("stdout is JSON");
    assert_eq!(json["error"]["exitCode"], code);
    assert!(json["error"]["message"].as_str().unwrap().contains("kubeconfig"), "{json}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.starts_with("error: "), "people still read stderr: {stderr}");
    // Without -o json, stdout stays empty.
    let out = Command::new(PLUGIN)
        .args(["status", "--kubeconfig", "/nonexistent/kubeconfig"])
        .env_remove("KUBECONFIG")
        .output()
        .unwrap();
    assert!(out.stdout.is_empty());
}

/// `hack/totp`, which the demo offers to people without a phone, computes the codes the
/// controller accepts.
#[test]
fn the_demos_totp_script_shows_the_codes_the_controller_accepts() {
    let seed = b"a seed the controller keeps";
    let secret = stepup_core::verify::totp::base32_encode(seed);
    for at in [59_i64, 1_111_111_109, 1_700_000_000, 2_000_000_000] {
        let out = Command::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../hack/totp"))
            .args(["--at", &at.to_string(), &secret])
            .output()
            .expect("python3 runs hack/totp");
        assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
        let expected = stepup_core::verify::totp::code_at(seed, jiff::Timestamp::from_second(at).unwrap());
        assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), expected, "at {at}");
    }
    let out = Command::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../hack/totp")).arg("not base32!").output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("is not a base32 secret"));
}
