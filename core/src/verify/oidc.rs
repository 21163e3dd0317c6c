//! ID tokens from the organisation's identity provider (`OIDC` step-up), verified as the API
//! server authenticates them and bound to one challenge. Pure: the keys (JWKS) are fetched by
//! the controller and handed in.
//!
//! The rules, each attempted as an attack in the tests:
//! - only asymmetric algorithms of the allow-list ([`ALGORITHMS`]); `none` and HMAC (the
//!   "public key as HMAC secret" confusion) are refused before any key is looked at;
//! - the signature verifies with a key of the issuer's JWKS whose type fits the algorithm;
//! - `iss` is the configured issuer exactly, `aud` names one of its audiences, `exp` is not past
//!   and `iat`/`nbf`/`auth_time` not in the future (beyond the clock skew allowed);
//! - `nonce` is the challenge's own ([`challenge_nonce`]): a token obtained for another
//!   challenge, or replayed into a re-created one, is refused;
//! - the user is mapped from the claims as the API server maps it (claim and prefix) and must
//!   be the requester, with the same UID;
//! - `auth_time` is required: without it nothing says when the person last proved a factor.

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use jiff::{SignedDuration, Timestamp};
use ring::signature::{self, UnparsedPublicKey};
use serde_json::{Map, Value};

use crate::{api::StepUpChallenge, keys};

/// The signature algorithms accepted, all asymmetric (RFC 7518).
pub const ALGORITHMS: [&str; 8] = ["RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384"];

/// The longest token looked at; Keycloak's are about 1.5 KiB.
pub const MAX_TOKEN_BYTES: usize = 16 * 1024;

/// The longest JWKS document parsed.
pub const MAX_JWKS_BYTES: usize = 256 * 1024;

/// The nonce an ID token for `challenge` must carry: a digest of everything its sealed response
/// is bound to (its random name, user, scope, deadline...). The plugin asks the identity
/// provider for it before it creates the challenge; the controller compares. A copy of the
/// challenge re-created under the same name carries the same nonce: the controller's record
/// of spent tokens refuses it.
pub fn challenge_nonce(challenge: &StepUpChallenge) -> String {
    keys::binding(&["stepup.dev/oidc-nonce/v1", &super::response::challenge_binding(challenge)])
}

/// A token's id as the spent-token record names it: a digest of the issuer and `jti` (or of
/// the whole token), short enough for an object name.
pub fn spent_id(sign_in: &SignIn) -> String {
    keys::binding(&["stepup.dev/spent-id-token/v1", &sign_in.issuer, &sign_in.id])[..40].to_owned()
}

/// What the plugin seals into an `OIDC` challenge's response: the ID token it redeemed itself
/// (a public client), or the authorization code for the controller to redeem (the cluster's
/// confidential client, whose secret only the controller holds).
#[derive(Debug, PartialEq, Eq)]
pub enum SignInResponse<'a> {
    IdToken(&'a str),
    Code(CodeRedemption),
}

/// An authorization code as the controller redeems it: with the PKCE verifier that only the
/// plugin that asked for the code knows, and the loopback address the code was sent to.
#[derive(Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CodeRedemption {
    pub code: String,
    pub code_verifier: String,
    #[serde(rename = "redirectURI")]
    pub redirect_uri: String,
}

impl std::fmt::Debug for CodeRedemption {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The code and its verifier redeem a token for as long as the code lives: never logged.
        f.debug_struct("CodeRedemption").field("redirect_uri", &self.redirect_uri).finish_non_exhaustive()
    }
}

/// The longest authorization code accepted (Keycloak's are about 110 bytes).
pub const MAX_CODE_BYTES: usize = 4096;

impl CodeRedemption {
    /// The text sealed into the challenge.
    pub fn encode(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }

    /// Checks what a plugin could not have sent honestly: a code of printable ASCII, a PKCE
    /// verifier as RFC 7636 (4.1) shapes it, and the plugin's own loopback redirect
    /// (`http://127.0.0.1:<port>/callback`; the identity provider also compares it with the
    /// address the code was issued for).
    fn check(self) -> Result<Self, TokenError> {
        let code_ok = !self.code.is_empty()
            && self.code.len() <= MAX_CODE_BYTES
            && self.code.bytes().all(|b| b.is_ascii_graphic());
        let verifier_ok = (43..=128).contains(&self.code_verifier.len())
            && self.code_verifier.bytes().all(|b| b.is_ascii_alphanumeric() || b"-._~".contains(&b));
        let redirect_ok = self
            .redirect_uri
            .strip_prefix("http://127.0.0.1:")
            .and_then(|rest| rest.strip_suffix("/callback"))
            .is_some_and(|port| port.parse::<u16>().is_ok_and(|p| p != 0) && !port.starts_with('0'));
        if code_ok && verifier_ok && redirect_ok { Ok(self) } else { Err(TokenError::BadCode) }
    }
}

