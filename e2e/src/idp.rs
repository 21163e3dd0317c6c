//! The e2e identity provider (Keycloak, started by `e2e/scripts/idp.sh`): people sign in through
//! its own login pages as a browser would (authorization code with PKCE on a loopback redirect,
//! password form, then the OTP form when the level asked for needs it), driven with curl, which
//! keeps Keycloak's `Secure` session cookies over TLS. No grant type that skips a form is used.

use std::process::Command;

use anyhow::{Context, Result, bail, ensure};
use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use jiff::Timestamp;
use kube::{
    Client, Config,
    config::{KubeConfigOptions, Kubeconfig},
};
use serde_json::Value;
use sha2::{Digest, Sha256};
use stepup_core::verify::totp;

use crate::Env;

/// The assurance a sign-in asks for (`acr_values`), as the realm maps it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Level {
    /// acr `1`: the password form only.
    Password,
    /// acr `2`: the password form and the OTP form.
    PasswordAndOtp,
}

impl Level {
    fn acr(self) -> &'static str {
        match self {
            Level::Password => "1",
            Level::PasswordAndOtp => "2",
        }
    }
}

/// The realm's users and where Keycloak answers.
#[derive(Clone)]
pub struct Idp {
    pub issuer: String,
    pub client_id: String,
    ca_file: String,
    admin_password_file: String,
    realm: Value,
    /// Where curl keeps this helper's cookie jars.
    scratch: std::path::PathBuf,
}

/// What the token endpoint returned.
pub struct Tokens {
    pub id_token: String,
    pub raw: Value,
}

impl Tokens {
    /// The ID token's claims (its payload, not verified: the API server verifies it).
    pub fn claims(&self) -> Value {
        let payload = self.id_token.split('.').nth(1).expect("a JWT has a payload");
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).expect("base64url payload")).expect("JSON claims")
    }
}

impl Idp {
    pub fn new(env: &Env) -> Self {
        let realm_file = env.var("STEPUP_IDP_REALM_FILE");
        let realm = serde_json::from_str(&std::fs::read_to_string(realm_file).expect("the realm file"))
            .expect("the realm file is JSON");
        let scratch = std::path::PathBuf::from(env.var("STEPUP_E2E_DIR")).join("idp").join("clients");
        std::fs::create_dir_all(&scratch).expect("a scratch directory");
        Self {
            issuer: env.var("STEPUP_IDP_ISSUER").to_owned(),
            client_id: env.var("STEPUP_IDP_CLIENT_ID").to_owned(),
            ca_file: env.var("STEPUP_IDP_CA_FILE").to_owned(),
            admin_password_file: env.var("STEPUP_IDP_ADMIN_PASSWORD_FILE").to_owned(),
            realm,
            scratch,
        }
    }

    fn user(&self, name: &str) -> &Value {
        self.realm["users"]
            .as_array()
            .and_then(|users| users.iter().find(|u| u["username"] == name))
            .unwrap_or_else(|| panic!("{name} is not in the e2e realm"))
    }

    fn credential(&self, user: &str, kind: &str) -> &Value {
        self.user(user)["credentials"]
            .as_array()
            .and_then(|c| c.iter().find(|c| c["type"] == kind))
            .unwrap_or_else(|| panic!("{user} has no {kind} credential in the e2e realm"))
    }

    pub fn password(&self, user: &str) -> String {
        self.credential(user, "password")["value"].as_str().expect("a password").to_owned()
    }

    /// The OTP code the user's authenticator shows now. Keycloak keys its TOTP with the bytes of
    /// the credential's secret string.
    pub fn otp_code(&self, user: &str) -> String {
        let secret: Value = serde_json::from_str(
            self.credential(user, "otp")["secretData"].as_str().expect("secretData is a JSON string"),
        )
        .expect("secretData parses");
        totp::code_at(secret["value"].as_str().expect("an OTP secret").as_bytes(), Timestamp::now())
    }

