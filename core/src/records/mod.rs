//! The audit trail's one record shape, `stepup.dev/audit/v1`, documented by
//! `record.schema.json`: every JSON audit line a SIEM ships and every record in the durable
//! segments (`StepUpLog`) that `kubectl stepup report` reads. Pure: the shell's
//! `records::writer` writes the lines and segments.

pub mod report;
pub mod segment;

use jiff::Timestamp;
use serde::{Deserialize, Serialize};

/// The schema identifier every record carries. A breaking change gets a new version.
pub const SCHEMA: &str = "stepup.dev/audit/v1";
/// The log target audit lines have always carried, kept so existing SIEM filters still match.
pub const TARGET: &str = "stepup::audit";
/// The JSON Schema of a record (draft 2020-12), as shipped to SIEM pipelines.
pub const JSON_SCHEMA: &str = include_str!("record.schema.json");

/// One audited fact: an admission decision that involved a policy or a built-in rule, or a
/// step of the controller. Fields that do not apply are left out of the JSON.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
pub struct Record {
    pub schema: String,
    pub target: String,
    pub time: Timestamp,
    /// What happened: `admission.decision`, `challenge.verified`, `grant.issued`, ...
    pub event: String,
    /// The process that recorded it: `stepup-webhook/<pod>`, `stepup-controller/<pod>`.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub writer: String,
    /// The user the record is about (the requester of an admission request).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub user: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub user_uid: String,
    /// Who acted, when not the user: the admin who reset, approved or revoked.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub by: String,
    /// Ties a prompt, the challenge it led to, the grant and the operations it let through.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub correlation: String,

    // Admission decisions.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub review_uid: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub operation: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub group: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub resource: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub subresource: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub namespace: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub name: String,
    #[serde(default, skip_serializing_if = "is_false")]
    pub dry_run: bool,
    /// What the webhook's connection proved about who sent the review:
    /// `client-certificate:<subject>` with mutual TLS, else `unauthenticated`.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub peer: String,
    /// The decision (`denied`, `granted`, `warned`, `audited`, `break-glass`, ...).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub decision: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allowed: Option<bool>,
    /// Policies the request matched, comma-separated.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub policies: String,
    /// What would satisfy a denial (`policies=... methods=... max-age=...`).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub requirement: String,

    // Controller steps, and the grant of either.
    /// The object the step concerns: `StepUpChallenge/alice-x7k2p`.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub object: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub result: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub method: String,
    /// The reason given for stepping up (an incident or ticket).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub reason: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub grant: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub message: String,
    /// The security key that answered a `WebAuthn` step: its credential id hash.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub credential: String,
    /// Whether that key verified its person (PIN, biometric), on a `WebAuthn` step.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_verified: Option<bool>,
}

fn is_false(b: &bool) -> bool {
    !*b
}

impl Record {
    /// A record of `event` at `time`, to be filled in.
    pub fn new(event: &str, time: Timestamp) -> Self {
        Self { schema: SCHEMA.to_owned(), target: TARGET.to_owned(), time, event: event.to_owned(), ..Self::default() }
    }

    /// The JSON line (without the newline).
    pub fn to_line(&self) -> String {
        // A struct of strings, booleans and a timestamp always serializes.
        serde_json::to_string(self).unwrap_or_default()
    }

    /// A decision of the webhook: on an admission review (writes) or a SubjectAccessReview
    /// (reads and what only authorization sees).
    pub fn is_decision(&self) -> bool {
        matches!(self.event.as_str(), "admission.decision" | "authorization.decision")
    }

    /// The policies as a list.
    pub fn policy_list(&self) -> impl Iterator<Item = &str> {
        self.policies.split(',').filter(|p| !p.is_empty())
    }

    /// Cuts every field to its bound ([`Record::fields`]): whatever a request carries (a pod
    /// name of 900 kB), a record stays a few kilobytes. A cut value ends in `…`.
    pub fn bound(&mut self) {
        for (_, value, max) in self.fields() {
            cut(value, max);
        }
    }

