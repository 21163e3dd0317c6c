//! Issue-32 slice 2, `Session`: a policy accepts the step-up evidence the API server puts on
//! the request from a person's ID token (acr, amr, auth_time in `userInfo.extra`). Someone who
//! signed in with password and OTP minutes ago is not asked again; a weaker or older sign-in is
//! refused with what to do; nobody can impersonate a sign-in into a request.
//! Run with `make e2e` (Keycloak runs beside the API server; one test at a time).

use std::time::Duration;

use jiff::{SignedDuration, Timestamp};
use k8s_openapi::api::core::v1::Secret;
use kube::{Api, api::DeleteParams};
use stepup_core::api::{Method, Operation::Delete, StepUpPolicy, Verb::Get};
use stepup_core::testing::policy;
use stepup_e2e::{
    World,
    attack::text,
    audit_lines, eventually,
    idp::{Idp, Level},
    plugin_with, refusal, show,
};

/// Deleting and reading prod secrets: a fresh sign-in with OTP (acr 2) at the identity
/// provider, or a TOTP grant.
fn sso_secrets(max_age: &str) -> StepUpPolicy {
    policy("prod-secrets-sso")
        .rule(&[Delete], "", &["secrets"])
        .verbs(&[Get], "", &["secrets"])
        .namespaces(&["prod"])
        .methods(&[Method::Session, Method::Totp])
        .assurance(&["2"], &["otp"])
        .max_age(max_age)
        .build()
}

/// The shipped example (the same policy, for every `env=prod` namespace).
fn example() -> StepUpPolicy {
    serde_yaml::from_str(include_str!("../../manifests/examples/prod-secrets-sso.yaml")).expect("example parses")
}

async fn prod_secrets(world: &World, token: &str) -> Api<Secret> {
    Api::namespaced(world.env.client_with_token(token).await, "prod")
}

#[tokio::test]
async fn a_fresh_sign_in_with_otp_is_enough_and_a_password_only_one_is_told_what_to_do() {
    let world = World::new().await;
    world.secret("prod", "db").await;
    world.apply_policies(&[example()]).await;
    let idp = Idp::new(&world.env);

    // bob signed in with his password only: refused, told what would do.
    let bob = idp.sign_in("bob", Level::Password).expect("bob signs in");
    let status = refusal(prod_secrets(&world, &bob.id_token).await.delete("db", &DeleteParams::default()).await);
    assert_eq!(status.code, 403, "{status:?}");
    let message = status.message;
    assert!(
        message.contains(
            "requires step-up (policy \"prod-secrets-sso\"): a TOTP grant issued within the last 15m, or a sign-in at your identity provider (acr \"2\", with otp) within the last 15m."
        ),
        "{message}"
    );
    assert!(
        message.contains(
            "Your sign-in at the identity provider does not count: the sign-in's assurance level (acr) is \"1\" and the policy accepts \"2\"."
        ),
        "{message}"
    );
    assert!(message.contains("or sign in again at your identity provider."), "{message}");
    assert!(
        message.contains("methods=TOTP,Session max-age=15m reason-required=false acr-values=2 amr=otp"),
        "{message}"
    );
    // His read is refused alike, by the authorizer.
    let read = refusal(prod_secrets(&world, &bob.id_token).await.get("db").await);
    assert!(read.message.contains("acr) is \"1\""), "{}", read.message);

    // alice signed in with password and OTP a moment ago: she reads and deletes, no prompt.
    let alice = idp.sign_in("alice", Level::PasswordAndOtp).expect("alice signs in");
    let jti = alice.claims()["jti"].as_str().expect("a jti").to_owned();
    let secrets = prod_secrets(&world, &alice.id_token).await;
    secrets.get("db").await.expect("alice reads prod/db with her sign-in");
    secrets.delete("db", &DeleteParams::default()).await.expect("alice deletes prod/db with her sign-in");
    // The trail names the token that carried the sign-in, for the write and the read.
    let grant = format!("session:JTI={jti}");
    eventually(Duration::from_secs(15), || async {
        let lines = audit_lines(world.env.var("STEPUP_WEBHOOK_LOG"));
        let of = |event: &str, operation: &str| {
            lines.iter().any(|l| {
                l["event"] == event
                    && l["decision"] == "granted"
                    && l["grant"] == grant.as_str()
                    && l["operation"] == operation
            })
        };
        if of("admission.decision", "DELETE") && of("authorization.decision", "get") {
            Ok(())
        } else {
            anyhow::bail!("no granted delete and read with {grant} in the trail yet")
        }
    })
    .await
    .expect("the allowed delete and read are recorded with the sign-in's token");
    // Nothing was issued: no StepUpGrant stands for a sign-in.
    assert!(world.grants_of("alice").await.is_empty(), "no grant object");
}