    /// One curl request with this sign-in's cookie jar; returns the response headers and body.
    fn curl(&self, jar: &std::path::Path, args: &[&str]) -> Result<(String, String)> {
        let headers = jar.with_extension("headers");
        let out = Command::new("curl")
            .args(["-sS", "--noproxy", "*", "--max-time", "30", "--cacert", &self.ca_file])
            .arg("-c")
            .arg(jar)
            .arg("-b")
            .arg(jar)
            .arg("-D")
            .arg(&headers)
            .args(args)
            .output()
            .context("curl runs")?;
        ensure!(out.status.success(), "curl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        let head = std::fs::read_to_string(&headers).unwrap_or_default();
        Ok((head, String::from_utf8_lossy(&out.stdout).into_owned()))
    }

    /// Signs `user` in with their password (and OTP code for [`Level::PasswordAndOtp`]) through
    /// Keycloak's login pages, and trades the code for tokens, as `kubectl stepup` will.
    pub fn sign_in(&self, user: &str, level: Level) -> Result<Tokens> {
        self.sign_in_with(user, &self.password(user), level, &random_hex(8))
    }

    /// A sign-in for one challenge: the ID token carries `nonce` (the challenge's).
    pub fn sign_in_for(&self, user: &str, level: Level, nonce: &str) -> Result<Tokens> {
        self.sign_in_with(user, &self.password(user), level, nonce)
    }

    /// A password-only sign-in with the password given (a wrong one gets Keycloak's error).
    pub fn sign_in_with_password(&self, user: &str, password: &str) -> Result<Tokens> {
        self.sign_in_with(user, password, Level::Password, &random_hex(8))
    }

    fn sign_in_with(&self, user: &str, password: &str, level: Level, nonce: &str) -> Result<Tokens> {
        let jar = self.scratch.join(format!("{user}-{}.jar", std::process::id()));
        let _ = std::fs::remove_file(&jar);
        let (code, verifier, redirect) = self.authorize(&jar, user, password, level, nonce)?;
        let token_url = format!("{}/protocol/openid-connect/token", self.issuer);
        let (_, body) = self.curl(
            &jar,
            &[
                "-d",
                "grant_type=authorization_code",
                "-d",
                &format!("client_id={}", self.client_id),
                "--data-urlencode",
                &format!("code={code}"),
                "--data-urlencode",
                &format!("redirect_uri={redirect}"),
                "-d",
                &format!("code_verifier={verifier}"),
                &token_url,
            ],
        )?;
        let _ = std::fs::remove_file(&jar);
        let raw: Value = serde_json::from_str(&body).with_context(|| format!("token response: {body}"))?;
        let Some(id_token) = raw["id_token"].as_str().map(str::to_owned) else { bail!("no id_token: {body}") };
        let tokens = Tokens { id_token, raw };
        ensure!(tokens.claims()["nonce"] == nonce, "the ID token carries another nonce");
        Ok(tokens)
    }

    /// A sign-in's authorization code at `client_id`, not redeemed: what the plugin seals
    /// for the cluster's confidential client (the controller redeems it with the secret).
    pub fn code_at_client(
        &self,
        client_id: &str,
        user: &str,
        level: Level,
        nonce: &str,
    ) -> Result<stepup_core::verify::oidc::CodeRedemption> {
        let other = Self { client_id: client_id.to_owned(), ..self.clone() };
        let jar = self.scratch.join(format!("{user}-{}-code.jar", std::process::id()));
        let _ = std::fs::remove_file(&jar);
        let (code, code_verifier, redirect) = other.authorize(&jar, user, &other.password(user), level, nonce)?;
        let _ = std::fs::remove_file(&jar);
        Ok(stepup_core::verify::oidc::CodeRedemption { code, code_verifier, redirect_uri: redirect.to_owned() })
    }

    /// The login pages with PKCE up to the redirect: the code, the verifier and the redirect.
    fn authorize(
        &self,
        jar: &std::path::Path,
        user: &str,
        password: &str,
        level: Level,
        nonce: &str,
    ) -> Result<(String, String, &'static str)> {
        let verifier = random_hex(32);
        let challenge = URL_SAFE_NO_PAD.encode(Sha256::digest(verifier.as_bytes()));
        let state = random_hex(8);
        let redirect = "http://127.0.0.1:38000/callback";
        let auth = format!(
            "{}/protocol/openid-connect/auth?client_id={}&response_type=code&scope=openid&redirect_uri={}\
             &code_challenge={challenge}&code_challenge_method=S256&state={state}&nonce={nonce}&acr_values={}",
            self.issuer,
            self.client_id,
            "http%3A%2F%2F127.0.0.1%3A38000%2Fcallback",
            level.acr()
        );
        let location = self.login(jar, &auth, user, password, level)?;
        ensure!(location.starts_with(redirect), "redirected elsewhere: {location}");
        ensure!(query_value(&location, "state").as_deref() == Some(state.as_str()), "state changed: {location}");
        let code = query_value(&location, "code").with_context(|| format!("no code in {location}"))?;
        Ok((code, verifier, redirect))
    }

    /// Completes a sign-in someone else started (`kubectl stepup`, which printed `auth_url`):
    /// the login pages as a browser would, then the redirect to the starter's loopback address.
    /// Returns the page the starter answered the browser with.
    pub fn complete_sign_in(&self, auth_url: &str, user: &str, level: Level) -> Result<String> {
        let jar = self.scratch.join(format!("{user}-{}-browser.jar", std::process::id()));
        let _ = std::fs::remove_file(&jar);
        let location = self.login(&jar, auth_url, user, &self.password(user), level)?;
        ensure!(location.starts_with("http://127.0.0.1:"), "redirected elsewhere: {location}");
        let (_, page) = self.curl(&jar, &[&location])?;
        let _ = std::fs::remove_file(&jar);
        Ok(page)
    }

    /// Completes a device sign-in someone else started: the verification address with its
    /// code, the password and OTP forms (the device client demands both), then the consent
    /// Keycloak asks for every device grant. Returns the last page ("Device Login Successful").
    pub fn complete_device_sign_in(&self, verification_url: &str, user: &str) -> Result<String> {
        let jar = self.scratch.join(format!("{user}-{}-device.jar", std::process::id()));
        let _ = std::fs::remove_file(&jar);
        let consent = self.login(&jar, verification_url, user, &self.password(user), Level::PasswordAndOtp)?;
        let (_, page) = self.curl(&jar, &[&consent])?;
        let action = page
            .split("action=\"")
            .skip(1)
            .filter_map(|rest| rest.split('"').next())
            .find(|a| a.contains("/login-actions/consent"))
            .map(|a| a.replace("&amp;", "&"))
            .with_context(|| format!("no consent form: {}", excerpt(&page)))?;
        let code = page
            .split_once("name=\"code\" value=\"")
            .and_then(|(_, rest)| rest.split_once('"'))
            .map(|(code, _)| code.to_owned())
            .context("the consent form's code")?;
        let (head, _) = self.curl(
            &jar,
            &["--data-urlencode", &format!("code={code}"), "-d", "accept=Yes", &format!("{}{}", self.base(), action)],
        )?;
        let status = head
            .lines()
            .find_map(|l| l.strip_prefix("location: ").or_else(|| l.strip_prefix("Location: ")))
            .map(|l| l.trim().to_owned())
            .context("no redirect after the consent")?;
        let (_, page) = self.curl(&jar, &[&status])?;
        let _ = std::fs::remove_file(&jar);
        Ok(page)
    }

    /// Keycloak's login pages from `auth_url` (a redirect to them is followed): the password
    /// form, then the OTP form when the level needs it. Returns where Keycloak redirects the
    /// browser to.
    fn login(&self, jar: &std::path::Path, auth_url: &str, user: &str, password: &str, level: Level) -> Result<String> {
        let (_, page) = self.curl(jar, &["-L", auth_url])?;
        let action = form_action(&page, "kc-form-login")
            .with_context(|| format!("the login page's form: {}", excerpt(&page)))?;
        let (mut head, mut page) = self.curl(
            jar,
            &[
                "--data-urlencode",
                &format!("username={user}"),
                "--data-urlencode",
                &format!("password={password}"),
                &action,
            ],
        )?;
        if level == Level::PasswordAndOtp {
            let action = form_action(&page, "kc-otp-login-form")
                .with_context(|| format!("the OTP form after the password: {}", excerpt(&page)))?;
            (head, page) = self.curl(jar, &["--data-urlencode", &format!("otp={}", self.otp_code(user)), &action])?;
        }
        head.lines()
            .find_map(|l| l.strip_prefix("location: ").or_else(|| l.strip_prefix("Location: ")))
            .map(|l| l.trim().to_owned())
            .with_context(|| format!("no redirect back to the client: {}", excerpt(&page)))
    }
}

/// Keycloak's admin REST API, for a scenario's setup (another client, a new signing key).
impl Idp {
    /// Keycloak's base URL (the issuer without `/realms/<realm>`).
    fn base(&self) -> &str {
        self.issuer.split("/realms/").next().unwrap_or(&self.issuer)
    }

