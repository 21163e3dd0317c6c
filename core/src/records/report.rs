//! What an auditor reads, computed from records: per policy and per user, prompts, successful
//! and failed step-ups, time from prompt to grant, operations let through by grants,
//! break-glass uses, lockouts and resets; step-ups per day; and the chronological trail with
//! correlation ids. Pure: records in, figures out.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use jiff::{SignedDuration, Timestamp};
use serde::Serialize;

use super::Record;

/// Which records count.
#[derive(Clone, Debug, Default)]
pub struct Scope {
    pub since: Timestamp,
    pub until: Timestamp,
    pub user: Option<String>,
    pub policy: Option<String>,
}

/// Figures for one policy or one user.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Figures {
    /// Refusals that asked for step-up (dry runs excluded).
    pub prompts: u64,
    pub step_ups: u64,
    pub failed_step_ups: u64,
    /// Median seconds from a prompt to the grant its step-up produced (same correlation id).
    pub median_prompt_to_grant_seconds: Option<f64>,
    /// Operations a grant let through.
    pub granted_operations: u64,
    pub break_glass: u64,
    pub lockouts: u64,
    pub resets: u64,
    pub unlocks: u64,
    #[serde(skip)]
    waits: Vec<f64>,
}

impl Figures {
    fn finish(&mut self) {
        self.waits.sort_by(f64::total_cmp);
        self.median_prompt_to_grant_seconds = match self.waits.len() {
            0 => None,
            n if n % 2 == 1 => Some(self.waits[n / 2]),
            n => Some((self.waits[n / 2 - 1] + self.waits[n / 2]) / 2.0),
        };
    }
}

/// Step-ups with one verification method.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct MethodFigures {
    pub step_ups: u64,
    pub failed_step_ups: u64,
    pub grants: u64,
}

/// The grants one security key earned.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct KeyFigures {
    /// Whose key it is.
    pub user: String,
    pub grants: u64,
    /// Of those, the grants for which the key verified its person (PIN, biometric).
    pub user_verified_grants: u64,
    pub last_used: Option<Timestamp>,
}

/// One line of the trail.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct TrailEntry {
    pub time: Timestamp,
    pub event: String,
    pub user: String,
    pub by: String,
    pub what: String,
    pub result: String,
    pub policies: String,
    pub grant: String,
    pub reason: String,
    pub correlation: String,
    /// The security key that answered (its credential id hash), on a `WebAuthn` grant.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub key: String,
}

/// The report's figures.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Summary {
    pub since: Timestamp,
    pub until: Timestamp,
    pub totals: Figures,
    pub policies: BTreeMap<String, Figures>,
    pub users: BTreeMap<String, Figures>,
    /// Step-ups and grants per verification method (`TOTP`, `OIDC`, `WebAuthn`).
    pub methods: BTreeMap<String, MethodFigures>,
    /// Grants per security key (credential id hash).
    pub keys: BTreeMap<String, KeyFigures>,
    /// Step-ups per UTC day (`2026-12-01`) and policy (`""` for step-ups not tied to a prompt).
    pub step_ups_per_day: BTreeMap<String, BTreeMap<String, u64>>,
    pub trail: Vec<TrailEntry>,
}

/// The label a step-up not tied to any prompt is counted under, per policy.
pub const NO_PROMPT: &str = "(no prompt)";

fn what(r: &Record) -> String {
    if r.is_decision() {
        let mut s = format!("{} {}", r.operation.to_lowercase(), r.resource);
        if !r.subresource.is_empty() {
            s.push('/');
            s.push_str(&r.subresource);
        }
        if !r.name.is_empty() {
            s.push_str(&format!(" {:?}", r.name));
        }
        if !r.namespace.is_empty() {
            s.push_str(&format!(" in {}", r.namespace));
        }
        s
    } else {
        r.object.clone()
    }
}

