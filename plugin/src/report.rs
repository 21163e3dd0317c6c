//! `kubectl stepup report`: what an auditor asks for the audit period, from stepup's durable
//! audit trail (StepUpLog segments) and optionally the API server's audit log. Reads only;
//! the figures come from the pure [`stepup_core::records::report`].

use std::{collections::BTreeMap, fmt::Write as _};

use jiff::{SignedDuration, Timestamp};
use kube::{Api, api::ListParams};
use serde::Serialize;

use super::{
    cluster::Session,
    error::{Error, Result},
    format::printable,
};
use stepup_core::api::StepUpLog;
use stepup_core::records::{
    Record,
    report::{self, Figures, Scope, Summary},
    segment,
};

pub use super::cli::{Format, ReportArgs};

/// `30d`, `12h`, `2026-11-01`, `2026-11-01T10:00:00Z` → a time, relative to `now`.
pub fn parse_time(text: &str, now: Timestamp) -> std::result::Result<Timestamp, String> {
    let text = text.trim();
    if let Some(days) = text.strip_suffix('d').and_then(|d| d.parse::<i64>().ok()) {
        if !(0..=3660).contains(&days) {
            return Err(format!("{text:?}: at most 3660 days back"));
        }
        return Ok(now - SignedDuration::from_hours(24 * days));
    }
    if let Ok(d) = text.parse::<stepup_core::api::Duration>() {
        return Ok(now - d.as_signed());
    }
    if let Ok(t) = text.parse::<Timestamp>() {
        return Ok(t);
    }
    if let Ok(date) = text.parse::<jiff::civil::Date>() {
        return date.to_zoned(jiff::tz::TimeZone::UTC).map(|z| z.timestamp()).map_err(|e| e.to_string());
    }
    Err(format!("{text:?} is not a duration (30d, 12h), a date (2026-11-01) or an RFC 3339 time"))
}

pub async fn run(session: &Session, args: &ReportArgs) -> Result<()> {
    let now = Timestamp::now();
    let bad = |what: &str, e: String| Error::usage(format!("--{what}: {e}"), "e.g. --since 30d --until 2026-12-01");
    let since = parse_time(&args.since, now).map_err(|e| bad("since", e))?;
    let until =
        args.until.as_deref().map(|u| parse_time(u, now)).transpose().map_err(|e| bad("until", e))?.unwrap_or(now);
    if until <= since {
        return Err(Error::usage("the period is empty: --until is not after --since", "e.g. --since 30d"));
    }
    let (mut records, trail_health) = fetch(session, since, until).await?;
    if let Some(path) = &args.audit_log {
        let text = std::fs::read_to_string(path)
            .map_err(|e| Error::usage(format!("cannot read {}: {e}", path.display()), "Check the path."))?;
        // The API server's log is authoritative for what it reviewed; the webhook's own
        // admission records would count the same requests twice.
        records.retain(|r| !r.is_decision());
        records.extend(from_audit_log(&text));
    }
    let scope = Scope { since, until, user: args.user.clone(), policy: args.policy.clone() };
    let summary = report::summarize(&records, &scope);
    let meta = Meta { cluster: session.server.clone(), generated: now, health: trail_health };
    let rendered = match args.format {
        Format::Table => table(&summary, &meta),
        Format::Csv => csv(&summary),
        Format::Json => json(&summary, &meta),
        Format::Html => html(&summary, &meta),
    };
    out!("{rendered}");
    let gaps = health_gaps(&meta.health);
    if gaps.is_empty() {
        return Ok(());
    }
    let sentence = format!("the audit trail is incomplete: {}", gaps.join(", "));
    if args.strict {
        return Err(Error::other(
            sentence,
            "The writers' logs and stepup_audit_records_dropped_total say when; the audit lines on their stdout still hold what the segments lost.",
        ));
    }
    errln!("warning: {sentence}.");
    Ok(())
}

/// What is missing from the trail, in words; empty when nothing is.
fn health_gaps(h: &TrailHealth) -> Vec<String> {
    let mut gaps = Vec::new();
    if h.dropped > 0 {
        gaps.push(format!("{} records were dropped by their writers", h.dropped));
    }
    if h.unreadable > 0 {
        gaps.push(format!("{} could not be read", h.unreadable));
    }
    gaps
}