#[tokio::test]
async fn a_sign_in_older_than_max_age_counts_for_nothing() {
    let world = World::new().await;
    world.secret("prod", "db").await;
    let idp = Idp::new(&world.env);
    let alice = idp.sign_in("alice", Level::PasswordAndOtp).expect("alice signs in");
    let auth_time = Timestamp::from_second(alice.claims()["auth_time"].as_i64().expect("auth_time")).unwrap();
    // A policy of 2 s; time passes until the sign-in is older than that (a clock, not a
    // system to wait for).
    world.apply_policies(&[sso_secrets("2s")]).await;
    while Timestamp::now() < auth_time + SignedDuration::from_secs(3) {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let status = refusal(prod_secrets(&world, &alice.id_token).await.delete("db", &DeleteParams::default()).await);
    assert!(
        status.message.contains("Your sign-in at the identity provider does not count: it was issued ")
            && status.message.contains("ago and the policy accepts at most 2s."),
        "{}",
        status.message
    );
}

#[tokio::test]
async fn nobody_impersonates_a_sign_in_into_a_request() {
    let world = World::new().await;
    world.secret("prod", "db").await;
    // carol (break-glass group, not system:masters) may impersonate anyone with these extras,
    // as an over-broad role would allow.
    // The API server maps claims to other keys than stepup's defaults here (cluster.sh), and
    // stepup is configured with them: those are the ones to forge. The defaults are in the
    // role too, to show that they carry nothing once other keys are configured.
    let keys = world.env.sign_in_keys();
    let defaults = stepup_core::policy::SignInKeys::default();
    let extras: Vec<String> =
        [&keys.acr, &keys.amr, &keys.auth_time, &defaults.acr, &defaults.amr, &defaults.auth_time]
            .into_iter()
            .map(String::as_str)
            .chain(["team"])
            .map(|k| format!("userextras/{k}"))
            .collect();
    let rbac = format!(
        "apiVersion: rbac.authorization.k8s.io/v1\nkind: ClusterRole\nmetadata: {{name: e2e-impersonate-all}}\n\
         rules: [{{apiGroups: [''], resources: [users, groups, serviceaccounts], verbs: [impersonate]}},\n\
         {{apiGroups: [authentication.k8s.io], resources: [{}], verbs: [impersonate]}}]\n---\n\
         apiVersion: rbac.authorization.k8s.io/v1\nkind: ClusterRoleBinding\nmetadata: {{name: e2e-impersonate-all}}\n\
         roleRef: {{apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: e2e-impersonate-all}}\n\
         subjects: [{{apiGroup: rbac.authorization.k8s.io, kind: User, name: carol}}]\n",
        extras.join(", ")
    );
    let out = world.env.kubectl_stdin("admin", &["apply", "-f", "-"], &rbac);
    assert!(out.status.success(), "{}", text(&out));
    let now = Timestamp::now().as_second().to_string();
    let forged_at = |keys: &stepup_core::policy::SignInKeys, who: &str, group: &str, verb_args: &[&str]| {
        let mut args: Vec<String> = verb_args.iter().map(|a| a.to_string()).collect();
        for a in [
            "--as".to_owned(),
            who.to_owned(),
            "--as-group".to_owned(),
            group.to_owned(),
            "--as-user-extra".to_owned(),
            format!("{}=2", keys.acr),
            "--as-user-extra".to_owned(),
            format!("{}=otp", keys.amr),
            "--as-user-extra".to_owned(),
            format!("{}={now}", keys.auth_time),
        ] {
            args.push(a);
        }
        args
    };
    let forged = |who: &str, group: &str, verb_args: &[&str]| forged_at(&keys, who, group, verb_args);
    // Before any policy accepts a sign-in, RBAC lets carol put these extras on a request (no
    // policy trusts them yet): the refusal below is stepup's, not RBAC's.
    let args = forged("alice", "developers", &["auth", "whoami", "-o", "json"]);
    let out = world.env.kubectl("carol", &args.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(out.status.success() && String::from_utf8_lossy(&out.stdout).contains(&keys.acr), "{}", text(&out));

    world.apply_policies(&[example()]).await;
    for (who, group) in [("alice", "developers"), ("system:serviceaccount:prod:default", "system:serviceaccounts")] {
        let args = forged(who, group, &["-n", "prod", "delete", "secret", "db"]);
        let out = world.env.kubectl("carol", &args.iter().map(String::as_str).collect::<Vec<_>>());
        let stderr = String::from_utf8_lossy(&out.stderr);
        // The API server names the first impersonation check that failed (1.36 asks the
        // constrained `impersonate-on:` verbs first, then the legacy ones); stepup's authorizer
        // refused the sign-in's extra, whatever RBAC says, and recorded it.
        assert!(!out.status.success() && stderr.contains("cannot impersonate"), "{who}: {stderr}");
    }
    // (The audit line is written as the answer goes out: wait for it.)
    eventually(Duration::from_secs(10), || async {
        let refused = audit_lines(world.env.var("STEPUP_WEBHOOK_LOG"))
            .into_iter()
            .filter(|l| {
                l["event"] == "authorization.decision"
                    && l["user"] == "carol"
                    && l["operation"] == "impersonate"
                    && l["resource"] == "userextras"
                    // The API server asks about the extras in no fixed order and stops at the
                    // first refused.
                    && l["subresource"].as_str().is_some_and(|k| keys.forgeable().contains(&k))
                    && l["decision"] == "builtin-denied"
                    && l["time"].as_str().and_then(|t| t.parse::<Timestamp>().ok()).is_some_and(|t| t >= world.started)
            })
            .count();
        if refused >= 2 { Ok(()) } else { anyhow::bail!("{refused} refusals recorded") }
    })
    .await
    .expect("stepup's authorizer refused both impersonated sign-ins");
    // The default keys are not where this cluster's sign-ins arrive: RBAC lets carol put them
    // on alice's request, and they prove nothing. The webhook still wants alice's step-up.
    let args = forged_at(&defaults, "alice", "developers", &["-n", "prod", "delete", "secret", "db"]);
    let out = world.env.kubectl("carol", &args.iter().map(String::as_str).collect::<Vec<_>>());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success()
            && !stderr.contains("cannot impersonate")
            && stderr.contains("requires step-up (policy \"prod-secrets-sso\")"),
        "{stderr}"
    );
    // Other extras stay RBAC's business: carol reads as alice with `team=a`, and the policy
    // still wants alice's own sign-in.
    let out = world.env.kubectl(
        "carol",
        &[
            "-n",
            "prod",
            "get",
            "secret",
            "db",
            "--as",
            "alice",
            "--as-group",
            "developers",
            "--as-user-extra",
            "team=a",
        ],
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("User \"alice\" cannot get") && stderr.contains("policy \"prod-secrets-sso\""), "{stderr}");
    let _ = world.env.kubectl_stdin("admin", &["delete", "-f", "-", "--wait=false"], &rbac);
    let api: Api<Secret> = Api::namespaced(world.admin.clone(), "prod");
    assert!(api.get_opt("db").await.unwrap().is_some(), "prod/db is still there");
}

#[tokio::test]
async fn kubectl_stepup_check_answers_for_the_sign_in_on_the_credential() {
    let world = World::new().await;
    world.apply_policies(&[example()]).await;
    let idp = Idp::new(&world.env);
    let alice = idp.sign_in("alice", Level::PasswordAndOtp).expect("alice signs in");
    let kubeconfig = world.env.kubeconfig_with_token("alice-oidc", &alice.id_token);
    let out = plugin_with(&world.env, &kubeconfig, &["check", "delete", "secret", "db", "-n", "prod"], None).await;
    assert_eq!(out.status.code(), Some(0), "{}", show(&out));
    assert!(String::from_utf8_lossy(&out.stdout).contains("allowed"), "{}", show(&out));

    let bob = idp.sign_in("bob", Level::Password).expect("bob signs in");
    let kubeconfig = world.env.kubeconfig_with_token("bob-oidc", &bob.id_token);
    let out = plugin_with(&world.env, &kubeconfig, &["check", "delete", "secret", "db", "-n", "prod"], None).await;
    assert_eq!(out.status.code(), Some(3), "step-up required: {}", show(&out));
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        said.contains("your sign-in at the identity provider does not count") && said.contains("acr) is \"1\""),
        "{said}"
    );
}