/// Computes the report over `records` (any order, from any number of writers).
pub fn summarize(records: &[Record], scope: &Scope) -> Summary {
    let mut sorted: Vec<&Record> = records.iter().collect();
    sorted.sort_by_key(|r| r.time);
    let linked = link(&sorted);
    let in_scope: Vec<&Record> = linked
        .iter()
        .filter(|r| r.time >= scope.since && r.time < scope.until)
        .filter(|r| scope.user.as_ref().is_none_or(|u| &r.user == u))
        .collect();

    // The policies and the first time of each prompt, by correlation id.
    let mut prompted: HashMap<&str, (Timestamp, Vec<&str>)> = HashMap::new();
    for r in &in_scope {
        if is_prompt(r) && !r.correlation.is_empty() {
            prompted.entry(r.correlation.as_str()).or_insert((r.time, r.policy_list().collect()));
        }
    }
    let policies_of = |r: &Record| -> Vec<String> {
        if r.is_decision() {
            return r.policy_list().map(str::to_owned).collect();
        }
        match prompted.get(r.correlation.as_str()) {
            Some((_, p)) if !r.correlation.is_empty() => p.iter().map(|s| (*s).to_owned()).collect(),
            _ => vec![NO_PROMPT.to_owned()],
        }
    };
    let wanted_policy = |policies: &[String]| scope.policy.as_ref().is_none_or(|p| policies.contains(p));

    let mut out = Summary { since: scope.since, until: scope.until, ..Summary::default() };
    for r in in_scope {
        let policies = policies_of(r);
        if !wanted_policy(&policies) {
            continue;
        }
        let mut bump = |f: &mut dyn FnMut(&mut Figures)| {
            f(&mut out.totals);
            for p in &policies {
                f(out.policies.entry(p.clone()).or_default());
            }
            if !r.user.is_empty() {
                f(out.users.entry(r.user.clone()).or_default());
            }
        };
        let mut notable = true;
        match r.event.as_str() {
            "admission.decision" if r.dry_run => notable = false,
            "admission.decision" | "authorization.decision" => match r.decision.as_str() {
                "denied" if is_prompt(r) => bump(&mut |f| f.prompts += 1),
                "granted" if !r.grant.is_empty() => bump(&mut |f| f.granted_operations += 1),
                "break-glass" => bump(&mut |f| f.break_glass += 1),
                _ => notable = !matches!(r.decision.as_str(), "granted" | "builtin-allowed"),
            },
            "challenge.verified" => {
                bump(&mut |f| f.step_ups += 1);
                let day = r.time.strftime("%Y-%m-%d").to_string();
                let per = out.step_ups_per_day.entry(day).or_default();
                for p in &policies {
                    *per.entry(p.clone()).or_default() += 1;
                }
            }
            "challenge.denied" | "challenge.expired" => bump(&mut |f| f.failed_step_ups += 1),
            "grant.issued" => {
                if let Some((prompt_at, _)) = prompted.get(r.correlation.as_str()).filter(|_| !r.correlation.is_empty())
                {
                    let wait = r.time.duration_since(*prompt_at).max(SignedDuration::ZERO).as_secs_f64();
                    bump(&mut |f| f.waits.push(wait));
                }
            }
            "enrollment.locked" => bump(&mut |f| f.lockouts += 1),
            "enrollment.reset" => bump(&mut |f| f.resets += 1),
            "enrollment.unlocked" => bump(&mut |f| f.unlocks += 1),
            _ => {}
        }
        let step = matches!(r.event.as_str(), "challenge.verified" | "challenge.denied" | "challenge.expired");
        if !r.method.is_empty() && (step || r.event == "grant.issued") {
            let m = out.methods.entry(r.method.clone()).or_default();
            match r.event.as_str() {
                "challenge.verified" => m.step_ups += 1,
                "grant.issued" => m.grants += 1,
                _ => m.failed_step_ups += 1,
            }
        }
        if r.event == "grant.issued" && !r.credential.is_empty() {
            let key = out.keys.entry(r.credential.clone()).or_default();
            key.user.clone_from(&r.user);
            key.grants += 1;
            key.user_verified_grants += u64::from(r.user_verified == Some(true));
            key.last_used = Some(r.time);
        }
        if notable {
            out.trail.push(TrailEntry {
                time: r.time,
                event: match r.event.strip_suffix(".decision") {
                    Some(kind) if r.is_decision() => format!("{kind}.{}", r.decision),
                    _ => r.event.clone(),
                },
                user: r.user.clone(),
                by: r.by.clone(),
                what: what(r),
                result: r.result.clone(),
                policies: policies.join(","),
                grant: r.grant.clone(),
                reason: r.reason.clone(),
                correlation: r.correlation.clone(),
                key: r.credential.clone(),
            });
        }
    }
    out.totals.finish();
    out.policies.values_mut().for_each(Figures::finish);
    out.users.values_mut().for_each(Figures::finish);
    out
}