    fn admin_token(&self) -> Result<String> {
        let password = std::fs::read_to_string(&self.admin_password_file).context("the admin password file")?;
        let jar = self.scratch.join("admin.jar");
        let (_, body) = self.curl(
            &jar,
            &[
                "-d",
                "grant_type=password",
                "-d",
                "client_id=admin-cli",
                "-d",
                "username=admin",
                "--data-urlencode",
                &format!("password={}", password.trim()),
                &format!("{}/realms/master/protocol/openid-connect/token", self.base()),
            ],
        )?;
        let raw: Value = serde_json::from_str(&body).with_context(|| format!("admin token: {body}"))?;
        raw["access_token"].as_str().map(str::to_owned).with_context(|| format!("admin token: {body}"))
    }

    /// One admin API call on the `stepup` realm (`path` below `/admin/realms/stepup`); returns
    /// the response's headers and body.
    pub fn admin(&self, method: &str, path: &str, body: Option<&Value>) -> Result<(String, String)> {
        let token = self.admin_token()?;
        let url = format!("{}/admin/realms/stepup{path}", self.base());
        let jar = self.scratch.join("admin.jar");
        let auth = format!("Authorization: Bearer {token}");
        let mut args = vec!["-X", method, "-H", &auth];
        let json = body.map(|b| b.to_string());
        if let Some(json) = &json {
            args.extend(["-H", "Content-Type: application/json", "--data-binary", json]);
        }
        args.push(&url);
        self.curl(&jar, &args)
    }

