//! Issue-32 slice 1: a real identity provider. People sign in at the e2e Keycloak through its
//! login pages (password, then OTP when the level asks for it) and use the ID token with the
//! API server, which trusts the issuer through its AuthenticationConfiguration and puts how and
//! when they signed in into `userInfo.extra`, where admission and authorization can see it.
//! Run with `make e2e` (cluster.sh starts Keycloak beside the API server).

use k8s_openapi::api::{
    authentication::v1::{SelfSubjectReview, UserInfo},
    core::v1::ConfigMap,
};
use kube::{
    Api,
    api::{ListParams, PostParams},
};
use stepup_e2e::{
    Env,
    idp::{Idp, Level},
};

/// Who the API server says the bearer of `token` is.
async fn whoami(env: &Env, token: &str) -> Result<UserInfo, kube::Error> {
    let api: Api<SelfSubjectReview> = Api::all(env.client_with_token(token).await);
    let review = api.create(&PostParams::default(), &SelfSubjectReview::default()).await?;
    Ok(review.status.and_then(|s| s.user_info).expect("a SelfSubjectReview names the user"))
}

fn extra(user: &UserInfo, key: &str) -> Vec<String> {
    user.extra.as_ref().and_then(|e| e.get(key)).cloned().unwrap_or_default()
}

#[tokio::test]
async fn alice_signs_in_with_password_and_otp_and_the_api_server_knows_it() {
    let env = Env::load();
    let keys = env.sign_in_keys();
    let idp = Idp::new(&env);
    let tokens = idp.sign_in("alice", Level::PasswordAndOtp).expect("alice signs in");
    let claims = tokens.claims();
    assert_eq!(claims["iss"], idp.issuer.as_str());
    assert_eq!(claims["aud"], idp.client_id.as_str());
    assert_eq!(claims["acr"], "2", "{claims}");
    assert_eq!(claims["amr"], serde_json::json!(["pwd", "otp"]), "{claims}");
    let auth_time = claims["auth_time"].as_i64().expect("auth_time");
    assert!((jiff::Timestamp::now().as_second() - auth_time).abs() < 120, "signed in just now: {auth_time}");

    let user = whoami(&env, &tokens.id_token).await.expect("the API server accepts the ID token");
    assert_eq!(user.username.as_deref(), Some("alice"));
    assert_eq!(user.uid.as_deref(), claims["sub"].as_str(), "the IdP's subject is the uid");
    let groups = user.groups.clone().unwrap_or_default();
    assert!(groups.contains(&"developers".to_owned()) && groups.contains(&"system:authenticated".to_owned()));
    assert_eq!(extra(&user, &keys.acr), ["2"]);
    assert_eq!(extra(&user, &keys.amr), ["pwd", "otp"]);
    assert_eq!(extra(&user, &keys.auth_time), [auth_time.to_string()]);

    // Real RBAC for the person: alice (a developer) reads dev's config maps, not kube-system's.
    let client = env.client_with_token(&tokens.id_token).await;
    Api::<ConfigMap>::namespaced(client.clone(), "dev").list(&ListParams::default()).await.expect("dev config maps");
    let refused = Api::<ConfigMap>::namespaced(client, "kube-system").list(&ListParams::default()).await;
    assert!(matches!(&refused, Err(kube::Error::Api(s)) if s.code == 403), "{refused:?}");
}

#[tokio::test]
async fn a_password_only_sign_in_says_so_and_a_forged_token_is_nobody() {
    let env = Env::load();
    let keys = env.sign_in_keys();
    let idp = Idp::new(&env);
    let tokens = idp.sign_in("bob", Level::Password).expect("bob signs in");
    let user = whoami(&env, &tokens.id_token).await.expect("the API server accepts the ID token");
    assert_eq!(user.username.as_deref(), Some("bob"));
    assert_eq!(extra(&user, &keys.acr), ["1"]);
    assert_eq!(extra(&user, &keys.amr), ["pwd"]);

    // A token whose claims were changed (acr 2 claimed by hand) fails its signature: 401.
    let mut parts: Vec<String> = tokens.id_token.split('.').map(str::to_owned).collect();
    let mut claims = tokens.claims();
    claims["acr"] = "2".into();
    claims["amr"] = serde_json::json!(["pwd", "otp"]);
    use base64::Engine;
    parts[1] = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(claims.to_string());
    let forged = whoami(&env, &parts.join(".")).await;
    assert!(matches!(&forged, Err(kube::Error::Api(s)) if s.code == 401), "{forged:?}");

    // A wrong password gets no token at all: Keycloak's page says so.
    let wrong = Idp::new(&env).sign_in_with_password("bob", "not-bobs-password");
    let error = wrong.err().expect("no token for a wrong password").to_string();
    assert!(error.contains("Invalid username or password"), "{error}");
}
