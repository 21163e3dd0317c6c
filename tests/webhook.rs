//! The webhook server end to end without a cluster: real TLS, real HTTP, realistic reviews.

mod common;

use std::{sync::Arc, time::Duration};

use futures::future::BoxFuture;
use hyper::StatusCode;
use jiff::{SignedDuration, Timestamp};
use kube_stepup::admission::{
    Settings,
    lookup::{GrantSource, LookupError},
};
use serde_json::{Value, json};
use stepup_core::testing::{grant, policy, read, request, secret_object};
use stepup_core::{
    api::{
        Enforcement,
        Operation::*,
        StepUpGrant, StepUpPolicy,
        Verb::{Get, List, Watch},
    },
    grant::GrantRecord,
};

use common::{Options, TestServer, decision_config};

fn policies() -> Vec<StepUpPolicy> {
    vec![
        policy("prod-secrets").rule(&[Delete, Update], "", &["secrets"]).namespaces(&["prod"]).build(),
        policy("prod-exec").rule(&[Connect], "", &["pods/exec"]).namespaces(&["prod"]).max_age("5m").build(),
        policy("dev-warn")
            .rule(&[Delete], "", &["secrets"])
            .namespaces(&["dev"])
            .enforcement(Enforcement::Warn)
            .build(),
        policy("staging-audit")
            .rule(&[Delete], "", &["secrets"])
            .namespaces(&["staging"])
            .enforcement(Enforcement::Audit)
            .build(),
    ]
}

/// A grant issued just now, valid for an hour.
fn fresh_grant(name: &str, user: &str) -> StepUpGrant {
    let now = Timestamp::now();
    grant(name, user).issued(now).expires(now + SignedDuration::from_hours(1)).build()
}

fn delete_secret(namespace: &str) -> Value {
    request(Delete, "secrets").namespace(namespace).name("db").review(
        "uid-1",
        None,
        Some(secret_object(namespace, "db")),
    )
}

#[tokio::test]
async fn answers_allowed_denied_warned_and_audited_reviews() {
    let server = TestServer::start(policies(), vec![]).await;
    let mut conn = server.connect().await;

    let allowed = conn.review(&delete_secret("test")).await;
    assert_eq!(allowed["uid"], "uid-1");
    assert_eq!(allowed["allowed"], true);
    assert_eq!(allowed.get("status"), None);

    let denied = conn.review(&delete_secret("prod")).await;
    assert_eq!(denied["allowed"], false);
    assert_eq!(denied["status"]["code"], 403);
    assert_eq!(denied["status"]["reason"], "Forbidden");
    let message = denied["status"]["message"].as_str().unwrap();
    assert!(message.contains("policy \"prod-secrets\"") && message.contains("kubectl stepup request"), "{message}");
    assert_eq!(denied["status"]["details"]["causes"][0]["reason"], "StepUpRequired");
    assert_eq!(
        denied["status"]["details"]["causes"][0]["message"],
        "policies=prod-secrets methods=TOTP max-age=15m reason-required=false ref=uid-1",
        "the review it refused is named, for the plugin to hand back"
    );
    assert_eq!(denied["auditAnnotations"]["decision"], "denied");
    assert_eq!(denied["auditAnnotations"]["policy"], "prod-secrets");

    let warned = conn.review(&delete_secret("dev")).await;
    assert_eq!(warned["allowed"], true);
    assert!(warned["warnings"][0].as_str().unwrap().contains("dev-warn"), "{warned}");
    assert_eq!(warned["auditAnnotations"]["decision"], "warned");

    let audited = conn.review(&delete_secret("staging")).await;
    assert_eq!(audited["allowed"], true);
    assert_eq!(audited.get("warnings"), None);
    assert_eq!(audited["auditAnnotations"]["decision"], "audited");
    assert_eq!(audited["auditAnnotations"]["policy"], "staging-audit");

    let exec = request(Connect, "pods/exec").namespace("prod").name("web").review("uid-2", None, None);
    assert_eq!(conn.review(&exec).await["allowed"], false);

    assert_eq!(server.metric("stepup_admission_reviews_total{decision=\"denied\",policy=\"prod-secrets\"}"), Some(1.0));
    assert_eq!(server.metric("stepup_admission_reviews_total{decision=\"no-policy\",policy=\"none\"}"), Some(1.0));
}