    /// Creates a public client `client_id` (authorization code with PKCE on loopback), if missing.
    pub fn ensure_client(&self, client_id: &str) -> Result<()> {
        let (_, body) = self.admin("GET", &format!("/clients?clientId={client_id}"), None)?;
        if body.contains(&format!("\"clientId\":\"{client_id}\"")) {
            return Ok(());
        }
        let client = serde_json::json!({
            "clientId": client_id, "publicClient": true, "standardFlowEnabled": true,
            "redirectUris": ["http://127.0.0.1/*"], "attributes": {"pkce.code.challenge.method": "S256"},
        });
        let (head, body) = self.admin("POST", "/clients", Some(&client))?;
        ensure!(
            head.starts_with("HTTP/1.1 201") || head.starts_with("HTTP/2 201"),
            "creating {client_id}: {head}{body}"
        );
        Ok(())
    }

    /// Adds a generated RSA signing key above every other (a rotation: new tokens carry its
    /// `kid`); returns its component id, for [`Self::remove_key`].
    pub fn rotate_key(&self) -> Result<String> {
        let (_, realm) = self.admin("GET", "", None)?;
        let realm: Value = serde_json::from_str(&realm).context("the realm")?;
        let name = format!("e2e-rotated-{}", random_hex(4));
        let component = serde_json::json!({
            "name": name, "providerId": "rsa-generated", "providerType": "org.keycloak.keys.KeyProvider",
            "parentId": realm["id"], "config": {"priority": ["1000"], "keySize": ["2048"], "active": ["true"], "enabled": ["true"]},
        });
        let (head, body) = self.admin("POST", "/components", Some(&component))?;
        ensure!(head.contains(" 201"), "adding a key: {head}{body}");
        let location = head
            .lines()
            .find_map(|l| l.strip_prefix("location: ").or_else(|| l.strip_prefix("Location: ")))
            .context("the new component's location")?;
        Ok(location.trim().rsplit('/').next().unwrap_or_default().to_owned())
    }

    pub fn remove_key(&self, component: &str) -> Result<()> {
        let (head, body) = self.admin("DELETE", &format!("/components/{component}"), None)?;
        ensure!(head.contains(" 204"), "removing key {component}: {head}{body}");
        Ok(())
    }

