//! Each rule of the module, attempted as an attack with tokens this test signs itself (ES256
//! keys made here; RS256 is verified against a real Keycloak in e2e).

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use jiff::{SignedDuration, Timestamp};
use ring::{
    rand::SystemRandom,
    signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair},
};
use serde_json::{Value, json};

use super::*;

const ISS: &str = "https://idp.example/realms/stepup";
const NONCE: &str = "0f3c-nonce-of-this-challenge";

struct Signer {
    pair: EcdsaKeyPair,
    kid: &'static str,
}

impl Signer {
    fn new(kid: &'static str) -> Self {
        let rng = SystemRandom::new();
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng).unwrap();
        Self { pair: EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref(), &rng).unwrap(), kid }
    }

    fn jwk(&self) -> Value {
        let point = self.pair.public_key().as_ref();
        json!({
            "kty": "EC", "crv": "P-256", "use": "sig", "alg": "ES256", "kid": self.kid,
            "x": URL_SAFE_NO_PAD.encode(&point[1..33]), "y": URL_SAFE_NO_PAD.encode(&point[33..65]),
        })
    }

    fn sign_with_header(&self, header: Value, claims: &Value) -> String {
        let h = URL_SAFE_NO_PAD.encode(serde_json::to_vec(&header).unwrap());
        let c = URL_SAFE_NO_PAD.encode(serde_json::to_vec(claims).unwrap());
        let sig = self.pair.sign(&SystemRandom::new(), format!("{h}.{c}").as_bytes()).unwrap();
        format!("{h}.{c}.{}", URL_SAFE_NO_PAD.encode(sig.as_ref()))
    }

    fn sign(&self, claims: &Value) -> String {
        self.sign_with_header(json!({"alg": "ES256", "typ": "JWT", "kid": self.kid}), claims)
    }
}

fn jwks(signers: &[&Signer]) -> Jwks {
    let doc = json!({"keys": signers.iter().map(|s| s.jwk()).collect::<Vec<_>>()});
    Jwks::parse(&serde_json::to_vec(&doc).unwrap()).unwrap()
}

fn issuer() -> Issuer {
    Issuer {
        url: ISS.into(),
        audiences: vec!["kubectl-stepup".into()],
        username_claim: "preferred_username".into(),
        username_prefix: "oidc:".into(),
        uid_claim: Some("sub".into()),
        required_claims: vec![],
    }
}

fn now() -> Timestamp {
    Timestamp::from_second(1_800_000_000).unwrap()
}

fn claims() -> Value {
    let t = now().as_second();
    json!({
        "iss": ISS, "aud": "kubectl-stepup", "sub": "4f1e-alice", "preferred_username": "alice",
        "iat": t - 5, "exp": t + 295, "auth_time": t - 10, "nonce": NONCE, "jti": "tok-1",
        "acr": "2", "amr": ["pwd", "otp"],
    })
}

fn expect() -> Expect<'static> {
    Expect {
        user: "oidc:alice",
        uid: Some("4f1e-alice"),
        nonce: NONCE,
        now: now(),
        skew: SignedDuration::from_secs(30),
    }
}

fn with(change: impl FnOnce(&mut serde_json::Map<String, Value>)) -> Value {
    let mut c = claims();
    change(c.as_object_mut().unwrap());
    c
}

#[test]
fn a_fresh_token_for_the_requester_says_who_signed_in_when_and_how() {
    let key = Signer::new("k1");
    let got = verify(&key.sign(&claims()), &issuer(), &jwks(&[&key]), &expect()).unwrap();
    assert_eq!(got.username, "oidc:alice");
    assert_eq!(got.uid.as_deref(), Some("4f1e-alice"));
    assert_eq!(got.acr.as_deref(), Some("2"));
    assert_eq!(got.amr, ["pwd", "otp"]);
    assert_eq!(got.auth_time, now() - SignedDuration::from_secs(10));
    assert_eq!(got.id, "tok-1");
}

#[test]
fn none_and_hmac_are_refused_before_any_key_is_looked_at() {
    let key = Signer::new("k1");
    let good = key.sign(&claims());
    let body = good.split('.').nth(1).unwrap();
    for alg in ["none", "HS256", "ES256K", ""] {
        let header = URL_SAFE_NO_PAD.encode(json!({"alg": alg, "kid": "k1"}).to_string());
        // The classic confusion: an HMAC keyed with the public key's bytes.
        let token = format!("{header}.{body}.{}", URL_SAFE_NO_PAD.encode(b"anything"));
        assert_eq!(verify(&token, &issuer(), &jwks(&[&key]), &expect()), Err(TokenError::Algorithm(alg.into())));
    }
}