/// What the report can say about the trail itself.
#[derive(Clone, Debug, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct TrailHealth {
    pub segments: usize,
    /// Records the writers could not keep (never silent: also in their metrics and logs).
    pub dropped: i64,
    /// Lines or segments that could not be read.
    pub unreadable: usize,
}

struct Meta {
    cluster: String,
    generated: Timestamp,
    health: TrailHealth,
}

/// Lists the segments of the days the period touches, a page at a time.
async fn fetch(session: &Session, since: Timestamp, until: Timestamp) -> Result<(Vec<Record>, TrailHealth)> {
    let api: Api<StepUpLog> = session.all();
    let days: Vec<String> = report::days(since, until).into_iter().collect();
    let mut records = Vec::new();
    let mut health = TrailHealth::default();
    for chunk in days.chunks(40) {
        let selector = format!("{} in ({})", segment::DAY_LABEL, chunk.join(","));
        let mut params = ListParams::default().labels(&selector).limit(20);
        loop {
            let page = api.list(&params).await.map_err(session.kube_error("read the audit trail (stepuplogs)"))?;
            for log in &page.items {
                health.segments += 1;
                health.dropped += log.spec.dropped;
                match segment::decode(log) {
                    Ok(decoded) => {
                        health.unreadable += decoded.unreadable;
                        records.extend(decoded.records);
                    }
                    Err(e) => {
                        health.unreadable += 1;
                        errln!("warning: {e}");
                    }
                }
            }
            match page.metadata.continue_.filter(|c| !c.is_empty()) {
                Some(token) => params = params.continue_token(&token),
                None => break,
            }
        }
    }
    Ok((records, health))
}

/// Admission decisions from a kube-apiserver audit log: one per request that the webhook
/// reviewed (it carries `validate.stepup.dev/decision`, or `advise.stepup.dev/decision` from
/// the entry that fails open), at its ResponseComplete stage.
pub fn from_audit_log(text: &str) -> Vec<Record> {
    let mut out = Vec::new();
    for line in text.lines() {
        let Ok(event) = serde_json::from_str::<serde_json::Value>(line) else { continue };
        if event["stage"] != "ResponseComplete" {
            continue;
        }
        let annotations = &event["annotations"];
        // Exactly one entry reviews a request (their rules never overlap).
        let Some((entry, decision)) = [stepup_core::api::ENFORCING_WEBHOOK, stepup_core::api::ADVISORY_WEBHOOK]
            .into_iter()
            .find_map(|entry| annotations[format!("{entry}/decision")].as_str().map(|d| (entry, d)))
        else {
            continue;
        };
        let annotation = |key: &str| annotations[format!("{entry}/{key}")].as_str().unwrap_or_default().to_owned();
        let time = event["stageTimestamp"].as_str().and_then(|t| t.parse().ok()).unwrap_or(Timestamp::UNIX_EPOCH);
        let text = |v: &serde_json::Value| v.as_str().unwrap_or_default().to_owned();
        // Admission sees the impersonated user; so does the report.
        let user = if event["impersonatedUser"].is_object() { &event["impersonatedUser"] } else { &event["user"] };
        let verb = event["verb"].as_str().unwrap_or_default();
        let operation = match verb {
            "create" => "CREATE",
            "update" | "patch" => "UPDATE",
            "delete" | "deletecollection" => "DELETE",
            _ => "CONNECT",
        };
        let o = &event["objectRef"];
        out.push(Record {
            writer: "kube-apiserver".into(),
            user: text(&user["username"]),
            user_uid: text(&user["uid"]),
            review_uid: text(&event["auditID"]),
            operation: operation.into(),
            group: text(&o["apiGroup"]),
            resource: text(&o["resource"]),
            subresource: text(&o["subresource"]),
            namespace: text(&o["namespace"]),
            name: text(&o["name"]),
            decision: decision.into(),
            allowed: event["responseStatus"]["code"].as_u64().map(|c| c < 400),
            policies: annotation("policy"),
            grant: annotation("grant"),
            reason: annotation("reason"),
            correlation: annotation("correlation"),
            ..Record::new("admission.decision", time)
        });
    }
    out
}