/// How long after a prompt the same user's step-up is taken to answer it.
pub const LINK_WINDOW: SignedDuration = SignedDuration::from_mins(15);

/// `sorted` (by time) with the correlation ids no writer could know filled in. The webhook
/// that refuses a request and the controller that later verifies a code never meet, so a
/// prompt without an id gets `prompt:<review uid>` (a repeated refusal before the step-up, the
/// same id); the same user's challenge outcomes and
/// issued grant within [`LINK_WINDOW`] after the earliest prompt not yet answered carry it, and
/// so do the operations that grant let through. Ids the writers set are kept (the webhook's
/// refusals, and what the plugin handed back through the challenge and the grant), except
/// that a later refusal's id joins the first one's story, and an id naming another user's
/// refusal is ignored.
fn link(sorted: &[&Record]) -> Vec<Record> {
    let mut open: HashMap<String, (String, Timestamp)> = HashMap::new();
    let mut of_grant: HashMap<String, String> = HashMap::new();
    // Whose refusal each prompt id is: an id a plugin handed in (the challenge's, then the
    // grant's) counts only for that user's own refusal.
    let mut prompted: HashMap<String, String> = HashMap::new();
    let mut aliases: HashMap<String, String> = HashMap::new();
    let mut out = Vec::with_capacity(sorted.len());
    for &r in sorted {
        let mut r = r.clone();
        if r.user.is_empty() {
            out.push(r);
            continue;
        }
        if !is_prompt(&r) {
            if prompted.get(&r.correlation).is_some_and(|whose| *whose != r.user) {
                r.correlation.clear();
            } else if let Some(first) = aliases.get(&r.correlation) {
                r.correlation.clone_from(first);
            }
        }
        open.retain(|_, (_, at)| r.time.duration_since(*at) <= LINK_WINDOW);
        let step = matches!(
            r.event.as_str(),
            "challenge.verified" | "challenge.denied" | "challenge.expired" | "challenge.withdrawn" | "grant.issued"
        );
        if is_prompt(&r) {
            // Refused again before stepping up: the same story, under its first id (the
            // plugin may hand back the later refusal's).
            if let Some((id, _)) = open.get(&r.user) {
                if !r.correlation.is_empty() && r.correlation != *id {
                    aliases.insert(r.correlation.clone(), id.clone());
                    prompted.entry(r.correlation.clone()).or_insert_with(|| r.user.clone());
                }
                r.correlation = id.clone();
            }
            if r.correlation.is_empty() {
                r.correlation = if r.review_uid.is_empty() {
                    format!("prompt:{}:{}", r.user, r.time.as_millisecond())
                } else {
                    format!("prompt:{}", r.review_uid)
                };
            }
            open.entry(r.user.clone()).or_insert_with(|| (r.correlation.clone(), r.time));
            prompted.entry(r.correlation.clone()).or_insert_with(|| r.user.clone());
        } else if step
            && r.correlation.is_empty()
            && let Some(id) = of_grant.get(&r.grant).or_else(|| open.get(&r.user).map(|(id, _)| id))
        {
            // The verdict is recorded after the grant it issued (which closed the story).
            r.correlation = id.clone();
        } else if r.is_decision()
            && r.correlation.is_empty()
            && let Some(id) = of_grant.get(&r.grant)
        {
            r.correlation = id.clone();
        }
        if r.event == "grant.issued" && !r.correlation.is_empty() {
            if !r.grant.is_empty() {
                of_grant.insert(r.grant.clone(), r.correlation.clone());
            }
            // Answered: the next prompt starts a new story.
            if open.get(&r.user).is_some_and(|(id, _)| *id == r.correlation) {
                open.remove(&r.user);
            }
        }
        out.push(r);
    }
    out
}