/// The registration's two entries differ only in how the API server fails; the webhook
/// answers both alike, with every policy. So a request the entry that fails open still routes
/// while the controller moves a rule that just became `Deny` is refused there too.
#[tokio::test]
async fn both_entries_answer_alike_so_a_rule_that_just_became_deny_is_enforced_on_either() {
    let server = TestServer::start(policies(), vec![]).await;
    let mut conn = server.connect().await;
    for namespace in ["prod", "dev", "staging", "test"] {
        let review = delete_secret(namespace).to_string();
        let (s1, validate) = conn.post("/validate?timeout=10s", review.clone()).await;
        let (s2, advise) = conn.post("/advise?timeout=10s", review).await;
        assert_eq!((s1, s2), (StatusCode::OK, StatusCode::OK));
        let (validate, advise): (Value, Value) =
            (serde_json::from_slice(&validate).unwrap(), serde_json::from_slice(&advise).unwrap());
        assert_eq!(validate, advise, "{namespace}");
    }
    let (_, body) = conn.post("/advise", delete_secret("prod").to_string()).await;
    let refused: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(refused["response"]["allowed"], false, "{refused}");
    let (status, _) = conn.post("/elsewhere", delete_secret("prod").to_string()).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn a_fresh_grant_lets_the_same_request_through() {
    let server = TestServer::start(policies(), vec![fresh_grant("g-alice", "alice")]).await;
    let mut conn = server.connect().await;
    let response = conn.review(&delete_secret("prod")).await;
    assert_eq!(response["allowed"], true, "{response}");
    assert_eq!(response["auditAnnotations"]["grant"], "g-alice");
    assert_eq!(response["auditAnnotations"]["decision"], "granted");
    let bob =
        request(Delete, "secrets").namespace("prod").name("db").by("bob", &["developers"]).review("u", None, None);
    assert_eq!(conn.review(&bob).await["allowed"], false, "alice's grant is not bob's");
}

#[tokio::test]
async fn spoofed_stepup_objects_are_refused() {
    let server = TestServer::start(policies(), vec![]).await;
    let mut conn = server.connect().await;
    let challenge = json!({
        "apiVersion": "stepup.dev/v1alpha1", "kind": "StepUpChallenge",
        "metadata": {"name": "c1"},
        "spec": {"user": "bob", "method": "TOTP", "response": "123456"}
    });
    let review = request(Create, "stepupchallenges").group("stepup.dev", "v1alpha1").review("u", Some(challenge), None);
    let response = conn.review(&review).await;
    assert_eq!(response["allowed"], false);
    assert!(response["status"]["message"].as_str().unwrap().contains("only be created for yourself"), "{response}");

    let forged = serde_json::to_value(fresh_grant("forged", "alice")).unwrap();
    let review = request(Create, "stepupgrants").group("stepup.dev", "v1alpha1").review("u", Some(forged), None);
    let response = conn.review(&review).await;
    assert_eq!(response["allowed"], false);
    assert_eq!(response["auditAnnotations"]["decision"], "builtin-denied");
}

#[tokio::test]
async fn malformed_reviews_get_a_clear_answer_and_the_server_keeps_going() {
    let server = TestServer::start(policies(), vec![]).await;
    let mut conn = server.connect().await;

    let (status, body) = conn.post("/validate", "this is not json").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let body: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(body["kind"], "Status");
    assert!(body["message"].as_str().unwrap().contains("not a JSON AdmissionReview"), "{body}");

    // A recoverable uid gets a proper AdmissionReview denial the API server can show.
    let v1beta1 =
        json!({"apiVersion": "admission.k8s.io/v1beta1", "kind": "AdmissionReview", "request": {"uid": "old-1"}});
    let (status, body) = conn.post("/validate", v1beta1.to_string()).await;
    assert_eq!(status, StatusCode::OK);
    let body: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(body["response"]["uid"], "old-1");
    assert_eq!(body["response"]["allowed"], false);
    assert_eq!(body["response"]["status"]["code"], 400);
    assert!(body["response"]["status"]["message"].as_str().unwrap().contains("only admission.k8s.io/v1"), "{body}");

    let bad_object = request(Create, "stepupenrollments").group("stepup.dev", "v1alpha1").review(
        "bad-1",
        Some(json!({"spec": "not an object"})),
        None,
    );
    let response = conn.review(&bad_object).await;
    assert_eq!(response["allowed"], false);
    assert!(
        response["status"]["message"].as_str().unwrap().contains("cannot read object as a StepUpEnrollment"),
        "{response}"
    );

    let (status, _) = conn.post("/validate", "").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);

    // Same connection, still serving.
    assert_eq!(conn.review(&delete_secret("prod")).await["allowed"], false);
    assert_eq!(server.metric("stepup_admission_review_errors_total{reason=\"not_json\"}"), Some(2.0));
}