fn seconds(v: Option<f64>) -> String {
    match v {
        None => "-".into(),
        Some(s) => stepup_core::grant::human(SignedDuration::from_secs_f64(s.max(0.0))),
    }
}

const COLUMNS: [&str; 10] = [
    "prompts",
    "step-ups",
    "failed",
    "median prompt→grant",
    "operations granted",
    "break-glass",
    "lockouts",
    "resets",
    "unlocks",
    "",
];

fn cells(f: &Figures) -> [String; 9] {
    [
        f.prompts.to_string(),
        f.step_ups.to_string(),
        f.failed_step_ups.to_string(),
        seconds(f.median_prompt_to_grant_seconds),
        f.granted_operations.to_string(),
        f.break_glass.to_string(),
        f.lockouts.to_string(),
        f.resets.to_string(),
        f.unlocks.to_string(),
    ]
}

fn text_table(out: &mut String, first: &str, rows: &BTreeMap<String, Figures>, columns: usize) {
    let mut grid: Vec<Vec<String>> = vec![
        std::iter::once(first.to_uppercase()).chain(COLUMNS[..columns].iter().map(|c| c.to_uppercase())).collect(),
    ];
    for (name, f) in rows {
        grid.push(std::iter::once(printable(name).into_owned()).chain(cells(f).into_iter().take(columns)).collect());
    }
    aligned(out, grid);
}

/// Writes `grid` (a header row, then rows of as many cells) in aligned columns.
fn aligned(out: &mut String, grid: Vec<Vec<String>>) {
    let columns = grid.first().map_or(0, Vec::len);
    let widths: Vec<usize> =
        (0..columns).map(|i| grid.iter().map(|r| r[i].chars().count()).max().unwrap_or(0)).collect();
    for row in grid {
        let line: Vec<String> = row.iter().zip(&widths).map(|(c, w)| format!("{c:<w$}")).collect();
        let _ = writeln!(out, "{}", line.join("   ").trim_end());
    }
}

/// Step-ups per verification method: a header row, then one row per method.
fn method_rows(s: &Summary) -> Vec<Vec<String>> {
    let mut grid = vec![["METHOD", "STEP-UPS", "FAILED", "GRANTS"].map(str::to_owned).to_vec()];
    for (method, m) in &s.methods {
        grid.push(vec![
            printable(method).into_owned(),
            m.step_ups.to_string(),
            m.failed_step_ups.to_string(),
            m.grants.to_string(),
        ]);
    }
    grid
}

/// Grants per security key: a header row, then one row per key.
fn key_rows(s: &Summary) -> Vec<Vec<String>> {
    let mut grid = vec![["SECURITY KEY", "USER", "GRANTS", "USER VERIFIED", "LAST USED"].map(str::to_owned).to_vec()];
    for (id, k) in &s.keys {
        grid.push(vec![
            printable(id).into_owned(),
            printable(&k.user).into_owned(),
            k.grants.to_string(),
            k.user_verified_grants.to_string(),
            k.last_used.map(|t| t.strftime("%Y-%m-%d %H:%M UTC").to_string()).unwrap_or_else(|| "-".into()),
        ]);
    }
    grid
}

fn period(s: &Summary) -> String {
    format!("{} to {}", s.since.strftime("%Y-%m-%d %H:%M UTC"), s.until.strftime("%Y-%m-%d %H:%M UTC"))
}