/// A refusal that asked for step-up (as opposed to a built-in refusal or an outage).
fn is_prompt(r: &Record) -> bool {
    r.is_decision() && r.decision == "denied" && !r.dry_run
}

/// The UTC days `[since, until)` touches, as `StepUpLog` day labels.
pub fn days(since: Timestamp, until: Timestamp) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut t = since;
    while t < until {
        out.insert(super::segment::day(t));
        t += SignedDuration::from_hours(24);
    }
    if until > since {
        out.insert(super::segment::day(until - SignedDuration::from_secs(1)));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    fn admission(time: &str, user: &str, decision: &str, correlation: &str) -> Record {
        Record {
            user: user.into(),
            decision: decision.into(),
            policies: "prod-secrets".into(),
            operation: "DELETE".into(),
            resource: "secrets".into(),
            namespace: "prod".into(),
            name: "db".into(),
            correlation: correlation.into(),
            grant: if decision == "granted" { "g-1".into() } else { String::new() },
            ..Record::new("admission.decision", at(time))
        }
    }

    fn step(time: &str, event: &str, user: &str, correlation: &str) -> Record {
        Record { user: user.into(), correlation: correlation.into(), ..Record::new(event, at(time)) }
    }

    fn scope() -> Scope {
        Scope { since: at("2026-11-01T00:00:00Z"), until: at("2026-12-01T00:00:00Z"), ..Scope::default() }
    }

    /// Issue 30: the writers now set the ids (the webhook its refusal's, the controller the one
    /// the plugin handed back). A second refusal before the step-up is the same story under the
    /// first id, whichever the plugin handed back; an id naming another user's refusal counts
    /// for nothing.
    #[test]
    fn ids_the_writers_set_tell_one_story_and_only_for_its_own_user() {
        let records = vec![
            admission("2026-11-10T10:00:00Z", "alice", "denied", "prompt:a"),
            admission("2026-11-10T10:00:10Z", "alice", "denied", "prompt:b"),
            step("2026-11-10T10:00:41Z", "grant.issued", "alice", "prompt:b"),
            step("2026-11-10T10:00:41Z", "challenge.verified", "alice", "prompt:b"),
            admission("2026-11-10T10:00:45Z", "alice", "granted", "prompt:b"),
            // bob claims alice's refusal for his own step-up.
            step("2026-11-10T10:01:00Z", "challenge.verified", "bob", "prompt:a"),
            step("2026-11-10T10:01:01Z", "grant.issued", "bob", "prompt:a"),
        ];
        let s = summarize(&records, &scope());
        let p = &s.policies["prod-secrets"];
        assert_eq!((p.prompts, p.granted_operations), (2, 1), "each refusal is a prompt");
        assert_eq!(p.median_prompt_to_grant_seconds, Some(41.0));
        let alices: Vec<&str> = s.trail.iter().filter(|t| t.user == "alice").map(|t| t.correlation.as_str()).collect();
        assert_eq!(alices, ["prompt:a"; 5]);
        assert!(s.trail.iter().filter(|t| t.user == "bob").all(|t| t.correlation.is_empty()), "{:?}", s.trail);
    }

    /// Found by the e2e report scenario: the controller records the grant before the verdict
    /// that issued it, and the grant closes the story; the verdict belongs to it all the same.
    #[test]
    fn a_verdict_recorded_after_its_grant_joins_the_story() {
        let with_grant = |mut r: Record| {
            r.grant = "g1".into();
            r
        };
        let records = vec![
            admission("2026-11-10T10:00:00Z", "alice", "denied", ""),
            with_grant(step("2026-11-10T10:00:41Z", "grant.issued", "alice", "")),
            with_grant(step("2026-11-10T10:00:41Z", "challenge.verified", "alice", "")),
        ];
        let s = summarize(&records, &scope());
        let ids: Vec<&str> = s.trail.iter().map(|t| t.correlation.as_str()).collect();
        assert!(ids[0].starts_with("prompt:") && ids.iter().all(|id| *id == ids[0]), "{ids:?}");
    }

    #[test]
    fn a_prompt_a_step_up_and_the_operation_it_let_through_are_tied_together() {
        let records = vec![
            admission("2026-11-10T10:00:00Z", "alice", "denied", "c1"),
            step("2026-11-10T10:00:20Z", "challenge.denied", "alice", "c1"),
            step("2026-11-10T10:00:40Z", "challenge.verified", "alice", "c1"),
            step("2026-11-10T10:00:41Z", "grant.issued", "alice", "c1"),
            admission("2026-11-10T10:00:45Z", "alice", "granted", "c1"),
            // Outside the period.
            admission("2026-10-31T23:59:59Z", "alice", "denied", "c0"),
        ];
        let s = summarize(&records, &scope());
        let p = &s.policies["prod-secrets"];
        assert_eq!((p.prompts, p.step_ups, p.failed_step_ups, p.granted_operations), (1, 1, 1, 1));
        assert_eq!(p.median_prompt_to_grant_seconds, Some(41.0));
        assert_eq!(s.users["alice"].prompts, 1);
        assert_eq!(s.step_ups_per_day["2026-11-10"]["prod-secrets"], 1);
        assert_eq!(s.trail.len(), 5);
        assert!(s.trail.iter().all(|t| t.correlation == "c1"));
        assert_eq!(s.trail[0].what, "delete secrets \"db\" in prod");
    }

    /// An auditor's report (issue 30): the writers set no correlation id, so every grant sat
    /// under "(no prompt)" and no median was computed. The report ties a prompt to the same
    /// user's step-up that follows within the window, and the grant to what it let through.
    #[test]
    fn records_as_the_writers_write_them_are_tied_by_user_and_time() {
        let mut prompt = admission("2026-11-10T10:00:00Z", "alice", "denied", "");
        prompt.review_uid = "r-1".into();
        let granted_by =
            |time: &str, event: &str, user: &str| Record { grant: "g-1".into(), ..step(time, event, user, "") };
        let records = vec![
            prompt,
            admission("2026-11-10T10:00:05Z", "alice", "denied", ""),
            step("2026-11-10T10:00:10Z", "challenge.verified", "bob", ""),
            step("2026-11-10T10:00:20Z", "challenge.denied", "alice", ""),
            step("2026-11-10T10:00:40Z", "challenge.verified", "alice", ""),
            granted_by("2026-11-10T10:00:41Z", "grant.issued", "alice"),
            admission("2026-11-10T10:00:45Z", "alice", "granted", ""),
            // Long after: a step-up of its own, answering no prompt.
            step("2026-11-10T11:00:00Z", "challenge.verified", "alice", ""),
        ];
        let s = summarize(&records, &scope());
        let p = &s.policies["prod-secrets"];
        assert_eq!((p.prompts, p.step_ups, p.failed_step_ups, p.granted_operations), (2, 1, 1, 1));
        assert_eq!(p.median_prompt_to_grant_seconds, Some(41.0), "from the first prompt to the grant");
        let ids: Vec<&str> = s.trail.iter().filter(|t| t.user == "alice").map(|t| t.correlation.as_str()).collect();
        assert_eq!(ids[..6], ["prompt:r-1"; 6], "{ids:?}");
        assert_eq!(ids[6], "", "the later step-up answers no prompt");
        assert_eq!(s.policies[NO_PROMPT].step_ups, 2, "bob's and alice's later one");
    }

    #[test]
    fn step_ups_without_a_prompt_count_for_the_user_and_under_no_prompt() {
        let records = vec![step("2026-11-02T08:00:00Z", "challenge.verified", "bob", "")];
        let s = summarize(&records, &scope());
        assert_eq!(s.users["bob"].step_ups, 1);
        assert_eq!(s.policies[NO_PROMPT].step_ups, 1);
    }

    #[test]
    fn medians_lockouts_resets_and_break_glass_are_counted_per_user() {
        let mut records = vec![];
        for (i, wait) in [10, 30, 20, 40].iter().enumerate() {
            let c = format!("c{i}");
            records.push(admission("2026-11-05T10:00:00Z", "alice", "denied", &c));
            let t = at("2026-11-05T10:00:00Z") + SignedDuration::from_secs(*wait);
            records.push(Record { user: "alice".into(), correlation: c.clone(), ..Record::new("grant.issued", t) });
        }
        records.push(step("2026-11-06T00:00:00Z", "enrollment.locked", "alice", ""));
        records.push(Record { by: "admin".into(), ..step("2026-11-06T01:00:00Z", "enrollment.reset", "alice", "") });
        records.push(admission("2026-11-07T00:00:00Z", "carol", "break-glass", ""));
        let s = summarize(&records, &scope());
        let alice = &s.users["alice"];
        assert_eq!(alice.median_prompt_to_grant_seconds, Some(25.0));
        assert_eq!((alice.lockouts, alice.resets), (1, 1));
        assert_eq!(s.users["carol"].break_glass, 1);
        assert_eq!(s.totals.break_glass, 1);
    }

    #[test]
    fn step_ups_are_counted_per_method_and_grants_per_security_key() {
        let with = |r: Record, method: &str| Record { method: method.into(), ..r };
        let key = |r: Record, id: &str, uv: bool| Record {
            credential: id.into(),
            user_verified: Some(uv),
            ..with(r, "WebAuthn")
        };
        let records = vec![
            with(step("2026-11-02T08:00:00Z", "challenge.verified", "bob", ""), "TOTP"),
            with(step("2026-11-02T08:00:01Z", "grant.issued", "bob", ""), "TOTP"),
            with(step("2026-11-02T09:00:00Z", "challenge.denied", "alice", ""), "WebAuthn"),
            with(step("2026-11-02T09:01:00Z", "challenge.verified", "alice", ""), "WebAuthn"),
            key(step("2026-11-02T09:01:01Z", "grant.issued", "alice", ""), "k1", true),
            with(step("2026-11-03T09:01:00Z", "challenge.verified", "alice", ""), "WebAuthn"),
            key(step("2026-11-03T09:01:01Z", "grant.issued", "alice", ""), "k1", false),
            key(step("2026-11-04T09:01:01Z", "grant.issued", "alice", ""), "k2", true),
            // An enrollment step names its method but is no step-up.
            with(step("2026-11-04T10:00:00Z", "enrollment.confirmed", "carol", ""), "OIDC"),
        ];
        let s = summarize(&records, &scope());
        assert_eq!(s.methods["TOTP"], MethodFigures { step_ups: 1, failed_step_ups: 0, grants: 1 });
        assert_eq!(s.methods["WebAuthn"], MethodFigures { step_ups: 2, failed_step_ups: 1, grants: 3 });
        assert!(!s.methods.contains_key("OIDC"));
        let k1 = &s.keys["k1"];
        assert_eq!((k1.user.as_str(), k1.grants, k1.user_verified_grants), ("alice", 2, 1));
        assert_eq!(k1.last_used, Some(at("2026-11-03T09:01:01Z")));
        assert_eq!(s.keys["k2"].grants, 1);
        assert!(s.trail.iter().any(|t| t.key == "k2"), "the trail names the key");
    }

    #[test]
    fn dry_runs_are_not_prompts_and_filters_narrow_the_report() {
        let mut dry = admission("2026-11-05T10:00:00Z", "alice", "denied", "");
        dry.dry_run = true;
        let records = vec![dry, admission("2026-11-05T11:00:00Z", "bob", "denied", "")];
        assert_eq!(summarize(&records, &scope()).totals.prompts, 1);
        let only_alice = Scope { user: Some("alice".into()), ..scope() };
        assert_eq!(summarize(&records, &only_alice).totals.prompts, 0);
        let other_policy = Scope { policy: Some("rbac-changes".into()), ..scope() };
        assert!(summarize(&records, &other_policy).trail.is_empty());
    }

    #[test]
    fn days_cover_the_period() {
        let d = days(at("2026-11-29T12:00:00Z"), at("2026-12-01T00:00:00Z"));
        assert_eq!(d.into_iter().collect::<Vec<_>>(), ["20261129", "20261130"]);
    }
}