#[tokio::test]
async fn oversized_reviews_are_refused_with_413() {
    let options = Options {
        settings: Settings { decision: decision_config(), max_body_bytes: 64 * 1024, ..Settings::default() },
        ..Options::default()
    };
    let server = TestServer::start_with(policies(), vec![], options).await;
    let mut conn = server.connect().await;
    let mut big = secret_object("prod", "db");
    big["data"]["blob"] = json!("A".repeat(100 * 1024));
    let review = request(Create, "secrets").namespace("prod").name("db").review("big", Some(big), None);
    let (status, body) = conn.post("/validate", review.to_string()).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
    assert!(String::from_utf8_lossy(&body).contains("larger than 65536 bytes"));
    assert_eq!(server.metric("stepup_admission_review_errors_total{reason=\"too_large\"}"), Some(1.0));
}

/// A grant source standing in for the API server: answers with `grants` after `delay`.
struct SlowSource {
    grants: Vec<GrantRecord>,
    delay: Duration,
}

impl GrantSource for SlowSource {
    fn grants_of<'a>(&'a self, user: &'a str) -> BoxFuture<'a, Result<Vec<GrantRecord>, LookupError>> {
        Box::pin(async move {
            tokio::time::sleep(self.delay).await;
            Ok(self.grants.iter().filter(|g| g.user == user).cloned().collect())
        })
    }
}

#[tokio::test]
async fn a_grant_not_yet_in_the_cache_is_found_by_a_direct_lookup() {
    let just_issued = GrantRecord::from_grant(&fresh_grant("g-new", "alice")).unwrap();
    let options = Options {
        lookup: Some(Arc::new(SlowSource { grants: vec![just_issued], delay: Duration::ZERO })),
        ..Options::default()
    };
    let server = TestServer::start_with(policies(), vec![], options).await;
    let mut conn = server.connect().await;
    let response = conn.review(&delete_secret("prod")).await;
    assert_eq!(response["allowed"], true, "{response}");
    assert_eq!(response["auditAnnotations"]["grant"], "g-new");
    assert_eq!(server.metric("stepup_grant_lookups_total{result=\"found\"}"), Some(1.0));
}

#[tokio::test]
async fn a_lookup_that_does_not_answer_in_time_leaves_the_denial_standing() {
    let just_issued = GrantRecord::from_grant(&fresh_grant("g-late", "alice")).unwrap();
    let options = Options {
        settings: Settings {
            decision: decision_config(),
            lookup_timeout: Duration::from_millis(200),
            ..Settings::default()
        },
        lookup: Some(Arc::new(SlowSource { grants: vec![just_issued], delay: Duration::from_secs(30) })),
        ..Options::default()
    };
    let server = TestServer::start_with(policies(), vec![], options).await;
    let mut conn = server.connect().await;
    let response = conn.review(&delete_secret("prod")).await;
    assert_eq!(response["allowed"], false, "{response}");
    assert_eq!(server.metric("stepup_grant_lookups_total{result=\"timeout\"}"), Some(1.0));
}