/// Reads an opened `OIDC` response: a JSON object is a code to redeem, anything else the ID
/// token (which [`verify`] judges).
pub fn sign_in_response(opened: &str) -> Result<SignInResponse<'_>, TokenError> {
    if !opened.trim_start().starts_with('{') {
        return Ok(SignInResponse::IdToken(opened));
    }
    let code: CodeRedemption = serde_json::from_str(opened).map_err(|_| TokenError::BadCode)?;
    Ok(SignInResponse::Code(code.check()?))
}

/// An issuer the controller trusts, and the CA its endpoints are verified with.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TrustedIssuer {
    pub issuer: Issuer,
    /// PEM; `None`: the system's roots.
    pub certificate_authority: Option<String>,
    /// Where discovery is fetched, when not `<url>/.well-known/openid-configuration`.
    pub discovery_url: Option<String>,
}

/// Why an AuthenticationConfiguration cannot be followed exactly.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {why}")]
pub struct ConfigError {
    pub field: String,
    pub why: String,
}

/// The issuers of the API server's AuthenticationConfiguration (`apiserver.config.k8s.io`), with
/// the user mapped exactly as the API server maps it. What cannot be followed exactly is an
/// error naming the field (CEL expressions for the username, the UID or claim rules), never
/// a silent approximation. `userValidationRules` judge the mapped user; stepup refuses every
/// `system:` name itself and evaluates no other rule (the README says so).
pub fn issuers_from_config(yaml: &str) -> Result<Vec<TrustedIssuer>, ConfigError> {
    let err = |field: String, why: &str| ConfigError { field, why: why.to_owned() };
    let doc: Value = serde_yaml::from_str(yaml).map_err(|e| err("(file)".into(), &e.to_string()))?;
    if doc.get("kind").and_then(Value::as_str) != Some("AuthenticationConfiguration") {
        return Err(err("kind".into(), "must be AuthenticationConfiguration"));
    }
    let jwt = doc.get("jwt").and_then(Value::as_array).filter(|j| !j.is_empty());
    let jwt = jwt.ok_or_else(|| err("jwt".into(), "names no issuer"))?;
    let mut out = Vec::new();
    for (i, entry) in jwt.iter().enumerate() {
        let at = |f: &str| format!("jwt[{i}].{f}");
        let text = |v: Option<&Value>| v.and_then(Value::as_str).map(str::to_owned);
        let issuer = entry.get("issuer").ok_or_else(|| err(at("issuer"), "is required"))?;
        let url = text(issuer.get("url")).filter(|u| u.starts_with("https://"));
        let url = url.ok_or_else(|| err(at("issuer.url"), "must be an https URL"))?;
        let audiences = strings(issuer.get("audiences"));
        if audiences.is_empty() {
            return Err(err(at("issuer.audiences"), "names no audience"));
        }
        let mappings = entry.get("claimMappings");
        let username = mappings.and_then(|m| m.get("username"));
        if username.and_then(|u| u.get("expression")).is_some() {
            return Err(err(
                at("claimMappings.username.expression"),
                "is not supported by stepup: map the username with claim and prefix",
            ));
        }
        let username_claim = text(username.and_then(|u| u.get("claim")))
            .ok_or_else(|| err(at("claimMappings.username.claim"), "is required"))?;
        let username_prefix = text(username.and_then(|u| u.get("prefix"))).unwrap_or_default();
        let uid = mappings.and_then(|m| m.get("uid"));
        if uid.and_then(|u| u.get("expression")).is_some() {
            return Err(err(at("claimMappings.uid.expression"), "is not supported by stepup: map the UID with claim"));
        }
        let mut required_claims = Vec::new();
        for (j, rule) in entry.get("claimValidationRules").and_then(Value::as_array).into_iter().flatten().enumerate() {
            match (text(rule.get("claim")), text(rule.get("requiredValue"))) {
                (Some(claim), Some(value)) => required_claims.push((claim, value)),
                _ => {
                    return Err(err(
                        at(&format!("claimValidationRules[{j}]")),
                        "only the claim/requiredValue form is supported by stepup (not expression)",
                    ));
                }
            }
        }
        out.push(TrustedIssuer {
            issuer: Issuer {
                url,
                audiences,
                username_claim,
                username_prefix,
                uid_claim: text(uid.and_then(|u| u.get("claim"))),
                required_claims,
            },
            certificate_authority: text(issuer.get("certificateAuthority")),
            discovery_url: text(issuer.get("discoveryURL")),
        });
    }
    Ok(out)
}

