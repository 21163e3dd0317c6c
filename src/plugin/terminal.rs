//! Talking to the person at the terminal: hidden code input, questions, a progress indicator
//! and the QR code. Prompts use the controlling terminal (/dev/tty), so standard input and
//! output stay free for pipes and `-o json`.

use std::{
    fs::OpenOptions,
    io::{self, BufRead, BufReader, IsTerminal, Write},
    sync::{Arc, Mutex},
    time::Duration,
};

use qrcode::{QrCode, render::unicode::Dense1x2};
use tokio::task::JoinHandle;

use super::error::{Error, Result};

/// Where the one-time code comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CodeSource {
    /// Asked on the terminal, without echo.
    Terminal,
    /// The first line of standard input (automation).
    Stdin,
}

/// A 6-digit code as people type it (`123 456`, `123-456`) reduced to its digits.
pub fn normalize_code(input: &str) -> Result<String> {
    let digits: String = input.chars().filter(|c| !c.is_whitespace() && *c != '-').collect();
    if digits.len() == 6 && digits.bytes().all(|b| b.is_ascii_digit()) {
        Ok(digits)
    } else {
        Err(Error::usage(
            "a code is the 6 digits your authenticator app shows",
            "Open the app, find the kube-stepup entry and type its current code.",
        ))
    }
}

/// Asks for a code (hidden) or reads it from standard input.
pub fn read_code(prompt: &str, source: CodeSource) -> Result<String> {
    let input = match source {
        CodeSource::Stdin => {
            let mut line = String::new();
            io::stdin().lock().read_line(&mut line).map_err(|e| {
                Error::usage(
                    format!("cannot read the code from standard input: {e}"),
                    "Pipe the code in: `echo 123456 | ...`.",
                )
            })?;
            line
        }
        CodeSource::Terminal => ask_hidden(prompt)?,
    };
    normalize_code(&input)
}

/// Asks for something secret on the terminal, without echo; the raw answer.
pub fn ask_hidden(prompt: &str) -> Result<String> {
    rpassword::prompt_password(prompt).map_err(|_| no_terminal("a code"))
}

/// Asks a question with visible input on the terminal; the trimmed answer.
pub fn ask(prompt: &str) -> Result<String> {
    let tty = OpenOptions::new().read(true).write(true).open("/dev/tty").map_err(|_| no_terminal("an answer"))?;
    let mut writer = &tty;
    writer.write_all(prompt.as_bytes()).and_then(|_| writer.flush()).map_err(|_| no_terminal("an answer"))?;
    let mut line = String::new();
    BufReader::new(&tty).read_line(&mut line).map_err(|_| no_terminal("an answer"))?;
    Ok(line.trim().to_owned())
}

fn no_terminal(what: &str) -> Error {
    Error::usage(
        format!("there is no terminal to ask for {what}"),
        "Run it in a terminal, or pass the value with a flag (--code-stdin, --reason).",
    )
}

/// A spinner and a line of status on stderr while waiting. Silent when stderr is not a
/// terminal: scripts get the result or one error, not progress chatter.
pub struct Progress {
    message: Arc<Mutex<String>>,
    ticker: Option<JoinHandle<()>>,
}

impl Progress {
    pub fn start(message: &str) -> Self {
        let shared = Arc::new(Mutex::new(message.to_owned()));
        let ticker = io::stderr().is_terminal().then(|| {
            let shared = shared.clone();
            tokio::spawn(async move {
                const FRAMES: [char; 10] = ['⠋', '⠙', '⠹', '⠸', '⠼', '⠴', '⠦', '⠧', '⠇', '⠏'];
                for frame in FRAMES.iter().cycle() {
                    let text = shared.lock().map(|m| m.clone()).unwrap_or_default();
                    err!("\r\x1b[2K{frame} {text}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            })
        });
        Self { message: shared, ticker }
    }

    pub fn set(&self, message: &str) {
        if let Ok(mut m) = self.message.lock() {
            message.clone_into(&mut m);
        }
    }

    /// Stops the spinner and clears its line.
    pub fn finish(mut self) {
        self.stop();
    }

    fn stop(&mut self) {
        if let Some(ticker) = self.ticker.take() {
            ticker.abort();
            err!("\r\x1b[2K");
        }
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The QR code of `data` in text, two modules per character cell. Light modules are drawn,
/// dark ones left blank: right for the usual light-on-dark terminal.
pub fn qr_code(data: &str) -> Option<String> {
    let code = QrCode::new(data.as_bytes()).ok()?;
    Some(code.render::<Dense1x2>().dark_color(Dense1x2::Light).light_color(Dense1x2::Dark).quiet_zone(true).build())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_six_digits_however_they_are_typed() {
        for (input, code) in [("123456\n", "123456"), (" 123 456 ", "123456"), ("123-456", "123456")] {
            assert_eq!(normalize_code(input).unwrap(), code, "{input:?}");
        }
        for input in ["", "12345", "1234567", "12345a", "١٢٣٤٥٦"] {
            assert!(matches!(normalize_code(input), Err(Error::Usage { .. })), "{input:?}");
        }
    }

    #[test]
    fn the_qr_code_is_text_with_a_quiet_zone() {
        let uri = crate::verify::totp::otpauth_uri(b"12345678901234567890", "kube-stepup", "alice");
        let qr = qr_code(&uri).unwrap();
        let lines: Vec<&str> = qr.lines().collect();
        assert!(lines.len() > 15, "{qr}");
        assert!(lines.iter().all(|l| l.chars().count() == lines[0].chars().count()));
        assert!(lines[0].chars().all(|c| c == '█'), "the quiet zone is drawn light: {:?}", lines[0]);
    }
}