#[test]
fn a_token_signed_by_a_key_the_issuer_does_not_publish_is_refused() {
    let (published, other) = (Signer::new("k1"), Signer::new("k2"));
    let token = other.sign(&claims());
    assert_eq!(verify(&token, &issuer(), &jwks(&[&published]), &expect()), Err(TokenError::UnknownKey("k2".into())));
    assert_eq!(claimed_kid(&token).as_deref(), Some("k2"), "the controller refetches the JWKS for it once");
    // The same kid as a published key, another key behind it.
    let impostor = Signer { kid: "k1", ..Signer::new("k1") };
    assert_eq!(
        verify(&impostor.sign(&claims()), &issuer(), &jwks(&[&published]), &expect()),
        Err(TokenError::BadSignature)
    );
}

#[test]
fn a_changed_claim_breaks_the_signature() {
    let key = Signer::new("k1");
    let token = key.sign(&claims());
    let mut parts: Vec<String> = token.split('.').map(str::to_owned).collect();
    parts[1] =
        URL_SAFE_NO_PAD.encode(with(|c| drop(c.insert("preferred_username".into(), json!("alice2")))).to_string());
    assert_eq!(verify(&parts.join("."), &issuer(), &jwks(&[&key]), &expect()), Err(TokenError::BadSignature));
}

#[test]
fn issuer_audience_and_times_are_judged() {
    let key = Signer::new("k1");
    let keys = jwks(&[&key]);
    let t = now().as_second();
    let check = |c: Value| verify(&key.sign(&c), &issuer(), &keys, &expect());
    assert!(matches!(
        check(with(|c| drop(c.insert("iss".into(), json!("https://evil.example"))))),
        Err(TokenError::Issuer { .. })
    ));
    assert!(matches!(
        check(with(|c| drop(c.insert("aud".into(), json!(["account", "other"]))))),
        Err(TokenError::Audience { .. })
    ));
    assert!(check(with(|c| drop(c.insert("aud".into(), json!(["account", "kubectl-stepup"]))))).is_ok());
    assert_eq!(
        check(with(|c| drop(c.insert("exp".into(), json!(t - 31))))),
        Err(TokenError::Expired(Timestamp::from_second(t - 31).unwrap()))
    );
    assert!(check(with(|c| drop(c.insert("exp".into(), json!(t - 29))))).is_ok(), "within the clock skew");
    assert!(matches!(
        check(with(|c| drop(c.insert("iat".into(), json!(t + 120))))),
        Err(TokenError::Future { claim: "iat", .. })
    ));
    assert!(matches!(
        check(with(|c| drop(c.insert("nbf".into(), json!(t + 120))))),
        Err(TokenError::Future { claim: "nbf", .. })
    ));
    assert!(matches!(
        check(with(|c| drop(c.insert("auth_time".into(), json!(t + 120))))),
        Err(TokenError::Future { claim: "auth_time", .. })
    ));
    assert_eq!(check(with(|c| drop(c.remove("auth_time")))), Err(TokenError::NoAuthTime));
    assert_eq!(check(with(|c| drop(c.remove("exp")))), Err(TokenError::MissingClaim("exp".into())));
}

#[test]
fn a_token_for_another_challenge_or_none_is_refused() {
    let key = Signer::new("k1");
    let keys = jwks(&[&key]);
    let check = |c: Value| verify(&key.sign(&c), &issuer(), &keys, &expect());
    assert_eq!(check(with(|c| drop(c.insert("nonce".into(), json!("another-challenge"))))), Err(TokenError::Nonce));
    assert_eq!(check(with(|c| drop(c.remove("nonce")))), Err(TokenError::Nonce));
    let empty = Expect { nonce: "", ..expect() };
    assert_eq!(
        verify(&key.sign(&with(|c| drop(c.insert("nonce".into(), json!(""))))), &issuer(), &keys, &empty),
        Err(TokenError::Nonce)
    );
}

