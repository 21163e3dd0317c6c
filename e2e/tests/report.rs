//! Issue-19 scenarios: the durable audit trail and `kubectl stepup report`, against the real
//! control plane. A month of activity is made of two parts: the last 29 days are segments the
//! test writes with the controller's credential, its records dated back (the API server takes
//! any content; only stepup's own identities may write StepUpLogs at all), and today is real
//! activity (a refusal, a wrong code, a step-up, the retried delete, break-glass) recorded by
//! the running webhook and controller. The report's figures are checked against both.

use std::{process::Output, time::Duration};

use jiff::{SignedDuration, Timestamp};
use k8s_openapi::api::core::v1::Secret;
use kube::{
    Api,
    api::{DeleteParams, ListParams, PostParams},
};
use kube_stepup::records::{JSON_SCHEMA, Record, segment};
use serde_json::Value;
use stepup_core::api::{ChallengePhase, Operation::*, StepUpLog};
use stepup_core::testing::policy;
use stepup_e2e::{Env, World, audit_lines, eventually, refusal};

const ALICE_UID: &str = "uid-alice-1";

fn run_plugin(env: &Env, who: &str, args: &[&str]) -> Output {
    std::process::Command::new(env.var("KUBECTL_STEPUP_BIN"))
        .arg("--kubeconfig")
        .arg(env.kubeconfig(who))
        .args(args)
        .env_remove("KUBECONFIG")
        .output()
        .expect("kubectl-stepup runs")
}

