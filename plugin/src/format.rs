//! How grants, times and durations are shown to people and to scripts (`-o json`).

use jiff::{SignedDuration, Timestamp, tz::TimeZone};
use serde::Serialize;

use stepup_core::api::{GrantPhase, GrantScope, StepUpGrant};

/// Time left, for people: `1h 5m`, `29m 58s`, `45s`; `expired` at or below zero.
pub fn remaining(left: SignedDuration) -> String {
    let secs = left.as_secs();
    if secs <= 0 {
        return "expired".to_owned();
    }
    let (d, h, m, s) = (secs / 86_400, (secs % 86_400) / 3600, (secs % 3600) / 60, secs % 60);
    match (d, h, m) {
        (0, 0, 0) => format!("{s}s"),
        (0, 0, _) if s == 0 => format!("{m}m"),
        (0, 0, _) => format!("{m}m {s}s"),
        (0, _, _) => format!("{h}h {m}m"),
        _ => format!("{d}d {h}h"),
    }
}

/// A timestamp in the viewer's time zone: `14:32:05 CET` today, with the date otherwise.
pub fn local_time(at: Timestamp, now: Timestamp, tz: &TimeZone) -> String {
    let zoned = at.to_zoned(tz.clone());
    if zoned.date() == now.to_zoned(tz.clone()).date() {
        zoned.strftime("%H:%M:%S %Z").to_string()
    } else {
        zoned.strftime("%Y-%m-%d %H:%M:%S %Z").to_string()
    }
}

/// A grant as `status -o json` and `request -o json` print it.
#[derive(Serialize, Debug, Clone, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct GrantView {
    pub name: String,
    pub user: String,
    pub method: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    pub issued_at: Timestamp,
    pub expires_at: Timestamp,
    /// Seconds until expiry at the time of printing; 0 once expired.
    pub expires_in_seconds: i64,
    /// `Active`, `Expired` or `Revoked`.
    pub state: &'static str,
    #[serde(skip_serializing_if = "GrantScope::is_unrestricted")]
    pub scope: GrantScope,
}

impl GrantView {
    pub fn new(grant: &StepUpGrant, now: Timestamp) -> Self {
        let spec = &grant.spec;
        let expires_at = spec.expires_at.0;
        let expired = now >= expires_at || grant.status.as_ref().and_then(|s| s.phase) == Some(GrantPhase::Expired);
        let state = if grant.metadata.deletion_timestamp.is_some() {
            "Revoked"
        } else if expired {
            "Expired"
        } else {
            "Active"
        };
        Self {
            name: grant.metadata.name.clone().unwrap_or_default(),
            user: spec.user.clone(),
            method: spec.method.to_string(),
            reason: spec.reason.clone(),
            issued_at: spec.issued_at.0,
            expires_at,
            expires_in_seconds: expires_at.duration_since(now).as_secs().max(0),
            state,
            scope: spec.scope.clone(),
        }
    }

    pub fn is_active(&self) -> bool {
        self.state == "Active"
    }

    /// `expires 14:32:05 CET (in 29m 58s)` or `expired 13:02:05 CET`.
    pub fn expiry(&self, now: Timestamp, tz: &TimeZone) -> String {
        let at = local_time(self.expires_at, now, tz);
        if self.is_active() {
            format!("expires {at} (in {})", remaining(self.expires_at.duration_since(now)))
        } else {
            format!("{} (expiry {at})", self.state.to_lowercase())
        }
    }

    /// `all policies and namespaces`, or what the scope limits the grant to.
    pub fn scope_text(&self) -> String {
        let mut parts = Vec::new();
        if !self.scope.policies.is_empty() {
            parts.push(format!("policies {}", self.scope.policies.join(", ")));
        }
        if !self.scope.namespaces.is_empty() {
            parts.push(format!("namespaces {}", self.scope.namespaces.join(", ")));
        }
        if parts.is_empty() { "all policies and namespaces".to_owned() } else { parts.join("; ") }
    }
}

/// Text from the cluster (a reason, a user name, a message), made safe to print: control
/// characters (escape sequences that clear a screen or move the cursor, carriage returns that
/// overwrite a line) and bidirectional overrides (which reorder what a reader sees) are shown
/// as visible escapes, `\u{1b}`, instead of acting on the terminal.
pub fn printable(text: &str) -> std::borrow::Cow<'_, str> {
    let unsafe_char = |c: char| c.is_control() || matches!(c, '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}');
    if !text.chars().any(unsafe_char) {
        return std::borrow::Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        if unsafe_char(c) {
            out.push_str(&c.escape_unicode().to_string());
        } else {
            out.push(c);
        }
    }
    std::borrow::Cow::Owned(out)
}

/// Lines of text from the cluster, each made [`printable`]; the line breaks stay.
pub fn printable_lines(text: &str) -> String {
    text.split('\n').map(printable).collect::<Vec<_>>().join("\n")
}