#[test]
fn the_user_is_mapped_as_the_api_server_maps_it_and_must_be_the_requester() {
    let key = Signer::new("k1");
    let keys = jwks(&[&key]);
    let check = |c: Value, e: &Expect<'_>| verify(&key.sign(&c), &issuer(), &keys, e);
    assert_eq!(
        check(with(|c| drop(c.insert("preferred_username".into(), json!("bob")))), &expect()),
        Err(TokenError::OtherUser { got: "oidc:bob".into(), want: "oidc:alice".into() })
    );
    // Without the prefix the API server puts before it, the name is someone else's.
    assert!(matches!(check(claims(), &Expect { user: "alice", ..expect() }), Err(TokenError::OtherUser { .. })));
    assert_eq!(
        check(with(|c| drop(c.insert("sub".into(), json!("recreated-alice")))), &expect()),
        Err(TokenError::OtherUid)
    );
    assert_eq!(
        check(with(|c| drop(c.remove("preferred_username"))), &expect()),
        Err(TokenError::MissingClaim("preferred_username".into()))
    );
    let by_email = Issuer { username_claim: "email".into(), username_prefix: String::new(), ..issuer() };
    let unverified = with(|c| {
        c.insert("email".into(), json!("alice@example.com"));
        c.insert("email_verified".into(), json!(false));
    });
    let alice_mail = Expect { user: "alice@example.com", ..expect() };
    assert_eq!(verify(&key.sign(&unverified), &by_email, &keys, &alice_mail), Err(TokenError::EmailUnverified));
    let ruled = Issuer { required_claims: vec![("hd".into(), "example.com".into())], ..issuer() };
    assert!(matches!(verify(&key.sign(&claims()), &ruled, &keys, &expect()), Err(TokenError::ClaimRule { .. })));
}

#[test]
fn garbage_is_malformed_never_a_panic() {
    let key = Signer::new("k1");
    let keys = jwks(&[&key]);
    for token in ["", ".", "a.b", "a.b.c.d", "!!.!!.!!", &"x".repeat(MAX_TOKEN_BYTES + 1), "e30.e30.", "bnVsbA.e30.AA"]
    {
        assert_eq!(verify(token, &issuer(), &keys, &expect()), Err(TokenError::Malformed), "{token:.40}");
    }
    assert_eq!(Jwks::parse(b"[]"), Err(JwksError::Malformed));
    assert_eq!(Jwks::parse(&vec![b' '; MAX_JWKS_BYTES + 1]), Err(JwksError::TooLarge));
    let odd = json!({"keys": [{"kty": "oct", "k": "c2VjcmV0"}, {"kty": "EC", "crv": "P-256", "x": "AA", "y": "AA"}, {"kty": "RSA", "use": "enc", "n": "AQAB", "e": "AQAB"}, 7]});
    assert!(
        Jwks::parse(odd.to_string().as_bytes()).unwrap().is_empty(),
        "symmetric, short and encryption keys are left out"
    );
}

#[test]
fn the_api_servers_authentication_configuration_is_followed_or_refused_by_field() {
    let config = r#"
apiVersion: apiserver.config.k8s.io/v1
kind: AuthenticationConfiguration
jwt:
- issuer:
    url: https://idp.example/realms/stepup
    audiences: [kubectl-stepup, other]
    certificateAuthority: "PEM"
  claimValidationRules:
  - claim: hd
    requiredValue: example.com
  claimMappings:
    username: {claim: preferred_username, prefix: "oidc:"}
    groups: {claim: groups, prefix: ""}
    uid: {claim: sub}
    extra:
    - key: stepup.dev/acr
      valueExpression: "has(claims.acr) ? claims.acr : ''"
  userValidationRules:
  - expression: "!user.username.startsWith('system:')"
"#;
    let got = issuers_from_config(config).unwrap();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].issuer.audiences, ["kubectl-stepup", "other"]);
    assert_eq!(
        (got[0].issuer.username_claim.as_str(), got[0].issuer.username_prefix.as_str()),
        ("preferred_username", "oidc:")
    );
    assert_eq!(got[0].issuer.uid_claim.as_deref(), Some("sub"));
    assert_eq!(got[0].issuer.required_claims, [("hd".to_owned(), "example.com".to_owned())]);
    assert_eq!(got[0].certificate_authority.as_deref(), Some("PEM"));
    let refused = |from: &str, to: &str| issuers_from_config(&config.replace(from, to)).unwrap_err().field;
    assert_eq!(
        refused("username: {claim: preferred_username, prefix: \"oidc:\"}", "username: {expression: \"claims.sub\"}"),
        "jwt[0].claimMappings.username.expression"
    );
    assert_eq!(
        refused("uid: {claim: sub}", "uid: {expression: \"claims.sub\"}"),
        "jwt[0].claimMappings.uid.expression"
    );
    assert_eq!(
        refused("  - claim: hd\n    requiredValue: example.com", "  - expression: \"claims.hd == 'x'\""),
        "jwt[0].claimValidationRules[0]"
    );
    assert_eq!(refused("https://idp.example", "http://idp.example"), "jwt[0].issuer.url");
    assert_eq!(refused("AuthenticationConfiguration", "Other"), "kind");
    assert_eq!(refused("[kubectl-stepup, other]", "[]"), "jwt[0].issuer.audiences");
}