#[tokio::test]
async fn a_broken_grant_watch_fails_closed_past_the_bound() {
    let options = Options {
        settings: Settings {
            decision: decision_config(),
            grant_staleness_bound: Duration::ZERO,
            ..Settings::default()
        },
        ..Options::default()
    };
    let server = TestServer::start_with(policies(), vec![fresh_grant("g", "alice")], options).await;
    server.caches.mark_broken(kube_stepup::admission::CacheKind::Grants);
    let mut conn = server.connect().await;
    let response = conn.review(&delete_secret("prod")).await;
    assert_eq!(response["allowed"], false, "{response}");
    assert_eq!(response["status"]["code"], 503);
    assert_eq!(response["auditAnnotations"]["decision"], "unavailable");
    // Requests no Deny policy cares about are unaffected.
    assert_eq!(conn.review(&delete_secret("test")).await["allowed"], true);
}

#[tokio::test]
async fn not_ready_until_every_cache_has_synced_and_not_ready_while_draining() {
    let options = Options { synced: false, ..Options::default() };
    let server = TestServer::start_with(policies(), vec![], options).await;
    let (status, body) = server.admin_get("/readyz").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(body.contains("policies not synced"), "{body}");
    let mut conn = server.connect().await;
    let (status, _) = conn.post("/validate", delete_secret("prod").to_string()).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "no decisions before policies are loaded");

    for kind in kube_stepup::admission::CacheKind::ALL {
        server.caches.mark_synced(kind);
    }
    assert_eq!(server.admin_get("/readyz").await.0, StatusCode::OK);
    assert_eq!(server.admin_get("/healthz").await.0, StatusCode::OK);

    server.readiness.set_draining();
    assert_eq!(server.admin_get("/readyz").await.0, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(conn.review(&delete_secret("prod")).await["allowed"], false, "still serving while draining");
}

#[tokio::test]
async fn metrics_expose_reviews_and_fine_grained_latency_buckets() {
    let server = TestServer::start(policies(), vec![]).await;
    server.connect().await.review(&delete_secret("prod")).await;
    let (status, text) = server.admin_get("/metrics").await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        text.contains("stepup_admission_review_duration_seconds_bucket{decision=\"denied\",le=\"0.0001\"}"),
        "{text}"
    );
    assert!(text.contains("stepup_build_info{version="), "{text}");
    assert!(!text.contains("alice"), "usernames never become metric labels");
}

#[tokio::test]
async fn certificate_rotation_keeps_existing_connections_and_serves_the_new_one() {
    let server = TestServer::start(policies(), vec![]).await;
    let mut kept = server.connect().await;
    assert_eq!(kept.review(&delete_secret("test")).await["allowed"], true);
    let old_cert = kept.server_cert.clone();

    // The API server's caBundle carries both CAs during a rotation.
    let new_ca = common::new_ca("stepup-test-ca-2");
    server.rotate(&new_ca);
    assert!(server.certificate.reload_if_changed().unwrap(), "new files are picked up");

    for _ in 0..3 {
        assert_eq!(kept.review(&delete_secret("test")).await["allowed"], true);
    }
    assert!(kept.is_open(), "the connection survived the rotation");

    let fresh = common::Connection::open(server.addr, &[&server.ca, &new_ca]).await;
    assert_ne!(fresh.server_cert, old_cert, "new handshakes get the new certificate");
    assert_eq!(server.certificate.current_chain()[0], fresh.server_cert);
    // A client that only trusts the new CA can connect now.
    common::Connection::open(server.addr, &[&new_ca]).await;
}

