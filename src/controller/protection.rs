//! Watches over what stepup's protection rests on and that no admission can protect: the
//! CRDs, the webhook configuration, the chart's ValidatingAdmissionPolicies and their bindings
//! (the API server exempts those from all admission). When one goes missing the controller
//! says so loudly (Warning Event, audit line, `stepup_protection_intact{object} 0`), and again
//! when it is back. The comparison is pure; [`check`] is the shell that asks the API server.

use std::collections::BTreeMap;

use k8s_openapi::{
    api::admissionregistration::v1::{
        ValidatingAdmissionPolicy, ValidatingAdmissionPolicyBinding, ValidatingWebhookConfiguration,
    },
    api::core::v1::ObjectReference,
    apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition,
};
use kube::{Api, runtime::events::EventType};

use super::Context;
use crate::audit;

/// The stepup.dev CRDs, the audit trail's included: deleting one deletes every object of its kind.
pub const CRDS: [&str; 5] = [
    "stepuppolicies.stepup.dev",
    "stepupgrants.stepup.dev",
    "stepupchallenges.stepup.dev",
    "stepupenrollments.stepup.dev",
    "stepuplogs.stepup.dev",
];

/// One object stepup relies on.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Guarded {
    pub kind: &'static str,
    pub api_version: &'static str,
    pub name: String,
}

impl Guarded {
    /// `Kind/name`: the metric label and the audit object (a handful of fixed names).
    pub fn label(&self) -> String {
        format!("{}/{}", self.kind, self.name)
    }
}

/// Everything to watch over: the CRDs, the webhook configuration, and each named admission
/// policy with its binding (the chart names both alike).
pub fn guarded(webhook_config: &str, admission_policies: &[String]) -> Vec<Guarded> {
    let mut out: Vec<Guarded> = CRDS
        .iter()
        .map(|n| Guarded {
            kind: "CustomResourceDefinition",
            api_version: "apiextensions.k8s.io/v1",
            name: (*n).to_owned(),
        })
        .collect();
    out.push(Guarded {
        kind: "ValidatingWebhookConfiguration",
        api_version: "admissionregistration.k8s.io/v1",
        name: webhook_config.to_owned(),
    });
    for p in admission_policies {
        for kind in ["ValidatingAdmissionPolicy", "ValidatingAdmissionPolicyBinding"] {
            out.push(Guarded { kind, api_version: "admissionregistration.k8s.io/v1", name: p.clone() });
        }
    }
    out
}

/// A change worth telling about.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Change {
    Missing(Guarded),
    Restored(Guarded),
}

/// What changed between two observations. At start (nothing seen before) only what is
/// missing is reported: an intact install is no news.
pub fn changes(before: &BTreeMap<Guarded, bool>, now: &BTreeMap<Guarded, bool>) -> Vec<Change> {
    now.iter()
        .filter_map(|(g, &present)| match (before.get(g).copied(), present) {
            (Some(true) | None, false) => Some(Change::Missing(g.clone())),
            (Some(false), true) => Some(Change::Restored(g.clone())),
            _ => None,
        })
        .collect()
}

/// Looks each guarded object up; an object that cannot be looked up (no permission, API
/// error) counts as present but is logged, so a flaky API server does not cry wolf.
pub async fn observe(ctx: &Context, guarded: &[Guarded]) -> BTreeMap<Guarded, bool> {
    let client = &ctx.client;
    let mut out = BTreeMap::new();
    for g in guarded {
        let found = match g.kind {
            "CustomResourceDefinition" => Api::<CustomResourceDefinition>::all(client.clone())
                .get_metadata_opt(&g.name)
                .await
                .map(|o| o.is_some()),
            "ValidatingWebhookConfiguration" => Api::<ValidatingWebhookConfiguration>::all(client.clone())
                .get_metadata_opt(&g.name)
                .await
                .map(|o| o.is_some()),
            "ValidatingAdmissionPolicy" => Api::<ValidatingAdmissionPolicy>::all(client.clone())
                .get_metadata_opt(&g.name)
                .await
                .map(|o| o.is_some()),
            _ => Api::<ValidatingAdmissionPolicyBinding>::all(client.clone())
                .get_metadata_opt(&g.name)
                .await
                .map(|o| o.is_some()),
        };
        match found {
            Ok(present) => {
                out.insert(g.clone(), present);
            }
            Err(error) => tracing::warn!(%error, object = %g.label(), "cannot check a protection object"),
        }
    }
    out
}