/// How the API server maps a token's claims to a user, for one issuer (the subset of the
/// AuthenticationConfiguration that decides who a token is).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Issuer {
    /// `iss`, exactly.
    pub url: String,
    /// Accepted `aud` values; a token must name at least one.
    pub audiences: Vec<String>,
    /// The claim holding the username, and the prefix put before it.
    pub username_claim: String,
    pub username_prefix: String,
    /// The claim holding the UID, if mapped.
    pub uid_claim: Option<String>,
    /// Claims that must hold exactly this string (`claimValidationRules` of the claim form).
    pub required_claims: Vec<(String, String)>,
}

/// A public key of the issuer's JWKS.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Jwk {
    kid: Option<String>,
    alg: Option<String>,
    key: PublicKey,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum PublicKey {
    Rsa {
        n: Vec<u8>,
        e: Vec<u8>,
    },
    /// The uncompressed point (0x04 ‖ x ‖ y).
    P256(Vec<u8>),
    P384(Vec<u8>),
}

/// The issuer's signing keys. Keys of other types, or for encryption, are left out.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Jwks {
    keys: Vec<Jwk>,
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum JwksError {
    #[error("the JWKS is larger than {MAX_JWKS_BYTES} bytes")]
    TooLarge,
    #[error("the JWKS is not a JSON object with a keys array")]
    Malformed,
}

impl Jwks {
    pub fn parse(bytes: &[u8]) -> Result<Self, JwksError> {
        if bytes.len() > MAX_JWKS_BYTES {
            return Err(JwksError::TooLarge);
        }
        let doc: Value = serde_json::from_slice(bytes).map_err(|_| JwksError::Malformed)?;
        let keys = doc.get("keys").and_then(Value::as_array).ok_or(JwksError::Malformed)?;
        Ok(Self { keys: keys.iter().filter_map(Jwk::parse).collect() })
    }

    pub fn len(&self) -> usize {
        self.keys.len()
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// Whether a key named `kid` is here.
    pub fn has_kid(&self, kid: &str) -> bool {
        self.keys.iter().any(|k| k.kid.as_deref() == Some(kid))
    }
}

fn b64(value: Option<&Value>) -> Option<Vec<u8>> {
    URL_SAFE_NO_PAD.decode(value?.as_str()?).ok()
}

impl Jwk {
    fn parse(v: &Value) -> Option<Self> {
        if v.get("use").and_then(Value::as_str).is_some_and(|u| u != "sig") {
            return None;
        }
        let key = match v.get("kty")?.as_str()? {
            "RSA" => PublicKey::Rsa { n: b64(v.get("n"))?, e: b64(v.get("e"))? },
            "EC" => {
                let (x, y) = (b64(v.get("x"))?, b64(v.get("y"))?);
                let (len, wrap): (usize, fn(Vec<u8>) -> PublicKey) = match v.get("crv")?.as_str()? {
                    "P-256" => (32, PublicKey::P256),
                    "P-384" => (48, PublicKey::P384),
                    _ => return None,
                };
                if x.len() != len || y.len() != len {
                    return None;
                }
                let mut point = vec![4u8];
                point.extend(x);
                point.extend(y);
                wrap(point)
            }
            _ => return None,
        };
        Some(Self {
            kid: v.get("kid").and_then(Value::as_str).map(str::to_owned),
            alg: v.get("alg").and_then(Value::as_str).map(str::to_owned),
            key,
        })
    }