    /// Each free-text field with its name in the JSON and its bound in bytes (the schema's
    /// `maxLength` says the same in characters).
    pub fn fields(&mut self) -> [(&'static str, &mut String, usize); 26] {
        [
            ("schema", &mut self.schema, 32),
            ("target", &mut self.target, 32),
            ("event", &mut self.event, 64),
            ("writer", &mut self.writer, 128),
            ("user", &mut self.user, 256),
            ("user_uid", &mut self.user_uid, 128),
            ("by", &mut self.by, 256),
            ("correlation", &mut self.correlation, 128),
            ("review_uid", &mut self.review_uid, 64),
            ("operation", &mut self.operation, 16),
            ("group", &mut self.group, 253),
            ("resource", &mut self.resource, 253),
            ("subresource", &mut self.subresource, 63),
            ("namespace", &mut self.namespace, 63),
            ("name", &mut self.name, 253),
            ("peer", &mut self.peer, 512),
            ("decision", &mut self.decision, 32),
            ("policies", &mut self.policies, 1024),
            ("requirement", &mut self.requirement, 1024),
            ("object", &mut self.object, 320),
            ("result", &mut self.result, 64),
            ("method", &mut self.method, 32),
            ("reason", &mut self.reason, 1024),
            ("grant", &mut self.grant, 253),
            ("message", &mut self.message, 2048),
            ("credential", &mut self.credential, 128),
        ]
    }
}

/// Cuts `value` to at most `max` bytes at a character boundary, ending in `…` when cut.
pub fn cut(value: &mut String, max: usize) {
    if value.len() <= max {
        return;
    }
    let mut end = max.saturating_sub('…'.len_utf8());
    while !value.is_char_boundary(end) {
        end -= 1;
    }
    value.truncate(end);
    value.push('…');
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The schema file is real JSON and names every field a record can carry, so a field added
    /// here without documenting it fails this test.
    #[test]
    fn the_schema_documents_every_field() {
        let schema: serde_json::Value = serde_json::from_str(JSON_SCHEMA).expect("the schema is JSON");
        let documented = schema["properties"].as_object().expect("properties");
        let full = Record {
            user: "u".into(),
            user_uid: "u".into(),
            writer: "w".into(),
            by: "b".into(),
            correlation: "c".into(),
            review_uid: "r".into(),
            operation: "DELETE".into(),
            group: "g".into(),
            resource: "r".into(),
            subresource: "s".into(),
            namespace: "n".into(),
            name: "n".into(),
            dry_run: true,
            peer: "unauthenticated".into(),
            decision: "denied".into(),
            allowed: Some(false),
            policies: "p".into(),
            requirement: "q".into(),
            object: "o".into(),
            result: "r".into(),
            method: "TOTP".into(),
            reason: "r".into(),
            grant: "g".into(),
            message: "m".into(),
            credential: "c".into(),
            user_verified: Some(true),
            ..Record::new("admission.decision", Timestamp::UNIX_EPOCH)
        };
        let line: serde_json::Value = serde_json::from_str(&full.to_line()).unwrap();
        for key in line.as_object().unwrap().keys() {
            assert!(documented.contains_key(key), "record field {key} is not in record.schema.json");
        }
        for key in documented.keys() {
            assert!(line.get(key).is_some(), "record.schema.json documents {key}, which records never carry");
        }
        assert_eq!(schema["properties"]["schema"]["const"], SCHEMA);
    }

    /// The schema states each field's bound, and it is the one [`Record::bound`] applies.
    #[test]
    fn the_schema_states_every_bound() {
        let schema: serde_json::Value = serde_json::from_str(JSON_SCHEMA).expect("the schema is JSON");
        for (name, _, max) in Record::default().fields() {
            let field = &schema["properties"][name];
            if field.get("const").is_some() || field.get("enum").is_some() {
                continue;
            }
            assert_eq!(field["maxLength"], max, "maxLength of {name} in record.schema.json");
        }
    }

    /// A 900 kB pod name, a megabyte of reason: the record stays small, each cut visible.
    #[test]
    fn a_huge_field_is_cut_to_its_bound_at_a_character_boundary() {
        let mut r = Record {
            name: "é".repeat(450_000),
            reason: "x".repeat(1 << 20),
            user: "alice".into(),
            ..Record::new("admission.decision", Timestamp::UNIX_EPOCH)
        };
        r.bound();
        assert!(r.name.len() <= 253 && r.name.ends_with('…'), "{}", r.name.len());
        assert!(r.reason.len() <= 1024 && r.reason.ends_with('…'));
        assert_eq!(r.user, "alice", "short fields are untouched");
        assert!(r.to_line().len() < 8 * 1024);
    }

    #[test]
    fn empty_fields_stay_out_of_the_line_and_it_reads_back() {
        let r = Record { user: "alice".into(), ..Record::new("grant.issued", "2026-12-01T10:00:00Z".parse().unwrap()) };
        let line = r.to_line();
        assert_eq!(
            line,
            r#"{"schema":"stepup.dev/audit/v1","target":"stepup::audit","time":"2026-12-01T10:00:00Z","event":"grant.issued","user":"alice"}"#
        );
        assert_eq!(serde_json::from_str::<Record>(&line).unwrap(), r);
    }
}