fn table(s: &Summary, meta: &Meta) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "kube-stepup report for {} — {}\n", meta.cluster, period(s));
    if s.trail.is_empty() {
        let _ = writeln!(out, "No step-up activity was recorded in this period.");
    } else {
        text_table(&mut out, "policy", &s.policies, 6);
        out.push('\n');
        text_table(&mut out, "user", &s.users, 9);
        for grid in [method_rows(s), key_rows(s)].into_iter().filter(|g| g.len() > 1) {
            out.push('\n');
            aligned(&mut out, grid);
        }
        let _ = writeln!(out, "\nTrail ({} entries):", s.trail.len());
        for t in &s.trail {
            let mut line = format!(
                "{}  {:<24} {:<12} {}",
                t.time.strftime("%Y-%m-%d %H:%M:%S"),
                printable(&t.event),
                printable(&t.user),
                printable(&t.what)
            );
            for (k, v) in [
                ("by", &t.by),
                ("policy", &t.policies),
                ("grant", &t.grant),
                ("reason", &t.reason),
                ("key", &t.key),
                ("id", &t.correlation),
            ] {
                if !v.is_empty() {
                    let _ = write!(line, "  {k}={}", printable(v));
                }
            }
            let _ = writeln!(out, "{line}");
        }
    }
    let h = &meta.health;
    let _ = writeln!(out, "\nFrom {} audit segments{}.", h.segments, health_note(h));
    out
}

fn health_note(h: &TrailHealth) -> String {
    let notes = health_gaps(h);
    if notes.is_empty() { String::new() } else { format!("; WARNING: {}", notes.join(", ")) }
}

/// One CSV cell (RFC 4180 quoting), made [`printable`]. A cell a spreadsheet would read as a
/// formula (`=`, `+`, `-`, `@` first; OWASP's CSV injection guard) is prefixed with `'`.
fn csv_field(v: &str) -> String {
    let mut v = printable(v).into_owned();
    if v.starts_with(['=', '+', '-', '@']) {
        v.insert(0, '\'');
    }
    if v.contains([',', '"', '\n']) { format!("\"{}\"", v.replace('"', "\"\"")) } else { v }
}

/// The trail, one row per entry: what spreadsheets and SIEM imports take.
fn csv(s: &Summary) -> String {
    let mut out = String::from("time,event,user,by,what,result,policies,grant,reason,correlation,key\n");
    for t in &s.trail {
        let row = [
            t.time.to_string(),
            t.event.clone(),
            t.user.clone(),
            t.by.clone(),
            t.what.clone(),
            t.result.clone(),
            t.policies.clone(),
            t.grant.clone(),
            t.reason.clone(),
            t.correlation.clone(),
            t.key.clone(),
        ];
        let row: Vec<String> = row.iter().map(|v| csv_field(v)).collect();
        let _ = writeln!(out, "{}", row.join(","));
    }
    out
}

fn json(s: &Summary, meta: &Meta) -> String {
    let value = serde_json::json!({
        "cluster": meta.cluster,
        "generated": meta.generated,
        "trail": meta.health,
        "report": s,
    });
    format!("{}\n", serde_json::to_string_pretty(&value).unwrap_or_default())
}

