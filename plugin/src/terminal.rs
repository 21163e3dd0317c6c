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

/// Whether a person can be asked something: the process has a controlling terminal.
pub fn has_terminal() -> bool {
    OpenOptions::new().read(true).write(true).open("/dev/tty").is_ok()
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

/// How the enrollment QR code is drawn.
///
/// Plain text cannot scan on every theme: its glyphs take the theme's foreground colour, so a
/// code drawn for a dark background comes out inverted on a light one, and most authenticator
/// apps then see nothing. A terminal therefore gets explicit colours, black modules on white
/// from the 256-colour cube (indices 16 and 231, which themes leave alone, unlike the first
/// 16): it scans whatever the theme, with no flag to learn or get wrong. Without a terminal,
/// with `NO_COLOR` or `TERM=dumb`, the code stays plain text for a dark background, as before;
/// the key and URI printed under it work everywhere.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum QrStyle {
    Coloured,
    Plain,
}

impl QrStyle {
    /// Coloured on a terminal that accepts colours, plain otherwise.
    pub fn for_stdout() -> Self {
        let set = |name: &str| std::env::var_os(name).filter(|v| !v.is_empty());
        let refuses_colour = set("NO_COLOR").is_some() || set("TERM").is_some_and(|t| t == "dumb");
        if io::stdout().is_terminal() && !refuses_colour { QrStyle::Coloured } else { QrStyle::Plain }
    }
}

/// Black on white, and back to the theme's colours.
const BLACK_ON_WHITE: &str = "\x1b[38;5;16;48;5;231m";
const RESET: &str = "\x1b[0m";

/// The QR code of `data` in text, two modules per character cell, with its quiet zone.
/// Plain: light modules are drawn and dark ones left blank, right on a dark background only.
/// Coloured: dark modules are drawn in black on a white background, line by line, so that no
/// colour runs past the code.
pub fn qr_code(data: &str, style: QrStyle) -> Option<String> {
    let code = QrCode::new(data.as_bytes()).ok()?;
    let mut render = code.render::<Dense1x2>();
    render.quiet_zone(true);
    Some(match style {
        QrStyle::Plain => render.dark_color(Dense1x2::Light).light_color(Dense1x2::Dark).build(),
        QrStyle::Coloured => {
            render.build().lines().map(|line| format!("{BLACK_ON_WHITE}{line}{RESET}")).collect::<Vec<_>>().join("\n")
        }
    })
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
        let uri = stepup_core::verify::totp::otpauth_uri(b"12345678901234567890", "kube-stepup", "alice");
        let qr = qr_code(&uri, QrStyle::Plain).unwrap();
        let lines: Vec<&str> = qr.lines().collect();
        assert!(lines.len() > 15, "{qr}");
        assert!(lines.iter().all(|l| l.chars().count() == lines[0].chars().count()));
        assert!(lines[0].chars().all(|c| c == '█'), "the quiet zone is drawn light: {:?}", lines[0]);
    }

    /// A terminal's default colours, as luma.
    #[derive(Clone, Copy, Debug)]
    struct Theme {
        foreground: u8,
        background: u8,
    }
    const LIGHT: Theme = Theme { foreground: 20, background: 250 };
    const DARK: Theme = Theme { foreground: 230, background: 25 };

    /// What a terminal with `theme` shows for `text`: one luma value per QR module. Understands
    /// the half blocks and the 256-colour escapes `qr_code` writes, nothing else.
    fn screen(text: &str, theme: Theme) -> Vec<Vec<u8>> {
        let palette = |index: &str| match index {
            "16" => 0,
            "231" => 255,
            other => panic!("colour {other} is not fixed across themes"),
        };
        let mut rows = Vec::new();
        for line in text.lines() {
            let (mut fg, mut bg) = (theme.foreground, theme.background);
            let (mut top, mut bottom) = (Vec::new(), Vec::new());
            let mut chars = line.chars();
            while let Some(c) = chars.next() {
                let (upper, lower) = match c {
                    '\x1b' => {
                        let sequence: String = chars.by_ref().take_while(|c| *c != 'm').collect();
                        let params: Vec<&str> = sequence.trim_start_matches('[').split(';').collect();
                        match params.as_slice() {
                            ["0"] | [""] => (fg, bg) = (theme.foreground, theme.background),
                            ["38", "5", f, "48", "5", b] => (fg, bg) = (palette(f), palette(b)),
                            other => panic!("unexpected escape {other:?}"),
                        }
                        continue;
                    }
                    '█' => (fg, fg),
                    '▀' => (fg, bg),
                    '▄' => (bg, fg),
                    ' ' => (bg, bg),
                    other => panic!("unexpected character {other:?}"),
                };
                top.push(upper);
                bottom.push(lower);
            }
            rows.push(top);
            rows.push(bottom);
        }
        rows
    }

    /// What a phone's camera reads off that screen, four pixels a module.
    fn scanned(text: &str, theme: Theme) -> Option<String> {
        const SCALE: usize = 4;
        let modules = screen(text, theme);
        let (width, height) = (modules[0].len() * SCALE, modules.len() * SCALE);
        let mut image =
            rqrr::PreparedImage::prepare_from_greyscale(width, height, |x, y| modules[y / SCALE][x / SCALE]);
        image.detect_grids().first().and_then(|grid| grid.decode().ok()).map(|(_, content)| content)
    }

    #[test]
    fn the_qr_code_scans_on_light_and_dark_terminals() {
        let uri = stepup_core::verify::totp::otpauth_uri(b"12345678901234567890", "kube-stepup (prod-eu)", "alice");
        let coloured = qr_code(&uri, QrStyle::Coloured).unwrap();
        for theme in [LIGHT, DARK] {
            assert_eq!(scanned(&coloured, theme).as_deref(), Some(uri.as_str()), "{theme:?}");
        }
        // The plain text is what every terminal got before: it scans on a dark theme only.
        let plain = qr_code(&uri, QrStyle::Plain).unwrap();
        assert_eq!(scanned(&plain, DARK).as_deref(), Some(uri.as_str()));
        assert_eq!(scanned(&plain, LIGHT), None, "inverted on a light theme");
    }
}
