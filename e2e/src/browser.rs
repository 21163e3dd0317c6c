//! A real browser for the plugin's security-key pages: Debian's headless Chromium driven
//! through chromedriver (W3C WebDriver), with a virtual authenticator from WebDriver's WebAuthn
//! extension standing in for the security key. `.ci/run` installs both from Debian's packages;
//! `STEPUP_CHROMEDRIVER` and `STEPUP_CHROMIUM` point elsewhere. Nothing here touches the
//! network beyond loopback.

use std::{path::PathBuf, time::Duration};

use anyhow::{Context, Result, bail};
use base64::Engine;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use serde_json::{Value, json};

/// A chromedriver with one headless Chromium session.
pub struct Browser {
    driver: tokio::process::Child,
    port: u16,
    session: String,
    profile: PathBuf,
}

/// One virtual authenticator in the browser: what the tests use as a security key.
pub struct VirtualKey {
    pub id: String,
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).expect("a free port")
}

impl Browser {
    /// Starts chromedriver and a headless Chromium with a fresh profile.
    pub async fn start() -> Result<Self> {
        let driver_path = std::env::var("STEPUP_CHROMEDRIVER").unwrap_or_else(|_| "/usr/bin/chromedriver".into());
        let chromium = std::env::var("STEPUP_CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
        let port = free_port();
        let driver = tokio::process::Command::new(&driver_path)
            .arg(format!("--port={port}"))
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("start {driver_path} (install Debian's chromium-driver)"))?;
        let profile = std::env::temp_dir().join(format!("stepup-e2e-chromium-{port}"));
        let mut browser = Self { driver, port, session: String::new(), profile: profile.clone() };
        crate::eventually(Duration::from_secs(20), || async {
            let status = browser.call("GET", "/status", None).await?;
            if status["value"]["ready"] == json!(true) { Ok(()) } else { bail!("chromedriver not ready: {status}") }
        })
        .await?;
        let capabilities = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": chromium,
                "args": [
                    "--headless=new", "--no-sandbox", "--disable-gpu", "--no-first-run",
                    "--no-default-browser-check", "--disable-background-networking", "--disable-sync",
                    "--disable-component-update", "--disable-dev-shm-usage", "--window-size=900,700",
                    format!("--user-data-dir={}", profile.display()),
                ],
            },
        }}});
        let created = browser.call("POST", "/session", Some(capabilities)).await?;
        browser.session = created["value"]["sessionId"].as_str().context("a WebDriver session")?.to_owned();
        Ok(browser)
    }

    async fn call(&self, method: &str, path: &str, body: Option<Value>) -> Result<Value> {
        let stream = tokio::net::TcpStream::connect(("127.0.0.1", self.port)).await?;
        let (mut sender, connection) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)).await?;
        tokio::spawn(connection);
        let body = body.map(|b| b.to_string()).unwrap_or_default();
        let request = hyper::Request::builder()
            .method(method)
            .uri(path)
            .header("host", format!("127.0.0.1:{}", self.port))
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(body)))?;
        let response = sender.send_request(request).await?;
        let status = response.status();
        let bytes = response.into_body().collect().await?.to_bytes();
        let value: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        if !status.is_success() {
            bail!("WebDriver {method} {path}: {status} {value}");
        }
        Ok(value)
    }

    fn at(&self, path: &str) -> String {
        format!("/session/{}{path}", self.session)
    }

    /// Adds a CTAP2 security key (resident keys; `verifies`: it verifies its user, as with a PIN).
    pub async fn add_key(&self, verifies: bool) -> Result<VirtualKey> {
        self.add_key_with(verifies, true).await
    }

    /// A key whose person declines (`consents` false: nobody touches it).
    pub async fn add_key_with(&self, verifies: bool, consents: bool) -> Result<VirtualKey> {
        let options = json!({
            "protocol": "ctap2", "transport": "usb", "hasResidentKey": true,
            "hasUserVerification": verifies, "isUserConsenting": consents, "isUserVerified": verifies,
        });
        let added = self.call("POST", &self.at("/webauthn/authenticator"), Some(options)).await?;
        Ok(VirtualKey { id: added["value"].as_str().context("an authenticator id")?.to_owned() })
    }

    /// Removes a key from the browser (as if it were unplugged).
    pub async fn remove_key(&self, key: &VirtualKey) -> Result<()> {
        self.call("DELETE", &self.at(&format!("/webauthn/authenticator/{}", key.id)), None).await.map(|_| ())
    }

    /// The credentials a key holds: their ids and signature counters.
    pub async fn credentials(&self, key: &VirtualKey) -> Result<Vec<Value>> {
        let listed =
            self.call("GET", &self.at(&format!("/webauthn/authenticator/{}/credentials", key.id)), None).await?;
        Ok(listed["value"].as_array().cloned().unwrap_or_default())
    }

    /// Copies `credential` (as [`Browser::credentials`] lists it, private key included) into
    /// `key` with signature counter `counter`: a clone of the key that holds it.
    pub async fn copy_credential(&self, key: &VirtualKey, credential: &Value, counter: u64) -> Result<()> {
        let copy = json!({
            "credentialId": credential["credentialId"],
            "isResidentCredential": credential["isResidentCredential"],
            "rpId": credential["rpId"],
            "privateKey": credential["privateKey"],
            "userHandle": credential["userHandle"],
            "signCount": counter,
        });
        self.call("POST", &self.at(&format!("/webauthn/authenticator/{}/credential", key.id)), Some(copy))
            .await
            .map(|_| ())
    }

    pub async fn goto(&self, url: &str) -> Result<()> {
        self.call("POST", &self.at("/url"), Some(json!({"url": url}))).await.map(|_| ())
    }

    /// Runs `script` in the page and returns its value.
    pub async fn script(&self, script: &str) -> Result<Value> {
        let ran = self.call("POST", &self.at("/execute/sync"), Some(json!({"script": script, "args": []}))).await?;
        Ok(ran["value"].clone())
    }

    /// Waits until the plugin's page is in `state` (`done`, `failed`, ...); its text then.
    pub async fn wait_state(&self, states: &[&str], timeout: Duration) -> Result<(String, String)> {
        crate::eventually(timeout, || async {
            let now = self
                .script("return [document.body && document.body.dataset.state, document.getElementById('state') && document.getElementById('state').textContent]")
                .await?;
            let state = now[0].as_str().unwrap_or_default().to_owned();
            let text = now[1].as_str().unwrap_or_default().to_owned();
            if states.contains(&state.as_str()) { Ok((state, text)) } else { bail!("page is {state:?}: {text}") }
        })
        .await
    }

    /// A PNG of the window, saved at `path` (for a person to look at).
    pub async fn screenshot(&self, path: &std::path::Path) -> Result<()> {
        let shot = self.call("GET", &self.at("/screenshot"), None).await?;
        let png = base64::engine::general_purpose::STANDARD.decode(shot["value"].as_str().context("a screenshot")?)?;
        std::fs::write(path, png)?;
        Ok(())
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.driver.start_kill();
        let _ = std::fs::remove_dir_all(&self.profile);
    }
}