/// An operator who renders the authorizer file without the cluster's sign-in keys leaves those
/// keys forgeable by whoever RBAC lets impersonate: a policy accepting `Session` stops being
/// Ready within its recheck, naming the impersonation the API server does not send, and is
/// Ready again once the file is rendered with the keys.
#[tokio::test]
async fn an_authorizer_file_for_other_sign_in_keys_leaves_a_session_policy_not_ready() {
    let world = World::new().await;
    world.apply_policies(&[example()]).await;
    let api: Api<StepUpPolicy> = Api::all(world.policy_writer.clone());
    let name = example().metadata.name.expect("named");
    let ready = |wanted: &'static str| {
        let (api, name) = (api.clone(), name.clone());
        async move {
            // A Ready policy that needs the authorizer is looked at again every 30 s.
            eventually(Duration::from_secs(60), || async {
                let status = api.get(&name).await?.status.unwrap_or_default();
                match status.conditions.iter().find(|c| c.type_ == "Ready") {
                    Some(c) if c.reason == wanted => Ok(c.clone()),
                    other => anyhow::bail!("Ready condition: {other:?}"),
                }
            })
            .await
            .unwrap_or_else(|e| panic!("Ready becomes {wanted}: {e}"))
        }
    };
    assert_eq!(ready("Compiled").await.status, "True");

    let defaults = stepup_core::policy::SignInKeys::default();
    world
        .render_authorizer(&[
            ("STEPUP_SIGN_IN_ACR_EXTRA", &defaults.acr),
            ("STEPUP_SIGN_IN_AMR_EXTRA", &defaults.amr),
            ("STEPUP_SIGN_IN_AUTH_TIME_EXTRA", &defaults.auth_time),
        ])
        .await;
    let not_sent = ready("AuthorizerNotConfigured").await;
    let keys = world.env.sign_in_keys();
    assert_eq!(not_sent.status, "False");
    assert!(
        not_sent.message.starts_with(&format!(
            "the API server does not send impersonate userextras/{}, impersonate userextras/{}, impersonate userextras/{} to stepup's authorizer",
            keys.acr, keys.amr, keys.auth_time
        )) && not_sent.message.contains("(whoever may impersonate could put a sign-in on a request)"),
        "{}",
        not_sent.message
    );

    world.sync_authorizer().await;
    assert_eq!(ready("Compiled").await.status, "True");
}