fn report_json(env: &Env, args: &[&str]) -> Value {
    let out = run_plugin(env, "auditor", &[&["report", "-o", "json"], args].concat());
    assert!(out.status.success(), "report failed: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).expect("the report is JSON")
}

fn figure(report: &Value, table: &str, row: &str, field: &str) -> u64 {
    report["report"][table][row][field].as_u64().unwrap_or(0)
}

/// Segments for the 29 days before today: on day d (1 = yesterday), `dave` is prompted
/// d % 3 + 1 times by prod-secrets and steps up each time (correlated, 40 s later), and `erin`
/// fails one step-up every day and breaks glass on even days.
fn past_month(now: Timestamp) -> (Vec<StepUpLog>, u64, u64, u64) {
    let (mut logs, mut dave_prompts, mut erin_failures, mut erin_break_glass) = (vec![], 0, 0, 0);
    for d in 1..=29i64 {
        let day = now - SignedDuration::from_hours(24 * d);
        let mut records = vec![];
        for k in 0..(d % 3 + 1) {
            let t = day + SignedDuration::from_mins(k);
            let c = format!("past-{d}-{k}");
            records.push(Record {
                user: "dave".into(),
                decision: "denied".into(),
                policies: "prod-secrets".into(),
                operation: "DELETE".into(),
                resource: "secrets".into(),
                namespace: "prod".into(),
                name: "db".into(),
                correlation: c.clone(),
                ..Record::new("admission.decision", t)
            });
            records.push(Record {
                user: "dave".into(),
                correlation: c.clone(),
                method: "TOTP".into(),
                ..Record::new("challenge.verified", t + SignedDuration::from_secs(40))
            });
            records.push(Record {
                user: "dave".into(),
                correlation: c,
                grant: format!("dave-{d}-{k}"),
                ..Record::new("grant.issued", t + SignedDuration::from_secs(40))
            });
            dave_prompts += 1;
        }
        records.push(Record { user: "erin".into(), result: "wrong".into(), ..Record::new("challenge.denied", day) });
        erin_failures += 1;
        if d % 2 == 0 {
            records.push(Record {
                user: "erin".into(),
                decision: "break-glass".into(),
                policies: "prod-secrets".into(),
                ..Record::new("admission.decision", day)
            });
            erin_break_glass += 1;
        }
        let lines: Vec<String> = records.iter().map(Record::to_line).collect();
        let writer = "stepup-controller/e2e-history";
        logs.push(segment::object(&segment::name(writer, day), writer, day, day, &lines, 0));
    }
    (logs, dave_prompts, erin_failures, erin_break_glass)
}

#[tokio::test]
async fn a_month_of_activity_is_reported_as_it_happened() {
    let world = World::new().await;
    let env = &world.env;
    let logs: Api<StepUpLog> = Api::all(world.controller.clone());
    // A clean history: earlier runs of this scenario wrote the same segments.
    for old in logs.list(&ListParams::default()).await.unwrap().items {
        if old.spec.writer == "stepup-controller/e2e-history" {
            let _ = logs.delete(&old.metadata.name.unwrap(), &DeleteParams::default()).await;
        }
    }
    let now = Timestamp::now();
    let (history, dave_prompts, erin_failures, erin_break_glass) = past_month(now);
    for log in &history {
        logs.create(&PostParams::default(), log).await.expect("the controller writes audit segments");
    }

    let before = report_json(env, &["--since", "30d"]);
    assert_eq!(figure(&before, "users", "dave", "prompts"), dave_prompts);
    assert_eq!(figure(&before, "users", "dave", "stepUps"), dave_prompts);
    assert_eq!(before["report"]["users"]["dave"]["medianPromptToGrantSeconds"], 40.0);
    assert_eq!(figure(&before, "users", "erin", "failedStepUps"), erin_failures);
    assert_eq!(figure(&before, "users", "erin", "breakGlass"), erin_break_glass);
    assert!(figure(&before, "policies", "prod-secrets", "prompts") >= dave_prompts);

    // Today, for real: alice is refused, types a wrong code, steps up, retries; carol breaks glass.
    world
        .apply_policies(&[policy("prod-secrets").rule(&[Delete], "", &["secrets"]).namespaces(&["prod"]).build()])
        .await;
    world.secret("prod", "db").await;
    let w = &world;
    let secrets = |who: &'static str| async move {
        Api::<Secret>::namespaced(w.env.client(who).await, "prod").delete("db", &DeleteParams::default()).await
    };
    refusal(secrets("alice").await);
    let mut auth = world.enroll("alice", "alice").await;
    let wrong = world.challenge("alice", "alice", ALICE_UID, &auth.wrong_code(), None).await;
    assert_eq!(wrong.status.unwrap().phase, Some(ChallengePhase::Denied));
    let code = auth.code().await;
    let right = world.challenge("alice", "alice", ALICE_UID, &code, Some("INC-7")).await;
    assert_eq!(right.status.unwrap().phase, Some(ChallengePhase::Verified));
    secrets("alice").await.expect("the grant lets the delete through");
    world.secret("prod", "db").await;
    secrets("carol").await.expect("break-glass passes");

    // The processes write their segments within seconds; the report then counts today too.
    let after = eventually(Duration::from_secs(60), || async {
        let after = report_json(env, &["--since", "30d"]);
        let delta = |table: &str, row: &str, field: &str| {
            figure(&after, table, row, field) as i64 - figure(&before, table, row, field) as i64
        };
        let got = [
            delta("users", "alice", "prompts"),
            delta("users", "alice", "failedStepUps"),
            delta("users", "alice", "stepUps"),
            delta("users", "alice", "grantedOperations"),
            delta("users", "carol", "breakGlass"),
        ];
        if got == [1, 1, 1, 1, 1] { Ok(after) } else { anyhow::bail!("today's activity not reported yet: {got:?}") }
    })
    .await
    .expect("the report shows today's activity");
    // Today's story is one correlation id, from the refusal to the delete its grant let through
    // (a plain challenge, as after `kubectl stepup request`: tied by user and time).
    let story: Vec<(&str, &str)> = after["report"]["trail"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|t| t["user"] == "alice")
        .filter(|t| {
            t["time"].as_str().and_then(|s| s.parse::<jiff::Timestamp>().ok()).is_some_and(|at| at >= world.started)
        })
        .filter(|t| {
            t["event"]
                .as_str()
                .is_some_and(|e| e.starts_with("admission.") || e.starts_with("challenge.") || e == "grant.issued")
        })
        .map(|t| (t["event"].as_str().unwrap(), t["correlation"].as_str().unwrap_or("")))
        .collect();
    assert!(story.len() >= 4, "refusal, failed and verified challenge, granted delete: {story:?}");
    assert!(story[0].1.starts_with("prompt:"), "{story:?}");
    assert!(story.iter().all(|(_, id)| *id == story[0].1), "one story: {story:?}");
    // The past is unchanged, and narrowing to one user shows only them.
    assert_eq!(figure(&after, "users", "dave", "prompts"), dave_prompts);
    let only_dave = report_json(env, &["--since", "30d", "--user", "dave"]);
    assert_eq!(only_dave["report"]["users"].as_object().unwrap().keys().collect::<Vec<_>>(), ["dave"]);
    let trail = only_dave["report"]["trail"].as_array().unwrap();
    assert_eq!(trail.len() as u64, dave_prompts * 3);
    assert!(trail.windows(2).all(|w| w[0]["time"].as_str() <= w[1]["time"].as_str()), "chronological");

    // Nobody edits the evidence: not alice, not a cluster-admin.
    let victim = history[0].metadata.name.clone().unwrap();
    for who in ["alice", "admin"] {
        let api: Api<StepUpLog> = Api::all(world.env.client(who).await);
        let result = api.delete(&victim, &DeleteParams::default()).await;
        if who == "admin" {
            let status = refusal(result);
            assert!(status.message.contains("StepUpLogs are stepup's audit trail"), "{}", status.message);
        } else {
            refusal(result);
        }
    }
    assert!(logs.get_opt(&victim).await.unwrap().is_some(), "the segment is still there");

    // The HTML report renders in a real browser: tables, chart, and no console errors.
    let out = run_plugin(env, "auditor", &["report", "--since", "30d", "-o", "html"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let page = std::path::PathBuf::from(env.var("STEPUP_LOGS_DIR")).join("report.html");
    std::fs::write(&page, &out.stdout).unwrap();
    let rendered = chromium(&page, &["--dump-dom"]);
    let dom = String::from_utf8_lossy(&rendered.stdout);
    for id in ["id=\"chart\"", "id=\"policies\"", "id=\"users\"", "id=\"trail\"", "<rect class=\"bar\""] {
        assert!(dom.contains(id), "the rendered page has no {id}");
    }
    assert!(dom.contains(">dave<") && dom.contains(">alice<"));
    let console = String::from_utf8_lossy(&rendered.stderr);
    assert!(!console.contains("CONSOLE") && !console.contains("Uncaught"), "console messages: {console}");
    let png = page.with_extension("png");
    let shot = chromium(&page, &[&format!("--screenshot={}", png.display()), "--window-size=1200,1800"]);
    assert!(shot.status.success() && png.exists(), "{}", String::from_utf8_lossy(&shot.stderr));
}

/// Debian's headless Chromium with the flags a machine without a network needs.
fn chromium(page: &std::path::Path, extra: &[&str]) -> Output {
    let profile = tempfile_dir();
    std::process::Command::new("chromium")
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--enable-logging=stderr",
            "--v=0",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .args(extra)
        .arg(format!("file://{}", page.display()))
        .output()
        .expect("chromium runs (.ci/setup installs it)")
}

fn tempfile_dir() -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "stepup-chromium-{}-{}",
        std::process::id(),
        Timestamp::now().as_nanosecond()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Every audit line the e2e processes wrote so far (run-e2e.sh runs this once more after all
/// scenarios) is valid against the published JSON Schema.
/// The status line of a raw HTTP/1.1 request as `who`, sent over TLS by `openssl s_client`:
/// client libraries refuse a 900,000-character URL (their URI types stop at 64 KiB); the API
/// server, and so an attacker, does not.
fn raw_request(env: &Env, who: &str, method: &str, path: &str) -> String {
    use std::io::Write;
    let host = env.var("KUBE_APISERVER_URL").trim_start_matches("https://").to_owned();
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
        env.token(who)
    );
    let mut child = std::process::Command::new("timeout")
        .args(["60", "openssl", "s_client", "-quiet", "-connect", &host, "-CAfile", env.var("KUBE_CA_FILE")])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("openssl runs (.ci/setup installs it)");
    child.stdin.take().unwrap().write_all(request.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    String::from_utf8_lossy(&out.stdout).lines().next().unwrap_or_default().to_owned()
}

/// A trail with a gap says so: a warning on stderr, and with `--strict` (a scheduled evidence
/// job) exit 1, so a partial trail never passes quietly.
#[tokio::test]
async fn an_incomplete_trail_is_a_warning_and_with_strict_a_failure() {
    let world = World::new().await;
    let env = &world.env;
    let logs: Api<StepUpLog> = Api::all(world.controller.clone());
    let writer = "stepup-controller/e2e-gap";
    let day = Timestamp::now() - SignedDuration::from_hours(2);
    let line = Record { user: "dave".into(), ..Record::new("grant.issued", day) }.to_line();
    let log = segment::object(&segment::name(writer, day), writer, day, day, &[line], 2);
    let _ = logs.delete(&log.metadata.name.clone().unwrap(), &DeleteParams::default()).await;
    logs.create(&PostParams::default(), &log).await.expect("the controller writes audit segments");

    let out = run_plugin(env, "auditor", &["report", "--since", "1d"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("WARNING: "), "the table says it");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("warning: the audit trail is incomplete: "), "{stderr}");
    let strict = run_plugin(env, "auditor", &["report", "--since", "1d", "-o", "csv", "--strict"]);
    assert_eq!(strict.status.code(), Some(1), "{}", String::from_utf8_lossy(&strict.stderr));
    assert!(String::from_utf8_lossy(&strict.stderr).contains("error: the audit trail is incomplete: "));
    let _ = logs.delete(&log.metadata.name.unwrap(), &DeleteParams::default()).await;
}

/// Attack (third round): four CONNECTs to pods with 900,000-character names made 900 kB audit
/// records; the next segment was larger than the API server takes, was retried forever, and
/// a later denial never reached the trail while the webhook grew past its memory limit.
/// Every field is cut to its bound, and the trail keeps going.
#[tokio::test]
async fn a_huge_pod_name_cannot_stall_the_trail() {
    let world = World::new().await;
    let env = &world.env;
    world
        .apply_policies(&[
            policy("prod-exec").rule(&[Connect], "", &["pods/exec"]).namespaces(&["prod"]).build(),
            policy("prod-secrets").rule(&[Delete], "", &["secrets"]).namespaces(&["prod"]).build(),
        ])
        .await;
    world.secret("prod", "db").await;
    let failed_writes = || async {
        let text = env.webhook_metrics().await;
        text.lines()
            .find_map(|l| l.strip_prefix("stepup_audit_segment_writes_total{result=\"failure\"} "))
            .and_then(|v| v.trim().parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    let failures_before = failed_writes().await;
    let rss_before = env.webhook_pid().and_then(stepup_e2e::rss_mib).unwrap_or(0.0);
    let huge: String = (0..900_000).map(|i| char::from(b'a' + (i * 7 % 26) as u8)).collect();
    for _ in 0..4 {
        let path = format!("/api/v1/namespaces/prod/pods/{huge}/exec?command=sh");
        let head = raw_request(env, "alice", "POST", &path);
        assert!(head.starts_with("HTTP/1.1 403"), "refused by the webhook: {head}");
    }
    // Someone else's refusal afterwards (the admin's: bob's refusals of earlier scenarios may
    // already be past his share of this hour's segment).
    refusal(Api::<Secret>::namespaced(world.admin.clone(), "prod").delete("db", &DeleteParams::default()).await);

    // That refusal reaches the durable trail, and alice's records are a few hundred bytes each.
    let logs: Api<StepUpLog> = Api::all(world.controller.clone());
    let records = eventually(Duration::from_secs(60), || async {
        let mut records = Vec::new();
        for log in logs.list(&ListParams::default()).await?.items {
            if log.spec.writer.starts_with("stepup-webhook/") {
                records.extend(segment::decode(&log)?.records);
            }
        }
        let later = records.iter().any(|r| r.user == "admin" && r.name == "db" && r.decision == "denied");
        if later { Ok(records) } else { anyhow::bail!("the later denial is not in the trail yet") }
    })
    .await
    .expect("the trail keeps going after the huge requests");
    // This scenario's: their names begin as the huge one does (earlier ones exec'd into "web").
    let alices: Vec<&Record> = records
        .iter()
        .filter(|r| r.user == "alice" && r.subresource == "exec" && r.name.starts_with(&huge[..64]))
        .collect();
    assert!(alices.len() >= 4, "alice's refusals are recorded: {}", alices.len());
    for r in alices {
        assert!(r.name.len() <= 253 && r.name.ends_with('…'), "the name is cut: {} bytes", r.name.len());
        assert!(r.to_line().len() < 8 * 1024);
    }
    let failures = failed_writes().await;
    assert_eq!(failures, failures_before, "no segment write failed");
    let rss = env.webhook_pid().and_then(stepup_e2e::rss_mib).unwrap_or(0.0);
    eprintln!("webhook RSS {rss_before:.0} MiB before, {rss:.0} MiB after four 900 kB names");
    assert!(rss < 200.0, "the webhook stays far under the chart's 256 Mi limit: {rss:.0} MiB");
}

#[tokio::test]
async fn every_audit_line_written_matches_the_published_schema() {
    let env = Env::load();
    let schema: Value = serde_json::from_str(JSON_SCHEMA).unwrap();
    let validator = jsonschema::validator_for(&schema).expect("a valid JSON Schema");
    let mut checked = 0;
    for log in ["STEPUP_WEBHOOK_LOG", "STEPUP_CONTROLLER_LOG"] {
        for line in audit_lines(env.var(log)) {
            let errors: Vec<String> =
                validator.iter_errors(&line).map(|e| format!("{e} at {}", e.instance_path())).collect();
            assert!(errors.is_empty(), "{line}\n{}", errors.join("\n"));
            checked += 1;
        }
    }
    assert!(checked > 0, "no audit lines to check");
    eprintln!("{checked} audit lines match the schema");
}