/// Observes, records the gauge, and reports what changed since `seen`.
pub async fn check(ctx: &Context, guarded: &[Guarded], seen: &mut BTreeMap<Guarded, bool>) {
    let now = observe(ctx, guarded).await;
    for (g, present) in &now {
        ctx.metrics.protection_intact.with_label_values(&[&g.label()]).set(i64::from(*present));
    }
    for change in changes(seen, &now) {
        report(ctx, &change).await;
    }
    seen.extend(now);
}

async fn report(ctx: &Context, change: &Change) {
    let (g, type_, reason, result, message) = match change {
        Change::Missing(g) => (
            g,
            EventType::Warning,
            "ProtectionMissing",
            "missing",
            format!(
                "{} is gone: kube-stepup's protection is weakened until it is restored{}",
                g.label(),
                match g.kind {
                    "ValidatingWebhookConfiguration" => " (the controller re-creates it)",
                    "CustomResourceDefinition" => " (re-apply the CRDs; every object of its kind was deleted with it)",
                    _ => " (re-apply the chart; admission cannot protect admission policies)",
                }
            ),
        ),
        Change::Restored(g) => {
            (g, EventType::Normal, "ProtectionRestored", "restored", format!("{} is back", g.label()))
        }
    };
    if matches!(change, Change::Missing(_)) {
        tracing::error!(object = %g.label(), "{message}");
    } else {
        tracing::info!(object = %g.label(), "{message}");
    }
    audit::step(&audit::StepRecord {
        event: if matches!(change, Change::Missing(_)) { "protection.missing" } else { "protection.restored" },
        user: "",
        object: &g.label(),
        result,
        method: "",
        reason: "",
        grant: "",
        message: &message,
        correlation: "",
        credential: None,
    });
    let reference = ObjectReference {
        api_version: Some(g.api_version.to_owned()),
        kind: Some(g.kind.to_owned()),
        name: Some(g.name.clone()),
        ..Default::default()
    };
    ctx.evidence.event_about(reference, type_, reason, message, None).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seen(entries: &[(&Guarded, bool)]) -> BTreeMap<Guarded, bool> {
        entries.iter().map(|(g, p)| ((*g).clone(), *p)).collect()
    }

    #[test]
    fn guards_the_crds_the_configuration_and_each_policy_with_its_binding() {
        let labels: Vec<String> =
            guarded("stepup.dev", &["stepup-protect-crds".into()]).iter().map(Guarded::label).collect();
        assert_eq!(
            labels,
            vec![
                "CustomResourceDefinition/stepuppolicies.stepup.dev",
                "CustomResourceDefinition/stepupgrants.stepup.dev",
                "CustomResourceDefinition/stepupchallenges.stepup.dev",
                "CustomResourceDefinition/stepupenrollments.stepup.dev",
                "CustomResourceDefinition/stepuplogs.stepup.dev",
                "ValidatingWebhookConfiguration/stepup.dev",
                "ValidatingAdmissionPolicy/stepup-protect-crds",
                "ValidatingAdmissionPolicyBinding/stepup-protect-crds",
            ]
        );
    }

    #[test]
    fn reports_what_went_missing_and_what_came_back_once_each() {
        let all = guarded("stepup.dev", &[]);
        let (crd, config) = (&all[0], &all[4]);
        let missing = |g: &Guarded| Change::Missing(g.clone());
        let restored = |g: &Guarded| Change::Restored(g.clone());
        let cases = [
            ("intact at start is no news", seen(&[]), seen(&[(crd, true), (config, true)]), vec![]),
            ("missing at start is news", seen(&[]), seen(&[(crd, false), (config, true)]), vec![missing(crd)]),
            (
                "deleted",
                seen(&[(crd, true), (config, true)]),
                seen(&[(crd, true), (config, false)]),
                vec![missing(config)],
            ),
            ("still gone: said once", seen(&[(config, false)]), seen(&[(config, false)]), vec![]),
            ("back", seen(&[(config, false)]), seen(&[(config, true)]), vec![restored(config)]),
            ("not observed this time: nothing said", seen(&[(config, false)]), seen(&[]), vec![]),
        ];
        for (name, before, now, expected) in cases {
            assert_eq!(changes(&before, &now), expected, "{name}");
        }
    }
}