fn esc(v: &str) -> String {
    v.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

fn html_table(out: &mut String, id: &str, first: &str, rows: &BTreeMap<String, Figures>, columns: usize) {
    let _ = write!(out, "<table id=\"{id}\"><thead><tr><th>{first}</th>");
    for c in &COLUMNS[..columns] {
        let _ = write!(out, "<th>{}</th>", esc(c));
    }
    out.push_str("</tr></thead><tbody>");
    for (name, f) in rows {
        let _ = write!(out, "<tr><th>{}</th>", esc(name));
        for c in cells(f).iter().take(columns) {
            let _ = write!(out, "<td>{}</td>", esc(c));
        }
        out.push_str("</tr>");
    }
    out.push_str("</tbody></table>");
}

/// `grid` (a header row, then rows) as a table whose first column names each row.
fn html_grid(out: &mut String, id: &str, grid: &[Vec<String>]) {
    let _ = write!(out, "<table id=\"{id}\"><thead><tr>");
    for (i, h) in grid.first().into_iter().flatten().enumerate() {
        let h = h.to_lowercase();
        let h = if i == 0 { h[..1].to_uppercase() + &h[1..] } else { h };
        let _ = write!(out, "<th>{}</th>", esc(&h));
    }
    out.push_str("</tr></thead><tbody>");
    for row in grid.iter().skip(1) {
        out.push_str("<tr>");
        for (i, c) in row.iter().enumerate() {
            let tag = if i == 0 { "th" } else { "td" };
            let _ = write!(out, "<{tag}>{}</{tag}>", esc(c));
        }
        out.push_str("</tr>");
    }
    out.push_str("</tbody></table>");
}

const PALETTE: [&str; 8] = ["#3366cc", "#dc3912", "#ff9900", "#109618", "#990099", "#0099c6", "#dd4477", "#66aa00"];

/// Step-ups per day, stacked by policy: an inline SVG, so the file needs nothing else.
fn chart(s: &Summary) -> String {
    // Every UTC day the period touches, the last (partial: today) included.
    let days: Vec<String> = {
        let mut d = Vec::new();
        let last = (s.until - SignedDuration::from_micros(1)).strftime("%Y-%m-%d").to_string();
        let mut t = s.since;
        while t < s.until {
            let day = t.strftime("%Y-%m-%d").to_string();
            let done = day == last;
            d.push(day);
            if done {
                break;
            }
            t += SignedDuration::from_hours(24);
        }
        if d.last().is_some_and(|l| *l != last) {
            d.push(last);
        }
        d
    };
    let policies: Vec<&String> = {
        let mut p: Vec<&String> = s.step_ups_per_day.values().flat_map(|m| m.keys()).collect();
        p.sort();
        p.dedup();
        p
    };
    let max = days
        .iter()
        .map(|d| s.step_ups_per_day.get(d).map(|m| m.values().sum::<u64>()).unwrap_or(0))
        .max()
        .unwrap_or(0)
        .max(1);
    let (width, height, left, bottom) = (760.0, 220.0, 40.0, 30.0);
    let bar = (width - left) / days.len().max(1) as f64;
    let mut svg = format!(
        "<svg id=\"chart\" xmlns=\"http://www.w3.org/2000/svg\" viewBox=\"0 0 {width} {}\" role=\"img\" aria-label=\"Step-ups per day and policy\">",
        height + bottom
    );
    let _ = write!(svg, "<line x1=\"{left}\" y1=\"{height}\" x2=\"{width}\" y2=\"{height}\" stroke=\"#888\"/>");
    let _ = write!(
        svg,
        "<text x=\"0\" y=\"12\" font-size=\"11\">{max}</text><text x=\"0\" y=\"{height}\" font-size=\"11\">0</text>"
    );
    for (i, day) in days.iter().enumerate() {
        let x = left + i as f64 * bar;
        let mut y = height;
        if let Some(per) = s.step_ups_per_day.get(day) {
            for (p, count) in per {
                let color = PALETTE[policies.iter().position(|q| *q == p).unwrap_or(0) % PALETTE.len()];
                let h = *count as f64 / max as f64 * (height - 10.0);
                y -= h;
                let _ = write!(
                    svg,
                    "<rect class=\"bar\" x=\"{:.1}\" y=\"{y:.1}\" width=\"{:.1}\" height=\"{h:.1}\" fill=\"{color}\"><title>{} {}: {count}</title></rect>",
                    x + 1.0,
                    (bar - 2.0).max(1.0),
                    esc(day),
                    esc(p)
                );
            }
        }
        if i % 7 == 0 {
            let _ = write!(svg, "<text x=\"{x:.1}\" y=\"{}\" font-size=\"10\">{}</text>", height + 18.0, &day[5..]);
        }
    }
    svg.push_str("</svg><p class=\"legend\">");
    for (i, p) in policies.iter().enumerate() {
        let _ = write!(svg, "<span><i style=\"background:{}\"></i>{}</span>", PALETTE[i % PALETTE.len()], esc(p));
    }
    svg.push_str("</p>");
    svg
}

/// One file an auditor opens offline: no script, no external resource.
fn html(s: &Summary, meta: &Meta) -> String {
    let mut out = String::from(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>kube-stepup report</title><style>\
body{font:14px/1.45 system-ui,sans-serif;margin:2em auto;max-width:1100px;color:#222;padding:0 1em}\
h1{font-size:1.5em;margin-bottom:.2em}h2{font-size:1.15em;margin-top:1.8em}\
table{border-collapse:collapse;width:100%;margin:.5em 0}th,td{border-bottom:1px solid #ddd;padding:4px 8px;text-align:right}\
th:first-child,td:first-child{text-align:left}thead th{background:#f3f3f3}tbody th{font-weight:600}\
#trail td,#trail th{text-align:left;font-size:13px}#trail td:nth-child(1),#trail td:nth-child(2),#trail td:nth-child(7){white-space:nowrap}.meta{color:#555}.warn{color:#a00;font-weight:600}\
.legend span{margin-right:1.2em}.legend i{display:inline-block;width:.9em;height:.9em;margin-right:.3em;vertical-align:-1px}\
</style></head><body>",
    );
    let _ = write!(
        out,
        "<h1>kube-stepup report</h1><p class=\"meta\">Cluster <b>{}</b> · period {} · generated {} · from {} audit segments</p>",
        esc(&meta.cluster),
        esc(&period(s)),
        esc(&meta.generated.strftime("%Y-%m-%d %H:%M UTC").to_string()),
        meta.health.segments
    );
    let note = health_note(&meta.health);
    if !note.is_empty() {
        let _ = write!(out, "<p class=\"warn\">{}</p>", esc(note.trim_start_matches("; ")));
    }
    let t = &s.totals;
    let _ = write!(
        out,
        "<p id=\"totals\">{} prompts, {} successful and {} failed step-ups, {} operations let through by grants, {} break-glass uses, {} lockouts, {} resets.</p>",
        t.prompts, t.step_ups, t.failed_step_ups, t.granted_operations, t.break_glass, t.lockouts, t.resets
    );
    out.push_str("<h2>Step-ups per day and policy</h2>");
    out.push_str(&chart(s));
    out.push_str("<h2>Per policy</h2>");
    html_table(&mut out, "policies", "Policy", &s.policies, 6);
    out.push_str("<h2>Per user</h2>");
    html_table(&mut out, "users", "User", &s.users, 9);
    for (id, title, grid) in [("methods", "Per method", method_rows(s)), ("keys", "Per security key", key_rows(s))] {
        if grid.len() > 1 {
            let _ = write!(out, "<h2>{title}</h2>");
            html_grid(&mut out, id, &grid);
        }
    }
    let _ = write!(out, "<h2>Trail ({} entries)</h2><table id=\"trail\"><thead><tr>", s.trail.len());
    for h in
        ["Time (UTC)", "Event", "User", "By", "What", "Result", "Policies", "Grant", "Reason", "Correlation", "Key"]
    {
        let _ = write!(out, "<th>{h}</th>");
    }
    out.push_str("</tr></thead><tbody>");
    for e in &s.trail {
        let _ = write!(out, "<tr><td>{}</td>", esc(&e.time.strftime("%Y-%m-%d %H:%M:%S").to_string()));
        for v in
            [&e.event, &e.user, &e.by, &e.what, &e.result, &e.policies, &e.grant, &e.reason, &e.correlation, &e.key]
        {
            let _ = write!(out, "<td>{}</td>", esc(v));
        }
        out.push_str("</tr>");
    }
    out.push_str("</tbody></table></body></html>\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    #[test]
    fn periods_are_written_the_way_people_write_them() {
        let now = at("2026-12-01T12:00:00Z");
        assert_eq!(parse_time("30d", now).unwrap(), at("2026-11-01T12:00:00Z"));
        assert_eq!(parse_time("12h", now).unwrap(), at("2026-12-01T00:00:00Z"));
        assert_eq!(parse_time("2026-11-01", now).unwrap(), at("2026-11-01T00:00:00Z"));
        assert_eq!(parse_time("2026-11-01T10:00:00Z", now).unwrap(), at("2026-11-01T10:00:00Z"));
        assert!(parse_time("last tuesday", now).unwrap_err().contains("is not a duration"));
        assert!(parse_time("99999d", now).is_err());
    }

    #[test]
    fn reviewed_requests_come_from_the_api_servers_audit_log() {
        let log = r#"{"stage":"ResponseStarted","annotations":{"validate.stepup.dev/decision":"denied"}}
{"stage":"ResponseComplete","auditID":"a1","verb":"delete","user":{"username":"admin"},"impersonatedUser":{"username":"alice","uid":"u1"},"objectRef":{"resource":"secrets","namespace":"prod","name":"db","apiGroup":""},"responseStatus":{"code":403},"stageTimestamp":"2026-11-10T10:00:00.123456Z","annotations":{"validate.stepup.dev/decision":"denied","validate.stepup.dev/policy":"prod-secrets"}}
{"stage":"ResponseComplete","verb":"get","annotations":{}}
{"stage":"ResponseComplete","auditID":"a2","verb":"create","user":{"username":"bob"},"objectRef":{"resource":"limitranges","namespace":"dev","name":"l","apiGroup":""},"responseStatus":{"code":201},"stageTimestamp":"2026-11-10T10:01:00Z","annotations":{"advise.stepup.dev/decision":"audited","advise.stepup.dev/policy":"dev-audit"}}
not json"#;
        let records = from_audit_log(log);
        assert_eq!(records.len(), 2);
        let audited = &records[1];
        assert_eq!((audited.user.as_str(), audited.decision.as_str()), ("bob", "audited"));
        assert_eq!((audited.policies.as_str(), audited.allowed), ("dev-audit", Some(true)));
        let r = &records[0];
        assert_eq!((r.user.as_str(), r.operation.as_str(), r.decision.as_str()), ("alice", "DELETE", "denied"));
        assert_eq!((r.namespace.as_str(), r.name.as_str(), r.policies.as_str()), ("prod", "db", "prod-secrets"));
        assert_eq!(r.allowed, Some(false));
    }

    fn sample() -> Summary {
        let r = |event: &str, t: &str, user: &str| Record {
            user: user.into(),
            correlation: "c<1>".into(),
            ..Record::new(event, at(t))
        };
        let mut prompt = r("admission.decision", "2026-11-10T10:00:00Z", "alice");
        prompt.decision = "denied".into();
        prompt.policies = "prod-secrets".into();
        let key = |r: Record| Record {
            method: "WebAuthn".into(),
            credential: "3aab35e8c53f55b0".into(),
            user_verified: Some(true),
            ..r
        };
        let records = vec![
            prompt,
            Record { method: "WebAuthn".into(), ..r("challenge.verified", "2026-11-10T10:00:30Z", "alice") },
            key(r("grant.issued", "2026-11-10T10:00:31Z", "alice")),
        ];
        report::summarize(
            &records,
            &Scope { since: at("2026-11-01T00:00:00Z"), until: at("2026-12-01T00:00:00Z"), ..Scope::default() },
        )
    }

    fn meta() -> Meta {
        Meta {
            cluster: "https://k8s.example.com".into(),
            generated: at("2026-12-01T00:00:00Z"),
            health: TrailHealth { segments: 3, dropped: 2, unreadable: 0 },
        }
    }

    /// Seen in the e2e screenshot: with `--since 30d` (a period starting and ending mid-day)
    /// the chart stopped at yesterday, leaving out today's step-ups.
    #[test]
    fn the_chart_has_a_bar_slot_for_every_day_the_period_touches() {
        let r = |event: &str, t: &str| Record { user: "alice".into(), ..Record::new(event, at(t)) };
        let records = vec![r("challenge.verified", "2026-12-07T05:15:20Z")];
        let scope = Scope { since: at("2026-11-07T05:15:30Z"), until: at("2026-12-07T05:15:30Z"), ..Scope::default() };
        let svg = chart(&report::summarize(&records, &scope));
        assert!(svg.contains("<title>2026-12-07 (no prompt): 1</title>"), "{svg}");
        assert!(svg.contains(">11-07<"), "the first, partial day too: {svg}");
        // A period of whole days has exactly those.
        let whole = Scope { since: at("2026-11-01T00:00:00Z"), until: at("2026-11-03T00:00:00Z"), ..Scope::default() };
        let svg = chart(&report::summarize(&[], &whole));
        assert!(svg.contains(">11-01<") && !svg.contains("11-03"), "no day after the period: {svg}");
    }

    #[test]
    fn the_html_report_is_self_contained_and_escapes_what_it_shows() {
        let page = html(&sample(), &meta());
        assert!(page.starts_with("<!doctype html>") && page.trim_end().ends_with("</html>"));
        for needle in [
            "id=\"chart\"",
            "id=\"policies\"",
            "id=\"users\"",
            "id=\"trail\"",
            "id=\"methods\"",
            "<tr><th>WebAuthn</th><td>1</td><td>0</td><td>1</td></tr>",
            "<tr><th>3aab35e8c53f55b0</th><td>alice</td><td>1</td><td>1</td>",
            "class=\"bar\"",
            "prod-secrets",
            "2 records were dropped",
        ] {
            assert!(page.contains(needle), "{needle} missing");
        }
        assert!(page.contains("c&lt;1&gt;") && !page.contains("c<1>"), "values are escaped");
        assert!(!page.contains("<script"), "no script to fail");
        assert!(
            !page.contains("src=") && !page.contains("<link") && !page.contains("url("),
            "nothing is loaded from elsewhere"
        );
    }

    /// A challenge reason that clears the screen and prints "nothing happened" would hide the
    /// real trail from an auditor; a user named like a formula would run in a spreadsheet.
    #[test]
    fn what_users_wrote_cannot_drive_the_terminal_or_the_spreadsheet() {
        let wipe = "\u{1b}[2J\u{1b}[HNo step-up activity was recorded in this period.\r\n";
        let records = vec![
            Record {
                user: "=HYPERLINK(\"http://evil\",\"x\")".into(),
                reason: wipe.into(),
                by: "\u{1b}]0;owned\u{7}".into(),
                grant: "g-1".into(),
                ..Record::new("grant.issued", at("2026-11-10T10:00:31Z"))
            },
            Record {
                user: "-2+3".into(),
                policies: "@SUM(1)".into(),
                ..Record::new("grant.revoked", at("2026-11-10T10:01:00Z"))
            },
        ];
        let s = report::summarize(
            &records,
            &Scope { since: at("2026-11-01T00:00:00Z"), until: at("2026-12-01T00:00:00Z"), ..Scope::default() },
        );
        let text = table(&s, &meta());
        assert!(!text.chars().any(|c| c.is_control() && c != '\n'), "{text:?}");
        assert!(text.contains("\\u{1b}[2J"), "the attempt stays visible: {text}");
        let csv = csv(&s);
        assert!(!csv.chars().any(|c| c.is_control() && c != '\n'), "{csv:?}");
        for row in csv.lines().skip(1) {
            for cell in row.split(',') {
                let cell = cell.trim_start_matches('"');
                assert!(!cell.starts_with(['=', '+', '-', '@']), "a formula cell: {row}");
            }
        }
    }

    #[test]
    fn table_csv_and_json_carry_the_same_figures() {
        let s = sample();
        let text = table(&s, &meta());
        assert!(text.contains("POLICY") && text.contains("prod-secrets") && text.contains("31s"), "{text}");
        assert!(text.contains("WebAuthn   1          0        1"), "{text}");
        assert!(text.contains("3aab35e8c53f55b0   alice   1        1               2026-11-10 10:00 UTC"), "{text}");
        assert!(text.contains("key=3aab35e8c53f55b0"), "{text}");
        let csv = csv(&s);
        assert_eq!(csv.lines().count(), 1 + s.trail.len());
        let json: serde_json::Value = serde_json::from_str(&json(&s, &meta())).unwrap();
        assert_eq!(json["report"]["policies"]["prod-secrets"]["prompts"], 1);
        assert_eq!(json["report"]["policies"]["prod-secrets"]["medianPromptToGrantSeconds"], 31.0);
        assert_eq!(json["trail"]["dropped"], 2);
        assert_eq!(json["report"]["methods"]["WebAuthn"]["grants"], 1);
        assert_eq!(json["report"]["keys"]["3aab35e8c53f55b0"]["userVerifiedGrants"], 1);
        assert!(csv.lines().any(|l| l.ends_with(",3aab35e8c53f55b0")), "{csv}");
    }
}