/// Plain columns, padded to the widest cell: the layout of `kubectl get`. Cells are made
/// [`printable`].
pub fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let rows: Vec<Vec<String>> =
        rows.iter().map(|row| row.iter().map(|cell| printable(cell).into_owned()).collect()).collect();
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let line = |cells: Vec<&str>, out: &mut String| {
        let last = cells.len().saturating_sub(1);
        for (i, (cell, w)) in cells.iter().zip(&widths).enumerate() {
            out.push_str(cell);
            if i < last {
                out.push_str(&" ".repeat(w - cell.chars().count() + 3));
            }
        }
        out.push('\n');
    };
    line(header.to_vec(), &mut out);
    for row in &rows {
        line(row.iter().map(String::as_str).collect(), &mut out);
    }
    out
}

/// Pretty JSON with a trailing newline, as `kubectl -o json` prints.
pub fn json<T: Serialize>(value: &T) -> String {
    let mut text = serde_json::to_string_pretty(value).unwrap_or_else(|_| "{}".to_owned());
    text.push('\n');
    text
}

#[cfg(test)]
mod tests {
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

    use super::*;
    use stepup_core::testing::{grant, minutes, t0};

    #[test]
    fn remaining_time_reads_like_a_person_would_say_it() {
        let cases = [
            (0, "expired"),
            (-5, "expired"),
            (1, "1s"),
            (45, "45s"),
            (60, "1m"),
            (29 * 60 + 58, "29m 58s"),
            (3600, "1h 0m"),
            (3600 + 5 * 60 + 59, "1h 5m"),
            (26 * 3600, "1d 2h"),
        ];
        for (secs, text) in cases {
            assert_eq!(remaining(SignedDuration::from_secs(secs)), text, "{secs}s");
        }
    }

    #[test]
    fn local_time_shows_the_date_only_when_it_is_not_today() {
        let paris = TimeZone::fixed(jiff::tz::offset(1));
        let now = t0(); // 12:00 UTC
        assert_eq!(local_time(now + minutes(30), now, &paris), "13:30:00 +01");
        assert_eq!(local_time(now + minutes(30), now, &TimeZone::UTC), "12:30:00 UTC");
        assert_eq!(local_time(now + minutes(13 * 60), now, &paris), "2026-11-29 02:00:00 +01");
    }

    #[test]
    fn grant_views_say_whether_a_grant_is_usable() {
        let now = t0();
        let g = grant("alice-1", "alice").issued(now - minutes(1)).expires(now + minutes(29)).reason("INC-42").build();
        let view = GrantView::new(&g, now);
        assert_eq!(view.state, "Active");
        assert_eq!(view.expires_in_seconds, 29 * 60);
        assert_eq!(view.expiry(now, &TimeZone::UTC), "expires 12:29:00 UTC (in 29m)");
        assert_eq!(view.scope_text(), "all policies and namespaces");

        let expired = GrantView::new(&g, now + minutes(30));
        assert_eq!((expired.state, expired.expires_in_seconds), ("Expired", 0));
        assert_eq!(expired.expiry(now + minutes(30), &TimeZone::UTC), "expired (expiry 12:29:00 UTC)");

        let mut revoked = g.clone();
        revoked.metadata.deletion_timestamp = Some(Time(now));
        assert_eq!(GrantView::new(&revoked, now).state, "Revoked");

        let scoped = grant("g", "alice").scope_policies(&["p"]).scope_namespaces(&["prod"]).build();
        assert_eq!(GrantView::new(&scoped, now).scope_text(), "policies p; namespaces prod");
    }

    #[test]
    fn grant_json_is_stable_for_scripts() {
        let now = t0();
        let g = grant("alice-1", "alice").issued(now).expires(now + minutes(15)).scope_namespaces(&["prod"]).build();
        let value = serde_json::to_value(GrantView::new(&g, now)).unwrap();
        assert_eq!(
            value,
            serde_json::json!({
                "name": "alice-1", "user": "alice", "method": "TOTP",
                "issuedAt": "2026-11-28T12:00:00Z", "expiresAt": "2026-11-28T12:15:00Z",
                "expiresInSeconds": 900, "state": "Active", "scope": {"namespaces": ["prod"]}
            })
        );
    }

    #[test]
    fn tables_align_columns() {
        let text = table(
            &["NAME", "STATE"],
            &[vec!["a-long-name".into(), "Active".into()], vec!["b".into(), "Expired".into()]],
        );
        assert_eq!(text, "NAME          STATE\na-long-name   Active\nb             Expired\n");
    }

    /// A reason that would clear the screen and print a fake line is shown for what it is.
    #[test]
    fn control_characters_and_bidi_overrides_are_shown_not_obeyed() {
        let attack = "\u{1b}[2J\u{1b}[HNo step-up activity.\r\nok \u{202e}txt.exe";
        let shown = printable(attack);
        assert!(!shown.chars().any(|c| c.is_control()), "{shown}");
        assert_eq!(shown, "\\u{1b}[2J\\u{1b}[HNo step-up activity.\\u{d}\\u{a}ok \\u{202e}txt.exe");
        assert!(matches!(printable("INC-42 fix db"), std::borrow::Cow::Borrowed(_)), "plain text is not copied");
        assert!(!table(&["REASON"], &[vec![attack.into()]]).contains('\u{1b}'));
    }
}