/// Attack: an identity-provider account named like a system identity is never stepped up for
/// one, whatever the prefix mapping says.
#[test]
fn a_system_name_from_the_identity_provider_is_refused() {
    let key = Signer::new("k1");
    let bare = Issuer { username_prefix: String::new(), ..issuer() };
    let token = key.sign(&with(|c| drop(c.insert("preferred_username".into(), json!("system:admin")))));
    let e = Expect { user: "system:admin", ..expect() };
    assert!(matches!(verify(&token, &bare, &jwks(&[&key]), &e), Err(TokenError::OtherUser { .. })));
}

#[test]
fn the_nonce_is_bound_to_the_challenge_object_not_only_its_name() {
    use crate::api::{GrantScope, Method, StepUpChallenge, StepUpChallengeSpec};
    let spec = StepUpChallengeSpec {
        user: "oidc:alice".into(),
        uid: None,
        method: Method::Totp,
        response: None,
        reason: None,
        duration: None,
        scope: GrantScope::default(),
        deadline: None,
        correlation: None,
    };
    let first = StepUpChallenge::new("alice-x", spec);
    let mut other = first.clone();
    other.metadata.name = Some("alice-y".into());
    assert_ne!(challenge_nonce(&first), challenge_nonce(&other), "another challenge asks for another token");
    let mut rescoped = first.clone();
    rescoped.spec.scope.namespaces = vec!["prod".into()];
    assert_ne!(challenge_nonce(&first), challenge_nonce(&rescoped), "a token cannot be moved to a wider scope");
    let mut later = first.clone();
    later.spec.deadline = Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(now()));
    assert_ne!(challenge_nonce(&first), challenge_nonce(&later), "nor to a later deadline");
}

#[test]
fn a_sealed_response_is_a_token_or_a_code_the_plugin_could_have_sent() {
    let code = CodeRedemption {
        code: "4c1e0b2a.8f3d-6b7e".into(),
        code_verifier: "a".repeat(43),
        redirect_uri: "http://127.0.0.1:38211/callback".into(),
    };
    assert_eq!(sign_in_response(&code.encode()), Ok(SignInResponse::Code(code.clone())));
    assert_eq!(sign_in_response("eyJhbGciOi.x.y"), Ok(SignInResponse::IdToken("eyJhbGciOi.x.y")));
    // The code and verifier never reach a log line.
    let shown = format!("{code:?}");
    assert!(!shown.contains("4c1e0b2a") && !shown.contains("aaaa"), "{shown}");
    // What an attacker might put in instead: another redirect (to collect the token elsewhere,
    // or to probe the network through the identity provider), an unverifiable verifier,
    // smuggled fields, a huge or control-laden code.
    let with = |f: &dyn Fn(&mut CodeRedemption)| {
        let mut c = code.clone();
        f(&mut c);
        c.encode()
    };
    let refused = [
        with(&|c| c.redirect_uri = "https://evil.example/callback".into()),
        with(&|c| c.redirect_uri = "http://127.0.0.1.evil.example:80/callback".into()),
        with(&|c| c.redirect_uri = "http://127.0.0.1:0/callback".into()),
        with(&|c| c.redirect_uri = "http://127.0.0.1:99999/callback".into()),
        with(&|c| c.redirect_uri = "http://127.0.0.1:8080/callback?x=1".into()),
        with(&|c| c.redirect_uri = "http://localhost:8080/callback".into()),
        with(&|c| c.code_verifier = "short".into()),
        with(&|c| c.code_verifier = "a".repeat(129)),
        with(&|c| c.code_verifier = format!("{}+", "a".repeat(42))),
        with(&|c| c.code = String::new()),
        with(&|c| c.code = "a\nb".into()),
        with(&|c| c.code = "x".repeat(MAX_CODE_BYTES + 1)),
        code.encode().replace('}', r#","clientSecret":"s"}"#),
        r#"{"code":"abc"}"#.to_owned(),
        "{not json".to_owned(),
    ];
    for text in refused {
        assert_eq!(sign_in_response(&text), Err(TokenError::BadCode), "{text}");
    }
}