#[tokio::test]
async fn a_half_written_certificate_pair_is_not_served() {
    let server = TestServer::start(policies(), vec![]).await;
    let before = server.certificate.current_chain();
    let other = common::serving(&common::new_ca("other"));
    std::fs::write(server.path("tls.crt"), &other.cert_pem).unwrap();
    let err = server.certificate.reload_if_changed().unwrap_err();
    assert!(err.to_string().contains("does not fit"), "{err}");
    assert_eq!(server.certificate.current_chain(), before);
    server.connect().await.review(&delete_secret("test")).await;
    // Once the key arrives too, the pair is accepted.
    std::fs::write(server.path("tls.key"), &other.key_pem).unwrap();
    assert!(server.certificate.reload_if_changed().unwrap());
}

#[tokio::test]
async fn http2_clients_are_served_too() {
    let server = TestServer::start(policies(), vec![]).await;
    let config = common::client_config(&[&server.ca], &[b"h2"]);
    let connector = tokio_rustls::TlsConnector::from(config);
    let tcp = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    let tls = connector.connect(rustls::pki_types::ServerName::try_from("localhost").unwrap(), tcp).await.unwrap();
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let (mut sender, conn) =
        hyper::client::conn::http2::handshake(hyper_util::rt::TokioExecutor::new(), hyper_util::rt::TokioIo::new(tls))
            .await
            .unwrap();
    tokio::spawn(conn);
    let req = hyper::Request::post("https://localhost/validate")
        .body(http_body_util::Full::new(bytes::Bytes::from(delete_secret("prod").to_string())))
        .unwrap();
    let resp = sender.send_request(req).await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
}

#[tokio::test]
async fn stopping_lets_the_server_finish_and_close() {
    let server = TestServer::start(policies(), vec![]).await;
    let mut conn = server.connect().await;
    conn.review(&delete_secret("test")).await;
    server.stop.cancel();
    tokio::time::timeout(Duration::from_secs(10), server.served).await.expect("server stops").unwrap();
    assert!(tokio::net::TcpStream::connect(server.addr).await.is_err(), "listener closed");
}

/// Policies that name reads of prod secrets (authorization) beside the writes of `policies()`.
fn read_policies() -> Vec<StepUpPolicy> {
    let mut all = policies();
    all.push(policy("prod-secret-reads").verbs(&[Get, List, Watch], "", &["secrets"]).namespaces(&["prod"]).build());
    all
}

/// POSTs a SubjectAccessReview to `/authorize` and returns its status.
async fn authorize(conn: &mut common::Connection, review: &Value) -> Value {
    let (status, body) = conn.post("/authorize", review.to_string()).await;
    assert_eq!(status, StatusCode::OK, "{}", String::from_utf8_lossy(&body));
    let answer: Value = serde_json::from_slice(&body).expect("JSON answer");
    assert_eq!(
        (answer["apiVersion"].as_str(), answer["kind"].as_str()),
        (Some("authorization.k8s.io/v1"), Some("SubjectAccessReview"))
    );
    answer["status"].clone()
}