    /// Whether this key can verify `alg`, and with what.
    fn verify(&self, alg: &str, message: &[u8], sig: &[u8]) -> Option<bool> {
        if self.alg.as_deref().is_some_and(|a| a != alg) {
            return None;
        }
        let ok = match (&self.key, alg) {
            (PublicKey::Rsa { n, e }, _) => {
                let params: &signature::RsaParameters = match alg {
                    "RS256" => &signature::RSA_PKCS1_2048_8192_SHA256,
                    "RS384" => &signature::RSA_PKCS1_2048_8192_SHA384,
                    "RS512" => &signature::RSA_PKCS1_2048_8192_SHA512,
                    "PS256" => &signature::RSA_PSS_2048_8192_SHA256,
                    "PS384" => &signature::RSA_PSS_2048_8192_SHA384,
                    "PS512" => &signature::RSA_PSS_2048_8192_SHA512,
                    _ => return None,
                };
                signature::RsaPublicKeyComponents { n, e }.verify(params, message, sig).is_ok()
            }
            (PublicKey::P256(point), "ES256") => {
                UnparsedPublicKey::new(&signature::ECDSA_P256_SHA256_FIXED, point).verify(message, sig).is_ok()
            }
            (PublicKey::P384(point), "ES384") => {
                UnparsedPublicKey::new(&signature::ECDSA_P384_SHA384_FIXED, point).verify(message, sig).is_ok()
            }
            _ => return None,
        };
        Some(ok)
    }
}

/// Who the token must be for, and when it is judged.
#[derive(Clone, Copy, Debug)]
pub struct Expect<'a> {
    /// The requester's username.
    pub user: &'a str,
    /// The requester's UID, when the API server gave one.
    pub uid: Option<&'a str>,
    /// [`challenge_nonce`] of the challenge the token came in.
    pub nonce: &'a str,
    pub now: Timestamp,
    pub skew: SignedDuration,
}

/// A verified ID token: who signed in, when, and how.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SignIn {
    pub issuer: String,
    pub username: String,
    pub uid: Option<String>,
    /// The authentication context class (RFC 9470), if the token names one.
    pub acr: Option<String>,
    /// The authentication methods (RFC 8176) the token names.
    pub amr: Vec<String>,
    /// When the person last authenticated at the identity provider.
    pub auth_time: Timestamp,
    pub expires_at: Timestamp,
    /// `jti`, or the token's digest when it has none: what the records name it by.
    pub id: String,
}

/// Why an ID token was refused: said to the user in the challenge's status.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("the ID token is not a signed JWT")]
    Malformed,
    #[error("the ID token is signed with {0:?}, which is not accepted (accepted: {accepted})", accepted = ALGORITHMS.join(", "))]
    Algorithm(String),
    #[error("the ID token was signed by a key the identity provider does not publish (kid {0:?})")]
    UnknownKey(String),
    #[error("the ID token's signature does not verify")]
    BadSignature,
    #[error("the ID token was issued by {got:?}, not the trusted identity provider {want:?}")]
    Issuer { got: String, want: String },
    #[error("the ID token is for the audience {got:?}, none of the clients trusted for step-up {want:?}")]
    Audience { got: Vec<String>, want: Vec<String> },
    #[error("the ID token expired at {0}: sign in again")]
    Expired(Timestamp),
    #[error("the ID token's {claim} ({at}) lies in the future: a clock is off")]
    Future { claim: &'static str, at: Timestamp },
    #[error(
        "the ID token was obtained for another challenge (its nonce differs): a copied or replayed token is refused"
    )]
    Nonce,
    #[error(
        "the ID token has no auth_time, so nothing says when you last signed in: the identity provider must include it"
    )]
    NoAuthTime,
    #[error("the ID token lacks the claim {0:?} the API server maps users from")]
    MissingClaim(String),
    #[error("the ID token's claim {claim:?} is not {want:?}")]
    ClaimRule { claim: String, want: String },
    #[error("the ID token's email is not verified")]
    EmailUnverified,
    #[error("the ID token is {got:?}'s, and this challenge is {want:?}'s")]
    OtherUser { got: String, want: String },
    #[error("the ID token is for an account with another UID than the requester's")]
    OtherUid,
    #[error(
        "the sign-in's authorization code is not one the plugin sends (a code, its PKCE verifier and a loopback redirect)"
    )]
    BadCode,
}

