//! Issue-20 scenario: the release a platform team installs (`make dist`, here with debug
//! binaries): checksums that verify, an SBOM that names the dependencies, release notes from the
//! CHANGELOG, and the plugin installed from its archive by krew through the rendered manifest,
//! as `kubectl krew install` would (the chart package is installed by the install scenario).

use std::{path::Path, process::Command};

use stepup_e2e::{Env, dist};

fn run(cmd: &mut Command) -> String {
    let out = cmd.output().expect("runs");
    assert!(
        out.status.success(),
        "{cmd:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn only(dir: &Path, prefix: &str, suffix: &str) -> std::path::PathBuf {
    let found: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            let name = p.file_name().unwrap().to_string_lossy();
            name.starts_with(prefix) && name.ends_with(suffix)
        })
        .collect();
    assert_eq!(found.len(), 1, "{prefix}*{suffix} in {}: {found:?}", dir.display());
    found[0].clone()
}

#[test]
fn the_release_verifies_and_the_plugin_installs_from_its_archive_through_krew() {
    let env = Env::load();
    let dir = dist(&env);

    // Every artifact is in SHA256SUMS and verifies.
    let sums = run(Command::new("sha256sum").arg("-c").arg("SHA256SUMS").current_dir(&dir));
    for artifact in [
        "stepup.yaml",
        "RELEASE_NOTES.md",
        "kube-stepup_",
        "kubectl-stepup_",
        ".cdx.json",
        "_linux_amd64.tar.gz",
        ".tgz",
    ] {
        assert!(sums.lines().any(|l| l.contains(artifact) && l.ends_with(": OK")), "{artifact}: {sums}");
    }

    // The SBOM is CycloneDX and names what the product is built from.
    let sbom: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(only(&dir, "kube-stepup_", ".cdx.json")).unwrap()).unwrap();
    assert_eq!(sbom["bomFormat"], "CycloneDX");
    let names: Vec<&str> = sbom["components"].as_array().unwrap().iter().filter_map(|c| c["name"].as_str()).collect();
    for required in ["kube", "k8s-openapi", "axum", "rustls", "tokio", "totp-rs", "prometheus"] {
        assert!(names.contains(&required), "{required} missing from the SBOM");
    }
    // The plugin is its own crate, with its own SBOM.
    let plugin: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(only(&dir, "kubectl-stepup_", ".cdx.json")).unwrap()).unwrap();
    let names: Vec<&str> = plugin["components"].as_array().unwrap().iter().filter_map(|c| c["name"].as_str()).collect();
    for required in ["kube", "stepup-core", "qrcode", "rustls"] {
        assert!(names.contains(&required), "{required} missing from the plugin's SBOM");
    }
    assert!(!names.contains(&"prometheus"), "the plugin carries no server dependency");

    // Building the release leaves the checkout as it was: no SBOM of a workspace member behind.
    let repo = concat!(env!("CARGO_MANIFEST_DIR"), "/..");
    let left =
        run(Command::new("git").args(["status", "--porcelain", "--ignored", "--", "*.cdx.json"]).current_dir(repo));
    assert!(left.trim().is_empty(), "make dist changed the checkout: {left}");

    let notes = std::fs::read_to_string(dir.join("RELEASE_NOTES.md")).unwrap();
    assert!(notes.starts_with("## [") && notes.contains("### Upgrade notes"), "{notes}");

    // krew installs the plugin from the archive through the manifest (offline: no index).
    let krew = run(&mut Command::new(concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/build-krew.sh"))).trim().to_owned();
    let root = dir.join("krew-root");
    let _ = std::fs::remove_dir_all(&root);
    let archive = only(&dir, "kubectl-stepup_", "_linux_amd64.tar.gz");
    run(Command::new(&krew)
        .args(["install", "--manifest"])
        .arg(dir.join("stepup.yaml"))
        .arg("--archive")
        .arg(&archive)
        .env("KREW_ROOT", &root));
    let installed = root.join("bin/kubectl-stepup");
    let version = run(Command::new(&installed).arg("--version"));
    assert!(version.starts_with("kubectl-stepup "), "{version}");
    // The completion helper ships next to it, and answers through the installed binary.
    let store = std::fs::canonicalize(&installed).unwrap();
    let helper = store.parent().unwrap().join("kubectl_complete-stepup");
    let completions =
        run(Command::new(&helper).arg("re").env("PATH", format!("{}:/usr/bin:/bin", root.join("bin").display())));
    assert!(completions.contains("request\t") && completions.ends_with(":4\n"), "{completions}");
    // And the installed plugin works against the cluster.
    let out = Command::new(&installed)
        .args(["status", "-o", "json", "--kubeconfig"])
        .arg(env.kubeconfig("bob"))
        .env_remove("KUBECONFIG")
        .output()
        .unwrap();
    let status: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON status");
    assert_eq!(status["user"], "bob", "{status}");
    assert_eq!(status["uid"], "uid-bob-1", "{status}");
}