#[tokio::test]
async fn protected_reads_are_denied_with_what_to_run_and_everything_else_has_no_opinion() {
    let server = TestServer::start(read_policies(), vec![]).await;
    let mut conn = server.connect().await;
    for verb in [Get, List, Watch] {
        let mut read = read(verb, "secrets").namespace("prod");
        if verb == Get {
            read = read.name("db");
        }
        let status = authorize(&mut conn, &read.subject_access_review()).await;
        assert_eq!(
            (status["allowed"].as_bool(), status["denied"].as_bool()),
            (Some(false), Some(true)),
            "{verb:?}: {status}"
        );
        let reason = status["reason"].as_str().unwrap();
        assert!(
            reason.contains("policy \"prod-secret-reads\"") && reason.contains("kubectl stepup request"),
            "{verb:?}: {reason}"
        );
        assert!(reason.contains("ref="), "the refusal names itself for the plugin: {reason}");
    }
    // Not named by any policy: NoOpinion, so that RBAC decides (never an Allow).
    for unprotected in [
        read(Get, "secrets").namespace("dev").name("db"),
        read(Get, "configmaps").namespace("prod").name("settings"),
        read(List, "pods").namespace("prod"),
    ] {
        let status = authorize(&mut conn, &unprotected.subject_access_review()).await;
        assert_eq!(status, json!({"allowed": false}), "{status}");
    }
    // A list of secrets in every namespace spans prod: refused too.
    let everywhere = authorize(&mut conn, &read(List, "secrets").subject_access_review()).await;
    assert_eq!(everywhere["denied"], true, "{everywhere}");
    assert_eq!(
        server.metric("stepup_authorization_reviews_total{decision=\"denied\",policy=\"prod-secret-reads\"}"),
        Some(4.0)
    );
    assert_eq!(server.metric("stepup_admission_reviews_total{"), None, "reads are not counted as admission reviews");
}

#[tokio::test]
async fn a_fresh_grant_lets_the_read_through_as_no_opinion_and_bobs_stays_denied() {
    let server = TestServer::start(read_policies(), vec![fresh_grant("g-alice", "alice")]).await;
    let mut conn = server.connect().await;
    let alice = read(Get, "secrets").namespace("prod").name("db").subject_access_review();
    assert_eq!(authorize(&mut conn, &alice).await, json!({"allowed": false}), "granted: RBAC decides");
    assert_eq!(server.metric("stepup_authorization_reviews_total{decision=\"granted\""), Some(1.0));
    let bob = read(Get, "secrets").namespace("prod").name("db").by("bob", &["developers"]).subject_access_review();
    assert_eq!(authorize(&mut conn, &bob).await["denied"], true, "alice's grant is not bob's");
}

#[tokio::test]
async fn a_read_grant_not_yet_in_the_cache_is_found_by_a_direct_lookup() {
    let just_issued = GrantRecord::from_grant(&fresh_grant("g-new", "alice")).unwrap();
    let options = Options {
        lookup: Some(Arc::new(SlowSource { grants: vec![just_issued], delay: Duration::ZERO })),
        ..Options::default()
    };
    let server = TestServer::start_with(read_policies(), vec![], options).await;
    let mut conn = server.connect().await;
    let alice = read(Watch, "secrets").namespace("prod").subject_access_review();
    assert_eq!(authorize(&mut conn, &alice).await, json!({"allowed": false}));
    assert_eq!(server.metric("stepup_grant_lookups_total{result=\"found\"}"), Some(1.0));
}

#[tokio::test]
async fn malformed_access_reviews_are_http_errors_and_nothing_is_decided_before_policies_load() {
    let server = TestServer::start(read_policies(), vec![]).await;
    let mut conn = server.connect().await;
    for (body, needle) in [
        ("not json", "not a JSON SubjectAccessReview"),
        (
            r#"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":{}}"#,
            "only authorization.k8s.io/v1",
        ),
        (r#"{"apiVersion":"authorization.k8s.io/v1","kind":"SubjectAccessReview"}"#, "no spec"),
    ] {
        let (status, answer) = conn.post("/authorize", body).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
        assert!(String::from_utf8_lossy(&answer).contains(needle), "{body}: {}", String::from_utf8_lossy(&answer));
    }
    // An admission review sent to /authorize (or the other way round) is not mistaken for one.
    let (status, _) = conn.post("/authorize", delete_secret("prod").to_string()).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let sar = read(Get, "secrets").namespace("prod").name("db").subject_access_review();
    let (status, _) = conn.post("/validate", sar.to_string()).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "a SubjectAccessReview is no AdmissionReview");

    let starting =
        TestServer::start_with(read_policies(), vec![], Options { synced: false, ..Options::default() }).await;
    let (status, _) = starting.connect().await.post("/authorize", sar.to_string()).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "the authorizer's failurePolicy decides until policies load");
}