impl TokenError {
    /// A low-cardinality label for metrics and audit lines.
    pub const fn label(&self) -> &'static str {
        match self {
            TokenError::Malformed => "malformed",
            TokenError::Algorithm(_) => "algorithm",
            TokenError::UnknownKey(_) => "unknown_key",
            TokenError::BadSignature => "bad_signature",
            TokenError::Issuer { .. } => "wrong_issuer",
            TokenError::Audience { .. } => "wrong_audience",
            TokenError::Expired(_) => "expired_token",
            TokenError::Future { .. } => "future_token",
            TokenError::Nonce => "wrong_nonce",
            TokenError::NoAuthTime => "no_auth_time",
            TokenError::MissingClaim(_) | TokenError::ClaimRule { .. } | TokenError::EmailUnverified => "claims",
            TokenError::OtherUser { .. } | TokenError::OtherUid => "other_user",
            TokenError::BadCode => "bad_code",
        }
    }

    /// The condition reason written on the challenge.
    pub const fn reason(&self) -> &'static str {
        match self {
            TokenError::Malformed => "TokenMalformed",
            TokenError::Algorithm(_) => "TokenAlgorithm",
            TokenError::UnknownKey(_) => "TokenUnknownKey",
            TokenError::BadSignature => "TokenSignature",
            TokenError::Issuer { .. } => "TokenIssuer",
            TokenError::Audience { .. } => "TokenAudience",
            TokenError::Expired(_) => "TokenExpired",
            TokenError::Future { .. } => "TokenFromFuture",
            TokenError::Nonce => "TokenNonce",
            TokenError::NoAuthTime => "TokenNoAuthTime",
            TokenError::MissingClaim(_) | TokenError::ClaimRule { .. } | TokenError::EmailUnverified => "TokenClaims",
            TokenError::OtherUser { .. } | TokenError::OtherUid => "TokenOtherUser",
            TokenError::BadCode => "SignInCodeMalformed",
        }
    }
}

/// A token's parts, split and decoded, nothing verified.
struct Parts {
    alg: String,
    kid: Option<String>,
    claims: Map<String, Value>,
    signed: Vec<u8>,
    signature: Vec<u8>,
}

fn split(token: &str) -> Result<Parts, TokenError> {
    let token = token.trim();
    if token.len() > MAX_TOKEN_BYTES {
        return Err(TokenError::Malformed);
    }
    let mut it = token.split('.');
    let (Some(h), Some(c), Some(s), None) = (it.next(), it.next(), it.next(), it.next()) else {
        return Err(TokenError::Malformed);
    };
    let decode = |part: &str| URL_SAFE_NO_PAD.decode(part).map_err(|_| TokenError::Malformed);
    let header: Map<String, Value> = serde_json::from_slice(&decode(h)?).map_err(|_| TokenError::Malformed)?;
    let claims: Map<String, Value> = serde_json::from_slice(&decode(c)?).map_err(|_| TokenError::Malformed)?;
    // A nested or encrypted token is not an ID token this verifies.
    if header.contains_key("crit") || header.get("typ").and_then(Value::as_str).is_some_and(|t| t.contains("+jwt")) {
        return Err(TokenError::Malformed);
    }
    let alg = header.get("alg").and_then(Value::as_str).ok_or(TokenError::Malformed)?.to_owned();
    Ok(Parts {
        alg,
        kid: header.get("kid").and_then(Value::as_str).map(str::to_owned),
        claims,
        signed: format!("{h}.{c}").into_bytes(),
        signature: decode(s)?,
    })
}

/// The `iss` a token claims, unverified: to pick the issuer whose keys judge it.
pub fn claimed_issuer(token: &str) -> Option<String> {
    split(token).ok()?.claims.get("iss")?.as_str().map(str::to_owned)
}

/// The `kid` a token's header names, unverified.
pub fn claimed_kid(token: &str) -> Option<String> {
    split(token).ok()?.kid
}

fn time(claims: &Map<String, Value>, name: &str) -> Option<Timestamp> {
    let v = claims.get(name)?;
    let secs = v.as_i64().or_else(|| v.as_f64().filter(|f| f.is_finite()).map(|f| f as i64))?;
    Timestamp::from_second(secs).ok()
}

fn strings(v: Option<&Value>) -> Vec<String> {
    match v {
        Some(Value::String(s)) => vec![s.clone()],
        Some(Value::Array(a)) => a.iter().filter_map(Value::as_str).map(str::to_owned).collect(),
        _ => Vec::new(),
    }
}