    /// Sets how long the tokens of client `client_id` live (seconds; `None`: the realm's
    /// default again).
    pub fn set_token_lifespan(&self, client_id: &str, seconds: Option<u32>) -> Result<()> {
        let (_, body) = self.admin("GET", &format!("/clients?clientId={client_id}"), None)?;
        let clients: Value = serde_json::from_str(&body).with_context(|| format!("clients: {body}"))?;
        let id = clients[0]["id"].as_str().with_context(|| format!("no client {client_id}: {body}"))?.to_owned();
        let lifespan = seconds.map(|s| s.to_string()).unwrap_or_default();
        let update = serde_json::json!({"attributes": {"access.token.lifespan": lifespan}});
        let (head, body) = self.admin("PUT", &format!("/clients/{id}"), Some(&update))?;
        ensure!(head.contains(" 204"), "updating {client_id}: {head}{body}");
        Ok(())
    }

    /// A sign-in through another client of the realm (its tokens are for that audience).
    pub fn sign_in_at_client(&self, client_id: &str, user: &str, level: Level, nonce: &str) -> Result<Tokens> {
        let other = Self { client_id: client_id.to_owned(), ..self.clone() };
        other.sign_in_with(user, &other.password(user), level, nonce)
    }
}

impl Env {
    /// A kubeconfig file (named `name`, in the IdP's scratch directory) whose user presents
    /// `token` (an IdP's ID token) to the e2e API server, as kubelogin's would.
    pub fn kubeconfig_with_token(&self, name: &str, token: &str) -> std::path::PathBuf {
        let admin = std::fs::read_to_string(self.kubeconfig("admin")).expect("readable kubeconfig");
        let mut value: serde_yaml::Value = serde_yaml::from_str(&admin).expect("kubeconfig YAML");
        for user in value["users"].as_sequence_mut().expect("users") {
            user["user"] = serde_yaml::from_str(&format!("{{token: {token}}}")).expect("a token entry");
        }
        let dir = std::path::PathBuf::from(self.var("STEPUP_E2E_DIR")).join("idp").join("clients");
        std::fs::create_dir_all(&dir).expect("a scratch directory");
        let path = dir.join(format!("{name}.kubeconfig"));
        std::fs::write(&path, serde_yaml::to_string(&value).expect("kubeconfig serializes")).expect("written");
        path
    }

    /// A client of the e2e API server that presents `token` (an IdP's ID token) as its bearer.
    pub async fn client_with_token(&self, token: &str) -> Client {
        let admin = Kubeconfig::read_from(self.kubeconfig("admin")).expect("readable kubeconfig");
        let mut value = serde_json::to_value(&admin).expect("kubeconfig serializes");
        for user in value["users"].as_array_mut().expect("users") {
            user["user"] = serde_json::json!({ "token": token });
        }
        let kubeconfig: Kubeconfig = serde_json::from_value(value).expect("kubeconfig deserializes");
        let config =
            Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default()).await.expect("kubeconfig");
        Client::try_from(config).expect("client")
    }
}

/// The `action` of the form with this id (HTML-unescaped).
fn form_action(page: &str, id: &str) -> Option<String> {
    let at = page.find(&format!("id=\"{id}\""))?;
    let tag_start = page[..at].rfind("<form")?;
    let tag = &page[tag_start..tag_start + page[tag_start..].find('>')?];
    let (_, rest) = tag.split_once("action=\"")?;
    let (action, _) = rest.split_once('"')?;
    Some(action.replace("&amp;", "&"))
}

fn query_value(url: &str, key: &str) -> Option<String> {
    let (_, query) = url.split_once('?')?;
    query.split('&').find_map(|kv| kv.strip_prefix(&format!("{key}="))).map(|v| v.replace("%2F", "/"))
}

/// What a page says to the person, short: Keycloak's field error, feedback line or title.
fn excerpt(page: &str) -> String {
    for marker in ["id=\"input-error", "kc-feedback-text", "<title"] {
        if let Some((_, rest)) = page.split_once(marker)
            && let Some((_, text)) = rest.split_once('>')
        {
            let text = text.split('<').next().unwrap_or_default().trim();
            if !text.is_empty() {
                return text.chars().take(200).collect();
            }
        }
    }
    page.chars().take(200).collect()
}

fn random_hex(bytes: usize) -> String {
    use std::io::Read;
    let mut buffer = vec![0u8; bytes];
    std::fs::File::open("/dev/urandom").and_then(|mut f| f.read_exact(&mut buffer)).expect("randomness");
    buffer.iter().map(|b| format!("{b:02x}")).collect()
}