/// Verifies `token` for `expect` with the issuer's keys. The checks run in the order the
/// module names them; the first that fails is the answer.
pub fn verify(token: &str, issuer: &Issuer, jwks: &Jwks, expect: &Expect<'_>) -> Result<SignIn, TokenError> {
    let parts = split(token)?;
    if !ALGORITHMS.contains(&parts.alg.as_str()) {
        return Err(TokenError::Algorithm(parts.alg));
    }
    let candidates: Vec<&Jwk> = match &parts.kid {
        Some(kid) => jwks.keys.iter().filter(|k| k.kid.as_deref() == Some(kid.as_str())).collect(),
        None => jwks.keys.iter().collect(),
    };
    let verdicts: Vec<bool> =
        candidates.iter().filter_map(|k| k.verify(&parts.alg, &parts.signed, &parts.signature)).collect();
    if verdicts.is_empty() {
        return Err(TokenError::UnknownKey(parts.kid.unwrap_or_default()));
    }
    if !verdicts.contains(&true) {
        return Err(TokenError::BadSignature);
    }
    let claims = &parts.claims;
    let iss = claims.get("iss").and_then(Value::as_str).unwrap_or("");
    if iss != issuer.url {
        return Err(TokenError::Issuer { got: iss.to_owned(), want: issuer.url.clone() });
    }
    let aud = strings(claims.get("aud"));
    if !aud.iter().any(|a| issuer.audiences.contains(a)) {
        return Err(TokenError::Audience { got: aud, want: issuer.audiences.clone() });
    }
    let (now, skew) = (expect.now, expect.skew);
    let exp = time(claims, "exp").ok_or_else(|| TokenError::MissingClaim("exp".into()))?;
    if exp + skew <= now {
        return Err(TokenError::Expired(exp));
    }
    let iat = time(claims, "iat").ok_or_else(|| TokenError::MissingClaim("iat".into()))?;
    for (claim, at) in [("iat", Some(iat)), ("nbf", time(claims, "nbf"))] {
        if let Some(at) = at.filter(|at| *at > now + skew) {
            return Err(TokenError::Future { claim, at });
        }
    }
    let nonce = claims.get("nonce").and_then(Value::as_str).unwrap_or("");
    if !bool::from(subtle_eq(nonce.as_bytes(), expect.nonce.as_bytes())) || expect.nonce.is_empty() {
        return Err(TokenError::Nonce);
    }
    let auth_time = time(claims, "auth_time").ok_or(TokenError::NoAuthTime)?;
    if auth_time > now + skew {
        return Err(TokenError::Future { claim: "auth_time", at: auth_time });
    }
    for (claim, want) in &issuer.required_claims {
        if claims.get(claim).and_then(Value::as_str) != Some(want.as_str()) {
            return Err(TokenError::ClaimRule { claim: claim.clone(), want: want.clone() });
        }
    }
    let name = claims
        .get(&issuer.username_claim)
        .and_then(Value::as_str)
        .filter(|n| !n.is_empty())
        .ok_or_else(|| TokenError::MissingClaim(issuer.username_claim.clone()))?;
    // The API server's rule: a username taken from `email` needs the email verified when the
    // token says either way.
    if issuer.username_claim == "email" && claims.get("email_verified").is_some_and(|v| v != &Value::Bool(true)) {
        return Err(TokenError::EmailUnverified);
    }
    let username = format!("{}{name}", issuer.username_prefix);
    if username.starts_with("system:") || username != expect.user {
        return Err(TokenError::OtherUser { got: username, want: expect.user.to_owned() });
    }
    let uid = match &issuer.uid_claim {
        Some(claim) => Some(
            claims
                .get(claim)
                .and_then(Value::as_str)
                .filter(|u| !u.is_empty())
                .ok_or_else(|| TokenError::MissingClaim(claim.clone()))?
                .to_owned(),
        ),
        None => None,
    };
    if let Some(want) = expect.uid.filter(|u| !u.is_empty())
        && uid.as_deref() != Some(want)
    {
        return Err(TokenError::OtherUid);
    }
    let id = match claims.get("jti").and_then(Value::as_str).filter(|j| !j.is_empty() && j.len() <= 128) {
        Some(jti) => jti.to_owned(),
        None => keys::binding(&["stepup.dev/id-token/v1", token.trim()])[..32].to_owned(),
    };
    Ok(SignIn {
        issuer: iss.to_owned(),
        username,
        uid,
        acr: claims.get("acr").and_then(Value::as_str).map(str::to_owned),
        amr: strings(claims.get("amr")),
        auth_time,
        expires_at: exp,
        id,
    })
}

fn subtle_eq(a: &[u8], b: &[u8]) -> subtle::Choice {
    use subtle::ConstantTimeEq;
    if a.len() != b.len() {
        return subtle::Choice::from(0);
    }
    a.ct_eq(b)
}

#[cfg(test)]
mod tests;
